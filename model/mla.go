package model

import (
	"encoding/json"
	"fmt"
	"math"
	"slices"

	"github.com/rankzip/rankzip/kernels"
)

// MLA is DeepSeek-V2/V3 multi-head latent attention. It replaces a block's
// k_proj and v_proj (Block.K and Block.V are nil when Block.MLA is set):
// Block.Q is q_proj with per-head rows [q_nope (NopeDim); q_rope (RopeDim)],
// and Block.O reads NumHeads·VDim values. Each token caches its latent
// (LoraRank values) and one rope key shared by all heads (RopeDim values).
//
// Forward runs it in the plain form (every head's keys and values rebuilt
// through KVB) or, with Model.AbsorbMLA, in the absorbed form that the
// decoder uses: queries mapped into the latent space, attention over the
// cached rows, and KVB's value rows applied once to the weighted latent.
type MLA struct {
	// KVA is kv_a_proj_with_mqa, (LoraRank+RopeDim)×hidden: rows [latent; rope key].
	KVA *Dense
	// KVANorm is kv_a_layernorm over the latent; nil when absent (a model
	// converted from GQA has none).
	KVANorm []float32
	// KVB is kv_b_proj, NumHeads·(NopeDim+VDim)×LoraRank: per head rows [k_nope; v].
	KVB *Dense

	LoraRank, RopeDim, NopeDim, VDim int
	// RopeFreq holds RopeDim/2 inverse frequencies. The rope dims of queries
	// and keys are interleaved as in DeepSeek: pair i is dims (2i, 2i+1),
	// rotated by position·RopeFreq[i].
	RopeFreq []float64
}

// QKDim is the width of one query or key head: NopeDim + RopeDim.
func (a *MLA) QKDim() int { return a.NopeDim + a.RopeDim }

// CacheWidth is the number of values cached per token: the latent and the
// rope key.
func (a *MLA) CacheWidth() int { return a.LoraRank + a.RopeDim }

// NumParams counts kv_a_proj_with_mqa, kv_a_layernorm and kv_b_proj.
func (a *MLA) NumParams() int64 {
	return a.KVA.NumParams() + int64(len(a.KVANorm)) + a.KVB.NumParams()
}

// check validates an MLA block against config c; layer names it in errors.
func (a *MLA) check(c *Config, b *Block, layer int) error {
	fail := func(format string, args ...any) error {
		return fmt.Errorf("layer %d MLA: %s", layer, fmt.Sprintf(format, args...))
	}
	h := c.HiddenSize
	switch {
	case b.K != nil || b.V != nil:
		return fail("k_proj and v_proj must be nil beside kv_a_proj_with_mqa and kv_b_proj")
	case c.SlidingWindow > 0:
		return fail("sliding-window attention (window %d) is not supported with latent attention", c.SlidingWindow)
	case a.KVA == nil || a.KVB == nil || b.Q == nil || b.O == nil:
		return fail("q_proj, kv_a_proj_with_mqa, kv_b_proj and o_proj must all be set")
	case a.LoraRank <= 0 || a.RopeDim <= 0 || a.RopeDim%2 != 0 || a.NopeDim < 0 || a.VDim <= 0:
		return fail("ranks LoraRank %d, RopeDim %d (even), NopeDim %d, VDim %d must be positive", a.LoraRank, a.RopeDim, a.NopeDim, a.VDim)
	case len(a.RopeFreq) != a.RopeDim/2:
		return fail("%d rope frequencies for RopeDim %d, want %d", len(a.RopeFreq), a.RopeDim, a.RopeDim/2)
	case a.KVA.Out() != a.CacheWidth() || a.KVA.In() != h:
		return fail("kv_a_proj_with_mqa is %d×%d, want %d×%d", a.KVA.Out(), a.KVA.In(), a.CacheWidth(), h)
	case a.KVANorm != nil && len(a.KVANorm) != a.LoraRank:
		return fail("kv_a_layernorm has %d weights, want %d", len(a.KVANorm), a.LoraRank)
	case a.KVB.Out() != c.NumHeads*(a.NopeDim+a.VDim) || a.KVB.In() != a.LoraRank:
		return fail("kv_b_proj is %d×%d, want %d×%d", a.KVB.Out(), a.KVB.In(), c.NumHeads*(a.NopeDim+a.VDim), a.LoraRank)
	case b.Q.Out() != c.NumHeads*a.QKDim() || b.Q.In() != h:
		return fail("q_proj is %d×%d, want %d×%d", b.Q.Out(), b.Q.In(), c.NumHeads*a.QKDim(), h)
	case b.O.In() != c.NumHeads*a.VDim:
		return fail("o_proj reads %d values, want num_heads·v_head_dim = %d", b.O.In(), c.NumHeads*a.VDim)
	}
	return nil
}

