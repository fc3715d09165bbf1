#!/usr/bin/env bash
# bench/bench_parity_ffm.sh — `make bench` section "parity_ffm": embstore's
# FFM and FM against libffm and xLearn built from ../shared/peers/ (their
# build.sh, g++ and cmake), on the same rows and one-hot features
# (bench/ffm_parity.sh says how; docs/peer-parity.md has a recorded run).
# About 6 minutes on one core.
set -eu
cd "$(dirname "$0")/.."
OUT=${BENCH_OUT:-bench/out}/parity_ffm
PEERS_SRC=${PEERS_SRC:-../shared/peers}
mkdir -p "$OUT"
if [ ! -x "$OUT/peers/bin/ffm-train" ] || [ ! -x "$OUT/peers/bin/xlearn_train" ]; then
    [ -f "$PEERS_SRC/build.sh" ] || { echo "bench_parity_ffm.sh: no $PEERS_SRC/build.sh (the peers' sources)" >&2; exit 1; }
    bash "$PEERS_SRC/build.sh" "$(cd "$OUT" && pwd)/peers" > "$OUT/peers_build.log" 2>&1 ||
        { tail -20 "$OUT/peers_build.log" >&2; exit 1; }
fi
rm -rf "$OUT/work"
ES_BIN=${ES_BIN:-build/embstore} sh bench/ffm_parity.sh "$OUT/peers/bin" "$OUT/work" | tee "$OUT/parity_ffm.md"
