package gptq_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"gonum.org/v1/gonum/mat"

	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/methods/quant"
	"github.com/rankzip/rankzip/model"
	"github.com/rankzip/rankzip/model/gptq"
	"github.com/rankzip/rankzip/model/safetensors"
)

func synthetic(t *testing.T) *model.Model {
	t.Helper()
	m, err := model.Synthetic(model.SyntheticConfig{Hidden: 64, Intermediate: 96, Layers: 2, Heads: 4, KVHeads: 2, Vocab: 100, MaxPositions: 64}, 7, kernels.Default())
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// rtnModel quantizes every linear of m with RTN.
func rtnModel(t *testing.T, m *model.Model, cfg quant.Config) *model.Model {
	t.Helper()
	out := *m
	out.Blocks = nil
	for _, b := range m.Blocks {
		nb := *b
		for _, mod := range model.Modules {
			*nb.Linear(mod) = rtnLinear(t, (*nb.Linear(mod)).(*model.Dense), cfg)
		}
		out.Blocks = append(out.Blocks, &nb)
	}
	return &out
}

// rtnLinear is d quantized with RTN, its bias rounded to float16 as the
// GPTQ layout stores a quantized layer's bias.
func rtnLinear(t *testing.T, d *model.Dense, cfg quant.Config) *model.Quantized {
	t.Helper()
	w := make([]float64, len(d.Weight))
	for i, v := range d.Weight {
		w[i] = float64(v)
	}
	r, err := quant.RTN(mat.NewDense(d.Out(), d.In(), w), cfg)
	if err != nil {
		t.Fatal(err)
	}
	g := r.Groups()
	scales := make([]float32, 0, g*d.Out())
	for i := range g {
		for j := range d.Out() {
			scales = append(scales, float32(r.Scales.At(i, j)))
		}
	}
	var bias []float32
	for _, b := range d.Bias {
		bias = append(bias, safetensors.F16ToFloat32(safetensors.Float32ToF16(b)))
	}
	q, err := model.NewQuantized(d.Out(), d.In(), r.Bits, r.Q, scales, r.Zeros, r.GIdx, bias)
	if err != nil {
		t.Fatal(err)
	}
	return q
}

func relErr(a, b []float32) float64 {
	var num, den float64
	for i := range a {
		d := float64(a[i]) - float64(b[i])
		num += d * d
		den += float64(b[i]) * float64(b[i])
	}
	return math.Sqrt(num / den)
}

func TestExportLoadRoundTrip(t *testing.T) {
	m := synthetic(t)
	seqs, err := model.Sample(m, 2, 16, 1, 3)
	if err != nil {
		t.Fatal(err)
	}
	want, err := m.Forward(seqs)
	if err != nil {
		t.Fatal(err)
	}
	for _, bits := range []int{2, 3, 4, 8} {
		for _, group := range []int{32, -1} {
			q := rtnModel(t, m, quant.Config{Bits: bits, GroupSize: group})
			qc, err := gptq.NewQuantizeConfig(bits, group, false, false)
			if err != nil {
				t.Fatal(err)
			}
			dir := t.TempDir()
			if err := gptq.Export(q, dir, safetensors.F32, qc); err != nil {
				t.Fatal(err)
			}
			back, err := gptq.Load(dir, m.Backend)
			if err != nil {
				t.Fatal(err)
			}
			a, err := back.Forward(seqs)
			if err != nil {
				t.Fatal(err)
			}
			b, err := q.Forward(seqs)
			if err != nil {
				t.Fatal(err)
			}
			if d := relErr(a, b); d > 1e-6 {
				t.Errorf("%d bits group %d: read back logits differ by %.3g", bits, group, d)
			}
			t.Logf("%d bits group %3d: logits vs unquantized %.4f", bits, group, relErr(b, want))
			if _, err := model.Load(dir, m.Backend); err == nil {
				t.Errorf("model.Load accepted a GPTQ checkpoint it cannot run")
			}
		}
	}
	// A mismatched config is an error naming the layer.
	q := rtnModel(t, m, quant.Config{Bits: 4, GroupSize: 32})
	qc, _ := gptq.NewQuantizeConfig(4, 64, false, false)
	if err := gptq.Export(q, t.TempDir(), safetensors.F16, qc); err == nil || !strings.Contains(err.Error(), "model.layers.0.self_attn.q_proj") {
		t.Errorf("group size mismatch: %v", err)
	}
	if err := gptq.Export(m, t.TempDir(), safetensors.F16, qc); err == nil {
		t.Error("exported a model with no quantized layer")
	}
}

func TestAdapterRoundTrip(t *testing.T) {
	m := synthetic(t)
	rng := rand.New(rand.NewPCG(5, 6))
	randDense := func(out, in int) *model.Dense {
		w := make([]float32, out*in)
		for i := range w {
			w[i] = float32(rng.NormFloat64()) * 0.05
		}
		return model.NewDense(out, in, w, nil)
	}
	var adapters []gptq.Adapter
	for i, b := range m.Blocks {
		for j, mod := range []string{"self_attn.q_proj", "mlp.down_proj"} {
			l := *b.Linear(mod)
			r := 4 + 4*j
			adapters = append(adapters, gptq.Adapter{Module: fmt.Sprintf("model.layers.%d.%s", i, mod), A: randDense(r, l.In()), B: randDense(l.Out(), r)})
		}
	}
	dir := filepath.Join(t.TempDir(), "adapter")
	if err := gptq.WriteAdapter(dir, "base", adapters, safetensors.F32); err != nil {
		t.Fatal(err)
	}
	if err := gptq.WriteAdapter(t.TempDir(), "/home/me/out", adapters, safetensors.F32); err == nil || !strings.Contains(err.Error(), "absolute path") {
		t.Errorf("an adapter naming its base by an absolute path: %v, want a refusal", err)
	}
	f, err := safetensors.Open(filepath.Join(dir, "adapter_model.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	info, ok := f.Info("base_model.model.model.layers.1.mlp.down_proj.lora_B.weight")
	f.Close()
	if !ok || !slices.Equal(info.Shape, []int{64, 8}) {
		t.Errorf("lora_B of down_proj: %v %v, want [64 8]", ok, info.Shape)
	}
	back, cfg, err := gptq.ReadAdapter(dir)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.R != 4 || cfg.LoraAlpha != 4 || cfg.RankPattern["model.layers.0.mlp.down_proj"] != 8 || cfg.AlphaPattern["model.layers.0.mlp.down_proj"] != 8 {
		t.Errorf("adapter config: r %d alpha %d rank_pattern %v alpha_pattern %v", cfg.R, cfg.LoraAlpha, cfg.RankPattern, cfg.AlphaPattern)
	}
	adapted, err := gptq.ApplyAdapters(m, back)
	if err != nil {
		t.Fatal(err)
	}
	// The same model with W + B A merged into the dense weights.
	merged := *m
	merged.Blocks = nil
	for _, b := range m.Blocks {
		nb := *b
		merged.Blocks = append(merged.Blocks, &nb)
	}
	for _, a := range adapters {
		var layer int
		fmt.Sscanf(a.Module, "model.layers.%d.", &layer)
		p := merged.Blocks[layer].Linear(strings.TrimPrefix(a.Module, fmt.Sprintf("model.layers.%d.", layer)))
		d := (*p).(*model.Dense)
		w := slices.Clone(d.Weight)
		m.Backend.Sgemm(false, false, d.Out(), d.In(), a.Rank(), 1, a.B.Weight, a.Rank(), a.A.Weight, d.In(), 1, w, d.In())
		*p = model.NewDense(d.Out(), d.In(), w, d.Bias)
	}
	seqs, _ := model.Sample(m, 2, 16, 1, 3)
	x, err := adapted.Forward(seqs)
	if err != nil {
		t.Fatal(err)
	}
	y, err := merged.Forward(seqs)
	if err != nil {
		t.Fatal(err)
	}
	if d := relErr(x, y); d > 1e-5 {
		t.Errorf("adapter applied vs merged: logits differ by %.3g", d)
	}
	if _, err := gptq.ApplyAdapters(m, []gptq.Adapter{{Module: "model.layers.9.mlp.up_proj", A: randDense(2, 64), B: randDense(96, 2)}}); err == nil {
		t.Error("adapter for a missing layer accepted")
	}
}

// A source checkpoint in the transformers 5 form (rope_parameters, dtype)
// is exported in that form, and the export reads back to its settings.
func TestExportKeepsTransformers5Form(t *testing.T) {
	m := synthetic(t)
	raw := map[string]json.RawMessage{}
	for k, v := range m.Config.Raw {
		raw[k] = v
	}
	delete(raw, "rope_theta")
	delete(raw, "torch_dtype")
	raw["rope_parameters"] = json.RawMessage(`{"rope_type": "llama3", "rope_theta": 20000, "factor": 4, "low_freq_factor": 1, "high_freq_factor": 4, "original_max_position_embeddings": 16}`)
	raw["dtype"] = json.RawMessage(`"float32"`)
	data, err := json.Marshal(raw)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := model.ParseConfig("config.json", data)
	if err != nil {
		t.Fatal(err)
	}
	m.Config = cfg
	q := rtnModel(t, m, quant.Config{Bits: 4, GroupSize: 32})
	qc, _ := gptq.NewQuantizeConfig(4, 32, false, false)
	dir := t.TempDir()
	if err := gptq.Export(q, dir, safetensors.F16, qc); err != nil {
		t.Fatal(err)
	}
	data, err = os.ReadFile(filepath.Join(dir, "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	var out map[string]json.RawMessage
	if err := json.Unmarshal(data, &out); err != nil {
		t.Fatal(err)
	}
	_, td := out["torch_dtype"]
	_, theta := out["rope_theta"]
	var a, b bytes.Buffer
	if json.Compact(&a, out["rope_parameters"]) != nil || json.Compact(&b, raw["rope_parameters"]) != nil ||
		string(out["dtype"]) != `"float16"` || td || theta || a.String() != b.String() {
		t.Errorf("exported config.json:\n%s", data)
	}
	back, err := gptq.Load(dir, m.Backend)
	if err != nil {
		t.Fatal(err)
	}
	if !back.Config.Rope().Equal(cfg.Rope()) || back.Config.DType != "float16" {
		t.Errorf("read back as %v dtype %q, want %v float16", back.Config.Rope(), back.Config.DType, cfg.Rope())
	}
}
