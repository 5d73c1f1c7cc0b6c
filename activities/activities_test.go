package activities

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/log"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"

	"github.com/rankzip/rankzip/calib"
	"github.com/rankzip/rankzip/compress"
	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/model"
	"github.com/rankzip/rankzip/model/safetensors"
	"github.com/rankzip/rankzip/recipe"
	"github.com/rankzip/rankzip/store"
)

// fixture writes a small synthetic model, a calibration set and a recipe
// (svd whiten on the MLP, 60% of the parameters) and opens a store.
func fixture(t *testing.T) (recipe.Job, *Activities) {
	return fixtureMode(t, "sequential")
}

func fixtureMode(t *testing.T, mode string) (recipe.Job, *Activities) {
	t.Helper()
	job, acts, _ := fixtureRecipe(t, `model: model
calibration: {data: data.parquet, sequences: 8, batch: 3, mode: `+mode+`}
evaluation: {data: data.parquet, sequences: 2}
output: out
stages: [{method: svd, targets: ["mlp.*"], keep_params: 0.6, rank_search: global}]
`)
	return job, acts
}

// fixtureRecipe writes a small synthetic model (model/), a calibration set
// (data.parquet) and the recipe r, loads it and opens a store; the
// activities log into the returned buffer.
func fixtureRecipe(t *testing.T, r string) (recipe.Job, *Activities, *bytes.Buffer) {
	t.Helper()
	dir := t.TempDir()
	k := kernels.Default()
	m, err := model.Synthetic(model.SyntheticConfig{Hidden: 16, Intermediate: 40, Layers: 3, Heads: 4, KVHeads: 2, Vocab: 64, MaxPositions: 64, Tied: true}, 1, k)
	if err != nil {
		t.Fatal(err)
	}
	if err := model.Save(m, filepath.Join(dir, "model"), safetensors.F32); err != nil {
		t.Fatal(err)
	}
	seqs, err := model.Sample(m, 10, 16, 1, 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := calib.Write(filepath.Join(dir, "data.parquet"), seqs); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "recipe.yaml"), []byte(r), 0o644); err != nil {
		t.Fatal(err)
	}
	job, err := recipe.Load(filepath.Join(dir, "recipe.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	s, err := store.Open(filepath.Join(dir, "store"))
	if err != nil {
		t.Fatal(err)
	}
	var log bytes.Buffer
	return *job, &Activities{Store: s, Backend: k, HeartbeatEvery: 5 * time.Millisecond, Log: slog.New(slog.NewTextHandler(&log, nil))}, &log
}

// exec runs one activity in a test environment and returns its beats.
func exec[T any](t *testing.T, acts *Activities, details any, fn any, in any) (T, []Progress, error) {
	t.Helper()
	var suite testsuite.WorkflowTestSuite
	suite.SetLogger(quiet)
	env := suite.NewTestActivityEnvironment()
	env.RegisterActivity(acts)
	if details != nil {
		env.SetHeartbeatDetails(details)
	}
	var mu sync.Mutex
	var beats []Progress
	env.SetOnActivityHeartbeatListener(func(_ *activity.Info, d converter.EncodedValues) {
		var p Progress
		if d.HasValues() && d.Get(&p) == nil {
			mu.Lock()
			beats = append(beats, p)
			mu.Unlock()
		}
	})
	var out T
	v, err := env.ExecuteActivity(fn, in)
	if err == nil {
		err = v.Get(&out)
	}
	return out, beats, err
}

// runBlocks runs Inspect and every block.
func runBlocks(t *testing.T, job recipe.Job, acts *Activities) (InspectOutput, []BlockOutput) {
	t.Helper()
	ins, _, err := exec[InspectOutput](t, acts, nil, acts.Inspect, InspectInput{Job: job})
	if err != nil {
		t.Fatal(err)
	}
	var outs []BlockOutput
	st := ins.Streams
	for i := range ins.Blocks {
		b, _, err := exec[BlockOutput](t, acts, nil, acts.Block, BlockInput{Job: job, Plan: ins.Plan, Streams: st, Index: i, Blocks: ins.Blocks})
		if err != nil {
			t.Fatal(err)
		}
		outs = append(outs, b)
		st = b.Next
	}
	return ins, outs
}

// directPath runs the job's low-rank stage with compress.Run and saves the
// result (float32) in a temporary directory.
func directPath(t *testing.T, job recipe.Job, acts *Activities) (*compress.Result, string) {
	t.Helper()
	m, err := model.Load(job.Recipe.Model, acts.Backend)
	if err != nil {
		t.Fatal(err)
	}
	seqs, _, err := acts.calibration(job)
	if err != nil {
		t.Fatal(err)
	}
	opts, err := CompressOptions(job.Recipe)
	if err != nil {
		t.Fatal(err)
	}
	res, err := compress.Run(context.Background(), m, seqs, opts, nil)
	if err != nil {
		t.Fatal(err)
	}
	direct := filepath.Join(t.TempDir(), "direct")
	if err := model.Save(res.Model, direct, safetensors.F32); err != nil {
		t.Fatal(err)
	}
	return res, direct
}

// The activities reproduce the direct path (compress.Run, model.Save) byte
// for byte, skip work already done, and evaluate the read-back checkpoint.
func TestPipelineMatchesDirectPath(t *testing.T) {
	job, acts := fixture(t)
	ins, blocks := runBlocks(t, job, acts)
	if ins.Blocks != 3 || blocks[2].Next != (store.Ref{}) {
		t.Fatalf("inspect %+v, last block %+v", ins, blocks[2])
	}
	refs := make([]store.Ref, len(blocks))
	for i, b := range blocks {
		refs[i] = b.Factors
		if b.Skipped || len(b.Layers) != 3 {
			t.Errorf("block %d: %+v", i, b)
		}
	}
	exp, _, err := exec[ExportOutput](t, acts, nil, acts.Export, ExportInput{Job: job, Plan: ins.Plan, Blocks: refs})
	if err != nil {
		t.Fatal(err)
	}

	// The direct path on the same inputs.
	res, direct := directPath(t, job, acts)
	for _, f := range []string{"model.safetensors", "config.json"} {
		want, _ := os.ReadFile(filepath.Join(direct, f))
		got, err := os.ReadFile(filepath.Join(job.Recipe.Output, f))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s differs from the direct path (%d vs %d bytes, %v)", f, len(got), len(want), err)
		}
	}
	var layers []compress.Layer
	for _, b := range blocks {
		layers = append(layers, b.Layers...)
	}
	if !slices.Equal(layers, res.Layers) {
		t.Errorf("layers %v, direct %v", layers, res.Layers)
	}
	if id, _ := recipe.ReadMarker(exp.Dir); id != job.ID || len(exp.Files) != 3 {
		t.Errorf("export %+v, marker %q", exp, id)
	}

	q, beats, err := exec[Quality](t, acts, nil, acts.Evaluate, EvaluateInput{Job: job, Export: exp})
	if err != nil {
		t.Fatal(err)
	}
	if q.Compressed == nil || q.Original == nil || q.Compressed.KL == nil || q.Compressed.Sequences != 2 || !(q.KeptParams < 1) || q.Skipped {
		t.Errorf("quality %+v", q)
	}
	if q.Backend != acts.Backend.Name() {
		t.Errorf("quality records backend %q, want %q", q.Backend, acts.Backend.Name())
	}
	if len(beats) == 0 || beats[0].Stage != "evaluate" {
		t.Errorf("evaluate heartbeats %+v", beats)
	}

	// Everything again: every step is found in the store.
	ins2, _, err := exec[InspectOutput](t, acts, nil, acts.Inspect, InspectInput{Job: job})
	if err != nil || !ins2.Skipped || ins2.Plan != ins.Plan {
		t.Errorf("second inspect %+v %v", ins2, err)
	}
	b1, _, err := exec[BlockOutput](t, acts, nil, acts.Block, BlockInput{Job: job, Plan: ins.Plan, Streams: blocks[0].Next, Index: 1, Blocks: 3})
	if err != nil || !b1.Skipped || b1.Factors != blocks[1].Factors || b1.Next != blocks[1].Next {
		t.Errorf("second block 1 %+v %v", b1, err)
	}
	exp2, _, err := exec[ExportOutput](t, acts, nil, acts.Export, ExportInput{Job: job, Plan: ins.Plan, Blocks: refs})
	if err != nil || !exp2.Skipped {
		t.Errorf("second export %+v %v", exp2, err)
	}
	q2, _, err := exec[Quality](t, acts, nil, acts.Evaluate, EvaluateInput{Job: job, Export: exp})
	if err != nil || !q2.Skipped || q2.Compressed.NLL != q.Compressed.NLL {
		t.Errorf("second evaluate %+v %v", q2, err)
	}
}

