package compress

import (
	"context"
	"fmt"
	"slices"

	"gonum.org/v1/gonum/mat"

	"github.com/rankzip/rankzip/calib"
	"github.com/rankzip/rankzip/eval"
	"github.com/rankzip/rankzip/methods/rank"
	"github.com/rankzip/rankzip/methods/svd"
	"github.com/rankzip/rankzip/model"
)

// DefaultRankSearch is the rank search of a keep_params budget when none is
// named, where the architecture has a backward pass (model.LowRankSearchFor;
// model.DefaultLowRankSearch says why).
const DefaultRankSearch = model.DefaultLowRankSearch

// allocate chooses a rank (or dense) for every targeted matrix. A global
// search first needs each matrix's whitened spectrum, taken from the
// original model's statistics in one pass over the blocks.
func allocate(ctx context.Context, src Source, first *model.Block, seqs [][]int32, o Options, mods []string) (map[string]rank.Choice, error) {
	var mats []rank.Matrix
	for i := range src.Layers() {
		for _, mod := range mods {
			out, in := dims(first, mod)
			mats = append(mats, rank.Matrix{Name: model.ModuleName(i, mod), Out: out, In: in})
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
		if err := spectra(ctx, src, seqs, o, mods, mats); err != nil {
			return nil, err
		}
		alloc, err = rank.Global(mats, o.KeepParams)
	case "sensitivity", "local", "fisher":
		var loss [][]float64
		if o.RankSearch == "fisher" {
			loss, err = fisherSensitivity(ctx, src, seqs, o, mods, mats)
		} else {
			loss, err = wholeSearch(ctx, src, seqs, o, mods, mats)
		}
		if err != nil {
			return nil, err
		}
		alloc, err = rank.Sensitivity(mats, o.KeepParams, func(i int, rho float64) float64 {
			return loss[i][slices.Index(sensitivityRatios, rho)]
		}, sensitivityRatios)
		if err != nil {
			return nil, err
		}
	}
	if err != nil {
		return nil, err
	}
	for i, mt := range mats {
		choices[mt.Name] = alloc.Choices[i]
	}
	return choices, nil
}

// wholeSearch runs the sensitivity or local search (they return, for every
// matrix of mats and every ratio of sensitivityRatios, the loss of the model
// with only that matrix compressed at that ratio, 0 where the ratio saves no
// parameters). Both run the whole model per candidate or per block, so
// they hold every block at once.
func wholeSearch(ctx context.Context, src Source, seqs [][]int32, o Options, mods []string, mats []rank.Matrix) ([][]float64, error) {
	m, err := src.ReadAll()
	if err != nil {
		return nil, err
	}
	if o.RankSearch == "local" {
		return localSensitivity(ctx, m, seqs, o, mods, mats)
	}
	return sensitivity(ctx, m, seqs, o, mods, mats)
}

// originalPass calls fn for every targeted matrix, in block order, with its
// weight and the original model's statistics of its input, holding one
// block of src at a time.
func originalPass(ctx context.Context, src Source, seqs [][]int32, o Options, mods []string,
	fn func(j, block int, mod string, w *mat.Dense, bias []float64, stats *calib.SiteStats) error) error {
	m := src.Top
	st, err := calib.EmbedSpill(m, seqs, o.Batch, calib.Original, o.Spill)
	if err != nil {
		return err
	}
	defer func() { st.Release() }()
	j := 0
	for i := range src.Layers() {
		if err := ctx.Err(); err != nil {
			return err
		}
		b, err := src.Block(i)
		if err != nil {
			return err
		}
		var stats *calib.SiteStats
		site := model.Site(-1)
		for _, mod := range mods {
			name := model.ModuleName(i, mod)
			if s := siteOf(mod); s != site {
				if stats, err = calib.Collect(m, b, b, st, s); err != nil {
					return fmt.Errorf("calibrate %s: %w", name, err)
				}
				site = s
			}
			w, bias, err := weight(*b.Linear(mod), name)
			if err != nil {
				return err
			}
			if err := fn(j, i, mod, w, bias, stats); err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			j++
		}
		if i+1 < src.Layers() {
			next, err := calib.Advance(m, b, b, st)
			if err != nil {
				return err
			}
			st.Release()
			st = next
		}
	}
	return nil
}

// spectra fills mats[j].Sigma with the whitened singular values of each
// targeted matrix under the original model's statistics.
func spectra(ctx context.Context, src Source, seqs [][]int32, o Options, mods []string, mats []rank.Matrix) error {
	return originalPass(ctx, src, seqs, o, mods, func(j, _ int, _ string, w *mat.Dense, _ []float64, stats *calib.SiteStats) error {
		var err error
		mats[j].Sigma, err = svd.Spectrum(src.Top.Backend, w, stats.C)
		return err
	})
}

// sensitivityRatios are the keep ratios at which each matrix's loss is
// measured for the sensitivity search.
var sensitivityRatios = []float64{0.1, 0.25, 0.5, 0.75, 1}

// sensitivityProbe is how many calibration sequences measure a loss.
const sensitivityProbe = 4

// sensitivity measures, for every targeted matrix and ratio, the KL
// divergence from the original model of the model with only that matrix
// compressed (ASVD's sensitivity list), on a few calibration sequences.
// Each measurement is a whole-model forward, so its cost grows with the
// square of the depth; localSensitivity measures near the matrix instead.
func sensitivity(ctx context.Context, m *model.Model, seqs [][]int32, o Options, mods []string, mats []rank.Matrix) ([][]float64, error) {
	probe := seqs[:min(sensitivityProbe, len(seqs))]
	base, err := m.Forward(probe)
	if err != nil {
		return nil, err
	}
	loss := make([][]float64, len(mats))
	err = originalPass(ctx, Whole(m), seqs, o, mods, func(j, block int, mod string, w *mat.Dense, bias []float64, stats *calib.SiteStats) error {
		for _, rho := range sensitivityRatios {
			r := mats[j].RankFor(rho)
			l := 0.0
			if r <= mats[j].MaxRank() {
				f, _, err := factor(m, w, bias, stats, o, max(1, r))
				if err != nil {
					return err
				}
				one := *m
				one.Blocks = slices.Clone(m.Blocks)
				blk := *m.Blocks[block]
				*blk.Linear(mod) = f
				one.Blocks[block] = &blk
				logits, err := one.Forward(probe)
				if err != nil {
					return err
				}
				l = eval.MeanKL(base, logits, m.Config.VocabSize)
			}
			loss[j] = append(loss[j], l)
		}
		return nil
	})
	return loss, err
}

// localAhead is how many blocks after a matrix's own block the local
// search runs before it measures the error (0: at the block's output).
var localAhead = 2

// localGainRatio is the keep ratio at which the local search compares a
// block's local error with the whole model's KL.
const localGainRatio = 0.5

// localSensitivity is sensitivity measured near each matrix. Each candidate
// (a matrix at a keep ratio) runs only its own block (and localAhead after
// it) on the probe sequences: its local error is the relative squared error
// ‖y′ − y‖² / ‖y‖² of the hidden states there. Local errors of different
// blocks are not in the same units as each other or as the KL, so each
// block's errors are scaled by its gain, KL / local error of the block with
// all its targeted matrices compressed at localGainRatio: one forward from
// that block to the logits per block, instead of one per candidate.
func localSensitivity(ctx context.Context, m *model.Model, seqs [][]int32, o Options, mods []string, mats []rank.Matrix) ([][]float64, error) {
	probe := seqs[:min(sensitivityProbe, len(seqs))]
	base, err := m.Forward(probe)
	if err != nil {
		return nil, err
	}
	h, err := m.EmbedTokens(probe)
	if err != nil {
		return nil, err
	}
	loss := make([][]float64, len(mats))
	at := 0 // h enters block at
	var ref *model.States
	var first int              // index in mats of the block's first matrix
	var gainBlock *model.Block // block at with its matrices at localGainRatio
	finish := func(last int) {
		if gainBlock == nil {
			return
		}
		local := relSquaredError(runBlocks(m, gainBlock, at, h), ref)
		g := eval.MeanKL(base, m.Logits(runToEnd(m, gainBlock, at, h)), m.Config.VocabSize) / local
		if local == 0 {
			g = 0
		}
		for j := first; j < last; j++ {
			for k := range loss[j] {
				loss[j][k] *= g
			}
		}
	}
	err = originalPass(ctx, Whole(m), seqs, o, mods, func(j, block int, mod string, w *mat.Dense, bias []float64, stats *calib.SiteStats) error {
		if at != block || ref == nil {
			finish(j)
			for ; at < block; at++ {
				h = m.RunBlock(m.Blocks[at], h, nil)
			}
			ref = runBlocks(m, m.Blocks[block], block, h)
			first = j
			b := *m.Blocks[block]
			gainBlock = &b
		}
		for _, rho := range sensitivityRatios {
			r := mats[j].RankFor(rho)
			l := 0.0
			if r <= mats[j].MaxRank() {
				f, _, err := factor(m, w, bias, stats, o, max(1, r))
				if err != nil {
					return err
				}
				blk := *m.Blocks[block]
				*blk.Linear(mod) = f
				l = relSquaredError(runBlocks(m, &blk, block, h), ref)
				if rho <= localGainRatio {
					*gainBlock.Linear(mod) = f
				}
			}
			loss[j] = append(loss[j], l)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	finish(len(mats))
	return loss, nil
}

// runToEnd runs b in place of block i on h, then every original block
// after it, and returns the last block's output.
func runToEnd(m *model.Model, b *model.Block, i int, h *model.States) *model.States {
	h = m.RunBlock(b, h, nil)
	for _, next := range m.Blocks[i+1:] {
		h = m.RunBlock(next, h, nil)
	}
	return h
}

// runBlocks runs b in place of block i on h, then the original blocks up to
// localAhead after it, and returns the hidden states there.
func runBlocks(m *model.Model, b *model.Block, i int, h *model.States) *model.States {
	h = m.RunBlock(b, h, nil)
	for k := i + 1; k <= min(i+localAhead, len(m.Blocks)-1); k++ {
		h = m.RunBlock(m.Blocks[k], h, nil)
	}
	return h
}

// relSquaredError is ‖got − want‖² / ‖want‖², accumulated in float64.
func relSquaredError(got, want *model.States) float64 {
	var num, den float64
	for i, w := range want.X {
		d := float64(got.X[i]) - float64(w)
		num += d * d
		den += float64(w) * float64(w)
	}
	if den == 0 {
		return num
	}
	return num / den
}
