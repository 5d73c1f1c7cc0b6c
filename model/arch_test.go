package model

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/model/safetensors"
)

// archTol is the largest relative error of float32 logits against the
// float64 reference (the bar against transformers in float32).
const archTol = 1e-4

// loadRef writes and loads the checkpoint of refArchs[name].
func loadRef(t *testing.T, name string, v5 bool) (*Model, refArch, map[string][]float64, string) {
	t.Helper()
	a := refArchs[name]
	dir := filepath.Join(t.TempDir(), name)
	tensors := writeRefCheckpoint(t, dir, a, v5, 11)
	m, err := Load(dir, kernels.Default())
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return m, a, tensors, dir
}

// Forward equals the float64 reference (archref_test.go) on every
// architecture, in both config forms, batched over sequences of different
// lengths; the decoder's logits equal Forward's.
func TestArchForwardMatchesReference(t *testing.T) {
	for _, name := range sortedNames(refArchs) {
		for _, v5 := range []bool{false, true} {
			m, a, tensors, _ := loadRef(t, name, v5)
			seqs := refSequences(a.vocab)
			got, err := m.Forward(seqs)
			if err != nil {
				t.Fatal(err)
			}
			var want []float64
			for _, s := range seqs {
				want = append(want, refForward(a, tensors, s)...)
			}
			e := refRelErr(got, want)
			t.Logf("%s (transformers %s form): relative error of the logits %.2e", name, map[bool]string{false: "4.x", true: "5"}[v5], e)
			if !(e < archTol) {
				t.Errorf("%s: relative error %.3e against the reference", name, e)
			}
			// Decoding token by token gives the same logits.
			d := m.NewDecoder()
			var dec []float32
			for _, id := range seqs[0] {
				l, err := d.Step(id)
				if err != nil {
					t.Fatal(err)
				}
				dec = append(dec, l...)
			}
			n := len(seqs[0]) * a.vocab
			if e := refRelErr(dec, want[:n]); !(e < archTol) {
				t.Errorf("%s: decoder relative error %.3e", name, e)
			}
		}
	}
}

// Sequences long enough for the attention's matrix path (sequence length ×
// head_dim above smallAttention) keep the windows and Gemma 2's attention
// soft cap: Forward equals the reference there too.
func TestArchLongSequenceMatchesReference(t *testing.T) {
	for _, name := range []string{"gemma2", "qwen3-sliding"} {
		m, a, tensors, _ := loadRef(t, name, true)
		n := smallAttention/a.headDim + 40
		m.Config.MaxPositions = n // the checkpoints say 128; their RoPE and windows do not depend on it
		seq := make([]int32, n)
		for i := range seq {
			seq[i] = int32((i*7 + 3) % a.vocab)
		}
		got, err := m.Forward([][]int32{seq})
		if err != nil {
			t.Fatal(err)
		}
		e := refRelErr(got, refForward(a, tensors, seq))
		t.Logf("%s, %d tokens: relative error of the logits %.2e", name, n, e)
		if !(e < archTol) {
			t.Errorf("%s: relative error %.3e against the reference over %d tokens", name, e, n)
		}
	}
}

// The sliding windows and the q/k norms matter: without them the logits
// move far beyond the tolerance (so the reference checks them).
func TestArchFeaturesMatter(t *testing.T) {
	for _, c := range []struct {
		name  string
		alter func(m *Model)
	}{
		{"qwen3", func(m *Model) { m.Blocks[0].QNorm = nil }},
		{"phi3", func(m *Model) { m.Config.SlidingWindow = 0 }},
		{"gemma3_text", func(m *Model) { m.Blocks[0].Sliding = false }},
		{"gemma3_text", func(m *Model) { m.Config.Gemma.FinalSoftcap = 0 }},
		{"gemma3_text", func(m *Model) { m.Blocks[1].PostFFNNorm = nil }},
		{"qwen3-sliding", func(m *Model) { m.Blocks[1].Sliding = false }},
		{"qwen3-layer-types", func(m *Model) { m.Blocks[0].Sliding = false }},
		{"qwen3_moe-sliding", func(m *Model) { m.Config.SlidingWindow = 0 }},
		{"gemma2", func(m *Model) { m.Config.Gemma.AttnSoftcap = 0 }},
		{"gemma2", func(m *Model) { m.Blocks[2].Sliding = false }},
	} {
		m, a, tensors, _ := loadRef(t, c.name, false)
		seqs := refSequences(a.vocab)
		c.alter(m)
		got, err := m.Forward(seqs[:1])
		if err != nil {
			t.Fatal(err)
		}
		if e := refRelErr(got, refForward(a, tensors, seqs[0])); e < 100*archTol {
			t.Errorf("%s: altered model still within %.2e of the reference", c.name, e)
		}
	}
}

