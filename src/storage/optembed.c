/*
 * optembed.c — the `optembed` storage method: the search stage of OptEmbed
 * (Lyu et al., "OptEmbed: Learning Optimal Embedding Table for
 * Click-through Rate Prediction", CIKM 2022), a multi-stage method
 * (storage.h, es__staged; docs/methods.md "optembed").
 *
 * Supernet.  C candidate dimensions c_0 < ... < c_{C-1} = W <= dim (option
 *   dims=, default 2:4:8:16:32 capped at dim).  Field f owns one hashed
 *   table of rows_f rows of W floats (row es__range(es__hash_u64(key,
 *   salt_f), rows_f), salt_f = es__storage_salt(seed, f, 0): fielddim's
 *   mapping).  A value's row e is read as
 *       out[f] += wt * m(||e||_1 - t_f) * pad(e[0:d_f])
 *   with d_f the field's current prefix dimension (zero-padded to dim) and
 *   t_f the field's learnable threshold ("opt.arch.thresh").
 * (a) Row pruning.  m is the unit step (mask=hard, the default: a row
 *   whose L1 norm is at most t_f reads as zeros).  Its gradient is the
 *   straight-through surrogate of OptEmbed's released code (the
 *   long-tailed estimator of Dynamic Sparse Training):
 *       g(x) = 2 - 4|x|  (|x| <= 0.4),  0.4  (0.4 < |x| <= 1),  0  (else),
 *   so with q = wt * <dout[f][0:d_f], e[0:d_f]>:
 *       dL/dt_f -= g(x) q,    dL/de_j += m wt dout_j (j < d_f) + g(x) q sign(e_j)  (j < W).
 *   mask=smooth replaces the step in the forward by the surrogate
 *   S(x) = integral of g from -1 to x (0 below -1, 1.44 above 1), whose
 *   exact derivative the backward above is: a finite-difference check of
 *   the thresholds and rows checks the surrogate the code implements.
 *   The thresholds also descend the paper's regulariser reg * sum_f
 *   exp(-t_f) (option reg=, default 1e-4; per training step), which
 *   pushes them up, so rows that the loss does not defend fall below.
 *   They train with the weights (no validation rows: no arch_backward),
 *   elementwise Adagrad ("opt.arch.acc"; SGD with SGD) at lr * thresh_lr
 *   (default 0.1: Adagrad's normalised step makes the regulariser climb
 *   at a rate set by the step size, not by reg),
 *   starting at thresh0 (default 0: every row kept).
 * (b) Dimension sampling.  After every training step each field's d_f is
 *   drawn uniformly from the candidates ("opt.arch.dims"), from the
 *   storage's own stream ("opt.arch.rng", "opt.arch.step"), so a batch is
 *   read at one sampled prefix per field (the paper samples per batch).
 *   In evaluation mode (set_eval) d_f is the configuration under
 *   evaluation (W before the evolutionary search).
 * (c) Evolutionary search (search_finish, after the search passes): the
 *   rows each field keeps, kept_f = rows of table f with norm > t_f, give
 *   the derived rows (below); a population of pop= (default 8) per-field
 *   dimension vectors (the first: W everywhere; the others uniform), each
 *   repaired to the budget, is scored by the supernet's validation AUC
 *   (the trainer's evaluate, with the row mask); for generations= (default
 *   4) rounds the better half are kept and the rest replaced by children:
 *   alternately uniform crossover of two kept parents and mutation of one
 *   (each field redrawn with probability mutate=, default 0.2), repaired.
 *   The best vector (ties: the earlier) is the search's result.  Random
 *   draws come from a stream of the seed alone, and the evaluations are
 *   deterministic, so the search is a function of the trained supernet
 *   and the seed; it runs inside the search stage without checkpoints
 *   inside it (a run killed during it resumes from the last checkpoint of
 *   the search passes and runs it again).  Repair: while the derived table
 *   is over the budget, the field of largest dimension (the lowest-numbered
 *   of ties) drops to the next smaller candidate.
 * (d) Derive: `fielddim` with dims= the best vector and rows= the kept
 *   rows, rows_f = max(1, kept_f), capped at distinct_f + 1 with a
 *   vocabulary.  The derived table costs 24 F + 4 sum_f rows_f d_f bytes.
 *   When the kept rows do not fit the budget B even at the smallest
 *   candidate everywhere, every field's rows are scaled by the same factor
 *   (B - 24 F) / (4 c_0 sum rows_f), rounded down, at least one row (then
 *   one row at a time off the largest field while it still does not fit):
 *   the pruning ranks the fields, the budget sets the scale.  A budget
 *   that cannot hold one row of every field at c_0 is ES_EBUDGET, refused
 *   at create, before any training.
 *   Unlike the paper, the retrain does not keep the mask: the derived
 *   table has kept_f hashed rows per field, so the values of pruned rows
 *   share rows with the others instead of reading zeros (the bytes the
 *   mask frees become fewer hashed rows).
 *
 * Sizing from the budget B: the thresholds (4 F bytes) are set aside,
 * salt and rows are lookup arrays (16 F bytes); the rest holds R =
 * floor((B - 16 F - 4 F) / (4 W)) rows, at least one per field
 * (ES_EBUDGET otherwise), split as autodim splits them (one each, then in
 * proportion to distinct_f + 1, capped there, with a vocabulary; equally
 * without), and what the caps leave equally over the fields.  Resolved rows=, dims=, seed and mask are recorded in meta.
 */
