package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rankzip/rankzip/activities"
	"github.com/rankzip/rankzip/calib"
	"github.com/rankzip/rankzip/compress"
	"github.com/rankzip/rankzip/internal/perm"
	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/model"
	"github.com/rankzip/rankzip/model/safetensors"
	"github.com/rankzip/rankzip/recipe"
)

// The crash tests run the CLI as a child process: this test binary, which
// runs main when RANKZIP_TEST_MAIN is set.
//
// Tests never use a port that a user's state directory may record: the
// embedded server's ports come from the kernel's ephemeral range here
// (rankzip itself picks them below it).
func TestMain(m *testing.M) {
	pickPorts = kernelPorts
	if os.Getenv("RANKZIP_TEST_MAIN") == "1" {
		skipPortCheck = os.Getenv("RANKZIP_TEST_SKIP_PORT_CHECK") == "1"
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// cli returns a command running the CLI with args.
func cli(args ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), "RANKZIP_TEST_MAIN=1")
	return cmd
}

// crashJob writes a recipe whose blocks take a second or so each
// (stories260K, every linear, 32 calibration sequences).
func crashJob(t *testing.T, dir string) string {
	t.Helper()
	fx, err := filepath.Abs(fixtures)
	if err != nil {
		t.Fatal(err)
	}
	needFixture(t, "stories260K/model.safetensors")
	needFixture(t, "samples/calib.parquet")
	r := fmt.Sprintf(`
model: %s
calibration: {data: %s, sequences: 32}
output: out
stages:
  - {method: svd, variant: whiten, keep_params: 0.8, rank_search: uniform}
`, filepath.Join(fx, "stories260K"), filepath.Join(fx, "samples/calib.parquet"))
	p := filepath.Join(dir, "recipe.yaml")
	if err := os.WriteFile(p, []byte(r), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// directBytes is the checkpoint of an uninterrupted in-process run of the
// recipe's stage (compress.Run, model.Save).
func directBytes(t *testing.T, recipePath string) []byte {
	t.Helper()
	job, err := recipe.Load(recipePath)
	if err != nil {
		t.Fatal(err)
	}
	m, err := model.Load(job.Recipe.Model, kernels.Default())
	if err != nil {
		t.Fatal(err)
	}
	ds, err := calib.Open(job.Recipe.Calibration.Data)
	if err != nil {
		t.Fatal(err)
	}
	defer ds.Close()
	seqs, err := ds.Read(job.Recipe.Calibration.Sequences)
	if err != nil {
		t.Fatal(err)
	}
	opts, err := activities.CompressOptions(job.Recipe)
	if err != nil {
		t.Fatal(err)
	}
	res, err := compress.Run(context.Background(), m, recipe.Truncate(seqs, job.Recipe.Calibration.SeqLen), opts, nil)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "direct")
	if err := model.Save(res.Model, dir, safetensors.F32); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "model.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// doneBlocks counts the blocks recorded in a store. A key being written is
// a temporary ".<key>.json.tmp…" file until its rename: it does not count
// (counting it once made a kill look later than it was, so the rerun's
// legitimate recompute of that block read as a failure).
func doneBlocks(storeDir string) int {
	n := 0
	filepath.WalkDir(filepath.Join(storeDir, "keys", "block"), func(_ string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && !strings.HasPrefix(d.Name(), ".") && strings.HasSuffix(d.Name(), ".json") {
			n++
		}
		return nil
	})
	return n
}

// blockEvents reads the "block done" (computed) and "block already done"
// (found in the store) log lines of a JSON log, by pid.
func blockEvents(t *testing.T, logs ...string) (computed, found map[int][]int) {
	t.Helper()
	computed, found = map[int][]int{}, map[int][]int{}
	for _, p := range logs {
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			var e struct {
				Msg   string `json:"msg"`
				Pid   int    `json:"pid"`
				Block *int   `json:"block"`
			}
			if json.Unmarshal(sc.Bytes(), &e) != nil || e.Block == nil {
				continue
			}
			switch e.Msg {
			case "block done":
				computed[e.Pid] = append(computed[e.Pid], *e.Block)
			case "block already done":
				found[e.Pid] = append(found[e.Pid], *e.Block)
			}
		}
		f.Close()
	}
	return computed, found
}

// syncBuffer collects a child's output while the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// waitBlocks waits until the store records at least n blocks.
func waitBlocks(t *testing.T, storeDir string, n int, cmd *exec.Cmd, out *syncBuffer) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Minute)
	for doneBlocks(storeDir) < n {
		if time.Now().After(deadline) {
			t.Fatalf("no %d blocks done after 3 min; output:\n%s", n, out)
		}
		if cmd.ProcessState != nil {
			t.Fatalf("the process ended before the kill; output:\n%s", out)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// kill -9 of `rankzip run` (embedded server, worker and all) after two
// blocks; the same command again completes the job with the bytes of an
// uninterrupted run, without computing the finished blocks again.
func TestCrashResume(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes and compresses a model")
	}
	dir := t.TempDir()
	recipePath := crashJob(t, dir)
	state := filepath.Join(dir, "state")
	// No --port: the rerun reuses the ports the first run recorded.
	args := []string{"run", recipePath, "--state", state, "--heartbeat-timeout", "2s"}

	first := cli(args...)
	var out1 syncBuffer
	first.Stdout, first.Stderr = &out1, &out1
	if err := first.Start(); err != nil {
		t.Fatal(err)
	}
	waitBlocks(t, filepath.Join(state, "store"), 2, first, &out1)
	if err := first.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	first.Wait()
	killedAt := doneBlocks(filepath.Join(state, "store"))
	t.Logf("killed pid %d with %d blocks done", first.Process.Pid, killedAt)

	t0 := time.Now()
	second := cli(args...)
	out2, err := second.CombinedOutput()
	if err != nil {
		t.Fatalf("rerun: %v\n%s", err, out2)
	}
	t.Logf("rerun finished in %v:\n%s", time.Since(t0).Round(time.Millisecond), out2)
	if !strings.Contains(string(out2), "resumed") {
		t.Errorf("the rerun did not attach to the running job:\n%s", out2)
	}
	got, err := os.ReadFile(filepath.Join(dir, "out", "model.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, directBytes(t, recipePath)) {
		t.Error("the resumed job's checkpoint differs from an uninterrupted run's")
	}
	checkModes(t, filepath.Join(dir, "out"), perm.File(), perm.Dir())
	computed, found := blockEvents(t, filepath.Join(state, "rankzip.log"))
	pid2 := second.Process.Pid
	for _, b := range computed[pid2] {
		if b < killedAt {
			t.Errorf("block %d, done before the kill, was computed again", b)
		}
	}
	// Blocks whose activity completed before the kill are in the workflow's
	// history and are not run again at all; the one in flight may be
	// redone (or found in the store if it finished unrecorded).
	all := slices.Concat(computed[first.Process.Pid], computed[pid2], found[pid2])
	for b := range 5 {
		if !slices.Contains(all, b) {
			t.Errorf("block %d was never computed (first %v, rerun %v, found %v)", b, computed[first.Process.Pid], computed[pid2], found[pid2])
		}
	}
	t.Logf("first process computed %v; rerun found %v in the store and computed %v", computed[first.Process.Pid], found[pid2], computed[pid2])
}

// kill -9 of a separate cmd/worker while the embedded server (a `rankzip
// run --no-worker`) stays up; a new worker finishes the job.
func TestCrashWorker(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes and compresses a model")
	}
	dir := t.TempDir()
	recipePath := crashJob(t, dir)
	state := filepath.Join(dir, "state")
	storeDir := filepath.Join(dir, "workerstore")
	workerBin := filepath.Join(dir, "worker")
	if out, err := exec.Command("go", "build", "-o", workerBin, "../worker").CombinedOutput(); err != nil {
		t.Fatalf("build cmd/worker: %v\n%s", err, out)
	}
	run := cli("run", recipePath, "--state", state, "--heartbeat-timeout", "2s", "--no-worker")
	var runOut syncBuffer
	run.Stdout, run.Stderr = &runOut, &runOut
	if err := run.Start(); err != nil {
		t.Fatal(err)
	}
	defer run.Process.Kill()
	var addr string
	startWorker := func(name string) (*exec.Cmd, string) {
		logPath := filepath.Join(dir, name+".log")
		f, err := os.Create(logPath)
		if err != nil {
			t.Fatal(err)
		}
		w := exec.Command(workerBin, "--temporal", addr, "--store", storeDir)
		w.Stdout, w.Stderr = f, f
		if err := w.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { w.Process.Kill(); w.Wait(); f.Close() })
		return w, logPath
	}
	// Start the worker once the server is up, at the address it prints.
	deadline := time.Now().Add(time.Minute)
	for !strings.Contains(runOut.String(), "started on") {
		if time.Now().After(deadline) {
			t.Fatalf("rankzip run did not start the job:\n%s", runOut.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	m := regexp.MustCompile(`started on the embedded server \((127\.0\.0\.1:\d+)\)`).FindStringSubmatch(runOut.String())
	if m == nil {
		t.Fatalf("rankzip run does not say where its server listens:\n%s", runOut.String())
	}
	addr = m[1]
	w1, log1 := startWorker("worker1")
	waitBlocks(t, storeDir, 2, w1, &runOut)
	if b, _ := os.ReadFile(log1); !bytes.Contains(b, []byte("block done")) {
		t.Fatalf("worker 1 did no block:\n%s", b)
	}
	w1.Process.Signal(syscall.SIGKILL)
	w1.Wait()
	killedAt := doneBlocks(storeDir)
	w2, log2 := startWorker("worker2")
	done := make(chan error, 1)
	go func() { done <- run.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("rankzip run: %v\n%s", err, runOut.String())
		}
	case <-time.After(4 * time.Minute):
		t.Fatalf("the job did not finish after the worker was replaced:\n%s", runOut.String())
	}
	got, err := os.ReadFile(filepath.Join(dir, "out", "model.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, directBytes(t, recipePath)) {
		t.Error("the job's checkpoint differs from an uninterrupted run's")
	}
	computed, found := blockEvents(t, log1, log2)
	pid2 := w2.Process.Pid
	if slices.ContainsFunc(computed[pid2], func(b int) bool { return b < killedAt }) {
		t.Errorf("the second worker computed %v again (killed with %d blocks done)", computed[pid2], killedAt)
	}
	t.Logf("worker 1 computed %v before kill -9 at %d blocks; worker 2 found %v and computed %v", computed[w1.Process.Pid], killedAt, found[pid2], computed[pid2])
}
