// Package workflows holds rankzip's deterministic orchestration. CompressModel
// runs a compression job: inspect and plan, the block-by-block loop (one
// activity per block), export and evaluation, and answers the "progress"
// query. Workflow code does no math and no I/O: it passes artifact refs
// between activities (package activities) and keeps the job's state.
package workflows

import (
	"errors"
	"fmt"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"github.com/rankzip/rankzip/activities"
	"github.com/rankzip/rankzip/recipe"
	"github.com/rankzip/rankzip/report"
	"github.com/rankzip/rankzip/store"
)

// TaskQueue is the task queue of rankzip workflows and activities.
const TaskQueue = "rankzip"

// ProgressQuery is the name of the query that returns a Progress.
const ProgressQuery = "progress"

// Input is the input of CompressModel: a validated job (see recipe.Load) and
// the activity timing, which tests shorten.
type Input struct {
	Job recipe.Job `json:"job"`
	// HeartbeatTimeout of every activity (default 10 s): how long a worker
	// may be silent before its activity is retried elsewhere.
	HeartbeatTimeout time.Duration `json:"heartbeat_timeout,omitempty"`
	// RetryInterval is the first retry delay (default 1 s), doubling up to
	// a minute, MaxAttempts tries in all (default 8).
	RetryInterval time.Duration `json:"retry_interval,omitempty"`
	MaxAttempts   int32         `json:"max_attempts,omitempty"`
	// Parallel bounds the blocks compressed at once when they are
	// independent (original calibration mode); default 4. In sequential
	// mode each block needs the one before it.
	Parallel int `json:"parallel,omitempty"`
	// Device "cuda" sends the job's activities to GPUTaskQueue, which only
	// workers with a GPU poll; otherwise they go to TaskQueue.
	Device string `json:"device,omitempty"`
	// GPUWait is how long the first activity of a cuda job may wait for a
	// GPU worker to take it (default DefaultGPUWait). Past it the job fails
	// when no worker polls GPUTaskQueue, and waits again when some do (they
	// are busy). Later activities wait without a limit: a GPU worker took
	// the job's work before, and a backlog of blocks is normal.
	GPUWait time.Duration `json:"gpu_wait,omitempty"`
	// HostWait is how long Evaluate and Report wait for a worker of the
	// host that exported (default DefaultHostWait). Past it that host is
	// taken for gone: the checkpoint is exported again on the job's general
	// queue, by whichever worker takes it, and the step runs on that
	// worker's host.
	HostWait time.Duration `json:"host_wait,omitempty"`
}

// Default waits of Input.
const (
	DefaultGPUWait  = 10 * time.Minute
	DefaultHostWait = 5 * time.Minute
)

// maxExports bounds the exports of one step that the exporting host never
// takes (a host alive but too busy to take it may export again).
const maxExports = 3

// Stages of a job, in order, as the progress query reports them.
const (
	StageInspect  = "inspect"
	StageBlocks   = "blocks"
	StageExport   = "export"
	StageEvaluate = "evaluate"
	StageDone     = "done"
	StageFailed   = "failed"
	StageCanceled = "canceled"
)

// Progress is the answer of the progress query.
type Progress struct {
	Stage  string `json:"stage"`
	Block  int    `json:"block"`  // blocks finished (of the current recipe stage)
	Blocks int    `json:"blocks"` // blocks in the model (0 until inspected)
	// Step is the recipe stage running (index into the recipe's stages),
	// Method its method; Steps counts the recipe's stages.
	Step   int    `json:"step"`
	Steps  int    `json:"steps"`
	Method string `json:"method,omitempty"`
	// Skipped counts blocks found finished in the store (a resumed job).
	Skipped int `json:"skipped"`
	// Started is when the workflow started and Updated when this state was
	// reached (workflow time); Elapsed is Updated - Started.
	Started time.Time     `json:"started"`
	Updated time.Time     `json:"updated"`
	Elapsed time.Duration `json:"elapsed"`
	// ETA of the block loop from the mean time of the blocks computed so far
	// (0 when unknown).
	ETA   time.Duration `json:"eta"`
	Error string        `json:"error,omitempty"`
}