#include "core/simd.h"
#include "storage/storage.h"

#include <math.h>

#define OE_MAX_C 8
#define OE_MAX_F 4096
#define OE_MAX_POP 256
#define OE_MAX_ROWS (UINT64_C(1) << 40)
enum { ST_RNG = 0, ST_STEP = 4, ST_N = 5 };

typedef struct {
    int F, dim, C, W, eval, smooth;
    int cand[OE_MAX_C];
    es_rows *t;       /* [F]: [rows_f, W] */
    es_gradacc *ga;   /* [F] */
    uint64_t *salt;   /* [F]; nrows, kept follow in one allocation */
    uint64_t *nrows;
    uint64_t *kept;   /* [F] derived rows (search_finish) */
    /* [F] the sampled prefix dimensions of the current step, as floats
     * (small integers, exact) so that they are f32 training state as
     * autodim's noise is: the storage harness restores that around a
     * gradient check */
    float *cur;
    int *evald;       /* [F] prefix dimensions in evaluation mode; best [F] follows */
    int *best;
    float *thr;       /* [F]; acc [F] (NULL with SGD), cur [F] follow */
    float *acc;
    double *gthr;
    float *falloc;
    uint64_t st[ST_N];
    float thr_lr, reg;
    int searched, n_eval;
    double best_auc;
} oe_impl;

static void oe_free(oe_impl *m) {
    if (!m) return;
    for (int i = 0; m->t && i < m->F; i++) es__rows_free(&m->t[i]);
    for (int i = 0; m->ga && i < m->F; i++) es__gradacc_free(&m->ga[i]);
    es__free(m->t);
    es__free(m->ga);
    es__free(m->salt);
    es__free(m->evald);
    es__free(m->falloc);
    es__free(m->gthr);
    es__free(m);
}

static void oe_destroy(es_storage *s) {
    oe_free(s->impl);
    s->impl = NULL;
}

static inline uint64_t oe_row(const oe_impl *m, int f, uint64_t key) {
    return es__range(es__hash_u64(key, m->salt[f]), m->nrows[f]);
}

/* The straight-through surrogate's derivative g and its integral S. */
static inline float oe_g(float x) {
    const float a = fabsf(x);
    return a > 1.0f ? 0.0f : a > 0.4f ? 0.4f : 2.0f - 4.0f * a;
}
static inline float oe_S(float x) {
    if (x <= -1.0f) return 0.0f;
    if (x <= -0.4f) return 0.4f * (x + 1.0f);
    if (x <= 0.0f) return 0.72f + 2.0f * x + 2.0f * x * x;
    if (x <= 0.4f) return 0.72f + 2.0f * x - 2.0f * x * x;
    if (x <= 1.0f) return 1.2f + 0.4f * (x - 0.4f);
    return 1.44f;
}
static inline float oe_l1(const float *w, int W) {
    float n = 0;
    for (int j = 0; j < W; j++) n += fabsf(w[j]);
    return n;
}
static inline float oe_mask(const oe_impl *m, float x) { return m->smooth ? oe_S(x) : (x > 0.0f ? 1.0f : 0.0f); }

/* New prefix dimensions for the next step, from the storage's stream. */
static void oe_redraw(oe_impl *m) {
    es_rng r;
    memcpy(r.s, m->st + ST_RNG, sizeof r.s);
    for (int f = 0; f < m->F; f++) m->cur[f] = (float)m->cand[es__rng_u64(&r) % (uint64_t)m->C];
    memcpy(m->st + ST_RNG, r.s, sizeof r.s);
}

