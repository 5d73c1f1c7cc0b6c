package activities

import (
	"context"
	"fmt"
	"runtime/debug"
	"slices"
	"time"

	"github.com/rankzip/rankzip/calib"
	"github.com/rankzip/rankzip/compress"
	"github.com/rankzip/rankzip/model"
	"github.com/rankzip/rankzip/recipe"
	"github.com/rankzip/rankzip/store"
)

// StagePlan is the stored plan of a palu, rtn, gptq or eora stage: its
// options, validated against the model the stages before it made.
type StagePlan struct {
	Method recipe.Method          `json:"method"`
	Palu   *compress.PaluPlan     `json:"palu,omitempty"`
	Quant  *compress.QuantOptions `json:"quant,omitempty"`
	EoRA   *compress.EoRAOptions  `json:"eora,omitempty"`
	MLA    *compress.MLAOptions   `json:"mla,omitempty"`
}

// StageReport is what a stage did to one block.
type StageReport struct {
	Palu  map[string][]int      `json:"palu,omitempty"` // ranks per module, per group
	Quant []compress.QuantLayer `json:"quant,omitempty"`
	EoRA  []compress.EoRALayer  `json:"eora,omitempty"`
	MLA   *compress.MLALayer    `json:"mla,omitempty"`
}

// PlanStageInput names stage Stage of a job and the block artifacts of the
// stages before it: Prior[j][i] is block i after stage j.
type PlanStageInput struct {
	Job   recipe.Job    `json:"job"`
	Stage int           `json:"stage"`
	Prior [][]store.Ref `json:"prior"`
}

// PlanStageOutput is the stored plan of a stage.
type PlanStageOutput struct {
	Plan    store.Ref `json:"plan"`
	Skipped bool      `json:"skipped"`
}

// StageBlockInput names one block of a palu, rtn, gptq or eora stage.
type StageBlockInput struct {
	Job     recipe.Job  `json:"job"`
	Stage   int         `json:"stage"`
	Plan    store.Ref   `json:"plan"`
	Streams store.Ref   `json:"streams"` // calibration streams entering the block
	Prior   []store.Ref `json:"prior"`   // this block after each earlier stage
	Index   int         `json:"index"`
	Blocks  int         `json:"blocks"`
}

// StageBlockOutput is one block of a stage: the linears it changed, the
// streams entering the next block (zero after the last) and its report.
type StageBlockOutput struct {
	Index   int         `json:"index"`
	Layers  store.Ref   `json:"layers"`
	Next    store.Ref   `json:"next"`
	Report  StageReport `json:"report"`
	Skipped bool        `json:"skipped"`
	Seconds float64     `json:"seconds"`
}

// stageDone is a block's stored layers and report, recorded before its next
// streams, so that a retry only recomputes those.
type stageDone struct {
	Layers store.Ref   `json:"layers"`
	Report StageReport `json:"report"`
}

func shas(refs []store.Ref) []string {
	s := make([]string, len(refs))
	for i, r := range refs {
		s[i] = r.SHA256
	}
	return s
}

// applyStages returns b, a block of the original model, with the
// artifacts of the earlier stages applied in order.
func (a *Activities) applyStages(b *model.Block, prior []store.Ref) (*model.Block, error) {
	for _, ref := range prior {
		var err error
		if b, err = getLayers(a.Store, ref, b); err != nil {
			return nil, a.storeError(err)
		}
	}
	return b, nil
}

