/*
 * mde.c — the `mde` storage method: mixed-dimension embeddings (Ginart et
 * al., ISIT 2021, "Mixed Dimension Embeddings with Application to
 * Memory-Efficient Recommendation Systems").
 *
 * Popular values get wide vectors, rare ones narrow vectors, and every
 * vector is projected to the common output dimension.  Following the
 * paper's power rule, a value of popularity (count) c in a space whose
 * most popular value has count c_top gets
 *     d(c) = round(dim * (c / c_top)^alpha),  clamped to [0, dim],
 * so the dimension falls with the value's rarity (alpha = 0: every value
 * gets dim; larger alpha: faster decay).  The paper applies the rule to
 * blocks of equal popularity (with per-feature blocks of n items, p = 1/n
 * and d ~ n^-alpha); here the blocks are the runs of values, in
 * popularity order, whose rounded dimension is equal ("tiers").  A value
 * whose dimension rounds to 0 has no vector of its own: like every value
 * not in the table (unseen, or below min_count), it shares hashed
 * full-dimension rows, which also serve as the out-of-vocabulary rows.
 *
 * Storage, per space (share=0: one space per field; share=1: one space
 * for all fields, one popularity scale, shared tiers and hashed rows with
 * per-field salts):
 *   tier t        count_t rows of d_t floats, and when d_t < dim a
 *                 projection P_t [d_t, dim]; value vector = row P_t;
 *   hashed rows   rows[s] rows of dim floats; value (f, key) reads row
 *                 base[s] + es__range(es__hash_u64(key, salt_f), rows[s]).
 * The table's values are found through a map of tagged keys (key ^ a
 * per-field tag, so equal raw keys of two fields are two entries) in row
 * order — space by space, most popular first — with an open-addressing
 * index rebuilt on load; map.tiers lists (space, count, dim) per tier, so
 * a loaded model needs no vocabulary.
 *
 * Budget B (bytes), from the vocabulary:
 *   bytes(alpha) = 4 sum_i d_i  + 4 sum_t d_t dim [d_t < dim]      (rows, projections)
 *                + 8 keys + 4 index slots + 24 per tier             (map)
 *                + 4 dim per space (one hashed row each) + 16 per space;
 * alpha is solved by bisection on [0, 64] as the smallest value with
 * bytes(alpha) <= B.  When even alpha = 64 does not fit (or alpha has no
 * effect, e.g. all counts equal), alpha stops where it stops mattering
 * and the least popular values (by count over all fields; ties by field,
 * then key) leave the table until it fits.  What is left of B becomes
 * more hashed rows, so param + aux bytes are within one row of B.  With
 * share=0 they are split over the fields: one each, the rest in
 * proportion to each field's distinct values that are not in the table.
 *
 * Training.  Backward sums the output-space gradient of each distinct
 * value (and hashed row) over the batch, then per value: the row gets
 * P_t g (its own gradient through the projection) and P_t gets row (x) g,
 * both from the values before this step; rows take the storage optimizer
 * (row-wise Adagrad by default, one state per row) and hashed rows too;
 * the projections are dense and take per-element Adagrad (SGD when the
 * storage optimizer is SGD; "dense_opt=sgd|adagrad|adam", "dense_lr=").
 *
 * Precision (--precision, issue 11): the row tables (ops->rows) are the
 * hashed tail and one es_rows per tier -- views of the one fp32 array
 * `rows` (es_rows.view), so the fp32 layout, draws and files are as
 * before.  Converted (PTQ, or QAT / ALPT at create), each tier gets codes
 * of its own dim; after_convert frees what no view uses now (rows, kept as
 * QAT's master; racc, kept while training).  The projections stay fp32
 * (dense parameters, counted in param_bytes).  Lookups and backward read a
 * row through es__rows_get, so an fp32 twin whose rows are the dequantized
 * codes gives the same bits.  A load creates the storage before the tiers
 * are known: after_load makes the tiers' code tables from map.tiers, and
 * es__storage_read_tensors reads them in its second stage.
 *
 * Across processes (docs/scale.md, ops->row_map): the tiers, then the
 * hashed rows, are one global row space of T + 1 tables of their own
 * widths (value v is global row v, hashed row h is N + h); the
 * distributed step fetches and updates the rows on their owners and pools
 * them through mde's callbacks (mde_pool: mde_lookup's float operations),
 * and the projections' gradient joins the dense reduce.  A shard
 * (shard_n > 1) holds its rows of each tier and of the hashed rows with
 * their state; the key map and the projections are whole on every rank.
 * At a precision (QAT, ALPT) a shard's tables are converted as the whole
 * storage's are (each holds its rows' codes, master or steps, ALPT's
 * rounding keyed by the row's index in the whole tier: shard_key), the
 * step fetches codes and mde_pool reads them dequantized, and the model
 * file streams "tier<t>.q" and "tail.q" from the shards.
 *
 * s->meta: "share=,alpha=,keys=N,tiers=T,rowf=R,projf=Q,hashed=H,seed=,
 * dense_opt=" — create() honours it (shapes), the tensors carry the rest.
 */
#include "storage/storage.h"

#include "core/simd.h"
#include "optim/optim.h"

#include <math.h>

#define MDE_ALPHA_MAX 64.0

typedef enum { DOPT_SGD = 0, DOPT_ADAGRAD = 1, DOPT_ADAM = 2 } mde_dopt;
static const char *const dopt_names[] = {"sgd", "adagrad", "adam"};

typedef struct mde_impl {
    int F, S, dim, share;
    uint64_t seed;
    double alpha;
    char alpha_str[32];
    uint64_t N, T, R, Q, H;  /* keys, tiers, row floats, projection floats, hashed rows (the whole storage's) */
    /* a shard (shard_n > 1, training across processes: es__row_map, the
     * tiers then the hashed rows as one row space): the rank's rows of
     * every tier (Nl values, Rl floats in rows / racc) and of the tail;
     * the maps and projections are whole.  Unsharded: Nl = N, Rl = R. */
    int shard_rank, shard_n;
    uint64_t Nl, Rl;
    /* persistent */
    uint64_t *keys;          /* [max(N,1)] tagged keys, row order */
    uint64_t *tiers;         /* [max(T,1) * 3]: space, count, dim */
    uint64_t *hrows;         /* [S] hashed rows per space; hbase [S] follows */
    uint64_t *hbase;
    float *rows;             /* [max(Rl,1)] */
    float *racc;             /* row optimizer state: rowwise [Nl], adagrad [Rl] */
    float *proj;             /* [max(Q,1)] */
    es__dense_opt popt;      /* the projections' optimizer: segment t = tier t's
                              * projection (empty when d_t = dim), one step count */
    es_rows tail;            /* [H, dim] */
    /* derived */
    uint64_t *vstart;        /* [T + 2] first value index of each tier, N, N + H: the row map's bases */
    uint64_t *poff;          /* [T] projection offset, UINT64_MAX when d == dim */
    es_rows *views;          /* [T] row-table views of the tiers (w, acc point into rows/racc) */
    uint32_t *index;         /* [icap] */
    size_t icap;
    /* training */
    es_gradacc ga;           /* output-space gradient per value id (value i, or N + hashed row) */
    float *pgrad;            /* [max(Q,1)] */
    float *gr;               /* [dim] */
    float *rowbuf;           /* [dim] backward: a row of codes dequantized */
    char tname[32];          /* mde_table_tensor's answer: "tier<t>.q" */
    /* precision (ops->rows: the tail, then the tiers' views) */
    int derived;             /* the views are set (tiers known: solved, or loaded) */
    int qready;              /* the views are at the tail's precision (below fp32) */
    mde_dopt dopt;
    float lr;
    es_optim_params opt;
} mde_impl;

