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
	data, err := json.Marshal(syntheticConfig(s))
	if err != nil {
		return nil, err
	}
	cfg, err := ParseConfig("synthetic config", data)
	if err != nil {
		return nil, fmt.Errorf("synthetic model: %w", err)
	}
	r := randomWeights{rand.New(rand.NewPCG(seed, 0x5eed))}
	m := &Model{Config: cfg, Embed: r.gauss(s.Vocab*s.Hidden, 0.25), Norm: r.ones(s.Hidden), Backend: k}
	if cfg.Gemma != nil {
		for i := range m.Norm {
			m.Norm[i]--
		}
	}
	if s.Tied {
		m.LMHead = NewDense(s.Vocab, s.Hidden, m.Embed, nil)
	} else {
		m.LMHead = r.linear(s.Vocab, s.Hidden)
	}
	for i := range s.Layers {
		m.Blocks = append(m.Blocks, r.block(cfg, i))
	}
	return m, nil
}

// syntheticConfig is the config.json of a synthetic model.
func syntheticConfig(s SyntheticConfig) map[string]any {
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
	return raw
}

// randomWeights draws a synthetic model's weights, in a fixed order.
type randomWeights struct{ rng *rand.Rand }

// gauss is n Gaussian values of standard deviation std.
func (r randomWeights) gauss(n int, std float64) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(r.rng.NormFloat64() * std)
	}
	return v
}

// ones is a norm's n weights near 1.
func (r randomWeights) ones(n int) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = 1 + float32(0.1*r.rng.NormFloat64())
	}
	return v
}

// linear is an out×in layer with standard deviation 1/√in.
func (r randomWeights) linear(out, in int) *Dense {
	return NewDense(out, in, r.gauss(out*in, 1/math.Sqrt(float64(in))), nil)
}

// expert is an expert's gate, up and down projections, shaped by shape.
func (r randomWeights) expert(cfg *Config, shape func(*Config, int) (int, int)) Expert {
	var x [3]Linear
	for j := range 3 {
		x[j] = r.linear(shape(cfg, j))
	}
	return Expert{Gate: x[0], Up: x[1], Down: x[2]}
}

// block is layer i of a model of cfg: its norms, then its latent attention
// (MLA) and experts (MoE) if any, then its linear modules.
func (r randomWeights) block(cfg *Config, i int) *Block {
	b := &Block{}
	for _, n := range blockNorms(cfg) {
		if cfg.Gemma != nil { // Gemma's norms scale by 1 + w
			*n.get(b) = r.gauss(normSize(cfg, n), 0.1)
		} else {
			*n.get(b) = r.ones(normSize(cfg, n))
		}
	}
	b.Sliding = cfg.layerSlides(i)
	if a := cfg.MLA; a != nil {
		b.MLA = &MLA{LoraRank: a.LoraRank, RopeDim: a.RopeDim, NopeDim: a.NopeDim, VDim: a.VDim, RopeFreq: cfg.MLARopeFreq(),
			KVA: r.linear(a.LoraRank+a.RopeDim, cfg.HiddenSize),
			KVB: r.linear(cfg.NumHeads*(a.NopeDim+a.VDim), a.LoraRank)}
		if a.LatentNorm {
			b.MLA.KVANorm = r.ones(a.LoraRank)
		}
	}
	if e := cfg.MoE; e != nil {
		b.MoE = &MoE{Router: r.linear(e.Experts, cfg.HiddenSize), TopK: e.TopK, Norm: e.NormTopK}
		for range e.Experts {
			b.MoE.Experts = append(b.MoE.Experts, r.expert(cfg, expertShape))
		}
		if e.SharedInter > 0 {
			shared := r.expert(cfg, sharedShape)
			b.MoE.Shared, b.MoE.SharedGate = &shared, r.linear(1, cfg.HiddenSize)
		}
	}
	for _, mod := range b.Modules() {
		out, in, _ := linearShape(cfg, mod)
		l := r.linear(out, in)
		if cfg.QKVBias && slices.Contains(Modules[:3], mod) { // Qwen2-MoE's q, k, v
			l.Bias = r.gauss(out, 0.1)
		}
		*b.Linear(mod) = l
	}
	return b
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
