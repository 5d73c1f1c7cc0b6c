package lord

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
	ErrShape = errors.New("lord: dimension mismatch")

	// ErrNonFinite reports NaN or Inf in a weight, bias, Gram matrix or mean.
	ErrNonFinite = errors.New("lord: non-finite input")

	// ErrZeroGram reports a Gram matrix with a zero (or negative) trace.
	ErrZeroGram = errors.New("lord: Gram matrix has no energy")
)

// Result is a rank-r factorisation of a layer from its output features.
type Result struct {
	B *mat.Dense // out × r; orthonormal columns (zero where nothing was left)
	A *mat.Dense // r × in

	// Bias is the new bias b′ = b + (I − B Bᵀ) W μ, or nil for a bias-free
	// layer (which stays bias-free).
	Bias []float64

	// Sigma holds the square roots of the top min(out, in) eigenvalues of the
	// output covariance, descending: for a bias-free layer exactly the
	// whitened singular values of svd.Whiten.
	Sigma []float64

	// PredictedError is Σₜ ‖yₜ − y′ₜ‖² over the calibration tokens: the sum
	// of the eigenvalues past rank. Bias-free, it equals
	// tr((W − B A) C (W − B A)ᵀ).
	PredictedError float64

	// DataRank is the number of eigenvalues above the rounding floor
	// (λᵢ > max(out, in)·ε·λ₁); components past it come from the SVD of W's
	// residual.
	DataRank int
}

// Decompose returns the rank-r LORD factorisation of the layer y = W x + b
// (bias may be nil) from the input Gram c over n calibration tokens whose
// mean input is mean. mean and n are used only with a bias: mean must then
// have length in and n must be positive. See the package documentation.
func Decompose(k kernels.Backend, w *mat.Dense, bias []float64, c *mat.SymDense, mean []float64, n int, rank int) (Result, error) {
	out, in := w.Dims()
	if cn := c.SymmetricDim(); cn != in {
		panic(fmt.Errorf("%w: W is %d×%d, C is %d×%d", ErrShape, out, in, cn, cn))
	}
	if bias != nil && (len(bias) != out || len(mean) != in) {
		panic(fmt.Errorf("%w: W is %d×%d, bias has %d values, mean %d", ErrShape, out, in, len(bias), len(mean)))
	}
	if rank < 1 || rank > min(out, in) {
		panic(fmt.Errorf("%w: rank %d for a %d×%d weight (want 1…%d)", ErrShape, rank, out, in, min(out, in)))
	}
	if err := validate(w, bias, c, mean, n); err != nil {
		return Result{}, fmt.Errorf("lord: %w", err)
	}
	w = matx.Contiguous(w)

	// Output covariance M = W C′ Wᵀ, C′ = C or C − N μ μᵀ.
	cd := matx.SymToDense(c)
	if bias != nil {
		raw := cd.RawMatrix()
		for i := range in {
			for j := range in {
				raw.Data[i*raw.Stride+j] -= float64(n) * mean[i] * mean[j]
			}
		}
	}
	wc := mat.NewDense(out, in, nil)
	k.Dgemm(false, false, 1, w, cd, 0, wc)
	m := mat.NewDense(out, out, nil)
	k.Dgemm(false, true, 1, wc, w, 0, m)
	vals, vecs, err := k.Eigh(symmetrise(m))
	if err != nil {
		return Result{}, fmt.Errorf("lord: %w", err)
	}

	// Descending order, negative rounding clamped.
	lam := make([]float64, out)
	for i := range lam {
		lam[i] = math.Max(vals[out-1-i], 0)
	}
	sigma := make([]float64, min(out, in))
	for i := range sigma {
		sigma[i] = math.Sqrt(lam[i])
	}
	data := 0
	if lam[0] > 0 {
		lim := float64(max(out, in)) * epsilon * lam[0]
		for data < min(out, in) && lam[data] > lim {
			data++
		}
	}
	kk := min(rank, data)
	b := mat.NewDense(out, rank, nil)
	a := mat.NewDense(rank, in, nil)
	var uk, ak *mat.Dense
	if kk > 0 {
		uk = mat.NewDense(out, kk, nil)
		vr, ur := vecs.RawMatrix(), uk.RawMatrix()
		for i := range out {
			for j := range kk {
				ur.Data[i*ur.Stride+j] = vr.Data[i*vr.Stride+out-1-j]
			}
		}
		ak = mat.NewDense(kk, in, nil)
		k.Dgemm(true, false, 1, uk, w, 0, ak)
		b.Slice(0, out, 0, kk).(*mat.Dense).Copy(uk)
		a.Slice(0, kk, 0, in).(*mat.Dense).Copy(ak)
	}
	if rank > kk {
		if err := fill(k, w, uk, ak, rank-kk, b, a, kk); err != nil {
			return Result{}, fmt.Errorf("lord: %w", err)
		}
	}
	var pred float64
	for i := len(lam) - 1; i >= kk; i-- {
		pred += lam[i]
	}
	res := Result{B: b, A: a, Sigma: sigma, PredictedError: pred, DataRank: data}
	if bias != nil {
		res.Bias = newBias(w, bias, mean, b, a)
	}
	return res, nil
}

