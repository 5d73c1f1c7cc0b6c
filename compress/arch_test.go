package compress

import (
	"context"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/rankzip/rankzip/eval"
	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/model"
	"github.com/rankzip/rankzip/model/gptq"
	"github.com/rankzip/rankzip/model/safetensors"
)

// archModel is a small random model of the architecture typ and data
// sampled from it.
func archModel(t *testing.T, typ string) (*model.Model, [][]int32, [][]int32) {
	t.Helper()
	s := model.SyntheticConfig{ModelType: typ, Hidden: 64, Intermediate: 128, Layers: 2, Heads: 4, KVHeads: 2, HeadDim: 32,
		Vocab: 96, MaxPositions: 64, SlidingWindow: 8}
	switch typ {
	case "phi3", "mixtral":
		s.HeadDim = 0
	}
	if typ == "mixtral" || typ == "qwen3_moe" {
		s.Experts, s.TopK, s.Intermediate = 4, 2, 48
	}
	m, err := model.Synthetic(s, 3, kernels.Default())
	if err != nil {
		t.Fatal(err)
	}
	cal, err := model.Sample(m, 32, 40, 1, 5)
	if err != nil {
		t.Fatal(err)
	}
	ev, err := model.Sample(m, 6, 40, 1, 6)
	if err != nil {
		t.Fatal(err)
	}
	return m, cal, ev
}

// archModelLogits is archModel with the model's logits on the evaluation
// sequences.
func archModelLogits(t *testing.T, typ string) (*model.Model, [][]int32, [][]int32, []float32) {
	t.Helper()
	m, cal, ev := archModel(t, typ)
	logits, err := m.Forward(ev)
	if err != nil {
		t.Fatal(err)
	}
	return m, cal, ev, logits
}

// Qwen3, Phi-3 and Gemma 3 run a recipe end to end (whitened SVD on the
// MLPs keeping 80% of their parameters, then 4-bit GPTQ of the attention
// projections), reporting the KL to the original; the native checkpoint
// reads back with the same logits and the dense export of the low-rank
// stage keeps the architecture's own layout. MLA is refused on Qwen3 and
// Gemma 3 naming the architecture, and so is the GPTQ layout.
func TestArchitecturesCompress(t *testing.T) {
	ctx := context.Background()
	for _, typ := range []string{"qwen3", "phi3", "gemma3_text"} {
		m, cal, ev, base := archModelLogits(t, typ)
		lr, err := Run(ctx, m, cal, Options{Method: "whiten", Targets: []string{"mlp.*"}, KeepParams: 0.8}, nil)
		if err != nil {
			t.Fatalf("%s: %v", typ, err)
		}
		q, err := RunQuant(ctx, lr.Model, cal, QuantOptions{Method: "gptq", Bits: 4, GroupSize: 32, Targets: []string{"self_attn.*"}}, nil)
		if err != nil {
			t.Fatalf("%s: %v", typ, err)
		}
		lrLogits, _ := lr.Model.Forward(ev)
		qLogits, _ := q.Model.Forward(ev)
		klLR, klQ := eval.MeanKL(base, lrLogits, m.Config.VocabSize), eval.MeanKL(base, qLogits, m.Config.VocabSize)
		t.Logf("%s: whiten keep 0.8 on mlp.*: KL %.4f; then gptq 4-bit g32 on self_attn.*: KL %.4f", typ, klLR, klQ)
		if !(klLR > 0 && klLR < 0.5 && klQ >= klLR*0.5 && klQ < 0.5) {
			t.Errorf("%s: KL %.4f then %.4f out of the expected range", typ, klLR, klQ)
		}

		// Native: factored MLPs, quantized attention, read back exactly.
		dir := t.TempDir()
		if err := model.Save(q.Model, filepath.Join(dir, "native"), safetensors.F32); err != nil {
			t.Fatalf("%s: %v", typ, err)
		}
		back, err := model.Load(filepath.Join(dir, "native"), kernels.Default())
		if err != nil {
			t.Fatalf("%s: %v", typ, err)
		}
		if got, _ := back.Forward(ev); !slices.Equal(got, qLogits) {
			t.Errorf("%s: native checkpoint reads back with other logits", typ)
		}

		// Dense export of the low-rank stage: the layout of the original.
		if err := model.Save(model.Densify(lr.Model), filepath.Join(dir, "dense"), safetensors.F32); err != nil {
			t.Fatal(err)
		}
		if err := model.Save(m, filepath.Join(dir, "orig"), safetensors.F32); err != nil {
			t.Fatal(err)
		}
		names := func(d string) []string {
			ck, err := safetensors.OpenDir(filepath.Join(dir, d))
			if err != nil {
				t.Fatal(err)
			}
			defer ck.Close()
			return ck.Names()
		}
		if !slices.Equal(names("dense"), names("orig")) {
			t.Errorf("%s: dense export tensors %v, original %v", typ, names("dense"), names("orig"))
		}
		dense, err := model.Load(filepath.Join(dir, "dense"), kernels.Default())
		if err != nil {
			t.Fatal(err)
		}
		if got, _ := dense.Forward(ev); relErr(got, lrLogits) > 1e-5 {
			t.Errorf("%s: dense export changes the logits by %.2e", typ, relErr(got, lrLogits))
		}

		err = gptq.Export(q.Model, filepath.Join(dir, "gptq"), safetensors.F16, gptq.QuantizeConfig{Bits: 4, GroupSize: 32, Sym: true, QuantMethod: "gptq", CheckpointFormat: "gptq", PackDType: "int32"})
		// Phi-3's fused projections have no GPTQ layout; the others have one
		// (model/gptq's TestExportLoadArchs), but not for the factored MLP.
		if want := map[bool]string{true: typ, false: "densify it first"}[typ == "phi3"]; err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: gptq export: %v, want an error naming %q", typ, err, want)
		}
		if typ == "phi3" {
			continue
		}
		_, err = RunMLA(ctx, m, cal, MLAOptions{RopeDim: 8, LoraRank: 16})
		if err == nil || !strings.Contains(err.Error(), typ) {
			t.Errorf("%s: mla: %v", typ, err)
		}
	}
}

