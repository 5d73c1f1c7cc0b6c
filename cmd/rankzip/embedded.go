package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"go.temporal.io/server/common/config"
	tlog "go.temporal.io/server/common/log"
	sqliteplugin "go.temporal.io/server/common/persistence/sql/sqlplugin/sqlite"
	"go.temporal.io/server/schema/sqlite"
	"go.temporal.io/server/temporal"

	"github.com/rankzip/rankzip/internal/temporalserver"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// The embedded Temporal server: go.temporal.io/server in-process with its
// state in a SQLite file (WAL) under the state directory. Its ports are
// chosen free at the first start in a state directory and recorded there
// (ports.json), so that a killed `rankzip run` restarts on the same ports and
// resumes in seconds (with new ports the restarted server would route to the
// dead process's membership rows for ~45 s), and two state directories never
// collide. A lock file keeps two processes from opening the same database.

// numPorts is how many ports the server uses: the gRPC and membership ports
// of its four services.
const numPorts = 8

const embeddedNamespace = "default"

// serverPorts are the embedded server's ports: gRPC of frontend, history,
// matching and worker, then their membership ports.
type serverPorts struct {
	GRPC       [4]int `json:"grpc"`
	Membership [4]int `json:"membership"`
}

func (p serverPorts) all() []int { return append(p.GRPC[:], p.Membership[:]...) }

// consecutive returns the ports base..base+7.
func consecutive(base int) serverPorts {
	var p serverPorts
	for i := range 4 {
		p.GRPC[i], p.Membership[i] = base+i, base+4+i
	}
	return p
}

func (p serverPorts) String() string {
	a := p.all()
	if slices.Equal(a, consecutive(a[0]).all()) {
		return fmt.Sprintf("%d-%d", a[0], a[len(a)-1])
	}
	s := make([]string, len(a))
	for i, v := range a {
		s[i] = strconv.Itoa(v)
	}
	return strings.Join(s, ",")
}

// forcedPort returns --port, else $RANKZIP_PORT, else 0 (the recorded ports).
func forcedPort(flagValue int) (int, error) {
	if flagValue != 0 {
		if flagValue < 1 || flagValue > 65535-numPorts+1 {
			return 0, fmt.Errorf("--port %d is not a port (the server uses it and the %d after it)", flagValue, numPorts-1)
		}
		return flagValue, nil
	}
	if v := os.Getenv("RANKZIP_PORT"); v != "" {
		p, err := strconv.Atoi(v)
		if err != nil || p < 1 || p > 65535-numPorts+1 {
			return 0, fmt.Errorf("RANKZIP_PORT=%q is not a port", v)
		}
		return p, nil
	}
	return 0, nil
}

// pickPorts chooses free ports for a new state directory. Tests replace it
// with kernelPorts so that they never take a port a user's state directory
// records.
var pickPorts = randomPorts

// randomPorts finds 8 consecutive free ports at a random place below the
// kernel's ephemeral range (ports there are handed to outgoing connections
// and might be taken when the server restarts).
func randomPorts() (serverPorts, error) {
	lo, hi := 10000, ephemeralLow()-numPorts
	if hi <= lo {
		lo, hi = 1024, 65535-numPorts
	}
	return randomPortsIn(lo, hi)
}

// randomPortsIn returns the first 8 consecutive free ports with a base in
// [lo, hi), looking from a random base on and wrapping around: random, so
// that state directories spread out, and thorough, so that it fails only
// when no base is free.
func randomPortsIn(lo, hi int) (serverPorts, error) {
	start := rand.IntN(hi - lo)
	for i := range hi - lo {
		p := consecutive(lo + (start+i)%(hi-lo))
		if checkFree(p) == nil {
			return p, nil
		}
	}
	return serverPorts{}, fmt.Errorf("found no %d consecutive free ports in %d-%d; choose them with --port N", numPorts, lo, hi+numPorts-1)
}

// ephemeralLow is the first port of the kernel's ephemeral range.
func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if v, err := strconv.Atoi(f[0]); err == nil {
				return v
			}
		}
	}
	return 32768
}

// kernelPorts lets the kernel choose 8 free ports (from its ephemeral range).
func kernelPorts() (serverPorts, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var a []int
	for range numPorts {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return serverPorts{}, err
		}
		ls = append(ls, l)
		a = append(a, l.Addr().(*net.TCPAddr).Port)
	}
	var p serverPorts
	copy(p.GRPC[:], a[:4])
	copy(p.Membership[:], a[4:])
	return p, nil
}

