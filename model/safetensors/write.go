package safetensors

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/rankzip/rankzip/internal/perm"
)

// WriteTensor is one tensor to write: its bytes come from Data, or, when Data
// is nil, from Fill, which must write exactly the declared number of bytes
// (elements × dtype size) to w, little-endian, row-major.
type WriteTensor struct {
	Name  string
	DType DType
	Shape []int
	Data  []byte
	Fill  func(w io.Writer) error
}

// WriteFile writes tensors to path as one safetensors file, with metadata as
// __metadata__ (omitted when empty; Hugging Face transformers expects
// {"format": "pt"} when it is present). Tensors are laid out sorted by name.
//
// The file is written to a temporary file in the same directory, fsynced and
// renamed over path, so at no point does path hold a partial file. On any
// error, including a Fill that fails or writes the wrong number of bytes, the
// temporary file is removed and an existing file at path is left untouched.
func WriteFile(path string, tensors []WriteTensor, metadata map[string]string) error {
	sorted := make([]WriteTensor, len(tensors))
	copy(sorted, tensors)
	slices.SortFunc(sorted, func(a, b WriteTensor) int { return strings.Compare(a.Name, b.Name) })
	hdr, lengths, err := buildHeader(sorted, metadata)
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	err = writeAtomic(path, func(w io.Writer) error {
		if _, err := w.Write(hdr); err != nil {
			return err
		}
		for i, t := range sorted {
			if t.Fill == nil {
				if _, err := w.Write(t.Data); err != nil {
					return err
				}
				continue
			}
			lw := &limitWriter{w: w, limit: lengths[i]}
			err := t.Fill(lw)
			switch {
			case lw.over:
				return fmt.Errorf("tensor %q: Fill wrote more than the declared %d bytes", t.Name, lengths[i])
			case err != nil:
				return fmt.Errorf("tensor %q: %w", t.Name, err)
			case lw.n != lengths[i]:
				return fmt.Errorf("tensor %q: Fill wrote %d of the declared %d bytes", t.Name, lw.n, lengths[i])
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// buildHeader validates sorted tensors and returns the 8-byte length followed
// by the header JSON padded with spaces to a multiple of 8 bytes, and the byte
// length of each tensor.
func buildHeader(sorted []WriteTensor, metadata map[string]string) ([]byte, []int64, error) {
	type entry struct {
		DType       DType    `json:"dtype"`
		Shape       []int    `json:"shape"`
		DataOffsets [2]int64 `json:"data_offsets"`
	}
	var buf bytes.Buffer
	buf.Write(make([]byte, 8)) // the length, filled in below
	buf.WriteByte('{')
	if len(metadata) > 0 {
		m, err := json.Marshal(metadata) // keys sorted
		if err != nil {
			return nil, nil, err
		}
		buf.WriteString(`"` + metadataKey + `":`)
		buf.Write(m)
	}
	lengths := make([]int64, len(sorted))
	var off int64
	for i, t := range sorted {
		switch {
		case t.Name == "" || t.Name == metadataKey:
			return nil, nil, fmt.Errorf("invalid tensor name %q", t.Name)
		case i > 0 && t.Name == sorted[i-1].Name:
			return nil, nil, fmt.Errorf("tensor %q: listed twice", t.Name)
		case t.DType.Size() == 0:
			return nil, nil, fmt.Errorf("tensor %q: unknown dtype %q", t.Name, string(t.DType))
		case t.Data != nil && t.Fill != nil:
			return nil, nil, fmt.Errorf("tensor %q: both Data and Fill are set", t.Name)
		}
		n := int64(t.DType.Size())
		for _, d := range t.Shape {
			if d < 0 {
				return nil, nil, fmt.Errorf("tensor %q: negative dimension in shape %v", t.Name, t.Shape)
			}
			if d != 0 && n > math.MaxInt64/int64(d) {
				return nil, nil, fmt.Errorf("tensor %q: shape %v is too large", t.Name, t.Shape)
			}
			n *= int64(d)
		}
		if t.Fill == nil && int64(len(t.Data)) != n {
			return nil, nil, fmt.Errorf("tensor %q: Data has %d bytes, want %d for %s shape %v", t.Name, len(t.Data), n, t.DType, t.Shape)
		}
		if off > math.MaxInt64-n {
			return nil, nil, errors.New("total size overflows")
		}
		shape := t.Shape
		if shape == nil {
			shape = []int{} // a scalar: [] not null
		}
		e, err := json.Marshal(entry{DType: t.DType, Shape: shape, DataOffsets: [2]int64{off, off + n}})
		if err != nil {
			return nil, nil, err
		}
		name, err := json.Marshal(t.Name)
		if err != nil {
			return nil, nil, err
		}
		if buf.Len() > 9 {
			buf.WriteByte(',')
		}
		buf.Write(name)
		buf.WriteByte(':')
		buf.Write(e)
		lengths[i] = n
		off += n
	}
	buf.WriteByte('}')
	for buf.Len()%8 != 0 {
		buf.WriteByte(' ')
	}
	b := buf.Bytes()
	n := len(b) - 8
	if n > MaxHeaderSize {
		return nil, nil, fmt.Errorf("header of %d bytes exceeds the %d-byte limit", n, MaxHeaderSize)
	}
	for i := range 8 {
		b[i] = byte(uint64(n) >> (8 * i))
	}
	return b, lengths, nil
}

// limitWriter passes writes through up to limit bytes in all and refuses any
// write that would go past it.
type limitWriter struct {
	w        io.Writer
	n, limit int64
	over     bool
}

func (l *limitWriter) Write(p []byte) (int, error) {
	if int64(len(p)) > l.limit-l.n {
		l.over = true
		return 0, fmt.Errorf("write of %d bytes past the declared %d (%d written)", len(p), l.limit, l.n)
	}
	n, err := l.w.Write(p)
	l.n += int64(n)
	return n, err
}

// WriteIndex writes dir/model.safetensors.index.json for a sharded checkpoint:
// weightMap maps each tensor to the name of its shard file in dir, totalSize is
// the sum of the tensors' byte lengths. The write is atomic, like WriteFile's.
func WriteIndex(dir string, weightMap map[string]string, totalSize int64) error {
	path := filepath.Join(dir, IndexName)
	if len(weightMap) == 0 {
		return fmt.Errorf("write %s: empty weight map", path)
	}
	if totalSize < 0 {
		return fmt.Errorf("write %s: negative total size %d", path, totalSize)
	}
	for name, shard := range weightMap {
		if name == "" {
			return fmt.Errorf("write %s: empty tensor name", path)
		}
		if !filepath.IsLocal(shard) || filepath.Base(shard) != shard {
			return fmt.Errorf("write %s: tensor %q: shard %q is not a file name", path, name, shard)
		}
	}
	type meta struct {
		TotalSize int64 `json:"total_size"`
	}
	index := struct {
		Metadata  meta              `json:"metadata"`
		WeightMap map[string]string `json:"weight_map"`
	}{meta{totalSize}, weightMap}
	b, err := json.MarshalIndent(index, "", "  ")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	b = append(b, '\n')
	if err := writeAtomic(path, func(w io.Writer) error { _, err := w.Write(b); return err }); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// writeAtomic writes path through write into a temporary file in the same
// directory, then fsyncs and renames it over path. On failure (or a panic in
// write) the temporary file is removed and path is untouched.
func writeAtomic(path string, write func(w io.Writer) error) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	done := false
	defer func() {
		if !done {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	bw := bufio.NewWriterSize(tmp, 1<<20)
	if err := write(bw); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	if err := tmp.Chmod(perm.File()); err != nil {
		return err
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	done = true
	// Make the rename itself durable. Best effort: some filesystems refuse
	// to fsync a directory, and the new file is in place either way.
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}
