package safetensors

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// rawFile assembles a safetensors file from a header string and data.
func rawFile(hdr string, data []byte) []byte {
	b := binary.LittleEndian.AppendUint64(nil, uint64(len(hdr)))
	b = append(b, hdr...)
	return append(b, data...)
}

// writeTemp writes b to a new file in a test directory and returns its path.
func writeTemp(t testing.TB, b []byte) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "model.safetensors")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func mustOpen(t *testing.T, path string) *File {
	t.Helper()
	f, err := Open(path)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func TestWriteOpenRoundTrip(t *testing.T) {
	vals := []float32{1, 1.00390625, 1.01171875, -2.5, 65504, 65520, 6e-8, 2e-8, 0.1, float32(math.Inf(-1))}
	type want struct {
		bits []uint32 // expected raw elements, little-endian, of the dtype's width
		vals []float32
	}
	cases := map[DType]want{
		F32: {
			bits: []uint32{0x3f800000, 0x3f808000, 0x3f818000, 0xc0200000, 0x477fe000, 0x477ff000, 0x3380d959, 0x32abcc77, 0x3dcccccd, 0xff800000},
			vals: vals,
		},
		BF16: {
			bits: []uint32{0x3f80, 0x3f80, 0x3f82, 0xc020, 0x4780, 0x4780, 0x3381, 0x32ac, 0x3dcd, 0xff80},
			vals: []float32{1, 1, 1.015625, -2.5, 65536, 65536, f32(0x33810000), f32(0x32ac0000), f32(0x3dcd0000), float32(math.Inf(-1))},
		},
		F16: {
			bits: []uint32{0x3c00, 0x3c04, 0x3c0c, 0xc100, 0x7bff, 0x7c00, 0x0001, 0x0000, 0x2e66, 0xfc00},
			vals: []float32{1, 1.00390625, 1.01171875, -2.5, 65504, float32(math.Inf(1)), f32(0x33800000), 0, f32(0x3dccc000), float32(math.Inf(-1))},
		},
	}
	var tensors []WriteTensor
	for dt := range cases {
		data, err := EncodeFloat32(vals, dt)
		if err != nil {
			t.Fatal(err)
		}
		tensors = append(tensors, WriteTensor{Name: "w." + string(dt), DType: dt, Shape: []int{2, 5}, Data: data})
	}
	// A streamed tensor, a scalar and an empty one.
	stream := make([]byte, 3*4)
	for i := range 3 {
		binary.LittleEndian.PutUint32(stream[4*i:], uint32(i+1))
	}
	tensors = append(tensors,
		WriteTensor{Name: "stream", DType: I32, Shape: []int{3}, Fill: func(w io.Writer) error {
			for i := 0; i < len(stream); i += 4 { // in small pieces
				if _, err := w.Write(stream[i : i+4]); err != nil {
					return err
				}
			}
			return nil
		}},
		WriteTensor{Name: "scalar", DType: U8, Data: []byte{7}},
		WriteTensor{Name: "empty", DType: F32, Shape: []int{0, 3}},
	)
	path := filepath.Join(t.TempDir(), "rt.safetensors")
	meta := map[string]string{"format": "pt", "note": `quotes " and <html>`}
	if err := WriteFile(path, tensors, meta); err != nil {
		t.Fatalf("WriteFile: %v", err)
	}
	f := mustOpen(t, path)

	wantNames := []string{"empty", "scalar", "stream", "w.BF16", "w.F16", "w.F32"}
	if got := f.Names(); !slices.Equal(got, wantNames) {
		t.Errorf("Names = %v, want %v", got, wantNames)
	}
	if got := f.Metadata(); len(got) != 2 || got["format"] != "pt" || got["note"] != meta["note"] {
		t.Errorf("Metadata = %v, want %v", got, meta)
	}
	for dt, w := range cases {
		name := "w." + string(dt)
		info, ok := f.Info(name)
		if !ok {
			t.Fatalf("Info(%q): missing", name)
		}
		if info.Name != name || info.DType != dt || !slices.Equal(info.Shape, []int{2, 5}) || info.Length != int64(10*dt.Size()) {
			t.Errorf("Info(%q) = %+v", name, info)
		}
		raw, err := f.Bytes(name)
		if err != nil {
			t.Fatalf("Bytes(%q): %v", name, err)
		}
		for i, bits := range w.bits {
			var got uint32
			if dt.Size() == 4 {
				got = binary.LittleEndian.Uint32(raw[4*i:])
			} else {
				got = uint32(binary.LittleEndian.Uint16(raw[2*i:]))
			}
			if got != bits {
				t.Errorf("%s element %d (%g) = %#x, want %#x", dt, i, vals[i], got, bits)
			}
		}
		got, err := f.Float32(name)
		if err != nil {
			t.Fatalf("Float32(%q): %v", name, err)
		}
		if !slices.Equal(got, w.vals) {
			t.Errorf("Float32(%q) = %v, want %v", name, got, w.vals)
		}
	}
	if raw, err := f.Bytes("stream"); err != nil || !bytes.Equal(raw, stream) {
		t.Errorf("Bytes(stream) = % x, %v; want % x", raw, err, stream)
	}
	if info, _ := f.Info("scalar"); len(info.Shape) != 0 || info.NumElements() != 1 || info.Length != 1 {
		t.Errorf("Info(scalar) = %+v", info)
	}
	if raw, _ := f.Bytes("scalar"); !bytes.Equal(raw, []byte{7}) {
		t.Errorf("Bytes(scalar) = % x", raw)
	}
	if v, err := f.Float32("empty"); err != nil || len(v) != 0 {
		t.Errorf("Float32(empty) = %v, %v", v, err)
	}

	// Layout: header padded to 8, tensors contiguous in name order, file ends at the last one.
	file, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	n := binary.LittleEndian.Uint64(file)
	if n%8 != 0 {
		t.Errorf("header length %d is not a multiple of 8", n)
	}
	next := int64(8 + n)
	for _, name := range wantNames {
		info, _ := f.Info(name)
		if info.Offset != next {
			t.Errorf("%s at offset %d, want %d (contiguous)", name, info.Offset, next)
		}
		next += info.Length
	}
	if next != int64(len(file)) {
		t.Errorf("file is %d bytes, tensors end at %d", len(file), next)
	}

	// Same input, same bytes.
	path2 := filepath.Join(t.TempDir(), "rt.safetensors")
	if err := WriteFile(path2, tensors, meta); err != nil {
		t.Fatal(err)
	}
	if file2, _ := os.ReadFile(path2); !bytes.Equal(file, file2) {
		t.Error("writing the same tensors twice gave different bytes")
	}

	// Accessor errors.
	if _, err := f.Float32("stream"); err == nil || !strings.Contains(err.Error(), "I32") || !strings.Contains(err.Error(), `"stream"`) {
		t.Errorf("Float32 of an I32 tensor: err = %v, want one naming the tensor and I32", err)
	}
	if _, err := f.Bytes("nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Bytes(nope): err = %v, want ErrNotFound", err)
	}
	if _, ok := f.Info("nope"); ok {
		t.Error("Info(nope) reports a tensor")
	}
	// Returned descriptions are copies.
	info, _ := f.Info("w.F32")
	info.Shape[0] = 99
	if again, _ := f.Info("w.F32"); again.Shape[0] != 2 {
		t.Error("modifying an Info shape changed the file's")
	}
	if err := f.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if err := f.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := f.Bytes("w.F32"); err == nil {
		t.Error("Bytes after Close: no error")
	}
}

