#!/usr/bin/env bash
# Webhook interop: nimbus-webhook's example sender (crates/webhook/examples/send_events.rs)
# against a Python receiver that verifies every request with the `standardwebhooks` package
# from PyPI (tests/interop/webhook_receiver.py). Loopback only.
#
#   tests/interop/webhooks.sh
#   SEND_EVENTS_BIN=target/debug/examples/send_events tests/interop/webhooks.sh
#
# The receiver fails the first 2 requests with 500; the sender signs with two secrets (an
# old one and the new one: a rotation) and the receiver knows only the new one. Checks:
# every published event received exactly once after de-duplication, in per-room order,
# every request's signature valid, the failed batch retried under the same webhook-id.
#
# Environment: SEND_EVENTS_BIN (skip the build), PYTHON (interpreter for the venv,
# 3.10-3.13), INTEROP_KEEP_LOGS=1 (keep the temp dir), WEBHOOK_EVENTS (default 90).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
VENV="$HERE/.venv"
EVENTS="${WEBHOOK_EVENTS:-90}"
FAIL_FIRST=2

say() { printf '\n== %s\n' "$*"; }
die() { printf 'webhooks interop: %s\n' "$*" >&2; exit 1; }

WORK="$(mktemp -d "${TMPDIR:-/tmp}/nimbus-webhooks.XXXXXX")"
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        kill -9 "$pid" 2>/dev/null || true
    done
    if [[ "${INTEROP_KEEP_LOGS:-0}" == 1 ]]; then
        echo "logs kept in $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------ Python venv
# The same venv as run.sh (tests/interop/.venv); only the standardwebhooks pin of
# requirements.txt is installed here.
say "python venv ($VENV)"
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
    for cand in python3.11 python3.12 python3.13 python3.10 python3; do
        if command -v "$cand" >/dev/null 2>&1; then PY="$cand"; break; fi
    done
fi
[[ -n "$PY" ]] || die "no python3 found"
timeout 30 "$PY" - <<'PYEOF' || die "need Python 3.10-3.13 (set PYTHON=...)"
import sys
print("using", sys.executable, sys.version.split()[0])
sys.exit(0 if (3, 10) <= sys.version_info[:2] <= (3, 13) else 1)
PYEOF
want_ver="$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
if [[ -x "$VENV/bin/python" ]] && \
   [[ "$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" != "$want_ver" ]]; then
    echo "venv has another Python: recreating"
    rm -rf "$VENV"
fi
if [[ ! -x "$VENV/bin/python" ]]; then
    timeout 120 "$PY" -m venv "$VENV" || die "python -m venv failed (Debian: apt-get install python3-venv)"
fi
PIN="$(grep -E '^standardwebhooks==' "$HERE/requirements.txt")" || die "no standardwebhooks pin in requirements.txt"
timeout 600 "$VENV/bin/python" -m pip install --disable-pip-version-check -q "$PIN"
"$VENV/bin/python" -m pip freeze --disable-pip-version-check | grep -Ei '^standardwebhooks==' | sed 's/^/  /'
VPY="$VENV/bin/python"

# ------------------------------------------------------------------ sender binary
if [[ -n "${SEND_EVENTS_BIN:-}" ]]; then
    say "sender: $SEND_EVENTS_BIN (from SEND_EVENTS_BIN)"
else
    say "cargo build -p nimbus-webhook --example send_events"
    (cd "$ROOT" && timeout 1800 cargo build -q -p nimbus-webhook --example send_events)
    SEND_EVENTS_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/examples/send_events"
fi
[[ -x "$SEND_EVENTS_BIN" ]] || die "no executable at $SEND_EVENTS_BIN"

# ------------------------------------------------------------------ run
new_secret() { "$VPY" -c 'import base64, os; print("whsec_" + base64.b64encode(os.urandom(32)).decode())'; }
OLD_SECRET="$(new_secret)"
NEW_SECRET="$(new_secret)"