// The dense export writes the checkpoint back in its own layout (Phi-3's
// fused tensors, Gemma's four norms, q/k norms): the same tensor names and
// shapes, the same values in float32, the same logits after reading back.
func TestArchExportRoundTrip(t *testing.T) {
	for _, name := range sortedNames(refArchs) {
		for _, v5 := range []bool{false, true} {
			m, a, _, dir := loadRef(t, name, v5)
			out := filepath.Join(t.TempDir(), "out")
			if err := Save(m, out, safetensors.F32); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			src, err := safetensors.OpenDir(dir)
			if err != nil {
				t.Fatal(err)
			}
			dst, err := safetensors.OpenDir(out)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(src.Names(), dst.Names()) {
				t.Errorf("%s: exported tensors %v, source %v", name, dst.Names(), src.Names())
			}
			for _, n := range src.Names() {
				a, _ := src.Float32(n)
				b, err := dst.Float32(n)
				if err != nil || !slices.Equal(a, b) {
					t.Errorf("%s: tensor %s differs after export (%v)", name, n, err)
				}
			}
			src.Close()
			dst.Close()
			back, err := Load(out, kernels.Default())
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			seqs := refSequences(a.vocab)
			x, _ := m.Forward(seqs)
			y, _ := back.Forward(seqs)
			if !slices.Equal(x, y) {
				t.Errorf("%s: logits differ after the export round trip", name)
			}
			if got, want := back.Config.Rope(), m.Config.Rope(); !got.Equal(want) {
				t.Errorf("%s: RoPE %v read back as %v", name, want, got)
			}
			_, v5Key := back.Config.Raw["rope_parameters"]
			_, dtypeKey := back.Config.Raw["dtype"]
			if v5Key != v5 || dtypeKey != v5 {
				t.Errorf("%s: the export changed the config's form (rope_parameters %v, dtype %v; source 5.x %v)", name, v5Key, dtypeKey, v5)
			}
			if got, want := back.Config, m.Config; got.window(back.Blocks[0]) != want.window(m.Blocks[0]) || !slices.Equal(got.SlidingLayers, want.SlidingLayers) ||
				got.attnSoftcap() != want.attnSoftcap() || got.SlidingWindow != want.SlidingWindow {
				t.Errorf("%s: the export changed the windows or soft cap: window %d, layers %v, cap %v (source %d, %v, %v)", name,
					got.SlidingWindow, got.SlidingLayers, got.attnSoftcap(), want.SlidingWindow, want.SlidingLayers, want.attnSoftcap())
			}
			if m.NumParams() != m.Config.NumParams() {
				t.Errorf("%s: %d parameters, config says %d", name, m.NumParams(), m.Config.NumParams())
			}
		}
	}
}

