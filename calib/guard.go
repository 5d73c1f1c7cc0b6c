package calib

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/parquet-go/parquet-go/encoding/thrift"
	"github.com/parquet-go/parquet-go/format"
)

// parquet-go v0.32.0 trusts the sizes it reads: an 8-byte tail can make it
// allocate 4 GiB for the footer, a thrift list header 2³¹ structs, a page
// header 2 GiB of page. These checks run on the raw bytes before parquet-go
// sees them, so a corrupt file fails with an error before any large
// allocation (house rule: validate at the edges).
const (
	maxFooterBytes   = 64 << 20  // file metadata (real ones: KiB to a few MiB)
	maxPageBytes     = 256 << 20 // one page, compressed or not (real ones: ≤ a few MiB)
	maxPageValues    = 64 << 20  // values in one page
	maxHeaderBytes   = 64 << 10  // one page header (INT32/INT64 statistics are small)
	firstHeaderBytes = 256       // first read of a page header; grown up to maxHeaderBytes
	maxThriftDepth   = 32        // nesting of thrift structs, lists and maps
)

var errCorrupt = errors.New("corrupt thrift data")

// checkFooter checks the magic bytes and the footer length of a Parquet file
// of the given size, and walks the footer's thrift encoding with every length
// bounded by the bytes left.
func checkFooter(r io.ReaderAt, size int64) error {
	if size < 12 {
		return fmt.Errorf("%d bytes, too short for Parquet", size)
	}
	var head, tail [8]byte
	if _, err := r.ReadAt(head[:4], 0); err != nil {
		return err
	}
	if _, err := r.ReadAt(tail[:], size-8); err != nil {
		return err
	}
	switch {
	case string(tail[4:]) == "PARE":
		return errors.New("encrypted Parquet files are not supported")
	case string(head[:4]) != "PAR1" || string(tail[4:]) != "PAR1":
		return fmt.Errorf("no Parquet magic bytes (starts %q, ends %q)", head[:4], tail[4:])
	}
	n := int64(binary.LittleEndian.Uint32(tail[:4]))
	if n == 0 || n > size-12 || n > maxFooterBytes {
		return fmt.Errorf("footer length %d does not fit a %d-byte file (cap %d)", n, size, maxFooterBytes)
	}
	footer := make([]byte, n)
	if _, err := r.ReadAt(footer, size-8-n); err != nil {
		return err
	}
	if _, err := skipStruct(footer, 0, 0); err != nil {
		return fmt.Errorf("footer: %w", err)
	}
	return nil
}

// checkChunk walks the page headers of one column chunk, checking each page
// lies inside the chunk and inside the caps, before parquet-go reads it.
func checkChunk(r io.ReaderAt, size int64, md *format.ColumnMetaData) error {
	start := md.DataPageOffset
	if md.DictionaryPageOffset != 0 {
		start = md.DictionaryPageOffset
	}
	end := start + md.TotalCompressedSize
	if start < 4 || md.TotalCompressedSize <= 0 || end < start || end > size-8 {
		return fmt.Errorf("column chunk at [%d, %d) outside the %d-byte file", start, end, size)
	}
	buf := make([]byte, firstHeaderBytes)
	for off := start; off < end; {
		var (
			hl  int
			err error
		)
		for {
			n := min(int64(len(buf)), end-off)
			if _, err = r.ReadAt(buf[:n], off); err != nil {
				return fmt.Errorf("page header at offset %d: %w", off, err)
			}
			hl, err = skipStruct(buf[:n], 0, 0)
			if !errors.Is(err, io.ErrUnexpectedEOF) || n < int64(len(buf)) || len(buf) >= maxHeaderBytes {
				break
			}
			buf = make([]byte, min(2*len(buf), maxHeaderBytes))
		}
		if err != nil {
			return fmt.Errorf("page header at offset %d: %w", off, err)
		}
		var h format.PageHeader
		if err := thrift.Unmarshal(new(thrift.CompactProtocol), buf[:hl], &h); err != nil {
			return fmt.Errorf("page header at offset %d: %w", off, err)
		}
		if err := checkPageHeader(&h, end-off-int64(hl)); err != nil {
			return fmt.Errorf("page header at offset %d: %w", off, err)
		}
		off += int64(hl) + int64(h.CompressedPageSize)
	}
	return nil
}

