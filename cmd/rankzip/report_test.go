package main

import (
	"encoding/json"
	"fmt"
	"image"
	_ "image/png"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rankzip/rankzip/report"
)

// A job writes its report into its output directory and names it;
// `rankzip report` renders it again from the directory and from the job;
// the page renders in a headless browser with its plots and without console
// messages; bad arguments are clear errors.
func TestReport(t *testing.T) {
	if testing.Short() {
		t.Skip("compresses a model on the embedded server")
	}
	eval, err := filepath.Abs(needFixture(t, "samples/eval.parquet"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	p := crashJob(t, dir)
	b, _ := os.ReadFile(p)
	b = append(b, fmt.Sprintf("evaluation: {data: %s, sequences: 8}\n", eval)...)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(dir, "state")
	out, _, err := rankzip("run", p, "--state", state)
	if err != nil {
		t.Fatal(err)
	}
	outDir := filepath.Join(dir, "out")
	htmlPath := filepath.Join(outDir, report.HTMLFile)
	if !strings.Contains(out, "report     "+htmlPath+"\n") {
		t.Errorf("the run's output does not name the report %s:\n%s", htmlPath, out)
	}
	page, err := os.ReadFile(htmlPath)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(page), "<svg"); n < 4 { // rank, kept, predicted error, time
		t.Errorf("the job's report has %d plots, want 4 or more", n)
	}

	// From the output directory, as JSON.
	js, _, err := rankzip("report", outDir, "--json")
	if err != nil {
		t.Fatal(err)
	}
	var d report.Data
	if err := json.Unmarshal([]byte(js), &d); err != nil {
		t.Fatalf("%v: %.300s", err, js)
	}
	var steps []string
	for _, s := range d.Timings {
		steps = append(steps, s.Name)
	}
	if !strings.HasPrefix(d.Job, "rankzip-") || len(d.Layers) != 5*7 || d.Compressed == nil || d.Compressed.KL == nil ||
		d.Params >= d.OriginalParams || d.KVBytesPerToken == 0 ||
		strings.Join(steps, ",") != "inspect,stages[0] svd,export,evaluate" {
		t.Errorf("report data: job %q, %d layers, compressed %v, params %d of %d, kv %d, steps %v",
			d.Job, len(d.Layers), d.Compressed, d.Params, d.OriginalParams, d.KVBytesPerToken, steps)
	}

	// From the job, through the embedded server.
	again := filepath.Join(dir, "again.html")
	if out, _, err := rankzip("report", d.Job, "--state", state, "--html", again); err != nil || !strings.Contains(out, again) {
		t.Fatalf("report from the job: %v %q", err, out)
	}
	if b, err := os.ReadFile(again); err != nil || strings.Count(string(b), "<svg") != strings.Count(string(page), "<svg") {
		t.Errorf("the report rendered from the job differs in its plots from the job's own: %v", err)
	}

	// Bad input.
	notOurs := t.TempDir()
	os.WriteFile(filepath.Join(notOurs, "config.json"), []byte(`{"model_type": "llama"}`), 0o644)
	onlySection := t.TempDir()
	os.WriteFile(filepath.Join(onlySection, "config.json"), []byte(`{"model_type": "llama", "rankzip": {"format": "native"}}`), 0o644)
	for _, c := range []struct{ arg, want string }{
		{"rankzip-0123456789abcdef", "no job rankzip-0123456789abcdef on the embedded server"},
		{notOurs, "is not a rankzip output: it has no rankzip-report.json, no job record (.rankzip-job.json) and no rankzip section in config.json"},
		{onlySection, "not by a job"},
		{filepath.Join(dir, "nowhere", "out"), "no output directory"},
		{"colour", "neither a directory nor a job id"},
	} {
		_, _, err := rankzip("report", c.arg, "--state", state)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("report %s: %v, want an error with %q", c.arg, err, c.want)
		}
	}

	t.Run("browser", func(t *testing.T) { checkInBrowser(t, htmlPath, os.Getenv("RANKZIP_SCREENSHOT")) })
}

// chromium returns the path of a Chromium binary, or "".
func chromium() string {
	for _, n := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(n); err == nil {
			return p
		}
	}
	return ""
}

// screenshot renders page in headless Chromium into a PNG and returns the
// console messages it logged.
func screenshot(t *testing.T, page, png string, width, height int) []string {
	t.Helper()
	bin := chromium()
	if bin == "" {
		t.Skip("no chromium (Debian: apt-get install chromium): the report is not checked in a browser")
	}
	abs, _ := filepath.Abs(page)
	cmd := exec.Command(bin, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
		fmt.Sprintf("--window-size=%d,%d", width, height), "--screenshot="+png,
		"--enable-logging=stderr", "--v=0", "--user-data-dir="+t.TempDir(), "file://"+abs)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("chromium: %v\n%s", err, out)
	}
	var console []string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, ":CONSOLE") {
			console = append(console, l)
		}
	}
	return console
}

// checkInBrowser opens the report in headless Chromium: no console message
// (a resource the page tried to load, which its policy refuses, would log
// one; the check is first shown to catch such a page), and plots drawn: the
// screenshot holds the coloured pixels of their lines and bars.
func checkInBrowser(t *testing.T, page, keep string) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.html")
	os.WriteFile(bad, []byte(`<!DOCTYPE html><html><head><meta http-equiv="Content-Security-Policy" content="default-src 'none'"></head>`+
		`<body><img src="https://example.invalid/x.png"></body></html>`), 0o644)
	if c := screenshot(t, bad, filepath.Join(dir, "bad.png"), 400, 300); len(c) == 0 {
		t.Fatal("a page loading an image from the network logged no console message: the console check sees nothing")
	}

	png := filepath.Join(dir, "report.png")
	if c := screenshot(t, page, png, 1280, 1500); len(c) > 0 {
		t.Errorf("the report logged console messages:\n%s", strings.Join(c, "\n"))
	}
	f, err := os.Open(png)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, _, err := image.Decode(f)
	if err != nil {
		t.Fatal(err)
	}
	// Text, tables and axes are grey; plotutil's line and bar colours are
	// saturated.
	colored, total := 0, 0
	bounds := img.Bounds()
	for y := bounds.Min.Y; y < bounds.Max.Y; y++ {
		for x := bounds.Min.X; x < bounds.Max.X; x++ {
			r, g, b, _ := img.At(x, y).RGBA()
			hi, lo := max(r, g, b)>>8, min(r, g, b)>>8
			if hi-lo > 60 {
				colored++
			}
			total++
		}
	}
	if share := float64(colored) / float64(total); share < 0.002 {
		t.Errorf("the screenshot has %d coloured pixels of %d: no plot drawn", colored, total)
	}
	t.Logf("screenshot %v: %d coloured pixels", bounds.Size(), colored)
	if keep != "" {
		b, _ := os.ReadFile(png)
		if err := os.WriteFile(keep, b, 0o644); err != nil {
			t.Error(err)
		}
	}
}
