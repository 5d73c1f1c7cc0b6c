package model

import (
	"fmt"

	"github.com/rankzip/rankzip/kernels"
)

// Linear is a linear layer y = W x + b applied to each row of a matrix.
// Compression swaps a Dense for a factored, quantized or latent variant.
type Linear interface {
	In() int
	Out() int
	// Apply writes y = x Wᵀ + b for the rows×In matrix x into the rows×Out y.
	Apply(k kernels.Backend, y, x []float32, rows int)
	// NumParams counts stored parameters, biases included.
	NumParams() int64
}

// Dense is an uncompressed linear layer in the Hugging Face layout.
type Dense struct {
	Weight []float32 // out×in, row-major
	Bias   []float32 // out, or nil
	out    int
	in     int
}

// NewDense wraps a weight (out×in) and an optional bias (out).
func NewDense(out, in int, weight, bias []float32) *Dense {
	if len(weight) != out*in || (bias != nil && len(bias) != out) {
		panic(fmt.Sprintf("model: dense %d×%d with %d weights and %d biases", out, in, len(weight), len(bias)))
	}
	return &Dense{Weight: weight, Bias: bias, out: out, in: in}
}

func (d *Dense) In() int  { return d.in }
func (d *Dense) Out() int { return d.out }

func (d *Dense) NumParams() int64 { return int64(len(d.Weight) + len(d.Bias)) }

func (d *Dense) Apply(k kernels.Backend, y, x []float32, rows int) {
	k.Sgemm(false, true, rows, d.out, d.in, 1, x, d.in, d.Weight, d.in, 0, y, d.out)
	addBias(y, d.Bias, rows)
}

// Factored is a low-rank linear layer W ≈ B A: A (rank×in) then B (out×rank),
// with the bias applied after B.
type Factored struct {
	A, B *Dense
}

func (f *Factored) In() int          { return f.A.in }
func (f *Factored) Out() int         { return f.B.out }
func (f *Factored) Rank() int        { return f.A.out }
func (f *Factored) NumParams() int64 { return f.A.NumParams() + f.B.NumParams() }

func (f *Factored) Apply(k kernels.Backend, y, x []float32, rows int) {
	t := make([]float32, rows*f.A.out)
	f.A.Apply(k, t, x, rows)
	f.B.Apply(k, y, t, rows)
}

func addBias(y, bias []float32, rows int) {
	if bias == nil {
		return
	}
	n := len(bias)
	for r := range rows {
		row := y[r*n : (r+1)*n]
		for j, b := range bias {
			row[j] += b
		}
	}
}
