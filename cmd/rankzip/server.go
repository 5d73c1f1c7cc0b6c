package main

import (
	"fmt"
	"io"
)

// runServer runs the embedded Temporal server of a state directory alone
// (and its Web UI with --ui) until interrupted, for cmd/worker processes and
// `rankzip submit --temporal` to use.
func runServer(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("server", "server [--ui] [--ui-port P] [--state DIR] [--port N]", stderr)
	sf := addServiceFlags(fs)
	addUIFlags(fs, sf)
	if _, err := parse(fs, args, 0); err != nil {
		return err
	}
	if sf.hostPort() != "" {
		return fmt.Errorf("server runs the embedded Temporal server; --temporal or TEMPORAL_ADDRESS names a cluster that runs its own")
	}
	ctx, stop := signalContext()
	defer stop()
	s, err := sf.connect(noWorker)
	if err != nil {
		return err
	}
	defer s.Close()
	if s.embedded == nil {
		return fmt.Errorf("the embedded server of %s is already running: %s", stateDir(sf.state), s.where())
	}
	ui, err := sessionUI(sf, s, stdout)
	if err != nil {
		return err
	}
	defer stopUI(ui)
	fmt.Fprintf(stdout, "Temporal server: %s (namespace %s, state in %s)\n", s.embedded.hostPort, sf.ns(), stateDir(sf.state))
	fmt.Fprintf(stdout, "workers: go run ./cmd/worker --temporal %s; jobs: rankzip submit RECIPE --temporal %s\n", s.embedded.hostPort, s.embedded.hostPort)
	fmt.Fprintln(stdout, "Ctrl-C stops it")
	<-ctx.Done()
	fmt.Fprintln(stdout, "stopping")
	return nil
}
