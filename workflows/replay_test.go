package workflows_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	historypb "go.temporal.io/api/history/v1"
	"go.temporal.io/sdk/worker"
	"go.temporal.io/sdk/workflow"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/rankzip/rankzip/workflows"
)

// Recorded histories of CompressModel jobs, made by this package's tests
// with RANKZIP_RECORD_HISTORY=1 (all of them) or =FILE (the one whose base
// name is FILE: record a new one without touching the old). Replaying them
// with today's code fails when a change alters the commands a running job
// would see on resume: such a change must be put behind workflow.GetVersion
// (see CompressModel's comment), never shipped as is. The first two predate
// the host-failover version; the third has its marker.
var histories = []struct {
	file, stages, export string
}{
	{"testdata/history-svd-native.json", `  - {method: svd, variant: whiten, targets: ["mlp.*"], keep_params: 0.8, rank_search: uniform}`, `{format: native}`},
	{"testdata/history-svd-gptq-eora.json", `  - {method: svd, variant: whiten, targets: ["mlp.*"], keep_params: 0.8, rank_search: uniform}
  - {method: gptq, bits: 4, group_size: 32}
  - {method: eora, rank: 4}`, `{format: native}`},
	{"testdata/history-svd-native-host-failover.json", `  - {method: svd, variant: whiten, targets: ["mlp.*"], keep_params: 0.8, rank_search: uniform}`, `{format: native}`},
}

func TestReplayRecordedHistories(t *testing.T) {
	for _, h := range histories {
		t.Run(filepath.Base(h.file), func(t *testing.T) {
			if v := os.Getenv("RANKZIP_RECORD_HISTORY"); v == "1" || v == filepath.Base(h.file) {
				record(t, h.file, h.stages, h.export)
			}
			r := worker.NewWorkflowReplayer()
			r.RegisterWorkflow(workflows.CompressModel)
			if err := r.ReplayWorkflowHistoryFromJSONFile(nil, h.file); err != nil {
				t.Fatalf("the job recorded in %s does not replay on today's workflow code: %v", h.file, err)
			}
		})
	}
}

// record runs a job to the end on a test server and writes its history.
func record(t *testing.T, file, stages, export string) {
	dir := t.TempDir()
	j := stageJob(t, dir, stages, export)
	c, _ := service(t, filepath.Join(dir, "store"), nil)
	run := start(t, c, j)
	var res workflows.Result
	if err := run.Get(context.Background(), &res); err != nil {
		t.Fatal(err)
	}
	events := history(t, c, run)
	b, err := protojson.MarshalOptions{Indent: " "}.Marshal(&historypb.History{Events: events})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, b, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("recorded %d events in %s", len(events), file)
}

// The replay check can fail: a workflow that issues other commands under
// CompressModel's name is told apart from the recorded history.
func TestReplayDetectsChangedCommands(t *testing.T) {
	changed := func(ctx workflow.Context, in workflows.Input) (workflows.Result, error) {
		ctx = workflow.WithActivityOptions(ctx, workflow.ActivityOptions{StartToCloseTimeout: time.Minute})
		err := workflow.ExecuteActivity(ctx, "Export", nil).Get(ctx, nil)
		return workflows.Result{}, err
	}
	r := worker.NewWorkflowReplayer()
	r.RegisterWorkflowWithOptions(changed, workflow.RegisterOptions{Name: "CompressModel"})
	if err := r.ReplayWorkflowHistoryFromJSONFile(nil, histories[0].file); err == nil {
		t.Fatal("a workflow with other commands replayed the recorded history without an error")
	}
}
