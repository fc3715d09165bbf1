/*
 * muvera.c — multi-vector retrieval with Fixed Dimensional Encodings
 * (Dhulipala, Hadian, Jayaram, Lee, Mirrokni: "MUVERA: Multi-Vector
 * Retrieval via Fixed Dimensional Encodings", 2024).
 *
 * A document or query is a set of token vectors; the score of a document
 * for a query is the Chamfer similarity  sum_{q in Q} max_{p in P} <q, p>.
 * An FDE maps a set to one vector whose inner products approximate it:
 *   for each of `reps` repetitions, k_sim random hyperplanes (SimHash) cut
 *   the space into 2^k_sim buckets; each vector goes to the bucket of its
 *   sign pattern and is projected to d_proj components by a random +-1
 *   matrix (identity when d_proj = dim); the block of a bucket holds the
 *   sum of its query vectors, or the mean of its document vectors (a query
 *   vector then meets roughly the document vectors near it, like the max in
 *   Chamfer).  A document bucket left empty takes the projection of the
 *   document vector whose sign pattern is nearest in Hamming distance
 *   ("fill empty clusters"), so every query vector finds something.
 *   An optional Count-Sketch (each coordinate added with a random sign to
 *   one of d_final outputs) shrinks the FDE.
 * A single-vector es_index (inner product) over the document FDEs returns
 * `candidates` documents, re-ranked here by exact Chamfer similarity.
 *
 * With `center`, the mean document vector (of the first add) is subtracted
 * from every vector first: SimHash hyperplanes pass through the origin, so
 * data confined to one orthant (SIFT) would otherwise fall into few buckets.
 * Token vectors are kept (centred / normalised as configured) for the
 * re-ranking; the file stores them with the random matrices and the inner
 * index under the prefix "mv.".
 */
#include "index.h"

#include "core/simd.h"

#include <limits.h>

#define MV_TYPE "multi" /* value of "embstore.type" */
#define MV_MAX_FDE (1 << 24)

struct es_multi {
    es_multi_params p;
    int dim, dproj, nb, fde_dim, out_dim;
    float *gauss;      /* [reps][k_sim][dim] */
    float *proj;       /* [reps][dproj][dim] or NULL (identity) */
    int32_t *cs_idx;   /* [fde_dim] or NULL */
    float *cs_sign;    /* [fde_dim] */
    es_index *inner;
    float *mean;       /* [dim] when center: subtracted from every vector */
    es__arr docs;      /* float [total][dim], centred and normalised as configured */
    es__arr doff;      /* int64 [n_docs + 1] */
    size_t n_docs;
    es_file *file;
    char errmsg[512];
};

static int mfail(es_multi *m, int code, const char *fmt, ...) ES_PRINTF(3, 4);
static int mfail(es_multi *m, int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(m->errmsg, sizeof m->errmsg, fmt, ap);
    va_end(ap);
    return code;
}

const char *es_multi_errmsg(const es_multi *m) { return m ? m->errmsg : "no multi-vector index"; }

es_multi_params es_multi_params_default(void) {
    es_multi_params p;
    memset(&p, 0, sizeof p);
    p.k_sim = 4;
    p.reps = 10;
    p.d_proj = 16;
    p.d_final = 0;
    p.fill_empty = 1;
    p.candidates = 100;
    p.normalize = 1;
    p.seed = 1;
    p.inner = es_index_params_default();
    return p;
}

static int check_params(const es_multi_params *p, es_err *err) {
    if (p->dim < 1 || p->dim > ES_IX_MAX_DIM) return es__err(err, ES_EINVAL, "multi: dim must be in [1, %d], got %d", ES_IX_MAX_DIM, p->dim);
    if (p->k_sim < 0 || p->k_sim > 10) return es__err(err, ES_EINVAL, "multi: k_sim must be in [0, 10], got %d", p->k_sim);
    if (p->reps < 1 || p->reps > 1000) return es__err(err, ES_EINVAL, "multi: reps must be in [1, 1000], got %d", p->reps);
    if (p->d_proj < 0 || p->d_proj > p->dim)
        return es__err(err, ES_EINVAL, "multi: d_proj must be in [0, dim = %d], got %d", p->dim, p->d_proj);
    int dp = p->d_proj ? p->d_proj : p->dim;
    long long fde = (long long)p->reps * (1LL << p->k_sim) * dp;
    if (fde > MV_MAX_FDE) return es__err(err, ES_EINVAL, "multi: FDE dimension %lld exceeds %d", fde, MV_MAX_FDE);
    if (p->d_final < 0 || p->d_final > fde)
        return es__err(err, ES_EINVAL, "multi: d_final must be in [0, %lld], got %d", fde, p->d_final);
    if (p->candidates < 1) return es__err(err, ES_EINVAL, "multi: candidates must be >= 1, got %d", p->candidates);
    return ES_OK;
}

