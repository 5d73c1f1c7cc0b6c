package model

import (
	"encoding/binary"
	"fmt"
	"math"
	"slices"
	"strings"

	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/model/safetensors"
)

// Block holds the weights of one decoder layer.
type Block struct {
	AttnNorm   []float32 // input_layernorm
	Q, K, V, O Linear
	MLPNorm    []float32 // post_attention_layernorm
	Gate, Up   Linear
	Down       Linear
	// MLA, when set, replaces K and V (both nil) by latent attention.
	MLA *MLA

	// Per-architecture additions (arch.go); nil or false for Llama.
	QNorm, KNorm []float32 // per-head q/k RMSNorm (head_dim): Qwen3, Gemma 3
	// PostAttnNorm and PostFFNNorm normalise the attention and MLP outputs
	// before their residual adds (Gemma 3; MLPNorm is then
	// pre_feedforward_layernorm).
	PostAttnNorm, PostFFNNorm []float32
	// Sliding marks the sliding_attention layers of Gemma 3 (window and
	// local RoPE) and Qwen3 (window).
	Sliding bool
	// MoE, when set, replaces Gate, Up and Down (nil) by a router and
	// experts (Mixtral, Qwen3-MoE).
	MoE *MoE
}

// Model is a Llama-family causal language model held in float32.
type Model struct {
	Config *Config
	Embed  []float32 // vocab×hidden
	Blocks []*Block
	Norm   []float32
	LMHead Linear // shares Embed when the embeddings are tied
	// Backend runs the large matrix products.
	Backend kernels.Backend
	// AbsorbMLA runs MLA blocks in the absorbed form (attention over the
	// cached latents, as the decoder does) instead of rebuilding every
	// head's keys and values; both give the same logits.
	AbsorbMLA bool
}

// Modules are the seven linear layers of a block, by their name inside it.
var Modules = []string{
	"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
	"mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
}

// mlaModules are the linear layers of an MLA block that Modules names; its
// kv_a_proj_with_mqa and kv_b_proj are in Block.MLA.
var mlaModules = []string{"self_attn.q_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"}

// Modules returns the names of the block's linear layers: Modules, without
// k_proj and v_proj (nil) when the block uses latent attention.
func (b *Block) Modules() []string {
	if b.MLA != nil {
		return mlaModules
	}
	if b.MoE != nil {
		return attnModules
	}
	return Modules
}

// NumParams counts the block's parameters: norms, linears and MLA weights.
func (b *Block) NumParams() int64 {
	n := int64(len(b.AttnNorm) + len(b.MLPNorm) + len(b.QNorm) + len(b.KNorm) + len(b.PostAttnNorm) + len(b.PostFFNNorm))
	for _, mod := range b.Modules() {
		if l := *b.Linear(mod); l != nil {
			n += l.NumParams()
		}
	}
	if b.MLA != nil {
		n += b.MLA.NumParams()
	}
	if b.MoE != nil {
		n += b.MoE.NumParams()
	}
	return n
}

// NumParams counts the model's parameters; a tied LM head counts once.
func (m *Model) NumParams() int64 {
	n := int64(len(m.Embed) + len(m.Norm))
	if !m.Config.TieWordEmbeddings {
		n += m.LMHead.NumParams()
	}
	for _, b := range m.Blocks {
		n += b.NumParams()
	}
	return n
}

// Linear returns the block's linear layer by module name (see Modules; a
// mixture-of-experts block's experts by their Config.TargetModules names).
func (b *Block) Linear(module string) *Linear {
	switch module {
	case "self_attn.q_proj":
		return &b.Q
	case "self_attn.k_proj":
		return &b.K
	case "self_attn.v_proj":
		return &b.V
	case "self_attn.o_proj":
		return &b.O
	case "mlp.gate_proj":
		return &b.Gate
	case "mlp.up_proj":
		return &b.Up
	case "mlp.down_proj":
		return &b.Down
	}
	if b.MoE != nil {
		return b.MoE.linear(module) // mlp.experts.<e>.<gate|up|down>_proj
	}
	return nil
}

