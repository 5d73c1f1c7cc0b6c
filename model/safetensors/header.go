package safetensors

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
)

// MaxHeaderSize is the largest JSON header Open accepts and WriteFile writes.
const MaxHeaderSize = 100 << 20

const metadataKey = "__metadata__"

// FormatError reports a file that is not valid safetensors (or an index that
// does not match its shards). Path is the file, Tensor the tensor concerned
// ("" for the file as a whole), Err what is wrong.
type FormatError struct {
	Path   string
	Tensor string
	Err    error
}

func (e *FormatError) Error() string {
	if e.Tensor != "" {
		return fmt.Sprintf("%s: tensor %q: %v", e.Path, e.Tensor, e.Err)
	}
	return fmt.Sprintf("%s: %v", e.Path, e.Err)
}

func (e *FormatError) Unwrap() error { return e.Err }

// TensorInfo describes one tensor of a file. Offset is the absolute file
// offset of its first byte, Length its size in bytes.
type TensorInfo struct {
	Name   string
	DType  DType
	Shape  []int
	Offset int64
	Length int64
}

// NumElements returns the product of the shape (1 for a scalar).
func (t TensorInfo) NumElements() int {
	n := 1
	for _, d := range t.Shape {
		n *= d
	}
	return n
}

// header is a parsed and validated safetensors header.
type header struct {
	tensors  map[string]TensorInfo
	names    []string // sorted
	metadata map[string]string
	raw      []byte // the N header bytes as read, to compare against the mapping
}

// readHeader reads and validates the header of the size-byte file r. path
// only names the file in errors. Nothing is allocated before the header
// length has been checked against size and MaxHeaderSize.
func readHeader(r io.ReaderAt, size int64, path string) (*header, error) {
	ferr := func(tensor, format string, args ...any) error {
		return &FormatError{Path: path, Tensor: tensor, Err: fmt.Errorf(format, args...)}
	}
	if size < 8 {
		return nil, ferr("", "file is %d bytes, shorter than the 8-byte header length", size)
	}
	var lenBuf [8]byte
	if _, err := r.ReadAt(lenBuf[:], 0); err != nil {
		return nil, fmt.Errorf("read header length of %s: %w", path, err)
	}
	n := binary.LittleEndian.Uint64(lenBuf[:])
	if n > MaxHeaderSize {
		return nil, ferr("", "header length %d exceeds the %d-byte limit", n, MaxHeaderSize)
	}
	if n > uint64(size-8) {
		return nil, ferr("", "header length %d past end of file (%d bytes after the length)", n, size-8)
	}
	raw := make([]byte, n)
	if _, err := r.ReadAt(raw, 8); err != nil && n > 0 { // some ReaderAts report io.EOF for 0 bytes at the end
		return nil, fmt.Errorf("read header of %s: %w", path, err)
	}
	dataSize := size - 8 - int64(n)
	h := &header{tensors: make(map[string]TensorInfo), raw: raw}

	if !utf8.Valid(raw) {
		return nil, ferr("", "header is not valid UTF-8")
	}
	err := decodeObject(raw, func(key string, val json.RawMessage) error {
		if key == metadataKey {
			m, err := decodeStringMap(val)
			if err != nil {
				return ferr("", "%s: %v", metadataKey, err)
			}
			h.metadata = m
			return nil
		}
		if key == "" {
			return ferr("", "tensor with an empty name")
		}
		info, err := parseEntry(key, val, 8+int64(n), dataSize)
		if err != nil {
			return &FormatError{Path: path, Tensor: key, Err: err}
		}
		h.tensors[key] = info
		h.names = append(h.names, key)
		return nil
	})
	if err != nil {
		if fe := (*FormatError)(nil); errors.As(err, &fe) {
			return nil, err
		}
		return nil, ferr("", "header: %v", err)
	}
	slices.Sort(h.names)
	if h.metadata == nil {
		h.metadata = map[string]string{}
	}

	// No two non-empty tensors may share a byte.
	byOffset := make([]TensorInfo, 0, len(h.tensors))
	for _, name := range h.names {
		if t := h.tensors[name]; t.Length > 0 {
			byOffset = append(byOffset, t)
		}
	}
	slices.SortFunc(byOffset, func(a, b TensorInfo) int {
		return cmp.Or(cmp.Compare(a.Offset, b.Offset), strings.Compare(a.Name, b.Name))
	})
	for i := 1; i < len(byOffset); i++ {
		prev, cur := byOffset[i-1], byOffset[i]
		if cur.Offset < prev.Offset+prev.Length {
			base := 8 + int64(n)
			return nil, ferr(cur.Name, "data_offsets [%d %d] overlap tensor %q at [%d %d]",
				cur.Offset-base, cur.Offset-base+cur.Length, prev.Name, prev.Offset-base, prev.Offset-base+prev.Length)
		}
	}
	return h, nil
}

