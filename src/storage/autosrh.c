/*
 * autosrh.c — the `autosrh` storage method: the search stage of AutoSrh
 * (Kong et al., "AutoSrh: An Embedding Dimensionality Search Framework for
 * Tabular Data Prediction", IEEE TKDE 2022; its predecessor DNIS, Cheng et
 * al., "Differentiable Neural Input Search for Recommender Systems", 2020),
 * a multi-stage method (storage.h es__staged; docs/methods.md "autosrh").
 *
 * Frequency blocks.  From the vocabulary, the values of field f are ranked
 *   by count (ties by key) and cut into NB blocks (option blocks=, default
 *   4) of about equal occurrence mass: block 0 holds the most frequent
 *   values, block NB-1 the long tail.  nval[f][b] is the number of distinct
 *   values in block b ("opt.arch.nval").
 * Search storage.  Field f owns one hashed table of rows_f rows of dim
 *   floats (row es__range(es__hash_u64(key, salt_f), rows_f), fielddim's
 *   salts).  Each row belongs to the block of the most frequent value
 *   hashed to it (rows no value reaches: the last block), one byte per row
 *   ("opt.arch.block", rows of all fields in field order).  Without a
 *   vocabulary every row is in block 0 and nval[f][0] = rows_f.
 * Soft selection weights alpha[f][b][d] (f32 [F, NB, dim], initial 1,
 *   "opt.arch.alpha"): the output of field f is
 *       out[f][d] = sum over the field's values of wt * alpha[f][b(r)][d] * w[r][d]
 *   (r the value's row, b(r) its block).
 * Training (the paper's bi-level scheme, first-order approximation, as
 *   autodim): a training batch's backward updates the table with the
 *   optimizer, alpha held fixed (dw[r][d] = wt * alpha[f][b(r)][d] *
 *   dout[f][d]); an architecture step on a validation batch (arch_backward)
 *   updates only alpha with the gradient of the loss plus the L1 penalty
 *   l1 * sum |alpha| (option l1=):
 *       dalpha[f][b][d] = sum wt * dout[f][d] * w[r][d] + l1 * sign(alpha[f][b][d])
 *   with the table's optimizer kind applied elementwise (SGD; Adagrad for
 *   both Adagrad kinds, "opt.arch.acc") at lr * alpha_lr.  AutoSrh trains
 *   alpha on the validation rows in this way; embstore does too, reusing
 *   autodim's stage machinery.  Evaluation mode changes nothing (the
 *   forward has no noise).
 * Derive.  The weight of a coordinate is scored after scaling by the
 *   table: score[f][b][d] = |alpha[f][b][d]| * rms over the block's rows of
 *   w[r][d] (alpha * w is what the model reads; alpha alone is not
 *   identifiable, the table can grow as alpha shrinks).  The smallest
 *   scores are pruned, one coordinate at a time (every (f, b) keeps at
 *   least one), until the blocks' table at their kept counts k[f][b],
 *   4 sum nval[f][b] k[f][b] bytes (the paper's table, rows indexed by
 *   value, no map), fits the budget less 24 F bytes.
 * Retrain (option retrain=):
 *   blockdim (default, the paper's): each (field, block) keeps its k[f][b]
 *     ("blocks=NB,dims=k..."): blockdim.c's table, whose values are cut
 *     into blocks by the same rule, so a value's retrained width is its
 *     block's; blockdim pays for its key map (14 bytes a kept value) from
 *     the budget and sends the values it cannot keep to one OOV row per
 *     field.  ES_EBUDGET when its OOV rows and maps do not fit.
 *   fielddim: one dimension per field, d_f = round(sum_b nval[f][b]
 *     k[f][b] / sum_b nval[f][b]) (the bytes-preserving mean of the blocks'
 *     dimensions), capped at distinct_f + 1 and at least 1 (loses the block
 *     granularity; hashed rows, no map).  Then, as autodim, while min_rows
 *     rows of every field at d_f do not fit the budget, the widest field
 *     drops one dimension; at 1 everywhere, ES_EBUDGET.
 *   Both are refused at create when min_rows rows of every field at
 *   dimension 1 cannot fit, rather than after the search.
 *
 * Sizing from the budget B: alpha (4 F NB dim bytes) is set aside, salt and
 * rows (16 F bytes) are lookup arrays, and so is the block of every row (1
 * byte a row; aux_bytes, and listed as "opt.arch.block"); the rest holds
 * R = floor((B - 16 F - 4 F NB dim) / (4 dim + 1)) rows, at least one per
 * field (ES_EBUDGET otherwise), split over the fields in proportion to
 * distinct_f + 1 (es__storage_split).  Without blocks= the default 4
 * drops while the weights would take more than half of B - 16 F (small
 * budgets: ml-latest-small at 1/64 is 426 bytes, and gets one block).  The
 * resolved blocks=, rows= and seed are recorded in meta; the row blocks
 * and nval are restored from a checkpoint.
 */