// Mixture-of-experts models: the attention projections compress (whiten,
// then GPTQ), export and take EoRA; Palu and MLA are refused naming the
// architecture (moe_test.go compresses the experts).
func TestMoECompressAttention(t *testing.T) {
	ctx := context.Background()
	for _, typ := range []string{"mixtral", "qwen3_moe"} {
		m, cal, ev, base := archModelLogits(t, typ)
		lr, err := Run(ctx, m, cal, Options{Method: "whiten", Targets: []string{"self_attn.*"}, KeepParams: 0.8}, nil)
		if err != nil {
			t.Fatalf("%s: %v", typ, err)
		}
		q, err := RunQuant(ctx, m, cal, QuantOptions{Method: "gptq", Bits: 4, GroupSize: 32, Targets: []string{"self_attn.*"}}, nil)
		if err != nil {
			t.Fatalf("%s: %v", typ, err)
		}
		lrLogits, _ := lr.Model.Forward(ev)
		qLogits, _ := q.Model.Forward(ev)
		klLR, klQ := eval.MeanKL(base, lrLogits, m.Config.VocabSize), eval.MeanKL(base, qLogits, m.Config.VocabSize)
		t.Logf("%s: whiten keep 0.8 on self_attn.*: KL %.4f; gptq 4-bit g32 on self_attn.*: KL %.4f", typ, klLR, klQ)
		if !(klLR > 0 && klLR < 0.5 && klQ > 0 && klQ < 0.5) {
			t.Errorf("%s: KL %.4f, %.4f out of range", typ, klLR, klQ)
		}
		dir := t.TempDir()
		if err := model.Save(q.Model, dir, safetensors.F32); err != nil {
			t.Fatal(err)
		}
		back, err := model.Load(dir, kernels.Default())
		if err != nil {
			t.Fatal(err)
		}
		if got, _ := back.Forward(ev); !slices.Equal(got, qLogits) {
			t.Errorf("%s: native round trip changes the logits", typ)
		}
		// EoRA on every linear corrects the quantized ones only: the
		// attention here (moe_test.go corrects experts).
		e, err := RunEoRA(ctx, q.Model, m, cal, EoRAOptions{Rank: 4})
		if err != nil {
			t.Fatalf("%s: eora on every linear: %v", typ, err)
		}
		if len(e.Adapters) != 2*4 || slices.ContainsFunc(e.Adapters, func(a gptq.Adapter) bool { return !strings.Contains(a.Module, ".self_attn.") }) {
			t.Errorf("%s: eora on every linear: %d adapters, want the 8 attention projections only", typ, len(e.Adapters))
		}
		if _, err := RunPalu(ctx, m, cal, PaluOptions{KVKeep: 0.5, RankSearch: "uniform"}); err == nil || !strings.Contains(err.Error(), typ) {
			t.Errorf("%s: palu: %v", typ, err)
		}
		if _, err := RunMLA(ctx, m, cal, MLAOptions{RopeDim: 8, LoraRank: 16}); err == nil || !strings.Contains(err.Error(), typ) {
			t.Errorf("%s: mla: %v", typ, err)
		}
	}
}

