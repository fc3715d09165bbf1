/*
 * autodim.c — the `autodim` storage method: the search stage of AutoDim
 * (Zhao et al., "AutoDim: Field-aware embedding dimension search in
 * recommender systems", WWW 2021), a multi-stage method (storage.h,
 * es__staged; docs/methods.md "autodim").
 *
 * Search storage.  C candidate dimensions c_0 < ... < c_{C-1} <= dim
 *   (option dims=, default 2:4:8:16:32 capped at dim).  Field f owns one
 *   hashed table per candidate, T[f][k] of rows_f rows of c_k floats; every
 *   candidate table of a field has the same rows and the same row mapping
 *   (row es__range(es__hash_u64(key, salt_f), rows_f), salt_f =
 *   es__storage_salt(seed, f, 0), fielddim's).  The field's output is the
 *   mixture
 *       out[f] = sum_k p[f][k] * pad(pool_k),   pad: zero-padded to dim
 *   of the candidates' pooled rows.  AutoDim projects each candidate to a
 *   common width with a linear layer and batch normalization; embstore
 *   zero-pads instead, as `fielddim` (what the retrain serves) does, so the
 *   searched mixture and the retrained table read their rows the same way
 *   and the search has no dense parameters of its own.
 * Architecture weights.  Logits a[f][k] (f32 [F, C], "opt.arch.alpha"),
 *   mixed by Gumbel-softmax: p[f] = softmax((a[f] + g[f]) / tau), g the
 *   Gumbel(0, 1) noise of the current step ("opt.arch.gumbel", one draw per
 *   (field, candidate) per step, shared by the batch's rows), redrawn after
 *   every step (training and architecture) from the storage's own stream
 *   ("opt.arch.rng"); tau = max(tau_min, tau0 * exp(-anneal * t)) after t
 *   architecture steps ("opt.arch.tau", "opt.arch.step").  In evaluation
 *   mode (set_eval) p[f] = softmax(a[f] / tau), without noise.
 * Training (bi-level, the paper's first-order approximation): a training
 *   batch's backward updates the candidate tables with the optimizer, p
 *   held fixed (dT[f][k][row] = p[f][k] * dout[f][0:c_k] summed per row, one
 *   update per distinct row); an architecture step on a validation batch
 *   (arch_backward) updates only a:
 *       dp[f][k] = sum over the field's values of wt * <dout[f][0:c_k], row>
 *       da[f][k] = p[f][k] (dp[f][k] - sum_j p[f][j] dp[f][j]) / tau
 *   with the table's optimizer kind applied elementwise (SGD; Adagrad for
 *   both Adagrad kinds, "opt.arch.acc") at lr * alpha_lr.  The paper uses
 *   Adam for a; an elementwise Adagrad keeps the state small and the step
 *   deterministic.
 * Derive: per field the candidate of largest a[f][k] (ties: the smaller
 *   dimension), with a vocabulary capped at the largest candidate <= the
 *   field's rows distinct_f + 1 (at least the smallest candidate): n rows
 *   span at most n dimensions, so for the dot products and linear layers
 *   that read an embedding a wider one adds nothing a width-n one cannot
 *   hold (an addition to the paper, which has no such cap).  The derived `fielddim` table fits the budget B when B
 *   holds, besides fielddim's 24 F bytes of lookup arrays, min_rows rows of
 *   every field at its dimension (min_rows option, default 16, capped at
 *   distinct_f + 1 with a vocabulary).  While it does not, the field with
 *   the largest dimension (the lowest-numbered of ties) drops to the next
 *   smaller candidate; when every field is at the smallest candidate and it
 *   still does not fit, the budget is unreachable (ES_EBUDGET).  The retrain
 *   is `fielddim` with dims= the derived dimensions and the whole budget.
 *
 * Sizing from the budget B: the logits (4 F C bytes) are set aside from
 * it (they are training state, "opt.arch.alpha", counted in state_bytes:
 * the search table is never served, and the search storage's param_bytes
 * are its tables' as its tensors list them), salt and rows are lookup
 * arrays (16 F bytes); the rest holds R =
 * floor((B - aux - 4 F C) / (4 sum_k c_k)) field rows (a row of every
 * candidate table), at least one per field (ES_EBUDGET otherwise), so the
 * search table is within the budget too.  They split one per field, then
 * with a vocabulary in proportion to distinct_f + 1 and capped there
 * (water-filling), without one equally.  (An equal split starved the
 * large fields: on the Criteo sample at 1/4 the largest field had 200
 * rows for 2446 values, and the search saw mostly collisions.)  The
 * resolved rows= (per field) and seed are recorded in meta.
 */
