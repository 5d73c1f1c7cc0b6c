package gptq

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"

	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/model"
	"github.com/rankzip/rankzip/model/safetensors"
)

// QuantizationConfigKey is config.json's key for the quantization config.
const QuantizationConfigKey = "quantization_config"

// Export writes m as a GPTQ v1 checkpoint in dir: every model.Quantized
// linear as qweight, qzeros, scales (fp16) and g_idx (plus its bias), every
// other tensor as model.Save writes it in dtype, config.json with
// quantization_config and quantize_config.json. Every quantized layer must
// have qc's bits and group size (−1: one group per output channel) and out
// and in multiples of 32 (the v1 format's packing); a layer that does not
// fit is an error naming it. Factored and Palu layers have no GPTQ layout:
// Densify first.
func Export(m *model.Model, dir string, dtype safetensors.DType, qc QuantizeConfig) error {
	if err := qc.Validate(); err != nil {
		return fmt.Errorf("export gptq: %w", err)
	}
	if err := m.Config.Unsupported(model.FeatureGPTQ); err != nil {
		return fmt.Errorf("export gptq: %w", err)
	}
	if err := os.MkdirAll(dir, 0o777); err != nil {
		return fmt.Errorf("export gptq: %w", err)
	}
	c := m.Config
	var tensors []safetensors.WriteTensor
	add := func(name string, shape []int, v []float32) error {
		if v == nil {
			return nil
		}
		data, err := safetensors.EncodeFloat32(v, dtype)
		if err != nil {
			return fmt.Errorf("export gptq: tensor %q: %w", name, err)
		}
		tensors = append(tensors, safetensors.WriteTensor{Name: name, DType: dtype, Shape: shape, Data: data})
		return nil
	}
	h := c.HiddenSize
	if err := errors.Join(add("model.embed_tokens.weight", []int{c.VocabSize, h}, m.Embed), add("model.norm.weight", []int{h}, m.Norm)); err != nil {
		return err
	}
	if !c.TieWordEmbeddings {
		head, ok := m.LMHead.(*model.Dense)
		if !ok {
			return fmt.Errorf("export gptq: lm_head is %T, not dense", m.LMHead)
		}
		if err := add("lm_head.weight", []int{c.VocabSize, h}, head.Weight); err != nil {
			return err
		}
	}
	nq := 0
	var quantized [][]string // per block
	for l, b := range m.Blocks {
		if b.MLA != nil {
			return fmt.Errorf("gptq export: layer %d has latent attention (MLA); the GPTQ layout here is for Llama-family attention", l)
		}
		quantized = append(quantized, nil)
		p := model.LayerPrefix(l)
		if err := errors.Join(add(p+"input_layernorm.weight", []int{h}, b.AttnNorm), add(p+"post_attention_layernorm.weight", []int{h}, b.MLPNorm)); err != nil {
			return err
		}
		for _, mod := range model.Modules {
			name := p + mod
			switch d := (*b.Linear(mod)).(type) {
			case *model.Dense:
				if err := errors.Join(add(name+".weight", []int{d.Out(), d.In()}, d.Weight), add(name+".bias", []int{d.Out()}, d.Bias)); err != nil {
					return err
				}
			case *model.Quantized:
				if d.Bits != qc.Bits {
					return fmt.Errorf("export gptq: %s has %d bits, the checkpoint %d", name, d.Bits, qc.Bits)
				}
				if gs := d.In() / d.Groups(); (qc.GroupSize == -1 && d.Groups() != 1) || (qc.GroupSize > 0 && (d.Groups()*qc.GroupSize != d.In())) {
					return fmt.Errorf("export gptq: %s has %d groups of %d columns, the checkpoint group_size %d", name, d.Groups(), gs, qc.GroupSize)
				}
				pk, err := Pack(&Layer{Bits: d.Bits, Out: d.Out(), In: d.In(), Q: d.Q, Scales: d.Scales, Zeros: d.Zeros, GIdx: d.GIdx})
				if err != nil {
					return fmt.Errorf("export gptq: %s (%d×%d): %w (keep this layer unquantized, e.g. target only layers whose sizes are multiples of 32)", name, d.Out(), d.In(), err)
				}
				tensors = append(tensors, pk.Tensors(name)...)
				if d.Bias != nil {
					data, _ := safetensors.EncodeFloat32(d.Bias, safetensors.F16)
					tensors = append(tensors, safetensors.WriteTensor{Name: name + ".bias", DType: safetensors.F16, Shape: []int{d.Out()}, Data: data})
				}
				nq++
				quantized[l] = append(quantized[l], mod)
			default:
				return fmt.Errorf("export gptq: %s is %T, which has no GPTQ layout (densify it first)", name, d)
			}
		}
	}
	if nq == 0 {
		return fmt.Errorf("export gptq: the model has no quantized layer")
	}
	for l, mods := range quantized {
		if !slices.Equal(mods, quantized[0]) {
			return fmt.Errorf("export gptq: block 0 has quantized %v, block %d %v: a GPTQ checkpoint quantizes the same linears in every block", quantized[0], l, mods)
		}
	}
	if len(quantized[0]) < len(model.Modules) {
		qc.ModulesInBlockToQuantize = [][]string{quantized[0]}
	}
	if err := safetensors.WriteFile(filepath.Join(dir, "model.safetensors"), tensors, map[string]string{"format": "pt"}); err != nil {
		return err
	}
	qj, err := json.MarshalIndent(qc, "", "  ")
	if err != nil {
		return err
	}
	if err := model.WriteFileAtomic(filepath.Join(dir, "quantize_config.json"), append(qj, '\n')); err != nil {
		return err
	}
	torch := map[safetensors.DType]string{safetensors.F32: "float32", safetensors.F16: "float16", safetensors.BF16: "bfloat16"}[dtype]
	set := c.DTypeSettings(torch) // torch_dtype or dtype, as the source had it
	set[QuantizationConfigKey], set[model.NativeSection] = qc, nil
	return model.WriteConfig(dir, c, set)
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
// AutoGPTQ write it for a Llama-family model) into a model whose quantized
// linears are model.Quantized (Open reads it one block at a time). A linear with a qweight tensor is quantized;
// one with a weight tensor is dense. Tensors that are neither expected nor
// buffers are an error.
func Load(dir string, k kernels.Backend) (*model.Model, error) {
	r, err := Open(dir)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	m, err := r.Model(k)
	if err != nil {
		return nil, err
	}
	for l := range r.Config.NumLayers {
		b, err := r.Block(l)
		if err != nil {
			return nil, err
		}
		m.Blocks = append(m.Blocks, b)
	}
	return m, nil
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
	h := cfg.HiddenSize
	p := model.LayerPrefix(l)
	b := &model.Block{}
	var err error
	if b.AttnNorm, err = r.get(p+"input_layernorm.weight", h); err != nil {
		return nil, err
	}
	if b.MLPNorm, err = r.get(p+"post_attention_layernorm.weight", h); err != nil {
		return nil, err
	}
	for _, mod := range model.Modules {
		name := p + mod
		lin, err := r.linear(name)
		if err != nil {
			return nil, err
		}
		if out, in := cfg.ModuleShape(mod); lin.Out() != out || lin.In() != in {
			return nil, fmt.Errorf("load gptq: %s: %s is %d×%d, config.json implies %d×%d", r.dir, name, lin.Out(), lin.In(), out, in)
		}
		*b.Linear(mod) = lin
	}
	return b, nil
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
