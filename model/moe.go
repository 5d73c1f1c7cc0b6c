package model

import (
	"fmt"
	"math"
	"slices"
	"sort"
	"strings"
)

// Mixture-of-experts blocks: Mixtral (model_type mixtral; transformers'
// models/mixtral/modeling_mixtral.py, MixtralSparseMoeBlock) and Qwen3-MoE
// (qwen3_moe; models/qwen3_moe/modeling_qwen3_moe.py, Qwen3MoeSparseMoeBlock)
// replace the MLP by a router and experts: router logits = gate x (no bias),
// p = softmax(logits) over all experts in float32, the top num_experts_per_tok
// experts by p, their weights p renormalised to sum 1 (Mixtral always;
// Qwen3-MoE when norm_topk_prob), and the output Σ weight_e · expert_e(x),
// each expert a SiLU-gated MLP. The attention is Mixtral's (Mistral's, with
// its sliding_window on every layer) or Qwen3's (per-head q/k norms; with
// use_sliding_window, sliding_window on every layer, as Qwen3MoeAttention).
//
// Tensors, in the layout of the checkpoints on the Hub (which transformers 5
// converts on load): Mixtral's block_sparse_moe.gate.weight [experts, hidden]
// and block_sparse_moe.experts.<e>.w1 (gate), w2 (down), w3 (up); Qwen3-MoE's
// mlp.gate.weight and mlp.experts.<e>.gate_proj, up_proj, down_proj. The
// loader also reads transformers 5's fused form (mlp.gate.weight,
// mlp.experts.gate_up_proj [experts, 2·inter, hidden], mlp.experts.down_proj
// [experts, hidden, inter]); exports write the Hub layout.
//
// Supported: the forward pass, decoding, load, dense export (Densify
// multiplies factored experts back), the low-rank, quantization and EoRA
// stages on the attention projections and on every expert's linears (target
// names mlp.experts.<e>.gate_proj, up_proj, down_proj for every MoE
// architecture, and Qwen2-MoE's mlp.shared_expert.*; compress/moe.go
// calibrates each expert on the tokens routed to it, the shared one on every
// token), and
// the other stages on the attention (targets self_attn.*). The router is
// never a target. Refused, naming the architecture: fisher (no backward
// through the router), Palu, MLA, and a native checkpoint of compressed
// experts (not implemented: their layout is the Hub's dense one). The GPTQ
// layout holds every MoE architecture's quantized experts (model/gptq,
// through MoELinears).
// Refused in config.json: Qwen3-MoE's decoder_sparse_step other than 1 and
// mlp_only_layers (dense MLP layers among the sparse ones), layer_types
// that disagree with use_sliding_window on Qwen3-MoE, and routing options the forward pass does not honour
// (moe_routing.go: expert choice, sigmoid scores, group-limited top-k,
// scaled or shared experts).

// MoEConfig is a mixture-of-experts model's routing.
type MoEConfig struct {
	Experts, TopK int
	Inter         int  // each expert's intermediate size
	NormTopK      bool // renormalise the top-k weights to sum 1
	// Prefix is the MoE module inside a layer: "block_sparse_moe." for
	// Mixtral, "mlp." for Qwen3-MoE; Names are the expert's gate, up and
	// down tensors.
	Prefix string
	Names  [3]string
	// SharedInter is the intermediate size of Qwen2-MoE's shared expert
	// (qwen2moe.go), 0 when there is none.
	SharedInter int
}

// MoE is a block's router and experts.
type MoE struct {
	Router  *Dense // experts×hidden
	Experts []Expert
	TopK    int
	Norm    bool
	// Shared is Qwen2-MoE's shared expert, which every row goes through,
	// scaled by sigmoid(SharedGate x) (SharedGate 1×hidden); nil when none.
	Shared     *Expert
	SharedGate *Dense
}

// Expert is one SiLU-gated MLP.
type Expert struct{ Gate, Up, Down Linear }

// NumParams counts the router's and the experts' parameters.
func (e *MoE) NumParams() int64 {
	n := e.Router.NumParams()
	for _, x := range e.Experts {
		n += x.Gate.NumParams() + x.Up.NumParams() + x.Down.NumParams()
	}
	if s := e.Shared; s != nil {
		n += s.Gate.NumParams() + s.Up.NumParams() + s.Down.NumParams() + e.SharedGate.NumParams()
	}
	return n
}

