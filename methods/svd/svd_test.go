package svd

import (
	"errors"
	"fmt"
	"math"
	"testing"

	"gonum.org/v1/gonum/mat"

	"github.com/rankzip/rankzip/methods/internal/mattest"
)

const (
	// tolFullRank bounds ‖W − B A‖_F/‖W‖_F at full rank with a
	// well-conditioned C.
	tolFullRank = 1e-10
	// tolPredict bounds the relative gap between PredictedError and the
	// measured CalibError.
	tolPredict = 1e-8
	// tolOptimal is the slack allowed when one error must not exceed another.
	tolOptimal = 1e-10
)

var shapes = []struct{ out, in int }{{40, 30}, {30, 40}, {32, 32}}

func TestFullRankReproducesW(t *testing.T) {
	for _, k := range backends() {
		for _, sh := range shapes {
			rng := newRNG()
			w := mattest.RandDense(rng, sh.out, sh.in)
			x, c := activations(rng, 4*sh.in, sh.in, 0.9)
			p := min(sh.out, sh.in)
			methods := map[string]func() (Result, error){
				"whiten": func() (Result, error) { return Whiten(k, w, c, p) },
				"plain":  func() (Result, error) { return Plain(k, w, p) },
				"asvd":   func() (Result, error) { return ASVD(k, w, meanAbs(x), 0.5, p) },
			}
			for name, f := range methods {
				r, err := f()
				if err != nil {
					t.Fatalf("%s %s %v: %v", k.Name(), name, sh, err)
				}
				if d := relDiff(product(r), w); d > tolFullRank {
					t.Errorf("%s %s %v: ‖W − BA‖/‖W‖ = %.3g at full rank", k.Name(), name, sh, d)
				}
				if r.PredictedError > tolFullRank*mat.Norm(w, 2)*mat.Norm(w, 2)*mat.Norm(c, 2) {
					t.Errorf("%s %s %v: PredictedError %.3g at full rank", k.Name(), name, sh, r.PredictedError)
				}
			}
		}
	}
}

// Whitening picks the component that matters under C, not the largest one
// of W: a hand-computed 2×2 case.
func TestWhitenKnownAnswer(t *testing.T) {
	w := mat.NewDense(2, 2, []float64{3, 0, 0, 1})
	cases := []struct {
		c2        float64 // C = diag(1, c2)
		sigma     []float64
		pred      float64
		want      []float64 // B A, row-major
		plainPred float64
	}{
		{c2: 4, sigma: []float64{3, 2}, pred: 4, want: []float64{3, 0, 0, 0}},
		{c2: 16, sigma: []float64{4, 3}, pred: 9, want: []float64{0, 0, 0, 1}},
	}
	for _, k := range backends() {
		for _, tc := range cases {
			c := mat.NewSymDense(2, []float64{1, 0, 0, tc.c2})
			r, err := Whiten(k, w, c, 1)
			if err != nil {
				t.Fatal(err)
			}
			if r.Path != PathCholesky {
				t.Errorf("C = diag(1, %v): path %v, want cholesky", tc.c2, r.Path)
			}
			for i, s := range tc.sigma {
				if math.Abs(r.Sigma[i]-s) > 1e-12 {
					t.Errorf("C = diag(1, %v): Sigma %v, want %v", tc.c2, r.Sigma, tc.sigma)
				}
			}
			if math.Abs(r.PredictedError-tc.pred) > 1e-12 {
				t.Errorf("C = diag(1, %v): PredictedError %v, want %v", tc.c2, r.PredictedError, tc.pred)
			}
			if d := relDiff(product(r), mat.NewDense(2, 2, tc.want)); d > 1e-12 {
				t.Errorf("C = diag(1, %v): B A = %v, want %v", tc.c2, mat.Formatted(product(r)), tc.want)
			}
		}
	}
}

