package model

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/model/safetensors"
)

// A Qwen2-style model (q/k/v biases) with Grouped k and v projections is
// written in Palu's layout, biases split per group (U.{j}.bias), and read
// back with the same logits.
func TestPaluLayoutWithBiases(t *testing.T) {
	k := kernels.Default()
	m, err := Synthetic(SyntheticConfig{Hidden: 32, Intermediate: 48, Layers: 2, Heads: 4, KVHeads: 2, Vocab: 64, MaxPositions: 64}, 3, k)
	if err != nil {
		t.Fatal(err)
	}
	c := *m.Config
	c.Raw = maps(c.Raw)
	c.ModelType, c.QKVBias = "qwen2", true
	c.Raw["model_type"] = json.RawMessage(`"qwen2"`)
	m.Config = &c
	for l, b := range m.Blocks {
		for _, mod := range []string{"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"} {
			d := (*b.Linear(mod)).(*Dense)
			d.Bias = make([]float32, d.out)
			for i := range d.Bias {
				d.Bias[i] = float32((i*7+l*3)%11)/10 - 0.5
			}
		}
		// Each KV head its own group, at full rank: down = W, ups = identity.
		for _, mod := range []string{"self_attn.k_proj", "self_attn.v_proj"} {
			d := (*b.Linear(mod)).(*Dense)
			ups := []*Dense{NewDense(8, 8, eye(8, 8, 0), nil), NewDense(8, 8, eye(8, 8, 0), nil)}
			g, err := NewGrouped(NewDense(16, 32, d.Weight, nil), ups, d.Bias)
			if err != nil {
				t.Fatal(err)
			}
			*b.Linear(mod) = g
		}
	}
	seqs := [][]int32{{1, 5, 9, 3, 7, 2}, {4, 4, 8}}
	want, err := m.Forward(seqs)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := SavePalu(m, dir, safetensors.F32); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(dir, "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(raw), `"paluqwen2"`) || !strings.Contains(string(raw), `"PaluQwenForCausalLM"`) || !strings.Contains(string(raw), `"head_wise_ranks"`) {
		t.Errorf("config.json:\n%s", raw)
	}
	ck, err := safetensors.OpenDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	names := ck.Names()
	ck.Close()
	for _, n := range []string{"model.layers.1.self_attn.v_proj.U.1.bias", "model.layers.0.self_attn.k_proj.VT.weight", "model.layers.0.self_attn.q_proj.bias"} {
		if !slices.Contains(names, n) {
			t.Errorf("no tensor %s", n)
		}
	}
	back, err := Load(dir, k)
	if err != nil {
		t.Fatal(err)
	}
	got, err := back.Forward(seqs)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, want) {
		t.Errorf("Palu layout with biases: logits differ after save and load")
	}
}

// eye is the rows×cols matrix selecting columns off..off+rows-1.
func eye(rows, cols, off int) []float32 {
	v := make([]float32, rows*cols)
	for i := range rows {
		v[i*cols+off+i] = 1
	}
	return v
}

func maps(m map[string]json.RawMessage) map[string]json.RawMessage {
	out := make(map[string]json.RawMessage, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}
