#!/usr/bin/python3
"""diag_reference.py — numpy / scikit-learn reference for `embstore diagnose`.

Recomputes, from the same rows, what `embstore diagnose --json --sample 0`
reports, and compares:
  spectrum (every singular value, relative to sigma_1), effective rank
  (RankMe, plain and centred), nuclear norm, normalized nuclear norm and the
  Vendi score (cosine kernel): within 1e-4 relative;
  TwoNN (MLE (N-1)/sum log mu, and the fit variant) and the Levina-Bickel MLE
  (MacKay-Ghahramani global, Levina-Bickel mean of local estimates): within 2%.
The estimators run on the distinct rows (np.unique), neighbours by
sklearn.neighbors.NearestNeighbors (exact, float64 distances).

Cases: data/siftsmall (the base set, both parts), and the table of a model
trained on the bundled Criteo sample (`embstore train ... --model dlrm
--storage hash --dim 16 --budget 1/10`), dumped by `diagnose --dump`.

Run with Debian's python (it sees python3-numpy and python3-sklearn):
    /usr/bin/python3 bench/diag_reference.py [--bin build/embstore] [--tmp DIR]
Prints one line per comparison; exits 1 when any is out of tolerance.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
from sklearn.neighbors import NearestNeighbors

EPS = 1e-7


def read_fvecs(paths):
    parts = []
    for p in paths:
        a = np.fromfile(p, dtype=np.int32)
        d = a[0]
        parts.append(a.reshape(-1, d + 1)[:, 1:].view(np.float32))
    return np.concatenate(parts).astype(np.float32)


def rankme(sv):
    l1 = sv.sum()
    if l1 <= 0:
        return 0.0
    p = sv / l1 + EPS
    return float(np.exp(-(p * np.log(p)).sum()))


def reference(x, k):
    t0 = time.time()
    X = x.astype(np.float64)
    n, d = X.shape
    sv = np.linalg.svd(X, compute_uv=False)
    svc = np.linalg.svd(X - X.mean(axis=0), compute_uv=False)
    m = min(n, d)
    out = {
        "sv": sv,
        "erank": rankme(sv),
        "erank_centered": rankme(svc),
        "nuclear": float(sv.sum()),
        "nuclear_norm": float(sv.sum() / (np.sqrt((sv ** 2).sum()) * np.sqrt(m))),
    }
    nrm = np.linalg.norm(X, axis=1)
    U = X[nrm > 0] / nrm[nrm > 0, None]
    C = U.T @ U / U.shape[0] if U.shape[0] > d else U @ U.T / U.shape[0]
    lam = np.linalg.eigvalsh(C)
    lam = lam[lam > 0]
    out["vendi"] = float(np.exp(-(lam * np.log(lam)).sum()))
    # intrinsic dimension on the distinct rows
    Xu = np.unique(x, axis=0).astype(np.float64)
    N = Xu.shape[0]
    nn = NearestNeighbors(n_neighbors=k + 1).fit(Xu)
    dist, _ = nn.kneighbors(Xu)
    dist = dist[:, 1:]  # drop the point itself
    lmu = np.log(dist[:, 1] / dist[:, 0])
    out["twonn"] = float((N - 1) / lmu.sum())
    mu = np.sort(lmu)
    keep = int(np.floor(0.9 * N))
    F = np.arange(N) / N
    xs, ys = mu[:keep], -np.log(1 - F[:keep])
    out["twonn_fit"] = float((xs * ys).sum() / (xs * xs).sum())
    inv = np.log(dist[:, k - 1:k] / dist[:, :k - 1]).sum(axis=1) / (k - 1)
    out["mle"] = float(1 / inv.mean())
    out["mle_lb"] = float((1 / inv[inv > 0]).mean())
    out["seconds"] = time.time() - t0
    return out


def compare(label, ref, js):
    sp, idd = js["spectrum"], js["id"]
    ok = True
    rows = []
    sv_c = np.array(sp["sv"])
    sv_r = ref["sv"][: len(sv_c)]
    err_sv = float(np.max(np.abs(sv_c - sv_r)) / sv_r[0])
    rows.append(("spectrum (max |diff| / sigma_1)", err_sv, 0.0, err_sv, 1e-4))

    def rel(name, c, r, tol):
        e = abs(c - r) / abs(r) if r else abs(c)
        rows.append((name, c, r, e, tol))

    rel("effective rank", sp["erank"], ref["erank"], 1e-4)
    rel("effective rank, centred", sp["erank_centered"], ref["erank_centered"], 1e-4)
    rel("nuclear norm", sp["nuclear"], ref["nuclear"], 1e-4)
    rel("normalized nuclear norm", sp["nuclear_norm"], ref["nuclear_norm"], 1e-4)
    rel("Vendi (cosine)", js["vendi"]["value"], ref["vendi"], 1e-4)
    rel("TwoNN", idd["twonn"], ref["twonn"], 0.02)
    rel("TwoNN (fit)", idd["twonn_fit"], ref["twonn_fit"], 0.02)
    rel("MLE (MacKay-Ghahramani)", idd["mle"], ref["mle"], 0.02)
    rel("MLE (Levina-Bickel mean)", idd["mle_lb"], ref["mle_lb"], 0.02)
    print(f"\n{label}: embstore {js['seconds']:.2f} s, numpy/sklearn {ref['seconds']:.2f} s")
    print(f"  {'measure':34s} {'embstore':>14s} {'numpy':>14s} {'rel. diff':>10s} {'tol':>7s}")
    for name, c, r, e, tol in rows:
        good = e <= tol
        ok &= good
        print(f"  {name:34s} {c:14.8g} {r:14.8g} {e:10.2e} {tol:7.0e} {'ok' if good else 'FAIL'}")
    return ok


def run(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr}")
    return p.stdout


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.environ.get("ES_BIN", "build/embstore"))
    ap.add_argument("--tmp", default=None)
    ap.add_argument("--k", type=int, default=20)
    a = ap.parse_args()
    tmp = a.tmp or tempfile.mkdtemp(prefix="diag_ref_")
    os.makedirs(tmp, exist_ok=True)
    ok = True

    sift = ["data/siftsmall/siftsmall_base.part1.fvecs", "data/siftsmall/siftsmall_base.part2.fvecs"]
    js = json.loads(run([a.bin, "diagnose", *sift, "--json", "--sample", "0", "--k", str(a.k)]))
    ok &= compare("siftsmall base (10000 x 128)", reference(read_fvecs(sift), a.k), js["sets"][0])

    model = os.path.join(tmp, "diag_ref_model.es")
    dump = os.path.join(tmp, "diag_ref_table.fvecs")
    run([a.bin, "train", "data/criteo_kaggle_train_first10k.tsv", "--model", "dlrm", "--storage", "hash", "--dim", "16",
         "--budget", "1/10", "--epochs", "1", "--seed", "1", "--threads", "1", "--out", model])
    js = json.loads(run([a.bin, "diagnose", model, "--json", "--sample", "0", "--no-fields", "--k", str(a.k),
                         "--dump", dump]))
    x = read_fvecs([dump])
    s = js["sets"][0]
    ok &= compare(f"Criteo DLRM hash table ({s['n']} x {s['d']})", reference(x, a.k), s)
    print("\nall within tolerance" if ok else "\nSOME OUT OF TOLERANCE")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
