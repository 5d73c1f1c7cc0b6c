//go:build cgo

package kernels

/*
#cgo LDFLAGS: -llapacke -lopenblas
#include <cblas.h>
#include <lapacke.h>
*/
import "C"

import (
	"fmt"

	"gonum.org/v1/gonum/mat"
)

// OpenBLAS runs on OpenBLAS (BLAS) and LAPACKE (LAPACK) through cgo: Debian's
// libopenblas-dev and liblapacke-dev. OpenBLAS threads itself, one thread per
// core, so callers need not split the work; its worker threads sleep soon
// after a call instead of spinning (DefaultThreadTimeout). It is 10-80 times faster than
// Gonum, mostly from the divide-and-conquer eigen and SVD solvers gonum lacks.
type OpenBLAS struct{}

var _ Backend = OpenBLAS{}

func (OpenBLAS) Name() string { return "openblas" }

func cblasTrans(t bool) C.enum_CBLAS_TRANSPOSE {
	if t {
		return C.CblasTrans
	}
	return C.CblasNoTrans
}

func (OpenBLAS) Sgemm(tA, tB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	checkGemm32(tA, tB, m, n, k, a, lda, b, ldb, c, ldc)
	if m == 0 || n == 0 {
		return
	}
	if alpha == 0 || k == 0 {
		scale32(m, n, beta, c, ldc)
		return
	}
	// Pointers to float slices hold no Go pointers, so cgo lets C read them.
	C.cblas_sgemm(C.CblasRowMajor, cblasTrans(tA), cblasTrans(tB),
		C.blasint(m), C.blasint(n), C.blasint(k),
		C.float(alpha), (*C.float)(&a[0]), C.blasint(lda),
		(*C.float)(&b[0]), C.blasint(ldb),
		C.float(beta), (*C.float)(&c[0]), C.blasint(ldc))
}

func (OpenBLAS) Dgemm(tA, tB bool, alpha float64, a, b *mat.Dense, beta float64, c *mat.Dense) {
	m, n, k := gemm64Dims(tA, tB, a, b, c)
	if m == 0 || n == 0 {
		return
	}
	if alpha == 0 || k == 0 {
		scale64(beta, c)
		return
	}
	ra, rb, rc := a.RawMatrix(), b.RawMatrix(), c.RawMatrix()
	C.cblas_dgemm(C.CblasRowMajor, cblasTrans(tA), cblasTrans(tB),
		C.blasint(m), C.blasint(n), C.blasint(k),
		C.double(alpha), (*C.double)(&ra.Data[0]), C.blasint(ra.Stride),
		(*C.double)(&rb.Data[0]), C.blasint(rb.Stride),
		C.double(beta), (*C.double)(&rc.Data[0]), C.blasint(rc.Stride))
}

func (OpenBLAS) GramAdd(c *mat.SymDense, x []float32, rows, cols int) {
	checkGram(c, x, rows, cols)
	if rows == 0 || cols == 0 {
		return
	}
	rc := c.RawSymmetric() // gonum keeps the upper triangle, row-major
	chunk := min(rows, gramChunkRows)
	buf := make([]float64, chunk*cols)
	for r0 := 0; r0 < rows; r0 += chunk {
		kr := min(chunk, rows-r0)
		for i, v := range x[r0*cols : (r0+kr)*cols] {
			buf[i] = float64(v)
		}
		C.cblas_dsyrk(C.CblasRowMajor, C.CblasUpper, C.CblasTrans,
			C.blasint(cols), C.blasint(kr),
			1, (*C.double)(&buf[0]), C.blasint(cols),
			1, (*C.double)(&rc.Data[0]), C.blasint(rc.Stride))
	}
}

// lapackInfo turns a LAPACK info code into an error: info > 0 is the data's
// fault (fail), info < 0 names a bad argument, which is our bug.
func lapackInfo(routine string, info C.lapack_int, fail error) error {
	switch {
	case info == 0:
		return nil
	case info > 0:
		return fail
	case info == C.LAPACK_WORK_MEMORY_ERROR || info == C.LAPACK_TRANSPOSE_MEMORY_ERROR:
		panic(fmt.Sprintf("kernels: %s: LAPACKE could not allocate its workspace", routine))
	default:
		panic(fmt.Sprintf("kernels: %s rejected argument %d", routine, -info))
	}
}

