package rank

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
)

// tolError is the slack allowed when one total normalised error must not
// exceed another.
const tolError = 1e-12

func newRNG() *rand.Rand { return rand.New(rand.NewPCG(1, 1)) }

// spectrum returns min(out, in) descending values of the named shape.
func spectrum(shape string, p int, a float64) []float64 {
	s := make([]float64, p)
	for i := range s {
		x := float64(i + 1)
		switch shape {
		case "power":
			s[i] = math.Pow(x, -a)
		case "exp":
			s[i] = math.Exp(-a * x)
		case "flat":
			s[i] = a
		case "step": // a few strong directions over a flat floor
			s[i] = 0.01
			if x <= a {
				s[i] = 1
			}
		}
	}
	return s
}

// model returns a small Llama-like set of targets (q, k, v, o, gate, up,
// down over two blocks) with heterogeneous spectra, scaled by very different
// input energies to make raw errors incomparable.
func model() []Matrix {
	const d, ff, kv = 96, 256, 32
	type spec struct {
		name    string
		out, in int
		shape   string
		a       float64
		scale   float64
	}
	var specs []spec
	for b := range 2 {
		p := fmt.Sprintf("layers.%d.", b)
		specs = append(specs,
			spec{p + "q_proj", d, d, "power", 0.8 + 0.4*float64(b), 10},
			spec{p + "k_proj", kv, d, "exp", 0.15, 10},
			spec{p + "v_proj", kv, d, "power", 0.3, 10},
			spec{p + "o_proj", d, d, "flat", 1, 0.01},
			spec{p + "gate_proj", ff, d, "power", 0.5, 10},
			spec{p + "up_proj", ff, d, "step", 12, 10},
			spec{p + "down_proj", d, ff, "power", 1.5, 0.1},
		)
	}
	mats := make([]Matrix, len(specs))
	for i, s := range specs {
		sig := spectrum(s.shape, min(s.out, s.in), s.a)
		for j := range sig {
			sig[j] *= s.scale
		}
		mats[i] = Matrix{Name: s.name, Out: s.out, In: s.in, Sigma: sig}
	}
	return mats
}

func totalError(mats []Matrix, a Allocation) float64 {
	var sum float64
	for i, m := range mats {
		sum += NormalisedError(m, a.Choices[i])
	}
	return sum
}

// checkBudget asserts the documented guarantee: Params ≤ Target and the gap
// is less than one rank step of every matrix left factored.
func checkBudget(t *testing.T, name string, mats []Matrix, a Allocation) {
	t.Helper()
	params := 0
	gap := math.MaxInt
	for i, m := range mats {
		c := a.Choices[i]
		params += m.Cost(c)
		if !c.Dense {
			gap = min(gap, m.Out+m.In)
			if c.Rank < 1 || c.Rank > m.MaxRank() {
				t.Errorf("%s: %s rank %d outside 1…%d", name, m.Name, c.Rank, m.MaxRank())
			}
		} else if c.Rank != min(m.Out, m.In) {
			t.Errorf("%s: %s dense with rank %d", name, m.Name, c.Rank)
		}
	}
	if params != a.Params {
		t.Errorf("%s: Params %d, choices cost %d", name, a.Params, params)
	}
	if a.Params > a.Target {
		t.Errorf("%s: Params %d over Target %d", name, a.Params, a.Target)
	}
	if gap == math.MaxInt {
		gap = 1 // all dense: exact
	}
	if a.Target-a.Params >= gap {
		t.Errorf("%s: Params %d short of Target %d by a rank step (%d) or more", name, a.Params, a.Target, gap)
	}
}

func TestUniformKnownAnswers(t *testing.T) {
	cases := []struct {
		out, in int
		keep    float64
		want    Choice
	}{
		{4096, 4096, 0.5, Choice{Rank: 1024}},
		{11008, 4096, 0.6, Choice{Rank: 1791}},
		{4096, 4096, 1, Choice{Rank: 4096, Dense: true}},
		{4096, 4096, 1e-9, Choice{Rank: 1}},
		{1, 8, 0.5, Choice{Rank: 1, Dense: true}}, // rank 1 costs 9 > 8
	}
	for _, tc := range cases {
		m := Matrix{Out: tc.out, In: tc.in}
		a, err := Uniform([]Matrix{m}, tc.keep)
		if err != nil {
			t.Fatal(err)
		}
		if a.Choices[0] != tc.want || a.Params != m.Cost(tc.want) {
			t.Errorf("%d×%d keep %v: %+v (%d params), want %+v", tc.out, tc.in, tc.keep, a.Choices[0], a.Params, tc.want)
		}
	}
}

