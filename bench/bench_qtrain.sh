#!/usr/bin/env bash
# bench/bench_qtrain.sh — `make bench` section "qtrain": PTQ vs QAT vs ALPT
# at int8, int4 and int2 on the Criteo sample and ml-latest-small, two table
# optimizers, 3 seeds (bench/qtrain_table.py says how).  Output:
# ${BENCH_OUT:-bench/out}/qtrain/table.md.  Environment: ES_BIN, QTRAIN_SEEDS (3).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${BENCH_OUT:-bench/out}/qtrain
ES_BIN=${ES_BIN:-build/embstore}
echo "-- machine: $(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1), $(nproc) CPUs visible, load average $(cut -d' ' -f1-3 /proc/loadavg)"
/usr/bin/python3 bench/qtrain_table.py --es "$ES_BIN" --out "$OUT" --seeds "${QTRAIN_SEEDS:-3}"
