/*
 * blockdim.c — the `blockdim` storage method: a dimension per (field,
 * frequency block), the table AutoSrh retrains (autosrh.c derives it;
 * docs/methods.md "blockdim").
 *
 * Blocks.  From the vocabulary, the values of field f are ranked by count
 *   (ties by key) and cut into NB blocks (blocks=, default 4) of about
 *   equal occurrence mass, as autosrh cuts them: block 0 holds the most
 *   frequent values, block NB-1 the long tail.
 * Stored.  Values of field f in block b that have a row of their own get a
 *   row of d[f][b] floats (dims=, F * NB values in field-major order, each
 *   in [1, dim]; default dim) in table (f, b); a map of their keys (8 bytes
 *   a key, "map.keys", field-major then block then popularity; a per-field
 *   open-addressing index of 4-byte slots, es__keyidx, rebuilt at load)
 *   finds them.  Every other value of field f (unseen, or not kept) reads
 *   field f's one shared out-of-vocabulary row, the last row of table (f,
 *   NB-1) (the tail's width; one tensor per block, so every table a batch
 *   of popular and unseen values reaches is touched together).  The output slot of dim floats holds the pooled row in
 *   its first d coordinates and 0 after (zero padding, as fielddim).
 * Training: one optimizer update per distinct row with the summed gradient
 *   of its first d coordinates (SGD, Adagrad, row-wise Adagrad).
 * Sizing from the budget B: the OOV rows (4 sum_f d[f][NB-1]) and the
 *   small arrays are set first (ES_EBUDGET when they do not fit); then
 *   values in popularity order over all fields (count descending, then
 *   field, then key) keep a row while its floats, its key and its index
 *   slots fit (a value whose row does not fit is skipped, a narrower later
 *   one may still fit).  The kept counts per (field, block) are recorded
 *   (keep=), so a saved model loads without a vocabulary (the keys come
 *   with its tensors); keep= given with a vocabulary keeps the most
 *   popular keep[f][b] values of each block (fewer where it has fewer).
 */
#include "core/simd.h"
#include "storage/storage.h"

#include <math.h>

#define BD_MAX_B 16
#define BD_MAX_FB 65536
#define BD_MAX_KEYS (UINT64_C(1) << 31)

typedef struct {
    int F, NB, dim;
    uint64_t N;        /* kept keys */
    uint64_t *keys;    /* [max(N, 1)] */
    uint32_t *index;   /* per-field slots at ioff[f], icap[f] of them */
    uint64_t *koff;    /* [F * NB + 1]; ioff [F + 1], icap [F], dims [F * NB] follow */
    uint64_t *ioff, *icap, *dims;
    es_rows *t;        /* [F * NB] block tables; (f, NB-1) ends with the OOV row */
    es_gradacc *ga;    /* same */
} bd_impl;

static size_t bd_small_bytes(int F, int NB) { return 8 * ((size_t)F * NB + 1) + 8 * ((size_t)F + 1) + 8 * (size_t)F + 8 * (size_t)F * NB; }

static void bd_free(bd_impl *m) {
    if (!m) return;
    const int T = m->F * m->NB;
    for (int i = 0; m->t && i < T; i++) es__rows_free(&m->t[i]);
    for (int i = 0; m->ga && i < T; i++) es__gradacc_free(&m->ga[i]);
    es__free(m->t);
    es__free(m->ga);
    es__free(m->keys);
    es__free(m->index);
    es__free(m->koff);
    es__free(m);
}

static void bd_destroy(es_storage *s) {
    bd_free(s->impl);
    s->impl = NULL;
}

