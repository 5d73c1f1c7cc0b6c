package gptq_test

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/rankzip/rankzip/methods/quant"
	"github.com/rankzip/rankzip/model"
	"github.com/rankzip/rankzip/model/gptq"
	"github.com/rankzip/rankzip/model/safetensors"
)

// Open reads a GPTQ checkpoint one block at a time into what Load reads
// whole (the same logits, bit for bit), and refuses a stray tensor: one
// outside the layers when opening, one inside a layer when reading it.
func TestOpenReadsBlocksAsLoad(t *testing.T) {
	m := synthetic(t)
	q := rtnModel(t, m, quant.Config{Bits: 4, GroupSize: 32})
	qc, err := gptq.NewQuantizeConfig(4, 32, false, false)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := gptq.Export(q, dir, safetensors.F32, qc); err != nil {
		t.Fatal(err)
	}
	whole, err := gptq.Load(dir, m.Backend)
	if err != nil {
		t.Fatal(err)
	}
	r, err := gptq.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	top, err := r.Model(m.Backend)
	if err != nil {
		t.Fatal(err)
	}
	for l := range r.Config.NumLayers {
		b, err := r.Block(l)
		if err != nil {
			t.Fatal(err)
		}
		top.Blocks = append(top.Blocks, b)
	}
	if _, err := r.Block(r.Config.NumLayers); err == nil {
		t.Error("read a block past the last")
	}
	r.Close()
	seqs, err := model.Sample(m, 2, 16, 1, 3)
	if err != nil {
		t.Fatal(err)
	}
	want, err := whole.Forward(seqs)
	if err != nil {
		t.Fatal(err)
	}
	got, err := top.Forward(seqs)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, want) {
		t.Errorf("logits of the blocks read one at a time differ from Load's by %.3g", relErr(got, want))
	}

	for _, stray := range []string{"model.layers.1.mlp.extra.weight", "model.extra.weight", "model.layers.2.mlp.up_proj.weight"} {
		d := withTensor(t, dir, stray)
		r, err := gptq.Open(d)
		if err == nil {
			_, err = r.Block(1)
			r.Close()
		}
		if err == nil || !strings.Contains(err.Error(), "unexpected tensor \""+stray+"\"") {
			t.Errorf("stray tensor %s: %v", stray, err)
		}
		if _, err := gptq.Load(d, m.Backend); err == nil {
			t.Errorf("Load accepted the stray tensor %s", stray)
		}
	}
}

// withTensor copies the GPTQ checkpoint in dir to a new directory with one
// more (float32, 1-element) tensor named name.
func withTensor(t *testing.T, dir, name string) string {
	t.Helper()
	f, err := safetensors.Open(filepath.Join(dir, "model.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tensors := []safetensors.WriteTensor{{Name: name, DType: safetensors.F32, Shape: []int{1}, Data: make([]byte, 4)}}
	for _, n := range f.Names() {
		info, _ := f.Info(n)
		b, err := f.Bytes(n)
		if err != nil {
			t.Fatal(err)
		}
		tensors = append(tensors, safetensors.WriteTensor{Name: n, DType: info.DType, Shape: info.Shape, Data: slices.Clone(b)})
	}
	out := t.TempDir()
	if err := safetensors.WriteFile(filepath.Join(out, "model.safetensors"), tensors, nil); err != nil {
		t.Fatal(err)
	}
	for _, c := range []string{"config.json", "quantize_config.json"} {
		copyFile(t, filepath.Join(dir, c), filepath.Join(out, c))
	}
	return out
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o644); err != nil {
		t.Fatal(err)
	}
}
