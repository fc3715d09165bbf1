/*
 * hash.c — the `hash` storage method (the hashing trick, one table per
 * field) and the hashed-row engine it shares with `unified`.
 *
 * hash, share=0: field f owns rows_f rows of dim floats; value key of field
 *   f reads row  es__range(es__hash_u64(key, salt_f), rows_f)  of its table.
 *   The tables are stacked in one allocation in field order.
 * hash, share=1: one table of R rows for all fields, each field hashing
 *   with its own salt.  That is exactly `unified` with chunks=1 and
 *   subtables=1 (same salts, same rows, same initial values).
 *
 * Sizing from the budget B (bytes): R = floor((B - aux) / (dim * 4)) rows,
 * aux being the small per-field base/rows/salt arrays.  With share=0 the
 * rows are split over the fields:
 *   - without a vocabulary: equally (the first R mod F fields get one more);
 *   - with one: every field gets 1 row, then the rest in proportion to a
 *     per-field weight, never giving a field more than d_f + 1 rows (d_f =
 *     its distinct-value count; more rows could not separate its values
 *     further than a private table would); what a capped field cannot take
 *     is redistributed the same way over the others (water-filling), and
 *     the last few rows that rounding leaves go one each to uncapped fields
 *     in field order.  Only when every field has its d_f + 1 rows and
 *     budget is left do the caps lift: the rest goes out by the same
 *     weights (hashed values still collide in a table of d + 1 rows), so
 *     the table is always within dim * 4 bytes of the budget.
 *     The weight is option "split=": equal (default: weight 1, so small
 *     fields get collision-free tables and the large fields share the rest
 *     equally), prop (d_f: the same load factor in every field) or sqrt
 *     (sqrt d_f).  On the Criteo sample (LR and DCN-v2, budgets 0.1 and
 *     0.5 of full) equal gave the best validation AUC of the three: with
 *     prop, the few frequent values of a small field collide with each
 *     other at the same rate as the rare values of a large one.
 * The options are in hash_opts; the resolved share, seed and rows
 * ("r0:r1:..."; share=1: "R") are recorded into s->meta and read back from
 * opts on load.
 */
#include "storage/storage.h"

#include <math.h>

/* ---- the engine ------------------------------------------------------------ */

size_t es__hashed_aux_bytes(int F, int k) { return 3 * (size_t)F * (size_t)k * sizeof(uint64_t); }

static void hashed_free(es__hashed *h) {
    if (!h) return;
    es__rows_free(&h->t);
    es__free(h->base); /* nrows and salt live in the same allocation */
    es__gradacc_free(&h->ga);
    es__free(h);
}

void es__hashed_destroy(es_storage *s) {
    hashed_free(s->impl);
    s->impl = NULL;
}

int es__hashed_alloc(es_storage *s, uint64_t n_rows, int k, int cd, es_err *err) {
    const int F = s->p.n_fields;
    const size_t fk = (size_t)F * (size_t)k;
    size_t pbytes;
    if (n_rows == 0 || !es__mul_size((size_t)n_rows, (size_t)cd * sizeof(float), &pbytes))
        return es__err(err, ES_ERANGE, "%s: %llu rows of %d floats is not a valid table size", s->p.method,
                       (unsigned long long)n_rows, cd);
    es__hashed *h = es__calloc(1, sizeof *h);
    if (!h) return es__err(err, ES_ENOMEM, "%s: out of memory", s->p.method);
    h->F = F;
    h->k = k;
    h->cd = cd;
    h->base = es__malloc(es__hashed_aux_bytes(F, k));
    if (!h->base) {
        hashed_free(h);
        return es__err(err, ES_ENOMEM, "%s: out of memory", s->p.method);
    }
    h->nrows = h->base + fk;
    h->salt = h->nrows + fk;
    es_rng rng;
    es__rng_seed(&rng, s->p.seed);
    if (es__rows_init_shard(&h->t, n_rows, cd, &s->p.opt, &rng, s->p.init_scale, s->p.shard_rank, s->p.shard_n) != ES_OK) {
        hashed_free(h);
        return es__err(err, ES_ENOMEM, "%s: out of memory for %llu rows of %d floats (%zu bytes)", s->p.method,
                       (unsigned long long)n_rows, cd, pbytes);
    }
    es__rows_shift(&h->t, s->p.init_shift);
    size_t ga_cap = (size_t)s->p.max_batch * fk;
    if (ga_cap > n_rows) ga_cap = (size_t)n_rows;
    if (es__gradacc_init(&h->ga, ga_cap, cd) != ES_OK) {
        hashed_free(h);
        return es__err(err, ES_ENOMEM, "%s: out of memory for gradient scratch", s->p.method);
    }
    s->impl = h;
    s->param_bytes = es__rows_param_bytes(&h->t);
    s->state_bytes = es__rows_state_bytes(&h->t);
    s->aux_bytes = es__hashed_aux_bytes(F, k);
    return ES_OK;
}

