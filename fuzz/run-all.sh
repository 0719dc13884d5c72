#!/usr/bin/env bash
# Runs fuzz targets one after another (one libFuzzer process, one job) and prints a
# Markdown row per target: executions, seconds, exec/s, crashes, commit, command.
#
#   fuzz/run-all.sh [target ...]      # default: every target in fuzz/fuzz_targets
#
# Stops each target at RUNS executions or MAX_SECS seconds, whichever comes first
# (defaults 10,000,000 and 720). Logs go to fuzz/logs/<target>.log (ignored by git).
# Set NICE (default 15) to change the scheduling priority, SANITIZER (default address;
# none is 2-3x faster and enough for code without `unsafe`) for `cargo fuzz build -s`,
# SKIP_BUILD=1 to run the binaries already built (in $CARGO_TARGET_DIR or fuzz/target),
# BUILD_ARGS for more `cargo fuzz build` flags (e.g. -O: no debug assertions), EXTRA_ARGS
# for more libFuzzer flags (ASAN_OPTIONS is passed through).
set -uo pipefail
cd "$(dirname "$0")"
RUNS=${RUNS:-10000000}
MAX_SECS=${MAX_SECS:-720}
NICE=${NICE:-15}
SANITIZER=${SANITIZER:-address}
export RUSTC_BOOTSTRAP=1
mkdir -p logs
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    for f in fuzz_targets/*.rs; do targets+=("$(basename "$f" .rs)"); done
fi
bin_dir=${CARGO_TARGET_DIR:-target}/x86_64-unknown-linux-gnu/release
for t in "${targets[@]}"; do
    commit=$(git rev-parse --short HEAD)
    # The fuzzed code: the target, the fuzz manifest and the crates it builds on.
    dirty=$(git status --porcelain -- "fuzz_targets/$t.rs" Cargo.toml Cargo.lock build.rs ../crates | head -1)
    [ -n "$dirty" ] && commit="$commit+uncommitted"
    if [ -z "${SKIP_BUILD:-}" ]; then
        nice -n "$NICE" cargo fuzz build -s "$SANITIZER" ${BUILD_ARGS:-} "$t" >"logs/$t.build.log" 2>&1 || {
            echo "| $t | build failed, see fuzz/logs/$t.build.log |"
            continue
        }
    fi
    mkdir -p "corpus/$t" "artifacts/$t"
    # What `cargo fuzz run $t -- ARGS` runs, without rebuilding first.
    args=(-runs="$RUNS" -max_total_time="$MAX_SECS" -jobs=1 -workers=1 -print_final_stats=1
        -artifact_prefix="artifacts/$t/" ${EXTRA_ARGS:-})
    cmd="nice -n $NICE cargo fuzz run -s $SANITIZER ${BUILD_ARGS:+$BUILD_ARGS }$t -- ${args[*]}"
    [ -n "${ASAN_OPTIONS:-}" ] && cmd="ASAN_OPTIONS=$ASAN_OPTIONS $cmd"
    start=$(date +%s)
    touch "logs/$t.stamp"
    # With -jobs=1 libFuzzer runs the fuzzing in one child process that logs to fuzz-0.log.
    rm -f fuzz-0.log
    nice -n "$NICE" "$bin_dir/$t" "${args[@]}" "corpus/$t" >"logs/$t.parent.log" 2>&1
    rc=$?
    mv -f fuzz-0.log "logs/$t.log" 2>/dev/null || cp "logs/$t.parent.log" "logs/$t.log"
    secs=$(( $(date +%s) - start ))
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "logs/$t.log" | tail -1 | grep -o '[0-9]*$')
    runs=${runs:-?}
    rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "logs/$t.log" | tail -1 | grep -o '[0-9]*$')
    rate=${rate:-?}
    # Only this run's artifacts (older ones may be kept for reference).
    found=$(find "artifacts/$t" -type f -newer "logs/$t.stamp" | wc -l)
    crashes=$found
    if [ $rc -ne 0 ] || [ "$found" -ne 0 ] || grep -q '^==[0-9]*== ERROR\|^SUMMARY:\|panicked at' "logs/$t.log"; then
        crashes="$found artifact(s), exit $rc: see fuzz/logs/$t.log"
    fi
    echo "| $t | $runs | $secs | $rate | $crashes | $SANITIZER | $commit | \`$cmd\` |"
done
