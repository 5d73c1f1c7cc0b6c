//go:build cuda && cgo

package kernels_test

import (
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"testing"
	"time"

	"gonum.org/v1/gonum/mat"

	"github.com/rankzip/rankzip/kernels"
)

var cudaTable = flag.Bool("cudatable", false, "print the CUDA timing table (large shapes, GPU machine)")

func cudaOrSkip(t testing.TB) kernels.CUDA {
	t.Helper()
	c, err := kernels.OpenCUDA()
	if err != nil {
		t.Skipf("no CUDA device here, CUDA tests skipped: %v", err)
	}
	return c
}

func TestCUDASelect(t *testing.T) {
	c := cudaOrSkip(t)
	t.Logf("device: %s", c.Device())
	for _, dev := range []string{"cuda", "auto", ""} {
		b, err := kernels.Select(dev)
		if err != nil || b.Name() != "cuda" {
			t.Errorf("Select(%q) = %v, %v; want cuda", dev, b, err)
		}
	}
	if b, err := kernels.Select("cpu"); err != nil || b.Name() != "openblas" {
		t.Errorf("Select(cpu) = %v, %v; want openblas", b, err)
	}
	if _, err := kernels.Select("tpu"); err == nil {
		t.Errorf("Select(tpu) gave no error")
	}
}

func cudaRand(rng *rand.Rand, r, c int) *mat.Dense {
	d := make([]float64, r*c)
	for i := range d {
		d[i] = rng.NormFloat64()
	}
	return mat.NewDense(r, c, d)
}

// withSpectrum returns Q1 diag(s) Q2ᵀ (r×c) for random orthonormal Q1, Q2.
func withSpectrum(rng *rand.Rand, k kernels.Backend, r, c int, s []float64) *mat.Dense {
	var q1, q2 mat.QR
	q1.Factorize(cudaRand(rng, r, len(s)))
	q2.Factorize(cudaRand(rng, c, len(s)))
	var a, b mat.Dense
	q1.QTo(&a)
	q2.QTo(&b)
	u := mat.DenseCopyOf(a.Slice(0, r, 0, len(s)))
	v := mat.DenseCopyOf(b.Slice(0, c, 0, len(s)))
	for j, sj := range s {
		for i := range r {
			u.Set(i, j, u.At(i, j)*sj)
		}
	}
	out := mat.NewDense(r, c, nil)
	k.Dgemm(false, true, 1, u, v, 0, out)
	return out
}

func relDiff(a, b mat.Matrix) float64 {
	var d mat.Dense
	d.Sub(a, b)
	return mat.Norm(&d, 2) / mat.Norm(b, 2)
}

// svdErrors returns the relative residual ‖A − UΣVᵀ‖/‖A‖ and the
// orthonormality errors ‖UᵀU − I‖, ‖VVᵀ − I‖ (Vt's rows).
func svdErrors(k kernels.Backend, a, u *mat.Dense, s []float64, vt *mat.Dense) (resid, orthU, orthV float64) {
	m, n := a.Dims()
	p := len(s)
	us := mat.DenseCopyOf(u)
	for j := range p {
		for i := range m {
			us.Set(i, j, us.At(i, j)*s[j])
		}
	}
	rec := mat.NewDense(m, n, nil)
	k.Dgemm(false, false, 1, us, vt, 0, rec)
	resid = relDiff(rec, a)
	orth := func(q *mat.Dense, tq bool) float64 {
		g := mat.NewDense(p, p, nil)
		k.Dgemm(tq, !tq, 1, q, q, 0, g)
		for i := range p {
			g.Set(i, i, g.At(i, i)-1)
		}
		return mat.Norm(g, 2)
	}
	return resid, orth(u, true), orth(vt, false)
}