// An F32 tensor whose data is not 4-byte aligned in the file decodes correctly.
func TestUnalignedData(t *testing.T) {
	vals := []float32{1.5, -3.25}
	data := []byte{0xaa}
	enc, _ := EncodeFloat32(vals, F32)
	data = append(data, enc...)
	hdr := `{"pad":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"x":{"dtype":"F32","shape":[2],"data_offsets":[1,9]}}`
	f := mustOpen(t, writeTemp(t, rawFile(hdr, data)))
	info, _ := f.Info("x")
	if info.Offset%4 == 0 {
		t.Fatalf("test setup: offset %d is aligned", info.Offset)
	}
	got, err := f.Float32("x")
	if err != nil || !slices.Equal(got, vals) {
		t.Errorf("Float32(x) = %v, %v; want %v", got, err, vals)
	}
}

// corruptCases are files that Open must reject with a FormatError whose
// message contains want.
func corruptCases() []struct {
	name string
	file []byte
	want string
} {
	good := `{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"BF16","shape":[2],"data_offsets":[8,12]}}`
	data := make([]byte, 12)
	valid := rawFile(good, data)
	hugeLen := binary.LittleEndian.AppendUint64(nil, 1<<40)
	tooLong := binary.LittleEndian.AppendUint64(nil, 1000)
	tooLong = append(tooLong, "{}"...)
	entry := func(s string) []byte { return rawFile(`{"t":`+s+`}`, data) }
	return []struct {
		name string
		file []byte
		want string
	}{
		{"empty file", nil, "shorter than the 8-byte header length"},
		{"cut at 4 bytes", valid[:4], "shorter than the 8-byte header length"},
		{"cut in the header", valid[:8+len(good)/2], "past end of file"},
		{"cut in the data", valid[:len(valid)-3], `tensor "b": data_offsets [8 12] end past data section (9 bytes)`},
		{"header length larger than file", tooLong, "header length 1000 past end of file (2 bytes after the length)"},
		{"header length over the cap", append(hugeLen, "{}"...), "exceeds the 104857600-byte limit"},
		{"empty header", rawFile("", nil), "not a JSON object"},
		{"invalid JSON", rawFile(`{"a": {"dtype": "F32",`, data), "header:"},
		{"not an object", rawFile(`[1, 2]`, nil), "not a JSON object"},
		{"trailing data", rawFile(`{} {}`, nil), "after the object"},
		{"trailing garbage", rawFile(`{}x`, nil), "after the object"},
		{"invalid UTF-8", rawFile("{\"\xff\":1}", nil), "not valid UTF-8"},
		{"duplicate tensor", rawFile(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}`, data), `duplicate key "a"`},
		{"empty name", rawFile(`{"":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}`, data), "empty name"},
		{"entry not an object", entry(`5`), `tensor "t": not a JSON object: 5`},
		{"unknown dtype", entry(`{"dtype":"F33","shape":[2],"data_offsets":[0,8]}`), `tensor "t": unknown dtype "F33"`},
		{"lowercase dtype", entry(`{"dtype":"f32","shape":[2],"data_offsets":[0,8]}`), `unknown dtype "f32"`},
		{"dtype not a string", entry(`{"dtype":4,"shape":[2],"data_offsets":[0,8]}`), `tensor "t": dtype is 4, want a string`},
		{"unknown field", entry(`{"dtype":"F32","shape":[2],"data_offsets":[0,8],"extra":1}`), `unknown field "extra"`},
		{"field in other case", entry(`{"DTYPE":"F32","shape":[2],"data_offsets":[0,8]}`), `unknown field "DTYPE"`},
		{"duplicate field", entry(`{"dtype":"F32","dtype":"F16","shape":[2],"data_offsets":[0,8]}`), `duplicate key "dtype"`},
		{"missing dtype", entry(`{"shape":[2],"data_offsets":[0,8]}`), "missing dtype"},
		{"missing shape", entry(`{"dtype":"F32","data_offsets":[0,8]}`), "missing shape"},
		{"null shape", entry(`{"dtype":"F32","shape":null,"data_offsets":[0,8]}`), "missing shape"},
		{"missing offsets", entry(`{"dtype":"F32","shape":[2]}`), "missing data_offsets"},
		{"negative dimension", entry(`{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}`), "dimension 0 is -2"},
		{"fractional dimension", entry(`{"dtype":"F32","shape":[1.5],"data_offsets":[0,8]}`), `shape is [1.5], want an array of integers`},
		{"shape overflows", entry(`{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,8]}`), "too large"},
		{"shape times size overflows", entry(`{"dtype":"F64","shape":[4611686018427387904],"data_offsets":[0,8]}`), "too large"},
		{"three offsets", entry(`{"dtype":"F32","shape":[2],"data_offsets":[0,8,12]}`), "want [begin, end]"},
		{"negative offset", entry(`{"dtype":"F32","shape":[2],"data_offsets":[-4,4]}`), "want 0 <= begin <= end"},
		{"begin after end", entry(`{"dtype":"F32","shape":[0],"data_offsets":[8,4]}`), "want 0 <= begin <= end"},
		{"offsets past the end", entry(`{"dtype":"F32","shape":[4],"data_offsets":[0,16]}`), "data_offsets [0 16] end past data section (12 bytes)"},
		{"length not shape times size", entry(`{"dtype":"F32","shape":[2],"data_offsets":[0,12]}`), "hold 12 bytes, want 8 for F32 shape [2]"},
		{"overlapping tensors", rawFile(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}`, data), `tensor "b": data_offsets [4 8] overlap tensor "a" at [0 8]`},
		{"identical ranges", rawFile(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]},"b":{"dtype":"I32","shape":[1],"data_offsets":[4,8]}}`, data), `overlap tensor "a"`},
		{"metadata value not a string", rawFile(`{"__metadata__":{"format":1}}`, nil), `__metadata__: value of "format" is 1, want a string`},
		{"metadata null value", rawFile(`{"__metadata__":{"format":null}}`, nil), `want a string`},
		{"metadata not an object", rawFile(`{"__metadata__":"pt"}`, nil), `__metadata__: not a JSON object: "pt"`},
		{"metadata nested", rawFile(`{"__metadata__":{"a":{"b":"c"}}}`, nil), `value of "a"`},
	}
}

func TestOpenCorrupt(t *testing.T) {
	for _, tc := range corruptCases() {
		t.Run(tc.name, func(t *testing.T) {
			path := writeTemp(t, tc.file)
			f, err := Open(path)
			if err == nil {
				f.Close()
				t.Fatal("Open succeeded")
			}
			var fe *FormatError
			if !errors.As(err, &fe) {
				t.Fatalf("err = %v (%T), want a *FormatError", err, err)
			}
			if fe.Path != path || !strings.HasPrefix(err.Error(), path+": ") {
				t.Errorf("err = %q does not start with the path %s", err, path)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %q, want it to contain %q", err, tc.want)
			}
		})
	}
}

func TestOpenAccepts(t *testing.T) {
	data := make([]byte, 16)
	for _, tc := range []struct{ name, hdr string }{
		{"no tensors", `{}`},
		{"space padding", `{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}       `},
		{"gap and trailing bytes", `{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"b":{"dtype":"U8","shape":[1],"data_offsets":[5,6]}}`},
		{"empty tensors sharing an offset", `{"a":{"dtype":"F32","shape":[0],"data_offsets":[4,4]},"b":{"dtype":"F32","shape":[2,0],"data_offsets":[4,4]}}`},
		{"empty metadata", `{"__metadata__":{}}`},
		{"fp8 and friends", `{"a":{"dtype":"F8_E4M3","shape":[2],"data_offsets":[0,2]},"b":{"dtype":"BOOL","shape":[2],"data_offsets":[2,4]},"c":{"dtype":"U64","shape":[1],"data_offsets":[8,16]}}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := Open(writeTemp(t, rawFile(tc.hdr, data)))
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			for _, name := range f.Names() {
				info, _ := f.Info(name)
				if b, err := f.Bytes(name); err != nil || int64(len(b)) != info.Length {
					t.Errorf("Bytes(%q) = %d bytes, %v; want %d", name, len(b), err, info.Length)
				}
			}
			f.Close()
		})
	}
}

