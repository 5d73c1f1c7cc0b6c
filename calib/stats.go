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
	d := s.Dim
	for r := range rows {
		for j, v := range x[r*d : (r+1)*d] {
			f := float64(v)
			if math.IsNaN(f) || math.IsInf(f, 0) {
				return fmt.Errorf("non-finite activation %v at token %d channel %d", v, s.N+r, j)
			}
			s.Sum[j] += f
			s.AbsSum[j] += math.Abs(f)
		}
	}
	k.GramAdd(s.C, x, rows, d)
	if s.Cross != nil {
		crossAdd(k, s.Cross, orig, x, rows, d)
	}
	s.N += rows
	return nil
}

// crossChunkRows is how many rows crossAdd widens to float64 at a time:
// enough for Dgemm to run near its rate (k = 512), small enough that the
// two buffers stay tens of MiB at the widest site (intermediate 5632).
const crossChunkRows = 512

// crossAdd adds Xoᵀ Xc to c (cols×cols), where Xo and Xc are rows×cols
// float32. The rows go through float64 buffers a chunk at a time, so no
// float64 copy of a whole activation is made; float64 accumulation keeps
// the statistics exact to float64 rounding.
func crossAdd(k kernels.Backend, c *mat.Dense, xo, xc []float32, rows, cols int) {
	chunk := min(rows, crossChunkRows)
	bo := make([]float64, chunk*cols)
	bc := make([]float64, chunk*cols)
	for r0 := 0; r0 < rows; r0 += chunk {
		kr := min(chunk, rows-r0)
		widen(bo[:kr*cols], xo[r0*cols:(r0+kr)*cols])
		widen(bc[:kr*cols], xc[r0*cols:(r0+kr)*cols])
		k.Dgemm(true, false, 1, mat.NewDense(kr, cols, bo[:kr*cols]), mat.NewDense(kr, cols, bc[:kr*cols]), 1, c)
	}
}

