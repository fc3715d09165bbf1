/*
 * adapt.c — the `adapt` storage method: frequent values get private rows,
 * the rest share hashed rows (the frequency-adaptive family of the VLDB
 * 2024 compression study; AdaEmbed, Lai et al. 2023, reallocates rows by
 * importance in the same spirit).
 *
 * Storage.  One row table of dim-float rows:
 *   rows [0, P)        private rows; private row r belongs to the value
 *                      whose tagged key is keys[r] (r < n_used);
 *   rows [P, P + H)    hashed rows, split into S spaces: share=0 gives
 *                      every field its own space (hash trick per field),
 *                      share=1 one space for all fields (per-field salts,
 *                      as Unified Embedding does).
 * A value (f, key) reads its private row when tagged key key ^ tag(f) is
 * in the map, else row  P + base[s] + es__range(es__hash_u64(key, salt_f),
 * rows[s]).  The tag makes equal raw keys of different fields different
 * map entries; two (field, key) pairs with equal tagged keys would share a
 * private row, which happens with probability ~2^-64 per pair (and is
 * detected and skipped when the map is built).  The map is the key array
 * in row order plus an open-addressing index over it (load <= 2/3),
 * rebuilt after a load.
 *
 * Which values are private:
 *   mode=vocab (default when create() gets a vocabulary): a first pass over
 *     the training data counted every value; the P most frequent (field,
 *     key) pairs with count >= min_count get private rows, most frequent
 *     first (ties: field, then key, ascending), across all fields.
 *   mode=online (no vocabulary, or "mode=online"): a count-min sketch of
 *     depth d and width w (conservative update: only the counters at the
 *     minimum grow) counts the values of every training batch that are not
 *     private yet; once a value's estimate reaches `promote` (default 8)
 *     and a private row is free, the value is promoted: its private row
 *     starts as a copy of its hashed row (and of that row's optimizer
 *     state), so its vector does not jump.  Rows are never evicted; the
 *     sketch only over-estimates, so with a long stream every value whose
 *     counters fill up may be promoted — values that are frequent early
 *     win.  The sketch is training state ("opt.sketch"), not served.
 *
 * Budget B (bytes).  A private value costs dim*4 bytes of row, 8 of key
 * and 6 of index; a hashed row dim*4 bytes.  When B holds every eligible
 * value privately plus one hashed row per space, every eligible value gets
 * a private row; otherwise the most frequent ones do, as many as
 * private_frac * B / (dim*4 + 14) (private_frac = 0.5 by default, option
 * "private_frac=").  The rest of B becomes H = floor(rest / (dim*4))
 * hashed rows, at least one per space (P shrinks until that holds), so
 * param + aux bytes are within one row of B.  share=0 splits the H rows over the fields: one
 * each, the rest in proportion to each field's distinct values that did
 * not get a private row (largest remainder; equal split without a
 * vocabulary).
 *
 * Rows train with the storage optimizer (es_rows: row-wise Adagrad by
 * default), one update per distinct row per batch.
 *
 * s->meta: "share=,mode=,private=P,hashed=H,seed=" (+ "depth=,width=,
 * promote=" online).  Tensors: weight, opt.acc, map.keys [P] (tagged keys,
 * row order), map.n [1] (private rows in use), map.hashed [S] (hashed rows
 * per space), opt.sketch [d, w] (online).
 */
#include "storage/storage.h"

#include <math.h>

typedef struct adapt_impl {
    es_rows t;           /* [P + H, dim] */
    es_gradacc ga;
    int F, S, share, online;
    uint64_t seed;
    uint64_t n_cap;      /* P */
    uint64_t n_hashed;   /* H */
    uint64_t *keys;      /* [max(P, 1)] tagged keys, row order */
    uint64_t *n_used;    /* [1] */
    uint32_t *index;     /* [icap]: key index + 1, 0 = empty */
    size_t icap;
    uint64_t *hrows;     /* [S] hashed rows per space (a tensor) */
    uint64_t *hbase;     /* [S] first hashed row of each space, from hrows */
    /* online */
    uint32_t *sketch;    /* [depth * width] */
    int depth;
    uint64_t width, promote;
} adapt_impl;

