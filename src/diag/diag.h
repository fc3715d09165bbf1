/*
 * diag.h — internal pieces of the diagnostics (src/diag) shared between
 * diag.c (the measures over float arrays) and model.c (a model's tables
 * and collisions); the public API is the es_diag_* part of embstore.h.
 */
#ifndef ES_DIAG_H
#define ES_DIAG_H

#include "core/core.h"

/* The kNN scan of a sample: m rows drawn from x (sorted indices idx[m],
 * copies in x[m, d], -0 turned into +0), exact duplicates found by hashing
 * (has_equal: equal to another sampled row; dup_later: equal to an
 * earlier one, so it is left out as a query and as a neighbour), and for
 * each distinct row its k nearest distinct neighbours' squared distances
 * d2[i*k .. i*k+k) ascending (k = min(requested, n_distinct - 1)), and
 * maxcos[i], the largest cosine to another row (1 for a row with an equal
 * copy, -2 when the row or every other row is zero). */
typedef struct es__diag_nn {
    size_t m, n_distinct;
    int d, k;
    size_t *idx;
    float *x;
    double *norm;
    uint8_t *dup_later, *has_equal;
    float *d2;
    float *maxcos;
} es__diag_nn;

/* Validate x (n >= 1, d in range, finite values) and p (may be NULL). */
int es__diag_check(const float *x, size_t n, int d, const es_diag_params *p, es_err *err);
int es__diag_knn_scan(const float *x, size_t n, int d, const es_diag_params *p, int k, es__diag_nn *out, es_err *err);
void es__diag_knn_free(es__diag_nn *k);
/* The estimators from a scan: ES_OK, or ES_EINVAL / ES_ENOMEM with the
 * reason in note. */
int es__diag_id_from_knn(const es__diag_nn *kn, int k, es_diag_id *out, char *note, size_t note_cap);
void es__diag_dups(const es__diag_nn *kn, const es_diag_params *p, es_diag_rows *out);
/* RankMe's effective rank of singular values sv[m] (0 when all are 0). */
double es__diag_rankme(const double *sv, int m);

#endif
