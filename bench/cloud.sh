#!/usr/bin/env bash
# Cloud benchmarks for docs/benchmarks.md: the server pinned to core 0, the generator to
# core 1, each shape run 3 times; prints every run's JSON line plus server CPU% and RSS,
# then the medians. Loopback only; every run is bounded in time.
#
#   bench/cloud.sh                 # all shapes
#   bench/cloud.sh idle fanout     # some shapes (idle, fanout, fanout50, oneroom)
#                                  # fanout50: half the fanout load (90k deliveries/s), generator not saturated
#   SERVER_ARGS="--send-interval-ms 16" bench/cloud.sh fanout   (extra nimbus serve flags)
#   SERVER_CMD="node /tmp/tw/src/index.js" SERVER_PORT=9080 bench/cloud.sh fanout
#       (any other server; it must listen on SERVER_PORT)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${RUNS:-3}"
SHAPES=("$@"); [[ ${#SHAPES[@]} -gt 0 ]] || SHAPES=(idle fanout oneroom)
# SERVER_BIN: the nimbus binary to serve (default: this checkout's release build); the load
# generator is always this checkout's, so two servers are compared under the same load
# (bench/compare.sh interleaves two builds).
cargo build --release -q -p nimbus
BIN=target/release/nimbus
SERVER_BIN="${SERVER_BIN:-$BIN}"
PORT="${SERVER_PORT:-19990}"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
echo "# $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -r), load: $(cut -d' ' -f1-3 /proc/loadavg)"

start_server() {
    DATA="$(mktemp -d)"
    if [[ -n "${SERVER_CMD:-}" ]]; then
        taskset -c 0 $SERVER_CMD >/dev/null 2>&1 &
    else
        # The generator's publishers send thousands of sets/s each: lift the per-connection
        # set rate (an abuse bound, docs/security.md), as TurboWarp's server has none.
        taskset -c 0 "$SERVER_BIN" serve --listen "127.0.0.1:$PORT" --data-dir "$DATA" --room-idle-ms 600000 \
            --sets-per-sec 100000000 --sets-burst 100000000 ${SERVER_ARGS:-} >/dev/null 2>&1 &
    fi
    SPID=$!
    for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && return; sleep 0.1; done
    echo "server did not start" >&2; exit 1
}
stop_server() { [[ -n "${SPID:-}" ]] || return 0; kill "$SPID" 2>/dev/null || true; wait "$SPID" 2>/dev/null || true; rm -rf "$DATA"; }
trap stop_server EXIT
cpu_ticks() { awk '{print $14+$15}' "/proc/$SPID/stat"; }
rss_kib() { awk '/VmRSS/{print $2}' "/proc/$SPID/status"; }

# run_shape NAME WARMUP DURATION ARGS...: one run; prints a JSON line with server figures added.
run_shape() {
    local name=$1 warm=$2 dur=$3; shift 3
    start_server
    local rss0; rss0=$(rss_kib)
    taskset -c 1 "$BIN" bench cloud --url "ws://127.0.0.1:$PORT/" --json --warmup "$warm" --duration "$dur" "$@" > /tmp/bench-out.json &
    local gpid=$!
    sleep "$warm"
    local c0; c0=$(cpu_ticks); local t0=$SECONDS
    local peak=0 r
    for _ in $(seq "${dur%.*}"); do sleep 1; r=$(rss_kib); (( r > peak )) && peak=$r; done
    local c1; c1=$(cpu_ticks)
    wait "$gpid"
    local cpu; cpu=$(awk -v a="$c0" -v b="$c1" -v d="$dur" 'BEGIN{printf "%.1f", (b-a)/d}')
    python3 - "$name" "$cpu" "$rss0" "$peak" <<'PY'
import json, sys
d = json.loads(open("/tmp/bench-out.json").read().strip().splitlines()[-1])
d.update(shape=sys.argv[1], server_cpu_pct=float(sys.argv[2]), server_rss_base_kib=int(sys.argv[3]), server_rss_peak_kib=int(sys.argv[4]))
if d["mode"] == "idle":
    d["bytes_per_conn"] = round((d["server_rss_peak_kib"] - d["server_rss_base_kib"]) * 1024 / d["opened"])
print(json.dumps(d))
PY
    stop_server
}

median() { python3 -c '
import json, sys, statistics
rows = [json.loads(l) for l in sys.stdin if l.strip()]
keys = [k for k, v in rows[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
print("median of", len(rows), "runs:", json.dumps({k: statistics.median(r[k] for r in rows) for k in keys}))'; }

for shape in "${SHAPES[@]}"; do
    echo "## $shape"
    out=""
    for _ in $(seq "$RUNS"); do
        case $shape in
            idle)    line=$(run_shape idle 0 8 --idle 10000 --source-ips 4) ;;
            fanout)  line=$(run_shape fanout 2 10 --rooms 100 --clients 10 --publishers 2 --rate 100) ;;
            fanout50) line=$(run_shape fanout50 2 10 --rooms 50 --clients 10 --publishers 2 --rate 100) ;;
            oneroom) line=$(run_shape "oneroom-${RATE:-8000}" 2 10 --rooms 1 --clients 128 --publishers 4 --rate "$(( ${RATE:-8000} / 4 ))" --threads 1) ;;
            *) echo "unknown shape $shape" >&2; exit 2 ;;
        esac
        echo "$line"; out+="$line"$'\n'
    done
    printf '%s' "$out" | median
done
