package quant

import (
	"errors"
	"math"
	"math/rand/v2"
	"testing"

	"gonum.org/v1/gonum/mat"

	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/methods/internal/mattest"
)

// backends lists the backends built in (OpenBLAS and gonum with cgo, gonum
// without).
func backends() []kernels.Backend { return kernels.Available() }

func newRNG(seed uint64) *rand.Rand { return rand.New(rand.NewPCG(seed, 1)) }

// activations returns n tokens (rows) of dimension in, correlated (a random
// rotation of a spectrum decaying from 1 to 10⁻¹) with per-channel scales
// spread over a factor 10 and a few loud channels, as LLM inputs are, plus
// their Gram XᵀX.
func activations(rng *rand.Rand, n, in int) (*mat.Dense, *mat.SymDense) {
	z := mattest.RandDense(rng, n, in)
	raw := z.RawMatrix()
	for i := range n {
		for j := range in {
			raw.Data[i*raw.Stride+j] *= math.Pow(0.1, float64(j)/float64(in))
		}
	}
	var x mat.Dense
	x.Mul(z, mattest.RandOrthogonal(rng, in))
	xr := x.RawMatrix()
	scale := make([]float64, in)
	for j := range scale {
		scale[j] = math.Pow(10, rng.Float64())
		if rng.IntN(16) == 0 {
			scale[j] *= 10
		}
	}
	for i := range n {
		for j := range in {
			xr.Data[i*xr.Stride+j] *= scale[j]
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

// directCalibError is tr((W − W′) C (W − W′)ᵀ) in plain gonum.
func directCalibError(w, wq mat.Matrix, c *mat.SymDense) float64 {
	var e, ec mat.Dense
	e.Sub(w, wq)
	ec.Mul(&e, c)
	var s float64
	r, cc := e.Dims()
	for i := range r {
		for j := range cc {
			s += e.At(i, j) * ec.At(i, j)
		}
	}
	return s
}

func frob2(a, b mat.Matrix) float64 {
	var d mat.Dense
	d.Sub(a, b)
	n := mat.Norm(&d, 2)
	return n * n
}

func relErr(got, want float64) float64 {
	if got == want {
		return 0
	}
	return math.Abs(got-want) / math.Max(math.Abs(want), math.SmallestNonzeroFloat64)
}

// checkResult verifies the invariants every Result must hold: codes and zero
// points in range, float16 scales, GIdx = j / GroupSize, Dequant = s(q − z),
// and, when w is given, |w − ŵ| ≤ s/2 wherever the weight lies in the range
// the scale was fitted to (RTN: everywhere).
func checkResult(t *testing.T, name string, r Result, w *mat.Dense) {
	t.Helper()
	out, in := r.Dequant.Dims()
	maxq := 1<<r.Bits - 1
	groups := r.Groups()
	if groups*r.GroupSize != in || len(r.GIdx) != in || len(r.Q) != out*in || len(r.Zeros) != groups*out {
		t.Fatalf("%s: shapes: %d groups of %d, %d gidx, %d codes, %d zeros for %d×%d", name, groups, r.GroupSize, len(r.GIdx), len(r.Q), len(r.Zeros), out, in)
	}
	for j, g := range r.GIdx {
		if int(g) != j/r.GroupSize {
			t.Fatalf("%s: GIdx[%d] = %d, want %d", name, j, g, j/r.GroupSize)
		}
	}
	for g := range groups {
		for i := range out {
			s, z := r.Scales.At(g, i), int(r.Zeros[g*out+i])
			if h, err := halfCeil(s); err != nil || h != s || !(s > 0) {
				t.Fatalf("%s: scale[%d][%d] = %v is not a positive float16", name, g, i, s)
			}
			if z < 1 || z > maxq || (r.Sym && z != 1<<(r.Bits-1)) {
				t.Fatalf("%s: zero[%d][%d] = %d (bits %d, sym %v)", name, g, i, z, r.Bits, r.Sym)
			}
		}
	}
	for i := range out {
		for j := range in {
			q := int(r.Q[i*in+j])
			if q > maxq {
				t.Fatalf("%s: code[%d][%d] = %d > %d", name, i, j, q, maxq)
			}
			g := int(r.GIdx[j])
			s, z := r.Scales.At(g, i), float64(r.Zeros[g*out+i])
			if d := r.Dequant.At(i, j); d != s*(float64(q)-z) {
				t.Fatalf("%s: Dequant[%d][%d] = %v, s(q − z) = %v", name, i, j, d, s*(float64(q)-z))
			}
			if w != nil {
				if e := math.Abs(w.At(i, j) - r.Dequant.At(i, j)); e > s/2*(1+tolHalfStep) {
					t.Fatalf("%s: |w − ŵ| at [%d][%d] = %v > s/2 = %v", name, i, j, e, s/2)
				}
			}
		}
	}
}

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
