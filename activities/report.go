package activities

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/rankzip/rankzip/internal/perm"
	"github.com/rankzip/rankzip/model"
	"github.com/rankzip/rankzip/recipe"
	"github.com/rankzip/rankzip/report"
)

// ReportInput is a finished job's report data.
type ReportInput struct {
	Data report.Data `json:"data"`
}

// ReportOutput names the report files written into the output directory.
type ReportOutput struct {
	HTML string `json:"html"`
	JSON string `json:"json"`
}

// Report writes the job's report (report.HTMLFile and report.JSONFile) into
// its output directory, which must hold the job's export. Writing the same
// data again gives the same files, so a retry is harmless.
func (a *Activities) Report(ctx context.Context, in ReportInput) (ReportOutput, error) {
	d := in.Data
	dir := d.Output
	if id, _ := recipe.ReadMarker(dir); id == "" || id != d.Job {
		return ReportOutput{}, badInput(fmt.Errorf("report: %s holds no export of job %s", dir, d.Job))
	}
	var out ReportOutput
	err := a.guard(func() error {
		var h, j bytes.Buffer
		if err := report.WriteHTML(&h, &d); err != nil {
			return badInput(err)
		}
		if err := report.WriteJSON(&j, &d); err != nil {
			return badInput(err)
		}
		out = ReportOutput{HTML: filepath.Join(dir, report.HTMLFile), JSON: filepath.Join(dir, report.JSONFile)}
		for _, f := range []struct {
			path string
			data []byte
		}{{out.JSON, j.Bytes()}, {out.HTML, h.Bytes()}} {
			if err := model.WriteFileAtomic(f.path, f.data); err != nil {
				return a.storeError(fmt.Errorf("report: %w", err))
			}
			os.Chmod(f.path, perm.File())
		}
		return nil
	})
	if err != nil {
		return ReportOutput{}, err
	}
	a.log().Info("report written", "job", d.Job, "html", out.HTML)
	return out, nil
}