// checkMLA validates every MLA block of m.
func (m *Model) checkMLA() error {
	for l, b := range m.Blocks {
		if b.MLA != nil {
			if err := b.MLA.check(m.Config, b, l); err != nil {
				return err
			}
		}
	}
	return nil
}

// latents returns, for rows of the normalised input x, what the cache keeps
// per token (rows × CacheWidth): the latent c (normalised by kv_a_layernorm
// when present), then the rope key rotated at its position.
func (a *MLA) latents(k kernels.Backend, x []float32, rows int, rope *rope, eps float64) []float32 {
	w, r := a.CacheWidth(), a.LoraRank
	lat := make([]float32, rows*w)
	a.KVA.Apply(k, lat, x, rows)
	if a.KVANorm != nil {
		for i := range rows {
			c := lat[i*w : i*w+r]
			rmsNorm(c, c, a.KVANorm, 1, r, eps)
		}
	}
	rope.interleaved(lat, 1, w, r)
	return lat
}

// mlaAttention is the attention of an MLA block over a batch of sequences
// (the rope parts of q already rotated): the plain form, which rebuilds every
// head's keys and values from the latents, or with m.AbsorbMLA the absorbed
// form, which attends in the latent space as the decoder does.
func (m *Model) mlaAttention(b *Block, x, q []float32, rope *rope, starts []int) []float32 {
	a, k, c := b.MLA, m.Backend, m.Config
	rows := len(x) / c.HiddenSize
	lat := a.latents(k, x, rows, rope, c.RMSNormEps)
	heads, w := c.NumHeads, a.CacheWidth()
	scale := float32(1 / math.Sqrt(float64(a.QKDim())))
	if m.AbsorbMLA {
		qa := a.absorbQueries(k, q, rows, heads)
		z := make([]float32, rows*heads*a.LoraRank)
		mhAttention(k, z, qa, lat, lat, starts, attnShape{heads: heads, kvHeads: 1, dk: w, dv: a.LoraRank,
			kStride: w, vStride: w, window: c.SlidingWindow, scale: scale})
		return a.expand(k, z, rows, heads)
	}
	n, v, dk := a.NopeDim, a.VDim, a.QKDim()
	kvb := make([]float32, rows*heads*(n+v))
	k.Sgemm(false, true, rows, heads*(n+v), a.LoraRank, 1, lat, w, a.KVB.Weight, a.LoraRank, 0, kvb, heads*(n+v))
	addBias(kvb, a.KVB.Bias, rows)
	keys := make([]float32, rows*heads*dk)
	vals := make([]float32, rows*heads*v)
	for r := range rows {
		for h := range heads {
			src := kvb[(r*heads+h)*(n+v) : (r*heads+h+1)*(n+v)]
			key := keys[(r*heads+h)*dk : (r*heads+h+1)*dk]
			copy(key, src[:n])
			copy(key[n:], lat[r*w+a.LoraRank:(r+1)*w]) // the rope key is shared by all heads
			copy(vals[(r*heads+h)*v:], src[n:])
		}
	}
	out := make([]float32, rows*heads*v)
	mhAttention(k, out, q, keys, vals, starts, attnShape{heads: heads, kvHeads: heads, dk: dk, dv: v,
		kStride: heads * dk, vStride: heads * v, window: c.SlidingWindow, scale: scale})
	return out
}

