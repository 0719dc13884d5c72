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
# Then the same receiver against a real `nimbus serve --webhook ...` (section "nimbus"):
#   1. scratchattach clients create, set, rename and delete variables in 3 rooms while the
#      receiver fails its first 2 requests: every cloud event arrives once after
#      de-duplication, in per-room order, with the gateway's bodies;
#   2. `kill -9` of nimbus in the middle of a run of sets, then a restart on the same data:
#      what was sent, what arrived, what the kill lost (the node's in-memory queue);
#   3. a receiver that never answers: sets keep fanning out to another client and nimbus's
#      RSS (ps) stays bounded (the queue drops its oldest events).
#
# Environment: SEND_EVENTS_BIN, NIMBUS_BIN (skip the builds), PYTHON (interpreter for the
# venv, 3.10-3.13), INTEROP_KEEP_LOGS=1 (keep the temp dir), WEBHOOK_EVENTS (default 90),
# FLOOD_SECONDS (default 20).
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
# shellcheck source=tests/interop/lib.sh
source "$HERE/lib.sh"
trap interop_cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------ Python venv
# The same venv as run.sh (tests/interop/.venv); only the standardwebhooks pin of
# requirements.txt is installed here.
say "python venv ($VENV)"
interop_python
PINS="$(grep -E '^(standardwebhooks|scratchattach|websocket-client)==' "$HERE/requirements.txt")" \
    || die "no standardwebhooks pin in requirements.txt"
# shellcheck disable=SC2086
interop_venv "$VENV" $PINS
"$VENV/bin/python" -m pip freeze --disable-pip-version-check \
    | grep -Ei '^(standardwebhooks|scratchattach)==' | sed 's/^/  /'
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
# ================================================================== nimbus serve --webhook
if [[ -n "${NIMBUS_BIN:-}" ]]; then
    say "nimbus: $NIMBUS_BIN (from NIMBUS_BIN)"
else
    say "cargo build -p nimbus"
    (cd "$ROOT" && timeout 1800 cargo build -q -p nimbus)
    NIMBUS_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/nimbus"
