package gptq

import (
	"errors"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/rankzip/rankzip/model/safetensors"
)

func newRNG() *rand.Rand { return rand.New(rand.NewPCG(1, 1)) }

// randomLayer returns a valid layer with random codes, zero points, scales
// and group indices, the extreme codes and zero points included.
func randomLayer(rng *rand.Rand, bits, out, in, groups int) *Layer {
	maxq := 1<<bits - 1
	l := &Layer{
		Bits: bits, Out: out, In: in,
		Q:      make([]uint8, out*in),
		Scales: make([]float32, groups*out),
		Zeros:  make([]int32, groups*out),
		GIdx:   make([]int32, in),
	}
	for i := range l.Q {
		l.Q[i] = uint8(rng.IntN(maxq + 1))
	}
	l.Q[0], l.Q[1], l.Q[len(l.Q)-1] = 0, uint8(maxq), uint8(maxq)
	for i := range l.Zeros {
		l.Zeros[i] = int32(1 + rng.IntN(maxq+1))
		// float16 values: a 10-bit significand times a power of two.
		l.Scales[i] = float32(1024+rng.IntN(1024)) / float32(int(1)<<(18+rng.IntN(6)))
	}
	l.Zeros[0], l.Zeros[1], l.Zeros[len(l.Zeros)-1] = 1, int32(maxq+1), int32(maxq+1)
	for k := range l.GIdx {
		l.GIdx[k] = int32(rng.IntN(groups))
	}
	return l
}

func TestRoundTrip(t *testing.T) {
	rng := newRNG()
	for _, bits := range []int{2, 3, 4, 8} {
		for _, sh := range []struct{ out, in, groups int }{{32, 32, 1}, {64, 96, 3}, {96, 256, 8}} {
			l := randomLayer(rng, bits, sh.out, sh.in, sh.groups)
			p, err := Pack(l)
			if err != nil {
				t.Fatalf("%d bits %v: %v", bits, sh, err)
			}
			if len(p.QWeight) != sh.in*bits/32*sh.out || len(p.QZeros) != sh.groups*sh.out*bits/32 {
				t.Fatalf("%d bits %v: %d qweight and %d qzeros words", bits, sh, len(p.QWeight), len(p.QZeros))
			}
			if ref := autoGPTQPack(l); !slices.Equal(p.QWeight, ref.QWeight) || !slices.Equal(p.QZeros, ref.QZeros) {
				t.Errorf("%d bits %v: packed words differ from AutoGPTQ's packer", bits, sh)
			}
			back, err := Unpack(p)
			if err != nil {
				t.Fatalf("%d bits %v: %v", bits, sh, err)
			}
			if !slices.Equal(back.Q, l.Q) || !slices.Equal(back.Zeros, l.Zeros) || !slices.Equal(back.Scales, l.Scales) || !slices.Equal(back.GIdx, l.GIdx) {
				t.Errorf("%d bits %v: round trip changed the layer", bits, sh)
			}
			if !slices.Equal(back.Dequantize(), l.Dequantize()) {
				t.Errorf("%d bits %v: dequantized weights differ", bits, sh)
			}
		}
	}
}

// autoGPTQPack transcribes AutoGPTQ's qlinear_cuda_old.pack (numpy, uint32)
// loop by loop: an independent oracle for the packed words.
func autoGPTQPack(l *Layer) *Packed {
	bits, out, in, groups := l.Bits, l.Out, l.In, l.Groups()
	// intweight is [in, out]; zeros − 1 as uint32 is [groups, out].
	intweight := func(k, n int) uint32 { return uint32(l.Q[n*in+k]) }
	qweight := make([]uint32, in/32*bits*out)
	for n := range out {
		packAutoGPTQ(bits, in/32*bits, func(r int, v uint32) { qweight[r*out+n] |= v }, func(k int) uint32 { return intweight(k, n) })
	}
	cols := out / 32 * bits
	qzeros := make([]uint32, groups*cols)
	for g := range groups {
		packAutoGPTQ(bits, cols, func(c int, v uint32) { qzeros[g*cols+c] |= v }, func(n int) uint32 { return uint32(l.Zeros[g*out+n] - 1) })
	}
	cast := func(u []uint32) []int32 {
		s := make([]int32, len(u))
		for i, v := range u {
			s[i] = int32(v)
		}
		return s
	}
	return &Packed{QWeight: cast(qweight), QZeros: cast(qzeros)}
}

