package model

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/rankzip/rankzip/kernels"
)

func TestQuantizedMatchesDense(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, tc := range []struct{ out, in, bits, group int }{{100, 64, 4, 32}, {172, 64, 3, 64}, {64, 172, 8, 172}, {7, 5, 2, 5}} {
		groups := tc.in / tc.group
		q := make([]uint8, tc.out*tc.in)
		for i := range q {
			q[i] = uint8(rng.IntN(1 << tc.bits))
		}
		scales := make([]float32, groups*tc.out)
		zeros := make([]int32, groups*tc.out)
		for i := range scales {
			scales[i] = 0.01 + rng.Float32()
			zeros[i] = int32(1 + rng.IntN(1<<tc.bits-1))
		}
		gidx := make([]int32, tc.in)
		for k := range gidx {
			gidx[k] = int32(k / tc.group)
		}
		// A permuted g_idx (act-order checkpoints) must work too.
		rng.Shuffle(len(gidx), func(i, j int) { gidx[i], gidx[j] = gidx[j], gidx[i] })
		bias := make([]float32, tc.out)
		for i := range bias {
			bias[i] = rng.Float32()
		}
		l, err := NewQuantized(tc.out, tc.in, tc.bits, q, scales, zeros, gidx, bias)
		if err != nil {
			t.Fatal(err)
		}
		w := make([]float32, tc.out*tc.in)
		for n := range tc.out {
			for k := range tc.in {
				g := int(gidx[k])
				w[n*tc.in+k] = scales[g*tc.out+n] * float32(int(q[n*tc.in+k])-int(zeros[g*tc.out+n]))
			}
		}
		d := NewDense(tc.out, tc.in, w, bias)
		const rows = 9
		x := make([]float32, rows*tc.in)
		for i := range x {
			x[i] = float32(rng.NormFloat64())
		}
		for _, k := range kernels.Available() {
			got, want := make([]float32, rows*tc.out), make([]float32, rows*tc.out)
			l.Apply(k, got, x, rows)
			d.Apply(k, want, x, rows)
			for i := range got {
				if math.Abs(float64(got[i]-want[i])) > 1e-4*(1+math.Abs(float64(want[i]))) {
					t.Fatalf("%s %+v: y[%d] = %v, dense gives %v", k.Name(), tc, i, got[i], want[i])
				}
			}
		}
	}
}

func TestNewQuantizedRejects(t *testing.T) {
	ok := func() ([]uint8, []float32, []int32, []int32) {
		return make([]uint8, 4*2), []float32{1, 1, 1, 1}, []int32{1, 1, 1, 1}, []int32{0, 0}
	}
	q, s, z, g := ok()
	if _, err := NewQuantized(4, 2, 5, q, s, z, g, nil); err == nil {
		t.Error("5 bits accepted")
	}
	q, s, z, g = ok()
	g[1] = 3
	if _, err := NewQuantized(4, 2, 4, q, s, z, g, nil); err == nil {
		t.Error("g_idx out of range accepted")
	}
	q, s, z, g = ok()
	q[3] = 16
	if _, err := NewQuantized(4, 2, 4, q, s, z, g, nil); err == nil {
		t.Error("code 16 at 4 bits accepted")
	}
}
