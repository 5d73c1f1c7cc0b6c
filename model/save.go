package model

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"

	"github.com/rankzip/rankzip/internal/perm"
	"github.com/rankzip/rankzip/model/safetensors"
)

// Save writes m as a Hugging Face checkpoint in dir (config.json and
// model.safetensors) with every tensor in dtype (F32, F16 or BF16). Factored
// layers are stored in rankzip's native layout: <module>.A.weight [r, in],
// <module>.B.weight [out, r] and config.json's "rankzip" section naming each
// with its rank (Densify first for a checkpoint any runtime loads). Each file
// is written atomically; the config is written last, so a checkpoint without
// config.json is incomplete.
func Save(m *Model, dir string, dtype safetensors.DType) error {
	return save(m, dir, dtype, false)
}

// SavePalu writes m in Palu's own layout (shadowpa0327/Palu's
// dump_to_huggingface_repos): each Palu-factored module as
// <module>.VT.weight [latent, in] and <module>.U.<j>.weight [out/G, r_j]
// (with .U.<j>.bias), config.json with model_type palu<type>, its
// architectures and head_wise_ranks. Every other layer must be dense, and
// the latents unquantized: Palu's format has no place for either.
func SavePalu(m *Model, dir string, dtype safetensors.DType) error {
	return save(m, dir, dtype, true)
}

