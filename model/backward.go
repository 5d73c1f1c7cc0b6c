package model

import (
	"errors"
	"fmt"
	"math"

	"gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/gonum"

	"github.com/rankzip/rankzip/kernels"
)

// Grad is the gradient of the loss with respect to one module's parameters,
// in the parameter's own layout (out×in row-major for a linear weight).
type Grad struct {
	Weight []float32
	Bias   []float32 // nil when the module has no bias
}

// Gradients is the result of Backward.
type Gradients struct {
	Loss   float64 // mean next-token cross-entropy in nats
	Tokens int     // predicted tokens: Σ (len(seq) − 1)
	Grads  map[string]*Grad
}

// ErrBackward reports a model or request the backward pass cannot handle.
var ErrBackward = errors.New("backward")

// GradientNames lists the parameters Backward differentiates: every block's
// linear layers (model.layers.i.self_attn.k_proj, ...) and norms
// (model.layers.i.input_layernorm, model.layers.i.post_attention_layernorm,
// and Qwen3's model.layers.i.self_attn.q_norm and k_norm) and the final norm
// (model.norm). The embeddings and the LM head are not
// offered.
func (m *Model) GradientNames() []string {
	var names []string
	for i := range m.Blocks {
		p := LayerPrefix(i)
		for _, mod := range Modules {
			names = append(names, p+mod)
		}
		for _, nm := range blockNorms(m.Config) {
			names = append(names, p+nm.name)
		}
	}
	return append(names, "model.norm")
}

// Backward runs the model on a batch of token sequences and returns the mean
// next-token cross-entropy (every position but the last of each sequence
// predicts the following token) and its gradients with respect to the named
// parameters (see GradientNames). It needs dense linear layers and no MLA.
// Activations are float32 as in Forward; reductions (norms, softmaxes, the
// loss, attention sums) accumulate in float64.
func (m *Model) Backward(seqs [][]int32, names []string) (*Gradients, error) {
	n, err := newNet[float32](m, names)
	if err != nil {
		return nil, err
	}
	loss, tokens, err := n.run(seqs, true)
	if err != nil {
		return nil, err
	}
	g := &Gradients{Loss: loss, Tokens: tokens, Grads: make(map[string]*Grad, len(names))}
	for _, name := range names {
		w, b := n.grad(name)
		g.Grads[name] = &Grad{Weight: w, Bias: b}
	}
	return g, nil
}

// dense is a linear layer in T with its gradient buffers (nil: not wanted).
type dense[T float32 | float64] struct {
	w, b     []T
	out, in  int
	gw, gb   []T
	wantGrad bool
	frozen   bool // the product of a factored layer: no gradient offered
}

// product returns the product B A of a factored layer and its bias (B's,
// plus B times A's when A has one).
func product(f *Factored) (w, bias []float32) {
	out, in, r := f.B.out, f.A.in, f.A.out
	w = make([]float32, out*in)
	acc := make([]float64, in)
	for i := range out {
		row := w[i*in : (i+1)*in]
		clear(acc)
		for k, bk := range f.B.Weight[i*r : (i+1)*r] {
			for j, a := range f.A.Weight[k*in : (k+1)*in] {
				acc[j] += float64(bk) * float64(a)
			}
		}
		for j, a := range acc {
			row[j] = float32(a)
		}
	}
	if f.A.Bias == nil {
		return w, f.B.Bias
	}
	bias = make([]float32, out)
	for i := range out {
		var s float64
		if f.B.Bias != nil {
			s = float64(f.B.Bias[i])
		}
		for k, bk := range f.B.Weight[i*r : (i+1)*r] {
			s += float64(bk) * float64(f.A.Bias[k])
		}
		bias[i] = float32(s)
	}
	return w, bias
}

// vec is an RMSNorm weight and its gradient.
type vec[T float32 | float64] struct {
	w, g []T
}

type netBlock[T float32 | float64] struct {
	attnNorm, mlpNorm *vec[T]
	qNorm, kNorm      *vec[T] // per-head q/k norms (Qwen3, Gemma 3), nil for Llama
	// Gemma 3: norms of the attention and MLP outputs; mlpNorm is then
	// pre_feedforward_layernorm. Gemma's norms hold 1 + w (the gradient
	// with respect to w is the same).
	postAttn, postFFN          *vec[T]
	scores                     scoring
	local                      bool // Gemma 3's local RoPE
	gelu                       bool // GeGLU (Gemma 3) instead of SwiGLU
	q, k, v, o, gate, up, down *dense[T]
}

// net is the model's parameters in T, the form the backward pass runs on;
// float64 serves the gradient check.
type net[T float32 | float64] struct {
	m      *Model
	c      *Config
	kb     kernels.Backend
	embed  []T
	blocks []*netBlock[T]
	norm   *vec[T]
	head   *dense[T]
}

// convert returns x as []T: x itself for float32, a copy for float64.
func convert[T float32 | float64](x []float32) []T {
	if x == nil {
		return nil
	}
	if v, ok := any(x).([]T); ok {
		return v
	}
	out := make([]T, len(x))
	for i, v := range x {
		out[i] = T(v)
	}
	return out
}

