#!/usr/bin/env bash
# Document-room interop (Yjs, y-websocket protocol; shared/protocols/yjs-sync.md):
# third-party Yjs clients and our Rust client (`nimbus doc`) edit the same room through
# `nimbus serve` (ws://HOST:PORT/doc/{room}) and through the reference @y/websocket-server,
# and must converge to the same document. Loopback only; everything is bounded.
#
#   tests/interop/doc.sh                          # builds target/release/nimbus first
#   NIMBUS_BIN=target/release/nimbus tests/interop/doc.sh
#   tests/interop/doc.sh nimbus-four-clients      # only the named checks (see CHECKS below)
#
# Clients (tests/interop/doc/): y-websocket 3.1.0 + yjs 13 (Node, package-lock.json),
# wire-websocket 0.7.1 (pycrdt 0.12, venv .venv-doc-wire), pycrdt-websocket 0.16.5 Provider
# over httpx-ws (pycrdt 0.14, venv .venv-doc-pycrdt: the two pycrdt pins conflict), and
# `nimbus doc edit|dump|watch`. Every client uses the roots t (text), m (map), a (array).
#
# Environment: NIMBUS_BIN (skip the build), PYTHON (3.10-3.13 for the venvs),
# INTEROP_WAIT (seconds a client waits for the others' edits, default 20),
# INTEROP_STRICT=1 (a SKIP fails the run), INTEROP_KEEP_LOGS=1 (keep the temp dir).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
DOC="$HERE/doc"
VWIRE="$HERE/.venv-doc-wire"
VPYCRDT="$HERE/.venv-doc-pycrdt"
WAIT="${INTEROP_WAIT:-20}"
START=$SECONDS

say() { printf '\n== %s\n' "$*"; }
die() { printf 'interop-doc: %s\n' "$*" >&2; exit 1; }

WORK="$(mktemp -d "${TMPDIR:-/tmp}/nimbus-interop-doc.XXXXXX")"
LOGS="$WORK/logs"
mkdir -p "$LOGS"
PIDS=()
# shellcheck source=tests/interop/lib.sh
source "$HERE/lib.sh"
trap interop_cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------ Node clients + reference server
say "node packages ($DOC/node_modules)"
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    # A bare CI machine (Debian 12: Node 18) may have neither; install them if we can.
    if command -v apt-get >/dev/null 2>&1 && [[ "$(id -u)" == 0 ]]; then
        echo "node/npm missing: apt-get install nodejs npm"
        timeout 600 apt-get update -q
        DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -q --no-install-recommends nodejs npm
    fi
fi
command -v node >/dev/null 2>&1 || die "node (>= 18) not found"
command -v npm >/dev/null 2>&1 || die "npm not found"
node_major="$(node -p 'process.versions.node.split(".")[0]')"
[[ "$node_major" -ge 18 ]] || die "need Node >= 18, have $(node --version)"
if [[ ! -f "$DOC/node_modules/.package-lock.json" ]] || \
   [[ "$DOC/package-lock.json" -nt "$DOC/node_modules/.package-lock.json" ]]; then
    # --ignore-scripts: the only install script is leveldown's (optional, for YPERSISTENCE)
    (cd "$DOC" && timeout 600 npm ci --no-audit --no-fund --ignore-scripts --loglevel=error)
fi
node -e '
const v = (p) => require(require("path").join(process.argv[1], "node_modules", p, "package.json")).version
for (const p of ["yjs", "y-websocket", "@y/websocket-server", "ws", "y-protocols"]) console.log(`  ${p} ${v(p)}`)
console.log(`  node ${process.versions.node}`)' "$DOC"

# ------------------------------------------------------------------ Python venvs
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
    for cand in python3.11 python3.12 python3.13 python3.10 python3; do
        if command -v "$cand" >/dev/null 2>&1; then PY="$cand"; break; fi
    done
fi
[[ -n "$PY" ]] || die "no python3 found"
make_venv() {  # DIR REQUIREMENTS
    local dir="$1" req="$2"
    if [[ ! -x "$dir/bin/python" ]]; then
        timeout 120 "$PY" -m venv "$dir" || die "python -m venv failed (Debian: apt-get install python3-venv)"
    fi
    timeout 600 "$dir/bin/python" -m pip install --disable-pip-version-check -q -r "$req"
}
say "python venv $VWIRE (wire-websocket)"
make_venv "$VWIRE" "$DOC/requirements-wire.txt"
"$VWIRE/bin/python" -m pip freeze --disable-pip-version-check | grep -Ei '^(wire.websocket|wiredb|pycrdt|httpx-ws)==' | sed 's/^/  /'
say "python venv $VPYCRDT (pycrdt-websocket)"
make_venv "$VPYCRDT" "$DOC/requirements-pycrdt.txt"
"$VPYCRDT/bin/python" -m pip freeze --disable-pip-version-check | grep -Ei '^(pycrdt|pycrdt.websocket|httpx-ws)==' | sed 's/^/  /'
VTOKENS="$HERE/.venv-tokens"
say "python venv $VTOKENS (PyJWT, for the signed-token check)"
make_venv "$VTOKENS" "$HERE/requirements-tokens.txt"
"$VTOKENS/bin/python" -m pip freeze --disable-pip-version-check | grep -Ei '^(pyjwt|cryptography)==' | sed 's/^/  /'

