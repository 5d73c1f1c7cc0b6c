// Package kerneltest is the conformance suite every kernels.Backend passes,
// in the pattern of gonum's lapack/testlapack: one Run, called by each
// backend's tests with its own tolerance, so backends cannot drift apart.
//
// Every check is a relative Frobenius error against an answer computed here
// in float64 with naive loops, or against a property (L Lᵀ = A, VᵀV = I).
// Products are measured against the BLAS error bound |α||A||B| + |β||C|, which
// stays meaningful under cancellation and graded scaling. Decompositions are
// measured by backward error (‖A V − V diag(w)‖/‖A‖), which LAPACK keeps near
// n·ε whatever the condition number, so ill-conditioned inputs need no
// looser tolerance.
//
// Inputs come from rand.New(rand.NewPCG(1, 1)), so failures reproduce. They
// sweep sizes 0, 1, 2, 3, 17, 128 and 300 (and rectangular shapes) over
// random, identity, rank-deficient and ill-conditioned matrices; zero inputs
// appear only in their own cases. Padding around every operand holds NaN, so
// a backend that reads outside a matrix, or reads the unused triangle of a
// symmetric one, fails loudly.
package kerneltest

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"gonum.org/v1/gonum/mat"

	"github.com/rankzip/rankzip/kernels"
)

// Float32Scale is how much larger than tol the float32 (Sgemm) errors may be:
// the ratio of the unit roundoffs of float32 and float64, 2⁻²⁴ / 2⁻⁵³.
const Float32Scale = 1 << 29

// sizes are the matrix orders every operation is swept over.
var sizes = []int{0, 1, 2, 3, 17, 128, 300}

// Input kinds. Zero is not among them; each operation has its own zero case.
const (
	random   = "random"
	identity = "identity"
	rankDef  = "rankdef"
	illCond  = "illcond"
)

var kinds = []string{random, identity, rankDef, illCond}

// illCondRange is the ratio of the largest to the smallest singular value
// (or eigenvalue) of the ill-conditioned inputs: far past float32, well
// inside float64, so a factorisation must still succeed.
const illCondRange = 1e10

// Run checks every operation of b. tol bounds each relative error of a
// float64 result; Sgemm's are allowed tol·Float32Scale. The CPU backends
// pass 1e-13 (their worst errors are near 7e-15 and, for Sgemm, 3e-7).
func Run(t *testing.T, b kernels.Backend, tol float64) {
	t.Run("Sgemm", func(t *testing.T) { testSgemm(t, b, tol*Float32Scale) })
	t.Run("SgemmEdges", func(t *testing.T) { testSgemmEdges(t, b) })
	t.Run("Dgemm", func(t *testing.T) { testDgemm(t, b, tol) })
	t.Run("DgemmEdges", func(t *testing.T) { testDgemmEdges(t, b) })
	t.Run("GramAdd", func(t *testing.T) { testGramAdd(t, b, tol) })
	t.Run("Cholesky", func(t *testing.T) { testCholesky(t, b, tol) })
	t.Run("Eigh", func(t *testing.T) { testEigh(t, b, tol) })
	t.Run("SVD", func(t *testing.T) { testSVD(t, b, tol) })
	t.Run("NonFinite", func(t *testing.T) { testNonFinite(t, b) })
	t.Run("Panics", func(t *testing.T) { testPanics(t, b) })
}

func newRand() *rand.Rand { return rand.New(rand.NewPCG(1, 1)) }

// ---------------------------------------------------------------------------
// Dense float64 helpers: naive, obviously right, independent of any backend.

type dense struct {
	r, c int
	d    []float64
}

func zeros(r, c int) dense { return dense{r, c, make([]float64, r*c)} }

func (a dense) at(i, j int) float64 { return a.d[i*a.c+j] }

func (a dense) t() dense {
	out := zeros(a.c, a.r)
	for i := range a.r {
		for j := range a.c {
			out.d[j*a.r+i] = a.d[i*a.c+j]
		}
	}
	return out
}

func (a dense) abs() dense {
	out := zeros(a.r, a.c)
	for i, v := range a.d {
		out.d[i] = math.Abs(v)
	}
	return out
}

// mul returns a·b with the plain triple loop (i, k, j order for locality).
func mul(a, b dense) dense {
	if a.c != b.r {
		panic(fmt.Sprintf("kerneltest: mul %d×%d by %d×%d", a.r, a.c, b.r, b.c))
	}
	out := zeros(a.r, b.c)
	for i := range a.r {
		row := out.d[i*b.c : (i+1)*b.c]
		for k := range a.c {
			v := a.d[i*a.c+k]
			if v == 0 {
				continue
			}
			for j, w := range b.d[k*b.c : (k+1)*b.c] {
				row[j] += v * w
			}
		}
	}
	return out
}

