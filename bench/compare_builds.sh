#!/usr/bin/env bash
# bench/compare_builds.sh — speed of two embstore builds measured in one run,
# interleaved (A B A B ...), so that a refactoring can show it did not slow
# anything down beyond noise.  Not part of `make bench` (it needs a second
# build, e.g. a git worktree of the old commit).
#
#   bash bench/compare_builds.sh OLD_BIN NEW_BIN [REPS]
#
# Data: synthetic Criteo-shaped rows from bench/gen_criteo.c (100000 train,
# 50000 test, seed 1), in bench/out/ab/.  Per model (lr, fm, dlrm, dcn) and
# build: `train --valid TEST --threads 1` (JSON train_rows_per_s, parsing
# included; eval_rows_per_s) and `predict` wall-clock rows/s.  Prints the
# median of REPS (default 3) runs per cell and NEW/OLD ratios.  One thread
# because it is the least sensitive to other load on a shared machine.
set -eu
cd "$(dirname "$0")/.."
A=$1; B=$2; REPS=${3:-3}
OUT=bench/out/ab
mkdir -p "$OUT"
if [ ! -s "$OUT/train.tsv" ]; then
    cc -O2 -o "$OUT/gen" bench/gen_criteo.c -lm
    "$OUT/gen" --rows 150000 --seed 1 --out "$OUT/all.tsv" >/dev/null
    head -n 100000 "$OUT/all.tsv" > "$OUT/train.tsv"
    tail -n 50000 "$OUT/all.tsv" > "$OUT/test.tsv"
    rm -f "$OUT/all.tsv"
fi
num() { sed -n "s/.*\"$1\":\([0-9.e+-]*\).*/\1/p"; }
: > "$OUT/raw.txt"
for rep in $(seq "$REPS"); do
    for side in A B; do
        bin=$A; [ $side = B ] && bin=$B
        for m in lr fm dlrm dcn; do
            j=$("$bin" train "$OUT/train.tsv" --valid "$OUT/test.tsv" --model $m --storage unified --budget 0.1 \
                --epochs 1 --seed 1 --threads 1 --quiet --out "$OUT/$side-$m.es")
            t0=$(date +%s.%N)
            "$bin" predict "$OUT/$side-$m.es" "$OUT/test.tsv" --threads 1 --out "$OUT/$side-$m.pred" >/dev/null 2>&1
            t1=$(date +%s.%N)
            echo "$side $m $(echo "$j" | num train_rows_per_s) $(echo "$j" | num eval_rows_per_s) $(echo "50000 / ($t1 - $t0)" | bc -l)" >> "$OUT/raw.txt"
        done
    done
done
echo "Conditions: $(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1), 1 thread, load $(cut -d' ' -f1-3 /proc/loadavg), $REPS interleaved runs, medians"
echo "A = $A"
echo "B = $B"
echo
echo "| model | train rows/s A | B | B/A | eval rows/s A | B | B/A | predict rows/s A | B | B/A |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
/usr/bin/python3 - "$OUT/raw.txt" <<'PY'
import sys, statistics as st
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
for m in ["lr", "fm", "dlrm", "dcn"]:
    cells = []
    for col in (2, 3, 4):
        a = st.median(float(r[col]) for r in rows if r[0] == "A" and r[1] == m)
        b = st.median(float(r[col]) for r in rows if r[0] == "B" and r[1] == m)
        cells += [f"{a:.0f}", f"{b:.0f}", f"{b / a:.3f}"]
    print(f"| {m} | " + " | ".join(cells) + " |")
PY
for m in lr fm dlrm dcn; do
    if cmp -s "$OUT/A-$m.pred" "$OUT/B-$m.pred"; then echo "$m: predictions of A and B identical"; else echo "$m: predictions of A and B DIFFER"; fi
done
