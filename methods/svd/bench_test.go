package svd

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
			w, c := mattest.BenchProblem(k, sh.out, sh.in)

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
