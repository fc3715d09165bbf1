#!/usr/bin/env bash
# bench/bench_index.sh — vector search: embstore against faiss (python3-faiss)
# on the same data, in one run, with the same thread count.
#
# Data: data/siftsmall (10,000 real SIFT vectors, 100 queries, exact ground
# truth; see data/PROVENANCE.md).  Kinds and configurations, identical on both
# sides:
#   flat   exact L2
#   sq8    per-dimension 8-bit scalar quantization (faiss QT_8bit)
#   pq     16 sub-quantizers x 8 bits (faiss IndexPQ(d, 16, 8))
#   ivf    100 k-means lists of float vectors, nprobe swept (faiss IndexIVFFlat)
#   hnsw   M = 16, efConstruction = 100, efSearch swept (faiss IndexHNSWFlat)
# Measured per setting: recall@1/10 against the shipped ground truth, queries/s
# (one batch of all 100 queries per call, median over calls for at least
# BENCH_MIN_TIME seconds), build seconds (train + add), bytes per vector (the
# saved file for embstore, faiss.serialize_index for faiss; embstore's
# in-memory figure is in the JSON too).  The two sides alternate kind by kind
# so that drifting load on a shared machine hits both alike.
#
# Environment: ES_BIN (default build/embstore), BENCH_THREADS (comma list,
# default "2"; one table per count), OMP_WAIT_POLICY (run.sh sets "passive"),
# BENCH_MIN_TIME (default 1), BENCH_OUT (default bench/out).
# OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are left as the environment has them.
# Writes $BENCH_OUT/index_T{threads}.jsonl and .md; prints the reports.
set -u
cd "$(dirname "$0")/.."

ES_BIN=${ES_BIN:-build/embstore}
OUT=${BENCH_OUT:-bench/out}
MIN_TIME=${BENCH_MIN_TIME:-1}
THREADS_LIST=${BENCH_THREADS:-2}
PY=/usr/bin/python3
D=data/siftsmall
BASE="$D/siftsmall_base.part1.fvecs $D/siftsmall_base.part2.fvecs"
Q=$D/siftsmall_query.fvecs
GT=$D/siftsmall_groundtruth.ivecs
mkdir -p "$OUT"

if [ ! -x "$ES_BIN" ]; then
    echo "bench_index: $ES_BIN not built (run make)" >&2
    exit 1
fi
if ! $PY -c 'import faiss' 2>/dev/null; then
    echo "bench_index: python3-faiss is not importable by $PY (Debian: apt-get install python3-faiss)" >&2
    exit 1
fi

echo "== vector search: embstore vs faiss $($PY -c 'import faiss; print(faiss.__version__)') on siftsmall"
echo "   (10000 x 128 base, 100 queries, k = 10; OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-unset},"
echo "    OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset}, OPENBLAS_L2_SIZE=${OPENBLAS_L2_SIZE:-unset}, load $(cut -d' ' -f1-3 /proc/loadavg))"

# kind | embstore build options | embstore eval sweep | faiss options
specs=(
    "flat|--kind flat||"
    "sq8|--kind sq8||"
    "pq|--kind pq --pq-m 16 --pq-bits 8||--pq-m 16"
    "ivf|--kind ivf --nlist 100|--nprobe 1/2/4/8/16/32|--nlist 100 --sweep 1,2,4,8,16,32"
    "hnsw|--kind hnsw --M 16 --ef-construction 100|--ef-search 8/16/32/64/128|--M 16 --ef-construction 100 --sweep 8,16,32,64,128"
)

# Tag embstore's eval rows with the library, kind, threads and file bytes.
TAG_ROWS='
import json, sys
kind, threads, fsize, path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
for line in open(path):
    if not line.startswith("{"):
        continue
    r = json.loads(line)
    r.update({"lib": "embstore", "kind": kind, "threads": threads,
              "memory_bytes_per_vector": r["bytes_per_vector"], "bytes_per_vector": round(fsize / 10000, 2)})
    print(json.dumps(r))
'

status=0
IFS=',' read -ra TLIST <<<"$THREADS_LIST"
for T in "${TLIST[@]}"; do
    es_rows="$OUT/index_T${T}_embstore.jsonl"
    fa_rows="$OUT/index_T${T}_faiss.jsonl"
    : >"$es_rows"
    : >"$fa_rows"
    for spec in "${specs[@]}"; do
        IFS='|' read -r kind bopts sweep fopts <<<"$spec"
        idx="$OUT/index_${kind}.esi"
        # embstore: build (saved file), then eval of the loaded index
        if ! "$ES_BIN" index build $BASE $bopts --threads "$T" -o "$idx" --json >"$OUT/index_build_${kind}.json"; then
            echo "bench_index: embstore build of $kind failed" >&2
            status=1
            continue
        fi
        fsize=$(stat -c %s "$idx")
        if ! "$ES_BIN" index eval "$idx" --queries "$Q" --gt "$GT" -k 10 $sweep --threads "$T" --min-time "$MIN_TIME" \
            --json >"$OUT/index_eval_${kind}.jsonl"; then
            echo "bench_index: embstore eval of $kind failed" >&2
            status=1
            continue
        fi
        $PY -c "$TAG_ROWS" "$kind" "$T" "$fsize" "$OUT/index_eval_${kind}.jsonl" >>"$es_rows" || status=1
        # faiss, same configuration
        if ! $PY bench/faiss_peer.py run --base $BASE --queries "$Q" --gt "$GT" --kind "$kind" --threads "$T" -k 10 \
            --min-time "$MIN_TIME" $fopts >>"$fa_rows"; then
            echo "bench_index: faiss run of $kind failed" >&2
            status=1
        fi
    done
    report="$OUT/index_T${T}.md"
    {
        echo "### embstore vs faiss, siftsmall, k = 10, $T thread(s)"
        echo
        $PY bench/faiss_peer.py report "$es_rows" "$fa_rows"
    } >"$report" || status=1
    cat "$report"
    echo
done
exit $status