// linearShape gives (out, in, hasBias) for a module under config c.
func linearShape(c *Config, module string) (out, in int, bias bool) {
	h, q, kv, i := c.HiddenSize, c.NumHeads*c.HeadDim, c.NumKVHeads*c.HeadDim, c.IntermediateSize
	if a := c.MLA; a != nil {
		switch module {
		case "self_attn.q_proj":
			return c.NumHeads * (a.NopeDim + a.RopeDim), h, c.QKVBias
		case "self_attn.o_proj":
			return h, c.NumHeads * a.VDim, c.OBias
		}
	}
	switch module {
	case "self_attn.q_proj":
		return q, h, c.QKVBias
	case "self_attn.k_proj", "self_attn.v_proj":
		return kv, h, c.QKVBias
	case "self_attn.o_proj":
		return h, q, c.OBias
	case "mlp.gate_proj", "mlp.up_proj":
		return i, h, c.MLPBias
	case "mlp.down_proj":
		return h, i, c.MLPBias
	}
	panic("model: unknown module " + module)
}

// tensorSpec is one tensor a checkpoint must hold (or may: optional).
type tensorSpec struct {
	name     string
	shape    []int
	optional bool
	fusedMoE bool              // read by readFusedMoE, listed only to be expected
	dtype    safetensors.DType // U8 or I32 for integer tensors; "" for floats
}

// expectedTensors lists every tensor of a checkpoint for config c.
func expectedTensors(c *Config) []tensorSpec {
	specs := topSpecs(c)
	for l := range c.NumLayers {
		specs = append(specs, layerSpecs(c, l)...)
	}
	return specs
}

// topSpecs lists the tensors outside the blocks: embeddings, final norm and
// (untied) LM head.
func topSpecs(c *Config) []tensorSpec {
	h := c.HiddenSize
	specs := []tensorSpec{{name: "model.embed_tokens.weight", shape: []int{c.VocabSize, h}}, {name: "model.norm.weight", shape: []int{h}}}
	if !c.TieWordEmbeddings {
		specs = append(specs, tensorSpec{name: "lm_head.weight", shape: []int{c.VocabSize, h}})
	}
	return specs
}

// layerSpecs lists the tensors of block l.
func layerSpecs(c *Config, l int) []tensorSpec {
	h := c.HiddenSize
	var specs []tensorSpec
	p := LayerPrefix(l)
	for _, n := range blockNorms(c) {
		specs = append(specs, tensorSpec{name: p + n.name + ".weight", shape: []int{normSize(c, n)}})
	}
	mods := Modules
	if a := c.MLA; a != nil {
		mods = mlaModules
		// attention_bias: TransMLA's Qwen conversions bias q_proj and
		// kv_a, Hugging Face's DeepSeek kv_a and o_proj, so each is optional.
		specs = append(specs, tensorSpec{name: p + "self_attn.kv_a_proj_with_mqa.weight", shape: []int{a.LoraRank + a.RopeDim, h}},
			tensorSpec{name: p + "self_attn.kv_b_proj.weight", shape: []int{c.NumHeads * (a.NopeDim + a.VDim), a.LoraRank}})
		if c.QKVBias {
			specs = append(specs, tensorSpec{name: p + "self_attn.kv_a_proj_with_mqa.bias", shape: []int{a.LoraRank + a.RopeDim}, optional: true})
		}
		if a.LatentNorm {
			specs = append(specs, tensorSpec{name: p + "self_attn.kv_a_layernorm.weight", shape: []int{a.LoraRank}})
		}
	}
	if c.MoE != nil {
		mods = attnModules
		specs = append(specs, moeSpecs(c, p)...)
	}
	var fused map[string]bool
	if c.Fused {
		var fs []tensorSpec
		fs, fused = fusedSpecs(c, p)
		specs = append(specs, fs...)
	}
	for _, m := range mods {
		if !fused[m] {
			specs = append(specs, linearSpecs(c, p, m)...)
		}
	}
	return specs
}

