package mla

import (
	"fmt"
	"math"
	"slices"
	"sort"

	"gonum.org/v1/gonum/mat"

	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/methods/internal/matx"
	"github.com/rankzip/rankzip/methods/params"
)

// Rotation is how the RoPE dims to keep are chosen.
type Rotation string

const (
	RotateNone   Rotation = "none"   // keep the first heads' own RoPE dims
	RotateKeys   Rotation = "keys"   // RoRoPE: PCA of the keys per frequency group
	RotateScores Rotation = "scores" // balanced truncation of the attention scores
)

// Attention is one GQA layer in the Hugging Face layout (rows out, columns in).
type Attention struct {
	Q, K, V                 *mat.Dense // Heads·d × hidden, KVHeads·d × hidden, KVHeads·d × hidden
	QBias, KBias, VBias     []float64  // nil when absent
	Heads, KVHeads, HeadDim int
	InvFreq                 []float64 // d/2 RoPE inverse frequencies
}

// Stats are the attention-input statistics over N calibration tokens.
type Stats struct {
	C   *mat.SymDense // Σ x xᵀ
	Sum []float64     // Σ x
	N   int
}

// Options of a conversion.
type Options struct {
	RopeDim  int // qk_rope_head_dim: even, 2 ≤ RopeDim ≤ D
	LoraRank int // kv_lora_rank: 1 ≤ LoraRank ≤ 2D
	Rotation Rotation
	FreqFold int  // adjacent frequencies mixed together (≥ 1, divides d/2)
	BKV      bool // balance keys against values before the joint PCA
	SeqLen   int  // calibration sequence length, for the distance weights of RotateScores
}

// Result is the MLA layer (NopeDim = VDim = d).
type Result struct {
	Q     *mat.Dense // Heads·(d+RopeDim) × hidden: per head [q_nope; q_rope]
	QBias []float64
	// KVA is kv_a_proj_with_mqa, (LoraRank+RopeDim) × hidden: [latent; rope key].
	KVA     *mat.Dense
	KVABias []float64
	KVB     *mat.Dense // Heads·2d × LoraRank: per head [k_nope; v]
	// RopeFreqIndex gives, per rope pair (dims 2i, 2i+1, interleaved), its
	// frequency as an index into InvFreq.
	RopeFreqIndex []int
	RopeShare     float64 // share of the calibration key energy the rope dims hold
	LatentShare   float64 // share of the [K_nope/α; V] energy the latent holds
	Alpha         float64 // the BKV scale (1 without BKV)
}

// Check validates a conversion of a layer shaped like a before any work.
func (o Options) Check(a *Attention) error {
	return params.MLA{Heads: a.Heads, KVHeads: a.KVHeads, HeadDim: a.HeadDim, Freqs: len(a.InvFreq),
		RopeDim: o.RopeDim, LoraRank: o.LoraRank, Rotation: string(o.Rotation), FreqFold: o.FreqFold, SeqLen: o.SeqLen}.Check()
}

