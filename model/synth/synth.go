// Package synth writes synthetic checkpoints of real models' shapes (a
// Llama 3 8B with a few layers, say) in the Hugging Face layout, bfloat16
// and sharded, with random calibration data, from a seed. They exist to time
// and test rankzip at real size where no real checkpoint can be fetched.
//
// Weights are not i.i.d. noise, whose flat spectrum would make every rank
// choice alike: each linear is a "spiked" matrix, a low-rank part with
// power-law singular values plus a noise floor,
//
//	W = s·(A diag(σ) B / √(r) + ν G),  σ_i = (i+1)^(-α),
//
// with A (out×r), B (r×in) and G (out×in) standard normal, r = min(out,
// in)/8, α = 0.6 and ν chosen so the noise holds noiseShare of the energy.
// Trained LLM weights show the same picture: a decaying head and a
// Marchenko-Pastur bulk. s makes the entries' RMS initStd, as at
// initialisation. Every tensor has its own stream of the seed, so a tensor's
// values do not depend on the order of writing.
package synth

import (
	"encoding/json"
	"fmt"
	"hash/fnv"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"

	"github.com/rankzip/rankzip/calib"
	"github.com/rankzip/rankzip/internal/perm"
	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/model"
	"github.com/rankzip/rankzip/model/safetensors"
)

// Shape is a Llama-family architecture's sizes.
type Shape struct {
	Hidden, Intermediate, Layers, Heads, KVHeads, Vocab int
	MaxPositions                                        int
	RopeTheta                                           float64
	// RopeScaling is the 4.x rope_scaling object (nil: none).
	RopeScaling map[string]any
	Tied        bool
}

