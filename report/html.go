package report

import (
	"fmt"
	"html/template"
	"io"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/rankzip/rankzip/model"
	"github.com/rankzip/rankzip/recipe"
)

// figure is one plot of the page.
type figure struct {
	Title string
	SVG   template.HTML
	Note  string
}

// page is what the template shows.
type page struct {
	*Data
	RecipeYAML string
	Summary    [][3]string // what, original, compressed
	Quality    []qualityRow
	Figures    []figure
	Timings    []timingRow
	Layers     []layerRow
	// ElapsedText is the job's time, to the millisecond.
	ElapsedText string
}

type qualityRow struct {
	Model, PPL, NLL, KL, Top1, Sequences, Tokens string
}

type timingRow struct{ Name, Took, Share string }

type layerRow struct {
	Name, Shape, Rank, Kept, Error string
}

// WriteHTML renders d as a self-contained HTML page: inline CSS and SVG
// only, and a content security policy that lets the page load nothing.
func WriteHTML(w io.Writer, d *Data) error {
	pg, err := build(d)
	if err != nil {
		return err
	}
	return pageTemplate.Execute(w, pg)
}

func build(d *Data) (*page, error) {
	pg := &page{Data: d, ElapsedText: d.Elapsed.Round(time.Millisecond).String()}
	if y, err := yaml.Marshal(d.Recipe); err == nil {
		pg.RecipeYAML = string(y)
	}
	pct := func(a, b int64) string {
		if b == 0 {
			return ""
		}
		return fmt.Sprintf(" (%.1f%%)", 100*float64(a)/float64(b))
	}
	pg.Summary = [][3]string{
		{"parameters", commas(d.OriginalParams), commas(d.Params) + pct(d.Params, d.OriginalParams)},
		{"size on disk", humanBytes(d.OriginalBytes), humanBytes(d.FileBytes) + pct(d.FileBytes, d.OriginalBytes)},
		{"KV cache per token (16-bit)", commas(d.OriginalKVBytesPerToken) + " B", commas(d.KVBytesPerToken) + " B" + pct(d.KVBytesPerToken, d.OriginalKVBytesPerToken)},
	}
	if o := d.Original; o != nil {
		pg.Quality = append(pg.Quality, qualityRow{Model: "original", PPL: fmt.Sprintf("%.4f", o.PPL), NLL: fmt.Sprintf("%.4f", o.NLL),
			KL: "–", Top1: "–", Sequences: fmt.Sprint(o.Sequences), Tokens: commas(int64(o.Tokens))})
	}
	if c := d.Compressed; c != nil {
		r := qualityRow{Model: "compressed (exported, read back)", PPL: fmt.Sprintf("%.4f", c.PPL), NLL: fmt.Sprintf("%.4f", c.NLL),
			KL: "–", Top1: "–", Sequences: fmt.Sprint(c.Sequences), Tokens: commas(int64(c.Tokens))}
		if c.KL != nil {
			r.KL = fmt.Sprintf("%.4g", *c.KL)
		}
		if c.Top1Agree != nil {
			r.Top1 = fmt.Sprintf("%.4f", *c.Top1Agree)
		}
		pg.Quality = append(pg.Quality, r)
	}
	if err := pg.figures(); err != nil {
		return nil, err
	}
	var total float64
	for _, t := range d.Timings {
		total += t.Seconds
	}
	for _, t := range d.Timings {
		share := ""
		if total > 0 {
			share = fmt.Sprintf("%.1f%%", 100*t.Seconds/total)
		}
		pg.Timings = append(pg.Timings, timingRow{t.Name, (time.Duration(t.Seconds * float64(time.Second))).Round(time.Millisecond).String(), share})
	}
	for _, l := range d.Layers {
		r := layerRow{Name: l.Name, Shape: fmt.Sprintf("%d × %d", l.Out, l.In), Rank: fmt.Sprint(l.Rank),
			Kept: fmt.Sprintf("%.1f%%", 100*keptShare(l)), Error: fmt.Sprintf("%.4g", l.PredictedError)}
		if l.Dense {
			r.Rank = "dense"
		}
		if l.Unrouted {
			r.Rank = "dense (no token routed)" // an expert without calibration statistics
		}
		pg.Layers = append(pg.Layers, r)
	}
	return pg, nil
}

