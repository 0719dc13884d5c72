#!/usr/bin/env bash
# IPC bench: medians of 3 runs, nimbus echo_server (release) vs discord-ext-ipc 2.1.1 Server,
# server pinned to core 0, generator (nimbus bench ipc, 1 thread) to core 1.
# Needs: cargo build --release -p nimbus-ipc --example echo_server; cargo build --release -p nimbus
# (with `bench ipc` wired), the venv of tests/interop/ipc.sh. Env: N connections, C in flight, D seconds.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../../.." && pwd)"
NIMBUS=${NIMBUS:-$ROOT/target/release/nimbus}; EX=${EX:-$ROOT/target/release/examples/echo_server}
PY=$ROOT/tests/interop/.venv-ipc1/bin/python; PYSRV=$ROOT/tests/interop/ipc/ext_ipc_server.py
KEY=benchkey; N=${N:-4}; C=${C:-16}; D=${D:-8}
run3() { # $1 label $2 port
  for i in 1 2 3; do taskset -c 1 timeout 60 "$NIMBUS" bench ipc --url "ws://127.0.0.1:$2/" --secret $KEY --endpoint echo --data '{"n":1}' -n $N -c $C --duration $D --warmup 1 --threads 1 --json; done \
  | python3 -c '
import json,sys,statistics as s
rs=[json.loads(l) for l in sys.stdin]
print(sys.argv[1], "runs rps:", [round(r["rps"]) for r in rs], "median rps %.0f p50 %d us p99 %d us" % (s.median(r["rps"] for r in rs), s.median(r["p50_us"] for r in rs), s.median(r["p99_us"] for r in rs)))' "$1"
}
taskset -c 0 "$EX" --port 28100 --multicast-port 28101 --secret $KEY >/dev/null & P1=$!
sleep 1; run3 "nimbus n=$N c=$C" 28100; kill $P1; wait $P1 2>/dev/null || true
taskset -c 0 timeout 300 "$PY" "$PYSRV" 28200 28201 $KEY >/dev/null 2>&1 & P2=$!
sleep 2; run3 "discord-ext-ipc n=$N c=$C" 28200; kill $P2; wait $P2 2>/dev/null || true
