package compress

import (
	"context"
	"fmt"
	"math"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rankzip/rankzip/eval"
	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/model"
	"github.com/rankzip/rankzip/model/gptq"
	"github.com/rankzip/rankzip/model/safetensors"
)

// Mixtral and Qwen3-MoE run the recipe of the other architectures end to
// end: whitened SVD of every expert (mlp.*) keeping 80% of their
// parameters, then 4-bit GPTQ of the attention; the router stays dense,
// the original model is untouched, and the dense export of the low-rank
// stage (experts multiplied back, the Hub layout) reads back with its
// logits. GPTQ also quantizes the experts themselves.
func TestMoECompressExperts(t *testing.T) {
	ctx := context.Background()
	for _, typ := range []string{"mixtral", "qwen3_moe"} {
		m, cal, ev, base := archModelLogits(t, typ)
		lr, err := Run(ctx, m, cal, Options{Method: "whiten", Targets: []string{"mlp.*"}, KeepParams: 0.8}, nil)
		if err != nil {
			t.Fatalf("%s: %v", typ, err)
		}
		if want := 2 * 4 * 3; len(lr.Layers) != want {
			t.Fatalf("%s: %d layers reported, want %d (2 blocks × 4 experts × 3)", typ, len(lr.Layers), want)
		}
		for _, l := range lr.Layers {
			if l.Dense || l.Unrouted || l.Rank == 0 || !strings.Contains(l.Name, ".mlp.experts.") {
				t.Errorf("%s: %+v: want a factored expert", typ, l)
			}
		}
		for i, b := range lr.Model.Blocks {
			if b.MoE.Router != m.Blocks[i].MoE.Router {
				t.Errorf("%s: block %d: the router changed", typ, i)
			}
			if _, ok := m.Blocks[i].MoE.Experts[0].Down.(*model.Dense); !ok {
				t.Errorf("%s: block %d: the original model's expert changed", typ, i)
			}
		}
		q, err := RunQuant(ctx, lr.Model, cal, QuantOptions{Method: "gptq", Bits: 4, GroupSize: 32, Targets: []string{"self_attn.*"}}, nil)
		if err != nil {
			t.Fatalf("%s: %v", typ, err)
		}
		lrLogits, _ := lr.Model.Forward(ev)
		qLogits, _ := q.Model.Forward(ev)
		klLR, klQ := eval.MeanKL(base, lrLogits, m.Config.VocabSize), eval.MeanKL(base, qLogits, m.Config.VocabSize)
		t.Logf("%s: whiten keep 0.8 on mlp.* (experts): KL %.4f; then gptq 4-bit g32 on self_attn.*: KL %.4f", typ, klLR, klQ)
		if !(klLR > 0 && klLR < 0.5 && klQ >= klLR*0.5 && klQ < 0.5) {
			t.Errorf("%s: KL %.4f then %.4f out of the expected range", typ, klLR, klQ)
		}

		dir := filepath.Join(t.TempDir(), "dense")
		if err := model.Save(model.Densify(lr.Model), dir, safetensors.F32); err != nil {
			t.Fatalf("%s: %v", typ, err)
		}
		back, err := model.Load(dir, kernels.Default())
		if err != nil {
			t.Fatal(err)
		}
		if got, _ := back.Forward(ev); relErr(got, lrLogits) > 1e-5 {
			t.Errorf("%s: dense export changes the logits by %.2e", typ, relErr(got, lrLogits))
		}
		if err := model.Save(lr.Model, filepath.Join(t.TempDir(), "native"), safetensors.F32); err == nil || !strings.Contains(err.Error(), "not implemented") {
			t.Errorf("%s: native checkpoint of factored experts: %v, want a refusal", typ, err)
		}

		qe, err := RunQuant(ctx, m, cal, QuantOptions{Method: "gptq", Bits: 4, GroupSize: 0, Targets: []string{"mlp.experts.*.down_proj"}}, nil)
		if err != nil {
			t.Fatalf("%s: %v", typ, err)
		}
		if len(qe.Layers) != 2*4 {
			t.Errorf("%s: gptq on the experts' down_proj reports %d layers, want 8", typ, len(qe.Layers))
		}
		for _, l := range qe.Layers {
			if l.Unrouted || !(l.RelError > 0 && l.RelError < 0.1) {
				t.Errorf("%s: %+v: want a quantized expert with a small error", typ, l)
			}
		}
		qeLogits, _ := qe.Model.Forward(ev)
		t.Logf("%s: gptq 4-bit per channel on mlp.experts.*.down_proj: KL %.4f", typ, eval.MeanKL(base, qeLogits, m.Config.VocabSize))
	}
}