func TestKeepValidation(t *testing.T) {
	mats := model()
	for _, keep := range []float64{0, -0.1, 1.0000001, 2, math.NaN(), math.Inf(1)} {
		if _, err := Uniform(mats, keep); !errors.Is(err, ErrKeep) {
			t.Errorf("Uniform keep %v: %v", keep, err)
		}
		if _, err := Global(mats, keep); !errors.Is(err, ErrKeep) {
			t.Errorf("Global keep %v: %v", keep, err)
		}
		if _, err := Sensitivity(mats, keep, func(int, float64) float64 { return 0 }, []float64{0.5}); !errors.Is(err, ErrKeep) {
			t.Errorf("Sensitivity keep %v: %v", keep, err)
		}
	}
	if _, err := Sensitivity(mats, 0.5, func(int, float64) float64 { return 0 }, []float64{0.5, 1.5}); !errors.Is(err, ErrKeep) {
		t.Errorf("Sensitivity ratio 1.5: %v", err)
	}
}

func TestGlobalBadSpectrum(t *testing.T) {
	for name, sig := range map[string][]float64{
		"NaN":        {1, math.NaN(), 0},
		"negative":   {1, 0.5, -0.1},
		"ascending":  {1, 2, 0},
		"infinity":   {math.Inf(1), 1, 0},
		"zero is ok": {0, 0, 0},
	} {
		_, err := Global([]Matrix{{Name: name, Out: 3, In: 5, Sigma: sig}}, 0.5)
		if (err == nil) != (name == "zero is ok") || (err != nil && !errors.Is(err, ErrSpectrum)) {
			t.Errorf("%s: error %v", name, err)
		}
	}
	defer func() {
		if err, ok := recover().(error); !ok || !errors.Is(err, ErrShape) {
			t.Errorf("short spectrum: want a panic wrapping ErrShape")
		}
	}()
	_, _ = Global([]Matrix{{Out: 3, In: 5, Sigma: []float64{1}}}, 0.5)
}

// Two 64×64 matrices (cost 128 per rank, dense 4096, MaxRank 31): A has
// three directions, B a flat spectrum, for which dense beats any rank per
// parameter. Hand-worked: at keep 0.3 (target 2457) A takes its three
// useful ranks, B's jump to dense (3968) does not fit, so B climbs rank
// steps to 16 and 25 parameters are left. At keep 0.6 (target 4915) B goes
// dense and A spends the rest on zero-gain ranks, up to 6.
func TestGlobalKnownAnswer(t *testing.T) {
	a := make([]float64, 64)
	copy(a, []float64{3, 2, 1})
	mats := []Matrix{{Name: "A", Out: 64, In: 64, Sigma: a}, {Name: "B", Out: 64, In: 64, Sigma: spectrum("flat", 64, 1)}}
	cases := []struct {
		keep   float64
		want   []Choice
		params int
	}{
		{0.3, []Choice{{Rank: 3}, {Rank: 16}}, 2432},
		{0.6, []Choice{{Rank: 6}, {Rank: 64, Dense: true}}, 4864},
		{1, []Choice{{Rank: 64, Dense: true}, {Rank: 64, Dense: true}}, 8192},
	}
	for _, tc := range cases {
		got, err := Global(mats, tc.keep)
		if err != nil {
			t.Fatal(err)
		}
		checkBudget(t, fmt.Sprintf("keep %v", tc.keep), mats, got)
		if fmt.Sprint(got.Choices) != fmt.Sprint(tc.want) || got.Params != tc.params {
			t.Errorf("keep %v: %v (%d params), want %v (%d)", tc.keep, got.Choices, got.Params, tc.want, tc.params)
		}
	}
}

