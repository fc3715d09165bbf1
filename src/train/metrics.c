/*
 * metrics.c — evaluation metrics: exact ROC AUC (ties counted half),
 * logloss and calibration.
 *
 * AUC is computed exactly by sorting the scores: the Mann-Whitney U
 * statistic with mid-ranks for tied scores, which equals the probability
 * that a random positive outranks a random negative, ties counting half.
 */
#include "core/core.h"

#include <math.h>

typedef struct {
    float p;
    float y;
} scored;

static int cmp_scored(const void *a, const void *b) {
    float x = ((const scored *)a)->p, z = ((const scored *)b)->p;
    return (x > z) - (x < z);
}

double es_auc(const float *p, const float *y, size_t n) {
    if (n == 0) return NAN;
    scored *s = es__malloc(n * sizeof *s);
    if (!s) return NAN;
    double pos = 0;
    for (size_t i = 0; i < n; i++) {
        s[i].p = p[i] != p[i] ? 0.0f : p[i]; /* NaN scores rank as 0 */
        s[i].y = y[i];
        pos += y[i] > 0.5f;
    }
    double neg = (double)n - pos;
    if (pos == 0 || neg == 0) {
        es__free(s);
        return NAN;
    }
    qsort(s, n, sizeof *s, cmp_scored);
    /* Sum of mid-ranks (1-based) of the positives. */
    double rank_sum = 0;
    size_t i = 0;
    while (i < n) {
        size_t j = i;
        double pos_in_tie = 0;
        while (j < n && s[j].p == s[i].p) {
            pos_in_tie += s[j].y > 0.5f;
            j++;
        }
        double mid = 0.5 * ((double)(i + 1) + (double)j); /* ranks i+1..j */
        rank_sum += pos_in_tie * mid;
        i = j;
    }
    es__free(s);
    return (rank_sum - pos * (pos + 1) / 2) / (pos * neg);
}

void es_metrics_compute(const float *p, const float *y, size_t n, es_metrics *out) {
    memset(out, 0, sizeof *out);
    out->rows = n;
    if (n == 0) {
        out->auc = out->logloss = out->calibration = NAN;
        return;
    }
    double ll = 0, sp = 0, sy = 0;
    for (size_t i = 0; i < n; i++) {
        double q = p[i];
        if (q < 1e-7) q = 1e-7;
        if (q > 1 - 1e-7) q = 1 - 1e-7;
        ll -= y[i] > 0.5f ? log(q) : log(1 - q);
        sp += p[i];
        sy += y[i] > 0.5f;
    }
    out->logloss = ll / (double)n;
    out->mean_pred = sp / (double)n;
    out->base_rate = sy / (double)n;
    out->calibration = sy > 0 ? out->mean_pred / out->base_rate : NAN;
    out->auc = es_auc(p, y, n);
}
