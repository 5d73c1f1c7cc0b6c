package lord_test

import (
	"fmt"

	"gonum.org/v1/gonum/mat"

	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/methods/lord"
)

// The output covariance of W = diag(3, 1) under C = diag(1, 16) is
// diag(9, 16): rank 1 keeps the second output and loses 9, exactly as
// svd.Whiten does.
func ExampleDecompose() {
	w := mat.NewDense(2, 2, []float64{3, 0, 0, 1})
	c := mat.NewSymDense(2, []float64{1, 0, 0, 16})
	r, err := lord.Decompose(kernels.Default(), w, nil, c, nil, 0, 1)
	if err != nil {
		panic(err)
	}
	var ba mat.Dense
	ba.Mul(r.B, r.A)
	fmt.Printf("σ = [%.4g %.4g], predicted error %.4g\n", r.Sigma[0], r.Sigma[1], r.PredictedError)
	fmt.Printf("B A = [%.4g %.4g; %.4g %.4g]\n", ba.At(0, 0)+0, ba.At(0, 1)+0, ba.At(1, 0)+0, ba.At(1, 1)+0)
	// Output:
	// σ = [4 3], predicted error 9
	// B A = [0 0; 0 1]
}