static inline uint64_t field_tag(int f) { return es__mix64(UINT64_C(0x3de9e3779b97f4a7) + (uint64_t)(uint32_t)f); }

static inline uint64_t map_find(const mde_impl *m, uint64_t t) { return es__keyidx_find(m->keys, m->index, m->icap, t); }

static int map_insert(mde_impl *m, uint64_t i) { return es__keyidx_insert(m->keys, m->index, m->icap, i); }

/* Tier of value i (binary search over vstart). */
static inline uint64_t tier_of(const mde_impl *m, uint64_t i) { return es__last_le(m->vstart, (size_t)m->T, i); }

/* salt = es__storage_salt(m->seed, f, 0), computed once per (row, field) by
 * the caller (not stored: it costs three mixer rounds). */
static inline uint64_t hashed_row(const mde_impl *m, int f, uint64_t salt, uint64_t key) {
    const int s = m->share ? 0 : f;
    return m->hbase[s] + es__range(es__hash_u64(key, salt), m->hrows[s]);
}

/* The global rows r < x (values, then N + hashed rows) this rank holds:
 * r % shard_n == shard_rank; all of them unsharded. */
static inline uint64_t own_below(const mde_impl *m, uint64_t x) {
    if (m->shard_n <= 1) return x;
    const uint64_t n = (uint64_t)m->shard_n;
    return (x + n - 1 - (uint64_t)m->shard_rank) / n;
}

/* A shard's table t whose row 0 is global row `first`: which rows of the
 * whole table it holds (es_rows.shard_r0, shard_n), so that ALPT keys a
 * row's rounding by its index in the whole table, as one process does. */
static void shard_key(const mde_impl *m, es_rows *t, uint64_t first) {
    if (m->shard_n <= 1) return;
    const uint64_t n = (uint64_t)m->shard_n;
    t->shard_r0 = ((uint64_t)m->shard_rank + n - first % n) % n;
    t->shard_n = n;
}

/* U(-a, a) draws for global rows [first, first + count) of width dim, in
 * row order (as one fill of the whole block draws them), kept at dst for
 * the rows this rank holds; scratch [dim] takes the others'. */
static void draw_rows(const mde_impl *m, es_rng *rng, float *dst, uint64_t first, uint64_t count, int dim, float a, float *scratch) {
    if (m->shard_n <= 1) {
        es__rng_fill_uniform(rng, dst, (size_t)count * (size_t)dim, a);
        return;
    }
    for (uint64_t r = first; r < first + count; r++) {
        const int mine = r % (uint64_t)m->shard_n == (uint64_t)m->shard_rank;
        es__rng_fill_uniform(rng, mine ? dst : scratch, (size_t)dim, a);
        if (mine) dst += dim;
    }
}

/* Bytes of the map and small arrays (aux) for N keys and T tiers. */
static size_t mde_aux(uint64_t N, uint64_t T, int S) {
    return 8 * (size_t)ES_MAX(N, 1) + 4 * es__keyidx_cap(N) + 24 * (size_t)ES_MAX(T, 1) + 16 * (size_t)S;
}

/* ---- lifecycle ------------------------------------------------------------------------ */

static void mde_free(mde_impl *m) {
    if (!m) return;
    es__free(m->keys);
    es__free(m->tiers);
    es__free(m->hrows);
    es__free_aligned(m->rows);
    es__free_aligned(m->racc);
    es__free_aligned(m->proj);
    es__dense_opt_free(&m->popt);
    es__rows_free(&m->tail);
    es__free(m->vstart);
    es__free(m->poff);
    /* a view's w and acc are rows / racc; its codes are its own */
    for (uint64_t t = 0; m->views && t < m->T; t++) es__rows_free(&m->views[t]);
    es__free(m->views);
    es__free(m->rowbuf);
    es__free(m->index);
    es__gradacc_free(&m->ga);
    es__free_aligned(m->pgrad);
    es__free(m->gr);
    es__free(m);
}

static void mde_destroy(es_storage *s) {
    mde_free(s->impl);
    s->impl = NULL;
}

/* Check the tier table and hashed-row split against the shapes, then
 * derive vstart/poff/views, the hashed bases and the index. */
static int mde_derive(mde_impl *m, es_err *err) {
    uint64_t v = 0, rf = 0, pf = 0, prev_s = 0, prev_d = 0, vl = 0, rfl = 0;
    for (uint64_t t = 0; t < m->T; t++) {
        const uint64_t sp = m->tiers[3 * t], cnt = m->tiers[3 * t + 1], d = m->tiers[3 * t + 2];
        if (sp >= (uint64_t)m->S || cnt == 0 || cnt > m->N || d == 0 || d > (uint64_t)m->dim || (t && sp < prev_s) ||
            (t && sp == prev_s && d >= prev_d))
            return es__err(err, ES_EFORMAT,
                           "mde: tier %llu (space %llu, %llu values, dim %llu) is invalid: spaces must not decrease, "
                           "dims must fall within a space and lie in [1, %d]",
                           (unsigned long long)t, (unsigned long long)sp, (unsigned long long)cnt, (unsigned long long)d,
                           m->dim);
        m->vstart[t] = v;
        es__rows_free(&m->views[t]);
        m->views[t] = (es_rows){0};
        m->views[t].view = 1;
        /* w and acc below, once the rank's rows are counted (a shard's
         * arrays are made for them here) */
        m->views[t].n_rows = own_below(m, v + cnt) - own_below(m, v);
        shard_key(m, &m->views[t], v);
        m->views[t].dim = (int)d;
        m->views[t].opt = m->opt;
        m->poff[t] = d < (uint64_t)m->dim ? pf : UINT64_MAX;
        if (d < (uint64_t)m->dim) pf += d * (uint64_t)m->dim;
        v += cnt;
        rf += cnt * d;
        vl += m->views[t].n_rows;
        rfl += m->views[t].n_rows * d;
        prev_s = sp;
        prev_d = d;
    }
    m->vstart[m->T] = v;
    m->vstart[m->T + 1] = v + m->H;
    if (v != m->N || rf != m->R || pf != m->Q)
        return es__err(err, ES_EFORMAT,
                       "mde: tiers hold %llu values, %llu row floats and %llu projection floats; the shapes say %llu, "
                       "%llu and %llu",
                       (unsigned long long)v, (unsigned long long)rf, (unsigned long long)pf, (unsigned long long)m->N,
                       (unsigned long long)m->R, (unsigned long long)m->Q);
    if (!m->rows) { /* a shard: its rows, known now */
        const size_t accn = m->opt.kind == ES_OPT_ROWWISE_ADAGRAD ? (size_t)vl : m->opt.kind == ES_OPT_ADAGRAD ? (size_t)rfl : 0;
        const int has_acc = m->opt.kind == ES_OPT_ROWWISE_ADAGRAD || m->opt.kind == ES_OPT_ADAGRAD;
        m->rows = es__alloc_aligned((size_t)ES_MAX(rfl, 1) * sizeof(float)); /* a rank may hold none */
        m->racc = has_acc ? es__alloc_aligned(ES_MAX(accn, 1) * sizeof(float)) : NULL;
        if (!m->rows || (has_acc && !m->racc)) return es__err(err, ES_ENOMEM, "mde: out of memory for a shard of %llu row floats", (unsigned long long)rfl);
        if (m->opt.init_acc != 0.0f)
            for (size_t i = 0; i < accn; i++) m->racc[i] = m->opt.init_acc;
    }
    m->Nl = vl;
    m->Rl = rfl;
    for (uint64_t t = 0, a = 0, b = 0; t < m->T; t++) {
        m->views[t].w = m->rows + b;
        m->views[t].acc = m->opt.kind == ES_OPT_ROWWISE_ADAGRAD ? m->racc + a : m->opt.kind == ES_OPT_ADAGRAD ? m->racc + b : NULL;
        a += m->views[t].n_rows;
        b += m->views[t].n_rows * (uint64_t)m->views[t].dim;
    }
    es__dense_opt_clear_segs(&m->popt);
    for (uint64_t t = 0; t < m->T; t++) {
        const int full = m->poff[t] == UINT64_MAX;
        es__dense_opt_add_seg(&m->popt, full ? 0 : (size_t)m->poff[t], full ? 0 : (size_t)m->views[t].dim * (size_t)m->dim,
                              0, 0);
    }
    uint64_t sum = 0;
    for (int s = 0; s < m->S; s++) {
        if (m->hrows[s] == 0 || m->hrows[s] > m->H)
            return es__err(err, ES_EFORMAT, "mde: space %d has %llu hashed rows (1..%llu expected)", s,
                           (unsigned long long)m->hrows[s], (unsigned long long)m->H);
        m->hbase[s] = sum;
        sum += m->hrows[s];
    }
    if (sum != m->H)
        return es__err(err, ES_EFORMAT, "mde: hashed rows per space sum to %llu, expected %llu", (unsigned long long)sum,
                       (unsigned long long)m->H);
    memset(m->index, 0, m->icap * sizeof *m->index);
    for (uint64_t i = 0; i < m->N; i++)
        if (map_insert(m, i))
            return es__err(err, ES_EFORMAT, "mde: key %llu appears twice in the map", (unsigned long long)i);
    m->derived = 1;
    return ES_OK;
}

