/*
 * multihash.c — the `multihash` storage method: k hash functions into a
 * shared pool of rows, summed, optionally with learned per-value
 * importance weights — the hash embeddings of Svenstrup, Hansen, Winther,
 * "Hash Embeddings for Efficient Word Representations", NeurIPS 2017.
 *
 * What is stored: a pool of P rows of dim floats and, with weights=1 (the
 * default), an importance table of K rows of k floats (share=1: one pool
 * and one importance table for every field; share=0: one of each per
 * field, stacked).
 *
 * Lookup: for value `key` of field f,
 *   h    = es__hash_u64(key, salt_f),    salt_f = es__storage_salt(seed, f, 0)
 *   r_j  = es__range(es__mix64(h + j * 0x9e3779b97f4a7c15), P_f)   j < k
 *   w    = es__range(h, K_f)                                 importance row
 *   vec  = sum_j p_w[j] * pool[r_j]      (weights=0: sum_j pool[r_j])
 * and a pair pools sum(wt * vec) over its values.  A value collides
 * completely with another only if all k rows and its importance row
 * coincide; the learned weights let colliding values tell their shared
 * rows apart.
 *
 * Training: d pool[r_j] = wt * p_w[j] * dout and d p_w[j] = wt * dout .
 * pool[r_j], both taken before any update; summed per distinct row over
 * the batch; one update per touched row of each table from the configured
 * sparse optimizer (a "row" is a pool row of dim floats, or the k
 * importance weights of one importance row).
 *
 * Across processes (docs/scale.md, mh_row_map): the pool and the
 * importance table are tables 0 and 1 of one row space (global rows
 * [0, P) and [P, P + K), stacked per field as stored), each sharded by
 * global row with its optimizer state; a value resolves to its k pool rows
 * and its importance row, which the distributed step fetches and pools
 * with mh_pool (mh_lookup's float operations), and each row's gradient goes
 * to its owner with the weight mh_backward adds it with (mh_pool_grad_wt),
 * so the owners' sums are mh_backward's, float for float.  fp32 only: a
 * precision is refused across processes.
 *
 * Budget: with A = (B - aux) / 4 floats, weights=1 gives the importance
 * table K = floor(wfrac * A / k) rows (wfrac option, default 0.25: k
 * floats per row are cheap, so K can exceed P several times over), the
 * pool P = floor((A - K k) / dim) rows, and the few floats left more
 * importance rows; weights=0 gives the pool everything.  share=0 splits A
 * over the fields (dim + k floats each, the rest in proportion to the
 * fields' full-table rows, distinct + 1, from the vocabulary, or equally),
 * fills them in order and carries each field's leftover to the next, so
 * parameters + aux end within k floats (weights=0: dim floats) of B.  aux
 * is the base and size arrays of the pool and importance table of each
 * field, or of the shared ones; the salts are recomputed from the seed for
 * each pair rather than stored.
 *
 * Precision (--precision, issue 11): the pool is the row table (ops->rows)
 * that is quantized after training or trained at a precision (QAT, ALPT);
 * lookups then pool the dequantized codes, and the importance gradient's
 * dot products take those same values (es__rows_get).  The importance
 * table stays fp32 (see mh_rows).
 *
 * Initial values: pool rows from U(-a, a) with a = init_scale / sqrt(k)
 * (so a sum of k rows has the spread of one init_scale row), importance
 * weights 1 (so weights=1 starts as weights=0 and learns from there).
 * Options k (1..16, default 2), weights=0|1, wfrac, pool=..., imp=...;
 * resolved into s->meta as "share=S,seed=N,k=K,weights=W,pool=P[:P...],
 * imp=K[:K...]" (per field when share=0) and read back on load.
 */
#include "storage/storage.h"

#include "core/simd.h"

#include <math.h>

#define MH_MAX_K 16
#define MH_MAX_ROWS (UINT64_C(1) << 44)
#define MH_GOLDEN UINT64_C(0x9e3779b97f4a7c15)

typedef struct mh_impl {
    int F, G, k, dim, weighted;
    es_rows pool;            /* [P, dim] */
    es_rows imp;             /* [K, k]; unused (zeroed) when !weighted */
    es_gradacc ga_pool, ga_imp;
    float *tmp;              /* [dim] backward scratch: a pool row as the forward sees it */
    uint64_t *pbase, *prows; /* [G] pool rows of each group */
    uint64_t *wbase, *wrows; /* [G] importance rows of each group */
    uint64_t seed;           /* field f hashes with es__storage_salt(seed, f, 0), computed per pair */
} mh_impl;


