package compress

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rankzip/rankzip/eval"
	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/model"
	"github.com/rankzip/rankzip/model/safetensors"
)

// Qwen2-MoE's shared expert is a target (mlp.shared_expert.*, and within
// mlp.*): whitened SVD and GPTQ compress it, calibrated on every token; the
// routed experts, the router and the shared expert's gate stay as they
// were, the original model is untouched, and the dense export reads back
// with the compressed model's logits.
func TestMoESharedExpertTarget(t *testing.T) {
	ctx := context.Background()
	m, err := model.Synthetic(model.SyntheticConfig{ModelType: "qwen2_moe", Hidden: 64, Intermediate: 32, Layers: 2, Heads: 4, KVHeads: 2,
		Vocab: 96, MaxPositions: 64, Experts: 4, TopK: 2}, 3, kernels.Default())
	if err != nil {
		t.Fatal(err)
	}
	cal, err := model.Sample(m, 24, 40, 1, 5)
	if err != nil {
		t.Fatal(err)
	}
	ev, err := model.Sample(m, 6, 40, 1, 6)
	if err != nil {
		t.Fatal(err)
	}
	base, err := m.Forward(ev)
	if err != nil {
		t.Fatal(err)
	}
	lr, err := Run(ctx, m, cal, Options{Method: "whiten", Targets: []string{"mlp.shared_expert.*"}, KeepParams: 0.8}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(lr.Layers) != 2*3 {
		t.Fatalf("%d layers reported, want 6 (2 blocks × the shared expert's 3)", len(lr.Layers))
	}
	for _, l := range lr.Layers {
		if l.Dense || l.Unrouted || l.Rank == 0 || !strings.Contains(l.Name, ".mlp.shared_expert.") {
			t.Errorf("%+v: want a factored shared-expert linear", l)
		}
	}
	for i, b := range lr.Model.Blocks {
		o := m.Blocks[i].MoE
		if _, ok := b.MoE.Shared.Down.(*model.Factored); !ok {
			t.Errorf("block %d: shared down_proj is %T, want factored", i, b.MoE.Shared.Down)
		}
		if _, ok := o.Shared.Down.(*model.Dense); !ok {
			t.Errorf("block %d: the original model's shared expert changed", i)
		}
		if b.MoE.Router != o.Router || b.MoE.SharedGate != o.SharedGate || b.MoE.Experts[0].Down != o.Experts[0].Down {
			t.Errorf("block %d: the router, the shared gate or a routed expert changed", i)
		}
	}
	lrLogits, _ := lr.Model.Forward(ev)
	kl := eval.MeanKL(base, lrLogits, m.Config.VocabSize)
	t.Logf("whiten keep 0.8 on mlp.shared_expert.*: KL %.4f", kl)
	if !(kl > 0 && kl < 0.5) {
		t.Errorf("KL %.4f out of the expected range (0, 0.5)", kl)
	}
	dir := filepath.Join(t.TempDir(), "dense")
	if err := model.Save(model.Densify(lr.Model), dir, safetensors.F32); err != nil {
		t.Fatal(err)
	}
	back, err := model.Load(dir, kernels.Default())
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := back.Forward(ev); relErr(got, lrLogits) > 1e-5 {
		t.Errorf("dense export changes the logits by %.2e", relErr(got, lrLogits))
	}

	q, err := RunQuant(ctx, m, cal, QuantOptions{Method: "gptq", Bits: 4, GroupSize: 32, Targets: []string{"mlp.shared_expert.down_proj"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(q.Layers) != 2 {
		t.Fatalf("gptq on mlp.shared_expert.down_proj reports %d layers, want 2", len(q.Layers))
	}
	for _, l := range q.Layers {
		if l.Unrouted || !(l.RelError > 0 && l.RelError < 0.1) {
			t.Errorf("%+v: want a quantized shared down_proj with a small error", l)
		}
	}
	all, err := targetModules(m.Config, []string{"mlp.*"})
	if err != nil || len(all) != 4*3+3 {
		t.Errorf("mlp.* selects %v (%v), want every routed expert's linears and the shared expert's", all, err)
	}
}
