package calib

import (
	"os"
	"slices"
	"testing"

	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/model"
)

// Spilled streams hold the same hidden states as in-memory ones, block after
// block, and leave no files behind.
func TestSpilledStreamsMatchMemory(t *testing.T) {
	m, err := model.Synthetic(model.SyntheticConfig{Hidden: 16, Intermediate: 24, Layers: 2, Heads: 4, KVHeads: 2, Vocab: 32, MaxPositions: 16}, 1, kernels.Default())
	if err != nil {
		t.Fatal(err)
	}
	seqs := [][]int32{{1, 2, 3}, {4, 5, 6, 7}, {8, 9}}
	dir := t.TempDir()
	mem, err := Embed(m, seqs, 2, Sequential)
	if err != nil {
		t.Fatal(err)
	}
	disk, err := EmbedSpill(m, seqs, 2, Sequential, dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range m.Blocks {
		if mem, err = Advance(m, b, b, mem); err != nil {
			t.Fatal(err)
		}
		next, err := Advance(m, b, b, disk)
		if err != nil {
			t.Fatal(err)
		}
		disk.Release()
		disk = next
	}
	for i := range mem.Orig {
		if !slices.Equal(mem.Orig[i].X, disk.Orig[i].X) || !slices.Equal(mem.Comp[i].X, disk.Comp[i].X) {
			t.Fatalf("batch %d differs between spilled and in-memory streams", i)
		}
	}
	disk.Release()
	if left, _ := os.ReadDir(dir); len(left) != 0 {
		t.Errorf("spill directory still holds %d files", len(left))
	}
}
