package svd

import (
	"errors"
	"fmt"
	"math"

	"gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/mat"

	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/methods/internal/matx"
)

// Damping ladder for a Gram matrix whose Cholesky factorisation fails or is
// numerically singular, relative to mean(diag C).
var dampLadder = [...]float64{1e-10, 1e-8, 1e-6, 1e-4}

// illConditioned is the smallest Cholesky pivot L_ii², relative to
// mean(diag C), accepted without damping. A smaller pivot bounds the smallest
// eigenvalue of C from above by as much, so C is singular to ~10 digits.
const illConditioned = 1e-10

// Whiten returns the SVD-LLM rank-r factorisation of w under the input Gram c
// (in × in): B A = U_r U_rᵀ W with W S = U Σ Vᵀ and S Sᵀ = C. PredictedError
// is tr((W − B A) C (W − B A)ᵀ), the sum of the squared singular values of
// W S past rank (corrected for damping). See the package documentation for
// the square-root ladder and the handling of rank-deficient C.
func Whiten(k kernels.Backend, w *mat.Dense, c *mat.SymDense, rank int) (Result, error) {
	out, in := w.Dims()
	checkGram(w, c)
	checkRank(out, in, rank)
	ws, root, err := whitened(k, w, c)
	if err != nil {
		return Result{}, fmt.Errorf("svd: whiten: %w", err)
	}
	u, s, _, err := k.SVD(ws)
	if err != nil {
		return Result{}, fmt.Errorf("svd: whiten: %w", err)
	}
	res, err := factorWhitened(k, w, u, s, rank, root.damping)
	if err != nil {
		return Result{}, fmt.Errorf("svd: whiten: %w", err)
	}
	res.Path, res.Damping = root.path, root.damping
	return res, nil
}

// Spectrum returns the singular values of W S, S Sᵀ = C, in descending order
// (min(out, in) of them): the Sigma Whiten would return, without factoring.
func Spectrum(k kernels.Backend, w *mat.Dense, c *mat.SymDense) ([]float64, error) {
	checkGram(w, c)
	ws, _, err := whitened(k, w, c)
	if err != nil {
		return nil, fmt.Errorf("svd: spectrum: %w", err)
	}
	_, s, _, err := k.SVD(ws)
	if err != nil {
		return nil, fmt.Errorf("svd: spectrum: %w", err)
	}
	return s, nil
}

func checkGram(w *mat.Dense, c *mat.SymDense) {
	out, in := w.Dims()
	if n := c.SymmetricDim(); n != in {
		panic(fmt.Errorf("%w: W is %d×%d, C is %d×%d", ErrShape, out, in, n, n))
	}
}

type sqrtInfo struct {
	path    Path
	damping float64
}

// whitened validates w and c and returns W S for a square root S of C
// (possibly damped), and how S was obtained.
func whitened(k kernels.Backend, w *mat.Dense, c *mat.SymDense) (*mat.Dense, sqrtInfo, error) {
	if !matx.FiniteDense(w) {
		return nil, sqrtInfo{}, fmt.Errorf("weight: %w", ErrNonFinite)
	}
	if !matx.FiniteSym(c) {
		return nil, sqrtInfo{}, fmt.Errorf("gram: %w", ErrNonFinite)
	}
	s, info, err := gramSqrt(k, c)
	if err != nil {
		return nil, sqrtInfo{}, err
	}
	out, in := w.Dims()
	ws := mat.NewDense(out, in, nil)
	k.Dgemm(false, false, 1, matx.Contiguous(w), s, 0, ws)
	return ws, info, nil
}

// gramSqrt returns S (in × in, dense) with S Sᵀ = C, C + δI, or C with its
// negative eigenvalues clamped; see the package documentation.
func gramSqrt(k kernels.Backend, c *mat.SymDense) (*mat.Dense, sqrtInfo, error) {
	n := c.SymmetricDim()
	mean := meanDiag(c)
	if !(mean > 0) {
		return nil, sqrtInfo{}, ErrZeroGram
	}
	l, err := k.Cholesky(c)
	switch {
	case err == nil && minPivot(l) >= illConditioned*mean:
		return triToDense(l), sqrtInfo{path: PathCholesky}, nil
	case err != nil && !errors.Is(err, kernels.ErrNotPSD):
		return nil, sqrtInfo{}, err
	}
	damped := mat.NewSymDense(n, nil)
	for _, f := range dampLadder {
		delta := f * mean
		damped.CopySym(c)
		raw := damped.RawSymmetric()
		for i := range n {
			raw.Data[i*raw.Stride+i] += delta
		}
		l, err := k.Cholesky(damped)
		if err == nil {
			return triToDense(l), sqrtInfo{path: PathDamped, damping: delta}, nil
		}
		if !errors.Is(err, kernels.ErrNotPSD) {
			return nil, sqrtInfo{}, err
		}
	}
	vals, q, err := k.Eigh(c)
	if err != nil {
		return nil, sqrtInfo{}, err
	}
	top := vals[n-1]
	cut := float64(n) * epsilon * math.Abs(top)
	raw := q.RawMatrix()
	for j, v := range vals {
		h := 0.0
		if v > cut {
			h = math.Sqrt(v)
		}
		for i := range n {
			raw.Data[i*raw.Stride+j] *= h
		}
	}
	return q, sqrtInfo{path: PathEigen}, nil
}