/* ---- index ---------------------------------------------------------------------------- */

static inline uint64_t mh_pool_row(const mh_impl *m, int g, uint64_t h, int j) {
    return m->pbase[g] + es__range(es__mix64(h + (uint64_t)j * MH_GOLDEN), m->prows[g]);
}

static inline uint64_t mh_imp_row(const mh_impl *m, int g, uint64_t h) { return m->wbase[g] + es__range(h, m->wrows[g]); }

static void mh_resolve(const void *ctx, int f, const uint64_t *keys, size_t n, uint64_t *ids) {
    const mh_impl *m = ctx;
    const int g = m->G == 1 ? 0 : f;
    const uint64_t salt = es__storage_salt(m->seed, f, 0);
    for (size_t i = 0; i < n; i++) {
        const uint64_t h = es__hash_u64(keys[i], salt);
        for (int j = 0; j < m->k; j++) ids[i * (size_t)m->k + j] = mh_pool_row(m, g, h, j);
    }
}

/* ---- lookup and backward ---------------------------------------------------------------- */

static void mh_free(mh_impl *m) {
    if (!m) return;
    es__rows_free(&m->pool);
    es__rows_free(&m->imp);
    es__gradacc_free(&m->ga_pool);
    es__gradacc_free(&m->ga_imp);
    es__free(m->tmp);
    es__free(m->pbase); /* the other index arrays share the allocation */
    es__free(m);
}

static void mh_destroy(es_storage *s) {
    mh_free(s->impl);
    s->impl = NULL;
}

static void mh_lookup(es_storage *s, const es_batch *b, int r0, int r1, float *out) {
    const mh_impl *m = s->impl;
    const int F = m->F, k = m->k, dim = m->dim;
    /* a pool of codes (precision below fp32) is pooled with es__dequant_axpy */
    const es_precision prec = m->pool.prec;
    const size_t rb = prec != ES_PREC_FP32 ? es__prec_row_bytes(prec, dim) : 0;
    for (size_t P = (size_t)r0 * F, P1 = (size_t)r1 * F, fi = 0; P < P1; P++, fi = fi + 1 == (size_t)F ? 0 : fi + 1) {
        const int f = (int)fi, g = m->G == 1 ? 0 : f;
        const uint64_t salt = es__storage_salt(m->seed, f, 0);
        float *o = out + (P - (size_t)r0 * F) * (size_t)dim;
        memset(o, 0, (size_t)dim * sizeof *o);
        for (uint32_t i = b->off[P]; i < b->off[P + 1]; i++) {
            const uint64_t h = es__hash_u64(b->val[i], salt);
            const float wt = b->wt[i];
            const float *pw = m->weighted ? m->imp.w + mh_imp_row(m, g, h) * (uint64_t)k : NULL;
            for (int j = 0; j < k; j++) {
                const uint64_t r = mh_pool_row(m, g, h, j);
                const float a = pw ? wt * pw[j] : wt;
                if (rb) es__dequant_axpy(prec, m->pool.q + r * rb, dim, a, o);
                else es__axpy(o, a, m->pool.w + r * (uint64_t)dim, (size_t)dim);
            }
        }
    }
}

static int mh_backward(es_storage *s, const es_batch *b, const float *dout) {
    mh_impl *m = s->impl;
    const int F = m->F, k = m->k, dim = m->dim;
    es__gradacc_clear(&m->ga_pool);
    if (m->weighted) es__gradacc_clear(&m->ga_imp);
    for (size_t P = 0, PN = (size_t)b->n * F, fi = 0; P < PN; P++, fi = fi + 1 == (size_t)F ? 0 : fi + 1) {
        const int f = (int)fi, g = m->G == 1 ? 0 : f;
        const uint64_t salt = es__storage_salt(m->seed, f, 0);
        const float *go = dout + P * (size_t)dim;
        for (uint32_t i = b->off[P]; i < b->off[P + 1]; i++) {
            const uint64_t h = es__hash_u64(b->val[i], salt);
            const float wt = b->wt[i];
            const float *pw = NULL;
            float *gw = NULL;
            if (m->weighted) {
                const uint64_t wr = mh_imp_row(m, g, h);
                pw = m->imp.w + wr * (uint64_t)k;
                if (!(gw = es__gradacc_row(&m->ga_imp, wr))) goto nomem;
            }
            for (int j = 0; j < k; j++) {
                const uint64_t r = mh_pool_row(m, g, h, j);
                float *gp = es__gradacc_row(&m->ga_pool, r);
                if (!gp) goto nomem;
                es__axpy(gp, pw ? wt * pw[j] : wt, go, (size_t)dim);
                /* the importance gradient takes the row the forward pooled
                 * (the codes' values for a pool at a lower precision) */
                if (gw) gw[j] += wt * es__dot(go, es__rows_get(&m->pool, r, m->tmp), (size_t)dim);
            }
        }
    }
    /* all gradients used the old values; now update both tables */
    es__gradacc_apply(&m->ga_pool, &m->pool);
    if (m->weighted) es__gradacc_apply(&m->ga_imp, &m->imp);
    return ES_OK;
nomem:
    es__gradacc_clear(&m->ga_pool);
    if (m->weighted) es__gradacc_clear(&m->ga_imp);
    return es__err(&s->err, ES_ENOMEM, "multihash: out of memory growing the gradient scratch");
}

