package model_test

import (
	"context"
	"strings"
	"testing"

	"github.com/rankzip/rankzip/compress"
	"github.com/rankzip/rankzip/eval"
	"github.com/rankzip/rankzip/model"
)

// The recipe runs end to end on every reference checkpoint (the
// tiny random models checked against transformers): whitened SVD keeping
// 80% of the MLP parameters (mlp.*: every expert in a mixture of experts,
// Qwen2-MoE's shared one too),
// then 4-bit GPTQ, one group per output channel (the 48-wide models have
// no 32-wide groups), of the attention projections. The KL to the original
// model is measured on sequences sampled from it, apart from the
// calibration ones; it must be positive and small. Mixtures of experts also
// run the mirror (attention low-rank, experts quantized with GPTQ).
func TestArchRecipeKL(t *testing.T) {
	ctx := context.Background()
	for _, name := range model.RefArchNames() {
		m := model.LoadRefModel(t, name)
		cal, err := model.Sample(m, 32, 32, 1, 5)
		if err != nil {
			t.Fatal(err)
		}
		ev, err := model.Sample(m, 8, 32, 1, 6)
		if err != nil {
			t.Fatal(err)
		}
		base, err := m.Forward(ev)
		if err != nil {
			t.Fatal(err)
		}
		lr, err := compress.Run(ctx, m, cal, compress.Options{Method: "whiten", Targets: []string{"mlp.*"}, KeepParams: 0.8, RankSearch: "uniform"}, nil)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		q, err := compress.RunQuant(ctx, lr.Model, cal, compress.QuantOptions{Method: "gptq", Bits: 4, GroupSize: 0, Targets: []string{"self_attn.*"}}, nil)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		experts, shared := 0, 0 // routed experts' linears; Qwen2-MoE's shared expert's
		for _, l := range lr.Layers {
			switch {
			case strings.Contains(l.Name, ".mlp.experts."):
				experts++
			case strings.Contains(l.Name, ".mlp.shared_expert."):
				shared++
			}
		}
		lrLogits, _ := lr.Model.Forward(ev)
		qLogits, _ := q.Model.Forward(ev)
		v := m.Config.VocabSize
		klLR, klQ := eval.MeanKL(base, lrLogits, v), eval.MeanKL(base, qLogits, v)
		t.Logf("%-16s %-12s whiten keep 0.8 on mlp.* (%d matrices, %d experts' and %d shared expert's linears, %d/%d params): KL %.4f; then gptq 4-bit on self_attn.* (%d matrices): KL %.4f",
			name, m.Config.ModelType, len(lr.Layers), experts, shared, lr.Params, lr.Total, klLR, len(q.Layers), klQ)
		if !(klLR > 0 && klLR < 0.5 && klQ > 0 && klQ < 0.5) {
			t.Errorf("%s: KL %.4f then %.4f out of (0, 0.5)", name, klLR, klQ)
		}
		if m.Config.MoE != nil && (experts+shared != len(lr.Layers) || shared != 3*m.Config.NumLayers*min(1, m.Config.MoE.SharedInter)) {
			t.Errorf("%s: %d of %d compressed matrices are experts' linears (%d the shared expert's), want all", name, experts+shared, len(lr.Layers), shared)
		}
		if m.Config.MoE == nil {
			continue
		}
		// The mirror: the attention low-rank, the experts quantized.
		la, err := compress.Run(ctx, m, cal, compress.Options{Method: "whiten", Targets: []string{"self_attn.*"}, KeepParams: 0.8, RankSearch: "uniform"}, nil)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		qe, err := compress.RunQuant(ctx, la.Model, cal, compress.QuantOptions{Method: "gptq", Bits: 4, GroupSize: 0, Targets: []string{"mlp.experts.*"}}, nil)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		laLogits, _ := la.Model.Forward(ev)
		qeLogits, _ := qe.Model.Forward(ev)
		klLA, klQE := eval.MeanKL(base, laLogits, v), eval.MeanKL(base, qeLogits, v)
		t.Logf("%-16s %-12s whiten keep 0.8 on self_attn.*: KL %.4f; then gptq 4-bit on mlp.experts.* (%d matrices): KL %.4f", name, m.Config.ModelType, klLA, len(qe.Layers), klQE)
		if !(klLA > 0 && klLA < 0.5 && klQE > 0 && klQE < 0.5) || len(qe.Layers) != experts {
			t.Errorf("%s: KL %.4f then %.4f out of (0, 0.5), or %d experts' linears quantized (want %d)", name, klLA, klQE, len(qe.Layers), experts)
		}
	}
}
