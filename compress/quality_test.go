package compress

import (
	"context"
	"math"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rankzip/rankzip/calib"
	"github.com/rankzip/rankzip/model"
	"github.com/rankzip/rankzip/model/safetensors"
)

// The orderings that hold on stories260K (MLP layers at rank 60 of 64, 16
// calibration and 4 evaluation sequences): whitening and LORD beat plain SVD
// clearly, LORD equals whitening (every layer is bias-free), and sequential
// calibration with the corrected target beats original mode. Rank 60 is a
// gentle setting where the model survives (KL ≈ 0.9); any parameter saving
// on a 172×64 matrix needs rank ≤ 46, where this tiny model is already
// wrecked (KL ≈ 4 for every method) and orderings say little.
func TestMethodOrdering(t *testing.T) {
	m, cal, ev := fixture(t, 16, 4)
	run := func(method string, mode calib.Mode) (*model.Model, float64) {
		res, err := Run(context.Background(), m, cal, Options{Method: method, Targets: []string{"mlp.*"}, Rank: 60, Mode: mode}, nil)
		if err != nil {
			t.Fatal(err)
		}
		r := measure(t, m, res.Model, ev)
		t.Logf("%-6s %-10s kl %.4f ppl %.2f", method, mode, *r.KL, r.PPL)
		return res.Model, *r.KL
	}
	whiten, klWhiten := run("whiten", calib.Sequential)
	lordM, klLord := run("lord", calib.Sequential)
	_, klPlain := run("plain", calib.Sequential)
	_, klOrig := run("whiten", calib.Original)

	const margin = 0.75 // "wide": at least 25% lower KL (measured: 0.90 against 1.40)
	if !(klWhiten < margin*klPlain) || !(klLord < margin*klPlain) {
		t.Errorf("whiten kl %.4f and lord kl %.4f should be below %.2f × plain's %.4f", klWhiten, klLord, margin, klPlain)
	}
	if !(klWhiten < klOrig) {
		t.Errorf("sequential (corrected) kl %.4f should beat original mode's %.4f", klWhiten, klOrig)
	}
	a, _ := whiten.Forward(ev[:1])
	b, _ := lordM.Forward(ev[:1])
	const sameTol = 1e-3 // the same optimum reached through an SVD and through an eigendecomposition, in float32
	if e := relErr(b, a); !(e < sameTol) {
		t.Errorf("lord and whiten logits differ by %.3g on bias-free layers, want < %g", e, sameTol)
	}
}

func TestExportNativeAndDense(t *testing.T) {
	m, cal, ev := fixture(t, 4, 1)
	res, err := Run(context.Background(), m, cal, Options{Method: "whiten", Targets: []string{"self_attn.o_proj", "mlp.down_proj"}, Rank: 20}, nil)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := res.Model.Forward(ev)
	dir := t.TempDir()
	native, dense := filepath.Join(dir, "native"), filepath.Join(dir, "dense")
	if err := model.Save(res.Model, native, safetensors.F32); err != nil {
		t.Fatal(err)
	}
	if err := model.Save(model.Densify(res.Model), dense, safetensors.F32); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		dir string
		tol float64
	}{{native, 0}, {dense, 1e-5}} {
		back, err := model.Load(tc.dir, m.Backend)
		if err != nil {
			t.Fatal(err)
		}
		got, _ := back.Forward(ev)
		if e := relErr(got, want); e > tc.tol {
			t.Errorf("%s: logits differ by %.3g after export and load, want ≤ %g", tc.dir, e, tc.tol)
		}
		f, ok := (*back.Blocks[2].Linear("mlp.down_proj")).(*model.Factored)
		if tc.dir == native && (!ok || f.Rank() != 20) {
			t.Errorf("native export: block 2 down_proj loads as %T, want a rank-20 factored layer", *back.Blocks[2].Linear("mlp.down_proj"))
		}
	}
}

func TestBadOptions(t *testing.T) {
	m, cal, _ := fixture(t, 4, 0)
	for _, tc := range []struct {
		o    Options
		seqs [][]int32
		want []string
	}{
		{Options{Targets: []string{"mlp.gate*", "attn.*"}, KeepParams: 0.5}, cal, []string{`target "attn.*" matches no module`}},
		{Options{KeepParams: 1.5}, cal, []string{"keep_params 1.5 must be in (0, 1]"}},
		{Options{KeepParams: 0}, cal, []string{"keep_params 0 must be in (0, 1]"}},
		{Options{KeepParams: 0.5, Method: "tucker", RankSearch: "magic"}, cal, []string{`method "tucker" unknown`, `rank_search "magic" unknown`}},
		{Options{KeepParams: 0.5}, [][]int32{cal[0][:100]}, []string{"the calibration set has 100 tokens; the targeted layers need at least 172"}},
	} {
		_, err := Run(context.Background(), m, tc.seqs, tc.o, nil)
		for _, w := range tc.want {
			if err == nil || !strings.Contains(err.Error(), w) {
				t.Errorf("Run(%+v): error %v, want it to contain %q", tc.o, err, w)
			}
		}
	}
}