func TestWhitenPredictedErrorAndOptimality(t *testing.T) {
	for _, k := range backends() {
		for _, sh := range shapes {
			rng := newRNG()
			w := mattest.RandDense(rng, sh.out, sh.in)
			x, c := activations(rng, 4*sh.in, sh.in, 0.85)
			p := min(sh.out, sh.in)
			spec, err := Spectrum(k, w, c)
			if err != nil {
				t.Fatal(err)
			}
			prevPred, prevMeas := math.Inf(1), math.Inf(1)
			for rank := 1; rank < p; rank++ {
				r, err := Whiten(k, w, c, rank)
				if err != nil {
					t.Fatal(err)
				}
				name := fmt.Sprintf("%s %v rank %d", k.Name(), sh, rank)
				if r.Path != PathCholesky || r.Damping != 0 || r.DataRank != p {
					t.Errorf("%s: path %v damping %v data rank %d", name, r.Path, r.Damping, r.DataRank)
				}
				if rank == 1 {
					for i := range spec {
						if relErr(spec[i], r.Sigma[i]) > 1e-12 {
							t.Fatalf("%s: Spectrum %v != Sigma %v", name, spec, r.Sigma)
						}
					}
				}
				meas := CalibError(w, product(r), c)
				if e := relErr(r.PredictedError, meas); e > tolPredict {
					t.Errorf("%s: predicted %.12g measured %.12g (rel %.2g)", name, r.PredictedError, meas, e)
				}
				if r.PredictedError > prevPred || meas > prevMeas*(1+tolOptimal) {
					t.Errorf("%s: error grew with rank: %g after %g", name, r.PredictedError, prevPred)
				}
				prevPred, prevMeas = r.PredictedError, meas
				pl, err := Plain(k, w, rank)
				if err != nil {
					t.Fatal(err)
				}
				as, err := ASVD(k, w, meanAbs(x), 0.5, rank)
				if err != nil {
					t.Fatal(err)
				}
				pe, ae := CalibError(w, product(pl), c), CalibError(w, product(as), c)
				if meas > pe*(1+tolOptimal) || meas > ae*(1+tolOptimal) {
					t.Errorf("%s: whiten %g not ≤ plain %g and asvd %g", name, meas, pe, ae)
				}
				if e := relErr(pl.PredictedError, frob2(diff(w, product(pl)))); e > tolPredict {
					t.Errorf("%s: plain predicted %g, ‖W − BA‖² %g", name, pl.PredictedError, frob2(diff(w, product(pl))))
				}
			}
		}
	}
}

func diff(a, b mat.Matrix) *mat.Dense {
	var d mat.Dense
	d.Sub(a, b)
	return &d
}

// Fewer calibration tokens than input channels: C has rank n < in. The
// result must be finite, take the damping (or eigen) path, predict its
// calibration error, reach zero calibration error from rank n on, and still
// reproduce W at full rank.
func TestWhitenRankDeficientGram(t *testing.T) {
	const out, in, tokens = 40, 30, 10
	for _, k := range backends() {
		rng := newRNG()
		w := mattest.RandDense(rng, out, in)
		_, c := activations(rng, tokens, in, 0.95)
		total := CalibError(w, mat.NewDense(out, in, nil), c)
		for _, rank := range []int{1, 5, tokens, 20, in} {
			r, err := Whiten(k, w, c, rank)
			if err != nil {
				t.Fatal(err)
			}
			name := fmt.Sprintf("%s rank %d", k.Name(), rank)
			allFinite(t, r)
			if r.Path != PathDamped && r.Path != PathEigen {
				t.Errorf("%s: path %v, want damped or eigen", name, r.Path)
			}
			meas := CalibError(w, product(r), c)
			if math.Abs(r.PredictedError-meas) > tolPredict*total {
				t.Errorf("%s: predicted %g measured %g (total %g)", name, r.PredictedError, meas, total)
			}
			if rank >= tokens && meas > tolPredict*total {
				t.Errorf("%s: calibration error %g of %g past the data rank", name, meas, total)
			}
			pl, _ := Plain(k, w, rank)
			if pe := CalibError(w, product(pl), c); meas > pe+tolPredict*total {
				t.Errorf("%s: whiten %g > plain %g", name, meas, pe)
			}
			if rank == in {
				if d := relDiff(product(r), w); d > 1e-8 {
					t.Errorf("%s: full rank ‖W − BA‖/‖W‖ = %g", name, d)
				}
			}
		}
	}
}

