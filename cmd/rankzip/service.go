package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"go.temporal.io/sdk/client"
	tlog "go.temporal.io/sdk/log"
	"go.temporal.io/sdk/worker"

	"github.com/rankzip/rankzip/activities"
	"github.com/rankzip/rankzip/internal/temporalconf"
	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/store"
	"github.com/rankzip/rankzip/workflows"
)

// serviceFlags say where the Temporal service is: --temporal (or
// TEMPORAL_ADDRESS, or a Temporal profile's address, with its TLS and API
// key: see internal/temporalconf) for a cluster, else the embedded server of
// --state.
type serviceFlags struct {
	temporal *temporalconf.Flags
	state    string
	port     int
	device   string
	store    string
}

func addServiceFlags(fs *flag.FlagSet) *serviceFlags {
	f := &serviceFlags{}
	f.temporal = temporalconf.Register(fs) // no address: the embedded server
	fs.StringVar(&f.state, "state", "", "state directory (default $RANKZIP_STATE_DIR or ~/.local/state/rankzip)")
	fs.StringVar(&f.device, "device", "", deviceUsage+" (the in-process worker's; cuda also sends the job's activities to the GPU task queue, which only workers with a GPU poll)")
	fs.StringVar(&f.store, "store", "", "artifact store of the in-process worker: a directory or s3://bucket/prefix (endpoint and credentials from the AWS SDK's environment: AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, AWS_PROFILE...) (default $RANKZIP_STORE, else the state directory's store/)")
	fs.IntVar(&f.port, "port", 0, "embedded server: use ports PORT to PORT+7 (default $RANKZIP_PORT, else the ports recorded in the state directory, chosen free at its first start)")
	return f
}

// conf is the Temporal client configuration (of the environment and
// profile alone where the command registered no flags for it, as demo); an
// unreadable one has no address here and connect reports it.
func (f *serviceFlags) conf() (*temporalconf.Config, error) {
	if f.temporal == nil {
		return (&temporalconf.Flags{}).Load()
	}
	return f.temporal.Load()
}

func (f *serviceFlags) hostPort() string {
	c, err := f.conf()
	if err != nil {
		return ""
	}
	return c.Address()
}

// storeLoc is the artifact store: --store, $RANKZIP_STORE, else the state
// directory's.
func (f *serviceFlags) storeLoc() string {
	if f.store != "" {
		return f.store
	}
	if loc := os.Getenv("RANKZIP_STORE"); loc != "" {
		return loc
	}
	return filepath.Join(stateDir(f.state), "store")
}

func (f *serviceFlags) ns() string {
	if c, err := f.conf(); err == nil {
		return c.Namespace()
	}
	return embeddedNamespace
}

// session is a connection to the service and, in embedded mode, the server
// and worker this process runs.
type session struct {
	c        client.Client
	embedded *embedded // nil when connected to another process's server or a cluster
	ws       []worker.Worker
	log      *slog.Logger
	logFile  *os.File
	external bool     // a cluster named by --temporal, TEMPORAL_ADDRESS or a Temporal profile
	device   string   // the job's device: "cuda" sends its activities to the GPU queue
	owner    *errBusy // the process whose embedded server this session uses, if another's
}

// workerMode says what worker an embedded session runs.
type workerMode int

const (
	noWorker    workerMode = iota // server only (an external cmd/worker works)
	queryWorker                   // workflows only: answers queries, runs no activity
	fullWorker                    // workflows and activities
)

// attachWait is how long a session waits for the embedded server that
// another rankzip process is starting.
const attachWait = time.Minute