#include "core/simd.h"
#include "storage/storage.h"

#include <math.h>

#define AD_MAX_C 8
#define AD_MAX_FC 4096
#define AD_MAX_ROWS (UINT64_C(1) << 40)
enum { ST_RNG = 0, ST_STEP = 4, ST_N = 5 };

typedef struct {
    int F, dim, C, eval;
    int cand[AD_MAX_C];
    es_rows *t;        /* [F * C]: table (f, k) is [rows, cand[k]] */
    es_gradacc *ga;    /* [F * C] */
    uint64_t *salt;    /* [F], then nrows [F] */
    uint64_t *nrows;
    float *alpha;      /* [F * C] logits; acc, gumbel, tau, grad follow in one allocation */
    float *acc;        /* [F * C] (NULL with SGD) */
    float *gumbel;     /* [F * C] */
    float *tau;        /* [1] */
    float *galpha;     /* [F * C] scratch */
    float *falloc;
    uint64_t st[ST_N]; /* rng state, architecture steps */
    float tau0, tau_min, anneal, alpha_lr;
} ad_impl;

static void ad_free(ad_impl *m) {
    if (!m) return;
    for (int i = 0; m->t && i < m->F * m->C; i++) es__rows_free(&m->t[i]);
    for (int i = 0; m->ga && i < m->F * m->C; i++) es__gradacc_free(&m->ga[i]);
    es__free(m->t);
    es__free(m->ga);
    es__free(m->salt);
    es__free(m->falloc);
    es__free(m);
}

static void ad_destroy(es_storage *s) {
    ad_free(s->impl);
    s->impl = NULL;
}

static inline uint64_t ad_row(const ad_impl *m, int f, uint64_t key) {
    return es__range(es__hash_u64(key, m->salt[f]), m->nrows[f]);
}

/* p[F * C]: the mixing weights of the current step. */
static void ad_weights(const ad_impl *m, float *p) {
    const int C = m->C;
    const float it = 1.0f / m->tau[0];
    for (int f = 0; f < m->F; f++) {
        const float *a = m->alpha + (size_t)f * C, *g = m->gumbel + (size_t)f * C;
        float *q = p + (size_t)f * C, mx = -INFINITY, sum = 0;
        for (int k = 0; k < C; k++) {
            q[k] = (a[k] + (m->eval ? 0.0f : g[k])) * it;
            if (q[k] > mx) mx = q[k];
        }
        for (int k = 0; k < C; k++) sum += q[k] = expf(q[k] - mx);
        for (int k = 0; k < C; k++) q[k] /= sum;
    }
}

/* New Gumbel noise for the next step, from the storage's stream. */
static void ad_redraw(ad_impl *m) {
    es_rng r;
    memcpy(r.s, m->st + ST_RNG, sizeof r.s);
    for (int i = 0; i < m->F * m->C; i++) {
        double u = es__rng_uniform(&r);
        if (u < 1e-12) u = 1e-12;
        m->gumbel[i] = (float)-log(-log(u));
    }
    memcpy(m->st + ST_RNG, r.s, sizeof r.s);
}

