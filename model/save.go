package model

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
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

// SaveBlocks is Save for a model held one block at a time: m gives the
// config, embeddings, final norm and LM head (its Blocks are not read), and
// block(l) returns block l of n, read afresh on each call. Each block is read
// twice, in order to plan the file's header and again when the data reaches
// its tensors, and let go before the next is read, so the writer holds one
// block whatever the depth. The files are those Save writes for the whole
// model. Latent attention (MLA), whose layout is checked across all blocks,
// is not streamed: Save it.
func SaveBlocks(m *Model, n int, block func(l int) (*Block, error), dir string, dtype safetensors.DType) error {
	return saveBlocks(m, n, block, dir, dtype, false)
}

// SavePaluBlocks is SavePalu for a model held one block at a time, as
// SaveBlocks reads it.
func SavePaluBlocks(m *Model, n int, block func(l int) (*Block, error), dir string, dtype safetensors.DType) error {
	return saveBlocks(m, n, block, dir, dtype, true)
}

func save(m *Model, dir string, dtype safetensors.DType, palu bool) error {
	if err := checkSave(m, dtype, palu); err != nil {
		return err
	}
	mla, err := mlaLayout(m)
	if err != nil {
		return err
	}
	if palu && mla != nil {
		return fmt.Errorf("save model: latent attention (MLA) has no place in Palu's layout")
	}
	if err := os.MkdirAll(dir, 0o777); err != nil {
		return fmt.Errorf("save model: %w", err)
	}
	s := newSaver(m.Config, dtype, palu, mla != nil)
	if err := s.addTop(m); err != nil {
		return err
	}
	for l, b := range m.Blocks {
		if err := s.addBlock(LayerPrefix(l), b); err != nil {
			return err
		}
	}
	if err := safetensors.WriteFile(filepath.Join(dir, "model.safetensors"), s.tensors, map[string]string{"format": "pt"}); err != nil {
		return err
	}
	return s.writeConfig(m, dir, mla)
}

func saveBlocks(m *Model, n int, block func(l int) (*Block, error), dir string, dtype safetensors.DType, palu bool) error {
	if err := checkSave(m, dtype, palu); err != nil {
		return err
	}
	if m.Config.MLA != nil {
		return fmt.Errorf("save model: a model with latent attention (MLA) is saved whole (Save), not block by block")
	}
	if err := os.MkdirAll(dir, 0o777); err != nil {
		return fmt.Errorf("save model: %w", err)
	}
	s := newSaver(m.Config, dtype, palu, false)
	if err := s.addTop(m); err != nil {
		return err
	}
	// Each block is read twice (safetensors.WriteGroups): planning records
	// what config.json says of its layers, writing needs only its tensors.
	group := func(l int, plan bool) ([]safetensors.WriteTensor, error) {
		b, err := block(l)
		if err != nil {
			return nil, err
		}
		if b.MLA != nil {
			return nil, fmt.Errorf("save model: layer %d has latent attention (MLA), which is saved whole (Save), not block by block", l)
		}
		bs := s
		if !plan {
			bs = newSaver(m.Config, dtype, palu, false)
		}
		bs.tensors = nil
		err = bs.addBlock(LayerPrefix(l), b)
		return bs.tensors, err
	}
	if err := safetensors.WriteGroups(filepath.Join(dir, "model.safetensors"), s.tensors, n, group, map[string]string{"format": "pt"}); err != nil {
		return err
	}
	return s.writeConfig(m, dir, nil)
}

// checkSave checks the layout and dtype asked for.
func checkSave(m *Model, dtype safetensors.DType, palu bool) error {
	if palu && paluArch[m.Config.ModelType] == "" {
		return fmt.Errorf("save model: Palu's layout exists for llama, mistral and qwen2, not %q", m.Config.ModelType)
	}
	switch dtype {
	case safetensors.F32, safetensors.F16, safetensors.BF16:
	default:
		return fmt.Errorf("save model: cannot write float tensors as %q (want F32, F16 or BF16)", string(dtype))
	}
	return nil
}

func newSaver(c *Config, dtype safetensors.DType, palu, mla bool) *saver {
	return &saver{c: c, dtype: dtype, palu: palu, mla: mla, ranks: map[string]int{},
		grouped: map[string][]int{}, quantized: map[string]QuantSpec{}, latentBits: -1}
}

