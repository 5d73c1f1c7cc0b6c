package eora

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"gonum.org/v1/gonum/mat"

	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/methods/internal/mattest"
	"github.com/rankzip/rankzip/methods/internal/matx"
	"github.com/rankzip/rankzip/methods/quant"
	"github.com/rankzip/rankzip/methods/svd"
)

const (
	// tolExact bounds ‖W − (W_c + B A)‖_F / ‖W‖_F at full rank on a
	// well-conditioned C.
	tolExact = 1e-9
	// tolMonotone is the relative slack when one error must not exceed
	// another.
	tolMonotone = 1e-10
	// tolPredict bounds the gap between ErrorAfter and the tail Σ_{i≥r} σᵢ²
	// when every eigenvalue is kept.
	tolPredict = 1e-8
)

func backends() []kernels.Backend { return kernels.Available() }

func newRNG(seed uint64) *rand.Rand { return rand.New(rand.NewPCG(seed, 1)) }

// activations returns n tokens of dimension in with a spectrum decaying by
// decay per direction in a random basis, and channel scales spread over a
// factor 10, plus their Gram.
func activations(rng *rand.Rand, n, in int, decay float64) (*mat.Dense, *mat.SymDense) {
	z := mattest.RandDense(rng, n, in)
	raw := z.RawMatrix()
	for i := range n {
		s := 1.0
		for j := range in {
			raw.Data[i*raw.Stride+j] *= s
			s *= decay
		}
	}
	var qr mat.QR
	qr.Factorize(mattest.RandDense(rng, in, in))
	var q, x mat.Dense
	qr.QTo(&q)
	x.Mul(z, &q)
	xr := x.RawMatrix()
	for j := range in {
		f := math.Pow(10, rng.Float64())
		for i := range n {
			xr.Data[i*xr.Stride+j] *= f
		}
	}
	return &x, gram(&x)
}

func gram(x *mat.Dense) *mat.SymDense {
	_, in := x.Dims()
	c := mat.NewSymDense(in, nil)
	c.SymOuterK(1, x.T())
	return c
}

func compensated(wc *mat.Dense, r Result) *mat.Dense {
	var ba mat.Dense
	ba.Mul(r.B, r.A)
	ba.Add(&ba, wc)
	return &ba
}

func relDiff(a, b mat.Matrix) float64 {
	var d mat.Dense
	d.Sub(a, b)
	return mat.Norm(&d, 2) / mat.Norm(b, 2)
}

func relErr(got, want float64) float64 {
	if got == want {
		return 0
	}
	return math.Abs(got-want) / math.Max(math.Abs(want), math.SmallestNonzeroFloat64)
}

func tail(s []float64, r int) float64 {
	var sum float64
	for i := len(s) - 1; i >= r; i-- {
		sum += s[i] * s[i]
	}
	return sum
}

func rtn(t *testing.T, w *mat.Dense, bits int) *mat.Dense {
	t.Helper()
	q, err := quant.RTN(w, quant.Config{Bits: bits})
	if err != nil {
		t.Fatal(err)
	}
	return q.Dequant
}

var shapes = []struct{ out, in int }{{48, 32}, {32, 48}}