# ------------------------------------------------------------------ nimbus binary
if [[ -n "${NIMBUS_BIN:-}" ]]; then
    say "nimbus binary: $NIMBUS_BIN (from NIMBUS_BIN)"
else
    say "cargo build --release -p nimbus"
    (cd "$ROOT" && timeout 2400 cargo build --release -q -p nimbus)
    NIMBUS_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/nimbus"
fi
[[ -x "$NIMBUS_BIN" ]] || die "no executable at $NIMBUS_BIN"
NIMBUS_BIN="$(cd "$(dirname "$NIMBUS_BIN")" && pwd)/$(basename "$NIMBUS_BIN")"
timeout 30 "$NIMBUS_BIN" serve --help >/dev/null 2>&1 || die "\`nimbus serve --help\` failed"
RUST_WHY=""
for sub in edit dump; do
    if ! timeout 30 "$NIMBUS_BIN" doc "$sub" --help >/dev/null 2>&1; then
        RUST_WHY="\`nimbus doc $sub\` is not in this binary"
        break
    fi
done
HAVE_WATCH=0
timeout 30 "$NIMBUS_BIN" doc watch --help >/dev/null 2>&1 && HAVE_WATCH=1
[[ -z "$RUST_WHY" ]] && echo "Rust client: nimbus doc edit/dump$([[ $HAVE_WATCH == 1 ]] && echo /watch)" \
    || echo "Rust client: missing ($RUST_WHY); its parts are skipped"

# ------------------------------------------------------------------ helpers
free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# wait_http PORT PID PATH: until GET http://127.0.0.1:PORT/PATH answers (any status), 30 s.
wait_http() {
    timeout 30 "$PY" - "$1" "$2" "$3" <<'EOF'
import os, sys, time, urllib.error, urllib.request
port, pid, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
while True:
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit("server exited")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/{path}", timeout=2):
            sys.exit(0)
    except urllib.error.HTTPError:
        sys.exit(0)
    except Exception:
        time.sleep(0.1)
EOF
}

NIMBUS_DATA="$WORK/nimbus-data"
NIMBUS_PORT=""
# The HTTP API's admin token (its writes need one; the document sockets do not).
API_TOKEN="interop-api-token-$$-$RANDOM"
NIMBUS_PID=""
# start_nimbus LOGNAME: nimbus serve on a free port (reused on restart) with $NIMBUS_DATA.
start_nimbus() {
    local log="$WORK/server-nimbus-$1.log" attempt
    mkdir -p "$NIMBUS_DATA"
    for attempt in 1 2 3; do
        [[ -n "$NIMBUS_PORT" && $attempt == 1 ]] || NIMBUS_PORT="$(free_port)"
        echo "\$ nimbus serve --listen 127.0.0.1:$NIMBUS_PORT --data-dir $NIMBUS_DATA --api-token \$API_TOKEN"
        NO_COLOR=1 NIMBUS_LOG="${NIMBUS_LOG:-info}" "$NIMBUS_BIN" serve --listen "127.0.0.1:$NIMBUS_PORT" \
            --data-dir "$NIMBUS_DATA" --api-token "$API_TOKEN" >"$log" 2>&1 &
        NIMBUS_PID=$!
        PIDS+=("$NIMBUS_PID")
        if wait_http "$NIMBUS_PORT" "$NIMBUS_PID" healthz; then
            echo "nimbus up on 127.0.0.1:$NIMBUS_PORT (pid $NIMBUS_PID, log $log)"
            return 0
        fi
        echo "nimbus did not come up (attempt $attempt):"; tail -20 "$log" | sed 's/^/  | /'
        kill "$NIMBUS_PID" 2>/dev/null || true
    done
    return 1
}
# stop_pid PID: SIGTERM, wait up to 10 s, then SIGKILL.
stop_pid() {
    kill "$1" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
    echo "pid $1 ignored SIGTERM for 10 s: SIGKILL"
    kill -9 "$1" 2>/dev/null || true
}

YWS_PORT=""
start_yws() {
    local log="$WORK/server-y-websocket.log"
    YWS_PORT="$(free_port)"
    echo "\$ HOST=127.0.0.1 PORT=$YWS_PORT node node_modules/@y/websocket-server/src/server.js   (bin y-websocket)"
    (cd "$DOC" && HOST=127.0.0.1 PORT="$YWS_PORT" exec node node_modules/@y/websocket-server/src/server.js) >"$log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    wait_http "$YWS_PORT" "$pid" "" || { tail -20 "$log"; return 1; }
    echo "@y/websocket-server up on 127.0.0.1:$YWS_PORT (pid $pid)"
}

number_for() { "$PY" -c 'import sys; print(sum(map(ord, sys.argv[1])))' "$1"; }