static void hashed_resolve(const void *ctx, int f, const uint64_t *keys, size_t n, uint64_t *ids) {
    const es__hashed *h = ctx;
    const int k = h->k;
    const uint64_t *base = h->base + (size_t)f * k, *nrows = h->nrows + (size_t)f * k, *salt = h->salt + (size_t)f * k;
    if (k == 1) {
        const uint64_t b = base[0], r = nrows[0], sl = salt[0];
        for (size_t i = 0; i < n; i++) ids[i] = b + es__range(es__hash_u64(keys[i], sl), r);
        return;
    }
    for (size_t i = 0; i < n; i++)
        for (int j = 0; j < k; j++) ids[i * (size_t)k + j] = base[j] + es__range(es__hash_u64(keys[i], salt[j]), nrows[j]);
}

void es__hashed_lookup(es_storage *s, const es_batch *b, int r0, int r1, float *out) {
    es__hashed *h = s->impl;
    es__rows_lookup(&h->t, h->k, hashed_resolve, h, b, r0, r1, out);
}

int es__hashed_backward(es_storage *s, const es_batch *b, const float *dout) {
    es__hashed *h = s->impl;
    int rc = es__rows_backward(&h->t, &h->ga, h->k, hashed_resolve, h, b, dout);
    if (rc) es__err(&s->err, rc, "%s: out of memory growing the gradient scratch past %zu rows", s->p.method, h->ga.cap);
    return rc;
}

int es__hashed_tensors(es_storage *s, es_tensor_ref *refs, int max) {
    es__hashed *h = s->impl;
    return es__rows_tensors(&h->t, refs, max);
}

void es__hashed_field_stats(es_storage *s, const es_vocab *vocab, int field, es_field_stats *out) {
    es__hashed *h = s->impl;
    if (field < 0 || field >= h->F) {
        memset(out, 0, sizeof *out);
        return;
    }
    uint64_t rows = 0;
    for (int j = 0; j < h->k; j++) rows += h->nrows[(size_t)field * h->k + j];
    es__rows_field_stats(h->k, hashed_resolve, h, vocab, field, rows, out);
}

/* Largest table a budget may ask for: 2^48 rows is far beyond any memory,
 * and keeps every product below in range. */
#define HASHED_MAX_ROWS (UINT64_C(1) << 48)

