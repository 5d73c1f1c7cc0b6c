#!/bin/bash
# make.sh COMMIT records state-COMMIT.tar.gz for TestUpgradeResume: the state
# directory (Temporal's SQLite database and the artifact store) of a
# `rankzip run` of recipe.yaml by rankzip built at COMMIT, killed (-9) once its
# store holds two of the five blocks. Needs git, go and sqlite3.
set -euo pipefail
commit=${1:?usage: make.sh COMMIT}
here=$(cd "$(dirname "$0")" && pwd)
repo=$(git -C "$here" rev-parse --show-toplevel)
# The job's history records the recipe's absolute paths: the test puts the
# job at this same place (upgradeJob in upgrade_test.go).
job=/tmp/rankzip-upgrade-job
tmp=$(mktemp -d)
cleanup() {
	git -C "$repo" worktree remove --force "$tmp/src" 2>/dev/null || true
	rm -rf "$tmp" "$job"
}
trap cleanup EXIT

git -C "$repo" worktree add --detach "$tmp/src" "$commit"
(cd "$tmp/src" && go build -o "$tmp/rankzip" ./cmd/rankzip)

rm -rf "$job"
mkdir -p "$job"
cp "$here/recipe.yaml" "$job/"
ln -s "$repo/testdata/stories260K" "$job/stories260K"
ln -s "$repo/testdata/samples/calib.parquet" "$job/calib.parquet"

state=$tmp/state
"$tmp/rankzip" run "$job/recipe.yaml" --state "$state" --heartbeat-timeout 2s >"$tmp/run.out" 2>&1 &
pid=$!
blocks() { find "$state/store/keys/block" -name '*.json' ! -name '.*' 2>/dev/null | wc -l; }
until [ "$(blocks)" -ge 2 ]; do
	if ! kill -0 $pid 2>/dev/null; then
		cat "$tmp/run.out"
		echo "make.sh: rankzip run ended before its second block" >&2
		exit 1
	fi
	sleep 0.02
done
kill -9 $pid
wait $pid || true
n=$(blocks)
if [ "$n" -ge 5 ]; then
	echo "make.sh: the job had finished ($n blocks) when it was killed; run make.sh again" >&2
	exit 1
fi

# Keep the database and the store; drop the logs, the lock, the ports (the
# test chooses its own) and the dead server's membership rows (a new server
# would wait for them to expire), and compact the database (this also folds
# its WAL in).
rm -f "$state/rankzip.log" "$state/temporal/server.log" "$state/temporal/lock" "$state/temporal/ports.json"
sqlite3 "$state/temporal/temporal.db" "DELETE FROM cluster_membership; VACUUM;"
rm -f "$state/temporal/temporal.db-wal" "$state/temporal/temporal.db-shm"
tar -C "$state" --sort=name --owner=0 --group=0 -czf "$here/state-$commit.tar.gz" .
echo "state-$commit.tar.gz: $n blocks done when killed, $(stat -c %s "$here/state-$commit.tar.gz") bytes"