/* Rename refs[1..n) "opt.<x>" to "opt.<part>.<x>" ("opt.pool.acc", ...). */
static void mh_name_state(es_tensor_ref *refs, int n, const char *part) {
    for (int i = 1; i < n; i++) {
        char tmp[sizeof refs[i].name];
        snprintf(tmp, sizeof tmp, "%s", refs[i].name + 4);
        snprintf(refs[i].name, sizeof refs[i].name, "opt.%.16s.%.40s", part, tmp);
    }
}

static int mh_tensors(es_storage *s, es_tensor_ref *refs, int max) {
    mh_impl *m = s->impl;
    int np = es__rows_tensors(&m->pool, NULL, 0), nw = m->weighted ? es__rows_tensors(&m->imp, NULL, 0) : 0;
    if (!refs) return np + nw;
    if (max < np + nw) return ES_ERANGE;
    es__rows_tensors(&m->pool, refs, max);
    /* codes: "pool.q" (u8 [rows, row bytes]) in place of "pool" */
    snprintf(refs[0].name, sizeof refs[0].name, m->pool.prec == ES_PREC_FP32 ? "pool" : "pool.q");
    mh_name_state(refs, np, "pool");
    if (nw) {
        es__rows_tensors(&m->imp, refs + np, max - np);
        snprintf(refs[np].name, sizeof refs[np].name, "importance");
        mh_name_state(refs + np, nw, "importance");
    }
    return np + nw;
}

static void mh_field_stats(es_storage *s, const es_vocab *vocab, int field, es_field_stats *out) {
    mh_impl *m = s->impl;
    if (field < 0 || field >= m->F) {
        memset(out, 0, sizeof *out);
        return;
    }
    /* over the pool: rows counts the k * P (probe j, row) pairs a value
     * can address, rows_used the distinct pairs used, collisions the
     * values whose whole k-row tuple is shared */
    es__rows_field_stats(m->k, mh_resolve, m, vocab, field, (uint64_t)m->k * m->prows[m->G == 1 ? 0 : field], out);
}

/* ---- create -------------------------------------------------------------------------------- */

/* Pool and importance rows for A >= dim + k (weighted) or dim floats;
 * returns the floats left. */
static uint64_t mh_fill(uint64_t A, int dim, int k, int weighted, double wfrac, uint64_t *P, uint64_t *K) {
    if (!weighted) {
        *K = 0;
        *P = A / (uint64_t)dim;
        return A - *P * (uint64_t)dim;
    }
    uint64_t kk = (uint64_t)k, d = (uint64_t)dim;
    uint64_t K0 = (uint64_t)(wfrac * (double)A) / kk;
    if (K0 < 1) K0 = 1;
    if (K0 * kk + d > A) K0 = (A - d) / kk; /* the pool keeps at least one row */
    uint64_t P0 = (A - K0 * kk) / d;
    uint64_t left = A - K0 * kk - P0 * d;
    K0 += left / kk; /* what cannot buy a pool row buys importance rows */
    *P = P0;
    *K = K0;
    return left % kk;
}