/* Shared by create and load: sizes and the empty arrays. */
static int alloc_multi(es_multi **out, const es_multi_params *p, es_err *err) {
    int rc = check_params(p, err);
    if (rc) return rc;
    es_multi *m = es__calloc(1, sizeof *m);
    if (!m) return es__err(err, ES_ENOMEM, "multi: out of memory");
    m->p = *p;
    m->dim = p->dim;
    m->dproj = p->d_proj ? p->d_proj : p->dim;
    m->nb = 1 << p->k_sim;
    m->fde_dim = p->reps * m->nb * m->dproj;
    m->out_dim = p->d_final ? p->d_final : m->fde_dim;
    size_t g = (size_t)p->reps * p->k_sim * p->dim;
    m->gauss = es__malloc((g ? g : 1) * sizeof(float));
    if (m->dproj != m->dim) m->proj = es__malloc((size_t)p->reps * m->dproj * p->dim * sizeof(float));
    if (p->d_final) {
        m->cs_idx = es__malloc((size_t)m->fde_dim * sizeof(int32_t));
        m->cs_sign = es__malloc((size_t)m->fde_dim * sizeof(float));
    }
    if (!m->gauss || (m->dproj != m->dim && !m->proj) || (p->d_final && (!m->cs_idx || !m->cs_sign)) ||
        es__arr_reserve(&m->doff, sizeof(int64_t))) {
        es_multi_free(m);
        return es__err(err, ES_ENOMEM, "multi: out of memory");
    }
    ((int64_t *)m->doff.p)[0] = 0;
    m->doff.bytes = sizeof(int64_t);
    *out = m;
    return ES_OK;
}

int es_multi_create(es_multi **out, const es_multi_params *p, es_err *err) {
    if (!out || !p) return es__err(err, ES_EINVAL, "multi: NULL argument");
    *out = NULL;
    es_multi *m;
    int rc = alloc_multi(&m, p, err);
    if (rc) return rc;
    es_rng r;
    es__rng_seed(&r, p->seed);
    size_t g = (size_t)p->reps * p->k_sim * p->dim;
    for (size_t i = 0; i < g; i++) m->gauss[i] = es__rng_normal(&r);
    if (m->proj) {
        float s = 1.0f / sqrtf((float)m->dproj);
        size_t np = (size_t)p->reps * m->dproj * p->dim;
        for (size_t i = 0; i < np; i++) m->proj[i] = (es__rng_u64(&r) >> 63) ? s : -s;
    }
    if (m->cs_idx)
        for (int i = 0; i < m->fde_dim; i++) {
            m->cs_idx[i] = (int32_t)es__range(es__rng_u64(&r), (uint64_t)m->out_dim);
            m->cs_sign[i] = (es__rng_u64(&r) >> 63) ? 1.0f : -1.0f;
        }
    es_index_params ip = p->inner;
    ip.dim = m->out_dim;
    ip.metric = ES_METRIC_IP;
    if ((rc = es_index_create(&m->inner, &ip, err))) {
        es_multi_free(m);
        return rc;
    }
    *out = m;
    return ES_OK;
}

void es_multi_free(es_multi *m) {
    if (!m) return;
    es__free(m->gauss);
    es__free(m->proj);
    es__free(m->cs_idx);
    es__free(m->cs_sign);
    es__free(m->mean);
    es_index_free(m->inner);
    es__arr_free(&m->docs);
    es__arr_free(&m->doff);
    es__file_close(m->file);
    es__free(m);
}

