package main

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rankzip/rankzip/workflows"
)

// A recipe with mistakes is refused with every problem listed, before any
// server starts or any file is written.
func TestRunBadRecipe(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "recipe.yaml")
	err := os.WriteFile(p, []byte(`
model: nowhere
calibration: {data: none.parquet, sequences: -3}
output: out
stages:
  - {method: svd, targets: [attn.*], keep_params: 2}
  - {method: mla, kv_lora_rank: 4}
colour: blue
`), 0o644)
	if err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(dir, "state")
	_, _, err = rankzip("run", p, "--state", state)
	if err == nil {
		t.Fatal("a bad recipe ran")
	}
	for _, want := range []string{`unknown key "colour"`, "read model config", "calibration.sequences -3", `target "attn.*" matches no module`,
		"keep_params 2 must be in (0, 1]", `stages[1] (mla): missing key "qk_rope_head_dim"`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
	for _, d := range []string{state, filepath.Join(dir, "out")} {
		if _, err := os.Stat(d); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s was created: %v", d, err)
		}
	}
}

func TestSubmitNeedsCluster(t *testing.T) {
	t.Setenv("TEMPORAL_ADDRESS", "")
	_, _, err := rankzip("submit", "recipe.yaml")
	if err == nil || !strings.Contains(err.Error(), "rankzip run recipe.yaml") {
		t.Errorf("submit without a cluster: %v", err)
	}
}

func TestProgressLine(t *testing.T) {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	p := workflows.Progress{Stage: workflows.StageBlocks, Block: 3, Blocks: 12, Skipped: 2, Started: start,
		Updated: start.Add(30 * time.Second), ETA: 90 * time.Second}
	line, key := progressLine(p, start.Add(40*time.Second))
	want := "blocks   [######------------------] block 3/12  elapsed 40s  eta 1m20s  (2 block(s) found done)"
	if line != want || key != "blocks 3/12" {
		t.Errorf("progress line\n%q\nwant\n%q (key %q)", line, want, key)
	}
	// A recipe of several stages names the one running.
	p.Step, p.Steps, p.Method = 1, 2, "gptq"
	line, key = progressLine(p, start.Add(40*time.Second))
	want = "blocks   stage 2/2 gptq  [######------------------] block 3/12  elapsed 40s  eta 1m20s  (2 block(s) found done)"
	if line != want || key != "blocks 1 3/12" {
		t.Errorf("progress line\n%q\nwant\n%q (key %q)", line, want, key)
	}
}
