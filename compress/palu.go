package compress

import (
	"context"
	"fmt"
	"math"
	"slices"
	"strings"

	"gonum.org/v1/gonum/mat"

	"github.com/rankzip/rankzip/calib"
	"github.com/rankzip/rankzip/methods/palu"
	"github.com/rankzip/rankzip/model"
)

// PaluOptions describe a Palu stage: k_proj and v_proj factored in groups of
// heads so that only a latent per token is cached.
type PaluOptions struct {
	KVKeep     float64    // fraction of the K+V cache kept per token, in (0, 1]
	GroupHeads int        // KV heads per group: 1 M-LRD, all J-LRD; 0: 4 or the largest divisor
	RankSearch string     // uniform (default), spectrum or fisher
	Mode       calib.Mode // sequential (default) or original
	Batch      int        // calibration sequences per batch (default 16)

	LatentBits      int  // 0 (16-bit latents), 2, 3, 4 or 8: per-token quantization of the cached latents
	LatentGroupSize int  // latent values per scale and zero (default 32)
	Hadamard        bool // rotate each group's latent by a Walsh–Hadamard transform folded into the factors
}

// PaluResult is the compressed model and its latent sizes.
type PaluResult struct {
	Model        *model.Model
	Ranks        map[string][]int // per module (model.layers.i.self_attn.k_proj), per group
	KVBytes      int              // per token at 16-bit, after
	KVBytesOrig  int              // per token at 16-bit, before
	GroupHeads   int
	LatentPerTok int // latent values per token over all layers
}

var paluModules = []string{"self_attn.k_proj", "self_attn.v_proj"}

// PaluSearches lists Palu's rank searches.
var PaluSearches = model.PaluSearches

func (o *PaluOptions) validate(c *model.Config, first *model.Block, tokens int) error {
	var problems []string
	if err := c.Unsupported(model.FeaturePalu); err != nil {
		return err
	}
	if !(o.KVKeep > 0 && o.KVKeep <= 1) {
		problems = append(problems, fmt.Sprintf("kv_keep %v must be in (0, 1]", o.KVKeep))
	}
	g, err := palu.GroupHeads(c.NumKVHeads, o.GroupHeads)
	if err != nil {
		problems = append(problems, err.Error())
	}
	o.GroupHeads = g
	if o.RankSearch == "" {
		// fisher (DESIGN's default) measured best on stories260K at every
		// budget and grouping (BenchmarkPaluTable); it costs one backward
		// pass over the calibration set. Where the architecture has no
		// backward pass (Qwen3, Gemma 3), spectrum.
		o.RankSearch = "fisher"
		if c.Unsupported(model.FeatureBackward) != nil {
			o.RankSearch = "spectrum"
		}
	}
	if err := c.Unsupported(model.FeatureBackward); err != nil && o.RankSearch == "fisher" {
		problems = append(problems, fmt.Sprintf("rank_search fisher needs %v; use spectrum or uniform", err))
	}
	if !slices.Contains(PaluSearches, o.RankSearch) {
		problems = append(problems, fmt.Sprintf("palu rank_search %q unknown (want one of %s)", o.RankSearch, strings.Join(PaluSearches, ", ")))
	}
	if err := calibDefaults(&o.Mode, &o.Batch); err != nil {
		problems = append(problems, err.Error())
	}
	switch o.LatentBits {
	case 0, 2, 3, 4, 8:
	default:
		problems = append(problems, fmt.Sprintf("latent_bits %d: want 2, 3, 4 or 8 (or none)", o.LatentBits))
	}
	if o.LatentGroupSize == 0 {
		o.LatentGroupSize = 32
	}
	if o.LatentGroupSize < 1 {
		problems = append(problems, fmt.Sprintf("latent_group_size %d must be positive", o.LatentGroupSize))
	}
	for _, mod := range paluModules {
		if _, ok := (*first.Linear(mod)).(*model.Dense); !ok {
			problems = append(problems, fmt.Sprintf("%s is %T: palu needs separate dense k and v projections", mod, *first.Linear(mod)))
		}
	}
	if tokens < c.HiddenSize {
		problems = append(problems, fmt.Sprintf("the calibration set has %d tokens; palu needs at least hidden_size = %d", tokens, c.HiddenSize))
	}
	if len(problems) > 0 {
		return fmt.Errorf("invalid palu stage: %s", strings.Join(problems, "; "))
	}
	return nil
}

