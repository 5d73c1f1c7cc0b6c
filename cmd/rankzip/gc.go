package main

import (
	"context"
	"fmt"
	"io"
	"regexp"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/workflowservice/v1"

	"github.com/rankzip/rankzip/store"
)

// runGC removes the store artifacts of the state directory that no
// completed or running job references.
func runGC(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("gc", "gc [--state DIR] [--dry-run]", stderr)
	sf := addServiceFlags(fs)
	dryRun := fs.Bool("dry-run", false, "print what would be freed, remove nothing")
	if _, err := parse(fs, args, 0); err != nil {
		return err
	}
	if sf.hostPort() != "" {
		return fmt.Errorf("gc collects the store of a state directory's embedded server; with a cluster, each worker's --store is its own")
	}
	st, err := store.Open(sf.storeLoc())
	if err != nil {
		return err
	}
	s, err := sf.connect(queryWorker)
	if err != nil {
		return err
	}
	defer s.Close()
	ctx := context.Background()
	live, jobs, running, since, err := liveArtifacts(ctx, s, sf.ns())
	if err != nil {
		return err
	}
	// A job just submitted may not be listed yet (the server indexes new
	// jobs asynchronously): whatever the store got in the last gcGrace is
	// kept, as the output of work in flight.
	if recent := time.Now().Add(-gcGrace); since.IsZero() || recent.Before(since) {
		since = recent
	}
	rep, err := st.Collect(live, since, *dryRun)
	if err != nil {
		return err
	}
	verb := "freed"
	if *dryRun {
		verb = "would free"
	}
	fmt.Fprintf(stdout, "gc %s: %s %d artifact(s), %s, and %d key record(s); kept %d (%s) referenced by %d completed and %d running job(s)\n",
		st.Root(), verb, rep.Objects, humanBytes(rep.Bytes), rep.Keys, rep.KeptObjects, humanBytes(rep.KeptBytes), jobs-running, running)
	return nil
}

var sha256Pattern = regexp.MustCompile(`[0-9a-f]{64}`)

// gcGrace is how long a fresh artifact is kept even when no job listed
// references it.
const gcGrace = 10 * time.Minute

// liveArtifacts returns the sha256 of every artifact named in the history of
// a completed or running job, the number of those jobs and of the running
// ones, and the start of the oldest running job less a minute (what the store
// wrote since may be the output of work not yet in a history), or the zero
// time when none runs. Failed, cancelled and terminated jobs, and jobs past
// the server's retention, reference nothing.
func liveArtifacts(ctx context.Context, s *session, ns string) (live map[string]bool, jobs, running int, since time.Time, err error) {
	live = map[string]bool{}
	var token []byte
	for {
		resp, err := s.c.ListWorkflow(ctx, &workflowservice.ListWorkflowExecutionsRequest{Namespace: ns, NextPageToken: token})
		if err != nil {
			return nil, 0, 0, since, fmt.Errorf("gc: list jobs: %w", err)
		}
		for _, w := range resp.Executions {
			switch w.GetStatus() {
			case enumspb.WORKFLOW_EXECUTION_STATUS_RUNNING:
				running++
				if t := w.GetStartTime().AsTime().Add(-time.Minute); since.IsZero() || t.Before(since) {
					since = t
				}
			case enumspb.WORKFLOW_EXECUTION_STATUS_COMPLETED:
			default:
				continue
			}
			jobs++
			it := s.c.GetWorkflowHistory(ctx, w.Execution.GetWorkflowId(), w.Execution.GetRunId(), false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
			for it.HasNext() {
				ev, err := it.Next()
				if err != nil {
					return nil, 0, 0, since, fmt.Errorf("gc: history of %s: %w", w.Execution.GetWorkflowId(), err)
				}
				// Payloads are JSON inside the event; the text form shows them.
				for _, m := range sha256Pattern.FindAllString(ev.String(), -1) {
					live[m] = true
				}
			}
		}
		if token = resp.NextPageToken; len(token) == 0 {
			return live, jobs, running, since, nil
		}
	}
}
