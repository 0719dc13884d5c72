#!/usr/bin/env bash
# `nimbus bench gateway --redis` on a fresh redis-server (AOF everysec, no RDB; installed with
# apt-get when missing), with the CPU each side used: one line per run,
#   rate <dispatches/s> redis_cpu <s> node_cpu <s>
# then Redis' INFO commandstats (calls and usec per command) for the last run.
# Loopback only; every run ends by itself.
#
#   bench/gateway_redis.sh [BIN]              # default target/release/nimbus, 1 run
#   RUNS=3 bench/gateway_redis.sh /tmp/a      # alternate builds yourself for an A/B
#   PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 bench/gateway_redis.sh   (LD_PRELOAD
#                                              for the bench process only, not for Redis)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${1:-target/release/nimbus}"
RUNS="${RUNS:-1}"
PORT="${PORT:-16395}"
command -v redis-server >/dev/null || sudo -n apt-get install -y -q redis-server || apt-get install -y -q redis-server
tick=$(getconf CLK_TCK)
for _ in $(seq "$RUNS"); do
    D="$(mktemp -d)"
    redis-server --port "$PORT" --bind 127.0.0.1 --dir "$D" --appendonly yes --appendfsync everysec \
        --save '' --daemonize yes --pidfile "$D/r.pid" >/dev/null
    for _ in $(seq 50); do [[ -s "$D/r.pid" ]] && redis-cli -p "$PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
    RP="$(cat "$D/r.pid")"
    cpu() { awk -v t="$tick" '{print ($14+$15)/t}' "/proc/$RP/stat"; }
    c0="$(cpu)"
    env ${PRELOAD:+LD_PRELOAD=$PRELOAD} /usr/bin/time -f "node_cpu %U %S" timeout 300 "$BIN" bench gateway \
        --redis "redis://127.0.0.1:$PORT/" --json --runs 1 >"$D/out.json" 2>"$D/time.txt"
    c1="$(cpu)"
    redis-cli -p "$PORT" info commandstats | grep 'calls=' | sed 's/,rejected.*//' >"$D/stats.txt"
    redis-cli -p "$PORT" shutdown nosave >/dev/null 2>&1 || true
    python3 - "$D/out.json" "$D/time.txt" "$c0" "$c1" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
t = open(sys.argv[2]).read().split()
i = t.index("node_cpu")
print("rate %.0f redis_cpu %.2f node_cpu %.2f" % (
    j["dispatch_per_s"], float(sys.argv[4]) - float(sys.argv[3]), float(t[i + 1]) + float(t[i + 2])))
PY
    STATS="$(cat "$D/stats.txt")"
    rm -rf "$D"
done
echo "# INFO commandstats of the last run"
echo "$STATS"
