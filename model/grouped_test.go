package model

import (
	"math/rand/v2"
	"testing"

	"github.com/rankzip/rankzip/kernels"
)

// A grouped layer computes the block rows Upⱼ Down[rows of group j] x + b.
func TestGroupedMatchesDense(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 1))
	randv := func(n int) []float32 {
		v := make([]float32, n)
		for i := range v {
			v[i] = float32(rng.NormFloat64())
		}
		return v
	}
	const in, rowsPerGroup = 12, 6
	ranks := []int{2, 3, 4}
	down := NewDense(9, in, randv(9*in), nil)
	var ups []*Dense
	for _, r := range ranks {
		ups = append(ups, NewDense(rowsPerGroup, r, randv(rowsPerGroup*r), nil))
	}
	bias := randv(18)
	g, err := NewGrouped(down, ups, bias)
	if err != nil {
		t.Fatal(err)
	}
	// The same map as a dense 18×12 matrix: group j's rows are Upⱼ · Down[off:off+rⱼ].
	w := make([]float32, 18*in)
	off := 0
	for j, u := range ups {
		for i := range rowsPerGroup {
			for c := range in {
				var s float32
				for r := range ranks[j] {
					s += u.Weight[i*ranks[j]+r] * down.Weight[(off+r)*in+c]
				}
				w[(j*rowsPerGroup+i)*in+c] = s
			}
		}
		off += ranks[j]
	}
	d := NewDense(18, in, w, bias)
	x := randv(5 * in)
	a, b := make([]float32, 5*18), make([]float32, 5*18)
	k := kernels.Default()
	g.Apply(k, a, x, 5)
	d.Apply(k, b, x, 5)
	if e := relErr(a, b); e > 1e-6 {
		t.Errorf("grouped and dense outputs differ by %.3g", e)
	}
	if g.Latent() != 9 || g.Out() != 18 || cachedWidth(g) != 9 {
		t.Errorf("latent %d out %d cached %d", g.Latent(), g.Out(), cachedWidth(g))
	}
	if _, err := NewGrouped(down, ups[:2], nil); err == nil {
		t.Error("want an error when the up-projections take fewer latent values than the down-projection gives")
	}
}
