/*
 * pq.c — product quantization: the codec (also used by IVF-PQ on residuals)
 * and the "pq" index kind, which scans every code with asymmetric distance
 * (ADC) tables.
 *
 * A vector is cut into M sub-vectors; each is replaced by the id of its
 * nearest centroid among ksub = 2^nbits learned by k-means on that
 * sub-space, so a code is M bytes.  At query time one table per sub-space
 * holds the distance from the query's sub-vector to every centroid, and a
 * code's distance is the sum of M table entries (es__pq_scan).
 *
 * OPQ (Ge et al., "Optimized Product Quantization", 2013, non-parametric
 * version) learns an orthogonal rotation R so that the rotated data splits
 * better into sub-spaces: alternate between training PQ on X R^T and
 * solving the Procrustes problem min ||X Q - decode(encode(X R^T))|| with
 * R = Q^T.  Rotations preserve L2 and inner products, so queries are simply
 * rotated too.
 */
#include "index.h"

#include "core/simd.h"
#include "distance.h"

#include <cblas.h>

#define ENC_CHUNK 16384

int es__pq_init(es__pq *pq, int d, int M, int nbits, es_err *err) {
    memset(pq, 0, sizeof *pq);
    if (M <= 0) {
        /* Default: sub-vectors of about 8 components (16 bytes for SIFT). */
        M = d >= 8 ? d / 8 : 1;
        while (M > 1 && d % M) M--;
    }
    if (M > d || d % M)
        return es__err(err, ES_EINVAL, "pq: %d sub-quantizers do not divide the dimension %d (pick a divisor)", M, d);
    if (nbits <= 0) nbits = 8;
    if (nbits > 8) return es__err(err, ES_EINVAL, "pq: pq_bits must be 1..8, got %d", nbits);
    pq->d = d;
    pq->M = M;
    pq->nbits = nbits;
    pq->ksub = 1 << nbits;
    pq->dsub = d / M;
    return ES_OK;
}

void es__pq_free(es__pq *pq) {
    es__free_aligned(pq->cb);
    es__free_aligned(pq->R);
    es__free_aligned(pq->cbt);
    es__free_aligned(pq->cnorm);
    pq->cb = pq->R = pq->cbt = pq->cnorm = NULL;
}

size_t es__pq_bytes(const es__pq *pq) {
    size_t cbn = (size_t)pq->M * pq->ksub * pq->dsub, b = 0;
    if (pq->cb) b += cbn * sizeof(float);
    if (pq->cbt) b += cbn * sizeof(float) + (size_t)pq->M * pq->ksub * sizeof(float);
    if (pq->R) b += (size_t)pq->d * pq->d * sizeof(float);
    return b;
}

/* Build the search caches from the codebooks (after training or loading). */
static int pq_prepare(es__pq *pq, es_err *err) {
    size_t M = (size_t)pq->M, ks = (size_t)pq->ksub, ds = (size_t)pq->dsub;
    float *cbt = es__alloc_aligned(M * ks * ds * sizeof *cbt), *cn = es__alloc_aligned(M * ks * sizeof *cn);
    if (!cbt || !cn) {
        es__free_aligned(cbt);
        es__free_aligned(cn);
        return es__err(err, ES_ENOMEM, "pq: out of memory");
    }
    for (size_t m = 0; m < M; m++)
        for (size_t j = 0; j < ks; j++) {
            const float *c = pq->cb + (m * ks + j) * ds;
            float s = 0;
            for (size_t u = 0; u < ds; u++) {
                cbt[(m * ds + u) * ks + j] = c[u];
                s += c[u] * c[u];
            }
            cn[m * ks + j] = s;
        }
    es__free_aligned(pq->cbt);
    es__free_aligned(pq->cnorm);
    pq->cbt = cbt;
    pq->cnorm = cn;
    return ES_OK;
}

void es__pq_rotate1(const es__pq *pq, const float *x, float *out) {
    if (!pq->R) {
        memcpy(out, x, (size_t)pq->d * sizeof *out);
        return;
    }
    /* Plain dot products: BLAS calls per query would wake its thread pool. */
    for (int r = 0; r < pq->d; r++) out[r] = es__dot(pq->R + (size_t)r * pq->d, x, (size_t)pq->d);
}

