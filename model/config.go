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
	// SlidingLayers marks the layers SlidingWindow applies to when only
	// some slide (Qwen3's layer_types); nil: every layer.
	SlidingLayers []bool

	// Factored maps module names (model.layers.i.<module>) stored as low-rank
	// factors by a native export to their ranks (config.json's "rankzip").
	Factored map[string]int
	// Grouped maps Palu-factored modules to their per-group ranks.
	Grouped map[string][]int
	// Quantized maps modules stored as integer codes (native layout) to
	// their bits and number of groups.
	Quantized map[string]QuantSpec
	// PaluLayout: the checkpoint is in Palu's own layout (model_type
	// palullama, palumistral or paluqwen2; head_wise_ranks; k_proj.VT and
	// k_proj.U.{j} tensors). ModelType is then the base type.
	PaluLayout bool
	// LatentBits and LatentGroup quantize the cached Palu latents (0: 16-bit).
	LatentBits, LatentGroup int
	// MLA is set for DeepSeek-V2/V3 checkpoints: every layer uses latent
	// attention (HeadDim is then qk_rope_head_dim, NumKVHeads = NumHeads).
	MLA *MLAConfig
	// DType is transformers 5's "dtype" or 4.x's "torch_dtype" ("" when
	// neither is given); DTypeSettings writes it back in the source's form.
	DType string

	// What an architecture adds to the Llama block, set by the parser in
	// its own file (arch.go lists them): qwen3.go, phi3.go, gemma3.go.
	//
	// Act is the MLP's gate activation: "silu" or "gelu_pytorch_tanh".
	Act string
	// QKNorm: an RMSNorm over each head of the queries and keys before
	// RoPE (q_norm, k_norm: Qwen3, Gemma 3).
	QKNorm bool
	// Fused: Phi-3's layout, one qkv_proj and one gate_up_proj per layer,
	// held split in memory (see phi3.go).
	Fused bool
	// Gemma is Gemma 3's text model (see gemma3.go), nil otherwise.
	Gemma *GemmaConfig
	// MoE is the routing of a mixture-of-experts model (moe.go: Mixtral,
	// Qwen3-MoE; qwen2moe.go: Qwen2-MoE), nil for dense MLPs.
	MoE *MoEConfig

	Raw map[string]json.RawMessage
}

// MLAConfig is the latent attention of a DeepSeek-layout checkpoint.
type MLAConfig struct {
	LoraRank, RopeDim, NopeDim, VDim int
	LatentNorm                       bool // kv_a_layernorm present
	// The rope frequencies are InvFreq() for head_dim = RopeSourceHeadDim
	// (with rope_theta and rope_scaling) at RopeFreqIndex: a model converted
	// from GQA keeps its original frequencies, possibly repeated. Stock
	// DeepSeek is RopeSourceHeadDim = RopeDim and indices 0..RopeDim/2-1.
	RopeSourceHeadDim int
	RopeFreqIndex     []int
	// LayerRopeFreqIndex, when set, gives each layer its own indices (a
	// conversion may keep different frequencies per layer); RopeFreqIndex
	// is then layer 0's.
	LayerRopeFreqIndex [][]int
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
var SupportedModelTypes = []string{"llama", "mistral", "qwen2", "qwen3", "phi3", "gemma2", "gemma3_text", "mixtral", "qwen2_moe", "qwen3_moe", "deepseek_v2", "deepseek_v3", "palullama", "palumistral", "paluqwen2"}

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
	case "palullama", "palumistral", "paluqwen2":
		c.ModelType, c.PaluLayout = strings.TrimPrefix(c.ModelType, "palu"), true
	}
	a, known := archs[c.ModelType]
	switch {
	case known:
	case c.ModelType == "":
		return nil, &ConfigError{Path: path, Field: "model_type", Err: errors.New("missing")}
	default:
		return nil, &ConfigError{Path: path, Field: "model_type",
			Err: fmt.Errorf("unsupported model type %q (supported: %s)%s", c.ModelType, strings.Join(SupportedModelTypes, ", "), unsupportedHint(c.ModelType))}
	}
	c.HiddenSize = p.positive("hidden_size")
	c.IntermediateSize = p.positive("intermediate_size")
	c.NumLayers = p.positive("num_hidden_layers")
	c.NumHeads = p.positive("num_attention_heads")
	c.NumKVHeads = c.NumHeads
	if p.has("num_key_value_heads") && !p.isNull("num_key_value_heads") {
		c.NumKVHeads = p.positive("num_key_value_heads")
	}
	c.VocabSize = p.positive("vocab_size")
	c.MaxPositions = p.positive("max_position_embeddings")
	c.RMSNormEps = p.float("rms_norm_eps", a.eps)
	rs := p.ropeSettings(c.ModelType) // both forms: rope_theta/rope_scaling (4.x), rope_parameters (5)
	c.RopeTheta, c.RopeScaling = rs.Theta, rs.Scaling
	p.local = rs
	c.DType = p.dtype()
	c.TieWordEmbeddings = p.boolean("tie_word_embeddings", a.tied) // the default of the architecture's config class
	c.Act = "silu"
	if !strings.HasPrefix(c.ModelType, "gemma") { // Gemma reads hidden_activation (gemma3.go)
		if act := p.str("hidden_act", "silu"); act != "silu" {
			p.fail("hidden_act", fmt.Errorf("unsupported activation %q (only silu)", act))
		}
	}
	deepseek := strings.HasPrefix(c.ModelType, "deepseek_")
	p.heads(c, a, deepseek)
	if !(c.RMSNormEps > 0) {
		p.fail("rms_norm_eps", fmt.Errorf("must be positive, got %v", c.RMSNormEps))
	}
	p.biasesAndWindow(c, deepseek)
	if a.parse != nil {
		a.parse(&p, c)
	}
	p.nativeSettings(c)
	if p.err != nil {
		return nil, p.err
	}
	return c, nil
}

