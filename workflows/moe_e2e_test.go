package workflows_test

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rankzip/rankzip/activities"
	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/model"
	"github.com/rankzip/rankzip/model/safetensors"
	"github.com/rankzip/rankzip/recipe"
)

// moeJob saves a tiny random Qwen3-MoE (2 blocks, 4 experts top-2, the
// stories260K vocabulary so that its calibration set applies) whose block 0
// router scores every expert equally, so the stable top-2 routes every token
// to experts 0 and 1 and experts 2 and 3 of block 0 get none; it writes a
// recipe with the given stages and export and loads it.
func moeJob(t *testing.T, dir, stages, export string) *recipe.Job {
	t.Helper()
	return moeJobOf(t, dir, "qwen3_moe", 48, stages, export)
}

// moeJobOf is moeJob for a model of type typ whose experts have
// intermediate size inter.
func moeJobOf(t *testing.T, dir, typ string, inter int, stages, export string) *recipe.Job {
	t.Helper()
	fx := needFixtures(t)
	headDim := 32
	if typ == "mixtral" {
		headDim = 0 // hidden / heads
	}
	m, err := model.Synthetic(model.SyntheticConfig{ModelType: typ, Hidden: 64, Intermediate: inter, Layers: 2, Heads: 4, KVHeads: 2,
		HeadDim: headDim, Vocab: 512, MaxPositions: 256, Experts: 4, TopK: 2}, 3, kernels.Default())
	if err != nil {
		t.Fatal(err)
	}
	b := m.Blocks[0]
	b.MoE = b.MoE.Clone()
	r := b.MoE.Router
	b.MoE.Router = model.NewDense(r.Out(), r.In(), make([]float32, len(r.Weight)), nil)
	if err := model.Save(m, filepath.Join(dir, "model"), safetensors.F32); err != nil {
		t.Fatal(err)
	}
	text := fmt.Sprintf(`
model: model
calibration: {data: %s, sequences: 16, seq_len: 64}
evaluation: {data: %s, sequences: 4}
output: out
stages:
%s
export: %s
`, filepath.Join(fx, "samples/calib.parquet"), filepath.Join(fx, "samples/eval.parquet"), stages, export)
	p := filepath.Join(dir, "recipe.yaml")
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	j, err := recipe.Load(p)
	if err != nil {
		t.Fatal(err)
	}
	return j
}

// Whitened SVD of every expert's down projection (uniform ranks, 80% of
// their parameters kept) through the workflow, exported dense: the
// checkpoint loads in the Hub layout and its logits equal the in-process
// compress.Run result's; block 0's experts 2 and 3, which no calibration
// token reaches, are reported unrouted and left dense.
func TestEndToEndMoEExperts(t *testing.T) {
	dir := t.TempDir()
	j := moeJob(t, dir, `  - {method: svd, variant: whiten, targets: ["mlp.experts.*.down_proj"], keep_params: 0.8, rank_search: uniform}`, `{format: dense}`)
	res, err := runJob(t, j, filepath.Join(dir, "store"), nil)
	if err != nil {
		t.Fatal(err)
	}
	orig, comp, _ := direct(t, j)
	seqs := [][]int32{moeSeq, {3, 3, 150, 42, 8, 511, 60, 7}}
	_, want := exportMatches(t, j, comp, seqs)
	base, _ := orig.Forward(seqs)
	t.Logf("compressed vs original logits: %.2e relative", relErr32(want, base))
	if e := relErr32(want, base); !(e > 1e-4) {
		t.Errorf("compressed logits differ from the original's by only %.2e: nothing was compressed", e)
	}
	var factored, unrouted []string
	for _, l := range res.Layers {
		if !strings.Contains(l.Name, ".mlp.experts.") || !strings.HasSuffix(l.Name, ".down_proj") {
			t.Errorf("layer %s reported: want only the experts' down projections", l.Name)
		}
		switch {
		case l.Unrouted && l.Dense:
			unrouted = append(unrouted, l.Name)
		case !l.Dense && l.Rank > 0:
			factored = append(factored, l.Name)
		}
	}
	wantUnrouted := "model.layers.0.mlp.experts.2.down_proj model.layers.0.mlp.experts.3.down_proj"
	if strings.Join(unrouted, " ") != wantUnrouted || len(factored) != 6 {
		t.Errorf("unrouted %v (want %s), %d factored (want 6)", unrouted, wantUnrouted, len(factored))
	}
	checkQuality(t, j, res, orig, comp)
}

// GPTQ of every expert's gate projection after the SVD of their down
// projections, through the stage activities (block diffs of quantized
// experts), exported dense: the dequantized checkpoint's logits equal the
// in-process result's, and block 0's unrouted experts stay dense.
func TestEndToEndMoEExpertsGPTQ(t *testing.T) {
	dir := t.TempDir()
	j := moeJob(t, dir, `
  - {method: svd, targets: ["mlp.experts.*.down_proj"], keep_params: 0.8}
  - {method: gptq, bits: 4, group_size: 32, targets: ["mlp.experts.*.gate_proj"]}`, `{format: dense}`)
	res, err := runJob(t, j, filepath.Join(dir, "store"), nil)
	if err != nil {
		t.Fatal(err)
	}
	_, comp, _ := direct(t, j)
	exportMatches(t, j, comp, [][]int32{moeSeq})
	var quantized, unrouted int
	for _, b := range res.Stages[1] {
		for _, l := range b.Quant {
			if l.Unrouted {
				unrouted++
			} else if strings.HasSuffix(l.Name, ".gate_proj") {
				quantized++
			}
		}
	}
	if quantized != 6 || unrouted != 2 {
		t.Errorf("%d quantized and %d unrouted gate projections reported, want 6 and 2", quantized, unrouted)
	}
	for i, b := range comp.Blocks {
		for e, x := range b.MoE.Experts {
			_, q := x.Gate.(*model.Quantized)
			if q != (i > 0 || e < 2) {
				t.Errorf("in-process block %d expert %d gate_proj is %T", i, e, x.Gate)
			}
		}
	}
}

