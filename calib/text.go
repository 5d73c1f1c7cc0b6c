package calib

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/parquet-go/parquet-go"
	"github.com/parquet-go/parquet-go/format"
)

// TextEncoder turns a text into token ids (tokenizer.Tokenizer is one);
// addSpecial adds the tokenizer's special tokens (BOS and the like).
type TextEncoder interface {
	AppendEncode(dst []int32, text string, addSpecial bool) []int32
}

// TextImport describes how ImportText builds a dataset from text documents.
type TextImport struct {
	From   string // .parquet, .jsonl (or .json lines) or .txt
	Column string // the text column of a Parquet file, the key of a JSONL object ["text"]
	Out    string // the dataset to write

	Encoder TextEncoder
	// Packing (the default): the documents' ids, each followed by EOS (when
	// ≥ 0), are concatenated and cut into rows of SeqLen ids, each row
	// starting with Prefix (the tokenizer's BOS where it adds one); the last,
	// incomplete row is dropped. With NoPack every document is one row,
	// encoded with special tokens and truncated to SeqLen.
	EOS    int32
	Prefix []int32
	SeqLen int
	NoPack bool

	// Sequences bounds the rows written (0: all). Without Sample the first
	// Sequences rows are written and the input is read no further; with
	// Sample they are a uniform sample (reservoir) of all rows, drawn with
	// Seed, in their order in the input.
	Sequences int
	Sample    bool
	Seed      int64

	// Progress, if set, is called now and then with the fraction of the input
	// read (0 to 1) and the counts so far.
	Progress func(done float64, docs, tokens, rows int64)
}

// TextStats are the counts of an import.
type TextStats struct {
	Docs, Tokens, Rows int64 // documents read, their ids, rows written
	Dropped            int64 // packed ids left over at the end (less than a row)
}

var errEnough = errors.New("enough rows")

// ImportText tokenizes and packs the documents of a text dataset into a
// Parquet dataset, streaming: a Parquet input is read one page at a time, a
// text file one line at a time. On any error nothing is written at Out.
func ImportText(o TextImport) (st TextStats, err error) {
	if err := o.check(); err != nil {
		return st, err
	}
	if o.Column == "" {
		o.Column = "text"
	}
	w, err := Create(o.Out)
	if err != nil {
		return st, err
	}
	defer func() {
		if err != nil {
			w.Abort()
		}
	}()
	p := &packer{o: o, w: w, rng: rand.New(rand.NewSource(o.Seed)), row: make([]int32, 0, o.SeqLen)}
	progress := func(done float64) {
		if o.Progress != nil {
			o.Progress(done, p.st.Docs, p.st.Tokens, p.st.Rows)
		}
	}
	err = EachText(o.From, o.Column, progress, p.doc)
	if err != nil && err != errEnough {
		return p.st, err
	}
	p.st.Dropped = int64(len(p.stream))
	if err := p.writeSample(); err != nil {
		return p.st, err
	}
	st = p.st
	if w.N() == 0 {
		if st.Docs == 0 {
			return st, fileError(o.From, nil, "no text documents")
		}
		return st, fileError(o.From, nil, "%d documents gave %d tokens, not enough for one sequence of %d", st.Docs, st.Tokens, o.SeqLen)
	}
	progress(1)
	return st, w.Close()
}

// check rejects an import that cannot make a row.
func (o TextImport) check() error {
	if o.Encoder == nil {
		return fmt.Errorf("calib: ImportText: no tokenizer")
	}
	if o.SeqLen <= len(o.Prefix) {
		return fmt.Errorf("calib: seq_len %d leaves no room after %d special tokens", o.SeqLen, len(o.Prefix))
	}
	if o.Sequences < 0 {
		return fmt.Errorf("calib: sequences %d is negative", o.Sequences)
	}
	return nil
}

// packer turns documents into rows for ImportText: it packs (or truncates)
// their ids and writes the rows, or keeps a reservoir sample of them.
type packer struct {
	o   TextImport
	w   *Writer
	st  TextStats
	rng *rand.Rand

	stream    []int32 // packed ids not yet in a row
	ids       []int32
	row       []int32
	reservoir [][]int32
	order     []int64 // input position of each reservoir row
}

