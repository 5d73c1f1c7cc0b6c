package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rankzip/rankzip/activities"
	"github.com/rankzip/rankzip/calib"
	"github.com/rankzip/rankzip/compress"
	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/model"
	"github.com/rankzip/rankzip/model/safetensors"
	"github.com/rankzip/rankzip/recipe"
	"github.com/rankzip/rankzip/tokenizer"
)

// textFixture is the DuckDB-written text Parquet of the tokenizer's tests
// (4560 rows in 3 row groups; columns id, text, score, tags).
var textFixture = filepath.Join("..", "..", "tokenizer", "testdata", "text", "texts.parquet")

// tokModel links stories260K and the made-up tokenizer of
// testdata/stories260K-tokenizer into one model directory.
func tokModel(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "model")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"stories260K/config.json", "stories260K/model.safetensors", "stories260K-tokenizer/tokenizer.json", "stories260K-tokenizer/tokenizer_config.json"} {
		src, err := filepath.Abs(needFixture(t, f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(src, filepath.Join(dir, filepath.Base(f))); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// --prompt prints the decoding of the prompt's ids and the ids --prompt-ids
// generates from them.
func TestGeneratePrompt(t *testing.T) {
	dir := tokModel(t)
	const prompt = "Once upon a time, the little dog"
	out, _, err := rankzip("generate", "--model", dir, "--prompt", prompt, "--max-new", "8", "--stop", "600")
	if err != nil {
		t.Fatal(err)
	}
	tok, err := tokenizer.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	ids := tok.Encode(prompt, true)
	var s []string
	for _, v := range ids {
		s = append(s, strconv.Itoa(int(v)))
	}
	gen, _, err := rankzip("generate", "--model", dir, "--prompt-ids", strings.Join(s, ","), "--max-new", "8", "--stop", "600")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range strings.Split(strings.TrimSpace(gen), ",") {
		v, err := strconv.Atoi(f)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, int32(v))
	}
	if want := tok.Decode(ids, true) + "\n"; out != want {
		t.Errorf("generate --prompt printed %q, want %q", out, want)
	}
	if !strings.HasPrefix(out, prompt) {
		t.Errorf("the output does not start with the prompt: %q", out)
	}

	_, _, err = rankzip("generate", "--model", needFixture(t, "stories260K"), "--prompt", prompt)
	if err == nil || !strings.Contains(err.Error(), filepath.Join(needFixture(t, "stories260K"), "tokenizer.json")+" does not exist") {
		t.Errorf("a model without tokenizer.json: %v", err)
	}
	if _, _, err := rankzip("generate", "--model", dir, "--prompt", prompt, "--prompt-ids", "1"); err != errUsage {
		t.Errorf("--prompt with --prompt-ids: %v", err)
	}
}

func textRecipe(t *testing.T, dir, model, text, cal, out string) string {
	t.Helper()
	r := fmt.Sprintf(`model: %s
calibration: {data: %s, %s}
evaluation: {data: %s, text_column: text, sequences: 4}
output: %s
stages:
  - {method: svd, variant: whiten, keep_params: 0.8, rank_search: uniform}
`, model, text, cal, text, out)
	f, err := os.CreateTemp(dir, "recipe*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := os.WriteFile(f.Name(), []byte(r), 0o644); err != nil {
		t.Fatal(err)
	}
	return f.Name()
}

// textRecords returns the modification times of the store's tokenized text
// datasets by key.
func textRecords(t *testing.T, storeDir string) map[string]time.Time {
	t.Helper()
	got := map[string]time.Time{}
	entries, err := os.ReadDir(filepath.Join(storeDir, "keys", "text-data"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		info, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		got[e.Name()] = info.ModTime()
	}
	return got
}

// A recipe naming a text Parquet (DuckDB, several row groups) runs end to
// end through rankzip run: its checkpoint is byte for byte the direct path's
// on the rows "rankzip calib import --tokenizer" makes of the same text; a
// second job on the same data does not tokenize again; bad text data is
// refused before the job starts.
func TestRunTextRecipe(t *testing.T) {
	if testing.Short() {
		t.Skip("compresses a model on the embedded server")
	}
	dir := t.TempDir()
	mdir := tokModel(t)
	text, err := filepath.Abs(textFixture)
	if err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(dir, "state")
	storeDir := filepath.Join(state, "store")
	cal := "text_column: text, seq_len: 64, sequences: 16"

	pa := textRecipe(t, dir, mdir, text, cal, filepath.Join(dir, "outA"))
	out, _, err := rankzip("run", pa, "--state", state)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	t.Logf("rankzip run:\n%s", out)
	if !strings.Contains(out, "ppl") {
		t.Errorf("no evaluation in the result:\n%s", out)
	}
	recs := textRecords(t, storeDir)
	if len(recs) != 2 { // calibration and evaluation
		t.Errorf("%d tokenized datasets in the store, want 2: %v", len(recs), recs)
	}
	got, err := os.ReadFile(filepath.Join(dir, "outA", "model.safetensors"))
	if err != nil {
		t.Fatal(err)
	}

	// The direct path on calib import's rows.
	calPath := filepath.Join(dir, "calib.parquet")
	if _, _, err := rankzip("calib", "import", "--from", text, "--tokenizer", mdir, "--seq-len", "64", "--sequences", "16", "--quiet", "--out", calPath); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, directText(t, pa, calPath)) {
		t.Error("the text recipe's checkpoint differs from the direct path's on calib import's rows")
	}

	// Another job on the same text: found in the store.
	pb := textRecipe(t, dir, mdir, text, cal, filepath.Join(dir, "outB"))
	if out, _, err := rankzip("run", pb, "--state", state); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	recs2 := textRecords(t, storeDir)
	if len(recs2) != len(recs) {
		t.Errorf("the second job added tokenized datasets: %v, was %v", recs2, recs)
	}
	for k, m := range recs {
		if !recs2[k].Equal(m) {
			t.Errorf("the second job tokenized %s again", k)
		}
	}
	gotB, err := os.ReadFile(filepath.Join(dir, "outB", "model.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(gotB, got) {
		t.Error("the second job's checkpoint differs from the first's")
	}

	// Bad input: refused before the job starts, naming file and column.
	for col, want := range map[string]string{"body": `no column "body"`, "score": `column "score" is DOUBLE, not a string column`} {
		p := textRecipe(t, dir, mdir, text, "text_column: "+col+", seq_len: 64, sequences: 16", filepath.Join(dir, "outC"))
		_, _, err := rankzip("run", p, "--state", state)
		if err == nil || !strings.Contains(err.Error(), text) || !strings.Contains(err.Error(), want) {
			t.Errorf("text_column %s: %v", col, err)
		}
	}
}

// directText runs the recipe's stage with compress.Run on the first
// sequences of the token dataset calPath and returns the float32 checkpoint.
func directText(t *testing.T, recipePath, calPath string) []byte {
	t.Helper()
	job, err := recipe.Load(recipePath)
	if err != nil {
		t.Fatal(err)
	}
	m, err := model.Load(job.Recipe.Model, kernels.Default())
	if err != nil {
		t.Fatal(err)
	}
	ds, err := calib.Open(calPath)
	if err != nil {
		t.Fatal(err)
	}
	defer ds.Close()
	seqs, err := ds.Read(job.Recipe.Calibration.Sequences)
	if err != nil {
		t.Fatal(err)
	}
	opts, err := activities.CompressOptions(job.Recipe)
	if err != nil {
		t.Fatal(err)
	}
	res, err := compress.Run(context.Background(), m, seqs, opts, nil)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "direct")
	if err := model.Save(res.Model, out, safetensors.F32); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(out, "model.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}
