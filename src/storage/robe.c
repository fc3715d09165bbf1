/*
 * robe.c — the `robe` storage method: ROBE-Z, random offset block
 * embeddings (Desai, Chou, Shrivastava, "Random Offset Block Embedding
 * (ROBE) for compressed embedding tables in deep learning recommendation
 * systems", MLSys 2022).
 *
 * What is stored: one flat array M of m floats (share=1: one array for
 * every field; share=0: one region per field, stacked).  No rows, no map.
 *
 * Lookup: a field's dim-wide vector is cut into nb = ceil(dim / Z) blocks
 * of Z elements (the last block may be shorter).  For value `key` of field
 * f with region [base_f, base_f + size_f):
 *   h    = es__hash_u64(key, salt_f)            salt_f = es__storage_salt(seed, f, 0)
 *   h_j  = es__mix64(h + j * 0x9e3779b97f4a7c15)   for block j
 *   o_j  = es__range(h_j, size_f)               offset inside the region
 *   s_j  = +1 if h_j is even, -1 if odd         the sign hash
 *   out[j*Z + i] = s_j * M[base_f + (o_j + i) mod size_f],  i < block length
 * i.e. each block is a contiguous read at an arbitrary element offset,
 * wrapping around the end of the region (the paper's circular array).
 * Pooling over a pair's values sums wt * that vector.
 *
 * Training: M is viewed as a table of m / Z "rows" of Z elements, aligned
 * to Z (m and every region size are multiples of Z).  A block read at any
 * offset touches at most two such rows (wrapping keeps it within the last
 * and the first row of the region), so the gradients are gathered per
 * aligned row, summed over the batch, and each touched row gets one update
 * from the configured sparse optimizer: for row-wise Adagrad a "row" is
 * this aligned run of Z floats.
 *
 * Budget: m = Z * floor((B - aux) / (4 Z)) floats, aux being the region
 * base and size arrays (one pair per field, or one pair when shared; the
 * salts are recomputed from the seed for each pair rather than stored), so
 * parameters + aux are within 4 Z bytes of B.  share=0 splits the m / Z aligned rows over
 * the fields: one each, the rest in proportion to the fields' full-table
 * rows (distinct values + 1) from the vocabulary, or equally without one.
 *
 * Precision (--precision, issue 11): the array is quantized "as blocks":
 * each aligned row of Z floats is one fused row of codes with its own
 * scale and bias (quant.h; ops->rows is the aligned-row table), after
 * training or while training (QAT, ALPT: updates go through
 * es__rows_update per aligned row as above).  A lookup window crosses
 * aligned rows at any offset, so it dequantizes each row it touches and
 * pools the window's piece of it.  Byte budgets count the codes, scales
 * and biases of every block.
 *
 * Z: option z (default dim, at most 32): Z = 1 is HashedNet-style
 * per-element hashing; Z = dim reads every vector contiguously (one hash
 * per value).  Resolved hyper-parameters go to s->meta as
 * "share=S,seed=N,z=Z,rows=R" (share=0: rows=r0:r1:... per field, in
 * aligned rows of Z floats) and are read back from opts on load.
 */
#include "storage/storage.h"

#include "core/simd.h"

#include <math.h>

#define ROBE_MAX_Z 4096
#define ROBE_MAX_ROWS (UINT64_C(1) << 44)
#define ROBE_GOLDEN UINT64_C(0x9e3779b97f4a7c15)

typedef struct robe_impl {
    es_rows t;        /* [n_rows, Z]: the flat array, m = n_rows * Z floats */
    int F, G, Z, nb, dim;
    uint64_t *base;   /* [G] first element of each region (G = 1 when shared) */
    uint64_t *size;   /* [G] elements in each region (a multiple of Z) */
    uint64_t seed;        /* field f hashes with es__storage_salt(seed, f, 0), computed per pair */
    es_gradacc ga;    /* per aligned row of Z floats */
} robe_impl;


/* ---- lookup and backward ----------------------------------------------------------- */

static void robe_free(robe_impl *m) {
    if (!m) return;
    es__rows_free(&m->t);
    es__free(m->base); /* size shares the allocation */
    es__gradacc_free(&m->ga);
    es__free(m);
}

static void robe_destroy(es_storage *s) {
    robe_free(s->impl);
    s->impl = NULL;
}