// axpby returns x·a + y·b elementwise.
func axpby(x float64, a dense, y float64, b dense) dense {
	out := zeros(a.r, a.c)
	for i := range out.d {
		out.d[i] = x*a.d[i] + y*b.d[i]
	}
	return out
}

func eye(n int) dense {
	out := zeros(n, n)
	for i := range n {
		out.d[i*n+i] = 1
	}
	return out
}

func normF(s []float64) float64 {
	var sum float64
	for _, v := range s {
		sum += v * v
	}
	return math.Sqrt(sum)
}

// relErr returns ‖got − want‖_F / scale, or the absolute error if scale is 0.
// NaN anywhere makes it NaN, which fails every `err <= tol` check.
func relErr(got, want []float64, scale float64) float64 {
	var sum float64
	for i := range got {
		d := got[i] - want[i]
		sum += d * d
	}
	if scale == 0 {
		return math.Sqrt(sum)
	}
	return math.Sqrt(sum) / scale
}

func fromMat(m mat.Matrix) dense {
	if m == nil {
		return dense{}
	}
	r, c := m.Dims()
	out := zeros(r, c)
	for i := range r {
		for j := range c {
			out.d[i*c+j] = m.At(i, j)
		}
	}
	return out
}

// orthonormal returns an r×c matrix with orthonormal columns (r ≥ c).
func orthonormal(rng *rand.Rand, r, c int) dense {
	if r == 0 || c == 0 {
		return zeros(r, c) // gonum has no zero-sized matrices
	}
	g := mat.NewDense(r, r, gauss(rng, r*r))
	var qr mat.QR
	qr.Factorize(g)
	var q mat.Dense
	qr.QTo(&q)
	return fromMat(q.Slice(0, r, 0, c))
}

func gauss(rng *rand.Rand, n int) []float64 {
	out := make([]float64, n)
	for i := range out {
		out[i] = rng.NormFloat64()
	}
	return out
}

// general returns an r×c input of the given kind and its singular values in
// descending order where they are known (nil for random). rankdef has rank
// min(r, c)/2; illcond has singular values spread geometrically over
// illCondRange.
func general(rng *rand.Rand, kind string, r, c int) (dense, []float64) {
	p := min(r, c)
	switch kind {
	case random:
		return dense{r, c, gauss(rng, r*c)}, nil
	case identity:
		a := zeros(r, c)
		s := make([]float64, p)
		for i := range p {
			a.d[i*c+i] = 1
			s[i] = 1
		}
		return a, s
	case rankDef:
		q := p / 2
		a := mul(dense{r, q, gauss(rng, r*q)}, dense{q, c, gauss(rng, q*c)})
		return a, nil
	case illCond:
		s := make([]float64, p)
		for i := range p {
			s[i] = math.Pow(illCondRange, -float64(i)/float64(max(1, p-1)))
		}
		return withSingular(rng, r, c, s), s
	}
	panic("kerneltest: unknown kind " + kind)
}

// withSingular returns U diag(s) Vᵀ for random orthonormal U (r×p), V (c×p).
func withSingular(rng *rand.Rand, r, c int, s []float64) dense {
	p := len(s)
	u := orthonormal(rng, r, p)
	for i := range r {
		for j := range p {
			u.d[i*p+j] *= s[j]
		}
	}
	return mul(u, orthonormal(rng, c, p).t())
}

// symmetric returns an n×n symmetric input of the given kind and, where
// known, its eigenvalues in ascending order. random is indefinite; rankdef is
// G Gᵀ with G n×(n/2), so positive semidefinite with n − n/2 zero
// eigenvalues; illcond has eigenvalues of both signs whose magnitudes spread
// over illCondRange.
func symmetric(rng *rand.Rand, kind string, n int) (dense, []float64) {
	switch kind {
	case random:
		g := dense{n, n, gauss(rng, n*n)}
		return axpby(0.5, g, 0.5, g.t()), nil
	case identity:
		w := make([]float64, n)
		for i := range w {
			w[i] = 1
		}
		return eye(n), w
	case rankDef:
		g := dense{n, n / 2, gauss(rng, n*(n/2))}
		return symmetrize(mul(g, g.t())), nil
	case illCond:
		w := make([]float64, n)
		for i := range w {
			w[i] = math.Pow(illCondRange, -float64(i)/float64(max(1, n-1)))
			if i%2 == 1 {
				w[i] = -w[i]
			}
		}
		return withEigen(rng, w), sorted(w)
	}
	panic("kerneltest: unknown kind " + kind)
}

// withEigen returns Q diag(w) Qᵀ for a random orthogonal Q.
func withEigen(rng *rand.Rand, w []float64) dense {
	n := len(w)
	q := orthonormal(rng, n, n)
	qw := zeros(n, n)
	for i := range n {
		for j := range n {
			qw.d[i*n+j] = q.d[i*n+j] * w[j]
		}
	}
	return symmetrize(mul(qw, q.t()))
}

