package quant

import (
	"errors"
	"fmt"
	"math"
	"slices"

	"gonum.org/v1/gonum/blas/gonum"
	"gonum.org/v1/gonum/mat"

	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/methods/internal/matx"
)

// axpy is gonum's BLAS (assembly kernels): the intra-block updates are
// level-1 operations on out-long columns, too small to hand to the backend.
var axpy gonum.Implementation

// dampTries is how many damping levels GPTQ tries, each ten times the last,
// before it gives up on a Cholesky factorisation: λ, 10λ, 100λ, 1000λ.
const dampTries = 4

// GPTQ quantizes w (out × in) with the GPTQ algorithm (Frantar et al. 2022,
// arXiv 2210.17323) against the Hessian H = 2C/n of the layer-wise objective,
// where c is the input Gram Σ x xᵀ over n calibration tokens. See the package
// documentation for the steps.
func GPTQ(k kernels.Backend, w *mat.Dense, c *mat.SymDense, n int, cfg Config) (Result, error) {
	out, in := w.Dims()
	if c.SymmetricDim() != in {
		panic(fmt.Errorf("%w: W is %d×%d, C is %d×%d", ErrShape, out, in, c.SymmetricDim(), c.SymmetricDim()))
	}
	groups, size, err := cfg.Groups(in)
	if err != nil {
		return Result{}, err
	}
	if n <= 0 {
		return Result{}, fmt.Errorf("%w: gptq: %d calibration tokens", ErrConfig, n)
	}
	if !matx.FiniteDense(w) {
		return Result{}, fmt.Errorf("quant: gptq: weight: %w", ErrNonFinite)
	}
	if !matx.FiniteSym(c) {
		return Result{}, fmt.Errorf("quant: gptq: gram: %w", ErrNonFinite)
	}

	hScale := 2 / float64(n)
	diag, dead, nDead, err := hessianDiag(c, hScale)
	if err != nil {
		return Result{}, err
	}
	perm := processingOrder(diag, cfg.ActOrder)
	var mean float64
	for _, d := range diag {
		mean += d
	}
	mean /= float64(in)
	u, damp, err := dampedFactor(k, c, hScale, perm, dead, cfg.damp(), mean)
	if err != nil {
		return Result{}, err
	}

	res := newResult(out, in, groups, size, cfg)
	res.Damp, res.Dead = damp, nDead
	if cfg.ActOrder {
		res.Perm = perm
	}
	static := !cfg.DynamicGroups || groups == 1
	if static {
		if err := res.staticParams(w, groups, size); err != nil {
			return Result{}, err
		}
	}
	work := permuteColumns(w, perm)
	errH, err := res.quantizeBlocks(k, work, u, perm, size, static, cfg.Bits)
	if err != nil {
		return Result{}, err
	}
	res.unpermute(work, perm)
	if !matx.FiniteDense(res.Dequant) {
		return Result{}, fmt.Errorf("quant: gptq: quantized weight: %w", ErrNonFinite)
	}
	res.CalibError = calibError(w, res.Dequant, dead, damp*mean, errH, hScale)
	return res, nil
}

// hessianDiag returns the diagonal of H = hScale·C, with the inputs that
// have no energy (dead, their diagonal set to 1 as in the reference) and
// their count. A negative diagonal, or a dead input that still correlates
// with another, is ErrNotPSD.
func hessianDiag(c *mat.SymDense, hScale float64) (diag []float64, dead []bool, nDead int, err error) {
	cr := c.RawSymmetric()
	in := cr.N
	diag, dead = make([]float64, in), make([]bool, in)
	for j := range in {
		d := hScale * cr.Data[j*cr.Stride+j]
		switch {
		case d < 0:
			return nil, nil, 0, fmt.Errorf("quant: gptq: C[%d][%d] = %g: %w", j, j, cr.Data[j*cr.Stride+j], ErrNotPSD)
		case d == 0:
			dead[j] = true
			nDead++
			d = 1
		}
		diag[j] = d
	}
	for i := range in {
		for j := i + 1; j < in; j++ {
			if (dead[i] || dead[j]) && cr.Data[i*cr.Stride+j] != 0 {
				return nil, nil, 0, fmt.Errorf("quant: gptq: input %d has no energy but C[%d][%d] = %g: %w",
					i, i, j, cr.Data[i*cr.Stride+j], ErrNotPSD)
			}
		}
	}
	return diag, dead, nDead, nil
}

