/*
 * qr.c — the `qr` storage method: quotient-remainder compositional
 * embeddings (Shi, Mudigere, Naumov, Yang, "Compositional Embeddings Using
 * Complementary Partitions for Memory-Efficient Recommendation Systems",
 * KDD 2020).
 *
 * What is stored: p >= 2 tables (partitions), table j with m_j rows of
 * pd_j floats (share=1: one set of tables for every field; share=0: one
 * set per field, the fields' rows stacked inside each table).
 *
 * Lookup: a value is first given a virtual index in [0, N), N = prod m_j,
 * by hashing (there is no vocabulary map to store):
 *   h = es__hash_u64(key, salt_f),  salt_f = es__storage_salt(seed, f, 0),
 *   i = floor(h * N / 2^64)
 * and i is split into mixed-radix digits, most significant first:
 *   x_0 = h;  d_j = floor(x_j * m_j / 2^64);  x_{j+1} = x_j * m_j mod 2^64
 * which for p = 2 is exactly the quotient d_0 = i / m_1 and the remainder
 * d_1 = i mod m_1 of the paper (the partitions are complementary: two
 * values share every row only if they share the virtual index).  Row d_j
 * of table j gives e_j, and the value's vector combines them:
 *   op=mult (default)  e_0 * e_1 * ... (element-wise; pd_j = dim)
 *   op=add             e_0 + e_1 + ...                (pd_j = dim)
 *   op=cat             [e_0 | e_1 | ...]  (pd_j = dim / p, the first
 *                      dim mod p tables one float wider)
 * and a pair pools sum(wt * vector) over its values.
 *
 * Training: the gradient of each table row follows the combination (for
 * mult, dout times the product of the other rows, taken before any
 * update); gradients are summed per distinct row over the batch and each
 * table's touched rows get one update from the configured sparse
 * optimizer (a "row" is a table row).
 *
 * Budget: with A = (B - aux) / 4 floats and S = sum_j pd_j the cost of one
 * row in every table, each table gets floor(A / S) rows and the leftover
 * floats buy one more row in tables 0, 1, ... while they last, so the
 * tables are as equal as the budget allows (equal sizes maximise N, the
 * distinct virtual indices, for a given number of rows).  share=0 first
 * splits A over the fields (S each, the rest in proportion to the fields'
 * full-table rows, distinct + 1, from the vocabulary, or equally), fills
 * them in order and carries each field's leftover to the next, so
 * parameters + aux end within min pd_j floats of B.  aux is the base and
 * size arrays of each (field, table), or of each table when shared; the
 * salts are recomputed from the seed for each pair rather than stored.
 *
 * Options: op=mult|add|cat, partitions=p (2..4), m=... explicit sizes.
 * Initial values: mult draws every table from U(-a, a) with a =
 * init_scale^(1/p), so products stay within init_scale (init_scale 0:
 * table 0 zeros, the others ones, so training can start); add uses
 * a = init_scale / p; cat a = init_scale.  Resolved hyper-parameters go to
 * s->meta as "share=S,seed=N,op=O,partitions=p,m=m0/m1[:m0/m1...]" (one
 * group of p sizes per field when share=0) and are read back on load.
 */
#include "storage/storage.h"

#include "core/simd.h"

#include <math.h>

#define QR_MAX_P 4
#define QR_MAX_ROWS (UINT64_C(1) << 44)

enum { QR_MULT = 0, QR_ADD = 1, QR_CAT = 2 };
static const char *const qr_op_names[] = {"mult", "add", "cat"};

typedef struct qr_impl {
    int F, G, p, op, dim;
    int pd[QR_MAX_P];    /* floats per row of table j */
    int pofs[QR_MAX_P];  /* cat: output offset of table j */
    es_rows t[QR_MAX_P];
    es_gradacc ga[QR_MAX_P];
    uint64_t *base;      /* [G * p]: first row of group g in table j at base[g*p + j] */
    uint64_t *m;         /* [G * p]: rows of group g in table j (the radix) */
    uint64_t seed;       /* field f hashes with es__storage_salt(seed, f, 0), computed per pair */
    uint64_t tbase[QR_MAX_P + 1]; /* the global row space of the distributed step: table j's rows from tbase[j] */
} qr_impl;


/* ---- index -------------------------------------------------------------------------- */

