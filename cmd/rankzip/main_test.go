package main

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/rankzip/rankzip/calib"
	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/model"
)

// fixtures is the repository's testdata seen from this package.
const fixtures = "../../testdata"

// needFixture returns the path of a file of testdata, failing the test when
// it is missing.
func needFixture(t *testing.T, rel string) string {
	t.Helper()
	p := filepath.Join(fixtures, rel)
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("test data %s missing from the repository: %v", p, err)
	}
	return p
}

// rankzip runs the CLI in-process and returns stdout, stderr and the error.
func rankzip(args ...string) (string, string, error) {
	var out, errOut bytes.Buffer
	err := run(args, &out, &errOut)
	return out.String(), errOut.String(), err
}

// referencePPL computes the perplexity of the reference logits independently
// of the eval package: every position but the first of each sequence.
func referencePPL(t *testing.T, logits []float32, seqs [][]int32, vocab int) float64 {
	var nll float64
	var n int
	for s, ids := range seqs {
		for p := 0; p+1 < len(ids); p++ {
			row := logits[(s*len(ids)+p)*vocab : (s*len(ids)+p+1)*vocab]
			var sum float64
			for _, v := range row {
				sum += math.Exp(float64(v))
			}
			nll += math.Log(sum) - float64(row[ids[p+1]])
			n++
		}
	}
	return math.Exp(nll / float64(n))
}

func readF32(t *testing.T, path string) []float32 {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	v := make([]float32, len(b)/4)
	for i := range v {
		v[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return v
}

func TestEvalMatchesReferencePerplexity(t *testing.T) {
	modelDir := needFixture(t, "stories260K")
	data := needFixture(t, "samples/eval.parquet")
	ref := readF32(t, needFixture(t, "samples/eval_logits.f32"))
	ds, err := calib.Open(data)
	if err != nil {
		t.Fatal(err)
	}
	seqs, err := ds.Read(2)
	ds.Close()
	if err != nil {
		t.Fatal(err)
	}
	want := referencePPL(t, ref, seqs, 512)

	dump := filepath.Join(t.TempDir(), "logits.f32")
	out, _, err := rankzip("eval", "--model", modelDir, "--data", data, "--sequences", "2", "--json", "--dump-logits", dump)
	if err != nil {
		t.Fatal(err)
	}
	var rep map[string]float64
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("--json output %q: %v", out, err)
	}
	if rep["sequences"] != 2 || rep["tokens"] != 2*255 {
		t.Errorf("sequences %v tokens %v, want 2 and 510", rep["sequences"], rep["tokens"])
	}
	const pplTol = 1e-5 // the logits agree to ~2e-6 relative
	if e := math.Abs(rep["ppl"]-want) / want; !(e < pplTol) {
		t.Errorf("ppl %v, reference logits give %v (relative difference %.3g)", rep["ppl"], want, e)
	}
	if math.Abs(math.Exp(rep["nll"])-rep["ppl"]) > 1e-9*rep["ppl"] {
		t.Errorf("ppl %v is not exp(nll %v)", rep["ppl"], rep["nll"])
	}
	got := readF32(t, dump)
	if len(got) != len(ref) {
		t.Fatalf("dumped %d logits, want %d", len(got), len(ref))
	}
	var num, den float64
	for i := range got {
		num += math.Pow(float64(got[i]-ref[i]), 2)
		den += math.Pow(float64(ref[i]), 2)
	}
	if e := math.Sqrt(num / den); !(e < 1e-4) {
		t.Errorf("dumped logits differ from the reference by %.3g", e)
	}
}

func TestEvalBaselineAgainstItself(t *testing.T) {
	modelDir := needFixture(t, "stories260K")
	data := needFixture(t, "samples/eval.parquet")
	out, _, err := rankzip("eval", "--model", modelDir, "--baseline", modelDir, "--data", data, "--sequences", "3", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var rep map[string]float64
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatal(err)
	}
	if math.Abs(rep["kl"]) > 1e-12 || rep["top1_agree"] != 1 {
		t.Errorf("a model against itself: kl %v top1 %v, want 0 and 1", rep["kl"], rep["top1_agree"])
	}
}

func TestEvalBadInput(t *testing.T) {
	modelDir := needFixture(t, "stories260K")
	dir := t.TempDir()
	long := make([]int32, 513)
	for i := range long {
		long[i] = 1
	}
	if err := calib.Write(filepath.Join(dir, "oov.parquet"), [][]int32{{1, 2, 3}, {1, 600, 2}}); err != nil {
		t.Fatal(err)
	}
	if err := calib.Write(filepath.Join(dir, "long.parquet"), [][]int32{long}); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "notparquet.parquet"), []byte("hello, not parquet at all"), 0o644); err != nil {
		t.Fatal(err)
	}
	// A checkpoint whose config contradicts its weights.
	bad := filepath.Join(dir, "badmodel")
	os.Mkdir(bad, 0o755)
	cfg, _ := os.ReadFile(filepath.Join(modelDir, "config.json"))
	os.WriteFile(filepath.Join(bad, "config.json"), bytes.Replace(cfg, []byte(`"hidden_size": 64`), []byte(`"hidden_size": 32`), 1), 0o644)
	st, _ := os.ReadFile(filepath.Join(modelDir, "model.safetensors"))
	os.WriteFile(filepath.Join(bad, "model.safetensors"), st, 0o644)

	for _, tc := range []struct {
		model, data, want string
	}{
		{modelDir, "oov.parquet", "oov.parquet row 1: sequence 0 position 1: token id 600 outside the vocabulary [0, 512)"},
		{modelDir, "long.parquet", "long.parquet row 0: sequence 0 has 513 tokens, more than max_position_embeddings 512"},
		{modelDir, "notparquet.parquet", "notparquet.parquet"},
		{modelDir, "missing.parquet", "missing.parquet"},
		{bad, "oov.parquet", `tensor "model.embed_tokens.weight" has shape [512 64], config.json implies [512 32]`},
	} {
		dump := filepath.Join(dir, "dump.f32")
		_, _, err := rankzip("eval", "--model", tc.model, "--data", filepath.Join(dir, tc.data), "--dump-logits", dump)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("eval %s: error %v\nwant it to contain %q", tc.data, err, tc.want)
		}
		if left, _ := filepath.Glob(filepath.Join(dir, "*dump.f32*")); len(left) != 0 {
			t.Errorf("eval %s: failed run left %v behind", tc.data, left)
		}
	}
}