// packAutoGPTQ is the body of AutoGPTQ's `while row < qweight.shape[0]` loop;
// or(row, v) does qweight[row] |= v and val(i) reads intweight[i].
func packAutoGPTQ(bits, rows int, or func(row int, v uint32), val func(i int) uint32) {
	i, row := 0, 0
	for row < rows {
		switch bits {
		case 2, 4, 8:
			for j := i; j < i+32/bits; j++ {
				or(row, val(j)<<(bits*(j-i)))
			}
			i += 32 / bits
			row++
		case 3:
			for j := i; j < i+10; j++ {
				or(row, val(j)<<(3*(j-i)))
			}
			i += 10
			or(row, val(i)<<30)
			row++
			or(row, (val(i)>>2)&1)
			i++
			for j := i; j < i+10; j++ {
				or(row, val(j)<<(3*(j-i)+1))
			}
			i += 10
			or(row, val(i)<<31)
			row++
			or(row, (val(i)>>1)&0x3)
			i++
			for j := i; j < i+10; j++ {
				or(row, val(j)<<(3*(j-i)+2))
			}
			i += 10
			row++
		}
	}
}

// sym4Layer returns a 4-bit 32×32 layer, one group, zero point 8, whose
// first output channel has the codes col0 along the input.
func sym4Layer(bits int, col0 []uint8) *Layer {
	l := &Layer{Bits: bits, Out: 32, In: 32, Q: make([]uint8, 32*32), Scales: make([]float32, 32), Zeros: make([]int32, 32), GIdx: make([]int32, 32)}
	copy(l.Q, col0)
	for n := range 32 {
		l.Scales[n] = 0.5
		l.Zeros[n] = 1 << (bits - 1)
	}
	return l
}

// Words written out by hand for 4 bits: eight nibbles a word, value j of the
// word at bits 4j.
func TestPackKnownWords4(t *testing.T) {
	codes := make([]uint8, 32)
	for k := range 16 {
		codes[k] = uint8(k)         // 0, 1, …, 15
		codes[16+k] = uint8(15 - k) // 15, 14, …, 0
	}
	p, err := Pack(sym4Layer(4, codes))
	if err != nil {
		t.Fatal(err)
	}
	want := []uint32{0x76543210, 0xfedcba98, 0x89abcdef, 0x01234567}
	for r, w := range want {
		if got := uint32(p.QWeight[r*32]); got != w {
			t.Errorf("qweight[%d][0] = %#08x, want %#08x", r, got, w)
		}
		if got := p.QWeight[r*32+1]; got != 0 {
			t.Errorf("qweight[%d][1] = %#08x, want 0", r, got)
		}
	}
	// Zero point 8, stored as 7 in every nibble.
	for c, w := range p.QZeros {
		if uint32(w) != 0x77777777 {
			t.Errorf("qzeros[0][%d] = %#08x, want 0x77777777", c, uint32(w))
		}
	}
	if p.Scales[0] != 0x3800 { // 0.5 in float16
		t.Errorf("scale = %#04x, want 0x3800", p.Scales[0])
	}
}

