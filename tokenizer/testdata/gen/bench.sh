#!/bin/sh
# Tokens/s of rankzip's tokenizer and of the real tokenizers library (node) on
# the same documents: a snapshot of every Go and Markdown file of the
# repository, one document per file, one document at a time, on this machine.
set -e
cd "$(dirname "$0")"
[ -d node_modules/tokenizers ] || npm ci --no-audit --no-fund >/dev/null
root=$(git rev-parse --show-toplevel)
snap=$(mktemp -d)
trap 'rm -rf "$snap"' EXIT
(cd "$root" && git ls-files '*.go' '*.md' | sort | tar -cf - -T -) | (cd "$snap" && tar -xf -)
(cd "$snap" && find . -type f | sort | sed "s|^\.|$snap|") > "$snap.list"
node bench.js $(cat "$snap.list")
cd "$root" && RANKZIP_TOKENIZER_BENCH_FILES="$snap.list" go test -run XXX -bench EncodeFiles -benchtime 1x ./tokenizer/ | grep '^rankzip'
rm -f "$snap.list"