// In original mode Inspect stores the streams entering every block, and the
// blocks, compressed in any order from those, give the direct path's bytes.
func TestOriginalModeBlocksIndependent(t *testing.T) {
	job, acts := fixtureMode(t, "original")
	ins, _, err := exec[InspectOutput](t, acts, nil, acts.Inspect, InspectInput{Job: job})
	if err != nil {
		t.Fatal(err)
	}
	if len(ins.BlockStreams) != ins.Blocks || ins.BlockStreams[0] != ins.Streams {
		t.Fatalf("inspect %+v", ins)
	}
	refs := make([]store.Ref, ins.Blocks)
	for i := ins.Blocks - 1; i >= 0; i-- {
		b, _, err := exec[BlockOutput](t, acts, nil, acts.Block, BlockInput{Job: job, Plan: ins.Plan, Streams: ins.BlockStreams[i], Index: i, Blocks: ins.Blocks, NoNext: true})
		if err != nil {
			t.Fatal(err)
		}
		if !b.Next.IsZero() {
			t.Errorf("block %d stored next streams", i)
		}
		refs[i] = b.Factors
	}
	if _, _, err := exec[ExportOutput](t, acts, nil, acts.Export, ExportInput{Job: job, Plan: ins.Plan, Blocks: refs}); err != nil {
		t.Fatal(err)
	}
	_, direct := directPath(t, job, acts)
	want, _ := os.ReadFile(filepath.Join(direct, "model.safetensors"))
	got, err := os.ReadFile(filepath.Join(job.Recipe.Output, "model.safetensors"))
	if err != nil || !bytes.Equal(got, want) {
		t.Errorf("original mode: the blocks compressed apart differ from the direct path (%v)", err)
	}
}

