package quant

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"testing"

	"gonum.org/v1/gonum/mat"

	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/methods/internal/mattest"
)

// tolNotWorse is the slack allowed when GPTQ's error must not exceed RTN's.
const tolNotWorse = 1e-12

// tolInverse bounds ‖Uᵀ U H − I‖_max for a well-conditioned H.
const tolInverse = 1e-10

func TestUpperInverseCholesky(t *testing.T) {
	for _, k := range backends() {
		for _, n := range []int{1, 5, 64, 65, 150, 300} {
			rng := newRNG(uint64(n))
			_, c := activations(rng, 2*n, n)
			perm := rng.Perm(n)
			dead := make([]bool, n)
			const scale, delta = 0.5, 0.1
			u, err := upperInverseCholesky(k, c, scale, perm, dead, delta)
			if err != nil {
				t.Fatalf("%s n=%d: %v", k.Name(), n, err)
			}
			h := mat.NewDense(n, n, nil)
			for a := range n {
				for b := range n {
					v := scale * c.At(perm[a], perm[b])
					if a == b {
						v += delta
					}
					h.Set(a, b, v)
				}
			}
			var utu, prod mat.Dense
			utu.Mul(u.T(), u)
			prod.Mul(&utu, h)
			var worst float64
			for a := range n {
				for b := range n {
					if a > b && u.At(a, b) != 0 {
						t.Fatalf("%s n=%d: U[%d][%d] = %v below the diagonal", k.Name(), n, a, b, u.At(a, b))
					}
					want := 0.0
					if a == b {
						want = 1
					}
					worst = math.Max(worst, math.Abs(prod.At(a, b)-want))
				}
			}
			if worst > tolInverse {
				t.Errorf("%s n=%d: ‖Uᵀ U H − I‖_max = %.3g", k.Name(), n, worst)
			}
		}
	}
}

// GPTQ never does worse than RTN on the calibration objective, for every bit
// width, grouping, symmetry and act-order, with static groups; with dynamic
// groups from 3 bits up. The geometric mean and the worst of the ratio
// GPTQ/RTN are logged per bit width and grouping mode (go test -v).
func TestGPTQNotWorseThanRTN(t *testing.T) {
	const out, in, tokens = 32, 256, 512
	type stat struct {
		logSum, worst float64
		n             int
	}
	for _, k := range []kernels.Backend{kernels.Default()} { // TestGPTQBackendsAgree covers the others
		stats := map[string]*stat{}
		for seed := uint64(1); seed <= 2; seed++ {
			rng := newRNG(seed)
			w := mattest.RandDense(rng, out, in)
			_, c := activations(rng, tokens, in)
			for _, bits := range []int{2, 3, 4, 8} {
				for _, gs := range []int{0, 32, 128} {
					for _, sym := range []bool{false, true} {
						for _, mode := range []string{"static", "act-order", "dynamic"} {
							cfg := Config{Bits: bits, GroupSize: gs, Sym: sym, ActOrder: mode == "act-order", DynamicGroups: mode == "dynamic"}
							if mode == "dynamic" && gs == 0 {
								continue // one group per channel is static anyway
							}
							name := fmt.Sprintf("%s seed %d %+v", k.Name(), seed, cfg)
							r, err := GPTQ(k, w, c, tokens, cfg)
							if err != nil {
								t.Fatalf("%s: %v", name, err)
							}
							checkResult(t, name, r, nil)
							rtn, err := RTN(w, cfg)
							if err != nil {
								t.Fatal(err)
							}
							re := CalibError(k, w, rtn.Dequant, c)
							if r.CalibError > re*(1+tolNotWorse) && (mode != "dynamic" || bits > 2) {
								t.Errorf("%s: GPTQ error %.6g > RTN %.6g", name, r.CalibError, re)
							}
							if seed == 1 {
								checkCalib(t, name, r, w, c)
							}
							if r.Damp != DefaultDamp || r.Dead != 0 {
								t.Errorf("%s: damp %v dead %d", name, r.Damp, r.Dead)
							}
							if mode != "dynamic" && (!mat.Equal(r.Scales, rtn.Scales) || !slices.Equal(r.Zeros, rtn.Zeros)) {
								t.Errorf("%s: static group parameters differ from RTN's", name)
							}
							key := fmt.Sprintf("%d bits, %s", bits, mode)
							st := stats[key]
							if st == nil {
								st = &stat{}
								stats[key] = st
							}
							q := r.CalibError / re
							st.logSum += math.Log(q)
							st.worst = math.Max(st.worst, q)
							st.n++
						}
					}
				}
			}
		}
		for _, bits := range []int{2, 3, 4, 8} {
			for _, mode := range []string{"static", "act-order", "dynamic"} {
				st := stats[fmt.Sprintf("%d bits, %s", bits, mode)]
				t.Logf("%s: GPTQ/RTN calibration error, %d bits, %-9s groups: geometric mean %.3f, worst %.3f (%d cases)",
					k.Name(), bits, mode, math.Exp(st.logSum/float64(st.n)), st.worst, st.n)
			}
		}
	}
}