fi
[[ -x "$NIMBUS_BIN" ]] || die "no executable at $NIMBUS_BIN"
DRIVER="$HERE/webhook_cloud_driver.py"
CLOUD_KINDS="CLOUD_CREATE,CLOUD_SET,CLOUD_RENAME,CLOUD_DELETE"
free_port() { "$VPY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
NPORT="$(free_port)"
NIMBUS_PID=""
# start_nimbus DATA_DIR ARGS...: nimbus serve on $NPORT, waits for /healthz.
start_nimbus() {
    local data="$1"; shift
    NIMBUS_LOG="${NIMBUS_LOG:-info}" "$NIMBUS_BIN" serve --listen "127.0.0.1:$NPORT" \
        --data-dir "$data" --allow-rename true --allow-delete true "$@" >>"$WORK/nimbus.log" 2>&1 &
    NIMBUS_PID=$!
    PIDS+=("$NIMBUS_PID")
    for _ in $(seq 1 100); do
        curl -fsS "http://127.0.0.1:$NPORT/healthz" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    tail -20 "$WORK/nimbus.log" >&2
    die "nimbus did not start"
}
start_receiver() { # NAME ARGS...
    local name="$1"; shift
    "$VPY" "$HERE/webhook_receiver.py" --secret "$NEW_SECRET" --port 0 \
        --port-file "$WORK/$name.port" --out "$WORK/$name.jsonl" \
        --summary "$WORK/$name.summary.json" "$@" 2>"$WORK/$name.log" &
    RX_PID=$!
    PIDS+=("$RX_PID")
    for _ in $(seq 1 100); do [[ -s "$WORK/$name.port" ]] && break; sleep 0.1; done
    [[ -s "$WORK/$name.port" ]] || die "receiver $name did not start"
}

# ------------------------------------------------------------------ 1. scripted run
ROOMS=(1001 1002 1003)
SETS=10
N_EVENTS=$(( ${#ROOMS[@]} * (SETS + 2) ))
say "nimbus 1: scratchattach clients in ${#ROOMS[@]} rooms ($N_EVENTS cloud events), receiver fails the first $FAIL_FIRST requests"
start_receiver rx1 --fail-first "$FAIL_FIRST" --expect "$N_EVENTS" --timeout 90
RX1="$RX_PID"
HOOK="http://127.0.0.1:$(cat "$WORK/rx1.port")/hooks#secret=$NEW_SECRET&events=$CLOUD_KINDS"
echo "  \$ nimbus serve --webhook 'http://127.0.0.1:…/hooks#secret=whsec_…&events=$CLOUD_KINDS' --allow-rename true --allow-delete true"
start_nimbus "$WORK/data1" --webhook "$HOOK"
timeout 120 "$VPY" "$DRIVER" script "ws://127.0.0.1:$NPORT/" "$WORK/manifest1.jsonl" "${ROOMS[@]}" --sets "$SETS" \
    || die "cloud script failed"
timeout 100 tail --pid="$RX1" -f /dev/null || die "receiver 1 did not exit"
sed 's/^/  /' "$WORK/rx1.log"
"$VPY" - "$WORK" "$FAIL_FIRST" <<'PYEOF' || die "scripted run check failed"
import json, sys
work, fail_first = sys.argv[1], int(sys.argv[2])
want = [json.loads(l) for l in open(f"{work}/manifest1.jsonl")]
got = [json.loads(l) for l in open(f"{work}/rx1.jsonl")]
summary = json.load(open(f"{work}/rx1.summary.json"))
problems = []
if summary["bad_signatures"]:
    problems.append(f"{summary['bad_signatures']} bad signatures")
if summary["failed_on_purpose"] != fail_first:
    problems.append(f"failed on purpose: {summary['failed_on_purpose']}")
if len({g["id"] for g in got}) != len(got):
    problems.append("an id twice after de-duplication")
for room in sorted({w["room"] for w in want}):
    w = [(x["type"], x["name"], x["value"], x["user"]) for x in want if x["room"] == room]
    g = [(x["type"], x["data"]["name"], x["data"]["value"], x["data"]["user"])
         for x in got if x["room"] == room]
    if g != w:
        problems.append(f"room {room}: {g} != {w}")
    # The bodies are the gateway's (RoomEvent::to_json): exactly these keys, in this order.
    for x in got:
        keys = list(x["data"].keys())
        want_keys = ["room", "name", "new_name", "value", "user"] if x["type"] == "CLOUD_RENAME" \
            else ["room", "name", "value", "user"]
        if keys != want_keys:
            problems.append(f"{x['type']} body keys {keys}")
            break
    print(f"  room {room}: {len(g)} events in order")
print(f"  requests {summary['requests']} ({summary['failed_on_purpose']} failed on purpose), "
      f"{summary['events']} events, {summary['duplicates']} duplicates dropped by id")
for p in problems:
    print("  FAIL:", p)
sys.exit(1 if problems else 0)
PYEOF
kill "$NIMBUS_PID"; wait "$NIMBUS_PID" 2>/dev/null || true

# ------------------------------------------------------------------ 2. kill -9 mid-run
KILL_SETS=200
say "nimbus 2: $KILL_SETS sets in room 2001 (one every 25 ms); kill -9 of nimbus mid-run, restart on the same data"
start_receiver rx2 --timeout 120
RX2="$RX_PID"
HOOK="http://127.0.0.1:$(cat "$WORK/rx2.port")/hooks#secret=$NEW_SECRET&events=CLOUD_SET,CLOUD_CREATE"
start_nimbus "$WORK/data2" --webhook "$HOOK"
timeout 120 "$VPY" "$DRIVER" sets "ws://127.0.0.1:$NPORT/" 2001 "$KILL_SETS" --interval 0.025 \
    >"$WORK/sets2.json" 2>"$WORK/sets2.log" &
DRIVER_PID=$!
sleep 2.5
kill -9 "$NIMBUS_PID"
echo "  kill -9 nimbus (pid $NIMBUS_PID) at $(date +%T.%N | cut -c1-12)"
sleep 1
start_nimbus "$WORK/data2" --webhook "$HOOK"
echo "  restarted (pid $NIMBUS_PID)"
wait "$DRIVER_PID" || true
sleep 2
kill "$NIMBUS_PID"; wait "$NIMBUS_PID" 2>/dev/null || true
kill "$RX2" 2>/dev/null || true; wait "$RX2" 2>/dev/null || true
"$VPY" - "$WORK" "$KILL_SETS" <<'PYEOF' || die "kill -9 check failed"
import json, sys
work, total = sys.argv[1], int(sys.argv[2])
sent = json.load(open(f"{work}/sets2.json"))["sent"]
got = [json.loads(l) for l in open(f"{work}/rx2.jsonl")]
values = [g["data"]["value"] for g in got]
boots = []
for g in got:
    prefix = g["id"].rsplit("_", 1)[0]
    if not boots or boots[-1][0] != prefix:
        boots.append([prefix, []])
    boots[-1][1].append(g["data"]["value"])
problems = []
if len({g["id"] for g in got}) != len(got):
    problems.append("an id twice after de-duplication")
for prefix, vals in boots:
    if vals != sorted(vals):
        problems.append(f"boot {prefix}: out of order")
missing = sorted(set(range(1, total + 1)) - set(values))
print(f"  sets sent (acknowledged by the socket): {sent} of {total}; events received: {len(got)} "
      f"from {len(boots)} boots ({', '.join(f'{p}: {len(v)}' for p, v in boots)})")
print(f"  values never delivered: {len(missing)} {missing[:20]}{' ...' if len(missing) > 20 else ''}")
print("  (the kill -9 window: events of the killed boot still in its in-memory queue, and sets the")
print("   client wrote into the dying socket; nothing is delivered twice, order holds per boot)")
for p in problems:
    print("  FAIL:", p)
sys.exit(1 if problems else 0)
PYEOF

# ------------------------------------------------------------------ 3. receiver never answers
FLOOD_SECONDS="${FLOOD_SECONDS:-20}"
say "nimbus 3: a receiver that never answers; sets for ${FLOOD_SECONDS} s; nimbus RSS sampled with ps"
start_receiver rx3 --hang --timeout $(( FLOOD_SECONDS + 60 ))
cat >"$WORK/hang.toml" <<TOML
[[webhook]]
url = "http://127.0.0.1:$(cat "$WORK/rx3.port")/hooks"
secrets = ["$NEW_SECRET"]
queue_events = 2000
timeout_ms = 600000
TOML
start_nimbus "$WORK/data3" --config "$WORK/hang.toml"
: >"$WORK/rss.txt"
( while kill -0 "$NIMBUS_PID" 2>/dev/null; do
      ps -o rss= -p "$NIMBUS_PID" >>"$WORK/rss.txt" 2>/dev/null || true; sleep 1
  done ) &
SAMPLER=$!
PIDS+=("$SAMPLER")
timeout $(( FLOOD_SECONDS + 60 )) "$VPY" "$DRIVER" flood "ws://127.0.0.1:$NPORT/" 3001 "$FLOOD_SECONDS" \
    >"$WORK/flood.json" || die "flood failed"
METRICS="$(curl -fsS "http://127.0.0.1:$NPORT/metrics")"
kill "$SAMPLER" 2>/dev/null || true
"$VPY" - "$WORK" "$METRICS" <<'PYEOF' || die "dead receiver check failed"
import json, sys
work, metrics = sys.argv[1], sys.argv[2]
flood = json.load(open(f"{work}/flood.json"))
rss = [int(x) for x in open(f"{work}/rss.txt").read().split() if x.strip()]
def metric(prefix):
    for l in metrics.splitlines():
        if l.startswith(prefix):
            return float(l.rsplit(" ", 1)[1])
    return None
queued = metric('nimbus_webhook_queue_events{endpoint="0"}')
dropped = metric('nimbus_webhook_dropped_events_total{endpoint="0",reason="queue_full"}')
half = len(rss) // 2
print(f"  sets sent {flood['sent']}, a watcher received {flood['received']} (last value {flood['last']})")
print(f"  webhook queue {queued:.0f} events (bound 2000), dropped queue_full {dropped:.0f}")
print(f"  nimbus RSS (KiB, 1 s samples): first {rss[:3]}, max {max(rss)}, last {rss[-3:]}")
problems = []
if flood["last"] != flood["sent"]:
    problems.append("the watcher did not get the last set: the room stopped serving")
if queued is None or queued > 2000:
    problems.append(f"queue {queued} over its bound")
if not dropped:
    problems.append("no queue_full drops: the receiver was not dead?")
if max(rss[half:]) > max(rss[:half]) * 1.5 + 20_000:
    problems.append("RSS kept growing in the second half")
for p in problems:
    print("  FAIL:", p)
sys.exit(1 if problems else 0)
PYEOF
kill "$NIMBUS_PID"
for _ in $(seq 1 30); do kill -0 "$NIMBUS_PID" 2>/dev/null || break; sleep 0.5; done
grep -E "undelivered at shutdown|webhook events undelivered" "$WORK/nimbus.log" | tail -2 | sed 's/^/  shutdown log: /' || true
say "webhooks interop passed"