// triToDense returns the triangular t as a dense matrix.
func triToDense(t *mat.TriDense) *mat.Dense {
	raw := t.RawTriangular()
	if raw.Uplo != blas.Lower {
		return mat.DenseCopyOf(t)
	}
	n := raw.N
	d := mat.NewDense(n, n, nil)
	dr := d.RawMatrix()
	for i := range n {
		copy(dr.Data[i*dr.Stride:i*dr.Stride+i+1], raw.Data[i*raw.Stride:i*raw.Stride+i+1])
	}
	return d
}

func meanDiag(c *mat.SymDense) float64 {
	n := c.SymmetricDim()
	if n == 0 {
		return 0
	}
	return c.Trace() / float64(n)
}

func minPivot(l *mat.TriDense) float64 {
	n, _ := l.Triangle()
	p := math.Inf(1)
	for i := range n {
		v := l.At(i, i)
		p = math.Min(p, v*v)
	}
	return p
}

// factorWhitened turns the SVD W S = U Σ Vᵀ into the rank-r factors
// B = U_r Σ_r^½, A = Σ_r^{-½} U_rᵀ W, filling components past the data rank
// from the SVD of W's residual, and computes the predicted error under C
// (damping δ undone).
func factorWhitened(k kernels.Backend, w, u *mat.Dense, s []float64, rank int, damping float64) (Result, error) {
	out, in := w.Dims()
	w = matx.Contiguous(w)
	data := dataRank(s, out, in)
	kk := min(rank, data)
	b := mat.NewDense(out, rank, nil)
	a := mat.NewDense(rank, in, nil)
	br, ar := b.RawMatrix(), a.RawMatrix()

	var uk, g *mat.Dense
	var kept float64 // ‖U_kᵀ W‖²_F plus the fill's ‖s‖²: ‖B A‖²_F
	if kk > 0 {
		uk = leadingCols(u, kk)
		g = mat.NewDense(kk, in, nil)
		k.Dgemm(true, false, 1, uk, w, 0, g)
		ukr, gr := uk.RawMatrix(), g.RawMatrix()
		for j := range kk {
			h := math.Sqrt(s[j])
			for i := range out {
				br.Data[i*br.Stride+j] = ukr.Data[i*ukr.Stride+j] * h
			}
			src := gr.Data[j*gr.Stride : j*gr.Stride+in]
			dst := ar.Data[j*ar.Stride : j*ar.Stride+in]
			for c, v := range src {
				dst[c] = v / h
				kept += v * v
			}
		}
	}
	// Components past the data rank carry at most max(out, in)·ε·σ₁² each of
	// whitened energy, so the tail sum stays exact to rounding whatever the
	// fill captures.
	pred := tailEnergy(s, kk)
	if rank > kk {
		f, err := fill(k, w, uk, g, rank-kk, b, a, kk)
		if err != nil {
			return Result{}, err
		}
		kept += f
	}
	if damping > 0 {
		resid := math.Max(0, frob2(w)-kept)
		pred -= damping * resid
	}
	return Result{B: b, A: a, Sigma: s, PredictedError: math.Max(0, pred), DataRank: data}, nil
}

// fill writes the leading m singular triplets of R = W − U_k G (G = U_kᵀ W)
// into columns and rows off… of b and a as B = U Σ^½, A = Σ^½ Vᵀ, and
// returns their ‖Σ‖²_F. Components with no energy left stay zero.
func fill(k kernels.Backend, w, uk, g *mat.Dense, m int, b, a *mat.Dense, off int) (float64, error) {
	out, in := w.Dims()
	r := mat.DenseCopyOf(w)
	if uk != nil {
		k.Dgemm(false, false, -1, uk, g, 1, r)
	}
	ur, sr, vtr, err := k.SVD(r)
	if err != nil {
		return 0, err
	}
	lim := energyFloor(out, in) * frob2(w)
	var kept float64
	live := 0
	for live < m && sr[live]*sr[live] > lim {
		kept += sr[live] * sr[live]
		live++
	}
	if live == 0 {
		return 0, nil
	}
	bs, as := splitUV(ur, sr, vtr, live, nil)
	b.Slice(0, out, off, off+live).(*mat.Dense).Copy(bs)
	a.Slice(off, off+live, 0, in).(*mat.Dense).Copy(as)
	return kept, nil
}

// leadingCols returns a packed copy of the first n columns of m (m itself if
// that is all of it and it is packed).
func leadingCols(m *mat.Dense, n int) *mat.Dense {
	r, c := m.Dims()
	if n == c {
		return matx.Contiguous(m)
	}
	return mat.DenseCopyOf(m.Slice(0, r, 0, n))
}

// frob2 returns ‖m‖²_F.
func frob2(m *mat.Dense) float64 {
	raw := m.RawMatrix()
	var sum float64
	for i := range raw.Rows {
		for _, v := range raw.Data[i*raw.Stride : i*raw.Stride+raw.Cols] {
			sum += v * v
		}
	}
	return sum
}