#define ADAPT_KEY_AUX 14 /* bytes per private value beyond its row: key 8 + index ~6 */

static inline uint64_t field_tag(int f) { return es__mix64(UINT64_C(0xada9e3779b97f4a7) + (uint64_t)(uint32_t)f); }

/* Bytes of the serving map and small arrays for P private values. */
static size_t adapt_aux(uint64_t P, int S) {
    return (size_t)ES_MAX(P, 1) * 8 + es__keyidx_cap(P) * 4 + 8 + 16 * (size_t)S;
}

/* Key index of tagged key t, or UINT64_MAX. */
static inline uint64_t map_find(const adapt_impl *m, uint64_t t) { return es__keyidx_find(m->keys, m->index, m->icap, t); }

/* Insert key index i (keys[i] set); 0, or 1 if the tagged key was there. */
static int map_insert(adapt_impl *m, uint64_t i) { return es__keyidx_insert(m->keys, m->index, m->icap, i); }

/* salt = es__storage_salt(m->seed, f, 0), computed once per (row, field) by
 * the caller (not stored: it costs three mixer rounds). */
static inline uint64_t hashed_row(const adapt_impl *m, int f, uint64_t salt, uint64_t key) {
    const int s = m->share ? 0 : f;
    return m->n_cap + m->hbase[s] + es__range(es__hash_u64(key, salt), m->hrows[s]);
}

static void adapt_resolve(const void *ctx, int f, const uint64_t *keys, size_t n, uint64_t *ids);

/* Across processes (src/train/dist.c): one table of plain rows, one row a
 * value, private or hashed.  mode=online promotes values to private rows
 * while training, a change of mapping the ranks would have to agree on:
 * not shardable (ES_EINVAL). */
static int adapt_row_map(es_storage *s, es__row_map *out) {
    adapt_impl *m = s->impl;
    if (m->online) return ES_EINVAL;
    *out = es__row_map_one(&m->t, 1, adapt_resolve, m, m->n_cap + m->hbase[m->S - 1] + m->hrows[m->S - 1]);
    return ES_OK;
}

static void adapt_resolve(const void *ctx, int f, const uint64_t *keys, size_t n, uint64_t *ids) {
    const adapt_impl *m = ctx;
    const uint64_t tag = field_tag(f), salt = es__storage_salt(m->seed, f, 0);
    for (size_t i = 0; i < n; i++) {
        uint64_t r = map_find(m, keys[i] ^ tag);
        ids[i] = r != UINT64_MAX ? r : hashed_row(m, f, salt, keys[i]);
    }
}

/* ---- count-min sketch ------------------------------------------------------------ */

static inline uint64_t sketch_col(const adapt_impl *m, int i, uint64_t t) {
    return es__range(es__hash_u64(t, es__mix64(UINT64_C(0xc0c0a11e5) + (uint64_t)i)), m->width);
}

/* Count one occurrence of tagged key t (conservative update); returns the
 * new estimate. */
static uint64_t sketch_add(adapt_impl *m, uint64_t t) {
    uint32_t lo = UINT32_MAX;
    for (int i = 0; i < m->depth; i++) {
        uint32_t c = m->sketch[(size_t)i * m->width + sketch_col(m, i, t)];
        if (c < lo) lo = c;
    }
    const uint32_t nv = lo == UINT32_MAX ? lo : lo + 1;
    for (int i = 0; i < m->depth; i++) {
        uint32_t *c = &m->sketch[(size_t)i * m->width + sketch_col(m, i, t)];
        if (*c < nv) *c = nv;
    }
    return nv;
}

/* ---- lifecycle ----------------------------------------------------------------------- */

static void adapt_free(adapt_impl *m) {
    if (!m) return;
    es__rows_free(&m->t);
    es__gradacc_free(&m->ga);
    es__free(m->keys);
    es__free(m->n_used);
    es__free(m->index);
    es__free(m->hrows);
    es__free(m->sketch);
    es__free(m);
}

static void adapt_destroy(es_storage *s) {
    adapt_free(s->impl);
    s->impl = NULL;
}

