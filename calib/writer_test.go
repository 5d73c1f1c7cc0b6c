package calib

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rankzip/rankzip/internal/perm"
)

// noTemps fails if dir holds a temporary file left by a Writer.
func noTemps(t *testing.T, dir string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if strings.Contains(e.Name(), ".tmp") {
			t.Errorf("temporary file left behind: %s", filepath.Join(dir, e.Name()))
		}
	}
}

func noFile(t *testing.T, path string) {
	t.Helper()
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s exists (stat: %v), want no file", path, err)
	}
}

func TestWriterAbort(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "out.parquet")
	w, err := Create(path)
	if err != nil {
		t.Fatal(err)
	}
	for range 10 {
		if err := w.Write([]int32{1, 2, 3}); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Abort(); err != nil {
		t.Fatal(err)
	}
	noFile(t, path)
	noTemps(t, dir)
	if err := w.Write([]int32{1}); err == nil {
		t.Error("Write after Abort succeeded")
	}
	wantError(t, w.Close(), path, "aborted")
	noFile(t, path)
	if err := w.Abort(); err != nil {
		t.Errorf("second Abort: %v", err)
	}
}

// TestWriterKeepsExisting checks that a failed or aborted write leaves an
// existing destination byte for byte as it was, and that a successful one
// replaces it.
func TestWriterKeepsExisting(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "out.parquet")
	old := []byte("old content")
	if err := os.WriteFile(path, old, 0o644); err != nil {
		t.Fatal(err)
	}
	same := func() {
		t.Helper()
		b, err := os.ReadFile(path)
		if err != nil || !bytes.Equal(b, old) {
			t.Fatalf("destination changed: %q, %v", b, err)
		}
	}

	w, err := Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Write([]int32{1, 2}); err != nil {
		t.Fatal(err)
	}
	w.Abort()
	same()

	// A negative id fails the Write and the whole writer.
	w, err = Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Write([]int32{1, 2}); err != nil {
		t.Fatal(err)
	}
	err = w.Write([]int32{4, -5})
	wantError(t, err, path, "row 1", "negative token id -5 at position 1")
	if err2 := w.Close(); err2 != err {
		t.Errorf("Close after a failed Write returned %v, want %v", err2, err)
	}
	same()
	noTemps(t, dir)

	if err := Write(path, [][]int32{{1, -1}}); err == nil {
		t.Error("Write with a negative id succeeded")
	}
	same()
	noTemps(t, dir)

	if err := Write(path, [][]int32{{7, 8, 9}}); err != nil {
		t.Fatal(err)
	}
	equalSeqs(t, mustRead(t, path), [][]int32{{7, 8, 9}})
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != perm.File() {
		t.Errorf("mode %v, want %v (0666 under the umask)", st.Mode().Perm(), perm.File())
	}
	noTemps(t, dir)
}

func TestCreateBadDir(t *testing.T) {
	path := filepath.Join(t.TempDir(), "no", "such", "dir", "out.parquet")
	_, err := Create(path)
	wantError(t, err, path)
	wantError(t, Write(path, [][]int32{{1}}), path)
}
