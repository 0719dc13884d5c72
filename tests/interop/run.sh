#!/usr/bin/env bash
# Interop suite: real third-party Scratch cloud clients (scratchattach, scratchclient,
# scratchcloud from PyPI) and our Rust CLI against a local `nimbus serve`. Loopback only.
#
#   tests/interop/run.sh                 # builds nimbus (debug) unless NIMBUS_BIN is set
#   NIMBUS_BIN=target/release/nimbus tests/interop/run.sh
#   tests/interop/run.sh late-joiner-join-frame cross-library-matrix   # only these checks
#
# Environment: NIMBUS_BIN (skip the build), PYTHON (interpreter for the venv, 3.10-3.13),
# INTEROP_STRICT=1 (a skipped check fails the run), INTEROP_KEEP_LOGS=1 (keep the temp dir).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
VENV="$HERE/.venv"
START=$SECONDS

say() { printf '\n== %s\n' "$*"; }
die() { printf 'interop: %s\n' "$*" >&2; exit 1; }

WORK="$(mktemp -d "${TMPDIR:-/tmp}/nimbus-interop.XXXXXX")"
PIDS=()
# shellcheck source=tests/interop/lib.sh
source "$HERE/lib.sh"
trap interop_cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------ Python venv
say "python venv ($VENV)"
interop_python
interop_venv "$VENV" -r "$HERE/requirements.txt"
"$VENV/bin/python" -m pip freeze --disable-pip-version-check \
    | grep -Ei '^(scratchattach|scratchclient|scratchcloud|websockets|websocket-client)==' \
    | sed 's/^/  /'
VPY="$VENV/bin/python"

# ------------------------------------------------------------------ nimbus binary
if [[ -n "${NIMBUS_BIN:-}" ]]; then
    say "nimbus binary: $NIMBUS_BIN (from NIMBUS_BIN)"
else
    say "cargo build -p nimbus"
    (cd "$ROOT" && timeout 1800 cargo build -p nimbus)
    NIMBUS_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/nimbus"
fi
[[ -x "$NIMBUS_BIN" ]] || die "no executable at $NIMBUS_BIN"
NIMBUS_BIN="$(cd "$(dirname "$NIMBUS_BIN")" && pwd)/$(basename "$NIMBUS_BIN")"
SERVE_HELP="$(timeout 30 "$NIMBUS_BIN" serve --help 2>&1)" || die "\`nimbus serve --help\` failed: $SERVE_HELP"

