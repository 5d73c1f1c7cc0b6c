package calib

import (
	"bufio"
	"encoding/json"
	"errors"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/parquet-go/parquet-go"
	"github.com/parquet-go/parquet-go/compress"
)

// fixtures is the repository's sample data (DuckDB-written Parquet and the
// same rows as JSONL), seen from the package directory.
const fixtures = "../testdata/samples"

// fixture returns the path of a sample file, failing the test when it is
// missing.
func fixture(t testing.TB, name string) string {
	t.Helper()
	p := filepath.Join(fixtures, name)
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("test data %s missing from the repository: %v", p, err)
	}
	return p
}

// readJSONL parses {"input_ids": [...]} lines with encoding/json, independently
// of ImportJSONL.
func readJSONL(t testing.TB, path string) [][]int32 {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out [][]int32
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<24)
	for sc.Scan() {
		var row struct {
			InputIDs []int32 `json:"input_ids"`
		}
		if err := json.Unmarshal(sc.Bytes(), &row); err != nil {
			t.Fatalf("%s line %d: %v", path, len(out)+1, err)
		}
		out = append(out, row.InputIDs)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func mustOpen(t testing.TB, path string) *Dataset {
	t.Helper()
	d, err := Open(path)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func mustRead(t testing.TB, path string) [][]int32 {
	t.Helper()
	d := mustOpen(t, path)
	got, err := d.Read(0)
	if err != nil {
		t.Fatalf("Read: %v", err)
	}
	if int64(len(got)) != d.NumSequences() {
		t.Fatalf("Read returned %d rows, NumSequences = %d", len(got), d.NumSequences())
	}
	return got
}

func equalSeqs(t testing.TB, got, want [][]int32) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d rows, want %d", len(got), len(want))
	}
	for i := range want {
		if !slices.Equal(got[i], want[i]) {
			t.Fatalf("row %d: got %d ids %v, want %d ids %v", i, len(got[i]), head(got[i]), len(want[i]), head(want[i]))
		}
	}
}

func head(s []int32) []int32 { return s[:min(len(s), 8)] }

// wantError checks that err is non-nil and its message holds every part.
func wantError(t testing.TB, err error, parts ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want one mentioning %q", parts)
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("error %q does not mention %q", err, p)
		}
	}
}

func TestFixtures(t *testing.T) {
	for _, tc := range []struct {
		name   string
		rows   int
		seqLen int
	}{
		{"calib", 128, 256},
		{"eval", 32, 256},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pq := fixture(t, tc.name+".parquet")
			want := readJSONL(t, fixture(t, tc.name+".jsonl"))
			if len(want) != tc.rows {
				t.Fatalf("%s.jsonl has %d lines, want %d", tc.name, len(want), tc.rows)
			}
			d := mustOpen(t, pq)
			if n := d.NumSequences(); n != int64(tc.rows) {
				t.Fatalf("NumSequences = %d, want %d", n, tc.rows)
			}
			got, err := d.Read(0)
			if err != nil {
				t.Fatal(err)
			}
			for i, ids := range got {
				if len(ids) != tc.seqLen {
					t.Fatalf("row %d has %d ids, want %d", i, len(ids), tc.seqLen)
				}
			}
			equalSeqs(t, got, want)

			// Each streams the same rows, in order, with their indices.
			var next int64
			err = d.Each(func(row int64, ids []int32) error {
				if row != next {
					t.Fatalf("Each gave row %d, want %d", row, next)
				}
				if !slices.Equal(ids, want[row]) {
					t.Fatalf("Each row %d differs from the JSONL", row)
				}
				next++
				return nil
			})
			if err != nil || next != int64(tc.rows) {
				t.Fatalf("Each: %d rows, err %v", next, err)
			}

			first, err := d.Read(5)
			if err != nil {
				t.Fatal(err)
			}
			equalSeqs(t, first, want[:5])
		})
	}
}

