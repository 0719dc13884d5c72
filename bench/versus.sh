#!/usr/bin/env bash
# nimbus against an anchor server in one sitting, interleaved: for each round, every shape
# on every nimbus variant and then on the anchor (bench/cloud.sh, RUNS=1 each; server on
# core 0, generator on core 1). Prints every run's JSON line (with "who") and then the
# medians per (who, shape). Loopback only; every run is bounded in time.
#
#   bench/versus.sh fanout oneroom@16000 oneroom@32000
#   VARIANTS='default=;budget16ms=--max-batch-delay-us 16000' bench/versus.sh fanout
#       nimbus variants, ';'-separated NAME=FLAGS (extra `nimbus serve` flags)
#   ANCHOR_CMD='node /tmp/tw/src/index.js' ANCHOR_NAME=turbowarp bench/versus.sh fanout
#       the anchor: any command that serves the cloud protocol on SERVER_PORT (19990);
#       it is run with PORT=19990 in its environment. Not installed by this script.
#   SERVER_BIN=/path/to/nimbus   another nimbus build;  ROUNDS=3 (default)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${ROUNDS:-3}"
SHAPES=("$@"); [[ ${#SHAPES[@]} -gt 0 ]] || SHAPES=(fanout)
IFS=';' read -r -a VARS <<< "${VARIANTS:-default=}"
cargo build --release -q -p nimbus
OUT="$(mktemp)"
trap 'rm -f "$OUT"' EXIT
run() { # WHO SHAPE [env...]
    local who=$1 shape=$2; shift 2
    local name=${shape%@*} rate=8000
    [[ "$shape" == *@* ]] && rate=${shape#*@}
    env RATE="$rate" RUNS=1 "$@" bench/cloud.sh "$name" | grep '^{' \
        | sed "s|^{|{\"who\": \"$who\", \"shape_rate\": \"$shape\", |" | tee -a "$OUT"
}
echo "# $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load: $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%FT%TZ)"
for round in $(seq "$ROUNDS"); do
    for shape in "${SHAPES[@]}"; do
        for v in "${VARS[@]}"; do
            run "nimbus:${v%%=*}" "$shape" SERVER_ARGS="${v#*=}"
        done
        if [[ -n "${ANCHOR_CMD:-}" ]]; then
            run "${ANCHOR_NAME:-anchor}" "$shape" SERVER_CMD="env PORT=19990 $ANCHOR_CMD" SERVER_PORT=19990
        fi
    done
done
python3 - "$OUT" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
keys = ["deliveries_per_s", "delivery_ratio", "final_stale", "p50_ms", "p99_ms", "server_cpu_pct",
        "generator_cpu_pct", "server_rss_peak_kib"]
groups = {}
for r in rows:
    groups.setdefault((r["shape_rate"], r["who"]), []).append(r)
print("| shape | server | runs | " + " | ".join(keys) + " |")
print("|" + " --- |" * (len(keys) + 3))
for (shape, who), rs in groups.items():
    med = [statistics.median(r.get(k, 0) for r in rs) for k in keys]
    print(f"| {shape} | {who} | {len(rs)} | " + " | ".join(f"{m:g}" for m in med) + " |")
PY
