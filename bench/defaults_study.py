#!/usr/bin/python3
"""defaults_study.py -- the study behind `embstore train`'s defaults.

Every decision is made on validation rows carved from TRAINING rows; no test
row is read.  For each dataset:

  FILE  -> TRAIN (first 80% of rows, file order) + TEST (last 20%; unused here)
  TRAIN -> S_TRAIN (first 80%) + S_VALID (last 20%)

Each configuration runs `embstore train S_TRAIN --test S_VALID --seed s
<flags>` for 3 seeds; the score is the mean AUC on S_VALID.  embstore's own
early stopping carves ITS validation rows from S_TRAIN (--valid-frac), so
S_VALID plays the part of unseen data, and refitting (which trains on all of
S_TRAIN) can be judged too.  The scikit-learn hashed LR of baseline_lr.py is
scored on exactly the same rows: it is fit on S_TRAIN and its C is chosen on
S_VALID (this is its validation AUC in baseline_lr.py), so the LR line is if
anything optimistic.

Datasets (all real but the last):
  criteo    data/criteo_kaggle_train_first10k.tsv (Criteo Kaggle, first 10k rows)
  movielens data/ml-latest-small.csv (rating >= 4; userId, movieId, genres;
            in time order, so S_VALID is later than S_TRAIN)
  amazon    ../shared/data/amazon/grocery_gourmet_food_5core_train.tsv
            (implicit feedback: each (user, item) interaction is a positive;
            one negative per positive, an item drawn uniformly from those
            the user never interacted with, seed 1; in time order)
  synthetic bench/gen_criteo --rows 100000 --seed 5 (Criteo-shaped; not for
            claims about real data)

The configurations change one thing at a time from a base (BASE below, the
defaults of `embstore train` after this study); --flags are passed as they
are, so the base is also checked by running with no flag at all ("defaults").

Usage: bench/defaults_study.py [--es build/embstore] [--out bench/out/study]
                               [--md FILE] [--seeds 3] [--only NAME,...]
"""
import argparse
import json
import os
import random
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import baseline_lr  # noqa: E402  (split_file, lr_baseline, the row readers)

AMAZON = os.path.join(ROOT, "..", "shared", "data", "amazon", "grocery_gourmet_food_5core_train.tsv")
ML_COLS = ["--columns", "rating:label,userId:cat,movieId:cat,genres:multi", "--label-threshold", "4"]
AMZ_COLS = ["--columns", "label:label,user:cat,item:cat"]

