package model

import (
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"testing"

	"github.com/rankzip/rankzip/model/safetensors"
)

// This file is an independent float64 reference of the forward passes of
// Qwen3, Phi-3 and Gemma 3's text model, written from transformers' modeling
// files (read at the versions the search index holds, transformers 5.x
// main): models/qwen3/modeling_qwen3.py (Qwen3Attention, Qwen3DecoderLayer,
// Qwen3RMSNorm), models/phi3/modeling_phi3.py (Phi3Attention's qkv split,
// Phi3MLP's gate_up chunk) and models/gemma3/modeling_gemma3.py
// (Gemma3RMSNorm, Gemma3TextScaledWordEmbedding, Gemma3Attention,
// Gemma3DecoderLayer, Gemma3ForCausalLM's final soft-capping) with
// configuration_gemma3.py / modular_gemma3.py for layer_types and the two
// RoPEs. It shares no code with the package: it reads the checkpoint's
// tensors by their Hugging Face names, one sequence at a time, in float64.
// model/testdata/refgen/refgen.py writes the same checkpoints' logits with
// transformers itself, for a machine that has it.

// refArch is a tiny random checkpoint of one architecture.
type refArch struct {
	typ                                                   string // qwen3, phi3, gemma2, gemma3_text, ...
	hidden, inter, layers, heads, kvHeads, headDim, vocab int
	eps, theta                                            float64
	tied, bias                                            bool
	window                                                int // phi3, mixtral, qwen3_moe: every layer; else the sliding layers
	// sliding marks the sliding layers of Gemma 2 and 3 and of Qwen3 (whose
	// config says so by max_window_layers, the first sliding layer, or by
	// layer_types when layerTypes is set or in the 5.x form).
	sliding    []bool
	layerTypes bool
	// Gemma 2 and 3 (attnSoftcap: Gemma 2's attention soft cap).
	localTheta, linearFactor, qpas, softcap, attnSoftcap float64
	// Mixtral, Qwen3-MoE.
	experts, topK, moeInter int
	normTopK                bool
	sharedInter             int // Qwen2-MoE's shared expert
}

// refArchs are the checkpoints the tests build: GQA, head_dim apart from
// hidden/heads, windows short enough to matter in the test sequences.
var refArchs = map[string]refArch{
	"qwen3": {typ: "qwen3", hidden: 64, inter: 96, layers: 2, heads: 4, kvHeads: 2, headDim: 32, vocab: 97,
		eps: 1e-6, theta: 10000},
	"qwen3-sliding": {typ: "qwen3", hidden: 64, inter: 96, layers: 3, heads: 4, kvHeads: 2, headDim: 16, vocab: 71,
		eps: 1e-6, theta: 10000, window: 5, sliding: []bool{false, true, true}},
	"qwen3-layer-types": {typ: "qwen3", hidden: 64, inter: 80, layers: 3, heads: 4, kvHeads: 4, headDim: 16, vocab: 67,
		eps: 1e-6, theta: 10000, window: 4, sliding: []bool{true, false, true}, layerTypes: true},
	"qwen3_moe-sliding": {typ: "qwen3_moe", hidden: 64, inter: 96, layers: 2, heads: 4, kvHeads: 2, headDim: 16, vocab: 59,
		eps: 1e-6, theta: 10000, window: 6, experts: 4, topK: 2, moeInter: 40, normTopK: true},
	"gemma2": {typ: "gemma2", hidden: 64, inter: 128, layers: 4, heads: 4, kvHeads: 2, headDim: 32, vocab: 101,
		eps: 1e-6, theta: 10000, tied: true, window: 5, qpas: 24, softcap: 30, attnSoftcap: 4,
		sliding: []bool{true, false, true, false}},
	"qwen3-bias-tied": {typ: "qwen3", hidden: 48, inter: 80, layers: 2, heads: 6, kvHeads: 3, headDim: 16, vocab: 61,
		eps: 1e-6, theta: 1e6, tied: true, bias: true},
	"phi3": {typ: "phi3", hidden: 64, inter: 112, layers: 2, heads: 4, kvHeads: 2, headDim: 16, vocab: 89,
		eps: 1e-5, theta: 10000, window: 6},
	"gemma3_text": {typ: "gemma3_text", hidden: 64, inter: 128, layers: 4, heads: 4, kvHeads: 2, headDim: 32, vocab: 103,
		eps: 1e-6, theta: 1e6, tied: true, window: 5, localTheta: 10000, linearFactor: 8, qpas: 24, softcap: 30,
		sliding: []bool{true, true, false, true}},
	"mixtral": {typ: "mixtral", hidden: 64, inter: 48, layers: 2, heads: 4, kvHeads: 2, headDim: 16, vocab: 83,
		eps: 1e-5, theta: 1e6, window: 7, experts: 4, topK: 2, moeInter: 48, normTopK: true},
	"qwen3_moe": {typ: "qwen3_moe", hidden: 64, inter: 96, layers: 2, heads: 4, kvHeads: 2, headDim: 32, vocab: 79,
		eps: 1e-6, theta: 10000, experts: 4, topK: 2, moeInter: 40},
	"qwen2_moe": {typ: "qwen2_moe", hidden: 64, inter: 96, layers: 2, heads: 4, kvHeads: 2, headDim: 16, vocab: 73,
		eps: 1e-6, theta: 10000, bias: true, experts: 4, topK: 2, moeInter: 32, sharedInter: 56},
}

