package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
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
	"github.com/rankzip/rankzip/store"
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

// crashJob writes a recipe whose blocks take about a second each
// (stories260K, every linear, 16 calibration sequences).
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
calibration: {data: %s, sequences: 16}
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

// The same recipe run twice at once in one state directory is one workflow:
// the second command attaches to the first one's server and job, nothing is
// computed twice, and both print the same result.
func TestSameRecipeTwice(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes and compresses a model")
	}
	dir := t.TempDir()
	recipePath := crashJob(t, dir)
	state := filepath.Join(dir, "state")
	var cmds []*exec.Cmd
	var outs, errs []*syncBuffer
	for range 2 {
		cmd := cli("run", recipePath, "--state", state, "--json")
		out, errOut := &syncBuffer{}, &syncBuffer{}
		cmd.Stdout, cmd.Stderr = out, errOut
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		cmds, outs, errs = append(cmds, cmd), append(outs, out), append(errs, errOut)
	}
	for i, cmd := range cmds {
		if err := cmd.Wait(); err != nil {
			t.Fatalf("run %d: %v\n%s", i, err, errs[i])
		}
	}
	if outs[0].String() != outs[1].String() || !strings.Contains(outs[0].String(), `"output"`) {
		t.Errorf("the two runs printed different results:\n%s\n%s", outs[0], outs[1])
	}
	both := errs[0].String() + errs[1].String()
	// Whichever submits first starts the workflow; the other finds it
	// running. One of the two runs the server, the other attaches to it.
	if strings.Count(both, " started on ") != 1 || strings.Count(both, " resumed on ") != 1 ||
		strings.Count(both, " on the embedded server of another rankzip process (pid ") != 1 {
		t.Errorf("want one workflow, started by one run and found by the other, one of them attached to the other's server:\n%s\n%s", errs[0], errs[1])
	}
	computed, _ := blockEvents(t, filepath.Join(state, "rankzip.log"))
	var all []int
	for _, blocks := range computed {
		all = append(all, blocks...)
	}
	slices.Sort(all)
	if len(computed) != 1 || !slices.Equal(all, []int{0, 1, 2, 3, 4}) {
		t.Errorf("blocks computed by process: %v, want each block once, by one process", computed)
	}
	got, err := os.ReadFile(filepath.Join(dir, "out", "model.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, directBytes(t, recipePath)) {
		t.Error("the job's checkpoint differs from an uninterrupted run's")
	}
}

