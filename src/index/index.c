/*
 * index.c — the public es_index handle: parameters, the input transform
 * (cosine normalisation, PCA rotation, Matryoshka prefix), full-vector
 * re-ranking, integer attributes and filters, the per-thread scratch pool,
 * and saving/loading through the embstore container (src/format/file.h).
 *
 * Pipeline of a search:
 *   query -> check finite -> [normalise] -> [PCA / prefix] -> kind search
 *         (rerank * k candidates when re-ranking) -> [exact re-score with the
 *         full vectors] -> top k -> public distance convention.
 * The kind sees vectors of the search dimension only; it never knows about
 * transforms, filters' attribute tables or the public distance sign.
 *
 * File layout (metadata keys and tensors under the prefix "index."): every
 * parameter as text, "n", "n_attr", "keep_full", then the kind's tensors,
 * "pca" [sdim][dim], "pca_mean" [dim], "full" [n][dim], "attrs" [n][n_attr].
 */
#include "index.h"

#include "core/simd.h"

#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>

#define IX_TYPE "index" /* value of the "embstore.type" key, as models use "model" */
#define IX_FORMAT_VERSION 1
#define TRANSFORM_CHUNK 16384

struct es_index {
    es_index_params p;  /* resolved parameters (kinds write back what they resolve) */
    int dim, sdim;
    int ip;             /* the kind's metric: 1 for IP and cosine */
    bool identity;      /* no normalisation, rotation or truncation */
    bool keep_full;     /* full vectors kept for re-ranking */
    bool trained;
    es__ix *ix;
    float *pca;         /* [sdim][dim] or NULL */
    float *pca_mean;    /* [dim] or NULL */
    es__arr full;       /* float [n][dim] */
    int n_attr;
    size_t attr_rows;
    es__arr attrs;      /* int32 [attr_rows][n_attr] */
    int32_t *post_val;  /* [n_attr][attr_rows] values sorted per attribute */
    int32_t *post_id;   /* [n_attr][attr_rows] the matching ids */
    double train_s, add_s;
    pthread_mutex_t mu;
    es__scratch **pool;
    int pool_n, pool_cap;
    es_file *file;
    /* The message of the last failed call other than a search, and when it
     * failed (err_clock below).  Search errors never touch the handle: they
     * go to the caller's es_err (es_index_search_ex) or to the calling
     * thread's search_err (es_index_search). */
    char errmsg[512];
    uint64_t err_stamp;
};

/* ---- small shared helpers ------------------------------------------------------------ */
int es__arr_reserve(es__arr *a, size_t bytes) {
    if (!a->mapped && a->cap >= bytes && a->p) return ES_OK;
    size_t cap = a->mapped ? bytes : ES_MAX(bytes, a->cap + a->cap / 2);
    if (cap < 64) cap = 64;
    void *p = es__alloc_aligned(cap);
    if (!p) return ES_ENOMEM;
    if (a->bytes) memcpy(p, a->p, a->bytes);
    if (!a->mapped) es__free_aligned(a->p);
    a->p = p;
    a->cap = cap;
    a->mapped = false;
    return ES_OK;
}

int es__arr_own(es__arr *a) { return a->mapped ? es__arr_reserve(a, a->bytes) : ES_OK; }

void es__arr_map(es__arr *a, const void *p, size_t bytes) {
    es__arr_free(a);
    a->p = (void *)p;
    a->bytes = bytes;
    a->cap = 0;
    a->mapped = true;
}

void es__arr_free(es__arr *a) {
    if (!a->mapped) es__free_aligned(a->p);
    memset(a, 0, sizeof *a);
}

int es__arena_reserve(unsigned char **mem, size_t *cap, size_t need) {
    if (*cap >= need && *mem) return ES_OK;
    size_t c = ES_MAX(need, (size_t)256);
    unsigned char *p = es__alloc_aligned(c);
    if (!p) return ES_ENOMEM;
    es__free_aligned(*mem);
    *mem = p;
    *cap = c;
    return ES_OK;
}

int es__check_finite(const float *x, size_t n, int d, const char *what, es_err *err) {
    for (size_t i = 0; i < n; i++)
        for (int j = 0; j < d; j++) {
            float v = x[i * (size_t)d + (size_t)j];
            if (!isfinite(v))
                return es__err(err, ES_EINVAL, "%s: vector %zu, component %d is %s", what, i, j,
                               isnan(v) ? "NaN" : "infinite");
        }
    return ES_OK;
}

static int tname(char *out, const char *pfx, const char *name, es_err *err) {
    int n = snprintf(out, ES_TENSOR_NAME_MAX, "%s%s", pfx, name);
    if (n < 0 || n >= ES_TENSOR_NAME_MAX) return es__err(err, ES_EINVAL, "tensor name %s%s too long", pfx, name);
    return ES_OK;
}

int es__ix_tensor(const es_file *f, const char *pfx, const char *name, es_dtype dt, int ndim, uint64_t *shape,
                  const void **data, es_err *err) {
    char full[ES_TENSOR_NAME_MAX];
    int rc = tname(full, pfx, name, err);
    if (rc) return rc;
    *data = NULL;
    const es_tensor_ref *t = es__file_tensor(f, full);
    if (!t) {
        /* Empty arrays are not written; a tensor of known zero size (or of
         * open size, which the caller then checks) may be absent. */
        bool zero = false, any = false;
        for (int i = 0; i < ndim; i++) {
            if (shape[i] == ES_IX_ANY) any = true;
            else if (shape[i] == 0) zero = true;
        }
        if (zero || any) {
            for (int i = 0; i < ndim; i++)
                if (shape[i] == ES_IX_ANY) shape[i] = 0;
            return ES_OK;
        }
        return es__err(err, ES_EFORMAT, "tensor %s is missing", full);
    }
    if (t->dtype != dt || t->ndim != ndim)
        return es__err(err, ES_EFORMAT, "tensor %s: expected %d-D %s, found %d-D %s", full, ndim, es__dtype_name(dt),
                       t->ndim, es__dtype_name(t->dtype));
    uint64_t count = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] != ES_IX_ANY && t->shape[i] != shape[i])
            return es__err(err, ES_EFORMAT, "tensor %s: dimension %d is %llu, expected %llu", full, i,
                           (unsigned long long)t->shape[i], (unsigned long long)shape[i]);
        shape[i] = t->shape[i];
        if (__builtin_mul_overflow(count, t->shape[i], &count))
            return es__err(err, ES_EFORMAT, "tensor %s: shape overflows", full);
    }
    size_t eb = es__dtype_bytes(dt, 1), want;
    if (!es__mul_size((size_t)count, eb, &want) || count > SIZE_MAX || t->nbytes != want)
        return es__err(err, ES_EFORMAT, "tensor %s: %zu bytes for %llu elements", full, t->nbytes,
                       (unsigned long long)count);
    if (want && (!t->data || ((uintptr_t)t->data % eb) != 0))
        return es__err(err, ES_EFORMAT, "tensor %s: data missing or misaligned", full);
    *data = want ? t->data : NULL;
    return ES_OK;
}

