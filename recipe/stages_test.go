package recipe

import (
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/rankzip/rankzip/compress"
	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/model"
)

// stagesRecipe writes a recipe on the stories260K fixture with the given
// stages and export lines.
func stagesRecipe(t *testing.T, stages, export string) string {
	t.Helper()
	fx := needFixtures(t)
	return write(t, t.TempDir(), `
model: `+filepath.Join(fx, "stories260K")+`
calibration: {data: `+filepath.Join(fx, "samples/calib.parquet")+`, sequences: 16}
output: out
stages:
`+stages+`
export: `+export+"\n")
}

// Sequences of the new stages that run load with every default filled in.
func TestStagesCanonical(t *testing.T) {
	job, err := Load(stagesRecipe(t, `  - {method: palu, kv_keep: 0.5}`, `{format: native}`))
	if err != nil {
		t.Fatal(err)
	}
	p := job.Recipe.Stages[0]
	if p.GroupSize == nil || *p.GroupSize != 4 || p.RankSearch != "fisher" || p.Hadamard == nil || *p.Hadamard || p.LatentGroupSize != 0 {
		t.Errorf("palu defaults: %+v", p)
	}
	job, err = Load(stagesRecipe(t, `  - {method: palu, kv_keep: 0.5, group_size: 2, latent_bits: 4}`, `{format: native}`))
	if err != nil {
		t.Fatal(err)
	}
	if p := job.Recipe.Stages[0]; *p.GroupSize != 2 || p.LatentGroupSize != 32 || !*p.Hadamard {
		t.Errorf("palu latent defaults: %+v", p)
	}

	job, err = Load(stagesRecipe(t, `
  - {method: gptq, bits: 4, group_size: 32, targets: ["self_attn.*"]}
  - {method: eora, rank: 4}`, `{format: gptq}`))
	if err != nil {
		t.Fatal(err)
	}
	g, e := job.Recipe.Stages[0], job.Recipe.Stages[1]
	if !*g.Sym || *g.ActOrder || g.Damp != 0.01 || *g.GroupSize != 32 || len(g.Targets) != 4 {
		t.Errorf("gptq defaults: %+v", g)
	}
	if len(e.Targets) != 7 || e.Rank != 4 {
		t.Errorf("eora defaults: %+v", e)
	}

	// A quantization stage after a low-rank one quantizes what it left dense.
	job, err = Load(stagesRecipe(t, `
  - {method: svd, targets: ["mlp.*"], keep_params: 0.8, rank_search: uniform}
  - {method: rtn, bits: 8, group_size: 0}`, `{format: dense}`))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"}
	if r := job.Recipe.Stages[1]; !slices.Equal(r.Targets, want) || *r.GroupSize != 0 {
		t.Errorf("rtn after svd: targets %v group_size %d, want %v and 0", r.Targets, *r.GroupSize, want)
	}
}