// Convert turns the GQA layer a into MLA, calibrated on s.
func Convert(k kernels.Backend, a *Attention, s Stats, o Options) (*Result, error) {
	if err := o.Check(a); err != nil {
		return nil, err
	}
	hidden := a.Q.RawMatrix().Cols
	d, D := a.HeadDim, a.KVHeads*a.HeadDim
	if r, c := a.Q.Dims(); r != a.Heads*d || c != hidden {
		return nil, fmt.Errorf("q_proj is %d×%d, want %d×%d", r, c, a.Heads*d, hidden)
	}
	for _, w := range []struct {
		name string
		m    *mat.Dense
	}{{"k_proj", a.K}, {"v_proj", a.V}} {
		if r, c := w.m.Dims(); r != D || c != hidden {
			return nil, fmt.Errorf("%s is %d×%d, want %d×%d", w.name, r, c, D, hidden)
		}
	}
	if s.N < 1 || s.C == nil || s.C.SymmetricDim() != hidden || len(s.Sum) != hidden || !matx.FiniteSym(s.C) {
		return nil, fmt.Errorf("calibration statistics: need finite Σxxᵀ (%d×%d) and Σx over at least one token", hidden, hidden)
	}
	g := secondMoment(s)
	q, kk, v := augment(a.Q, a.QBias), augment(a.K, a.KBias), augment(a.V, a.VBias)

	// 1. Mix the heads' RoPE pairs and choose the components that keep RoPE.
	sigK := project(k, kk, g)
	var sigQ *mat.SymDense // only the scores rotation weighs by the queries
	if o.Rotation == RotateScores {
		sigQ = project(k, q, g)
	}
	groups, err := mixings(k, a, o, sigK, sigQ)
	if err != nil {
		return nil, err
	}
	kept := choose(groups, o)
	t, tinv, freq := layout(groups, kept, a.KVHeads, d)
	res := &Result{RopeFreqIndex: freq, Alpha: 1}
	dr := o.RopeDim
	res.RopeShare = ropeShare(t, tinv, sigK, dr)

	kp := mul(t, kk) // keys in the new layout: [rope (dr); nope (D−dr)]
	kRope := rowsOf(kp, 0, dr)
	kNope := rowsOf(kp, dr, D) // nil when every key keeps RoPE

	// 2. Balance, then the joint PCA of [K_nope/α; V].
	if o.BKV && kNope != nil {
		kn, vn := meanColNorm(project(k, kNope, g)), meanColNorm(project(k, v, g))
		if kn > 0 && vn > 0 {
			res.Alpha = kn / vn
		}
	}
	z := v
	if kNope != nil {
		z = stack(scaled(kNope, 1/res.Alpha), v)
	}
	basis, share, err := pca(k, project(k, z, g), o.LoraRank)
	if err != nil {
		return nil, err
	}
	res.LatentShare = share
	latent := mul(basis.T(), z) // LoraRank × (hidden+1)

	// kv_a_proj_with_mqa = [latent; rope key].
	kva := stack(latent, kRope)
	res.KVA, res.KVABias = split(kva, a.KBias != nil || a.VBias != nil)

	// kv_b_proj and q_proj per query head.
	group := a.Heads / a.KVHeads
	r := o.LoraRank
	kvb := mat.NewDense(a.Heads*2*d, r, nil)
	qOut := mat.NewDense(a.Heads*(d+dr), hidden+1, nil)
	scale := math.Sqrt(float64(d+dr)) / math.Sqrt(float64(d))
	bk := rowsOf(basis, 0, D-dr) // (D−dr) × r, nil when D = dr
	for i := range a.Heads {
		kv := i / group
		m := rowsOf(tinv, kv*d, (kv+1)*d) // the head's original key from the new layout
		mr := colsOf(m, 0, dr)
		if kNope != nil {
			kb := kvb.Slice(i*2*d, i*2*d+d, 0, r).(*mat.Dense)
			kb.Mul(colsOf(m, dr, D), bk)
			kb.Scale(res.Alpha, kb)
		}
		kvb.Slice(i*2*d+d, (i+1)*2*d, 0, r).(*mat.Dense).Copy(rowsOf(basis, D-dr+kv*d, D-dr+(kv+1)*d))

		qi := rowsOf(q, i*d, (i+1)*d)
		base := i * (d + dr)
		qOut.Slice(base, base+d, 0, hidden+1).(*mat.Dense).Scale(scale, qi)
		qr := qOut.Slice(base+d, base+d+dr, 0, hidden+1).(*mat.Dense)
		qr.Mul(mr.T(), qi)
		qr.Scale(scale, qr)
	}
	res.KVB = kvb
	res.Q, res.QBias = split(qOut, a.QBias != nil)
	if !matx.FiniteDense(res.Q) || !matx.FiniteDense(res.KVA) || !matx.FiniteDense(res.KVB) {
		return nil, fmt.Errorf("mla: the conversion produced non-finite weights (degenerate calibration statistics?)")
	}
	return res, nil
}