# (name, flags): one change at a time from the defaults
CONFIGS = [
    ("defaults", []),
    # model
    ("model lr", ["--model", "lr"]),
    ("fm dim 8", ["--dim", "8"]),
    ("fm dim 16", ["--dim", "16"]),
    ("dlrm dim 16 (rowwise Adagrad tables)", ["--model", "dlrm", "--dim", "16", "--emb-optim", "rowwise", "--lr", "0.001"]),
    ("dcn dim 16 (rowwise Adagrad tables)", ["--model", "dcn", "--dim", "16", "--emb-optim", "rowwise", "--lr", "0.001"]),
    # storage and budget
    ("storage unified, budget 0.1", ["--storage", "unified", "--budget", "0.1"]),
    ("storage unified, budget 0.5", ["--storage", "unified", "--budget", "0.5"]),
    ("storage hash, budget 0.5", ["--storage", "hash", "--budget", "0.5"]),
    # table optimizer and regularization
    ("tables: rowwise Adagrad, lr 0.05", ["--emb-optim", "rowwise", "--emb-lr", "0.05"]),
    ("tables: Adagrad, lr 0.05", ["--emb-optim", "adagrad", "--emb-lr", "0.05"]),
    ("tables: Adagrad, lr 0.05, emb-l2 0.1", ["--emb-optim", "adagrad", "--emb-lr", "0.05", "--emb-l2", "0.1"]),
    ("ftrl alpha 0.05", ["--ftrl-alpha", "0.05"]),
    ("ftrl alpha 0.2", ["--ftrl-alpha", "0.2"]),
    ("ftrl l1 0", ["--ftrl-l1", "0"]),
    ("ftrl l1 0.01", ["--ftrl-l1", "0.01"]),
    ("ftrl l1 0.1", ["--ftrl-l1", "0.1"]),
    ("ftrl l2 0.3", ["--ftrl-l2", "0.3"]),
    # steps
    ("batch 256", ["--batch", "256"]),
    ("batch 16", ["--batch", "16"]),
    ("dense lr 0.001", ["--lr", "0.001"]),
    ("dense lr 0.05", ["--lr", "0.05"]),
    # epochs and early stopping
    ("1 epoch, no early stopping", ["--epochs", "1", "--early-stop", "0"]),
    ("early-stop 1", ["--early-stop", "1"]),
    ("early-stop 3", ["--early-stop", "3"]),
    ("no refit", ["--no-refit"]),
    # pooling of multi-valued fields (MovieLens genres only)
    ("pool sum", ["--pool", "sum"]),
    # round 2: combinations of what helped in round 1
    ("dcn dim 16", ["--model", "dcn", "--dim", "16"]),
    ("dcn dim 16, dense lr 0.001", ["--model", "dcn", "--dim", "16", "--lr", "0.001"]),
    ("dcn dim 8, dense lr 0.001", ["--model", "dcn", "--dim", "8", "--lr", "0.001"]),
    ("dcn dim 16, rowwise tables, dense lr 0.001, batch 256",
     ["--model", "dcn", "--dim", "16", "--emb-optim", "rowwise", "--lr", "0.001", "--batch", "256"]),
    ("fm: ftrl alpha 0.2, l2 0.3, batch 256", ["--ftrl-alpha", "0.2", "--ftrl-l2", "0.3", "--batch", "256"]),
    # after round 2, from the chosen defaults: numeric columns also as bucketed fields (Criteo TSV only)
    ("numeric buckets (--num-cat)", ["--num-cat"]),
]
ONLY_ON = {"pool sum": ("movielens",), "numeric buckets (--num-cat)": ("criteo", "synthetic")}


def amazon_csv(out_dir):
    """Positives and one sampled negative each, in time order, as CSV."""
    path = os.path.join(out_dir, "amazon_grocery.csv")
    if os.path.exists(path):
        return path
    rows = []
    with open(AMAZON) as f:
        f.readline()
        for line in f:
            u, i, t = line.split()
            rows.append((int(t), int(u), int(i)))
    items = sorted({i for _, _, i in rows})
    seen = {}
    for _, u, i in rows:
        seen.setdefault(u, set()).add(i)
    rng = random.Random(1)
    out = []
    for n, (t, u, i) in enumerate(rows):
        out.append((t, n, 1, u, i))
        while True:
            j = items[rng.randrange(len(items))]
            if j not in seen[u]:
                break
        out.append((t, n, 0, u, j))
    out.sort()
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("label,user,item\n")
        for _, _, y, u, i in out:
            f.write(f"{y},{u},{i}\n")
    os.replace(tmp, path)
    return path


def amazon_rows(path):
    ys, feats = [], []
    with open(path) as f:
        f.readline()
        for line in f:
            y, u, i = line.rstrip("\n").split(",")
            ys.append(int(y))
            feats.append({f"u={u}": 1.0, f"i={i}": 1.0})
    return np.array(ys), feats


def synthetic_tsv(out_dir):
    path = os.path.join(out_dir, "synthetic_100k.tsv")
    if not os.path.exists(path):
        gen = os.path.join(out_dir, "gen_criteo")
        subprocess.run(["cc", "-O2", "-o", gen, os.path.join(HERE, "gen_criteo.c"), "-lm"], check=True)
        subprocess.run([gen, "--rows", "100000", "--seed", "5", "--out", path + ".tmp"], check=True)
        os.replace(path + ".tmp", path)
    return path


