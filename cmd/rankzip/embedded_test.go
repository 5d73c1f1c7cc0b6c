package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// listen holds a port of the kernel's ephemeral range until the test ends.
func listen(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l.Addr().(*net.TCPAddr).Port
}

// freeBase returns a port of the kernel's ephemeral range that is free with
// the 7 after it.
func freeBase(t *testing.T) int {
	t.Helper()
	for range 100 {
		p, err := kernelPorts()
		if err != nil {
			t.Fatal(err)
		}
		if b := p.GRPC[0]; b+numPorts <= 65536 && checkFree(consecutive(b)) == nil {
			return b
		}
	}
	t.Fatal("found no 8 consecutive free ports")
	return 0
}

// recordPorts writes the ports of a state directory's embedded server.
func recordPorts(t *testing.T, state string, p serverPorts) {
	t.Helper()
	dir := filepath.Join(state, "temporal")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(p)
	if err := os.WriteFile(portsFile(dir), b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// resolvePorts is reservePorts letting the ports go at once: the ports a
// server of dir would get.
func resolvePorts(dir string, forced int) (serverPorts, error) {
	p, h, _, err := reservePorts(dir, forced)
	h.release()
	return p, err
}

// The first start in a state directory picks ports and records them; later
// starts reuse them; --port forces others, which are then recorded.
func TestPortsRecorded(t *testing.T) {
	dir := t.TempDir()
	first, err := resolvePorts(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	again, err := resolvePorts(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	if again != first {
		t.Errorf("restart chose ports %v, the first start recorded %v", again, first)
	}
	other, err := resolvePorts(t.TempDir(), 0)
	if err != nil {
		t.Fatal(err)
	}
	if other == first {
		t.Errorf("two state directories got the same ports %v", first)
	}
	base := freeBase(t)
	forced, err := resolvePorts(dir, base)
	if err != nil {
		t.Fatal(err)
	}
	if forced != consecutive(base) {
		t.Errorf("--port %d gave %v", base, forced)
	}
	if again, _ := resolvePorts(dir, 0); again != forced {
		t.Errorf("after --port %d the recorded ports are %v", base, again)
	}
	// The picker rankzip uses outside tests stays below the ephemeral range.
	p, err := randomPorts()
	if err != nil {
		t.Fatal(err)
	}
	if hi := p.Membership[3]; hi >= ephemeralLow() {
		t.Errorf("randomPorts chose %v, into the ephemeral range from %d", p, ephemeralLow())
	}
}

// A port of the server that another program holds is an error naming the
// port, the program and the way out, before anything starts.
func TestBusyPort(t *testing.T) {
	busy := listen(t)
	p, err := kernelPorts()
	if err != nil {
		t.Fatal(err)
	}
	p.GRPC[2] = busy // matching's port
	state := t.TempDir()
	recordPorts(t, state, p)
	_, _, err = rankzip("status", "nosuchjob", "--state", state)
	var inUse *errPortInUse
	if !errors.As(err, &inUse) {
		t.Fatalf("status with a busy recorded port: %v, want a port-in-use error", err)
	}
	msg := err.Error()
	for _, want := range []string{
		fmt.Sprintf("port %d on 127.0.0.1 is in use", busy),
		fmt.Sprintf("pid %d (%s", os.Getpid(), os.Args[0]), // this test holds it
		"stop that program, or run with --port N",
		filepath.Join(state, "temporal", "ports.json"),
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("error lacks %q:\n%s", want, msg)
		}
	}
	if _, err := os.Stat(filepath.Join(state, "temporal", "temporal.db")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the server's database was created despite the busy port: %v", err)
	}
	// Forced ports that are busy: the same error, without the record.
	_, _, err = rankzip("status", "nosuchjob", "--state", t.TempDir(), "--port", fmt.Sprint(busy))
	if !errors.As(err, &inUse) || !strings.Contains(err.Error(), fmt.Sprintf("port %d on 127.0.0.1 is in use", busy)) {
		t.Errorf("status --port %d with that port busy: %v", busy, err)
	}
}

// When a port is taken after the check (a race), the server itself fails to
// listen: the process says why instead of exiting silently.
func TestServerFailureIsReported(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a process")
	}
	busy := listen(t)
	p, err := kernelPorts()
	if err != nil {
		t.Fatal(err)
	}
	p.Membership[1] = busy // history's membership port: the server finds it busy after its gRPC listeners are up
	state := t.TempDir()
	recordPorts(t, state, p)
	cmd := cli("status", "nosuchjob", "--state", state)
	cmd.Env = append(cmd.Env, "RANKZIP_TEST_SKIP_PORT_CHECK=1")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err = cmd.Run()
	if err == nil {
		t.Fatal("status succeeded with a busy port")
	}
	for _, want := range []string{"rankzip: embedded Temporal server: port " + fmt.Sprint(busy), fmt.Sprintf("in use by another program: pid %d", os.Getpid())} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr.String())
		}
	}
}