/* Table and row of a value of field f. */
static inline void bd_find(const bd_impl *m, int f, uint64_t key, int *ti, uint64_t *row) {
    const uint64_t k0 = m->koff[(size_t)f * m->NB];
    const uint64_t p = m->icap[f] ? es__keyidx_find(m->keys + k0, m->index + m->ioff[f], (size_t)m->icap[f], key) : UINT64_MAX;
    if (p == UINT64_MAX) { /* the OOV row: after the tail block's kept values */
        *ti = f * m->NB + m->NB - 1;
        *row = m->koff[(size_t)(f + 1) * m->NB] - m->koff[(size_t)(f + 1) * m->NB - 1];
        return;
    }
    const uint64_t i = k0 + p;
    int b = 0;
    while (b + 1 < m->NB && i >= m->koff[(size_t)f * m->NB + b + 1]) b++;
    *ti = f * m->NB + b;
    *row = i - m->koff[(size_t)f * m->NB + b];
}

static void bd_lookup(es_storage *s, const es_batch *b, int r0, int r1, float *out) {
    const bd_impl *m = s->impl;
    const int F = m->F;
    const size_t dim = (size_t)m->dim;
    const size_t P0 = (size_t)r0 * (size_t)F, P1 = (size_t)r1 * (size_t)F;
    int f = 0;
    for (size_t P = P0; P < P1; P++) {
        float *o = out + (P - P0) * dim;
        memset(o, 0, dim * sizeof(float));
        for (size_t i = b->off[P]; i < b->off[P + 1]; i++) {
            int ti;
            uint64_t r;
            bd_find(m, f, b->val[i], &ti, &r);
            const es_rows *t = &m->t[ti];
            es__axpy(o, b->wt[i], t->w + r * (size_t)t->dim, (size_t)t->dim);
        }
        if (++f == F) f = 0;
    }
}

static int bd_backward(es_storage *s, const es_batch *b, const float *dout) {
    bd_impl *m = s->impl;
    const int F = m->F, T = m->F * m->NB;
    const size_t dim = (size_t)m->dim, PN = (size_t)b->n * (size_t)F;
    for (int i = 0; i < T; i++) es__gradacc_clear(&m->ga[i]);
    int f = 0;
    for (size_t P = 0; P < PN; P++) {
        const float *go = dout + P * dim;
        for (size_t i = b->off[P]; i < b->off[P + 1]; i++) {
            int ti;
            uint64_t r;
            bd_find(m, f, b->val[i], &ti, &r);
            float *g = es__gradacc_row(&m->ga[ti], r);
            if (!g) {
                for (int j = 0; j < T; j++) es__gradacc_clear(&m->ga[j]);
                return es__err(&s->err, ES_ENOMEM, "blockdim: out of memory growing the gradient scratch of field %d", f);
            }
            es__axpy(g, b->wt[i], go, (size_t)m->t[ti].dim);
        }
        if (++f == F) f = 0;
    }
    for (int i = 0; i < T; i++) es__gradacc_apply(&m->ga[i], &m->t[i]);
    return ES_OK;
}

/* Block tables "field<f>.b<b>" (those with rows; b = NB-1 ends with the
 * OOV row), their optimizer state "opt.<name>.<x>", then "map.keys". */
static int bd_tensors(es_storage *s, es_tensor_ref *refs, int max) {
    bd_impl *m = s->impl;
    const int T = m->F * m->NB;
    int n = m->N > 0;
    for (int i = 0; i < T; i++)
        if (m->t[i].n_rows) n += es__rows_tensors(&m->t[i], NULL, 0);
    if (!refs) return n;
    if (max < n) return ES_ERANGE;
    int at = 0;
    for (int i = 0; i < T; i++) {
        if (!m->t[i].n_rows) continue;
        char base[32];
        snprintf(base, sizeof base, "field%d.b%d", i / m->NB, i % m->NB);
        int k = es__rows_tensors(&m->t[i], refs + at, max - at);
        snprintf(refs[at].name, sizeof refs[at].name, "%s", base);
        for (int j = at + 1; j < at + k; j++) {
            char tmp[sizeof refs[j].name];
            snprintf(tmp, sizeof tmp, "%s", refs[j].name + 4);
            snprintf(refs[j].name, sizeof refs[j].name, "opt.%.24s.%.16s", base, tmp);
        }
        at += k;
    }
    if (m->N) es__tensor_ref_set(&refs[at++], "map.keys", ES_DT_U64, m->keys, 1, m->N);
    return at;
}

