package calib

import (
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"strings"

	"github.com/parquet-go/parquet-go"
	"github.com/parquet-go/parquet-go/deprecated"
	"github.com/parquet-go/parquet-go/format"
)

// IDsColumn is the name of the token-id column of a dataset.
const IDsColumn = "input_ids"

// valueBatch is how many column values Each decodes at a time.
const valueBatch = 4096

// FormatError reports a dataset whose schema or content breaks the contract
// of this package, as opposed to a failure to read or write the file. Retrying
// cannot fix it.
type FormatError struct {
	Path string // the file, or the name given to ImportJSONL
	Row  int64  // 0-based row (sequence) the error is about; -1 when none
	Line int    // 1-based JSONL line the error is about; 0 when none
	Msg  string
	Err  error // underlying error, or nil
}

func (e *FormatError) Error() string {
	var b strings.Builder
	b.WriteString("calib: ")
	b.WriteString(e.Path)
	if e.Row >= 0 {
		fmt.Fprintf(&b, ": row %d", e.Row)
	}
	if e.Line > 0 {
		fmt.Fprintf(&b, ": line %d", e.Line)
	}
	b.WriteString(": ")
	b.WriteString(e.Msg)
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

func (e *FormatError) Unwrap() error { return e.Err }

func fileError(path string, err error, format string, args ...any) *FormatError {
	return &FormatError{Path: path, Row: -1, Msg: fmt.Sprintf(format, args...), Err: err}
}

func rowError(path string, row int64, format string, args ...any) *FormatError {
	return &FormatError{Path: path, Row: row, Msg: fmt.Sprintf(format, args...)}
}

// A Dataset is an open Parquet dataset of token sequences. Its methods must not
// be called concurrently.
type Dataset struct {
	path string
	f    *os.File
	pf   *parquet.File

	col   int          // index of the input_ids leaf among the column chunks
	wide  bool         // the leaf is INT64 (else INT32)
	lv    listLevels   // how definition levels map to null/empty/value
	rgs   []rowGroupAt // row groups in file order
	total int64
	size  int64 // of the file
}

type rowGroupAt struct {
	rg   parquet.RowGroup
	base int64 // index of the row group's first row in the file
}

// listLevels classifies the definition level d of a value of the input_ids
// leaf:
//
//	d < null        the list (or a group above it) is null
//	d == null       the list is empty (the value is a placeholder, rep level 0)
//	elem <= d < max the element is null
//	d == max        a token id
type listLevels struct {
	null, elem, max int
}

// Open opens the Parquet dataset at path and validates its schema: a top-level
// column input_ids holding a list of INT32 or INT64 integers. It reads only the
// file footer; the rows are read by Each and Read. The caller must Close the
// dataset.
func Open(path string) (*Dataset, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("calib: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("calib: %w", err)
	}
	var d *Dataset
	if perr := guard(func() error {
		d, err = open(f, path, st.Size())
		return nil
	}); perr != nil {
		err = fileError(path, perr, "not a readable Parquet file")
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return d, nil
}

// open reads and checks the footer. Calls into parquet-go may panic on
// corrupt input; Open runs it under guard.
func open(f *os.File, path string, size int64) (*Dataset, error) {
	if err := checkFooter(f, size); err != nil {
		return nil, fileError(path, err, "not a readable Parquet file")
	}
	pf, err := parquet.OpenFile(f, size,
		parquet.SkipPageIndex(true),
		parquet.SkipBloomFilters(true),
		parquet.ReadBufferSize(1<<20),
	)
	if err != nil {
		return nil, fileError(path, err, "not a readable Parquet file")
	}
	d := &Dataset{path: path, f: f, pf: pf, size: size}
	if err := d.resolveSchema(); err != nil {
		return nil, err
	}
	var n int64
	for g, rg := range pf.Metadata().RowGroups {
		if d.col >= len(rg.Columns) {
			return nil, fileError(path, nil, "row group %d has no %s column chunk", g, IDsColumn)
		}
		if fp := rg.Columns[d.col].FilePath; fp != "" {
			return nil, fileError(path, nil, "row group %d: %s is stored in another file (%q), which is not supported", g, IDsColumn, fp)
		}
		if rg.Columns[d.col].MetaData.Codec == format.Lz4Raw {
			// parquet-go v0.32.0 can return stale page bytes when its LZ4
			// decoder grows the output buffer (parquet-go/parquet-go#608):
			// wrong ids, not an error. Refuse rather than misread.
			return nil, fileError(path, nil, "row group %d: %s is LZ4_RAW-compressed, which parquet-go v0.32.0 misreads "+
				"(parquet-go#608); rewrite the file with zstd, snappy or gzip", g, IDsColumn)
		}
	}
	for _, rg := range pf.RowGroups() {
		if rg.NumRows() < 0 {
			return nil, fileError(path, nil, "row group with %d rows", rg.NumRows())
		}
		if len(rg.ColumnChunks()) <= d.col {
			return nil, fileError(path, nil, "row group without an %s column chunk", IDsColumn)
		}
		d.rgs = append(d.rgs, rowGroupAt{rg: rg, base: n})
		n += rg.NumRows()
	}
	if n != pf.NumRows() {
		return nil, fileError(path, nil, "row groups hold %d rows, footer says %d", n, pf.NumRows())
	}
	d.total = n
	return d, nil
}

// resolveSchema finds the input_ids column, checks it is a flat list of
// integers, and derives the definition levels of its leaf.
func (d *Dataset) resolveSchema() error {
	root := d.pf.Root()
	c := root.Column(IDsColumn)
	if c == nil {
		var names []string
		for _, c := range root.Columns() {
			names = append(names, c.Name())
		}
		return fileError(d.path, nil, "no %s column (columns found: %s)", IDsColumn, strings.Join(names, ", "))
	}
	notList := func(why string) error {
		return fileError(d.path, nil, "column %s is not a list of INT32 or INT64: %s", IDsColumn, why)
	}
	var (
		def      int // definition level reached so far
		repeated int // repeated nodes on the path
		lv       listLevels
	)
	for {
		if c.Repeated() {
			repeated++
			if repeated > 1 {
				return notList("nested lists")
			}
			lv.null = def
			lv.elem = def + 1
		}
		if !c.Required() {
			def++
		}
		if c.Leaf() {
			break
		}
		kids := c.Columns()
		if len(kids) != 1 {
			return notList(fmt.Sprintf("group %s has %d fields", strings.Join(c.Path(), "."), len(kids)))
		}
		c = kids[0]
	}
	if repeated == 0 {
		return notList("no repeated field")
	}
	lv.max = def
	if c.MaxRepetitionLevel() != 1 || c.MaxDefinitionLevel() != lv.max {
		return notList(fmt.Sprintf("unexpected levels (repetition %d, definition %d)", c.MaxRepetitionLevel(), c.MaxDefinitionLevel()))
	}
	t := c.Type()
	elems := fmt.Sprintf("elements are %s", t)
	if k := t.Kind().String(); k != t.String() {
		elems += " (" + k + ")"
	}
	switch t.Kind() {
	case parquet.Int32:
	case parquet.Int64:
		d.wide = true
	default:
		return notList(elems)
	}
	if lt := t.LogicalType(); lt != nil && lt.Value != nil {
		if _, ok := lt.Value.(*format.IntType); !ok {
			return notList(elems)
		}
	}
	if ct := t.ConvertedType(); ct != nil && (*ct < deprecated.Uint8 || *ct > deprecated.Int64) {
		return notList(elems)
	}
	d.col = c.Index()
	d.lv = lv
	return nil
}

// Path returns the path the dataset was opened from.
func (d *Dataset) Path() string { return d.path }

// NumSequences returns the number of rows (sequences) in the dataset.
func (d *Dataset) NumSequences() int64 { return d.total }

// Close closes the file.
func (d *Dataset) Close() error {
	if d.f == nil {
		return nil
	}
	err := d.f.Close()
	d.f = nil
	return err
}

// Each calls fn for every row in file order, streaming one row group at a time,
// with the row's 0-based index and its token ids. The ids slice is reused
// between calls: fn must copy it to keep it. A non-nil error from fn stops the
// iteration and Each returns that error unchanged. A row that breaks the
// contract (null list, null element, negative id, INT64 id beyond int32) stops
// the iteration with a *FormatError naming the file and the row; fn has then
// been called for every row before it.
func (d *Dataset) Each(fn func(row int64, ids []int32) error) error {
	if d.f == nil {
		return fmt.Errorf("calib: %s: dataset is closed", d.path)
	}
	s := scanner{d: d, fn: fn, vals: make([]parquet.Value, valueBatch)}
	for g, at := range d.rgs {
		if err := s.rowGroup(g, at); err != nil {
			return err
		}
	}
	return nil
}

// errStop ends an Each early from Read.
var errStop = errors.New("stop")

// Read returns the first n rows, or all of them when n <= 0, as fresh slices.
// It holds them all in memory; use Each to stream a large dataset.
func (d *Dataset) Read(n int) ([][]int32, error) {
	want := d.total
	if n > 0 && int64(n) < want {
		want = int64(n)
	}
	out := make([][]int32, 0, min(want, 1<<16))
	if want == 0 {
		return out, nil
	}
	err := d.Each(func(_ int64, ids []int32) error {
		out = append(out, append(make([]int32, 0, len(ids)), ids...))
		if int64(len(out)) == want {
			return errStop
		}
		return nil
	})
	if err != nil && err != errStop {
		return nil, err
	}
	return out, nil
}

// guard runs fn, a call into parquet-go, turning a panic into an error:
// parquet-go panics on some corrupt pages instead of returning an error.
func guard(fn func() error) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("corrupt file (parquet-go panicked: %v)", p)
		}
	}()
	return fn()
}

