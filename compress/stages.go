package compress

import (
	"context"
	"fmt"

	"github.com/rankzip/rankzip/calib"
	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/methods/eora"
	"github.com/rankzip/rankzip/methods/palu"
	"github.com/rankzip/rankzip/methods/svd"
	"github.com/rankzip/rankzip/model"
	"github.com/rankzip/rankzip/model/gptq"
)

// Per-block steps of RunPalu, RunQuant and RunEoRA (and RunMLA's in
// mla.go), for callers (the workflow's activities) that store each block's
// result before going on. The whole-model functions are these steps run
// over every block in order, each on the streams the previous one returned,
// so the two paths cannot drift apart.

// PaluPlan is a validated Palu stage with every group's rank chosen. It is
// plain data, so a workflow can pass it between activities.
type PaluPlan struct {
	Options PaluOptions
	Ranks   map[string][]int // per module (model.layers.i.self_attn.k_proj), per group
}

// NewPaluPlan validates o against the model of src and chooses the ranks
// as RunPalu does (a spectrum search runs one calibration pass, a fisher
// search one backward pass, over src one block at a time).
func NewPaluPlan(ctx context.Context, src Source, seqs [][]int32, o PaluOptions) (*PaluPlan, error) {
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
	c := src.Top.Config
	ranks, err := paluRanks(ctx, src, seqs, o, c.NumKVHeads/o.GroupHeads, o.GroupHeads*c.HeadDim)
	if err != nil {
		return nil, err
	}
	return &PaluPlan{Options: o, Ranks: ranks}, nil
}

// Block factors k_proj and v_proj of block i of m, calibrated on the
// streams entering it, and returns the block and the streams entering block
// i+1 (nil after the last block).
func (p *PaluPlan) Block(ctx context.Context, m *model.Model, i int, st *calib.Streams, beat Beat) (*model.Block, *calib.Streams, error) {
	o := p.Options
	orig := m.Blocks[i]
	comp := *orig
	pass := calib.NewPass(m, orig, &comp, st)
	defer pass.Release()
	pass.OnBatch(batchStep(ctx, beat, i))
	stats, err := pass.Stats(model.AttnInput)
	if err != nil {
		return nil, nil, fmt.Errorf("calibrate block %d attention input: %w", i, err)
	}
	if err := step(ctx, beat, fmt.Sprintf("model.layers.%d attention input statistics", i)); err != nil {
		return nil, nil, err
	}
	for _, mod := range paluModules {
		name := model.ModuleName(i, mod)
		ranks, ok := p.Ranks[name]
		if !ok {
			return nil, nil, fmt.Errorf("palu plan has no ranks for %s", name)
		}
		w, bias, err := weight(*orig.Linear(mod), name)
		if err != nil {
			return nil, nil, err
		}
		if stats.Cross != nil {
			if w, err = svd.CorrectedTarget(m.Backend, w, stats.Cross, stats.C); err != nil {
				return nil, nil, fmt.Errorf("%s: %w", name, err)
			}
		}
		res, err := palu.Decompose(m.Backend, w, bias, stats.C, m.Config.HeadDim, o.GroupHeads, ranks)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", name, err)
		}
		if o.Hadamard {
			res = res.Rotate()
		}
		g, err := grouped(res)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", name, err)
		}
		g.LatentBits, g.LatentGroup = o.LatentBits, o.LatentGroupSize
		*comp.Linear(mod) = g
		if err := step(ctx, beat, name); err != nil {
			return nil, nil, err
		}
	}
	var next *calib.Streams
	if i+1 < len(m.Blocks) {
		if next, err = pass.Next(); err != nil {
			return nil, nil, err
		}
	}
	return &comp, next, nil
}

// Block quantizes the targeted linears of block i of m as RunQuant does,
// calibrated on the streams entering it, and returns the block, its
// per-layer report and the streams entering block i+1 (nil after the last
// block). o must have passed Validate.
func (o *QuantOptions) Block(ctx context.Context, m *model.Model, i int, st *calib.Streams, beat Beat) (*model.Block, []QuantLayer, *calib.Streams, error) {
	mods, err := targetModules(m.Config, o.Targets)
	if err != nil {
		return nil, nil, nil, err
	}
	orig := m.Blocks[i]
	comp := *orig
	expertBlock(&comp)
	pass := calib.NewPass(m, orig, &comp, st)
	defer pass.Release()
	pass.OnBatch(batchStep(ctx, beat, i))
	var layers []QuantLayer
	var stats *calib.SiteStats
	site := model.Site(-1)
	for _, mod := range mods {
		if isExpert(mod) {
			continue // below, once the attention is done (moe.go)
		}
		name := model.ModuleName(i, mod)
		if s := siteOf(mod); s != site {
			if stats, err = pass.Stats(s); err != nil {
				return nil, nil, nil, fmt.Errorf("calibrate %s: %w", name, err)
			}
			site = s
			if err := step(ctx, beat, name+" input statistics"); err != nil {
				return nil, nil, nil, err
			}
		}
		w, bias, err := weight(*orig.Linear(mod), name)
		if err != nil {
			return nil, nil, nil, err
		}
		q, layer, err := quantizeLayer(m.Backend, w, bias, stats, *o)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("%s: %w", name, err)
		}
		layer.Name = name
		*comp.Linear(mod) = q
		layers = append(layers, layer)
		if err := step(ctx, beat, name); err != nil {
			return nil, nil, nil, err
		}
	}
	ex, err := o.experts(m, i, orig, &comp, pass, mods)
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