// Words written out by hand for 3 bits: 32 values in 3 words, values 10 and
// 21 straddling word boundaries.
func TestPackKnownWords3(t *testing.T) {
	codes := make([]uint8, 32)
	codes[0], codes[9], codes[10], codes[11] = 7, 1, 5, 3
	codes[20], codes[21], codes[22], codes[31] = 7, 7, 1, 5
	p, err := Pack(sym4Layer(3, codes))
	if err != nil {
		t.Fatal(err)
	}
	want := []uint32{
		// 7 at bits 0–2, 1 at bit 27, bits 0–1 of 5 (01) at bits 30–31.
		0x48000007,
		// bit 2 of 5 at bit 0, 3 at bits 1–2, 7 at bits 28–30, bit 0 of 7 at bit 31.
		0xf0000007,
		// bits 1–2 of 7 at bits 0–1, 1 at bit 2, 5 at bits 29–31.
		0xa0000007,
	}
	for r, w := range want {
		if got := uint32(p.QWeight[r*32]); got != w {
			t.Errorf("qweight[%d][0] = %#08x, want %#08x", r, got, w)
		}
	}
	// Zero point 4, stored as 3 = 011 in every 3-bit field: the 96-bit
	// stream 011 011 … read low bits first.
	wantZ := []uint32{0xdb6db6db, 0xb6db6db6, 0x6db6db6d}
	for c, w := range wantZ {
		if got := uint32(p.QZeros[c]); got != w {
			t.Errorf("qzeros[0][%d] = %#08x, want %#08x", c, got, w)
		}
	}
	back, err := Unpack(p)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(back.Q[:32], codes) {
		t.Errorf("unpacked %v, want %v", back.Q[:32], codes)
	}
}

// The v1 file stores zero − 1: zero 1 is stored as 0, zero 2^bits as
// 2^bits − 1 (all ones), and a zero of 0 is refused.
func TestZeroMinusOne(t *testing.T) {
	for _, bits := range []int{2, 3, 4, 8} {
		l := sym4Layer(bits, nil)
		for n := range l.Zeros {
			l.Zeros[n] = 1
		}
		p, err := Pack(l)
		if err != nil {
			t.Fatal(err)
		}
		if slices.ContainsFunc(p.QZeros, func(w int32) bool { return w != 0 }) {
			t.Errorf("%d bits, zero 1: qzeros %x, want all 0", bits, p.QZeros)
		}
		for n := range l.Zeros {
			l.Zeros[n] = 1 << bits
		}
		if p, err = Pack(l); err != nil {
			t.Fatal(err)
		}
		if slices.ContainsFunc(p.QZeros, func(w int32) bool { return w != -1 }) {
			t.Errorf("%d bits, zero 2^bits: qzeros %x, want all −1", bits, p.QZeros)
		}
		back, err := Unpack(p)
		if err != nil || back.Zeros[5] != 1<<bits {
			t.Errorf("%d bits: zero 2^bits read back as %d, %v", bits, back.Zeros[5], err)
		}
		l.Zeros[3] = 0
		if _, err := Pack(l); !errors.Is(err, ErrLayer) || !strings.Contains(err.Error(), "zero − 1") {
			t.Errorf("%d bits, zero 0: err %v", bits, err)
		}
	}
}

func TestBadLayer(t *testing.T) {
	rng := newRNG()
	cases := []struct {
		name string
		edit func(l *Layer)
	}{
		{"in not a multiple of 32", func(l *Layer) { l.In, l.Q, l.GIdx = 48, l.Q[:64*48], l.GIdx[:48] }},
		{"out not a multiple of 32", func(l *Layer) { l.Out = 40 }},
		{"5 bits", func(l *Layer) { l.Bits = 5 }},
		{"code past 2^bits", func(l *Layer) { l.Q[7] = 16 }},
		{"short codes", func(l *Layer) { l.Q = l.Q[1:] }},
		{"zero past 2^bits", func(l *Layer) { l.Zeros[2] = 17 }},
		{"g_idx out of range", func(l *Layer) { l.GIdx[3] = 2 }},
		{"negative g_idx", func(l *Layer) { l.GIdx[3] = -1 }},
		{"short zeros", func(l *Layer) { l.Zeros = l.Zeros[1:] }},
		{"scale overflows float16", func(l *Layer) { l.Scales[0] = 1e6 }},
	}
	for _, c := range cases {
		l := randomLayer(rng, 4, 64, 64, 2)
		c.edit(l)
		if _, err := Pack(l); !errors.Is(err, ErrLayer) {
			t.Errorf("%s: err %v, want ErrLayer", c.name, err)
		} else {
			t.Logf("%s: %v", c.name, err)
		}
	}
	p, _ := Pack(randomLayer(rng, 4, 64, 64, 2))
	p.QZeros = p.QZeros[1:]
	if _, err := Unpack(p); !errors.Is(err, ErrLayer) {
		t.Errorf("short qzeros: err %v", err)
	}
}