/* Offset and sign of block j of a value whose key hash is h. */
static inline uint64_t robe_block(uint64_t h, int j, uint64_t size, float *sign) {
    uint64_t hj = es__mix64(h + (uint64_t)j * ROBE_GOLDEN);
    *sign = (hj & 1) ? -1.0f : 1.0f;
    return es__range(hj, size);
}

/* out[0, n) += a * elements [col, col + n) of aligned row `row` of a table
 * of codes (the row dequantized whole into buf[Z], so each element is
 * exactly its es__dequant_row value). */
static inline void robe_axpy_codes(const es_rows *t, uint64_t row, int col, int n, float a, float *buf, float *out) {
    es__dequant_row(t->prec, t->q + row * es__prec_row_bytes(t->prec, t->dim), t->dim, buf);
    es__axpy(out, a, buf + col, (size_t)n);
}

static void robe_lookup(es_storage *s, const es_batch *b, int r0, int r1, float *out) {
    const robe_impl *m = s->impl;
    const int F = m->F, Z = m->Z, dim = m->dim;
    const float *M = m->t.w;
    const int codes = m->t.prec != ES_PREC_FP32;
    float buf[ROBE_MAX_Z]; /* one aligned row dequantized (codes only) */
    for (size_t P = (size_t)r0 * F, P1 = (size_t)r1 * F, fi = 0; P < P1; P++, fi = fi + 1 == (size_t)F ? 0 : fi + 1) {
        const int f = (int)fi, g = m->G == 1 ? 0 : f;
        const uint64_t base = m->base[g], size = m->size[g], salt = es__storage_salt(m->seed, f, 0);
        float *o = out + (P - (size_t)r0 * F) * (size_t)dim;
        memset(o, 0, (size_t)dim * sizeof *o);
        for (uint32_t i = b->off[P]; i < b->off[P + 1]; i++) {
            const uint64_t h = es__hash_u64(b->val[i], salt);
            const float wt = b->wt[i];
            for (int j = 0; j < m->nb; j++) {
                float sg;
                const uint64_t off = robe_block(h, j, size, &sg);
                const int L = ES_MIN(Z, dim - j * Z);
                if (codes) {
                    /* blocks of codes: the window's piece of each aligned
                     * row it touches (at most two, wrapping included) */
                    uint64_t e = off;
                    for (int k = 0; k < L;) {
                        const uint64_t abs = base + e, col = abs % (uint64_t)Z;
                        int run = (int)ES_MIN((uint64_t)(L - k), (uint64_t)Z - col);
                        run = (int)ES_MIN((uint64_t)run, size - e);
                        robe_axpy_codes(&m->t, abs / (uint64_t)Z, (int)col, run, sg * wt, buf, o + j * Z + k);
                        k += run;
                        e += (uint64_t)run;
                        if (e == size) e = 0;
                    }
                    continue;
                }
                /* contiguous part up to the region's end, then the wrapped rest */
                const uint64_t first = ES_MIN((uint64_t)L, size - off);
                es__axpy(o + j * Z, sg * wt, M + base + off, (size_t)first);
                if (first < (uint64_t)L) es__axpy(o + j * Z + first, sg * wt, M + base, (size_t)L - first);
            }
        }
    }
}

static int robe_backward(es_storage *s, const es_batch *b, const float *dout) {
    robe_impl *m = s->impl;
    const int F = m->F, Z = m->Z, dim = m->dim;
    es__gradacc_clear(&m->ga);
    for (size_t P = 0, PN = (size_t)b->n * F, fi = 0; P < PN; P++, fi = fi + 1 == (size_t)F ? 0 : fi + 1) {
        const int f = (int)fi, g = m->G == 1 ? 0 : f;
        const uint64_t base = m->base[g], size = m->size[g], salt = es__storage_salt(m->seed, f, 0);
        const float *go = dout + P * (size_t)dim;
        for (uint32_t i = b->off[P]; i < b->off[P + 1]; i++) {
            const uint64_t h = es__hash_u64(b->val[i], salt);
            const float wt = b->wt[i];
            for (int j = 0; j < m->nb; j++) {
                float sg;
                uint64_t e = robe_block(h, j, size, &sg);
                const int L = ES_MIN(Z, dim - j * Z);
                const float a = sg * wt;
                /* walk the block's elements, one aligned row at a time */
                for (int k = 0; k < L;) {
                    const uint64_t abs = base + e, row = abs / (uint64_t)Z, col = abs % (uint64_t)Z;
                    int run = (int)ES_MIN((uint64_t)(L - k), (uint64_t)Z - col);
                    run = (int)ES_MIN((uint64_t)run, size - e);
                    float *gr = es__gradacc_row(&m->ga, row);
                    if (!gr) {
                        es__gradacc_clear(&m->ga);
                        return es__err(&s->err, ES_ENOMEM, "robe: out of memory growing the gradient scratch past %zu rows",
                                       m->ga.cap);
                    }
                    es__axpy(gr + col, a, go + j * Z + k, (size_t)run);
                    k += run;
                    e += (uint64_t)run;
                    if (e == size) e = 0;
                }
            }
        }
    }
    es__gradacc_apply(&m->ga, &m->t);
    return ES_OK;
}

