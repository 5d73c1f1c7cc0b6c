package model

import (
	"path/filepath"
	"slices"
	"testing"

	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/model/safetensors"
)

// A block diff of a mixture-of-experts block holds its changed expert
// linears under their target names: a factored expert alone makes a
// "block" file, a quantized one a "layers" file, and both read back over
// the base block exactly, the base's experts and router untouched.
func TestMoEBlockDiffRoundTrip(t *testing.T) {
	m, err := Synthetic(SyntheticConfig{ModelType: "qwen3_moe", Hidden: 64, Intermediate: 48, Layers: 1, Heads: 4, KVHeads: 2,
		HeadDim: 16, Vocab: 32, MaxPositions: 16, Experts: 4, TopK: 2}, 1, kernels.Default())
	if err != nil {
		t.Fatal(err)
	}
	base := m.Blocks[0]
	const rank = 5
	fac := &Factored{A: NewDense(rank, 48, seq(rank*48, 0.01), nil), B: NewDense(64, rank, seq(64*rank, -0.02), nil)}
	codes := make([]uint8, 48*64)
	for i := range codes {
		codes[i] = uint8(i % 16)
	}
	gidx := make([]int32, 64)
	for k := range gidx {
		gidx[k] = int32(k / 32)
	}
	quant, err := NewQuantized(48, 64, 4, codes, seq(2*48, 0.001), make([]int32, 2*48), gidx, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		kind string
		set  func(b *Block)
	}{
		{"block", func(b *Block) { b.MoE.Experts[1].Down = fac }},
		{"layers", func(b *Block) { b.MoE.Experts[1].Down = fac; b.MoE.Experts[3].Gate = quant }},
	} {
		comp := *base
		comp.MoE = base.MoE.Clone()
		tc.set(&comp)
		p := filepath.Join(t.TempDir(), "diff.safetensors")
		if err := WriteBlockDiff(p, base, &comp); err != nil {
			t.Fatal(err)
		}
		f, err := safetensors.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		if got := f.Metadata()["rankzip"]; got != tc.kind {
			t.Errorf("diff kind %q, want %q", got, tc.kind)
		}
		f.Close()
		back, err := ReadBlockDiff(p, base)
		if err != nil {
			t.Fatalf("%s: %v", tc.kind, err)
		}
		for e := range 4 {
			for j := range 3 {
				mod := ExpertModule(e, j)
				got, want := *back.Linear(mod), *comp.Linear(mod)
				if !sameLinear(t, got, want) {
					t.Errorf("%s: %s read back as %T, written as %T (or its values differ)", tc.kind, mod, got, want)
				}
				if _, dense := (*base.Linear(mod)).(*Dense); !dense {
					t.Errorf("%s: reading changed the base block's %s", tc.kind, mod)
				}
			}
		}
		if back.MoE.Router != base.MoE.Router {
			t.Errorf("%s: the router changed", tc.kind)
		}
	}
}

func seq(n int, step float32) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = step * float32(i%97-48)
	}
	return v
}

// sameLinear compares two linears of the same type value by value.
func sameLinear(t *testing.T, a, b Linear) bool {
	t.Helper()
	switch a := a.(type) {
	case *Dense:
		d, ok := b.(*Dense)
		return ok && (a == d || slices.Equal(a.Weight, d.Weight))
	case *Factored:
		f, ok := b.(*Factored)
		return ok && slices.Equal(a.A.Weight, f.A.Weight) && slices.Equal(a.B.Weight, f.B.Weight)
	case *Quantized:
		q, ok := b.(*Quantized)
		return ok && a.Bits == q.Bits && slices.Equal(a.Q, q.Q) && slices.Equal(a.Scales, q.Scales) && slices.Equal(a.Zeros, q.Zeros) && slices.Equal(a.GIdx, q.GIdx)
	}
	return false
}