/* Mixed-radix digits of the hash h read as the fraction h / 2^64, most
 * significant first (see the file comment). */
static inline void qr_digits(uint64_t h, const uint64_t *m, int p, uint64_t *d) {
    uint64_t x = h;
    for (int j = 0; j < p; j++) {
        unsigned __int128 y = (unsigned __int128)x * m[j];
        d[j] = (uint64_t)(y >> 64);
        x = (uint64_t)y;
    }
}

/* Table rows (absolute) of value `key` in field f. */
static inline void qr_rows(const qr_impl *q, int f, uint64_t salt, uint64_t key, uint64_t *row) {
    const int g = q->G == 1 ? 0 : f;
    const uint64_t *m = q->m + (size_t)g * q->p, *base = q->base + (size_t)g * q->p;
    qr_digits(es__hash_u64(key, salt), m, q->p, row);
    for (int j = 0; j < q->p; j++) row[j] += base[j];
}

static void qr_resolve(const void *ctx, int f, const uint64_t *keys, size_t n, uint64_t *ids) {
    const qr_impl *q = ctx;
    const uint64_t salt = es__storage_salt(q->seed, f, 0);
    for (size_t i = 0; i < n; i++) qr_rows(q, f, salt, keys[i], ids + i * (size_t)q->p);
}

/* qr_resolve in the global row space (qr_row_map): table j's rows after
 * the rows of tables 0 .. j-1. */
static void qr_resolve_global(const void *ctx, int f, const uint64_t *keys, size_t n, uint64_t *ids) {
    const qr_impl *q = ctx;
    qr_resolve(ctx, f, keys, n, ids);
    for (size_t i = 0; i < n; i++)
        for (int j = 0; j < q->p; j++) ids[i * (size_t)q->p + j] += q->tbase[j];
}

/* ---- lookup and backward ------------------------------------------------------------- */

static void qr_free(qr_impl *q) {
    if (!q) return;
    for (int j = 0; j < QR_MAX_P; j++) {
        es__rows_free(&q->t[j]);
        es__gradacc_free(&q->ga[j]);
    }
    es__free(q->base); /* m shares the allocation */
    es__free(q);
}

static void qr_destroy(es_storage *s) {
    qr_free(s->impl);
    s->impl = NULL;
}

/* The rows of one value: table j's row row[j], as fp32 pointers into the
 * tables, or dequantized (es__dequant_row) into buf + bofs[j] when the
 * tables hold codes, so the combination below sees exactly the values
 * es__dequant_row gives. */
static inline void qr_fetch(const qr_impl *q, const uint64_t *row, float *buf, const float **e) {
    for (int j = 0; j < q->p; j++) {
        const es_rows *t = &q->t[j];
        if (t->prec == ES_PREC_FP32) {
            e[j] = t->w + row[j] * (uint64_t)q->pd[j];
        } else {
            float *dst = buf + (size_t)j * (size_t)q->dim;
            es__dequant_row(t->prec, t->q + row[j] * es__prec_row_bytes(t->prec, q->pd[j]), q->pd[j], dst);
            e[j] = dst;
        }
    }
}

#define QR_STACK_FLOATS 2048 /* dequantized rows kept on the stack up to p * dim of this */

