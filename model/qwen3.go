package model

import (
	"errors"
	"fmt"
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
// factorization is approximate) and the dense and native exports in the
// Qwen3 layout. Refused (Config.Unsupported): MLA (a key is k_norm(k_proj
// x), not linear in a shared latent, so no conversion is exact) and the
// GPTQ v1 layout (written with Llama's tensors only).
// Refused in config.json: use_sliding_window (Qwen3's sliding layers from
// max_window_layers on) and sliding_attention layer types.

// qwen3 reads Qwen3's own config fields.
func (p *parser) qwen3(c *Config) {
	c.QKNorm = true
	if p.boolean("use_sliding_window", false) {
		p.fail("use_sliding_window", errors.New("true: Qwen3's sliding-window layers (from max_window_layers on) are not supported"))
	}
	for i, t := range p.layerTypes(c.NumLayers) {
		if t != "full_attention" {
			p.fail("layer_types", fmt.Errorf("layer %d is %q: only full_attention layers are supported for qwen3", i, t))
			return
		}
	}
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
