package model

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rankzip/rankzip/kernels"
)

// stories loads stories260K and the first n calibration sequences cut to
// seqLen tokens.
func stories(t testing.TB, n, seqLen int) (*Model, [][]int32) {
	t.Helper()
	m, err := Load(needFixture(t, "stories260K"), kernels.Default())
	if err != nil {
		t.Fatal(err)
	}
	seqs := readJSONL(t, needFixture(t, "samples/calib.jsonl"), n)
	for i := range seqs {
		seqs[i] = seqs[i][:min(len(seqs[i]), seqLen)]
	}
	return m, seqs
}

// tinyModel is a random Llama with GQA, an untied head and biases on every
// linear layer (so bias gradients are checked too); window > 0 makes its
// attention a sliding window.
func tinyModel(t testing.TB, window int) (*Model, [][]int32) {
	t.Helper()
	m, err := Synthetic(SyntheticConfig{Hidden: 24, Intermediate: 40, Layers: 2, Heads: 6, KVHeads: 2, Vocab: 37, MaxPositions: 64}, 7, kernels.Default())
	if err != nil {
		t.Fatal(err)
	}
	m.Config.SlidingWindow = window
	rng := rand.New(rand.NewPCG(3, 4))
	for _, b := range m.Blocks {
		for _, mod := range Modules {
			d := (*b.Linear(mod)).(*Dense)
			d.Bias = make([]float32, d.Out())
			for i := range d.Bias {
				d.Bias[i] = float32(0.1 * rng.NormFloat64())
			}
		}
	}
	// Two sequences of different lengths, so rows of one never see the other.
	var seqs [][]int32
	for _, n := range []int{11, 17} {
		s := make([]int32, n)
		for i := range s {
			s[i] = int32(rng.IntN(m.Config.VocabSize))
		}
		seqs = append(seqs, s)
	}
	return m, seqs
}

// forwardLoss is the mean next-token cross-entropy from Forward's logits.
func forwardLoss(t testing.TB, m *Model, seqs [][]int32) float64 {
	t.Helper()
	var sum float64
	var n int
	for _, s := range seqs {
		logits, err := m.Forward([][]int32{s})
		if err != nil {
			t.Fatal(err)
		}
		v := m.Config.VocabSize
		for i := 0; i+1 < len(s); i++ {
			row := logits[i*v : (i+1)*v]
			mx := math.Inf(-1)
			for _, x := range row {
				mx = max(mx, float64(x))
			}
			var z float64
			for _, x := range row {
				z += math.Exp(float64(x) - mx)
			}
			sum += mx + math.Log(z) - float64(row[s[i+1]])
			n++
		}
	}
	return sum / float64(n)
}

// The loss of the backward pass is the loss of Forward's logits.
func TestBackwardLossMatchesForward(t *testing.T) {
	for _, tc := range []struct {
		name string
		load func(testing.TB) (*Model, [][]int32)
	}{
		{"stories260K", func(t testing.TB) (*Model, [][]int32) { return stories(t, 3, 96) }},
		{"tiny", func(t testing.TB) (*Model, [][]int32) { return tinyModel(t, 0) }},
		{"tiny-window", func(t testing.TB) (*Model, [][]int32) { return tinyModel(t, 5) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, seqs := tc.load(t)
			g, err := m.Backward(seqs, nil)
			if err != nil {
				t.Fatal(err)
			}
			want := forwardLoss(t, m, seqs)
			// float32 activations through a few layers: agreement to ~1e-6 is
			// expected, 1e-5 leaves room.
			const tol = 1e-5
			e := math.Abs(g.Loss-want) / want
			t.Logf("loss %.8f, Forward's %.8f, relative difference %.2e", g.Loss, want, e)
			if !(e < tol) {
				t.Errorf("loss %.8f, Forward's %.8f: relative difference %.3g, want < %g", g.Loss, want, e, tol)
			}
			if tokens := len(seqs[0]) - 1 + len(seqs[len(seqs)-1]) - 1; len(seqs) == 2 && g.Tokens != tokens {
				t.Errorf("%d predicted tokens, want %d", g.Tokens, tokens)
			}
		})
	}
}

