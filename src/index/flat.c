/*
 * flat.c — exact search: the es__knn_exact kernel (also used by k-means
 * assignment, IVF coarse search, ground truth and re-ranking) and the
 * "flat" index kind that stores float32 rows.
 *
 * Many queries at once are blocked like Faiss's IndexFlat: one
 * cblas_sgemm computes the inner products of a block of queries with a
 * block of rows (which runs near the machine's FLOP rate instead of being
 * bound by reading the rows once per query), and OpenMP threads then
 * update one top-k heap per query.  For L2 the block holds ||x||^2 - 2<q,x>
 * (||q||^2 does not change the order).  The k winners are re-scored with
 * the direct kernels so the reported distances are exact and identical on
 * both paths.  Few queries go straight to the SIMD kernels.
 */
#include "index.h"

#include "core/simd.h"
#include "distance.h"

#include <cblas.h>

/* Below this many queries the BLAS path does not pay off (as in Faiss). */
#define BLAS_MIN_QUERIES 20
#define BLOCK_Q 256
#define BLOCK_X 4096

void es__row_norms(const float *x, size_t n, int d, float *out) {
    for (size_t i = 0; i < n; i++) out[i] = es__dot(x + i * (size_t)d, x + i * (size_t)d, (size_t)d);
}

static inline float score1(const float *q, const float *x, int d, int ip) {
    return ip ? -es__dot(q, x, (size_t)d) : es__l2sq(q, x, (size_t)d);
}

/* One query by direct kernels; the output arrays are the heap. */
static void knn_direct1(const float *q, const float *x, size_t nx, int d, int ip, int k, const es__filter *f,
                        float *hd, int64_t *hi) {
    int size = 0;
    size_t i = 0;
    if (!f) {
        float s[4];
        for (; i + 4 <= nx; i += 4) {
            const float *r = x + i * (size_t)d;
            if (ip) {
                es__dot_x4(q, r, r + d, r + 2 * (size_t)d, r + 3 * (size_t)d, (size_t)d, s);
                for (int t = 0; t < 4; t++) s[t] = -s[t];
            } else {
                es__l2sq_x4(q, r, r + d, r + 2 * (size_t)d, r + 3 * (size_t)d, (size_t)d, s);
            }
            for (int t = 0; t < 4; t++) es__heap_push(hd, hi, &size, k, s[t], (int64_t)(i + (size_t)t));
        }
    }
    for (; i < nx; i++) {
        if (f && !es__filter_ok(f, i)) continue;
        es__heap_push(hd, hi, &size, k, score1(q, x + i * (size_t)d, d, ip), (int64_t)i);
    }
    es__heap_finish(hd, hi, size, k);
}