int es__hashed_rows_from_budget(const es_storage *s, size_t aux, int row_floats, uint64_t min_rows, uint64_t *rows,
                                es_err *err) {
    if (!(s->budget_bytes > 0))
        return es__err(err, ES_EINVAL,
                       "%s: needs a budget: bytes (> 1), or a fraction (0, 1] of the full table with a vocabulary",
                       s->p.method);
    double row_bytes = (double)row_floats * sizeof(float);
    double avail = s->budget_bytes - (double)aux;
    double r = avail > 0 ? floor(avail / row_bytes) : 0;
    if (r < (double)min_rows)
        return es__err(err, ES_EBUDGET,
                       "%s: a budget of %.0f bytes holds %.0f rows of %d floats after %zu bytes of lookup arrays; "
                       "at least %llu rows (%.0f bytes) are needed",
                       s->p.method, s->budget_bytes, r, row_floats, aux, (unsigned long long)min_rows,
                       (double)aux + (double)min_rows * row_bytes);
    if (r > (double)HASHED_MAX_ROWS)
        return es__err(err, ES_ERANGE, "%s: a budget of %.0f bytes is larger than any table this build can allocate",
                       s->p.method, s->budget_bytes);
    *rows = (uint64_t)r;
    return ES_OK;
}

/* ---- the hash method ---------------------------------------------------------- */

typedef enum { SPLIT_PROP = 0, SPLIT_SQRT = 1, SPLIT_EQUAL = 2 } split_rule;

/* Weight of field f under a split rule: an integer, so the split is exact
 * and the same on every platform (sqrt is correctly rounded in IEEE). */
static uint64_t split_weight(split_rule rule, uint64_t d) {
    if (d == 0) return 0;
    switch (rule) {
    case SPLIT_SQRT: return (uint64_t)floor(sqrt((double)d) * 1024.0) + 1;
    case SPLIT_EQUAL: return 1;
    default: return d;
    }
}

/* Split R >= F rows over F fields (rule in the file comment): water-filling
 * by weight, each field capped at d_f + 1 rows. */
static void split_rows(uint64_t R, int F, const es_vocab *vocab, split_rule rule, uint64_t *rows) {
    if (!vocab) {
        for (int f = 0; f < F; f++) rows[f] = R / (uint64_t)F + ((uint64_t)f < R % (uint64_t)F);
        return;
    }
    uint64_t rem = R - (uint64_t)F;
    for (int f = 0; f < F; f++) rows[f] = 1;
    while (rem > 0) {
        unsigned __int128 S = 0;
        for (int f = 0; f < F; f++)
            if (rows[f] < es_vocab_distinct(vocab, f) + 1) S += split_weight(rule, es_vocab_distinct(vocab, f));
        if (S == 0) break; /* every field has all the rows it can use */
        uint64_t given = 0;
        for (int f = 0; f < F; f++) {
            uint64_t d = es_vocab_distinct(vocab, f), cap = d + 1;
            if (rows[f] >= cap) continue;
            uint64_t add = (uint64_t)((unsigned __int128)rem * split_weight(rule, d) / S);
            if (add > cap - rows[f]) add = cap - rows[f];
            rows[f] += add;
            given += add;
        }
        if (given == 0) {
            for (int f = 0; f < F && rem > 0; f++)
                if (rows[f] < es_vocab_distinct(vocab, f) + 1) {
                    rows[f]++;
                    rem--;
                }
        } else {
            rem -= given;
        }
    }
    if (rem > 0) {
        /* Every field has d_f + 1 rows and budget is left: hashed values
         * still collide at that size (in a table of d + 1 rows only about
         * 37% of d values get a row to themselves), so the rest goes out
         * by the same weights without caps, keeping the table within a
         * row of the budget. */
        unsigned __int128 S = 0;
        for (int f = 0; f < F; f++) S += split_weight(rule, es_vocab_distinct(vocab, f));
        uint64_t given = 0;
        for (int f = 0; f < F && S > 0; f++) {
            uint64_t add = (uint64_t)((unsigned __int128)rem * split_weight(rule, es_vocab_distinct(vocab, f)) / S);
            rows[f] += add;
            given += add;
        }
        rem -= given;
        for (int f = 0; rem > 0; f = (f + 1) % F) {
            rows[f]++;
            rem--;
        }
    }
}

