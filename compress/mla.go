package compress

import (
	"context"
	"fmt"
	"slices"
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
	// SeqLen is the longest calibration sequence (the query–key distances
	// the scores rotation weighs); Check sets it.
	SeqLen int
}

// MLALayer reports the conversion of one layer (model's type).
type MLALayer = model.MLAReport

// MLAResult is the converted model.
type MLAResult struct {
	Model       *model.Model
	Layers      []MLALayer
	KVBytes     int // per token at 16-bit, after
	KVBytesOrig int // per token at 16-bit, before
}

// DefaultRotation is the rotation a recipe gets unless it says otherwise.
const DefaultRotation = mla.Rotation(model.DefaultRotation)

// Check validates o against m and the calibration sequences and fills in
// its defaults.
func (o *MLAOptions) Check(src Source, seqs [][]int32) error {
	c := src.Top.Config
	tokens := 0
	for _, s := range seqs {
		tokens += len(s)
		o.SeqLen = max(o.SeqLen, len(s))
	}
	var problems []string
	if o.Rotation == "" {
		o.Rotation = DefaultRotation
	}
	if o.FreqFold == 0 {
		o.FreqFold = 1
	}
	if err := calibDefaults(&o.Mode, &o.Batch); err != nil {
		problems = append(problems, err.Error())
	}
	if err := c.Unsupported(model.FeatureMLA); err != nil {
		problems = append(problems, err.Error())
	} else if c.MLA != nil {
		problems = append(problems, "the model already has latent attention")
	} else {
		a := &mla.Attention{Heads: c.NumHeads, KVHeads: c.NumKVHeads, HeadDim: c.HeadDim, InvFreq: c.InvFreq()}
		if err := o.options().Check(a); err != nil {
			problems = append(problems, err.Error())
		}
	}
	if c.SlidingWindow > 0 {
		problems = append(problems, fmt.Sprintf("sliding_window %d: latent attention here is full causal", c.SlidingWindow))
	}
	for i := range src.Layers() {
		b, err := src.Block(i)
		if err != nil {
			return err
		}
		if b.MLA != nil {
			problems = append(problems, fmt.Sprintf("model.layers.%d already has latent attention", i))
			continue
		}
		for _, mod := range []string{"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"} {
			l := b.Linear(mod)
			if _, ok := (*l).(*model.Dense); !ok {
				problems = append(problems, fmt.Sprintf("%s is %T: mla needs separate dense q, k and v projections", model.ModuleName(i, mod), *l))
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

func (o *MLAOptions) options() mla.Options {
	return mla.Options{RopeDim: o.RopeDim, LoraRank: o.LoraRank, Rotation: o.Rotation, FreqFold: o.FreqFold, BKV: o.BKV, SeqLen: max(o.SeqLen, 1)}
}

// RunMLA converts every attention layer of m to MLA, block by block on the
// calibration stream (each block sees the inputs the converted blocks
// before it produce, in sequential mode).
func RunMLA(ctx context.Context, m *model.Model, seqs [][]int32, o MLAOptions) (*MLAResult, error) {
	if err := o.Check(Whole(m), seqs); err != nil {
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
	for i := range m.Blocks {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		comp, layer, next, err := o.Block(ctx, m, i, st, nil)
		if err != nil {
			return nil, err
		}
		idx = append(idx, layer.RopeFreqIndex)
		out.Blocks[i] = comp
		res.Layers = append(res.Layers, layer)
		st = next
	}
	cfg := *c
	cfg.MLA = &model.MLAConfig{LoraRank: o.LoraRank, RopeDim: o.RopeDim, NopeDim: c.HeadDim, VDim: c.HeadDim,
		RopeSourceHeadDim: c.HeadDim, RopeFreqIndex: idx[0]}
	for _, x := range idx[1:] {
		if !slices.Equal(x, idx[0]) {
			cfg.MLA.LayerRopeFreqIndex = idx
			break
		}
	}
	out.Config = &cfg
	res.Model = &out
	res.KVBytes = out.KVBytesPerToken()
	return res, nil
}

// Block converts the attention of block i of m, calibrated on the streams
// entering it, and returns the block, its report and the streams entering
// block i+1 (nil after the last block). o must have passed Check.
func (o *MLAOptions) Block(ctx context.Context, m *model.Model, i int, st *calib.Streams, beat Beat) (*model.Block, MLALayer, *calib.Streams, error) {
	orig := m.Blocks[i]
	// The converted block replaces q, k and v together; its pass starts
	// as the original block and takes the conversion before going on.
	comp := *orig
	pass := calib.NewPass(m, orig, &comp, st)
	defer pass.Release()
	pass.OnBatch(batchStep(ctx, beat, i))
	stats, err := pass.Stats(model.AttnInput)
	if err != nil {
		return nil, MLALayer{}, nil, fmt.Errorf("calibrate block %d attention input: %w", i, err)
	}
	if err := step(ctx, beat, fmt.Sprintf("model.layers.%d attention input statistics", i)); err != nil {
		return nil, MLALayer{}, nil, err
	}
	conv, layer, err := convertBlock(m, i, orig, stats, o.options())
	if err != nil {
		return nil, MLALayer{}, nil, err
	}
	comp = *conv
	if err := step(ctx, beat, fmt.Sprintf("model.layers.%d.self_attn", i)); err != nil {
		return nil, MLALayer{}, nil, err
	}
	var next *calib.Streams
	if i+1 < len(m.Blocks) {
		if next, err = pass.Next(); err != nil {
			return nil, MLALayer{}, nil, err
		}
	}
	return &comp, layer, next, nil
}

// convertBlock converts the attention of one block calibrated on stats.
func convertBlock(m *model.Model, i int, orig *model.Block, stats *calib.SiteStats, o mla.Options) (*model.Block, MLALayer, error) {
	c := m.Config
	a := &mla.Attention{Heads: c.NumHeads, KVHeads: c.NumKVHeads, HeadDim: c.HeadDim, InvFreq: c.InvFreq()}
	var err error
	name := model.LayerPrefix(i) + "self_attn."
	if a.Q, a.QBias, err = weight(orig.Q, name+"q_proj"); err != nil {
		return nil, MLALayer{}, err
	}
	if a.K, a.KBias, err = weight(orig.K, name+"k_proj"); err != nil {
		return nil, MLALayer{}, err
	}
	if a.V, a.VBias, err = weight(orig.V, name+"v_proj"); err != nil {
		return nil, MLALayer{}, err
	}
	r, err := mla.Convert(m.Backend, a, mla.Stats{C: stats.C, Sum: stats.Sum, N: stats.N}, o)
	if err != nil {
		return nil, MLALayer{}, fmt.Errorf("model.layers.%d: %w", i, err)
	}
	freq := make([]float64, len(r.RopeFreqIndex))
	for j, x := range r.RopeFreqIndex {
		freq[j] = a.InvFreq[x]
	}
	comp := *orig
	comp.Q = denseF32(r.Q, r.QBias)
	comp.K, comp.V = nil, nil
	comp.MLA = &model.MLA{
		KVA: denseF32(r.KVA, r.KVABias), KVB: denseF32(r.KVB, nil),
		LoraRank: o.LoraRank, RopeDim: o.RopeDim, NopeDim: c.HeadDim, VDim: c.HeadDim, RopeFreq: freq,
	}
	return &comp, MLALayer{Layer: i, RopeShare: r.RopeShare, LatentShare: r.LatentShare, Alpha: r.Alpha, RopeFreqIndex: r.RopeFreqIndex}, nil
}