// linearSpecs lists the tensors of module m of the block with prefix p, in
// the layout config.json gives it: quantized, factored, Palu-grouped or
// dense.
func linearSpecs(c *Config, p, m string) []tensorSpec {
	var specs []tensorSpec
	out, in, bias := linearShape(c, m)
	if q, ok := c.Quantized[p+m]; ok {
		specs = append(specs, tensorSpec{name: p + m + ".q", shape: []int{out, in}, dtype: safetensors.U8},
			tensorSpec{name: p + m + ".scales", shape: []int{q.Groups, out}},
			tensorSpec{name: p + m + ".zeros", shape: []int{q.Groups, out}, dtype: safetensors.I32},
			tensorSpec{name: p + m + ".g_idx", shape: []int{in}, dtype: safetensors.I32})
	} else if r, ok := c.Factored[p+m]; ok {
		specs = append(specs, tensorSpec{name: p + m + ".A.weight", shape: []int{r, in}}, tensorSpec{name: p + m + ".B.weight", shape: []int{out, r}})
	} else if rs, ok := c.Grouped[p+m]; ok {
		latent := 0
		for j, r := range rs {
			latent += r
			specs = append(specs, tensorSpec{name: upName(c, p+m, j, "weight"), shape: []int{out / len(rs), r}})
			if bias && c.PaluLayout {
				specs = append(specs, tensorSpec{name: upName(c, p+m, j, "bias"), shape: []int{out / len(rs)}})
			}
		}
		specs = append(specs, tensorSpec{name: downName(c, p+m), shape: []int{latent, in}})
		if c.PaluLayout {
			return specs // Palu splits the bias by group
		}
	} else {
		specs = append(specs, tensorSpec{name: p + m + ".weight", shape: []int{out, in}})
	}
	if bias {
		specs = append(specs, tensorSpec{name: p + m + ".bias", shape: []int{out}, optional: c.MLA != nil && strings.HasPrefix(m, "self_attn.")})
	}
	return specs
}

// upName and downName name the tensors of a Palu-factored module: rankzip's
// native <m>.up.<j>.weight and <m>.down.weight, or Palu's own
// <m>.U.<j>.weight (and per-group .bias) and <m>.VT.weight.
func upName(c *Config, module string, j int, kind string) string {
	if c.PaluLayout {
		return fmt.Sprintf("%s.U.%d.%s", module, j, kind)
	}
	return fmt.Sprintf("%s.up.%d.%s", module, j, kind)
}

func downName(c *Config, module string) string {
	if c.PaluLayout {
		return module + ".VT.weight"
	}
	return module + ".down.weight"
}

// ignoredTensor reports names that checkpoints may carry and the forward pass
// deliberately does not use (buffers recomputed from the config).
func ignoredTensor(name string) bool {
	return strings.HasSuffix(name, ".rotary_emb.inv_freq")
}

// Load reads the checkpoint in dir (config.json plus model.safetensors or a
// sharded index), checks it strictly against the config and converts every
// tensor to float32. Open reads the same checkpoint one block at a time.
func Load(dir string, k kernels.Backend) (*Model, error) {
	r, err := Open(dir)
	if err != nil {
		return nil, err
	}
	return ReadAll(r, k)
}

// BlockReader reads a checkpoint one block at a time: a *Reader, or gptq's
// for a GPTQ checkpoint. Model returns the embeddings, final norm and LM
// head with no blocks.
type BlockReader interface {
	Model(k kernels.Backend) (*Model, error)
	Block(l int) (*Block, error)
	Close() error
}

// ReadAll reads r's model with every block, then closes r.
func ReadAll(r BlockReader, k kernels.Backend) (*Model, error) {
	defer r.Close()
	m, err := r.Model(k)
	if err != nil {
		return nil, err
	}
	for l := range m.Config.NumLayers {
		b, err := r.Block(l)
		if err != nil {
			return nil, err
		}
		m.Blocks = append(m.Blocks, b)
	}
	return m, nil
}

// Reader reads a checkpoint from its memory-mapped files on demand: Open
// checks every tensor's name against the config, and each tensor is
// converted to float32 (and its mapped pages let go) only when Model or
// Block reads it, so a caller holding one block at a time holds one block's
// float32 weights, whatever the model's depth.
type Reader struct {
	Config *Config
	dir    string
	ck     *safetensors.Checkpoint
	fused  map[int]bool // layers whose experts are in transformers 5's fused layout
}