// mixtral reads Mixtral's own config fields.
func (p *parser) mixtral(c *Config) {
	c.QKVBias, c.OBias, c.MLPBias = false, false, false // MixtralConfig has none; no linear has a bias
	if w := p.optInt("sliding_window"); w > 0 && w < c.MaxPositions {
		c.SlidingWindow = w
	}
	c.MoE = &MoEConfig{Experts: p.positive("num_local_experts"), TopK: p.positive("num_experts_per_tok"),
		Inter: c.IntermediateSize, NormTopK: true, Prefix: "block_sparse_moe.", Names: [3]string{"w1", "w3", "w2"}}
	p.checkTopK(c.MoE, "num_local_experts")
	p.moeRouting(false)
}

// qwen3moe reads Qwen3-MoE's own config fields.
func (p *parser) qwen3moe(c *Config) {
	c.QKNorm = true
	// Qwen3MoeAttention slides on every layer when the config keeps a
	// window; it reads neither max_window_layers nor layer_types.
	c.SlidingWindow = p.qwenWindow()
	for i, t := range p.layerTypes(c.NumLayers) {
		if (t == "sliding_attention") != (c.SlidingWindow > 0) {
			p.fail("layer_types", fmt.Errorf("layer %d is %q, but qwen3_moe's layers all slide when use_sliding_window is true and none otherwise", i, t))
			return
		}
	}
	c.MoE = &MoEConfig{Experts: p.positive("num_experts"), TopK: p.positive("num_experts_per_tok"),
		Inter: p.positive("moe_intermediate_size"), NormTopK: p.boolean("norm_topk_prob", false),
		Prefix: "mlp.", Names: [3]string{"gate_proj", "up_proj", "down_proj"}}
	p.checkTopK(c.MoE, "num_experts")
	p.moeRouting(false)
	p.sparseEveryLayer()
}

// sparseEveryLayer refuses Qwen-MoE configs with dense MLP layers among the
// sparse ones.
func (p *parser) sparseEveryLayer() {
	if s := p.optInt("decoder_sparse_step"); s > 1 {
		p.fail("decoder_sparse_step", fmt.Errorf("%d: dense MLP layers between sparse ones are not supported (only 1)", s))
	}
	var dense []int
	if p.decode("mlp_only_layers", &dense) && len(dense) > 0 {
		p.fail("mlp_only_layers", fmt.Errorf("%v: dense MLP layers among the sparse ones are not supported", dense))
	}
}

func (p *parser) checkTopK(m *MoEConfig, experts string) {
	if m.TopK > m.Experts && m.Experts > 0 {
		p.fail("num_experts_per_tok", fmt.Errorf("%d exceeds %s %d", m.TopK, experts, m.Experts))
	}
}

// moeName is the tensor of expert e's module j (0 gate, 1 up, 2 down) in
// the Hub layout.
func moeName(c *Config, p string, e, j int) string {
	return fmt.Sprintf("%s%sexperts.%d.%s.weight", p, c.MoE.Prefix, e, c.MoE.Names[j])
}

// expertShape is (out, in) of an expert's module j.
func expertShape(c *Config, j int) (int, int) {
	if j == 2 {
		return c.HiddenSize, c.MoE.Inter
	}
	return c.MoE.Inter, c.HiddenSize
}

// moeSpecs lists the router and expert tensors of layer prefix p.
func moeSpecs(c *Config, p string) []tensorSpec {
	specs := []tensorSpec{{name: p + c.MoE.Prefix + "gate.weight", shape: []int{c.MoE.Experts, c.HiddenSize}}}
	for e := range c.MoE.Experts {
		for j := range 3 {
			out, in := expertShape(c, j)
			specs = append(specs, tensorSpec{name: moeName(c, p, e, j), shape: []int{out, in}})
		}
	}
	return append(specs, sharedSpecs(c, p)...)
}

// fusedMoENames are transformers 5's fused expert tensors of layer prefix p.
func fusedMoENames(p string) (router, gateUp, down string) {
	return p + "mlp.gate.weight", p + "mlp.experts.gate_up_proj", p + "mlp.experts.down_proj"
}