static void set_bases(adapt_impl *m) {
    uint64_t o = 0;
    for (int s = 0; s < m->S; s++) {
        m->hbase[s] = o;
        o += m->hrows[s];
    }
}

typedef es_vocab_entry cand;

typedef struct {
    const adapt_impl *m;
    int f;
    uint64_t n;
} count_ctx;

static void count_hashed(uint64_t key, uint64_t count, void *ctx) {
    count_ctx *x = ctx;
    (void)count;
    x->n += map_find(x->m, key ^ field_tag(x->f)) == UINT64_MAX;
}

static const es__opt_spec adapt_opts[] = {
    ES_OPT_SHARE,
    ES_OPT_E("mode", "vocab|online", NULL, 0, "private rows from vocab counts or an online sketch (default: vocab with a vocabulary)",
             "online", ""),
    ES_OPT_U("private", 0, (uint64_t)UINT32_MAX - 1, NULL, ES_OPT_SIZES, "private rows (with hashed=; default: from the budget)", "3",
             ""),
    ES_OPT_U("hashed", 1, UINT64_MAX / 2, NULL, ES_OPT_SIZES, "hashed rows (with private=; default: from the budget)", "9", ""),
    ES_OPT_SEED,
    ES_OPT_U("depth", 1, 16, "4", 0, "online: count-min sketch depth", "3", "mode=online"),
    ES_OPT_U("width", 1, UINT64_C(1) << 32, NULL, 0, "online: sketch width (default: max(64, 2 x private))", "100", "mode=online"),
    ES_OPT_U("promote", 1, UINT32_MAX, "8", 0, "online: count at which a value gets a private row", "3", "mode=online"),
    ES_OPT_MIN_COUNT,
    ES_OPT_F("private_frac", 0, 1, "0.5", ES_OPT_LO_OPEN, "share of the budget for private rows", "0.25", ""),
};

