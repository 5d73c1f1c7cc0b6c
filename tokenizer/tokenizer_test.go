package tokenizer

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
)

// expected is testdata/expected.json.gz, written by testdata/gen/gen.js with
// the real tokenizers library.
type expected struct {
	Generator   string   `json:"generator"`
	RandomTexts []string `json:"random_texts"`
	Cases       []struct {
		Name    string                     `json:"name"`
		Dir     string                     `json:"dir"`
		Patch   map[string]json.RawMessage `json:"patch"`
		Results []struct {
			IDs        []int32 `json:"ids"`
			IDsPlain   []int32 `json:"ids_plain"`
			Decode     string  `json:"decode"`
			DecodeSkip string  `json:"decode_skip"`
		} `json:"results"`
		Decodes []struct {
			IDs        []int32 `json:"ids"`
			Decode     string  `json:"decode"`
			DecodeSkip string  `json:"decode_skip"`
		} `json:"decodes"`
	} `json:"cases"`
}

func readGz(t testing.TB, path string) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if _, err := b.ReadFrom(zr); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

var (
	loadOnce sync.Once
	exp      expected
	corpus   []string
)

func loadExpected(t testing.TB) {
	loadOnce.Do(func() {
		if err := json.Unmarshal(readGz(t, "testdata/expected.json.gz"), &exp); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile("testdata/corpus.json")
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(b, &corpus); err != nil {
			t.Fatal(err)
		}
		corpus = append(corpus, exp.RandomTexts...)
	})
}

var tokCache sync.Map

// loadCase reads testdata/DIR/tokenizer.json.gz with the patch applied (the
// top-level fields replaced), and DIR/tokenizer_config.json.
func loadCase(t testing.TB, dir string, patch map[string]json.RawMessage) *Tokenizer {
	t.Helper()
	key := dir + fmt.Sprint(patch)
	if v, ok := tokCache.Load(key); ok {
		return v.(*Tokenizer)
	}
	raw := readGz(t, filepath.Join("testdata", dir, "tokenizer.json.gz"))
	if patch != nil {
		var m map[string]json.RawMessage
		if err := json.Unmarshal(raw, &m); err != nil {
			t.Fatal(err)
		}
		for k, v := range patch {
			m[k] = v
		}
		var err error
		if raw, err = json.Marshal(m); err != nil {
			t.Fatal(err)
		}
	}
	tmp := t.TempDir()
	if err := os.WriteFile(filepath.Join(tmp, "tokenizer.json"), raw, 0o644); err != nil {
		t.Fatal(err)
	}
	if cfg, err := os.ReadFile(filepath.Join("testdata", dir, "tokenizer_config.json")); err == nil {
		if err := os.WriteFile(filepath.Join(tmp, "tokenizer_config.json"), cfg, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	tok, err := Load(tmp)
	if err != nil {
		t.Fatal(err)
	}
	tokCache.Store(key, tok)
	return tok
}

// TestMatchesLibrary compares ids (with and without special tokens) and
// decodings with the real library's, text for text.
func TestMatchesLibrary(t *testing.T) {
	loadExpected(t)
	for _, c := range exp.Cases {
		t.Run(c.Name, func(t *testing.T) {
			tok := loadCase(t, c.Dir, c.Patch)
			if len(c.Results) != len(corpus) {
				t.Fatalf("%d results for %d texts: regenerate testdata", len(c.Results), len(corpus))
			}
			bad := 0
			for i, text := range corpus {
				r := c.Results[i]
				got := tok.Encode(text, true)
				if !slices.Equal(got, r.IDs) {
					bad++
					t.Errorf("text %d %q with special tokens:\n got %v\nwant %v", i, clip(text), got, r.IDs)
				}
				if got := tok.Encode(text, false); !slices.Equal(got, r.IDsPlain) {
					bad++
					t.Errorf("text %d %q without special tokens:\n got %v\nwant %v", i, clip(text), got, r.IDsPlain)
				}
				if got := tok.Decode(r.IDs, false); got != r.Decode {
					bad++
					t.Errorf("text %d decode:\n got %q\nwant %q", i, got, r.Decode)
				}
				if got := tok.Decode(r.IDs, true); got != r.DecodeSkip {
					bad++
					t.Errorf("text %d decode skipping special tokens:\n got %q\nwant %q", i, got, r.DecodeSkip)
				}
				if bad > 10 {
					t.Fatal("too many differences")
				}
			}
			for i, d := range c.Decodes {
				if got := tok.Decode(d.IDs, false); got != d.Decode {
					bad++
					t.Errorf("random ids %d %v decode:\n got %q\nwant %q", i, d.IDs, got, d.Decode)
				}
				if got := tok.Decode(d.IDs, true); got != d.DecodeSkip {
					bad++
					t.Errorf("random ids %d %v decode skipping special tokens:\n got %q\nwant %q", i, d.IDs, got, d.DecodeSkip)
				}
				if bad > 10 {
					t.Fatal("too many differences")
				}
			}
			t.Logf("%s: %d texts, %d random id sequences decoded, %d differences (%s)", c.Name, len(corpus), len(c.Decodes), bad, exp.Generator)
		})
	}
}

func clip(s string) string {
	if len(s) > 80 {
		return s[:80] + "…"
	}
	return s
}

// TestConcurrentEncode: one tokenizer shared by goroutines (the word cache).
func TestConcurrentEncode(t *testing.T) {
	loadExpected(t)
	tok := loadCase(t, "llama3.1", nil)
	want := make([][]int32, len(corpus))
	for i, s := range corpus {
		want[i] = tok.Encode(s, true)
	}
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i, s := range corpus {
				if got := tok.Encode(s, true); !slices.Equal(got, want[i]) {
					t.Errorf("text %d differs under concurrency", i)
					return
				}
			}
		}()
	}
	wg.Wait()
}
