package quant

import (
	"errors"
	"fmt"
	"math"
	"testing"

	"gonum.org/v1/gonum/mat"

	"github.com/rankzip/rankzip/methods/internal/mattest"
)

const (
	// tolHalfStep is the relative slack on |w − ŵ| ≤ s/2 (w/s is rounded).
	tolHalfStep = 1e-12
	// tolCalib bounds the relative gap between CalibError and the plain
	// gonum evaluation of the same trace.
	tolCalib = 1e-9
)

func TestConfigValidate(t *testing.T) {
	good := []Config{
		{Bits: 2}, {Bits: 3, GroupSize: 32}, {Bits: 4, GroupSize: 64, Sym: true}, {Bits: 8, GroupSize: 128, ActOrder: true},
		{Bits: 4, GroupSize: -1, Damp: 1}, {Bits: 4, Damp: 0.05},
	}
	for _, c := range good {
		if err := c.Validate(); err != nil {
			t.Errorf("%+v: %v", c, err)
		}
	}
	bad := []Config{
		{Bits: 0}, {Bits: 1}, {Bits: 5}, {Bits: 16}, {Bits: 4, GroupSize: 16}, {Bits: 4, GroupSize: 100},
		{Bits: 4, GroupSize: -2}, {Bits: 4, GroupSize: 256}, {Bits: 4, Damp: -0.01}, {Bits: 4, Damp: 2},
		{Bits: 4, Damp: math.NaN()},
	}
	for _, c := range bad {
		if err := c.Validate(); !errors.Is(err, ErrConfig) {
			t.Errorf("%+v: err %v, want ErrConfig", c, err)
		}
	}
	if _, _, err := (Config{Bits: 4, GroupSize: 32}).Groups(172); !errors.Is(err, ErrConfig) {
		t.Errorf("group 32 of 172 inputs: err %v, want ErrConfig", err)
	}
	if g, s, err := (Config{Bits: 4}).Groups(172); err != nil || g != 1 || s != 172 {
		t.Errorf("per channel, 172 inputs: %d groups of %d, %v", g, s, err)
	}
	if g, s, err := (Config{Bits: 4, GroupSize: 64}).Groups(256); err != nil || g != 4 || s != 64 {
		t.Errorf("group 64 of 256 inputs: %d groups of %d, %v", g, s, err)
	}
	w := mat.NewDense(2, 48, nil)
	if _, err := RTN(w, Config{Bits: 4, GroupSize: 32}); !errors.Is(err, ErrConfig) {
		t.Errorf("RTN, group not dividing in: err %v", err)
	}
	if _, err := RTN(w, Config{Bits: 6}); !errors.Is(err, ErrConfig) {
		t.Errorf("RTN, 6 bits: err %v", err)
	}
	w.Set(1, 3, math.Inf(1))
	if _, err := RTN(w, Config{Bits: 4}); !errors.Is(err, ErrNonFinite) {
		t.Errorf("RTN, Inf weight: err %v", err)
	}
	w.Set(1, 3, 1e9)
	if _, err := RTN(w, Config{Bits: 4}); !errors.Is(err, ErrScaleRange) {
		t.Errorf("RTN, weight 1e9: err %v", err)
	}
}

func TestHalfCeil(t *testing.T) {
	cases := []struct{ x, want float64 }{
		{1, 1},
		{0.5, 0.5},
		{1 + 0x1p-11, 1 + 0x1p-10},
		{0.2, 1639 * 0x1p-13},      // 0.2 ∈ [2⁻³, 2⁻²): spacing 2⁻¹³
		{1e-9, 0x1p-24},            // below the smallest subnormal
		{3 * 0x1p-24, 3 * 0x1p-24}, // subnormal, exact
		{3.5 * 0x1p-24, 4 * 0x1p-24},
		{65504, 65504},
		{40000.5, 40032}, // spacing 32 above 2¹⁵
	}
	for _, c := range cases {
		got, err := halfCeil(c.x)
		if err != nil || got != c.want {
			t.Errorf("halfCeil(%v) = %v, %v; want %v", c.x, got, err, c.want)
		}
	}
	if _, err := halfCeil(65505); !errors.Is(err, ErrScaleRange) {
		t.Errorf("halfCeil(65505): err %v", err)
	}
}

