package gptq_test

import (
	"slices"
	"testing"

	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/methods/quant"
	"github.com/rankzip/rankzip/model"
	"github.com/rankzip/rankzip/model/gptq"
	"github.com/rankzip/rankzip/model/safetensors"
)

// Qwen3's q/k norms, Gemma 3's four norms and its sliding layers, and
// Qwen3-MoE's experts go through the GPTQ layout and back: every norm is
// read back as written, every block slides as the config says (a window of
// 8 on 24-token sequences matters), and the logits are the in-memory
// quantized model's (tolerance 1e-6, float32 summation order only). Phi-3's
// fused projections are still refused.
func TestExportLoadArchs(t *testing.T) {
	for _, s := range []model.SyntheticConfig{
		{ModelType: "qwen3", HeadDim: 32},
		{ModelType: "gemma3_text", HeadDim: 32, SlidingWindow: 8},
		{ModelType: "qwen3_moe", HeadDim: 32, Experts: 4, TopK: 2},
	} {
		s.Hidden, s.Intermediate, s.Layers, s.Heads, s.KVHeads, s.Vocab, s.MaxPositions = 64, 64, 2, 4, 2, 100, 64
		m, err := model.Synthetic(s, 5, kernels.Default())
		if err != nil {
			t.Fatal(err)
		}
		typ := m.Config.ModelType
		seqs, err := model.Sample(m, 3, 24, 1, 3)
		if err != nil {
			t.Fatal(err)
		}
		q := rtnMoE(t, m, quant.Config{Bits: 4, GroupSize: 32})
		qc, _ := gptq.NewQuantizeConfig(4, 32, false, true)
		dir := t.TempDir()
		if err := gptq.Export(q, dir, safetensors.F32, qc); err != nil {
			t.Fatalf("%s: %v", typ, err)
		}
		back, err := gptq.Load(dir, m.Backend)
		if err != nil {
			t.Fatalf("%s: %v", typ, err)
		}
		for i, b := range back.Blocks {
			want := q.Blocks[i]
			if b.Sliding != want.Sliding {
				t.Errorf("%s: block %d read back with sliding %v, want %v", typ, i, b.Sliding, want.Sliding)
			}
			got, exp := back.Config.NormTensors(b), q.Config.NormTensors(want)
			if len(got) != len(exp) || len(got) < 4 { // attention, MLP and q/k norms at least
				t.Errorf("%s: block %d has %d norms, want %d", typ, i, len(got), len(exp))
				continue
			}
			for j := range got {
				if !slices.Equal(*got[j].W, *exp[j].W) {
					t.Errorf("%s: block %d norm %s read back differs", typ, i, got[j].Name)
				}
			}
		}
		got, err := back.Forward(seqs)
		if err != nil {
			t.Fatal(err)
		}
		want, _ := q.Forward(seqs)
		if d := relErr(got, want); d > 1e-6 {
			t.Errorf("%s: read back logits differ from the quantized model's by %.3g (tolerance 1e-6)", typ, d)
		}
		t.Logf("%s: read back vs in-memory quantized logits %.2e", typ, relErr(got, want))
	}
	phi, err := model.Synthetic(model.SyntheticConfig{ModelType: "phi3", Hidden: 64, Intermediate: 64, Layers: 1, Heads: 4, KVHeads: 2,
		Vocab: 100, MaxPositions: 64}, 5, kernels.Default())
	if err != nil {
		t.Fatal(err)
	}
	qc, _ := gptq.NewQuantizeConfig(4, 32, false, true)
	if err := gptq.Export(rtnMoE(t, phi, quant.Config{Bits: 4, GroupSize: 32}), t.TempDir(), safetensors.F32, qc); err == nil {
		t.Error("phi3: the GPTQ layout accepted fused projections")
	}
}
