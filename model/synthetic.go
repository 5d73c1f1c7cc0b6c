package model

import (
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"

	"github.com/rankzip/rankzip/kernels"
)

// SyntheticConfig describes a generated Llama model (for the demo, tests and
// benchmarks).
type SyntheticConfig struct {
	Hidden, Intermediate, Layers, Heads, KVHeads, Vocab, MaxPositions int
	Tied                                                              bool
	// MLA, when set, makes every block DeepSeek latent attention (a
	// deepseek_v3 config; KVHeads must equal Heads).
	MLA *MLAConfig
	// ModelType, when set, builds another architecture: "qwen3", "phi3",
	// "gemma3_text" (Gemma's layers alternate sliding and global), or the
	// mixtures of experts "mixtral", "qwen3_moe" and "qwen2_moe" (Experts
	// experts of Intermediate each, TopK per token; Qwen2-MoE's shared
	// expert of 2·Intermediate).
	ModelType     string
	Experts, TopK int
	HeadDim       int // head_dim when not Hidden/Heads (qwen3, gemma3_text)
	// SlidingWindow is Phi-3's window on every layer or Gemma 3's on its
	// sliding layers (0: none for Phi-3, Gemma's default 4096).
	SlidingWindow int
}

// Synthetic returns a Llama model with the given shapes and random weights
// drawn from seed: Gaussian with standard deviation 1/√in per linear layer, so
// activations keep their scale, and embeddings with standard deviation 0.25,
// so the output distribution is far from uniform.
func Synthetic(s SyntheticConfig, seed uint64, k kernels.Backend) (*Model, error) {
	raw := map[string]any{
		"architectures": []string{"LlamaForCausalLM"}, "model_type": "llama",
		"hidden_size": s.Hidden, "intermediate_size": s.Intermediate, "num_hidden_layers": s.Layers,
		"num_attention_heads": s.Heads, "num_key_value_heads": s.KVHeads, "vocab_size": s.Vocab,
		"max_position_embeddings": s.MaxPositions, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
		"hidden_act": "silu", "tie_word_embeddings": s.Tied, "attention_bias": false, "mlp_bias": false,
		"bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float32",
	}
	if a := s.MLA; a != nil {
		for k, v := range map[string]any{"model_type": "deepseek_v3", "architectures": []string{"DeepseekV3ForCausalLM"},
			"kv_lora_rank": a.LoraRank, "qk_rope_head_dim": a.RopeDim, "qk_nope_head_dim": a.NopeDim, "v_head_dim": a.VDim,
			"qk_latent_layernorm": a.LatentNorm} {
			raw[k] = v
		}
		if a.RopeSourceHeadDim != 0 {
			raw[NativeSection] = map[string]any{"format": "deepseek-mla", "mla_rope_source_head_dim": a.RopeSourceHeadDim, "mla_rope_freq_index": a.RopeFreqIndex}
		}
	}
	if t := s.ModelType; t != "" {
		raw["model_type"] = t
		raw["architectures"] = []string{map[string]string{"qwen3": "Qwen3ForCausalLM", "phi3": "Phi3ForCausalLM", "gemma3_text": "Gemma3ForCausalLM",
			"mixtral": "MixtralForCausalLM", "qwen3_moe": "Qwen3MoeForCausalLM", "qwen2_moe": "Qwen2MoeForCausalLM"}[t]}
		switch t {
		case "mixtral":
			raw["num_local_experts"], raw["num_experts_per_tok"] = s.Experts, s.TopK
		case "qwen3_moe", "qwen2_moe":
			raw["num_experts"], raw["num_experts_per_tok"], raw["moe_intermediate_size"], raw["norm_topk_prob"] = s.Experts, s.TopK, s.Intermediate, true
		}
		if t == "qwen2_moe" {
			raw["shared_expert_intermediate_size"] = 2 * s.Intermediate
		}
		if s.HeadDim > 0 {
			raw["head_dim"] = s.HeadDim
		}
		if s.SlidingWindow > 0 {
			raw["sliding_window"] = s.SlidingWindow
		}
		if t == "gemma3_text" {
			delete(raw, "hidden_act")
			raw["hidden_activation"], raw["sliding_window_pattern"], raw["rope_theta"], raw["rope_local_base_freq"] = "gelu_pytorch_tanh", 2, 1e6, 1e4
			raw["query_pre_attn_scalar"] = max(s.HeadDim, s.Hidden/s.Heads)
		}
	}
	data, err := json.Marshal(raw)
	if err != nil {
		return nil, err
	}
	cfg, err := ParseConfig("synthetic config", data)
	if err != nil {
		return nil, fmt.Errorf("synthetic model: %w", err)
	}
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	gauss := func(n int, std float64) []float32 {
		v := make([]float32, n)
		for i := range v {
			v[i] = float32(rng.NormFloat64() * std)
		}
		return v
	}
	ones := func(n int) []float32 {
		v := make([]float32, n)
		for i := range v {
			v[i] = 1 + float32(0.1*rng.NormFloat64())
		}
		return v
	}
	m := &Model{Config: cfg, Embed: gauss(s.Vocab*s.Hidden, 0.25), Norm: ones(s.Hidden), Backend: k}
	if cfg.Gemma != nil {
		for i := range m.Norm {
			m.Norm[i]--
		}
	}
	if s.Tied {
		m.LMHead = NewDense(s.Vocab, s.Hidden, m.Embed, nil)
	} else {
		m.LMHead = NewDense(s.Vocab, s.Hidden, gauss(s.Vocab*s.Hidden, 1/math.Sqrt(float64(s.Hidden))), nil)
	}
	for range s.Layers {
		b := &Block{}
		for _, n := range blockNorms(cfg) {
			if cfg.Gemma != nil { // Gemma's norms scale by 1 + w
				*n.get(b) = gauss(normSize(cfg, n), 0.1)
			} else {
				*n.get(b) = ones(normSize(cfg, n))
			}
		}
		b.Sliding = cfg.layerSlides(len(m.Blocks))
		if a := cfg.MLA; a != nil {
			b.MLA = &MLA{LoraRank: a.LoraRank, RopeDim: a.RopeDim, NopeDim: a.NopeDim, VDim: a.VDim, RopeFreq: cfg.MLARopeFreq(),
				KVA: NewDense(a.LoraRank+a.RopeDim, s.Hidden, gauss((a.LoraRank+a.RopeDim)*s.Hidden, 1/math.Sqrt(float64(s.Hidden))), nil),
				KVB: NewDense(s.Heads*(a.NopeDim+a.VDim), a.LoraRank, gauss(s.Heads*(a.NopeDim+a.VDim)*a.LoraRank, 1/math.Sqrt(float64(a.LoraRank))), nil)}
			if a.LatentNorm {
				b.MLA.KVANorm = ones(a.LoraRank)
			}
		}
		if e := cfg.MoE; e != nil {
			b.MoE = &MoE{Router: NewDense(e.Experts, s.Hidden, gauss(e.Experts*s.Hidden, 1/math.Sqrt(float64(s.Hidden))), nil), TopK: e.TopK, Norm: e.NormTopK}
			for range e.Experts {
				var x [3]Linear
				for j := range 3 {
					out, in := expertShape(cfg, j)
					x[j] = NewDense(out, in, gauss(out*in, 1/math.Sqrt(float64(in))), nil)
				}
				b.MoE.Experts = append(b.MoE.Experts, Expert{Gate: x[0], Up: x[1], Down: x[2]})
			}
			if e.SharedInter > 0 {
				var x [3]Linear
				for j := range 3 {
					out, in := sharedShape(cfg, j)
					x[j] = NewDense(out, in, gauss(out*in, 1/math.Sqrt(float64(in))), nil)
				}
				b.MoE.Shared, b.MoE.SharedGate = &Expert{Gate: x[0], Up: x[1], Down: x[2]}, NewDense(1, s.Hidden, gauss(s.Hidden, 1/math.Sqrt(float64(s.Hidden))), nil)
			}
		}
		for _, mod := range b.Modules() {
			out, in, _ := linearShape(cfg, mod)
			w := gauss(out*in, 1/math.Sqrt(float64(in)))
			var bias []float32
			if cfg.QKVBias && slices.Contains(Modules[:3], mod) { // Qwen2-MoE's q, k, v
				bias = gauss(out, 0.1)
			}
			*b.Linear(mod) = NewDense(out, in, w, bias)
		}
		m.Blocks = append(m.Blocks, b)
	}
	return m, nil
}

// Sample draws n sequences of length seqLen from m at temperature 1, each
// starting with bos: data on which m has a meaningful perplexity.
func Sample(m *Model, n, seqLen int, bos int32, seed uint64) ([][]int32, error) {
	rng := rand.New(rand.NewPCG(seed, 0xda7a))
	seqs := make([][]int32, n)
	for i := range seqs {
		d := m.NewDecoder()
		seqs[i] = []int32{bos}
		for len(seqs[i]) < seqLen {
			logits, err := d.Step(seqs[i][len(seqs[i])-1])
			if err != nil {
				return nil, err
			}
			seqs[i] = append(seqs[i], int32(sampleSoftmax(logits, rng)))
		}
	}
	return seqs, nil
}

func sampleSoftmax(logits []float32, rng *rand.Rand) int {
	mx := math.Inf(-1)
	for _, x := range logits {
		mx = math.Max(mx, float64(x))
	}
	var sum float64
	for _, x := range logits {
		sum += math.Exp(float64(x) - mx)
	}
	u := rng.Float64() * sum
	for i, x := range logits {
		u -= math.Exp(float64(x) - mx)
		if u <= 0 {
			return i
		}
	}
	return len(logits) - 1
}
