package workflows_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
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
	"github.com/rankzip/rankzip/calib"
	"github.com/rankzip/rankzip/compress"
	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/model"
	"github.com/rankzip/rankzip/model/safetensors"
	"github.com/rankzip/rankzip/recipe"
	"github.com/rankzip/rankzip/store"
	"github.com/rankzip/rankzip/workflows"
)

// The whole system against a real Temporal server (temporaltest, in memory).

// fixtures is the repository's testdata seen from this package.
const fixtures = "../testdata"

func needFixtures(t *testing.T) string {
	t.Helper()
	abs, err := filepath.Abs(fixtures)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"stories260K/model.safetensors", "samples/calib.parquet", "samples/eval.parquet"} {
		if _, err := os.Stat(filepath.Join(abs, p)); err != nil {
			t.Fatalf("test data %s missing from the repository: %v", filepath.Join(fixtures, p), err)
		}
	}
	return abs
}

// job writes the test recipe (svd whiten on the MLP at 80% of its
// parameters, 16 calibration and 4 evaluation sequences) and loads it. The
// model is copied so that a test may remove it.
func job(t *testing.T, dir string) *recipe.Job {
	t.Helper()
	return stageJob(t, dir, `  - {method: svd, variant: whiten, targets: ["mlp.*"], keep_params: 0.8, rank_search: uniform}`, `{format: native}`)
}

// service starts a server and a worker whose activities use storeDir;
// override replaces activities by name (a test's wrappers).
func service(t *testing.T, storeDir string, override map[string]any) (client.Client, *activities.Activities) {
	t.Helper()
	acts := testActivities(t, storeDir)
	ts := temporaltest.NewServer(temporaltest.WithT(t))
	ts.NewWorker(workflows.TaskQueue, func(r worker.Registry) {
		workflows.Register(r, acts)
		for name, fn := range override {
			r.RegisterActivityWithOptions(fn, activity.RegisterOptions{Name: name, DisableAlreadyRegisteredCheck: true})
		}
	})
	return ts.GetDefaultClient(), acts
}

