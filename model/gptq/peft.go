package gptq

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/rankzip/rankzip/model"
	"github.com/rankzip/rankzip/model/safetensors"
)

// Adapter is a low-rank correction of one linear layer, y = W_c x + B (A x):
// a PEFT LoRA adapter with lora_alpha = r (scaling 1).
type Adapter struct {
	Module string       // model.layers.i.<module>
	A      *model.Dense // r × in (lora_A)
	B      *model.Dense // out × r (lora_B)
}

// Rank is r.
func (a Adapter) Rank() int { return a.A.Out() }

// Adapted is a linear layer with a LoRA correction added to its output
// (model.Adapted, where every linear layer type lives).
type Adapted = model.Adapted

// peftPrefix is how PEFT names the tensors of a wrapped causal LM.
const peftPrefix = "base_model.model."

// AdapterConfig is adapter_config.json, the fields PEFT needs for LoRA.
type AdapterConfig struct {
	PeftType          string         `json:"peft_type"` // "LORA"
	TaskType          string         `json:"task_type"` // "CAUSAL_LM"
	BaseModel         string         `json:"base_model_name_or_path"`
	R                 int            `json:"r"`
	LoraAlpha         int            `json:"lora_alpha"`
	TargetModules     []string       `json:"target_modules"`
	RankPattern       map[string]int `json:"rank_pattern"`
	AlphaPattern      map[string]int `json:"alpha_pattern"`
	LoraDropout       float64        `json:"lora_dropout"`
	Bias              string         `json:"bias"`
	FanInFanOut       bool           `json:"fan_in_fan_out"`
	InferenceMode     bool           `json:"inference_mode"`
	UseRSLoRA         bool           `json:"use_rslora"`
	ModulesToSave     []string       `json:"modules_to_save"`
	LayersToTransform []int          `json:"layers_to_transform"`
}

// BesideBase is the base_model_name_or_path of an adapter written in a
// directory of its base checkpoint (OUT/eora): the parent directory.
const BesideBase = ".."

// WriteAdapter writes adapters as a PEFT LoRA adapter in dir:
// adapter_config.json (r is the most common rank, lora_alpha = r, every other
// rank in rank_pattern with alpha_pattern = rank so that the scaling is 1)
// and adapter_model.safetensors with base_model.model.<module>.lora_A.weight
// [r, in] and lora_B.weight [out, r], in dtype (F32, F16 or BF16).
// baseModel, written as base_model_name_or_path, is a model's name or a path
// relative to dir (BesideBase when the adapter lies inside its base
// checkpoint), never an absolute path: the files must stay valid when the
// directory moves or is copied to another machine.
func WriteAdapter(dir, baseModel string, adapters []Adapter, dtype safetensors.DType) error {
	if len(adapters) == 0 {
		return fmt.Errorf("write adapter: no adapters")
	}
	if filepath.IsAbs(baseModel) {
		return fmt.Errorf("write adapter: base model %s is an absolute path: give its name or a path relative to the adapter", baseModel)
	}
	if err := os.MkdirAll(dir, 0o777); err != nil {
		return fmt.Errorf("write adapter: %w", err)
	}
	count := map[int]int{}
	var targets []string
	var tensors []safetensors.WriteTensor
	for _, a := range adapters {
		if a.A.In() == 0 || a.B.In() != a.A.Out() || a.A.Bias != nil || a.B.Bias != nil {
			return fmt.Errorf("write adapter: %s: A %d×%d, B %d×%d (with biases: %v, %v)", a.Module, a.A.Out(), a.A.In(), a.B.Out(), a.B.In(), a.A.Bias != nil, a.B.Bias != nil)
		}
		count[a.Rank()]++
		short := a.Module[strings.LastIndex(a.Module, ".")+1:]
		if !slices.Contains(targets, short) {
			targets = append(targets, short)
		}
		for _, t := range []struct {
			suffix string
			d      *model.Dense
		}{{".lora_A.weight", a.A}, {".lora_B.weight", a.B}} {
			data, err := safetensors.EncodeFloat32(t.d.Weight, dtype)
			if err != nil {
				return fmt.Errorf("write adapter: %s: %w", a.Module, err)
			}
			tensors = append(tensors, safetensors.WriteTensor{Name: peftPrefix + a.Module + t.suffix, DType: dtype, Shape: []int{t.d.Out(), t.d.In()}, Data: data})
		}
	}
	r := 0
	for rank, n := range count {
		if n > count[r] || (n == count[r] && rank < r) {
			r = rank
		}
	}
	cfg := AdapterConfig{PeftType: "LORA", TaskType: "CAUSAL_LM", BaseModel: baseModel, R: r, LoraAlpha: r,
		TargetModules: targets, RankPattern: map[string]int{}, AlphaPattern: map[string]int{}, Bias: "none", InferenceMode: true}
	for _, a := range adapters {
		if a.Rank() != r {
			cfg.RankPattern[a.Module] = a.Rank()
			cfg.AlphaPattern[a.Module] = a.Rank()
		}
	}
	if err := safetensors.WriteFile(filepath.Join(dir, "adapter_model.safetensors"), tensors, map[string]string{"format": "pt"}); err != nil {
		return err
	}
	data, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return err
	}
	return model.WriteFileAtomic(filepath.Join(dir, "adapter_config.json"), append(data, '\n'))
}

