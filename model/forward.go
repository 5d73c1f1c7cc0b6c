package model

import (
	"fmt"
	"math"
	"runtime"
	"sync"

	"github.com/rankzip/rankzip/kernels"
)

// States are hidden states of a batch of sequences laid out as rows:
// sequence s occupies rows Starts[s] to Starts[s+1]-1, positions from 0.
type States struct {
	X      []float32 // rows×Dim
	Dim    int
	Starts []int // len = sequences+1, Starts[0] = 0
}

// Rows is the total number of tokens.
func (h *States) Rows() int { return h.Starts[len(h.Starts)-1] }

// Sequences is the number of sequences.
func (h *States) Sequences() int { return len(h.Starts) - 1 }

// Site names the input of a group of linear layers inside a block.
type Site int

const (
	AttnInput Site = iota // normalised block input, read by q, k and v
	OInput                // attention output, read by o_proj
	MLPInput              // normalised residual stream, read by gate and up
	DownInput             // silu(gate)·up, read by down_proj
)

// Tap observes the rows×cols input x of a group of linear layers; the
// calibration pass uses it to accumulate statistics. x must not be kept.
// Returning false stops the block there (RunBlock then returns nil), so a
// pass that only needs the inputs of the first linears skips the rest.
type Tap func(site Site, x []float32, rows, cols int) bool

// CheckTokens validates token sequences against the model: ids inside the
// vocabulary and lengths within max_position_embeddings.
func (m *Model) CheckTokens(seqs [][]int32) error {
	c := m.Config
	for s, seq := range seqs {
		if len(seq) > c.MaxPositions {
			return fmt.Errorf("sequence %d has %d tokens, more than max_position_embeddings %d", s, len(seq), c.MaxPositions)
		}
		for t, id := range seq {
			if id < 0 || int(id) >= c.VocabSize {
				return fmt.Errorf("sequence %d position %d: token id %d outside the vocabulary [0, %d)", s, t, id, c.VocabSize)
			}
		}
	}
	return nil
}

// EmbedTokens looks up the embeddings of a batch of sequences.
func (m *Model) EmbedTokens(seqs [][]int32) (*States, error) {
	if err := m.CheckTokens(seqs); err != nil {
		return nil, err
	}
	h := m.Config.HiddenSize
	st := &States{Dim: h, Starts: make([]int, 1, len(seqs)+1)}
	for _, s := range seqs {
		st.Starts = append(st.Starts, st.Starts[len(st.Starts)-1]+len(s))
	}
	st.X = make([]float32, st.Rows()*h)
	r := 0
	for _, s := range seqs {
		for _, id := range s {
			copy(st.X[r*h:(r+1)*h], m.Embed[int(id)*h:(int(id)+1)*h])
			r++
		}
	}
	if m.Config.Gemma != nil {
		// Gemma scales the embeddings by √hidden in their dtype (float32 here).
		scale := float32(math.Sqrt(float64(h)))
		for i := range st.X {
			st.X[i] *= scale
		}
	}
	return st, nil
}

// Forward returns the logits (rows×vocab, rows in sequence order) of a batch.
func (m *Model) Forward(seqs [][]int32) ([]float32, error) {
	if err := m.checkMLA(); err != nil {
		return nil, err
	}
	h, err := m.EmbedTokens(seqs)
	if err != nil {
		return nil, err
	}
	for _, b := range m.Blocks {
		h = m.RunBlock(b, h, nil)
	}
	return m.Logits(h), nil
}

// Logits applies the final norm and the LM head.
func (m *Model) Logits(h *States) []float32 {
	rows := h.Rows()
	x := make([]float32, len(h.X))
	m.Config.norm(x, h.X, m.Norm, rows, h.Dim)
	out := make([]float32, rows*m.LMHead.Out())
	m.LMHead.Apply(m.Backend, out, x, rows)
	if g := m.Config.Gemma; g != nil && g.FinalSoftcap > 0 {
		softcap(out, g.FinalSoftcap)
	}
	return out
}

