/*
 * ivf.c — the "ivf" index kind: an inverted file.  k-means cuts the space
 * into nlist cells; each vector is stored in the list of its nearest
 * centroid, as float32 (flat), as an sq8 code or as a pq code of its
 * residual (vector minus centroid, which is smaller and codes better).  A
 * query scans only the nprobe lists whose centroids are closest.
 *
 * Lists are kept in one CSR layout (off[nlist+1], ids[n], codes[n][size]),
 * so a loaded index is used straight from the file mapping; adding
 * vectors rebuilds the layout once per call.
 *
 * PQ residual distances under L2 use the decomposition of Jégou et al.:
 *   ||q - c - r||^2 = ||q - c||^2 + (||r||^2 + 2<c, r>) - 2<q, r>
 * where the middle term depends only on (list, code) and is tabulated per
 * list at train/load time, and the last needs one table per query, so a
 * probed list costs one table addition instead of a new distance table.
 *
 * With a filter, probing continues past nprobe lists (in order of centroid
 * distance) until as many matching vectors were scored as an unfiltered
 * search scores vectors, so a selective filter still gets k results and
 * about the recall of an unfiltered search.
 */
#include "index.h"

#include "core/simd.h"
#include "distance.h"

#define SCAN_CHUNK 256
/* Above this many floats the per-list PQ tables are computed per query. */
#define PQ_TERM_MAX ((size_t)32 << 20)

typedef struct {
    es__ix h;
    int nlist;
    es_index_kind codes_kind;
    size_t code_size;     /* bytes per vector */
    float *cent;          /* [nlist][dim] */
    float *cnorm;         /* [nlist] */
    float *rcent;         /* pq: rotated centroids [nlist][dim] */
    float *pqterm;        /* pq + L2: [nlist][M][ksub], or NULL (computed per list) */
    es__sq8 sq;
    es__pq pq;
    es__arr off;          /* int64 [nlist + 1] */
    es__arr ids;          /* int32 [n] */
    es__arr codes;        /* [n][code_size] */
} ivf_ix;

static int prepare_pq_terms(ivf_ix *v, es_err *err) {
    size_t d = (size_t)v->h.dim, M = (size_t)v->pq.M, ks = (size_t)v->pq.ksub, ds = (size_t)v->pq.dsub;
    es__free_aligned(v->rcent);
    es__free_aligned(v->pqterm);
    v->rcent = v->pqterm = NULL;
    v->rcent = es__alloc_aligned((size_t)v->nlist * d * sizeof(float));
    if (!v->rcent) return es__err(err, ES_ENOMEM, "ivf: out of memory");
    for (int l = 0; l < v->nlist; l++) es__pq_rotate1(&v->pq, v->cent + (size_t)l * d, v->rcent + (size_t)l * d);
    if (v->h.ip || (size_t)v->nlist * M * ks > PQ_TERM_MAX) return ES_OK;
    v->pqterm = es__alloc_aligned((size_t)v->nlist * M * ks * sizeof(float));
    if (!v->pqterm) return es__err(err, ES_ENOMEM, "ivf: out of memory for PQ tables");
    for (int l = 0; l < v->nlist; l++)
        for (size_t m = 0; m < M; m++) {
            const float *c = v->rcent + (size_t)l * d + m * ds;
            for (size_t j = 0; j < ks; j++) {
                const float *w = v->pq.cb + (m * ks + j) * ds;
                float s = 0;
                for (size_t u = 0; u < ds; u++) s += w[u] * w[u] + 2.0f * c[u] * w[u];
                v->pqterm[((size_t)l * M + m) * ks + j] = s;
            }
        }
    return ES_OK;
}

