package calib

import (
	"testing"

	"gonum.org/v1/gonum/mat"
)

// Qwen2-MoE's shared expert, which every row goes through, gets statistics
// over every token after the routed experts': its gate/up input is the
// normalised MLP input, its down input the shared expert's hidden
// activation; in Sequential mode with comp the same block, the cross-Gram
// equals the Gram.
func TestCollectExpertsSharedExpert(t *testing.T) {
	m, seqs := tinyMoE(t, "qwen2_moe")
	b := m.Blocks[1]
	for _, mode := range []Mode{Original, Sequential} {
		st, err := Embed(m, seqs, 3, mode)
		if err != nil {
			t.Fatal(err)
		}
		// Walk the streams to block 1 as the compression loop does.
		if st, err = Advance(m, m.Blocks[0], m.Blocks[0], st); err != nil {
			t.Fatal(err)
		}
		for _, down := range []bool{false, true} {
			stats, err := CollectExperts(m, b, b, st, down)
			if err != nil {
				t.Fatal(err)
			}
			if len(stats) != 5 {
				t.Fatalf("%d statistics, want 4 routed experts and the shared one", len(stats))
			}
			s := stats[4]
			dim := 32
			if down {
				dim = 48 // shared_expert_intermediate_size: 2 × 24
			}
			want := mat.NewSymDense(dim, nil)
			for _, h := range st.Orig {
				x := mlpInput(m, b, h)
				if down {
					x = b.MoE.Shared.Hidden(m, x, h.Rows())
				}
				for r := range h.Rows() {
					row := make([]float64, dim)
					for i := range row {
						row[i] = float64(x[r*dim+i])
					}
					want.SymRankOne(want, 1, mat.NewVecDense(dim, row))
				}
			}
			if s.N != st.Tokens() || s.Dim != dim {
				t.Fatalf("mode %v down %v: shared expert saw %d tokens of %d values, want every token (%d) of %d", mode, down, s.N, s.Dim, st.Tokens(), dim)
			}
			var diff mat.Dense
			diff.Sub(s.C, want)
			if rel := mat.Norm(&diff, 2) / mat.Norm(want, 2); rel > 1e-5 {
				t.Errorf("mode %v down %v: shared expert's Gram differs from every row's by %.2e (tolerance 1e-5)", mode, down, rel)
			}
			if mode == Sequential {
				diff.Sub(s.Cross, s.C)
				if rel := mat.Norm(&diff, 2) / mat.Norm(s.C, 2); rel > 1e-12 {
					t.Errorf("down %v: sequential cross-Gram differs from the Gram by %.2e", down, rel)
				}
			}
		}
	}
}
