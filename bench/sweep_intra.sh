#!/usr/bin/env bash
# bench/sweep_intra.sh — issue 11's sweep: the methods that compress inside
# rows (a precision below fp32, codebook rows, pruned tables) against the
# hashing family (hash, unified, qr), on the bundled Criteo sample and on
# ml-latest-small (DLRM, the settings of bench/sweep.sh), 3 seeds:
#   - every method at 1/2, 1/4, 1/8, 1/16 and 1/32 of the fp32 full table;
#   - the combinations (unified@int4, unified@int4/alpt, qr@int8, hash@int4)
#     and the hashing family on down to 1/1024;
# then writes docs/benchmarks-intra.md (tables, the per-budget comparison
# of the two families, plots in docs/img/).  Resumable: a rerun skips
# finished cells.  SWEEP_THREADS (1), SWEEP_SEEDS (1,2,3),
# SWEEP_OUT (bench/out/sweep_intra).
set -euo pipefail
cd "$(dirname "$0")/.."
ES_BIN=${ES_BIN:-build/embstore}
T=${SWEEP_THREADS:-1}
SEEDS=${SWEEP_SEEDS:-1,2,3}
OUT=${SWEEP_OUT:-bench/out/sweep_intra}
mkdir -p "$OUT" docs/img
BASE="hash,unified,qr"
INTRA="dpq,mgqe,dedup,hash@int8,hash@int4,unified@int8,unified@int4,unified@int4/alpt,qr@int8"
# The pruning schedules in backward steps, sized to the one epoch each
# dataset gives (Criteo: 8000 rows / 256 = 32 steps; MovieLens: 315): prune
# over the first half (pep: rewind=0, as a 1-epoch run leaves no room to
# retrain from the initial values) or three quarters (deeplight), then train
# the pruned table on.
PRUNE_criteo="pep:steps=16;interval=4;rewind=0,deeplight:steps=24;interval=4"
PRUNE_movielens="pep:steps=160;interval=20;rewind=0,deeplight:steps=240;interval=20"
COMBO="unified@int4,unified@int4/alpt,qr@int8,hash@int4"
CRITEO="data/criteo_kaggle_train_first10k.tsv --name criteo-10k"
ML="data/ml-latest-small.csv --columns rating:label,userId:cat,movieId:cat,genres:multi --label-threshold 4 --name ml-latest-small"
COMMON="--model dlrm --threads $T --seeds $SEEDS --quiet"
start=$(date +%s)
cached=$( { cat "$OUT"/criteo/cells.csv "$OUT"/movielens/cells.csv 2>/dev/null || true; } | wc -l)
for ds in criteo movielens; do
    if [ $ds = criteo ]; then D=$CRITEO; P=$PRUNE_criteo; else D=$ML; P=$PRUNE_movielens; fi
    $ES_BIN bench-storage $D $COMMON --out "$OUT/$ds" --methods "$BASE,$INTRA,$P" --budgets 1/2,1/4,1/8,1/16,1/32 \
        --no-lookup-speed > /dev/null
    $ES_BIN bench-storage $D $COMMON --out "$OUT/$ds" --methods "$BASE,$COMBO" --budgets 1/64,1/256,1/1024 \
        --no-lookup-speed > /dev/null
    # all cells are done: this run only measures lookup speed (at 1/16) and
    # writes the summary and plot over every cell
    $ES_BIN bench-storage $D $COMMON --out "$OUT/$ds" --methods "$BASE,$INTRA,$P" --budgets 1/16 > /dev/null
    cp "$OUT/$ds/pareto.svg" "docs/img/pareto-intra-$ds.svg"
    [ -f "$OUT/$ds/pareto.png" ] && cp "$OUT/$ds/pareto.png" "docs/img/pareto-intra-$ds.png"
done
secs=$(( $(date +%s) - start ))
# the duration of the run that computed the cells (a rerun that only
# reassembles this page keeps it)
if [ "$cached" -gt 10 ] && [ -s "$OUT/duration" ]; then secs=$(cat "$OUT/duration"); else echo "$secs" > "$OUT/duration"; fi
cpu=$(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1)
cells=$(( $(cat "$OUT"/criteo/cells.csv "$OUT"/movielens/cells.csv | wc -l) - 2 ))
{
cat <<MD
# Inside rows vs across rows: low precision, codebooks and pruning at a memory budget

The sweep of [benchmarks.md](benchmarks.md) compares methods that compress *across* rows (fewer
rows, shared by hashing, composition or generation). This page adds the methods that compress
*inside* each row (issue 11): a row-table method trained at a lower precision (\`METHOD@P\`:
quantization-aware training, or \`/alpt\`: codes only with learned step sizes), product-quantized
code rows (\`dpq\`, \`mgqe\`), merged near-duplicate rows (\`dedup\`) and pruned tables (\`pep\`, \`deeplight\`, with their schedules sized to the
one epoch, \`METHOD:k=v;k=v\` in the tables), against the hashing
family (\`hash\`, \`unified\`, \`qr\`) on the same data, model and seeds. Settings as in
[benchmarks.md](benchmarks.md): DLRM, dim 16, row-wise Adagrad 0.05 for every table, 1 epoch,
validation on the last 20% of the rows. Budgets are fractions of the fp32 \`full\` table's
bytes: every method at 1/2 to 1/32; the combinations and the hashing family on to 1/1024.
In the plots, circles are the hashing family and squares the inside-row methods.

- Machine: $cpu, $(nproc) CPUs; $T thread(s) per run; the $cells cells took ${secs} s (a rerun
  reuses finished cells), $(date -u +%Y-%m-%d).
- Command: \`bash bench/sweep_intra.sh\` (three \`embstore bench-storage\` calls per dataset; see
  the script).

## Criteo sample (10,000 rows: 8,000 train, 2,000 validation)

![AUC against bytes, Criteo, inside vs across rows](img/pareto-intra-criteo.svg)

MD
sed 's/^### .*//' "$OUT/criteo/summary.md"
cat <<MD

## MovieLens ml-latest-small (100,836 ratings, label = rating >= 4)

![AUC against bytes, MovieLens, inside vs across rows](img/pareto-intra-movielens.svg)

MD
sed 's/^### .*//' "$OUT/movielens/summary.md"
cat <<'MD'

## Notes

MD
cat bench/sweep_intra_notes.md 2>/dev/null || true
} > docs/benchmarks-intra.md
echo "wrote docs/benchmarks-intra.md (${secs} s)"
