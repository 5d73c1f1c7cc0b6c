package model

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/model/safetensors"
)

// SaveBlocks, reading one block at a time, writes Save's files byte for
// byte for every architecture's layout (Phi-3's fused projections, q/k
// norms, Gemma 3's extra norms, experts, Qwen2-MoE's shared expert) and for factored layers; a model
// with latent attention is refused, it is saved whole.
func TestSaveBlocksMatchesSave(t *testing.T) {
	k := kernels.Default()
	base := SyntheticConfig{Hidden: 32, Intermediate: 48, Layers: 11, Heads: 4, KVHeads: 2, Vocab: 64, MaxPositions: 64}
	for _, typ := range []string{"", "phi3", "qwen3", "gemma3_text", "mixtral", "qwen3_moe", "qwen2_moe"} {
		s := base
		s.ModelType = typ
		if typ == "mixtral" || typ == "qwen3_moe" || typ == "qwen2_moe" {
			s.Experts, s.TopK, s.Layers = 4, 2, 3
		}
		m, err := Synthetic(s, 5, k)
		if err != nil {
			t.Fatal(err)
		}
		if typ == "" {
			// Factored layers, low-rank products of the dense ones' rows.
			for _, b := range m.Blocks[:3] {
				d := b.Gate.(*Dense)
				b.Gate = &Factored{A: NewDense(4, d.in, d.Weight[:4*d.in], nil), B: NewDense(d.out, 4, make([]float32, d.out*4), nil)}
			}
		}
		whole, streamed := t.TempDir(), t.TempDir()
		if err := Save(m, whole, safetensors.BF16); err != nil {
			t.Fatal(err)
		}
		reads := 0
		block := func(l int) (*Block, error) { reads++; return m.Blocks[l], nil }
		if err := SaveBlocks(m, len(m.Blocks), block, streamed, safetensors.BF16); err != nil {
			t.Fatalf("%q: %v", typ, err)
		}
		for _, f := range []string{"model.safetensors", "config.json"} {
			a, _ := os.ReadFile(filepath.Join(whole, f))
			b, err := os.ReadFile(filepath.Join(streamed, f))
			if err != nil || len(a) == 0 || !bytes.Equal(a, b) {
				t.Errorf("%q %s: SaveBlocks wrote %d bytes differing from Save's %d (%v)", typ, f, len(b), len(a), err)
			}
		}
		if reads != 2*len(m.Blocks) {
			t.Errorf("%q: %d block reads for %d blocks, want two each", typ, reads, len(m.Blocks))
		}
	}
	mla := randomMLA(t)
	err := SaveBlocks(mla, len(mla.Blocks), func(l int) (*Block, error) { return mla.Blocks[l], nil }, t.TempDir(), safetensors.F32)
	if err == nil || !strings.Contains(err.Error(), "saved whole (Save)") {
		t.Errorf("SaveBlocks of an MLA model: %v", err)
	}
}
