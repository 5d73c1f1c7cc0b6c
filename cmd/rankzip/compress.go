package main

import (
	"context"
	"fmt"
	"io"
	"math"
	"os"
	"os/signal"
	"strings"

	"github.com/rankzip/rankzip/calib"
	"github.com/rankzip/rankzip/compress"
	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/model"
	"github.com/rankzip/rankzip/model/safetensors"
)

func runCompress(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("compress", "compress --model DIR --calib FILE.parquet --out DIR [flags]", stderr)
	modelDir := fs.String("model", "", "checkpoint directory")
	device := addDeviceFlag(fs)
	calibPath := fs.String("calib", "", "calibration set (Parquet, column input_ids)")
	sequences := fs.Int("sequences", 0, "use the first N calibration sequences (0: all)")
	out := fs.String("out", "", "output checkpoint directory")
	method := fs.String("method", "whiten", "whiten | asvd | plain | lord")
	targets := fs.String("targets", "", `comma-separated globs over module names in a block, e.g. "mlp.*,self_attn.o_proj" (default: all seven linears)`)
	keep := fs.Float64("keep-params", 0.8, "fraction of the targeted parameters to keep, in (0, 1]")
	rankFlag := fs.Int("rank", 0, "fixed rank for every targeted matrix instead of a budget (capped at min(out, in))")
	search := fs.String("rank-search", "sensitivity", "uniform | global | sensitivity")
	alpha := fs.Float64("alpha", 0.5, "ASVD scaling exponent")
	mode := fs.String("mode", "sequential", "calibration statistics: sequential | original")
	export := fs.String("export", "native", "native (factored A/B tensors) | dense (factors multiplied back)")
	dtype := fs.String("dtype", "F32", "stored dtype: F32 | BF16 | F16")
	spill := fs.String("spill-dir", "", "keep calibration hidden states in memory-mapped files in DIR instead of memory")
	if _, err := parse(fs, args, 0); err != nil {
		return err
	}
	if *modelDir == "" || *calibPath == "" || *out == "" {
		fmt.Fprintln(stderr, "rankzip compress: --model, --calib and --out are required")
		fs.Usage()
		return errUsage
	}
	dt := safetensors.DType(strings.ToUpper(*dtype))
	if dt != safetensors.F32 && dt != safetensors.BF16 && dt != safetensors.F16 {
		return fmt.Errorf("--dtype %q: want F32, BF16 or F16", *dtype)
	}
	if *export != "native" && *export != "dense" {
		return fmt.Errorf("--export %q: want native or dense", *export)
	}
	o := compress.Options{Method: *method, KeepParams: *keep, Rank: *rankFlag, RankSearch: *search, Alpha: *alpha, Mode: calib.Mode(*mode), Spill: *spill}
	if *targets != "" {
		o.Targets = strings.Split(*targets, ",")
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
	res, err := compress.Run(ctx, m, seqs, o, func(i, n int) { fmt.Fprintf(stderr, "\rblock %d/%d", i, n) })
	fmt.Fprintln(stderr)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%-34s %11s %6s %14s\n", "layer", "shape", "rank", "predicted err")
	for _, l := range res.Layers {
		r := fmt.Sprint(l.Rank)
		if l.Dense {
			r = "dense"
		}
		fmt.Fprintf(stdout, "%-34s %5dx%-5d %6s %14.6g\n", l.Name, l.Out, l.In, r, l.PredictedError)
	}
	asked := fmt.Sprintf("asked %.4f", o.KeepParams)
	if o.Rank > 0 {
		asked = fmt.Sprintf("rank %d asked", o.Rank)
	}
	fmt.Fprintf(stdout, "targeted parameters kept: %d of %d (%.4f, %s)\n", res.Params, res.Total, float64(res.Params)/float64(res.Total), asked)

	final := res.Model
	if *export == "dense" {
		final = model.Densify(final)
	}
	if err := model.Save(final, *out, dt); err != nil {
		return err
	}
	// Read the export back and check it runs like the model in memory.
	back, err := model.Load(*out, k)
	if err != nil {
		return fmt.Errorf("read back %s: %w", *out, err)
	}
	if err := checkReadBack(*out, final, back, seqs, dt); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote %s (%s, %s), read back and checked\n", *out, *export, dt)
	return nil
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
