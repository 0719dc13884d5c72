#!/usr/bin/env bash
# Document-room benchmarks for docs/benchmarks.md ("Document rooms"): `nimbus bench doc`
# against `nimbus serve` (ws://…/doc/{room}) and against the reference @y/websocket-server
# (Node, from tests/interop/doc/node_modules). Server pinned to core 0, generator to core 1,
# each shape RUNS times (default 3) per server, a fresh server (and data dir) per run;
# prints every run's JSON line, then a table of medians with the nimbus/y-websocket ratio.
# Loopback only; every run is bounded in time.
#
#   bench/doc.sh                       # shapes spread + hot, servers nimbus + yws
#   bench/doc.sh hot                   # some shapes (spread, hot)
#   SERVERS=yws bench/doc.sh           # one server (nimbus, yws)
#   SERVERS="nimbus nimbus:--max-batch-delay-us,0 yws" bench/doc.sh
#                                      # nimbus:ARGS = nimbus with extra flags (commas → spaces),
#                                      # interleaved with the others like any server
#   SERVERS="nimbus@/tmp/a nimbus@/tmp/b yws" GEN_BIN=… bench/doc.sh
#                                      # nimbus@BIN[:ARGS] = another nimbus build (an A/B of
#                                      # two builds against Node, interleaved)
#   NIMBUS_BIN=… GEN_BIN=… bench/doc.sh   (server binary / generator binary; default
#                                         target/release/nimbus for both, built here)
#   APPLY=all bench/doc.sh             (every receiver applies every update; default one:
#                                       one editor per document does, the others read
#                                       the markers from the bytes, see `nimbus bench doc`)
#   GEN_THREADS=2 GEN_CPUS=0,1 bench/doc.sh   (generator worker threads and the cores it
#                                         may use; default 1 thread on core 1; SERVER_CPUS
#                                         likewise for the server, default core 0)
#
# Shapes: spread = 100 docs × 5 editors × 10 edits/s (5,000 edits/s, 20,000 deliveries/s);
#         hot    = 1 doc × 50 editors × 10 edits/s (500 edits/s, 24,500 deliveries/s);
#         idle   = 100 docs × 10 editors, one edit each, then 5 s held open: server RSS
#                  per idle connection (not in the default list).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
RUNS="${RUNS:-3}"
WARMUP="${WARMUP:-2}"
DURATION="${DURATION:-10}"
SHAPES=("$@"); [[ ${#SHAPES[@]} -gt 0 ]] || SHAPES=(spread hot)
read -r -a SERVER_LIST <<<"${SERVERS:-nimbus yws}"
if [[ -z "${NIMBUS_BIN:-}" || -z "${GEN_BIN:-}" ]]; then
    cargo build --release -q -p nimbus
fi
NIMBUS_BIN="${NIMBUS_BIN:-$ROOT/target/release/nimbus}"
GEN_BIN="${GEN_BIN:-$ROOT/target/release/nimbus}"
PORT="${SERVER_PORT:-19991}"
GEN_THREADS="${GEN_THREADS:-1}"
APPLY="${APPLY:-one}"
GEN_CPUS="${GEN_CPUS:-1}"
SERVER_CPUS="${SERVER_CPUS:-0}"
NODE_DIR="$ROOT/tests/interop/doc"
OUT="$(mktemp -d "${TMPDIR:-/tmp}/nimbus-bench-doc.XXXXXX")"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

if [[ " ${SERVER_LIST[*]} " == *" yws "* ]]; then
    if [[ ! -f "$NODE_DIR/node_modules/.package-lock.json" ]] || \
       [[ "$NODE_DIR/package-lock.json" -nt "$NODE_DIR/node_modules/.package-lock.json" ]]; then
        (cd "$NODE_DIR" && timeout 600 npm ci --no-audit --no-fund --ignore-scripts --loglevel=error)
    fi
    YWS_VERSION="$(node -p "require('$NODE_DIR/node_modules/@y/websocket-server/package.json').version")"
    YJS_VERSION="$(node -p "require('$NODE_DIR/node_modules/yjs/package.json').version")"
fi
echo "# $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -r), load: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# nimbus: $NIMBUS_BIN; generator: $GEN_BIN${YWS_VERSION:+; @y/websocket-server $YWS_VERSION (yjs $YJS_VERSION, node $(node --version))}"
echo "# $(date -u '+%Y-%m-%d %H:%M UTC'), $RUNS runs per shape and server, warm-up $WARMUP s, measured $DURATION s; server on cores $SERVER_CPUS, generator ($GEN_THREADS threads, --apply $APPLY) on cores $GEN_CPUS"

SPID=""
DATA=""
start_server() {  # nimbus|nimbus:ARGS|nimbus@BIN[:ARGS]|yws; sets SPID and BASE
    local kind=$1 extra="" bin="$NIMBUS_BIN" spec
    case $kind in
        nimbus|nimbus:*|nimbus@*)
            spec="${kind#nimbus}"
            if [[ $spec == @* ]]; then
                spec="${spec#@}"
                bin="${spec%%:*}"
                [[ $spec == *:* ]] && spec=":${spec#*:}" || spec=""
            fi
            [[ $spec == :* ]] && extra="${spec#:}" && extra="${extra//,/ }"
            DATA="$(mktemp -d "$OUT/data.XXXXXX")"
            taskset -c "$SERVER_CPUS" "$bin" serve --listen "127.0.0.1:$PORT" --data-dir "$DATA" ${SERVER_ARGS:-} $extra >"$OUT/server.log" 2>&1 &
            SPID=$!
            BASE="ws://127.0.0.1:$PORT/doc"
            ;;
        yws)
            (cd "$NODE_DIR" && HOST=127.0.0.1 PORT="$PORT" exec taskset -c "$SERVER_CPUS" node node_modules/@y/websocket-server/src/server.js) >"$OUT/server.log" 2>&1 &
            SPID=$!
            BASE="ws://127.0.0.1:$PORT"
            ;;
        *) echo "unknown server $kind" >&2; exit 2 ;;
    esac
    for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && return 0; sleep 0.1; done
    echo "server $kind did not start; its log:" >&2; tail -20 "$OUT/server.log" >&2; exit 1
}
stop_server() {
    [[ -n "$SPID" ]] || return 0
    kill "$SPID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$SPID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$SPID" 2>/dev/null || true
    wait "$SPID" 2>/dev/null || true
    SPID=""
    [[ -z "$DATA" ]] || rm -rf "$DATA"
    DATA=""
}
cleanup() { stop_server; rm -rf "$OUT"; }
trap cleanup EXIT

