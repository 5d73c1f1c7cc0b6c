package compress

import (
	"context"
	"fmt"

	"gonum.org/v1/gonum/mat"

	"github.com/rankzip/rankzip/calib"
	"github.com/rankzip/rankzip/methods/lord"
	"github.com/rankzip/rankzip/methods/rank"
	"github.com/rankzip/rankzip/methods/svd"
	"github.com/rankzip/rankzip/model"
)

// Progress is told after each block.
type Progress func(block, blocks int)

// Beat is told, inside a block step, what unit of work has just finished (a
// site's statistics, a layer: "model.layers.3.mlp.up_proj"), so that a
// caller can heartbeat from the work itself. It may be nil.
type Beat func(done string)

// step tells beat what was done and returns ctx's error, if any: the check
// between the units of a block.
func step(ctx context.Context, beat Beat, done string) error {
	if beat != nil {
		beat(done)
	}
	return ctx.Err()
}

// batchStep is the per-batch check of block i's calibration pass.
func batchStep(ctx context.Context, beat Beat, i int) func(batch int) error {
	return func(batch int) error {
		return step(ctx, beat, fmt.Sprintf("model.layers.%d calibration batch %d", i, batch))
	}
}

// Plan is a validated stage with the rank of every targeted matrix chosen.
// It is plain data, so a workflow can pass it between activities.
type Plan struct {
	Options Options
	Modules []string               // targeted modules of each block, in block order
	Ranks   map[string]rank.Choice // by model.layers.i.<module>
}

// NewPlan validates o against the model of src and the calibration set and
// chooses ranks. The uniform, global and fisher searches hold one block of
// src at a time; sensitivity and local read every block.
func NewPlan(ctx context.Context, src Source, seqs [][]int32, o Options) (*Plan, error) {
	tokens := 0
	for _, s := range seqs {
		tokens += len(s)
	}
	first, err := src.Block(0)
	if err != nil {
		return nil, err
	}
	if err := o.validate(src.Top.Config, first, tokens); err != nil {
		return nil, err
	}
	mods, _ := targetModules(src.Top.Config, o.Targets)
	ranks, err := allocate(ctx, src, first, seqs, o, mods)
	if err != nil {
		return nil, err
	}
	return &Plan{Options: o, Modules: mods, Ranks: ranks}, nil
}

// Run compresses m with one low-rank stage calibrated on seqs. m itself is
// not modified: the result shares its unchanged tensors.
func Run(ctx context.Context, m *model.Model, seqs [][]int32, o Options, progress Progress) (*Result, error) {
	p, err := NewPlan(ctx, Whole(m), seqs, o)
	if err != nil {
		return nil, err
	}
	st, err := calib.EmbedSpill(m, seqs, p.Options.Batch, p.Options.Mode, p.Options.Spill)
	if err != nil {
		return nil, err
	}
	defer func() { st.Release() }()
	out := *m
	out.Blocks = make([]*model.Block, len(m.Blocks))
	res := &Result{Model: &out}
	for i := range m.Blocks {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		var layers []Layer
		var next *calib.Streams
		if out.Blocks[i], layers, next, err = p.Block(ctx, m, i, st, nil); err != nil {
			return nil, err
		}
		if next != nil {
			st.Release()
			st = next
		}
		for _, l := range layers {
			res.Layers = append(res.Layers, l)
			res.Total += l.Out * l.In
			if l.Dense {
				res.Params += l.Out * l.In
			} else {
				res.Params += l.Rank * (l.Out + l.In)
			}
		}
		if progress != nil {
			progress(i+1, len(m.Blocks))
		}
	}
	return res, nil
}

// Block compresses block i of m, calibrated on the streams entering it, and
// returns the compressed block, its per-layer report and the streams
// entering block i+1 (nil after the last block). Each batch runs through the
// original and the compressed block once (calib.Pass); ctx is checked and
// beat told after each site's statistics and each layer, so cancellation
// takes effect between layers.
func (p *Plan) Block(ctx context.Context, m *model.Model, i int, st *calib.Streams, beat Beat) (*model.Block, []Layer, *calib.Streams, error) {
	orig := m.Blocks[i]
	comp := *orig
	expertBlock(&comp)
	pass := calib.NewPass(m, orig, &comp, st)
	defer pass.Release()
	pass.OnBatch(batchStep(ctx, beat, i))
	var layers []Layer
	var stats *calib.SiteStats
	var err error
	site := model.Site(-1)
	for _, mod := range p.Modules {
		if isExpert(mod) {
			continue // below, once the attention is done (moe.go)
		}
		name := model.ModuleName(i, mod)
		if s := siteOf(mod); s != site {
			// Statistics of this site see the linears compressed before it.
			if stats, err = pass.Stats(s); err != nil {
				return nil, nil, nil, fmt.Errorf("calibrate %s: %w", name, err)
			}
			site = s
			if err := step(ctx, beat, name+" input statistics"); err != nil {
				return nil, nil, nil, err
			}
		}
		ch, ok := p.Ranks[name]
		if !ok {
			return nil, nil, nil, fmt.Errorf("plan has no rank for %s", name)
		}
		w, bias, err := weight(*orig.Linear(mod), name)
		if err != nil {
			return nil, nil, nil, err
		}
		out, in := w.Dims()
		if ch.Dense {
			layers = append(layers, Layer{Name: name, Out: out, In: in, Dense: true})
			continue
		}
		f, predicted, err := factor(m, w, bias, stats, p.Options, ch.Rank)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("%s: %w", name, err)
		}
		*comp.Linear(mod) = f
		layers = append(layers, Layer{Name: name, Out: out, In: in, Rank: ch.Rank, PredictedError: predicted})
		if err := step(ctx, beat, name); err != nil {
			return nil, nil, nil, err
		}
	}
	ex, err := p.experts(m, i, orig, &comp, pass)
	if err != nil {
		return nil, nil, nil, err
	}
	layers = append(layers, ex...)
	var next *calib.Streams
	if i+1 < len(m.Blocks) {
		if next, err = pass.Next(); err != nil {
			return nil, nil, nil, err
		}
	}
	return &comp, layers, next, nil
}

// factor fits one matrix at rank r. In sequential mode the target is the
// corrected W̃ = W K C⁻¹ (fit to the original outputs from compressed inputs).
func factor(m *model.Model, w *mat.Dense, bias []float64, s *calib.SiteStats, o Options, r int) (*model.Factored, float64, error) {
	k := m.Backend
	target := w
	if s.Cross != nil {
		var err error
		if target, err = svd.CorrectedTarget(k, w, s.Cross, s.C); err != nil {
			return nil, 0, err
		}
	}
	switch o.Method {
	case "lord":
		res, err := lord.Decompose(k, target, bias, s.C, s.Mean(), s.N, r)
		if err != nil {
			return nil, 0, err
		}
		return factored(res.B, res.A, res.Bias), res.PredictedError, nil
	case "asvd":
		res, err := svd.ASVD(k, target, s.MeanAbs(), o.Alpha, r)
		if err != nil {
			return nil, 0, err
		}
		return factored(res.B, res.A, bias), res.PredictedError, nil
	case "plain":
		res, err := svd.Plain(k, target, r)
		if err != nil {
			return nil, 0, err
		}
		return factored(res.B, res.A, bias), res.PredictedError, nil
	default:
		res, err := svd.Whiten(k, target, s.C, r)
		if err != nil {
			return nil, 0, err
		}
		return factored(res.B, res.A, bias), res.PredictedError, nil
	}
}
