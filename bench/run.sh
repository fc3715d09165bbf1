#!/usr/bin/env bash
# bench/run.sh — what `make bench` runs: speed (and sanity-accuracy) figures
# of embstore against its peers, on this machine, in one run.
#
# Sections (each independent: a failing section is reported, the others
# still run, and the exit status says whether any failed):
#   train    bench/bench_train.py: embstore vs PyTorch, train and predict
#            rows/s for LR, FM, DLRM-small, DLRM-reference on synthetic
#            Criteo-shaped data (bench/gen_criteo.c)
#   others   every bench/bench_*.sh found (e.g. bench_index.sh for vector
#            search), run with the same environment
# Outputs go to bench/out/ (git-ignored); the reports are also printed.
#
# Environment:
#   ES_BIN        embstore binary (default build/embstore)
#   BENCH_THREADS threads for every side; a comma list gives one table each
#                 (default "2,1": the 2-core figure, and 1 thread, which is
#                 less sensitive to other load on a shared machine)
#   OMP_WAIT_POLICY default "passive" for both sides: with active spinning
#                 (the libgomp default) an OpenMP team on a machine whose
#                 cores are busy with other work loses most of its time
#                 (measured: 2-thread runs 10-27x slower than 1-thread ones,
#                 for embstore and for torch alike).  Set it to "active"
#                 on an idle machine if you prefer.
#   BENCH_ROWS    training rows for the speed runs (default 200000)
#   BENCH_TEST_ROWS test rows (default 50000)
#   BENCH_CONFIGS train configs (default lr,fm,dlrm-small,dlrm-ref; also dcn)
#   BENCH_ONLY    run only the sections whose names are listed (e.g. "train")
set -u
cd "$(dirname "$0")/.."

export ES_BIN=${ES_BIN:-build/embstore}
export BENCH_THREADS=${BENCH_THREADS:-2,1}
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
export BENCH_ROWS=${BENCH_ROWS:-200000}
export BENCH_TEST_ROWS=${BENCH_TEST_ROWS:-50000}
export BENCH_OUT=bench/out
PY=/usr/bin/python3
mkdir -p "$BENCH_OUT"

echo "== embstore bench: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "   machine: $(lscpu 2>/dev/null | sed -n 's/^Model name:[[:space:]]*//p' | head -1), $(nproc) CPUs visible, threads used: $BENCH_THREADS, OMP_WAIT_POLICY=$OMP_WAIT_POLICY, load average: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "   embstore: $ES_BIN ($("$ES_BIN" --version 2>/dev/null || echo 'not built')), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
echo

want() { [ -z "${BENCH_ONLY:-}" ] || [[ " $BENCH_ONLY " == *" $1 "* ]]; }

failed=()
passed=()
section() { # name command...
    local name=$1; shift
    want "$name" || return 0
    echo "== section: $name"
    local t0=$SECONDS rc
    "$@"
    rc=$?
    if [ $rc -eq 0 ]; then
        passed+=("$name")
        echo "== section $name: ok ($((SECONDS - t0)) s)"
    else
        failed+=("$name")
        echo "== section $name: FAILED (exit $rc, $((SECONDS - t0)) s)"
    fi
    echo
}

section train nice "$PY" bench/bench_train.py --es "$ES_BIN" --threads "$BENCH_THREADS" \
    --rows "$BENCH_ROWS" --test-rows "$BENCH_TEST_ROWS" --out "$BENCH_OUT" --md "$BENCH_OUT/train_speed.md" \
    ${BENCH_CONFIGS:+--configs "$BENCH_CONFIGS"}

for s in bench/bench_*.sh; do
    [ -e "$s" ] || continue
    name=$(basename "$s" .sh)
    name=${name#bench_}
    section "$name" bash "$s"
done

echo "== summary: ${#passed[@]} section(s) ok${passed:+: ${passed[*]}}; ${#failed[@]} failed${failed:+: ${failed[*]}}"
[ ${#failed[@]} -eq 0 ]
