package calib

import (
	"fmt"
	"math"
	"slices"
	"sort"
	"strings"
	"testing"

	"gonum.org/v1/gonum/mat"

	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/model"
)

// tinyMoE is a random mixture of experts of model type typ (qwen3_moe, or
// qwen2_moe with its shared expert of 48; 4 experts of 24, top 2, hidden
// 32) and calibration data.
func tinyMoE(t *testing.T, typ string) (*model.Model, [][]int32) {
	t.Helper()
	m, err := model.Synthetic(model.SyntheticConfig{ModelType: typ, Hidden: 32, Intermediate: 24, Layers: 2, Heads: 4, KVHeads: 2,
		HeadDim: 8, Vocab: 50, MaxPositions: 32, Experts: 4, TopK: 2}, 7, kernels.Default())
	if err != nil {
		t.Fatal(err)
	}
	seqs, err := model.Sample(m, 6, 20, 1, 3)
	if err != nil {
		t.Fatal(err)
	}
	return m, seqs
}

// handRouted picks, in float64 and independently of model.MoE.Route, the
// rows of x (rows×dim) whose top-k router scores include expert e.
func handRouted(router *model.Dense, x []float32, rows, dim, experts, k, e int) []int {
	var out []int
	for r := range rows {
		score := make([]float64, experts)
		for i := range experts {
			for c := range dim {
				score[i] += float64(router.Weight[i*dim+c]) * float64(x[r*dim+c])
			}
		}
		idx := []int{0, 1, 2, 3}[:experts]
		sort.SliceStable(idx, func(a, b int) bool { return score[idx[a]] > score[idx[b]] })
		for _, i := range idx[:k] {
			if i == e {
				out = append(out, r)
			}
		}
	}
	return out
}

// The Gram of each expert, of its gate/up input and of its down input, is
// the one computed by hand from the rows the router sends to it, and only
// those; the experts together see every token k times.
func TestCollectExpertsRoutedRows(t *testing.T) {
	m, seqs := tinyMoE(t, "qwen3_moe")
	st, err := Embed(m, seqs, 3, Original)
	if err != nil {
		t.Fatal(err)
	}
	b := m.Blocks[0]
	for _, down := range []bool{false, true} {
		stats, err := CollectExperts(m, b, b, st, down)
		if err != nil {
			t.Fatal(err)
		}
		total := 0
		for e, s := range stats {
			dim := 32
			if down {
				dim = 24
			}
			want := mat.NewSymDense(dim, nil)
			n := 0
			for _, h := range st.Orig {
				x := mlpInput(m, b, h)
				for _, r := range handRouted(b.MoE.Router, x, h.Rows(), 32, 4, 2, e) {
					row := make([]float64, dim)
					if down {
						ex := b.MoE.Experts[e]
						g, u := make([]float32, 24), make([]float32, 24)
						ex.Gate.Apply(m.Backend, g, x[r*32:(r+1)*32], 1)
						ex.Up.Apply(m.Backend, u, x[r*32:(r+1)*32], 1)
						for i := range row {
							row[i] = float64(g[i]) / (1 + math.Exp(-float64(g[i]))) * float64(u[i])
						}
					} else {
						for i := range row {
							row[i] = float64(x[r*32+i])
						}
					}
					want.SymRankOne(want, 1, mat.NewVecDense(dim, row))
					n++
				}
			}
			if s.N != n || n == 0 {
				t.Fatalf("down %v expert %d: %d tokens, routed by hand %d", down, e, s.N, n)
			}
			var diff mat.Dense
			diff.Sub(s.C, want)
			if rel := mat.Norm(&diff, 2) / mat.Norm(want, 2); rel > 1e-5 {
				t.Errorf("down %v expert %d: Gram differs from the routed rows' by %.2e (tolerance 1e-5)", down, e, rel)
			}
			total += s.N
		}
		if total != 2*st.Tokens() {
			t.Errorf("down %v: experts saw %d rows, want top-2 × %d tokens", down, total, st.Tokens())
		}
	}

	// Sequential with comp the same block: the cross-Gram pairs each routed
	// row with itself, so it equals the Gram.
	sq, err := Embed(m, seqs, 3, Sequential)
	if err != nil {
		t.Fatal(err)
	}
	stats, err := CollectExperts(m, b, b, sq, true)
	if err != nil {
		t.Fatal(err)
	}
	for e, s := range stats {
		var diff mat.Dense
		diff.Sub(s.Cross, s.C)
		if rel := mat.Norm(&diff, 2) / mat.Norm(s.C, 2); rel > 1e-12 {
			t.Errorf("sequential expert %d: cross-Gram differs from the Gram by %.2e", e, rel)
		}
	}
}