// Open opens the checkpoint in dir for reading with Model and Block; Close
// releases its files.
func Open(dir string) (_ *Reader, err error) {
	cfg, err := ReadConfig(dir)
	if err != nil {
		return nil, err
	}
	ck, err := safetensors.OpenDir(dir)
	if err != nil {
		return nil, err
	}
	r := &Reader{Config: cfg, dir: dir, ck: ck, fused: map[int]bool{}}
	defer func() {
		if err != nil {
			ck.Close()
		}
	}()
	specs := topSpecs(cfg)
	for l := range cfg.NumLayers {
		specs = append(specs, r.layerSpecs(l)...)
	}
	if err := r.checkNames(specs); err != nil {
		return nil, err
	}
	return r, nil
}

// Close unmaps the checkpoint's files; the float32 tensors read stay valid.
func (r *Reader) Close() error { return r.ck.Close() }

// layerSpecs are the tensors of block l as this checkpoint stores them: a
// MoE layer in transformers 5's fused layout (read by readFusedMoE) lists
// its three fused tensors, optional so that readTensors leaves them alone.
func (r *Reader) layerSpecs(l int) []tensorSpec {
	specs := layerSpecs(r.Config, l)
	if r.Config.MoE == nil {
		return specs
	}
	p := LayerPrefix(l)
	router, gu, dn := fusedMoENames(p)
	if _, ok := r.ck.Info(gu); !ok {
		return specs
	}
	r.fused[l] = true
	hub := map[string]bool{}
	for _, s := range moeSpecs(r.Config, p) {
		hub[s.name] = true
	}
	specs = slices.DeleteFunc(specs, func(s tensorSpec) bool { return hub[s.name] })
	for _, n := range []string{router, gu, dn} {
		specs = append(specs, tensorSpec{name: n, optional: true, fusedMoE: true})
	}
	return specs
}

// checkNames fails on a config.json section naming a module the model does
// not have and on a stored tensor the config does not explain.
func (r *Reader) checkNames(specs []tensorSpec) error {
	cfg, dir := r.Config, r.dir
	want := make(map[string]bool, len(specs))
	for _, s := range specs {
		want[s.name] = true
	}
	for name := range cfg.Factored {
		if !want[name+".A.weight"] {
			return fmt.Errorf("%s/config.json: %q lists %q, which is not a linear layer of this model", dir, NativeSection, name)
		}
	}
	for name := range cfg.Grouped {
		if !want[downName(cfg, name)] {
			field := NativeSection
			if cfg.PaluLayout {
				field = "head_wise_ranks"
			}
			return fmt.Errorf("%s/config.json: %q lists %q, which is not a linear layer of this model", dir, field, name)
		}
	}
	for _, name := range r.ck.Names() {
		if want[name] || ignoredTensor(name) {
			continue
		}
		if name == "lm_head.weight" && cfg.TieWordEmbeddings {
			continue // checked against the embeddings in Model
		}
		return fmt.Errorf("checkpoint %s: unexpected tensor %q for a %s model with %d layers (config.json and the weights disagree)",
			dir, name, cfg.ModelType, cfg.NumLayers)
	}
	return nil
}

// readTensors reads specs: floats converted to float32, integer tensors as
// raw little-endian bytes. Missing optional tensors are skipped.
func (r *Reader) readTensors(specs []tensorSpec) (floats map[string][]float32, ints map[string][]byte, err error) {
	floats, ints = make(map[string][]float32, len(specs)), map[string][]byte{}
	for _, s := range specs {
		if _, ok := r.ck.Info(s.name); !ok && s.optional || s.fusedMoE {
			continue
		}
		if s.dtype != "" {
			if ints[s.name], err = readRaw(r.ck, r.dir, s); err != nil {
				return nil, nil, err
			}
			continue
		}
		if floats[s.name], err = readTensor(r.ck, r.dir, s); err != nil {
			return nil, nil, err
		}
	}
	return floats, ints, nil
}

