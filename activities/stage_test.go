package activities

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rankzip/rankzip/recipe"
)

// stageFixture is fixture with the given stages and export.
func stageFixture(t *testing.T, stages, export string) (recipe.Job, *Activities, *bytes.Buffer) {
	t.Helper()
	return fixtureRecipe(t, "model: model\ncalibration: {data: data.parquet, sequences: 8, batch: 3}\noutput: out\nstages: "+stages+"\nexport: "+export+"\n")
}

// A stage block whose layers were stored before its attempt stopped (its
// record is missing) only recomputes the next streams, which come out the
// same.
func TestStageBlockResumes(t *testing.T) {
	job, acts, log := stageFixture(t, `[{method: rtn, bits: 8, group_size: 0}]`, `{format: dense}`)
	ins, _, err := exec[InspectOutput](t, acts, nil, acts.Inspect, InspectInput{Job: job})
	if err != nil {
		t.Fatal(err)
	}
	if !ins.Plan.IsZero() || ins.Blocks != 3 {
		t.Fatalf("inspect of a recipe without a low-rank stage: %+v", ins)
	}
	plan, _, err := exec[PlanStageOutput](t, acts, nil, acts.PlanStage, PlanStageInput{Job: job, Stage: 0})
	if err != nil {
		t.Fatal(err)
	}
	in := StageBlockInput{Job: job, Stage: 0, Plan: plan.Plan, Streams: ins.Streams, Index: 0, Blocks: 3}
	first, _, err := exec[StageBlockOutput](t, acts, nil, acts.StageBlock, in)
	if err != nil {
		t.Fatal(err)
	}
	if first.Layers.IsZero() || first.Next.IsZero() || len(first.Report.Quant) != 7 || first.Skipped {
		t.Fatalf("first run %+v", first)
	}
	again, _, err := exec[StageBlockOutput](t, acts, nil, acts.StageBlock, in)
	if err != nil || !again.Skipped || again.Layers != first.Layers {
		t.Fatalf("second run %+v (%v), want it found in the store", again, err)
	}
	// Drop the block's record, keep its stored layers.
	recs, _ := filepath.Glob(filepath.Join(acts.Store.Root(), "keys", "stage-block", "*.json"))
	if len(recs) != 1 {
		t.Fatalf("%d stage-block records", len(recs))
	}
	if err := os.Remove(recs[0]); err != nil {
		t.Fatal(err)
	}
	log.Reset()
	resumed, _, err := exec[StageBlockOutput](t, acts, nil, acts.StageBlock, in)
	if err != nil {
		t.Fatal(err)
	}
	if resumed.Skipped || resumed.Layers != first.Layers || resumed.Next != first.Next || len(resumed.Report.Quant) != 7 {
		t.Errorf("resumed %+v, first %+v", resumed, first)
	}
	if !strings.Contains(log.String(), "only the next streams are missing") {
		t.Errorf("the resumed block recomputed its layers; log:\n%s", log.String())
	}
}

// A stage planned on a model it cannot apply to fails as bad input naming
// the stage.
func TestPlanStageBadInput(t *testing.T) {
	job, acts, _ := stageFixture(t, `[{method: rtn, bits: 8, group_size: 0}]`, `{format: dense}`)
	job.Recipe.Stages[0].Bits = 5 // past validation
	_, _, err := exec[PlanStageOutput](t, acts, nil, acts.PlanStage, PlanStageInput{Job: job, Stage: 0})
	if err == nil || !strings.Contains(err.Error(), "stages[0] (rtn)") || !strings.Contains(err.Error(), "bits 5") || !strings.Contains(err.Error(), BadInput) {
		t.Errorf("error %v, want BadInput naming stages[0] (rtn) and bits 5", err)
	}
}