/* ---- budget solving -------------------------------------------------------------------- */

typedef es_vocab_entry cand;

typedef struct {
    const cand *c;    /* [n] in space order */
    size_t n;
    int S, dim, share;
    const size_t *sb; /* [S + 1] space ranges in c */
    uint16_t *d;      /* [n] dims */
    uint8_t *inc;     /* [n] 1 = in the table (when d > 0) */
} solver;

static void dims_at(solver *v, double alpha) {
    for (int s = 0; s < v->S; s++) {
        if (v->sb[s] == v->sb[s + 1]) continue;
        const double top = (double)v->c[v->sb[s]].count;
        uint64_t last = 0;
        uint16_t d = 0;
        /* counts fall along the space, so pow runs once per distinct count */
        for (size_t i = v->sb[s]; i < v->sb[s + 1]; i++) {
            if (i == v->sb[s] || v->c[i].count != last) {
                last = v->c[i].count;
                double r = floor((double)v->dim * pow((double)last / top, alpha) + 0.5);
                d = (uint16_t)(r < 0 ? 0 : r > v->dim ? v->dim : r);
            }
            v->d[i] = d;
        }
    }
}

/* Table shape of the current dims and inclusion; returns param + aux bytes
 * with one hashed row per space. */
static double shape_bytes(const solver *v, uint64_t *N, uint64_t *T, uint64_t *R, uint64_t *Q) {
    uint64_t n = 0, t = 0, r = 0, q = 0;
    for (int s = 0; s < v->S; s++) {
        int prev = -1;
        for (size_t i = v->sb[s]; i < v->sb[s + 1]; i++) {
            if (!v->inc[i] || v->d[i] == 0) continue;
            n++;
            r += v->d[i];
            if (v->d[i] != prev) {
                t++;
                if (v->d[i] < v->dim) q += (uint64_t)v->d[i] * (uint64_t)v->dim;
                prev = v->d[i];
            }
        }
    }
    if (N) *N = n, *T = t, *R = r, *Q = q;
    return 4.0 * (double)(r + q) + (double)mde_aux(n, t, v->S) + 4.0 * v->dim * v->S;
}

static int cmp_idx_pop(const void *a, const void *b, void *ctx) {
    const cand *c = ctx;
    return es__vocab_entry_cmp(&c[*(const size_t *)a], &c[*(const size_t *)b]);
}

/* Solve alpha and the table's values for budget B (0: no budget, alpha 0,
 * every candidate in).  Leaves the result in v->d / v->inc.  ES_EBUDGET
 * when not even the hashed rows fit, ES_ENOMEM. */
static int solve(solver *v, double B, double *alpha_out) {
    memset(v->inc, 1, v->n);
    double alpha = 0;
    dims_at(v, 0);
    if (B > 0 && shape_bytes(v, NULL, NULL, NULL, NULL) > B) {
        dims_at(v, MDE_ALPHA_MAX);
        const double floor_bytes = shape_bytes(v, NULL, NULL, NULL, NULL);
        /* the smallest alpha reaching B, or reaching what alpha can reach
         * at all when that is still over B (values then leave below) */
        const double target = floor_bytes > B ? floor_bytes : B;
        double lo = 0, hi = MDE_ALPHA_MAX;
        for (int it = 0; it < 60; it++) {
            double mid = 0.5 * (lo + hi);
            dims_at(v, mid);
            if (shape_bytes(v, NULL, NULL, NULL, NULL) <= target) hi = mid;
            else lo = mid;
        }
        alpha = hi;
        dims_at(v, alpha);
    }
    *alpha_out = alpha;
    if (B <= 0 || shape_bytes(v, NULL, NULL, NULL, NULL) <= B) return ES_OK;
    /* Keep the K most popular values (over all spaces; a prefix of every
     * space's order), K as large as fits. */
    size_t *ord = es__malloc(ES_MAX(v->n, (size_t)1) * sizeof *ord);
    if (!ord) return ES_ENOMEM;
    for (size_t i = 0; i < v->n; i++) ord[i] = i;
    if (!v->share) qsort_r(ord, v->n, sizeof *ord, cmp_idx_pop, (void *)v->c);
    size_t lo = 0, hi = v->n; /* invariant: K = lo fits (checked below for 0), K = hi + 1 does not */
    while (lo < hi) {
        size_t mid = lo + (hi - lo + 1) / 2;
        for (size_t j = 0; j < v->n; j++) v->inc[ord[j]] = j < mid;
        if (shape_bytes(v, NULL, NULL, NULL, NULL) <= B) lo = mid;
        else hi = mid - 1;
    }
    for (size_t j = 0; j < v->n; j++) v->inc[ord[j]] = j < lo;
    es__free(ord);
    return shape_bytes(v, NULL, NULL, NULL, NULL) <= B ? ES_OK : ES_EBUDGET;
}

/* ---- create ------------------------------------------------------------------------------ */

/* The resolved table from the vocabulary: keys/tiers filled into m (which
 * has the shapes of sv), and the hashed-row weights per space. */
static void fill_table(mde_impl *m, const solver *sv, uint64_t *hw) {
    uint64_t n = 0, t = 0;
    for (int s = 0; s < sv->S; s++) {
        int prev = -1;
        for (size_t i = sv->sb[s]; i < sv->sb[s + 1]; i++) {
            if (!sv->inc[i] || sv->d[i] == 0) {
                if (hw) hw[s]++;
                continue;
            }
            if (sv->d[i] != prev) {
                m->tiers[3 * t] = (uint64_t)s;
                m->tiers[3 * t + 1] = 0;
                m->tiers[3 * t + 2] = sv->d[i];
                t++;
                prev = sv->d[i];
            }
            m->tiers[3 * (t - 1) + 1]++;
            m->keys[n++] = sv->c[i].key ^ field_tag(sv->c[i].f);
        }
    }
}

#define MDE_SHAPE(key, help, ex)                                                                                      \
    ES_OPT_U(key, 0, UINT64_MAX / 64, NULL, ES_OPT_SIZES, help " (saved shape: keys, tiers, rowf, projf, hashed go together)", \
             ex, "keys=0,tiers=0,rowf=0,projf=0,hashed=5")
