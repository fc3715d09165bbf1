#!/usr/bin/python3
"""bench_train.py -- training and inference speed of embstore against the
PyTorch reference (bench/torch_ref.py), on the same synthetic data, the same
model configurations and the same thread count, in one run.

Data: bench/gen_criteo writes TRAIN + TEST rows of a synthetic Criteo-shaped
click log (seed fixed); the first TRAIN rows are the training file, the last
TEST rows the test file (same distribution).

Per configuration it runs
  embstore train TRAIN --valid TEST ... --out MODEL   (JSON: train_rows_per_s,
                                                       parsing included)
  embstore predict MODEL TEST --out PREDS             (wall clock: load model,
                                                       parse, forward, write)
  torch_ref.py TRAIN --valid TEST ... --predict TEST  (JSON: training-loop
                                                       rows/s on tensors prepared
                                                       in advance, the same
                                                       including parse + prepare,
                                                       predict rows/s end to end)
and prints a Markdown table with the conditions (rows, bytes, threads, CPU).
Nothing is tuned per side: both get the same flags.

Usage: bench/bench_train.py [--es build/embstore] [--rows 200000] [--test-rows 50000]
                            [--threads 2[,1]] [--configs lr,fm,dlrm-small,dlrm-ref]
"""
import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PY = "/usr/bin/python3"

# name -> (description, flags shared by both sides)
CONFIGS = {
    "lr": ("LR", ["--model", "lr"]),
    "fm": ("FM, k=16", ["--model", "fm", "--dim", "16"]),
    "dlrm-small": ("DLRM small: dim 16, bottom 64-16, top 64-32-1",
                   ["--model", "dlrm", "--dim", "16", "--bottom", "64,16", "--top", "64,32"]),
    "dlrm-ref": ("DLRM reference: dim 16, bottom 512-256-64-16, top 512-256-1",
                 ["--model", "dlrm", "--dim", "16", "--bottom", "512,256,64,16", "--top", "512,256"]),
    "dcn": ("DCN-v2: dim 16, 2 cross layers, deep 64-32-1",
            ["--model", "dcn", "--dim", "16", "--cross", "2", "--top", "64,32"]),
}


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def cpu_model():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def last_json(text):
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    return None


def run(cmd, timeout):
    log("  $ " + " ".join(shlex.quote(c) for c in cmd))
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, time.perf_counter() - t0, f"timed out after {timeout} s"
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        return None, wall, f"exit {p.returncode}: {p.stderr.strip()[-400:]}"
    return p.stdout, wall, None


def make_data(out_dir, rows, test_rows, seed):
    gen = os.path.join(out_dir, "gen_criteo")
    src = os.path.join(HERE, "gen_criteo.c")
    if not os.path.exists(gen) or os.path.getmtime(gen) < os.path.getmtime(src):
        subprocess.run(["cc", "-O2", "-o", gen, src, "-lm"], check=True)
    train = os.path.join(out_dir, f"synth_train_{rows}.tsv")
    test = os.path.join(out_dir, f"synth_test_{test_rows}.tsv")
    if not (os.path.exists(train) and os.path.exists(test)):
        allf = os.path.join(out_dir, "synth_all.tsv")
        subprocess.run([gen, "--rows", str(rows + test_rows), "--seed", str(seed), "--out", allf], check=True)
        with open(allf, "rb") as fin, open(train, "wb") as ftr, open(test, "wb") as fte:
            for i, line in enumerate(fin):
                (ftr if i < rows else fte).write(line)
        os.remove(allf)
    return train, test


def fmt_rate(x):
    if x is None:
        return "n/a"
    return f"{x:,.0f}"


def fmt_ratio(a, b):
    if a is None or b is None or b == 0:
        return "n/a"
    return f"{a / b:.2f}x"