// An expert the router never picks gets statistics with no tokens.
func TestCollectExpertsUnrouted(t *testing.T) {
	m, seqs := tinyMoE(t, "qwen3_moe")
	st, err := Embed(m, seqs, 6, Original)
	if err != nil {
		t.Fatal(err)
	}
	b := *m.Blocks[0]
	b.MoE = b.MoE.Clone()
	// Equal scores: the stable top-2 keeps experts 0 and 1.
	r := b.MoE.Router
	b.MoE.Router = model.NewDense(r.Out(), r.In(), make([]float32, len(r.Weight)), nil)
	stats, err := CollectExperts(m, &b, &b, st, false)
	if err != nil {
		t.Fatal(err)
	}
	for e, s := range stats {
		if want := map[bool]int{true: st.Tokens(), false: 0}[e < 2]; s.N != want {
			t.Errorf("expert %d: %d tokens, want %d", e, s.N, want)
		}
	}
}

// rerunExperts is the expert statistics as CollectExperts took them before
// the pass did: each batch runs the block again from its input up to the
// MoE site (mlpInput), for the original and the compressed block, beside
// the pass that has already run them there; the rows then go to the
// experts as the pass sends them (addRouted, whose routing
// TestCollectExpertsRoutedRows checks by hand).
func rerunExperts(m *model.Model, orig, comp *model.Block, st *Streams, down bool) ([]*SiteStats, error) {
	seq := st.Mode == Sequential
	blk := orig
	if seq {
		blk = comp
	}
	stats := make([]*SiteStats, len(orig.MoE.Experts))
	for e, ex := range orig.MoE.Experts {
		dim := ex.Gate.In()
		if down {
			dim = ex.Down.In()
		}
		stats[e] = newSiteStats(dim, seq)
	}
	for i, h := range st.Orig {
		xo := mlpInput(m, orig, h)
		xc := xo
		if seq {
			xc = mlpInput(m, comp, st.Comp[i])
		}
		if err := addRouted(m, stats, blk, orig, xc, xo, h.Rows(), h.Dim, down, seq); err != nil {
			return nil, err
		}
	}
	return stats, nil
}

// mlpInput is the normalised MLP input of block b on h (rows×hidden).
func mlpInput(m *model.Model, b *model.Block, h *model.States) []float32 {
	var x []float32
	m.RunBlock(b, h, func(at model.Site, v []float32, rows, cols int) bool {
		if at != model.MLPInput {
			return true
		}
		x = slices.Clone(v[:rows*cols])
		return false
	})
	return x
}

// compressAttention changes comp's attention as a compression stage would
// (q and o scaled), so that the compressed stream differs from the original.
func compressAttention(comp *model.Block) {
	comp.Q = scaled(comp.Q.(*model.Dense), 0.9)
	comp.O = scaled(comp.O.(*model.Dense), 0.8)
}

// compressGateUp changes every expert's gate and up projections of comp, as
// a stage would between the two groups of expert statistics.
func compressGateUp(comp *model.Block) {
	for e := range comp.MoE.Experts {
		ex := &comp.MoE.Experts[e]
		ex.Gate = scaled(ex.Gate.(*model.Dense), 0.7)
		ex.Up = scaled(ex.Up.(*model.Dense), 1.1)
	}
}