static const es__opt_spec mde_opts[] = {
    ES_OPT_SHARE,
    ES_OPT_F("alpha", 0, 1e30, NULL, 0, "dimension decay exponent (saved; the solver picks it from the budget)", "0.5", ""),
    MDE_SHAPE("keys", "values with their own row", "0"),
    MDE_SHAPE("tiers", "runs of values of one dimension", "0"),
    MDE_SHAPE("rowf", "floats in the values' rows", "0"),
    MDE_SHAPE("projf", "floats in the tiers' projections", "0"),
    MDE_SHAPE("hashed", "hashed rows for the other values", "5"),
    ES_OPT_SEED,
    ES_OPT_E("dense_opt", "sgd|adagrad|adam", NULL, 0, "the projections' optimizer (default: adagrad; sgd when the tables use sgd)",
             "adam", ""),
    ES_OPT_MIN_COUNT,
    ES_OPT_F("dense_lr", 0, 1e30, NULL, 0, "the projections' learning rate (default: the table lr)", "0.01", ""),
};

static void mde_account(es_storage *s);

static int mde_create(es_storage *s, const es_vocab *vocab, es_err *err) {
    const int F = s->p.n_fields, dim = s->p.dim;
    const uint64_t mc = es__storage_opt_u64(s, "min_count");
    int rc;
    const int share = es__storage_opt_int(s, "share");
    uint64_t seed = es__storage_opt_given(s, "seed") ? es__storage_opt_u64(s, "seed") : s->p.seed, N = 0, T = 0, R = 0, Q = 0, H = 0;
    int from_meta = 0;
    double alpha = 0;
    char alpha_str[32] = "0";
    int dopt = s->p.opt.kind == ES_OPT_SGD ? DOPT_SGD : DOPT_ADAGRAD;
    if (es__storage_opt_given(s, "dense_opt")) dopt = es__storage_opt_enum(s, "dense_opt");
    float lr = s->p.opt.lr;
    if (es__storage_opt_given(s, "dense_lr")) lr = (float)es__storage_opt_f64(s, "dense_lr");
    const int S = share ? 1 : F;
    const int shard = s->p.shard_n > 1; /* rank shard_rank's rows of the row space (es__row_map) */
    {
        /* shapes from a saved model: all or nothing */
        const char *keys[] = {"keys", "tiers", "rowf", "projf", "hashed"};
        uint64_t *dst[] = {&N, &T, &R, &Q, &H};
        int nf = 0;
        for (int i = 0; i < 5; i++) {
            *dst[i] = es__storage_opt_u64(s, keys[i]);
            nf += es__storage_opt_given(s, keys[i]);
        }
        if (nf != 0 && nf != 5)
            return es__err(err, ES_EINVAL, "mde: options keys, tiers, rowf, projf and hashed go together (from a saved model)");
        from_meta = nf == 5;
        if (from_meta) {
            size_t len;
            const char *av = es__storage_opt_text(s, "alpha", &len);
            if (av && len >= sizeof alpha_str)
                return es__err(err, ES_EINVAL, "mde: option alpha=%.*s is longer than %zu characters", (int)len, av,
                               sizeof alpha_str - 1);
            if (av) {
                alpha = es__storage_opt_f64(s, "alpha");
                memcpy(alpha_str, av, len);
                alpha_str[len] = 0;
            }
            if (N > (uint64_t)UINT32_MAX - 1 || H < (uint64_t)S || (N == 0) != (T == 0) || T > N ||
                T > (uint64_t)S * (uint64_t)dim)
                return es__err(err, ES_EINVAL, "mde: saved shapes keys=%llu tiers=%llu hashed=%llu do not fit %d space(s)",
                               (unsigned long long)N, (unsigned long long)T, (unsigned long long)H, S);
        }
    }

    /* Solve from the vocabulary. */
    solver sv = {0};
    cand *cands = NULL;
    size_t *sb = NULL;
    if (!from_meta) {
        if (!vocab)
            return es__err(err, ES_EINVAL,
                           "mde: needs a vocabulary (count the training data first) or the shapes of a saved model");
        size_t total = 0;
        for (int f = 0; f < F; f++) total += (size_t)es__vocab_distinct_min(vocab, f, mc);
        cands = es__malloc(ES_MAX(total, (size_t)1) * sizeof *cands);
        sb = es__calloc((size_t)S + 1, sizeof *sb);
        sv.d = es__malloc(ES_MAX(total, (size_t)1) * sizeof *sv.d);
        sv.inc = es__malloc(ES_MAX(total, (size_t)1));
        if (!cands || !sb || !sv.d || !sv.inc) {
            rc = es__err(err, ES_ENOMEM, "mde: out of memory ranking %zu values", total);
            goto fail_solve;
        }
        size_t n = es__vocab_ranked(vocab, mc, !share, cands);
        if (share) {
            sb[1] = n;
        } else {
            for (size_t i = 0; i < n; i++) sb[cands[i].f + 1]++;
            for (int f = 0; f < F; f++) sb[f + 1] += sb[f];
        }
        sv.c = cands;
        sv.n = n;
        sv.S = S;
        sv.dim = dim;
        sv.share = share;
        sv.sb = sb;
        rc = solve(&sv, s->budget_bytes, &alpha);
        if (rc == ES_ENOMEM) {
            rc = es__err(err, rc, "mde: out of memory solving the budget");
            goto fail_solve;
        }
        if (rc != ES_OK) {
            rc = es__err(err, ES_EBUDGET,
                         "mde: a budget of %.0f bytes cannot hold one hashed row of %d floats per %s and the maps",
                         s->budget_bytes, dim, share ? "table" : "field");
            goto fail_solve;
        }
        double used = shape_bytes(&sv, &N, &T, &R, &Q);
        if (N > (uint64_t)UINT32_MAX - 1) {
            rc = es__err(err, ES_ERANGE, "mde: %llu values in the table is more than this method indexes (2^32 - 2)",
                         (unsigned long long)N);
            goto fail_solve;
        }
        H = (uint64_t)S;
        if (s->budget_bytes > 0) H += (uint64_t)floor((s->budget_bytes - used) / (4.0 * dim));
        snprintf(alpha_str, sizeof alpha_str, "%.6g", alpha);
    }

    mde_impl *m = es__calloc(1, sizeof *m);
    if (!m) {
        rc = es__err(err, ES_ENOMEM, "mde: out of memory");
        goto fail_solve;
    }
    m->F = F;
    m->S = S;
    m->dim = dim;
    m->share = share;
    m->seed = seed;
    m->alpha = alpha;
    memcpy(m->alpha_str, alpha_str, sizeof alpha_str);
    m->N = m->Nl = N;
    m->T = T;
    m->R = m->Rl = R;
    m->shard_rank = s->p.shard_rank;
    m->shard_n = s->p.shard_n;
    m->Q = Q;
    m->H = H;
    m->icap = es__keyidx_cap(N);
    m->dopt = (mde_dopt)dopt;
    m->lr = lr;
    m->opt = s->p.opt;
    size_t rbytes, qbytes, accn;
    if (!es__mul_size((size_t)ES_MAX(R, 1), sizeof(float), &rbytes) || !es__mul_size((size_t)ES_MAX(Q, 1), sizeof(float), &qbytes)) {
        mde_free(m);
        rc = es__err(err, ES_ERANGE, "mde: table size overflows");
        goto fail_solve;
    }
    accn = m->opt.kind == ES_OPT_ROWWISE_ADAGRAD ? (size_t)ES_MAX(N, 1) : m->opt.kind == ES_OPT_ADAGRAD ? (size_t)ES_MAX(R, 1) : 0;
    m->keys = es__calloc((size_t)ES_MAX(N, 1), sizeof *m->keys);
    m->tiers = es__calloc(3 * (size_t)ES_MAX(T, 1), sizeof *m->tiers);
    m->hrows = es__calloc(2 * (size_t)S, sizeof *m->hrows);
    m->rows = shard ? NULL : es__alloc_aligned(rbytes); /* a shard's: once its tiers are known (mde_derive) */
    m->proj = es__alloc_aligned(qbytes);
    m->vstart = es__calloc((size_t)T + 2, sizeof *m->vstart);
    m->poff = es__calloc((size_t)ES_MAX(T, 1), sizeof *m->poff);
    m->views = es__calloc((size_t)ES_MAX(T, 1), sizeof *m->views);
    m->index = es__calloc(m->icap, sizeof *m->index);
    m->pgrad = es__alloc_aligned(qbytes);
    m->gr = es__malloc((size_t)dim * sizeof *m->gr);
    m->rowbuf = es__malloc((size_t)dim * sizeof *m->rowbuf);
    int ok = m->keys && m->tiers && m->hrows && (m->rows || shard) && m->proj && m->vstart && m->poff && m->views && m->index &&
             m->pgrad && m->gr && m->rowbuf;
    if (ok && accn && !shard) ok = (m->racc = es__alloc_aligned(accn * sizeof(float))) != NULL;
    if (ok) {
        /* the projections' optimizer: the storage optimizer's eps, betas and
         * init_acc with the dense kind and rate; no weight decay */
        es_optim_params dp = s->p.opt;
        dp.kind = dopt == DOPT_SGD ? ES_OPT_SGD : dopt == DOPT_ADAGRAD ? ES_OPT_ADAGRAD : ES_OPT_ADAM;
        dp.lr = lr;
        ok = T <= (uint64_t)INT32_MAX && es__dense_opt_init(&m->popt, &dp, 0.0f, m->proj, m->pgrad, (size_t)Q, (int)T, 1) == ES_OK;
    }
    es_rng rng;
    es__rng_seed(&rng, s->p.seed);
    if (ok) {
        /* rows U(-init_scale, init_scale); projections U(+-sqrt(3/d)) so a
         * projected vector keeps its row's spread; then the hashed rows */
        if (s->p.init_scale > 0 && R && !shard) es__rng_fill_uniform(&rng, m->rows, (size_t)R, s->p.init_scale);
        if (m->opt.kind != ES_OPT_SGD && m->opt.init_acc != 0.0f && !shard)
            for (size_t i = 0; i < accn; i++) m->racc[i] = m->opt.init_acc;
        /* the hashed rows: global rows N .. N + H - 1, of which a shard
         * may hold none (its arrays then keep one unused row) */
        const uint64_t hl = own_below(m, N + H) - own_below(m, N);
        ok = es__rows_init(&m->tail, ES_MAX(hl, 1), dim, &s->p.opt, NULL, 0.0f) == ES_OK;
        m->tail.n_rows = hl;
        shard_key(m, &m->tail, N);
    }
    if (ok && !shard) { /* a shard is trained by the distributed step, which sums its gradients itself */
        size_t ga_cap = ES_MIN((size_t)s->p.max_batch * (size_t)F, (size_t)(N + H));
        ok = es__gradacc_init(&m->ga, ga_cap, dim) == ES_OK;
    }
    if (!ok) {
        mde_free(m);
        rc = es__err(err, ES_ENOMEM, "mde: out of memory for %llu values, %llu hashed rows", (unsigned long long)N,
                     (unsigned long long)H);
        goto fail_solve;
    }
    m->hbase = m->hrows + S;

    uint64_t *hw = NULL;
    if (!from_meta) {
        if (!share && !(hw = es__calloc((size_t)S, sizeof *hw))) {
            mde_free(m);
            rc = es__err(err, ES_ENOMEM, "mde: out of memory");
            goto fail_solve;
        }
        fill_table(m, &sv, hw);
    }
    es__storage_split_rows(H, S, hw, m->hrows);
    es__free(hw);
    /* Projection weights, tier by tier (need the tiers: from the solve, or
     * drawn per tier size after a load replaces them anyway). */
    if (!from_meta) {
        if ((rc = mde_derive(m, err)) != ES_OK) {
            mde_free(m);
            goto fail_solve;
        }
        /* a shard draws the rows' stream now that its tiers are known, at
         * the place the whole storage drew it (before the projections) */
        for (uint64_t t = 0; shard && s->p.init_scale > 0 && t < T; t++)
            draw_rows(m, &rng, m->views[t].w, m->vstart[t], m->tiers[3 * t + 1], m->views[t].dim, s->p.init_scale, m->gr);
        uint64_t pf = 0;
        for (uint64_t t = 0; t < T; t++) {
            const uint64_t d = m->tiers[3 * t + 2];
            if (d < (uint64_t)dim) {
                es__rng_fill_uniform(&rng, m->proj + pf, (size_t)(d * (uint64_t)dim), sqrtf(3.0f / (float)d));
                pf += d * (uint64_t)dim;
            }
        }
    } else {
        /* no tier is reachable before the load (the index is empty); the
         * hashed rows are, split equally until the saved split arrives */
        uint64_t o = 0;
        for (int sp = 0; sp < S; sp++) {
            m->hbase[sp] = o;
            o += m->hrows[sp];
        }
    }
    if (s->p.init_scale > 0) draw_rows(m, &rng, m->tail.w, N, H, dim, s->p.init_scale, m->gr);

    if ((rc = es__storage_opt_set_u64(s, "share", (uint64_t)share, err)) != 0 ||
        (rc = es__storage_opt_set(s, "alpha", err, "%s", m->alpha_str)) != 0 || (rc = es__storage_opt_set_u64(s, "keys", N, err)) != 0 ||
        (rc = es__storage_opt_set_u64(s, "tiers", T, err)) != 0 || (rc = es__storage_opt_set_u64(s, "rowf", R, err)) != 0 ||
        (rc = es__storage_opt_set_u64(s, "projf", Q, err)) != 0 || (rc = es__storage_opt_set_u64(s, "hashed", H, err)) != 0 ||
        (rc = es__storage_opt_set_u64(s, "seed", seed, err)) != 0 ||
        (rc = es__storage_opt_set(s, "dense_opt", err, "%s", dopt_names[dopt])) != 0) {
        mde_free(m);
        goto fail_solve;
    }
    es__free(cands);
    es__free(sb);
    es__free(sv.d);
    es__free(sv.inc);
    s->impl = m;
    s->param_bytes = 4 * (size_t)(R + Q) + es__rows_param_bytes(&m->tail);
    /* from a saved model at a precision: the rows come as codes whose
     * shapes the load gives (mde_after_load counts them then) */
    if (from_meta && s->p.precision != ES_PREC_FP32) s->param_bytes -= 4 * (size_t)R;
    s->aux_bytes = mde_aux(N, T, S);
    s->state_bytes = es__rows_state_bytes(&m->tail) + (N > 0 ? accn * sizeof(float) : 0) +
                     (Q > 0 ? es__dense_opt_state_bytes(&m->popt) : 0);
    if (shard) mde_account(s); /* its rows (none of the tiers' yet when from a saved model: mde_after_load) */
    return ES_OK;
fail_solve:
    es__free(cands);
    es__free(sb);
    es__free(sv.d);
    es__free(sv.inc);
    return rc;
}