// errPortInUse reports a port of the embedded server that another program
// holds.
type errPortInUse struct {
	port   int
	holder string // "pid N (command)", or "" when unknown
	forced bool   // the ports came from --port or $RANKZIP_PORT
	record string // the file recording the state directory's ports
	cause  error
}

func (e *errPortInUse) Error() string {
	who := "another program"
	if e.holder != "" {
		who = "another program: " + e.holder
	}
	way := "stop that program, or run with --port N to use ports N to N+7 (they are then recorded for this state directory)"
	if !e.forced && e.record != "" {
		way += fmt.Sprintf("; the ports are recorded in %s", e.record)
	}
	return fmt.Sprintf("embedded Temporal server: port %d on 127.0.0.1 is in use by %s; %s", e.port, who, way)
}

func (e *errPortInUse) Unwrap() error { return e.cause }

// checkFree returns an *errPortInUse for the first of the ports that cannot
// be bound on 127.0.0.1.
func checkFree(p serverPorts) error {
	h, err := holdPorts(p)
	h.release()
	return err
}

// held are listeners on a server's ports, which keep other programs off
// them until the server itself binds them.
type held []net.Listener

func (h held) release() {
	for _, l := range h {
		l.Close()
	}
}

// holdPorts binds the ports on 127.0.0.1 and keeps them, or returns an
// *errPortInUse for the first it cannot bind.
func holdPorts(p serverPorts) (held, error) {
	var h held
	for _, port := range p.all() {
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			h.release()
			return nil, &errPortInUse{port: port, holder: portHolder(port), cause: err}
		}
		h = append(h, l)
	}
	return h, nil
}

// lockPorts takes the machine's ports lock (a file in the temporary
// directory), which rankzip processes hold while they choose and hold ports
// and while their server binds the ones it held: a process never probes
// the ports another is about to bind (two `rankzip run`s with new state
// directories, started together, clashed so once). Where the file cannot
// be locked it returns a no-op: the held ports still narrow the race to the
// moment between their release and the server's bind.
func lockPorts() (unlock func()) {
	f, err := os.OpenFile(filepath.Join(os.TempDir(), "rankzip-ports.lock"), os.O_RDONLY|os.O_CREATE, 0o666)
	if err != nil {
		return func() {}
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return func() {}
	}
	return func() { f.Close() }
}

// skipPortCheck lets a test hand busy ports to the server itself, to see
// that its own failure is reported.
var skipPortCheck = false

// portsFile records a state directory's ports.
func portsFile(dir string) string { return filepath.Join(dir, "ports.json") }

// reservePorts returns the ports of the server of dir: forced (--port),
// else those recorded there, else new free ones, which it records. It binds
// and holds them (h; none under skipPortCheck), under the machine's ports
// lock while it picks and binds them; fresh tells whether it picked them.
// It fails with an *errPortInUse when one of them is taken.
func reservePorts(dir string, forced int) (p serverPorts, h held, fresh bool, err error) {
	unlock := lockPorts()
	defer unlock()
	record := portsFile(dir)
	switch b, err := os.ReadFile(record); {
	case forced != 0:
		p = consecutive(forced)
	case err == nil:
		if err := json.Unmarshal(b, &p); err != nil || slices.Contains(p.all(), 0) {
			return p, nil, false, fmt.Errorf("embedded Temporal server: %s is not a record of ports (%v); remove it to choose new ones", record, err)
		}
	case errors.Is(err, os.ErrNotExist):
		if p, err = pickPorts(); err != nil {
			return p, nil, false, fmt.Errorf("embedded Temporal server: %w", err)
		}
		fresh = true
	default:
		return p, nil, false, fmt.Errorf("embedded Temporal server: %w", err)
	}
	if !skipPortCheck {
		if h, err = holdPorts(p); err != nil {
			var inUse *errPortInUse
			if errors.As(err, &inUse) {
				inUse.forced, inUse.record = forced != 0, record
			}
			return p, nil, fresh, err
		}
	}
	b, _ := json.Marshal(p)
	if old, _ := os.ReadFile(record); !bytes.Equal(old, b) {
		if err := os.WriteFile(record, b, 0o644); err != nil {
			h.release()
			return p, nil, fresh, fmt.Errorf("embedded Temporal server: record ports: %w", err)
		}
	}
	return p, h, fresh, nil
}

