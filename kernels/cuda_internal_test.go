//go:build cuda && cgo

package kernels

import (
	"errors"
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"gonum.org/v1/gonum/mat"
)

func openOrSkip(t *testing.T) CUDA {
	t.Helper()
	c, err := OpenCUDA()
	if err != nil {
		t.Skipf("no CUDA device here, CUDA tests skipped: %v", err)
	}
	return c
}

// withAllocLimit makes allocations above limit bytes fail as if the device
// were full, for the duration of f.
func withAllocLimit(c CUDA, limit int, f func()) {
	c.d.mu.Lock()
	c.d.allocLimit = limit
	c.d.mu.Unlock()
	defer func() {
		c.d.mu.Lock()
		c.d.allocLimit = 0
		c.d.mu.Unlock()
	}()
	f()
}

// A decomposition that does not fit names the size it needed and the memory
// free; the products, which return no error, run on the CPU instead and
// still give the right answer.
func TestCUDADeviceMemory(t *testing.T) {
	c := openOrSkip(t)
	rng := rand.New(rand.NewPCG(3, 3))
	const n = 300
	a := mat.NewSymDense(n, nil)
	for i := range n {
		for j := i; j < n; j++ {
			a.SetSym(i, j, rng.NormFloat64())
		}
		a.SetSym(i, i, float64(n))
	}
	x := make([]float32, 2*n*n)
	for i := range x {
		x[i] = float32(rng.NormFloat64())
	}
	withAllocLimit(c, 64<<10, func() {
		_, _, err := c.Eigh(a)
		if !errors.Is(err, ErrDeviceMemory) {
			t.Fatalf("Eigh over the limit: err = %v, want ErrDeviceMemory", err)
		}
		for _, want := range []string{"Eigh of 300×300", "needs 0.7 MiB", "free of"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not say %q", err, want)
			}
		}
		if _, err := c.Cholesky(a); !errors.Is(err, ErrDeviceMemory) {
			t.Errorf("Cholesky over the limit: err = %v", err)
		}
		if _, _, _, err := c.SVD(mat.DenseCopyOf(a)); !errors.Is(err, ErrDeviceMemory) {
			t.Errorf("SVD over the limit: err = %v", err)
		}
		got, want := mat.NewSymDense(n, nil), mat.NewSymDense(n, nil)
		c.GramAdd(got, x, 2*n, n)
		OpenBLAS{}.GramAdd(want, x, 2*n, n)
		if !mat.EqualApprox(got, want, 1e-9) {
			t.Errorf("GramAdd over the limit differs from OpenBLAS")
		}
		cg, cw := make([]float32, n*n), make([]float32, n*n)
		c.Sgemm(false, true, n, n, n, 1, x, n, x[n*n:], n, 0, cg, n)
		OpenBLAS{}.Sgemm(false, true, n, n, n, 1, x, n, x[n*n:], n, 0, cw, n)
		for i := range cg {
			if cg[i] != cw[i] {
				t.Fatalf("Sgemm over the limit differs from OpenBLAS at %d: %g vs %g", i, cg[i], cw[i])
			}
		}
	})
	if _, _, err := c.Eigh(a); err != nil {
		t.Fatalf("Eigh after the limit is lifted: %v", err)
	}
}

// TestCUDACopyTable prints host↔device copy rates with and without
// registering the host memory (go test -run CUDACopyTable -cudatable).
func TestCUDACopyTable(t *testing.T) {
	if f := flag.Lookup("cudatable"); f == nil || f.Value.String() != "true" {
		t.Skip("timing table only with -cudatable")
	}
	c := openOrSkip(t)
	host := make([]float64, 16<<20) // 128 MiB
	defer func() { cudaPin = true }()
	for _, pin := range []bool{false, true} {
		cudaPin = pin
		var up, down float64
		err := c.d.do(func() error {
			g := mem{}
			defer g.free()
			d, err := g.alloc(len(host)*8, "copy table")
			if err != nil {
				return err
			}
			up, down = math.Inf(1), math.Inf(1)
			for range 4 {
				start := time.Now()
				if err := put64(d, host); err != nil {
					return err
				}
				up = min(up, time.Since(start).Seconds())
				start = time.Now()
				if err := get64(host, d); err != nil {
					return err
				}
				down = min(down, time.Since(start).Seconds())
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		fmt.Printf("| copy 128 MiB, registered %-5v | HtoD %5.1f GB/s | DtoH %5.1f GB/s\n", pin, 128*(1<<20)/up/1e9, 128*(1<<20)/down/1e9)
	}
}
