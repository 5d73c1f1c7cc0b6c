// Package testcluster starts a Temporal server (go.temporal.io/server, its
// state in SQLite) inside a test process, optionally with mutual TLS on its
// frontend, and makes the certificates for it. The production embedded
// server is cmd/rankzip's, and go.temporal.io/server/temporaltest serves
// plain gRPC on localhost; this one binds to a given address (a bridge
// that workers in other network namespaces reach) and can require client
// certificates.
package testcluster

import (
	"fmt"
	"net"
	"path/filepath"

	"go.temporal.io/server/common/config"
	tlog "go.temporal.io/server/common/log"
	sqliteplugin "go.temporal.io/server/common/persistence/sql/sqlplugin/sqlite"
	"go.temporal.io/server/schema/sqlite"
	"go.temporal.io/server/temporal"

	"github.com/rankzip/rankzip/internal/temporalserver"
)

// Namespace is the namespace the server creates.
const Namespace = "default"

// Server is a running server.
type Server struct {
	srv temporal.Server
	// HostPort is the frontend's address.
	HostPort string
}

// Options say where the server listens and whether it requires mTLS.
type Options struct {
	// BindIP is the address every service listens on (default 127.0.0.1).
	BindIP string
	// TLS, when set, makes the frontend require client certificates
	// signed by TLS.CA.
	TLS *Certs
}

// Start starts a server with its database and log under dir.
func Start(dir string, o Options) (*Server, error) {
	ip := o.BindIP
	if ip == "" {
		ip = "127.0.0.1"
	}
	ports, err := freePorts(ip, 8)
	if err != nil {
		return nil, err
	}
	hostPort := net.JoinHostPort(ip, fmt.Sprint(ports[0]))
	sqlCfg := &config.SQL{
		PluginName:        sqliteplugin.PluginName,
		DatabaseName:      filepath.Join(dir, "temporal.db"),
		ConnectAttributes: map[string]string{"mode": "rwc", "journal_mode": "wal"},
	}
	if err := sqlite.SetupSchema(sqlCfg); err != nil {
		return nil, fmt.Errorf("testcluster: schema: %w", err)
	}
	ns, err := sqlite.NewNamespaceConfig("active", Namespace, false, nil)
	if err != nil {
		return nil, err
	}
	if err := sqlite.CreateNamespaces(sqlCfg, ns); err != nil {
		return nil, err
	}
	cfg := temporalserver.Config(ip, hostPort, [4]int(ports[:4]), [4]int(ports[4:8]), sqlCfg)
	if c := o.TLS; c != nil {
		// The frontend requires a client certificate; the server's own
		// system worker presents one (the client's: any signed by the CA).
		client := config.ClientTLS{ServerName: c.ServerName, RootCAFiles: []string{c.CAFile}}
		cfg.Global.TLS.Frontend = config.GroupTLS{
			Server: config.ServerTLS{CertFile: c.ServerCertFile, KeyFile: c.ServerKeyFile, ClientCAFiles: []string{c.CAFile}, RequireClientAuth: true},
			Client: client,
		}
		cfg.Global.TLS.SystemWorker = config.WorkerTLS{CertFile: c.ClientCertFile, KeyFile: c.ClientKeyFile, Client: client}
	}
	logger := tlog.NewZapLogger(tlog.BuildZapLogger(tlog.Config{Level: "error", OutputFile: filepath.Join(dir, "server.log")}))
	srv, err := temporalserver.New(cfg, logger)
	if err != nil {
		return nil, fmt.Errorf("testcluster: %w", err)
	}
	if err := srv.Start(); err != nil {
		return nil, fmt.Errorf("testcluster: start: %w", err)
	}
	return &Server{srv: srv, HostPort: hostPort}, nil
}

// Stop stops the server.
func (s *Server) Stop() { s.srv.Stop() }

// freePorts lets the kernel choose n free ports on ip.
func freePorts(ip string, n int) ([]int, error) {
	var ports []int
	for range n {
		l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
		if err != nil {
			return nil, fmt.Errorf("testcluster: free port on %s: %w", ip, err)
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}