// saver collects the tensors of a checkpoint and what its config.json must
// say about them.
type saver struct {
	c     *Config
	dtype safetensors.DType
	palu  bool // Palu's own layout
	mla   bool // the DeepSeek layout of latent attention

	tensors   []safetensors.WriteTensor
	ranks     map[string]int       // factored modules for the native section
	grouped   map[string][]int     // Palu modules for the native section
	quantized map[string]QuantSpec // quantized modules for the native section
	// The Palu latents' quantization, shared by every Palu module (-1: none seen).
	latentBits, latentGroup int
}

// add adds float tensor name, converted to the checkpoint's dtype as it is
// written (no encoded copy of the model is held); nil adds nothing.
func (s *saver) add(name string, shape []int, v []float32) error {
	if v == nil {
		return nil
	}
	dt := s.dtype
	s.tensors = append(s.tensors, safetensors.WriteTensor{Name: name, DType: dt, Shape: shape,
		Fill: func(w io.Writer) error { return safetensors.WriteFloat32(w, v, dt) }})
	return nil
}

// addTop adds the embeddings, the final norm and an untied LM head.
func (s *saver) addTop(m *Model) error {
	c, h := s.c, s.c.HiddenSize
	if err := errors.Join(s.add("model.embed_tokens.weight", []int{c.VocabSize, h}, m.Embed), s.add("model.norm.weight", []int{h}, m.Norm)); err != nil {
		return err
	}
	if c.TieWordEmbeddings {
		return nil
	}
	head, ok := m.LMHead.(*Dense)
	if !ok {
		return fmt.Errorf("save model: lm_head is %T, not dense", m.LMHead)
	}
	return s.add("lm_head.weight", []int{c.VocabSize, h}, head.Weight)
}

// addBlock adds the tensors of block b, whose names start with p.
func (s *saver) addBlock(p string, b *Block) error {
	c := s.c
	for _, n := range blockNorms(c) {
		if err := s.add(p+n.name+".weight", []int{normSize(c, n)}, *n.get(b)); err != nil {
			return err
		}
	}
	if b.MoE != nil {
		if err := addMoE(c, b, p, s.add); err != nil {
			return err
		}
	}
	var fused map[string]bool
	if c.Fused {
		var err error
		if fused, err = addFused(b, p, s.add); err != nil {
			return err
		}
	}
	if a := b.MLA; a != nil {
		ap := p + "self_attn."
		if a.KVB.Bias != nil {
			return fmt.Errorf("save model: %skv_b_proj has a bias, which the DeepSeek layout does not hold", ap)
		}
		if err := errors.Join(s.add(ap+"kv_a_proj_with_mqa.weight", []int{a.KVA.out, a.KVA.in}, a.KVA.Weight),
			s.add(ap+"kv_a_proj_with_mqa.bias", []int{a.KVA.out}, a.KVA.Bias),
			s.add(ap+"kv_a_layernorm.weight", []int{len(a.KVANorm)}, a.KVANorm),
			s.add(ap+"kv_b_proj.weight", []int{a.KVB.out, a.KVB.in}, a.KVB.Weight)); err != nil {
			return err
		}
	}
	for _, mod := range b.Modules() {
		if fused[mod] {
			continue
		}
		if err := s.addLinear(p, mod, *b.Linear(mod)); err != nil {
			return err
		}
	}
	return nil
}

// addLinear adds module mod of the block with prefix p in the layout of its
// type, and records what config.json must say about it.
func (s *saver) addLinear(p, mod string, l Linear) error {
	switch d := l.(type) {
	case *Dense:
		return errors.Join(s.add(p+mod+".weight", []int{d.out, d.in}, d.Weight), s.add(p+mod+".bias", []int{d.out}, d.Bias))
	case *Quantized:
		if s.palu || s.mla {
			return fmt.Errorf("save model: %s%s is quantized, which only rankzip's native layout holds (or gptq.Export)", p, mod)
		}
		s.quantized[p+mod] = QuantSpec{Bits: d.Bits, Groups: d.Groups()}
		// Exact whatever dtype the rest gets, as in a block-diff file.
		s.tensors = append(s.tensors, quantizedTensors(p+mod, d)...)
		return s.add(p+mod+".bias", []int{d.out}, d.Bias)
	case *Factored:
		if s.palu {
			return fmt.Errorf("save model: %s%s is low-rank factored, which Palu's layout cannot hold (use the native layout)", p, mod)
		}
		if d.A.Bias != nil {
			return fmt.Errorf("save model: %s%s: factor A has a bias", p, mod)
		}
		s.ranks[p+mod] = d.Rank()
		return errors.Join(s.add(p+mod+".A.weight", []int{d.A.out, d.A.in}, d.A.Weight),
			s.add(p+mod+".B.weight", []int{d.B.out, d.B.in}, d.B.Weight), s.add(p+mod+".bias", []int{d.B.out}, d.B.Bias))
	case *Grouped:
		return s.addGrouped(p+mod, d)
	}
	return fmt.Errorf("save model: %s%s is %T, which has no checkpoint layout", p, mod, l)
}

