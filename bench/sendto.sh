#!/usr/bin/env bash
# Frames per delivery of the fanout shape: counts the server's sendto(2) calls for 8 s with
# `perf stat` while `nimbus bench cloud` runs the fanout shape (100 rooms x 10 clients,
# 2 publishers x 100 Hz), server on core 0, generator on core 1; loopback only, bounded.
#
#   bench/sendto.sh [NIMBUS_BIN] [PORT]     # needs perf (Debian: linux-perf)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${1:-target/release/nimbus}"
PORT="${2:-19995}"
command -v perf >/dev/null || { echo "perf not found (Debian: apt-get install linux-perf)" >&2; exit 1; }
DATA="$(mktemp -d)"
taskset -c 0 "$BIN" serve --listen "127.0.0.1:$PORT" --data-dir "$DATA" --room-idle-ms 600000 >"$DATA/serve.log" 2>&1 &
SPID=$!
trap 'kill "$SPID" 2>/dev/null || true; wait "$SPID" 2>/dev/null || true; rm -rf "$DATA"' EXIT
sleep 1
taskset -c 1 timeout 60 "$BIN" bench cloud --url "ws://127.0.0.1:$PORT/" --rooms 100 --clients 10 \
    --publishers 2 --rate 100 --warmup 2 --duration 14 >"$DATA/gen.log" 2>&1 &
GPID=$!
sleep 4
perf stat -e syscalls:sys_enter_sendto -p "$SPID" -- sleep 8 2>&1 | awk '/sendto/ {print "sendto in 8 s:", $1}'
wait "$GPID"
grep -E "deliveries/s|latency|generator" "$DATA/gen.log"