static void ad_lookup(es_storage *s, const es_batch *b, int r0, int r1, float *out) {
    const ad_impl *m = s->impl;
    const int F = m->F, C = m->C;
    const size_t dim = (size_t)m->dim;
    float p[AD_MAX_FC];
    ad_weights(m, p);
    const size_t P0 = (size_t)r0 * (size_t)F, P1 = (size_t)r1 * (size_t)F;
    int f = 0;
    for (size_t P = P0; P < P1; P++) {
        float *o = out + (P - P0) * dim;
        memset(o, 0, dim * sizeof(float));
        for (size_t i = b->off[P]; i < b->off[P + 1]; i++) {
            const uint64_t r = ad_row(m, f, b->val[i]);
            for (int k = 0; k < C; k++) {
                const es_rows *t = &m->t[(size_t)f * C + k];
                es__axpy(o, b->wt[i] * p[(size_t)f * C + k], t->w + r * (size_t)t->dim, (size_t)t->dim);
            }
        }
        if (++f == F) f = 0;
    }
}

static int ad_backward(es_storage *s, const es_batch *b, const float *dout) {
    ad_impl *m = s->impl;
    const int F = m->F, C = m->C, FC = F * C;
    const size_t dim = (size_t)m->dim, PN = (size_t)b->n * (size_t)F;
    float p[AD_MAX_FC];
    ad_weights(m, p);
    for (int i = 0; i < FC; i++) es__gradacc_clear(&m->ga[i]);
    int f = 0;
    for (size_t P = 0; P < PN; P++) {
        const float *go = dout + P * dim;
        for (size_t i = b->off[P]; i < b->off[P + 1]; i++) {
            const uint64_t r = ad_row(m, f, b->val[i]);
            for (int k = 0; k < C; k++) {
                const int ti = f * C + k;
                float *g = es__gradacc_row(&m->ga[ti], r);
                if (!g) {
                    for (int j = 0; j < FC; j++) es__gradacc_clear(&m->ga[j]);
                    return es__err(&s->err, ES_ENOMEM, "autodim: out of memory growing the gradient scratch of field %d", f);
                }
                es__axpy(g, b->wt[i] * p[ti], go, (size_t)m->cand[k]);
            }
        }
        if (++f == F) f = 0;
    }
    for (int i = 0; i < FC; i++) es__gradacc_apply(&m->ga[i], &m->t[i]);
    ad_redraw(m);
    return ES_OK;
}

static int ad_arch_backward(es_storage *s, const es_batch *b, const float *dout) {
    ad_impl *m = s->impl;
    const int F = m->F, C = m->C, FC = F * C;
    const size_t dim = (size_t)m->dim, PN = (size_t)b->n * (size_t)F;
    float p[AD_MAX_FC];
    ad_weights(m, p);
    double dp[AD_MAX_FC];
    memset(dp, 0, (size_t)FC * sizeof *dp);
    int f = 0;
    for (size_t P = 0; P < PN; P++) {
        const float *go = dout + P * dim;
        for (size_t i = b->off[P]; i < b->off[P + 1]; i++) {
            const uint64_t r = ad_row(m, f, b->val[i]);
            for (int k = 0; k < C; k++) {
                const es_rows *t = &m->t[(size_t)f * C + k];
                const float *w = t->w + r * (size_t)t->dim;
                double d = 0;
                for (int j = 0; j < t->dim; j++) d += (double)go[j] * w[j];
                dp[f * C + k] += (double)b->wt[i] * d;
            }
        }
        if (++f == F) f = 0;
    }
    const double it = 1.0 / m->tau[0];
    for (f = 0; f < F; f++) {
        double sp = 0;
        for (int k = 0; k < C; k++) sp += (double)p[f * C + k] * dp[f * C + k];
        for (int k = 0; k < C; k++) m->galpha[f * C + k] = (float)((double)p[f * C + k] * (dp[f * C + k] - sp) * it);
    }
    const float lr = s->p.opt.lr * m->alpha_lr;
    for (int i = 0; i < FC; i++) {
        const float g = m->galpha[i];
        if (m->acc) {
            m->acc[i] += g * g;
            m->alpha[i] -= lr * g / (sqrtf(m->acc[i]) + s->p.opt.eps);
        } else {
            m->alpha[i] -= lr * g;
        }
    }
    m->st[ST_STEP]++;
    float tau = m->tau0 * expf(-m->anneal * (float)m->st[ST_STEP]);
    m->tau[0] = tau > m->tau_min ? tau : m->tau_min;
    ad_redraw(m);
    return ES_OK;
}

