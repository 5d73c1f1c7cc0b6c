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
	factoredKey := store.Key("factored", key)
	var out BlockOutput
	if ref, ok, err := a.Store.Lookup(key); err != nil {
		return out, err
	} else if ok {
		if err := a.Store.GetJSON(ref, &out); err == nil {
			a.log().Info("block already done", "job", job.ID, "block", in.Index)
			out.Skipped, out.Seconds = true, 0
			return out, nil
		}
	}
	var resume Progress
	if activity.HasHeartbeatDetails(ctx) {
		if err := activity.GetHeartbeatDetails(ctx, &resume); err != nil || resume.Stage != "block" || resume.Block != in.Index {
			resume = Progress{}
		}
	}
	start := time.Now()
	var loaded, factored time.Time // phase ends, for the log
	p := Progress{Stage: "block", Block: in.Index, Phase: "load"}
	set, stop := a.heartbeat(ctx, p, a.stallAfter())
	defer stop()
	err := a.guard(func() error {
		m, err := a.blockModel(job, in.Index)
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
		if err := canceled(ctx); err != nil {
			return err
		}
		p.Phase = "loaded"
		set(p)
		loaded = time.Now()
		orig := m.Blocks[in.Index]
		var comp *model.Block
		if done := a.factored(resume, factoredKey); done != nil {
			// The factors of this block were stored before the previous
			// attempt stopped: only the next streams are missing.
			if comp, err = getLayers(a.Store, done.Factors, orig); err == nil {
				out.Factors, out.Layers = done.Factors, done.Layers
				a.log().Info("block factors found, skipping the factorisation", "job", job.ID, "block", in.Index, "factors", out.Factors.SHA256[:12])
			} else {
				comp = nil
			}
		}
		var next *calib.Streams
		if comp == nil {
			p.Phase = "factor"
			set(p)
			if comp, out.Layers, next, err = plan.Block(ctx, m, in.Index, st, blockBeat(set, p)); err != nil {
				return stepError(ctx, fmt.Errorf("block %d: %w", in.Index, err))
			}
			if out.Factors, err = putLayers(a.Store, store.Key("factors", key), orig, comp); err != nil {
				return a.storeError(err)
			}
			done := &Factored{Factors: out.Factors, Layers: out.Layers}
			if _, err := a.Store.PutJSON(factoredKey, done); err != nil {
				return a.storeError(err)
			}
			p.Phase, p.Factored = "factored", done
			set(p)
		} else if in.Index+1 < len(m.Blocks) && !in.NoNext {
			if next, err = advance(ctx, set, p, m, orig, comp, st); err != nil {
				return err
			}
		}
		factored = time.Now()
		if err := canceled(ctx); err != nil {
			return err
		}
		if next != nil && !in.NoNext {
			p.Phase = "store streams"
			set(p)
			if out.Next, err = putStreams(a.Store, jobKey("streams", job, in.Index+1, out.Factors.SHA256), next); err != nil {
				return a.storeError(err)
			}
		}
		out.Index = in.Index
		if _, err := a.Store.PutJSON(key, out); err != nil {
			return a.storeError(err)
		}
		return nil
	})
	if err != nil {
		return BlockOutput{}, err
	}
	out.Seconds = time.Since(start).Seconds()
	a.log().Info("block done", "job", job.ID, "block", in.Index, "of", in.Blocks, "seconds", fmt.Sprintf("%.2f", out.Seconds),
		"load_s", fmt.Sprintf("%.2f", loaded.Sub(start).Seconds()), "compute_s", fmt.Sprintf("%.2f", factored.Sub(loaded).Seconds()),
		"store_s", fmt.Sprintf("%.2f", time.Since(factored).Seconds()))
	return out, nil
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