int es__ix_put(es_fwriter *w, const char *pfx, const char *name, es_dtype dt, const void *data, int ndim,
               uint64_t d0, uint64_t d1, es_err *err) {
    uint64_t count = ndim == 1 ? d0 : d0 * d1;
    if (count == 0) return ES_OK; /* empty arrays are not written (see es__ix_tensor) */
    es_tensor_ref t;
    memset(&t, 0, sizeof t);
    int rc = tname(t.name, pfx, name, err);
    if (rc) return rc;
    t.dtype = dt;
    t.ndim = ndim;
    t.shape[0] = d0;
    if (ndim > 1) t.shape[1] = d1;
    t.data = (void *)data;
    t.nbytes = es__dtype_bytes(dt, count);
    rc = es__fwriter_tensor(w, &t);
    if (rc) return es__err(err, rc, "%s", es__fwriter_errmsg(w));
    return ES_OK;
}

int es__ix_meta_long(const es_file *f, const char *pfx, const char *key, long long lo, long long hi, long long *out,
                     es_err *err) {
    char k[128];
    snprintf(k, sizeof k, "%s%s", pfx, key);
    const char *v = es__file_meta(f, k);
    if (!v) return es__err(err, ES_EFORMAT, "metadata %s is missing", k);
    long long x;
    if (!es__parse_long(v, strlen(v), &x) || x < lo || x > hi)
        return es__err(err, ES_EFORMAT, "metadata %s = '%.40s' is not an integer in [%lld, %lld]", k, v, lo, hi);
    *out = x;
    return ES_OK;
}

int es__ix_meta_put(es_fwriter *w, const char *pfx, const char *key, long long v, es_err *err) {
    char k[128];
    snprintf(k, sizeof k, "%s%s", pfx, key);
    int rc = es__fwriter_metaf(w, k, "%lld", v);
    if (rc) return es__err(err, rc, "%s", es__fwriter_errmsg(w));
    return ES_OK;
}

/* ---- names ------------------------------------------------------------------------------ */
static const char *const kind_names[] = {"flat", "sq8", "binary", "pq", "hnsw", "ivf"};
static const char *const metric_names[] = {"l2", "ip", "cosine"};
static const char *const order_names[] = {"input", "random", "lid_desc", "lid_asc"};

const char *es_index_kind_name(es_index_kind k) {
    return (unsigned)k < ES_ARRAY_LEN(kind_names) ? kind_names[k] : "unknown";
}
const char *es_metric_name(es_metric m) { return (unsigned)m < ES_ARRAY_LEN(metric_names) ? metric_names[m] : "unknown"; }

static int parse_name(const char *s, const char *const *names, int n) {
    for (int i = 0; s && i < n; i++)
        if (!strcmp(s, names[i])) return i;
    return -1;
}
int es_index_kind_parse(const char *s, es_index_kind *out) {
    int i = parse_name(s, kind_names, (int)ES_ARRAY_LEN(kind_names));
    if (i < 0) return ES_EINVAL;
    *out = (es_index_kind)i;
    return ES_OK;
}
int es_metric_parse(const char *s, es_metric *out) {
    int i = parse_name(s, metric_names, (int)ES_ARRAY_LEN(metric_names));
    if (i < 0) return ES_EINVAL;
    *out = (es_metric)i;
    return ES_OK;
}

es_index_params es_index_params_default(void) {
    es_index_params p;
    memset(&p, 0, sizeof p);
    p.kind = ES_INDEX_FLAT;
    p.metric = ES_METRIC_L2;
    p.pq_bits = 8;
    p.hnsw_m = 16;
    p.ef_construction = 200;
    p.ef_search = 64;
    p.order = ES_ORDER_INPUT;
    p.nprobe = 8;
    p.ivf_codes = ES_INDEX_FLAT;
    p.kmeans_iters = 20;
    p.train_max = 65536;
    p.seed = 1;
    return p;
}

/* ---- error helper -----------------------------------------------------------------------
 * Searches may run in several threads on one index at once, so their
 * errors cannot live in the handle: es_index_search keeps the last one of
 * each thread in search_err (thread-local), and es_index_errmsg shows it to
 * that thread when it is more recent than the handle's own message.  Every
 * failure takes a stamp from one process-wide clock to order the two; a
 * new index takes a stamp too, so a record left by a freed index at the
 * same address is older than anything the new one says. */
static _Atomic uint64_t err_clock;
static uint64_t err_tick(void) { return atomic_fetch_add(&err_clock, 1) + 1; }

static _Thread_local struct {
    const es_index *ix; /* compared, never dereferenced */
    uint64_t stamp;
    char msg[512];
} search_err;

static int fail(es_index *ix, const es_err *e) {
    snprintf(ix->errmsg, sizeof ix->errmsg, "%s", e->msg);
    ix->err_stamp = err_tick();
    return e->code;
}
static int failf(es_index *ix, int code, const char *fmt, ...) ES_PRINTF(3, 4);
static int failf(es_index *ix, int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ix->errmsg, sizeof ix->errmsg, fmt, ap);
    va_end(ap);
    ix->err_stamp = err_tick();
    return code;
}

const char *es_index_errmsg(const es_index *ix) {
    if (!ix) return "no index";
    if (search_err.ix == ix && search_err.stamp > ix->err_stamp) return search_err.msg;
    return ix->errmsg;
}

/* ---- create / free ------------------------------------------------------------------------ */
static bool exact_kind(const es_index_params *p) {
    return p->kind == ES_INDEX_FLAT || p->kind == ES_INDEX_HNSW ||
           (p->kind == ES_INDEX_IVF && p->ivf_codes == ES_INDEX_FLAT);
}

