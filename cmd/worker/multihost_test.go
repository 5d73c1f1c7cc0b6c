package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	historypb "go.temporal.io/api/history/v1"
	"go.temporal.io/sdk/client"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/rankzip/rankzip/internal/temporalconf"
	"github.com/rankzip/rankzip/internal/testcluster"
	"github.com/rankzip/rankzip/recipe"
	"github.com/rankzip/rankzip/store/s3fake"
	"github.com/rankzip/rankzip/workflows"
)

func TestMain(m *testing.M) {
	if os.Getenv("RANKZIP_TEST_WORKER") == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// secret is the API key the workers send; no log, report or history may
// hold it.
const secret = "rk-apikey-5f1c0a9e7d"

// netns is a bridge in this network namespace with an address, and network
// namespaces ("hosts") each joined to it by a veth pair, with no other
// route: a process there reaches only the bridge's subnet.
type netns struct {
	bridgeIP string
	names    []string
}

// makeNetns makes n namespaces, or skips the test saying why it cannot.
func makeNetns(t *testing.T, n int) *netns {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("network namespaces need root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("network namespaces need the ip command (iproute2)")
	}
	id := os.Getpid() % 100000
	subnet := fmt.Sprintf("10.213.%d", id%250+1)
	br := fmt.Sprintf("rz%db", id)
	ip := func(args ...string) error {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	ns := &netns{bridgeIP: subnet + ".1"}
	t.Cleanup(func() {
		for _, name := range ns.names {
			ip("netns", "del", name)
		}
		ip("link", "del", br)
	})
	if err := ip("link", "add", br, "type", "bridge"); err != nil {
		t.Skipf("cannot make network namespaces here: %v", err)
	}
	steps := [][]string{{"addr", "add", ns.bridgeIP + "/24", "dev", br}, {"link", "set", br, "up"}}
	for i := 1; i <= n; i++ {
		name, host, peer := fmt.Sprintf("rz%d-w%d", id, i), fmt.Sprintf("rz%dh%d", id, i), fmt.Sprintf("rz%dn%d", id, i)
		ns.names = append(ns.names, name)
		steps = append(steps,
			[]string{"netns", "add", name},
			[]string{"link", "add", host, "type", "veth", "peer", "name", peer},
			[]string{"link", "set", peer, "netns", name},
			[]string{"link", "set", host, "master", br, "up"},
			[]string{"-n", name, "addr", "add", fmt.Sprintf("%s.%d/24", subnet, i+1), "dev", peer},
			[]string{"-n", name, "link", "set", peer, "up"},
			[]string{"-n", name, "link", "set", "lo", "up"})
	}
	for _, s := range steps {
		if err := ip(s...); err != nil {
			t.Skipf("cannot make network namespaces here: %v", err)
		}
	}
	return ns
}

// multiHost is the cluster of the test: a Temporal server with mTLS and an
// S3 server on the bridge, and the environment of the workers.
type multiHost struct {
	t    *testing.T
	dir  string
	ns   *netns
	c    client.Client
	env  []string
	logs []string
}

// A Temporal server (mTLS) and an S3 server on a bridge, and workers each in
// its own network namespace, reaching them over veth pairs: one job on one
// worker, the same job on two, on two of which one is killed (kill -9)
// while it runs a block, and on two hosts of which the one that exported is
// killed with its checkpoint once Evaluate is scheduled on its host queue;
// the surviving worker finishes each. The four checkpoints are
// byte-identical; no log, report or workflow history holds the API key the
// workers send. A cuda job with no GPU worker fails saying so.
func TestMultiHost(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a Temporal server and worker processes, and compresses a model")
	}
	for _, f := range []string{"stories260K/model.safetensors", "samples/calib.parquet"} {
		if _, err := os.Stat(filepath.Join("../../testdata", f)); err != nil {
			t.Skipf("fixture %s missing: %v", f, err)
		}
	}
	m := &multiHost{t: t, dir: t.TempDir(), ns: makeNetns(t, 2)}
	if keep := os.Getenv("RANKZIP_MULTIHOST_DIR"); keep != "" { // to look at the logs and reports afterwards
		m.dir = keep
	}
	ip := m.ns.bridgeIP
	certs, err := testcluster.MakeCerts(m.dir, "temporal.rankzip.test", net.ParseIP(ip))
	if err != nil {
		t.Fatal(err)
	}
	tdir := filepath.Join(m.dir, "temporal")
	os.Mkdir(tdir, 0o755)
	srv, err := testcluster.Start(tdir, testcluster.Options{BindIP: ip, TLS: certs})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop()
	s3, err := s3fake.Start(ip+":0", "rankzip")
	if err != nil {
		t.Fatal(err)
	}
	defer s3.Close()
	m.env = append(s3.Env(),
		"TEMPORAL_ADDRESS="+srv.HostPort,
		"TEMPORAL_CONFIG_FILE="+filepath.Join(m.dir, "none.toml"),
		"TEMPORAL_TLS_CLIENT_CERT_PATH="+certs.ClientCertFile,
		"TEMPORAL_TLS_CLIENT_KEY_PATH="+certs.ClientKeyFile,
		"TEMPORAL_TLS_SERVER_CA_CERT_PATH="+certs.CAFile,
		"TEMPORAL_TLS_SERVER_NAME="+certs.ServerName,
		"TEMPORAL_API_KEY="+secret,
		"AWS_CONFIG_FILE="+filepath.Join(m.dir, "aws-config"),
		"AWS_SHARED_CREDENTIALS_FILE="+filepath.Join(m.dir, "aws-credentials"),
		"AWS_PROFILE=", "RANKZIP_STORE=", "RANKZIP_DEVICE=cpu", "RANKZIP_HOST_ID=",
		// One core per worker, as if each were a host of its own (the
		// test's machine may have few).
		"OPENBLAS_NUM_THREADS=1", "GOMAXPROCS=1",
	)
	for _, kv := range m.env {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	tc, err := (&temporalconf.Flags{}).Load()
	if err != nil {
		t.Fatal(err)
	}
	opts, err := tc.ClientOptions()
	if err != nil {
		t.Fatal(err)
	}
	if m.c, err = client.Dial(opts); err != nil {
		t.Fatal(err)
	}
	defer m.c.Close()

	m.gpuJobFails()
	one := m.job("one", 1, false)
	two := m.job("two", 2, false)
	killed := m.job("killed", 2, true)
	const hostWait = 3 * time.Second
	gone := m.hostGone("hostgone", hostWait)
	for _, r := range []jobRun{two, killed, gone} {
		if r.digest != one.digest {
			t.Errorf("job on %s: checkpoint %s, the one-worker run's %s", r.name, r.digest, one.digest)
		}
	}
	t.Logf("job time: one worker %v, two workers %v; two workers with one killed %v (killed while running %s; the survivor started it again %v after the kill)",
		one.took.Round(time.Millisecond), two.took.Round(time.Millisecond), killed.took.Round(time.Millisecond), killed.activity, killed.pickup.Round(time.Millisecond))
	t.Logf("two workers, each its own host, the exporting one killed once Evaluate was scheduled (at the kill: %s): job %v; the survivor exported again %v after the kill (host wait %v)",
		strings.TrimSpace(gone.activity), gone.took.Round(time.Millisecond), gone.pickup.Round(time.Millisecond), hostWait)
	for _, r := range []jobRun{one, two, killed, gone} {
		t.Logf("steps on %-6s %s", r.name+":", r.steps)
	}
	var blocks []string
	for _, p := range m.logs {
		b, _ := os.ReadFile(p)
		blocks = append(blocks, fmt.Sprintf("%s %d", strings.TrimSuffix(filepath.Base(p), ".log"), bytes.Count(b, []byte(`"msg":"block done"`))))
	}
	t.Logf("blocks computed by each worker: %s", strings.Join(blocks, ", "))
	t.Logf("checkpoint sha256 (all four): %s", one.digest)
	m.noSecret(one, two, killed, gone)
}

// gpuJobFails submits the job with device cuda while only a CPU worker
// runs: its first activity waits on the GPU queue, unstarted, and after
// GPUWait the job fails saying that no worker polls that queue.
func (m *multiHost) gpuJobFails() {
	t := m.t
	job := m.recipe("gpu")
	w := m.worker("gpu-w1", m.ns.names[0], "s3://rankzip/gpu")
	defer func() { w.Process.Signal(syscall.SIGTERM); w.Wait() }()
	ctx := context.Background()
	const wait = 3 * time.Second
	start := time.Now()
	run, err := m.c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: job.ID, TaskQueue: workflows.TaskQueue},
		workflows.CompressModel, workflows.Input{Job: *job, Device: "cuda", GPUWait: wait})
	if err != nil {
		t.Fatal(err)
	}
	defer m.c.TerminateWorkflow(ctx, job.ID, "", "test over")
	time.Sleep(wait / 2)
	d, err := m.c.DescribeWorkflowExecution(ctx, job.ID, "")
	if err != nil {
		t.Fatal(err)
	}
	var pending []string
	for _, a := range d.PendingActivities {
		pending = append(pending, fmt.Sprintf("%s %s", a.GetActivityType().GetName(), a.State))
	}
	if len(d.PendingActivities) != 1 || d.PendingActivities[0].State != enumspb.PENDING_ACTIVITY_STATE_SCHEDULED {
		t.Errorf("a cuda job with only a CPU worker: pending activities %v, want one scheduled, not started", pending)
	}
	err = run.Get(ctx, nil)
	if err == nil || !strings.Contains(err.Error(), "no worker polls task queue rankzip-gpu") {
		t.Fatalf("a cuda job with only a CPU worker ended with %v, want the message that no worker polls rankzip-gpu", err)
	}
	t.Logf("a cuda job with only a CPU worker: after %v %v; failed after %v: %v", wait/2, pending, time.Since(start).Round(time.Millisecond), err)
}

