#!/usr/bin/env bash
# bench/parity.sh — accuracy of embstore against the PyTorch reference
# (bench/torch_ref.py), and the Unified-Embedding-vs-hashing study.
#
#   bash bench/parity.sh [accuracy] [unified]     (default: both)
#
# accuracy  models lr fm dlrm dcn, storage full, seeds 1 2 3, on
#           data/criteo_kaggle_train_first10k.tsv with --valid-frac 0.2
#           (train on the first 8000 rows, test on the last 2000) and on
#           data/ml-latest-small.csv (CSV reader, multi-valued genres), the same
#           flags for both sides; torch twice: with its own random initial
#           values, and with --es-init (embstore's exact initial values, so
#           the two trajectories should agree to float rounding); writes
#           docs/accuracy.md.
# unified   storage hash vs unified (k = 1 chunk, and k = 4 chunks) at
#           budgets 1/10 and 1/100 of the full table, DLRM, seeds 1..10
#           (torch cross-check: seeds 1 2 3),
#           on the Criteo sample and on
#           data/ml-latest-small.csv; embstore, with torch_ref.py as a
#           cross-check; writes docs/unified-vs-hash.md.
#
# Every run uses --threads 1 (repeatable) under nice.  Raw JSON lines go to
# bench/out/parity/*.jsonl.  Hyper-parameters are fixed below, chosen before
# any result was seen, and are the same for every method and both sides.
#
# Environment: ES_BIN (default build/embstore), SEEDS (accuracy; default
#              "1 2 3"), UNI_SEEDS (unified; default 1..10), TORCH_SEEDS
#              (unified torch cross-check; default "1 2 3"), PARITY_TORCH=0
#              to skip that cross-check.
set -u
cd "$(dirname "$0")/.."

ES=${ES_BIN:-build/embstore}
PY=/usr/bin/python3
REF=bench/torch_ref.py
SEEDS=${SEEDS:-1 2 3}
# The unified-vs-hash study is cheap per run and noisy per seed, so embstore
# runs 10 seeds there; the torch cross-check runs the first 3.
UNI_SEEDS=${UNI_SEEDS:-1 2 3 4 5 6 7 8 9 10}
TORCH_SEEDS=${TORCH_SEEDS:-1 2 3}
OUT=bench/out/parity
CRITEO=data/criteo_kaggle_train_first10k.tsv
ML=data/ml-latest-small.csv
ML_READ=(--columns rating:label,userId:cat,movieId:cat,genres:multi --label-threshold 4)
mkdir -p "$OUT"

# The shared hyper-parameters (embstore's defaults, written out).
HP=(--dim 16 --epochs 1 --batch 256 --lr 0.001 --emb-lr 0.05 --threads 1)
model_flags() { # model -> flags
    case $1 in
    lr) echo --model lr ;;
    fm) echo --model fm ;;
    dlrm) echo --model dlrm --bottom 64,16 --top 64,32 ;;
    dcn) echo --model dcn --cross 2 --top 64,32 ;;
    esac
}

if [ ! -x "$ES" ]; then
    echo "parity.sh: $ES not built (make, or set ES_BIN)" >&2
    exit 2
fi

sections=("$@")
[ ${#sections[@]} -eq 0 ] && sections=(accuracy unified)

# run_pair TAG FILE ARGS... : one embstore run and one torch run, each
# appending {"tag","side",...result} to $OUT/$TAG.jsonl.
run_side() { # side tag file args...
    local side=$1 tag=$2 file=$3
    shift 3
    local line
    case $side in
    embstore) line=$(nice "$ES" train "$file" "$@" --quiet 2>"$OUT/last.err" | tail -n 1) ;;
    torch) line=$(nice "$PY" "$REF" "$file" "$@" 2>"$OUT/last.err" | tail -n 1) ;;
    torch-esinit) line=$(nice "$PY" "$REF" "$file" "$@" --es-init 2>"$OUT/last.err" | tail -n 1) ;;
    esac
    if [ "${line:0:1}" != "{" ]; then
        echo "parity.sh: $side failed for $tag: $(tail -n 3 "$OUT/last.err")" >&2
        line='{"error": true}'
    fi
    printf '{"tag": "%s", "side": "%s", "args": "%s", "result": %s}\n' "$tag" "$side" "$*" "$line" >>"$OUT/$JSONL"
    echo "  $side $tag: $(echo "$line" | cut -c1-110)" >&2
}

if [[ " ${sections[*]} " == *" accuracy "* ]]; then
    JSONL=accuracy.jsonl
    : >"$OUT/$JSONL"
    echo "== accuracy: embstore vs torch, storage full, seeds $SEEDS" >&2
    for data in criteo ml; do
        if [ $data = criteo ]; then file=$CRITEO; read_args=(); else file=$ML; read_args=("${ML_READ[@]}"); fi
        if [ ! -f "$file" ]; then
            echo "parity.sh: $file missing, skipping" >&2
            continue
        fi
        for m in lr fm dlrm dcn; do
            for s in $SEEDS; do
                args=("${read_args[@]}" $(model_flags $m) --storage full --valid-frac 0.2 "${HP[@]}" --seed "$s")
                run_side embstore "$data/$m/$s" "$file" "${args[@]}"
                run_side torch "$data/$m/$s" "$file" "${args[@]}"
                run_side torch-esinit "$data/$m/$s" "$file" "${args[@]}"
            done
        done
    done
    "$PY" bench/parity_report.py accuracy "$OUT/$JSONL" docs/accuracy.md \
        "$CRITEO $ML" "${HP[*]}" "$SEEDS" || exit 1
fi

if [[ " ${sections[*]} " == *" unified "* ]]; then
    JSONL=unified.jsonl
    : >"$OUT/$JSONL"
    echo "== unified vs hash: budgets 1/10, 1/100; seeds $UNI_SEEDS (torch: $TORCH_SEEDS)" >&2
    for data in criteo ml; do
        if [ $data = criteo ]; then file=$CRITEO; read_args=(); else file=$ML; read_args=("${ML_READ[@]}"); fi
        if [ ! -f "$file" ]; then
            echo "parity.sh: $file missing, skipping" >&2
            continue
        fi
        for budget in 1/10 1/100; do
            for method in hash unified unified-k4; do
                for s in $UNI_SEEDS; do
                    case $method in
                    unified-k4) storage=(--storage unified --chunks 4) ;;
                    *) storage=(--storage $method) ;;
                    esac
                    args=("${read_args[@]}" $(model_flags dlrm) "${storage[@]}" --budget $budget --valid-frac 0.2
                          "${HP[@]}" --seed "$s")
                    run_side embstore "$data/$budget/$method/$s" "$file" "${args[@]}"
                    if [ "${PARITY_TORCH:-1}" = 1 ] && [[ " $TORCH_SEEDS " == *" $s "* ]]; then
                        run_side torch "$data/$budget/$method/$s" "$file" "${args[@]}"
                    fi
                done
            done
        done
    done
    "$PY" bench/parity_report.py unified "$OUT/$JSONL" docs/unified-vs-hash.md \
        "$CRITEO $ML" "${HP[*]}" "embstore $UNI_SEEDS; torch $TORCH_SEEDS" || exit 1
fi
