#!/usr/bin/python3
"""faiss_peer.py — the faiss side of bench/bench_index.sh, and its report.

  faiss_peer.py run --base B1 [B2 ...] --queries Q --gt GT --kind KIND
                    [--threads T] [-k 10] [--min-time S] [--sweep v1,v2,...]
                    [--nlist N] [--M M] [--ef-construction N] [--pq-m M]
      Builds one faiss index of KIND (flat, sq8, pq, ivf, hnsw) with the same
      configuration embstore uses in bench_index.sh, then prints one JSON line
      per search setting, with the fields of `embstore index eval --json`:
      recall@1/10 (|returned top-R & true top-R| / R, averaged), queries/s
      (batch search of all queries, median of repeated runs lasting at least
      --min-time seconds), bytes per vector (size of faiss.serialize_index /
      n) and build seconds (train + add).

  faiss_peer.py report ES.jsonl FAISS.jsonl
      Prints the markdown comparison: each kind's best queries/s at matched
      recall@10 levels, build time and bytes per vector for both libraries.

Runs under /usr/bin/python3 (Debian's interpreter, which has python3-faiss).
"""
import argparse
import json
import sys
import time

import numpy as np


def read_vecs(path, dtype):
    a = np.fromfile(path, dtype=np.int32)
    if a.size == 0:
        raise SystemExit(f"{path}: empty file")
    d = int(a[0])
    if d <= 0 or a.size % (d + 1):
        raise SystemExit(f"{path}: not a texmex file of dimension {d}")
    rows = a.reshape(-1, d + 1)
    if (rows[:, 0] != d).any():
        raise SystemExit(f"{path}: records of differing dimension")
    return rows[:, 1:].copy().view(dtype) if dtype != np.int32 else rows[:, 1:].copy()


def recall(ids, gt, r):
    if ids.shape[1] < r or gt.shape[1] < r:
        return None
    tot = 0.0
    for q in range(ids.shape[0]):
        tot += len(set(ids[q, :r].tolist()) & set(gt[q, :r].tolist())) / r
    return tot / ids.shape[0]


def timed_search(index, xq, k, min_time):
    times = []
    t_start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        _, ids = index.search(xq, k)
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - t_start >= min_time or len(times) >= 1000:
            break
    times.sort()
    return ids, xq.shape[0] / times[len(times) // 2], len(times)


def cmd_run(a):
    import faiss

    faiss.omp_set_num_threads(a.threads)
    xb = np.vstack([read_vecs(p, np.float32) for p in a.base])
    xq = read_vecs(a.queries, np.float32)
    gt = read_vecs(a.gt, np.int32)
    n, d = xb.shape
    t0 = time.perf_counter()
    if a.kind == "flat":
        index = faiss.IndexFlatL2(d)
        sweep_attr, name = None, "flat"
    elif a.kind == "sq8":
        index = faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_L2)
        sweep_attr, name = None, "sq8"
    elif a.kind == "pq":
        index = faiss.IndexPQ(d, a.pq_m, 8)
        sweep_attr, name = None, f"pq:pq-m={a.pq_m}"
    elif a.kind == "ivf":
        quantizer = faiss.IndexFlatL2(d)
        index = faiss.IndexIVFFlat(quantizer, d, a.nlist)
        index.cp.niter = 20
        sweep_attr, name = "nprobe", f"ivf:nlist={a.nlist}"
    elif a.kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, a.M)
        index.hnsw.efConstruction = a.ef_construction
        sweep_attr, name = "efSearch", f"hnsw:M={a.M},ef-construction={a.ef_construction}"
    else:
        raise SystemExit(f"unknown kind {a.kind}")
    if not index.is_trained:
        index.train(xb)
    index.add(xb)
    build = time.perf_counter() - t0
    nbytes = len(faiss.serialize_index(index))
    settings = [int(v) for v in a.sweep.split(",")] if (a.sweep and sweep_attr) else [None]
    for v in settings:
        label = "-"
        if v is not None:
            if sweep_attr == "nprobe":
                index.nprobe = v
                label = f"nprobe={v}"
            else:
                index.hnsw.efSearch = v
                label = f"ef_search={v}"
        ids, qps, reps = timed_search(index, xq, a.k, a.min_time)
        row = {"lib": "faiss", "index": name, "kind": a.kind, "search": label, "k": a.k, "threads": a.threads,
               "queries": int(xq.shape[0]), "qps": round(qps, 1), "bytes_per_vector": round(nbytes / n, 2),
               "build_seconds": round(build, 4), "repeats": reps, "faiss_version": faiss.__version__}
        for r in (1, 10, 100):
            rv = recall(ids, gt, r)
            if rv is not None:
                row[f"recall_at_{r}"] = round(rv, 6)
        print(json.dumps(row), flush=True)