func toF32[T float32 | float64](x []T) []float32 {
	if x == nil {
		return nil
	}
	if v, ok := any(x).([]float32); ok {
		return v
	}
	out := make([]float32, len(x))
	for i, v := range x {
		out[i] = float32(v)
	}
	return out
}

func newNet[T float32 | float64](m *Model, names []string) (*net[T], error) {
	n, err := newTopNet[T](m)
	if err != nil {
		return nil, err
	}
	for i, b := range m.Blocks {
		if n.blocks[i], err = n.newBlock(i, b); err != nil {
			return nil, err
		}
	}
	return n, n.want(names)
}

// newTopNet returns the net of m's embeddings, final norm and LM head, with
// room for every block (nil until newBlock fills it).
func newTopNet[T float32 | float64](m *Model) (*net[T], error) {
	n, err := newBareNet[T](m)
	if err != nil {
		return nil, err
	}
	n.embed = convert[T](m.Embed)
	n.norm = n.normVec(m.Norm)
	if n.head, err = netLinear[T](m.LMHead, "lm_head"); err != nil {
		return nil, err
	}
	return n, nil
}

// newBareNet returns a net of m with room for every block and without its
// embeddings, final norm and LM head, for steps that run blocks only.
func newBareNet[T float32 | float64](m *Model) (*net[T], error) {
	if err := m.Config.Unsupported(FeatureBackward); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBackward, err)
	}
	return &net[T]{m: m, c: m.Config, kb: m.Backend, blocks: make([]*netBlock[T], m.Config.NumLayers)}, nil
}

// netLinear is a linear layer in T.
func netLinear[T float32 | float64](l Linear, what string) (*dense[T], error) {
	switch d := l.(type) {
	case *Dense:
		return &dense[T]{w: convert[T](d.Weight), b: convert[T](d.Bias), out: d.out, in: d.in}, nil
	case *Factored:
		// Gradients flow through it as through its product B A; its
		// own factors are not differentiated.
		w, b := product(d)
		return &dense[T]{w: convert[T](w), b: convert[T](b), out: d.Out(), in: d.In(), frozen: true}, nil
	}
	return nil, fmt.Errorf("%w: %s is %T; the backward pass runs through dense and factored linear layers only", ErrBackward, what, l)
}

// newBlock returns block i of the model, b, in T.
func (n *net[T]) newBlock(i int, b *Block) (*netBlock[T], error) {
	if b.MLA != nil {
		return nil, fmt.Errorf("%w: block %d uses latent attention (MLA), which the backward pass does not support", ErrBackward, i)
	}
	c := n.c
	nb := &netBlock[T]{attnNorm: n.normVec(b.AttnNorm), mlpNorm: n.normVec(b.MLPNorm),
		scores: scoring{window: c.window(b), scale: float64(c.attnScale()), softcap: c.attnSoftcap()}, local: c.Gemma != nil && b.Sliding, gelu: c.Act == "gelu_pytorch_tanh"}
	if c.Gemma == nil {
		nb.scores.scale = 1 / math.Sqrt(float64(c.HeadDim))
	}
	if b.QNorm != nil {
		nb.qNorm, nb.kNorm = n.normVec(b.QNorm), n.normVec(b.KNorm)
	}
	if b.PostAttnNorm != nil {
		nb.postAttn, nb.postFFN = n.normVec(b.PostAttnNorm), n.normVec(b.PostFFNNorm)
	}
	for _, mod := range Modules {
		d, err := netLinear[T](*b.Linear(mod), ModuleName(i, mod))
		if err != nil {
			return nil, err
		}
		*nb.linear(mod) = d
	}
	return nb, nil
}

// want marks the named parameters for gradients.
func (n *net[T]) want(names []string) error {
	seen := map[string]bool{}
	for _, name := range names {
		if seen[name] {
			return fmt.Errorf("%w: parameter %q requested twice", ErrBackward, name)
		}
		seen[name] = true
		d, v := n.param(name)
		switch {
		case d != nil && d.frozen:
			return fmt.Errorf("%w: %s is factored; only the gradients of dense weights are computed", ErrBackward, name)
		case d != nil:
			d.wantGrad = true
		case v != nil:
			v.g = make([]T, len(v.w))
		default:
			return fmt.Errorf("%w: no gradient for %q (want model.layers.<i>.<module or norm> or model.norm)", ErrBackward, name)
		}
	}
	return nil
}

func (b *netBlock[T]) linear(mod string) **dense[T] {
	switch mod {
	case "self_attn.q_proj":
		return &b.q
	case "self_attn.k_proj":
		return &b.k
	case "self_attn.v_proj":
		return &b.v
	case "self_attn.o_proj":
		return &b.o
	case "mlp.gate_proj":
		return &b.gate
	case "mlp.up_proj":
		return &b.up
	case "mlp.down_proj":
		return &b.down
	}
	return nil
}

