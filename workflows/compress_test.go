package workflows

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/mock"
	"go.temporal.io/sdk/log"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"

	"github.com/rankzip/rankzip/activities"
	"github.com/rankzip/rankzip/compress"
	"github.com/rankzip/rankzip/recipe"
	"github.com/rankzip/rankzip/store"
)

// The workflow logic with mocked activities: a 3-block job whose blocks take
// 10 minutes of workflow time each.

const blocks = 3

var a *activities.Activities

func testInput() Input {
	return Input{Job: recipe.Job{
		ID:     "rankzip-test",
		Model:  []recipe.File{{Path: "/m/config.json", SHA256: "00", Bytes: 1}},
		Recipe: recipe.Recipe{Model: "/m", Output: "/out", Calibration: recipe.Calibration{Data: "/c.parquet"}, Stages: []recipe.Stage{{Method: "svd"}}},
	}}
}

func ref(s string) store.Ref { return store.Ref{SHA256: s, Bytes: 1} }

// env returns a test environment with Inspect, Export and Evaluate mocked;
// the test mocks Block.
func env(t *testing.T) *testsuite.TestWorkflowEnvironment {
	var suite testsuite.WorkflowTestSuite
	suite.SetLogger(quiet)
	e := suite.NewTestWorkflowEnvironment()
	e.RegisterActivity(a)
	e.OnActivity(a.Inspect, mock.Anything, mock.Anything).
		Return(activities.InspectOutput{Blocks: blocks, Plan: ref("plan"), Streams: ref("s0")}, nil).After(time.Minute)
	e.OnActivity(a.Export, mock.Anything, mock.Anything).Return(
		func(_ context.Context, in activities.ExportInput) (activities.ExportOutput, error) {
			if len(in.Blocks) != blocks || in.Blocks[2] != ref("f2") {
				return activities.ExportOutput{}, errors.New("export got the wrong blocks")
			}
			return activities.ExportOutput{Dir: "/out", Files: []recipe.File{{Path: "/out/model.safetensors"}}}, nil
		}).Maybe()
	e.OnActivity(a.Evaluate, mock.Anything, mock.Anything).Return(activities.Quality{Params: 7}, nil).Maybe()
	t.Cleanup(func() { e.AssertExpectations(t) })
	return e
}

// block is a mocked Block activity that records its calls.
type block struct {
	mu    sync.Mutex
	calls []int
	fn    func(ctx context.Context, in activities.BlockInput, attempt int) (activities.BlockOutput, error)
}

func (b *block) run(ctx context.Context, in activities.BlockInput) (activities.BlockOutput, error) {
	b.mu.Lock()
	b.calls = append(b.calls, in.Index)
	attempt := 0
	for _, c := range b.calls {
		if c == in.Index {
			attempt++
		}
	}
	b.mu.Unlock()
	if b.fn != nil {
		return b.fn(ctx, in, attempt)
	}
	return done(in), nil
}

func done(in activities.BlockInput) activities.BlockOutput {
	n := string(rune('0' + in.Index))
	return activities.BlockOutput{Index: in.Index, Factors: ref("f" + n), Next: ref("s" + string(rune('1'+in.Index))),
		Layers: []activities.Layer{{Name: "model.layers." + n + ".mlp.up_proj", Out: 8, In: 4, Rank: 2}}}
}

