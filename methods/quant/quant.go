package quant

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
	ErrShape = errors.New("quant: dimension mismatch")

	// ErrConfig reports an unsupported configuration: bits, group size or
	// damping out of range, or a group size that does not divide the input
	// features.
	ErrConfig = errors.New("quant: invalid config")

	// ErrNonFinite reports NaN or Inf in a weight or a Gram matrix.
	ErrNonFinite = errors.New("quant: non-finite input")

	// ErrNotPSD reports a Gram matrix that is not positive semi-definite: a
	// negative diagonal entry, an input channel with no energy but non-zero
	// correlations, or a Cholesky factorisation that fails at every damping.
	ErrNotPSD = errors.New("quant: Gram matrix is not positive semi-definite")

	// ErrScaleRange reports a group whose range needs a scale past the
	// largest float16 (65504): weights beyond about 10⁶ in magnitude.
	ErrScaleRange = errors.New("quant: scale overflows float16")
)

// DefaultDamp is GPTQ's relative damping λ when Config.Damp is 0: λ ·
// mean(diag H) is added to the diagonal of H (the GPTQ reference's percdamp).
const DefaultDamp = 0.01

// BlockSize is the number of columns GPTQ quantizes between two lazy
// (matrix-matrix) updates of the remaining columns.
const BlockSize = 128

// Config says how to quantize a layer.
type Config struct {
	// Bits per weight: 2, 3, 4 or 8.
	Bits int
	// GroupSize is the number of consecutive input columns sharing a scale
	// and zero point per output channel: 32, 64 or 128, and it must divide
	// the layer's input features. 0 or −1: one group per output channel
	// spanning the whole row.
	GroupSize int
	// Sym selects symmetric quantization (zero point 2^(Bits−1)); otherwise
	// asymmetric (min/max range, integer zero point).
	Sym bool
	// ActOrder (GPTQ's desc_act) quantizes columns in order of decreasing
	// diag(H). Groups stay static, so GIdx is j / GroupSize. RTN ignores it.
	ActOrder bool
	// DynamicGroups (GPTQ without act-order only) takes each group's scale
	// and zero point from the group's weights as updated by the columns
	// quantized before it, as the GPTQ reference does, instead of from the
	// original weights (static groups, the default). RTN ignores it.
	DynamicGroups bool
	// Damp is GPTQ's relative damping λ in (0, 1]; 0 means DefaultDamp. RTN
	// ignores it.
	Damp float64
}

// Validate checks the configuration on its own; Groups also checks it
// against a layer's input features.
func (c Config) Validate() error {
	switch c.Bits {
	case 2, 3, 4, 8:
	default:
		return fmt.Errorf("%w: bits %d (want 2, 3, 4 or 8)", ErrConfig, c.Bits)
	}
	switch c.GroupSize {
	case -1, 0, 32, 64, 128:
	default:
		return fmt.Errorf("%w: group size %d (want 32, 64, 128, or 0 or −1 for one group per output channel)", ErrConfig, c.GroupSize)
	}
	if c.DynamicGroups && c.ActOrder {
		return fmt.Errorf("%w: dynamic groups with act-order (act-order always uses static groups)", ErrConfig)
	}
	if math.IsNaN(c.Damp) || c.Damp < 0 || c.Damp > 1 {
		return fmt.Errorf("%w: damp %v (want 0 < damp ≤ 1, or 0 for the default %v)", ErrConfig, c.Damp, DefaultDamp)
	}
	return nil
}

// Groups validates the configuration for a layer with in input features and
// returns the number of groups and the columns per group (in for one group
// per output channel).
func (c Config) Groups(in int) (groups, size int, err error) {
	if err := c.Validate(); err != nil {
		return 0, 0, err
	}
	if c.GroupSize <= 0 {
		return 1, in, nil
	}
	if in%c.GroupSize != 0 {
		return 0, 0, fmt.Errorf("%w: group size %d does not divide the %d input features", ErrConfig, c.GroupSize, in)
	}
	return in / c.GroupSize, c.GroupSize, nil
}

func (c Config) damp() float64 {
	if c.Damp == 0 {
		return DefaultDamp
	}
	return c.Damp
}