# Background client runners: NAME URL ROOM LOGPREFIX [agent args...]; set $! as usual.
# Clients named js*, wire*, py* are the three third-party libraries.
agent() {
    local name="$1" url="$2" room="$3" out="$4"; shift 4
    local lim=$((WAIT + 20))
    case "$name" in
        js*)   timeout -k 5 "$lim" node "$DOC/yjs_agent.mjs" --url "$url" --room "$room" --name "$name" --timeout "$WAIT" "$@" ;;
        wire*) timeout -k 5 "$lim" "$VWIRE/bin/python" "$DOC/py_agent.py" --lib wire --url "$url" --room "$room" --name "$name" --timeout "$WAIT" "$@" ;;
        py*)   timeout -k 5 "$lim" "$VPYCRDT/bin/python" "$DOC/py_agent.py" --lib pycrdt --url "$url" --room "$room" --name "$name" --timeout "$WAIT" "$@" ;;
        *) echo "unknown agent $name" >&2; return 2 ;;
    esac >"$out.out" 2>"$out.err"
}
rust_edit() {  # NAME URL ROOM LOGPREFIX
    local name="$1" url="$2" room="$3" out="$4" n
    n="$(number_for "$name")"
    echo "\$ nimbus doc edit $room --server $url --text 't=[$name]' --map 'm.$name=\"$name\"' --map m.n_$name=$n --array 'a=\"$name\"'" >"$out.err"
    timeout -k 5 $((WAIT + 10)) "$NIMBUS_BIN" doc edit "$room" --server "$url" --text "t=[$name]" \
        --map "m.$name=\"$name\"" --map "m.n_$name=$n" --array "a=\"$name\"" >"$out.out" 2>>"$out.err"
}
rust_dump() {  # URL ROOM LOGPREFIX
    timeout -k 5 $((WAIT + 10)) "$NIMBUS_BIN" doc dump "$2" --server "$1" >"$3.out" 2>"$3.err"
}
# wait_all NAME=PID...: waits for each; prints the failures with their stderr tails; 1 if any failed.
wait_all() {
    local item name pid rc bad=0
    for item in "$@"; do
        name="${item%%=*}" pid="${item#*=}"
        rc=0; wait "$pid" || rc=$?
        if [[ $rc -ne 0 ]]; then
            bad=1
            echo "  $name exited $rc$([[ $rc == 124 ]] && echo ' (timeout)'); its stderr:"
            tail -8 "$LOGS/$CHECK-$name.err" 2>/dev/null | sed 's/^/    | /'
        fi
    done
    return $bad
}
compare() { "$PY" "$DOC/compare.py" "$@"; }
docs_of() { local n; for n in "$@"; do printf '%s=%s ' "$n" "$LOGS/$CHECK-$n.out"; done; }

# ------------------------------------------------------------------ checks
# Each returns 0 (PASS), 1 (FAIL) or 77 (SKIP, reason in $SKIP_WHY).
FINAL="$WORK/final-four.json"   # the document agreed in nimbus-four-clients
ROOM_FOUR="four-$$-$RANDOM"

check_yws_three_clients() {
    # Control: the three third-party clients against the reference server.
    local room="three-$$-$RANDOM" url="ws://127.0.0.1:$YWS_PORT" p=() n
    for n in js wire py; do
        agent "$n" "$url" "$room" "$LOGS/$CHECK-$n" --edit --expect js,wire,py & p+=("$n=$!")
    done
    wait_all "${p[@]}" || return 1
    # shellcheck disable=SC2046
    compare --expect js,wire,py $(docs_of js wire py)
}

check_yws_rust_and_js() {
    [[ -z "$RUST_WHY" ]] || { SKIP_WHY="$RUST_WHY"; return 77; }
    local room="rustjs-$$-$RANDOM" url="ws://127.0.0.1:$YWS_PORT" p=()
    agent js "$url" "$room" "$LOGS/$CHECK-js" --edit --expect js,rust & p+=("js=$!")
    rust_edit rust "$url" "$room" "$LOGS/$CHECK-rust" & p+=("rust=$!")
    wait_all "${p[@]}" || return 1
    rust_dump "$url" "$room" "$LOGS/$CHECK-rust-dump" || { echo "  nimbus doc dump failed:"; tail -5 "$LOGS/$CHECK-rust-dump.err"; return 1; }
    agent js-late "$url" "$room" "$LOGS/$CHECK-js-late" || { tail -5 "$LOGS/$CHECK-js-late.err"; return 1; }
    # shellcheck disable=SC2046
    compare --expect js,rust $(docs_of js rust-dump js-late)
}

