# Shared by the interop scripts (sourced, not run): the cleanup of their servers and work
# dir, finding a Python and making a venv with pins. Each script keeps its own `say`/`die`
# and work dir; the Python functions use `die`.

# interop_cleanup: the EXIT trap of a script that started servers ($PIDS) in a work dir
# ($WORK). Bounded: a server that ignores SIGTERM gets SIGKILL after 5 s. The work dir
# (with the logs) stays when INTEROP_KEEP_LOGS=1.
interop_cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        kill -9 "$pid" 2>/dev/null || true
    done
    if [[ "${INTEROP_KEEP_LOGS:-0}" == 1 ]]; then echo "logs kept in $WORK"; else rm -rf "$WORK"; fi
}

# interop_python: set PY to $PYTHON or the first python3.1x found, and check it is 3.10-3.13
# (scratchcloud 1.2.3 fails to import on Python >= 3.14; PyPI wheels of the pinned
# libraries exist for these).
interop_python() {
    PY="${PYTHON:-}"
    if [[ -z "$PY" ]]; then
        local cand
        for cand in python3.11 python3.12 python3.13 python3.10 python3; do
            if command -v "$cand" >/dev/null 2>&1; then PY="$cand"; break; fi
        done
    fi
    [[ -n "$PY" ]] || die "no python3 found"
    timeout 30 "$PY" -c '
import sys
print("using", sys.executable, sys.version.split()[0])
sys.exit(0 if (3, 10) <= sys.version_info[:2] <= (3, 13) else 1)' \
        || die "need Python 3.10-3.13 (set PYTHON=...)"
}

# interop_venv DIR PIP_ARGS...: the venv DIR on $PY (made anew when it has another Python),
# then `pip install PIP_ARGS` (pins or `-r FILE`). Sets VPY to its python.
interop_venv() {
    local venv="$1"; shift
    local want_ver
    want_ver="$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
    if [[ -x "$venv/bin/python" ]] && \
       [[ "$("$venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" != "$want_ver" ]]; then
        echo "venv has another Python: recreating"
        rm -rf "$venv"
    fi
    if [[ ! -x "$venv/bin/python" ]]; then
        timeout 120 "$PY" -m venv "$venv" || die "python -m venv failed (Debian: apt-get install python3-venv)"
    fi
    timeout 600 "$venv/bin/python" -m pip install --disable-pip-version-check -q "$@"
    VPY="$venv/bin/python"
}