#include "core/simd.h"
#include "storage/storage.h"

#include <math.h>

#define AS_MAX_B 16
#define AS_MAX_A (1 << 16) /* F * NB * dim */
#define AS_MAX_ROWS (UINT64_C(1) << 40)
enum { ST_STEP = 0, ST_N = 1 };

typedef struct {
    int F, dim, NB;
    es_rows *t;        /* [F] tables of [rows_f, dim] */
    es_gradacc *ga;    /* [F] */
    uint64_t *salt;    /* [F], then nrows [F], boff [F + 1], nval [F * NB] */
    uint64_t *nrows, *boff, *nval;
    uint8_t *block;    /* [sum rows]: field f's rows at boff[f] */
    float *alpha;      /* [F * NB * dim]; acc, galpha follow */
    float *acc;
    float *galpha;
    float *falloc;
    uint64_t st[ST_N];
    float l1, alpha_lr;
} as_impl;

static void as_free(as_impl *m) {
    if (!m) return;
    for (int i = 0; m->t && i < m->F; i++) es__rows_free(&m->t[i]);
    for (int i = 0; m->ga && i < m->F; i++) es__gradacc_free(&m->ga[i]);
    es__free(m->t);
    es__free(m->ga);
    es__free(m->salt);
    es__free(m->block);
    es__free(m->falloc);
    es__free(m);
}

static void as_destroy(es_storage *s) {
    as_free(s->impl);
    s->impl = NULL;
}

static inline uint64_t as_row(const as_impl *m, int f, uint64_t key) {
    return es__range(es__hash_u64(key, m->salt[f]), m->nrows[f]);
}

static inline const float *as_alpha(const as_impl *m, int f, uint64_t r) {
    return m->alpha + ((size_t)f * (size_t)m->NB + m->block[m->boff[f] + r]) * (size_t)m->dim;
}

static void as_lookup(es_storage *s, const es_batch *b, int r0, int r1, float *out) {
    const as_impl *m = s->impl;
    const int F = m->F;
    const size_t dim = (size_t)m->dim;
    const size_t P0 = (size_t)r0 * (size_t)F, P1 = (size_t)r1 * (size_t)F;
    int f = 0;
    for (size_t P = P0; P < P1; P++) {
        float *o = out + (P - P0) * dim;
        memset(o, 0, dim * sizeof(float));
        for (size_t i = b->off[P]; i < b->off[P + 1]; i++) {
            const uint64_t r = as_row(m, f, b->val[i]);
            const float *w = m->t[f].w + r * dim, *a = as_alpha(m, f, r), wt = b->wt[i];
            for (size_t d = 0; d < dim; d++) o[d] += wt * a[d] * w[d];
        }
        if (++f == F) f = 0;
    }
}

static int as_backward(es_storage *s, const es_batch *b, const float *dout) {
    as_impl *m = s->impl;
    const int F = m->F;
    const size_t dim = (size_t)m->dim, PN = (size_t)b->n * (size_t)F;
    for (int i = 0; i < F; i++) es__gradacc_clear(&m->ga[i]);
    int f = 0;
    for (size_t P = 0; P < PN; P++) {
        const float *go = dout + P * dim;
        for (size_t i = b->off[P]; i < b->off[P + 1]; i++) {
            const uint64_t r = as_row(m, f, b->val[i]);
            float *g = es__gradacc_row(&m->ga[f], r);
            if (!g) {
                for (int j = 0; j < F; j++) es__gradacc_clear(&m->ga[j]);
                return es__err(&s->err, ES_ENOMEM, "autosrh: out of memory growing the gradient scratch of field %d", f);
            }
            const float *a = as_alpha(m, f, r), wt = b->wt[i];
            for (size_t d = 0; d < dim; d++) g[d] += wt * a[d] * go[d];
        }
        if (++f == F) f = 0;
    }
    for (int i = 0; i < F; i++) es__gradacc_apply(&m->ga[i], &m->t[i]);
    return ES_OK;
}

