package quant_test

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"gonum.org/v1/gonum/mat"

	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/methods/quant"
	"github.com/rankzip/rankzip/model/gptq"
)

// A quantized layer packed in the GPTQ v1 layout and read back dequantizes
// to exactly Result.Dequant (as float32): the float16 scales and the zero
// points ≥ 1 chosen by the quantizer survive the format unchanged.
func TestExportIsExact(t *testing.T) {
	const out, in, tokens = 64, 256, 512
	rng := rand.New(rand.NewPCG(1, 1))
	w := mat.NewDense(out, in, nil)
	x := mat.NewDense(tokens, in, nil)
	for i := range out {
		for j := range in {
			v := rng.NormFloat64()
			if i%7 == 0 && j < 128 {
				v = rng.Float64() // non-negative groups: asymmetric zero point pushed to 1
			}
			w.Set(i, j, v)
		}
	}
	for i := range tokens {
		for j := range in {
			x.Set(i, j, rng.NormFloat64()*float64(1+j%5))
		}
	}
	c := mat.NewSymDense(in, nil)
	c.SymOuterK(1, x.T())
	k := kernels.Default()
	for _, bits := range []int{2, 3, 4, 8} {
		for _, cfg := range []quant.Config{
			{Bits: bits, GroupSize: 32},
			{Bits: bits, GroupSize: 128, Sym: true, ActOrder: true},
			{Bits: bits},
		} {
			name := fmt.Sprintf("%+v", cfg)
			rtn, err := quant.RTN(w, cfg)
			if err != nil {
				t.Fatal(err)
			}
			g, err := quant.GPTQ(k, w, c, tokens, cfg)
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range []quant.Result{rtn, g} {
				p, err := gptq.Pack(toLayer(r))
				if err != nil {
					t.Fatalf("%s: %v", name, err)
				}
				l, err := gptq.Unpack(p)
				if err != nil {
					t.Fatal(err)
				}
				got := l.Dequantize()
				for i := range out {
					for j := range in {
						if want := float32(r.Dequant.At(i, j)); got[i*in+j] != want || float64(want) != r.Dequant.At(i, j) {
							t.Fatalf("%s: [%d][%d]: read back %v, in memory %v", name, i, j, got[i*in+j], r.Dequant.At(i, j))
						}
					}
				}
			}
		}
	}
}

func toLayer(r quant.Result) *gptq.Layer {
	out, in := r.Dequant.Dims()
	l := &gptq.Layer{Bits: r.Bits, Out: out, In: in, Q: r.Q, Zeros: r.Zeros, GIdx: r.GIdx}
	for g := range r.Groups() {
		for i := range out {
			l.Scales = append(l.Scales, float32(r.Scales.At(g, i)))
		}
	}
	return l
}
