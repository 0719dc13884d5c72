#!/usr/bin/env bash
# Signed-token interop: tokens minted by PyJWT (HS256, RS256, ES256, EdDSA; valid ones and ones
# each rule must refuse) against nimbus-auth's `verify_token` example (crates/auth). Keys are
# generated fresh by Python `cryptography`; no network, no server. tests/interop/tokens/check.py
# lists the cases.
#
#   tests/interop/tokens.sh                       # builds the example first
#   VERIFY_TOKEN_BIN=target/debug/examples/verify_token tests/interop/tokens.sh
#
# Environment: VERIFY_TOKEN_BIN (skip the build), PYTHON (interpreter for the venv, >= 3.10),
# INTEROP_KEEP_LOGS=1 (keep the temp dir with the JWKS).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
VENV="$HERE/.venv-tokens"
START=$SECONDS

say() { printf '\n== %s\n' "$*"; }
die() { printf 'interop-tokens: %s\n' "$*" >&2; exit 1; }

WORK="$(mktemp -d "${TMPDIR:-/tmp}/nimbus-interop-tokens.XXXXXX")"
cleanup() {
    if [[ "${INTEROP_KEEP_LOGS:-0}" == 1 ]]; then echo "files kept in $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------ Python venv
say "python venv ($VENV)"
# shellcheck source=tests/interop/lib.sh
source "$HERE/lib.sh"
interop_python
interop_venv "$VENV" -r "$HERE/requirements-tokens.txt"
"$VENV/bin/python" -m pip freeze --disable-pip-version-check \
    | grep -Ei '^(pyjwt|cryptography)==' | sed 's/^/  /'

# ------------------------------------------------------------------ verify_token example
if [[ -n "${VERIFY_TOKEN_BIN:-}" ]]; then
    say "verify_token: $VERIFY_TOKEN_BIN (from VERIFY_TOKEN_BIN)"
else
    say "cargo build -p nimbus-auth --example verify_token"
    (cd "$ROOT" && timeout 1800 cargo build -q -p nimbus-auth --example verify_token)
    VERIFY_TOKEN_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/examples/verify_token"
fi
[[ -x "$VERIFY_TOKEN_BIN" ]] || die "no executable at $VERIFY_TOKEN_BIN"

# ------------------------------------------------------------------ checks
say "PyJWT tokens -> verify_token"
set +e
timeout -k 5 120 "$VENV/bin/python" "$HERE/tokens/check.py" --bin "$VERIFY_TOKEN_BIN" --workdir "$WORK"
rc=$?
set -e
say "done ($((SECONDS - START)) s)"
[[ $rc -eq 0 ]] || die "some verdicts differ (exit $rc)"