// EoRA never increases the calibration error, the error does not increase
// with the rank, the measured error is the predicted tail, and EoRA beats
// plain SVD of the error at every rank (C well conditioned: every
// eigenvalue kept).
func TestCompensateQuantized(t *testing.T) {
	for _, k := range backends() {
		for _, sh := range shapes {
			for _, bits := range []int{2, 3, 4} {
				rng := newRNG(uint64(bits))
				w := mattest.RandDense(rng, sh.out, sh.in)
				_, c := activations(rng, 4*sh.in, sh.in, 0.95)
				wc := rtn(t, w, bits)
				dw := mat.NewDense(sh.out, sh.in, nil)
				dw.Sub(w, wc)
				before := svd.CalibError(w, wc, c)
				prev := math.Inf(1)
				for _, rank := range []int{1, 2, 4, 8, 16, min(sh.out, sh.in)} {
					name := fmt.Sprintf("%s %v %d bits rank %d", k.Name(), sh, bits, rank)
					r, err := Compensate(k, w, wc, c, rank)
					if err != nil {
						t.Fatalf("%s: %v", name, err)
					}
					if r.Kept != sh.in || r.Rank() != rank {
						t.Errorf("%s: kept %d of %d, rank %d", name, r.Kept, sh.in, r.Rank())
					}
					if relErr(r.ErrorBefore, before) > tolPredict {
						t.Errorf("%s: ErrorBefore %.12g, direct %.12g", name, r.ErrorBefore, before)
					}
					after := svd.CalibError(w, compensated(wc, r), c)
					if relErr(r.ErrorAfter, after) > tolPredict && math.Abs(r.ErrorAfter-after) > tolPredict*before {
						t.Errorf("%s: ErrorAfter %.12g, direct %.12g", name, r.ErrorAfter, after)
					}
					if math.Abs(r.ErrorAfter-tail(r.Sigma, rank)) > tolPredict*before {
						t.Errorf("%s: ErrorAfter %.12g, Σ_{i≥r} σᵢ² %.12g", name, r.ErrorAfter, tail(r.Sigma, rank))
					}
					if r.ErrorAfter > r.ErrorBefore*(1+tolMonotone) || r.ErrorAfter > prev*(1+tolMonotone)+tolPredict*before {
						t.Errorf("%s: error %.6g after, %.6g before, %.6g at the previous rank", name, r.ErrorAfter, r.ErrorBefore, prev)
					}
					prev = r.ErrorAfter
					pl, err := svd.Plain(k, dw, rank)
					if err != nil {
						t.Fatal(err)
					}
					var pba mat.Dense
					pba.Mul(pl.B, pl.A)
					pba.Add(&pba, wc)
					plainErr := svd.CalibError(w, &pba, c)
					if r.ErrorAfter > plainErr*(1+tolMonotone)+tolPredict*before {
						t.Errorf("%s: EoRA %.6g worse than plain SVD of ΔW %.6g", name, r.ErrorAfter, plainErr)
					}
					if k == backends()[0] && sh == shapes[0] && bits == 3 && rank <= 16 {
						t.Logf("%s: calibration error before %.4g, EoRA %.4g (%.3f), plain SVD of ΔW %.4g (%.3f)",
							name, before, r.ErrorAfter, r.ErrorAfter/before, plainErr, plainErr/before)
					}
				}
			}
		}
	}
}

// An ill-conditioned C: the smallest eigenvalues fall below the cutoff and
// are dropped. The energy of ΔW along them, D ≤ τ‖ΔW‖²_F, is all that
// separates the error from the tail Σ_{i≥r} σᵢ², and the error still never
// grows, with the rank or against the uncompensated layer, and is within D of
// beating plain SVD.
func TestDroppedEigenvalues(t *testing.T) {
	const out, in = 32, 48
	for _, k := range backends() {
		rng := newRNG(12)
		w := mattest.RandDense(rng, out, in)
		_, c := activations(rng, 4*in, in, 0.8)
		wc := rtn(t, w, 3)
		dw := mat.NewDense(out, in, nil)
		dw.Sub(w, wc)
		frob := mat.Norm(dw, 2)
		prev := math.Inf(1)
		for _, rank := range []int{1, 4, 16, out} {
			name := fmt.Sprintf("%s rank %d", k.Name(), rank)
			r, err := Compensate(k, w, wc, c, rank)
			if err != nil {
				t.Fatal(err)
			}
			if r.Kept == in || r.Kept == 0 {
				t.Fatalf("%s: kept %d of %d: the test wants some dropped", name, r.Kept, in)
			}
			d := r.ErrorAfter - tail(r.Sigma, rank)
			if d < -tolPredict*r.ErrorBefore || d > r.Cutoff*frob*frob {
				t.Errorf("%s: error − tail = %.3g outside [0, τ‖ΔW‖² = %.3g]", name, d, r.Cutoff*frob*frob)
			}
			if r.ErrorAfter > r.ErrorBefore || r.ErrorAfter > prev*(1+tolMonotone) {
				t.Errorf("%s: error %.6g after, %.6g before, %.6g at the previous rank", name, r.ErrorAfter, r.ErrorBefore, prev)
			}
			prev = r.ErrorAfter
			pl, _ := svd.Plain(k, dw, rank)
			var pba mat.Dense
			pba.Mul(pl.B, pl.A)
			pba.Add(&pba, wc)
			if pe := svd.CalibError(w, &pba, c); r.ErrorAfter > pe+r.Cutoff*frob*frob {
				t.Errorf("%s: EoRA %.6g, plain SVD %.6g + τ‖ΔW‖² %.3g", name, r.ErrorAfter, pe, r.Cutoff*frob*frob)
			}
			if rank == out {
				t.Logf("%s: kept %d of %d eigenvalues; full-rank error %.3g of %.3g before (dropped energy ≤ %.3g)", name, r.Kept, in, r.ErrorAfter, r.ErrorBefore, r.Cutoff*frob*frob)
			}
		}
	}
}

