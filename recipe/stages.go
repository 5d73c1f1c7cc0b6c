package recipe

import (
	"fmt"
	"slices"
	"strings"

	"github.com/rankzip/rankzip/methods/params"
	"github.com/rankzip/rankzip/model"
)

// Defaults of the palu, rtn/gptq and eora keys (DESIGN.md section 3).
const (
	DefaultQuantGroupSize  = 128
	DefaultDamp            = 0.01
	DefaultLatentGroupSize = 32
)

// PaluModules are the linears a palu stage factors.
var PaluModules = []string{"self_attn.k_proj", "self_attn.v_proj"}

// MLAModules are the linears an mla stage replaces by latent attention.
var MLAModules = []string{"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"}

func (v *validator) mla(where string, s *Stage) {
	if s.KVLoraRank == 0 {
		v.add("%s: missing key \"kv_lora_rank\": the latent dims cached per token", where)
	}
	if s.QKRopeHeadDim == 0 {
		v.add("%s: missing key \"qk_rope_head_dim\": the dims of the shared rope key", where)
	}
	if s.RoRoPE == nil {
		s.RoRoPE = ptr(true)
	}
	switch {
	case s.Rotation == "" && *s.RoRoPE:
		s.Rotation = model.DefaultRotation
	case s.Rotation == "":
		s.Rotation = "none"
	case !*s.RoRoPE && s.Rotation != "none":
		v.add("%s: rotation %s contradicts rorope: false (which keeps the first heads' own RoPE dims)", where, s.Rotation)
	}
	if s.FreqFold == 0 {
		s.FreqFold = 1
	}
	if s.BKV == nil {
		s.BKV = ptr(true)
	}
	if !slices.Contains(model.Rotations, s.Rotation) {
		v.add("%s: rotation %q unknown (want none, keys or scores)", where, s.Rotation)
		return
	}
	c := v.cfg
	if c == nil || s.KVLoraRank == 0 || s.QKRopeHeadDim == 0 {
		return
	}
	if c.MLA != nil {
		v.add("%s: the model already has latent attention (model_type %s)", where, c.ModelType)
		return
	}
	if err := c.Unsupported(model.FeatureMLA); err != nil {
		v.add("%s: %v", where, err)
		return
	}
	p := params.MLA{Heads: c.NumHeads, KVHeads: c.NumKVHeads, HeadDim: c.HeadDim, Freqs: len(c.InvFreq()),
		RopeDim: s.QKRopeHeadDim, LoraRank: s.KVLoraRank, Rotation: s.Rotation, FreqFold: s.FreqFold, SeqLen: 1}
	if err := p.Check(); err != nil {
		for _, e := range strings.Split(err.Error(), "\n") {
			v.add("%s: %s", where, e)
		}
	}
	if c.SlidingWindow > 0 {
		v.add("%s: the model uses sliding-window attention (%d), which latent attention here does not", where, c.SlidingWindow)
	}
	if v.calibTokens > 0 && v.calibTokens < c.HiddenSize {
		v.add("%s: the calibration set gives %d tokens (sequences × seq_len); mla needs at least hidden_size = %d", where, v.calibTokens, c.HiddenSize)
	}
}

// Changed returns the modules that stage i changes in every block (its
// canonical targets; palu's k and v projections).
func (r *Recipe) Changed(i int) []string {
	s := r.Stages[i]
	switch s.Method {
	case MethodPalu:
		return PaluModules
	case MethodMLA:
		return MLAModules
	}
	return s.Targets
}