# run_one SERVER SHAPE ARGS...: one run; appends its JSON line (with server and shape) to $OUT/runs.
run_one() {
    local server=$1 shape=$2; shift 2
    start_server "$server"
    sleep 0.5
    local line rc=0
    line="$(timeout -k 5 $((WARMUP + DURATION + 60)) taskset -c "$GEN_CPUS" "$GEN_BIN" bench doc --url "$BASE" --json \
        --threads "$GEN_THREADS" --apply "$APPLY" --warmup "$WARMUP" --duration "$DURATION" --server-pid "$SPID" "$@" 2>"$OUT/gen.err" | tail -1)" || rc=$?
    stop_server
    if [[ $rc -ne 0 || -z "$line" ]]; then
        echo "{\"server\":\"$server\",\"shape\":\"$shape\",\"failed\":\"$(tail -1 "$OUT/gen.err" | tr -d '"\\' | cut -c1-200)\"}" | tee -a "$OUT/runs"
        return 0
    fi
    python3 -c 'import json,sys; d=json.loads(sys.argv[3]); d.update(server=sys.argv[1], shape=sys.argv[2]); print(json.dumps(d))' \
        "$server" "$shape" "$line" | tee -a "$OUT/runs"
}

for shape in "${SHAPES[@]}"; do
    case $shape in
        spread) args=(--docs 100 --editors 5 --rate 10) ;;
        hot)    args=(--docs 1 --editors 50 --rate 10) ;;
        idle)   args=(--docs 100 --editors 10 --idle 5) ;;
        *) echo "unknown shape $shape" >&2; exit 2 ;;
    esac
    # Interleaved: run i of every server before run i + 1 of any, so a change in the
    # machine's load hits both servers alike.
    echo "## $shape: nimbus bench doc ${args[*]}"
    for _ in $(seq "$RUNS"); do
        for server in "${SERVER_LIST[@]}"; do run_one "$server" "$shape" "${args[@]}"; done
    done