check_nimbus_four_clients() {
    local url="ws://127.0.0.1:$NIMBUS_PORT/doc" room="$ROOM_FOUR" p=() n expect="js,wire,py" names=(js wire py)
    local watch_pid=""
    if [[ -z "$RUST_WHY" ]]; then
        expect="js,wire,py,rust"
        if [[ $HAVE_WATCH == 1 ]]; then
            timeout -k 5 $((WAIT + 40)) "$NIMBUS_BIN" doc watch "$room" --server "$url" \
                >"$LOGS/$CHECK-rust-watch.out" 2>"$LOGS/$CHECK-rust-watch.err" &
            watch_pid=$!
            PIDS+=("$watch_pid")
        fi
    fi
    for n in "${names[@]}"; do
        agent "$n" "$url" "$room" "$LOGS/$CHECK-$n" --edit --expect "$expect" & p+=("$n=$!")
    done
    if [[ -z "$RUST_WHY" ]]; then
        rust_edit rust "$url" "$room" "$LOGS/$CHECK-rust" & p+=("rust=$!")
    fi
    local rc=0
    wait_all "${p[@]}" || rc=1
    local docs
    docs="$(docs_of "${names[@]}")"
    if [[ -z "$RUST_WHY" ]]; then
        if rust_dump "$url" "$room" "$LOGS/$CHECK-rust-dump"; then
            docs+="$(docs_of rust-dump)"
        else
            echo "  nimbus doc dump failed:"; tail -5 "$LOGS/$CHECK-rust-dump.err" | sed 's/^/    | /'; rc=1
        fi
    fi
    # shellcheck disable=SC2086
    compare --expect "$expect" --save "$FINAL" $docs || rc=1
    if [[ -n "$watch_pid" ]]; then
        # the watcher's last line must reach the final document (bounded: 10 s)
        local ok=1
        for _ in $(seq 100); do
            if [[ -f "$FINAL" ]] && compare --ref "$FINAL" "watch=$LOGS/$CHECK-rust-watch.out" >/dev/null 2>&1; then ok=0; break; fi
            sleep 0.1
        done
        stop_pid "$watch_pid"
        if [[ $ok == 0 ]]; then
            echo "  nimbus doc watch: $(grep -c . "$LOGS/$CHECK-rust-watch.out") lines, the last one is the final document"
        else
            echo "  nimbus doc watch never printed the final document; its last lines:"
            tail -3 "$LOGS/$CHECK-rust-watch.out" | sed 's/^/    | /'; tail -5 "$LOGS/$CHECK-rust-watch.err" | sed 's/^/    ! /'
            rc=1
        fi
    fi
    [[ $rc == 0 ]] || return 1
    [[ -z "$RUST_WHY" ]] || { SKIP_WHY="js, wire, py converged; the Rust client was left out: $RUST_WHY"; return 77; }
}

# late_dumps LABEL URL ROOM: every client joins without editing; each must get $FINAL.
late_dumps() {
    local url="$2" room="$3" p=() n names=(js-late wire-late py-late)
    [[ -f "$FINAL" ]] || { echo "  no agreed document from nimbus-four-clients"; return 1; }
    for n in "${names[@]}"; do agent "$n" "$url" "$room" "$LOGS/$CHECK-$n" & p+=("$n=$!"); done
    if [[ -z "$RUST_WHY" ]]; then
        rust_dump "$url" "$room" "$LOGS/$CHECK-rust-late" & p+=("rust-late=$!")
        names+=(rust-late)
    fi
    wait_all "${p[@]}" || return 1
    # shellcheck disable=SC2046
    compare --ref "$FINAL" $(docs_of "${names[@]}")
}

check_nimbus_late_joiner() {
    late_dumps late "ws://127.0.0.1:$NIMBUS_PORT/doc" "$ROOM_FOUR"
}

check_nimbus_restart() {
    echo "  stopping nimbus (pid $NIMBUS_PID, SIGTERM) and starting it again on the same data dir"
    stop_pid "$NIMBUS_PID"
    start_nimbus restarted || return 1
    late_dumps restart "ws://127.0.0.1:$NIMBUS_PORT/doc" "$ROOM_FOUR"
}

# rust_then_wire URL: `nimbus doc edit` first, then a wire-websocket client edits on top of it
# (its text/array origins are then the Rust client's items), then a y-websocket late joiner and
# `nimbus doc dump` must hold both. Deterministic version of the ordering that breaks when the
# Rust client draws client IDs wider than 32 bits (tests/interop/README.md, client quirks).
rust_then_wire() {
    [[ -z "$RUST_WHY" ]] || { SKIP_WHY="$RUST_WHY"; return 77; }
    local url="$1" room="rw-$$-$RANDOM" p=()
    rust_edit rust "$url" "$room" "$LOGS/$CHECK-rust" & p+=("rust=$!")
    wait_all "${p[@]}" || return 1
    p=()
    agent wire "$url" "$room" "$LOGS/$CHECK-wire" --edit --expect rust,wire & p+=("wire=$!")
    wait_all "${p[@]}" || return 1
    p=()
    agent js-late "$url" "$room" "$LOGS/$CHECK-js-late" --expect rust,wire & p+=("js-late=$!")
    rust_dump "$url" "$room" "$LOGS/$CHECK-rust-dump" & p+=("rust-dump=$!")
    wait_all "${p[@]}" || return 1
    # shellcheck disable=SC2046
    compare --expect rust,wire $(docs_of wire js-late rust-dump)
}
check_yws_rust_then_wire() { rust_then_wire "ws://127.0.0.1:$YWS_PORT"; }
check_nimbus_rust_then_wire() { rust_then_wire "ws://127.0.0.1:$NIMBUS_PORT/doc"; }

