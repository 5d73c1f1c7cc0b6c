package calib

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestImportJSONLFixtures(t *testing.T) {
	for _, name := range []string{"calib", "eval"} {
		t.Run(name, func(t *testing.T) {
			src := fixture(t, name+".jsonl")
			pq := fixture(t, name+".parquet")
			f, err := os.Open(src)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			out := filepath.Join(t.TempDir(), name+".parquet")
			if err := ImportJSONL(f, src, out); err != nil {
				t.Fatal(err)
			}
			want := mustRead(t, pq)
			if len(want) == 0 {
				t.Fatalf("%s has no rows", pq)
			}
			equalSeqs(t, mustRead(t, out), want)
		})
	}
}

func TestImportJSONL(t *testing.T) {
	// Blank lines, CRLF endings, a "text" key beside input_ids, spaces inside
	// the array, an empty sequence and a last line without a newline all read.
	in := "{\"input_ids\": [1, 2, 3]}\n" +
		"\n" +
		"   \n" +
		"{\"input_ids\":[4,5],\"text\":\"four five\"}\r\n" +
		"{\"text\": \"x\", \"input_ids\": [ 6 ,7 ]}\n" +
		"{\"input_ids\": []}\n" +
		"{\"input_ids\": [0, 2147483647]}"
	out := filepath.Join(t.TempDir(), "out.parquet")
	if err := ImportJSONL(strings.NewReader(in), "in.jsonl", out); err != nil {
		t.Fatal(err)
	}
	equalSeqs(t, mustRead(t, out), [][]int32{{1, 2, 3}, {4, 5}, {6, 7}, {}, {0, 2147483647}})
}

func TestImportJSONLErrors(t *testing.T) {
	const ok = `{"input_ids": [1, 2]}` + "\n"
	for _, tc := range []struct {
		name  string
		line3 string
		parts []string
	}{
		{"not json", "hello", []string{`expected a JSON object with "input_ids"`, `"hello"`}},
		{"array", "[1, 2, 3]", []string{`expected a JSON object with "input_ids"`}},
		{"bad json", `{"input_ids": [1, 2`, []string{`expected a JSON object`}},
		{"no ids", `{}`, []string{`found no "input_ids"`}},
		{"other key", `{"input_ids": [1], "labels": [1]}`, []string{`"labels"`}},
		{"null ids", `{"input_ids": null}`, []string{`"input_ids": null`}},
		{"not array", `{"input_ids": 5}`, []string{`input_ids is "5"`, "expected an array"}},
		{"float", `{"input_ids": [1, 2.5]}`, []string{"input_ids[1]", "2.5", "not an integer"}},
		{"exponent", `{"input_ids": [1e3]}`, []string{"input_ids[0]", "not an integer"}},
		{"string", `{"input_ids": [1, "2"]}`, []string{"input_ids[1]", "not an integer"}},
		{"null id", `{"input_ids": [null]}`, []string{"input_ids[0]", "not an integer"}},
		{"negative", `{"input_ids": [3, -1]}`, []string{"input_ids[1] = -1", "outside [0, 2147483647]"}},
		{"too big", `{"input_ids": [2147483648]}`, []string{"input_ids[0] = 2147483648", "outside"}},
		{"huge", `{"input_ids": [99999999999999999999999]}`, []string{"input_ids[0]", "outside"}},
		{"twice", `{"input_ids": [1], "input_ids": [2]}`, []string{"twice"}},
		{"trailing", `{"input_ids": [1]} {"input_ids": [2]}`, []string{"trailing data"}},
		{"text", `{"text": "hello world"}`, []string{"tokenization of text rows is not implemented yet"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			out := filepath.Join(dir, "out.parquet")
			in := ok + ok + tc.line3 + "\n" + ok
			err := ImportJSONL(strings.NewReader(in), "data.jsonl", out)
			wantError(t, err, append(tc.parts, "data.jsonl", "line 3")...)
			fe, isFormat := errors.AsType[*FormatError](err)
			if !isFormat || fe.Line != 3 {
				t.Errorf("error %#v is not a *FormatError for line 3", err)
			}
			if tc.name == "text" && !errors.Is(err, ErrTextRows) {
				t.Errorf("error %v is not ErrTextRows", err)
			}
			noFile(t, out)
			noTemps(t, dir)
		})
	}
	t.Run("empty", func(t *testing.T) {
		dir := t.TempDir()
		out := filepath.Join(dir, "out.parquet")
		wantError(t, ImportJSONL(strings.NewReader("\n\n"), "data.jsonl", out), "data.jsonl", "no sequences")
		noFile(t, out)
		noTemps(t, dir)
	})
	t.Run("read error", func(t *testing.T) {
		dir := t.TempDir()
		out := filepath.Join(dir, "out.parquet")
		boom := errors.New("disk on fire")
		r := &failingReader{data: []byte(ok + ok), err: boom}
		err := ImportJSONL(r, "data.jsonl", out)
		wantError(t, err, "data.jsonl", "line 3")
		if !errors.Is(err, boom) {
			t.Errorf("error %v does not wrap the read error", err)
		}
		noFile(t, out)
		noTemps(t, dir)
	})
}

// failingReader returns data, then err.
type failingReader struct {
	data []byte
	err  error
}

func (r *failingReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, r.err
	}
	n := copy(p, r.data)
	r.data = r.data[n:]
	return n, nil
}

// endless yields prefix, then fill forever: a line with no end.
type endless struct {
	prefix []byte
	fill   byte
	block  []byte
}

func (r *endless) Read(p []byte) (int, error) {
	n := copy(p, r.prefix)
	r.prefix = r.prefix[n:]
	if n > 0 {
		return n, nil
	}
	if len(r.block) == 0 {
		r.block = bytes.Repeat([]byte{r.fill}, 1<<16)
	}
	return copy(p, r.block), nil
}

func TestImportJSONLLongLine(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "out.parquet")
	in := io.MultiReader(strings.NewReader(`{"input_ids": [1]}`+"\n"), &endless{prefix: []byte(`{"input_ids": [`), fill: ' '})
	err := importJSONL(in, "data.jsonl", out, 1<<20)
	wantError(t, err, "data.jsonl", "line 2", "longer than 1048576 bytes")
	noFile(t, out)
	noTemps(t, dir)
}