done

python3 - "$OUT/runs" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
for r in rows:
    if "docs" in r:
        r["connections"] = r["docs"] * r["editors"]
keys = ["edits_per_s", "deliveries_per_s", "delivery_ratio", "p50_ms", "p99_ms", "max_ms",
        "server_cpu_pct", "server_rss_before_kib", "server_rss_connected_kib", "server_rss_peak_kib",
        "server_rss_after_kib", "generator_cpu_pct", "connections"]
med, idle = {}, {}
for r in rows:
    (idle if r.get("mode") == "doc-idle" or r["shape"] == "idle" else med).setdefault((r["shape"], r["server"]), []).append(r)
if idle:
    print()
    print("| shape | server | runs ok | connections | RSS before → connected → idle | per connection (connected) | per connection (idle) | server CPU idle |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for (shape, server), rs in idle.items():
        ok = [r for r in rs if "failed" not in r and not r.get("failures")]
        if not ok:
            print(f"| {shape} | {server} | 0/{len(rs)} | not measured: {rs[-1].get('failed', rs[-1].get('failures', ''))} |")
            continue
        m = lambda k: statistics.median(r[k] for r in ok)
        print(f"| {shape} | {server} | {len(ok)}/{len(rs)} | {ok[0]['connections']} | {m('server_rss_before_kib') / 1024:.1f} → "
              f"{m('server_rss_connected_kib') / 1024:.1f} → {m('server_rss_idle_kib') / 1024:.1f} MiB | "
              f"{m('bytes_per_connection_connected') / 1024:.1f} KiB | **{m('bytes_per_connection_idle') / 1024:.1f} KiB** | {m('server_cpu_idle_pct'):.1f} % |")
print()
print("| shape | server | runs ok | edits/s | deliveries/s | delivered | p50 | p99 | max | server CPU | RSS before → connected → peak | per connection | generator CPU |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
out = {}
for (shape, server), rs in med.items():
    ok = [r for r in rs if "failed" not in r]
    if not ok:
        print(f"| {shape} | {server} | 0/{len(rs)} | not measured: {rs[-1].get('failed', '')} |")
        continue
    m = {k: statistics.median(r[k] for r in ok if r.get(k) is not None) if any(r.get(k) is not None for r in ok) else None for k in keys}
    out[(shape, server)] = m
    mib = lambda k: "?" if m[k] is None else f"{m[k] / 1024:.1f} MiB"
    per = "?" if None in (m["server_rss_connected_kib"], m["server_rss_before_kib"]) else \
        f"{(m['server_rss_connected_kib'] - m['server_rss_before_kib']) / m['connections']:.0f} KiB"
    print(f"| {shape} | {server} | {len(ok)}/{len(rs)} | {m['edits_per_s']:,.0f} | {m['deliveries_per_s']:,.0f} | "
          f"{m['delivery_ratio'] * 100:.2f} % | {m['p50_ms']:.2f} ms | {m['p99_ms']:.2f} ms | {m['max_ms']:.1f} ms | "
          f"{m['server_cpu_pct']:.1f} % | {mib('server_rss_before_kib')} → {mib('server_rss_connected_kib')} → {mib('server_rss_peak_kib')} | {per} | {m['generator_cpu_pct']:.0f} % |")
print()
for shape in dict.fromkeys(s for s, _ in out):
    a, b = out.get((shape, "nimbus")), out.get((shape, "yws"))
    if a and b:
        r = lambda k: f"{a[k] / b[k]:.2f}×" if b[k] else "n/a"
        print(f"{shape}: nimbus / y-websocket-server (medians, same session): p50 {r('p50_ms')}, p99 {r('p99_ms')}, "
              f"server CPU {r('server_cpu_pct')}, RSS peak {r('server_rss_peak_kib')}")
print()
print("medians as JSON:", json.dumps({f"{s}/{v}": m for (s, v), m in out.items()}))
PY
