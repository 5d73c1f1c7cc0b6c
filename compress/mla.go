package compress

import (
	"context"
	"fmt"
	"strings"

	"github.com/rankzip/rankzip/calib"
	"github.com/rankzip/rankzip/methods/mla"
	"github.com/rankzip/rankzip/model"
)

// MLAOptions describe a TransMLA stage: every GQA layer converted to
// multi-head latent attention (methods/mla).
type MLAOptions struct {
	RopeDim  int          // qk_rope_head_dim
	LoraRank int          // kv_lora_rank
	Rotation mla.Rotation // none, keys (RoRoPE) or scores [scores]
	FreqFold int          // [1]
	BKV      bool
	Mode     calib.Mode // sequential (default) or original
	Batch    int        // calibration sequences per batch [16]
}

// MLALayer reports the conversion of one layer.
type MLALayer struct {
	Layer       int
	RopeShare   float64 // share of the key energy held by the rope dims
	LatentShare float64 // share of [K_nope/α; V] energy held by the latent
	Alpha       float64 // BKV scale
}

// MLAResult is the converted model.
type MLAResult struct {
	Model       *model.Model
	Layers      []MLALayer
	KVBytes     int // per token at 16-bit, after
	KVBytesOrig int // per token at 16-bit, before
}

// DefaultRotation is the rotation a recipe gets unless it says otherwise.
const DefaultRotation = mla.RotateScores

func (o *MLAOptions) validate(m *model.Model, tokens int) error {
	c := m.Config
	var problems []string
	if o.Rotation == "" {
		o.Rotation = DefaultRotation
	}
	if o.FreqFold == 0 {
		o.FreqFold = 1
	}
	if o.Mode == "" {
		o.Mode = calib.Sequential
	}
	if o.Mode != calib.Sequential && o.Mode != calib.Original {
		problems = append(problems, fmt.Sprintf("calibration mode %q unknown", o.Mode))
	}
	if o.Batch <= 0 {
		o.Batch = 16
	}
	if c.MLA != nil {
		problems = append(problems, "the model already has latent attention")
	} else {
		a := &mla.Attention{Heads: c.NumHeads, KVHeads: c.NumKVHeads, HeadDim: c.HeadDim, InvFreq: c.InvFreq()}
		if err := o.options(0).Check(a); err != nil {
			problems = append(problems, err.Error())
		}
	}
	if c.SlidingWindow > 0 {
		problems = append(problems, fmt.Sprintf("sliding_window %d: latent attention here is full causal", c.SlidingWindow))
	}
	for i, b := range m.Blocks {
		for _, mod := range []string{"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"} {
			l := b.Linear(mod)
			if _, ok := (*l).(*model.Dense); !ok {
				problems = append(problems, fmt.Sprintf("model.layers.%d.%s is %T: mla needs separate dense q, k and v projections", i, mod, *l))
			}
		}
	}
	if tokens < c.HiddenSize {
		problems = append(problems, fmt.Sprintf("the calibration set has %d tokens; mla needs at least hidden_size = %d", tokens, c.HiddenSize))
	}
	if len(problems) > 0 {
		return fmt.Errorf("invalid mla stage: %s", strings.Join(problems, "; "))
	}
	return nil
}

func (o *MLAOptions) options(seqLen int) mla.Options {
	return mla.Options{RopeDim: o.RopeDim, LoraRank: o.LoraRank, Rotation: o.Rotation, FreqFold: o.FreqFold, BKV: o.BKV, SeqLen: max(seqLen, 1)}
}

// RunMLA converts every attention layer of m to MLA, block by block on the
// calibration stream (each block sees the inputs the converted blocks
// before it produce, in sequential mode).
func RunMLA(ctx context.Context, m *model.Model, seqs [][]int32, o MLAOptions) (*MLAResult, error) {
	tokens, seqLen := 0, 0
	for _, s := range seqs {
		tokens += len(s)
		seqLen = max(seqLen, len(s))
	}
	if err := o.validate(m, tokens); err != nil {
		return nil, err
	}
	c := m.Config
	st, err := calib.Embed(m, seqs, o.Batch, o.Mode)
	if err != nil {
		return nil, err
	}
	res := &MLAResult{KVBytesOrig: m.KVBytesPerToken()}
	out := *m
	out.Blocks = make([]*model.Block, len(m.Blocks))
	var idx [][]int // per layer: the rope pairs' frequencies
	for i, orig := range m.Blocks {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		stats, err := calib.Collect(m, orig, orig, st, model.AttnInput)
		if err != nil {
			return nil, fmt.Errorf("calibrate block %d attention input: %w", i, err)
		}
		comp, layer, freq, err := convertBlock(m, i, orig, stats, o.options(seqLen))
		if err != nil {
			return nil, err
		}
		idx = append(idx, freq)
		out.Blocks[i] = comp
		res.Layers = append(res.Layers, layer)
		if i+1 < len(m.Blocks) {
			if st, err = calib.Advance(m, orig, comp, st); err != nil {
				return nil, err
			}
		}
	}
	cfg := *c
	cfg.MLA = &model.MLAConfig{LoraRank: o.LoraRank, RopeDim: o.RopeDim, NopeDim: c.HeadDim, VDim: c.HeadDim,
		RopeSourceHeadDim: c.HeadDim, RopeFreqIndex: idx[0]}
	for _, x := range idx[1:] {
		if !equalInts(x, idx[0]) {
			cfg.MLA.LayerRopeFreqIndex = idx
			break
		}
	}
	out.Config = &cfg
	res.Model = &out
	res.KVBytes = out.KVBytesPerToken()
	return res, nil
}

// convertBlock converts the attention of one block calibrated on stats.
func convertBlock(m *model.Model, i int, orig *model.Block, stats *calib.SiteStats, o mla.Options) (*model.Block, MLALayer, []int, error) {
	c := m.Config
	a := &mla.Attention{Heads: c.NumHeads, KVHeads: c.NumKVHeads, HeadDim: c.HeadDim, InvFreq: c.InvFreq()}
	var err error
	name := fmt.Sprintf("model.layers.%d.self_attn.", i)
	if a.Q, a.QBias, err = weight(orig.Q, name+"q_proj"); err != nil {
		return nil, MLALayer{}, nil, err
	}
	if a.K, a.KBias, err = weight(orig.K, name+"k_proj"); err != nil {
		return nil, MLALayer{}, nil, err
	}
	if a.V, a.VBias, err = weight(orig.V, name+"v_proj"); err != nil {
		return nil, MLALayer{}, nil, err
	}
	r, err := mla.Convert(m.Backend, a, mla.Stats{C: stats.C, Sum: stats.Sum, N: stats.N}, o)
	if err != nil {
		return nil, MLALayer{}, nil, fmt.Errorf("model.layers.%d: %w", i, err)
	}
	inv := c.InvFreq()
	freq := make([]float64, len(r.RopeFreqIndex))
	for j, x := range r.RopeFreqIndex {
		freq[j] = inv[x]
	}
	comp := *orig
	comp.Q = denseF32(r.Q, r.QBias)
	comp.K, comp.V = nil, nil
	comp.MLA = &model.MLA{
		KVA: denseF32(r.KVA, r.KVABias), KVB: denseF32(r.KVB, nil),
		LoraRank: o.LoraRank, RopeDim: o.RopeDim, NopeDim: c.HeadDim, VDim: c.HeadDim, RopeFreq: freq,
	}
	return &comp, MLALayer{Layer: i, RopeShare: r.RopeShare, LatentShare: r.LatentShare, Alpha: r.Alpha}, r.RopeFreqIndex, nil
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
