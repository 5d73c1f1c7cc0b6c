package tokenizer

import (
	"encoding/json"
	"strings"
	"unicode/utf8"
)

type postProcessor interface {
	// wrap returns the ids to put before and after a single sequence.
	wrap() (prefix, suffix []int32)
}

// templateProcessor is TemplateProcessing's single template: ids with one
// place (isSeq) for the sequence.
type templateProcessor struct {
	ids   []int32
	isSeq []bool
}

func (t *templateProcessor) wrap() (prefix, suffix []int32) {
	seen := false
	for i, id := range t.ids {
		switch {
		case t.isSeq[i]:
			seen = true
		case seen:
			suffix = append(suffix, id)
		default:
			prefix = append(prefix, id)
		}
	}
	return prefix, suffix
}

type postSequence []postProcessor

func (q postSequence) wrap() (prefix, suffix []int32) {
	// Each processor wraps what the ones before it produced.
	for _, p := range q {
		a, b := p.wrap()
		prefix = append(append([]int32(nil), a...), prefix...)
		suffix = append(suffix, b...)
	}
	return prefix, suffix
}

type noopPost struct{}

func (noopPost) wrap() (prefix, suffix []int32) { return nil, nil }

func parsePostProcessor(raw json.RawMessage, file string) (postProcessor, error) {
	var h struct {
		Type       string            `json:"type"`
		Processors []json.RawMessage `json:"processors"`
		Single     []struct {
			SpecialToken *struct {
				ID string `json:"id"`
			} `json:"SpecialToken"`
			Sequence *struct {
				ID string `json:"id"`
			} `json:"Sequence"`
		} `json:"single"`
		SpecialTokens map[string]struct {
			IDs []int32 `json:"ids"`
		} `json:"special_tokens"`
		Sep []json.RawMessage `json:"sep"`
		Cls []json.RawMessage `json:"cls"`
	}
	if err := json.Unmarshal(raw, &h); err != nil {
		return nil, componentError(file, "post_processor", "unreadable: %v", err)
	}
	switch h.Type {
	case "Sequence":
		var q postSequence
		for _, r := range h.Processors {
			p, err := parsePostProcessor(r, file)
			if err != nil {
				return nil, err
			}
			q = append(q, p)
		}
		return q, nil
	case "ByteLevel":
		return noopPost{}, nil // offsets only
	case "TemplateProcessing":
		t := &templateProcessor{}
		seqs := 0
		for _, p := range h.Single {
			switch {
			case p.Sequence != nil:
				if p.Sequence.ID != "A" {
					return nil, componentError(file, "post_processor", "TemplateProcessing single template uses sequence %q", p.Sequence.ID)
				}
				t.ids, t.isSeq = append(t.ids, 0), append(t.isSeq, true)
				seqs++
			case p.SpecialToken != nil:
				st, ok := h.SpecialTokens[p.SpecialToken.ID]
				if !ok {
					return nil, componentError(file, "post_processor", "TemplateProcessing uses %q, which is not in its special_tokens", p.SpecialToken.ID)
				}
				for _, id := range st.IDs {
					t.ids, t.isSeq = append(t.ids, id), append(t.isSeq, false)
				}
			default:
				return nil, componentError(file, "post_processor", "TemplateProcessing has an unreadable piece")
			}
		}
		if seqs != 1 {
			return nil, componentError(file, "post_processor", "TemplateProcessing single template has %d sequences", seqs)
		}
		return t, nil
	case "RobertaProcessing", "BertProcessing":
		// "sep": ["</s>", 2], "cls": ["<s>", 0]
		var cls, sep int32
		if len(h.Cls) != 2 || len(h.Sep) != 2 || json.Unmarshal(h.Cls[1], &cls) != nil || json.Unmarshal(h.Sep[1], &sep) != nil {
			return nil, componentError(file, "post_processor", "%s without cls/sep", h.Type)
		}
		return &templateProcessor{ids: []int32{cls, 0, sep}, isSeq: []bool{false, true, false}}, nil
	default:
		return nil, componentError(file, "post_processor", "type %q not supported", h.Type)
	}
}

// --- decoders ---

type decoder interface {
	decode(toks []string) []string
}

type decSequence []decoder

func (q decSequence) decode(toks []string) []string {
	for _, d := range q {
		toks = d.decode(toks)
	}
	return toks
}

type decByteLevel struct{}

func (decByteLevel) decode(toks []string) []string {
	var b []byte
	for _, t := range toks {
		start := len(b)
		ok := true
		for _, r := range t {
			c, found := runeToByte[r]
			if !found {
				ok = false
				break
			}
			b = append(b, c)
		}
		if !ok {
			b = append(b[:start], t...)
		}
	}
	return []string{lossyUTF8(b)}
}

// lossyUTF8 is Rust's String::from_utf8_lossy: one U+FFFD for each maximal
// invalid subsequence.
func lossyUTF8(b []byte) string {
	if utf8.Valid(b) {
		return string(b)
	}
	out := make([]byte, 0, len(b)+8)
	for i := 0; i < len(b); {
		c := b[i]
		if c < 0x80 {
			out = append(out, c)
			i++
			continue
		}
		w, lo, hi := 0, byte(0x80), byte(0xBF)
		switch {
		case c >= 0xC2 && c <= 0xDF:
			w = 2
		case c == 0xE0:
			w, lo = 3, 0xA0
		case c >= 0xE1 && c <= 0xEC, c == 0xEE, c == 0xEF:
			w = 3
		case c == 0xED:
			w, hi = 3, 0x9F
		case c == 0xF0:
			w, lo = 4, 0x90
		case c >= 0xF1 && c <= 0xF3:
			w = 4
		case c == 0xF4:
			w, hi = 4, 0x8F
		}
		if w == 0 {
			out = append(out, "\uFFFD"...)
			i++
			continue
		}
		k := 1
		for k < w && i+k < len(b) {
			x := b[i+k]
			l, h := byte(0x80), byte(0xBF)
			if k == 1 {
				l, h = lo, hi
			}
			if x < l || x > h {
				break
			}
			k++
		}
		if k == w {
			out = append(out, b[i:i+w]...)
		} else {
			out = append(out, "\uFFFD"...)
		}
		i += k
	}
	return string(out)
}

