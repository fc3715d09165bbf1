/*
 * fielddim.c — the `fielddim` storage method: hashed tables with a
 * dimension per field (what dimension-search methods such as AutoDim
 * derive, and what `embstore advise` proposes from a diagnosis).
 *
 * Stored: field f owns one row table of rows_f rows of d_f <= dim floats
 *   (its own es_rows, so each table has its width; F tables in all), and
 *   the small per-field salt / rows / dims arrays (3 F uint64, aux bytes,
 *   as `hash`).
 * Lookup: value key of field f reads row  es__range(es__hash_u64(key,
 *   salt_f), rows_f)  of table f, salt_f = es__storage_salt(seed, f, 0)
 *   (the salts of `hash`); the field's output slot of dim floats is the
 *   pooled row in its first d_f coordinates and 0 after.  The model layers
 *   see dim for every field; coordinates past d_f are constant 0 and
 *   receive no update (their gradient is dropped).
 * Training: one optimizer update per distinct row with the summed gradient
 *   of its first d_f coordinates (SGD, Adagrad, row-wise Adagrad, FTRL,
 *   lazy L2: every parameter is a plain row read as it is, so plain_rows).
 * Initial values: one stream from the seed, drawn row-major table after
 *   table in field order, so with d_f = dim for every field the tables are
 *   exactly `hash` share=0's stacked table; lookups and training then match
 *   `hash` share=0 bit for bit (same rows from the same budget, below).
 *
 * Options: dims=d0:d1:... one per field, or one value for every field,
 *   each in [1, dim] (default dim for every field); rows=r0:r1:... (the
 *   resolved rows; sizes the tables without a budget); split= as hash;
 *   seed.  The resolved seed, dims and rows are recorded in meta (dims as
 *   one value when one was given, else one per field).
 *
 * Sizing from the budget B (bytes): U = floor((B - aux) / 4) floats,
 * rounded down to a multiple of g = gcd(d_f) (at most one row of the
 * widest field lost), with a row of field f costing d_f floats.  The rows
 * split as `hash` share=0 splits its rows, by the same per-field weights
 * w_f (split=equal: 1; prop: distinct; sqrt), but in floats:
 *   - without a vocabulary: every field the same r = floor(U / sum d_f)
 *     rows, then one more row to each field in field order while its d_f
 *     floats fit in what is left;
 *   - with one: every field 1 row, then water-filling: each uncapped field
 *     gets floor(rem w_f / S) more rows, S = sum over uncapped fields of
 *     w_f d_f (so rows_f is proportional to w_f and the bytes add up to
 *     rem), capped at distinct_f + 1 rows; what capped fields cannot take
 *     goes round again; when rounding leaves too little for that, one row
 *     each to uncapped fields in field order while it fits.  When every
 *     field has its distinct + 1 rows and budget is left, the rest goes
 *     out by the same weights without caps, then round-robin one row at a
 *     time while some field's row fits.
 * With every d_f = dim this is exactly hash's split (same rows per field).
 */
#include "core/simd.h"
#include "storage/storage.h"

#include <math.h>

#define FD_MAX_ROWS (UINT64_C(1) << 48)

typedef struct {
    int F, dim;
    es_rows *t;        /* [F], table f is [rows_f, d_f] */
    es_gradacc *ga;    /* [F] */
    uint64_t *salt;    /* [F]; nrows and dims follow in the same allocation */
    uint64_t *nrows;   /* [F] */
    uint64_t *dims;    /* [F] */
} fd_impl;

static size_t fd_aux_bytes(int F) { return 3 * (size_t)F * sizeof(uint64_t); }

static void fd_free(fd_impl *m) {
    if (!m) return;
    for (int f = 0; m->t && f < m->F; f++) es__rows_free(&m->t[f]);
    for (int f = 0; m->ga && f < m->F; f++) es__gradacc_free(&m->ga[f]);
    es__free(m->t);
    es__free(m->ga);
    es__free(m->salt);
    es__free(m);
}

static void fd_destroy(es_storage *s) {
    fd_free(s->impl);
    s->impl = NULL;
}

static inline uint64_t fd_row(const fd_impl *m, int f, uint64_t key) {
    return es__range(es__hash_u64(key, m->salt[f]), m->nrows[f]);
}

