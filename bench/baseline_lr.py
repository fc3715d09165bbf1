#!/usr/bin/python3
"""baseline_lr.py -- the simplest strong baseline next to embstore's default.

A scikit-learn logistic regression on hashed one-hot features, and
`embstore train FILE` with no option but the data, on the same split of the
same file, measured in one run:

  split   the last 20% of the file's rows (file order) are the test rows; the
          first 80% are the training rows.  Both sides choose what they choose
          (LR: its C; embstore: early stopping, when its defaults use it) on
          a validation split carved from the TRAINING rows only (their last
          20%); the test rows are only reported.
  LR      sklearn.feature_extraction.FeatureHasher (2^20 features, "name=value"
          tokens for categorical and multi-valued columns, log1p-transformed
          numeric columns as real values), LogisticRegression(liblinear), C from
          {0.01, 0.03, 0.1, 0.3, 1, 3, 10} by validation AUC, then refit on
          all training rows.
  embstore `embstore train TRAIN --test TEST --seed S` for 3 seeds (mean and
          range of the test AUC); its own --valid-frac default carves the
          validation rows from TRAIN.

Datasets: the bundled Criteo sample (data/criteo_kaggle_train_first10k.tsv)
and MovieLens ml-latest-small (data/ml-latest-small.csv, label rating >= 4,
userId, movieId, genres multi-valued).

Usage: bench/baseline_lr.py [--es build/embstore] [--out bench/out/baseline]
                            [--md FILE] [--seeds 3]
"""
import argparse
import json
import math
import os
import subprocess
import sys
import time

import numpy as np
from sklearn.feature_extraction import FeatureHasher
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def split_file(path, out_dir, header):
    """Write TRAIN (first 80% of rows) and TEST (last 20%) next to out_dir."""
    with open(path, "rb") as f:
        lines = f.read().splitlines(keepends=True)
    head = [lines[0]] if header else []
    rows = lines[1:] if header else lines
    n_train = len(rows) - round(len(rows) * 0.2)
    base = os.path.join(out_dir, os.path.basename(path))
    stem, ext = os.path.splitext(base)
    train, test = f"{stem}.train{ext}", f"{stem}.test{ext}"
    with open(train, "wb") as f:
        f.writelines(head + rows[:n_train])
    with open(test, "wb") as f:
        f.writelines(head + rows[n_train:])
    return train, test


def criteo_rows(path):
    ys, feats = [], []
    with open(path) as f:
        for line in f:
            c = line.rstrip("\n").split("\t")
            ys.append(int(c[0]))
            d = {}
            for i in range(13):
                v = c[1 + i]
                if v:
                    x = float(v)
                    d[f"I{i + 1}"] = math.log1p(x) if x >= 0 else -math.log1p(-x)
            for i in range(26):
                d[f"C{i + 1}={c[14 + i]}"] = 1.0
            feats.append(d)
    return np.array(ys), feats


def movielens_rows(path):
    ys, feats = [], []
    with open(path) as f:
        f.readline()
        for line in f:
            rating, user, movie, genres = line.rstrip("\n").split(",", 3)
            ys.append(1 if float(rating) >= 4 else 0)
            d = {f"u={user}": 1.0, f"m={movie}": 1.0}
            g = [x for x in genres.split("|") if x]
            for x in g:
                d[f"g={x}"] = 1.0 / len(g)  # mean pooling, as embstore's default
            feats.append(d)
    return np.array(ys), feats


def lr_baseline(rows_fn, train, test):
    t0 = time.time()
    y, f = rows_fn(train)
    yt, ft = rows_fn(test)
    h = FeatureHasher(n_features=1 << 20, input_type="dict", alternate_sign=False)
    n_fit = len(y) - round(len(y) * 0.2)
    X, Xt = h.transform(f), h.transform(ft)
    best = None
    for C in (0.01, 0.03, 0.1, 0.3, 1, 3, 10):
        m = LogisticRegression(C=C, solver="liblinear", max_iter=1000).fit(X[:n_fit], y[:n_fit])
        auc = roc_auc_score(y[n_fit:], m.predict_proba(X[n_fit:])[:, 1])
        if best is None or auc > best[1]:
            best = (C, auc)
    m = LogisticRegression(C=best[0], solver="liblinear", max_iter=1000).fit(X, y)
    auc = roc_auc_score(yt, m.predict_proba(Xt)[:, 1])
    return {"C": best[0], "valid_auc": best[1], "test_auc": auc, "seconds": time.time() - t0}


def embstore_default(es, train, test, extra, seeds):
    aucs, secs = [], []
    for s in range(1, seeds + 1):
        cmd = [es, "train", train, "--test", test, "--seed", str(s), "--quiet"] + extra
        t0 = time.time()
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {p.stderr.strip()}")
        j = json.loads(p.stdout.strip().splitlines()[-1])
        aucs.append(j["test_auc"])
        secs.append(time.time() - t0)
    return {"test_auc": float(np.mean(aucs)), "min": min(aucs), "max": max(aucs), "seconds": float(np.mean(secs))}


def cpu_name():
    return subprocess.run(["sh", "-c", "lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1"], capture_output=True,
                          text=True).stdout.strip()


def print_md(lines, path):
    """Print the report and write it to path (when given)."""
    md = "\n".join(lines) + "\n"
    print(md)
    if path:
        with open(path, "w") as f:
            f.write(md)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--es", default=os.path.join(ROOT, "build", "embstore"))
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "out", "baseline"))
    ap.add_argument("--md", default=None)
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    sets = [
        ("Criteo sample (10k rows)", os.path.join(ROOT, "data", "criteo_kaggle_train_first10k.tsv"), False, criteo_rows, []),
        ("ml-latest-small", os.path.join(ROOT, "data", "ml-latest-small.csv"), True, movielens_rows,
         ["--columns", "rating:label,userId:cat,movieId:cat,genres:multi", "--label-threshold", "4"]),
    ]
    lines = [
        "| dataset | sklearn LR (hashed, C) test AUC | embstore default test AUC (mean of %d seeds, range) | difference |" % args.seeds,
        "|---|---:|---:|---:|",
    ]
    for name, path, header, rows_fn, extra in sets:
        train, test = split_file(path, args.out, header)
        lr = lr_baseline(rows_fn, train, test)
        es = embstore_default(args.es, train, test, extra, args.seeds)
        lines.append(f"| {name} | {lr['test_auc']:.4f} (C={lr['C']}) | {es['test_auc']:.4f} ({es['min']:.4f}..{es['max']:.4f}) | "
                     f"{es['test_auc'] - lr['test_auc']:+.4f} |")
        print(f"{name}: LR {lr['test_auc']:.4f} (C={lr['C']}, valid {lr['valid_auc']:.4f}, {lr['seconds']:.1f} s); "
              f"embstore {es['test_auc']:.4f} ({es['min']:.4f}..{es['max']:.4f}, {es['seconds']:.1f} s per run)", flush=True)
    lines.append("")
    lines.append(f"Conditions: {cpu_name()}, split by file order (last 20% test), validation carved from the training rows; "
                 f"embstore: `embstore train TRAIN` defaults plus the columns of the CSV, 1 thread.")
    print_md(lines, args.md)


if __name__ == "__main__":
    sys.exit(main())
