package tokenizer

import (
	"sort"
	"unicode"
	"unicode/utf8"
)

// addedToken is an entry of tokenizer.json's added_tokens.
type addedToken struct {
	ID         int32  `json:"id"`
	Content    string `json:"content"`
	SingleWord bool   `json:"single_word"`
	LStrip     bool   `json:"lstrip"`
	RStrip     bool   `json:"rstrip"`
	Normalized bool   `json:"normalized"`
	Special    bool   `json:"special"`
}

// addedVocab finds added tokens in text: first those matched against the raw
// text (normalized: false), then, after normalization, the others against the
// normalized text, leftmost-longest, as the library's AddedVocabulary.
type addedVocab struct {
	byID           map[int32]addedToken
	byContent      map[string]int32
	special        map[string]bool
	normalizedForm map[int32]string // normalized content where it differs (used when decoding)
	raw, norm      matcher
}

// matcher holds patterns indexed by their first byte, longest first.
type matcher struct {
	first [256][]matchEntry
	any   bool
}

type matchEntry struct {
	pat string
	tok addedToken
}

func (m *matcher) add(pat string, tok addedToken) {
	b := pat[0]
	m.first[b] = append(m.first[b], matchEntry{pat, tok})
	m.any = true
}

func (m *matcher) finish() {
	for b := range m.first {
		l := m.first[b]
		sort.SliceStable(l, func(i, j int) bool { return len(l[i].pat) > len(l[j].pat) })
	}
}

// next returns the leftmost-longest match at or after from.
func (m *matcher) next(s string, from int) (start, end int, tok addedToken, ok bool) {
	for i := from; i < len(s); i++ {
		for _, e := range m.first[s[i]] {
			if len(s)-i >= len(e.pat) && s[i:i+len(e.pat)] == e.pat {
				return i, i + len(e.pat), e.tok, true
			}
		}
	}
	return 0, 0, addedToken{}, false
}

// newAddedVocab adds the tokens as the library does when it reads a file
// (AddedVocabulary::add_tokens): the ids in the file are not used; a token
// whose content is already an added token or in the model's vocabulary gets
// that id, any other the next id from the model's vocabulary size on.
func newAddedVocab(toks []addedToken, m model, n normalizer, file string) (*addedVocab, error) {
	a := &addedVocab{
		byID:           map[int32]addedToken{},
		byContent:      map[string]int32{},
		special:        map[string]bool{},
		normalizedForm: map[int32]string{},
	}
	nextID := int32(m.vocabLen())
	for _, t := range toks {
		if t.Content == "" {
			continue
		}
		if id, ok := a.byContent[t.Content]; ok && a.byID[id] == t {
			continue
		}
		id, ok := a.byContent[t.Content]
		if !ok {
			id, ok = m.tokenToID(t.Content)
		}
		if !ok {
			id = nextID
			nextID++
		}
		t.ID = id
		a.byID[id] = t
		a.byContent[t.Content] = id
		if t.Special {
			a.special[t.Content] = true
		}
		pat := t.Content
		if t.Normalized {
			if n != nil {
				pat = n.normalize(pat)
				if pat != t.Content {
					a.normalizedForm[id] = pat
				}
			}
			if pat != "" {
				a.norm.add(pat, t)
			}
		} else {
			a.raw.add(pat, t)
		}
	}
	a.raw.finish()
	a.norm.finish()
	return a, nil
}

// split extracts added tokens from the text pieces; with normalize, each text
// piece is first normalized by n (which may be nil) and matched against the
// normalized tokens.
func (a *addedVocab) split(in []piece, normalize bool, n normalizer) []piece {
	m := &a.raw
	if normalize {
		m = &a.norm
	}
	out := in[:0:0]
	for _, p := range in {
		if p.id >= 0 {
			out = append(out, p)
			continue
		}
		s := p.text
		if normalize && n != nil {
			s = n.normalize(s)
		}
		if !m.any {
			if s != "" {
				out = append(out, piece{text: s, id: -1, atStart: p.atStart})
			}
			continue
		}
		startOffset := 0
		pos := 0
		for {
			start, stop, tok, ok := m.next(s, pos)
			if !ok {
				break
			}
			pos = stop
			if tok.SingleWord {
				startSpace := start == 0 || !endsWithWord(s[:start])
				stopSpace := stop == len(s) || !startsWithWord(s[stop:])
				if !startSpace || !stopSpace {
					continue
				}
			}
			if tok.LStrip {
				ns := spaceLeftmostAtEnd(s[:start])
				if ns < startOffset {
					ns = startOffset
				}
				start = ns
			}
			if tok.RStrip {
				stop += spaceRightmostAtStart(s[stop:])
				pos = stop
			}
			if startOffset < start {
				out = append(out, piece{text: s[startOffset:start], id: -1, atStart: p.atStart && startOffset == 0})
			}
			out = append(out, piece{text: s[start:stop], id: tok.ID})
			startOffset = stop
		}
		if startOffset < len(s) {
			out = append(out, piece{text: s[startOffset:], id: -1, atStart: p.atStart && startOffset == 0})
		}
	}
	return out
}

// isWordRune is the regex crate's Unicode \w.
func isWordRune(r rune) bool {
	return r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r) || unicode.Is(unicode.M, r) ||
		unicode.Is(unicode.Pc, r) || unicode.Is(unicode.Nd, r) || r == 0x200C || r == 0x200D
}

func endsWithWord(s string) bool {
	r, n := utf8.DecodeLastRuneInString(s)
	return n > 0 && isWordRune(r)
}

func startsWithWord(s string) bool {
	r, n := utf8.DecodeRuneInString(s)
	return n > 0 && isWordRune(r)
}

// spaceLeftmostAtEnd is the start of the trailing run of white space of s.
func spaceLeftmostAtEnd(s string) int {
	i := len(s)
	for i > 0 {
		r, n := utf8.DecodeLastRuneInString(s[:i])
		if !unicode.IsSpace(r) {
			break
		}
		i -= n
	}
	return i
}

// spaceRightmostAtStart is the length of the leading run of white space of s.
func spaceRightmostAtStart(s string) int {
	i := 0
	for i < len(s) {
		r, n := utf8.DecodeRuneInString(s[i:])
		if !unicode.IsSpace(r) {
			break
		}
		i += n
	}
	return i
}