/* The per-field indexes from the keys; ES_EFORMAT on a repeated key. */
static int bd_index(bd_impl *m, es_err *err) {
    for (int f = 0; f < m->F; f++) {
        const uint64_t k0 = m->koff[(size_t)f * m->NB], n = m->koff[(size_t)(f + 1) * m->NB] - k0;
        uint32_t *ix = m->index + m->ioff[f];
        memset(ix, 0, (size_t)m->icap[f] * sizeof *ix);
        for (uint64_t i = 0; i < n; i++)
            if (es__keyidx_insert(m->keys + k0, ix, (size_t)m->icap[f], i))
                return es__err(err, ES_EFORMAT, "blockdim: field %d's key %llu is in the map twice", f, (unsigned long long)m->keys[k0 + i]);
    }
    return ES_OK;
}

static int bd_after_load(es_storage *s, es_err *err) { return bd_index(s->impl, err); }

static void bd_field_stats(es_storage *s, const es_vocab *vocab, int field, es_field_stats *out) {
    (void)vocab;
    bd_impl *m = s->impl;
    memset(out, 0, sizeof *out);
    if (field < 0 || field >= m->F) return;
    out->rows = m->koff[(size_t)(field + 1) * m->NB] - m->koff[(size_t)field * m->NB] + 1;
    out->rows_used = out->collisions = ES_STATS_UNKNOWN;
}

static const es__opt_spec bd_opts[] = {
    ES_OPT_SEED,
    ES_OPT_U("blocks", 1, BD_MAX_B, "4", 0, "frequency blocks per field (values ranked by count, equal occurrence mass)", "2", ""),
    ES_OPT_L("dims", 1, 1 << 16, NULL, 0, "dimension of each (field, block), F x blocks values field-major, or one for all (default dim)",
             "4:2", "blocks=1"),
    ES_OPT_L("keep", 0, BD_MAX_KEYS, NULL, ES_OPT_SIZES, "values with a row per (field, block) (the resolved shape of a saved model)",
             "10:20", "blocks=1"),
};

typedef struct {
    uint64_t count, key;
    int f, b;
} bd_entry;

typedef struct {
    bd_entry *e;
    size_t n;
    int f;
} bd_collect;

static void collect_one(uint64_t key, uint64_t count, void *ctx) {
    bd_collect *c = ctx;
    c->e[c->n].key = key;
    c->e[c->n].count = count;
    c->e[c->n].f = c->f;
    c->e[c->n].b = 0;
    c->n++;
}

static int rank_cmp(const void *a, const void *b) { /* count descending, then field, then key */
    const bd_entry *x = a, *y = b;
    if (x->count != y->count) return x->count > y->count ? -1 : 1;
    if (x->f != y->f) return x->f < y->f ? -1 : 1;
    return x->key < y->key ? -1 : x->key > y->key;
}

static int place_cmp(const void *a, const void *b) { /* field, block, then popularity */
    const bd_entry *x = a, *y = b;
    if (x->f != y->f) return x->f < y->f ? -1 : 1;
    if (x->b != y->b) return x->b < y->b ? -1 : 1;
    if (x->count != y->count) return x->count > y->count ? -1 : 1;
    return x->key < y->key ? -1 : x->key > y->key;
}

