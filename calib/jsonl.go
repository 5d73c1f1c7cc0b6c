package calib

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
)

// ErrTextRows reports a JSONL line that holds text rather than token ids:
// tokenizing text with the model's tokenizer is not implemented yet.
var ErrTextRows = errors.New("tokenization of text rows is not implemented yet")

// jsonlRow is one JSONL line. Text is a pointer to tell a missing key from
// an empty string.
type jsonlRow struct {
	InputIDs idList  `json:"input_ids"`
	Text     *string `json:"text"`
}

// idList decodes a JSON array of integer literals into ids, strictly: no
// strings, fractions, exponents or nulls.
type idList struct {
	ids  []int32
	set  bool // the key was present
	null bool // its value was null
}

// idError is a bad element of input_ids.
type idError struct{ msg string }

func (e *idError) Error() string { return e.msg }

func (l *idList) UnmarshalJSON(b []byte) error {
	// b is one syntactically valid JSON value (checked by the decoder).
	if l.set {
		return &idError{"input_ids appears twice"}
	}
	l.set = true
	i := skipSpace(b, 0)
	if i == len(b) {
		return &idError{"input_ids is empty, expected an array of token ids"}
	}
	if b[i] != '[' {
		if bytes.Equal(b[i:], []byte("null")) {
			l.null = true
			return nil
		}
		return &idError{fmt.Sprintf("input_ids is %s, expected an array of token ids", excerpt(b[i:]))}
	}
	i = skipSpace(b, i+1)
	if i < len(b) && b[i] == ']' {
		return nil
	}
	for k := 0; ; k++ {
		j := i
		if j < len(b) && b[j] == '-' {
			j++
		}
		digits := j
		for j < len(b) && b[j] >= '0' && b[j] <= '9' {
			j++
		}
		next := skipSpace(b, j)
		if j == digits || next == len(b) || (b[next] != ',' && b[next] != ']') {
			end := bytes.IndexAny(b[i:], ",]")
			if end < 0 {
				end = len(b) - i
			}
			return &idError{fmt.Sprintf("input_ids[%d] = %s is not an integer", k, excerpt(bytes.TrimSpace(b[i:i+end])))}
		}
		id, err := strconv.ParseInt(string(b[i:j]), 10, 64)
		if err != nil || id < 0 || id > math.MaxInt32 {
			return &idError{fmt.Sprintf("input_ids[%d] = %s is outside [0, %d]", k, b[i:j], math.MaxInt32)}
		}
		l.ids = append(l.ids, int32(id))
		if b[next] == ']' {
			return nil
		}
		i = skipSpace(b, next+1)
	}
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// ImportJSONL converts JSONL read from r into a dataset at out. Every
// non-blank line must be a JSON object with an "input_ids" array of integers
// in [0, 2³¹-1], written as one row; a "text" key next to it is ignored. A
// line with "text" and no "input_ids" fails with ErrTextRows. Any other
// content (another key, a non-object, a null or non-integer id, trailing data)
// fails with a *FormatError naming name and the 1-based line. Input with no
// rows at all is an error too. On any error nothing is written at out: a file
// already there is left as it was.
func ImportJSONL(r io.Reader, name string, out string) error {
	return importJSONL(r, name, out, maxLineBytes)
}

func importJSONL(r io.Reader, name string, out string, maxLine int) (err error) {
	w, err := Create(out)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			w.Abort()
		}
	}()
	br := bufio.NewReaderSize(r, 1<<16)
	var (
		ids []int32
		b   []byte
	)
	for line := 1; ; line++ {
		var rerr error
		b, rerr = readLine(br, b[:0], maxLine)
		if rerr == errLongLine {
			return &FormatError{Path: name, Row: -1, Line: line, Msg: fmt.Sprintf("line longer than %d bytes", maxLine)}
		}
		if rerr != nil && rerr != io.EOF {
			return fmt.Errorf("calib: read %s: line %d: %w", name, line, rerr)
		}
		if len(bytes.TrimSpace(b)) > 0 {
			ids, err = parseJSONLine(b, name, line, ids[:0])
			if err != nil {
				return err
			}
			if err := w.Write(ids); err != nil {
				return err
			}
		}
		if rerr == io.EOF {
			break
		}
	}
	if w.N() == 0 {
		return &FormatError{Path: name, Row: -1, Msg: "no sequences (expected JSONL lines with \"input_ids\")"}
	}
	return w.Close()
}

// maxLineBytes bounds one JSONL line (a sequence of a million ids takes about
// 7 MiB), so input without newlines cannot exhaust memory.
const maxLineBytes = 256 << 20

var errLongLine = errors.New("line too long")

// readLine appends the next line of br, newline included, to b, failing
// with errLongLine past limit bytes.
func readLine(br *bufio.Reader, b []byte, limit int) ([]byte, error) {
	for {
		s, err := br.ReadSlice('\n')
		if len(b)+len(s) > limit {
			return b, errLongLine
		}
		b = append(b, s...)
		if err != bufio.ErrBufferFull {
			return b, err
		}
	}
}

// parseJSONLine decodes one line into ids (appended to dst).
func parseJSONLine(b []byte, name string, line int, dst []int32) ([]int32, error) {
	bad := func(format string, args ...any) error {
		return &FormatError{Path: name, Row: -1, Line: line, Msg: fmt.Sprintf(format, args...)}
	}
	const want = `expected a JSON object with "input_ids": [token ids]`
	b = bytes.TrimSpace(b)
	if b[0] != '{' {
		return nil, bad("%s, found %s", want, excerpt(b))
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	row := jsonlRow{InputIDs: idList{ids: dst}}
	if err := dec.Decode(&row); err != nil {
		if ie, ok := errors.AsType[*idError](err); ok {
			return nil, bad("%s", ie.msg)
		}
		return nil, bad("%s: %v", want, err)
	}
	if dec.More() {
		return nil, bad("%s: trailing data after the object", want)
	}
	switch {
	case !row.InputIDs.set && row.Text != nil:
		return nil, &FormatError{Path: name, Row: -1, Line: line, Msg: "a \"text\" row", Err: ErrTextRows}
	case !row.InputIDs.set:
		return nil, bad("%s, found no \"input_ids\"", want)
	case row.InputIDs.null:
		return nil, bad("%s, found \"input_ids\": null", want)
	}
	return row.InputIDs.ids, nil
}

// excerpt quotes the start of b for an error message.
func excerpt(b []byte) string {
	const n = 40
	if len(b) > n {
		return fmt.Sprintf("%q...", b[:n])
	}
	return fmt.Sprintf("%q", b)
}
