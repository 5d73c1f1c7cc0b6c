package compress

import (
	"context"
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"gonum.org/v1/gonum/mat"

	"github.com/rankzip/rankzip/calib"
	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/model"
)

// legacyBlock is Plan.Block as it was before calib.Pass: each site's
// statistics re-run both blocks from the block's start (RunBlock with a
// tap), the cross-Gram multiplies whole float64 copies of the activations,
// and the next streams run both blocks once more. It stays here only as the
// reference for TestBlockMatchesLegacy and the "before" of
// BenchmarkBlockShape.
// It also returns the seconds spent in the factorisations.
func legacyBlock(p *Plan, m *model.Model, i int, st *calib.Streams) (*model.Block, *calib.Streams, float64, error) {
	orig := m.Blocks[i]
	comp := *orig
	var stats *calib.SiteStats
	var decomp float64
	site := model.Site(-1)
	for _, mod := range p.Modules {
		if s := siteOf(mod); s != site {
			stats, site = legacyCollect(m, orig, &comp, st, s), s
		}
		name := fmt.Sprintf("model.layers.%d.%s", i, mod)
		w, bias, err := weight(*orig.Linear(mod), name)
		if err != nil {
			return nil, nil, 0, err
		}
		t0 := time.Now()
		f, _, err := factor(m, w, bias, stats, p.Options, p.Ranks[name].Rank)
		if err != nil {
			return nil, nil, 0, err
		}
		decomp += time.Since(t0).Seconds()
		*comp.Linear(mod) = f
	}
	next := &calib.Streams{Mode: st.Mode}
	for b, h := range st.Orig {
		next.Orig = append(next.Orig, m.RunBlock(orig, h, nil))
		next.Comp = append(next.Comp, m.RunBlock(&comp, st.Comp[b], nil))
	}
	return &comp, next, decomp, nil
}

// legacyCollect is the old calib.Collect in sequential mode.
func legacyCollect(m *model.Model, orig, comp *model.Block, st *calib.Streams, site model.Site) *calib.SiteStats {
	var s *calib.SiteStats
	capture := func(dst *[]float32) model.Tap {
		return func(at model.Site, x []float32, rows, cols int) bool {
			if at != site {
				return true
			}
			if s == nil {
				s = &calib.SiteStats{Dim: cols, C: mat.NewSymDense(cols, nil), Cross: mat.NewDense(cols, cols, nil),
					Sum: make([]float64, cols), AbsSum: make([]float64, cols)}
			}
			*dst = append((*dst)[:0], x[:rows*cols]...)
			return false
		}
	}
	var xo, xc []float32
	for b, h := range st.Orig {
		m.RunBlock(orig, h, capture(&xo))
		m.RunBlock(comp, st.Comp[b], capture(&xc))
		rows := h.Rows()
		for i, v := range xc[:rows*s.Dim] {
			s.Sum[i%s.Dim] += float64(v)
			s.AbsSum[i%s.Dim] += math.Abs(float64(v))
		}
		m.Backend.GramAdd(s.C, xc, rows, s.Dim)
		m.Backend.Dgemm(true, false, 1, wide64(xo, rows, s.Dim), wide64(xc, rows, s.Dim), 1, s.Cross)
		s.N += rows
	}
	return s
}

func wide64(x []float32, rows, cols int) *mat.Dense {
	d := make([]float64, rows*cols)
	for i, v := range x[:rows*cols] {
		d[i] = float64(v)
	}
	return mat.NewDense(rows, cols, d)
}

// blockTol is the relative (Frobenius) tolerance between a compressed
// layer's effective weight B·A from the single pass and from the legacy
// path. Their statistics agree to float64 rounding (the cross-Gram sums in
// another order); the factors are rounded to float32.
const blockTol = 1e-5

