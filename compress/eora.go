package compress

import (
	"context"
	"fmt"
	"path"

	"gonum.org/v1/gonum/mat"

	"github.com/rankzip/rankzip/calib"
	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/methods/eora"
	"github.com/rankzip/rankzip/methods/svd"
	"github.com/rankzip/rankzip/model"
	"github.com/rankzip/rankzip/model/gptq"
)

// EoRAOptions describe an EoRA compensation stage.
type EoRAOptions struct {
	Rank    int            // default rank of every correction
	Ranks   map[string]int // per-module overrides: glob over module names in a block ("mlp.*") → rank
	Targets []string       // globs over module names in a block; empty: all seven (dense layers are skipped)
	Mode    calib.Mode     // sequential (default): Grams from the compensated model so far; original: from the original model
	Batch   int            // calibration sequences per batch (default 16)
	Spill   string         // if set, keep calibration hidden states in memory-mapped files in this directory
}

// EoRALayer reports one correction: the layer's calibration error
// tr(ΔW C ΔWᵀ) / N before and after.
type EoRALayer struct {
	Name        string  `json:"name"`
	Rank        int     `json:"rank"`
	ErrorBefore float64 `json:"error_before"`
	ErrorAfter  float64 `json:"error_after"`
}

// EoRAResult is the compensated model (adapted layers wrapped in
// gptq.Adapted), the adapters to export, and a per-layer report.
type EoRAResult struct {
	Model    *model.Model
	Adapters []gptq.Adapter
	Layers   []EoRALayer
}

// EffectiveWeight returns the out × in weight a compressed layer applies:
// the dequantized weight of a Quantized layer, B A of a Factored one, W of a
// Dense one, W_c + B A of an adapted one (a Grouped layer is not supported).
func EffectiveWeight(k kernels.Backend, l model.Linear) (*mat.Dense, error) {
	var w []float32
	switch d := l.(type) {
	case *model.Dense:
		w = d.Weight
	case *model.Quantized:
		w = d.Dequantize()
	case *model.Factored:
		w = make([]float32, d.Out()*d.In())
		k.Sgemm(false, false, d.Out(), d.In(), d.Rank(), 1, d.B.Weight, d.Rank(), d.A.Weight, d.In(), 0, w, d.In())
	case *gptq.Adapted:
		base, err := EffectiveWeight(k, d.Base)
		if err != nil {
			return nil, err
		}
		r := d.A.Out()
		ab := mat.NewDense(d.Out(), d.In(), nil)
		ab.Mul(mat.NewDense(d.Out(), r, f64s(d.B.Weight)), mat.NewDense(r, d.In(), f64s(d.A.Weight)))
		ab.Add(base, ab)
		return ab, nil
	default:
		return nil, fmt.Errorf("a %T layer has no effective weight", l)
	}
	return mat.NewDense(l.Out(), l.In(), f64s(w)), nil
}

func f64s(x []float32) []float64 {
	v := make([]float64, len(x))
	for i, f := range x {
		v[i] = float64(f)
	}
	return v
}

// RunEoRA fits an EoRA correction (methods/eora) to every targeted layer of
// the compressed model comp against the original model orig: ΔW = W − W_c
// with W the original dense weight and W_c the compressed layer's effective
// weight, in the eigenspace of the input Gram C of the stream the compressed
// layer sees. In sequential mode that stream runs through the corrections
// already fitted (earlier blocks and earlier sites of the block), so each
// correction sees the model it will be part of. Layers that are still dense
// are skipped. comp is not modified.
func RunEoRA(ctx context.Context, comp, orig *model.Model, seqs [][]int32, o EoRAOptions) (*EoRAResult, error) {
	if o.Rank <= 0 {
		return nil, fmt.Errorf("eora: rank %d must be positive", o.Rank)
	}
	if len(comp.Blocks) != len(orig.Blocks) || comp.Config.HiddenSize != orig.Config.HiddenSize {
		return nil, fmt.Errorf("eora: the compressed model (%d layers) and the original (%d layers) differ in shape", len(comp.Blocks), len(orig.Blocks))
	}
	mods, err := modulesOf(o.Targets)
	if err != nil {
		return nil, fmt.Errorf("eora: %w", err)
	}
	for g := range o.Ranks {
		if _, err := path.Match(g, ""); err != nil {
			return nil, fmt.Errorf("eora: rank pattern %q: %w", g, err)
		}
	}
	if o.Mode == "" {
		o.Mode = calib.Sequential
	}
	if o.Batch <= 0 {
		o.Batch = 16
	}
	if len(seqs) == 0 {
		return nil, fmt.Errorf("eora: no calibration sequences")
	}
	st, err := calib.EmbedSpill(orig, seqs, o.Batch, o.Mode, o.Spill)
	if err != nil {
		return nil, err
	}
	defer func() { st.Release() }()
	k := orig.Backend
	out := *comp
	out.Blocks = make([]*model.Block, len(comp.Blocks))
	res := &EoRAResult{Model: &out}
	for i, ob := range orig.Blocks {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		nb := *comp.Blocks[i]
		var stats *calib.SiteStats
		site := model.Site(-1)
		for _, mod := range mods {
			name := fmt.Sprintf("model.layers.%d.%s", i, mod)
			cl := *nb.Linear(mod)
			if _, dense := cl.(*model.Dense); dense {
				continue // nothing to compensate
			}
			if s := siteOf(mod); s != site {
				// Original mode: C from the original model, as Collect gives.
				if stats, err = calib.Collect(orig, ob, &nb, st, s); err != nil {
					return nil, fmt.Errorf("calibrate %s: %w", name, err)
				}
				site = s
			}
			w, _, err := weight(*ob.Linear(mod), name)
			if err != nil {
				return nil, err
			}
			if stats.Cross != nil {
				// The layer sees the compensated stream x_c but must give the
				// original outputs W x_o: its target is the least-squares map
				// W̃ = W Σx_o x_cᵀ (Σx_c x_cᵀ)⁻¹, which a sequentially
				// compressed layer was itself fitted to.
				if w, err = svd.CorrectedTarget(k, w, stats.Cross, stats.C); err != nil {
					return nil, fmt.Errorf("eora: %s: %w", name, err)
				}
			}
			wc, err := EffectiveWeight(k, cl)
			if err != nil {
				return nil, fmt.Errorf("eora: %s: %w", name, err)
			}
			r := o.Rank
			for g, v := range o.Ranks {
				if ok, _ := path.Match(g, mod); ok {
					r = v
				}
			}
			r = min(r, cl.Out(), cl.In())
			e, err := eora.Compensate(k, w, wc, stats.C, r)
			if err != nil {
				return nil, fmt.Errorf("eora: %s: %w", name, err)
			}
			a := gptq.Adapter{Module: name, A: denseF32(e.A, nil), B: denseF32(e.B, nil)}
			*nb.Linear(mod) = &gptq.Adapted{Base: cl, A: a.A, B: a.B}
			res.Adapters = append(res.Adapters, a)
			n := float64(max(stats.N, 1))
			res.Layers = append(res.Layers, EoRALayer{Name: name, Rank: r, ErrorBefore: e.ErrorBefore / n, ErrorAfter: e.ErrorAfter / n})
		}
		out.Blocks[i] = &nb
		if i+1 < len(orig.Blocks) {
			next, err := calib.Advance(orig, ob, &nb, st)
			if err != nil {
				return nil, err
			}
			st.Release()
			st = next
		}
	}
	if len(res.Adapters) == 0 {
		return nil, fmt.Errorf("eora: no compressed layer among the targets")
	}
	return res, nil
}