// jobRun is what one run of the job showed.
type jobRun struct {
	name, id, out string
	digest        string // of the checkpoint's files, in order
	took          time.Duration
	steps         string        // the job's steps and their times
	activity      string        // the activity running on the killed worker
	pickup        time.Duration // from the kill to its start on the survivor
}

// job runs the test's recipe (output and store prefix of its own) on n
// workers, one in each namespace, killing the first while it runs a block
// when kill is set.
func (m *multiHost) job(name string, n int, kill bool) jobRun {
	t := m.t
	r := jobRun{name: name, out: filepath.Join(m.dir, "out-"+name)}
	job := m.recipe(name)
	r.id = job.ID
	ws, stop := m.workers(name, n, false)
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	start := time.Now()
	run, err := m.c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: job.ID, TaskQueue: workflows.TaskQueue},
		workflows.CompressModel, workflows.Input{Job: *job, HeartbeatTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	var killedAt time.Time
	if kill {
		r.activity, killedAt = m.killWhileBlock(ctx, job.ID, ws[0])
	}
	var res workflows.Result
	if err := run.Get(ctx, &res); err != nil {
		t.Fatalf("job on %s: %v\n%s", name, err, m.logTails())
	}
	r.took = time.Since(start)
	m.record(&r, res)
	if kill {
		r.pickup = m.restarted(job.ID, r.activity, killedAt, ws[1].Process.Pid)
	}
	return r
}