// Shapes are the presets by name; Layers is the full model's depth.
var Shapes = map[string]Shape{
	"llama3-8b": {Hidden: 4096, Intermediate: 14336, Layers: 32, Heads: 32, KVHeads: 8, Vocab: 128256,
		MaxPositions: 131072, RopeTheta: 500000, RopeScaling: map[string]any{"rope_type": "llama3", "factor": 8.0,
			"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}},
	"llama2-7b": {Hidden: 4096, Intermediate: 11008, Layers: 32, Heads: 32, KVHeads: 32, Vocab: 32000,
		MaxPositions: 4096, RopeTheta: 10000},
	"tinyllama-1.1b": {Hidden: 2048, Intermediate: 5632, Layers: 22, Heads: 32, KVHeads: 4, Vocab: 32000,
		MaxPositions: 2048, RopeTheta: 10000},
	// The shapes of the CPU measurements (compress's BenchmarkBlockShape, the
	// peak-memory runs at 4 and 8 layers): not a released model's, sized so a
	// block runs in seconds to minutes on a laptop.
	"bench-1024": {Hidden: 1024, Intermediate: 2816, Layers: 8, Heads: 16, KVHeads: 4, Vocab: 32000,
		MaxPositions: 4096, RopeTheta: 10000},
	"bench-2048": {Hidden: 2048, Intermediate: 5632, Layers: 8, Heads: 16, KVHeads: 4, Vocab: 32000,
		MaxPositions: 4096, RopeTheta: 10000},
	// tiny is for tests.
	"tiny": {Hidden: 64, Intermediate: 160, Layers: 2, Heads: 4, KVHeads: 2, Vocab: 256, MaxPositions: 256,
		RopeTheta: 10000},
}

// ShapeNames lists the presets, sorted.
func ShapeNames() []string {
	var names []string
	for n := range Shapes {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

const (
	initStd    = 0.02
	alpha      = 0.6
	noiseShare = 0.3 // of a linear's energy in its noise floor
)

// Options say what to write.
type Options struct {
	Shape Shape
	Seed  uint64
	// DType of the weights: BF16 (as real checkpoints ship), F16 or F32.
	DType safetensors.DType
	// Progress, when set, is told the name of each tensor as it is written.
	Progress func(name string)
}

// Write writes config.json, one shard per block (plus one for the
// embeddings, final norm and head) and the index into dir, which must not
// exist yet or be empty.
func Write(dir string, o Options, k kernels.Backend) error {
	s := o.Shape
	if s.Hidden <= 0 || s.Intermediate <= 0 || s.Layers <= 0 || s.Heads <= 0 || s.KVHeads <= 0 || s.Vocab <= 0 ||
		s.Hidden%s.Heads != 0 || s.Heads%s.KVHeads != 0 {
		return fmt.Errorf("synth: shape %+v: sizes must be positive, hidden a multiple of heads and heads of kv heads", s)
	}
	if o.DType == "" {
		o.DType = safetensors.BF16
	}
	if ents, err := os.ReadDir(dir); err == nil && len(ents) > 0 {
		return fmt.Errorf("synth: %s exists and is not empty", dir)
	}
	if err := os.MkdirAll(dir, perm.Dir()); err != nil {
		return fmt.Errorf("synth: %w", err)
	}
	headDim := s.Hidden / s.Heads
	type tensor struct {
		name  string
		shape []int
		fill  func() []float32
	}
	var shards [][]tensor
	linear := func(name string, out, in int) tensor {
		return tensor{name: name, shape: []int{out, in},
			fill: func() []float32 { return spiked(k, o.Seed, name, out, in) }}
	}
	norm := func(name string) tensor {
		return tensor{name: name, shape: []int{s.Hidden}, fill: func() []float32 { return nearOne(o.Seed, name, s.Hidden) }}
	}
	top := []tensor{
		{name: "model.embed_tokens.weight", shape: []int{s.Vocab, s.Hidden},
			fill: func() []float32 { return gaussian(o.Seed, "model.embed_tokens.weight", s.Vocab*s.Hidden, initStd) }},
		norm("model.norm.weight"),
	}
	if !s.Tied {
		top = append(top, tensor{name: "lm_head.weight", shape: []int{s.Vocab, s.Hidden},
			fill: func() []float32 { return gaussian(o.Seed, "lm_head.weight", s.Vocab*s.Hidden, initStd) }})
	}
	shards = append(shards, top)
	for l := range s.Layers {
		p := model.LayerPrefix(l)
		shards = append(shards, []tensor{
			norm(p + "input_layernorm.weight"),
			linear(p+"self_attn.q_proj.weight", s.Heads*headDim, s.Hidden),
			linear(p+"self_attn.k_proj.weight", s.KVHeads*headDim, s.Hidden),
			linear(p+"self_attn.v_proj.weight", s.KVHeads*headDim, s.Hidden),
			linear(p+"self_attn.o_proj.weight", s.Hidden, s.Heads*headDim),
			norm(p + "post_attention_layernorm.weight"),
			linear(p+"mlp.gate_proj.weight", s.Intermediate, s.Hidden),
			linear(p+"mlp.up_proj.weight", s.Intermediate, s.Hidden),
			linear(p+"mlp.down_proj.weight", s.Hidden, s.Intermediate),
		})
	}
	weightMap := map[string]string{}
	var total int64
	for i, shard := range shards {
		file := fmt.Sprintf("model-%05d-of-%05d.safetensors", i+1, len(shards))
		var wts []safetensors.WriteTensor
		for _, t := range shard {
			t := t
			n := 1
			for _, d := range t.shape {
				n *= d
			}
			total += int64(n * o.DType.Size())
			weightMap[t.name] = file
			wts = append(wts, safetensors.WriteTensor{Name: t.name, DType: o.DType, Shape: t.shape,
				Fill: func(w io.Writer) error {
					if o.Progress != nil {
						o.Progress(t.name)
					}
					b, err := safetensors.EncodeFloat32(t.fill(), o.DType)
					if err != nil {
						return err
					}
					_, err = w.Write(b)
					return err
				}})
		}
		if err := safetensors.WriteFile(filepath.Join(dir, file), wts, map[string]string{"format": "pt"}); err != nil {
			return err
		}
	}
	if err := safetensors.WriteIndex(dir, weightMap, total); err != nil {
		return err
	}
	return writeConfig(dir, s, o.DType)
}

func writeConfig(dir string, s Shape, dt safetensors.DType) error {
	torchDType := map[safetensors.DType]string{safetensors.BF16: "bfloat16", safetensors.F16: "float16", safetensors.F32: "float32"}[dt]
	cfg := map[string]any{
		"architectures": []string{"LlamaForCausalLM"}, "model_type": "llama",
		"hidden_size": s.Hidden, "intermediate_size": s.Intermediate, "num_hidden_layers": s.Layers,
		"num_attention_heads": s.Heads, "num_key_value_heads": s.KVHeads, "vocab_size": s.Vocab,
		"max_position_embeddings": s.MaxPositions, "rms_norm_eps": 1e-5, "rope_theta": s.RopeTheta,
		"hidden_act": "silu", "tie_word_embeddings": s.Tied, "attention_bias": false, "mlp_bias": false,
		"bos_token_id": 1, "eos_token_id": 2, "torch_dtype": torchDType,
	}
	if s.RopeScaling != nil {
		cfg["rope_scaling"] = s.RopeScaling
	}
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return err
	}
	return model.WriteFileAtomic(filepath.Join(dir, "config.json"), append(b, '\n'))
}

// rng returns the tensor's own random stream.
func rng(seed uint64, name string) *rand.Rand {
	h := fnv.New64a()
	h.Write([]byte(name))
	return rand.New(rand.NewPCG(seed, h.Sum64()))
}

func gaussian(seed uint64, name string, n int, std float64) []float32 {
	r := rng(seed, name)
	out := make([]float32, n)
	for i := range out {
		out[i] = float32(r.NormFloat64() * std)
	}
	return out
}

func nearOne(seed uint64, name string, n int) []float32 {
	out := gaussian(seed, name, n, 0.05)
	for i := range out {
		out[i] += 1
	}
	return out
}

// Rank is the rank of a linear's spiked part.
func Rank(out, in int) int { return max(1, min(out, in)/8) }

// spiked returns the out×in W described in the package comment.
func spiked(k kernels.Backend, seed uint64, name string, out, in int) []float32 {
	r := Rank(out, in)
	rg := rng(seed, name)
	a := make([]float32, out*r)
	b := make([]float32, r*in)
	var sig2 float64
	for i := range r {
		sig2 += math.Pow(float64(i+1), -2*alpha)
	}
	for j := range r {
		sj := math.Pow(float64(j+1), -alpha)
		for i := range out {
			a[i*r+j] = float32(rg.NormFloat64() * sj)
		}
	}
	for i := range b {
		b[i] = float32(rg.NormFloat64())
	}
	// E‖A diag(σ) B‖²_F = out·in·Σσ², so the low-rank part's mean square is
	// Σσ²/r after the 1/√r below; the noise gets noiseShare of the total.
	lowMS := sig2 / float64(r)
	nu := math.Sqrt(lowMS * noiseShare / (1 - noiseShare))
	scale := initStd / math.Sqrt(lowMS+nu*nu)
	w := make([]float32, out*in)
	for i := range w {
		w[i] = float32(rg.NormFloat64() * nu)
	}
	k.Sgemm(false, false, out, in, r, float32(1/math.Sqrt(float64(r))), a, r, b, in, 1, w, in)
	for i := range w {
		w[i] *= float32(scale)
	}
	return w
}

// Calibration writes sequences×seqLen token ids to path (Parquet), drawn
// from a Zipf law over the vocabulary (as real text's token frequencies
// roughly are), with BOS (id 1) first in each sequence.
func Calibration(path string, vocab, sequences, seqLen int, seed uint64) error {
	if vocab < 3 || sequences <= 0 || seqLen <= 0 {
		return fmt.Errorf("synth: calibration needs vocab >= 3, sequences > 0 and seq_len > 0, got %d, %d, %d", vocab, sequences, seqLen)
	}
	r := rng(seed, "calibration")
	z := rand.NewZipf(r, 1.1, 10, uint64(vocab-3))
	seqs := make([][]int32, sequences)
	for i := range seqs {
		s := make([]int32, seqLen)
		s[0] = 1
		for j := 1; j < seqLen; j++ {
			s[j] = int32(3 + z.Uint64()) // 0..2 are unk, bos, eos
		}
		seqs[i] = s
	}
	return calib.Write(path, seqs)
}
