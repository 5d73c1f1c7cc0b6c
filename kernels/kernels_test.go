package kernels_test

import (
	"math"
	"math/rand/v2"
	"testing"

	"gonum.org/v1/gonum/mat"

	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/kernels/kerneltest"
)

// tolerances bound each backend's relative float64 errors in the
// conformance suite; Sgemm's get kerneltest.Float32Scale (2²⁹) times more.
// The worst errors measured are 6.6e-15 for float64 (gonum's SVD residual)
// and 2.6e-7 for Sgemm (gonum, which sums without FMA), so 1e-13 leaves a
// margin of 15 and 200 while still catching a lost transpose or a float32
// shortcut in a float64 path.
var tolerances = map[string]float64{
	"openblas": 1e-13,
	"gonum":    1e-13,
	"cuda":     1e-13,
}

func TestConformance(t *testing.T) {
	for _, b := range kernels.Available() {
		tol, ok := tolerances[b.Name()]
		if !ok {
			t.Fatalf("no tolerance for backend %q", b.Name())
		}
		t.Run(b.Name(), func(t *testing.T) { kerneltest.Run(t, b, tol) })
	}
}

func TestDefaultIsFirstAvailable(t *testing.T) {
	avail := kernels.Available()
	if len(avail) == 0 || kernels.Default().Name() != avail[0].Name() {
		t.Fatalf("Default() = %s, Available() = %v", kernels.Default().Name(), avail)
	}
	if last := avail[len(avail)-1]; last.Name() != (kernels.Gonum{}).Name() {
		t.Errorf("gonum missing from Available(): %v", avail)
	}
}

func TestMeasureSgemm(t *testing.T) {
	for _, b := range kernels.Available() {
		if g := kernels.MeasureSgemm(b, 64); !(g > 0) || math.IsInf(g, 0) {
			t.Errorf("MeasureSgemm(%s, 64) = %g", b.Name(), g)
		}
	}
	if g := kernels.MeasureSgemm(kernels.Gonum{}, 0); g != 0 {
		t.Errorf("MeasureSgemm(gonum, 0) = %g, want 0", g)
	}
}

// Agreement tolerances between two backends, relative Frobenius: products
// differ only by summation order; the factors of well-conditioned inputs
// with well-separated spectra differ by about κ·ε.
const (
	agreeTol32     = 1e-5
	agreeTol64     = 1e-12
	agreeTolFactor = 1e-9
)

// TestBackendsAgree runs every backend and gonum on the same random inputs
// and compares the results directly: the suite alone would let two
// backends differ within twice its tolerance.
func TestBackendsAgree(t *testing.T) {
	ref := kernels.Gonum{}
	n := 0
	for _, b := range kernels.Available() {
		if b.Name() == ref.Name() {
			continue
		}
		n++
		t.Run(b.Name(), func(t *testing.T) { checkAgree(t, b, ref) })
	}
	if n == 0 {
		t.Skip("gonum is the only backend built in (cgo off)")
	}
}