// PlanStage validates a palu, rtn, gptq or eora stage against the model the
// stages before it made and stores its plan (Palu's ranks chosen).
func (a *Activities) PlanStage(ctx context.Context, in PlanStageInput) (PlanStageOutput, error) {
	job := in.Job
	r := job.Recipe
	var priorShas [][]string
	for _, p := range in.Prior {
		priorShas = append(priorShas, shas(p))
	}
	key := jobKey("stage-plan", job, in.Stage, priorShas)
	var out PlanStageOutput
	if ref, ok, err := a.Store.Lookup(key); err != nil {
		return out, err
	} else if ok && a.Store.GetJSON(ref, &out) == nil {
		out.Skipped = true
		return out, nil
	}
	// This step reads every block, one at a time; once it returns, what it
	// read is garbage: hand it back to the OS, or the block steps' memory
	// stacks on the heap it left (Evaluate does the same).
	defer debug.FreeOSMemory()
	_, stop := a.heartbeat(ctx, Progress{Stage: "plan", Block: in.Stage, Phase: "plan stage"}, 0)
	defer stop()
	err := a.guard(func() error {
		if in.Stage < 0 || in.Stage >= len(r.Stages) || len(in.Prior) != in.Stage {
			return badInput(fmt.Errorf("plan stage %d of %d with %d earlier stages", in.Stage, len(r.Stages), len(in.Prior)))
		}
		src, err := a.openSource(job)
		if err != nil {
			return err
		}
		defer src.Close()
		orig := src.Top.Config
		if err := src.applyStages(a, in.Prior); err != nil {
			return err
		}
		cur := src.Source
		where := fmt.Sprintf("stages[%d] (%s)", in.Stage, r.Stages[in.Stage].Method)
		plan := StagePlan{Method: r.Stages[in.Stage].Method}
		switch plan.Method {
		case recipe.MethodPalu:
			o, err := PaluOptions(r, in.Stage)
			if err != nil {
				return badInput(err)
			}
			seqs, _, err := a.calibration(job)
			if err != nil {
				return err
			}
			if plan.Palu, err = compress.NewPaluPlan(ctx, cur, seqs, o); err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				return src.failed(badInput(fmt.Errorf("%s: %w", where, err)))
			}
		case recipe.MethodRTN, recipe.MethodGPTQ:
			o, err := QuantOptions(r, in.Stage)
			if err != nil {
				return badInput(err)
			}
			if err := o.Validate(cur); err != nil {
				return src.failed(badInput(fmt.Errorf("%s: %w", where, err)))
			}
			plan.Quant = &o
		case recipe.MethodEoRA:
			o, err := EoRAOptions(r, in.Stage)
			if err != nil {
				return badInput(err)
			}
			if err := o.Check(cur, orig); err != nil {
				return src.failed(badInput(fmt.Errorf("%s: %w", where, err)))
			}
			plan.EoRA = &o
		case recipe.MethodMLA:
			o, err := MLAOptions(r, in.Stage)
			if err != nil {
				return badInput(err)
			}
			seqs, _, err := a.calibration(job)
			if err != nil {
				return err
			}
			if err := o.Check(cur, seqs); err != nil {
				return src.failed(badInput(fmt.Errorf("%s: %w", where, err)))
			}
			plan.MLA = &o
		default:
			return badInput(fmt.Errorf("%s: not a per-block stage (svd and lord run first)", where))
		}
		if out.Plan, err = a.Store.PutJSON(jobKey("stage-plan-data", job, in.Stage, priorShas), plan); err != nil {
			return a.storeError(err)
		}
		if _, err := a.Store.PutJSON(key, out); err != nil {
			return a.storeError(err)
		}
		return nil
	})
	if err != nil {
		return PlanStageOutput{}, err
	}
	return out, nil
}

