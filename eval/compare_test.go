package eval_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"math"
	"path/filepath"
	"testing"

	"github.com/rankzip/rankzip/calib"
	"github.com/rankzip/rankzip/compress"
	"github.com/rankzip/rankzip/eval"
	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/model"
	"github.com/rankzip/rankzip/model/safetensors"
)

// compareTol bounds the relative difference between the block-by-block and
// the whole-model evaluation: the same float32 operations on batches of
// other sizes, scored in float64.
const compareTol = 1e-6

// Compare, one block at a time from the checkpoints' readers, gives the
// reports of today's whole-model Evaluate: for stories260K against itself,
// and for a native export of it with factored (whitened SVD of the MLP),
// Palu-grouped (k/v) and 8-bit quantized (q/o) layers; in memory or
// spilled, in chunks of one or several sequences.
func TestCompareMatchesWholeModel(t *testing.T) {
	k := kernels.Default()
	origDir := filepath.Join("..", "testdata", "stories260K")
	orig, err := model.Load(origDir, k)
	if err != nil {
		t.Fatal(err)
	}
	native := filepath.Join(t.TempDir(), "native")
	if err := model.Save(compressed(t, orig), native, safetensors.F32); err != nil {
		t.Fatal(err)
	}
	ds, err := calib.Open(filepath.Join("..", "testdata", "samples", "eval.parquet"))
	if err != nil {
		t.Fatal(err)
	}
	defer ds.Close()
	const n = 4
	for _, dir := range []string{origDir, native} {
		comp, err := model.Load(dir, k)
		if err != nil {
			t.Fatal(err)
		}
		var wantDump bytes.Buffer
		want, err := eval.Evaluate(comp, orig, ds, n, &wantDump)
		if err != nil {
			t.Fatal(err)
		}
		wantBase, err := eval.Evaluate(orig, nil, ds, n, nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range []eval.Options{{}, {SpillBytes: 1, SpillDir: t.TempDir(), ChunkRows: 1}, {ChunkRows: 600}} {
			var dump bytes.Buffer
			o.Dump = &dump
			blocks := 0
			o.OnBlock = func(int) error { blocks++; return nil }
			got, gotBase := compareFromDisk(t, dir, origDir, ds, n, o)
			name := filepath.Base(dir)
			sameReport(t, name, got, want)
			sameReport(t, name+" baseline", gotBase, wantBase)
			if blocks != orig.Config.NumLayers {
				t.Errorf("%s: OnBlock called %d times, want %d", name, blocks, orig.Config.NumLayers)
			}
			d := maxRelDiff(dump.Bytes(), wantDump.Bytes())
			t.Logf("%s chunk rows %d spilled %v: nll %.9g (whole %.9g), logits differ by %.3g of the largest", name, o.ChunkRows, o.SpillBytes == 1, got.NLL, want.NLL, d)
			if !(d <= compareTol) {
				t.Errorf("%s %+v: dumped logits differ by %g relative to the largest (%d and %d bytes)", name, o, d, dump.Len(), wantDump.Len())
			}
		}
		if dir == native && !(*want.KL > 1e-3) {
			t.Errorf("the compressed model's KL %v: want a real difference to compare", *want.KL)
		}
	}
}

// compressed is stories260K with the MLP factored, k/v Palu-grouped and
// q/o quantized to 8 bits, calibrated on its own samples.
func compressed(t *testing.T, m *model.Model) *model.Model {
	t.Helper()
	ctx := context.Background()
	cal, err := calib.Open(filepath.Join("..", "testdata", "samples", "calib.parquet"))
	if err != nil {
		t.Fatal(err)
	}
	defer cal.Close()
	seqs, err := cal.Read(16)
	if err != nil {
		t.Fatal(err)
	}
	lr, err := compress.Run(ctx, m, seqs, compress.Options{Method: "whiten", Targets: []string{"mlp.*"}, KeepParams: 0.9, RankSearch: "uniform"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	pl, err := compress.RunPalu(ctx, lr.Model, seqs, compress.PaluOptions{KVKeep: 0.75})
	if err != nil {
		t.Fatal(err)
	}
	q, err := compress.RunQuant(ctx, pl.Model, seqs, compress.QuantOptions{Method: "rtn", Bits: 8, GroupSize: 32, Sym: true, Targets: []string{"self_attn.q_proj", "self_attn.o_proj"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return q.Model
}

// compareFromDisk runs Compare on the checkpoints in dir and baseDir, each
// read block by block through model.Open.
func compareFromDisk(t *testing.T, dir, baseDir string, ds *calib.Dataset, n int, o eval.Options) (eval.Report, eval.Report) {
	t.Helper()
	var srcs []eval.Source
	for _, d := range []string{dir, baseDir} {
		r, err := model.Open(d)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		top, err := r.Model(kernels.Default())
		if err != nil {
			t.Fatal(err)
		}
		srcs = append(srcs, eval.Reader(r, top))
	}
	got, base, err := eval.Compare(srcs[0], srcs[1], ds, n, o)
	if err != nil {
		t.Fatal(err)
	}
	return got, base
}

func sameReport(t *testing.T, name string, got, want eval.Report) {
	t.Helper()
	if got.Sequences != want.Sequences || got.Tokens != want.Tokens || got.KVBytes != want.KVBytes {
		t.Errorf("%s: %d sequences, %d tokens, %d KV bytes; whole model %d, %d, %d", name,
			got.Sequences, got.Tokens, got.KVBytes, want.Sequences, want.Tokens, want.KVBytes)
	}
	if (got.KL == nil) != (want.KL == nil) {
		t.Fatalf("%s: KL %v, whole model %v", name, got.KL, want.KL)
	}
	vals := [][2]float64{{got.NLL, want.NLL}, {got.PPL, want.PPL}}
	if want.KL != nil {
		// Top-1 agreement is a count: a logit tie broken otherwise moves it.
		vals = append(vals, [2]float64{*got.KL, *want.KL}, [2]float64{*got.Top1Agree, *want.Top1Agree})
	}
	for i, v := range vals {
		if d := math.Abs(v[0]-v[1]) / math.Max(math.Abs(v[1]), 1e-300); !(d <= compareTol) && !(v[0] == v[1]) {
			t.Errorf("%s: value %d (nll, ppl, kl, top1) %.12g, whole model %.12g: relative difference %g > %g", name, i, v[0], v[1], d, compareTol)
		}
	}
}

// maxRelDiff is the largest difference between two float32 dumps relative
// to the largest magnitude in want (+Inf when their sizes differ).
func maxRelDiff(got, want []byte) float64 {
	if len(got) != len(want) || len(want) == 0 {
		return math.Inf(1)
	}
	var diff, scale float64
	for i := 0; i < len(want); i += 4 {
		g := float64(math.Float32frombits(binary.LittleEndian.Uint32(got[i:])))
		w := float64(math.Float32frombits(binary.LittleEndian.Uint32(want[i:])))
		diff, scale = math.Max(diff, math.Abs(g-w)), math.Max(scale, math.Abs(w))
	}
	return diff / scale
}