/* Train the sub-space codebooks on already rotated vectors y[n][d]. */
static int pq_train_codebooks(es__pq *pq, float *cb, const float *y, size_t n, int iters, uint64_t seed,
                              es_err *err) {
    size_t dsub = (size_t)pq->dsub;
    float *sub = es__alloc_aligned(n * dsub * sizeof *sub);
    if (!sub) return es__err(err, ES_ENOMEM, "pq: out of memory for %zu training vectors", n);
    int rc = ES_OK;
    for (int m = 0; m < pq->M && !rc; m++) {
        for (size_t i = 0; i < n; i++) memcpy(sub + i * dsub, y + i * (size_t)pq->d + m * dsub, dsub * sizeof(float));
        rc = es__kmeans(sub, n, pq->dsub, pq->ksub, iters, seed + (uint64_t)m * 7919u,
                        cb + (size_t)m * pq->ksub * dsub, err);
    }
    es__free_aligned(sub);
    return rc;
}

/* Encode rotated vectors y[n][d] with codebooks cb. */
static int pq_encode_rotated(const es__pq *pq, const float *cb, const float *y, size_t n, uint8_t *codes,
                             es_err *err) {
    size_t dsub = (size_t)pq->dsub, chunk = ES_MIN(n, (size_t)ENC_CHUNK);
    float *sub = es__alloc_aligned((chunk ? chunk : 1) * dsub * sizeof *sub);
    int32_t *as = es__malloc((chunk ? chunk : 1) * sizeof *as);
    int rc = ES_OK;
    if (!sub || !as) rc = es__err(err, ES_ENOMEM, "pq: out of memory encoding");
    for (size_t i0 = 0; i0 < n && !rc; i0 += chunk) {
        size_t c = ES_MIN(chunk, n - i0);
        for (int m = 0; m < pq->M && !rc; m++) {
            for (size_t i = 0; i < c; i++)
                memcpy(sub + i * dsub, y + (i0 + i) * (size_t)pq->d + m * dsub, dsub * sizeof(float));
            rc = es__kmeans_assign(sub, c, pq->dsub, cb + (size_t)m * pq->ksub * dsub, pq->ksub, as, NULL, err);
            for (size_t i = 0; i < c && !rc; i++) codes[(i0 + i) * (size_t)pq->M + m] = (uint8_t)as[i];
        }
    }
    es__free_aligned(sub);
    es__free(as);
    return rc;
}

static void pq_decode_with(const es__pq *pq, const float *cb, const uint8_t *code, float *x) {
    size_t dsub = (size_t)pq->dsub;
    for (int m = 0; m < pq->M; m++)
        memcpy(x + m * dsub, cb + ((size_t)m * pq->ksub + code[m]) * dsub, dsub * sizeof(float));
}

void es__pq_decode(const es__pq *pq, const uint8_t *code, float *x) { pq_decode_with(pq, pq->cb, code, x); }