// workers starts n workers named NAME-w1, NAME-w2... on the store prefix
// of the job name, one in each namespace and, with ownHosts, each a host of
// its own (--host-id its name), and returns them with a function that stops
// them (SIGTERM) and waits for them.
func (m *multiHost) workers(name string, n int, ownHosts bool) ([]*exec.Cmd, func()) {
	var ws []*exec.Cmd
	for i := range n {
		id := fmt.Sprintf("%s-w%d", name, i+1)
		var flags []string
		if ownHosts {
			flags = []string{"--host-id", id}
		}
		ws = append(ws, m.worker(id, m.ns.names[i], "s3://rankzip/"+name, flags...))
	}
	return ws, func() {
		for _, w := range ws {
			w.Process.Signal(syscall.SIGTERM)
			w.Wait()
		}
	}
}

// history returns a workflow's events.
func (m *multiHost) history(ctx context.Context, id string) []*historypb.HistoryEvent {
	var events []*historypb.HistoryEvent
	it := m.c.GetWorkflowHistory(ctx, id, "", false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
	for it.HasNext() {
		e, err := it.Next()
		if err != nil {
			m.t.Fatal(err)
		}
		events = append(events, e)
	}
	return events
}

// record notes a finished job's steps and the digest of its checkpoint.
func (m *multiHost) record(r *jobRun, res workflows.Result) {
	var steps []string
	for _, s := range res.Timings {
		steps = append(steps, fmt.Sprintf("%s %.2fs", s.Name, s.Seconds))
	}
	r.steps = strings.Join(steps, ", ")
	var sums []string
	for _, f := range res.Files {
		if filepath.Base(f.Path) == recipe.Marker { // holds the job's id
			continue
		}
		b, err := os.ReadFile(f.Path)
		if err != nil {
			m.t.Fatal(err)
		}
		rel, _ := filepath.Rel(r.out, f.Path)
		sum := sha256.Sum256(b)
		sums = append(sums, rel+" "+hex.EncodeToString(sum[:]))
	}
	r.digest = strings.Join(sums, ", ")
}

// hostGone runs the job on two workers, each a host of its own (--host-id),
// and kills the one that exported (kill -9) as soon as Evaluate is scheduled
// on its host queue, moving its checkpoint away too (its disk goes with
// it). After HostWait the job exports again on the survivor, which
// evaluates and reports there.
func (m *multiHost) hostGone(name string, wait time.Duration) jobRun {
	t := m.t
	r := jobRun{name: name, out: filepath.Join(m.dir, "out-"+name)}
	job := m.recipe(name)
	r.id = job.ID
	ws, stop := m.workers(name, 2, true)
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	start := time.Now()
	run, err := m.c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: job.ID, TaskQueue: workflows.TaskQueue},
		workflows.CompressModel, workflows.Input{Job: *job, HeartbeatTimeout: 2 * time.Second, HostWait: wait})
	if err != nil {
		t.Fatal(err)
	}
	exporter, killedAt := m.killExporter(ctx, job.ID, ws)
	// Evaluate may have started on the exporter before the kill: it is
	// then retried on the same queue after its heartbeat timeout, and
	// that attempt waits HostWait.
	if d, err := m.c.DescribeWorkflowExecution(ctx, job.ID, ""); err == nil {
		for _, a := range d.PendingActivities {
			r.activity += fmt.Sprintf("%s %s (attempt %d) ", a.GetActivityType().GetName(), a.State, a.Attempt)
		}
	}
	if err := os.Rename(r.out, r.out+".lost"); err != nil {
		t.Fatal(err)
	}
	var res workflows.Result
	if err := run.Get(ctx, &res); err != nil {
		t.Fatalf("job on %s: %v\n%s", name, err, m.logTails())
	}
	r.took = time.Since(start)
	m.record(&r, res)
	survivor := ws[1-exporter].Process.Pid
	var exports []string
	scheduled := map[int64]string{}
	for _, e := range m.history(context.Background(), job.ID) {
		if a := e.GetActivityTaskScheduledEventAttributes(); a != nil {
			scheduled[e.EventId] = a.ActivityType.GetName()
		}
		if a := e.GetActivityTaskStartedEventAttributes(); a != nil && scheduled[a.ScheduledEventId] == "Export" {
			exports = append(exports, a.Identity)
			if e.EventTime.AsTime().After(killedAt) && r.pickup == 0 {
				r.pickup = e.EventTime.AsTime().Sub(killedAt)
			}
		}
	}
	if res.Reexports != 1 || len(exports) != 2 || !strings.HasPrefix(exports[1], fmt.Sprintf("%d@", survivor)) {
		t.Errorf("exports by %v (%d again), want a second one by the survivor (pid %d)", exports, res.Reexports, survivor)
	}
	if want := workflows.HostTaskQueue(fmt.Sprintf("%s-w%d", name, 2-exporter), false); res.Export.HostQueue != want || res.Report == "" {
		t.Errorf("the job ended on host queue %q with report %q, want %q and a report", res.Export.HostQueue, res.Report, want)
	}
	return r
}