// Model returns the model's embeddings, final norm and LM head, with no
// blocks (Block reads them).
func (r *Reader) Model(k kernels.Backend) (*Model, error) {
	cfg := r.Config
	specs := topSpecs(cfg)
	tensors, _, err := r.readTensors(specs)
	if err != nil {
		return nil, err
	}
	for _, s := range specs {
		r.ck.Release(s.name)
	}
	m := &Model{Config: cfg, Embed: tensors["model.embed_tokens.weight"], Norm: tensors["model.norm.weight"], Backend: k}
	if !cfg.TieWordEmbeddings {
		m.LMHead = NewDense(cfg.VocabSize, cfg.HiddenSize, tensors["lm_head.weight"], nil)
		return m, nil
	}
	if _, ok := r.ck.Info("lm_head.weight"); ok {
		head, err := readTensor(r.ck, r.dir, tensorSpec{name: "lm_head.weight", shape: []int{cfg.VocabSize, cfg.HiddenSize}})
		if err != nil {
			return nil, err
		}
		r.ck.Release("lm_head.weight")
		if !slices.Equal(head, m.Embed) {
			return nil, fmt.Errorf("checkpoint %s: tensor \"lm_head.weight\" differs from model.embed_tokens.weight but config.json sets tie_word_embeddings", r.dir)
		}
	}
	m.LMHead = NewDense(cfg.VocabSize, cfg.HiddenSize, m.Embed, nil)
	return m, nil
}

// Block reads block l, converted to float32.
func (r *Reader) Block(l int) (*Block, error) {
	cfg := r.Config
	if l < 0 || l >= cfg.NumLayers {
		return nil, fmt.Errorf("checkpoint %s: block %d of a model with %d", r.dir, l, cfg.NumLayers)
	}
	specs := r.layerSpecs(l)
	tensors, ints, err := r.readTensors(specs)
	if err != nil {
		return nil, err
	}
	p := LayerPrefix(l)
	if r.fused[l] {
		info := func(name string) ([]int, bool) {
			i, ok := r.ck.Info(name)
			return i.Shape, ok
		}
		read := func(name string, shape []int) ([]float32, error) {
			return readTensor(r.ck, r.dir, tensorSpec{name: name, shape: shape})
		}
		if _, err := readFusedMoE(cfg, p, info, read, tensors); err != nil {
			return nil, err
		}
	}
	for _, s := range specs {
		r.ck.Release(s.name) // converted: the mapped pages are not needed again
	}
	return newBlock(cfg, l, tensors, ints, r.dir)
}

// newBlock builds block l from its tensors, read by Reader.Block.
func newBlock(cfg *Config, l int, tensors map[string][]float32, ints map[string][]byte, dir string) (*Block, error) {
	p := LayerPrefix(l)
	b := &Block{}
	for _, n := range blockNorms(cfg) {
		*n.get(b) = tensors[p+n.name+".weight"]
	}
	b.Sliding = cfg.layerSlides(l)
	if cfg.Fused {
		splitFused(cfg, p, tensors)
	}
	if cfg.MoE != nil {
		b.MoE = newMoE(cfg, p, tensors)
	}
	if a := cfg.MLA; a != nil {
		p := p + "self_attn."
		b.MLA = &MLA{
			KVA:      NewDense(a.LoraRank+a.RopeDim, cfg.HiddenSize, tensors[p+"kv_a_proj_with_mqa.weight"], tensors[p+"kv_a_proj_with_mqa.bias"]),
			KVANorm:  tensors[p+"kv_a_layernorm.weight"],
			KVB:      NewDense(cfg.NumHeads*(a.NopeDim+a.VDim), a.LoraRank, tensors[p+"kv_b_proj.weight"], nil),
			LoraRank: a.LoraRank, RopeDim: a.RopeDim, NopeDim: a.NopeDim, VDim: a.VDim,
			RopeFreq: cfg.MLALayerRopeFreq(l),
		}
	}
	for _, mod := range b.Modules() {
		lin, err := newLinear(cfg, p, mod, tensors, ints)
		if err != nil {
			return nil, fmt.Errorf("checkpoint %s: %s%s: %w", dir, p, mod, err)
		}
		*b.Linear(mod) = lin
	}
	if b.MLA != nil {
		// What Forward checks of a whole model, for a block used on its own.
		if err := b.MLA.check(cfg, b, l); err != nil {
			return nil, fmt.Errorf("checkpoint %s: %w", dir, err)
		}
	}
	return b, nil
}