// scanner turns the (repetition, definition, value) stream of the input_ids
// leaf back into rows.
type scanner struct {
	d    *Dataset
	fn   func(int64, []int32) error
	vals []parquet.Value
	ids  []int32
}

func (s *scanner) rowGroup(g int, at rowGroupAt) (err error) {
	d := s.d
	if err := checkChunk(d.f, d.size, &d.pf.Metadata().RowGroups[g].Columns[d.col].MetaData); err != nil {
		return fileError(d.path, err, "read row group %d", g)
	}
	var r parquet.ColumnChunkValueReader
	if err := guard(func() error {
		r = parquet.NewColumnChunkValueReader(at.rg.ColumnChunks()[d.col])
		return nil
	}); err != nil {
		return fileError(d.path, err, "read row group %d", g)
	}
	defer func() {
		if cerr := guard(r.Close); cerr != nil && err == nil {
			err = fileError(d.path, cerr, "read row group %d", g)
		}
	}()
	var (
		rows  int64 // rows started in this group
		open  bool  // a row is in progress
		empty bool  // the row in progress is an empty list
		lv    = d.lv
	)
	for {
		var n int
		rerr := guard(func() (err error) {
			n, err = r.ReadValues(s.vals)
			return err
		})
		for _, v := range s.vals[:n] {
			def := v.DefinitionLevel()
			if v.RepetitionLevel() == 0 {
				if open {
					if err := s.fn(at.base+rows-1, s.ids); err != nil {
						return err
					}
				}
				if rows == at.rg.NumRows() {
					return fileError(d.path, nil, "row group %d holds more than the %d rows its metadata says", g, rows)
				}
				s.ids = s.ids[:0]
				rows++
				open = true
				empty = false
				if def < lv.elem {
					if def < lv.null {
						return rowError(d.path, at.base+rows-1, "null %s", IDsColumn)
					}
					empty = true
					continue
				}
			} else if !open || empty {
				return fileError(d.path, nil, "row group %d: corrupt repetition levels near row %d", g, at.base+rows)
			}
			row := at.base + rows - 1
			if def < lv.max {
				return rowError(d.path, row, "null token id at position %d", len(s.ids))
			}
			var id int64
			if d.wide {
				id = v.Int64()
			} else {
				id = int64(v.Int32())
			}
			if id < 0 || id > math.MaxInt32 {
				if id < 0 {
					return rowError(d.path, row, "negative token id %d at position %d", id, len(s.ids))
				}
				return rowError(d.path, row, "token id %d at position %d does not fit in int32", id, len(s.ids))
			}
			s.ids = append(s.ids, int32(id))
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return fileError(d.path, rerr, "read row group %d", g)
		}
	}
	if open {
		if err := s.fn(at.base+rows-1, s.ids); err != nil {
			return err
		}
	}
	if rows != at.rg.NumRows() {
		return fileError(d.path, nil, "row group %d holds %d rows, its metadata says %d", g, rows, at.rg.NumRows())
	}
	return nil
}