static int ivf_train(es__ix *ix, const float *x, size_t n, es_err *err) {
    ivf_ix *v = (ivf_ix *)ix;
    es_index_params *p = ix->p;
    size_t d = (size_t)ix->dim;
    int nlist = p->nlist;
    if (nlist <= 0) {
        double t = 4.0 * sqrt((double)n);
        nlist = (int)ES_MAX(1.0, ES_MIN(t, (double)n));
    }
    if ((size_t)nlist > n)
        return es__err(err, ES_EINVAL, "ivf: %d lists need at least as many training vectors (got %zu)", nlist, n);
    float *cent = es__alloc_aligned((size_t)nlist * d * sizeof *cent);
    float *cnorm = es__malloc((size_t)nlist * sizeof *cnorm);
    float *res = NULL;
    int32_t *as = NULL;
    int rc = ES_OK;
    if (!cent || !cnorm) {
        rc = es__err(err, ES_ENOMEM, "ivf: out of memory for %d centroids", nlist);
        goto fail;
    }
    if ((rc = es__kmeans(x, n, ix->dim, nlist, p->kmeans_iters, p->seed, cent, err))) goto fail;
    es__row_norms(cent, (size_t)nlist, ix->dim, cnorm);
    if (v->codes_kind != ES_INDEX_FLAT) {
        res = es__alloc_aligned(n * d * sizeof *res);
        as = es__malloc(n * sizeof *as);
        if (!res || !as) {
            rc = es__err(err, ES_ENOMEM, "ivf: out of memory for residuals");
            goto fail;
        }
        if ((rc = es__kmeans_assign(x, n, ix->dim, cent, nlist, as, NULL, err))) goto fail;
        for (size_t i = 0; i < n; i++)
            for (size_t j = 0; j < d; j++) res[i * d + j] = x[i * d + j] - cent[(size_t)as[i] * d + j];
        if (v->codes_kind == ES_INDEX_SQ8)
            rc = es__sq8_train(&v->sq, res, n, ix->dim, err);
        else
            rc = es__pq_train(&v->pq, res, n, p->kmeans_iters, p->opq_iters, p->seed + 1, err);
        if (rc) goto fail;
    }
    es__free_aligned(v->cent);
    es__free(v->cnorm);
    v->cent = cent;
    v->cnorm = cnorm;
    v->nlist = nlist;
    p->nlist = nlist;
    es__free_aligned(res);
    es__free(as);
    if (v->codes_kind == ES_INDEX_PQ && (rc = prepare_pq_terms(v, err))) return rc;
    /* An empty CSR: nlist + 1 zero offsets. */
    es__arr_free(&v->off);
    if (es__arr_reserve(&v->off, ((size_t)nlist + 1) * sizeof(int64_t))) return es__err(err, ES_ENOMEM, "ivf: out of memory");
    memset(v->off.p, 0, ((size_t)nlist + 1) * sizeof(int64_t));
    v->off.bytes = ((size_t)nlist + 1) * sizeof(int64_t);
    ix->trained = true;
    return ES_OK;
fail:
    es__free_aligned(cent);
    es__free(cnorm);
    es__free_aligned(res);
    es__free(as);
    return rc;
}

static int ivf_add(es__ix *ix, const float *x, size_t n, es_err *err) {
    ivf_ix *v = (ivf_ix *)ix;
    size_t d = (size_t)ix->dim, cs = v->code_size, old = ix->n, tot = old + n, L = (size_t)v->nlist;
    if (tot > ES_IX_MAX_N) return es__err(err, ES_ERANGE, "ivf: more than %zu vectors", ES_IX_MAX_N);
    int32_t *as = es__malloc((n ? n : 1) * sizeof *as);
    uint8_t *nc = es__malloc((n ? n : 1) * cs);
    float *res = NULL;
    int64_t *noff = es__malloc((L + 1) * sizeof *noff), *fill = es__malloc((L + 1) * sizeof *fill);
    es__arr nids = {0}, ncodes = {0};
    int rc = ES_OK;
    if (!as || !nc || !noff || !fill || es__arr_reserve(&nids, tot * sizeof(int32_t)) ||
        es__arr_reserve(&ncodes, tot * cs)) {
        rc = es__err(err, ES_ENOMEM, "ivf: out of memory adding %zu vectors", n);
        goto out;
    }
    if ((rc = es__kmeans_assign(x, n, ix->dim, v->cent, v->nlist, as, NULL, err))) goto out;
    if (v->codes_kind == ES_INDEX_FLAT) {
        memcpy(nc, x, n * cs);
    } else {
        res = es__alloc_aligned(n * d * sizeof *res);
        if (!res) {
            rc = es__err(err, ES_ENOMEM, "ivf: out of memory for residuals");
            goto out;
        }
        for (size_t i = 0; i < n; i++)
            for (size_t j = 0; j < d; j++) res[i * d + j] = x[i * d + j] - v->cent[(size_t)as[i] * d + j];
        if (v->codes_kind == ES_INDEX_SQ8) {
            for (size_t i = 0; i < n; i++) es__sq8_encode(&v->sq, res + i * d, nc + i * cs);
        } else if ((rc = es__pq_encode_n(&v->pq, res, n, nc, err))) {
            goto out;
        }
    }
    /* Merge: old lists keep their order, new vectors follow in id order. */
    const int64_t *off = v->off.p;
    for (size_t l = 0; l <= L; l++) noff[l] = 0;
    for (size_t l = 0; l < L; l++) noff[l + 1] = off[l + 1] - off[l];
    for (size_t i = 0; i < n; i++) noff[as[i] + 1]++;
    for (size_t l = 0; l < L; l++) noff[l + 1] += noff[l];
    int32_t *ni = nids.p;
    uint8_t *ncd = ncodes.p;
    const int32_t *oi = v->ids.p;
    const uint8_t *ocd = v->codes.p;
    for (size_t l = 0; l < L; l++) {
        size_t cnt = (size_t)(off[l + 1] - off[l]);
        if (cnt) {
            memcpy(ni + noff[l], oi + off[l], cnt * sizeof *ni);
            memcpy(ncd + (size_t)noff[l] * cs, ocd + (size_t)off[l] * cs, cnt * cs);
        }
        fill[l] = noff[l] + (int64_t)cnt;
    }
    for (size_t i = 0; i < n; i++) {
        int64_t pos = fill[as[i]]++;
        ni[pos] = (int32_t)(old + i);
        memcpy(ncd + (size_t)pos * cs, nc + i * cs, cs);
    }
    nids.bytes = tot * sizeof(int32_t);
    ncodes.bytes = tot * cs;
    if ((rc = es__arr_own(&v->off))) {
        rc = es__err(err, ES_ENOMEM, "ivf: out of memory");
        goto out;
    }
    memcpy(v->off.p, noff, (L + 1) * sizeof *noff);
    es__arr_free(&v->ids);
    es__arr_free(&v->codes);
    v->ids = nids;
    v->codes = ncodes;
    nids = (es__arr){0};
    ncodes = (es__arr){0};
    ix->n = tot;
out:
    es__free(as);
    es__free(nc);
    es__free_aligned(res);
    es__free(noff);
    es__free(fill);
    es__arr_free(&nids);
    es__arr_free(&ncodes);
    return rc;
}

