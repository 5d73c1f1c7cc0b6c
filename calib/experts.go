package calib

import (
	"fmt"
	"slices"

	"github.com/rankzip/rankzip/model"
)

// CollectExperts accumulates, for every expert of a mixture-of-experts
// block, the statistics of its input over the calibration tokens that the
// router sends to it (its top-k choice on the stream the compressed block
// sees): the input of the gate and up projections (the normalised MLP
// input) when down is false, of the down projection (silu(gate x)·up x)
// when true. The Gram of expert e sums only the rows routed to e; an expert
// no row reaches gets statistics with N 0, which the caller must not
// decompose.
//
// The routing weights are not applied: each Gram is of the input the
// expert's linears see, which is what the whitened SVD's C = Σ x xᵀ and
// GPTQ's Hessian are defined on (as for every other linear), and what the
// GPTQ implementations for Mixtral collect. Weighting rows by w² would fit
// the block's output instead, and would make the statistics depend on
// weights that change once the block is compressed.
//
// orig and comp are as in Collect: in Sequential mode the rows are routed
// on comp's stream and paired, token by token, with orig's for the
// cross-Gram (the original expert applied to the original input of the
// same token); in Original mode only orig runs.
//
// Qwen2-MoE's shared expert, which every row goes through, gets its
// statistics over every row, after the routed experts' (the last element).
func CollectExperts(m *model.Model, orig, comp *model.Block, st *Streams, down bool) ([]*SiteStats, error) {
	if orig.MoE == nil || comp.MoE == nil {
		return nil, fmt.Errorf("the block has no experts")
	}
	seq := st.Mode == Sequential
	blk := orig
	if seq {
		blk = comp
	}
	experts := slices.Clone(orig.MoE.Experts)
	if orig.MoE.Shared != nil {
		experts = append(experts, *orig.MoE.Shared)
	}
	stats := make([]*SiteStats, len(experts))
	for e, ex := range experts {
		dim := ex.Gate.In()
		if down {
			dim = ex.Down.In()
		}
		stats[e] = newSiteStats(dim, seq)
	}
	for i, h := range st.Orig {
		xo := mlpInput(m, orig, h)
		xc := xo
		if seq {
			xc = mlpInput(m, comp, st.Comp[i])
		}
		for e, picks := range blk.MoE.Route(m, xc, h.Rows()) {
			k := len(picks)
			if k == 0 {
				continue
			}
			xs := model.Gather(xc, h.Dim, picks)
			var xsOrig []float32
			if seq {
				xsOrig = model.Gather(xo, h.Dim, picks)
			}
			if down {
				xs = blk.MoE.Experts[e].Hidden(m, xs, k)
				if seq {
					xsOrig = orig.MoE.Experts[e].Hidden(m, xsOrig, k)
				}
			}
			if err := stats[e].add(m.Backend, xs, xsOrig, k); err != nil {
				return nil, fmt.Errorf("expert %d: %w", e, err)
			}
		}
		if s := blk.MoE.Shared; s != nil {
			if err := addShared(m, stats[len(stats)-1], s, orig.MoE.Shared, xc, xo, h.Rows(), down, seq); err != nil {
				return nil, err
			}
		}
	}
	return stats, nil
}

// addShared adds to st the rows x that the shared expert s sees (xOrig:
// those its source orig sees, for the cross-Gram); with down, the input of
// the down projection they make.
func addShared(m *model.Model, st *SiteStats, s, orig *model.Expert, x, xOrig []float32, rows int, down, seq bool) error {
	var paired []float32
	if seq {
		paired = xOrig
	}
	if down {
		x = s.Hidden(m, x, rows)
		if seq {
			paired = orig.Hidden(m, xOrig, rows)
		}
	}
	if err := st.add(m.Backend, x, paired, rows); err != nil {
		return fmt.Errorf("shared expert: %w", err)
	}
	return nil
}

// mlpInput is the normalised MLP input of block b on h (rows×hidden).
func mlpInput(m *model.Model, b *model.Block, h *model.States) []float32 {
	var x []float32
	m.RunBlock(b, h, func(at model.Site, v []float32, rows, cols int) bool {
		if at != model.MLPInput {
			return true
		}
		x = slices.Clone(v[:rows*cols])
		return false
	})
	return x
}