func (v *validator) palu(where string, s *Stage) {
	switch {
	case s.KVKeep == 0:
		v.add("%s: missing key \"kv_keep\": the fraction of the K+V cache to keep, in (0, 1]", where)
	case !(s.KVKeep > 0 && s.KVKeep <= 1):
		v.add("%s: kv_keep %v must be in (0, 1]", where, s.KVKeep)
	}
	if s.RankSearch == "" {
		s.RankSearch = "fisher" // DESIGN's default, measured best on stories260K (compress.BenchmarkPaluTable)
		if v.cfg != nil && v.cfg.Unsupported(model.FeatureBackward) != nil {
			s.RankSearch = "spectrum" // the architecture has no backward pass (Qwen3, Gemma 3)
		}
	}
	if !slices.Contains(model.PaluSearches, s.RankSearch) {
		v.add("%s: rank_search %q unknown (want one of %s)", where, s.RankSearch, strings.Join(model.PaluSearches, ", "))
	}
	switch s.LatentBits {
	case 0:
		if s.LatentGroupSize != 0 {
			v.add("%s: latent_group_size applies only with latent_bits", where)
		}
		if s.Hadamard != nil && *s.Hadamard {
			v.add("%s: hadamard applies only with latent_bits", where)
		}
		if s.Hadamard == nil {
			s.Hadamard = ptr(false)
		}
	case 2, 3, 4, 8:
		if s.LatentGroupSize == 0 {
			s.LatentGroupSize = DefaultLatentGroupSize
		}
		if s.LatentGroupSize < 0 {
			v.add("%s: latent_group_size %d must be positive", where, s.LatentGroupSize)
		}
		if s.Hadamard == nil {
			s.Hadamard = ptr(true)
		}
	default:
		v.add("%s: latent_bits %d: want 2, 3, 4 or 8 (or leave it out for 16-bit latents)", where, s.LatentBits)
	}
	if v.cfg == nil {
		return
	}
	if err := v.cfg.Unsupported(model.FeaturePalu); err != nil {
		v.add("%s: %v", where, err)
		return
	}
	if err := v.cfg.Unsupported(model.FeatureBackward); err != nil && s.RankSearch == "fisher" {
		v.add("%s: rank_search fisher needs %v; use spectrum or uniform", where, err)
	}
	want := 0
	if s.GroupSize != nil {
		want = *s.GroupSize
	}
	g, err := params.PaluGroupHeads(v.cfg.NumKVHeads, want)
	if err != nil {
		v.add("%s: group_size %d must divide the model's %d KV heads", where, want, v.cfg.NumKVHeads)
	} else {
		s.GroupSize = ptr(g)
	}
	if v.calibTokens > 0 && v.calibTokens < v.cfg.HiddenSize {
		v.add("%s: the calibration set gives %d tokens (sequences × seq_len); palu needs at least hidden_size = %d", where, v.calibTokens, v.cfg.HiddenSize)
	}
}

func (v *validator) quant(i int, where string, s *Stage) {
	switch s.Bits {
	case 0:
		v.add("%s: missing key \"bits\": 2, 3, 4 or 8", where)
	case 2, 3, 4, 8:
	default:
		v.add("%s: bits %d: want 2, 3, 4 or 8", where, s.Bits)
	}
	if s.GroupSize == nil {
		s.GroupSize = ptr(DefaultQuantGroupSize)
	}
	if *s.GroupSize == -1 {
		s.GroupSize = ptr(0) // one group per output channel, canonically 0
	}
	gs := *s.GroupSize
	if !slices.Contains([]int{0, 32, 64, 128}, gs) {
		v.add("%s: group_size %d: want 32, 64, 128, or 0 for one group per output channel", where, gs)
	}
	if s.Sym == nil {
		s.Sym = ptr(true)
	}
	if s.ActOrder == nil {
		s.ActOrder = ptr(false)
	}
	if s.Damp == 0 {
		s.Damp = DefaultDamp
	}
	if !(s.Damp > 0 && s.Damp <= 1) {
		v.add("%s: damp %v must be in (0, 1]", where, s.Damp)
	}
	mods, ok := v.targets(where, s)
	if !ok {
		return
	}
	if len(s.Targets) == 0 {
		// Default: every linear the earlier stages left dense (quantizing
		// low-rank factors or Palu's projections is not implemented).
		for _, m := range mods {
			if v.changedBefore(i, m) < 0 {
				s.Targets = append(s.Targets, m)
			}
		}
		if len(s.Targets) == 0 {
			v.add("%s: the earlier stages leave no dense linear to quantize", where)
			return
		}
	} else {
		s.Targets = mods
		for _, m := range mods {
			if j := v.changedBefore(i, m); j >= 0 {
				v.add("%s cannot quantize %s: stages[%d] (%s) already replaced it, and quantizing low-rank factors is not implemented; give the stages disjoint targets", where, m, j, v.r.Stages[j].Method)
			}
		}
	}
	if v.cfg == nil || gs <= 0 {
		return
	}
	for _, m := range s.Targets {
		if _, in := v.cfg.ModuleShape(m); in%gs != 0 {
			v.add("%s: group_size %d does not divide the %d input features of %s (use 0 for one group per output channel, or leave it out of targets)", where, gs, in, m)
		}
	}
}

