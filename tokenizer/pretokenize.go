package tokenizer

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"unicode"
	"unicode/utf8"
)

type preTokenizer interface {
	// preTokenize splits the text pieces further (added tokens pass through);
	// empty pieces are dropped.
	preTokenize(in []piece) []piece
}

// span is a part of a string: a match of a pattern or the text between two.
type span struct {
	start, end int
	match      bool
}

type behavior int

const (
	bRemoved behavior = iota
	bIsolated
	bMergedWithPrevious
	bMergedWithNext
	bContiguous
)

func parseBehavior(s string) (behavior, bool) {
	switch s {
	case "Removed":
		return bRemoved, true
	case "Isolated":
		return bIsolated, true
	case "MergedWithPrevious":
		return bMergedWithPrevious, true
	case "MergedWithNext":
		return bMergedWithNext, true
	case "Contiguous":
		return bContiguous, true
	}
	return 0, false
}

// applyBehavior is NormalizedString::split: it turns the spans (which cover
// the string) into the kept parts.
func applyBehavior(spans []span, b behavior) [][2]int {
	var out [][2]int
	switch b {
	case bIsolated:
		for _, s := range spans {
			out = append(out, [2]int{s.start, s.end})
		}
	case bRemoved:
		for _, s := range spans {
			if !s.match {
				out = append(out, [2]int{s.start, s.end})
			}
		}
	case bContiguous:
		prev := false
		for _, s := range spans {
			if s.match == prev && len(out) > 0 {
				out[len(out)-1][1] = s.end
			} else {
				out = append(out, [2]int{s.start, s.end})
			}
			prev = s.match
		}
	case bMergedWithPrevious:
		prev := false
		for _, s := range spans {
			if s.match && !prev && len(out) > 0 {
				out[len(out)-1][1] = s.end
			} else {
				out = append(out, [2]int{s.start, s.end})
			}
			prev = s.match
		}
	case bMergedWithNext:
		prev := false
		for i := len(spans) - 1; i >= 0; i-- {
			s := spans[i]
			if s.match && !prev && len(out) > 0 {
				out[len(out)-1][0] = s.start
			} else {
				out = append(out, [2]int{s.start, s.end})
			}
			prev = s.match
		}
		for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
			out[i], out[j] = out[j], out[i]
		}
	}
	return out
}

// splitPieces splits every text piece by its spans and a behaviour.
func splitPieces(in []piece, find func(s string) []span, b behavior) []piece {
	out := make([]piece, 0, len(in))
	for _, p := range in {
		if p.id >= 0 {
			out = append(out, p)
			continue
		}
		for _, r := range applyBehavior(find(p.text), b) {
			if r[1] > r[0] {
				out = append(out, piece{text: p.text[r[0]:r[1]], id: -1, atStart: p.atStart && r[0] == 0})
			}
		}
	}
	return out
}

// spansOf makes covering spans from sorted, non-overlapping matches.
func spansOf(n int, matches [][2]int, invert bool) []span {
	var out []span
	at := 0
	for _, m := range matches {
		if m[0] > at {
			out = append(out, span{at, m[0], invert})
		}
		out = append(out, span{m[0], m[1], !invert})
		at = m[1]
	}
	if at < n {
		out = append(out, span{at, n, invert})
	}
	return out
}

// --- Split ---

type splitPre struct {
	find   func(s string) [][2]int
	b      behavior
	invert bool
}

func (p *splitPre) preTokenize(in []piece) []piece {
	return splitPieces(in, func(s string) []span { return spansOf(len(s), p.find(s), p.invert) }, p.b)
}

func literalFinder(lit string) func(s string) [][2]int {
	return func(s string) [][2]int {
		var out [][2]int
		if lit == "" {
			return nil
		}
		at := 0
		for {
			i := strings.Index(s[at:], lit)
			if i < 0 {
				return out
			}
			out = append(out, [2]int{at + i, at + i + len(lit)})
			at += i + len(lit)
		}
	}
}

