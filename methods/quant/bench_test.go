package quant

import (
	"flag"
	"fmt"
	"testing"
	"time"

	"gonum.org/v1/gonum/mat"

	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/methods/internal/mattest"
)

// largeBench adds the shapes of a 7B layer (minutes on two cores):
// go test -run XXX -bench GPTQ -benchtime 1x ./methods/quant/ -args -large
var largeBench = flag.Bool("large", false, "also benchmark 4096×4096 and 11008×4096")

// timedBackend adds up the time spent in the backend's Cholesky (LAPACK) and
// Dgemm (BLAS) calls.
type timedBackend struct {
	kernels.Backend
	lapack, blas time.Duration
}

func (t *timedBackend) Dgemm(tA, tB bool, alpha float64, a, b *mat.Dense, beta float64, c *mat.Dense) {
	start := time.Now()
	t.Backend.Dgemm(tA, tB, alpha, a, b, beta, c)
	t.blas += time.Since(start)
}

func (t *timedBackend) Cholesky(a *mat.SymDense) (*mat.TriDense, error) {
	start := time.Now()
	l, err := t.Backend.Cholesky(a)
	t.lapack += time.Since(start)
	return l, err
}

// BenchmarkGPTQ times one 4-bit, group-128, symmetric, act-order GPTQ of a
// layer, and reports the time spent in the backend: Cholesky (LAPACK) and
// Dgemm (BLAS: the triangular inverse's products and the lazy batch
// updates), and their share of the whole.
func BenchmarkGPTQ(b *testing.B) {
	shapes := []struct{ out, in int }{{1024, 1024}}
	if *largeBench {
		shapes = append(shapes, struct{ out, in int }{4096, 4096}, struct{ out, in int }{11008, 4096})
	}
	for _, sh := range shapes {
		b.Run(fmt.Sprintf("%dx%d", sh.out, sh.in), func(b *testing.B) {
			k := &timedBackend{Backend: kernels.Default()}
			w, c := mattest.BenchProblem(k.Backend, sh.out, sh.in)
			cfg := Config{Bits: 4, GroupSize: 128, Sym: true, ActOrder: true}
			for b.Loop() {
				if _, err := GPTQ(k, w, c, 2*sh.in, cfg); err != nil {
					b.Fatal(err)
				}
			}
			n := float64(b.N)
			per := b.Elapsed().Seconds() / n
			b.ReportMetric(k.lapack.Seconds()/n, "lapack-s")
			b.ReportMetric(k.blas.Seconds()/n, "blas-s")
			b.ReportMetric(100*(k.lapack+k.blas).Seconds()/n/per, "backend-%")
		})
	}
}

// BenchmarkRTN times round-to-nearest of a 4096 × 4096 layer, 4 bits,
// group 128.
func BenchmarkRTN(b *testing.B) {
	w := mattest.RandDense(newRNG(1), 4096, 4096)
	for b.Loop() {
		if _, err := RTN(w, Config{Bits: 4, GroupSize: 128}); err != nil {
			b.Fatal(err)
		}
	}
}
