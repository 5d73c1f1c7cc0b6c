package rank_test

import (
	"fmt"

	"github.com/rankzip/rankzip/methods/rank"
)

// Two 64×64 matrices at keep 0.3: "low" has three strong directions, "flat"
// an even spectrum. Uniform gives both rank 9; Global gives "low" the three
// ranks it needs and the rest to "flat".
func ExampleGlobal() {
	low := make([]float64, 64)
	copy(low, []float64{3, 2, 1})
	flat := make([]float64, 64)
	for i := range flat {
		flat[i] = 1
	}
	mats := []rank.Matrix{
		{Name: "low", Out: 64, In: 64, Sigma: low},
		{Name: "flat", Out: 64, In: 64, Sigma: flat},
	}
	for _, f := range []func([]rank.Matrix, float64) (rank.Allocation, error){rank.Uniform, rank.Global} {
		a, err := f(mats, 0.3)
		if err != nil {
			panic(err)
		}
		e := rank.NormalisedError(mats[0], a.Choices[0]) + rank.NormalisedError(mats[1], a.Choices[1])
		fmt.Printf("ranks %d and %d, %d of %d params, normalised error %.3f\n", a.Choices[0].Rank, a.Choices[1].Rank, a.Params, a.Target, e)
	}
	// Output:
	// ranks 9 and 9, 2304 of 2457 params, normalised error 0.859
	// ranks 3 and 16, 2432 of 2457 params, normalised error 0.750
}