/* ---- lookup / backward --------------------------------------------------------------------- */

#define MDE_STACK_FLOATS 2048 /* a dequantized row on the stack up to this dim */

static void mde_lookup(es_storage *s, const es_batch *b, int r0, int r1, float *out) {
    const mde_impl *m = s->impl;
    const int F = m->F;
    const size_t dim = (size_t)m->dim;
    /* codes (precision below fp32): each row dequantized (es__rows_get) into
     * buf, then pooled and projected exactly as an fp32 row */
    float sbuf[MDE_STACK_FLOATS], *buf = sbuf;
    if (m->tail.prec != ES_PREC_FP32 && dim > MDE_STACK_FLOATS && !(buf = es__malloc(dim * sizeof *buf))) {
        es__err(&s->err, ES_ENOMEM, "mde: out of memory for the dequantized rows of a lookup; output zeroed");
        memset(out, 0, (size_t)(r1 - r0) * F * dim * sizeof *out);
        return;
    }
    for (int r = r0; r < r1; r++)
        for (int f = 0; f < F; f++) {
            const size_t P = (size_t)r * F + f;
            float *o = out + (P - (size_t)r0 * F) * dim;
            memset(o, 0, dim * sizeof(float));
            const uint64_t tag = field_tag(f), salt = es__storage_salt(m->seed, f, 0);
            for (uint32_t i = b->off[P]; i < b->off[P + 1]; i++) {
                const float wt = b->wt[i];
                const uint64_t v = map_find(m, b->val[i] ^ tag);
                if (v == UINT64_MAX) {
                    es__axpy(o, wt, es__rows_get(&m->tail, hashed_row(m, f, salt, b->val[i]), buf), dim);
                    continue;
                }
                const uint64_t t = tier_of(m, v);
                const es_rows *tv = &m->views[t];
                const float *row = es__rows_get(tv, v - m->vstart[t], buf);
                if (m->poff[t] == UINT64_MAX) {
                    es__axpy(o, wt, row, dim);
                } else {
                    const float *pm = m->proj + m->poff[t];
                    for (int j = 0; j < tv->dim; j++) es__axpy(o, wt * row[j], pm + (size_t)j * dim, dim);
                }
            }
        }
    if (buf != sbuf) es__free(buf);
}

