/*
 * index.h — internal interface of the vector-search layer (src/index/).
 *
 * The public handle es_index (index.c) owns what every kind shares: the
 * metric, the optional input transform (cosine normalisation, PCA rotation,
 * Matryoshka prefix), the full vectors kept for re-ranking, integer
 * attributes for filtered search, the per-thread scratch pool, and the file
 * mapping of a loaded index.  Below it, each index kind (flat, sq8, binary,
 * pq, hnsw, ivf) is one file implementing es__ix_vt over vectors of the
 * "search dimension".
 *
 * Conventions inside this layer:
 *   - a kind sees only two metrics: squared L2, or inner product scored as
 *     -<q,x> so that "smaller is better" everywhere; cosine is inner product
 *     over normalised vectors (the handle normalises);
 *   - ids are int32 inside structures (an index holds < 2^31 vectors) and
 *     int64 in search outputs, as in the public API;
 *   - a search writes up to k (distance, id) pairs sorted best first and
 *     pads with (INFINITY, -1) when fewer exist;
 *   - searches never allocate: what they need comes from an es__scratch
 *     that the handle sizes before the query loop (scratch_need);
 *   - arrays may point into a read-only file mapping after load
 *     (es__arr.mapped); any mutation copies them first (es__arr_own).
 */
#ifndef ES_INDEX_INTERNAL_H
#define ES_INDEX_INTERNAL_H

#include "core/core.h"
#include "format/file.h"

#include <math.h>
#ifdef _OPENMP
#include <omp.h>
#endif


/* Threads for an OpenMP region: t > 0 as given, else the OpenMP default. */
static inline int es__nthreads(int t) {
#ifdef _OPENMP
    return t > 0 ? t : omp_get_max_threads();
#else
    (void)t;
    return 1;
#endif
}

/* Hard limits for everything read from files or arguments. */
#define ES_IX_MAX_DIM (1 << 20)      /* components per vector */
#define ES_IX_MAX_N ((size_t)INT32_MAX) /* vectors per index */
#define ES_IX_MAX_K (1 << 20)        /* results per query */
#define ES_IX_MAX_ATTR 64            /* attributes per vector */
#define ES_IX_ANY UINT64_MAX         /* es__ix_tensor: any extent */

/* ---- owned-or-mapped arrays ----------------------------------------------- */
typedef struct es__arr {
    void *p;       /* data (64-byte aligned when owned) */
    size_t bytes;  /* bytes in use */
    size_t cap;    /* bytes allocated (0 when mapped or empty) */
    bool mapped;   /* p points into a file mapping: read only */
} es__arr;

/* Make sure at least `bytes` are allocated and owned (copies mapped data,
 * grows geometrically, keeps the content).  ES_ENOMEM on failure, with the
 * array unchanged. */
int es__arr_reserve(es__arr *a, size_t bytes);
/* Make the array owned (copy of mapped data) without growing. */
int es__arr_own(es__arr *a);
/* Point at mapped data. */
void es__arr_map(es__arr *a, const void *p, size_t bytes);
void es__arr_free(es__arr *a);

/* ---- filters ----------------------------------------------------------------
 * A query's filter after resolution by the handle: an id passes when its
 * attribute value (col[id * stride]) is one of vals (sorted, unique).  The
 * matching ids are also given as slices of the attribute's posting list so
 * that a kind can score exactly the matching vectors when they are few. */
#define ES_IX_FILTER_MAX_VALS 4096
typedef struct es__filter {
    const int32_t *col;
    size_t stride;
    const int32_t *vals;
    int n_vals;
    const int32_t *const *slice; /* [n_slices] pointers into the posting ids */
    const size_t *slice_n;       /* [n_slices] lengths */
    int n_slices;
    size_t n_match;              /* total matching ids */
} es__filter;