// portHolder names the process listening on a TCP port, from /proc (Linux;
// only processes this user may inspect), or returns "".
func portHolder(port int) string {
	inodes := map[string]bool{}
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			fs := strings.Fields(line)
			if len(fs) < 10 || fs[3] != "0A" { // 0A: LISTEN
				continue
			}
			_, hexPort, ok := strings.Cut(fs[1], ":")
			if v, err := strconv.ParseUint(hexPort, 16, 32); ok && err == nil && int(v) == port {
				inodes["socket:["+fs[9]+"]"] = true
			}
		}
	}
	if len(inodes) == 0 {
		return ""
	}
	procs, _ := os.ReadDir("/proc")
	for _, d := range procs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		fds, _ := os.ReadDir(filepath.Join("/proc", d.Name(), "fd"))
		for _, fd := range fds {
			if t, err := os.Readlink(filepath.Join("/proc", d.Name(), "fd", fd.Name())); err == nil && inodes[t] {
				cmd, _ := os.ReadFile(filepath.Join("/proc", d.Name(), "cmdline"))
				c := strings.Join(strings.FieldsFunc(string(cmd), func(r rune) bool { return r < ' ' || r == ' ' }), " ")
				if len(c) > 80 {
					c = c[:77] + "..."
				}
				if c == "" {
					return fmt.Sprintf("pid %d", pid)
				}
				return fmt.Sprintf("pid %d (%s)", pid, c)
			}
		}
	}
	return ""
}

// embedded is a running embedded server and the lock it holds.
type embedded struct {
	srv      temporal.Server
	lock     *os.File
	hostPort string
}

// errBusy reports a state directory whose server another process runs.
type errBusy struct {
	dir      string
	pid      string
	hostPort string
}

func (e *errBusy) Error() string {
	return fmt.Sprintf("another rankzip process (pid %s) is running the embedded Temporal server of %s", e.pid, e.dir)
}

// lockState takes the lock of the embedded server under dir, or returns an
// *errBusy naming the process that holds it.
func lockState(dir string) (*os.File, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("state directory: %w", err)
	}
	path := filepath.Join(dir, "lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		data, _ := os.ReadFile(path)
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			fields := strings.Fields(string(data))
			busy := &errBusy{dir: dir, pid: "?"}
			if len(fields) >= 2 {
				busy.pid, busy.hostPort = fields[0], fields[1]
			}
			return nil, busy
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	f.Truncate(0) // an earlier owner's address, until startEmbedded writes this one's
	return f, nil
}

// startEmbedded starts the server with its state in dir (creating the
// database on first use) on its recorded ports (or forced..forced+7 when
// forced is not 0) and returns once its frontend accepts calls.
func startEmbedded(dir string, forced int) (e *embedded, err error) {
	lock, err := lockState(dir)
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			lock.Close()
		}
	}()
	ports, held, fresh, err := reservePorts(dir, forced)
	if err != nil {
		return nil, err
	}
	defer held.release()
	defer func() {
		if err != nil && fresh { // the next start picks others
			os.Remove(portsFile(dir))
		}
	}()
	hostPort := fmt.Sprintf("127.0.0.1:%d", ports.GRPC[0])
	lock.Truncate(0)
	fmt.Fprintf(lock, "%d %s\n", os.Getpid(), hostPort)
	lock.Sync()

	sqlCfg, err := openDatabase(dir)
	if err != nil {
		return nil, err
	}
	cfg := serverConfig(ports, hostPort, sqlCfg)

	// The server ends the process (zap's Fatal: os.Exit) when it cannot
	// listen or join its membership ring, having written only to its log.
	// The hook turns such an end while starting into an error returned
	// here, and one later into a message on stderr before the exit.
	logPath := filepath.Join(dir, "server.log")
	hook := &fatalHook{starting: goid(), log: logPath, forced: forced != 0, record: portsFile(dir)}
	zl := tlog.BuildZapLogger(tlog.Config{Level: "error", OutputFile: logPath}).WithOptions(zap.WithFatalHook(hook))
	logger := tlog.NewZapLogger(zl)
	// The ports go from this process's hands to the server's with no other
	// rankzip process probing them between.
	unlock := lockPorts()
	defer unlock()
	held.release()
	defer func() {
		if r := recover(); r != nil {
			f, isFatal := r.(*serverFatal)
			if !isFatal {
				panic(r)
			}
			e, err = nil, f.err()
		}
		hook.started()
	}()
	srv, err := temporalserver.New(cfg, logger)
	if err != nil {
		return nil, fmt.Errorf("embedded temporal: %w", err)
	}
	if err := srv.Start(); err != nil {
		return nil, fmt.Errorf("embedded temporal: start on ports %v: %w (its log: %s)", ports, err, logPath)
	}
	ok = true
	return &embedded{srv: srv, lock: lock, hostPort: hostPort}, nil
}