static int mde_backward(es_storage *s, const es_batch *b, const float *dout) {
    mde_impl *m = s->impl;
    const int F = m->F;
    const size_t dim = (size_t)m->dim;
    es__gradacc_clear(&m->ga);
    /* 1. output-space gradient per distinct value (id v) or hashed row (id N + h) */
    const size_t PN = (size_t)b->n * (size_t)F;
    for (size_t P = 0; P < PN; P++) {
        const int f = (int)(P % (size_t)F);
        const uint64_t tag = field_tag(f), salt = es__storage_salt(m->seed, f, 0);
        const float *go = dout + P * dim;
        for (uint32_t i = b->off[P]; i < b->off[P + 1]; i++) {
            uint64_t v = map_find(m, b->val[i] ^ tag);
            if (v == UINT64_MAX) v = m->N + hashed_row(m, f, salt, b->val[i]);
            float *g = es__gradacc_row(&m->ga, v);
            if (!g) {
                es__gradacc_clear(&m->ga);
                return es__err(&s->err, ES_ENOMEM, "mde: out of memory growing the gradient scratch past %zu values",
                               m->ga.cap);
            }
            es__axpy(g, b->wt[i], go, dim);
        }
    }
    /* 2. rows (through their projections) and projection gradients */
    /* (pgrad is zero here: each step zeroes what it used) */
    for (size_t e = 0; e < m->ga.n; e++) {
        const uint64_t id = m->ga.rows[e];
        const float *g = m->ga.g + e * dim;
        if (id >= m->N) {
            es__rows_update(&m->tail, id - m->N, g);
            continue;
        }
        const uint64_t t = tier_of(m, id), r = id - m->vstart[t];
        es_rows *tv = &m->views[t];
        if (m->poff[t] == UINT64_MAX) {
            es__rows_update(tv, r, g);
            continue;
        }
        const float *row = es__rows_get(tv, r, m->rowbuf); /* as the forward saw it */
        const float *pm = m->proj + m->poff[t];
        float *pg = m->pgrad + m->poff[t];
        for (int j = 0; j < tv->dim; j++) {
            m->gr[j] = es__dot(pm + (size_t)j * dim, g, dim);
            es__axpy(pg + (size_t)j * dim, row[j], g, dim);
        }
        es__dense_opt_mark(&m->popt, (int)t);
        es__rows_update(tv, r, m->gr);
    }
    es__gradacc_clear(&m->ga);
    /* 3. one dense step of the touched projections (the step count goes up
     * once when any is touched); zeroes their gradients */
    es__dense_opt_step_marked(&m->popt);
    return ES_OK;
}

/* ---- tensors / load / stats ------------------------------------------------------------------ */

/* Tensors of an mde whose tables hold codes (tail and views at one
 * precision): the tail's ("tail.q", "opt.tail.*"), the projections and
 * their state, the maps, then -- once the tiers are at the precision
 * (qready; a load makes them from map.tiers, so they come after it, in
 * es__storage_read_tensors' second stage) -- "tier<t>.q" (u8 [rows, row
 * bytes]) per tier, ALPT's "opt.tier<t>.qstep", ".qstep_acc", ".qcount", ".qseed", and
 * QAT's master copy of every tier, "opt.rows.master" (f32 [R]).  The row
 * optimizer state stays "opt.rows.acc" (f32, flat) while training; a
 * shard lists it last, with its tiers: it makes it with its rows once
 * map.tiers is read (mde_derive), so a shard's checkpoint loads in two
 * stages as its fp32 tensors do. */
static int mde_tensors_q(mde_impl *m, es_tensor_ref *refs, int max) {
    const int nt = es__rows_tensors(&m->tail, NULL, 0);
    const int mode = m->tail.qtrain;
    const int per = mode == ES_QTRAIN_ALPT ? 5 : 1;
    const int has_acc = m->N && m->racc && mode != ES_QTRAIN_NONE, acc_late = m->shard_n > 1;
    int n = nt + (m->Q ? 1 : 0) + has_acc + (m->Q ? es__dense_opt_n_states(&m->popt) : 0) +
            (m->Q && es__dense_opt_steps(&m->popt) ? 1 : 0) + (m->N ? 1 : 0) + (m->T ? 1 : 0) + 1;
    if (m->qready) n += per * (int)m->T + (mode == ES_QTRAIN_QAT && m->R ? 1 : 0);
    else if (acc_late) n -= has_acc;
    if (!refs) return n;
    if (max < n) return ES_ERANGE;
    int i = es__rows_tensors(&m->tail, refs, max);
    snprintf(refs[0].name, sizeof refs[0].name, "tail.q");
    for (int k = 1; k < nt; k++) {
        char tmp[sizeof refs[k].name];
        snprintf(tmp, sizeof tmp, "%s", refs[k].name + 4);
        snprintf(refs[k].name, sizeof refs[k].name, "opt.tail.%.40s", tmp);
    }
    if (m->Q) es__tensor_ref_set(&refs[i++], "proj.weight", ES_DT_F32, m->proj, 1, m->Q);
    if (has_acc && !acc_late)
        es__tensor_ref_set(&refs[i++], "opt.rows.acc", ES_DT_F32, m->racc, 1, m->opt.kind == ES_OPT_ROWWISE_ADAGRAD ? m->N : m->R);
    for (int a = 0; m->Q && a < es__dense_opt_n_states(&m->popt); a++) {
        char name[32];
        snprintf(name, sizeof name, "opt.proj.%s", es__dense_opt_state_name(&m->popt, a));
        es__tensor_ref_set(&refs[i++], name, ES_DT_F32, es__dense_opt_state(&m->popt, a), 1, m->Q);
    }
    if (m->Q && es__dense_opt_steps(&m->popt))
        es__tensor_ref_set(&refs[i++], "opt.proj.step", ES_DT_U64, es__dense_opt_steps(&m->popt), 1, (uint64_t)1);
    if (m->N) es__tensor_ref_set(&refs[i++], "map.keys", ES_DT_U64, m->keys, 1, m->N);
    if (m->T) es__tensor_ref_set(&refs[i++], "map.tiers", ES_DT_U64, m->tiers, 2, m->T, (uint64_t)3);
    es__tensor_ref_set(&refs[i++], "map.hashed", ES_DT_U64, m->hrows, 1, (uint64_t)m->S);
    if (m->qready) {
        for (uint64_t t = 0; t < m->T; t++) {
            es_rows *v = &m->views[t];
            char name[48];
            snprintf(name, sizeof name, "tier%llu.q", (unsigned long long)t);
            es__tensor_ref_set(&refs[i++], name, ES_DT_U8, v->q, 2, v->n_rows, (uint64_t)es__prec_row_bytes(v->prec, v->dim));
            if (mode == ES_QTRAIN_ALPT) {
                snprintf(name, sizeof name, "opt.tier%llu.qstep", (unsigned long long)t);
                es__tensor_ref_set(&refs[i++], name, ES_DT_F32, v->qstep, 1, v->n_rows);
                snprintf(name, sizeof name, "opt.tier%llu.qstep_acc", (unsigned long long)t);
                es__tensor_ref_set(&refs[i++], name, ES_DT_F32, v->qstep_acc, 1, v->n_rows);
                snprintf(name, sizeof name, "opt.tier%llu.qcount", (unsigned long long)t);
                es__tensor_ref_set(&refs[i++], name, ES_DT_U32, v->qcount, 1, v->n_rows);
                snprintf(name, sizeof name, "opt.tier%llu.qseed", (unsigned long long)t);
                es__tensor_ref_set(&refs[i++], name, ES_DT_U64, &v->qseed, 1, (uint64_t)1);
            }
        }
        if (mode == ES_QTRAIN_QAT && m->R) es__tensor_ref_set(&refs[i++], "opt.rows.master", ES_DT_F32, m->rows, 1, m->Rl);
        if (has_acc && acc_late)
            es__tensor_ref_set(&refs[i++], "opt.rows.acc", ES_DT_F32, m->racc, 1, m->opt.kind == ES_OPT_ROWWISE_ADAGRAD ? m->Nl : m->Rl);
    }
    ES_ASSERT(i == n);
    return n;
}

