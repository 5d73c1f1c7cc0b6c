package model

import (
	"encoding/json"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/model/safetensors"
)

// llama3JSON is a llama3 rope scaling with a small
// original_max_position_embeddings, so that a head_dim 8 RoPE keeps one
// frequency, smooths one and divides two by the factor.
const llama3JSON = `"factor": 4, "low_freq_factor": 1, "high_freq_factor": 4, "original_max_position_embeddings": 64`

// ropeArchs are a config of every supported architecture, without RoPE keys.
var ropeArchs = map[string]string{
	"llama":       `"model_type": "llama", ` + base,
	"mistral":     `"model_type": "mistral", "sliding_window": 128, ` + base,
	"qwen2":       `"model_type": "qwen2", ` + base,
	"deepseek_v3": strings.Replace(deepseek, `, "rope_theta": 10000`, "", 1),
	"palullama":   `"model_type": "palullama", ` + base + `, "head_wise_ranks": {"model.layers.0.self_attn.k_proj": [4, 4]}`,
}

// The 5.x form of a config (rope_parameters, flat or per layer type, and
// dtype) parses to the same Config as its 4.x form (rope_theta,
// rope_scaling and torch_dtype), for every architecture and rope type.
func TestRopeParametersForms(t *testing.T) {
	for arch, cfg := range ropeArchs {
		for _, rope := range []struct{ v4, v5 string }{
			{`"rope_theta": 500000, "rope_scaling": {"rope_type": "llama3", ` + llama3JSON + `}`,
				`"rope_parameters": {"rope_type": "llama3", "rope_theta": 500000, ` + llama3JSON + `}`},
			{`"rope_theta": 20000, "rope_scaling": {"type": "linear", "factor": 2}`,
				`"rope_parameters": {"rope_type": "linear", "rope_theta": 20000, "factor": 2}`},
			{`"rope_theta": 1e6`, `"rope_parameters": {"rope_type": "default", "rope_theta": 1000000}`},
			{`"rope_theta": 1e6, "rope_scaling": null`, `"rope_parameters": {"rope_theta": 1e6, "partial_rotary_factor": 1.0, "attention_factor": null}`},
		} {
			v4 := `{` + cfg + `, ` + rope.v4 + `, "torch_dtype": "bfloat16"}`
			want, err := ParseConfig("c.json", []byte(v4))
			if err != nil {
				t.Fatalf("%s 4.x form: %v", arch, err)
			}
			if want.RopeTheta == 10000 || want.DType != "bfloat16" {
				t.Fatalf("%s 4.x form parsed as theta %v dtype %q", arch, want.RopeTheta, want.DType)
			}
			nested := strings.Replace(rope.v5, `"rope_parameters": {`, `"rope_parameters": {"full_attention": {`, 1) + `}`
			for _, v5 := range []string{
				`{` + cfg + `, ` + rope.v5 + `, "dtype": "bfloat16"}`,
				`{` + cfg + `, ` + nested + `, "dtype": "bfloat16"}`,
				`{` + cfg + `, "layer_types": ["full_attention", "full_attention"], ` + nested + `, "dtype": "bfloat16"}`,
				`{` + cfg + `, ` + rope.v4 + `, ` + rope.v5 + `, "dtype": "bfloat16", "torch_dtype": "bfloat16"}`, // both forms, agreeing
			} {
				got, err := ParseConfig("c.json", []byte(v5))
				if err != nil {
					t.Errorf("%s: %s: %v", arch, v5, err)
					continue
				}
				got.Raw, want.Raw = nil, nil
				if !reflect.DeepEqual(got, want) {
					t.Errorf("%s: %s\nparsed as %+v (rope %v)\n4.x form %+v (rope %v)", arch, v5, got, got.Rope(), want, want.Rope())
				}
			}
		}
	}
	// Mistral's layers are sliding-window ones: a per-layer-type entry for
	// them (and a full_attention one that agrees).
	c, err := ParseConfig("c.json", []byte(`{`+ropeArchs["mistral"]+`, "rope_parameters": {"sliding_attention": {"rope_type": "llama3", "rope_theta": 1e6, `+llama3JSON+`},
		"full_attention": {"type": "llama3", "rope_theta": 1e6, `+llama3JSON+`}}}`))
	if err != nil || c.RopeTheta != 1e6 || c.RopeScaling == nil || c.RopeScaling.OriginalMaxPositions != 64 || c.SlidingWindow != 128 {
		t.Errorf("mistral per layer type: %+v, %v", c, err)
	}
}