// param finds a named parameter: a linear layer or a norm weight.
func (n *net[T]) param(name string) (*dense[T], *vec[T]) {
	if name == "model.norm" {
		return nil, n.norm
	}
	i, mod, ok := ParseModuleName(name)
	if !ok || i >= len(n.blocks) || n.blocks[i] == nil {
		return nil, nil
	}
	b := n.blocks[i]
	if b.postAttn != nil { // Gemma 3's names
		switch mod {
		case "post_attention_layernorm":
			return nil, b.postAttn
		case "pre_feedforward_layernorm":
			return nil, b.mlpNorm
		case "post_feedforward_layernorm":
			return nil, b.postFFN
		}
	}
	switch mod {
	case "input_layernorm":
		return nil, b.attnNorm
	case "post_attention_layernorm":
		return nil, b.mlpNorm
	case "self_attn.q_norm", "self_attn.k_norm":
		if b.qNorm == nil {
			return nil, nil
		}
		if mod == "self_attn.q_norm" {
			return nil, b.qNorm
		}
		return nil, b.kNorm
	}
	if l := b.linear(mod); l != nil {
		return *l, nil
	}
	return nil, nil
}

// grad returns the gradient of a requested parameter as float32.
func (n *net[T]) grad(name string) (w, b []float32) {
	d, v := n.param(name)
	if d != nil {
		return toF32(d.gw), toF32(d.gb)
	}
	return toF32(v.g), nil
}

// gemm is C = op(A) op(B) + beta C on whole row-major matrices: the backend's
// Sgemm for float32, gonum's Dgemm for float64.
func gemm[T float32 | float64](kb kernels.Backend, tA, tB bool, m, n, k int, a []T, lda int, b []T, ldb int, beta T, c []T, ldc int) {
	switch a := any(a).(type) {
	case []float32:
		kb.Sgemm(tA, tB, m, n, k, 1, a, lda, any(b).([]float32), ldb, float32(beta), any(c).([]float32), ldc)
	case []float64:
		if m == 0 || n == 0 {
			return
		}
		tr := func(t bool) blas.Transpose {
			if t {
				return blas.Trans
			}
			return blas.NoTrans
		}
		gonum.Implementation{}.Dgemm(tr(tA), tr(tB), m, n, k, 1, a, lda, any(b).([]float64), ldb, float64(beta), any(c).([]float64), ldc)
	}
}

// forward writes y = x Wᵀ + b.
func (d *dense[T]) forward(kb kernels.Backend, y, x []T, rows int) {
	gemm(kb, false, true, rows, d.out, d.in, x, d.in, d.w, d.in, 0, y, d.out)
	if d.b != nil {
		for r := range rows {
			row := y[r*d.out : (r+1)*d.out]
			for j, b := range d.b {
				row[j] += b
			}
		}
	}
}

// backward adds dy to the parameter gradients when wanted, and writes
// (accumulate false) or adds dx = dy W.
func (d *dense[T]) backward(kb kernels.Backend, dy, x, dx []T, rows int, accumulate bool) {
	if d.wantGrad {
		if d.gw == nil {
			d.gw = make([]T, len(d.w))
			if d.b != nil {
				d.gb = make([]T, len(d.b))
			}
		}
		gemm(kb, true, false, d.out, d.in, rows, dy, d.out, x, d.in, 1, d.gw, d.in)
		if d.b != nil {
			acc := make([]float64, d.out)
			for r := range rows {
				for j, g := range dy[r*d.out : (r+1)*d.out] {
					acc[j] += float64(g)
				}
			}
			for j, a := range acc {
				d.gb[j] += T(a)
			}
		}
	}
	if dx != nil {
		var beta T
		if accumulate {
			beta = 1
		}
		gemm(kb, false, false, rows, d.in, d.out, dy, d.out, d.w, d.in, beta, dx, d.in)
	}
}

// normForward writes the RMSNorm of each row of x into y and its inverse
// root mean square into inv.
func normForward[T float32 | float64](y, x, w []T, inv []T, rows, dim int, eps float64) {
	parallelFor(rows, max(1, 4096/dim), func(lo, hi int) {
		for r := lo; r < hi; r++ {
			row := x[r*dim : (r+1)*dim]
			var ss float64
			for _, v := range row {
				ss += float64(v) * float64(v)
			}
			s := T(1 / math.Sqrt(ss/float64(dim)+eps))
			inv[r] = s
			out := y[r*dim : (r+1)*dim]
			for i, v := range row {
				out[i] = w[i] * (v * s)
			}
		}
	})
}

