package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/rankzip/rankzip/calib"
	"github.com/rankzip/rankzip/eval"
	"github.com/rankzip/rankzip/internal/perm"
	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/model"
	"github.com/rankzip/rankzip/model/gptq"
)

func runEval(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("eval", "eval --model DIR --data FILE.parquet [flags]", stderr)
	modelDir := fs.String("model", "", "checkpoint directory (config.json + safetensors)")
	device := addDeviceFlag(fs)
	data := fs.String("data", "", "evaluation set (Parquet, column input_ids)")
	baseline := fs.String("baseline", "", "baseline checkpoint: adds KL(baseline || model) and top-1 agreement")
	sequences := fs.Int("sequences", 0, "evaluate the first N sequences (0: all)")
	asJSON := fs.Bool("json", false, "print one JSON object")
	adapter := fs.String("adapter", "", "PEFT LoRA adapter directory (as rankzip quantize --eora-rank writes) applied to the model")
	dump := fs.String("dump-logits", "", "write the model's logits as float32 LE [sequences x positions x vocab] to FILE")
	if _, err := parse(fs, args, 0); err != nil {
		return err
	}
	if *modelDir == "" || *data == "" {
		fmt.Fprintln(stderr, "rankzip eval: --model and --data are required")
		fs.Usage()
		return errUsage
	}
	if *sequences < 0 {
		return fmt.Errorf("--sequences must be >= 0, got %d", *sequences)
	}
	k, err := kernels.Select(*device)
	if err != nil {
		return err
	}
	rep, err := evaluate(k, *modelDir, *adapter, *baseline, *data, *sequences, *dump)
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		return enc.Encode(rep)
	}
	fmt.Fprintf(stdout, "sequences  %d\ntokens     %d\nnll        %.6f\nppl        %.4f\nkv cache   %d bytes per token (16-bit)\n", rep.Sequences, rep.Tokens, rep.NLL, rep.PPL, rep.KVBytes)
	if rep.KL != nil {
		fmt.Fprintf(stdout, "kl         %.6g\ntop1_agree %.4f\n", *rep.KL, *rep.Top1Agree)
	}
	return nil
}

// evaluate loads the models and the data and runs eval.Evaluate. A logits
// dump is written to a temporary file and renamed only on success.
func evaluate(k kernels.Backend, modelDir, adapterDir, baseDir, data string, n int, dumpPath string) (eval.Report, error) {
	m, err := loadModel(modelDir, k)
	if err != nil {
		return eval.Report{}, err
	}
	if adapterDir != "" {
		ad, _, err := gptq.ReadAdapter(adapterDir)
		if err != nil {
			return eval.Report{}, err
		}
		if m, err = gptq.ApplyAdapters(m, ad); err != nil {
			return eval.Report{}, fmt.Errorf("%s: %w", adapterDir, err)
		}
	}
	var base *model.Model
	if baseDir != "" {
		if base, err = model.Load(baseDir, k); err != nil {
			return eval.Report{}, fmt.Errorf("baseline: %w", err)
		}
	}
	ds, err := calib.Open(data)
	if err != nil {
		return eval.Report{}, err
	}
	defer ds.Close()
	if dumpPath == "" {
		return eval.Evaluate(m, base, ds, n, nil)
	}
	f, err := os.CreateTemp(filepath.Dir(dumpPath), "."+filepath.Base(dumpPath)+".tmp*")
	if err != nil {
		return eval.Report{}, fmt.Errorf("dump logits: %w", err)
	}
	rep, err := eval.Evaluate(m, base, ds, n, f)
	if err == nil {
		err = f.Chmod(perm.File()) // 0666 under the umask, not CreateTemp's 0600
	}
	if cerr := f.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("dump logits: %w", cerr)
	}
	if err == nil {
		err = os.Rename(f.Name(), dumpPath)
	}
	if err != nil {
		os.Remove(f.Name())
		return eval.Report{}, err
	}
	return rep, nil
}
