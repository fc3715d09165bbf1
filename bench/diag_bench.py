#!/usr/bin/python3
"""diag_bench.py -- `make bench` section "diag": the time of a whole
diagnosis by `embstore diagnose` against numpy/scikit-learn doing the same
computations, in the same run, on two synthetic sets:

  table    1,000,000 x 16  (an embedding table's shape: rank-6 signal + noise)
  vectors    100,000 x 128 (a vector collection's shape: rank-24 signal + noise)

Both sides, one thread (OMP_NUM_THREADS=OPENBLAS_NUM_THREADS=1 for numpy,
--threads 1 for embstore): the singular values (plain and centred), RankMe
effective rank, nuclear norm, the Vendi score through the d x d matrix, and
on a sample of 10,000 rows (the default --sample) exact 20-nearest-neighbour
search for TwoNN and the Levina-Bickel MLE.  embstore's time is the whole
process (reading the .fvecs file included); numpy's excludes reading (the
array is already in memory).  The results are compared as
bench/diag_reference.py does (effective rank within 1e-4; TwoNN, MLE within
2%: the same sample rows on both sides is not guaranteed, so only the
spectrum-based measures are compared here).

Usage: OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 bench/diag_bench.py [--es build/embstore] [--out DIR]
"""
import argparse, json, os, subprocess, sys, time

import numpy as np
from sklearn.neighbors import NearestNeighbors

ap = argparse.ArgumentParser()
ap.add_argument("--es", default="build/embstore")
ap.add_argument("--out", default="bench/out/diag")
a = ap.parse_args()
os.makedirs(a.out, exist_ok=True)
EPS = 1e-7


def rankme(sv):
    p = sv / sv.sum() + EPS
    return float(np.exp(-(p * np.log(p)).sum()))


def make(n, d, r, seed):
    g = np.random.default_rng(seed)
    x = (g.standard_normal((n, r)) @ g.standard_normal((r, d)) + 0.1 * g.standard_normal((n, d))).astype(np.float32)
    return x


def write_fvecs(path, x):
    n, d = x.shape
    rec = np.empty((n, d + 1), dtype=np.float32)
    rec[:, 0] = np.array([d], dtype=np.int32).view(np.float32)[0]
    rec[:, 1:] = x
    rec.tofile(path)


def numpy_diag(x, k=20, sample=10000, seed=1):
    t0 = time.time()
    X = x.astype(np.float64)
    n, d = X.shape
    G = X.T @ X
    sv = np.sqrt(np.clip(np.linalg.eigvalsh(G)[::-1], 0, None))
    Xc = X - X.mean(axis=0)
    svc = np.sqrt(np.clip(np.linalg.eigvalsh(Xc.T @ Xc)[::-1], 0, None))
    nrm = np.linalg.norm(X, axis=1)
    U = X[nrm > 0] / nrm[nrm > 0, None]
    lam = np.linalg.eigvalsh(U.T @ U / U.shape[0])
    lam = lam[lam > 0]
    vendi = float(np.exp(-(lam * np.log(lam)).sum()))
    S = x[np.random.default_rng(seed).choice(n, size=min(sample, n), replace=False)]
    S = np.unique(S, axis=0).astype(np.float64)
    dist, _ = NearestNeighbors(n_neighbors=k + 1, algorithm="brute").fit(S).kneighbors(S)
    dist = dist[:, 1:]
    N = S.shape[0]
    twonn = float((N - 1) / np.log(dist[:, 1] / dist[:, 0]).sum())
    inv = np.log(dist[:, k - 1:k] / dist[:, :k - 1]).sum(axis=1) / (k - 1)
    mle = float(1 / inv.mean())
    return {"seconds": time.time() - t0, "erank": rankme(sv), "erank_centered": rankme(svc), "vendi": vendi,
            "twonn": twonn, "mle": mle}


rows = []
for name, n, d, r in [("table 1M x 16", 1_000_000, 16, 6), ("vectors 100k x 128", 100_000, 128, 24)]:
    x = make(n, d, r, 7)
    path = os.path.join(a.out, f"set_{n}_{d}.fvecs")
    write_fvecs(path, x)
    t0 = time.time()
    out = subprocess.run([a.es, "diagnose", path, "--json", "--threads", "1"], capture_output=True, text=True)
    es_s = time.time() - t0
    if out.returncode != 0:
        sys.exit(f"embstore diagnose failed: {out.stderr}")
    js = json.loads(out.stdout)
    s0 = js["sets"][0] if "sets" in js else js
    ref = numpy_diag(x)
    er = s0["spectrum"]["erank"]
    ve = s0["vendi"]["value"]
    ok = abs(er - ref["erank"]) <= 1e-4 * ref["erank"] and abs(ve - ref["vendi"]) <= 1e-4 * ref["vendi"]
    rows.append((name, es_s, ref["seconds"], er, ref["erank"], ve, ref["vendi"], ok))
    os.remove(path)

print("| set | embstore diagnose (s, whole process) | numpy + sklearn (s, in memory) | numpy / embstore | erank es / np | vendi es / np | match |")
print("|---|---:|---:|---:|---|---|---|")
bad = 0
for name, es_s, np_s, er, ern, ve, ven, ok in rows:
    print(f"| {name} | {es_s:.2f} | {np_s:.2f} | {np_s / es_s:.2f}x | {er:.4f} / {ern:.4f} | {ve:.4f} / {ven:.4f} | {'yes' if ok else 'NO'} |")
    bad += not ok
sys.exit(1 if bad else 0)