def run_es(es, train, valid, extra, flags, seeds):
    aucs, secs, eps = [], [], []
    for s in range(1, seeds + 1):
        cmd = [es, "train", train, "--test", valid, "--seed", str(s), "--quiet"] + extra + flags
        t0 = time.time()
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            return {"error": p.stderr.strip().splitlines()[-1] if p.stderr.strip() else "failed"}
        j = json.loads(p.stdout.strip().splitlines()[-1])
        aucs.append(j["test_auc"])
        eps.append(j.get("best_epoch", j.get("epochs")))
        secs.append(time.time() - t0)
    return {"auc": float(np.mean(aucs)), "sd": float(np.std(aucs)), "secs": float(np.mean(secs)), "epochs": eps}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--es", default=os.path.join(ROOT, "build", "embstore"))
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "out", "study"))
    ap.add_argument("--md", default=None)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--only", default=None, help="configuration names separated by ';' (default: all)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    sets = [
        ("criteo", os.path.join(ROOT, "data", "criteo_kaggle_train_first10k.tsv"), False, baseline_lr.criteo_rows, []),
        ("movielens", os.path.join(ROOT, "data", "ml-latest-small.csv"), True, baseline_lr.movielens_rows, ML_COLS),
        ("amazon", amazon_csv(args.out), True, amazon_rows, AMZ_COLS),
        ("synthetic", synthetic_tsv(args.out), False, baseline_lr.criteo_rows, []),
    ]
    splits = []
    for name, path, header, rows_fn, extra in sets:
        train, _ = baseline_lr.split_file(path, args.out, header)
        s_train, s_valid = baseline_lr.split_file(train, args.out, header)
        lr = baseline_lr.lr_baseline(rows_fn, s_train, s_valid)
        # lr_baseline refits on all of S_TRAIN after choosing C on its last
        # 20%; what is scored here is its AUC on S_VALID
        print(f"{name}: LR (hashed, C={lr['C']}) {lr['test_auc']:.4f}", flush=True)
        splits.append((name, s_train, s_valid, extra, lr))
    only = set(x.strip() for x in args.only.split(";")) if args.only else None
    head = "| configuration | " + " | ".join(n for n, *_ in splits) + " | mean |"
    lines = [head, "|---|" + "---:|" * (len(splits) + 1)]
    lines.append("| sklearn hashed LR (C on S_VALID) | " + " | ".join(f"{lr['test_auc']:.4f}" for *_, lr in splits) +
                 f" | {np.mean([lr['test_auc'] for *_, lr in splits]):.4f} |")
    for cname, flags in CONFIGS:
        if only and cname not in only:
            continue
        cells, vals = [], []
        for name, s_train, s_valid, extra, _ in splits:
            if cname in ONLY_ON and name not in ONLY_ON[cname]:
                cells.append("")
                continue
            r = run_es(args.es, s_train, s_valid, extra, flags, args.seeds)
            if "error" in r:
                cells.append("error")
                print(f"  {cname} / {name}: {r['error']}", flush=True)
                continue
            vals.append(r["auc"])
            cells.append(f"{r['auc']:.4f}")
            print(f"  {cname} / {name}: {r['auc']:.4f} (sd {r['sd']:.4f}, {r['secs']:.1f} s, epochs {r['epochs']})", flush=True)
        mean = f"{np.mean(vals):.4f}" if len(vals) == len(splits) else ""
        lines.append(f"| {cname} | " + " | ".join(cells) + f" | {mean} |")
    lines.append("")
    lines.append(f"AUC on S_VALID (the last 20% of each dataset's training rows), mean of {args.seeds} seeds; "
                 f"{baseline_lr.cpu_name()}, 1 thread. Generated by bench/defaults_study.py.")
    baseline_lr.print_md(lines, args.md)


if __name__ == "__main__":
    sys.exit(main())
