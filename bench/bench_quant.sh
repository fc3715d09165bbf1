#!/usr/bin/env bash
# bench/bench_quant.sh — `make bench` section "quant": serving quantized
# rows (issue 11, post-training quantization).  Called by bench/run.sh (every
# bench/bench_*.sh is a section); also runnable alone.  Outputs under
# ${BENCH_OUT:-bench/out}/quant:
#   (a) lookup.txt / lookup.json: lookups/s of one table held as fp32, fp16,
#       int8 and int4 rows at the same row count (2^QUANT_ROWS_LOG2 rows x
#       dim 32, default 2^22 = 512 MiB at fp32), uniform random ids, batches
#       of 4096 x 26 fields, 1 thread (bench/quant_lookup.c, through
#       es__rows_lookup), with the int8/fp32 and int4/fp32 ratios;
#   (b) rss.txt: peak RSS of `embstore predict` on an int8 model file of at
#       least 256 MB (DLRM on a `hash` table with --budget 1.2G at dim 16,
#       trained on 5000 synthetic rows, quantized), read (the default) and
#       with --map, next to the file size; the acceptance of issue 11 is
#       peak RSS <= file size + 32 MB.
# Environment: ES_BIN (default build/embstore), QUANT_ROWS_LOG2 (22),
# QUANT_BUDGET (1.2G), QUANT_SECONDS (2 per precision).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${BENCH_OUT:-bench/out}/quant
ES_BIN=${ES_BIN:-build/embstore}
BIN_DIR=$(dirname "$ES_BIN")
mkdir -p "$OUT"
make -s BUILD="$BIN_DIR" "$BIN_DIR/libembstore.a" "$ES_BIN"
echo "-- machine: $(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1), $(nproc) CPUs visible, load average $(cut -d' ' -f1-3 /proc/loadavg)"

# (a) lookups/s by precision
cc -std=c11 -D_GNU_SOURCE -O2 -Iinclude -Isrc -fopenmp -pthread -o "$OUT/quant_lookup" bench/quant_lookup.c \
    "$BIN_DIR/libembstore.a" -lopenblas -llapacke -lxxhash -lz -lmicrohttpd -lm -lpthread
echo "-- (a) lookups/s of fp32 vs fp16 vs int8 vs int4 rows"
"$OUT/quant_lookup" --rows-log2 "${QUANT_ROWS_LOG2:-22}" --dim 32 --seconds "${QUANT_SECONDS:-2}" | tee "$OUT/lookup.txt"
tail -n 1 "$OUT/lookup.txt" > "$OUT/lookup.json"

# (b) peak RSS of predict on a quantized model of >= 256 MB
echo "-- (b) peak RSS of embstore predict on an int8 model file"
[ -x "$OUT/gen_criteo" ] || cc -O2 -o "$OUT/gen_criteo" bench/gen_criteo.c -lm
[ -s "$OUT/train5k.tsv" ] || "$OUT/gen_criteo" --rows 5000 --seed 21 --out "$OUT/train5k.tsv"
[ -s "$OUT/test5k.tsv" ] || "$OUT/gen_criteo" --rows 5000 --seed 22 --out "$OUT/test5k.tsv"
"$ES_BIN" train "$OUT/train5k.tsv" --valid-frac 0 --model dlrm --dim 16 --storage hash --budget "${QUANT_BUDGET:-1.2G}" \
    --epochs 1 --threads 1 --quiet --out "$OUT/big.fp32.es" > /dev/null
"$ES_BIN" quantize "$OUT/big.fp32.es" --precision int8 -o "$OUT/big.int8.es"
rm -f "$OUT/big.fp32.es"
fsize=$(stat -c %s "$OUT/big.int8.es")
rss_read=$( { /usr/bin/time -v "$ES_BIN" predict "$OUT/big.int8.es" "$OUT/test5k.tsv" --out "$OUT/pred.txt" --threads 1; } 2>&1 \
    | sed -n 's/^[[:space:]]*Maximum resident set size (kbytes):[[:space:]]*//p')
rss_map=$( { /usr/bin/time -v "$ES_BIN" predict "$OUT/big.int8.es" "$OUT/test5k.tsv" --out "$OUT/pred_map.txt" --threads 1 --map; } 2>&1 \
    | sed -n 's/^[[:space:]]*Maximum resident set size (kbytes):[[:space:]]*//p')
cmp -s "$OUT/pred.txt" "$OUT/pred_map.txt" || { echo "predictions differ between read and --map" >&2; exit 1; }
awk -v f="$fsize" -v r="$rss_read" -v m="$rss_map" 'BEGIN {
    fm = f / 1e6; rm = r * 1024 / 1e6; mm = m * 1024 / 1e6;
    printf "int8 model file %.1f MB; predict 5000 rows, 1 thread: peak RSS %.1f MB (read), %.1f MB (--map)\n", fm, rm, mm;
    printf "acceptance (peak RSS <= file + 32 MB = %.1f MB): read %s, --map %s\n", fm + 32, (rm <= fm + 32 ? "ok" : "OVER"), (mm <= fm + 32 ? "ok" : "OVER");
    printf "{\"file_bytes\": %d, \"peak_rss_read_bytes\": %d, \"peak_rss_map_bytes\": %d}\n", f, r * 1024, m * 1024;
}' | tee "$OUT/rss.txt"
rm -f "$OUT/big.int8.es" "$OUT/pred.txt" "$OUT/pred_map.txt"
awk -v f="$fsize" -v r="$rss_read" -v m="$rss_map" 'BEGIN { exit !(r * 1024 <= f + 32e6 && m * 1024 <= f + 32e6) }'