static const es__opt_spec mh_opts[] = {
    ES_OPT_SHARE,
    ES_OPT_SEED,
    ES_OPT_U("k", 1, MH_MAX_K, "2", 0, "hashed pool rows summed per value", "3", ""),
    ES_OPT_U("weights", 0, 1, "1", 0, "1: learned per-value importance weights; 0: plain sum", "0", ""),
    ES_OPT_L("pool", 1, MH_MAX_ROWS, NULL, ES_OPT_SIZES, "pool rows per field P[:P...] (with imp= when weights=1; default: from "
             "the budget)", "40:50", "imp=6:7"),
    ES_OPT_L("imp", 1, MH_MAX_ROWS, NULL, ES_OPT_SIZES, "importance rows per field K[:K...] (with pool=)", "8:9", "pool=30:20"),
    ES_OPT_F("wfrac", 0, 1, "0.25", ES_OPT_LO_OPEN | ES_OPT_HI_OPEN, "share of the budget for importance rows", "0.5", ""),
};

static int mh_create(es_storage *s, const es_vocab *vocab, es_err *err) {
    const int F = s->p.n_fields, dim = s->p.dim;
    int rc;
    const int share = es__storage_opt_int(s, "share"), k = es__storage_opt_int(s, "k"), weighted = es__storage_opt_int(s, "weights");
    const double wfrac = es__storage_opt_f64(s, "wfrac");
    if (es__storage_opt_given(s, "seed")) s->p.seed = es__storage_opt_u64(s, "seed");
    const int G = share ? 1 : F;
    const size_t aux = (size_t)(weighted ? 4 : 2) * G * sizeof(uint64_t);
    const int shard = s->p.shard_n > 1; /* rank shard_rank's rows of the pool and importance table (es__row_map) */
    if (s->p.shard_n >= 1 && s->p.precision != ES_PREC_FP32)
        return es__err(err, ES_EINVAL,
                       "multihash: --precision %s is not supported across processes yet (the distributed step reads a "
                       "method's pooled rows as fp32; docs/scale.md)",
                       es__prec_name(s->p.precision));

    uint64_t *P = es__malloc((size_t)G * sizeof *P), *K = es__malloc((size_t)G * sizeof *K),
             *Af = es__malloc((size_t)G * sizeof *Af);
    if (!P || !K || !Af) {
        rc = es__err(err, ES_ENOMEM, "multihash: out of memory");
        goto fail;
    }
    int fp, fk = 0;
    if ((rc = es__storage_opt_list(s, "pool", G, 1, P, &fp, err)) != 0) goto fail;
    if (weighted && (rc = es__storage_opt_list(s, "imp", G, 1, K, &fk, err)) != 0) goto fail;
    if (fp != (weighted ? fk : fp)) {
        rc = es__err(err, ES_EINVAL, "multihash: options pool= and imp= go together");
        goto fail;
    }
    if (!fp) {
        if (!(s->budget_bytes > 0)) {
            rc = es__err(err, ES_EINVAL,
                         "multihash: needs a budget: bytes (> 1), or a fraction (0, 1] of the full table with a vocabulary");
            goto fail;
        }
        const uint64_t unit = (uint64_t)dim + (weighted ? (uint64_t)k : 0);
        double avail = s->budget_bytes - (double)aux;
        double A = avail > 0 ? floor(avail / sizeof(float)) : 0;
        if (A < (double)G * (double)unit) {
            rc = es__err(err, ES_EBUDGET,
                         "multihash: a budget of %.0f bytes leaves %.0f floats after %zu bytes of lookup arrays; one pool "
                         "row%s needs %llu floats%s (%.0f bytes in all)%s",
                         s->budget_bytes, A, aux, weighted ? " and one importance row" : "", (unsigned long long)unit,
                         share ? "" : " per field", (double)aux + (double)G * (double)unit * sizeof(float),
                         share ? "" : "; share=1 pays for one set, not one per field");
            goto fail;
        }
        if (A / (double)dim > (double)MH_MAX_ROWS) {
            rc = es__err(err, ES_ERANGE, "multihash: a budget of %.0f bytes is larger than this build allocates",
                         s->budget_bytes);
            goto fail;
        }
        es__storage_split((uint64_t)A, G, share ? NULL : vocab, unit, Af);
        uint64_t carry = 0;
        for (int g = 0; g < G; g++) carry = mh_fill(Af[g] + carry, dim, k, weighted, wfrac, &P[g], &K[g]);
    }
    if (!weighted)
        for (int g = 0; g < G; g++) K[g] = 0;
    uint64_t tp = 0, tk = 0;
    for (int g = 0; g < G; g++) {
        tp += P[g]; /* each <= 2^44, G <= 2^20 */
        tk += K[g];
    }
    if (tp > MH_MAX_ROWS || tk > MH_MAX_ROWS) {
        rc = es__err(err, ES_ERANGE, "multihash: %llu pool rows is more than this build allocates", (unsigned long long)tp);
        goto fail;
    }
    if (shard && (tp < (uint64_t)s->p.shard_n || (weighted && tk < (uint64_t)s->p.shard_n))) {
        rc = es__err(err, ES_EINVAL,
                     "multihash: %llu pool rows and %llu importance rows: each table needs a row on each of the %d processes "
                     "it is split over",
                     (unsigned long long)tp, (unsigned long long)tk, s->p.shard_n);
        goto fail;
    }

    mh_impl *m = es__calloc(1, sizeof *m);
    if (!m) {
        rc = es__err(err, ES_ENOMEM, "multihash: out of memory");
        goto fail;
    }
    m->F = F;
    m->G = G;
    m->k = k;
    m->dim = dim;
    m->weighted = weighted;
    m->pbase = es__malloc(aux);
    es_rng rng;
    es__rng_seed(&rng, s->p.seed);
    const size_t pairs = (size_t)s->p.max_batch * (size_t)F;
    m->tmp = es__malloc((size_t)dim * sizeof *m->tmp);
    /* the pool is global rows [0, tp) of the row space, the importance
     * table [tp, tp + tk) (mh_row_map); a shard is trained by the
     * distributed step, which sums its gradients itself: no scratch */
    const int rank = s->p.shard_rank, nsh = s->p.shard_n;
    int ok = m->pbase && m->tmp &&
             es__rows_init_shard_at(&m->pool, tp, dim, &s->p.opt, &rng, s->p.init_scale / sqrtf((float)k), 0, rank, nsh) == ES_OK &&
             (shard || es__gradacc_init(&m->ga_pool, ES_MIN(pairs * (size_t)k, (size_t)tp), dim) == ES_OK);
    if (ok && weighted) {
        ok = es__rows_init_shard_at(&m->imp, tk, k, &s->p.opt, NULL, 0, tp, rank, nsh) == ES_OK &&
             (shard || es__gradacc_init(&m->ga_imp, ES_MIN(pairs, (size_t)tk), k) == ES_OK);
        if (ok)
            for (size_t e = 0, n = (size_t)m->imp.n_rows * (size_t)k; e < n; e++) m->imp.w[e] = 1.0f;
    }
    if (!ok) {
        mh_free(m);
        rc = es__err(err, ES_ENOMEM, "multihash: out of memory for %llu pool rows of %d floats", (unsigned long long)tp, dim);
        goto fail;
    }
    m->prows = m->pbase + G;
    if (weighted) {
        m->wbase = m->prows + G;
        m->wrows = m->wbase + G;
    }
    uint64_t ap = 0, ak = 0;
    for (int g = 0; g < G; g++) {
        m->pbase[g] = ap;
        m->prows[g] = P[g];
        if (weighted) {
            m->wbase[g] = ak;
            m->wrows[g] = K[g];
        }
        ap += P[g];
        ak += K[g];
    }
    m->seed = s->p.seed;

    if ((rc = es__storage_opt_set_u64(s, "share", (uint64_t)share, err)) != 0 ||
        (rc = es__storage_opt_set_u64(s, "seed", s->p.seed, err)) != 0 || (rc = es__storage_opt_set_u64(s, "k", (uint64_t)k, err)) != 0 ||
        (rc = es__storage_opt_set_u64(s, "weights", (uint64_t)weighted, err)) != 0 ||
        (rc = es__storage_opt_set_list(s, "pool", P, G, 1, err)) != 0 ||
        (weighted && (rc = es__storage_opt_set_list(s, "imp", K, G, 1, err)) != 0)) {
        mh_free(m);
        goto fail;
    }
    s->impl = m;
    s->param_bytes = es__rows_param_bytes(&m->pool) + (weighted ? es__rows_param_bytes(&m->imp) : 0);
    s->state_bytes = es__rows_state_bytes(&m->pool) + (weighted ? es__rows_state_bytes(&m->imp) : 0);
    s->aux_bytes = aux;
    es__free(P);
    es__free(K);
    es__free(Af);
    return ES_OK;
fail:
    es__free(P);
    es__free(K);
    es__free(Af);
    return rc;
}