// A Gram matrix with a clearly negative eigenvalue defeats every damping
// step and must take the eigen path: finite factors, PredictedError equal to
// the error under C with the negative eigenvalue clamped, and the unseen
// direction filled from W so full rank still reproduces W.
func TestWhitenEigenFallback(t *testing.T) {
	const out, in = 12, 8
	for _, k := range backends() {
		rng := newRNG()
		w := mattest.RandDense(rng, out, in)
		q := mattest.RandOrthogonal(rng, in)
		lam := []float64{-0.5, 0, 0.5, 1, 2, 3, 4, 5}
		c, cPlus := mat.NewSymDense(in, nil), mat.NewSymDense(in, nil)
		for j, l := range lam {
			col := mat.NewVecDense(in, mat.Col(nil, j, q))
			c.SymRankOne(c, l, col)
			cPlus.SymRankOne(cPlus, math.Max(l, 0), col)
		}
		for _, rank := range []int{1, 3, 6, in} {
			r, err := Whiten(k, w, c, rank)
			if err != nil {
				t.Fatal(err)
			}
			allFinite(t, r)
			if r.Path != PathEigen || r.DataRank != 6 {
				t.Errorf("%s rank %d: path %v data rank %d, want eigen, 6", k.Name(), rank, r.Path, r.DataRank)
			}
			meas := CalibError(w, product(r), cPlus)
			if math.Abs(r.PredictedError-meas) > tolPredict*math.Max(meas, 1) {
				t.Errorf("%s rank %d: predicted %g measured %g", k.Name(), rank, r.PredictedError, meas)
			}
			if rank == in {
				if d := relDiff(product(r), w); d > tolFullRank {
					t.Errorf("%s: full rank ‖W − BA‖/‖W‖ = %g", k.Name(), d)
				}
			}
		}
	}
}

// Dead input channels (zero rows and columns of C) make C singular; the
// damped path must handle them.
func TestWhitenDeadChannels(t *testing.T) {
	const out, in = 20, 16
	for _, k := range backends() {
		rng := newRNG()
		w := mattest.RandDense(rng, out, in)
		x, _ := activations(rng, 64, in, 0.9)
		for i := range 64 {
			x.Set(i, 3, 0)
			x.Set(i, 7, 0)
		}
		c := gram(x)
		r, err := Whiten(k, w, c, 8)
		if err != nil {
			t.Fatal(err)
		}
		allFinite(t, r)
		if r.Path != PathDamped {
			t.Errorf("%s: path %v, want damped", k.Name(), r.Path)
		}
		meas := CalibError(w, product(r), c)
		if relErr(r.PredictedError, meas) > tolPredict {
			t.Errorf("%s: predicted %g measured %g", k.Name(), r.PredictedError, meas)
		}
		full, err := Whiten(k, w, c, in)
		if err != nil {
			t.Fatal(err)
		}
		if d := relDiff(product(full), w); d > 1e-8 {
			t.Errorf("%s: full rank ‖W − BA‖/‖W‖ = %g", k.Name(), d)
		}
	}
}

func TestASVDScales(t *testing.T) {
	const out, in, rank = 20, 16, 6
	for _, k := range backends() {
		rng := newRNG()
		w := mattest.RandDense(rng, out, in)
		pl, err := Plain(k, w, rank)
		if err != nil {
			t.Fatal(err)
		}
		// alpha = 0 and all-zero scales are plain SVD.
		for _, tc := range []struct {
			m     []float64
			alpha float64
		}{{make([]float64, in), 0.5}, {meanAbs(mattest.RandDense(rng, 8, in)), 0}} {
			r, err := ASVD(k, w, tc.m, tc.alpha, rank)
			if err != nil {
				t.Fatal(err)
			}
			if d := relDiff(product(r), product(pl)); d > 1e-10 {
				t.Errorf("%s alpha %v: differs from plain by %g", k.Name(), tc.alpha, d)
			}
		}
		// A dead channel is floored, not divided by.
		m := meanAbs(mattest.RandDense(rng, 8, in))
		m[2] = 0
		r, err := ASVD(k, w, m, 0.5, rank)
		if err != nil {
			t.Fatal(err)
		}
		allFinite(t, r)
		// PredictedError is ‖(W − BA) D‖²_F.
		var e mat.Dense
		e.Sub(w, product(r))
		floor := 0.0
		for _, v := range m {
			floor = math.Max(floor, math.Sqrt(v))
		}
		floor *= asvdScaleFloor
		for j := range in {
			s := math.Max(math.Sqrt(m[j]), floor)
			for i := range out {
				e.Set(i, j, e.At(i, j)*s)
			}
		}
		if relErr(r.PredictedError, frob2(&e)) > tolPredict {
			t.Errorf("%s: predicted %g, ‖(W − BA)D‖² %g", k.Name(), r.PredictedError, frob2(&e))
		}
	}
}

