package main

import (
	"context"
	"fmt"
	"io"
	"math"
	"os"
	"os/signal"
	"strings"

	"github.com/rankzip/rankzip/activities"
	"github.com/rankzip/rankzip/compress"
	"github.com/rankzip/rankzip/model"
	"github.com/rankzip/rankzip/model/safetensors"
	"github.com/rankzip/rankzip/recipe"
)

func runCompress(args []string, stdout, stderr io.Writer) error {
	o, job, err := compressFlags(args, stderr)
	if err != nil {
		return err
	}
	return compressJob(o, job, stdout, stderr)
}

// compressFlags builds and validates the one-stage job of the command line.
func compressFlags(args []string, stderr io.Writer) (*oneStage, *recipe.Job, error) {
	fs := newFlags("compress", "compress --model DIR --calib FILE.parquet --out DIR [--keep-params F | --rank R] [flags]", stderr)
	o := addOneStageFlags(fs, "output checkpoint directory")
	method := fs.String("method", "svd", "svd | lord (recipe: method)")
	variant := fs.String("variant", "", "svd's whitening: whiten | asvd | plain (recipe: variant; default whiten)")
	targets := fs.String("targets", "", `comma-separated globs over module names in a block, e.g. "mlp.*,self_attn.o_proj" (recipe: targets; default all seven linears)`)
	keep := fs.Float64("keep-params", 0, "fraction of the targeted parameters to keep, in (0, 1] (recipe: keep_params)")
	rankFlag := fs.Int("rank", 0, "fixed rank for every targeted matrix instead of a budget (recipe: rank)")
	search := fs.String("rank-search", "", "how a budget is shared out: "+strings.Join(compress.Searches, " | ")+" (recipe: rank_search; default the recipe's: "+model.DefaultLowRankSearch+", or "+model.NoBackwardLowRankSearch+" where the architecture has no backward pass)")
	alpha := fs.Float64("alpha", 0, fmt.Sprintf("ASVD scaling exponent (recipe: alpha; default %g with --variant asvd)", recipe.DefaultAlpha))
	export := fs.String("export", "", "native (factored A/B tensors) | dense (factors multiplied back) (recipe: export.format; default native)")
	if _, err := parse(fs, args, 0); err != nil {
		return nil, nil, err
	}
	if err := o.required(fs, stderr); err != nil {
		return nil, nil, err
	}
	st := recipe.Stage{Method: recipe.Method(*method), Variant: *variant, Targets: splitTargets(*targets), KeepParams: *keep, Rank: *rankFlag, RankSearch: *search, Alpha: *alpha}
	if *method == "whiten" || *method == "asvd" || *method == "plain" {
		fmt.Fprintf(stderr, "rankzip compress: --method %s is deprecated; write --method svd --variant %s\n", *method, *method)
		st.Method, st.Variant = "svd", *method
	}
	r, err := o.recipe(st, *export, stderr)
	if err != nil {
		return nil, nil, err
	}
	job, err := o.job(r)
	if err != nil {
		return nil, nil, err
	}
	return o, job, nil
}

// compressJob runs the low-rank stage of a one-stage job and exports it.
func compressJob(o *oneStage, job *recipe.Job, stdout, stderr io.Writer) error {
	opts, err := activities.CompressOptions(job.Recipe)
	if err != nil {
		return err
	}
	opts.Spill = o.spill
	in, err := o.load(job)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	res, err := compress.Run(ctx, in.m, in.seqs, opts, func(i, n int) { fmt.Fprintf(stderr, "\rblock %d/%d", i, n) })
	fmt.Fprintln(stderr)
	if err != nil {
		return err
	}
	printLowRank(stdout, res, opts)
	final := res.Model
	format := job.Recipe.Export.Format
	if format == "dense" {
		if final, err = activities.Densify(final); err != nil {
			return err
		}
	}
	out, dt := job.Recipe.Output, recipe.SafetensorsDType(job.Recipe.Export.DType)
	if err := model.Save(final, out, dt); err != nil {
		return err
	}
	// Read the export back and check it runs like the model in memory.
	back, err := model.Load(out, in.k)
	if err != nil {
		return fmt.Errorf("read back %s: %w", out, err)
	}
	if err := checkReadBack(out, final, back, in.seqs, dt); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote %s (%s, %s), read back and checked\n", out, format, job.Recipe.Export.DType)
	return nil
}

// printLowRank prints the rank and predicted error of every layer.
func printLowRank(w io.Writer, res *compress.Result, o compress.Options) {
	fmt.Fprintf(w, "%-34s %11s %6s %14s\n", "layer", "shape", "rank", "predicted err")
	for _, l := range res.Layers {
		r := fmt.Sprint(l.Rank)
		if l.Dense {
			r = "dense"
		}
		if l.Unrouted {
			r = "dense, no calibration token routed" // an expert left dense
		}
		fmt.Fprintf(w, "%-34s %5dx%-5d %6s %14.6g\n", l.Name, l.Out, l.In, r, l.PredictedError)
	}
	asked := fmt.Sprintf("asked %.4f", o.KeepParams)
	if o.Rank > 0 {
		asked = fmt.Sprintf("rank %d asked", o.Rank)
	}
	fmt.Fprintf(w, "targeted parameters kept: %d of %d (%.4f, %s)\n", res.Params, res.Total, float64(res.Params)/float64(res.Total), asked)
}

// checkReadBack compares the logits of a checkpoint read back from dir with
// those of the model in memory on the first calibration sequences.
func checkReadBack(dir string, mem, back *model.Model, seqs [][]int32, dt safetensors.DType) error {
	probe := seqs[:min(2, len(seqs))]
	a, err := mem.Forward(probe)
	if err != nil {
		return err
	}
	b, err := back.Forward(probe)
	if err != nil {
		return err
	}
	tol := 1e-5 // float32 storage: only the order of operations differs
	if dt != safetensors.F32 {
		tol = 5e-2 // rounding of the stored weights
	}
	if e := relDiff(b, a); !(e < tol) {
		return fmt.Errorf("read-back check of %s: logits differ from the model in memory by %.3g (tolerance %g)", dir, e, tol)
	}
	return nil
}

func relDiff(a, b []float32) float64 {
	var num, den float64
	for i := range a {
		d := float64(a[i]) - float64(b[i])
		num += d * d
		den += float64(b[i]) * float64(b[i])
	}
	return math.Sqrt(num / den)
}