// keptShare is the share of a layer's parameters its factors keep.
func keptShare(l model.LowRankReport) float64 {
	if l.Dense || l.Out*l.In == 0 {
		return 1
	}
	return float64(l.Rank*(l.Out+l.In)) / float64(l.Out*l.In)
}

// figures makes the plots: the low-rank stage's kept rank, kept parameters
// and predicted error per layer; each later stage's own records; the time of
// each step.
func (pg *page) figures() error {
	add := func(title, note string, svg template.HTML, err error) error {
		if err != nil {
			return fmt.Errorf("report: plot %q: %w", title, err)
		}
		if svg != "" {
			pg.Figures = append(pg.Figures, figure{Title: title, SVG: svg, Note: note})
		}
		return nil
	}
	d := pg.Data
	name := func(l model.LowRankReport) string { return l.Name }
	if len(d.Layers) > 0 {
		method := "low-rank"
		for _, s := range d.Recipe.Stages {
			if s.Method == recipe.MethodSVD || s.Method == recipe.MethodLoRD {
				method = string(s.Method)
				break
			}
		}
		svg, err := linePlot("Kept rank per layer ("+method+")", "rank",
			byModule(d.Layers, name, func(l model.LowRankReport) (float64, bool) {
				if l.Dense {
					return float64(min(l.Out, l.In)), true
				}
				return float64(l.Rank), true
			}), false)
		if err := add("Kept rank", "Rank of each factored matrix; a matrix kept dense shows its full rank.", svg, err); err != nil {
			return err
		}
		svg, err = linePlot("Kept parameters per layer", "% of the matrix's parameters",
			byModule(d.Layers, name, func(l model.LowRankReport) (float64, bool) { return 100 * keptShare(l), true }), false)
		if err := add("Kept parameters", "r·(out+in) / (out·in) of each matrix; 100% for a matrix kept dense.", svg, err); err != nil {
			return err
		}
		svg, err = linePlot("Predicted calibration error per layer", "error (log)",
			byModule(d.Layers, name, func(l model.LowRankReport) (float64, bool) { return l.PredictedError, !l.Dense }), true)
		if err := add("Predicted calibration error", "The method's own error of each compressed matrix on the calibration statistics.", svg, err); err != nil {
			return err
		}
	}
	for _, s := range d.Stages {
		tag := fmt.Sprintf("stages[%d] %s", s.Index, s.Method)
		if len(s.Quant) > 0 {
			svg, err := linePlot("Quantization error per layer ("+tag+")", "relative calibration error (log)",
				byModule(s.Quant, func(q model.QuantReport) string { return q.Name },
					func(q model.QuantReport) (float64, bool) { return q.RelError, true }), true)
			if err := add("Quantization error", "tr(ΔW C ΔWᵀ) / tr(W C Wᵀ) of each quantized matrix under its calibration Gram C.", svg, err); err != nil {
				return err
			}
		}
		if len(s.EoRA) > 0 {
			svg, err := linePlot("EoRA: error after / before per layer ("+tag+")", "ratio",
				byModule(s.EoRA, func(e model.EoRAReport) string { return e.Name },
					func(e model.EoRAReport) (float64, bool) { return e.ErrorAfter / e.ErrorBefore, e.ErrorBefore > 0 }), false)
			if err := add("EoRA correction", "Calibration error of each corrected matrix after the correction, as a share of the error before.", svg, err); err != nil {
				return err
			}
		}
		if len(s.Palu) > 0 {
			svg, err := linePlot("Palu latent rank per layer ("+tag+")", "latent values per token", paluSeries(s.Palu), false)
			if err := add("Palu latent rank", "Sum over the groups of each projection's latent rank: the values cached per token.", svg, err); err != nil {
				return err
			}
		}
		if len(s.MLA) > 0 {
			var rope, latent series
			rope.name, latent.name = "key energy in the rope dims", "[k_nope; v] energy in the latent"
			for _, l := range s.MLA {
				rope.x, rope.y = append(rope.x, float64(l.Layer)), append(rope.y, l.RopeShare)
				latent.x, latent.y = append(latent.x, float64(l.Layer)), append(latent.y, l.LatentShare)
			}
			svg, err := linePlot("MLA conversion per layer ("+tag+")", "share", []series{rope, latent}, false)
			if err := add("MLA conversion", "", svg, err); err != nil {
				return err
			}
		}
	}
	if len(d.Timings) > 0 {
		var names []string
		var secs []float64
		for _, t := range d.Timings {
			names = append(names, t.Name)
			secs = append(secs, t.Seconds)
		}
		svg, err := barPlot("Time per step", "seconds", names, secs)
		if err := add("Time per step", "", svg, err); err != nil {
			return err
		}
	}
	return nil
}

