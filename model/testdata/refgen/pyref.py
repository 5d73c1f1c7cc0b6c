#!/usr/bin/python3
"""An independent float64 reference forward pass in numpy, for the machines
that have no transformers: it shares no code with rankzip nor with
model/archref_test.go's Go reference, and reads each checkpoint's
config.json the way transformers' config classes do (written from
transformers' models/{qwen3,qwen3_moe,qwen2_moe,mixtral,phi3,gemma2,gemma3}
configuration_*.py and modeling_*.py).

    go test ./model -run TestArchRefgenWrite -args -refgen.write $PWD/ckpt
    /usr/bin/python3 model/testdata/refgen/pyref.py ckpt model/testdata/refgen/pyref
    go test ./model -run TestArchPythonReferenceLogits -v

For every checkpoint directory (config.json, model.safetensors in float32,
inputs.json) it writes <out>/<name>.json.gz: the logits of every input
sequence, rows in order, to 10 significant digits. Needs numpy only
(Debian's python3-numpy).
"""
import gzip
import json
import math
import os
import struct
import sys

import numpy as np


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        if t["dtype"] != "F32":
            raise ValueError(f"{path}: {name} is {t['dtype']}, only F32 is read")
        a, b = t["data_offsets"]
        out[name] = np.frombuffer(data[a:b], dtype="<f4").astype(np.float64).reshape(t["shape"])
    return out


