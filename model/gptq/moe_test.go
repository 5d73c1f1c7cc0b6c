package gptq_test

import (
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/methods/quant"
	"github.com/rankzip/rankzip/model"
	"github.com/rankzip/rankzip/model/gptq"
	"github.com/rankzip/rankzip/model/safetensors"
)

// qwen2MoE writes and loads a random Qwen2-MoE checkpoint (Qwen2 attention
// with q/k/v biases, 4 experts top-2, a shared expert and its gate), in the
// Hub layout.
func qwen2MoE(t *testing.T) *model.Model {
	t.Helper()
	const h, inter, shared, experts, vocab, layers = 64, 32, 64, 4, 100, 2
	cfg := map[string]any{"architectures": []string{"Qwen2MoeForCausalLM"}, "model_type": "qwen2_moe", "hidden_size": h,
		"intermediate_size": 96, "num_hidden_layers": layers, "num_attention_heads": 4, "num_key_value_heads": 2,
		"vocab_size": vocab, "max_position_embeddings": 64, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
		"num_experts": experts, "num_experts_per_tok": 2, "moe_intermediate_size": inter,
		"shared_expert_intermediate_size": shared, "norm_topk_prob": false, "tie_word_embeddings": false, "torch_dtype": "float32"}
	rng := rand.New(rand.NewPCG(5, 5))
	var ts []safetensors.WriteTensor
	put := func(name string, std, mean float64, shape ...int) {
		n := 1
		for _, d := range shape {
			n *= d
		}
		v := make([]float32, n)
		for i := range v {
			v[i] = float32(mean + std*rng.NormFloat64())
		}
		data, _ := safetensors.EncodeFloat32(v, safetensors.F32)
		ts = append(ts, safetensors.WriteTensor{Name: name, DType: safetensors.F32, Shape: shape, Data: data})
	}
	lin := func(name string, out, in int, bias bool) {
		put(name+".weight", 1/math.Sqrt(float64(in)), 0, out, in)
		if bias {
			put(name+".bias", 0.1, 0, out)
		}
	}
	put("model.embed_tokens.weight", 0.25, 0, vocab, h)
	put("model.norm.weight", 0.1, 1, h)
	lin("lm_head", vocab, h, false)
	for l := range layers {
		p := fmt.Sprintf("model.layers.%d.", l)
		put(p+"input_layernorm.weight", 0.1, 1, h)
		put(p+"post_attention_layernorm.weight", 0.1, 1, h)
		lin(p+"self_attn.q_proj", 64, h, true)
		lin(p+"self_attn.k_proj", 32, h, true)
		lin(p+"self_attn.v_proj", 32, h, true)
		lin(p+"self_attn.o_proj", h, 64, false)
		lin(p+"mlp.gate", experts, h, false)
		for e := range experts {
			lin(fmt.Sprintf("%smlp.experts.%d.gate_proj", p, e), inter, h, false)
			lin(fmt.Sprintf("%smlp.experts.%d.up_proj", p, e), inter, h, false)
			lin(fmt.Sprintf("%smlp.experts.%d.down_proj", p, e), h, inter, false)
		}
		lin(p+"mlp.shared_expert.gate_proj", shared, h, false)
		lin(p+"mlp.shared_expert.up_proj", shared, h, false)
		lin(p+"mlp.shared_expert.down_proj", h, shared, false)
		lin(p+"mlp.shared_expert_gate", 1, h, false)
	}
	dir := t.TempDir()
	data, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := safetensors.WriteFile(filepath.Join(dir, "model.safetensors"), ts, map[string]string{"format": "pt"}); err != nil {
		t.Fatal(err)
	}
	m, err := model.Load(dir, kernels.Default())
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// rtnMoE quantizes the attention and every expert linear of m with RTN
// (the router, and Qwen2-MoE's shared expert, stay dense, as GPTQModel
// leaves them).
func rtnMoE(t *testing.T, m *model.Model, cfg quant.Config) *model.Model {
	t.Helper()
	out := *m
	out.Blocks = nil
	for _, b := range m.Blocks {
		nb := *b
		nb.MoE = b.MoE.Clone()
		for _, mod := range m.Config.TargetModules() {
			*nb.Linear(mod) = rtnLinear(t, (*nb.Linear(mod)).(*model.Dense), cfg)
		}
		out.Blocks = append(out.Blocks, &nb)
	}
	return &out
}

// A quantized Mixtral and Qwen2-MoE export in GPTQModel's layout (every
// expert linear packed under its Hub name, Qwen2-MoE's shared expert too
// (GPTQModel quantizes it), the router and the shared expert's gate dense,
// modules_in_block_to_quantize naming the quantized linears) and
// read back: every expert's dequantized weight is the in-memory one's and
// the logits are the in-memory quantized model's (bit-equal here; the
// tolerance allows for summation order).
func TestExportLoadMoE(t *testing.T) {
	mixtral, err := model.Synthetic(model.SyntheticConfig{ModelType: "mixtral", Hidden: 64, Intermediate: 64, Layers: 2, Heads: 4, KVHeads: 2,
		Vocab: 100, MaxPositions: 64, Experts: 4, TopK: 2}, 7, kernels.Default())
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		m              *model.Model
		expert, router string // tensors of block 1
		dense          []string
	}{
		{mixtral, "model.layers.1.block_sparse_moe.experts.3.w2", "model.layers.1.block_sparse_moe.gate", nil},
		{qwen2MoE(t), "model.layers.1.mlp.experts.3.down_proj", "model.layers.1.mlp.gate",
			[]string{"model.layers.1.mlp.shared_expert_gate"}},
	} {
		m, typ := tc.m, tc.m.Config.ModelType
		seqs, err := model.Sample(m, 3, 24, 1, 3)
		if err != nil {
			t.Fatal(err)
		}
		q := rtnMoE(t, m, quant.Config{Bits: 4, GroupSize: 32})
		qc, _ := gptq.NewQuantizeConfig(4, 32, false, true)
		dir := t.TempDir()
		if err := gptq.Export(q, dir, safetensors.F32, qc); err != nil {
			t.Fatalf("%s: %v", typ, err)
		}
		f, err := safetensors.OpenDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range append([]string{tc.expert + ".qweight", tc.expert + ".qzeros", tc.expert + ".scales", tc.expert + ".g_idx", tc.router + ".weight"}, suffixed(tc.dense, ".weight")...) {
			if _, ok := f.Info(want); !ok {
				t.Errorf("%s: no tensor %s", typ, want)
			}
		}
		if _, ok := f.Info(tc.router + ".qweight"); ok {
			t.Errorf("%s: the router is quantized", typ)
		}
		f.Close()
		mods := quantizedModules(t, dir)
		inBlock := func(name string) string { return strings.TrimPrefix(name, "model.layers.1.") }
		if len(mods) != len(m.Config.TargetModules()) || !slices.Contains(mods, inBlock(tc.expert)) || slices.Contains(mods, inBlock(tc.router)) {
			t.Errorf("%s: modules_in_block_to_quantize %v: want all %d targets, not the router", typ, mods, len(m.Config.TargetModules()))
		}
		if typ == "qwen2_moe" && !slices.Contains(mods, "mlp.shared_expert.down_proj") {
			t.Errorf("%s: the shared expert is not quantized: %v", typ, mods)
		}

		back, err := gptq.Load(dir, m.Backend)
		if err != nil {
			t.Fatalf("%s: %v", typ, err)
		}
		for i, b := range back.Blocks {
			for _, mod := range m.Config.TargetModules() {
				got, ok := (*b.Linear(mod)).(*model.Quantized)
				want := (*q.Blocks[i].Linear(mod)).(*model.Quantized)
				if !ok || !slices.Equal(got.Dequantize(), want.Dequantize()) {
					t.Errorf("%s: block %d %s read back as %T, not the weights written", typ, i, mod, *b.Linear(mod))
				}
			}
			if !slices.Equal(b.MoE.Router.Weight, m.Blocks[i].MoE.Router.Weight) || (b.MoE.Shared == nil) != (m.Blocks[i].MoE.Shared == nil) {
				t.Errorf("%s: block %d: router or shared expert read back wrong", typ, i)
			}
		}
		got, err := back.Forward(seqs)
		if err != nil {
			t.Fatal(err)
		}
		want, _ := q.Forward(seqs)
		orig, _ := m.Forward(seqs)
		// Tolerance: as TestExportLoadRoundTrip, float32 summation order only.
		if d := relErr(got, want); d > 1e-6 {
			t.Errorf("%s: read back logits differ from the quantized model's by %.3g (tolerance 1e-6)", typ, d)
		}
		t.Logf("%s: read back vs in-memory quantized logits %.2e; quantized vs original %.4f", typ, relErr(got, want), relErr(want, orig))
	}
}