// The fast SVD path is kept only when it is accurate: a well-conditioned
// matrix goes through gesvda, one with singular values over ten decades
// falls back to gesvd; both come out with orthonormal factors.
func TestCUDASVDPaths(t *testing.T) {
	c := cudaOrSkip(t)
	rng := rand.New(rand.NewPCG(5, 5))
	const n = 1024
	cases := []struct {
		name   string
		decade float64 // log10 of the condition number
	}{{"conditioned", 2}, {"illcond", 10}}
	for _, tc := range cases {
		s := make([]float64, n)
		for i := range s {
			s[i] = math.Pow(10, -tc.decade*float64(i)/float64(n-1))
		}
		for _, shape := range [][2]int{{n, n}, {n + 300, n}, {n, n + 300}} {
			a := withSpectrum(rng, kernels.OpenBLAS{}, shape[0], shape[1], s)
			u, got, vt, err := c.SVD(a)
			if err != nil {
				t.Fatal(err)
			}
			resid, ou, ov := svdErrors(kernels.OpenBLAS{}, a, u, got, vt)
			var sErr float64
			for i := range s {
				sErr = math.Max(sErr, math.Abs(got[i]-s[i]))
			}
			t.Logf("%s %dx%d: path %s, residual %.2g, ‖UᵀU−I‖ %.2g, ‖VᵀV−I‖ %.2g, max |Δσ| %.2g",
				tc.name, shape[0], shape[1], c.LastSVDPath(), resid, ou, ov, sErr)
			if resid > 1e-12 || ou > 1e-10 || ov > 1e-10 || sErr > 1e-12 {
				t.Errorf("%s %dx%d: residual %.2g, orthonormality %.2g/%.2g, singular values %.2g", tc.name, shape[0], shape[1], resid, ou, ov, sErr)
			}
			// Well-conditioned input must take the fastest path; for the
			// ill-conditioned one gesvda's checks must fail (it cannot
			// give orthonormal vectors for σ near 1e-10·σ₁), and which of
			// the other two is kept depends on their checks.
			if path := c.LastSVDPath(); (tc.decade == 2) != (path == "gesvda") {
				t.Errorf("%s %dx%d: path %s", tc.name, shape[0], shape[1], path)
			}
		}
	}
}

// Agreement with OpenBLAS on fresh random inputs at the size of a 7B
// layer; the relative differences go to the log for the closing note.
func TestCUDAAgreesWithOpenBLAS4096(t *testing.T) {
	c := cudaOrSkip(t)
	if testing.Short() {
		t.Skip("large agreement test skipped in -short mode")
	}
	cpu := kernels.OpenBLAS{}
	rng := rand.New(rand.NewPCG(7, 7))
	const n = 4096
	check := func(name string, e, tol float64) {
		t.Logf("%-34s relative difference %.2e (tolerance %.0e)", name, e, tol)
		if !(e <= tol) {
			t.Errorf("%s: relative difference %.3g over %.0g", name, e, tol)
		}
	}

	x32 := make([]float32, 2*n*n)
	for i := range x32 {
		x32[i] = float32(rng.NormFloat64())
	}
	cg, cc := make([]float32, n*n), make([]float32, n*n)
	c.Sgemm(false, true, n, n, n, 1, x32[:n*n], n, x32[n*n:], n, 0, cg, n)
	cpu.Sgemm(false, true, n, n, n, 1, x32[:n*n], n, x32[n*n:], n, 0, cc, n)
	check("Sgemm 4096", relDiff(mat.NewDense(n, n, f64(cg)), mat.NewDense(n, n, f64(cc))), 1e-5)

	a, b := cudaRand(rng, n, n), cudaRand(rng, n, n)
	dg, dc := mat.NewDense(n, n, nil), mat.NewDense(n, n, nil)
	c.Dgemm(true, false, 1, a, b, 0, dg)
	cpu.Dgemm(true, false, 1, a, b, 0, dc)
	check("Dgemm 4096 (Aᵀ B)", relDiff(dg, dc), 1e-13)

	gg, gc := mat.NewSymDense(n, nil), mat.NewSymDense(n, nil)
	c.GramAdd(gg, x32, 2*n, n)
	cpu.GramAdd(gc, x32, 2*n, n)
	check("GramAdd 8192×4096", relDiff(gg, gc), 1e-13)

	spd := mat.NewSymDense(n, nil)
	cpu.GramAdd(spd, x32, 2*n, n)
	lg, err := c.Cholesky(spd)
	if err != nil {
		t.Fatal(err)
	}
	lc, err := cpu.Cholesky(spd)
	if err != nil {
		t.Fatal(err)
	}
	check("Cholesky 4096", relDiff(lg, lc), 1e-10)

	wg, vg, err := c.Eigh(spd)
	if err != nil {
		t.Fatal(err)
	}
	wc, _, err := cpu.Eigh(spd)
	if err != nil {
		t.Fatal(err)
	}
	check("Eigh 4096 eigenvalues", relDiff(mat.NewVecDense(n, wg), mat.NewVecDense(n, wc)), 1e-12)
	av := mat.NewDense(n, n, nil)
	cpu.Dgemm(false, false, 1, mat.DenseCopyOf(spd), vg, 0, av)
	vw := mat.DenseCopyOf(vg)
	for j := range n {
		for i := range n {
			vw.Set(i, j, vw.At(i, j)*wg[j])
		}
	}
	check("Eigh 4096 backward ‖AV−VΛ‖/‖A‖", relDiff(av, vw)*mat.Norm(vw, 2)/mat.Norm(spd, 2), 1e-12)

	for _, sh := range [][2]int{{n, n}, {11008, n}} {
		w := cudaRand(rng, sh[0], sh[1])
		u, s, vt, err := c.SVD(w)
		if err != nil {
			t.Fatal(err)
		}
		path := c.LastSVDPath()
		_, sc, _, err := cpu.SVD(w)
		if err != nil {
			t.Fatal(err)
		}
		resid, ou, ov := svdErrors(cpu, w, u, s, vt)
		name := fmt.Sprintf("SVD %dx%d (%s)", sh[0], sh[1], path)
		check(name+" singular values", relDiff(mat.NewVecDense(len(s), s), mat.NewVecDense(len(sc), sc)), 1e-12)
		check(name+" residual", resid, 1e-12)
		check(name+" ‖UᵀU−I‖", ou, 1e-10)
		check(name+" ‖VᵀV−I‖", ov, 1e-10)
	}
}