static size_t ivf_scratch(const es__ix *ix, int k) {
    const ivf_ix *v = (const ivf_ix *)ix;
    size_t d = (size_t)ix->dim, L = (size_t)ES_MAX(v->nlist, 1);
    size_t lutn = v->codes_kind == ES_INDEX_PQ ? (size_t)v->pq.M * v->pq.ksub : 0;
    /* Mirrors the carving in ivf_search1. */
    return es__carved(L * sizeof(float)) + es__carved(L * sizeof(int64_t)) + 2 * es__carved(d * sizeof(float)) +
           es__carved(ES_MAX(d, (size_t)SCAN_CHUNK) * sizeof(float)) + es__carved(lutn * sizeof(float)) +
           es__carved(ES_MAX(lutn, d) * sizeof(float));
}

/* Scan list l into the heap; returns how many of its vectors pass the filter. */
static size_t scan_list(const ivf_ix *v, size_t l, float coarse, const float *q, const float *qr, const float *qlut,
                      float *lbuf, float *qb, float *tmp, const es__filter *f, int k, float *dist, int64_t *ids,
                      int *size) {
    const int64_t *off = v->off.p;
    size_t b = (size_t)off[l], e = (size_t)off[l + 1], d = (size_t)v->h.dim, cs = v->code_size;
    if (b == e) return 0;
    size_t seen = 0;
    const int32_t *lid = (const int32_t *)v->ids.p;
    const uint8_t *codes = (const uint8_t *)v->codes.p;
    int ip = v->h.ip;
    if (v->codes_kind == ES_INDEX_FLAT) {
        for (size_t i = b; i < e; i++) {
            if (f && !es__filter_ok(f, (size_t)lid[i])) continue;
            seen++;
            const float *xv = (const float *)(codes + i * cs);
            float s = ip ? -es__dot(q, xv, d) : es__l2sq(q, xv, d);
            es__heap_push(dist, ids, size, k, s, lid[i]);
        }
        return seen;
    }
    if (v->codes_kind == ES_INDEX_SQ8) {
        const float *c = v->cent + l * d;
        if (ip) {
            /* <q, c + r> = <q, c> + <q, bias> + sq8_ip(q * scale, code); qb holds q * scale. */
            float qc = -coarse;
            for (size_t i = b; i < e; i++) {
                if (f && !es__filter_ok(f, (size_t)lid[i])) continue;
                seen++;
                float s = -(qc + qr[0] + es__sq8_ip(qb, codes + i * cs, d));
                es__heap_push(dist, ids, size, k, s, lid[i]);
            }
            return seen;
        }
        for (size_t j = 0; j < d; j++) lbuf[j] = q[j] - c[j] - v->sq.bias[j];
        for (size_t i = b; i < e; i++) {
            if (f && !es__filter_ok(f, (size_t)lid[i])) continue;
            seen++;
            es__heap_push(dist, ids, size, k, es__sq8_l2(lbuf, v->sq.scale, codes + i * cs, d), lid[i]);
        }
        return seen;
    }
    /* PQ on residuals. */
    size_t M = (size_t)v->pq.M, ks = (size_t)v->pq.ksub;
    const float *lut;
    float bias;
    if (ip) {
        lut = qlut; /* -<Rq_m, cw> */
        bias = coarse; /* -<q, c> */
    } else if (v->pqterm) {
        const float *t = v->pqterm + l * M * ks;
        for (size_t j = 0; j < M * ks; j++) lbuf[j] = t[j] + qlut[j];
        lut = lbuf;
        bias = coarse;
    } else {
        const float *rc = v->rcent + l * d;
        for (size_t j = 0; j < d; j++) tmp[j] = qr[j] - rc[j];
        es__pq_lut(&v->pq, tmp, 0, lbuf);
        lut = lbuf;
        bias = 0.0f;
    }
    for (size_t i0 = b; i0 < e; i0 += SCAN_CHUNK) {
        size_t c = ES_MIN((size_t)SCAN_CHUNK, e - i0);
        es__pq_scan(lut, codes + i0 * cs, c, (int)M, (int)ks, bias, tmp);
        for (size_t i = 0; i < c; i++) {
            if (f && !es__filter_ok(f, (size_t)lid[i0 + i])) continue;
            seen++;
            if (*size == k && tmp[i] > dist[0]) continue;
            es__heap_push(dist, ids, size, k, tmp[i], lid[i0 + i]);
        }
    }
    return seen;
}