// Result is a quantized out × in weight.
type Result struct {
	Bits      int
	GroupSize int // columns per group: in for one group per output channel
	Sym       bool
	ActOrder  bool

	// Q holds the integer codes, out × in row-major (Hugging Face layout),
	// each in [0, 2^Bits).
	Q []uint8
	// Scales is groups × out: the scale of every (group, output channel).
	// Every scale is a positive float16 value, so a GPTQ checkpoint stores
	// it exactly.
	Scales *mat.Dense
	// Zeros is groups × out, row-major: the integer zero points, in
	// [1, 2^Bits − 1]; 2^(Bits−1) when symmetric.
	Zeros []int32
	// GIdx gives the group of every input column: j / GroupSize (static
	// groups, also with act-order).
	GIdx []int32
	// Dequant is the dequantized weight, out × in:
	// Dequant[i][j] = Scales[g][i] · (Q[i][j] − Zeros[g][i]), g = GIdx[j].
	Dequant *mat.Dense

	// Perm is GPTQ's act-order: the original index of the column quantized
	// k-th. Nil without act-order and for RTN.
	Perm []int
	// Damp is the relative damping GPTQ finally used (Config.Damp, or a
	// multiple of it after failed Cholesky factorisations); 0 for RTN.
	Damp float64
	// Dead is the number of input columns GPTQ found with no calibration
	// energy (C_jj = 0); they are rounded to nearest.
	Dead int
	// CalibError is GPTQ's calibration error tr((W − Dequant) C (W − Dequant)ᵀ)
	// under the undamped C; 0 for RTN, which sees no C (use CalibError).
	CalibError float64
}

// Groups returns the number of groups, the rows of Scales.
func (r Result) Groups() int {
	g, _ := r.Scales.Dims()
	return g
}

// RTN quantizes w (out × in) by rounding every weight to the nearest level of
// its group: per (group, output channel), scale and zero point from the
// group's range, q = clamp(round(w/scale) + zero, 0, 2^Bits − 1).
func RTN(w *mat.Dense, cfg Config) (Result, error) {
	out, in := w.Dims()
	groups, size, err := cfg.Groups(in)
	if err != nil {
		return Result{}, err
	}
	if !matx.FiniteDense(w) {
		return Result{}, fmt.Errorf("quant: rtn: weight: %w", ErrNonFinite)
	}
	res := newResult(out, in, groups, size, cfg)
	raw := w.RawMatrix()
	lo, hi := make([]float64, out), make([]float64, out)
	for g := range groups {
		groupRange(lo, hi, func(i int) []float64 {
			return raw.Data[i*raw.Stride+g*size : i*raw.Stride+(g+1)*size]
		})
		if err := res.setParams(g, lo, hi); err != nil {
			return Result{}, fmt.Errorf("quant: rtn: group %d: %w", g, err)
		}
	}
	sr, dr := res.Scales.RawMatrix(), res.Dequant.RawMatrix()
	maxq := float64(int(1)<<cfg.Bits - 1)
	for i := range out {
		src := raw.Data[i*raw.Stride : i*raw.Stride+in]
		codes := res.Q[i*in : (i+1)*in]
		deq := dr.Data[i*dr.Stride : i*dr.Stride+in]
		for g := range groups {
			s, z := sr.Data[g*sr.Stride+i], float64(res.Zeros[g*out+i])
			for j := g * size; j < (g+1)*size; j++ {
				q, d := round(src[j], s, z, maxq)
				codes[j], deq[j] = uint8(q), d
			}
		}
	}
	return res, nil
}

// newResult allocates a Result with GIdx filled in.
func newResult(out, in, groups, size int, cfg Config) Result {
	r := Result{
		Bits:      cfg.Bits,
		GroupSize: size,
		Sym:       cfg.Sym,
		ActOrder:  cfg.ActOrder,
		Q:         make([]uint8, out*in),
		Scales:    mat.NewDense(groups, out, nil),
		Zeros:     make([]int32, groups*out),
		GIdx:      make([]int32, in),
		Dequant:   mat.NewDense(out, in, nil),
	}
	for j := range r.GIdx {
		r.GIdx[j] = int32(j / size)
	}
	return r
}

// groupRange sets lo[i] = min(0, min row(i)) and hi[i] = max(0, max row(i))
// for every output channel i.
func groupRange(lo, hi []float64, row func(i int) []float64) {
	for i := range lo {
		l, h := 0.0, 0.0
		for _, v := range row(i) {
			if v < l {
				l = v
			} else if v > h {
				h = v
			}
		}
		lo[i], hi[i] = l, h
	}
}

