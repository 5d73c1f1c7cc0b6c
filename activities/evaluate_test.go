package activities

import (
	"math"
	"testing"

	"github.com/rankzip/rankzip/calib"
	"github.com/rankzip/rankzip/eval"
	"github.com/rankzip/rankzip/model"
	"github.com/rankzip/rankzip/store"
)

// Evaluate, reading both checkpoints one block at a time, reports what the
// whole models give: parameters, KV cache bytes and, with evaluation data,
// eval.Evaluate's reports (relative tolerance 1e-6: the same float32
// operations, scored in float64); without evaluation data, the same sizes.
func TestEvaluateMatchesWholeModels(t *testing.T) {
	for _, evaluation := range []string{"evaluation: {data: data.parquet, sequences: 3}\n", ""} {
		job, acts, _ := fixtureRecipe(t, `model: model
calibration: {data: data.parquet, sequences: 8, batch: 3}
`+evaluation+`output: out
stages: [{method: svd, targets: ["mlp.*", "self_attn.o_proj"], keep_params: 0.6, rank_search: uniform}]
`)
		ins, blocks := runBlocks(t, job, acts)
		var refs []store.Ref
		for _, b := range blocks {
			refs = append(refs, b.Factors)
		}
		exp, _, err := exec[ExportOutput](t, acts, nil, acts.Export, ExportInput{Job: job, Plan: ins.Plan, Blocks: refs})
		if err != nil {
			t.Fatal(err)
		}
		q, _, err := exec[Quality](t, acts, nil, acts.Evaluate, EvaluateInput{Job: job, Export: exp})
		if err != nil {
			t.Fatal(err)
		}
		orig, err := model.Load(job.Recipe.Model, acts.Backend)
		if err != nil {
			t.Fatal(err)
		}
		comp, err := LoadExport(exp.Dir, acts.Backend)
		if err != nil {
			t.Fatal(err)
		}
		if q.Params != NumParams(comp) || q.OriginalParams != NumParams(orig) || !(q.Params < q.OriginalParams) ||
			q.KVBytesPerToken != int64(comp.KVBytesPerToken()) || q.OriginalKVBytesPerToken != int64(orig.KVBytesPerToken()) {
			t.Errorf("params %d of %d, KV bytes %d of %d; the whole models have %d of %d, %d of %d", q.Params, q.OriginalParams,
				q.KVBytesPerToken, q.OriginalKVBytesPerToken, NumParams(comp), NumParams(orig), comp.KVBytesPerToken(), orig.KVBytesPerToken())
		}
		if evaluation == "" {
			if q.Compressed != nil || q.Original != nil {
				t.Errorf("reports %+v and %+v without evaluation data", q.Compressed, q.Original)
			}
			continue
		}
		ds, err := calib.Open(job.Recipe.Evaluation.Data)
		if err != nil {
			t.Fatal(err)
		}
		want, err := eval.Evaluate(comp, orig, ds, 3, nil)
		if err != nil {
			t.Fatal(err)
		}
		wantBase, err := eval.Evaluate(orig, nil, ds, 3, nil)
		ds.Close()
		if err != nil {
			t.Fatal(err)
		}
		if q.Compressed == nil || q.Original == nil || q.Compressed.KL == nil || !(*want.KL > 0) {
			t.Fatalf("quality %+v, whole-model KL %v", q, want.KL)
		}
		const tol = 1e-6
		for _, c := range [][2]float64{{*q.Compressed.KL, *want.KL}, {q.Compressed.PPL, want.PPL}, {q.Original.PPL, wantBase.PPL}} {
			if math.Abs(c[0]-c[1]) > tol*math.Abs(c[1]) {
				t.Errorf("KL, perplexity, original perplexity: %.12g, whole models %.12g (tolerance %g relative)", c[0], c[1], tol)
			}
		}
		if q.Compressed.Tokens != want.Tokens || q.Original.Sequences != 3 || q.Compressed.KVBytes != want.KVBytes {
			t.Errorf("reports %+v and %+v, whole models %+v", *q.Compressed, *q.Original, want)
		}
	}
}