static void ivf_search1(const es__ix *ix, const float *q, int k, const es__filter *f, es__scratch *sc, float *dist,
                        int64_t *ids) {
    const ivf_ix *v = (const ivf_ix *)ix;
    size_t d = (size_t)ix->dim, L = (size_t)v->nlist;
    int size = 0;
    if (L == 0 || ix->n == 0) {
        es__heap_finish(dist, ids, 0, k);
        return;
    }
    unsigned char *cur = sc->mem;
    float *cd = es__carve(&cur, L * sizeof(float));
    int64_t *ci = es__carve(&cur, L * sizeof(int64_t));
    float *qr = es__carve(&cur, d * sizeof(float));
    float *qb = es__carve(&cur, d * sizeof(float));
    float *tmp = es__carve(&cur, ES_MAX(d, (size_t)SCAN_CHUNK) * sizeof(float));
    size_t lutn = v->codes_kind == ES_INDEX_PQ ? (size_t)v->pq.M * v->pq.ksub : 0;
    float *qlut = es__carve(&cur, lutn * sizeof(float));
    float *lbuf = es__carve(&cur, ES_MAX(lutn, d) * sizeof(float));
    (void)cur;
    /* Lists in order of centroid distance: all of them with a filter (probing
     * may continue), else only the nprobe best. */
    int nprobe = ES_MAX(1, ES_MIN(ix->p->nprobe, v->nlist));
    int want = f ? v->nlist : nprobe, nsel = 0;
    for (size_t l = 0; l < L; l++) {
        const float *c = v->cent + l * d;
        float s = ix->ip ? -es__dot(q, c, d) : es__l2sq(q, c, d);
        es__heap_push(cd, ci, &nsel, want, s, (int64_t)l);
    }
    es__heap_finish(cd, ci, nsel, want);
    if (v->codes_kind == ES_INDEX_PQ) {
        es__pq_rotate1(&v->pq, q, qr);
        es__pq_lut(&v->pq, qr, 1, qlut); /* -<Rq_m, cw> */
        if (!ix->ip)
            for (size_t j = 0; j < lutn; j++) qlut[j] *= 2.0f;
    } else if (v->codes_kind == ES_INDEX_SQ8 && ix->ip) {
        float cst;
        es__sq8_prep(&v->sq, q, 1, qb, &cst);
        qr[0] = cst;
    }
    /* With a filter, keep probing until as many matching vectors were scored
     * as an unfiltered search scores vectors (nprobe average lists), or all
     * matches were seen: the k nearest matches lie about 1/selectivity times
     * deeper than the k nearest vectors, and filter checks cost far less
     * than distances. */
    size_t target = 0, seen = 0;
    if (f) target = ES_MIN(f->n_match, (size_t)((double)nprobe * (double)ix->n / (double)v->nlist + 0.5));
    for (int t = 0; t < want; t++) {
        if (t >= nprobe && (!f || (seen >= target && size >= k) || seen >= f->n_match)) break;
        seen += scan_list(v, (size_t)ci[t], cd[t], q, qr, qlut, lbuf, qb, tmp, f, k, dist, ids, &size);
    }
    es__heap_finish(dist, ids, size, k);
}