static int adapt_create(es_storage *s, const es_vocab *vocab, es_err *err) {
    const int F = s->p.n_fields, dim = s->p.dim;
    const size_t rowb = (size_t)dim * sizeof(float);
    int rc;
    const int share = es__storage_opt_int(s, "share");
    const int online = es__storage_opt_given(s, "mode") ? es__storage_opt_enum(s, "mode") == 1 : vocab == NULL;
    uint64_t P = es__storage_opt_u64(s, "private"), H = es__storage_opt_u64(s, "hashed");
    int have_P = es__storage_opt_given(s, "private"), have_H = es__storage_opt_given(s, "hashed");
    const uint64_t seed = es__storage_opt_given(s, "seed") ? es__storage_opt_u64(s, "seed") : s->p.seed;
    const uint64_t depth = es__storage_opt_u64(s, "depth"), promote = es__storage_opt_u64(s, "promote"),
                   mc = es__storage_opt_u64(s, "min_count");
    uint64_t width = es__storage_opt_u64(s, "width"); /* 0 when not given: sized below */
    const double frac = es__storage_opt_f64(s, "private_frac");
    const int S = share ? 1 : F;
    if (!online && !vocab && !have_P)
        return es__err(err, ES_EINVAL, "adapt: mode=vocab needs a vocabulary (count the training data first)");

    /* Candidates for private rows, most frequent first. */
    cand *cands = NULL;
    size_t n_cand = 0;
    if (!online && vocab) {
        size_t total = 0;
        for (int f = 0; f < F; f++) total += (size_t)es__vocab_distinct_min(vocab, f, mc);
        cands = es__malloc(ES_MAX(total, (size_t)1) * sizeof *cands);
        if (!cands) return es__err(err, ES_ENOMEM, "adapt: out of memory ranking %zu values", total);
        n_cand = es__vocab_ranked(vocab, mc, 0, cands);
    }

    if (!have_P || !have_H) {
        const double B = s->budget_bytes;
        if (B <= 0) {
            es__free(cands);
            return es__err(err, ES_EINVAL, "adapt: needs a budget (bytes or a fraction of the full table)");
        }
        /* bytes left for hashed rows with p private values */
        double fixed = (double)adapt_aux(0, S) - 4.0 * (double)es__keyidx_cap(0);
        if (!have_P && !online && n_cand && n_cand <= (size_t)UINT32_MAX - 1 &&
            B - (double)adapt_aux(n_cand, S) - (double)n_cand * (double)rowb >= (double)S * (double)rowb) {
            P = n_cand; /* every eligible value fits privately: no reason to hash any */
            have_P = 1;
        }
        if (!have_P) {
            double cap = floor(frac * (B - fixed) / (double)(rowb + ADAPT_KEY_AUX));
            if (cap < 0) cap = 0;
            P = online ? (uint64_t)cap : (uint64_t)ES_MIN(cap, (double)n_cand);
            if (P > (uint64_t)UINT32_MAX - 1) P = (uint64_t)UINT32_MAX - 1;
            /* shrink until at least one hashed row per space fits */
            while (P > 0 && B - (double)adapt_aux(P, S) - (double)P * (double)rowb < (double)S * (double)rowb) {
                uint64_t step = ES_MAX(P / 64, (uint64_t)1);
                P -= ES_MIN(step, P);
            }
        }
        if (!have_H) {
            double rest = B - (double)adapt_aux(P, S) - (double)P * (double)rowb;
            double h = floor(rest / (double)rowb);
            if (h < S) {
                es__free(cands);
                return es__err(err, ES_EBUDGET,
                               "adapt: a budget of %.0f bytes cannot hold one hashed row per %s (%d x %zu bytes) and "
                               "its maps",
                               B, share ? "table" : "field", S, rowb);
            }
            H = (uint64_t)h;
        }
    }
    if (H < (uint64_t)S) {
        es__free(cands);
        return es__err(err, ES_EINVAL, "adapt: hashed=%llu is fewer than one row per space (%d)", (unsigned long long)H, S);
    }
    if (online && !width) width = ES_MAX((uint64_t)64, 2 * P);

    size_t wbytes;
    const uint64_t n_rows = P + H;
    if (n_rows < H || !es__mul_size((size_t)n_rows, rowb, &wbytes) ||
        (online && (width > SIZE_MAX / 4 / depth))) {
        es__free(cands);
        return es__err(err, ES_ERANGE, "adapt: %llu rows of %d floats is too large", (unsigned long long)n_rows, dim);
    }

    adapt_impl *m = es__calloc(1, sizeof *m);
    if (!m) {
        es__free(cands);
        return es__err(err, ES_ENOMEM, "adapt: out of memory");
    }
    m->F = F;
    m->S = S;
    m->share = share;
    m->online = online;
    m->seed = seed;
    m->n_cap = P;
    m->n_hashed = H;
    m->icap = es__keyidx_cap(P);
    m->depth = (int)depth;
    m->width = online ? width : 0;
    m->promote = promote;
    m->keys = es__calloc((size_t)ES_MAX(P, 1), sizeof *m->keys);
    m->n_used = es__calloc(1, sizeof *m->n_used);
    m->index = es__calloc(m->icap, sizeof *m->index);
    m->hrows = es__malloc(2 * (size_t)S * sizeof *m->hrows);
    int ok = m->keys && m->n_used && m->index && m->hrows;
    if (ok && online) ok = (m->sketch = es__calloc((size_t)depth * (size_t)width, sizeof *m->sketch)) != NULL;
    es_rng rng;
    es__rng_seed(&rng, s->p.seed);
    /* sharded (training across processes): this rank's rows of the whole table's stream */
    if (ok) ok = es__rows_init_shard(&m->t, n_rows, dim, &s->p.opt, &rng, s->p.init_scale, s->p.shard_rank, s->p.shard_n) == ES_OK;
    if (ok) es__rows_shift(&m->t, s->p.init_shift);
    if (ok) {
        size_t ga_cap = ES_MIN((size_t)s->p.max_batch * (size_t)F, (size_t)n_rows);
        ok = es__gradacc_init(&m->ga, ga_cap, dim) == ES_OK;
    }
    if (!ok) {
        adapt_free(m);
        es__free(cands);
        return es__err(err, ES_ENOMEM, "adapt: out of memory for %llu rows of %d floats", (unsigned long long)n_rows, dim);
    }
    m->hbase = m->hrows + S;

    /* The private values (vocab mode with a vocabulary). */
    uint64_t used = 0;
    if (!online && vocab) {
        for (size_t i = 0; i < n_cand && used < P; i++) {
            m->keys[used] = cands[i].key ^ field_tag(cands[i].f);
            if (map_insert(m, used) == 0) used++;
        }
    }
    *m->n_used = used;
    es__free(cands);

    /* Hashed rows per space. */
    if (S == 1) {
        m->hrows[0] = H;
    } else {
        uint64_t *w = NULL;
        if (vocab) {
            w = es__malloc((size_t)S * sizeof *w);
            if (!w) {
                adapt_free(m);
                return es__err(err, ES_ENOMEM, "adapt: out of memory");
            }
            for (int f = 0; f < F; f++) {
                count_ctx x = {m, f, 0};
                es__vocab_each(vocab, f, count_hashed, &x);
                w[f] = x.n;
            }
        }
        es__storage_split_rows(H, S, w, m->hrows);
        es__free(w);
    }
    set_bases(m);

    if ((rc = es__storage_opt_set_u64(s, "share", (uint64_t)share, err)) != 0 ||
        (rc = es__storage_opt_set(s, "mode", err, "%s", online ? "online" : "vocab")) != 0 ||
        (rc = es__storage_opt_set_u64(s, "private", P, err)) != 0 || (rc = es__storage_opt_set_u64(s, "hashed", H, err)) != 0 ||
        (rc = es__storage_opt_set_u64(s, "seed", seed, err)) != 0 ||
        (online && ((rc = es__storage_opt_set_u64(s, "depth", depth, err)) != 0 ||
                    (rc = es__storage_opt_set_u64(s, "width", m->width, err)) != 0 ||
                    (rc = es__storage_opt_set_u64(s, "promote", promote, err)) != 0))) {
        adapt_free(m);
        return rc;
    }
    s->impl = m;
    s->param_bytes = es__rows_param_bytes(&m->t);
    s->aux_bytes = adapt_aux(P, S);
    s->state_bytes = es__rows_state_bytes(&m->t) + (online ? (size_t)depth * (size_t)width * sizeof(uint32_t) : 0);
    return ES_OK;
}

