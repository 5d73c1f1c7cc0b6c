package compress

import (
	"context"
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/model"
	"github.com/rankzip/rankzip/model/safetensors"
	"github.com/rankzip/rankzip/model/synth"
)

var (
	depthHidden  = flag.Int("depth-hidden", 1024, "hidden size of BenchmarkRankSearchDepth's synthetic checkpoints")
	depthLayers  = flag.String("depth-layers", "4,8", "depths of BenchmarkRankSearchDepth")
	depthTargets = flag.String("depth-targets", "self_attn.o_proj,mlp.down_proj", "targets of BenchmarkRankSearchDepth (empty: all seven)")
	depthSeqLen  = flag.Int("depth-seqlen", 64, "calibration sequence length of BenchmarkRankSearchDepth")
)

// BenchmarkRankSearchDepth prints the seconds of the whole-model
// sensitivity search and of the local search (NewPlan: the calibration
// pass plus the search) on synthetic Llama checkpoints of growing depth,
// side by side in one run, next to the global search (the calibration pass
// and one decomposition per matrix, a floor for any measured search). Run it with
//
//	go test -run XXX -bench RankSearchDepth -benchtime 1x -timeout 60m ./compress/ [-args -depth-layers 4,8 -depth-hidden 1024]
//
// Measured with -depth-targets self_attn.o_proj on 2 shared cores (load
// ~10, so ±50%): 4 layers 26.2 s sensitivity, 52.8 s local, 18.7 s global;
// 8 layers 146.1 s, 104.3 s and 31.7 s. Less the global floor, the whole-
// model search grew 15× from 4 to 8 layers and the local one 2.1×.
func BenchmarkRankSearchDepth(b *testing.B) {
	h := *depthHidden
	shape := synth.Shape{Hidden: h, Intermediate: h * 11 / 4, Heads: h / 64, KVHeads: max(1, h/256), Vocab: 4096,
		MaxPositions: 4096, RopeTheta: 10000}
	var targets []string
	if *depthTargets != "" {
		targets = strings.Split(*depthTargets, ",")
	}
	for b.Loop() {
		fmt.Printf("hidden %d intermediate %d, targets %v, keep 0.6, %d-token sequences\n", shape.Hidden, shape.Intermediate, *depthTargets, *depthSeqLen)
		fmt.Printf("%6s %14s %10s %10s %8s\n", "layers", "sensitivity_s", "local_s", "global_s", "sens/loc")
		for _, f := range strings.Split(*depthLayers, ",") {
			n, err := strconv.Atoi(f)
			if err != nil {
				b.Fatalf("-depth-layers: %v", err)
			}
			m, seqs := depthModel(b, shape, n)
			secs := map[string]float64{}
			for _, search := range []string{"sensitivity", "local", "global"} {
				t0 := time.Now()
				if _, err := NewPlan(context.Background(), m, seqs, Options{Method: "whiten", Targets: targets, KeepParams: 0.6, RankSearch: search}); err != nil {
					b.Fatal(err)
				}
				secs[search] = time.Since(t0).Seconds()
			}
			fmt.Printf("%6d %14.1f %10.1f %10.1f %8.2f\n", n, secs["sensitivity"], secs["local"], secs["global"], secs["sensitivity"]/secs["local"])
		}
	}
}

// depthModel writes and loads a synthetic checkpoint of the shape at depth
// n, with random calibration sequences covering its widest input.
func depthModel(b *testing.B, s synth.Shape, n int) (*model.Model, [][]int32) {
	s.Layers = n
	dir := filepath.Join(b.TempDir(), "m")
	k := kernels.Default()
	if err := synth.Write(dir, synth.Options{Shape: s, Seed: 1, DType: safetensors.F32}, k); err != nil {
		b.Fatal(err)
	}
	m, err := model.Load(dir, k)
	if err != nil {
		b.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 1))
	var seqs [][]int32
	for tokens := 0; tokens < s.Intermediate+*depthSeqLen; tokens += *depthSeqLen {
		seq := make([]int32, *depthSeqLen)
		for i := range seq {
			seq[i] = int32(rng.IntN(s.Vocab))
		}
		seqs = append(seqs, seq)
	}
	return m, seqs
}

func TestRelSquaredError(t *testing.T) {
	st := func(x ...float32) *model.States { return &model.States{X: x, Dim: 2, Starts: []int{0, len(x) / 2}} }
	for _, tc := range []struct {
		got, want *model.States
		err       float64
	}{
		{st(1, 2, 3, 4), st(1, 2, 3, 4), 0},
		{st(1, 0, 0, 0), st(0, 1, 0, 1), 1.5}, // (1 + 1 + 1) / 2
		{st(3, 4), st(0, 0), 25},              // no reference energy: the absolute error
	} {
		const tol = 1e-12
		if e := relSquaredError(tc.got, tc.want); math.Abs(e-tc.err) > tol*math.Max(1, tc.err) {
			t.Errorf("relSquaredError(%v, %v) = %v, want %v", tc.got.X, tc.want.X, e, tc.err)
		}
	}
}