static void fd_resolve(const void *ctx, int f, const uint64_t *keys, size_t n, uint64_t *ids) {
    const fd_impl *m = ctx;
    for (size_t i = 0; i < n; i++) ids[i] = fd_row(m, f, keys[i]);
}

static void fd_lookup(es_storage *s, const es_batch *b, int r0, int r1, float *out) {
    const fd_impl *m = s->impl;
    const int F = m->F;
    const size_t dim = (size_t)m->dim;
    const size_t P0 = (size_t)r0 * (size_t)F, P1 = (size_t)r1 * (size_t)F;
    int f = 0;
    for (size_t P = P0; P < P1; P++) {
        float *o = out + (P - P0) * dim;
        const es_rows *t = &m->t[f];
        const size_t d = (size_t)t->dim;
        const size_t a = b->off[P], e = b->off[P + 1];
        if (a == e) {
            memset(o, 0, d * sizeof(float));
        } else if (t->prec != ES_PREC_FP32) {
            const size_t rb = es__prec_row_bytes(t->prec, t->dim);
            memset(o, 0, d * sizeof(float));
            for (size_t i = a; i < e; i++) es__dequant_axpy(t->prec, t->q + fd_row(m, f, b->val[i]) * rb, t->dim, b->wt[i], o);
        } else {
            /* as es__rows_lookup pools: copy (or scale) the first, axpy the rest */
            const float *row = t->w + fd_row(m, f, b->val[a]) * d;
            const float w0 = b->wt[a];
            if (w0 == 1.0f) memcpy(o, row, d * sizeof(float));
            else
                for (size_t j = 0; j < d; j++) o[j] = w0 * row[j];
            for (size_t i = a + 1; i < e; i++) es__axpy(o, b->wt[i], t->w + fd_row(m, f, b->val[i]) * d, d);
        }
        if (d < dim) memset(o + d, 0, (dim - d) * sizeof(float));
        if (++f == F) f = 0;
    }
}

static int fd_backward(es_storage *s, const es_batch *b, const float *dout) {
    fd_impl *m = s->impl;
    const int F = m->F;
    const size_t dim = (size_t)m->dim;
    const size_t PN = (size_t)b->n * (size_t)F;
    for (int f = 0; f < F; f++)
        if (m->t[f].prec != ES_PREC_FP32 && m->t[f].qtrain == ES_QTRAIN_NONE)
            return es__err(&s->err, ES_EINVAL, "fielddim: table %d holds codes only and cannot train", f);
    for (int f = 0; f < F; f++) es__gradacc_clear(&m->ga[f]);
    int f = 0;
    for (size_t P = 0; P < PN; P++) {
        const float *go = dout + P * dim;
        const size_t d = (size_t)m->t[f].dim;
        for (size_t i = b->off[P]; i < b->off[P + 1]; i++) {
            float *g = es__gradacc_row(&m->ga[f], fd_row(m, f, b->val[i]));
            if (!g) {
                for (int j = 0; j < F; j++) es__gradacc_clear(&m->ga[j]);
                return es__err(&s->err, ES_ENOMEM, "fielddim: out of memory growing the gradient scratch of field %d", f);
            }
            es__axpy(g, b->wt[i], go, d); /* coordinates past d_f: no parameter, gradient dropped */
        }
        if (++f == F) f = 0;
    }
    for (int j = 0; j < F; j++) es__gradacc_apply(&m->ga[j], &m->t[j]);
    return ES_OK;
}

/* Tensors of table f as "field<f>" (f32 [rows_f, d_f]) or "field<f>.q"
 * (codes), its state "opt.<x>" as "opt.field<f>.<x>". */