static int create(es_index **out, const es_index_params *pin, es_err *err) {
    *out = NULL;
    es_index_params p = *pin;
    if (p.dim < 1 || p.dim > ES_IX_MAX_DIM)
        return es__err(err, ES_EINVAL, "index: dimension must be in [1, %d], got %d", ES_IX_MAX_DIM, p.dim);
    if ((unsigned)p.kind >= ES_ARRAY_LEN(kind_names)) return es__err(err, ES_EINVAL, "index: unknown kind %d", p.kind);
    if ((unsigned)p.metric >= ES_ARRAY_LEN(metric_names))
        return es__err(err, ES_EINVAL, "index: unknown metric %d", p.metric);
    if (p.search_dim < 0 || p.search_dim > p.dim)
        return es__err(err, ES_EINVAL, "index: search_dim must be in [0, %d], got %d", p.dim, p.search_dim);
    if (p.rerank < 0 || p.rerank > 10000) return es__err(err, ES_EINVAL, "index: rerank must be in [0, 10000], got %d", p.rerank);
    if (p.kmeans_iters < 1 || p.kmeans_iters > 1000)
        return es__err(err, ES_EINVAL, "index: kmeans_iters must be in [1, 1000], got %d", p.kmeans_iters);
    if (p.itq_iters < 0 || p.itq_iters > 10000 || p.opq_iters < 0 || p.opq_iters > 1000)
        return es__err(err, ES_EINVAL, "index: itq_iters / opq_iters out of range");
    if (p.train_max < 1) p.train_max = 65536;
    if (p.pca != 0 && p.pca != 1) return es__err(err, ES_EINVAL, "index: pca must be 0 or 1");
    es_index *ix = es__calloc(1, sizeof *ix);
    if (!ix) return es__err(err, ES_ENOMEM, "index: out of memory");
    ix->p = p;
    ix->err_stamp = err_tick();
    ix->dim = p.dim;
    ix->sdim = p.search_dim ? p.search_dim : p.dim;
    ix->p.search_dim = ix->sdim;
    ix->ip = p.metric != ES_METRIC_L2;
    ix->identity = p.metric != ES_METRIC_COSINE && !p.pca && ix->sdim == ix->dim;
    ix->keep_full = p.rerank > 0 && !(ix->sdim == ix->dim && !p.pca && exact_kind(&p));
    pthread_mutex_init(&ix->mu, NULL);
    int rc;
    switch (p.kind) {
    case ES_INDEX_FLAT: rc = es__flat_new(&ix->ix, ix->sdim, ix->ip, &ix->p, err); break;
    case ES_INDEX_SQ8: rc = es__sq8_new(&ix->ix, ix->sdim, ix->ip, &ix->p, err); break;
    case ES_INDEX_BINARY: rc = es__binary_new(&ix->ix, ix->sdim, ix->ip, &ix->p, err); break;
    case ES_INDEX_PQ: rc = es__pq_new(&ix->ix, ix->sdim, ix->ip, &ix->p, err); break;
    case ES_INDEX_HNSW: rc = es__hnsw_new(&ix->ix, ix->sdim, ix->ip, &ix->p, err); break;
    default: rc = es__ivf_new(&ix->ix, ix->sdim, ix->ip, &ix->p, err); break;
    }
    if (rc) {
        pthread_mutex_destroy(&ix->mu);
        es__free(ix);
        return rc;
    }
    ix->ix->threads = p.threads;
    ix->trained = !p.pca && ix->ix->trained;
    *out = ix;
    return ES_OK;
}

int es_index_create(es_index **out, const es_index_params *p, es_err *err) {
    if (!out || !p) return es__err(err, ES_EINVAL, "index: NULL argument");
    return create(out, p, err);
}

void es_index_free(es_index *ix) {
    if (!ix) return;
    if (ix->ix) ix->ix->vt->destroy(ix->ix);
    es__free_aligned(ix->pca);
    es__free(ix->pca_mean);
    es__arr_free(&ix->full);
    es__arr_free(&ix->attrs);
    es__free(ix->post_val);
    es__free(ix->post_id);
    for (int i = 0; i < ix->pool_n; i++) {
        es__scratch *s = ix->pool[i];
        es__free_aligned(s->mem);
        es__free_aligned(s->wmem);
        es__free(s->visited);
        es__free(s);
    }
    es__free(ix->pool);
    pthread_mutex_destroy(&ix->mu);
    es__file_close(ix->file);
    es__free(ix);
}

size_t es_index_size(const es_index *ix) { return ix ? ix->ix->n : 0; }
int es_index_dim(const es_index *ix) { return ix ? ix->dim : 0; }
const es_index_params *es_index_params_of(const es_index *ix) { return ix ? &ix->p : NULL; }
int es_index_n_attrs(const es_index *ix) { return ix ? ix->n_attr : 0; }
double es_index_build_seconds(const es_index *ix) { return ix ? ix->train_s + ix->add_s : 0.0; }

size_t es_index_bytes(const es_index *ix) {
    if (!ix) return 0;
    size_t b = ix->ix->vt->bytes(ix->ix) + ix->full.bytes + ix->attrs.bytes;
    b += 2 * ix->attr_rows * (size_t)ix->n_attr * sizeof(int32_t);
    if (ix->pca) b += (size_t)ix->sdim * ix->dim * sizeof(float);
    if (ix->pca_mean) b += (size_t)ix->dim * sizeof(float);
    return b;
}

/* ---- transform ------------------------------------------------------------------------------ */
static void normalize(float *x, int d) {
    float s = es__dot(x, x, (size_t)d);
    if (s > 0) {
        float inv = 1.0f / sqrtf(s);
        for (int j = 0; j < d; j++) x[j] *= inv;
    }
}

/* Full vector as stored for re-ranking: normalised for cosine. */
static void to_full(const es_index *ix, const float *x, float *out) {
    memcpy(out, x, (size_t)ix->dim * sizeof *out);
    if (ix->p.metric == ES_METRIC_COSINE) normalize(out, ix->dim);
}

/* Search-space vectors y[n][sdim] from x[n][dim]; buf holds n*dim floats. */
static void transform(const es_index *ix, const float *x, size_t n, float *buf, float *y) {
    size_t d = (size_t)ix->dim, sd = (size_t)ix->sdim;
    for (size_t i = 0; i < n; i++) {
        to_full(ix, x + i * d, buf + i * d);
        if (ix->pca_mean)
            for (size_t j = 0; j < d; j++) buf[i * d + j] -= ix->pca_mean[j];
    }
    if (ix->pca) {
        if (n == 1) {
            for (size_t r = 0; r < sd; r++) y[r] = es__dot(ix->pca + r * d, buf, d);
        } else {
            es__project(buf, n, ix->dim, ix->pca, ix->sdim, y);
        }
    } else {
        for (size_t i = 0; i < n; i++) memcpy(y + i * sd, buf + i * d, sd * sizeof *y);
    }
    if (ix->p.metric == ES_METRIC_COSINE && ix->sdim < ix->dim)
        for (size_t i = 0; i < n; i++) normalize(y + i * sd, ix->sdim);
}

