package rank

import (
	"container/heap"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
)

var (
	// ErrShape is wrapped by the panic value of a malformed Matrix (a
	// non-positive dimension, a spectrum of the wrong length).
	ErrShape = errors.New("rank: dimension mismatch")

	// ErrKeep reports a keep ratio outside (0, 1].
	ErrKeep = errors.New("rank: keep_params must be in (0, 1]")

	// ErrSpectrum reports a spectrum with NaN, Inf, negative or increasing
	// values, or a negative or non-finite weight.
	ErrSpectrum = errors.New("rank: bad spectrum")

	// ErrBudget reports a budget Sensitivity cannot meet with the ratios that
	// were measured.
	ErrBudget = errors.New("rank: budget below the smallest measured ratios")
)

// Matrix describes one targeted weight.
type Matrix struct {
	Name    string // for messages and Describe only
	Out, In int

	// Sigma holds the whitened singular values, descending, min(Out, In) of
	// them. Only Global reads it.
	Sigma []float64

	// Weight multiplies the matrix's normalised errors in Global (for
	// example a measured loss sensitivity); 0 means 1.
	Weight float64
}

// Choice is the decision for one matrix.
type Choice struct {
	Rank  int  // factored rank; min(Out, In) when Dense
	Dense bool // kept dense, costs Out·In
}

// Allocation is the result of a rank search.
type Allocation struct {
	Choices []Choice // one per matrix, in input order
	Params  int      // parameters of the chosen allocation
	Target  int      // ⌊keep · Total⌋
	Total   int      // Σ Out·In, all matrices dense
}

// Keep returns the achieved fraction Params / Total.
func (a Allocation) Keep() float64 { return float64(a.Params) / float64(a.Total) }

// Describe returns one line per matrix (name, shape, rank or dense,
// parameters) and a total line.
func (a Allocation) Describe(mats []Matrix) string {
	var sb strings.Builder
	for i, m := range mats {
		c := a.Choices[i]
		r := fmt.Sprintf("rank %d", c.Rank)
		if c.Dense {
			r = "dense"
		}
		fmt.Fprintf(&sb, "%-40s %6d×%-6d %-10s %12d params (%.3f)\n", m.Name, m.Out, m.In, r, m.Cost(c), float64(m.Cost(c))/float64(m.Out*m.In))
	}
	fmt.Fprintf(&sb, "total %d of %d params (keep %.4f, target %d)\n", a.Params, a.Total, a.Keep(), a.Target)
	return sb.String()
}

// Cost returns the parameters of the choice c for m.
func (m Matrix) Cost(c Choice) int {
	if c.Dense {
		return m.Out * m.In
	}
	return c.Rank * (m.Out + m.In)
}

// RankFor returns the rank that keeps the fraction keep of m's parameters,
// max(1, ⌊keep·Out·In/(Out + In)⌋): Uniform's rank, and the rank
// Sensitivity assumes a measurement at ratio keep was made at.
func (m Matrix) RankFor(keep float64) int {
	return max(1, int(math.Floor(keep*float64(m.Out*m.In)/float64(m.Out+m.In))))
}

// MaxRank returns the largest rank that saves parameters,
// r·(Out + In) < Out·In, or 0 if even rank 1 does not.
func (m Matrix) MaxRank() int {
	return (m.Out*m.In - 1) / (m.Out + m.In)
}

// NormalisedError returns E(c) = w·Σ_{i>r} σᵢ² / Σ σᵢ² for m (0 when dense or
// when the spectrum has no energy).
func NormalisedError(m Matrix, c Choice) float64 {
	if c.Dense {
		return 0
	}
	e := normalised(m)
	var sum float64
	for i := len(e) - 1; i >= c.Rank; i-- {
		sum += e[i]
	}
	return sum
}

// normalised returns w·σᵢ²/Σσ².
func normalised(m Matrix) []float64 {
	e := make([]float64, len(m.Sigma))
	var total float64
	for i := len(m.Sigma) - 1; i >= 0; i-- {
		total += m.Sigma[i] * m.Sigma[i]
	}
	if total == 0 {
		return e
	}
	w := m.Weight
	if w == 0 {
		w = 1
	}
	for i, s := range m.Sigma {
		e[i] = w * s * s / total
	}
	return e
}

// budget validates keep and the shapes and returns Total and Target.
func budget(mats []Matrix, keep float64) (total, target int, err error) {
	if !(keep > 0 && keep <= 1) {
		return 0, 0, fmt.Errorf("%w: got %v", ErrKeep, keep)
	}
	if len(mats) == 0 {
		return 0, 0, errors.New("rank: no matrices")
	}
	for _, m := range mats {
		if m.Out < 1 || m.In < 1 {
			panic(fmt.Errorf("%w: matrix %q is %d×%d", ErrShape, m.Name, m.Out, m.In))
		}
		total += m.Out * m.In
	}
	target = int(math.Floor(keep * float64(total)))
	if keep == 1 {
		target = total
	}
	return total, target, nil
}

