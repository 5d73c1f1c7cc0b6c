package model

import (
	"fmt"
	"math"

	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/model/safetensors"
)

// Grouped is a Palu-factored k_proj or v_proj: a shared down-projection whose
// output, the latent, is what a latent KV cache stores, and one up-projection
// per group of heads that rebuilds the group's keys or values. The bias is
// applied after the up-projections.
type Grouped struct {
	Down *Dense   // latent × in, latent = Σ rⱼ
	Ups  []*Dense // group j: (out/G) × rⱼ
	Bias []float32

	// LatentBits, when not 0, quantizes each token's latent as the cache
	// stores it: asymmetric round-to-nearest in groups of LatentGroup values
	// with a float16 scale and zero per group.
	LatentBits  int
	LatentGroup int
}

// NewGrouped checks the shapes of a grouped factorisation.
func NewGrouped(down *Dense, ups []*Dense, bias []float32) (*Grouped, error) {
	latent, rows := 0, 0
	for j, u := range ups {
		if j > 0 && u.out != ups[0].out {
			return nil, fmt.Errorf("grouped layer: group %d has %d rows, group 0 has %d", j, u.out, ups[0].out)
		}
		latent += u.in
		rows += u.out
	}
	if latent != down.out {
		return nil, fmt.Errorf("grouped layer: up-projections take %d latent values, the down-projection gives %d", latent, down.out)
	}
	if bias != nil && len(bias) != rows {
		return nil, fmt.Errorf("grouped layer: bias of %d for %d outputs", len(bias), rows)
	}
	return &Grouped{Down: down, Ups: ups, Bias: bias}, nil
}

func (g *Grouped) In() int { return g.Down.in }
func (g *Grouped) Out() int {
	return len(g.Ups) * g.Ups[0].out
}

// Latent is the number of values cached per token.
func (g *Grouped) Latent() int { return g.Down.out }

func (g *Grouped) NumParams() int64 {
	n := g.Down.NumParams() + int64(len(g.Bias))
	for _, u := range g.Ups {
		n += u.NumParams()
	}
	return n
}

func (g *Grouped) Apply(k kernels.Backend, y, x []float32, rows int) {
	lat := g.Down.out
	t := make([]float32, rows*lat)
	g.Down.Apply(k, t, x, rows)
	g.quantizeLatents(t, rows)
	out, off := g.Out(), 0
	for j, u := range g.Ups {
		k.Sgemm(false, true, rows, u.out, u.in, 1, t[off:], lat, u.Weight, u.in, 0, y[j*u.out:], out)
		off += u.in
	}
	addBias(y, g.Bias, rows)
}

// quantizeLatents rounds each row's latent as the cache would store it
// (quantize, then dequantize), in place.
func (g *Grouped) quantizeLatents(t []float32, rows int) {
	if g.LatentBits == 0 {
		return
	}
	lat, size := g.Down.out, g.LatentGroup
	levels := float32(int(1)<<g.LatentBits - 1)
	for r := range rows {
		row := t[r*lat : (r+1)*lat]
		for lo := 0; lo < lat; lo += size {
			grp := row[lo:min(lat, lo+size)]
			mn, mx := grp[0], grp[0]
			for _, v := range grp {
				mn, mx = min(mn, v), max(mx, v)
			}
			// Scale and zero are stored as float16; round them the same way.
			scale := f16(max((mx-mn)/levels, 1e-8))
			zero := f16(mn)
			for i, v := range grp {
				q := float32(math.Round(float64((v - zero) / scale)))
				grp[i] = min(max(q, 0), levels)*scale + zero
			}
		}
	}
}

// f16 rounds x to the nearest float16 value.
func f16(x float32) float32 { return safetensors.F16ToFloat32(safetensors.Float32ToF16(x)) }

// cachedBytes is what a layer feeding the KV cache stores per token: its
// output at 16 bits, or a grouped layer's latent, at 16 bits or quantized
// with its float16 scales and zeros counted.
func cachedBytes(l Linear) int {
	g, ok := l.(*Grouped)
	if !ok {
		return 2 * l.Out()
	}
	if g.LatentBits == 0 {
		return 2 * g.Latent()
	}
	groups := (g.Latent() + g.LatentGroup - 1) / g.LatentGroup
	return (g.Latent()*g.LatentBits+7)/8 + 4*groups
}

// cachedWidth is how many values a layer feeding the KV cache stores per
// token: the latent of a grouped layer, the full output otherwise.
func cachedWidth(l Linear) int {
	if g, ok := l.(*Grouped); ok {
		return g.Latent()
	}
	return l.Out()
}