static int as_arch_backward(es_storage *s, const es_batch *b, const float *dout) {
    as_impl *m = s->impl;
    const int F = m->F;
    const size_t dim = (size_t)m->dim, PN = (size_t)b->n * (size_t)F, NA = (size_t)F * (size_t)m->NB * dim;
    memset(m->galpha, 0, NA * sizeof(float));
    int f = 0;
    for (size_t P = 0; P < PN; P++) {
        const float *go = dout + P * dim;
        for (size_t i = b->off[P]; i < b->off[P + 1]; i++) {
            const uint64_t r = as_row(m, f, b->val[i]);
            const float *w = m->t[f].w + r * dim, wt = b->wt[i];
            float *g = m->galpha + ((size_t)f * (size_t)m->NB + m->block[m->boff[f] + r]) * dim;
            for (size_t d = 0; d < dim; d++) g[d] += wt * go[d] * w[d];
        }
        if (++f == F) f = 0;
    }
    const float lr = s->p.opt.lr * m->alpha_lr;
    for (size_t i = 0; i < NA; i++) {
        const float a = m->alpha[i];
        const float g = m->galpha[i] + (a > 0 ? m->l1 : a < 0 ? -m->l1 : 0.0f);
        if (m->acc) {
            m->acc[i] += g * g;
            m->alpha[i] -= lr * g / (sqrtf(m->acc[i]) + s->p.opt.eps);
        } else {
            m->alpha[i] -= lr * g;
        }
    }
    m->st[ST_STEP]++;
    return ES_OK;
}

static void as_set_eval(es_storage *s, int on) { (void)s, (void)on; /* no noise to turn off */ }

/* The tables as "field<f>" (state "opt.field<f>.<x>"), then the
 * architecture state "opt.arch.*" (not served; a checkpoint keeps it). */
static int as_tensors(es_storage *s, es_tensor_ref *refs, int max) {
    as_impl *m = s->impl;
    const int F = m->F;
    int n = 4 + (m->acc != NULL);
    for (int i = 0; i < F; i++) n += es__rows_tensors(&m->t[i], NULL, 0);
    if (!refs) return n;
    if (max < n) return ES_ERANGE;
    int at = 0;
    for (int f = 0; f < F; f++) {
        int k = es__rows_tensors(&m->t[f], refs + at, max - at);
        snprintf(refs[at].name, sizeof refs[at].name, "field%d", f);
        for (int j = at + 1; j < at + k; j++) {
            char tmp[sizeof refs[j].name];
            snprintf(tmp, sizeof tmp, "%s", refs[j].name + 4);
            snprintf(refs[j].name, sizeof refs[j].name, "opt.field%d.%.40s", f, tmp);
        }
        at += k;
    }
    es__tensor_ref_set(&refs[at++], "opt.arch.alpha", ES_DT_F32, m->alpha, 3, (uint64_t)F, (uint64_t)m->NB, (uint64_t)m->dim);
    if (m->acc) es__tensor_ref_set(&refs[at++], "opt.arch.acc", ES_DT_F32, m->acc, 3, (uint64_t)F, (uint64_t)m->NB, (uint64_t)m->dim);
    es__tensor_ref_set(&refs[at++], "opt.arch.block", ES_DT_U8, m->block, 1, m->boff[F]);
    es__tensor_ref_set(&refs[at++], "opt.arch.nval", ES_DT_U64, m->nval, 2, (uint64_t)F, (uint64_t)m->NB);
    es__tensor_ref_set(&refs[at++], "opt.arch.step", ES_DT_U64, m->st + ST_STEP, 1, (uint64_t)1);
    return at;
}

/* A loaded block array must name blocks that exist. */
static int as_after_load(es_storage *s, es_err *err) {
    as_impl *m = s->impl;
    for (uint64_t i = 0; i < m->boff[m->F]; i++)
        if (m->block[i] >= m->NB)
            return es__err(err, ES_EFORMAT, "autosrh: row %llu is in block %d of %d", (unsigned long long)i, m->block[i], m->NB);
    return ES_OK;
}

static void as_field_stats(es_storage *s, const es_vocab *vocab, int field, es_field_stats *out) {
    (void)vocab;
    as_impl *m = s->impl;
    memset(out, 0, sizeof *out);
    if (field < 0 || field >= m->F) return;
    out->rows = m->nrows[field];
    out->rows_used = out->collisions = ES_STATS_UNKNOWN;
}

static int as_search_epochs(const es_storage *s) { return es__storage_opt_int(s, "search_epochs"); }

