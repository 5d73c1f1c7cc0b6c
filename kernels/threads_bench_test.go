//go:build cgo

package kernels_test

import (
	"fmt"
	"math"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/rankzip/rankzip/kernels"
)

// BenchmarkThreadTimeout prints, for several OpenBLAS thread timeouts
// (worker spin 2^bits cycles; 28 is OpenBLAS's default), the seconds of
// two workloads shaped like the calibration pass, interleaved round by
// round so that load from elsewhere falls on every setting alike:
//   - mixed: a forward-sized product (512 rows through 2048×2048) then
//     Go code on both cores (an exp over the output), as a norm or an
//     activation follows each linear;
//   - attention: 64 back-to-back 512×512×128 products (scores and values
//     of one sequence's heads) with a Go softmax-like pass between pairs.
//
// Run it with
//
//	go test -run XXX -bench ThreadTimeout -benchtime 1x ./kernels/
func BenchmarkThreadTimeout(b *testing.B) {
	k := kernels.OpenBLAS{}
	defer kernels.SetThreadTimeout(kernels.DefaultThreadTimeout)
	settings := []int{4, 12, 16, 20, 28}
	const rounds = 5
	for b.Loop() {
		mixed := make([]float64, len(settings))
		attn := make([]float64, len(settings))
		rate := make([]float64, len(settings))
		for range rounds {
			for i, bits := range settings {
				if err := kernels.SetThreadTimeout(bits); err != nil {
					b.Fatal(err)
				}
				mixed[i] += mixedWork(k)
				attn[i] += attentionWork(k)
				rate[i] = max(rate[i], kernels.MeasureSgemm(k, 1024))
			}
		}
		fmt.Printf("%-14s %10s %10s %14s\n", "timeout 2^bits", "mixed s", "attn s", "sgemm GFLOP/s")
		for i, bits := range settings {
			fmt.Printf("%-14d %10.3f %10.3f %14.1f\n", bits, mixed[i]/rounds, attn[i]/rounds, rate[i])
		}
	}
}

func mixedWork(k kernels.Backend) float64 {
	const rows, d = 512, 2048
	x, w, y := fill(rows*d), fill(d*d), make([]float32, rows*d)
	t0 := time.Now()
	for range 8 {
		k.Sgemm(false, true, rows, d, d, 1, x, d, w, d, 0, y, d)
		goParallel(len(y), func(i int) { x[i] = float32(math.Exp(float64(y[i]) * 1e-3)) })
	}
	return time.Since(t0).Seconds()
}

func attentionWork(k kernels.Backend) float64 {
	const n, dk = 512, 128
	q, kk, v := fill(n*dk), fill(n*dk), fill(n*dk)
	sc, out := make([]float32, n*n), make([]float32, n*dk)
	t0 := time.Now()
	for range 64 {
		k.Sgemm(false, true, n, n, dk, 0.1, q, dk, kk, dk, 0, sc, n)
		goParallel(n, func(i int) {
			row := sc[i*n : (i+1)*n]
			for j := range row {
				row[j] = float32(math.Exp(float64(row[j]) * 1e-3))
			}
		})
		k.Sgemm(false, false, n, dk, n, 1, sc, n, v, dk, 0, out, dk)
	}
	return time.Since(t0).Seconds()
}

// goParallel runs fn over [0, n) on GOMAXPROCS goroutines.
func goParallel(n int, fn func(i int)) {
	w := runtime.GOMAXPROCS(0)
	var wg sync.WaitGroup
	for p := range w {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := p * n / w; i < (p+1)*n/w; i++ {
				fn(i)
			}
		}()
	}
	wg.Wait()
}

func fill(n int) []float32 {
	x := make([]float32, n)
	for i := range x {
		x[i] = float32(i%19)/19 - 0.5
	}
	return x
}