func TestCompressModel(t *testing.T) {
	e := env(t)
	b := &block{}
	var streams []store.Ref
	b.fn = func(_ context.Context, in activities.BlockInput, _ int) (activities.BlockOutput, error) {
		streams = append(streams, in.Streams)
		return done(in), nil
	}
	e.OnActivity(a.Block, mock.Anything, mock.Anything).Return(b.run).After(10 * time.Minute)
	var mid Progress
	e.RegisterDelayedCallback(func() {
		v, err := e.QueryWorkflow(ProgressQuery)
		if err != nil {
			t.Error(err)
			return
		}
		if err := v.Get(&mid); err != nil {
			t.Error(err)
		}
	}, 25*time.Minute) // inspect 1 min, blocks 0 and 1 done at 21 min
	e.ExecuteWorkflow(CompressModel, testInput())
	if err := e.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	var res Result
	if err := e.GetWorkflowResult(&res); err != nil {
		t.Fatal(err)
	}
	if len(res.Layers) != blocks || res.Params != 3*2*12 || res.Total != 3*32 || res.Quality.Params != 7 || len(res.Artifacts.Blocks) != blocks {
		t.Errorf("result %+v", res)
	}
	// Each block starts from the streams its predecessor produced.
	if len(streams) != blocks || streams[0] != ref("s0") || streams[1] != ref("s1") || streams[2] != ref("s2") {
		t.Errorf("blocks started from %v", streams)
	}
	if mid.Stage != StageBlocks || mid.Block != 2 || mid.Blocks != blocks || mid.ETA != 10*time.Minute || mid.Elapsed != 21*time.Minute {
		t.Errorf("progress at 25 min: %+v", mid)
	}
	v, err := e.QueryWorkflow(ProgressQuery)
	if err != nil {
		t.Fatal(err)
	}
	var end Progress
	if err := v.Get(&end); err != nil {
		t.Fatal(err)
	}
	if end.Stage != StageDone || end.Block != blocks || end.Elapsed != 31*time.Minute {
		t.Errorf("final progress %+v", end)
	}
}

// A transient failure is retried with backoff and the job goes on from the
// failed block.
func TestBlockRetried(t *testing.T) {
	e := env(t)
	b := &block{fn: func(_ context.Context, in activities.BlockInput, attempt int) (activities.BlockOutput, error) {
		if in.Index == 1 && attempt < 3 {
			return activities.BlockOutput{}, errors.New("disk hiccup")
		}
		return done(in), nil
	}}
	e.OnActivity(a.Block, mock.Anything, mock.Anything).Return(b.run)
	e.ExecuteWorkflow(CompressModel, testInput())
	if err := e.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	if want := []int{0, 1, 1, 1, 2}; !slices.Equal(b.calls, want) {
		t.Errorf("block calls %v, want %v", b.calls, want)
	}
	// Inspect took 1 min; two retries waited 1 s and 2 s.
	if got := e.Now().Sub(startOf(e)); got != time.Minute+3*time.Second {
		t.Errorf("workflow time %v, want 1m3s of retry backoff", got)
	}
}

// Bad input fails the job at once, with the error the user needs.
func TestBadInputNotRetried(t *testing.T) {
	e := env(t)
	b := &block{fn: func(_ context.Context, in activities.BlockInput, _ int) (activities.BlockOutput, error) {
		if in.Index == 1 {
			return activities.BlockOutput{}, temporal.NewNonRetryableApplicationError("block 1: weights are not finite", activities.BadInput, nil)
		}
		return done(in), nil
	}}
	e.OnActivity(a.Block, mock.Anything, mock.Anything).Return(b.run)
	e.ExecuteWorkflow(CompressModel, testInput())
	err := e.GetWorkflowError()
	var ae *temporal.ApplicationError
	if !errors.As(err, &ae) || ae.Type() != activities.BadInput {
		t.Fatalf("error %v, want a BadInput application error", err)
	}
	if !slices.Equal(b.calls, []int{0, 1}) {
		t.Errorf("block calls %v: bad input was retried", b.calls)
	}
	v, qerr := e.QueryWorkflow(ProgressQuery)
	if qerr != nil {
		t.Fatal(qerr)
	}
	var p Progress
	if err := v.Get(&p); err != nil {
		t.Fatal(err)
	}
	if p.Stage != StageFailed || p.Block != 1 || p.Error == "" {
		t.Errorf("progress after failure %+v", p)
	}
}

// An invalid input is refused before any activity runs.
func TestInvalidInput(t *testing.T) {
	var suite testsuite.WorkflowTestSuite
	suite.SetLogger(quiet)
	e := suite.NewTestWorkflowEnvironment()
	e.RegisterActivity(a)
	e.ExecuteWorkflow(CompressModel, Input{})
	var ae *temporal.ApplicationError
	if err := e.GetWorkflowError(); !errors.As(err, &ae) || ae.Type() != activities.BadInput {
		t.Fatalf("error %v, want BadInput", err)
	}
}

