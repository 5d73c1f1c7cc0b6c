#!/usr/bin/env python3
"""Reference logits from transformers itself for rankzip's tiny checkpoints:
Qwen3 (also with sliding-window layers), Phi-3, Gemma 2 (attention
soft-capping), Gemma 3, Mixtral, Qwen3-MoE (also sliding) and Qwen2-MoE
(model/archref_test.go's refArchs builds them, seeded; every entry there is
written, so a new one needs nothing here).

    go test ./model -run TestArchRefgenWrite -args -refgen.write $PWD/ckpt
    python3 model/testdata/refgen/refgen.py ckpt out     # needs torch, transformers
    cp out/*.json model/testdata/refgen/transformers/
    go test ./model -run TestArchTransformersLogits -v

For every checkpoint directory (config.json, model.safetensors, inputs.json,
rankzip_logits.json, export/) it loads the model with AutoModelForCausalLM
(eager attention, on the CPU) in float32 and float64, computes the logits of
each input sequence, compares them with rankzip's, loads rankzip's dense
export (export/) the same way and compares its logits with the source's, and
writes out/<name>.json with the float64 logits (the test data) and the
figures. Nothing is downloaded.
"""
import json
import os
import sys
import traceback

import torch
import transformers
from transformers import AutoModelForCausalLM


def load(path, dtype):
    kw = dict(attn_implementation="eager", output_loading_info=True)
    try:
        model, info = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kw)  # transformers 5
    except TypeError:
        model, info = AutoModelForCausalLM.from_pretrained(path, torch_dtype=dtype, **kw)  # 4.x
    info = {k: list(v) for k, v in info.items() if v}
    missing = [k for k in info.get("missing_keys", []) if k != "lm_head.weight"]  # tied heads may be listed
    if missing or info.get("unexpected_keys") or info.get("mismatched_keys") or info.get("error_msgs"):
        raise RuntimeError(f"{path}: weights not loaded as saved: {info}")
    return model.eval()


def logits(model, seqs):
    with torch.no_grad():
        return torch.cat([model(input_ids=torch.tensor([s])).logits[0] for s in seqs])


def rel(a, b):
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm())


def main(root, out):
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    rows = []
    for name in sorted(os.listdir(root)):
        d = os.path.join(root, name)
        if not os.path.exists(os.path.join(d, "config.json")):
            continue
        rec = {"name": name, "transformers": transformers.__version__, "torch": torch.__version__}
        try:
            with open(os.path.join(d, "inputs.json")) as f:
                seqs = json.load(f)
            with open(os.path.join(d, "rankzip_logits.json")) as f:
                rz = torch.tensor(json.load(f), dtype=torch.float64)
            m32 = load(d, torch.float32)
            rec["class"] = type(m32).__name__
            l32 = logits(m32, seqs)
            l64 = logits(load(d, torch.float64), seqs)
            rz = rz.reshape(l64.shape)
            rec["rankzip_vs_tf32"] = rel(rz, l32)
            rec["rankzip_vs_tf64"] = rel(rz, l64)
            rec["tf32_vs_tf64"] = rel(l32, l64)
            le = logits(load(os.path.join(d, "export"), torch.float32), seqs)
            rec["export_max_abs_diff"] = float((le - l32).abs().max())
            rec["logits"] = [float(f"{x:.9g}") for x in l64.flatten().tolist()]
            # What this transformers writes itself (the layout a 5.x user's
            # checkpoints have), kept beside the figures for the loader's tests.
            saved = os.path.join(out, "saved", name)
            m32.save_pretrained(saved)
            ls = logits(load(saved, torch.float32), seqs)
            rec["saved_max_abs_diff"] = float((ls - l32).abs().max())
            from safetensors import safe_open
            with safe_open(os.path.join(saved, "model.safetensors"), "pt") as f:
                rec["saved_tensors"] = {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
        except Exception as e:  # one checkpoint's failure is recorded, not fatal
            rec["error"] = f"{type(e).__name__}: {e}"
            traceback.print_exc()
        with open(os.path.join(out, name + ".json"), "w") as f:
            json.dump(rec, f)
        rows.append(rec)
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    print(f"{'checkpoint':24} {'class':22} {'rz vs tf32':>11} {'rz vs tf64':>11} {'tf32 vs tf64':>12} {'export Δmax':>12}")
    for r in rows:
        if "error" in r:
            print(f"{r['name']:24} ERROR {r['error'][:200]}")
            continue
        print(f"{r['name']:24} {r['class']:22} {r['rankzip_vs_tf32']:11.2e} {r['rankzip_vs_tf64']:11.2e} "
              f"{r['tf32_vs_tf64']:12.2e} {r['export_max_abs_diff']:12.2e}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
