package svd_test

import (
	"fmt"

	"gonum.org/v1/gonum/mat"

	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/methods/svd"
)

// W = diag(3, 1), but the second input channel is four times as loud
// (C = diag(1, 16)): W S = diag(3, 4), so the rank-1 whitened fit keeps the
// second output, and loses 9, where plain SVD keeps the larger weight and
// loses 16.
func ExampleWhiten() {
	k := kernels.Default()
	w := mat.NewDense(2, 2, []float64{3, 0, 0, 1})
	c := mat.NewSymDense(2, []float64{1, 0, 0, 16})
	r, err := svd.Whiten(k, w, c, 1)
	if err != nil {
		panic(err)
	}
	var ba mat.Dense
	ba.Mul(r.B, r.A)
	fmt.Printf("path %v, σ = [%.4g %.4g], predicted error %.4g\n", r.Path, r.Sigma[0], r.Sigma[1], r.PredictedError)
	fmt.Printf("B A = [%.4g %.4g; %.4g %.4g]\n", ba.At(0, 0)+0, ba.At(0, 1)+0, ba.At(1, 0)+0, ba.At(1, 1)+0)

	p, err := svd.Plain(k, w, 1)
	if err != nil {
		panic(err)
	}
	var pba mat.Dense
	pba.Mul(p.B, p.A)
	fmt.Printf("calibration error: whiten %.4g, plain %.4g\n", svd.CalibError(w, &ba, c), svd.CalibError(w, &pba, c))
	// Output:
	// path cholesky, σ = [4 3], predicted error 9
	// B A = [0 0; 0 1]
	// calibration error: whiten 9, plain 16
}
