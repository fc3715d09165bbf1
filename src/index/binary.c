/*
 * binary.c — the "binary" index kind: one bit per (projected) component,
 * searched by Hamming distance with popcount.
 *
 * Codes are the signs of the centred vector, optionally after a learned
 * projection: PCA to `binary_bits` directions and, with itq_iters > 0, the
 * Iterative Quantization rotation of Gong & Lazebnik ("Iterative
 * Quantization: A Procrustean Approach to Learning Binary Codes", 2011),
 * which alternates B = sign(V R) and R = argmin ||B - V R|| (orthogonal
 * Procrustes) so that the bits lose as little of the PCA embedding as
 * possible.  Hamming distance approximates the angle between centred
 * vectors, so it serves best as a candidate generator: the handle's
 * `rerank` option re-scores rerank * k candidates with the full vectors.
 * Reported distances without re-ranking are Hamming distances.
 */
#include "index.h"

#include "core/simd.h"
#include "distance.h"

#include <cblas.h>

#define ENC_CHUNK 16384

typedef struct {
    es__ix h;
    int nbits, nw;
    float *mean; /* [dim] */
    float *A;    /* [nbits][dim] projection, or NULL: bits are the first nbits centred components */
    es__arr codes; /* uint64 [n][nw] */
} bin_ix;

/* z[n][nbits] from x[n][dim]: centre, then project.  buf holds n*dim floats. */
static void bin_project(const bin_ix *b, const float *x, size_t n, float *buf, float *z) {
    size_t d = (size_t)b->h.dim;
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < d; j++) buf[i * d + j] = x[i * d + j] - b->mean[j];
    if (b->A) {
        es__project(buf, n, b->h.dim, b->A, b->nbits, z);
    } else {
        for (size_t i = 0; i < n; i++) memcpy(z + i * (size_t)b->nbits, buf + i * d, (size_t)b->nbits * sizeof(float));
    }
}

static void bin_pack(const float *z, int nbits, int nw, uint64_t *code) {
    memset(code, 0, (size_t)nw * sizeof *code);
    for (int i = 0; i < nbits; i++)
        if (z[i] > 0) code[i >> 6] |= UINT64_C(1) << (i & 63);
}

static int bin_train(es__ix *ix, const float *x, size_t n, es_err *err) {
    bin_ix *b = (bin_ix *)ix;
    const es_index_params *p = ix->p;
    size_t d = (size_t)ix->dim, c = (size_t)b->nbits;
    int rc = ES_OK;
    float *mean = es__malloc(d * sizeof *mean), *P = NULL, *V = NULL, *Z = NULL, *Bm = NULL, *Mx = NULL, *Q = NULL,
          *A = NULL, *buf = NULL;
    if (!mean) return es__err(err, ES_ENOMEM, "binary: out of memory");
    bool project = p->itq_iters > 0 || b->nbits != ix->dim;
    if (!project) {
        for (size_t j = 0; j < d; j++) {
            double s = 0;
            for (size_t i = 0; i < n; i++) s += x[i * d + j];
            mean[j] = (float)(s / (double)n);
        }
        goto done;
    }
    P = es__alloc_aligned(d * d * sizeof *P);
    A = es__alloc_aligned(c * d * sizeof *A);
    if (!P || !A) {
        rc = es__err(err, ES_ENOMEM, "binary: out of memory");
        goto done;
    }
    if ((rc = es__pca(x, n, ix->dim, 1, mean, P, NULL, err))) goto done;
    memcpy(A, P, c * d * sizeof *A); /* the top nbits principal directions */
    if (p->itq_iters > 0) {
        V = es__alloc_aligned(n * c * sizeof *V);
        Z = es__alloc_aligned(n * c * sizeof *Z);
        buf = es__alloc_aligned(n * d * sizeof *buf);
        Mx = es__alloc_aligned(c * c * sizeof *Mx);
        Q = es__alloc_aligned(c * c * sizeof *Q);
        Bm = es__alloc_aligned(c * d * sizeof *Bm);
        if (!V || !Z || !buf || !Mx || !Q || !Bm) {
            rc = es__err(err, ES_ENOMEM, "itq: out of memory for %zu training vectors", n);
            goto done;
        }
        for (size_t i = 0; i < n; i++)
            for (size_t j = 0; j < d; j++) buf[i * d + j] = x[i * d + j] - mean[j];
        es__project(buf, n, ix->dim, A, b->nbits, V); /* V = (X - mu) Pc^T */
        if ((rc = es__random_rotation(b->nbits, p->seed ^ UINT64_C(0x697471), Q, err))) goto done;
        int ci = (int)c;
        for (int it = 0; it < p->itq_iters; it++) {
            /* B = sign(V Q); Q = argmin ||V Q - B|| = procrustes(V^T B). */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n, ci, ci, 1.0f, V, ci, Q, ci, 0.0f, Z, ci);
            for (size_t i = 0; i < n * c; i++) Z[i] = Z[i] > 0 ? 1.0f : -1.0f;
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, ci, ci, (int)n, 1.0f, V, ci, Z, ci, 0.0f, Mx, ci);
            if ((rc = es__procrustes(Mx, ci, Q, err))) goto done;
        }
        /* Codes are sign((x - mu) Pc^T Q) = sign(A (x - mu)) with A = Q^T Pc. */
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, ci, (int)d, ci, 1.0f, Q, ci, P, (int)d, 0.0f, Bm,
                    (int)d);
        memcpy(A, Bm, c * d * sizeof *A);
    }
