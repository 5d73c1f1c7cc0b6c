package report

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rankzip/rankzip/eval"
	"github.com/rankzip/rankzip/model"
	"github.com/rankzip/rankzip/recipe"
)

// Sample returns the data of a made-up job of every kind of stage.
func Sample() *Data {
	kl, top1 := 0.0123, 0.95
	d := &Data{
		Job: "rankzip-sample", Output: "/tmp/out",
		Recipe: recipe.Recipe{Model: "model", Output: "out", Calibration: recipe.Calibration{Data: "calib.parquet", Sequences: 32},
			Stages: []recipe.Stage{{Method: "svd", Variant: "whiten", KeepParams: 0.8}, {Method: "gptq", Bits: 4}, {Method: "eora", Rank: 8}},
			Export: recipe.Export{Format: "native"}},
		Params: 800, OriginalParams: 1000, FileBytes: 3 << 20, OriginalBytes: 4 << 20, KVBytesPerToken: 512, OriginalKVBytesPerToken: 512,
		Original:   &eval.Report{Sequences: 8, Tokens: 1016, NLL: 1.5, PPL: 4.48},
		Compressed: &eval.Report{Sequences: 8, Tokens: 1016, NLL: 1.6, PPL: 4.95, KL: &kl, Top1Agree: &top1},
		Timings:    []Timing{{"inspect", 0.2}, {"stages[0] svd", 3}, {"stages[1] gptq", 2}, {"stages[2] eora", 1}, {"export", 0.5}, {"evaluate", 0.7}},
	}
	q := Stage{Index: 1, Method: "gptq"}
	e := Stage{Index: 2, Method: "eora"}
	for i := range 4 {
		for j, m := range []string{"mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"} {
			name := fmt.Sprintf("model.layers.%d.%s", i, m)
			d.Layers = append(d.Layers, model.LowRankReport{Name: name, Out: 172, In: 64, Rank: 30 + 3*i - j, PredictedError: 0.01 * float64(i+1+j)})
			q.Quant = append(q.Quant, model.QuantReport{Name: name, Out: 172, In: 64, RelError: 0.002 * float64(i+1)})
			e.EoRA = append(e.EoRA, model.EoRAReport{Name: name, Rank: 8, ErrorBefore: 1, ErrorAfter: 0.5 + 0.1*float64(j)})
		}
	}
	pa := Stage{Index: 3, Method: "palu", Palu: map[string][]int{}}
	ml := Stage{Index: 4, Method: "mla"}
	for i := range 4 {
		pa.Palu[fmt.Sprintf("model.layers.%d.self_attn.k_proj", i)] = []int{8 + i, 8}
		pa.Palu[fmt.Sprintf("model.layers.%d.self_attn.v_proj", i)] = []int{12, 12 - i}
		ml.MLA = append(ml.MLA, model.MLAReport{Layer: i, RopeShare: 0.3 + 0.1*float64(i), LatentShare: 0.9})
	}
	d.Stages = []Stage{q, e, pa, ml}
	return d
}

func TestHTML(t *testing.T) {
	var b bytes.Buffer
	if err := WriteHTML(&b, Sample()); err != nil {
		t.Fatal(err)
	}
	s := b.String()
	if n := strings.Count(s, "<svg"); n != 8 { // rank, kept, predicted, quant, eora, palu, mla, time
		t.Errorf("%d plots, want 8", n)
	}
	for _, bad := range []string{"<script", "<link", "@import", "url(", "src=", "href="} {
		if strings.Contains(s, bad) {
			t.Errorf("the page contains %q", bad)
		}
	}
	// The SVG namespace is the one URL allowed: a name, never fetched.
	if n := strings.Count(s, "://") - strings.Count(s, "http://www.w3.org/"); n != 0 {
		t.Errorf("the page names %d URLs", n)
	}
	for _, want := range []string{"4.9500", "0.0123", "0.9500", "800 (80.0%)", "keep_params: 0.8", "stages[1] gptq", "mlp.down_proj"} {
		if !strings.Contains(s, want) {
			t.Errorf("the page lacks %q", want)
		}
	}
	if os.Getenv("REPORT_OUT") != "" {
		os.WriteFile(os.Getenv("REPORT_OUT"), b.Bytes(), 0o644)
	}
}

func TestJSONRoundTrip(t *testing.T) {
	p := filepath.Join(t.TempDir(), JSONFile)
	var b bytes.Buffer
	if err := WriteJSON(&b, Sample()); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(p, b.Bytes(), 0o644)
	d, err := ReadJSON(p)
	if err != nil {
		t.Fatal(err)
	}
	if d.Job != "rankzip-sample" || len(d.Layers) != 12 || len(d.Stages) != 4 || *d.Compressed.KL != 0.0123 {
		t.Errorf("read back %+v", d)
	}
	os.WriteFile(p, []byte(`{"foo": 1}`), 0o644)
	if _, err := ReadJSON(p); err == nil || !strings.Contains(err.Error(), "not a rankzip report") {
		t.Errorf("a JSON file of something else: %v", err)
	}
}

func TestEmptyReport(t *testing.T) {
	var b bytes.Buffer
	if err := WriteHTML(&b, &Data{Job: "x"}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "No per-layer records") || !strings.Contains(b.String(), "Not measured") {
		t.Error("an empty report does not say what is missing")
	}
}