// Hand-computed rows, one group per channel, chosen so that every scale is
// a float16 value.
func TestRTNKnownAnswer(t *testing.T) {
	cases := []struct {
		name  string
		bits  int
		sym   bool
		row   []float64
		scale float64
		zero  int32
		codes []uint8
		deq   []float64
	}{
		{
			// lo = −1.5, hi = 6: s = 7.5/15 = 0.5, z = round(3) = 3.
			// 0.3/0.5 = 0.6 → 1; 0.25/0.5 = 0.5 → 0 (half to even).
			name: "asym 4-bit", bits: 4, row: []float64{-1.5, 0, 1, 6, 0.3, 0.25},
			scale: 0.5, zero: 3,
			codes: []uint8{0, 3, 5, 15, 4, 3},
			deq:   []float64{-1.5, 0, 1, 6, 0.5, 0},
		},
		{
			// max |w| = 3.75: s = 7.5/15 = 0.5, z = 8. −7.5 → −8 (even);
			// 7.5 → 8 → 16, clamped to 15: the top loses s/2.
			name: "sym 4-bit", bits: 4, sym: true, row: []float64{-3.75, 1, 0.3, 3.75},
			scale: 0.5, zero: 8,
			codes: []uint8{0, 10, 9, 15},
			deq:   []float64{-4, 1, 0.5, 3.5},
		},
		{
			// lo = 0, hi = 14: s = 14/15 would give z = 0, which GPTQ v1
			// cannot store; z = 1 and s = 14/14 = 1 instead.
			name: "asym 4-bit, non-negative row", bits: 4, row: []float64{0, 1, 2.4, 14},
			scale: 1, zero: 1,
			codes: []uint8{1, 2, 3, 15},
			deq:   []float64{0, 1, 2, 14},
		},
		{
			// lo = −2, hi = 1: s = 3/3 = 1, z = 2.
			name: "asym 2-bit", bits: 2, row: []float64{-2, -0.6, 0.4, 1},
			scale: 1, zero: 2,
			codes: []uint8{0, 1, 2, 3},
			deq:   []float64{-2, -1, 0, 1},
		},
		{
			// max |w| = 1.75: s = 3.5/7 = 0.5, z = 4.
			name: "sym 3-bit", bits: 3, sym: true, row: []float64{-1.75, -1, 0.2, 1.75},
			scale: 0.5, zero: 4,
			codes: []uint8{0, 2, 4, 7},
			deq:   []float64{-2, -1, 0, 1.5},
		},
		{
			// max |w| = 127.5: s = 255/255 = 1, z = 128.
			name: "sym 8-bit", bits: 8, sym: true, row: []float64{-127.5, -3.2, 0, 100.7, 127.5},
			scale: 1, zero: 128,
			codes: []uint8{0, 125, 128, 229, 255},
			deq:   []float64{-128, -3, 0, 101, 127},
		},
	}
	for _, c := range cases {
		w := mat.NewDense(1, len(c.row), c.row)
		r, err := RTN(w, Config{Bits: c.bits, Sym: c.sym})
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if r.Scales.At(0, 0) != c.scale || r.Zeros[0] != c.zero {
			t.Errorf("%s: scale %v zero %d, want %v %d", c.name, r.Scales.At(0, 0), r.Zeros[0], c.scale, c.zero)
		}
		for j := range c.row {
			if r.Q[j] != c.codes[j] || r.Dequant.At(0, j) != c.deq[j] {
				t.Errorf("%s: codes %v deq %v, want %v %v", c.name, r.Q, r.Dequant.RawRowView(0), c.codes, c.deq)
				break
			}
		}
		checkResult(t, c.name, r, w)
	}
}

func TestRTNProperties(t *testing.T) {
	const out, in = 24, 256
	rng := newRNG(1)
	w := mattest.RandDense(rng, out, in)
	// A zero row, a non-negative group and a large row exercise the edge
	// cases of the quantizer.
	for j := range in {
		w.Set(0, j, 0)
		w.Set(1, j, 100*w.At(1, j))
		if j < 64 {
			w.Set(2, j, math.Abs(w.At(2, j)))
		}
	}
	errs := map[int]float64{}
	for _, bits := range []int{2, 3, 4, 8} {
		for _, gs := range []int{0, 32, 64, 128} {
			for _, sym := range []bool{false, true} {
				cfg := Config{Bits: bits, GroupSize: gs, Sym: sym}
				name := fmt.Sprintf("%+v", cfg)
				r, err := RTN(w, cfg)
				if err != nil {
					t.Fatalf("%s: %v", name, err)
				}
				checkResult(t, name, r, w)
				for j := range in {
					if r.Dequant.At(0, j) != 0 {
						t.Fatalf("%s: zero row quantized to %v", name, r.Dequant.At(0, j))
					}
				}
				if gs == 128 && !sym {
					errs[bits] = frob2(w, r.Dequant)
				}
			}
		}
	}
	// Each extra bit halves the step: the squared error drops about
	// fourfold per bit, 4⁴ = 256 from 4 to 8 bits.
	for _, pair := range [][2]int{{2, 3}, {3, 4}} {
		if errs[pair[1]] > errs[pair[0]]/2 {
			t.Errorf("RTN ‖W − Ŵ‖²: %d bits %.3g, %d bits %.3g", pair[0], errs[pair[0]], pair[1], errs[pair[1]])
		}
	}
	if errs[8] > errs[4]/100 {
		t.Errorf("RTN ‖W − Ŵ‖²: 4 bits %.3g, 8 bits %.3g: want a ratio ≥ 100", errs[4], errs[8])
	}
	t.Logf("RTN g128 asym ‖W − Ŵ‖²: 2 bits %.4g, 3 bits %.4g, 4 bits %.4g, 8 bits %.4g", errs[2], errs[3], errs[4], errs[8])
}
