package lord

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"gonum.org/v1/gonum/mat"

	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/methods/internal/mattest"
	"github.com/rankzip/rankzip/methods/svd"
)

const (
	// tolFullRank bounds ‖W − B A‖_F/‖W‖_F at full rank.
	tolFullRank = 1e-10
	// tolEqual bounds the relative gap between LORD's and Whiten's errors,
	// and between a predicted and a measured error.
	tolEqual = 1e-9
	// tolProduct bounds ‖B A − B′ A′‖_F/‖W‖_F between LORD and Whiten.
	tolProduct = 1e-7
)

// backends lists the backends every test runs on.
func backends() []kernels.Backend {
	return []kernels.Backend{kernels.Default(), kernels.Gonum{}}
}

var shapes = []struct{ out, in int }{{40, 30}, {30, 40}, {32, 32}}

func newRNG() *rand.Rand { return rand.New(rand.NewPCG(1, 1)) }

func randVec(rng *rand.Rand, n int, scale float64) []float64 {
	v := make([]float64, n)
	for i := range v {
		v[i] = scale * rng.NormFloat64()
	}
	return v
}

// activations returns tokens × in inputs with a decaying spectrum and a
// non-zero mean offset.
func activations(rng *rand.Rand, tokens, in int, decay, offset float64) *mat.Dense {
	x := mattest.RandDense(rng, tokens, in)
	mu := randVec(rng, in, offset)
	var q mat.QR
	q.Factorize(mattest.RandDense(rng, in, in))
	var rot mat.Dense
	q.QTo(&rot)
	raw := x.RawMatrix()
	for i := range tokens {
		s := 1.0
		for j := range in {
			raw.Data[i*raw.Stride+j] *= s
			s *= decay
		}
	}
	x.Mul(x, &rot)
	for i := range tokens {
		for j := range in {
			raw.Data[i*raw.Stride+j] += mu[j]
		}
	}
	return x
}

// stats returns C = XᵀX, the mean row and the token count.
func stats(x *mat.Dense) (*mat.SymDense, []float64, int) {
	n, in := x.Dims()
	c := mat.NewSymDense(in, nil)
	c.SymOuterK(1, x.T())
	mean := make([]float64, in)
	for j := range in {
		mean[j] = mat.Sum(x.ColView(j)) / float64(n)
	}
	return c, mean, n
}

func product(b, a *mat.Dense) *mat.Dense {
	var p mat.Dense
	p.Mul(b, a)
	return &p
}

func relDiff(a, b mat.Matrix) float64 {
	var d mat.Dense
	d.Sub(a, b)
	return mat.Norm(&d, 2) / mat.Norm(b, 2)
}

func relErr(got, want float64) float64 {
	return math.Abs(got-want) / math.Max(math.Abs(want), math.SmallestNonzeroFloat64)
}

// outputError returns Σₜ ‖(W xₜ + b) − (W′ xₜ + b′)‖² directly from the
// tokens; nil biases are zero.
func outputError(x, w *mat.Dense, b []float64, wp *mat.Dense, bp []float64) float64 {
	var y, yp mat.Dense
	y.Mul(x, w.T())
	yp.Mul(x, wp.T())
	n, out := y.Dims()
	var sum float64
	for t := range n {
		for i := range out {
			d := y.At(t, i) - yp.At(t, i)
			if b != nil {
				d += b[i]
			}
			if bp != nil {
				d -= bp[i]
			}
			sum += d * d
		}
	}
	return sum
}

func TestFullRankReproducesW(t *testing.T) {
	for _, k := range backends() {
		for _, sh := range shapes {
			rng := newRNG()
			w := mattest.RandDense(rng, sh.out, sh.in)
			bias := randVec(rng, sh.out, 1)
			c, mean, n := stats(activations(rng, 4*sh.in, sh.in, 0.9, 0.5))
			p := min(sh.out, sh.in)
			for _, b := range [][]float64{nil, bias} {
				r, err := Decompose(k, w, b, c, mean, n, p)
				if err != nil {
					t.Fatal(err)
				}
				if d := relDiff(product(r.B, r.A), w); d > tolFullRank {
					t.Errorf("%s %v bias %v: ‖W − BA‖/‖W‖ = %.3g", k.Name(), sh, b != nil, d)
				}
				if b == nil && r.Bias != nil {
					t.Errorf("%s %v: a bias-free layer got a bias", k.Name(), sh)
				}
				if b != nil {
					if d := relDiff(mat.NewVecDense(sh.out, r.Bias), mat.NewVecDense(sh.out, b)); d > tolFullRank {
						t.Errorf("%s %v: full-rank bias moved by %.3g", k.Name(), sh, d)
					}
				}
			}
		}
	}
}

