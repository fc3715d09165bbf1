#!/usr/bin/env bash
# bench/bench_system.sh — machine limits and embstore kernels in one run
# (called by bench/run.sh; also runnable alone):
#   - sgemm peak vs the DLRM-reference MLP part (GFLOP/s, fraction of peak)
#   - random 64-byte read limit vs embedding gathers/s (1 GiB table)
#   - Criteo TSV parse MB/s vs a plain line-count pass over the same file,
#     and the same rows as libsvm, libffm and CSV (a multi-value column)
#     files, each at 1 and at $BENCH_THREADS reader threads, with the load
#     average (the machine may be shared)
#   - peak RSS of `embstore train` on a ~1 GB input next to the model's bytes
# OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are left as set in the environment
# (they may slow sgemm; the MLP and the peak are measured under the same
# setting, so their ratio is fair).  Writes bench/out/system.json and
# bench/out/rss.json.  BENCH_PARSE_ONLY=1: only the parse figures (no
# kernels, no 1 GB training run).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${BENCH_OUT:-bench/out}
THREADS=${BENCH_THREADS:-2}
THREADS=${THREADS%%,*}   # a list (2,1) means several runs elsewhere; here the first
ES_BIN=${ES_BIN:-build/embstore}
BIN_DIR=$(dirname "$ES_BIN")
mkdir -p "$OUT"
make -s BUILD="$BIN_DIR" "$BIN_DIR/bench_system" "$ES_BIN"
[ -x "$OUT/gen_criteo" ] || cc -O2 -o "$OUT/gen_criteo" bench/gen_criteo.c -lm
[ -s "$OUT/synth_200MB.tsv" ] || "$OUT/gen_criteo" --bytes 200M --seed 11 --out "$OUT/synth_200MB.tsv"
echo "-- kernels against machine limits ($THREADS threads; $(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1); load average $(cut -d' ' -f1-3 /proc/loadavg))"
"$BIN_DIR/bench_system" --threads "$THREADS" --tsv "$OUT/synth_200MB.tsv" --gib 1 ${BENCH_PARSE_ONLY:+--parse-only} | tee "$OUT/system.txt"
tail -n 1 "$OUT/system.txt" > "$OUT/system.json"
[ -z "${BENCH_PARSE_ONLY:-}" ] || exit 0

echo "-- peak memory of training on a ~1 GB input (streamed; hash table with a 64 MB budget, DLRM, 1 epoch)"
[ -s "$OUT/synth_1GB.tsv" ] || "$OUT/gen_criteo" --bytes 1G --seed 12 --out "$OUT/synth_1GB.tsv"
ls -l "$OUT/synth_1GB.tsv" | awk '{printf "input: %s bytes\n", $5}'
"$ES_BIN" train "$OUT/synth_1GB.tsv" --valid-frac 0 --model dlrm --storage hash --budget 64M --epochs 1 \
    --threads "$THREADS" --batch 1024 --quiet | tee "$OUT/rss.json"
/usr/bin/python3 - "$OUT/rss.json" <<'PY'
import json, sys
d = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
model = d["emb_bytes"] + d["emb_state_bytes"] + d["net_bytes"] * 3  # net: params + Adam m, v
print(f"peak RSS {d['peak_rss_bytes']/1e6:.1f} MB; model + optimizer state {model/1e6:.1f} MB "
      f"(table {d['emb_bytes']/1e6:.1f} MB, table optimizer {d['emb_state_bytes']/1e6:.1f} MB); "
      f"rows {d['rows']}, {d['train_rows_per_s']:.0f} rows/s")
PY
