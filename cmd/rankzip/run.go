package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"

	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/recipe"
	"github.com/rankzip/rankzip/store"
	"github.com/rankzip/rankzip/workflows"
)

func runRun(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("run", "run RECIPE [--temporal HOST:PORT] [--state DIR] [flags]", stderr)
	sf := addServiceFlags(fs)
	addUIFlags(fs, sf)
	asJSON := fs.Bool("json", false, "print the result as one JSON object")
	serverOnly := fs.Bool("no-worker", false, "embedded server only: leave the work to cmd/worker processes (--temporal 127.0.0.1:PORT)")
	times := addJobTimeFlags(fs)
	pos, err := parse(fs, args, 1)
	if err != nil {
		return err
	}
	mode := fullWorker
	if *serverOnly {
		mode = noWorker
	}
	res, err := runJob(sf, pos[0], mode, *times, stderr)
	if err != nil {
		return err
	}
	return printResult(stdout, res, *asJSON)
}

// runJob loads a recipe, submits its job (or attaches to it) and follows it
// to its result, drawing progress on progressOut.
//
// When another rankzip process runs the embedded server of the state
// directory (a second `rankzip run` of the same recipe, say), the job is
// submitted there and followed: the same recipe run twice at once is one
// workflow, whose result both commands print. Should that process end before
// the job does, this one takes the server over and resumes the job.
func runJob(sf *serviceFlags, recipePath string, mode workerMode, times jobTimes, progressOut io.Writer) (workflows.Result, error) {
	job, err := recipe.Load(recipePath)
	if err != nil {
		return workflows.Result{}, err
	}
	ctx, stop := signalContext()
	defer stop()
	takeovers, reruns := 0, 0
	for {
		res, err := runOnce(ctx, sf, job, recipePath, mode, times, progressOut, takeovers > 0)
		switch {
		case errors.Is(err, errOwnerGone) && takeovers < 3:
			takeovers++
			fmt.Fprintf(progressOut, "the rankzip process running the embedded server ended; taking it over\n")
			continue
		case err != nil && strings.Contains(err.Error(), store.ErrCorrupt.Error()) && reruns < 5:
			// The store removed the damaged artifact; a new run of the job
			// finds every other one and makes that one again. Each run
			// removes at least one, so this ends.
			reruns++
			fmt.Fprintf(progressOut, "%v\na stored artifact was damaged; running the job again to make it again\n", err)
			continue
		}
		return res, err
	}
}

// errOwnerGone reports that the process whose embedded server a session used
// ended.
var errOwnerGone = errors.New("the rankzip process running the embedded server ended")

// runOnce connects, submits the job (unless, on a takeover, it already
// finished) and follows it.
func runOnce(ctx context.Context, sf *serviceFlags, job *recipe.Job, recipePath string, mode workerMode, times jobTimes, progressOut io.Writer, takeover bool) (workflows.Result, error) {
	var res workflows.Result
	s, err := sf.connect(mode)
	if err != nil {
		return res, err
	}
	defer s.Close()
	ui, err := sessionUI(sf, s, progressOut)
	if err != nil {
		return res, err
	}
	defer stopUI(ui)
	done := false
	if takeover {
		d, err := s.c.DescribeWorkflowExecution(ctx, job.ID, "")
		done = err == nil && d.WorkflowExecutionInfo.GetStatus() != enumspb.WORKFLOW_EXECUTION_STATUS_RUNNING
	}
	if !done {
		resumed, err := submit(ctx, s, job, times)
		if err != nil {
			return res, err
		}
		verb := "started"
		if resumed {
			verb = "resumed"
		}
		fmt.Fprintf(progressOut, "job %s %s on %s\n", job.ID, verb, s.where())
		if ui != nil {
			fmt.Fprintf(progressOut, "job in the Web UI: %s\n", ui.workflowURL(sf.ns(), job.ID))
		}
		s.log.Info("job submitted", "job", job.ID, "resumed", resumed, "recipe", recipePath)
	}
	res, err = follow(ctx, s, job.ID, progressOut)
	if ctx.Err() != nil {
		if s.external {
			fmt.Fprintf(progressOut, "\ninterrupted: the job goes on on the cluster; follow it with: rankzip watch %s\n", job.ID)
		} else {
			fmt.Fprintf(progressOut, "\ninterrupted: run the same command again to resume the job\n")
		}
		return res, errUsage
	}
	if errors.Is(err, errOwnerGone) {
		return res, err
	}
	if err != nil {
		return res, fmt.Errorf("job %s failed: %w", job.ID, jobError(err))
	}
	s.log.Info("job done", "job", job.ID, "skipped_blocks", res.Skipped)
	return res, nil
}

