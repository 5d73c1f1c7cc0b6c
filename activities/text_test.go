package activities

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.temporal.io/sdk/temporal"

	"github.com/rankzip/rankzip/calib"
	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/recipe"
	"github.com/rankzip/rankzip/store"
	"github.com/rankzip/rankzip/tokenizer"
)

// textJob loads a recipe on stories260K with the made-up tokenizer of
// testdata/stories260K-tokenizer and the DuckDB-written text Parquet of the
// tokenizer's tests (3 row groups) as calibration and evaluation data.
func textJob(t *testing.T, dir, calibration string) recipe.Job {
	t.Helper()
	fx, err := filepath.Abs("../testdata")
	if err != nil {
		t.Fatal(err)
	}
	text, err := filepath.Abs("../tokenizer/testdata/text/texts.parquet")
	if err != nil {
		t.Fatal(err)
	}
	mdir := filepath.Join(dir, "model")
	if err := os.MkdirAll(mdir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"stories260K/config.json", "stories260K/model.safetensors", "stories260K-tokenizer/tokenizer.json", "stories260K-tokenizer/tokenizer_config.json"} {
		l := filepath.Join(mdir, filepath.Base(f))
		if _, err := os.Lstat(l); err == nil {
			continue
		}
		if err := os.Symlink(filepath.Join(fx, f), l); err != nil {
			t.Fatal(err)
		}
	}
	r := fmt.Sprintf(`model: model
calibration: {data: %s, %s}
evaluation: {data: %s, text_column: text, sequences: 2}
output: out
stages: [{method: svd, targets: ["mlp.*"], keep_params: 0.8, rank_search: uniform}]
`, text, calibration, text)
	p := filepath.Join(dir, "recipe.yaml")
	if err := os.WriteFile(p, []byte(r), 0o644); err != nil {
		t.Fatal(err)
	}
	job, err := recipe.Load(p)
	if err != nil {
		t.Fatal(err)
	}
	return *job
}

func textActivities(t *testing.T, storeDir string) (*Activities, *bytes.Buffer) {
	t.Helper()
	s, err := store.Open(storeDir)
	if err != nil {
		t.Fatal(err)
	}
	var log bytes.Buffer
	return &Activities{Store: s, Backend: kernels.Default(), HeartbeatEvery: 5 * time.Millisecond, Log: slog.New(slog.NewTextHandler(&log, nil))}, &log
}

// Text calibration data is tokenized and packed as "rankzip calib import
// --tokenizer" does, once: the activities of the job and of a later job (another
// worker on the same store) find the token rows in the store.
func TestTextCalibrationTokenizedOnce(t *testing.T) {
	dir := t.TempDir()
	job := textJob(t, dir, "text_column: text, seq_len: 64, sequences: 8")
	acts, log := textActivities(t, filepath.Join(dir, "store"))

	seqs, ref, err := acts.calibration(job)
	if err != nil {
		t.Fatal(err)
	}
	if ref.IsZero() || len(seqs) != 8 || len(seqs[0]) != 64 {
		t.Fatalf("calibration: ref %+v, %d sequences of %d", ref, len(seqs), len(seqs[0]))
	}
	// The same rows as calib import's.
	tok, err := tokenizer.Load(job.Recipe.Model)
	if err != nil {
		t.Fatal(err)
	}
	eos, _ := tok.EOS()
	prefix, _ := tok.SpecialTokens()
	want := filepath.Join(dir, "want.parquet")
	if _, err := calib.ImportText(calib.TextImport{From: job.Calibration.Path, Column: "text", Out: want, Encoder: tok, EOS: eos, Prefix: prefix, SeqLen: 64, Sequences: 8}); err != nil {
		t.Fatal(err)
	}
	ds, err := calib.Open(want)
	if err != nil {
		t.Fatal(err)
	}
	wseqs, err := ds.Read(8)
	ds.Close()
	if err != nil {
		t.Fatal(err)
	}
	for i := range wseqs {
		if !slices.Equal(seqs[i], wseqs[i]) {
			t.Fatalf("row %d differs from calib import's:\n%v\n%v", i, seqs[i], wseqs[i])
		}
	}
	if seqs[0][0] != 1 {
		t.Errorf("a row starts with %d, not the tokenizer's BOS 1", seqs[0][0])
	}

	ins, _, err := exec[InspectOutput](t, acts, nil, acts.Inspect, InspectInput{Job: job})
	if err != nil {
		t.Fatal(err)
	}
	if ins.Calibration != ref {
		t.Errorf("Inspect names the token rows %+v, want %+v", ins.Calibration, ref)
	}
	q, _, err := exec[Quality](t, acts, nil, acts.Evaluate, EvaluateInput{Job: job, Export: ExportOutput{Dir: job.Recipe.Model}})
	if err != nil {
		t.Fatal(err)
	}
	if q.Compressed == nil || q.Compressed.Tokens != 2*63 || q.Data.IsZero() {
		t.Errorf("evaluation on text: %+v, rows %+v", q.Compressed, q.Data)
	}
	if n := strings.Count(log.String(), "msg=tokenized"); n != 2 {
		t.Errorf("tokenized %d times (calibration once, evaluation once), want 2:\n%s", n, log)
	}

	// Another worker on the same store, another job on the same data.
	job2 := textJob(t, filepath.Join(dir, "other"), "text_column: text, seq_len: 64, sequences: 8")
	if job2.ID == job.ID {
		t.Fatal("the second job is the first")
	}
	acts2, log2 := textActivities(t, filepath.Join(dir, "store"))
	seqs2, ref2, err := acts2.calibration(job2)
	if err != nil {
		t.Fatal(err)
	}
	if ref2 != ref || !slices.EqualFunc(seqs2, seqs, slices.Equal) {
		t.Errorf("the second job's rows differ: %+v, want %+v", ref2, ref)
	}
	if strings.Contains(log2.String(), "tokenized") {
		t.Errorf("the second job tokenized again:\n%s", log2)
	}
}

// More sequences than the text gives: a bad-input error naming the file and
// the counts, and nothing stored.
func TestTextCalibrationTooShort(t *testing.T) {
	dir := t.TempDir()
	job := textJob(t, dir, "text_column: text, seq_len: 512, sequences: 100000")
	acts, _ := textActivities(t, filepath.Join(dir, "store"))
	_, _, err := acts.calibration(job)
	var ae *temporal.ApplicationError
	if err == nil || !errors.As(err, &ae) || ae.Type() != BadInput {
		t.Fatalf("got %v, want a BadInput error", err)
	}
	t.Log(err)
	for _, w := range []string{job.Calibration.Path, `column "text"`, "sequences of 512 tokens; the recipe asks for 100000"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error lacks %q: %v", w, err)
		}
	}
	if _, ok, _ := acts.Store.Lookup(calibTextKey(job)); ok {
		t.Error("a short dataset was stored")
	}
}

func calibTextKey(job recipe.Job) string {
	ti, _ := calibText(job)
	return ti.key(job)
}