// secondMoment returns E[[x;1][x;1]ᵀ] over the calibration tokens, so a bias
// rides along as an extra input column.
func secondMoment(s Stats) *mat.SymDense {
	n := s.C.SymmetricDim()
	g := mat.NewSymDense(n+1, nil)
	inv := 1 / float64(s.N)
	for i := range n {
		for j := i; j < n; j++ {
			g.SetSym(i, j, s.C.At(i, j)*inv)
		}
		g.SetSym(i, n, s.Sum[i]*inv)
	}
	g.SetSym(n, n, 1)
	return g
}

// augment returns [W b] (b = 0 when nil).
func augment(w *mat.Dense, b []float64) *mat.Dense {
	r, c := w.Dims()
	out := mat.NewDense(r, c+1, nil)
	out.Slice(0, r, 0, c).(*mat.Dense).Copy(w)
	for i, v := range b {
		out.Set(i, c, v)
	}
	return out
}

// split separates [W b] into W and b (nil unless keepBias).
func split(wb *mat.Dense, keepBias bool) (*mat.Dense, []float64) {
	r, c := wb.Dims()
	w := mat.DenseCopyOf(wb.Slice(0, r, 0, c-1))
	if !keepBias {
		return w, nil
	}
	b := make([]float64, r)
	for i := range b {
		b[i] = wb.At(i, c-1)
	}
	return w, b
}

// project returns W G Wᵀ, the second moment of the outputs of W.
func project(k kernels.Backend, w *mat.Dense, g *mat.SymDense) *mat.SymDense {
	r, _ := w.Dims()
	wg := mat.NewDense(r, g.SymmetricDim(), nil)
	k.Dgemm(false, false, 1, w, matx.SymToDense(g), 0, wg)
	out := mat.NewDense(r, r, nil)
	k.Dgemm(false, true, 1, wg, w, 0, out)
	sym := mat.NewSymDense(r, nil)
	for i := range r {
		for j := i; j < r; j++ {
			sym.SetSym(i, j, (out.At(i, j)+out.At(j, i))/2)
		}
	}
	return sym
}

// group is the mixing of one group of frequencies across the KV heads.
// Components are indexed like the mixed coordinates: (head, frequency in
// the group) as head·f + j.
type group struct {
	freqs     []int      // the group's frequency indices
	a, ainv   *mat.Dense // n×n, n = KVHeads·f: k' = a k, k = ainv k'
	priority  []float64  // per component: larger keeps RoPE first
	dominant  []int      // per component: the frequency it rotates at
	keepCount int        // components to keep in this group (RotateNone, RotateKeys), or -1 (global choice)
}