// A Phi-3 checkpoint whose q_proj is factored keeps q, k and v apart in the
// native layout (k and v under their split names), and reads back.
func TestPhi3NativeSplitsAGroup(t *testing.T) {
	m, a, _, _ := loadRef(t, "phi3", false)
	b := m.Blocks[1]
	q := b.Q.(*Dense)
	r := 8
	A, B := make([]float32, r*q.In()), make([]float32, q.Out()*r)
	for i := range r { // B A keeps the first r rows of q_proj
		A[i*q.In()+i] = 1
		B[i*r+i] = 1
	}
	b.Q = &Factored{A: NewDense(r, q.In(), A, nil), B: NewDense(q.Out(), r, B, nil)}
	out := filepath.Join(t.TempDir(), "native")
	if err := Save(m, out, safetensors.F32); err != nil {
		t.Fatal(err)
	}
	ck, err := safetensors.OpenDir(out)
	if err != nil {
		t.Fatal(err)
	}
	names := ck.Names()
	ck.Close()
	for _, want := range []string{"model.layers.1.self_attn.q_proj.A.weight", "model.layers.1.self_attn.k_proj.weight",
		"model.layers.1.self_attn.v_proj.weight", "model.layers.1.mlp.gate_up_proj.weight", "model.layers.0.self_attn.qkv_proj.weight"} {
		if !slices.Contains(names, want) {
			t.Errorf("native phi3 checkpoint lacks %s: %v", want, names)
		}
	}
	back, err := Load(out, kernels.Default())
	if err != nil {
		t.Fatal(err)
	}
	seqs := refSequences(a.vocab)
	x, _ := m.Forward(seqs)
	y, _ := back.Forward(seqs)
	if !slices.Equal(x, y) {
		t.Error("logits differ after the native round trip")
	}
}

// What an architecture does not support is refused naming it: MLA on Qwen3
// and Gemma 3 (Palu, fisher and the GPTQ layout run: model/gptq's
// TestExportLoadArchs); Phi-3 runs backward as Llama and refuses the GPTQ
// layout (its fused projections).
func TestArchUnsupportedFeatures(t *testing.T) {
	for _, name := range []string{"qwen3", "gemma3_text"} {
		m, a, _, _ := loadRef(t, name, false)
		if err := m.Config.Unsupported(FeatureMLA); err == nil || !strings.Contains(err.Error(), a.typ) {
			t.Errorf("%s: %s: %v", name, FeatureMLA, err)
		}
		for _, f := range []Feature{FeaturePalu, FeatureGPTQ} {
			if err := m.Config.Unsupported(f); err != nil {
				t.Errorf("%s: %v", name, err)
			}
		}
	}
	m, a, _, _ := loadRef(t, "phi3", false)
	if _, err := m.Backward(refSequences(a.vocab), m.GradientNames()[:3]); err != nil {
		t.Errorf("phi3 backward: %v", err)
	}
	for _, f := range []Feature{FeatureBackward, FeaturePalu, FeatureMLA} {
		if err := m.Config.Unsupported(f); err != nil {
			t.Errorf("phi3: %v", err)
		}
	}
	if err := m.Config.Unsupported(FeatureGPTQ); err == nil {
		t.Error("phi3: the GPTQ layout accepted fused projections")
	}
}