static int fd_tensors(es_storage *s, es_tensor_ref *refs, int max) {
    fd_impl *m = s->impl;
    int n = 0;
    for (int f = 0; f < m->F; f++) n += es__rows_tensors(&m->t[f], NULL, 0);
    if (!refs) return n;
    if (max < n) return ES_ERANGE;
    int at = 0;
    for (int f = 0; f < m->F; f++) {
        int k = es__rows_tensors(&m->t[f], refs + at, max - at);
        snprintf(refs[at].name, sizeof refs[at].name, m->t[f].prec == ES_PREC_FP32 ? "field%d" : "field%d.q", f);
        for (int i = at + 1; i < at + k; i++) {
            char tmp[sizeof refs[i].name];
            snprintf(tmp, sizeof tmp, "%s", refs[i].name + 4);
            snprintf(refs[i].name, sizeof refs[i].name, "opt.field%d.%.40s", f, tmp);
        }
        at += k;
    }
    return at;
}

static void fd_field_stats(es_storage *s, const es_vocab *vocab, int field, es_field_stats *out) {
    fd_impl *m = s->impl;
    if (field < 0 || field >= m->F) {
        memset(out, 0, sizeof *out);
        return;
    }
    es__rows_field_stats(1, fd_resolve, m, vocab, field, m->nrows[field], out);
}

static es_rows *fd_rows(es_storage *s, int i) {
    fd_impl *m = s->impl;
    return i >= 0 && i < m->F ? &m->t[i] : NULL;
}

/* ---- sizing ----------------------------------------------------------------------- */

typedef enum { SPLIT_PROP = 0, SPLIT_SQRT = 1, SPLIT_EQUAL = 2 } split_rule;

/* hash.c's weights (integers: the split is exact on every platform). */
static uint64_t split_weight(split_rule rule, uint64_t d) {
    if (d == 0) return 0;
    switch (rule) {
    case SPLIT_SQRT: return (uint64_t)floor(sqrt((double)d) * 1024.0) + 1;
    case SPLIT_EQUAL: return 1;
    default: return d;
    }
}

/* Split U >= sum d floats into rows of d[f] floats per field (file comment). */
static void split_rows(uint64_t U, int F, const uint64_t *d, const es_vocab *vocab, split_rule rule, uint64_t *rows) {
    uint64_t D = 0;
    for (int f = 0; f < F; f++) D += d[f];
    if (!vocab) {
        uint64_t r = U / D, rem = U - r * D;
        for (int f = 0; f < F; f++) {
            rows[f] = r;
            if (d[f] <= rem) {
                rows[f]++;
                rem -= d[f];
            }
        }
        return;
    }
    uint64_t rem = U - D;
    for (int f = 0; f < F; f++) rows[f] = 1;
    int all_capped = 0;
    while (rem > 0) {
        unsigned __int128 S = 0;
        for (int f = 0; f < F; f++)
            if (rows[f] < es_vocab_distinct(vocab, f) + 1)
                S += (unsigned __int128)split_weight(rule, es_vocab_distinct(vocab, f)) * d[f];
        if (S == 0) {
            all_capped = 1;
            break;
        }
        uint64_t given = 0;
        for (int f = 0; f < F; f++) {
            uint64_t dist = es_vocab_distinct(vocab, f), cap = dist + 1;
            if (rows[f] >= cap) continue;
            uint64_t add = (uint64_t)((unsigned __int128)rem * split_weight(rule, dist) / S);
            if (add > cap - rows[f]) add = cap - rows[f];
            rows[f] += add;
            given += add * d[f];
        }
        if (given == 0) {
            uint64_t before = rem;
            for (int f = 0; f < F && rem > 0; f++)
                if (rows[f] < es_vocab_distinct(vocab, f) + 1 && d[f] <= rem) {
                    rows[f]++;
                    rem -= d[f];
                }
            if (rem == before) break; /* no uncapped field's row fits in what is left */
        } else {
            rem -= given;
        }
    }
    if (rem > 0 && all_capped) {
        /* every field has distinct + 1 rows: the rest by the same weights, no caps */
        unsigned __int128 S = 0;
        for (int f = 0; f < F; f++) S += (unsigned __int128)split_weight(rule, es_vocab_distinct(vocab, f)) * d[f];
        uint64_t given = 0;
        for (int f = 0; f < F && S > 0; f++) {
            uint64_t add = (uint64_t)((unsigned __int128)rem * split_weight(rule, es_vocab_distinct(vocab, f)) / S);
            rows[f] += add;
            given += add * d[f];
        }
        rem -= given;
        for (int any = 1; any && rem > 0;) {
            any = 0;
            for (int f = 0; f < F && rem > 0; f++)
                if (d[f] <= rem) {
                    rows[f]++;
                    rem -= d[f];
                    any = 1;
                }
        }
    }
}