// processingOrder is the order GPTQ quantizes the columns in: their own,
// or with act-order by decreasing diagonal of H (stable, so ties keep it).
func processingOrder(diag []float64, actOrder bool) []int {
	perm := make([]int, len(diag))
	for j := range perm {
		perm[j] = j
	}
	if actOrder {
		slices.SortStableFunc(perm, func(a, b int) int {
			switch {
			case diag[a] > diag[b]:
				return -1
			case diag[a] < diag[b]:
				return 1
			}
			return 0
		})
	}
	return perm
}

// dampedFactor returns U, the upper Cholesky factor of the damped H⁻¹ in
// the permuted order, and the damping (relative to mean, the mean diagonal
// of H) that made it succeed: raised tenfold while the factorisation fails.
func dampedFactor(k kernels.Backend, c *mat.SymDense, hScale float64, perm []int, dead []bool, damp, mean float64) (*mat.Dense, float64, error) {
	for try := 0; ; try++ {
		u, err := upperInverseCholesky(k, c, hScale, perm, dead, damp*mean)
		if err == nil {
			return u, damp, nil
		}
		if !errors.Is(err, kernels.ErrNotPSD) {
			return nil, 0, fmt.Errorf("quant: gptq: Cholesky of H: %w", err)
		}
		if try == dampTries-1 {
			return nil, 0, fmt.Errorf("quant: gptq: Cholesky of H fails up to damping %g·mean(diag H): %w (%w)", damp, ErrNotPSD, err)
		}
		damp *= 10
	}
}

// staticParams sets every group's parameters from the original weights of
// the original columns (static groups).
func (res *Result) staticParams(w *mat.Dense, groups, size int) error {
	wr := w.RawMatrix()
	lo, hi := make([]float64, wr.Rows), make([]float64, wr.Rows)
	for g := range groups {
		groupRange(lo, hi, func(i int) []float64 {
			return wr.Data[i*wr.Stride+g*size : i*wr.Stride+(g+1)*size]
		})
		if err := res.setParams(g, lo, hi); err != nil {
			return fmt.Errorf("quant: gptq: group %d: %w", g, err)
		}
	}
	return nil
}

// permuteColumns returns a copy of w with its columns in processing order.
func permuteColumns(w *mat.Dense, perm []int) *mat.Dense {
	wr := w.RawMatrix()
	out, in := wr.Rows, wr.Cols
	work := mat.NewDense(out, in, nil)
	kr := work.RawMatrix()
	for i := range out {
		src := wr.Data[i*wr.Stride : i*wr.Stride+in]
		dst := kr.Data[i*kr.Stride : i*kr.Stride+in]
		for p, j := range perm {
			dst[p] = src[j]
		}
	}
	return work
}