func checkPageHeader(h *format.PageHeader, left int64) error {
	if h.CompressedPageSize < 0 || int64(h.CompressedPageSize) > left || h.CompressedPageSize > maxPageBytes {
		return fmt.Errorf("compressed page size %d, %d bytes left in the chunk (cap %d)", h.CompressedPageSize, left, maxPageBytes)
	}
	if h.UncompressedPageSize < 0 || h.UncompressedPageSize > maxPageBytes {
		return fmt.Errorf("uncompressed page size %d (cap %d)", h.UncompressedPageSize, maxPageBytes)
	}
	values := func(n int32) error {
		if n < 0 || n > maxPageValues {
			return fmt.Errorf("%d values in a page (cap %d)", n, maxPageValues)
		}
		return nil
	}
	if p := h.DataPageHeader; p.Valid {
		if err := values(p.V.NumValues); err != nil {
			return err
		}
	}
	if p := h.DictionaryPageHeader; p.Valid {
		if err := values(p.V.NumValues); err != nil {
			return err
		}
	}
	if p := h.DataPageHeaderV2; p.Valid {
		if err := values(p.V.NumValues); err != nil {
			return err
		}
		rl, dl := p.V.RepetitionLevelsByteLength, p.V.DefinitionLevelsByteLength
		if p.V.NumRows < 0 || p.V.NumNulls < 0 || rl < 0 || dl < 0 ||
			int64(rl)+int64(dl) > int64(h.CompressedPageSize) || int64(rl)+int64(dl) > int64(h.UncompressedPageSize) {
			return fmt.Errorf("data page v2 with %d rows, %d nulls, level lengths %d and %d in %d bytes",
				p.V.NumRows, p.V.NumNulls, rl, dl, h.CompressedPageSize)
		}
	}
	return nil
}

// Thrift compact protocol element types.
const (
	ctTrue   = 1
	ctFalse  = 2
	ctByte   = 3
	ctI16    = 4
	ctI32    = 5
	ctI64    = 6
	ctDouble = 7
	ctBinary = 8
	ctList   = 9
	ctSet    = 10
	ctMap    = 11
	ctStruct = 12
	ctUUID   = 13
)

// skipStruct skips a compact-protocol struct starting at b[i] and returns
// the offset just past it. Every length is checked against the bytes left,
// and nesting against maxThriftDepth. A struct cut short returns
// io.ErrUnexpectedEOF.
func skipStruct(b []byte, i, depth int) (int, error) {
	if depth > maxThriftDepth {
		return 0, fmt.Errorf("%w: nested deeper than %d", errCorrupt, maxThriftDepth)
	}
	for {
		if i >= len(b) {
			return 0, io.ErrUnexpectedEOF
		}
		h := b[i]
		i++
		if h == 0 { // stop
			return i, nil
		}
		if h>>4 == 0 { // long form: zigzag field id follows
			var err error
			if _, i, err = uvarint(b, i); err != nil {
				return 0, err
			}
		}
		var err error
		switch t := h & 0x0f; t {
		case ctTrue, ctFalse: // the value is the type
		default:
			if i, err = skipValue(b, i, t, depth+1); err != nil {
				return 0, err
			}
		}
	}
}

func skipValue(b []byte, i int, t byte, depth int) (int, error) {
	need := func(n uint64) (int, error) {
		if n > uint64(len(b)-i) {
			return 0, io.ErrUnexpectedEOF
		}
		return i + int(n), nil
	}
	switch t {
	case ctTrue, ctFalse, ctByte: // inside lists and maps booleans take a byte
		return need(1)
	case ctI16, ctI32, ctI64:
		_, i, err := uvarint(b, i)
		return i, err
	case ctDouble:
		return need(8)
	case ctUUID:
		return need(16)
	case ctBinary:
		n, j, err := uvarint(b, i)
		if err != nil {
			return 0, err
		}
		i = j
		return need(n)
	case ctStruct:
		return skipStruct(b, i, depth)
	case ctList, ctSet:
		if i >= len(b) {
			return 0, io.ErrUnexpectedEOF
		}
		h := b[i]
		i++
		n, et := uint64(h>>4), h&0x0f
		if n == 15 {
			var err error
			if n, i, err = uvarint(b, i); err != nil {
				return 0, err
			}
		}
		return skipElems(b, i, n, []byte{et}, depth)
	case ctMap:
		n, j, err := uvarint(b, i)
		if err != nil {
			return 0, err
		}
		i = j
		if n == 0 {
			return i, nil
		}
		if i >= len(b) {
			return 0, io.ErrUnexpectedEOF
		}
		kv := b[i]
		return skipElems(b, i+1, n, []byte{kv >> 4, kv & 0x0f}, depth)
	}
	return 0, fmt.Errorf("%w: unknown type %d", errCorrupt, t)
}

// skipElems skips n repetitions of the element types ts. Each element takes
// at least one byte, so n beyond the bytes left is corrupt.
func skipElems(b []byte, i int, n uint64, ts []byte, depth int) (int, error) {
	if depth > maxThriftDepth {
		return 0, fmt.Errorf("%w: nested deeper than %d", errCorrupt, maxThriftDepth)
	}
	if left := uint64(len(b) - i); n > left || n*uint64(len(ts)) > left {
		return 0, io.ErrUnexpectedEOF
	}
	for range n {
		for _, t := range ts {
			var err error
			if i, err = skipValue(b, i, t, depth+1); err != nil {
				return 0, err
			}
		}
	}
	return i, nil
}

func uvarint(b []byte, i int) (uint64, int, error) {
	if i > len(b) {
		return 0, 0, io.ErrUnexpectedEOF
	}
	v, n := binary.Uvarint(b[i:])
	switch {
	case n == 0:
		return 0, 0, io.ErrUnexpectedEOF
	case n < 0:
		return 0, 0, fmt.Errorf("%w: varint overflows 64 bits", errCorrupt)
	}
	return v, i + n, nil
}
