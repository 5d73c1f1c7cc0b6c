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
// diagonal of the weight (one backward pass over the calibration set, for
// every matrix at once) and ΔW = W − W_r the stage's own truncation error at
// rank r. One decomposition per matrix, at the largest candidate rank, gives
// every candidate: the stage's factors are nested (B A at rank r is the
// leading r columns of B times the leading r rows of A). The cost is one
// backward and one forward pass plus one decomposition per matrix, linear in
// depth.
func fisherSensitivity(ctx context.Context, m *model.Model, seqs [][]int32, o Options, mods []string, mats []rank.Matrix) ([][]float64, error) {
	if err := m.Config.Unsupported(model.FeatureBackward); err != nil {
		return nil, fmt.Errorf("rank_search fisher: %w", err)
	}
	names := make([]string, len(mats))
	for j, mt := range mats {
		names[j] = mt.Name
	}
	fisher, err := weightFisher(ctx, m, seqs, o.Batch, names)
	if err != nil {
		return nil, err
	}
	loss := make([][]float64, len(mats))
	err = originalPass(ctx, m, seqs, o, mods, func(j, _ int, _ string, w *mat.Dense, bias []float64, stats *calib.SiteStats) error {
		var err error
		loss[j], err = predictedLosses(m, w, bias, stats, o, fisher[j], candidateRanks(mats[j]))
		fisher[j] = nil // done with it: free as the pass goes on
		return err
	})
	return loss, err
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

// weightFisher returns the empirical Fisher diagonal of every named weight
// (out×in, row-major): Σ_b N_b·g_b⊙g_b over the calibration batches b, g_b
// the gradient of batch b's mean next-token loss and N_b its predicted
// tokens, divided by the number of batches. A batch's mean gradient has
// about 1/N_b of a token's gradient variance, so this estimates the
// per-token Fisher, which makes 0.5·Σ F·ΔW² an estimate of the KL per
// token.
func weightFisher(ctx context.Context, m *model.Model, seqs [][]int32, batch int, names []string) ([][]float64, error) {
	fisher := make([][]float64, len(names))
	used, err := eachBackward(ctx, m, seqs, batch, names, "rank_search fisher", func(g *model.Gradients) {
		n := float64(g.Tokens)
		for i, name := range names {
			w := g.Grads[name].Weight
			if fisher[i] == nil {
				fisher[i] = make([]float64, len(w))
			}
			for k, x := range w {
				fisher[i][k] += n * float64(x) * float64(x)
			}
		}
	})
	if err != nil {
		return nil, err
	}
	for _, f := range fisher {
		for k := range f {
			f[k] /= float64(used)
		}
	}
	return fisher, nil
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