// On a bias-free layer LORD and whitened SVD reach the same optimum: the same
// error, the same spectrum and the same product B A.
func TestEqualsWhitenBiasFree(t *testing.T) {
	for _, k := range backends() {
		for _, sh := range shapes {
			rng := newRNG()
			w := mattest.RandDense(rng, sh.out, sh.in)
			x := activations(rng, 4*sh.in, sh.in, 0.85, 0)
			c, _, _ := stats(x)
			p := min(sh.out, sh.in)
			prev := math.Inf(1)
			for _, rank := range []int{1, p / 4, p / 2, 3 * p / 4, p - 1} {
				name := fmt.Sprintf("%s %v rank %d", k.Name(), sh, rank)
				lr, err := Decompose(k, w, nil, c, nil, 0, rank)
				if err != nil {
					t.Fatal(err)
				}
				wr, err := svd.Whiten(k, w, c, rank)
				if err != nil {
					t.Fatal(err)
				}
				// LORD's errors are eigenvalues of W C Wᵀ, exact to about
				// max(out, in)·ε·λ₁ absolutely: the squared conditioning.
				slack := float64(max(sh.out, sh.in)) * 0x1p-52 * wr.Sigma[0] * wr.Sigma[0]
				if d := math.Abs(lr.PredictedError - wr.PredictedError); d > tolEqual*wr.PredictedError+slack {
					t.Errorf("%s: LORD %.12g, whiten %.12g (rel %.2g)", name, lr.PredictedError, wr.PredictedError, d/wr.PredictedError)
				}
				meas := svd.CalibError(w, product(lr.B, lr.A), c)
				if d := math.Abs(lr.PredictedError - meas); d > tolEqual*meas+slack {
					t.Errorf("%s: predicted %.12g, measured %.12g", name, lr.PredictedError, meas)
				}
				if e := relErr(outputError(x, w, nil, product(lr.B, lr.A), nil), meas); e > tolEqual {
					t.Errorf("%s: output error %g, calibration error %g", name, outputError(x, w, nil, product(lr.B, lr.A), nil), meas)
				}
				if d := relDiff(product(lr.B, lr.A), product(wr.B, wr.A)); d > tolProduct {
					t.Errorf("%s: products differ by %.3g", name, d)
				}
				for i, s := range wr.Sigma {
					if math.Abs(lr.Sigma[i]-s) > 1e-7*wr.Sigma[0] {
						t.Errorf("%s: Sigma[%d] %g, whiten %g", name, i, lr.Sigma[i], s)
						break
					}
				}
				if lr.PredictedError > prev {
					t.Errorf("%s: error grew with rank", name)
				}
				prev = lr.PredictedError
			}
		}
	}
}

// With a bias, the prediction is the real output error over the tokens, and
// it beats both the uncentred projection (b′ = U_r U_rᵀ b with U_r from the
// output second moment) and whitened SVD with the bias kept as is.
func TestBias(t *testing.T) {
	const out, in, tokens = 24, 20, 120
	for _, k := range backends() {
		rng := newRNG()
		w := mattest.RandDense(rng, out, in)
		bias := randVec(rng, out, 2)
		x := activations(rng, tokens, in, 0.85, 1.5)
		c, mean, n := stats(x)
		for _, rank := range []int{1, 4, 10, 19} {
			name := fmt.Sprintf("%s rank %d", k.Name(), rank)
			r, err := Decompose(k, w, bias, c, mean, n, rank)
			if err != nil {
				t.Fatal(err)
			}
			got := outputError(x, w, bias, product(r.B, r.A), r.Bias)
			if e := relErr(r.PredictedError, got); e > tolEqual {
				t.Errorf("%s: predicted %.12g, measured %.12g", name, r.PredictedError, got)
			}
			unc := uncentred(x, w, bias, rank)
			if got > unc*(1+tolEqual) {
				t.Errorf("%s: centred %g worse than uncentred %g", name, got, unc)
			}
			wr, err := svd.Whiten(k, w, c, rank)
			if err != nil {
				t.Fatal(err)
			}
			if we := outputError(x, w, bias, product(wr.B, wr.A), bias); got > we*(1+tolEqual) {
				t.Errorf("%s: LORD %g worse than whiten with the old bias %g", name, got, we)
			}
		}
	}
}

// uncentred returns the output error of y′ = U_r U_rᵀ y, U_r the top
// eigenvectors of Σ y yᵀ, computed from the outputs themselves.
func uncentred(x, w *mat.Dense, bias []float64, rank int) float64 {
	var y mat.Dense
	y.Mul(x, w.T())
	n, out := y.Dims()
	for t := range n {
		for i := range out {
			y.Set(t, i, y.At(t, i)+bias[i])
		}
	}
	var m mat.SymDense
	m.SymOuterK(1, y.T())
	var e mat.EigenSym
	e.Factorize(&m, true)
	var v mat.Dense
	e.VectorsTo(&v)
	u := v.Slice(0, out, out-rank, out)
	var proj, yp mat.Dense
	proj.Mul(u, u.T())
	yp.Mul(&y, &proj)
	yp.Sub(&y, &yp)
	return mat.Norm(&yp, 2) * mat.Norm(&yp, 2)
}