int es__knn_exact(const float *q, size_t nq, const float *x, const float *xnorm, size_t nx, int d, int ip, int k,
                  const es__filter *f, float *dist, int64_t *ids, int threads, es_err *err) {
    if (nq == 0) return ES_OK;
    int nt = es__nthreads(threads);
    if (nq < BLAS_MIN_QUERIES || nx == 0 || (!ip && !xnorm)) {
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt) if (nq > 1)
        for (size_t qi = 0; qi < nq; qi++)
            knn_direct1(q + qi * (size_t)d, x, nx, d, ip, k, f, dist + qi * (size_t)k, ids + qi * (size_t)k);
        return ES_OK;
    }
    /* One OpenMP region over query blocks, each thread running its own
     * single-threaded sgemm: one synchronisation per call instead of one per
     * block, and no second thread pool (OpenBLAS's) competing for the cores. */
    size_t bq = ES_MIN((size_t)BLOCK_Q, (nq + (size_t)nt - 1) / (size_t)nt), bx = ES_MIN(nx, (size_t)BLOCK_X);
    size_t nblk = (nq + bq - 1) / bq;
    if ((size_t)nt > nblk) nt = (int)nblk;
    float *ws = es__alloc_aligned((size_t)nt * (bq + 1) * bx * sizeof *ws);
    uint32_t *jw = es__malloc((size_t)nt * bx * sizeof *jw);
    int *sz = es__malloc((size_t)nt * bq * sizeof *sz);
    if (!ws || !jw || !sz) {
        es__free_aligned(ws);
        es__free(jw);
        es__free(sz);
        return es__err(err, ES_ENOMEM, "exact search: out of memory for %d blocks of %zu x %zu", nt, bq, bx);
    }
    int prev = es__blas_single_begin();
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
    for (size_t blk = 0; blk < nblk; blk++) {
        int t = 0;
#ifdef _OPENMP
        t = omp_get_thread_num();
#endif
        float *ipbuf = ws + (size_t)t * (bq + 1) * bx, *sel_s = ipbuf + bq * bx;
        uint32_t *sel_j = jw + (size_t)t * bx;
        int *sizes = sz + (size_t)t * bq;
        size_t q0 = blk * bq, mq = ES_MIN(bq, nq - q0);
        memset(sizes, 0, mq * sizeof *sizes);
        for (size_t x0 = 0; x0 < nx; x0 += bx) {
            size_t mx = ES_MIN(bx, nx - x0);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)mq, (int)mx, d, 1.0f, q + q0 * (size_t)d, d,
                        x + x0 * (size_t)d, d, 0.0f, ipbuf, (int)mx);
            for (size_t qi = 0; qi < mq; qi++) {
                const float *row = ipbuf + qi * mx;
                float *hd = dist + (q0 + qi) * (size_t)k;
                int64_t *hi = ids + (q0 + qi) * (size_t)k;
                int size = sizes[qi];
                /* Scores below the heap's current worst, 16 per instruction;
                 * only those reach the filter and the heap. */
                size_t nc = es__select_le(ip ? NULL : xnorm + x0, row, ip ? -1.0f : -2.0f, mx,
                                          size == k ? hd[0] : INFINITY, sel_j, sel_s);
                for (size_t c = 0; c < nc; c++) {
                    size_t id = x0 + sel_j[c];
                    if (size == k && sel_s[c] > hd[0]) continue;
                    if (f && !es__filter_ok(f, id)) continue;
                    es__heap_push(hd, hi, &size, k, sel_s[c], (int64_t)id);
                }
                sizes[qi] = size;
            }
        }
        /* Exact re-scoring of the winners, then sort. */
        for (size_t qi = 0; qi < mq; qi++) {
            const float *qq = q + (q0 + qi) * (size_t)d;
            float *hd = dist + (q0 + qi) * (size_t)k;
            int64_t *hi = ids + (q0 + qi) * (size_t)k;
            int size = sizes[qi], m = 0;
            for (int u = 0; u < size; u++) {
                int64_t id = hi[u];
                es__heap_push(hd, hi, &m, size, score1(qq, x + (size_t)id * (size_t)d, d, ip), id);
            }
            es__heap_finish(hd, hi, m, k);
        }
    }
    es__blas_single_end(prev);
    es__free_aligned(ws);
    es__free(jw);
    es__free(sz);
    return ES_OK;
}

/* OpenBLAS exports these; weak so other BLAS builds still link. */
extern int openblas_get_num_threads(void) __attribute__((weak));
extern void openblas_set_num_threads(int) __attribute__((weak));

int es__blas_single_begin(void) {
    if (!openblas_get_num_threads || !openblas_set_num_threads) return 0;
    int prev = openblas_get_num_threads();
    if (prev != 1) openblas_set_num_threads(1);
    return prev;
}

void es__blas_single_end(int prev) {
    if (prev > 1 && openblas_set_num_threads) openblas_set_num_threads(prev);
}

/* ---- the flat kind ------------------------------------------------------------- */
typedef struct {
    es__ix h;
    es__arr x;     /* float [n][dim] */
    es__arr norms; /* float [n], L2 only */
} flat_ix;