func f64(s []float32) []float64 {
	out := make([]float64, len(s))
	for i, v := range s {
		out[i] = float64(v)
	}
	return out
}

// TestCUDATable prints the timings of issue 12's table (go test -run
// CUDATable -cudatable): each the best of three after a warm-up, host to
// host (copies to and from the device included), float64 unless named.
func TestCUDATable(t *testing.T) {
	if !*cudaTable {
		t.Skip("timing table only with -cudatable")
	}
	c := cudaOrSkip(t)
	rng := rand.New(rand.NewPCG(11, 11))
	best := func(f func()) float64 {
		f()
		b := math.Inf(1)
		for range 3 {
			start := time.Now()
			f()
			b = math.Min(b, time.Since(start).Seconds())
		}
		return b
	}
	fmt.Fprintf(os.Stdout, "rankzip CUDA backend on %s\n", c.Device())
	row := func(name string, s float64, extra string) {
		fmt.Fprintf(os.Stdout, "| %-32s | %8.4f s | %s\n", name, s, extra)
	}

	x := make([]float32, 32768*4096)
	for i := range x {
		x[i] = float32(rng.NormFloat64())
	}
	g := mat.NewSymDense(4096, nil)
	s := best(func() { g.Zero(); c.GramAdd(g, x, 32768, 4096) })
	row("gram 32768x4096 (f32 in, f64 sum)", s, fmt.Sprintf("%.1f TFLOP/s", 2*32768*4096*4096/s/1e12))

	for _, n := range []int{8192} {
		a32 := x[:n*n]
		c32 := make([]float32, n*n)
		s := best(func() { c.Sgemm(false, false, n, n, n, 1, a32, n, x[n*n:2*n*n], n, 0, c32, n) })
		row(fmt.Sprintf("sgemm %d", n), s, fmt.Sprintf("%.1f TFLOP/s", 2*math.Pow(float64(n), 3)/s/1e12))
		a, b, cc := cudaRand(rng, n, n), cudaRand(rng, n, n), mat.NewDense(n, n, nil)
		s = best(func() { c.Dgemm(false, false, 1, a, b, 0, cc) })
		row(fmt.Sprintf("dgemm %d", n), s, fmt.Sprintf("%.1f TFLOP/s", 2*math.Pow(float64(n), 3)/s/1e12))
	}
	for _, n := range []int{4096, 11008} {
		w := cudaRand(rng, n, n)
		spd := mat.NewSymDense(n, nil)
		ww := mat.NewDense(n, n, nil)
		c.Dgemm(false, true, 1/float64(n), w, w, 0, ww)
		for i := range n {
			for j := i; j < n; j++ {
				v := ww.At(i, j)
				if i == j {
					v += 1e-3
				}
				spd.SetSym(i, j, v)
			}
		}
		row(fmt.Sprintf("cholesky %d", n), best(func() { c.Cholesky(spd) }), "")
		row(fmt.Sprintf("eigh %d", n), best(func() { c.Eigh(spd) }), "")
	}
	for _, sh := range [][2]int{{4096, 4096}, {11008, 4096}} {
		w := cudaRand(rng, sh[0], sh[1])
		s := best(func() { c.SVD(w) })
		row(fmt.Sprintf("svd %dx%d random", sh[0], sh[1]), s, "path "+c.LastSVDPath())
		// Singular values over eight decades, as whitened layers have.
		sv := make([]float64, sh[1])
		for i := range sv {
			sv[i] = math.Pow(10, -8*float64(i)/float64(len(sv)-1))
		}
		w = withSpectrum(rng, c, sh[0], sh[1], sv)
		s = best(func() { c.SVD(w) })
		row(fmt.Sprintf("svd %dx%d κ=1e8", sh[0], sh[1]), s, "path "+c.LastSVDPath())
	}
}