static void oe_lookup(es_storage *s, const es_batch *b, int r0, int r1, float *out) {
    const oe_impl *m = s->impl;
    const int F = m->F, W = m->W;
    const size_t dim = (size_t)m->dim;
    const size_t P0 = (size_t)r0 * (size_t)F, P1 = (size_t)r1 * (size_t)F;
    int f = 0;
    for (size_t P = P0; P < P1; P++) {
        float *o = out + (P - P0) * dim;
        memset(o, 0, dim * sizeof(float));
        const size_t d = m->eval ? (size_t)m->evald[f] : (size_t)m->cur[f];
        for (size_t i = b->off[P]; i < b->off[P + 1]; i++) {
            const float *w = m->t[f].w + oe_row(m, f, b->val[i]) * (size_t)W;
            const float mk = oe_mask(m, oe_l1(w, W) - m->thr[f]);
            if (mk != 0.0f) es__axpy(o, b->wt[i] * mk, w, d);
        }
        if (++f == F) f = 0;
    }
}

static int oe_backward(es_storage *s, const es_batch *b, const float *dout) {
    oe_impl *m = s->impl;
    const int F = m->F, W = m->W;
    const size_t dim = (size_t)m->dim, PN = (size_t)b->n * (size_t)F;
    for (int i = 0; i < F; i++) {
        es__gradacc_clear(&m->ga[i]);
        m->gthr[i] = 0;
    }
    int f = 0;
    for (size_t P = 0; P < PN; P++) {
        const float *go = dout + P * dim;
        const int d = (int)m->cur[f];
        for (size_t i = b->off[P]; i < b->off[P + 1]; i++) {
            const uint64_t r = oe_row(m, f, b->val[i]);
            const float *w = m->t[f].w + r * (size_t)W;
            const float x = oe_l1(w, W) - m->thr[f], mk = oe_mask(m, x), gx = oe_g(x);
            float *g = es__gradacc_row(&m->ga[f], r);
            if (!g) {
                for (int j = 0; j < F; j++) es__gradacc_clear(&m->ga[j]);
                return es__err(&s->err, ES_ENOMEM, "optembed: out of memory growing the gradient scratch of field %d", f);
            }
            if (mk != 0.0f) es__axpy(g, b->wt[i] * mk, go, (size_t)d);
            if (gx != 0.0f) {
                double dot = 0;
                for (int j = 0; j < d; j++) dot += (double)go[j] * w[j];
                const float q = (float)((double)b->wt[i] * dot) * gx;
                for (int j = 0; j < W; j++) g[j] += w[j] > 0 ? q : w[j] < 0 ? -q : 0.0f;
                m->gthr[f] -= (double)q;
            }
        }
        if (++f == F) f = 0;
    }
    for (int i = 0; i < F; i++) es__gradacc_apply(&m->ga[i], &m->t[i]);
    const float lr = s->p.opt.lr * m->thr_lr;
    for (int i = 0; i < F; i++) {
        const float g = (float)(m->gthr[i] - (double)m->reg * exp(-(double)m->thr[i]));
        if (m->acc) {
            m->acc[i] += g * g;
            m->thr[i] -= lr * g / (sqrtf(m->acc[i]) + s->p.opt.eps);
        } else {
            m->thr[i] -= lr * g;
        }
    }
    m->st[ST_STEP]++;
    oe_redraw(m);
    return ES_OK;
}

static void oe_set_eval(es_storage *s, int on) { ((oe_impl *)s->impl)->eval = on != 0; }

/* Tables as "field<f>" (state "opt.field<f>.<x>"), then the search state
 * "opt.arch.*" (not served; a checkpoint keeps it). */