func checkAgree(t *testing.T, x, y kernels.Backend) {
	rng := rand.New(rand.NewPCG(1, 1))
	gauss := func(n int) []float64 {
		s := make([]float64, n)
		for i := range s {
			s[i] = rng.NormFloat64()
		}
		return s
	}
	to32 := func(s []float64) []float32 {
		out := make([]float32, len(s))
		for i, v := range s {
			out[i] = float32(v)
		}
		return out
	}
	rel := func(a, b []float64) float64 {
		var d, r float64
		for i := range a {
			d += (a[i] - b[i]) * (a[i] - b[i])
			r += b[i] * b[i]
		}
		return math.Sqrt(d / r)
	}
	rel32 := func(a, b []float32) float64 {
		var d, r float64
		for i := range a {
			d += float64(a[i]-b[i]) * float64(a[i]-b[i])
			r += float64(b[i]) * float64(b[i])
		}
		return math.Sqrt(d / r)
	}

	const m, n, k = 67, 45, 130
	for _, tA := range []bool{false, true} {
		for _, tB := range []bool{false, true} {
			lda, ldb := k, n
			if tA {
				lda = m
			}
			if tB {
				ldb = k
			}
			a, b, c0 := to32(gauss(m*k)), to32(gauss(k*n)), to32(gauss(m*n))
			cx, cy := append([]float32(nil), c0...), append([]float32(nil), c0...)
			x.Sgemm(tA, tB, m, n, k, 0.75, a, lda, b, ldb, -1.25, cx, n)
			y.Sgemm(tA, tB, m, n, k, 0.75, a, lda, b, ldb, -1.25, cy, n)
			if e := rel32(cx, cy); !(e <= agreeTol32) {
				t.Errorf("sgemm tA=%v tB=%v: %s and %s differ by %.3g", tA, tB, x.Name(), y.Name(), e)
			}

			da := mat.NewDense(m, k, gauss(m*k))
			if tA {
				da = mat.NewDense(k, m, gauss(m*k))
			}
			db := mat.NewDense(k, n, gauss(k*n))
			if tB {
				db = mat.NewDense(n, k, gauss(k*n))
			}
			dc := mat.NewDense(m, n, gauss(m*n))
			dx, dy := mat.DenseCopyOf(dc), mat.DenseCopyOf(dc)
			x.Dgemm(tA, tB, 0.75, da, db, -1.25, dx)
			y.Dgemm(tA, tB, 0.75, da, db, -1.25, dy)
			if e := rel(dx.RawMatrix().Data, dy.RawMatrix().Data); !(e <= agreeTol64) {
				t.Errorf("dgemm tA=%v tB=%v: %s and %s differ by %.3g", tA, tB, x.Name(), y.Name(), e)
			}
		}
	}

	// GramAdd over more rows than one chunk.
	const rows, cols = 1100, 90
	xs := to32(gauss(rows * cols))
	gx, gy := mat.NewSymDense(cols, nil), mat.NewSymDense(cols, nil)
	x.GramAdd(gx, xs, rows, cols)
	y.GramAdd(gy, xs, rows, cols)
	if e := rel(gx.RawSymmetric().Data, gy.RawSymmetric().Data); !(e <= agreeTol64) {
		t.Errorf("gram: %s and %s differ by %.3g", x.Name(), y.Name(), e)
	}

	// A symmetric matrix with eigenvalues 1..N: positive definite, κ = N,
	// eigenvalue gaps of 1, so every factor is unique up to signs.
	const N = 100
	var qr mat.QR
	qr.Factorize(mat.NewDense(N, N, gauss(N*N)))
	var q mat.Dense
	qr.QTo(&q)
	spd := mat.NewSymDense(N, nil)
	for i := range N {
		for j := i; j < N; j++ {
			var s float64
			for l := range N {
				s += q.At(i, l) * float64(l+1) * q.At(j, l)
			}
			spd.SetSym(i, j, s)
		}
	}
	lx, errx := x.Cholesky(spd)
	ly, erry := y.Cholesky(spd)
	if errx != nil || erry != nil {
		t.Fatalf("cholesky: %v, %v", errx, erry)
	}
	if e := rel(mat.DenseCopyOf(lx).RawMatrix().Data, mat.DenseCopyOf(ly).RawMatrix().Data); !(e <= agreeTolFactor) {
		t.Errorf("cholesky: %s and %s differ by %.3g", x.Name(), y.Name(), e)
	}

	wx, vx, errx := x.Eigh(spd)
	wy, vy, erry := y.Eigh(spd)
	if errx != nil || erry != nil {
		t.Fatalf("eigh: %v, %v", errx, erry)
	}
	if e := rel(wx, wy); !(e <= agreeTol64*N) {
		t.Errorf("eigh values: %s and %s differ by %.3g", x.Name(), y.Name(), e)
	}
	alignColumns(vx, vy)
	if e := rel(vx.RawMatrix().Data, vy.RawMatrix().Data); !(e <= agreeTolFactor) {
		t.Errorf("eigh vectors: %s and %s differ by %.3g", x.Name(), y.Name(), e)
	}

	// A 120×80 matrix U diag(1..80) Vᵀ, singular values 1 apart.
	const sm, sn = 120, 80
	var qu, qv mat.Dense
	qr.Factorize(mat.NewDense(sm, sm, gauss(sm*sm)))
	qr.QTo(&qu)
	qr.Factorize(mat.NewDense(sn, sn, gauss(sn*sn)))
	qr.QTo(&qv)
	for j := range sn {
		for i := range sm {
			qu.Set(i, j, qu.At(i, j)*float64(j+1))
		}
	}
	a := mat.NewDense(sm, sn, nil)
	a.Mul(qu.Slice(0, sm, 0, sn), qv.T())
	ux, sx, vtx, errx := x.SVD(a)
	uy, sy, vty, erry := y.SVD(a)
	if errx != nil || erry != nil {
		t.Fatalf("svd: %v, %v", errx, erry)
	}
	if e := rel(sx, sy); !(e <= agreeTol64*N) {
		t.Errorf("svd values: %s and %s differ by %.3g", x.Name(), y.Name(), e)
	}
	flips := alignColumns(ux, uy)
	for i, f := range flips {
		if f {
			row := vtx.RawRowView(i)
			for j := range row {
				row[j] = -row[j]
			}
		}
	}
	if e := rel(ux.RawMatrix().Data, uy.RawMatrix().Data); !(e <= agreeTolFactor) {
		t.Errorf("svd U: %s and %s differ by %.3g", x.Name(), y.Name(), e)
	}
	if e := rel(vtx.RawMatrix().Data, vty.RawMatrix().Data); !(e <= agreeTolFactor) {
		t.Errorf("svd Vᵀ: %s and %s differ by %.3g", x.Name(), y.Name(), e)
	}
}

// alignColumns flips the sign of each column of a that points away from the
// same column of b, and reports which it flipped.
func alignColumns(a, b *mat.Dense) []bool {
	r, c := a.Dims()
	flips := make([]bool, c)
	for j := range c {
		var dot float64
		for i := range r {
			dot += a.At(i, j) * b.At(i, j)
		}
		if dot < 0 {
			flips[j] = true
			for i := range r {
				a.Set(i, j, -a.At(i, j))
			}
		}
	}
	return flips
}
