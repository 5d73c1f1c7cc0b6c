package compress

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/rankzip/rankzip/model"
	"github.com/rankzip/rankzip/model/gptq"
	"github.com/rankzip/rankzip/model/safetensors"
)

func TestQuantValidate(t *testing.T) {
	m, _, _ := fixture(t, 1, 0)
	for _, tc := range []struct {
		o    QuantOptions
		want []string
	}{
		{QuantOptions{Method: "rtn", Bits: 4, GroupSize: 32}, []string{"model.layers.*.mlp.down_proj", "172"}},
		{QuantOptions{Method: "gptq", Bits: 5}, []string{"bits 5"}},
		{QuantOptions{Method: "gptq", Bits: 4, GroupSize: 48}, []string{"group size 48"}},
		{QuantOptions{Method: "awq", Bits: 4}, []string{"method \"awq\""}},
		{QuantOptions{Method: "rtn", Bits: 4, Targets: []string{"attn.*"}}, []string{"matches no module"}},
	} {
		_, err := RunQuant(context.Background(), m, [][]int32{{1, 2, 3}}, tc.o, nil)
		if err == nil {
			t.Errorf("%+v: no error", tc.o)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%+v: error %q does not mention %q", tc.o, err, w)
			}
		}
	}
}

// The quantized layers compute with the dequantized weights, and 8-bit RTN
// barely changes the model.
func TestQuantRTN8(t *testing.T) {
	m, cal, ev := fixture(t, 8, 4)
	for _, tc := range []struct {
		group   int
		targets []string
		maxKL   float64 // the fixture README: about 0.02 with groups of 32
	}{{0, nil, 0.05}, {32, []string{"self_attn.*"}, 0.02}} {
		res, err := RunQuant(context.Background(), m, cal, QuantOptions{Method: "rtn", Bits: 8, GroupSize: tc.group, Targets: tc.targets}, nil)
		if err != nil {
			t.Fatal(err)
		}
		// The same model with dense dequantized weights gives the same logits.
		dense := *res.Model
		dense.Blocks = nil
		for _, b := range res.Model.Blocks {
			nb := *b
			for _, mod := range model.Modules {
				if q, ok := (*nb.Linear(mod)).(*model.Quantized); ok {
					*nb.Linear(mod) = model.NewDense(q.Out(), q.In(), q.Dequantize(), q.Bias)
				}
			}
			dense.Blocks = append(dense.Blocks, &nb)
		}
		a, err := res.Model.Forward(ev[:2])
		if err != nil {
			t.Fatal(err)
		}
		b, err := dense.Forward(ev[:2])
		if err != nil {
			t.Fatal(err)
		}
		if e := relErr(a, b); e > 1e-5 {
			t.Errorf("quantized and dequantized-dense logits differ by %.3g", e)
		}
		r := measure(t, m, res.Model, ev)
		t.Logf("rtn 8-bit group %d targets %v: KL %.5f ppl %.3f (%d layers)", tc.group, tc.targets, *r.KL, r.PPL, len(res.Layers))
		if *r.KL > tc.maxKL {
			t.Errorf("8-bit RTN group %d: KL %.4f, want ≤ %g", tc.group, *r.KL, tc.maxKL)
		}
	}
}