func (v *validator) eora(where string, s *Stage) {
	switch {
	case s.Rank == 0:
		v.add("%s: missing key \"rank\": the rank of every correction", where)
	case s.Rank < 0:
		v.add("%s: rank %d must be positive", where, s.Rank)
	}
	if c := v.cfg; c != nil && c.MoE != nil && len(s.Targets) == 0 {
		// Every attention and expert linear; combine keeps the experts an
		// earlier stage compressed.
		s.Targets = slices.Clone(c.TargetModules())
	} else if mods, ok := v.targets(where, s); ok {
		s.Targets = mods
	}
	for g, r := range s.RankOverrides {
		if err := model.CheckGlob(g); err != nil {
			v.add("%s: rank_overrides pattern %q is not a valid glob: %v", where, g, err)
			continue
		}
		if r <= 0 {
			v.add("%s: rank_overrides %q: rank %d must be positive", where, g, r)
		}
		if !slices.ContainsFunc(s.Targets, func(m string) bool { return model.GlobMatches(g, m) }) {
			v.add("%s: rank_overrides pattern %q matches none of the targets (%s)", where, g, strings.Join(s.Targets, ", "))
		}
	}
	// Several overrides matching one module would make the rank depend on
	// map order.
	for _, m := range s.Targets {
		var hits []string
		for g := range s.RankOverrides {
			if model.GlobMatches(g, m) {
				hits = append(hits, g)
			}
		}
		if len(hits) > 1 {
			slices.Sort(hits)
			v.add("%s: rank_overrides patterns %s all match %s; give one", where, strings.Join(hits, ", "), m)
		}
	}
}

// targets expands a stage's target globs; ok is false when one is bad. In
// a mixture of experts, svd, lord, rtn, gptq and eora take the experts'
// linears (model.Config.MatchTargets; compress/moe.go), the other stages
// only the attention projections.
func (v *validator) targets(where string, s *Stage) ([]string, bool) {
	c := v.cfg
	if c != nil && c.MoE != nil && expertMethod(s.Method) {
		mods, errs := c.MatchTargets(s.Targets)
		for _, e := range errs {
			v.add("%s: %s", where, e)
		}
		return mods, len(errs) == 0
	}
	mods, errs := model.MatchModules(s.Targets)
	for _, e := range errs {
		v.add("%s: %s", where, e)
	}
	if c != nil && c.MoE != nil && len(s.Targets) == 0 {
		mods = slices.DeleteFunc(mods, func(m string) bool { return c.CheckTargets([]string{m}) != nil }) // default: the attention
	}
	if c != nil && len(errs) == 0 {
		if err := c.CheckTargets(mods); err != nil {
			v.add("%s: %v", where, err)
			return nil, false
		}
	}
	return mods, len(errs) == 0
}

// expertMethod tells whether a stage of method m can compress experts.
func expertMethod(m Method) bool {
	return m == MethodSVD || m == MethodLoRD || m == MethodRTN || m == MethodGPTQ || m == MethodEoRA
}

// changedBefore returns the index of a stage before i that changes module,
// or -1.
func (v *validator) changedBefore(i int, module string) int {
	for j := range i {
		if _, ok := methodKeys[v.r.Stages[j].Method]; ok && slices.Contains(v.r.Changed(j), module) {
			return j
		}
	}
	return -1
}

// combine refuses sequences of stages the pipeline cannot run, once every
// stage is canonical.
func (v *validator) combine() {
	st := v.r.Stages
	for i, s := range st {
		where := fmt.Sprintf("stages[%d] (%s)", i, s.Method)
		switch s.Method {
		case MethodPalu:
			for _, m := range PaluModules {
				if j := v.changedBefore(i, m); j >= 0 {
					v.add("%s needs dense k_proj and v_proj, but stages[%d] (%s) targets %s: leave the KV projections out of its targets", where, j, st[j].Method, m)
					break
				}
			}
		case MethodEoRA:
			// Palu's grouped projections are not compensated (their latent
			// cache has no place for a correction): left out of the default
			// targets, refused when named.
			named := slices.Contains(s.keys, "targets")
			var keep []string
			for _, m := range s.Targets {
				j := v.changedBefore(i, m)
				if _, _, expert := model.ParseExpertModule(m); expert && !named && j < 0 {
					continue // by default only the experts an earlier stage compressed
				}
				if j >= 0 && st[j].Method == MethodPalu {
					if named {
						v.add("%s cannot compensate %s: stages[%d] (palu) made it a grouped latent projection, which eora does not correct; leave it out of the targets", where, m, j)
					}
					continue
				}
				keep = append(keep, m)
			}
			st[i].Targets, s.Targets = keep, keep
			if !slices.ContainsFunc(s.Targets, func(m string) bool { return v.changedBefore(i, m) >= 0 }) {
				v.add("%s: none of its targets (%s) is compressed by an earlier stage: there is no error to compensate", where, strings.Join(s.Targets, ", "))
			}
		case MethodMLA:
			for _, m := range MLAModules {
				if j := v.changedBefore(i, m); j >= 0 {
					v.add("%s needs dense q_proj, k_proj and v_proj, but stages[%d] (%s) targets %s: leave the attention projections out of its targets", where, j, st[j].Method, m)
					break
				}
			}
			for j := i + 1; j < len(st); j++ {
				v.add("stages[%d] (%s) cannot follow stages[%d] (mla): not implemented, as no export format holds both latent attention and quantized layers or adapters", j, st[j].Method, i)
			}
		}
		switch s.Method {
		case MethodRTN, MethodGPTQ:
			for j := range i {
				if st[j].Method == MethodPalu && v.r.Export.Format == "gptq" {
					v.add("%s after stages[%d] (palu) cannot be exported as gptq, whose layout has no place for Palu's grouped KV projections: use native", where, j)
				}
			}
		}
	}
}

