package safetensors

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
)

// ErrNotFound is wrapped by errors for a tensor name a file or checkpoint
// does not have.
var ErrNotFound = errors.New("tensor not found")

// errClosed is returned by accessors called after Close.
var errClosed = errors.New("file is closed")

// File is an open, validated safetensors file, mapped read-only.
// Its methods may be called concurrently, except Close.
type File struct {
	path  string
	data  []byte // the whole file; nil once closed
	mmap  bool   // data is a mapping to unmap on Close
	hdr   *header
	close error // the result of the first Close
}

// Open opens the safetensors file at path: it reads and validates the header
// (see the package documentation), then maps the file read-only.
func Open(path string) (*File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close() // a mapping outlives its descriptor
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, &FormatError{Path: path, Err: fmt.Errorf("not a regular file (%v)", st.Mode().Type())}
	}
	size := st.Size()
	h, err := readHeader(f, size, path)
	if err != nil {
		return nil, err
	}
	data, mapped, err := mapFile(f, size)
	if err != nil {
		return nil, fmt.Errorf("map %s: %w", path, err)
	}
	// Guard against the file changing between the read and the mapping.
	if !bytes.Equal(data[8:8+len(h.raw)], h.raw) {
		if mapped {
			unmapFile(data)
		}
		return nil, &FormatError{Path: path, Err: errors.New("header changed while opening")}
	}
	h.raw = nil
	return &File{path: path, data: data, mmap: mapped, hdr: h}, nil
}

// Path returns the path the file was opened with.
func (f *File) Path() string { return f.path }

// Names returns the tensor names, sorted.
func (f *File) Names() []string { return slices.Clone(f.hdr.names) }

// Info returns the description of tensor name, and whether it exists.
func (f *File) Info(name string) (TensorInfo, bool) {
	t, ok := f.hdr.tensors[name]
	t.Shape = slices.Clone(t.Shape)
	return t, ok
}

// Metadata returns a copy of the __metadata__ map (empty when absent).
func (f *File) Metadata() map[string]string { return maps.Clone(f.hdr.metadata) }

// Bytes returns the raw little-endian bytes of tensor name: a view into the
// mapping, valid until Close, that must not be modified.
func (f *File) Bytes(name string) ([]byte, error) {
	t, ok := f.hdr.tensors[name]
	if !ok {
		return nil, fmt.Errorf("%s: tensor %q: %w", f.path, name, ErrNotFound)
	}
	if f.data == nil {
		return nil, fmt.Errorf("%s: %w", f.path, errClosed)
	}
	end := t.Offset + t.Length
	return f.data[t.Offset:end:end], nil
}

// Float32 returns the values of tensor name as a new []float32. The tensor's
// dtype must be F32, F16 or BF16; the conversion is exact.
func (f *File) Float32(name string) ([]float32, error) {
	t, ok := f.hdr.tensors[name]
	if !ok {
		return nil, fmt.Errorf("%s: tensor %q: %w", f.path, name, ErrNotFound)
	}
	switch t.DType {
	case F32, F16, BF16:
	default:
		return nil, fmt.Errorf("%s: tensor %q: dtype %s cannot be read as float32 (want F32, F16 or BF16)", f.path, name, t.DType)
	}
	b, err := f.Bytes(name)
	if err != nil {
		return nil, err
	}
	return DecodeFloat32(b, t.DType)
}

// Release lets the mapped pages of tensor name leave the process's resident
// set, once the caller has converted or copied what it needs: they are read
// again from the file if the tensor is used later. It is a hint (nothing
// happens where the file is read, not mapped), and never invalidates a
// slice from Bytes.
func (f *File) Release(name string) {
	t, ok := f.hdr.tensors[name]
	if !ok || !f.mmap || f.data == nil {
		return
	}
	releasePages(f.data, int(t.Offset), int(t.Offset+t.Length)) // a hint: an error changes nothing
}

// Close unmaps the file. Slices returned by Bytes must not be used afterwards.
// Closing twice returns the first result.
func (f *File) Close() error {
	if f.data == nil {
		return f.close
	}
	if f.mmap {
		if err := unmapFile(f.data); err != nil {
			f.close = fmt.Errorf("unmap %s: %w", f.path, err)
		}
	}
	f.data = nil
	return f.close
}