// paluArch and baseArch are the architectures of Palu's and the original
// model types.
var (
	paluArch = map[string]string{"llama": "PaluLlamaForCausalLM", "mistral": "PaluMistralForCausalLM", "qwen2": "PaluQwenForCausalLM"}
	baseArch = map[string]string{"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}
)

func save(m *Model, dir string, dtype safetensors.DType, palu bool) error {
	if palu {
		if paluArch[m.Config.ModelType] == "" {
			return fmt.Errorf("save model: Palu's layout exists for llama, mistral and qwen2, not %q", m.Config.ModelType)
		}
	}
	if err := os.MkdirAll(dir, 0o777); err != nil {
		return fmt.Errorf("save model: %w", err)
	}
	c := m.Config
	mla, err := mlaLayout(m)
	if err != nil {
		return err
	}
	ranks := map[string]int{}           // factored modules for the native section
	grouped := map[string][]int{}       // Palu modules for the native section
	quantized := map[string]QuantSpec{} // quantized modules for the native section
	latentBits, latentGroup := -1, 0
	var tensors []safetensors.WriteTensor
	add := func(name string, shape []int, v []float32) error {
		if v == nil {
			return nil
		}
		data, err := safetensors.EncodeFloat32(v, dtype)
		if err != nil {
			return fmt.Errorf("save model: tensor %q: %w", name, err)
		}
		tensors = append(tensors, safetensors.WriteTensor{Name: name, DType: dtype, Shape: shape, Data: data})
		return nil
	}
	h := c.HiddenSize
	if err := add("model.embed_tokens.weight", []int{c.VocabSize, h}, m.Embed); err != nil {
		return err
	}
	if err := add("model.norm.weight", []int{h}, m.Norm); err != nil {
		return err
	}
	if !c.TieWordEmbeddings {
		head, ok := m.LMHead.(*Dense)
		if !ok {
			return fmt.Errorf("save model: lm_head is %T, not dense", m.LMHead)
		}
		if err := add("lm_head.weight", []int{c.VocabSize, h}, head.Weight); err != nil {
			return err
		}
	}
	for l, b := range m.Blocks {
		p := LayerPrefix(l)
		for _, n := range blockNorms(c) {
			if err := add(p+n.name+".weight", []int{normSize(c, n)}, *n.get(b)); err != nil {
				return err
			}
		}
		if b.MoE != nil {
			if err := addMoE(c, b, p, add); err != nil {
				return err
			}
		}
		var fused map[string]bool
		if c.Fused {
			var err error
			if fused, err = addFused(b, p, add); err != nil {
				return err
			}
		}
		if a := b.MLA; a != nil {
			ap := p + "self_attn."
			if a.KVB.Bias != nil {
				return fmt.Errorf("save model: %skv_b_proj has a bias, which the DeepSeek layout does not hold", ap)
			}
			if err := errors.Join(add(ap+"kv_a_proj_with_mqa.weight", []int{a.KVA.out, a.KVA.in}, a.KVA.Weight),
				add(ap+"kv_a_proj_with_mqa.bias", []int{a.KVA.out}, a.KVA.Bias),
				add(ap+"kv_a_layernorm.weight", []int{len(a.KVANorm)}, a.KVANorm),
				add(ap+"kv_b_proj.weight", []int{a.KVB.out, a.KVB.in}, a.KVB.Weight)); err != nil {
				return err
			}
		}
		for _, mod := range b.Modules() {
			if fused[mod] {
				continue
			}
			var err error
			switch d := (*b.Linear(mod)).(type) {
			case *Dense:
				err = errors.Join(add(p+mod+".weight", []int{d.out, d.in}, d.Weight), add(p+mod+".bias", []int{d.out}, d.Bias))
			case *Quantized:
				if palu || mla != nil {
					return fmt.Errorf("save model: %s%s is quantized, which only rankzip's native layout holds (or gptq.Export)", p, mod)
				}
				quantized[p+mod] = QuantSpec{Bits: d.Bits, Groups: d.Groups()}
				// Exact whatever dtype the rest gets, as in a block-diff file.
				tensors = append(tensors, quantizedTensors(p+mod, d)...)
				err = add(p+mod+".bias", []int{d.out}, d.Bias)
			case *Factored:
				if palu {
					return fmt.Errorf("save model: %s%s is low-rank factored, which Palu's layout cannot hold (use the native layout)", p, mod)
				}
				if d.A.Bias != nil {
					return fmt.Errorf("save model: %s%s: factor A has a bias", p, mod)
				}
				ranks[p+mod] = d.Rank()
				err = errors.Join(add(p+mod+".A.weight", []int{d.A.out, d.A.in}, d.A.Weight),
					add(p+mod+".B.weight", []int{d.B.out, d.B.in}, d.B.Weight), add(p+mod+".bias", []int{d.B.out}, d.B.Bias))
			case *Grouped:
				var rs []int
				names := &Config{PaluLayout: palu}
				err = add(downName(names, p+mod), []int{d.Down.out, d.Down.in}, d.Down.Weight)
				if !palu {
					err = errors.Join(err, add(p+mod+".bias", []int{d.Out()}, d.Bias))
				}
				for j, u := range d.Ups {
					rs = append(rs, u.in)
					err = errors.Join(err, add(upName(names, p+mod, j, "weight"), []int{u.out, u.in}, u.Weight))
					if palu && d.Bias != nil {
						err = errors.Join(err, add(upName(names, p+mod, j, "bias"), []int{u.out}, d.Bias[j*u.out:(j+1)*u.out]))
					}
				}
				if palu && d.LatentBits > 0 {
					return fmt.Errorf("save model: %s%s quantizes its latents to %d bits, which Palu's layout cannot say (use the native layout)", p, mod, d.LatentBits)
				}
				grouped[p+mod] = rs
				if latentBits >= 0 && (latentBits != d.LatentBits || latentGroup != d.LatentGroup) && len(grouped) > 1 {
					return fmt.Errorf("save model: %s%s quantizes its latent differently from the other Palu layers", p, mod)
				}
				latentBits, latentGroup = d.LatentBits, d.LatentGroup
			default:
				return fmt.Errorf("save model: %s%s is %T, which has no checkpoint layout", p, mod, d)
			}
			if err != nil {
				return err
			}
		}
	}
	if err := safetensors.WriteFile(filepath.Join(dir, "model.safetensors"), tensors, map[string]string{"format": "pt"}); err != nil {
		return err
	}
	torch := map[safetensors.DType]string{safetensors.F32: "float32", safetensors.F16: "float16", safetensors.BF16: "bfloat16"}[dtype]
	set := c.DTypeSettings(torch)
	set[NativeSection] = nil
	if palu && mla != nil {
		return fmt.Errorf("save model: latent attention (MLA) has no place in Palu's layout")
	}
	if palu {
		if len(grouped) == 0 {
			return fmt.Errorf("save model: no Palu-factored layer to write in Palu's layout")
		}
		set["model_type"] = "palu" + c.ModelType
		set["architectures"] = []string{paluArch[c.ModelType]}
		set["head_wise_ranks"] = grouped
		if _, ok := c.Raw["original_model_name_or_path"]; !ok {
			set["original_model_name_or_path"] = ""
			if raw, ok := c.Raw["_name_or_path"]; ok {
				set["original_model_name_or_path"] = raw
			}
		}
		return WriteConfig(dir, c, set)
	}
	if c.PaluLayout {
		// Read from Palu's layout, written in rankzip's: back to the base type.
		set["model_type"], set["head_wise_ranks"], set["original_model_name_or_path"] = c.ModelType, nil, nil
		set["architectures"] = []string{baseArch[c.ModelType]}
	}
	if mla != nil {
		mla.settings(m, set, ranks)
		// Refuse now, not at load time, a config our own loader would refuse.
		data, err := configJSON(c, set)
		if err != nil {
			return err
		}
		if _, err := ParseConfig(filepath.Join(dir, "config.json"), data); err != nil {
			return fmt.Errorf("save model: the DeepSeek config written for this model does not load back: %w", err)
		}
	} else if len(ranks) > 0 || len(grouped) > 0 || len(quantized) > 0 {
		sec := map[string]any{"format": "native"}
		if len(ranks) > 0 {
			sec["ranks"] = ranks
		}
		if len(quantized) > 0 {
			sec["quantized"] = quantized
		}
		if len(grouped) > 0 {
			sec["palu"] = grouped
			if latentBits > 0 {
				sec["palu_latent_bits"], sec["palu_latent_group_size"] = latentBits, latentGroup
			}
		}
		set[NativeSection] = sec
	}
	return WriteConfig(dir, c, set)
}

func f32Bytes(v []float32) []byte {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
	}
	return b
}