// heads reads the attention heads' size (MLA's dims for DeepSeek, else
// head_dim or hidden_size / num_attention_heads) and checks the head counts.
func (p *parser) heads(c *Config, a arch, deepseek bool) {
	if deepseek {
		c.MLA = p.mla(c)
	} else if c.NumHeads > 0 && c.HiddenSize > 0 {
		c.HeadDim = c.HiddenSize / c.NumHeads
		if p.has("head_dim") && string(p.raw["head_dim"]) != "null" {
			c.HeadDim = p.positive("head_dim")
		} else if a.headDim > 0 {
			c.HeadDim = a.headDim // the config class's default, not hidden_size / num_attention_heads
		} else if c.HiddenSize%c.NumHeads != 0 {
			p.fail("head_dim", fmt.Errorf("absent and hidden_size %d is not divisible by num_attention_heads %d", c.HiddenSize, c.NumHeads))
		}
	}
	if !deepseek && c.HeadDim%2 != 0 {
		p.fail("head_dim", fmt.Errorf("must be even for RoPE, got %d", c.HeadDim))
	}
	if c.NumKVHeads > 0 && c.NumHeads%c.NumKVHeads != 0 {
		p.fail("num_key_value_heads", fmt.Errorf("%d does not divide num_attention_heads %d", c.NumKVHeads, c.NumHeads))
	}
}

// biasesAndWindow reads the linear layers' biases and the sliding window
// that applies to every layer (Mistral, Phi-3); Qwen2's is refused.
func (p *parser) biasesAndWindow(c *Config, deepseek bool) {
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
		if c.ModelType == "mistral" || c.ModelType == "phi3" { // every layer, as Mistral and Phi-3 in transformers
			if w := p.optInt("sliding_window"); w > 0 && w < c.MaxPositions {
				c.SlidingWindow = w
			}
		}
		if deepseek && (p.optInt("sliding_window") > 0 || p.boolean("use_sliding_window", false)) {
			p.fail("sliding_window", errors.New("sliding-window attention with latent attention (MLA) is not supported"))
		}
	}
}

