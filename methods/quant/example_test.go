package quant_test

import (
	"fmt"

	"gonum.org/v1/gonum/mat"

	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/methods/quant"
)

// Round to nearest at 4 bits, asymmetric, one group for the row: the range
// [−1.5, 6] gives the scale 7.5/15 = 0.5 and the zero point 3.
func ExampleRTN() {
	w := mat.NewDense(1, 4, []float64{-1.5, 0.3, 1, 6})
	r, err := quant.RTN(w, quant.Config{Bits: 4})
	if err != nil {
		panic(err)
	}
	fmt.Printf("scale %v, zero %d, codes %v, dequantized %v\n", r.Scales.At(0, 0), r.Zeros[0], r.Q, r.Dequant.RawRowView(0))
	// Output:
	// scale 0.5, zero 3, codes [0 4 5 15], dequantized [-1.5 0.5 1 6]
}

// The first two inputs always carry the same value (C = N·[1 1; 1 1] on
// them, N = 2 tokens), so only w₁ + w₂ = 0.6 matters there. At 2 bits the
// levels are {−1, −0.5, 0, 0.5}: RTN rounds both to 0.5 (sum 1, off by 0.4);
// GPTQ rounds the first up to 0.5 and moves the error into the second, which
// becomes about 0.1 and rounds to 0 (sum 0.5, off by 0.1). The third input,
// −1.2 → −1, costs both 2·0.2² = 0.08.
func ExampleGPTQ() {
	k := kernels.Default()
	w := mat.NewDense(1, 3, []float64{0.3, 0.3, -1.2})
	c := mat.NewSymDense(3, []float64{
		2, 2, 0,
		2, 2, 0,
		0, 0, 2,
	})
	cfg := quant.Config{Bits: 2}
	rtn, err := quant.RTN(w, cfg)
	if err != nil {
		panic(err)
	}
	g, err := quant.GPTQ(k, w, c, 2, cfg)
	if err != nil {
		panic(err)
	}
	fmt.Printf("RTN  %v, error %.4g\n", rtn.Dequant.RawRowView(0), quant.CalibError(k, w, rtn.Dequant, c))
	fmt.Printf("GPTQ %v, error %.4g\n", g.Dequant.RawRowView(0), g.CalibError)
	// Output:
	// RTN  [0.5 0.5 -1], error 0.4
	// GPTQ [0.5 0 -1], error 0.1
}