type decReplace struct{ old, new string }

func (d decReplace) decode(toks []string) []string {
	out := make([]string, len(toks))
	for i, t := range toks {
		out[i] = strings.ReplaceAll(t, d.old, d.new)
	}
	return out
}

type decByteFallback struct{}

func (decByteFallback) decode(toks []string) []string {
	var out []string
	var pending []byte
	flush := func() {
		if len(pending) == 0 {
			return
		}
		if utf8.Valid(pending) {
			out = append(out, string(pending))
		} else {
			for range pending {
				out = append(out, "\uFFFD")
			}
		}
		pending = pending[:0]
	}
	for _, t := range toks {
		if len(t) == 6 && t[:3] == "<0x" && t[5] == '>' {
			if v, ok := hexByte(t[3:5]); ok {
				pending = append(pending, v)
				continue
			}
		}
		flush()
		out = append(out, t)
	}
	flush()
	return out
}

func hexByte(s string) (byte, bool) {
	var v byte
	for i := 0; i < 2; i++ {
		c := s[i]
		switch {
		case c >= '0' && c <= '9':
			v = v*16 + c - '0'
		case c >= 'a' && c <= 'f':
			v = v*16 + c - 'a' + 10
		case c >= 'A' && c <= 'F':
			v = v*16 + c - 'A' + 10
		default:
			return 0, false
		}
	}
	return v, true
}

type decFuse struct{}

func (decFuse) decode(toks []string) []string {
	n := 0
	for _, t := range toks {
		n += len(t)
	}
	b := make([]byte, 0, n)
	for _, t := range toks {
		b = append(b, t...)
	}
	return []string{string(b)}
}

type decStrip struct {
	content     rune
	start, stop int
}

func (d decStrip) decode(toks []string) []string {
	out := make([]string, len(toks))
	for i, t := range toks {
		rs := []rune(t)
		startCut := 0
		for j := 0; j < d.start && j < len(rs); j++ {
			if rs[j] != d.content {
				break
			}
			startCut = j + 1
		}
		stopCut := len(rs)
		for j := 0; j < d.stop && j < len(rs); j++ {
			idx := len(rs) - j - 1
			if rs[idx] != d.content {
				break
			}
			stopCut = idx
		}
		if stopCut < startCut {
			stopCut = startCut
		}
		out[i] = string(rs[startCut:stopCut])
	}
	return out
}

type decMetaspace struct {
	replacement rune
	prepend     bool // prepend_scheme is not "never"
}

func (d decMetaspace) decode(toks []string) []string {
	out := make([]string, len(toks))
	for i, t := range toks {
		rs := make([]rune, 0, len(t))
		for _, r := range t {
			if r == d.replacement {
				if i == 0 && d.prepend {
					continue
				}
				r = ' '
			}
			rs = append(rs, r)
		}
		out[i] = string(rs)
	}
	return out
}

func parseDecoder(raw json.RawMessage, file string) (decoder, error) {
	var h struct {
		Type           string            `json:"type"`
		Decoders       []json.RawMessage `json:"decoders"`
		Pattern        pattern           `json:"pattern"`
		Content        string            `json:"content"`
		Start          int               `json:"start"`
		Stop           int               `json:"stop"`
		Replacement    string            `json:"replacement"`
		PrependScheme  string            `json:"prepend_scheme"`
		AddPrefixSpace *bool             `json:"add_prefix_space"`
	}
	if err := json.Unmarshal(raw, &h); err != nil {
		return nil, componentError(file, "decoder", "unreadable: %v", err)
	}
	switch h.Type {
	case "Sequence":
		var q decSequence
		for _, r := range h.Decoders {
			d, err := parseDecoder(r, file)
			if err != nil {
				return nil, err
			}
			q = append(q, d)
		}
		return q, nil
	case "ByteLevel":
		return decByteLevel{}, nil
	case "Replace":
		if h.Pattern.String == nil {
			return nil, componentError(file, "decoder", "Replace with a regular expression is not supported")
		}
		return decReplace{*h.Pattern.String, h.Content}, nil
	case "ByteFallback":
		return decByteFallback{}, nil
	case "Fuse":
		return decFuse{}, nil
	case "Strip":
		rs := []rune(h.Content)
		if len(rs) != 1 {
			return nil, componentError(file, "decoder", "Strip content %q is not one character", h.Content)
		}
		return decStrip{rs[0], h.Start, h.Stop}, nil
	case "Metaspace":
		rs := []rune(h.Replacement)
		if len(rs) == 0 {
			rs = []rune("▁")
		}
		if len(rs) != 1 {
			return nil, componentError(file, "decoder", "Metaspace replacement %q is not one character", h.Replacement)
		}
		scheme := h.PrependScheme
		if scheme == "" {
			scheme = "always"
			if h.AddPrefixSpace != nil && !*h.AddPrefixSpace {
				scheme = "never"
			}
		}
		return decMetaspace{rs[0], scheme != "never"}, nil
	default:
		return nil, componentError(file, "decoder", "type %q not supported", h.Type)
	}
}