static int mde_tensors(es_storage *s, es_tensor_ref *refs, int max) {
    mde_impl *m = s->impl;
    if (m->tail.prec != ES_PREC_FP32) return mde_tensors_q(m, refs, max);
    es_tensor_ref tmp[16];
    int n = 0;
    const size_t dim = (size_t)m->dim;
    /* the values' rows last: a shard from a saved model makes them once
     * map.tiers is read (es__storage_read_tensors' second stage), and the
     * whole storage lists them in the same place, so that a shard writes
     * the whole storage's file (es__storage_write_whole) */
    if (m->Q) es__tensor_ref_set(&tmp[n++], "proj.weight", ES_DT_F32, m->proj, 1, m->Q);
    es__tensor_ref_set(&tmp[n++], "tail.weight", ES_DT_F32, m->tail.w, 2, m->tail.n_rows, (uint64_t)dim);
    if (m->tail.acc) {
        if (m->opt.kind == ES_OPT_ADAGRAD) es__tensor_ref_set(&tmp[n++], "opt.tail.acc", ES_DT_F32, m->tail.acc, 2, m->tail.n_rows, (uint64_t)dim);
        else es__tensor_ref_set(&tmp[n++], "opt.tail.acc", ES_DT_F32, m->tail.acc, 1, m->tail.n_rows);
    }
    /* "opt.proj.acc", or "opt.proj.m", "opt.proj.v" and "opt.proj.step" */
    for (int a = 0; m->Q && a < es__dense_opt_n_states(&m->popt); a++) {
        char name[32];
        snprintf(name, sizeof name, "opt.proj.%s", es__dense_opt_state_name(&m->popt, a));
        es__tensor_ref_set(&tmp[n++], name, ES_DT_F32, es__dense_opt_state(&m->popt, a), 1, m->Q);
    }
    if (m->Q && es__dense_opt_steps(&m->popt))
        es__tensor_ref_set(&tmp[n++], "opt.proj.step", ES_DT_U64, es__dense_opt_steps(&m->popt), 1, (uint64_t)1);
    if (m->N) es__tensor_ref_set(&tmp[n++], "map.keys", ES_DT_U64, m->keys, 1, m->N);
    if (m->T) es__tensor_ref_set(&tmp[n++], "map.tiers", ES_DT_U64, m->tiers, 2, m->T, (uint64_t)3);
    es__tensor_ref_set(&tmp[n++], "map.hashed", ES_DT_U64, m->hrows, 1, (uint64_t)m->S);
    if (m->R && m->rows) es__tensor_ref_set(&tmp[n++], "rows.weight", ES_DT_F32, m->rows, 1, m->Rl);
    if (m->N && m->racc && m->rows)
        es__tensor_ref_set(&tmp[n++], "opt.rows.acc", ES_DT_F32, m->racc, 1, m->opt.kind == ES_OPT_ROWWISE_ADAGRAD ? m->Nl : m->Rl);
    if (!refs) return n;
    if (max < n) return ES_ERANGE;
    memcpy(refs, tmp, (size_t)n * sizeof *refs);
    return n;
}

/* param_bytes and state_bytes from the tables: the tail's and the tiers'
 * (codes once the tiers hold them, QAT's master and ALPT's steps being
 * state; a shard's fp32 rows), the fp32 projections and their state. */
static void mde_account(es_storage *s) {
    mde_impl *m = s->impl;
    size_t pb = es__rows_param_bytes(&m->tail) + 4 * (size_t)m->Q, sb = es__rows_state_bytes(&m->tail);
    for (uint64_t t = 0; t < m->T; t++) {
        pb += es__rows_param_bytes(&m->views[t]);
        sb += es__rows_state_bytes(&m->views[t]);
    }
    if (m->Q > 0) sb += es__dense_opt_state_bytes(&m->popt);
    s->param_bytes = pb;
    s->state_bytes = sb;
}

/* ops->after_convert: once every tier is at the tail's precision, free the
 * fp32 arrays the views no longer use (rows: kept as QAT's master; racc:
 * kept as the row optimizer state while training). */
static void mde_after_convert(es_storage *s) {
    mde_impl *m = s->impl;
    if (m->tail.prec == ES_PREC_FP32 || !m->derived) return; /* a load: the tiers come with map.tiers */
    for (uint64_t t = 0; t < m->T; t++)
        if (m->views[t].prec != m->tail.prec) return;
    m->qready = 1;
    if (m->tail.qtrain != ES_QTRAIN_QAT) {
        es__free_aligned(m->rows);
        m->rows = NULL;
    }
    if (m->tail.qtrain == ES_QTRAIN_NONE) {
        es__free_aligned(m->racc);
        m->racc = NULL;
    }
    mde_account(s);
}

/* After a load: derive the tiers from the maps; a storage at a precision
 * then turns its (empty) fp32 tier views into code tables of the tail's
 * precision and training mode, which the load's second stage fills. */
static int mde_after_load(es_storage *s, es_err *err) {
    mde_impl *m = s->impl;
    if (m->tail.prec == ES_PREC_FP32) {
        int rc = mde_derive(m, err);
        if (rc == ES_OK && m->shard_n > 1) mde_account(s); /* a shard's rows, made by the derive */
        return rc;
    }
    if (m->qready) return ES_OK; /* the second stage */
    int rc = mde_derive(m, err);
    if (rc != ES_OK) return rc;
    for (uint64_t t = 0; t < m->T && rc == ES_OK; t++) {
        es_rows *v = &m->views[t];
        if (m->tail.qtrain == ES_QTRAIN_NONE) {
            uint8_t *q;
            if ((rc = es__rows_encode(v, m->tail.prec, 0, &q, err)) == ES_OK) es__rows_adopt(v, m->tail.prec, q);
        } else {
            rc = es__rows_qtrain(v, m->tail.prec, m->tail.qtrain, s->p.seed + 1 + t, err);
        }
    }
    if (rc != ES_OK) return rc;
    mde_after_convert(s);
    return ES_OK;
}

