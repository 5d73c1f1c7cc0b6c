package model

import (
	"encoding/json"
	"fmt"
)

// The architectures rankzip reads differ from Llama in a few places, each
// kept in its own file the way ollama keeps one file per model:
//
//   - qwen3.go: per-head RMSNorm of queries and keys (q_norm, k_norm) before
//     RoPE; head_dim independent of hidden_size / num_attention_heads.
//   - phi3.go: fused qkv_proj and gate_up_proj tensors, split on load into
//     the seven linears every stage compresses, fused again on export.
//   - moe.go: Mixtral's and Qwen3-MoE's router and experts in place of the
//     MLP.
//   - gemma3.go: (1+w) RMSNorm, GeGLU, embeddings scaled by √hidden,
//     sliding and global layers with their own RoPE, q/k norms, norms after
//     attention and around the MLP, query_pre_attn_scalar, logit
//     soft-capping.
//   - gemma2.go: Gemma 3 without q/k norms, with one RoPE and attention
//     soft-capping.
//
// This file holds what they share: the table of config defaults and
// parsers, the norms of a block by tensor name, and the refusals of the
// features an architecture does not support.

// arch is one model_type's config defaults (those of its transformers config
// class) and its own parsing.
type arch struct {
	ropeTheta float64 // rope_theta when absent (0: 10000)
	eps       float64 // rms_norm_eps when absent
	tied      bool    // tie_word_embeddings when absent
	headDim   int     // head_dim when absent (0: hidden_size / num_attention_heads)
	// parse reads the architecture's own fields after the common ones.
	parse func(p *parser, c *Config)
	// rope, when set, reads the RoPE settings instead of parser.rope.
	rope func(p *parser) RopeSettings
}

// archs are the model types rankzip reads (Palu's palu<type> map to theirs).
var archs = map[string]arch{
	"llama":       {eps: 1e-6},
	"mistral":     {eps: 1e-6},
	"qwen2":       {eps: 1e-6},
	"deepseek_v2": {eps: 1e-6},
	"deepseek_v3": {eps: 1e-6},
	"qwen3":       {eps: 1e-6, headDim: 128, parse: (*parser).qwen3},
	"phi3":        {eps: 1e-5, parse: (*parser).phi3},
	"gemma3_text": {ropeTheta: 1e6, eps: 1e-6, tied: true, headDim: 256, parse: (*parser).gemma3, rope: (*parser).gemma3Rope},
	"gemma2":      {eps: 1e-6, tied: true, headDim: 256, parse: (*parser).gemma2, rope: (*parser).gemma2Rope},
	"mixtral":     {ropeTheta: 1e6, eps: 1e-5, parse: (*parser).mixtral},
	"qwen3_moe":   {eps: 1e-6, parse: (*parser).qwen3moe},
	"qwen2_moe":   {eps: 1e-6, parse: (*parser).qwen2moe},
}

// unsupportedHint adds to the refusal of a model type what to do instead.
func unsupportedHint(modelType string) string {
	switch modelType {
	case "gemma3":
		return "; this is Gemma 3's vision-language config: its text model (text_config, model_type gemma3_text) is supported"
	case "olmoe", "dbrx", "jamba":
		return "; of the mixture-of-experts models only mixtral, qwen2_moe and qwen3_moe are supported"
	case "phi3small", "phimoe", "phi4mm", "phi4_multimodal":
		return "; of the Phi family only phi3 (Phi-3 mini/medium, Phi-4) is supported"
	}
	return ""
}

// ropeSettings reads the RoPE settings of a config of the given model type.
func (p *parser) ropeSettings(modelType string) RopeSettings {
	a := archs[modelType]
	p.ropeDefault = a.ropeTheta
	if a.rope != nil {
		return a.rope(p)
	}
	theta, scaling := p.rope()
	return RopeSettings{Theta: theta, Scaling: scaling}
}

// modelTypeOf is config.json's model_type as ParseConfig maps it ("" when
// absent or unreadable).
func modelTypeOf(raw map[string]json.RawMessage) string {
	var t string
	json.Unmarshal(raw["model_type"], &t)
	if _, ok := archs[t]; !ok && len(t) > 4 && t[:4] == "palu" {
		return t[4:]
	}
	return t
}

// norm applies the model's RMSNorm (Gemma's scales by 1+w) to each row.
func (c *Config) norm(dst, src, w []float32, rows, dim int) {
	if c.Gemma != nil {
		rmsNormPlusOne(dst, src, w, rows, dim, c.RMSNormEps)
		return
	}
	rmsNorm(dst, src, w, rows, dim, c.RMSNormEps)
}

