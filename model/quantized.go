package model

import (
	"fmt"

	"github.com/rankzip/rankzip/kernels"
)

// Quantized is a linear layer stored as integer codes with a scale and a zero
// point per (group, output channel), the GPTQ layout:
// W[n][k] = Scales[g][n] · (Q[n][k] − Zeros[g][n]) with g = GIdx[k].
// Apply dequantizes a block of output rows at a time and multiplies in
// float32.
type Quantized struct {
	Bits   int       // 2, 3, 4 or 8
	Q      []uint8   // codes, out × in row-major, each in [0, 2^Bits)
	Scales []float32 // groups × out
	Zeros  []int32   // groups × out, true zero points
	GIdx   []int32   // group of every input column
	Bias   []float32 // out, or nil
	out    int
	in     int
	groups int
}

// quantRowBlock is how many output rows Apply dequantizes at once.
const quantRowBlock = 64

// NewQuantized checks the shapes and ranges of a quantized layer.
func NewQuantized(out, in, bits int, q []uint8, scales []float32, zeros, gidx []int32, bias []float32) (*Quantized, error) {
	switch bits {
	case 2, 3, 4, 8:
	default:
		return nil, fmt.Errorf("quantized layer: %d bits (want 2, 3, 4 or 8)", bits)
	}
	if out <= 0 || in <= 0 || len(q) != out*in {
		return nil, fmt.Errorf("quantized layer: %d codes for %d×%d", len(q), out, in)
	}
	if len(scales) == 0 || len(scales)%out != 0 || len(zeros) != len(scales) {
		return nil, fmt.Errorf("quantized layer: %d scales and %d zero points for %d output channels", len(scales), len(zeros), out)
	}
	groups := len(scales) / out
	if len(gidx) != in {
		return nil, fmt.Errorf("quantized layer: %d g_idx entries for %d input features", len(gidx), in)
	}
	for k, g := range gidx {
		if g < 0 || int(g) >= groups {
			return nil, fmt.Errorf("quantized layer: g_idx[%d] = %d outside [0, %d)", k, g, groups)
		}
	}
	maxq := uint8(1<<bits - 1)
	for i, c := range q {
		if c > maxq {
			return nil, fmt.Errorf("quantized layer: code %d at [%d][%d] does not fit %d bits", c, i/in, i%in, bits)
		}
	}
	if bias != nil && len(bias) != out {
		return nil, fmt.Errorf("quantized layer: bias of %d for %d outputs", len(bias), out)
	}
	return &Quantized{Bits: bits, Q: q, Scales: scales, Zeros: zeros, GIdx: gidx, Bias: bias, out: out, in: in, groups: groups}, nil
}

func (l *Quantized) In() int     { return l.in }
func (l *Quantized) Out() int    { return l.out }
func (l *Quantized) Groups() int { return l.groups }

// NumParams counts the weights (one per code), the scales, the zero points
// and the bias.
func (l *Quantized) NumParams() int64 {
	return int64(len(l.Q) + len(l.Scales) + len(l.Zeros) + len(l.Bias))
}

// dequantRows writes rows [r0, r1) of W into w ((r1−r0) × in).
func (l *Quantized) dequantRows(w []float32, r0, r1 int) {
	for n := r0; n < r1; n++ {
		codes := l.Q[n*l.in : (n+1)*l.in]
		row := w[(n-r0)*l.in : (n-r0+1)*l.in]
		for k, c := range codes {
			g := int(l.GIdx[k])*l.out + n
			row[k] = l.Scales[g] * float32(int32(c)-l.Zeros[g])
		}
	}
}

// Dequantize returns W, out × in row-major.
func (l *Quantized) Dequantize() []float32 {
	w := make([]float32, l.out*l.in)
	l.dequantRows(w, 0, l.out)
	return w
}

func (l *Quantized) Apply(k kernels.Backend, y, x []float32, rows int) {
	buf := make([]float32, min(quantRowBlock, l.out)*l.in)
	for r0 := 0; r0 < l.out; r0 += quantRowBlock {
		r1 := min(r0+quantRowBlock, l.out)
		l.dequantRows(buf, r0, r1)
		k.Sgemm(false, true, rows, r1-r0, l.in, 1, x, l.in, buf, l.in, 0, y[r0:], l.out)
	}
	addBias(y, l.Bias, rows)
}