// --- regular expressions ---

// Oniguruma's \s (Unicode White_Space) and \w, spelled for Go's regexp.
const (
	wsClassBody   = `\t\n\v\f\r \x{85}\p{Z}`
	wordClassBody = `\p{L}\p{M}\p{Nd}\p{Pc}`
	lookaheadWS   = `\s+(?!\S)|\s+`
)

// translateRegex turns a pattern of the tokenizers library (Oniguruma syntax)
// into Go syntax. The `\s+(?!\S)|\s+` idiom of the GPT-2 family becomes a
// capturing group whose match the finder shortens by one character when
// non-space follows (which is what the lookahead does); any other lookaround
// is refused.
func translateRegex(pat string) (string, bool, error) {
	var b strings.Builder
	ws := false
	inClass := false
	classStart := 0
	for i := 0; i < len(pat); {
		if !inClass && strings.HasPrefix(pat[i:], lookaheadWS) {
			if ws {
				return "", false, fmt.Errorf("the lookahead idiom %s appears twice", lookaheadWS)
			}
			ws = true
			b.WriteString(`([` + wsClassBody + `]+)`)
			i += len(lookaheadWS)
			continue
		}
		c := pat[i]
		switch {
		case c == '\\':
			if i+1 >= len(pat) {
				return "", false, fmt.Errorf("trailing backslash")
			}
			e := pat[i+1]
			switch e {
			case 's':
				if inClass {
					b.WriteString(wsClassBody)
				} else {
					b.WriteString(`[` + wsClassBody + `]`)
				}
			case 'S':
				if inClass {
					return "", false, fmt.Errorf(`\S inside a character class is not supported`)
				}
				b.WriteString(`[^` + wsClassBody + `]`)
			case 'w':
				if inClass {
					b.WriteString(wordClassBody)
				} else {
					b.WriteString(`[` + wordClassBody + `]`)
				}
			case 'W':
				if inClass {
					return "", false, fmt.Errorf(`\W inside a character class is not supported`)
				}
				b.WriteString(`[^` + wordClassBody + `]`)
			case 'd':
				b.WriteString(`\p{Nd}`)
			case 'D':
				b.WriteString(`\P{Nd}`)
			case 'h', 'H', 'R', 'X', 'K', 'G', 'A', 'Z', 'z', 'b', 'B', 'k', 'g':
				return "", false, fmt.Errorf(`\%c is not supported`, e)
			default:
				// \p{..}, \x.., \r, \n, escaped punctuation: the same in Go.
				b.WriteByte('\\')
				b.WriteByte(e)
			}
			i += 2
			continue
		case c == '[':
			if inClass {
				return "", false, fmt.Errorf("nested character classes are not supported")
			}
			inClass = true
			b.WriteByte(c)
			i++
			if i < len(pat) && pat[i] == '^' {
				b.WriteByte('^')
				i++
			}
			classStart = i
			continue
		case c == ']' && inClass && i > classStart:
			inClass = false
		case c == '(' && !inClass && strings.HasPrefix(pat[i:], "(?"):
			rest := pat[i+2:]
			if strings.HasPrefix(rest, "=") || strings.HasPrefix(rest, "!") || strings.HasPrefix(rest, "<=") ||
				strings.HasPrefix(rest, "<!") || strings.HasPrefix(rest, ">") {
				return "", false, fmt.Errorf("lookaround and atomic groups are not supported")
			}
		}
		b.WriteByte(c)
		i++
	}
	return b.String(), ws, nil
}