size_t es_multi_size(const es_multi *m) { return m ? m->n_docs : 0; }
int es_multi_dim(const es_multi *m) { return m ? m->dim : 0; }
int es_multi_fde_dim(const es_multi *m) { return m ? m->out_dim : 0; }
size_t es_multi_bytes(const es_multi *m) {
    if (!m) return 0;
    size_t b = es_index_bytes(m->inner) + m->docs.bytes + m->doff.bytes;
    b += (size_t)m->p.reps * m->p.k_sim * m->dim * sizeof(float);
    if (m->proj) b += (size_t)m->p.reps * m->dproj * m->dim * sizeof(float);
    if (m->cs_idx) b += (size_t)m->fde_dim * (sizeof(int32_t) + sizeof(float));
    if (m->mean) b += (size_t)m->dim * sizeof(float);
    return b;
}

/* The vectors as compared: centred (center) and scaled to unit length
 * (normalize).  out may not alias x. */
static void prep_rows(const es_multi *m, const float *x, size_t n, float *out) {
    size_t d = (size_t)m->dim;
    memcpy(out, x, n * d * sizeof(float));
    for (size_t i = 0; i < n; i++) {
        float *r = out + i * d;
        if (m->mean)
            for (size_t j = 0; j < d; j++) r[j] -= m->mean[j];
        if (m->p.normalize) {
            float s = es__dot(r, r, d);
            if (s > 0) {
                float inv = 1.0f / sqrtf(s);
                for (size_t j = 0; j < d; j++) r[j] *= inv;
            }
        }
    }
}

/* Work memory to encode a set of up to nmax vectors. */
typedef struct {
    float *xn;      /* [nmax][dim] normalised copies */
    float *pr;      /* [nmax][dproj] projections of one repetition */
    uint32_t *code; /* [nmax] */
    uint32_t *cnt;  /* [nb] */
    float *fde;     /* [fde_dim] */
} enc_work;

static void enc_work_free(enc_work *w) {
    es__free(w->xn);
    es__free(w->pr);
    es__free(w->code);
    es__free(w->cnt);
    es__free(w->fde);
    memset(w, 0, sizeof *w);
}

static int enc_work_alloc(const es_multi *m, size_t nmax, enc_work *w) {
    memset(w, 0, sizeof *w);
    nmax = nmax ? nmax : 1;
    w->xn = es__malloc(nmax * (size_t)m->dim * sizeof(float));
    w->pr = es__malloc(nmax * (size_t)m->dproj * sizeof(float));
    w->code = es__malloc(nmax * sizeof(uint32_t));
    w->cnt = es__malloc((size_t)m->nb * sizeof(uint32_t));
    w->fde = es__malloc((size_t)m->fde_dim * sizeof(float));
    if (!w->xn || !w->pr || !w->code || !w->cnt || !w->fde) {
        enc_work_free(w);
        return ES_ENOMEM;
    }
    return ES_OK;
}

/* FDE of n vectors x[n][dim] into out[out_dim]. */
static void encode(const es_multi *m, int is_query, size_t n, const float *x, enc_work *w, float *out) {
    size_t d = (size_t)m->dim, dp = (size_t)m->dproj, nb = (size_t)m->nb;
    prep_rows(m, x, n, w->xn);
    float *fde = m->p.d_final ? w->fde : out;
    memset(fde, 0, (size_t)m->fde_dim * sizeof(float));
    for (int r = 0; r < m->p.reps; r++) {
        const float *g = m->gauss + (size_t)r * m->p.k_sim * d;
        const float *pm = m->proj ? m->proj + (size_t)r * dp * d : NULL;
        float *blk = fde + (size_t)r * nb * dp;
        memset(w->cnt, 0, nb * sizeof(uint32_t));
        for (size_t i = 0; i < n; i++) {
            const float *xi = w->xn + i * d;
            uint32_t c = 0;
            for (int b = 0; b < m->p.k_sim; b++)
                if (es__dot(g + (size_t)b * d, xi, d) > 0) c |= 1u << b;
            w->code[i] = c;
            w->cnt[c]++;
            float *pi = w->pr + i * dp;
            if (pm)
                for (size_t j = 0; j < dp; j++) pi[j] = es__dot(pm + j * d, xi, d);
            else
                memcpy(pi, xi, d * sizeof(float));
            float *bk = blk + (size_t)c * dp;
            for (size_t j = 0; j < dp; j++) bk[j] += pi[j];
        }
        if (is_query) continue;
        for (size_t b = 0; b < nb; b++) {
            float *bk = blk + b * dp;
            if (w->cnt[b] > 1) {
                float inv = 1.0f / (float)w->cnt[b];
                for (size_t j = 0; j < dp; j++) bk[j] *= inv;
            } else if (w->cnt[b] == 0 && m->p.fill_empty && n > 0) {
                size_t best = 0;
                int bd = 99;
                for (size_t i = 0; i < n; i++) {
                    int h = __builtin_popcount(w->code[i] ^ (uint32_t)b);
                    if (h < bd) bd = h, best = i;
                }
                memcpy(bk, w->pr + best * dp, dp * sizeof(float));
            }
        }
    }
    if (m->p.d_final) {
        memset(out, 0, (size_t)m->out_dim * sizeof(float));
        for (int i = 0; i < m->fde_dim; i++) out[m->cs_idx[i]] += m->cs_sign[i] * fde[i];
    }
}