func TestGlobalBudget(t *testing.T) {
	rng := newRNG()
	shapes := []string{"power", "exp", "flat", "step"}
	for trial := range 50 {
		n := 1 + rng.IntN(8)
		mats := make([]Matrix, n)
		for i := range mats {
			out, in := 1+rng.IntN(200), 1+rng.IntN(200)
			sh := shapes[rng.IntN(len(shapes))]
			mats[i] = Matrix{Name: fmt.Sprint(i), Out: out, In: in, Sigma: spectrum(sh, min(out, in), 0.05+2*rng.Float64()), Weight: float64(rng.IntN(3))}
		}
		minimum := 0
		for _, m := range mats {
			minimum += min(m.Out+m.In, m.Out*m.In)
		}
		for _, keep := range []float64{0.05, 0.2, 0.4, 0.6, 0.8, 0.95, 1} {
			for name, f := range map[string]func([]Matrix, float64) (Allocation, error){"global": Global, "sensitivity": sensitivityFromSpectra} {
				a, err := f(mats, keep)
				if errors.Is(err, ErrBudget) && name == "sensitivity" {
					continue
				}
				if err != nil {
					t.Fatal(err)
				}
				if a.Target < minimum {
					if a.Params != minimum {
						t.Errorf("trial %d %s keep %v: below the minimum allocation, Params %d want %d", trial, name, keep, a.Params, minimum)
					}
					continue
				}
				checkBudget(t, fmt.Sprintf("trial %d %s keep %v", trial, name, keep), mats, a)
			}
		}
	}
}

// On the heterogeneous model Global loses less normalised error than Uniform
// at every budget, and its error falls as the budget grows.
func TestGlobalBeatsUniform(t *testing.T) {
	mats := model()
	prev := math.Inf(1)
	for _, keep := range []float64{0.2, 0.4, 0.6, 0.8} {
		g, err := Global(mats, keep)
		if err != nil {
			t.Fatal(err)
		}
		u, err := Uniform(mats, keep)
		if err != nil {
			t.Fatal(err)
		}
		checkBudget(t, fmt.Sprintf("keep %v", keep), mats, g)
		ge, ue := totalError(mats, g), totalError(mats, u)
		t.Logf("keep %.1f: global %.4f (%d params), uniform %.4f (%d params)", keep, ge, g.Params, ue, u.Params)
		if ge > ue+tolError {
			t.Errorf("keep %v: global error %g above uniform %g", keep, ge, ue)
		}
		if ge > prev+tolError {
			t.Errorf("keep %v: global error %g grew from %g", keep, ge, prev)
		}
		prev = ge
	}
}

// Raising one matrix's weight never lowers its rank.
func TestGlobalWeight(t *testing.T) {
	mats := model()
	base, err := Global(mats, 0.4)
	if err != nil {
		t.Fatal(err)
	}
	for i := range mats {
		heavy := append([]Matrix(nil), mats...)
		heavy[i].Weight = 4
		a, err := Global(heavy, 0.4)
		if err != nil {
			t.Fatal(err)
		}
		if rankOf(a.Choices[i]) < rankOf(base.Choices[i]) {
			t.Errorf("%s: weight 4 gave rank %v, weight 1 %v", mats[i].Name, a.Choices[i], base.Choices[i])
		}
	}
}

func rankOf(c Choice) int {
	if c.Dense {
		return math.MaxInt
	}
	return c.Rank
}

// sensitivityFromSpectra runs Sensitivity with the normalised spectral error
// as the measured loss.
func sensitivityFromSpectra(mats []Matrix, keep float64) (Allocation, error) {
	return Sensitivity(mats, keep, func(i int, rho float64) float64 {
		m := mats[i]
		return NormalisedError(m, Choice{Rank: min(m.RankFor(rho), min(m.Out, m.In))})
	}, []float64{0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9})
}

