package model

import (
	"math"
	"testing"
)

func TestExp32(t *testing.T) {
	const tol = 3e-7
	for x := float32(-87); x <= 0; x += 0.001 {
		got, want := float64(exp32(x)), math.Exp(float64(x))
		if e := math.Abs(got-want) / want; e > tol {
			t.Fatalf("exp32(%v) = %v, want %v (relative error %.3g)", x, got, want, e)
		}
	}
	if exp32(-100) != 0 || exp32(0) != 1 {
		t.Errorf("exp32(-100) = %v, exp32(0) = %v", exp32(-100), exp32(0))
	}
}
