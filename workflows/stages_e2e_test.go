package workflows_test

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.temporal.io/sdk/temporal"

	"github.com/rankzip/rankzip/activities"
	"github.com/rankzip/rankzip/calib"
	"github.com/rankzip/rankzip/compress"
	"github.com/rankzip/rankzip/eval"
	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/model"
	"github.com/rankzip/rankzip/model/gptq"
	"github.com/rankzip/rankzip/model/safetensors"
	"github.com/rankzip/rankzip/recipe"
	"github.com/rankzip/rankzip/workflows"
)

// The palu, rtn, gptq and eora stages against a real Temporal server: each
// job's checkpoint is compared with the direct path's (the compress
// functions on the whole model, then the same writer), byte for byte, and
// its quality on the evaluation set with the direct model's.

// stageJob writes a recipe with the given stages and export on a copy of the
// stories260K fixture (so a test may remove it), with 16 calibration and 4
// evaluation sequences, and loads it.
func stageJob(t *testing.T, dir, stages, export string) *recipe.Job {
	t.Helper()
	fx := needFixtures(t)
	mdir := filepath.Join(dir, "model")
	if err := os.MkdirAll(mdir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"config.json", "model.safetensors"} {
		data, err := os.ReadFile(filepath.Join(fx, "stories260K", f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(mdir, f), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	r := fmt.Sprintf(`
model: model
calibration: {data: %s, sequences: 16}
evaluation: {data: %s, sequences: 4}
output: out
stages:
%s
export: %s
`, filepath.Join(fx, "samples/calib.parquet"), filepath.Join(fx, "samples/eval.parquet"), stages, export)
	p := filepath.Join(dir, "recipe.yaml")
	if err := os.WriteFile(p, []byte(r), 0o644); err != nil {
		t.Fatal(err)
	}
	j, err := recipe.Load(p)
	if err != nil {
		t.Fatal(err)
	}
	return j
}

// direct runs a job's stages with the compress functions on the whole
// model, as a user of the library would.
func direct(t *testing.T, j *recipe.Job) (orig, comp *model.Model, adapters []gptq.Adapter) {
	t.Helper()
	ctx := context.Background()
	r := j.Recipe
	m, err := model.Load(r.Model, kernels.Default())
	if err != nil {
		t.Fatal(err)
	}
	ds, err := calib.Open(r.Calibration.Data)
	if err != nil {
		t.Fatal(err)
	}
	seqs, err := ds.Read(r.Calibration.Sequences)
	ds.Close()
	if err != nil {
		t.Fatal(err)
	}
	seqs = recipe.Truncate(seqs, r.Calibration.SeqLen)
	cur := m
	for i, s := range r.Stages {
		switch s.Method {
		case "svd", "lord":
			o, err := activities.CompressOptions(r)
			if err != nil {
				t.Fatal(err)
			}
			res, err := compress.Run(ctx, cur, seqs, o, nil)
			if err != nil {
				t.Fatal(err)
			}
			cur = res.Model
		case "palu":
			o, err := activities.PaluOptions(r, i)
			if err != nil {
				t.Fatal(err)
			}
			res, err := compress.RunPalu(ctx, cur, seqs, o)
			if err != nil {
				t.Fatal(err)
			}
			cur = res.Model
		case "mla":
			o, err := activities.MLAOptions(r, i)
			if err != nil {
				t.Fatal(err)
			}
			res, err := compress.RunMLA(ctx, cur, seqs, o)
			if err != nil {
				t.Fatal(err)
			}
			cur = res.Model
		case "rtn", "gptq":
			o, err := activities.QuantOptions(r, i)
			if err != nil {
				t.Fatal(err)
			}
			res, err := compress.RunQuant(ctx, cur, seqs, o, nil)
			if err != nil {
				t.Fatal(err)
			}
			cur = res.Model
		case "eora":
			o, err := activities.EoRAOptions(r, i)
			if err != nil {
				t.Fatal(err)
			}
			res, err := compress.RunEoRA(ctx, cur, m, seqs, o)
			if err != nil {
				t.Fatal(err)
			}
			cur, adapters = res.Model, res.Adapters
		default:
			t.Fatalf("stage %s", s.Method)
		}
	}
	return m, cur, adapters
}

// evaluate measures m against orig on the job's evaluation set.
func evaluate(t *testing.T, j *recipe.Job, m, orig *model.Model) eval.Report {
	t.Helper()
	ds, err := calib.Open(j.Recipe.Evaluation.Data)
	if err != nil {
		t.Fatal(err)
	}
	defer ds.Close()
	rep, err := eval.Evaluate(m, orig, ds, j.Recipe.Evaluation.Sequences, nil)
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

// sameFiles compares the files of two checkpoint directories (but the
// workflow's job marker) byte for byte.
func sameFiles(t *testing.T, got, want string) {
	t.Helper()
	n := 0
	filepath.WalkDir(want, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(want, p)
		w, _ := os.ReadFile(p)
		g, err := os.ReadFile(filepath.Join(got, rel))
		if err != nil {
			t.Errorf("%s: %v", rel, err)
			return nil
		}
		if !bytes.Equal(g, w) {
			t.Errorf("%s: the workflow's %d bytes differ from the direct path's %d", rel, len(g), len(w))
		}
		n++
		return nil
	})
	if n == 0 {
		t.Errorf("no files in %s", want)
	}
}

// checkQuality loads the workflow's export as rankzip eval does, checks its
// quality report against the direct model's and returns the KL.
func checkQuality(t *testing.T, j *recipe.Job, res workflows.Result, orig, comp *model.Model) float64 {
	t.Helper()
	back, err := activities.LoadExport(j.Recipe.Output, kernels.Default())
	if err != nil {
		t.Fatalf("the exported checkpoint does not load: %v", err)
	}
	got := evaluate(t, j, back, orig)
	want := evaluate(t, j, comp, orig)
	q := res.Quality.Compressed
	if q == nil || q.KL == nil || got.KL == nil || want.KL == nil {
		t.Fatalf("quality report %+v", res.Quality)
	}
	// Tolerance: the export is exact in float32, so only summation order
	// may differ between the checkpoint and the model in memory.
	const tol = 1e-6
	for _, c := range []struct {
		what      string
		got, want float64
	}{{"KL (workflow report)", *q.KL, *want.KL}, {"KL (read back)", *got.KL, *want.KL}, {"perplexity", q.PPL, want.PPL}} {
		if math.Abs(c.got-c.want) > tol*math.Max(1, math.Abs(c.want)) {
			t.Errorf("%s %.9g, direct path %.9g (tolerance %g relative)", c.what, c.got, c.want, tol)
		}
	}
	if !(*want.KL > 0) {
		t.Errorf("direct KL %v: the stage changed nothing", *want.KL)
	}
	t.Logf("KL %.5f nats/token, perplexity %.3f (original %.3f), top-1 agreement %.3f, %d bytes",
		*q.KL, q.PPL, res.Quality.Original.PPL, *q.Top1Agree, res.Quality.FileBytes)
	return *q.KL
}

func runJob(t *testing.T, j *recipe.Job, storeDir string, override map[string]any) (workflows.Result, error) {
	t.Helper()
	c, _ := service(t, storeDir, override)
	var res workflows.Result
	err := start(t, c, j).Get(context.Background(), &res)
	return res, err
}

// Palu alone, exported native: the grouped k/v projections.
func TestEndToEndPalu(t *testing.T) {
	dir := t.TempDir()
	j := stageJob(t, dir, `  - {method: palu, kv_keep: 0.75, group_size: 2, rank_search: uniform}`, `{format: native}`)
	t0 := time.Now()
	res, err := runJob(t, j, filepath.Join(dir, "store"), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("workflow %v", time.Since(t0).Round(time.Millisecond))
	orig, comp, _ := direct(t, j)
	ddir := filepath.Join(dir, "direct")
	if err := model.Save(comp, ddir, safetensors.F32); err != nil {
		t.Fatal(err)
	}
	sameFiles(t, j.Recipe.Output, ddir)
	checkQuality(t, j, res, orig, comp)
	if len(res.Stages) != 1 || len(res.Stages[0]) != 5 || !slices.Equal(res.Stages[0][4].Palu["model.layers.4.self_attn.v_proj"], []int{12, 12}) {
		t.Errorf("palu report %+v", res.Stages)
	}
	if res.Quality.KVBytesPerToken <= 0 || res.Quality.Compressed.KVBytes >= res.Quality.Original.KVBytes {
		t.Errorf("KV cache %d bytes/token, original %d: palu did not shrink it", res.Quality.Compressed.KVBytes, res.Quality.Original.KVBytes)
	}
}

// GPTQ then EoRA, exported as a GPTQ v1 checkpoint with a PEFT adapter;
// a second run of the job finds everything done.
func TestEndToEndGPTQEoRA(t *testing.T) {
	dir := t.TempDir()
	j := stageJob(t, dir, `
  - {method: gptq, bits: 4, group_size: 32, targets: ["self_attn.*"]}
  - {method: eora, rank: 8}`, `{format: gptq}`)
	sdir := filepath.Join(dir, "store")
	res, err := runJob(t, j, sdir, nil)
	if err != nil {
		t.Fatal(err)
	}
	orig, comp, adapters := direct(t, j)
	ddir := filepath.Join(dir, "direct")
	base := baseOf(comp)
	o, _ := activities.QuantOptions(j.Recipe, 0)
	qc, err := gptq.NewQuantizeConfig(o.Bits, o.GroupSize, false, o.Sym)
	if err != nil {
		t.Fatal(err)
	}
	if err := gptq.Export(base, ddir, safetensors.F32, qc); err != nil {
		t.Fatal(err)
	}
	if err := gptq.WriteAdapter(filepath.Join(ddir, activities.AdapterDir), gptq.BesideBase, adapters, safetensors.F32); err != nil {
		t.Fatal(err)
	}
	sameFiles(t, j.Recipe.Output, ddir)
	kl := checkQuality(t, j, res, orig, comp)

	// EoRA lowers the error of the quantized model: compare with gptq alone.
	_, q, _ := direct(t, &recipe.Job{Recipe: recipe.Recipe{Model: j.Recipe.Model, Calibration: j.Recipe.Calibration, Stages: j.Recipe.Stages[:1]}})
	if qkl := *evaluate(t, j, q, orig).KL; !(kl < qkl) {
		t.Errorf("KL with EoRA %.5f, gptq alone %.5f: EoRA did not help", kl, qkl)
	}
	if r := res.Stages[1]; len(r) != 5 || len(r[0].EoRA) != 4 || !(r[0].EoRA[0].ErrorAfter < r[0].EoRA[0].ErrorBefore) {
		t.Errorf("eora report %+v", r)
	}
	if r := res.Stages[0]; len(r) != 5 || len(r[0].Quant) != 4 || r[0].Quant[0].Groups != 2 {
		t.Errorf("gptq report %+v", r)
	}

	again, err := runJob(t, j, sdir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if again.Skipped != 10 || !again.Export.Skipped || !again.Quality.Skipped || !slices.Equal(again.Files, res.Files) {
		t.Errorf("second run recomputed: skipped %d blocks of 10, export skipped %v, evaluation skipped %v", again.Skipped, again.Export.Skipped, again.Quality.Skipped)
	}
}

// baseOf returns m with its EoRA adapters taken off.
func baseOf(m *model.Model) *model.Model {
	out := *m
	out.Blocks = make([]*model.Block, len(m.Blocks))
	for i, b := range m.Blocks {
		nb := *b
		for _, mod := range model.Modules {
			if a, ok := (*nb.Linear(mod)).(*gptq.Adapted); ok {
				*nb.Linear(mod) = a.Base
			}
		}
		out.Blocks[i] = &nb
	}
	return &out
}

// svd on the MLP, then RTN on the attention, exported dense. The job fails
// in stage 1 at block 3; a new run of it redoes none of the finished blocks
// and ends with the direct path's checkpoint.
func TestEndToEndSVDThenRTNResume(t *testing.T) {
	dir := t.TempDir()
	j := stageJob(t, dir, `
  - {method: svd, targets: ["mlp.*"], keep_params: 0.8, rank_search: uniform}
  - {method: rtn, bits: 8, group_size: 32}`, `{format: dense}`)
	sdir := filepath.Join(dir, "store")
	var real *activities.Activities
	crash := func(ctx context.Context, in activities.StageBlockInput) (activities.StageBlockOutput, error) {
		if in.Index == 3 {
			return activities.StageBlockOutput{}, temporal.NewNonRetryableApplicationError("worker lost", "Crash", nil)
		}
		return real.StageBlock(ctx, in)
	}
	c, acts := service(t, sdir, map[string]any{"StageBlock": crash})
	real = acts
	err := start(t, c, j).Get(context.Background(), nil)
	if err == nil || !strings.Contains(err.Error(), "stages[1] (rtn) block 3") {
		t.Fatalf("error %v, want the crash in stages[1] (rtn) block 3", err)
	}
	if p := progress(t, c, j.ID); p.Stage != workflows.StageFailed || p.Step != 1 || p.Steps != 2 || p.Method != "rtn" || p.Block != 3 {
		t.Errorf("progress after the crash %+v", p)
	}

	res, err := runJob(t, j, sdir, nil)
	if err != nil {
		t.Fatal(err)
	}
	// 5 svd blocks and rtn blocks 0-2 were stored by the first run.
	if res.Skipped != 8 {
		t.Errorf("resumed run skipped %d blocks, want 8 (5 svd + 3 rtn)", res.Skipped)
	}
	orig, comp, _ := direct(t, j)
	dense, err := activities.Densify(comp)
	if err != nil {
		t.Fatal(err)
	}
	ddir := filepath.Join(dir, "direct")
	if err := model.Save(dense, ddir, safetensors.F32); err != nil {
		t.Fatal(err)
	}
	sameFiles(t, j.Recipe.Output, ddir)
	checkQuality(t, j, res, orig, comp)
	if len(res.Layers) != 15 || len(res.Stages) != 2 || res.Stages[0] != nil || len(res.Stages[1]) != 5 || len(res.Stages[1][0].Quant) != 4 {
		t.Errorf("reports: %d low-rank layers, stages %+v", len(res.Layers), res.Stages)
	}
	if res.Quality.Params != res.Quality.OriginalParams {
		t.Errorf("a dense export has %d parameters, the original %d", res.Quality.Params, res.Quality.OriginalParams)
	}
}

// svd on the MLP, then palu on the KV projections with 4-bit latents,
// exported native: the checkpoint holds both factored and grouped layers.
func TestEndToEndSVDThenPalu(t *testing.T) {
	dir := t.TempDir()
	j := stageJob(t, dir, `
  - {method: svd, targets: ["mlp.*"], keep_params: 0.9, rank_search: uniform}
  - {method: palu, kv_keep: 0.875, latent_bits: 4}`, `{format: native}`)
	res, err := runJob(t, j, filepath.Join(dir, "store"), nil)
	if err != nil {
		t.Fatal(err)
	}
	orig, comp, _ := direct(t, j)
	ddir := filepath.Join(dir, "direct")
	if err := model.Save(comp, ddir, safetensors.F32); err != nil {
		t.Fatal(err)
	}
	sameFiles(t, j.Recipe.Output, ddir)
	checkQuality(t, j, res, orig, comp)
	back, err := model.Load(j.Recipe.Output, kernels.Default())
	if err != nil {
		t.Fatal(err)
	}
	b := back.Blocks[2]
	if _, ok := (*b.Linear("mlp.up_proj")).(*model.Factored); !ok {
		t.Errorf("mlp.up_proj is %T, want factored", *b.Linear("mlp.up_proj"))
	}
	if g, ok := (*b.Linear("self_attn.v_proj")).(*model.Grouped); !ok || g.LatentBits != 4 {
		t.Errorf("self_attn.v_proj is %T (%+v), want grouped with 4-bit latents", *b.Linear("self_attn.v_proj"), g)
	}
}

// SVD on the MLP, then GQA converted to MLA, exported in the DeepSeek-V3
// layout: the same bytes as the direct path, read back with its smaller
// KV cache.
func TestEndToEndSVDThenMLA(t *testing.T) {
	dir := t.TempDir()
	j := stageJob(t, dir, `
  - {method: svd, targets: ["mlp.*"], keep_params: 0.9, rank_search: uniform}
  - {method: mla, qk_rope_head_dim: 16, kv_lora_rank: 24}`, `{format: deepseek-mla}`)
	res, err := runJob(t, j, filepath.Join(dir, "store"), nil)
	if err != nil {
		t.Fatal(err)
	}
	orig, comp, _ := direct(t, j)
	ddir := filepath.Join(dir, "direct")
	if err := model.Save(comp, ddir, safetensors.F32); err != nil {
		t.Fatal(err)
	}
	sameFiles(t, j.Recipe.Output, ddir)
	checkQuality(t, j, res, orig, comp)
	back, err := model.Load(j.Recipe.Output, kernels.Default())
	if err != nil {
		t.Fatal(err)
	}
	if back.Config.MLA == nil || back.Blocks[0].MLA == nil {
		t.Fatalf("the export has no latent attention: %+v", back.Config.MLA)
	}
	if _, ok := (*back.Blocks[2].Linear("mlp.up_proj")).(*model.Factored); !ok {
		t.Errorf("mlp.up_proj is %T, want factored", *back.Blocks[2].Linear("mlp.up_proj"))
	}
	// 5 layers × (24 latent + 16 rope) × 2 bytes, against 5 × 2 × 32 × 2.
	if q := res.Quality; q.KVBytesPerToken != 400 || q.OriginalKVBytesPerToken != 640 {
		t.Errorf("KV cache %d bytes/token (original %d), want 400 (640)", q.KVBytesPerToken, q.OriginalKVBytesPerToken)
	}
	if len(res.Stages) != 2 || len(res.Stages[1]) != 5 || res.Stages[1][0].MLA == nil {
		t.Errorf("mla report %+v", res.Stages)
	}
}

// Palu exported in Palu's own layout (VT / U.{j}, head_wise_ranks): the same
// bytes as model.SavePalu on the direct path, read back by rankzip.
func TestEndToEndPaluLayout(t *testing.T) {
	dir := t.TempDir()
	j := stageJob(t, dir, `  - {method: palu, kv_keep: 0.5, group_size: 4}`, `{format: palu}`)
	res, err := runJob(t, j, filepath.Join(dir, "store"), nil)
	if err != nil {
		t.Fatal(err)
	}
	orig, comp, _ := direct(t, j)
	ddir := filepath.Join(dir, "direct")
	if err := model.SavePalu(comp, ddir, safetensors.F32); err != nil {
		t.Fatal(err)
	}
	sameFiles(t, j.Recipe.Output, ddir)
	checkQuality(t, j, res, orig, comp)
	raw, err := os.ReadFile(filepath.Join(j.Recipe.Output, "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(raw), `"model_type": "palullama"`) || !strings.Contains(string(raw), `"head_wise_ranks"`) {
		t.Errorf("config.json is not Palu's:\n%s", raw)
	}
}

// DESIGN's example order: svd, palu, gptq, eora in one recipe, exported in
// rankzip's native layout (factored, grouped and quantized layers) with
// EoRA's corrections as a PEFT adapter beside it; the read-back checkpoint
// has the quality of the direct path's model.
func TestEndToEndAllStagesNative(t *testing.T) {
	dir := t.TempDir()
	j := stageJob(t, dir, `
  - {method: svd, targets: ["mlp.*"], keep_params: 0.9, rank_search: uniform}
  - {method: palu, kv_keep: 0.75, rank_search: uniform}
  - {method: gptq, bits: 4, group_size: 32}
  - {method: eora, rank: 4}`, `{format: native}`)
	if got := j.Recipe.Stages[2].Targets; !slices.Equal(got, []string{"self_attn.q_proj", "self_attn.o_proj"}) {
		t.Fatalf("gptq's default targets %v, want the layers the earlier stages left dense", got)
	}
	res, err := runJob(t, j, filepath.Join(dir, "store"), nil)
	if err != nil {
		t.Fatal(err)
	}
	orig, comp, adapters := direct(t, j)
	if len(adapters) == 0 {
		t.Fatal("the direct path fitted no EoRA correction")
	}
	checkQuality(t, j, res, orig, comp)
	if _, err := os.Stat(filepath.Join(j.Recipe.Output, activities.AdapterDir, "adapter_config.json")); err != nil {
		t.Errorf("no PEFT adapter beside the native checkpoint: %v", err)
	}
	back, err := model.Load(j.Recipe.Output, kernels.Default())
	if err != nil {
		t.Fatal(err)
	}
	b := back.Blocks[1]
	for mod, want := range map[string]string{"mlp.up_proj": "*model.Factored", "self_attn.k_proj": "*model.Grouped", "self_attn.q_proj": "*model.Quantized"} {
		if got := fmt.Sprintf("%T", *b.Linear(mod)); got != want {
			t.Errorf("%s read back as %s, want %s", mod, got, want)
		}
	}
}