static int check_sets(es_multi *m, size_t n_sets, const size_t *off, const float *x, const char *what, size_t *nmax) {
    if (!off || (n_sets && !x)) return mfail(m, ES_EINVAL, "multi: NULL %s", what);
    if (off[0] != 0) return mfail(m, ES_EINVAL, "multi: %s offsets must start at 0", what);
    *nmax = 0;
    for (size_t s = 0; s < n_sets; s++) {
        if (off[s + 1] <= off[s]) return mfail(m, ES_EINVAL, "multi: %s set %zu is empty or has decreasing offsets", what, s);
        *nmax = ES_MAX(*nmax, off[s + 1] - off[s]);
    }
    es_err e = {0};
    if (es__check_finite(x, off[n_sets], m->dim, what, &e)) return mfail(m, e.code, "multi: %s", e.msg);
    return ES_OK;
}

int es_multi_encode(es_multi *m, int is_query, size_t n, const float *x, float *out) {
    if (!m || !x || !out || n == 0) return m ? mfail(m, ES_EINVAL, "multi: encode needs a non-empty set") : ES_EINVAL;
    size_t off[2] = {0, n}, nmax;
    int rc = check_sets(m, 1, off, x, "vectors", &nmax);
    if (rc) return rc;
    enc_work w;
    if (enc_work_alloc(m, n, &w)) return mfail(m, ES_ENOMEM, "multi: out of memory");
    encode(m, is_query, n, x, &w, out);
    enc_work_free(&w);
    return ES_OK;
}

int es_multi_add(es_multi *m, size_t n_sets, const size_t *off, const float *x) {
    if (!m) return ES_EINVAL;
    if (n_sets == 0) return ES_OK;
    size_t nmax;
    int rc = check_sets(m, n_sets, off, x, "documents", &nmax);
    if (rc) return rc;
    size_t d = (size_t)m->dim, tot = off[n_sets], old = m->docs.bytes / (d * sizeof(float)), od = (size_t)m->out_dim;
    size_t fb;
    if (!es__mul_size(n_sets, od * sizeof(float), &fb)) return mfail(m, ES_ERANGE, "multi: too many documents");
    float *fdes = es__alloc_aligned(fb);
    int nt = es__nthreads(m->p.inner.threads);
    enc_work *w = es__calloc((size_t)nt, sizeof *w);
    if (!fdes || !w) rc = mfail(m, ES_ENOMEM, "multi: out of memory encoding %zu documents", n_sets);
    for (int t = 0; t < nt && !rc; t++)
        if (enc_work_alloc(m, nmax, &w[t])) rc = mfail(m, ES_ENOMEM, "multi: out of memory");
    if (!rc && m->p.center && !m->mean) {
        /* The mean of the first documents added, fixed from then on. */
        double *mu = es__calloc(d, sizeof *mu);
        m->mean = es__malloc(d * sizeof(float));
        if (!mu || !m->mean) {
            es__free(m->mean);
            m->mean = NULL;
            rc = mfail(m, ES_ENOMEM, "multi: out of memory");
        } else {
            for (size_t i = 0; i < tot; i++)
                for (size_t j = 0; j < d; j++) mu[j] += x[i * d + j];
            for (size_t j = 0; j < d; j++) m->mean[j] = (float)(mu[j] / (double)tot);
        }
        es__free(mu);
    }
    if (!rc && (es__arr_reserve(&m->docs, (old + tot) * d * sizeof(float)) ||
                es__arr_reserve(&m->doff, (m->n_docs + n_sets + 1) * sizeof(int64_t))))
        rc = mfail(m, ES_ENOMEM, "multi: out of memory keeping %zu vectors", tot);
    if (!rc) {
ES__OMP(omp parallel for schedule(dynamic, 16) num_threads(nt))
        for (size_t s = 0; s < n_sets; s++) {
            int t = 0;
#ifdef _OPENMP
            t = omp_get_thread_num();
#endif
            encode(m, 0, off[s + 1] - off[s], x + off[s] * d, &w[t], fdes + s * od);
        }
        rc = es_index_add(m->inner, n_sets, fdes);
        if (rc) mfail(m, rc, "multi: FDE index: %s", es_index_errmsg(m->inner));
    }
    if (!rc) {
        prep_rows(m, x, tot, (float *)m->docs.p + old * d);
        int64_t *doff = m->doff.p;
        for (size_t s = 0; s < n_sets; s++) doff[m->n_docs + s + 1] = (int64_t)(old + off[s + 1]);
        m->n_docs += n_sets;
        m->docs.bytes = (old + tot) * d * sizeof(float);
        m->doff.bytes = (m->n_docs + 1) * sizeof(int64_t);
    }
    if (rc && m->n_docs == 0) {
        es__free(m->mean); /* a failed first add learns nothing */
        m->mean = NULL;
    }
    for (int t = 0; w && t < nt; t++) enc_work_free(&w[t]);
    es__free(w);
    es__free_aligned(fdes);
    return rc;
}