// minimum returns rank 1, or dense where rank 1 does not save parameters.
func minimum(m Matrix) Choice {
	if m.MaxRank() < 1 {
		return dense(m)
	}
	return Choice{Rank: 1}
}

func dense(m Matrix) Choice { return Choice{Rank: min(m.Out, m.In), Dense: true} }

func finish(mats []Matrix, ch []Choice, total, target int) Allocation {
	a := Allocation{Choices: ch, Target: target, Total: total}
	for i, m := range mats {
		a.Params += m.Cost(ch[i])
	}
	return a
}

// Uniform gives every matrix the same keep ratio:
// r = max(1, ⌊keep·out·in/(out + in)⌋), dense when keep = 1 or when that
// rank would not save parameters.
func Uniform(mats []Matrix, keep float64) (Allocation, error) {
	total, target, err := budget(mats, keep)
	if err != nil {
		return Allocation{}, err
	}
	ch := make([]Choice, len(mats))
	for i, m := range mats {
		r := m.RankFor(keep)
		if keep == 1 || r > m.MaxRank() {
			ch[i] = dense(m)
			continue
		}
		ch[i] = Choice{Rank: r}
	}
	return finish(mats, ch, total, target), nil
}

// Global allocates ranks greedily by normalised error removed per parameter,
// then repairs the greedy's blocked jumps to dense by exchange; see the
// package documentation for the method and its budget guarantee.
func Global(mats []Matrix, keep float64) (Allocation, error) {
	total, target, err := budget(mats, keep)
	if err != nil {
		return Allocation{}, err
	}
	g := greedy{mats: mats, tails: make([][]float64, len(mats))}
	for i, m := range mats {
		if len(m.Sigma) != min(m.Out, m.In) {
			panic(fmt.Errorf("%w: matrix %q is %d×%d with %d singular values", ErrShape, m.Name, m.Out, m.In, len(m.Sigma)))
		}
		if err := checkSpectrum(m); err != nil {
			return Allocation{}, err
		}
		e := normalised(m)
		tail := make([]float64, len(e)+1)
		for r := len(e) - 1; r >= 0; r-- {
			tail[r] = tail[r+1] + e[r]
		}
		g.tails[i] = tail
	}
	ch := make([]Choice, len(mats))
	left := target
	for i, m := range mats {
		ch[i] = minimum(m)
		left -= m.Cost(ch[i])
	}
	if left < 0 {
		return finish(mats, ch, total, target), nil
	}
	left = g.grow(ch, left)
	ch, _ = g.repair(ch, left)
	return finish(mats, ch, total, target), nil
}

// greedy holds Global's normalised error curves: tails[i][r] = E(r).
type greedy struct {
	mats  []Matrix
	tails [][]float64
}

func (g greedy) err(i int, c Choice) float64 {
	if c.Dense {
		return 0
	}
	return g.tails[i][c.Rank]
}

func (g greedy) total(ch []Choice) float64 {
	var sum float64
	for i, c := range ch {
		sum += g.err(i, c)
	}
	return sum
}

// next returns matrix i's next hull step from c: the jump to dense when it
// removes at least as much error per parameter as the next rank step (or no
// rank step is left) and jump is true, else the next rank step.
func (g greedy) next(i int, c Choice, jump bool) (step, bool) {
	m, tail := g.mats[i], g.tails[i]
	if c.Dense {
		return step{}, false
	}
	n := m.Out + m.In
	j := step{i: i, dense: true, cost: m.Out*m.In - c.Rank*n}
	j.ratio = tail[c.Rank] / float64(j.cost)
	if c.Rank+1 > m.MaxRank() {
		return j, true
	}
	rs := step{i: i, cost: n, ratio: (tail[c.Rank] - tail[c.Rank+1]) / float64(n)}
	if jump && j.ratio >= rs.ratio {
		return j, true
	}
	return rs, true
}

// grow spends left on the steps with the most error removed per parameter
// and returns what is left. A jump that does not fit gives way to its
// matrix's next rank step; a rank step that does not fit blocks its matrix,
// so on return no matrix can take another step.
func (g greedy) grow(ch []Choice, left int) int {
	h := &steps{}
	for i := range ch {
		if s, ok := g.next(i, ch[i], true); ok {
			heap.Push(h, s)
		}
	}
	for h.Len() > 0 {
		s := heap.Pop(h).(step)
		if s.cost > left {
			if s.dense && ch[s.i].Rank+1 <= g.mats[s.i].MaxRank() {
				if rs, ok := g.next(s.i, ch[s.i], false); ok {
					heap.Push(h, rs)
				}
			}
			continue // blocked: the budget only shrinks from here
		}
		left -= s.cost
		if s.dense {
			ch[s.i] = dense(g.mats[s.i])
		} else {
			ch[s.i].Rank++
		}
		if n, ok := g.next(s.i, ch[s.i], true); ok {
			heap.Push(h, n)
		}
	}
	return left
}

