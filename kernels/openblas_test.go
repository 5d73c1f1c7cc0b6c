//go:build cgo

package kernels_test

import (
	"testing"

	"github.com/rankzip/rankzip/kernels"
)

// With cgo on, OpenBLAS must be the default and listed, so that the
// conformance suite and TestBackendsAgree cover it rather than skip it.
func TestCgoBuildsOpenBLAS(t *testing.T) {
	if got := kernels.Default().Name(); got != (kernels.OpenBLAS{}).Name() {
		t.Fatalf("Default() = %s with cgo on, want openblas", got)
	}
	avail := kernels.Available()
	if len(avail) < 2 || avail[0].Name() != "openblas" {
		t.Fatalf("Available() = %v, want openblas and gonum", avail)
	}
}

// The thread timeout takes effect and OpenBLAS still computes (its threads
// restart after the shutdown that applies it); a bad exponent is refused.
func TestThreadTimeout(t *testing.T) {
	defer kernels.SetThreadTimeout(kernels.DefaultThreadTimeout)
	if got := kernels.ThreadTimeout(); got != kernels.DefaultThreadTimeout {
		t.Errorf("ThreadTimeout() = %d at start, want the default %d", got, kernels.DefaultThreadTimeout)
	}
	if err := kernels.SetThreadTimeout(3); err == nil {
		t.Error("SetThreadTimeout(3): no error")
	}
	if err := kernels.SetThreadTimeout(10); err != nil || kernels.ThreadTimeout() != 10 {
		t.Fatalf("SetThreadTimeout(10): %v, now %d", err, kernels.ThreadTimeout())
	}
	const n = 256
	a, b, c := make([]float32, n*n), make([]float32, n*n), make([]float32, n*n)
	for i := range a {
		a[i], b[i] = float32(i%7), float32(i%5)
	}
	kernels.OpenBLAS{}.Sgemm(false, false, n, n, n, 1, a, n, b, n, 0, c, n)
	for _, ij := range [][2]int{{0, 0}, {17, 200}, {255, 255}} {
		var want float32
		for l := range n {
			want += a[ij[0]*n+l] * b[l*n+ij[1]]
		}
		if got := c[ij[0]*n+ij[1]]; got != want {
			t.Errorf("C[%d,%d] = %v after the restart, want %v", ij[0], ij[1], got, want)
		}
	}
}
