package model

import (
	"fmt"
	"math"
)

// Decoder runs a model one token at a time with a KV cache, so a step costs
// one token's work plus attention over the cache. Its logits equal those of
// Forward on the whole sequence.
//
// MLA layers cache each token's latent and rotated rope key and attend in
// the absorbed form (see MLA).
//
// Where k_proj or v_proj is Palu-factored (Grouped), the cache holds only
// the latent of each token. Keys are rebuilt from the latents and rotated at
// their positions for each step (RoPE cannot be folded into the factors);
// values are never rebuilt: each head attends over its group's value
// latents, and the group's up-projection, applied to that weighted latent,
// yields the head's output directly (the up-projection folded into the
// attention output instead of into every cached token).
type Decoder struct {
	m    *Model
	keys [][]float32 // per layer: n × (kvd, or K's latent)
	vals [][]float32 // per layer: n × (kvd, or V's latent)
	n    int
}

// NewDecoder returns a decoder with an empty cache.
func (m *Model) NewDecoder() *Decoder {
	return &Decoder{m: m, keys: make([][]float32, len(m.Blocks)), vals: make([][]float32, len(m.Blocks))}
}

// Len is the number of tokens in the cache.
func (d *Decoder) Len() int { return d.n }

// CachedValues is the number of float values held in the cache now.
func (d *Decoder) CachedValues() int {
	n := 0
	for l := range d.keys {
		n += len(d.keys[l]) + len(d.vals[l])
	}
	return n
}

// Step feeds one token and returns the logits predicting the next one.
func (d *Decoder) Step(id int32) ([]float32, error) {
	m, c := d.m, d.m.Config
	if d.n >= c.MaxPositions {
		return nil, fmt.Errorf("decoder: position %d reaches max_position_embeddings %d", d.n, c.MaxPositions)
	}
	if err := m.checkMLA(); err != nil {
		return nil, err
	}
	h, err := m.EmbedTokens([][]int32{{id}})
	if err != nil {
		return nil, err
	}
	pos := []int{d.n}
	for l, b := range m.Blocks {
		h = m.runBlock(b, h, pos, func(b *Block, x, q []float32, rope *rope) []float32 {
			if b.MLA != nil {
				d.keys[l] = append(d.keys[l], b.MLA.latents(m.Backend, x, 1, rope, c.RMSNormEps)...)
				return d.attendMLA(b.MLA, q, l)
			}
			d.keys[l] = append(d.keys[l], cacheRow(m, b.K, x, rope, b.KNorm)...)
			d.vals[l] = append(d.vals[l], cacheRow(m, b.V, x, nil, nil)...)
			return d.attend(b, q, l)
		})
	}
	d.n++
	return m.Logits(h), nil
}

// cacheRow is what the cache keeps of one token for layer lin: its latent
// when lin is Grouped, else its output (normalised per head by norm when
// not nil, then rotated when rope is given).
func cacheRow(m *Model, lin Linear, x []float32, rope *rope, norm []float32) []float32 {
	if g, ok := lin.(*Grouped); ok {
		lat := make([]float32, g.Latent())
		g.Down.Apply(m.Backend, lat, x, 1)
		g.quantizeLatents(lat, 1)
		return lat
	}
	y := make([]float32, lin.Out())
	lin.Apply(m.Backend, y, x, 1)
	m.Config.headNorm(y, norm)
	if rope != nil {
		rope.apply(y, lin.Out()/m.Config.HeadDim, m.Config.HeadDim)
	}
	return y
}

// attend computes the attention of the newest token's queries over layer
// l's cache.
func (d *Decoder) attend(b *Block, q []float32, l int) []float32 {
	m, c := d.m, d.m.Config
	hd := c.HeadDim
	n := d.n + 1
	keys, kvd := d.keys[l], b.K.Out()
	if g, ok := b.K.(*Grouped); ok {
		// Rebuild every cached key from its latent, then rotate it at its position.
		keys = make([]float32, n*kvd)
		rebuildFromLatent(m, g, keys, d.keys[l], n)
		pos := make([]int, n)
		for i := range pos {
			pos[i] = i
		}
		c.headNorm(keys, b.KNorm)
		newRopeFreq(c.blockInvFreq(b), pos).apply(keys, kvd/hd, hd)
	}
	group := c.NumHeads / c.NumKVHeads
	scale, softcap := c.attnScale(), c.attnSoftcap()
	last := d.n
	first := 0
	if w := c.window(b); w > 0 {
		first = max(0, last-w+1)
	}
	out := make([]float32, len(q))
	p := make([]float32, n)
	gv, latentValues := b.V.(*Grouped)
	for h := range len(q) / hd {
		kvh := h / group
		o := out[h*hd : (h+1)*hd]
		if !latentValues {
			attendRow(o, q[h*hd:(h+1)*hd], keys, d.vals[l], kvd, kvh*hd, kvd, kvh*hd, first, last, scale, softcap, p)
			continue
		}
		// Attend over the value latents of kvh's group, then map the weighted
		// latent through the rows of the group's up-projection that belong to kvh.
		j, lo, r := latentGroup(gv, kvh, hd)
		z := make([]float32, r)
		weights(p, q[h*hd:(h+1)*hd], keys, kvd, kvh*hd, first, last, scale, softcap)
		lat := gv.Latent()
		for t := first; t <= last; t++ {
			row := d.vals[l][t*lat+lo : t*lat+lo+r]
			for i, v := range row {
				z[i] += p[t] * v
			}
		}
		up := gv.Ups[j]
		rowOff := (kvh % (up.out / hd)) * hd
		for i := range hd {
			w := up.Weight[(rowOff+i)*r : (rowOff+i+1)*r]
			var s float32
			for t, v := range z {
				s += w[t] * v
			}
			if gv.Bias != nil {
				s += gv.Bias[kvh*hd+i]
			}
			o[i] = s
		}
	}
	return out
}