// checkNames are parameters of several kinds in the first and last layers.
func checkNames(layers int) []string {
	var names []string
	for _, i := range []int{0, layers - 1} {
		for _, mod := range append(slices.Clone(Modules), "input_layernorm", "post_attention_layernorm") {
			names = append(names, fmt.Sprintf("model.layers.%d.%s", i, mod))
		}
	}
	return append(names, "model.norm")
}

// gradCheck compares the float64 backward pass with central finite
// differences of the float64 loss on a few entries of every named parameter:
// the largest gradients and some random ones. It returns the worst relative
// error ‖fd − grad‖/‖grad‖ over the checked entries of one parameter.
func gradCheck(t *testing.T, m *Model, seqs [][]int32, names []string) float64 {
	t.Helper()
	n, err := newNet[float64](m, names)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := n.run(seqs, true); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	worst := 0.0
	for _, name := range names {
		d, v := n.param(name)
		type entry struct {
			p    []float64 // the parameter
			g    []float64 // its gradient
			what string
		}
		var es []entry
		if d != nil {
			es = append(es, entry{d.w, d.gw, "weight"})
			if d.b != nil {
				es = append(es, entry{d.b, d.gb, "bias"})
			}
		} else {
			es = append(es, entry{v.w, v.g, "weight"})
		}
		for _, e := range es {
			idx := make([]int, len(e.g))
			for i := range idx {
				idx[i] = i
			}
			slices.SortFunc(idx, func(a, b int) int { return -cmpAbs(e.g[a], e.g[b]) })
			pick := idx[:min(4, len(idx))]
			for range 4 {
				pick = append(pick, rng.IntN(len(e.g)))
			}
			var num, den float64
			for _, i := range pick {
				// h balances truncation (h² · third derivative) against
				// rounding (1e-16 · loss / h) in float64.
				const h = 1e-5
				orig := e.p[i]
				e.p[i] = orig + h
				lp, _, _ := n.run(seqs, false)
				e.p[i] = orig - h
				lm, _, _ := n.run(seqs, false)
				e.p[i] = orig
				fd := (lp - lm) / (2 * h)
				num += (fd - e.g[i]) * (fd - e.g[i])
				den += e.g[i] * e.g[i]
			}
			rel := math.Sqrt(num / den)
			t.Logf("%s %s: relative error %.2e over %d entries (|grad| max %.3g)", name, e.what, rel, len(pick), math.Abs(e.g[idx[0]]))
			worst = max(worst, rel)
			if den == 0 {
				t.Errorf("%s %s: zero gradient on the checked entries", name, e.what)
			}
		}
	}
	return worst
}

func cmpAbs(a, b float64) int {
	switch x, y := math.Abs(a), math.Abs(b); {
	case x < y:
		return -1
	case x > y:
		return 1
	}
	return 0
}

// gradCheckTol bounds the finite-difference agreement in float64: with
// h = 1e-5 the truncation error is ~h² ≈ 1e-10 and rounding ~1e-11 relative
// to gradients of order 1e-3..1, so 1e-6 is a wide margin that any real bug
// (a missing term, a wrong sign, a transposed head) exceeds by orders of
// magnitude.
const gradCheckTol = 1e-6

func TestBackwardGradCheck(t *testing.T) {
	t.Run("stories260K", func(t *testing.T) {
		m, seqs := stories(t, 2, 40)
		if w := gradCheck(t, m, seqs, checkNames(len(m.Blocks))); !(w < gradCheckTol) {
			t.Errorf("worst relative error %.3g, want < %g", w, gradCheckTol)
		}
	})
	for _, window := range []int{0, 5} {
		t.Run(fmt.Sprintf("tiny-window%d", window), func(t *testing.T) {
			m, seqs := tinyModel(t, window)
			if w := gradCheck(t, m, seqs, checkNames(len(m.Blocks))); !(w < gradCheckTol) {
				t.Errorf("worst relative error %.3g, want < %g", w, gradCheckTol)
			}
		})
	}
}