// newLinear builds module mod of the block with prefix p in the layout
// config.json gives it: quantized, factored, Palu-grouped or dense.
func newLinear(cfg *Config, p, mod string, tensors map[string][]float32, ints map[string][]byte) (Linear, error) {
	out, in, _ := linearShape(cfg, mod)
	name := p + mod
	if q, ok := cfg.Quantized[name]; ok {
		return NewQuantized(out, in, q.Bits, ints[name+".q"], tensors[name+".scales"],
			int32s(ints[name+".zeros"]), int32s(ints[name+".g_idx"]), tensors[name+".bias"])
	}
	if r, ok := cfg.Factored[name]; ok {
		return &Factored{A: NewDense(r, in, tensors[name+".A.weight"], nil),
			B: NewDense(out, r, tensors[name+".B.weight"], tensors[name+".bias"])}, nil
	}
	rs, ok := cfg.Grouped[name]
	if !ok {
		return NewDense(out, in, tensors[name+".weight"], tensors[name+".bias"]), nil
	}
	if out%len(rs) != 0 {
		return nil, fmt.Errorf("config.json %q: %d groups do not divide the %d outputs", NativeSection, len(rs), out)
	}
	var ups []*Dense
	latent := 0
	bias := tensors[name+".bias"]
	for j, r := range rs {
		ups = append(ups, NewDense(out/len(rs), r, tensors[upName(cfg, name, j, "weight")], nil))
		latent += r
		if cfg.PaluLayout {
			bias = append(bias, tensors[upName(cfg, name, j, "bias")]...)
		}
	}
	g, err := NewGrouped(NewDense(latent, in, tensors[downName(cfg, name)], nil), ups, bias)
	if err != nil {
		return nil, err
	}
	g.LatentBits, g.LatentGroup = cfg.LatentBits, cfg.LatentGroup
	return g, nil
}

// readRaw reads an integer tensor's bytes after checking its dtype and shape.
func readRaw(ck *safetensors.Checkpoint, dir string, s tensorSpec) ([]byte, error) {
	info, ok := ck.Info(s.name)
	if !ok {
		return nil, fmt.Errorf("checkpoint %s: missing tensor %q (%s %v expected from config.json)", dir, s.name, s.dtype, s.shape)
	}
	if info.DType != s.dtype || !slices.Equal(info.Shape, s.shape) {
		return nil, fmt.Errorf("checkpoint %s: tensor %q is %s %v, config.json implies %s %v", dir, s.name, info.DType, info.Shape, s.dtype, s.shape)
	}
	b, err := ck.Bytes(s.name)
	if err != nil {
		return nil, err
	}
	return slices.Clone(b), nil
}

// int32s decodes little-endian int32 values.
func int32s(b []byte) []int32 {
	v := make([]int32, len(b)/4)
	for i := range v {
		v[i] = int32(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return v
}

func readTensor(ck *safetensors.Checkpoint, dir string, s tensorSpec) ([]float32, error) {
	info, ok := ck.Info(s.name)
	if !ok {
		return nil, fmt.Errorf("checkpoint %s: missing tensor %q (shape %v expected from config.json)", dir, s.name, s.shape)
	}
	if !slices.Equal(info.Shape, s.shape) {
		return nil, fmt.Errorf("checkpoint %s: tensor %q has shape %v, config.json implies %v", dir, s.name, info.Shape, s.shape)
	}
	v, err := ck.Float32(s.name)
	if err != nil {
		return nil, err
	}
	for i, x := range v {
		if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
			return nil, fmt.Errorf("checkpoint %s: tensor %q holds a non-finite value (%v at flat index %d)", dir, s.name, x, i)
		}
	}
	return v, nil
}