// repair fixes the greedy's typical loss: a jump to dense that was the best
// step per parameter but no longer fitted once cheaper steps had been taken.
// For every matrix whose next hull step is such a jump, it tries the
// exchange: make it dense, undo the other matrices' steps that cost the
// least error per parameter until the budget fits, and grow again. The best
// improving exchange is kept, until none improves (at most len(ch) rounds).
func (g greedy) repair(ch []Choice, left int) ([]Choice, int) {
	best := g.total(ch)
	for range len(ch) {
		var bestCh []Choice
		bestLeft := 0
		for i, c := range ch {
			if s, ok := g.next(i, c, true); !ok || !s.dense || s.cost <= left {
				continue
			}
			try := slices.Clone(ch)
			try[i] = dense(g.mats[i])
			l, ok := g.shrink(try, i, left-g.mats[i].Cost(try[i])+g.mats[i].Cost(c))
			if !ok {
				continue
			}
			l = g.grow(try, l)
			if e := g.total(try); e < best*(1-repairGain) {
				best, bestCh, bestLeft = e, try, l
			}
		}
		if bestCh == nil {
			break
		}
		ch, left = bestCh, bestLeft
	}
	return ch, left
}

// repairGain is the relative improvement an exchange must bring.
const repairGain = 1e-12

// shrink undoes steps of every matrix but keepDense, cheapest error per
// parameter first, until left ≥ 0; it reports false if that is impossible.
func (g greedy) shrink(ch []Choice, keepDense, left int) (int, bool) {
	undo := func(i int) (step, bool) {
		m, c, tail := g.mats[i], ch[i], g.tails[i]
		switch {
		case i == keepDense:
			return step{}, false
		case c.Dense && m.MaxRank() >= 1:
			r := m.MaxRank()
			return step{i: i, dense: true, cost: m.Out*m.In - r*(m.Out+m.In), ratio: -tail[r] / float64(m.Out*m.In-r*(m.Out+m.In))}, true
		case !c.Dense && c.Rank > 1:
			n := m.Out + m.In
			return step{i: i, cost: n, ratio: -(tail[c.Rank-1] - tail[c.Rank]) / float64(n)}, true
		}
		return step{}, false
	}
	h := &steps{}
	for i := range ch {
		if s, ok := undo(i); ok {
			heap.Push(h, s)
		}
	}
	for left < 0 {
		if h.Len() == 0 {
			return left, false
		}
		s := heap.Pop(h).(step)
		left += s.cost
		if s.dense {
			ch[s.i] = Choice{Rank: g.mats[s.i].MaxRank()}
		} else {
			ch[s.i].Rank--
		}
		if n, ok := undo(s.i); ok {
			heap.Push(h, n)
		}
	}
	return left, true
}

func checkSpectrum(m Matrix) error {
	if math.IsNaN(m.Weight) || math.IsInf(m.Weight, 0) || m.Weight < 0 {
		return fmt.Errorf("%w: matrix %q has weight %v", ErrSpectrum, m.Name, m.Weight)
	}
	for j, s := range m.Sigma {
		if math.IsNaN(s) || math.IsInf(s, 0) || s < 0 {
			return fmt.Errorf("%w: matrix %q σ[%d] = %v", ErrSpectrum, m.Name, j, s)
		}
		if j > 0 && s > m.Sigma[j-1] {
			return fmt.Errorf("%w: matrix %q σ[%d] = %v > σ[%d] = %v (not descending)", ErrSpectrum, m.Name, j, s, j-1, m.Sigma[j-1])
		}
	}
	return nil
}

// step is one move of a matrix: one rank up, or to dense.
type step struct {
	i     int
	dense bool
	cost  int
	ratio float64 // gain per parameter
}

// steps is a max-heap by ratio, ties to the lower matrix index.
type steps []step

func (h steps) Len() int { return len(h) }
func (h steps) Less(a, b int) bool {
	if h[a].ratio != h[b].ratio {
		return h[a].ratio > h[b].ratio
	}
	return h[a].i < h[b].i
}
func (h steps) Swap(a, b int) { h[a], h[b] = h[b], h[a] }
func (h *steps) Push(x any)   { *h = append(*h, x.(step)) }
func (h *steps) Pop() any {
	old := *h
	s := old[len(old)-1]
	*h = old[:len(old)-1]
	return s
}