/* ---- across processes (es__row_map, src/train/dist.c) ------------------------------------------ */

/* mh_resolve in the row space of mh_row_map: a value's k pool rows, then
 * (weights=1) its importance row after the tp pool rows. */
static void mh_resolve_global(const void *ctx, int f, const uint64_t *keys, size_t n, uint64_t *ids) {
    const mh_impl *m = ctx;
    const int g = m->G == 1 ? 0 : f, kk = m->k + m->weighted;
    const uint64_t salt = es__storage_salt(m->seed, f, 0), tp = m->pbase[m->G - 1] + m->prows[m->G - 1];
    for (size_t i = 0; i < n; i++) {
        const uint64_t h = es__hash_u64(keys[i], salt);
        uint64_t *id = ids + i * (size_t)kk;
        for (int j = 0; j < m->k; j++) id[j] = mh_pool_row(m, g, h, j);
        if (m->weighted) id[m->k] = tp + mh_imp_row(m, g, h);
    }
}

/* vec = sum_j p_w[j] * pool[r_j] from the value's fetched rows (e[k]:
 * its importance row), in mh_lookup's float operations at fp32. */
static void mh_pool(void *self, const int *tab, const float *const *e, float wt, float *out) {
    const mh_impl *m = self;
    const float *pw = m->weighted ? e[m->k] : NULL;
    for (int j = 0; j < m->k; j++) es__axpy(out, pw ? wt * pw[j] : wt, e[j], (size_t)m->dim);
}