// Keys that change the numerics and that the forward pass does not honour,
// and sources that disagree, are refused with the field named.
func TestRopeParametersRefusals(t *testing.T) {
	llama := ropeArchs["llama"]
	for _, tc := range []struct{ extra, field, msg string }{
		{`"rope_parameters": {"rope_type": "dynamic", "rope_theta": 10000, "factor": 2}`, "rope_parameters.rope_type", `unsupported rope scaling type "dynamic"`},
		{`"rope_parameters": {"rope_type": "yarn", "rope_theta": 10000, "factor": 4, "original_max_position_embeddings": 64}`, "rope_parameters.rope_type", `unsupported rope scaling type "yarn"`},
		{`"rope_parameters": {"type": "su", "rope_theta": 10000}`, "rope_parameters.type", `unsupported rope scaling type "su"`},
		{`"rope_parameters": {"rope_type": "llama3", "rope_theta": 10000, ` + llama3JSON + `, "mscale_all_dim": 1}`, "rope_parameters.mscale_all_dim", `not supported with rope_type "llama3"`},
		{`"rope_parameters": {"rope_type": "linear", "rope_theta": 10000, "factor": 2, "attention_factor": 1.5}`, "rope_parameters.attention_factor", "not supported"},
		{`"rope_parameters": {"rope_theta": 10000, "factor": 2}`, "rope_parameters.factor", `not supported with rope_type "default"`},
		{`"rope_scaling": {"rope_type": "linear", "factor": 2, "beta_fast": 32}`, "rope_scaling.beta_fast", "not supported"},
		{`"rope_parameters": {"rope_type": "default", "rope_theta": 10000, "partial_rotary_factor": 0.5}`, "rope_parameters.partial_rotary_factor", "partial rotary"},
		{`"partial_rotary_factor": 0.5`, "partial_rotary_factor", "partial rotary"},
		{`"rope_parameters": {"rope_type": "llama3", "rope_theta": 10000, "low_freq_factor": 1, "high_freq_factor": 4, "original_max_position_embeddings": 64}`, "rope_parameters.factor", `needs a positive "factor"`},
		{`"rope_parameters": {"rope_type": "llama3", "rope_theta": 10000, ` + llama3JSON + `, "low_freq_factor": 4}`, "rope_parameters.high_freq_factor", "must exceed"},
		{`"rope_parameters": {"rope_type": "linear", "rope_theta": -1, "factor": 2}`, "rope_parameters.rope_theta", "must be positive"},
		{`"rope_parameters": {"rope_type": "linear", "rope_theta": 10000, "factor": "2"}`, "rope_parameters.factor", "expected a number"},
		{`"rope_parameters": {"rope_type": "linear", "type": "llama3", "factor": 2}`, "rope_parameters.rope_type", `disagrees with rope_parameters.type "llama3"`},
		{`"rope_parameters": 10000`, "rope_parameters", "expected an object"},
		// Both forms, disagreeing.
		{`"rope_theta": 10000, "rope_parameters": {"rope_type": "default", "rope_theta": 500000}`, "rope_theta", "disagrees with rope_parameters.rope_theta = 500000"},
		{`"rope_scaling": {"rope_type": "linear", "factor": 2}, "rope_parameters": {"rope_type": "linear", "rope_theta": 10000, "factor": 4}`, "rope_scaling", "rope_scaling and rope_parameters disagree"},
		{`"rope_scaling": {"rope_type": "linear", "factor": 2}, "rope_parameters": {"rope_type": "default", "rope_theta": 10000}`, "rope_scaling", "rope_scaling and rope_parameters disagree (linear factor 2 vs no scaling)"},
		{`"dtype": "bfloat16", "torch_dtype": "float32"`, "dtype", `"bfloat16" disagrees with torch_dtype "float32"`},
		// Per layer type.
		{`"layer_types": ["sliding_attention", "full_attention"], "rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 1e6},
			"sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}`, "rope_parameters.full_attention.rope_theta", "disagrees with rope_parameters.sliding_attention.rope_theta"},
		{`"rope_parameters": {"full_attention": {"rope_type": "linear", "factor": 2}, "sliding_attention": {"rope_type": "default"}}`,
			"rope_parameters.full_attention", "a RoPE per layer type is not supported"},
		{`"layer_types": ["sliding_attention", "full_attention"], "rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 1e6}}`,
			"rope_parameters", `no entry for layer type "sliding_attention"`},
		{`"rope_parameters": {"chunked_attention": {"rope_type": "default", "rope_theta": 1e6}}`, "rope_parameters.chunked_attention", "not a layer type"},
		{`"layer_types": ["full_attention", "full_attention"], "rope_parameters": {"sliding_attention": {"rope_type": "default"}}`, "rope_parameters.sliding_attention", "none of the layer types"},
		{`"rope_parameters": {"full_attention": {"rope_type": "default"}, "rope_theta": 1e6}`, "rope_parameters.rope_theta", "plain setting beside per-layer-type objects"},
		{`"rope_parameters": {"full_attention": {"rope_type": "yarn", "factor": 4}}`, "rope_parameters.full_attention.rope_type", `unsupported rope scaling type "yarn"`},
		{`"rope_parameters": {"full_attention": {"rope_type": "default", "mscale": 1}}`, "rope_parameters.full_attention.mscale", "not supported"},
	} {
		_, err := ParseConfig("config.json", []byte(`{`+llama+`, `+tc.extra+`}`))
		var ce *ConfigError
		if err == nil || !asConfigError(err, &ce) || ce.Field != tc.field || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%s:\n error %v\n want a ConfigError on field %q saying %q", tc.extra, err, tc.field, tc.msg)
		}
	}
}

