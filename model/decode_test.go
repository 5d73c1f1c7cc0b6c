package model

import (
	"testing"

	"github.com/rankzip/rankzip/kernels"
)

// The cached decoder gives, step by step, the logits of the full forward
// pass over the same sequence.
func TestDecoderMatchesForward(t *testing.T) {
	m, err := Load(needFixture(t, "stories260K"), kernels.Default())
	if err != nil {
		t.Fatal(err)
	}
	seq := readJSONL(t, needFixture(t, "samples/eval.jsonl"), 1)[0][:64]
	want, err := m.Forward([][]int32{seq})
	if err != nil {
		t.Fatal(err)
	}
	d := m.NewDecoder()
	var got []float32
	for _, id := range seq {
		l, err := d.Step(id)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, l...)
	}
	const tol = 1e-5
	if e := relErr(got, want); !(e < tol) {
		t.Errorf("decoder logits differ from the full forward by %.3g, want < %g", e, tol)
	}
	if m.KVBytesPerToken() != 640 { // 5 layers × (32 + 32) × 2 bytes
		t.Errorf("KV bytes per token %d, want 640", m.KVBytesPerToken())
	}
}

func TestDecoderSlidingWindow(t *testing.T) {
	m, err := Synthetic(SyntheticConfig{Hidden: 32, Intermediate: 48, Layers: 2, Heads: 4, KVHeads: 2, Vocab: 64, MaxPositions: 64}, 9, kernels.Default())
	if err != nil {
		t.Fatal(err)
	}
	m.Config.SlidingWindow = 5
	seq := []int32{1, 7, 3, 9, 12, 40, 2, 2, 8, 33, 21, 5}
	want, _ := m.Forward([][]int32{seq})
	d := m.NewDecoder()
	var got []float32
	for _, id := range seq {
		l, err := d.Step(id)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, l...)
	}
	if e := relErr(got, want); !(e < 1e-5) {
		t.Errorf("with a sliding window the decoder differs from the forward by %.3g", e)
	}
}
