package model

import (
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/model/safetensors"
)

var tiny = SyntheticConfig{Hidden: 16, Intermediate: 24, Layers: 2, Heads: 4, KVHeads: 2, Vocab: 32, MaxPositions: 16, Tied: true}

// saveTiny writes a small synthetic checkpoint and returns its directory.
func saveTiny(t *testing.T, s SyntheticConfig) (string, *Model) {
	t.Helper()
	m, err := Synthetic(s, 7, kernels.Default())
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := Save(m, dir, safetensors.F32); err != nil {
		t.Fatal(err)
	}
	return dir, m
}

func TestSaveLoadRoundTrip(t *testing.T) {
	for _, s := range []SyntheticConfig{tiny, func() SyntheticConfig { u := tiny; u.Tied = false; return u }()} {
		dir, m := saveTiny(t, s)
		got, err := Load(dir, kernels.Default())
		if err != nil {
			t.Fatal(err)
		}
		seqs := [][]int32{{1, 2, 3, 4, 5}}
		a, _ := m.Forward(seqs)
		b, _ := got.Forward(seqs)
		if e := relErr(b, a); e != 0 {
			t.Errorf("tied=%v: logits after a float32 save and load differ by %.3g", s.Tied, e)
		}
		if got.Config.NumParams() != s.paramCount() {
			t.Errorf("tied=%v: NumParams %d, want %d", s.Tied, got.Config.NumParams(), s.paramCount())
		}
	}
}

func (s SyntheticConfig) paramCount() int64 {
	kv := s.Hidden / s.Heads * s.KVHeads
	block := 2*s.Hidden + 2*s.Hidden*s.Hidden + 2*s.Hidden*kv + 3*s.Hidden*s.Intermediate
	n := s.Vocab*s.Hidden + s.Hidden + s.Layers*block
	if !s.Tied {
		n += s.Vocab * s.Hidden
	}
	return int64(n)
}

// rewrite loads the tensors of dir, lets edit change them, and writes them back.
func rewrite(t *testing.T, dir string, edit func(ts map[string]safetensors.WriteTensor)) {
	t.Helper()
	ck, err := safetensors.OpenDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	ts := map[string]safetensors.WriteTensor{}
	for _, n := range ck.Names() {
		info, _ := ck.Info(n)
		b, _ := ck.Bytes(n)
		ts[n] = safetensors.WriteTensor{Name: n, DType: info.DType, Shape: info.Shape, Data: append([]byte(nil), b...)}
	}
	ck.Close()
	edit(ts)
	var list []safetensors.WriteTensor
	for _, w := range ts {
		list = append(list, w)
	}
	if err := safetensors.WriteFile(filepath.Join(dir, "model.safetensors"), list, nil); err != nil {
		t.Fatal(err)
	}
}

