package recipe

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// textFixture is the DuckDB-written text Parquet of the tokenizer's tests:
// 4560 rows in 3 row groups; columns id BIGINT, text VARCHAR (one null),
// score DOUBLE, tags VARCHAR[].
const textFixture = "../tokenizer/testdata/text/texts.parquet"

// textModel makes a model directory of stories260K (linked) with the made-up
// tokenizer of testdata/stories260K-tokenizer (copied, so a test may change
// it); withTokenizer false leaves the tokenizer out.
func textModel(t *testing.T, withTokenizer bool) string {
	t.Helper()
	fx := needFixtures(t)
	dir := filepath.Join(t.TempDir(), "model")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"config.json", "model.safetensors"} {
		if err := os.Symlink(filepath.Join(fx, "stories260K", f), filepath.Join(dir, f)); err != nil {
			t.Fatal(err)
		}
	}
	if withTokenizer {
		for _, f := range TokenizerFiles {
			data, err := os.ReadFile(filepath.Join(fx, "stories260K-tokenizer", f))
			if err != nil {
				t.Fatalf("test data missing from the repository: %v", err)
			}
			if err := os.WriteFile(filepath.Join(dir, f), data, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	return dir
}

func textRecipe(model, cal, eval string) string {
	return "model: " + model + "\ncalibration: " + cal + "\n" + eval + "output: out\nstages:\n  - {method: svd, targets: [\"mlp.*\"], keep_params: 0.8, rank_search: uniform}\n"
}

func TestTextCalibration(t *testing.T) {
	model := textModel(t, true)
	text, err := filepath.Abs(textFixture)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	p := write(t, dir, textRecipe(model, "{data: "+text+", text_column: text, seq_len: 64, sequences: 8}",
		"evaluation: {data: "+text+", text_column: text, sequences: 4}\n"))
	job, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	c, e := job.Recipe.Calibration, job.Recipe.Evaluation
	if !c.IsText() || c.TextColumn != "text" || c.SeqLen != 64 || c.Sequences != 8 {
		t.Errorf("calibration: %+v", c)
	}
	if !e.IsText() || e.SeqLen != 64 || e.Sequences != 4 {
		t.Errorf("evaluation (seq_len defaults to calibration's): %+v", e)
	}
	if len(job.Tokenizer) != 2 || filepath.Base(job.Tokenizer[0].Path) != "tokenizer.json" || job.Tokenizer[0].SHA256 == "" {
		t.Errorf("tokenizer digests: %+v", job.Tokenizer)
	}
	// Another tokenizer is another job.
	tj := filepath.Join(model, "tokenizer.json")
	data, err := os.ReadFile(tj)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(tj, append(data, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
	job2, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if job2.ID == job.ID {
		t.Errorf("a changed tokenizer.json keeps the job id %s", job.ID)
	}

	// A plain text file needs no column.
	txt := filepath.Join(dir, "docs.txt")
	if err := os.WriteFile(txt, []byte("Once upon a time.\n\nThe end.\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	job3, err := Load(write(t, dir, textRecipe(model, "{data: docs.txt, seq_len: 64, sequences: 4}", "")))
	if err != nil {
		t.Fatal(err)
	}
	if c := job3.Recipe.Calibration; c.TextColumn != "text" || c.Data != txt {
		t.Errorf("text file calibration: %+v", c)
	}
}

// Bad text data and a missing or unreadable tokenizer are refused before
// the job starts, naming the file and the column.
func TestTextCalibrationErrors(t *testing.T) {
	model := textModel(t, true)
	noTok := textModel(t, false)
	badTok := textModel(t, true)
	tj := filepath.Join(badTok, "tokenizer.json")
	data, err := os.ReadFile(tj)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(tj, []byte(strings.Replace(string(data), `"type": "BPE"`, `"type": "WordPiece"`, 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	text, _ := filepath.Abs(textFixture)
	empty, _ := filepath.Abs("../tokenizer/testdata/text/empty.parquet")
	fx := needFixtures(t)
	tokens := filepath.Join(fx, "samples", "eval.parquet")
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "blank.txt"), []byte("\n \n\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, model, cal, eval string
		want                   []string
	}{
		{"no such column", model, "{data: " + text + ", text_column: body, seq_len: 64, sequences: 8}", "",
			[]string{text, `no column "body"`, "columns: id, text, score, tags"}},
		{"numeric column", model, "{data: " + text + ", text_column: score, seq_len: 64, sequences: 8}", "",
			[]string{text, `column "score" is DOUBLE, not a string column`}},
		{"list column", model, "{data: " + text + ", text_column: tags, seq_len: 64, sequences: 8}", "",
			[]string{text, `column "tags"`, "not a string column"}},
		{"empty dataset", model, "{data: " + empty + ", text_column: text, seq_len: 64, sequences: 8}", "",
			[]string{empty, `column "text" holds no text`}},
		{"blank text file", model, "{data: blank.txt, seq_len: 64, sequences: 8}", "",
			[]string{filepath.Join(dir, "blank.txt"), "no text"}},
		{"text column on a text file", model, "{data: blank.txt, text_column: text, seq_len: 64, sequences: 8}", "",
			[]string{`calibration.text_column "text" does not apply`}},
		{"no tokenizer.json", noTok, "{data: " + text + ", text_column: text, seq_len: 64, sequences: 8}", "",
			[]string{filepath.Join(noTok, "tokenizer.json") + " does not exist"}},
		{"unknown tokenizer model", badTok, "{data: " + text + ", text_column: text, seq_len: 64, sequences: 8}", "",
			[]string{tj, `model type "WordPiece" not supported`}},
		{"evaluation column", model, "{data: " + text + ", text_column: text, seq_len: 64, sequences: 8}",
			"evaluation: {data: " + text + ", text_column: nope}\n",
			[]string{"evaluation data", `no column "nope"`}},
		{"seq_len on token evaluation", model, "{data: " + text + ", text_column: text, seq_len: 64, sequences: 8}",
			"evaluation: {data: " + tokens + ", seq_len: 64}\n",
			[]string{"evaluation.seq_len applies to text data only"}},
		{"seq_len past the model", model, "{data: " + text + ", text_column: text, seq_len: 64, sequences: 8}",
			"evaluation: {data: " + text + ", text_column: text, seq_len: 4096}\n",
			[]string{"evaluation.seq_len 4096 exceeds the model's max_position_embeddings"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Load(write(t, dir, textRecipe(c.model, c.cal, c.eval)))
			if err == nil {
				t.Fatal("loaded")
			}
			t.Log(err)
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q:\n%v", w, err)
				}
			}
		})
	}
}