static void ad_set_eval(es_storage *s, int on) { ((ad_impl *)s->impl)->eval = on != 0; }

/* Tables as "field<f>.d<c>" (state "opt.field<f>.d<c>.<x>"), then the
 * architecture state "opt.arch.*" (not served; a checkpoint keeps it). */
static int ad_tensors(es_storage *s, es_tensor_ref *refs, int max) {
    ad_impl *m = s->impl;
    const int FC = m->F * m->C;
    int n = 5 + (m->acc != NULL);
    for (int i = 0; i < FC; i++) n += es__rows_tensors(&m->t[i], NULL, 0);
    if (!refs) return n;
    if (max < n) return ES_ERANGE;
    int at = 0;
    for (int i = 0; i < FC; i++) {
        const int f = i / m->C, c = m->cand[i % m->C];
        int k = es__rows_tensors(&m->t[i], refs + at, max - at);
        snprintf(refs[at].name, sizeof refs[at].name, "field%d.d%d", f, c);
        for (int j = at + 1; j < at + k; j++) {
            char tmp[sizeof refs[j].name];
            snprintf(tmp, sizeof tmp, "%s", refs[j].name + 4);
            snprintf(refs[j].name, sizeof refs[j].name, "opt.field%d.d%d.%.30s", f, c, tmp);
        }
        at += k;
    }
    es__tensor_ref_set(&refs[at++], "opt.arch.alpha", ES_DT_F32, m->alpha, 2, (uint64_t)m->F, (uint64_t)m->C);
    if (m->acc) es__tensor_ref_set(&refs[at++], "opt.arch.acc", ES_DT_F32, m->acc, 2, (uint64_t)m->F, (uint64_t)m->C);
    es__tensor_ref_set(&refs[at++], "opt.arch.gumbel", ES_DT_F32, m->gumbel, 2, (uint64_t)m->F, (uint64_t)m->C);
    es__tensor_ref_set(&refs[at++], "opt.arch.tau", ES_DT_F32, m->tau, 1, (uint64_t)1);
    es__tensor_ref_set(&refs[at++], "opt.arch.rng", ES_DT_U64, m->st + ST_RNG, 1, (uint64_t)4);
    es__tensor_ref_set(&refs[at++], "opt.arch.step", ES_DT_U64, m->st + ST_STEP, 1, (uint64_t)1);
    return at;
}

static void ad_field_stats(es_storage *s, const es_vocab *vocab, int field, es_field_stats *out) {
    (void)vocab;
    ad_impl *m = s->impl;
    memset(out, 0, sizeof *out);
    if (field < 0 || field >= m->F) return;
    out->rows = m->nrows[field];
    out->rows_used = out->collisions = ES_STATS_UNKNOWN;
}

static int ad_search_epochs(const es_storage *s) { return es__storage_opt_int(s, "search_epochs"); }