// StageBlock runs one block of a palu, rtn, gptq or eora stage. A block
// recorded in the store is returned without work; one whose layers were
// stored before its attempt stopped only recomputes the next streams.
func (a *Activities) StageBlock(ctx context.Context, in StageBlockInput) (StageBlockOutput, error) {
	job := in.Job
	key := store.Key("stage-block", Version, ModelDigest(job), in.Plan.SHA256, in.Streams.SHA256, shas(in.Prior), in.Index)
	doneKey := store.Key("stage-layers", key)
	var out StageBlockOutput
	if ref, ok, err := a.Store.Lookup(key); err != nil {
		return out, err
	} else if ok && a.Store.GetJSON(ref, &out) == nil {
		a.log().Info("stage block already done", "job", job.ID, "stage", in.Stage, "block", in.Index)
		out.Skipped, out.Seconds = true, 0
		return out, nil
	}
	start := time.Now()
	p := Progress{Stage: "stage block", Block: in.Index, Phase: "load"}
	set, stop := a.heartbeat(ctx, p, a.stallAfter())
	defer stop()
	err := a.guard(func() error {
		m, err := a.blockModel(job, in.Index)
		if err != nil {
			return err
		}
		var plan StagePlan
		if err := a.Store.GetJSON(in.Plan, &plan); err != nil {
			return a.storeError(err)
		}
		base, err := a.applyStages(m.Blocks[in.Index], in.Prior)
		if err != nil {
			return err
		}
		st, err := getStreams(a.Store, in.Streams)
		if err != nil {
			return a.storeError(err)
		}
		// The stage's input model: the original with block Index as the
		// earlier stages left it (the other blocks are not run).
		cur := *m
		cur.Blocks = slices.Clone(m.Blocks)
		cur.Blocks[in.Index] = base
		// The streams' original side runs through the stage's input model,
		// except for eora, whose reference is the original model.
		ref, refBlock := &cur, base
		if plan.Method == recipe.MethodEoRA {
			ref, refBlock = m, m.Blocks[in.Index]
		}
		if err := canceled(ctx); err != nil {
			return err
		}
		var comp *model.Block
		var next *calib.Streams
		if done := a.stageDone(doneKey); done != nil {
			if comp, err = getLayers(a.Store, done.Layers, base); err == nil {
				out.Layers, out.Report = done.Layers, done.Report
				a.log().Info("stage block layers found, only the next streams are missing", "job", job.ID, "stage", in.Stage, "block", in.Index)
				if in.Index+1 < len(m.Blocks) {
					if next, err = advance(ctx, set, p, ref, refBlock, comp, st); err != nil {
						return err
					}
				}
			} else {
				comp = nil
			}
		}
		if comp == nil {
			p.Phase = "compute"
			set(p)
			if comp, out.Report, next, err = runStage(ctx, plan, &cur, m, in.Index, base, st, blockBeat(set, p)); err != nil {
				return stepError(ctx, fmt.Errorf("stages[%d] (%s) block %d: %w", in.Stage, plan.Method, in.Index, err))
			}
			if out.Layers, err = putLayers(a.Store, store.Key("layers", key), base, comp); err != nil {
				return a.storeError(err)
			}
			if _, err := a.Store.PutJSON(doneKey, stageDone{Layers: out.Layers, Report: out.Report}); err != nil {
				return a.storeError(err)
			}
		}
		if err := canceled(ctx); err != nil {
			return err
		}
		if next != nil {
			p.Phase = "store streams"
			set(p)
			if out.Next, err = putStreams(a.Store, store.Key("stage-streams", key), next); err != nil {
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
		return StageBlockOutput{}, err
	}
	out.Seconds = time.Since(start).Seconds()
	a.log().Info("stage block done", "job", job.ID, "stage", in.Stage, "method", job.Recipe.Stages[in.Stage].Method,
		"block", in.Index, "of", in.Blocks, "seconds", fmt.Sprintf("%.2f", out.Seconds))
	return out, nil
}

// runStage applies a stage's per-block step: cur is the stage's input model
// (block i as the earlier stages left it), orig the original model.
func runStage(ctx context.Context, plan StagePlan, cur, orig *model.Model, i int, base *model.Block, st *calib.Streams, beat compress.Beat) (*model.Block, StageReport, *calib.Streams, error) {
	var rep StageReport
	switch {
	case plan.Palu != nil:
		b, next, err := plan.Palu.Block(ctx, cur, i, st, beat)
		if err != nil {
			return nil, rep, nil, err
		}
		rep.Palu = map[string][]int{}
		for _, mod := range recipe.PaluModules {
			name := model.ModuleName(i, mod)
			rep.Palu[name] = plan.Palu.Ranks[name]
		}
		return b, rep, next, nil
	case plan.Quant != nil:
		b, layers, next, err := plan.Quant.Block(ctx, cur, i, st, beat)
		rep.Quant = layers
		return b, rep, next, err
	case plan.EoRA != nil:
		b, _, layers, next, err := plan.EoRA.Block(ctx, orig, i, base, st, beat)
		rep.EoRA = layers
		return b, rep, next, err
	case plan.MLA != nil:
		b, layer, next, err := plan.MLA.Block(ctx, cur, i, st, beat)
		rep.MLA = &layer
		return b, rep, next, err
	}
	return nil, rep, nil, fmt.Errorf("plan of method %q has no options", plan.Method)
}

func (a *Activities) stageDone(key string) *stageDone {
	ref, ok, err := a.Store.Lookup(key)
	if err != nil || !ok {
		return nil
	}
	var d stageDone
	if a.Store.GetJSON(ref, &d) != nil {
		return nil
	}
	return &d
}