static size_t ivf_bytes(const es__ix *ix) {
    const ivf_ix *v = (const ivf_ix *)ix;
    size_t d = (size_t)ix->dim, b = v->off.bytes + v->ids.bytes + v->codes.bytes;
    b += (size_t)v->nlist * (d + 1) * sizeof(float);
    if (v->codes_kind == ES_INDEX_SQ8) b += 2 * d * sizeof(float);
    if (v->codes_kind == ES_INDEX_PQ) {
        b += es__pq_bytes(&v->pq) + (size_t)v->nlist * d * sizeof(float);
        if (v->pqterm) b += (size_t)v->nlist * v->pq.M * v->pq.ksub * sizeof(float);
    }
    return b;
}

static int ivf_save(const es__ix *ix, es_fwriter *w, const char *pfx, es_err *err) {
    const ivf_ix *v = (const ivf_ix *)ix;
    int rc = es__ix_put(w, pfx, "ivf.centroids", ES_DT_F32, v->cent, 2, (uint64_t)v->nlist, (uint64_t)ix->dim, err);
    if (!rc) rc = es__ix_put(w, pfx, "ivf.off", ES_DT_I64, v->off.p, 1, (uint64_t)v->nlist + 1, 0, err);
    if (!rc) rc = es__ix_put(w, pfx, "ivf.ids", ES_DT_I32, v->ids.p, 1, ix->n, 0, err);
    if (!rc) {
        if (v->codes_kind == ES_INDEX_FLAT)
            rc = es__ix_put(w, pfx, "codes", ES_DT_F32, v->codes.p, 2, ix->n, (uint64_t)ix->dim, err);
        else
            rc = es__ix_put(w, pfx, "codes", ES_DT_U8, v->codes.p, 2, ix->n, (uint64_t)v->code_size, err);
    }
    if (!rc && v->codes_kind == ES_INDEX_SQ8) rc = es__sq8_save(&v->sq, w, pfx, err);
    if (!rc && v->codes_kind == ES_INDEX_PQ) rc = es__pq_save(&v->pq, w, pfx, err);
    return rc;
}

