package safetensors

import (
	"encoding/binary"
	"fmt"
	"io"
	"math"
)

// BF16ToFloat32 returns the float32 value of the bfloat16 bits h (exact).
func BF16ToFloat32(h uint16) float32 {
	return math.Float32frombits(uint32(h) << 16)
}

// Float32ToBF16 rounds f to the nearest bfloat16, ties to even. NaN stays NaN
// (quieted, sign kept); values past the largest finite bfloat16 become ±Inf.
func Float32ToBF16(f float32) uint16 {
	u := math.Float32bits(f)
	if u&0x7fffffff > 0x7f800000 { // NaN: truncating could lose the payload and give Inf
		return uint16(u>>16) | 0x0040
	}
	return uint16((u + 0x7fff + (u>>16)&1) >> 16)
}

// F16ToFloat32 returns the float32 value of the IEEE 754 binary16 bits h
// (exact, subnormals included).
func F16ToFloat32(h uint16) float32 {
	sign := uint32(h&0x8000) << 16
	exp := uint32(h>>10) & 0x1f
	mant := uint32(h & 0x3ff)
	switch exp {
	case 0:
		// ±0 or subnormal: mant × 2⁻²⁴, exact in float32.
		v := float32(mant) * (1.0 / (1 << 24))
		return math.Float32frombits(math.Float32bits(v) | sign)
	case 0x1f:
		return math.Float32frombits(sign | 0x7f800000 | mant<<13)
	}
	return math.Float32frombits(sign | (exp+127-15)<<23 | mant<<13)
}

// Float32ToF16 rounds f to the nearest IEEE 754 binary16, ties to even.
// Magnitudes that round past 65504 become ±Inf, small ones become subnormals
// or ±0, and NaN stays NaN (quieted, sign kept).
func Float32ToF16(f float32) uint16 {
	u := math.Float32bits(f)
	sign := uint16(u>>16) & 0x8000
	exp := int(u>>23) & 0xff
	mant := u & 0x7fffff
	if exp == 0xff {
		if mant == 0 {
			return sign | 0x7c00
		}
		return sign | 0x7e00 | uint16(mant>>13)
	}
	e := exp - 127 + 15 // biased half exponent
	if e >= 0x1f {
		return sign | 0x7c00
	}
	if e <= 0 {
		// Half subnormal (or zero): the result is |f| / 2⁻²⁴ rounded to an integer.
		if e < -10 { // |f| < 2⁻²⁵: rounds to zero (2⁻²⁵ itself ties to the even 0)
			return sign
		}
		m := mant | 0x800000
		shift := uint(14 - e) // 14..24
		r := m >> shift
		rem := m & (1<<shift - 1)
		half := uint32(1) << (shift - 1)
		if rem > half || rem == half && r&1 == 1 {
			r++ // may carry into the smallest normal, whose bits are the same
		}
		return sign | uint16(r)
	}
	r := uint32(e)<<10 | mant>>13
	rem := mant & 0x1fff
	if rem > 0x1000 || rem == 0x1000 && r&1 == 1 {
		r++ // may carry into the exponent, up to Inf (0x7c00)
	}
	return sign | uint16(r)
}

// EncodeFloat32 encodes vals as little-endian dt elements, rounding to
// nearest even for F16 and BF16. dt must be F32, F16 or BF16.
func EncodeFloat32(vals []float32, dt DType) ([]byte, error) {
	le := binary.LittleEndian
	switch dt {
	case F32:
		b := make([]byte, 4*len(vals))
		for i, v := range vals {
			le.PutUint32(b[4*i:], math.Float32bits(v))
		}
		return b, nil
	case F16:
		b := make([]byte, 2*len(vals))
		for i, v := range vals {
			le.PutUint16(b[2*i:], Float32ToF16(v))
		}
		return b, nil
	case BF16:
		b := make([]byte, 2*len(vals))
		for i, v := range vals {
			le.PutUint16(b[2*i:], Float32ToBF16(v))
		}
		return b, nil
	}
	return nil, fmt.Errorf("safetensors: cannot encode float32 as %s (want F32, F16 or BF16)", dtypeString(dt))
}

// WriteFloat32 writes vals to w as little-endian dt elements, as
// EncodeFloat32 encodes them, through a small buffer: a tensor is written
// without an encoded copy of the whole of it.
func WriteFloat32(w io.Writer, vals []float32, dt DType) error {
	const chunk = 16 << 10 // elements per write
	for len(vals) > 0 {
		n := min(chunk, len(vals))
		b, err := EncodeFloat32(vals[:n], dt)
		if err != nil {
			return err
		}
		if _, err := w.Write(b); err != nil {
			return err
		}
		vals = vals[n:]
	}
	return nil
}

// DecodeFloat32 decodes little-endian dt elements from b into a new []float32
// (exact for all three). dt must be F32, F16 or BF16, and len(b) a multiple of
// its size.
func DecodeFloat32(b []byte, dt DType) ([]float32, error) {
	le := binary.LittleEndian
	switch dt {
	case F32, F16, BF16:
	default:
		return nil, fmt.Errorf("safetensors: cannot decode %s as float32 (want F32, F16 or BF16)", dtypeString(dt))
	}
	if len(b)%dt.Size() != 0 {
		return nil, fmt.Errorf("safetensors: %d bytes is not a whole number of %s elements", len(b), dt)
	}
	out := make([]float32, len(b)/dt.Size())
	switch dt {
	case F32:
		for i := range out {
			out[i] = math.Float32frombits(le.Uint32(b[4*i:]))
		}
	case F16:
		for i := range out {
			out[i] = F16ToFloat32(le.Uint16(b[2*i:]))
		}
	case BF16:
		for i := range out {
			out[i] = BF16ToFloat32(le.Uint16(b[2*i:]))
		}
	}
	return out, nil
}

// dtypeString quotes dtypes that would otherwise print as nothing or oddly.
func dtypeString(dt DType) string {
	if dt.Size() == 0 {
		return fmt.Sprintf("dtype %q", string(dt))
	}
	return string(dt)
}