free_port() {
    "$VPY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start_server NAME EXTRA_ARGS...: starts nimbus serve on a free loopback port, waits for
# /healthz, sets $SERVER_PORT. Up to 3 attempts (the free port can be taken in between).
start_server() {
    local name="$1"; shift
    local attempt port pid log
    for attempt in 1 2 3; do
        port="$(free_port)"
        log="$WORK/server-$name.log"
        mkdir -p "$WORK/data-$name"
        echo "\$ nimbus serve --listen 127.0.0.1:$port --data-dir $WORK/data-$name $*"
        NIMBUS_LOG="${NIMBUS_LOG:-info}" "$NIMBUS_BIN" serve --listen "127.0.0.1:$port" \
            --data-dir "$WORK/data-$name" "$@" >"$log" 2>&1 &
        pid=$!
        PIDS+=("$pid")
        if timeout 30 "$VPY" - "$port" "$pid" <<'EOF'
import os, sys, time, urllib.request
port, pid = sys.argv[1], int(sys.argv[2])
while True:
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit("server exited")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
            if r.status == 200:
                sys.exit(0)
    except Exception:
        pass
    time.sleep(0.1)
EOF
        then
            SERVER_PORT="$port"
            echo "server '$name' up on 127.0.0.1:$port (pid $pid, log $log)"
            return 0
        fi
        echo "server '$name' did not come up (attempt $attempt); its log:"
        sed 's/^/  | /' "$log" | tail -30
        kill "$pid" 2>/dev/null || true
    done
    return 1
}

# ------------------------------------------------------------------ servers
say "start nimbus serve (defaults)"
start_server default || die "nimbus serve did not start"
URL="ws://127.0.0.1:$SERVER_PORT"

# Second server with the policies some clients need (§2, §4, §10 of the protocol notes):
# empty_join_frame (scratchclient/scratchcloud wait for a first frame) and
# one_message_per_frame (scratchclient parses each later frame as ONE message).
POLICY_URL=""
POLICY_WHY=""
policy_args=()
if grep -q -- '--empty-join-frame' <<<"$SERVE_HELP"; then policy_args+=(--empty-join-frame true); fi
if grep -q -- '--one-message-per-frame' <<<"$SERVE_HELP"; then policy_args+=(--one-message-per-frame true); fi
if [[ ${#policy_args[@]} -eq 4 ]]; then
    say "start nimbus serve ${policy_args[*]}"
    start_server policies "${policy_args[@]}" || die "nimbus serve ${policy_args[*]} did not start"
    POLICY_URL="ws://127.0.0.1:$SERVER_PORT"
else
    POLICY_WHY="\`nimbus serve --help\` has no --empty-join-frame/--one-message-per-frame flags"
fi

# Two nodes sharing one redis-server (the cluster-* checks), when redis-server is installed.
CLUSTER_URLS=""
CLUSTER_WHY="redis-server not installed (apt-get install redis-server)"
if command -v redis-server >/dev/null 2>&1; then
    say "start redis-server and two nimbus serve --redis nodes"
    RPORT="$(free_port)"
    mkdir -p "$WORK/redis"
    redis-server --bind 127.0.0.1 --port "$RPORT" --save "" --appendonly no --dir "$WORK/redis" \
        >"$WORK/redis.log" 2>&1 &
    PIDS+=("$!")
    for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$RPORT") 2>/dev/null && break; sleep 0.1; done
    for node in node-a node-b; do
        start_server "$node" --redis "redis://127.0.0.1:$RPORT/" || die "nimbus serve --redis did not start"
        CLUSTER_URLS+="${CLUSTER_URLS:+,}ws://127.0.0.1:$SERVER_PORT"
    done
fi

# ------------------------------------------------------------------ checks
if [[ $# -gt 0 ]]; then
    CHECKS=("$@")
else
    mapfile -t CHECKS < <(timeout 60 "$VPY" "$HERE/cloud/checks.py" list | cut -f1)
fi
[[ ${#CHECKS[@]} -gt 0 ]] || die "no checks listed"

declare -A RESULT
passed=0 failed=0 skipped=0
for check in "${CHECKS[@]}"; do
    say "check $check"
    args=(run "$check" --url "$URL" --nimbus "$NIMBUS_BIN" --logdir "$WORK/logs")
    if [[ -n "$POLICY_URL" ]]; then args+=(--policy-url "$POLICY_URL"); else args+=(--policy-missing-reason "$POLICY_WHY"); fi
    if [[ -n "$CLUSTER_URLS" ]]; then args+=(--cluster-urls "$CLUSTER_URLS"); else args+=(--cluster-missing-reason "$CLUSTER_WHY"); fi
    set +e
    # every check is bounded; each of its waits has its own, shorter bound
    timeout -k 5 180 "$VPY" "$HERE/cloud/checks.py" "${args[@]}"
    rc=$?
    set -e
    case $rc in
        0) RESULT[$check]=PASS; passed=$((passed + 1)) ;;
        77) RESULT[$check]=SKIP; skipped=$((skipped + 1)) ;;
        124|137) RESULT[$check]="FAIL (killed after 180 s)"; failed=$((failed + 1)) ;;
        *) RESULT[$check]=FAIL; failed=$((failed + 1)) ;;
    esac
done

for name in default policies node-a node-b; do
    log="$WORK/server-$name.log"
    if [[ -f "$log" ]] && grep -qiE 'panick|ERROR' "$log"; then
        say "server '$name' logged errors:"
        grep -iE 'panick|ERROR' "$log" | head -20 | sed 's/^/  | /'
    fi
done

say "interop summary ($((SECONDS - START)) s)"
for check in "${CHECKS[@]}"; do
    printf '  %-38s %s\n' "$check" "${RESULT[$check]}"
done
if [[ $failed -eq 0 && $skipped -gt 0 && "${INTEROP_STRICT:-0}" == 1 ]]; then
    echo "INTEROP_STRICT=1: skipped checks count as failures"
    failed=$skipped
fi
echo "interop: $passed passed, $failed failed, $skipped skipped"
[[ $failed -eq 0 ]]
