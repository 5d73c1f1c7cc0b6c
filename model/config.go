package model

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
)

// Config is the part of a Hugging Face config.json that the Llama-family
// forward pass needs. Raw keeps every key of the file so that an export can
// write the original back with only its own changes.
type Config struct {
	ModelType         string
	HiddenSize        int
	IntermediateSize  int
	NumLayers         int
	NumHeads          int
	NumKVHeads        int
	HeadDim           int
	VocabSize         int
	MaxPositions      int
	RMSNormEps        float64
	RopeTheta         float64
	RopeScaling       *RopeScaling // nil: plain RoPE
	TieWordEmbeddings bool
	QKVBias           bool // biases on q_proj, k_proj, v_proj (qwen2, llama attention_bias)
	OBias             bool // bias on o_proj (llama attention_bias)
	MLPBias           bool // biases on gate, up and down (llama mlp_bias)
	SlidingWindow     int  // 0: full causal attention

	// Factored maps module names (model.layers.i.<module>) stored as low-rank
	// factors by a native export to their ranks (config.json's "rankzip").
	Factored map[string]int
	// Grouped maps Palu-factored modules to their per-group ranks.
	Grouped map[string][]int
	// LatentBits and LatentGroup quantize the cached Palu latents (0: 16-bit).
	LatentBits, LatentGroup int

	Raw map[string]json.RawMessage
}

// RopeScaling is a supported rope_scaling entry.
type RopeScaling struct {
	Type   string  // "linear" or "llama3"
	Factor float64 // both types
	// llama3 only.
	LowFreqFactor, HighFreqFactor float64
	OriginalMaxPositions          int
}

// ConfigError reports a config.json that rankzip cannot use.
type ConfigError struct {
	Path  string
	Field string
	Err   error
}

func (e *ConfigError) Error() string {
	if e.Field == "" {
		return fmt.Sprintf("%s: %v", e.Path, e.Err)
	}
	return fmt.Sprintf("%s: field %q: %v", e.Path, e.Field, e.Err)
}

func (e *ConfigError) Unwrap() error { return e.Err }

// SupportedModelTypes lists the model_type values rankzip runs.
var SupportedModelTypes = []string{"llama", "mistral", "qwen2"}

// ReadConfig reads and validates dir/config.json.
func ReadConfig(dir string) (*Config, error) {
	path := filepath.Join(dir, "config.json")
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read model config: %w", err)
	}
	return ParseConfig(path, data)
}

// ParseConfig parses the contents of a config.json; path is used in errors.
func ParseConfig(path string, data []byte) (*Config, error) {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, &ConfigError{Path: path, Err: fmt.Errorf("not a JSON object: %w", err)}
	}
	p := parser{path: path, raw: raw}
	c := &Config{Raw: raw}
	c.ModelType = p.str("model_type", "")
	switch c.ModelType {
	case "llama", "mistral", "qwen2":
	case "":
		return nil, &ConfigError{Path: path, Field: "model_type", Err: errors.New("missing")}
	default:
		return nil, &ConfigError{Path: path, Field: "model_type",
			Err: fmt.Errorf("unsupported model type %q (supported: %s)", c.ModelType, strings.Join(SupportedModelTypes, ", "))}
	}
	c.HiddenSize = p.positive("hidden_size")
	c.IntermediateSize = p.positive("intermediate_size")
	c.NumLayers = p.positive("num_hidden_layers")
	c.NumHeads = p.positive("num_attention_heads")
	c.NumKVHeads = c.NumHeads
	if p.has("num_key_value_heads") {
		c.NumKVHeads = p.positive("num_key_value_heads")
	}
	c.VocabSize = p.positive("vocab_size")
	c.MaxPositions = p.positive("max_position_embeddings")
	c.RMSNormEps = p.float("rms_norm_eps", 1e-6)
	c.RopeTheta = p.float("rope_theta", 10000)
	c.TieWordEmbeddings = p.boolean("tie_word_embeddings", false) // the default of LlamaConfig, MistralConfig and Qwen2Config
	if act := p.str("hidden_act", "silu"); act != "silu" {
		p.fail("hidden_act", fmt.Errorf("unsupported activation %q (only silu)", act))
	}
	if c.NumHeads > 0 && c.HiddenSize > 0 {
		c.HeadDim = c.HiddenSize / c.NumHeads
		if p.has("head_dim") && string(raw["head_dim"]) != "null" {
			c.HeadDim = p.positive("head_dim")
		} else if c.HiddenSize%c.NumHeads != 0 {
			p.fail("head_dim", fmt.Errorf("absent and hidden_size %d is not divisible by num_attention_heads %d", c.HiddenSize, c.NumHeads))
		}
	}
	if c.HeadDim%2 != 0 {
		p.fail("head_dim", fmt.Errorf("must be even for RoPE, got %d", c.HeadDim))
	}
	if c.NumKVHeads > 0 && c.NumHeads%c.NumKVHeads != 0 {
		p.fail("num_key_value_heads", fmt.Errorf("%d does not divide num_attention_heads %d", c.NumKVHeads, c.NumHeads))
	}
	if !(c.RMSNormEps > 0) {
		p.fail("rms_norm_eps", fmt.Errorf("must be positive, got %v", c.RMSNormEps))
	}
	if !(c.RopeTheta > 0) {
		p.fail("rope_theta", fmt.Errorf("must be positive, got %v", c.RopeTheta))
	}
	switch c.ModelType {
	case "qwen2":
		c.QKVBias = true
		if p.boolean("use_sliding_window", false) {
			p.fail("use_sliding_window", errors.New("sliding-window attention for qwen2 is not supported"))
		}
	default:
		bias := p.boolean("attention_bias", false)
		c.QKVBias, c.OBias = bias, bias
		c.MLPBias = p.boolean("mlp_bias", false)
		if c.ModelType == "mistral" {
			if w := p.optInt("sliding_window"); w > 0 && w < c.MaxPositions {
				c.SlidingWindow = w
			}
		}
	}
	c.RopeScaling = p.ropeScaling()
	c.Factored, c.Grouped, c.LatentBits, c.LatentGroup = p.native()
	if p.err != nil {
		return nil, p.err
	}
	return c, nil
}