// killExporter waits until Evaluate is scheduled, kills the worker of ws
// that ran Export, and returns its index and when it was killed.
func (m *multiHost) killExporter(ctx context.Context, id string, ws []*exec.Cmd) (int, time.Time) {
	for ctx.Err() == nil {
		scheduled := map[int64]string{}
		exporter := ""
		for _, e := range m.history(ctx, id) {
			if a := e.GetActivityTaskScheduledEventAttributes(); a != nil {
				scheduled[e.EventId] = a.ActivityType.GetName()
				if a.ActivityType.GetName() != "Evaluate" || exporter == "" {
					continue
				}
				for i, w := range ws {
					if strings.HasPrefix(exporter, fmt.Sprintf("%d@", w.Process.Pid)) {
						w.Process.Signal(syscall.SIGKILL)
						return i, time.Now()
					}
				}
				m.t.Fatalf("Export ran on %s, none of the test's workers", exporter)
			}
			if a := e.GetActivityTaskStartedEventAttributes(); a != nil && scheduled[a.ScheduledEventId] == "Export" {
				exporter = a.Identity
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	m.t.Fatal("Evaluate was never scheduled")
	return 0, time.Time{}
}

// logTails are the ends of the workers' logs, for a failure's message.
func (m *multiHost) logTails() string {
	var b strings.Builder
	for _, p := range m.logs {
		log, _ := os.ReadFile(p)
		fmt.Fprintf(&b, "--- %s:\n%s\n", filepath.Base(p), log[max(0, len(log)-3000):])
	}
	return b.String()
}

// recipe writes and loads the test's recipe with output out-NAME.
func (m *multiHost) recipe(name string) *recipe.Job {
	fx, _ := filepath.Abs("../../testdata")
	rec := fmt.Sprintf(`model: %s
calibration: {data: %s, sequences: 64, mode: original}
output: %s
stages:
  - {method: svd, variant: whiten, keep_params: 0.8, rank_search: uniform}
`, filepath.Join(fx, "stories260K"), filepath.Join(fx, "samples/calib.parquet"), filepath.Join(m.dir, "out-"+name))
	p := filepath.Join(m.dir, name+".yaml")
	if err := os.WriteFile(p, []byte(rec), 0o644); err != nil {
		m.t.Fatal(err)
	}
	job, err := recipe.Load(p)
	if err != nil {
		m.t.Fatal(err)
	}
	return job
}

// worker starts a worker in namespace ns, with more flags, and returns
// once it polls.
func (m *multiHost) worker(name, ns, store string, flags ...string) *exec.Cmd {
	t := m.t
	logPath := filepath.Join(m.dir, name+".log")
	m.logs = append(m.logs, logPath)
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	w := exec.Command("ip", append([]string{"netns", "exec", ns, os.Args[0], "--store", store, "--connect-timeout", "30s"}, flags...)...)
	w.Env = append(os.Environ(), "RANKZIP_TEST_WORKER=1", "RANKZIP_STORE_CACHE="+filepath.Join(m.dir, "cache-"+name))
	w.Stdout, w.Stderr = f, f
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Process.Kill(); w.Wait(); f.Close() })
	deadline := time.Now().Add(time.Minute)
	for {
		b, _ := os.ReadFile(logPath)
		if bytes.Contains(b, []byte("worker started")) {
			return w
		}
		if time.Now().After(deadline) || w.ProcessState != nil {
			t.Fatalf("worker %s did not start:\n%s", name, b)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// killWhileBlock kills w (kill -9) once it runs a block, and returns that
// activity's id and when it was killed.
func (m *multiHost) killWhileBlock(ctx context.Context, id string, w *exec.Cmd) (string, time.Time) {
	prefix := fmt.Sprintf("%d@", w.Process.Pid)
	for ctx.Err() == nil {
		d, err := m.c.DescribeWorkflowExecution(ctx, id, "")
		if err != nil {
			m.t.Fatal(err)
		}
		for _, a := range d.PendingActivities {
			if a.GetActivityType().GetName() == "Block" && a.State == enumspb.PENDING_ACTIVITY_STATE_STARTED && strings.HasPrefix(a.LastWorkerIdentity, prefix) {
				w.Process.Signal(syscall.SIGKILL)
				return a.ActivityId, time.Now()
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	m.t.Fatal("the first worker ran no block")
	return "", time.Time{}
}

// restarted returns how long after killedAt the activity started on the
// worker with pid survivor (the start of its last attempt, in the history).
func (m *multiHost) restarted(id, activity string, killedAt time.Time, survivor int) time.Duration {
	t := m.t
	scheduled := int64(-1)
	for _, e := range m.history(context.Background(), id) {
		if a := e.GetActivityTaskScheduledEventAttributes(); a != nil && a.ActivityId == activity {
			scheduled = e.EventId
		}
		if a := e.GetActivityTaskStartedEventAttributes(); a != nil && a.ScheduledEventId == scheduled {
			if a.Attempt < 2 || !strings.HasPrefix(a.Identity, fmt.Sprintf("%d@", survivor)) {
				t.Errorf("activity %s: last attempt %d by %s, want a retry by the surviving worker (pid %d)", activity, a.Attempt, a.Identity, survivor)
			}
			return e.EventTime.AsTime().Sub(killedAt)
		}
	}
	t.Fatalf("no start of activity %s in the history", activity)
	return 0
}

// noSecret checks that the API key is in no worker log, no output directory
// (report.json, report.html), no workflow history and not in the server's
// log.
func (m *multiHost) noSecret(runs ...jobRun) {
	t := m.t
	files := append([]string{filepath.Join(m.dir, "temporal", "server.log")}, m.logs...)
	for _, r := range runs {
		entries, err := os.ReadDir(r.out)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			files = append(files, filepath.Join(r.out, e.Name()))
		}
		hist := filepath.Join(m.dir, r.name+"-history.json")
		var b bytes.Buffer
		for _, e := range m.history(context.Background(), r.id) {
			j, _ := protojson.Marshal(e)
			b.Write(j)
			b.WriteByte('\n')
		}
		if err := os.WriteFile(hist, b.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		files = append(files, hist)
	}
	var searched []string
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue // a directory (the checkpoint's adapter) or no server log
		}
		searched = append(searched, fmt.Sprintf("%s (%d bytes)", filepath.Base(f), len(b)))
		if bytes.Contains(b, []byte(secret)) {
			t.Errorf("%s holds the API key", f)
		}
	}
	t.Logf("API key searched for in %d files: %s", len(searched), strings.Join(searched, ", "))
}