static int flat_add(es__ix *ix, const float *x, size_t n, es_err *err) {
    flat_ix *f = (flat_ix *)ix;
    size_t d = (size_t)ix->dim, tot = ix->n + n, xb, nb;
    if (!es__mul_size(tot, d * sizeof(float), &xb) || !es__mul_size(tot, sizeof(float), &nb))
        return es__err(err, ES_ERANGE, "flat: too many vectors");
    if (es__arr_reserve(&f->x, xb) || (!ix->ip && es__arr_reserve(&f->norms, nb)))
        return es__err(err, ES_ENOMEM, "flat: out of memory adding %zu vectors", n);
    memcpy((float *)f->x.p + ix->n * d, x, n * d * sizeof(float));
    f->x.bytes = xb;
    if (!ix->ip) {
        es__row_norms(x, n, ix->dim, (float *)f->norms.p + ix->n);
        f->norms.bytes = nb;
    }
    ix->n = tot;
    return ES_OK;
}

static size_t flat_scratch(const es__ix *ix, int k) { return 0; }

static void flat_search1(const es__ix *ix, const float *q, int k, const es__filter *flt, es__scratch *s, float *dist,
                         int64_t *ids) {
    const flat_ix *f = (const flat_ix *)ix;
    knn_direct1(q, f->x.p, ix->n, ix->dim, ix->ip, k, flt, dist, ids);
}

static int flat_search_batch(const es__ix *ix, size_t nq, const float *q, int k, const es__filter *flt, float *dist,
                             int64_t *ids, int threads, es_err *err) {
    const flat_ix *f = (const flat_ix *)ix;
    return es__knn_exact(q, nq, f->x.p, f->norms.p, ix->n, ix->dim, ix->ip, k, flt, dist, ids, threads, err);
}

static size_t flat_bytes(const es__ix *ix) {
    const flat_ix *f = (const flat_ix *)ix;
    return f->x.bytes + f->norms.bytes;
}

static int flat_save(const es__ix *ix, es_fwriter *w, const char *pfx, es_err *err) {
    const flat_ix *f = (const flat_ix *)ix;
    int rc = es__ix_put(w, pfx, "x", ES_DT_F32, f->x.p, 2, ix->n, (uint64_t)ix->dim, err);
    if (!rc && !ix->ip) rc = es__ix_put(w, pfx, "norms", ES_DT_F32, f->norms.p, 1, ix->n, 0, err);
    return rc;
}

static int flat_load(es__ix *ix, const es_file *file, const char *pfx, es_err *err) {
    flat_ix *f = (flat_ix *)ix;
    uint64_t shape[2] = {ix->n, (uint64_t)ix->dim};
    const void *p;
    int rc = es__ix_tensor(file, pfx, "x", ES_DT_F32, 2, shape, &p, err);
    if (rc) return rc;
    es__arr_map(&f->x, p, ix->n * (size_t)ix->dim * sizeof(float));
    if (!ix->ip) {
        uint64_t s1[1] = {ix->n};
        if ((rc = es__ix_tensor(file, pfx, "norms", ES_DT_F32, 1, s1, &p, err))) return rc;
        es__arr_map(&f->norms, p, ix->n * sizeof(float));
    }
    return es__check_finite(f->x.p, ix->n, ix->dim, "flat vectors", err);
}

static void flat_destroy(es__ix *ix) {
    flat_ix *f = (flat_ix *)ix;
    es__arr_free(&f->x);
    es__arr_free(&f->norms);
    es__free(f);
}

static const es__ix_vt flat_vt = {
    .name = "flat",
    .train = NULL,
    .add = flat_add,
    .scratch_need = flat_scratch,
    .uses_visited = false,
    .search1 = flat_search1,
    .search_batch = flat_search_batch,
    .bytes = flat_bytes,
    .save = flat_save,
    .load = flat_load,
    .destroy = flat_destroy,
};

int es__flat_new(es__ix **out, int dim, int ip, es_index_params *p, es_err *err) {
    flat_ix *f = es__calloc(1, sizeof *f);
    if (!f) return es__err(err, ES_ENOMEM, "flat: out of memory");
    f->h = (es__ix){.vt = &flat_vt, .dim = dim, .ip = ip, .trained = true, .p = p};
    *out = &f->h;
    return ES_OK;
}