func TestBadInput(t *testing.T) {
	k := backends()[0]
	rng := newRNG()
	w := mattest.RandDense(rng, 6, 4)
	_, c := activations(rng, 16, 4, 0.9)
	nanW := mat.DenseCopyOf(w)
	nanW.Set(1, 2, math.NaN())
	infC := mat.NewSymDense(4, nil)
	infC.CopySym(c)
	infC.SetSym(0, 3, math.Inf(1))
	for name, f := range map[string]func() error{
		"whiten NaN W": func() error { _, err := Whiten(k, nanW, c, 2); return err },
		"whiten Inf C": func() error { _, err := Whiten(k, w, infC, 2); return err },
		"plain NaN W":  func() error { _, err := Plain(k, nanW, 2); return err },
		"asvd NaN m":   func() error { _, err := ASVD(k, w, []float64{1, math.NaN(), 1, 1}, 0.5, 2); return err },
		"spectrum NaN": func() error { _, err := Spectrum(k, nanW, c); return err },
		"target NaN":   func() error { _, err := CorrectedTarget(k, nanW, mat.NewDense(4, 4, nil), c); return err },
	} {
		if err := f(); !errors.Is(err, ErrNonFinite) {
			t.Errorf("%s: error %v, want ErrNonFinite", name, err)
		}
	}
	if _, err := Whiten(k, w, mat.NewSymDense(4, nil), 2); !errors.Is(err, ErrZeroGram) {
		t.Errorf("zero C: error %v, want ErrZeroGram", err)
	}
	if _, err := ASVD(k, w, []float64{1, -1, 1, 1}, 0.5, 2); err == nil {
		t.Errorf("negative meanAbs: no error")
	}
	mustPanicShape(t, "C size", func() { _, _ = Whiten(k, w, mat.NewSymDense(5, nil), 2) })
	mustPanicShape(t, "rank 0", func() { _, _ = Whiten(k, w, c, 0) })
	mustPanicShape(t, "rank > min", func() { _, _ = Plain(k, w, 5) })
	mustPanicShape(t, "meanAbs length", func() { _, _ = ASVD(k, w, []float64{1}, 0.5, 2) })
	mustPanicShape(t, "calib shapes", func() { CalibError(w, mat.NewDense(4, 6, nil), c) })
	mustPanicShape(t, "cross shape", func() { _, _ = CorrectedTarget(k, w, mat.NewDense(4, 3, nil), c) })
}

// CorrectedTarget: identity when both streams agree; otherwise it solves the
// (ridge-damped) normal equations, and Whiten(W̃, C) fits the original
// outputs from the compressed inputs better than Whiten(W, C).
func TestCorrectedTarget(t *testing.T) {
	const out, in, tokens = 24, 16, 200
	for _, k := range backends() {
		rng := newRNG()
		w := mattest.RandDense(rng, out, in)
		xo, co := activations(rng, tokens, in, 0.9)
		same, err := CorrectedTarget(k, w, mat.DenseCopyOf(co), co)
		if err != nil {
			t.Fatal(err)
		}
		if d := relDiff(same, w); d > tolFullRank {
			t.Errorf("%s: cross = C gives ‖W̃ − W‖/‖W‖ = %g", k.Name(), d)
		}

		// The compressed stream: a perturbed copy of the original.
		noise := mattest.RandDense(rng, tokens, in)
		noise.Scale(0.3, noise)
		var xc mat.Dense
		xc.Add(xo, noise)
		cc := gram(&xc)
		var cross mat.Dense
		cross.Mul(xo.T(), &xc)
		wt, err := CorrectedTarget(k, w, &cross, cc)
		if err != nil {
			t.Fatal(err)
		}
		// Normal equations: W̃ (C + δI) = W K + δW.
		delta := correctionDamp * meanDiag(cc)
		var lhs, rhs mat.Dense
		lhs.Mul(wt, cc)
		lhs.Add(&lhs, scaled(delta, wt))
		rhs.Mul(w, &cross)
		rhs.Add(&rhs, scaled(delta, w))
		if d := relDiff(&lhs, &rhs); d > 1e-10 {
			t.Errorf("%s: normal equations off by %g", k.Name(), d)
		}
		// The objective ‖X_o Wᵀ − X_c W′ᵀ‖² of the corrected fit is the
		// least-squares residual plus Whiten's prediction, and beats fitting
		// W itself, at every rank.
		floor := objective(xo, w, &xc, wt)
		for _, rank := range []int{2, 8, 15} {
			rc, err := Whiten(k, wt, cc, rank)
			if err != nil {
				t.Fatal(err)
			}
			rw, err := Whiten(k, w, cc, rank)
			if err != nil {
				t.Fatal(err)
			}
			got := objective(xo, w, &xc, product(rc))
			if relErr(got, floor+rc.PredictedError) > 1e-6 {
				t.Errorf("%s rank %d: objective %g, residual %g + predicted %g", k.Name(), rank, got, floor, rc.PredictedError)
			}
			if naive := objective(xo, w, &xc, product(rw)); got >= naive {
				t.Errorf("%s rank %d: corrected %g not below uncorrected %g", k.Name(), rank, got, naive)
			}
		}
	}
}

