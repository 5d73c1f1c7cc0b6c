package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"

	"github.com/rankzip/rankzip/activities"
	"github.com/rankzip/rankzip/compress"
	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/model"
	"github.com/rankzip/rankzip/model/gptq"
	"github.com/rankzip/rankzip/recipe"
)

// loadModel loads a checkpoint: a GPTQ one (config.json with a gptq
// quantization_config) through gptq.Load, any other through model.Load.
func loadModel(dir string, k kernels.Backend) (*model.Model, error) {
	if gptq.IsCheckpoint(dir) {
		return gptq.Load(dir, k)
	}
	return model.Load(dir, k)
}

func runQuantize(args []string, stdout, stderr io.Writer) error {
	o, job, err := quantizeFlags(args, stderr)
	if err != nil {
		return err
	}
	return quantizeJob(o, job, stdout, stderr)
}

// quantizeFlags builds and validates the one-stage job of the command line.
func quantizeFlags(args []string, stderr io.Writer) (*oneStage, *recipe.Job, error) {
	fs := newFlags("quantize", "quantize --model DIR --calib FILE.parquet --out DIR --bits B [flags]", stderr)
	o := addOneStageFlags(fs, "output GPTQ v1 checkpoint directory")
	method := fs.String("method", "gptq", "rtn | gptq (recipe: method)")
	bits := fs.Int("bits", 0, "bits per weight: 2, 3, 4 or 8 (recipe: bits)")
	group := fs.Int("group-size", 0, fmt.Sprintf("columns per group: 32, 64, 128, or 0 for one group per output channel (recipe: group_size; default %d)", recipe.DefaultQuantGroupSize))
	sym := fs.Bool("sym", true, "symmetric quantization; --sym=false for asymmetric (recipe: sym)")
	actOrder := fs.Bool("act-order", false, "GPTQ act-order (desc_act) with static groups (recipe: act_order)")
	damp := fs.Float64("damp", 0, fmt.Sprintf("GPTQ relative damping (recipe: damp; default %g)", recipe.DefaultDamp))
	targets := fs.String("targets", "", `comma-separated globs over module names in a block, e.g. "self_attn.*" (recipe: targets; default all seven linears, the attention of a mixture of experts: add mlp.experts.* for its experts)`)
	eoraRank := fs.Int("eora-rank", 0, "add an eora stage of this rank (recipe: a second stage {method: eora, rank: R}) and write its PEFT adapter in OUT/eora")
	if _, err := parse(fs, args, 0); err != nil {
		return nil, nil, err
	}
	if err := o.required(fs, stderr); err != nil {
		return nil, nil, err
	}
	group0 := group
	if !isSet(fs, "group-size") {
		group0 = nil // the recipe's default
	}
	stages := []recipe.Stage{{Method: recipe.Method(*method), Bits: *bits, GroupSize: group0, Sym: optBool(fs, "sym", *sym),
		ActOrder: optBool(fs, "act-order", *actOrder), Damp: *damp, Targets: splitTargets(*targets)}}
	if isSet(fs, "eora-rank") {
		stages = append(stages, recipe.Stage{Method: "eora", Rank: *eoraRank})
	}
	r, err := o.recipe(stages[0], "gptq", stderr)
	if err != nil {
		return nil, nil, err
	}
	r.Stages = stages
	job, err := o.job(r)
	if err != nil {
		return nil, nil, err
	}
	return o, job, nil
}

// quantizeJob runs the rtn or gptq stage of a job (and its eora stage, if
// any) and exports a GPTQ v1 checkpoint.
func quantizeJob(o *oneStage, job *recipe.Job, stdout, stderr io.Writer) error {
	r := job.Recipe
	opts, err := activities.QuantOptions(r, 0)
	if err != nil {
		return err
	}
	opts.Spill = o.spill
	qc, err := gptq.NewQuantizeConfig(opts.Bits, opts.GroupSize, false, opts.Sym)
	if err != nil {
		return err
	}
	in, err := o.load(job)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	res, err := compress.RunQuant(ctx, in.m, in.seqs, opts, func(i, n int) { fmt.Fprintf(stderr, "\rblock %d/%d", i, n) })
	fmt.Fprintln(stderr)
	if err != nil {
		return err
	}
	out, dt := r.Output, recipe.SafetensorsDType(r.Export.DType)
	if err := gptq.Export(res.Model, out, dt, qc); err != nil {
		return err
	}
	back, err := gptq.Load(out, in.k)
	if err != nil {
		return fmt.Errorf("read back %s: %w", out, err)
	}
	if err := printQuantLayers(stdout, in.k, res, back); err != nil {
		return err
	}
	if err := checkReadBack(out, res.Model, back, in.seqs, dt); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote %s (GPTQ v1, %d bits, group size %d, %s), read back and checked\n", out, opts.Bits, qc.GroupSize, r.Export.DType)
	if len(r.Stages) < 2 {
		return nil
	}
	return eoraStage(ctx, o, job, res.Model, in, stdout)
}

// printQuantLayers prints the errors of every quantized layer, with the
// largest difference of its weight as read back from the checkpoint.
func printQuantLayers(w io.Writer, k kernels.Backend, res *compress.QuantResult, back *model.Model) error {
	fmt.Fprintf(w, "%-34s %11s %6s %14s %10s %12s\n", "layer", "shape", "groups", "calib err", "rel err", "readback err")
	for _, l := range res.Layers {
		layer, mod, _ := model.ParseModuleName(l.Name) // compress's own names
		a, err := compress.EffectiveWeight(k, *res.Model.Blocks[layer].Linear(mod))
		if err != nil {
			return fmt.Errorf("%s: %w", l.Name, err)
		}
		b, err := compress.EffectiveWeight(k, *back.Blocks[layer].Linear(mod))
		if err != nil {
			return fmt.Errorf("read back %s: %w", l.Name, err)
		}
		maxd := 0.0
		ra, rb := a.RawMatrix().Data, b.RawMatrix().Data
		for i := range ra {
			maxd = max(maxd, abs(ra[i]-rb[i]))
		}
		fmt.Fprintf(w, "%-34s %5dx%-5d %6d %14.6g %10.5f %12.3g\n", l.Name, l.Out, l.In, l.Groups, l.CalibError, l.RelError, maxd)
	}
	return nil
}

// eoraStage fits the job's EoRA corrections (stage 1) to the quantized model
// and writes them as a PEFT adapter beside the checkpoint.
func eoraStage(ctx context.Context, o *oneStage, job *recipe.Job, quantized *model.Model, in loaded, w io.Writer) error {
	eo, err := activities.EoRAOptions(job.Recipe, 1)
	if err != nil {
		return err
	}
	eo.Spill = o.spill
	e, err := compress.RunEoRA(ctx, quantized, in.m, in.seqs, eo)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "%-34s %5s %14s %14s\n", "eora layer", "rank", "err before", "err after")
	for _, l := range e.Layers {
		fmt.Fprintf(w, "%-34s %5d %14.6g %14.6g\n", l.Name, l.Rank, l.ErrorBefore, l.ErrorAfter)
	}
	out := job.Recipe.Output
	adir := filepath.Join(out, activities.AdapterDir)
	if err := gptq.WriteAdapter(adir, gptq.BesideBase, e.Adapters, recipe.SafetensorsDType(job.Recipe.Export.DType)); err != nil {
		return err
	}
	fmt.Fprintf(w, "wrote %s (PEFT LoRA adapter; rankzip eval --model %s --adapter %s)\n", adir, out, adir)
	return nil
}

func abs(x float64) float64 {
	if x < 0 {
		return -x
	}
	return x
}
