/*
 * dedup.c — the `dedup` storage method (issue 11, point 4): train a dense
 * hashed table, then serve it with near-duplicate rows (or fixed-size
 * blocks of rows) merged through LSH until it fits the byte budget, with a
 * remap from dense rows to the unique ones counted in the bytes.
 *
 * Rows.  The dense table has the row mapping of `hash` (and of pep /
 * deeplight, prune.c): share=0 gives field f its own block of rows_f rows,
 * share=1 one block of R rows for all fields; value key of field f reads
 *     row = base_f + es__range(es__hash_u64(key, salt_f), rows_f)
 * with salt_f = es__storage_salt(seed, f, 0).  Rows are grouped into units
 * of `block` consecutive rows (block=1: one row per unit); the table is
 * padded with unread rows to a whole number of units N.
 *
 * Training state (state_bytes, not in the budget; kept by checkpoints, left
 * out of plain saved models): the dense fp32 table "opt.train.weight"
 * [N block, dim] with its sparse optimizer state (es_rows: one update per
 * distinct row per batch), "opt.count" u32 [N block] (how many values each
 * row has looked up in training, saturating: the merge weights), and
 * "opt.dedup" u64 [2] (backward steps, trained flag).
 *
 * Serving form (what the budget pays for):
 *   serve.uniq  f32 [U block, dim]  the unique units (param_bytes),
 *   serve.remap u8  [N, ib]         unit u -> unique unit, little-endian in
 *                                   ib = the fewest bytes that hold U - 1
 *                                   (1 up to U = 256, 2 up to 65536, ...),
 *   serve.gen   u64 [1]             the training step it was built at;
 * a lookup of row r reads serve.uniq row remap[r / block] block + r % block.
 * aux_bytes = N ib + 8 + the 24 F bytes of base/rows/salt;
 * param_bytes = 4 U block dim; param + aux <= budget.
 *
 * The serving form is rebuilt from the training state whenever tensors()
 * lists the tensors (a save, a checkpoint).  A storage whose tensors were
 * loaded serves from it unless the training state was loaded too and
 * matches it (trained flag set, serve.gen == step): then it keeps training
 * (and looking up) the dense table.  A storage serving from the merged form
 * refuses backward.  A table saved before any step (serve.gen == 0)
 * regenerates its initial training state from the seed (exactly what it
 * was) and trains on.  after_load refuses a remap entry >= U and a flag
 * that is not 0 or 1 (ES_EFORMAT), so a fuzzed file never reads out of
 * bounds.
 *
 * The merge (build_serving), deterministic for a seed (one thread):
 *   weights  merge=count (default): w_u = count of the unit's rows + 1/16
 *            (rows no training value touched weigh almost nothing, so they
 *            are merged first, at almost no cost, into whatever is
 *            nearest); merge=mean: w_u = 1.
 *   clusters start as the N units; merging clusters a and b gives the
 *            weighted mean (w_a c_a + w_b c_b) / (w_a + w_b) of weight
 *            w_a + w_b, at Ward's cost w_a w_b / (w_a + w_b) |c_a - c_b|^2
 *            (the increase of the weighted squared error of the table);
 *            the survivor is the lower unit id.
 *   0. exact duplicates (equal bits; found by a hash of the unit) merge
 *      first, at cost 0;
 *   1. SimHash: `bits` random hyperplanes (N(0,1), from the seed; bits=0:
 *      ceil(log2 N), at most 32) give each cluster a signature of nb bits.
 *      A round builds candidate pairs from 4 LSH tables, the signature
 *      rotated by 0, nb/4, nb/2, 3nb/4 bits: in each, clusters sorted by
 *      (rotated signature, id) are paired with the next 3 that share its
 *      first L bits.  Candidate pairs sorted by (cost, ids); merged in that
 *      order, each cluster at most once per round: first the reciprocal
 *      pairs (each is the other's cheapest candidate: Ward's reciprocal-
 *      nearest-neighbour rule; the cheapest pair always is one), then, if
 *      those merged fewer than 1/16 of the clusters, the cheapest others up
 *      to that many (so the rounds stay O(log N)); until U clusters remain.
 *      L starts at nb and drops by one after every round (relaxing: near
 *      duplicates, sharing a fine bucket, go first);
 *   2. at L = 0 (one bucket per table: neighbours in signature order, a
 *      greedy nearest merging along 4 hyperplane orderings) rounds repeat
 *      until U clusters remain: every round merges at least one pair.
 *   The U survivors, in unit order, are the unique units; the remap sends
 *   every unit to its cluster's.
 * Cost: per round O(N log N + 12 N block dim) plus nb block dim per
 * cluster whose values changed; rounds about nb + 1 + a few at L = 0.
 * Measured (dedup_cost_100k, -O2, one shared core): 100k rows of dim 16 to
 * 25k unique rows in about 1 s.  Scratch (4 block dim + 8 + 4 x 5 + 1 +
 * 16 + 144 bytes per unit, plus 4 nb block dim for the hyperplanes) is
 * allocated at create: tensors() cannot fail.  Quality (test_dedup.c): exact duplicates are served
 * unchanged; 2048 noisy copies of 64 prototypes keep a relative lookup
 * error near the noise down to 64 unique rows (a random merge: 0.75-0.98).
 *
 * Budget B (bytes).  With rows= (dense rows per field, or one count with
 * share=1) and uniq= the shapes are given (a saved model's meta).
 * Otherwise N = ratio U (ratio: dense units trained per served unit,
 * default 4) and U the largest with 4 U block dim + N ib + 24 F + 8 <= B;
 * with rows= alone U is the largest that fits the budget (at most N), or
 * N / ratio without a budget; with uniq= alone N = ratio U.
 */
