package model

import (
	"fmt"
	"math"
)

// Decoder runs a model one token at a time, caching each layer's rotated
// keys and values so that a step costs one token's work plus attention over
// the cache. Its logits equal those of Forward on the whole sequence.
type Decoder struct {
	m    *Model
	keys [][]float32 // per layer: n × kvd
	vals [][]float32
	n    int
}

// NewDecoder returns a decoder with an empty cache.
func (m *Model) NewDecoder() *Decoder {
	return &Decoder{m: m, keys: make([][]float32, len(m.Blocks)), vals: make([][]float32, len(m.Blocks))}
}

// Len is the number of tokens in the cache.
func (d *Decoder) Len() int { return d.n }

// Step feeds one token and returns the logits predicting the next one.
func (d *Decoder) Step(id int32) ([]float32, error) {
	m, c := d.m, d.m.Config
	if d.n >= c.MaxPositions {
		return nil, fmt.Errorf("decoder: position %d reaches max_position_embeddings %d", d.n, c.MaxPositions)
	}
	h, err := m.EmbedTokens([][]int32{{id}})
	if err != nil {
		return nil, err
	}
	pos := []int{d.n}
	for l, b := range m.Blocks {
		h = m.runBlock(b, h, pos, func(q, kk, v []float32) []float32 {
			d.keys[l] = append(d.keys[l], kk...)
			d.vals[l] = append(d.vals[l], v...)
			return d.attend(q, l)
		}, nil)
	}
	d.n++
	return m.Logits(h), nil
}

// attend computes the attention of the newest token's queries over layer
// l's cache.
func (d *Decoder) attend(q []float32, l int) []float32 {
	c := d.m.Config
	hd := c.HeadDim
	kvd := len(d.keys[l]) / (d.n + 1)
	group := c.NumHeads / c.NumKVHeads
	scale := float32(1 / math.Sqrt(float64(hd)))
	last := d.n
	first := 0
	if c.SlidingWindow > 0 {
		first = max(0, last-c.SlidingWindow+1)
	}
	out := make([]float32, len(q))
	p := make([]float32, last+1)
	for h := range len(q) / hd {
		attendRow(out[h*hd:(h+1)*hd], q[h*hd:(h+1)*hd], d.keys[l], d.vals[l], kvd, (h/group)*hd, first, last, scale, p)
	}
	return out
}

// KVBytesPerToken is the KV cache of one token at 16-bit storage: the keys
// and values of every layer, or their latents where k_proj and v_proj are
// Palu-factored (the cache a latent decoder keeps).
func (m *Model) KVBytesPerToken() int {
	n := 0
	for _, b := range m.Blocks {
		n += 2 * (cachedWidth(b.K) + cachedWidth(b.V))
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