done:
    es__free_aligned(P);
    es__free_aligned(V);
    es__free_aligned(Z);
    es__free_aligned(buf);
    es__free_aligned(Mx);
    es__free_aligned(Q);
    es__free_aligned(Bm);
    if (rc) {
        es__free(mean);
        es__free_aligned(A);
        return rc;
    }
    es__free(b->mean);
    es__free_aligned(b->A);
    b->mean = mean;
    b->A = project ? A : NULL;
    if (!project) es__free_aligned(A);
    ix->trained = true;
    return ES_OK;
}

static int bin_add(es__ix *ix, const float *x, size_t n, es_err *err) {
    bin_ix *b = (bin_ix *)ix;
    size_t d = (size_t)ix->dim, nw = (size_t)b->nw, tot = ix->n + n, bytes;
    if (!es__mul_size(tot, nw * sizeof(uint64_t), &bytes)) return es__err(err, ES_ERANGE, "binary: too many vectors");
    if (es__arr_reserve(&b->codes, bytes)) return es__err(err, ES_ENOMEM, "binary: out of memory adding %zu vectors", n);
    size_t chunk = ES_MIN(n, (size_t)ENC_CHUNK);
    float *buf = es__alloc_aligned((chunk ? chunk : 1) * d * sizeof *buf);
    float *z = es__alloc_aligned((chunk ? chunk : 1) * (size_t)b->nbits * sizeof *z);
    if (!buf || !z) {
        es__free_aligned(buf);
        es__free_aligned(z);
        return es__err(err, ES_ENOMEM, "binary: out of memory encoding");
    }
    uint64_t *codes = (uint64_t *)b->codes.p + ix->n * nw;
    for (size_t i0 = 0; i0 < n; i0 += chunk) {
        size_t m = ES_MIN(chunk, n - i0);
        bin_project(b, x + i0 * d, m, buf, z);
        for (size_t i = 0; i < m; i++) bin_pack(z + i * (size_t)b->nbits, b->nbits, b->nw, codes + (i0 + i) * nw);
    }
    es__free_aligned(buf);
    es__free_aligned(z);
    b->codes.bytes = bytes;
    ix->n = tot;
    return ES_OK;
}

static size_t bin_scratch(const es__ix *ix, int k) {
    const bin_ix *b = (const bin_ix *)ix;
    return es__carved((size_t)ix->dim * sizeof(float)) + es__carved((size_t)b->nbits * sizeof(float)) +
           es__carved((size_t)b->nw * sizeof(uint64_t));
}

static void bin_search1(const es__ix *ix, const float *q, int k, const es__filter *f, es__scratch *sc, float *dist,
                        int64_t *ids) {
    const bin_ix *b = (const bin_ix *)ix;
    unsigned char *cur = sc->mem;
    float *buf = es__carve(&cur, (size_t)ix->dim * sizeof(float));
    float *z = es__carve(&cur, (size_t)b->nbits * sizeof(float));
    uint64_t *qc = es__carve(&cur, (size_t)b->nw * sizeof(uint64_t));
    size_t d = (size_t)ix->dim, nw = (size_t)b->nw;
    for (size_t j = 0; j < d; j++) buf[j] = q[j] - b->mean[j];
    if (b->A)
        for (int r = 0; r < b->nbits; r++) z[r] = es__dot(b->A + (size_t)r * d, buf, d); /* no BLAS per query */
    else
        memcpy(z, buf, (size_t)b->nbits * sizeof(float));
    bin_pack(z, b->nbits, b->nw, qc);
    const uint64_t *codes = b->codes.p;
    int size = 0;
    for (size_t i = 0; i < ix->n; i++) {
        if (f && !es__filter_ok(f, i)) continue;
        float h = (float)es__hamming(qc, codes + i * nw, nw);
        if (size == k && h > dist[0]) continue;
        es__heap_push(dist, ids, &size, k, h, (int64_t)i);
    }
    es__heap_finish(dist, ids, size, k);
}