// mixings computes each frequency group's mixing from the second moments of
// the keys (D×D) and, for RotateScores, of the queries (Heads·d × Heads·d).
func mixings(k kernels.Backend, a *Attention, o Options, sigK, sigQ *mat.SymDense) ([]group, error) {
	d, h, f := a.HeadDim, a.HeadDim/2, o.FreqFold
	nkv := a.KVHeads
	n := nkv * f
	perGroup := o.RopeDim / 2 * f / h
	var w []float64 // distance weight per frequency
	if o.Rotation == RotateScores {
		w = distanceWeights(a.InvFreq, o.SeqLen)
	}
	// complexMoment sums the real-real and imaginary-imaginary second moments
	// of the components (head, freq) of a group.
	complexMoment := func(sig func(i, j int) float64, freqs []int) *mat.SymDense {
		m := mat.NewSymDense(n, nil)
		for g1 := range nkv {
			for j1, f1 := range freqs {
				for g2 := range nkv {
					for j2, f2 := range freqs {
						re := sig(g1*d+f1, g2*d+f2)
						im := sig(g1*d+h+f1, g2*d+h+f2)
						m.SetSym(g1*f+j1, g2*f+j2, re+im)
					}
				}
			}
		}
		return m
	}
	var groups []group
	for first := 0; first < h; first += f {
		gr := group{freqs: make([]int, f), keepCount: -1}
		for j := range f {
			gr.freqs[j] = first + j
		}
		switch o.Rotation {
		case RotateNone:
			gr.a, gr.ainv = identity(n), identity(n)
			gr.priority = make([]float64, n)
			for c := range n {
				kv, j := c/f, gr.freqs[c%f]
				gr.priority[c] = -float64(kv*h + j) // first heads first
			}
			gr.keepCount = -1
		case RotateKeys:
			vals, vecs, err := k.Eigh(complexMoment(sigK.At, gr.freqs))
			if err != nil {
				return nil, fmt.Errorf("mla: key PCA of frequencies %v: %w", gr.freqs, err)
			}
			// Descending order: component c is eigenvector n−1−c.
			gr.ainv = mat.NewDense(n, n, nil)
			gr.priority = make([]float64, n)
			for c := range n {
				gr.ainv.SetCol(c, mat.Col(nil, n-1-c, vecs))
				gr.priority[c] = vals[n-1-c]
			}
			gr.a = mat.DenseCopyOf(gr.ainv.T())
			gr.keepCount = perGroup
		case RotateScores:
			// Σ_q per group: queries of the heads sharing each KV head.
			perKV := a.Heads / nkv
			sq := mat.NewSymDense(n, nil)
			for kv := range nkv {
				for hh := kv * perKV; hh < (kv+1)*perKV; hh++ {
					for j1, f1 := range gr.freqs {
						for j2, f2 := range gr.freqs {
							re := sigQ.At(hh*d+f1, hh*d+f2)
							im := sigQ.At(hh*d+h+f1, hh*d+h+f2)
							sq.SetSym(kv*f+j1, kv*f+j2, sq.At(kv*f+j1, kv*f+j2)+re+im)
						}
					}
				}
			}
			var err error
			if gr.a, gr.ainv, gr.priority, err = balanced(k, complexMoment(sigK.At, gr.freqs), sq); err != nil {
				return nil, fmt.Errorf("mla: score rotation of frequencies %v: %w", gr.freqs, err)
			}
		}
		gr.dominant = make([]int, n)
		for c := range n {
			best, bestE := 0, -1.0
			for j, fj := range gr.freqs {
				var e float64
				for kv := range nkv {
					x := gr.ainv.At(kv*f+j, c)
					e += x * x
				}
				if e > bestE {
					best, bestE = fj, e
				}
			}
			gr.dominant[c] = best
			if w != nil {
				gr.priority[c] *= w[best]
			}
		}
		groups = append(groups, gr)
	}
	return groups, nil
}

// balanced returns the mixing a (and its inverse) under which keys and
// queries have equal, diagonal second moments s_c, and s_c² per component.
func balanced(k kernels.Backend, sk, sq *mat.SymDense) (a, ainv *mat.Dense, prio []float64, err error) {
	n := sk.SymmetricDim()
	lk, err := k.Cholesky(damped(sk))
	if err != nil {
		return nil, nil, nil, err
	}
	lq, err := k.Cholesky(damped(sq))
	if err != nil {
		return nil, nil, nil, err
	}
	var prod mat.Dense
	prod.Mul(lq.T(), lk)
	_, s, vt, err := k.SVD(&prod)
	if err != nil {
		return nil, nil, nil, err
	}
	// ainv = L_k V S^-½, a = S^½ Vᵀ L_k⁻¹.
	ainv = mat.NewDense(n, n, nil)
	ainv.Mul(lk, vt.T())
	var lkinv mat.TriDense
	if err := lkinv.InverseTri(lk); err != nil {
		return nil, nil, nil, err
	}
	a = mat.NewDense(n, n, nil)
	a.Mul(vt, &lkinv)
	prio = make([]float64, n)
	for c, sv := range s {
		if sv <= 0 {
			return nil, nil, nil, fmt.Errorf("singular value %d is %v", c, sv)
		}
		r := math.Sqrt(sv)
		for i := range n {
			ainv.Set(i, c, ainv.At(i, c)/r)
			a.Set(c, i, a.At(c, i)*r)
		}
		prio[c] = sv * sv
	}
	return a, ainv, prio, nil
}

