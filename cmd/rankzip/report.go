package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/converter"

	"github.com/rankzip/rankzip/model"
	"github.com/rankzip/rankzip/recipe"
	"github.com/rankzip/rankzip/report"
	"github.com/rankzip/rankzip/workflows"
)

// runReport renders a job's report: from the job's workflow (JOB: its id)
// or from the report data the job left in its output directory.
func runReport(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("report", "report JOB|OUTPUT_DIR [--html FILE] [--json] [flags]", stderr)
	sf := addServiceFlags(fs)
	htmlOut := fs.String("html", "", "write the HTML report to FILE (default: "+report.HTMLFile+" in the job's output directory; - for stdout)")
	asJSON := fs.Bool("json", false, "print the report's data as JSON (and write HTML only when --html is given)")
	pos, err := parse(fs, args, 1)
	if err != nil {
		return err
	}
	d, err := loadReport(sf, pos[0])
	if err != nil {
		return err
	}
	if *asJSON {
		if err := report.WriteJSON(stdout, d); err != nil {
			return err
		}
		if *htmlOut == "" {
			return nil
		}
	}
	var b bytes.Buffer
	if err := report.WriteHTML(&b, d); err != nil {
		return err
	}
	path := *htmlOut
	switch path {
	case "-":
		_, err := stdout.Write(b.Bytes())
		return err
	case "":
		if id, _ := recipe.ReadMarker(d.Output); id != d.Job {
			return fmt.Errorf("the output directory %s of job %s is gone or holds another job's export; choose where the report goes with --html FILE", d.Output, d.Job)
		}
		path = report.DefaultPath(d.Output)
	}
	if err := model.WriteFileAtomic(path, b.Bytes()); err != nil {
		return fmt.Errorf("report: %w", err)
	}
	if !*asJSON {
		fmt.Fprintf(stdout, "report %s\n", path)
	}
	return nil
}

// loadReport finds the report data of arg: an output directory (its
// report.JSONFile, else the job its marker names) or a job id.
func loadReport(sf *serviceFlags, arg string) (*report.Data, error) {
	st, err := os.Stat(arg)
	switch {
	case err == nil && st.IsDir():
		return reportOfDir(sf, arg)
	case err == nil:
		return nil, fmt.Errorf("%s is a file; give a job id or a job's output directory", arg)
	case strings.ContainsRune(arg, os.PathSeparator) || arg == "." || arg == "..":
		return nil, fmt.Errorf("no output directory %s: %w", arg, err)
	}
	if !strings.HasPrefix(arg, recipe.IDPrefix) {
		return nil, fmt.Errorf("%q is neither a directory nor a job id (job ids start with %q; rankzip run prints them)", arg, recipe.IDPrefix)
	}
	return reportOfJob(sf, arg)
}

// reportOfDir reads the report an export left in dir, or renders it from the
// job that wrote dir.
func reportOfDir(sf *serviceFlags, dir string) (*report.Data, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	d, err := report.ReadJSON(filepath.Join(abs, report.JSONFile))
	if err == nil {
		return d, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	id, merr := recipe.ReadMarker(abs)
	if merr == nil && id != "" {
		d, err := reportOfJob(sf, id)
		if err != nil {
			return nil, fmt.Errorf("%s holds no %s; its job %s: %w", abs, report.JSONFile, id, err)
		}
		return d, nil
	}
	if hasRankzipSection(abs) {
		return nil, fmt.Errorf("%s has a rankzip section in config.json but no %s and no job record (%s): it was written by a single command (rankzip compress, quantize, mla), not by a job; inspect it with: rankzip inspect %s",
			abs, report.JSONFile, recipe.Marker, abs)
	}
	return nil, fmt.Errorf("%s is not a rankzip output: it has no %s, no job record (%s) and no rankzip section in config.json", abs, report.JSONFile, recipe.Marker)
}

// hasRankzipSection reports whether dir's config.json has rankzip's section.
func hasRankzipSection(dir string) bool {
	b, err := os.ReadFile(filepath.Join(dir, "config.json"))
	if err != nil {
		return false
	}
	var cfg map[string]json.RawMessage
	if json.Unmarshal(b, &cfg) != nil {
		return false
	}
	_, ok := cfg[model.NativeSection]
	return ok
}

// reportOfJob renders the report of a finished job from its workflow: the
// result and the recipe it was started with.
func reportOfJob(sf *serviceFlags, id string) (*report.Data, error) {
	s, err := sf.connect(queryWorker)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	ctx := context.Background()
	st, err := describe(ctx, s, id)
	if err != nil {
		return nil, err
	}
	if st.Status != "completed" {
		if st.Error != "" {
			return nil, fmt.Errorf("job %s is %s (%s): it has no report", id, st.Status, st.Error)
		}
		return nil, fmt.Errorf("job %s is %s: it has no report until it completes", id, st.Status)
	}
	var res workflows.Result
	if err := s.c.GetWorkflow(ctx, id, "").Get(ctx, &res); err != nil {
		return nil, fmt.Errorf("job %s: %w", id, jobError(err))
	}
	in, err := jobInput(ctx, s, id)
	if err != nil {
		return nil, err
	}
	d := workflows.ReportData(res, in.Job)
	if st.Closed != nil {
		d.Created = *st.Closed
	}
	return &d, nil
}

// jobInput reads the input a job's workflow was started with.
func jobInput(ctx context.Context, s *session, id string) (workflows.Input, error) {
	var in workflows.Input
	it := s.c.GetWorkflowHistory(ctx, id, "", false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
	if !it.HasNext() {
		return in, fmt.Errorf("job %s has no history", id)
	}
	ev, err := it.Next()
	if err != nil {
		return in, fmt.Errorf("job %s: history: %w", id, err)
	}
	a := ev.GetWorkflowExecutionStartedEventAttributes()
	if a == nil {
		return in, fmt.Errorf("job %s: its history does not start with the workflow's start", id)
	}
	if err := converter.GetDefaultDataConverter().FromPayloads(a.GetInput(), &in); err != nil {
		return in, fmt.Errorf("job %s: its input: %w", id, err)
	}
	return in, nil
}