// Cancelling the job during a block ends the workflow cancelled without
// starting another block. (The test environment reports the activity
// cancelled at once; that WaitForCancellation really waits for the activity
// to stop is checked against a real server in the end-to-end test.)
func TestCancel(t *testing.T) {
	e := env(t)
	b := &block{fn: func(ctx context.Context, in activities.BlockInput, _ int) (activities.BlockOutput, error) {
		if in.Index == 0 {
			return done(in), nil
		}
		select {
		case <-ctx.Done():
			return activities.BlockOutput{}, ctx.Err()
		case <-time.After(time.Second):
			return done(in), nil
		}
	}}
	e.OnActivity(a.Block, mock.Anything, mock.Anything).Return(b.run)
	e.RegisterDelayedCallback(e.CancelWorkflow, time.Minute+100*time.Millisecond)
	e.ExecuteWorkflow(CompressModel, testInput())
	if err := e.GetWorkflowError(); !temporal.IsCanceledError(err) {
		t.Fatalf("error %v, want cancelled", err)
	}
	if !slices.Equal(b.calls, []int{0, 1}) {
		t.Errorf("block calls %v", b.calls)
	}
	v, err := e.QueryWorkflow(ProgressQuery)
	if err != nil {
		t.Fatal(err)
	}
	var p Progress
	if err := v.Get(&p); err != nil {
		t.Fatal(err)
	}
	if p.Stage != StageCanceled || p.Block != 1 {
		t.Errorf("progress after cancel %+v", p)
	}
	if o := activityOptions(testInput()); !o.WaitForCancellation || o.HeartbeatTimeout <= 0 || o.RetryPolicy.BackoffCoefficient != 2 ||
		!slices.Contains(o.RetryPolicy.NonRetryableErrorTypes, activities.BadInput) {
		t.Errorf("activity options %+v", o)
	}
}

// A resumed job (blocks found finished in the store) reports them as skipped
// and bases the ETA on the blocks really computed.
func TestResumeProgress(t *testing.T) {
	e := env(t)
	b := &block{fn: func(_ context.Context, in activities.BlockInput, _ int) (activities.BlockOutput, error) {
		out := done(in)
		out.Skipped = in.Index < 2
		return out, nil
	}}
	e.OnActivity(a.Block, mock.Anything, mock.Anything).Return(b.run).After(time.Minute)
	var mid Progress
	e.RegisterDelayedCallback(func() {
		if v, err := e.QueryWorkflow(ProgressQuery); err == nil {
			v.Get(&mid)
		}
	}, 3*time.Minute+30*time.Second) // blocks 0 and 1 found in the store
	e.ExecuteWorkflow(CompressModel, testInput())
	if mid.Block != 2 || mid.Skipped != 2 || mid.ETA != 0 {
		t.Errorf("progress after two skipped blocks %+v (no block computed yet: ETA unknown)", mid)
	}
	var res Result
	if err := e.GetWorkflowResult(&res); err != nil {
		t.Fatal(err)
	}
	if res.Skipped != 2 || len(res.Layers) != blocks {
		t.Errorf("result %+v", res)
	}
}

func startOf(e *testsuite.TestWorkflowEnvironment) time.Time {
	v, err := e.QueryWorkflow(ProgressQuery)
	if err != nil {
		return time.Time{}
	}
	var p Progress
	v.Get(&p)
	return p.Started
}

// quiet drops the logs of the test environment (activity errors are expected).
var quiet = log.NewStructuredLogger(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError + 1})))

