package main

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/model/safetensors"
	"github.com/rankzip/rankzip/model/synth"
)

// runSynth writes a synthetic checkpoint of a real model's shape (and
// random calibration data), for timing rankzip at real size.
func runSynth(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("synth", "synth --shape llama3-8b [--layers N] --out DIR [--calib FILE.parquet] [flags]", stderr)
	shape := fs.String("shape", "", "architecture preset: "+strings.Join(synth.ShapeNames(), ", "))
	layers := fs.Int("layers", 0, "number of blocks (0: the preset's full depth)")
	out := fs.String("out", "", "checkpoint directory to create (must not exist or be empty)")
	calibPath := fs.String("calib", "", "also write random calibration token ids here (Parquet)")
	sequences := fs.Int("sequences", 128, "calibration sequences")
	seqLen := fs.Int("seq-len", 2048, "calibration tokens per sequence")
	seed := fs.Uint64("seed", 1, "random seed: the same seed writes the same bytes")
	dtype := fs.String("dtype", "bfloat16", "weights' dtype: bfloat16, float16 or float32")
	device := addDeviceFlag(fs)
	if _, err := parse(fs, args, 0); err != nil {
		return err
	}
	sh, ok := synth.Shapes[*shape]
	if !ok || *out == "" {
		fmt.Fprintf(stderr, "rankzip synth: --shape (one of %s) and --out are required\n", strings.Join(synth.ShapeNames(), ", "))
		fs.Usage()
		return errUsage
	}
	if *layers < 0 {
		return fmt.Errorf("--layers must be >= 0, got %d", *layers)
	}
	if *layers > 0 {
		sh.Layers = *layers
	}
	dt, ok := map[string]safetensors.DType{"bfloat16": safetensors.BF16, "float16": safetensors.F16, "float32": safetensors.F32}[*dtype]
	if !ok {
		return fmt.Errorf("--dtype %q: want bfloat16, float16 or float32", *dtype)
	}
	k, err := kernels.Select(*device)
	if err != nil {
		return err
	}
	start := time.Now()
	n := 0
	err = synth.Write(*out, synth.Options{Shape: sh, Seed: *seed, DType: dt, Progress: func(name string) {
		n++
		if strings.HasSuffix(name, "mlp.down_proj.weight") || !strings.HasPrefix(name, "model.layers.") {
			fmt.Fprintf(stderr, "  %s (%d tensors, %.0f s)\n", name, n, time.Since(start).Seconds())
		}
	}}, k)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote %s: %s shape, %d blocks, %s, seed %d (%.0f s)\n", *out, *shape, sh.Layers, *dtype, *seed, time.Since(start).Seconds())
	if *calibPath != "" {
		if err := synth.Calibration(*calibPath, sh.Vocab, *sequences, *seqLen, *seed); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "wrote %s: %d sequences of %d tokens\n", *calibPath, *sequences, *seqLen)
	}
	return nil
}
