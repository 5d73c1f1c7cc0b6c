package safetensors

import (
	"encoding/binary"
	"errors"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// fixtures is the repository's testdata seen from this package's directory.
const fixtures = "../../testdata"

// fixture returns the path of a file of testdata, failing the test when it
// is missing.
func fixture(t *testing.T, name string) string {
	t.Helper()
	path := filepath.Join(fixtures, name)
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("test data %s missing from the repository: %v", path, err)
	}
	return path
}

// u8 is a U8 tensor holding b.
func u8(name string, b ...byte) WriteTensor {
	return WriteTensor{Name: name, DType: U8, Shape: []int{len(b)}, Data: b}
}

// writeShards writes each shard's tensors to dir and an index built from
// weightMap (nil: from the shards themselves).
func writeShards(t *testing.T, dir string, shards map[string][]WriteTensor, weightMap map[string]string) {
	t.Helper()
	built := map[string]string{}
	for file, tensors := range shards {
		if err := WriteFile(filepath.Join(dir, file), tensors, map[string]string{"format": "pt"}); err != nil {
			t.Fatal(err)
		}
		for _, tt := range tensors {
			built[tt.Name] = file
		}
	}
	if weightMap == nil {
		weightMap = built
	}
	if err := WriteIndex(dir, weightMap, 123); err != nil {
		t.Fatal(err)
	}
}

func TestOpenDirSharded(t *testing.T) {
	dir := t.TempDir()
	writeShards(t, dir, map[string][]WriteTensor{
		"s-1.safetensors": {u8("a", 1, 2), u8("c", 3)},
		"s-2.safetensors": {u8("b", 4, 5, 6)},
	}, nil)
	c, err := OpenDir(dir)
	if err != nil {
		t.Fatalf("OpenDir: %v", err)
	}
	defer c.Close()
	if got, want := c.Names(), []string{"a", "b", "c"}; !slices.Equal(got, want) {
		t.Errorf("Names = %v, want %v", got, want)
	}
	wantFiles := []string{filepath.Join(dir, "s-1.safetensors"), filepath.Join(dir, "s-2.safetensors")}
	if got := c.Files(); !slices.Equal(got, wantFiles) {
		t.Errorf("Files = %v, want %v", got, wantFiles)
	}
	if got, ok := c.FileOf("b"); !ok || got != wantFiles[1] {
		t.Errorf("FileOf(b) = %q, %v", got, ok)
	}
	if b, err := c.Bytes("b"); err != nil || !slices.Equal(b, []byte{4, 5, 6}) {
		t.Errorf("Bytes(b) = %v, %v", b, err)
	}
	if info, ok := c.Info("c"); !ok || info.DType != U8 || !slices.Equal(info.Shape, []int{1}) {
		t.Errorf("Info(c) = %+v, %v", info, ok)
	}
	if _, err := c.Float32("a"); err == nil || !strings.Contains(err.Error(), "U8") {
		t.Errorf("Float32 of a U8 tensor: err = %v", err)
	}
	if _, err := c.Bytes("zz"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Bytes(zz): err = %v, want ErrNotFound", err)
	}
	// The index we wrote reads back as Hugging Face writes it.
	raw, err := os.ReadFile(filepath.Join(dir, IndexName))
	if err != nil {
		t.Fatal(err)
	}
	want := "{\n  \"metadata\": {\n    \"total_size\": 123\n  },\n  \"weight_map\": {\n    \"a\": \"s-1.safetensors\",\n" +
		"    \"b\": \"s-2.safetensors\",\n    \"c\": \"s-1.safetensors\"\n  }\n}\n"
	if string(raw) != want {
		t.Errorf("index file =\n%s\nwant\n%s", raw, want)
	}
}

func TestOpenDirSingle(t *testing.T) {
	dir := t.TempDir()
	if err := WriteFile(filepath.Join(dir, SingleName), []WriteTensor{u8("x", 9)}, nil); err != nil {
		t.Fatal(err)
	}
	c, err := OpenDir(dir)
	if err != nil {
		t.Fatalf("OpenDir: %v", err)
	}
	defer c.Close()
	if got := c.Names(); !slices.Equal(got, []string{"x"}) {
		t.Errorf("Names = %v", got)
	}
	if got := c.Files(); !slices.Equal(got, []string{filepath.Join(dir, SingleName)}) {
		t.Errorf("Files = %v", got)
	}
}