// parser reads typed fields, keeping the first error.
type parser struct {
	path string
	raw  map[string]json.RawMessage
	err  error
}

func (p *parser) fail(field string, err error) {
	if p.err == nil {
		p.err = &ConfigError{Path: p.path, Field: field, Err: err}
	}
}

func (p *parser) has(key string) bool { _, ok := p.raw[key]; return ok }

func (p *parser) decode(key string, v any) bool {
	r, ok := p.raw[key]
	if !ok || bytes.Equal(r, []byte("null")) {
		return false
	}
	if err := json.Unmarshal(r, v); err != nil {
		p.fail(key, fmt.Errorf("expected %T: %v", v, err))
		return false
	}
	return true
}

func (p *parser) positive(key string) int {
	var v int
	if !p.decode(key, &v) {
		if !p.has(key) {
			p.fail(key, errors.New("missing"))
		}
		return 0
	}
	if v <= 0 {
		p.fail(key, fmt.Errorf("must be positive, got %d", v))
	}
	return v
}

func (p *parser) optInt(key string) int {
	var v int
	p.decode(key, &v)
	return v
}

func (p *parser) float(key string, def float64) float64 {
	v := def
	p.decode(key, &v)
	return v
}

func (p *parser) boolean(key string, def bool) bool {
	v := def
	p.decode(key, &v)
	return v
}

func (p *parser) str(key, def string) string {
	v := def
	p.decode(key, &v)
	return v
}

func (p *parser) ropeScaling() *RopeScaling {
	var m map[string]any
	if !p.decode("rope_scaling", &m) {
		return nil
	}
	typ, _ := m["rope_type"].(string)
	if typ == "" {
		typ, _ = m["type"].(string)
	}
	num := func(k string) float64 {
		v, ok := m[k].(float64)
		if !ok || !(v > 0) || math.IsInf(v, 0) {
			p.fail("rope_scaling", fmt.Errorf("%s rope scaling needs a positive %q", typ, k))
		}
		return v
	}
	switch typ {
	case "default":
		return nil
	case "linear":
		return &RopeScaling{Type: typ, Factor: num("factor")}
	case "llama3":
		s := &RopeScaling{Type: typ, Factor: num("factor"), LowFreqFactor: num("low_freq_factor"),
			HighFreqFactor: num("high_freq_factor"), OriginalMaxPositions: int(num("original_max_position_embeddings"))}
		if s.HighFreqFactor <= s.LowFreqFactor {
			p.fail("rope_scaling", fmt.Errorf("high_freq_factor %v must exceed low_freq_factor %v", s.HighFreqFactor, s.LowFreqFactor))
		}
		return s
	default:
		p.fail("rope_scaling", fmt.Errorf("unsupported rope scaling type %q (supported: linear, llama3)", typ))
		return nil
	}
}

