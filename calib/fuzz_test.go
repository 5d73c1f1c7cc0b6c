package calib

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/parquet-go/parquet-go"
	"github.com/parquet-go/parquet-go/encoding/thrift"
	"github.com/parquet-go/parquet-go/format"
)

// FuzzOpen feeds corrupted datasets to Open and Each: they must return errors,
// never panic, and a file that reads must yield NumSequences rows.
func FuzzOpen(f *testing.F) {
	dir := f.TempDir()
	seed := func(path string) {
		b, err := os.ReadFile(path)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	p := filepath.Join(dir, "seed.parquet")
	if err := Write(p, [][]int32{{1, 2, 3}, {}, {4}, {5, 6, 7, 8, 9, 10, 11, 12}}); err != nil {
		f.Fatal(err)
	}
	seed(p)
	type row64 struct {
		InputIDs []int64 `parquet:"input_ids,list,dict"`
	}
	var buf bytes.Buffer
	if err := parquet.Write(&buf, []row64{{[]int64{1, 1, 1, 2}}, {[]int64{3}}}, parquet.Compression(&parquet.Snappy)); err != nil {
		f.Fatal(err)
	}
	f.Add(buf.Bytes())
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(t.TempDir(), "f.parquet")
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
		d, err := Open(path)
		if err != nil {
			return
		}
		defer d.Close()
		var rows int64
		err = d.Each(func(row int64, ids []int32) error {
			if row != rows {
				t.Fatalf("row %d, want %d", row, rows)
			}
			for _, id := range ids {
				if id < 0 {
					t.Fatalf("row %d: negative id %d passed", row, id)
				}
			}
			rows++
			return nil
		})
		if err == nil && rows != d.NumSequences() {
			t.Fatalf("Each read %d rows, NumSequences = %d", rows, d.NumSequences())
		}
	})
}

// patchPageHeader rewrites the header of the first page of column 0 in a
// file written by Write (one page per chunk), shrinking the page size by the
// bytes the header grew so the page still ends where the chunk does.
func patchPageHeader(t *testing.T, data []byte, patch func(*format.PageHeader)) []byte {
	t.Helper()
	pf, err := parquet.OpenFile(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	off := pf.Metadata().RowGroups[0].Columns[0].MetaData.DataPageOffset
	n, err := skipStruct(data[off:], 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	var h format.PageHeader
	if err := thrift.Unmarshal(new(thrift.CompactProtocol), data[off:off+int64(n)], &h); err != nil {
		t.Fatal(err)
	}
	patch(&h)
	base := h.CompressedPageSize
	var hb []byte
	for range 3 {
		if hb, err = thrift.Marshal(new(thrift.CompactProtocol), &h); err != nil {
			t.Fatal(err)
		}
		h.CompressedPageSize = base - int32(len(hb)-n)
	}
	return slices.Concat(data[:off], hb, data[off+int64(n):])
}

// TestCorrupt covers the checks made before parquet-go sees a file: each
// input below made parquet-go v0.32.0 allocate gigabytes or panic.
func TestCorrupt(t *testing.T) {
	dir := t.TempDir()
	valid := filepath.Join(dir, "valid.parquet")
	if err := Write(valid, [][]int32{{1, 2, 3}, {4, 5}}); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(valid)
	if err != nil {
		t.Fatal(err)
	}
	footer := func(meta []byte) []byte {
		b := append([]byte("PAR1"), meta...)
		b = binary.LittleEndian.AppendUint32(b, uint32(len(meta)))
		return append(b, "PAR1"...)
	}
	for _, tc := range []struct {
		name    string
		data    []byte
		atOpen  bool // fails in Open, else in Each
		message string
	}{
		{"footer length 4 GiB", []byte("PAR1xxxx\xff\xff\xff\xffPAR1"), true, "footer length 4294967295"},
		{"encrypted footer", []byte("PAR1xxxx\x04\x00\x00\x00PARE"), true, "encrypted"},
		// FileMetaData.schema: list<SchemaElement> claiming 2³¹-1 elements.
		{"thrift list 2^31", footer([]byte{0x15, 0x02, 0x19, 0xfc, 0xff, 0xff, 0xff, 0xff, 0x07}), true, "footer: unexpected EOF"},
		{"thrift nesting", footer(bytes.Repeat([]byte{0x1c}, 100)), true, "nested deeper"},
		{"page 1 GiB compressed", patchPageHeader(t, data, func(h *format.PageHeader) { h.CompressedPageSize = 1 << 30 }), false, "compressed page size 10737418"},
		{"page 1 GiB uncompressed", patchPageHeader(t, data, func(h *format.PageHeader) { h.UncompressedPageSize = 1 << 30 }), false, "uncompressed page size 1073741824"},
		{"page 2³¹-1 values", patchPageHeader(t, data, func(h *format.PageHeader) { h.DataPageHeader.V.NumValues = math.MaxInt32 }), false, "2147483647 values"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, "corrupt.parquet")
			if err := os.WriteFile(path, tc.data, 0o644); err != nil {
				t.Fatal(err)
			}
			d, err := Open(path)
			if !tc.atOpen {
				if err != nil {
					t.Fatalf("Open: %v", err)
				}
				_, err = d.Read(0)
				d.Close()
			} else if err == nil {
				d.Close()
			}
			wantError(t, err, path, tc.message)
			if _, ok := errors.AsType[*FormatError](err); !ok {
				t.Errorf("error %T is not a *FormatError", err)
			}
		})
	}
}

func TestGuard(t *testing.T) {
	err := guard(func() error { panic("boom") })
	wantError(t, err, "parquet-go panicked: boom")
	want := errors.New("plain")
	if err := guard(func() error { return want }); err != want {
		t.Errorf("guard returned %v, want %v", err, want)
	}
}
