package kernels_test

import (
	"math"
	"math/rand/v2"
	"testing"

	"gonum.org/v1/gonum/mat"

	"github.com/rankzip/rankzip/kernels"
)

// Benchmarks run every built-in backend on the same shapes and report
// GFLOP/s with the nominal flop counts of go_stack.md §4, so the figures
// compare with the research table: gemm 2mnk, syrk n²k, potrf n³/3, syevd
// 9n³, gesdd 4m²n + 8mn² + 9n³.

// forEach runs bench as a sub-benchmark per backend and reports flops per
// iteration as GFLOP/s.
func forEach(b *testing.B, flops float64, bench func(b *testing.B, k kernels.Backend)) {
	for _, k := range kernels.Available() {
		b.Run(k.Name(), func(b *testing.B) {
			bench(b, k)
			b.ReportMetric(flops*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
		})
	}
}

func randFloats32(n int) []float32 {
	rng := rand.New(rand.NewPCG(1, 1))
	s := make([]float32, n)
	for i := range s {
		s[i] = float32(rng.NormFloat64())
	}
	return s
}

func randDense(r, c int) *mat.Dense {
	rng := rand.New(rand.NewPCG(1, 1))
	d := make([]float64, r*c)
	for i := range d {
		d[i] = rng.NormFloat64()
	}
	return mat.NewDense(r, c, d)
}

// randSym returns a symmetric n×n matrix; with diag it is diagonally
// dominant, hence positive definite.
func randSym(n int, diag float64) *mat.SymDense {
	rng := rand.New(rand.NewPCG(1, 1))
	s := mat.NewSymDense(n, nil)
	for i := range n {
		s.SetSym(i, i, diag+rng.Float64())
		for j := i + 1; j < n; j++ {
			s.SetSym(i, j, 2*rng.Float64()-1)
		}
	}
	return s
}

func BenchmarkSgemm2048(b *testing.B) {
	const n = 2048
	forEach(b, 2*n*n*n, func(b *testing.B, k kernels.Backend) {
		x, y, z := randFloats32(n*n), randFloats32(n*n), make([]float32, n*n)
		for b.Loop() {
			k.Sgemm(false, false, n, n, n, 1, x, n, y, n, 0, z, n)
		}
	})
}

// BenchmarkSgemmForward is the forward pass's call: 128 tokens through a
// 4096×4096 Hugging Face weight, y = x Wᵀ.
func BenchmarkSgemmForward(b *testing.B) {
	const rows, d = 128, 4096
	forEach(b, 2*rows*d*d, func(b *testing.B, k kernels.Backend) {
		x, w, y := randFloats32(rows*d), randFloats32(d*d), make([]float32, rows*d)
		for b.Loop() {
			k.Sgemm(false, true, rows, d, d, 1, x, d, w, d, 0, y, d)
		}
	})
}

func BenchmarkDgemm2048(b *testing.B) {
	const n = 2048
	forEach(b, 2*n*n*n, func(b *testing.B, k kernels.Backend) {
		x, y, z := randDense(n, n), randDense(n, n), mat.NewDense(n, n, nil)
		for b.Loop() {
			k.Dgemm(false, false, 1, x, y, 0, z)
		}
	})
}

func BenchmarkGramAdd2048(b *testing.B) {
	const rows, cols = 2048, 2048
	forEach(b, cols*cols*rows, func(b *testing.B, k kernels.Backend) {
		x, c := randFloats32(rows*cols), mat.NewSymDense(cols, nil)
		for b.Loop() {
			k.GramAdd(c, x, rows, cols)
		}
	})
}

func BenchmarkCholesky2048(b *testing.B) {
	const n = 2048
	forEach(b, n*n*n/3, func(b *testing.B, k kernels.Backend) {
		a := randSym(n, n)
		for b.Loop() {
			if _, err := k.Cholesky(a); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkEigh1024(b *testing.B) {
	const n = 1024
	forEach(b, 9*n*n*n, func(b *testing.B, k kernels.Backend) {
		a := randSym(n, 0)
		for b.Loop() {
			if _, _, err := k.Eigh(a); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkSVD1024(b *testing.B) {
	const m, n = 1024, 1024
	forEach(b, 4*m*m*n+8*m*n*n+9*n*n*n, func(b *testing.B, k kernels.Backend) {
		a := randDense(m, n)
		for b.Loop() {
			if _, _, _, err := k.SVD(a); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkMeasureSgemm prints what MeasureSgemm reports, the figure other
// packages' benchmarks quote beside their own.
func BenchmarkMeasureSgemm(b *testing.B) {
	for _, k := range kernels.Available() {
		b.Run(k.Name(), func(b *testing.B) {
			var g float64
			for b.Loop() {
				g = kernels.MeasureSgemm(k, 1024)
			}
			if math.IsNaN(g) {
				b.Fatal("NaN rate")
			}
			b.ReportMetric(g, "GFLOP/s")
		})
	}
}
