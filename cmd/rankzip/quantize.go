package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path"
	"path/filepath"
	"strings"

	"github.com/rankzip/rankzip/calib"
	"github.com/rankzip/rankzip/compress"
	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/model"
	"github.com/rankzip/rankzip/model/gptq"
	"github.com/rankzip/rankzip/model/safetensors"
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
	fs := newFlags("quantize", "quantize --model DIR --calib FILE.parquet --out DIR [flags]", stderr)
	modelDir := fs.String("model", "", "checkpoint directory")
	device := addDeviceFlag(fs)
	calibPath := fs.String("calib", "", "calibration set (Parquet, column input_ids)")
	sequences := fs.Int("sequences", 0, "use the first N calibration sequences (0: all)")
	out := fs.String("out", "", "output GPTQ v1 checkpoint directory")
	method := fs.String("method", "gptq", "rtn | gptq")
	bits := fs.Int("bits", 4, "bits per weight: 2, 3, 4 or 8")
	group := fs.Int("group-size", 128, "columns per group: 32, 64, 128, or -1 for one group per output channel")
	sym := fs.Bool("sym", false, "symmetric quantization")
	actOrder := fs.Bool("act-order", false, "GPTQ act-order (desc_act) with static groups")
	damp := fs.Float64("damp", 0, "GPTQ relative damping (0: 0.01)")
	targets := fs.String("targets", "", `comma-separated globs over module names in a block, e.g. "self_attn.*" (default: all seven linears)`)
	mode := fs.String("mode", "sequential", "calibration statistics: sequential | original")
	dtype := fs.String("dtype", "F16", "dtype of the unquantized tensors: F16 | BF16 | F32")
	spill := fs.String("spill-dir", "", "keep calibration hidden states in memory-mapped files in DIR instead of memory")
	eoraRank := fs.Int("eora-rank", 0, "also fit EoRA corrections of this rank and write them as a PEFT adapter in OUT/eora")
	if _, err := parse(fs, args, 0); err != nil {
		return err
	}
	if *modelDir == "" || *calibPath == "" || *out == "" {
		fmt.Fprintln(stderr, "rankzip quantize: --model, --calib and --out are required")
		fs.Usage()
		return errUsage
	}
	dt := safetensors.DType(strings.ToUpper(*dtype))
	if dt != safetensors.F32 && dt != safetensors.BF16 && dt != safetensors.F16 {
		return fmt.Errorf("--dtype %q: want F16, BF16 or F32", *dtype)
	}
	if *eoraRank < 0 {
		return fmt.Errorf("--eora-rank must be >= 0, got %d", *eoraRank)
	}
	o := compress.QuantOptions{Method: *method, Bits: *bits, GroupSize: *group, Sym: *sym, ActOrder: *actOrder, Damp: *damp, Mode: calib.Mode(*mode), Spill: *spill}
	if *targets != "" {
		o.Targets = strings.Split(*targets, ",")
	}
	// Check what the export will need before the long run.
	qc, err := gptq.NewQuantizeConfig(*bits, *group, false, *sym)
	if err != nil {
		return err
	}

	k, err := kernels.Select(*device)
	if err != nil {
		return err
	}
	m, err := model.Load(*modelDir, k)
	if err != nil {
		return err
	}
	// The GPTQ v1 packing needs out and in multiples of 32: say so before
	// the long run rather than at export.
	var unfit []string
	for _, mod := range m.Blocks[0].Modules() {
		hit := len(o.Targets) == 0
		for _, g := range o.Targets {
			if ok, _ := path.Match(g, mod); ok {
				hit = true
			}
		}
		if l := *m.Blocks[0].Linear(mod); hit && (l.Out()%32 != 0 || l.In()%32 != 0) {
			unfit = append(unfit, fmt.Sprintf("%s (%d×%d)", mod, l.Out(), l.In()))
		}
	}
	if len(unfit) > 0 {
		return fmt.Errorf("the GPTQ v1 format packs only layers whose out and in are multiples of 32; leave these out of --targets: %s", strings.Join(unfit, ", "))
	}
	seqs, err := calibSequences(m, *calibPath, *sequences)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	res, err := compress.RunQuant(ctx, m, seqs, o, func(i, n int) { fmt.Fprintf(stderr, "\rblock %d/%d", i, n) })
	fmt.Fprintln(stderr)
	if err != nil {
		return err
	}
	if err := gptq.Export(res.Model, *out, dt, qc); err != nil {
		return err
	}
	back, err := gptq.Load(*out, k)
	if err != nil {
		return fmt.Errorf("read back %s: %w", *out, err)
	}
	// Per-layer errors of the checkpoint as read back.
	fmt.Fprintf(stdout, "%-34s %11s %6s %14s %10s %12s\n", "layer", "shape", "groups", "calib err", "rel err", "readback err")
	for _, l := range res.Layers {
		var layer, i int
		fmt.Sscanf(l.Name, "model.layers.%d.", &layer)
		mod := strings.TrimPrefix(l.Name, fmt.Sprintf("model.layers.%d.", layer))
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
		for i = range ra {
			maxd = max(maxd, abs(ra[i]-rb[i]))
		}
		fmt.Fprintf(stdout, "%-34s %5dx%-5d %6d %14.6g %10.5f %12.3g\n", l.Name, l.Out, l.In, l.Groups, l.CalibError, l.RelError, maxd)
	}
	if err := checkReadBack(*out, res.Model, back, seqs, dt); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote %s (GPTQ v1, %d bits, group size %d, %s), read back and checked\n", *out, *bits, qc.GroupSize, dt)
	if *eoraRank == 0 {
		return nil
	}
	e, err := compress.RunEoRA(ctx, res.Model, m, seqs, compress.EoRAOptions{Rank: *eoraRank, Mode: calib.Mode(*mode), Spill: *spill})
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%-34s %5s %14s %14s\n", "eora layer", "rank", "err before", "err after")
	for _, l := range e.Layers {
		fmt.Fprintf(stdout, "%-34s %5d %14.6g %14.6g\n", l.Name, l.Rank, l.ErrorBefore, l.ErrorAfter)
	}
	adir := filepath.Join(*out, "eora")
	if err := gptq.WriteAdapter(adir, gptq.BesideBase, e.Adapters, dt); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote %s (PEFT LoRA adapter; rankzip eval --model %s --adapter %s)\n", adir, *out, adir)
	return nil
}

func abs(x float64) float64 {
	if x < 0 {
		return -x
	}
	return x
}