static int robe_tensors(es_storage *s, es_tensor_ref *refs, int max) {
    robe_impl *m = s->impl;
    int n = es__rows_tensors(&m->t, NULL, 0);
    if (!refs) return n;
    if (max < n) return ES_ERANGE;
    es__rows_tensors(&m->t, refs, max);
    /* the flat array, named for what it is; its shape keeps the aligned
     * rows ("array.q", u8 [rows, row bytes], for blocks of codes) */
    snprintf(refs[0].name, sizeof refs[0].name, m->t.prec == ES_PREC_FP32 ? "array" : "array.q");
    return n;
}

static void robe_field_stats(es_storage *s, const es_vocab *vocab, int field, es_field_stats *out) {
    robe_impl *m = s->impl;
    memset(out, 0, sizeof *out);
    if (field < 0 || field >= m->F) return;
    /* There are no rows to share: report the field's region in aligned
     * rows, and leave row usage and collisions unknown. */
    out->distinct = vocab && field < es_vocab_n_fields(vocab) ? es_vocab_distinct(vocab, field) : 0;
    out->rows = m->size[m->G == 1 ? 0 : field] / (uint64_t)m->Z;
    out->rows_used = out->collisions = ES_STATS_UNKNOWN;
}

/* ---- create ---------------------------------------------------------------------------- */

static const es__opt_spec robe_opts[] = {
    ES_OPT_SHARE,
    ES_OPT_SEED,
    ES_OPT_U("z", 1, ROBE_MAX_Z, NULL, 0, "block size Z in floats (default: min(dim, 32); 1 = HashedNet)", "4", ""),
    ES_OPT_L("rows", 1, ROBE_MAX_ROWS, NULL, ES_OPT_SIZES, "aligned blocks per field r0[:r1...] (default: from the budget)",
             "30:40", ""),
};