// An expert left dense in one block only (no calibration token reached
// it) cannot share the checkpoint's one list of quantized linears: the
// export names it.
func TestExportMoERefusals(t *testing.T) {
	m, err := model.Synthetic(model.SyntheticConfig{ModelType: "mixtral", Hidden: 64, Intermediate: 64, Layers: 2, Heads: 4, KVHeads: 2,
		Vocab: 100, MaxPositions: 64, Experts: 4, TopK: 2}, 7, kernels.Default())
	if err != nil {
		t.Fatal(err)
	}
	q := rtnMoE(t, m, quant.Config{Bits: 4, GroupSize: 32})
	q.Blocks[1].MoE.Experts[2].Down = m.Blocks[1].MoE.Experts[2].Down
	qc, _ := gptq.NewQuantizeConfig(4, 32, false, true)
	err = gptq.Export(q, t.TempDir(), safetensors.F32, qc)
	if err == nil || !strings.Contains(err.Error(), "block_sparse_moe.experts.2.w2 (quantized in block 0 only)") {
		t.Errorf("export with an expert dense in block 1 only: %v", err)
	}
}

func suffixed(names []string, s string) []string {
	var out []string
	for _, n := range names {
		out = append(out, n+s)
	}
	return out
}

// quantizedModules reads quantization_config.modules_in_block_to_quantize
// of dir's config.json.
func quantizedModules(t *testing.T, dir string) []string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		Q gptq.QuantizeConfig `json:"quantization_config"`
	}
	if err := json.Unmarshal(data, &cfg); err != nil {
		t.Fatal(err)
	}
	if len(cfg.Q.ModulesInBlockToQuantize) != 1 {
		t.Fatalf("modules_in_block_to_quantize %v: want one list", cfg.Q.ModulesInBlockToQuantize)
	}
	return cfg.Q.ModulesInBlockToQuantize[0]
}