def run_config(args, name, threads, train, test, es_ok):
    """Both sides on one configuration; returns (result dict, failures)."""
    desc, flags = CONFIGS[name]
    common = ["--storage", args.storage, "--epochs", str(args.epochs), "--batch", str(args.batch),
              "--threads", str(threads), "--seed", str(args.seed)]
    log(f"[{name}, {threads} threads] {desc}")
    r, fails = {"config": name, "desc": desc, "threads": threads}, 0
    if es_ok:
        model = os.path.join(args.out, f"es_{name}_t{threads}.es")
        out, wall, err = run([args.es, "train", train, "--valid", test, *flags, *common, "--out", model,
                              "--quiet"], args.timeout)
        j = last_json(out) if out else None
        if j is None:
            r["es_error"] = err or "no JSON line on stdout"
            fails += 1
        else:
            r.update(es_train=j.get("train_rows_per_s"), es_eval=j.get("eval_rows_per_s"),
                     es_auc=j.get("auc"), es_train_wall=wall)
            preds = os.path.join(args.out, f"es_{name}_t{threads}.preds")
            out, wall, err = run([args.es, "predict", model, test, "--out", preds, "--threads", str(threads)],
                                 args.timeout)
            if err:
                r["es_error"] = "predict: " + err
                fails += 1
            else:
                r["es_predict"] = args.test_rows / wall
    out, wall, err = run([PY, os.path.join(HERE, "torch_ref.py"), train, "--valid", test, *flags, *common,
                          "--predict", test, "--pred-out", os.path.join(args.out, f"torch_{name}_t{threads}.preds")],
                         args.timeout)
    j = last_json(out) if out else None
    if j is None:
        r["torch_error"] = err or "no JSON line on stdout"
        fails += 1
    else:
        r.update(t_train=j.get("train_rows_per_s"), t_train_e2e=j.get("train_rows_per_s_e2e"),
                 t_infer=j.get("infer_rows_per_s"), t_predict=j.get("predict_rows_per_s"),
                 t_auc=j.get("auc"), t_wall=wall, torch_version=j.get("torch"))
    return r, fails


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--es", default=os.environ.get("ES_BIN", os.path.join(ROOT, "build", "embstore")))
    ap.add_argument("--out", default=os.path.join(HERE, "out"))
    ap.add_argument("--rows", type=int, default=200000, help="training rows")
    ap.add_argument("--test-rows", type=int, default=50000, help="test rows (validation / prediction)")
    ap.add_argument("--data-seed", type=int, default=7)
    ap.add_argument("--threads", default="2", help="thread count, or a comma list (one table each)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--storage", default="full")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--configs", default="lr,fm,dlrm-small,dlrm-ref")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per command")
    ap.add_argument("--md", help="also write the Markdown report here")
    args = ap.parse_args()

    os.makedirs(args.out, exist_ok=True)
    train, test = make_data(args.out, args.rows, args.test_rows, args.data_seed)
    sizes = (os.path.getsize(train), os.path.getsize(test))
    es_ok = os.access(args.es, os.X_OK)
    if not es_ok:
        log(f"bench_train: {args.es} not found or not executable; embstore columns will be n/a")

    load_before = os.getloadavg()
    results, failures = [], 0
    thread_list = [int(t) for t in str(args.threads).split(",") if t.strip()]
    for threads in thread_list:
        for name in args.configs.split(","):
            if name not in CONFIGS:
                log(f"bench_train: unknown config {name}")
                failures += 1
                continue
            r, nfail = run_config(args, name, threads, train, test, es_ok)
            results.append(r)
            failures += nfail
            log("  " + json.dumps(r))
    load_after = os.getloadavg()

    tv = next((r.get("torch_version") for r in results if r.get("torch_version")), "?")
    cond = (f"Conditions: synthetic Criteo-shaped data from bench/gen_criteo.c (seed {args.data_seed}): "
            f"{args.rows:,} training rows ({sizes[0] / 1e6:.1f} MB), {args.test_rows:,} test rows "
            f"({sizes[1] / 1e6:.1f} MB); storage `{args.storage}`, {args.epochs} epoch(s), batch {args.batch}, "
            f"seed {args.seed}, Adam (dense) + row-wise Adagrad (tables); the same thread count for both sides "
            f"(embstore --threads T; torch.set_num_threads(T), 1 inter-op thread); "
            f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}; CPU: {cpu_model()}, "
            f"{os.cpu_count()} logical CPUs visible; 1-min load average before/after "
            f"{load_before[0]:.2f}/{load_after[0]:.2f} (other processes may share this machine); torch {tv}; "
            f"embstore {args.es}.")
    lines = []
    for threads in thread_list:
        lines += [
            f"**{threads} thread{'s' if threads > 1 else ''}**", "",
            "| config | embstore train rows/s | torch train rows/s (loop) | torch train rows/s (incl. parse) "
            "| train ratio (es / torch loop) | embstore predict rows/s | torch predict rows/s | predict ratio "
            "| torch forward-only rows/s | test AUC es / torch |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for r in results:
            if r["threads"] != threads:
                continue
            auc = "/".join(f"{r[k]:.4f}" if isinstance(r.get(k), float) else "n/a" for k in ("es_auc", "t_auc"))
            lines.append(
                f"| {r['desc']} | {fmt_rate(r.get('es_train'))} | {fmt_rate(r.get('t_train'))} | "
                f"{fmt_rate(r.get('t_train_e2e'))} | {fmt_ratio(r.get('es_train'), r.get('t_train'))} | "
                f"{fmt_rate(r.get('es_predict'))} | {fmt_rate(r.get('t_predict'))} | "
                f"{fmt_ratio(r.get('es_predict'), r.get('t_predict'))} | {fmt_rate(r.get('t_infer'))} | {auc} |")
        lines.append("")
    notes = [
        "embstore train rows/s: the CLI's `train_rows_per_s` (all epochs, parsing the TSV included; the "
        "row-count and vocabulary passes excluded). torch (loop): training loop only, batches sliced from "
        "tensors built in advance; torch (incl. parse): the same rows over parse + index mapping + loop. "
        "Predict: rows / wall clock of a whole `embstore predict` process (load model, parse, forward, write) "
        "and of torch_ref's --predict step (parse, map, forward, write; model already in memory). "
        "torch forward-only: no_grad forward passes over prepared tensors.",
    ]
    for r in results:
        for side in ("es_error", "torch_error"):
            if side in r:
                notes.append(f"- {r['config']} ({r['threads']} threads): {side.split('_')[0]} failed: {r[side]}")
    report = "\n".join([cond, "", *lines, *notes])
    print(report)
    if args.md:
        with open(args.md, "w") as fh:
            fh.write(report + "\n")
    with open(os.path.join(args.out, "bench_train.json"), "w") as fh:
        json.dump({"conditions": cond, "results": results}, fh, indent=1)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