// Artifacts are the refs of everything a job stored.
type Artifacts struct {
	Plan    store.Ref   `json:"plan"`
	Streams []store.Ref `json:"streams"` // entering each block (first stage)
	Blocks  []store.Ref `json:"blocks"`  // each block after the first stage
	// Later holds the plan and block artifacts of every later stage.
	Later []StageArtifacts `json:"later,omitempty"`
}

// StageArtifacts are the refs a stage after the first stored.
type StageArtifacts struct {
	Plan    store.Ref   `json:"plan"`
	Streams []store.Ref `json:"streams"`
	Blocks  []store.Ref `json:"blocks"`
}

// Result is the result of CompressModel.
type Result struct {
	ID        string             `json:"id"`
	Output    string             `json:"output"`
	Files     []recipe.File      `json:"files"`
	Artifacts Artifacts          `json:"artifacts"`
	Layers    []activities.Layer `json:"layers"` // per-layer ranks of a low-rank stage, in model order
	// Stages reports every palu, rtn, gptq and eora stage: per block, in
	// the order of the recipe's stages (nil for a low-rank stage).
	Stages  [][]activities.StageReport `json:"stages,omitempty"`
	Quality activities.Quality         `json:"quality"`
	Params  int                        `json:"params"` // targeted parameters after compression
	Total   int                        `json:"total"`  // and before
	Skipped int                        `json:"skipped"`
	Elapsed time.Duration              `json:"elapsed"`
	Export  activities.ExportOutput    `json:"export"`
	// Reexports counts the exports made again because the exporting
	// host's worker never took the next step (see Input.HostWait).
	Reexports int `json:"reexports,omitempty"`
	// Timings are the job's steps (inspect, each recipe stage's blocks,
	// export, evaluate) and the time each took.
	Timings []report.Timing `json:"timings,omitempty"`
	// Report is the HTML report written into the output directory, or
	// ReportError why it was not.
	Report      string `json:"report,omitempty"`
	ReportError string `json:"report_error,omitempty"`
}

func (in Input) validate() error {
	var problems []string
	if in.Job.ID == "" {
		problems = append(problems, "job has no id")
	}
	r := in.Job.Recipe
	if r.Model == "" || r.Output == "" || r.Calibration.Data == "" || len(in.Job.Model) == 0 {
		problems = append(problems, "recipe lacks model, output, calibration data or model digests: submit a recipe loaded with recipe.Load")
	}
	if len(r.Stages) == 0 {
		problems = append(problems, "recipe has no stages")
	}
	if len(problems) > 0 {
		return fmt.Errorf("invalid workflow input: %v", problems)
	}
	return nil
}

// activityOptions are shared by every activity of a job.
func activityOptions(in Input) workflow.ActivityOptions {
	hb, retry, attempts := in.HeartbeatTimeout, in.RetryInterval, in.MaxAttempts
	if hb <= 0 {
		hb = 10 * time.Second
	}
	if retry <= 0 {
		retry = time.Second
	}
	if attempts <= 0 {
		attempts = 8
	}
	queue := "" // the workflow's: TaskQueue
	if in.Device == "cuda" {
		queue = GPUTaskQueue
	}
	return workflow.ActivityOptions{
		TaskQueue:           queue,
		StartToCloseTimeout: 24 * time.Hour,
		HeartbeatTimeout:    hb,
		WaitForCancellation: true,
		RetryPolicy: &temporal.RetryPolicy{
			InitialInterval:        retry,
			BackoffCoefficient:     2,
			MaximumInterval:        time.Minute,
			MaximumAttempts:        attempts,
			NonRetryableErrorTypes: []string{activities.BadInput, activities.StoreUnwritable},
		},
	}
}