func i32Bytes(v []int32) []byte {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], uint32(x))
	}
	return b
}

// WriteConfig writes dir/config.json atomically: the keys of c.Raw with the
// given keys replaced (a nil value deletes the key). The RoPE settings keep
// the form of the source checkpoint (4.x rope_theta/rope_scaling or
// transformers 5's rope_parameters, copied from Raw), and so does the dtype
// where set comes from DTypeSettings; the written config must read back to
// c's RoPE settings, else nothing is written.
func WriteConfig(dir string, c *Config, set map[string]any) error {
	data, err := configJSON(c, set)
	if err != nil {
		return err
	}
	return WriteFileAtomic(filepath.Join(dir, "config.json"), data)
}

// configJSON is the config.json of WriteConfig.
func configJSON(c *Config, set map[string]any) ([]byte, error) {
	out := make(map[string]any, len(c.Raw)+len(set))
	for k, v := range c.Raw {
		out[k] = v
	}
	for k, v := range set {
		if v == nil {
			delete(out, k)
		} else {
			out[k] = v
		}
	}
	data, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("write config: %w", err)
	}
	var back map[string]json.RawMessage
	if err := json.Unmarshal(data, &back); err != nil {
		return nil, fmt.Errorf("write config: %w", err)
	}
	rope, dtype, err := readRope("config.json", back)
	if err != nil {
		return nil, fmt.Errorf("write config: the RoPE settings or dtype do not read back: %w", err)
	}
	if !rope.Equal(c.Rope()) {
		return nil, fmt.Errorf("write config: config.json would read back as %v, not the model's %v", rope, c.Rope())
	}
	for _, k := range []string{"dtype", "torch_dtype"} {
		if v, ok := set[k].(string); ok && v != dtype {
			return nil, fmt.Errorf("write config: %s %q reads back as %q", k, v, dtype)
		}
	}
	return append(data, '\n'), nil
}

// WriteFileAtomic writes data to a temporary file next to path, syncs it and
// renames it over path, so readers see the old file or the whole new one. The
// file gets the mode os.Create would give it (0666 under the umask).
func WriteFileAtomic(path string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(perm.File())
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// Densify returns a copy of m whose factored layers are multiplied back into
// dense ones (W = B A), the original architecture that every runtime loads.
func Densify(m *Model) *Model {
	out := *m
	out.Blocks = make([]*Block, len(m.Blocks))
	for i, b := range m.Blocks {
		nb := *b
		for _, mod := range nb.Modules() {
			if f, ok := (*nb.Linear(mod)).(*Factored); ok {
				w := make([]float32, f.B.out*f.A.in)
				m.Backend.Sgemm(false, false, f.B.out, f.A.in, f.A.out, 1, f.B.Weight, f.B.in, f.A.Weight, f.A.in, 0, w, f.A.in)
				*nb.Linear(mod) = NewDense(f.B.out, f.A.in, w, f.B.Bias)
			}
		}
		nb.MoE = b.MoE.densify(m)
		out.Blocks[i] = &nb
	}
	return &out
}
