#!/usr/bin/env bash
# bench/bench_diag.sh — `make bench` section "diag": `embstore diagnose` on a
# 1M x 16 table and 100k x 128 vectors against numpy + scikit-learn doing
# the same computations in the same run, one thread each
# (bench/diag_bench.py says how).  Output: ${BENCH_OUT:-bench/out}/diag/table.md
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${BENCH_OUT:-bench/out}/diag
mkdir -p "$OUT"
echo "-- machine: $(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1), $(nproc) CPUs visible, load average $(cut -d' ' -f1-3 /proc/loadavg)"
OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 /usr/bin/python3 bench/diag_bench.py --es "${ES_BIN:-build/embstore}" --out "$OUT" | tee "$OUT/table.md"