// doc adds one document's rows.
func (p *packer) doc(text string) error {
	o := &p.o
	p.st.Docs++
	if o.NoPack {
		p.ids = o.Encoder.AppendEncode(p.ids[:0], text, true)
		p.st.Tokens += int64(len(p.ids))
		if len(p.ids) == 0 {
			return nil
		}
		if len(p.ids) > o.SeqLen {
			p.ids = p.ids[:o.SeqLen]
		}
		return p.emit(p.ids)
	}
	n := len(p.stream)
	p.stream = o.Encoder.AppendEncode(p.stream, text, false)
	p.st.Tokens += int64(len(p.stream) - n)
	if len(p.stream) == n {
		return nil // an empty document adds no EOS either
	}
	if o.EOS >= 0 {
		p.stream = append(p.stream, o.EOS)
	}
	body := o.SeqLen - len(o.Prefix)
	at := 0
	for len(p.stream)-at >= body {
		p.row = append(append(p.row[:0], o.Prefix...), p.stream[at:at+body]...)
		at += body
		if err := p.emit(p.row); err != nil {
			return err
		}
	}
	p.stream = append(p.stream[:0], p.stream[at:]...)
	return nil
}

// emit writes row r, or offers it to the reservoir when sampling; it
// returns errEnough once the rows asked for are written.
func (p *packer) emit(r []int32) error {
	o := &p.o
	k := p.st.Rows
	p.st.Rows++
	if o.Sample && o.Sequences > 0 {
		switch {
		case len(p.reservoir) < o.Sequences:
			p.reservoir = append(p.reservoir, append([]int32(nil), r...))
			p.order = append(p.order, k)
		default:
			if j := p.rng.Int63n(k + 1); j < int64(o.Sequences) {
				p.reservoir[j] = append(p.reservoir[j][:0], r...)
				p.order[j] = k
			}
		}
		return nil
	}
	if err := p.w.Write(r); err != nil {
		return err
	}
	if o.Sequences > 0 && p.st.Rows >= int64(o.Sequences) {
		return errEnough
	}
	return nil
}

// writeSample writes the reservoir's rows in their input order (when
// sampling).
func (p *packer) writeSample() error {
	if !p.o.Sample || p.o.Sequences <= 0 {
		return nil
	}
	idx := make([]int, len(p.reservoir))
	for i := range idx {
		idx[i] = i
	}
	sort.Slice(idx, func(a, b int) bool { return p.order[idx[a]] < p.order[idx[b]] })
	for _, i := range idx {
		if err := p.w.Write(p.reservoir[i]); err != nil {
			return err
		}
	}
	p.st.Rows = int64(len(p.reservoir))
	return nil
}

// EachText calls fn with every document of a text dataset: the non-null
// values of a string column of a Parquet file (.parquet), the string under
// key column of every object of a JSONL file (.jsonl, .ndjson), or the
// paragraphs of a text file (anything else; documents are separated by blank
// lines and keep their inner newlines). progress, if set, gets the fraction
// read now and then. An error of fn stops the walk and is returned.
func EachText(path, column string, progress func(float64), fn func(string) error) error {
	if progress == nil {
		progress = func(float64) {}
	}
	switch strings.ToLower(filepath.Ext(path)) {
	case ".parquet":
		return eachParquetText(path, column, progress, fn)
	case ".jsonl", ".ndjson":
		return eachJSONLText(path, column, progress, fn)
	default:
		return eachPlainText(path, progress, fn)
	}
}

// countingReader counts the bytes read, for progress.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

func openCounting(path string) (*os.File, *countingReader, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, 0, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, 0, err
	}
	return f, &countingReader{r: f}, st.Size(), nil
}

func fraction(n, total int64) float64 {
	if total <= 0 {
		return 0
	}
	return float64(n) / float64(total)
}

func eachPlainText(path string, progress func(float64), fn func(string) error) error {
	f, cr, size, err := openCounting(path)
	if err != nil {
		return err
	}
	defer f.Close()
	br := bufio.NewReaderSize(cr, 1<<16)
	var doc []byte
	var line []byte
	flush := func() error {
		d := bytes.TrimRight(doc, "\r\n")
		if len(bytes.TrimSpace(d)) == 0 {
			doc = doc[:0]
			return nil
		}
		err := fn(string(d))
		doc = doc[:0]
		return err
	}
	for n := 0; ; n++ {
		var rerr error
		line, rerr = readLine(br, line[:0], maxLineBytes)
		if rerr == errLongLine {
			return fileError(path, nil, "a line longer than %d bytes", maxLineBytes)
		}
		if rerr != nil && rerr != io.EOF {
			return rerr
		}
		if len(bytes.TrimSpace(line)) == 0 {
			if err := flush(); err != nil {
				return err
			}
		} else {
			doc = append(doc, line...)
		}
		if n%1024 == 0 {
			progress(fraction(cr.n-int64(br.Buffered()), size))
		}
		if rerr == io.EOF {
			return flush()
		}
	}
}