// The pass's expert statistics, taken where its runs stopped, are those of
// the old path that ran the block again from its input (rerunExperts), in
// both modes, in memory and spilled, with the attention and then the gate
// and up projections changed between the calls as a compression changes
// them; the streams entering the next block are RunBlock's.
func TestPassExpertsMatchRerun(t *testing.T) {
	m, seqs := tinyMoE(t, "qwen3_moe")
	for _, mode := range []Mode{Sequential, Original} {
		for _, spill := range []bool{false, true} {
			dir := ""
			if spill {
				dir = t.TempDir()
			}
			st, err := EmbedSpill(m, seqs, 4, mode, dir) // two batches
			if err != nil {
				t.Fatal(err)
			}
			orig := m.Blocks[0]
			comp := *orig
			comp.MoE = orig.MoE.Clone()
			pass := NewPass(m, orig, &comp, st)
			if _, err := pass.Stats(model.AttnInput); err != nil {
				t.Fatal(err)
			}
			compressAttention(&comp)
			for _, down := range []bool{false, true} {
				got, err := pass.Experts(down)
				if err != nil {
					t.Fatal(err)
				}
				want, err := rerunExperts(m, orig, &comp, st, down)
				if err != nil {
					t.Fatal(err)
				}
				for e := range want {
					g, w := got[e], want[e]
					where := fmt.Sprintf("%s spill %v down %v expert %d", mode, spill, down, e)
					if g.N != w.N || w.N == 0 {
						t.Fatalf("%s: %d rows, the rerun %d", where, g.N, w.N)
					}
					if !slices.Equal(g.Sum, w.Sum) || !slices.Equal(g.AbsSum, w.AbsSum) {
						t.Errorf("%s: sums differ", where)
					}
					// The same float32 work on the same rows in the same
					// order: bit-equal, not only within statsTol.
					if !mat.Equal(g.C, w.C) {
						t.Errorf("%s: Gram differs by %.3g relative, want bit-equal", where, frobRel(g.C, w.C))
					}
					if (g.Cross == nil) != (mode == Original) || g.Cross != nil && !mat.Equal(g.Cross, w.Cross) {
						t.Errorf("%s: cross-Gram differs from the rerun's", where)
					}
				}
				compressGateUp(&comp)
			}
			next, err := pass.Next()
			if err != nil {
				t.Fatal(err)
			}
			for i, h := range st.Orig {
				if !slices.Equal(next.Orig[i].X, m.RunBlock(orig, h, nil).X) {
					t.Errorf("%s batch %d: original stream differs from RunBlock", mode, i)
				}
				if mode == Sequential && !slices.Equal(next.Comp[i].X, m.RunBlock(&comp, st.Comp[i], nil).X) {
					t.Errorf("%s batch %d: compressed stream differs from RunBlock", mode, i)
				}
			}
			next.Release()
			st.Release()
		}
	}
}

// A block without experts has no expert statistics.
func TestPassExpertsDenseBlock(t *testing.T) {
	m, err := model.Synthetic(model.SyntheticConfig{Hidden: 16, Intermediate: 24, Layers: 1, Heads: 4, KVHeads: 2, Vocab: 32, MaxPositions: 16}, 2, kernels.Default())
	if err != nil {
		t.Fatal(err)
	}
	st, err := Embed(m, [][]int32{{1, 2, 3}}, 1, Original)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := CollectExperts(m, m.Blocks[0], m.Blocks[0], st, false); err == nil || !strings.Contains(err.Error(), "no experts") {
		t.Errorf("expert statistics of a dense block: %v, want an error saying it has no experts", err)
	}
}

// BenchmarkExpertStatistics times one MoE block's calibration as a stage
// runs it (attention statistics, the experts' gate/up then down
// statistics, the streams for the next block), Sequential, with the expert
// statistics from the old rerun of the block ("rerun") and from the pass
// ("pass"): go test ./calib -run '^$' -bench ExpertStatistics.
func BenchmarkExpertStatistics(b *testing.B) {
	m, err := model.Synthetic(model.SyntheticConfig{ModelType: "qwen3_moe", Hidden: 256, Intermediate: 128, Layers: 1, Heads: 8, KVHeads: 4,
		HeadDim: 32, Vocab: 256, MaxPositions: 256, Experts: 8, TopK: 2}, 5, kernels.Default())
	if err != nil {
		b.Fatal(err)
	}
	seqs, err := model.Sample(m, 16, 256, 1, 9)
	if err != nil {
		b.Fatal(err)
	}
	st, err := Embed(m, seqs, 4, Sequential)
	if err != nil {
		b.Fatal(err)
	}
	for _, path := range []string{"rerun", "pass"} {
		b.Run(path, func(b *testing.B) {
			for b.Loop() {
				orig := m.Blocks[0]
				comp := *orig
				comp.MoE = orig.MoE.Clone()
				pass := NewPass(m, orig, &comp, st)
				if _, err := pass.Stats(model.AttnInput); err != nil {
					b.Fatal(err)
				}
				if _, err := pass.Stats(model.OInput); err != nil {
					b.Fatal(err)
				}
				for _, down := range []bool{false, true} {
					var err error
					if path == "rerun" {
						_, err = rerunExperts(m, orig, &comp, st, down)
					} else {
						_, err = pass.Experts(down)
					}
					if err != nil {
						b.Fatal(err)
					}
				}
				if _, err := pass.Next(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// CollectExperts is Experts on a pass of its own (a Pass that stops at the
// experts), for the tests of one group of expert statistics.
// orig and comp are as in Collect.
func CollectExperts(m *model.Model, orig, comp *model.Block, st *Streams, down bool) ([]*SiteStats, error) {
	p := NewPass(m, orig, comp, st)
	defer p.Release()
	p.once = true
	return p.Experts(down)
}