static void qr_lookup(es_storage *s, const es_batch *b, int r0, int r1, float *out) {
    const qr_impl *q = s->impl;
    const int F = q->F, p = q->p, dim = q->dim;
    uint64_t row[QR_MAX_P];
    const float *e[QR_MAX_P];
    /* quantized tables: scratch for the p dequantized rows of a value */
    float sbuf[QR_STACK_FLOATS], *buf = sbuf;
    const size_t need = (size_t)p * (size_t)dim;
    if (q->t[0].prec != ES_PREC_FP32 && need > QR_STACK_FLOATS && !(buf = es__malloc(need * sizeof *buf))) {
        es__err(&s->err, ES_ENOMEM, "qr: out of memory for the dequantized rows of a lookup; output zeroed");
        memset(out, 0, (size_t)(r1 - r0) * F * (size_t)dim * sizeof *out);
        return;
    }
    for (size_t P = (size_t)r0 * F, P1 = (size_t)r1 * F, fi = 0; P < P1; P++, fi = fi + 1 == (size_t)F ? 0 : fi + 1) {
        const int f = (int)fi;
        const uint64_t salt = es__storage_salt(q->seed, f, 0);
        float *restrict o = out + (P - (size_t)r0 * F) * (size_t)dim;
        memset(o, 0, (size_t)dim * sizeof *o);
        for (uint32_t i = b->off[P]; i < b->off[P + 1]; i++) {
            const float wt = b->wt[i];
            qr_rows(q, f, salt, b->val[i], row);
            qr_fetch(q, row, buf, e);
            if (q->op == QR_MULT) {
                if (p == 2) {
                    const float *restrict a = e[0], *restrict c = e[1];
                    for (int d = 0; d < dim; d++) o[d] += wt * a[d] * c[d];
                } else {
                    for (int d = 0; d < dim; d++) {
                        float x = wt;
                        for (int j = 0; j < p; j++) x *= e[j][d];
                        o[d] += x;
                    }
                }
            } else {
                for (int j = 0; j < p; j++) es__axpy(o + q->pofs[j], wt, e[j], (size_t)q->pd[j]);
            }
        }
    }
    if (buf != sbuf) es__free(buf);
}

static int qr_backward(es_storage *s, const es_batch *b, const float *dout) {
    qr_impl *q = s->impl;
    const int F = q->F, p = q->p, dim = q->dim;
    uint64_t row[QR_MAX_P];
    const float *e[QR_MAX_P];
    float *g[QR_MAX_P];
    float sbuf[QR_STACK_FLOATS], *buf = sbuf;
    const size_t need = (size_t)p * (size_t)dim;
    if (q->t[0].prec != ES_PREC_FP32 && need > QR_STACK_FLOATS && !(buf = es__malloc(need * sizeof *buf)))
        return es__err(&s->err, ES_ENOMEM, "qr: out of memory for the dequantized rows of a backward");
    for (int j = 0; j < p; j++) es__gradacc_clear(&q->ga[j]);
    for (size_t P = 0, PN = (size_t)b->n * F, fi = 0; P < PN; P++, fi = fi + 1 == (size_t)F ? 0 : fi + 1) {
        const int f = (int)fi;
        const uint64_t salt = es__storage_salt(q->seed, f, 0);
        const float *restrict go = dout + P * (size_t)dim;
        for (uint32_t i = b->off[P]; i < b->off[P + 1]; i++) {
            const float wt = b->wt[i];
            qr_rows(q, f, salt, b->val[i], row);
            /* the other partitions' rows as the forward saw them (the
             * codes' values at a precision below fp32: QAT's master is not
             * what was combined, and ALPT has none) */
            qr_fetch(q, row, buf, e);
            for (int j = 0; j < p; j++) {
                /* one row per table per value: a later call on the same
                 * accumulator (which may move its rows) comes only with
                 * the next value */
                if (!(g[j] = es__gradacc_row(&q->ga[j], row[j]))) {
                    for (int l = 0; l < p; l++) es__gradacc_clear(&q->ga[l]);
                    if (buf != sbuf) es__free(buf);
                    return es__err(&s->err, ES_ENOMEM, "qr: out of memory growing the gradient scratch of table %d", j);
                }
            }
            if (q->op == QR_MULT) {
                if (p == 2) {
                    float *restrict g0 = g[0], *restrict g1 = g[1];
                    const float *restrict a = e[0], *restrict c = e[1];
                    for (int d = 0; d < dim; d++) {
                        const float w = wt * go[d];
                        g0[d] += w * c[d];
                        g1[d] += w * a[d];
                    }
                } else {
                    for (int j = 0; j < p; j++)
                        for (int d = 0; d < dim; d++) {
                            float x = wt * go[d];
                            for (int l = 0; l < p; l++)
                                if (l != j) x *= e[l][d];
                            g[j][d] += x;
                        }
                }
            } else {
                for (int j = 0; j < p; j++) es__axpy(g[j], wt, go + q->pofs[j], (size_t)q->pd[j]);
            }
        }
    }
    /* every gradient was taken from the old rows; now update */
    for (int j = 0; j < p; j++) es__gradacc_apply(&q->ga[j], &q->t[j]);
    if (buf != sbuf) es__free(buf);
    return ES_OK;
}

