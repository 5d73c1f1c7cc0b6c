// Package activities holds the Temporal activities of a compression job: thin
// adapters that load their inputs from the artifact store (refs in), call
// compress, model and eval, store what they produce (refs out), heartbeat
// with progress details, skip work whose artifact already exists, and map
// errors to Temporal's retry semantics:
//
//   - bad input (a malformed file, a recipe the model rejects, a missing input,
//     a numerical failure that would repeat on every try) is a non-retryable
//     application error of type BadInput carrying the message the user needs;
//   - a store that cannot be written (full disk, read-only) is non-retryable
//     of type StoreUnwritable: retrying will not free space;
//   - anything else (I/O hiccups) is returned as is and retried with backoff.
//
// Each unit of work (plan, block, export, evaluation) is idempotent: its
// output is recorded in the store under a key derived from everything that
// determines it, and a retried or resumed activity returns the recorded
// output instead of computing it again.
package activities

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"runtime/debug"
	"sync"
	"syscall"
	"time"

	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/temporal"

	"github.com/rankzip/rankzip/calib"
	"github.com/rankzip/rankzip/compress"
	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/model"
	"github.com/rankzip/rankzip/model/safetensors"
	"github.com/rankzip/rankzip/recipe"
	"github.com/rankzip/rankzip/store"
)

// Error types of the non-retryable application errors the activities return.
const (
	BadInput        = "BadInput"
	StoreUnwritable = "StoreUnwritable"
	// InternalError is a recovered panic: a bug, not the input's fault.
	InternalError = "InternalError"
)

// Version takes part in every artifact key: bump it when a change in the
// compression code changes what an artifact holds, so that stores written by
// an older rankzip are not reused.
const Version = "1"

// Activities are the activities of a compression job. Register a pointer
// with a worker; the fields are its dependencies.
type Activities struct {
	Store   *store.Store
	Backend kernels.Backend
	Log     *slog.Logger
	// HeartbeatEvery is how often a running activity repeats its last beat
	// between the beats of its work (the SDK throttles sending to 0.8 ×
	// HeartbeatTimeout). Default 2 s.
	HeartbeatEvery time.Duration
	// StallAfter bounds that repeating in the block activities, which beat
	// from their work (each calibration batch, site and layer): the last
	// beat is repeated only while the work's last unit finished less than
	// StallAfter ago. One unit can outlast the heartbeat timeout at real
	// size on a CPU (a whitened factorisation of a 5632-wide layer takes
	// tens of seconds), but a computation that hangs stops beating after
	// StallAfter, times out and is retried. Default 30 min.
	StallAfter time.Duration
	// Heartbeat, when set, receives the beats of the block activities
	// instead of activity.RecordHeartbeat: tests watch every beat there,
	// which the SDK would throttle.
	Heartbeat func(ctx context.Context, p Progress)
	// HostQueue is the task queue only workers of this host (that see its
	// local files) poll; Export reports it so that the job's next steps on
	// the exported directory run here. Empty: none.
	HostQueue string

	mu     sync.Mutex
	cached *cachedModel
	textMu sync.Mutex // one tokenization of text data at a time
}

// cachedModel is a model's top tensors, without its blocks.
type cachedModel struct {
	dir, digest string
	m           *model.Model
}

// Progress is the heartbeat detail of a running activity.
type Progress struct {
	Stage string `json:"stage"`           // inspect, block, plan, stage block, export, evaluate
	Block int    `json:"block"`           // block index (stage block)
	Phase string `json:"phase,omitempty"` // what the activity is doing
	// Done is the last unit of the block's work finished (a layer, a
	// site's statistics, a calibration batch), while it computes.
	Done string `json:"done,omitempty"`
	// Factored, once stored, lets a retry of the same block skip the
	// factorisation and only produce the next streams.
	Factored *Factored `json:"factored,omitempty"`
}

// Factored is a block's stored factors and its per-layer report.
type Factored struct {
	Factors store.Ref        `json:"factors"`
	Layers  []compress.Layer `json:"layers"`
}

func (a *Activities) log() *slog.Logger {
	if a.Log == nil {
		return slog.Default()
	}
	return a.Log
}

// beat records p as the activity's heartbeat now. The block activities
// beat at each phase and, while computing, from compress's per-layer loop
// (blockBeat), as samples-go's retryactivity beats from its loop: a beat
// means the work moved, so a hung computation stops beating (after
// StallAfter) and Temporal retries it.
func (a *Activities) beat(ctx context.Context, p Progress) {
	if a.Heartbeat != nil {
		a.Heartbeat(ctx, p)
		return
	}
	activity.RecordHeartbeat(ctx, p)
}

