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

// Plan is a validated stage with the rank of every targeted matrix chosen.
// It is plain data, so a workflow can pass it between activities.
type Plan struct {
	Options Options
	Modules []string               // targeted modules of each block, in block order
	Ranks   map[string]rank.Choice // by model.layers.i.<module>
}

// NewPlan validates o against m and the calibration set and chooses ranks
// (a global search runs one calibration pass for the spectra).
func NewPlan(ctx context.Context, m *model.Model, seqs [][]int32, o Options) (*Plan, error) {
	tokens := 0
	for _, s := range seqs {
		tokens += len(s)
	}
	if err := o.Validate(m, tokens); err != nil {
		return nil, err
	}
	mods, _ := modulesOf(o.Targets)
	ranks, err := allocate(ctx, m, seqs, o, mods)
	if err != nil {
		return nil, err
	}
	return &Plan{Options: o, Modules: mods, Ranks: ranks}, nil
}

// Run compresses m with one low-rank stage calibrated on seqs. m itself is
// not modified: the result shares its unchanged tensors.
func Run(ctx context.Context, m *model.Model, seqs [][]int32, o Options, progress Progress) (*Result, error) {
	p, err := NewPlan(ctx, m, seqs, o)
	if err != nil {
		return nil, err
	}
	st, err := calib.Embed(m, seqs, p.Options.Batch, p.Options.Mode)
	if err != nil {
		return nil, err
	}
	out := *m
	out.Blocks = make([]*model.Block, len(m.Blocks))
	res := &Result{Model: &out}
	for i := range m.Blocks {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		var layers []Layer
		if out.Blocks[i], layers, st, err = p.Block(m, i, st); err != nil {
			return nil, err
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
// entering block i+1 (nil after the last block).
func (p *Plan) Block(m *model.Model, i int, st *calib.Streams) (*model.Block, []Layer, *calib.Streams, error) {
	orig := m.Blocks[i]
	comp := *orig
	var layers []Layer
	var stats *calib.SiteStats
	var err error
	site := model.Site(-1)
	for _, mod := range p.Modules {
		name := fmt.Sprintf("model.layers.%d.%s", i, mod)
		if s := siteOf(mod); s != site {
			// Statistics of this site see the linears compressed before it.
			if stats, err = calib.Collect(m, orig, &comp, st, s); err != nil {
				return nil, nil, nil, fmt.Errorf("calibrate %s: %w", name, err)
			}
			site = s
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
	}
	var next *calib.Streams
	if i+1 < len(m.Blocks) {
		next = calib.Advance(m, orig, &comp, st)
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

// allocate chooses a rank (or dense) for every targeted matrix. A global
// search first needs each matrix's whitened spectrum, taken from the
// original model's statistics in one pass over the blocks.
func allocate(ctx context.Context, m *model.Model, seqs [][]int32, o Options, mods []string) (map[string]rank.Choice, error) {
	var mats []rank.Matrix
	for i := range m.Blocks {
		for _, mod := range mods {
			out, in := dims(m, mod)
			mats = append(mats, rank.Matrix{Name: fmt.Sprintf("model.layers.%d.%s", i, mod), Out: out, In: in})
		}
	}
	choices := make(map[string]rank.Choice, len(mats))
	if o.Rank > 0 {
		for _, mt := range mats {
			choices[mt.Name] = rank.Choice{Rank: min(o.Rank, mt.Out, mt.In)}
		}
		return choices, nil
	}
	var alloc rank.Allocation
	var err error
	switch o.RankSearch {
	case "uniform":
		alloc, err = rank.Uniform(mats, o.KeepParams)
	case "global":
		if err := spectra(ctx, m, seqs, o, mods, mats); err != nil {
			return nil, err
		}
		alloc, err = rank.Global(mats, o.KeepParams)
	}
	if err != nil {
		return nil, err
	}
	for i, mt := range mats {
		choices[mt.Name] = alloc.Choices[i]
	}
	return choices, nil
}

// spectra fills mats[i].Sigma with the whitened singular values of each
// targeted matrix under the original model's statistics.
func spectra(ctx context.Context, m *model.Model, seqs [][]int32, o Options, mods []string, mats []rank.Matrix) error {
	st, err := calib.Embed(m, seqs, o.Batch, calib.Original)
	if err != nil {
		return err
	}
	j := 0
	for i, b := range m.Blocks {
		if err := ctx.Err(); err != nil {
			return err
		}
		var stats *calib.SiteStats
		site := model.Site(-1)
		for _, mod := range mods {
			if s := siteOf(mod); s != site {
				if stats, err = calib.Collect(m, b, b, st, s); err != nil {
					return fmt.Errorf("calibrate block %d: %w", i, err)
				}
				site = s
			}
			w, _, err := weight(*b.Linear(mod), mats[j].Name)
			if err != nil {
				return err
			}
			if mats[j].Sigma, err = svd.Spectrum(m.Backend, w, stats.C); err != nil {
				return fmt.Errorf("%s: %w", mats[j].Name, err)
			}
			j++
		}
		if i+1 < len(m.Blocks) {
			st = calib.Advance(m, b, b, st)
		}
	}
	return nil
}