func TestOpenDirErrors(t *testing.T) {
	two := map[string][]WriteTensor{
		"s-1.safetensors": {u8("a", 1)},
		"s-2.safetensors": {u8("b", 2)},
	}
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, dir string)
		want  string
	}{
		{"empty directory", func(*testing.T, string) {}, "neither model.safetensors.index.json nor model.safetensors found"},
		{"index names a missing tensor", func(t *testing.T, dir string) {
			writeShards(t, dir, two, map[string]string{"a": "s-1.safetensors", "b": "s-2.safetensors", "ghost": "s-2.safetensors"})
		}, `model.safetensors.index.json: tensor "ghost": not in its shard s-2.safetensors`},
		{"shard has an unlisted tensor", func(t *testing.T, dir string) {
			writeShards(t, dir, map[string][]WriteTensor{
				"s-1.safetensors": {u8("a", 1), u8("c", 3)},
			}, map[string]string{"a": "s-1.safetensors"})
		}, `s-1.safetensors: tensor "c": not listed in model.safetensors.index.json`},
		{"shard tensor mapped elsewhere", func(t *testing.T, dir string) {
			writeShards(t, dir, map[string][]WriteTensor{
				"s-1.safetensors": {u8("a", 1), u8("b", 2)},
				"s-2.safetensors": {u8("c", 3)},
			}, map[string]string{"a": "s-1.safetensors", "b": "s-2.safetensors", "c": "s-2.safetensors"})
		}, `s-1.safetensors: tensor "b": model.safetensors.index.json puts it in s-2.safetensors`},
		{"tensor in two shards", func(t *testing.T, dir string) {
			writeShards(t, dir, map[string][]WriteTensor{
				"s-1.safetensors": {u8("a", 1)},
				"s-2.safetensors": {u8("a", 1), u8("b", 2)},
			}, map[string]string{"a": "s-1.safetensors", "b": "s-2.safetensors"})
		}, `s-2.safetensors: tensor "a": also in`},
		{"missing shard file", func(t *testing.T, dir string) {
			writeShards(t, dir, two, nil)
			os.Remove(filepath.Join(dir, "s-2.safetensors"))
		}, "s-2.safetensors: no such file"},
		{"corrupt shard", func(t *testing.T, dir string) {
			writeShards(t, dir, two, nil)
			os.WriteFile(filepath.Join(dir, "s-2.safetensors"), []byte("abc"), 0o644)
		}, "s-2.safetensors: file is 3 bytes"},
		{"shard outside the directory", func(t *testing.T, dir string) {
			os.WriteFile(filepath.Join(dir, IndexName), []byte(`{"weight_map": {"a": "../s-1.safetensors"}}`), 0o644)
		}, `tensor "a": shard "../s-1.safetensors" is not a file name`},
		{"invalid index JSON", func(t *testing.T, dir string) {
			os.WriteFile(filepath.Join(dir, IndexName), []byte(`{"weight_map": {"a": `), 0o644)
		}, IndexName + ": "},
		{"no weight_map", func(t *testing.T, dir string) {
			os.WriteFile(filepath.Join(dir, IndexName), []byte(`{"metadata": {"total_size": 1}}`), 0o644)
		}, "no weight_map"},
		{"weight_map value not a string", func(t *testing.T, dir string) {
			os.WriteFile(filepath.Join(dir, IndexName), []byte(`{"weight_map": {"a": 1}}`), 0o644)
		}, `weight_map: value of "a" is 1, want a string`},
		{"duplicate key in weight_map", func(t *testing.T, dir string) {
			os.WriteFile(filepath.Join(dir, IndexName), []byte(`{"weight_map": {"a": "x", "a": "y"}}`), 0o644)
		}, `duplicate key "a"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			tc.setup(t, dir)
			c, err := OpenDir(dir)
			if err == nil {
				c.Close()
				t.Fatal("OpenDir succeeded")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %q, want it to contain %q", err, tc.want)
			}
		})
	}
}

func TestWriteIndexRejects(t *testing.T) {
	dir := t.TempDir()
	for _, m := range []map[string]string{nil, {"a": "../x"}, {"a": "sub/x"}, {"a": ""}, {"": "x"}} {
		if err := WriteIndex(dir, m, 0); err == nil {
			t.Errorf("WriteIndex(%v): no error", m)
		}
	}
	if err := WriteIndex(dir, map[string]string{"a": "x"}, -1); err == nil {
		t.Error("WriteIndex with a negative size: no error")
	}
	if names := dirEntries(t, dir); len(names) != 0 {
		t.Errorf("rejected writes left %v", names)
	}
}

// The bf16 sharded fixture is the f32 fixture rounded to nearest even.
func TestFixtures(t *testing.T) {
	f32Path := fixture(t, "stories260K/model.safetensors")
	bf16Dir := fixture(t, "stories260K-bf16-sharded")

	ref, err := Open(f32Path)
	if err != nil {
		t.Fatal(err)
	}
	defer ref.Close()
	if got := ref.Metadata()["format"]; got != "pt" {
		t.Errorf("f32 fixture metadata format = %q, want pt", got)
	}
	c, err := OpenDir(bf16Dir)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if n := len(c.Files()); n != 2 {
		t.Errorf("bf16 checkpoint has %d files, want 2", n)
	}
	if single, err := OpenDir(filepath.Dir(f32Path)); err != nil {
		t.Errorf("OpenDir of the f32 fixture: %v", err)
	} else {
		if !slices.Equal(single.Names(), ref.Names()) {
			t.Error("OpenDir and Open of the f32 fixture list different tensors")
		}
		single.Close()
	}

	names := ref.Names()
	if !slices.Equal(names, c.Names()) {
		t.Fatalf("tensor names differ:\nf32:  %v\nbf16: %v", names, c.Names())
	}
	if len(names) == 0 || !slices.Contains(names, "model.embed_tokens.weight") {
		t.Fatalf("fixture lists %d tensors, without model.embed_tokens.weight", len(names))
	}
	var total int64
	for _, name := range names {
		ri, _ := ref.Info(name)
		bi, _ := c.Info(name)
		if ri.DType != F32 || bi.DType != BF16 {
			t.Errorf("%s: dtypes %s and %s, want F32 and BF16", name, ri.DType, bi.DType)
		}
		if !slices.Equal(ri.Shape, bi.Shape) {
			t.Errorf("%s: shapes %v and %v differ", name, ri.Shape, bi.Shape)
		}
		total += bi.Length
		want, err := ref.Float32(name)
		if err != nil {
			t.Fatal(err)
		}
		if len(want) != ri.NumElements() {
			t.Fatalf("%s: %d values for shape %v", name, len(want), ri.Shape)
		}
		raw, err := c.Bytes(name)
		if err != nil {
			t.Fatal(err)
		}
		got, err := c.Float32(name)
		if err != nil {
			t.Fatal(err)
		}
		mismatches := 0
		var diff2, ref2 float64
		for i, v := range want {
			bits := binary.LittleEndian.Uint16(raw[2*i:])
			if bits != Float32ToBF16(v) {
				if mismatches++; mismatches <= 3 {
					t.Errorf("%s[%d]: bf16 %#04x, Float32ToBF16(%g) = %#04x", name, i, bits, v, Float32ToBF16(v))
				}
			}
			d := float64(got[i]) - float64(v)
			diff2 += d * d
			ref2 += float64(v) * float64(v)
		}
		if mismatches > 0 {
			t.Errorf("%s: %d of %d values differ from round-to-nearest-even", name, mismatches, len(want))
		}
		if rel := math.Sqrt(diff2 / ref2); !(rel < 1e-2) {
			t.Errorf("%s: relative Frobenius error of bf16 %.3g, want < 1e-2", name, rel)
		}
	}
	if total != 520064 {
		t.Errorf("bf16 tensors hold %d bytes, the index says total_size 520064", total)
	}
}