func scaled(f float64, m mat.Matrix) *mat.Dense {
	var d mat.Dense
	d.Scale(f, m)
	return &d
}

// objective returns ‖X_o Wᵀ − X_c W′ᵀ‖²_F.
func objective(xo, w, xc, wp mat.Matrix) float64 {
	var a, b mat.Dense
	a.Mul(xo, w.T())
	b.Mul(xc, wp.T())
	a.Sub(&a, &b)
	return frob2(&a)
}

// Which square root of C Whiten takes, on diagonal Gram matrices with W = I:
// the whitened singular values are then √diag(C), so rank 2 keeps the two
// largest entries and predicts the sum of the other two.
func TestWhitenPath(t *testing.T) {
	cases := []struct {
		name string
		diag []float64
		path Path
		pred float64
	}{
		{"well conditioned", []float64{1, 2, 3, 4}, PathCholesky, 3},
		{"tiny pivot", []float64{1, 2, 3, 1e-13}, PathDamped, 1},
		{"dead channel", []float64{1, 2, 3, 0}, PathDamped, 1},
		{"rounding negative", []float64{1, 2, 3, -1e-12}, PathDamped, 1},
		{"indefinite", []float64{1, 2, 3, -1}, PathEigen, 1},
	}
	w := mat.NewDense(4, 4, []float64{1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1})
	for _, k := range backends() {
		for _, tc := range cases {
			c := mat.NewSymDense(4, nil)
			for i, v := range tc.diag {
				c.SetSym(i, i, v)
			}
			r, err := Whiten(k, w, c, 2)
			if err != nil {
				t.Fatalf("%s: %v", tc.name, err)
			}
			allFinite(t, r)
			if r.Path != tc.path {
				t.Errorf("%s %s: path %v, want %v", k.Name(), tc.name, r.Path, tc.path)
			}
			if (r.Path == PathDamped) != (r.Damping > 0) {
				t.Errorf("%s %s: path %v with damping %g", k.Name(), tc.name, r.Path, r.Damping)
			}
			if math.Abs(r.PredictedError-tc.pred) > 1e-9 {
				t.Errorf("%s %s: PredictedError %.12g, want %v", k.Name(), tc.name, r.PredictedError, tc.pred)
			}
		}
	}
}

// A zero weight factors to zero factors with zero error, on every method.
func TestZeroWeight(t *testing.T) {
	for _, k := range backends() {
		rng := newRNG()
		w := mat.NewDense(6, 4, nil)
		x, c := activations(rng, 16, 4, 0.9)
		for name, f := range map[string]func() (Result, error){
			"whiten": func() (Result, error) { return Whiten(k, w, c, 3) },
			"plain":  func() (Result, error) { return Plain(k, w, 3) },
			"asvd":   func() (Result, error) { return ASVD(k, w, meanAbs(x), 0.5, 3) },
		} {
			r, err := f()
			if err != nil {
				t.Fatalf("%s %s: %v", k.Name(), name, err)
			}
			allFinite(t, r)
			if frob2(product(r)) != 0 || r.PredictedError != 0 {
				t.Errorf("%s %s: ‖BA‖² %g, predicted %g", k.Name(), name, frob2(product(r)), r.PredictedError)
			}
		}
	}
}
