// Package mattest holds the random matrices and calibration problems that
// the tests and benchmarks of the methods share.
package mattest

import (
	"math"
	"math/rand/v2"

	"gonum.org/v1/gonum/mat"

	"github.com/rankzip/rankzip/kernels"
)

// RandDense returns an r×c matrix of standard normal entries.
func RandDense(rng *rand.Rand, r, c int) *mat.Dense {
	d := make([]float64, r*c)
	for i := range d {
		d[i] = rng.NormFloat64()
	}
	return mat.NewDense(r, c, d)
}

// RandOrthogonal returns a random n×n orthogonal matrix.
func RandOrthogonal(rng *rand.Rand, n int) *mat.Dense {
	var qr mat.QR
	qr.Factorize(RandDense(rng, n, n))
	var q mat.Dense
	qr.QTo(&q)
	return &q
}

// BenchProblem returns a random out × in W and the Gram C = XᵀX of 2·in
// random tokens whose channel scales decay from 1 to 10⁻² and are mixed by a
// random matrix, so C is full rank with a decaying spectrum. The same
// problem for every caller (seed 1), so benchmarks compare.
func BenchProblem(k kernels.Backend, out, in int) (*mat.Dense, *mat.SymDense) {
	rng := rand.New(rand.NewPCG(1, 1))
	w := RandDense(rng, out, in)
	tokens := 2 * in
	z := RandDense(rng, tokens, in)
	raw := z.RawMatrix()
	for i := range tokens {
		for j := range in {
			raw.Data[i*raw.Stride+j] *= math.Pow(1e-2, float64(j)/float64(in))
		}
	}
	mix := RandDense(rng, in, in)
	mix.Scale(1/math.Sqrt(float64(in)), mix)
	x := mat.NewDense(tokens, in, nil)
	k.Dgemm(false, false, 1, z, mix, 0, x)
	g := mat.NewDense(in, in, nil)
	k.Dgemm(true, false, 1, x, x, 0, g)
	c := mat.NewSymDense(in, nil)
	for i := range in {
		for j := i; j < in; j++ {
			c.SetSym(i, j, 0.5*(g.At(i, j)+g.At(j, i)))
		}
	}
	return w, c
}