// Combinations that cannot run are refused with an error naming the stage
// and the reason.
func TestStagesRefused(t *testing.T) {
	for _, tc := range []struct {
		name, stages, export, want string
	}{
		{"palu then gptq as gptq", `
  - {method: palu, kv_keep: 0.5}
  - {method: gptq, bits: 4, group_size: 32, targets: ["self_attn.q_proj", "self_attn.o_proj"]}`, `{format: gptq}`,
			"stages[1] (gptq) after stages[0] (palu) cannot be exported as gptq"},
		{"palu on factored kv", `
  - {method: svd, keep_params: 0.8, rank_search: uniform}
  - {method: palu, kv_keep: 0.5}`, `{format: native}`,
			"stages[1] (palu) needs dense k_proj and v_proj, but stages[0] (svd) targets self_attn.k_proj"},
		{"quantize factors", `
  - {method: svd, targets: ["mlp.*"], keep_params: 0.8, rank_search: uniform}
  - {method: gptq, bits: 4, group_size: 0, targets: ["mlp.up_proj"]}`, `{format: dense}`,
			"stages[1] (gptq) cannot quantize mlp.up_proj: stages[0] (svd) already replaced it"},
		{"gptq export without quantization", `
  - {method: svd, targets: ["mlp.*"], keep_params: 0.8, rank_search: uniform}`, `{format: gptq}`,
			"export.format gptq needs an rtn or gptq stage"},
		{"gptq export of factors", `
  - {method: svd, targets: ["mlp.*"], keep_params: 0.8, rank_search: uniform}
  - {method: gptq, bits: 4, group_size: 32}`, `{format: gptq}`,
			"export.format gptq cannot hold the low-rank factors of stages[0] (svd)"},
		{"gptq export of unpackable layers", `
  - {method: rtn, bits: 4, group_size: 0}`, `{format: gptq}`,
			"leave mlp.gate_proj (172×64), mlp.up_proj (172×64), mlp.down_proj (64×172) out of the targets of stages[0] (rtn)"},
		{"eora on palu layers", `
  - {method: palu, kv_keep: 0.5}
  - {method: rtn, bits: 8, group_size: 0, targets: ["self_attn.q_proj"]}
  - {method: eora, rank: 4, targets: ["self_attn.*"]}`, `{format: native}`,
			"stages[2] (eora) cannot compensate self_attn.k_proj: stages[0] (palu) made it a grouped latent projection"},
		{"eora alone", `
  - {method: eora, rank: 4}`, `{format: dense}`,
			"stages[0] (eora) compensates quantization error: it needs an rtn or gptq stage before it"},
		{"dense palu latent", `
  - {method: palu, kv_keep: 0.5, latent_bits: 4}`, `{format: dense}`,
			"export.format dense cannot express the quantized latent cache of stages[0] (palu, latent_bits 4)"},
		{"palu search", `
  - {method: palu, kv_keep: 0.5, rank_search: hessian}`, `{format: native}`,
			`stages[0] (palu): rank_search "hessian" unknown (want one of uniform, spectrum, fisher)`},
		{"palu group", `
  - {method: palu, kv_keep: 0.5, group_size: 3}`, `{format: native}`,
			"stages[0] (palu): group_size 3 must divide the model's 4 KV heads"},
		{"palu kv_keep", `
  - {method: palu}`, `{format: native}`,
			`stages[0] (palu): missing key "kv_keep"`},
		{"gptq bits", `
  - {method: gptq, group_size: 0}`, `{format: dense}`,
			`stages[0] (gptq): missing key "bits"`},
		{"gptq group", `
  - {method: gptq, bits: 4}`, `{format: dense}`,
			"stages[0] (gptq): group_size 128 does not divide the 64 input features of self_attn.q_proj"},
		{"eora rank", `
  - {method: rtn, bits: 8, group_size: 0}
  - {method: eora}`, `{format: dense}`,
			`stages[1] (eora): missing key "rank"`},
		{"eora overrides", `
  - {method: rtn, bits: 8, group_size: 0}
  - {method: eora, rank: 4, targets: ["self_attn.*"], rank_overrides: {"mlp.*": 2}}`, `{format: dense}`,
			`stages[1] (eora): rank_overrides pattern "mlp.*" matches none of the targets`},
		{"eora on dense layers", `
  - {method: rtn, bits: 8, group_size: 0, targets: ["self_attn.*"]}
  - {method: eora, rank: 4, targets: ["mlp.*"]}`, `{format: dense}`,
			"stages[1] (eora): none of its targets (mlp.gate_proj, mlp.up_proj, mlp.down_proj) is compressed by an earlier stage"},
		{"mla keys", `
  - {method: mla, kv_lora_rank: 16}`, `{format: deepseek-mla}`,
			`stages[0] (mla): missing key "qk_rope_head_dim"`},
		{"mla export", `
  - {method: mla, kv_lora_rank: 16, qk_rope_head_dim: 8}`, `{format: native}`,
			"stages[0] (mla) needs export.format deepseek-mla"},
		{"deepseek-mla without mla", `
  - {method: rtn, bits: 8, group_size: 0}`, `{format: deepseek-mla}`,
			"export.format deepseek-mla needs an mla stage"},
		{"mla sizes", `
  - {method: mla, kv_lora_rank: 65, qk_rope_head_dim: 9}`, `{format: deepseek-mla}`,
			"kv_lora_rank 65 must be in [1, 2 × n_kv × head_dim = 64]"},
		{"mla odd rope", `
  - {method: mla, kv_lora_rank: 16, qk_rope_head_dim: 9}`, `{format: deepseek-mla}`,
			"qk_rope_head_dim 9 must be even"},
		{"mla rotation", `
  - {method: mla, kv_lora_rank: 16, qk_rope_head_dim: 8, rorope: false, rotation: keys}`, `{format: deepseek-mla}`,
			"rotation keys contradicts rorope: false"},
		{"mla after svd on attention", `
  - {method: svd, targets: ["self_attn.q_proj"], keep_params: 0.9}
  - {method: mla, kv_lora_rank: 16, qk_rope_head_dim: 8}`, `{format: deepseek-mla}`,
			"stages[1] (mla) needs dense q_proj, k_proj and v_proj, but stages[0] (svd) targets self_attn.q_proj"},
		{"palu export with svd", `
  - {method: svd, targets: ["mlp.*"], keep_params: 0.9}
  - {method: palu, kv_keep: 0.5}`, `{format: palu}`,
			"export.format palu holds only Palu's factored k/v projections"},
		{"palu export of quantized latents", `
  - {method: palu, kv_keep: 0.5, latent_bits: 4}`, `{format: palu}`,
			"export.format palu cannot say that stages[0] quantizes the latents"},
		{"gptq after mla", `
  - {method: mla, kv_lora_rank: 16, qk_rope_head_dim: 8}
  - {method: gptq, bits: 4, group_size: 32, targets: ["mlp.gate_proj"]}`, `{format: deepseek-mla}`,
			"stages[1] (gptq) cannot follow stages[0] (mla): not implemented"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Load(stagesRecipe(t, tc.stages, tc.export))
			var re *Error
			if !errors.As(err, &re) {
				t.Fatalf("want *Error, got %v", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error lacks %q:\n%v", tc.want, err)
			}
		})
	}
}