// randomSeqs returns n sequences whose lengths cycle through 0, 1 and random
// lengths up to maxLen, with Zipf-distributed ids below vocab.
func randomSeqs(rng *rand.Rand, n, maxLen int, vocab uint64) [][]int32 {
	zipf := rand.NewZipf(rng, 1.1, 1, vocab-1)
	seqs := make([][]int32, n)
	for i := range seqs {
		var l int
		switch i % 5 {
		case 0:
			l = 0
		case 1:
			l = 1
		default:
			l = rng.IntN(maxLen + 1)
		}
		s := make([]int32, l)
		for j := range s {
			s[j] = int32(zipf.Uint64())
		}
		seqs[i] = s
	}
	return seqs
}

func numRowGroups(t testing.TB, path string) int {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	pf, err := parquet.OpenFile(f, st.Size())
	if err != nil {
		t.Fatal(err)
	}
	return len(pf.RowGroups())
}

func TestRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 1))
	seqs := randomSeqs(rng, 300, 700, 128000)
	seqs = append(seqs, []int32{0, math.MaxInt32, 1}) // the extremes
	path := filepath.Join(t.TempDir(), "rt.parquet")

	w, err := Create(path)
	if err != nil {
		t.Fatal(err)
	}
	w.maxTokens = 5000 // many row groups
	w.maxRows = 40
	buf := make([]int32, 0, 1024)
	for _, s := range seqs {
		// Write must not keep its argument: reuse and scribble on one buffer.
		buf = append(buf[:0], s...)
		if err := w.Write(buf); err != nil {
			t.Fatal(err)
		}
		for i := range buf {
			buf[i] = -1
		}
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("destination exists before Close: %v", err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := w.Abort(); err != nil {
		t.Fatalf("Abort after Close: %v", err)
	}
	if g := numRowGroups(t, path); g < 8 {
		t.Fatalf("%d row groups, want several (≥ 8)", g)
	}
	noTemps(t, filepath.Dir(path))

	equalSeqs(t, mustRead(t, path), seqs)
	d := mustOpen(t, path)
	for _, n := range []int{1, 7, len(seqs), len(seqs) + 10} {
		got, err := d.Read(n)
		if err != nil {
			t.Fatal(err)
		}
		equalSeqs(t, got, seqs[:min(n, len(seqs))])
	}

	// Each stops at the first error from fn and returns it unchanged.
	stop := errors.New("enough")
	var seen int
	err = d.Each(func(row int64, ids []int32) error {
		seen++
		if row == 100 {
			return stop
		}
		return nil
	})
	if err != stop || seen != 101 {
		t.Fatalf("Each: err %v after %d rows, want %v after 101", err, seen, stop)
	}
}

func TestWriteEmpty(t *testing.T) {
	path := filepath.Join(t.TempDir(), "empty.parquet")
	if err := Write(path, nil); err != nil {
		t.Fatal(err)
	}
	d := mustOpen(t, path)
	if d.NumSequences() != 0 {
		t.Fatalf("NumSequences = %d, want 0", d.NumSequences())
	}
	got, err := d.Read(0)
	if err != nil || len(got) != 0 {
		t.Fatalf("Read: %d rows, %v", len(got), err)
	}
}

// TestCodecs reads files written with every codec, both data page versions,
// dictionary encoding and tiny pages.
func TestCodecs(t *testing.T) {
	type dictRow struct {
		InputIDs []int32 `parquet:"input_ids,list,dict"`
	}
	rng := rand.New(rand.NewPCG(2, 2))
	seqs := randomSeqs(rng, 60, 300, 1000)
	rows := make([]record, len(seqs))
	drows := make([]dictRow, len(seqs))
	for i, s := range seqs {
		rows[i].InputIDs = s
		drows[i].InputIDs = s
	}
	codecs := map[string]compress.Codec{
		"none": &parquet.Uncompressed, "snappy": &parquet.Snappy, "gzip": &parquet.Gzip,
		"brotli": &parquet.Brotli, "zstd": &parquet.Zstd, "lz4raw": &parquet.Lz4Raw,
	}
	for name, codec := range codecs {
		for _, pageVersion := range []int{1, 2} {
			for _, dict := range []bool{false, true} {
				path := filepath.Join(t.TempDir(), "c.parquet")
				f, err := os.Create(path)
				if err != nil {
					t.Fatal(err)
				}
				opts := []parquet.WriterOption{
					parquet.Compression(codec), parquet.DataPageVersion(pageVersion),
					parquet.PageBufferSize(512), parquet.MaxRowsPerRowGroup(17),
				}
				if dict {
					w := parquet.NewGenericWriter[dictRow](f, opts...)
					_, err = w.Write(drows)
					err = errors.Join(err, w.Close())
				} else {
					w := parquet.NewGenericWriter[record](f, opts...)
					_, err = w.Write(rows)
					err = errors.Join(err, w.Close())
				}
				if err = errors.Join(err, f.Close()); err != nil {
					t.Fatal(err)
				}
				t.Run(name, func(t *testing.T) {
					if name != "lz4raw" {
						equalSeqs(t, mustRead(t, path), seqs)
						return
					}
					// parquet-go v0.32.0 misreads LZ4_RAW pages
					// (parquet-go#608): Open must refuse them.
					d, err := Open(path)
					if err == nil {
						d.Close()
					}
					wantError(t, err, path, "LZ4_RAW", "parquet-go#608")
				})
			}
		}
	}
}

func TestInt64(t *testing.T) {
	type row64 struct {
		Text     string  `parquet:"text"`
		InputIDs []int64 `parquet:"input_ids,list"`
	}
	write := func(t *testing.T, rows []row64) string {
		t.Helper()
		path := filepath.Join(t.TempDir(), "i64.parquet")
		if err := parquet.WriteFile(path, rows, parquet.MaxRowsPerRowGroup(3)); err != nil {
			t.Fatal(err)
		}
		return path
	}
	t.Run("ok", func(t *testing.T) {
		rows := []row64{
			{"a", []int64{1, 2, 3}},
			{"b", nil},
			{"c", []int64{math.MaxInt32, 0}},
			{"d", []int64{42}},
		}
		got := mustRead(t, write(t, rows))
		equalSeqs(t, got, [][]int32{{1, 2, 3}, {}, {math.MaxInt32, 0}, {42}})
	})
	t.Run("too big", func(t *testing.T) {
		path := write(t, []row64{{"a", []int64{1}}, {"b", []int64{1}}, {"c", []int64{1}}, {"d", []int64{1}}, {"e", []int64{5, math.MaxInt32 + 1}}})
		d := mustOpen(t, path)
		_, err := d.Read(0)
		wantError(t, err, path, "row 4", "2147483648", "int32")
		if _, ok := errors.AsType[*FormatError](err); !ok {
			t.Errorf("error %T is not a *FormatError", err)
		}
	})
	t.Run("negative", func(t *testing.T) {
		path := write(t, []row64{{"a", []int64{1}}, {"b", []int64{7, -3}}})
		d := mustOpen(t, path)
		_, err := d.Read(0)
		wantError(t, err, path, "row 1", "negative", "-3")
	})
}

// writeRaw writes rows with explicit repetition and definition levels under
// schema, for list layouts parquet-go's struct tags don't produce.
func writeRaw(t *testing.T, schema *parquet.Schema, rows []parquet.Row) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "raw.parquet")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	w := parquet.NewWriter(f, schema, parquet.MaxRowsPerRowGroup(2))
	if _, err := w.WriteRows(rows); err != nil {
		t.Fatal(err)
	}
	if err := errors.Join(w.Close(), f.Close()); err != nil {
		t.Fatal(err)
	}
	return path
}