/* Bytes fielddim needs for min rows of every field at dims d. */
static double fit_bytes(int F, const int *d, const es_vocab *vocab, uint64_t min_rows) {
    double b = 3.0 * (double)F * sizeof(uint64_t);
    for (int f = 0; f < F; f++) {
        uint64_t r = min_rows;
        if (vocab && f < es_vocab_n_fields(vocab)) {
            uint64_t cap = es_vocab_distinct(vocab, f) + 1;
            if (cap < r) r = cap;
        }
        b += (double)r * (double)d[f] * sizeof(float);
    }
    return b;
}

typedef struct {
    float score;
    uint32_t i; /* index into alpha */
} as_cand;

static int cand_cmp(const void *a, const void *b) {
    const as_cand *x = a, *y = b;
    if (x->score != y->score) return x->score < y->score ? -1 : 1;
    return x->i < y->i ? -1 : x->i > y->i;
}

static int as_derive(es_storage *s, const es_vocab *vocab, const char **method, char *opts, size_t cap, char *json, size_t jcap,
                     es_err *err) {
    as_impl *m = s->impl;
    const int F = m->F, NB = m->NB, dim = m->dim;
    const size_t NA = (size_t)F * (size_t)NB * (size_t)dim, FB = (size_t)F * (size_t)NB;
    as_cand *c = es__malloc(NA * sizeof *c);
    double *ss = es__calloc(NA, sizeof *ss), *cnt = es__calloc(FB, sizeof *cnt);
    int *k = es__malloc(FB * sizeof *k), *d = es__malloc((size_t)F * sizeof *d), *searched = es__malloc((size_t)F * sizeof *d);
    int rc = ES_OK;
    if (!c || !ss || !cnt || !k || !d || !searched) {
        rc = es__err(err, ES_ENOMEM, "autosrh: out of memory");
        goto done;
    }
    /* rms of each coordinate over each block's rows */
    for (int f = 0; f < F; f++)
        for (uint64_t r = 0; r < m->nrows[f]; r++) {
            const int b = m->block[m->boff[f] + r];
            const float *w = m->t[f].w + r * (size_t)dim;
            double *q = ss + ((size_t)f * NB + b) * dim;
            for (int j = 0; j < dim; j++) q[j] += (double)w[j] * w[j];
            cnt[(size_t)f * NB + b] += 1;
        }
    for (size_t i = 0; i < NA; i++) {
        const double n = cnt[i / (size_t)dim];
        c[i].score = (float)(fabs((double)m->alpha[i]) * (n > 0 ? sqrt(ss[i] / n) : 0.0));
        c[i].i = (uint32_t)i;
    }
    qsort(c, NA, sizeof *c, cand_cmp);
    double bytes = 0;
    for (size_t i = 0; i < FB; i++) {
        k[i] = dim;
        bytes += 4.0 * (double)m->nval[i] * dim;
    }
    const double target = s->budget_bytes - 3.0 * (double)F * sizeof(uint64_t);
    int pruned = 0;
    for (size_t i = 0; i < NA && bytes > target; i++) {
        const size_t fb = c[i].i / (size_t)dim;
        if (k[fb] <= 1) continue;
        k[fb]--;
        bytes -= 4.0 * (double)m->nval[fb];
        pruned++;
    }
    if (es__storage_opt_enum(s, "retrain") == 0) { /* blockdim: each (field, block) keeps its kept count */
        *method = "blockdim";
        size_t o = (size_t)snprintf(opts, cap, "blocks=%d,dims=", NB);
        for (size_t i = 0; i < FB && o < cap; i++) o += (size_t)snprintf(opts + o, cap - o, i ? ":%d" : "%d", k[i]);
        if (o < cap) o += (size_t)snprintf(opts + o, cap - o, ",seed=%llu", (unsigned long long)s->p.seed);
        if (o >= cap) {
            rc = es__err(err, ES_ERANGE, "autosrh: the dims of %d fields x %d blocks do not fit the derived options", F, NB);
            goto done;
        }
        /* blockdim's OOV rows and maps must fit (else no row for any value) */
        double need = 8.0 * ((double)FB + 1) + 16.0 * F + 8.0 * (double)FB + 8.0;
        for (int f = 0; f < F; f++) need += 4.0 * k[(size_t)f * NB + NB - 1] + 4.0;
        if (need > s->budget_bytes) {
            rc = es__err(err, ES_EBUDGET,
                         "autosrh: unreachable budget: %.0f bytes cannot hold blockdim's %d out-of-vocabulary rows and maps "
                         "(needs %.0f bytes); raise --budget or use fewer blocks=",
                         s->budget_bytes, F, need);
            goto done;
        }
        for (int form = 0; form < 2; form++) {
            size_t j = (size_t)snprintf(json, jcap, "{\"retrain\":\"blockdim\",");
            if (form == 0) {
                j += (size_t)snprintf(json + j, jcap - j, "\"block_dims\":[");
                for (int f = 0; f < F && j < jcap; f++) {
                    j += (size_t)snprintf(json + j, jcap - j, f ? ",[" : "[");
                    for (int b = 0; b < NB && j < jcap; b++) j += (size_t)snprintf(json + j, jcap - j, b ? ",%d" : "%d", k[(size_t)f * NB + b]);
                    if (j < jcap) j += (size_t)snprintf(json + j, jcap - j, "]");
                }
                if (j < jcap) j += (size_t)snprintf(json + j, jcap - j, "],\"block_values\":[");
                for (int f = 0; f < F && j < jcap; f++) {
                    j += (size_t)snprintf(json + j, jcap - j, f ? ",[" : "[");
                    for (int b = 0; b < NB && j < jcap; b++)
                        j += (size_t)snprintf(json + j, jcap - j, b ? ",%llu" : "%llu", (unsigned long long)m->nval[(size_t)f * NB + b]);
                    if (j < jcap) j += (size_t)snprintf(json + j, jcap - j, "]");
                }
                if (j < jcap) j += (size_t)snprintf(json + j, jcap - j, "],");
            }
            if (j < jcap) j += (size_t)snprintf(json + j, jcap - j, "\"fields\":%d,\"blocks\":%d,\"pruned\":%d}", F, NB, pruned);
            if (j < jcap) break;
        }
        goto done;
    }
    int capped = 0;
    for (int f = 0; f < F; f++) {
        double num = 0, den = 0;
        for (int b = 0; b < NB; b++) {
            num += (double)m->nval[(size_t)f * NB + b] * k[(size_t)f * NB + b];
            den += (double)m->nval[(size_t)f * NB + b];
        }
        int v = den > 0 ? (int)floor(num / den + 0.5) : 1;
        if (v < 1) v = 1;
        if (v > dim) v = dim;
        searched[f] = v;
        const uint64_t n = vocab && f < es_vocab_n_fields(vocab) ? es_vocab_distinct(vocab, f) + 1 : UINT64_MAX;
        if ((uint64_t)v > n) v = (int)n;
        capped += v != searched[f];
        d[f] = v;
    }
    const uint64_t min_rows = es__storage_opt_u64(s, "min_rows");
    int shrunk = 0;
    while (fit_bytes(F, d, vocab, min_rows) > s->budget_bytes) {
        int w = -1;
        for (int f = 0; f < F; f++)
            if (d[f] > 1 && (w < 0 || d[f] > d[w])) w = f;
        if (w < 0) {
            rc = es__err(err, ES_EBUDGET,
                         "autosrh: unreachable budget: %.0f bytes cannot hold %llu rows of every field even at dimension 1 "
                         "(needs %.0f bytes); raise --budget or lower min_rows=",
                         s->budget_bytes, (unsigned long long)min_rows, fit_bytes(F, d, vocab, min_rows));
            goto done;
        }
        d[w]--;
        shrunk++;
    }
    *method = "fielddim";
    size_t o = (size_t)snprintf(opts, cap, "dims=");
    for (int f = 0; f < F && o < cap; f++) o += (size_t)snprintf(opts + o, cap - o, f ? ":%d" : "%d", d[f]);
    if (o < cap) o += (size_t)snprintf(opts + o, cap - o, ",seed=%llu", (unsigned long long)s->p.seed);
    if (o >= cap) {
        rc = es__err(err, ES_ERANGE, "autosrh: the dims of %d fields do not fit the derived options", F);
        goto done;
    }
    /* the result: dims, the per-field mean before the caps, and the kept
     * coordinates per (field, block) as [[k_f0b0, ...], ...]; with many
     * fields what fits (the dims are in storage.resolved either way) */
    for (int form = 0; form < 3; form++) {
        size_t j = (size_t)snprintf(json, jcap, "{");
        if (form < 2) {
            j += (size_t)snprintf(json + j, jcap - j, "\"dims\":[");
            for (int f = 0; f < F && j < jcap; f++) j += (size_t)snprintf(json + j, jcap - j, f ? ",%d" : "%d", d[f]);
            if (j < jcap) j += (size_t)snprintf(json + j, jcap - j, "],");
        }
        if (form == 0) {
            if (j < jcap) j += (size_t)snprintf(json + j, jcap - j, "\"searched_dims\":[");
            for (int f = 0; f < F && j < jcap; f++) j += (size_t)snprintf(json + j, jcap - j, f ? ",%d" : "%d", searched[f]);
            if (j < jcap) j += (size_t)snprintf(json + j, jcap - j, "],\"block_dims\":[");
            for (int f = 0; f < F && j < jcap; f++) {
                j += (size_t)snprintf(json + j, jcap - j, f ? ",[" : "[");
                for (int b = 0; b < NB && j < jcap; b++) j += (size_t)snprintf(json + j, jcap - j, b ? ",%d" : "%d", k[(size_t)f * NB + b]);
                if (j < jcap) j += (size_t)snprintf(json + j, jcap - j, "]");
            }
            if (j < jcap) j += (size_t)snprintf(json + j, jcap - j, "],\"block_values\":[");
            for (int f = 0; f < F && j < jcap; f++) {
                j += (size_t)snprintf(json + j, jcap - j, f ? ",[" : "[");
                for (int b = 0; b < NB && j < jcap; b++)
                    j += (size_t)snprintf(json + j, jcap - j, b ? ",%llu" : "%llu", (unsigned long long)m->nval[(size_t)f * NB + b]);
                if (j < jcap) j += (size_t)snprintf(json + j, jcap - j, "]");
            }
            if (j < jcap) j += (size_t)snprintf(json + j, jcap - j, "],");
        }
        if (j < jcap)
            j += (size_t)snprintf(json + j, jcap - j, "\"retrain\":\"fielddim\",\"fields\":%d,\"blocks\":%d,\"pruned\":%d,\"capped_fields\":%d,\"shrink_steps\":%d}", F,
                                  NB, pruned, capped, shrunk);
        if (j < jcap) break;
    }
done:
    es__free(c);
    es__free(ss);
    es__free(cnt);
    es__free(k);
    es__free(d);
    es__free(searched);
    return rc;
}

