package compress

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/rankzip/rankzip/calib"
	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/model"
	"github.com/rankzip/rankzip/model/gptq"
)

// Mixture-of-experts blocks (model/moe.go): every expert's gate, up and
// down projections are targets of the low-rank and quantization stages,
// named mlp.experts.<e>.gate_proj, up_proj and down_proj in every MoE
// architecture (Mixtral's w1, w3 and w2), so "mlp.*" or
// "mlp.experts.*.down_proj" select them. The router (mlp.gate) is never a
// target: it stays dense. Each expert is calibrated on the tokens routed to
// it (calib.Pass.Experts, on the block's single calibration pass): first the
// gate and up projections of every expert, then, seeing those compressed,
// the down projections. An expert
// that no calibration token reaches has no statistics: it is left dense
// and reported (Layer.Unrouted, QuantLayer.Unrouted), never decomposed on
// an empty Gram. The global and sensitivity rank searches are not
// implemented for experts (their passes calibrate by site, not by expert):
// experts take uniform ranks or a fixed rank. EoRA corrects the compressed
// experts the same way, each on its routed tokens.

// targetModules returns the block modules the globs select for models of
// config c, in block order: modulesOf for dense MLPs; for a mixture of
// experts, among its attention projections and expert linears (all of them
// when targets is empty).
func targetModules(c *model.Config, targets []string) ([]string, error) {
	if c.MoE == nil {
		return modulesOf(targets)
	}
	if len(targets) == 0 {
		return slices.Clone(c.TargetModules()), nil // attention and every expert
	}
	mods, problems := c.MatchTargets(targets)
	if len(problems) > 0 {
		return nil, errors.New(strings.Join(problems, "; "))
	}
	return mods, nil
}

// isExpert tells whether a target module is an expert's linear.
func isExpert(mod string) bool {
	_, _, ok := model.ParseExpertModule(mod)
	return ok
}

// hasExperts tells whether mods names an expert's linear.
func hasExperts(mods []string) bool { return slices.ContainsFunc(mods, isExpert) }

// expertBlock prepares comp, a copy of orig, for its experts to be
// replaced without changing orig's.
func expertBlock(comp *model.Block) { comp.MoE = comp.MoE.Clone() }

// forExperts calls fn for every expert module among mods of block i, gate
// and up projections first and then down projections, each with the
// statistics of the rows routed to its expert, collected by pass (block i's)
// from the compressed block as compressed so far.
func forExperts(i int, pass *calib.Pass, mods []string, fn func(name, mod string, stats *calib.SiteStats) error) error {
	for _, down := range []bool{false, true} {
		var group []string
		for _, mod := range mods {
			if _, j, ok := model.ParseExpertModule(mod); ok && (j == 2) == down {
				group = append(group, mod)
			}
		}
		if len(group) == 0 {
			continue
		}
		stats, err := pass.Experts(down)
		if err != nil {
			return fmt.Errorf("calibrate the experts of model.layers.%d: %w", i, err)
		}
		for _, mod := range group {
			e, _, _ := model.ParseExpertModule(mod)
			if e == model.SharedExpert { // calib.Pass.Experts puts it last
				e = len(stats) - 1
			}
			if err := fn(model.ModuleName(i, mod), mod, stats[e]); err != nil {
				return err
			}
		}
	}
	return nil
}

// experts factors the expert linears among p.Modules of block i into comp
// and returns their report.
func (p *Plan) experts(m *model.Model, i int, orig, comp *model.Block, pass *calib.Pass) ([]Layer, error) {
	var layers []Layer
	err := forExperts(i, pass, p.Modules, func(name, mod string, stats *calib.SiteStats) error {
		ch, ok := p.Ranks[name]
		if !ok {
			return fmt.Errorf("plan has no rank for %s", name)
		}
		w, bias, err := weight(*orig.Linear(mod), name)
		if err != nil {
			return err
		}
		out, in := w.Dims()
		if stats.N == 0 || ch.Dense {
			layers = append(layers, Layer{Name: name, Out: out, In: in, Dense: true, Unrouted: stats.N == 0})
			return nil
		}
		f, predicted, err := factor(m, w, bias, stats, p.Options, ch.Rank)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		*comp.Linear(mod) = f
		layers = append(layers, Layer{Name: name, Out: out, In: in, Rank: ch.Rank, PredictedError: predicted})
		return nil
	})
	return layers, err
}

// experts quantizes the expert linears among mods of block i into comp and
// returns their report.
func (o *QuantOptions) experts(m *model.Model, i int, orig, comp *model.Block, pass *calib.Pass, mods []string) ([]QuantLayer, error) {
	var layers []QuantLayer
	err := forExperts(i, pass, mods, func(name, mod string, stats *calib.SiteStats) error {
		w, bias, err := weight(*orig.Linear(mod), name)
		if err != nil {
			return err
		}
		if stats.N == 0 {
			out, in := w.Dims()
			layers = append(layers, QuantLayer{Name: name, Out: out, In: in, Unrouted: true})
			return nil
		}
		q, layer, err := quantizeLayer(m.Backend, w, bias, stats, *o)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		layer.Name = name
		*comp.Linear(mod) = q
		layers = append(layers, layer)
		return nil
	})
	return layers, err
}

// experts fits the EoRA corrections of the compressed expert linears among
// mods of block i of nb (ob the original block) and returns their adapters
// and report; dense experts are skipped, as every dense layer is, and a
// compressed expert that no calibration token reaches is reported and left
// uncompensated.
func (o *EoRAOptions) experts(k kernels.Backend, i int, ob, nb *model.Block, pass *calib.Pass, mods []string) ([]gptq.Adapter, []EoRALayer, error) {
	var compressed []string
	for _, mod := range mods {
		if isExpert(mod) {
			if _, dense := (*nb.Linear(mod)).(*model.Dense); !dense {
				compressed = append(compressed, mod)
			}
		}
	}
	var adapters []gptq.Adapter
	var layers []EoRALayer
	err := forExperts(i, pass, compressed, func(name, mod string, stats *calib.SiteStats) error {
		if stats.N == 0 {
			layers = append(layers, EoRALayer{Name: name, Unrouted: true})
			return nil
		}
		a, layer, err := o.compensate(k, name, mod, ob, nb, stats)
		if err != nil {
			return err
		}
		adapters = append(adapters, a)
		layers = append(layers, layer)
		return nil
	})
	return adapters, layers, err
}

// checkExpertSearch refuses the rank searches that experts do not support.
func checkExpertSearch(mods []string, o *Options) error {
	if !hasExperts(mods) || o.Rank > 0 || o.RankSearch == "uniform" {
		return nil
	}
	return fmt.Errorf("rank_search %s is not implemented for expert targets (mlp.experts.*): use uniform or a fixed rank", o.RankSearch)
}