// attendMLA is attend for an MLA layer, whose cache holds per token the
// latent and the rotated rope key: all heads attend at once in the latent
// space (absorbed form), two matrix products over the cache, and each maps
// its weighted latent to its output.
func (d *Decoder) attendMLA(a *MLA, q []float32, l int) []float32 {
	k, heads := d.m.Backend, d.m.Config.NumHeads
	w, r, n := a.CacheWidth(), a.LoraRank, d.n+1
	scale := float32(1 / math.Sqrt(float64(a.QKDim())))
	qa := a.absorbQueries(k, q, 1, heads)
	p := make([]float32, heads*n)
	k.Sgemm(false, true, heads, n, w, scale, qa, w, d.keys[l], w, 0, p, n)
	for h := range heads {
		softmax(p[h*n : (h+1)*n])
	}
	z := make([]float32, heads*r)
	k.Sgemm(false, false, heads, r, n, 1, p, n, d.keys[l], w, 0, z, r)
	return a.expand(k, z, 1, heads)
}

// softmax turns x into softmax(x) in place.
func softmax(x []float32) {
	mx := float32(math.Inf(-1))
	for _, v := range x {
		mx = max(mx, v)
	}
	var sum float32
	for i, v := range x {
		x[i] = exp32(v - mx)
		sum += x[i]
	}
	inv := 1 / sum
	for i := range x {
		x[i] *= inv
	}
}

// latentGroup returns the group j holding KV head kvh, the offset of its
// latent and its rank.
func latentGroup(g *Grouped, kvh, hd int) (j, off, rank int) {
	j = kvh / (g.Ups[0].out / hd)
	for i := range j {
		off += g.Ups[i].in
	}
	return j, off, g.Ups[j].in
}

// rebuildFromLatent writes into keys (n × Out) the up-projections of n
// cached latents, bias included.
func rebuildFromLatent(m *Model, g *Grouped, keys, latents []float32, n int) {
	out, lat, off := g.Out(), g.Latent(), 0
	for j, u := range g.Ups {
		m.Backend.Sgemm(false, true, n, u.out, u.in, 1, latents[off:], lat, u.Weight, u.in, 0, keys[j*u.out:], out)
		off += u.in
	}
	addBias(keys, g.Bias, n)
}

// weights writes into p[first..last] the softmax attention weights of query
// head qi over the key rows first..last, the scores capped when softcap > 0
// (see attnShape).
func weights(p, qi, kk []float32, kvd, off, first, last int, scale float32, softcap float64) {
	d := len(qi)
	mx := float32(math.Inf(-1))
	for j := first; j <= last; j++ {
		kj := kk[j*kvd+off : j*kvd+off+d]
		var dot float32
		for t, x := range qi {
			dot += x * kj[t]
		}
		p[j] = dot * scale
		if softcap > 0 {
			p[j] = float32(softcap * math.Tanh(float64(p[j])/softcap))
		}
		mx = max(mx, p[j])
	}
	var sum float32
	for j := first; j <= last; j++ {
		p[j] = exp32(p[j] - mx)
		sum += p[j]
	}
	for j := first; j <= last; j++ {
		p[j] /= sum
	}
}

// KVBytesPerToken is the KV cache of one token: the keys and values of every
// layer at 16 bits, or their latents where k_proj and v_proj are
// Palu-factored (at 16 bits, or quantized with their scales and zeros), or
// the latent and rope key of MLA layers at 16 bits.
func (m *Model) KVBytesPerToken() int {
	n := 0
	for _, b := range m.Blocks {
		if b.MLA != nil {
			n += 2 * b.MLA.CacheWidth()
			continue
		}
		n += cachedBytes(b.K) + cachedBytes(b.V)
	}
	return n
}

// Generate extends prompt greedily by up to maxNew tokens (stopping after
// stop, if stop ≥ 0) and returns the new tokens.
func (m *Model) Generate(prompt []int32, maxNew int, stop int32) ([]int32, error) {
	if len(prompt) == 0 {
		return nil, fmt.Errorf("generate: empty prompt")
	}
	d := m.NewDecoder()
	var logits []float32
	var err error
	for _, id := range prompt {
		if logits, err = d.Step(id); err != nil {
			return nil, err
		}
	}
	var out []int32
	for len(out) < maxNew {
		next := int32(argmax(logits))
		out = append(out, next)
		if next == stop || len(out) == maxNew {
			break
		}
		if logits, err = d.Step(next); err != nil {
			return out, err
		}
	}
	return out, nil
}

func argmax(x []float32) int {
	best := 0
	for i, v := range x {
		if v > x[best] {
			best = i
		}
	}
	return best
}
