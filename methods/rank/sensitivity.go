package rank

import (
	"container/heap"
	"fmt"
	"math"
	"slices"
)

// Sensitivity allocates ranks from measured losses, ASVD-style. measure(i, ρ)
// is the loss (lower is better) of the model with only matrix i compressed
// to keep ratio ρ, i.e. to rank mats[i].RankFor(ρ); it is called once for
// every matrix and every ratio in ratios (each in (0, 1]), in order, so a
// caller that measured in parallel passes a table lookup. A global loss
// threshold, found by bisection, sets every matrix's rank; see the package
// documentation. ErrBudget means keep is below what the smallest measured
// ratios allow.
func Sensitivity(mats []Matrix, keep float64, measure func(i int, keepRatio float64) float64, ratios []float64) (Allocation, error) {
	total, target, err := budget(mats, keep)
	if err != nil {
		return Allocation{}, err
	}
	rs, err := sortedRatios(ratios)
	if err != nil {
		return Allocation{}, err
	}
	curves, err := measureCurves(mats, measure, rs)
	if err != nil {
		return Allocation{}, err
	}
	if keep == 1 {
		return finish(mats, chooseUnder(mats, curves, math.Inf(-1)), total, target), nil
	}
	ch, err := thresholdChoices(mats, curves, keep, target)
	if err != nil {
		return Allocation{}, err
	}
	handOutByLoss(mats, curves, ch, target-params(mats, ch))
	return finish(mats, ch, total, target), nil
}

// sortedRatios returns the distinct ratios in increasing order, each checked
// to be in (0, 1].
func sortedRatios(ratios []float64) ([]float64, error) {
	if len(ratios) == 0 {
		return nil, fmt.Errorf("%w: no ratios to measure", ErrKeep)
	}
	rs := slices.Clone(ratios)
	slices.Sort(rs)
	rs = slices.Compact(rs)
	for _, r := range rs {
		if !(r > 0 && r <= 1) {
			return nil, fmt.Errorf("%w: measured ratio %v", ErrKeep, r)
		}
	}
	return rs, nil
}

// measureCurves calls measure for every matrix and ratio, in order, and
// returns each matrix's loss at the factored ranks the ratios give (ratios
// that save no parameters left out; of two ratios at one rank, the lower
// loss kept).
func measureCurves(mats []Matrix, measure func(i int, keepRatio float64) float64, rs []float64) ([]lossCurve, error) {
	curves := make([]lossCurve, len(mats))
	for i, m := range mats {
		var cv lossCurve
		for _, rho := range rs {
			l := measure(i, rho)
			if math.IsNaN(l) || math.IsInf(l, 0) {
				return nil, fmt.Errorf("rank: loss of matrix %q at ratio %v is %v", m.Name, rho, l)
			}
			r := m.RankFor(rho)
			if r > m.MaxRank() {
				continue // no saving: the dense choice covers it
			}
			if n := len(cv.rank); n > 0 && cv.rank[n-1] == r {
				cv.loss[n-1] = math.Min(cv.loss[n-1], l)
				continue
			}
			cv.rank = append(cv.rank, r)
			cv.loss = append(cv.loss, l)
		}
		curves[i] = cv
	}
	return curves, nil
}

// chooseUnder gives every matrix the smallest rank whose loss is at most
// tau, dense where none is.
func chooseUnder(mats []Matrix, curves []lossCurve, tau float64) []Choice {
	ch := make([]Choice, len(mats))
	for i, m := range mats {
		r := curves[i].smallest(tau)
		if r == 0 {
			ch[i] = dense(m)
			continue
		}
		ch[i] = Choice{Rank: r}
	}
	return ch
}

// params is the parameter count of the choices.
func params(mats []Matrix, ch []Choice) int {
	p := 0
	for i, m := range mats {
		p += m.Cost(ch[i])
	}
	return p
}

