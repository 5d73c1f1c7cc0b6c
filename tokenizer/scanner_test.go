package tokenizer

import (
	"regexp"
	"slices"
	"testing"
	"unicode/utf8"
)

// regexpFinder is the general path (Go's regexp with the lookahead
// emulated), bypassing the hand-written scanners.
func regexpFinder(t testing.TB, pat string) func(string) [][2]int {
	goPat, ws, err := translateRegex(pat)
	if err != nil || !ws {
		t.Fatalf("%s: %v", pat, err)
	}
	re := regexp.MustCompile(goPat)
	return func(s string) [][2]int {
		var out [][2]int
		for at := 0; at < len(s); {
			m := re.FindStringSubmatchIndex(s[at:])
			if m == nil {
				break
			}
			start, end := at+m[0], at+m[1]
			if m[2] >= 0 && end < len(s) {
				if _, n := utf8.DecodeLastRuneInString(s[start:end]); end-n > start {
					end -= n
				}
			}
			out = append(out, [2]int{start, end})
			at = end
		}
		return out
	}
}

var scannerPatterns = []string{gpt2Pattern, llama3Pattern, qwen2Pattern}

// TestScannersMatchRegexp: the hand-written scanners split every test text
// exactly as the regular expressions do (the library comparison covers the
// scanners; this keeps the general path checked on the same patterns).
func TestScannersMatchRegexp(t *testing.T) {
	loadExpected(t)
	for _, pat := range scannerPatterns {
		sc, re := knownScanner(pat), regexpFinder(t, pat)
		for i, s := range corpus {
			if got, want := sc(s), re(s); !slices.Equal(got, want) {
				t.Fatalf("pattern %s, text %d %q:\nscanner %v\n regexp %v", pat, i, s, got, want)
			}
		}
	}
}

func FuzzScanners(f *testing.F) {
	for _, s := range []string{"Hello  world\n\n  x", "I'M 'll 're\t\t1234", "a\r\n\r\n b", "¿ñ? 😀  \u00a0x", "ſ 'ſ 'S"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if !utf8.ValidString(s) {
			return
		}
		for _, pat := range scannerPatterns {
			if got, want := knownScanner(pat)(s), regexpFinder(t, pat)(s); !slices.Equal(got, want) {
				t.Fatalf("pattern %s, %q:\nscanner %v\n regexp %v", pat, s, got, want)
			}
		}
	})
}
