package eora

import (
	"fmt"
	"testing"

	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/methods/internal/mattest"
)

// BenchmarkCompensate times one rank-32 EoRA correction of a 1024 × 1024
// layer: Eigh of C, SVD of ΔW Q′, and the two measured calibration errors.
func BenchmarkCompensate(b *testing.B) {
	for _, n := range []int{1024} {
		b.Run(fmt.Sprintf("%dx%d", n, n), func(b *testing.B) {
			k := kernels.Default()
			rng := newRNG(1)
			w := mattest.RandDense(rng, n, n)
			wc := mattest.RandDense(rng, n, n)
			wc.Scale(0.01, wc)
			wc.Add(wc, w)
			_, c := activations(rng, 2*n, n, 0.999)
			for b.Loop() {
				if _, err := Compensate(k, w, wc, c, 32); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