// readFusedMoE reads, when the checkpoint holds transformers 5's fused
// experts for layer prefix p, every expert tensor into tensors under its
// Hub name; ok is false when the layer is in the Hub layout.
func readFusedMoE(c *Config, p string, info func(string) ([]int, bool), read func(string, []int) ([]float32, error), tensors map[string][]float32) (ok bool, err error) {
	router, gu, dn := fusedMoENames(p)
	if _, has := info(gu); !has {
		return false, nil
	}
	E, I, H := c.MoE.Experts, c.MoE.Inter, c.HiddenSize
	r, err := read(router, []int{E, H})
	if err != nil {
		return true, err
	}
	guw, err := read(gu, []int{E, 2 * I, H})
	if err != nil {
		return true, err
	}
	dw, err := read(dn, []int{E, H, I})
	if err != nil {
		return true, err
	}
	tensors[p+c.MoE.Prefix+"gate.weight"] = r
	for e := range E {
		g := guw[e*2*I*H : (e+1)*2*I*H]
		tensors[moeName(c, p, e, 0)] = g[:I*H]
		tensors[moeName(c, p, e, 1)] = g[I*H:]
		tensors[moeName(c, p, e, 2)] = dw[e*H*I : (e+1)*H*I]
	}
	return true, nil
}

// newMoE builds layer prefix p's MoE from its tensors (Hub names).
func newMoE(c *Config, p string, tensors map[string][]float32) *MoE {
	m := &MoE{Router: NewDense(c.MoE.Experts, c.HiddenSize, tensors[p+c.MoE.Prefix+"gate.weight"], nil), TopK: c.MoE.TopK, Norm: c.MoE.NormTopK}
	for e := range c.MoE.Experts {
		var x [3]Linear
		for j := range 3 {
			out, in := expertShape(c, j)
			x[j] = NewDense(out, in, tensors[moeName(c, p, e, j)], nil)
		}
		m.Experts = append(m.Experts, Expert{Gate: x[0], Up: x[1], Down: x[2]})
	}
	m.Shared, m.SharedGate = newShared(c, p, tensors)
	return m
}

// addMoE writes block b's router and experts through add (Hub layout).
func addMoE(c *Config, b *Block, p string, add func(string, []int, []float32) error) error {
	if err := add(p+c.MoE.Prefix+"gate.weight", []int{c.MoE.Experts, c.HiddenSize}, b.MoE.Router.Weight); err != nil {
		return err
	}
	for e, x := range b.MoE.Experts {
		for j, l := range []Linear{x.Gate, x.Up, x.Down} {
			d, ok := l.(*Dense)
			if !ok || d.Bias != nil {
				return fmt.Errorf("save model: %s is %T: a checkpoint layout for compressed experts is not implemented; experts are written dense, without bias (export dense)", moeName(c, p, e, j), l)
			}
			if err := add(moeName(c, p, e, j), []int{d.out, d.in}, d.Weight); err != nil {
				return err
			}
		}
	}
	return addShared(c, b.MoE, p, add)
}

// Routed is a row sent to an expert and its weight in the row's output.
type Routed struct {
	Row    int
	Weight float32
}

// Route returns, for each expert, the rows of the normalised input x
// (rows×hidden) that the router sends to it, in row order, with their
// weights: softmax over all experts, the top k, renormalised when Norm.
func (e *MoE) Route(m *Model, x []float32, rows int) [][]Routed {
	n := len(e.Experts)
	logits := make([]float32, rows*n)
	e.Router.Apply(m.Backend, logits, x, rows)
	routed := make([][]Routed, n)
	p := make([]float64, n)
	idx := make([]int, n)
	for r := range rows {
		mx := math.Inf(-1)
		for i := range n {
			p[i] = float64(logits[r*n+i])
			mx = math.Max(mx, p[i])
		}
		var sum float64
		for i := range n {
			p[i] = math.Exp(p[i] - mx)
			sum += p[i]
		}
		for i := range n {
			p[i] /= sum
			idx[i] = i
		}
		sort.SliceStable(idx, func(a, b int) bool { return p[idx[a]] > p[idx[b]] })
		top := idx[:e.TopK]
		norm := 1.0
		if e.Norm {
			norm = 0
			for _, i := range top {
				norm += p[i]
			}
		}
		for _, i := range top {
			routed[i] = append(routed[i], Routed{r, float32(p[i] / norm)})
		}
	}
	return routed
}