int es__pq_train(es__pq *pq, const float *x, size_t n, int iters, int opq_iters, uint64_t seed, es_err *err) {
    if (n < (size_t)pq->ksub)
        return es__err(err, ES_EINVAL,
                       "pq: %zu training vectors are fewer than the %d centroids per sub-quantizer (lower pq_bits)",
                       n, pq->ksub);
    size_t d = (size_t)pq->d, cbn = (size_t)pq->M * pq->ksub * pq->dsub;
    float *cb = es__alloc_aligned(cbn * sizeof *cb);
    float *R = NULL, *y = NULL, *yh = NULL, *Mx = NULL, *Q = NULL;
    uint8_t *codes = NULL;
    int rc = ES_OK;
    if (!cb) return es__err(err, ES_ENOMEM, "pq: out of memory for codebooks");
    if (opq_iters > 0) {
        R = es__alloc_aligned(d * d * sizeof *R);
        y = es__alloc_aligned(n * d * sizeof *y);
        yh = es__alloc_aligned(n * d * sizeof *yh);
        Mx = es__alloc_aligned(d * d * sizeof *Mx);
        Q = es__alloc_aligned(d * d * sizeof *Q);
        codes = es__malloc(n * (size_t)pq->M);
        if (!R || !y || !yh || !Mx || !Q || !codes) {
            rc = es__err(err, ES_ENOMEM, "opq: out of memory for %zu training vectors", n);
            goto out;
        }
        /* Start from the identity (plain PQ), so each round can only lower
         * the quantization error that plain PQ starts with; a random start
         * throws away structure aligned with the axes (SIFT's cells). */
        memset(R, 0, d * d * sizeof *R);
        for (size_t a = 0; a < d; a++) R[a * d + a] = 1.0f;
        for (int it = 0; it < opq_iters; it++) {
            es__project(x, n, pq->d, R, pq->d, y);
            /* Few k-means steps per round: the rotation moves anyway. */
            if ((rc = pq_train_codebooks(pq, cb, y, n, it == 0 ? 8 : 4, seed + (uint64_t)it, err))) goto out;
            if ((rc = pq_encode_rotated(pq, cb, y, n, codes, err))) goto out;
            for (size_t i = 0; i < n; i++) pq_decode_with(pq, cb, codes + i * (size_t)pq->M, yh + i * d);
            /* Mx = X^T Yhat; Q = argmin ||X Q - Yhat||; R = Q^T. */
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, pq->d, pq->d, (int)ES_MIN(n, (size_t)INT32_MAX), 1.0f,
                        x, pq->d, yh, pq->d, 0.0f, Mx, pq->d);
            if ((rc = es__procrustes(Mx, pq->d, Q, err))) goto out;
            for (size_t a = 0; a < d; a++)
                for (size_t b = 0; b < d; b++) R[a * d + b] = Q[b * d + a];
        }
        es__project(x, n, pq->d, R, pq->d, y);
        rc = pq_train_codebooks(pq, cb, y, n, iters, seed, err);
    } else {
        rc = pq_train_codebooks(pq, cb, x, n, iters, seed, err);
    }
out:
    es__free_aligned(y);
    es__free_aligned(yh);
    es__free_aligned(Mx);
    es__free_aligned(Q);
    es__free(codes);
    if (rc) {
        es__free_aligned(cb);
        es__free_aligned(R);
        return rc;
    }
    es__pq_free(pq);
    pq->cb = cb;
    pq->R = R;
    return pq_prepare(pq, err);
}

int es__pq_encode_n(const es__pq *pq, const float *x, size_t n, uint8_t *codes, es_err *err) {
    if (!pq->R) return pq_encode_rotated(pq, pq->cb, x, n, codes, err);
    size_t d = (size_t)pq->d, chunk = ES_MIN(n, (size_t)ENC_CHUNK);
    float *y = es__alloc_aligned((chunk ? chunk : 1) * d * sizeof *y);
    if (!y) return es__err(err, ES_ENOMEM, "pq: out of memory encoding");
    int rc = ES_OK;
    for (size_t i0 = 0; i0 < n && !rc; i0 += chunk) {
        size_t c = ES_MIN(chunk, n - i0);
        es__project(x + i0 * d, c, pq->d, pq->R, pq->d, y);
        rc = pq_encode_rotated(pq, pq->cb, y, c, codes + i0 * (size_t)pq->M, err);
    }
    es__free_aligned(y);
    return rc;
}

void es__pq_lut(const es__pq *pq, const float *qr, int ip, float *lut) {
    size_t ds = (size_t)pq->dsub, ks = (size_t)pq->ksub;
    for (int m = 0; m < pq->M; m++) {
        const float *qm = qr + (size_t)m * ds;
        const float *ct = pq->cbt + (size_t)m * ds * ks;
        float *restrict t = lut + (size_t)m * ks;
        /* L2: ||q||^2 + ||c||^2 - 2<q, c>;  IP: -<q, c>. */
        float qq = 0.0f;
        for (size_t u = 0; u < ds; u++) qq += qm[u] * qm[u];
        if (ip) {
            for (size_t j = 0; j < ks; j++) t[j] = 0.0f;
        } else {
            const float *cn = pq->cnorm + (size_t)m * ks;
            for (size_t j = 0; j < ks; j++) t[j] = cn[j] + qq;
        }
        float f = ip ? -1.0f : -2.0f;
        for (size_t u = 0; u < ds; u++) es__axpy(t, f * qm[u], ct + u * ks, ks); /* SIMD over centroids */
        if (!ip)
            for (size_t j = 0; j < ks; j++) t[j] = t[j] > 0.0f ? t[j] : 0.0f;
    }
}

