package calib

import (
	"math"
	"slices"
	"testing"

	"gonum.org/v1/gonum/mat"

	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/model"
)

// statsTol is the relative (Frobenius) tolerance between statistics summed
// in a different order: float64 rounding over a few hundred terms.
const statsTol = 1e-12

// The single pass gives, at every site, the statistics of the old
// algorithm that re-ran both blocks from the block's start with the linears
// changed so far, and the same next streams; the linears of each site change
// between sites as a compression would change them.
func TestPassMatchesRecompute(t *testing.T) {
	k := kernels.Default()
	m, err := model.Synthetic(model.SyntheticConfig{Hidden: 32, Intermediate: 48, Layers: 1, Heads: 4, KVHeads: 2, Vocab: 64, MaxPositions: 32}, 3, k)
	if err != nil {
		t.Fatal(err)
	}
	var seqs [][]int32
	for s := range 5 {
		var seq []int32
		for p := range 9 + 3*s {
			seq = append(seq, int32((7*s+3*p)%64))
		}
		seqs = append(seqs, seq)
	}
	st, err := Embed(m, seqs, 2, Sequential) // three batches
	if err != nil {
		t.Fatal(err)
	}
	orig := m.Blocks[0]
	comp := *orig
	pass := NewPass(m, orig, &comp, st)
	sites := map[model.Site][]string{
		model.AttnInput: {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"},
		model.OInput:    {"self_attn.o_proj"},
		model.MLPInput:  {"mlp.gate_proj", "mlp.up_proj"},
		model.DownInput: {"mlp.down_proj"},
	}
	for site := model.AttnInput; site <= model.DownInput; site++ {
		got, err := pass.Stats(site)
		if err != nil {
			t.Fatal(err)
		}
		want := recompute(t, m, orig, &comp, st, site)
		if got.N != want.N || !slices.Equal(got.Sum, want.Sum) || !slices.Equal(got.AbsSum, want.AbsSum) {
			t.Fatalf("site %d: N or sums differ (N %d, want %d)", site, got.N, want.N)
		}
		if e := frobRel(got.C, want.C); e > statsTol {
			t.Errorf("site %d: Gram differs by %.3g relative, want ≤ %g", site, e, statsTol)
		}
		if e := frobRel(got.Cross, want.Cross); e > statsTol {
			t.Errorf("site %d: cross-Gram differs by %.3g relative, want ≤ %g", site, e, statsTol)
		}
		for _, mod := range sites[site] {
			*comp.Linear(mod) = scaled((*comp.Linear(mod)).(*model.Dense), 0.9)
		}
	}
	if _, err := pass.Stats(model.OInput); err == nil {
		t.Error("Stats of a site already passed: no error")
	}
	next, err := pass.Next()
	if err != nil {
		t.Fatal(err)
	}
	for i, h := range st.Orig {
		if !slices.Equal(next.Orig[i].X, m.RunBlock(orig, h, nil).X) {
			t.Errorf("batch %d: original stream differs from RunBlock", i)
		}
		if !slices.Equal(next.Comp[i].X, m.RunBlock(&comp, st.Comp[i], nil).X) {
			t.Errorf("batch %d: compressed stream differs from RunBlock", i)
		}
	}
}

// recompute is the statistics of site as the old Collect took them: each
// batch runs both blocks from the start up to site (RunBlock with a tap),
// and the cross-Gram is one float64 product of whole activations.
func recompute(t *testing.T, m *model.Model, orig, comp *model.Block, st *Streams, site model.Site) *SiteStats {
	t.Helper()
	capture := func(dst *[]float32, cols *int) model.Tap {
		return func(at model.Site, x []float32, rows, c int) bool {
			if at != site {
				return true
			}
			*dst, *cols = slices.Clone(x[:rows*c]), c
			return false
		}
	}
	var s *SiteStats
	for i, h := range st.Orig {
		var xo, xc []float32
		var d int
		m.RunBlock(orig, h, capture(&xo, &d))
		m.RunBlock(comp, st.Comp[i], capture(&xc, &d))
		if s == nil {
			s = newSiteStats(d, true)
		}
		rows := h.Rows()
		for r := range rows {
			for j, v := range xc[r*d : (r+1)*d] {
				s.Sum[j] += float64(v)
				s.AbsSum[j] += math.Abs(float64(v))
			}
		}
		m.Backend.GramAdd(s.C, xc, rows, d)
		var p mat.Dense
		p.Mul(wide(xo, rows, d).T(), wide(xc, rows, d))
		s.Cross.Add(s.Cross, &p)
		s.N += rows
	}
	return s
}

func wide(x []float32, rows, cols int) *mat.Dense {
	d := make([]float64, rows*cols)
	widen(d, x)
	return mat.NewDense(rows, cols, d)
}

func scaled(d *model.Dense, f float32) *model.Dense {
	w := slices.Clone(d.Weight)
	for i := range w {
		w[i] *= f
	}
	return model.NewDense(d.Out(), d.In(), w, d.Bias)
}

// frobRel is ‖a − b‖ / ‖b‖ (Frobenius).
func frobRel(a, b mat.Matrix) float64 {
	var d mat.Dense
	d.Sub(a, b)
	return mat.Norm(&d, 2) / mat.Norm(b, 2)
}

// The chunked cross-Gram equals one float64 product of the whole
// activations, across several chunks and a ragged last one.
func TestCrossAddChunks(t *testing.T) {
	rows, cols := 2*crossChunkRows+37, 24
	xo := make([]float32, rows*cols)
	xc := make([]float32, rows*cols)
	for i := range xo {
		xo[i] = float32(math.Sin(float64(i)))
		xc[i] = float32(math.Cos(0.7 * float64(i)))
	}
	for _, k := range kernels.Available() {
		got := mat.NewDense(cols, cols, nil)
		crossAdd(k, got, xo, xc, rows, cols)
		var want mat.Dense
		want.Mul(wide(xo, rows, cols).T(), wide(xc, rows, cols))
		if e := frobRel(got, &want); e > statsTol {
			t.Errorf("%s: chunked cross-Gram differs by %.3g relative, want ≤ %g", k.Name(), e, statsTol)
		}
	}
}

// A pass over spilled streams, whose paused batches live in mapped files,
// gives the statistics and next streams of one in memory.
func TestSpilledPassMatchesMemory(t *testing.T) {
	k := kernels.Default()
	m, err := model.Synthetic(model.SyntheticConfig{Hidden: 16, Intermediate: 24, Layers: 1, Heads: 4, KVHeads: 2, Vocab: 32, MaxPositions: 16}, 2, k)
	if err != nil {
		t.Fatal(err)
	}
	seqs := [][]int32{{1, 2, 3}, {4, 5, 6, 7}, {8, 9}, {10, 11, 12, 13, 14}}
	run := func(dir string) ([]*SiteStats, *Streams) {
		st, err := EmbedSpill(m, seqs, 2, Sequential, dir)
		if err != nil {
			t.Fatal(err)
		}
		orig := m.Blocks[0]
		comp := *orig
		p := NewPass(m, orig, &comp, st)
		defer p.Release()
		var stats []*SiteStats
		for site := model.AttnInput; site <= model.DownInput; site++ {
			s, err := p.Stats(site)
			if err != nil {
				t.Fatal(err)
			}
			stats = append(stats, s)
			comp.Down = scaled(comp.Down.(*model.Dense), 0.5) // read after the last site only
			comp.O = scaled(orig.O.(*model.Dense), 0.8)
		}
		next, err := p.Next()
		if err != nil {
			t.Fatal(err)
		}
		return stats, next
	}
	memStats, mem := run("")
	diskStats, disk := run(t.TempDir())
	defer disk.Release()
	for i := range memStats {
		if !mat.Equal(memStats[i].C, diskStats[i].C) || !mat.Equal(memStats[i].Cross, diskStats[i].Cross) {
			t.Errorf("site %d: statistics differ between spilled and in-memory passes", i)
		}
	}
	for i := range mem.Orig {
		if !slices.Equal(mem.Orig[i].X, disk.Orig[i].X) || !slices.Equal(mem.Comp[i].X, disk.Comp[i].X) {
			t.Errorf("batch %d: next streams differ between spilled and in-memory passes", i)
		}
	}
}