/* ---- train / add --------------------------------------------------------------------------- */
static int train(es_index *ix, size_t n, const float *x, es_err *e) {
    if (n == 0) return es__err(e, ES_EINVAL, "index: cannot train on an empty set of vectors");
    if (ix->ix->n > 0) return es__err(e, ES_EINVAL, "index: train must come before the first add");
    int rc = es__check_finite(x, n, ix->dim, "training vectors", e);
    if (rc) return rc;
    double t0 = es__now();
    size_t *pick = NULL, m = 0;
    if (es__sample_rows(n, ix->p.train_max, ix->p.seed ^ UINT64_C(0x747261696e), &pick, &m))
        return es__err(e, ES_ENOMEM, "index: out of memory sampling training vectors");
    size_t d = (size_t)ix->dim, sd = (size_t)ix->sdim;
    float *xs = es__alloc_aligned(m * d * sizeof *xs), *buf = es__alloc_aligned(m * d * sizeof *buf);
    float *ys = es__alloc_aligned(m * sd * sizeof *ys);
    float *P = NULL, *mean = NULL;
    if (!xs || !buf || !ys) {
        rc = es__err(e, ES_ENOMEM, "index: out of memory for %zu training vectors", m);
        goto out;
    }
    for (size_t i = 0; i < m; i++) to_full(ix, x + pick[i] * d, xs + i * d);
    if (ix->p.pca) {
        P = es__alloc_aligned(d * d * sizeof *P);
        mean = es__malloc(d * sizeof *mean);
        if (!P || !mean) {
            rc = es__err(e, ES_ENOMEM, "index: out of memory for PCA");
            goto out;
        }
        /* Centre only for L2: a shift changes inner products but not L2. */
        if ((rc = es__pca(xs, m, ix->dim, !ix->ip, mean, P, NULL, e))) goto out;
        es__free_aligned(ix->pca);
        es__free(ix->pca_mean);
        ix->pca = P;
        ix->pca_mean = ix->ip ? NULL : mean;
        if (ix->ip) es__free(mean);
        P = NULL;
        mean = NULL;
    }
    /* xs is already normalised: transform from raw copies would normalise
     * twice, which is harmless, so reuse transform for one code path. */
    transform(ix, xs, m, buf, ys);
    if (ix->ix->vt->train && (rc = ix->ix->vt->train(ix->ix, ys, m, e))) goto out;
    ix->trained = true;
    ix->train_s += es__now() - t0;
out:
    es__free(pick);
    es__free_aligned(xs);
    es__free_aligned(buf);
    es__free_aligned(ys);
    es__free_aligned(P);
    es__free(mean);
    return rc;
}

int es_index_train(es_index *ix, size_t n, const float *x) {
    if (!ix) return ES_EINVAL;
    if (!x && n) return failf(ix, ES_EINVAL, "index: NULL vectors");
    es_err e = {0};
    int rc = train(ix, n, x, &e);
    return rc ? fail(ix, &e) : ES_OK;
}

int es_index_add(es_index *ix, size_t n, const float *x) {
    if (!ix) return ES_EINVAL;
    if (n == 0) return ES_OK;
    if (!x) return failf(ix, ES_EINVAL, "index: NULL vectors");
    es_err e = {0};
    size_t old = ix->ix->n, tot;
    if (!es__add_size(old, n, &tot) || tot > ES_IX_MAX_N)
        return failf(ix, ES_ERANGE, "index: more than %zu vectors", ES_IX_MAX_N);
    int rc = es__check_finite(x, n, ix->dim, "vectors to add", &e);
    if (rc) return fail(ix, &e);
    if (!ix->trained && (rc = train(ix, n, x, &e))) return fail(ix, &e);
    double t0 = es__now();
    size_t d = (size_t)ix->dim, sd = (size_t)ix->sdim;
    if (ix->keep_full) {
        if (es__arr_reserve(&ix->full, tot * d * sizeof(float)))
            return failf(ix, ES_ENOMEM, "index: out of memory keeping %zu full vectors", n);
    }
    if (ix->identity) {
        rc = ix->ix->vt->add(ix->ix, x, n, &e);
    } else {
        float *buf = es__alloc_aligned(n * d * sizeof *buf), *y = es__alloc_aligned(n * sd * sizeof *y);
        if (!buf || !y) rc = es__err(&e, ES_ENOMEM, "index: out of memory transforming %zu vectors", n);
        else {
            transform(ix, x, n, buf, y);
            rc = ix->ix->vt->add(ix->ix, y, n, &e);
        }
        es__free_aligned(buf);
        es__free_aligned(y);
    }
    if (rc) return fail(ix, &e);
    if (ix->keep_full) {
        float *f = (float *)ix->full.p + old * d;
        for (size_t i = 0; i < n; i++) to_full(ix, x + i * d, f + i * d);
        ix->full.bytes = tot * d * sizeof(float);
    }
    ix->add_s += es__now() - t0;
    return ES_OK;
}

/* ---- attributes ------------------------------------------------------------------------------ */
typedef struct {
    int32_t v, id;
} vpair;
static int cmp_vpair(const void *a, const void *b) {
    const vpair *x = a, *y = b;
    if (x->v != y->v) return x->v < y->v ? -1 : 1;
    return (x->id > y->id) - (x->id < y->id);
}

/* Posting lists: per attribute, ids sorted by value. */
static int build_postings(es_index *ix, es_err *e) {
    size_t n = ix->attr_rows, na = (size_t)ix->n_attr;
    es__free(ix->post_val);
    es__free(ix->post_id);
    ix->post_val = ix->post_id = NULL;
    if (!n || !na) return ES_OK;
    ix->post_val = es__malloc(n * na * sizeof(int32_t));
    ix->post_id = es__malloc(n * na * sizeof(int32_t));
    vpair *tmp = es__malloc(n * sizeof *tmp);
    if (!ix->post_val || !ix->post_id || !tmp) {
        es__free(tmp);
        return es__err(e, ES_ENOMEM, "index: out of memory for attribute postings");
    }
    const int32_t *a = ix->attrs.p;
    for (size_t c = 0; c < na; c++) {
        for (size_t i = 0; i < n; i++) tmp[i] = (vpair){a[i * na + c], (int32_t)i};
        qsort(tmp, n, sizeof *tmp, cmp_vpair);
        for (size_t i = 0; i < n; i++) {
            ix->post_val[c * n + i] = tmp[i].v;
            ix->post_id[c * n + i] = tmp[i].id;
        }
    }
    es__free(tmp);
    return ES_OK;
}