func TestSensitivitySearchMeetsBudget(t *testing.T) {
	m, cal, _ := fixture(t, 8, 0)
	res, err := Run(context.Background(), m, cal, Options{Method: "whiten", Targets: []string{"self_attn.o_proj", "mlp.down_proj"}, KeepParams: 0.6, RankSearch: "sensitivity"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	keep := float64(res.Params) / float64(res.Total)
	// Within one rank step of the cheapest factored matrix (64+64 of 5·(4096+11008) parameters).
	if keep > 0.6 || keep < 0.6-128.0/float64(res.Total) {
		t.Errorf("sensitivity search kept %.4f of the parameters, asked 0.6", keep)
	}
}

// On stories260K the measured-loss (sensitivity) allocation beats uniform
// ranks clearly; the spectrum-only global allocation does not (see
// BenchmarkQualityTable). The local search (linear in depth) lands between
// them: better than global and uniform, worse than the whole-model
// sensitivity search. The Fisher search (linear in depth too) matches the
// sensitivity search, so it is the default.
func TestSensitivityBeatsUniform(t *testing.T) {
	m, cal, ev := fixture(t, 32, 8)
	kl := map[string]float64{}
	for _, search := range []string{"uniform", "global", "sensitivity", "local", "fisher"} {
		res, err := Run(context.Background(), m, cal, Options{Method: "whiten", KeepParams: 0.8, RankSearch: search}, nil)
		if err != nil {
			t.Fatal(err)
		}
		r := measure(t, m, res.Model, ev)
		kl[search] = *r.KL
		keep := float64(res.Params) / float64(res.Total)
		t.Logf("%-11s kl %.4f ppl %.2f params %.4f", search, *r.KL, r.PPL, keep)
		if keep > 0.8 {
			t.Errorf("%s search kept %.4f of the parameters, asked 0.8", search, keep)
		}
	}
	const margin = 0.8 // measured: 2.58 against 4.30 (32 calibration, 8 evaluation sequences)
	if !(kl["sensitivity"] < margin*kl["uniform"]) {
		t.Errorf("sensitivity kl %.4f should be below %.1f × uniform's %.4f", kl["sensitivity"], margin, kl["uniform"])
	}
	// Measured: local 3.05, global 4.87, sensitivity 2.58.
	if !(kl["local"] < kl["global"]) || !(kl["local"] < kl["uniform"]) {
		t.Errorf("local kl %.4f should beat global's %.4f and uniform's %.4f", kl["local"], kl["global"], kl["uniform"])
	}
	const localSlack = 1.3 // local may lose to the whole-model search, by less than this factor
	if !(kl["local"] < localSlack*kl["sensitivity"]) {
		t.Errorf("local kl %.4f should be below %.1f × sensitivity's %.4f", kl["local"], localSlack, kl["sensitivity"])
	}
	// Measured: fisher 2.53 (2.33 against sensitivity's 2.40 on 32
	// evaluation sequences). As the default it must stay within 2% of the
	// whole-model search, and beat local.
	const fisherSlack = 1.02
	if !(kl["fisher"] <= fisherSlack*kl["sensitivity"]) || !(kl["fisher"] < kl["local"]) {
		t.Errorf("fisher kl %.4f should be at most %.2f × sensitivity's %.4f and below local's %.4f", kl["fisher"], fisherSlack, kl["sensitivity"], kl["local"])
	}
}

func TestNonFiniteActivationsAreAnError(t *testing.T) {
	m, cal, _ := fixture(t, 2, 0)
	bad := *m
	bad.Blocks = append([]*model.Block(nil), m.Blocks...)
	b := *m.Blocks[1]
	b.MLPNorm = append([]float32(nil), b.MLPNorm...)
	b.MLPNorm[3] = float32(math.Inf(1))
	bad.Blocks[1] = &b
	_, err := Run(context.Background(), &bad, cal, Options{Method: "whiten", Targets: []string{"mlp.*"}, Rank: 8}, nil)
	if err == nil || !strings.Contains(err.Error(), "model.layers.1.mlp.gate_proj") || !strings.Contains(err.Error(), "non-finite activation") {
		t.Fatalf("error %v, want a non-finite activation error naming model.layers.1.mlp.gate_proj", err)
	}
}

// Spilling the calibration hidden states to disk changes nothing.
func TestSpillGivesTheSameModel(t *testing.T) {
	m, cal, ev := fixture(t, 4, 1)
	o := Options{Method: "whiten", Targets: []string{"mlp.*"}, Rank: 30}
	a, err := Run(context.Background(), m, cal, o, nil)
	if err != nil {
		t.Fatal(err)
	}
	o.Spill = t.TempDir()
	b, err := Run(context.Background(), m, cal, o, nil)
	if err != nil {
		t.Fatal(err)
	}
	x, _ := a.Model.Forward(ev)
	y, _ := b.Model.Forward(ev)
	if e := relErr(y, x); e != 0 {
		t.Errorf("spilled run differs by %.3g", e)
	}
}