func TestOpenNotRegular(t *testing.T) {
	if _, err := Open(t.TempDir()); err == nil {
		t.Error("Open of a directory: no error")
	}
	if _, err := Open(filepath.Join(t.TempDir(), "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Open of a missing file: err = %v, want ErrNotExist", err)
	}
}

// dirEntries lists the names in dir.
func dirEntries(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

func TestWriteFileFailureKeepsOldFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "model.safetensors")
	old := []byte("the old file")
	if err := os.WriteFile(path, old, 0o644); err != nil {
		t.Fatal(err)
	}
	good := WriteTensor{Name: "a", DType: F32, Shape: []int{2}, Data: make([]byte, 8)}
	boom := errors.New("boom")
	for _, tc := range []struct {
		name   string
		tensor WriteTensor
		want   string
	}{
		{"Fill fails", WriteTensor{Name: "b", DType: U8, Shape: []int{4}, Fill: func(w io.Writer) error {
			w.Write([]byte{1, 2})
			return boom
		}}, "boom"},
		{"Fill writes too little", WriteTensor{Name: "b", DType: U8, Shape: []int{4}, Fill: func(w io.Writer) error {
			_, err := w.Write([]byte{1, 2, 3})
			return err
		}}, `tensor "b": Fill wrote 3 of the declared 4 bytes`},
		{"Fill writes too much", WriteTensor{Name: "b", DType: U8, Shape: []int{4}, Fill: func(w io.Writer) error {
			w.Write([]byte{1, 2, 3, 4, 5}) // error ignored on purpose
			return nil
		}}, `tensor "b": Fill wrote more than the declared 4 bytes`},
		{"Data of the wrong length", WriteTensor{Name: "b", DType: F16, Shape: []int{3}, Data: make([]byte, 4)}, "Data has 4 bytes, want 6"},
		{"both Data and Fill", WriteTensor{Name: "b", DType: U8, Shape: []int{1}, Data: []byte{1}, Fill: func(io.Writer) error { return nil }}, "both Data and Fill"},
		{"unknown dtype", WriteTensor{Name: "b", DType: "F33", Shape: []int{1}, Data: []byte{1}}, `unknown dtype "F33"`},
		{"negative dimension", WriteTensor{Name: "b", DType: U8, Shape: []int{-1}}, "negative dimension"},
		{"duplicate name", WriteTensor{Name: "a", DType: U8, Shape: []int{1}, Data: []byte{1}}, `tensor "a": listed twice`},
		{"reserved name", WriteTensor{Name: "__metadata__", DType: U8, Shape: []int{1}, Data: []byte{1}}, "invalid tensor name"},
		{"empty name", WriteTensor{DType: U8, Shape: []int{1}, Data: []byte{1}}, "invalid tensor name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := WriteFile(path, []WriteTensor{good, tc.tensor}, nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), path) {
				t.Fatalf("err = %v, want one naming %s and containing %q", err, path, tc.want)
			}
			if got, _ := os.ReadFile(path); !bytes.Equal(got, old) {
				t.Errorf("the old file changed to %q", got)
			}
			if names := dirEntries(t, dir); !slices.Equal(names, []string{"model.safetensors"}) {
				t.Errorf("directory holds %v, want only model.safetensors", names)
			}
		})
	}

	// A panicking Fill leaves no temporary file either.
	func() {
		defer func() {
			if recover() == nil {
				t.Error("the Fill panic did not propagate")
			}
		}()
		WriteFile(path, []WriteTensor{{Name: "p", DType: U8, Shape: []int{1}, Fill: func(io.Writer) error { panic("fill") }}}, nil)
	}()
	if names := dirEntries(t, dir); !slices.Equal(names, []string{"model.safetensors"}) {
		t.Errorf("after a panic the directory holds %v", names)
	}

	// A successful write replaces the file.
	if err := WriteFile(path, []WriteTensor{good}, nil); err != nil {
		t.Fatal(err)
	}
	f := mustOpen(t, path)
	if names := f.Names(); !slices.Equal(names, []string{"a"}) {
		t.Errorf("Names = %v", names)
	}
	if names := dirEntries(t, dir); !slices.Equal(names, []string{"model.safetensors"}) {
		t.Errorf("after success the directory holds %v", names)
	}
	if st, err := os.Stat(path); err != nil || st.Mode().Perm()&0o444 != 0o444 {
		t.Errorf("written file mode = %v, %v; want readable", st.Mode(), err)
	}
}

func TestWriteFileMissingDir(t *testing.T) {
	err := WriteFile(filepath.Join(t.TempDir(), "no", "such", "x.safetensors"), nil, nil)
	if err == nil {
		t.Error("WriteFile into a missing directory: no error")
	}
}