// In original calibration mode the blocks are independent: they run
// Parallel at a time, each from its own streams, and are recorded in order.
func TestParallelBlocks(t *testing.T) {
	var suite testsuite.WorkflowTestSuite
	suite.SetLogger(quiet)
	e := suite.NewTestWorkflowEnvironment()
	e.RegisterActivity(a)
	e.OnActivity(a.Inspect, mock.Anything, mock.Anything).Return(activities.InspectOutput{Blocks: blocks, Plan: ref("plan"),
		Streams: ref("s0"), BlockStreams: []store.Ref{ref("s0"), ref("s1"), ref("s2")}}, nil).After(time.Minute)
	e.OnActivity(a.Export, mock.Anything, mock.Anything).Return(activities.ExportOutput{Dir: "/out"}, nil)
	e.OnActivity(a.Evaluate, mock.Anything, mock.Anything).Return(activities.Quality{}, nil)
	var mu sync.Mutex
	var got []activities.BlockInput
	e.OnActivity(a.Block, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.BlockInput) (activities.BlockOutput, error) {
		mu.Lock()
		got = append(got, in)
		mu.Unlock()
		return done(in), nil
	}).After(10 * time.Minute)
	in := testInput()
	in.Parallel = 2
	e.ExecuteWorkflow(CompressModel, in)
	var res Result
	if err := e.GetWorkflowResult(&res); err != nil {
		t.Fatal(err)
	}
	if len(got) != blocks {
		t.Fatalf("%d block calls", len(got))
	}
	for _, b := range got {
		if !b.NoNext || b.Streams != ref("s"+string(rune('0'+b.Index))) {
			t.Errorf("block %d started from %v (no next %v)", b.Index, b.Streams, b.NoNext)
		}
	}
	if !slices.Equal(res.Artifacts.Blocks, []store.Ref{ref("f0"), ref("f1"), ref("f2")}) {
		t.Errorf("blocks recorded out of order: %v", res.Artifacts.Blocks)
	}
	// Inspect 1 min; blocks 0 and 1 together, then block 2: 21 min.
	if res.Elapsed != 21*time.Minute {
		t.Errorf("elapsed %v, want 21m (two blocks at a time)", res.Elapsed)
	}
}

// stageEnv mocks every activity of a job whose stages after the first run
// block by block through PlanStage and StageBlock, and records their inputs.
type stageEnv struct {
	mu     sync.Mutex
	plans  []activities.PlanStageInput
	blocks []activities.StageBlockInput
	export activities.ExportInput
}

func (s *stageEnv) setup(t *testing.T, e *testsuite.TestWorkflowEnvironment) {
	e.RegisterActivity(a)
	e.OnActivity(a.Inspect, mock.Anything, mock.Anything).
		Return(activities.InspectOutput{Blocks: blocks, Plan: ref("plan"), Streams: ref("s0")}, nil)
	e.OnActivity(a.Block, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.BlockInput) (activities.BlockOutput, error) {
		return done(in), nil
	}).After(time.Minute).Maybe()
	e.OnActivity(a.PlanStage, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.PlanStageInput) (activities.PlanStageOutput, error) {
		s.mu.Lock()
		s.plans = append(s.plans, in)
		s.mu.Unlock()
		return activities.PlanStageOutput{Plan: ref(fmt.Sprintf("p%d", in.Stage))}, nil
	})
	e.OnActivity(a.StageBlock, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.StageBlockInput) (activities.StageBlockOutput, error) {
		s.mu.Lock()
		s.blocks = append(s.blocks, in)
		s.mu.Unlock()
		out := activities.StageBlockOutput{Index: in.Index, Layers: ref(fmt.Sprintf("L%d_%d", in.Stage, in.Index)),
			Report: activities.StageReport{Quant: []compress.QuantLayer{{Name: "q"}}}}
		if in.Index+1 < in.Blocks {
			out.Next = ref(fmt.Sprintf("n%d_%d", in.Stage, in.Index+1))
		}
		return out, nil
	}).After(time.Minute)
	e.OnActivity(a.Export, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.ExportInput) (activities.ExportOutput, error) {
		s.export = in
		return activities.ExportOutput{Dir: "/out"}, nil
	})
	e.OnActivity(a.Evaluate, mock.Anything, mock.Anything).Return(activities.Quality{}, nil)
	t.Cleanup(func() { e.AssertExpectations(t) })
}

func refs(format string, stage int) []store.Ref {
	var r []store.Ref
	for i := range blocks {
		r = append(r, ref(fmt.Sprintf(format, stage, i)))
	}
	return r
}