// Fewer tokens than input channels: finite results, zero error from the data
// rank on, W reproduced at full rank.
func TestRankDeficientGram(t *testing.T) {
	const out, in, tokens = 30, 24, 8
	for _, k := range backends() {
		rng := newRNG()
		w := mattest.RandDense(rng, out, in)
		x := activations(rng, tokens, in, 0.95, 0)
		c, _, _ := stats(x)
		total := svd.CalibError(w, mat.NewDense(out, in, nil), c)
		for _, rank := range []int{2, tokens, 16, in} {
			r, err := Decompose(k, w, nil, c, nil, 0, rank)
			if err != nil {
				t.Fatal(err)
			}
			p := product(r.B, r.A)
			for _, v := range p.RawMatrix().Data {
				if math.IsNaN(v) || math.IsInf(v, 0) {
					t.Fatalf("rank %d: non-finite product", rank)
				}
			}
			if r.DataRank != tokens {
				t.Errorf("rank %d: data rank %d, want %d", rank, r.DataRank, tokens)
			}
			meas := svd.CalibError(w, p, c)
			if math.Abs(meas-r.PredictedError) > tolEqual*total {
				t.Errorf("rank %d: predicted %g measured %g", rank, r.PredictedError, meas)
			}
			if rank >= tokens && meas > tolEqual*total {
				t.Errorf("rank %d: error %g past the data rank", rank, meas)
			}
			if rank == in {
				if d := relDiff(p, w); d > tolFullRank {
					t.Errorf("full rank: ‖W − BA‖/‖W‖ = %g", d)
				}
			}
		}
	}
}

func TestBadInput(t *testing.T) {
	k := backends()[0]
	rng := newRNG()
	w := mattest.RandDense(rng, 6, 4)
	c, mean, n := stats(activations(rng, 16, 4, 0.9, 1))
	bias := randVec(rng, 6, 1)
	nanW := mat.DenseCopyOf(w)
	nanW.Set(0, 0, math.NaN())
	for name, f := range map[string]func() error{
		"NaN W": func() error { _, err := Decompose(k, nanW, nil, c, nil, 0, 2); return err },
		"Inf bias": func() error {
			_, err := Decompose(k, w, []float64{1, 1, math.Inf(1), 1, 1, 1}, c, mean, n, 2)
			return err
		},
		"NaN mean": func() error { _, err := Decompose(k, w, bias, c, []float64{0, math.NaN(), 0, 0}, n, 2); return err },
	} {
		if err := f(); !errors.Is(err, ErrNonFinite) {
			t.Errorf("%s: error %v, want ErrNonFinite", name, err)
		}
	}
	if _, err := Decompose(k, w, nil, mat.NewSymDense(4, nil), nil, 0, 2); !errors.Is(err, ErrZeroGram) {
		t.Errorf("zero C: %v", err)
	}
	if _, err := Decompose(k, w, bias, c, mean, 0, 2); err == nil {
		t.Errorf("bias with n = 0: no error")
	}
	for name, f := range map[string]func(){
		"C size":      func() { _, _ = Decompose(k, w, nil, mat.NewSymDense(3, nil), nil, 0, 2) },
		"bias length": func() { _, _ = Decompose(k, w, []float64{1}, c, mean, n, 2) },
		"mean length": func() { _, _ = Decompose(k, w, bias, c, nil, n, 2) },
		"rank":        func() { _, _ = Decompose(k, w, nil, c, nil, 0, 5) },
	} {
		func() {
			defer func() {
				if err, ok := recover().(error); !ok || !errors.Is(err, ErrShape) {
					t.Errorf("%s: want a panic wrapping ErrShape", name)
				}
			}()
			f()
		}()
	}
}

func TestZeroWeight(t *testing.T) {
	for _, k := range backends() {
		rng := newRNG()
		c, mean, n := stats(activations(rng, 16, 4, 0.9, 1))
		r, err := Decompose(k, mat.NewDense(6, 4, nil), make([]float64, 6), c, mean, n, 3)
		if err != nil {
			t.Fatal(err)
		}
		if mat.Norm(product(r.B, r.A), 2) != 0 || r.PredictedError != 0 || r.DataRank != 0 {
			t.Errorf("%s: ‖BA‖ %g, predicted %g, data rank %d", k.Name(), mat.Norm(product(r.B, r.A), 2), r.PredictedError, r.DataRank)
		}
	}
}
