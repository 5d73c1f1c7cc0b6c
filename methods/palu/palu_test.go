package palu

import (
	"math"
	"math/rand/v2"
	"testing"

	"gonum.org/v1/gonum/mat"

	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/methods/svd"
)

// problem returns a random K projection of kv heads of headDim rows over
// hidden inputs and the Gram of 4·hidden correlated tokens.
func problem(kv, headDim, hidden int, seed uint64) (*mat.Dense, *mat.SymDense) {
	rng := rand.New(rand.NewPCG(seed, 1))
	w := mat.NewDense(kv*headDim, hidden, nil)
	for i := range kv * headDim {
		for j := range hidden {
			w.Set(i, j, rng.NormFloat64())
		}
	}
	x := mat.NewDense(4*hidden, hidden, nil)
	for i := range 4 * hidden {
		for j := range hidden {
			x.Set(i, j, rng.NormFloat64()*math.Pow(0.9, float64(j)))
		}
	}
	c := mat.NewSymDense(hidden, nil)
	c.SymOuterK(1, x.T())
	return w, c
}

func uniformRanks(groups, rank int) []int {
	r := make([]int, groups)
	for i := range r {
		r[i] = rank
	}
	return r
}

func TestGroupHeads(t *testing.T) {
	for _, tc := range []struct{ kv, want, got int }{{8, 0, 4}, {4, 0, 4}, {6, 0, 3}, {5, 0, 1}, {8, 2, 2}, {8, 8, 8}} {
		g, err := GroupHeads(tc.kv, tc.want)
		if err != nil || g != tc.got {
			t.Errorf("GroupHeads(%d, %d) = %d, %v; want %d", tc.kv, tc.want, g, err, tc.got)
		}
	}
	for _, tc := range []struct{ kv, want int }{{8, 3}, {4, 8}, {4, -1}} {
		if _, err := GroupHeads(tc.kv, tc.want); err == nil {
			t.Errorf("GroupHeads(%d, %d): want an error", tc.kv, tc.want)
		}
	}
}

func TestFullRankIsExact(t *testing.T) {
	k := kernels.Default()
	w, c := problem(4, 8, 32, 1)
	bias := make([]float64, 32)
	for _, g := range []int{1, 2, 4} {
		res, err := Decompose(k, w, bias, c, 8, g, uniformRanks(4/g, 8*g))
		if err != nil {
			t.Fatal(err)
		}
		var d mat.Dense
		d.Sub(res.Rebuild(), w)
		if e := mat.Norm(&d, 2) / mat.Norm(w, 2); e > 1e-10 {
			t.Errorf("groups of %d at full rank: relative error %.3g", g, e)
		}
		if res.LatentSize() != 32 || len(res.Bias) != 32 {
			t.Errorf("latent %d bias %d, want 32 and 32", res.LatentSize(), len(res.Bias))
		}
	}
}

// At the same total latent size, coarser groups never do worse:
// J-LRD ≤ G-LRD ≤ M-LRD in calibration error, measured independently.
func TestCoarserGroupsAreNoWorse(t *testing.T) {
	k := kernels.Default()
	const kv, d, hidden = 4, 8, 32
	for seed := uint64(1); seed <= 5; seed++ {
		w, c := problem(kv, d, hidden, seed)
		for _, total := range []int{4, 8, 16, 24} {
			var errs []float64
			for _, g := range []int{1, 2, 4} { // M-LRD, G-LRD, J-LRD
				res, err := Decompose(k, w, nil, c, d, g, uniformRanks(kv/g, total*g/kv))
				if err != nil {
					t.Fatal(err)
				}
				measured := svd.CalibError(w, res.Rebuild(), c)
				if math.Abs(measured-res.PredictedError) > 1e-8*measured+1e-9 {
					t.Errorf("predicted %.6g, measured %.6g", res.PredictedError, measured)
				}
				errs = append(errs, measured)
			}
			const slack = 1 + 1e-9
			if !(errs[2] <= errs[1]*slack && errs[1] <= errs[0]*slack) {
				t.Errorf("seed %d latent %d: J %.6g, G %.6g, M %.6g: want J ≤ G ≤ M", seed, total, errs[2], errs[1], errs[0])
			}
		}
	}
}

func TestHadamardIsOrthonormal(t *testing.T) {
	for _, r := range []int{1, 2, 7, 8, 12, 33} {
		h := Hadamard(r)
		var p mat.Dense
		p.Mul(h, h.T())
		for i := range r {
			for j := range r {
				want := 0.0
				if i == j {
					want = 1
				}
				if math.Abs(p.At(i, j)-want) > 1e-12 {
					t.Fatalf("Hadamard(%d): H Hᵀ[%d,%d] = %v", r, i, j, p.At(i, j))
				}
			}
		}
	}
	// A power-of-two block mixes every channel: no zero entries.
	h := Hadamard(8)
	for i := range 8 {
		for j := range 8 {
			if h.At(i, j) == 0 {
				t.Fatalf("Hadamard(8) has a zero at %d,%d", i, j)
			}
		}
	}
}

func TestRotateKeepsTheMap(t *testing.T) {
	w, c := problem(4, 8, 32, 3)
	res, err := Decompose(kernels.Default(), w, nil, c, 8, 2, []int{5, 12})
	if err != nil {
		t.Fatal(err)
	}
	var d mat.Dense
	d.Sub(res.Rotate().Rebuild(), res.Rebuild())
	if e := mat.Norm(&d, 2) / mat.Norm(res.Rebuild(), 2); e > 1e-12 {
		t.Errorf("rotated factors differ by %.3g", e)
	}
}