// connect opens a session. In embedded mode it starts the server (and a
// worker of the given mode) unless another rankzip process runs it; then it
// connects to that process's server, waiting for it to come up.
func (f *serviceFlags) connect(mode workerMode) (*session, error) {
	s := &session{log: slog.New(slog.DiscardHandler), device: f.device}
	tc, err := f.conf()
	if err != nil {
		return nil, err
	}
	opts := client.Options{Namespace: tc.Namespace()}
	if tc.Address() != "" {
		s.external = true
		if opts, err = tc.ClientOptions(); err != nil {
			return nil, err
		}
		opts.Logger = tlog.NewStructuredLogger(slog.New(slog.DiscardHandler))
		c, err := client.Dial(opts)
		if err != nil {
			return nil, fmt.Errorf("connect to Temporal (%s): %w", tc, err)
		}
		s.c = c
		return s, nil
	}
	opts.Logger = tlog.NewStructuredLogger(slog.New(slog.DiscardHandler))
	forced, err := forcedPort(f.port)
	if err != nil {
		return nil, err
	}
	dir := stateDir(f.state)
	tdir := filepath.Join(dir, "temporal")
	deadline := time.Now().Add(attachWait)
	for {
		e, err := startEmbedded(tdir, forced)
		var busy *errBusy
		switch {
		case err == nil:
			s.embedded = e
			opts.HostPort = e.hostPort
		case !errors.As(err, &busy):
			return nil, err
		case busy.hostPort != "":
			s.owner = busy
			opts.HostPort = busy.hostPort
		case time.Now().After(deadline):
			return nil, fmt.Errorf("%w and has not started it after %v", err, attachWait)
		default: // the other process has the lock and has not yet chosen its ports
			time.Sleep(100 * time.Millisecond)
			continue
		}
		break
	}
	if s.logFile, err = os.OpenFile(filepath.Join(dir, "rankzip.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644); err == nil {
		s.log = slog.New(slog.NewJSONHandler(s.logFile, nil)).With("pid", os.Getpid())
		opts.Logger = tlog.NewStructuredLogger(slog.New(slog.NewJSONHandler(s.logFile, &slog.HandlerOptions{Level: slog.LevelWarn})))
	}
	for {
		if s.c, err = client.Dial(opts); err == nil {
			break
		}
		// Another process's server may still be starting (or its process
		// may have ended: then the caller sees the lock free and retries).
		if s.owner == nil || time.Now().After(deadline) || s.ownerGone() {
			s.Close()
			return nil, fmt.Errorf("connect to the embedded Temporal server at %s: %w", opts.HostPort, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if s.embedded == nil || mode == noWorker {
		return s, nil
	}
	st, err := store.Open(f.storeLoc())
	if err != nil {
		s.Close()
		return nil, err
	}
	k, err := kernels.Select(f.device)
	if err != nil {
		s.Close()
		return nil, err
	}
	a := &activities.Activities{Store: st, Backend: k, Log: s.log}
	if mode == queryWorker {
		w := worker.New(s.c, workflows.TaskQueue, worker.Options{LocalActivityWorkerOnly: true})
		workflows.Register(w, a)
		s.ws = []worker.Worker{w}
	} else {
		host, err := temporalconf.HostID("")
		if err != nil {
			s.Close()
			return nil, err
		}
		if s.ws, err = workflows.NewWorkers(s.c, a, k.Name() == "cuda", host, 1); err != nil {
			s.Close()
			return nil, err
		}
	}
	for _, w := range s.ws {
		if err := w.Start(); err != nil {
			s.Close()
			return nil, fmt.Errorf("start worker: %w", err)
		}
	}
	return s, nil
}

// Close stops the worker, the client and the embedded server.
func (s *session) Close() {
	for _, w := range s.ws {
		w.Stop()
	}
	if s.c != nil {
		s.c.Close()
	}
	if s.embedded != nil {
		s.embedded.Stop()
	}
	if s.logFile != nil {
		s.logFile.Close()
	}
}

// ownerGone reports whether the other process whose embedded server this
// session uses has let go of the state directory (it ended or crashed).
func (s *session) ownerGone() bool {
	if s.owner == nil {
		return false
	}
	f, err := os.OpenFile(filepath.Join(s.owner.dir, "lock"), os.O_RDWR, 0)
	if err != nil {
		return true
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		return false
	}
	syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
	return true
}

// where describes the service for messages.
func (s *session) where() string {
	switch {
	case s.external:
		return "the Temporal cluster"
	case s.owner != nil:
		return fmt.Sprintf("the embedded server of another rankzip process (pid %s, %s)", s.owner.pid, s.owner.hostPort)
	}
	return "the embedded server (" + s.embedded.hostPort + ")"
}

// signalContext is cancelled by SIGINT or SIGTERM.
func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}
