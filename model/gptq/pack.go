package gptq

import (
	"errors"
	"fmt"
	"math"

	"github.com/rankzip/rankzip/model/safetensors"
)

// ErrLayer reports a Layer or Packed whose fields do not describe a valid
// quantized layer: unsupported bits, sizes that are not multiples of 32,
// slice lengths that do not match, codes, zero points or group indices out
// of range, scales that are not finite float16 values.
var ErrLayer = errors.New("gptq: invalid layer")

// Layer is one quantized linear layer, unpacked.
type Layer struct {
	Bits    int // 2, 3, 4 or 8
	Out, In int // multiples of 32

	// Q holds the codes, out × in row-major (the Hugging Face weight
	// layout), each in [0, 2^Bits).
	Q []uint8
	// Scales is groups × out, row-major.
	Scales []float32
	// Zeros is groups × out, row-major: the true zero points, in
	// [1, 2^Bits] (the file stores zero − 1).
	Zeros []int32
	// GIdx gives the group of every input column, in [0, groups).
	GIdx []int32
}

// Groups returns the number of groups, len(Scales) / Out.
func (l *Layer) Groups() int {
	if l.Out <= 0 {
		return 0
	}
	return len(l.Scales) / l.Out
}

// Validate checks every field.
func (l *Layer) Validate() error {
	if err := checkDims(l.Bits, l.Out, l.In); err != nil {
		return err
	}
	g := l.Groups()
	switch {
	case len(l.Q) != l.Out*l.In:
		return fmt.Errorf("%w: %d codes for %d×%d", ErrLayer, len(l.Q), l.Out, l.In)
	case g < 1 || len(l.Scales) != g*l.Out:
		return fmt.Errorf("%w: %d scales for %d output channels", ErrLayer, len(l.Scales), l.Out)
	case len(l.Zeros) != g*l.Out:
		return fmt.Errorf("%w: %d zero points for %d groups of %d output channels", ErrLayer, len(l.Zeros), g, l.Out)
	case len(l.GIdx) != l.In:
		return fmt.Errorf("%w: %d g_idx entries for %d input features", ErrLayer, len(l.GIdx), l.In)
	}
	maxq := 1<<l.Bits - 1
	for i, q := range l.Q {
		if int(q) > maxq {
			return fmt.Errorf("%w: code %d at [%d][%d] does not fit %d bits", ErrLayer, q, i/l.In, i%l.In, l.Bits)
		}
	}
	for i, z := range l.Zeros {
		if z < 1 || int(z) > maxq+1 {
			return fmt.Errorf("%w: zero point %d at [%d][%d] outside [1, %d] (GPTQ v1 stores zero − 1)", ErrLayer, z, i/l.Out, i%l.Out, maxq+1)
		}
	}
	for i, s := range l.Scales {
		if math.IsNaN(float64(s)) || math.Abs(float64(s)) > halfMax {
			return fmt.Errorf("%w: scale %v at [%d][%d] is not a finite float16", ErrLayer, s, i/l.Out, i%l.Out)
		}
	}
	return checkGIdx(l.GIdx, g)
}

// halfMax is the largest finite float16.
const halfMax = 65504

func checkDims(bits, out, in int) error {
	switch bits {
	case 2, 3, 4, 8:
	default:
		return fmt.Errorf("%w: %d bits (want 2, 3, 4 or 8)", ErrLayer, bits)
	}
	if out <= 0 || in <= 0 || out%32 != 0 || in%32 != 0 {
		return fmt.Errorf("%w: %d×%d (out × in): both must be positive multiples of 32", ErrLayer, out, in)
	}
	return nil
}

func checkGIdx(gidx []int32, groups int) error {
	for k, g := range gidx {
		if g < 0 || int(g) >= groups {
			return fmt.Errorf("%w: g_idx[%d] = %d outside [0, %d)", ErrLayer, k, g, groups)
		}
	}
	return nil
}

// Dequantize returns the float32 weight, out × in row-major:
// W[n][k] = Scales[g][n] · (Q[n][k] − Zeros[g][n]), g = GIdx[k]. The layer
// must be valid.
func (l *Layer) Dequantize() []float32 {
	w := make([]float32, l.Out*l.In)
	for n := range l.Out {
		codes := l.Q[n*l.In : (n+1)*l.In]
		row := w[n*l.In : (n+1)*l.In]
		for k, q := range codes {
			g := int(l.GIdx[k])
			row[k] = l.Scales[g*l.Out+n] * float32(int32(q)-l.Zeros[g*l.Out+n])
		}
	}
	return w
}

// Packed is a layer in the on-disk layout, every slice row-major.
type Packed struct {
	Bits            int
	Out, In, Groups int

	QWeight []int32  // [In·Bits/32, Out]
	QZeros  []int32  // [Groups, Out·Bits/32], zero − 1
	Scales  []uint16 // [Groups, Out], float16 bits
	GIdx    []int32  // [In]
}