// The float32 backward pass (what Backward runs) agrees with the float64 one.
func TestBackwardFloat32MatchesFloat64(t *testing.T) {
	m, seqs := stories(t, 4, 128)
	names := m.GradientNames()
	g32, err := m.Backward(seqs, names)
	if err != nil {
		t.Fatal(err)
	}
	n, err := newNet[float64](m, names)
	if err != nil {
		t.Fatal(err)
	}
	loss, _, err := n.run(seqs, true)
	if err != nil {
		t.Fatal(err)
	}
	if e := math.Abs(g32.Loss-loss) / loss; !(e < 1e-6) {
		t.Errorf("float32 loss %.8f, float64 %.8f: relative difference %.3g, want < 1e-6", g32.Loss, loss, e)
	}
	// float32 rounding (~6e-8 per operation) grows through the layers and the
	// softmax backward's cancellation; 1e-4 in Frobenius norm is well above
	// what it gives and far below what a bug would.
	const tol = 1e-4
	worst, at := 0.0, ""
	for _, name := range names {
		d, v := n.param(name)
		var ref []float64
		if d != nil {
			ref = d.gw
		} else {
			ref = v.g
		}
		var num, den float64
		for i, x := range g32.Grads[name].Weight {
			num += (float64(x) - ref[i]) * (float64(x) - ref[i])
			den += ref[i] * ref[i]
		}
		if e := math.Sqrt(num / den); e > worst {
			worst, at = e, name
		}
	}
	t.Logf("worst float32 gradient relative error %.2e (%s)", worst, at)
	if !(worst < tol) {
		t.Errorf("float32 gradients differ from float64 by up to %.3g (%s), want < %g", worst, at, tol)
	}
}

// A factored layer is run through as its product B A: with A = W and B the
// identity the gradients of the other layers are those of the dense model.
func TestBackwardThroughFactored(t *testing.T) {
	m, seqs := tinyModel(t, 0)
	fm := *m
	fm.Blocks = slices.Clone(m.Blocks)
	b := *m.Blocks[1]
	k := b.K.(*Dense)
	eye := make([]float32, k.Out()*k.Out())
	for i := range k.Out() {
		eye[i*k.Out()+i] = 1
	}
	b.K = &Factored{A: NewDense(k.Out(), k.In(), k.Weight, nil), B: NewDense(k.Out(), k.Out(), eye, k.Bias)}
	fm.Blocks[1] = &b
	names := []string{"model.layers.0.self_attn.k_proj", "model.layers.1.self_attn.v_proj"}
	want, err := m.Backward(seqs, names)
	if err != nil {
		t.Fatal(err)
	}
	got, err := fm.Backward(seqs, names)
	if err != nil {
		t.Fatal(err)
	}
	// Only float32 rounding of the identity product separates them.
	const tol = 1e-6
	for _, name := range names {
		if e := relErr(got.Grads[name].Weight, want.Grads[name].Weight); !(e < tol) {
			t.Errorf("%s: gradient through the factored layer differs by %.3g, want < %g", name, e, tol)
		}
	}
	if _, err := fm.Backward(seqs, []string{"model.layers.1.self_attn.k_proj"}); err == nil || !strings.Contains(err.Error(), "is factored") {
		t.Errorf("gradient of a factored layer: error %v, want one saying it is factored", err)
	}
}