// RunBlock runs block b on h and returns the block's output; h is unchanged.
// tap, if not nil, sees the input of every group of linear layers, in order,
// and may stop the block early (see Tap).
func (m *Model) RunBlock(b *Block, h *States, tap Tap) *States {
	r := m.StartBlock(b, h)
	for !r.Done() {
		if tap != nil {
			x, rows, cols := r.Input()
			if !tap(r.Site(), x, rows, cols) {
				return nil
			}
		}
		r.Step(b)
	}
	return r.Output()
}

// BlockRun is a block's forward pass over a batch that stops at the input
// of each group of linear layers (each Site) and resumes from there, so that
// calibration can take a site's statistics over every batch, replace the
// linears that read it, and go on without recomputing the block up to the
// site. Step may be given a different block each time (the same block with
// linears already run replaced): a step uses only the layers after the site
// it starts from.
type BlockRun struct {
	m      *Model
	h      *States // block input
	pos    []int
	attend attendFunc
	site   Site      // where the run stopped
	done   bool      // the block output is ready
	x      []float32 // input of site (rows×cols)
	cols   int
	out    *States // residual stream after attention (from OInput on)
}

// attendFunc turns the normalised input x and rotated queries q of block b
// into the attention output: it computes keys and values itself, over the
// batch or into a cache (rope rotates rows at the run's positions).
type attendFunc func(b *Block, x, q []float32, rope *rope) []float32

// StartBlock starts block b on the batch h (positions from 0 in each
// sequence) and stops at AttnInput; h is unchanged.
func (m *Model) StartBlock(b *Block, h *States) *BlockRun {
	pos := make([]int, 0, h.Rows())
	for s := 0; s+1 < len(h.Starts); s++ {
		for p := range h.Starts[s+1] - h.Starts[s] {
			pos = append(pos, p)
		}
	}
	return m.startBlock(b, h, pos, func(b *Block, x, q []float32, rope *rope) []float32 {
		if b.MLA != nil {
			return m.mlaAttention(b, x, q, rope, h.Starts)
		}
		rows := h.Rows()
		kk := make([]float32, rows*b.K.Out())
		v := make([]float32, rows*b.V.Out())
		b.K.Apply(m.Backend, kk, x, rows)
		b.V.Apply(m.Backend, v, x, rows)
		m.Config.headNorm(kk, b.KNorm)
		rope.apply(kk, b.K.Out()/m.Config.HeadDim, m.Config.HeadDim)
		att := make([]float32, len(q))
		attention(m.Backend, att, q, kk, v, h.Starts, m.Config, b)
		return att
	})
}

// runBlock is one decoder layer on the rows of h at the given positions,
// attending through attend.
func (m *Model) runBlock(b *Block, h *States, pos []int, attend attendFunc) *States {
	r := m.startBlock(b, h, pos, attend)
	for !r.Done() {
		r.Step(b)
	}
	return r.Output()
}

func (m *Model) startBlock(b *Block, h *States, pos []int, attend attendFunc) *BlockRun {
	rows, dim := h.Rows(), h.Dim
	r := &BlockRun{m: m, h: h, pos: pos, attend: attend, site: AttnInput, x: make([]float32, rows*dim), cols: dim}
	m.Config.norm(r.x, h.X, b.AttnNorm, rows, dim)
	return r
}

// Site is where the run stopped; meaningless once Done.
func (r *BlockRun) Site() Site { return r.site }

// Done reports whether the block has run to its end.
func (r *BlockRun) Done() bool { return r.done }

// Input is the rows×cols input of the site the run stopped at. It is the
// run's own buffer: read it before the next Step, never keep it.
func (r *BlockRun) Input() (x []float32, rows, cols int) { return r.x, r.h.Rows(), r.cols }