/* ---- lookup / backward ------------------------------------------------------------------ */

static void adapt_lookup(es_storage *s, const es_batch *b, int r0, int r1, float *out) {
    adapt_impl *m = s->impl;
    es__rows_lookup(&m->t, 1, adapt_resolve, m, b, r0, r1, out);
}

/* Give (f, key) private row n_used: a copy of its hashed row and state. */
static void promote_value(adapt_impl *m, int f, uint64_t key, uint64_t t) {
    const uint64_t r = *m->n_used, src = hashed_row(m, f, es__storage_salt(m->seed, f, 0), key);
    es__rows_copy_row(&m->t, r, src);
    m->keys[r] = t;
    map_insert(m, r);
    *m->n_used = r + 1;
}

static int adapt_backward(es_storage *s, const es_batch *b, const float *dout) {
    adapt_impl *m = s->impl;
    int rc = es__rows_backward(&m->t, &m->ga, 1, adapt_resolve, m, b, dout);
    if (rc) return es__err(&s->err, rc, "adapt: out of memory growing the gradient scratch past %zu rows", m->ga.cap);
    if (!m->online) return ES_OK;
    /* Count this batch's values that are not private yet; promote those
     * whose estimate reaches the threshold while private rows are free.
     * After the update, so the batch's gradient went to the rows its
     * forward used. */
    const int F = m->F;
    const size_t PN = (size_t)b->n * (size_t)F;
    for (size_t P = 0; P < PN; P++) {
        const int f = (int)(P % (size_t)F);
        const uint64_t tag = field_tag(f);
        for (uint32_t i = b->off[P]; i < b->off[P + 1]; i++) {
            const uint64_t t = b->val[i] ^ tag;
            if (map_find(m, t) != UINT64_MAX) continue;
            uint64_t est = sketch_add(m, t);
            if (est >= m->promote && *m->n_used < m->n_cap) promote_value(m, f, b->val[i], t);
        }
    }
    return ES_OK;
}

