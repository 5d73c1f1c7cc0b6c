package safetensors

import (
	"bytes"
	"encoding/binary"
	"io"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

func f32(bits uint32) float32 { return math.Float32frombits(bits) }

func TestFloat32ToBF16(t *testing.T) {
	for _, tc := range []struct {
		in   float32
		want uint16
	}{
		{1, 0x3f80},
		{1.00390625, 0x3f80},      // 1 + 2⁻⁸: a tie, rounds to the even 0x3f80
		{1.01171875, 0x3f82},      // 1 + 3·2⁻⁸: a tie, rounds up to the even 0x3f82
		{f32(0x3f808001), 0x3f81}, // just above the tie
		{f32(0x3f807fff), 0x3f80}, // just below the tie
		{-2, 0xc000},
		{0, 0x0000},
		{float32(math.Copysign(0, -1)), 0x8000},
		{float32(math.Inf(1)), 0x7f80},
		{float32(math.Inf(-1)), 0xff80},
		{math.MaxFloat32, 0x7f80}, // rounds past the largest bf16
		{f32(0x7f7f0000), 0x7f7f}, // the largest finite bf16
		{f32(0x7f7f7fff), 0x7f7f}, // just below the tie to Inf
		{f32(0x00000001), 0x0000}, // smallest f32 subnormal
		{f32(0x00008000), 0x0000}, // a tie at the bottom, even is 0
		{f32(0x00018000), 0x0002}, // a tie, odd 0x0001 rounds up
		{f32(0x807fffff), 0x8080}, // largest negative subnormal carries into the exponent
		{f32(0x3dcccccd), 0x3dcd}, // 0.1
		{f32(0x7fc00000), 0x7fc0}, // quiet NaN
		{f32(0x7f800001), 0x7fc0}, // NaN whose payload is only in the low bits stays NaN
		{f32(0xff800001), 0xffc0}, // negative NaN keeps its sign
		{f32(0x7fbfffff), 0x7fff}, // NaN near the top must not carry into the sign
		{f32(0x7fffffff), 0x7fff},
		{f32(0x3f80ffff), 0x3f81},  // above the tie
		{f32(0x3fffffff), 0x4000},  // carry into the exponent
		{f32(0xbf808000), 0xbf80},  // negative tie to even
		{f32(0xbf818000), 0xbf82},  // negative tie to even, up in magnitude
		{f32(0x4049_0fdb), 0x4049}, // π
	} {
		if got := Float32ToBF16(tc.in); got != tc.want {
			t.Errorf("Float32ToBF16(%g = %#08x) = %#04x, want %#04x", tc.in, math.Float32bits(tc.in), got, tc.want)
		}
	}
}

func TestBF16Exhaustive(t *testing.T) {
	for i := range 1 << 16 {
		h := uint16(i)
		f := BF16ToFloat32(h)
		if math.Float32bits(f) != uint32(h)<<16 {
			t.Fatalf("BF16ToFloat32(%#04x) bits = %#08x", h, math.Float32bits(f))
		}
		back := Float32ToBF16(f)
		if f != f { // NaN
			if back&0x7f80 != 0x7f80 || back&0x7f == 0 || back&0x8000 != h&0x8000 {
				t.Fatalf("NaN %#04x came back as %#04x", h, back)
			}
			continue
		}
		if back != h {
			t.Fatalf("Float32ToBF16(BF16ToFloat32(%#04x)) = %#04x", h, back)
		}
	}
}

// refBF16 rounds f to bf16 by picking the nearer of the two bf16 neighbours,
// compared exactly in float64 (2f against lo+hi), ties to the even one.
func refBF16(f float32) uint16 {
	u := math.Float32bits(f)
	lo := uint16(u >> 16) // truncation: toward zero
	if uint32(lo)<<16 == u {
		return lo
	}
	hi := lo + 1 // away from zero
	val := func(h uint16) float64 {
		if h&0x7fff == 0x7f80 { // Inf stands for 2¹²⁸ when rounding
			return math.Copysign(math.Ldexp(1, 128), float64(BF16ToFloat32(h)))
		}
		return float64(BF16ToFloat32(h))
	}
	twice, sum := 2*math.Abs(float64(f)), math.Abs(val(lo))+math.Abs(val(hi))
	switch {
	case twice < sum:
		return lo
	case twice > sum:
		return hi
	case lo&1 == 0:
		return lo
	}
	return hi
}

func TestFloat32ToBF16Reference(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 1))
	for i := range 1 << 20 {
		var u uint32
		switch i % 3 {
		case 0: // any bit pattern
			u = rng.Uint32()
		case 1: // an exact tie
			u = rng.Uint32()&^0xffff | 0x8000
		default: // next to a tie
			u = rng.Uint32()&^0xffff | 0x8000
			if rng.IntN(2) == 0 {
				u++
			} else {
				u--
			}
		}
		f := math.Float32frombits(u)
		if f != f {
			continue
		}
		if got, want := Float32ToBF16(f), refBF16(f); got != want {
			t.Fatalf("Float32ToBF16(%#08x) = %#04x, reference %#04x", u, got, want)
		}
	}
}

