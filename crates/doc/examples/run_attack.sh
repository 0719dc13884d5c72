#!/bin/sh
# Start a `nimbus serve` binary on a fresh data dir, run one doc_attack mode against it,
# stop it. The figures of docs/security.md ("Document rooms and awareness") come from:
#   cargo build --release -p nimbus && cargo build --release -p nimbus-doc --example doc_attack
#   crates/doc/examples/run_attack.sh target/release/nimbus 9180 nonreader
#   crates/doc/examples/run_attack.sh target/release/nimbus 9180 control
#   crates/doc/examples/run_attack.sh target/release/nimbus 9180 awareness --doc-awareness-max-ids 100
# usage: run_attack.sh NIMBUS_BINARY PORT MODE [extra serve flags]
set -e
BIN=$1; PORT=$2; MODE=$3; shift 3
ATTACK=${ATTACK:-${CARGO_TARGET_DIR:-target}/release/examples/doc_attack}
D=$(mktemp -d)
"$BIN" serve --listen "127.0.0.1:$PORT" --data-dir "$D" "$@" > "$D.log" 2>&1 &
PID=$!
sleep 1.5
timeout 300 "$ATTACK" "ws://127.0.0.1:$PORT/doc" "$PID" "$MODE" || true
kill "$PID"; wait "$PID" 2>/dev/null || true
rm -rf "$D" "$D.log"
