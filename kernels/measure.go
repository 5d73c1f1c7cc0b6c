package kernels

import (
	"math"
	"time"
)

// MeasureSgemm returns the rate of b's n×n×n float32 product in GFLOP/s,
// counting 2n³ flops, the best of three timed rounds after one warm-up. A
// benchmark prints it beside its own throughput, so the figure can be read
// against what the machine's BLAS does at all. Each round repeats the product
// until it has run for about 50 ms, so small n still time reliably.
func MeasureSgemm(b Backend, n int) (gflops float64) {
	if n <= 0 {
		return 0
	}
	x := make([]float32, n*n)
	y := make([]float32, n*n)
	z := make([]float32, n*n)
	for i := range x {
		// Deterministic, non-trivial and bounded; no randomness needed.
		x[i] = float32(i%17)/17 - 0.5
		y[i] = float32(i%13)/13 - 0.5
	}
	run := func(reps int) time.Duration {
		start := time.Now()
		for range reps {
			b.Sgemm(false, false, n, n, n, 1, x, n, y, n, 0, z, n)
		}
		return time.Since(start)
	}
	warm := run(1)
	reps := 1
	if target := 50 * time.Millisecond; warm < target {
		reps = int(min(1000, target/max(warm, time.Microsecond)))
	}
	best := time.Duration(math.MaxInt64)
	for range 3 {
		best = min(best, run(reps))
	}
	return 2 * math.Pow(float64(n), 3) * float64(reps) / best.Seconds() / 1e9
}
