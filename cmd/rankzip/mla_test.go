package main

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
)

// rankzip mla converts the fixture at full rope and latent: the exported
// DeepSeek-layout checkpoint evaluates like the original (KL ≈ 0 in f32)
// with the same KV cache; a lossy setting shrinks the cache.
func TestMLACommand(t *testing.T) {
	m := needFixture(t, "stories260K")
	cal := needFixture(t, "samples/calib.parquet")
	ev := needFixture(t, "samples/eval.parquet")
	out := filepath.Join(t.TempDir(), "mla")
	stdout, stderr, err := rankzip("mla", "--model", m, "--calib", cal, "--sequences", "16", "--out", out,
		"--qk-rope-head-dim", "32", "--kv-lora-rank", "32", "--dtype", "F32")
	if err != nil {
		t.Fatalf("%v\n%s", err, stderr)
	}
	if !strings.Contains(stdout, "KV cache 640 bytes per token, was 640; read back and checked") {
		t.Errorf("mla output:\n%s", stdout)
	}
	stdout, stderr, err = rankzip("eval", "--model", out, "--data", ev, "--baseline", m, "--sequences", "4", "--json")
	if err != nil {
		t.Fatalf("%v\n%s", err, stderr)
	}
	var rep map[string]any
	if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
		t.Fatalf("%v\n%s", err, stdout)
	}
	if kl, ok := rep["kl"].(float64); !ok || kl > 1e-6 {
		t.Errorf("lossless conversion: KL %v against the original, want < 1e-6\n%s", rep["kl"], stdout)
	}
	if b, ok := rep["kv_bytes_per_token"].(float64); !ok || b != 640 {
		t.Errorf("eval: kv_bytes_per_token %v, want 640", rep["kv_bytes_per_token"])
	}

	lossy := filepath.Join(t.TempDir(), "lossy")
	stdout, stderr, err = rankzip("mla", "--model", m, "--calib", cal, "--sequences", "16", "--out", lossy,
		"--qk-rope-head-dim", "16", "--kv-lora-rank", "24")
	if err != nil {
		t.Fatalf("%v\n%s", err, stderr)
	}
	if !strings.Contains(stdout, "KV cache 400 bytes per token, was 640") {
		t.Errorf("lossy mla output:\n%s", stdout)
	}

	_, _, err = rankzip("mla", "--model", m, "--calib", cal, "--out", lossy, "--qk-rope-head-dim", "7", "--kv-lora-rank", "24")
	if err == nil || !strings.Contains(err.Error(), "qk_rope_head_dim 7") {
		t.Errorf("odd rope dims: %v", err)
	}
}