// CompressModel runs a compression job to an exported, evaluated checkpoint.
//
// Jobs live for hours and resume on whatever version of rankzip runs the
// worker then, so the sequence of commands this function issues for a given
// history must never change: a change of it (an activity added, removed or
// reordered, a timer, a different branch) goes behind workflow.GetVersion,
// with the old path kept for histories recorded before it. The replay test
// (replay_test.go) holds recorded jobs to this.
func CompressModel(ctx workflow.Context, in Input) (Result, error) {
	started := workflow.GetInfo(ctx).WorkflowStartTime
	prog := Progress{Stage: StageInspect, Started: started, Updated: workflow.Now(ctx)}
	var computed time.Duration // workflow time spent on blocks that were computed
	nComputed := 0
	var steps stepTimer
	steps.at(StageInspect, prog.Updated)
	update := func(stage string) {
		prog.Stage = stage
		prog.Updated = workflow.Now(ctx)
		prog.Elapsed = prog.Updated.Sub(started)
		steps.at(stepName(&prog), prog.Updated)
		prog.ETA = 0
		if stage == StageBlocks && nComputed > 0 {
			left := prog.Blocks - prog.Block + (prog.Steps-1-prog.Step)*prog.Blocks
			prog.ETA = computed / time.Duration(nComputed) * time.Duration(left)
		}
	}
	if err := workflow.SetQueryHandler(ctx, ProgressQuery, func() (Progress, error) { return prog, nil }); err != nil {
		return Result{}, err
	}
	res, err := run(ctx, in, &prog, update, func(d time.Duration) { computed += d; nComputed++ })
	switch {
	case err == nil:
		// The report (GetVersion: histories recorded before it have no
		// Report activity) comes after the evaluation; its own time is
		// not among the steps.
		now := workflow.Now(ctx)
		res.Timings, res.Elapsed = steps.timings(now), now.Sub(started)
		if workflow.GetVersion(ctx, "report", workflow.DefaultVersion, 1) == 1 {
			writeReport(ctx, in, &res)
		}
		update(StageDone)
		res.Elapsed = prog.Elapsed
	case temporal.IsCanceledError(err) || errors.Is(ctx.Err(), workflow.ErrCanceled):
		update(StageCanceled)
	default:
		prog.Error = err.Error()
		var ae *temporal.ApplicationError
		if errors.As(err, &ae) {
			prog.Error = ae.Message()
		}
		update(StageFailed)
	}
	return res, err
}

func run(ctx workflow.Context, in Input, prog *Progress, update func(string), blockDone func(time.Duration)) (Result, error) {
	if err := in.validate(); err != nil {
		return Result{}, temporal.NewNonRetryableApplicationError(err.Error(), activities.BadInput, err)
	}
	ctx = workflow.WithActivityOptions(ctx, activityOptions(in))
	job := in.Job
	res := Result{ID: job.ID, Output: job.Recipe.Output}

	ins, err := inspect(ctx, in)
	if err != nil {
		return res, err
	}
	stages := job.Recipe.Stages
	prog.Blocks = ins.Blocks
	prog.Steps, prog.Method = len(stages), string(stages[0].Method)
	res.Artifacts.Plan = ins.Plan
	update(StageBlocks)
	if !activities.LowRank(job.Recipe, 0) {
		if err := laterStages(ctx, in, ins, 0, prog, &res, update, blockDone); err != nil {
			return res, err
		}
		return exportAndEvaluate(ctx, in, &res, update)
	}

	if err := lowRankBlocks(ctx, in, ins, prog, &res, update, blockDone); err != nil {
		return res, err
	}
	if len(stages) > 1 {
		if err := laterStages(ctx, in, ins, 1, prog, &res, update, blockDone); err != nil {
			return res, err
		}
	}
	return exportAndEvaluate(ctx, in, &res, update)
}