static inline bool es__filter_ok(const es__filter *f, size_t id) {
    if (!f) return true;
    int32_t v = f->col[id * f->stride];
    int lo = 0, hi = f->n_vals;
    while (lo < hi) {
        int mid = (lo + hi) >> 1;
        if (f->vals[mid] < v) lo = mid + 1;
        else hi = mid;
    }
    return lo < f->n_vals && f->vals[lo] == v;
}

/* ---- top-k heaps ------------------------------------------------------------
 * A max-heap of (d, id) keeping the k smallest.  Ties are broken by id (the
 * larger id is worse) so results do not depend on scan order or threads. */
static inline bool es__worse(float da, int64_t ia, float db, int64_t ib) {
    return da > db || (da == db && ia > ib);
}

static inline void es__heap_sift_down(float *hd, int64_t *hi, int size, int i) {
    float d = hd[i];
    int64_t id = hi[i];
    for (;;) {
        int l = 2 * i + 1, r = l + 1, w = i;
        float wd = d;
        int64_t wi = id;
        if (l < size && es__worse(hd[l], hi[l], wd, wi)) w = l, wd = hd[l], wi = hi[l];
        if (r < size && es__worse(hd[r], hi[r], wd, wi)) w = r, wd = hd[r], wi = hi[r];
        if (w == i) break;
        hd[i] = hd[w];
        hi[i] = hi[w];
        i = w;
    }
    hd[i] = d;
    hi[i] = id;
}

/* Offer (d, id) to a heap of capacity k holding *size entries. */
static inline void es__heap_push(float *hd, int64_t *hi, int *size, int k, float d, int64_t id) {
    if (*size < k) {
        int i = (*size)++;
        while (i > 0) {
            int p = (i - 1) >> 1;
            if (!es__worse(d, id, hd[p], hi[p])) break;
            hd[i] = hd[p];
            hi[i] = hi[p];
            i = p;
        }
        hd[i] = d;
        hi[i] = id;
    } else if (es__worse(hd[0], hi[0], d, id)) {
        hd[0] = d;
        hi[0] = id;
        es__heap_sift_down(hd, hi, *size, 0);
    }
}

/* Sort a heap of `size` entries ascending in place, then pad to k with
 * (INFINITY, -1). */
static inline void es__heap_finish(float *hd, int64_t *hi, int size, int k) {
    for (int n = size; n > 1; n--) {
        float d = hd[0];
        int64_t id = hi[0];
        hd[0] = hd[n - 1];
        hi[0] = hi[n - 1];
        es__heap_sift_down(hd, hi, n - 1, 0);
        hd[n - 1] = d;
        hi[n - 1] = id;
    }
    for (int i = size; i < k; i++) {
        hd[i] = INFINITY;
        hi[i] = -1;
    }
}

/* ---- per-thread scratch -------------------------------------------------------
 * Sized by the handle before a query loop; kinds carve their buffers from
 * `mem`.  `visited` is an epoch array for graph searches: a node is visited
 * in the current query when visited[id] == epoch. */
typedef struct es__scratch {
    unsigned char *mem;  /* kind arena */
    size_t cap;
    unsigned char *wmem; /* handle arena (transformed query, shortlists) */
    size_t wcap;
    uint32_t *visited;
    size_t visited_n;
    uint32_t epoch;
} es__scratch;

/* Grow an arena to at least `need` bytes (64-byte aligned, content lost). */
int es__arena_reserve(unsigned char **mem, size_t *cap, size_t need);
/* Carve `bytes` from *cur, 64-byte aligned; returns the start. */
static inline void *es__carve(unsigned char **cur, size_t bytes) {
    void *p = *cur;
    *cur += (bytes + 63) & ~(size_t)63;
    return p;
}
/* Bytes `es__carve` consumes for `bytes`. */
static inline size_t es__carved(size_t bytes) { return (bytes + 63) & ~(size_t)63; }
/* Start a new graph query: bump the epoch (clearing the array on wrap). */
static inline uint32_t es__visit_begin(es__scratch *s) {
    if (++s->epoch == 0) {
        memset(s->visited, 0, s->visited_n * sizeof *s->visited);
        s->epoch = 1;
    }
    return s->epoch;
}