func widen(dst []float64, src []float32) {
	for i, v := range src {
		dst[i] = float64(v)
	}
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

// Pass is the calibration of one block in true-sequential order: every
// batch of the original and the compressed stream runs through the block
// once, stopping at each site (model.BlockRun). Stats(site) takes a site's
// statistics over all batches; the caller then replaces the linears that
// read the site in the compressed block and asks for the next site, and the
// batches resume from where they stopped, so the float32 work of a block is
// one forward pass per stream. Each batch's state at the current site stays
// in memory between calls (one batch of hidden states and one site input
// per stream and batch; in memory-mapped files when the streams are
// spilled, see Release).
type Pass struct {
	m          *model.Model
	orig, comp *model.Block
	st         *Streams
	// The batches' runs, started on first use; compRuns is nil in
	// Original mode.
	origRuns, compRuns []*model.BlockRun
	// once drops each batch's run after its statistics (Collect): memory
	// then holds one batch's state at a time.
	once bool
	// batchDone, when set, is called after each batch of Stats and Next;
	// an error it returns stops the pass there.
	batchDone func(batch int) error
	// mapped are the spilled buffers each batch's paused runs hold.
	mapped [][][]float32
}

// OnBatch sets fn to be called after each batch a call of Stats or Next
// has run: the caller's heartbeat and cancellation check inside a site,
// whose statistics take a pass over every batch. An error from fn stops
// the call and is returned as is.
func (p *Pass) OnBatch(fn func(batch int) error) { p.batchDone = fn }

func (p *Pass) done(batch int) error {
	if p.batchDone == nil {
		return nil
	}
	return p.batchDone(batch)
}

// NewPass starts the calibration of a block: orig is the block as in the
// original model, comp the block being compressed, which the caller changes
// between calls (its linears before the site asked for). In Original mode
// only orig runs. st is left as it was.
func NewPass(m *model.Model, orig, comp *model.Block, st *Streams) *Pass {
	p := &Pass{m: m, orig: orig, comp: comp, st: st, origRuns: make([]*model.BlockRun, len(st.Orig)),
		mapped: make([][][]float32, len(st.Orig))}
	if st.Mode == Sequential {
		p.compRuns = make([]*model.BlockRun, len(st.Orig))
	}
	return p
}

// runs returns batch i's runs, starting them when new.
func (p *Pass) runs(i int) (orig, comp *model.BlockRun) {
	if p.origRuns[i] == nil {
		p.origRuns[i] = p.m.StartBlock(p.orig, p.st.Orig[i])
		if p.compRuns != nil {
			p.compRuns[i] = p.m.StartBlock(p.comp, p.st.Comp[i])
		}
	}
	if p.compRuns != nil {
		comp = p.compRuns[i]
	}
	return p.origRuns[i], comp
}

// leave ends a site's work on batch i: its state goes when the pass runs
// once, else it stays paused at the site (spilled with the streams), and
// the batch counts as done.
func (p *Pass) leave(i int) error {
	if p.once {
		p.drop(i)
	} else if err := p.pause(i); err != nil {
		return err
	}
	return p.done(i)
}

// drop lets batch i's state go.
func (p *Pass) drop(i int) {
	p.origRuns[i] = nil
	if p.compRuns != nil {
		p.compRuns[i] = nil
	}
	p.unmap(i)
}

// pause moves batch i's paused runs into spilled files when the streams
// are spilled, so that memory holds one batch's state at a time.
func (p *Pass) pause(i int) error {
	if p.st.Spill == "" {
		return nil
	}
	old := p.mapped[i]
	p.mapped[i] = nil
	alloc := func(n int) ([]float32, error) {
		x, err := spillFloats(p.st.Spill, n)
		if err == nil {
			p.mapped[i] = append(p.mapped[i], x)
		}
		return x, err
	}
	runs := []*model.BlockRun{p.origRuns[i]}
	if p.compRuns != nil {
		runs = append(runs, p.compRuns[i])
	}
	for _, r := range runs {
		if r != nil {
			if err := r.Keep(alloc); err != nil {
				return err
			}
		}
	}
	for _, x := range old { // the runs now hold the new copies
		unmapFloats(x)
	}
	return nil
}

func (p *Pass) unmap(i int) {
	for _, x := range p.mapped[i] {
		unmapFloats(x)
	}
	p.mapped[i] = nil
}

// Release lets every batch's state go (and unmaps what was spilled); the
// pass must not be used after. Stats and Next need no Release on success
// when Next has run; call it (deferred) for a pass that may stop early.
func (p *Pass) Release() {
	for i := range p.origRuns {
		p.drop(i)
	}
}

// advance runs r on to site (or to the block's end when end is set); it
// reports false when the block ends before reaching site.
func advance(r *model.BlockRun, b *model.Block, site model.Site, end bool) bool {
	for !r.Done() && (end || r.Site() < site) {
		r.Step(b)
	}
	return !r.Done() && (end || r.Site() == site)
}

// Stats runs every batch on to site and returns the site's statistics.
// Sites must be asked for in block order; a site the block lacks (the down
// projection of a mixture-of-experts block) is an error.
func (p *Pass) Stats(site model.Site) (*SiteStats, error) {
	var s *SiteStats
	for i := range p.origRuns {
		ro, rc := p.runs(i)
		if !ro.Done() && ro.Site() > site {
			return nil, fmt.Errorf("calibration pass already past site %d", site)
		}
		if !advance(ro, p.orig, site, false) {
			return nil, fmt.Errorf("the block has no site %d", site)
		}
		xo, rows, cols := ro.Input()
		if s == nil {
			s = newSiteStats(cols, p.st.Mode == Sequential)
		}
		if rc == nil {
			if err := s.add(p.m.Backend, xo, nil, rows); err != nil {
				return nil, err
			}
		} else {
			if !advance(rc, p.comp, site, false) {
				return nil, fmt.Errorf("the compressed block has no site %d", site)
			}
			xc, _, _ := rc.Input()
			if err := s.add(p.m.Backend, xc, xo, rows); err != nil {
				return nil, err
			}
		}
		if err := p.leave(i); err != nil {
			return nil, err
		}
	}
	if s == nil {
		return nil, fmt.Errorf("no calibration tokens")
	}
	return s, nil
}

// Next runs every batch to the block's end and returns the streams entering
// the next block (spilled like the pass's streams).
func (p *Pass) Next() (*Streams, error) {
	next := &Streams{Mode: p.st.Mode, Spill: p.st.Spill}
	if err := p.next(next); err != nil {
		next.Release()
		return nil, err
	}
	return next, nil
}

func (p *Pass) next(next *Streams) error {
	keep := func(h *model.States) (*model.States, error) {
		if p.st.Spill == "" {
			return h, nil
		}
		return spillStates(p.st.Spill, h)
	}
	for i := range p.origRuns {
		ro, rc := p.runs(i)
		advance(ro, p.orig, 0, true)
		o, err := keep(ro.Output())
		if err != nil {
			return err
		}
		next.Orig = append(next.Orig, o)
		if rc != nil {
			advance(rc, p.comp, 0, true)
			c, err := keep(rc.Output())
			if err != nil {
				return err
			}
			next.Comp = append(next.Comp, c)
		}
		p.drop(i)
		if err := p.done(i); err != nil {
			return err
		}
	}
	return nil
}

// Collect accumulates the statistics of one site of a block (a Pass that
// stops there). orig is the block as in the original model; comp is the
// same block with the linears compressed so far (those before site). In
// Original mode only orig runs.
func Collect(m *model.Model, orig, comp *model.Block, st *Streams, site model.Site) (*SiteStats, error) {
	p := NewPass(m, orig, comp, st)
	defer p.Release()
	p.once = true
	return p.Stats(site)
}

// Advance runs the blocks on the streams and returns the streams entering
// the next block (spilled like st). st itself is left as it was.
func Advance(m *model.Model, orig, comp *model.Block, st *Streams) (*Streams, error) {
	p := NewPass(m, orig, comp, st)
	defer p.Release()
	return p.Next()
}
