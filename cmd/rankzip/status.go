package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/serviceerror"
	"go.temporal.io/sdk/converter"

	"github.com/rankzip/rankzip/activities"
	"github.com/rankzip/rankzip/workflows"
)

// jobStatus is what `rankzip status --json` prints.
type jobStatus struct {
	ID       string              `json:"id"`
	Status   string              `json:"status"` // running, completed, failed, canceled, terminated, timedout
	Progress *workflows.Progress `json:"progress,omitempty"`
	Pending  []pendingActivity   `json:"pending,omitempty"`
	Error    string              `json:"error,omitempty"`
	Started  time.Time           `json:"started"`
	Closed   *time.Time          `json:"closed,omitempty"`
}

type pendingActivity struct {
	Activity    string               `json:"activity"`
	State       string               `json:"state"`
	Attempt     int32                `json:"attempt"`
	Heartbeat   *activities.Progress `json:"heartbeat,omitempty"`
	LastFailure string               `json:"last_failure,omitempty"`
}

func describe(ctx context.Context, s *session, id string) (jobStatus, error) {
	d, err := s.c.DescribeWorkflowExecution(ctx, id, "")
	if err != nil {
		if _, ok := err.(*serviceerror.NotFound); ok {
			return jobStatus{}, fmt.Errorf("no job %s on %s", id, s.where())
		}
		return jobStatus{}, err
	}
	info := d.WorkflowExecutionInfo
	st := jobStatus{ID: id, Status: strings.ToLower(info.GetStatus().String()),
		Started: info.GetStartTime().AsTime()}
	if info.GetCloseTime() != nil {
		t := info.GetCloseTime().AsTime()
		st.Closed = &t
	}
	for _, pa := range d.PendingActivities {
		p := pendingActivity{Activity: pa.GetActivityType().GetName(), Attempt: pa.GetAttempt(),
			State: strings.ToLower(pa.GetState().String())}
		if hd := pa.GetHeartbeatDetails(); hd != nil {
			var hp activities.Progress
			if converter.GetDefaultDataConverter().FromPayloads(hd, &hp) == nil {
				p.Heartbeat = &hp
			}
		}
		if f := pa.GetLastFailure(); f != nil {
			p.LastFailure = f.GetMessage()
		}
		st.Pending = append(st.Pending, p)
	}
	if p, err := queryProgress(ctx, s.c, id); err == nil {
		st.Progress = &p
	}
	if info.GetStatus() != enumspb.WORKFLOW_EXECUTION_STATUS_RUNNING {
		var res workflows.Result
		if err := s.c.GetWorkflow(ctx, id, "").Get(ctx, &res); err != nil {
			st.Error = jobError(err).Error()
		}
	}
	return st, nil
}

// openJob parses the arguments of a command on one job (its ID and flags)
// and connects to the service it runs on.
func openJob(fs *flag.FlagSet, sf *serviceFlags, args []string) (*session, string, error) {
	pos, err := parse(fs, args, 1)
	if err != nil {
		return nil, "", err
	}
	s, err := sf.connect(queryWorker)
	if err != nil {
		return nil, "", err
	}
	return s, pos[0], nil
}

// writeJSON prints v as indented JSON.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func runStatus(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("status", "status ID [--json] [flags]", stderr)
	sf := addServiceFlags(fs)
	asJSON := fs.Bool("json", false, "print one JSON object")
	s, id, err := openJob(fs, sf, args)
	if err != nil {
		return err
	}
	defer s.Close()
	st, err := describe(context.Background(), s, id)
	if err != nil {
		return err
	}
	if *asJSON {
		return writeJSON(stdout, st)
	}
	fmt.Fprintf(stdout, "job      %s\nstatus   %s\n", st.ID, st.Status)
	if st.Progress != nil {
		line, _ := progressLine(*st.Progress, time.Now())
		fmt.Fprintf(stdout, "progress %s\n", line)
	}
	for _, p := range st.Pending {
		fmt.Fprintf(stdout, "activity %s (%s, attempt %d)", p.Activity, p.State, p.Attempt)
		if h := p.Heartbeat; h != nil {
			fmt.Fprintf(stdout, " last heartbeat: %s block %d %s", h.Stage, h.Block, h.Phase)
		}
		if p.LastFailure != "" {
			fmt.Fprintf(stdout, " last failure: %s", p.LastFailure)
		}
		fmt.Fprintln(stdout)
	}
	if st.Error != "" {
		fmt.Fprintf(stdout, "error    %s\n", st.Error)
	}
	if st.Status == "running" && s.embedded != nil {
		fmt.Fprintln(stdout, "note     no rankzip process is working on it: run its recipe again to resume it")
	}
	return nil
}

func runWatch(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("watch", "watch ID [flags]", stderr)
	sf := addServiceFlags(fs)
	s, id, err := openJob(fs, sf, args)
	if err != nil {
		return err
	}
	defer s.Close()
	ctx, stop := signalContext()
	defer stop()
	st, err := describe(ctx, s, id)
	if err != nil {
		return err
	}
	if st.Status == "running" && s.embedded != nil {
		return fmt.Errorf("no rankzip process is working on job %s: run its recipe again to resume it", st.ID)
	}
	res, err := follow(ctx, s, id, stderr)
	if ctx.Err() != nil {
		return errUsage
	}
	if err != nil {
		return fmt.Errorf("job %s failed: %w", id, jobError(err))
	}
	return printResult(stdout, res, false)
}

func runCancel(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("cancel", "cancel ID [flags]", stderr)
	sf := addServiceFlags(fs)
	wait := fs.Duration("wait", time.Minute, "how long to wait for the job to stop")
	s, id, err := openJob(fs, sf, args)
	if err != nil {
		return err
	}
	defer s.Close()
	ctx := context.Background()
	if _, err := describe(ctx, s, id); err != nil {
		return err
	}
	if err := s.c.CancelWorkflow(ctx, id, ""); err != nil {
		return fmt.Errorf("cancel %s: %w", id, err)
	}
	wctx, cancel := context.WithTimeout(ctx, *wait)
	defer cancel()
	err = s.c.GetWorkflow(wctx, id, "").Get(wctx, nil)
	if wctx.Err() != nil {
		fmt.Fprintf(stdout, "job %s: cancel requested; it stops when its running step does\n", id)
		return nil
	}
	fmt.Fprintf(stdout, "job %s canceled", id)
	if err == nil {
		fmt.Fprint(stdout, " (it had already completed)")
	}
	fmt.Fprintln(stdout)
	return nil
}

func runResult(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("result", "result ID [--json] [flags]", stderr)
	sf := addServiceFlags(fs)
	asJSON := fs.Bool("json", false, "print one JSON object")
	s, id, err := openJob(fs, sf, args)
	if err != nil {
		return err
	}
	defer s.Close()
	ctx := context.Background()
	st, err := describe(ctx, s, id)
	if err != nil {
		return err
	}
	if st.Status == "running" {
		line := ""
		if st.Progress != nil {
			line, _ = progressLine(*st.Progress, time.Now())
		}
		return fmt.Errorf("job %s is still running: %s", st.ID, line)
	}
	var res workflows.Result
	if err := s.c.GetWorkflow(ctx, id, "").Get(ctx, &res); err != nil {
		if *asJSON {
			json.NewEncoder(stdout).Encode(st)
		}
		return fmt.Errorf("job %s %s: %w", st.ID, st.Status, jobError(err))
	}
	return printResult(stdout, res, *asJSON)
}