/* ---- the kind interface ----------------------------------------------------------- */
typedef struct es__ix es__ix;

typedef struct es__ix_vt {
    const char *name;
    /* Learn codebooks / rotations / coarse centroids from n vectors.
     * NULL: the kind needs no training. */
    int (*train)(es__ix *ix, const float *x, size_t n, es_err *err);
    /* Append n vectors; they get ids ix->n .. ix->n + n - 1. */
    int (*add)(es__ix *ix, const float *x, size_t n, es_err *err);
    /* Arena bytes one query needs for k results. */
    size_t (*scratch_need)(const es__ix *ix, int k);
    /* Whether searches use the visited epoch array. */
    bool uses_visited;
    /* One query: k results, best first, padded (see above). */
    void (*search1)(const es__ix *ix, const float *q, int k, const es__filter *f, es__scratch *s, float *dist,
                    int64_t *ids);
    /* Optional: a batch of queries at once (flat uses BLAS).  NULL = loop
     * over search1.  Its workspace comes from ws->mem; returns a status. */
    int (*search_batch)(const es__ix *ix, size_t nq, const float *q, int k, const es__filter *f, float *dist,
                        int64_t *ids, int threads, es__scratch *ws, es_err *err);
    /* Bytes of everything the kind keeps. */
    size_t (*bytes)(const es__ix *ix);
    /* Persist / restore under a tensor-name prefix (metadata is written by the
     * handle; kinds store their arrays and the few numbers they learned). */
    int (*save)(const es__ix *ix, es_fwriter *w, const char *pfx, es_err *err);
    int (*load)(es__ix *ix, const es_file *f, const char *pfx, es_err *err);
    void (*destroy)(es__ix *ix);
} es__ix_vt;

/* Common head of every kind's structure. */
struct es__ix {
    const es__ix_vt *vt;
    int dim;       /* search dimension */
    int ip;        /* 1: inner product (scored -<q,x>), 0: squared L2 */
    size_t n;      /* vectors added */
    bool trained;
    int threads;   /* for training work inside the kind */
    es_index_params *p; /* the handle's parameters: live (ef_search, nprobe), and kinds
                           write back defaults they resolve at train time (nlist) */
};

/* Constructors: validate the kind options in p, allocate, fill the head. */
int es__flat_new(es__ix **out, int dim, int ip, es_index_params *p, es_err *err);
int es__sq8_new(es__ix **out, int dim, int ip, es_index_params *p, es_err *err);
int es__binary_new(es__ix **out, int dim, int ip, es_index_params *p, es_err *err);
int es__pq_new(es__ix **out, int dim, int ip, es_index_params *p, es_err *err);
int es__hnsw_new(es__ix **out, int dim, int ip, es_index_params *p, es_err *err);
int es__ivf_new(es__ix **out, int dim, int ip, es_index_params *p, es_err *err);

/* ---- codecs shared by the standalone kinds and IVF ----------------------------------
 * 8-bit scalar quantizer (sq8.c): x_j ~ bias_j + scale_j * code_j, with
 * bias = vmin + scale / 2 and scale = (vmax - vmin) / 256 per dimension
 * (the middle of each of 256 equal bins between the training min and max). */
typedef struct es__sq8 {
    int d;
    float *scale; /* [d] */
    float *bias;  /* [d] */
} es__sq8;
int es__sq8_train(es__sq8 *c, const float *x, size_t n, int d, es_err *err);
void es__sq8_encode(const es__sq8 *c, const float *x, uint8_t *code);
void es__sq8_decode(const es__sq8 *c, const uint8_t *code, float *x);
/* Query preparation into qp[d]: L2 -> q - bias; IP -> q * scale and
 * *cst = <q, bias>.  Then score = sq8_l2(qp, scale, code) or
 * -(cst + sq8_ip(qp, code)). */
