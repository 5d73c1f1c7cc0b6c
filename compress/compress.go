// Package compress runs a low-rank compression stage over a whole model,
// block by block: it collects calibration statistics (calib), factors the
// targeted linear layers (methods/svd, methods/lord) at ranks chosen for a
// parameter budget (methods/rank), and feeds each compressed block's outputs
// to the next. The CLI calls it directly; the workflow's activities call the
// same steps one block at a time.
package compress

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"gonum.org/v1/gonum/mat"

	"github.com/rankzip/rankzip/calib"
	"github.com/rankzip/rankzip/model"
)

// Methods lists the factorisations a stage can use.
var Methods = []string{"whiten", "asvd", "plain", "lord"}

// Searches lists the rank searches.
var Searches = model.LowRankSearches

// Options describe one low-rank stage.
type Options struct {
	Method     string     // whiten, asvd, plain or lord
	Targets    []string   // globs over module names in a block ("mlp.*"); empty: all seven
	KeepParams float64    // fraction of the targeted parameters to keep, in (0, 1]
	Rank       int        // if > 0, this rank (capped at min(out, in)) for every targeted matrix instead of a budget
	RankSearch string     // uniform, global, sensitivity, local or fisher (default model.LowRankSearchFor)
	Alpha      float64    // ASVD exponent (default 0.5)
	Mode       calib.Mode // sequential (default) or original
	Batch      int        // calibration sequences per batch (default 16)
	// Spill, when set, keeps the calibration hidden states in memory-mapped
	// files in this directory (see calib.Streams.Spill).
	Spill string
}

// Layer reports what happened to one targeted matrix (model's type, so
// that a reader of reports need not import compress).
type Layer = model.LowRankReport

// Result is the compressed model and a per-layer report.
type Result struct {
	Model  *model.Model
	Layers []Layer
	Params int // parameters of the targeted matrices after compression
	Total  int // parameters of the targeted matrices before
}

// modulesOf returns the block modules the globs select, in block order.
func modulesOf(targets []string) ([]string, error) {
	mods, problems := model.MatchModules(targets)
	if len(problems) > 0 {
		return nil, errors.New(strings.Join(problems, "; "))
	}
	return mods, nil
}

// Validate checks the options against the model and the calibration set and
// fills in defaults. It reports every problem at once.
func (o *Options) Validate(m *model.Model, calibTokens int) error {
	return o.validate(m.Config, m.Blocks[0], calibTokens)
}

// validate is Validate given the model's configuration and its first block.
func (o *Options) validate(c *model.Config, first *model.Block, calibTokens int) error {
	var problems []string
	if o.Method == "" {
		o.Method = "whiten"
	}
	if !slices.Contains(Methods, o.Method) {
		problems = append(problems, fmt.Sprintf("method %q unknown (want one of %s)", o.Method, strings.Join(Methods, ", ")))
	}
	mods, err := targetModules(c, o.Targets)
	if o.RankSearch == "" && hasExperts(mods) {
		o.RankSearch = "uniform" // the only search experts have (moe.go)
	}
	if o.RankSearch == "" {
		o.RankSearch = model.LowRankSearchFor(c)
	}
	if !slices.Contains(Searches, o.RankSearch) {
		problems = append(problems, fmt.Sprintf("rank_search %q unknown (want one of %s)", o.RankSearch, strings.Join(Searches, ", ")))
	}
	if o.Rank < 0 {
		problems = append(problems, fmt.Sprintf("rank %d must be positive", o.Rank))
	}
	if o.Rank == 0 && !(o.KeepParams > 0 && o.KeepParams <= 1) {
		problems = append(problems, fmt.Sprintf("keep_params %v must be in (0, 1]", o.KeepParams))
	}
	if o.Alpha == 0 {
		o.Alpha = 0.5
	}
	if err := calibDefaults(&o.Mode, &o.Batch); err != nil {
		problems = append(problems, err.Error())
	}
	if err != nil {
		problems = append(problems, err.Error())
	}
	if err := checkExpertSearch(mods, o); err != nil {
		problems = append(problems, err.Error())
	}
	if err := checkFisherSearch(c, o.RankSearch); err != nil {
		problems = append(problems, err.Error())
	}
	need := 0
	for _, mod := range mods {
		_, in := dims(first, mod)
		need = max(need, in)
	}
	if calibTokens < need {
		problems = append(problems, fmt.Sprintf("the calibration set has %d tokens; the targeted layers need at least %d (their largest input dimension) for full-rank statistics", calibTokens, need))
	}
	if len(problems) > 0 {
		return fmt.Errorf("invalid low-rank stage: %s", strings.Join(problems, "; "))
	}
	return nil
}

// dims is the shape of module, as block first has it.
func dims(first *model.Block, module string) (out, in int) {
	l := *first.Linear(module)
	return l.Out(), l.In()
}

// weight returns a dense layer's weight and bias in float64.
func weight(l model.Linear, name string) (*mat.Dense, []float64, error) {
	d, ok := l.(*model.Dense)
	if !ok {
		return nil, nil, fmt.Errorf("%s is already %T; a low-rank stage needs a dense layer", name, l)
	}
	w := make([]float64, len(d.Weight))
	for i, v := range d.Weight {
		w[i] = float64(v)
	}
	var b []float64
	for _, v := range d.Bias {
		b = append(b, float64(v))
	}
	return mat.NewDense(d.Out(), d.In(), w), b, nil
}

// factored converts B (out×r), A (r×in) and a bias to a float32 layer.
func factored(b, a *mat.Dense, bias []float64) *model.Factored {
	return &model.Factored{A: denseF32(a, nil), B: denseF32(b, bias)}
}

// denseF32 converts a float64 matrix and bias to a float32 dense layer.
func denseF32(w *mat.Dense, bias []float64) *model.Dense {
	rows, cols := w.Dims()
	v := make([]float32, 0, rows*cols)
	for i := range rows {
		for j := range cols {
			v = append(v, float32(w.At(i, j)))
		}
	}
	return model.NewDense(rows, cols, v, f32s(bias))
}

func f32s(x []float64) []float32 {
	if x == nil {
		return nil
	}
	v := make([]float32, len(x))
	for i, f := range x {
		v[i] = float32(f)
	}
	return v
}

// calibDefaults fills in the calibration mode [sequential] and batch [16]
// of a stage's options and checks the mode.
func calibDefaults(mode *calib.Mode, batch *int) error {
	if *mode == "" {
		*mode = calib.Sequential
	}
	if *batch <= 0 {
		*batch = 16
	}
	if *mode != calib.Sequential && *mode != calib.Original {
		return fmt.Errorf("calibration mode %q unknown (want sequential or original)", *mode)
	}
	return nil
}

// siteOf is the input site of a module.
func siteOf(module string) model.Site {
	switch module {
	case "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj":
		return model.AttnInput
	case "self_attn.o_proj":
		return model.OInput
	case "mlp.gate_proj", "mlp.up_proj":
		return model.MLPInput
	}
	return model.DownInput
}