const epsilon = 0x1p-52

// newBias returns b + W μ − B (A μ).
func newBias(w *mat.Dense, bias, mean []float64, b, a *mat.Dense) []float64 {
	mu := mat.NewVecDense(len(mean), mean)
	var wm, am, bam mat.VecDense
	wm.MulVec(w, mu)
	am.MulVec(a, mu)
	bam.MulVec(b, &am)
	nb := make([]float64, len(bias))
	for i := range nb {
		nb[i] = bias[i] + wm.AtVec(i) - bam.AtVec(i)
	}
	return nb
}

// fill writes the leading m singular triplets (u, s, v) of
// R = W − U_k A_k into b's columns and a's rows from off on, as u and s vᵀ.
// Components with no energy left stay zero.
func fill(k kernels.Backend, w, uk, ak *mat.Dense, m int, b, a *mat.Dense, off int) error {
	out, in := w.Dims()
	r := mat.DenseCopyOf(w)
	if uk != nil {
		k.Dgemm(false, false, -1, uk, ak, 1, r)
	}
	u, s, vt, err := k.SVD(r)
	if err != nil {
		return err
	}
	lim := float64(max(out, in)) * epsilon * mat.Norm(w, 2) * mat.Norm(w, 2)
	ur, vr, br, ar := u.RawMatrix(), vt.RawMatrix(), b.RawMatrix(), a.RawMatrix()
	for j := 0; j < m && s[j]*s[j] > lim; j++ {
		for i := range out {
			br.Data[i*br.Stride+off+j] = ur.Data[i*ur.Stride+j]
		}
		src := vr.Data[j*vr.Stride : j*vr.Stride+in]
		dst := ar.Data[(off+j)*ar.Stride : (off+j)*ar.Stride+in]
		for c, v := range src {
			dst[c] = s[j] * v
		}
	}
	return nil
}

func validate(w *mat.Dense, bias []float64, c *mat.SymDense, mean []float64, n int) error {
	raw := w.RawMatrix()
	for i := range raw.Rows {
		if !finite(raw.Data[i*raw.Stride : i*raw.Stride+raw.Cols]) {
			return fmt.Errorf("weight: %w", ErrNonFinite)
		}
	}
	sr := c.RawSymmetric()
	var trace float64
	for i := range sr.N {
		if !finite(sr.Data[i*sr.Stride+i : i*sr.Stride+sr.N]) {
			return fmt.Errorf("gram: %w", ErrNonFinite)
		}
		trace += sr.Data[i*sr.Stride+i]
	}
	if !(trace > 0) {
		return ErrZeroGram
	}
	if bias == nil {
		return nil
	}
	if !finite(bias) {
		return fmt.Errorf("bias: %w", ErrNonFinite)
	}
	if !finite(mean) {
		return fmt.Errorf("mean: %w", ErrNonFinite)
	}
	if n < 1 {
		return fmt.Errorf("token count %d with a bias: need the calibration token count", n)
	}
	return nil
}

func finite(v []float64) bool {
	for _, x := range v {
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return false
		}
	}
	return true
}

// symmetrise returns (m + mᵀ)/2.
func symmetrise(m *mat.Dense) *mat.SymDense {
	n, _ := m.Dims()
	s := mat.NewSymDense(n, nil)
	mr, sr := m.RawMatrix(), s.RawSymmetric()
	for i := range n {
		for j := i; j < n; j++ {
			sr.Data[i*sr.Stride+j] = 0.5 * (mr.Data[i*mr.Stride+j] + mr.Data[j*mr.Stride+i])
		}
	}
	return s
}