// blockBeat is the compress.Beat of a block activity: each unit of the
// block's work that finishes beats p with it as Done through set.
func blockBeat(set func(Progress), p Progress) compress.Beat {
	return func(done string) {
		p.Done = done
		set(p)
	}
}

// stallAfter is StallAfter or its default.
func (a *Activities) stallAfter() time.Duration {
	if a.StallAfter > 0 {
		return a.StallAfter
	}
	return 30 * time.Minute
}

// heartbeat records p now and repeats the last beat every HeartbeatEvery
// until the returned stop is called; set beats new details at once. With
// stall > 0 the repeating pauses while the last set is stall old or more:
// then only the work's own beats (set) count. Activities with no loop of
// their own to beat from (inspect, plan, export, evaluate) pass 0.
func (a *Activities) heartbeat(ctx context.Context, p Progress, stall time.Duration) (set func(Progress), stop func()) {
	every := a.HeartbeatEvery
	if every <= 0 {
		every = 2 * time.Second
	}
	var mu sync.Mutex
	cur, last := p, time.Now()
	a.beat(ctx, cur)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-t.C:
				mu.Lock()
				d, live := cur, stall <= 0 || time.Since(last) < stall
				mu.Unlock()
				if live {
					a.beat(ctx, d)
				}
			}
		}
	}()
	set = func(p Progress) {
		mu.Lock()
		cur, last = p, time.Now()
		mu.Unlock()
		a.beat(ctx, p)
	}
	var once sync.Once
	stop = func() { once.Do(func() { close(done); wg.Wait() }) }
	return set, stop
}

// ModelDigest combines the digests of a job's model files.
func ModelDigest(job recipe.Job) string {
	h := sha256.New()
	for _, f := range job.Model {
		fmt.Fprintf(h, "%s %d\n", f.SHA256, f.Bytes)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// blockModel returns the job's original model with only block i read: its
// other blocks are nil. The block activities hold one block's weights
// whatever the model's depth.
func (a *Activities) blockModel(job recipe.Job, i int) (*model.Model, error) {
	m, err := a.modelBlocks(job, func(l int) bool { return l == i })
	if err == nil && (i < 0 || i >= len(m.Blocks)) {
		return nil, badInput(fmt.Errorf("block %d of a model with %d blocks", i, len(m.Blocks)))
	}
	return m, err
}

// topModel returns the job's original model with no block read (all nil):
// the embeddings, final norm and LM head.
func (a *Activities) topModel(job recipe.Job) (*model.Model, error) {
	return a.modelBlocks(job, func(int) bool { return false })
}

// modelBlocks returns the original model with the blocks read that want
// asks for, the others nil. The embeddings, final norm and LM head are read
// once per worker; the blocks on every call, from the checkpoint's mapped
// files.
func (a *Activities) modelBlocks(job recipe.Job, want func(l int) bool) (*model.Model, error) {
	// The files are checked on every use, also when the top is cached: a
	// job whose inputs disappeared or changed fails at its next step.
	if err := checkInputs(job.Model); err != nil {
		return nil, err
	}
	r, err := model.Open(job.Recipe.Model)
	if err != nil {
		return nil, inputError(fmt.Errorf("load model: %w", err))
	}
	defer r.Close()
	top, err := a.top(job, r)
	if err != nil {
		return nil, err
	}
	m := *top
	m.Blocks = make([]*model.Block, r.Config.NumLayers)
	for l := range m.Blocks {
		if !want(l) {
			continue
		}
		if m.Blocks[l], err = r.Block(l); err != nil {
			return nil, inputError(fmt.Errorf("load model: %w", err))
		}
	}
	return &m, nil
}

// top returns the job's model without blocks (embeddings, norm, head),
// read through r once per worker.
func (a *Activities) top(job recipe.Job, r *model.Reader) (*model.Model, error) {
	dir, digest := job.Recipe.Model, ModelDigest(job)
	a.mu.Lock()
	defer a.mu.Unlock()
	if c := a.cached; c != nil && c.dir == dir && c.digest == digest {
		return c.m, nil
	}
	a.cached = nil
	m, err := r.Model(a.backend())
	if err != nil {
		return nil, inputError(fmt.Errorf("load model: %w", err))
	}
	a.cached = &cachedModel{dir: dir, digest: digest, m: m}
	return m, nil
}

func (a *Activities) backend() kernels.Backend {
	if a.Backend == nil {
		return kernels.Default()
	}
	return a.Backend
}

// checkInputs fails when an input file is gone or changed size since the
// job was submitted (a cheap check; the digests were taken at submission).
func checkInputs(files []recipe.File) error {
	for _, f := range files {
		st, err := statFile(f.Path)
		if err != nil {
			return badInput(fmt.Errorf("input %s: %w", f.Path, err))
		}
		if st != f.Bytes {
			return badInput(fmt.Errorf("input %s changed since the job was submitted (%d bytes, was %d); submit the recipe again", f.Path, st, f.Bytes))
		}
	}
	return nil
}

// calibration reads the job's calibration sequences, cut to seq_len; for
// text data also the ref of its token rows in the store.
func (a *Activities) calibration(job recipe.Job) ([][]int32, store.Ref, error) {
	c := job.Recipe.Calibration
	t, isText := calibText(job)
	ds, ref, err := a.dataset(job, t, isText)
	if err != nil {
		return nil, ref, err
	}
	defer ds.Close()
	seqs, err := ds.Read(c.Sequences)
	if err != nil {
		return nil, ref, inputError(err)
	}
	return recipe.Truncate(seqs, c.SeqLen), ref, nil
}

// badInput marks err non-retryable: the same input would fail again.
func badInput(err error) error {
	var ae *temporal.ApplicationError
	if err == nil || errors.As(err, &ae) {
		return err
	}
	return temporal.NewNonRetryableApplicationError(err.Error(), BadInput, err)
}

// inputError classifies an error of reading the job's inputs: a missing or
// malformed file is bad input; other I/O errors are retried.
func inputError(err error) error {
	var (
		ce *model.ConfigError
		fe *calib.FormatError
		se *safetensors.FormatError
	)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, fs.ErrNotExist), errors.Is(err, fs.ErrPermission),
		errors.As(err, &ce), errors.As(err, &fe), errors.As(err, &se):
		return badInput(err)
	}
	return err
}