/* mh_backward's gradients from the fetched (pre-update) rows: pool row j
 * gets dout with weight wt p_w[j] (its es__axpy), the importance row the
 * rounded wt <dout, pool[r_j]> with weight 1 (its +=). */
static void mh_pool_grad_wt(void *self, const int *tab, const float *const *e, float wt, const float *dout, float *const *g, float *w) {
    const mh_impl *m = self;
    const float *pw = m->weighted ? e[m->k] : NULL;
    for (int j = 0; j < m->k; j++) {
        memcpy(g[j], dout, (size_t)m->dim * sizeof(float));
        w[j] = pw ? wt * pw[j] : wt;
        if (pw) g[m->k][j] = wt * es__dot(dout, e[j], (size_t)m->dim);
    }
    if (pw) w[m->k] = 1.0f;
}

/* ops->row_map: the pool (table 0, dim floats a row) and the importance
 * table (table 1, k floats a row; none with weights=0) as one row space,
 * each value's k pool rows and importance row pooled by mh_pool.  fp32
 * only (create refuses a precision across processes). */
static int mh_row_map(es_storage *s, es__row_map *out) {
    mh_impl *m = s->impl;
    if (m->pool.prec != ES_PREC_FP32) return ES_EINVAL;
    const uint64_t tp = m->pbase[m->G - 1] + m->prows[m->G - 1];
    memset(out, 0, sizeof *out);
    out->t[0] = &m->pool;
    out->base[1] = out->rows = tp;
    out->n_t = 1;
    if (m->weighted) {
        out->t[1] = &m->imp;
        out->base[2] = out->rows = tp + m->wbase[m->G - 1] + m->wrows[m->G - 1];
        out->n_t = 2;
    }
    out->k = m->k + m->weighted;
    out->combine = ES_COMBINE_METHOD;
    out->fn = mh_resolve_global;
    out->ctx = m;
    out->self = m;
    out->pool = mh_pool;
    out->pool_grad_wt = mh_pool_grad_wt;
    return ES_OK;
}

/* ops->rows: the pool only.  The importance table stays fp32 at every
 * precision (k floats per importance row: a row's scale and bias would cost
 * as much as its codes save), trains with the storage optimizer as at fp32
 * and is saved as "importance"; its bytes count in param_bytes, so a byte
 * budget at a lower precision holds the pool's codes plus the fp32
 * importance rows (es__storage_create shrinks the fp32 sizing until both
 * fit). */
static es_rows *mh_rows(es_storage *s, int i) {
    mh_impl *m = s->impl;
    return i == 0 ? &m->pool : NULL;
}

const es_storage_ops es__storage_multihash = {
    .name = "multihash",
    .summary = "hash embeddings: k hashed rows of a shared pool, summed with learned per-value importance weights",
    .create = mh_create,
    .lookup = mh_lookup,
    .backward = mh_backward,
    .tensors = mh_tensors,
    .after_load = NULL,
    .field_stats = mh_field_stats,
    .destroy = mh_destroy,
    ES_STORAGE_OPTS(mh_opts),
    .default_budget = ES_DEFAULT_BUDGET,
    .rows = mh_rows,
    .row_map = mh_row_map,
};
