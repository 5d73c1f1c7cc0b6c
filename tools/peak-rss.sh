#!/usr/bin/env bash
# peak-rss.sh: the peak resident memory (/usr/bin/time -v, Maximum resident
# set size) and wall time of whole `rankzip run` jobs on bench-1024
# checkpoints (`rankzip synth`: hidden 1024, intermediate 2816, 16/4 heads,
# vocab 32000, bf16) of growing depth, as a table. Recipe: svd whiten, keep
# 0.8, each rank search of SEARCHES, 12 × 256 calibration tokens and 12
# evaluation sequences, native export. Each run has a fresh state directory.
#
#   tools/peak-rss.sh                      # layers 4 8, searches uniform fisher
#   LAYERS="4 8 16" SEARCHES=fisher GOGCS="100 25" tools/peak-rss.sh
#
# GOGCS lists GOGC values to run with ("" : unset, rankzip's own default).
# WORK (default /tmp/rankzip-peak-rss) holds the binary, checkpoints and runs.
set -euo pipefail
unset GOGC # each run sets its own (GOGCS)
LAYERS=${LAYERS:-"4 8"}
SEARCHES=${SEARCHES:-"uniform fisher"}
GOGCS=${GOGCS:-""}
WORK=${WORK:-/tmp/rankzip-peak-rss}
[ -x /usr/bin/time ] || { echo "peak-rss.sh needs GNU time (Debian: apt-get install -y time)" >&2; exit 1; }
cd "$(dirname "$0")/.."
mkdir -p "$WORK"
go build -o "$WORK/rankzip" ./cmd/rankzip
for l in $LAYERS; do
	[ -f "$WORK/m$l/config.json" ] || "$WORK/rankzip" synth --shape bench-1024 --layers "$l" --out "$WORK/m$l" \
		--calib "$WORK/c$l.parquet" --sequences 12 --seq-len 256 >/dev/null 2>&1
done
printf '%-8s %-6s %6s %14s %10s\n' search GOGC layers "peak RSS KiB" seconds
for gogc in ${GOGCS:-default}; do
	for search in $SEARCHES; do
		for l in $LAYERS; do
			run="$WORK/run-$search-$gogc-$l"
			rm -rf "$run" && mkdir -p "$run"
			cat >"$run/recipe.yaml" <<EOF
model: $WORK/m$l
calibration: {data: $WORK/c$l.parquet, sequences: 12, seq_len: 256}
evaluation: {data: $WORK/c$l.parquet, sequences: 12}
output: $run/out
stages:
  - {method: svd, variant: whiten, keep_params: 0.8, rank_search: $search}
export: {format: native}
EOF
			env_gogc=()
			[ "$gogc" = default ] || env_gogc=(GOGC="$gogc")
			env "${env_gogc[@]}" /usr/bin/time -v -o "$run/time.txt" "$WORK/rankzip" run "$run/recipe.yaml" \
				--state "$run/state" >"$run/log.txt" 2>&1 || { echo "run failed: $run/log.txt" >&2; exit 1; }
			kib=$(awk -F': ' '/Maximum resident/ {print $2}' "$run/time.txt")
			wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {n = split($2, p, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + p[i]; print s}' "$run/time.txt")
			printf '%-8s %-6s %6s %14s %10.1f\n' "$search" "$gogc" "$l" "$kib" "$wall"
		done
	done
done