# aw_check URL: two y-websocket clients see each other's awareness state; one is killed with
# SIGKILL (so it sends no removal itself) and the other must see its state removed by the
# server within 25 s, before the clients' own 30 s outdated-state timeout could do it.
aw_check() {
    local url="$1" room="aw-$$-$RANDOM" gone_wait=$((WAIT < 25 ? WAIT : 25)) a b rc
    node "$DOC/yjs_agent.mjs" --url "$url" --room "$room" --name aw-b --aw-expect aw-a --aw-hold \
        --timeout $((WAIT + gone_wait + 10)) >"$LOGS/$CHECK-b.out" 2>"$LOGS/$CHECK-b.err" &
    b=$!
    PIDS+=("$b")
    timeout -k 5 $((WAIT + gone_wait + 10)) node "$DOC/yjs_agent.mjs" --url "$url" --room "$room" \
        --name aw-a --aw-expect aw-b --aw-gone --timeout $((WAIT + gone_wait)) \
        >"$LOGS/$CHECK-a.out" 2>"$LOGS/$CHECK-a.err" &
    a=$!
    for _ in $(seq $((WAIT * 10))); do
        grep -q aw-seen "$LOGS/$CHECK-a.out" 2>/dev/null && grep -q aw-seen "$LOGS/$CHECK-b.out" 2>/dev/null && break
        sleep 0.1
    done
    if ! grep -q aw-seen "$LOGS/$CHECK-a.out" || ! grep -q aw-seen "$LOGS/$CHECK-b.out"; then
        echo "  the two clients never saw each other's awareness state:"
        tail -3 "$LOGS/$CHECK-a.err" "$LOGS/$CHECK-b.err" | sed 's/^/    | /'
        kill -9 "$b" 2>/dev/null || true; kill "$a" 2>/dev/null || true; wait "$a" 2>/dev/null || true
        return 1
    fi
    echo "  aw-a and aw-b see each other's awareness state; SIGKILL aw-b (pid $b)"
    { kill -9 "$b"; wait "$b"; } 2>/dev/null || true
    rc=0; wait "$a" || rc=$?
    if [[ $rc -ne 0 ]] || ! grep -q aw-gone "$LOGS/$CHECK-a.out"; then
        echo "  aw-a did not see aw-b's state removed (exit $rc):"; tail -3 "$LOGS/$CHECK-a.err" | sed 's/^/    | /'
        return 1
    fi
    grep -h 'was removed' "$LOGS/$CHECK-a.err" | sed 's/^/  /'
}
check_yws_awareness() { aw_check "ws://127.0.0.1:$YWS_PORT"; }
check_nimbus_awareness() { aw_check "ws://127.0.0.1:$NIMBUS_PORT/doc"; }

# nimbus-cluster: a real redis-server and three `nimbus serve --redis` nodes; y-websocket on
# node A, wire-websocket on node B, pycrdt-websocket on node C and `nimbus doc edit` on node A
# edit one room; everyone, and late joiners on every node, must hold the same document.
check_nimbus_cluster() {
    command -v redis-server >/dev/null 2>&1 || { SKIP_WHY="redis-server not installed (apt-get install redis-server)"; return 77; }
    local rport i p=() n room="cluster-$$-$RANDOM" ports=() expect="js,wire,py" log
    rport="$(free_port)"
    mkdir -p "$WORK/redis"
    redis-server --bind 127.0.0.1 --port "$rport" --save "" --appendonly no --dir "$WORK/redis" \
        >"$WORK/server-redis.log" 2>&1 &
    PIDS+=("$!")
    for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$rport") 2>/dev/null && break; sleep 0.1; done
    for i in 0 1 2; do
        ports[i]="$(free_port)"
        log="$WORK/server-nimbus-node$i.log"
        echo "\$ nimbus serve --listen 127.0.0.1:${ports[i]} --redis redis://127.0.0.1:$rport/"
        NO_COLOR=1 NIMBUS_LOG="${NIMBUS_LOG:-info}" "$NIMBUS_BIN" serve --listen "127.0.0.1:${ports[i]}" \
            --data-dir "$WORK/node$i" --redis "redis://127.0.0.1:$rport/" >"$log" 2>&1 &
        PIDS+=("$!")
        wait_http "${ports[i]}" "$!" healthz || { tail -20 "$log"; return 1; }
    done
    local url=() ; for i in 0 1 2; do url[i]="ws://127.0.0.1:${ports[i]}/doc"; done
    [[ -z "$RUST_WHY" ]] && expect+=",rust"
    agent js "${url[0]}" "$room" "$LOGS/$CHECK-js" --edit --expect "$expect" & p+=("js=$!")
    agent wire "${url[1]}" "$room" "$LOGS/$CHECK-wire" --edit --expect "$expect" & p+=("wire=$!")
    agent py "${url[2]}" "$room" "$LOGS/$CHECK-py" --edit --expect "$expect" & p+=("py=$!")
    [[ -z "$RUST_WHY" ]] && { rust_edit rust "${url[0]}" "$room" "$LOGS/$CHECK-rust" & p+=("rust=$!"); }
    wait_all "${p[@]}" || return 1
    p=()
    agent js-late "${url[1]}" "$room" "$LOGS/$CHECK-js-late" & p+=("js-late=$!")
    agent wire-late "${url[2]}" "$room" "$LOGS/$CHECK-wire-late" & p+=("wire-late=$!")
    agent py-late "${url[0]}" "$room" "$LOGS/$CHECK-py-late" & p+=("py-late=$!")
    wait_all "${p[@]}" || return 1
    # shellcheck disable=SC2046
    compare --expect "$expect" $(docs_of js wire py js-late wire-late py-late) || return 1
    [[ -z "$RUST_WHY" ]] || { SKIP_WHY="js, wire, py converged across nodes; the Rust client was left out: $RUST_WHY"; return 77; }
}