static int qr_tensors(es_storage *s, es_tensor_ref *refs, int max) {
    qr_impl *q = s->impl;
    int n = 0;
    for (int j = 0; j < q->p; j++) n += es__rows_tensors(&q->t[j], NULL, 0);
    if (!refs) return n;
    if (max < n) return ES_ERANGE;
    int at = 0;
    for (int j = 0; j < q->p; j++) {
        int k = es__rows_tensors(&q->t[j], refs + at, max - at);
        /* codes: "table<j>.q" (u8 [rows, row bytes]) in place of "table<j>" */
        snprintf(refs[at].name, sizeof refs[at].name, q->t[j].prec == ES_PREC_FP32 ? "table%d" : "table%d.q", j);
        /* state "opt.<x>" as "opt.table<j>.<x>" (acc; QAT's master, ALPT's
         * qstep, qstep_acc, qcount, qseed), so the tables' names differ */
        for (int i = at + 1; i < at + k; i++) {
            char tmp[sizeof refs[i].name];
            snprintf(tmp, sizeof tmp, "%s", refs[i].name + 4);
            snprintf(refs[i].name, sizeof refs[i].name, "opt.table%d.%.40s", j, tmp);
        }
        at += k;
    }
    return at;
}

static void qr_field_stats(es_storage *s, const es_vocab *vocab, int field, es_field_stats *out) {
    qr_impl *q = s->impl;
    if (field < 0 || field >= q->F) {
        memset(out, 0, sizeof *out);
        return;
    }
    /* rows: the field's rows over all tables; rows_used counts distinct
     * (table, row) pairs, collisions the values whose whole row tuple
     * (virtual index) is shared */
    const int g = q->G == 1 ? 0 : field;
    uint64_t rows = 0;
    for (int j = 0; j < q->p; j++) rows += q->m[(size_t)g * q->p + j];
    es__rows_field_stats(q->p, qr_resolve, q, vocab, field, rows, out);
}

/* ---- create ------------------------------------------------------------------------------ */

/* Rows of each table for A floats (file comment); returns the floats left. */
static uint64_t qr_fill(uint64_t A, const int *pd, int p, uint64_t *m) {
    uint64_t S = 0;
    for (int j = 0; j < p; j++) S += (uint64_t)pd[j];
    uint64_t each = A / S, left = A - each * S;
    for (int j = 0; j < p; j++) {
        m[j] = each;
        if ((uint64_t)pd[j] <= left) {
            m[j]++;
            left -= (uint64_t)pd[j];
        }
    }
    return left;
}

static const es__opt_spec qr_opts[] = {
    ES_OPT_SHARE,
    ES_OPT_SEED,
    ES_OPT_E("op", "mult|add|cat", "mult", 0, "how the partitions' rows combine", "add", ""),
    ES_OPT_U("partitions", 2, QR_MAX_P, "2", 0, "p complementary partitions (tables) per field", "3", ""),
    ES_OPT_L("m", 1, QR_MAX_ROWS, NULL, ES_OPT_SIZES, "rows of each table m0/m1[:m0/m1...] per field (default: from the budget)",
             "4/5:6/7", ""),
};