// testActivities are activities on a store in storeDir, logging nowhere
// (or, with RANKZIP_E2E_LOG=FILE, as JSON lines appended to FILE).
func testActivities(t *testing.T, storeDir string) *activities.Activities {
	t.Helper()
	st, err := store.Open(storeDir)
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	if p := os.Getenv("RANKZIP_E2E_LOG"); p != "" {
		f, err := os.OpenFile(p, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		log = slog.New(slog.NewJSONHandler(f, nil))
	}
	return &activities.Activities{Store: st, Backend: kernels.Default(), Log: log, HeartbeatEvery: 100 * time.Millisecond}
}

// history returns the events of a workflow run.
func history(t *testing.T, c client.Client, run client.WorkflowRun) []*historypb.HistoryEvent {
	t.Helper()
	var events []*historypb.HistoryEvent
	it := c.GetWorkflowHistory(context.Background(), run.GetID(), run.GetRunID(), false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
	for it.HasNext() {
		e, err := it.Next()
		if err != nil {
			t.Fatal(err)
		}
		events = append(events, e)
	}
	return events
}

func start(t *testing.T, c client.Client, j *recipe.Job) client.WorkflowRun {
	t.Helper()
	run, err := c.ExecuteWorkflow(context.Background(), client.StartWorkflowOptions{ID: j.ID, TaskQueue: workflows.TaskQueue},
		workflows.CompressModel, workflows.Input{Job: *j, HeartbeatTimeout: 2 * time.Second, RetryInterval: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return run
}

func progress(t *testing.T, c client.Client, id string) workflows.Progress {
	t.Helper()
	v, err := c.QueryWorkflow(context.Background(), id, "", workflows.ProgressQuery)
	if err != nil {
		t.Fatal(err)
	}
	var p workflows.Progress
	if err := v.Get(&p); err != nil {
		t.Fatal(err)
	}
	return p
}

// The workflow's checkpoint is byte for byte the direct path's (compress.Run
// then model.Save), and a second run of the job finds every step done.
func TestEndToEndMatchesDirectPath(t *testing.T) {
	dir := t.TempDir()
	j := job(t, dir)
	c, _ := service(t, filepath.Join(dir, "store"), nil)
	t0 := time.Now()
	var res workflows.Result
	if err := start(t, c, j).Get(context.Background(), &res); err != nil {
		t.Fatal(err)
	}
	wf := time.Since(t0)

	t1 := time.Now()
	m, err := model.Load(j.Recipe.Model, kernels.Default())
	if err != nil {
		t.Fatal(err)
	}
	ds, err := calib.Open(j.Recipe.Calibration.Data)
	if err != nil {
		t.Fatal(err)
	}
	seqs, err := ds.Read(j.Recipe.Calibration.Sequences)
	ds.Close()
	if err != nil {
		t.Fatal(err)
	}
	opts, err := activities.CompressOptions(j.Recipe)
	if err != nil {
		t.Fatal(err)
	}
	direct, err := compress.Run(context.Background(), m, recipe.Truncate(seqs, j.Recipe.Calibration.SeqLen), opts, nil)
	if err != nil {
		t.Fatal(err)
	}
	ddir := filepath.Join(dir, "direct")
	if err := model.Save(direct.Model, ddir, safetensors.F32); err != nil {
		t.Fatal(err)
	}
	t.Logf("workflow %v (incl. evaluation), direct compress.Run + Save %v", wf.Round(time.Millisecond), time.Since(t1).Round(time.Millisecond))
	for _, f := range []string{"model.safetensors", "config.json"} {
		want, err := os.ReadFile(filepath.Join(ddir, f))
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(filepath.Join(j.Recipe.Output, f))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s: the workflow's %d bytes differ from the direct path's %d", f, len(got), len(want))
		}
	}
	if !slices.Equal(res.Layers, direct.Layers) || res.Params != direct.Params || res.Total != direct.Total {
		t.Errorf("per-layer report differs from the direct path:\n%v\n%v", res.Layers, direct.Layers)
	}
	q := res.Quality
	if q.Compressed == nil || q.Original == nil || q.Compressed.Sequences != 4 || *q.Compressed.KL <= 0 || q.Params >= q.OriginalParams {
		t.Errorf("quality report %+v", q)
	}
	if p := progress(t, c, j.ID); p.Stage != workflows.StageDone || p.Block != 5 || p.Blocks != 5 || p.Elapsed <= 0 {
		t.Errorf("final progress %+v", p)
	}

	// The same job again (a new run of the same id) computes nothing.
	var again workflows.Result
	if err := start(t, c, j).Get(context.Background(), &again); err != nil {
		t.Fatal(err)
	}
	if again.Skipped != 5 || !again.Export.Skipped || !again.Quality.Skipped || !slices.Equal(again.Files, res.Files) {
		t.Errorf("second run recomputed: skipped %d blocks, export skipped %v, evaluation skipped %v", again.Skipped, again.Export.Skipped, again.Quality.Skipped)
	}
}

// Cancelling a job waits for the running activity to stop
// (WaitForCancellation) before the workflow closes as cancelled.
func TestEndToEndCancel(t *testing.T) {
	dir := t.TempDir()
	j := job(t, dir)
	var mu sync.Mutex
	var stopped time.Time
	started := make(chan struct{})
	slow := func(ctx context.Context, in activities.BlockInput) (activities.BlockOutput, error) {
		close(started)
		for {
			activity.RecordHeartbeat(ctx, activities.Progress{Stage: "block", Block: in.Index})
			select {
			case <-ctx.Done():
				time.Sleep(300 * time.Millisecond) // letting go of a device takes a while
				mu.Lock()
				stopped = time.Now()
				mu.Unlock()
				return activities.BlockOutput{}, ctx.Err()
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	c, _ := service(t, filepath.Join(dir, "store"), map[string]any{"Block": slow})
	run := start(t, c, j)
	<-started
	if err := c.CancelWorkflow(context.Background(), j.ID, ""); err != nil {
		t.Fatal(err)
	}
	err := run.Get(context.Background(), nil)
	closed := time.Now()
	var ce *temporal.CanceledError
	if !errors.As(err, &ce) {
		t.Fatalf("error %v, want cancelled", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if stopped.IsZero() || stopped.After(closed) {
		t.Errorf("the workflow closed before its activity stopped (activity %v, workflow %v)", stopped, closed)
	}
	if p := progress(t, c, j.ID); p.Stage != workflows.StageCanceled {
		t.Errorf("progress after cancel %+v", p)
	}
}

// A model directory that disappears mid-run fails the job at once with a
// message naming it, and leaves nothing half-written.
func TestEndToEndModelDisappears(t *testing.T) {
	dir := t.TempDir()
	j := job(t, dir)
	var real *activities.Activities
	block := func(ctx context.Context, in activities.BlockInput) (activities.BlockOutput, error) {
		if in.Index == 2 {
			if err := os.Rename(j.Recipe.Model, j.Recipe.Model+".gone"); err != nil {
				return activities.BlockOutput{}, err
			}
		}
		return real.Block(ctx, in)
	}
	c, acts := service(t, filepath.Join(dir, "store"), map[string]any{"Block": block})
	real = acts
	err := start(t, c, j).Get(context.Background(), nil)
	var ae *temporal.ApplicationError
	if !errors.As(err, &ae) || ae.Type() != activities.BadInput || !strings.Contains(ae.Error(), j.Recipe.Model) || !strings.Contains(ae.Error(), "block 2") {
		t.Fatalf("error %v, want BadInput naming block 2 and %s", err, j.Recipe.Model)
	}
	p := progress(t, c, j.ID)
	if p.Stage != workflows.StageFailed || p.Block != 2 || !strings.Contains(p.Error, "no such file") {
		t.Errorf("progress %+v", p)
	}
	if _, err := os.Stat(j.Recipe.Output); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("output exists after a failed job: %v", err)
	}
	assertClean(t, filepath.Join(dir, "store"))
}

// A store that rejects writes (a full disk) fails the job without retries,
// with an error naming the directory, and leaves no partial file; the same
// job finishes once space is freed.
func TestEndToEndStoreFull(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to mount a small tmpfs as a full disk")
	}
	dir := t.TempDir()
	j := job(t, dir)
	sdir := filepath.Join(dir, "store")
	if err := os.Mkdir(sdir, 0o755); err != nil {
		t.Fatal(err)
	}
	// Room for the plan and the first streams (~1 MiB each), not for all.
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", sdir).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs (%v: %s)", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", sdir).Run() })
	c, _ := service(t, sdir, nil)
	t0 := time.Now()
	err := start(t, c, j).Get(context.Background(), nil)
	var ae *temporal.ApplicationError
	if !errors.As(err, &ae) || ae.Type() != activities.StoreUnwritable || !strings.Contains(err.Error(), "no space left") {
		t.Fatalf("error %v, want StoreUnwritable", err)
	}
	if d := time.Since(t0); d > 30*time.Second {
		t.Errorf("the job took %v to fail: a full disk was retried", d)
	}
	if !strings.Contains(err.Error(), sdir) {
		t.Errorf("the error does not name the store directory %s: %v", sdir, err)
	}
	if _, err := os.Stat(j.Recipe.Output); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("output exists after a failed job: %v", err)
	}
	assertClean(t, sdir)

	// Once space is freed, the same job finishes, with what was stored.
	if out, err := exec.Command("mount", "-o", "remount,size=256m", sdir).CombinedOutput(); err != nil {
		t.Fatalf("grow the tmpfs: %v: %s", err, out)
	}
	var res workflows.Result
	if err := start(t, c, j).Get(context.Background(), &res); err != nil {
		t.Fatalf("the same job after space was freed: %v", err)
	}
	if _, err := os.Stat(filepath.Join(j.Recipe.Output, "model.safetensors")); err != nil {
		t.Errorf("no checkpoint after the job finished: %v", err)
	}
	assertClean(t, sdir)
}

// assertClean checks that the store holds no temporary file and that every
// recorded artifact is whole.
func assertClean(t *testing.T, dir string) {
	t.Helper()
	tmp, _ := os.ReadDir(filepath.Join(dir, "tmp"))
	if len(tmp) > 0 {
		t.Errorf("%d temporary entries left in the store", len(tmp))
	}
	st, err := store.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	filepath.WalkDir(filepath.Join(dir, "keys"), func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(p, ".json") {
			return nil
		}
		rel, _ := filepath.Rel(filepath.Join(dir, "keys"), strings.TrimSuffix(p, ".json"))
		ref, ok, err := st.Lookup(filepath.ToSlash(rel))
		if err != nil || !ok {
			t.Errorf("record %s points at a missing artifact (%v)", rel, err)
			return nil
		}
		if _, err := st.Verify(ref); err != nil {
			t.Errorf("record %s: %v", rel, err)
		}
		return nil
	})
}