// symmetrize copies the upper triangle over the lower, removing rounding
// asymmetry so that "the matrix" is unambiguous.
func symmetrize(a dense) dense {
	for i := range a.r {
		for j := range i {
			a.d[i*a.c+j] = a.d[j*a.c+i]
		}
	}
	return a
}

func sorted(s []float64) []float64 {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

// ---------------------------------------------------------------------------
// Operand storage with NaN padding.

// padding added to every stored operand's row stride.
const (
	padCols = 3
	padRows = 1
)

// sentinel fills the padding of an output: a value no correct write produces.
const sentinel = -7.25e19

// stored32 lays out the r×c a as float32 with row stride c+padCols, NaN in
// the gaps, and only as long as BLAS requires ((r−1)·ld + c).
func stored32(a dense, fill float32) ([]float32, int) {
	ld := a.c + padCols
	if a.r == 0 || a.c == 0 {
		return nil, ld
	}
	s := make([]float32, (a.r-1)*ld+a.c)
	for i := range s {
		s[i] = fill
	}
	for i := range a.r {
		for j := range a.c {
			s[i*ld+j] = float32(a.at(i, j))
		}
	}
	return s, ld
}

// round32 rounds a's entries to float32, so references use the exact inputs.
func round32(a dense) dense {
	for i, v := range a.d {
		a.d[i] = float64(float32(v))
	}
	return a
}

// view64 returns a as a *mat.Dense view into a larger, padded parent, and
// the parent, whose padding holds fill.
func view64(a dense, fill float64) (*mat.Dense, *mat.Dense) {
	if a.r == 0 || a.c == 0 {
		return &mat.Dense{}, nil
	}
	parent := mat.NewDense(a.r+padRows, a.c+padCols, nil)
	raw := parent.RawMatrix()
	for i := range raw.Data {
		raw.Data[i] = fill
	}
	for i := range a.r {
		for j := range a.c {
			parent.Set(i, j, a.at(i, j))
		}
	}
	return parent.Slice(0, a.r, 0, a.c).(*mat.Dense), parent
}

// symView64 returns the symmetric a as a *mat.SymDense view into a larger
// parent whose padding and raw lower triangle hold NaN: a backend must read
// the upper triangle only.
func symView64(a dense) (*mat.SymDense, *mat.SymDense) {
	n := a.r
	if n == 0 {
		return &mat.SymDense{}, nil
	}
	parent := mat.NewSymDense(n+padRows, nil)
	raw := parent.RawSymmetric()
	for i := range raw.Data {
		raw.Data[i] = math.NaN()
	}
	for i := range n {
		for j := i; j < n; j++ {
			raw.Data[i*raw.Stride+j] = a.at(i, j)
		}
	}
	return parent.SliceSym(0, n).(*mat.SymDense), parent
}

// snapshot returns the bits of a parent's storage, to prove it unchanged.
func snapshot(data []float64) []uint64 {
	out := make([]uint64, len(data))
	for i, v := range data {
		out[i] = math.Float64bits(v)
	}
	return out
}

func sameBits(data []float64, snap []uint64) bool {
	for i, v := range data {
		if math.Float64bits(v) != snap[i] {
			return false
		}
	}
	return true
}

// ---------------------------------------------------------------------------
// Products.

type gemmShape struct{ m, n, k int }

func gemmShapes() []gemmShape {
	var out []gemmShape
	for _, s := range sizes {
		out = append(out, gemmShape{s, s, s})
	}
	return append(out,
		gemmShape{1, 17, 3}, gemmShape{17, 3, 128}, gemmShape{3, 300, 17},
		gemmShape{300, 17, 2}, gemmShape{128, 1, 300}, gemmShape{2, 128, 1})
}

// gemmCase is one product's inputs in float64 plus its reference and bound.
type gemmCase struct {
	opA, opB, c0 dense
	alpha, beta  float64
}

// Non-trivial scalars, exact in float32.
const (
	gemmAlpha = 0.75
	gemmBeta  = -1.25
)

func newGemmCase(rng *rand.Rand, kind string, sh gemmShape, to32 bool) gemmCase {
	a, _ := general(rng, kind, sh.m, sh.k)
	b, _ := general(rng, random, sh.k, sh.n)
	c := dense{sh.m, sh.n, gauss(rng, sh.m*sh.n)}
	if to32 {
		a, b, c = round32(a), round32(b), round32(c)
	}
	return gemmCase{a, b, c, gemmAlpha, gemmBeta}
}

// want returns α·op(A)·op(B) + β·C and the error bound |α||op(A)||op(B)| + |β||C|.
func (g gemmCase) want() (want, bound dense) {
	want = axpby(g.alpha, mul(g.opA, g.opB), g.beta, g.c0)
	bound = axpby(math.Abs(g.alpha), mul(g.opA.abs(), g.opB.abs()), math.Abs(g.beta), g.c0.abs())
	return want, bound
}

func transName(tA, tB bool) string {
	name := [2]string{"N", "T"}
	return name[b2i(tA)] + name[b2i(tB)]
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

func testSgemm(t *testing.T, b kernels.Backend, tol float64) {
	rng := newRand()
	for _, sh := range gemmShapes() {
		for _, tA := range []bool{false, true} {
			for _, tB := range []bool{false, true} {
				for _, kind := range kinds {
					if kind == rankDef && min(sh.m, sh.k) < 2 {
						continue // rank-deficient would be all zero
					}
					g := newGemmCase(rng, kind, sh, true)
					sa, sb := g.opA, g.opB
					if tA {
						sa = sa.t()
					}
					if tB {
						sb = sb.t()
					}
					nan := float32(math.NaN())
					a, lda := stored32(sa, nan)
					bb, ldb := stored32(sb, nan)
					c, ldc := stored32(g.c0, sentinel)

					b.Sgemm(tA, tB, sh.m, sh.n, sh.k, float32(g.alpha), a, lda, bb, ldb, float32(g.beta), c, ldc)

					want, bound := g.want()
					got := zeros(sh.m, sh.n)
					for i := range sh.m {
						for j := range sh.n {
							got.d[i*sh.n+j] = float64(c[i*ldc+j])
						}
					}
					name := fmt.Sprintf("sgemm %s m=%d n=%d k=%d %s", transName(tA, tB), sh.m, sh.n, sh.k, kind)
					if err := relErr(got.d, want.d, normF(bound.d)); !(err <= tol) {
						t.Errorf("%s: relative error %.3g > %.3g", name, err, tol)
					}
					checkPad32(t, name, c, sh.m, sh.n, ldc)
				}
			}
		}
	}
}

// checkPad32 reports a write into the padding of a stored output.
func checkPad32(t *testing.T, name string, c []float32, m, n, ldc int) {
	t.Helper()
	for i := range max(0, m-1) {
		for j := n; j < ldc; j++ {
			if c[i*ldc+j] != sentinel {
				t.Errorf("%s: wrote padding C[%d][%d] = %g", name, i, j, c[i*ldc+j])
				return
			}
		}
	}
}

// testSgemmEdges checks the BLAS rules on scalars and empty dimensions.
func testSgemmEdges(t *testing.T, b kernels.Backend) {
	rng := newRand()
	const m, n, k = 17, 5, 9
	nan := float32(math.NaN())
	for _, tA := range []bool{false, true} {
		for _, tB := range []bool{false, true} {
			name := transName(tA, tB)
			g := newGemmCase(rng, random, gemmShape{m, n, k}, true)
			sa, sb := g.opA, g.opB
			if tA {
				sa = sa.t()
			}
			if tB {
				sb = sb.t()
			}
			a, lda := stored32(sa, nan)
			bb, ldb := stored32(sb, nan)

			// beta = 0 must overwrite C, never read it: a reused buffer may hold NaN.
			c, ldc := stored32(g.c0, nan)
			b.Sgemm(tA, tB, m, n, k, 1, a, lda, bb, ldb, 0, c, ldc)
			want := mul(g.opA, g.opB)
			for i := range m {
				for j := range n {
					got, w := float64(c[i*ldc+j]), want.at(i, j)
					if !(math.Abs(got-w) <= 1e-4*(1+math.Abs(w))) {
						t.Fatalf("sgemm %s beta=0 over NaN: C[%d][%d] = %g, want %g", name, i, j, got, w)
					}
				}
			}

			// alpha = 0 must not read A or B.
			for i := range a {
				a[i] = nan
			}
			for i := range bb {
				bb[i] = nan
			}
			c, ldc = stored32(g.c0, sentinel)
			b.Sgemm(tA, tB, m, n, k, 0, a, lda, bb, ldb, 2, c, ldc)
			for i := range m {
				for j := range n {
					if got, w := c[i*ldc+j], 2*float32(g.c0.at(i, j)); got != w {
						t.Fatalf("sgemm %s alpha=0: C[%d][%d] = %g, want %g", name, i, j, got, w)
					}
				}
			}
		}
	}

	// k = 0: C = beta·C, and beta = 0 clears NaN.
	c0 := round32(dense{m, n, gauss(rng, m*n)})
	c, ldc := stored32(c0, sentinel)
	b.Sgemm(false, false, m, n, 0, 1, nil, 1, nil, n, gemmBeta, c, ldc)
	for i := range m {
		for j := range n {
			if got, w := c[i*ldc+j], float32(gemmBeta)*float32(c0.at(i, j)); got != w {
				t.Fatalf("sgemm k=0: C[%d][%d] = %g, want %g", i, j, got, w)
			}
		}
	}
	c, ldc = stored32(c0, nan)
	b.Sgemm(false, false, m, n, 0, 1, nil, 1, nil, n, 0, c, ldc)
	for i := range m {
		for j := range n {
			if c[i*ldc+j] != 0 {
				t.Fatalf("sgemm k=0 beta=0: C[%d][%d] = %g, want 0", i, j, c[i*ldc+j])
			}
		}
	}

	// m = 0 or n = 0: nothing to do, nothing to touch.
	b.Sgemm(false, false, 0, n, k, 1, nil, k, make([]float32, k*n), n, 1, nil, n)
	b.Sgemm(false, false, m, 0, k, 1, make([]float32, m*k), k, nil, 1, 1, nil, 1)
}

func testDgemm(t *testing.T, b kernels.Backend, tol float64) {
	rng := newRand()
	for _, sh := range gemmShapes() {
		if (sh.m == 0 || sh.n == 0 || sh.k == 0) && sh != (gemmShape{}) {
			continue // gonum has no m×0 matrices, only the empty 0×0 one
		}
		for _, tA := range []bool{false, true} {
			for _, tB := range []bool{false, true} {
				for _, kind := range kinds {
					if kind == rankDef && min(sh.m, sh.k) < 2 {
						continue
					}
					g := newGemmCase(rng, kind, sh, false)
					sa, sb := g.opA, g.opB
					if tA {
						sa = sa.t()
					}
					if tB {
						sb = sb.t()
					}
					a, pa := view64(sa, math.NaN())
					bm, pb := view64(sb, math.NaN())
					c, pc := view64(g.c0, sentinel)
					var snapA, snapB []uint64
					if pa != nil {
						snapA, snapB = snapshot(pa.RawMatrix().Data), snapshot(pb.RawMatrix().Data)
					}

					b.Dgemm(tA, tB, g.alpha, a, bm, g.beta, c)

					name := fmt.Sprintf("dgemm %s m=%d n=%d k=%d %s", transName(tA, tB), sh.m, sh.n, sh.k, kind)
					want, bound := g.want()
					if err := relErr(fromMat(c).d, want.d, normF(bound.d)); !(err <= tol) {
						t.Errorf("%s: relative error %.3g > %.3g", name, err, tol)
					}
					if pa != nil {
						if !sameBits(pa.RawMatrix().Data, snapA) || !sameBits(pb.RawMatrix().Data, snapB) {
							t.Errorf("%s: modified A or B", name)
						}
						checkPad64(t, name, pc, sh.m, sh.n)
					}
				}
			}
		}
	}
}

// checkPad64 reports a write outside the m×n top-left view of parent.
func checkPad64(t *testing.T, name string, parent *mat.Dense, m, n int) {
	t.Helper()
	r, c := parent.Dims()
	for i := range r {
		for j := range c {
			if (i >= m || j >= n) && parent.At(i, j) != sentinel {
				t.Errorf("%s: wrote outside C at [%d][%d]", name, i, j)
				return
			}
		}
	}
}

func testDgemmEdges(t *testing.T, b kernels.Backend) {
	rng := newRand()
	const m, n, k = 17, 5, 9
	g := newGemmCase(rng, random, gemmShape{m, n, k}, false)
	a, _ := view64(g.opA, math.NaN())
	bm, _ := view64(g.opB, math.NaN())

	c, _ := view64(g.c0, math.NaN())
	b.Dgemm(false, false, 1, a, bm, 0, c)
	want := mul(g.opA, g.opB)
	if err := relErr(fromMat(c).d, want.d, normF(want.d)); !(err <= 1e-12) {
		t.Errorf("dgemm beta=0 over NaN: relative error %.3g", err)
	}

	nanA := mat.NewDense(m, k, nil)
	for i := range m {
		for j := range k {
			nanA.Set(i, j, math.NaN())
		}
	}
	c, _ = view64(g.c0, sentinel)
	b.Dgemm(false, false, 0, nanA, bm, 2, c)
	if err := relErr(fromMat(c).d, axpby(2, g.c0, 0, g.c0).d, 0); err != 0 {
		t.Errorf("dgemm alpha=0: error %.3g, want exactly 2·C", err)
	}
}

// ---------------------------------------------------------------------------
// GramAdd.

func testGramAdd(t *testing.T, b kernels.Backend, tol float64) {
	rng := newRand()
	type shape struct{ rows, cols int }
	var shapes []shape
	for _, s := range sizes {
		shapes = append(shapes, shape{s, s})
	}
	// Fewer rows than columns; past one and two row chunks of any size
	// up to 1024; no rows; no columns.
	shapes = append(shapes, shape{3, 128}, shape{1300, 17}, shape{2100, 5}, shape{0, 17}, shape{17, 0})
	for _, sh := range shapes {
		for _, kind := range append(slices.Clone(kinds), "zero") {
			if kind == rankDef && min(sh.rows, sh.cols) < 2 {
				continue
			}
			var x dense
			switch kind {
			case "zero":
				x = zeros(sh.rows, sh.cols)
			case illCond:
				// Graded columns: the Gram's entries span 16 orders of magnitude.
				x = dense{sh.rows, sh.cols, gauss(rng, sh.rows*sh.cols)}
				for j := range sh.cols {
					s := math.Pow(10, 8*float64(j)/float64(max(1, sh.cols-1))-4)
					for i := range sh.rows {
						x.d[i*sh.cols+j] *= s
					}
				}
			default:
				x, _ = general(rng, kind, sh.rows, sh.cols)
			}
			x = round32(x)
			x32 := make([]float32, len(x.d))
			for i, v := range x.d {
				x32[i] = float32(v)
			}

			c0, _ := symmetric(rng, random, sh.cols)
			c, parent := symView64(c0)
			var before []float64
			if parent != nil {
				before = slices.Clone(parent.RawSymmetric().Data)
			}

			b.GramAdd(c, x32, sh.rows, sh.cols)
			b.GramAdd(c, x32, sh.rows, sh.cols)

			name := fmt.Sprintf("gram %d×%d %s", sh.rows, sh.cols, kind)
			xtx := mul(x.t(), x)
			want := axpby(1, c0, 2, xtx)
			bound := axpby(1, c0.abs(), 2, mul(x.abs().t(), x.abs()))
			if err := relErr(fromMat(c).d, want.d, normF(bound.d)); !(err <= tol) {
				t.Errorf("%s: relative error %.3g > %.3g", name, err, tol)
			}
			if parent != nil {
				raw := parent.RawSymmetric()
				for i := range raw.N {
					for j := range raw.N {
						inView := i < sh.cols && j >= i && j < sh.cols
						v, w := raw.Data[i*raw.Stride+j], before[i*raw.Stride+j]
						if !inView && math.Float64bits(v) != math.Float64bits(w) {
							t.Errorf("%s: wrote outside C's upper triangle at [%d][%d]", name, i, j)
						}
					}
				}
			}
		}
	}
}

// ---------------------------------------------------------------------------
// Decompositions.

// symInput builds the backend's input for the symmetric a and snapshots its
// parent, to check that the decomposition leaves it alone.
func symInput(a dense) (*mat.SymDense, func() bool) {
	s, parent := symView64(a)
	if parent == nil {
		return s, func() bool { return true }
	}
	snap := snapshot(parent.RawSymmetric().Data)
	return s, func() bool { return sameBits(parent.RawSymmetric().Data, snap) }
}

func testCholesky(t *testing.T, b kernels.Backend, tol float64) {
	rng := newRand()
	for _, n := range sizes {
		for _, kind := range []string{random, identity, rankDef, illCond, "zero", "indefinite"} {
			var a dense
			wantErr := false
			switch kind {
			case random: // G Gᵀ/n + I/10: comfortably positive definite
				g := dense{n, n, gauss(rng, n*n)}
				a = symmetrize(axpby(1/float64(max(1, n)), mul(g, g.t()), 0.1, eye(n)))
			case identity:
				a = eye(n)
			case rankDef: // semidefinite: either outcome is right
				if n < 2 {
					continue
				}
				a, _ = symmetric(rng, rankDef, n)
			case illCond:
				w := make([]float64, n)
				for i := range w {
					w[i] = math.Pow(illCondRange, -float64(i)/float64(max(1, n-1)))
				}
				a = withEigen(rng, w)
			case "zero":
				a, wantErr = zeros(n, n), n > 0
			case "indefinite":
				if n == 0 {
					continue
				}
				w := make([]float64, n)
				for i := range w {
					w[i] = 1 + float64(i)
				}
				w[n/2] = -1
				a, wantErr = withEigen(rng, w), true
			}
			name := fmt.Sprintf("cholesky n=%d %s", n, kind)
			in, unchanged := symInput(a)
			l, err := b.Cholesky(in)
			if !unchanged() {
				t.Errorf("%s: modified A", name)
			}
			switch {
			case err != nil && errors.Is(err, kernels.ErrNotPSD) && (wantErr || kind == rankDef):
				continue
			case err != nil:
				t.Errorf("%s: %v", name, err)
				continue
			case wantErr:
				t.Errorf("%s: no error, want ErrNotPSD", name)
				continue
			}
			if r, _ := l.Dims(); r != n {
				t.Errorf("%s: L is %d×%d", name, r, r)
				continue
			}
			if n == 0 {
				continue
			}
			if _, tri := l.Triangle(); tri != mat.Lower {
				t.Errorf("%s: L is not lower triangular", name)
			}
			ld := fromMat(l)
			for i := range n {
				if !(ld.at(i, i) > 0) && kind != rankDef {
					t.Errorf("%s: L[%d][%d] = %g, want > 0", name, i, i, ld.at(i, i))
				}
			}
			if err := relErr(mul(ld, ld.t()).d, a.d, normF(a.d)); !(err <= tol) {
				t.Errorf("%s: ‖L Lᵀ − A‖/‖A‖ = %.3g > %.3g", name, err, tol)
			}
		}
	}
}

func testEigh(t *testing.T, b kernels.Backend, tol float64) {
	rng := newRand()
	for _, n := range sizes {
		for _, kind := range append(slices.Clone(kinds), "zero") {
			var a dense
			var known []float64
			switch kind {
			case "zero":
				a, known = zeros(n, n), make([]float64, n)
			case rankDef:
				if n < 2 {
					continue
				}
				a, _ = symmetric(rng, kind, n)
			default:
				a, known = symmetric(rng, kind, n)
			}
			name := fmt.Sprintf("eigh n=%d %s", n, kind)
			in, unchanged := symInput(a)
			w, v, err := b.Eigh(in)
			if !unchanged() {
				t.Errorf("%s: modified A", name)
			}
			if err != nil {
				t.Errorf("%s: %v", name, err)
				continue
			}
			if len(w) != n {
				t.Errorf("%s: %d values", name, len(w))
				continue
			}
			if r, c := v.Dims(); r != n || c != n {
				t.Errorf("%s: vectors are %d×%d", name, r, c)
				continue
			}
			if !slices.IsSorted(w) {
				t.Errorf("%s: values not ascending: %v", name, head(w))
			}
			if n == 0 {
				continue
			}
			vd := fromMat(v)
			normA := normF(a.d)
			vw := zeros(n, n)
			for i := range n {
				for j := range n {
					vw.d[i*n+j] = vd.at(i, j) * w[j]
				}
			}
			if err := relErr(mul(a, vd).d, vw.d, normA); !(err <= tol) {
				t.Errorf("%s: ‖A V − V diag(w)‖/‖A‖ = %.3g > %.3g", name, err, tol)
			}
			checkOrthonormal(t, name+" V", vd, tol)
			if known != nil {
				if err := relErr(w, known, max(normF(known), 1)); !(err <= tol) {
					t.Errorf("%s: eigenvalues off by %.3g > %.3g", name, err, tol)
				}
			}
			if kind == rankDef {
				top := math.Max(math.Abs(w[0]), math.Abs(w[n-1]))
				for i := range n - n/2 {
					if !(math.Abs(w[i]) <= tol*top) {
						t.Errorf("%s: eigenvalue %d of the null space is %.3g (largest %.3g)", name, i, w[i], top)
					}
				}
			}
		}
	}
}

// checkOrthonormal reports ‖QᵀQ − I‖_F / √p > tol for the columns of q.
func checkOrthonormal(t *testing.T, name string, q dense, tol float64) {
	t.Helper()
	if q.c == 0 {
		return
	}
	if err := relErr(mul(q.t(), q).d, eye(q.c).d, math.Sqrt(float64(q.c))); !(err <= tol) {
		t.Errorf("%s: ‖QᵀQ − I‖/√p = %.3g > %.3g", name, err, tol)
	}
}

func testSVD(t *testing.T, b kernels.Backend, tol float64) {
	rng := newRand()
	type shape struct{ m, n int }
	var shapes []shape
	for _, s := range sizes {
		shapes = append(shapes, shape{s, s})
	}
	shapes = append(shapes, shape{17, 3}, shape{3, 17}, shape{300, 128}, shape{128, 300}, shape{1, 17}, shape{17, 1})
	for _, sh := range shapes {
		p := min(sh.m, sh.n)
		for _, kind := range append(slices.Clone(kinds), "zero") {
			var a dense
			var known []float64
			switch kind {
			case "zero":
				a, known = zeros(sh.m, sh.n), make([]float64, p)
			case rankDef:
				if p < 2 {
					continue
				}
				a, _ = general(rng, kind, sh.m, sh.n)
			default:
				a, known = general(rng, kind, sh.m, sh.n)
			}
			name := fmt.Sprintf("svd %d×%d %s", sh.m, sh.n, kind)
			in, parent := view64(a, math.NaN())
			var snap []uint64
			if parent != nil {
				snap = snapshot(parent.RawMatrix().Data)
			}
			u, s, vt, err := b.SVD(in)
			if parent != nil && !sameBits(parent.RawMatrix().Data, snap) {
				t.Errorf("%s: modified A", name)
			}
			if err != nil {
				t.Errorf("%s: %v", name, err)
				continue
			}
			ur, uc := u.Dims()
			vr, vc := vt.Dims()
			if len(s) != p || (p > 0 && (ur != sh.m || uc != p || vr != p || vc != sh.n)) {
				t.Errorf("%s: U %d×%d, %d values, Vᵀ %d×%d", name, ur, uc, len(s), vr, vc)
				continue
			}
			if p == 0 {
				continue
			}
			if !slices.IsSortedFunc(s, func(x, y float64) int { return -cmpFloat(x, y) }) || s[p-1] < 0 {
				t.Errorf("%s: values not descending and non-negative: %v", name, head(s))
			}
			ud, vtd := fromMat(u), fromMat(vt)
			us := zeros(sh.m, p)
			for i := range sh.m {
				for j := range p {
					us.d[i*p+j] = ud.at(i, j) * s[j]
				}
			}
			if err := relErr(mul(us, vtd).d, a.d, normF(a.d)); !(err <= tol) {
				t.Errorf("%s: ‖U diag(s) Vᵀ − A‖/‖A‖ = %.3g > %.3g", name, err, tol)
			}
			checkOrthonormal(t, name+" U", ud, tol)
			checkOrthonormal(t, name+" V", vtd.t(), tol)
			if known != nil {
				if err := relErr(s, known, max(normF(known), 1)); !(err <= tol) {
					t.Errorf("%s: singular values off by %.3g > %.3g", name, err, tol)
				}
			}
			if kind == rankDef {
				for i := p / 2; i < p; i++ {
					if !(s[i] <= tol*s[0]) {
						t.Errorf("%s: s[%d] = %.3g of a rank-%d matrix (s[0] = %.3g)", name, i, s[i], p/2, s[0])
					}
				}
			}
		}
	}
}

func cmpFloat(x, y float64) int {
	switch {
	case x < y:
		return -1
	case x > y:
		return 1
	}
	return 0
}

// head shortens a slice for an error message.
func head(s []float64) []float64 { return s[:min(len(s), 8)] }

// testNonFinite checks that NaN or Inf input is reported as ErrNonFinite,
// not as a failure damping could fix, nor handed to LAPACK.
func testNonFinite(t *testing.T, b kernels.Backend) {
	for _, bad := range []float64{math.NaN(), math.Inf(1), math.Inf(-1)} {
		a := eye(4)
		a.d[1*4+2], a.d[2*4+1] = bad, bad
		s, _ := symView64(a)
		if _, err := b.Cholesky(s); !errors.Is(err, kernels.ErrNonFinite) {
			t.Errorf("cholesky with %g: error %v, want ErrNonFinite", bad, err)
		}
		if _, _, err := b.Eigh(s); !errors.Is(err, kernels.ErrNonFinite) {
			t.Errorf("eigh with %g: error %v, want ErrNonFinite", bad, err)
		}
		d, _ := view64(a, 0)
		if _, _, _, err := b.SVD(d); !errors.Is(err, kernels.ErrNonFinite) {
			t.Errorf("svd with %g: error %v, want ErrNonFinite", bad, err)
		}
	}
}

// testPanics checks that shape mismatches panic rather than corrupt memory.
func testPanics(t *testing.T, b kernels.Backend) {
	buf := make([]float32, 64)
	cases := []struct {
		name string
		f    func()
	}{
		{"sgemm lda < k", func() { b.Sgemm(false, false, 4, 4, 4, 1, buf, 3, buf, 4, 0, buf, 4) }},
		{"sgemm Aᵀ lda < m", func() { b.Sgemm(true, false, 5, 4, 4, 1, buf, 4, buf, 4, 0, buf, 4) }},
		{"sgemm short B", func() { b.Sgemm(false, false, 4, 4, 4, 1, buf, 4, buf[:15], 4, 0, buf, 4) }},
		{"sgemm short C", func() { b.Sgemm(false, false, 4, 4, 4, 1, buf, 4, buf, 4, 0, buf[:15], 4) }},
		{"sgemm negative m", func() { b.Sgemm(false, false, -1, 4, 4, 1, buf, 4, buf, 4, 0, buf, 4) }},
		{"dgemm inner mismatch", func() {
			b.Dgemm(false, false, 1, mat.NewDense(3, 4, nil), mat.NewDense(3, 4, nil), 0, mat.NewDense(3, 4, nil))
		}},
		{"dgemm C mismatch", func() {
			b.Dgemm(false, true, 1, mat.NewDense(3, 4, nil), mat.NewDense(3, 4, nil), 0, mat.NewDense(3, 4, nil))
		}},
		{"gram C mismatch", func() { b.GramAdd(mat.NewSymDense(3, nil), buf, 4, 4) }},
		{"gram short X", func() { b.GramAdd(mat.NewSymDense(4, nil), buf[:15], 4, 4) }},
	}
	for _, c := range cases {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("%s: did not panic", c.name)
				}
			}()
			c.f()
		}()
	}
}