/* Exact Chamfer similarity of a (normalised) query set with document `doc`. */
static float chamfer(const es_multi *m, const float *q, size_t nq, size_t doc) {
    const int64_t *doff = m->doff.p;
    size_t d = (size_t)m->dim, b = (size_t)doff[doc], e = (size_t)doff[doc + 1];
    const float *dv = (const float *)m->docs.p;
    float total = 0.0f;
    for (size_t i = 0; i < nq; i++) {
        float best = -INFINITY;
        for (size_t j = b; j < e; j++) {
            float s = es__dot(q + i * d, dv + j * d, d);
            if (s > best) best = s;
        }
        total += best;
    }
    return total;
}

static int search_common(es_multi *m, size_t nq, const size_t *qoff, const float *q, int k, int64_t *ids,
                         float *score, size_t *n_scored, bool exact) {
    if (!m) return ES_EINVAL;
    if (nq == 0) return ES_OK;
    if (!ids || !score) return mfail(m, ES_EINVAL, "multi: NULL output");
    if (m->n_docs == 0) return mfail(m, ES_EINVAL, "multi: no documents (add before searching)");
    if (k < 1 || (size_t)k > m->n_docs)
        return mfail(m, ES_EINVAL, "multi: k = %d must be in [1, %zu] (the documents in the index)", k, m->n_docs);
    size_t nmax;
    int rc = check_sets(m, nq, qoff, q, "queries", &nmax);
    if (rc) return rc;
    size_t d = (size_t)m->dim, od = (size_t)m->out_dim;
    int cand = (int)ES_MIN((size_t)ES_MAX(m->p.candidates, k), m->n_docs);
    int nt = es__nthreads(m->p.inner.threads);
    float *qn = es__malloc(qoff[nq] * d * sizeof(float));
    float *qf = exact ? NULL : es__alloc_aligned(nq * od * sizeof(float));
    float *cd = exact ? NULL : es__malloc(nq * (size_t)cand * sizeof(float));
    int64_t *ci = exact ? NULL : es__malloc(nq * (size_t)cand * sizeof(int64_t));
    enc_work *w = exact ? NULL : es__calloc((size_t)nt, sizeof *w);
    if (!qn || (!exact && (!qf || !cd || !ci || !w))) rc = mfail(m, ES_ENOMEM, "multi: out of memory searching");
    for (int t = 0; !exact && t < nt && !rc; t++)
        if (enc_work_alloc(m, nmax, &w[t])) rc = mfail(m, ES_ENOMEM, "multi: out of memory");
    if (!rc) prep_rows(m, q, qoff[nq], qn);
    if (!rc && !exact) {
ES__OMP(omp parallel for schedule(dynamic, 4) num_threads(nt))
        for (size_t s = 0; s < nq; s++) {
            int t = 0;
#ifdef _OPENMP
            t = omp_get_thread_num();
#endif
            encode(m, 1, qoff[s + 1] - qoff[s], q + qoff[s] * d, &w[t], qf + s * od);
        }
        es_err se = {0};
        if ((rc = es_index_search_ex(m->inner, nq, qf, cand, NULL, ci, cd, &se))) mfail(m, rc, "multi: FDE search: %s", se.msg);
    }
    size_t scored = 0;
    if (!rc) {
ES__OMP(omp parallel for schedule(dynamic, 1) num_threads(nt) reduction(+ : scored))
        for (size_t s = 0; s < nq; s++) {
            const float *qs = qn + qoff[s] * d;
            size_t nv = qoff[s + 1] - qoff[s];
            float *hd = score + s * (size_t)k;
            int64_t *hi = ids + s * (size_t)k;
            int size = 0;
            size_t nc = exact ? m->n_docs : (size_t)cand;
            for (size_t c = 0; c < nc; c++) {
                int64_t doc = exact ? (int64_t)c : ci[s * (size_t)cand + c];
                if (doc < 0) continue;
                es__heap_push(hd, hi, &size, k, -chamfer(m, qs, nv, (size_t)doc), doc);
                scored++;
            }
            es__heap_finish(hd, hi, size, k);
            for (int t = 0; t < k; t++) hd[t] = -hd[t];
        }
    }
    if (n_scored) *n_scored = scored;
    for (int t = 0; w && t < nt; t++) enc_work_free(&w[t]);
    es__free(w);
    es__free(qn);
    es__free_aligned(qf);
    es__free(cd);
    es__free(ci);
    return rc;
}