// nativeSettings reads rankzip's own config section (factored, Palu,
// quantized and latent-attention layers) and Palu's head_wise_ranks.
func (p *parser) nativeSettings(c *Config) {
	sec := p.native()
	c.Factored, c.Grouped, c.LatentBits, c.LatentGroup, c.Quantized = sec.Ranks, sec.Palu, sec.LatentBits, sec.LatentGroup, sec.Quantized
	if c.PaluLayout {
		c.Grouped = p.headWiseRanks(c.Grouped)
	}
	switch {
	case sec.Format == "deepseek-mla" && c.MLA == nil:
		p.fail(NativeSection, fmt.Errorf("format \"deepseek-mla\" needs model_type deepseek_v2 or deepseek_v3, not %q", c.ModelType))
	case sec.Format != "deepseek-mla" && (sec.RopeSourceHeadDim != 0 || sec.RopeFreqIndex != nil || sec.LayerRopeFreqIndex != nil):
		p.fail(NativeSection, fmt.Errorf("mla_rope_* fields need format \"deepseek-mla\", not %q", sec.Format))
	case sec.Format == "deepseek-mla" && len(sec.Palu) > 0:
		p.fail(NativeSection, errors.New("Palu layers (\"palu\") have no place in a deepseek-mla checkpoint"))
	}
	if c.MLA != nil {
		p.mlaRope(c.MLA, sec.RopeSourceHeadDim, sec.RopeFreqIndex)
		p.mlaLayerRope(c, sec.LayerRopeFreqIndex)
	}
}

// parser reads typed fields, keeping the first error.
type parser struct {
	path string
	raw  map[string]json.RawMessage
	err  error
	// ropeDefault is the architecture's rope_theta when none is given
	// (0: 10000).
	ropeDefault float64
	// local holds the RoPE settings read, for Gemma 3's local layers.
	local RopeSettings
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
		} else if p.isNull(key) {
			p.fail(key, errors.New("must be a number, got null"))
		}
		return 0
	}
	if v <= 0 {
		p.fail(key, fmt.Errorf("must be positive, got %d", v))
	}
	return v
}

func (p *parser) isNull(key string) bool { return bytes.Equal(p.raw[key], []byte("null")) }

