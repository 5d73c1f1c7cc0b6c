package main

import (
	"bytes"
	"compress/gzip"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/rankzip/rankzip/calib"
)

// llama31Dir lays out the Llama 3.1 tokenizer of the tokenizer package's
// testdata as a model directory would hold it.
func llama31Dir(t *testing.T) string {
	t.Helper()
	src := filepath.Join("..", "..", "tokenizer", "testdata", "llama3.1")
	f, err := os.Open(filepath.Join(src, "tokenizer.json.gz"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	data, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "tokenizer.json"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := os.ReadFile(filepath.Join(src, "tokenizer_config.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "tokenizer_config.json"), cfg, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestTokenizeCommand(t *testing.T) {
	dir := llama31Dir(t)
	tok := func(stdin string, args ...string) string {
		t.Helper()
		var out, errOut bytes.Buffer
		if err := runTokenize(append([]string{"--tokenizer", dir}, args...), strings.NewReader(stdin), &out, &errOut); err != nil {
			t.Fatalf("%v: %v %s", args, err, errOut.String())
		}
		return out.String()
	}
	in := `{"text": "Hello world"}` + "\n\n" + `{"text": "<|begin_of_text|>a <b> 😀"}` + "\n"
	ids := tok(in)
	if want := "{\"input_ids\":[128000,9906,1917]}\n{\"input_ids\":[128000,128000,64,366,65,29,91416]}\n"; ids != want {
		t.Fatalf("got %q, want %q", ids, want)
	}
	if got := tok(`{"text": "Hello world"}`, "--no-special"); got != "{\"input_ids\":[9906,1917]}\n" {
		t.Fatalf("--no-special: %q", got)
	}
	if got, want := tok(ids, "--decode"), "{\"text\":\"<|begin_of_text|>Hello world\"}\n{\"text\":\"<|begin_of_text|><|begin_of_text|>a <b> 😀\"}\n"; got != want {
		t.Fatalf("--decode: got %q, want %q", got, want)
	}
	if got, want := tok(ids, "--decode", "--no-special"), "{\"text\":\"Hello world\"}\n{\"text\":\"a <b> 😀\"}\n"; got != want {
		t.Fatalf("--decode --no-special: got %q, want %q", got, want)
	}
	var out, errOut bytes.Buffer
	if err := runTokenize([]string{"--tokenizer", dir}, strings.NewReader(`{"txt": 1}`), &out, &errOut); err == nil || !strings.Contains(err.Error(), "line 1") {
		t.Fatalf("bad line: %v", err)
	}
	if err := runTokenize([]string{"--tokenizer", t.TempDir()}, strings.NewReader(""), &out, &errOut); err == nil || !strings.Contains(err.Error(), "no tokenizer.json") {
		t.Fatalf("no tokenizer.json: %v", err)
	}
}

func TestCalibImportText(t *testing.T) {
	dir := llama31Dir(t)
	fixture := filepath.Join("..", "..", "tokenizer", "testdata", "text", "texts.parquet") // DuckDB, 3 row groups
	out := filepath.Join(t.TempDir(), "calib.parquet")
	stdout, stderr, err := rankzip("calib", "import", "--from", fixture, "--tokenizer", dir, "--seq-len", "256", "--sequences", "5", "--out", out)
	if err != nil {
		t.Fatalf("%v\n%s", err, stderr)
	}
	if !strings.Contains(stdout, "5 sequences") || !strings.Contains(stderr, "%") {
		t.Fatalf("stdout %q stderr %q", stdout, stderr)
	}
	ds, err := calib.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	rows, err := ds.Read(0)
	ds.Close()
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 5 {
		t.Fatalf("%d rows", len(rows))
	}
	for i, r := range rows {
		// Each row starts with <|begin_of_text|>; documents end with <|eot_id|> (eos_token).
		if len(r) != 256 || r[0] != 128000 {
			t.Fatalf("row %d: %d ids starting %v", i, len(r), r[:3])
		}
	}
	if !slices.Contains(rows[0], 128009) {
		t.Fatal("no <|eot_id|> between documents")
	}
	_, _, err = rankzip("calib", "import", "--from", fixture, "--text-column", "tags", "--tokenizer", dir, "--out", out, "--quiet")
	if err == nil || !strings.Contains(err.Error(), `column "tags" is a group or list`) {
		t.Fatalf("list column: %v", err)
	}
	_, _, err = rankzip("calib", "import", "--from", fixture, "--tokenizer", t.TempDir(), "--out", out)
	if err == nil || !strings.Contains(err.Error(), "no tokenizer.json") {
		t.Fatalf("no tokenizer: %v", err)
	}
}