// blockNorm is one norm weight of a block: its tensor name inside the layer
// (model.layers.i.<name>.weight), where the Block holds it, and whether it
// has head_dim values (else hidden_size).
type blockNorm struct {
	name    string
	get     func(*Block) *[]float32
	perHead bool
}

var (
	attnNorm     = blockNorm{"input_layernorm", func(b *Block) *[]float32 { return &b.AttnNorm }, false}
	postAttnNorm = blockNorm{"post_attention_layernorm", func(b *Block) *[]float32 { return &b.MLPNorm }, false}
	qNorm        = blockNorm{"self_attn.q_norm", func(b *Block) *[]float32 { return &b.QNorm }, true}
	kNorm        = blockNorm{"self_attn.k_norm", func(b *Block) *[]float32 { return &b.KNorm }, true}
)

// blockNorms lists the norms of a block of config c by tensor name.
func blockNorms(c *Config) []blockNorm {
	switch {
	case c.Gemma != nil && !c.QKNorm:
		return gemmaNorms[:4] // Gemma 2: no q/k norms
	case c.Gemma != nil:
		return gemmaNorms
	case c.QKNorm:
		return []blockNorm{attnNorm, postAttnNorm, qNorm, kNorm}
	}
	return []blockNorm{attnNorm, postAttnNorm}
}

// Feature names a computation that not every architecture supports.
type Feature string

const (
	FeatureBackward Feature = "the backward pass (fisher ranks)"
	FeaturePalu     Feature = "Palu (low-rank key/value latents)"
	FeatureMLA      Feature = "MLA conversion (TransMLA)"
	FeatureGPTQ     Feature = "the GPTQ v1 checkpoint layout"
)

// Unsupported returns an error naming the architecture and the reason when
// feature f is not implemented for models of config c, nil when it is.
func (c *Config) Unsupported(f Feature) error {
	why := ""
	switch {
	case c.MoE != nil && f != FeaturePalu && f != FeatureGPTQ: // the GPTQ layout holds experts (model/gptq)
		why = "the router and experts (mixture of experts) are not handled by it"
	case c.MoE != nil && f == FeaturePalu:
		why = "its rank search and layout are not implemented for mixture-of-experts models"
	// Palu is supported with q/k norms: the latent reconstructs k_proj x,
	// and the per-head k_norm, then RoPE, apply to the rebuilt keys, in the
	// forward pass and in the decoder's latent cache alike (exact for the
	// factorization; the factorization itself minimises the error of k_proj
	// x, not of the normalised key).
	case c.QKNorm && f == FeatureMLA:
		// MLA's absorbed form needs keys linear in the latent; the per-head
		// norm of each key is not, so no conversion is exact.
		why = "keys pass through a per-head RMSNorm (k_norm), which is not linear, so keys cannot be a linear map of a shared latent"
	case c.Gemma != nil && f == FeatureMLA: // Gemma 2
		why = "the latent attention has neither Gemma's score scale and soft cap nor its sliding layers"
	case c.Fused && f == FeatureGPTQ:
		// Quantized layers of these models go to the native layout.
		why = "its fused qkv_proj and gate_up_proj are not re-fused in this layout; use the native export"
	}
	if why == "" {
		return nil
	}
	return fmt.Errorf("%s is not supported for model_type %s: %s", f, c.ModelType, why)
}

// NormTensor is one norm weight of a block as a checkpoint names it, for
// writers and readers of other layouts (the GPTQ one: model/gptq).
type NormTensor struct {
	Name string     // inside the layer, without ".weight" (self_attn.q_norm)
	Size int        // head_dim or hidden_size values
	W    *[]float32 // where the block holds it
}

// NormTensors lists the norms of block b of a model of config c.
func (c *Config) NormTensors(b *Block) []NormTensor {
	var out []NormTensor
	for _, n := range blockNorms(c) {
		out = append(out, NormTensor{Name: n.name, Size: normSize(c, n), W: n.get(b)})
	}
	return out
}

// EmptyBlock is block l of a model of config c with its per-layer settings
// (whether it slides) and no weights yet, for readers of other layouts.
func (c *Config) EmptyBlock(l int) *Block { return &Block{Sliding: c.layerSlides(l)} }

// normSize is the number of weights of norm n.
func normSize(c *Config, n blockNorm) int {
	if n.perHead {
		return c.HeadDim
	}
	return c.HiddenSize
}
