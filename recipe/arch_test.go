package recipe

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/model"
	"github.com/rankzip/rankzip/model/safetensors"
)

// archRecipe writes a small random model of the architecture typ (vocabulary
// and positions of the fixture's calibration data) and a recipe over it.
func archRecipe(t *testing.T, typ, stages, export string) string {
	t.Helper()
	fx := needFixtures(t)
	s := model.SyntheticConfig{ModelType: typ, Hidden: 64, Intermediate: 128, Layers: 2, Heads: 4, KVHeads: 2, HeadDim: 16,
		Vocab: 512, MaxPositions: 512}
	switch typ {
	case "mixtral":
		s.Experts, s.TopK, s.HeadDim = 4, 2, 0
	case "qwen3_moe", "qwen2_moe":
		s.Experts, s.TopK, s.Intermediate = 4, 2, 64
	}
	m, err := model.Synthetic(s, 1, kernels.Default())
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := model.Save(m, filepath.Join(dir, "m"), safetensors.F32); err != nil {
		t.Fatal(err)
	}
	return write(t, dir, `
model: m
calibration: {data: `+filepath.Join(fx, "samples/calib.parquet")+`, sequences: 16}
output: out
stages:
`+stages+`
export: `+export+"\n")
}

// Recipes on Qwen3, Gemma 3 and Mixtral: what the architecture does not
// support is refused at validation naming it; a MoE model's stages default
// to its attention projections.
func TestArchRecipes(t *testing.T) {
	for _, tc := range []struct {
		typ, stages, export, want string
	}{
		{"qwen3", `  - {method: mla, kv_lora_rank: 16, qk_rope_head_dim: 8}`, `{format: deepseek-mla}`, "not supported for model_type qwen3"},
		{"gemma3_text", `  - {method: palu, kv_keep: 0.5}`, `{format: palu}`, "Palu's layout exists for llama, mistral and qwen2, not model_type gemma3_text"},
		{"phi3", `  - {method: rtn, bits: 4, group_size: 32}`, `{format: gptq}`, "model_type phi3"},
		{"mixtral", `  - {method: svd, targets: ["mlp.*"], keep_params: 0.8}`, `{format: native}`, "export.format native cannot hold the compressed experts of stages[0] (svd)"},
		{"mixtral", `  - {method: gptq, bits: 4, targets: ["mlp.experts.*.down_proj"]}`, `{format: native}`, "export.format native cannot hold the compressed experts of stages[0] (gptq)"},
		{"mixtral", `  - {method: gptq, bits: 4, group_size: 32, targets: ["self_attn.*", "mlp.experts.*"]}
  - {method: eora, rank: 4}`, `{format: gptq}`, "export.format gptq cannot hold the expert corrections of stages[1] (eora)"},
		{"mixtral", `  - {method: svd, targets: ["mlp.gate"], keep_params: 0.8}`, `{format: dense}`, `target "mlp.gate" names the router (mlp.gate) of model_type mixtral, which is never compressed`},
		{"mixtral", `  - {method: svd, targets: ["mlp.down_proj"], keep_params: 0.8}`, `{format: dense}`, `target "mlp.down_proj" matches no module of model_type mixtral`},
		{"mixtral", `  - {method: svd, targets: ["mlp.experts.*.down_proj"], keep_params: 0.8, rank_search: global}`, `{format: dense}`, "rank_search global is not implemented for expert targets"},
		{"mixtral", `  - {method: svd, targets: ["mlp.*"], keep_params: 0.8, rank_search: sensitivity}`, `{format: dense}`, "rank_search sensitivity is not implemented for expert targets"},
		{"mixtral", `  - {method: lord, targets: ["mlp.*"], keep_params: 0.8}`, `{format: native}`, "export.format native cannot hold the compressed experts of stages[0] (lord)"},
		{"mixtral", `  - {method: lord, targets: ["mlp.*"], keep_params: 0.8, rank_search: local}`, `{format: dense}`, "rank_search local is not implemented for expert targets"},
		{"mixtral", `  - {method: rtn, bits: 4, group_size: 0, targets: ["mlp.experts.0.*"]}
  - {method: eora, rank: 4, targets: ["mlp.experts.1.*"]}`, `{format: dense}`, "stages[1] (eora): none of its targets (mlp.experts.1.gate_proj, mlp.experts.1.up_proj, mlp.experts.1.down_proj) is compressed"},
		{"mixtral", `  - {method: eora, rank: 4, targets: ["mlp.gate"]}`, `{format: dense}`, `target "mlp.gate" names the router`},
		{"qwen2_moe", `  - {method: svd, targets: ["mlp.shared_expert.*"], keep_params: 0.8}`, `{format: native}`, "export.format native cannot hold the compressed experts of stages[0] (svd)"},
		{"mixtral", `  - {method: palu, kv_keep: 0.5}`, `{format: native}`, "not supported for model_type mixtral"},
	} {
		_, err := Load(archRecipe(t, tc.typ, tc.stages, tc.export))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s %s: got %v, want %q", tc.typ, tc.stages, err, tc.want)
		}
	}
	// Qwen3's q/k norms and Qwen3-MoE's experts have the GPTQ layout.
	for _, tc := range []struct{ typ, stages string }{
		{"qwen3", `  - {method: rtn, bits: 4, group_size: 32}`},
		{"qwen3_moe", `  - {method: gptq, bits: 4, group_size: 32, targets: ["mlp.experts.*.down_proj"]}`},
	} {
		if _, err := Load(archRecipe(t, tc.typ, tc.stages, `{format: gptq}`)); err != nil {
			t.Errorf("%s with a gptq export: %v", tc.typ, err)
		}
	}
	for _, stage := range []string{`{method: svd, keep_params: 0.8}`, `{method: gptq, bits: 4, group_size: 32}`} {
		job, err := Load(archRecipe(t, "mixtral", "  - "+stage, `{format: native}`))
		if err != nil {
			t.Fatal(err)
		}
		if got := job.Recipe.Stages[0].Targets; !slices.Equal(got, model.Modules[:4]) {
			t.Errorf("mixtral %s: default targets %v, want the attention", stage, got)
		}
	}
	// svd, rtn and gptq (and lord, eora: below) take expert targets, exported dense: mlp.* is every
	// expert's linears (never the router), and experts search uniformly.
	job, err := Load(archRecipe(t, "mixtral", `  - {method: svd, targets: ["mlp.*"], keep_params: 0.8}
  - {method: gptq, bits: 4, group_size: 32, targets: ["self_attn.*"]}`, `{format: dense}`))
	if err != nil {
		t.Fatal(err)
	}
	if s := job.Recipe.Stages[0]; len(s.Targets) != 4*3 || s.Targets[0] != "mlp.experts.0.gate_proj" || s.Targets[11] != "mlp.experts.3.down_proj" || s.RankSearch != "uniform" {
		t.Errorf("mixtral svd on mlp.*: targets %v, rank_search %q; want the 12 expert linears, uniform", s.Targets, s.RankSearch)
	}
	job, err = Load(archRecipe(t, "mixtral", `  - {method: rtn, bits: 8, group_size: 0, targets: ["mlp.experts.*.down_proj"]}`, `{format: dense}`))
	if err != nil {
		t.Fatal(err)
	}
	if got := job.Recipe.Stages[0].Targets; !slices.Equal(got, []string{"mlp.experts.0.down_proj", "mlp.experts.1.down_proj", "mlp.experts.2.down_proj", "mlp.experts.3.down_proj"}) {
		t.Errorf("mixtral rtn on mlp.experts.*.down_proj: targets %v", got)
	}
	// The GPTQ layout holds Mixtral's quantized experts (and EoRA's
	// corrections of its attention).
	job, err = Load(archRecipe(t, "mixtral", `  - {method: gptq, bits: 4, group_size: 32, targets: ["self_attn.*", "mlp.experts.*"]}
  - {method: eora, rank: 4, targets: ["self_attn.*"]}`, `{format: gptq}`))
	if err != nil {
		t.Fatal(err)
	}
	if got := job.Recipe.Stages[0].Targets; len(got) != 4+4*3 {
		t.Errorf("mixtral gptq on self_attn.* and mlp.experts.*: targets %v", got)
	}
	// lord takes the experts too; eora with no targets corrects the
	// attention and the experts an earlier stage compressed.
	job, err = Load(archRecipe(t, "mixtral", `  - {method: lord, targets: ["mlp.experts.*.up_proj"], rank: 8}
  - {method: gptq, bits: 4, group_size: 0, targets: ["mlp.experts.*.down_proj"]}
  - {method: eora, rank: 4}`, `{format: dense}`))
	if err != nil {
		t.Fatal(err)
	}
	if got := job.Recipe.Stages[0].Targets; len(got) != 4 || got[0] != "mlp.experts.0.up_proj" {
		t.Errorf("mixtral lord on mlp.experts.*.up_proj: targets %v", got)
	}
	wantEoRA := append(slices.Clone(model.Modules[:4]), "mlp.experts.0.up_proj", "mlp.experts.0.down_proj", "mlp.experts.1.up_proj", "mlp.experts.1.down_proj",
		"mlp.experts.2.up_proj", "mlp.experts.2.down_proj", "mlp.experts.3.up_proj", "mlp.experts.3.down_proj")
	if got := job.Recipe.Stages[2].Targets; !slices.Equal(got, wantEoRA) {
		t.Errorf("mixtral eora default targets %v, want %v", got, wantEoRA)
	}
	job, err = Load(archRecipe(t, "mixtral", `  - {method: gptq, bits: 4, group_size: 32}
  - {method: eora, rank: 4}`, `{format: native}`))
	if err != nil {
		t.Fatal(err)
	}
	if got := job.Recipe.Stages[1].Targets; !slices.Equal(got, model.Modules[:4]) {
		t.Errorf("mixtral eora after gptq on the attention: default targets %v, want the attention", got)
	}
	for _, typ := range []string{"qwen3", "gemma3_text"} {
		job, err := Load(archRecipe(t, typ, `  - {method: palu, kv_keep: 0.5}`, `{format: native}`))
		if err != nil {
			t.Fatalf("%s: %v", typ, err)
		}
		if s := job.Recipe.Stages[0]; s.RankSearch != "fisher" {
			t.Errorf("%s: palu rank search %q", typ, s.RankSearch)
		}
	}
}