// refTensors draws the checkpoint's tensors (HF names and shapes) from seed.
func refTensors(a refArch, seed uint64) (map[string][]float64, map[string][]int) {
	rng := rand.New(rand.NewPCG(seed, 77))
	t, shapes := map[string][]float64{}, map[string][]int{}
	put := func(name string, shape []int, std, mean float64) {
		n := 1
		for _, d := range shape {
			n *= d
		}
		v := make([]float64, n)
		for i := range v {
			v[i] = float64(float32(mean + std*rng.NormFloat64())) // float32 values: the checkpoint holds F32
		}
		t[name], shapes[name] = v, shape
	}
	normMean := 1.0 // Llama-style norms multiply by w; Gemma's by 1 + w
	if a.typ == "gemma3_text" || a.typ == "gemma2" {
		normMean = 0
	}
	h, q, kv := a.hidden, a.heads*a.headDim, a.kvHeads*a.headDim
	put("model.embed_tokens.weight", []int{a.vocab, h}, 0.25, 0)
	put("model.norm.weight", []int{h}, 0.1, normMean)
	if !a.tied {
		put("lm_head.weight", []int{a.vocab, h}, 1/math.Sqrt(float64(h)), 0)
	}
	for l := range a.layers {
		p := fmt.Sprintf("model.layers.%d.", l)
		lin := func(name string, out, in int, bias bool) {
			put(p+name+".weight", []int{out, in}, 1/math.Sqrt(float64(in)), 0)
			if bias {
				put(p+name+".bias", []int{out}, 0.1, 0)
			}
		}
		put(p+"input_layernorm.weight", []int{h}, 0.1, normMean)
		put(p+"post_attention_layernorm.weight", []int{h}, 0.1, normMean)
		switch a.typ {
		case "phi3":
			lin("self_attn.qkv_proj", q+2*kv, h, false)
			lin("mlp.gate_up_proj", 2*a.inter, h, false)
		case "mixtral":
			lin("self_attn.q_proj", q, h, false)
			lin("self_attn.k_proj", kv, h, false)
			lin("self_attn.v_proj", kv, h, false)
		case "qwen2_moe": // Qwen2MoeAttention: biases on q, k, v only; no q/k norms
			lin("self_attn.q_proj", q, h, true)
			lin("self_attn.k_proj", kv, h, true)
			lin("self_attn.v_proj", kv, h, true)
		default: // the draw order keeps the checkpoints of testdata/refgen/transformers
			lin("self_attn.q_proj", q, h, a.bias)
			lin("self_attn.k_proj", kv, h, a.bias)
			lin("self_attn.v_proj", kv, h, a.bias)
			if a.experts == 0 {
				lin("mlp.gate_proj", a.inter, h, false)
				lin("mlp.up_proj", a.inter, h, false)
			}
			if a.typ != "gemma2" { // Gemma2Attention has no q/k norms
				put(p+"self_attn.q_norm.weight", []int{a.headDim}, 0.1, normMean)
				put(p+"self_attn.k_norm.weight", []int{a.headDim}, 0.1, normMean)
			}
		}
		lin("self_attn.o_proj", h, q, a.bias && a.typ != "qwen2_moe")
		switch a.typ {
		case "mixtral": // MixtralSparseMoeBlock: gate, experts.<e>.w1 (gate), w2 (down), w3 (up)
			put(p+"block_sparse_moe.gate.weight", []int{a.experts, h}, 1/math.Sqrt(float64(h)), 0)
			for e := range a.experts {
				lin(fmt.Sprintf("block_sparse_moe.experts.%d.w1", e), a.moeInter, h, false)
				lin(fmt.Sprintf("block_sparse_moe.experts.%d.w2", e), h, a.moeInter, false)
				lin(fmt.Sprintf("block_sparse_moe.experts.%d.w3", e), a.moeInter, h, false)
			}
		case "qwen3_moe", "qwen2_moe": // Qwen3MoeSparseMoeBlock: gate, experts.<e>.{gate,up,down}_proj
			put(p+"mlp.gate.weight", []int{a.experts, h}, 1/math.Sqrt(float64(h)), 0)
			for e := range a.experts {
				lin(fmt.Sprintf("mlp.experts.%d.gate_proj", e), a.moeInter, h, false)
				lin(fmt.Sprintf("mlp.experts.%d.up_proj", e), a.moeInter, h, false)
				lin(fmt.Sprintf("mlp.experts.%d.down_proj", e), h, a.moeInter, false)
			}
			if a.sharedInter > 0 { // Qwen2MoeSparseMoeBlock: shared_expert, shared_expert_gate
				lin("mlp.shared_expert.gate_proj", a.sharedInter, h, false)
				lin("mlp.shared_expert.up_proj", a.sharedInter, h, false)
				lin("mlp.shared_expert.down_proj", h, a.sharedInter, false)
				lin("mlp.shared_expert_gate", 1, h, false)
			}
		default:
			lin("mlp.down_proj", h, a.inter, false)
		}
		if a.typ == "gemma3_text" || a.typ == "gemma2" {
			put(p+"pre_feedforward_layernorm.weight", []int{h}, 0.1, normMean)
			put(p+"post_feedforward_layernorm.weight", []int{h}, 0.1, normMean)
		}
	}
	return t, shapes
}

