package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"go.temporal.io/server/common/authorization"
	"go.temporal.io/server/common/cluster"
	"go.temporal.io/server/common/config"
	"go.temporal.io/server/common/dynamicconfig"
	tlog "go.temporal.io/server/common/log"
	"go.temporal.io/server/common/metrics"
	sqliteplugin "go.temporal.io/server/common/persistence/sql/sqlplugin/sqlite"
	"go.temporal.io/server/schema/sqlite"
	"go.temporal.io/server/temporal"
)

// The embedded Temporal server: go.temporal.io/server in-process with its
// state in a SQLite file (WAL) under the state directory and FIXED ports, so
// that a killed `rankzip run` restarts and resumes in seconds (with new ports
// the restarted server would route to the dead process's membership rows for
// ~45 s). A lock file keeps two processes from opening the same database.

// defaultPort is the embedded frontend's port; the server uses port..port+8.
const defaultPort = 17233

const embeddedNamespace = "default"

// embeddedPort returns --port, else $RANKZIP_PORT, else defaultPort.
func embeddedPort(flagValue int) (int, error) {
	if flagValue != 0 {
		return flagValue, nil
	}
	if v := os.Getenv("RANKZIP_PORT"); v != "" {
		p, err := strconv.Atoi(v)
		if err != nil || p <= 0 || p > 65535-8 {
			return 0, fmt.Errorf("RANKZIP_PORT=%q is not a port", v)
		}
		return p, nil
	}
	return defaultPort, nil
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
func lockState(dir string, port int) (*os.File, error) {
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
			busy := &errBusy{dir: dir, pid: "?", hostPort: fmt.Sprintf("127.0.0.1:%d", port)}
			if len(fields) >= 2 {
				busy.pid, busy.hostPort = fields[0], fields[1]
			}
			return nil, busy
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	f.Truncate(0)
	fmt.Fprintf(f, "%d 127.0.0.1:%d\n", os.Getpid(), port)
	f.Sync()
	return f, nil
}

// startEmbedded starts the server with its state in dir (creating the
// database on first use) and returns once its frontend accepts calls.
func startEmbedded(dir string, port int) (*embedded, error) {
	lock, err := lockState(dir, port)
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			lock.Close()
		}
	}()
	dbFile := filepath.Join(dir, "temporal.db")
	hostPort := fmt.Sprintf("127.0.0.1:%d", port)
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
	svc := func(i int) config.Service {
		return config.Service{RPC: config.RPC{GRPCPort: port + i, MembershipPort: port + 4 + i, BindOnIP: "127.0.0.1"}}
	}
	cfg := &config.Config{}
	cfg.Global.Membership = config.Membership{MaxJoinDuration: 30 * time.Second, BroadcastAddress: "127.0.0.1"}
	cfg.Global.Metrics = &metrics.Config{Prometheus: &metrics.PrometheusConfig{
		ListenAddress: fmt.Sprintf("127.0.0.1:%d", port+8), HandlerPath: "/metrics"}}
	cfg.Persistence = config.Persistence{DefaultStore: "sqlite", VisibilityStore: "sqlite", NumHistoryShards: 1,
		DataStores: map[string]config.DataStore{"sqlite": {SQL: sqlCfg}}}
	cfg.ClusterMetadata = &cluster.Config{FailoverVersionIncrement: 10, MasterClusterName: "active", CurrentClusterName: "active",
		ClusterInformation: map[string]cluster.ClusterInformation{"active": {Enabled: true, InitialFailoverVersion: 1, RPCAddress: hostPort}}}
	cfg.DCRedirectionPolicy = config.DCRedirectionPolicy{Policy: "noop"}
	cfg.Services = map[string]config.Service{"frontend": svc(0), "history": svc(1), "matching": svc(2), "worker": svc(3)}
	cfg.Archival = config.Archival{History: config.HistoryArchival{State: "disabled"}, Visibility: config.VisibilityArchival{State: "disabled"}}
	cfg.NamespaceDefaults = config.NamespaceDefaults{Archival: config.ArchivalNamespaceDefaults{
		History: config.HistoryArchivalNamespaceDefaults{State: "disabled"}, Visibility: config.VisibilityArchivalNamespaceDefaults{State: "disabled"}}}
	cfg.PublicClient = config.PublicClient{HostPort: hostPort}

	logger := tlog.NewZapLogger(tlog.BuildZapLogger(tlog.Config{Level: "error", OutputFile: filepath.Join(dir, "server.log")}))
	authorizer, err := authorization.GetAuthorizerFromConfig(&cfg.Global.Authorization)
	if err != nil {
		return nil, fmt.Errorf("embedded temporal: %w", err)
	}
	claims, err := authorization.GetClaimMapperFromConfig(&cfg.Global.Authorization, logger)
	if err != nil {
		return nil, fmt.Errorf("embedded temporal: %w", err)
	}
	srv, err := temporal.NewServer(
		temporal.WithConfig(cfg),
		temporal.ForServices(temporal.DefaultServices),
		temporal.WithLogger(logger),
		temporal.WithAuthorizer(authorizer),
		temporal.WithClaimMapper(func(*config.Config) authorization.ClaimMapper { return claims }),
		temporal.WithDynamicConfigClient(dynamicconfig.StaticClient{}),
	)
	if err != nil {
		return nil, fmt.Errorf("embedded temporal: %w", err)
	}
	if err := srv.Start(); err != nil {
		return nil, fmt.Errorf("embedded temporal: start (ports %d-%d must be free; set --port or RANKZIP_PORT): %w", port, port+8, err)
	}
	ok = true
	return &embedded{srv: srv, lock: lock, hostPort: hostPort}, nil
}

// Stop stops the server and releases the lock.
func (e *embedded) Stop() {
	e.srv.Stop()
	e.lock.Close()
}