func TestF16Table(t *testing.T) {
	for _, tc := range []struct {
		in   float32
		want uint16
	}{
		{1, 0x3c00},
		{-2.5, 0xc100},
		{0.1, 0x2e66},
		{0.333251953125, 0x3555},
		{65504, 0x7bff}, // the largest finite half
		{65519, 0x7bff}, // below the tie with 65536
		{65520, 0x7c00}, // the tie rounds to the even encoding, which is Inf
		{-65520, 0xfc00},
		{1e6, 0x7c00},
		{math.MaxFloat32, 0x7c00},
		{6e-8, 0x0001}, // nearest is the smallest subnormal 2⁻²⁴ ≈ 5.96e-8
		{float32(math.Ldexp(1, -24)), 0x0001},
		{float32(math.Ldexp(1, -25)), 0x0000},    // tie between 0 and 2⁻²⁴: even is 0
		{f32(0x33000001), 0x0001},                // just above 2⁻²⁵
		{float32(math.Ldexp(3, -25)), 0x0002},    // 1.5 × 2⁻²⁴: tie, even is 2
		{float32(math.Ldexp(1023, -24)), 0x03ff}, // the largest subnormal
		{float32(math.Ldexp(2047, -25)), 0x0400}, // a tie that carries into the smallest normal
		{float32(math.Ldexp(1, -14)), 0x0400},    // the smallest normal
		{1e-9, 0x0000},
		{-1e-9, 0x8000},
		{float32(1 + math.Ldexp(1, -11)), 0x3c00}, // tie, even down
		{float32(1 + math.Ldexp(3, -11)), 0x3c02}, // tie, even up
		{0, 0},
		{float32(math.Copysign(0, -1)), 0x8000},
		{float32(math.Inf(1)), 0x7c00},
		{float32(math.Inf(-1)), 0xfc00},
		{f32(0x7fc00000), 0x7e00},
		{f32(0xff800001), 0xfe00}, // NaN with a low payload stays NaN, keeps its sign
	} {
		if got := Float32ToF16(tc.in); got != tc.want {
			t.Errorf("Float32ToF16(%g) = %#04x, want %#04x", tc.in, got, tc.want)
		}
	}
	for _, tc := range []struct {
		in   uint16
		want float32
	}{
		{0x3c00, 1},
		{0x7bff, 65504},
		{0x0001, float32(math.Ldexp(1, -24))},
		{0x03ff, float32(math.Ldexp(1023, -24))},
		{0x8001, -float32(math.Ldexp(1, -24))},
		{0x0400, float32(math.Ldexp(1, -14))},
		{0xc100, -2.5},
		{0x7c00, float32(math.Inf(1))},
	} {
		if got := F16ToFloat32(tc.in); got != tc.want {
			t.Errorf("F16ToFloat32(%#04x) = %g, want %g", tc.in, got, tc.want)
		}
	}
	if got := F16ToFloat32(0x8000); got != 0 || !math.Signbit(float64(got)) {
		t.Errorf("F16ToFloat32(0x8000) = %g, want -0", got)
	}
}

// halfValue is the value of the binary16 bits h from the definition.
func halfValue(h uint16) float64 {
	sign := 1.0
	if h&0x8000 != 0 {
		sign = -1
	}
	exp, mant := int(h>>10)&0x1f, float64(h&0x3ff)
	switch exp {
	case 0:
		return sign * math.Ldexp(mant, -24)
	case 0x1f:
		if mant == 0 {
			return math.Inf(int(sign))
		}
		return math.NaN()
	}
	return sign * math.Ldexp(1+mant/1024, exp-15)
}

func TestF16Exhaustive(t *testing.T) {
	for i := range 1 << 16 {
		h := uint16(i)
		f := F16ToFloat32(h)
		want := halfValue(h)
		if want != want {
			back := Float32ToF16(f)
			if f == f || back&0x7c00 != 0x7c00 || back&0x3ff == 0 || back&0x8000 != h&0x8000 {
				t.Fatalf("NaN %#04x: F16ToFloat32 = %g, back %#04x", h, f, back)
			}
			continue
		}
		if float64(f) != want || math.Signbit(float64(f)) != (h&0x8000 != 0) {
			t.Fatalf("F16ToFloat32(%#04x) = %g, want %g", h, f, want)
		}
		if back := Float32ToF16(f); back != h {
			t.Fatalf("Float32ToF16(F16ToFloat32(%#04x)) = %#04x", h, back)
		}
	}
}

// refF16 rounds a finite f to binary16 by searching the sorted magnitudes,
// comparing 2|f| with lo+hi exactly in float64, ties to even; 65536 stands
// for Inf.
func refF16(f float32) uint16 {
	val := func(h uint16) float64 {
		if h == 0x7c00 {
			return 65536
		}
		return halfValue(h)
	}
	x := math.Abs(float64(f))
	sign := uint16(0)
	if math.Signbit(float64(f)) {
		sign = 0x8000
	}
	if x >= 65536 {
		return sign | 0x7c00
	}
	// first code with value >= x among 0..0x7c00 (monotonic)
	hi := uint16(0)
	for step := uint16(1 << 14); step > 0; step >>= 1 {
		if c := hi + step; c <= 0x7c00 && val(c-1) < x {
			hi = c
		}
	}
	if val(hi) == x || hi == 0 {
		return sign | hi
	}
	lo := hi - 1
	twice, sum := 2*x, val(lo)+val(hi)
	switch {
	case twice < sum:
		return sign | lo
	case twice > sum:
		return sign | hi
	case lo&1 == 0:
		return sign | lo
	}
	return sign | hi
}

