package workflows_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	historypb "go.temporal.io/api/history/v1"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/worker"
	"go.temporal.io/server/temporaltest"

	"github.com/rankzip/rankzip/activities"
	"github.com/rankzip/rankzip/recipe"
	"github.com/rankzip/rankzip/workflows"
)

// scheduleToStartTimeouts returns the activities of a history that timed
// out waiting for a worker, as "Type@queue", and how long each waited
// (from its scheduling to its timeout, in the history).
func scheduleToStartTimeouts(events []*historypb.HistoryEvent) ([]string, []time.Duration) {
	scheduled := map[int64]*historypb.HistoryEvent{}
	var names []string
	var waited []time.Duration
	for _, e := range events {
		if a := e.GetActivityTaskScheduledEventAttributes(); a != nil {
			scheduled[e.EventId] = e
		}
		a := e.GetActivityTaskTimedOutEventAttributes()
		if a == nil || a.GetFailure().GetTimeoutFailureInfo().GetTimeoutType() != enumspb.TIMEOUT_TYPE_SCHEDULE_TO_START {
			continue
		}
		s := scheduled[a.ScheduledEventId]
		sa := s.GetActivityTaskScheduledEventAttributes()
		names = append(names, sa.ActivityType.GetName()+"@"+sa.TaskQueue.GetName())
		waited = append(waited, e.EventTime.AsTime().Sub(s.EventTime.AsTime()))
	}
	return names, waited
}

// The host that exported goes away with its disk right after Export: no
// worker polls its host queue. Evaluate waits HostWait there, the job
// exports again on the general queue (on a host whose queue a worker
// polls, here) and evaluates and reports there; the checkpoint is byte for
// byte the lost one.
func TestExportingHostGone(t *testing.T) {
	const dead, live = "rankzip-host-dead-cpu", "rankzip-host-live-cpu"
	dir := t.TempDir()
	j := job(t, dir)
	acts := testActivities(t, filepath.Join(dir, "store"))
	gone := filepath.Join(dir, "gone-host-out")
	var exports atomic.Int32
	export := func(ctx context.Context, in activities.ExportInput) (activities.ExportOutput, error) {
		out, err := acts.Export(ctx, in)
		if err != nil {
			return out, err
		}
		if exports.Add(1) == 1 {
			// The first exporting host and its copy of the checkpoint
			// are out of reach from now on.
			if err := os.Rename(out.Dir, gone); err != nil {
				return out, err
			}
			out.HostQueue = dead
		} else {
			out.HostQueue = live
		}
		return out, nil
	}
	ts := temporaltest.NewServer(temporaltest.WithT(t))
	ts.NewWorker(workflows.TaskQueue, func(r worker.Registry) {
		workflows.Register(r, acts)
		r.RegisterActivityWithOptions(export, activity.RegisterOptions{Name: "Export", DisableAlreadyRegisteredCheck: true})
	})
	ts.NewWorker(live, func(r worker.Registry) { r.RegisterActivity(acts) })
	c := ts.GetDefaultClient()

	const wait = 2 * time.Second
	t0 := time.Now()
	run, err := c.ExecuteWorkflow(context.Background(), client.StartWorkflowOptions{ID: j.ID, TaskQueue: workflows.TaskQueue},
		workflows.CompressModel, workflows.Input{Job: *j, HeartbeatTimeout: 2 * time.Second, RetryInterval: 100 * time.Millisecond, HostWait: wait})
	if err != nil {
		t.Fatal(err)
	}
	var res workflows.Result
	if err := run.Get(context.Background(), &res); err != nil {
		t.Fatalf("job with its exporting host gone: %v", err)
	}
	took := time.Since(t0)
	if n := exports.Load(); n != 2 || res.Reexports != 1 || res.Export.HostQueue != live {
		t.Errorf("%d exports, result: %d re-exports, host queue %q; want 2, 1, %q", n, res.Reexports, res.Export.HostQueue, live)
	}
	if res.Quality.Compressed == nil || res.Report == "" || res.ReportError != "" {
		t.Errorf("evaluation %+v, report %q (error %q): want both made on the new host", res.Quality.Compressed, res.Report, res.ReportError)
	}
	compared := 0
	for _, f := range res.Files {
		if filepath.Base(f.Path) == recipe.Marker {
			continue
		}
		rel, err := filepath.Rel(res.Export.Dir, f.Path)
		if err != nil {
			t.Fatal(err)
		}
		now, err := os.ReadFile(f.Path)
		if err != nil {
			t.Fatal(err)
		}
		lost, err := os.ReadFile(filepath.Join(gone, rel))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(now, lost) {
			t.Errorf("%s: the second export differs from the first", rel)
		}
		compared++
	}
	if compared == 0 {
		t.Fatal("the checkpoint has no files")
	}
	events := history(t, c, run)
	timeouts, waited := scheduleToStartTimeouts(events)
	if len(timeouts) != 1 || timeouts[0] != "Evaluate@"+dead {
		t.Fatalf("schedule-to-start timeouts %v, want Evaluate on %s only", timeouts, dead)
	}
	var onHosts []string
	for _, e := range events {
		if a := e.GetActivityTaskScheduledEventAttributes(); a != nil && strings.HasPrefix(a.TaskQueue.GetName(), "rankzip-host-") {
			onHosts = append(onHosts, a.ActivityType.GetName()+"@"+a.TaskQueue.GetName())
		}
	}
	if want := []string{"Evaluate@" + dead, "Evaluate@" + live, "Report@" + live}; !slices.Equal(onHosts, want) {
		t.Errorf("activities on host queues %v, want %v", onHosts, want)
	}
	t.Logf("Evaluate waited %v on %s (HostWait %v), then the job exported again and finished on %s (job %v, %d files compared byte for byte)",
		waited[0].Round(time.Millisecond), dead, wait, live, took.Round(time.Millisecond), compared)
}

