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
#include <pthread.h>

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

/* Scan rows [x0, x1) for the mq queries at q (rows of d) into heaps
 * hd/hi (k per query) holding sizes[] entries: blocks of bx rows through
 * one sgemm each, then only the scores below each heap's current worst
 * (es__select_le, in runs of 256 so the bound tightens early) reach the
 * filter and the heap. */
static void scan_rows(const float *q, size_t mq, const float *x, const float *xnorm, size_t x0, size_t x1, int d,
                      int ip, int k, const es__filter *f, float *ipbuf, size_t bx, uint32_t *sel_j, float *sel_s,
                      float *hd_all, int64_t *hi_all, int *sizes) {
    for (size_t b0 = x0; b0 < x1; b0 += bx) {
        size_t mx = ES_MIN(bx, x1 - b0);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)mq, (int)mx, d, 1.0f, q, d, x + b0 * (size_t)d, d,
                    0.0f, ipbuf, (int)mx);
        for (size_t qi = 0; qi < mq; qi++) {
            const float *row = ipbuf + qi * mx;
            float *hd = hd_all + qi * (size_t)k;
            int64_t *hi = hi_all + qi * (size_t)k;
            int size = sizes[qi];
            for (size_t j0 = 0; j0 < mx; j0 += 256) {
                size_t mj = ES_MIN((size_t)256, mx - j0);
                size_t nc = es__select_le(ip ? NULL : xnorm + b0 + j0, row + j0, ip ? -1.0f : -2.0f, mj,
                                          size == k ? hd[0] : INFINITY, sel_j, sel_s);
                for (size_t c = 0; c < nc; c++) {
                    size_t id = b0 + j0 + sel_j[c];
                    if (size == k && sel_s[c] > hd[0]) continue;
                    if (f && !es__filter_ok(f, id)) continue;
                    es__heap_push(hd, hi, &size, k, sel_s[c], (int64_t)id);
                }
            }
            sizes[qi] = size;
        }
    }
}

/* Exact re-scoring of a query's heap of `size` winners, then sort and pad. */
static void rescore(const float *qq, const float *x, int d, int ip, int k, float *hd, int64_t *hi, int size) {
    int m = 0;
    for (int u = 0; u < size; u++) {
        int64_t id = hi[u];
        es__heap_push(hd, hi, &m, size, score1(qq, x + (size_t)id * (size_t)d, d, ip), id);
    }
    es__heap_finish(hd, hi, m, k);
}