// GPTQ does no worse than RTN in KL on the attention modules at 4 and 3 bits.
func TestGPTQBeatsRTN(t *testing.T) {
	m, cal, ev := fixture(t, 8, 4)
	base := measure(t, m, m, ev)
	var table strings.Builder
	fmt.Fprintf(&table, "original ppl %.3f\n%-5s %4s %5s %9s %9s %9s\n", base.PPL, "meth", "bits", "group", "kl", "ppl", "rel_err")
	attn := []string{"self_attn.*"}
	for _, bits := range []int{4, 3} {
		for _, group := range []int{32} {
			kl := map[string]float64{}
			for _, method := range QuantMethods {
				res, err := RunQuant(context.Background(), m, cal, QuantOptions{Method: method, Bits: bits, GroupSize: group, Targets: attn}, nil)
				if err != nil {
					t.Fatal(err)
				}
				r := measure(t, m, res.Model, ev)
				rel := 0.0
				for _, l := range res.Layers {
					rel += l.RelError / float64(len(res.Layers))
				}
				kl[method] = *r.KL
				fmt.Fprintf(&table, "%-5s %4d %5d %9.5f %9.3f %9.5f\n", method, bits, group, *r.KL, r.PPL, rel)
			}
			if kl["gptq"] > kl["rtn"] {
				t.Errorf("%d bits, group %d: GPTQ KL %.5f > RTN %.5f", bits, group, kl["gptq"], kl["rtn"])
			}
		}
	}
	t.Log("\n" + table.String())
}

