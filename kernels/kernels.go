// Package kernels is rankzip's compute backend: the dense linear algebra the
// forward pass and the compression methods need, behind one small interface.
//
// Conventions: every matrix is row-major. float32 products (the forward pass)
// take raw slices with a leading dimension, BLAS-style; float64 work
// (statistics and decompositions) uses gonum's mat types, whose storage is
// row-major too, so backends hand their raw data straight to LAPACK.
//
// Backends: OpenBLAS + LAPACKE through cgo (the default build), pure-Go gonum
// (always built; the only one when cgo is off), CUDA behind the `cuda` tag
// (cuda.go). Default returns the fastest one that runs here; Select picks one
// by a --device value.
package kernels

import (
	"errors"

	"gonum.org/v1/gonum/mat"
)

// ErrNotPSD reports a Cholesky factorisation of a matrix that is not
// (numerically) positive definite. Callers add damping and retry.
var ErrNotPSD = errors.New("kernels: matrix is not positive definite")

// ErrNoConvergence reports an eigen or singular value solver that did not converge.
var ErrNoConvergence = errors.New("kernels: decomposition did not converge")

// ErrNonFinite reports a decomposition input holding NaN or ±Inf. Damping
// cannot fix such a matrix, so it is told apart from ErrNotPSD; LAPACK would
// otherwise reject it as a bad argument or return garbage.
var ErrNonFinite = errors.New("kernels: matrix has NaN or Inf entries")

// ErrDeviceMemory reports work that does not fit in the GPU's free memory.
var ErrDeviceMemory = errors.New("kernels: not enough GPU memory")

// Backend is the set of operations rankzip runs on large matrices.
// Shape mismatches are programming errors and panic; data-dependent
// failures (not positive definite, no convergence, NaN or Inf input) return
// errors. Zero-sized inputs are valid: gonum spells them as empty matrices,
// and the results are then empty too.
//
// Implementations are stateless values, safe for concurrent use.
type Backend interface {
	// Name identifies the backend in logs and benchmarks ("openblas", "gonum").
	Name() string

	// Sgemm computes C = alpha*op(A)*op(B) + beta*C in float32, where op(X) is X
	// or Xᵀ as tA/tB say, op(A) is m×k, op(B) is k×n and C is m×n. lda, ldb and
	// ldc are the row strides of the stored A, B and C. As in BLAS, beta = 0
	// overwrites C without reading it (a reused buffer may hold NaN), and
	// alpha = 0 or k = 0 leaves A and B unread.
	Sgemm(tA, tB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int)

	// Dgemm computes C = alpha*op(A)*op(B) + beta*C in float64. C must already
	// have the result's shape and must not alias A or B.
	Dgemm(tA, tB bool, alpha float64, a, b *mat.Dense, beta float64, c *mat.Dense)

	// GramAdd adds XᵀX to C, where X is rows×cols float32 (row stride cols) and C
	// is cols×cols. The products are accumulated in float64.
	GramAdd(c *mat.SymDense, x []float32, rows, cols int)

	// Cholesky returns the lower triangular L with A = L Lᵀ, or ErrNotPSD.
	// A is not modified.
	Cholesky(a *mat.SymDense) (*mat.TriDense, error)

	// Eigh returns the eigenvalues of the symmetric A in ascending order and the
	// matching orthonormal eigenvectors as the columns of vectors.
	// A is not modified.
	Eigh(a *mat.SymDense) (values []float64, vectors *mat.Dense, err error)

	// SVD returns the thin singular value decomposition A = U diag(s) Vᵀ of the
	// m×n A: U is m×p, s has p values in descending order, Vt is p×n, with
	// p = min(m, n). A is not modified.
	SVD(a *mat.Dense) (u *mat.Dense, s []float64, vt *mat.Dense, err error)
}