static uint64_t gcd_u64(uint64_t a, uint64_t b) {
    while (b) {
        uint64_t t = a % b;
        a = b;
        b = t;
    }
    return a;
}

static const es__opt_spec fd_opts[] = {
    ES_OPT_SEED,
    ES_OPT_L("dims", 0, 1 << 16, NULL, 0,
             "dimension per field d0:d1:... each in [1, dim], or one value for all (default: dim for every field)", "3:8",
             ""),
    ES_OPT_L("rows", 1, FD_MAX_ROWS, NULL, ES_OPT_SIZES, "rows per field r0:r1:... (default: from the budget)", "50:70", ""),
    ES_OPT_E("split", "prop|sqrt|equal", "equal", 0, "rule splitting the budget over fields (with a vocabulary), as hash",
             "prop", ""),
};

/* dims from the option: F values, or one for every field (*one = 1); each
 * in [1, dim] (the table's range starts at 0 so that this check, naming
 * dim, reports a 0). */
static int parse_dims(es_storage *s, uint64_t *dims, int *one, es_err *err) {
    const int F = s->p.n_fields, dim = s->p.dim;
    size_t len = 0;
    const char *v = es__storage_opt_text(s, "dims", &len);
    if (!v) {
        for (int f = 0; f < F; f++) dims[f] = (uint64_t)dim;
        return ES_OK;
    }
    int groups = 1;
    for (size_t i = 0; i < len; i++) {
        if (v[i] == '/')
            return es__err(err, ES_EINVAL,
                           "fielddim: option dims=%.*s: one value per field, no '/' (expected d0:d1:... with %d values, or "
                           "one value for all fields, each in [1, %d])",
                           (int)len, v, F, dim);
        groups += v[i] == ':';
    }
    if (groups != F && groups != 1)
        return es__err(err, ES_EINVAL,
                       "fielddim: option dims=%.*s: %d values for %d fields (expected d0:d1:... with one value per field, "
                       "or one value for all fields, each in [1, %d])",
                       (int)len, v, groups, F, dim);
    int found = 0;
    *one = groups == 1;
    int rc = es__storage_opt_list(s, "dims", groups, 1, dims, &found, err);
    if (rc != ES_OK) return rc;
    for (int f = 1; groups == 1 && f < F; f++) dims[f] = dims[0];
    for (int f = 0; f < F; f++)
        if (dims[f] < 1 || dims[f] > (uint64_t)dim)
            return es__err(err, ES_EINVAL,
                           "fielddim: option dims=%.*s: field %d's dimension %llu is outside [1, %d] (the storage's dim)",
                           (int)len, v, f, (unsigned long long)dims[f], dim);
    return ES_OK;
}

