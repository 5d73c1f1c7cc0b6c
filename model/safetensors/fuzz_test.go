package safetensors

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// openMemory is Open over bytes in memory: the same header validation, with b
// standing in for the mapping. Fuzzing through real files costs about a
// millisecond per input, too slow for the fuzzer's input minimization.
func openMemory(b []byte, path string) (*File, error) {
	h, err := readHeader(bytes.NewReader(b), int64(len(b)), path)
	if err != nil {
		return nil, err
	}
	return &File{path: path, data: b, hdr: h}, nil
}

// FuzzOpen checks that Open's validation never panics, rejects what it
// rejects with a *FormatError, and that every tensor of a file it accepts can
// be read in full. TestOpenCorrupt runs the corrupt seeds through Open on
// real files.
func FuzzOpen(f *testing.F) {
	dir := f.TempDir()
	path := filepath.Join(dir, "seed.safetensors")
	vals := []float32{1, -2.5, 0.1, 65504}
	bf, _ := EncodeFloat32(vals, BF16)
	hf, _ := EncodeFloat32(vals, F16)
	ff, _ := EncodeFloat32(vals, F32)
	err := WriteFile(path, []WriteTensor{
		{Name: "bf", DType: BF16, Shape: []int{2, 2}, Data: bf},
		{Name: "h", DType: F16, Shape: []int{4}, Data: hf},
		{Name: "f", DType: F32, Shape: []int{4}, Data: ff},
		{Name: "s", DType: I8, Data: []byte{0xff}},
		{Name: "e", DType: U8, Shape: []int{0}},
	}, map[string]string{"format": "pt"})
	if err != nil {
		f.Fatal(err)
	}
	valid, err := os.ReadFile(path)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(valid)
	f.Add(valid[:4])
	f.Add(valid[:20])
	f.Add(valid[:len(valid)-1])
	f.Add(rawFile(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[1,5]}}`, make([]byte, 5)))
	for _, tc := range corruptCases() {
		f.Add(tc.file)
	}

	// The in-memory path rejects every corrupt seed, as Open does.
	for _, tc := range corruptCases() {
		if _, err := openMemory(tc.file, path); err == nil {
			f.Fatalf("%s: openMemory accepts it", tc.name)
		}
	}
	if m, err := openMemory(valid, path); err != nil || len(m.Names()) != 5 {
		f.Fatalf("openMemory of the valid seed: %v", err)
	}

	f.Fuzz(func(t *testing.T, b []byte) {
		file, err := openMemory(b, "fuzz.safetensors")
		if err != nil {
			var fe *FormatError
			if !errors.As(err, &fe) {
				t.Fatalf("Open: %v (%T), want a *FormatError", err, err)
			}
			return
		}
		defer file.Close()
		for _, name := range file.Names() {
			info, ok := file.Info(name)
			if !ok {
				t.Fatalf("Info(%q) missing for a listed name", name)
			}
			raw, err := file.Bytes(name)
			if err != nil || int64(len(raw)) != info.Length || info.Offset+info.Length > int64(len(b)) {
				t.Fatalf("Bytes(%q): %d bytes, %v; info %+v, file %d bytes", name, len(raw), err, info, len(b))
			}
			vals, err := file.Float32(name)
			switch info.DType {
			case F32, F16, BF16:
				if err != nil || len(vals) != info.NumElements() {
					t.Fatalf("Float32(%q): %d values, %v; want %d", name, len(vals), err, info.NumElements())
				}
			default:
				if err == nil {
					t.Fatalf("Float32(%q) of dtype %s: no error", name, info.DType)
				}
			}
		}
	})
}
