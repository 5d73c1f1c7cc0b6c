package eval

import (
	"math"
	"testing"
)

const tol = 1e-12

func TestUniformLogitsGiveVocabPerplexity(t *testing.T) {
	const vocab = 7
	ids := []int32{1, 2, 3, 4}
	logits := make([]float32, len(ids)*vocab) // all zero: uniform
	a := NewAccumulator(vocab)
	if err := a.Add(ids, logits, logits); err != nil {
		t.Fatal(err)
	}
	r := a.Report(true)
	if r.Tokens != 3 || r.Sequences != 1 {
		t.Fatalf("tokens %d sequences %d, want 3 and 1", r.Tokens, r.Sequences)
	}
	if math.Abs(r.PPL-vocab)/vocab > tol {
		t.Errorf("ppl %v, want %v", r.PPL, vocab)
	}
	if math.Abs(*r.KL) > tol || *r.Top1Agree != 1 {
		t.Errorf("kl %v agree %v against itself, want 0 and 1", *r.KL, *r.Top1Agree)
	}
}

func TestKnownTwoTokenCase(t *testing.T) {
	// vocab 2: model logits (0, log 3) give p = (1/4, 3/4); baseline (0, 0) gives (1/2, 1/2).
	ids := []int32{0, 1}
	model := []float32{0, float32(math.Log(3)), 0, 0}
	base := []float32{0, 0, 0, 0}
	a := NewAccumulator(2)
	if err := a.Add(ids, model, base); err != nil {
		t.Fatal(err)
	}
	r := a.Report(true)
	wantNLL := -math.Log(0.75)
	wantKL := 0.5*math.Log(0.5/0.25) + 0.5*math.Log(0.5/0.75)
	if math.Abs(r.NLL-wantNLL) > 1e-7 || math.Abs(*r.KL-wantKL) > 1e-7 {
		t.Errorf("nll %v kl %v, want %v %v", r.NLL, *r.KL, wantNLL, wantKL)
	}
	if *r.Top1Agree != 0 {
		// argmax of the baseline's tie is 0, the model's is 1.
		t.Errorf("top1 agree %v, want 0", *r.Top1Agree)
	}
}

func TestShapeMismatchIsAnError(t *testing.T) {
	a := NewAccumulator(4)
	if err := a.Add([]int32{1, 2}, make([]float32, 7), nil); err == nil {
		t.Fatal("want an error for 7 logits over 2 tokens of vocab 4")
	}
}