// A second `rankzip run` attached to the first one's server takes the
// server over when the first is killed, and finishes the job.
func TestTakeover(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes and compresses a model")
	}
	dir := t.TempDir()
	recipePath := crashJob(t, dir)
	state := filepath.Join(dir, "state")
	args := []string{"run", recipePath, "--state", state, "--heartbeat-timeout", "2s"}
	first := cli(args...)
	var out1 syncBuffer
	first.Stdout, first.Stderr = &out1, &out1
	if err := first.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { first.Process.Kill(); first.Wait() })
	waitBlocks(t, filepath.Join(state, "store"), 1, first, &out1)
	second := cli(args...)
	var out2 syncBuffer
	second.Stdout, second.Stderr = &out2, &out2
	if err := second.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { second.Process.Kill(); second.Wait() })
	deadline := time.Now().Add(time.Minute)
	for !strings.Contains(out2.String(), "resumed on the embedded server of another rankzip process") {
		if time.Now().After(deadline) {
			t.Fatalf("the second run did not attach:\n%s", out2.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	first.Process.Signal(syscall.SIGKILL)
	first.Wait()
	done := make(chan error, 1)
	go func() { done <- second.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("second run: %v\n%s", err, out2.String())
		}
	case <-time.After(4 * time.Minute):
		t.Fatalf("the second run did not finish:\n%s", out2.String())
	}
	if !strings.Contains(out2.String(), "taking it over") {
		t.Errorf("the second run does not say it took the server over:\n%s", out2.String())
	}
	got, err := os.ReadFile(filepath.Join(dir, "out", "model.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, directBytes(t, recipePath)) {
		t.Error("the job's checkpoint differs from an uninterrupted run's")
	}
	t.Logf("second run:\n%s", out2.String())
}

// flipBits flips one bit in every artifact that the block records of a store
// name (factors and output streams) and returns how many it flipped.
func flipBits(t *testing.T, storeDir string) int {
	t.Helper()
	st, err := store.Open(storeDir)
	if err != nil {
		t.Fatal(err)
	}
	recs, _ := filepath.Glob(filepath.Join(storeDir, "keys", "block", "*.json"))
	n := 0
	for _, rp := range recs {
		var rec store.Ref
		if b, err := os.ReadFile(rp); err != nil || json.Unmarshal(b, &rec) != nil {
			continue
		}
		data, err := st.Get(rec)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range regexp.MustCompile(`"sha256":"([0-9a-f]{64})"`).FindAllSubmatch(data, -1) {
			p, _ := st.Path(store.Ref{SHA256: string(m[1])})
			b, err := os.ReadFile(p)
			if err != nil {
				continue // flipped already (shared) or never written
			}
			b[len(b)/2] ^= 0x04
			os.Chmod(p, 0o644)
			if err := os.WriteFile(p, b, 0o444); err != nil {
				t.Fatal(err)
			}
			n++
		}
	}
	return n
}

// A bit flipped in stored artifacts while no process runs: the rerun detects
// each by its digest, makes it again, and the job finishes with the bytes of
// an uninterrupted run.
func TestBitFlip(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes and compresses a model")
	}
	dir := t.TempDir()
	recipePath := crashJob(t, dir)
	state := filepath.Join(dir, "state")
	storeDir := filepath.Join(state, "store")
	args := []string{"run", recipePath, "--state", state, "--heartbeat-timeout", "2s"}
	first := cli(args...)
	var out1 syncBuffer
	first.Stdout, first.Stderr = &out1, &out1
	if err := first.Start(); err != nil {
		t.Fatal(err)
	}
	waitBlocks(t, storeDir, 2, first, &out1)
	first.Process.Signal(syscall.SIGKILL)
	first.Wait()
	flipped := flipBits(t, storeDir)
	if flipped == 0 {
		t.Fatal("no artifact to flip a bit in")
	}
	t0 := time.Now()
	out2, err := cli(args...).CombinedOutput()
	if err != nil {
		t.Fatalf("rerun: %v\n%s", err, out2)
	}
	t.Logf("flipped a bit in %d artifacts of %d finished blocks; the rerun finished in %v:\n%s", flipped, doneBlocks(storeDir), time.Since(t0).Round(time.Millisecond), out2)
	got, err := os.ReadFile(filepath.Join(dir, "out", "model.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, directBytes(t, recipePath)) {
		t.Error("the checkpoint after the bit flips differs from an uninterrupted run's")
	}
	// Everything the store holds now is intact.
	objs, _ := filepath.Glob(filepath.Join(storeDir, "objects", "*", "*"))
	st, _ := store.Open(storeDir)
	for _, p := range objs {
		fi, _ := os.Stat(p)
		if _, err := st.Verify(store.Ref{SHA256: filepath.Base(p), Bytes: fi.Size()}); err != nil {
			t.Errorf("after the rerun: %v", err)
		}
	}
}

// logCount counts the lines of a JSON log with the message msg.
func logCount(path, msg string) int {
	b, _ := os.ReadFile(path)
	return bytes.Count(b, []byte(`"msg":"`+msg+`"`))
}

// kill -9 of `rankzip run` at 10 random points spread over a whole job
// (inspection, blocks, export, evaluation), each time followed by the same
// command: the job finishes with the checkpoint of an uninterrupted run and
// its evaluation, and a crash costs at most the one block it interrupted.
func TestCrashTenTimes(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes and compresses a model")
	}
	eval, err := filepath.Abs(needFixture(t, "samples/eval.parquet"))
	if err != nil {
		t.Fatal(err)
	}
	recipeIn := func(dir string) string {
		p := crashJob(t, dir)
		b, _ := os.ReadFile(p)
		b = append(b, fmt.Sprintf("evaluation: {data: %s, sequences: 8}\n", eval)...)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	type result struct {
		Quality json.RawMessage `json:"quality"`
	}
	runToEnd := func(cmd *exec.Cmd) result {
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("%v: %v", cmd.Args, err)
		}
		var r result
		if err := json.Unmarshal(out, &r); err != nil {
			t.Fatalf("%q: %v", out, err)
		}
		return r
	}
	dir := t.TempDir()
	recipePath := recipeIn(dir)
	state := filepath.Join(dir, "state")
	logPath := filepath.Join(state, "rankzip.log")
	args := []string{"run", recipePath, "--state", state, "--heartbeat-timeout", "2s", "--json"}

	// Ten kill points in job order: after the job is submitted (inspection),
	// after b blocks are done (b random, seven times), when the last block is
	// done (export), when the export is done (evaluation); each plus a
	// random delay.
	type point struct {
		name   string
		reach  func() bool
		jitter time.Duration
	}
	storeDir := filepath.Join(state, "store")
	blocksDone := func(n int) func() bool {
		return func() bool { return doneBlocks(storeDir) >= n }
	}
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 14))
	points := []point{{"inspect", func() bool { return true }, time.Duration(rng.IntN(300)) * time.Millisecond}}
	var bs []int
	for range 7 {
		bs = append(bs, rng.IntN(5))
	}
	slices.Sort(bs)
	for _, b := range bs {
		points = append(points, point{fmt.Sprintf("block %d", b), blocksDone(b), time.Duration(rng.IntN(800)) * time.Millisecond})
	}
	points = append(points,
		point{"export", blocksDone(5), time.Duration(rng.IntN(150)) * time.Millisecond},
		point{"evaluate", func() bool { return logCount(logPath, "exported") > 0 }, time.Duration(rng.IntN(60)) * time.Millisecond})

	kills := 0
	var final *result
	for i, pt := range points {
		cmd := cli(args...)
		var stdout, stderr syncBuffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		deadline := time.Now().Add(3 * time.Minute)
		for !strings.Contains(stderr.String(), " on the embedded server") || !pt.reach() {
			if time.Now().After(deadline) {
				cmd.Process.Kill()
				t.Fatalf("kill %d (%s): not reached after 3 min:\n%s", i, pt.name, stderr.String())
			}
			time.Sleep(5 * time.Millisecond)
		}
		select {
		case err := <-exited:
			t.Fatalf("kill %d (%s): the process ended first (%v):\n%s", i, pt.name, err, stderr.String())
		case <-time.After(pt.jitter):
		}
		cmd.Process.Signal(syscall.SIGKILL)
		if err := <-exited; err == nil {
			// It finished before the signal.
			var r result
			json.Unmarshal([]byte(stdout.String()), &r)
			final = &r
			t.Logf("kill %d (%s +%v): the job finished first", i, pt.name, pt.jitter)
			break
		}
		kills++
		lines := strings.Split(strings.TrimSpace(stderr.String()), "\n")
		t.Logf("kill %d (%s +%v): last progress %q", i, pt.name, pt.jitter, lines[len(lines)-1])
	}
	if final == nil {
		r := runToEnd(cli(args...))
		final = &r
	}
	if kills < 10 {
		t.Errorf("%d kills, want 10", kills)
	}
	got, err := os.ReadFile(filepath.Join(dir, "out", "model.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, directBytes(t, recipePath)) {
		t.Errorf("after %d crashes the checkpoint differs from an uninterrupted run's", kills)
	}
	// The report is the evaluation of that checkpoint.
	var q struct {
		Compressed map[string]float64 `json:"compressed"`
	}
	json.Unmarshal(final.Quality, &q)
	out, _, err := rankzip("eval", "--model", filepath.Join(dir, "out"), "--baseline", needFixture(t, "stories260K"), "--data", eval, "--sequences", "8", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var want map[string]float64
	json.Unmarshal([]byte(out), &want)
	for _, k := range []string{"ppl", "kl", "top1_agree"} {
		if q.Compressed[k] != want[k] || want[k] == 0 {
			t.Errorf("after %d crashes the report's %s is %v; rankzip eval of the checkpoint gives %v", kills, k, q.Compressed[k], want[k])
		}
	}
	computed, _ := blockEvents(t, logPath)
	times := map[int]int{}
	total := 0
	for _, blocks := range computed {
		for _, b := range blocks {
			times[b]++
			total++
		}
	}
	if total-5 > kills {
		t.Errorf("%d block computations for 5 blocks and %d crashes: a crash cost more than the block it interrupted (%v)", total, kills, times)
	}
	t.Logf("%d crashes survived; blocks computed %d times in all (%v)", kills, total, times)
}
