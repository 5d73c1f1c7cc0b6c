package quant

import (
	"flag"
	"fmt"
	"math"
	"testing"
	"time"

	"gonum.org/v1/gonum/mat"

	"github.com/rankzip/rankzip/kernels"
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

// benchProblem returns a random out × in W and the Gram C = XᵀX of 2·in
// random tokens whose channel scales decay from 1 to 10⁻² and are mixed by a
// random matrix (as methods/svd's benchmarks).
func benchProblem(k kernels.Backend, out, in int) (*mat.Dense, *mat.SymDense) {
	rng := newRNG(1)
	w := randDense(rng, out, in)
	tokens := 2 * in
	z := randDense(rng, tokens, in)
	raw := z.RawMatrix()
	for i := range tokens {
		for j := range in {
			raw.Data[i*raw.Stride+j] *= math.Pow(1e-2, float64(j)/float64(in))
		}
	}
	mix := randDense(rng, in, in)
	mix.Scale(1/math.Sqrt(float64(in)), mix)
	x := mat.NewDense(tokens, in, nil)
	k.Dgemm(false, false, 1, z, mix, 0, x)
	g := mat.NewDense(in, in, nil)
	k.Dgemm(true, false, 1, x, x, 0, g)
	c := mat.NewSymDense(in, nil)
	for i := range in {
		for j := i; j < in; j++ {
			c.SetSym(i, j, 0.5*(g.At(i, j)+g.At(j, i)))
		}
	}
	return w, c
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
			w, c := benchProblem(k.Backend, sh.out, sh.in)
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
	w := randDense(newRNG(1), 4096, 4096)
	for b.Loop() {
		if _, err := RTN(w, Config{Bits: 4, GroupSize: 128}); err != nil {
			b.Fatal(err)
		}
	}
}