static int oe_tensors(es_storage *s, es_tensor_ref *refs, int max) {
    oe_impl *m = s->impl;
    int n = 4 + (m->acc != NULL);
    for (int i = 0; i < m->F; i++) n += es__rows_tensors(&m->t[i], NULL, 0);
    if (!refs) return n;
    if (max < n) return ES_ERANGE;
    int at = 0;
    for (int f = 0; f < m->F; f++) {
        int k = es__rows_tensors(&m->t[f], refs + at, max - at);
        snprintf(refs[at].name, sizeof refs[at].name, "field%d", f);
        for (int j = at + 1; j < at + k; j++) {
            char tmp[sizeof refs[j].name];
            snprintf(tmp, sizeof tmp, "%s", refs[j].name + 4);
            snprintf(refs[j].name, sizeof refs[j].name, "opt.field%d.%.30s", f, tmp);
        }
        at += k;
    }
    es__tensor_ref_set(&refs[at++], "opt.arch.thresh", ES_DT_F32, m->thr, 1, (uint64_t)m->F);
    if (m->acc) es__tensor_ref_set(&refs[at++], "opt.arch.acc", ES_DT_F32, m->acc, 1, (uint64_t)m->F);
    es__tensor_ref_set(&refs[at++], "opt.arch.dims", ES_DT_F32, m->cur, 1, (uint64_t)m->F);
    es__tensor_ref_set(&refs[at++], "opt.arch.rng", ES_DT_U64, m->st + ST_RNG, 1, (uint64_t)4);
    es__tensor_ref_set(&refs[at++], "opt.arch.step", ES_DT_U64, m->st + ST_STEP, 1, (uint64_t)1);
    return at;
}

/* A loaded "opt.arch.dims" must name candidates (a prefix wider than a row
 * would read past it). */
static int oe_after_load(es_storage *s, es_err *err) {
    oe_impl *m = s->impl;
    for (int f = 0; f < m->F; f++) {
        int ok = 0;
        for (int k = 0; k < m->C; k++) ok |= m->cur[f] == (float)m->cand[k];
        if (!ok) return es__err(err, ES_EFORMAT, "optembed: opt.arch.dims[%d] = %g is not a candidate dimension", f, (double)m->cur[f]);
    }
    return ES_OK;
}

static void oe_field_stats(es_storage *s, const es_vocab *vocab, int field, es_field_stats *out) {
    (void)vocab;
    oe_impl *m = s->impl;
    memset(out, 0, sizeof *out);
    if (field < 0 || field >= m->F) return;
    out->rows = m->nrows[field];
    out->rows_used = out->collisions = ES_STATS_UNKNOWN;
}

static int oe_search_epochs(const es_storage *s) { return es__storage_opt_int(s, "search_epochs"); }

/* Bytes of the derived fielddim table: 3 F u64 of lookup arrays and
 * rows_f rows of d_f floats. */
static double derived_bytes(int F, const int *d, const uint64_t *rows) {
    double b = 3.0 * (double)F * sizeof(uint64_t);
    for (int f = 0; f < F; f++) b += (double)rows[f] * (double)d[f] * sizeof(float);
    return b;
}

/* The derived rows (kept rows, at least 1, capped at distinct + 1),
 * scaled to fit the budget at the smallest candidate (see the header). */
static void derive_rows(es_storage *s, const es_vocab *vocab) {
    oe_impl *m = s->impl;
    const int F = m->F;
    const double B = s->budget_bytes;
    double sum = 0;
    for (int f = 0; f < F; f++) {
        const float *w = m->t[f].w;
        uint64_t k = 0;
        for (uint64_t r = 0; r < m->nrows[f]; r++) k += oe_l1(w + r * (size_t)m->W, m->W) > m->thr[f];
        if (vocab && f < es_vocab_n_fields(vocab) && k > es_vocab_distinct(vocab, f) + 1) k = es_vocab_distinct(vocab, f) + 1;
        m->kept[f] = k ? k : 1;
        sum += (double)m->kept[f];
    }
    const double fixed = 3.0 * (double)F * sizeof(uint64_t), c0 = (double)m->cand[0] * sizeof(float);
    if (fixed + c0 * sum <= B) return;
    const double scale = (B - fixed) / (c0 * sum);
    double tot = 0;
    for (int f = 0; f < F; f++) {
        double r = floor((double)m->kept[f] * scale);
        m->kept[f] = r >= 1 ? (uint64_t)r : 1;
        tot += (double)m->kept[f];
    }
    while (fixed + c0 * tot > B) { /* rounding up to one row: off the largest field */
        int w = -1;
        for (int f = 0; f < F; f++)
            if (m->kept[f] > 1 && (w < 0 || m->kept[f] > m->kept[w])) w = f;
        if (w < 0) break; /* one row each: create refused budgets below that */
        m->kept[w]--;
        tot -= 1;
    }
}