/* ---- tensors / load ------------------------------------------------------------------------ */

static int adapt_tensors(es_storage *s, es_tensor_ref *refs, int max) {
    adapt_impl *m = s->impl;
    const int nr = es__rows_tensors(&m->t, NULL, 0);
    const int n = nr + 2 + (m->n_cap > 0) + (m->online ? 1 : 0);
    if (!refs) return n;
    if (max < n) return ES_ERANGE;
    int i = es__rows_tensors(&m->t, refs, max);
    if (m->n_cap > 0) es__tensor_ref_set(&refs[i++], "map.keys", ES_DT_U64, m->keys, 1, m->n_cap);
    es__tensor_ref_set(&refs[i++], "map.n", ES_DT_U64, m->n_used, 1, (uint64_t)1);
    es__tensor_ref_set(&refs[i++], "map.hashed", ES_DT_U64, m->hrows, 1, (uint64_t)m->S);
    if (m->online) es__tensor_ref_set(&refs[i++], "opt.sketch", ES_DT_U32, m->sketch, 2, (uint64_t)m->depth, m->width);
    return i;
}

static int adapt_after_load(es_storage *s, es_err *err) {
    adapt_impl *m = s->impl;
    if (*m->n_used > m->n_cap)
        return es__err(err, ES_EFORMAT, "adapt: map uses %llu private rows of %llu", (unsigned long long)*m->n_used,
                       (unsigned long long)m->n_cap);
    uint64_t sum = 0;
    for (int i = 0; i < m->S; i++) {
        if (m->hrows[i] == 0 || m->hrows[i] > m->n_hashed)
            return es__err(err, ES_EFORMAT, "adapt: space %d has %llu hashed rows (1..%llu expected)", i,
                           (unsigned long long)m->hrows[i], (unsigned long long)m->n_hashed);
        sum += m->hrows[i];
    }
    if (sum != m->n_hashed)
        return es__err(err, ES_EFORMAT, "adapt: hashed rows per space sum to %llu, expected %llu", (unsigned long long)sum,
                       (unsigned long long)m->n_hashed);
    set_bases(m);
    memset(m->index, 0, m->icap * sizeof *m->index);
    for (uint64_t i = 0; i < *m->n_used; i++)
        if (map_insert(m, i))
            return es__err(err, ES_EFORMAT, "adapt: private key %llu appears twice in the map", (unsigned long long)i);
    return ES_OK;
}

static void adapt_field_stats(es_storage *s, const es_vocab *vocab, int field, es_field_stats *out) {
    adapt_impl *m = s->impl;
    memset(out, 0, sizeof *out);
    if (field < 0 || field >= m->F) return;
    /* addressable: the field's values with private rows, and its space's hashed rows */
    uint64_t priv = 0;
    if (vocab && field < es_vocab_n_fields(vocab)) {
        count_ctx x = {m, field, 0};
        es__vocab_each(vocab, field, count_hashed, &x);
        priv = es_vocab_distinct(vocab, field) - x.n;
    }
    es__rows_field_stats(1, adapt_resolve, m, vocab, field, priv + m->hrows[m->share ? 0 : field], out);
}

static es_rows *adapt_rows(es_storage *s, int i) { return i == 0 ? &((adapt_impl *)s->impl)->t : NULL; }

const es_storage_ops es__storage_adapt = {
    .name = "adapt",
    .summary = "frequent values get private rows, the rest share hashed rows (vocab counts or an online count-min sketch)",
    .create = adapt_create,
    .lookup = adapt_lookup,
    .backward = adapt_backward,
    .tensors = adapt_tensors,
    .after_load = adapt_after_load,
    .field_stats = adapt_field_stats,
    .destroy = adapt_destroy,
    ES_STORAGE_OPTS(adapt_opts),
    .default_budget = ES_DEFAULT_BUDGET,
    .needs_vocab = 1,
    .plain_rows = 1,
    .rows = adapt_rows,
    .row_map = adapt_row_map,
};
