#!/usr/bin/env bash
# tests/check.sh — the full check `make check` runs (and CI, via .ci/run):
#   1. the test suite in the normal build (quick + slow tiers);
#   2. the quick tier again with the SIMD dispatch forced down to each level
#      below this CPU's best (ES_SIMD=avx2 on an AVX-512 machine, ES_SIMD=ref
#      everywhere), so that every machine also checks the kernels the others
#      run;
#   3. the quick tier again under ASan + UBSan (SAN=1);
#   (2 and 3 run as JOBS test runners side by side that take the tests in
#   turn from one queue (test_runner --queue DIR): the tier once, in about
#   half the time on two cores, a long test on one runner while the other
#   goes on with the rest)
#   4. every fuzz target for a bounded time (FUZZ_SECONDS, default 5: a
#      smoke run in CI; `bash fuzz/run.sh` alone runs 20 s each);
#   5. the Python package's tests (python/tests, pytest), when pytest imports.
# Ends with one line "N passed, N failed" summing all parts (a fuzz target
# counts as one test).
set -uo pipefail
cd "$(dirname "$0")/.."
JOBS=${JOBS:-2}
passed=0; failed=0; skipped=0
tally() { # $1 = log file of a runner
    local line
    line=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$1" | tail -n 1)
    if [ -z "$line" ]; then failed=$((failed+1)); echo "!! no summary line in $1"; return; fi
    local p f s
    p=$(echo "$line" | sed -E 's/^([0-9]+) passed.*/\1/')
    f=$(echo "$line" | sed -E 's/^[0-9]+ passed, ([0-9]+) failed.*/\1/')
    s=$(echo "$line" | sed -nE 's/.*, ([0-9]+) skipped.*/\1/p')
    passed=$((passed+p)); failed=$((failed+f)); skipped=$((skipped+${s:-0}))
    # the failing tests and their FAIL lines, repeated at the end: a CI log is
    # often read from its tail only
    grep -E '^\[ FAIL \]|^    FAIL ' "$1" | sed "s|^|  [$1] |" >>build/check-failures.txt
}
mkdir -p build
: >build/check-failures.txt
echo "== build"
if ! make -j"$JOBS" all build/test_runner >build/check-build.log 2>&1; then
    cat build/check-build.log; echo "0 passed, 1 failed"; exit 1
fi
echo "== tests (normal build, all tiers)"
ES_BIN=build/embstore build/test_runner --full 2>&1 | tee build/check-test.log
tally build/check-test.log
for level in avx2 ref; do
    # only levels below the CPU's best: on an AVX2 machine without AVX-512
    # the normal build already dispatches to avx2
    if [ "$level" = avx2 ] && ! grep -qw avx2 /proc/cpuinfo 2>/dev/null; then
        echo "== quick tier with ES_SIMD=avx2: skipped (this CPU has no AVX2)"; continue
    fi
    if [ "$level" = avx2 ] && ! grep -qw avx512f /proc/cpuinfo 2>/dev/null; then
        echo "== quick tier with ES_SIMD=avx2: skipped (avx2 is this CPU's best level: the normal build ran it)"; continue
    fi
    echo "== tests (quick tier) with ES_SIMD=$level ($JOBS runners side by side)"
    rm -rf build/queue-simd-$level
    for k in $(seq 0 $((JOBS - 1))); do
        ES_SIMD=$level ES_BIN=build/embstore ES_TEST_TMP=build/tmp-simd-$level-$k \
            build/test_runner --queue build/queue-simd-$level >build/check-simd-$level-$k.log 2>&1 &
    done
    wait
    for k in $(seq 0 $((JOBS - 1))); do cat build/check-simd-$level-$k.log; tally build/check-simd-$level-$k.log; done
done
echo "== tests under ASan+UBSan (SAN=1, $JOBS runners side by side)"
if make -j"$JOBS" SAN=1 all build/san/test_runner >build/check-san-build.log 2>&1; then
    rm -rf build/queue-san
    for k in $(seq 0 $((JOBS - 1))); do
        ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
            ES_BIN=build/san/embstore ES_TEST_TMP=build/san/tmp-$k build/san/test_runner --queue build/queue-san \
            >build/check-san-$k.log 2>&1 &
    done
    wait
    for k in $(seq 0 $((JOBS - 1))); do
        log=build/check-san-$k.log
        cat "$log"
        # A runner that died inside the sanitizer's own runtime (a SEGV whose
        # summary points into libsanitizer, seen once in StackDepot while
        # freeing; not reproduced in the same order in one process) runs
        # the tests it had claimed once more, in one fresh process and in
        # the same order; what fails there fails the check.
        if ! grep -qE '^[0-9]+ passed, [0-9]+ failed' "$log" && grep -qE 'SUMMARY: AddressSanitizer: SEGV [^ ]*libsanitizer/' "$log"; then
            names=$(grep -E '^\[ RUN  \] ' "$log" | awk '{print $4}')
            echo "!! $log: the runner died inside the sanitizer runtime (above); its $(echo "$names" | wc -w) tests run again in a fresh process"
            # shellcheck disable=SC2086
            ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
                ES_BIN=build/san/embstore ES_TEST_TMP=build/san/tmp-retry-$k build/san/test_runner $names >build/check-san-retry-$k.log 2>&1
            cat build/check-san-retry-$k.log
            tally build/check-san-retry-$k.log
        else
            tally "$log"
        fi
    done
else
    cat build/check-san-build.log; failed=$((failed+1))
fi
if [ -f fuzz/run.sh ] && [ "${NO_FUZZ:-0}" != 1 ]; then
    echo "== fuzz targets (${FUZZ_SECONDS:-5} s each)"
    if FUZZ_SECONDS=${FUZZ_SECONDS:-5} bash fuzz/run.sh 2>&1 | tee build/check-fuzz.log; then
        n=$(ls fuzz/fuzz_*.c 2>/dev/null | wc -l); passed=$((passed+n))
    else
        failed=$((failed+1))
        grep -v ': ok ' build/check-fuzz.log | tail -n 20 | sed 's|^|  [fuzz] |' >>build/check-failures.txt
    fi
fi
PY=${PYTHON:-/usr/bin/python3}
if [ "${NO_PYTHON:-0}" = 1 ]; then
    echo "== python tests: skipped (NO_PYTHON=1)"; skipped=$((skipped+1))
elif ! "$PY" -c 'import pytest, numpy' >/dev/null 2>&1; then
    echo "== python tests: skipped ($PY cannot import pytest and numpy: .ci/deps.sh installs python3-pytest and python3-numpy)"
    skipped=$((skipped+1))
else
    echo "== python tests (pytest python/tests)"
    PYTHONPATH=python ES_BIN=build/embstore "$PY" -m pytest -q -p no:cacheprovider python/tests 2>&1 | tee build/check-python.log
    line=$(grep -E '[0-9]+ (passed|failed|error)' build/check-python.log | tail -n 1)
    if [ -z "$line" ]; then
        failed=$((failed+1)); echo "!! no pytest summary line in build/check-python.log"
    else
        n() { echo "$line" | grep -oE "[0-9]+ $1" | grep -oE '[0-9]+' || echo 0; }
        passed=$((passed+$(n passed))); failed=$((failed+$(n failed)+$(n error))); skipped=$((skipped+$(n skipped)))
        grep -E '^(FAILED|ERROR) ' build/check-python.log | sed 's|^|  [pytest] |' >>build/check-failures.txt
    fi
fi
if [ -s build/check-failures.txt ]; then
    echo "== failures (repeated from the logs above)"
    head -n 60 build/check-failures.txt
fi
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