/* Dims from dims= (F * NB values, or one for all) or dim everywhere. */
static int parse_dims(es_storage *s, int F, int NB, uint64_t *dims, es_err *err) {
    const int dim = s->p.dim;
    size_t len = 0;
    const char *v = es__storage_opt_text(s, "dims", &len);
    const size_t FB = (size_t)F * NB;
    if (!v) {
        for (size_t i = 0; i < FB; i++) dims[i] = (uint64_t)dim;
        return ES_OK;
    }
    int groups = 1, found = 0, rc;
    for (size_t i = 0; i < len; i++) groups += v[i] == ':';
    if (groups != 1 && (size_t)groups != FB)
        return es__err(err, ES_EINVAL, "blockdim: option dims=%.*s: expected one dimension or %d fields x %d blocks = %zu", (int)len, v, F, NB,
                       FB);
    if ((rc = es__storage_opt_list(s, "dims", groups, 1, dims, &found, err)) != ES_OK) return rc;
    for (size_t i = 1; groups == 1 && i < FB; i++) dims[i] = dims[0];
    for (size_t i = 0; i < FB; i++)
        if (dims[i] > (uint64_t)dim)
            return es__err(err, ES_EINVAL, "blockdim: option dims=%.*s: dimension %llu is larger than the embedding dimension %d (--dim)",
                           (int)len, v, (unsigned long long)dims[i], dim);
    return ES_OK;
}

/* The kept values from the vocabulary: with want (keep= given with a
 * vocabulary) the want[f][b] most popular values of each block (fewer when
 * the block has fewer), else from the budget (below); keys in place order
 * into *keys_out (N of them), counts per (field, block) into keep. */
static int choose(es_storage *s, const es_vocab *vocab, int F, int NB, const uint64_t *dims, const uint64_t *want, uint64_t *keep,
                  uint64_t **keys_out, uint64_t *N_out, es_err *err) {
    size_t total = 0;
    for (int f = 0; f < F; f++) total += (size_t)es_vocab_distinct(vocab, f);
    bd_entry *e = es__malloc((total ? total : 1) * sizeof *e);
    if (!e) return es__err(err, ES_ENOMEM, "blockdim: out of memory ranking %zu values", total);
    size_t n = 0;
    for (int f = 0; f < F; f++) { /* blocks per field */
        bd_collect c = {e + n, 0, f};
        es__vocab_each(vocab, f, collect_one, &c);
        qsort(c.e, c.n, sizeof *c.e, rank_cmp);
        double tot = 0, run = 0;
        for (size_t i = 0; i < c.n; i++) tot += (double)c.e[i].count;
        for (size_t i = 0; i < c.n; i++) {
            int b = tot > 0 ? (int)floor(run / tot * NB) : 0;
            c.e[i].b = b >= NB ? NB - 1 : b;
            run += (double)c.e[i].count;
        }
        n += c.n;
    }
    if (want) {
        qsort(e, n, sizeof *e, place_cmp);
        uint64_t run = 0;
        for (size_t i = 0; i < n; i++) {
            if (i == 0 || e[i].f != e[i - 1].f || e[i].b != e[i - 1].b) run = 0;
            if (run++ >= want[(size_t)e[i].f * NB + e[i].b]) e[i].count = 0; /* not kept */
        }
        goto place;
    }
    qsort(e, n, sizeof *e, rank_cmp);
    double used = (double)bd_small_bytes(F, NB);
    for (int f = 0; f < F; f++) used += 4.0 * (double)dims[(size_t)f * NB + NB - 1] + 4.0; /* OOV row, an index slot */
    if (used > s->budget_bytes) {
        es__free(e);
        return es__err(err, ES_EBUDGET, "blockdim: unreachable budget: %.0f bytes cannot hold the %d out-of-vocabulary rows and maps (needs %.0f bytes)",
                       s->budget_bytes, F, used);
    }
    /* greedy in popularity order; a key costs 8 bytes, its index at most 6 */
    size_t kept = 0;
    for (size_t i = 0; i < n && kept < BD_MAX_KEYS; i++) {
        const double c = 4.0 * (double)dims[(size_t)e[i].f * NB + e[i].b] + 14.0;
        if (used + c > s->budget_bytes) {
            e[i].count = 0; /* not kept */
            continue;
        }
        used += c;
        kept++;
    }
place:; /* kept ones first, then in place order */
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (e[i].count) e[k++] = e[i];
    qsort(e, k, sizeof *e, place_cmp);
    uint64_t *keys = es__malloc((k ? k : 1) * sizeof *keys);
    if (!keys) {
        es__free(e);
        return es__err(err, ES_ENOMEM, "blockdim: out of memory for %zu keys", k);
    }
    memset(keep, 0, (size_t)F * NB * sizeof *keep);
    for (size_t i = 0; i < k; i++) {
        keys[i] = e[i].key;
        keep[(size_t)e[i].f * NB + e[i].b]++;
    }
    es__free(e);
    *keys_out = keys;
    *N_out = k;
    return ES_OK;
}