// A GPTQ checkpoint exported and read back gives the same logits as the
// in-memory quantized model; layers the v1 packing cannot hold are a clear
// error.
func TestQuantExportRoundTrip(t *testing.T) {
	m, cal, ev := fixture(t, 4, 1)
	res, err := RunQuant(context.Background(), m, cal, QuantOptions{Method: "gptq", Bits: 3, GroupSize: 32, ActOrder: true, Targets: []string{"self_attn.*"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	qc, err := gptq.NewQuantizeConfig(3, 32, false, false)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := gptq.Export(res.Model, dir, safetensors.F32, qc); err != nil {
		t.Fatal(err)
	}
	if !gptq.IsCheckpoint(dir) {
		t.Error("IsCheckpoint: false on an exported checkpoint")
	}
	back, err := gptq.Load(dir, m.Backend)
	if err != nil {
		t.Fatal(err)
	}
	a, err := back.Forward(ev)
	if err != nil {
		t.Fatal(err)
	}
	b, err := res.Model.Forward(ev)
	if err != nil {
		t.Fatal(err)
	}
	if d := relErr(a, b); d > 1e-6 {
		t.Errorf("exported checkpoint: logits differ by %.3g", d)
	}
	if _, err := model.Load(dir, m.Backend); err == nil {
		t.Log("note: model.Load accepted a GPTQ checkpoint")
	}

	mlp, err := RunQuant(context.Background(), m, cal, QuantOptions{Method: "rtn", Bits: 4, Targets: []string{"mlp.up_proj"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	qc, _ = gptq.NewQuantizeConfig(4, -1, false, false)
	err = gptq.Export(mlp.Model, t.TempDir(), safetensors.F16, qc)
	if err == nil || !strings.Contains(err.Error(), "model.layers.0.mlp.up_proj (172×64)") {
		t.Errorf("export of a 172×64 quantized layer: %v", err)
	}
}

// With the same statistics (original mode), GPTQ's calibration objective is
// never worse than RTN's on any layer.
func TestGPTQObjectiveNotWorse(t *testing.T) {
	m, cal, _ := fixture(t, 4, 0)
	for _, group := range []int{32, 0} {
		o := QuantOptions{Bits: 3, GroupSize: group, Mode: "original", Targets: []string{"self_attn.*"}}
		if group == 0 {
			o.Targets = nil
		}
		o.Method = "rtn"
		rtn, err := RunQuant(context.Background(), m, cal, o, nil)
		if err != nil {
			t.Fatal(err)
		}
		o.Method, o.ActOrder = "gptq", true
		g, err := RunQuant(context.Background(), m, cal, o, nil)
		if err != nil {
			t.Fatal(err)
		}
		for i, l := range g.Layers {
			if r := rtn.Layers[i]; l.CalibError > r.CalibError*(1+1e-9) {
				t.Errorf("group %d %s: GPTQ error %.4g > RTN %.4g", group, l.Name, l.CalibError, r.CalibError)
			}
		}
	}
}

// BenchmarkQuantTable prints KL(original ‖ quantized) and perplexity on
// eval.parquet for RTN and GPTQ at 8, 4, 3 and 2 bits: groups of 32 on the
// attention modules (the MLP's 172 columns take no group of 32) and one
// group per channel on all seven linears, GPTQ with act-order off and on.
//
//	go test -run XXX -bench QuantTable -benchtime 1x ./compress/
func BenchmarkQuantTable(b *testing.B) {
	m, cal, ev := fixture(b, 128, 32)
	for b.Loop() {
		base := measure(b, m, m, ev)
		fmt.Printf("original: ppl %.3f on %d sequences (%d tokens); %d calibration sequences\n", base.PPL, base.Sequences, base.Tokens, len(cal))
		fmt.Printf("%-9s %4s %-14s %10s %10s\n", "method", "bits", "group", "kl", "ppl")
		for _, bits := range []int{8, 4, 3, 2} {
			for _, group := range []int{32, 0} {
				var targets []string
				gname := "per-channel"
				if group == 32 {
					targets, gname = []string{"self_attn.*"}, "32 (attn)"
				}
				for _, v := range []struct {
					method string
					act    bool
				}{{"rtn", false}, {"gptq", false}, {"gptq", true}} {
					res, err := RunQuant(context.Background(), m, cal, QuantOptions{Method: v.method, Bits: bits, GroupSize: group, ActOrder: v.act, Targets: targets}, nil)
					if err != nil {
						b.Fatal(err)
					}
					r := measure(b, m, res.Model, ev)
					name := v.method
					if v.act {
						name += "+act"
					}
					fmt.Printf("%-9s %4d %-14s %10.4f %10.2f\n", name, bits, gname, *r.KL, r.PPL)
				}
			}
		}
	}
}

// rankzip's native layout holds quantized layers exactly (codes U8, zero
// points and group indices I32, scales F32), next to Palu's grouped ones:
// the DESIGN example's svd → palu → gptq order needs it.
func TestQuantizedNativeRoundTrip(t *testing.T) {
	m, cal, ev := fixture(t, 8, 2)
	p, err := RunPalu(context.Background(), m, cal, PaluOptions{KVKeep: 0.75, RankSearch: "uniform"})
	if err != nil {
		t.Fatal(err)
	}
	q, err := RunQuant(context.Background(), p.Model, cal, QuantOptions{Method: "gptq", Bits: 3, GroupSize: 0, Targets: []string{"self_attn.q_proj", "self_attn.o_proj", "mlp.*"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := model.Save(q.Model, dir, safetensors.BF16); err != nil {
		t.Fatal(err)
	}
	back, err := model.Load(dir, m.Backend)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := (*back.Blocks[1].Linear("mlp.down_proj")).(*model.Quantized); !ok {
		t.Fatalf("mlp.down_proj read back as %T", *back.Blocks[1].Linear("mlp.down_proj"))
	}
	if _, ok := (*back.Blocks[1].Linear("self_attn.k_proj")).(*model.Grouped); !ok {
		t.Fatalf("self_attn.k_proj read back as %T", *back.Blocks[1].Linear("self_attn.k_proj"))
	}
	for _, mod := range []string{"self_attn.q_proj", "mlp.down_proj"} {
		a := (*q.Model.Blocks[3].Linear(mod)).(*model.Quantized).Dequantize()
		b := (*back.Blocks[3].Linear(mod)).(*model.Quantized).Dequantize()
		if relErr(b, a) != 0 {
			t.Errorf("%s: the quantized weight changed through the bf16 checkpoint", mod)
		}
	}
	want, _ := q.Model.Forward(ev)
	got, _ := back.Forward(ev)
	// bf16 rounds only the norms and embeddings.
	if e := relErr(got, want); e > 5e-2 {
		t.Errorf("logits differ by %.3g after a bf16 save and load", e)
	}
}