// regexFinder returns the matches of a tokenizers-library pattern.
func regexFinder(pat string) (func(s string) [][2]int, error) {
	goPat, ws, err := translateRegex(pat)
	if err != nil {
		return nil, err
	}
	re, err := regexp.Compile(goPat)
	if err != nil {
		return nil, err
	}
	if sc := knownScanner(pat); sc != nil {
		return sc, nil
	}
	if !ws {
		return func(s string) [][2]int {
			var out [][2]int
			for _, m := range re.FindAllStringIndex(s, -1) {
				if m[1] > m[0] {
					out = append(out, [2]int{m[0], m[1]})
				}
			}
			return out
		}, nil
	}
	return func(s string) [][2]int {
		var out [][2]int
		at := 0
		for at < len(s) {
			m := re.FindStringSubmatchIndex(s[at:])
			if m == nil {
				break
			}
			start, end := at+m[0], at+m[1]
			if m[2] >= 0 && end < len(s) {
				// \s+(?!\S): a run of white space followed by non-space
				// gives back its last character, unless it is its only one.
				_, n := utf8.DecodeLastRuneInString(s[start:end])
				if end-n > start {
					end -= n
				}
			}
			if end == start { // an empty match: step over one character
				_, n := utf8.DecodeRuneInString(s[at:])
				at += n
				continue
			}
			out = append(out, [2]int{start, end})
			at = end
		}
		return out
	}, nil
}

// --- ByteLevel ---

var byteToRune, runeToByte = byteLevelTables()

// byteLevelTables is GPT-2's bytes_to_unicode.
func byteLevelTables() ([256]rune, map[rune]byte) {
	var b2r [256]rune
	r2b := map[rune]byte{}
	n := 0
	for b := 0; b < 256; b++ {
		if (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF) {
			b2r[b] = rune(b)
		} else {
			b2r[b] = rune(256 + n)
			n++
		}
		r2b[b2r[b]] = byte(b)
	}
	return b2r, r2b
}

// byteLevelString maps every byte of s to its printable stand-in.
func byteLevelString(s string) string {
	var b strings.Builder
	b.Grow(len(s) * 2)
	for i := 0; i < len(s); i++ {
		b.WriteRune(byteToRune[s[i]])
	}
	return b.String()
}

const gpt2Pattern = `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`

type byteLevelPre struct {
	addPrefixSpace bool
	find           func(s string) [][2]int // nil: use_regex false
}

func (p *byteLevelPre) preTokenize(in []piece) []piece {
	out := make([]piece, 0, len(in))
	for _, q := range in {
		if q.id >= 0 {
			out = append(out, q)
			continue
		}
		s := q.text
		if p.addPrefixSpace && !strings.HasPrefix(s, " ") {
			s = " " + s
		}
		if p.find == nil {
			out = append(out, piece{text: byteLevelString(s), id: -1, atStart: q.atStart})
			continue
		}
		for _, r := range applyBehavior(spansOf(len(s), p.find(s), false), bIsolated) {
			if r[1] > r[0] {
				out = append(out, piece{text: byteLevelString(s[r[0]:r[1]]), id: -1, atStart: q.atStart && r[0] == 0})
			}
		}
	}
	return out
}

// --- Metaspace ---

type metaspacePre struct {
	replacement string
	scheme      string // always, first, never
	split       bool
}

func (p *metaspacePre) preTokenize(in []piece) []piece {
	out := make([]piece, 0, len(in))
	for _, q := range in {
		if q.id >= 0 {
			out = append(out, q)
			continue
		}
		s := strings.ReplaceAll(q.text, " ", p.replacement)
		if !strings.HasPrefix(s, p.replacement) && (p.scheme == "always" || (p.scheme == "first" && q.atStart)) {
			s = p.replacement + s
		}
		if !p.split {
			out = append(out, piece{text: s, id: -1, atStart: q.atStart})
			continue
		}
		spans := spansOf(len(s), literalFinder(p.replacement)(s), false)
		for _, r := range applyBehavior(spans, bMergedWithNext) {
			if r[1] > r[0] {
				out = append(out, piece{text: s[r[0]:r[1]], id: -1, atStart: q.atStart && r[0] == 0})
			}
		}
	}
	return out
}

// --- Digits ---

func isNumeric(r rune) bool { return unicode.In(r, unicode.Nd, unicode.Nl, unicode.No) }