// At full rank with every eigenvalue kept, W_c + B A = W.
func TestFullRankRecoversW(t *testing.T) {
	for _, k := range backends() {
		for _, sh := range shapes {
			rng := newRNG(2)
			w := mattest.RandDense(rng, sh.out, sh.in)
			_, c := activations(rng, 4*sh.in, sh.in, 0.95)
			wc := rtn(t, w, 2)
			r, err := Compensate(k, w, wc, c, min(sh.out, sh.in))
			if err != nil {
				t.Fatal(err)
			}
			if r.Kept != sh.in {
				t.Fatalf("%s %v: kept %d of %d", k.Name(), sh, r.Kept, sh.in)
			}
			if d := relDiff(compensated(wc, r), w); d > tolExact {
				t.Errorf("%s %v: ‖W − (W_c + BA)‖/‖W‖ = %.3g at full rank", k.Name(), sh, d)
			}
		}
	}
}

// EoRA compensates a low-rank approximation as well: W_c = [W]_8, the plain
// truncated SVD.
func TestCompensateLowRank(t *testing.T) {
	const out, in, keep = 40, 32, 8
	for _, k := range backends() {
		rng := newRNG(4)
		w := mattest.RandDense(rng, out, in)
		_, c := activations(rng, 4*in, in, 0.85)
		pl, err := svd.Plain(k, w, keep)
		if err != nil {
			t.Fatal(err)
		}
		var wc mat.Dense
		wc.Mul(pl.B, pl.A)
		prev := math.Inf(1)
		for _, rank := range []int{1, 4, 8, 16, in - keep} {
			r, err := Compensate(k, w, &wc, c, rank)
			if err != nil {
				t.Fatal(err)
			}
			if r.ErrorAfter >= r.ErrorBefore || r.ErrorAfter > prev*(1+tolMonotone) {
				t.Errorf("%s rank %d: error %.6g after, %.6g before, %.6g at the previous rank", k.Name(), rank, r.ErrorAfter, r.ErrorBefore, prev)
			}
			prev = r.ErrorAfter
		}
		// The rank-(in − keep) correction of a rank-keep W_c restores W:
		// ΔW itself has rank in − keep.
		r, _ := Compensate(k, w, &wc, c, in-keep)
		if d := relDiff(compensated(&wc, r), w); d > tolExact {
			t.Errorf("%s: W_c + BA differs from W by %.3g", k.Name(), d)
		}
		// And EoRA on top of a whitened low-rank approximation still helps.
		wh, err := svd.Whiten(k, w, c, keep)
		if err != nil {
			t.Fatal(err)
		}
		var whc mat.Dense
		whc.Mul(wh.B, wh.A)
		r, err = Compensate(k, w, &whc, c, 4)
		if err != nil {
			t.Fatal(err)
		}
		if r.ErrorAfter >= r.ErrorBefore {
			t.Errorf("%s: on whitened SVD: error %.6g after, %.6g before", k.Name(), r.ErrorAfter, r.ErrorBefore)
		}
	}
}

