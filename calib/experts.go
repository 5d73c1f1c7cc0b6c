package calib

import (
	"fmt"
	"slices"

	"github.com/rankzip/rankzip/model"
)

// Experts runs every batch on to the mixture-of-experts site (model.MLPInput:
// the normalised MLP input the router and the experts read) and
// accumulates, for every expert, the statistics of its input over the
// calibration tokens that the router sends to it (its top-k choice on the
// stream the compressed block sees): the input of the gate and up
// projections (the normalised MLP input) when down is false, of the down
// projection (silu(gate x)·up x, with comp's gate and up as they are now)
// when true. The Gram of expert e sums only the rows routed to e; an expert
// no row reaches gets statistics with N 0, which the caller must not
// decompose. Like Stats, it reuses the pass's runs: the batches stay paused
// at the site, so both calls (gate/up, then down) and Next cost no second
// run of the attention.
//
// The routing weights are not applied: each Gram is of the input the
// expert's linears see, which is what the whitened SVD's C = Σ x xᵀ and
// GPTQ's Hessian are defined on (as for every other linear), and what the
// GPTQ implementations for Mixtral collect. Weighting rows by w² would fit
// the block's output instead, and would make the statistics depend on
// weights that change once the block is compressed.
//
// In Sequential mode the rows are routed on comp's stream and paired, token
// by token, with orig's for the cross-Gram (the original expert applied to
// the original input of the same token); in Original mode only orig runs.
//
// Qwen2-MoE's shared expert, which every row goes through, gets its
// statistics over every row, after the routed experts' (the last element).
func (p *Pass) Experts(down bool) ([]*SiteStats, error) {
	if p.orig.MoE == nil || p.comp.MoE == nil {
		return nil, fmt.Errorf("the block has no experts")
	}
	seq := p.compRuns != nil
	blk := p.orig
	if seq {
		blk = p.comp
	}
	experts := slices.Clone(p.orig.MoE.Experts)
	if p.orig.MoE.Shared != nil {
		experts = append(experts, *p.orig.MoE.Shared)
	}
	stats := make([]*SiteStats, len(experts))
	for e, ex := range experts {
		dim := ex.Gate.In()
		if down {
			dim = ex.Down.In()
		}
		stats[e] = newSiteStats(dim, seq)
	}
	for i := range p.origRuns {
		ro, rc := p.runs(i)
		if !advance(ro, p.orig, model.MLPInput, false) {
			return nil, fmt.Errorf("calibration pass already past the experts' input")
		}
		xo, rows, dim := ro.Input()
		xc := xo
		if rc != nil {
			if !advance(rc, p.comp, model.MLPInput, false) {
				return nil, fmt.Errorf("calibration pass already past the compressed experts' input")
			}
			xc, _, _ = rc.Input()
		}
		if err := addRouted(p.m, stats, blk, p.orig, xc, xo, rows, dim, down, seq); err != nil {
			return nil, err
		}
		if s := blk.MoE.Shared; s != nil {
			if err := addShared(p.m, stats[len(stats)-1], s, p.orig.MoE.Shared, xc, xo, rows, down, seq); err != nil {
				return nil, err
			}
		}
		if err := p.leave(i); err != nil {
			return nil, err
		}
	}
	return stats, nil
}

// addRouted adds to stats one batch of rows×dim MoE inputs: xc routed by
// blk's router, each expert's rows (through blk's gate and up when down),
// paired in Sequential mode with the same rows of xo through orig's.
func addRouted(m *model.Model, stats []*SiteStats, blk, orig *model.Block, xc, xo []float32, rows, dim int, down, seq bool) error {
	for e, picks := range blk.MoE.Route(m, xc, rows) {
		k := len(picks)
		if k == 0 {
			continue
		}
		xs := model.Gather(xc, dim, picks)
		var xsOrig []float32
		if seq {
			xsOrig = model.Gather(xo, dim, picks)
		}
		if err := addExpert(m, stats[e], &blk.MoE.Experts[e], &orig.MoE.Experts[e], xs, xsOrig, k, down); err != nil {
			return fmt.Errorf("expert %d: %w", e, err)
		}
	}
	return nil
}

// addShared adds to st the rows x that the shared expert s sees (xOrig:
// those its source orig sees, for the cross-Gram); with down, the input of
// the down projection they make.
func addShared(m *model.Model, st *SiteStats, s, orig *model.Expert, x, xOrig []float32, rows int, down, seq bool) error {
	if !seq {
		xOrig = nil
	}
	if err := addExpert(m, st, s, orig, x, xOrig, rows, down); err != nil {
		return fmt.Errorf("shared expert: %w", err)
	}
	return nil
}

// addExpert adds to st the k rows x that expert ex sees, paired (when xOrig
// is not nil) with the rows xOrig that its source orig sees; with down, the
// input of the down projection each expert makes of them.
func addExpert(m *model.Model, st *SiteStats, ex, orig *model.Expert, x, xOrig []float32, k int, down bool) error {
	if down {
		x = ex.Hidden(m, x, k)
		if xOrig != nil {
			xOrig = orig.Hidden(m, xOrig, k)
		}
	}
	return st.add(m.Backend, x, xOrig, k)
}
