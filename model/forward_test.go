package model

import (
	"math"
	"testing"

	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/model/safetensors"
)

// refTolF32 bounds the f32 model against float64 PyTorch logits (the
// issue's tolerance). The bfloat16 copy cannot meet the 2e-2: rounding
// the weights to bf16 alone moves the logits by 2.83e-2 (TestBF16Checkpoint
// shows the forward pass adds nothing to that), so refTolBF16 is a loose
// sanity bound and the exactness check is the bit-for-bit comparison.
const (
	refTolF32  = 1e-4
	refTolBF16 = 3e-2
	sameTol    = 1e-6 // two runs of the same weights, different code paths
)

func TestReferenceLogits(t *testing.T) {
	ref := readF32(t, needFixture(t, "samples/eval_logits.f32"))
	seqs := readJSONL(t, needFixture(t, "samples/eval.jsonl"), 2)
	for _, k := range kernels.Available() {
		t.Run(k.Name(), func(t *testing.T) {
			m, err := Load(needFixture(t, "stories260K"), k)
			if err != nil {
				t.Fatal(err)
			}
			logits, err := m.Forward(seqs)
			if err != nil {
				t.Fatal(err)
			}
			if len(logits) != len(ref) {
				t.Fatalf("%d logits, reference has %d", len(logits), len(ref))
			}
			e := relErr(logits, ref)
			t.Logf("relative Frobenius error against the reference logits: %.3g (tolerance %g)", e, refTolF32)
			if !(e < refTolF32) {
				t.Errorf("relative error %.3g, want < %g", e, refTolF32)
			}
		})
	}
}

// The bf16 two-shard checkpoint loads to exactly the f32 weights rounded to
// bf16 (round to nearest even), so its logits equal those of the f32 model
// with its weights rounded in memory.
func TestBF16Checkpoint(t *testing.T) {
	ref := readF32(t, needFixture(t, "samples/eval_logits.f32"))
	seqs := readJSONL(t, needFixture(t, "samples/eval.jsonl"), 2)
	k := kernels.Default()
	half, err := Load(needFixture(t, "stories260K-bf16-sharded"), k)
	if err != nil {
		t.Fatal(err)
	}
	rounded, err := Load(needFixture(t, "stories260K"), k)
	if err != nil {
		t.Fatal(err)
	}
	roundBF16(rounded)
	a, err := half.Forward(seqs)
	if err != nil {
		t.Fatal(err)
	}
	b, err := rounded.Forward(seqs)
	if err != nil {
		t.Fatal(err)
	}
	if e := relErr(a, b); !(e < sameTol) {
		t.Errorf("bf16 checkpoint and f32 weights rounded to bf16 differ by %.3g, want < %g", e, sameTol)
	}
	e := relErr(a, ref)
	t.Logf("bf16 checkpoint against the f32 reference logits: relative error %.3g (bound %g)", e, refTolBF16)
	if !(e < refTolBF16) {
		t.Errorf("relative error %.3g, want < %g", e, refTolBF16)
	}
}

// roundBF16 rounds every weight of m to the nearest bfloat16 in place.
func roundBF16(m *Model) {
	round := func(v []float32) {
		for i, x := range v {
			v[i] = safetensors.BF16ToFloat32(safetensors.Float32ToBF16(x))
		}
	}
	round(m.Embed)
	round(m.Norm)
	for _, b := range m.Blocks {
		round(b.AttnNorm)
		round(b.MLPNorm)
		for _, mod := range Modules {
			d := (*b.Linear(mod)).(*Dense)
			round(d.Weight)
			round(d.Bias)
		}
	}
}

// A batch of sequences of different lengths gives each sequence the logits it
// gets alone: positions restart per sequence and attention stays inside it.
func TestBatchEqualsSingleSequences(t *testing.T) {
	m, err := Synthetic(SyntheticConfig{Hidden: 32, Intermediate: 48, Layers: 2, Heads: 4, KVHeads: 2, Vocab: 64, MaxPositions: 64}, 3, kernels.Default())
	if err != nil {
		t.Fatal(err)
	}
	seqs := [][]int32{{1, 5, 9, 3, 7, 2, 8}, {4}, {6, 6, 1, 0, 63}}
	batch, err := m.Forward(seqs)
	if err != nil {
		t.Fatal(err)
	}
	v, off := m.Config.VocabSize, 0
	for _, s := range seqs {
		single, err := m.Forward([][]int32{s})
		if err != nil {
			t.Fatal(err)
		}
		if e := relErr(batch[off:off+len(s)*v], single); e > 1e-6 {
			t.Errorf("sequence %v: batch and single logits differ by %.3g", s, e)
		}
		off += len(s) * v
	}
}

// Causality: logits at position t do not depend on later tokens.
func TestCausal(t *testing.T) {
	m, err := Synthetic(SyntheticConfig{Hidden: 32, Intermediate: 48, Layers: 2, Heads: 4, KVHeads: 4, Vocab: 64, MaxPositions: 64}, 4, kernels.Default())
	if err != nil {
		t.Fatal(err)
	}
	a, _ := m.Forward([][]int32{{1, 2, 3, 4, 5}})
	b, _ := m.Forward([][]int32{{1, 2, 3, 60, 61}})
	v := m.Config.VocabSize
	if e := relErr(a[:3*v], b[:3*v]); e > 1e-7 {
		t.Errorf("first three positions changed by %.3g when later tokens changed", e)
	}
	if e := relErr(a[3*v:], b[3*v:]); e < 1e-3 {
		t.Errorf("later positions changed only by %.3g: the test inputs do not differ", e)
	}
}

func TestTokenChecks(t *testing.T) {
	m, err := Synthetic(SyntheticConfig{Hidden: 16, Intermediate: 24, Layers: 1, Heads: 2, KVHeads: 1, Vocab: 10, MaxPositions: 4}, 5, kernels.Default())
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		seqs [][]int32
		want string
	}{
		{[][]int32{{1, 2}, {3, 10}}, "sequence 1 position 1: token id 10 outside the vocabulary [0, 10)"},
		{[][]int32{{-1}}, "token id -1 outside"},
		{[][]int32{{1, 2, 3, 4, 5}}, "sequence 0 has 5 tokens, more than max_position_embeddings 4"},
	} {
		_, err := m.Forward(tc.seqs)
		if err == nil || !contains(err.Error(), tc.want) {
			t.Errorf("Forward(%v) error %v, want it to contain %q", tc.seqs, err, tc.want)
		}
	}
}

func TestSlidingWindowMasksOldTokens(t *testing.T) {
	sc := make([]float32, 16)
	causalSoftmax(sc, 4, 2)
	// With equal scores, row i spreads over max(0, i-1)..i.
	want := []float32{1, 0, 0, 0, 0.5, 0.5, 0, 0, 0, 0.5, 0.5, 0, 0, 0, 0.5, 0.5}
	for i := range want {
		if math.Abs(float64(sc[i]-want[i])) > 1e-7 {
			t.Fatalf("window softmax %v, want %v", sc, want)
		}
	}
}
