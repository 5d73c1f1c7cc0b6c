package svd

import (
	"fmt"
	"math"

	"gonum.org/v1/gonum/mat"

	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/methods/internal/matx"
)

// CalibError returns tr((W − W′) C (W − W′)ᵀ) = ‖(W − W′) Xᵀ‖²_F, the
// calibration error of replacing w by wApprox, in float64 (gonum, pure Go:
// O(out·in²)). NaN or Inf in the inputs give a NaN or Inf result.
func CalibError(w, wApprox mat.Matrix, c *mat.SymDense) float64 {
	out, in := w.Dims()
	ro, ri := wApprox.Dims()
	if ro != out || ri != in || c.SymmetricDim() != in {
		panic(fmt.Errorf("%w: W is %d×%d, W′ is %d×%d, C is %d×%d", ErrShape, out, in, ro, ri, c.SymmetricDim(), c.SymmetricDim()))
	}
	var e, ec mat.Dense
	e.Sub(w, wApprox)
	ec.Mul(&e, c)
	var sum float64
	er, ecr := e.RawMatrix(), ec.RawMatrix()
	for i := range out {
		x := er.Data[i*er.Stride : i*er.Stride+in]
		y := ecr.Data[i*ecr.Stride : i*ecr.Stride+in]
		for j := range x {
			sum += x[j] * y[j]
		}
	}
	return sum
}

// correctionDamp is CorrectedTarget's ridge towards W, relative to
// mean(diag C).
const correctionDamp = 1e-6

// CorrectedTarget returns the sequential-calibration target
//
//	W̃ = (W K + δW)(C + δI)⁻¹,  δ = 10⁻⁶ · mean(diag C),
//
// the ridge-regularised (towards W) solution of min ‖X_o Wᵀ − X_c W̃ᵀ‖²_F,
// where cross = K = X_oᵀ X_c (in × in, not symmetric: original-stream inputs
// times compressed-stream inputs) and c = X_cᵀ X_c. Whiten(W̃, C) is then the
// best rank-r fit to the original outputs from the compressed inputs. W̃ = W
// exactly when cross = C. The inverse goes through the eigendecomposition of
// C, so an indefinite (rounding) or singular C is fine.
func CorrectedTarget(k kernels.Backend, w, cross *mat.Dense, c *mat.SymDense) (*mat.Dense, error) {
	out, in := w.Dims()
	kr, kc := cross.Dims()
	if n := c.SymmetricDim(); n != in || kr != in || kc != in {
		panic(fmt.Errorf("%w: W is %d×%d, cross is %d×%d, C is %d×%d", ErrShape, out, in, kr, kc, n, n))
	}
	if !matx.FiniteDense(w) {
		return nil, fmt.Errorf("svd: corrected target: weight: %w", ErrNonFinite)
	}
	if !matx.FiniteDense(cross) {
		return nil, fmt.Errorf("svd: corrected target: cross Gram: %w", ErrNonFinite)
	}
	if !matx.FiniteSym(c) {
		return nil, fmt.Errorf("svd: corrected target: gram: %w", ErrNonFinite)
	}
	mean := meanDiag(c)
	if !(mean > 0) {
		return nil, fmt.Errorf("svd: corrected target: %w", ErrZeroGram)
	}
	delta := correctionDamp * mean
	vals, q, err := k.Eigh(c)
	if err != nil {
		return nil, fmt.Errorf("svd: corrected target: %w", err)
	}
	w = matx.Contiguous(w)
	t := mat.DenseCopyOf(w) // δW + W K
	k.Dgemm(false, false, 1, w, matx.Contiguous(cross), delta, t)
	tq := mat.NewDense(out, in, nil)
	k.Dgemm(false, false, 1, t, q, 0, tq)
	raw := tq.RawMatrix()
	for i := range out {
		row := raw.Data[i*raw.Stride : i*raw.Stride+in]
		for j := range row {
			row[j] /= math.Max(vals[j], 0) + delta
		}
	}
	res := mat.NewDense(out, in, nil)
	k.Dgemm(false, true, 1, tq, q, 0, res)
	return res, nil
}
