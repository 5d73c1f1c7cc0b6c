package activities

import (
	"context"
	"fmt"
	"time"

	"go.temporal.io/sdk/activity"

	"github.com/rankzip/rankzip/calib"
	"github.com/rankzip/rankzip/compress"
	"github.com/rankzip/rankzip/model"
	"github.com/rankzip/rankzip/recipe"
	"github.com/rankzip/rankzip/store"
)

// BlockInput names one block of a job and the artifacts it starts from.
type BlockInput struct {
	Job     recipe.Job `json:"job"`
	Plan    store.Ref  `json:"plan"`
	Streams store.Ref  `json:"streams"` // calibration streams entering the block
	Index   int        `json:"index"`
	Blocks  int        `json:"blocks"`
	// NoNext skips storing the streams entering the next block (the
	// parallel blocks of original mode have theirs from Inspect).
	NoNext bool `json:"no_next,omitempty"`
}

// BlockOutput is a compressed block: its changed linears, the streams
// entering the next block (zero after the last) and the per-layer report.
type BlockOutput struct {
	Index   int              `json:"index"`
	Factors store.Ref        `json:"factors"`
	Next    store.Ref        `json:"next"`
	Layers  []compress.Layer `json:"layers"`
	Skipped bool             `json:"skipped"` // found in the store
	Seconds float64          `json:"seconds"` // compute time, 0 when skipped
}

// Block compresses one block. A block recorded in the store is returned
// without work; a retry whose heartbeat details carry the block's stored
// factors only recomputes the next streams.
func (a *Activities) Block(ctx context.Context, in BlockInput) (BlockOutput, error) {
	job := in.Job
	// Every input that determines the block: two models may share a plan
	// (uniform ranks depend only on shapes) and block 0's streams (the same
	// embeddings), so the model's own digest is part of the key.
	key := store.Key("block", Version, ModelDigest(job), in.Plan.SHA256, in.Streams.SHA256, in.Index, in.NoNext)
	if out, ok, err := a.storedBlock(key, in); err != nil || ok {
		return out, err
	}
	r := &blockRun{a: a, ctx: ctx, in: in, key: key, factoredKey: store.Key("factored", key),
		resume: resumeDetails(ctx, in.Index), p: Progress{Stage: "block", Block: in.Index, Phase: "load"}}
	r.start = time.Now()
	set, stop := a.heartbeat(ctx, r.p, a.stallAfter())
	defer stop()
	r.set = set
	if err := a.guard(r.run); err != nil {
		return BlockOutput{}, err
	}
	out := r.out
	out.Seconds = time.Since(r.start).Seconds()
	a.log().Info("block done", "job", job.ID, "block", in.Index, "of", in.Blocks, "seconds", fmt.Sprintf("%.2f", out.Seconds),
		"load_s", fmt.Sprintf("%.2f", r.loaded.Sub(r.start).Seconds()), "compute_s", fmt.Sprintf("%.2f", r.factored.Sub(r.loaded).Seconds()),
		"store_s", fmt.Sprintf("%.2f", time.Since(r.factored).Seconds()))
	return out, nil
}

// storedBlock returns the block recorded under key, if the store has it
// (skipped, no compute time).
func (a *Activities) storedBlock(key string, in BlockInput) (BlockOutput, bool, error) {
	var out BlockOutput
	ref, ok, err := a.Store.Lookup(key)
	if err != nil || !ok {
		return out, false, err
	}
	if err := a.Store.GetJSON(ref, &out); err != nil {
		return BlockOutput{}, false, nil // unreadable: made again
	}
	a.log().Info("block already done", "job", in.Job.ID, "block", in.Index)
	out.Skipped, out.Seconds = true, 0
	return out, true, nil
}

// resumeDetails is the progress a previous attempt at block index
// heartbeated, or zero.
func resumeDetails(ctx context.Context, index int) Progress {
	var resume Progress
	if activity.HasHeartbeatDetails(ctx) {
		if err := activity.GetHeartbeatDetails(ctx, &resume); err != nil || resume.Stage != "block" || resume.Block != index {
			resume = Progress{}
		}
	}
	return resume
}