// lv makes one leaf value of column 0 (or a null when v < 0).
func lv(v int32, rep, def int) parquet.Value {
	if v < 0 {
		return parquet.Value{}.Level(rep, def, 0)
	}
	return parquet.Int32Value(v).Level(rep, def, 0)
}

func TestListLayouts(t *testing.T) {
	// optional group input_ids (LIST) { repeated group list { optional int32 element; } }
	// as DuckDB and pyarrow write it: def 0 = null list, 1 = empty, 2 = null element, 3 = value.
	optional := parquet.NewSchema("m", parquet.Group{
		"input_ids": parquet.Optional(parquet.List(parquet.Optional(parquet.Int(32)))),
	})
	// Legacy 2-level: required group input_ids { repeated int32 element; }
	// (def 0 = empty, 1 = value).
	twoLevel := parquet.NewSchema("m", parquet.Group{
		"input_ids": parquet.Group{"element": parquet.Repeated(parquet.Int(32))},
	})
	// Bare repeated primitive: repeated int32 input_ids.
	oneLevel := parquet.NewSchema("m", parquet.Group{
		"input_ids": parquet.Repeated(parquet.Int(32)),
	})
	good := [][]int32{{5, 6, 7}, {}, {8}, {9, 10}}
	for _, tc := range []struct {
		name   string
		schema *parquet.Schema
		rows   []parquet.Row
	}{
		{"optional 3-level", optional, []parquet.Row{
			{lv(5, 0, 3), lv(6, 1, 3), lv(7, 1, 3)}, {lv(-1, 0, 1)}, {lv(8, 0, 3)}, {lv(9, 0, 3), lv(10, 1, 3)},
		}},
		{"2-level", twoLevel, []parquet.Row{
			{lv(5, 0, 1), lv(6, 1, 1), lv(7, 1, 1)}, {lv(-1, 0, 0)}, {lv(8, 0, 1)}, {lv(9, 0, 1), lv(10, 1, 1)},
		}},
		{"1-level", oneLevel, []parquet.Row{
			{lv(5, 0, 1), lv(6, 1, 1), lv(7, 1, 1)}, {lv(-1, 0, 0)}, {lv(8, 0, 1)}, {lv(9, 0, 1), lv(10, 1, 1)},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			equalSeqs(t, mustRead(t, writeRaw(t, tc.schema, tc.rows)), good)
		})
	}

	t.Run("null list", func(t *testing.T) {
		path := writeRaw(t, optional, []parquet.Row{{lv(1, 0, 3)}, {lv(2, 0, 3)}, {lv(-1, 0, 0)}})
		d := mustOpen(t, path)
		var rows int
		err := d.Each(func(int64, []int32) error { rows++; return nil })
		wantError(t, err, path, "row 2", "null input_ids")
		if rows != 2 {
			t.Errorf("fn saw %d rows before the error, want 2", rows)
		}
	})
	t.Run("null element", func(t *testing.T) {
		path := writeRaw(t, optional, []parquet.Row{{lv(1, 0, 3)}, {lv(2, 0, 3), lv(-1, 1, 2)}})
		_, err := mustOpen(t, path).Read(0)
		wantError(t, err, path, "row 1", "null token id at position 1")
	})
	t.Run("negative", func(t *testing.T) {
		path := writeRaw(t, optional, []parquet.Row{{lv(1, 0, 3), lv(2, 1, 3)}, {lv(2, 0, 3)}, {lv(3, 0, 3), parquet.Int32Value(-9).Level(1, 3, 0)}})
		_, err := mustOpen(t, path).Read(0)
		wantError(t, err, path, "row 2", "negative token id -9 at position 1")
	})
}