static const es__opt_spec as_opts[] = {
    ES_OPT_SEED,
    ES_OPT_U("blocks", 1, AS_MAX_B, "4", 0, "frequency blocks per field (values ranked by count, equal occurrence mass)", "2", ""),
    ES_OPT_L("rows", 1, AS_MAX_ROWS, NULL, ES_OPT_SIZES, "rows of field f's search table r0:r1:... (default: from the budget)", "40:50",
             ""),
    ES_OPT_U("search_epochs", 1, 1000, "1", 0, "passes over the training rows the search makes", "2", ""),
    ES_OPT_F("l1", 0, 100, "0.001", 0, "L1 penalty on the soft selection weights, per architecture step", "0.01", ""),
    ES_OPT_F("alpha_lr", 0, 1000, "1", ES_OPT_LO_OPEN, "learning rate of the soft selection weights, times the table's", "0.5", ""),
    ES_OPT_U("min_rows", 1, UINT32_MAX, "16", 0, "rows every field must fit at dimension 1 (checked at create); retrain=fielddim: at its dimension (capped at distinct + 1)",
             "4", ""),
    ES_OPT_E("retrain", "blockdim|fielddim", "blockdim", 0,
             "the retrained table: blockdim (a dimension per (field, block), the paper's) or fielddim (one per field)", "fielddim", ""),
};