// normBackward adds to dx the gradient through y = w ⊙ x·s, s = (mean x² +
// eps)^-½, given dy: dx = s w⊙dy − x s³/dim Σ w⊙dy⊙x; and to gw (if not
// nil) Σ_rows dy⊙x·s.
func normBackward[T float32 | float64](dx, dy, x, w, inv, gw []T, rows, dim int) {
	parallelFor(rows, max(1, 4096/dim), func(lo, hi int) {
		for r := lo; r < hi; r++ {
			xr, dyr, dxr := x[r*dim:(r+1)*dim], dy[r*dim:(r+1)*dim], dx[r*dim:(r+1)*dim]
			s := float64(inv[r])
			var dot float64
			for i, v := range xr {
				dot += float64(w[i]) * float64(dyr[i]) * float64(v)
			}
			c := dot * s * s * s / float64(dim)
			for i, v := range xr {
				dxr[i] += T(s*float64(w[i])*float64(dyr[i]) - float64(v)*c)
			}
		}
	})
	if gw == nil {
		return
	}
	acc := make([]float64, dim)
	for r := range rows {
		s := float64(inv[r])
		xr, dyr := x[r*dim:(r+1)*dim], dy[r*dim:(r+1)*dim]
		for i, v := range xr {
			acc[i] += float64(dyr[i]) * float64(v) * s
		}
	}
	for i, a := range acc {
		gw[i] += T(a)
	}
}

// rotary holds cos and sin per row (rows×HeadDim/2) in float64.
type rotary struct {
	cos, sin []float64
	half     int
}

func newRotary(inv []float64, pos []int) *rotary {
	r := &rotary{cos: make([]float64, len(pos)*len(inv)), sin: make([]float64, len(pos)*len(inv)), half: len(inv)}
	for row, p := range pos {
		for i, f := range inv {
			r.sin[row*r.half+i], r.cos[row*r.half+i] = math.Sincos(float64(p) * f)
		}
	}
	return r
}

// rotate applies RoPE (rotate-half convention) to every head of x; inverse
// rotates by the opposite angle, which is the transpose and so carries a
// gradient back through the rotation.
func rotate[T float32 | float64](r *rotary, x []T, rows, heads, headDim int, inverse bool) {
	half, width := r.half, heads*headDim
	sign := 1.0
	if inverse {
		sign = -1
	}
	parallelFor(rows, 64, func(lo, hi int) {
		for row := lo; row < hi; row++ {
			cs, sn := r.cos[row*half:(row+1)*half], r.sin[row*half:(row+1)*half]
			for h := range heads {
				v := x[row*width+h*headDim : row*width+(h+1)*headDim]
				for i := range half {
					a, b := float64(v[i]), float64(v[i+half])
					s := sign * sn[i]
					v[i] = T(a*cs[i] - b*s)
					v[i+half] = T(b*cs[i] + a*s)
				}
			}
		}
	})
}

// scoring is how a block's attention scores its keys: the window (0: full
// causal), the scale and the soft cap (0: none; scores = cap·tanh(s/cap)).
type scoring struct {
	window         int
	scale, softcap float64
}

// probs writes into p[first..i] the causal softmax of query row qi against
// the keys of rows first..i (stride kvd, columns from off), and, when the
// scores are soft-capped and capGrad is not nil, the derivative of each
// capped score by the scaled one (1 − tanh²) into capGrad[first..i]. fast
// takes the exponentials in float32 (exp32, as Forward does), enough for
// float32 activations and several times cheaper than math.Exp.
func probs[T float32 | float64](p, capGrad []float64, qi, kk []T, kvd, off, first, i int, sc scoring, fast bool) {
	mx := math.Inf(-1)
	for j := first; j <= i; j++ {
		kj := kk[j*kvd+off : j*kvd+off+len(qi)]
		var dot float64
		for t, x := range qi {
			dot += float64(x) * float64(kj[t])
		}
		p[j] = dot * sc.scale
		if sc.softcap > 0 {
			th := math.Tanh(p[j] / sc.softcap)
			p[j] = sc.softcap * th
			if capGrad != nil {
				capGrad[j] = 1 - th*th
			}
		}
		mx = max(mx, p[j])
	}
	var sum float64
	for j := first; j <= i; j++ {
		if fast {
			p[j] = float64(exp32(float32(p[j] - mx)))
		} else {
			p[j] = math.Exp(p[j] - mx)
		}
		sum += p[j]
	}
	for j := first; j <= i; j++ {
		p[j] /= sum
	}
}

// firstKey is the first key row a query row i attends to.
func firstKey(window, i int) int {
	if window > 0 {
		return max(0, i-window+1)
	}
	return 0
}

// attend computes causal grouped-query attention in float64 sums, parallel
// over (sequence, KV head) pairs.
func attend[T float32 | float64](c *Config, out, q, kk, v []T, starts []int, sc scoring) {
	d := c.HeadDim
	qd, kvd, group := c.NumHeads*d, c.NumKVHeads*d, c.NumHeads/c.NumKVHeads
	_, fast := any(out).([]float32)
	pairs := (len(starts) - 1) * c.NumKVHeads
	parallelFor(pairs, 1, func(lo, hi int) {
		var p []float64
		o := make([]float64, d)
		for pi := lo; pi < hi; pi++ {
			s, kvh := pi/c.NumKVHeads, pi%c.NumKVHeads
			r0, n := starts[s], starts[s+1]-starts[s]
			if cap(p) < n {
				p = make([]float64, n)
			}
			p = p[:n]
			ks, vs := kk[r0*kvd:], v[r0*kvd:]
			for h := kvh * group; h < (kvh+1)*group; h++ {
				for i := range n {
					first := firstKey(sc.window, i)
					probs(p, nil, q[(r0+i)*qd+h*d:(r0+i)*qd+(h+1)*d], ks, kvd, kvh*d, first, i, sc, fast)
					clear(o)
					for j := first; j <= i; j++ {
						for t, x := range vs[j*kvd+kvh*d : j*kvd+(kvh+1)*d] {
							o[t] += p[j] * float64(x)
						}
					}
					dst := out[(r0+i)*qd+h*d : (r0+i)*qd+(h+1)*d]
					for t, x := range o {
						dst[t] = T(x)
					}
				}
			}
		}
	})
}