// svd, then gptq and eora: each later stage is planned on the blocks the
// stages before it made, runs its blocks in order from the streams of the
// one before, and the export gets every stage's blocks.
func TestLaterStages(t *testing.T) {
	var suite testsuite.WorkflowTestSuite
	suite.SetLogger(quiet)
	e := suite.NewTestWorkflowEnvironment()
	var s stageEnv
	s.setup(t, e)
	in := testInput()
	in.Job.Recipe.Stages = []recipe.Stage{{Method: "svd"}, {Method: "gptq"}, {Method: "eora"}}
	var mid Progress
	e.RegisterDelayedCallback(func() {
		if v, err := e.QueryWorkflow(ProgressQuery); err == nil {
			v.Get(&mid)
		}
	}, 7*time.Minute+30*time.Second) // a minute a block: svd and gptq done, eora block 0 done
	e.ExecuteWorkflow(CompressModel, in)
	var res Result
	if err := e.GetWorkflowResult(&res); err != nil {
		t.Fatal(err)
	}
	svd := []store.Ref{ref("f0"), ref("f1"), ref("f2")}
	if len(s.plans) != 2 || s.plans[0].Stage != 1 || len(s.plans[0].Prior) != 1 || !slices.Equal(s.plans[0].Prior[0], svd) ||
		s.plans[1].Stage != 2 || len(s.plans[1].Prior) != 2 || !slices.Equal(s.plans[1].Prior[1], refs("L%d_%d", 1)) {
		t.Errorf("plans %+v", s.plans)
	}
	if len(s.blocks) != 2*blocks {
		t.Fatalf("%d stage blocks, want %d", len(s.blocks), 2*blocks)
	}
	for _, b := range s.blocks {
		want := ref("s0")
		if b.Index > 0 {
			want = ref(fmt.Sprintf("n%d_%d", b.Stage, b.Index))
		}
		prior := []store.Ref{svd[b.Index]}
		if b.Stage == 2 {
			prior = append(prior, ref(fmt.Sprintf("L1_%d", b.Index)))
		}
		if b.Streams != want || !slices.Equal(b.Prior, prior) || b.Plan != ref(fmt.Sprintf("p%d", b.Stage)) {
			t.Errorf("stage %d block %d started from streams %v, prior %v, plan %v", b.Stage, b.Index, b.Streams, b.Prior, b.Plan)
		}
	}
	if !slices.Equal(s.export.Blocks, svd) || len(s.export.Later) != 2 || !slices.Equal(s.export.Later[0], refs("L%d_%d", 1)) ||
		!slices.Equal(s.export.Later[1], refs("L%d_%d", 2)) {
		t.Errorf("export input %+v", s.export)
	}
	if len(res.Stages) != 3 || res.Stages[0] != nil || len(res.Stages[1]) != blocks || len(res.Stages[2]) != blocks || len(res.Artifacts.Later) != 2 {
		t.Errorf("result stages %+v, later artifacts %+v", res.Stages, res.Artifacts.Later)
	}
	if mid.Step != 2 || mid.Steps != 3 || mid.Method != "eora" || mid.Block != 1 || mid.ETA != 2*time.Minute {
		t.Errorf("progress at 7.5 min %+v", mid)
	}
}

// A recipe that starts with a per-block stage (palu) runs it from the
// streams Inspect embedded; its blocks are the export's blocks.
func TestFirstStagePerBlock(t *testing.T) {
	var suite testsuite.WorkflowTestSuite
	suite.SetLogger(quiet)
	e := suite.NewTestWorkflowEnvironment()
	var s stageEnv
	s.setup(t, e)
	in := testInput()
	in.Job.Recipe.Stages = []recipe.Stage{{Method: "palu"}}
	e.ExecuteWorkflow(CompressModel, in)
	var res Result
	if err := e.GetWorkflowResult(&res); err != nil {
		t.Fatal(err)
	}
	if len(s.plans) != 1 || s.plans[0].Stage != 0 || len(s.plans[0].Prior) != 0 || len(s.blocks) != blocks {
		t.Errorf("plans %+v, %d blocks", s.plans, len(s.blocks))
	}
	if !slices.Equal(s.export.Blocks, refs("L%d_%d", 0)) || len(s.export.Later) != 0 || s.export.Plan != ref("p0") {
		t.Errorf("export input %+v", s.export)
	}
	if len(res.Layers) != 0 || len(res.Stages) != 1 || len(res.Stages[0]) != blocks {
		t.Errorf("result %+v", res)
	}
}