func TestInspect(t *testing.T) {
	out, _, err := rankzip("inspect", needFixture(t, "stories260K-bf16-sharded"))
	if err != nil {
		t.Fatal(err)
	}
	// 512·64 embeddings + 64 final norm + 5 blocks of (2·64 norms + 64·64·2 q/o + 64·32·2 k/v + 3·64·172).
	for _, want := range []string{"parameters  260,032", "dtype       BF16 (100.0%)", "in 2 file(s)", "GQA: 8 heads, 4 KV heads, head_dim 8"} {
		if !strings.Contains(out, want) {
			t.Errorf("inspect output lacks %q:\n%s", want, out)
		}
	}
}

func TestCalibImport(t *testing.T) {
	src := needFixture(t, "samples/eval.jsonl")
	out := filepath.Join(t.TempDir(), "eval.parquet")
	if _, _, err := rankzip("calib", "import", "--from", src, "--out", out); err != nil {
		t.Fatal(err)
	}
	a, err := calib.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := calib.Open(needFixture(t, "samples/eval.parquet"))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	x, _ := a.Read(0)
	y, _ := b.Read(0)
	if len(x) != 32 || len(x) != len(y) {
		t.Fatalf("imported %d rows, fixture has %d", len(x), len(y))
	}
	for i := range x {
		if !equal(x[i], y[i]) {
			t.Fatalf("row %d differs from the fixture Parquet", i)
		}
	}
}

func equal(a, b []int32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// Two demos in different state directories run at the same time, each on
// the ports its state directory records.
func TestDemo(t *testing.T) {
	if testing.Short() {
		t.Skip("demo takes a few seconds")
	}
	var cmds []*exec.Cmd
	var outs []*syncBuffer
	for range 2 {
		cmd := cli("demo", "--state", t.TempDir())
		out := &syncBuffer{}
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cmds, outs = append(cmds, cmd), append(outs, out)
	}
	for i, cmd := range cmds {
		if err := cmd.Wait(); err != nil {
			t.Fatalf("demo %d: %v\n%s", i, err, outs[i])
		}
		for _, want := range []string{"float32", "bfloat16", "parameters  214,592", "started on the embedded server (127.0.0.1:"} {
			if !strings.Contains(outs[i].String(), want) {
				t.Errorf("demo %d output lacks %q:\n%s", i, want, outs[i])
			}
		}
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{{}, {"frobnicate"}, {"eval"}, {"eval", "--model", "x"}, {"inspect"}, {"calib"}} {
		if _, _, err := rankzip(args...); err == nil {
			t.Errorf("rankzip %q: want an error", args)
		}
	}
}

// Greedy generation through the KV cache picks, at every step, the argmax of
// the full forward pass over the sequence so far.
func TestGenerateMatchesForwardArgmax(t *testing.T) {
	dir := needFixture(t, "stories260K")
	out, _, err := rankzip("generate", "--model", dir, "--prompt-ids", "1,403,407", "--max-new", "6", "--stop", "600")
	if err != nil {
		t.Fatal(err)
	}
	m, err := model.Load(dir, kernels.Default())
	if err != nil {
		t.Fatal(err)
	}
	seq := []int32{1, 403, 407}
	var want []string
	for range 6 {
		logits, err := m.Forward([][]int32{seq})
		if err != nil {
			t.Fatal(err)
		}
		last := logits[(len(seq)-1)*512:]
		best := 0
		for i, v := range last {
			if v > last[best] {
				best = i
			}
		}
		seq = append(seq, int32(best))
		want = append(want, strconv.Itoa(best))
	}
	if got := strings.TrimSpace(out); got != strings.Join(want, ",") {
		t.Errorf("generate printed %q, the forward pass's argmax chain is %q", got, strings.Join(want, ","))
	}
}