// Output is the block's output once Done (nil before).
func (r *BlockRun) Output() *States {
	if !r.done {
		return nil
	}
	return r.out
}

// Keep moves the buffers a paused run holds (the site's input and the
// residual stream) into memory that alloc returns, such as memory-mapped
// files, so that many paused runs need not stay resident. After Keep the
// run no longer refers to the buffers it held before; the block input h is
// not moved (it is the caller's).
func (r *BlockRun) Keep(alloc func(n int) ([]float32, error)) error {
	move := func(x []float32) ([]float32, error) {
		if x == nil {
			return nil, nil
		}
		y, err := alloc(len(x))
		if err != nil {
			return nil, err
		}
		copy(y, x)
		return y, nil
	}
	x, err := move(r.x)
	if err != nil {
		return err
	}
	var out *States
	if r.out != nil {
		o, err := move(r.out.X)
		if err != nil {
			return err
		}
		out = &States{X: o, Dim: r.out.Dim, Starts: r.out.Starts}
	}
	r.x, r.out = x, out
	return nil
}

// Step runs the layers of b that read the current site, up to the next
// site or the block's end.
func (r *BlockRun) Step(b *Block) {
	m := r.m
	c, k := m.Config, m.Backend
	rows, dim := r.h.Rows(), r.h.Dim
	switch {
	case r.done:
		panic("model: Step of a finished block run")
	case r.site == AttnInput:
		qd := b.Q.Out()
		q := make([]float32, rows*qd)
		b.Q.Apply(k, q, r.x, rows)
		var rope *rope
		if a := b.MLA; a != nil {
			// Only the rope part of each MLA query head rotates, interleaved.
			rope = newRopeFreq(a.RopeFreq, r.pos)
			rope.interleaved(q, qd/(a.NopeDim+a.RopeDim), a.NopeDim+a.RopeDim, a.NopeDim)
		} else {
			c.headNorm(q, b.QNorm)
			rope = newRopeFreq(c.blockInvFreq(b), r.pos)
			rope.apply(q, qd/c.HeadDim, c.HeadDim)
		}
		r.x, r.cols, r.site = r.attend(b, r.x, q, rope), b.O.In(), OInput
	case r.site == OInput:
		out := &States{X: make([]float32, rows*dim), Dim: dim, Starts: r.h.Starts}
		b.O.Apply(k, out.X, r.x, rows)
		if b.PostAttnNorm != nil {
			c.norm(out.X, out.X, b.PostAttnNorm, rows, dim)
		}
		for i := range out.X {
			out.X[i] += r.h.X[i]
		}
		x := make([]float32, rows*dim)
		c.norm(x, out.X, b.MLPNorm, rows, dim)
		r.out, r.x, r.cols, r.site = out, x, dim, MLPInput
	case r.site == MLPInput && b.MoE != nil:
		y := make([]float32, rows*dim)
		b.MoE.forward(m, y, r.x, rows, dim)
		for i := range r.out.X {
			r.out.X[i] += y[i]
		}
		r.x, r.done = nil, true
	case r.site == MLPInput:
		inter := b.Gate.Out()
		gate := make([]float32, rows*inter)
		up := make([]float32, rows*inter)
		b.Gate.Apply(k, gate, r.x, rows)
		b.Up.Apply(k, up, r.x, rows)
		if c.Act == "gelu_pytorch_tanh" {
			parallelFor(len(gate), 1<<14, func(lo, hi int) {
				for i := lo; i < hi; i++ {
					gate[i] = geluTanh(gate[i]) * up[i]
				}
			})
		} else {
			parallelFor(len(gate), 1<<14, func(lo, hi int) {
				for i := lo; i < hi; i++ {
					g := gate[i]
					gate[i] = g / (1 + float32(math.Exp(-float64(g)))) * up[i]
				}
			})
		}
		r.x, r.cols, r.site = gate, inter, DownInput
	default: // DownInput
		y := make([]float32, rows*dim)
		b.Down.Apply(k, y, r.x, rows)
		if b.PostFFNNorm != nil {
			c.norm(y, y, b.PostFFNNorm, rows, dim)
		}
		for i := range r.out.X {
			r.out.X[i] += y[i]
		}
		r.x, r.done = nil, true
	}
}