// Fewer tokens than inputs, and an input that is never excited: eigenvalues
// at zero are dropped, the factors stay finite, A has no component along the
// dropped directions, and the error still does not grow.
func TestSingularGram(t *testing.T) {
	const out, in, tokens = 24, 40, 16
	for _, k := range backends() {
		rng := newRNG(6)
		w := mattest.RandDense(rng, out, in)
		x, _ := activations(rng, tokens, in, 0.9)
		for i := range tokens {
			x.Set(i, 3, 0)
		}
		c := gram(x)
		wc := rtn(t, w, 3)
		for _, rank := range []int{4, tokens, min(out, in)} {
			r, err := Compensate(k, w, wc, c, rank)
			if err != nil {
				t.Fatal(err)
			}
			name := fmt.Sprintf("%s rank %d", k.Name(), rank)
			if r.Kept != tokens || len(r.Sigma) != min(out, tokens) {
				t.Errorf("%s: kept %d, %d singular values; want %d", name, r.Kept, len(r.Sigma), tokens)
			}
			if !matx.FiniteDense(r.A) || !matx.FiniteDense(r.B) {
				t.Fatalf("%s: non-finite factors", name)
			}
			if r.ErrorAfter > r.ErrorBefore*(1+tolMonotone) {
				t.Errorf("%s: error %.6g after, %.6g before", name, r.ErrorAfter, r.ErrorBefore)
			}
			// Input 3 is dead: A's column 3 is (numerically) zero.
			var col float64
			for i := range rank {
				col = math.Max(col, math.Abs(r.A.At(i, 3)))
			}
			if col > 1e-8*mat.Norm(r.A, math.Inf(1)) {
				t.Errorf("%s: A reaches the dead input (%.3g)", name, col)
			}
			if rank > tokens {
				for i := tokens; i < rank; i++ {
					if mat.Norm(r.A.RowView(i), 2) != 0 || mat.Norm(r.B.ColView(i), 2) != 0 {
						t.Errorf("%s: component %d past the kept eigenspace is not zero", name, i)
					}
				}
				if relErr(r.ErrorAfter, 0) > 0 && r.ErrorAfter > 1e-9*r.ErrorBefore {
					t.Errorf("%s: error %.3g left with the whole kept eigenspace", name, r.ErrorAfter)
				}
			}
		}
	}
}

func TestBadInput(t *testing.T) {
	const out, in = 8, 6
	k := kernels.Default()
	rng := newRNG(8)
	w := mattest.RandDense(rng, out, in)
	_, c := activations(rng, 20, in, 0.9)
	wc := rtn(t, w, 4)

	nanW := mat.DenseCopyOf(w)
	nanW.Set(2, 2, math.NaN())
	infC := mat.NewSymDense(in, nil)
	infC.CopySym(c)
	infC.SetSym(0, 1, math.Inf(1))
	negC := mat.NewSymDense(in, nil)
	negC.CopySym(c)
	negC.SetSym(0, 0, -c.At(0, 0))
	cases := []struct {
		name   string
		w, wc  *mat.Dense
		c      *mat.SymDense
		target error
	}{
		{"NaN weight", nanW, wc, c, ErrNonFinite},
		{"NaN compressed weight", w, nanW, c, ErrNonFinite},
		{"Inf Gram", w, wc, infC, ErrNonFinite},
		{"zero Gram", w, wc, mat.NewSymDense(in, nil), ErrZeroGram},
		{"negative Gram", w, wc, negC, ErrNotPSD},
	}
	for _, tc := range cases {
		if _, err := Compensate(k, tc.w, tc.wc, tc.c, 2); !errors.Is(err, tc.target) {
			t.Errorf("%s: err %v, want %v", tc.name, err, tc.target)
		} else {
			t.Logf("%s: %v", tc.name, err)
		}
	}
	for _, tc := range []struct {
		name string
		f    func()
	}{
		{"rank 0", func() { _, _ = Compensate(k, w, wc, c, 0) }},
		{"rank too large", func() { _, _ = Compensate(k, w, wc, c, in+1) }},
		{"W_c shape", func() { _, _ = Compensate(k, w, mat.NewDense(out, in+1, nil), c, 1) }},
		{"C shape", func() { _, _ = Compensate(k, w, wc, mat.NewSymDense(in+1, nil), 1) }},
	} {
		func() {
			defer func() {
				err, ok := recover().(error)
				if !ok || !errors.Is(err, ErrShape) {
					t.Errorf("%s: panic %v, want ErrShape", tc.name, err)
				}
			}()
			tc.f()
		}()
	}
}
