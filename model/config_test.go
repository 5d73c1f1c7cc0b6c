package model

import (
	"math"
	"strings"
	"testing"
)

func contains(s, sub string) bool { return strings.Contains(s, sub) }

const base = `"hidden_size": 64, "intermediate_size": 172, "num_hidden_layers": 2, "num_attention_heads": 8,
	"num_key_value_heads": 4, "vocab_size": 512, "max_position_embeddings": 512`

func TestParseConfig(t *testing.T) {
	c, err := ParseConfig("c.json", []byte(`{"model_type": "qwen2", `+base+`, "rope_theta": 1e6}`))
	if err != nil {
		t.Fatal(err)
	}
	if c.HeadDim != 8 || !c.QKVBias || c.OBias || c.TieWordEmbeddings || c.RopeTheta != 1e6 || c.RMSNormEps != 1e-6 {
		t.Errorf("qwen2 config parsed as %+v", c)
	}
	c, err = ParseConfig("c.json", []byte(`{"model_type": "llama", `+base+`, "head_dim": 16, "attention_bias": true}`))
	if err != nil {
		t.Fatal(err)
	}
	if c.HeadDim != 16 || !c.QKVBias || !c.OBias {
		t.Errorf("explicit head_dim / attention_bias parsed as %+v", c)
	}
	c, err = ParseConfig("c.json", []byte(`{"model_type": "mistral", `+base+`, "sliding_window": 128}`))
	if err != nil || c.SlidingWindow != 128 {
		t.Errorf("mistral sliding window: %v, %v", c, err)
	}
}

func TestParseConfigErrors(t *testing.T) {
	for _, tc := range []struct{ json, want string }{
		{`{"model_type": "gpt2", ` + base + `}`, `c.json: field "model_type": unsupported model type "gpt2"`},
		{`{` + base + `}`, `field "model_type": missing`},
		{`{"model_type": "llama", "hidden_size": 64}`, `field "intermediate_size": missing`},
		{`{"model_type": "llama", ` + base + `, "hidden_act": "gelu"}`, `unsupported activation "gelu"`},
		{`{"model_type": "llama", ` + strings.Replace(base, `"num_key_value_heads": 4`, `"num_key_value_heads": 3`, 1) + `}`, `3 does not divide num_attention_heads 8`},
		{`{"model_type": "llama", ` + base + `, "rope_scaling": {"rope_type": "yarn", "factor": 4}}`, `unsupported rope scaling type "yarn"`},
		{`{"model_type": "llama", ` + base + `, "rope_scaling": {"rope_type": "linear"}}`, `needs a positive "factor"`},
		{`{"model_type": "llama", ` + strings.Replace(base, `"hidden_size": 64`, `"hidden_size": "64"`, 1) + `}`, `field "hidden_size": expected`},
		{`[1, 2]`, `c.json: not a JSON object`},
		{`{"model_type": "llama", ` + base + `, "rankzip": {"format": "native", "quantized": {"model.layers.0.mlp.up_proj": {"bits": 5, "groups": 1}}}}`, `5 bits (want 2, 3, 4 or 8)`},
		{`{"model_type": "llama", ` + base + `, "rankzip": {"format": "native", "quantized": {"model.layers.0.mlp.up_proj": {"bits": 4, "groups": 1}}, "ranks": {"model.layers.0.mlp.up_proj": 4}}}`, `needs one layout`},
		{`{"model_type": "palullama", ` + base + `}`, `field "head_wise_ranks"`},
	} {
		_, err := ParseConfig("c.json", []byte(tc.json))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseConfig(%s)\n error %v\n want it to contain %q", tc.json, err, tc.want)
		}
	}
}

func TestRopeScaling(t *testing.T) {
	c, err := ParseConfig("c.json", []byte(`{"model_type": "llama", `+base+`, "rope_theta": 500000,
		"rope_scaling": {"rope_type": "llama3", "factor": 8, "low_freq_factor": 1, "high_freq_factor": 4, "original_max_position_embeddings": 8192}}`))
	if err != nil {
		t.Fatal(err)
	}
	inv := c.InvFreq()
	plain := *c
	plain.RopeScaling = nil
	orig := plain.InvFreq()
	for i, f := range orig {
		wavelen := 2 * math.Pi / f
		var want float64
		switch {
		case wavelen < 8192/4.0: // high frequencies unchanged
			want = f
		case wavelen > 8192/1.0: // low frequencies divided by the factor
			want = f / 8
		default:
			s := (8192/wavelen - 1) / (4 - 1)
			want = (1-s)*f/8 + s*f
		}
		if math.Abs(inv[i]-want) > 1e-15*want {
			t.Errorf("llama3 inv_freq[%d] = %g, want %g", i, inv[i], want)
		}
	}
	if inv[0] != orig[0] || math.Abs(inv[len(inv)-1]-orig[len(inv)-1]/8) > 1e-20 {
		t.Errorf("llama3 scaling should keep the highest and divide the lowest frequency: %v vs %v", inv, orig)
	}
	c.RopeScaling = &RopeScaling{Type: "linear", Factor: 2}
	for i, f := range c.InvFreq() {
		if f != orig[i]/2 {
			t.Errorf("linear inv_freq[%d] = %g, want %g", i, f, orig[i]/2)
		}
	}
}