// ReadAdapter reads a PEFT LoRA adapter written by WriteAdapter (or by PEFT
// with scaling 1: lora_alpha = r per module, no rsLoRA, no fan_in_fan_out).
// Other scalings are folded into B.
func ReadAdapter(dir string) ([]Adapter, *AdapterConfig, error) {
	data, err := os.ReadFile(filepath.Join(dir, "adapter_config.json"))
	if err != nil {
		return nil, nil, fmt.Errorf("read adapter: %w", err)
	}
	var cfg AdapterConfig
	if err := json.Unmarshal(data, &cfg); err != nil {
		return nil, nil, fmt.Errorf("read adapter: %s/adapter_config.json: %w", dir, err)
	}
	if cfg.PeftType != "LORA" || cfg.FanInFanOut || cfg.UseRSLoRA {
		return nil, nil, fmt.Errorf("read adapter: %s: peft_type %q, fan_in_fan_out %v, use_rslora %v: only plain LoRA is supported", dir, cfg.PeftType, cfg.FanInFanOut, cfg.UseRSLoRA)
	}
	f, err := safetensors.Open(filepath.Join(dir, "adapter_model.safetensors"))
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	var adapters []Adapter
	for _, name := range f.Names() {
		mod, ok := strings.CutSuffix(name, ".lora_A.weight")
		if !ok {
			if !strings.HasSuffix(name, ".lora_B.weight") {
				return nil, nil, fmt.Errorf("read adapter: %s: unexpected tensor %q", dir, name)
			}
			continue
		}
		mod = strings.TrimPrefix(mod, peftPrefix)
		get := func(n string) (*model.Dense, error) {
			info, ok := f.Info(n)
			if !ok || len(info.Shape) != 2 {
				return nil, fmt.Errorf("read adapter: %s: tensor %q missing or not a matrix", dir, n)
			}
			v, err := f.Float32(n)
			if err != nil {
				return nil, err
			}
			return model.NewDense(info.Shape[0], info.Shape[1], v, nil), nil
		}
		a, err := get(name)
		if err != nil {
			return nil, nil, err
		}
		b, err := get(peftPrefix + mod + ".lora_B.weight")
		if err != nil {
			return nil, nil, err
		}
		if b.In() != a.Out() {
			return nil, nil, fmt.Errorf("read adapter: %s: %s has lora_A %d×%d and lora_B %d×%d", dir, mod, a.Out(), a.In(), b.Out(), b.In())
		}
		r, alpha := cfg.R, cfg.LoraAlpha
		if v, ok := cfg.RankPattern[mod]; ok {
			r = v
		}
		if v, ok := cfg.AlphaPattern[mod]; ok {
			alpha = v
		}
		if r != a.Out() {
			return nil, nil, fmt.Errorf("read adapter: %s: %s has rank %d, adapter_config.json says %d", dir, mod, a.Out(), r)
		}
		if alpha != r {
			s := float32(alpha) / float32(r)
			for i := range b.Weight {
				b.Weight[i] *= s
			}
		}
		adapters = append(adapters, Adapter{Module: mod, A: a, B: b})
	}
	if len(adapters) == 0 {
		return nil, nil, fmt.Errorf("read adapter: %s: no lora_A tensors", dir)
	}
	return adapters, &cfg, nil
}

// ApplyAdapters returns a copy of m whose adapted layers compute
// W_c x + B A x (the layers are wrapped, m is not modified).
func ApplyAdapters(m *model.Model, adapters []Adapter) (*model.Model, error) {
	if err := checkAdapterLayers(adapters, len(m.Blocks)); err != nil {
		return nil, err
	}
	out := *m
	out.Blocks = make([]*model.Block, len(m.Blocks))
	for i, b := range m.Blocks {
		nb, err := ApplyBlockAdapters(b, i, len(m.Blocks), adapters)
		if err != nil {
			return nil, err
		}
		out.Blocks[i] = nb
	}
	return &out, nil
}

// ApplyBlockAdapters returns a copy of block layer of a model with layers
// blocks, its adapted layers wrapped as ApplyAdapters wraps them (b is not
// modified): the form for a model read one block at a time. Adapters of
// other layers are checked to be layers of the model and otherwise left
// for their block.
func ApplyBlockAdapters(b *model.Block, layer, layers int, adapters []Adapter) (*model.Block, error) {
	if err := checkAdapterLayers(adapters, layers); err != nil {
		return nil, err
	}
	nb := *b
	nb.MoE = b.MoE.Clone() // an adapted expert must not change b's
	for _, a := range adapters {
		l, mod, _ := model.ParseModuleName(a.Module)
		if l != layer {
			continue
		}
		p := nb.Linear(mod)
		if p == nil {
			return nil, fmt.Errorf("adapter for %q: unknown module %q", a.Module, mod)
		}
		if (*p).In() != a.A.In() || (*p).Out() != a.B.Out() {
			return nil, fmt.Errorf("adapter for %q: %d×%d correction on a %d×%d layer", a.Module, a.B.Out(), a.A.In(), (*p).Out(), (*p).In())
		}
		*p = &Adapted{Base: *p, A: a.A, B: a.B}
	}
	return &nb, nil
}

// checkAdapterLayers fails on an adapter that names no layer of a model
// with layers blocks.
func checkAdapterLayers(adapters []Adapter, layers int) error {
	for _, a := range adapters {
		if l, _, ok := model.ParseModuleName(a.Module); !ok || l >= layers {
			return fmt.Errorf("adapter for %q: not a layer of this %d-layer model", a.Module, layers)
		}
	}
	return nil
}