// Every backend gives the same quantization, up to codes that rounding
// flips.
func TestGPTQBackendsAgree(t *testing.T) {
	const out, in, tokens = 32, 256, 512
	rng := newRNG(11)
	w := mattest.RandDense(rng, out, in)
	_, c := activations(rng, tokens, in)
	for _, cfg := range []Config{{Bits: 4, GroupSize: 128}, {Bits: 3, GroupSize: 32, ActOrder: true}, {Bits: 2, Sym: true}} {
		var ref Result
		for i, k := range backends() {
			r, err := GPTQ(k, w, c, tokens, cfg)
			if err != nil {
				t.Fatal(err)
			}
			if i == 0 {
				ref = r
				continue
			}
			diff := 0
			for j := range r.Q {
				if r.Q[j] != ref.Q[j] {
					diff++
				}
			}
			if diff > len(r.Q)/1000 || relErr(r.CalibError, ref.CalibError) > 1e-3 {
				t.Errorf("%+v: %s and %s differ in %d codes, errors %.9g and %.9g", cfg, k.Name(), backends()[0].Name(), diff, r.CalibError, ref.CalibError)
			}
		}
	}
}

// With act-order the groups are static: GIdx is j / GroupSize and every
// group's scale and zero point are RTN's, from the original columns; the
// processing order is by decreasing diag(C).
func TestGPTQActOrderStaticGroups(t *testing.T) {
	const out, in, tokens = 16, 256, 400
	k := kernels.Default()
	rng := newRNG(7)
	w := mattest.RandDense(rng, out, in)
	_, c := activations(rng, tokens, in)
	for _, gs := range []int{0, 32, 64, 128} {
		for _, bits := range []int{3, 4} {
			cfg := Config{Bits: bits, GroupSize: gs, ActOrder: true}
			name := fmt.Sprintf("%+v", cfg)
			r, err := GPTQ(k, w, c, tokens, cfg)
			if err != nil {
				t.Fatal(err)
			}
			checkResult(t, name, r, nil)
			rtn, err := RTN(w, cfg)
			if err != nil {
				t.Fatal(err)
			}
			if !mat.Equal(r.Scales, rtn.Scales) || !slices.Equal(r.Zeros, rtn.Zeros) || !slices.Equal(r.GIdx, rtn.GIdx) {
				t.Errorf("%s: static group parameters differ from RTN's", name)
			}
			// Dequantizing through GIdx in the original column order gives
			// Dequant: the codes were written back to their original columns.
			for i := range out {
				for j := range in {
					g := int(r.GIdx[j])
					if want := r.Scales.At(g, i) * (float64(r.Q[i*in+j]) - float64(r.Zeros[g*out+i])); r.Dequant.At(i, j) != want {
						t.Fatalf("%s: Dequant[%d][%d] = %v, through GIdx %v", name, i, j, r.Dequant.At(i, j), want)
					}
				}
			}
			seen := make([]bool, in)
			for p, j := range r.Perm {
				if seen[j] {
					t.Fatalf("%s: Perm repeats %d", name, j)
				}
				seen[j] = true
				if p > 0 && c.At(j, j) > c.At(r.Perm[p-1], r.Perm[p-1]) {
					t.Fatalf("%s: Perm not by decreasing diag(C) at %d", name, p)
				}
			}
			if slices.IsSorted(r.Perm) {
				t.Errorf("%s: act-order kept the natural order", name)
			}
			noAct := cfg
			noAct.ActOrder = false
			plain, err := GPTQ(k, w, c, tokens, noAct)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s: calibration error act-order %.4g, natural order %.4g, RTN %.4g", name, r.CalibError, plain.CalibError, CalibError(k, w, rtn.Dequant, c))
		}
	}
}