/* Bytes fielddim needs for min rows of every field at dims d (F fields). */
static double fit_bytes_f(int F, const int *d, const es_vocab *vocab, uint64_t min_rows) {
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
static double fit_bytes(const ad_impl *m, const int *d, const es_vocab *vocab, uint64_t min_rows) {
    return fit_bytes_f(m->F, d, vocab, min_rows);
}

static int ad_derive(es_storage *s, const es_vocab *vocab, const char **method, char *opts, size_t cap, char *json, size_t jcap,
                     es_err *err) {
    ad_impl *m = s->impl;
    const int F = m->F, C = m->C;
    int *d = es__malloc((size_t)F * sizeof *d), *kk = es__malloc((size_t)F * sizeof *kk), *searched = es__malloc((size_t)F * sizeof *d);
    if (!d || !kk || !searched) {
        es__free(d);
        es__free(kk);
        es__free(searched);
        return es__err(err, ES_ENOMEM, "autodim: out of memory");
    }
    int capped = 0;
    for (int f = 0; f < F; f++) {
        int best = 0;
        for (int k = 1; k < C; k++)
            if (m->alpha[f * C + k] > m->alpha[f * C + best]) best = k;
        searched[f] = m->cand[best];
        /* no more dimensions than the field has rows to span */
        const uint64_t n = vocab && f < es_vocab_n_fields(vocab) ? es_vocab_distinct(vocab, f) + 1 : UINT64_MAX;
        while (best > 0 && (uint64_t)m->cand[best] > n) best--;
        capped += m->cand[best] != searched[f];
        kk[f] = best;
        d[f] = m->cand[best];
    }
    const uint64_t min_rows = es__storage_opt_u64(s, "min_rows");
    int shrunk = 0, rc = ES_OK;
    while (fit_bytes(m, d, vocab, min_rows) > s->budget_bytes) {
        int w = -1;
        for (int f = 0; f < F; f++)
            if (kk[f] > 0 && (w < 0 || d[f] > d[w])) w = f;
        if (w < 0) {
            rc = es__err(err, ES_EBUDGET,
                         "autodim: unreachable budget: %.0f bytes cannot hold %llu rows of every field even at the smallest "
                         "candidate dimension %d (needs %.0f bytes); raise --budget or lower min_rows=",
                         s->budget_bytes, (unsigned long long)min_rows, m->cand[0], fit_bytes(m, d, vocab, min_rows));
            break;
        }
        d[w] = m->cand[--kk[w]];
        shrunk++;
    }
    if (rc == ES_OK) {
        *method = "fielddim";
        size_t o = (size_t)snprintf(opts, cap, "dims=");
        for (int f = 0; f < F && o < cap; f++) o += (size_t)snprintf(opts + o, cap - o, f ? ":%d" : "%d", d[f]);
        if (o < cap) o += (size_t)snprintf(opts + o, cap - o, ",seed=%llu", (unsigned long long)s->p.seed);
        /* the result: dims and searched dims; with many fields, what fits
         * (the dims are in the saved model's storage.resolved either way) */
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
                if (j < jcap) j += (size_t)snprintf(json + j, jcap - j, "],");
            }
            if (j < jcap) j += (size_t)snprintf(json + j, jcap - j, "\"fields\":%d,\"capped_fields\":%d,\"shrink_steps\":%d}", F, capped, shrunk);
            if (j < jcap) break;
        }
        if (o >= cap) rc = es__err(err, ES_ERANGE, "autodim: the dims of %d fields do not fit the derived options", F);
    }
    es__free(d);
    es__free(kk);
    es__free(searched);
    return rc;
}

static const es__opt_spec ad_opts[] = {
    ES_OPT_SEED,
    ES_OPT_L("dims", 1, 1 << 16, NULL, 0, "candidate dimensions c0:c1:... ascending, each <= dim (default 2:4:8:16:32 capped at dim)",
             "2:8", ""),
    ES_OPT_L("rows", 1, AD_MAX_ROWS, NULL, ES_OPT_SIZES, "rows of field f's candidate tables r0:r1:... (default: from the budget)",
             "40:50", ""),
    ES_OPT_U("search_epochs", 1, 1000, "1", 0, "passes over the training rows the search makes", "2", ""),
    ES_OPT_F("tau0", 0, 100, "1", ES_OPT_LO_OPEN, "initial Gumbel-softmax temperature", "2", ""),
    ES_OPT_F("tau_min", 0, 100, "0.1", ES_OPT_LO_OPEN, "lowest temperature", "0.2", ""),
    ES_OPT_F("anneal", 0, 1, "0.005", 0, "temperature decay per architecture step: tau0 exp(-anneal t)", "0.01", ""),
    ES_OPT_F("alpha_lr", 0, 1000, "1", ES_OPT_LO_OPEN, "learning rate of the architecture logits, times the table's", "0.5", ""),
    ES_OPT_U("min_rows", 1, UINT32_MAX, "16", 0, "derive: rows every field must get at its dimension (capped at distinct + 1)",
             "4", ""),
};



