package svd

import (
	"errors"
	"math"
	"math/rand/v2"
	"testing"

	"gonum.org/v1/gonum/mat"

	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/methods/internal/mattest"
	"github.com/rankzip/rankzip/methods/internal/matx"
)

// backends lists the backends every test runs on.
func backends() []kernels.Backend {
	return []kernels.Backend{kernels.Default(), kernels.Gonum{}}
}

func newRNG() *rand.Rand { return rand.New(rand.NewPCG(1, 1)) }

// activations returns n tokens (rows) of dimension in whose covariance has a
// decaying spectrum decay^j in a random basis, plus their Gram XᵀX.
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
	var x mat.Dense
	x.Mul(z, mattest.RandOrthogonal(rng, in))
	return &x, gram(&x)
}

func gram(x *mat.Dense) *mat.SymDense {
	_, in := x.Dims()
	c := mat.NewSymDense(in, nil)
	c.SymOuterK(1, x.T())
	return c
}

func product(r Result) *mat.Dense {
	var p mat.Dense
	p.Mul(r.B, r.A)
	return &p
}

// relDiff returns ‖a − b‖_F / ‖b‖_F.
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

func allFinite(t *testing.T, r Result) {
	t.Helper()
	if !matx.FiniteDense(r.B) || !matx.FiniteDense(r.A) {
		t.Fatalf("non-finite factors")
	}
	if math.IsNaN(r.PredictedError) || math.IsInf(r.PredictedError, 0) {
		t.Fatalf("PredictedError = %v", r.PredictedError)
	}
	for i, s := range r.Sigma {
		if math.IsNaN(s) || math.IsInf(s, 0) {
			t.Fatalf("Sigma[%d] = %v", i, s)
		}
	}
}

// meanAbs returns mean |x| per column.
func meanAbs(x *mat.Dense) []float64 {
	n, in := x.Dims()
	m := make([]float64, in)
	for i := range n {
		for j := range in {
			m[j] += math.Abs(x.At(i, j))
		}
	}
	for j := range m {
		m[j] /= float64(n)
	}
	return m
}

// mustPanic fails unless f panics with an error wrapping ErrShape.
func mustPanicShape(t *testing.T, name string, f func()) {
	t.Helper()
	defer func() {
		t.Helper()
		r := recover()
		err, ok := r.(error)
		if !ok || !errors.Is(err, ErrShape) {
			t.Errorf("%s: panic %v, want ErrShape", name, r)
		}
	}()
	f()
}