void es__sq8_prep(const es__sq8 *c, const float *q, int ip, float *qp, float *cst);
void es__sq8_free(es__sq8 *c);
int es__sq8_save(const es__sq8 *c, es_fwriter *w, const char *pfx, es_err *err);
int es__sq8_load(es__sq8 *c, int d, const es_file *f, const char *pfx, es_err *err);

/* Product quantizer (pq.c): M sub-vectors of dsub = d / M components, each
 * coded by the nearest of ksub = 2^nbits centroids; an optional orthogonal
 * rotation R (OPQ) is applied to vectors before coding (x -> R x). */
typedef struct es__pq {
    int d, M, nbits, ksub, dsub;
    float *cb;    /* [M][ksub][dsub] */
    float *R;     /* [d][d] or NULL */
    float *cbt;   /* search cache: [M][dsub][ksub] transposed codebooks */
    float *cnorm; /* search cache: [M][ksub] squared centroid norms */
} es__pq;
/* Resolve M from p (0 = default), check it divides d and nbits in 1..8. */
int es__pq_init(es__pq *pq, int d, int M, int nbits, es_err *err);
int es__pq_train(es__pq *pq, const float *x, size_t n, int iters, int opq_iters, uint64_t seed, es_err *err);
/* Rotate (when R) and encode n vectors into codes[n][M]. */
int es__pq_encode_n(const es__pq *pq, const float *x, size_t n, uint8_t *codes, es_err *err);
/* Decode one code (in the rotated space). */
void es__pq_decode(const es__pq *pq, const uint8_t *code, float *x);
/* Rotate one vector into out[d] (copy when no rotation). */
void es__pq_rotate1(const es__pq *pq, const float *x, float *out);
/* Distance table of a rotated query: lut[m][j] = ||q_m - c_mj||^2 (L2) or
 * -<q_m, c_mj> (IP).  Uses the transposed cache, so that the inner loop
 * runs over centroids (contiguous, vectorised) instead of 4-8 components. */
void es__pq_lut(const es__pq *pq, const float *qr, int ip, float *lut);
void es__pq_free(es__pq *pq);
/* Bytes the codec holds in memory (codebooks, rotation, search caches). */
size_t es__pq_bytes(const es__pq *pq);
int es__pq_save(const es__pq *pq, es_fwriter *w, const char *pfx, es_err *err);
int es__pq_load(es__pq *pq, int d, const es_file *f, const char *pfx, es_err *err);

/* ---- handle persistence under a prefix (index.c; used by muvera.c) ------------------ */
int es__index_write(const es_index *ix, es_fwriter *w, const char *pfx, es_err *e);
int es__index_read(es_index **out, const es_file *f, const char *pfx, es_err *e);
/* A multi-vector index from an open container (muvera.c; the fuzz target
 * uses it on in-memory files).  The result points into f: keep f open. */
int es__multi_read(es_multi **out, const es_file *f, es_err *e);

/* ---- exact search kernel (flat.c) -------------------------------------------------
 * k nearest rows of x[nx][d] for each of q[nq][d]; xnorm[nx] = ||x_i||^2
 * (needed for L2, may be NULL for IP).  Blocked over queries and rows with
 * cblas_sgemm when nq is large enough, direct SIMD kernels otherwise.
 * Distances are exact squared L2 (recomputed for the k winners) or -<q,x>.
 * The BLAS path's workspace comes from ws->mem (grown when needed, so a
 * repeated search allocates nothing) or, with ws NULL, is allocated for the
 * call. */
int es__knn_exact(const float *q, size_t nq, const float *x, const float *xnorm, size_t nx, int d, int ip, int k,
                  const es__filter *f, float *dist, int64_t *ids, int threads, es__scratch *ws, es_err *err);
/* Make OpenBLAS single-threaded around a region whose own OpenMP threads
 * each call BLAS (two thread pools on the same cores fight); returns a token
 * for es__blas_single_end.  Reference counted, so concurrent searches
 * restore the previous setting only when the last one ends. */