/* Repair candidate indices k[F] to the budget (see the header). */
static void repair(const oe_impl *m, int *k, int *d, double B) {
    for (int f = 0; f < m->F; f++) d[f] = m->cand[k[f]];
    while (derived_bytes(m->F, d, m->kept) > B) {
        int w = -1;
        for (int f = 0; f < m->F; f++)
            if (k[f] > 0 && (w < 0 || d[f] > d[w])) w = f;
        if (w < 0) break;
        d[w] = m->cand[--k[w]];
    }
}

static int oe_search_finish(es_storage *s, int (*evaluate)(void *ctx, double *auc), void *ctx, es_err *err) {
    oe_impl *m = s->impl;
    const int F = m->F, C = m->C, P = es__storage_opt_int(s, "pop"), G = es__storage_opt_int(s, "generations");
    const double mut = es__storage_opt_f64(s, "mutate"), B = s->budget_bytes;
    derive_rows(s, NULL); /* the vocabulary caps are applied by derive */
    int *k = es__malloc((size_t)P * (size_t)F * sizeof *k), *d = es__malloc((size_t)F * sizeof *d), *ord = es__malloc((size_t)P * sizeof *ord);
    double *fit = es__malloc((size_t)P * sizeof *fit);
    int *tmp = es__malloc((size_t)P * (size_t)F * sizeof *tmp);
    if (!k || !d || !ord || !fit || !tmp) {
        es__free(k), es__free(d), es__free(ord), es__free(fit), es__free(tmp);
        return es__err(err, ES_ENOMEM, "optembed: out of memory for the evolutionary search");
    }
    es_rng r;
    es__rng_seed(&r, s->p.seed ^ UINT64_C(0x6f7074656d626564)); /* "optembed" */
    int rc = ES_OK;
    m->n_eval = 0;
/* score individual i (repaired) into fit[i] */
#define OE_SCORE(i)                                                                   \
    do {                                                                              \
        repair(m, k + (size_t)(i) * F, d, B);                                         \
        memcpy(m->evald, d, (size_t)F * sizeof *d);                                   \
        if ((rc = evaluate(ctx, &fit[i])) != ES_OK) goto done;                        \
        if (!(fit[i] == fit[i])) fit[i] = 0; /* NaN: no positives or negatives */     \
        m->n_eval++;                                                                  \
    } while (0)
    for (int i = 0; i < P; i++) {
        for (int f = 0; f < F; f++) k[(size_t)i * F + f] = i == 0 ? C - 1 : (int)(es__rng_u64(&r) % (uint64_t)C);
        OE_SCORE(i);
    }
    const int K = P / 2 > 0 ? P / 2 : 1;
    for (int g = 0; g <= G; g++) {
        /* rank: fitness descending, ties by position (stable insertion sort) */
        for (int i = 0; i < P; i++) {
            int j = i;
            while (j > 0 && fit[ord[j - 1]] < fit[i]) ord[j] = ord[j - 1], j--;
            ord[j] = i;
        }
        if (g == G) break;
        /* the kept half to the front, in rank order */
        double kf[OE_MAX_POP];
        for (int i = 0; i < K; i++) {
            memcpy(tmp + (size_t)i * F, k + (size_t)ord[i] * F, (size_t)F * sizeof *k);
            kf[i] = fit[ord[i]];
        }
        memcpy(k, tmp, (size_t)K * F * sizeof *k);
        memcpy(fit, kf, (size_t)K * sizeof *fit);
        for (int i = K; i < P; i++) {
            int *c = k + (size_t)i * F;
            if ((i - K) % 2 == 0 && K >= 2) { /* uniform crossover of two kept parents */
                const int a = (int)(es__rng_u64(&r) % (uint64_t)K);
                int b = (int)(es__rng_u64(&r) % (uint64_t)(K - 1));
                if (b >= a) b++;
                for (int f = 0; f < F; f++) c[f] = (es__rng_u64(&r) & 1 ? k[(size_t)a * F + f] : k[(size_t)b * F + f]);
            } else { /* mutation of one kept parent */
                const int a = (int)(es__rng_u64(&r) % (uint64_t)K);
                for (int f = 0; f < F; f++) {
                    c[f] = k[(size_t)a * F + f];
                    if (es__rng_uniform(&r) < mut) c[f] = (int)(es__rng_u64(&r) % (uint64_t)C);
                }
            }
            OE_SCORE(i);
        }
    }
#undef OE_SCORE
    repair(m, k + (size_t)ord[0] * F, m->best, B);
    m->best_auc = fit[ord[0]];
    m->searched = 1;
done:
    for (int f = 0; f < F; f++) m->evald[f] = m->W;
    es__free(k), es__free(d), es__free(ord), es__free(fit), es__free(tmp);
    return rc;
}

