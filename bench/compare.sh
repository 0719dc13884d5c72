#!/usr/bin/env bash
# Two nimbus builds, interleaved in one sitting: for each round, every cloud shape on build A
# then on build B (bench/cloud.sh with SERVER_BIN; the generator is this checkout's), then
# `nimbus bench gateway` of A then of B (each runs its own server in process). Rounds default
# to 3; take medians per build from the printed JSON lines.
#
#   bench/compare.sh /path/to/nimbus-before target/release/nimbus [shapes...]
#
# Build the "before" binary from a worktree of the older commit with its own target dir, e.g.
#   git worktree add --detach /tmp/before <commit> &&
#   (cd /tmp/before && CARGO_TARGET_DIR=/tmp/before-target cargo build --release -p nimbus)
set -euo pipefail
cd "$(dirname "$0")/.."
A=$1 B=$2; shift 2
SHAPES=("$@"); [[ ${#SHAPES[@]} -gt 0 ]] || SHAPES=(idle fanout oneroom)
ROUNDS="${ROUNDS:-3}"
for round in $(seq "$ROUNDS"); do
    for bin in "$A" "$B"; do
        echo "# round $round server $bin"
        SERVER_BIN="$bin" RUNS=1 bench/cloud.sh "${SHAPES[@]}" | grep '^{' | sed "s|^{|{\"build\": \"$bin\", |"
        taskset -c 0,1 "$bin" bench gateway --shards 4 --runs 1 --json | grep '^{' | sed "s|^{|{\"build\": \"$bin\", \"shape\": \"gateway\", |"
    done
done