// attendBackward turns the gradient dout of the attention output into the
// gradients of the rotated queries, keys and values (overwritten). Each
// (sequence, KV head) pair owns its rows of dk and dv, so the pairs run in
// parallel without sharing.
func attendBackward[T float32 | float64](c *Config, dout, q, kk, v, dq, dk, dv []T, starts []int, sc scoring) {
	d := c.HeadDim
	qd, kvd, group := c.NumHeads*d, c.NumKVHeads*d, c.NumHeads/c.NumKVHeads
	_, fast := any(dout).([]float32)
	pairs := (len(starts) - 1) * c.NumKVHeads
	parallelFor(pairs, 1, func(lo, hi int) {
		var p, dp, capGrad, gk, gv []float64
		gq := make([]float64, d)
		for pi := lo; pi < hi; pi++ {
			s, kvh := pi/c.NumKVHeads, pi%c.NumKVHeads
			r0, n := starts[s], starts[s+1]-starts[s]
			if cap(p) < n {
				p, dp, capGrad = make([]float64, n), make([]float64, n), make([]float64, n)
			}
			if cap(gk) < n*d {
				gk, gv = make([]float64, n*d), make([]float64, n*d)
			}
			p, dp, capGrad, gk, gv = p[:n], dp[:n], capGrad[:n], gk[:n*d], gv[:n*d]
			clear(gk)
			clear(gv)
			ks, vs := kk[r0*kvd:], v[r0*kvd:]
			for h := kvh * group; h < (kvh+1)*group; h++ {
				for i := range n {
					first := firstKey(sc.window, i)
					qi := q[(r0+i)*qd+h*d : (r0+i)*qd+(h+1)*d]
					doi := dout[(r0+i)*qd+h*d : (r0+i)*qd+(h+1)*d]
					probs(p, capGrad, qi, ks, kvd, kvh*d, first, i, sc, fast)
					// dP_j = dO_i·v_j; dS_j = P_j (dP_j − Σ P dP).
					var sum float64
					for j := first; j <= i; j++ {
						var dot float64
						for t, x := range vs[j*kvd+kvh*d : j*kvd+(kvh+1)*d] {
							dot += float64(doi[t]) * float64(x)
						}
						dp[j] = dot
						sum += p[j] * dot
					}
					clear(gq)
					for j := first; j <= i; j++ {
						ds := p[j] * (dp[j] - sum) * sc.scale
						if sc.softcap > 0 { // through cap·tanh(s/cap)
							ds *= capGrad[j]
						}
						kj := ks[j*kvd+kvh*d : j*kvd+(kvh+1)*d]
						for t := range d {
							gq[t] += ds * float64(kj[t])
							gk[j*d+t] += ds * float64(qi[t])
							gv[j*d+t] += p[j] * float64(doi[t])
						}
					}
					dst := dq[(r0+i)*qd+h*d : (r0+i)*qd+(h+1)*d]
					for t, x := range gq {
						dst[t] = T(x)
					}
				}
			}
			for j := range n {
				for t := range d {
					dk[(r0+j)*kvd+kvh*d+t] = T(gk[j*d+t])
					dv[(r0+j)*kvd+kvh*d+t] = T(gv[j*d+t])
				}
			}
		}
	})
}

// saved holds what one block's backward pass needs from its forward pass.
type saved[T float32 | float64] struct {
	h, xa, invA  []T // block input, its norm and inverse RMS
	q, k, v, att []T // rotated queries and keys, values, attention output
	// Qwen3, Gemma 3: queries and keys before their per-head norms, inverse RMS per head.
	qPre, kPre, invQ, invK []T
	// Gemma 3: attention and MLP outputs before their norms, inverse RMS.
	oPre, invO, dPre, invD []T
	h1, xm, invM           []T // residual after attention, its norm and inverse RMS
	gate, up, act          []T // MLP projections and silu(gate)·up
}

func sigmoid(x float64) float64 { return 1 / (1 + math.Exp(-x)) }

