#!/usr/bin/env bash
# bench/matryoshka_table.sh — Matryoshka training (train --matryoshka) against
# separate models, the measurement behind docs/methods.md, "matryoshka".
#
# For each dataset (the bundled Criteo split: first 8000 rows to train, last
# 2000 to test; ml-latest-small: ratings >= 4 are clicks, the first 80% of the
# rows to train, the last 20% to test), each model (fm, dlrm) and each seed:
#   - one model trained with --dim 16 --matryoshka 2,4,8,16 (equal weights),
#     evaluated on the test rows at every prefix (embstore eval --dim P);
#   - one model trained separately at each --dim P, evaluated on the same rows.
# Everything else is `embstore train`'s default (full table, early stopping on
# rows carved from the training file, then refit), --threads 1.  Prints a
# markdown table of mean test AUC over the seeds and the difference
# (matryoshka - separate); per-run figures go to $OUT/runs.tsv.
#
#   bench/matryoshka_table.sh [SEEDS]        (default "1 2 3"; ES=build/embstore)
set -euo pipefail
ES=${ES:-build/embstore}
SEEDS=${1:-"1 2 3"}
OUT=${OUT:-build/bench_matryoshka}
PREFIXES="2 4 8 16"
mkdir -p "$OUT"
cr_tr=$OUT/criteo_train.tsv cr_te=$OUT/criteo_test.tsv ml_tr=$OUT/ml_train.csv ml_te=$OUT/ml_test.csv
head -n 8000 data/criteo_kaggle_train_first10k.tsv > "$cr_tr"
tail -n 2000 data/criteo_kaggle_train_first10k.tsv > "$cr_te"
ml_n=$(($(wc -l < data/ml-latest-small.csv) - 1))
ml_k=$((ml_n - (ml_n + 2) / 5))   # round(0.2 n) rows to test, as bench/qtrain_table.py
head -n $((ml_k + 1)) data/ml-latest-small.csv > "$ml_tr"
{ head -n 1 data/ml-latest-small.csv; tail -n +$((ml_k + 2)) data/ml-latest-small.csv; } > "$ml_te"
ML_ARGS="--columns rating:label,userId:cat,movieId:cat,genres:multi --label-threshold 4"

auc() { sed -n 's/.*"\('"$1"'\)":\([0-9.eE+-]*\).*/\2/p' | tail -n 1; }

runs=$OUT/runs.tsv
printf 'dataset\tmodel\tseed\tdim\tmatryoshka_auc\tseparate_auc\n' > "$runs"
for ds in criteo movielens; do
    if [ $ds = criteo ]; then tr=$cr_tr te=$cr_te extra=""; else tr=$ml_tr te=$ml_te extra=$ML_ARGS; fi
    for model in fm dlrm; do
        for seed in $SEEDS; do
            m=$OUT/$ds.$model.$seed.es
            # shellcheck disable=SC2086
            "$ES" train "$tr" $extra --model $model --dim 16 --matryoshka 2,4,8,16 --seed $seed --threads 1 --quiet -o "$m" > /dev/null
            for p in $PREFIXES; do
                a=$("$ES" eval "$m" "$te" --dim $p | auc auc)
                # shellcheck disable=SC2086
                b=$("$ES" train "$tr" $extra --model $model --dim $p --seed $seed --threads 1 --quiet --test "$te" | auc test_auc)
                printf '%s\t%s\t%s\t%s\t%s\t%s\n' $ds $model $seed $p "$a" "$b" | tee -a "$runs" >&2
            done
        done
    done
done
echo
echo "| dataset | model | dim | matryoshka AUC | separate AUC | difference |"
echo "|---|---|---:|---:|---:|---:|"
awk -F'\t' 'NR > 1 { k = $1 "|" $2 "|" $4; a[k] += $5; b[k] += $6; n[k]++; if (!(k in o)) { o[k] = ++c; key[c] = k } }
    END { for (i = 1; i <= c; i++) { k = key[i]; split(k, f, "|");
          printf "| %s | %s | %s | %.4f | %.4f | %+.4f |\n", f[1], f[2], f[3], a[k] / n[k], b[k] / n[k], (a[k] - b[k]) / n[k] } }' "$runs"
