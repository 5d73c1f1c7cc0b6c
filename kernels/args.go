package kernels

import (
	"fmt"
	"math"

	"gonum.org/v1/gonum/mat"
)

// Argument checks and trivial cases shared by every backend, so that all of
// them panic on the same mistakes and agree on the BLAS edge cases.

// checkGemm32 panics unless the raw Sgemm arguments describe valid storage.
func checkGemm32(tA, tB bool, m, n, k int, a []float32, lda int, b []float32, ldb int, c []float32, ldc int) {
	if m < 0 || n < 0 || k < 0 {
		panic(fmt.Sprintf("kernels: sgemm negative dimension m=%d n=%d k=%d", m, n, k))
	}
	ar, ac := m, k
	if tA {
		ar, ac = k, m
	}
	br, bc := k, n
	if tB {
		br, bc = n, k
	}
	checkStorage("a", ar, ac, len(a), lda)
	checkStorage("b", br, bc, len(b), ldb)
	checkStorage("c", m, n, len(c), ldc)
}

// checkStorage panics unless a rows×cols row-major matrix with row stride ld
// fits in a slice of length size. The stride rule is BLAS's: ld ≥ max(1, cols).
func checkStorage(name string, rows, cols, size, ld int) {
	if ld < max(1, cols) {
		panic(fmt.Sprintf("kernels: sgemm %s is %d×%d with leading dimension %d", name, rows, cols, ld))
	}
	if ld > math.MaxInt32 || rows > math.MaxInt32 || cols > math.MaxInt32 {
		// OpenBLAS and LAPACKE take 32-bit ints; keep the backends alike.
		panic(fmt.Sprintf("kernels: sgemm %s dimension overflows int32: %d×%d, ld %d", name, rows, cols, ld))
	}
	if rows > 0 && cols > 0 && size < (rows-1)*ld+cols {
		panic(fmt.Sprintf("kernels: sgemm %s is %d×%d with leading dimension %d but has %d elements", name, rows, cols, ld, size))
	}
}

// scale32 sets C = beta*C for the m×n C: the whole of Sgemm when alpha = 0 or
// k = 0. beta = 0 writes zeros without reading C.
func scale32(m, n int, beta float32, c []float32, ldc int) {
	if beta == 1 {
		return
	}
	for i := range m {
		row := c[i*ldc : i*ldc+n]
		if beta == 0 {
			clear(row)
			continue
		}
		for j := range row {
			row[j] *= beta
		}
	}
}

// gemm64Dims panics unless op(A)·op(B) fits C, and returns m, n and k.
func gemm64Dims(tA, tB bool, a, b, c *mat.Dense) (m, n, k int) {
	m, k = a.Dims()
	if tA {
		m, k = k, m
	}
	kb, n := b.Dims()
	if tB {
		kb, n = n, kb
	}
	cr, cc := c.Dims()
	if k != kb || cr != m || cc != n {
		panic(fmt.Sprintf("kernels: dgemm dimension mismatch: op(A) %d×%d, op(B) %d×%d, C %d×%d", m, k, kb, n, cr, cc))
	}
	return m, n, k
}

// scale64 sets C = beta*C, without reading C when beta = 0.
func scale64(beta float64, c *mat.Dense) {
	if beta == 1 {
		return
	}
	raw := c.RawMatrix()
	for i := range raw.Rows {
		row := raw.Data[i*raw.Stride : i*raw.Stride+raw.Cols]
		if beta == 0 {
			clear(row)
			continue
		}
		for j := range row {
			row[j] *= beta
		}
	}
}

// gramChunkRows is how many rows of X GramAdd widens to float64 at a time. A
// syrk over k rows reads and writes all of C once for n²k flops, so k = 512
// keeps it compute-bound while the buffer stays at 4 KiB per column.
const gramChunkRows = 512

// checkGram panics unless x holds rows×cols values and c is cols×cols.
func checkGram(c *mat.SymDense, x []float32, rows, cols int) {
	if rows < 0 || cols < 0 {
		panic(fmt.Sprintf("kernels: gram negative dimension %d×%d", rows, cols))
	}
	if len(x) < rows*cols {
		panic(fmt.Sprintf("kernels: gram of %d×%d with %d elements", rows, cols, len(x)))
	}
	if n := c.SymmetricDim(); n != cols {
		panic(fmt.Sprintf("kernels: gram of %d columns into a %d×%d matrix", cols, n, n))
	}
	if cols > math.MaxInt32 || rows > math.MaxInt32 {
		panic(fmt.Sprintf("kernels: gram dimension overflows int32: %d×%d", rows, cols))
	}
}

// checkDecomp panics on a matrix too large for LAPACK's 32-bit ints.
func checkDecomp(rows, cols int) {
	if rows > math.MaxInt32 || cols > math.MaxInt32 {
		panic(fmt.Sprintf("kernels: decomposition dimension overflows int32: %d×%d", rows, cols))
	}
}

// upperCopy returns the symmetric A as a dense row-major n×n slice (both
// triangles filled), the layout LAPACK is handed.
func upperCopy(a *mat.SymDense) []float64 {
	raw := a.RawSymmetric()
	n := raw.N
	out := make([]float64, n*n)
	for i := range n {
		for j := i; j < n; j++ {
			v := raw.Data[i*raw.Stride+j]
			out[i*n+j] = v
			out[j*n+i] = v
		}
	}
	return out
}

// lowerCopy returns gonum's upper triangle of a transposed into the lower
// triangle of a row-major n×n slice, zeros above the diagonal: the column-
// major upper triangle LAPACK reads. Tiles keep both sides in cache.
func lowerCopy(a *mat.SymDense) []float64 {
	raw := a.RawSymmetric()
	n := raw.N
	out := make([]float64, n*n)
	const tile = 64
	for i0 := 0; i0 < n; i0 += tile {
		for j0 := i0; j0 < n; j0 += tile {
			for i := i0; i < min(i0+tile, n); i++ {
				for j := max(j0, i); j < min(j0+tile, n); j++ {
					out[j*n+i] = raw.Data[i*raw.Stride+j]
				}
			}
		}
	}
	return out
}

// transposeSquare returns the transpose of the row-major n×n z, tile by tile.
func transposeSquare(z []float64, n int) []float64 {
	out := make([]float64, n*n)
	const tile = 64
	for i0 := 0; i0 < n; i0 += tile {
		for j0 := 0; j0 < n; j0 += tile {
			for i := i0; i < min(i0+tile, n); i++ {
				for j := j0; j < min(j0+tile, n); j++ {
					out[j*n+i] = z[i*n+j]
				}
			}
		}
	}
	return out
}

// denseCopy returns the m×n A as a contiguous row-major slice.
func denseCopy(a *mat.Dense) []float64 {
	raw := a.RawMatrix()
	out := make([]float64, raw.Rows*raw.Cols)
	for i := range raw.Rows {
		copy(out[i*raw.Cols:(i+1)*raw.Cols], raw.Data[i*raw.Stride:i*raw.Stride+raw.Cols])
	}
	return out
}

// allFinite reports whether s holds no NaN or Inf. Checking costs O(n²)
// against the O(n³) decomposition, and spares LAPACK undefined behaviour.
func allFinite(s []float64) bool {
	for _, v := range s {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return false
		}
	}
	return true
}