int es_index_set_attrs(es_index *ix, size_t n, int n_attr, const int32_t *attrs) {
    if (!ix) return ES_EINVAL;
    if (n != ix->ix->n)
        return failf(ix, ES_EINVAL, "index: attributes given for %zu vectors, the index holds %zu", n, ix->ix->n);
    if (n_attr < 0 || n_attr > ES_IX_MAX_ATTR)
        return failf(ix, ES_EINVAL, "index: %d attributes per vector (allowed 0..%d)", n_attr, ES_IX_MAX_ATTR);
    if (n_attr > 0 && n > 0 && !attrs) return failf(ix, ES_EINVAL, "index: NULL attributes");
    es__arr na = {0};
    size_t b = n * (size_t)n_attr * sizeof(int32_t);
    if (b && es__arr_reserve(&na, b)) return failf(ix, ES_ENOMEM, "index: out of memory for attributes");
    if (b) memcpy(na.p, attrs, b);
    na.bytes = b;
    es__arr_free(&ix->attrs);
    ix->attrs = na;
    ix->n_attr = n_attr;
    ix->attr_rows = n;
    es_err e = {0};
    int rc = build_postings(ix, &e);
    if (rc) {
        es__arr_free(&ix->attrs);
        ix->n_attr = 0;
        ix->attr_rows = 0;
        return fail(ix, &e);
    }
    return ES_OK;
}

/* ---- scratch pool ------------------------------------------------------------------------------ */
static es__scratch *pool_get(es_index *ix) {
    es__scratch *s = NULL;
    pthread_mutex_lock(&ix->mu);
    if (ix->pool_n > 0) s = ix->pool[--ix->pool_n];
    pthread_mutex_unlock(&ix->mu);
    if (!s) s = es__calloc(1, sizeof *s);
    return s;
}

static void pool_put(es_index *ix, es__scratch *s) {
    if (!s) return;
    pthread_mutex_lock(&ix->mu);
    if (ix->pool_n == ix->pool_cap) {
        int cap = ix->pool_cap ? 2 * ix->pool_cap : 4;
        es__scratch **np = es__realloc(ix->pool, (size_t)cap * sizeof *np);
        if (np) {
            ix->pool = np;
            ix->pool_cap = cap;
        }
    }
    bool kept = ix->pool_n < ix->pool_cap;
    if (kept) ix->pool[ix->pool_n++] = s;
    pthread_mutex_unlock(&ix->mu);
    if (!kept) {
        es__free_aligned(s->mem);
        es__free_aligned(s->wmem);
        es__free(s->visited);
        es__free(s);
    }
}

static int scratch_ready(const es_index *ix, es__scratch *s, size_t need, size_t wneed) {
    if (es__arena_reserve(&s->mem, &s->cap, need) || es__arena_reserve(&s->wmem, &s->wcap, wneed)) return ES_ENOMEM;
    if (ix->ix->vt->uses_visited && s->visited_n < ix->ix->n) {
        uint32_t *v = es__calloc(ix->ix->n, sizeof *v);
        if (!v) return ES_ENOMEM;
        es__free(s->visited);
        s->visited = v;
        s->visited_n = ix->ix->n;
        s->epoch = 0;
    }
    return ES_OK;
}

/* ---- search --------------------------------------------------------------------------------------- */
typedef struct {
    es__filter f;
    const int32_t *slice[ES_IX_FILTER_MAX_VALS];
    size_t slice_n[ES_IX_FILTER_MAX_VALS];
    int32_t vals[ES_IX_FILTER_MAX_VALS];
} filter_buf;