static int qr_create(es_storage *s, const es_vocab *vocab, es_err *err) {
    const int F = s->p.n_fields, dim = s->p.dim;
    int found, rc;
    const int share = es__storage_opt_int(s, "share"), p = es__storage_opt_int(s, "partitions"), op = es__storage_opt_enum(s, "op");
    if (es__storage_opt_given(s, "seed")) s->p.seed = es__storage_opt_u64(s, "seed");
    if (op == QR_CAT && dim < p)
        return es__err(err, ES_EINVAL, "qr: op=cat splits dim %d over %d partitions; it needs dim >= partitions", dim, p);
    if (op == QR_CAT && dim % p != 0 && s->p.shard_n >= 1)
        return es__err(err, ES_EINVAL,
                       "qr: op=cat with dim %d over %d partitions cannot be trained across processes: the distributed step "
                       "shards rows of one width, and %d of the %d partitions would be one float wider than the others (a "
                       "dim that is a multiple of partitions can; docs/scale.md)",
                       dim, p, dim % p, p);
    int pd[QR_MAX_P], pofs[QR_MAX_P];
    for (int j = 0, at = 0; j < p; j++) {
        pd[j] = op == QR_CAT ? dim / p + (j < dim % p) : dim;
        pofs[j] = op == QR_CAT ? at : 0;
        at += pd[j];
    }
    const int G = share ? 1 : F;
    const size_t aux = (size_t)2 * G * p * sizeof(uint64_t);

    uint64_t *m = es__malloc((size_t)G * p * sizeof *m), *Af = es__malloc((size_t)G * sizeof *Af);
    if (!m || !Af) {
        rc = es__err(err, ES_ENOMEM, "qr: out of memory");
        goto fail;
    }
    if ((rc = es__storage_opt_list(s, "m", G, p, m, &found, err)) != 0) goto fail;
    if (!found) {
        if (!(s->budget_bytes > 0)) {
            rc = es__err(err, ES_EINVAL, "qr: needs a budget: bytes (> 1), or a fraction (0, 1] of the full table with a "
                                         "vocabulary");
            goto fail;
        }
        uint64_t S = 0;
        for (int j = 0; j < p; j++) S += (uint64_t)pd[j];
        double avail = s->budget_bytes - (double)aux;
        double A = avail > 0 ? floor(avail / sizeof(float)) : 0;
        if (A < (double)G * (double)S) {
            rc = es__err(err, ES_EBUDGET,
                         "qr: a budget of %.0f bytes leaves %.0f floats after %zu bytes of lookup arrays; %d partition(s) "
                         "of one row each need %llu floats%s (%.0f bytes in all)%s",
                         s->budget_bytes, A, aux, p, (unsigned long long)S, share ? "" : " per field",
                         (double)aux + (double)G * (double)S * sizeof(float),
                         share ? "" : "; share=1 pays for one set, not one per field");
            goto fail;
        }
        if (A / (double)S > (double)QR_MAX_ROWS) {
            rc = es__err(err, ES_ERANGE, "qr: a budget of %.0f bytes is larger than this build allocates", s->budget_bytes);
            goto fail;
        }
        es__storage_split((uint64_t)A, G, share ? NULL : vocab, S, Af);
        uint64_t carry = 0;
        for (int g = 0; g < G; g++) carry = qr_fill(Af[g] + carry, pd, p, m + (size_t)g * p);
    }
    uint64_t rows[QR_MAX_P] = {0};
    for (int g = 0; g < G; g++)
        for (int j = 0; j < p; j++) rows[j] += m[(size_t)g * p + j]; /* each <= 2^44, G <= 2^20 */
    for (int j = 0; j < p; j++)
        if (rows[j] > QR_MAX_ROWS) {
            rc = es__err(err, ES_ERANGE, "qr: table %d of %llu rows is more than this build allocates", j,
                         (unsigned long long)rows[j]);
            goto fail;
        }
    const int shard = s->p.shard_n > 1; /* rank shard_rank's rows of each table, es__row_map */
    for (int j = 0; shard && j < p; j++)
        if (rows[j] < (uint64_t)s->p.shard_n) {
            rc = es__err(err, ES_EINVAL, "qr: table %d has %llu rows, fewer than the %d processes it is split over (each needs a row)", j,
                         (unsigned long long)rows[j], s->p.shard_n);
            goto fail;
        }

    qr_impl *q = es__calloc(1, sizeof *q);
    if (!q) {
        rc = es__err(err, ES_ENOMEM, "qr: out of memory");
        goto fail;
    }
    q->F = F;
    q->G = G;
    q->p = p;
    q->op = op;
    q->dim = dim;
    memcpy(q->pd, pd, sizeof pd);
    memcpy(q->pofs, pofs, sizeof pofs);
    q->base = es__malloc(aux);
    if (!q->base) {
        qr_free(q);
        rc = es__err(err, ES_ENOMEM, "qr: out of memory");
        goto fail;
    }
    q->m = q->base + (size_t)G * p;
    for (int j = 0; j < p; j++) q->tbase[j + 1] = q->tbase[j] + rows[j];
    es_rng rng;
    es__rng_seed(&rng, s->p.seed);
    const float sc = s->p.init_scale;
    for (int j = 0; j < p; j++) {
        float a = op == QR_MULT ? (sc > 0 ? powf(sc, 1.0f / (float)p) : 0) : op == QR_ADD ? sc / (float)p : sc;
        size_t ga_cap = ES_MIN((size_t)s->p.max_batch * (size_t)F, (size_t)rows[j]);
        /* a shard is trained by the distributed step, which sums its
         * gradients itself: no scratch of its own */
        if (es__rows_init_shard_at(&q->t[j], rows[j], pd[j], &s->p.opt, &rng, a, q->tbase[j], s->p.shard_rank, s->p.shard_n) != ES_OK ||
            (!shard && es__gradacc_init(&q->ga[j], ga_cap, pd[j]) != ES_OK)) {
            qr_free(q);
            rc = es__err(err, ES_ENOMEM, "qr: out of memory for table %d (%llu rows of %d floats)", j,
                         (unsigned long long)rows[j], pd[j]);
            goto fail;
        }
        if (op == QR_MULT && sc == 0 && j > 0)
            for (size_t e = 0, n = (size_t)q->t[j].n_rows * (size_t)pd[j]; e < n; e++) q->t[j].w[e] = 1.0f;
    }
    uint64_t at[QR_MAX_P] = {0};
    for (int g = 0; g < G; g++)
        for (int j = 0; j < p; j++) {
            q->m[(size_t)g * p + j] = m[(size_t)g * p + j];
            q->base[(size_t)g * p + j] = at[j];
            at[j] += m[(size_t)g * p + j];
        }
    q->seed = s->p.seed;

    if ((rc = es__storage_opt_set_u64(s, "share", (uint64_t)share, err)) != 0 ||
        (rc = es__storage_opt_set_u64(s, "seed", s->p.seed, err)) != 0 ||
        (rc = es__storage_opt_set(s, "op", err, "%s", qr_op_names[op])) != 0 ||
        (rc = es__storage_opt_set_u64(s, "partitions", (uint64_t)p, err)) != 0 ||
        (rc = es__storage_opt_set_list(s, "m", m, G, p, err)) != 0) {
        qr_free(q);
        goto fail;
    }
    s->impl = q;
    s->param_bytes = s->state_bytes = 0;
    for (int j = 0; j < p; j++) {
        s->param_bytes += es__rows_param_bytes(&q->t[j]);
        s->state_bytes += es__rows_state_bytes(&q->t[j]);
    }
    s->aux_bytes = aux;
    es__free(m);
    es__free(Af);
    return ES_OK;
fail:
    es__free(m);
    es__free(Af);
    return rc;
}