// storeError classifies an error of writing to the store (or to the
// output directory): a full or read-only disk is not retried.
func (a *Activities) storeError(err error) error {
	var (
		ae    *temporal.ApplicationError
		errno syscall.Errno
	)
	switch {
	case err == nil || errors.As(err, &ae):
		return err
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT), errors.Is(err, syscall.EROFS),
		errors.Is(err, fs.ErrPermission):
		where := "the artifact store"
		if a != nil && a.Store != nil {
			where += " " + a.Store.Root()
		}
		reason := err.Error()
		if errors.As(err, &errno) {
			reason = errno.Error()
		}
		return temporal.NewNonRetryableApplicationError(fmt.Sprintf("%s or the output directory cannot be written (%s); free space or fix permissions, then run the job again: %v", where, reason, err), StoreUnwritable, err)
	case errors.Is(err, store.ErrCorrupt):
		return badInput(fmt.Errorf("%w (the store removed it: a new run of the job makes it again)", err))
	}
	return err
}

// guard turns a panic in the code it runs into a non-retryable error: a
// panic in the compression code is a bug that a retry repeats.
func (a *Activities) guard(fn func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			// The user reads the message; the stack is for whoever
			// fixes the bug: in the log and in the error's details.
			stack := string(debug.Stack())
			a.log().Error("internal error", "panic", fmt.Sprint(r), "stack", stack)
			err = temporal.NewNonRetryableApplicationError(
				fmt.Sprintf("internal error (a bug in rankzip; the stack is in the worker's log and this error's details): %v", r),
				InternalError, nil, stack)
		}
	}()
	return fn()
}

// canceled returns ctx's error, if any, for the loops between phases.
func canceled(ctx context.Context) error {
	return ctx.Err()
}

// advance runs a block on the streams (calib.Advance) for a retry that
// only lacks the next streams, beating p through set and checking ctx
// after each batch.
func advance(ctx context.Context, set func(Progress), p Progress, m *model.Model, orig, comp *model.Block, st *calib.Streams) (*calib.Streams, error) {
	bb := blockBeat(set, p)
	pass := calib.NewPass(m, orig, comp, st)
	defer pass.Release()
	pass.OnBatch(func(batch int) error {
		bb(fmt.Sprintf("next streams batch %d", batch))
		return ctx.Err()
	})
	return pass.Next()
}

// stepError is the error of a compress block step: ctx's own error when the
// step stopped because the activity was cancelled (retryable, so Temporal
// sees the cancellation), else bad input.
func stepError(ctx context.Context, err error) error {
	if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
		return err
	}
	return badInput(err)
}
