#!/usr/bin/env bash
# bench/bench_mpi.sh — training across processes (docs/scale.md): rows/s
# and communication bytes per step at 1, 2 and 4 ranks, with the dense
# allreduce's bytes next to their formula.
#
# On a 2-core machine 4 ranks measure correctness and volume, not speedup:
# the ranks share the cores (mpirun --oversubscribe), so rows/s there says
# little about a cluster.  The table's "same model" column checks that every
# rank count wrote the 1-rank model file (cmp).
#
# Data: the bundled Criteo sample (10,000 real rows).  Configs: DLRM with
# unified storage at 1/10 and LR with hash storage, one epoch, batch 256,
# --threads 1 per rank.  Skipped (exit 0 with a note) when mpirun is missing
# or $ES_BIN is the plain build.
#
# The formula for the dense bytes one rank sends per step (reduce-scatter +
# allgather of P floats in N chunks, then the 16 block losses):
#     2 (N - 1) * 4 ceil(P / N)  +  8 (16 / N) (N - 1)
# P is the net's parameter count (net_bytes / 4 in the JSON).  The all-to-all
# bytes depend on the distinct rows of each rank's part (the data's
# duplicate rate); bench/mpi_cost_model.py (run at the end) predicts them
# from the data and sets the prediction beside the counters.
set -euo pipefail
cd "$(dirname "$0")/.."
ES_BIN=${ES_BIN:-build/embstore}
OUT=${BENCH_OUT:-bench/out}/mpi
MPIRUN="mpirun --oversubscribe --allow-run-as-root"
mkdir -p "$OUT"
if ! command -v mpirun >/dev/null 2>&1; then
    echo "mpirun not found (openmpi-bin): skipped"
    exit 0
fi
if $MPIRUN -np 2 "$ES_BIN" train /nonexistent --valid-frac 0 --early-stop 0 2>&1 | grep -q "built without MPI"; then
    echo "$ES_BIN was built without MPI (make MPI=1): skipped"
    exit 0
fi
DATA=data/criteo_kaggle_train_first10k.tsv
COMMON="--valid-frac 0 --early-stop 0 --epochs 1 --batch 256 --threads 1 --seed 1 --quiet"
num() { sed -n "s/.*\"$1\":\([-0-9.e+]*\).*/\1/p" "$2"; }
{
    echo "| config | ranks | train rows/s | alltoall bytes/step | allreduce bytes/step | allreduce formula | comm s | same model |"
    echo "|---|---|---|---|---|---|---|---|"
    for cfg in "dlrm unified --budget 0.1" "lr hash --budget 0.1"; do
        set -- $cfg
        model=$1 storage=$2
        shift 2
        for np in 1 2 4; do
            j="$OUT/$model-$storage-$np.json"
            rm -f "$OUT/model.es"
            $MPIRUN -np $np "$ES_BIN" train $DATA --model $model --storage $storage "$@" $COMMON --out "$OUT/model.es" | tail -n 1 >"$j"
            mv "$OUT/model.es" "$OUT/$model-$storage-$np.es"
            same=yes
            [ $np -gt 1 ] && ! cmp -s "$OUT/$model-$storage-1.es" "$OUT/$model-$storage-$np.es" && same=NO
            P=$(($(num net_bytes "$j") / 4))
            formula=$(awk -v n=$np -v p=$P 'BEGIN { c = int((p + n - 1) / n); printf "%d", 2 * (n - 1) * 4 * c + 8 * (16 / n) * (n - 1) }')
            printf "| %s + %s | %d | %.0f | %.0f | %.0f | %s | %.3f | %s |\n" "$model" "$storage" $np "$(num train_rows_per_s "$j")" \
                "$(num comm_alltoall_bytes_per_step "$j")" "$(num comm_allreduce_bytes_per_step "$j")" "$formula" \
                "$(num comm_seconds "$j")" "$same"
        done
    done
} | tee "$OUT/mpi.md"
# the all-to-all bytes against their cost model, and the cluster projection
# (bench/mpi_cost_model.py; docs/scale.md)
echo
/usr/bin/python3 bench/mpi_cost_model.py --es "$ES_BIN" | tee "$OUT/cost_model.md"