// inspect runs the Inspect activity. On the GPU queue it waits GPUWait for
// a worker to take it, then asks the server whether any worker polls the
// queue: none fails the job with a message saying what to start; some
// (busy ones) wait again.
func inspect(ctx workflow.Context, in Input) (activities.InspectOutput, error) {
	var a *activities.Activities
	var ins activities.InspectOutput
	o := workflow.GetActivityOptions(ctx)
	if o.TaskQueue != GPUTaskQueue {
		err := workflow.ExecuteActivity(ctx, a.Inspect, activities.InspectInput{Job: in.Job}).Get(ctx, &ins)
		return ins, stepError("inspect", err)
	}
	wait := in.GPUWait
	if wait <= 0 {
		wait = DefaultGPUWait
	}
	o.ScheduleToStartTimeout = wait
	gpu := workflow.WithActivityOptions(ctx, o)
	o.TaskQueue, o.ScheduleToStartTimeout, o.StartToCloseTimeout, o.HeartbeatTimeout = workflow.GetInfo(ctx).TaskQueueName, 0, time.Minute, 0
	general := workflow.WithActivityOptions(ctx, o) // every worker polls it
	for {
		err := workflow.ExecuteActivity(gpu, a.Inspect, activities.InspectInput{Job: in.Job}).Get(ctx, &ins)
		if !isScheduleToStart(err) {
			return ins, stepError("inspect", err)
		}
		var pollers int
		if err := workflow.ExecuteActivity(general, a.Pollers, GPUTaskQueue).Get(ctx, &pollers); err != nil {
			return ins, stepError("inspect", err)
		}
		if pollers == 0 {
			msg := fmt.Sprintf("inspect: no worker polls task queue %s (the job asks for device cuda; its first task waited %v): "+
				"start `worker --device cuda` (built with -tags cuda) on a machine with a GPU, or run the job without --device cuda", GPUTaskQueue, wait)
			return ins, temporal.NewNonRetryableApplicationError(msg, NoGPUWorker, err)
		}
		workflow.GetLogger(ctx).Warn("GPU workers poll but took no task: waiting again", "queue", GPUTaskQueue, "pollers", pollers, "waited", wait)
	}
}

// NoGPUWorker is the error type of a cuda job that no GPU worker serves.
const NoGPUWorker = "NoGPUWorker"

// lowRankBlocks runs the first stage, a low-rank one, block by block,
// recording each block's factors and per-layer ranks in res in block order.
func lowRankBlocks(ctx workflow.Context, in Input, ins activities.InspectOutput, prog *Progress, res *Result,
	update func(string), blockDone func(time.Duration)) error {
	// record takes the output of block i, in block order.
	record := func(i int, b activities.BlockOutput, took time.Duration) {
		if b.Skipped {
			prog.Skipped++
			res.Skipped++
		} else {
			blockDone(took)
		}
		res.Artifacts.Blocks = append(res.Artifacts.Blocks, b.Factors)
		for _, l := range b.Layers {
			res.Layers = append(res.Layers, l)
			res.Total += l.Out * l.In
			if l.Dense {
				res.Params += l.Out * l.In
			} else {
				res.Params += l.Rank * (l.Out + l.In)
			}
		}
		prog.Block = i + 1
		update(StageBlocks)
	}
	if len(ins.BlockStreams) == ins.Blocks {
		return parallelBlocks(ctx, in, ins, prog, res, record)
	}
	return sequentialBlocks(ctx, in.Job, ins, res, record)
}

// parallelBlocks runs independent blocks (original calibration mode): a
// window of Parallel activities at a time, which any number of workers share.
func parallelBlocks(ctx workflow.Context, in Input, ins activities.InspectOutput, prog *Progress, res *Result,
	record func(int, activities.BlockOutput, time.Duration)) error {
	var a *activities.Activities
	par := in.Parallel
	if par <= 0 {
		par = 4
	}
	res.Artifacts.Streams = ins.BlockStreams
	type running struct {
		f     workflow.Future
		start time.Time
	}
	var window []running
	next := 0
	for i := range ins.Blocks {
		for next < ins.Blocks && len(window) < par {
			window = append(window, running{workflow.ExecuteActivity(ctx, a.Block, activities.BlockInput{
				Job: in.Job, Plan: ins.Plan, Streams: ins.BlockStreams[next], Index: next, Blocks: ins.Blocks, NoNext: true,
			}), workflow.Now(ctx)})
			next++
		}
		var b activities.BlockOutput
		if err := window[0].f.Get(ctx, &b); err != nil {
			return stepError(fmt.Sprintf("block %d", i), err)
		}
		// Blocks overlap: count the time since the later of this
		// block's start and the previous block's end.
		took := workflow.Now(ctx).Sub(window[0].start)
		if last := prog.Updated; last.After(window[0].start) {
			took = workflow.Now(ctx).Sub(last)
		}
		window = window[1:]
		record(i, b, took)
	}
	return nil
}

