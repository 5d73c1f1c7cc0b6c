package compress

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"gonum.org/v1/gonum/mat"

	"github.com/rankzip/rankzip/calib"
	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/methods/quant"
	"github.com/rankzip/rankzip/model"
)

// QuantMethods lists the quantizers a quantization stage can use.
var QuantMethods = []string{"rtn", "gptq"}

// QuantOptions describe one weight-quantization stage.
type QuantOptions struct {
	Method    string     // rtn or gptq
	Bits      int        // 2, 3, 4 or 8
	GroupSize int        // 32, 64, 128, or 0 / −1 for one group per output channel
	Sym       bool       // symmetric zero point
	ActOrder  bool       // GPTQ's desc_act (static groups); RTN ignores it
	Damp      float64    // GPTQ's relative damping; 0: quant.DefaultDamp
	Targets   []string   // globs over module names in a block; empty: all seven
	Mode      calib.Mode // sequential (default) or original
	Batch     int        // calibration sequences per batch (default 16)
	Spill     string     // if set, keep calibration hidden states in memory-mapped files in this directory
}

// QuantLayer reports one quantized matrix (model's type).
type QuantLayer = model.QuantReport

// QuantResult is the quantized model and a per-layer report.
type QuantResult struct {
	Model  *model.Model
	Layers []QuantLayer
}

func (o *QuantOptions) config() quant.Config {
	return quant.Config{Bits: o.Bits, GroupSize: o.GroupSize, Sym: o.Sym, ActOrder: o.ActOrder, Damp: o.Damp}
}

// Validate checks the options against m and fills in defaults, reporting
// every problem at once; a group size that does not divide a targeted
// layer's input features is reported with the layer's name.
func (o *QuantOptions) Validate(src Source) error {
	var problems []string
	if o.Method == "" {
		o.Method = "gptq"
	}
	if !slices.Contains(QuantMethods, o.Method) {
		problems = append(problems, fmt.Sprintf("method %q unknown (want one of %s)", o.Method, strings.Join(QuantMethods, ", ")))
	}
	if err := calibDefaults(&o.Mode, &o.Batch); err != nil {
		problems = append(problems, err.Error())
	}
	cfg := o.config()
	if err := cfg.Validate(); err != nil {
		problems = append(problems, err.Error())
	} else if mods, err := targetModules(src.Top.Config, o.Targets); err != nil {
		problems = append(problems, err.Error())
	} else {
		for i := range src.Layers() {
			b, err := src.Block(i)
			if err != nil {
				return err
			}
			for _, mod := range mods {
				if l := *b.Linear(mod); i == 0 {
					if _, _, err := cfg.Groups(l.In()); err != nil {
						problems = append(problems, fmt.Sprintf("model.layers.*.%s (%d×%d): %v", mod, l.Out(), l.In(), err))
					}
				}
				if _, ok := (*b.Linear(mod)).(*model.Dense); !ok {
					problems = append(problems, fmt.Sprintf("%s is %T; quantization needs a dense layer", model.ModuleName(i, mod), *b.Linear(mod)))
				}
			}
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("invalid quantization stage: %s", strings.Join(problems, "; "))
	}
	return nil
}

// RunQuant quantizes the targeted linears of m block by block. Each block's
// statistics come from the model quantized so far (sequential mode: earlier
// blocks and earlier sites of the same block are already quantized), so
// later layers calibrate against the quantized model. GPTQ minimises
// tr((W − Ŵ) C (W − Ŵ)ᵀ) with C the Gram of the stream the layer will see,
// quantizing the original W (not the corrected target W K C⁻¹ that the
// low-rank stages fit: that target is ill-conditioned where C is, and GPTQ's
// objective on the compressed inputs is the reference algorithm's). m itself
// is not modified.
func RunQuant(ctx context.Context, m *model.Model, seqs [][]int32, o QuantOptions, progress Progress) (*QuantResult, error) {
	if err := o.Validate(Whole(m)); err != nil {
		return nil, err
	}
	if len(seqs) == 0 {
		return nil, fmt.Errorf("quantization stage: no calibration sequences")
	}
	st, err := calib.EmbedSpill(m, seqs, o.Batch, o.Mode, o.Spill)
	if err != nil {
		return nil, err
	}
	defer func() { st.Release() }()
	out := *m
	out.Blocks = make([]*model.Block, len(m.Blocks))
	res := &QuantResult{Model: &out}
	for i := range m.Blocks {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		comp, layers, next, err := o.Block(ctx, m, i, st, nil)
		if err != nil {
			return nil, err
		}
		out.Blocks[i] = comp
		res.Layers = append(res.Layers, layers...)
		if next != nil {
			st.Release()
			st = next
		}
		if progress != nil {
			progress(i+1, len(m.Blocks))
		}
	}
	return res, nil
}

// quantizeLayer quantizes one weight under the site statistics s.
func quantizeLayer(k kernels.Backend, w *mat.Dense, bias []float64, s *calib.SiteStats, o QuantOptions) (*model.Quantized, QuantLayer, error) {
	var r quant.Result
	var err error
	if o.Method == "rtn" {
		r, err = quant.RTN(w, o.config())
	} else {
		r, err = quant.GPTQ(k, w, s.C, s.N, o.config())
	}
	if err != nil {
		return nil, QuantLayer{}, err
	}
	q, err := quantizedOf(r, bias)
	if err != nil {
		return nil, QuantLayer{}, err
	}
	out, in := w.Dims()
	n := float64(max(s.N, 1))
	e := quant.CalibError(k, w, r.Dequant, s.C) / n
	zero := mat.NewDense(out, in, nil)
	base := quant.CalibError(k, w, zero, s.C) / n
	l := QuantLayer{Out: out, In: in, Groups: r.Groups(), CalibError: e, Damp: r.Damp}
	if base > 0 {
		l.RelError = e / base
	}
	return q, l, nil
}

// quantizedOf converts a quant.Result and a bias to a model layer.
func quantizedOf(r quant.Result, bias []float64) (*model.Quantized, error) {
	out, in := r.Dequant.Dims()
	g := r.Groups()
	scales := make([]float32, 0, g*out)
	for i := range g {
		for j := range out {
			scales = append(scales, float32(r.Scales.At(i, j)))
		}
	}
	return model.NewQuantized(out, in, r.Bits, slices.Clone(r.Q), scales, slices.Clone(r.Zeros), slices.Clone(r.GIdx), f32s(bias))
}