func eachJSONLText(path, column string, progress func(float64), fn func(string) error) error {
	f, cr, size, err := openCounting(path)
	if err != nil {
		return err
	}
	defer f.Close()
	br := bufio.NewReaderSize(cr, 1<<16)
	var line []byte
	for n := 1; ; n++ {
		var rerr error
		line, rerr = readLine(br, line[:0], maxLineBytes)
		if rerr == errLongLine {
			return &FormatError{Path: path, Row: -1, Line: n, Msg: fmt.Sprintf("line longer than %d bytes", maxLineBytes)}
		}
		if rerr != nil && rerr != io.EOF {
			return rerr
		}
		if len(bytes.TrimSpace(line)) > 0 {
			var obj map[string]json.RawMessage
			if err := json.Unmarshal(line, &obj); err != nil {
				return &FormatError{Path: path, Row: -1, Line: n, Msg: "not a JSON object", Err: err}
			}
			raw, ok := obj[column]
			if !ok {
				return &FormatError{Path: path, Row: -1, Line: n, Msg: fmt.Sprintf("no %q key", column)}
			}
			var s *string
			if err := json.Unmarshal(raw, &s); err != nil {
				return &FormatError{Path: path, Row: -1, Line: n, Msg: fmt.Sprintf("%q is not a string", column)}
			}
			if s != nil {
				if err := fn(*s); err != nil {
					return err
				}
			}
		}
		if n%1024 == 0 {
			progress(fraction(cr.n-int64(br.Buffered()), size))
		}
		if rerr == io.EOF {
			return nil
		}
	}
}

func eachParquetText(path, column string, progress func(float64), fn func(string) error) (err error) {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	defer func() {
		// parquet-go panics on some malformed files.
		if r := recover(); r != nil {
			err = fileError(path, nil, "malformed Parquet file: %v", r)
		}
	}()
	pf, err := parquet.OpenFile(f, st.Size(), parquet.SkipPageIndex(true), parquet.SkipBloomFilters(true))
	if err != nil {
		return fileError(path, err, "not a Parquet file")
	}
	schema := pf.Schema()
	leaf, ok := schema.Lookup(column)
	if !ok {
		var names []string
		for _, fld := range schema.Fields() {
			if fld.Name() == column {
				return fileError(path, nil, "column %q is a group or list, not a string column", column)
			}
			names = append(names, fld.Name())
		}
		return fileError(path, nil, "no column %q (columns: %s)", column, strings.Join(names, ", "))
	}
	if leaf.MaxRepetitionLevel > 0 {
		return fileError(path, nil, "column %q is a list, not a string column", column)
	}
	typ := leaf.Node.Type()
	if !isStringType(typ) {
		name := typ.Kind().String()
		if typ.Kind() == parquet.ByteArray {
			name = typ.String()
		}
		return fileError(path, nil, "column %q is %s, not a string column", column, name)
	}
	total := pf.NumRows()
	var done int64
	values := make([]parquet.Value, 1024)
	for _, rg := range pf.RowGroups() {
		chunk := rg.ColumnChunks()[leaf.ColumnIndex]
		pages := chunk.Pages()
		for {
			page, err := pages.ReadPage()
			if err == io.EOF {
				break
			}
			if err != nil {
				pages.Close()
				return fileError(path, err, "reading column %q", column)
			}
			vr := page.Values()
			for {
				n, rerr := vr.ReadValues(values)
				for _, v := range values[:n] {
					if v.IsNull() {
						continue
					}
					if err := fn(string(v.ByteArray())); err != nil {
						parquet.Release(page)
						pages.Close()
						return err
					}
				}
				if rerr == io.EOF {
					break
				}
				if rerr != nil {
					parquet.Release(page)
					pages.Close()
					return fileError(path, rerr, "reading column %q", column)
				}
			}
			parquet.Release(page)
		}
		pages.Close()
		done += rg.NumRows()
		progress(fraction(done, total))
	}
	return nil
}

// isStringType: BYTE_ARRAY with the STRING logical type or none (plain
// binary, as some writers leave text).
func isStringType(t parquet.Type) bool {
	if t.Kind() != parquet.ByteArray {
		return false
	}
	lt := t.LogicalType()
	if lt == nil || lt.Value == nil {
		return true
	}
	_, ok := lt.Value.(*format.StringType)
	return ok
}