// Palu on Qwen3 and Gemma 3: the latent rebuilds k_proj x, k_norm and RoPE
// follow, so full rank reproduces the logits and the latent decoder equals
// the forward pass; fisher ranks run (the backward passes go through the
// q/k norms and Gemma's).
func TestPaluWithQKNorms(t *testing.T) {
	ctx := context.Background()
	for _, typ := range []string{"qwen3", "gemma3_text"} {
		m, cal, ev, want := archModelLogits(t, typ)
		full, err := RunPalu(ctx, m, cal, PaluOptions{KVKeep: 1, GroupHeads: 1, RankSearch: "uniform"})
		if err != nil {
			t.Fatalf("%s: %v", typ, err)
		}
		got, _ := full.Model.Forward(ev)
		if e := relErr(got, want); !(e < 1e-5) {
			t.Errorf("%s: full-rank Palu changes the logits by %.3g", typ, e)
		}
		spectrum, err := RunPalu(ctx, m, cal, PaluOptions{KVKeep: 0.5, RankSearch: "spectrum"})
		if err != nil {
			t.Fatalf("%s: spectrum: %v", typ, err)
		}
		sp, _ := spectrum.Model.Forward(ev)
		t.Logf("%s: Palu kv_keep 0.5 (spectrum ranks): KL %.4f", typ, eval.MeanKL(want, sp, m.Config.VocabSize))
		res, err := RunPalu(ctx, m, cal, PaluOptions{KVKeep: 0.5})
		if err != nil {
			t.Fatalf("%s: %v", typ, err)
		}
		lossy, _ := res.Model.Forward(ev)
		t.Logf("%s: Palu kv_keep 0.5 (fisher ranks, the default): KV %d of %d bytes per token, KL %.4f", typ, res.KVBytes, res.KVBytesOrig,
			eval.MeanKL(want, lossy, m.Config.VocabSize))
		seq := ev[0]
		fw, _ := res.Model.Forward([][]int32{seq})
		d := res.Model.NewDecoder()
		var dec []float32
		for _, id := range seq {
			l, err := d.Step(id)
			if err != nil {
				t.Fatal(err)
			}
			dec = append(dec, l...)
		}
		if e := relErr(dec, fw); !(e < 1e-5) {
			t.Errorf("%s: latent decoder differs from the forward pass by %.3g", typ, e)
		}
		if cached := d.CachedValues(); cached != len(seq)*res.KVBytes/2 {
			t.Errorf("%s: the cache holds %d values for %d tokens, want the latents only (%d)", typ, cached, len(seq), len(seq)*res.KVBytes/2)
		}
		dir := t.TempDir()
		if err := model.Save(res.Model, dir, safetensors.F32); err != nil {
			t.Fatal(err)
		}
		back, err := model.Load(dir, kernels.Default())
		if err != nil {
			t.Fatal(err)
		}
		if got, _ := back.Forward([][]int32{seq}); !slices.Equal(got, fw) {
			t.Errorf("%s: the native Palu checkpoint reads back with other logits", typ)
		}
		if err := model.SavePalu(res.Model, t.TempDir(), safetensors.F16); err == nil || !strings.Contains(err.Error(), typ) {
			t.Errorf("%s: Palu's own layout: %v", typ, err)
		}
	}
}
