#!/usr/bin/env bash
# bench/bench_python.sh — search through the Python package against the CLI
# (issue 14: "search through Python on siftsmall is within 10% of the CLI's
# queries/s").
#
# Data: data/siftsmall (10,000 SIFT vectors, 100 queries).  The indexes are
# built once by `embstore index build` and saved; both sides load the same
# files.  Measured as `embstore index eval` measures queries/s: one batch of
# all 100 queries per call (k = 10), calls repeated for at least
# BENCH_MIN_TIME seconds, the median call time.  Python: embstore.Index.load
# + Index.search (ctypes, numpy arrays allocated per call, as a user calls
# it).  The two sides alternate ROUNDS times per index, and each side's
# figure is the median over rounds, so drifting load on a shared machine
# hits both alike.
#
# Environment: ES_BIN (default build/embstore), BENCH_THREADS (comma list,
# default "2"), BENCH_MIN_TIME (default 0.5), BENCH_ROUNDS (default 5),
# BENCH_OUT (default bench/out).  Writes $BENCH_OUT/python_T{threads}.md.
set -u
cd "$(dirname "$0")/.."
ES_BIN=${ES_BIN:-build/embstore}
OUT=${BENCH_OUT:-bench/out}
MIN_TIME=${BENCH_MIN_TIME:-0.5}
ROUNDS=${BENCH_ROUNDS:-5}
THREADS_LIST=${BENCH_THREADS:-2}
PY=/usr/bin/python3
D=data/siftsmall
Q=$D/siftsmall_query.fvecs
GT=$D/siftsmall_groundtruth.ivecs
mkdir -p "$OUT"
if [ ! -x "$ES_BIN" ] || [ ! -e build/libembstore.so ]; then
    echo "bench_python: $ES_BIN or build/libembstore.so not built (run make)" >&2; exit 1
fi
if ! "$PY" -c 'import numpy' 2>/dev/null; then
    echo "bench_python: $PY cannot import numpy (apt-get install python3-numpy)" >&2; exit 1
fi
TMP=$(mktemp -d "${TMPDIR:-/tmp}/es-bench-python.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
set -e
"$ES_BIN" index build $D/siftsmall_base.part1.fvecs $D/siftsmall_base.part2.fvecs --kind flat -o "$TMP/flat.esi" >/dev/null
"$ES_BIN" index build $D/siftsmall_base.part1.fvecs $D/siftsmall_base.part2.fvecs --kind hnsw --M 16 \
    --ef-construction 100 -o "$TMP/hnsw.esi" >/dev/null
"$ES_BIN" index build $D/siftsmall_base.part1.fvecs $D/siftsmall_base.part2.fvecs --kind ivf --nlist 100 \
    -o "$TMP/ivf.esi" >/dev/null
set +e
IFS=, read -r -a TLIST <<<"$THREADS_LIST"
status=0
for T in "${TLIST[@]}"; do
    PYTHONPATH=python "$PY" - "$ES_BIN" "$TMP" "$Q" "$GT" "$T" "$MIN_TIME" "$ROUNDS" "$OUT/python_T$T.md" <<'PYEOF'
import json, statistics, subprocess, sys, time
import numpy as np
import embstore

es_bin, tmp, qpath, gt, T, min_time, rounds, out = sys.argv[1:]
T, min_time, rounds = int(T), float(min_time), int(rounds)
embstore.set_threads(T)
q = embstore.read_vecs(qpath)
settings = [("flat", "flat.esi", {}), ("hnsw ef_search=64", "hnsw.esi", {"ef_search": 64}),
            ("ivf nprobe=8", "ivf.esi", {"nprobe": 8})]

def cli_qps(path, opts):
    args = [es_bin, "index", "eval", path, "--queries", qpath, "--gt", gt, "-k", "10", "--threads", str(T),
            "--min-time", str(min_time), "--json"]
    for k, v in opts.items():
        args += ["--" + k.replace("_", "-"), str(v)]
    r = subprocess.run(args, capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])["qps"]

def py_qps(ix):
    times, t_start = [], time.perf_counter()
    while True:
        t0 = time.perf_counter()
        ix.search(q, 10)
        times.append(time.perf_counter() - t0)
        if len(times) >= 1000 or time.perf_counter() - t_start >= min_time:
            break
    times.sort()
    return len(q) / times[len(times) // 2]

lines = [f"Python (embstore package, ctypes) vs CLI `index eval` search on siftsmall: 100 queries per call, k=10, "
         f"{T} thread(s), median of {rounds} alternating rounds of >= {min_time} s each",
         "", "| index | CLI queries/s | Python queries/s | Python / CLI |", "|---|---:|---:|---:|"]
worst = 1e9
for name, f, opts in settings:
    ix = embstore.Index.load(f"{tmp}/{f}")
    ix.set("threads", T)  # as `index eval --threads T` does
    for k, v in opts.items():
        ix.set(k, v)
    c, p = [], []
    for _ in range(rounds):
        c.append(cli_qps(f"{tmp}/{f}", opts))
        p.append(py_qps(ix))
    cm, pm = statistics.median(c), statistics.median(p)
    worst = min(worst, pm / cm)
    lines.append(f"| {name} | {cm:.0f} | {pm:.0f} | {pm / cm:.3f} |")
lines += ["", f"worst ratio {worst:.3f}: " + ("within 10% of the CLI" if worst >= 0.9 else "NOT within 10% of the CLI")]
text = "\n".join(lines)
print(text)
open(out, "w").write(text + "\n")
PYEOF
    rc=$?; [ $rc -ne 0 ] && status=$rc
done
exit $status
