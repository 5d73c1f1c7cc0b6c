package activities

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/rankzip/rankzip/recipe"
	"github.com/rankzip/rankzip/store"
)

// storiesJob loads a recipe with the given stages on stories260K
// (testdata), calibrated on 8 of its sample sequences.
func storiesJob(t *testing.T, stages string) (recipe.Job, *Activities) {
	t.Helper()
	fx, err := filepath.Abs("../testdata")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"stories260K/model.safetensors", "samples/calib.parquet"} {
		if _, err := os.Stat(filepath.Join(fx, p)); err != nil {
			t.Fatalf("test data %s missing from the repository: %v", p, err)
		}
	}
	job, acts, _ := fixtureRecipe(t, fmt.Sprintf("model: %s\ncalibration: {data: %s, sequences: 8, seq_len: 64}\noutput: out\nstages:\n%s\n",
		filepath.Join(fx, "stories260K"), filepath.Join(fx, "samples/calib.parquet"), stages))
	return job, acts
}

// compressStages runs the job's stages as the workflow does (Inspect and
// Block for a first low-rank stage, PlanStage and StageBlock for the others)
// and returns the export's input.
func compressStages(t *testing.T, job recipe.Job, acts *Activities) ExportInput {
	t.Helper()
	ins, _, err := exec[InspectOutput](t, acts, nil, acts.Inspect, InspectInput{Job: job})
	if err != nil {
		t.Fatal(err)
	}
	in := ExportInput{Job: job, Plan: ins.Plan}
	var prior [][]store.Ref // prior[j][i]: block i after stage j
	first := 0
	if !ins.Plan.IsZero() {
		_, blocks := runBlocks(t, job, acts)
		var refs []store.Ref
		for _, b := range blocks {
			refs = append(refs, b.Factors)
		}
		prior, first = append(prior, refs), 1
	}
	for s := first; s < len(job.Recipe.Stages); s++ {
		plan, _, err := exec[PlanStageOutput](t, acts, nil, acts.PlanStage, PlanStageInput{Job: job, Stage: s, Prior: prior})
		if err != nil {
			t.Fatal(err)
		}
		streams := ins.Streams
		var refs []store.Ref
		for i := range ins.Blocks {
			var bp []store.Ref
			for _, p := range prior {
				bp = append(bp, p[i])
			}
			b, _, err := exec[StageBlockOutput](t, acts, nil, acts.StageBlock, StageBlockInput{Job: job, Stage: s, Plan: plan.Plan,
				Streams: streams, Prior: bp, Index: i, Blocks: ins.Blocks})
			if err != nil {
				t.Fatal(err)
			}
			streams, refs = b.Next, append(refs, b.Layers)
		}
		if s == 0 {
			in.Plan = plan.Plan
		}
		prior = append(prior, refs)
	}
	in.Blocks, in.Later = prior[0], prior[1:]
	return in
}

// digests returns the sha256 of every file under dir, by relative path.
func digests(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		sum := sha256.Sum256(data)
		out[rel] = hex.EncodeToString(sum[:])
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// The export written block by block is byte for byte the export of the
// whole compressed model (the path every export took before, and latent
// attention's still): every file of native exports with factored, Palu and
// quantized layers and an EoRA adapter, of dense and Palu-layout exports
// and of a GPTQ checkpoint with its adapter, on stories260K.
func TestExportByBlockMatchesWhole(t *testing.T) {
	cases := []struct {
		name, stages string
		exports      []recipe.Export
	}{
		{"svd palu gptq eora", `
  - {method: svd, targets: ["mlp.*"], keep_params: 0.9, rank_search: uniform}
  - {method: palu, kv_keep: 0.75, rank_search: uniform}
  - {method: gptq, bits: 4, group_size: 32}
  - {method: eora, rank: 4}`, []recipe.Export{{Format: "native"}, {Format: "native", DType: "bfloat16"}, {Format: "dense"}}},
		{"gptq eora", `
  - {method: gptq, bits: 4, group_size: 32, targets: ["self_attn.*"]}
  - {method: eora, rank: 8}`, []recipe.Export{{Format: "gptq"}, {Format: "native", DType: "float16"}}},
		{"palu", `
  - {method: palu, kv_keep: 0.5, group_size: 4}`, []recipe.Export{{Format: "palu"}, {Format: "dense", DType: "bfloat16"}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			job, acts := storiesJob(t, c.stages)
			in := compressStages(t, job, acts)
			for _, e := range c.exports {
				name := e.Format + " " + e.DType
				src, err := acts.openCompressed(context.Background(), job, append([][]store.Ref{in.Blocks}, in.Later...))
				if err != nil {
					t.Fatal(err)
				}
				outs := map[bool]ExportOutput{}
				files := map[bool]map[string]string{}
				for _, whole := range []bool{true, false} {
					j := job
					j.Recipe.Export = e
					j.Recipe.Output = filepath.Join(t.TempDir(), "out")
					out, err := acts.export(j, src, whole)
					if err != nil {
						t.Fatalf("%s (whole %v): %v", name, whole, err)
					}
					outs[whole], files[whole] = out, digests(t, out.Dir)
				}
				src.close()
				if len(files[true]) < 3 || !maps.Equal(files[true], files[false]) {
					t.Errorf("%s: written block by block\n%v\nwhole\n%v", name, files[false], files[true])
				}
				if outs[true].Params != outs[false].Params || outs[true].Bytes != outs[false].Bytes {
					t.Errorf("%s: block by block %d parameters in %d bytes, whole %d in %d", name,
						outs[false].Params, outs[false].Bytes, outs[true].Params, outs[true].Bytes)
				}
				want := map[string][]string{"native": {"config.json", "model.safetensors"}, "dense": {"config.json", "model.safetensors"},
					"gptq": {"config.json", "model.safetensors", "quantize_config.json"}, "palu": {"config.json", "model.safetensors"}}[e.Format]
				if c.name != "palu" && e.Format != "dense" {
					want = append(want, filepath.Join(AdapterDir, "adapter_config.json"), filepath.Join(AdapterDir, "adapter_model.safetensors"))
				}
				for _, f := range want {
					if files[false][f] == "" {
						t.Errorf("%s: no %s among %v", name, f, slices.Sorted(maps.Keys(files[false])))
					}
				}
			}
		})
	}
}