// quantizeBlocks quantizes work (columns in processing order) block by
// block and returns ‖E‖²_F, the error in H's metric. Per block: its columns,
// transposed (one column a row), are quantized and updated in blk; codes and
// dequantized values go to qblk and dblk and then, transposed back, to
// res.Q (in processing order until unpermute) and to the block's columns of
// work (no longer needed), so every write is contiguous.
func (res *Result) quantizeBlocks(k kernels.Backend, work, u *mat.Dense, perm []int, size int, static bool, bits int) (float64, error) {
	kr, ur := work.RawMatrix(), u.RawMatrix()
	out, in := kr.Rows, kr.Cols
	maxq := float64(int(1)<<bits - 1)
	var errH float64
	lo, hi := make([]float64, out), make([]float64, out)
	blk := make([]float64, BlockSize*out)
	errs := make([]float64, BlockSize*out)
	dblk := make([]float64, BlockSize*out)
	qblk := make([]uint8, BlockSize*out)
	for i1 := 0; i1 < in; i1 += BlockSize {
		i2 := min(i1+BlockSize, in)
		cnt := i2 - i1
		transpose(blk, out, kr.Data[i1:], kr.Stride, out, cnt)
		for j := range cnt {
			col := i1 + j
			g := perm[col] / size
			if !static && col%size == 0 {
				// Dynamic groups (no act-order, so col = orig): parameters
				// from the group's weights as they stand at the start of
				// the block (updated by the earlier blocks, not yet by this
				// one), as in the reference.
				groupRange(lo, hi, func(i int) []float64 {
					return kr.Data[i*kr.Stride+col : i*kr.Stride+col+size]
				})
				if err := res.setParams(g, lo, hi); err != nil {
					return 0, fmt.Errorf("quant: gptq: group %d: %w", g, err)
				}
			}
			scales := res.Scales.RawRowView(g)
			zeros := res.Zeros[g*out : (g+1)*out]
			d := ur.Data[col*ur.Stride+col]
			wcol := blk[j*out : (j+1)*out]
			ecol := errs[j*out : (j+1)*out]
			qcol := qblk[j*out : (j+1)*out]
			dcol := dblk[j*out : (j+1)*out]
			for i, v := range wcol {
				q, dq := round(v, scales[i], float64(zeros[i]), maxq)
				qcol[i], dcol[i] = uint8(q), dq
				e := (v - dq) / d
				ecol[i] = e
				errH += e * e
			}
			// Intra-block update of the columns still to come.
			hrow := ur.Data[col*ur.Stride+col+1 : col*ur.Stride+i2]
			for jj, h := range hrow {
				if h != 0 {
					axpy.Daxpy(out, -h, ecol, 1, blk[(j+1+jj)*out:(j+2+jj)*out], 1)
				}
			}
		}
		if i2 < in {
			// Lazy batch update: W[:, i2:] −= E · U[i1:i2, i2:].
			e := mat.NewDense(cnt, out, errs[:cnt*out])
			k.Dgemm(true, false, -1, e, u.Slice(i1, i2, i2, in).(*mat.Dense), 1, work.Slice(0, out, i2, in).(*mat.Dense))
		}
		transpose(kr.Data[i1:], kr.Stride, dblk, out, cnt, out)
		transpose(res.Q[i1:], in, qblk, out, cnt, out)
	}
	return errH, nil
}

// unpermute puts the dequantized weights (in work) and the codes (in res.Q)
// back in the columns' original order.
func (res *Result) unpermute(work *mat.Dense, perm []int) {
	kr, dqr := work.RawMatrix(), res.Dequant.RawMatrix()
	out, in := kr.Rows, kr.Cols
	codes := make([]uint8, in)
	for i := range out {
		src, qrow := kr.Data[i*kr.Stride:i*kr.Stride+in], res.Q[i*in:(i+1)*in]
		dst := dqr.Data[i*dqr.Stride : i*dqr.Stride+in]
		copy(codes, qrow)
		for p, j := range perm {
			dst[j], qrow[j] = src[p], codes[p]
		}
	}
}

// calibError is tr(ΔW C ΔWᵀ) from ‖E‖²_F = tr(ΔW H ΔWᵀ) for the damped
// H = hScale·C + D, D diagonal (δ, plus 1 on dead inputs): O(out·in) instead
// of a product with C.
func calibError(w, dequant *mat.Dense, dead []bool, delta, errH, hScale float64) float64 {
	wr, dqr := w.RawMatrix(), dequant.RawMatrix()
	errD := 0.0
	for i := range wr.Rows {
		for j, v := range wr.Data[i*wr.Stride : i*wr.Stride+wr.Cols] {
			e := v - dqr.Data[i*dqr.Stride+j]
			dj := delta
			if dead[j] {
				dj++
			}
			errD += dj * e * e
		}
	}
	return math.Max(0, (errH-errD)/hScale)
}

