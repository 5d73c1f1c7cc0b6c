package main

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/model"
	"github.com/rankzip/rankzip/model/gptq"
	"github.com/rankzip/rankzip/model/safetensors"
)

// rankzip quantize writes a Mixtral's attention and experts in the GPTQ v1
// layout (GPTQModel's: each expert's linears packed under their Hub names,
// the router dense), reads it back and checks its logits; the checkpoint
// loads with every expert quantized and the router dense.
func TestQuantizeMoE(t *testing.T) {
	calibPath := needFixture(t, "samples/calib.parquet")
	m, err := model.Synthetic(model.SyntheticConfig{ModelType: "mixtral", Hidden: 64, Intermediate: 64, Layers: 2, Heads: 4, KVHeads: 2,
		Vocab: 512, MaxPositions: 128, Experts: 4, TopK: 2}, 9, kernels.Default())
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	src, out := filepath.Join(dir, "mixtral"), filepath.Join(dir, "gptq")
	if err := model.Save(m, src, safetensors.F32); err != nil {
		t.Fatal(err)
	}
	stdout, stderr, err := rankzip("quantize", "--model", src, "--calib", calibPath, "--sequences", "8", "--seq-len", "64",
		"--method", "gptq", "--bits", "4", "--group-size", "32", "--targets", "self_attn.*,mlp.experts.*", "--out", out)
	if err != nil {
		t.Fatalf("rankzip quantize: %v\n%s", err, stderr)
	}
	if !strings.Contains(stdout, "read back and checked") || !strings.Contains(stdout, "model.layers.1.mlp.experts.3.down_proj") {
		t.Errorf("stdout:\n%s", stdout)
	}
	back, err := gptq.Load(out, kernels.Default())
	if err != nil {
		t.Fatal(err)
	}
	for i, b := range back.Blocks {
		for _, mod := range m.Config.TargetModules() {
			if _, ok := (*b.Linear(mod)).(*model.Quantized); !ok {
				t.Errorf("block %d %s read back as %T, want quantized", i, mod, *b.Linear(mod))
			}
		}
		if b.MoE.Router == nil || len(b.MoE.Router.Weight) != 4*64 {
			t.Errorf("block %d: no dense router read back", i)
		}
	}
}
