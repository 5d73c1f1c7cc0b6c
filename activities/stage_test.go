package activities

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.temporal.io/sdk/temporal"

	"github.com/rankzip/rankzip/recipe"
	"github.com/rankzip/rankzip/store"
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

// PlanStage reads the model a block at a time, with the earlier stages'
// layers applied as each is read; a read that fails (here: a stored layer
// gone from the store) is the step's error as the store classified it, not
// a bad-input error about the stage that was being checked.
func TestPlanStageReadErrorKeepsItsClass(t *testing.T) {
	job, acts, _ := stageFixture(t, `[{method: rtn, bits: 4, group_size: 0}, {method: eora, rank: 2}]`, `{format: dense}`)
	gone := store.Ref{SHA256: strings.Repeat("ab", 32), Bytes: 10}
	prior := [][]store.Ref{{gone, gone, gone}}
	_, _, err := exec[PlanStageOutput](t, acts, nil, acts.PlanStage, PlanStageInput{Job: job, Stage: 1, Prior: prior})
	var ae *temporal.ApplicationError
	if err == nil || strings.Contains(err.Error(), "stages[1]") || (errors.As(err, &ae) && ae.Type() == BadInput) {
		t.Errorf("plan over a missing stored layer: error %v, want the store's read error, not bad input about stages[1]", err)
	}
	if _, _, err := exec[PlanStageOutput](t, acts, nil, acts.PlanStage, PlanStageInput{Job: job, Stage: 1, Prior: [][]store.Ref{{gone}}}); err == nil || !strings.Contains(err.Error(), "stage 0 has 1 blocks for a model with 3") {
		t.Errorf("plan with one stored block of three: error %v", err)
	}
}
