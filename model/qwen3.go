package model

import (
	"errors"
	"fmt"
	"slices"
)

// Qwen3 (transformers' models/qwen3/modeling_qwen3.py) is Llama with an
// RMSNorm over each head of the queries and of the keys, applied after
// q_proj and k_proj and before RoPE (self_attn.q_norm.weight and
// self_attn.k_norm.weight, head_dim values each, the norm weight multiplying
// as in Llama), and a head_dim that need not be hidden_size /
// num_attention_heads (Qwen3Config's default is 128). Biases follow
// attention_bias on q, k, v and o, as in Llama.
//
// Supported: the forward pass, decoding, the backward pass (through the q/k
// norms: fisher ranks), every linear-layer stage (svd, lord, rtn, gptq,
// eora), Palu (the latent rebuilds k_proj x; k_norm and RoPE apply to the
// rebuilt keys, in the forward pass and the latent cache alike, so only the
// factorization is approximate), the dense and native exports in the
// Qwen3 layout and the GPTQ v1 layout (q/k norms beside the packed
// linears). Refused (Config.Unsupported): MLA (a key is k_norm(k_proj x),
// not linear in a shared latent, so no conversion is exact).
//
// Sliding-window layers (Qwen3Config.__post_init__ and Qwen3Attention,
// transformers 4.5x to 5.x): sliding_window counts only when
// use_sliding_window is true (default 4096); layer_types, when given, names
// each layer, else the layers from max_window_layers on (default 28) slide.
// A sliding layer attends to the last sliding_window tokens, itself
// included, with the model's one RoPE. Refused: sliding_attention layers
// without a window (transformers cannot build their mask either).

// qwen3 reads Qwen3's own config fields.
func (p *parser) qwen3(c *Config) {
	c.QKNorm = true
	window := p.qwenWindow()
	types := p.layerTypes(c.NumLayers)
	sliding := make([]bool, len(types))
	for i, t := range types {
		sliding[i] = t == "sliding_attention"
	}
	if types == nil && window > 0 {
		first := 28 // Qwen3Config's max_window_layers
		if p.has("max_window_layers") && !p.isNull("max_window_layers") {
			first = p.nonNegative("max_window_layers")
		}
		sliding = make([]bool, c.NumLayers)
		for i := range sliding {
			sliding[i] = i >= first
		}
	}
	switch {
	case !slices.Contains(sliding, true):
	case window == 0:
		p.fail("layer_types", errors.New("has sliding_attention layers but no window: set use_sliding_window true and sliding_window"))
	default:
		c.SlidingWindow, c.SlidingLayers = window, sliding
	}
}

// qwenWindow is Qwen's sliding_window when use_sliding_window is true (as
// its config classes keep it), else 0.
func (p *parser) qwenWindow() int {
	if !p.boolean("use_sliding_window", false) || p.isNull("sliding_window") {
		return 0
	}
	if !p.has("sliding_window") {
		return 4096 // the config classes' default
	}
	return p.positive("sliding_window")
}

// layerTypes reads transformers' layer_types (nil when absent), one per layer.
func (p *parser) layerTypes(layers int) []string {
	var t []string
	if !p.decode("layer_types", &t) {
		return nil
	}
	if len(t) != layers {
		p.fail("layer_types", fmt.Errorf("has %d entries for %d layers (num_hidden_layers)", len(t), layers))
		return nil
	}
	for i, s := range t {
		if s != "full_attention" && s != "sliding_attention" {
			p.fail("layer_types", fmt.Errorf("layer %d is %q (known: full_attention, sliding_attention)", i, s))
			return nil
		}
	}
	return t
}

// headNorm applies a per-head norm w (head_dim values) to every head of the
// rows×(heads·head_dim) matrix x in place.
func (c *Config) headNorm(x, w []float32) {
	if w == nil {
		return
	}
	hd := c.HeadDim
	c.norm(x, x, w, len(x)/hd, hd)
}
