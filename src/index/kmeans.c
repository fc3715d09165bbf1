/*
 * kmeans.c — Lloyd's k-means with squared L2, for IVF coarse centroids and
 * PQ codebooks, plus the row sampling used by every training step.
 *
 * Assignment uses the blocked exact search (flat.c), so one iteration costs
 * one sgemm over the data; the update accumulates in double so large
 * clusters do not lose precision.  Empty clusters are repaired the way
 * Faiss does it: split the largest cluster in two by nudging copies of its
 * centroid apart, which keeps k useful centroids without re-seeding.
 */
#include "index.h"

static int cmp_size(const void *a, const void *b) {
    size_t x = *(const size_t *)a, y = *(const size_t *)b;
    return x < y ? -1 : x > y;
}

int es__sample_rows(size_t n, size_t max, uint64_t seed, size_t **out, size_t *n_out) {
    size_t m = ES_MIN(n, max);
    size_t *idx = es__malloc((n ? n : 1) * sizeof *idx);
    if (!idx) return ES_ENOMEM;
    for (size_t i = 0; i < n; i++) idx[i] = i;
    if (m < n) {
        es_rng r;
        es__rng_seed(&r, seed);
        for (size_t i = 0; i < m; i++) {
            size_t j = i + (size_t)es__range(es__rng_u64(&r), n - i);
            size_t t = idx[i];
            idx[i] = idx[j];
            idx[j] = t;
        }
        /* Sorted ids read the data in order (friendlier to caches and mmap). */
        qsort(idx, m, sizeof *idx, cmp_size);
    }
    *out = idx;
    *n_out = m;
    return ES_OK;
}

int es__kmeans_assign(const float *x, size_t n, int d, const float *c, int k, int32_t *assign, float *dist,
                      es_err *err) {
    float *cn = es__malloc((size_t)k * sizeof *cn);
    float *bd = es__malloc((n ? n : 1) * sizeof *bd);
    int64_t *bi = es__malloc((n ? n : 1) * sizeof *bi);
    int rc = ES_OK;
    if (!cn || !bd || !bi) {
        rc = es__err(err, ES_ENOMEM, "k-means: out of memory assigning %zu vectors", n);
        goto out;
    }
    es__row_norms(c, (size_t)k, d, cn);
    rc = es__knn_exact(x, n, c, cn, (size_t)k, d, 0, 1, NULL, bd, bi, 0, NULL, err);
    if (rc) goto out;
    for (size_t i = 0; i < n; i++) {
        assign[i] = (int32_t)(bi[i] < 0 ? 0 : bi[i]);
        if (dist) dist[i] = bd[i];
    }
out:
    es__free(cn);
    es__free(bd);
    es__free(bi);
    return rc;
}

int es__kmeans(const float *x, size_t n, int d, int k, int iters, uint64_t seed, float *c, es_err *err) {
    if (k < 1 || n < (size_t)k)
        return es__err(err, ES_EINVAL, "k-means: %zu training vectors are fewer than the %d centroids", n, k);
    size_t *pick = NULL, npick = 0;
    if (es__sample_rows(n, (size_t)k, seed, &pick, &npick)) return es__err(err, ES_ENOMEM, "k-means: out of memory");
    for (int j = 0; j < k; j++) memcpy(c + (size_t)j * d, x + pick[j] * (size_t)d, (size_t)d * sizeof(float));
    es__free(pick);

    int32_t *assign = es__malloc(n * sizeof *assign);
    double *sum = es__malloc((size_t)k * (size_t)d * sizeof *sum);
    size_t *cnt = es__malloc((size_t)k * sizeof *cnt);
    int rc = ES_OK;
    if (!assign || !sum || !cnt) {
        rc = es__err(err, ES_ENOMEM, "k-means: out of memory (%d centroids of dimension %d)", k, d);
        goto out;
    }
    es_rng r;
    es__rng_seed(&r, seed ^ UINT64_C(0x6b6d65616e73));
    for (int it = 0; it < iters; it++) {
        if ((rc = es__kmeans_assign(x, n, d, c, k, assign, NULL, err))) goto out;
        memset(sum, 0, (size_t)k * (size_t)d * sizeof *sum);
        memset(cnt, 0, (size_t)k * sizeof *cnt);
        for (size_t i = 0; i < n; i++) {
            double *s = sum + (size_t)assign[i] * d;
            const float *xi = x + i * (size_t)d;
            for (int j = 0; j < d; j++) s[j] += xi[j];
            cnt[assign[i]]++;
        }
        for (int j = 0; j < k; j++)
            if (cnt[j])
                for (int t = 0; t < d; t++) c[(size_t)j * d + t] = (float)(sum[(size_t)j * d + t] / (double)cnt[j]);
        for (int j = 0; j < k; j++) {
            if (cnt[j]) continue;
            int big = 0;
            for (int t = 1; t < k; t++)
                if (cnt[t] > cnt[big]) big = t;
            /* Pick a cluster with probability proportional to its size minus
             * one (so singletons are never split), like Faiss. */
            size_t tot = 0;
            for (int t = 0; t < k; t++) tot += cnt[t] > 1 ? cnt[t] - 1 : 0;
            if (tot > 0) {
                size_t u = (size_t)es__range(es__rng_u64(&r), tot);
                for (int t = 0; t < k; t++) {
                    size_t w = cnt[t] > 1 ? cnt[t] - 1 : 0;
                    if (u < w) {
                        big = t;
                        break;
                    }
                    u -= w;
                }
            }
            const float eps = 1.0f / 1024.0f;
            float *cj = c + (size_t)j * d, *cb = c + (size_t)big * d;
            for (int t = 0; t < d; t++) {
                float sgn = (t % 2) ? 1.0f : -1.0f;
                cj[t] = cb[t] * (1.0f + sgn * eps);
                cb[t] = cb[t] * (1.0f - sgn * eps);
            }
            cnt[j] = cnt[big] / 2;
            cnt[big] -= cnt[j];
        }
    }
out:
    es__free(assign);
    es__free(sum);
    es__free(cnt);
    return rc;
}