// rmsNorm writes x / sqrt(mean(x²) + eps) · w for each row of src into dst.
func rmsNorm(dst, src, w []float32, rows, dim int, eps float64) {
	parallelFor(rows, max(1, 4096/dim), func(lo, hi int) {
		for r := lo; r < hi; r++ {
			row := src[r*dim : (r+1)*dim]
			var ss float64
			for _, v := range row {
				ss += float64(v) * float64(v)
			}
			inv := float32(1 / math.Sqrt(ss/float64(dim)+eps))
			out := dst[r*dim : (r+1)*dim]
			for i, v := range row {
				out[i] = w[i] * (v * inv)
			}
		}
	})
}

// rope holds cos and sin per row of a batch (rows×HeadDim/2).
type rope struct {
	cos, sin []float32
	half     int
	rows     int
}

func newRope(c *Config, pos []int) *rope { return newRopeFreq(c.InvFreq(), pos) }

// newRopeFreq is the rope of the inverse frequencies inv at positions pos.
func newRopeFreq(inv []float64, pos []int) *rope {
	half := len(inv)
	r := &rope{cos: make([]float32, len(pos)*half), sin: make([]float32, len(pos)*half), half: half, rows: len(pos)}
	for row, p := range pos {
		for i, f := range inv {
			sn, cs := math.Sincos(float64(p) * f)
			r.cos[row*half+i], r.sin[row*half+i] = float32(cs), float32(sn)
		}
	}
	return r
}

// apply rotates each head of x (rows×heads·headDim) in the Hugging Face
// rotate-half convention: pairs are (i, i+headDim/2).
func (r *rope) apply(x []float32, heads, headDim int) {
	half := r.half
	width := heads * headDim
	parallelFor(r.rows, 64, func(lo, hi int) {
		for row := lo; row < hi; row++ {
			cs, sn := r.cos[row*half:(row+1)*half], r.sin[row*half:(row+1)*half]
			for h := range heads {
				v := x[row*width+h*headDim : row*width+(h+1)*headDim]
				for i := range half {
					a, b := v[i], v[i+half]
					v[i] = a*cs[i] - b*sn[i]
					v[i+half] = b*cs[i] + a*sn[i]
				}
			}
		}
	})
}

// interleaved rotates, in DeepSeek's interleaved convention (pairs (2i, 2i+1)),
// the 2·half values at offset off of each of the heads of width stride in
// every row of x (rows×heads·stride).
func (r *rope) interleaved(x []float32, heads, stride, off int) {
	half := r.half
	parallelFor(r.rows, 64, func(lo, hi int) {
		for row := lo; row < hi; row++ {
			cs, sn := r.cos[row*half:(row+1)*half], r.sin[row*half:(row+1)*half]
			for h := range heads {
				v := x[(row*heads+h)*stride+off : (row*heads+h)*stride+off+2*half]
				for i := range half {
					a, b := v[2*i], v[2*i+1]
					v[2*i] = a*cs[i] - b*sn[i]
					v[2*i+1] = b*cs[i] + a*sn[i]
				}
			}
		}
	})
}

// attnShape describes causal multi-head attention over row-major q, k and v:
// query head h (dk values, q rows of heads·dk) reads KV head h/(heads/kvHeads),
// whose key holds dk values at column kvh·dk of rows of kStride and whose
// value dv values at column kvh·dv of rows of vStride; the output has rows
// of heads·dv.
type attnShape struct {
	heads, kvHeads, dk, dv int
	kStride, vStride       int
	window                 int // 0: full causal
	scale                  float32
	softcap                float64 // scores = softcap·tanh(scores/softcap) before the mask; 0: none
}