// Gather copies the rows of x (rows×dim) that picks name into a k×dim
// matrix, in the order of picks.
func Gather(x []float32, dim int, picks []Routed) []float32 {
	xs := make([]float32, len(picks)*dim)
	for j, pk := range picks {
		copy(xs[j*dim:(j+1)*dim], x[pk.Row*dim:(pk.Row+1)*dim])
	}
	return xs
}

// Hidden returns silu(gate x)·up x for the k×hidden rows xs: the input of
// the expert's down projection (k×inter).
func (ex Expert) Hidden(m *Model, xs []float32, k int) []float32 {
	inter := ex.Gate.Out()
	gate, up := make([]float32, k*inter), make([]float32, k*inter)
	ex.Gate.Apply(m.Backend, gate, xs, k)
	ex.Up.Apply(m.Backend, up, xs, k)
	for t, g := range gate {
		gate[t] = g / (1 + float32(math.Exp(-float64(g)))) * up[t]
	}
	return gate
}

// forward writes into y (rows×hidden) the MoE output for the normalised
// input x: each row through its top-k experts, weighted.
func (e *MoE) forward(m *Model, y, x []float32, rows, dim int) {
	clear(y)
	for i, picks := range e.Route(m, x, rows) {
		if len(picks) == 0 {
			continue
		}
		k := len(picks)
		ex := e.Experts[i]
		out := make([]float32, k*dim)
		ex.Down.Apply(m.Backend, out, ex.Hidden(m, Gather(x, dim, picks), k), k)
		for j, pk := range picks {
			row := y[pk.Row*dim : (pk.Row+1)*dim]
			for t, v := range out[j*dim : (j+1)*dim] {
				row[t] += pk.Weight * v
			}
		}
	}
	e.addShared(m, y, x, rows, dim)
}

// expertLinears are the module names of an expert's gate, up and down
// projections in compression targets ("mlp.experts.3.down_proj"), the same
// for every MoE architecture: Mixtral's w1, w3 and w2 are named so too.
var expertLinears = [3]string{"gate_proj", "up_proj", "down_proj"}

// SharedExpert stands for Qwen2-MoE's shared expert where an expert index
// is expected: its modules are mlp.shared_expert.{gate,up,down}_proj.
const SharedExpert = -1

// ExpertModule is the target name of expert e's module j (0 gate, 1 up,
// 2 down), or of the shared expert's for e = SharedExpert.
func ExpertModule(e, j int) string {
	if e == SharedExpert {
		return "mlp.shared_expert." + expertLinears[j]
	}
	return fmt.Sprintf("mlp.experts.%d.%s", e, expertLinears[j])
}

// ParseExpertModule reads a name ExpertModule wrote; ok is false for any
// other name.
func ParseExpertModule(name string) (e, j int, ok bool) {
	if lin, found := strings.CutPrefix(name, "mlp.shared_expert."); found {
		j = slices.Index(expertLinears[:], lin)
		return SharedExpert, j, j >= 0
	}
	rest, found := strings.CutPrefix(name, "mlp.experts.")
	if !found {
		return 0, 0, false
	}
	num, lin, found := strings.Cut(rest, ".")
	j = slices.Index(expertLinears[:], lin)
	if !found || j < 0 {
		return 0, 0, false
	}
	if _, err := fmt.Sscanf(num, "%d", &e); err != nil || fmt.Sprint(e) != num {
		return 0, 0, false
	}
	return e, j, true
}

// TargetModules are the module names a compression stage may target in a
// block of config c: Modules, or for a mixture of experts the attention
// projections, every expert's three linears and the shared expert's
// (attention first, then expert by expert, the shared one last); the router
// and the shared expert's gate are never targets.
func (c *Config) TargetModules() []string {
	if c.MoE == nil {
		return Modules
	}
	return appendExperts(slices.Clone(attnModules), c.MoE.Experts, c.MoE.SharedInter > 0)
}