class Config:
    """The fields of config.json the forward pass needs, with the defaults of
    the model type's transformers config class."""

    def __init__(self, c):
        t = self.type = c["model_type"]
        get = lambda k, d=None: d if c.get(k) is None else c[k]
        self.hidden, self.layers, self.vocab = c["hidden_size"], c["num_hidden_layers"], c["vocab_size"]
        self.heads = c["num_attention_heads"]
        self.kv_heads = get("num_key_value_heads", self.heads)
        default_hd = {"qwen3": 128, "gemma2": 256, "gemma3_text": 256}.get(t, self.hidden // self.heads)
        self.head_dim = get("head_dim", default_hd)
        self.eps = get("rms_norm_eps", 1e-5 if t in ("phi3", "mixtral") else 1e-6)
        self.tied = get("tie_word_embeddings", t in ("gemma2", "gemma3_text"))
        self.gemma = t in ("gemma2", "gemma3_text")
        self.qk_norm = t in ("qwen3", "qwen3_moe", "gemma3_text")
        self.scale = get("query_pre_attn_scalar", 256) ** -0.5 if self.gemma else self.head_dim ** -0.5
        # Soft caps: Gemma2Config's defaults 50 (attention) and 30 (final);
        # Gemma3Attention never passes attn_logit_softcapping on.
        self.attn_cap = c.get("attn_logit_softcapping", 50.0) if t == "gemma2" else None
        self.final_cap = c.get("final_logit_softcapping", 30.0 if t == "gemma2" else None) if self.gemma else None
        self.window, self.sliding = self.windows(c, get)
        self.global_freq, self.local_freq = self.ropes(c, get)
        # Mixture of experts.
        self.experts = get("num_local_experts") if t == "mixtral" else get("num_experts")
        self.top_k = get("num_experts_per_tok")
        self.norm_topk = True if t == "mixtral" else get("norm_topk_prob", False)
        self.shared_inter = get("shared_expert_intermediate_size", 0) if t == "qwen2_moe" else 0

    def windows(self, c, get):
        """sliding_window and which layers it applies to."""
        t, n = self.type, self.layers
        types = c.get("layer_types")
        if t in ("phi3", "mixtral"):  # every layer (Mistral's mask)
            w = get("sliding_window")
            return w, [w is not None] * n
        if t in ("qwen3", "qwen3_moe", "qwen2_moe"):
            w = get("sliding_window", 4096) if c.get("use_sliding_window", False) else None
            if t == "qwen3_moe":  # Qwen3MoeAttention: config.sliding_window on every layer
                return w, [w is not None] * n
            if types is None:  # Qwen3Config.__post_init__
                first = get("max_window_layers", 28)
                types = ["sliding_attention" if w is not None and i >= first else "full_attention" for i in range(n)]
            return w, [x == "sliding_attention" for x in types]
        w = get("sliding_window", 4096)
        if types is None:
            p = 2 if t == "gemma2" else get("sliding_window_pattern", 6)
            types = ["sliding_attention" if (i + 1) % p else "full_attention" for i in range(n)]
        return w, [x == "sliding_attention" for x in types]

    def ropes(self, c, get):
        """Inverse frequencies of the global and the local (sliding) layers."""
        def inv(theta, scaling):
            f = 1.0 / theta ** (np.arange(0, self.head_dim, 2, dtype=np.float64) / self.head_dim)
            if scaling and scaling.get("rope_type", scaling.get("type")) == "linear":
                f = f / scaling["factor"]
            elif scaling and scaling.get("rope_type", scaling.get("type")) != "default":
                raise ValueError(f"rope {scaling} is not in this reference")
            return f
        default = 1e6 if self.type in ("gemma3_text", "mixtral") else 10000.0
        rp = c.get("rope_parameters")
        if rp is not None and self.type == "gemma3_text":
            g, l = rp["full_attention"], rp["sliding_attention"]
            return inv(g.get("rope_theta", default), g), inv(l.get("rope_theta", 10000.0), l)
        if rp is not None:
            f = inv(rp.get("rope_theta", default), rp)
            return f, f
        g = inv(get("rope_theta", default), c.get("rope_scaling"))
        if self.type == "gemma3_text":
            return g, inv(get("rope_local_base_freq", 10000.0), None)
        return g, g


def rms_norm(x, w, eps, gemma):
    y = x / np.sqrt((x * x).mean(-1, keepdims=True) + eps)
    return y * (1 + w) if gemma else y * w


def rotate(x, freq):
    """Rotate-half RoPE of x [tokens, heads, head_dim] at positions 0..n-1."""
    ang = np.arange(x.shape[0], dtype=np.float64)[:, None] * freq[None, :]
    cos, sin = np.cos(np.concatenate([ang, ang], -1))[:, None], np.sin(np.concatenate([ang, ang], -1))[:, None]
    h = x.shape[-1] // 2
    rot = np.concatenate([-x[..., h:], x[..., :h]], -1)
    return x * cos + rot * sin


def attention(c, q, k, v, window):
    n = q.shape[0]
    group = c.heads // c.kv_heads
    k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
    s = np.einsum("qhd,khd->hqk", q, k) * c.scale
    if c.attn_cap:
        s = c.attn_cap * np.tanh(s / c.attn_cap)
    i, j = np.arange(n)[:, None], np.arange(n)[None, :]
    allowed = j <= i
    if window is not None:
        allowed &= j > i - window
    s = np.where(allowed[None], s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("hqk,khd->qhd", p, v).reshape(n, -1)


def linear(t, name, x):
    y = x @ t[name + ".weight"].T
    return y + t[name + ".bias"] if name + ".bias" in t else y


def act(c, g):
    if c.gemma:  # gelu_pytorch_tanh
        return 0.5 * g * (1 + np.tanh(math.sqrt(2 / math.pi) * (g + 0.044715 * g ** 3)))
    return g / (1 + np.exp(-g))  # silu


def mlp(c, t, p, x, names=("gate_proj", "up_proj", "down_proj")):
    return linear(t, p + names[2], act(c, linear(t, p + names[0], x)) * linear(t, p + names[1], x))


def moe(c, t, p, x):
    prefix, names = ("block_sparse_moe.", ("w1", "w3", "w2")) if c.type == "mixtral" else ("mlp.", ("gate_proj", "up_proj", "down_proj"))
    logits = x @ t[p + prefix + "gate.weight"].T
    prob = np.exp(logits - logits.max(-1, keepdims=True))
    prob /= prob.sum(-1, keepdims=True)
    out = np.zeros_like(x)
    for r in range(x.shape[0]):
        top = np.argsort(-prob[r], kind="stable")[: c.top_k]
        w = prob[r, top] / (prob[r, top].sum() if c.norm_topk else 1)
        for e, we in zip(top, w):
            out[r] += we * mlp(c, t, f"{p}{prefix}experts.{e}.", x[r : r + 1], names)[0]
    if c.shared_inter:  # Qwen2MoeSparseMoeBlock
        gate = 1 / (1 + np.exp(-(x @ t[p + "mlp.shared_expert_gate.weight"].T)))
        out += gate * mlp(c, t, p + "mlp.shared_expert.", x)
    return out


def forward(c, t, ids):
    x = t["model.embed_tokens.weight"][ids]
    if c.gemma:
        x = x * math.sqrt(c.hidden)
    hd, n = c.head_dim, len(ids)
    for l in range(c.layers):
        p = f"model.layers.{l}."
        xn = rms_norm(x, t[p + "input_layernorm.weight"], c.eps, c.gemma)
        if c.type == "phi3":
            qkv = linear(t, p + "self_attn.qkv_proj", xn)
            qd, kd = c.heads * hd, c.kv_heads * hd
            q, k, v = qkv[:, :qd], qkv[:, qd : qd + kd], qkv[:, qd + kd :]
        else:
            q, k, v = (linear(t, p + f"self_attn.{m}_proj", xn) for m in "qkv")
        q, k, v = q.reshape(n, c.heads, hd), k.reshape(n, c.kv_heads, hd), v.reshape(n, c.kv_heads, hd)
        if c.qk_norm:
            q = rms_norm(q, t[p + "self_attn.q_norm.weight"], c.eps, c.gemma)
            k = rms_norm(k, t[p + "self_attn.k_norm.weight"], c.eps, c.gemma)
        freq = c.local_freq if c.sliding[l] else c.global_freq
        a = attention(c, rotate(q, freq), rotate(k, freq), v, c.window if c.sliding[l] else None)
        o = linear(t, p + "self_attn.o_proj", a)
        if c.gemma:
            o = rms_norm(o, t[p + "post_attention_layernorm.weight"], c.eps, True)
        x = x + o
        xn = rms_norm(x, t[p + ("pre_feedforward_layernorm" if c.gemma else "post_attention_layernorm") + ".weight"], c.eps, c.gemma)
        if c.experts:
            m = moe(c, t, p, xn)
        elif c.type == "phi3":
            gu = linear(t, p + "mlp.gate_up_proj", xn)
            m = linear(t, p + "mlp.down_proj", act(c, gu[:, : gu.shape[1] // 2]) * gu[:, gu.shape[1] // 2 :])
        else:
            m = mlp(c, t, p + "mlp.", xn)
        if c.gemma:
            m = rms_norm(m, t[p + "post_feedforward_layernorm.weight"], c.eps, True)
        x = x + m
    x = rms_norm(x, t["model.norm.weight"], c.eps, c.gemma)
    logits = x @ (t["model.embed_tokens.weight"] if c.tied else t["lm_head.weight"]).T
    if c.final_cap:
        logits = c.final_cap * np.tanh(logits / c.final_cap)
    return logits


def main(root, out):
    os.makedirs(out, exist_ok=True)
    for name in sorted(os.listdir(root)):
        d = os.path.join(root, name)
        if not os.path.exists(os.path.join(d, "config.json")):
            continue
        with open(os.path.join(d, "config.json")) as f:
            c = Config(json.load(f))
        with open(os.path.join(d, "inputs.json")) as f:
            seqs = json.load(f)
        t = read_safetensors(os.path.join(d, "model.safetensors"))
        logits = np.concatenate([forward(c, t, np.array(s)) for s in seqs])
        rec = {"name": name, "reference": "pyref.py (numpy float64)", "logits": [float(f"{v:.10g}") for v in logits.flatten()]}
        tmp = os.path.join(out, name + ".json.gz.tmp")
        with gzip.GzipFile(tmp, "wb", mtime=0) as f:
            f.write(json.dumps(rec, separators=(",", ":")).encode())
        os.replace(tmp, os.path.join(out, name + ".json.gz"))
        print(f"{name:24} {c.type:12} sliding {c.sliding} window {c.window} attn cap {c.attn_cap} final cap {c.final_cap}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