// LoRD of the experts' up projections, RTN of their down projections and
// EoRA with its default targets (which take the quantized experts), through
// the stage activities, exported dense: the checkpoint's logits equal the
// in-process result's, every routed factored up and quantized down
// projection got a correction that lowers its error, and block 0's unrouted
// experts stay dense and uncorrected.
func TestEndToEndMoEExpertsLoRDEoRA(t *testing.T) {
	dir := t.TempDir()
	j := moeJob(t, dir, `
  - {method: lord, targets: ["mlp.experts.*.up_proj"], rank: 8}
  - {method: rtn, bits: 3, group_size: 0, targets: ["mlp.experts.*.down_proj"]}
  - {method: eora, rank: 4}`, `{format: dense}`)
	res, err := runJob(t, j, filepath.Join(dir, "store"), nil)
	if err != nil {
		t.Fatal(err)
	}
	orig, comp, adapters := direct(t, j)
	seqs := [][]int32{moeSeq}
	_, want := exportMatches(t, j, comp, seqs)
	base, _ := orig.Forward(seqs)
	t.Logf("compressed vs original logits: %.2e relative", relErr32(want, base))
	var corrected, unrouted []string
	for _, b := range res.Stages[2] {
		for _, l := range b.EoRA {
			if l.Unrouted {
				unrouted = append(unrouted, l.Name)
			} else if strings.Contains(l.Name, ".mlp.experts.") && l.ErrorAfter < l.ErrorBefore {
				corrected = append(corrected, l.Name)
			}
		}
	}
	// LoRD and RTN left block 0's experts 2 and 3 dense, so EoRA skips
	// them as dense layers, not as unrouted ones.
	if len(corrected) != 12 || len(unrouted) != 0 || len(adapters) != 12 {
		t.Errorf("eora corrected %v, unrouted %v, %d adapters in process; want the 6 routed up and 6 down projections", corrected, unrouted, len(adapters))
	}
	for e, x := range comp.Blocks[0].MoE.Experts {
		if _, dense := x.Down.(*model.Dense); dense != (e >= 2) {
			t.Errorf("in-process block 0 expert %d down_proj is %T", e, x.Down)
		}
	}
}

// GPTQ of a Mixtral's attention and of its experts 0 and 1 (routed in both
// blocks) through the workflow, exported in the GPTQ v1 layout: the
// checkpoint holds the experts packed under their Hub names, reads back
// through LoadExport with every targeted expert quantized and the router
// dense, and its logits equal the in-process result's.
func TestEndToEndMoEExpertsGPTQLayout(t *testing.T) {
	dir := t.TempDir()
	j := moeJobOf(t, dir, "mixtral", 64, `
  - {method: gptq, bits: 4, group_size: 32, targets: ["self_attn.*", "mlp.experts.0.*", "mlp.experts.1.*"]}`, `{format: gptq, dtype: float32}`)
	if _, err := runJob(t, j, filepath.Join(dir, "store"), nil); err != nil {
		t.Fatal(err)
	}
	_, comp, _ := direct(t, j)
	back, _ := exportMatches(t, j, comp, [][]int32{moeSeq})
	for i, b := range back.Blocks {
		for e, x := range b.MoE.Experts {
			_, q := x.Down.(*model.Quantized)
			if q != (e < 2) {
				t.Errorf("read back block %d expert %d down projection is %T", i, e, x.Down)
			}
		}
	}
	f, err := safetensors.OpenDir(j.Recipe.Output)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, name := range []string{"model.layers.1.block_sparse_moe.experts.1.w2.qweight", "model.layers.1.block_sparse_moe.experts.2.w2.weight", "model.layers.1.block_sparse_moe.gate.weight"} {
		if _, ok := f.Info(name); !ok {
			t.Errorf("the checkpoint has no tensor %s", name)
		}
	}
}

// moeSeq is a token sequence the MoE tests compare logits on.
var moeSeq = []int32{1, 5, 9, 200, 17, 33, 4, 480, 2, 77, 301, 12}

// exportMatches loads j's exported checkpoint as rankzip eval does and
// checks that its logits on seqs are comp's (the in-process result's),
// returning the loaded model and comp's logits. Tolerance 1e-5 relative:
// a dense export multiplies factors and adapters back in float32, and a
// GPTQ one stores what comp dequantizes.
func exportMatches(t *testing.T, j *recipe.Job, comp *model.Model, seqs [][]int32) (back *model.Model, want []float32) {
	t.Helper()
	back, err := activities.LoadExport(j.Recipe.Output, kernels.Default())
	if err != nil {
		t.Fatalf("the exported checkpoint does not load: %v", err)
	}
	got, err := back.Forward(seqs)
	if err != nil {
		t.Fatal(err)
	}
	if want, err = comp.Forward(seqs); err != nil {
		t.Fatal(err)
	}
	e := relErr32(got, want)
	t.Logf("exported vs in-process logits: %.2e relative", e)
	if !(e < 1e-5) {
		t.Errorf("exported logits differ from the in-process ones by %.2e relative (tolerance 1e-5)", e)
	}
	return back, want
}

// relErr32 is ‖a−b‖/‖b‖ over every logit, in float64.
func relErr32(a, b []float32) float64 {
	if len(a) != len(b) {
		return math.Inf(1)
	}
	var num, den float64
	for k := range b {
		d := float64(a[k]) - float64(b[k])
		num += d * d
		den += float64(b[k]) * float64(b[k])
	}
	return math.Sqrt(num / den)
}
