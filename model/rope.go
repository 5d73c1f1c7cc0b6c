package model

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"sort"
	"strings"
)

// RoPE settings come in two forms, read here by one parser:
//
//   - transformers 4.x: top-level "rope_theta" and "rope_scaling"
//     ({"rope_type" or "type": ..., "factor": ..., ...}, or null);
//   - transformers 5: one "rope_parameters" object holding rope_theta and the
//     scaling ({"rope_type": "llama3", "rope_theta": 500000, "factor": 8,
//     ...}), or one such object per layer type ({"full_attention": {...},
//     "sliding_attention": {...}}).
//
// Every object goes through ropeObject, which honours exactly the keys of the
// rope types the forward pass implements (ropeTypeKeys) and refuses, naming
// it, any other key that would change the numerics. Where several sources
// say something (rope_theta and rope_parameters.rope_theta, rope_scaling and
// rope_parameters, the entries of several layer types), they must agree.

// ropeTypeKeys are the supported rope types and, for each, the keys beyond
// rope_type/type, rope_theta and partial_rotary_factor that set its
// frequencies (all honoured by InvFreq).
var ropeTypeKeys = map[string][]string{
	"default": nil,
	"linear":  {"factor"},
	"llama3":  {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"},
}

// supportedRopeTypes is ropeTypeKeys' types, for messages.
const supportedRopeTypes = "default, linear, llama3"

// ropeLayerTypes are the layer types a per-layer-type rope_parameters may
// name when config.json has no layer_types.
var ropeLayerTypes = []string{"full_attention", "sliding_attention"}

// ropeClaim is what one source says about the RoPE: its theta (0: not
// given) and, when scaled is set, its scaling (nil: none).
type ropeClaim struct {
	field      string // the source, for messages: rope_theta, rope_scaling, rope_parameters[.<layer type>]
	theta      float64
	thetaField string
	scaled     bool
	scaling    *RopeScaling
	layerType  bool // an entry of a per-layer-type rope_parameters
}

// rope reads rope_theta, rope_scaling, rope_parameters and
// partial_rotary_factor into the one RoPE every layer runs.
func (p *parser) rope() (float64, *RopeScaling) {
	var claims []ropeClaim
	if p.has("rope_theta") && !p.isNull("rope_theta") {
		var t float64
		if p.decode("rope_theta", &t) {
			claims = append(claims, ropeClaim{field: "rope_theta", theta: p.ropeTheta("rope_theta", t), thetaField: "rope_theta"})
		}
	}
	if f := "partial_rotary_factor"; p.has(f) && !p.isNull(f) {
		var v float64
		if p.decode(f, &v) && v != 1 {
			p.fail(f, fmt.Errorf("%v: partial rotary embeddings are not supported (only 1)", v))
		}
	}
	if r, ok := p.raw["rope_scaling"]; ok && !bytes.Equal(r, []byte("null")) {
		if c, ok := p.ropeObject("rope_scaling", r); ok {
			claims = append(claims, c)
		}
	}
	if r, ok := p.raw["rope_parameters"]; ok && !bytes.Equal(r, []byte("null")) {
		claims = append(claims, p.ropeParameters(r)...)
	}
	theta, thetaFrom := 10000.0, -1 // the default of LlamaConfig, MistralConfig, Qwen2Config and DeepseekV3Config
	if p.ropeDefault > 0 {
		theta = p.ropeDefault // another architecture's (archs)
	}
	var scaling *RopeScaling
	scaleFrom := -1
	for i, c := range claims {
		if c.theta > 0 {
			if thetaFrom >= 0 && c.theta != theta {
				a := claims[thetaFrom]
				p.fail(a.thetaField, fmt.Errorf("%v disagrees with %s = %v", theta, c.thetaField, c.theta))
			}
			if thetaFrom < 0 {
				theta, thetaFrom = c.theta, i
			}
		}
		if c.scaled {
			if scaleFrom >= 0 && !sameScaling(scaling, c.scaling) {
				a := claims[scaleFrom]
				if a.layerType && c.layerType {
					p.fail(a.field, fmt.Errorf("%s and %s differ (%s vs %s): a RoPE per layer type is not supported, every layer runs one",
						a.field, c.field, describeScaling(scaling), describeScaling(c.scaling)))
				} else {
					p.fail(a.field, fmt.Errorf("%s and %s disagree (%s vs %s)", a.field, c.field, describeScaling(scaling), describeScaling(c.scaling)))
				}
			}
			if scaleFrom < 0 {
				scaling, scaleFrom = c.scaling, i
			}
		}
	}
	return theta, scaling
}

// ropeParameters reads transformers 5's rope_parameters: one rope object, or
// one per layer type.
func (p *parser) ropeParameters(r json.RawMessage) []ropeClaim {
	const field = "rope_parameters"
	var m map[string]json.RawMessage
	if err := json.Unmarshal(r, &m); err != nil {
		p.fail(field, fmt.Errorf("expected an object: %v", err))
		return nil
	}
	nested := false
	for _, v := range m {
		nested = nested || isObject(v)
	}
	if !nested {
		if c, ok := p.ropeObject(field, r); ok {
			return []ropeClaim{c}
		}
		return nil
	}
	// Per layer type: every key a layer type, every value a rope object.
	known := ropeLayerTypes
	var layerTypes []string
	if p.has("layer_types") && !p.isNull("layer_types") {
		if !p.decode("layer_types", &layerTypes) {
			return nil
		}
		known = layerTypes
	}
	var claims []ropeClaim
	for _, k := range sortedKeys(m) {
		f := field + "." + k
		switch {
		case bytes.Equal(m[k], []byte("null")):
			continue
		case !isObject(m[k]):
			p.fail(f, errors.New("a plain setting beside per-layer-type objects: rope_parameters is either one rope object or one object per layer type"))
			return nil
		case !slices.Contains(known, k):
			if layerTypes != nil {
				p.fail(f, fmt.Errorf("%q is none of the layer types of layer_types", k))
			} else {
				p.fail(f, fmt.Errorf("%q is not a layer type (without layer_types: %s)", k, strings.Join(ropeLayerTypes, ", ")))
			}
			return nil
		}
		c, ok := p.ropeObject(f, m[k])
		if !ok {
			return nil
		}
		c.layerType = true
		claims = append(claims, c)
	}
	for _, t := range layerTypes {
		if r, ok := m[t]; !ok || bytes.Equal(r, []byte("null")) {
			p.fail(field, fmt.Errorf("per layer type, but no entry for layer type %q of layer_types", t))
			return nil
		}
	}
	return claims
}

// ropeObject reads one rope object (rope_scaling, rope_parameters or one
// layer type's entry of it); field names it in errors. Null values count as
// absent. ok is false after an error.
func (p *parser) ropeObject(field string, r json.RawMessage) (c ropeClaim, ok bool) {
	c = ropeClaim{field: field, scaled: true}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(r, &m); err != nil {
		p.fail(field, fmt.Errorf("expected an object: %v", err))
		return c, false
	}
	for k, v := range m {
		if bytes.Equal(v, []byte("null")) {
			delete(m, k)
		}
	}
	failed := false
	fail := func(key string, err error) {
		if !failed {
			p.fail(field+"."+key, err)
			failed = true
		}
	}
	str := func(key string) string {
		var s string
		if v, ok := m[key]; ok {
			if err := json.Unmarshal(v, &s); err != nil {
				fail(key, fmt.Errorf("expected a string, got %s", v))
			}
		}
		return s
	}
	typ, typeKey := str("rope_type"), "rope_type"
	if t := str("type"); t != "" { // the older spelling, still read by transformers
		if typ != "" && typ != t {
			fail("rope_type", fmt.Errorf("%q disagrees with %s.type %q", typ, field, t))
		}
		if typ == "" {
			typ, typeKey = t, "type"
		}
	}
	if typ == "" {
		typ = "default" // transformers' default when neither is given
	}
	allowed, supported := ropeTypeKeys[typ]
	if !supported && !failed {
		fail(typeKey, fmt.Errorf("unsupported rope scaling type %q (supported: %s)", typ, supportedRopeTypes))
	}
	if failed {
		return c, false
	}
	nums := map[string]float64{}
	for _, k := range sortedKeys(m) {
		switch {
		case k == "rope_type" || k == "type":
		case k == "rope_theta", k == "partial_rotary_factor", slices.Contains(allowed, k):
			var v float64
			if err := json.Unmarshal(m[k], &v); err != nil {
				fail(k, fmt.Errorf("expected a number, got %s", m[k]))
				continue
			}
			nums[k] = v
		default:
			fail(k, fmt.Errorf("not supported with rope_type %q (rankzip honours: %s); refused rather than ignored", typ,
				strings.Join(append([]string{"rope_type", "rope_theta"}, allowed...), ", ")))
		}
	}
	if failed {
		return c, false
	}
	if v, ok := nums["partial_rotary_factor"]; ok && v != 1 {
		fail("partial_rotary_factor", fmt.Errorf("%v: partial rotary embeddings are not supported (only 1)", v))
		return c, false
	}
	if t, ok := nums["rope_theta"]; ok {
		c.theta, c.thetaField = p.ropeTheta(field+".rope_theta", t), field+".rope_theta"
	}
	num := func(k string) float64 {
		v, ok := nums[k]
		if !ok || !(v > 0) || math.IsInf(v, 0) {
			fail(k, fmt.Errorf("%s rope scaling needs a positive %q", typ, k))
		}
		return v
	}
	switch typ {
	case "linear":
		c.scaling = &RopeScaling{Type: typ, Factor: num("factor")}
	case "llama3":
		s := &RopeScaling{Type: typ, Factor: num("factor"), LowFreqFactor: num("low_freq_factor"),
			HighFreqFactor: num("high_freq_factor")}
		old := num("original_max_position_embeddings")
		if old != math.Trunc(old) && !failed {
			fail("original_max_position_embeddings", fmt.Errorf("must be an integer, got %v", old))
		}
		s.OriginalMaxPositions = int(old)
		if s.HighFreqFactor <= s.LowFreqFactor && !failed {
			fail("high_freq_factor", fmt.Errorf("high_freq_factor %v must exceed low_freq_factor %v", s.HighFreqFactor, s.LowFreqFactor))
		}
		c.scaling = s
	}
	return c, !failed
}

// ropeTheta checks a rope_theta value.
func (p *parser) ropeTheta(field string, t float64) float64 {
	if !(t > 0) || math.IsInf(t, 0) {
		p.fail(field, fmt.Errorf("must be positive, got %v", t))
		return 0
	}
	return t
}

// sameScaling reports whether two scalings give the same frequencies.
func sameScaling(a, b *RopeScaling) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}