// A fatal entry of the running server, from any goroutine, prints its
// reason before the exit.
func TestFatalHookAfterStart(t *testing.T) {
	var out bytes.Buffer
	code := -1
	h := &fatalHook{log: "/state/temporal/server.log", exit: func(c int) { code = c }, stderrWriter: &out}
	zl := zap.New(zapcore.NewNopCore(), zap.WithFatalHook(h))
	done := make(chan struct{})
	go func() {
		defer close(done)
		zl.Fatal("failed to start ringpop", zap.String("error", "join timed out"))
	}()
	<-done
	want := "rankzip: the embedded Temporal server stopped: embedded Temporal server: failed to start ringpop: join timed out; its log: /state/temporal/server.log\n"
	if code != 1 || out.String() != want {
		t.Errorf("exit %d, stderr %q\nwant exit 1, %q", code, out.String(), want)
	}
}

// Embedded servers started at once in new state directories all start,
// though their ports are picked in a range so narrow that independent picks
// would overlap: each process holds the ports it picked until its server
// binds them, and the machine's ports lock keeps the others from probing
// them in between. (Picked independently, 4 windows of 8 ports among 57
// bases overlap most of the time: without the hold and the lock this test
// failed 3 runs of 3, "port N on 127.0.0.1 is in use".)
func TestConcurrentStarts(t *testing.T) {
	if testing.Short() {
		t.Skip("starts several Temporal servers")
	}
	const n = 4
	width := 2 * n * numPorts // with n-1 windows taken, a free one remains
	lo := freeRange(t, width)
	old := pickPorts
	pickPorts = func() (serverPorts, error) { return randomPortsIn(lo, lo+width-numPorts+1) }
	defer func() { pickPorts = old }()
	servers := make([]*embedded, n)
	errs := make([]error, n)
	dirs := make([]string, n)
	var wg sync.WaitGroup
	for i := range n {
		dirs[i] = t.TempDir()
		wg.Add(1)
		go func() {
			defer wg.Done()
			servers[i], errs[i] = startEmbedded(dirs[i], 0)
		}()
	}
	wg.Wait()
	seen := map[int]int{}
	for i, e := range servers {
		if errs[i] != nil {
			t.Errorf("server %d: %v", i, errs[i])
			continue
		}
		defer e.Stop()
		p, err := resolvePorts(dirs[i], 0)
		if err == nil {
			t.Errorf("server %d runs, yet its recorded ports %v are free", i, p)
		}
		var inUse *errPortInUse
		if !errors.As(err, &inUse) || inUse.port != p.GRPC[0] || !strings.Contains(err.Error(), fmt.Sprintf("pid %d", os.Getpid())) {
			t.Errorf("server %d's first port: %v, want it held by this process", i, err)
		}
		for _, port := range p.all() {
			if j, dup := seen[port]; dup {
				t.Errorf("port %d is recorded by servers %d and %d", port, j, i)
			}
			seen[port] = i
		}
		t.Logf("server %d: %s, ports %v", i, e.hostPort, p)
	}
}

// freeRange returns the first of width free consecutive ports below the
// kernel's ephemeral range.
func freeRange(t *testing.T, width int) int {
	t.Helper()
	for range 100 {
		lo := 20000 + rand.IntN(ephemeralLow()-20000-width)
		free := true
		for b := lo; b < lo+width && free; b += numPorts {
			free = checkFree(consecutive(b)) == nil
		}
		if free {
			return lo
		}
	}
	t.Fatalf("found no %d free consecutive ports", width)
	return 0
}
