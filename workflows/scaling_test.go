package workflows_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"go.temporal.io/sdk/client"
	"go.temporal.io/server/temporaltest"

	"github.com/rankzip/rankzip/calib"
	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/model"
	"github.com/rankzip/rankzip/model/safetensors"
	"github.com/rankzip/rankzip/recipe"
	"github.com/rankzip/rankzip/workflows"
)

// TestTwoWorkers measures one job (original calibration mode: independent
// blocks, fanned out) finished by one cmd/worker process against two. It runs
// only with RANKZIP_SCALING=1; RANKZIP_SCALING_ENV adds environment
// variables to the workers (e.g. "OPENBLAS_NUM_THREADS=1 GOMAXPROCS=1" to
// stand for one-core hosts).
func TestTwoWorkers(t *testing.T) {
	if os.Getenv("RANKZIP_SCALING") == "" {
		t.Skip("set RANKZIP_SCALING=1 to measure one worker against two (minutes)")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "worker")
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/worker").CombinedOutput(); err != nil {
		t.Fatalf("build cmd/worker: %v\n%s", err, out)
	}
	k := kernels.Default()
	gen, err := model.Synthetic(model.SyntheticConfig{Hidden: 512, Intermediate: 1376, Layers: 8, Heads: 8, KVHeads: 4,
		Vocab: 1000, MaxPositions: 512, Tied: true}, 1, k)
	if err != nil {
		t.Fatal(err)
	}
	if err := model.Save(gen, filepath.Join(dir, "model"), safetensors.F32); err != nil {
		t.Fatal(err)
	}
	seqs := randomTokens(16, 256, 1000)
	if err := calib.Write(filepath.Join(dir, "calib.parquet"), seqs); err != nil {
		t.Fatal(err)
	}
	ts := temporaltest.NewServer(temporaltest.WithT(t))
	c := ts.GetDefaultClient()
	env := append(os.Environ(), splitEnv(os.Getenv("RANKZIP_SCALING_ENV"))...)

	job := func(workers int) (time.Duration, []byte) {
		out := fmt.Sprintf("out%d", workers)
		r := fmt.Sprintf(`
model: model
calibration: {data: calib.parquet, sequences: 16, mode: original}
output: %s
stages: [{method: svd, variant: whiten, keep_params: 0.7, rank_search: uniform}]
`, out)
		p := filepath.Join(dir, out+".yaml")
		if err := os.WriteFile(p, []byte(r), 0o644); err != nil {
			t.Fatal(err)
		}
		j, err := recipe.Load(p)
		if err != nil {
			t.Fatal(err)
		}
		store := filepath.Join(dir, fmt.Sprintf("store%d", workers))
		for range workers {
			w := exec.Command(bin, "--temporal", ts.GetFrontendHostPort(), "--namespace", ts.GetDefaultNamespace(), "--store", store, "--log-level", "warn")
			w.Env = env
			w.Stderr = os.Stderr
			if err := w.Start(); err != nil {
				t.Fatal(err)
			}
			defer func() { w.Process.Kill(); w.Wait() }()
		}
		t0 := time.Now()
		run, err := c.ExecuteWorkflow(context.Background(), client.StartWorkflowOptions{ID: j.ID, TaskQueue: workflows.TaskQueue},
			workflows.CompressModel, workflows.Input{Job: *j})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
		defer cancel()
		if err := run.Get(ctx, nil); err != nil {
			t.Fatal(err)
		}
		took := time.Since(t0)
		b, err := os.ReadFile(filepath.Join(dir, out, "model.safetensors"))
		if err != nil {
			t.Fatal(err)
		}
		return took, b
	}
	one, b1 := job(1)
	two, b2 := job(2)
	t.Logf("8 blocks, original mode: one worker %v, two workers %v: ratio %.2f (worker env %q)", one.Round(time.Millisecond), two.Round(time.Millisecond),
		one.Seconds()/two.Seconds(), os.Getenv("RANKZIP_SCALING_ENV"))
	if !bytes.Equal(b1, b2) {
		t.Error("one and two workers wrote different checkpoints")
	}
}

func splitEnv(s string) []string {
	var out []string
	for _, f := range bytes.Fields([]byte(s)) {
		out = append(out, string(f))
	}
	return out
}
