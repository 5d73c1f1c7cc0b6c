package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"time"

	uiserver "github.com/temporalio/ui-server/v2/server"
	uiconfig "github.com/temporalio/ui-server/v2/server/config"
	uiserveroptions "github.com/temporalio/ui-server/v2/server/server_options"
)

// The Temporal Web UI for the embedded server, served in-process by
// github.com/temporalio/ui-server/v2 (as `temporal server start-dev` does),
// on 127.0.0.1. Its port is chosen free at the first --ui in a state
// directory and recorded there (ui.json beside ports.json), so the URL stays
// the same across runs; --ui-port forces one (and is recorded).

// uiFlags are --ui and --ui-port.
type uiFlags struct {
	on   bool
	port int
}

// uiOf holds the --ui flags of a command's service flags (runOnce starts
// the UI of the session it opens).
var uiOf = map[*serviceFlags]*uiFlags{}

// addUIFlags defines --ui and --ui-port and ties them to sf (nil: the caller
// ties them with uiOf later).
func addUIFlags(fs *flag.FlagSet, sf *serviceFlags) *uiFlags {
	u := &uiFlags{}
	fs.BoolVar(&u.on, "ui", false, "serve the Temporal Web UI of the embedded server on 127.0.0.1 (its URL is printed)")
	fs.IntVar(&u.port, "ui-port", 0, "port of the Web UI (default: the one recorded in the state directory, chosen free at the first --ui)")
	if sf != nil {
		uiOf[sf] = u
	}
	return u
}

// webUI is a running Web UI server.
type webUI struct {
	srv *uiserver.Server
	url string
}

// Stop stops the UI server.
func (u *webUI) Stop() { u.srv.Stop() }

// uiFile records a state directory's UI port.
func uiFile(tdir string) string { return filepath.Join(tdir, "ui.json") }

// pickUIPort chooses the UI port of a new state directory; tests use
// kernelUIPort, so that they never take a port a user's state records.
var pickUIPort = randomUIPort

// randomUIPort finds a free port at a random place below the kernel's
// ephemeral range (as randomPorts does for the server).
func randomUIPort() (int, error) {
	lo, hi := 10000, ephemeralLow()-1
	if hi <= lo {
		lo, hi = 1024, 65535
	}
	for range 200 {
		p := lo + rand.IntN(hi-lo)
		if uiPortFree(p) == nil {
			return p, nil
		}
	}
	return 0, fmt.Errorf("found no free port for the Web UI in %d-%d; choose one with --ui-port N", lo, hi)
}

// kernelUIPort lets the kernel choose a free port.
func kernelUIPort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func uiPortFree(port int) error {
	l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		return err
	}
	return l.Close()
}

// resolveUIPort returns the UI port of the state directory tdir: forced,
// else recorded, else a new free one; it records the port and fails with a
// message naming the program that holds it when it is taken.
func resolveUIPort(tdir string, forced int) (int, error) {
	var rec struct {
		Port int `json:"port"`
	}
	path := uiFile(tdir)
	port := forced
	if port != 0 && (port < 1 || port > 65535) {
		return 0, fmt.Errorf("--ui-port %d is not a port", port)
	}
	if port == 0 {
		switch b, err := os.ReadFile(path); {
		case err == nil:
			if json.Unmarshal(b, &rec) != nil || rec.Port < 1 || rec.Port > 65535 {
				return 0, fmt.Errorf("Web UI: %s is not a record of a port; remove it to choose a new one", path)
			}
			port = rec.Port
		case errors.Is(err, os.ErrNotExist):
			if port, err = pickUIPort(); err != nil {
				return 0, fmt.Errorf("Web UI: %w", err)
			}
		default:
			return 0, fmt.Errorf("Web UI: %w", err)
		}
	}
	if err := uiPortFree(port); err != nil {
		who := "another program"
		if h := portHolder(port); h != "" {
			who += ": " + h
		}
		way := "stop that program or choose another port with --ui-port N"
		if forced == 0 {
			way += fmt.Sprintf(" (the port is recorded in %s)", path)
		}
		return 0, fmt.Errorf("Web UI: port %d on 127.0.0.1 is in use by %s; %s", port, who, way)
	}
	rec.Port = port
	b, _ := json.Marshal(rec)
	if err := os.MkdirAll(tdir, 0o755); err != nil {
		return 0, fmt.Errorf("Web UI: %w", err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		return 0, fmt.Errorf("Web UI: record its port: %w", err)
	}
	return port, nil
}

// startUI serves the Web UI for the frontend at hostPort and returns once
// it answers.
func startUI(tdir, frontend, namespace string, forced int) (*webUI, error) {
	port, err := resolveUIPort(tdir, forced)
	if err != nil {
		return nil, err
	}
	cfg := &uiconfig.Config{
		Host:                "127.0.0.1",
		Port:                port,
		TemporalGRPCAddress: frontend,
		EnableUI:            true,
		DefaultNamespace:    namespace,
		DisableNewsFetch:    true, // nothing from the network
		HideLogs:            true,
		CORS:                uiconfig.CORS{CookieInsecure: true}, // plain http on 127.0.0.1
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("Web UI: %w", err)
	}
	srv := uiserver.NewServer(uiserveroptions.WithConfigProvider(cfg))
	go srv.Start() // it exits the process if it cannot listen: the port was just checked free
	u := &webUI{srv: srv, url: fmt.Sprintf("http://127.0.0.1:%d", port)}
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get(u.url + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return u, nil
			}
		}
		if time.Now().After(deadline) {
			srv.Stop()
			return nil, fmt.Errorf("Web UI on %s did not answer within 10 s: %v", u.url, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// workflowURL is the UI's page of a job.
func (u *webUI) workflowURL(namespace, id string) string {
	return fmt.Sprintf("%s/namespaces/%s/workflows/%s", u.url, url.PathEscape(namespace), url.PathEscape(id))
}

// sessionUI starts the Web UI of session s when sf asked for one (--ui) and
// this process runs the embedded server, and says where it is. The caller
// stops it (a nil *webUI is fine to Stop via stopUI).
func sessionUI(sf *serviceFlags, s *session, w io.Writer) (*webUI, error) {
	u := uiOf[sf]
	if u == nil || !u.on {
		return nil, nil
	}
	switch {
	case s.external:
		fmt.Fprintf(w, "--ui: the Web UI of a Temporal cluster is the cluster's own; none served here\n")
		return nil, nil
	case s.embedded == nil:
		fmt.Fprintf(w, "--ui: another rankzip process runs the embedded server (%s); it serves the Web UI if it was started with --ui\n", s.where())
		return nil, nil
	}
	ui, err := startUI(filepath.Join(stateDir(sf.state), "temporal"), s.embedded.hostPort, sf.ns(), u.port)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(w, "Temporal Web UI: %s\n", ui.url)
	return ui, nil
}

// stopUI stops u if it runs.
func stopUI(u *webUI) {
	if u != nil {
		u.Stop()
	}
}
