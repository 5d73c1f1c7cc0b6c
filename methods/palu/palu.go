package palu

import (
	"errors"
	"fmt"
	"math"
	"math/bits"

	"gonum.org/v1/gonum/mat"

	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/methods/params"
	"github.com/rankzip/rankzip/methods/svd"
)

// ErrShape reports inconsistent dimensions (a programming error: panics).
var ErrShape = errors.New("palu: dimension mismatch")

// DefaultGroupHeads is G-LRD's default group size.
const DefaultGroupHeads = params.DefaultPaluGroupHeads

// GroupHeads returns the number of KV heads per group: want when it divides
// kvHeads, and for want = 0 the largest divisor of kvHeads not above
// DefaultGroupHeads.
func GroupHeads(kvHeads, want int) (int, error) { return params.PaluGroupHeads(kvHeads, want) }

// Group is the factorisation of one group of heads.
type Group struct {
	Down *mat.Dense // rⱼ × hidden: its output is the cached latent
	Up   *mat.Dense // (g·d) × rⱼ: rebuilds the group's keys or values
}

// Result is a Palu factorisation of a k_proj or v_proj.
type Result struct {
	Groups []Group
	// Bias is the original bias (or nil), now added after the up-projections.
	Bias []float64
	// PredictedError is Σⱼ tr((W⁽ʲ⁾ − LⱼRⱼ) C (W⁽ʲ⁾ − LⱼRⱼ)ᵀ).
	PredictedError float64
}

// LatentSize is Σ rⱼ, the latent values cached per token.
func (r Result) LatentSize() int {
	n := 0
	for _, g := range r.Groups {
		n += g.Down.RawMatrix().Rows
	}
	return n
}

// groupRows returns W⁽ʲ⁾ for each group of groupHeads heads of headDim rows.
func groupRows(w *mat.Dense, headDim, groupHeads int) []*mat.Dense {
	out, in := w.Dims()
	rows := headDim * groupHeads
	if headDim <= 0 || groupHeads <= 0 || out%rows != 0 {
		panic(fmt.Errorf("%w: W is %d×%d, groups of %d heads of %d rows", ErrShape, out, in, groupHeads, headDim))
	}
	var gs []*mat.Dense
	for r := 0; r < out; r += rows {
		gs = append(gs, mat.DenseCopyOf(w.Slice(r, r+rows, 0, in)))
	}
	return gs
}

// Spectra returns the whitened singular values of each group (descending),
// the input of a spectrum-based rank allocation.
func Spectra(k kernels.Backend, w *mat.Dense, c *mat.SymDense, headDim, groupHeads int) ([][]float64, error) {
	var out [][]float64
	for j, g := range groupRows(w, headDim, groupHeads) {
		s, err := svd.Spectrum(k, g, c)
		if err != nil {
			return nil, fmt.Errorf("palu: group %d: %w", j, err)
		}
		out = append(out, s)
	}
	return out, nil
}

// Decompose factors w (n_kv·headDim × hidden, optional bias) in groups of
// groupHeads heads at ranks[j] for group j, whitened by the input Gram c.
func Decompose(k kernels.Backend, w *mat.Dense, bias []float64, c *mat.SymDense, headDim, groupHeads int, ranks []int) (Result, error) {
	groups := groupRows(w, headDim, groupHeads)
	if len(ranks) != len(groups) {
		panic(fmt.Errorf("%w: %d ranks for %d groups", ErrShape, len(ranks), len(groups)))
	}
	if out, _ := w.Dims(); bias != nil && len(bias) != out {
		panic(fmt.Errorf("%w: bias of %d for %d rows", ErrShape, len(bias), out))
	}
	res := Result{Bias: bias}
	for j, g := range groups {
		f, err := svd.Whiten(k, g, c, ranks[j])
		if err != nil {
			return Result{}, fmt.Errorf("palu: group %d: %w", j, err)
		}
		res.Groups = append(res.Groups, Group{Down: f.A, Up: f.B})
		res.PredictedError += f.PredictedError
	}
	return res, nil
}

// Rebuild returns the dense approximation [L₁R₁; …; L_GR_G] of W.
func (r Result) Rebuild() *mat.Dense {
	var rows, in int
	for _, g := range r.Groups {
		gr, _ := g.Up.Dims()
		rows += gr
		_, in = g.Down.Dims()
	}
	w := mat.NewDense(rows, in, nil)
	off := 0
	for _, g := range r.Groups {
		gr, _ := g.Up.Dims()
		w.Slice(off, off+gr, 0, in).(*mat.Dense).Mul(g.Up, g.Down)
		off += gr
	}
	return w
}

// Hadamard returns an orthonormal r×r matrix that spreads each latent value
// over many: block-diagonal, with one normalised Sylvester–Walsh–Hadamard
// block per power of two in the binary expansion of r (largest first).
// Applied as R′ = H R and L′ = L Hᵀ it leaves L R unchanged and evens out the
// latent's channels before quantization.
func Hadamard(r int) *mat.Dense {
	h := mat.NewDense(r, r, nil)
	off := 0
	for size := 1 << 30; size >= 1; size >>= 1 {
		if r-off < size {
			continue
		}
		scale := 1 / math.Sqrt(float64(size))
		for i := range size {
			for j := range size {
				v := scale
				if bits.OnesCount(uint(i&j))%2 == 1 {
					v = -scale
				}
				h.Set(off+i, off+j, v)
			}
		}
		off += size
	}
	return h
}

// Rotate applies Hadamard(rⱼ) to every group: the factorisation computes the
// same map, with rotated latents.
func (r Result) Rotate() Result {
	out := Result{Bias: r.Bias, PredictedError: r.PredictedError}
	for _, g := range r.Groups {
		rank, _ := g.Down.Dims()
		h := Hadamard(rank)
		var down, up mat.Dense
		down.Mul(h, g.Down)
		up.Mul(g.Up, h.T())
		out.Groups = append(out.Groups, Group{Down: &down, Up: &up})
	}
	return out
}
