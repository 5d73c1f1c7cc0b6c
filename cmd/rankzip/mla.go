package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"

	"github.com/rankzip/rankzip/activities"
	"github.com/rankzip/rankzip/compress"
	"github.com/rankzip/rankzip/model"
	"github.com/rankzip/rankzip/recipe"
)

func runMLA(args []string, stdout, stderr io.Writer) error {
	o, job, err := mlaFlags(args, stderr)
	if err != nil {
		return err
	}
	return mlaJob(o, job, stdout)
}

// mlaFlags builds and validates the one-stage job of the command line.
func mlaFlags(args []string, stderr io.Writer) (*oneStage, *recipe.Job, error) {
	fs := newFlags("mla", "mla --model DIR --calib FILE.parquet --out DIR --qk-rope-head-dim N --kv-lora-rank R [flags]", stderr)
	o := addOneStageFlags(fs, "output checkpoint directory, DeepSeek-V3 layout")
	ropeDim := fs.Int("qk-rope-head-dim", 0, "dims of the shared rope key, even, at most KV heads × head_dim (recipe: qk_rope_head_dim)")
	loraRank := fs.Int("kv-lora-rank", 0, "latent dims cached per token, at most 2 × KV heads × head_dim (recipe: kv_lora_rank)")
	rotation := fs.String("rotation", "", "which key dims keep RoPE: none (the first heads' own), keys (RoRoPE: PCA of the keys), scores (least attention-score error) (recipe: rotation; default "+string(compress.DefaultRotation)+")")
	fold := fs.Int("freqfold", 0, "adjacent RoPE frequencies mixed together (recipe: freqfold; default 1)")
	bkv := fs.Bool("bkv", true, "balance keys against values before the joint PCA; --bkv=false to not (recipe: bkv)")
	if _, err := parse(fs, args, 0); err != nil {
		return nil, nil, err
	}
	var more []string
	if *ropeDim == 0 {
		more = append(more, "--qk-rope-head-dim")
	}
	if *loraRank == 0 {
		more = append(more, "--kv-lora-rank")
	}
	if err := o.required(fs, stderr, more...); err != nil {
		return nil, nil, err
	}
	st := recipe.Stage{Method: "mla", QKRopeHeadDim: *ropeDim, KVLoraRank: *loraRank, Rotation: *rotation, FreqFold: *fold, BKV: optBool(fs, "bkv", *bkv)}
	r, err := o.recipe(st, "deepseek-mla", stderr)
	if err != nil {
		return nil, nil, err
	}
	job, err := o.job(r)
	if err != nil {
		return nil, nil, err
	}
	return o, job, nil
}

// mlaJob converts the attention of a one-stage mla job and exports it.
func mlaJob(o *oneStage, job *recipe.Job, stdout io.Writer) error {
	opts, err := activities.MLAOptions(job.Recipe, 0)
	if err != nil {
		return err
	}
	in, err := o.load(job)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	res, err := compress.RunMLA(ctx, in.m, in.seqs, opts)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%-6s %10s %12s %8s\n", "layer", "rope share", "latent share", "bkv α")
	for _, l := range res.Layers {
		fmt.Fprintf(stdout, "%-6d %9.1f%% %11.1f%% %8.3f\n", l.Layer, 100*l.RopeShare, 100*l.LatentShare, l.Alpha)
	}
	out, dt := job.Recipe.Output, recipe.SafetensorsDType(job.Recipe.Export.DType)
	if err := model.Save(res.Model, out, dt); err != nil {
		return err
	}
	back, err := model.Load(out, in.k)
	if err != nil {
		return fmt.Errorf("read back %s: %w", out, err)
	}
	if err := checkReadBack(out, res.Model, back, in.seqs, dt); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote %s (DeepSeek-V3 MLA layout, %s): KV cache %d bytes per token, was %d; read back and checked\n",
		out, job.Recipe.Export.DType, res.KVBytes, res.KVBytesOrig)
	return nil
}
