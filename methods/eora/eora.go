package eora

import (
	"errors"
	"fmt"
	"math"

	"gonum.org/v1/gonum/mat"

	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/methods/internal/matx"
)

var (
	// ErrShape is wrapped by the panic value of every dimension mismatch.
	ErrShape = errors.New("eora: dimension mismatch")

	// ErrNonFinite reports NaN or Inf in a weight or the Gram matrix.
	ErrNonFinite = errors.New("eora: non-finite input")

	// ErrZeroGram reports a Gram matrix with no positive eigenvalue: the
	// calibration set gave the layer no signal.
	ErrZeroGram = errors.New("eora: Gram matrix has no energy")

	// ErrNotPSD reports a Gram matrix with an eigenvalue below −τ (see the
	// package documentation): not a sum of outer products.
	ErrNotPSD = errors.New("eora: Gram matrix is not positive semi-definite")
)

// eps32 is float32's machine epsilon: the eigenvalue cutoff is relative to
// it, as in GPTQModel, since activations come from float32 (or narrower)
// forward passes.
const eps32 = 0x1p-23

// Result is a rank-r correction W_c + B A ≈ W.
type Result struct {
	B *mat.Dense // out × r
	A *mat.Dense // r × in

	// Sigma holds the singular values of ΔW Q′, descending:
	// min(out, Kept) of them. Σ_{i≥r} Sigma[i]² is the error left at rank r
	// on the kept eigenspace.
	Sigma []float64
	// Kept is the number of eigen-directions of C above the cutoff.
	Kept int
	// Cutoff is τ, the absolute eigenvalue cutoff.
	Cutoff float64

	// ErrorBefore is tr(ΔW C ΔWᵀ), ΔW = W − W_c: the compressed layer's
	// calibration error. ErrorAfter is tr((ΔW − B A) C (ΔW − B A)ᵀ), the
	// compensated layer's. Both are measured.
	ErrorBefore, ErrorAfter float64
}

// Rank returns r, the number of columns of B.
func (r Result) Rank() int {
	_, c := r.B.Dims()
	return c
}

// Compensate returns the rank-r EoRA correction of the compressed weight wc
// of the layer w with input Gram c (see the package documentation). When
// fewer than rank singular values exist (the kept eigenspace is smaller than
// the rank), the remaining columns of B and rows of A are zero.
func Compensate(k kernels.Backend, w, wc *mat.Dense, c *mat.SymDense, rank int) (Result, error) {
	out, in := w.Dims()
	co, ci := wc.Dims()
	if co != out || ci != in || c.SymmetricDim() != in {
		panic(fmt.Errorf("%w: W is %d×%d, W_c is %d×%d, C is %d×%d", ErrShape, out, in, co, ci, c.SymmetricDim(), c.SymmetricDim()))
	}
	if rank < 1 || rank > min(out, in) {
		panic(fmt.Errorf("%w: rank %d for a %d×%d weight (want 1…%d)", ErrShape, rank, out, in, min(out, in)))
	}
	if !matx.FiniteDense(w) {
		return Result{}, fmt.Errorf("eora: weight: %w", ErrNonFinite)
	}
	if !matx.FiniteDense(wc) {
		return Result{}, fmt.Errorf("eora: compressed weight: %w", ErrNonFinite)
	}
	if !matx.FiniteSym(c) {
		return Result{}, fmt.Errorf("eora: gram: %w", ErrNonFinite)
	}
	dw := mat.NewDense(out, in, nil)
	dw.Sub(w, wc)

	vals, q, err := k.Eigh(c)
	if err != nil {
		return Result{}, fmt.Errorf("eora: eigendecomposition of C: %w", err)
	}
	lmax := vals[in-1]
	if !(lmax > 0) {
		return Result{}, fmt.Errorf("eora: largest eigenvalue %g: %w", lmax, ErrZeroGram)
	}
	tau := math.Min(1, float64(in)*eps32) * lmax
	if vals[0] < -tau {
		return Result{}, fmt.Errorf("eora: eigenvalue %g below −%g (λ_max %g): %w", vals[0], tau, lmax, ErrNotPSD)
	}
	var kept []int
	for i := in - 1; i >= 0 && vals[i] > tau; i-- {
		kept = append(kept, i)
	}
	m := len(kept)
	if m == 0 {
		return Result{}, fmt.Errorf("eora: no eigenvalue above the cutoff %g: %w", tau, ErrZeroGram)
	}

	// Q_K (unscaled) and Q′ = Q_K diag(√λ_K).
	qk := mat.NewDense(in, m, nil)
	qs := mat.NewDense(in, m, nil)
	qr, kr, sr := q.RawMatrix(), qk.RawMatrix(), qs.RawMatrix()
	for t, i := range kept {
		h := math.Sqrt(vals[i])
		for a := range in {
			v := qr.Data[a*qr.Stride+i]
			kr.Data[a*kr.Stride+t] = v
			sr.Data[a*sr.Stride+t] = v * h
		}
	}
	p := mat.NewDense(out, m, nil)
	k.Dgemm(false, false, 1, dw, qs, 0, p)
	u, s, vt, err := k.SVD(p)
	if err != nil {
		return Result{}, fmt.Errorf("eora: SVD of ΔW Q′: %w", err)
	}

	eff := min(rank, len(s))
	b := mat.NewDense(out, rank, nil)
	a := mat.NewDense(rank, in, nil)
	t := mat.NewDense(eff, m, nil) // Σ_r^½ V_rᵀ diag(1/√λ_K)
	ur, br, vr, tr := u.RawMatrix(), b.RawMatrix(), vt.RawMatrix(), t.RawMatrix()
	for j := range eff {
		h := math.Sqrt(s[j])
		for i := range out {
			br.Data[i*br.Stride+j] = ur.Data[i*ur.Stride+j] * h
		}
		for c, idx := range kept {
			tr.Data[j*tr.Stride+c] = h * vr.Data[j*vr.Stride+c] / math.Sqrt(vals[idx])
		}
	}
	k.Dgemm(false, true, 1, t, qk, 0, a.Slice(0, eff, 0, in).(*mat.Dense))

	res := Result{B: b, A: a, Sigma: s, Kept: m, Cutoff: tau}
	cd := matx.SymToDense(c)
	res.ErrorBefore = calibError(k, dw, cd)
	k.Dgemm(false, false, -1, b, a, 1, dw) // ΔW − B A
	res.ErrorAfter = calibError(k, dw, cd)
	if !matx.FiniteDense(b) || !matx.FiniteDense(a) || math.IsNaN(res.ErrorAfter) {
		return Result{}, fmt.Errorf("eora: factors: %w", ErrNonFinite)
	}
	return res, nil
}

// calibError returns tr(E C Eᵀ) for the out × in E and the full in × in C,
// in row blocks.
func calibError(k kernels.Backend, e, c *mat.Dense) float64 {
	out, in := e.Dims()
	const rows = 256
	ec := mat.NewDense(min(rows, out), in, nil)
	var sum float64
	for r0 := 0; r0 < out; r0 += rows {
		n := min(rows, out-r0)
		ev := e.Slice(r0, r0+n, 0, in).(*mat.Dense)
		ecv := ec.Slice(0, n, 0, in).(*mat.Dense)
		k.Dgemm(false, false, 1, ev, c, 0, ecv)
		for i := range n {
			x, y := ev.RawRowView(i), ecv.RawRowView(i)
			for j := range x {
				sum += x[j] * y[j]
			}
		}
	}
	return sum
}