static size_t bin_bytes(const es__ix *ix) {
    const bin_ix *b = (const bin_ix *)ix;
    size_t s = b->codes.bytes + (size_t)ix->dim * sizeof(float);
    if (b->A) s += (size_t)b->nbits * ix->dim * sizeof(float);
    return s;
}

static int bin_save(const es__ix *ix, es_fwriter *w, const char *pfx, es_err *err) {
    const bin_ix *b = (const bin_ix *)ix;
    int rc = es__ix_put(w, pfx, "bin.mean", ES_DT_F32, b->mean, 1, (uint64_t)ix->dim, 0, err);
    if (!rc && b->A)
        rc = es__ix_put(w, pfx, "bin.projection", ES_DT_F32, b->A, 2, (uint64_t)b->nbits, (uint64_t)ix->dim, err);
    if (!rc) rc = es__ix_put(w, pfx, "codes", ES_DT_U64, b->codes.p, 2, ix->n, (uint64_t)b->nw, err);
    return rc;
}

static int bin_load(es__ix *ix, const es_file *f, const char *pfx, es_err *err) {
    bin_ix *b = (bin_ix *)ix;
    size_t d = (size_t)ix->dim;
    uint64_t s1[1] = {d};
    const void *p;
    int rc = es__ix_tensor(f, pfx, "bin.mean", ES_DT_F32, 1, s1, &p, err);
    if (rc || (rc = es__check_finite(p, 1, ix->dim, "binary mean", err))) return rc;
    b->mean = es__malloc(d * sizeof(float));
    if (!b->mean) return es__err(err, ES_ENOMEM, "binary: out of memory");
    memcpy(b->mean, p, d * sizeof(float));
    char name[ES_TENSOR_NAME_MAX];
    snprintf(name, sizeof name, "%sbin.projection", pfx);
    if (es__file_tensor(f, name)) {
        uint64_t s2[2] = {(uint64_t)b->nbits, d};
        if ((rc = es__ix_tensor(f, pfx, "bin.projection", ES_DT_F32, 2, s2, &p, err))) return rc;
        if ((rc = es__check_finite(p, (size_t)b->nbits, ix->dim, "binary projection", err))) return rc;
        b->A = es__alloc_aligned((size_t)b->nbits * d * sizeof(float));
        if (!b->A) return es__err(err, ES_ENOMEM, "binary: out of memory");
        memcpy(b->A, p, (size_t)b->nbits * d * sizeof(float));
    } else if (b->nbits != ix->dim) {
        return es__err(err, ES_EFORMAT, "binary: %d bits for dimension %d need a projection, none stored", b->nbits,
                       ix->dim);
    }
    uint64_t s2[2] = {ix->n, (uint64_t)b->nw};
    if ((rc = es__ix_tensor(f, pfx, "codes", ES_DT_U64, 2, s2, &p, err))) return rc;
    es__arr_map(&b->codes, p, ix->n * (size_t)b->nw * sizeof(uint64_t));
    ix->trained = true;
    return ES_OK;
}

static void bin_destroy(es__ix *ix) {
    bin_ix *b = (bin_ix *)ix;
    es__free(b->mean);
    es__free_aligned(b->A);
    es__arr_free(&b->codes);
    es__free(b);
}

static const es__ix_vt bin_vt = {
    .name = "binary",
    .train = bin_train,
    .add = bin_add,
    .scratch_need = bin_scratch,
    .search1 = bin_search1,
    .bytes = bin_bytes,
    .save = bin_save,
    .load = bin_load,
    .destroy = bin_destroy,
};

int es__binary_new(es__ix **out, int dim, int ip, es_index_params *p, es_err *err) {
    int nbits = p->binary_bits > 0 ? p->binary_bits : dim;
    if (nbits > dim)
        return es__err(err, ES_EINVAL, "binary: %d bits exceed the dimension %d (bits come from projections)", nbits,
                       dim);
    if (p->itq_iters < 0) return es__err(err, ES_EINVAL, "binary: itq_iters must be >= 0");
    bin_ix *b = es__calloc(1, sizeof *b);
    if (!b) return es__err(err, ES_ENOMEM, "binary: out of memory");
    b->h = (es__ix){.vt = &bin_vt, .dim = dim, .ip = ip, .p = p};
    b->nbits = nbits;
    b->nw = (nbits + 63) / 64;
    p->binary_bits = nbits;
    *out = &b->h;
    return ES_OK;
}
