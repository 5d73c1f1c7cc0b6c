package gptq

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/model"
	"github.com/rankzip/rankzip/model/safetensors"
)

// QuantizationConfigKey is config.json's key for the quantization config.
const QuantizationConfigKey = "quantization_config"

// Export writes m as a GPTQ v1 checkpoint in dir: every model.Quantized
// linear as qweight, qzeros, scales (fp16) and g_idx (plus its bias), every
// other tensor as model.Save writes it in dtype, config.json with
// quantization_config and quantize_config.json. Each block's norms are
// those of its architecture (Qwen3's q/k norms, Gemma's four) under their
// usual names. A mixture of experts (Mixtral, Qwen2-MoE, Qwen3-MoE) is written as GPTQModel writes it: each expert's
// linears under their Hub names (model.layers.N.block_sparse_moe.experts.E.w2,
// model.layers.N.mlp.experts.E.down_proj), quantized or dense, the router
// and Qwen2-MoE's shared expert gate dense, and
// modules_in_block_to_quantize naming the quantized linears. Every quantized layer must
// have qc's bits and group size (−1: one group per output channel) and out
// and in multiples of 32 (the v1 format's packing); a layer that does not
// fit is an error naming it. Factored and Palu layers have no GPTQ layout:
// Densify first.
func Export(m *model.Model, dir string, dtype safetensors.DType, qc QuantizeConfig) error {
	ex, err := newExporter(m, dir, dtype, qc)
	if err != nil {
		return err
	}
	tensors := ex.top
	var quantized [][]string // per block
	for l, b := range m.Blocks {
		mods, err := ex.block(l, b, func(ts ...safetensors.WriteTensor) { tensors = append(tensors, ts...) })
		if err != nil {
			return err
		}
		quantized = append(quantized, mods)
	}
	if len(slices.Concat(quantized...)) == 0 {
		return fmt.Errorf("export gptq: the model has no quantized layer")
	}
	for l, mods := range quantized {
		if err := sameQuantized(quantized[0], l, mods); err != nil {
			return err
		}
	}
	if err := safetensors.WriteFile(filepath.Join(dir, "model.safetensors"), tensors, map[string]string{"format": "pt"}); err != nil {
		return err
	}
	return ex.writeConfigs(quantized[0])
}

// ExportBlocks is Export for a model held one block at a time, as
// model.SaveBlocks reads it: m gives the config, embeddings, final norm and
// LM head (its Blocks are not read), and block(l) returns block l of n, read
// afresh on each call (twice: to plan the header, then to write the block's
// data). The files are those Export writes for the whole model.
func ExportBlocks(m *model.Model, n int, block func(l int) (*model.Block, error), dir string, dtype safetensors.DType, qc QuantizeConfig) error {
	ex, err := newExporter(m, dir, dtype, qc)
	if err != nil {
		return err
	}
	if n == 0 {
		return fmt.Errorf("export gptq: the model has no quantized layer")
	}
	var first []string // the linears block 0 quantizes, which every block must
	group := func(l int, plan bool) ([]safetensors.WriteTensor, error) {
		b, err := block(l)
		if err != nil {
			return nil, err
		}
		var tensors []safetensors.WriteTensor
		mods, err := ex.block(l, b, func(ts ...safetensors.WriteTensor) { tensors = append(tensors, ts...) })
		if err != nil || !plan {
			return tensors, err
		}
		// Checked as the header is planned, before any data is written.
		if l == 0 {
			first = mods
		}
		if err := sameQuantized(first, l, mods); err != nil {
			return nil, err
		}
		if l == n-1 && len(first) == 0 {
			return nil, fmt.Errorf("export gptq: the model has no quantized layer")
		}
		return tensors, nil
	}
	if err := safetensors.WriteGroups(filepath.Join(dir, "model.safetensors"), ex.top, n, group, map[string]string{"format": "pt"}); err != nil {
		return err
	}
	return ex.writeConfigs(first)
}

// sameQuantized checks that block l quantizes the linears block 0 does (a
// GPTQ checkpoint's modules_in_block_to_quantize is one list for every
// block), naming the first few that differ.
func sameQuantized(first []string, l int, mods []string) error {
	if slices.Equal(first, mods) {
		return nil
	}
	var diff []string
	for _, m := range first {
		if !slices.Contains(mods, m) {
			diff = append(diff, m+" (quantized in block 0 only)")
		}
	}
	for _, m := range mods {
		if !slices.Contains(first, m) {
			diff = append(diff, fmt.Sprintf("%s (quantized in block %d only)", m, l))
		}
	}
	if len(diff) > 4 {
		diff = append(diff[:4], fmt.Sprintf("and %d more", len(diff)-4))
	}
	return fmt.Errorf("export gptq: blocks 0 and %d quantize different linears: %s; a GPTQ checkpoint quantizes the same linears in every block (an expert no calibration token reached is left dense: calibrate on more data, or export dense)", l, strings.Join(diff, ", "))
}

