package compress

import (
	"context"
	"fmt"
	"slices"

	"gonum.org/v1/gonum/mat"

	"github.com/rankzip/rankzip/calib"
	"github.com/rankzip/rankzip/methods/rank"
	"github.com/rankzip/rankzip/model"
)

// fisherSensitivity predicts, for every targeted matrix and ratio of
// sensitivityRatios, the loss of the model with only that matrix truncated,
// from a second-order expansion: 0.5·Σ F_jk·ΔW_jk², F the empirical Fisher
// diagonal of the weight and ΔW = W − W_r the stage's own truncation error at
// rank r. One backward pass over the calibration set, block by block from
// the last (gradientPass), gives each block's Fisher diagonal; the block's
// candidates are priced as soon as it is complete, with the block's input
// statistics taken from the same pass, so one block's weights, Fisher and
// statistics are held at a time. One decomposition per matrix, at the
// largest candidate rank, gives every candidate: the stage's factors are
// nested (B A at rank r is the leading r columns of B times the leading r
// rows of A). The cost is one backward and two forward passes plus one
// decomposition per matrix, linear in depth.
func fisherSensitivity(ctx context.Context, src Source, seqs [][]int32, o Options, mods []string, mats []rank.Matrix) ([][]float64, error) {
	top := src.Top
	if err := top.Config.Unsupported(model.FeatureBackward); err != nil {
		return nil, fmt.Errorf("rank_search fisher: %w", err)
	}
	index := make(map[string]int, len(mats))
	for j, mt := range mats {
		index[mt.Name] = j
	}
	used := predicting(splitBatches(seqs, o.Batch))
	loss := make([][]float64, len(mats))
	fisher := map[string][]float64{} // the current block's
	add := func(tokens int, g map[string]*model.Grad) {
		for name, gr := range g {
			if fisher[name] == nil {
				fisher[name] = make([]float64, len(gr.Weight))
			}
			addFisher(fisher[name], tokens, gr.Weight)
		}
	}
	done := func(l int, b *model.Block, in *calib.Streams) error {
		pass := calib.NewPass(top, b, b, in)
		defer pass.Release()
		var stats *calib.SiteStats
		site := model.Site(-1)
		for _, mod := range mods {
			name := model.ModuleName(l, mod)
			if s := siteOf(mod); s != site {
				var err error
				if stats, err = pass.Stats(s); err != nil {
					return fmt.Errorf("calibrate %s: %w", name, err)
				}
				site = s
			}
			w, bias, err := weight(*b.Linear(mod), name)
			if err != nil {
				return err
			}
			f := fisher[name]
			for k := range f {
				f[k] /= float64(used)
			}
			j := index[name]
			if loss[j], err = predictedLosses(top, w, bias, stats, o, f, candidateRanks(mats[j])); err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			delete(fisher, name) // priced: let it go
		}
		return nil
	}
	if err := gradientPass(ctx, src, seqs, o.Batch, mods, o.Spill, "rank_search fisher", add, done); err != nil {
		return nil, err
	}
	return loss, nil
}

// addFisher adds one batch's tokens·g⊙g to the Fisher sum f. A batch's mean
// gradient has about 1/tokens of a token's gradient variance, so the sum
// over batches divided by their number estimates the per-token Fisher,
// which makes 0.5·Σ F·ΔW² an estimate of the KL per token.
func addFisher(f []float64, tokens int, g []float32) {
	n := float64(tokens)
	for k, x := range g {
		f[k] += n * float64(x) * float64(x)
	}
}

// predictedLosses returns 0.5·Σ F⊙(W − W_r)² for each of ranks (0 where r
// is 0: dense), W_r the stage's rank-r factorisation of w, all of them
// from one factorisation at the largest rank.
func predictedLosses(m *model.Model, w *mat.Dense, bias []float64, stats *calib.SiteStats, o Options, fisher []float64, ranks []int) ([]float64, error) {
	loss := make([]float64, len(ranks))
	top := slices.Max(ranks)
	if top == 0 {
		return loss, nil // no candidate saves parameters: all dense
	}
	f, _, err := factor(m, w, bias, stats, o, top)
	if err != nil {
		return nil, err
	}
	for k, r := range ranks {
		if r > 0 {
			loss[k] = fisherLoss(fisher, truncationError(m, w, f, r))
		}
	}
	return loss, nil
}

// checkFisherSearch reports a fisher search on an architecture without a
// backward pass.
func checkFisherSearch(c *model.Config, search string) error {
	if search != "fisher" {
		return nil
	}
	if err := c.Unsupported(model.FeatureBackward); err != nil {
		return fmt.Errorf("rank_search fisher: %v; use sensitivity, local, global or uniform", err)
	}
	return nil
}

// candidateRanks is the rank of each of sensitivityRatios for mt, 0 where
// the rank would save no parameters (the dense choice).
func candidateRanks(mt rank.Matrix) []int {
	ranks := make([]int, len(sensitivityRatios))
	for k, rho := range sensitivityRatios {
		if r := mt.RankFor(rho); r <= mt.MaxRank() {
			ranks[k] = max(1, r)
		}
	}
	return ranks
}

// truncationError returns W − B_r A_r for the leading r components of the
// factored f, in float64.
func truncationError(m *model.Model, w *mat.Dense, f *model.Factored, r int) *mat.Dense {
	out, in := w.Dims()
	top := f.Rank()
	b := mat.NewDense(out, r, nil)
	for i := range out {
		for c := range r {
			b.Set(i, c, float64(f.B.Weight[i*top+c]))
		}
	}
	a := mat.NewDense(r, in, nil)
	for i := range r {
		for c := range in {
			a.Set(i, c, float64(f.A.Weight[i*in+c]))
		}
	}
	d := mat.DenseCopyOf(w)
	m.Backend.Dgemm(false, false, -1, b, a, 1, d)
	return d
}

// fisherLoss is 0.5·Σ F_jk·ΔW_jk² (fisher row-major out×in like d).
func fisherLoss(fisher []float64, d *mat.Dense) float64 {
	raw := d.RawMatrix()
	var s float64
	for i := range raw.Rows {
		row := raw.Data[i*raw.Stride : i*raw.Stride+raw.Cols]
		for c, x := range row {
			s += fisher[i*raw.Cols+c] * x * x
		}
	}
	return 0.5 * s
}
