#!/usr/bin/env bash
# bench/sweep.sh — the memory-budget sweep of docs/benchmarks.md: every
# storage method x budgets 1/4..1/1024 x share none/fields x 3 seeds, on the
# bundled Criteo sample (DLRM) and on MovieLens ml-latest-small (DLRM), then
# writes docs/benchmarks.md with the tables and copies the plots to
# docs/img/.  Resumable: rerunning skips finished cells.
#   SWEEP_THREADS (default 1), SWEEP_OUT (default bench/out/sweep)
set -euo pipefail
cd "$(dirname "$0")/.."
ES_BIN=${ES_BIN:-build/embstore}
T=${SWEEP_THREADS:-1}
OUT=${SWEEP_OUT:-bench/out/sweep}
mkdir -p "$OUT" docs/img
start=$(date +%s)
CRITEO_ARGS="bench-storage data/criteo_kaggle_train_first10k.tsv --name criteo-10k --model dlrm --share both --threads $T --out $OUT/criteo"
ML_ARGS="bench-storage data/ml-latest-small.csv --columns rating:label,userId:cat,movieId:cat,genres:multi --label-threshold 4 --name ml-latest-small --model dlrm --share both --threads $T --out $OUT/movielens"
cached=$( { cat "$OUT"/criteo/cells.csv "$OUT"/movielens/cells.csv 2>/dev/null || true; } | wc -l)
$ES_BIN $CRITEO_ARGS --quiet >/dev/null
$ES_BIN $ML_ARGS --quiet >/dev/null
secs=$(( $(date +%s) - start ))
# the duration of the last run that computed the cells (a rerun that only
# reassembles this page keeps it)
if [ "$cached" -gt 10 ] && [ -s "$OUT/duration" ]; then secs=$(cat "$OUT/duration"); else echo "$secs" > "$OUT/duration"; fi
cp "$OUT/criteo/pareto.svg" docs/img/pareto-criteo.svg
cp "$OUT/movielens/pareto.svg" docs/img/pareto-movielens.svg
[ -f "$OUT/criteo/pareto.png" ] && cp "$OUT/criteo/pareto.png" docs/img/pareto-criteo.png
[ -f "$OUT/movielens/pareto.png" ] && cp "$OUT/movielens/pareto.png" docs/img/pareto-movielens.png
cpu=$(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1)
{
cat <<MD
# Storage methods at a memory budget

Which embedding storage method gives the best accuracy for a given number of bytes? Every method
below was trained with the same data, split, model (DLRM, dim 16, bottom 64-16, top 64-32-1, Adam
1e-3 for dense layers, row-wise Adagrad 0.05 for tables, batch 256, 1 epoch) and seeds. Only the
storage changed: budgets of 1/4 to 1/1024 of the \`full\` table's parameter bytes, each method with
its own parameters (\`--share none\`) or one parameter space for all fields (\`--share fields\`,
multiplexing as in Unified Embedding). Validation is on the last 20% of the rows in file order.
\`full\` runs once, at its own size, as the reference point.

The methods that compress *inside* rows (tables trained at int8/int4 and their combinations with
\`unified\` and \`qr\`, product-quantized codes \`dpq\`/\`mgqe\`, pruned tables \`pep\`/\`deeplight\`) are
swept against the hashing family in [benchmarks-intra.md](benchmarks-intra.md) (issue 11); the
three ways to a low-precision table (PTQ, QAT, ALPT) are compared in
[methods.md](methods.md#precision-training-at-a-precision---precision-qat-alpt).

\`autodim\` and \`optembed\` search a dimension per field (and, for \`optembed\`, which rows to keep)
on validation rows carved from the training rows, then retrain the found table from scratch as
\`fielddim\` (multi-stage training, issue 12, [methods.md](methods.md#multi-stage-training-search--derive--retrain));
their bytes are the retrained table's, and their train rows/s count the search and derive stages
(the retrain's rate over 1 + their share of the time). \`optembed\` prunes rows, so it often uses
less than its budget. \`autosrh\` searches a dimension per (field, frequency block) the same way and
retrains it as \`blockdim\` (which also runs here on its own, at \`dim\` in every block: popular
values through a key map, the rest one row per field).

\`matryoshka\` is not a storage method but a way to serve one table at several sizes: per seed and
share mode ONE \`hash\` table is trained with Matryoshka's nested loss over the prefixes
\`16 x budget / (1/4)\` (16, 4 and 1 dimensions for 1/4, 1/16 and 1/64), and each budget's cell is
that table cut to its prefix (\`embstore slice\`), scored on the validation rows at that prefix. The
table's rows are sized so that every slice is within its budget (a slice keeps the hashed lookup
arrays whole), and every cell reports that one training's rate (DLRM trains each prefix's net, at
about 0.2x a plain run). 1/256 and 1/1024 would need prefixes below one dimension: error cells.

- Machine: $cpu, $(nproc) CPUs; $T thread(s) per run; the whole sweep (both datasets, $(( $(cat $OUT/criteo/cells.csv $OUT/movielens/cells.csv | wc -l) - 2 )) cells)
  took ${secs} s.
- Commands:

\`\`\`sh
build/embstore $CRITEO_ARGS
build/embstore $ML_ARGS
\`\`\`

(\`bash bench/sweep.sh\` runs both and rewrites this page.) Each output directory holds
\`cells.csv\` (one line per run), \`config.txt\` (the settings and data file the cells were run with:
a rerun reuses cells only when it matches, \`--fresh\` starts over), \`results.json\`, \`pareto.svg\`/\`.png\`, \`lookup.csv\` and
\`summary.md\`. In the plots, solid lines are per-field parameters, dashed lines shared ones, bars
span the seeds, and circled points are on the Pareto front.

## Criteo sample (10,000 rows: 8,000 train, 2,000 validation)

![AUC against bytes, Criteo](img/pareto-criteo.svg)

MD
sed 's/^### .*//' "$OUT/criteo/summary.md"
cat <<MD

## MovieLens ml-latest-small (100,836 ratings, label = rating >= 4; user, movie, genres)

![AUC against bytes, MovieLens](img/pareto-movielens.svg)

MD
sed 's/^### .*//' "$OUT/movielens/summary.md"
cat <<'MD'

## Notes

MD
cat bench/sweep_notes.md 2>/dev/null || true
} > docs/benchmarks.md
echo "wrote docs/benchmarks.md (${secs} s)"
