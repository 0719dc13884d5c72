#!/usr/bin/env bash
# Gateway interop: scurrypy's GatewayClient (PyPI) <-> nimbus serve's /gateway.
# Creates its own venv under tests/interop/.venv-gateway; loopback only; bounded by `timeout`.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
HERE="$ROOT/tests/interop"
VENV="$HERE/.venv-gateway"
SCURRYPY_VERSION="2.3.0.2"   # needs Python >= 3.11
PIDS=()
DATA="$(mktemp -d "${TMPDIR:-/tmp}/nimbus-gw-interop.XXXXXX")"
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$DATA"; }
trap cleanup EXIT

PY=""
for cand in python3.11 python3.12 python3.13 python3; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then PY="$cand"; break; fi
done
if [[ -z "$PY" ]]; then echo "gateway interop: scurrypy needs Python >= 3.11" >&2; exit 1; fi
if [[ ! -x "$VENV/bin/python" ]]; then
    timeout 120 "$PY" -m venv "$VENV"
fi
timeout 600 "$VENV/bin/pip" install --disable-pip-version-check -q "scurrypy==$SCURRYPY_VERSION" "PyJWT==2.15.1"
"$VENV/bin/python" -m pip freeze --disable-pip-version-check | grep -Ei '^(scurrypy|websockets|pyjwt)==' | sed 's/^/  /'

cd "$ROOT"
timeout 1800 cargo build -q -p nimbus --bin nimbus
NIMBUS="${CARGO_TARGET_DIR:-$ROOT/target}/debug/nimbus"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; return 1; }

TOKEN="interop-token-$$"
SECRET="gateway-interop-secret-0123456789abcdef"
P=$(free_port)
"$NIMBUS" serve --listen "127.0.0.1:$P" --data-dir "$DATA" --gateway-token "$TOKEN" \
    --token-secret "hs-1:$SECRET" >"$DATA/serve.log" 2>&1 & PIDS+=($!)
wait_port "$P"

echo "== scurrypy $SCURRYPY_VERSION GatewayClient -> nimbus /gateway"
timeout 120 "$VENV/bin/python" "$HERE/gateway/scurrypy_client.py" "$P" "$TOKEN" "$NIMBUS" 4242

echo "== scurrypy with a signed token (PyJWT) covering two rooms"
timeout 120 "$VENV/bin/python" "$HERE/gateway/scurrypy_rooms.py" "$P" "$SECRET" "$NIMBUS"

echo "== nimbus gateway tail -> nimbus /gateway"
timeout 30 "$NIMBUS" gateway tail --token "Bot $TOKEN" --url "ws://127.0.0.1:$P/gateway" --count 1 >"$DATA/tail.out" &
TAIL=$!
# The tail must be identified before the set; retry the set until the tail has seen one.
for _ in $(seq 50); do
    timeout 10 "$NIMBUS" cloud set 4243 x 1 --host "ws://127.0.0.1:$P" >/dev/null
    if ! kill -0 "$TAIL" 2>/dev/null; then break; fi
    sleep 0.2
done
wait "$TAIL"
grep -q '"t":"CLOUD_' "$DATA/tail.out" || { echo "tail saw: $(cat "$DATA/tail.out")"; exit 1; }
echo "ok nimbus gateway tail"
if timeout 20 "$NIMBUS" gateway tail --token wrong --url "ws://127.0.0.1:$P/gateway" 2>/dev/null; then
    echo "a wrong token did not fail"; exit 1
fi
echo "ok wrong token -> 4004 -> exit 1"
echo "gateway interop: all passed"