// attention computes causal grouped-query attention for each sequence and
// head: out = softmax(q kᵀ/√d + mask) v, heads sharing KV heads in groups.
// Long sequences go through the backend's Sgemm, one head at a time; short
// ones run in plain Go across (sequence, head) pairs, because thousands of
// tiny BLAS calls cost more in thread wake-ups than they compute.
func attention(k kernels.Backend, out, q, kk, v []float32, starts []int, c *Config, b *Block) {
	d := c.HeadDim
	kvd := c.NumKVHeads * d
	mhAttention(k, out, q, kk, v, starts, attnShape{heads: c.NumHeads, kvHeads: c.NumKVHeads, dk: d, dv: d,
		kStride: kvd, vStride: kvd, window: c.window(b), scale: c.attnScale(), softcap: c.attnSoftcap()})
}

// window is block b's sliding window (0: full causal attention).
func (c *Config) window(b *Block) int {
	if g := c.Gemma; g != nil {
		if b.Sliding {
			return g.SlidingWindow
		}
		return 0
	}
	if c.SlidingLayers != nil && !b.Sliding {
		return 0
	}
	return c.SlidingWindow
}

// layerSlides reports whether layer l is one of the sliding-window layers
// of a model whose layers differ (Gemma 3; Qwen3 with layer_types).
func (c *Config) layerSlides(l int) bool {
	if g := c.Gemma; g != nil {
		return g.Sliding[l]
	}
	return c.SlidingLayers != nil && c.SlidingLayers[l]
}

// attnScale multiplies the attention scores: head_dim^-½, or Gemma's
// query_pre_attn_scalar^-½.
func (c *Config) attnScale() float32 {
	if g := c.Gemma; g != nil {
		return float32(1 / math.Sqrt(g.QueryPreAttnScalar))
	}
	return float32(1 / math.Sqrt(float64(c.HeadDim)))
}

// attnSoftcap is the attention scores' soft cap (attn_logit_softcapping;
// 0: none).
func (c *Config) attnSoftcap() float64 {
	if g := c.Gemma; g != nil {
		return g.AttnSoftcap
	}
	return 0
}

// blockInvFreq is the RoPE inverse frequencies of block b: Gemma 3's local
// ones on its sliding layers, else the model's.
func (c *Config) blockInvFreq(b *Block) []float64 {
	if c.Gemma != nil && b.Sliding {
		return c.LocalInvFreq()
	}
	return c.InvFreq()
}

// mhAttention is attention for the shape s (see attention).
func mhAttention(k kernels.Backend, out, q, kk, v []float32, starts []int, s attnShape) {
	dk, dv := s.dk, s.dv
	qs, ost := s.heads*dk, s.heads*dv
	group := s.heads / s.kvHeads
	var small [][2]int // (sequence, head) pairs for the plain Go path
	var scores []float32
	for seq := 0; seq+1 < len(starts); seq++ {
		r0, n := starts[seq], starts[seq+1]-starts[seq]
		if n == 0 {
			continue
		}
		if n*dk <= smallAttention {
			for h := range s.heads {
				small = append(small, [2]int{seq, h})
			}
			continue
		}
		if cap(scores) < n*n {
			scores = make([]float32, n*n)
		}
		sc := scores[:n*n]
		for h := range s.heads {
			kvh := h / group
			k.Sgemm(false, true, n, n, dk, s.scale, q[r0*qs+h*dk:], qs, kk[r0*s.kStride+kvh*dk:], s.kStride, 0, sc, n)
			capScores(sc, n, s.window, s.softcap)
			causalSoftmax(sc, n, s.window)
			k.Sgemm(false, false, n, dv, n, 1, sc, n, v[r0*s.vStride+kvh*dv:], s.vStride, 0, out[r0*ost+h*dv:], ost)
		}
	}
	parallelFor(len(small), 1, func(lo, hi int) {
		var p []float32
		for _, sh := range small[lo:hi] {
			seq, h := sh[0], sh[1]
			r0, n := starts[seq], starts[seq+1]-starts[seq]
			if cap(p) < n {
				p = make([]float32, n)
			}
			kvh := h / group
			for i := range n {
				first := 0
				if s.window > 0 {
					first = max(0, i-s.window+1)
				}
				attendRow(out[(r0+i)*ost+h*dv:(r0+i)*ost+(h+1)*dv], q[(r0+i)*qs+h*dk:(r0+i)*qs+(h+1)*dk],
					kk[r0*s.kStride:], v[r0*s.vStride:], s.kStride, kvh*dk, s.vStride, kvh*dv, first, i, s.scale, s.softcap, p)
			}
		}
	})
}