// thresholdChoices bisects for the smallest loss threshold whose choices
// (chooseUnder) fit in target parameters. ErrBudget means even the largest
// measured loss does not fit.
func thresholdChoices(mats []Matrix, curves []lossCurve, keep float64, target int) ([]Choice, error) {
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, cv := range curves {
		for _, l := range cv.loss {
			lo, hi = math.Min(lo, l), math.Max(hi, l)
		}
	}
	if p := params(mats, chooseUnder(mats, curves, hi)); math.IsInf(hi, -1) || p > target {
		return nil, fmt.Errorf("%w: keep %v needs %d params at most, the smallest measured ratios take %d", ErrBudget, keep, target, p)
	}
	// Invariant: chooseUnder(lo) does not fit (everything dense once lo is
	// below every loss), chooseUnder(hi) fits.
	lo -= 1 + math.Abs(lo)
	for range 200 {
		mid := lo + (hi-lo)/2
		if mid <= lo || mid >= hi {
			break
		}
		if params(mats, chooseUnder(mats, curves, mid)) <= target {
			hi = mid
		} else {
			lo = mid
		}
	}
	return chooseUnder(mats, curves, hi), nil
}

// handOutByLoss spends up to left more parameters on ch, one rank step (or
// the step to dense) at a time, highest current loss first.
func handOutByLoss(mats []Matrix, curves []lossCurve, ch []Choice, left int) {
	h := &steps{}
	next := func(i int) (step, bool) {
		m, c := mats[i], ch[i]
		if c.Dense {
			return step{}, false
		}
		s := step{i: i, ratio: curves[i].at(c.Rank), cost: m.Out + m.In}
		if c.Rank+1 > m.MaxRank() {
			s.dense, s.cost = true, m.Out*m.In-c.Rank*(m.Out+m.In)
		}
		return s, true
	}
	for i := range mats {
		if s, ok := next(i); ok {
			heap.Push(h, s)
		}
	}
	for h.Len() > 0 {
		s := heap.Pop(h).(step)
		if s.cost > left {
			continue
		}
		left -= s.cost
		if s.dense {
			ch[s.i] = dense(mats[s.i])
		} else {
			ch[s.i].Rank++
		}
		if n, ok := next(s.i); ok {
			heap.Push(h, n)
		}
	}
}

// lossCurve is a matrix's measured loss at increasing factored ranks.
type lossCurve struct {
	rank []int
	loss []float64
}

// at returns the loss at rank r, linear between measured ranks and flat
// outside them.
func (c lossCurve) at(r int) float64 {
	n := len(c.rank)
	switch {
	case n == 0:
		return 0
	case r <= c.rank[0]:
		return c.loss[0]
	case r >= c.rank[n-1]:
		return c.loss[n-1]
	}
	j, _ := slices.BinarySearch(c.rank, r)
	if c.rank[j] == r {
		return c.loss[j]
	}
	r0, r1 := float64(c.rank[j-1]), float64(c.rank[j])
	t := (float64(r) - r0) / (r1 - r0)
	return c.loss[j-1] + t*(c.loss[j]-c.loss[j-1])
}

// smallest returns the smallest rank in [rank[0], rank[last]] whose
// interpolated loss is ≤ tau, or 0 if there is none.
func (c lossCurve) smallest(tau float64) int {
	for j := range c.rank {
		if c.loss[j] <= tau {
			if j == 0 || c.rank[j]-c.rank[j-1] == 1 {
				return c.rank[j]
			}
			// The segment from rank[j-1] (loss > tau) crosses tau.
			l0, l1 := c.loss[j-1], c.loss[j]
			r0, r1 := c.rank[j-1], c.rank[j]
			x := float64(r0) + (l0-tau)/(l0-l1)*float64(r1-r0)
			r := min(max(int(math.Ceil(x)), r0+1), r1)
			for r > r0+1 && c.at(r-1) <= tau { // rounding at the boundary
				r--
			}
			for c.at(r) > tau {
				r++
			}
			return r
		}
	}
	return 0
}