// Inputs the calibration set never excites: the run succeeds, reports them,
// and (static parameters, no error reaches them) rounds them as RTN does.
func TestGPTQDeadColumns(t *testing.T) {
	const out, in, tokens = 16, 128, 300
	for _, k := range backends() {
		rng := newRNG(3)
		w := mattest.RandDense(rng, out, in)
		x, _ := activations(rng, tokens, in)
		deadCols := []int{0, 5, 64, 127}
		for _, j := range deadCols {
			for i := range tokens {
				x.Set(i, j, 0)
			}
		}
		c := gram(x)
		for _, act := range []bool{false, true} {
			cfg := Config{Bits: 4, ActOrder: act}
			r, err := GPTQ(k, w, c, tokens, cfg)
			if err != nil {
				t.Fatal(err)
			}
			name := fmt.Sprintf("%s %+v", k.Name(), cfg)
			checkResult(t, name, r, nil)
			checkCalib(t, name, r, w, c)
			if r.Dead != len(deadCols) {
				t.Errorf("%s: %d dead columns, want %d", name, r.Dead, len(deadCols))
			}
			rtn, _ := RTN(w, cfg)
			for _, j := range deadCols {
				for i := range out {
					if r.Q[i*in+j] != rtn.Q[i*in+j] {
						t.Fatalf("%s: dead column %d row %d: code %d, RTN %d", name, j, i, r.Q[i*in+j], rtn.Q[i*in+j])
					}
				}
			}
			if re := CalibError(k, w, rtn.Dequant, c); r.CalibError > re {
				t.Errorf("%s: GPTQ %.6g > RTN %.6g", name, r.CalibError, re)
			}
		}
		// A zero Gram: every column dead, GPTQ is RTN.
		r, err := GPTQ(k, w, mat.NewSymDense(in, nil), tokens, Config{Bits: 3, GroupSize: 32})
		if err != nil {
			t.Fatal(err)
		}
		rtn, _ := RTN(w, Config{Bits: 3, GroupSize: 32})
		if r.Dead != in || !slices.Equal(r.Q, rtn.Q) || r.CalibError != 0 {
			t.Errorf("%s zero C: %d dead, codes equal to RTN %v, error %v", k.Name(), r.Dead, slices.Equal(r.Q, rtn.Q), r.CalibError)
		}
	}
}

// Fewer tokens than inputs (C singular): the default damping suffices. A
// slightly indefinite C (rounding gone bad): the damping is raised tenfold.
// Both give finite results no worse than RTN.
func TestGPTQSingularAndIndefinite(t *testing.T) {
	const out, in = 16, 128
	for _, k := range backends() {
		rng := newRNG(5)
		w := mattest.RandDense(rng, out, in)
		_, c := activations(rng, in/4, in)
		cfg := Config{Bits: 4, GroupSize: 32}
		r, err := GPTQ(k, w, c, in/4, cfg)
		if err != nil {
			t.Fatal(err)
		}
		checkResult(t, k.Name()+" singular", r, nil)
		checkCalib(t, k.Name()+" singular", r, w, c)
		if r.Damp != DefaultDamp {
			t.Errorf("%s singular: damp %v", k.Name(), r.Damp)
		}
		rtn, _ := RTN(w, cfg)
		re := CalibError(k, w, rtn.Dequant, c)
		if r.CalibError > re {
			t.Errorf("%s singular: GPTQ %.6g > RTN %.6g", k.Name(), r.CalibError, re)
		}
		t.Logf("%s: %d tokens for %d inputs: GPTQ/RTN = %.3f", k.Name(), in/4, in, r.CalibError/re)

		// C = Q diag(λ) Qᵀ with λ₀ = −0.03 and the others in [0.05, 1]:
		// λ_min is about −0.06 of mean(diag C), so 0.01 of the mean is not
		// enough damping and 0.1 is.
		lambda := make([]float64, in)
		lambda[0] = -0.03
		for j := 1; j < in; j++ {
			lambda[j] = 0.05 + 0.95*rng.Float64()
		}
		q := mattest.RandOrthogonal(rng, in)
		ind := mat.NewSymDense(in, nil)
		for a := range in {
			for b := a; b < in; b++ {
				var v float64
				for m := range in {
					v += q.At(a, m) * lambda[m] * q.At(b, m)
				}
				ind.SetSym(a, b, v)
			}
		}
		r, err = GPTQ(k, w, ind, in/4, cfg)
		if err != nil {
			t.Fatal(err)
		}
		checkResult(t, k.Name()+" indefinite", r, nil)
		checkCalib(t, k.Name()+" indefinite", r, w, ind)
		if math.Abs(r.Damp-10*DefaultDamp) > 1e-15 {
			t.Errorf("%s indefinite: damp %v, want %v", k.Name(), r.Damp, 10*DefaultDamp)
		}
	}
}