func TestSensitivity(t *testing.T) {
	mats := model()
	calls := 0
	ratios := []float64{0.2, 0.4, 0.6, 0.8}
	loss := func(i int, rho float64) float64 {
		calls++
		m := mats[i]
		return NormalisedError(m, Choice{Rank: min(m.RankFor(rho), min(m.Out, m.In))})
	}
	prev := 0
	for _, keep := range []float64{0.3, 0.5, 0.7, 0.9} {
		calls = 0
		a, err := Sensitivity(mats, keep, loss, ratios)
		if err != nil {
			t.Fatal(err)
		}
		if calls != len(mats)*len(ratios) {
			t.Errorf("keep %v: %d measurements, want %d", keep, calls, len(mats)*len(ratios))
		}
		checkBudget(t, fmt.Sprintf("keep %v", keep), mats, a)
		if a.Params < prev {
			t.Errorf("keep %v: params %d fell from %d", keep, a.Params, prev)
		}
		prev = a.Params
		u, _ := Uniform(mats, keep)
		if se, ue := totalError(mats, a), totalError(mats, u); se > ue+tolError {
			t.Errorf("keep %v: sensitivity error %g above uniform %g", keep, se, ue)
		}
	}
	// A matrix that hurts a lot when compressed keeps more than an
	// identical one that does not.
	twins := []Matrix{{Name: "fragile", Out: 128, In: 128}, {Name: "robust", Out: 128, In: 128}}
	a, err := Sensitivity(twins, 0.5, func(i int, rho float64) float64 {
		return float64(10*(1-i)+1) * (1 - rho)
	}, ratios)
	if err != nil {
		t.Fatal(err)
	}
	checkBudget(t, "twins", twins, a)
	if rankOf(a.Choices[0]) <= rankOf(a.Choices[1]) {
		t.Errorf("fragile %v not above robust %v", a.Choices[0], a.Choices[1])
	}
	// Below the smallest measured ratio there is nothing to choose from.
	if _, err := Sensitivity(mats, 0.1, loss, ratios); !errors.Is(err, ErrBudget) {
		t.Errorf("keep 0.1 with ratios ≥ 0.2: %v, want ErrBudget", err)
	}
	if _, err := Sensitivity(mats, 0.5, func(int, float64) float64 { return math.NaN() }, ratios); err == nil {
		t.Errorf("NaN loss: no error")
	}
}

func TestLossCurve(t *testing.T) {
	c := lossCurve{rank: []int{10, 20, 40}, loss: []float64{5, 3, 1}}
	for _, tc := range []struct {
		tau  float64
		want int
	}{{6, 10}, {5, 10}, {4, 15}, {3, 20}, {2.5, 25}, {2, 30}, {1, 40}, {0.5, 0}} {
		if got := c.smallest(tc.tau); got != tc.want {
			t.Errorf("smallest(%v) = %d, want %d", tc.tau, got, tc.want)
		}
	}
	for r, want := range map[int]float64{1: 5, 10: 5, 15: 4, 30: 2, 40: 1, 99: 1} {
		if got := c.at(r); math.Abs(got-want) > 1e-15 {
			t.Errorf("at(%d) = %v, want %v", r, got, want)
		}
	}
}

// tolOptimum is how far above the exact optimum Global may land on the
// small model.
const tolOptimum = 0.01

// optimum returns the least total normalised error of any allocation within
// target parameters, by dynamic programming over the parameter count.
func optimum(mats []Matrix, target int) float64 {
	best := make([]float64, target+1)
	for _, m := range mats {
		opts := []Choice{dense(m)}
		for r := 1; r <= m.MaxRank(); r++ {
			opts = append(opts, Choice{Rank: r})
		}
		costs, errs := make([]int, len(opts)), make([]float64, len(opts))
		for j, c := range opts {
			costs[j], errs[j] = m.Cost(c), NormalisedError(m, c)
		}
		next := make([]float64, target+1)
		for p := range next {
			next[p] = math.Inf(1)
			for j, cost := range costs {
				if cost <= p {
					next[p] = math.Min(next[p], best[p-cost]+errs[j])
				}
			}
		}
		best = next
	}
	return best[target]
}

// Global against the exact optimum on the small model: the greedy plus its
// exchange repair stays within tolOptimum.
func TestGlobalNearOptimum(t *testing.T) {
	mats := model()
	for _, keep := range []float64{0.2, 0.4} {
		g, err := Global(mats, keep)
		if err != nil {
			t.Fatal(err)
		}
		ge, opt := totalError(mats, g), optimum(mats, g.Target)
		t.Logf("keep %.1f: global %.5f, optimum %.5f", keep, ge, opt)
		if ge > opt*(1+tolOptimum) {
			t.Errorf("keep %v: global %g more than %g above the optimum %g", keep, ge, tolOptimum, opt)
		}
	}
}
