#!/usr/bin/env bash
# bench/advise_table.sh — the table of docs/diagnostics.md, "Advice": `embstore
# advise --verify` on the Criteo sample and ml-latest-small at budgets 1/8 and
# 1/32 (DLRM, dim 16, one epoch, 1 thread; default candidates: the spectra of
# the probe's rows and of their change at energies 0.8/0.9/0.95/0.99, and the
# uniform table, each with split=equal and split=prop; selection seeds
# 101-103 on the inner split; verify seeds 1-3 on the last 20% of the rows,
# which the selection never sees).  One row per data set and budget: what the
# selection saw, what it advised, and the verified AUCs of the advice, of the
# uniform hash table, and of the best per-field candidate when it was not
# advised (so the refusals can be checked too).
set -euo pipefail
cd "$(dirname "$0")/.."
ES_BIN=${ES_BIN:-build/embstore}
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
ML="data/ml-latest-small.csv --columns rating:label,userId:cat,movieId:cat,genres:multi --label-threshold 4"
echo "| data | budget | best on the selection rows (diff to uniform, 2se) | advice | verify: advice AUC (sd) | verify: uniform hash AUC (sd) | verdict | verify: the best per-field candidate, not advised |"
echo "|---|---|---|---|---|---|---|---|"
for ds in criteo movielens; do
    if [ $ds = criteo ]; then D=data/criteo_kaggle_train_first10k.tsv; else D=$ML; fi
    for b in 1/8 1/32; do
        $ES_BIN advise $D --budget $b --threads 1 --verify --json --quiet | /usr/bin/python3 -c "
import json, math, statistics as st, sys
d = json.loads(sys.stdin.read()); v = d['verify']
c = {x['label']: x for x in d['candidates'] if 'select_mean' in x}
bst, uni, n = c[d['best']], c['uniform'], d['select_seeds']
se2 = 2 * math.sqrt(bst['select_sd'] ** 2 / n + uni['select_sd'] ** 2 / n)
a, u = v['advised_auc'], v['uniform_auc']
advice = 'uniform hash' if d['uniform'] else d['choice'] + ' (mean dim %.2f)' % c[d['choice']]['mean_dim']
alt = v.get('best_per_field')
alt_s = '%s %.4f (sd %.4f, diff %+.4f): %s' % (alt['label'], alt['mean'], st.stdev(alt['auc']), alt['mean'] - st.mean(u), alt['verdict']) if alt else '-'
print('| $ds | $b | %s %.4f (%+.4f, %.4f) | %s | %.4f (%.4f) | %.4f (%.4f) | %s | %s |' % (d['best'], bst['select_mean'], bst['select_mean'] - uni['select_mean'], se2, advice, st.mean(a), st.stdev(a), st.mean(u), st.stdev(u), v['verdict'], alt_s))"
    done
done