func digitSpans(s string) []span {
	var out []span
	at := 0
	for i, r := range s {
		if isNumeric(r) {
			if i > at {
				out = append(out, span{at, i, false})
			}
			n := utf8.RuneLen(r)
			out = append(out, span{i, i + n, true})
			at = i + n
		}
	}
	if at < len(s) {
		out = append(out, span{at, len(s), false})
	}
	return out
}

type digitsPre struct{ individual bool }

func (p *digitsPre) preTokenize(in []piece) []piece {
	if p.individual {
		return splitPieces(in, digitSpans, bIsolated)
	}
	return splitPieces(in, digitSpans, bContiguous)
}

// --- Sequence ---

type preSequence []preTokenizer

func (q preSequence) preTokenize(in []piece) []piece {
	for _, p := range q {
		in = p.preTokenize(in)
	}
	return in
}

func parsePreTokenizer(raw json.RawMessage, file string) (preTokenizer, error) {
	var h struct {
		Type             string            `json:"type"`
		PreTokenizers    []json.RawMessage `json:"pretokenizers"`
		Pattern          pattern           `json:"pattern"`
		Behavior         string            `json:"behavior"`
		Invert           bool              `json:"invert"`
		AddPrefixSpace   *bool             `json:"add_prefix_space"`
		UseRegex         *bool             `json:"use_regex"`
		Replacement      string            `json:"replacement"`
		PrependScheme    string            `json:"prepend_scheme"`
		Split            *bool             `json:"split"`
		IndividualDigits bool              `json:"individual_digits"`
	}
	if err := json.Unmarshal(raw, &h); err != nil {
		return nil, componentError(file, "pre_tokenizer", "unreadable: %v", err)
	}
	switch h.Type {
	case "Sequence":
		var q preSequence
		for _, r := range h.PreTokenizers {
			p, err := parsePreTokenizer(r, file)
			if err != nil {
				return nil, err
			}
			q = append(q, p)
		}
		return q, nil
	case "Split":
		b, ok := parseBehavior(h.Behavior)
		if !ok {
			return nil, componentError(file, "pre_tokenizer", "Split behavior %q not supported", h.Behavior)
		}
		p := &splitPre{b: b, invert: h.Invert}
		switch {
		case h.Pattern.String != nil:
			p.find = literalFinder(*h.Pattern.String)
		case h.Pattern.Regex != nil:
			f, err := regexFinder(*h.Pattern.Regex)
			if err != nil {
				return nil, componentError(file, "pre_tokenizer", "Split regex %q not supported: %v", *h.Pattern.Regex, err)
			}
			p.find = f
		default:
			return nil, componentError(file, "pre_tokenizer", "Split without a pattern")
		}
		return p, nil
	case "ByteLevel":
		p := &byteLevelPre{addPrefixSpace: h.AddPrefixSpace == nil || *h.AddPrefixSpace}
		if h.UseRegex == nil || *h.UseRegex {
			f, err := regexFinder(gpt2Pattern)
			if err != nil {
				return nil, err
			}
			p.find = f
		}
		return p, nil
	case "Metaspace":
		p := &metaspacePre{replacement: h.Replacement, scheme: h.PrependScheme, split: h.Split == nil || *h.Split}
		if p.replacement == "" {
			p.replacement = "▁"
		}
		if p.scheme == "" {
			p.scheme = "always"
			if h.AddPrefixSpace != nil && !*h.AddPrefixSpace {
				p.scheme = "never"
			}
		}
		if p.scheme != "always" && p.scheme != "first" && p.scheme != "never" {
			return nil, componentError(file, "pre_tokenizer", "Metaspace prepend_scheme %q not supported", p.scheme)
		}
		return p, nil
	case "Digits":
		return &digitsPre{individual: h.IndividualDigits}, nil
	default:
		return nil, componentError(file, "pre_tokenizer", "type %q not supported", h.Type)
	}
}