// refConfig is the checkpoint's config.json in the 4.x form (rope_theta,
// torch_dtype, Gemma's rope_local_base_freq and sliding_window_pattern) or
// transformers 5's (rope_parameters, dtype, layer_types).
func refConfig(a refArch, v5 bool) map[string]any {
	c := map[string]any{
		"model_type": a.typ, "hidden_size": a.hidden, "intermediate_size": a.inter, "num_hidden_layers": a.layers,
		"num_attention_heads": a.heads, "num_key_value_heads": a.kvHeads, "head_dim": a.headDim, "vocab_size": a.vocab,
		"max_position_embeddings": 128, "rms_norm_eps": a.eps, "tie_word_embeddings": a.tied,
		"bos_token_id": 1, "eos_token_id": 2, "initializer_range": 0.02, "use_cache": true, "attention_dropout": 0.0,
	}
	dtype := "torch_dtype"
	if v5 {
		dtype = "dtype"
	}
	c[dtype] = "float32"
	switch a.typ {
	case "qwen3":
		c["architectures"] = []string{"Qwen3ForCausalLM"}
		c["hidden_act"], c["attention_bias"], c["use_sliding_window"], c["sliding_window"], c["max_window_layers"] = "silu", a.bias, false, nil, a.layers
		if a.sliding != nil { // Qwen3Config: sliding from max_window_layers on, unless layer_types says otherwise
			c["use_sliding_window"], c["sliding_window"], c["max_window_layers"] = true, a.window, slices.Index(a.sliding, true)
			if a.layerTypes {
				c["max_window_layers"] = a.layers
			}
		}
	case "phi3":
		c["architectures"] = []string{"Phi3ForCausalLM"}
		c["hidden_act"], c["sliding_window"], c["original_max_position_embeddings"] = "silu", a.window, 128
		c["resid_pdrop"], c["embd_pdrop"], c["pad_token_id"] = 0.0, 0.0, 0
		delete(c, "head_dim") // Phi3Config has none: hidden_size / num_attention_heads
	case "mixtral":
		c["architectures"] = []string{"MixtralForCausalLM"}
		c["hidden_act"], c["sliding_window"], c["num_local_experts"], c["num_experts_per_tok"] = "silu", a.window, a.experts, a.topK
		c["router_jitter_noise"], c["output_router_logits"], c["router_aux_loss_coef"] = 0.0, false, 0.001
	case "qwen2_moe":
		c["architectures"] = []string{"Qwen2MoeForCausalLM"}
		c["hidden_act"], c["use_sliding_window"], c["sliding_window"], c["max_window_layers"] = "silu", false, nil, a.layers
		c["num_experts"], c["num_experts_per_tok"], c["moe_intermediate_size"], c["norm_topk_prob"] = a.experts, a.topK, a.moeInter, a.normTopK
		c["shared_expert_intermediate_size"], c["decoder_sparse_step"], c["mlp_only_layers"] = a.sharedInter, 1, []int{}
		c["output_router_logits"], c["router_aux_loss_coef"] = false, 0.001
		delete(c, "head_dim") // Qwen2MoeConfig has none: hidden_size / num_attention_heads
	case "qwen3_moe":
		c["architectures"] = []string{"Qwen3MoeForCausalLM"}
		c["hidden_act"], c["attention_bias"], c["use_sliding_window"], c["sliding_window"], c["max_window_layers"] = "silu", a.bias, false, nil, a.layers
		c["num_experts"], c["num_experts_per_tok"], c["moe_intermediate_size"], c["norm_topk_prob"] = a.experts, a.topK, a.moeInter, a.normTopK
		c["decoder_sparse_step"], c["mlp_only_layers"], c["output_router_logits"], c["router_aux_loss_coef"] = 1, []int{}, false, 0.001
		if a.window > 0 { // Qwen3MoeAttention: every layer
			c["use_sliding_window"], c["sliding_window"] = true, a.window
		}
	case "gemma2":
		c["architectures"] = []string{"Gemma2ForCausalLM"}
		c["hidden_activation"], c["query_pre_attn_scalar"], c["sliding_window"], c["attention_bias"], c["pad_token_id"] = "gelu_pytorch_tanh", a.qpas, a.window, false, 0
		c["final_logit_softcapping"], c["attn_logit_softcapping"] = json.Number(fmt.Sprintf("%.1f", a.softcap)), json.Number(fmt.Sprintf("%.1f", a.attnSoftcap))
	case "gemma3_text":
		c["architectures"] = []string{"Gemma3ForCausalLM"}
		c["hidden_activation"], c["query_pre_attn_scalar"], c["sliding_window"] = "gelu_pytorch_tanh", a.qpas, a.window
		// transformers 5's strict config classes want a float here: 30.0, not 30.
		c["final_logit_softcapping"], c["attn_logit_softcapping"], c["attention_bias"] = json.Number(fmt.Sprintf("%.1f", a.softcap)), nil, false
		c["pad_token_id"] = 0
	}
	if !v5 {
		if a.layerTypes {
			c["layer_types"] = refLayerTypes(a)
		}
		c["rope_theta"] = a.theta
		if a.typ == "gemma3_text" {
			c["rope_local_base_freq"] = a.localTheta
			c["rope_scaling"] = map[string]any{"rope_type": "linear", "factor": json.Number(fmt.Sprintf("%.1f", a.linearFactor))}
			c["sliding_window_pattern"] = 3 // layers 0, 1 sliding, 2 global, 3 sliding, as a.sliding
		}
		return c
	}
	if a.sliding != nil {
		c["layer_types"] = refLayerTypes(a)
	}
	if a.typ != "gemma3_text" {
		c["rope_parameters"] = map[string]any{"rope_type": "default", "rope_theta": a.theta}
		return c
	}
	c["rope_parameters"] = map[string]any{
		"full_attention":    map[string]any{"rope_type": "linear", "factor": json.Number(fmt.Sprintf("%.1f", a.linearFactor)), "rope_theta": a.theta},
		"sliding_attention": map[string]any{"rope_type": "default", "rope_theta": a.localTheta},
	}
	return c
}

