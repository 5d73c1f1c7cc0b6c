package compress

import (
	"context"
	"flag"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rankzip/rankzip/calib"
	"github.com/rankzip/rankzip/eval"
	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/model"
)

// fixtures is the repository's testdata seen from this package.
const fixtures = "../testdata"

func needFixture(t testing.TB, rel string) string {
	t.Helper()
	p := filepath.Join(fixtures, rel)
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("test data %s missing from the repository: %v", p, err)
	}
	return p
}

// fixture loads stories260K, the first nCalib calibration and nEval
// evaluation sequences.
func fixture(t testing.TB, nCalib, nEval int) (*model.Model, [][]int32, [][]int32) {
	t.Helper()
	m, err := model.Load(needFixture(t, "stories260K"), kernels.Default())
	if err != nil {
		t.Fatal(err)
	}
	read := func(name string, n int) [][]int32 {
		ds, err := calib.Open(needFixture(t, "samples/"+name))
		if err != nil {
			t.Fatal(err)
		}
		defer ds.Close()
		s, err := ds.Read(n)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	return m, read("calib.parquet", nCalib), read("eval.parquet", nEval)
}

func relErr(a, b []float32) float64 {
	var num, den float64
	for i := range a {
		d := float64(a[i]) - float64(b[i])
		num += d * d
		den += float64(b[i]) * float64(b[i])
	}
	return math.Sqrt(num / den)
}

// measure evaluates c against the original m on seqs.
func measure(t testing.TB, m, c *model.Model, seqs [][]int32) eval.Report {
	acc := eval.NewAccumulator(m.Config.VocabSize)
	for _, s := range seqs {
		a, err := c.Forward([][]int32{s})
		if err != nil {
			t.Fatal(err)
		}
		b, err := m.Forward([][]int32{s})
		if err != nil {
			t.Fatal(err)
		}
		if err := acc.Add(s, a, b); err != nil {
			t.Fatal(err)
		}
	}
	return acc.Report(true)
}

// At full rank every method and mode reproduces the model.
func TestFullRankReproducesLogits(t *testing.T) {
	m, cal, ev := fixture(t, 4, 2)
	want, err := m.Forward(ev)
	if err != nil {
		t.Fatal(err)
	}
	for _, method := range Methods {
		for _, mode := range []calib.Mode{calib.Sequential, calib.Original} {
			res, err := Run(context.Background(), m, cal, Options{Method: method, Rank: 1 << 20, Mode: mode}, nil)
			if err != nil {
				t.Fatalf("%s/%s: %v", method, mode, err)
			}
			got, err := res.Model.Forward(ev)
			if err != nil {
				t.Fatal(err)
			}
			const tol = 1e-4 // end to end in float32
			if e := relErr(got, want); !(e < tol) {
				t.Errorf("%s/%s at full rank: logits differ by %.3g, want < %g", method, mode, e, tol)
			}
		}
	}
}

var (
	tableSearches = flag.String("searches", "uniform,global,sensitivity", "rank searches of BenchmarkQualityTable")
	tableMethods  = flag.String("methods", strings.Join(Methods, ","), "methods of BenchmarkQualityTable")
)

// BenchmarkQualityTable prints KL(original ‖ compressed) and perplexity on
// eval.parquet for every method, budget and rank search, compressing all
// seven linears of stories260K calibrated on calib.parquet. Run it with
//
//	go test -run XXX -bench QualityTable -benchtime 1x ./compress/ [-args -searches global -methods whiten,plain]
func BenchmarkQualityTable(b *testing.B) {
	m, cal, ev := fixture(b, 128, 32)
	for b.Loop() {
		base := measure(b, m, m, ev)
		fmt.Printf("original: ppl %.3f on %d sequences (%d tokens); %d calibration sequences\n", base.PPL, base.Sequences, base.Tokens, len(cal))
		fmt.Printf("%-8s %-8s %5s %10s %10s %8s\n", "method", "search", "keep", "kl", "ppl", "params")
		for _, keep := range []float64{0.8, 0.6, 0.4} {
			for _, search := range strings.Split(*tableSearches, ",") {
				for _, method := range strings.Split(*tableMethods, ",") {
					res, err := Run(context.Background(), m, cal, Options{Method: method, KeepParams: keep, RankSearch: search}, nil)
					if err != nil {
						b.Fatal(err)
					}
					r := measure(b, m, res.Model, ev)
					fmt.Printf("%-8s %-8s %5.2f %10.4f %10.2f %8.3f\n", method, search, keep, *r.KL, r.PPL, float64(res.Params)/float64(res.Total))
				}
			}
		}
	}
}