// describeScaling is a scaling for messages.
func describeScaling(s *RopeScaling) string {
	switch {
	case s == nil:
		return "no scaling"
	case s.Type == "llama3":
		return fmt.Sprintf("llama3 factor %v, low_freq_factor %v, high_freq_factor %v, original_max_position_embeddings %d",
			s.Factor, s.LowFreqFactor, s.HighFreqFactor, s.OriginalMaxPositions)
	default:
		return fmt.Sprintf("%s factor %v", s.Type, s.Factor)
	}
}

func isObject(r json.RawMessage) bool {
	r = bytes.TrimSpace(r)
	return len(r) > 0 && r[0] == '{'
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// RopeSettings is the RoPE a config.json describes, as the loader reads it.
type RopeSettings struct {
	Theta   float64
	Scaling *RopeScaling
	// LocalTheta and LocalScaling are the RoPE of Gemma 3's sliding-window
	// layers (LocalTheta 0 for other architectures).
	LocalTheta   float64
	LocalScaling *RopeScaling
}

// Rope returns c's RoPE settings.
func (c *Config) Rope() RopeSettings {
	s := RopeSettings{Theta: c.RopeTheta, Scaling: c.RopeScaling}
	if g := c.Gemma; g != nil {
		s.LocalTheta, s.LocalScaling = g.LocalRopeTheta, g.LocalRopeScaling
	}
	return s
}

// Equal reports whether two settings give the same frequencies.
func (s RopeSettings) Equal(o RopeSettings) bool {
	return s.Theta == o.Theta && sameScaling(s.Scaling, o.Scaling) &&
		s.LocalTheta == o.LocalTheta && sameScaling(s.LocalScaling, o.LocalScaling)
}

// String describes s for messages.
func (s RopeSettings) String() string {
	if s.LocalTheta != 0 {
		return fmt.Sprintf("global rope_theta %v, %s; local rope_theta %v, %s", s.Theta, describeScaling(s.Scaling), s.LocalTheta, describeScaling(s.LocalScaling))
	}
	return fmt.Sprintf("rope_theta %v, %s", s.Theta, describeScaling(s.Scaling))
}

// readRope reads the RoPE settings and dtype of a config.json's keys alone
// (the check of an export's config, which keeps the source's form).
func readRope(path string, raw map[string]json.RawMessage) (RopeSettings, string, error) {
	p := parser{path: path, raw: raw}
	rs := p.ropeSettings(modelTypeOf(raw))
	dtype := p.dtype()
	return rs, dtype, p.err
}

// dtype reads transformers 5's "dtype" and 4.x's "torch_dtype"; both given,
// they must agree. "": neither.
func (p *parser) dtype() string {
	d, td := p.str("dtype", ""), p.str("torch_dtype", "")
	if d != "" && td != "" && d != td {
		p.fail("dtype", fmt.Errorf("%q disagrees with torch_dtype %q", d, td))
	}
	if d == "" {
		return td
	}
	return d
}

// DTypeSettings returns the config.json keys that record dtype in the form
// of the source checkpoint: transformers 5's "dtype" where the source had it,
// 4.x's "torch_dtype" where it had that or neither (transformers 5 still reads
// it), both where it had both. Exports keep the source's form throughout:
// they copy rope_theta/rope_scaling or rope_parameters unchanged from Raw.
func (c *Config) DTypeSettings(dtype string) map[string]any {
	_, d := c.Raw["dtype"]
	_, td := c.Raw["torch_dtype"]
	set := map[string]any{"torch_dtype": dtype}
	if d {
		set["dtype"] = dtype
		if !td {
			set["torch_dtype"] = nil
		}
	}
	return set
}