static int ad_create(es_storage *s, const es_vocab *vocab, es_err *err) {
    const int F = s->p.n_fields;
    int cand[AD_MAX_C], C = 0, rc;
    if (es__storage_opt_given(s, "seed")) s->p.seed = es__storage_opt_u64(s, "seed");
    if ((rc = es__search_dims(s, "autodim", AD_MAX_C, cand, &C, err)) != ES_OK) return rc;
    if ((size_t)F * (size_t)C > AD_MAX_FC)
        return es__err(err, ES_EINVAL, "autodim: %d fields x %d candidates is more than %d architecture weights", F, C, AD_MAX_FC);
    if (s->p.opt.kind != ES_OPT_SGD && s->p.opt.kind != ES_OPT_ADAGRAD && s->p.opt.kind != ES_OPT_ROWWISE_ADAGRAD)
        return es__err(err, ES_EINVAL, "autodim: the tables train with SGD, Adagrad or row-wise Adagrad");
    const size_t aux = 2 * (size_t)F * sizeof(uint64_t), abytes = (size_t)F * (size_t)C * sizeof(float);
    uint64_t D = 0;
    for (int k = 0; k < C; k++) D += (uint64_t)cand[k];
    uint64_t *rows = es__malloc((size_t)F * sizeof *rows);
    if (!rows) return es__err(err, ES_ENOMEM, "autodim: out of memory");
    int found = 0;
    if ((rc = es__storage_opt_list(s, "rows", F, 1, rows, &found, err)) != ES_OK) {
        es__free(rows);
        return rc;
    }
    if (!found && !(s->budget_bytes > 0)) {
        es__free(rows);
        return es__err(err, ES_EINVAL, "autodim: needs a budget: bytes (> 1), or a fraction (0, 1] of the full table");
    } else if (!found) {
        const double u = floor((s->budget_bytes - (double)aux - (double)abytes) / sizeof(float));
        const double R = floor(u / (double)D); /* rows of sum_k c_k floats */
        if (!(R >= (double)F)) {
            es__free(rows);
            return es__err(err, ES_EBUDGET,
                           "autodim: unreachable budget: %.0f bytes cannot hold one row of each of the %d x %d candidate tables "
                           "(needs %.0f bytes; candidates sum to %llu floats per field)",
                           s->budget_bytes, F, C, (double)aux + (double)abytes + 4.0 * (double)F * (double)D, (unsigned long long)D);
        }
        /* the derived table must be able to fit too (at the smallest
         * candidate everywhere): refused now rather than after the search */
        for (int f = 0; f < F; f++) rows[f] = (uint64_t)cand[0];
        int *d0 = (int *)rows; /* F ints fit in F u64 */
        for (int f = 0; f < F; f++) d0[f] = cand[0];
        const uint64_t min_rows = es__storage_opt_u64(s, "min_rows");
        const double need = fit_bytes_f(F, d0, vocab, min_rows);
        if (need > s->budget_bytes) {
            es__free(rows);
            return es__err(err, ES_EBUDGET,
                           "autodim: unreachable budget: %.0f bytes cannot hold %llu rows of every field even at the smallest "
                           "candidate dimension %d (needs %.0f bytes); raise --budget or lower min_rows=",
                           s->budget_bytes, (unsigned long long)min_rows, cand[0], need);
        }
        es__split_rows_vocab(R > (double)AD_MAX_ROWS ? AD_MAX_ROWS : (uint64_t)R, F, vocab, rows, 0);
    }
    ad_impl *m = es__calloc(1, sizeof *m);
    if (!m) {
        es__free(rows);
        return es__err(err, ES_ENOMEM, "autodim: out of memory");
    }
    m->F = F;
    m->C = C;
    m->dim = s->p.dim;
    memcpy(m->cand, cand, sizeof cand);
    m->tau0 = (float)es__storage_opt_f64(s, "tau0");
    m->tau_min = (float)es__storage_opt_f64(s, "tau_min");
    m->anneal = (float)es__storage_opt_f64(s, "anneal");
    m->alpha_lr = (float)es__storage_opt_f64(s, "alpha_lr");
    const size_t FC = (size_t)F * (size_t)C;
    const int has_acc = s->p.opt.kind != ES_OPT_SGD;
    m->t = es__calloc(FC, sizeof *m->t);
    m->ga = es__calloc(FC, sizeof *m->ga);
    m->salt = es__malloc(aux);
    m->falloc = es__calloc(4 * FC + 1, sizeof(float));
    if (!m->t || !m->ga || !m->salt || !m->falloc) {
        ad_free(m);
        es__free(rows);
        return es__err(err, ES_ENOMEM, "autodim: out of memory");
    }
    m->nrows = m->salt + F;
    m->alpha = m->falloc;
    m->acc = has_acc ? m->alpha + FC : NULL;
    m->gumbel = m->alpha + 2 * FC;
    m->galpha = m->alpha + 3 * FC;
    m->tau = m->alpha + 4 * FC;
    m->tau[0] = m->tau0 > m->tau_min ? m->tau0 : m->tau_min;
    if (m->acc)
        for (size_t i = 0; i < FC; i++) m->acc[i] = s->p.opt.init_acc;
    es_rng rng, nr;
    es__rng_seed(&rng, s->p.seed);
    es__rng_seed(&nr, s->p.seed ^ UINT64_C(0x6175746f64696d)); /* the noise stream: "autodim" */
    memcpy(m->st + ST_RNG, nr.s, sizeof nr.s);
    /* the logits are architecture state ("opt.arch.alpha", never served),
     * but their bytes were set aside from the budget above as well */
    size_t pbytes = 0, sbytes = ((2 + (size_t)has_acc) * FC + 1) * sizeof(float) + sizeof m->st; /* as ad_tensors lists them */
    for (int f = 0; f < F && rc == ES_OK; f++) {
        m->salt[f] = es__storage_salt(s->p.seed, f, 0);
        m->nrows[f] = rows[f];
        for (int k = 0; k < C; k++) {
            es_rows *t = &m->t[(size_t)f * C + k];
            if (es__rows_init(t, rows[f], cand[k], &s->p.opt, &rng, s->p.init_scale) != ES_OK ||
                es__gradacc_init(&m->ga[(size_t)f * C + k], ES_MIN((size_t)s->p.max_batch, (size_t)rows[f]), cand[k]) != ES_OK) {
                rc = es__err(err, ES_ENOMEM, "autodim: out of memory for field %d's %llu rows of %d floats", f,
                             (unsigned long long)rows[f], cand[k]);
                break;
            }
            pbytes += es__rows_param_bytes(t);
            sbytes += es__rows_state_bytes(t);
        }
    }
    if (rc != ES_OK) {
        ad_free(m);
        es__free(rows);
        return rc;
    }
    ad_redraw(m);
    s->impl = m;
    s->param_bytes = pbytes;
    s->aux_bytes = aux;
    s->state_bytes = sbytes;
    uint64_t cu[AD_MAX_C];
    for (int k = 0; k < C; k++) cu[k] = (uint64_t)cand[k];
    if ((rc = es__storage_opt_set_u64(s, "seed", s->p.seed, err)) != 0 || (rc = es__storage_opt_set_list(s, "dims", cu, C, 1, err)) != 0 ||
        (rc = es__storage_opt_set_list(s, "rows", rows, F, 1, err)) != 0)
        ad_destroy(s);
    es__free(rows);
    return rc;
}

static const es__staged ad_staged = {
    .search_epochs = ad_search_epochs,
    .arch_backward = ad_arch_backward,
    .set_eval = ad_set_eval,
    .derive = ad_derive,
};

const es_storage_ops es__storage_autodim = {
    .name = "autodim",
    .summary = "AutoDim: search a dimension per field (Gumbel-softmax over candidate dims on validation rows), "
               "then retrain as fielddim (multi-stage)",
    .create = ad_create,
    .lookup = ad_lookup,
    .backward = ad_backward,
    .tensors = ad_tensors,
    .after_load = NULL,
    .field_stats = ad_field_stats,
    .destroy = ad_destroy,
    ES_STORAGE_OPTS(ad_opts),
    .default_budget = ES_DEFAULT_BUDGET,
    .staged = &ad_staged,
};
