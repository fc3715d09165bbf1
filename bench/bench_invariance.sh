#!/usr/bin/env bash
# bench/bench_invariance.sh — what batch-invariant inference costs.
#
# Every forward product of a prediction goes through es__gemm_fixed (one
# fused multiply-add chain per output, docs/determinism.md).  ES_FORWARD=sgemm
# puts the dense layers back on OpenBLAS's sgemm, whose summation order
# depends on the batch: that is "before".  Both run in this one script, on
# the same model files and input, alternating, so that load drifting on a
# shared machine hits both alike.  Reported: end-to-end `embstore predict`
# rows/s (parse + lookup + net + write), median of REPS runs each, and the
# largest difference between the two sets of probabilities.
#
# Data: the bundled Criteo sample (data/criteo_kaggle_train_first10k.tsv,
# real rows) repeated to BENCH_INV_ROWS rows.  Models: DLRM and DCN-v2 with
# unified storage at 1/10, dim 16, trained on the sample.
# OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are left as the environment has them.
set -euo pipefail
cd "$(dirname "$0")/.."
ES_BIN=${ES_BIN:-build/embstore}
OUT=${BENCH_OUT:-bench/out}/invariance
ROWS=${BENCH_INV_ROWS:-200000}
REPS=${BENCH_INV_REPS:-3}
THREADS=${BENCH_THREADS:-2,1}
mkdir -p "$OUT"
SRC=data/criteo_kaggle_train_first10k.tsv
DATA=$OUT/criteo_x.tsv
if [ ! -s "$DATA" ] || [ "$(wc -l <"$DATA")" -ne "$ROWS" ]; then
    n=$(wc -l <"$SRC")
    : >"$DATA.tmp"
    for _ in $(seq $(((ROWS + n - 1) / n))); do cat "$SRC" >>"$DATA.tmp"; done
    head -n "$ROWS" "$DATA.tmp" >"$DATA"
    rm -f "$DATA.tmp"
fi

now() { date +%s.%N; }
md=$OUT/invariance.md
{
    echo "| model | threads | sgemm forward rows/s | fixed-order forward rows/s | fixed / sgemm | max abs diff of p |"
    echo "|---|---:|---:|---:|---:|---:|"
} >"$md"
for model in dlrm dcn; do
    m=$OUT/$model.es
    "$ES_BIN" train "$SRC" --model "$model" --storage unified --budget 1/10 --dim 16 --epochs 1 --seed 1 \
        --valid-frac 0 --quiet --out "$m" >/dev/null
    for t in ${THREADS//,/ }; do
        a=() b=()
        for r in $(seq "$REPS"); do
            t0=$(now)
            ES_FORWARD=sgemm "$ES_BIN" predict "$m" "$DATA" --threads "$t" --no-verify --out "$OUT/p_sgemm.txt" 2>/dev/null
            t1=$(now)
            "$ES_BIN" predict "$m" "$DATA" --threads "$t" --no-verify --out "$OUT/p_fixed.txt" 2>/dev/null
            t2=$(now)
            a+=("$(echo "$ROWS / ($t1 - $t0)" | bc -l)")
            b+=("$(echo "$ROWS / ($t2 - $t1)" | bc -l)")
        done
        med() { printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END{print v[int((NR+1)/2)]}'; }
        ma=$(med "${a[@]}") mb=$(med "${b[@]}")
        diff=$(paste "$OUT/p_sgemm.txt" "$OUT/p_fixed.txt" | awk '{d=$1-$2; if(d<0)d=-d; if(d>m)m=d} END{printf "%.1e", m}')
        printf '| %s | %s | %.0f | %.0f | %.3f | %s |\n' "$model" "$t" "$ma" "$mb" "$(echo "$mb / $ma" | bc -l)" "$diff" >>"$md"
    done
done
echo "Batch-invariant inference: embstore predict on $ROWS rows (bundled Criteo sample repeated),"
echo "median of $REPS alternating runs; machine: $(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1), $(nproc) CPUs,"
echo "SIMD level as dispatched, probabilities printed with 6 decimals (so a diff below 1e-6 reads as 0)."
cat "$md"