// sequentialBlocks runs the blocks in order, each on the calibration
// streams the block before it made (sequential calibration mode).
func sequentialBlocks(ctx workflow.Context, job recipe.Job, ins activities.InspectOutput, res *Result,
	record func(int, activities.BlockOutput, time.Duration)) error {
	var a *activities.Activities
	streams := ins.Streams
	for i := range ins.Blocks {
		res.Artifacts.Streams = append(res.Artifacts.Streams, streams)
		t0 := workflow.Now(ctx)
		var b activities.BlockOutput
		err := workflow.ExecuteActivity(ctx, a.Block, activities.BlockInput{
			Job: job, Plan: ins.Plan, Streams: streams, Index: i, Blocks: ins.Blocks,
		}).Get(ctx, &b)
		if err != nil {
			return stepError(fmt.Sprintf("block %d", i), err)
		}
		streams = b.Next
		record(i, b, workflow.Now(ctx).Sub(t0))
	}
	return nil
}

// laterStages runs the palu, rtn, gptq and eora stages from stage first on:
// each plans itself on the model the stages before it made, then runs block
// by block, each block from the streams its predecessor produced.
func laterStages(ctx workflow.Context, in Input, ins activities.InspectOutput, first int, prog *Progress, res *Result,
	update func(string), blockDone func(time.Duration)) error {
	var a *activities.Activities
	job := in.Job
	stages := job.Recipe.Stages
	res.Stages = make([][]activities.StageReport, len(stages))
	var prior [][]store.Ref // prior[j][i]: block i after stage j
	if first > 0 {
		prior = append(prior, res.Artifacts.Blocks)
	}
	for s := first; s < len(stages); s++ {
		method := stages[s].Method
		prog.Step, prog.Method, prog.Block = s, string(method), 0
		update(StageBlocks)
		var plan activities.PlanStageOutput
		if err := workflow.ExecuteActivity(ctx, a.PlanStage, activities.PlanStageInput{Job: job, Stage: s, Prior: prior}).Get(ctx, &plan); err != nil {
			return stepError(fmt.Sprintf("stages[%d] (%s) plan", s, method), err)
		}
		sa := StageArtifacts{Plan: plan.Plan}
		streams := ins.Streams
		for i := range ins.Blocks {
			sa.Streams = append(sa.Streams, streams)
			bp := make([]store.Ref, len(prior))
			for j := range prior {
				bp[j] = prior[j][i]
			}
			t0 := workflow.Now(ctx)
			var b activities.StageBlockOutput
			err := workflow.ExecuteActivity(ctx, a.StageBlock, activities.StageBlockInput{
				Job: job, Stage: s, Plan: plan.Plan, Streams: streams, Prior: bp, Index: i, Blocks: ins.Blocks,
			}).Get(ctx, &b)
			if err != nil {
				return stepError(fmt.Sprintf("stages[%d] (%s) block %d", s, method, i), err)
			}
			streams = b.Next
			sa.Blocks = append(sa.Blocks, b.Layers)
			res.Stages[s] = append(res.Stages[s], b.Report)
			if b.Skipped {
				prog.Skipped++
				res.Skipped++
			} else {
				blockDone(workflow.Now(ctx).Sub(t0))
			}
			prog.Block = i + 1
			update(StageBlocks)
		}
		prior = append(prior, sa.Blocks)
		if s == 0 {
			res.Artifacts.Plan, res.Artifacts.Streams, res.Artifacts.Blocks = sa.Plan, sa.Streams, sa.Blocks
		} else {
			res.Artifacts.Later = append(res.Artifacts.Later, sa)
		}
	}
	return nil
}

// exportAndEvaluate writes the checkpoint, reads it back and evaluates it.
func exportAndEvaluate(ctx workflow.Context, in Input, res *Result, update func(string)) (Result, error) {
	var a *activities.Activities
	update(StageExport)
	if err := workflow.ExecuteActivity(ctx, a.Export, exportInput(in.Job, res)).Get(ctx, &res.Export); err != nil {
		return *res, stepError("export", err)
	}
	res.Files = res.Export.Files

	update(StageEvaluate)
	err := onExporter(ctx, in, res, "evaluate", func(ctx workflow.Context) error {
		return workflow.ExecuteActivity(ctx, a.Evaluate, activities.EvaluateInput{Job: in.Job, Export: res.Export}).Get(ctx, &res.Quality)
	})
	return *res, err
}

