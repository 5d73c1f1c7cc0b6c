package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"

	"github.com/rankzip/rankzip/calib"
	"github.com/rankzip/rankzip/compress"
	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/methods/mla"
	"github.com/rankzip/rankzip/model"
	"github.com/rankzip/rankzip/model/safetensors"
)

func runMLA(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("mla", "mla --model DIR --calib FILE.parquet --out DIR --qk-rope-head-dim N --kv-lora-rank R [flags]", stderr)
	modelDir := fs.String("model", "", "checkpoint directory (a GQA or MHA Llama-family model)")
	device := addDeviceFlag(fs)
	calibPath := fs.String("calib", "", "calibration set (Parquet, column input_ids)")
	sequences := fs.Int("sequences", 0, "use the first N calibration sequences (0: all)")
	out := fs.String("out", "", "output checkpoint directory (DeepSeek-V3 layout)")
	ropeDim := fs.Int("qk-rope-head-dim", 0, "dims of the shared rope key (even, at most KV heads × head_dim)")
	loraRank := fs.Int("kv-lora-rank", 0, "latent dims cached per token (at most 2 × KV heads × head_dim)")
	rotation := fs.String("rotation", string(compress.DefaultRotation), "which key dims keep RoPE: none (the first heads' own), keys (RoRoPE: PCA of the keys), scores (least attention-score error)")
	fold := fs.Int("freqfold", 1, "adjacent RoPE frequencies mixed together")
	bkv := fs.Bool("bkv", true, "balance keys against values before the joint PCA")
	mode := fs.String("mode", "sequential", "calibration statistics: sequential | original")
	dtype := fs.String("dtype", "BF16", "dtype of the written tensors: F32 | BF16 | F16")
	if _, err := parse(fs, args, 0); err != nil {
		return err
	}
	if *modelDir == "" || *calibPath == "" || *out == "" || *ropeDim == 0 || *loraRank == 0 {
		fmt.Fprintln(stderr, "rankzip mla: --model, --calib, --out, --qk-rope-head-dim and --kv-lora-rank are required")
		fs.Usage()
		return errUsage
	}
	dt := safetensors.DType(strings.ToUpper(*dtype))
	if dt != safetensors.F32 && dt != safetensors.BF16 && dt != safetensors.F16 {
		return fmt.Errorf("--dtype %q: want F32, BF16 or F16", *dtype)
	}
	k, err := kernels.Select(*device)
	if err != nil {
		return err
	}
	m, err := model.Load(*modelDir, k)
	if err != nil {
		return err
	}
	seqs, err := calibSequences(m, *calibPath, *sequences)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	res, err := compress.RunMLA(ctx, m, seqs, compress.MLAOptions{RopeDim: *ropeDim, LoraRank: *loraRank,
		Rotation: mla.Rotation(*rotation), FreqFold: *fold, BKV: *bkv, Mode: calib.Mode(*mode)})
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%-6s %10s %12s %8s\n", "layer", "rope share", "latent share", "bkv α")
	for _, l := range res.Layers {
		fmt.Fprintf(stdout, "%-6d %9.1f%% %11.1f%% %8.3f\n", l.Layer, 100*l.RopeShare, 100*l.LatentShare, l.Alpha)
	}
	if err := model.Save(res.Model, *out, dt); err != nil {
		return err
	}
	back, err := model.Load(*out, k)
	if err != nil {
		return fmt.Errorf("read back %s: %w", *out, err)
	}
	if err := checkReadBack(*out, res.Model, back, seqs, dt); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote %s (DeepSeek-V3 MLA layout, %s): KV cache %d bytes per token, was %d; read back and checked\n",
		*out, dt, res.KVBytes, res.KVBytesOrig)
	return nil
}