/* Blocks from the vocabulary: field f's values ranked by count (ties by
 * key), cut into NB blocks of about equal occurrence mass; each row takes
 * the lowest block of the values hashed to it. */
typedef struct {
    es_vocab_entry *e;
    size_t n;
} as_collect;

static void collect_one(uint64_t key, uint64_t count, void *ctx) {
    as_collect *c = ctx;
    c->e[c->n].key = key;
    c->e[c->n].count = count;
    c->n++;
}

static int entry_cmp(const void *a, const void *b) {
    const es_vocab_entry *x = a, *y = b;
    if (x->count != y->count) return x->count > y->count ? -1 : 1;
    return x->key < y->key ? -1 : x->key > y->key;
}

static int assign_blocks(as_impl *m, const es_vocab *vocab, es_err *err) {
    const int NB = m->NB;
    for (int f = 0; f < m->F; f++) {
        uint8_t *blk = m->block + m->boff[f];
        uint64_t *nv = m->nval + (size_t)f * NB;
        if (!vocab || f >= es_vocab_n_fields(vocab) || es_vocab_distinct(vocab, f) == 0) {
            memset(blk, 0, m->nrows[f]);
            nv[0] = m->nrows[f];
            continue;
        }
        memset(blk, NB - 1, m->nrows[f]);
        const size_t n = (size_t)es_vocab_distinct(vocab, f);
        as_collect c = {es__malloc(n * sizeof *c.e), 0};
        if (!c.e) return es__err(err, ES_ENOMEM, "autosrh: out of memory ranking field %d's %zu values", f, n);
        es__vocab_each(vocab, f, collect_one, &c);
        qsort(c.e, c.n, sizeof *c.e, entry_cmp);
        double total = 0, run = 0;
        for (size_t i = 0; i < c.n; i++) total += (double)c.e[i].count;
        for (size_t i = 0; i < c.n; i++) {
            int b = total > 0 ? (int)floor(run / total * NB) : 0;
            if (b >= NB) b = NB - 1;
            run += (double)c.e[i].count;
            nv[b]++;
            const uint64_t r = as_row(m, f, c.e[i].key);
            if (blk[r] > b) blk[r] = (uint8_t)b;
        }
        es__free(c.e);
    }
    return ES_OK;
}