// exportInput is the Export activity's input for the artifacts in res.
func exportInput(job recipe.Job, res *Result) activities.ExportInput {
	ex := activities.ExportInput{Job: job, Plan: res.Artifacts.Plan, Blocks: res.Artifacts.Blocks}
	for _, l := range res.Artifacts.Later {
		ex.Later = append(ex.Later, l.Blocks)
	}
	return ex
}

// versionHostFailover (workflow.GetVersion) marks jobs that export again
// when the exporting host takes no task; jobs recorded before it wait an
// hour (legacyHostWait) and fail.
const versionHostFailover = "host-failover"

const legacyHostWait = time.Hour

// onExporter runs step, an activity on the exported directory, on the
// exporting host's queue (res.Export.HostQueue). When no worker of that
// host takes it within HostWait, the host is taken for gone: Export runs
// again on ctx's queue (the general or the GPU one), whichever worker takes
// it, and step runs on that worker's host. Export is content-addressed: it
// reuses every stored block, and only the checkpoint is written again, to
// the recipe's output path on the new host (on a shared filesystem it finds
// the files in place and only checks them). It returns step's error named
// after it.
func onExporter(ctx workflow.Context, in Input, res *Result, step string, run func(workflow.Context) error) error {
	if workflow.GetVersion(ctx, versionHostFailover, workflow.DefaultVersion, 1) == workflow.DefaultVersion {
		return stepError(step, run(onHost(ctx, res.Export.HostQueue, legacyHostWait)))
	}
	wait := in.HostWait
	if wait <= 0 {
		wait = DefaultHostWait
	}
	var a *activities.Activities
	for exports := 1; ; exports++ {
		queue := res.Export.HostQueue
		err := run(onHost(ctx, queue, wait))
		if !isScheduleToStart(err) {
			return stepError(step, err)
		}
		if exports == maxExports {
			msg := fmt.Sprintf("%s: no worker of the exporting host took it from task queue %s within %v, after %d exports on hosts that went away or stayed busy",
				step, queue, wait, exports)
			return temporal.NewNonRetryableApplicationError(msg, "HostGone", err)
		}
		workflow.GetLogger(ctx).Warn("the exporting host took no task: exporting again on another", "step", step, "queue", queue, "waited", wait)
		if err := workflow.ExecuteActivity(ctx, a.Export, exportInput(in.Job, res)).Get(ctx, &res.Export); err != nil {
			return stepError("export", err)
		}
		res.Files = res.Export.Files
		res.Reexports++
	}
}

// onHost sends ctx's activities to a host's queue (HostTaskQueue), when
// queue is set, waiting at most wait for a worker to take each
// (ScheduleToStartTimeout; a timeout is not retried).
func onHost(ctx workflow.Context, queue string, wait time.Duration) workflow.Context {
	if queue == "" {
		return ctx
	}
	o := workflow.GetActivityOptions(ctx)
	o.TaskQueue, o.ScheduleToStartTimeout = queue, wait
	return workflow.WithActivityOptions(ctx, o)
}

// isScheduleToStart tells whether err is an activity's schedule-to-start
// timeout: no worker took its task in time.
func isScheduleToStart(err error) bool {
	var te *temporal.TimeoutError
	return errors.As(err, &te) && te.TimeoutType() == enumspb.TIMEOUT_TYPE_SCHEDULE_TO_START
}

// stepError names the step that failed and keeps the activity's error type
// (BadInput, StoreUnwritable) at the top of the workflow's failure, where
// status and result show it. A cancellation, or nil, is returned as is.
func stepError(step string, err error) error {
	var ae *temporal.ApplicationError
	switch {
	case err == nil, temporal.IsCanceledError(err):
		return err
	case errors.As(err, &ae):
		return temporal.NewNonRetryableApplicationError(step+": "+ae.Message(), ae.Type(), err)
	}
	// Retries exhausted on a timeout or a transient error.
	return temporal.NewNonRetryableApplicationError(step+": "+err.Error(), "StepFailed", err)
}
