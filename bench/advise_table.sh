#!/usr/bin/env bash
# bench/advise_table.sh — the table of docs/diagnostics.md, "Advice": `embstore
# advise --verify` on the Criteo sample and ml-latest-small at budgets 1/8
# and 1/32, energy thresholds 0.9 (the default) and 0.99, seeds 1-3 (the
# advised fielddim table against a uniform hash table at the same budget;
# DLRM, dim 16, one epoch, validation on the last 20% of the rows).
set -euo pipefail
cd "$(dirname "$0")/.."
ES_BIN=${ES_BIN:-build/embstore}
ML="data/ml-latest-small.csv --columns rating:label,userId:cat,movieId:cat,genres:multi --label-threshold 4"
echo "| data | budget | energy | mean advised dim | advised AUC (sd) | uniform hash AUC (sd) | verdict |"
echo "|---|---|---|---:|---|---|---|"
for ds in criteo movielens; do
    if [ $ds = criteo ]; then D=data/criteo_kaggle_train_first10k.tsv; else D=$ML; fi
    for b in 1/8 1/32; do
        for e in 0.9 0.99; do
            $ES_BIN advise $D --budget $b --energy $e --verify --json --quiet | /usr/bin/python3 -c "
import json, statistics as st, sys
d = json.loads(sys.stdin.read()); v = d['verify']
dims = [f['dim'] for f in d['fields']]
a, u = v['advised_auc'], v['uniform_auc']
print('| $ds | $b | $e | %.2f | %.4f (%.4f) | %.4f (%.4f) | %s (diff %+.4f) |' % (sum(dims) / len(dims), st.mean(a), st.stdev(a), st.mean(u), st.stdev(u), v['verdict'], st.mean(a) - st.mean(u)))"
        done
    done
done
