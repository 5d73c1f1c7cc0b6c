package activities

import (
	"context"
	"fmt"
	"runtime/debug"
	"time"

	"github.com/rankzip/rankzip/calib"
	"github.com/rankzip/rankzip/compress"
	"github.com/rankzip/rankzip/recipe"
	"github.com/rankzip/rankzip/store"
)

// InspectInput is the input of Inspect.
type InspectInput struct {
	Job recipe.Job `json:"job"`
}

// InspectOutput is the plan of a job and the calibration streams entering
// block 0.
type InspectOutput struct {
	Blocks  int       `json:"blocks"`
	Plan    store.Ref `json:"plan"`    // JSON of compress.Plan
	Streams store.Ref `json:"streams"` // calibration streams entering block 0
	// BlockStreams, in original calibration mode, holds the streams entering
	// every block (they do not depend on the compression of earlier blocks),
	// so that the blocks can be compressed in parallel; nil otherwise.
	BlockStreams []store.Ref `json:"block_streams,omitempty"`
	// Calibration, for text calibration data, is its token rows (tokenized
	// once into the store); unset for token ids.
	Calibration store.Ref `json:"calibration,omitzero"`
	Skipped     bool      `json:"skipped"` // found in the store
}

// calibSpec is what of the calibration settings determines the artifacts
// (the data file takes part through its digest, not its path; text data
// through the digest of its text spec, calibDigest).
type calibSpec struct {
	Digest    string `json:"digest"`
	Sequences int    `json:"sequences"`
	SeqLen    int    `json:"seq_len"`
	Mode      string `json:"mode"`
	Batch     int    `json:"batch"`
}

func jobKey(kind string, job recipe.Job, parts ...any) string {
	c := job.Recipe.Calibration
	base := []any{Version, ModelDigest(job), calibSpec{calibDigest(job), c.Sequences, c.SeqLen, c.Mode, c.Batch}, job.Recipe.Stages}
	return store.Key(kind, append(base, parts...)...)
}

// Inspect validates the recipe against the model, chooses every rank (a
// global rank search runs a calibration pass over all blocks), and embeds
// the calibration sequences: the streams entering block 0.
func (a *Activities) Inspect(ctx context.Context, in InspectInput) (InspectOutput, error) {
	job := in.Job
	key := jobKey("inspect", job)
	var out InspectOutput
	if ref, ok, err := a.Store.Lookup(key); err != nil {
		return out, err
	} else if ok {
		if err := a.Store.GetJSON(ref, &out); err == nil {
			a.log().Info("inspect already done", "job", job.ID, "plan", short(out.Plan.SHA256))
			out.Skipped = true
			return out, nil
		}
	}
	// This step reads every block, one at a time; once it returns, what it
	// read is garbage: hand it back to the OS, or the block steps' memory
	// stacks on the heap it left (Evaluate does the same).
	defer debug.FreeOSMemory()
	set, stop := a.heartbeat(ctx, Progress{Stage: "inspect", Phase: "load model"}, 0)
	defer stop()
	err := a.guard(func() error {
		if len(job.Recipe.Stages) == 0 {
			return badInput(fmt.Errorf("the recipe has no stages"))
		}
		if !LowRank(job.Recipe, 0) {
			// The later stages are planned once the stages before them ran
			// (PlanStage); only the streams entering block 0 are needed.
			return a.inspectStreams(ctx, job, key, &out)
		}
		opts, err := CompressOptions(job.Recipe)
		if err != nil {
			return badInput(err)
		}
		src, err := a.openSource(job)
		if err != nil {
			return err
		}
		defer src.Close()
		m := src.Top
		seqs, ref, err := a.calibration(job)
		if err != nil {
			return err
		}
		out.Calibration = ref
		if err := m.CheckTokens(seqs); err != nil {
			return badInput(err)
		}
		t0 := time.Now()
		set(Progress{Stage: "inspect", Phase: "plan ranks"})
		plan, err := compress.NewPlan(ctx, src.Source, seqs, opts)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return src.failed(badInput(err))
		}
		a.log().Info("planned", "job", job.ID, "search", plan.Options.RankSearch, "seconds", fmt.Sprintf("%.2f", time.Since(t0).Seconds()))
		set(Progress{Stage: "inspect", Phase: "embed calibration"})
		st, err := calib.Embed(m, seqs, plan.Options.Batch, plan.Options.Mode)
		if err != nil {
			return badInput(err)
		}
		if out.Plan, err = a.Store.PutJSON(jobKey("plan", job), plan); err != nil {
			return a.storeError(err)
		}
		if out.Streams, err = putStreams(a.Store, jobKey("streams", job, 0), st); err != nil {
			return a.storeError(err)
		}
		out.Blocks = src.Layers()
		if st.Mode == calib.Original {
			// One forward pass of the original model gives the input of
			// every block.
			out.BlockStreams = []store.Ref{out.Streams}
			for i := 1; i < out.Blocks; i++ {
				if err := canceled(ctx); err != nil {
					return err
				}
				set(Progress{Stage: "inspect", Block: i, Phase: "original streams"})
				prev, err := src.Block(i - 1)
				if err != nil {
					return err
				}
				next, err := calib.Advance(m, prev, prev, st)
				if err != nil {
					return err
				}
				st = next
				ref, err := putStreams(a.Store, jobKey("streams", job, i), st)
				if err != nil {
					return a.storeError(err)
				}
				out.BlockStreams = append(out.BlockStreams, ref)
			}
		}
		if _, err := a.Store.PutJSON(key, out); err != nil {
			return a.storeError(err)
		}
		return nil
	})
	if err != nil {
		return InspectOutput{}, err
	}
	a.log().Info("inspected", "job", job.ID, "blocks", out.Blocks, "plan", short(out.Plan.SHA256))
	return out, nil
}

// inspectStreams embeds the calibration sequences for a job whose first
// stage is not low-rank.
func (a *Activities) inspectStreams(ctx context.Context, job recipe.Job, key string, out *InspectOutput) error {
	m, err := a.topModel(job)
	if err != nil {
		return err
	}
	seqs, ref, err := a.calibration(job)
	if err != nil {
		return err
	}
	out.Calibration = ref
	if err := m.CheckTokens(seqs); err != nil {
		return badInput(err)
	}
	c := job.Recipe.Calibration
	st, err := calib.Embed(m, seqs, c.Batch, calib.Mode(c.Mode))
	if err != nil {
		return badInput(err)
	}
	if err := canceled(ctx); err != nil {
		return err
	}
	if out.Streams, err = putStreams(a.Store, jobKey("streams", job, 0), st); err != nil {
		return a.storeError(err)
	}
	out.Blocks = len(m.Blocks)
	if _, err := a.Store.PutJSON(key, *out); err != nil {
		return a.storeError(err)
	}
	return nil
}

// short abbreviates a digest for the log ("" stays "": no plan yet).
func short(sha string) string {
	return sha[:min(12, len(sha))]
}