// damped adds a small multiple of the mean diagonal so a Cholesky factor
// exists for a rank-deficient second moment.
func damped(s *mat.SymDense) *mat.SymDense {
	n := s.SymmetricDim()
	var tr float64
	for i := range n {
		tr += s.At(i, i)
	}
	eps := 1e-6*tr/float64(n) + 1e-300
	out := mat.NewSymDense(n, nil)
	out.CopySym(s)
	for i := range n {
		out.SetSym(i, i, out.At(i, i)+eps)
	}
	return out
}

// distanceWeights returns w(θ) = E|e^{iθΔ}−1|² = 2 − 2E cos(θΔ) per
// frequency, Δ over the causal query–key pairs of a sequence of seqLen
// tokens (distance Δ occurs seqLen−Δ times).
func distanceWeights(inv []float64, seqLen int) []float64 {
	w := make([]float64, len(inv))
	for j, th := range inv {
		var sum, n float64
		for dd := range seqLen {
			c := float64(seqLen - dd)
			sum += c * (2 - 2*math.Cos(th*float64(dd)))
			n += c
		}
		w[j] = sum / n
	}
	return w
}

// component names one mixed component: group index and component index.
type component struct{ g, c int }

// choose picks the RopeDim/2 components that keep RoPE.
func choose(groups []group, o Options) []component {
	m := o.RopeDim / 2
	var all []component
	for gi, gr := range groups {
		if gr.keepCount >= 0 {
			idx := make([]int, len(gr.priority))
			for i := range idx {
				idx[i] = i
			}
			sort.SliceStable(idx, func(x, y int) bool { return gr.priority[idx[x]] > gr.priority[idx[y]] })
			for _, c := range idx[:gr.keepCount] {
				all = append(all, component{gi, c})
			}
			continue
		}
		for c := range gr.priority {
			all = append(all, component{gi, c})
		}
	}
	if groups[0].keepCount < 0 {
		sort.SliceStable(all, func(x, y int) bool {
			return groups[all[x].g].priority[all[x].c] > groups[all[y].g].priority[all[y].c]
		})
		all = all[:m]
	}
	// Rope pairs in frequency order (then by strength), a stable layout.
	sort.SliceStable(all, func(x, y int) bool {
		return groups[all[x].g].dominant[all[x].c] < groups[all[y].g].dominant[all[y].c]
	})
	return all
}

// layout builds the D×D map t from the stacked keys (rotate-half per head)
// to the new layout [rope pairs interleaved (re, im); the other components'
// real and imaginary dims], its inverse, and the rope pairs' frequencies.
func layout(groups []group, kept []component, nkv, d int) (t, tinv *mat.Dense, freq []int) {
	D, h := nkv*d, d/2
	t, tinv = mat.NewDense(D, D, nil), mat.NewDense(D, D, nil)
	isKept := map[component]bool{}
	for _, c := range kept {
		isKept[c] = true
	}
	order := slices.Clone(kept)
	for gi, gr := range groups {
		for c := range gr.priority {
			if !isKept[component{gi, c}] {
				order = append(order, component{gi, c})
			}
		}
	}
	nope := 2 * len(kept)
	for pos, cp := range order {
		re, im := 2*pos, 2*pos+1
		if pos >= len(kept) {
			re, im = nope, nope+1
			nope += 2
		}
		gr := groups[cp.g]
		f := len(gr.freqs)
		for kv := range nkv {
			for j, fj := range gr.freqs {
				x := kv*f + j
				t.Set(re, kv*d+fj, gr.a.At(cp.c, x))
				t.Set(im, kv*d+h+fj, gr.a.At(cp.c, x))
				tinv.Set(kv*d+fj, re, gr.ainv.At(x, cp.c))
				tinv.Set(kv*d+h+fj, im, gr.ainv.At(x, cp.c))
			}
		}
		if pos < len(kept) {
			freq = append(freq, gr.dominant[cp.c])
		}
	}
	return t, tinv, freq
}