func runSubmit(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("submit", "submit RECIPE --temporal HOST:PORT [flags]", stderr)
	sf := addServiceFlags(fs)
	times := addJobTimeFlags(fs)
	pos, err := parse(fs, args, 1)
	if err != nil {
		return err
	}
	if sf.hostPort() == "" {
		return fmt.Errorf("submit needs a Temporal cluster with workers (--temporal HOST:PORT or TEMPORAL_ADDRESS); without one, use: rankzip run %s", pos[0])
	}
	job, err := recipe.Load(pos[0])
	if err != nil {
		return err
	}
	s, err := sf.connect(noWorker)
	if err != nil {
		return err
	}
	defer s.Close()
	if _, err := submit(context.Background(), s, job, *times); err != nil {
		return err
	}
	fmt.Fprintln(stdout, job.ID)
	return nil
}

// submit starts the job's workflow, or attaches to it when it is running
// (after a crash, or from another terminal), and says which.
func submit(ctx context.Context, s *session, job *recipe.Job, times jobTimes) (resumed bool, err error) {
	if d, err := s.c.DescribeWorkflowExecution(ctx, job.ID, ""); err == nil &&
		d.WorkflowExecutionInfo.GetStatus() == enumspb.WORKFLOW_EXECUTION_STATUS_RUNNING {
		resumed = true
	}
	_, err = s.c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{
		ID:                       job.ID,
		TaskQueue:                workflows.TaskQueue,
		WorkflowIDConflictPolicy: enumspb.WORKFLOW_ID_CONFLICT_POLICY_USE_EXISTING,
		WorkflowIDReusePolicy:    enumspb.WORKFLOW_ID_REUSE_POLICY_ALLOW_DUPLICATE,
	}, workflows.CompressModel, workflows.Input{Job: *job, HeartbeatTimeout: times.heartbeat, Device: jobDevice(s.device),
		GPUWait: times.gpuWait, HostWait: times.hostWait})
	if err != nil {
		return false, fmt.Errorf("submit job %s: %w", job.ID, err)
	}
	return resumed, nil
}

// jobTimes are the timing flags of run and submit, which go into the job's
// workflow input.
type jobTimes struct{ heartbeat, gpuWait, hostWait time.Duration }

func addJobTimeFlags(fs *flag.FlagSet) *jobTimes {
	var t jobTimes
	fs.DurationVar(&t.heartbeat, "heartbeat-timeout", 0, "activity heartbeat timeout (default 10s): how soon the work of a dead worker is retried")
	fs.DurationVar(&t.gpuWait, "gpu-wait", 0, fmt.Sprintf("with --device cuda: how long the job's first task waits for a GPU worker; then the job fails if no worker polls the GPU queue (default %v)", workflows.DefaultGPUWait))
	fs.DurationVar(&t.hostWait, "host-wait", 0, fmt.Sprintf("how long evaluation and report wait for a worker of the host that exported; then the checkpoint is exported again by another worker, to the recipe's output on its host (default %v)", workflows.DefaultHostWait))
	return &t
}

// jobDevice is the device a job asks for: "cuda" (its activities go to the
// GPU queue) or "" (any worker).
func jobDevice(device string) string {
	if device == "" {
		device = os.Getenv(kernels.DeviceEnv)
	}
	if device == "cuda" {
		return device
	}
	return ""
}

// follow draws the job's progress until it ends and returns its result.
func follow(ctx context.Context, s *session, id string, w io.Writer) (workflows.Result, error) {
	var res workflows.Result
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.c.GetWorkflow(ctx, id, "").Get(ctx, &res) }()
	bar := newProgressBar(w)
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case err := <-done:
			if p, qerr := queryProgress(ctx, s.c, id); qerr == nil {
				bar.draw(p)
			} else if err != nil && s.ownerGone() {
				bar.end()
				return res, errOwnerGone
			}
			bar.end()
			return res, err
		case <-ctx.Done():
			bar.end()
			return res, ctx.Err()
		case <-tick.C:
			if p, err := queryProgress(ctx, s.c, id); err == nil {
				bar.draw(p)
			} else if s.ownerGone() {
				bar.end()
				return res, errOwnerGone
			}
		}
	}
}

