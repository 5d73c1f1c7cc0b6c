package kernels

import (
	"gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/gonum"
	"gonum.org/v1/gonum/mat"
)

// Gonum is the pure-Go backend: always built, the only one without cgo. It
// gives the same results as OpenBLAS, 10-80 times slower (gonum has no
// divide-and-conquer eigen or SVD solver). Its BLAS calls go straight to
// gonum's implementation, so a blas64.Use elsewhere does not change it;
// the decompositions use gonum/mat, hence the lapack64 implementation.
type Gonum struct{}

var _ Backend = Gonum{}

var gonumBLAS gonum.Implementation

func (Gonum) Name() string { return "gonum" }

func blasTrans(t bool) blas.Transpose {
	if t {
		return blas.Trans
	}
	return blas.NoTrans
}

// minTransposeN is the n from which Sgemm copies a transposed A upright first.
// gonum's Aᵀ·B runs at half speed on two cores and Aᵀ·Bᵀ at a twentieth; the
// copy costs m·k moves against 2·m·n·k flops.
const minTransposeN = 16

// Sgemm leaves the threading to gonum, which already runs GOMAXPROCS workers
// over 64×64 tiles of C (measured 13 → 21 GFLOP/s from one core to two at
// 2048³; splitting the rows of C by hand gained nothing on top).
func (Gonum) Sgemm(tA, tB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	checkGemm32(tA, tB, m, n, k, a, lda, b, ldb, c, ldc)
	if m == 0 || n == 0 {
		return
	}
	if alpha == 0 || k == 0 {
		scale32(m, n, beta, c, ldc)
		return
	}
	if tA && (tB || n >= minTransposeN) {
		at := make([]float32, m*k)
		transpose(at, a, k, m, lda)
		a, lda, tA = at, k, false
	}
	gonumBLAS.Sgemm(blasTrans(tA), blasTrans(tB), m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
}

// transpose writes the transpose of the rows×cols src (row stride ld) into
// the cols×rows dst, in tiles so both sides stay in cache.
func transpose[T float32 | float64](dst, src []T, rows, cols, ld int) {
	const tile = 32
	for i0 := 0; i0 < rows; i0 += tile {
		i1 := min(i0+tile, rows)
		for j0 := 0; j0 < cols; j0 += tile {
			j1 := min(j0+tile, cols)
			for i := i0; i < i1; i++ {
				row := src[i*ld : i*ld+j1]
				for j := j0; j < j1; j++ {
					dst[j*rows+i] = row[j]
				}
			}
		}
	}
}

func (Gonum) Dgemm(tA, tB bool, alpha float64, a, b *mat.Dense, beta float64, c *mat.Dense) {
	m, n, k := gemm64Dims(tA, tB, a, b, c)
	if m == 0 || n == 0 {
		return
	}
	if alpha == 0 || k == 0 {
		scale64(beta, c)
		return
	}
	ra, rb, rc := a.RawMatrix(), b.RawMatrix(), c.RawMatrix()
	ad, lda := ra.Data, ra.Stride
	if tA && (tB || n >= minTransposeN) { // as in Sgemm
		at := make([]float64, m*k)
		transpose(at, ad, k, m, lda)
		ad, lda, tA = at, k, false
	}
	gonumBLAS.Dgemm(blasTrans(tA), blasTrans(tB), m, n, k, alpha, ad, lda, rb.Data, rb.Stride, beta, rc.Data, rc.Stride)
}

// GramAdd widens each chunk of rows straight into a transposed buffer:
// gonum's Dsyrk runs about twice as fast on C += Xᵀ X written as
// (Xᵀ)(Xᵀ)ᵀ, its NoTrans form, and the transpose rides along with the
// float32 → float64 copy. gonum's Dsyrk is single-threaded, but a blocked
// version that hands the off-diagonal blocks to gonum's parallel Dgemm
// measured slower.
func (Gonum) GramAdd(c *mat.SymDense, x []float32, rows, cols int) {
	checkGram(c, x, rows, cols)
	if rows == 0 || cols == 0 {
		return
	}
	rc := c.RawSymmetric() // upper triangle, row-major
	chunk := min(rows, gramChunkRows)
	buf := make([]float64, chunk*cols)
	for r0 := 0; r0 < rows; r0 += chunk {
		kr := min(chunk, rows-r0)
		widenTransposed(buf, x[r0*cols:(r0+kr)*cols], kr, cols)
		gonumBLAS.Dsyrk(blas.Upper, blas.NoTrans, cols, kr, 1, buf, kr, 1, rc.Data, rc.Stride)
	}
}

// widenTransposed writes the transpose of the rows×cols float32 src into the
// cols×rows float64 dst, in cache-sized tiles.
func widenTransposed(dst []float64, src []float32, rows, cols int) {
	const tile = 32
	for i0 := 0; i0 < rows; i0 += tile {
		i1 := min(i0+tile, rows)
		for j0 := 0; j0 < cols; j0 += tile {
			j1 := min(j0+tile, cols)
			for i := i0; i < i1; i++ {
				row := src[i*cols : i*cols+j1]
				for j := j0; j < j1; j++ {
					dst[j*rows+i] = float64(row[j])
				}
			}
		}
	}
}

func (Gonum) Cholesky(a *mat.SymDense) (*mat.TriDense, error) {
	n := a.SymmetricDim()
	if n == 0 {
		return &mat.TriDense{}, nil
	}
	checkDecomp(n, n)
	cp := upperCopy(a)
	if !allFinite(cp) {
		return nil, ErrNonFinite
	}
	var ch mat.Cholesky
	if !ch.Factorize(mat.NewSymDense(n, cp)) {
		return nil, ErrNotPSD
	}
	l := mat.NewTriDense(n, mat.Lower, nil)
	ch.LTo(l)
	return l, nil
}

func (Gonum) Eigh(a *mat.SymDense) ([]float64, *mat.Dense, error) {
	n := a.SymmetricDim()
	if n == 0 {
		return []float64{}, &mat.Dense{}, nil
	}
	checkDecomp(n, n)
	cp := upperCopy(a)
	if !allFinite(cp) {
		return nil, nil, ErrNonFinite
	}
	var es mat.EigenSym
	if !es.Factorize(mat.NewSymDense(n, cp), true) {
		return nil, nil, ErrNoConvergence
	}
	v := mat.NewDense(n, n, nil)
	es.VectorsTo(v)
	return es.Values(nil), v, nil // dsyev: ascending
}

func (Gonum) SVD(a *mat.Dense) (*mat.Dense, []float64, *mat.Dense, error) {
	m, n := a.Dims()
	p := min(m, n)
	if p == 0 {
		return &mat.Dense{}, []float64{}, &mat.Dense{}, nil
	}
	checkDecomp(m, n)
	cp := denseCopy(a)
	if !allFinite(cp) {
		return nil, nil, nil, ErrNonFinite
	}
	var svd mat.SVD
	if !svd.Factorize(mat.NewDense(m, n, cp), mat.SVDThin) {
		return nil, nil, nil, ErrNoConvergence
	}
	u := mat.NewDense(m, p, nil)
	svd.UTo(u)
	var v mat.Dense
	svd.VTo(&v)
	vt := mat.NewDense(p, n, nil)
	vt.Copy(v.T())
	return u, svd.Values(nil), vt, nil // dgesvd: descending
}