// exporter writes one GPTQ checkpoint: top holds the tensors outside the
// blocks.
type exporter struct {
	c     *model.Config
	dir   string
	dtype safetensors.DType
	qc    QuantizeConfig
	top   []safetensors.WriteTensor
}

// newExporter checks the options, creates dir and lays out the embeddings,
// final norm and untied LM head of m.
func newExporter(m *model.Model, dir string, dtype safetensors.DType, qc QuantizeConfig) (*exporter, error) {
	if err := qc.Validate(); err != nil {
		return nil, fmt.Errorf("export gptq: %w", err)
	}
	if err := m.Config.Unsupported(model.FeatureGPTQ); err != nil {
		return nil, fmt.Errorf("export gptq: %w", err)
	}
	if _, err := safetensors.EncodeFloat32(nil, dtype); err != nil {
		return nil, fmt.Errorf("export gptq: %w", err)
	}
	if err := os.MkdirAll(dir, 0o777); err != nil {
		return nil, fmt.Errorf("export gptq: %w", err)
	}
	c := m.Config
	ex := &exporter{c: c, dir: dir, dtype: dtype, qc: qc}
	put := func(ts ...safetensors.WriteTensor) { ex.top = append(ex.top, ts...) }
	h := c.HiddenSize
	ex.add(put, "model.embed_tokens.weight", []int{c.VocabSize, h}, m.Embed)
	ex.add(put, "model.norm.weight", []int{h}, m.Norm)
	if !c.TieWordEmbeddings {
		head, ok := m.LMHead.(*model.Dense)
		if !ok {
			return nil, fmt.Errorf("export gptq: lm_head is %T, not dense", m.LMHead)
		}
		ex.add(put, "lm_head.weight", []int{c.VocabSize, h}, head.Weight)
	}
	return ex, nil
}

// add puts float tensor name, converted to the checkpoint's dtype as it is
// written; nil puts nothing.
func (ex *exporter) add(put func(...safetensors.WriteTensor), name string, shape []int, v []float32) {
	if v != nil {
		dt := ex.dtype
		put(safetensors.WriteTensor{Name: name, DType: dt, Shape: shape,
			Fill: func(w io.Writer) error { return safetensors.WriteFloat32(w, v, dt) }})
	}
}

// writeConfigs writes quantize_config.json and config.json for a checkpoint
// whose blocks quantize the linears mods.
func (ex *exporter) writeConfigs(mods []string) error {
	qc := ex.qc
	if len(mods) < len(model.Modules) || ex.c.MoE != nil {
		// A mixture of experts always lists them: transformers would
		// otherwise take its router (an nn.Linear) for a quantized layer.
		qc.ModulesInBlockToQuantize = [][]string{mods}
	}
	qj, err := json.MarshalIndent(qc, "", "  ")
	if err != nil {
		return err
	}
	if err := model.WriteFileAtomic(filepath.Join(ex.dir, "quantize_config.json"), append(qj, '\n')); err != nil {
		return err
	}
	torch := map[safetensors.DType]string{safetensors.F32: "float32", safetensors.F16: "float16", safetensors.BF16: "bfloat16"}[ex.dtype]
	set := ex.c.DTypeSettings(torch) // torch_dtype or dtype, as the source had it
	set[QuantizationConfigKey], set[model.NativeSection] = qc, nil
	return model.WriteConfig(ex.dir, ex.c, set)
}

// block puts the tensors of block l and returns the linears it quantizes.
func (ex *exporter) block(l int, b *model.Block, put func(...safetensors.WriteTensor)) ([]string, error) {
	add := func(name string, shape []int, v []float32) { ex.add(put, name, shape, v) }
	if b.MLA != nil {
		return nil, fmt.Errorf("gptq export: layer %d has latent attention (MLA); the GPTQ layout here is for Llama-family attention", l)
	}
	p := model.LayerPrefix(l)
	for _, n := range ex.c.NormTensors(b) {
		add(p+n.Name+".weight", []int{n.Size}, *n.W)
	}
	linears := []blockLinear{}
	for _, mod := range b.Modules() {
		linears = append(linears, blockLinear{mod, *b.Linear(mod)})
	}
	if b.MoE != nil {
		for _, x := range ex.c.MoELinears(b, p) {
			linears = append(linears, blockLinear{strings.TrimPrefix(x.Name, p), x.Layer})
		}
	}
	var quantized []string
	for _, x := range linears {
		q, err := ex.linear(put, p+x.mod, x.l)
		if err != nil {
			return nil, err
		}
		if q {
			quantized = append(quantized, x.mod)
		}
	}
	return quantized, nil
}