int es_multi_search(es_multi *m, size_t nq, const size_t *qoff, const float *q, int k, int64_t *ids, float *score,
                    size_t *n_scored) {
    return search_common(m, nq, qoff, q, k, ids, score, n_scored, false);
}

int es_multi_search_exact(es_multi *m, size_t nq, const size_t *qoff, const float *q, int k, int64_t *ids,
                          float *score) {
    return search_common(m, nq, qoff, q, k, ids, score, NULL, true);
}

int es_multi_set(es_multi *m, const char *name, double v) {
    if (!m || !name) return ES_EINVAL;
    if (!strcmp(name, "candidates")) {
        if (!(v >= 1 && v <= 1e9) || (double)(int)v != v)
            return mfail(m, ES_EINVAL, "multi: candidates must be a positive integer, got %g", v);
        m->p.candidates = (int)v;
        return ES_OK;
    }
    int rc = es_index_set(m->inner, name, v);
    if (rc) return mfail(m, rc, "multi: %s", es_index_errmsg(m->inner));
    if (!strcmp(name, "threads")) m->p.inner.threads = (int)v;
    return ES_OK;
}

/* ---- save / load ---------------------------------------------------------------------- */
int es_multi_save(es_multi *m, const char *path) {
    if (!m || !path) return ES_EINVAL;
    es_err e = {0};
    es_fwriter *w = NULL;
    int rc = es__fwriter_open(&w, path, &e);
    if (rc) return mfail(m, rc, "%s", e.msg);
    rc = es__fwriter_meta(w, "embstore.type", MV_TYPE);
    if (rc) es__err(&e, rc, "%s", es__fwriter_errmsg(w));
    const char *pfx = "mv.";
    struct {
        const char *k;
        long long v;
    } nums[] = {{"dim", m->dim},
                {"k_sim", m->p.k_sim},
                {"reps", m->p.reps},
                {"d_proj", m->dproj},
                {"d_final", m->p.d_final},
                {"fill_empty", m->p.fill_empty},
                {"candidates", m->p.candidates},
                {"normalize", m->p.normalize},
                {"center", m->mean != NULL},
                {"seed", (long long)(m->p.seed & INT64_MAX)},
                {"n_docs", (long long)m->n_docs}};
    for (size_t i = 0; i < ES_ARRAY_LEN(nums) && !rc; i++) rc = es__ix_meta_put(w, pfx, nums[i].k, nums[i].v, &e);
    size_t total = m->docs.bytes / ((size_t)m->dim * sizeof(float));
    if (!rc)
        rc = es__ix_put(w, pfx, "gauss", ES_DT_F32, m->gauss, 2, (uint64_t)m->p.reps * m->p.k_sim, (uint64_t)m->dim, &e);
    if (!rc && m->proj)
        rc = es__ix_put(w, pfx, "proj", ES_DT_F32, m->proj, 2, (uint64_t)m->p.reps * m->dproj, (uint64_t)m->dim, &e);
    if (!rc && m->cs_idx) rc = es__ix_put(w, pfx, "cs_idx", ES_DT_I32, m->cs_idx, 1, (uint64_t)m->fde_dim, 0, &e);
    if (!rc && m->cs_idx) rc = es__ix_put(w, pfx, "cs_sign", ES_DT_F32, m->cs_sign, 1, (uint64_t)m->fde_dim, 0, &e);
    if (!rc && m->mean) rc = es__ix_put(w, pfx, "mean", ES_DT_F32, m->mean, 1, (uint64_t)m->dim, 0, &e);
    if (!rc) rc = es__ix_put(w, pfx, "docs", ES_DT_F32, m->docs.p, 2, total, (uint64_t)m->dim, &e);
    if (!rc) rc = es__ix_put(w, pfx, "doff", ES_DT_I64, m->doff.p, 1, m->n_docs + 1, 0, &e);
    if (!rc) rc = es__index_write(m->inner, w, "mv.index.", &e);
    if (rc) {
        es__fwriter_abort(w);
        return mfail(m, rc, "%s: %s", path, e.msg);
    }
    rc = es__fwriter_commit(w, &e);
    return rc ? mfail(m, rc, "%s", e.msg) : ES_OK;
}

