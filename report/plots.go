package report

import (
	"bytes"
	"fmt"
	"html/template"
	"math"
	"strconv"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgsvg"
)

// Plot sizes in points.
const (
	plotWidth  = 560
	plotHeight = 300
)

// svgOf draws p as an SVG element for inline use (no XML prolog).
func svgOf(p *plot.Plot, w, h vg.Length) (template.HTML, error) {
	c := vgsvg.New(w, h)
	// A margin on the right: gonum's axes end at the canvas edge, where
	// the last tick label would be cut.
	p.Draw(draw.Crop(draw.New(c), 0, -vg.Points(14), 0, -vg.Points(2)))
	var buf bytes.Buffer
	if _, err := c.WriteTo(&buf); err != nil {
		return "", err
	}
	b := buf.Bytes()
	i := bytes.Index(b, []byte("<svg"))
	if i < 0 {
		return "", fmt.Errorf("report: the SVG canvas wrote no <svg> element")
	}
	return template.HTML(b[i:]), nil
}

// linePlot plots each series as a line with points, x the layer index.
// With logY, values ≤ 0 are left out and the y axis is logarithmic.
func linePlot(title, ylabel string, ss []series, logY bool) (template.HTML, error) {
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = "layer"
	p.Y.Label.Text = ylabel
	p.Legend.Top = true
	p.Legend.Left = false
	p.X.Tick.Marker = layerTicks{}
	n := 0
	for i, s := range ss {
		var xy plotter.XYs
		for j := range s.x {
			y := s.y[j]
			if math.IsNaN(y) || math.IsInf(y, 0) || (logY && y <= 0) {
				continue
			}
			xy = append(xy, plotter.XY{X: s.x[j], Y: y})
		}
		if len(xy) == 0 {
			continue
		}
		l, pts, err := plotter.NewLinePoints(xy)
		if err != nil {
			return "", err
		}
		l.Color = plotutil.Color(i)
		l.Dashes = plotutil.Dashes(i / 7)
		pts.Color = plotutil.Color(i)
		pts.Shape = plotutil.Shape(i)
		p.Add(l, pts)
		p.Legend.Add(s.name, l, pts)
		n++
	}
	if n == 0 {
		return "", nil
	}
	// Room above the data for the legend (about 12 points a row of a plot
	// area of about 240), so that it covers no line.
	frac := math.Min(0.6, float64(n+1)*12/240)
	lo, hi := p.Y.Min, p.Y.Max
	if logY {
		lo, hi = math.Log10(math.Max(lo, 1e-300)), math.Log10(math.Max(hi, 1e-300))
	}
	if hi == lo {
		hi, lo = hi+0.5, lo-0.5
	}
	hi += (hi - lo) * frac / (1 - frac)
	if logY {
		p.Y.Scale = plot.LogScale{}
		p.Y.Min, p.Y.Max = math.Pow(10, lo), math.Pow(10, hi)
		if hi-lo < 2 {
			// Powers of ten alone would leave the axis without labels.
			p.Y.Tick.Marker = shortTicks{plot.DefaultTicks{}}
		} else {
			p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
		}
	} else {
		p.Y.Min, p.Y.Max = lo, hi
		p.Y.Tick.Marker = shortTicks{plot.DefaultTicks{}}
	}
	p.Add(plotter.NewGrid())
	return svgOf(p, plotWidth, plotHeight)
}

// barPlot plots one bar per name.
func barPlot(title, ylabel string, names []string, values []float64) (template.HTML, error) {
	if len(values) == 0 {
		return "", nil
	}
	p := plot.New()
	p.Title.Text = title
	p.Y.Label.Text = ylabel
	bars, err := plotter.NewBarChart(plotter.Values(values), vg.Points(min(40, 400/float64(len(values)))))
	if err != nil {
		return "", err
	}
	bars.Color = plotutil.Color(0)
	bars.LineStyle.Width = 0
	p.Add(bars)
	p.NominalX(names...)
	p.X.Tick.Label.Rotation = math.Pi / 8
	p.X.Tick.Label.XAlign = draw.XRight
	p.X.Tick.Label.YAlign = draw.YCenter
	return svgOf(p, plotWidth, plotHeight)
}

// layerTicks marks whole layer numbers only, about ten of them.
type layerTicks struct{}

func (layerTicks) Ticks(lo, hi float64) []plot.Tick {
	lo, hi = math.Ceil(lo), math.Floor(hi)
	if hi < lo {
		return nil
	}
	step := math.Max(1, math.Ceil((hi-lo+1)/10))
	var t []plot.Tick
	for v := lo; v <= hi; v++ {
		label := ""
		if math.Mod(v-lo, step) == 0 {
			label = fmt.Sprint(v)
		}
		t = append(t, plot.Tick{Value: v, Label: label})
	}
	return t
}

// shortTicks labels ticks with at most 4 significant digits ("1.75e+05",
// not "175000.00").
type shortTicks struct{ plot.Ticker }

func (s shortTicks) Ticks(lo, hi float64) []plot.Tick {
	t := s.Ticker.Ticks(lo, hi)
	for i := range t {
		if t[i].Label != "" {
			t[i].Label = strconv.FormatFloat(t[i].Value, 'g', 4, 64)
		}
	}
	return t
}