static int oe_derive(es_storage *s, const es_vocab *vocab, const char **method, char *opts, size_t cap, char *json, size_t jcap,
                     es_err *err) {
    oe_impl *m = s->impl;
    const int F = m->F;
    if (!m->searched) { /* no evolutionary search ran: the widest prefixes, repaired */
        int *k = es__malloc((size_t)F * sizeof *k);
        if (!k) return es__err(err, ES_ENOMEM, "optembed: out of memory");
        derive_rows(s, vocab);
        for (int f = 0; f < F; f++) k[f] = m->C - 1;
        repair(m, k, m->best, s->budget_bytes);
        es__free(k);
        m->best_auc = NAN;
    } else if (vocab) { /* the vocabulary's caps: fewer rows never break the budget */
        for (int f = 0; f < F && f < es_vocab_n_fields(vocab); f++)
            if (m->kept[f] > es_vocab_distinct(vocab, f) + 1) m->kept[f] = es_vocab_distinct(vocab, f) + 1;
    }
    const double bytes = derived_bytes(F, m->best, m->kept);
    if (bytes > s->budget_bytes)
        return es__err(err, ES_EBUDGET,
                       "optembed: unreachable budget: %.0f bytes cannot hold the derived table (%.0f bytes with one row per field at "
                       "dimension %d); raise --budget",
                       s->budget_bytes, bytes, m->cand[0]);
    *method = "fielddim";
    size_t o = (size_t)snprintf(opts, cap, "dims=");
    for (int f = 0; f < F && o < cap; f++) o += (size_t)snprintf(opts + o, cap - o, f ? ":%d" : "%d", m->best[f]);
    if (o < cap) o += (size_t)snprintf(opts + o, cap - o, ",rows=");
    for (int f = 0; f < F && o < cap; f++) o += (size_t)snprintf(opts + o, cap - o, f ? ":%llu" : "%llu", (unsigned long long)m->kept[f]);
    if (o < cap) o += (size_t)snprintf(opts + o, cap - o, ",seed=%llu", (unsigned long long)s->p.seed);
    if (o >= cap) return es__err(err, ES_ERANGE, "optembed: the dims and rows of %d fields do not fit the derived options", F);
    /* dims and kept rows; with many fields, what fits (both are in the
     * saved model's storage.resolved either way) */
    for (int form = 0; form < 3; form++) {
        size_t j = (size_t)snprintf(json, jcap, "{");
        if (form < 2) {
            j += (size_t)snprintf(json + j, jcap - j, "\"dims\":[");
            for (int f = 0; f < F && j < jcap; f++) j += (size_t)snprintf(json + j, jcap - j, f ? ",%d" : "%d", m->best[f]);
            if (j < jcap) j += (size_t)snprintf(json + j, jcap - j, "],");
        }
        if (form == 0) {
            if (j < jcap) j += (size_t)snprintf(json + j, jcap - j, "\"kept_rows\":[");
            for (int f = 0; f < F && j < jcap; f++)
                j += (size_t)snprintf(json + j, jcap - j, f ? ",%llu" : "%llu", (unsigned long long)m->kept[f]);
            if (j < jcap) j += (size_t)snprintf(json + j, jcap - j, "],");
        }
        if (j < jcap)
            j += (size_t)snprintf(json + j, jcap - j, "\"fields\":%d,\"evaluations\":%d,\"best_valid_auc\":%.6f,\"derived_bytes\":%.0f}", F,
                                  m->n_eval, m->best_auc == m->best_auc ? m->best_auc : 0.0, bytes);
        if (j < jcap) break;
    }
    return ES_OK;
}