// openDatabase creates the server's SQLite database in dir, with its schema
// and the namespace, unless it exists, and returns its configuration.
func openDatabase(dir string) (*config.SQL, error) {
	dbFile := filepath.Join(dir, "temporal.db")
	sqlCfg := &config.SQL{
		PluginName:   sqliteplugin.PluginName,
		DatabaseName: dbFile,
		// The plugin turns plain keys into _pragma=key=value; "_journal_mode"
		// would be silently ignored.
		ConnectAttributes: map[string]string{"mode": "rwc", "journal_mode": "wal", "synchronous": "2"},
	}
	if _, err := os.Stat(dbFile); errors.Is(err, os.ErrNotExist) {
		if err := sqlite.SetupSchema(sqlCfg); err != nil {
			os.Remove(dbFile)
			return nil, fmt.Errorf("embedded temporal: create %s: %w", dbFile, err)
		}
	}
	ns, err := sqlite.NewNamespaceConfig("active", embeddedNamespace, false, nil)
	if err != nil {
		return nil, fmt.Errorf("embedded temporal: %w", err)
	}
	if err := sqlite.CreateNamespaces(sqlCfg, ns); err != nil {
		return nil, fmt.Errorf("embedded temporal: %w", err)
	}
	return sqlCfg, nil
}

// serverConfig configures the four services of one embedded server on
// 127.0.0.1 and ports, persisting in sqlCfg.
func serverConfig(ports serverPorts, hostPort string, sqlCfg *config.SQL) *config.Config {
	return temporalserver.Config("127.0.0.1", hostPort, ports.GRPC, ports.Membership, sqlCfg)
}

// Stop stops the server and releases the lock.
func (e *embedded) Stop() {
	e.srv.Stop()
	e.lock.Close()
}

// serverFatal is a Fatal log entry of the embedded server.
type serverFatal struct {
	msg    string
	fields map[string]any
	hook   *fatalHook
}

// err explains the entry: a port another program holds, else the server's
// own message.
func (f *serverFatal) err() error {
	addr, _ := f.fields["address"].(string)
	cause, _ := f.fields["error"].(string)
	if strings.Contains(cause, "address already in use") {
		if _, p, err := net.SplitHostPort(addr); err == nil {
			port, _ := strconv.Atoi(p)
			return &errPortInUse{port: port, holder: portHolder(port), forced: f.hook.forced, record: f.hook.record, cause: errors.New(cause)}
		}
	}
	msg := "embedded Temporal server: " + f.msg
	if cause != "" {
		msg += ": " + cause
	}
	if addr != "" {
		msg += " (address " + addr + ")"
	}
	return fmt.Errorf("%s; its log: %s", msg, f.hook.log)
}

// fatalHook replaces zap's exit on the embedded server's Fatal entries.
type fatalHook struct {
	starting     uint64 // the goroutine starting the server; 0 once started
	mu           sync.Mutex
	log, record  string
	forced       bool
	exit         func(int) // os.Exit
	stderrWriter io.Writer // os.Stderr
}

func (h *fatalHook) started() {
	h.mu.Lock()
	h.starting = 0
	h.mu.Unlock()
}

// OnWrite runs after the entry is written to the server's log. In the
// goroutine starting the server it panics with a *serverFatal, which
// startEmbedded recovers; elsewhere it prints the reason and exits.
func (h *fatalHook) OnWrite(ce *zapcore.CheckedEntry, fields []zapcore.Field) {
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range fields {
		f.AddTo(enc)
	}
	f := &serverFatal{msg: ce.Message, fields: enc.Fields, hook: h}
	h.mu.Lock()
	starting := h.starting
	h.mu.Unlock()
	if starting != 0 && starting == goid() {
		panic(f)
	}
	w, exit := h.stderrWriter, h.exit
	if w == nil {
		w = os.Stderr
	}
	if exit == nil {
		exit = os.Exit
	}
	fmt.Fprintf(w, "rankzip: the embedded Temporal server stopped: %v\n", f.err())
	exit(1)
}

// goid is the id of the calling goroutine (from its stack trace's header).
func goid() uint64 {
	var buf [64]byte
	n := runtime.Stack(buf[:], false)
	s := strings.TrimPrefix(string(buf[:n]), "goroutine ")
	id, _ := strconv.ParseUint(s[:strings.IndexByte(s, ' ')], 10, 64)
	return id
}
