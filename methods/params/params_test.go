package params

import (
	"strings"
	"testing"
)

func TestPaluGroupHeads(t *testing.T) {
	for _, c := range []struct{ kv, want, got int }{
		{8, 0, 4}, {6, 0, 3}, {5, 0, 1}, {2, 0, 2}, {8, 2, 2}, {8, 8, 8},
	} {
		if g, err := PaluGroupHeads(c.kv, c.want); err != nil || g != c.got {
			t.Errorf("PaluGroupHeads(%d, %d) = %d, %v; want %d", c.kv, c.want, g, err, c.got)
		}
	}
	for _, c := range [][2]int{{8, 3}, {8, 16}, {8, -1}, {0, 0}} {
		if g, err := PaluGroupHeads(c[0], c[1]); err == nil {
			t.Errorf("PaluGroupHeads(%d, %d) = %d, want an error", c[0], c[1], g)
		}
	}
}

func TestMLACheck(t *testing.T) {
	ok := MLA{Heads: 8, KVHeads: 4, HeadDim: 16, Freqs: 8, RopeDim: 8, LoraRank: 32, Rotation: "keys", FreqFold: 2, SeqLen: 1}
	if err := ok.Check(); err != nil {
		t.Fatalf("a valid conversion: %v", err)
	}
	for _, c := range []struct {
		edit func(*MLA)
		want string
	}{
		{func(p *MLA) { p.RopeDim = 9 }, "qk_rope_head_dim 9 must be even"},
		{func(p *MLA) { p.LoraRank = 0 }, "kv_lora_rank 0 must be in"},
		{func(p *MLA) { p.FreqFold = 3 }, "freqfold 3 must divide"},
		{func(p *MLA) { p.Heads = 6 }, "6 query heads are not a multiple of 4"},
		{func(p *MLA) { p.Rotation, p.SeqLen = "scores", 0 }, "needs the calibration sequence length"},
		{func(p *MLA) { p.Rotation = "spin" }, `rotation "spin" unknown`},
	} {
		p := ok
		c.edit(&p)
		if err := p.Check(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want %q", p, err, c.want)
		}
	}
}