// Validate checks the sizes and the group indices.
func (p *Packed) Validate() error {
	if err := checkDims(p.Bits, p.Out, p.In); err != nil {
		return err
	}
	switch {
	case p.Groups < 1:
		return fmt.Errorf("%w: %d groups", ErrLayer, p.Groups)
	case len(p.QWeight) != p.In*p.Bits/32*p.Out:
		return fmt.Errorf("%w: qweight has %d words, want [%d, %d]", ErrLayer, len(p.QWeight), p.In*p.Bits/32, p.Out)
	case len(p.QZeros) != p.Groups*p.Out*p.Bits/32:
		return fmt.Errorf("%w: qzeros has %d words, want [%d, %d]", ErrLayer, len(p.QZeros), p.Groups, p.Out*p.Bits/32)
	case len(p.Scales) != p.Groups*p.Out:
		return fmt.Errorf("%w: %d scales, want [%d, %d]", ErrLayer, len(p.Scales), p.Groups, p.Out)
	case len(p.GIdx) != p.In:
		return fmt.Errorf("%w: %d g_idx entries, want %d", ErrLayer, len(p.GIdx), p.In)
	}
	for i, h := range p.Scales {
		if h&0x7c00 == 0x7c00 {
			return fmt.Errorf("%w: scale [%d][%d] is Inf or NaN", ErrLayer, i/p.Out, i%p.Out)
		}
	}
	return checkGIdx(p.GIdx, p.Groups)
}

// Pack lays l out as the GPTQ v1 tensors. Scales are rounded to the nearest
// float16.
func Pack(l *Layer) (*Packed, error) {
	if err := l.Validate(); err != nil {
		return nil, err
	}
	b, out, in, groups := l.Bits, l.Out, l.In, l.Groups()
	p := &Packed{
		Bits: b, Out: out, In: in, Groups: groups,
		QWeight: make([]int32, in*b/32*out),
		QZeros:  make([]int32, groups*out*b/32),
		Scales:  make([]uint16, groups*out),
		GIdx:    append([]int32(nil), l.GIdx...),
	}
	vals := make([]uint32, max(in, out))
	words := make([]uint32, max(in, out)*b/32)
	rows := in * b / 32
	for n := range out {
		for k, q := range l.Q[n*in : (n+1)*in] {
			vals[k] = uint32(q)
		}
		packBits(words[:rows], vals[:in], b)
		for r, w := range words[:rows] {
			p.QWeight[r*out+n] = int32(w)
		}
	}
	cols := out * b / 32
	for g := range groups {
		for n, z := range l.Zeros[g*out : (g+1)*out] {
			vals[n] = uint32(z - 1)
		}
		packBits(words[:cols], vals[:out], b)
		for c, w := range words[:cols] {
			p.QZeros[g*cols+c] = int32(w)
		}
	}
	for i, s := range l.Scales {
		h := safetensors.Float32ToF16(s)
		if h&0x7c00 == 0x7c00 {
			return nil, fmt.Errorf("%w: scale %v at [%d][%d] overflows float16", ErrLayer, s, i/out, i%out)
		}
		p.Scales[i] = h
	}
	return p, nil
}

// Unpack reads the codes, zero points, scales and group indices back.
func Unpack(p *Packed) (*Layer, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	b, out, in, groups := p.Bits, p.Out, p.In, p.Groups
	l := &Layer{
		Bits: b, Out: out, In: in,
		Q:      make([]uint8, out*in),
		Scales: make([]float32, groups*out),
		Zeros:  make([]int32, groups*out),
		GIdx:   append([]int32(nil), p.GIdx...),
	}
	vals := make([]uint32, max(in, out))
	words := make([]uint32, max(in, out)*b/32)
	rows := in * b / 32
	for n := range out {
		for r := range rows {
			words[r] = uint32(p.QWeight[r*out+n])
		}
		unpackBits(vals[:in], words[:rows], b)
		for k, v := range vals[:in] {
			l.Q[n*in+k] = uint8(v)
		}
	}
	cols := out * b / 32
	for g := range groups {
		for c := range cols {
			words[c] = uint32(p.QZeros[g*cols+c])
		}
		unpackBits(vals[:out], words[:cols], b)
		for n, v := range vals[:out] {
			l.Zeros[g*out+n] = int32(v) + 1
		}
	}
	for i, h := range p.Scales {
		l.Scales[i] = safetensors.F16ToFloat32(h)
	}
	return l, nil
}

// packBits writes vals (each below 2^bits, len a multiple of 32) into words
// (len(vals)·bits/32) as one little-endian bit stream: value j at bits
// bits·j … bits·j + bits − 1.
func packBits(words, vals []uint32, bits int) {
	clear(words)
	for j, v := range vals {
		off := bits * j
		w, sh := off/32, off%32
		words[w] |= v << sh
		if sh+bits > 32 {
			words[w+1] |= v >> (32 - sh)
		}
	}
}

// unpackBits is packBits' inverse.
func unpackBits(vals, words []uint32, bits int) {
	mask := uint32(1)<<bits - 1
	for j := range vals {
		off := bits * j
		w, sh := off/32, off%32
		v := words[w] >> sh
		if sh+bits > 32 {
			v |= words[w+1] << (32 - sh)
		}
		vals[j] = v & mask
	}
}