func commas(n int64) string {
	s := fmt.Sprint(n)
	neg := n < 0
	if neg {
		s = s[1:]
	}
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	if neg {
		s = "-" + s
	}
	return s
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

var pageTemplate = template.Must(template.New("report").Parse(`<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; img-src data:">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>rankzip report: {{.Job}}</title>
<style>
body { font-family: sans-serif; margin: 1.5em auto; max-width: 1200px; color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: .5em 0; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f3f3; }
pre { background: #f6f6f6; padding: .8em; overflow-x: auto; }
.meta { color: #555; }
.figures { display: flex; flex-wrap: wrap; gap: 1em; }
figure { margin: 0; flex: 1 1 560px; max-width: 100%; }
figure svg { width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: .9em; }
</style>
</head>
<body>
<h1>rankzip report</h1>
<p class="meta">job <code>{{.Job}}</code><br>output <code>{{.Output}}</code>{{if .Backend}}<br>backend {{.Backend}}{{end}}{{if not .Created.IsZero}}<br>finished {{.Created.UTC.Format "2006-01-02 15:04:05 UTC"}}{{end}}</p>

<h2>Size</h2>
<table>
<tr><th></th><th>original</th><th>compressed</th></tr>
{{range .Summary}}<tr><td>{{index . 0}}</td><td>{{index . 1}}</td><td>{{index . 2}}</td></tr>
{{end}}</table>

<h2>Quality</h2>
{{if .Quality}}<table>
<tr><th>model</th><th>perplexity</th><th>NLL</th><th>KL(original ‖ model)</th><th>top-1 agreement</th><th>sequences</th><th>tokens</th></tr>
{{range .Quality}}<tr><td>{{.Model}}</td><td>{{.PPL}}</td><td>{{.NLL}}</td><td>{{.KL}}</td><td>{{.Top1}}</td><td>{{.Sequences}}</td><td>{{.Tokens}}</td></tr>
{{end}}</table>
<p class="meta">Measured once, on the exported checkpoint read back from disk, against the original model; stages are not measured one by one.</p>
{{else}}<p>Not measured: the recipe has no evaluation set.</p>{{end}}

<h2>Per layer</h2>
{{if .Figures}}<div class="figures">
{{range .Figures}}<figure>{{.SVG}}{{if .Note}}<figcaption>{{.Note}}</figcaption>{{end}}</figure>
{{end}}</div>{{else}}<p>No per-layer records.</p>{{end}}

{{if .Timings}}<h2>Time</h2>
<table>
<tr><th>step</th><th>took</th><th>share</th></tr>
{{range .Timings}}<tr><td>{{.Name}}</td><td>{{.Took}}</td><td>{{.Share}}</td></tr>
{{end}}</table>
<p class="meta">Whole job: {{.ElapsedText}}{{if .Skipped}}; {{.Skipped}} block(s) found done in the store{{end}}.</p>{{end}}

<h2>Recipe</h2>
<pre>{{.RecipeYAML}}</pre>

{{if .Layers}}<details>
<summary>Every compressed matrix ({{len .Layers}})</summary>
<table>
<tr><th>matrix</th><th>shape</th><th>rank</th><th>kept</th><th>predicted error</th></tr>
{{range .Layers}}<tr><td>{{.Name}}</td><td>{{.Shape}}</td><td>{{.Rank}}</td><td>{{.Kept}}</td><td>{{.Error}}</td></tr>
{{end}}</table>
</details>{{end}}
</body>
</html>
`))