// blockRun is one attempt at a block that the store does not hold.
type blockRun struct {
	a                *Activities
	ctx              context.Context
	in               BlockInput
	key, factoredKey string
	resume           Progress // the previous attempt's heartbeat details
	set              func(Progress)
	p                Progress

	out                     BlockOutput
	start, loaded, factored time.Time // phase ends, for the log
}

// run loads the block and its inputs, factors it (or takes the factors a
// previous attempt stored), stores the streams entering the next block and
// records the block.
func (r *blockRun) run() error {
	a, in := r.a, r.in
	m, err := a.blockModel(in.Job, in.Index)
	if err != nil {
		return err
	}
	var plan compress.Plan
	if err := a.Store.GetJSON(in.Plan, &plan); err != nil {
		return a.storeError(err)
	}
	st, err := getStreams(a.Store, in.Streams)
	if err != nil {
		return a.storeError(err)
	}
	if err := canceled(r.ctx); err != nil {
		return err
	}
	r.p.Phase = "loaded"
	r.set(r.p)
	r.loaded = time.Now()
	next, err := r.compute(m, &plan, st)
	if err != nil {
		return err
	}
	r.factored = time.Now()
	if err := canceled(r.ctx); err != nil {
		return err
	}
	if next != nil && !in.NoNext {
		r.p.Phase = "store streams"
		r.set(r.p)
		if r.out.Next, err = putStreams(a.Store, jobKey("streams", in.Job, in.Index+1, r.out.Factors.SHA256), next); err != nil {
			return a.storeError(err)
		}
	}
	r.out.Index = in.Index
	if _, err := a.Store.PutJSON(r.key, r.out); err != nil {
		return a.storeError(err)
	}
	return nil
}

// compute factors the block and stores its factors, or reuses those a
// previous attempt stored; it returns the streams entering the next block
// (nil after the last or with NoNext).
func (r *blockRun) compute(m *model.Model, plan *compress.Plan, st *calib.Streams) (*calib.Streams, error) {
	a, in := r.a, r.in
	orig := m.Blocks[in.Index]
	var comp *model.Block
	var err error
	if done := a.factored(r.resume, r.factoredKey); done != nil {
		// The factors of this block were stored before the previous
		// attempt stopped: only the next streams are missing.
		if comp, err = getLayers(a.Store, done.Factors, orig); err == nil {
			r.out.Factors, r.out.Layers = done.Factors, done.Layers
			a.log().Info("block factors found, skipping the factorisation", "job", in.Job.ID, "block", in.Index, "factors", r.out.Factors.SHA256[:12])
		} else {
			comp = nil
		}
	}
	if comp != nil {
		if in.Index+1 < len(m.Blocks) && !in.NoNext {
			return advance(r.ctx, r.set, r.p, m, orig, comp, st)
		}
		return nil, nil
	}
	r.p.Phase = "factor"
	r.set(r.p)
	var next *calib.Streams
	comp, r.out.Layers, next, err = plan.Block(r.ctx, m, in.Index, st, blockBeat(r.set, r.p))
	if err != nil {
		return nil, stepError(r.ctx, fmt.Errorf("block %d: %w", in.Index, err))
	}
	if r.out.Factors, err = putLayers(a.Store, store.Key("factors", r.key), orig, comp); err != nil {
		return nil, a.storeError(err)
	}
	done := &Factored{Factors: r.out.Factors, Layers: r.out.Layers}
	if _, err := a.Store.PutJSON(r.factoredKey, done); err != nil {
		return nil, a.storeError(err)
	}
	r.p.Phase, r.p.Factored = "factored", done
	r.set(r.p)
	return next, nil
}

// factored returns the stored factors of a block from the heartbeat details
// of the previous attempt or, failing that, from the store; nil when the
// block must be factored.
func (a *Activities) factored(resume Progress, key string) *Factored {
	if resume.Factored != nil {
		return resume.Factored
	}
	ref, ok, err := a.Store.Lookup(key)
	if err != nil || !ok {
		return nil
	}
	var f Factored
	if err := a.Store.GetJSON(ref, &f); err != nil {
		return nil
	}
	return &f
}
