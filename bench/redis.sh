#!/usr/bin/env bash
# Cross-node benchmark for docs/benchmarks.md: the same `nimbus bench cloud` (or, with
# BENCH=doc, `nimbus bench doc`) shape against
#   single  one node, embedded store (the default)
#   redis1  one node with --redis
#   redis3  three nodes with --redis; client n connects to node n % 3, so every room's
#           publishers and receivers are spread over the nodes (cross-node fan-out)
# Redis: a local redis-server (installed with apt-get when missing), AOF everysec, no RDB.
# Loopback only; every run is bounded in time. Prints one JSON line per run and the medians.
#
#   bench/redis.sh                  # all modes, RUNS=3 each
#   RUNS=1 bench/redis.sh redis3    # one mode
#   SHAPE="--rooms 50 --clients 10 --publishers 2 --rate 50" bench/redis.sh
#   BENCH=doc bench/redis.sh        # document rooms (SHAPE default: 50 docs x 6 editors x 5/s)
#   SERVER_BIN=/tmp/old/nimbus bench/redis.sh single   (the nodes from another build)
#   BIN=/path/nimbus SKIP_BUILD=1 bench/redis.sh       (the load generator of another build;
#                                   default: $CARGO_TARGET_DIR/release/nimbus, else target/)
# With Redis each line also has redis_cpu_s (redis-server's user+system CPU over the whole
# bench run, warm-up included) and redis_cpu_us_per_set (that CPU over the sets sent in
# it: sets_per_s x (warm-up + duration)).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${RUNS:-3}"
MODES=("$@"); [[ ${#MODES[@]} -gt 0 ]] || MODES=(single redis1 redis3)
BENCH="${BENCH:-cloud}"
case "$BENCH" in
    cloud) SHAPE="${SHAPE:---rooms 50 --clients 10 --publishers 2 --rate 50}"; PATH_SUFFIX=/ ;;
    doc) SHAPE="${SHAPE:---docs 50 --editors 6 --rate 5}"; PATH_SUFFIX=/doc ;;
    *) echo "BENCH must be cloud or doc" >&2; exit 2 ;;
esac
command -v redis-server >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server
[[ -n "${SKIP_BUILD:-}" ]] || nice -n 19 cargo build --release -q -p nimbus
BIN="${BIN:-${CARGO_TARGET_DIR:-target}/release/nimbus}"
WARMUP=2 DURATION=10
SERVER_BIN="${SERVER_BIN:-$BIN}"   # e.g. an older build, for an A/B of the single node
RPORT=16379
PORTS=(19991 19992 19993)
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
echo "# $(nproc) cores, $(uname -r), load: $(cut -d' ' -f1-3 /proc/loadavg), bench: $BENCH, shape: $SHAPE"

PIDS=()
stop_all() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    PIDS=()
    [[ -n "${WORK:-}" ]] && rm -rf "$WORK"
    return 0
}
trap stop_all EXIT

wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.1; done; echo "port $1 did not open" >&2; exit 1; }

start() {
    local mode=$1 n=1 redis_args=()
    REDIS_PID=""
    WORK="$(mktemp -d)"
    if [[ $mode != single ]]; then
        redis-server --bind 127.0.0.1 --port "$RPORT" --save "" --appendonly yes --appendfsync everysec --dir "$WORK" >/dev/null 2>&1 &
        REDIS_PID=$!; PIDS+=($!); wait_port "$RPORT"
        redis_args=(--redis "redis://127.0.0.1:$RPORT/")
    fi
    [[ $mode == redis3 ]] && n=3
    URLS=()
    for i in $(seq 0 $((n - 1))); do
        "$SERVER_BIN" serve --listen "127.0.0.1:${PORTS[$i]}" --data-dir "$WORK/n$i" --room-idle-ms 600000 --sets-per-sec 100000000 --sets-burst 100000000 "${redis_args[@]}" >/dev/null 2>&1 &
        PIDS+=($!); wait_port "${PORTS[$i]}"
        URLS+=(--url "ws://127.0.0.1:${PORTS[$i]}${PATH_SUFFIX}")
    done
}

# redis-server's user+system CPU ticks so far ("" without Redis).
cpu_ticks() { [[ -n "${REDIS_PID:-}" ]] && awk '{print $14 + $15}' "/proc/$REDIS_PID/stat" || true; }

median() { python3 -c '
import json, sys, statistics
rows = [json.loads(l) for l in sys.stdin if l.strip()]
keys = [k for k, v in rows[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
print("median of", len(rows), "runs:", json.dumps({k: statistics.median(r[k] for r in rows) for k in keys}))'; }

for mode in "${MODES[@]}"; do
    echo "## $mode"
    out=""
    for _ in $(seq "$RUNS"); do
        start "$mode"
        cpu0=$(cpu_ticks)
        # shellcheck disable=SC2086
        line=$("$BIN" bench "$BENCH" "${URLS[@]}" --json --warmup "$WARMUP" --duration "$DURATION" $SHAPE | tail -1)
        cpu1=$(cpu_ticks)
        stop_all
        line=$(python3 -c '
import json, sys
d = json.loads(sys.argv[1]); d["mode_nodes"] = sys.argv[2]
if sys.argv[3]:
    cpu = (int(sys.argv[4]) - int(sys.argv[3])) / int(sys.argv[5])
    d["redis_cpu_s"] = round(cpu, 3)
    sets = d.get("sets_per_s", 0) * (int(sys.argv[6]) + int(sys.argv[7]))
    if sets:
        d["redis_cpu_us_per_set"] = round(cpu * 1e6 / sets, 2)
print(json.dumps(d))' "$line" "$mode" "$cpu0" "$cpu1" "$(getconf CLK_TCK)" "$WARMUP" "$DURATION")
        echo "$line"; out+="$line"$'\n'
    done
    printf '%s' "$out" | median
done
