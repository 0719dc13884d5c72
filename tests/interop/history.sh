#!/usr/bin/env bash
# Cloud history interop: scratchattach's OWN clouddata-log code (ScratchCloud.logs ->
# commons.parse_object_list -> CloudActivity, imported from the installed package) reads
# nimbus's `GET /logs` after a scripted run of creates, sets, renames and deletes made by
# three real scratchattach cloud clients with different usernames. Loopback only.
#
#   tests/interop/history.sh
#   NIMBUS_BIN=target/debug/nimbus tests/interop/history.sh
#
# ScratchCloud.logs() asks https://clouddata.scratch.mit.edu/logs; the script hands it a
# `requests` whose get() points that host at the local nimbus (nothing else is changed).
# Checks: order (newest first), verbs (activity.type), users, names, values, timestamps,
# limit/offset paging, and filter_by_var_named.
#
# Environment: NIMBUS_BIN (skip the build), PYTHON (3.10-3.13), INTEROP_KEEP_LOGS=1.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
VENV="$HERE/.venv"

say() { printf '\n== %s\n' "$*"; }
die() { printf 'history interop: %s\n' "$*" >&2; exit 1; }

WORK="$(mktemp -d "${TMPDIR:-/tmp}/nimbus-history.XXXXXX")"
PIDS=()
# shellcheck source=tests/interop/lib.sh
source "$HERE/lib.sh"
trap interop_cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------ Python venv (run.sh's)
say "python venv ($VENV)"
interop_python
PINS=$(grep -E '^(scratchattach|websocket-client)==' "$HERE/requirements.txt")
# shellcheck disable=SC2086
interop_venv "$VENV" $PINS
"$VENV/bin/python" -m pip freeze --disable-pip-version-check | grep -Ei '^scratchattach==' | sed 's/^/  /'
VPY="$VENV/bin/python"

# ------------------------------------------------------------------ nimbus
if [[ -z "${NIMBUS_BIN:-}" ]]; then
    say "cargo build -p nimbus"
    (cd "$ROOT" && timeout 1800 cargo build -q -p nimbus)
    NIMBUS_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/nimbus"
fi
[[ -x "$NIMBUS_BIN" ]] || die "no executable at $NIMBUS_BIN"
PORT="$("$VPY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
say "nimbus serve --allow-rename true --allow-delete true --history-max-entries 1000 on 127.0.0.1:$PORT"
NIMBUS_LOG="${NIMBUS_LOG:-warn}" "$NIMBUS_BIN" serve --listen "127.0.0.1:$PORT" \
    --data-dir "$WORK/data" --allow-rename true --allow-delete true --history-max-entries 1000 \
    >"$WORK/server.log" 2>&1 &
PIDS+=("$!")
for _ in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
    sleep 0.1
done
curl -fsS "http://127.0.0.1:$PORT/healthz" >/dev/null || { cat "$WORK/server.log" >&2; die "nimbus did not start"; }

# ------------------------------------------------------------------ run + check
say "scripted run by three scratchattach clients, then scratchattach reads /logs"
"$VPY" - "$PORT" <<'PYEOF'
import sys, time
import requests as real_requests
import scratchattach as sa
import scratchattach.cloud.cloud as sa_cloud
from scratchattach.site.cloud_activity import CloudActivity

port = int(sys.argv[1])
base = f"http://127.0.0.1:{port}"
PID = 424242


class LocalCloud(sa.TwCloud):
    def __init__(self, *, project_id, **_):
        super().__init__(project_id=project_id, cloud_host=f"ws://127.0.0.1:{port}/",
                         purpose="nimbus history interop", contact="ci")


clients = {}
for user in ("alice", "bob", "carol"):
    c = LocalCloud(project_id=PID)
    c.username = user
    c.connect()
    clients[user] = c
time.sleep(0.5)

def raw(user, packet):
    # scratchattach's own connection and packet writer; it has no rename/delete helper.
    clients[user]._send_packet({**packet, "user": user, "project_id": PID})

# (user, action, args); expected log entry (verb type, user, name, value)
script = [
    ("alice", lambda: clients["alice"].set_var("score", 1), ("create", "alice", "☁ score", 1)),
    ("bob", lambda: clients["bob"].set_var("score", 2), ("set", "bob", "☁ score", 2)),
    ("carol", lambda: clients["carol"].set_var("name", 5), ("create", "carol", "☁ name", 5)),
    ("bob", lambda: clients["bob"].set_var("score", 3), ("set", "bob", "☁ score", 3)),
    ("alice", lambda: raw("alice", {"method": "rename", "name": "☁ score", "new_name": "☁ best"}),
     ("rename", "alice", "☁ score", "☁ best")),
    ("carol", lambda: raw("carol", {"method": "delete", "name": "☁ name"}),
     ("del", "carol", "☁ name", 5)),
    ("bob", lambda: clients["bob"].set_var("best", 9), ("set", "bob", "☁ best", 9)),
]
for _, act, _ in script:
    act()
    time.sleep(0.3)  # different connections: give each change its turn
time.sleep(0.5)

# scratchattach's ScratchCloud.logs(), its URL's host pointed at nimbus.
class LocalRequests:
    def get(self, url, **kw):
        return real_requests.get(url.replace("https://clouddata.scratch.mit.edu", base), **kw)

sa_cloud.requests = LocalRequests()
cloud = sa_cloud.ScratchCloud(project_id=PID)
acts = cloud.logs(limit=100)
problems = []
if not all(isinstance(a, CloudActivity) for a in acts):
    problems.append("not CloudActivity objects")
got = [(a.type, a.username, a.name, a.value) for a in acts]
want = [e for _, _, e in script][::-1]
print("  /logs via ScratchCloud.logs(), newest first:")
for a in acts:
    print(f"    {a.timestamp} {a.username:6} {a.type:7} {a.name} = {a.value!r}")
if got != want:
    problems.append(f"entries {got} != {want}")
ts = [a.timestamp for a in acts]
if ts != sorted(ts, reverse=True) or not all(isinstance(t, int) and t > 1e12 for t in ts):
    problems.append(f"timestamps not ms, newest first: {ts}")
page = cloud.logs(limit=2, offset=1)
if [(a.type, a.username, a.name, a.value) for a in page] != want[1:3]:
    problems.append("limit/offset page differs")
only = cloud.logs(filter_by_var_named="best")
if [(a.type, a.username) for a in only] != [("set", "bob")]:
    problems.append(f"filter_by_var_named: {[(a.type, a.username) for a in only]}")
for c in clients.values():
    c.disconnect()
if problems:
    for p in problems:
        print("  FAIL:", p)
    sys.exit(1)
print(f"  ok: {len(acts)} entries, verbs {sorted({a.type for a in acts})}, users {sorted({a.username for a in acts})}")
PYEOF
say "history interop passed"