// setParams computes group g's scale and zero point of every output channel
// from the channel's range [lo, hi] (which contains 0).
func (r *Result) setParams(g int, lo, hi []float64) error {
	out := len(lo)
	scales := r.Scales.RawRowView(g)
	zeros := r.Zeros[g*out : (g+1)*out]
	for i := range out {
		s, z, err := params(lo[i], hi[i], r.Bits, r.Sym)
		if err != nil {
			return fmt.Errorf("output channel %d, range [%g, %g]: %w", i, lo[i], hi[i], err)
		}
		scales[i], zeros[i] = s, z
	}
	return nil
}

// params returns the scale and zero point of a group whose values lie in
// [lo, hi], lo ≤ 0 ≤ hi. The scale is rounded up to a float16 value (the
// checkpoint stores float16 scales; rounding up keeps the range covered) and
// the zero point is at least 1 (GPTQ v1 stores zero − 1, and loaders read a
// stored −1 as 2^bits).
func params(lo, hi float64, bits int, sym bool) (scale float64, zero int32, err error) {
	maxq := float64(int(1)<<bits - 1)
	if lo == 0 && hi == 0 {
		lo, hi = -1, 1
	}
	if sym {
		m := math.Max(-lo, hi)
		scale, err = halfCeil(2 * m / maxq)
		return scale, int32(1) << (bits - 1), err
	}
	if scale, err = halfCeil((hi - lo) / maxq); err != nil {
		return 0, 0, err
	}
	z := math.RoundToEven(-lo / scale)
	if z < 1 {
		// All of the range is (nearly) non-negative: give up one level so
		// that zero = 1; the range [−scale, (maxq − 1)·scale] still covers
		// [lo, hi].
		if scale, err = halfCeil(hi / (maxq - 1)); err != nil {
			return 0, 0, err
		}
		z = 1
	}
	return scale, int32(z), nil
}

// round returns the code q = clamp(round(v/s) + z, 0, maxq) of v and its
// dequantized value s·(q − z).
func round(v, s, z, maxq float64) (q, dq float64) {
	q = math.RoundToEven(v/s) + z
	if q < 0 {
		q = 0
	} else if q > maxq {
		q = maxq
	}
	return q, s * (q - z)
}

const (
	// halfMax is the largest finite float16.
	halfMax = 65504
	// halfMinNormal is the smallest normal float16, 2⁻¹⁴.
	halfMinNormal = 0x1p-14
	// halfMinSub is the smallest subnormal float16 (and the subnormal
	// spacing), 2⁻²⁴.
	halfMinSub = 0x1p-24
)

// halfCeil returns the smallest float16 value ≥ x > 0 (at least the
// smallest subnormal), or ErrScaleRange past the largest finite one.
func halfCeil(x float64) (float64, error) {
	ulp := halfMinSub
	if x >= halfMinNormal {
		_, e := math.Frexp(x) // x ∈ [2^(e−1), 2^e)
		ulp = math.Ldexp(1, e-1-10)
	}
	r := math.Max(math.Ceil(x/ulp)*ulp, halfMinSub)
	if r > halfMax || math.IsNaN(r) {
		return 0, fmt.Errorf("%w: scale %g", ErrScaleRange, x)
	}
	return r, nil
}

// CalibError returns tr((W − W′) C (W − W′)ᵀ) = ‖(W − W′) Xᵀ‖²_F, the
// calibration error of replacing w by wq, with the products on k
// (O(out·in²)), in row blocks so the extra memory is one in × in copy of C.
func CalibError(k kernels.Backend, w, wq *mat.Dense, c *mat.SymDense) float64 {
	out, in := w.Dims()
	ro, ri := wq.Dims()
	if ro != out || ri != in || c.SymmetricDim() != in {
		panic(fmt.Errorf("%w: W is %d×%d, W′ is %d×%d, C is %d×%d", ErrShape, out, in, ro, ri, c.SymmetricDim(), c.SymmetricDim()))
	}
	cd := matx.SymToDense(c)
	const rows = 256
	e := mat.NewDense(min(rows, out), in, nil)
	ec := mat.NewDense(min(rows, out), in, nil)
	var sum float64
	for r0 := 0; r0 < out; r0 += rows {
		n := min(rows, out-r0)
		ev := e.Slice(0, n, 0, in).(*mat.Dense)
		ecv := ec.Slice(0, n, 0, in).(*mat.Dense)
		ev.Sub(w.Slice(r0, r0+n, 0, in), wq.Slice(r0, r0+n, 0, in))
		k.Dgemm(false, false, 1, ev, cd, 0, ecv)
		for i := range n {
			x, y := ev.RawRowView(i), ecv.RawRowView(i)
			for j := range x {
				sum += x[j] * y[j]
			}
		}
	}
	return sum
}