// attendRow writes into o the attention of one query head qi over the key
// rows first..last (row stride ks, head columns from ko) and the value rows
// (stride vs, len(o) columns from vo), using p as scratch of at least
// last+1 values; softcap > 0 caps the scores (see attnShape).
func attendRow(o, qi, kk, v []float32, ks, ko, vs, vo, first, last int, scale float32, softcap float64, p []float32) {
	weights(p, qi, kk, ks, ko, first, last, scale, softcap)
	d := len(o)
	clear(o)
	for j := first; j <= last; j++ {
		w := p[j]
		vj := v[j*vs+vo : j*vs+vo+d]
		for t, x := range vj {
			o[t] += w * x
		}
	}
}

// smallAttention is the largest sequence length × head_dim computed by the
// plain Go attention path.
const smallAttention = 8192

// capScores replaces the scores each row i of the n×n sc attends to (see
// causalSoftmax) by c·tanh(score/c) (softcap, as the final logits); c 0
// leaves them.
func capScores(sc []float32, n, window int, c float64) {
	if c == 0 {
		return
	}
	parallelFor(n, max(1, 8192/n), func(lo, hi int) {
		for i := lo; i < hi; i++ {
			first := 0
			if window > 0 {
				first = max(0, i-window+1)
			}
			softcap(sc[i*n+first:i*n+i+1], c)
		}
	})
}

// causalSoftmax turns each row i of the n×n scores into softmax over the
// columns j ≤ i (and j > i-window when window > 0), zeroing the rest.
func causalSoftmax(sc []float32, n, window int) {
	parallelFor(n, max(1, 8192/n), func(lo, hi int) {
		for i := lo; i < hi; i++ {
			row := sc[i*n : (i+1)*n]
			first := 0
			if window > 0 {
				first = max(0, i-window+1)
			}
			mx := float32(math.Inf(-1))
			for _, x := range row[first : i+1] {
				mx = max(mx, x)
			}
			var sum float32
			for j := first; j <= i; j++ {
				e := exp32(row[j] - mx)
				row[j] = e
				sum += e
			}
			inv := float32(1 / sum)
			for j := range row {
				if j < first || j > i {
					row[j] = 0
				} else {
					row[j] *= inv
				}
			}
		}
	})
}

// parallelFor splits [0, n) into chunks of at least grain and runs fn on
// them across GOMAXPROCS goroutines.
func parallelFor(n, grain int, fn func(lo, hi int)) {
	workers := runtime.GOMAXPROCS(0)
	if grain < 1 {
		grain = 1
	}
	if workers <= 1 || n <= grain {
		fn(0, n)
		return
	}
	chunks := min(workers, (n+grain-1)/grain)
	size := (n + chunks - 1) / chunks
	var wg sync.WaitGroup
	for lo := 0; lo < n; lo += size {
		hi := min(n, lo+size)
		wg.Add(1)
		go func() {
			defer wg.Done()
			fn(lo, hi)
		}()
	}
	wg.Wait()
}