func TestSchemaErrors(t *testing.T) {
	for _, tc := range []struct {
		name  string
		node  parquet.Group
		parts []string
	}{
		{"missing", parquet.Group{"tokens": parquet.List(parquet.Int(32)), "text": parquet.String()},
			[]string{"no input_ids column", "columns found: ", "tokens", "text"}},
		{"scalar", parquet.Group{"input_ids": parquet.Int(32)},
			[]string{"input_ids", "not a list", "no repeated field"}},
		{"strings", parquet.Group{"input_ids": parquet.List(parquet.String())},
			[]string{"input_ids", "not a list", "BYTE_ARRAY"}},
		{"floats", parquet.Group{"input_ids": parquet.List(parquet.Leaf(parquet.FloatType))},
			[]string{"input_ids", "not a list", "FLOAT"}},
		{"dates", parquet.Group{"input_ids": parquet.List(parquet.Date())},
			[]string{"input_ids", "not a list", "DATE"}},
		{"nested", parquet.Group{"input_ids": parquet.List(parquet.List(parquet.Int(32)))},
			[]string{"input_ids", "nested lists"}},
		{"struct", parquet.Group{"input_ids": parquet.List(parquet.Group{"a": parquet.Int(32), "b": parquet.Int(32)})},
			[]string{"input_ids", "has 2 fields"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := writeRaw(t, parquet.NewSchema("m", tc.node), nil)
			d, err := Open(path)
			if err == nil {
				d.Close()
			}
			wantError(t, err, append(tc.parts, path)...)
			if _, ok := errors.AsType[*FormatError](err); !ok {
				t.Errorf("error %T is not a *FormatError", err)
			}
		})
	}
}

