package tokenizer

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
)

// BenchmarkEncodeFiles encodes the files listed (one path a line) in
// $RANKZIP_TOKENIZER_BENCH_FILES, one document each, with each tokenizer of
// testdata, and prints tokens/s in the format of testdata/gen/bench.js
// (testdata/gen/bench.sh runs both). Without the variable it encodes the
// test corpus 50 times.
func BenchmarkEncodeFiles(b *testing.B) {
	var docs []string
	if list := os.Getenv("RANKZIP_TOKENIZER_BENCH_FILES"); list != "" {
		data, err := os.ReadFile(list)
		if err != nil {
			b.Fatal(err)
		}
		for _, f := range strings.Fields(string(data)) {
			d, err := os.ReadFile(f)
			if err != nil {
				b.Fatal(err)
			}
			docs = append(docs, string(d))
		}
	} else {
		loadExpected(b)
		for i := 0; i < 50; i++ {
			docs = append(docs, corpus...)
		}
	}
	bytes := 0
	for _, d := range docs {
		bytes += len(d)
	}
	for _, dir := range []string{"gpt2", "llama3.1", "qwen3", "mistral7b"} {
		tok := loadCase(b, dir, nil)
		best := time.Duration(1 << 62)
		tokens := 0
		for pass := 0; pass < 3; pass++ {
			t0 := time.Now()
			tokens = 0
			var ids []int32
			for _, d := range docs {
				ids = tok.AppendEncode(ids[:0], d, false)
				tokens += len(ids)
			}
			if s := time.Since(t0); s < best {
				best = s
			}
		}
		s := best.Seconds()
		fmt.Printf("rankzip (Go) %s: %d docs, %.2f MB, %d tokens, %.3f M tokens/s, %.2f MB/s\n",
			dir, len(docs), float64(bytes)/1e6, tokens, float64(tokens)/s/1e6, float64(bytes)/s/1e6)
	}
}
