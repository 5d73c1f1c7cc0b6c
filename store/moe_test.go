package store

import (
	"testing"

	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/model"
)

// A mixture-of-experts block (no mlp linears: a router and experts) stores
// and reads back its compressed attention projections, with the base
// block's router and experts.
func TestBlockRoundTripMoE(t *testing.T) {
	eachBackend(t, testBlockRoundTripMoE)
}

func testBlockRoundTripMoE(t *testing.T, s *Store) {
	m, err := model.Synthetic(model.SyntheticConfig{ModelType: "mixtral", Hidden: 16, Intermediate: 8, Layers: 1, Heads: 2, KVHeads: 1,
		Vocab: 11, MaxPositions: 8, Experts: 3, TopK: 2}, 1, kernels.Default())
	if err != nil {
		t.Fatal(err)
	}
	orig := m.Blocks[0]
	comp := *orig
	q := orig.Q.(*model.Dense)
	comp.Q = &model.Factored{A: model.NewDense(2, q.In(), make([]float32, 2*q.In()), nil), B: model.NewDense(q.Out(), 2, make([]float32, 2*q.Out()), nil)}
	ref, err := putBlock(s, Key("block", 0), orig, &comp)
	if err != nil {
		t.Fatal(err)
	}
	got, err := getBlock(s, ref, orig)
	if err != nil {
		t.Fatal(err)
	}
	if f, ok := got.Q.(*model.Factored); !ok || f.Rank() != 2 || got.Gate != nil {
		t.Errorf("read back q %T, gate %v", got.Q, got.Gate)
	}
	// The router and the unchanged experts come from the base block (the
	// read-back has its own expert list, so replacing one leaves orig alone).
	if got.MoE == nil || got.MoE.Router != orig.MoE.Router || len(got.MoE.Experts) != len(orig.MoE.Experts) {
		t.Fatalf("read back MoE %+v, want the base block's router and %d experts", got.MoE, len(orig.MoE.Experts))
	}
	for e, x := range got.MoE.Experts {
		if x != orig.MoE.Experts[e] {
			t.Errorf("expert %d changed by the round trip", e)
		}
	}
}