/* ops->rows: the hashed tail, then the tiers (once known), one precision;
 * the projections stay fp32. */
static es_rows *mde_rows(es_storage *s, int i) {
    mde_impl *m = s->impl;
    if (i == 0) return &m->tail;
    return m->derived && i >= 1 && (uint64_t)i <= m->T ? &m->views[i - 1] : NULL;
}

static void mde_resolve(const void *ctx, int f, const uint64_t *keys, size_t n, uint64_t *ids) {
    const mde_impl *m = ctx;
    const uint64_t tag = field_tag(f), salt = es__storage_salt(m->seed, f, 0);
    for (size_t i = 0; i < n; i++) {
        uint64_t v = map_find(m, keys[i] ^ tag);
        ids[i] = v != UINT64_MAX ? v : m->N + hashed_row(m, f, salt, keys[i]);
    }
}

typedef struct {
    const mde_impl *m;
    int f;
    uint64_t n;
} count_ctx;

static void count_in_table(uint64_t key, uint64_t count, void *ctx) {
    count_ctx *x = ctx;
    (void)count;
    x->n += map_find(x->m, key ^ field_tag(x->f)) != UINT64_MAX;
}

static void mde_field_stats(es_storage *s, const es_vocab *vocab, int field, es_field_stats *out) {
    mde_impl *m = s->impl;
    memset(out, 0, sizeof *out);
    if (field < 0 || field >= m->F) return;
    uint64_t own = 0;
    if (vocab && field < es_vocab_n_fields(vocab)) {
        count_ctx x = {m, field, 0};
        es__vocab_each(vocab, field, count_in_table, &x);
        own = x.n;
    }
    es__rows_field_stats(1, mde_resolve, m, vocab, field, own + m->hrows[m->share ? 0 : field], out);
}

/* ---- across processes (es__row_map, src/train/dist.c) ------------------------------------------ */

/* The row space: tier t's values are global rows [vstart[t], vstart[t + 1])
 * (mde_resolve's ids), table t, d_t floats a row; the hashed rows follow
 * as table T, rows N + h of dim floats. */
static es_rows *mde_table(void *self, int i) {
    mde_impl *m = self;
    return (uint64_t)i < m->T ? &m->views[i] : &m->tail;
}

/* fp32: the tiers one after another in "rows.weight", the hashed rows in
 * "tail.weight"; codes: each tier's own "tier<t>.q" and "tail.q", the
 * one-process file's tensors (mde_tensors_q). */
static const char *mde_table_tensor(void *self, int i) {
    mde_impl *m = self;
    if (m->tail.prec == ES_PREC_FP32) return (uint64_t)i < m->T ? "rows.weight" : "tail.weight";
    if ((uint64_t)i == m->T) return "tail.q";
    snprintf(m->tname, sizeof m->tname, "tier%d.q", i);
    return m->tname;
}

/* A tier's row times its projection, or a full-width row as it is: the
 * float operations of mde_lookup. */
static void mde_pool(void *self, const int *tab, const float *const *e, float wt, float *out) {
    const mde_impl *m = self;
    const uint64_t t = (uint64_t)tab[0];
    const size_t dim = (size_t)m->dim;
    if (t == m->T || m->poff[t] == UINT64_MAX) {
        es__axpy(out, wt, e[0], dim);
        return;
    }
    const float *pm = m->proj + m->poff[t];
    for (int j = 0; j < m->views[t].dim; j++) es__axpy(out, wt * e[0][j], pm + (size_t)j * dim, dim);
}

/* The row's gradient for output gradient dout: P_t dout (a projected
 * tier), dout itself otherwise.  One process projects the value's summed
 * gradient instead (mde_backward), equal up to rounding. */
static void mde_pool_grad(void *self, const int *tab, const float *const *e, const float *dout, float *const *g) {
    const mde_impl *m = self;
    const uint64_t t = (uint64_t)tab[0];
    const size_t dim = (size_t)m->dim;
    if (t == m->T || m->poff[t] == UINT64_MAX) {
        memcpy(g[0], dout, dim * sizeof(float));
        return;
    }
    const float *pm = m->proj + m->poff[t];
    for (int j = 0; j < m->views[t].dim; j++) g[0][j] = es__dot(pm + (size_t)j * dim, dout, dim);
}

/* The projections' gradient, acc[Q], and a mark per tier, acc[Q + t] = 1
 * when the batch touched its projection (summed over the blocks: > 0). */
static void mde_dense_grad(void *self, const int *tab, const float *const *e, float wt, const float *dout, float *acc) {
    const mde_impl *m = self;
    const uint64_t t = (uint64_t)tab[0];
    const size_t dim = (size_t)m->dim;
    if (t == m->T || m->poff[t] == UINT64_MAX) return;
    float *pg = acc + m->poff[t];
    for (int j = 0; j < m->views[t].dim; j++) es__axpy(pg + (size_t)j * dim, wt * e[0][j], dout, dim);
    acc[m->Q + t] = 1.0f;
}

/* mde_backward's step 3 from the summed gradient: every rank the same
 * update of the touched projections. */
static void mde_dense_apply(void *self, const float *acc) {
    mde_impl *m = self;
    if (!m->Q) return;
    memcpy(m->pgrad, acc, (size_t)m->Q * sizeof(float));
    for (uint64_t t = 0; t < m->T; t++)
        if (acc[m->Q + t] > 0.0f) es__dense_opt_mark(&m->popt, (int)t);
    es__dense_opt_step_marked(&m->popt);
}

/* ops->row_map: the tiers and the hashed rows as one row space, each
 * value's one row pooled by mde's callbacks; the key map and the
 * projections stay whole on every rank.  At a precision once every tier
 * holds codes (qready): the step fetches the codes and dequantizes them
 * as es__rows_get does, the owners update them (es__rows_update: QAT's
 * master, ALPT's steps). */
static int mde_row_map(es_storage *s, es__row_map *out) {
    mde_impl *m = s->impl;
    if (!m->derived || (m->tail.prec != ES_PREC_FP32 && !m->qready)) return ES_EINVAL;
    memset(out, 0, sizeof *out);
    out->table = mde_table;
    out->bases = m->vstart;
    out->n_t = (int)m->T + 1;
    out->k = 1;
    out->combine = ES_COMBINE_METHOD;
    out->fn = mde_resolve;
    out->ctx = m;
    out->rows = m->N + m->H;
    out->self = m;
    out->pool = mde_pool;
    out->pool_grad = mde_pool_grad;
    out->dense = m->Q ? (size_t)(m->Q + m->T) : 0;
    out->dense_grad = mde_dense_grad;
    out->dense_apply = mde_dense_apply;
    out->tensor = mde_table_tensor;
    return ES_OK;
}

const es_storage_ops es__storage_mde = {
    .name = "mde",
    .summary = "mixed dimensions: dim ~ popularity^alpha (alpha from the budget), projected to dim; rare values hashed",
    .create = mde_create,
    .lookup = mde_lookup,
    .backward = mde_backward,
    .tensors = mde_tensors,
    .after_load = mde_after_load,
    .field_stats = mde_field_stats,
    .destroy = mde_destroy,
    ES_STORAGE_OPTS(mde_opts),
    .default_budget = 0 /* solves without one */,
    .needs_vocab = 1,
    .rows = mde_rows,
    .after_convert = mde_after_convert,
    .row_map = mde_row_map,
};
