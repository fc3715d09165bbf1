#!/usr/bin/env bash
# bench/bench_storage.sh — `make bench` section: lookup speed of every
# storage method (lookups/s and the ratio to `full`) and a one-seed accuracy
# check at 1/16 of the full table, on the bundled Criteo sample.  The full
# sweep (5 budgets x 3 seeds x 2 datasets) is bench/sweep.sh, reported in
# docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
ES_BIN=${ES_BIN:-build/embstore}
OUT=${BENCH_OUT:-bench/out}/bench_storage
rm -rf "$OUT"
"$ES_BIN" bench-storage data/criteo_kaggle_train_first10k.tsv --name criteo-10k --budgets 1/16 --seeds 1 \
    --share both --threads 1 --out "$OUT"
