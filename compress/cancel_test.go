package compress

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/rankzip/rankzip/calib"
	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/model"
)

// A context cancelled while a block is being compressed stops the block
// after the layer under way, with ctx's error: the units after it are not
// started. Beats name every unit before, in order.
func TestBlockCancelBetweenLayers(t *testing.T) {
	m, err := model.Synthetic(model.SyntheticConfig{Hidden: 32, Intermediate: 48, Layers: 2, Heads: 4, KVHeads: 2, Vocab: 64, MaxPositions: 32}, 5, kernels.Default())
	if err != nil {
		t.Fatal(err)
	}
	var seqs [][]int32
	for s := range 6 {
		var seq []int32
		for p := range 16 {
			seq = append(seq, int32((5*s+7*p)%64))
		}
		seqs = append(seqs, seq)
	}
	p, err := NewPlan(context.Background(), Whole(m), seqs, Options{Rank: 8, Batch: 4})
	if err != nil {
		t.Fatal(err)
	}
	st, err := calib.Embed(m, seqs, p.Options.Batch, p.Options.Mode)
	if err != nil {
		t.Fatal(err)
	}
	// Uncancelled, the block beats for every layer.
	var all []string
	if _, layers, _, err := p.Block(context.Background(), m, 0, st, func(done string) { all = append(all, done) }); err != nil || len(layers) != 7 {
		t.Fatalf("uncancelled block: %d layers, error %v", len(layers), err)
	}
	stop := "model.layers.0.self_attn.o_proj"
	if !slices.Contains(all, stop) {
		t.Fatalf("beats %q do not name %s", all, stop)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var beats []string
	_, _, _, err = p.Block(ctx, m, 0, st, func(done string) {
		beats = append(beats, done)
		if done == stop {
			cancel()
		}
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled block: error %v, want context.Canceled", err)
	}
	if want := all[:slices.Index(all, stop)+1]; !slices.Equal(beats, want) {
		t.Errorf("cancelled block beat %q, want it to stop after %s: %q", beats, stop, want)
	}
}