// RunPalu compresses the KV cache of m with Palu calibrated on seqs.
func RunPalu(ctx context.Context, m *model.Model, seqs [][]int32, o PaluOptions) (*PaluResult, error) {
	p, err := NewPaluPlan(ctx, Whole(m), seqs, o)
	if err != nil {
		return nil, err
	}
	st, err := calib.Embed(m, seqs, p.Options.Batch, p.Options.Mode)
	if err != nil {
		return nil, err
	}
	out := *m
	out.Blocks = make([]*model.Block, len(m.Blocks))
	for i := range m.Blocks {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if out.Blocks[i], st, err = p.Block(ctx, m, i, st, nil); err != nil {
			return nil, err
		}
	}
	r := &PaluResult{Model: &out, Ranks: p.Ranks, KVBytes: out.KVBytesPerToken(), KVBytesOrig: m.KVBytesPerToken(), GroupHeads: p.Options.GroupHeads}
	for _, ranks := range r.Ranks {
		for _, x := range ranks {
			r.LatentPerTok += x
		}
	}
	return r, nil
}

// paluRanks chooses each group's rank for the KV budget: the same share of
// every group (uniform), or one latent value at a time to the group whose
// next whitened singular value removes the most energy relative to its
// group's total (spectrum), starting from rank 1 everywhere, or in
// proportion to the groups' Fisher importance (fisher, see fisherRanks),
// which spends uniform's total rank.
func paluRanks(ctx context.Context, src Source, seqs [][]int32, o PaluOptions, groups, groupRows int) (map[string][]int, error) {
	m := src.Top
	var names []string
	for i := range src.Layers() {
		for _, mod := range paluModules {
			names = append(names, model.ModuleName(i, mod))
		}
	}
	ranks := make(map[string][]int, len(names))
	per := max(1, min(groupRows, int(math.Floor(o.KVKeep*float64(groupRows)+1e-9)))) // never above the budget
	if o.RankSearch == "uniform" {
		for _, n := range names {
			ranks[n] = repeat(per, groups)
		}
		return ranks, nil
	}
	if o.RankSearch == "fisher" {
		return fisherRanks(ctx, src, seqs, o, names, groups, per)
	}
	// Normalised spectra of every group, from the original model's statistics.
	var spectra [][]float64 // flat: layer-module-major, then group
	err := originalPass(ctx, src, seqs, Options{Batch: o.Batch}, paluModules, func(_, _ int, _ string, w *mat.Dense, _ []float64, stats *calib.SiteStats) error {
		s, err := palu.Spectra(m.Backend, w, stats.C, m.Config.HeadDim, o.GroupHeads)
		if err != nil {
			return err
		}
		for _, g := range s {
			var total float64
			for _, v := range g {
				total += v * v
			}
			e := make([]float64, len(g))
			for i, v := range g {
				if total > 0 {
					e[i] = v * v / total
				}
			}
			spectra = append(spectra, e)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	budget := int(math.Floor(o.KVKeep * float64(len(spectra)*groupRows)))
	flat := make([]int, len(spectra))
	used := 0
	for i := range flat {
		flat[i] = 1
		used++
	}
	for used < budget {
		best := -1
		for i, e := range spectra {
			if flat[i] < len(e) && (best < 0 || e[flat[i]] > spectra[best][flat[best]]) {
				best = i
			}
		}
		if best < 0 {
			break
		}
		flat[best]++
		used++
	}
	for i, n := range names {
		ranks[n] = flat[i*groups : (i+1)*groups]
	}
	return ranks, nil
}

func repeat(v, n int) []int {
	s := make([]int, n)
	for i := range s {
		s[i] = v
	}
	return s
}

// grouped converts a Palu factorisation to a float32 layer.
func grouped(r palu.Result) (*model.Grouped, error) {
	var downRows []*mat.Dense
	var ups []*model.Dense
	for _, g := range r.Groups {
		downRows = append(downRows, g.Down)
		ups = append(ups, denseF32(g.Up, nil))
	}
	rows := 0
	_, in := downRows[0].Dims()
	for _, d := range downRows {
		r, _ := d.Dims()
		rows += r
	}
	down := mat.NewDense(rows, in, nil)
	off := 0
	for _, d := range downRows {
		r, _ := d.Dims()
		down.Slice(off, off+r, 0, in).(*mat.Dense).Copy(d)
		off += r
	}
	return model.NewGrouped(denseF32(down, nil), ups, f32s(r.Bias))
}