// A cuda job with no GPU worker fails once its first task has waited
// GPUWait, saying what to start.
func TestCudaJobWithoutGPUWorker(t *testing.T) {
	dir := t.TempDir()
	j := job(t, dir)
	c, _ := service(t, filepath.Join(dir, "store"), nil) // a CPU worker only
	const wait = time.Second
	t0 := time.Now()
	run, err := c.ExecuteWorkflow(context.Background(), client.StartWorkflowOptions{ID: j.ID, TaskQueue: workflows.TaskQueue},
		workflows.CompressModel, workflows.Input{Job: *j, Device: "cuda", GPUWait: wait})
	if err != nil {
		t.Fatal(err)
	}
	err = run.Get(context.Background(), nil)
	took := time.Since(t0)
	var ae *temporal.ApplicationError
	if !errors.As(err, &ae) || ae.Type() != workflows.NoGPUWorker || !ae.NonRetryable() {
		t.Fatalf("cuda job without a GPU worker: %v, want a non-retryable %s error", err, workflows.NoGPUWorker)
	}
	for _, want := range []string{"inspect: no worker polls task queue rankzip-gpu", "start `worker --device cuda`", "without --device cuda"} {
		if !strings.Contains(ae.Message(), want) {
			t.Errorf("message lacks %q: %s", want, ae.Message())
		}
	}
	if took > 30*time.Second {
		t.Errorf("the job failed after %v, its GPU wait is %v", took, wait)
	}
	t.Logf("failed after %v: %s", took.Round(time.Millisecond), ae.Message())
}

// GPU workers that poll but are busy past GPUWait do not fail a cuda job:
// its first task waits again. One GPU worker with one slot holds a first
// job's Inspect for 3 s; the second job's Inspect times out waiting and is
// scheduled again, and both jobs finish.
func TestCudaJobWaitsForBusyGPUWorker(t *testing.T) {
	dir := t.TempDir()
	acts := testActivities(t, filepath.Join(dir, "store"))
	var held atomic.Bool
	inspect := func(ctx context.Context, in activities.InspectInput) (activities.InspectOutput, error) {
		if held.CompareAndSwap(false, true) {
			time.Sleep(3 * time.Second)
		}
		return acts.Inspect(ctx, in)
	}
	ts := temporaltest.NewServer(temporaltest.WithT(t))
	ts.NewWorker(workflows.TaskQueue, func(r worker.Registry) { workflows.Register(r, acts) })
	ts.NewWorkerWithOptions(workflows.GPUTaskQueue, func(r worker.Registry) {
		r.RegisterActivity(acts)
		r.RegisterActivityWithOptions(inspect, activity.RegisterOptions{Name: "Inspect", DisableAlreadyRegisteredCheck: true})
	}, worker.Options{MaxConcurrentActivityExecutionSize: 1})
	c := ts.GetDefaultClient()
	var runs []client.WorkflowRun
	for i, name := range []string{"first", "second"} {
		j := job(t, filepath.Join(dir, name))
		run, err := c.ExecuteWorkflow(context.Background(), client.StartWorkflowOptions{ID: j.ID, TaskQueue: workflows.TaskQueue},
			workflows.CompressModel, workflows.Input{Job: *j, Device: "cuda", GPUWait: time.Second, HeartbeatTimeout: 2 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		runs = append(runs, run)
		if i == 0 {
			for !held.Load() { // the first job's Inspect holds the slot
				time.Sleep(10 * time.Millisecond)
			}
		}
	}
	for i, run := range runs {
		if err := run.Get(context.Background(), nil); err != nil {
			t.Fatalf("job %d: %v", i, err)
		}
	}
	timeouts, _ := scheduleToStartTimeouts(history(t, c, runs[1]))
	if len(timeouts) == 0 || timeouts[0] != "Inspect@"+workflows.GPUTaskQueue {
		t.Fatalf("second job's schedule-to-start timeouts %v, want its Inspect on %s", timeouts, workflows.GPUTaskQueue)
	}
	t.Logf("second job: Inspect timed out waiting %d time(s) while the GPU worker was busy, then ran; both jobs done", len(timeouts))
}