// A retry whose heartbeat details carry the block's stored factors does not
// factor the block again; it only produces the next streams.
func TestBlockResumesFromHeartbeat(t *testing.T) {
	job, acts := fixture(t)
	ins, _, err := exec[InspectOutput](t, acts, nil, acts.Inspect, InspectInput{Job: job})
	if err != nil {
		t.Fatal(err)
	}
	in := BlockInput{Job: job, Plan: ins.Plan, Streams: ins.Streams, Index: 0, Blocks: ins.Blocks}
	first, beats, err := exec[BlockOutput](t, acts, nil, acts.Block, in)
	if err != nil {
		t.Fatal(err)
	}
	if len(beats) == 0 || beats[0].Stage != "block" || beats[0].Block != 0 {
		t.Errorf("block heartbeats %+v", beats)
	}
	// Forget the block's records, as if the worker died after storing the
	// factors and before recording the block.
	if err := os.RemoveAll(filepath.Join(acts.Store.Root(), "keys", "block")); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(acts.Store.Root(), "keys", "factored")); err != nil {
		t.Fatal(err)
	}
	// The details the activity heartbeats once its factors are stored, with
	// the report marked so that the test sees they were used.
	layers := slices.Clone(first.Layers)
	layers[0].PredictedError = 42
	details := Progress{Stage: "block", Block: 0, Phase: "factored", Factored: &Factored{Factors: first.Factors, Layers: layers}}
	again, beats, err := exec[BlockOutput](t, acts, details, acts.Block, in)
	if err != nil {
		t.Fatal(err)
	}
	if again.Skipped || again.Layers[0].PredictedError != 42 || again.Next != first.Next || again.Factors != first.Factors {
		t.Errorf("resumed block %+v, first %+v", again, first)
	}
	for _, b := range beats {
		if b.Phase == "factor" {
			t.Error("the resumed block was factored again")
		}
	}
}

// Inputs that are gone are bad input: non-retryable, with the path.
func TestMissingModelIsBadInput(t *testing.T) {
	job, acts := fixture(t)
	if err := os.Rename(job.Recipe.Model, job.Recipe.Model+".moved"); err != nil {
		t.Fatal(err)
	}
	_, _, err := exec[InspectOutput](t, acts, nil, acts.Inspect, InspectInput{Job: job})
	var ae *temporal.ApplicationError
	if !errors.As(err, &ae) || ae.Type() != BadInput || !ae.NonRetryable() {
		t.Fatalf("error %v, want non-retryable BadInput", err)
	}
	if !bytes.Contains([]byte(err.Error()), []byte(job.Recipe.Model)) {
		t.Errorf("error does not name the model: %v", err)
	}
}

func TestStoreErrorClassification(t *testing.T) {
	var ae *temporal.ApplicationError
	full := (&Activities{}).storeError(&os.PathError{Op: "write", Path: "/s/x", Err: syscall.ENOSPC})
	if !errors.As(full, &ae) || ae.Type() != StoreUnwritable || !ae.NonRetryable() {
		t.Errorf("full disk: %v", full)
	}
	io := (&Activities{}).storeError(&os.PathError{Op: "read", Path: "/s/x", Err: syscall.EIO})
	if errors.As(io, &ae) {
		t.Errorf("an I/O error is not retried: %v", io)
	}
	corrupt := (&Activities{}).storeError(store.ErrCorrupt)
	if !errors.As(corrupt, &ae) || ae.Type() != BadInput {
		t.Errorf("corrupt artifact: %v", corrupt)
	}
}