static const es__opt_spec oe_opts[] = {
    ES_OPT_SEED,
    ES_OPT_L("dims", 1, 1 << 16, NULL, 0, "candidate dimensions c0:c1:... ascending, each <= dim (default 2:4:8:16:32 capped at dim)",
             "2:8", ""),
    ES_OPT_L("rows", 1, OE_MAX_ROWS, NULL, ES_OPT_SIZES, "rows of field f's supernet table r0:r1:... (default: from the budget)", "40:50",
             ""),
    ES_OPT_E("mask", "hard|smooth", "hard", 0,
             "row mask in the forward: hard (unit step on ||e||_1 - t) or smooth (its straight-through surrogate; gradient checks)",
             "smooth", ""),
    ES_OPT_U("search_epochs", 1, 1000, "1", 0, "passes over the training rows the supernet trains", "2", ""),
    ES_OPT_F("thresh0", -100, 100, "0", 0, "initial per-field threshold on a row's L1 norm", "0.5", ""),
    ES_OPT_F("thresh_lr", 0, 1000, "0.1", ES_OPT_LO_OPEN, "learning rate of the thresholds, times the table's", "0.5", ""),
    ES_OPT_F("reg", 0, 100, "0.0001", 0, "threshold regulariser reg * sum_f exp(-t_f), pushing the thresholds up", "0.01", ""),
    ES_OPT_U("pop", 2, OE_MAX_POP, "8", 0, "evolutionary search: population of per-field dimension vectors", "4", ""),
    ES_OPT_U("generations", 0, 1000, "4", 0, "evolutionary search: generations after the first population", "2", ""),
    ES_OPT_F("mutate", 0, 1, "0.2", 0, "evolutionary search: probability a mutated child redraws a field's dimension", "0.5", ""),
};