// Bad input: an option of each architecture that rankzip does not honour is
// refused with the field named; the config classes' defaults apply where a
// key is absent.
func TestArchConfigRefusals(t *testing.T) {
	cfg := func(name string, v5 bool, edit map[string]any) []byte {
		c := refConfig(refArchs[name], v5)
		for k, v := range edit {
			if v == nil {
				delete(c, k)
			} else {
				c[k] = v
			}
		}
		data, err := json.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		return data
	}
	for _, c := range []struct {
		name  string
		v5    bool
		edit  map[string]any
		field string
	}{
		{"qwen3", false, map[string]any{"use_sliding_window": true, "sliding_window": 0}, "sliding_window"},
		{"qwen3", true, map[string]any{"layer_types": []string{"full_attention", "chunked_attention"}}, "layer_types"},
		{"qwen3-sliding", false, map[string]any{"max_window_layers": -1}, "max_window_layers"},
		{"qwen3", true, map[string]any{"layer_types": []string{"full_attention", "sliding_attention"}}, "layer_types"},
		{"qwen3", false, map[string]any{"rope_scaling": map[string]any{"rope_type": "yarn", "factor": 4.0}}, "rope_scaling.rope_type"},
		{"qwen3", false, map[string]any{"hidden_act": "gelu"}, "hidden_act"},
		{"phi3", false, map[string]any{"rope_scaling": map[string]any{"type": "longrope", "short_factor": []float64{1}, "long_factor": []float64{1}}}, "rope_scaling.type"},
		{"phi3", false, map[string]any{"partial_rotary_factor": 0.75}, "partial_rotary_factor"},
		{"gemma3_text", false, map[string]any{"attn_logit_softcapping": 50.0}, "attn_logit_softcapping"},
		{"gemma3_text", false, map[string]any{"hidden_activation": "gelu"}, "hidden_activation"},
		{"gemma3_text", false, map[string]any{"use_bidirectional_attention": true}, "use_bidirectional_attention"},
		{"gemma3_text", false, map[string]any{"rope_scaling": map[string]any{"rope_type": "dynamic", "factor": 2.0}}, "rope_scaling.rope_type"},
		{"gemma3_text", true, map[string]any{"rope_parameters": map[string]any{"full_attention": map[string]any{"rope_type": "yarn", "factor": 8.0, "rope_theta": 1e6},
			"sliding_attention": map[string]any{"rope_type": "default", "rope_theta": 1e4}}}, "rope_parameters.full_attention.rope_type"},
		{"gemma3_text", true, map[string]any{"rope_parameters": map[string]any{"rope_type": "default", "rope_theta": 1e6}}, "rope_parameters"},
		{"gemma3_text", true, map[string]any{"rope_theta": 5e5}, "rope_theta"},
		{"gemma3_text", true, map[string]any{"layer_types": []string{"sliding_attention"}}, "layer_types"},
		{"gemma3_text", false, map[string]any{"model_type": "gemma3"}, "model_type"},
		{"qwen3", false, map[string]any{"model_type": "olmoe"}, "model_type"},
		{"qwen2_moe", false, map[string]any{"use_sliding_window": true}, "use_sliding_window"},
		{"qwen2_moe", true, map[string]any{"shared_expert_intermediate_size": nil}, "shared_expert_intermediate_size"},
		{"qwen2_moe", false, map[string]any{"n_shared_experts": 2}, "n_shared_experts"},
		{"qwen2_moe", false, map[string]any{"mlp_only_layers": []int{1}}, "mlp_only_layers"},
		{"qwen3_moe", false, map[string]any{"decoder_sparse_step": 2}, "decoder_sparse_step"},
		{"qwen3_moe", false, map[string]any{"mlp_only_layers": []int{0}}, "mlp_only_layers"},
		{"qwen3_moe", false, map[string]any{"num_experts_per_tok": 5}, "num_experts_per_tok"},
		{"qwen3_moe", false, map[string]any{"num_experts": nil}, "num_experts"},
		{"mixtral", false, map[string]any{"num_local_experts": 0}, "num_local_experts"},
		{"mixtral", false, map[string]any{"rope_scaling": map[string]any{"rope_type": "yarn", "factor": 4.0}}, "rope_scaling.rope_type"},
		{"mixtral", false, map[string]any{"router_type": "expert_choice"}, "router_type"},
		{"qwen3_moe", true, map[string]any{"routing_method": "expert_choice"}, "routing_method"},
		{"qwen3_moe", false, map[string]any{"scoring_func": "sigmoid"}, "scoring_func"},
		{"mixtral", false, map[string]any{"topk_method": "noaux_tc"}, "topk_method"},
		{"qwen3_moe", false, map[string]any{"n_group": 4, "topk_group": 2}, "n_group"},
		{"mixtral", false, map[string]any{"routed_scaling_factor": 2.5}, "routed_scaling_factor"},
		{"qwen3_moe", false, map[string]any{"shared_expert_intermediate_size": 64}, "shared_expert_intermediate_size"},
		{"mixtral", true, map[string]any{"n_shared_experts": 1}, "n_shared_experts"},
		{"gemma3_text", true, map[string]any{"final_logit_softcapping": -1.0}, "final_logit_softcapping"},
		{"qwen3_moe", true, map[string]any{"layer_types": []string{"sliding_attention", "sliding_attention"}}, "layer_types"},
		{"qwen3_moe-sliding", true, map[string]any{"layer_types": []string{"full_attention", "sliding_attention"}}, "layer_types"},
		{"gemma2", false, map[string]any{"attn_logit_softcapping": -50.0}, "attn_logit_softcapping"},
		{"gemma2", true, map[string]any{"use_bidirectional_attention": true}, "use_bidirectional_attention"},
		{"gemma2", false, map[string]any{"hidden_activation": "gelu"}, "hidden_activation"},
		{"gemma2", true, map[string]any{"rope_parameters": map[string]any{"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}}, "rope_parameters.rope_type"},
	} {
		_, err := ParseConfig("config.json", cfg(c.name, c.v5, c.edit))
		var ce *ConfigError
		if !errors.As(err, &ce) || ce.Field != c.field {
			t.Errorf("%s %v: got %v, want a refusal naming %q", c.name, c.edit, err, c.field)
			continue
		}
		t.Logf("%s: %v", c.name, err)
	}

	// Defaults of the config classes.
	c, err := ParseConfig("config.json", cfg("qwen3", false, map[string]any{"head_dim": nil}))
	if err != nil || c.HeadDim != 128 {
		t.Errorf("qwen3 without head_dim: %v, head_dim %d (Qwen3Config's default is 128)", err, c.HeadDim)
	}
	c, err = ParseConfig("config.json", cfg("gemma3_text", false, map[string]any{"rope_theta": nil, "rope_local_base_freq": nil,
		"tie_word_embeddings": nil, "sliding_window_pattern": nil, "query_pre_attn_scalar": nil, "sliding_window": nil, "rms_norm_eps": nil}))
	if err != nil {
		t.Fatal(err)
	}
	g := c.Gemma
	if c.RopeTheta != 1e6 || g.LocalRopeTheta != 1e4 || !c.TieWordEmbeddings || g.QueryPreAttnScalar != 256 || g.SlidingWindow != 4096 ||
		!slices.Equal(g.Sliding, []bool{true, true, true, true}) || c.RMSNormEps != 1e-6 {
		t.Errorf("gemma3_text defaults: %+v %+v", c, g)
	}
	c, err = ParseConfig("config.json", cfg("gemma2", false, map[string]any{"rope_theta": nil, "attn_logit_softcapping": nil,
		"final_logit_softcapping": nil, "tie_word_embeddings": nil, "query_pre_attn_scalar": nil, "sliding_window": nil}))
	if err != nil {
		t.Fatal(err)
	}
	g = c.Gemma
	if c.RopeTheta != 1e4 || g.LocalRopeTheta != 1e4 || g.AttnSoftcap != 50 || g.FinalSoftcap != 30 || !c.TieWordEmbeddings ||
		g.QueryPreAttnScalar != 256 || g.SlidingWindow != 4096 || !slices.Equal(g.Sliding, []bool{true, false, true, false}) || c.QKNorm {
		t.Errorf("gemma2 defaults (Gemma2Config's): %+v %+v", c, g)
	}
	c, err = ParseConfig("config.json", cfg("gemma2", true, map[string]any{"attn_logit_softcapping": json.RawMessage("null"),
		"final_logit_softcapping": json.RawMessage("null")}))
	if err != nil || c.Gemma.AttnSoftcap != 0 || c.Gemma.FinalSoftcap != 0 {
		t.Errorf("gemma2 with null soft caps: %v, attention %v, final %v (want none)", err, c.Gemma.AttnSoftcap, c.Gemma.FinalSoftcap)
	}
	// Qwen3: sliding_window 4096 by default, from max_window_layers 28 on
	// (none of 3 layers); layer_types wins over max_window_layers.
	c, err = ParseConfig("config.json", cfg("qwen3-sliding", false, map[string]any{"sliding_window": nil, "max_window_layers": nil}))
	if err != nil || c.SlidingWindow != 0 || c.SlidingLayers != nil {
		t.Errorf("qwen3 with use_sliding_window and defaults: %v, window %d, layers %v (want none sliding)", err, c.SlidingWindow, c.SlidingLayers)
	}
	c, err = ParseConfig("config.json", cfg("qwen3-sliding", false, map[string]any{"sliding_window": nil, "max_window_layers": 2}))
	if err != nil || c.SlidingWindow != 4096 || !slices.Equal(c.SlidingLayers, []bool{false, false, true}) {
		t.Errorf("qwen3 sliding from layer 2: %v, window %d, layers %v", err, c.SlidingWindow, c.SlidingLayers)
	}
	c, err = ParseConfig("config.json", cfg("qwen3-layer-types", false, nil))
	if err != nil || c.SlidingWindow != 4 || !slices.Equal(c.SlidingLayers, []bool{true, false, true}) {
		t.Errorf("qwen3 layer_types: %v, window %d, layers %v", err, c.SlidingWindow, c.SlidingLayers)
	}
	c, err = ParseConfig("config.json", cfg("qwen3-sliding", true, map[string]any{"use_sliding_window": false, "layer_types": nil}))
	if err != nil || c.SlidingWindow != 0 || c.SlidingLayers != nil {
		t.Errorf("qwen3 with use_sliding_window false: %v, window %d, layers %v (want none: the window is dropped)", err, c.SlidingWindow, c.SlidingLayers)
	}
	c, err = ParseConfig("config.json", cfg("phi3", false, map[string]any{"rms_norm_eps": nil, "sliding_window": nil}))
	if err != nil || c.RMSNormEps != 1e-5 || c.SlidingWindow != 0 || c.HeadDim != 16 {
		t.Errorf("phi3 defaults: %v %+v", err, c)
	}
}

// transformers 5 holds the experts fused (mlp.gate.weight,
// mlp.experts.gate_up_proj [experts, 2·inter, hidden] with gate rows first,
// mlp.experts.down_proj [experts, hidden, inter]); the loader reads that
// form to the same model, and exports write the Hub's per-expert layout.
func TestMoEFusedExpertsLayout(t *testing.T) {
	for _, name := range []string{"mixtral", "qwen3_moe"} {
		m, a, tensors, dir := loadRef(t, name, true)
		fused := filepath.Join(t.TempDir(), "fused")
		prefix, names := "mlp.", [3]string{"gate_proj", "up_proj", "down_proj"}
		if name == "mixtral" {
			prefix, names = "block_sparse_moe.", [3]string{"w1", "w3", "w2"}
		}
		var ws []safetensors.WriteTensor
		put := func(n string, shape []int, v []float64) {
			f := make([]float32, len(v))
			for i, x := range v {
				f[i] = float32(x)
			}
			data, _ := safetensors.EncodeFloat32(f, safetensors.F32)
			ws = append(ws, safetensors.WriteTensor{Name: n, DType: safetensors.F32, Shape: shape, Data: data})
		}
		moe := map[string]bool{}
		for l := range a.layers {
			p := fmt.Sprintf("model.layers.%d.", l)
			var gu, dn []float64
			for e := range a.experts {
				ex := func(j int) string { return fmt.Sprintf("%s%sexperts.%d.%s.weight", p, prefix, e, names[j]) }
				gu = append(append(gu, tensors[ex(0)]...), tensors[ex(1)]...)
				dn = append(dn, tensors[ex(2)]...)
				moe[ex(0)], moe[ex(1)], moe[ex(2)] = true, true, true
			}
			moe[p+prefix+"gate.weight"] = true
			put(p+"mlp.gate.weight", []int{a.experts, a.hidden}, tensors[p+prefix+"gate.weight"])
			put(p+"mlp.experts.gate_up_proj", []int{a.experts, 2 * a.moeInter, a.hidden}, gu)
			put(p+"mlp.experts.down_proj", []int{a.experts, a.hidden, a.moeInter}, dn)
		}
		for n, v := range tensors {
			if !moe[n] {
				ck, _ := safetensors.OpenDir(dir)
				info, _ := ck.Info(n)
				ck.Close()
				put(n, info.Shape, v)
			}
		}
		if err := os.MkdirAll(fused, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := safetensors.WriteFile(filepath.Join(fused, "model.safetensors"), ws, nil); err != nil {
			t.Fatal(err)
		}
		cfg, _ := os.ReadFile(filepath.Join(dir, "config.json"))
		os.WriteFile(filepath.Join(fused, "config.json"), cfg, 0o644)
		back, err := Load(fused, kernels.Default())
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		seqs := refSequences(a.vocab)
		x, _ := m.Forward(seqs)
		y, _ := back.Forward(seqs)
		if !slices.Equal(x, y) {
			t.Errorf("%s: the fused layout gives other logits", name)
		}
	}
}

// Mixture-of-experts models refuse fisher, Palu and MLA naming the
// architecture (their experts have the GPTQ layout: model/gptq); routing
// matters to the logits.
func TestMoEUnsupportedAndRouting(t *testing.T) {
	for _, name := range []string{"mixtral", "qwen3_moe"} {
		m, a, tensors, _ := loadRef(t, name, false)
		for _, f := range []Feature{FeatureBackward, FeaturePalu, FeatureMLA} {
			if err := m.Config.Unsupported(f); err == nil || !strings.Contains(err.Error(), a.typ) {
				t.Errorf("%s: %s: %v", name, f, err)
			}
		}
		if err := m.Config.Unsupported(FeatureGPTQ); err != nil {
			t.Errorf("%s: %s: %v, want supported", name, FeatureGPTQ, err)
		}
		seqs := refSequences(a.vocab)
		for _, b := range m.Blocks {
			b.MoE.TopK = 1
		}
		got, _ := m.Forward(seqs[:1])
		if e := refRelErr(got, refForward(a, tensors, seqs[0])); e < 100*archTol {
			t.Errorf("%s: top-1 routing within %.2e of top-2's reference", name, e)
		}
	}
}

// The backward passes of Qwen3 (through the per-head q/k norms, with
// biases, tied embeddings and head_dim apart from hidden/heads; with sliding
// layers), Gemma 3 ((1+w) norms, post norms, GeGLU, scaled embeddings,
// sliding and global layers with their RoPEs, query_pre_attn_scalar, final
// soft-capping) and Gemma 2 (attention soft-capping) agree with finite
// differences, and their losses with Forward's.
func TestArchBackwardGradCheck(t *testing.T) {
	for _, name := range []string{"qwen3-bias-tied", "qwen3-sliding", "gemma3_text", "gemma2"} {
		m, a, _, _ := loadRef(t, name, false)
		seqs := refSequences(a.vocab)
		var names []string
		for _, n := range m.GradientNames() {
			if strings.HasPrefix(n, "model.layers.0.") || strings.HasPrefix(n, fmt.Sprintf("model.layers.%d.", a.layers-1)) || n == "model.norm" {
				names = append(names, n)
			}
		}
		if w := gradCheck(t, m, seqs, names); !(w < gradCheckTol) {
			t.Errorf("%s: worst relative error %.3g, want < %g", name, w, gradCheckTol)
		}
		g, err := m.Backward(seqs, m.GradientNames())
		if err != nil {
			t.Fatal(err)
		}
		if want := forwardLoss(t, m, seqs); math.Abs(g.Loss-want) > 1e-5*want {
			t.Errorf("%s: backward loss %v, forward %v", name, g.Loss, want)
		}
		if m.Config.QKNorm && !slices.Contains(m.GradientNames(), "model.layers.1.self_attn.k_norm") {
			t.Errorf("%s: GradientNames lacks the k norms", name)
		}
	}
}