int es__pq_save(const es__pq *pq, es_fwriter *w, const char *pfx, es_err *err) {
    int rc = es__ix_put(w, pfx, "pq.codebooks", ES_DT_F32, pq->cb, 2, (uint64_t)pq->M * pq->ksub,
                        (uint64_t)pq->dsub, err);
    if (!rc && pq->R) rc = es__ix_put(w, pfx, "pq.rotation", ES_DT_F32, pq->R, 2, (uint64_t)pq->d, (uint64_t)pq->d, err);
    return rc;
}

/* pq must have been set up by es__pq_init with the saved M and nbits. */
int es__pq_load(es__pq *pq, int d, const es_file *f, const char *pfx, es_err *err) {
    uint64_t shape[2] = {(uint64_t)pq->M * pq->ksub, (uint64_t)pq->dsub};
    const void *p;
    int rc = es__ix_tensor(f, pfx, "pq.codebooks", ES_DT_F32, 2, shape, &p, err);
    if (rc) return rc;
    size_t cbn = (size_t)pq->M * pq->ksub * pq->dsub;
    if ((rc = es__check_finite(p, 1, (int)cbn, "pq codebooks", err))) return rc;
    pq->cb = es__alloc_aligned(cbn * sizeof(float));
    if (!pq->cb) return es__err(err, ES_ENOMEM, "pq: out of memory");
    memcpy(pq->cb, p, cbn * sizeof(float));
    if ((rc = pq_prepare(pq, err))) return rc;
    char name[ES_TENSOR_NAME_MAX];
    snprintf(name, sizeof name, "%spq.rotation", pfx);
    if (es__file_tensor(f, name)) {
        uint64_t s2[2] = {(uint64_t)d, (uint64_t)d};
        if ((rc = es__ix_tensor(f, pfx, "pq.rotation", ES_DT_F32, 2, s2, &p, err))) return rc;
        if ((rc = es__check_finite(p, (size_t)d, d, "opq rotation", err))) return rc;
        pq->R = es__alloc_aligned((size_t)d * d * sizeof(float));
        if (!pq->R) return es__err(err, ES_ENOMEM, "pq: out of memory");
        memcpy(pq->R, p, (size_t)d * d * sizeof(float));
    }
    return ES_OK;
}

/* ---- the pq kind -------------------------------------------------------------------- */
#define SCAN_CHUNK 256

typedef struct {
    es__ix h;
    es__pq pq;
    es__arr codes; /* uint8 [n][M] */
} pq_ix;

static int pq_train(es__ix *ix, const float *x, size_t n, es_err *err) {
    pq_ix *s = (pq_ix *)ix;
    const es_index_params *p = ix->p;
    int rc = es__pq_train(&s->pq, x, n, p->kmeans_iters, p->opq_iters, p->seed, err);
    if (!rc) ix->trained = true;
    return rc;
}

static int pq_add(es__ix *ix, const float *x, size_t n, es_err *err) {
    pq_ix *s = (pq_ix *)ix;
    size_t M = (size_t)s->pq.M, tot = ix->n + n, b;
    if (!es__mul_size(tot, M, &b)) return es__err(err, ES_ERANGE, "pq: too many vectors");
    if (es__arr_reserve(&s->codes, b)) return es__err(err, ES_ENOMEM, "pq: out of memory adding %zu vectors", n);
    int rc = es__pq_encode_n(&s->pq, x, n, (uint8_t *)s->codes.p + ix->n * M, err);
    if (rc) return rc;
    s->codes.bytes = b;
    ix->n = tot;
    return ES_OK;
}

static size_t pq_scratch(const es__ix *ix, int k) {
    const pq_ix *s = (const pq_ix *)ix;
    return es__carved((size_t)ix->dim * sizeof(float)) + es__carved((size_t)s->pq.M * s->pq.ksub * sizeof(float)) +
           es__carved(SCAN_CHUNK * sizeof(float));
}

