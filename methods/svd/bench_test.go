package svd

import (
	"flag"
	"fmt"
	"math"
	"testing"
	"time"

	"gonum.org/v1/gonum/mat"

	"github.com/rankzip/rankzip/kernels"
)

// benchProblem returns a random out × in W and the Gram C = XᵀX of 2·in
// random tokens whose channel scales decay from 1 to 10⁻² and are mixed by a
// random matrix, so C is full rank with a decaying spectrum.
func benchProblem(k kernels.Backend, out, in int) (*mat.Dense, *mat.SymDense) {
	rng := newRNG()
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

// largeBench adds the shapes of a 7B layer (minutes on two cores):
// go test -run XXX -bench Whiten -benchtime 1x ./methods/svd/ -args -large
var largeBench = flag.Bool("large", false, "also benchmark 4096×4096 and 11008×4096")

// BenchmarkWhiten times one whitened decomposition (rank in/4) on the
// default backend, and reports beside it the time of the bare backend calls
// it is built on, Cholesky of C and SVD of the out × in W S, timed on the
// same inputs in every iteration: overhead-% is what Whiten adds (the
// products W L and U_rᵀ W, copies, glue).
func BenchmarkWhiten(b *testing.B) {
	shapes := []struct{ out, in int }{{1024, 1024}, {2048, 2048}}
	if *largeBench {
		shapes = append(shapes, struct{ out, in int }{4096, 4096}, struct{ out, in int }{11008, 4096})
	}
	for _, sh := range shapes {
		b.Run(fmt.Sprintf("%dx%d", sh.out, sh.in), func(b *testing.B) {
			k := kernels.Default()
			w, c := benchProblem(k, sh.out, sh.in)

			ws := mat.NewDense(sh.out, sh.in, nil)
			var chol, svdTime time.Duration
			for b.Loop() {
				// The bare calls, untimed by the benchmark but timed here on
				// the same inputs, interleaved so that both see the same
				// machine load.
				b.StopTimer()
				start := time.Now()
				l, err := k.Cholesky(c)
				if err != nil {
					b.Fatal(err)
				}
				chol += time.Since(start)
				k.Dgemm(false, false, 1, w, mat.DenseCopyOf(l), 0, ws)
				start = time.Now()
				if _, _, _, err := k.SVD(ws); err != nil {
					b.Fatal(err)
				}
				svdTime += time.Since(start)
				b.StartTimer()

				r, err := Whiten(k, w, c, sh.in/4)
				if err != nil {
					b.Fatal(err)
				}
				if r.Path != PathCholesky {
					b.Fatalf("path %v", r.Path)
				}
			}
			n := float64(b.N)
			per := b.Elapsed().Seconds() / n
			bare := (chol + svdTime).Seconds() / n
			b.ReportMetric(chol.Seconds()/n, "cholesky-s")
			b.ReportMetric(svdTime.Seconds()/n, "svd-s")
			b.ReportMetric(bare, "bare-s")
			b.ReportMetric(100*(per-bare)/bare, "overhead-%")
		})
	}
}
