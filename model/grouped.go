package model

import (
	"fmt"

	"github.com/rankzip/rankzip/kernels"
)

// Grouped is a Palu-factored k_proj or v_proj: a shared down-projection whose
// output, the latent, is what a latent KV cache stores, and one up-projection
// per group of heads that rebuilds the group's keys or values. The bias is
// applied after the up-projections.
type Grouped struct {
	Down *Dense   // latent × in, latent = Σ rⱼ
	Ups  []*Dense // group j: (out/G) × rⱼ
	Bias []float32
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
	out, off := g.Out(), 0
	for j, u := range g.Ups {
		k.Sgemm(false, true, rows, u.out, u.in, 1, t[off:], lat, u.Weight, u.in, 0, y[j*u.out:], out)
		off += u.in
	}
	addBias(y, g.Bias, rows)
}

// cachedWidth is how many values a layer feeding the KV cache stores per
// token: the latent of a grouped layer, the full output otherwise.
func cachedWidth(l Linear) int {
	if g, ok := l.(*Grouped); ok {
		return g.Latent()
	}
	return l.Out()
}