// The decompositions call LAPACK in column-major order on our row-major
// buffers, which is the transposed matrix: for a symmetric input that is the
// same matrix, and the factors come out already in the row-major layout we
// return (LAPACKE's row-major entry points would transpose in and out).

func (OpenBLAS) Cholesky(a *mat.SymDense) (*mat.TriDense, error) {
	n := a.SymmetricDim()
	if n == 0 {
		return &mat.TriDense{}, nil
	}
	checkDecomp(n, n)
	l := lowerCopy(a)
	if !allFinite(l) {
		return nil, ErrNonFinite
	}
	// Column-major 'U' reads the column-major upper triangle, which is the
	// row-major lower one, and writes U with A = UᵀU there: row-major, that
	// is L = Uᵀ.
	info := C.LAPACKE_dpotrf(C.LAPACK_COL_MAJOR, 'U', C.lapack_int(n), (*C.double)(&l[0]), C.lapack_int(n))
	if err := lapackInfo("dpotrf", info, ErrNotPSD); err != nil {
		return nil, err
	}
	return mat.NewTriDense(n, mat.Lower, l), nil
}

func (OpenBLAS) Eigh(a *mat.SymDense) ([]float64, *mat.Dense, error) {
	n := a.SymmetricDim()
	if n == 0 {
		return []float64{}, &mat.Dense{}, nil
	}
	checkDecomp(n, n)
	raw := a.RawSymmetric()
	z := make([]float64, n*n)
	for i := range n {
		copy(z[i*n+i:(i+1)*n], raw.Data[i*raw.Stride+i:i*raw.Stride+n])
	}
	// gonum's row-major upper triangle is the column-major lower one.
	for i := range n {
		if !allFinite(z[i*n+i : (i+1)*n]) {
			return nil, nil, ErrNonFinite
		}
	}
	w := make([]float64, n)
	info := C.LAPACKE_dsyevd(C.LAPACK_COL_MAJOR, 'V', 'L', C.lapack_int(n),
		(*C.double)(&z[0]), C.lapack_int(n), (*C.double)(&w[0]))
	if err := lapackInfo("dsyevd", info, ErrNoConvergence); err != nil {
		return nil, nil, err
	}
	// The eigenvectors are z's column-major columns: its row-major rows.
	return w, mat.NewDense(n, n, transposeSquare(z, n)), nil
}

// SVD runs dgesdd column-major on the row-major A, that is on Aᵀ =
// V Σ Uᵀ: its left factor (n×p column-major) is our Vᵀ row-major, and its
// right one (Uᵀ, p×m column-major) is our U row-major, with no transposes.
func (OpenBLAS) SVD(a *mat.Dense) (*mat.Dense, []float64, *mat.Dense, error) {
	m, n := a.Dims()
	p := min(m, n)
	if p == 0 {
		return &mat.Dense{}, []float64{}, &mat.Dense{}, nil
	}
	checkDecomp(m, n)
	work := denseCopy(a) // dgesdd destroys its input
	if !allFinite(work) {
		return nil, nil, nil, ErrNonFinite
	}
	s := make([]float64, p)
	u := make([]float64, m*p)
	vt := make([]float64, p*n)
	info := C.LAPACKE_dgesdd(C.LAPACK_COL_MAJOR, 'S', C.lapack_int(n), C.lapack_int(m),
		(*C.double)(&work[0]), C.lapack_int(n), (*C.double)(&s[0]),
		(*C.double)(&vt[0]), C.lapack_int(n), (*C.double)(&u[0]), C.lapack_int(p))
	if err := lapackInfo("dgesdd", info, ErrNoConvergence); err != nil {
		return nil, nil, nil, err
	}
	return mat.NewDense(m, p, u), s, mat.NewDense(p, n, vt), nil
}