// NativeSection is the config.json key of rankzip's native format.
const NativeSection = "rankzip"

func (p *parser) native() (map[string]int, map[string][]int, int, int) {
	var sec struct {
		Format      string           `json:"format"`
		Ranks       map[string]int   `json:"ranks"`
		Palu        map[string][]int `json:"palu"`
		LatentBits  int              `json:"palu_latent_bits"`
		LatentGroup int              `json:"palu_latent_group_size"`
	}
	r, ok := p.raw[NativeSection]
	if !ok {
		return nil, nil, 0, 0
	}
	dec := json.NewDecoder(bytes.NewReader(r))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&sec); err != nil {
		p.fail(NativeSection, fmt.Errorf("expected {\"format\": \"native\", \"ranks\": {module: rank}, \"palu\": {module: [rank per group]}, ...}: %v", err))
		return nil, nil, 0, 0
	}
	switch sec.LatentBits {
	case 0, 2, 3, 4, 8:
	default:
		p.fail(NativeSection, fmt.Errorf("palu_latent_bits %d: want 2, 3, 4 or 8", sec.LatentBits))
	}
	if sec.LatentBits > 0 && sec.LatentGroup <= 0 {
		p.fail(NativeSection, fmt.Errorf("palu_latent_group_size %d must be positive", sec.LatentGroup))
	}
	if sec.Format != "native" {
		p.fail(NativeSection, fmt.Errorf("format %q unknown (want \"native\")", sec.Format))
	}
	for name, r := range sec.Ranks {
		if r <= 0 {
			p.fail(NativeSection, fmt.Errorf("module %q: rank %d must be positive", name, r))
		}
	}
	for name, rs := range sec.Palu {
		for _, r := range rs {
			if r <= 0 {
				p.fail(NativeSection, fmt.Errorf("module %q: group rank %d must be positive", name, r))
			}
		}
		if _, both := sec.Ranks[name]; both || len(rs) == 0 {
			p.fail(NativeSection, fmt.Errorf("module %q: needs one layout with at least one group", name))
		}
	}
	return sec.Ranks, sec.Palu, sec.LatentBits, sec.LatentGroup
}

// InvFreq returns the RoPE inverse frequencies of one head (HeadDim/2 values),
// with the configured scaling applied as Hugging Face does.
func (c *Config) InvFreq() []float64 {
	half := c.HeadDim / 2
	inv := make([]float64, half)
	for i := range inv {
		inv[i] = 1 / math.Pow(c.RopeTheta, float64(2*i)/float64(c.HeadDim))
	}
	s := c.RopeScaling
	if s == nil {
		return inv
	}
	switch s.Type {
	case "linear":
		for i := range inv {
			inv[i] /= s.Factor
		}
	case "llama3":
		old := float64(s.OriginalMaxPositions)
		lowWavelen := old / s.LowFreqFactor
		highWavelen := old / s.HighFreqFactor
		for i, f := range inv {
			wavelen := 2 * math.Pi / f
			switch {
			case wavelen < highWavelen:
			case wavelen > lowWavelen:
				inv[i] = f / s.Factor
			default:
				smooth := (old/wavelen - s.LowFreqFactor) / (s.HighFreqFactor - s.LowFreqFactor)
				inv[i] = (1-smooth)*f/s.Factor + smooth*f
			}
		}
	}
	return inv
}

// NumParams is the parameter count of the model this config describes.
func (c *Config) NumParams() int64 {
	h, i, q, kv := int64(c.HiddenSize), int64(c.IntermediateSize), int64(c.NumHeads*c.HeadDim), int64(c.NumKVHeads*c.HeadDim)
	block := 2*h + h*q + 2*h*kv + q*h + 3*h*i
	if c.QKVBias {
		block += q + 2*kv
	}
	if c.OBias {
		block += h
	}
	if c.MLPBias {
		block += 2*i + h
	}
	n := int64(c.VocabSize)*h + h + int64(c.NumLayers)*block
	if !c.TieWordEmbeddings {
		n += int64(c.VocabSize) * h
	}
	return n
}