// appendExperts appends the three linears of each of n experts, expert by
// expert, then those of the shared expert when shared, to mods.
func appendExperts(mods []string, n int, shared bool) []string {
	for e := range n {
		for j := range 3 {
			mods = append(mods, ExpertModule(e, j))
		}
	}
	if shared {
		for j := range 3 {
			mods = append(mods, ExpertModule(SharedExpert, j))
		}
	}
	return mods
}

// expert is routed expert i, or the shared one for SharedExpert; nil when
// there is none.
func (e *MoE) expert(i int) *Expert {
	switch {
	case i == SharedExpert:
		return e.Shared
	case i >= 0 && i < len(e.Experts):
		return &e.Experts[i]
	}
	return nil
}

// linear returns the expert linear named by a target module name, nil for
// any other name.
func (e *MoE) linear(module string) *Linear {
	i, j, ok := ParseExpertModule(module)
	x := e.expert(i)
	if !ok || x == nil {
		return nil
	}
	return []*Linear{&x.Gate, &x.Up, &x.Down}[j]
}

// densify returns e with its factored experts multiplied back into dense
// ones (see Densify); e itself when none is factored.
func (e *MoE) densify(m *Model) *MoE {
	if e == nil {
		return nil
	}
	out := e.Clone()
	changed := false
	for i := SharedExpert; i < len(out.Experts); i++ {
		x := out.expert(i)
		if x == nil {
			continue
		}
		for _, l := range []*Linear{&x.Gate, &x.Up, &x.Down} {
			if f, ok := (*l).(*Factored); ok {
				w := make([]float32, f.B.out*f.A.in)
				m.Backend.Sgemm(false, false, f.B.out, f.A.in, f.A.out, 1, f.B.Weight, f.B.in, f.A.Weight, f.A.in, 0, w, f.A.in)
				*l = NewDense(f.B.out, f.A.in, w, f.B.Bias)
				changed = true
			}
		}
	}
	if !changed {
		return e
	}
	return out
}

// Clone returns a copy of e whose experts can be replaced without changing
// e (the tensors stay shared); nil for nil.
func (e *MoE) Clone() *MoE {
	if e == nil {
		return nil
	}
	c := *e
	c.Experts = slices.Clone(e.Experts)
	if e.Shared != nil {
		s := *e.Shared
		c.Shared = &s
	}
	return &c
}

// attnModules are the linears Modules names that a MoE block has.
var attnModules = slices.Clone(Modules[:4])

// CheckTargets refuses, naming the architecture, block modules that a stage
// cannot compress in models of config c: the MLP (router and experts) of a
// mixture-of-experts model, whose attention projections it can. The stages
// that handle experts (svd, lord, rtn, gptq, eora: compress/moe.go) match targets with
// MatchTargets instead.
func (c *Config) CheckTargets(mods []string) error {
	if c.MoE == nil {
		return nil
	}
	var mlp []string
	for _, m := range mods {
		if !slices.Contains(attnModules, m) {
			mlp = append(mlp, m)
		}
	}
	if len(mlp) == 0 {
		return nil
	}
	return fmt.Errorf("model_type %s is a mixture of experts: this stage does not compress its experts or router (%s), only self_attn.*; svd, lord, rtn, gptq and eora take expert targets (mlp.experts.*)", c.ModelType, strings.Join(mlp, ", "))
}

// MatchTargets expands target globs as MatchModules does, and for a mixture
// of experts among TargetModules (so "mlp.*" selects every expert's linears
// and "mlp.experts.*.down_proj" their down projections); no targets select
// the attention projections there. A glob that selects only the router is
// refused by name: the router is never compressed.
func (c *Config) MatchTargets(targets []string) (mods, problems []string) {
	if c == nil || c.MoE == nil {
		return MatchModules(targets)
	}
	all := c.TargetModules()
	if len(targets) == 0 {
		return slices.Clone(attnModules), nil
	}
	hit := map[string]bool{}
	for _, g := range targets {
		if err := CheckGlob(g); err != nil {
			problems = append(problems, fmt.Sprintf("target %q is not a valid glob: %v", g, err))
			continue
		}
		n := 0
		for _, m := range all {
			if GlobMatches(g, m) {
				hit[m] = true
				n++
			}
		}
		switch {
		case n > 0:
		case GlobMatches(g, "mlp.gate") || GlobMatches(g, c.MoE.Prefix+"gate"):
			problems = append(problems, fmt.Sprintf("target %q names the router (mlp.gate) of model_type %s, which is never compressed (the router mlp.gate stays dense): target the experts, mlp.experts.<e>.gate_proj, up_proj or down_proj", g, c.ModelType))
		default:
			shared := ""
			if c.MoE.SharedInter > 0 {
				shared = ", mlp.shared_expert.gate_proj, up_proj and down_proj"
			}
			problems = append(problems, fmt.Sprintf("target %q matches no module of model_type %s (modules: %s, and mlp.experts.<e>.gate_proj, up_proj and down_proj for e in 0..%d%s; the router mlp.gate stays dense)",
				g, c.ModelType, strings.Join(attnModules, ", "), c.MoE.Experts-1, shared))
		}
	}
	for _, m := range all {
		if hit[m] {
			mods = append(mods, m)
		}
	}
	return mods, problems
}