// A low-rank stage without rank_search gets the same search as
// compress.Options without one: every entry point has one default.
func TestRankSearchDefaultMatchesCompress(t *testing.T) {
	job, err := Load(stagesRecipe(t, `  - {method: svd, targets: ["mlp.*"], keep_params: 0.8}`, `{format: native}`))
	if err != nil {
		t.Fatal(err)
	}
	m, err := model.Load(filepath.Join(needFixtures(t), "stories260K"), kernels.Default())
	if err != nil {
		t.Fatal(err)
	}
	o := compress.Options{KeepParams: 0.8}
	if err := o.Validate(m, 1<<20); err != nil {
		t.Fatal(err)
	}
	if got := job.Recipe.Stages[0].RankSearch; got != o.RankSearch || got != compress.DefaultRankSearch {
		t.Errorf("recipe default rank_search %q, compress.Options default %q, want both %q", got, o.RankSearch, compress.DefaultRankSearch)
	}
}

// Mixture-of-experts models have no backward pass: their low-rank stages
// default to the sensitivity search, and asking for fisher names why.
func TestFisherSearchNeedsBackward(t *testing.T) {
	job, err := Load(archRecipe(t, "mixtral", `  - {method: svd, keep_params: 0.8}`, `{format: native}`))
	if err != nil {
		t.Fatal(err)
	}
	if got := job.Recipe.Stages[0].RankSearch; got != model.NoBackwardLowRankSearch {
		t.Errorf("mixtral: default rank_search %q, want %q", got, model.NoBackwardLowRankSearch)
	}
	_, err = Load(archRecipe(t, "mixtral", `  - {method: svd, keep_params: 0.8, rank_search: fisher}`, `{format: native}`))
	const want = "stages[0] (svd): rank_search fisher: the backward pass (fisher ranks) is not supported for model_type mixtral"
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("fisher on mixtral: error %v, want it to contain %q", err, want)
	}
}