// blockForward runs block b on h (rows×hidden) and returns its output and
// the saved activations.
func (n *net[T]) blockForward(b *netBlock[T], h []T, starts []int, rot *rotary) ([]T, *saved[T]) {
	c, kb := n.c, n.kb
	rows, dim := starts[len(starts)-1], c.HiddenSize
	s := &saved[T]{h: h, xa: make([]T, rows*dim), invA: make([]T, rows)}
	normForward(s.xa, h, b.attnNorm.w, s.invA, rows, dim, c.RMSNormEps)
	s.q, s.k, s.v = make([]T, rows*b.q.out), make([]T, rows*b.k.out), make([]T, rows*b.v.out)
	b.q.forward(kb, s.q, s.xa, rows)
	b.k.forward(kb, s.k, s.xa, rows)
	b.v.forward(kb, s.v, s.xa, rows)
	if b.qNorm != nil {
		hq, hk := rows*c.NumHeads, rows*c.NumKVHeads
		s.qPre, s.kPre, s.invQ, s.invK = s.q, s.k, make([]T, hq), make([]T, hk)
		s.q, s.k = make([]T, len(s.qPre)), make([]T, len(s.kPre))
		normForward(s.q, s.qPre, b.qNorm.w, s.invQ, hq, c.HeadDim, c.RMSNormEps)
		normForward(s.k, s.kPre, b.kNorm.w, s.invK, hk, c.HeadDim, c.RMSNormEps)
	}
	rotate(rot, s.q, rows, c.NumHeads, c.HeadDim, false)
	rotate(rot, s.k, rows, c.NumKVHeads, c.HeadDim, false)
	s.att = make([]T, rows*b.q.out)
	attend(c, s.att, s.q, s.k, s.v, starts, b.scores)
	s.h1 = make([]T, rows*dim)
	b.o.forward(kb, s.h1, s.att, rows)
	if b.postAttn != nil {
		s.oPre, s.invO = s.h1, make([]T, rows)
		s.h1 = make([]T, rows*dim)
		normForward(s.h1, s.oPre, b.postAttn.w, s.invO, rows, dim, c.RMSNormEps)
	}
	for i := range s.h1 {
		s.h1[i] += h[i]
	}
	s.xm, s.invM = make([]T, rows*dim), make([]T, rows)
	normForward(s.xm, s.h1, b.mlpNorm.w, s.invM, rows, dim, c.RMSNormEps)
	inter := b.gate.out
	s.gate, s.up, s.act = make([]T, rows*inter), make([]T, rows*inter), make([]T, rows*inter)
	b.gate.forward(kb, s.gate, s.xm, rows)
	b.up.forward(kb, s.up, s.xm, rows)
	parallelFor(len(s.act), 1<<14, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			g := float64(s.gate[i])
			if b.gelu {
				s.act[i] = T(geluTanh64(g) * float64(s.up[i]))
			} else {
				s.act[i] = T(g * sigmoid(g) * float64(s.up[i]))
			}
		}
	})
	out := make([]T, rows*dim)
	b.down.forward(kb, out, s.act, rows)
	if b.postFFN != nil {
		s.dPre, s.invD = out, make([]T, rows)
		out = make([]T, rows*dim)
		normForward(out, s.dPre, b.postFFN.w, s.invD, rows, dim, c.RMSNormEps)
	}
	for i := range out {
		out[i] += s.h1[i]
	}
	return out, s
}

// blockBackward turns the gradient of the block's output into the gradient
// of its input (dout is overwritten by it and returned), accumulating the
// requested parameter gradients.
func (n *net[T]) blockBackward(b *netBlock[T], s *saved[T], dout []T, starts []int, rot *rotary) []T {
	c, kb := n.c, n.kb
	rows, dim, inter := starts[len(starts)-1], c.HiddenSize, b.gate.out
	// MLP: out = h1 + down(silu(gate)·up), Gemma's with gelu and a norm
	// of the MLP output.
	ddown := dout
	if b.postFFN != nil {
		ddown = make([]T, rows*dim)
		normBackward(ddown, dout, s.dPre, b.postFFN.w, s.invD, b.postFFN.g, rows, dim)
	}
	dact := make([]T, rows*inter)
	b.down.backward(kb, ddown, s.act, dact, rows, false)
	dgate, dup := make([]T, rows*inter), make([]T, rows*inter)
	parallelFor(len(dact), 1<<14, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			g, u, da := float64(s.gate[i]), float64(s.up[i]), float64(dact[i])
			if b.gelu {
				dup[i] = T(da * geluTanh64(g))
				dgate[i] = T(da * u * geluTanhGrad(g))
				continue
			}
			sg := sigmoid(g)
			dup[i] = T(da * g * sg)
			dgate[i] = T(da * u * sg * (1 + g*(1-sg)))
		}
	})
	dx := make([]T, rows*dim)
	b.gate.backward(kb, dgate, s.xm, dx, rows, false)
	b.up.backward(kb, dup, s.xm, dx, rows, true)
	dh1 := dout // the residual passes dout through unchanged
	normBackward(dh1, dx, s.h1, b.mlpNorm.w, s.invM, b.mlpNorm.g, rows, dim)

	// Attention: h1 = h + o(attention(rope(q), rope(k), v)).
	datt := make([]T, rows*b.q.out)
	do := dh1
	if b.postAttn != nil {
		do = make([]T, rows*dim)
		normBackward(do, dh1, s.oPre, b.postAttn.w, s.invO, b.postAttn.g, rows, dim)
	}
	b.o.backward(kb, do, s.att, datt, rows, false)
	dq, dk, dv := make([]T, rows*b.q.out), make([]T, rows*b.k.out), make([]T, rows*b.v.out)
	attendBackward(c, datt, s.q, s.k, s.v, dq, dk, dv, starts, b.scores)
	rotate(rot, dq, rows, c.NumHeads, c.HeadDim, true)
	rotate(rot, dk, rows, c.NumKVHeads, c.HeadDim, true)
	if b.qNorm != nil {
		dqp, dkp := make([]T, len(dq)), make([]T, len(dk))
		normBackward(dqp, dq, s.qPre, b.qNorm.w, s.invQ, b.qNorm.g, rows*c.NumHeads, c.HeadDim)
		normBackward(dkp, dk, s.kPre, b.kNorm.w, s.invK, b.kNorm.g, rows*c.NumKVHeads, c.HeadDim)
		dq, dk = dqp, dkp
	}
	b.q.backward(kb, dq, s.xa, dx, rows, false)
	b.k.backward(kb, dk, s.xa, dx, rows, true)
	b.v.backward(kb, dv, s.xa, dx, rows, true)
	normBackward(dh1, dx, s.h, b.attnNorm.w, s.invA, b.attnNorm.g, rows, dim)
	return dh1
}

