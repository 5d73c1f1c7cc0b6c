package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/rankzip/rankzip/calib"
	"github.com/rankzip/rankzip/eval"
	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/model"
	"github.com/rankzip/rankzip/model/safetensors"
)

// stateDir is where rankzip keeps its state: --state, else
// $RANKZIP_STATE_DIR, else the user's state directory.
func stateDir(flagValue string) string {
	if flagValue != "" {
		return flagValue
	}
	if d := os.Getenv("RANKZIP_STATE_DIR"); d != "" {
		return d
	}
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "rankzip")
	}
	if home, err := os.UserHomeDir(); err == nil {
		return filepath.Join(home, ".local", "state", "rankzip")
	}
	return filepath.Join(os.TempDir(), "rankzip")
}

// demoModel is the generated example: the shapes of the stories260K fixture.
var demoModel = model.SyntheticConfig{Hidden: 64, Intermediate: 172, Layers: 4, Heads: 8, KVHeads: 4,
	Vocab: 512, MaxPositions: 256, Tied: true}

// demoSeqLen is the length of the sampled calibration and evaluation sequences.
const demoSeqLen = 128

func runDemo(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("demo", "demo [--state DIR]", stderr)
	state := fs.String("state", "", "state directory (default $RANKZIP_STATE_DIR or ~/.local/state/rankzip)")
	device := addDeviceFlag(fs)
	seed := fs.Uint64("seed", 1, "seed of the generated model and data")
	ui := addUIFlags(fs, nil)
	if _, err := parse(fs, args, 0); err != nil {
		return err
	}
	dir := filepath.Join(stateDir(*state), "demo")
	k, err := kernels.Select(*device)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "rankzip demo in %s (backend %s)\n\n", dir, k.Name())

	f32Dir, evalPath, err := demoData(dir, *seed, k, stdout)
	if err != nil {
		return err
	}
	if err := demoBF16(f32Dir, filepath.Join(dir, "model-bf16"), evalPath, k, stdout); err != nil {
		return err
	}

	// 4. A full recipe as a durable job on the embedded Temporal server.
	recipePath, outDir := filepath.Join(dir, "recipe.yaml"), filepath.Join(dir, "compressed")
	if err := os.WriteFile(recipePath, []byte(demoRecipe), 0o666); err != nil {
		return err
	}
	// The demo owns its output; blocks computed by an earlier demo are
	// found in the artifact store.
	if err := os.RemoveAll(outDir); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "\n4. compressing with the recipe %s as a durable job (embedded Temporal server, state in %s)\n\n%s\n", recipePath, stateDir(*state), demoRecipe)
	sf := &serviceFlags{state: *state, device: *device}
	uiOf[sf] = ui
	res, err := runJob(sf, recipePath, fullWorker, jobTimes{}, stdout)
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout)
	if err := printResult(stdout, res, false); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "\nThe same command again resumes after a crash; see the job with: rankzip status %s --state %s\n", res.ID, stateDir(*state))
	return nil
}

// demoData generates the demo's model (step 1) in dir/model and samples its
// calibration and evaluation data from it.
func demoData(dir string, seed uint64, k kernels.Backend, stdout io.Writer) (f32Dir, evalPath string, err error) {
	gen, err := model.Synthetic(demoModel, seed, k)
	if err != nil {
		return "", "", err
	}
	f32Dir = filepath.Join(dir, "model")
	if err := model.Save(gen, f32Dir, safetensors.F32); err != nil {
		return "", "", err
	}
	calibSeqs, err := model.Sample(gen, 32, demoSeqLen, 1, seed)
	if err != nil {
		return "", "", err
	}
	evalSeqs, err := model.Sample(gen, 16, demoSeqLen, 1, seed+1)
	if err != nil {
		return "", "", err
	}
	calibPath := filepath.Join(dir, "calib.parquet")
	evalPath = filepath.Join(dir, "eval.parquet")
	if err := calib.Write(calibPath, calibSeqs); err != nil {
		return "", "", err
	}
	if err := calib.Write(evalPath, evalSeqs); err != nil {
		return "", "", err
	}
	fmt.Fprintf(stdout, "1. generated a Llama model and sampled %d calibration and %d evaluation sequences of %d tokens from it\n\n", len(calibSeqs), len(evalSeqs), demoSeqLen)
	if err := inspect(f32Dir, stdout); err != nil {
		return "", "", err
	}
	return f32Dir, evalPath, nil
}

// demoBF16 exports a bfloat16 copy of the model (step 2) and evaluates both
// (step 3).
func demoBF16(f32Dir, bf16Dir, evalPath string, k kernels.Backend, stdout io.Writer) error {
	orig, err := model.Load(f32Dir, k)
	if err != nil {
		return err
	}
	if err := model.Save(orig, bf16Dir, safetensors.BF16); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "\n2. read it back and exported a bfloat16 copy to %s\n", bf16Dir)

	ds, err := calib.Open(evalPath)
	if err != nil {
		return err
	}
	defer ds.Close()
	base, err := eval.Evaluate(orig, nil, ds, 0, nil)
	if err != nil {
		return err
	}
	half, err := model.Load(bf16Dir, k)
	if err != nil {
		return err
	}
	cmp, err := eval.Evaluate(half, orig, ds, 0, nil)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "\n3. evaluated on %s (%d sequences, %d scored tokens)\n\n", evalPath, base.Sequences, base.Tokens)
	fmt.Fprintf(stdout, "%-10s %10s %12s %12s\n", "model", "ppl", "kl", "top1 agree")
	fmt.Fprintf(stdout, "%-10s %10.4f %12s %12s\n", "float32", base.PPL, "-", "-")
	fmt.Fprintf(stdout, "%-10s %10.4f %12.3g %12.4f\n", "bfloat16", cmp.PPL, *cmp.KL, *cmp.Top1Agree)
	fmt.Fprintf(stdout, "\nTry: rankzip eval --model %s --data %s --baseline %s\n", bf16Dir, evalPath, f32Dir)
	return nil
}

// demoRecipe compresses the generated model's MLPs with whitened SVD.
const demoRecipe = `model: model
calibration: {data: calib.parquet, sequences: 32}
evaluation: {data: eval.parquet, sequences: 16}
output: compressed
stages:
  - {method: svd, variant: whiten, targets: ["mlp.*"], keep_params: 0.9, rank_search: global}
export: {format: native}
`