int es__multi_read(es_multi **out, const es_file *f, es_err *e) {
    const char *pfx = "mv.";
    long long v[11];
    static const struct {
        const char *k;
        long long lo, hi;
    } spec[] = {{"dim", 1, ES_IX_MAX_DIM}, {"k_sim", 0, 10},          {"reps", 1, 1000},
                {"d_proj", 1, ES_IX_MAX_DIM}, {"d_final", 0, MV_MAX_FDE}, {"fill_empty", 0, 1},
                {"candidates", 1, INT32_MAX}, {"normalize", 0, 1},     {"seed", 0, LLONG_MAX},
                {"n_docs", 0, (long long)ES_IX_MAX_N}, {"center", 0, 1}};
    int rc;
    for (size_t i = 0; i < ES_ARRAY_LEN(spec); i++)
        if ((rc = es__ix_meta_long(f, pfx, spec[i].k, spec[i].lo, spec[i].hi, &v[i], e))) return rc;
    es_multi_params p = es_multi_params_default();
    p.dim = (int)v[0];
    p.k_sim = (int)v[1];
    p.reps = (int)v[2];
    p.d_proj = (int)v[3];
    p.d_final = (int)v[4];
    p.fill_empty = (int)v[5];
    p.candidates = (int)v[6];
    p.normalize = (int)v[7];
    p.seed = (uint64_t)v[8];
    size_t n_docs = (size_t)v[9];
    p.center = (int)v[10];
    es_multi *m;
    if ((rc = alloc_multi(&m, &p, e))) {
        if (rc == ES_ENOMEM) return rc;
        char why[sizeof e->msg];
        snprintf(why, sizeof why, "%s", e->msg);
        return es__err(e, ES_EFORMAT, "multi: %.400s", why);
    }
    size_t d = (size_t)m->dim;
    const void *pp;
    uint64_t sg[2] = {(uint64_t)p.reps * p.k_sim, d};
    if ((rc = es__ix_tensor(f, pfx, "gauss", ES_DT_F32, 2, sg, &pp, e))) goto bad;
    if ((rc = es__check_finite(pp, (size_t)sg[0], m->dim, "SimHash directions", e))) goto bad;
    if (sg[0]) memcpy(m->gauss, pp, (size_t)sg[0] * d * sizeof(float));
    if (m->proj) {
        uint64_t s2[2] = {(uint64_t)p.reps * m->dproj, d};
        if ((rc = es__ix_tensor(f, pfx, "proj", ES_DT_F32, 2, s2, &pp, e))) goto bad;
        if ((rc = es__check_finite(pp, (size_t)s2[0], m->dim, "projections", e))) goto bad;
        memcpy(m->proj, pp, (size_t)s2[0] * d * sizeof(float));
    }
    if (m->cs_idx) {
        uint64_t s1[1] = {(uint64_t)m->fde_dim};
        if ((rc = es__ix_tensor(f, pfx, "cs_idx", ES_DT_I32, 1, s1, &pp, e))) goto bad;
        memcpy(m->cs_idx, pp, (size_t)m->fde_dim * sizeof(int32_t));
        for (int i = 0; i < m->fde_dim; i++)
            if (m->cs_idx[i] < 0 || m->cs_idx[i] >= m->out_dim) {
                rc = es__err(e, ES_EFORMAT, "multi: sketch index %d outside [0, %d)", m->cs_idx[i], m->out_dim);
                goto bad;
            }
        if ((rc = es__ix_tensor(f, pfx, "cs_sign", ES_DT_F32, 1, s1, &pp, e))) goto bad;
        if ((rc = es__check_finite(pp, 1, m->fde_dim, "sketch signs", e))) goto bad;
        memcpy(m->cs_sign, pp, (size_t)m->fde_dim * sizeof(float));
    }
    if (p.center) {
        uint64_t s1[1] = {d};
        if ((rc = es__ix_tensor(f, pfx, "mean", ES_DT_F32, 1, s1, &pp, e))) goto bad;
        if (!pp) {
            rc = es__err(e, ES_EFORMAT, "multi: the centring mean is missing");
            goto bad;
        }
        if ((rc = es__check_finite(pp, 1, m->dim, "centring mean", e))) goto bad;
        m->mean = es__malloc(d * sizeof(float));
        if (!m->mean) {
            rc = es__err(e, ES_ENOMEM, "multi: out of memory");
            goto bad;
        }
        memcpy(m->mean, pp, d * sizeof(float));
    }
    uint64_t so[1] = {n_docs + 1};
    const void *po;
    if ((rc = es__ix_tensor(f, pfx, "doff", ES_DT_I64, 1, so, &po, e))) goto bad;
    uint64_t sd[2] = {ES_IX_ANY, d};
    if ((rc = es__ix_tensor(f, pfx, "docs", ES_DT_F32, 2, sd, &pp, e))) goto bad;
    const int64_t *off = po;
    if (off[0] != 0 || (uint64_t)off[n_docs] != sd[0]) {
        rc = es__err(e, ES_EFORMAT, "multi: document offsets do not cover the %llu stored vectors", (unsigned long long)sd[0]);
        goto bad;
    }
    for (size_t s = 0; s < n_docs; s++)
        if (off[s + 1] <= off[s]) {
            rc = es__err(e, ES_EFORMAT, "multi: document %zu is empty or out of order", s);
            goto bad;
        }
    if ((rc = es__check_finite(pp, (size_t)sd[0], m->dim, "document vectors", e))) goto bad;
    es__arr_map(&m->doff, po, (n_docs + 1) * sizeof(int64_t));
    es__arr_map(&m->docs, pp, (size_t)sd[0] * d * sizeof(float));
    m->n_docs = n_docs;
    if ((rc = es__index_read(&m->inner, f, "mv.index.", e))) goto bad;
    if (es_index_dim(m->inner) != m->out_dim || es_index_size(m->inner) != n_docs ||
        es_index_params_of(m->inner)->metric != ES_METRIC_IP) {
        rc = es__err(e, ES_EFORMAT, "multi: the FDE index does not match (%d dims, %zu vectors)", es_index_dim(m->inner),
                     es_index_size(m->inner));
        goto bad;
    }
    *out = m;
    return ES_OK;
bad:
    es_multi_free(m);
    return rc;
}

int es_multi_load(es_multi **out, const char *path, es_err *err) {
    if (!out || !path) return es__err(err, ES_EINVAL, "multi: NULL argument");
    *out = NULL;
    es_file *f = NULL;
    es_err e = {0};
    int rc = es__file_open(&f, path, 0, &e);
    if (rc) return es__err(err, rc, "%s", e.msg);
    const char *type = es__file_meta(f, "embstore.type");
    if (!type || strcmp(type, MV_TYPE) != 0) {
        es__err(err, ES_EFORMAT, "%s: not an embstore multi-vector index (embstore.type is '%.40s')", path,
                type ? type : "missing");
        es__file_close(f);
        return ES_EFORMAT;
    }
    es_multi *m = NULL;
    if ((rc = es__multi_read(&m, f, &e))) {
        es__file_close(f);
        return es__err(err, rc, "%s: %s", path, e.msg);
    }
    m->file = f;
    *out = m;
    return ES_OK;
}