// The single-pass block gives the legacy block's layers and next streams.
func TestBlockMatchesLegacy(t *testing.T) {
	m, seqs := shapeModel(t, 48, 80, 4, 2, 64, 6, 24, 7)
	p, err := NewPlan(context.Background(), Whole(m), seqs, Options{KeepParams: 0.6, RankSearch: "uniform", Batch: 4})
	if err != nil {
		t.Fatal(err)
	}
	st, err := calib.Embed(m, seqs, p.Options.Batch, p.Options.Mode)
	if err != nil {
		t.Fatal(err)
	}
	got, _, next, err := p.Block(context.Background(), m, 0, st, nil)
	if err != nil {
		t.Fatal(err)
	}
	want, wantNext, _, err := legacyBlock(p, m, 0, st)
	if err != nil {
		t.Fatal(err)
	}
	for _, mod := range p.Modules {
		if e := effectiveRel(m.Backend, *got.Linear(mod), *want.Linear(mod)); e > blockTol {
			t.Errorf("%s: B·A differs from the legacy path by %.3g relative, want ≤ %g", mod, e, blockTol)
		}
	}
	for b := range next.Comp {
		if e := relErr(next.Comp[b].X, wantNext.Comp[b].X); e > blockTol {
			t.Errorf("batch %d: next compressed stream differs by %.3g relative, want ≤ %g", b, e, blockTol)
		}
		if e := relErr(next.Orig[b].X, wantNext.Orig[b].X); e != 0 {
			t.Errorf("batch %d: next original stream differs by %.3g relative, want 0", b, e)
		}
	}
}

// effectiveRel is ‖W(a) − W(b)‖/‖W(b)‖ of two layers' effective weights.
func effectiveRel(k kernels.Backend, a, b model.Linear) float64 {
	wa, err := EffectiveWeight(k, a)
	if err != nil {
		return math.Inf(1)
	}
	wb, err := EffectiveWeight(k, b)
	if err != nil {
		return math.Inf(1)
	}
	var d mat.Dense
	d.Sub(wa, wb)
	return mat.Norm(&d, 2) / mat.Norm(wb, 2)
}

// shapeModel is a two-layer synthetic Llama of the given shape and seqs
// random calibration sequences of length n.
func shapeModel(t testing.TB, hidden, inter, heads, kv, vocab, seqs, n int, seed uint64) (*model.Model, [][]int32) {
	t.Helper()
	m, err := model.Synthetic(model.SyntheticConfig{Hidden: hidden, Intermediate: inter, Layers: 2, Heads: heads, KVHeads: kv,
		Vocab: vocab, MaxPositions: n}, seed, kernels.Default())
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(seed, 1))
	out := make([][]int32, seqs)
	for s := range out {
		for range n {
			out[s] = append(out[s], int32(rng.IntN(vocab)))
		}
	}
	return m, out
}

var blockShape = flag.String("block-shape", "2048,5632,16,4,32000,32,512",
	"hidden,intermediate,heads,kv_heads,vocab,sequences,tokens of BenchmarkBlockShape")