// An expert that no calibration token reaches is left dense and reported,
// by the low-rank stage and by GPTQ, while the routed ones are compressed;
// EoRA reports and leaves uncorrected a compressed expert it sees no token
// of.
func TestMoEUnroutedExpertStaysDense(t *testing.T) {
	ctx := context.Background()
	m, cal, _ := archModel(t, "qwen3_moe")
	// Block 0's router scores every expert equally: the stable top-2 keeps
	// experts 0 and 1, so 2 and 3 get no token.
	b := *m.Blocks[0]
	b.MoE = b.MoE.Clone()
	r := b.MoE.Router
	b.MoE.Router = model.NewDense(r.Out(), r.In(), make([]float32, len(r.Weight)), nil)
	mm := *m
	mm.Blocks = append([]*model.Block{&b}, m.Blocks[1:]...)

	check := func(stage string, name string, unrouted bool, l model.Linear, e int) {
		wantUnrouted := strings.HasPrefix(name, "model.layers.0.") && e >= 2
		_, dense := l.(*model.Dense)
		if unrouted != wantUnrouted || dense != wantUnrouted {
			t.Errorf("%s: %s: unrouted %v, dense %v; want both %v", stage, name, unrouted, dense, wantUnrouted)
		}
	}
	lr, err := Run(ctx, &mm, cal, Options{Method: "whiten", Targets: []string{"mlp.experts.*.down_proj"}, Rank: 8}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range lr.Layers {
		var blk, e int
		fmt.Sscanf(l.Name, "model.layers.%d.mlp.experts.%d.", &blk, &e)
		check("whiten", l.Name, l.Unrouted, lr.Model.Blocks[blk].MoE.Experts[e].Down, e)
		if l.Unrouted && !l.Dense {
			t.Errorf("whiten: %s unrouted but not reported dense", l.Name)
		}
	}
	q, err := RunQuant(ctx, &mm, cal, QuantOptions{Method: "gptq", Bits: 4, GroupSize: 32, Targets: []string{"mlp.experts.*.gate_proj"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range q.Layers {
		var blk, e int
		fmt.Sscanf(l.Name, "model.layers.%d.mlp.experts.%d.", &blk, &e)
		check("gptq", l.Name, l.Unrouted, q.Model.Blocks[blk].MoE.Experts[e].Gate, e)
	}
	if len(lr.Layers) != 8 || len(q.Layers) != 8 {
		t.Errorf("reported %d and %d layers, want 8 each", len(lr.Layers), len(q.Layers))
	}

	// EoRA on experts quantized while routed, with block 0's router then
	// sending nothing to experts 2 and 3: those are reported and left
	// uncorrected, the others corrected.
	qa, err := RunQuant(ctx, m, cal, QuantOptions{Method: "rtn", Bits: 4, GroupSize: 0, Targets: []string{"mlp.experts.*.gate_proj"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	qb := *qa.Model.Blocks[0]
	qb.MoE = qb.MoE.Clone()
	qb.MoE.Router = b.MoE.Router
	qm := *qa.Model
	qm.Blocks = append([]*model.Block{&qb}, qa.Model.Blocks[1:]...)
	e, err := RunEoRA(ctx, &qm, &mm, cal, EoRAOptions{Rank: 4})
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range e.Layers {
		blk, mod, _ := model.ParseModuleName(l.Name)
		ex, _, _ := model.ParseExpertModule(mod)
		_, adapted := (*e.Model.Blocks[blk].Linear(mod)).(*gptq.Adapted)
		if want := blk == 0 && ex >= 2; l.Unrouted != want || adapted == want || (l.Rank == 0) != want {
			t.Errorf("eora: %+v adapted %v; want unrouted %v", l, adapted, want)
		}
	}
	if len(e.Layers) != 8 || len(e.Adapters) != 6 {
		t.Errorf("eora: %d layers, %d adapters; want 8 and 6", len(e.Layers), len(e.Adapters))
	}
}

// Expert targets refuse the router, names that are no module, and the rank
// searches experts do not have.
func TestMoETargetErrors(t *testing.T) {
	ctx := context.Background()
	m, cal, _ := archModel(t, "mixtral")
	for _, c := range []struct {
		o    Options
		want string
	}{
		{Options{Targets: []string{"mlp.gate"}, KeepParams: 0.8}, "router mlp.gate stays dense"},
		{Options{Targets: []string{"mlp.experts.9.down_proj"}, KeepParams: 0.8}, "matches no module of model_type mixtral"},
		{Options{Targets: []string{"mlp.experts.*.up_proj"}, KeepParams: 0.8, RankSearch: "global"}, "rank_search global is not implemented for expert targets"},
	} {
		if _, err := Run(ctx, m, cal, c.o, nil); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("targets %v: %v, want %q", c.o.Targets, err, c.want)
		}
	}
}

// LoRD factors every expert (mlp.*), each on its routed tokens, and EoRA
// corrects 3-bit RTN experts: with no targets it adapts exactly the
// quantized expert linears (the router and the dense attention untouched),
// each correction lowers its calibration error, and the model's KL to the
// original is finite and below the uncorrected one; the adapters applied to
// the quantized model give the corrected model's logits.
func TestMoELoRDAndEoRAExperts(t *testing.T) {
	ctx := context.Background()
	for _, typ := range []string{"mixtral", "qwen3_moe"} {
		m, cal, ev, base := archModelLogits(t, typ)
		kl := func(mm *model.Model) float64 {
			t.Helper()
			logits, err := mm.Forward(ev)
			if err != nil {
				t.Fatal(err)
			}
			return eval.MeanKL(base, logits, m.Config.VocabSize)
		}

		lr, err := Run(ctx, m, cal, Options{Method: "lord", Targets: []string{"mlp.*"}, KeepParams: 0.8}, nil)
		if err != nil {
			t.Fatalf("%s: lord: %v", typ, err)
		}
		if len(lr.Layers) != 2*4*3 {
			t.Fatalf("%s: lord reports %d layers, want 24 (2 blocks × 4 experts × 3)", typ, len(lr.Layers))
		}
		for _, l := range lr.Layers {
			blk, mod, _ := model.ParseModuleName(l.Name)
			_, factored := (*lr.Model.Blocks[blk].Linear(mod)).(*model.Factored)
			if l.Dense || l.Rank == 0 || !factored || !isExpert(mod) {
				t.Errorf("%s: lord: %+v (factored %v): want a factored expert", typ, l, factored)
			}
		}
		klLoRD := kl(lr.Model)
		if !(klLoRD > 0 && klLoRD < 0.5) {
			t.Errorf("%s: lord keep 0.8 on the experts: KL %.4f, want in (0, 0.5)", typ, klLoRD)
		}

		q, err := RunQuant(ctx, m, cal, QuantOptions{Method: "rtn", Bits: 3, GroupSize: 0, Targets: []string{"mlp.experts.*"}}, nil)
		if err != nil {
			t.Fatalf("%s: rtn: %v", typ, err)
		}
		e, err := RunEoRA(ctx, q.Model, m, cal, EoRAOptions{Rank: 8})
		if err != nil {
			t.Fatalf("%s: eora: %v", typ, err)
		}
		if len(e.Adapters) != 2*4*3 || len(e.Layers) != 2*4*3 {
			t.Fatalf("%s: eora: %d adapters, %d layers; want 24 (every quantized expert linear)", typ, len(e.Adapters), len(e.Layers))
		}
		for _, l := range e.Layers {
			if l.Unrouted || !strings.Contains(l.Name, ".mlp.experts.") || !(l.ErrorAfter < l.ErrorBefore) {
				t.Errorf("%s: eora: %+v: want an expert whose error the correction lowers", typ, l)
			}
		}
		for i, b := range e.Model.Blocks {
			if b.MoE.Router != m.Blocks[i].MoE.Router || b.Q != m.Blocks[i].Q {
				t.Errorf("%s: block %d: eora changed the router or the attention", typ, i)
			}
			if _, ok := b.MoE.Experts[1].Up.(*gptq.Adapted); !ok {
				t.Errorf("%s: block %d: expert 1 up_proj is %T, want adapted", typ, i, b.MoE.Experts[1].Up)
			}
			if _, ok := q.Model.Blocks[i].MoE.Experts[1].Up.(*model.Quantized); !ok {
				t.Errorf("%s: block %d: eora changed the quantized model's expert", typ, i)
			}
		}
		klQ, klE := kl(q.Model), kl(e.Model)
		t.Logf("%s: lord keep 0.8 on mlp.*: KL %.4f; rtn 3-bit per channel on the experts: KL %.4f, with eora rank 8: KL %.4f", typ, klLoRD, klQ, klE)
		if math.IsNaN(klE) || math.IsInf(klE, 0) || !(klE < klQ) {
			t.Errorf("%s: eora KL %.4f, want finite and below the uncorrected %.4f", typ, klE, klQ)
		}
		applied, err := gptq.ApplyAdapters(q.Model, e.Adapters)
		if err != nil {
			t.Fatal(err)
		}
		want, _ := e.Model.Forward(ev)
		if got, _ := applied.Forward(ev); relErr(got, want) > 1e-6 {
			t.Errorf("%s: the adapters applied to the quantized model change the logits by %.2e", typ, relErr(got, want))
		}
		if _, ok := q.Model.Blocks[0].MoE.Experts[0].Down.(*model.Quantized); !ok {
			t.Errorf("%s: ApplyAdapters changed the quantized model's expert to %T", typ, q.Model.Blocks[0].MoE.Experts[0].Down)
		}
	}
}