static int cmp_i32(const void *a, const void *b) {
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

static int resolve_filter(const es_index *ix, const es_filter *in, filter_buf *fb, es_err *e) {
    if (in->attr < 0 || in->attr >= ix->n_attr)
        return es__err(e, ES_EINVAL, "index: filter on attribute %d, but vectors carry %d attribute(s)", in->attr,
                       ix->n_attr);
    if (ix->attr_rows != ix->ix->n)
        return es__err(e, ES_EINVAL, "index: attributes cover %zu of %zu vectors; call es_index_set_attrs after adding",
                       ix->attr_rows, ix->ix->n);
    if (in->n_values < 1 || in->n_values > ES_IX_FILTER_MAX_VALS || !in->values)
        return es__err(e, ES_EINVAL, "index: a filter needs 1..%d values, got %d", ES_IX_FILTER_MAX_VALS, in->n_values);
    int nv = in->n_values;
    memcpy(fb->vals, in->values, (size_t)nv * sizeof(int32_t));
    qsort(fb->vals, (size_t)nv, sizeof(int32_t), cmp_i32);
    int u = 0;
    for (int i = 0; i < nv; i++)
        if (i == 0 || fb->vals[i] != fb->vals[u - 1]) fb->vals[u++] = fb->vals[i];
    size_t n = ix->attr_rows, total = 0;
    const int32_t *pv = ix->post_val + (size_t)in->attr * n, *pid = ix->post_id + (size_t)in->attr * n;
    for (int i = 0; i < u; i++) {
        size_t lo = 0, hi = n;
        while (lo < hi) {
            size_t m = (lo + hi) / 2;
            if (pv[m] < fb->vals[i]) lo = m + 1;
            else hi = m;
        }
        size_t b = lo;
        hi = n;
        while (lo < hi) {
            size_t m = (lo + hi) / 2;
            if (pv[m] <= fb->vals[i]) lo = m + 1;
            else hi = m;
        }
        fb->slice[i] = pid + b;
        fb->slice_n[i] = lo - b;
        total += lo - b;
    }
    fb->f = (es__filter){.col = (const int32_t *)ix->attrs.p + in->attr,
                         .stride = (size_t)ix->n_attr,
                         .vals = fb->vals,
                         .n_vals = u,
                         .slice = fb->slice,
                         .slice_n = fb->slice_n,
                         .n_slices = u,
                         .n_match = total};
    return ES_OK;
}

/* Re-score the candidate ids ci[kk] exactly with the full vectors; best k
 * into (dist, ids). */
static void rerank(const es_index *ix, const float *qfull, const int64_t *ci, int kk, int k, float *dist,
                   int64_t *ids) {
    int size = 0;
    size_t d = (size_t)ix->dim;
    const float *full = ix->full.p;
    for (int t = 0; t < kk; t++) {
        if (ci[t] < 0) continue;
        const float *xv = full + (size_t)ci[t] * d;
        float s = ix->ip ? -es__dot(qfull, xv, d) : es__l2sq(qfull, xv, d);
        es__heap_push(dist, ids, &size, k, s, ci[t]);
    }
    es__heap_finish(dist, ids, size, k);
}

/* Handle-side working memory per query. */
static size_t wneed_of(const es_index *ix, int kk) {
    return 2 * es__carved((size_t)ix->dim * sizeof(float)) + es__carved((size_t)ix->sdim * sizeof(float)) +
           es__carved((size_t)kk * sizeof(float)) + es__carved((size_t)kk * sizeof(int64_t));
}

static void search_one(const es_index *ix, const float *q, int k, int kk, const es__filter *f, es__scratch *s,
                       float *dist, int64_t *ids) {
    if (ix->identity && kk == k) {
        ix->ix->vt->search1(ix->ix, q, k, f, s, dist, ids);
        return;
    }
    unsigned char *cur = s->wmem;
    float *buf = es__carve(&cur, (size_t)ix->dim * sizeof(float));
    float *qfull = es__carve(&cur, (size_t)ix->dim * sizeof(float));
    float *y = es__carve(&cur, (size_t)ix->sdim * sizeof(float));
    float *cd = es__carve(&cur, (size_t)kk * sizeof(float));
    int64_t *ci = es__carve(&cur, (size_t)kk * sizeof(int64_t));
    const float *qs = q;
    if (!ix->identity) {
        transform(ix, q, 1, buf, y);
        qs = y;
    }
    if (!ix->keep_full || kk == k) {
        ix->ix->vt->search1(ix->ix, qs, k, f, s, dist, ids);
        return;
    }
    ix->ix->vt->search1(ix->ix, qs, kk, f, s, cd, ci);
    to_full(ix, q, qfull);
    rerank(ix, qfull, ci, kk, k, dist, ids);
}

static int search_ex(es_index *ix, size_t nq, const float *q, int k, const es_filter *filter, int64_t *ids, float *dist,
                     es_err *e) {
    if (!ix) return es__err(e, ES_EINVAL, "index: NULL index");
    if (nq == 0) return ES_OK;
    if (!q || !ids || !dist) return es__err(e, ES_EINVAL, "index: NULL query or output array");
    size_t n = ix->ix->n;
    if (n == 0) return es__err(e, ES_EINVAL, "index: the index is empty (add vectors before searching)");
    if (k < 1 || k > ES_IX_MAX_K) return es__err(e, ES_EINVAL, "index: k must be in [1, %d], got %d", ES_IX_MAX_K, k);
    if ((size_t)k > n)
        return es__err(e, ES_EINVAL, "index: k = %d is larger than the %zu vectors in the index", k, n);
    int rc = es__check_finite(q, nq, ix->dim, "queries", e);
    if (rc) return rc;
    filter_buf *fb = NULL;
    const es__filter *f = NULL;
    if (filter) {
        fb = es__malloc(sizeof *fb);
        if (!fb) return es__err(e, ES_ENOMEM, "index: out of memory");
        if ((rc = resolve_filter(ix, filter, fb, e))) {
            es__free(fb);
            return rc;
        }
        f = &fb->f;
    }
    int kk = k;
    if (ix->keep_full && ix->p.rerank > 0) {
        size_t want = (size_t)k * (size_t)ix->p.rerank;
        kk = (int)ES_MIN(want, ES_MIN(n, (size_t)ES_IX_MAX_K));
    }
    int nt = es__nthreads(ix->p.threads);
    if ((size_t)nt > nq) nt = (int)nq;
    if (ix->identity && kk == k && ix->ix->vt->search_batch && nq >= 20) {
        es__scratch *s = pool_get(ix);
        if (!s) {
            rc = es__err(e, ES_ENOMEM, "index: out of memory for search scratch");
        } else {
            rc = ix->ix->vt->search_batch(ix->ix, nq, q, k, f, dist, ids, ix->p.threads, s, e);
            pool_put(ix, s);
        }
        goto convert;
    }
    {
        es__scratch *sc[256];
        if (nt > 256) nt = 256;
        size_t need = ix->ix->vt->scratch_need(ix->ix, kk), wneed = wneed_of(ix, kk);
        int got = 0;
        for (; got < nt; got++) {
            sc[got] = pool_get(ix);
            if (!sc[got] || scratch_ready(ix, sc[got], need, wneed)) {
                if (sc[got]) got++;
                rc = es__err(e, ES_ENOMEM, "index: out of memory for search scratch");
                break;
            }
        }
        if (!rc) {
ES__OMP(omp parallel for schedule(dynamic, 1) num_threads(nt) if (nt > 1))
            for (size_t i = 0; i < nq; i++) {
                int t = 0;
#ifdef _OPENMP
                t = omp_get_thread_num();
#endif
                search_one(ix, q + i * (size_t)ix->dim, k, kk, f, sc[t], dist + i * (size_t)k, ids + i * (size_t)k);
            }
        }
        for (int t = 0; t < got; t++) pool_put(ix, sc[t]);
    }
convert:
    es__free(fb);
    if (rc) return rc;
    if (ix->ip)
        for (size_t i = 0; i < nq * (size_t)k; i++) dist[i] = -dist[i];
    return ES_OK;
}

/* Every failure goes to e only: nothing in ix is written but its scratch
 * pool (under ix->mu), so any number of threads may search at once. */
int es_index_search_ex(es_index *ix, size_t nq, const float *q, int k, const es_filter *filter, int64_t *ids, float *dist,
                       es_err *err) {
    es_err e = {0};
    int rc = search_ex(ix, nq, q, k, filter, ids, dist, &e);
    if (rc && err) *err = e;
    return rc;
}

int es_index_search(es_index *ix, size_t nq, const float *q, int k, const es_filter *filter, int64_t *ids,
                    float *dist) {
    es_err e = {0};
    int rc = search_ex(ix, nq, q, k, filter, ids, dist, &e);
    if (rc && ix) {
        snprintf(search_err.msg, sizeof search_err.msg, "%s", e.msg);
        search_err.ix = ix;
        search_err.stamp = err_tick();
    }
    return rc;
}

int es_index_set(es_index *ix, const char *name, double v) {
    if (!ix || !name) return ES_EINVAL;
    if (!(v == v) || v < 0 || v > 1e9) return failf(ix, ES_EINVAL, "index: %s = %g is out of range", name, v);
    int iv = (int)v;
    if ((double)iv != v) return failf(ix, ES_EINVAL, "index: %s must be an integer, got %g", name, v);
    if (!strcmp(name, "ef_search")) {
        if (iv < 1 || iv > 1 << 20) return failf(ix, ES_EINVAL, "index: ef_search must be in [1, 2^20], got %d", iv);
        ix->p.ef_search = iv;
    } else if (!strcmp(name, "nprobe")) {
        if (iv < 1) return failf(ix, ES_EINVAL, "index: nprobe must be >= 1, got %d", iv);
        ix->p.nprobe = iv;
    } else if (!strcmp(name, "rerank")) {
        if (iv > 10000) return failf(ix, ES_EINVAL, "index: rerank must be in [0, 10000], got %d", iv);
        if (iv > 0 && !ix->keep_full)
            return failf(ix, ES_EINVAL, "index: this index keeps no full vectors to re-rank with (build it with rerank > 0)");
        ix->p.rerank = iv;
    } else if (!strcmp(name, "threads")) {
        ix->p.threads = iv;
        ix->ix->threads = iv;
    } else {
        return failf(ix, ES_EINVAL, "index: unknown parameter '%s' (ef_search, nprobe, rerank, threads)", name);
    }
    return ES_OK;
}

/* ---- save / load ------------------------------------------------------------------------------------ */
static int put_meta_s(es_fwriter *w, const char *pfx, const char *key, const char *v, es_err *e) {
    char k[128];
    snprintf(k, sizeof k, "%s%s", pfx, key);
    int rc = es__fwriter_meta(w, k, v);
    return rc ? es__err(e, rc, "%s", es__fwriter_errmsg(w)) : ES_OK;
}

int es__index_write(const es_index *ix, es_fwriter *w, const char *pfx, es_err *e) {
    const es_index_params *p = &ix->p;
    int rc = put_meta_s(w, pfx, "kind", kind_names[p->kind], e);
    if (!rc) rc = put_meta_s(w, pfx, "metric", metric_names[p->metric], e);
    if (!rc) rc = put_meta_s(w, pfx, "order", order_names[p->order], e);
    if (!rc) rc = put_meta_s(w, pfx, "ivf_codes", kind_names[p->ivf_codes], e);
    struct {
        const char *k;
        long long v;
    } nums[] = {
        {"format_version", IX_FORMAT_VERSION},
        {"dim", p->dim},
        {"search_dim", ix->sdim},
        {"pca", p->pca},
        {"rerank", p->rerank},
        {"binary_bits", p->binary_bits},
        {"itq_iters", p->itq_iters},
        {"pq_m", p->pq_m},
        {"pq_bits", p->pq_bits},
        {"opq_iters", p->opq_iters},
        {"hnsw_m", p->hnsw_m},
        {"ef_construction", p->ef_construction},
        {"ef_search", p->ef_search},
        {"nlist", p->nlist},
        {"nprobe", p->nprobe},
        {"kmeans_iters", p->kmeans_iters},
        {"train_max", (long long)ES_MIN(p->train_max, (size_t)LLONG_MAX)},
        {"seed", (long long)(p->seed & INT64_MAX)},
        {"n", (long long)ix->ix->n},
        {"n_attr", ix->n_attr},
        {"keep_full", ix->keep_full},
        {"trained", ix->trained},
    };
    for (size_t i = 0; i < ES_ARRAY_LEN(nums) && !rc; i++) rc = es__ix_meta_put(w, pfx, nums[i].k, nums[i].v, e);
    char tb[64];
    snprintf(tb, sizeof tb, "%.6f", ix->train_s);
    if (!rc) rc = put_meta_s(w, pfx, "train_seconds", tb, e);
    snprintf(tb, sizeof tb, "%.6f", ix->add_s);
    if (!rc) rc = put_meta_s(w, pfx, "add_seconds", tb, e);
    if (!rc && ix->trained) rc = ix->ix->vt->save(ix->ix, w, pfx, e);
    if (!rc && ix->pca) rc = es__ix_put(w, pfx, "pca", ES_DT_F32, ix->pca, 2, (uint64_t)ix->sdim, (uint64_t)ix->dim, e);
    if (!rc && ix->pca_mean) rc = es__ix_put(w, pfx, "pca_mean", ES_DT_F32, ix->pca_mean, 1, (uint64_t)ix->dim, 0, e);
    if (!rc && ix->keep_full) rc = es__ix_put(w, pfx, "full", ES_DT_F32, ix->full.p, 2, ix->ix->n, (uint64_t)ix->dim, e);
    if (!rc && ix->n_attr)
        rc = es__ix_put(w, pfx, "attrs", ES_DT_I32, ix->attrs.p, 2, ix->attr_rows, (uint64_t)ix->n_attr, e);
    return rc;
}

int es_index_save(es_index *ix, const char *path) {
    if (!ix || !path) return ES_EINVAL;
    es_err e = {0};
    es_fwriter *w = NULL;
    int rc = es__fwriter_open(&w, path, &e);
    if (rc) return fail(ix, &e);
    rc = es__fwriter_meta(w, "embstore.type", IX_TYPE);
    if (rc) es__err(&e, rc, "%s: %s", path, es__fwriter_errmsg(w));
    if (!rc) rc = es__index_write(ix, w, "index.", &e);
    if (rc) {
        es__fwriter_abort(w);
        return failf(ix, rc, "%s: %s", path, e.msg);
    }
    rc = es__fwriter_commit(w, &e);
    return rc ? fail(ix, &e) : ES_OK;
}

static int meta_name(const es_file *f, const char *pfx, const char *key, const char *const *names, int nn, int *out,
                     es_err *e) {
    char k[128];
    snprintf(k, sizeof k, "%s%s", pfx, key);
    const char *v = es__file_meta(f, k);
    if (!v) return es__err(e, ES_EFORMAT, "metadata %s is missing", k);
    int i = parse_name(v, names, nn);
    if (i < 0) return es__err(e, ES_EFORMAT, "metadata %s = '%.40s' is not known", k, v);
    *out = i;
    return ES_OK;
}

static double meta_double(const es_file *f, const char *pfx, const char *key) {
    char k[128];
    snprintf(k, sizeof k, "%s%s", pfx, key);
    const char *v = es__file_meta(f, k);
    double x = 0;
    if (!v || !es__parse_double(v, strlen(v), &x) || !(x >= 0 && x < 1e12)) return 0;
    return x;
}

int es__index_read(es_index **out, const es_file *f, const char *pfx, es_err *e) {
    *out = NULL;
    es_index_params p = es_index_params_default();
    int kind, metric, order, codes, rc;
    long long v[22];
    static const struct {
        const char *k;
        long long lo, hi;
    } spec[] = {
        {"format_version", 1, IX_FORMAT_VERSION},
        {"dim", 1, ES_IX_MAX_DIM},
        {"search_dim", 1, ES_IX_MAX_DIM},
        {"pca", 0, 1},
        {"rerank", 0, 10000},
        {"binary_bits", 0, ES_IX_MAX_DIM},
        {"itq_iters", 0, 10000},
        {"pq_m", 0, ES_IX_MAX_DIM},
        {"pq_bits", 0, 8},
        {"opq_iters", 0, 1000},
        {"hnsw_m", 2, 64},
        {"ef_construction", 1, 1 << 16},
        {"ef_search", 1, 1 << 20},
        {"nlist", 0, 1 << 24},
        {"nprobe", 1, INT32_MAX},
        {"kmeans_iters", 1, 1000},
        {"train_max", 1, LLONG_MAX},
        {"seed", 0, LLONG_MAX},
        {"n", 0, (long long)ES_IX_MAX_N},
        {"n_attr", 0, ES_IX_MAX_ATTR},
        {"keep_full", 0, 1},
        {"trained", 0, 1},
    };
    if ((rc = meta_name(f, pfx, "kind", kind_names, (int)ES_ARRAY_LEN(kind_names), &kind, e)) ||
        (rc = meta_name(f, pfx, "metric", metric_names, (int)ES_ARRAY_LEN(metric_names), &metric, e)) ||
        (rc = meta_name(f, pfx, "order", order_names, (int)ES_ARRAY_LEN(order_names), &order, e)) ||
        (rc = meta_name(f, pfx, "ivf_codes", kind_names, (int)ES_ARRAY_LEN(kind_names), &codes, e)))
        return rc;
    for (size_t i = 0; i < ES_ARRAY_LEN(spec); i++)
        if ((rc = es__ix_meta_long(f, pfx, spec[i].k, spec[i].lo, spec[i].hi, &v[i], e))) return rc;
    p.kind = (es_index_kind)kind;
    p.metric = (es_metric)metric;
    p.order = (es_insert_order)order;
    p.ivf_codes = (es_index_kind)codes;
    p.dim = (int)v[1];
    if (v[2] > v[1]) return es__err(e, ES_EFORMAT, "index: search_dim %lld exceeds dim %lld", v[2], v[1]);
    p.search_dim = (int)v[2];
    p.pca = (int)v[3];
    p.rerank = (int)v[4];
    p.binary_bits = (int)v[5];
    p.itq_iters = (int)v[6];
    p.pq_m = (int)v[7];
    p.pq_bits = (int)v[8];
    p.opq_iters = (int)v[9];
    p.hnsw_m = (int)v[10];
    p.ef_construction = (int)v[11];
    p.ef_search = (int)v[12];
    p.nlist = (int)v[13];
    p.nprobe = (int)v[14];
    p.kmeans_iters = (int)v[15];
    p.train_max = (size_t)v[16];
    p.seed = (uint64_t)v[17];
    size_t n = (size_t)v[18];
    int n_attr = (int)v[19];
    es_index *ix;
    if ((rc = create(&ix, &p, e))) {
        if (rc == ES_ENOMEM) return rc;
        char why[sizeof e->msg];
        snprintf(why, sizeof why, "%s", e->msg);
        return es__err(e, ES_EFORMAT, "index parameters in the file are invalid: %.400s", why);
    }
    if ((bool)v[20] != ix->keep_full) {
        es_index_free(ix);
        return es__err(e, ES_EFORMAT, "index: keep_full flag disagrees with the parameters");
    }
    ix->train_s = meta_double(f, pfx, "train_seconds");
    ix->add_s = meta_double(f, pfx, "add_seconds");
    bool trained = v[21] != 0;
    if (!trained && n > 0) {
        es_index_free(ix);
        return es__err(e, ES_EFORMAT, "index: %zu vectors in an untrained index", n);
    }
    size_t d = (size_t)ix->dim;
    const void *pp;
    if (trained) {
        ix->ix->n = n;
        if ((rc = ix->ix->vt->load(ix->ix, f, pfx, e))) goto bad;
        ix->ix->trained = true;
        if (p.pca) {
            uint64_t s2[2] = {(uint64_t)ix->sdim, d};
            if ((rc = es__ix_tensor(f, pfx, "pca", ES_DT_F32, 2, s2, &pp, e))) goto bad;
            if ((rc = es__check_finite(pp, (size_t)ix->sdim, ix->dim, "PCA rotation", e))) goto bad;
            ix->pca = es__alloc_aligned((size_t)ix->sdim * d * sizeof(float));
            if (!ix->pca) goto oom;
            memcpy(ix->pca, pp, (size_t)ix->sdim * d * sizeof(float));
            if (!ix->ip) {
                uint64_t s1[1] = {d};
                if ((rc = es__ix_tensor(f, pfx, "pca_mean", ES_DT_F32, 1, s1, &pp, e))) goto bad;
                if ((rc = es__check_finite(pp, 1, ix->dim, "PCA mean", e))) goto bad;
                ix->pca_mean = es__malloc(d * sizeof(float));
                if (!ix->pca_mean) goto oom;
                memcpy(ix->pca_mean, pp, d * sizeof(float));
            }
        }
        ix->trained = true;
    }
    if (ix->keep_full) {
        uint64_t s2[2] = {n, d};
        if ((rc = es__ix_tensor(f, pfx, "full", ES_DT_F32, 2, s2, &pp, e))) goto bad;
        if ((rc = es__check_finite(pp, n, ix->dim, "full vectors", e))) goto bad;
        es__arr_map(&ix->full, pp, n * d * sizeof(float));
    }
    if (n_attr > 0) {
        uint64_t s2[2] = {n, (uint64_t)n_attr};
        if ((rc = es__ix_tensor(f, pfx, "attrs", ES_DT_I32, 2, s2, &pp, e))) goto bad;
        es__arr_map(&ix->attrs, pp, n * (size_t)n_attr * sizeof(int32_t));
        ix->n_attr = n_attr;
        ix->attr_rows = n;
        if ((rc = build_postings(ix, e))) goto bad;
    }
    *out = ix;
    return ES_OK;
oom:
    rc = es__err(e, ES_ENOMEM, "index: out of memory loading");
bad:
    es_index_free(ix);
    return rc;
}

int es_index_load(es_index **out, const char *path, es_err *err) {
    if (!out || !path) return es__err(err, ES_EINVAL, "index: NULL argument");
    *out = NULL;
    es_file *f = NULL;
    es_err e = {0};
    int rc = es__file_open(&f, path, 0, &e);
    if (rc) return es__err(err, rc, "%s", e.msg);
    const char *type = es__file_meta(f, "embstore.type");
    if (!type || strcmp(type, IX_TYPE) != 0) {
        /* Format before closing: type points into the mapping. */
        es__err(err, ES_EFORMAT, "%s: not an embstore index (embstore.type is '%.40s')", path, type ? type : "missing");
        es__file_close(f);
        return ES_EFORMAT;
    }
    es_index *ix;
    if ((rc = es__index_read(&ix, f, "index.", &e))) {
        es__file_close(f);
        return es__err(err, rc, "%s: %s", path, e.msg);
    }
    ix->file = f;
    *out = ix;
    return ES_OK;
}