// parseEntry validates one tensor entry. dataStart is the file offset of the
// data section, dataSize its length.
func parseEntry(name string, val json.RawMessage, dataStart, dataSize int64) (TensorInfo, error) {
	var (
		dtype   *string
		shape   *[]int64
		offsets *[]int64
	)
	err := decodeObject(val, func(key string, v json.RawMessage) error {
		var err error
		want := "an array of integers"
		switch key {
		case "dtype":
			err, want = json.Unmarshal(v, &dtype), "a string"
		case "shape":
			err = json.Unmarshal(v, &shape)
		case "data_offsets":
			err = json.Unmarshal(v, &offsets)
		default:
			return fmt.Errorf("unknown field %q", key)
		}
		if err != nil {
			return fmt.Errorf("%s is %s, want %s", key, abbrev(v), want)
		}
		return nil
	})
	if err != nil {
		return TensorInfo{}, err
	}
	switch {
	case dtype == nil:
		return TensorInfo{}, errors.New("missing dtype")
	case shape == nil:
		return TensorInfo{}, errors.New("missing shape")
	case offsets == nil:
		return TensorInfo{}, errors.New("missing data_offsets")
	}
	dt := DType(*dtype)
	if dt.Size() == 0 {
		return TensorInfo{}, fmt.Errorf("unknown dtype %q", *dtype)
	}
	elems := int64(1)
	dims := make([]int, len(*shape))
	for i, d := range *shape {
		if d < 0 || d > math.MaxInt {
			return TensorInfo{}, fmt.Errorf("shape %v: dimension %d is %d", *shape, i, d)
		}
		if d != 0 && elems > math.MaxInt64/d {
			return TensorInfo{}, fmt.Errorf("shape %v is too large", *shape)
		}
		elems *= d
		dims[i] = int(d)
	}
	if elems > math.MaxInt64/int64(dt.Size()) || elems > math.MaxInt {
		return TensorInfo{}, fmt.Errorf("shape %v is too large", *shape)
	}
	want := elems * int64(dt.Size())
	if len(*offsets) != 2 {
		return TensorInfo{}, fmt.Errorf("data_offsets %v: want [begin, end]", *offsets)
	}
	begin, end := (*offsets)[0], (*offsets)[1]
	switch {
	case begin < 0 || end < begin:
		return TensorInfo{}, fmt.Errorf("data_offsets [%d %d]: want 0 <= begin <= end", begin, end)
	case end > dataSize:
		return TensorInfo{}, fmt.Errorf("data_offsets [%d %d] end past data section (%d bytes)", begin, end, dataSize)
	case end-begin != want:
		return TensorInfo{}, fmt.Errorf("data_offsets [%d %d] hold %d bytes, want %d for %s shape %v",
			begin, end, end-begin, want, dt, *shape)
	}
	return TensorInfo{Name: name, DType: dt, Shape: dims, Offset: dataStart + begin, Length: want}, nil
}

// decodeObject calls fn for each member of the JSON object data, in order.
// It fails on anything but a single object (surrounding whitespace allowed)
// and on duplicate keys, which encoding/json would silently merge.
func decodeObject(data []byte, fn func(key string, val json.RawMessage) error) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	tok, err := dec.Token()
	if err != nil {
		return fmt.Errorf("not a JSON object: %v", err)
	}
	if tok != json.Delim('{') {
		return fmt.Errorf("not a JSON object: %s", abbrev(data))
	}
	seen := make(map[string]bool)
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		key, ok := tok.(string)
		if !ok {
			return fmt.Errorf("object key %s is not a string", tokenString(tok))
		}
		if seen[key] {
			return fmt.Errorf("duplicate key %q", key)
		}
		seen[key] = true
		var val json.RawMessage
		if err := dec.Decode(&val); err != nil {
			return fmt.Errorf("value of %q: %v", key, err)
		}
		if err := fn(key, val); err != nil {
			return err
		}
	}
	if _, err := dec.Token(); err != nil { // the closing '}'
		return err
	}
	if tok, err := dec.Token(); err != io.EOF {
		if err != nil {
			return fmt.Errorf("after the object: %v", err)
		}
		return fmt.Errorf("unexpected %v after the object", tokenString(tok))
	}
	return nil
}

// decodeStringMap decodes a JSON object whose values are all strings.
func decodeStringMap(data []byte) (map[string]string, error) {
	m := make(map[string]string)
	err := decodeObject(data, func(key string, val json.RawMessage) error {
		var s *string
		if err := json.Unmarshal(val, &s); err != nil || s == nil {
			return fmt.Errorf("value of %q is %s, want a string", key, abbrev(val))
		}
		m[key] = *s
		return nil
	})
	return m, err
}

// abbrev shortens raw JSON for an error message.
func abbrev(b []byte) string {
	b = bytes.TrimSpace(b)
	if len(b) > 40 {
		return string(b[:37]) + "..."
	}
	return string(b)
}

// tokenString formats a JSON token for an error message.
func tokenString(tok json.Token) string {
	switch v := tok.(type) {
	case string:
		return strconv.Quote(v)
	case json.Delim:
		return string(v)
	case nil:
		return "null"
	}
	return fmt.Sprint(tok)
}
