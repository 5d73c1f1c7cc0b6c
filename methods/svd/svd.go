package svd

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
	ErrShape = errors.New("svd: dimension mismatch")

	// ErrNonFinite reports NaN or Inf in a weight, a Gram matrix or a scale.
	ErrNonFinite = errors.New("svd: non-finite input")

	// ErrZeroGram reports a Gram matrix with a zero (or negative) trace: the
	// calibration set gave the layer no signal to be aware of.
	ErrZeroGram = errors.New("svd: Gram matrix has no energy")
)

// Path says how the square root of the Gram matrix was obtained.
type Path int

const (
	// PathNone: no Gram matrix involved (Plain, ASVD).
	PathNone Path = iota
	// PathCholesky: C = L Lᵀ as given.
	PathCholesky
	// PathDamped: C + δI = L Lᵀ, δ in Result.Damping.
	PathDamped
	// PathEigen: S = Q diag(√max(λ, 0)) from C = Q Λ Qᵀ.
	PathEigen
)

func (p Path) String() string {
	switch p {
	case PathNone:
		return "none"
	case PathCholesky:
		return "cholesky"
	case PathDamped:
		return "damped"
	case PathEigen:
		return "eigen"
	}
	return fmt.Sprintf("Path(%d)", int(p))
}

// Result is a rank-r factorisation W ≈ B A.
type Result struct {
	B *mat.Dense // out × r
	A *mat.Dense // r × in

	// Sigma holds all min(out, in) singular values, in descending order, of
	// the matrix that was truncated: W S for Whiten (S the square root of
	// C + δI on the damped path), W D for ASVD, W for Plain. The squared tail past any rank is that rank's predicted error,
	// which is what rank search needs.
	Sigma []float64

	// PredictedError is, for Whiten, the calibration error
	// tr((W − B A) C (W − B A)ᵀ); for ASVD ‖(W − B A) D‖²_F; for Plain
	// ‖W − B A‖²_F. Use CalibError to compare methods under one C.
	PredictedError float64

	// Path and Damping report Whiten's square root of C (PathNone, 0 for
	// Plain and ASVD). Damping is the absolute δ added to C's diagonal.
	Path    Path
	Damping float64

	// DataRank is the number of components with energy above the rounding
	// floor (σᵢ² > max(out, in)·ε·σ₁²). Components past it come from the SVD
	// of W's residual; see the package documentation.
	DataRank int
}

// Rank returns r, the number of columns of B.
func (r Result) Rank() int {
	_, c := r.B.Dims()
	return c
}

// Plain returns the rank-r truncated SVD of w: B = U_r Σ_r^½, A = Σ_r^½ V_rᵀ.
func Plain(k kernels.Backend, w *mat.Dense, rank int) (Result, error) {
	out, in := w.Dims()
	checkRank(out, in, rank)
	if !matx.FiniteDense(w) {
		return Result{}, fmt.Errorf("svd: plain: weight: %w", ErrNonFinite)
	}
	u, s, vt, err := k.SVD(w)
	if err != nil {
		return Result{}, fmt.Errorf("svd: plain: %w", err)
	}
	b, a := splitUV(u, s, vt, rank, nil)
	return Result{B: b, A: a, Sigma: s, PredictedError: tailEnergy(s, rank), DataRank: dataRank(s, out, in)}, nil
}

