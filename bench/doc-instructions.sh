#!/usr/bin/env bash
# User-space instructions of a document-room server under a small fixed load, by component:
# `nimbus serve` runs under `valgrind --tool=callgrind` and `nimbus bench doc` (10 docs x 5
# editors x 4 edits/s, 1 s warm-up + 10 s, ~2,200 edits and ~8,000 deliveries) drives it
# over loopback. Instruction counts do not depend on what else the machine is doing, so two
# builds compare in one run each where CPU percentages need many interleaved runs; the
# kernel's part (the sends) is not counted. Prints the total and the inclusive counts of the
# apply path, the validation replica, the store's commit and compaction, and the fan-out
# (the total includes the shutdown, whose compactions may or may not have run: compare the
# components);
# `Room::broadcast`'s count is the same for the same number of deliveries, which checks that
# two runs did the same work.
#
#   bench/doc-instructions.sh [NIMBUS_BIN] [GEN_BIN]   # needs valgrind (Debian: valgrind)
#   CALLGRIND_OUT=/tmp/a.out bench/doc-instructions.sh  (keep the profile: callgrind_annotate)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${1:-target/release/nimbus}"
GEN="${2:-$BIN}"
PORT="${SERVER_PORT:-19961}"
command -v valgrind >/dev/null || { echo "valgrind not found (Debian: apt-get install valgrind)" >&2; exit 1; }
DATA="$(mktemp -d)"
OUT="${CALLGRIND_OUT:-$DATA/callgrind.out}"
valgrind --tool=callgrind --callgrind-out-file="$OUT" \
    "$BIN" serve --listen "127.0.0.1:$PORT" --data-dir "$DATA/data" >"$DATA/serve.log" 2>&1 &
SPID=$!
trap 'kill "$SPID" 2>/dev/null || true; wait "$SPID" 2>/dev/null || true; rm -rf "$DATA"' EXIT
for _ in $(seq 1 120); do
    curl -fs -o /dev/null "http://127.0.0.1:$PORT/healthz" && break
    sleep 0.5
done
timeout 120 "$GEN" bench doc --url "ws://127.0.0.1:$PORT/doc" --docs 10 --editors 5 --rate 4 \
    --warmup 1 --duration 10 --threads 1 --apply one --json >"$DATA/gen.log" 2>&1
tail -1 "$DATA/gen.log"
# SIGINT: the server shuts down (rooms empty, logs compacted), and callgrind writes its file.
kill -INT "$SPID"
wait "$SPID" 2>/dev/null || true
callgrind_annotate --inclusive=yes "$OUT" 2>/dev/null |
    grep -E 'PROGRAM TOTALS|Room::apply_checked|Room::integrate |Validator::check|Backend>::commit|compaction_thread|Room::broadcast' |
    sed -E 's/ *\([ 0-9.%]+\) +/ /; s/\?\?\?://; s/ \[.*\]$//'