// upperInverseCholesky returns the upper triangular U with Uᵀ U = H⁻¹, where
// H is the Hessian in processing order,
//
//	H[a][b] = scale · C[perm[a]][perm[b]] + δ·[a = b],
//
// with dead inputs' rows and columns replaced by those of the identity. With
// J the reversal permutation, J H J = L Lᵀ gives H = R Rᵀ, R = J L J upper,
// so U = R⁻¹ = J L⁻¹ J: one Cholesky and one triangular inverse, no H⁻¹
// formed.
func upperInverseCholesky(k kernels.Backend, c *mat.SymDense, scale float64, perm []int, dead []bool, delta float64) (*mat.Dense, error) {
	n := len(perm)
	cr := c.RawSymmetric()
	at := func(i, j int) float64 {
		if i > j {
			i, j = j, i
		}
		return cr.Data[i*cr.Stride+j]
	}
	hr := mat.NewSymDense(n, nil)
	raw := hr.RawSymmetric()
	for a := range n {
		pa := perm[n-1-a]
		for b := a; b < n; b++ {
			pb := perm[n-1-b]
			var v float64
			switch {
			case pa == pb && dead[pa]:
				v = 1
			case dead[pa] || dead[pb]:
			default:
				v = scale * at(pa, pb)
			}
			if a == b {
				v += delta
			}
			raw.Data[a*raw.Stride+b] = v
		}
	}
	l, err := k.Cholesky(hr)
	if err != nil {
		return nil, err
	}
	inv := mat.NewDense(n, n, nil)
	lr := l.RawTriangular()
	ir := inv.RawMatrix()
	for i := range n {
		copy(ir.Data[i*ir.Stride:i*ir.Stride+i+1], lr.Data[i*lr.Stride:i*lr.Stride+i+1])
	}
	if err := invertLower(k, inv); err != nil {
		return nil, err
	}
	slices.Reverse(ir.Data[:n*n]) // J L⁻¹ J of a packed square matrix
	return inv, nil
}

// invertLower overwrites the lower triangular l (strictly upper part zero)
// with its inverse, recursively on halves so that most of the work is in
// k.Dgemm:
//
//	[L₁₁ 0; L₂₁ L₂₂]⁻¹ = [L₁₁⁻¹ 0; −L₂₂⁻¹ L₂₁ L₁₁⁻¹  L₂₂⁻¹]
func invertLower(k kernels.Backend, l *mat.Dense) error {
	n, _ := l.Dims()
	const leaf = 64
	if n <= leaf {
		raw := l.RawMatrix()
		a := func(i, j int) *float64 { return &raw.Data[i*raw.Stride+j] }
		for i := range n {
			if *a(i, i) == 0 {
				return kernels.ErrNotPSD
			}
		}
		// Column by column: X = L⁻¹ from L X = I, in place (row i of X
		// depends on rows < i of X and row i of L only).
		for i := range n {
			d := 1 / *a(i, i)
			for j := range i {
				var s float64
				for m := j; m < i; m++ {
					s += *a(i, m) * *a(m, j)
				}
				*a(i, j) = -s * d
			}
			*a(i, i) = d
		}
		return nil
	}
	h := (n/2 + leaf - 1) / leaf * leaf
	l11 := l.Slice(0, h, 0, h).(*mat.Dense)
	l21 := l.Slice(h, n, 0, h).(*mat.Dense)
	l22 := l.Slice(h, n, h, n).(*mat.Dense)
	if err := invertLower(k, l11); err != nil {
		return err
	}
	if err := invertLower(k, l22); err != nil {
		return err
	}
	t := mat.NewDense(n-h, h, nil)
	k.Dgemm(false, false, 1, l21, l11, 0, t)
	k.Dgemm(false, false, -1, l22, t, 0, l21)
	return nil
}

// transpose sets dst[c·ldd + r] = src[r·lds + c] for r < rows, c < cols, in
// cache-sized tiles.
func transpose[T float64 | uint8](dst []T, ldd int, src []T, lds, rows, cols int) {
	const tile = 32
	for r0 := 0; r0 < rows; r0 += tile {
		r1 := min(r0+tile, rows)
		for c0 := 0; c0 < cols; c0 += tile {
			c1 := min(c0+tile, cols)
			for r := r0; r < r1; r++ {
				row := src[r*lds : r*lds+c1]
				for c := c0; c < c1; c++ {
					dst[c*ldd+r] = row[c]
				}
			}
		}
	}
}