// blockLinear is a linear of a block by its name inside the block
// (self_attn.q_proj, block_sparse_moe.experts.0.w1).
type blockLinear struct {
	mod string
	l   model.Linear
}

// linear puts the tensors of linear name: packed when it is quantized (q
// reports so), else its weight and bias in the checkpoint's dtype.
func (ex *exporter) linear(put func(...safetensors.WriteTensor), name string, l model.Linear) (q bool, err error) {
	qc := ex.qc
	switch d := l.(type) {
	case *model.Dense:
		ex.add(put, name+".weight", []int{d.Out(), d.In()}, d.Weight)
		ex.add(put, name+".bias", []int{d.Out()}, d.Bias)
		return false, nil
	case *model.Quantized:
		if d.Bits != qc.Bits {
			return false, fmt.Errorf("export gptq: %s has %d bits, the checkpoint %d", name, d.Bits, qc.Bits)
		}
		if gs := d.In() / d.Groups(); (qc.GroupSize == -1 && d.Groups() != 1) || (qc.GroupSize > 0 && (d.Groups()*qc.GroupSize != d.In())) {
			return false, fmt.Errorf("export gptq: %s has %d groups of %d columns, the checkpoint group_size %d", name, d.Groups(), gs, qc.GroupSize)
		}
		pk, err := Pack(&Layer{Bits: d.Bits, Out: d.Out(), In: d.In(), Q: d.Q, Scales: d.Scales, Zeros: d.Zeros, GIdx: d.GIdx})
		if err != nil {
			return false, fmt.Errorf("export gptq: %s (%d×%d): %w (keep this layer unquantized, e.g. target only layers whose sizes are multiples of 32)", name, d.Out(), d.In(), err)
		}
		put(pk.Tensors(name)...)
		if d.Bias != nil {
			data, _ := safetensors.EncodeFloat32(d.Bias, safetensors.F16)
			put(safetensors.WriteTensor{Name: name + ".bias", DType: safetensors.F16, Shape: []int{d.Out()}, Data: data})
		}
		return true, nil
	}
	return false, fmt.Errorf("export gptq: %s is %T, which has no GPTQ layout (densify it first)", name, l)
}

// IsCheckpoint reports whether dir's config.json has a GPTQ
// quantization_config (and so needs Load rather than model.Load).
func IsCheckpoint(dir string) bool {
	cfg, err := model.ReadConfig(dir)
	if err != nil {
		return false
	}
	raw, ok := cfg.Raw[QuantizationConfigKey]
	if !ok {
		return false
	}
	var qc QuantizeConfig
	return json.Unmarshal(raw, &qc) == nil && qc.QuantMethod == "gptq"
}

// Load reads a GPTQ v1 checkpoint (as Export writes it, or as GPTQModel and
// AutoGPTQ write it for a Llama-family, Qwen3, Gemma 2/3 or MoE model)
// into a model whose quantized linears are model.Quantized (Open reads it
// one block at a time). A linear with a qweight tensor is quantized;
// one with a weight tensor is dense. Tensors that are neither expected nor
// buffers are an error.
func Load(dir string, k kernels.Backend) (*model.Model, error) {
	r, err := Open(dir)
	if err != nil {
		return nil, err
	}
	return model.ReadAll(r, k)
}

// quantizeConfig reads and checks config.json's quantization_config, and
// that the architecture has the GPTQ layout.
func quantizeConfig(dir string, cfg *model.Config) (QuantizeConfig, error) {
	var qc QuantizeConfig
	raw, ok := cfg.Raw[QuantizationConfigKey]
	if !ok {
		return qc, fmt.Errorf("load gptq: %s/config.json has no %s", dir, QuantizationConfigKey)
	}
	if err := json.Unmarshal(raw, &qc); err != nil {
		return qc, fmt.Errorf("load gptq: %s/config.json %s: %w", dir, QuantizationConfigKey, err)
	}
	if err := qc.Validate(); err != nil {
		return qc, fmt.Errorf("load gptq: %s: %w", dir, err)
	}
	if err := cfg.Unsupported(model.FeatureGPTQ); err != nil {
		return qc, fmt.Errorf("load gptq: %s: %w", dir, err)
	}
	return qc, nil
}

