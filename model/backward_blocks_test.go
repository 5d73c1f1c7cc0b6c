package model

import (
	"math"
	"slices"
	"strings"
	"testing"
)

// gradSteps chains the block steps over one batch as a caller holding one
// block at a time would, and returns the loss and every named gradient.
func gradSteps(t *testing.T, m *Model, seqs [][]int32, names []string) (float64, map[string]*Grad) {
	t.Helper()
	top := *m
	top.Blocks = nil // the steps take their block as an argument
	bare := top      // the block steps read no embeddings, final norm or LM head
	bare.Embed, bare.Norm, bare.LMHead = nil, nil, nil
	h, err := top.GradEmbed(seqs)
	if err != nil {
		t.Fatal(err)
	}
	inputs := make([]*States, len(m.Blocks))
	for l, b := range m.Blocks {
		inputs[l] = h
		if h, err = bare.GradForward(l, b, h); err != nil {
			t.Fatal(err)
		}
	}
	loss, _, dh, err := top.GradHead(seqs, h)
	if err != nil {
		t.Fatal(err)
	}
	grads := map[string]*Grad{}
	for l := len(m.Blocks) - 1; l >= 0; l-- {
		var mine []string
		for _, n := range names {
			if i, _, _ := ParseModuleName(n); i == l {
				mine = append(mine, n)
			}
		}
		g, err := bare.GradBackward(l, m.Blocks[l], inputs[l], dh, mine)
		if err != nil {
			t.Fatal(err)
		}
		for n, v := range g {
			grads[n] = v
		}
	}
	return loss, grads
}

// The block steps give Backward's loss and gradients bit for bit, on
// stories260K and on architectures with q/k norms, sliding windows, Gemma's
// local RoPE, post norms and soft caps, and with biases.
func TestGradStepsMatchBackward(t *testing.T) {
	type tc struct {
		name string
		m    *Model
		seqs [][]int32
	}
	sm, sseqs := stories(t, 3, 40)
	tm, tseqs := tinyModel(t, 5)
	cases := []tc{{"stories260K", sm, sseqs}, {"tiny with biases and a window", tm, tseqs}}
	for _, name := range []string{"qwen3-sliding", "gemma3_text", "gemma2"} {
		m, a, _, _ := loadRef(t, name, false)
		cases = append(cases, tc{name, m, refSequences(a.vocab)})
	}
	for _, c := range cases {
		var names []string
		for _, n := range c.m.GradientNames() {
			if n != "model.norm" {
				names = append(names, n)
			}
		}
		want, err := c.m.Backward(c.seqs, names)
		if err != nil {
			t.Fatal(err)
		}
		loss, got := gradSteps(t, c.m, c.seqs, names)
		if loss != want.Loss {
			t.Errorf("%s: loss %v by the block steps, %v by Backward", c.name, loss, want.Loss)
		}
		for _, n := range names {
			g, w := got[n], want.Grads[n]
			if g == nil || !slices.Equal(g.Weight, w.Weight) || !slices.Equal(g.Bias, w.Bias) {
				t.Errorf("%s: %s differs between the block steps and Backward", c.name, n)
			}
		}
		if math.IsNaN(loss) || loss <= 0 {
			t.Errorf("%s: loss %v", c.name, loss)
		}
	}
}

func TestGradStepsBadInput(t *testing.T) {
	m, seqs := tinyModel(t, 0)
	h, err := m.GradEmbed(seqs)
	if err != nil {
		t.Fatal(err)
	}
	dh := make([]float32, len(h.X))
	for _, c := range []struct {
		want string
		err  func() error
	}{
		{"not a parameter of block 0", func() error {
			_, err := m.GradBackward(0, m.Blocks[0], h, dh, []string{"model.layers.1.mlp.up_proj"})
			return err
		}},
		{"block 2 of a model with 2", func() error { _, err := m.GradForward(2, m.Blocks[0], h); return err }},
		{"gradient of 3 values", func() error { _, err := m.GradBackward(0, m.Blocks[0], h, dh[:3], nil); return err }},
		{"for 1 sequences", func() error { _, _, _, err := m.GradHead(seqs[:1], h); return err }},
		{"values for", func() error {
			short := *h
			short.X = h.X[:len(h.X)-1]
			_, _, _, err := m.GradHead(seqs, &short)
			return err
		}},
		{"token id 99", func() error { _, err := m.GradEmbed([][]int32{{1, 99}}); return err }},
	} {
		if err := c.err(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("error %v, want one containing %q", err, c.want)
		}
	}
}