static int robe_create(es_storage *s, const es_vocab *vocab, es_err *err) {
    const int F = s->p.n_fields, dim = s->p.dim;
    int found, rc;
    const int share = es__storage_opt_int(s, "share");
    const int Z = es__storage_opt_given(s, "z") ? es__storage_opt_int(s, "z") : ES_MIN(dim, 32);
    if (es__storage_opt_given(s, "seed")) s->p.seed = es__storage_opt_u64(s, "seed");
    if (Z > dim) return es__err(err, ES_EINVAL, "robe: block size z=%d is larger than dim %d", Z, dim);
    const int G = share ? 1 : F;
    const size_t aux = (size_t)2 * G * sizeof(uint64_t);

    uint64_t *rows = es__malloc((size_t)G * sizeof *rows);
    if (!rows) return es__err(err, ES_ENOMEM, "robe: out of memory");
    if ((rc = es__storage_opt_list(s, "rows", G, 1, rows, &found, err)) != 0) goto fail;
    if (!found) {
        if (!(s->budget_bytes > 0)) {
            rc = es__err(err, ES_EINVAL, "robe: needs a budget: bytes (> 1), or a fraction (0, 1] of the full table with "
                                         "a vocabulary");
            goto fail;
        }
        double avail = s->budget_bytes - (double)aux;
        double R = avail > 0 ? floor(avail / ((double)Z * sizeof(float))) : 0;
        if (R < (double)G) {
            rc = es__err(err, ES_EBUDGET,
                         "robe: a budget of %.0f bytes holds %.0f blocks of z=%d floats after %zu bytes of lookup arrays; "
                         "at least %d (%.0f bytes) are needed%s",
                         s->budget_bytes, R, Z, aux, G, (double)aux + (double)G * Z * sizeof(float),
                         share ? "" : " (one per field; share=1 needs one in all)");
            goto fail;
        }
        if (R > (double)ROBE_MAX_ROWS) {
            rc = es__err(err, ES_ERANGE, "robe: a budget of %.0f bytes is larger than this build allocates", s->budget_bytes);
            goto fail;
        }
        es__storage_split((uint64_t)R, G, share ? NULL : vocab, 1, rows);
    }
    uint64_t total = 0;
    for (int g = 0; g < G; g++) total += rows[g]; /* each <= 2^44, G <= 2^20 */
    if (total > ROBE_MAX_ROWS) {
        rc = es__err(err, ES_ERANGE, "robe: %llu blocks is more than this build allocates", (unsigned long long)total);
        goto fail;
    }

    robe_impl *m = es__calloc(1, sizeof *m);
    if (!m) {
        rc = es__err(err, ES_ENOMEM, "robe: out of memory");
        goto fail;
    }
    m->F = F;
    m->G = G;
    m->Z = Z;
    m->dim = dim;
    m->nb = (dim + Z - 1) / Z;
    m->base = es__malloc(aux);
    es_rng rng;
    es__rng_seed(&rng, s->p.seed);
    if (!m->base || es__rows_init(&m->t, total, Z, &s->p.opt, &rng, s->p.init_scale) != ES_OK) {
        robe_free(m);
        rc = es__err(err, ES_ENOMEM, "robe: out of memory for an array of %llu floats", (unsigned long long)(total * Z));
        goto fail;
    }
    es__rows_shift(&m->t, s->p.init_shift);
    m->size = m->base + G;
    /* Each value touches up to 2 * nb aligned rows. */
    size_t ga_cap = (size_t)s->p.max_batch * (size_t)F * (size_t)m->nb * 2;
    if (ga_cap > total) ga_cap = (size_t)total;
    if (es__gradacc_init(&m->ga, ga_cap, Z) != ES_OK) {
        robe_free(m);
        rc = es__err(err, ES_ENOMEM, "robe: out of memory for gradient scratch");
        goto fail;
    }
    uint64_t at = 0;
    for (int g = 0; g < G; g++) {
        m->base[g] = at * (uint64_t)Z;
        m->size[g] = rows[g] * (uint64_t)Z;
        at += rows[g];
    }
    m->seed = s->p.seed;

    if ((rc = es__storage_opt_set_u64(s, "share", (uint64_t)share, err)) != 0 ||
        (rc = es__storage_opt_set_u64(s, "seed", s->p.seed, err)) != 0 || (rc = es__storage_opt_set_u64(s, "z", (uint64_t)Z, err)) != 0 ||
        (rc = es__storage_opt_set_list(s, "rows", rows, G, 1, err)) != 0) {
        robe_free(m);
        goto fail;
    }
    es__free(rows);
    s->impl = m;
    s->param_bytes = es__rows_param_bytes(&m->t);
    s->state_bytes = es__rows_state_bytes(&m->t);
    s->aux_bytes = aux;
    return ES_OK;
fail:
    es__free(rows);
    return rc;
}

/* ops->rows: the flat array as its table of aligned blocks of Z floats;
 * at a precision below fp32 each block is one fused row of codes with its
 * own scale and bias (quant.h). */
static es_rows *robe_rows(es_storage *s, int i) {
    robe_impl *m = s->impl;
    return i == 0 ? &m->t : NULL;
}

const es_storage_ops es__storage_robe = {
    .name = "robe",
    .summary = "ROBE-Z: one flat array, blocks of z floats read at hashed offsets with a sign hash",
    .create = robe_create,
    .lookup = robe_lookup,
    .backward = robe_backward,
    .tensors = robe_tensors,
    .after_load = NULL,
    .field_stats = robe_field_stats,
    .destroy = robe_destroy,
    ES_STORAGE_OPTS(robe_opts),
    .default_budget = ES_DEFAULT_BUDGET,
    .plain_rows = 1,
    .rows = robe_rows,
};