func queryProgress(ctx context.Context, c client.Client, id string) (workflows.Progress, error) {
	var p workflows.Progress
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	v, err := c.QueryWorkflow(qctx, id, "", workflows.ProgressQuery)
	if err != nil {
		return p, err
	}
	return p, v.Get(&p)
}

// progressBar draws progress on one line of a terminal, or prints a line
// per change elsewhere.
type progressBar struct {
	w    io.Writer
	tty  bool
	last string
}

func newProgressBar(w io.Writer) *progressBar {
	b := &progressBar{w: w}
	if f, ok := w.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			b.tty = true
		}
	}
	return b
}

func (b *progressBar) draw(p workflows.Progress) {
	line, key := progressLine(p, time.Now())
	if b.tty {
		fmt.Fprintf(b.w, "\r\033[K%s", line)
		b.last = key
		return
	}
	if key != b.last {
		fmt.Fprintln(b.w, line)
		b.last = key
	}
}

func (b *progressBar) end() {
	if b.tty && b.last != "" {
		fmt.Fprintln(b.w)
	}
}

// progressLine renders p; key changes only with the stage or block.
func progressLine(p workflows.Progress, now time.Time) (line, key string) {
	key = fmt.Sprintf("%s %d/%d", p.Stage, p.Block, p.Blocks)
	if p.Steps > 1 {
		key = fmt.Sprintf("%s %d %d/%d", p.Stage, p.Step, p.Block, p.Blocks)
	}
	elapsed := p.Elapsed
	if !p.Started.IsZero() && p.Stage != workflows.StageDone && p.Stage != workflows.StageFailed && p.Stage != workflows.StageCanceled {
		elapsed = now.Sub(p.Started)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%-8s", p.Stage)
	if p.Steps > 1 && p.Stage == workflows.StageBlocks {
		fmt.Fprintf(&b, " stage %d/%d %-5s", p.Step+1, p.Steps, p.Method)
	}
	if p.Blocks > 0 {
		const width = 24
		fill := width * p.Block / p.Blocks
		fmt.Fprintf(&b, " [%s%s] block %d/%d", strings.Repeat("#", fill), strings.Repeat("-", width-fill), p.Block, p.Blocks)
	}
	fmt.Fprintf(&b, "  elapsed %s", elapsed.Round(time.Second))
	if p.ETA > 0 {
		eta := max(0, p.ETA-now.Sub(p.Updated))
		fmt.Fprintf(&b, "  eta %s", eta.Round(time.Second))
	}
	if p.Skipped > 0 {
		fmt.Fprintf(&b, "  (%d block(s) found done)", p.Skipped)
	}
	return b.String(), key
}

// jobError shortens a workflow failure to the message the user needs: the
// failed step's message and its type (BadInput, StoreUnwritable, ...)
// rather than the whole chain of wrapped causes.
func jobError(err error) error {
	var ae *temporal.ApplicationError
	var ce *temporal.CanceledError
	switch {
	case errors.As(err, &ce):
		return errors.New("canceled")
	case errors.As(err, &ae):
		return fmt.Errorf("%s [%s]", ae.Message(), ae.Type())
	}
	var we *temporal.WorkflowExecutionError
	if errors.As(err, &we) {
		if u := errors.Unwrap(we); u != nil {
			return u
		}
	}
	return err
}

func printResult(w io.Writer, r workflows.Result, asJSON bool) error {
	if asJSON {
		return writeJSON(w, r)
	}
	q := r.Quality
	fmt.Fprintf(w, "job        %s\n", r.ID)
	fmt.Fprintf(w, "output     %s (%s in %d files)", r.Output, humanBytes(r.Export.Bytes), len(r.Files))
	if r.Export.HostQueue != "" { // the directory is on the host of that queue
		fmt.Fprintf(w, " on the host of task queue %s", r.Export.HostQueue)
	}
	if r.Reexports > 0 {
		fmt.Fprintf(w, "; exported %d more time(s): the exporting host was gone", r.Reexports)
	}
	fmt.Fprintln(w)
	switch {
	case r.Report != "":
		fmt.Fprintf(w, "report     %s\n", r.Report)
	case r.ReportError != "":
		fmt.Fprintf(w, "report     not written: %s\n", r.ReportError)
	}
	if r.Total > 0 {
		fmt.Fprintf(w, "parameters %s of %s (%.1f%%); targeted matrices %s of %s (%.1f%%)\n", commas(q.Params), commas(q.OriginalParams),
			100*q.KeptParams, commas(int64(r.Params)), commas(int64(r.Total)), 100*float64(r.Params)/float64(max(r.Total, 1)))
	} else {
		fmt.Fprintf(w, "parameters %s of %s (%.1f%%)\n", commas(q.Params), commas(q.OriginalParams), 100*q.KeptParams)
	}
	fmt.Fprintf(w, "size       %s (original %s)\n", humanBytes(q.FileBytes), humanBytes(q.OriginalBytes))
	fmt.Fprintf(w, "kv cache   %d bytes per token at 16 bits\n", q.KVBytesPerToken)
	if c, o := q.Compressed, q.Original; c != nil && o != nil {
		fmt.Fprintf(w, "quality    %d sequences: ppl %.4f (original %.4f), KL %.4g, top-1 agreement %.4f\n", c.Sequences, c.PPL, o.PPL, *c.KL, *c.Top1Agree)
	}
	fmt.Fprintf(w, "time       %s", r.Elapsed.Round(time.Millisecond))
	if r.Skipped > 0 {
		fmt.Fprintf(w, " (%d block(s) found done in the store)", r.Skipped)
	}
	fmt.Fprintln(w)
	printStages(w, r)
	if len(r.Layers) == 0 {
		return nil
	}
	// Ranks per module across layers: "mlp.up_proj  40 41 39 ..."
	var mods []string
	ranks := map[string][]string{}
	for _, l := range r.Layers {
		mod := l.Name[strings.Index(l.Name, ".layers.")+len(".layers."):]
		mod = mod[strings.Index(mod, ".")+1:]
		if !slices.Contains(mods, mod) {
			mods = append(mods, mod)
		}
		v := fmt.Sprint(l.Rank)
		if l.Dense {
			v = "dense"
		}
		ranks[mod] = append(ranks[mod], v)
	}
	fmt.Fprintln(w, "ranks by layer:")
	for _, m := range mods {
		fmt.Fprintf(w, "  %-18s %s\n", m, strings.Join(ranks[m], " "))
	}
	return nil
}

// printStages summarises the palu, mla, rtn, gptq and eora stages of a result.
func printStages(w io.Writer, r workflows.Result) {
	for i, blocks := range r.Stages {
		if len(blocks) == 0 {
			continue
		}
		var n int
		var rel, before, after float64
		latent := 0
		var mlaLayers []string
		for _, b := range blocks {
			if l := b.MLA; l != nil {
				mlaLayers = append(mlaLayers, fmt.Sprintf("%.0f%%/%.0f%%", 100*l.RopeShare, 100*l.LatentShare))
			}
			for _, l := range b.Quant {
				rel += l.RelError
				n++
			}
			for _, l := range b.EoRA {
				before += l.ErrorBefore
				after += l.ErrorAfter
				n++
			}
			for _, ranks := range b.Palu {
				for _, x := range ranks {
					latent += x
				}
			}
		}
		switch {
		case len(mlaLayers) > 0:
			fmt.Fprintf(w, "stage %d    mla: key energy in the rope dims / [k_nope; v] energy in the latent, by layer: %s\n", i, strings.Join(mlaLayers, " "))
		case latent > 0:
			fmt.Fprintf(w, "stage %d    palu: %d latent values per token over all layers (k and v)\n", i, latent)
		case n > 0 && before > 0:
			fmt.Fprintf(w, "stage %d    eora: %d corrections, calibration error %.4g -> %.4g (summed)\n", i, n, before, after)
		case n > 0:
			fmt.Fprintf(w, "stage %d    quantization: %d layers, mean relative calibration error %.4g\n", i, n, rel/float64(n))
		}
	}
}