// Check validates o as RunEoRA does and fills in its defaults; it also
// fails when no targeted layer of comp is compressed. orig is the original
// model's configuration.
func (o *EoRAOptions) Check(comp Source, orig *model.Config) error {
	if o.Rank <= 0 {
		return fmt.Errorf("eora: rank %d must be positive", o.Rank)
	}
	if comp.Layers() != orig.NumLayers || comp.Top.Config.HiddenSize != orig.HiddenSize {
		return fmt.Errorf("eora: the compressed model (%d layers) and the original (%d layers) differ in shape", comp.Layers(), orig.NumLayers)
	}
	mods, err := targetModules(comp.Top.Config, o.Targets)
	if err != nil {
		return fmt.Errorf("eora: %w", err)
	}
	for g := range o.Ranks {
		if err := model.CheckGlob(g); err != nil {
			return fmt.Errorf("eora: rank pattern %q: %w", g, err)
		}
	}
	if err := calibDefaults(&o.Mode, &o.Batch); err != nil {
		return fmt.Errorf("eora: %w", err)
	}
	for i := range comp.Layers() {
		b, err := comp.Block(i)
		if err != nil {
			return err
		}
		for _, mod := range mods {
			if _, dense := (*b.Linear(mod)).(*model.Dense); !dense {
				return nil
			}
		}
	}
	return fmt.Errorf("eora: no compressed layer among the targets")
}

// Block fits the EoRA corrections of block i as RunEoRA does: comp is block
// i of the compressed model, orig the original model, st the streams
// entering block i (embedded by orig). It returns the compensated block, its
// adapters and per-layer report, and the streams entering block i+1 (nil
// after the last block). o must have passed Check.
func (o *EoRAOptions) Block(ctx context.Context, orig *model.Model, i int, comp *model.Block, st *calib.Streams, beat Beat) (*model.Block, []gptq.Adapter, []EoRALayer, *calib.Streams, error) {
	mods, err := targetModules(orig.Config, o.Targets)
	if err != nil {
		return nil, nil, nil, nil, fmt.Errorf("eora: %w", err)
	}
	ob := orig.Blocks[i]
	nb := *comp
	expertBlock(&nb)
	pass := calib.NewPass(orig, ob, &nb, st)
	defer pass.Release()
	pass.OnBatch(batchStep(ctx, beat, i))
	var adapters []gptq.Adapter
	var layers []EoRALayer
	var stats *calib.SiteStats
	site := model.Site(-1)
	for _, mod := range mods {
		if isExpert(mod) {
			continue // below, once the attention is done (moe.go)
		}
		name := model.ModuleName(i, mod)
		if _, dense := (*nb.Linear(mod)).(*model.Dense); dense {
			continue // nothing to compensate
		}
		if s := siteOf(mod); s != site {
			if stats, err = pass.Stats(s); err != nil {
				return nil, nil, nil, nil, fmt.Errorf("calibrate %s: %w", name, err)
			}
			site = s
			if err := step(ctx, beat, name+" input statistics"); err != nil {
				return nil, nil, nil, nil, err
			}
		}
		a, layer, err := o.compensate(orig.Backend, name, mod, ob, &nb, stats)
		if err != nil {
			return nil, nil, nil, nil, err
		}
		adapters = append(adapters, a)
		layers = append(layers, layer)
		if err := step(ctx, beat, name); err != nil {
			return nil, nil, nil, nil, err
		}
	}
	ea, el, err := o.experts(orig.Backend, i, ob, &nb, pass, mods)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	adapters, layers = append(adapters, ea...), append(layers, el...)
	var next *calib.Streams
	if i+1 < len(orig.Blocks) {
		if next, err = pass.Next(); err != nil {
			return nil, nil, nil, nil, err
		}
	}
	return &nb, adapters, layers, next, nil
}

// compensate fits the EoRA correction of module mod (named name) of nb, a
// compressed layer, against ob's, on the statistics of its input, and wraps
// it in nb.
func (o *EoRAOptions) compensate(k kernels.Backend, name, mod string, ob, nb *model.Block, stats *calib.SiteStats) (gptq.Adapter, EoRALayer, error) {
	cl := *nb.Linear(mod)
	w, _, err := weight(*ob.Linear(mod), name)
	if err != nil {
		return gptq.Adapter{}, EoRALayer{}, err
	}
	if stats.Cross != nil {
		// The target of a layer that sees the compensated stream (see
		// RunEoRA).
		if w, err = svd.CorrectedTarget(k, w, stats.Cross, stats.C); err != nil {
			return gptq.Adapter{}, EoRALayer{}, fmt.Errorf("eora: %s: %w", name, err)
		}
	}
	wc, err := EffectiveWeight(k, cl)
	if err != nil {
		return gptq.Adapter{}, EoRALayer{}, fmt.Errorf("eora: %s: %w", name, err)
	}
	r := o.Rank
	for g, v := range o.Ranks {
		if model.GlobMatches(g, mod) {
			r = v
		}
	}
	r = min(r, cl.Out(), cl.In())
	e, err := eora.Compensate(k, w, wc, stats.C, r)
	if err != nil {
		return gptq.Adapter{}, EoRALayer{}, fmt.Errorf("eora: %s: %w", name, err)
	}
	a := gptq.Adapter{Module: name, A: denseF32(e.A, nil), B: denseF32(e.B, nil)}
	*nb.Linear(mod) = &gptq.Adapted{Base: cl, A: a.A, B: a.B}
	n := float64(max(stats.N, 1))
	return a, EoRALayer{Name: name, Rank: r, ErrorBefore: e.ErrorBefore / n, ErrorAfter: e.ErrorAfter / n}, nil
}