int es__knn_exact(const float *q, size_t nq, const float *x, const float *xnorm, size_t nx, int d, int ip, int k,
                  const es__filter *f, float *dist, int64_t *ids, int threads, es__scratch *wsp, es_err *err) {
    if (nq == 0) return ES_OK;
    int nt = es__nthreads(threads);
    if (nq < BLAS_MIN_QUERIES || nx == 0 || (!ip && !xnorm)) {
ES__OMP(omp parallel for schedule(dynamic, 1) num_threads(nt) if (nq > 1))
        for (size_t qi = 0; qi < nq; qi++)
            knn_direct1(q + qi * (size_t)d, x, nx, d, ip, k, f, dist + qi * (size_t)k, ids + qi * (size_t)k);
        return ES_OK;
    }
    /* One OpenMP region, each thread running its own single-threaded sgemm:
     * one synchronisation per call, and no second thread pool (OpenBLAS's)
     * competing for the cores.  Many queries: threads take query blocks and
     * fill the output heaps directly.  Few queries (one block): threads take
     * ranges of rows, each with its own heaps, merged afterwards, so the rows
     * are read (and packed by sgemm) once, not once per thread. */
    size_t bx = ES_MIN(nx, (size_t)BLOCK_X);
    bool split_rows = nq <= BLOCK_Q && nt > 1 && nx >= 2 * (size_t)BLOCK_X / 4;
    size_t bq = split_rows ? nq : ES_MIN((size_t)BLOCK_Q, (nq + (size_t)nt - 1) / (size_t)nt);
    size_t nblk = split_rows ? (size_t)nt : (nq + bq - 1) / bq;
    if ((size_t)nt > nblk) nt = (int)nblk;
    size_t heaps = split_rows ? bq * (size_t)k : 0;
    size_t b_ws = es__carved((size_t)nt * (bq + 1) * bx * sizeof(float)),
           b_jw = es__carved((size_t)nt * bx * sizeof(uint32_t)), b_sz = es__carved((size_t)nt * bq * sizeof(int)),
           b_hd = es__carved((size_t)nt * heaps * sizeof(float)), b_hi = es__carved((size_t)nt * heaps * sizeof(int64_t));
    size_t need = b_ws + b_jw + b_sz + b_hd + b_hi;
    unsigned char *own = NULL, *cur;
    if (wsp) {
        if (es__arena_reserve(&wsp->mem, &wsp->cap, need))
            return es__err(err, ES_ENOMEM, "exact search: out of memory for %d blocks of %zu x %zu", nt, bq, bx);
        cur = wsp->mem;
    } else {
        own = es__alloc_aligned(need);
        if (!own) return es__err(err, ES_ENOMEM, "exact search: out of memory for %d blocks of %zu x %zu", nt, bq, bx);
        cur = own;
    }
    float *ws = es__carve(&cur, b_ws);
    uint32_t *jw = es__carve(&cur, b_jw);
    int *sz = es__carve(&cur, b_sz);
    float *thd = es__carve(&cur, b_hd);
    int64_t *thi = es__carve(&cur, b_hi);
    int prev = es__blas_single_begin();
ES__OMP(omp parallel for schedule(dynamic, 1) num_threads(nt))
    for (size_t blk = 0; blk < nblk; blk++) {
        int t = 0;
#ifdef _OPENMP
        t = omp_get_thread_num();
#endif
        float *ipbuf = ws + (size_t)t * (bq + 1) * bx, *sel_s = ipbuf + bq * bx;
        uint32_t *sel_j = jw + (size_t)t * bx;
        int *sizes = sz + (size_t)t * bq;
        if (split_rows) {
            /* Rows [r0, r1) of an even split (multiples of 256); the block's
             * own heaps and sizes (nblk == nt slots). */
            size_t per = (nx + nblk - 1) / nblk;
            per = (per + 255) & ~(size_t)255;
            size_t r0 = ES_MIN(blk * per, nx), r1 = ES_MIN(r0 + per, nx);
            int *bsz = sz + blk * bq;
            memset(bsz, 0, nq * sizeof *bsz);
            scan_rows(q, nq, x, xnorm, r0, r1, d, ip, k, f, ipbuf, bx, sel_j, sel_s, thd + blk * heaps,
                      thi + blk * heaps, bsz);
        } else {
            size_t q0 = blk * bq, mq = ES_MIN(bq, nq - q0);
            memset(sizes, 0, mq * sizeof *sizes);
            scan_rows(q + q0 * (size_t)d, mq, x, xnorm, 0, nx, d, ip, k, f, ipbuf, bx, sel_j, sel_s,
                      dist + q0 * (size_t)k, ids + q0 * (size_t)k, sizes);
            for (size_t qi = 0; qi < mq; qi++)
                rescore(q + (q0 + qi) * (size_t)d, x, d, ip, k, dist + (q0 + qi) * (size_t)k, ids + (q0 + qi) * (size_t)k,
                        sizes[qi]);
        }
    }
    es__blas_single_end(prev);
    if (split_rows) {
        /* Merge the blocks' heaps per query, then re-score exactly. */
ES__OMP(omp parallel for schedule(static) num_threads(nt))
        for (size_t qi = 0; qi < nq; qi++) {
            float *hd = dist + qi * (size_t)k;
            int64_t *hi = ids + qi * (size_t)k;
            int size = 0;
            for (size_t b = 0; b < nblk; b++) {
                const float *bd = thd + b * heaps + qi * (size_t)k;
                const int64_t *bi = thi + b * heaps + qi * (size_t)k;
                for (int u = 0; u < sz[b * bq + qi]; u++) es__heap_push(hd, hi, &size, k, bd[u], bi[u]);
            }
            rescore(q + qi * (size_t)d, x, d, ip, k, hd, hi, size);
        }
    }
    es__free_aligned(own);
    return ES_OK;
}

/* OpenBLAS exports these; weak so other BLAS builds still link.  Nested or
 * concurrent searches share one reference count: the first sets one thread,
 * the last restores the previous setting. */
extern int openblas_get_num_threads(void) __attribute__((weak));
extern void openblas_set_num_threads(int) __attribute__((weak));

static pthread_mutex_t blas_mu = PTHREAD_MUTEX_INITIALIZER;
static int blas_users, blas_prev;

int es__blas_single_begin(void) {
    if (!openblas_get_num_threads || !openblas_set_num_threads) return 0;
    pthread_mutex_lock(&blas_mu);
    if (blas_users++ == 0) {
        blas_prev = openblas_get_num_threads();
        if (blas_prev != 1) openblas_set_num_threads(1);
    }
    pthread_mutex_unlock(&blas_mu);
    return 1;
}

void es__blas_single_end(int token) {
    if (!token) return;
    pthread_mutex_lock(&blas_mu);
    if (--blas_users == 0 && blas_prev > 1) openblas_set_num_threads(blas_prev);
    pthread_mutex_unlock(&blas_mu);
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
                             int64_t *ids, int threads, es__scratch *ws, es_err *err) {
    const flat_ix *f = (const flat_ix *)ix;
    return es__knn_exact(q, nq, f->x.p, f->norms.p, ix->n, ix->dim, ix->ip, k, flt, dist, ids, threads, ws, err);
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