int es__blas_single_begin(void);
void es__blas_single_end(int prev);
/* ||x_i||^2 for n rows. */
void es__row_norms(const float *x, size_t n, int d, float *out);

/* ---- k-means (kmeans.c) ------------------------------------------------------------
 * Lloyd iterations on x[n][d] with squared L2, k centroids written to c[k][d].
 * Initialisation: k distinct rows drawn with the seed; an empty cluster takes
 * half of the largest one.  Requires n >= k.  Deterministic for a seed. */
int es__kmeans(const float *x, size_t n, int d, int k, int iters, uint64_t seed, float *c, es_err *err);
/* Nearest centroid (squared L2) of each row: assign[n] and optional dist[n]. */
int es__kmeans_assign(const float *x, size_t n, int d, const float *c, int k, int32_t *assign, float *dist,
                      es_err *err);
/* Draw min(n, max) distinct rows (sorted ids) into *out (allocated). */
int es__sample_rows(size_t n, size_t max, uint64_t seed, size_t **out, size_t *n_out);

/* ---- linear algebra (pca.c) -----------------------------------------------------------
 * Principal directions of x[n][d]: rows of P[d][d] sorted by decreasing
 * variance, var[d] the variances.  center=1 subtracts the mean (written to
 * mean[d] when not NULL), center=0 uses the second moment (keeps inner
 * products: used for IP/cosine). */
int es__pca(const float *x, size_t n, int d, int center, float *mean, float *P, float *var, es_err *err);
/* Orthogonal R[d][d] minimising ||A R - B||_F given M = A^T B (d x d):
 * R = U V^T from the SVD of M. */
int es__procrustes(const float *M, int d, float *R, es_err *err);
/* Random orthogonal d x d matrix. */
int es__random_rotation(int d, uint64_t seed, float *R, es_err *err);
/* y[n][dout] = x[n][din] * A^T where A is [dout][din] (rows are directions). */
void es__project(const float *x, size_t n, int din, const float *A, int dout, float *y);

/* ---- file helpers (index.c) -------------------------------------------------------------
 * Fetch tensor pfx+name, checking dtype and shape exactly (shape[i] == 0 in
 * `want` accepts any extent and reports it back).  On success *data points
 * into the mapping. */
int es__ix_tensor(const es_file *f, const char *pfx, const char *name, es_dtype dt, int ndim, uint64_t *shape,
                  const void **data, es_err *err);
/* Add a tensor named pfx+name. */
int es__ix_put(es_fwriter *w, const char *pfx, const char *name, es_dtype dt, const void *data, int ndim,
               uint64_t d0, uint64_t d1, es_err *err);
/* Metadata number under pfx+key, strictly parsed and range checked. */
int es__ix_meta_long(const es_file *f, const char *pfx, const char *key, long long lo, long long hi,
                     long long *out, es_err *err);
int es__ix_meta_put(es_fwriter *w, const char *pfx, const char *key, long long v, es_err *err);

/* Check that x[n][d] is finite; message names the first bad value. */
int es__check_finite(const float *x, size_t n, int d, const char *what, es_err *err);

/* ---- local intrinsic dimension (hnsw.c) ---------------------------------------------------
 * MLE estimate (Levina-Bickel) per row from its k nearest neighbours among
 * a sample of rows. */
int es__lid_estimate(const float *x, size_t n, int d, int k, size_t sample, uint64_t seed, float *lid, es_err *err);

/* ---- vector readers (vecio.c) ---------------------------------------------------------------
 * Parse a whole in-memory file; `name` is used in messages.  Public readers
 * map the file and call this; fuzz targets call it directly. */
int es__vecs_parse(es_vecs *out, const unsigned char *buf, size_t len, const char *name,
                   const es_vec_read_params *p, es_err *err);

#endif /* ES_INDEX_INTERNAL_H */