# Signed tokens (issue "Identity"): a second nimbus with an HS256 secret and a JWKS file
# (Ed25519 + RSA keys), tokens minted by PyJWT (tests/interop/tokens/mint.py). y-websocket
# and wire-websocket clients connect with ?token=; every refusal answers its documented status
# before the upgrade; a SIGHUP that rotates the JWKS keeps a connected client connected and
# refuses the retired key from then on.
check_nimbus_signed_tokens() {
    local keys="$WORK/keys" port data="$WORK/nimbus-tokens" conf="$WORK/tokens.toml" pid log
    local secret="interop-hs-secret-0123456789abcdef" room="notes/t-$$-$RANDOM" p=() bad=0
    mint() { "$VTOKENS/bin/python" "$HERE/tokens/mint.py" "$@"; }
    mint keys "$keys" || return 1
    cp "$keys/jwks-1.json" "$keys/jwks.json"
    printf 'token_secret = ["hs-1:%s"]\ntoken_jwks = "%s"\ntoken_leeway_s = 0\n' "$secret" "$keys/jwks.json" >"$conf"
    port="$(free_port)"; log="$WORK/server-nimbus-tokens.log"; mkdir -p "$data"
    echo "\$ nimbus serve --listen 127.0.0.1:$port --data-dir $data --config $conf"
    NO_COLOR=1 "$NIMBUS_BIN" serve --listen "127.0.0.1:$port" --data-dir "$data" --config "$conf" >"$log" 2>&1 &
    pid=$!; PIDS+=("$pid")
    wait_http "$port" "$pid" healthz || { tail -5 "$log"; return 1; }
    local url="ws://127.0.0.1:$port/doc"
    local hs ed rs
    hs="$(mint token --alg HS256 --secret "$secret" --kid hs-1 --sub js --grant 'doc:rw:notes/*')"
    ed="$(mint token --alg EdDSA --key "$keys/ed-1.pem" --kid ed-1 --sub wire --grant 'doc:rw:notes/*')"
    rs="$(mint token --alg RS256 --key "$keys/rsa-1.pem" --kid rsa-1 --sub py --grant 'doc:rw:*')"
    # 1. the third-party clients with ?token=: HS256 (y-websocket), EdDSA (wire-websocket)
    agent js "$url" "$room" "$LOGS/$CHECK-js" --edit --expect js,wire --token "$hs" & p+=("js=$!")
    agent wire "$url" "$room" "$LOGS/$CHECK-wire" --edit --expect js,wire --token "$ed" & p+=("wire=$!")
    wait_all "${p[@]}" || return 1
    # shellcheck disable=SC2046
    compare --expect js,wire $(docs_of js wire) || return 1
    # 2. refusals, before any upgrade (status and reason)
    upgrade() {  # TOKEN PATH -> "STATUS BODY"
        "$PY" - "$port" "$2" "$1" <<'PYEOF'
import http.client, sys, urllib.parse
port, path, token = sys.argv[1], sys.argv[2], sys.argv[3]
q = ("?token=" + urllib.parse.quote(token, safe="")) if token else ""
c = http.client.HTTPConnection("127.0.0.1", int(port), timeout=10)
c.request("GET", path + q, headers={"Connection": "Upgrade", "Upgrade": "websocket",
          "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
r = c.getresponse()
print(r.status, r.read().decode(errors="replace").strip())
PYEOF
    }
    expect_refusal() {  # NAME TOKEN PATH STATUS REASON
        local got; got="$(upgrade "$2" "$3")"
        if [[ "$got" == "$4 "*"$5"* ]]; then echo "  refused as documented: $1 -> $got"
        else echo "  FAIL $1: got '$got', want '$4 ... $5'"; bad=1; fi
    }
    local wrong tampered
    wrong="$(mint token --alg HS256 --secret "not-the-configured-secret-0123456789" --kid hs-1 --grant 'doc:rw:*')"
    tampered="${hs%.*}.$(printf 'A%.0s' {1..43})"
    expect_refusal expired "$(mint token --alg HS256 --secret "$secret" --kid hs-1 --grant 'doc:rw:*' --exp -60)" "/doc/notes/x" 401 token_expired
    expect_refusal not-yet-valid "$(mint token --alg EdDSA --key "$keys/ed-1.pem" --kid ed-1 --grant 'doc:rw:*' --nbf 300)" "/doc/notes/x" 401 token_not_yet_valid
    expect_refusal wrong-key "$wrong" "/doc/notes/x" 401 bad_signature
    expect_refusal tampered "$tampered" "/doc/notes/x" 401 bad_signature
    expect_refusal wrong-room "$hs" "/doc/secret/x" 403 room_not_granted
    expect_refusal no-token "" "/doc/notes/x" 401 token_required
    [[ "$(upgrade "$rs" "/doc/anything")" == 101* ]] || { echo "  FAIL RS256 token not accepted"; bad=1; }
    # 3. read-only: its edit never reaches the room
    local ro
    ro="$(mint token --alg HS256 --secret "$secret" --kid hs-1 --sub reader --grant 'doc:ro:notes/*')"
    agent js-ro "$url" "$room" "$LOGS/$CHECK-js-ro" --edit --token "$ro" --linger 1 || true
    agent js-check "$url" "$room" "$LOGS/$CHECK-js-check" --token "$hs" || return 1
    if grep -q 'js-ro' "$LOGS/$CHECK-js-check.out"; then echo "  FAIL a read-only edit reached the room"; bad=1
    else echo "  read-only token: its edit was refused (the room has no js-ro contribution)"; fi
    # 4. SIGHUP: ed-1 rotated out for ed-2; a client connected with an ed-1 token stays
    local room2="notes/rot-$$-$RANDOM" old new
    old="$(mint token --alg EdDSA --key "$keys/ed-1.pem" --kid ed-1 --sub old --grant 'doc:rw:notes/*')"
    new="$(mint token --alg EdDSA --key "$keys/ed-2.pem" --kid ed-2 --sub new --grant 'doc:rw:notes/*')"
    [[ "$(upgrade "$new" "/doc/notes/x")" == 401*unknown_key* ]] || { echo "  FAIL ed-2 accepted before the rotation"; bad=1; }
    p=()
    agent js-old "$url" "$room2" "$LOGS/$CHECK-js-old" --edit --expect js-old,js-new --token "$old" & p+=("js-old=$!")
    for _ in $(seq 100); do grep -qs synced "$LOGS/$CHECK-js-old.out" "$LOGS/$CHECK-js-old.err" && break; sleep 0.1; done
    cp "$keys/jwks-2.json" "$keys/jwks.json"
    echo "\$ kill -HUP $pid   (jwks: ed-1 out, ed-2 in)"
    kill -HUP "$pid"
    for _ in $(seq 50); do grep -q 'configuration reloaded' "$log" && break; sleep 0.1; done
    grep -q 'configuration reloaded' "$log" || { echo "  FAIL no reload logged"; return 1; }
    agent js-new "$url" "$room2" "$LOGS/$CHECK-js-new" --edit --expect js-old,js-new --token "$new" & p+=("js-new=$!")
    wait_all "${p[@]}" || { echo "  FAIL the client connected before the rotation did not see the edit after it"; return 1; }
    echo "  after SIGHUP: the ed-1 client stayed connected and received the ed-2 client's edit"
    expect_refusal retired-key "$old" "/doc/notes/x" 401 unknown_key
    stop_pid "$pid"
    return $bad
}

# The HTTP API (docs/integrations.md, "HTTP API") with third-party Yjs code on both sides:
# (a) GET /api/docs/{room}/update of a room a y-websocket client wrote, loaded into a fresh
# Yjs document in Node (Y.applyUpdate), equals that client's document; (b) an update made
# with pycrdt (Python) and POSTed reaches a connected y-websocket client; (c) a malformed POST
# answers 400 and leaves the room as it was.
api() { "$PY" "$DOC/api_http.py" "$@"; }
check_nimbus_http_api() {
    local room="api-$$-$RANDOM" base="http://127.0.0.1:$NIMBUS_PORT/api/docs" p=() status
    local url="ws://127.0.0.1:$NIMBUS_PORT/doc"
    # (a)
    agent js "$url" "$room" "$LOGS/$CHECK-js" --edit --expect js & p+=("js=$!")
    wait_all "${p[@]}" || return 1
    status="$(api GET "$base/$room/update" --token "$API_TOKEN" --out "$WORK/$CHECK-a.bin")"
    echo "GET /api/docs/$room/update -> $status ($(wc -c <"$WORK/$CHECK-a.bin") bytes)"
    [[ "$status" == 200 ]] || return 1
    (cd "$DOC" && node yjs_apply.mjs "$WORK/$CHECK-a.bin") >"$LOGS/$CHECK-get.out" 2>"$LOGS/$CHECK-get.err" \
        || { cat "$LOGS/$CHECK-get.err"; return 1; }
    compare --expect js $(docs_of js get) || return 1
    # (b) a y-websocket client stays connected until pycrdt's contribution arrives.
    p=()
    agent js-recv "$url" "$room" "$LOGS/$CHECK-js-recv" --expect js,pyapi & p+=("js-recv=$!")
    local i
    for i in $(seq 200); do grep -q synced "$LOGS/$CHECK-js-recv.err" 2>/dev/null && break; sleep 0.1; done
    grep -q synced "$LOGS/$CHECK-js-recv.err" || { echo "js-recv did not sync"; return 1; }
    timeout 60 "$VPYCRDT/bin/python" "$DOC/pycrdt_update.py" --name pyapi --out "$WORK/$CHECK-b.bin" || return 1
    status="$(api POST "$base/$room/update" --token "$API_TOKEN" --body "$WORK/$CHECK-b.bin")"
    echo "POST /api/docs/$room/update (pycrdt, $(wc -c <"$WORK/$CHECK-b.bin") bytes) -> $status"
    [[ "$status" == 204 ]] || return 1
    wait_all "${p[@]}" || return 1
    api GET "$base/$room/update" --token "$API_TOKEN" --out "$WORK/$CHECK-b2.bin" >/dev/null
    (cd "$DOC" && node yjs_apply.mjs "$WORK/$CHECK-b2.bin") >"$LOGS/$CHECK-get2.out" 2>"$LOGS/$CHECK-get2.err" \
        || { cat "$LOGS/$CHECK-get2.err"; return 1; }
    compare --expect js,pyapi $(docs_of js-recv get2) || return 1
    # (c)
    status="$(api POST "$base/$room/update" --token "$API_TOKEN" --body-hex ffffffffff01)"
    echo "POST /api/docs/$room/update (malformed) -> $status"
    [[ "$status" == 400 ]] || return 1
    api GET "$base/$room/update" --token "$API_TOKEN" --out "$WORK/$CHECK-c.bin" >/dev/null
    cmp -s "$WORK/$CHECK-b2.bin" "$WORK/$CHECK-c.bin" || { echo "the room changed"; return 1; }
    status="$(api POST "$base/$room/update" --body "$WORK/$CHECK-b.bin")"
    echo "POST without a token -> $status"
    [[ "$status" == 401 ]] || return 1
}

ALL_CHECKS=(yws-three-clients yws-rust-and-js yws-rust-then-wire yws-awareness
    nimbus-four-clients nimbus-late-joiner nimbus-restart nimbus-rust-then-wire nimbus-awareness
    nimbus-cluster nimbus-signed-tokens nimbus-http-api)
if [[ $# -gt 0 ]]; then CHECKS=("$@"); else CHECKS=("${ALL_CHECKS[@]}"); fi

say "start @y/websocket-server (reference server)"
start_yws || die "@y/websocket-server did not start"
say "start nimbus serve"
start_nimbus first || die "nimbus serve did not start"

declare -A RESULT
passed=0 failed=0 skipped=0
for CHECK in "${CHECKS[@]}"; do
    say "check $CHECK"
    fn="check_${CHECK//-/_}"
    declare -F "$fn" >/dev/null || die "unknown check $CHECK (known: ${ALL_CHECKS[*]})"
    SKIP_WHY=""
    t0=$SECONDS
    # `|| rc=$?`: a check's own failing commands do not end the script (errexit is off
    # inside it); each check returns its verdict explicitly.
    rc=0
    "$fn" || rc=$?
    dt=$((SECONDS - t0))
    case $rc in
        0) RESULT[$CHECK]="PASS ($dt s)"; passed=$((passed + 1)) ;;
        77) RESULT[$CHECK]="SKIP ($SKIP_WHY)"; skipped=$((skipped + 1)) ;;
        *) RESULT[$CHECK]="FAIL ($dt s)"; failed=$((failed + 1)) ;;
    esac
    echo "${RESULT[$CHECK]%% *} $CHECK"
done

for log in "$WORK"/server-nimbus-*.log; do
    if [[ -f "$log" ]] && grep -qE 'panicked|ERROR' "$log"; then
        say "$(basename "$log") has errors:"
        grep -E 'panicked|ERROR' "$log" | head -20 | sed 's/^/  | /'
    fi
done

say "interop-doc summary ($((SECONDS - START)) s)"
for CHECK in "${CHECKS[@]}"; do printf '  %-22s %s\n' "$CHECK" "${RESULT[$CHECK]}"; done
if [[ $failed -eq 0 && $skipped -gt 0 && "${INTEROP_STRICT:-0}" == 1 ]]; then
    echo "INTEROP_STRICT=1: skipped checks count as failures"
    failed=$skipped
fi
echo "interop-doc: $passed passed, $failed failed, $skipped skipped"
[[ $failed -eq 0 ]]
