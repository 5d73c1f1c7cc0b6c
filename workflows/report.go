package workflows

import (
	"fmt"
	"time"

	"go.temporal.io/sdk/workflow"

	"github.com/rankzip/rankzip/activities"
	"github.com/rankzip/rankzip/recipe"
	"github.com/rankzip/rankzip/report"
)

// ReportData gathers a finished job's report: its recipe, the quality
// report, every stage's per-layer records and the time of each step.
func ReportData(res Result, job recipe.Job) report.Data {
	q := res.Quality
	d := report.Data{
		Job: res.ID, Output: res.Output, Recipe: job.Recipe, Backend: q.Backend,
		Params: q.Params, OriginalParams: q.OriginalParams, FileBytes: q.FileBytes, OriginalBytes: q.OriginalBytes,
		Files: len(res.Files), KVBytesPerToken: q.KVBytesPerToken, OriginalKVBytesPerToken: q.OriginalKVBytesPerToken,
		Original: q.Original, Compressed: q.Compressed,
		Layers: res.Layers, Timings: res.Timings, Elapsed: res.Elapsed, Skipped: res.Skipped,
	}
	if d.Output == "" {
		d.Output = job.Recipe.Output
	}
	for i, blocks := range res.Stages {
		if len(blocks) == 0 {
			continue
		}
		s := report.Stage{Index: i}
		if i < len(job.Recipe.Stages) {
			s.Method = string(job.Recipe.Stages[i].Method)
		}
		for _, b := range blocks {
			s.Quant = append(s.Quant, b.Quant...)
			s.EoRA = append(s.EoRA, b.EoRA...)
			if b.MLA != nil {
				s.MLA = append(s.MLA, *b.MLA)
			}
			for m, r := range b.Palu {
				if s.Palu == nil {
					s.Palu = map[string][]int{}
				}
				s.Palu[m] = r
			}
		}
		d.Stages = append(d.Stages, s)
	}
	return d
}

// stepTimer records when each step of a job began (workflow time, so
// replay gives the same times).
type stepTimer struct {
	names  []string
	starts []time.Time
}

// at notes that step name runs at t; a name equal to the last one's
// continues that step.
func (s *stepTimer) at(name string, t time.Time) {
	if n := len(s.names); n > 0 && s.names[n-1] == name {
		return
	}
	s.names = append(s.names, name)
	s.starts = append(s.starts, t)
}

// timings returns each step with the time it took, the last one until end.
func (s *stepTimer) timings(end time.Time) []report.Timing {
	var out []report.Timing
	for i, n := range s.names {
		next := end
		if i+1 < len(s.starts) {
			next = s.starts[i+1]
		}
		out = append(out, report.Timing{Name: n, Seconds: next.Sub(s.starts[i]).Seconds()})
	}
	return out
}

// stepName names the step a progress update is in.
func stepName(p *Progress) string {
	if p.Stage == StageBlocks {
		return fmt.Sprintf("stages[%d] %s", p.Step, p.Method)
	}
	return p.Stage
}

// writeReport runs the Report activity for a finished job. A report that
// cannot be written does not fail the job (its checkpoint is good): the
// result says why instead.
func writeReport(ctx workflow.Context, in Input, res *Result) {
	var a *activities.Activities
	ctx = workflow.WithActivityOptions(ctx, activityOptions(in))
	d := ReportData(*res, in.Job)
	d.Created = workflow.Now(ctx)
	var out activities.ReportOutput
	err := onExporter(ctx, in, res, "report", func(ctx workflow.Context) error {
		return workflow.ExecuteActivity(ctx, a.Report, activities.ReportInput{Data: d}).Get(ctx, &out)
	})
	if err != nil {
		res.ReportError = err.Error()
		workflow.GetLogger(ctx).Warn("report not written", "error", err)
		return
	}
	res.Report = out.HTML
}
