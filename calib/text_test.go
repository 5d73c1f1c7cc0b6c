package calib

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// byteEncoder: one id per byte, 1000 before a text with special tokens.
type byteEncoder struct{}

func (byteEncoder) AppendEncode(dst []int32, text string, addSpecial bool) []int32 {
	if addSpecial {
		dst = append(dst, 1000)
	}
	for i := 0; i < len(text); i++ {
		dst = append(dst, int32(text[i]))
	}
	return dst
}

// textFixture is a Parquet file written by DuckDB: 4560 texts (one null) in
// three row groups, with BIGINT id, DOUBLE score and VARCHAR[] tags columns.
const textFixture = "../tokenizer/testdata/text/texts.parquet"

func readAll(t *testing.T, path string) [][]int32 {
	t.Helper()
	ds, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ds.Close()
	rows, err := ds.Read(0)
	if err != nil {
		t.Fatal(err)
	}
	return rows
}

func TestImportTextPacks(t *testing.T) {
	var docs []string
	if err := EachText(textFixture, "text", nil, func(s string) error { docs = append(docs, s); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(docs) != 4559 {
		t.Fatalf("%d documents, want 4559 (4560 rows, one null)", len(docs))
	}
	// The expected packing, built the simple way.
	var stream []int32
	for _, d := range docs {
		ids := byteEncoder{}.AppendEncode(nil, d, false)
		if len(ids) > 0 {
			stream = append(append(stream, ids...), 2)
		}
	}
	const seqLen = 100
	var want [][]int32
	for at := 0; len(stream)-at >= seqLen-1; at += seqLen - 1 {
		want = append(want, append([]int32{1}, stream[at:at+seqLen-1]...))
	}
	out := filepath.Join(t.TempDir(), "calib.parquet")
	var calls int
	st, err := ImportText(TextImport{From: textFixture, Out: out, Encoder: byteEncoder{}, EOS: 2, Prefix: []int32{1}, SeqLen: seqLen,
		Progress: func(float64, int64, int64, int64) { calls++ }})
	if err != nil {
		t.Fatal(err)
	}
	got := readAll(t, out)
	if len(got) != len(want) || st.Rows != int64(len(want)) || st.Docs != 4559 {
		t.Fatalf("%d rows (stats %+v), want %d", len(got), st, len(want))
	}
	for i := range want {
		if !slices.Equal(got[i], want[i]) {
			t.Fatalf("row %d differs", i)
		}
	}
	if calls < 3 {
		t.Errorf("progress called %d times, want one per row group at least", calls)
	}

	// The first N rows, reading no further.
	st, err = ImportText(TextImport{From: textFixture, Out: out, Encoder: byteEncoder{}, EOS: 2, Prefix: []int32{1}, SeqLen: seqLen, Sequences: 7})
	if err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, out); len(got) != 7 || !slices.Equal(got[6], want[6]) || st.Docs >= 4559 {
		t.Fatalf("--sequences 7: %d rows, %d documents read", len(got), st.Docs)
	}
	// A seeded sample: distinct rows of the full set, in input order, the same for the same seed.
	sample := func(seed int64) [][]int32 {
		if _, err := ImportText(TextImport{From: textFixture, Out: out, Encoder: byteEncoder{}, EOS: 2, Prefix: []int32{1}, SeqLen: seqLen, Sequences: 20, Sample: true, Seed: seed}); err != nil {
			t.Fatal(err)
		}
		return readAll(t, out)
	}
	a, b, c := sample(1), sample(1), sample(2)
	if len(a) != 20 || !slices.EqualFunc(a, b, slices.Equal[[]int32]) || slices.EqualFunc(a, c, slices.Equal[[]int32]) {
		t.Fatal("seeded sample not reproducible or not seed-dependent")
	}
	last := -1
	for _, r := range a {
		k := slices.IndexFunc(want[last+1:], func(w []int32) bool { return slices.Equal(w, r) })
		if k < 0 {
			t.Fatalf("sampled rows are not a subsequence of the full set")
		}
		last += 1 + k
	}
}

func TestImportTextNoPack(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(dir, "docs.jsonl")
	os.WriteFile(in, []byte(`{"body": "abc"}`+"\n\n"+`{"body": ""}`+"\n"+`{"body": "0123456789"}`+"\n"+`{"body": null}`+"\n"), 0o644)
	out := filepath.Join(dir, "out.parquet")
	if _, err := ImportText(TextImport{From: in, Column: "body", Out: out, Encoder: byteEncoder{}, EOS: -1, SeqLen: 5, NoPack: true}); err != nil {
		t.Fatal(err)
	}
	got := readAll(t, out)
	want := [][]int32{{1000, 'a', 'b', 'c'}, {1000}, {1000, '0', '1', '2', '3'}}
	if !slices.EqualFunc(got, want, slices.Equal[[]int32]) {
		t.Fatalf("got %v, want %v", got, want)
	}
}

func TestEachTextPlain(t *testing.T) {
	in := filepath.Join(t.TempDir(), "x.txt")
	os.WriteFile(in, []byte("first line\nsame doc\n\n\n  \nsecond\r\n\r\nthird"), 0o644)
	var docs []string
	if err := EachText(in, "", nil, func(s string) error { docs = append(docs, s); return nil }); err != nil {
		t.Fatal(err)
	}
	if want := []string{"first line\nsame doc", "second", "third"}; !slices.Equal(docs, want) {
		t.Fatalf("got %q, want %q", docs, want)
	}
}

func TestImportTextErrors(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "out.parquet")
	write := func(name, s string) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(s), 0o644)
		return p
	}
	imp := func(from, col string) error {
		_, err := ImportText(TextImport{From: from, Column: col, Out: out, Encoder: byteEncoder{}, EOS: 2, SeqLen: 16})
		return err
	}
	for _, c := range []struct {
		from, col, want string
	}{
		{textFixture, "content", `no column "content" (columns: id, text, score, tags)`},
		{textFixture, "score", `column "score" is DOUBLE, not a string column`},
		{textFixture, "id", `column "id" is INT64, not a string column`},
		{textFixture, "tags", `column "tags" is a group or list, not a string column`},
		{"../tokenizer/testdata/text/empty.parquet", "text", "no text documents"},
		{write("short.txt", "tiny"), "text", "1 documents gave 4 tokens, not enough for one sequence of 16"},
		{write("empty.txt", "\n\n"), "text", "no text documents"},
		{write("nokey.jsonl", `{"txt": "a"}`), "text", `line 1: no "text" key`},
		{write("num.jsonl", `{"text": "ok"}`+"\n"+`{"text": 5}`), "text", `line 2: "text" is not a string`},
		{write("bad.jsonl", `[1, 2]`), "text", `line 1: not a JSON object`},
		{write("notparquet.parquet", "PAR1 nonsense"), "text", "not a Parquet file"},
	} {
		err := imp(c.from, c.col)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s column %s: got %v, want an error containing %q", c.from, c.col, err, c.want)
		}
		if _, serr := os.Stat(out); serr == nil {
			t.Fatalf("%s: a failed import left %s", c.from, out)
		}
	}
	if _, err := ImportText(TextImport{From: textFixture, Out: out, Encoder: byteEncoder{}, SeqLen: 1, Prefix: []int32{1}}); err == nil {
		t.Error("seq_len no longer than the prefix accepted")
	}
}