// ropeForm rewrites a config.json's RoPE and dtype keys into one form.
type ropeForm struct {
	name string
	edit func(cfg map[string]any, theta float64, layerType string, layers int)
}

func llama3Map() map[string]any {
	var m map[string]any
	if err := json.Unmarshal([]byte(`{"rope_type": "llama3", `+llama3JSON+`}`), &m); err != nil {
		panic(err)
	}
	return m
}

func clearRope(cfg map[string]any) {
	for _, k := range []string{"rope_theta", "rope_scaling", "rope_parameters", "torch_dtype", "dtype", "layer_types"} {
		delete(cfg, k)
	}
}

var (
	form4 = ropeForm{"4.x", func(cfg map[string]any, theta float64, _ string, _ int) {
		clearRope(cfg)
		cfg["rope_theta"], cfg["rope_scaling"], cfg["torch_dtype"] = theta, llama3Map(), "float32"
	}}
	form4Type = ropeForm{"4.x with type", func(cfg map[string]any, theta float64, _ string, _ int) {
		clearRope(cfg)
		s := llama3Map()
		s["type"] = s["rope_type"]
		delete(s, "rope_type")
		cfg["rope_theta"], cfg["rope_scaling"], cfg["torch_dtype"] = theta, s, "float32"
	}}
	form5 = ropeForm{"5.x", func(cfg map[string]any, theta float64, _ string, _ int) {
		clearRope(cfg)
		p := llama3Map()
		p["rope_theta"] = theta
		cfg["rope_parameters"], cfg["dtype"] = p, "float32"
	}}
	form5Layers = ropeForm{"5.x per layer type", func(cfg map[string]any, theta float64, layerType string, layers int) {
		clearRope(cfg)
		p := llama3Map()
		p["rope_theta"] = theta
		lt := make([]string, layers)
		for i := range lt {
			lt[i] = layerType
		}
		cfg["layer_types"], cfg["rope_parameters"], cfg["dtype"] = lt, map[string]any{layerType: p}, "float32"
	}}
	formPlain = ropeForm{"unscaled", func(cfg map[string]any, theta float64, _ string, _ int) {
		clearRope(cfg)
		cfg["rope_theta"] = theta
	}}
)