static void pq_search1(const es__ix *ix, const float *q, int k, const es__filter *f, es__scratch *sc, float *dist,
                       int64_t *ids) {
    const pq_ix *s = (const pq_ix *)ix;
    unsigned char *cur = sc->mem;
    float *qr = es__carve(&cur, (size_t)ix->dim * sizeof(float));
    float *lut = es__carve(&cur, (size_t)s->pq.M * s->pq.ksub * sizeof(float));
    float *tmp = es__carve(&cur, SCAN_CHUNK * sizeof(float));
    es__pq_rotate1(&s->pq, q, qr);
    es__pq_lut(&s->pq, qr, ix->ip, lut);
    const uint8_t *codes = s->codes.p;
    size_t M = (size_t)s->pq.M;
    int size = 0;
    for (size_t i0 = 0; i0 < ix->n; i0 += SCAN_CHUNK) {
        size_t c = ES_MIN((size_t)SCAN_CHUNK, ix->n - i0);
        es__pq_scan(lut, codes + i0 * M, c, s->pq.M, s->pq.ksub, 0.0f, tmp);
        size_t i = 0;
        if (size == k) {
            /* Heap full: skip runs of 8 that cannot enter (branch-free test). */
            for (; i + 8 <= c; i += 8) {
                float thr = dist[0];
                int any = 0;
                for (int u = 0; u < 8; u++) any |= tmp[i + (size_t)u] <= thr;
                if (!any) continue;
                for (int u = 0; u < 8; u++) {
                    size_t id = i0 + i + (size_t)u;
                    if (tmp[i + (size_t)u] > dist[0] || (f && !es__filter_ok(f, id))) continue;
                    es__heap_push(dist, ids, &size, k, tmp[i + (size_t)u], (int64_t)id);
                }
            }
        }
        for (; i < c; i++) {
            if (size == k && tmp[i] > dist[0]) continue;
            if (f && !es__filter_ok(f, i0 + i)) continue;
            es__heap_push(dist, ids, &size, k, tmp[i], (int64_t)(i0 + i));
        }
    }
    es__heap_finish(dist, ids, size, k);
}

static size_t pq_bytes(const es__ix *ix) {
    const pq_ix *s = (const pq_ix *)ix;
    return s->codes.bytes + es__pq_bytes(&s->pq);
}

static int pq_save(const es__ix *ix, es_fwriter *w, const char *pfx, es_err *err) {
    const pq_ix *s = (const pq_ix *)ix;
    int rc = es__pq_save(&s->pq, w, pfx, err);
    return rc ? rc : es__ix_put(w, pfx, "codes", ES_DT_U8, s->codes.p, 2, ix->n, (uint64_t)s->pq.M, err);
}

static int pq_load(es__ix *ix, const es_file *f, const char *pfx, es_err *err) {
    pq_ix *s = (pq_ix *)ix;
    int rc = es__pq_load(&s->pq, ix->dim, f, pfx, err);
    if (rc) return rc;
    uint64_t shape[2] = {ix->n, (uint64_t)s->pq.M};
    const void *p;
    if ((rc = es__ix_tensor(f, pfx, "codes", ES_DT_U8, 2, shape, &p, err))) return rc;
    size_t nb = ix->n * (size_t)s->pq.M;
    if (s->pq.ksub < 256)
        for (size_t i = 0; i < nb; i++)
            if (((const uint8_t *)p)[i] >= s->pq.ksub)
                return es__err(err, ES_EFORMAT, "pq: code byte %zu is %u, beyond the %d centroids", i,
                               ((const uint8_t *)p)[i], s->pq.ksub);
    es__arr_map(&s->codes, p, nb);
    ix->trained = true;
    return ES_OK;
}

static void pq_destroy(es__ix *ix) {
    pq_ix *s = (pq_ix *)ix;
    es__pq_free(&s->pq);
    es__arr_free(&s->codes);
    es__free(s);
}

static const es__ix_vt pq_vt = {
    .name = "pq",
    .train = pq_train,
    .add = pq_add,
    .scratch_need = pq_scratch,
    .search1 = pq_search1,
    .bytes = pq_bytes,
    .save = pq_save,
    .load = pq_load,
    .destroy = pq_destroy,
};

int es__pq_new(es__ix **out, int dim, int ip, es_index_params *p, es_err *err) {
    pq_ix *s = es__calloc(1, sizeof *s);
    if (!s) return es__err(err, ES_ENOMEM, "pq: out of memory");
    int rc = es__pq_init(&s->pq, dim, p->pq_m, p->pq_bits, err);
    if (rc) {
        es__free(s);
        return rc;
    }
    s->h = (es__ix){.vt = &pq_vt, .dim = dim, .ip = ip, .p = p};
    p->pq_m = s->pq.M;
    p->pq_bits = s->pq.nbits;
    *out = &s->h;
    return ES_OK;
}
