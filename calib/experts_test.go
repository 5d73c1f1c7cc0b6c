package calib

import (
	"math"
	"sort"
	"testing"

	"gonum.org/v1/gonum/mat"

	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/model"
)

// tinyMoE is a random Qwen3-MoE (4 experts, top 2) and calibration data.
func tinyMoE(t *testing.T) (*model.Model, [][]int32) {
	t.Helper()
	m, err := model.Synthetic(model.SyntheticConfig{ModelType: "qwen3_moe", Hidden: 32, Intermediate: 24, Layers: 2, Heads: 4, KVHeads: 2,
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
	m, seqs := tinyMoE(t)
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
	m, seqs := tinyMoE(t)
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
