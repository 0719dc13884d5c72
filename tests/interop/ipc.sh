#!/usr/bin/env bash
# IPC interop: PyPI clients/servers <-> nimbus (see docs/ipc.md, protocol §8).
#  1. discord-ext-ipc 2.1.1 Client -> nimbus echo_server (explicit port, multicast discovery, 403)
#  2. nimbus `ipc request` (ClientSession) -> discord-ext-ipc 2.1.1 Server (explicit port + discovery)
#  3. better-ipc 2.0.3 Client -> nimbus echo_server (both ports)
#     plus: discord-ext-ipc 2.1.1 Client -> `nimbus serve --ipc` built-in routes (port and discovery)
# Creates its own venvs under tests/interop/.venv-ipc{1,2}. Bounded by `timeout`.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
HERE="$ROOT/tests/interop"
V1="$HERE/.venv-ipc1" V2="$HERE/.venv-ipc2"
KEY="interop-key-$$"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

[ -x "$V1/bin/python" ] || { python3 -m venv "$V1" && timeout 600 "$V1/bin/pip" install -q discord-ext-ipc==2.1.1 "discord.py>=2"; }
[ -x "$V2/bin/python" ] || { python3 -m venv "$V2" && timeout 600 "$V2/bin/pip" install -q better-ipc==2.0.3 "discord.py>=2" "websockets<14"; }

cd "$ROOT"
timeout 900 cargo build -q -p nimbus-ipc --example echo_server
timeout 900 cargo build -q -p nimbus --bin nimbus
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
EX="$TARGET/debug/examples/echo_server"
NIMBUS="$TARGET/debug/nimbus"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; return 1; }

P=$(free_port) M=$(free_port)
"$EX" --host 127.0.0.1 --port "$P" --multicast-port "$M" --secret "$KEY" >/dev/null & PIDS+=($!)
wait_port "$P"; wait_port "$M"

echo "== discord-ext-ipc 2.1.1 client -> nimbus"
timeout 60 "$V1/bin/python" "$HERE/ipc/ext_ipc_client.py" "$P" "$M" "$KEY"

echo "== better-ipc 2.0.3 client -> nimbus"
timeout 60 "$V2/bin/python" "$HERE/ipc/better_ipc_client.py" "$P" "$M" "$KEY"

echo "== nimbus ipc request -> nimbus (error reply exits non-zero)"
out=$(timeout 20 "$NIMBUS" ipc request add a=1 b=2 --host 127.0.0.1 --multicast-port "$M" --secret "$KEY")
[ "$out" = "3" ] || { echo "got $out"; exit 1; }
if timeout 20 "$NIMBUS" ipc request fail --host 127.0.0.1 --port "$P" --secret "$KEY" 2>/dev/null; then echo "fail route exited 0"; exit 1; fi
echo "ok nimbus ipc request (discovery; 500 -> exit 1)"

echo "== discord-ext-ipc 2.1.1 client -> nimbus serve --ipc (built-in routes)"
SP=$(free_port) SM=$(free_port) SW=$(free_port)
SDATA=$(mktemp -d)
"$NIMBUS" serve --listen "127.0.0.1:$SW" --data-dir "$SDATA" --ipc --ipc-port "$SP" --ipc-multicast-port "$SM" --ipc-secret "$KEY" >/dev/null 2>&1 & PIDS+=($!)
wait_port "$SP"; wait_port "$SM"
timeout 60 "$V1/bin/python" "$HERE/ipc/ext_ipc_nimbus_serve.py" "$SP" "$SM" "$KEY"
out=$(timeout 20 "$NIMBUS" cloud get 777 score --host "ws://127.0.0.1:$SW")
[ "$out" = "42" ] || { echo "cloud client saw $out after the IPC set"; exit 1; }
echo "ok an IPC cloud.set is seen by a cloud client"

PP=$(free_port) PM=$(free_port)
timeout 300 "$V1/bin/python" "$HERE/ipc/ext_ipc_server.py" "$PP" "$PM" "$KEY" >/dev/null 2>&1 & PIDS+=($!)
wait_port "$PP"; wait_port "$PM"
echo "== nimbus ipc request -> discord-ext-ipc 2.1.1 Server"
out=$(NIMBUS_IPC_SECRET="$KEY" timeout 20 "$NIMBUS" ipc request echo guild=1 name=x --host 127.0.0.1 --port "$PP")
[ "$out" = '{"guild":1,"name":"x"}' ] || { echo "got $out"; exit 1; }
out=$(NIMBUS_IPC_SECRET="$KEY" timeout 20 "$NIMBUS" ipc request add a=20 b=22 --host 127.0.0.1 --multicast-port "$PM")
[ "$out" = "42" ] || { echo "got $out"; exit 1; }
if NIMBUS_IPC_SECRET="$KEY" timeout 20 "$NIMBUS" ipc request fail --host 127.0.0.1 --port "$PP" 2>/dev/null; then echo "fail exited 0"; exit 1; fi
if timeout 20 "$NIMBUS" ipc request echo --host 127.0.0.1 --port "$PP" --secret wrong 2>/dev/null; then echo "wrong key exited 0"; exit 1; fi
echo "ok nimbus ClientSession -> discord-ext-ipc 2.1.1 Server (port, discovery, 500, 403)"
echo "ipc interop: all passed"
