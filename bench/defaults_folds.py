#!/usr/bin/python3
"""defaults_folds.py -- the defaults study's check on more than one split.

defaults_study.py scores every configuration on one validation window (the
last 20% of the training rows).  On files of 10k rows one window is noisy:
this script scores configurations on three time-ordered windows of the
training rows (TRAIN = the first 80% of the file, as in baseline_lr.py; the
test rows are never read):

  fold a (a = 0.4, 0.6, 0.8):  train on TRAIN[0, a), score on TRAIN[a, a + 0.2)

and prints, per dataset, the AUC difference to the scikit-learn hashed LR of
baseline_lr.py fitted on the same fold (its C chosen on the fold's own
training rows), the mean over the folds first, then each fold.  embstore's
early stopping carves its validation rows from the fold's training rows, as
in the study.  Each configuration runs with seeds 1-3 (mean AUC).

A configuration line is embstore train flags; leading VAR=value words set
environment variables for that run (for prototypes behind a variable).

Usage: bench/defaults_folds.py CONFIG_FILE [--es build/embstore]
       [--out bench/out/folds] [--only criteo|movielens] [-j 2]
"""
import argparse
import concurrent.futures as cf
import json
import os
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import baseline_lr  # noqa: E402
import defaults_study  # noqa: E402

FOLDS = (0.4, 0.6, 0.8)
SEEDS = (1, 2, 3)


def write_fold(path, header, a, b, out, tag):
    """TRAIN[a, b) windows of the file's training rows as two files."""
    with open(path, "rb") as f:
        lines = f.read().splitlines(keepends=True)
    head, rows = ([lines[0]], lines[1:]) if header else ([], lines)
    n = len(rows) - round(len(rows) * 0.2)
    rows = rows[:n]
    j, k = round(n * a), round(n * b)
    stem, ext = os.path.splitext(os.path.basename(path))
    tr, va = os.path.join(out, f"{stem}.{tag}.tr{ext}"), os.path.join(out, f"{stem}.{tag}.va{ext}")
    with open(tr, "wb") as f:
        f.writelines(head + rows[:j])
    with open(va, "wb") as f:
        f.writelines(head + rows[j:k])
    return tr, va


def run_one(es, job):
    cfg, (name, a, tr, va, extra, _), seed = job
    toks, env = cfg.split(), dict(os.environ)
    while toks and "=" in toks[0] and not toks[0].startswith("-"):
        k, v = toks.pop(0).split("=", 1)
        env[k] = v
    cmd = [es, "train", tr, "--test", va, "--seed", str(seed), "--quiet"] + extra + toks
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode:
        return cfg, name, a, None
    return cfg, name, a, json.loads(p.stdout.strip().splitlines()[-1])["test_auc"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("configs")
    ap.add_argument("--es", default=os.path.join(ROOT, "build", "embstore"))
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "out", "folds"))
    ap.add_argument("--only", default=None)
    ap.add_argument("-j", type=int, default=2)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    sets = [
        ("criteo", os.path.join(ROOT, "data", "criteo_kaggle_train_first10k.tsv"), False, [], baseline_lr.criteo_rows),
        ("movielens", os.path.join(ROOT, "data", "ml-latest-small.csv"), True, defaults_study.ML_COLS,
         baseline_lr.movielens_rows),
    ]
    if args.only:
        sets = [s for s in sets if s[0] == args.only]
    splits = []
    for name, path, header, extra, rows_fn in sets:
        for a in FOLDS:
            tr, va = write_fold(path, header, a, a + 0.2, args.out, f"f{int(a * 100)}")
            lr = baseline_lr.lr_baseline(rows_fn, tr, va)
            splits.append((name, a, tr, va, extra, lr["test_auc"]))
    with open(args.configs) as f:
        configs = [l.strip() for l in f if l.strip() and not l.startswith("#")]
    jobs = [(c, sp, s) for c in configs for sp in splits for s in SEEDS]
    res = {}
    with cf.ThreadPoolExecutor(args.j) as ex:
        for cfg, name, a, auc in ex.map(lambda j: run_one(args.es, j), jobs):
            res.setdefault((cfg, name, a), []).append(np.nan if auc is None else auc)
    names = [s[0] for s in sets]
    print("sklearn LR AUC per fold: " + "; ".join(
        f"{n} " + " ".join(f"{lr:.4f}" for (m, a, *_, lr) in splits if m == n) for n in names))
    print("| configuration | " + " | ".join(f"{n}: mean diff [folds 0.4, 0.6, 0.8]" for n in names) + " |")
    print("|---|" + "---|" * len(names))
    for c in configs:
        cells = []
        for n in names:
            d = [np.mean(res[(c, n, a)]) - lr for (m, a, *_, lr) in splits if m == n]
            cells.append(f"{np.mean(d):+.4f} [{' '.join(f'{x:+.4f}' for x in d)}]")
        print(f"| `{c}` | " + " | ".join(cells) + " |")
    print(f"\nAUC difference to the sklearn hashed LR, mean of seeds {SEEDS}; {baseline_lr.cpu_name()}, 1 thread "
          "per run. Generated by bench/defaults_folds.py.")


if __name__ == "__main__":
    sys.exit(main())