/* ops->row_map: the p tables as one global row space (table j's rows
 * from tbase[j]), each value's p rows multiplied, added or set side by
 * side (es__row_map's PROD, SUM and SLICES: qr_lookup's and qr_backward's
 * float operations).  op=cat with partitions of two widths has none (it
 * is refused at create when sharded). */
static int qr_row_map(es_storage *s, es__row_map *out) {
    qr_impl *q = s->impl;
    if (q->op == QR_CAT && q->dim % q->p != 0) return ES_EINVAL;
    memset(out, 0, sizeof *out);
    for (int j = 0; j < q->p; j++) {
        out->t[j] = &q->t[j];
        out->base[j + 1] = q->tbase[j + 1];
    }
    out->n_t = out->k = q->p;
    out->combine = q->op == QR_MULT ? ES_COMBINE_PROD : q->op == QR_ADD ? ES_COMBINE_SUM : ES_COMBINE_SLICES;
    out->fn = qr_resolve_global;
    out->ctx = q;
    out->rows = q->tbase[q->p];
    return ES_OK;
}

/* ops->rows: the p partition tables, quantized together (one precision). */
static es_rows *qr_table(es_storage *s, int i) {
    qr_impl *q = s->impl;
    return i >= 0 && i < q->p ? &q->t[i] : NULL;
}

const es_storage_ops es__storage_qr = {
    .name = "qr",
    .summary = "quotient-remainder: a hashed virtual index split over p tables combined by mult, add or cat",
    .create = qr_create,
    .lookup = qr_lookup,
    .backward = qr_backward,
    .tensors = qr_tensors,
    .after_load = NULL,
    .field_stats = qr_field_stats,
    .destroy = qr_destroy,
    ES_STORAGE_OPTS(qr_opts),
    .default_budget = ES_DEFAULT_BUDGET,
    .rows = qr_table,
    .row_map = qr_row_map,
};
