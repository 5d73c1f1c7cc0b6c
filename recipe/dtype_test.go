package recipe

import (
	"testing"

	"github.com/rankzip/rankzip/model"
)

// The default export dtype is the model's, in either config form: 4.x's
// torch_dtype or transformers 5's dtype.
func TestDefaultDType(t *testing.T) {
	base := `"model_type": "llama", "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1,
		"num_attention_heads": 2, "vocab_size": 10, "max_position_embeddings": 16`
	for _, c := range []struct{ keys, want string }{
		{`"torch_dtype": "bfloat16"`, "bfloat16"},
		{`"dtype": "bfloat16"`, "bfloat16"},                         // transformers 5
		{`"dtype": "float16", "torch_dtype": "float16"`, "float16"}, // both, agreeing
		{`"dtype": "float32"`, "float32"},
		{`"dtype": "int8"`, "float32"}, // not an export dtype
		{``, "float32"},
	} {
		keys := base
		if c.keys != "" {
			keys += ", " + c.keys
		}
		cfg, err := model.ParseConfig("config.json", []byte("{"+keys+"}"))
		if err != nil {
			t.Fatalf("%s: %v", c.keys, err)
		}
		if got := defaultDType(cfg); got != c.want {
			t.Errorf("%s: default export dtype %q, want %q", c.keys, got, c.want)
		}
	}
	if got := defaultDType(nil); got != "float32" {
		t.Errorf("no model: %q", got)
	}
}