static int oe_create(es_storage *s, const es_vocab *vocab, es_err *err) {
    const int F = s->p.n_fields;
    int cand[OE_MAX_C], C = 0, rc;
    if (es__storage_opt_given(s, "seed")) s->p.seed = es__storage_opt_u64(s, "seed");
    if ((rc = es__search_dims(s, "optembed", OE_MAX_C, cand, &C, err)) != ES_OK) return rc;
    if (F > OE_MAX_F) return es__err(err, ES_EINVAL, "optembed: %d fields, more than %d", F, OE_MAX_F);
    if (s->p.opt.kind != ES_OPT_SGD && s->p.opt.kind != ES_OPT_ADAGRAD && s->p.opt.kind != ES_OPT_ROWWISE_ADAGRAD)
        return es__err(err, ES_EINVAL, "optembed: the tables train with SGD, Adagrad or row-wise Adagrad");
    const int W = cand[C - 1];
    const size_t aux = 2 * (size_t)F * sizeof(uint64_t), tbytes = (size_t)F * sizeof(float);
    uint64_t *rows = es__malloc((size_t)F * sizeof *rows);
    if (!rows) return es__err(err, ES_ENOMEM, "optembed: out of memory");
    int found = 0;
    if ((rc = es__storage_opt_list(s, "rows", F, 1, rows, &found, err)) != ES_OK) {
        es__free(rows);
        return rc;
    }
    if (!found && !(s->budget_bytes > 0)) {
        es__free(rows);
        return es__err(err, ES_EINVAL, "optembed: needs a budget: bytes (> 1), or a fraction (0, 1] of the full table");
    } else if (!found) {
        const double R = floor(floor((s->budget_bytes - (double)aux - (double)tbytes) / sizeof(float)) / (double)W);
        if (!(R >= (double)F)) {
            es__free(rows);
            return es__err(err, ES_EBUDGET,
                           "optembed: unreachable budget: %.0f bytes cannot hold one supernet row of %d floats for each of the %d "
                           "fields (needs %.0f bytes)",
                           s->budget_bytes, W, F, (double)aux + (double)tbytes + 4.0 * (double)F * (double)W);
        }
        /* the derived table must fit too (one row per field at c0) */
        const double need = 3.0 * (double)F * sizeof(uint64_t) + 4.0 * (double)F * (double)cand[0];
        if (need > s->budget_bytes) {
            es__free(rows);
            return es__err(err, ES_EBUDGET,
                           "optembed: unreachable budget: %.0f bytes cannot hold one row of every field at the smallest candidate "
                           "dimension %d (needs %.0f bytes); raise --budget",
                           s->budget_bytes, cand[0], need);
        }
        es__split_rows_vocab(R > (double)OE_MAX_ROWS ? OE_MAX_ROWS : (uint64_t)R, F, vocab, rows, 1);
    }
    oe_impl *m = es__calloc(1, sizeof *m);
    if (!m) {
        es__free(rows);
        return es__err(err, ES_ENOMEM, "optembed: out of memory");
    }
    m->F = F;
    m->C = C;
    m->W = W;
    m->dim = s->p.dim;
    memcpy(m->cand, cand, sizeof cand);
    m->smooth = es__storage_opt_enum(s, "mask") == 1;
    m->thr_lr = (float)es__storage_opt_f64(s, "thresh_lr");
    m->reg = (float)es__storage_opt_f64(s, "reg");
    const int has_acc = s->p.opt.kind != ES_OPT_SGD;
    m->t = es__calloc((size_t)F, sizeof *m->t);
    m->ga = es__calloc((size_t)F, sizeof *m->ga);
    m->salt = es__calloc(3 * (size_t)F, sizeof(uint64_t));
    m->evald = es__calloc(2 * (size_t)F, sizeof(int));
    m->falloc = es__calloc(3 * (size_t)F, sizeof(float));
    m->gthr = es__calloc((size_t)F, sizeof(double));
    if (!m->t || !m->ga || !m->salt || !m->evald || !m->falloc || !m->gthr) {
        oe_free(m);
        es__free(rows);
        return es__err(err, ES_ENOMEM, "optembed: out of memory");
    }
    m->nrows = m->salt + F;
    m->kept = m->salt + 2 * F;
    m->best = m->evald + F;
    m->thr = m->falloc;
    m->acc = has_acc ? m->falloc + F : NULL;
    m->cur = m->falloc + 2 * F;
    const float t0 = (float)es__storage_opt_f64(s, "thresh0");
    for (int f = 0; f < F; f++) {
        m->thr[f] = t0;
        if (m->acc) m->acc[f] = s->p.opt.init_acc;
        m->evald[f] = m->best[f] = W;
    }
    es_rng rng, nr;
    es__rng_seed(&rng, s->p.seed);
    es__rng_seed(&nr, s->p.seed ^ UINT64_C(0x6f7074656d626473)); /* the sampling stream */
    memcpy(m->st + ST_RNG, nr.s, sizeof nr.s);
    size_t pbytes = 0, sbytes = (size_t)(2 + has_acc) * (size_t)F * sizeof(float) + sizeof m->st; /* as oe_tensors lists them */
    for (int f = 0; f < F && rc == ES_OK; f++) {
        m->salt[f] = es__storage_salt(s->p.seed, f, 0);
        m->nrows[f] = rows[f];
        if (es__rows_init(&m->t[f], rows[f], W, &s->p.opt, &rng, s->p.init_scale) != ES_OK ||
            es__gradacc_init(&m->ga[f], ES_MIN((size_t)s->p.max_batch, (size_t)rows[f]), W) != ES_OK) {
            rc = es__err(err, ES_ENOMEM, "optembed: out of memory for field %d's %llu rows of %d floats", f, (unsigned long long)rows[f],
                         W);
            break;
        }
        pbytes += es__rows_param_bytes(&m->t[f]);
        sbytes += es__rows_state_bytes(&m->t[f]);
    }
    if (rc != ES_OK) {
        oe_free(m);
        es__free(rows);
        return rc;
    }
    oe_redraw(m);
    s->impl = m;
    s->param_bytes = pbytes;
    s->aux_bytes = aux;
    s->state_bytes = sbytes;
    uint64_t cu[OE_MAX_C];
    for (int k = 0; k < C; k++) cu[k] = (uint64_t)cand[k];
    if ((rc = es__storage_opt_set_u64(s, "seed", s->p.seed, err)) != 0 || (rc = es__storage_opt_set_list(s, "dims", cu, C, 1, err)) != 0 ||
        (rc = es__storage_opt_set_list(s, "rows", rows, F, 1, err)) != 0 ||
        (rc = es__storage_opt_set(s, "mask", err, "%s", m->smooth ? "smooth" : "hard")) != 0)
        oe_destroy(s);
    es__free(rows);
    return rc;
}

static const es__staged oe_staged = {
    .search_epochs = oe_search_epochs,
    .arch_backward = NULL,
    .set_eval = oe_set_eval,
    .derive = oe_derive,
    .search_finish = oe_search_finish,
};

const es_storage_ops es__storage_optembed = {
    .name = "optembed",
    .summary = "OptEmbed: learnable row pruning (per-field L1-norm thresholds) and a supernet of sampled dimension prefixes, "
               "an evolutionary search of a dimension per field on validation rows, then retrain as fielddim (multi-stage)",
    .create = oe_create,
    .lookup = oe_lookup,
    .backward = oe_backward,
    .tensors = oe_tensors,
    .after_load = oe_after_load,
    .field_stats = oe_field_stats,
    .destroy = oe_destroy,
    ES_STORAGE_OPTS(oe_opts),
    .default_budget = ES_DEFAULT_BUDGET,
    .staged = &oe_staged,
};