func editConfig(t *testing.T, dir string, key string, value any) {
	t.Helper()
	p := filepath.Join(dir, "config.json")
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	m[key] = value
	b, _ = json.Marshal(m)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestLoadBadCheckpoints(t *testing.T) {
	f32 := func(v ...float32) []byte { b, _ := safetensors.EncodeFloat32(v, safetensors.F32); return b }
	for _, tc := range []struct {
		name string
		edit func(t *testing.T, dir string)
		want string
	}{
		{"shape contradicts config", func(t *testing.T, dir string) { editConfig(t, dir, "intermediate_size", 20) },
			`tensor "model.layers.0.mlp.gate_proj.weight" has shape [24 16], config.json implies [20 16]`},
		{"more layers in config", func(t *testing.T, dir string) { editConfig(t, dir, "num_hidden_layers", 3) },
			`missing tensor "model.layers.2.input_layernorm.weight"`},
		{"fewer layers in config", func(t *testing.T, dir string) { editConfig(t, dir, "num_hidden_layers", 1) },
			`unexpected tensor "model.layers.1.`},
		{"unknown model type", func(t *testing.T, dir string) { editConfig(t, dir, "model_type", "falcon") },
			`config.json: field "model_type": unsupported model type "falcon"`},
		{"missing tensor", func(t *testing.T, dir string) {
			rewrite(t, dir, func(ts map[string]safetensors.WriteTensor) { delete(ts, "model.norm.weight") })
		}, `missing tensor "model.norm.weight"`},
		{"unexpected tensor", func(t *testing.T, dir string) {
			rewrite(t, dir, func(ts map[string]safetensors.WriteTensor) {
				ts["model.layers.0.self_attn.q_norm.weight"] = safetensors.WriteTensor{Name: "model.layers.0.self_attn.q_norm.weight", DType: safetensors.F32, Shape: []int{1}, Data: f32(1)}
			})
		}, `unexpected tensor "model.layers.0.self_attn.q_norm.weight"`},
		{"NaN weight", func(t *testing.T, dir string) {
			rewrite(t, dir, func(ts map[string]safetensors.WriteTensor) {
				w := ts["model.norm.weight"]
				w.Data = append(f32(float32(math.NaN())), w.Data[4:]...)
				ts["model.norm.weight"] = w
			})
		}, `tensor "model.norm.weight" holds a non-finite value`},
		{"integer dtype", func(t *testing.T, dir string) {
			rewrite(t, dir, func(ts map[string]safetensors.WriteTensor) {
				w := ts["model.norm.weight"]
				w.DType = safetensors.I32
				ts["model.norm.weight"] = w
			})
		}, `model.norm.weight`},
		{"untied lm_head differs", func(t *testing.T, dir string) {
			rewrite(t, dir, func(ts map[string]safetensors.WriteTensor) {
				e := ts["model.embed_tokens.weight"]
				d := append([]byte(nil), e.Data...)
				d[0] ^= 1
				ts["lm_head.weight"] = safetensors.WriteTensor{Name: "lm_head.weight", DType: e.DType, Shape: e.Shape, Data: d}
			})
		}, `"lm_head.weight" differs from model.embed_tokens.weight`},
		{"truncated file", func(t *testing.T, dir string) {
			p := filepath.Join(dir, "model.safetensors")
			st, _ := os.Stat(p)
			if err := os.Truncate(p, st.Size()-10); err != nil {
				t.Fatal(err)
			}
		}, `model.safetensors`},
		{"no weights", func(t *testing.T, dir string) { os.Remove(filepath.Join(dir, "model.safetensors")) }, dirMarker},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir, _ := saveTiny(t, tiny)
			tc.edit(t, dir)
			want := strings.ReplaceAll(tc.want, dirMarker, dir)
			_, err := Load(dir, kernels.Default())
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Fatalf("Load error %v\nwant it to contain %q", err, want)
			}
		})
	}
}

const dirMarker = "<dir>"

// TestReaderBlocksMatchLoad reads a bf16 checkpoint one block at a time,
// letting each block's mapped pages go, and checks every block against Load.
func TestReaderBlocksMatchLoad(t *testing.T) {
	m, err := Synthetic(tiny, 7, kernels.Default())
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := Save(m, dir, safetensors.BF16); err != nil {
		t.Fatal(err)
	}
	whole, err := Load(dir, kernels.Default())
	if err != nil {
		t.Fatal(err)
	}
	r, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for l := range r.Config.NumLayers {
		for range 2 { // a second read comes back from the file after Release
			b, err := r.Block(l)
			if err != nil {
				t.Fatal(err)
			}
			for _, mod := range Modules {
				got, want := (*b.Linear(mod)).(*Dense).Weight, (*whole.Blocks[l].Linear(mod)).(*Dense).Weight
				if e := relErr(got, want); e != 0 {
					t.Errorf("block %d %s: relative error %.3g against Load, want 0", l, mod, e)
				}
			}
		}
	}
	if _, err := r.Block(r.Config.NumLayers); err == nil || !strings.Contains(err.Error(), "block 2 of a model with 2") {
		t.Errorf("Block past the last: error %v, want one naming the block", err)
	}
}