func (p *parser) nonNegative(key string) int {
	var v int
	if !p.decode(key, &v) {
		if !p.has(key) {
			p.fail(key, errors.New("missing"))
		} else if p.isNull(key) {
			p.fail(key, errors.New("must be a number, got null"))
		}
		return 0
	}
	if v < 0 {
		p.fail(key, fmt.Errorf("must not be negative, got %d", v))
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

// QuantSpec is a quantized module of a native checkpoint.
type QuantSpec struct {
	Bits   int `json:"bits"`
	Groups int `json:"groups"`
}

// NativeSection is the config.json key of rankzip's native format.
const NativeSection = "rankzip"

// nativeSection is config.json's "rankzip" section.
type nativeSection struct {
	Format      string               `json:"format"`
	Ranks       map[string]int       `json:"ranks"`
	Quantized   map[string]QuantSpec `json:"quantized"`
	Palu        map[string][]int     `json:"palu"`
	LatentBits  int                  `json:"palu_latent_bits"`
	LatentGroup int                  `json:"palu_latent_group_size"`
	// Format "deepseek-mla": where the rope frequencies come from (MLAConfig).
	RopeSourceHeadDim  int     `json:"mla_rope_source_head_dim"`
	RopeFreqIndex      []int   `json:"mla_rope_freq_index"`
	LayerRopeFreqIndex [][]int `json:"mla_layer_rope_freq_index"`
}

func (p *parser) native() nativeSection {
	var sec nativeSection
	r, ok := p.raw[NativeSection]
	if !ok || bytes.Equal(r, []byte("null")) {
		return nativeSection{}
	}
	dec := json.NewDecoder(bytes.NewReader(r))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&sec); err != nil {
		p.fail(NativeSection, fmt.Errorf("expected {\"format\": \"native\", \"ranks\": {module: rank}, \"palu\": {module: [rank per group]}, ...}: %v", err))
		return nativeSection{}
	}
	switch sec.LatentBits {
	case 0, 2, 3, 4, 8:
	default:
		p.fail(NativeSection, fmt.Errorf("palu_latent_bits %d: want 2, 3, 4 or 8", sec.LatentBits))
	}
	if sec.LatentBits > 0 && sec.LatentGroup <= 0 {
		p.fail(NativeSection, fmt.Errorf("palu_latent_group_size %d must be positive", sec.LatentGroup))
	}
	if sec.Format != "native" && sec.Format != "deepseek-mla" {
		p.fail(NativeSection, fmt.Errorf("format %q unknown (want \"native\" or \"deepseek-mla\")", sec.Format))
	}
	for name, r := range sec.Ranks {
		if r <= 0 {
			p.fail(NativeSection, fmt.Errorf("module %q: rank %d must be positive", name, r))
		}
	}
	for name, q := range sec.Quantized {
		_, factored := sec.Ranks[name]
		_, grouped := sec.Palu[name]
		switch {
		case q.Bits != 2 && q.Bits != 3 && q.Bits != 4 && q.Bits != 8:
			p.fail(NativeSection, fmt.Errorf("quantized module %q: %d bits (want 2, 3, 4 or 8)", name, q.Bits))
		case q.Groups <= 0:
			p.fail(NativeSection, fmt.Errorf("quantized module %q: %d groups must be positive", name, q.Groups))
		case factored || grouped:
			p.fail(NativeSection, fmt.Errorf("module %q: needs one layout, not both quantized and factored", name))
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
	return sec
}

// mla reads the latent attention fields of a DeepSeek config and refuses
// what the forward pass does not implement.
func (p *parser) mla(c *Config) *MLAConfig {
	m := &MLAConfig{
		LoraRank: p.positive("kv_lora_rank"),
		RopeDim:  p.positive("qk_rope_head_dim"),
		NopeDim:  p.nonNegative("qk_nope_head_dim"),
		VDim:     p.positive("v_head_dim"),
		// TransMLA writes qk_latent_layernorm false when it adds no norm;
		// stock DeepSeek always has kv_a_layernorm.
		LatentNorm: p.boolean("qk_latent_layernorm", true),
	}
	if m.RopeDim%2 != 0 {
		p.fail("qk_rope_head_dim", fmt.Errorf("must be even for RoPE, got %d", m.RopeDim))
	}
	c.HeadDim = m.RopeDim // as Hugging Face's DeepseekV3Config
	if c.NumKVHeads != c.NumHeads {
		p.fail("num_key_value_heads", fmt.Errorf("%d must equal num_attention_heads %d in the MLA layout", c.NumKVHeads, c.NumHeads))
	}
	if p.has("q_lora_rank") && !p.isNull("q_lora_rank") {
		p.fail("q_lora_rank", errors.New("must be null: a low-rank query (q_a_proj, q_b_proj) is not supported"))
	}
	if n := p.optInt("n_routed_experts"); n > 0 {
		if k := p.optInt("first_k_dense_replace"); k < c.NumLayers {
			p.fail("n_routed_experts", fmt.Errorf("%d routed experts from layer first_k_dense_replace = %d: mixture-of-experts layers are not supported", n, k))
		}
	}
	if !p.boolean("rope_interleave", true) {
		p.fail("rope_interleave", errors.New("false (rotate-half rope on MLA) is not supported; DeepSeek interleaves"))
	}
	return m
}

// mlaRope sets the rope frequency source of m from the rankzip section, or
// to the stock DeepSeek frequencies of a RopeDim-dim rope.
func (p *parser) mlaRope(m *MLAConfig, src int, index []int) {
	if src == 0 && index == nil {
		m.RopeSourceHeadDim = m.RopeDim
		for i := range m.RopeDim / 2 {
			m.RopeFreqIndex = append(m.RopeFreqIndex, i)
		}
		return
	}
	m.RopeSourceHeadDim, m.RopeFreqIndex = src, index
	if src <= 0 || src%2 != 0 {
		p.fail(NativeSection+".mla_rope_source_head_dim", fmt.Errorf("must be a positive even head_dim, got %d", src))
		return
	}
	if len(index) != m.RopeDim/2 {
		p.fail(NativeSection+".mla_rope_freq_index", fmt.Errorf("has %d entries, want qk_rope_head_dim/2 = %d", len(index), m.RopeDim/2))
		return
	}
	for i, j := range index {
		if j < 0 || j >= src/2 {
			p.fail(NativeSection+".mla_rope_freq_index", fmt.Errorf("entry %d is %d, outside [0, %d) for mla_rope_source_head_dim %d", i, j, src/2, src))
			return
		}
	}
}

// headWiseRanks reads Palu's head_wise_ranks (module -> rank per group).
func (p *parser) headWiseRanks(native map[string][]int) map[string][]int {
	var hw map[string][]int
	if !p.decode("head_wise_ranks", &hw) || len(hw) == 0 {
		p.fail("head_wise_ranks", errors.New("a Palu checkpoint needs {module: [rank per group]}"))
		return nil
	}
	if len(native) > 0 {
		p.fail(NativeSection, errors.New("\"palu\" ranks and Palu's head_wise_ranks both given; a checkpoint has one layout"))
	}
	for name, rs := range hw {
		if len(rs) == 0 {
			p.fail("head_wise_ranks", fmt.Errorf("module %q has no groups", name))
		}
		for _, r := range rs {
			if r <= 0 {
				p.fail("head_wise_ranks", fmt.Errorf("module %q: group rank %d must be positive", name, r))
			}
		}
	}
	return hw
}

// mlaLayerRope checks and sets the per-layer rope frequency indices.
func (p *parser) mlaLayerRope(c *Config, layers [][]int) {
	if layers == nil || p.err != nil {
		return
	}
	field := NativeSection + ".mla_layer_rope_freq_index"
	m := c.MLA
	if len(layers) != c.NumLayers {
		p.fail(field, fmt.Errorf("has %d lists, want one per layer (%d)", len(layers), c.NumLayers))
		return
	}
	for l, index := range layers {
		if len(index) != m.RopeDim/2 {
			p.fail(field, fmt.Errorf("layer %d has %d entries, want qk_rope_head_dim/2 = %d", l, len(index), m.RopeDim/2))
			return
		}
		for i, j := range index {
			if j < 0 || j >= m.RopeSourceHeadDim/2 {
				p.fail(field, fmt.Errorf("layer %d entry %d is %d, outside [0, %d)", l, i, j, m.RopeSourceHeadDim/2))
				return
			}
		}
	}
	m.LayerRopeFreqIndex = layers
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
	norms := int64(0)
	for _, n := range blockNorms(c) {
		norms += int64(normSize(c, n))
	}
	block := norms + h*q + 2*h*kv + q*h + 3*h*i
	if e := c.MoE; e != nil {
		block += int64(e.Experts)*(3*h*int64(e.Inter)+h) - 3*h*i
		if e.SharedInter > 0 { // Qwen2-MoE's shared expert and its gate
			block += 3*h*int64(e.SharedInter) + h
		}
	}
	if c.QKVBias {
		block += q + 2*kv
	}
	if a := c.MLA; a != nil {
		nh, lr, kva := int64(c.NumHeads), int64(a.LoraRank), int64(a.LoraRank+a.RopeDim)
		q, o := nh*int64(a.NopeDim+a.RopeDim), nh*int64(a.VDim)
		block = 2*h + q*h + kva*h + nh*int64(a.NopeDim+a.VDim)*lr + h*o + 3*h*i
		if a.LatentNorm {
			block += lr
		}
		if c.QKVBias { // upper bound: the biases are optional in this layout
			block += q + kva
		}
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

// MLARopeFreq returns the RopeDim/2 inverse frequencies of an MLA config's
// rope (see MLAConfig), nil without MLA; layer 0's when layers differ.
func (c *Config) MLARopeFreq() []float64 { return c.MLALayerRopeFreq(0) }

// MLALayerRopeFreq returns layer l's rope inverse frequencies.
func (c *Config) MLALayerRopeFreq(l int) []float64 {
	if c.MLA == nil {
		return nil
	}
	src := *c
	src.HeadDim = c.MLA.RopeSourceHeadDim
	inv := src.InvFreq()
	index := c.MLA.RopeFreqIndex
	if c.MLA.LayerRopeFreqIndex != nil {
		index = c.MLA.LayerRopeFreqIndex[l]
	}
	out := make([]float64, len(index))
	for i, j := range index {
		out[i] = inv[j]
	}
	return out
}

// KVBytesPerToken is the KV cache per token of the model this config
// describes at 16 bits: keys and values, or an MLA latent and rope key.
func (c *Config) KVBytesPerToken() int {
	if c.MLA != nil {
		return 2 * c.NumLayers * (c.MLA.LoraRank + c.MLA.RopeDim)
	}
	return 2 * 2 * c.NumLayers * c.NumKVHeads * c.HeadDim
}
