package recipe

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fixtures is the repository's testdata seen from this package.
const fixtures = "../testdata"

func needFixtures(t *testing.T) string {
	t.Helper()
	abs, err := filepath.Abs(fixtures)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"stories260K/model.safetensors", "samples/calib.parquet", "samples/eval.parquet"} {
		if _, err := os.Stat(filepath.Join(abs, p)); err != nil {
			t.Fatalf("test data %s missing from the repository: %v", filepath.Join(fixtures, p), err)
		}
	}
	return abs
}

// write puts a recipe into dir and returns its path.
func write(t *testing.T, dir, text string) string {
	t.Helper()
	f, err := os.CreateTemp(dir, "recipe*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	p := f.Name()
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadCanonical(t *testing.T) {
	fx := needFixtures(t)
	dir := t.TempDir()
	if err := os.Symlink(fx, filepath.Join(dir, "fx")); err != nil {
		t.Fatal(err)
	}
	a := write(t, dir, `
model: fx/stories260K
calibration: {data: fx/samples/calib.parquet, sequences: 16}
evaluation: {data: fx/samples/eval.parquet, sequences: 4}
output: out
stages:
  - {method: svd, targets: ["mlp.*"], keep_params: 0.8, rank_search: uniform}
`)
	job, err := Load(a)
	if err != nil {
		t.Fatal(err)
	}
	r := job.Recipe
	if r.Model != filepath.Join(dir, "fx/stories260K") || r.Output != filepath.Join(dir, "out") {
		t.Errorf("paths not resolved against the recipe: model %s output %s", r.Model, r.Output)
	}
	s := r.Stages[0]
	if strings.Join(s.Targets, ",") != "mlp.gate_proj,mlp.up_proj,mlp.down_proj" || s.Variant != "whiten" {
		t.Errorf("stage not canonical: %+v", s)
	}
	if r.Calibration.SeqLen != 512 || r.Calibration.Mode != "sequential" || r.Calibration.Batch != 16 {
		t.Errorf("calibration defaults: %+v", r.Calibration)
	}
	if r.Export.Format != "native" || r.Export.DType != "float32" {
		t.Errorf("export defaults: %+v", r.Export)
	}
	if len(job.Model) != 2 || job.Calibration.SHA256 == "" || job.Evaluation == nil {
		t.Errorf("digests: %+v", job)
	}
	if !strings.HasPrefix(job.ID, IDPrefix) {
		t.Errorf("id %q", job.ID)
	}

	// The same job spelled differently has the same id.
	sub := filepath.Join(dir, "sub")
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	b := write(t, sub, `
model: `+filepath.Join(dir, "fx/stories260K")+`
calibration: {data: ../fx/samples/calib.parquet, sequences: 16, seq_len: 512, mode: sequential}
evaluation: {data: ../fx/samples/eval.parquet, sequences: 4}
output: ../out
stages:
  - method: svd
    variant: whiten
    targets: [mlp.down_proj, mlp.gate_proj, mlp.up_proj]
    keep_params: 0.8
    rank_search: uniform
export: {format: native}
`)
	job2, err := Load(b)
	if err != nil {
		t.Fatal(err)
	}
	if job2.ID != job.ID {
		t.Errorf("equivalent recipes got ids %s and %s", job.ID, job2.ID)
	}

	// A different budget is a different job.
	c := write(t, dir, `
model: fx/stories260K
calibration: {data: fx/samples/calib.parquet, sequences: 16}
evaluation: {data: fx/samples/eval.parquet, sequences: 4}
output: out
stages:
  - {method: svd, targets: ["mlp.*"], keep_params: 0.7, rank_search: uniform}
`)
	job3, err := Load(c)
	if err != nil {
		t.Fatal(err)
	}
	if job3.ID == job.ID {
		t.Error("a different keep_params kept the id")
	}

	// An output written by another job is refused; one written by this job
	// is accepted (a rerun).
	out := filepath.Join(dir, "out")
	if err := os.MkdirAll(out, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(out, "config.json"), []byte("{}"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(a); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Errorf("foreign output accepted: %v", err)
	}
	if err := os.WriteFile(filepath.Join(out, Marker), []byte(`{"id":"`+job.ID+`"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(a); err != nil {
		t.Errorf("own output refused: %v", err)
	}
}

// One error lists every problem, without touching anything.
func TestLoadListsEveryProblem(t *testing.T) {
	fx := needFixtures(t)
	dir := t.TempDir()
	p := write(t, dir, `
model: `+filepath.Join(fx, "stories260K")+`
calibration: {data: missing.parquet, sequences: 16, colour: blue}
evaluation: {data: `+filepath.Join(fx, "samples/eval.parquet")+`, sequences: 400}
output: out
stages:
  - {method: gptq, bits: 4}
  - {method: svd, targets: ["mlp.*", "attn.*"], keep_params: 1.5, kv_keep: 0.5}
  - {method: palu, kv_keep: 0.5}
  - {method: svd, variant: whiten, rank: 3, rank_search: global}
  - {method: sparsegpt}
flavour: vanilla
`)
	_, err := Load(p)
	var re *Error
	if !errors.As(err, &re) {
		t.Fatalf("want *Error, got %v", err)
	}
	want := []string{
		`unknown key "flavour" in the recipe`,
		`unknown key "colour" in calibration`,
		`missing.parquet`,
		`evaluation data`, `has 32 sequences; the recipe asks for 400`,
		`stages[1] (svd) cannot follow a quantization`,
		`stages[2] (palu) cannot follow a quantization`,
		`stages[0] (gptq): group_size 128 does not divide the 64 input features of self_attn.q_proj`,
		`key "kv_keep" does not apply to method svd`,
		`target "attn.*" matches no module`,
		`keep_params 1.5 must be in (0, 1]`,
		`stages[3] (svd) cannot follow stages[1] (svd)`,
		`rank_search applies to a keep_params budget`,
		`method "sparsegpt" unknown`,
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error lacks %q", w)
		}
	}
	t.Log(err)
	if _, err := os.Stat(filepath.Join(dir, "out")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("validation created the output: %v", err)
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct{ text, want string }{
		{"", "empty"},
		{"model: [", "did not find"},
		{"model: m\ncalibration: {sequences: many}", "cannot unmarshal"},
		{"model: m\nstages:\n  - {keep_params: 0.5}", `missing key "method"`},
		{"model: m\n---\nmodel: n", "second one"},
	} {
		_, problems := parse([]byte(tc.text))
		if !strings.Contains(strings.Join(problems, "\n"), tc.want) {
			t.Errorf("parse(%q) = %q, want %q", tc.text, problems, tc.want)
		}
	}
}

// Without any file the problems still come all at once.
func TestLoadMissingFiles(t *testing.T) {
	dir := t.TempDir()
	p := write(t, dir, `
model: nowhere
calibration: {data: nothing.parquet}
output: nowhere
stages: [{method: lord, keep_params: 0}]
export: {format: gptq, dtype: int3}
`)
	_, err := Load(p)
	for _, w := range []string{"model: read model config", "calibration data", "output " + filepath.Join(dir, "nowhere") + " would overwrite the model",
		`missing key "keep_params"`, "export.format gptq needs an rtn or gptq stage", `export.dtype "int3" unknown`} {
		if err == nil || !strings.Contains(err.Error(), w) {
			t.Errorf("error lacks %q: %v", w, err)
		}
	}
}