// BenchmarkBlockShape prints the seconds of one block of `--method whiten
// --keep-params 0.8 --rank-search uniform` (sequential calibration, batches
// of 16) on a synthetic Llama, by the legacy path and by Plan.Block, next to
// the floor: the forward FLOPs of the two streams at the measured sgemm
// rate, the Gram (N·d²) and cross-Gram (2N·d²) FLOPs at the measured dgemm
// rate, and the seven factorisations as timed inside the legacy run. Run it with
//
//	go test -run XXX -bench BlockShape -benchtime 1x ./compress/ [-args -block-shape 1024,2816,16,4,32000,32,512]
func BenchmarkBlockShape(b *testing.B) {
	var hidden, inter, heads, kv, vocab, nseq, n int
	if _, err := fmt.Sscanf(*blockShape, "%d,%d,%d,%d,%d,%d,%d", &hidden, &inter, &heads, &kv, &vocab, &nseq, &n); err != nil {
		b.Fatalf("-block-shape %q: %v", *blockShape, err)
	}
	m, seqs := shapeModel(b, hidden, inter, heads, kv, vocab, nseq, n, 1)
	k := m.Backend
	p, err := NewPlan(context.Background(), Whole(m), seqs, Options{Method: "whiten", KeepParams: 0.8, RankSearch: "uniform"})
	if err != nil {
		b.Fatal(err)
	}
	st, err := calib.Embed(m, seqs, p.Options.Batch, p.Options.Mode)
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		sgemm := kernels.MeasureSgemm(k, 2048)
		dgemm := measureDgemm(k, 2048)
		t0 := time.Now()
		comp, _, _, err := p.Block(context.Background(), m, 0, st, nil)
		if err != nil {
			b.Fatal(err)
		}
		after := time.Since(t0).Seconds()
		t0 = time.Now()
		legacy, _, decomp, err := legacyBlock(p, m, 0, st)
		if err != nil {
			b.Fatal(err)
		}
		before := time.Since(t0).Seconds()
		fwd := forwardFlops(m, m.Blocks[0], nseq, n) + forwardFlops(m, comp, nseq, n)
		gram := 0.0
		for _, s := range []model.Site{model.AttnInput, model.OInput, model.MLPInput, model.DownInput} {
			d := float64(hidden)
			if s == model.DownInput {
				d = float64(inter)
			}
			gram += 3 * float64(nseq*n) * d * d
		}
		floor := fwd/(sgemm*1e9) + gram/(dgemm*1e9) + decomp
		worst := 0.0
		for _, mod := range p.Modules {
			worst = max(worst, effectiveRel(k, *comp.Linear(mod), *legacy.Linear(mod)))
		}
		fmt.Printf("block of hidden %d, intermediate %d, %d/%d heads, vocab %d, %d×%d calibration tokens (%s backend)\n",
			hidden, inter, heads, kv, vocab, nseq, n, k.Name())
		fmt.Printf("measured: sgemm %.1f GFLOP/s, dgemm %.1f GFLOP/s (2048³)\n", sgemm, dgemm)
		fmt.Printf("floor: forward %.2f TFLOP float32 %.1f s + Grams %.2f TFLOP float64 %.1f s + 7 factorisations %.1f s = %.1f s\n",
			fwd/1e12, fwd/(sgemm*1e9), gram/1e12, gram/(dgemm*1e9), decomp, floor)
		fmt.Printf("%-34s %9s %9s\n", "path", "seconds", "× floor")
		fmt.Printf("%-34s %9.1f %9.2f\n", "before (Collect per site+Advance)", before, before/floor)
		fmt.Printf("%-34s %9.1f %9.2f\n", "after (one calib.Pass)", after, after/floor)
		fmt.Printf("largest B·A difference, after vs before: %.2g relative\n", worst)
	}
}

// measureDgemm is kernels.MeasureSgemm for float64: the best of three
// n×n×n products, in GFLOP/s.
func measureDgemm(k kernels.Backend, n int) float64 {
	x, y, z := mat.NewDense(n, n, nil), mat.NewDense(n, n, nil), mat.NewDense(n, n, nil)
	for i := range n {
		for j := range n {
			x.Set(i, j, float64((i+j)%17)/17-0.5)
			y.Set(i, j, float64((i*j)%13)/13-0.5)
		}
	}
	k.Dgemm(false, false, 1, x, y, 0, z)
	best := math.Inf(1)
	for range 3 {
		t0 := time.Now()
		k.Dgemm(false, false, 1, x, y, 0, z)
		best = min(best, time.Since(t0).Seconds())
	}
	return 2 * math.Pow(float64(n), 3) / best / 1e9
}

// forwardFlops counts the multiply-adds (×2) of block b's linears and its
// attention products (the full n×n scores, as computed) over nseq
// sequences of n tokens.
func forwardFlops(m *model.Model, b *model.Block, nseq, n int) float64 {
	per := 0.0
	for _, mod := range model.Modules {
		l := *b.Linear(mod)
		if f, ok := l.(*model.Factored); ok {
			per += 2 * float64(f.Rank()*(f.In()+f.Out()))
		} else {
			per += 2 * float64(l.In()*l.Out())
		}
	}
	c := m.Config
	attn := 4 * float64(n) * float64(n) * float64(c.HeadDim) * float64(c.NumHeads)
	return float64(nseq) * (float64(n)*per + attn)
}