static int ivf_load(es__ix *ix, const es_file *f, const char *pfx, es_err *err) {
    ivf_ix *v = (ivf_ix *)ix;
    size_t n = ix->n, d = (size_t)ix->dim;
    uint64_t sc[2] = {UINT64_MAX, d};
    const void *pc, *po, *pi, *pcodes;
    int rc = es__ix_tensor(f, pfx, "ivf.centroids", ES_DT_F32, 2, sc, &pc, err);
    if (rc) return rc;
    if (sc[0] < 1 || sc[0] > ES_IX_MAX_N) return es__err(err, ES_EFORMAT, "ivf: %llu lists", (unsigned long long)sc[0]);
    size_t L = (size_t)sc[0];
    if ((rc = es__check_finite(pc, L, ix->dim, "ivf centroids", err))) return rc;
    uint64_t so[1] = {L + 1}, si[1] = {n};
    if ((rc = es__ix_tensor(f, pfx, "ivf.off", ES_DT_I64, 1, so, &po, err))) return rc;
    if ((rc = es__ix_tensor(f, pfx, "ivf.ids", ES_DT_I32, 1, si, &pi, err))) return rc;
    if (v->codes_kind == ES_INDEX_FLAT) {
        uint64_t s2[2] = {n, d};
        rc = es__ix_tensor(f, pfx, "codes", ES_DT_F32, 2, s2, &pcodes, err);
        if (!rc) rc = es__check_finite(pcodes, n, ix->dim, "ivf vectors", err);
    } else {
        if (v->codes_kind == ES_INDEX_SQ8) {
            rc = es__sq8_load(&v->sq, ix->dim, f, pfx, err);
            v->code_size = d;
        } else {
            rc = es__pq_load(&v->pq, ix->dim, f, pfx, err);
            v->code_size = (size_t)v->pq.M;
        }
        uint64_t s2[2] = {n, v->code_size};
        if (!rc) rc = es__ix_tensor(f, pfx, "codes", ES_DT_U8, 2, s2, &pcodes, err);
        if (!rc && v->codes_kind == ES_INDEX_PQ && v->pq.ksub < 256)
            for (size_t i = 0; i < n * v->code_size; i++)
                if (((const uint8_t *)pcodes)[i] >= v->pq.ksub)
                    return es__err(err, ES_EFORMAT, "ivf: pq code byte %zu beyond the %d centroids", i, v->pq.ksub);
    }
    if (rc) return rc;
    const int64_t *off = po;
    if (off[0] != 0 || off[L] != (int64_t)n)
        return es__err(err, ES_EFORMAT, "ivf: list offsets run from %lld to %lld, expected 0 to %zu", (long long)off[0],
                       (long long)off[L], n);
    for (size_t l = 0; l < L; l++)
        if (off[l + 1] < off[l]) return es__err(err, ES_EFORMAT, "ivf: list %zu has a negative length", l);
    const int32_t *ids = pi;
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || (size_t)ids[i] >= n) return es__err(err, ES_EFORMAT, "ivf: id %d outside [0, %zu)", ids[i], n);
    v->cent = es__alloc_aligned(L * d * sizeof(float));
    v->cnorm = es__malloc(L * sizeof(float));
    if (!v->cent || !v->cnorm) return es__err(err, ES_ENOMEM, "ivf: out of memory");
    memcpy(v->cent, pc, L * d * sizeof(float));
    es__row_norms(v->cent, L, ix->dim, v->cnorm);
    v->nlist = (int)L;
    ix->p->nlist = (int)L;
    if (v->codes_kind == ES_INDEX_PQ && (rc = prepare_pq_terms(v, err))) return rc;
    es__arr_map(&v->off, po, (L + 1) * sizeof(int64_t));
    es__arr_map(&v->ids, pi, n * sizeof(int32_t));
    es__arr_map(&v->codes, pcodes, n * v->code_size);
    ix->trained = true;
    return ES_OK;
}

static void ivf_destroy(es__ix *ix) {
    ivf_ix *v = (ivf_ix *)ix;
    es__free_aligned(v->cent);
    es__free(v->cnorm);
    es__free_aligned(v->rcent);
    es__free_aligned(v->pqterm);
    es__sq8_free(&v->sq);
    es__pq_free(&v->pq);
    es__arr_free(&v->off);
    es__arr_free(&v->ids);
    es__arr_free(&v->codes);
    es__free(v);
}

static const es__ix_vt ivf_vt = {
    .name = "ivf",
    .train = ivf_train,
    .add = ivf_add,
    .scratch_need = ivf_scratch,
    .search1 = ivf_search1,
    .bytes = ivf_bytes,
    .save = ivf_save,
    .load = ivf_load,
    .destroy = ivf_destroy,
};

int es__ivf_new(es__ix **out, int dim, int ip, es_index_params *p, es_err *err) {
    if (p->ivf_codes != ES_INDEX_FLAT && p->ivf_codes != ES_INDEX_SQ8 && p->ivf_codes != ES_INDEX_PQ)
        return es__err(err, ES_EINVAL, "ivf: list codes must be flat, sq8 or pq");
    if (p->nlist < 0 || p->nlist > 1 << 24) return es__err(err, ES_EINVAL, "ivf: nlist must be in [0, 2^24], got %d", p->nlist);
    if (p->nprobe < 1) return es__err(err, ES_EINVAL, "ivf: nprobe must be >= 1, got %d", p->nprobe);
    ivf_ix *v = es__calloc(1, sizeof *v);
    if (!v) return es__err(err, ES_ENOMEM, "ivf: out of memory");
    v->h = (es__ix){.vt = &ivf_vt, .dim = dim, .ip = ip, .p = p};
    v->codes_kind = p->ivf_codes;
    if (p->ivf_codes == ES_INDEX_PQ) {
        int rc = es__pq_init(&v->pq, dim, p->pq_m, p->pq_bits, err);
        if (rc) {
            es__free(v);
            return rc;
        }
        p->pq_m = v->pq.M;
        p->pq_bits = v->pq.nbits;
        v->code_size = (size_t)v->pq.M;
    } else {
        v->code_size = p->ivf_codes == ES_INDEX_SQ8 ? (size_t)dim : (size_t)dim * sizeof(float);
    }
    *out = &v->h;
    return ES_OK;
}
