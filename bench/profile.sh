#!/usr/bin/env bash
# Where the server's time goes in the fanout shape (100 rooms x 10 clients, 2 publishers x
# 100 Hz, 180k deliveries/s): the server on core 0, the generator on core 1; after a 4 s
# warm-up, 8 s of `perf stat` (sendto calls, i.e. frames written) and then 8 s of
# `perf record -g` on the server, summarised by DSO and by symbol. Loopback only, bounded.
#
#   bench/profile.sh [NIMBUS_BIN] [PORT]             # needs perf (Debian: linux-perf)
#   SERVER_ARGS="--max-batch-delay-us 0" bench/profile.sh   (extra nimbus serve flags)
#   GEN_ARGS="--rooms 50" bench/profile.sh                   (other shape)
#   PERF_DATA=/tmp/fanout.perf bench/profile.sh  (keep the recording, for a flame graph)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${1:-target/release/nimbus}"
PORT="${2:-19995}"
command -v perf >/dev/null || { echo "perf not found (Debian: apt-get install linux-perf)" >&2; exit 1; }
DATA="$(mktemp -d)"
OUT="${PERF_DATA:-$DATA/perf.data}"
taskset -c 0 "$BIN" serve --listen "127.0.0.1:$PORT" --data-dir "$DATA" --room-idle-ms 600000 \
    --sets-per-sec 100000000 --sets-burst 100000000 ${SERVER_ARGS:-} >"$DATA/serve.log" 2>&1 &
SPID=$!
trap 'kill "$SPID" 2>/dev/null || true; wait "$SPID" 2>/dev/null || true; rm -rf "$DATA"' EXIT
sleep 1
taskset -c 1 timeout 90 "$BIN" bench cloud --url "ws://127.0.0.1:$PORT/" --rooms 100 --clients 10 \
    --publishers 2 --rate 100 --warmup 2 --duration 24 ${GEN_ARGS:-} >"$DATA/gen.log" 2>&1 &
GPID=$!
sleep 4
perf stat -e syscalls:sys_enter_sendto,syscalls:sys_enter_recvfrom,syscalls:sys_enter_epoll_wait,context-switches \
    -p "$SPID" -- sleep 8 2>&1 | awk '/syscalls|context/ {print $2, "in 8 s:", $1}'
perf record -q -F 999 -g -o "$OUT" -p "$SPID" -- sleep 8 >/dev/null 2>&1
wait "$GPID"
grep -E "deliveries/s|latency|generator|delivered" "$DATA/gen.log" || cat "$DATA/gen.log"
echo "## by DSO"
perf report -i "$OUT" --no-children --sort dso --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -8
echo "## by symbol"
perf report -i "$OUT" --no-children --sort symbol --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -${TOP:-30}