// refLayerTypes is the layer_types of a.
func refLayerTypes(a refArch) []string {
	var types []string
	for _, s := range a.sliding {
		types = append(types, map[bool]string{true: "sliding_attention", false: "full_attention"}[s])
	}
	return types
}

// writeRefCheckpoint writes the checkpoint of a into dir and returns its tensors.
func writeRefCheckpoint(t testing.TB, dir string, a refArch, v5 bool, seed uint64) map[string][]float64 {
	t.Helper()
	tensors, shapes := refTensors(a, seed)
	var ws []safetensors.WriteTensor
	for name, v := range tensors {
		f := make([]float32, len(v))
		for i, x := range v {
			f[i] = float32(x)
		}
		data, err := safetensors.EncodeFloat32(f, safetensors.F32)
		if err != nil {
			t.Fatal(err)
		}
		ws = append(ws, safetensors.WriteTensor{Name: name, DType: safetensors.F32, Shape: shapes[name], Data: data})
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := safetensors.WriteFile(filepath.Join(dir, "model.safetensors"), ws, map[string]string{"format": "pt"}); err != nil {
		t.Fatal(err)
	}
	cfg, err := json.MarshalIndent(refConfig(a, v5), "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), cfg, 0o644); err != nil {
		t.Fatal(err)
	}
	return tensors
}

// refForward returns the logits (len(ids)×vocab) of one sequence.
func refForward(a refArch, t map[string][]float64, ids []int32) []float64 {
	n, h, hd := len(ids), a.hidden, a.headDim
	gemma := a.typ == "gemma3_text" || a.typ == "gemma2"
	// Qwen3RMSNorm / Phi3RMSNorm: w · x/√(mean x² + eps); Gemma2/3RMSNorm: (1 + w) · ...
	norm := func(x []float64, w []float64) []float64 {
		d := len(w)
		out := make([]float64, len(x))
		for r := 0; r < len(x)/d; r++ {
			var ss float64
			for _, v := range x[r*d : (r+1)*d] {
				ss += v * v
			}
			inv := 1 / math.Sqrt(ss/float64(d)+a.eps)
			for i := range d {
				s := w[i]
				if gemma {
					s = 1 + w[i]
				}
				out[r*d+i] = x[r*d+i] * inv * s
			}
		}
		return out
	}
	// nn.Linear: y = x Wᵀ + b.
	linear := func(x, w, b []float64, out int) []float64 {
		in := len(w) / out
		y := make([]float64, len(x)/in*out)
		for r := 0; r < len(x)/in; r++ {
			for o := range out {
				s := 0.0
				if b != nil {
					s = b[o]
				}
				for i := range in {
					s += x[r*in+i] * w[o*in+i]
				}
				y[r*out+o] = s
			}
		}
		return y
	}
	x := make([]float64, n*h)
	for r, id := range ids {
		copy(x[r*h:], t["model.embed_tokens.weight"][int(id)*h:(int(id)+1)*h])
	}
	if gemma { // Gemma3TextScaledWordEmbedding, Gemma2Model's normalizer: · hidden_size**0.5
		for i := range x {
			x[i] *= math.Sqrt(float64(h))
		}
	}
	q, kv := a.heads*hd, a.kvHeads*hd
	for l := range a.layers {
		p := fmt.Sprintf("model.layers.%d.", l)
		w := func(name string) []float64 { return t[p+name] }
		xn := norm(x, w("input_layernorm.weight"))
		var qs, ks, vs []float64
		if a.typ == "phi3" { // Phi3Attention: qkv[..., :q], [q:q+kv], [q+kv:]
			qkv := linear(xn, w("self_attn.qkv_proj.weight"), nil, q+2*kv)
			for r := range n {
				row := qkv[r*(q+2*kv) : (r+1)*(q+2*kv)]
				qs, ks, vs = append(qs, row[:q]...), append(ks, row[q:q+kv]...), append(vs, row[q+kv:]...)
			}
		} else {
			qs = linear(xn, w("self_attn.q_proj.weight"), w("self_attn.q_proj.bias"), q)
			ks = linear(xn, w("self_attn.k_proj.weight"), w("self_attn.k_proj.bias"), kv)
			vs = linear(xn, w("self_attn.v_proj.weight"), w("self_attn.v_proj.bias"), kv)
			if a.typ != "mixtral" && a.typ != "qwen2_moe" && a.typ != "gemma2" {
				qs, ks = norm(qs, w("self_attn.q_norm.weight")), norm(ks, w("self_attn.k_norm.weight"))
			}
		}
		// RoPE, rotate-half: inv_freq = 1/θ^(2i/d), Gemma 3's global layers
		// divided by the linear factor; its local layers use
		// rope_local_base_freq. Gemma 2 and Qwen3 have one RoPE.
		theta, factor, window := a.theta, 1.0, 0
		switch {
		case a.typ == "gemma3_text" && a.sliding[l]:
			theta, window = a.localTheta, a.window
		case a.typ == "gemma3_text":
			factor = a.linearFactor
		case a.sliding != nil && a.sliding[l]: // gemma2, qwen3
			window = a.window
		case a.typ == "phi3" || a.typ == "mixtral" || a.typ == "qwen3_moe":
			window = a.window
		}
		rot := func(v []float64, heads int) {
			for r := range n {
				for hh := range heads {
					x := v[r*heads*hd+hh*hd : r*heads*hd+(hh+1)*hd]
					for i := range hd / 2 {
						f := 1 / math.Pow(theta, float64(2*i)/float64(hd)) / factor
						c, s := math.Cos(float64(r)*f), math.Sin(float64(r)*f)
						x1, x2 := x[i], x[i+hd/2]
						x[i], x[i+hd/2] = x1*c-x2*s, x2*c+x1*s
					}
				}
			}
		}
		rot(qs, a.heads)
		rot(ks, a.kvHeads)
		scale := 1 / math.Sqrt(float64(hd))
		if gemma {
			scale = 1 / math.Sqrt(a.qpas)
		}
		att := make([]float64, n*q)
		for hh := range a.heads {
			kvh := hh / (a.heads / a.kvHeads)
			for i := range n {
				sc := make([]float64, i+1)
				mx := math.Inf(-1)
				for j := 0; j <= i; j++ {
					sc[j] = math.Inf(-1)
					if window > 0 && i-j >= window { // sliding_window_overlay: kv > q - window
						continue
					}
					s := 0.0
					for d := range hd {
						s += qs[i*q+hh*hd+d] * ks[j*kv+kvh*hd+d]
					}
					sc[j] = s * scale
					if a.attnSoftcap > 0 { // Gemma 2: softcap·tanh(scores/softcap) before the mask
						sc[j] = a.attnSoftcap * math.Tanh(sc[j]/a.attnSoftcap)
					}
					mx = math.Max(mx, sc[j])
				}
				sum := 0.0
				for j := range sc {
					sc[j] = math.Exp(sc[j] - mx)
					sum += sc[j]
				}
				for j := range sc {
					for d := range hd {
						att[i*q+hh*hd+d] += sc[j] / sum * vs[j*kv+kvh*hd+d]
					}
				}
			}
		}
		o := linear(att, w("self_attn.o_proj.weight"), w("self_attn.o_proj.bias"), h)
		if gemma {
			o = norm(o, w("post_attention_layernorm.weight"))
		}
		for i := range x {
			x[i] += o[i]
		}
		if gemma {
			xn = norm(x, w("pre_feedforward_layernorm.weight"))
		} else {
			xn = norm(x, w("post_attention_layernorm.weight"))
		}
		if a.experts > 0 {
			m := refMoE(a, t, p, xn)
			for i := range x {
				x[i] += m[i]
			}
			continue
		}
		var gate, up []float64
		if a.typ == "phi3" { // Phi3MLP: gate, up = gate_up_proj(x).chunk(2, dim=-1)
			gu := linear(xn, w("mlp.gate_up_proj.weight"), nil, 2*a.inter)
			for r := range n {
				gate, up = append(gate, gu[r*2*a.inter:r*2*a.inter+a.inter]...), append(up, gu[r*2*a.inter+a.inter:(r+1)*2*a.inter]...)
			}
		} else {
			gate = linear(xn, w("mlp.gate_proj.weight"), nil, a.inter)
			up = linear(xn, w("mlp.up_proj.weight"), nil, a.inter)
		}
		for i, g := range gate {
			if gemma { // gelu_pytorch_tanh
				gate[i] = 0.5 * g * (1 + math.Tanh(math.Sqrt(2/math.Pi)*(g+0.044715*g*g*g))) * up[i]
			} else { // silu
				gate[i] = g / (1 + math.Exp(-g)) * up[i]
			}
		}
		m := linear(gate, w("mlp.down_proj.weight"), nil, h)
		if gemma {
			m = norm(m, w("post_feedforward_layernorm.weight"))
		}
		for i := range x {
			x[i] += m[i]
		}
	}
	x = norm(x, t["model.norm.weight"])
	head := t["lm_head.weight"]
	if a.tied {
		head = t["model.embed_tokens.weight"]
	}
	logits := linear(x, head, nil, a.vocab)
	if gemma && a.softcap > 0 {
		for i, v := range logits {
			logits[i] = a.softcap * math.Tanh(v/a.softcap)
		}
	}
	return logits
}

// refSequences are the test's token sequences: two of different lengths,
// longer than every window.
func refSequences(vocab int) [][]int32 {
	rng := rand.New(rand.NewPCG(5, 5))
	var seqs [][]int32
	for _, n := range []int{19, 12} {
		s := make([]int32, n)
		for i := range s {
			s[i] = int32(rng.IntN(vocab))
		}
		seqs = append(seqs, s)
	}
	return seqs
}

// refRelErr is ‖got − want‖ / ‖want‖.
func refRelErr(got []float32, want []float64) float64 {
	var d, w float64
	for i, x := range want {
		d += (float64(got[i]) - x) * (float64(got[i]) - x)
		w += x * x
	}
	return math.Sqrt(d / w)
}

// sortedNames lists a map's keys in order.
func sortedNames[V any](m map[string]V) []string {
	var s []string
	for k := range m {
		s = append(s, k)
	}
	sort.Strings(s)
	return s
}

// refMoE is MixtralSparseMoeBlock / Qwen3MoeSparseMoeBlock /
// Qwen2MoeSparseMoeBlock on the rows of x:
// softmax over the router logits, the top-k experts, their weights
// renormalised (Mixtral; Qwen3-MoE with norm_topk_prob), Σ w · down(silu(gate
// x) · up x).
func refMoE(a refArch, t map[string][]float64, p string, x []float64) []float64 {
	h := a.hidden
	prefix, names := "mlp.", [3]string{"gate_proj", "up_proj", "down_proj"}
	if a.typ == "mixtral" {
		prefix, names = "block_sparse_moe.", [3]string{"w1", "w3", "w2"}
	}
	router := t[p+prefix+"gate.weight"]
	out := make([]float64, len(x))
	for r := 0; r < len(x)/h; r++ {
		xr := x[r*h : (r+1)*h]
		prob := make([]float64, a.experts)
		mx := math.Inf(-1)
		for e := range a.experts {
			for i := range h {
				prob[e] += router[e*h+i] * xr[i]
			}
			mx = math.Max(mx, prob[e])
		}
		sum := 0.0
		for e := range prob {
			prob[e] = math.Exp(prob[e] - mx)
			sum += prob[e]
		}
		order := make([]int, a.experts)
		for e := range order {
			prob[e] /= sum
			order[e] = e
		}
		sort.Slice(order, func(i, j int) bool { return prob[order[i]] > prob[order[j]] })
		top := order[:a.topK]
		norm := 1.0
		if a.typ == "mixtral" || a.normTopK {
			norm = 0
			for _, e := range top {
				norm += prob[e]
			}
		}
		for _, e := range top {
			ex := func(j int) []float64 { return t[fmt.Sprintf("%s%sexperts.%d.%s.weight", p, prefix, e, names[j])] }
			g, u, d := ex(0), ex(1), ex(2)
			act := make([]float64, a.moeInter)
			for k := range a.moeInter {
				var gs, us float64
				for i := range h {
					gs += g[k*h+i] * xr[i]
					us += u[k*h+i] * xr[i]
				}
				act[k] = gs / (1 + math.Exp(-gs)) * us
			}
			for o := range h {
				s := 0.0
				for k := range a.moeInter {
					s += d[o*a.moeInter+k] * act[k]
				}
				out[r*h+o] += prob[e] / norm * s
			}
		}
	}
	if a.sharedInter > 0 {
		// Qwen2MoeSparseMoeBlock: + sigmoid(shared_expert_gate x) ·
		// shared_expert(x), on every row.
		g, u, d := t[p+"mlp.shared_expert.gate_proj.weight"], t[p+"mlp.shared_expert.up_proj.weight"], t[p+"mlp.shared_expert.down_proj.weight"]
		sg := t[p+"mlp.shared_expert_gate.weight"]
		for r := 0; r < len(x)/h; r++ {
			xr := x[r*h : (r+1)*h]
			z := 0.0
			for i := range h {
				z += sg[i] * xr[i]
			}
			scale := 1 / (1 + math.Exp(-z))
			act := make([]float64, a.sharedInter)
			for k := range act {
				var gs, us float64
				for i := range h {
					gs += g[k*h+i] * xr[i]
					us += u[k*h+i] * xr[i]
				}
				act[k] = gs / (1 + math.Exp(-gs)) * us
			}
			for o := range h {
				s := 0.0
				for k, v := range act {
					s += d[o*a.sharedInter+k] * v
				}
				out[r*h+o] += scale * s
			}
		}
	}
	return out
}