// addGrouped adds a Palu-factored module: the shared down projection and
// one up projection per group, in rankzip's or Palu's names.
func (s *saver) addGrouped(name string, d *Grouped) error {
	if s.palu && d.LatentBits > 0 {
		return fmt.Errorf("save model: %s quantizes its latents to %d bits, which Palu's layout cannot say (use the native layout)", name, d.LatentBits)
	}
	var rs []int
	names := &Config{PaluLayout: s.palu}
	err := s.add(downName(names, name), []int{d.Down.out, d.Down.in}, d.Down.Weight)
	if !s.palu {
		err = errors.Join(err, s.add(name+".bias", []int{d.Out()}, d.Bias))
	}
	for j, u := range d.Ups {
		rs = append(rs, u.in)
		err = errors.Join(err, s.add(upName(names, name, j, "weight"), []int{u.out, u.in}, u.Weight))
		if s.palu && d.Bias != nil {
			err = errors.Join(err, s.add(upName(names, name, j, "bias"), []int{u.out}, d.Bias[j*u.out:(j+1)*u.out]))
		}
	}
	if err != nil {
		return err
	}
	s.grouped[name] = rs
	if s.latentBits >= 0 && (s.latentBits != d.LatentBits || s.latentGroup != d.LatentGroup) && len(s.grouped) > 1 {
		return fmt.Errorf("save model: %s quantizes its latent differently from the other Palu layers", name)
	}
	s.latentBits, s.latentGroup = d.LatentBits, d.LatentGroup
	return nil
}

// writeConfig writes config.json for the tensors added: Palu's own keys,
// the DeepSeek MLA keys, or rankzip's native section.
func (s *saver) writeConfig(m *Model, dir string, mla *mlaSave) error {
	c := s.c
	torch := map[safetensors.DType]string{safetensors.F32: "float32", safetensors.F16: "float16", safetensors.BF16: "bfloat16"}[s.dtype]
	set := c.DTypeSettings(torch)
	set[NativeSection] = nil
	if s.palu {
		if len(s.grouped) == 0 {
			return fmt.Errorf("save model: no Palu-factored layer to write in Palu's layout")
		}
		set["model_type"] = "palu" + c.ModelType
		set["architectures"] = []string{paluArch[c.ModelType]}
		set["head_wise_ranks"] = s.grouped
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
		mla.settings(m, set, s.ranks)
		// Refuse now, not at load time, a config our own loader would refuse.
		data, err := configJSON(c, set)
		if err != nil {
			return err
		}
		if _, err := ParseConfig(filepath.Join(dir, "config.json"), data); err != nil {
			return fmt.Errorf("save model: the DeepSeek config written for this model does not load back: %w", err)
		}
	} else if sec := s.nativeSection(); sec != nil {
		set[NativeSection] = sec
	}
	return WriteConfig(dir, c, set)
}

// nativeSection is config.json's rankzip section naming every factored,
// quantized and Palu module; nil when every layer is in the original layout.
func (s *saver) nativeSection() map[string]any {
	if len(s.ranks) == 0 && len(s.grouped) == 0 && len(s.quantized) == 0 {
		return nil
	}
	sec := map[string]any{"format": "native"}
	if len(s.ranks) > 0 {
		sec["ranks"] = s.ranks
	}
	if len(s.quantized) > 0 {
		sec["quantized"] = s.quantized
	}
	if len(s.grouped) > 0 {
		sec["palu"] = s.grouped
		if s.latentBits > 0 {
			sec["palu_latent_bits"], sec["palu_latent_group_size"] = s.latentBits, s.latentGroup
		}
	}
	return sec
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