// ropeShare is the share of the key energy in the (oblique) projection onto
// the first dr dims of the new layout.
func ropeShare(t, tinv *mat.Dense, sig *mat.SymDense, dr int) float64 {
	D, _ := t.Dims()
	var p mat.Dense
	p.Mul(colsOf(tinv, 0, dr), rowsOf(t, 0, dr))
	var ps, psp mat.Dense
	ps.Mul(&p, sig)
	psp.Mul(&ps, p.T())
	var kept, total float64
	for i := range D {
		kept += psp.At(i, i)
		total += sig.At(i, i)
	}
	if total <= 0 {
		return 0
	}
	return kept / total
}

// meanColNorm is the mean over output dims of √E[y²] (the column norms of
// the calibration outputs, up to the common √N).
func meanColNorm(sig *mat.SymDense) float64 {
	n := sig.SymmetricDim()
	var s float64
	for i := range n {
		s += math.Sqrt(max(sig.At(i, i), 0))
	}
	return s / float64(n)
}

// pca returns the leading r eigenvectors of sig as columns (zero columns
// beyond its size) and the share of the trace they hold.
func pca(k kernels.Backend, sig *mat.SymDense, r int) (*mat.Dense, float64, error) {
	n := sig.SymmetricDim()
	vals, vecs, err := k.Eigh(sig)
	if err != nil {
		return nil, 0, fmt.Errorf("mla: PCA of [K_nope; V]: %w", err)
	}
	basis := mat.NewDense(n, r, nil)
	var kept, total float64
	for _, v := range vals {
		total += max(v, 0)
	}
	for c := range min(r, n) {
		basis.SetCol(c, mat.Col(nil, n-1-c, vecs))
		kept += max(vals[n-1-c], 0)
	}
	if total <= 0 {
		return basis, 1, nil
	}
	return basis, kept / total, nil
}

func identity(n int) *mat.Dense {
	m := mat.NewDense(n, n, nil)
	for i := range n {
		m.Set(i, i, 1)
	}
	return m
}

func mul(a, b mat.Matrix) *mat.Dense {
	var m mat.Dense
	m.Mul(a, b)
	return &m
}

// rowsOf copies rows [lo, hi) of m; nil when empty (gonum has no empty matrices).
func rowsOf(m *mat.Dense, lo, hi int) *mat.Dense {
	_, c := m.Dims()
	if hi <= lo {
		return nil
	}
	return mat.DenseCopyOf(m.Slice(lo, hi, 0, c))
}

func colsOf(m *mat.Dense, lo, hi int) *mat.Dense {
	r, _ := m.Dims()
	return mat.DenseCopyOf(m.Slice(0, r, lo, hi))
}

func scaled(m *mat.Dense, s float64) *mat.Dense {
	var out mat.Dense
	out.Scale(s, m)
	return &out
}

// stack returns [a; b].
func stack(a, b *mat.Dense) *mat.Dense {
	ra, c := a.Dims()
	rb, _ := b.Dims()
	out := mat.NewDense(ra+rb, c, nil)
	out.Slice(0, ra, 0, c).(*mat.Dense).Copy(a)
	out.Slice(ra, ra+rb, 0, c).(*mat.Dense).Copy(b)
	return out
}
