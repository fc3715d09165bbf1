#!/usr/bin/env bash
# bench/bench_baseline.sh — `make bench` section "baseline": embstore's default
# `train` against a scikit-learn logistic regression on hashed features, on
# the same splits (bench/baseline_lr.py says how), measured in this run.
set -eu
cd "$(dirname "$0")/.."
OUT=${BENCH_OUT:-bench/out}/baseline
mkdir -p "$OUT"
nice /usr/bin/python3 bench/baseline_lr.py --es "${ES_BIN:-build/embstore}" --out "$OUT" --md "$OUT/baseline.md"