func TestGPTQBadInput(t *testing.T) {
	const out, in, tokens = 4, 32, 64
	k := kernels.Default()
	rng := newRNG(9)
	w := mattest.RandDense(rng, out, in)
	_, c := activations(rng, tokens, in)
	cfg := Config{Bits: 4}

	// 2I − 11ᵀ: eigenvalue 2 − 32 = −30 ≫ 1000·0.01·mean(diag).
	ind := mat.NewSymDense(in, nil)
	for i := range in {
		for j := i; j < in; j++ {
			ind.SetSym(i, j, -1)
		}
		ind.SetSym(i, i, 1)
	}
	negDiag := mat.NewSymDense(in, nil)
	negDiag.CopySym(c)
	negDiag.SetSym(3, 3, -1)
	deadCorr := mat.NewSymDense(in, nil)
	deadCorr.CopySym(c)
	deadCorr.SetSym(3, 3, 0)
	nanC := mat.NewSymDense(in, nil)
	nanC.CopySym(c)
	nanC.SetSym(1, 2, math.NaN())
	nanW := mat.DenseCopyOf(w)
	nanW.Set(0, 0, math.NaN())

	cases := []struct {
		name string
		w    *mat.Dense
		c    *mat.SymDense
		n    int
		cfg  Config
		want error
	}{
		{"indefinite", w, ind, tokens, cfg, ErrNotPSD},
		{"negative diagonal", w, negDiag, tokens, cfg, ErrNotPSD},
		{"dead input with correlations", w, deadCorr, tokens, cfg, ErrNotPSD},
		{"NaN in C", w, nanC, tokens, cfg, ErrNonFinite},
		{"NaN in W", nanW, c, tokens, cfg, ErrNonFinite},
		{"no tokens", w, c, 0, cfg, ErrConfig},
		{"7 bits", w, c, tokens, Config{Bits: 7}, ErrConfig},
		{"group 64 of 32 inputs", w, c, tokens, Config{Bits: 4, GroupSize: 64}, ErrConfig},
		{"damp 5", w, c, tokens, Config{Bits: 4, Damp: 5}, ErrConfig},
	}
	for _, tc := range cases {
		if _, err := GPTQ(k, tc.w, tc.c, tc.n, tc.cfg); !errors.Is(err, tc.want) {
			t.Errorf("%s: err %v, want %v", tc.name, err, tc.want)
		} else {
			t.Logf("%s: %v", tc.name, err)
		}
	}
	mustPanicShape(t, "C too small", func() { _, _ = GPTQ(k, w, mat.NewSymDense(in-1, nil), tokens, cfg) })
	mustPanicShape(t, "CalibError", func() { CalibError(k, w, mat.NewDense(out, in+1, nil), c) })
}

// A width that is not a multiple of the block size (stories260K's MLP has
// 172 features): one group per channel, the last block short.
func TestGPTQOddWidth(t *testing.T) {
	const out, in, tokens = 24, 172, 400
	k := kernels.Default()
	rng := newRNG(13)
	w := mattest.RandDense(rng, out, in)
	_, c := activations(rng, tokens, in)
	for _, bits := range []int{2, 4} {
		for _, act := range []bool{false, true} {
			cfg := Config{Bits: bits, ActOrder: act}
			r, err := GPTQ(k, w, c, tokens, cfg)
			if err != nil {
				t.Fatal(err)
			}
			checkResult(t, fmt.Sprintf("%+v", cfg), r, nil)
			checkCalib(t, fmt.Sprintf("%+v", cfg), r, w, c)
			rtn, _ := RTN(w, cfg)
			if re := CalibError(k, w, rtn.Dequant, c); r.CalibError > re {
				t.Errorf("%+v: GPTQ %.6g > RTN %.6g", cfg, r.CalibError, re)
			}
		}
	}
	if _, err := GPTQ(k, w, c, tokens, Config{Bits: 4, GroupSize: 32}); !errors.Is(err, ErrConfig) {
		t.Errorf("group 32 of 172 inputs: err %v", err)
	}
}

// checkCalib compares GPTQ's CalibError, obtained from ‖E‖²_F, with the
// trace evaluated directly.
func checkCalib(t *testing.T, name string, r Result, w *mat.Dense, c *mat.SymDense) {
	t.Helper()
	if d := directCalibError(w, r.Dequant, c); relErr(r.CalibError, d) > tolCalib {
		t.Errorf("%s: CalibError %.12g, direct %.12g (rel %.2g)", name, r.CalibError, d, relErr(r.CalibError, d))
	}
}