#include "storage/storage.h"

#include <math.h>
#include <stdlib.h>

#define DEDUP_MAX_UNITS UINT64_C(0xffffffff)
#define DEDUP_WINDOW 3 /* pairs per cluster in signature order */
#define DEDUP_TABLES 4 /* signature rotations (LSH tables) per round */
#define CNT_EPS (1.0 / 16)

enum { ST_STEP = 0, ST_TRAINED = 1, ST_N = 2 };

typedef struct {
    uint64_t key;
    uint32_t id, pad;
} item_t;

typedef struct {
    float cost;
    uint32_t a, b;
} pair_t;

typedef struct dedup_impl {
    int F, dim, share, block, nb, weighted;
    uint64_t seed;
    float init_scale;
    es_rows t;                     /* dense [N block, dim] + optimizer state */
    es_gradacc ga;
    uint64_t R;                    /* rows addressed (sum over fields) */
    uint64_t N, U;                 /* units, unique units */
    int ib;                        /* remap bytes per unit */
    uint64_t *base, *nrows, *salt; /* [F] each, one allocation */
    uint32_t *count;               /* [N block] */
    uint64_t *st;                  /* [ST_N] */
    /* serving form */
    float *uniq;                   /* [U block dim] */
    uint8_t *remap;                /* [N ib] */
    uint64_t *sgen;                /* [1] */
    es_rows su;                    /* view of uniq for es__rows_lookup */
    int serving;
    /* merge scratch */
    float *cen;                    /* [N D] */
    double *wt;                    /* [N] */
    uint32_t *parent, *act, *sig;  /* [N] */
    uint32_t *best;                /* [N] cheapest candidate of each cluster this round */
    uint8_t *flag;                 /* [N] bit 0: merged this round, bit 1: signature stale */
    item_t *items;                 /* [N] */
    pair_t *pairs;                 /* [N DEDUP_WINDOW DEDUP_TABLES] */
    float *planes;                 /* [nb D] */
} dedup_impl;

/* ---- rows ------------------------------------------------------------------------------ */

static inline uint64_t row_of(const dedup_impl *m, int f, uint64_t key) {
    return m->base[f] + es__range(es__hash_u64(key, m->salt[f]), m->nrows[f]);
}

static void resolve_dense(const void *ctx, int f, const uint64_t *keys, size_t n, uint64_t *ids) {
    const dedup_impl *m = ctx;
    for (size_t i = 0; i < n; i++) ids[i] = row_of(m, f, keys[i]);
}