static const es__opt_spec hash_opts[] = {
    ES_OPT_SHARE,
    ES_OPT_SEED,
    ES_OPT_L("rows", 1, HASHED_MAX_ROWS, NULL, ES_OPT_SIZES,
             "rows per field r0:r1:... (share=1: one count; default: from the budget)", "50:70", ""),
    ES_OPT_E("split", "prop|sqrt|equal", "equal", 0, "rule splitting the budget's rows over fields (share=0, with a vocabulary)",
             "prop", ""),
};

static int hash_create(es_storage *s, const es_vocab *vocab, es_err *err) {
    const int F = s->p.n_fields, dim = s->p.dim;
    int found, rc;
    const int share = es__storage_opt_int(s, "share");
    if (es__storage_opt_given(s, "seed")) s->p.seed = es__storage_opt_u64(s, "seed");
    const size_t aux = es__hashed_aux_bytes(F, 1);

    uint64_t *rows = es__malloc((size_t)F * sizeof *rows);
    if (!rows) return es__err(err, ES_ENOMEM, "hash: out of memory");
    uint64_t total = 0;
    rc = es__storage_opt_list(s, "rows", share ? 1 : F, 1, rows, &found, err);
    if (rc == ES_OK && found) {
        for (int f = 0; f < (share ? 1 : F); f++) total += rows[f]; /* each <= 2^48, F <= 2^20: no overflow */
    } else if (rc == ES_OK) {
        const split_rule rule = (split_rule)es__storage_opt_enum(s, "split");
        rc = es__hashed_rows_from_budget(s, aux, dim, share ? 1 : (uint64_t)F, &total, err);
        if (rc == ES_OK && !share) {
            split_rows(total, F, vocab, rule, rows);
            total = 0;
            for (int f = 0; f < F; f++) total += rows[f];
        }
    }
    if (rc == ES_OK) rc = es__hashed_alloc(s, total, 1, dim, err);
    if (rc != ES_OK) {
        es__free(rows);
        return rc;
    }
    es__hashed *h = s->impl;
    uint64_t base = 0;
    for (int f = 0; f < F; f++) {
        h->salt[f] = es__storage_salt(s->p.seed, f, 0);
        h->base[f] = share ? 0 : base;
        h->nrows[f] = share ? total : rows[f];
        base += h->nrows[f];
    }
    /* Resolved sizes, read back from opts when a saved model is loaded. */
    if (share) rows[0] = total;
    if ((rc = es__storage_opt_set_u64(s, "share", (uint64_t)share, err)) != 0 ||
        (rc = es__storage_opt_set_u64(s, "seed", s->p.seed, err)) != 0 ||
        (rc = es__storage_opt_set_list(s, "rows", rows, share ? 1 : F, 1, err)) != 0)
        es__hashed_destroy(s);
    es__free(rows);
    return rc;
}

int es__hashed_row_map(es_storage *s, es__row_map *out) {
    es__hashed *h = s->impl;
    uint64_t rows = 0;
    for (size_t c = 0; c < (size_t)h->F * (size_t)h->k; c++)
        if (h->base[c] + h->nrows[c] > rows) rows = h->base[c] + h->nrows[c];
    *out = es__row_map_one(&h->t, h->k, hashed_resolve, h, rows);
    return ES_OK;
}

es_rows *es__hashed_rows(es_storage *s, int i) { return i == 0 ? &((es__hashed *)s->impl)->t : NULL; }

const es_storage_ops es__storage_hash = {
    .name = "hash",
    .summary = "hashing trick: one hashed table per field, rows split by distinct counts (share=1: one shared table)",
    .create = hash_create,
    .lookup = es__hashed_lookup,
    .backward = es__hashed_backward,
    .tensors = es__hashed_tensors,
    .after_load = NULL,
    .field_stats = es__hashed_field_stats,
    .destroy = es__hashed_destroy,
    ES_STORAGE_OPTS(hash_opts),
    .default_budget = ES_DEFAULT_BUDGET,
    .plain_rows = 1,
    .rows = es__hashed_rows,
    .row_map = es__hashed_row_map,
};