// quiet drops the logs of the test environment (activity errors are expected).
var quiet = log.NewStructuredLogger(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError + 1})))

// Two models that share their embeddings but differ in block 0 (a fine-tune
// and its base) must not share compressed blocks or exports in one store:
// with uniform ranks the plan depends only on shapes and block 0's input
// streams only on the embeddings, so only the model's digest tells them apart.
func TestBlockKeyIncludesModel(t *testing.T) {
	jobA, acts, _ := fixtureRecipe(t, `model: model
calibration: {data: data.parquet, sequences: 8, batch: 3}
output: out
stages: [{method: svd, targets: ["mlp.*"], rank: 4}]
`)
	dir := filepath.Dir(jobA.Recipe.Model)
	m, err := model.Load(jobA.Recipe.Model, acts.Backend)
	if err != nil {
		t.Fatal(err)
	}
	down := m.Blocks[0].Down.(*model.Dense)
	for i := range down.Weight {
		down.Weight[i] *= 1.5
	}
	if err := model.Save(m, filepath.Join(dir, "tuned"), safetensors.F32); err != nil {
		t.Fatal(err)
	}
	r := strings.Replace(string(must(os.ReadFile(filepath.Join(dir, "recipe.yaml")))), "model: model", "model: tuned", 1)
	r = strings.Replace(r, "output: out", "output: out-tuned", 1)
	if err := os.WriteFile(filepath.Join(dir, "tuned.yaml"), []byte(r), 0o644); err != nil {
		t.Fatal(err)
	}
	jobB, err := recipe.Load(filepath.Join(dir, "tuned.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	insA, outsA := runBlocks(t, jobA, acts)
	insB, outsB := runBlocks(t, *jobB, acts)
	if insA.Streams.SHA256 != insB.Streams.SHA256 || insA.Plan.SHA256 != insB.Plan.SHA256 {
		t.Fatalf("test premise: the two jobs should share block 0's plan and input streams")
	}
	if outsB[0].Skipped {
		t.Errorf("block 0 of the tuned model was taken from the store: it belongs to the other model")
	}
	if outsA[0].Factors.SHA256 == outsB[0].Factors.SHA256 {
		t.Errorf("block 0 of both models has the same factors %s", outsA[0].Factors.SHA256[:12])
	}

}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// A recovered panic is an internal error: the message says so and names the
// panic, the stack goes to the log and the error's details, not the message.
func TestPanicIsInternalError(t *testing.T) {
	_, acts, logBuf := fixtureRecipe(t, `model: model
calibration: {data: data.parquet, sequences: 8}
output: out
stages: [{method: svd, targets: ["mlp.*"], rank: 2}]
`)
	err := acts.guard(func() error {
		var m map[string]int
		m["x"] = 1 // a nil-map write: a bug
		return nil
	})
	var ae *temporal.ApplicationError
	if !errors.As(err, &ae) || ae.Type() != InternalError || !ae.NonRetryable() {
		t.Fatalf("error %v, want a non-retryable %s", err, InternalError)
	}
	if msg := ae.Message(); !strings.Contains(msg, "internal error") || !strings.Contains(msg, "nil map") || strings.Contains(msg, "goroutine") {
		t.Errorf("message %q: want the panic named and no stack", msg)
	}
	var stack string
	if !ae.HasDetails() || ae.Details(&stack) != nil || !strings.Contains(stack, "goroutine") {
		t.Errorf("details %q: want the stack", stack)
	}
	if !strings.Contains(logBuf.String(), "goroutine") {
		t.Errorf("the log has no stack: %s", logBuf.String())
	}
}

// An output path that cannot be listed (here a file, not a directory) is
// never taken for an empty output and replaced: the export fails, naming it,
// and the file is untouched.
func TestExportKeepsUnreadableOutput(t *testing.T) {
	job, acts := fixture(t)
	ins, outs := runBlocks(t, job, acts)
	if err := os.WriteFile(job.Recipe.Output, []byte("the user's file"), 0o644); err != nil {
		t.Fatal(err)
	}
	refs := make([]store.Ref, len(outs))
	for i, b := range outs {
		refs[i] = b.Factors
	}
	_, _, err := exec[ExportOutput](t, acts, nil, acts.Export, ExportInput{Job: job, Plan: ins.Plan, Blocks: refs})
	if err == nil || !strings.Contains(err.Error(), job.Recipe.Output) || !strings.Contains(err.Error(), "cannot be read") {
		t.Fatalf("export over a file: error %v", err)
	}
	if b, _ := os.ReadFile(job.Recipe.Output); string(b) != "the user's file" {
		t.Errorf("the file at the output was changed: %q", b)
	}
}

// The block activity heartbeats from the work: a beat names each unit of
// the block as it finishes (each calibration batch of a site, the site's
// statistics, each layer), in order (the ticker may repeat a beat).
func TestBlockBeatsFromLayers(t *testing.T) {
	job, acts := fixture(t)
	ins, _, err := exec[InspectOutput](t, acts, nil, acts.Inspect, InspectInput{Job: job})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var done []string
	acts.Heartbeat = func(_ context.Context, p Progress) {
		if p.Done == "" {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		done = append(done, p.Done)
		if p.Stage != "block" || p.Block != 1 || p.Phase != "factor" {
			t.Errorf("beat %+v: want stage block, block 1, phase factor", p)
		}
	}
	in := BlockInput{Job: job, Plan: ins.Plan, Streams: ins.Streams, Index: 1, Blocks: ins.Blocks}
	if _, _, err := exec[BlockOutput](t, acts, nil, acts.Block, in); err != nil {
		t.Fatal(err)
	}
	var want []string
	batches := func() {
		for b := range 3 { // 8 sequences in batches of 3
			want = append(want, fmt.Sprintf("model.layers.1 calibration batch %d", b))
		}
	}
	batches()
	want = append(want, "model.layers.1.mlp.gate_proj input statistics", "model.layers.1.mlp.gate_proj", "model.layers.1.mlp.up_proj")
	batches()
	want = append(want, "model.layers.1.mlp.down_proj input statistics", "model.layers.1.mlp.down_proj")
	batches() // the next streams
	mu.Lock()
	defer mu.Unlock()
	if done = slices.Compact(done); !slices.Equal(done, want) {
		t.Errorf("block beats\n%q\nwant\n%q", done, want)
	}
}

// Between the work's beats the last one is repeated, but only until the
// work has not moved for StallAfter: a hung computation stops beating.
func TestHeartbeatStopsWhenWorkStalls(t *testing.T) {
	var mu sync.Mutex
	var at []time.Time
	acts := &Activities{HeartbeatEvery: time.Millisecond, StallAfter: 40 * time.Millisecond,
		Heartbeat: func(context.Context, Progress) {
			mu.Lock()
			at = append(at, time.Now())
			mu.Unlock()
		}}
	count := func(since time.Time) int {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for _, x := range at {
			if !x.Before(since) {
				n++
			}
		}
		return n
	}
	set, stop := acts.heartbeat(context.Background(), Progress{Stage: "block"}, acts.stallAfter())
	defer stop()
	start := time.Now()
	set(Progress{Stage: "block", Done: "a layer"})
	time.Sleep(150 * time.Millisecond)
	quiet := time.Now()
	time.Sleep(100 * time.Millisecond)
	if n := count(start); n < 2 {
		t.Errorf("%d beats after the work's beat, want the ticker to repeat it", n)
	}
	if n := count(quiet); n != 0 {
		t.Errorf("%d beats more than %v after the work's last beat, want none", n, acts.StallAfter)
	}
	set(Progress{Stage: "block", Done: "the next layer"})
	time.Sleep(20 * time.Millisecond)
	if n := count(quiet); n < 2 {
		t.Errorf("%d beats once the work moved again, want the ticker to resume", n)
	}
}

// A block activity reads only its own block: the others stay unread, and an
// index outside the model is bad input naming the model's depth.
func TestBlockModelReadsOneBlock(t *testing.T) {
	job, acts := fixture(t)
	m, err := acts.blockModel(job, 1)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Blocks) < 2 || m.Embed == nil || m.LMHead == nil {
		t.Fatalf("block model with %d blocks, embeddings %v, head %v", len(m.Blocks), m.Embed != nil, m.LMHead != nil)
	}
	for l, b := range m.Blocks {
		if (b != nil) != (l == 1) {
			t.Errorf("block %d read: %v, want only block 1", l, b != nil)
		}
	}
	for _, i := range []int{-1, len(m.Blocks)} {
		_, _, err := exec[BlockOutput](t, acts, nil, acts.Block, BlockInput{Job: job, Index: i})
		var ae *temporal.ApplicationError
		want := fmt.Sprintf("block %d of a model with %d blocks", i, len(m.Blocks))
		if !errors.As(err, &ae) || ae.Type() != BadInput || !strings.Contains(err.Error(), want) {
			t.Errorf("block %d: error %v, want BadInput %q", i, err, want)
		}
	}
}