static inline uint64_t remap_get(const dedup_impl *m, uint64_t u) {
    const uint8_t *p = m->remap + (size_t)u * (size_t)m->ib;
    uint64_t v = 0;
    for (int i = m->ib - 1; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

static inline void remap_set(dedup_impl *m, uint64_t u, uint64_t v) {
    uint8_t *p = m->remap + (size_t)u * (size_t)m->ib;
    for (int i = 0; i < m->ib; i++, v >>= 8) p[i] = (uint8_t)(v & 0xff);
}

static void resolve_served(const void *ctx, int f, const uint64_t *keys, size_t n, uint64_t *ids) {
    const dedup_impl *m = ctx;
    const uint64_t B = (uint64_t)m->block;
    for (size_t i = 0; i < n; i++) {
        const uint64_t r = row_of(m, f, keys[i]);
        ids[i] = remap_get(m, r / B) * B + r % B;
    }
}

static int bytes_for(uint64_t U) {
    int ib = 1;
    while (ib < 4 && U > (UINT64_C(1) << (8 * ib))) ib++;
    return ib;
}

/* Initial dense values: U(-s, s) drawn row-major from the seed (the draws
 * of es__rows_init), also while a loader skips fills. */
static void fill_init(dedup_impl *m) {
    es_rng rng;
    es__rng_seed(&rng, m->seed);
    const size_t n = (size_t)m->t.n_rows * (size_t)m->dim;
    if (m->init_scale == 0.0f) {
        memset(m->t.w, 0, n * sizeof(float));
        return;
    }
    for (size_t i = 0; i < n; i++) m->t.w[i] = (float)((2.0 * es__rng_uniform(&rng) - 1.0) * m->init_scale);
}

static void initial_state(dedup_impl *m) {
    memset(m->count, 0, (size_t)m->t.n_rows * sizeof *m->count);
    memset(m->st, 0, ST_N * sizeof *m->st);
    if (m->t.acc) {
        const size_t n = (size_t)m->t.n_rows * es__row_state_floats(m->t.opt.kind, m->dim);
        for (size_t i = 0; i < n; i++) m->t.acc[i] = m->t.opt.init_acc;
    }
}

/* ---- the merge ------------------------------------------------------------------------- */

static int item_cmp(const void *pa, const void *pb) {
    const item_t *a = pa, *b = pb;
    if (a->key != b->key) return a->key < b->key ? -1 : 1;
    return a->id < b->id ? -1 : a->id > b->id;
}

static int pair_cmp(const void *pa, const void *pb) {
    const pair_t *a = pa, *b = pb;
    if (a->cost != b->cost) return a->cost < b->cost ? -1 : 1;
    if (a->a != b->a) return a->a < b->a ? -1 : 1;
    return a->b < b->b ? -1 : a->b > b->b;
}

static uint32_t find(uint32_t *parent, uint32_t u) {
    uint32_t r = u;
    while (parent[r] != r) r = parent[r];
    while (parent[u] != r) {
        uint32_t n = parent[u];
        parent[u] = r;
        u = n;
    }
    return r;
}

/* Merge cluster b into a (a < b, both roots). */
static void merge(dedup_impl *m, uint32_t a, uint32_t b, size_t D) {
    float *ca = m->cen + (size_t)a * D;
    const float *cb = m->cen + (size_t)b * D;
    const double wa = m->wt[a], wb = m->wt[b], w = wa + wb;
    for (size_t j = 0; j < D; j++) ca[j] = (float)((wa * ca[j] + wb * cb[j]) / w);
    m->wt[a] = w;
    m->parent[b] = a;
    m->flag[a] |= 3;
    m->flag[b] |= 1;
}

static float ward(const dedup_impl *m, uint32_t a, uint32_t b, size_t D) {
    const float *ca = m->cen + (size_t)a * D, *cb = m->cen + (size_t)b * D;
    double d2 = 0;
    for (size_t j = 0; j < D; j++) {
        const double d = (double)ca[j] - cb[j];
        d2 += d * d;
    }
    const double wa = m->wt[a], wb = m->wt[b];
    return (float)(wa * wb / (wa + wb) * d2);
}

static uint32_t simhash(const dedup_impl *m, const float *c, size_t D) {
    uint32_t s = 0;
    for (int k = 0; k < m->nb; k++) {
        const float *p = m->planes + (size_t)k * D;
        double d = 0;
        for (size_t j = 0; j < D; j++) d += (double)p[j] * c[j];
        s = s << 1 | (d >= 0);
    }
    return s;
}

/* Drop merged clusters from the first n of the active list (ascending ids
 * stay so); returns the clusters left. */
static uint64_t compact(dedup_impl *m, uint64_t n) {
    uint64_t o = 0;
    for (uint64_t i = 0; i < n; i++)
        if (m->parent[m->act[i]] == m->act[i]) m->act[o++] = m->act[i];
    return o;
}

/* Build the serving form from the training state (file comment). */
static void build_serving(dedup_impl *m) {
    const size_t D = (size_t)m->block * (size_t)m->dim;
    const uint64_t N = m->N, U = m->U, B = (uint64_t)m->block;
    memcpy(m->cen, m->t.w, (size_t)N * D * sizeof(float));
    for (uint64_t u = 0; u < N; u++) {
        double c = 0;
        for (uint64_t r = u * B; r < (u + 1) * B; r++) c += m->count[r];
        m->wt[u] = m->weighted ? c + CNT_EPS : 1.0;
        m->parent[u] = (uint32_t)u;
        m->act[u] = (uint32_t)u;
        m->flag[u] = 2;
    }
    uint64_t nact = N;
    /* 0. exact duplicates */
    if (nact > U) {
        for (uint64_t u = 0; u < N; u++) {
            const uint8_t *p = (const uint8_t *)(m->cen + (size_t)u * D);
            uint64_t h = UINT64_C(1469598103934665603);
            for (size_t i = 0; i < D * sizeof(float); i++) h = (h ^ p[i]) * UINT64_C(1099511628211);
            m->items[u].key = h;
            m->items[u].id = (uint32_t)u;
        }
        qsort(m->items, (size_t)N, sizeof *m->items, item_cmp);
        for (uint64_t i = 0, i0 = 0; i < N && nact > U; i++) {
            if (i == 0 || m->items[i].key != m->items[i - 1].key) i0 = i;
            const uint32_t b = m->items[i].id;
            for (uint64_t j = i0; j < i; j++) {
                const uint32_t a = m->items[j].id;
                if (m->parent[a] != a) continue;
                if (memcmp(m->cen + (size_t)a * D, m->cen + (size_t)b * D, D * sizeof(float)) == 0) {
                    merge(m, a, b, D); /* a < b: items are in id order within a key */
                    nact--;
                    break;
                }
            }
        }
        nact = compact(m, N);
    }
    /* 1, 2. SimHash rounds, relaxing the shared prefix L */
    for (int L = m->nb; nact > U;) {
        const uint64_t nlist = nact;
        for (uint64_t i = 0; i < nact; i++) {
            const uint32_t c = m->act[i];
            if (m->flag[c] & 2) m->sig[c] = simhash(m, m->cen + (size_t)c * D, D);
            m->flag[c] = 0;
        }
        size_t np = 0;
        const int sh = m->nb - L;
        for (int tb = 0; tb < DEDUP_TABLES; tb++) {
            /* table tb: the signature rotated by tb nb / T bits, so each
             * table buckets by a different set of hyperplanes */
            const int rot = tb * m->nb / DEDUP_TABLES;
            const uint64_t mask = m->nb >= 64 ? UINT64_MAX : (UINT64_C(1) << m->nb) - 1;
            for (uint64_t i = 0; i < nact; i++) {
                const uint64_t g = m->sig[m->act[i]];
                m->items[i].key = rot ? ((g << rot) | (g >> (m->nb - rot))) & mask : g;
                m->items[i].id = m->act[i];
            }
            qsort(m->items, (size_t)nact, sizeof *m->items, item_cmp);
            for (uint64_t i = 0; i < nact; i++)
                for (uint64_t j = i + 1; j < nact && j <= i + DEDUP_WINDOW; j++) {
                    if ((m->items[i].key >> sh) != (m->items[j].key >> sh)) break;
                    uint32_t a = m->items[i].id, b = m->items[j].id;
                    if (a > b) {
                        uint32_t x = a;
                        a = b;
                        b = x;
                    }
                    m->pairs[np++] = (pair_t){ward(m, a, b, D), a, b};
                }
        }
        qsort(m->pairs, np, sizeof *m->pairs, pair_cmp);
        /* each cluster's cheapest candidate (the first pair naming it) */
        for (uint64_t i = 0; i < nact; i++) m->best[m->act[i]] = UINT32_MAX;
        for (size_t k = 0; k < np; k++) {
            const pair_t *p = &m->pairs[k];
            if (m->best[p->a] == UINT32_MAX) m->best[p->a] = p->b;
            if (m->best[p->b] == UINT32_MAX) m->best[p->b] = p->a;
        }
        /* reciprocal nearest candidates first (never fewer than one: the
         * cheapest pair is), then, when they are fewer than 1/16 of the
         * clusters, the cheapest other pairs up to that many */
        const uint64_t quota = ES_MAX((uint64_t)1, nact / 16), n0 = nact;
        for (int pass = 0; pass < 2; pass++)
            for (size_t k = 0; k < np && nact > U && (pass == 0 || n0 - nact < quota); k++) {
                const pair_t *p = &m->pairs[k];
                if ((m->flag[p->a] | m->flag[p->b]) & 1) continue;
                if (pass == 0 && (m->best[p->a] != p->b || m->best[p->b] != p->a)) continue;
                merge(m, p->a, p->b, D);
                nact--;
            }
        nact = compact(m, nlist);
        if (L > 0) L--;
    }
    /* the survivors, in unit order, are the unique units */
    ES_ASSERT(nact == U);
    for (uint64_t i = 0; i < U; i++) {
        const uint32_t c = m->act[i];
        memcpy(m->uniq + (size_t)i * D, m->cen + (size_t)c * D, D * sizeof(float));
        m->sig[c] = (uint32_t)i; /* sig now holds the unique id of each root */
    }
    for (uint64_t u = 0; u < N; u++) remap_set(m, u, m->sig[find(m->parent, (uint32_t)u)]);
    m->sgen[0] = m->st[ST_STEP];
}

/* ---- lifecycle ------------------------------------------------------------------------- */

static void dedup_free(dedup_impl *m) {
    if (!m) return;
    es__rows_free(&m->t);
    es__gradacc_free(&m->ga);
    es__free(m->base);
    es__free(m->count);
    es__free(m->st);
    es__free_aligned(m->uniq);
    es__free(m->remap);
    es__free(m->sgen);
    es__free_aligned(m->cen);
    es__free(m->wt);
    es__free(m->parent);
    es__free(m->act);
    es__free(m->sig);
    es__free(m->best);
    es__free(m->flag);
    es__free(m->items);
    es__free(m->pairs);
    es__free(m->planes);
    es__free(m);
}

static void dedup_destroy(es_storage *s) {
    dedup_free(s->impl);
    s->impl = NULL;
}

static size_t serve_aux(uint64_t N, int ib, int F) { return (size_t)N * (size_t)ib + 8 + 3 * 8 * (size_t)F; }

static const es__opt_spec dedup_opts[] = {
    ES_OPT_SHARE,
    ES_OPT_SEED,
    ES_OPT_L("rows", 1, UINT64_C(1) << 40, NULL, ES_OPT_SIZES,
             "dense rows trained per field r0:r1:... (share=1: one count; default: ratio x uniq x block)", "50:70", ""),
    ES_OPT_U("uniq", 1, DEDUP_MAX_UNITS, NULL, ES_OPT_SIZES, "unique rows (blocks) served after the merge (default: from the budget)",
             "20", ""),
    ES_OPT_F("ratio", 1, 1e6, "4", 0, "dense rows trained per unique row served (sizes the dense table)", "2", ""),
    ES_OPT_U("block", 1, 64, "1", 0, "rows merged together as one unit (a remap entry per block)", "4", ""),
    ES_OPT_U("bits", 0, 32, "0", 0, "SimHash hyperplanes (0: ceil(log2 of the units))", "6", ""),
    ES_OPT_E("merge", "count|mean", "count", 0,
             "merged rows are the mean weighted by training lookups (count) or the plain mean (mean)", "mean", ""),
};

static int dedup_create(es_storage *s, const es_vocab *vocab, es_err *err) {
    const char *name = s->p.method;
    const int F = s->p.n_fields, dim = s->p.dim;
    int rc = ES_OK, found;
    const int share = es__storage_opt_int(s, "share");
    if (es__storage_opt_given(s, "seed")) s->p.seed = es__storage_opt_u64(s, "seed");
    const double ratio = es__storage_opt_f64(s, "ratio");
    const uint64_t B = es__storage_opt_u64(s, "block");
    const int nspace = share ? 1 : F;
    const double unit_bytes = 4.0 * (double)B * dim;

    uint64_t *rows = es__malloc((size_t)F * sizeof *rows);
    if (!rows) return es__err(err, ES_ENOMEM, "%s: out of memory", name);
    uint64_t R = 0, N = 0, U = 0;
    rc = es__storage_opt_list(s, "rows", nspace, 1, rows, &found, err);
    const int given_u = es__storage_opt_given(s, "uniq");
    if (rc == ES_OK && found) {
        for (int f = 0; f < nspace; f++) R += rows[f];
        N = (R + B - 1) / B;
        if (N > DEDUP_MAX_UNITS) rc = es__err(err, ES_ERANGE, "%s: rows= gives %llu units, over 2^32 - 1", name, (unsigned long long)N);
        else if (given_u) U = es__storage_opt_u64(s, "uniq");
        else if (s->budget_bytes > 0) {
            for (int ib = 1; ib <= 4; ib++) { /* the largest U whose remap width fits */
                const double a2 = s->budget_bytes - (double)serve_aux(N, ib, F);
                uint64_t u2 = a2 >= unit_bytes ? (uint64_t)ES_MIN(floor(a2 / unit_bytes), (double)N) : 0;
                if (bytes_for(u2) > ib) u2 = UINT64_C(1) << (8 * ib);
                if (a2 < (double)u2 * unit_bytes) u2 = 0;
                if (u2 > U) U = u2;
            }
            if (U == 0)
                rc = es__err(err, ES_EBUDGET, "%s: a budget of %.0f bytes leaves no room for a unique row after the remap of %llu rows",
                             name, s->budget_bytes, (unsigned long long)R);
        } else U = ES_MAX((uint64_t)1, (uint64_t)floor((double)N / ratio));
    } else if (rc == ES_OK && given_u) {
        U = es__storage_opt_u64(s, "uniq");
        double n = ceil(ratio * (double)U);
        n = ES_MAX(n, ceil((double)nspace / (double)B));
        if (n > (double)DEDUP_MAX_UNITS) rc = es__err(err, ES_ERANGE, "%s: uniq=%llu with ratio=%g needs over 2^32 - 1 units", name,
                                                      (unsigned long long)U, ratio);
        else N = (uint64_t)n;
        R = N * B;
    } else if (rc == ES_OK) {
        if (!(s->budget_bytes > 0)) {
            rc = es__err(err, ES_EINVAL,
                         "%s: needs a budget: bytes (> 1), or a fraction (0, 1] of the full table with a vocabulary, or uniq=",
                         name);
        } else {
            const double avail = s->budget_bytes - (double)serve_aux(0, 1, F);
            for (int ib = 1; ib <= 4 && rc == ES_OK; ib++) {
                double u = avail > 0 ? floor(avail / (unit_bytes + ratio * ib)) : 0;
                if (u > (double)DEDUP_MAX_UNITS / ratio) {
                    rc = es__err(err, ES_ERANGE, "%s: a budget of %.0f bytes is too large", name, s->budget_bytes);
                    break;
                }
                U = (uint64_t)u;
                if (U == 0 || bytes_for(U) <= ib) {
                    N = (uint64_t)floor(ratio * (double)U);
                    N = ES_MAX(N, U);
                    /* the remainder after the remap may hold a few more unique units */
                    const double a2 = s->budget_bytes - (double)serve_aux(N, ib, F);
                    uint64_t u2 = (uint64_t)ES_MIN(floor(a2 / unit_bytes), (double)N);
                    if (bytes_for(u2) > ib) u2 = UINT64_C(1) << (8 * ib);
                    if (u2 > U) U = u2;
                    break;
                }
            }
            if (rc == ES_OK && (U == 0 || N * B < (uint64_t)nspace))
                rc = es__err(err, ES_EBUDGET, "%s: a budget of %.0f bytes holds %llu unique rows of %llu x %d floats; %d dense rows are needed",
                             name, s->budget_bytes, (unsigned long long)U, (unsigned long long)B, dim, nspace);
        }
        R = N * B;
    }
    if (rc == ES_OK && U > N)
        rc = es__err(err, ES_EINVAL, "%s: uniq=%llu is more than the %llu dense units (rows %llu, block=%llu)", name,
                     (unsigned long long)U, (unsigned long long)N, (unsigned long long)R, (unsigned long long)B);
    if (rc == ES_OK && (double)N * B * dim > (double)(UINT64_C(1) << 40))
        rc = es__err(err, ES_ERANGE, "%s: %llu dense rows of %d floats are too many", name, (unsigned long long)(N * B), dim);
    if (rc == ES_OK && !found && !share) es__storage_split(R, F, vocab, 1, rows);
    if (rc != ES_OK) {
        es__free(rows);
        return rc;
    }

    dedup_impl *m = es__calloc(1, sizeof *m);
    if (!m) {
        es__free(rows);
        return es__err(err, ES_ENOMEM, "%s: out of memory", name);
    }
    const size_t D = (size_t)B * (size_t)dim;
    m->F = F;
    m->dim = dim;
    m->share = share;
    m->block = (int)B;
    m->weighted = es__storage_opt_enum(s, "merge") == 0;
    m->seed = s->p.seed;
    m->init_scale = s->p.init_scale;
    m->R = R;
    m->N = N;
    m->U = U;
    m->ib = bytes_for(U);
    m->nb = (int)es__storage_opt_u64(s, "bits");
    if (m->nb == 0) {
        m->nb = 1;
        while (m->nb < 32 && (UINT64_C(1) << m->nb) < N) m->nb++;
    }
    const uint64_t Rp = N * B;
    m->base = es__malloc(3 * (size_t)F * sizeof *m->base);
    m->count = es__calloc((size_t)Rp, sizeof *m->count);
    m->st = es__calloc(ST_N, sizeof *m->st);
    m->uniq = es__alloc_aligned((size_t)U * D * sizeof(float));
    m->remap = es__calloc((size_t)N * (size_t)m->ib, 1);
    m->sgen = es__calloc(1, sizeof *m->sgen);
    m->cen = es__alloc_aligned((size_t)N * D * sizeof(float));
    m->wt = es__malloc((size_t)N * sizeof *m->wt);
    m->parent = es__malloc((size_t)N * sizeof *m->parent);
    m->act = es__malloc((size_t)N * sizeof *m->act);
    m->sig = es__malloc((size_t)N * sizeof *m->sig);
    m->best = es__malloc((size_t)N * sizeof *m->best);
    m->flag = es__malloc((size_t)N);
    m->items = es__malloc((size_t)N * sizeof *m->items);
    m->pairs = es__malloc((size_t)N * DEDUP_WINDOW * DEDUP_TABLES * sizeof *m->pairs);
    m->planes = es__malloc((size_t)m->nb * D * sizeof *m->planes);
    int bad = !m->base || !m->count || !m->st || !m->uniq || !m->remap || !m->sgen || !m->cen || !m->wt || !m->parent ||
              !m->act || !m->sig || !m->best || !m->flag || !m->items || !m->pairs || !m->planes;
    if (!bad && es__rows_init(&m->t, Rp, dim, &s->p.opt, NULL, 0.0f) != ES_OK) bad = 1;
    size_t ga_cap = (size_t)s->p.max_batch * (size_t)F;
    if (ga_cap > Rp) ga_cap = (size_t)Rp;
    if (!bad && es__gradacc_init(&m->ga, ga_cap, dim) != ES_OK) bad = 1;
    if (bad) {
        dedup_free(m);
        es__free(rows);
        return es__err(err, ES_ENOMEM, "%s: out of memory for %llu rows of %d floats", name, (unsigned long long)Rp, dim);
    }
    memset(m->uniq, 0, (size_t)U * D * sizeof(float));
    m->su.w = m->uniq;
    m->su.n_rows = U * B;
    m->su.dim = dim;
    m->su.prec = ES_PREC_FP32;
    m->nrows = m->base + F;
    m->salt = m->nrows + F;
    uint64_t o = 0;
    for (int f = 0; f < F; f++) {
        m->salt[f] = es__storage_salt(s->p.seed, f, 0);
        m->base[f] = share ? 0 : o;
        m->nrows[f] = share ? R : rows[f];
        o += m->nrows[f];
    }
    es_rng rng;
    es__rng_seed(&rng, m->seed ^ UINT64_C(0xded0b175d5eed5));
    for (size_t i = 0; i < (size_t)m->nb * D; i++) m->planes[i] = es__rng_normal(&rng);
    fill_init(m);
    initial_state(m);
    s->impl = m;
    if (share) rows[0] = R;
    if ((rc = es__storage_opt_set_u64(s, "share", (uint64_t)share, err)) != 0 ||
        (rc = es__storage_opt_set_u64(s, "seed", s->p.seed, err)) != 0 ||
        (rc = es__storage_opt_set_list(s, "rows", rows, nspace, 1, err)) != 0 ||
        (rc = es__storage_opt_set_u64(s, "uniq", U, err)) != 0 ||
        (rc = es__storage_opt_set(s, "ratio", err, "%.17g", ratio)) != 0 ||
        (rc = es__storage_opt_set_u64(s, "block", B, err)) != 0 ||
        (rc = es__storage_opt_set_u64(s, "bits", (uint64_t)m->nb, err)) != 0 ||
        (rc = es__storage_opt_set(s, "merge", err, "%s", m->weighted ? "count" : "mean")) != 0) {
        es__free(rows);
        dedup_destroy(s);
        return rc;
    }
    es__free(rows);
    s->param_bytes = (size_t)U * D * sizeof(float);
    s->aux_bytes = serve_aux(N, m->ib, F);
    s->state_bytes = es__rows_param_bytes(&m->t) + es__rows_state_bytes(&m->t) + (size_t)Rp * sizeof(uint32_t) + ST_N * 8;
    return ES_OK;
}

/* ---- lookup, backward ------------------------------------------------------------------ */

static void dedup_lookup(es_storage *s, const es_batch *b, int r0, int r1, float *out) {
    dedup_impl *m = s->impl;
    if (m->serving) es__rows_lookup(&m->su, 1, resolve_served, m, b, r0, r1, out);
    else es__rows_lookup(&m->t, 1, resolve_dense, m, b, r0, r1, out);
}

static int dedup_backward(es_storage *s, const es_batch *b, const float *dout) {
    dedup_impl *m = s->impl;
    if (m->serving)
        return es__err(&s->err, ES_EINVAL,
                       "%s: this table was loaded without its training state (a saved model serves only); "
                       "resume from a checkpoint to train it",
                       s->p.method);
    if (es__rows_backward(&m->t, &m->ga, 1, resolve_dense, m, b, dout) != ES_OK)
        return es__err(&s->err, ES_ENOMEM, "%s: out of memory growing the gradient scratch past %zu rows", s->p.method, m->ga.cap);
    const int F = m->F;
    for (size_t p = 0; p < (size_t)b->n * (size_t)F; p++)
        for (uint32_t i = b->off[p]; i < b->off[p + 1]; i++) {
            uint32_t *c = &m->count[row_of(m, (int)(p % (size_t)F), b->val[i])];
            if (*c < UINT32_MAX) (*c)++;
        }
    m->st[ST_STEP]++;
    m->st[ST_TRAINED] = 1;
    return ES_OK;
}

/* ---- tensors, load --------------------------------------------------------------------- */

static int dedup_tensors(es_storage *s, es_tensor_ref *refs, int max) {
    dedup_impl *m = s->impl;
    const int n = es__rows_tensors(&m->t, NULL, 0) + 5;
    if (!refs) return n;
    if (max < n) return ES_ERANGE;
    if (!m->serving) build_serving(m);
    int i = es__rows_tensors(&m->t, refs, max);
    for (int k = 0; k < i; k++)
        if (strcmp(refs[k].name, "weight") == 0) snprintf(refs[k].name, sizeof refs[k].name, "opt.train.weight");
    es__tensor_ref_set(&refs[i++], "serve.uniq", ES_DT_F32, m->uniq, 2, m->U * (uint64_t)m->block, (uint64_t)m->dim);
    es__tensor_ref_set(&refs[i++], "serve.remap", ES_DT_U8, m->remap, 2, m->N, (uint64_t)m->ib);
    es__tensor_ref_set(&refs[i++], "serve.gen", ES_DT_U64, m->sgen, 1, (uint64_t)1);
    es__tensor_ref_set(&refs[i++], "opt.count", ES_DT_U32, m->count, 1, m->N * (uint64_t)m->block);
    es__tensor_ref_set(&refs[i++], "opt.dedup", ES_DT_U64, m->st, 1, (uint64_t)ST_N);
    return i;
}

static int dedup_after_load(es_storage *s, es_err *err) {
    dedup_impl *m = s->impl;
    /* the serving form must be consistent whatever is used */
    for (uint64_t u = 0; u < m->N; u++) {
        const uint64_t v = remap_get(m, u);
        if (v >= m->U)
            return es__err(err, ES_EFORMAT, "%s: serve.remap[%llu] = %llu is out of range (uniq=%llu unique rows)", s->p.method,
                           (unsigned long long)u, (unsigned long long)v, (unsigned long long)m->U);
    }
    if (m->st[ST_TRAINED] > 1)
        return es__err(err, ES_EFORMAT, "%s: opt.dedup trained flag is %llu, expected 0 or 1", s->p.method,
                       (unsigned long long)m->st[ST_TRAINED]);
    if (m->sgen[0] == 0) {
        /* saved before any training step: the training state is the
         * initial one, regenerated from the seed whether or not it was
         * loaded, so the table looks up what the saved one did */
        fill_init(m);
        initial_state(m);
        m->serving = 0;
        return ES_OK;
    }
    m->serving = !(m->st[ST_TRAINED] == 1 && m->sgen[0] == m->st[ST_STEP]);
    return ES_OK;
}

static void dedup_field_stats(es_storage *s, const es_vocab *vocab, int field, es_field_stats *out) {
    dedup_impl *m = s->impl;
    if (field < 0 || field >= m->F) {
        memset(out, 0, sizeof *out);
        return;
    }
    es__rows_field_stats(1, resolve_dense, m, vocab, field, m->nrows[field], out);
}

const es_storage_ops es__storage_dedup = {
    .name = "dedup",
    .summary = "dedup: train a dense hashed table, serve it with near-duplicate rows merged by SimHash LSH to the budget (remap + unique rows)",
    .create = dedup_create,
    .lookup = dedup_lookup,
    .backward = dedup_backward,
    .tensors = dedup_tensors,
    .after_load = dedup_after_load,
    .field_stats = dedup_field_stats,
    .destroy = dedup_destroy,
    ES_STORAGE_OPTS(dedup_opts),
    .default_budget = ES_DEFAULT_BUDGET,
    .derived_serving = 1,
};