static int bd_create(es_storage *s, const es_vocab *vocab, es_err *err) {
    const int F = s->p.n_fields, NB = es__storage_opt_int(s, "blocks");
    const size_t FB = (size_t)F * NB;
    int rc;
    if (es__storage_opt_given(s, "seed")) s->p.seed = es__storage_opt_u64(s, "seed");
    if (FB > BD_MAX_FB) return es__err(err, ES_EINVAL, "blockdim: %d fields x %d blocks is more than %d", F, NB, BD_MAX_FB);
    if (s->p.opt.kind != ES_OPT_SGD && s->p.opt.kind != ES_OPT_ADAGRAD && s->p.opt.kind != ES_OPT_ROWWISE_ADAGRAD)
        return es__err(err, ES_EINVAL, "blockdim: the tables train with SGD, Adagrad or row-wise Adagrad");
    bd_impl *m = es__calloc(1, sizeof *m);
    if (!m) return es__err(err, ES_ENOMEM, "blockdim: out of memory");
    m->F = F;
    m->NB = NB;
    m->dim = s->p.dim;
    m->koff = es__calloc(FB + 1 + (size_t)F + 1 + (size_t)F + FB, sizeof(uint64_t));
    m->t = es__calloc(FB, sizeof *m->t);
    m->ga = es__calloc(FB, sizeof *m->ga);
    uint64_t *keep = es__malloc((FB ? FB : 1) * sizeof *keep);
    if (!m->koff || !m->t || !m->ga || !keep) {
        es__free(keep);
        bd_free(m);
        return es__err(err, ES_ENOMEM, "blockdim: out of memory");
    }
    m->ioff = m->koff + FB + 1;
    m->icap = m->ioff + F + 1;
    m->dims = m->icap + F;
    if ((rc = parse_dims(s, F, NB, m->dims, err)) != ES_OK) goto fail;
    int found = 0;
    if ((rc = es__storage_opt_list(s, "keep", (int)FB, 1, keep, &found, err)) != ES_OK) goto fail;
    if (found && vocab) { /* keep= with a vocabulary: the most popular values of each block */
        uint64_t *want = es__malloc(FB * sizeof *want);
        if (!want) {
            rc = es__err(err, ES_ENOMEM, "blockdim: out of memory");
            goto fail;
        }
        memcpy(want, keep, FB * sizeof *want);
        rc = choose(s, vocab, F, NB, m->dims, want, keep, &m->keys, &m->N, err);
        es__free(want);
        if (rc != ES_OK) goto fail;
        found = 0; /* the keys are known: index them below */
    } else if (found) { /* a saved shape: the keys come with the tensors */
        for (size_t i = 0; i < FB; i++) m->N += keep[i];
        if (m->N > BD_MAX_KEYS) {
            rc = es__err(err, ES_EINVAL, "blockdim: keep= sums to %llu keys, more than %llu", (unsigned long long)m->N,
                         (unsigned long long)BD_MAX_KEYS);
            goto fail;
        }
        if (!(m->keys = es__calloc(m->N ? m->N : 1, sizeof *m->keys))) {
            rc = es__err(err, ES_ENOMEM, "blockdim: out of memory for %llu keys", (unsigned long long)m->N);
            goto fail;
        }
    } else if (!vocab) {
        rc = es__err(err, ES_EINVAL, "blockdim: needs a vocabulary (count the training data first) or keep= of a saved model");
        goto fail;
    } else if (!(s->budget_bytes > 0)) {
        rc = es__err(err, ES_EINVAL, "blockdim: needs a budget: bytes (> 1), or a fraction (0, 1] of the full table");
        goto fail;
    } else if ((rc = choose(s, vocab, F, NB, m->dims, NULL, keep, &m->keys, &m->N, err)) != ES_OK) {
        goto fail;
    }
    for (size_t i = 0; i < FB; i++) m->koff[i + 1] = m->koff[i] + keep[i];
    for (int f = 0; f < F; f++) {
        const uint64_t n = m->koff[(size_t)(f + 1) * NB] - m->koff[(size_t)f * NB];
        m->icap[f] = n ? es__keyidx_cap(n) : 0;
        m->ioff[f + 1] = m->ioff[f] + m->icap[f];
    }
    if (!(m->index = es__calloc(m->ioff[F] ? m->ioff[F] : 1, sizeof *m->index))) {
        rc = es__err(err, ES_ENOMEM, "blockdim: out of memory for the key index");
        goto fail;
    }
    es_rng rng;
    es__rng_seed(&rng, s->p.seed);
    size_t pbytes = 0, sbytes = 0;
    for (size_t i = 0; i < FB; i++) {
        const uint64_t rows = keep[i] + (i % (size_t)NB == (size_t)NB - 1); /* the tail block's table ends with the OOV row */
        const int d = (int)m->dims[i];
        if (!rows) continue;
        if (es__rows_init(&m->t[i], rows, d, &s->p.opt, &rng, s->p.init_scale) != ES_OK ||
            es__gradacc_init(&m->ga[i], ES_MIN((size_t)s->p.max_batch, (size_t)rows), d) != ES_OK) {
            rc = es__err(err, ES_ENOMEM, "blockdim: out of memory for %llu rows of %d floats", (unsigned long long)rows, d);
            goto fail;
        }
        pbytes += es__rows_param_bytes(&m->t[i]);
        sbytes += es__rows_state_bytes(&m->t[i]);
    }
    if (!found && (rc = bd_index(m, err)) != ES_OK) goto fail;
    s->impl = m;
    s->param_bytes = pbytes;
    s->aux_bytes = 8 * (size_t)m->N + 4 * (size_t)m->ioff[F] + bd_small_bytes(F, NB);
    s->state_bytes = sbytes;
    if ((rc = es__storage_opt_set_u64(s, "seed", s->p.seed, err)) != 0 || (rc = es__storage_opt_set_u64(s, "blocks", (uint64_t)NB, err)) != 0 ||
        (rc = es__storage_opt_set_list(s, "dims", m->dims, (int)FB, 1, err)) != 0 ||
        (rc = es__storage_opt_set_list(s, "keep", keep, (int)FB, 1, err)) != 0)
        bd_destroy(s);
    es__free(keep);
    return rc;
fail:
    es__free(keep);
    bd_free(m);
    return rc;
}

const es_storage_ops es__storage_blockdim = {
    .name = "blockdim",
    .summary = "a dimension per (field, frequency block): popular values' rows through a key map, the rest one OOV row per "
               "field (what autosrh retrains)",
    .create = bd_create,
    .lookup = bd_lookup,
    .backward = bd_backward,
    .tensors = bd_tensors,
    .after_load = bd_after_load,
    .field_stats = bd_field_stats,
    .destroy = bd_destroy,
    ES_STORAGE_OPTS(bd_opts),
    .default_budget = ES_DEFAULT_BUDGET,
    .needs_vocab = 1,
};