static int as_create(es_storage *s, const es_vocab *vocab, es_err *err) {
    const int F = s->p.n_fields, dim = s->p.dim;
    int NB = es__storage_opt_int(s, "blocks"), rc;
    if (es__storage_opt_given(s, "seed")) s->p.seed = es__storage_opt_u64(s, "seed");
    /* the default 4 blocks, fewer where their weights would take more than
     * half of a small budget (ml-latest-small at 1/64: 426 bytes); given
     * blocks= is kept (and refused below if it does not fit) */
    if (!es__storage_opt_given(s, "blocks") && !es__storage_opt_given(s, "rows") && s->budget_bytes > 0)
        while (NB > 1 && 4.0 * F * NB * dim > 0.5 * (s->budget_bytes - 16.0 * F)) NB--;
    if ((size_t)F * (size_t)NB * (size_t)dim > AS_MAX_A)
        return es__err(err, ES_EINVAL, "autosrh: %d fields x %d blocks x %d dimensions is more than %d soft selection weights", F, NB,
                       dim, AS_MAX_A);
    if (s->p.opt.kind != ES_OPT_SGD && s->p.opt.kind != ES_OPT_ADAGRAD && s->p.opt.kind != ES_OPT_ROWWISE_ADAGRAD)
        return es__err(err, ES_EINVAL, "autosrh: the table trains with SGD, Adagrad or row-wise Adagrad");
    const size_t FBD = (size_t)F * (size_t)NB * (size_t)dim;
    const size_t aux0 = 2 * (size_t)F * sizeof(uint64_t), abytes = FBD * sizeof(float);
    uint64_t *rows = es__malloc((size_t)F * sizeof *rows);
    if (!rows) return es__err(err, ES_ENOMEM, "autosrh: out of memory");
    int found = 0;
    if ((rc = es__storage_opt_list(s, "rows", F, 1, rows, &found, err)) != ES_OK) {
        es__free(rows);
        return rc;
    }
    if (!found && !(s->budget_bytes > 0)) {
        es__free(rows);
        return es__err(err, ES_EINVAL, "autosrh: needs a budget: bytes (> 1), or a fraction (0, 1] of the full table");
    } else if (!found) {
        const double R = floor((s->budget_bytes - (double)aux0 - (double)abytes) / (4.0 * dim + 1.0));
        if (!(R >= (double)F)) {
            es__free(rows);
            return es__err(err, ES_EBUDGET,
                           "autosrh: unreachable budget: %.0f bytes cannot hold one row of each of the %d fields' search tables "
                           "and the %d x %d x %d soft selection weights (needs %.0f bytes)",
                           s->budget_bytes, F, F, NB, dim, (double)aux0 + (double)abytes + (4.0 * dim + 1.0) * F);
        }
        /* the derived table must be able to fit too (dimension 1 everywhere):
         * refused now rather than after the search */
        int *d1 = (int *)rows;
        for (int f = 0; f < F; f++) d1[f] = 1;
        const uint64_t min_rows = es__storage_opt_u64(s, "min_rows");
        const double need = fit_bytes(F, d1, vocab, min_rows);
        if (need > s->budget_bytes) {
            es__free(rows);
            return es__err(err, ES_EBUDGET,
                           "autosrh: unreachable budget: %.0f bytes cannot hold %llu rows of every field even at dimension 1 "
                           "(needs %.0f bytes); raise --budget or lower min_rows=",
                           s->budget_bytes, (unsigned long long)min_rows, need);
        }
        es__storage_split(R > (double)AS_MAX_ROWS ? AS_MAX_ROWS : (uint64_t)R, F, vocab, 1, rows);
    }
    uint64_t total = 0;
    for (int f = 0; f < F; f++) total += rows[f];
    as_impl *m = es__calloc(1, sizeof *m);
    if (!m) {
        es__free(rows);
        return es__err(err, ES_ENOMEM, "autosrh: out of memory");
    }
    m->F = F;
    m->NB = NB;
    m->dim = dim;
    m->l1 = (float)es__storage_opt_f64(s, "l1");
    m->alpha_lr = (float)es__storage_opt_f64(s, "alpha_lr");
    const int has_acc = s->p.opt.kind != ES_OPT_SGD;
    m->t = es__calloc((size_t)F, sizeof *m->t);
    m->ga = es__calloc((size_t)F, sizeof *m->ga);
    m->salt = es__calloc(3 * (size_t)F + 1 + (size_t)F * NB, sizeof(uint64_t));
    m->block = es__malloc(total ? total : 1);
    m->falloc = es__calloc(3 * FBD, sizeof(float));
    if (!m->t || !m->ga || !m->salt || !m->block || !m->falloc) {
        as_free(m);
        es__free(rows);
        return es__err(err, ES_ENOMEM, "autosrh: out of memory");
    }
    m->nrows = m->salt + F;
    m->boff = m->salt + 2 * F;
    m->nval = m->salt + 3 * F + 1;
    m->alpha = m->falloc;
    m->acc = has_acc ? m->alpha + FBD : NULL;
    m->galpha = m->alpha + 2 * FBD;
    for (size_t i = 0; i < FBD; i++) m->alpha[i] = 1.0f;
    if (m->acc)
        for (size_t i = 0; i < FBD; i++) m->acc[i] = s->p.opt.init_acc;
    es_rng rng;
    es__rng_seed(&rng, s->p.seed);
    size_t pbytes = 0, sbytes = ((1 + (size_t)has_acc) * FBD) * sizeof(float) + (size_t)total + FBD / dim * sizeof(uint64_t) + sizeof m->st;
    for (int f = 0; f < F && rc == ES_OK; f++) {
        m->salt[f] = es__storage_salt(s->p.seed, f, 0);
        m->nrows[f] = rows[f];
        m->boff[f + 1] = m->boff[f] + rows[f];
        if (es__rows_init(&m->t[f], rows[f], dim, &s->p.opt, &rng, s->p.init_scale) != ES_OK ||
            es__gradacc_init(&m->ga[f], ES_MIN((size_t)s->p.max_batch, (size_t)rows[f]), dim) != ES_OK) {
            rc = es__err(err, ES_ENOMEM, "autosrh: out of memory for field %d's %llu rows of %d floats", f, (unsigned long long)rows[f], dim);
            break;
        }
        pbytes += es__rows_param_bytes(&m->t[f]);
        sbytes += es__rows_state_bytes(&m->t[f]);
    }
    if (rc == ES_OK) rc = assign_blocks(m, vocab, err);
    if (rc != ES_OK) {
        as_free(m);
        es__free(rows);
        return rc;
    }
    s->impl = m;
    s->param_bytes = pbytes;
    s->aux_bytes = aux0 + (size_t)total; /* the row blocks are a lookup array too */
    s->state_bytes = sbytes;
    if ((rc = es__storage_opt_set_u64(s, "seed", s->p.seed, err)) != 0 || (rc = es__storage_opt_set_u64(s, "blocks", (uint64_t)NB, err)) != 0 ||
        (rc = es__storage_opt_set_list(s, "rows", rows, F, 1, err)) != 0)
        as_destroy(s);
    es__free(rows);
    return rc;
}

static const es__staged as_staged = {
    .search_epochs = as_search_epochs,
    .arch_backward = as_arch_backward,
    .set_eval = as_set_eval,
    .derive = as_derive,
};

const es_storage_ops es__storage_autosrh = {
    .name = "autosrh",
    .summary = "AutoSrh: soft selection weights per (field, frequency block, coordinate) with an L1 penalty on validation "
               "rows, prune the smallest to the budget, then retrain as blockdim (a width per field and block; retrain=fielddim: per field) (multi-stage)",
    .create = as_create,
    .lookup = as_lookup,
    .backward = as_backward,
    .tensors = as_tensors,
    .after_load = as_after_load,
    .field_stats = as_field_stats,
    .destroy = as_destroy,
    ES_STORAGE_OPTS(as_opts),
    .default_budget = ES_DEFAULT_BUDGET,
    .staged = &as_staged,
};