say "receiver (fails the first $FAIL_FIRST requests, verifies with standardwebhooks)"
"$VPY" "$HERE/webhook_receiver.py" --secret "$NEW_SECRET" --port 0 \
    --port-file "$WORK/port" --fail-first "$FAIL_FIRST" --out "$WORK/received.jsonl" \
    --summary "$WORK/summary.json" --expect "$EVENTS" --timeout 120 \
    2>"$WORK/receiver.log" &
RX_PID=$!
PIDS+=("$RX_PID")
for _ in $(seq 1 100); do [[ -s "$WORK/port" ]] && break; sleep 0.1; done
[[ -s "$WORK/port" ]] || { cat "$WORK/receiver.log" >&2; die "receiver did not start"; }
PORT="$(cat "$WORK/port")"
echo "  listening on 127.0.0.1:$PORT"

say "send_events ($EVENTS events, 3 rooms, 2 secrets)"
NIMBUS_LOG="${NIMBUS_LOG:-warn}" timeout 120 "$SEND_EVENTS_BIN" \
    --url "http://127.0.0.1:$PORT/hooks/nimbus" \
    --secret "$OLD_SECRET" --secret "$NEW_SECRET" \
    --events "$EVENTS" --manifest "$WORK/published.jsonl" 2>&1 | sed 's/^/  /' \
    || die "send_events failed"

timeout 130 tail --pid="$RX_PID" -f /dev/null || die "receiver did not exit"
wait "$RX_PID" || die "receiver failed: $(cat "$WORK/receiver.log")"
sed 's/^/  /' "$WORK/receiver.log"

say "check"
"$VPY" - "$WORK" "$FAIL_FIRST" <<'PYEOF'
import json, sys
work, fail_first = sys.argv[1], int(sys.argv[2])
published = [json.loads(l) for l in open(f"{work}/published.jsonl")]
received = [json.loads(l) for l in open(f"{work}/received.jsonl")]
summary = json.load(open(f"{work}/summary.json"))
problems = []
if summary["bad_signatures"]:
    problems.append(f"{summary['bad_signatures']} requests failed verification")
if summary["failed_on_purpose"] != fail_first:
    problems.append(f"expected {fail_first} failed requests, saw {summary['failed_on_purpose']}")
# The failed requests were one batch's attempts: the first accepted request retries it.
ids = summary["webhook_ids_of_failures"] + summary["webhook_ids_of_accepted"][:1]
if len(set(ids)) != 1:
    problems.append(f"retries changed the webhook-id: {ids}")
pub_ids = [p["id"] for p in published]
rec_ids = [r["id"] for r in received]
if sorted(rec_ids) != sorted(pub_ids):
    missing = set(pub_ids) - set(rec_ids)
    extra = set(rec_ids) - set(pub_ids)
    problems.append(f"missing {sorted(missing)[:10]}, unexpected {sorted(extra)[:10]}")
if len(rec_ids) != len(set(rec_ids)):
    problems.append("an event recorded twice after de-duplication")
for room in sorted({p["room"] for p in published}):
    want = [p["id"] for p in published if p["room"] == room]
    got = [r["id"] for r in received if r["room"] == room]
    seqs = [r["data"]["seq"] for r in received if r["room"] == room]
    if got != want:
        problems.append(f"room {room}: order {got[:5]}... != {want[:5]}...")
    if seqs != list(range(1, len(seqs) + 1)):
        problems.append(f"room {room}: seq {seqs}")
    print(f"  room {room}: {len(got)} events in order")
kinds = sorted({r["type"] for r in received})
print(f"  kinds: {', '.join(kinds)}")
print(f"  requests: {summary['requests']} ({summary['failed_on_purpose']} failed on purpose, "
      f"{summary['accepted']} accepted, {summary['duplicates']} duplicate events dropped)")
if problems:
    for p in problems:
        print(f"  FAIL: {p}")
    sys.exit(1)
print(f"  ok: {len(received)} events, each once, per-room order kept, all signatures valid")
PYEOF
say "webhooks interop passed"
