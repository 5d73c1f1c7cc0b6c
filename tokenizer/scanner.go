package tokenizer

import (
	"unicode"
	"unicode/utf8"
)

// Hand-written matchers for the split patterns of the GPT-2, Llama 3 and
// Qwen2 families: the same matches as the regular expressions (which the
// tests check against the library), several times faster than Go's regexp
// with the lookahead emulation.

const (
	llama3Pattern = `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
	qwen2Pattern  = `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
)

// knownScanner returns the hand-written matcher of a pattern, or nil.
func knownScanner(pat string) func(s string) [][2]int {
	switch pat {
	case gpt2Pattern:
		return scanGPT2
	case llama3Pattern:
		return func(s string) [][2]int { return scanLlama(s, 3) }
	case qwen2Pattern:
		return func(s string) [][2]int { return scanLlama(s, 1) }
	}
	return nil
}

type class uint8

const (
	cOther class = iota // [^\s\p{L}\p{N}]
	cLetter
	cNumber
	cSpace
)

var asciiClass = func() (t [128]class) {
	for c := 0; c < 128; c++ {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z':
			t[c] = cLetter
		case c >= '0' && c <= '9':
			t[c] = cNumber
		case c == ' ', c >= '\t' && c <= '\r':
			t[c] = cSpace
		}
	}
	return t
}()

// at returns the rune at i, its width and its class; width 0 at the end.
func at(s string, i int) (rune, int, class) {
	if i >= len(s) {
		return 0, 0, cOther
	}
	if c := s[i]; c < utf8.RuneSelf {
		return rune(c), 1, asciiClass[c]
	}
	r, n := utf8.DecodeRuneInString(s[i:])
	switch {
	case unicode.IsLetter(r):
		return r, n, cLetter
	case unicode.IsNumber(r):
		return r, n, cNumber
	case unicode.IsSpace(r):
		return r, n, cSpace
	}
	return r, n, cOther
}

// run returns the end of the run of class k starting at i.
func run(s string, i int, k class) int {
	for i < len(s) {
		_, n, c := at(s, i)
		if c != k {
			break
		}
		i += n
	}
	return i
}

// contraction matches 's|'t|'re|'ve|'m|'ll|'d at i (s[i] == '\”), folding
// case when fold is set; it returns the length or 0.
func contraction(s string, i int, fold bool) int {
	eq := func(j int, want byte) (int, bool) {
		r, n, _ := at(s, j)
		if n == 0 {
			return 0, false
		}
		if rune(want) == r {
			return n, true
		}
		if fold && (unicode.SimpleFold(rune(want)) == r || unicode.ToLower(r) == rune(want) ||
			(want == 's' && r == 0x17F)) {
			return n, true
		}
		return 0, false
	}
	for _, c := range [...]string{"s", "t", "re", "ve", "m", "ll", "d"} {
		j := i + 1
		ok := true
		for k := 0; k < len(c); k++ {
			n, m := eq(j, c[k])
			if !m {
				ok = false
				break
			}
			j += n
		}
		if ok {
			return j - i
		}
	}
	return 0
}

// spaceEnd is the end of `\s+(?!\S)|\s+` at i, the start of a run of white
// space ending at e: the run less its last character when non-space follows
// and the run has more than one.
func spaceEnd(s string, i, e int) int {
	if e == len(s) {
		return e
	}
	_, n := utf8.DecodeLastRuneInString(s[i:e])
	if e-n > i {
		return e - n
	}
	return e
}

func scanGPT2(s string) [][2]int {
	out := make([][2]int, 0, len(s)/4+1)
	for i := 0; i < len(s); {
		r, _, c := at(s, i)
		end := 0
		if r == '\'' {
			if k := contraction(s, i, false); k > 0 {
				end = i + k
			}
		}
		if end == 0 {
			start := i
			if r == ' ' {
				if _, m, c2 := at(s, i+1); m > 0 && c2 != cSpace {
					start, c = i+1, c2 // ` ?X+` with the space
				}
			}
			if c != cSpace {
				end = run(s, start, c)
			} else {
				end = spaceEnd(s, i, run(s, i, cSpace))
			}
		}
		out = append(out, [2]int{i, end})
		i = end
	}
	return out
}

func scanLlama(s string, maxDigits int) [][2]int {
	out := make([][2]int, 0, len(s)/4+1)
	for i := 0; i < len(s); {
		r, n, c := at(s, i)
		end := 0
		if r == '\'' {
			if k := contraction(s, i, true); k > 0 {
				end = i + k
			}
		}
		if end == 0 && c != cLetter && c != cNumber && r != '\r' && r != '\n' {
			// [^\r\n\p{L}\p{N}]\p{L}+
			if _, m, c2 := at(s, i+n); m > 0 && c2 == cLetter {
				end = run(s, i+n, cLetter)
			}
		}
		if end == 0 {
			switch c {
			case cLetter:
				end = run(s, i, cLetter)
			case cNumber:
				end = i
				for d := 0; d < maxDigits; d++ {
					_, m, c2 := at(s, end)
					if m == 0 || c2 != cNumber {
						break
					}
					end += m
				}
			}
		}
		if end == 0 {
			// ` ?[^\s\p{L}\p{N}]+[\r\n]*`
			start := -1
			if c == cOther {
				start = i
			} else if r == ' ' {
				if _, m, c2 := at(s, i+1); m > 0 && c2 == cOther {
					start = i + 1
				}
			}
			if start >= 0 {
				end = run(s, start, cOther)
				for end < len(s) && (s[end] == '\r' || s[end] == '\n') {
					end++
				}
			}
		}
		if end == 0 {
			// c is white space: `\s*[\r\n]+`, else `\s+(?!\S)|\s+`.
			e := run(s, i, cSpace)
			for j := e - 1; j >= i; j-- {
				if s[j] == '\r' || s[j] == '\n' {
					end = j + 1
					break
				}
			}
			if end == 0 {
				end = spaceEnd(s, i, e)
			}
		}
		out = append(out, [2]int{i, end})
		i = end
	}
	return out
}
