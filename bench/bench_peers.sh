#!/usr/bin/env bash
# bench/bench_peers.sh — `make bench` section "peers" (issue 16): embstore
# against xLearn (LR, FM, FFM) and libffm (FFM), built from ../shared/peers/,
# whole processes on one libffm file, in one run.
#
# Data: PEERS_ROWS (default 1,200,000) rows of bench/gen_criteo (seed 7),
# the first PEERS_TRAIN (1,000,000) to train and the rest to test, turned by
# bench/ffm_convert.py --hash 20 into libffm text: 39 one-hot fields (13
# bucketized counts, 26 categories), feature index = CRC-32 of
# "field:token" mod 2^20 (xLearn's users hash Criteo this way).  Synthetic:
# for speed and memory, not for claims about accuracy on real data.
#
# Each run is one training process timed whole (/usr/bin/time: wall seconds
# and peak RSS), then a separate predict/eval process for the test AUC and
# logloss (not timed).  rows/s = training rows x epochs / wall.
# Hyper-parameters (stated in the output too):
#   xLearn   xlearn_train -s 0|1|2 (LR, FM k=8, FFM k=4), its defaults
#            otherwise (AdaGrad, -r 0.2, -b 2e-5, normalization on),
#            --dis-es (no early stopping), --no-bin (no cache file), -nthread T
#   libffm   ffm-train -k 4 -r 0.2 -l 2e-5 -t E -s T
#   embstore train FILE --format libffm --storage full --valid-frac 0
#            --epochs E --threads T and --model lr | fm --dim 8 | ffm --dim 4;
#            its other defaults (FTRL tables alpha 0.05, l1 0.01, l2 0.3,
#            batch 64; docs/training.md), except LR's FTRL settings, which
#            the bench chooses first on the training file alone: 1 epoch on
#            its first 90 % for each of PEERS_LR_GRID ("alpha,l1,l2 ..."),
#            the best validation AUC on its last 10 % wins (the test rows
#            are never looked at); PEERS_LR_OPTS="--ftrl-alpha A ..." skips
#            the choice.  FFM's tables train with libffm's update
#            (PEERS_FFM_OPTS, default "--emb-optim adagrad --emb-lr 0.2
#            --emb-init-acc 1").  xLearn's defaults are its authors' own choice for
#            this kind of data (lr 0.2, with instance normalization).
#            Runs of more than one epoch add --in-memory: the parsed rows are
#            kept for the later epochs, as xLearn and libffm keep theirs.
# Threads: PEERS_THREADS (default "1 2"), epochs PEERS_EPOCHS ("1 5"),
# models PEERS_MODELS ("lr fm ffm");
# PEERS_REPEAT (default 1): runs of each training process, the fastest
# reported (this machine's times move 10-20 % from run to run).
# When the peers cannot be built the section says so and times embstore
# alone.  Output: $BENCH_OUT/peers/peers.md (BENCH_OUT default bench/out).
set -u
cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUT=${BENCH_OUT:-bench/out}/peers
case $OUT in /*) ;; *) OUT=$ROOT/$OUT ;; esac
ES=${ES_BIN:-build/embstore}
case $ES in /*) ;; *) ES=$ROOT/$ES ;; esac
ROWS=${PEERS_ROWS:-1200000}
NTRAIN=${PEERS_TRAIN:-1000000}
EPOCHS=${PEERS_EPOCHS:-1 5}
THREADS=${PEERS_THREADS:-1 2}
MODELS=${PEERS_MODELS:-lr fm ffm}
REPEAT=${PEERS_REPEAT:-1}
PEERS_SRC=${PEERS_SRC:-$ROOT/../shared/peers}
PY=${PYTHON:-python3}
[ -x "$ES" ] || { echo "bench_peers: no $ES (make all)" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "bench_peers: /usr/bin/time not found (Debian: time)" >&2; exit 1; }
mkdir -p "$OUT"

# ---- the peers (built once; the parity section's build is reused) ----------
PB=""
for d in "$OUT/peers/bin" "$ROOT/bench/out/parity_ffm/peers/bin"; do
    [ -x "$d/xlearn_train" ] && [ -x "$d/ffm-train" ] && { PB=$d; break; }
done
if [ -z "$PB" ]; then
    if [ -f "$PEERS_SRC/build.sh" ] && bash "$PEERS_SRC/build.sh" "$OUT/peers" > "$OUT/peers_build.log" 2>&1; then
        PB=$OUT/peers/bin
    else
        echo "bench_peers: the peers could not be built (see $OUT/peers_build.log); timing embstore alone"
    fi
fi

# ---- the data ----------------------------------------------------------------
D=$OUT/data_${ROWS}_${NTRAIN}
if [ ! -f "$D/test.ffm" ]; then
    mkdir -p "$D.tmp"
    cc -O2 -o "$D.tmp/gen_criteo" bench/gen_criteo.c -lm || exit 1
    "$D.tmp/gen_criteo" --rows "$ROWS" --seed 7 --out "$D.tmp/gen.tsv" 2>/dev/null || exit 1
    nice "$PY" bench/ffm_convert.py "$D.tmp/gen.tsv" "$NTRAIN" "$D.tmp" --hash 20 --no-csv || exit 1
    rm -f "$D.tmp/gen.tsv" "$D.tmp/gen_criteo"
    rm -rf "$D"
    mv "$D.tmp" "$D"
fi

# metrics PROBS: "auc logloss" of one probability per line against test.ffm's labels
metrics() {
    "$PY" - "$D/test.ffm" "$1" <<'PY'
import math, sys
sys.path.insert(0, "bench")
from auc import auc
y = [float(l.split(None, 1)[0]) for l in open(sys.argv[1])]
p = [float(l) for l in open(sys.argv[2])]
if len(y) != len(p):
    sys.exit("metrics: %d labels, %d predictions" % (len(y), len(p)))
eps = 1e-7
ll = -sum(math.log(min(max(q, eps), 1 - eps)) if t > 0 else math.log(min(max(1 - q, eps), 1 - eps)) for t, q in zip(y, p)) / len(y)
print("%.4f %.4f" % (auc(y, p), ll))
PY
}

W=$OUT/work
rm -rf "$W"
mkdir -p "$W"
RES=$OUT/results.txt
: > "$RES"
# timed NAME CMD...: runs CMD in $W/NAME (a fresh directory holding links to
# the data, so no tool reads another's cache file) PEERS_REPEAT times, each
# from a directory emptied of what the runs before wrote,
# appends "NAME wall rss_kb" of the fastest run (its peak RSS)
timed() {
    local name=$1 r best="" line
    shift
    rm -rf "${W:?}/$name"
    mkdir -p "$W/$name"
    ln -s "$D/train.ffm" "$W/$name/train.ffm"
    ln -s "$D/test.ffm" "$W/$name/test.ffm"
    for ((r = 0; r < REPEAT; r++)); do
        # every run from the text: a repeat must not find the cache file an
        # earlier run wrote (libffm writes train.ffm.bin and reuses it)
        find "$W/$name" -mindepth 1 ! -name train.ffm ! -name test.ffm -delete
        if ! (cd "$W/$name" && /usr/bin/time -f "%e %M" -o time.txt "$@" > log.txt 2>&1); then
            echo "bench_peers: $name failed:" >&2
            tail -5 "$W/$name/log.txt" >&2
            return 1
        fi
        line=$(cat "$W/$name/time.txt")
        if [ -z "$best" ] || awk -v a="${line%% *}" -v b="${best%% *}" 'BEGIN { exit !(a < b) }'; then best=$line; fi
    done
    echo "$name $best" >> "$RES"
    return 0
}

# ---- LR's FTRL settings, chosen on the training file's last 10 % --------------
LR_OPTS=${PEERS_LR_OPTS-}
SEL=$OUT/lr_selection.txt
: > "$SEL"
if [ -z "$LR_OPTS" ] && [[ " $MODELS " == *" lr "* ]]; then
    best_auc=""
    for g in ${PEERS_LR_GRID:-0.05,0.01,0.3 0.1,0.01,0.3 0.2,0.01,0.3 0.05,0.001,0.03 0.1,0.001,0.03 0.2,0.001,0.03 0.3,0.001,0.03}; do
        IFS=, read -r a l1 l2 <<< "$g"
        o="--ftrl-alpha $a --ftrl-l1 $l1 --ftrl-l2 $l2"
        # shellcheck disable=SC2086
        auc=$("$ES" train "$D/train.ffm" --format libffm --model lr --storage full --valid-frac 0.1 --early-stop 0 --epochs 1 \
            --threads 1 --quiet $o 2>/dev/null | tail -1 | "$PY" -c 'import json,sys; print(json.loads(sys.stdin.read())["auc"])') || auc=""
        echo "$o $auc" >> "$SEL"
        if [ -n "$auc" ] && { [ -z "$best_auc" ] || awk -v a="$auc" -v b="$best_auc" 'BEGIN { exit !(a > b) }'; }; then
            best_auc=$auc
            LR_OPTS=$o
        fi
    done
fi
echo "chosen $LR_OPTS" >> "$SEL"

# FFM: libffm's own algorithm for the tables (AdaGrad, lr 0.2, accumulators
# starting at 1; libffm -r 0.2), not embstore's FTRL default: the same
# update on both sides, and an Adagrad row update costs one square root a
# float where FTRL's costs two and a division.  libffm's lambda 2e-5 is
# left out: embstore's lazy L2 (--emb-l2 2e-5) measured 18 % slower at
# 5 epochs and no better (test AUC 0.8728 against 0.8731 without it).
FFM_OPTS=${PEERS_FFM_OPTS-"--emb-optim adagrad --emb-lr 0.2 --emb-init-acc 1"}

LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
for e in $EPOCHS; do
    for t in $THREADS; do
        for m in $MODELS; do
            case $m in lr) s=0 k=1 ;; fm) s=1 k=8 ;; ffm) s=2 k=4 ;; esac
            n=es_${m}_e${e}_t${t}
            dim=$LR_OPTS
            [ "$m" != lr ] && dim="--dim $k"
            [ "$m" = ffm ] && dim="$dim $FFM_OPTS"
            [ "$e" -gt 1 ] && dim="$dim --in-memory" # as xLearn and libffm, keep the parsed rows for the later epochs
            # shellcheck disable=SC2086
            if timed "$n" "$ES" train train.ffm --format libffm --model "$m" $dim --storage full --valid-frac 0 \
                --epochs "$e" --threads "$t" --quiet --out model.es; then
                (cd "$W/$n" && "$ES" predict model.es test.ffm --digits 9 --out pred.txt > /dev/null 2>&1) &&
                    echo "$n metrics $(metrics "$W/$n/pred.txt")" >> "$RES"
            fi
            [ -n "$PB" ] || continue
            n=xl_${m}_e${e}_t${t}
            if timed "$n" "$PB/xlearn_train" train.ffm -s "$s" -k "$k" -e "$e" --dis-es --no-bin -nthread "$t" -m model; then
                (cd "$W/$n" && "$PB/xlearn_predict" test.ffm model -o pred.txt --sigmoid -nthread "$t" > /dev/null 2>&1) &&
                    echo "$n metrics $(metrics "$W/$n/pred.txt")" >> "$RES"
            fi
            [ "$m" = ffm ] || continue
            n=lf_${m}_e${e}_t${t}
            if timed "$n" "$PB/ffm-train" -k 4 -r 0.2 -l 2e-5 -t "$e" -s "$t" train.ffm model; then
                (cd "$W/$n" && "$PB/ffm-predict" test.ffm model pred.txt > /dev/null 2>&1) &&
                    echo "$n metrics $(metrics "$W/$n/pred.txt")" >> "$RES"
            fi
        done
    done
done
LOAD1=$(cut -d' ' -f1-3 /proc/loadavg)

"$PY" - "$RES" "$NTRAIN" "$ROWS" "$LOAD0" "$LOAD1" "$(nproc)" "${PB:+yes}" "$REPEAT" "$SEL" "$FFM_OPTS" > "$OUT/peers.md" <<'PY'
import sys
res, ntrain, rows, load0, load1, cores, peers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6], sys.argv[7]
repeat = int(sys.argv[8])
sel = [l.split() for l in open(sys.argv[9])]
ffm_opts = sys.argv[10]
wall, rss, met = {}, {}, {}
for line in open(res):
    f = line.split()
    if len(f) == 3:
        wall[f[0]], rss[f[0]] = float(f[1]), int(f[2])
    elif len(f) == 4 and f[1] == "metrics":
        met[f[0]] = (float(f[2]), float(f[3]))
tools = {"es": "embstore", "xl": "xLearn", "lf": "libffm"}
print(f"## embstore against xLearn and libffm ({ntrain:,} training rows, {rows - ntrain:,} test rows of bench/gen_criteo, hashed to 2^20; {cores} cores; load average {load0} before, {load1} after" + (f"; wall time and RSS of the fastest of {repeat} runs of each" if repeat > 1 else "") + ")")
print()
if not peers:
    print("The peers could not be built: embstore's rows only.")
    print()
print("| model | epochs | threads | tool | wall s | rows/s | peak RSS MB | test AUC | test logloss | embstore rows/s ÷ peer's | AUC diff |")
print("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|")
keys = sorted({k.split("_", 1)[1] for k in wall}, key=lambda s: (int(s.split("_e")[1].split("_t")[0]), ["lr", "fm", "ffm"].index(s.split("_")[0]), int(s.split("_t")[1])))
for k in keys:
    m, rest = k.split("_e")
    e, t = rest.split("_t")
    for tool in ("es", "xl", "lf"):
        n = f"{tool}_{k}"
        if n not in wall:
            continue
        rps = ntrain * int(e) / wall[n]
        a, ll = met.get(n, (float("nan"), float("nan")))
        ratio = diff = ""
        es = f"es_{k}"
        if tool != "es" and es in wall:
            ratio = f"{(ntrain * int(e) / wall[es]) / rps:.2f}"
            if es in met and n in met:
                diff = f"{met[es][0] - a:+.4f}"
        print(f"| {m} | {e} | {t} | {tools[tool]} | {wall[n]:.2f} | {rps:,.0f} | {rss[n] / 1024:.0f} | {a:.4f} | {ll:.4f} | {ratio} | {diff} |")
print()
print("Hyper-parameters: xLearn defaults (AdaGrad, lr 0.2, lambda 2e-5, instance normalization; FM k=8, FFM k=4; --dis-es --no-bin); "
      "libffm -k 4 -r 0.2 -l 2e-5; embstore --storage full --valid-frac 0 and its defaults otherwise (FTRL tables alpha 0.05, "
      "l1 0.01, l2 0.3, batch 64; FM --dim 8, FFM --dim 4), LR with `" + " ".join(sel[-1][1:]) + "`, FFM with `" + ffm_opts + "` (libffm's update: AdaGrad, lr 0.2, accumulators from 1), and `--in-memory` for 5 epochs (the parsed rows kept for the later epochs, as the peers keep theirs). Wall time and peak RSS of the training process alone "
      "(/usr/bin/time); AUC and logloss of a separate predict process on the test rows. Generated by bench/bench_peers.sh.")
tried = [l for l in sel[:-1] if len(l) == 7]
if tried:
    print()
    print("embstore LR's FTRL settings, chosen before the timed runs: 1 epoch on the training file's first 90 %, validation AUC on its "
          "last 10 % (never the test rows): " + "; ".join(f"alpha {l[1]} l1 {l[3]} l2 {l[5]}: {float(l[6]):.4f}" for l in tried) + ".")
PY
cat "$OUT/peers.md"