def load_rows(path):
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                rows.append(json.loads(line))
    return rows


def cmd_report(a):
    es = load_rows(a.es)
    fa = load_rows(a.faiss)
    kinds = []
    for r in es + fa:
        if r["kind"] not in kinds:
            kinds.append(r["kind"])
    out = []
    out.append("| kind | library | setting | recall@10 | queries/s | build s | bytes/vector |")
    out.append("|---|---|---|---|---|---|---|")
    for kind in kinds:
        for lib, rows in (("embstore", es), ("faiss", fa)):
            for r in rows:
                if r["kind"] != kind:
                    continue
                out.append(f"| {kind} | {lib} | {r['search']} | {r.get('recall_at_10', float('nan')):.4f} | "
                           f"{r['qps']:.0f} | {r['build_seconds']:.2f} | {r['bytes_per_vector']:.1f} |")
    out.append("")
    out.append("Queries/s at matched recall (best setting reaching the level; for kinds without a search")
    out.append("parameter the single setting, with each library's own recall):")
    out.append("")
    out.append("| kind | recall@10 level | embstore q/s (recall) | faiss q/s (recall) | embstore / faiss |")
    out.append("|---|---|---|---|---|")
    verdicts = []
    for kind in kinds:
        e = [r for r in es if r["kind"] == kind]
        f = [r for r in fa if r["kind"] == kind]
        if not e or not f:
            continue
        swept = len(e) > 1 or len(f) > 1
        levels = [0.8, 0.9, 0.95, 0.99] if swept else [None]
        for lv in levels:
            def best(rows):
                ok = [r for r in rows if lv is None or r.get("recall_at_10", 0) >= lv]
                return max(ok, key=lambda r: r["qps"]) if ok else None
            be, bf = best(e), best(f)
            if lv is not None and (be is None or bf is None):
                continue
            ratio = be["qps"] / bf["qps"] if bf["qps"] > 0 else float("inf")
            verdicts.append((kind, lv, ratio))
            out.append(f"| {kind} | {'-' if lv is None else f'>= {lv:.2f}'} | {be['qps']:.0f} ({be.get('recall_at_10', 0):.3f}) | "
                       f"{bf['qps']:.0f} ({bf.get('recall_at_10', 0):.3f}) | {ratio:.2f} |")
    out.append("")
    worse = [f"{k}{'' if lv is None else f'@{lv}'} ({r:.2f}x)" for k, lv, r in verdicts if r < 1.0]
    if worse:
        out.append("Below faiss's queries/s: " + ", ".join(worse) + ".")
    else:
        out.append("embstore reaches at least faiss's queries/s at every matched recall level above.")
    print("\n".join(out))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--base", nargs="+", required=True)
    r.add_argument("--queries", required=True)
    r.add_argument("--gt", required=True)
    r.add_argument("--kind", required=True)
    r.add_argument("--threads", type=int, default=2)
    r.add_argument("-k", type=int, default=10)
    r.add_argument("--min-time", type=float, default=0.5)
    r.add_argument("--sweep", default="")
    r.add_argument("--nlist", type=int, default=100)
    r.add_argument("--M", type=int, default=16)
    r.add_argument("--ef-construction", type=int, default=100)
    r.add_argument("--pq-m", type=int, default=16)
    p = sub.add_parser("report")
    p.add_argument("es")
    p.add_argument("faiss")
    a = ap.parse_args()
    if a.cmd == "run":
        cmd_run(a)
    else:
        cmd_report(a)


if __name__ == "__main__":
    sys.exit(main())