// absorbQueries maps each head's query [q_nope; q_rope] (q: rows ×
// heads·QKDim) to its latent-space query [W_ukᵀ q_nope; q_rope] (rows ×
// heads·CacheWidth), so that its dot product with a cached row [c; k_rope]
// is the score of the plain form. A k_nope bias would add the same term to
// every score of a query, which softmax cancels: it is left out.
func (a *MLA) absorbQueries(k kernels.Backend, q []float32, rows, heads int) []float32 {
	n, r, w, dk := a.NopeDim, a.LoraRank, a.CacheWidth(), a.QKDim()
	qa := make([]float32, rows*heads*w)
	for h := range heads {
		if n > 0 {
			wuk := a.KVB.Weight[h*(n+a.VDim)*r:] // n×r rows of head h's k_nope
			k.Sgemm(false, false, rows, r, n, 1, q[h*dk:], heads*dk, wuk, r, 0, qa[h*w:], heads*w)
		}
		for i := range rows {
			copy(qa[(i*heads+h)*w+r:(i*heads+h+1)*w], q[(i*heads+h)*dk+n:(i*heads+h+1)*dk])
		}
	}
	return qa
}

// expand maps each head's attention-weighted latent (z: rows × heads·LoraRank)
// through its value up-projection W_uv (with the value bias: the weights sum
// to one) to the head's output (rows × heads·VDim).
func (a *MLA) expand(k kernels.Backend, z []float32, rows, heads int) []float32 {
	n, v, r := a.NopeDim, a.VDim, a.LoraRank
	out := make([]float32, rows*heads*v)
	for h := range heads {
		wuv := a.KVB.Weight[(h*(n+v)+n)*r:] // v×r rows of head h's values
		k.Sgemm(false, true, rows, v, r, 1, z[h*r:], heads*r, wuv, r, 0, out[h*v:], heads*v)
	}
	if bias := a.KVB.Bias; bias != nil {
		for i := range rows {
			for h := range heads {
				o := out[(i*heads+h)*v : (i*heads+h+1)*v]
				for j, b := range bias[h*(n+v)+n : (h+1)*(n+v)] {
					o[j] += b
				}
			}
		}
	}
	return out
}

// mlaSave is what Save writes of a model whose blocks are all MLA.
type mlaSave struct {
	cfg  MLAConfig
	bias bool // attention_bias: q_proj, kv_a_proj_with_mqa or o_proj has one
}

