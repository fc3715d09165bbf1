#!/usr/bin/env bash
# bench/bench_serve.sh — `embstore serve` under load (issue 14): wrk on
# 127.0.0.1 against one-row and 256-row predict requests at concurrency
# 1, 8 and 64 (keep-alive), and index search (siftsmall, flat, k=10); then
# the same rows through `embstore predict` for the rows/s ceiling.
# Model: DLRM (default config) trained on the bundled Criteo 10k sample.
# Bounded: BENCH_SERVE_SECONDS per point (default 5); loopback only; the
# server is stopped (SIGTERM) at the end or on any exit.
# Environment: ES_BIN, BENCH_THREADS (server threads; first of the list,
# default 2), BENCH_OUT (default bench/out).  Writes $BENCH_OUT/serve.md.
set -u
cd "$(dirname "$0")/.."
ES_BIN=${ES_BIN:-build/embstore}
OUT=${BENCH_OUT:-bench/out}
SECS=${BENCH_SERVE_SECONDS:-5}
T=${BENCH_THREADS:-2}; T=${T%%,*}
command -v wrk >/dev/null || { echo "bench_serve: wrk not found (Debian: wrk)"; exit 1; }
mkdir -p "$OUT/serve"
W=$OUT/serve
"$ES_BIN" train data/criteo_kaggle_train_first10k.tsv --model dlrm --epochs 1 --out "$W/m.es" >/dev/null 2>&1 || exit 1
"$ES_BIN" index build data/siftsmall/siftsmall_base.part1.fvecs data/siftsmall/siftsmall_base.part2.fvecs --kind flat -o "$W/items.esi" >/dev/null 2>&1 || exit 1
cut -f2- data/criteo_kaggle_train_first10k.tsv | head -256 > "$W/rows256.tsv"
head -1 "$W/rows256.tsv" > "$W/rows1.tsv"
python3 - "$W" <<'PY'
import sys, json, struct
w = sys.argv[1]
for n in (1, 256):
    lines = open(f"{w}/rows{n}.tsv").read().splitlines()
    rows = []
    for l in lines:
        c = l.split("\t")
        rows.append({(f"I{i+1}" if i < 13 else f"C{i-12}"): v for i, v in enumerate(c) if v != ""})
    open(f"{w}/rows{n}.json", "w").write(json.dumps({"rows": rows}))
b = open("data/siftsmall/siftsmall_base.part1.fvecs", "rb").read(4 + 128 * 4)
v = struct.unpack("<128f", b[4:])
open(f"{w}/search.json", "w").write(json.dumps({"k": 10, "vector": v}))
PY
cat > "$W/post.lua" <<'LUA'
local f = io.open(os.getenv("BODY_FILE"), "rb")
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
-- DELAY_MS > 0: each connection waits that long before each request, so
-- C connections offer about C * 1000 / DELAY_MS requests/s (a paced load)
local pause = tonumber(os.getenv("DELAY_MS") or "0")
if pause > 0 then delay = function() return pause end end
done = function(summary, latency, requests)
  io.write(string.format("RESULT %.1f %.3f %.3f %d %d\n", summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, summary.errors.status, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
LUA
"$ES_BIN" serve --model ctr="$W/m.es" --index items="$W/items.esi" --port 0 --threads "$T" --max-conns 512 > "$W/server.out" 2> "$W/server.err" &
SP=$!
trap 'kill -TERM $SP 2>/dev/null; wait $SP 2>/dev/null' EXIT
for i in $(seq 50); do grep -q listening "$W/server.out" 2>/dev/null && break; sleep 0.1; done
PORT=$(grep -o '127.0.0.1:[0-9]*' "$W/server.out" | cut -d: -f2)
[ -n "$PORT" ] || { echo "bench_serve: server did not start"; cat "$W/server.err"; exit 1; }
{
echo "## embstore serve ($T server threads, wrk on the same machine, keep-alive, ${SECS} s per point, $(nproc) cores)"
echo
echo "| request | concurrency | requests/s | rows/s | p50 ms | p99 ms | non-2xx | socket errors |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|"
point() { # name body path conns rows [rate]
    local r
    r=$(BODY_FILE="$2" DELAY_MS="${DELAY_MS:-0}" wrk -t "$(( $4 < 2 ? 1 : 2 ))" -c "$4" -d "${SECS}s" -s "$W/post.lua" "http://127.0.0.1:$PORT$3" 2>&1 | grep '^RESULT')
    set -- "$1" "$2" "$3" "$4" "$5" $r
    echo "| $1 | $4 | $7 | $(python3 -c "print(round($7*$5))") | $8 | $9 | ${10} | ${11} |"
}
for c in 1 8 64; do point "predict, 1 row" "$W/rows1.json" /v1/models/ctr/predict $c 1; done
# paced: 70 connections, each waiting 4 ms before each request (plus the
# response time), give about 15,000 requests/s, half of the 30,000 target:
# the latency a client sees below the peak (the rate column says what it was)
DELAY_MS=4 point "predict, 1 row, paced (4 ms between requests per connection)" "$W/rows1.json" /v1/models/ctr/predict 70 1
for c in 1 8 64; do point "predict, 256 rows" "$W/rows256.json" /v1/models/ctr/predict $c 256; done
for c in 1 8 64; do point "search flat k=10, 1 query" "$W/search.json" /v1/indexes/items/search $c 1; done
echo
# the CLI ceiling: the same model on the whole sample, rows/s
N=$(wc -l < data/criteo_kaggle_train_first10k.tsv)
t0=$(date +%s.%N); "$ES_BIN" predict "$W/m.es" data/criteo_kaggle_train_first10k.tsv --out "$W/cli.txt" --threads "$T" >/dev/null 2>&1; t1=$(date +%s.%N)
echo "CLI ceiling: embstore predict, $N rows in $(python3 -c "print(round($t1-$t0,3))") s = $(python3 -c "print(round($N/($t1-$t0)))") rows/s (process start and model load included)"
} | tee "$W/../serve.md"