// headChunk bounds the rows whose logits are held at once.
const headChunk = 1024

// run computes the mean next-token loss of seqs and, when grads is true,
// accumulates the requested gradients (which start from zero).
func (n *net[T]) run(seqs [][]int32, grads bool) (float64, int, error) {
	if len(seqs) == 0 {
		return 0, 0, fmt.Errorf("%w: no sequences", ErrBackward)
	}
	if err := n.m.CheckTokens(seqs); err != nil {
		return 0, 0, err
	}
	starts, tokens := layout(seqs)
	rows := starts[len(starts)-1]
	if tokens == 0 {
		return 0, 0, fmt.Errorf("%w: no sequence has two tokens, so there is nothing to predict", ErrBackward)
	}
	h := n.embedRows(seqs, rows)
	rotOf := n.rotaries(starts)
	acts := make([]*saved[T], len(n.blocks))
	for i, b := range n.blocks {
		h, acts[i] = n.blockForward(b, h, starts, rotOf(b))
	}
	loss, dh := n.lossAt(h, targets(seqs, rows), tokens, grads)
	if !grads {
		return loss, tokens, nil
	}
	for i := len(n.blocks) - 1; i >= 0; i-- {
		dh = n.blockBackward(n.blocks[i], acts[i], dh, starts, rotOf(n.blocks[i]))
		acts[i] = nil // free as we go
	}
	return loss, tokens, nil
}

// rotaries returns the rotary tables of rows laid out by starts, by block
// (Gemma's local blocks have their own).
func (n *net[T]) rotaries(starts []int) func(*netBlock[T]) *rotary {
	pos := rowPositions(starts)
	rot := newRotary(n.c.InvFreq(), pos)
	local := rot
	if n.c.Gemma != nil {
		local = newRotary(n.c.LocalInvFreq(), pos)
	}
	return func(b *netBlock[T]) *rotary {
		if b.local {
			return local
		}
		return rot
	}
}

// blockRotary is rotaries' table for block b alone, for the steps that run
// one block (which need not build the other kind's table).
func (n *net[T]) blockRotary(b *netBlock[T], starts []int) *rotary {
	inv := n.c.InvFreq()
	if b.local {
		inv = n.c.LocalInvFreq()
	}
	return newRotary(inv, rowPositions(starts))
}

// rowPositions is every row's position in its sequence, for rows laid out
// by starts.
func rowPositions(starts []int) []int {
	pos := make([]int, 0, starts[len(starts)-1])
	for s := range len(starts) - 1 {
		for r := starts[s]; r < starts[s+1]; r++ {
			pos = append(pos, r-starts[s])
		}
	}
	return pos
}

// lossAt returns the mean loss of the last block's output h predicting
// target (tokens of them) and, with grads, its gradient with respect to h.
func (n *net[T]) lossAt(h []T, target []int32, tokens int, grads bool) (float64, []T) {
	rows, dim := len(target), n.c.HiddenSize
	xf, inv := make([]T, rows*dim), make([]T, rows)
	normForward(xf, h, n.norm.w, inv, rows, dim, n.c.RMSNormEps)
	var dxf []T
	if grads {
		dxf = make([]T, rows*dim)
	}
	loss := n.headLoss(xf, dxf, target, tokens)
	if !grads {
		return loss, nil
	}
	dh := make([]T, rows*dim)
	normBackward(dh, dxf, h, n.norm.w, inv, n.norm.g, rows, dim)
	return loss, dh
}

// layout returns where each sequence starts in the stacked rows (and the
// total at the end; rotaries derives the rows' positions from them) and how
// many tokens are predicted (each sequence's length less one).
func layout(seqs [][]int32) (starts []int, tokens int) {
	starts = []int{0}
	for _, s := range seqs {
		starts = append(starts, starts[len(starts)-1]+len(s))
		tokens += max(0, len(s)-1)
	}
	return starts, tokens
}