func TestWriteAndRead(t *testing.T) {
	rng := newRNG()
	dir := t.TempDir()
	path := filepath.Join(dir, "model.safetensors")
	layers := map[string]*Layer{
		"model.layers.0.mlp.down_proj": randomLayer(rng, 3, 64, 96, 3),
		"model.layers.0.mlp.up_proj":   randomLayer(rng, 4, 96, 64, 1),
	}
	var tensors []safetensors.WriteTensor
	for name, l := range layers {
		p, err := Pack(l)
		if err != nil {
			t.Fatal(err)
		}
		ts := p.Tensors(name)
		if name == "model.layers.0.mlp.up_proj" {
			ts = ts[:3] // no g_idx: one group, inferred
		}
		tensors = append(tensors, ts...)
	}
	tensors = append(tensors, safetensors.WriteTensor{Name: "odd.qweight", DType: safetensors.F32, Shape: []int{1}, Data: make([]byte, 4)})
	if err := safetensors.WriteFile(path, tensors, map[string]string{"format": "pt"}); err != nil {
		t.Fatal(err)
	}
	f, err := safetensors.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for name, l := range layers {
		p, err := Read(f, name, l.Bits)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		back, err := Unpack(p)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(back.Dequantize(), l.Dequantize()) || !slices.Equal(back.Q, l.Q) {
			t.Errorf("%s: read back a different layer", name)
		}
	}
	for _, c := range []struct {
		name, prefix string
		bits         int
	}{
		{"missing", "model.layers.1.mlp.up_proj", 4},
		{"wrong dtype", "odd", 4},
		{"wrong bits", "model.layers.0.mlp.up_proj", 8},
		{"unsupported bits", "model.layers.0.mlp.up_proj", 6},
	} {
		if _, err := Read(f, c.prefix, c.bits); err == nil {
			t.Errorf("%s: no error", c.name)
		} else {
			t.Logf("%s: %v", c.name, err)
		}
	}
}

func TestQuantizeConfigJSON(t *testing.T) {
	b, err := QuantizeConfigJSON(4, 128, false, true)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"bits":4,"group_size":128,"desc_act":false,"sym":true,"lm_head":false,"quant_method":"gptq","checkpoint_format":"gptq","pack_dtype":"int32"}`
	if string(b) != want {
		t.Errorf("got  %s\nwant %s", b, want)
	}
	c, err := NewQuantizeConfig(3, 0, true, false)
	if err != nil || c.GroupSize != -1 || !c.DescAct || c.Sym {
		t.Errorf("per channel: %+v, %v", c, err)
	}
	for _, bad := range []struct{ bits, group int }{{5, 128}, {4, -2}, {16, -1}} {
		if _, err := QuantizeConfigJSON(bad.bits, bad.group, false, true); err == nil {
			t.Errorf("bits %d group %d: no error", bad.bits, bad.group)
		}
	}
	if err := (QuantizeConfig{Bits: 4, GroupSize: 128, QuantMethod: "gptq", CheckpointFormat: "gptq_v2"}).Validate(); err == nil {
		t.Errorf("gptq_v2 accepted")
	}
}
