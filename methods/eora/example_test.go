package eora_test

import (
	"fmt"

	"gonum.org/v1/gonum/mat"

	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/methods/eora"
)

// The compression error is ΔW = W − W_c = diag(3, 1), but the second input
// channel is four times as loud (C = diag(1, 16)): in the eigenspace of C
// the error is diag(3, 4), so the rank-1 correction fixes the second output
// (leaving 3² = 9), where plain SVD of ΔW would fix the larger first one
// (leaving 1²·16 = 16).
func ExampleCompensate() {
	w := mat.NewDense(2, 2, []float64{3.5, 0, 0, 1.5})
	wc := mat.NewDense(2, 2, []float64{0.5, 0, 0, 0.5})
	c := mat.NewSymDense(2, []float64{1, 0, 0, 16})
	r, err := eora.Compensate(kernels.Default(), w, wc, c, 1)
	if err != nil {
		panic(err)
	}
	var ba mat.Dense
	ba.Mul(r.B, r.A)
	fmt.Printf("σ = [%.4g %.4g], kept %d eigenvalues\n", r.Sigma[0], r.Sigma[1], r.Kept)
	fmt.Printf("B A = [%.4g %.4g; %.4g %.4g]\n", ba.At(0, 0)+0, ba.At(0, 1)+0, ba.At(1, 0)+0, ba.At(1, 1)+0)
	fmt.Printf("calibration error %.4g before, %.4g after\n", r.ErrorBefore, r.ErrorAfter)
	// Output:
	// σ = [4 3], kept 2 eigenvalues
	// B A = [0 0; 0 1]
	// calibration error 25 before, 9 after
}