// mlaLayout checks that m's blocks are all MLA, with one shape, or none;
// it finds where their rope frequencies come from: indices into InvFreq()
// of the config's own head_dim (the source model of a conversion), or of
// the source head_dim of a loaded DeepSeek config. nil: no MLA block.
func mlaLayout(m *Model) (*mlaSave, error) {
	c := m.Config
	var first *MLA
	for l, b := range m.Blocks {
		switch {
		case b.MLA == nil && first != nil, b.MLA != nil && l > 0 && first == nil:
			return nil, fmt.Errorf("save model: layer %d: some blocks use latent attention (MLA) and others do not; the DeepSeek layout needs all", l)
		case b.MLA == nil:
			continue
		}
		a := b.MLA
		if err := a.check(c, b, l); err != nil {
			return nil, fmt.Errorf("save model: %w", err)
		}
		if first == nil {
			first = a
			continue
		}
		if a.LoraRank != first.LoraRank || a.RopeDim != first.RopeDim || a.NopeDim != first.NopeDim || a.VDim != first.VDim ||
			(a.KVANorm == nil) != (first.KVANorm == nil) {
			return nil, fmt.Errorf("save model: layer %d MLA differs from layer 0 in its ranks or latent norm; the DeepSeek layout has one per model", l)
		}
	}
	if first == nil {
		if c.MLA != nil {
			return nil, fmt.Errorf("save model: config is a DeepSeek MLA one but no block uses latent attention")
		}
		return nil, nil
	}
	s := &mlaSave{cfg: MLAConfig{LoraRank: first.LoraRank, RopeDim: first.RopeDim, NopeDim: first.NopeDim, VDim: first.VDim,
		LatentNorm: first.KVANorm != nil}}
	src := *c
	if c.MLA != nil {
		src.HeadDim = c.MLA.RopeSourceHeadDim
	}
	inv := src.InvFreq()
	var layers [][]int
	for l, b := range m.Blocks {
		var index []int
		for i, f := range b.MLA.RopeFreq {
			j := nearest(inv, f)
			if math.Abs(inv[j]-f) > 1e-9*f {
				return nil, fmt.Errorf("save model: layer %d MLA rope frequency %d (%g) is none of the %d frequencies of a head_dim %d RoPE with rope_theta %g, so the deepseek-mla layout cannot express it",
					l, i, f, len(inv), src.HeadDim, c.RopeTheta)
			}
			index = append(index, j)
		}
		layers = append(layers, index)
	}
	s.cfg.RopeFreqIndex = layers[0]
	for _, index := range layers[1:] {
		if !slices.Equal(index, layers[0]) {
			s.cfg.LayerRopeFreqIndex = layers // layers keep different frequencies
			break
		}
	}
	s.cfg.RopeSourceHeadDim = src.HeadDim
	for _, b := range m.Blocks {
		s.bias = s.bias || b.MLA.KVA.Bias != nil || hasBias(b.Q) || hasBias(b.O)
	}
	return s, nil
}

// nearest is the index of the value of xs closest to x.
func nearest(xs []float64, x float64) int {
	best := 0
	for i, v := range xs {
		if math.Abs(v-x) < math.Abs(xs[best]-x) {
			best = i
		}
	}
	return best
}

// hasBias reports whether a dense or factored linear has a bias.
func hasBias(l Linear) bool {
	switch d := l.(type) {
	case *Dense:
		return d.Bias != nil
	case *Factored:
		return d.B.Bias != nil
	}
	return false
}

// settings adds to set the config.json keys of the DeepSeek-V3 layout and
// rankzip's "deepseek-mla" section (with the factored modules in ranks).
func (s *mlaSave) settings(m *Model, set map[string]any, ranks map[string]int) {
	c, a := m.Config, s.cfg
	null := json.RawMessage("null")
	for k, v := range map[string]any{
		"model_type": "deepseek_v3", "architectures": []string{"DeepseekV3ForCausalLM"},
		"num_key_value_heads": c.NumHeads, "head_dim": a.RopeDim,
		"kv_lora_rank": a.LoraRank, "qk_rope_head_dim": a.RopeDim, "qk_nope_head_dim": a.NopeDim, "v_head_dim": a.VDim,
		"q_lora_rank": null, "n_routed_experts": null, "first_k_dense_replace": len(m.Blocks),
		"rope_interleave": true, "qk_latent_layernorm": a.LatentNorm, "attention_bias": s.bias,
		// An active window is refused before this; an inert one would read as one.
		"sliding_window": nil, "use_sliding_window": nil,
	} {
		set[k] = v
	}
	sec := map[string]any{"format": "deepseek-mla", "mla_rope_source_head_dim": a.RopeSourceHeadDim, "mla_rope_freq_index": a.RopeFreqIndex}
	if a.LayerRopeFreqIndex != nil {
		sec["mla_layer_rope_freq_index"] = a.LayerRopeFreqIndex
	}
	if len(ranks) > 0 {
		sec["ranks"] = ranks
	}
	set[NativeSection] = sec
}