// exportFits checks the export format against the stages.
func (v *validator) exportFits() {
	e := v.r.Export
	quant, lowRank, paluAt, mlaAt := -1, -1, -1, -1
	for i, s := range v.r.Stages {
		switch s.Method {
		case MethodRTN, MethodGPTQ, MethodEoRA:
			if quant < 0 {
				quant = i
			}
		case MethodSVD, MethodLoRD:
			lowRank = i
		case MethodPalu:
			paluAt = i
		case MethodMLA:
			mlaAt = i
		}
	}
	switch {
	case mlaAt >= 0 && e.Format != "deepseek-mla":
		v.add("stages[%d] (mla) needs export.format deepseek-mla (the only layout that holds latent attention), not %s", mlaAt, e.Format)
	case mlaAt < 0 && e.Format == "deepseek-mla":
		v.add("export.format deepseek-mla needs an mla stage")
	}
	switch e.Format {
	case "palu":
		switch {
		case paluAt < 0:
			v.add("export.format palu needs a palu stage")
		case len(v.r.Stages) > 1:
			v.add("export.format palu holds only Palu's factored k/v projections (every other layer dense): a recipe with it has the palu stage alone")
		case v.r.Stages[paluAt].LatentBits != 0:
			v.add("export.format palu cannot say that stages[%d] quantizes the latents (latent_bits %d): use native", paluAt, v.r.Stages[paluAt].LatentBits)
		case v.cfg != nil && !slices.Contains([]string{"llama", "mistral", "qwen2"}, v.cfg.ModelType):
			v.add("export.format palu: Palu's layout exists for llama, mistral and qwen2, not model_type %s: use native", v.cfg.ModelType)
		}
	case "native":
		// Holds factored, Palu and quantized layers; eora's corrections go
		// to a PEFT adapter beside it.
		for i, s := range v.r.Stages {
			if expertMethod(s.Method) && model.HasExperts(s.Targets) {
				v.add("export.format native cannot hold the compressed experts of stages[%d] (%s): a native checkpoint of compressed experts is not implemented (a mixture of experts is saved in its Hub layout, dense experts only); use export.format dense (rankzip compress --export dense)", i, s.Method)
				break
			}
		}
	case "dense":
		if paluAt >= 0 && v.r.Stages[paluAt].LatentBits != 0 {
			v.add("export.format dense cannot express the quantized latent cache of stages[%d] (palu, latent_bits %d): use native", paluAt, v.r.Stages[paluAt].LatentBits)
		}
	case "gptq":
		if quant < 0 || (v.r.Stages[quant].Method == MethodEoRA) {
			v.add("export.format gptq needs an rtn or gptq stage (the GPTQ layout holds quantized layers)")
			return
		}
		if lowRank >= 0 {
			v.add("export.format gptq cannot hold the low-rank factors of stages[%d] (%s): the GPTQ layout has none; use dense to measure quality", lowRank, v.r.Stages[lowRank].Method)
		}
		if v.cfg == nil {
			return
		}
		if err := v.cfg.Unsupported(model.FeatureGPTQ); err != nil {
			v.add("export.format gptq: %v", err)
			return
		}
		var unfit []string
		for _, m := range v.r.Stages[quant].Targets {
			if out, in := v.cfg.ModuleShape(m); out%32 != 0 || in%32 != 0 {
				unfit = append(unfit, fmt.Sprintf("%s (%d×%d)", m, out, in))
			}
		}
		if len(unfit) > 0 {
			v.add("export.format gptq packs only layers whose out and in are multiples of 32 (GPTQ v1): leave %s out of the targets of stages[%d] (%s)", strings.Join(unfit, ", "), quant, v.r.Stages[quant].Method)
		}
		for i, s := range v.r.Stages {
			if s.Method == MethodEoRA && model.HasExperts(s.Targets) {
				v.add("export.format gptq cannot hold the expert corrections of stages[%d] (eora): a PEFT adapter for experts is not implemented (Mixtral's expert modules are named w1/w2/w3, and transformers 5 fuses the experts); leave mlp.experts.* out of its targets, or use export.format dense", i)
			}
		}
	}
}

func ptr[T any](x T) *T { return &x }