func TestFloat32ToF16Reference(t *testing.T) {
	rng := rand.New(rand.NewPCG(2, 2))
	for i := range 1 << 19 {
		var f float32
		switch i % 3 {
		case 0: // any bit pattern
			f = math.Float32frombits(rng.Uint32())
		case 1: // magnitudes in and around the half range
			f = float32(math.Ldexp(rng.Float64()*2-1, rng.IntN(50)-34))
		default: // exact ties and their neighbours
			h := uint16(rng.IntN(0x7c00))
			mid := float32((val16(h) + val16(h+1)) / 2)
			f = math.Float32frombits(math.Float32bits(mid) + uint32(rng.IntN(3)) - 1)
		}
		if f != f {
			continue
		}
		if got, want := Float32ToF16(f), refF16(f); got != want {
			t.Fatalf("Float32ToF16(%g = %#08x) = %#04x, reference %#04x", f, math.Float32bits(f), got, want)
		}
	}
}

func val16(h uint16) float64 {
	if h == 0x7c00 {
		return 65536
	}
	return halfValue(h)
}

func TestEncodeDecodeFloat32(t *testing.T) {
	vals := []float32{1, -2.5, 1.00390625, 65504, 6e-8, float32(math.Inf(-1))}
	for _, tc := range []struct {
		dt   DType
		want []float32
	}{
		{F32, vals},
		{BF16, []float32{1, -2.5, 1, 65536, BF16ToFloat32(Float32ToBF16(6e-8)), float32(math.Inf(-1))}},
		{F16, []float32{1, -2.5, 1.00390625, 65504, float32(math.Ldexp(1, -24)), float32(math.Inf(-1))}},
	} {
		b, err := EncodeFloat32(vals, tc.dt)
		if err != nil {
			t.Fatalf("EncodeFloat32(%s): %v", tc.dt, err)
		}
		if len(b) != len(vals)*tc.dt.Size() {
			t.Fatalf("EncodeFloat32(%s): %d bytes, want %d", tc.dt, len(b), len(vals)*tc.dt.Size())
		}
		got, err := DecodeFloat32(b, tc.dt)
		if err != nil {
			t.Fatalf("DecodeFloat32(%s): %v", tc.dt, err)
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("%s round trip = %v, want %v", tc.dt, got, tc.want)
		}
	}
	// Little-endian byte order.
	b, _ := EncodeFloat32([]float32{1.00390625}, BF16)
	if binary.LittleEndian.Uint16(b) != 0x3f80 || b[0] != 0x80 {
		t.Errorf("bf16 bytes of 1.00390625 = % x, want 80 3f", b)
	}
	if _, err := EncodeFloat32(vals, I8); err == nil {
		t.Error("EncodeFloat32(I8): no error")
	}
	if _, err := DecodeFloat32(make([]byte, 4), U8); err == nil {
		t.Error("DecodeFloat32(U8): no error")
	}
	if _, err := DecodeFloat32(make([]byte, 3), F16); err == nil {
		t.Error("DecodeFloat32 of 3 bytes as F16: no error")
	}
}

func BenchmarkFloat32ToBF16(b *testing.B) {
	vals := make([]float32, 1<<20)
	rng := rand.New(rand.NewPCG(1, 1))
	for i := range vals {
		vals[i] = float32(rng.NormFloat64())
	}
	b.SetBytes(int64(4 * len(vals)))
	for b.Loop() {
		if _, err := EncodeFloat32(vals, BF16); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodeBF16(b *testing.B) {
	raw := make([]byte, 2<<20)
	b.SetBytes(int64(len(raw)))
	for b.Loop() {
		if _, err := DecodeFloat32(raw, BF16); err != nil {
			b.Fatal(err)
		}
	}
}

// TestWriteFloat32MatchesEncode checks the chunked writer against
// EncodeFloat32 across a chunk boundary, in every float dtype.
func TestWriteFloat32MatchesEncode(t *testing.T) {
	vals := make([]float32, 40000) // more than two 16Ki-element chunks
	for i := range vals {
		vals[i] = float32(i%977)*0.37 - 100
	}
	for _, dt := range []DType{F32, F16, BF16} {
		want, err := EncodeFloat32(vals, dt)
		if err != nil {
			t.Fatal(err)
		}
		var got bytes.Buffer
		if err := WriteFloat32(&got, vals, dt); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got.Bytes(), want) {
			t.Errorf("%s: WriteFloat32 wrote %d bytes that differ from EncodeFloat32's %d", dt, got.Len(), len(want))
		}
	}
	if err := WriteFloat32(io.Discard, vals, I32); err == nil {
		t.Error("WriteFloat32 as I32: no error")
	}
}
