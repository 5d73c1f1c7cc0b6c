package model

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
)

// Gemma 3's text model (model_type gemma3_text, Gemma3ForCausalLM;
// transformers' models/gemma3/modeling_gemma3.py and configuration_gemma3.py,
// 4.50 to 5.x) differs from Llama in:
//
//   - RMSNorm scales by (1 + w), computed in float32 (weights stored as w);
//   - the MLP is GeGLU: down(gelu_tanh(gate x) · up x) (hidden_activation
//     gelu_pytorch_tanh);
//   - embeddings are multiplied by √hidden_size (in the weights' dtype);
//   - four norms per layer: input_layernorm before attention,
//     post_attention_layernorm on the attention output before the residual
//     add, pre_feedforward_layernorm before the MLP and
//     post_feedforward_layernorm on its output before the residual add;
//   - q_norm and k_norm over each head before RoPE, as Qwen3 (1+w as well);
//   - attention scores scaled by query_pre_attn_scalar^-½, not head_dim^-½;
//   - sliding_attention layers (layer_types, or 4.x's sliding_window_pattern:
//     every pattern-th layer global) see the last sliding_window tokens and
//     use the local RoPE (4.x rope_local_base_freq, 5.x
//     rope_parameters.sliding_attention); full_attention layers use the
//     global one (rope_theta and rope_scaling, or
//     rope_parameters.full_attention);
//   - final_logit_softcapping, when set: logits = c·tanh(logits/c);
//   - attn_logit_softcapping must be null: Gemma3Attention does not apply
//     it (gemma2.go's attention does).
//
// Tied embeddings are the default (Gemma3TextConfig's). Supported: every
// linear-layer stage, the backward pass (fisher ranks; backward.go holds the
// (1+w) norms as 1 + w, the post norms, GeGLU, the soft cap) and Palu (as
// Qwen3's, the latent cache rebuilds keys, then k_norm and the layer's
// RoPE). Refused: attn_logit_softcapping (see above),
// use_bidirectional_attention, other activations;
// and, through Config.Unsupported, MLA.

// GemmaConfig is what Gemma 3 adds to the common config.
type GemmaConfig struct {
	SlidingWindow int
	Sliding       []bool // per layer: sliding_attention
	// LocalRopeTheta and LocalRopeScaling are the sliding layers' RoPE.
	LocalRopeTheta     float64
	LocalRopeScaling   *RopeScaling
	QueryPreAttnScalar float64
	FinalSoftcap       float64 // 0: none
	AttnSoftcap        float64 // attention scores' cap (Gemma 2's attn_logit_softcapping); 0: none
}

// gemmaNorms are a Gemma 3 block's norms by tensor name.
var gemmaNorms = []blockNorm{
	attnNorm,
	{"post_attention_layernorm", func(b *Block) *[]float32 { return &b.PostAttnNorm }, false},
	{"pre_feedforward_layernorm", func(b *Block) *[]float32 { return &b.MLPNorm }, false},
	{"post_feedforward_layernorm", func(b *Block) *[]float32 { return &b.PostFFNNorm }, false},
	qNorm, kNorm,
}

// gemma3 reads Gemma 3's own config fields.
func (p *parser) gemma3(c *Config) {
	g := &GemmaConfig{LocalRopeTheta: p.local.LocalTheta, LocalRopeScaling: p.local.LocalScaling}
	c.Gemma, c.QKNorm = g, true
	// Gemma3Attention keeps attn_logit_softcapping but never passes it to
	// the attention (Gemma2Attention does), so transformers ignores it.
	if v := p.float("attn_logit_softcapping", 0); v != 0 {
		p.fail("attn_logit_softcapping", fmt.Errorf("%v: transformers' Gemma 3 attention does not apply it (Gemma 2's does), so what the checkpoint means is unclear; set it to null", v))
	}
	pattern := 6 // Gemma3TextConfig's sliding_window_pattern
	if p.has("sliding_window_pattern") && !p.isNull("sliding_window_pattern") {
		pattern = p.positive("sliding_window_pattern")
	}
	p.gemma(c, pattern, 0)
}

// gemma reads what Gemma 2 and 3 share: the activation, the attention scale,
// the window and which layers slide (layer_types, else every pattern-th
// layer global), the final soft cap (finalCap when absent) and the causal
// mask.
func (p *parser) gemma(c *Config, pattern int, finalCap float64) {
	g := c.Gemma
	if act := p.str("hidden_activation", "gelu_pytorch_tanh"); act != "gelu_pytorch_tanh" {
		p.fail("hidden_activation", fmt.Errorf("unsupported activation %q (only gelu_pytorch_tanh)", act))
	}
	c.Act = "gelu_pytorch_tanh"
	g.QueryPreAttnScalar = p.float("query_pre_attn_scalar", 256)
	if !(g.QueryPreAttnScalar > 0) {
		p.fail("query_pre_attn_scalar", fmt.Errorf("must be positive, got %v", g.QueryPreAttnScalar))
	}
	g.SlidingWindow = 4096
	if p.has("sliding_window") && !p.isNull("sliding_window") {
		g.SlidingWindow = p.positive("sliding_window")
	}
	g.FinalSoftcap = p.softcap("final_logit_softcapping", finalCap)
	if p.boolean("use_bidirectional_attention", false) {
		p.fail("use_bidirectional_attention", errors.New("true: only causal attention is supported"))
	}
	types := p.layerTypes(c.NumLayers)
	if types == nil {
		for i := range c.NumLayers {
			t := "full_attention"
			if pattern > 0 && (i+1)%pattern != 0 {
				t = "sliding_attention"
			}
			types = append(types, t)
		}
	}
	for _, t := range types {
		g.Sliding = append(g.Sliding, t == "sliding_attention")
	}
}