func TestBackwardBadInput(t *testing.T) {
	m, seqs := tinyModel(t, 0)
	grouped := *m
	grouped.Blocks = slices.Clone(m.Blocks)
	b := *m.Blocks[1]
	k := b.K.(*Dense)
	g, err := NewGrouped(NewDense(4, k.In(), make([]float32, 4*k.In()), nil),
		[]*Dense{NewDense(k.Out(), 4, make([]float32, 4*k.Out()), nil)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	b.K = g
	grouped.Blocks[1] = &b
	mla := *m
	mla.Blocks = slices.Clone(m.Blocks)
	b2 := *m.Blocks[0]
	b2.MLA = &MLA{}
	mla.Blocks[0] = &b2
	for _, tc := range []struct {
		m     *Model
		seqs  [][]int32
		names []string
		want  string
	}{
		{&grouped, seqs, nil, "model.layers.1.self_attn.k_proj is *model.Grouped"},
		{&mla, seqs, nil, "block 0 uses latent attention"},
		{m, seqs, []string{"model.layers.2.self_attn.k_proj"}, `no gradient for "model.layers.2.self_attn.k_proj"`},
		{m, seqs, []string{"lm_head"}, `no gradient for "lm_head"`},
		{m, seqs, []string{"model.norm", "model.norm"}, "requested twice"},
		{m, [][]int32{{1}, {2}}, nil, "nothing to predict"},
		{m, nil, nil, "no sequences"},
		{m, [][]int32{{1, 99}}, nil, "outside the vocabulary"},
	} {
		_, err := tc.m.Backward(tc.seqs, tc.names)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Backward(%v): error %v, want it to contain %q", tc.names, err, tc.want)
		}
		if err != nil && !strings.Contains(tc.want, "vocabulary") && !errors.Is(err, ErrBackward) {
			t.Errorf("error %v is not ErrBackward", err)
		}
	}
}

// benchBatch is the batch timed by the backward benchmarks: 8 sequences of
// 256 tokens of stories260K, or a synthetic model of the same shape.
func benchBatch(b *testing.B) (*Model, [][]int32) {
	m, seqs := stories(b, 8, 256)
	return m, seqs
}

func BenchmarkBackward(b *testing.B) {
	m, seqs := benchBatch(b)
	names := m.GradientNames()
	for b.Loop() {
		if _, err := m.Backward(seqs, names); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkForwardBatch is Forward on the batch of BenchmarkBackward.
func BenchmarkForwardBatch(b *testing.B) {
	m, seqs := benchBatch(b)
	for b.Loop() {
		if _, err := m.Forward(seqs); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkBackwardRatio times Forward, the loss-only pass of the backward
// code and Backward (all gradients, and k/v weights only) on the same batch
// in one run and reports the ratios. The passes are interleaved and each
// keeps its fastest of 7 runs, so load from other processes hits them alike:
//
//	go test -run XXX -bench BackwardRatio -benchtime 1x ./model/
func BenchmarkBackwardRatio(b *testing.B) {
	m, seqs := benchBatch(b)
	names := m.GradientNames()
	var kv []string
	for i := range m.Blocks {
		kv = append(kv, fmt.Sprintf("model.layers.%d.self_attn.k_proj", i), fmt.Sprintf("model.layers.%d.self_attn.v_proj", i))
	}
	passes := []func() error{
		func() error { _, err := m.Forward(seqs); return err },
		func() error {
			n, err := newNet[float32](m, nil)
			if err != nil {
				return err
			}
			_, _, err = n.run(seqs, false)
			return err
		},
		func() error { _, err := m.Backward(seqs, names); return err },
		func() error { _, err := m.Backward(seqs, kv); return err },
	}
	for b.Loop() {
		best := []float64{math.Inf(1), math.Inf(1), math.Inf(1), math.Inf(1)}
		for range 7 {
			for i, f := range passes {
				start := time.Now()
				if err := f(); err != nil {
					b.Fatal(err)
				}
				best[i] = min(best[i], time.Since(start).Seconds())
			}
		}
		fwd, loss, all, kvOnly := best[0], best[1], best[2], best[3]
		b.ReportMetric(all/fwd, "backward/forward")
		fmt.Printf("batch %d×%d tokens: Forward %.1f ms, loss-only pass %.1f ms, Backward all %d parameters %.1f ms (%.2f× Forward), k/v weights only %.1f ms (%.2f×)\n",
			len(seqs), len(seqs[0]), 1e3*fwd, 1e3*loss, len(names), 1e3*all, all/fwd, 1e3*kvOnly, kvOnly/fwd)
	}
}