// reader reads the tensors of a GPTQ checkpoint and records which it used,
// so that Load can refuse a tensor nothing claims.
type reader struct {
	ck   *safetensors.Checkpoint
	dir  string
	bits int
	used map[string]bool
}

// get reads a float tensor, checking its shape (when given) and that every
// value is finite.
func (r *reader) get(name string, shape ...int) ([]float32, error) {
	info, ok := r.ck.Info(name)
	if !ok {
		return nil, fmt.Errorf("load gptq: %s: missing tensor %q", r.dir, name)
	}
	if len(shape) > 0 && !equalShape(info.Shape, shape) {
		return nil, fmt.Errorf("load gptq: %s: tensor %q has shape %v, want %v", r.dir, name, info.Shape, shape)
	}
	v, err := r.ck.Float32(name)
	if err != nil {
		return nil, err
	}
	for i, x := range v {
		if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
			return nil, fmt.Errorf("load gptq: %s: tensor %q holds %v at flat index %d", r.dir, name, x, i)
		}
	}
	r.used[name] = true
	return v, nil
}

// optional reads a tensor of n values, nil when it is absent.
func (r *reader) optional(name string, n int) ([]float32, error) {
	if _, ok := r.ck.Info(name); !ok {
		return nil, nil
	}
	return r.get(name, n)
}

// block reads block l: its two norms and every linear.
func (r *reader) block(cfg *model.Config, l int) (*model.Block, error) {
	p := model.LayerPrefix(l)
	b := cfg.EmptyBlock(l)
	for _, n := range cfg.NormTensors(b) {
		w, err := r.get(p+n.Name+".weight", n.Size)
		if err != nil {
			return nil, err
		}
		*n.W = w
	}
	if cfg.MoE != nil {
		b.MoE = cfg.EmptyMoE()
	}
	for _, mod := range b.Modules() {
		out, in := cfg.ModuleShape(mod)
		lin, err := r.shapedLinear(p+mod, out, in)
		if err != nil {
			return nil, err
		}
		*b.Linear(mod) = lin
	}
	if b.MoE == nil {
		return b, nil
	}
	for _, x := range cfg.MoELinears(b, p) {
		lin, err := r.shapedLinear(x.Name, x.Out, x.In)
		if err != nil {
			return nil, err
		}
		if err := x.Set(lin); err != nil {
			return nil, fmt.Errorf("load gptq: %s: %w", r.dir, err)
		}
	}
	return b, nil
}

// shapedLinear reads layer name (see linear) and checks that it is
// out×in, as config.json implies.
func (r *reader) shapedLinear(name string, out, in int) (model.Linear, error) {
	lin, err := r.linear(name)
	if err != nil {
		return nil, err
	}
	if lin.Out() != out || lin.In() != in {
		return nil, fmt.Errorf("load gptq: %s: %s is %d×%d, config.json implies %d×%d", r.dir, name, lin.Out(), lin.In(), out, in)
	}
	return lin, nil
}

// linear reads layer name: packed 4/8-bit (qweight, qzeros, scales, g_idx)
// or a dense weight, each with an optional bias.
func (r *reader) linear(name string) (model.Linear, error) {
	if _, ok := r.ck.Info(name + QWeightSuffix); !ok {
		info, ok := r.ck.Info(name + ".weight")
		if !ok || len(info.Shape) != 2 {
			return nil, fmt.Errorf("load gptq: %s: %s has neither qweight nor a weight matrix", r.dir, name)
		}
		w, err := r.get(name+".weight", info.Shape...)
		if err != nil {
			return nil, err
		}
		bias, err := r.optional(name+".bias", info.Shape[0])
		if err != nil {
			return nil, err
		}
		return model.NewDense(info.Shape[0], info.Shape[1], w, bias), nil
	}
	pk, err := Read(r.ck, name, r.bits)
	if err != nil {
		return nil, err
	}
	ly, err := Unpack(pk)
	if err != nil {
		return nil, fmt.Errorf("load gptq: %s: %w", name, err)
	}
	for _, s := range []string{QWeightSuffix, QZerosSuffix, ScalesSuffix, GIdxSuffix} {
		r.used[name+s] = true
	}
	bias, err := r.optional(name+".bias", ly.Out)
	if err != nil {
		return nil, err
	}
	lin, err := model.NewQuantized(ly.Out, ly.In, ly.Bits, ly.Q, ly.Scales, ly.Zeros, ly.GIdx, bias)
	if err != nil {
		return nil, fmt.Errorf("load gptq: %s: %w", name, err)
	}
	return lin, nil
}

func equalShape(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