// ASVD returns the activation-aware SVD of w: columns scaled by
// sⱼ = meanAbs[j]^alpha, truncated SVD, scaling undone in A. Scales are
// floored at 10⁻⁶ of the largest so dead channels do not divide by zero; if
// every scale is zero the result is Plain's. meanAbs must have length in and
// hold finite, non-negative values.
func ASVD(k kernels.Backend, w *mat.Dense, meanAbs []float64, alpha float64, rank int) (Result, error) {
	out, in := w.Dims()
	if len(meanAbs) != in {
		panic(fmt.Errorf("%w: W is %d×%d, meanAbs has %d values", ErrShape, out, in, len(meanAbs)))
	}
	checkRank(out, in, rank)
	if !matx.FiniteDense(w) {
		return Result{}, fmt.Errorf("svd: asvd: weight: %w", ErrNonFinite)
	}
	if math.IsNaN(alpha) || math.IsInf(alpha, 0) {
		return Result{}, fmt.Errorf("svd: asvd: alpha %v: %w", alpha, ErrNonFinite)
	}
	scale := make([]float64, in)
	maxScale := 0.0
	for j, v := range meanAbs {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return Result{}, fmt.Errorf("svd: asvd: meanAbs[%d] = %v: %w", j, v, ErrNonFinite)
		}
		if v < 0 {
			return Result{}, fmt.Errorf("svd: asvd: meanAbs[%d] = %v is negative", j, v)
		}
		scale[j] = math.Pow(v, alpha)
		if math.IsInf(scale[j], 0) || math.IsNaN(scale[j]) {
			return Result{}, fmt.Errorf("svd: asvd: meanAbs[%d]^%v = %v: %w", j, alpha, scale[j], ErrNonFinite)
		}
		maxScale = math.Max(maxScale, scale[j])
	}
	floor := asvdScaleFloor * maxScale
	for j := range scale {
		switch {
		case maxScale == 0:
			scale[j] = 1
		case scale[j] < floor:
			scale[j] = floor
		}
	}
	wd := mat.DenseCopyOf(w)
	raw := wd.RawMatrix()
	for i := range out {
		row := raw.Data[i*raw.Stride : i*raw.Stride+in]
		for j := range row {
			row[j] *= scale[j]
		}
	}
	u, s, vt, err := k.SVD(wd)
	if err != nil {
		return Result{}, fmt.Errorf("svd: asvd: %w", err)
	}
	b, a := splitUV(u, s, vt, rank, scale)
	return Result{B: b, A: a, Sigma: s, PredictedError: tailEnergy(s, rank), DataRank: dataRank(s, out, in)}, nil
}

// asvdScaleFloor is the smallest ASVD column scale relative to the largest.
const asvdScaleFloor = 1e-6

// splitUV builds B = U_r Σ_r^½ and A = Σ_r^½ V_rᵀ D⁻¹ (D = diag(colScale), or
// the identity when colScale is nil).
func splitUV(u *mat.Dense, s []float64, vt *mat.Dense, rank int, colScale []float64) (b, a *mat.Dense) {
	out, _ := u.Dims()
	_, in := vt.Dims()
	b = mat.NewDense(out, rank, nil)
	a = mat.NewDense(rank, in, nil)
	ur, vr := u.RawMatrix(), vt.RawMatrix()
	br, ar := b.RawMatrix(), a.RawMatrix()
	for j := range rank {
		h := math.Sqrt(s[j])
		for i := range out {
			br.Data[i*br.Stride+j] = ur.Data[i*ur.Stride+j] * h
		}
		src := vr.Data[j*vr.Stride : j*vr.Stride+in]
		dst := ar.Data[j*ar.Stride : j*ar.Stride+in]
		for c, v := range src {
			dst[c] = v * h
			if colScale != nil {
				dst[c] /= colScale[c]
			}
		}
	}
	return b, a
}

// tailEnergy returns Σ_{i≥rank} s[i]², summed from the smallest term up.
func tailEnergy(s []float64, rank int) float64 {
	var sum float64
	for i := len(s) - 1; i >= rank; i-- {
		sum += s[i] * s[i]
	}
	return sum
}

// energyFloor is the relative energy below which a component is rounding
// noise: σᵢ² ≤ energyFloor(out, in)·σ₁².
func energyFloor(out, in int) float64 {
	return float64(max(out, in)) * epsilon
}

const epsilon = 0x1p-52

// dataRank counts the singular values (descending) above the noise floor.
func dataRank(s []float64, out, in int) int {
	if len(s) == 0 || s[0] == 0 {
		return 0
	}
	lim := energyFloor(out, in) * s[0] * s[0]
	n := 0
	for n < len(s) && s[n]*s[n] > lim {
		n++
	}
	return n
}

func checkRank(out, in, rank int) {
	if rank < 1 || rank > min(out, in) {
		panic(fmt.Errorf("%w: rank %d for a %d×%d weight (want 1…%d)", ErrShape, rank, out, in, min(out, in)))
	}
}
