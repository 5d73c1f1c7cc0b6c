package workflows

import (
	"context"
	"sync"
	"testing"

	"github.com/stretchr/testify/mock"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/testsuite"

	"github.com/rankzip/rankzip/activities"
	"github.com/rankzip/rankzip/recipe"
)

// A job that asks for cuda sends its compute activities to the GPU queue,
// one that asks for nothing to the workflow's queue; Evaluate and Report go
// to the queue of the host that exported, whichever the device.
func TestTaskQueues(t *testing.T) {
	const host = "rankzip-host-h1-cpu"
	for _, device := range []string{"", "cuda"} {
		var suite testsuite.WorkflowTestSuite
		suite.SetLogger(quiet)
		e := suite.NewTestWorkflowEnvironment()
		e.RegisterActivity(a)
		e.OnActivity(a.Inspect, mock.Anything, mock.Anything).Return(activities.InspectOutput{Blocks: blocks, Plan: ref("plan"), Streams: ref("s0")}, nil)
		e.OnActivity(a.Block, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.BlockInput) (activities.BlockOutput, error) {
			return done(in), nil
		})
		e.OnActivity(a.Export, mock.Anything, mock.Anything).Return(activities.ExportOutput{Dir: "/out", Files: []recipe.File{{Path: "/out/model.safetensors"}}, HostQueue: host}, nil)
		e.OnActivity(a.Evaluate, mock.Anything, mock.Anything).Return(activities.Quality{}, nil)
		e.OnActivity(a.Report, mock.Anything, mock.Anything).Return(activities.ReportOutput{HTML: "/out/r.html"}, nil)
		var mu sync.Mutex
		queues := map[string]string{}
		e.SetOnActivityStartedListener(func(info *activity.Info, _ context.Context, _ converter.EncodedValues) {
			mu.Lock()
			queues[info.ActivityType.Name] = info.TaskQueue
			mu.Unlock()
		})
		in := testInput()
		in.Device = device
		e.ExecuteWorkflow(CompressModel, in)
		if err := e.GetWorkflowError(); err != nil {
			t.Fatal(err)
		}
		var res Result
		if err := e.GetWorkflowResult(&res); err != nil || res.ReportError != "" {
			t.Fatalf("result: %v, report error %q", err, res.ReportError)
		}
		for _, act := range []string{"Inspect", "Block", "Export"} {
			q := queues[act]
			if (device == "cuda") != (q == GPUTaskQueue) || q == host {
				t.Errorf("device %q: %s ran on queue %q", device, act, q)
			}
		}
		for _, act := range []string{"Evaluate", "Report"} {
			if queues[act] != host {
				t.Errorf("device %q: %s ran on queue %q, want the exporting host's %q", device, act, queues[act], host)
			}
		}
		t.Logf("device %q: %v", device, queues)
	}
	if got := HostTaskQueue("h1", true); got != "rankzip-host-h1-gpu" {
		t.Errorf("HostTaskQueue(h1, gpu) = %q", got)
	}
}
