package calib

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/parquet-go/parquet-go"

	"github.com/rankzip/rankzip/internal/perm"
)

// Row-group bounds of the files this package writes. A row group is cut
// before a row that would take it past groupTokens tokens or groupRows rows;
// a single row longer than groupTokens gets a row group of its own. The writer
// holds one row group in memory (compressed).
const (
	groupTokens = 1 << 22 // 4 Mi tokens, 16 MiB of raw int32
	groupRows   = 1 << 16
)

// record is the schema written: a required standard 3-level LIST<INT32>,
//
//	required group input_ids (LIST) { repeated group list { required int32 element; } }
type record struct {
	InputIDs []int32 `parquet:"input_ids,list"`
}

// A Writer writes a dataset one sequence at a time. It writes to a temporary
// file next to the destination and renames it into place on Close, so the
// destination is either absent (or left as it was) or a complete dataset,
// never a partial one.
//
// Any error from Write or Close is final: the writer removes its temporary
// file, later calls return the same error, and nothing appears at the
// destination. Call Abort to give up without an error; it is safe to defer
// Abort right after Create, as it does nothing once Close has succeeded.
type Writer struct {
	path string // destination
	tmp  string // temporary file, "" once renamed or removed
	f    *os.File
	pw   *parquet.GenericWriter[record]
	buf  []record // one-element batch for pw.Write

	maxTokens, maxRows int64 // row-group bounds
	tokens, rows       int64 // in the current row group
	n                  int64 // rows written
	err                error // sticky
	closed             bool
}

// Create starts a dataset that will appear at path when Close returns nil.
// The directory of path must exist; an existing file at path is replaced only
// on a successful Close.
func Create(path string) (*Writer, error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return nil, fmt.Errorf("calib: create %s: %w", path, err)
	}
	pw := parquet.NewGenericWriter[record](f,
		parquet.Compression(&parquet.Zstd),
		// Version 1 data pages read everywhere (older Spark/parquet-mr
		// and Hive readers included); parquet-go keeps them row-aligned.
		parquet.DataPageVersion(1),
	)
	return &Writer{
		path:      path,
		tmp:       f.Name(),
		f:         f,
		pw:        pw,
		buf:       make([]record, 1),
		maxTokens: groupTokens,
		maxRows:   groupRows,
	}, nil
}

// Write appends one sequence. Ids must be non-negative. The writer does not
// keep ids after Write returns.
func (w *Writer) Write(ids []int32) error {
	if w.err != nil {
		return w.err
	}
	if w.closed {
		return fmt.Errorf("calib: write %s: writer is closed", w.path)
	}
	for i, id := range ids {
		if id < 0 {
			return w.fail(rowError(w.path, w.n, "negative token id %d at position %d", id, i))
		}
	}
	if w.rows > 0 && (w.tokens+int64(len(ids)) > w.maxTokens || w.rows >= w.maxRows) {
		if err := w.pw.Flush(); err != nil {
			return w.fail(fmt.Errorf("calib: write %s: %w", w.path, err))
		}
		w.tokens, w.rows = 0, 0
	}
	w.buf[0].InputIDs = ids
	_, err := w.pw.Write(w.buf)
	w.buf[0].InputIDs = nil
	if err != nil {
		return w.fail(fmt.Errorf("calib: write %s: %w", w.path, err))
	}
	w.tokens += int64(len(ids))
	w.rows++
	w.n++
	return nil
}

// Close finishes the file, syncs it to disk and renames it to its
// destination. After an earlier error it returns that error and writes
// nothing.
func (w *Writer) Close() error {
	if w.err != nil {
		return w.err
	}
	if w.closed {
		return nil
	}
	if err := w.pw.Close(); err != nil {
		return w.fail(fmt.Errorf("calib: write %s: %w", w.path, err))
	}
	if err := w.f.Chmod(perm.File()); err != nil {
		return w.fail(fmt.Errorf("calib: write %s: %w", w.path, err))
	}
	if err := w.f.Sync(); err != nil {
		return w.fail(fmt.Errorf("calib: write %s: %w", w.path, err))
	}
	err := w.f.Close()
	w.f = nil
	if err != nil {
		return w.fail(fmt.Errorf("calib: write %s: %w", w.path, err))
	}
	if err := os.Rename(w.tmp, w.path); err != nil {
		return w.fail(fmt.Errorf("calib: write %s: %w", w.path, err))
	}
	w.tmp = ""
	w.closed = true
	syncDir(filepath.Dir(w.path))
	return nil
}

// Abort discards the output: the temporary file is removed and the
// destination is left as it was. It does nothing after a successful Close or
// a failed Write or Close, which have already cleaned up.
func (w *Writer) Abort() error {
	if w.closed || w.err != nil {
		return nil
	}
	w.err = fmt.Errorf("calib: write %s: aborted", w.path)
	return w.cleanup()
}

// N returns the number of sequences written so far.
func (w *Writer) N() int64 { return w.n }

// fail records err as final and removes the temporary file.
func (w *Writer) fail(err error) error {
	w.err = err
	if cerr := w.cleanup(); cerr != nil {
		w.err = errors.Join(err, cerr)
	}
	return w.err
}

func (w *Writer) cleanup() error {
	var errs []error
	if w.f != nil {
		if err := w.f.Close(); err != nil {
			errs = append(errs, err)
		}
		w.f = nil
	}
	if w.tmp != "" {
		if err := os.Remove(w.tmp); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("calib: %w", err))
		}
		w.tmp = ""
	}
	return errors.Join(errs...)
}

// syncDir makes a rename in dir durable. It is best effort: some file
// systems cannot sync a directory, and the file itself is already synced.
func syncDir(dir string) {
	d, err := os.Open(dir)
	if err != nil {
		return
	}
	d.Sync()
	d.Close()
}

// Write writes seqs as a dataset at path, atomically (see Writer).
func Write(path string, seqs [][]int32) error {
	w, err := Create(path)
	if err != nil {
		return err
	}
	for _, ids := range seqs {
		if err := w.Write(ids); err != nil {
			return err
		}
	}
	return w.Close()
}
