package calib

import (
	"fmt"
	"math"

	"gonum.org/v1/gonum/mat"

	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/model"
)

// Mode chooses which activations the statistics of a block come from.
type Mode string

const (
	// Original takes every Gram from the original model's activations.
	Original Mode = "original"
	// Sequential takes each Gram from the activations of the model compressed
	// so far (earlier blocks and earlier linears of the same block), and also
	// the cross-Gram with the original activations so that the fit targets
	// the original outputs.
	Sequential Mode = "sequential"
)

// SiteStats are the float64 statistics of the input of one group of linear
// layers over the calibration tokens.
type SiteStats struct {
	Dim int
	N   int           // tokens seen
	C   *mat.SymDense // Σ x xᵀ of the stream the compressed layer will see
	// Cross is Σ x_orig x_compᵀ (Dim×Dim) in Sequential mode, nil otherwise.
	Cross  *mat.Dense
	Sum    []float64 // Σ x per channel
	AbsSum []float64 // Σ |x| per channel (ASVD scaling)
}

func newSiteStats(dim int, cross bool) *SiteStats {
	s := &SiteStats{Dim: dim, C: mat.NewSymDense(dim, nil), Sum: make([]float64, dim), AbsSum: make([]float64, dim)}
	if cross {
		s.Cross = mat.NewDense(dim, dim, nil)
	}
	return s
}

// Mean returns Σx/N.
func (s *SiteStats) Mean() []float64 {
	m := make([]float64, s.Dim)
	for i, v := range s.Sum {
		m[i] = v / float64(max(s.N, 1))
	}
	return m
}

// MeanAbs returns Σ|x|/N.
func (s *SiteStats) MeanAbs() []float64 {
	m := make([]float64, s.Dim)
	for i, v := range s.AbsSum {
		m[i] = v / float64(max(s.N, 1))
	}
	return m
}

// add accumulates rows of x (the compressed stream) and, with a cross-Gram,
// the matching rows of orig.
func (s *SiteStats) add(k kernels.Backend, x, orig []float32, rows int) error {
	for i, v := range x[:rows*s.Dim] {
		f := float64(v)
		if math.IsNaN(f) || math.IsInf(f, 0) {
			return fmt.Errorf("non-finite activation %v at token %d channel %d", v, s.N+i/s.Dim, i%s.Dim)
		}
		s.Sum[i%s.Dim] += f
		s.AbsSum[i%s.Dim] += math.Abs(f)
	}
	k.GramAdd(s.C, x, rows, s.Dim)
	if s.Cross != nil {
		xo := toDense(orig, rows, s.Dim)
		xc := toDense(x, rows, s.Dim)
		k.Dgemm(true, false, 1, xo, xc, 1, s.Cross)
	}
	s.N += rows
	return nil
}

func toDense(x []float32, rows, cols int) *mat.Dense {
	d := make([]float64, rows*cols)
	for i, v := range x[:rows*cols] {
		d[i] = float64(v)
	}
	return mat.NewDense(rows, cols, d)
}

// Streams are the calibration hidden states entering a block, in batches:
// those of the original model and, in Sequential mode, those of the model
// compressed so far.
type Streams struct {
	Mode Mode
	Orig []*model.States
	Comp []*model.States // nil in Original mode
	// Spill, when set, is a directory where the batches live as memory-mapped
	// files, so that memory holds one block and the batch being worked on
	// rather than every calibration hidden state. Call Release when done.
	Spill string
}

// Embed embeds the calibration sequences in batches of batch sequences.
func Embed(m *model.Model, seqs [][]int32, batch int, mode Mode) (*Streams, error) {
	return EmbedSpill(m, seqs, batch, mode, "")
}

// EmbedSpill is Embed with the batches spilled to memory-mapped files in
// dir (see Streams.Spill); dir "" keeps them in memory.
func EmbedSpill(m *model.Model, seqs [][]int32, batch int, mode Mode, dir string) (*Streams, error) {
	if mode != Original && mode != Sequential {
		return nil, fmt.Errorf("calibration mode %q: want %q or %q", mode, Sequential, Original)
	}
	st := &Streams{Mode: mode, Spill: dir}
	for i := 0; i < len(seqs); i += batch {
		h, err := m.EmbedTokens(seqs[i:min(len(seqs), i+batch)])
		if err != nil {
			return nil, fmt.Errorf("calibration sequence %d onwards: %w", i, err)
		}
		st.Orig = append(st.Orig, h)
		if mode == Sequential {
			st.Comp = append(st.Comp, h)
		}
	}
	if err := st.spill(); err != nil {
		return nil, err
	}
	return st, nil
}

// Tokens counts the calibration tokens.
func (st *Streams) Tokens() int {
	n := 0
	for _, h := range st.Orig {
		n += h.Rows()
	}
	return n
}

// Collect accumulates the statistics of one site of a block. orig is the
// block as in the original model; comp is the same block with the linears
// compressed so far (those before site). In Original mode only orig runs.
func Collect(m *model.Model, orig, comp *model.Block, st *Streams, site model.Site) (*SiteStats, error) {
	var s *SiteStats
	capture := func(dst *[]float32) model.Tap {
		return func(at model.Site, x []float32, rows, cols int) bool {
			if at != site {
				return true
			}
			if s == nil {
				s = newSiteStats(cols, st.Mode == Sequential)
			}
			*dst = append((*dst)[:0], x[:rows*cols]...)
			return false
		}
	}
	var xo, xc []float32
	for i, h := range st.Orig {
		m.RunBlock(orig, h, capture(&xo))
		if st.Mode == Original {
			if err := s.add(m.Backend, xo, nil, h.Rows()); err != nil {
				return nil, err
			}
			continue
		}
		m.RunBlock(comp, st.Comp[i], capture(&xc))
		if err := s.add(m.Backend, xc, xo, h.Rows()); err != nil {
			return nil, err
		}
	}
	if s == nil {
		return nil, fmt.Errorf("no calibration tokens")
	}
	return s, nil
}

// Advance runs the blocks on the streams and returns the streams entering
// the next block (spilled like st). st itself is left as it was.
func Advance(m *model.Model, orig, comp *model.Block, st *Streams) (*Streams, error) {
	next := &Streams{Mode: st.Mode, Spill: st.Spill}
	keep := func(h *model.States) (*model.States, error) {
		if st.Spill == "" {
			return h, nil
		}
		return spillStates(st.Spill, h)
	}
	for i, h := range st.Orig {
		o, err := keep(m.RunBlock(orig, h, nil))
		if err != nil {
			return nil, err
		}
		next.Orig = append(next.Orig, o)
		if st.Mode == Sequential {
			c, err := keep(m.RunBlock(comp, st.Comp[i], nil))
			if err != nil {
				return nil, err
			}
			next.Comp = append(next.Comp, c)
		}
	}
	return next, nil
}