// HasExperts tells whether mods names an expert's linear.
func HasExperts(mods []string) bool {
	return slices.ContainsFunc(mods, func(m string) bool { _, _, ok := ParseExpertModule(m); return ok })
}

// MoELinear is one linear of a mixture-of-experts block as a checkpoint in
// the Hub layout names it, for writers and readers of other layouts (the
// GPTQ one: model/gptq).
type MoELinear struct {
	// Name is the tensor name without ".weight"
	// (model.layers.3.block_sparse_moe.experts.1.w2).
	Name    string
	Out, In int
	Layer   Linear // the block's layer (nil in an EmptyMoE)
	// Set replaces the block's layer; the router and the shared expert's
	// gate take a dense layer only.
	Set func(Linear) error
}

// EmptyMoE returns a block's router and experts for config c with no
// layers, for a reader to fill in through MoELinears.
func (c *Config) EmptyMoE() *MoE {
	e := &MoE{Experts: make([]Expert, c.MoE.Experts), TopK: c.MoE.TopK, Norm: c.MoE.NormTopK}
	if c.MoE.SharedInter > 0 {
		e.Shared = &Expert{}
	}
	return e
}

// MoELinears lists the linears of block b's mixture of experts, whose
// tensor names start with layer prefix p: the router, every expert's gate,
// up and down projections, then the shared expert's and its gate when
// there is one.
func (c *Config) MoELinears(b *Block, p string) []MoELinear {
	e := b.MoE
	dense := func(name string, dst **Dense) func(Linear) error {
		return func(l Linear) error {
			d, ok := l.(*Dense)
			if !ok {
				return fmt.Errorf("%s is %T: it is always dense", name, l)
			}
			*dst = d
			return nil
		}
	}
	set := func(dst *Linear) func(Linear) error { return func(l Linear) error { *dst = l; return nil } }
	var out []MoELinear
	router := p + c.MoE.Prefix + "gate"
	out = append(out, MoELinear{Name: router, Out: c.MoE.Experts, In: c.HiddenSize, Layer: linearOrNil(e.Router), Set: dense(router, &e.Router)})
	for i := range e.Experts {
		x := &e.Experts[i]
		for j, l := range []*Linear{&x.Gate, &x.Up, &x.Down} {
			o, in := expertShape(c, j)
			name := strings.TrimSuffix(moeName(c, p, i, j), ".weight")
			out = append(out, MoELinear{Name: name, Out: o, In: in, Layer: *l, Set: set(l)})
		}
	}
	if s := e.Shared; s != nil {
		for j, l := range []*Linear{&s.Gate, &s.Up, &s.Down} {
			o, in := sharedShape(c, j)
			out = append(out, MoELinear{Name: strings.TrimSuffix(sharedName(p, j), ".weight"), Out: o, In: in, Layer: *l, Set: set(l)})
		}
		g := strings.TrimSuffix(sharedGateName(p), ".weight")
		out = append(out, MoELinear{Name: g, Out: 1, In: c.HiddenSize, Layer: linearOrNil(e.SharedGate), Set: dense(g, &e.SharedGate)})
	}
	return out
}

// linearOrNil is d as a Linear, nil (not a nil *Dense) when d is nil.
func linearOrNil(d *Dense) Linear {
	if d == nil {
		return nil
	}
	return d
}
