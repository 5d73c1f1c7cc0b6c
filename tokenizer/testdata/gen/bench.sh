#!/bin/sh
# Tokens/s of rankzip's tokenizer and of the real tokenizers library (node) on
# the same documents: every Go and Markdown file of the repository, one
# document per file, one document at a time, on this machine.
set -e
cd "$(dirname "$0")"
[ -d node_modules/tokenizers ] || npm ci --no-audit --no-fund >/dev/null
root=$(git rev-parse --show-toplevel)
list=$(mktemp)
(cd "$root" && git ls-files '*.go' '*.md' | sort | sed "s|^|$root/|") > "$list"
node bench.js $(cat "$list")
cd "$root" && RANKZIP_TOKENIZER_BENCH_FILES="$list" go test -run XXX -bench EncodeFiles -benchtime 1x ./tokenizer/ | grep -v '^goos\|^goarch\|^pkg\|^cpu'
rm -f "$list"