// embedRows stacks the embeddings of every token of seqs (scaled by
// √hidden for Gemma, in float32 as Forward does).
func (n *net[T]) embedRows(seqs [][]int32, rows int) []T {
	dim := n.c.HiddenSize
	h := make([]T, rows*dim)
	r := 0
	for _, s := range seqs {
		for _, id := range s {
			copy(h[r*dim:(r+1)*dim], n.embed[int(id)*dim:(int(id)+1)*dim])
			r++
		}
	}
	if n.c.Gemma != nil {
		scale := T(float32(math.Sqrt(float64(dim))))
		for i := range h {
			h[i] *= scale
		}
	}
	return h
}

// targets returns the token each row predicts: the next one of its
// sequence, -1 for the last row of each sequence.
func targets(seqs [][]int32, rows int) []int32 {
	target := make([]int32, rows)
	r := 0
	for _, s := range seqs {
		for t := range s {
			target[r] = -1
			if t+1 < len(s) {
				target[r] = s[t+1]
			}
			r++
		}
	}
	return target
}

// headLoss runs the LM head on the normed rows xf, headChunk rows at a
// time, and returns the mean cross-entropy over the tokens predicted. With
// dxf non-nil it also back-propagates the loss into dxf.
func (n *net[T]) headLoss(xf, dxf []T, target []int32, tokens int) float64 {
	dim, vocab := n.c.HiddenSize, n.head.out
	rows := len(target)
	rowLoss := make([]float64, rows)
	softcap := 0.0
	if n.c.Gemma != nil {
		softcap = n.c.Gemma.FinalSoftcap
	}
	logits := make([]T, min(rows, headChunk)*vocab)
	for lo := 0; lo < rows; lo += headChunk {
		hi := min(rows, lo+headChunk)
		lg := logits[:(hi-lo)*vocab]
		n.head.forward(n.kb, lg, xf[lo*dim:hi*dim], hi-lo)
		parallelFor(hi-lo, 16, func(a, b int) {
			for i := a; i < b; i++ {
				row := lg[i*vocab : (i+1)*vocab]
				t := target[lo+i]
				if t < 0 {
					clear(row) // predicts nothing: no gradient
					continue
				}
				rowLoss[lo+i] = crossEntropy(row, int(t), softcap, tokens, dxf != nil)
			}
		})
		if dxf != nil {
			n.head.backward(n.kb, lg, xf[lo*dim:hi*dim], dxf[lo*dim:hi*dim], hi-lo, false)
		}
	}
	var loss float64
	for _, l := range rowLoss {
		loss += l
	}
	return loss / float64(tokens)
}

// crossEntropy returns the loss of one row of logits predicting token t
// (after Gemma's soft cap when softcap > 0). With grads it overwrites the
// row with dL/dlogits = (softmax − onehot) / tokens, through the cap.
func crossEntropy[T float32 | float64](row []T, t int, softcap float64, tokens int, grads bool) float64 {
	if softcap > 0 { // Gemma: logits = cap·tanh(logits/cap)
		for j, x := range row {
			row[j] = T(softcap * math.Tanh(float64(x)/softcap))
		}
	}
	mx := math.Inf(-1)
	for _, x := range row {
		mx = max(mx, float64(x))
	}
	var sum float64
	for _, x := range row {
		sum += math.Exp(float64(x) - mx)
	}
	lse := mx + math.Log(sum)
	loss := lse - float64(row[t])
	if !grads {
		return loss
	}
	for j, x := range row {
		g := math.Exp(float64(x)-lse) / float64(tokens)
		if j == t {
			g -= 1 / float64(tokens)
		}
		if softcap > 0 { // through the soft cap: 1 − tanh²
			y := float64(x) / softcap
			g *= 1 - y*y
		}
		row[j] = T(g)
	}
	return loss
}

// normVec is a norm weight in T: w, or 1 + w for Gemma's (1+w) RMSNorm,
// whose gradient with respect to w is the one with respect to 1 + w.
func (n *net[T]) normVec(w []float32) *vec[T] {
	if n.c.Gemma == nil {
		return &vec[T]{w: convert[T](w)}
	}
	v := make([]T, len(w)) // a new slice: convert may return w itself
	for i, x := range w {
		v[i] = T(float32(1 + x)) // rounded as Forward's 1 + w
	}
	return &vec[T]{w: v}
}

// geluTanh64 is gelu_pytorch_tanh in float64; geluTanhGrad its derivative.
func geluTanh64(x float64) float64 {
	return 0.5 * x * (1 + math.Tanh(math.Sqrt(2/math.Pi)*(x+0.044715*x*x*x)))
}

func geluTanhGrad(x float64) float64 {
	k := math.Sqrt(2 / math.Pi)
	t := math.Tanh(k * (x + 0.044715*x*x*x))
	return 0.5*(1+t) + 0.5*x*(1-t*t)*k*(1+3*0.044715*x*x)
}
