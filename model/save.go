package model

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/rankzip/rankzip/model/safetensors"
)

// Save writes m as a Hugging Face checkpoint in dir (config.json and
// model.safetensors) with every tensor in dtype (F32, F16 or BF16). Only
// dense models can be saved this way. Each file is written atomically; the
// config is written last, so a checkpoint without config.json is incomplete.
func Save(m *Model, dir string, dtype safetensors.DType) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("save model: %w", err)
	}
	c := m.Config
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
		p := fmt.Sprintf("model.layers.%d.", l)
		if err := add(p+"input_layernorm.weight", []int{h}, b.AttnNorm); err != nil {
			return err
		}
		if err := add(p+"post_attention_layernorm.weight", []int{h}, b.MLPNorm); err != nil {
			return err
		}
		for _, mod := range Modules {
			d, ok := (*b.Linear(mod)).(*Dense)
			if !ok {
				return fmt.Errorf("save model: layer %d %s is %T, not dense", l, mod, *b.Linear(mod))
			}
			if err := add(p+mod+".weight", []int{d.out, d.in}, d.Weight); err != nil {
				return err
			}
			if err := add(p+mod+".bias", []int{d.out}, d.Bias); err != nil {
				return err
			}
		}
	}
	if err := safetensors.WriteFile(filepath.Join(dir, "model.safetensors"), tensors, map[string]string{"format": "pt"}); err != nil {
		return err
	}
	torch := map[safetensors.DType]string{safetensors.F32: "float32", safetensors.F16: "float16", safetensors.BF16: "bfloat16"}[dtype]
	return WriteConfig(dir, c, map[string]any{"torch_dtype": torch})
}

// WriteConfig writes dir/config.json atomically: the keys of c.Raw with the
// given keys replaced (a nil value deletes the key).
func WriteConfig(dir string, c *Config, set map[string]any) error {
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
		return fmt.Errorf("write config: %w", err)
	}
	return WriteFileAtomic(filepath.Join(dir, "config.json"), append(data, '\n'))
}

// WriteFileAtomic writes data to a temporary file next to path, syncs it and
// renames it over path, so readers see the old file or the whole new one.
func WriteFileAtomic(path string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(data)
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
