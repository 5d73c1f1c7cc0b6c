// Package matx holds the small matrix helpers the methods share: finiteness
// checks, symmetric-to-dense conversion and packed copies for the backends.
package matx

import (
	"math"

	"gonum.org/v1/gonum/mat"
)

// FiniteDense reports whether every element of m is finite.
func FiniteDense(m *mat.Dense) bool {
	raw := m.RawMatrix()
	for i := range raw.Rows {
		for _, v := range raw.Data[i*raw.Stride : i*raw.Stride+raw.Cols] {
			if math.IsNaN(v) || math.IsInf(v, 0) {
				return false
			}
		}
	}
	return true
}

// FiniteSym reports whether every stored element of c is finite.
func FiniteSym(c *mat.SymDense) bool {
	raw := c.RawSymmetric()
	for i := range raw.N {
		for _, v := range raw.Data[i*raw.Stride+i : i*raw.Stride+raw.N] {
			if math.IsNaN(v) || math.IsInf(v, 0) {
				return false
			}
		}
	}
	return true
}

// SymToDense returns the full symmetric matrix c as a Dense.
func SymToDense(c *mat.SymDense) *mat.Dense {
	n := c.SymmetricDim()
	d := mat.NewDense(n, n, nil)
	raw := c.RawSymmetric()
	dr := d.RawMatrix()
	for i := range n {
		for j := i; j < n; j++ {
			v := raw.Data[i*raw.Stride+j]
			dr.Data[i*dr.Stride+j] = v
			dr.Data[j*dr.Stride+i] = v
		}
	}
	return d
}

// Contiguous returns m itself when its rows are packed, or a packed copy, so
// backends always see stride == cols.
func Contiguous(m *mat.Dense) *mat.Dense {
	if raw := m.RawMatrix(); raw.Stride != raw.Cols {
		return mat.DenseCopyOf(m)
	}
	return m
}