static int fd_create(es_storage *s, const es_vocab *vocab, es_err *err) {
    const int F = s->p.n_fields;
    int found = 0, rc;
    if (es__storage_opt_given(s, "seed")) s->p.seed = es__storage_opt_u64(s, "seed");
    const size_t aux = fd_aux_bytes(F);
    uint64_t *tmp = es__malloc(2 * (size_t)F * sizeof *tmp);
    if (!tmp) return es__err(err, ES_ENOMEM, "fielddim: out of memory");
    uint64_t *dims = tmp, *rows = tmp + F;
    int one = 0;
    rc = parse_dims(s, dims, &one, err);
    if (rc == ES_OK) rc = es__storage_opt_list(s, "rows", F, 1, rows, &found, err);
    if (rc == ES_OK && !found) {
        uint64_t D = 0, g = 0;
        for (int f = 0; f < F; f++) {
            D += dims[f];
            g = gcd_u64(g, dims[f]);
        }
        if (!(s->budget_bytes > 0)) {
            rc = es__err(err, ES_EINVAL,
                         "fielddim: needs a budget: bytes (> 1), or a fraction (0, 1] of the full table with a vocabulary "
                         "(or rows=r0:r1:...)");
        } else {
            const double avail = s->budget_bytes - (double)aux;
            const double u = avail > 0 ? floor(avail / sizeof(float)) : 0;
            if (u < (double)D) {
                rc = es__err(err, ES_EBUDGET,
                             "fielddim: a budget of %.0f bytes holds %.0f floats after %zu bytes of lookup arrays; one row "
                             "per field (dims sum %llu) needs %.0f bytes",
                             s->budget_bytes, u, aux, (unsigned long long)D, (double)aux + (double)D * sizeof(float));
            } else if (u > (double)FD_MAX_ROWS) {
                rc = es__err(err, ES_ERANGE, "fielddim: a budget of %.0f bytes is larger than any table this build can allocate",
                             s->budget_bytes);
            } else {
                uint64_t U = (uint64_t)u / g * g;
                split_rows(U, F, dims, vocab, (split_rule)es__storage_opt_enum(s, "split"), rows);
            }
        }
    }
    if (rc != ES_OK) {
        es__free(tmp);
        return rc;
    }

    fd_impl *m = es__calloc(1, sizeof *m);
    if (!m) {
        es__free(tmp);
        return es__err(err, ES_ENOMEM, "fielddim: out of memory");
    }
    m->F = F;
    m->dim = s->p.dim;
    m->t = es__calloc((size_t)F, sizeof *m->t);
    m->ga = es__calloc((size_t)F, sizeof *m->ga);
    m->salt = es__malloc(aux);
    if (!m->t || !m->ga || !m->salt) {
        fd_free(m);
        es__free(tmp);
        return es__err(err, ES_ENOMEM, "fielddim: out of memory");
    }
    m->nrows = m->salt + F;
    m->dims = m->nrows + F;
    es_rng rng;
    es__rng_seed(&rng, s->p.seed);
    size_t pbytes = 0, sbytes = 0;
    for (int f = 0; f < F; f++) {
        m->salt[f] = es__storage_salt(s->p.seed, f, 0);
        m->nrows[f] = rows[f];
        m->dims[f] = dims[f];
        if (es__rows_init(&m->t[f], rows[f], (int)dims[f], &s->p.opt, &rng, s->p.init_scale) != ES_OK) {
            rc = es__err(err, ES_ENOMEM, "fielddim: out of memory for field %d's %llu rows of %llu floats", f,
                         (unsigned long long)rows[f], (unsigned long long)dims[f]);
            break;
        }
        es__rows_shift(&m->t[f], s->p.init_shift);
        size_t cap = (size_t)s->p.max_batch;
        if (cap > rows[f]) cap = (size_t)rows[f];
        if (es__gradacc_init(&m->ga[f], cap, (int)dims[f]) != ES_OK) {
            rc = es__err(err, ES_ENOMEM, "fielddim: out of memory for gradient scratch");
            break;
        }
        pbytes += es__rows_param_bytes(&m->t[f]);
        sbytes += es__rows_state_bytes(&m->t[f]);
    }
    if (rc != ES_OK) {
        fd_free(m);
        es__free(tmp);
        return rc;
    }
    s->impl = m;
    s->param_bytes = pbytes;
    s->state_bytes = sbytes;
    s->aux_bytes = aux;
    if ((rc = es__storage_opt_set_u64(s, "seed", s->p.seed, err)) != 0 ||
        /* one value when one was given (the meta then matches the user's opts) */
        (rc = es__storage_opt_set_list(s, "dims", dims, one ? 1 : F, 1, err)) != 0 ||
        (rc = es__storage_opt_set_list(s, "rows", rows, F, 1, err)) != 0)
        fd_destroy(s);
    es__free(tmp);
    return rc;
}

const es_storage_ops es__storage_fielddim = {
    .name = "fielddim",
    .summary = "hashed table per field with its own dimension d_f <= dim (dims=d0:d1:...), zeros past d_f",
    .create = fd_create,
    .lookup = fd_lookup,
    .backward = fd_backward,
    .tensors = fd_tensors,
    .after_load = NULL,
    .field_stats = fd_field_stats,
    .destroy = fd_destroy,
    ES_STORAGE_OPTS(fd_opts),
    .default_budget = ES_DEFAULT_BUDGET,
    .plain_rows = 1,
    .rows = fd_rows,
};