func TestNotParquet(t *testing.T) {
	dir := t.TempDir()
	valid := filepath.Join(dir, "valid.parquet")
	if err := Write(valid, [][]int32{{1, 2, 3}, {4, 5}}); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(valid)
	if err != nil {
		t.Fatal(err)
	}
	for name, content := range map[string][]byte{
		"text.jsonl":        []byte(`{"input_ids": [1, 2, 3]}` + "\n"),
		"empty.parquet":     nil,
		"magic.parquet":     []byte("PAR1"),
		"truncated.parquet": data[:len(data)/2],
		"no-head.parquet":   data[4:],
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(dir, name)
			if err := os.WriteFile(path, content, 0o644); err != nil {
				t.Fatal(err)
			}
			d, err := Open(path)
			if err == nil {
				d.Close()
			}
			wantError(t, err, path)
		})
	}
	t.Run("missing", func(t *testing.T) {
		path := filepath.Join(dir, "nope.parquet")
		_, err := Open(path)
		wantError(t, err, path)
		if !errors.Is(err, os.ErrNotExist) {
			t.Errorf("error %v is not ErrNotExist", err)
		}
	})
}

func TestClosed(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.parquet")
	if err := Write(path, [][]int32{{1}}); err != nil {
		t.Fatal(err)
	}
	d, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	_, err = d.Read(0)
	wantError(t, err, path, "closed")
}

// BenchmarkEach measures streaming read throughput on 1024 sequences of 2048
// Zipf-distributed ids (2 Mi tokens, a realistic calibration set).
func BenchmarkEach(b *testing.B) {
	const rows, seqLen = 1024, 2048
	rng := rand.New(rand.NewPCG(3, 3))
	zipf := rand.NewZipf(rng, 1.1, 1, 127999)
	seqs := make([][]int32, rows)
	for i := range seqs {
		seqs[i] = make([]int32, seqLen)
		for j := range seqs[i] {
			seqs[i][j] = int32(zipf.Uint64())
		}
	}
	path := filepath.Join(b.TempDir(), "bench.parquet")
	if err := Write(path, seqs); err != nil {
		b.Fatal(err)
	}
	var tokens int64
	for b.Loop() {
		d, err := Open(path)
		if err != nil {
			b.Fatal(err)
		}
		err = d.Each(func(_ int64, ids []int32) error {
			tokens += int64(len(ids))
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
		d.Close()
	}
	if tokens != int64(b.N)*rows*seqLen {
		b.Fatalf("read %d tokens, want %d", tokens, int64(b.N)*rows*seqLen)
	}
	b.ReportMetric(float64(tokens)/b.Elapsed().Seconds(), "tokens/s")
}