// variant writes a copy of checkpoint src whose config.json edit changes;
// the weight files are linked, not copied.
func variant(t testing.TB, src string, edit func(cfg map[string]any)) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(src, "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	if err := json.Unmarshal(data, &cfg); err != nil {
		t.Fatal(err)
	}
	edit(cfg)
	dir := t.TempDir()
	data, err = json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Name() == "config.json" || !strings.HasSuffix(e.Name(), ".safetensors") && !strings.HasSuffix(e.Name(), ".json") {
			continue
		}
		abs, err := filepath.Abs(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(abs, filepath.Join(dir, e.Name())); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// ropeCheckpoint is a checkpoint of one architecture to read in each form.
type ropeCheckpoint struct {
	arch, dir string
	theta     float64 // rope_theta written in every form
	layerType string  // its layers' type in a per-layer-type rope_parameters
	seqs      [][]int32
}

// ropeCheckpoints saves a small random model of every supported
// architecture, and names the stories260K fixture for Llama when present.
func ropeCheckpoints(t *testing.T) []ropeCheckpoint {
	t.Helper()
	k := kernels.Default()
	shape := SyntheticConfig{Hidden: 32, Intermediate: 48, Layers: 2, Heads: 4, KVHeads: 2, Vocab: 64, MaxPositions: 256}
	rng := rand.New(rand.NewPCG(21, 5))
	var seqs [][]int32
	for _, n := range []int{120, 70} { // past original_max_position_embeddings 64
		s := make([]int32, n)
		for i := range s {
			s[i] = int32(rng.IntN(shape.Vocab))
		}
		seqs = append(seqs, s)
	}
	save := func(m *Model, palu bool, edit func(cfg map[string]any)) string {
		dir := t.TempDir()
		var err error
		if palu {
			err = SavePalu(m, dir, safetensors.F32)
		} else {
			err = Save(m, dir, safetensors.F32)
		}
		if err != nil {
			t.Fatal(err)
		}
		if edit != nil {
			dir = variant(t, dir, edit)
		}
		return dir
	}
	synth := func(s SyntheticConfig) *Model {
		m, err := Synthetic(s, 11, k)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	var out []ropeCheckpoint
	// Mistral: the Llama weights under model_type mistral with a window.
	out = append(out, ropeCheckpoint{"mistral", save(synth(shape), false, func(cfg map[string]any) {
		cfg["model_type"], cfg["architectures"], cfg["sliding_window"] = "mistral", []string{"MistralForCausalLM"}, 48
	}), 20000, "sliding_attention", seqs})
	// Qwen2: biases on q, k and v.
	q := synth(shape)
	qc := *q.Config
	qc.Raw = maps(qc.Raw)
	qc.ModelType, qc.QKVBias = "qwen2", true
	qc.Raw["model_type"], qc.Raw["architectures"] = json.RawMessage(`"qwen2"`), json.RawMessage(`["Qwen2ForCausalLM"]`)
	q.Config = &qc
	for _, b := range q.Blocks {
		for _, mod := range []string{"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"} {
			d := (*b.Linear(mod)).(*Dense)
			d.Bias = make([]float32, d.out)
			for i := range d.Bias {
				d.Bias[i] = float32(0.2 * rng.NormFloat64())
			}
		}
	}
	out = append(out, ropeCheckpoint{"qwen2", save(q, false, nil), 20000, "full_attention", seqs})
	// DeepSeek-V3: latent attention.
	mlaShape := shape
	mlaShape.KVHeads, mlaShape.MLA = shape.Heads, &MLAConfig{LoraRank: 12, RopeDim: 8, NopeDim: 6, VDim: 10, LatentNorm: true}
	out = append(out, ropeCheckpoint{"deepseek_v3", save(synth(mlaShape), false, nil), 20000, "full_attention", seqs})
	// Palu's layout: k and v each one latent per KV head, at full rank.
	p := synth(shape)
	for _, b := range p.Blocks {
		for _, mod := range []string{"self_attn.k_proj", "self_attn.v_proj"} {
			d := (*b.Linear(mod)).(*Dense)
			ups := []*Dense{NewDense(8, 8, eye(8, 8, 0), nil), NewDense(8, 8, eye(8, 8, 0), nil)}
			g, err := NewGrouped(NewDense(16, 32, d.Weight, nil), ups, nil)
			if err != nil {
				t.Fatal(err)
			}
			*b.Linear(mod) = g
		}
	}
	out = append(out, ropeCheckpoint{"palullama", save(p, true, nil), 20000, "full_attention", seqs})
	out = append(out, ropeCheckpoint{"llama (synthetic)", save(synth(shape), false, nil), 20000, "full_attention", seqs})
	out = append(out, ropeCheckpoint{"llama (stories260K)", needFixture(t, "stories260K"), 10000, "full_attention",
		readJSONL(t, needFixture(t, "samples/eval.jsonl"), 2)})
	return out
}

// Every architecture gives the same logits under the 4.x and the 5.x form of
// a llama3-scaled RoPE config, and the scaling has a real effect.
func TestRopeFormsSameLogits(t *testing.T) {
	k := kernels.Default()
	for _, ck := range ropeCheckpoints(t) {
		logits := map[string][]float32{}
		for _, f := range []ropeForm{form4, form4Type, form5, form5Layers, formPlain} {
			dir := variant(t, ck.dir, func(cfg map[string]any) {
				f.edit(cfg, ck.theta, ck.layerType, int(cfg["num_hidden_layers"].(float64)))
			})
			m, err := Load(dir, k)
			if err != nil {
				t.Fatalf("%s, %s form: %v", ck.arch, f.name, err)
			}
			c := m.Config
			if c.RopeTheta != ck.theta || (f.name != "unscaled") != (c.RopeScaling != nil) {
				t.Errorf("%s, %s form: rope %v", ck.arch, f.name, c.Rope())
			}
			if c.PaluLayout != (ck.arch == "palullama") || (c.MLA != nil) != (ck.arch == "deepseek_v3") ||
				c.QKVBias != (ck.arch == "qwen2") || (c.SlidingWindow != 0) != (ck.arch == "mistral") {
				t.Errorf("%s, %s form: loaded as %+v", ck.arch, f.name, c)
			}
			logits[f.name], err = m.Forward(ck.seqs)
			if err != nil {
				t.Fatal(err)
			}
		}
		ref := logits[form4.name]
		effect := relErr(logits[formPlain.name], ref)
		t.Logf("%-20s llama3 scaling moves the logits by %.3g; relative error against the 4.x form: 4.x with type %.3g, 5.x %.3g, 5.x per layer type %.3g",
			ck.arch, effect, relErr(logits[form4Type.name], ref), relErr(logits[form5.name], ref), relErr(logits[form5Layers.name], ref))
		if !(effect > 1e-2) {
			t.Errorf("%s: llama3 scaling changed the logits by only %.3g: the test does not exercise it", ck.arch, effect)
		}
		for _, f := range []ropeForm{form4Type, form5, form5Layers} {
			if e := relErr(logits[f.name], ref); e != 0 {
				t.Errorf("%s: %s form logits differ from the 4.x form by %.3g", ck.arch, f.name, e)
			}
		}
	}
}

// The stories260K checkpoint in the 5.x form with the default rope gives the
// reference logits; with rope_theta 500000 inside rope_parameters it does
// not (the theta is read, not defaulted).
func TestRopeParametersReferenceLogits(t *testing.T) {
	ref := readF32(t, needFixture(t, "samples/eval_logits.f32"))
	seqs := readJSONL(t, needFixture(t, "samples/eval.jsonl"), 2)
	src := needFixture(t, "stories260K")
	for _, tc := range []struct {
		theta float64
		exact bool
	}{{10000, true}, {500000, false}} {
		dir := variant(t, src, func(cfg map[string]any) {
			clearRope(cfg)
			cfg["rope_parameters"], cfg["dtype"] = map[string]any{"rope_type": "default", "rope_theta": tc.theta}, "float32"
		})
		m, err := Load(dir, kernels.Default())
		if err != nil {
			t.Fatal(err)
		}
		logits, err := m.Forward(seqs)
		if err != nil {
			t.Fatal(err)
		}
		e := relErr(logits, ref)
		t.Logf("5.x form, rope_theta %g: relative error against the reference logits %.3g", tc.theta, e)
		if tc.exact != (e < refTolF32) {
			t.Errorf("rope_parameters.rope_theta %g: relative error %.3g against the reference (theta 10000)", tc.theta, e)
		}
	}
}

// A checkpoint in the 5.x form is exported in the 5.x form (rope_parameters
// unchanged, dtype rather than torch_dtype) by every save path, and reads
// back to the same settings and logits; a 4.x one stays in the 4.x form.
func TestRopeParametersExportRoundTrip(t *testing.T) {
	k := kernels.Default()
	for _, ck := range ropeCheckpoints(t) {
		for _, f := range []ropeForm{form5, form5Layers, form4} {
			src := variant(t, ck.dir, func(cfg map[string]any) {
				f.edit(cfg, ck.theta, ck.layerType, int(cfg["num_hidden_layers"].(float64)))
			})
			m, err := Load(src, k)
			if err != nil {
				t.Fatal(err)
			}
			want, err := m.Forward(ck.seqs)
			if err != nil {
				t.Fatal(err)
			}
			out := t.TempDir()
			if m.Config.PaluLayout {
				err = SavePalu(m, out, safetensors.F32)
			} else {
				err = Save(m, out, safetensors.F32)
			}
			if err != nil {
				t.Fatalf("%s, %s form: %v", ck.arch, f.name, err)
			}
			var srcCfg, outCfg map[string]any
			for _, x := range []struct {
				dir string
				cfg *map[string]any
			}{{src, &srcCfg}, {out, &outCfg}} {
				data, err := os.ReadFile(filepath.Join(x.dir, "config.json"))
				if err != nil {
					t.Fatal(err)
				}
				if err := json.Unmarshal(data, x.cfg); err != nil {
					t.Fatal(err)
				}
			}
			for _, key := range []string{"rope_theta", "rope_scaling", "rope_parameters", "layer_types", "dtype", "torch_dtype"} {
				s, inSrc := srcCfg[key]
				o, inOut := outCfg[key]
				if inSrc != inOut || !jsonEqual(s, o) {
					t.Errorf("%s, %s form: exported %q = %v (present %v), source %v (present %v)", ck.arch, f.name, key, o, inOut, s, inSrc)
				}
			}
			back, err := Load(out, k)
			if err != nil {
				t.Fatalf("%s, %s form: exported checkpoint: %v", ck.arch, f.name, err)
			}
			if !back.Config.Rope().Equal(m.Config.Rope()) || back.Config.DType != "float32" {
				t.Errorf("%s, %s form: read back as %v dtype %q, want %v", ck.arch, f.name, back.Config.Rope(), back.Config.DType, m.Config.Rope())
			}
			got, err := back.Forward(ck.seqs)
			if err != nil {
				t.Fatal(err)
			}
			if e := relErr(got, want); e != 0 {
				t.Errorf("%s, %s form: logits after export and load differ by %.3g", ck.arch, f.name, e)
			}
		}
	}
}

// An export whose config would not read back to the model's RoPE (settings
// changed in memory, not in Raw) is refused.
func TestExportRefusesRopeItCannotWrite(t *testing.T) {
	dir, m := saveTiny(t, tiny)
	m, err := Load(variant(t, dir, func(cfg map[string]any) { form5.edit(cfg, 20000, "", 0) }), m.Backend)
	if err != nil {
		t.Fatal(err)
	}
	c := *m.Config
	c.RopeScaling = &RopeScaling{Type: "linear", Factor: 2}
	m.Config = &c
	if err := Save(m, t.TempDir(), safetensors.F32); err == nil || !strings.Contains(err.Error(), "would read back as rope_theta 20000, llama3") {
		t.Errorf("save with RoPE settings unlike its config.json: %v", err)
	}
}
