#!/usr/bin/python3
"""bench/qtrain_table.py -- `make bench` section "qtrain" (issue 11): three
ways to a low-precision table, measured on real data.

For each dataset (the bundled Criteo sample: first 8000 rows to train, last
2000 to test; ml-latest-small: ratings >= 4 are clicks, first 80% of the
rows to train, last 20% to test), each model and table optimizer (fm with
ftrl, the training default until 2026-12-05; fm with rowwise Adagrad, whose state is one
float per row; dlrm with rowwise Adagrad, its default) and seeds 1..3, it
trains (the defaults otherwise: full table, early stopping on the last 20%
of the training rows, then refit) once in fp32 and then:
  PTQ   the fp32 model quantized by `embstore quantize` (nearest, min/max),
  QAT   --precision P --qtrain qat  (fp32 master, quantized forward, STE),
  ALPT  --precision P --qtrain alpt (codes only, learned step, SR),
for P in int8, int4, int2, and reports the mean test AUC over the seeds,
its difference from fp32, and the table bytes (codes as served; training
state beside them).  One thread, whole CLI runs.

Usage: bench/qtrain_table.py [--es build/embstore] [--out DIR] [--seeds 3]
"""
import argparse, json, os, statistics, subprocess, sys

ap = argparse.ArgumentParser()
ap.add_argument("--es", default="build/embstore")
ap.add_argument("--out", default="bench/out/qtrain")
ap.add_argument("--seeds", type=int, default=3)
a = ap.parse_args()
os.makedirs(a.out, exist_ok=True)

def split(src, train, test, test_rows=None, frac=None, header=False):
    lines = open(src).read().splitlines(True)
    head, body = (lines[:1], lines[1:]) if header else ([], lines)
    n = len(body)
    k = n - (test_rows if test_rows else int(round(n * frac)))
    open(train, "w").writelines(head + body[:k])
    open(test, "w").writelines(head + body[k:])

cr_tr, cr_te = f"{a.out}/criteo_train.tsv", f"{a.out}/criteo_test.tsv"
ml_tr, ml_te = f"{a.out}/ml_train.csv", f"{a.out}/ml_test.csv"
split("data/criteo_kaggle_train_first10k.tsv", cr_tr, cr_te, test_rows=2000)
split("data/ml-latest-small.csv", ml_tr, ml_te, frac=0.2, header=True)
DATA = {
    "criteo": (cr_tr, cr_te, []),
    "movielens": (ml_tr, ml_te, ["--columns", "rating:label,userId:cat,movieId:cat,genres:multi", "--label-threshold", "4"]),
}

def run(args):
    r = subprocess.run(args, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"failed: {' '.join(args)}\n{r.stderr}")
    return r.stdout

def train(ds, mo, seed, extra, out):
    tr, te, cols = DATA[ds]
    model, opt = mo
    o = run([a.es, "train", tr, "--test", te, "--model", model, "--emb-optim", opt, "--seed", str(seed), "--threads", "1",
             "--out", out, "--quiet"] + cols + extra)
    d = json.loads(o.strip().splitlines()[-1])
    return d["test_auc"], d["emb_param_bytes"], d["emb_state_bytes"]

def evaluate(model, ds):
    d = json.loads(run([a.es, "eval", model, DATA[ds][1]]).strip().splitlines()[-1])
    return d["auc"]

PRECS = ["int8", "int4", "int2"]
rows = []
for ds in DATA:
    for mo in [("fm", "ftrl"), ("fm", "rowwise"), ("dlrm", "rowwise")]:
        res = {}
        for seed in range(1, a.seeds + 1):
            m = f"{a.out}/m.es"
            auc, pb, sb = train(ds, mo, seed, [], m)
            res.setdefault(("fp32", "-"), []).append((auc, pb, sb))
            for p in PRECS:
                q = f"{a.out}/m.{p}.es"
                run([a.es, "quantize", m, "--precision", p, "-o", q])
                res.setdefault((p, "ptq"), []).append((evaluate(q, ds), os.path.getsize(q), 0))
                os.remove(q)
                for mode in ["qat", "alpt"]:
                    auc, pb, sb = train(ds, mo, seed, ["--precision", p, "--qtrain", mode], f"{a.out}/mq.es")
                    res.setdefault((p, mode), []).append((auc, pb, sb))
            os.remove(m)
        base = statistics.mean(x[0] for x in res[("fp32", "-")])
        for (p, mode), v in res.items():
            aucs = [x[0] for x in v]
            mean = statistics.mean(aucs)
            sd = statistics.stdev(aucs) if len(aucs) > 1 else 0.0
            rows.append((ds, "%s, %s" % mo, p, mode, mean, sd, mean - base, v[0][1], v[0][2]))
            print(json.dumps({"data": ds, "model": mo[0], "emb_optim": mo[1], "precision": p, "how": mode, "test_auc": round(mean, 5),
                              "sd": round(sd, 5), "vs_fp32": round(mean - base, 5)}), flush=True)

with open(f"{a.out}/table.md", "w") as f:
    f.write(f"| data | model, table optimizer | precision | how | test AUC (mean of {a.seeds}) | sd | vs fp32 |\n")
    f.write("|---|---|---|---|---:|---:|---:|\n")
    for ds, opt, p, mode, mean, sd, dlt, pb, sb in rows:
        f.write(f"| {ds} | {opt} | {p} | {mode} | {mean:.4f} | {sd:.4f} | {dlt:+.4f} |\n")
print(open(f"{a.out}/table.md").read())
