/*
 * pca.c — the dense linear algebra of the index layer: PCA (for prefix
 * search and for ITQ), orthogonal Procrustes (the rotation step of ITQ and
 * OPQ), random rotations and row projections.  Products go through
 * OpenBLAS, eigen and singular value decompositions through LAPACKE.
 */
#include "index.h"

#include <cblas.h>
#include <lapacke.h>

/* BLAS takes int sizes: products over many rows are cut into chunks. */
#define ROW_CHUNK 65536

int es__pca(const float *x, size_t n, int d, int center, float *mean, float *P, float *var, es_err *err) {
    if (n == 0 || d < 1) return es__err(err, ES_EINVAL, "PCA needs at least one vector");
    size_t dd = (size_t)d * (size_t)d;
    double *mu = es__calloc((size_t)d, sizeof *mu);
    float *C = es__alloc_aligned(dd * sizeof *C);
    float *w = es__malloc((size_t)d * sizeof *w);
    size_t chunk = ES_MIN(n, (size_t)ROW_CHUNK);
    float *buf = es__alloc_aligned(chunk * (size_t)d * sizeof *buf);
    int rc = ES_OK;
    if (!mu || !C || !w || !buf) {
        rc = es__err(err, ES_ENOMEM, "PCA: out of memory (dimension %d)", d);
        goto out;
    }
    if (center) {
        for (size_t i = 0; i < n; i++)
            for (int j = 0; j < d; j++) mu[j] += x[i * (size_t)d + (size_t)j];
        for (int j = 0; j < d; j++) mu[j] /= (double)n;
    }
    /* C = sum_i (x_i - mu)(x_i - mu)^T, upper triangle, chunk by chunk. */
    for (size_t i0 = 0; i0 < n; i0 += chunk) {
        size_t m = ES_MIN(chunk, n - i0);
        for (size_t i = 0; i < m; i++)
            for (int j = 0; j < d; j++)
                buf[i * (size_t)d + (size_t)j] = (float)(x[(i0 + i) * (size_t)d + (size_t)j] - mu[j]);
        cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, d, (int)m, 1.0f / (float)n, buf, d, i0 ? 1.0f : 0.0f, C,
                    d);
    }
    for (int i = 0; i < d; i++)
        for (int j = 0; j < i; j++) C[(size_t)i * d + j] = C[(size_t)j * d + i];
    lapack_int info = LAPACKE_ssyevd(LAPACK_ROW_MAJOR, 'V', 'U', d, C, d, w);
    if (info != 0) {
        rc = es__err(err, ES_EINVAL, "PCA: eigen decomposition failed (LAPACK info %d)", (int)info);
        goto out;
    }
    /* Eigenvalues come ascending with eigenvectors in columns: emit rows in
     * decreasing order, each with a fixed sign (largest component positive)
     * so that results are reproducible across LAPACK builds. */
    for (int j = 0; j < d; j++) {
        int col = d - 1 - j;
        float big = 0.0f;
        for (int i = 0; i < d; i++) {
            float v = C[(size_t)i * d + col];
            if (fabsf(v) > fabsf(big)) big = v;
        }
        float sg = big < 0 ? -1.0f : 1.0f;
        for (int i = 0; i < d; i++) P[(size_t)j * d + i] = sg * C[(size_t)i * d + col];
        if (var) var[j] = w[col] > 0 ? w[col] : 0.0f;
    }
    if (mean)
        for (int j = 0; j < d; j++) mean[j] = (float)mu[j];
out:
    es__free(mu);
    es__free_aligned(C);
    es__free(w);
    es__free_aligned(buf);
    return rc;
}

int es__procrustes(const float *M, int d, float *R, es_err *err) {
    size_t dd = (size_t)d * (size_t)d;
    float *A = es__malloc(dd * sizeof *A), *U = es__malloc(dd * sizeof *U), *VT = es__malloc(dd * sizeof *VT);
    float *s = es__malloc((size_t)d * sizeof *s), *sup = es__malloc((size_t)d * sizeof *sup);
    int rc = ES_OK;
    if (!A || !U || !VT || !s || !sup) {
        rc = es__err(err, ES_ENOMEM, "rotation: out of memory (dimension %d)", d);
        goto out;
    }
    memcpy(A, M, dd * sizeof *A);
    lapack_int info = LAPACKE_sgesvd(LAPACK_ROW_MAJOR, 'A', 'A', d, d, A, d, s, U, d, VT, d, sup);
    if (info != 0) {
        rc = es__err(err, ES_EINVAL, "rotation: SVD failed (LAPACK info %d)", (int)info);
        goto out;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, d, d, d, 1.0f, U, d, VT, d, 0.0f, R, d);
out:
    es__free(A);
    es__free(U);
    es__free(VT);
    es__free(s);
    es__free(sup);
    return rc;
}

int es__random_rotation(int d, uint64_t seed, float *R, es_err *err) {
    size_t dd = (size_t)d * (size_t)d;
    float *G = es__malloc(dd * sizeof *G);
    if (!G) return es__err(err, ES_ENOMEM, "rotation: out of memory (dimension %d)", d);
    es_rng r;
    es__rng_seed(&r, seed);
    for (size_t i = 0; i < dd; i++) G[i] = es__rng_normal(&r);
    /* The orthogonal factor of a Gaussian matrix is a uniformly random rotation. */
    int rc = es__procrustes(G, d, R, err);
    es__free(G);
    return rc;
}

void es__project(const float *x, size_t n, int din, const float *A, int dout, float *y) {
    for (size_t i0 = 0; i0 < n; i0 += ROW_CHUNK) {
        size_t m = ES_MIN((size_t)ROW_CHUNK, n - i0);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, dout, din, 1.0f, x + i0 * (size_t)din, din, A,
                    din, 0.0f, y + i0 * (size_t)dout, dout);
    }
}