// softcap reads a soft-capping value: def when absent, 0 (none) when null.
func (p *parser) softcap(key string, def float64) float64 {
	if p.isNull(key) {
		return 0
	}
	v := p.float(key, def)
	if v < 0 {
		p.fail(key, fmt.Errorf("must be positive or null, got %v", v))
	}
	return v
}

// gemma3Rope reads Gemma 3's two RoPEs: 4.x's rope_theta and rope_scaling
// (global) with rope_local_base_freq (local, unscaled), or transformers 5's
// rope_parameters with one entry per layer type.
func (p *parser) gemma3Rope() RopeSettings {
	r, ok := p.raw["rope_parameters"]
	if !ok || bytes.Equal(r, []byte("null")) {
		theta, scaling := p.rope()
		local := p.float("rope_local_base_freq", 10000)
		return RopeSettings{Theta: theta, Scaling: scaling, LocalTheta: p.ropeTheta("rope_local_base_freq", local)}
	}
	const field = "rope_parameters"
	var m map[string]json.RawMessage
	if err := json.Unmarshal(r, &m); err != nil {
		p.fail(field, fmt.Errorf("expected an object: %v", err))
		return RopeSettings{}
	}
	for _, k := range sortedKeys(m) {
		if !slices.Contains(ropeLayerTypes, k) || !isObject(m[k]) && !bytes.Equal(m[k], []byte("null")) {
			p.fail(field, fmt.Errorf("key %q: gemma3_text needs one rope object per layer type (full_attention, sliding_attention)", k))
			return RopeSettings{}
		}
	}
	read := func(layerType string, theta float64) (float64, *RopeScaling) {
		v, ok := m[layerType]
		if !ok || bytes.Equal(v, []byte("null")) {
			p.fail(field, fmt.Errorf("no entry for layer type %q", layerType))
			return 0, nil
		}
		c, ok := p.ropeObject(field+"."+layerType, v)
		if ok && c.theta > 0 {
			theta = c.theta
		}
		return theta, c.scaling
	}
	s := RopeSettings{}
	s.Theta, s.Scaling = read("full_attention", 1e6)
	s.LocalTheta, s.LocalScaling = read("sliding_attention", 10000)
	// Keys of the 4.x form beside it must agree.
	if t := p.float("rope_theta", s.Theta); t != s.Theta {
		p.fail("rope_theta", fmt.Errorf("%v disagrees with rope_parameters.full_attention.rope_theta %v", t, s.Theta))
	}
	if t := p.float("rope_local_base_freq", s.LocalTheta); t != s.LocalTheta {
		p.fail("rope_local_base_freq", fmt.Errorf("%v disagrees with rope_parameters.sliding_attention.rope_theta %v", t, s.LocalTheta))
	}
	if r, ok := p.raw["rope_scaling"]; ok && !bytes.Equal(r, []byte("null")) {
		if c, ok := p.ropeObject("rope_scaling", r); ok && !sameScaling(c.scaling, s.Scaling) {
			p.fail("rope_scaling", fmt.Errorf("%s disagrees with rope_parameters.full_attention (%s)", describeScaling(c.scaling), describeScaling(s.Scaling)))
		}
	}
	if f := "partial_rotary_factor"; p.has(f) && !p.isNull(f) {
		var v float64
		if p.decode(f, &v) && v != 1 {
			p.fail(f, fmt.Errorf("%v: partial rotary embeddings are not supported (only 1)", v))
		}
	}
	return s
}

// LocalInvFreq is the RoPE inverse frequencies of Gemma 3's sliding layers.
func (c *Config) LocalInvFreq() []float64 {
	l := *c
	l.RopeTheta, l.RopeScaling = c.Gemma.LocalRopeTheta, c.Gemma.LocalRopeScaling
	return l.InvFreq()
}

// rmsNormPlusOne is Gemma's RMSNorm: x / sqrt(mean(x²) + eps) · (1 + w),
// with 1 + w rounded to float32 as transformers does.
func rmsNormPlusOne(dst, src, w []float32, rows, dim int, eps float64) {
	parallelFor(rows, max(1, 4096/dim), func(lo, hi int) {
		for r := lo; r < hi; r++ {
			row := src[r*dim : (r+1)*dim]
			var ss float64
			for _, v := range row {
				ss += float64(v) * float64(v)
			}
			inv := float32(1 / math.Sqrt(ss/float64(dim)+eps))
			out := dst[r*dim : (r+1)*dim]
			for i, v := range row {
				out[i] = (v * inv) * (1 + w[i])
			}
		}
	})
}

// geluTanh is gelu with the tanh approximation (gelu_pytorch_tanh).
func geluTanh(x float32) float32 {
	v := float64(x)
	return float32(0.5 * v * (1 + math.Tanh(math.Sqrt(2/math.Pi)*(v+0.044715*v*v*v))))
}

// softcap replaces each x by c·tanh(x/c).
func softcap(x []float32, c float64) {
	parallelFor(len(x), 1<<14, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			x[i] = float32(c * math.Tanh(float64(x[i])/c))
		}
	})
}
