package compress

import (
	"context"
	"fmt"

	"gonum.org/v1/gonum/mat"

	"github.com/rankzip/rankzip/calib"
	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/model"
	"github.com/rankzip/rankzip/model/gptq"
)

// EoRAOptions describe an EoRA compensation stage.
type EoRAOptions struct {
	Rank    int            // default rank of every correction
	Ranks   map[string]int // per-module overrides: glob over module names in a block ("mlp.*") → rank
	Targets []string       // globs over module names in a block; empty: all seven, or every attention and expert linear of a mixture of experts (dense layers are skipped)
	Mode    calib.Mode     // sequential (default): Grams from the compensated model so far; original: from the original model
	Batch   int            // calibration sequences per batch (default 16)
	Spill   string         // if set, keep calibration hidden states in memory-mapped files in this directory
}

// EoRALayer reports one correction (model's type).
type EoRALayer = model.EoRAReport

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
	if err := o.Check(Whole(comp), orig.Config); err != nil {
		return nil, err
	}
	if len(seqs) == 0 {
		return nil, fmt.Errorf("eora: no calibration sequences")
	}
	st, err := calib.EmbedSpill(orig, seqs, o.Batch, o.Mode, o.Spill)
	if err != nil {
		return nil, err
	}
	defer func() { st.Release() }()
	out := *comp
	out.Blocks = make([]*model.Block, len(comp.Blocks))
	res := &EoRAResult{Model: &out}
	for i := range orig.Blocks {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		nb, adapters, layers, next, err := o.Block(ctx, orig, i, comp.Blocks[i], st, nil)
		if err != nil {
			return nil, err
		}
		out.Blocks[i] = nb
		res.Adapters = append(res.Adapters, adapters...)
		res.Layers = append(res.Layers, layers...)
		if next != nil {
			st.Release()
			st = next
		}
	}
	return res, nil
}
