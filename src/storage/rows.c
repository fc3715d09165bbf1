/*
 * rows.c — the pieces every row-table storage method shares: a dense row
 * table with the state of its sparse optimizer (SGD, Adagrad, row-wise
 * Adagrad; the update rule itself is es__row_update in optim/), the
 * gradient accumulator that merges duplicate rows of a batch, and the
 * lookup / backward kernels that pool rows into the [n, F, dim] output.
 *
 * Methods differ only in how a (field, key) becomes table rows; they pass
 * that as an es__resolve_fn, called once per (row, field) pair (or per
 * slice of a long multi-valued pair), so the indirect call is amortised
 * over the pair's values and the hot inner loops stay here, in one place.
 */
#include "storage/storage.h"

#include "core/simd.h"

#include <math.h>

/* ---- row tables ------------------------------------------------------------ */

int es__rows_init(es_rows *t, uint64_t n_rows, int dim, const es_optim_params *opt, es_rng *rng, float init_scale) {
    memset(t, 0, sizeof *t);
    if (dim <= 0 || n_rows == 0 || !opt) return ES_EINVAL;
    if (opt->kind != ES_OPT_SGD && opt->kind != ES_OPT_ADAGRAD && opt->kind != ES_OPT_ROWWISE_ADAGRAD &&
        opt->kind != ES_OPT_FTRL)
        return ES_EINVAL;
    size_t elems, wbytes, acc_elems, lbytes = 0, cbytes = 0;
    if (n_rows > SIZE_MAX / 8 || !es__mul_size((size_t)n_rows, (size_t)dim, &elems) ||
        !es__mul_size(elems, sizeof(float), &wbytes) ||
        !es__mul_size((size_t)n_rows, es__row_state_floats(opt->kind, dim), &acc_elems) ||
        acc_elems > SIZE_MAX / sizeof(float))
        return ES_ENOMEM;
    if (opt->row_l2 > 0 && opt->kind != ES_OPT_FTRL) {
        lbytes = (size_t)n_rows * sizeof(int64_t);
        if (opt->row_l2_freq > 0) cbytes = (size_t)n_rows * sizeof(uint32_t);
    }
    t->w = es__alloc_aligned(wbytes);
    t->acc = acc_elems ? es__alloc_aligned(acc_elems * sizeof(float)) : NULL;
    t->last = lbytes ? es__alloc_aligned(lbytes) : NULL;
    t->touch = cbytes ? es__alloc_aligned(cbytes) : NULL;
    if (!t->w || (acc_elems && !t->acc) || (lbytes && !t->last) || (cbytes && !t->touch)) {
        es__free_aligned(t->w);
        es__free_aligned(t->acc);
        es__free_aligned(t->last);
        es__free_aligned(t->touch);
        memset(t, 0, sizeof *t);
        return ES_ENOMEM;
    }
    /* Adagrad kinds start at init_acc; FTRL's z and n at 0.  es__alloc_aligned
     * returns zeroed memory, so zeros are not written: a large table's state
     * then stays untouched (no resident pages) until training uses it, and
     * a model loaded to serve, or quantized, never pays for it. */
    const float a0 = opt->kind == ES_OPT_FTRL ? 0.0f : opt->init_acc;
    if (acc_elems && a0 != 0.0f)
        for (size_t i = 0; i < acc_elems; i++) t->acc[i] = a0;
    t->step = 0;
    t->n_rows = n_rows;
    t->dim = dim;
    t->opt = *opt;
    /* Row-major draws in row order: row r's values are draws r*dim ..
     * r*dim + dim - 1 of the stream, so tables are repeatable per seed. */
    if (init_scale != 0.0f && rng) es__rng_fill_uniform(rng, t->w, elems, init_scale);
    return ES_OK;
}

int es__rows_init_shard(es_rows *t, uint64_t n_rows, int dim, const es_optim_params *opt, es_rng *rng, float init_scale,
                        int rank, int n) {
    return es__rows_init_shard_at(t, n_rows, dim, opt, rng, init_scale, 0, rank, n);
}

int es__rows_init_shard_at(es_rows *t, uint64_t n_rows, int dim, const es_optim_params *opt, es_rng *rng, float init_scale,
                           uint64_t first, int rank, int n) {
    if (n <= 1) return es__rows_init(t, n_rows, dim, opt, rng, init_scale);
    memset(t, 0, sizeof *t);
    if (rank < 0 || rank >= n || dim <= 0) return ES_EINVAL;
    const uint64_t N = (uint64_t)n, r0 = ((uint64_t)rank + N - first % N) % N; /* the first row the rank holds */
    if (r0 >= n_rows) return ES_EINVAL;
    const uint64_t local = (n_rows - r0 + N - 1) / N;
    int rc = es__rows_init(t, local, dim, opt, NULL, init_scale);
    if (rc != ES_OK) return rc;
    t->shard_r0 = r0;
    t->shard_n = N;
    if (init_scale == 0.0f || !rng) return rc;
    /* the whole stream, row by row: row r is draws r*dim .. r*dim + dim - 1
     * as in es__rows_init, kept only by its owner */
    float *scratch = es__malloc((size_t)dim * sizeof(float));
    if (!scratch) {
        es__rows_free(t);
        return ES_ENOMEM;
    }
    for (uint64_t r = 0; r < n_rows; r++) {
        float *dst = r >= r0 && (r - r0) % N == 0 ? t->w + (size_t)((r - r0) / N) * (size_t)dim : scratch;
        es__rng_fill_uniform(rng, dst, (size_t)dim, init_scale);
    }
    es__free(scratch);
    return ES_OK;
}

void es__rows_shift(es_rows *t, float shift) {
    if (shift == 0.0f || !t->w) return;
    size_t elems = (size_t)t->n_rows * (size_t)t->dim;
    for (size_t i = 0; i < elems; i++) t->w[i] += shift;
}

void es__rows_free(es_rows *t) {
    if (!t) return;
    if (!t->view) {
        es__free_aligned(t->w);
        es__free_aligned(t->acc);
    }
    es__free_aligned(t->last);
    es__free_aligned(t->touch);
    es__free_aligned(t->q);
    es__free_aligned(t->qstep);
    es__free_aligned(t->qstep_acc);
    es__free_aligned(t->qtmp);
    es__free_aligned(t->qcount);
    memset(t, 0, sizeof *t);
}

size_t es__rows_param_bytes(const es_rows *t) {
    if (t->prec != ES_PREC_FP32) return (size_t)t->n_rows * es__prec_row_bytes(t->prec, t->dim);
    return (size_t)t->n_rows * (size_t)t->dim * sizeof(float);
}

size_t es__rows_state_bytes(const es_rows *t) {
    if (t->prec != ES_PREC_FP32 && t->qtrain == ES_QTRAIN_NONE) return 0; /* codes only: the optimizer state was freed */
    size_t b = (size_t)t->n_rows * es__row_state_floats(t->opt.kind, t->dim) * sizeof(float);
    if (t->qtrain == ES_QTRAIN_QAT) b += (size_t)t->n_rows * (size_t)t->dim * sizeof(float); /* the master copy */
    if (t->qtrain == ES_QTRAIN_ALPT) /* steps and their accumulators, encoding counts, the rounding seed */
        b += (size_t)t->n_rows * (2 * sizeof(float) + sizeof(uint32_t)) + sizeof(uint64_t);
    if (t->last) b += ((size_t)t->n_rows + 1) * sizeof(int64_t); /* last[] and step */
    if (t->touch) b += (size_t)t->n_rows * sizeof(uint32_t);      /* touch counts */
    return b;
}

static inline float *row_state(const es_rows *t, uint64_t r) {
    const size_t per = es__row_state_floats(t->opt.kind, t->dim);
    return per ? t->acc + (size_t)r * per : NULL;
}

static void alpt_update(es_rows *t, uint64_t r, float *x, const float *g);

void es__rows_update(es_rows *t, uint64_t r, const float *g) {
    /* the update itself is optim/'s (es__row_update, es__row_decay); a
     * table only knows where row r and its state live, and when it was
     * last brought up to date */
    const size_t dim = (size_t)t->dim;
    float *w = t->qtrain == ES_QTRAIN_ALPT ? t->qtmp : t->w + (size_t)r * dim, *acc = row_state(t, r);
    const size_t rb = t->prec != ES_PREC_FP32 ? es__prec_row_bytes(t->prec, t->dim) : 0;
    if (t->qtrain == ES_QTRAIN_ALPT) es__dequant_row(t->prec, t->q + (size_t)r * rb, t->dim, w);
    if (t->last) {
        /* the count stays what it was through the missed steps: the
         * catch-up uses it, then this touch counts */
        es__row_decay(w, acc, t->dim, &t->opt, t->step - t->last[r], t->touch ? t->touch[r] : 0);
        t->last[r] = t->step;
        if (t->touch && t->touch[r] != UINT32_MAX) t->touch[r]++;
    }
    es__row_update(w, acc, g, t->dim, &t->opt);
    if (t->qtrain == ES_QTRAIN_QAT) {
        /* a value that leaves the f16 range cannot be stored; keep the
         * master, clamp what the forward sees (the codes of the row
         * clipped to +-65504) */
        if (es__quant_row(t->prec, w, t->dim, t->q + (size_t)r * rb, NULL) != ES_OK) {
            for (size_t d = 0; d < dim; d++) t->qtmp[d] = isfinite(w[d]) ? fmaxf(-65504.0f, fminf(65504.0f, w[d])) : 0.0f;
            es__quant_row(t->prec, t->qtmp, t->dim, t->q + (size_t)r * rb, NULL);
        }
    } else if (t->qtrain == ES_QTRAIN_ALPT) {
        alpt_update(t, r, w, g);
    }
}

/* ---- training at a precision ------------------------------------------------ */

const char *es__qtrain_name(int mode) {
    return mode == ES_QTRAIN_QAT ? "qat" : mode == ES_QTRAIN_ALPT ? "alpt" : "none";
}

int es__qtrain_parse(const char *s, int *mode) {
    static const char *const names[] = {"none", "qat", "alpt"};
    for (int i = 0; s && i < 3; i++)
        if (!strcmp(s, names[i])) {
            *mode = i;
            return ES_OK;
        }
    return ES_EINVAL;
}

/* ALPT's quantizer range in units of the step: codes minus z span [Qn, Qp]
 * = [-z, z - 1]. */
static void alpt_range(es_precision p, float *qn, float *qp) {
    const float z = (float)(1u << (es__prec_bits(p) - 1));
    *qn = -z;
    *qp = z - 1.0f;
}

/* The smallest step ALPT keeps: 2^-24 is the smallest positive half
 * (a subnormal); steps are held at or above 2^-14, the smallest normal
 * half, so the row's f16 scale keeps 11 significant bits. */
#define ALPT_MIN_STEP 0x1p-14f

/* LSQ's step-size gradient of the quantizer Q(v; s) = s * clip(round(v / s),
 * Qn, Qp) with round passed straight through (Esser et al. 2020):
 * dQ/ds = round(v/s) - v/s inside the range, Qn or Qp at the clip; summed
 * against the row's gradient g and scaled by 1 / sqrt(dim * Qp), LSQ's
 * gradient scale (exported for the finite-difference test). */
double es__alpt_step_grad(es_precision p, const float *v, const float *g, int dim, float s);
double es__alpt_step_grad(es_precision p, const float *v, const float *g, int dim, float s) {
    float qn, qp;
    alpt_range(p, &qn, &qp);
    double gs = 0;
    for (int d = 0; d < dim; d++) {
        double u = (double)v[d] / (double)s, dq;
        if (u <= qn) dq = qn;
        else if (u >= qp) dq = qp;
        else dq = nearbyint(u) - u;
        gs += (double)g[d] * dq;
    }
    return gs / sqrt((double)dim * (double)ES_MAX(qp, 1.0f));
}

/* The stochastic-rounding stream of ALPT's encoding number `count` of
 * local row r: keyed by the table's seed and the row's index in the whole
 * table, so that its draws do not depend on which rows were encoded
 * before it (the update order, which threads and the ranks holding the
 * other rows change). */
static void alpt_rng(const es_rows *t, uint64_t seed, uint64_t r, uint32_t count, es_rng *rng) {
    const uint64_t row = t->shard_n > 1 ? t->shard_r0 + r * t->shard_n : r;
    es__rng_seed(rng, es__hash_u64(count, es__hash_u64(row, seed)));
}

/* ALPT's update of row r, once the optimizer has moved the dequantized row
 * x (t->qtmp) with gradient g: the step s takes one Adagrad step on ln s
 * (scale-free: the first step moves s by about lr, whatever its size)
 * with LSQ's gradient evaluated at the updated values x, then x is
 * re-encoded with the new step and stochastic rounding (unbiased: the
 * expected stored row is x where x is inside the range).  The gradient of
 * the loss at the new point is approximated by g, the one at the old
 * point, so a step costs one forward pass (the paper alternates two).
 * Then the range guard below, then stochastic rounding. */
static void alpt_update(es_rows *t, uint64_t r, float *x, const float *g) {
    const size_t rb = es__prec_row_bytes(t->prec, t->dim);
    float s = t->qstep[r];
    double gs = es__alpt_step_grad(t->prec, x, g, t->dim, s);
    double gl = gs * (double)s; /* d/d ln s */
    if (isfinite(gl) && gl != 0) {
        t->qstep_acc[r] += (float)(gl * gl);
        double ls = log((double)s) - (double)t->opt.lr * gl / (sqrt((double)t->qstep_acc[r]) + 1e-10);
        float ns = (float)exp(ls);
        if (!(ns >= ALPT_MIN_STEP)) ns = ALPT_MIN_STEP;
        if (!(ns <= 256.0f)) ns = 256.0f; /* z * 256 stays a finite half */
        t->qstep[r] = s = ns;
    }
    for (int d = 0; d < t->dim; d++)
        if (!isfinite(x[d])) x[d] = 0.0f;
    /* Range guard: the optimizer's row is never clipped -- when it leaves
     * [-z s, (z - 1) s] the step grows to hold it (LSQ still shrinks it
     * for resolution).  Measured on the Criteo sample (fm, FTRL) it is
     * worth +0.008 AUC at int8 and int4; LSQ alone grows the step too
     * slowly for rows touched a few times (docs/methods.md, "ALPT"). */
    {
        float qn, qp, mx = 0;
        alpt_range(t->prec, &qn, &qp);
        for (int d = 0; d < t->dim; d++) mx = fmaxf(mx, fabsf(x[d]));
        if (mx > fmaxf(qp, 1.0f) * s) t->qstep[r] = s = fminf(mx / fmaxf(qp, 1.0f), 256.0f);
    }
    es_rng rng;
    alpt_rng(t, t->qseed, r, ++t->qcount[r], &rng);
    es__quant_row_step(t->prec, x, t->dim, s, t->q + (size_t)r * rb, &rng);
}

int es__rows_qtrain(es_rows *t, es_precision p, int mode, uint64_t seed, es_err *err) {
    if (t->prec != ES_PREC_FP32 || !t->w) return es__err(err, ES_EINVAL, "the table already holds %s codes", es__prec_name(t->prec));
    if (mode == ES_QTRAIN_QAT ? (p <= ES_PREC_FP32 || p >= ES_PREC_COUNT_)
                              : mode == ES_QTRAIN_ALPT ? (p < ES_PREC_INT16 || p >= ES_PREC_COUNT_) : 1)
        return es__err(err, ES_EINVAL, "training mode %s does not take precision %s (qat: fp16, int16, int8, int4, int2; "
                       "alpt: int16, int8, int4, int2)", es__qtrain_name(mode), es__prec_name(p));
    const size_t rb = es__prec_row_bytes(p, t->dim), dim = (size_t)t->dim;
    size_t bytes;
    if (!es__mul_size((size_t)t->n_rows, rb, &bytes)) return es__err(err, ES_ERANGE, "%s table size overflows", es__prec_name(p));
    uint8_t *q = es__alloc_aligned(bytes);
    float *tmp = es__alloc_aligned(dim * sizeof(float));
    float *st = NULL, *sa = NULL;
    uint32_t *qc = NULL; /* zeroed: no row re-encoded yet */
    if (mode == ES_QTRAIN_ALPT) {
        st = es__alloc_aligned((size_t)t->n_rows * sizeof(float));
        sa = es__alloc_aligned((size_t)t->n_rows * sizeof(float));
        qc = es__alloc_aligned((size_t)t->n_rows * sizeof(uint32_t));
    }
    if (!q || !tmp || (mode == ES_QTRAIN_ALPT && (!st || !sa || !qc))) {
        es__free_aligned(q);
        es__free_aligned(tmp);
        es__free_aligned(st);
        es__free_aligned(sa);
        es__free_aligned(qc);
        return es__err(err, ES_ENOMEM, "out of memory for %zu bytes of %s codes", bytes, es__prec_name(p));
    }
    const uint64_t qseed = seed ^ UINT64_C(0xa1b7a1b7a1b7a1b7);
    float qn, qp;
    alpt_range(p, &qn, &qp);
    for (uint64_t r = 0; r < t->n_rows; r++) {
        const float *x = t->w + (size_t)r * dim;
        int rc;
        if (mode == ES_QTRAIN_QAT) {
            rc = es__quant_row(p, x, t->dim, q + (size_t)r * rb, NULL);
        } else {
            float mx = 0.01f;
            for (size_t d = 0; d < dim; d++) mx = fmaxf(mx, fabsf(x[d]));
            st[r] = fmaxf(mx / fmaxf(qp, 1.0f), ALPT_MIN_STEP);
            es_rng rng;
            alpt_rng(t, qseed, r, 0, &rng);
            rc = es__quant_row_step(p, x, t->dim, st[r], q + (size_t)r * rb, &rng);
        }
        if (rc != ES_OK) {
            es__free_aligned(q);
            es__free_aligned(tmp);
            es__free_aligned(st);
            es__free_aligned(sa);
            es__free_aligned(qc);
            return es__err(err, ES_ERANGE, "row %llu cannot be stored as %s: a value is not finite or beyond the half range",
                           (unsigned long long)r, es__prec_name(p));
        }
    }
    t->q = q;
    t->qtmp = tmp;
    t->prec = p;
    t->qtrain = mode;
    if (mode == ES_QTRAIN_ALPT) {
        t->qstep = st;
        t->qstep_acc = sa;
        t->qcount = qc;
        t->qseed = qseed;
        if (!t->view) es__free_aligned(t->w);
        t->w = NULL;
    }
    return ES_OK;
}

uint64_t es__rows_check_codes(const es_rows *t) {
    if (t->prec == ES_PREC_FP32 || !t->q) return UINT64_MAX;
    const size_t rb = es__prec_row_bytes(t->prec, t->dim);
    for (uint64_t r = 0; r < t->n_rows; r++) {
        const uint8_t *row = t->q + (size_t)r * rb;
        if (t->prec == ES_PREC_FP16) {
            for (int d = 0; d < t->dim; d++) {
                uint16_t h;
                memcpy(&h, row + 2 * (size_t)d, 2);
                if ((h & 0x7c00) == 0x7c00) return r;
            }
            continue;
        }
        /* the last 4 (int16: 8) bytes: scale then bias */
        float sc, bi;
        if (t->prec == ES_PREC_INT16) {
            memcpy(&sc, row + rb - 8, 4);
            memcpy(&bi, row + rb - 4, 4);
        } else {
            uint16_t hs, hb;
            memcpy(&hs, row + rb - 4, 2);
            memcpy(&hb, row + rb - 2, 2);
            sc = es__f16_to_f32(hs);
            bi = es__f16_to_f32(hb);
        }
        if (!(sc >= 0) || !isfinite(sc) || !isfinite(bi)) return r;
    }
    return UINT64_MAX;
}

const float *es__rows_get(const es_rows *t, uint64_t r, float *buf) {
    if (t->prec == ES_PREC_FP32) return t->w + (size_t)r * (size_t)t->dim;
    es__dequant_row(t->prec, t->q + (size_t)r * es__prec_row_bytes(t->prec, t->dim), t->dim, buf);
    return buf;
}

void es__rows_catch_up(es_rows *t) {
    if (!t->last) return;
    const size_t dim = (size_t)t->dim;
    const size_t rb = t->prec != ES_PREC_FP32 ? es__prec_row_bytes(t->prec, t->dim) : 0;
    for (uint64_t r = 0; r < t->n_rows; r++) {
        if (t->step == t->last[r]) continue;
        float *w = t->qtrain == ES_QTRAIN_ALPT ? t->qtmp : t->w + (size_t)r * dim;
        if (t->qtrain == ES_QTRAIN_ALPT) es__dequant_row(t->prec, t->q + (size_t)r * rb, t->dim, w);
        es__row_decay(w, row_state(t, r), t->dim, &t->opt, t->step - t->last[r], t->touch ? t->touch[r] : 0);
        t->last[r] = t->step;
        /* the codes follow the decayed row (a shrink keeps every value in range) */
        if (t->qtrain == ES_QTRAIN_QAT) es__quant_row(t->prec, w, t->dim, t->q + (size_t)r * rb, NULL);
        if (t->qtrain == ES_QTRAIN_ALPT) {
            es_rng rng;
            alpt_rng(t, t->qseed, r, ++t->qcount[r], &rng);
            es__quant_row_step(t->prec, w, t->dim, t->qstep[r], t->q + (size_t)r * rb, &rng);
        }
    }
}

void es__rows_copy_row(es_rows *t, uint64_t dst, uint64_t src) {
    const size_t dim = (size_t)t->dim, per = es__row_state_floats(t->opt.kind, t->dim);
    if (t->q) {
        const size_t rb = es__prec_row_bytes(t->prec, t->dim);
        memcpy(t->q + dst * rb, t->q + src * rb, rb);
    }
    if (t->qstep) {
        t->qstep[dst] = t->qstep[src];
        t->qstep_acc[dst] = t->qstep_acc[src];
        t->qcount[dst] = t->qcount[src];
    }
    if (t->w) memcpy(t->w + dst * dim, t->w + src * dim, dim * sizeof(float));
    if (per) memcpy(t->acc + dst * per, t->acc + src * per, per * sizeof(float));
    if (t->last) t->last[dst] = t->last[src];
    if (t->touch) t->touch[dst] = t->touch[src];
}

int es__rows_encode(const es_rows *t, es_precision p, int encode, uint8_t **qout, es_err *err) {
    *qout = NULL;
    if (p < 0 || p >= ES_PREC_COUNT_) return es__err(err, ES_EINVAL, "precision %d out of range", (int)p);
    if (t->prec != ES_PREC_FP32)
        return es__err(err, ES_EINVAL, "the table already holds %s codes; quantize the fp32 model instead", es__prec_name(t->prec));
    if (p == ES_PREC_FP32) return ES_OK;
    const size_t rb = es__prec_row_bytes(p, t->dim);
    size_t bytes;
    if (!es__mul_size((size_t)t->n_rows, rb, &bytes)) return es__err(err, ES_ERANGE, "%s table size overflows", es__prec_name(p));
    uint8_t *q = es__alloc_aligned(bytes); /* zeroed */
    if (!q) return es__err(err, ES_ENOMEM, "out of memory for %zu bytes of %s codes", bytes, es__prec_name(p));
    if (encode) {
        const size_t dim = (size_t)t->dim;
        for (uint64_t r = 0; r < t->n_rows; r++)
            if (es__quant_row(p, t->w + (size_t)r * dim, t->dim, q + (size_t)r * rb, NULL) != ES_OK) {
                es__free_aligned(q);
                return es__err(err, ES_ERANGE,
                               "row %llu cannot be stored as %s: a value is not finite or beyond the half range (65504)",
                               (unsigned long long)r, es__prec_name(p));
            }
    }
    *qout = q;
    return ES_OK;
}

void es__rows_adopt(es_rows *t, es_precision p, uint8_t *q) {
    if (p == ES_PREC_FP32) return;
    if (!t->view) {
        es__free_aligned(t->w);
        es__free_aligned(t->acc);
    }
    es__free_aligned(t->last);
    es__free_aligned(t->touch);
    t->w = t->acc = NULL;
    t->last = NULL;
    t->touch = NULL;
    t->q = q;
    t->prec = p;
}

int es__rows_quantize(es_rows *t, es_precision p, int encode, es_err *err) {
    uint8_t *q;
    int rc = es__rows_encode(t, p, encode, &q, err);
    if (rc == ES_OK) es__rows_adopt(t, p, q);
    return rc;
}

int es__rows_tensors(es_rows *t, es_tensor_ref *refs, int max) {
    if (t->prec != ES_PREC_FP32 && t->qtrain == ES_QTRAIN_NONE) {
        if (!refs) return 1;
        if (max < 1) return ES_ERANGE;
        es__tensor_ref_set(&refs[0], "weight.q", ES_DT_U8, t->q, 2, t->n_rows, (uint64_t)es__prec_row_bytes(t->prec, t->dim));
        return 1;
    }
    /* training at a precision: the codes are the parameters; QAT's master
     * and ALPT's steps, encoding counts and rounding seed are training
     * state (opt.*) */
    const int nq = t->qtrain == ES_QTRAIN_QAT ? 1 : t->qtrain == ES_QTRAIN_ALPT ? 4 : 0;
    int n = 1 + nq + (t->acc != NULL) + (t->last ? 2 : 0) + (t->touch != NULL);
    if (!refs) return n;
    if (max < n) return ES_ERANGE;
    int i = 0;
    if (t->qtrain == ES_QTRAIN_NONE) {
        es__tensor_ref_set(&refs[i++], "weight", ES_DT_F32, t->w, 2, t->n_rows, (uint64_t)t->dim);
    } else {
        es__tensor_ref_set(&refs[i++], "weight.q", ES_DT_U8, t->q, 2, t->n_rows, (uint64_t)es__prec_row_bytes(t->prec, t->dim));
        if (t->qtrain == ES_QTRAIN_QAT) {
            es__tensor_ref_set(&refs[i++], "opt.master", ES_DT_F32, t->w, 2, t->n_rows, (uint64_t)t->dim);
        } else {
            es__tensor_ref_set(&refs[i++], "opt.qstep", ES_DT_F32, t->qstep, 1, t->n_rows);
            es__tensor_ref_set(&refs[i++], "opt.qstep_acc", ES_DT_F32, t->qstep_acc, 1, t->n_rows);
            es__tensor_ref_set(&refs[i++], "opt.qcount", ES_DT_U32, t->qcount, 1, t->n_rows);
            es__tensor_ref_set(&refs[i++], "opt.qseed", ES_DT_U64, &t->qseed, 1, (uint64_t)1);
        }
    }
    if (t->opt.kind == ES_OPT_ADAGRAD)
        es__tensor_ref_set(&refs[i++], "opt.acc", ES_DT_F32, t->acc, 2, t->n_rows, (uint64_t)t->dim);
    else if (t->opt.kind == ES_OPT_FTRL)
        es__tensor_ref_set(&refs[i++], "opt.ftrl_zn", ES_DT_F32, t->acc, 3, t->n_rows, (uint64_t)2, (uint64_t)t->dim);
    else if (t->acc)
        es__tensor_ref_set(&refs[i++], "opt.acc", ES_DT_F32, t->acc, 1, t->n_rows);
    if (t->last) {
        es__tensor_ref_set(&refs[i++], "opt.last", ES_DT_I64, t->last, 1, t->n_rows);
        es__tensor_ref_set(&refs[i++], "opt.step", ES_DT_I64, &t->step, 1, (uint64_t)1);
    }
    if (t->touch) es__tensor_ref_set(&refs[i++], "opt.touch", ES_DT_U32, t->touch, 1, t->n_rows);
    return n;
}

/* ---- gradient accumulator ---------------------------------------------------- */

static size_t pow2_at_least(size_t n) {
    size_t c = 16;
    while (c < n) c <<= 1;
    return c;
}

int es__gradacc_init(es_gradacc *a, size_t cap, int dim) {
    memset(a, 0, sizeof *a);
    if (dim <= 0) return ES_EINVAL;
    if (cap < 16) cap = 16;
    if (cap > (size_t)INT32_MAX / 4) return ES_ENOMEM;
    size_t gbytes;
    if (!es__mul_size(cap, (size_t)dim * sizeof(float), &gbytes)) return ES_ENOMEM;
    a->map_cap = pow2_at_least(2 * cap);
    a->keys = es__malloc(a->map_cap * sizeof *a->keys);
    a->slot = es__malloc(a->map_cap * sizeof *a->slot);
    a->g = es__malloc(gbytes);
    a->rows = es__malloc(cap * sizeof *a->rows);
    if (!a->keys || !a->slot || !a->g || !a->rows) {
        es__gradacc_free(a);
        return ES_ENOMEM;
    }
    memset(a->slot, 0xff, a->map_cap * sizeof *a->slot);
    a->cap = cap;
    a->dim = dim;
    return ES_OK;
}

void es__gradacc_free(es_gradacc *a) {
    if (!a) return;
    es__free(a->keys);
    es__free(a->slot);
    es__free(a->g);
    es__free(a->rows);
    memset(a, 0, sizeof *a);
}

size_t es__gradacc_bytes(const es_gradacc *a) {
    return a->map_cap * (sizeof *a->keys + sizeof *a->slot) + a->cap * ((size_t)a->dim * sizeof(float) + sizeof *a->rows);
}

static inline size_t ga_home(const es_gradacc *a, uint64_t row) { return (size_t)es__mix64(row) & (a->map_cap - 1); }

void es__gradacc_clear(es_gradacc *a) {
    /* Empty only the positions in use, newest first: every entry's probe
     * path is made of entries inserted before it, so in reverse insertion
     * order each entry is still reachable when it is removed. */
    const size_t mask = a->map_cap - 1;
    for (size_t i = a->n; i-- > 0;) {
        size_t h = ga_home(a, a->rows[i]);
        while (a->slot[h] != (int32_t)i) h = (h + 1) & mask;
        a->slot[h] = -1;
    }
    a->n = 0;
}

/* Double the capacity (amortised; the only allocation backward may do).
 * On failure everything stays as it was. */
static int ga_grow(es_gradacc *a) {
    size_t cap = a->cap * 2, gbytes;
    if (cap > (size_t)INT32_MAX / 4 || !es__mul_size(cap, (size_t)a->dim * sizeof(float), &gbytes)) return ES_ENOMEM;
    size_t map_cap = a->map_cap * 2;
    uint64_t *keys = es__malloc(map_cap * sizeof *keys);
    int32_t *slot = es__malloc(map_cap * sizeof *slot);
    float *g = es__malloc(gbytes);
    uint64_t *rows = es__malloc(cap * sizeof *rows);
    if (!keys || !slot || !g || !rows) {
        es__free(keys);
        es__free(slot);
        es__free(g);
        es__free(rows);
        return ES_ENOMEM;
    }
    memcpy(g, a->g, a->n * (size_t)a->dim * sizeof(float));
    memcpy(rows, a->rows, a->n * sizeof *rows);
    memset(slot, 0xff, map_cap * sizeof *slot);
    es__free(a->keys);
    es__free(a->slot);
    es__free(a->g);
    es__free(a->rows);
    a->keys = keys;
    a->slot = slot;
    a->g = g;
    a->rows = rows;
    a->cap = cap;
    a->map_cap = map_cap;
    const size_t mask = map_cap - 1;
    for (size_t i = 0; i < a->n; i++) {
        size_t h = ga_home(a, rows[i]);
        while (slot[h] >= 0) h = (h + 1) & mask;
        keys[h] = rows[i];
        slot[h] = (int32_t)i;
    }
    return ES_OK;
}

float *es__gradacc_row(es_gradacc *a, uint64_t row) {
    const size_t mask = a->map_cap - 1;
    size_t h = ga_home(a, row);
    while (a->slot[h] >= 0) {
        if (a->keys[h] == row) return a->g + (size_t)a->slot[h] * (size_t)a->dim;
        h = (h + 1) & mask;
    }
    if (a->n == a->cap) {
        if (ga_grow(a) != ES_OK) return NULL;
        return es__gradacc_row(a, row); /* positions changed; probe again */
    }
    size_t i = a->n++;
    a->keys[h] = row;
    a->slot[h] = (int32_t)i;
    a->rows[i] = row;
    float *g = a->g + i * (size_t)a->dim;
    memset(g, 0, (size_t)a->dim * sizeof(float));
    return g;
}

/* The updates of rows[i0, i1) with their summed gradients g[i * dim]. */
static void rows_apply_range(es_rows *t, const uint64_t *rows, const float *g, size_t i0, size_t i1) {
    if (t->prec == ES_PREC_FP32 && t->qtrain == ES_QTRAIN_NONE && !t->last) { /* a plain table: es__rows_update's path */
        es__row_update_range(t->w, t->acc, rows, g, i0, i1, t->dim, &t->opt);
        return;
    }
    /* Rows are scattered over the table: fetch a few updates ahead (for
     * writing) so the read-modify-writes do not wait on memory one by one. */
    enum { AHEAD = 8 };
    const size_t dim = (size_t)t->dim, per = t->acc ? es__row_state_floats(t->opt.kind, t->dim) : 0;
    /* the whole row and the whole state (FFM rows: 10 and 20 lines), up to 2 KB each */
    const size_t wb = ES_MIN(dim * sizeof(float), (size_t)2048), sb = ES_MIN(per * sizeof(float), (size_t)2048);
    for (size_t i = i0; i < i1; i++) {
        if (i + AHEAD < i1) {
            uint64_t r = rows[i + AHEAD];
            const char *w = (const char *)(t->w + r * dim);
            for (size_t o = 0; o < wb; o += 64) __builtin_prefetch(w + o, 1, 1);
            if (sb) {
                const char *st = (const char *)(t->acc + r * per);
                for (size_t o = 0; o < sb; o += 64) __builtin_prefetch(st + o, 1, 1);
            }
        }
        es__rows_update(t, rows[i], g + i * dim);
    }
}

void es__rows_sum_apply(es_rows *t, const uint64_t *rows, float *g, size_t n, void (*sum)(void *ctx, size_t i0, size_t i1),
                        void *ctx) {
    if (t->last) t->step++; /* one step of the table, touched rows or not */
    /* The rows are distinct and an fp32 row's update reads and writes only
     * that row and its state, so splitting them over threads gives the
     * same bits; the precision paths share one scratch row (t->qtmp) and
     * stay on one thread. */
    const int nt = es__threads_get();
    if (nt > 1 && t->qtrain == ES_QTRAIN_NONE && n * (size_t)t->dim >= ES__PAR_FLOATS) {
ES__OMP(omp parallel for schedule(static) num_threads(nt))
        for (int c = 0; c < nt; c++) {
            const size_t i0 = n * (size_t)c / (size_t)nt, i1 = n * (size_t)(c + 1) / (size_t)nt;
            if (sum) sum(ctx, i0, i1);
            rows_apply_range(t, rows, g, i0, i1);
        }
    } else {
        if (sum) sum(ctx, 0, n);
        rows_apply_range(t, rows, g, 0, n);
    }
}

void es__rows_apply(es_rows *t, const uint64_t *rows, const float *g, size_t n) {
    es__rows_sum_apply(t, rows, (float *)g, n, NULL, NULL); /* g is only read without sum */
}

void es__gradacc_apply(es_gradacc *a, es_rows *t) {
    ES_ASSERT(a->dim == t->dim);
    es__rows_apply(t, a->rows, a->g, a->n);
    es__gradacc_clear(a);
}

/* ---- lookup ---------------------------------------------------------------------- */

static inline void prefetch_row(const float *p, int dim) {
    /* Up to 8 cache lines: enough for rows of 128 floats; wider rows are
     * streamed by the hardware prefetcher once the first lines arrive. */
    const char *c = (const char *)p;
    size_t bytes = (size_t)dim * sizeof(float);
    if (bytes > 512) bytes = 512;
    for (size_t o = 0; o < bytes; o += 64) __builtin_prefetch(c + o, 0, 1);
}

/* Prefetch row id of t, fp32 or codes. */
static inline void prefetch_id(const es_rows *t, uint64_t id) {
    if (t->prec == ES_PREC_FP32) {
        prefetch_row(t->w + id * (uint64_t)t->dim, t->dim);
        return;
    }
    const size_t rb = es__prec_row_bytes(t->prec, t->dim);
    const char *c = (const char *)t->q + id * rb;
    for (size_t o = 0; o < ES_MIN(rb, (size_t)512); o += 64) __builtin_prefetch(c + o, 0, 1);
    /* fused rows are not line-aligned (int8 at dim 32: 36 bytes): the row's
     * last byte, with the scale and bias, may be on one more line */
    if (rb <= 512) __builtin_prefetch(c + rb - 1, 0, 1);
}

/* pool_values for a table of codes: each value's row dequantized with
 * es__dequant_axpy onto the output (zeroed first when init), so a single
 * value of weight 1 gives exactly es__dequant_row of its codes. */
static void pool_codes(const es_rows *t, int k, const float *wt, size_t m, const uint64_t *ids, float *restrict o, int init) {
    const int cd = t->dim;
    const size_t rb = es__prec_row_bytes(t->prec, cd);
    if (init) memset(o, 0, (size_t)k * (size_t)cd * sizeof(float));
    for (size_t i = 0; i < m; i++)
        for (int j = 0; j < k; j++) es__dequant_axpy(t->prec, t->q + ids[i * (size_t)k + j] * rb, cd, wt[i], o + (size_t)j * cd);
}

/* A row copied: narrow rows (LR's 1 float, FM's dim + 1) as fixed-size
 * moves, not a call to memcpy a value. */
static inline void copy_row(float *restrict o, const float *restrict r, int cd, size_t row_bytes) {
    if (cd > 32) {
        memcpy(o, r, row_bytes);
        return;
    }
    /* fixed sizes, not a loop: GCC turns a copy loop into a memcpy call */
    int d = 0;
    for (; d + 8 <= cd; d += 8) memcpy(o + d, r + d, 32);
    if (d + 4 <= cd) memcpy(o + d, r + d, 16), d += 4;
    if (d + 2 <= cd) memcpy(o + d, r + d, 8), d += 2;
    if (d < cd) o[d] = r[d];
}

/* Pool values [0, m) of one pair into o[k * cd].  init: the first value
 * writes (copy or scale) instead of accumulating. */
static inline void pool_values(const es_rows *t, int k, const float *wt, size_t m, const uint64_t *ids, float *restrict o,
                               int init) {
    if (t->prec != ES_PREC_FP32) {
        pool_codes(t, k, wt, m, ids, o, init);
        return;
    }
    const int cd = t->dim;
    const size_t row_bytes = (size_t)cd * sizeof(float);
    size_t i = 0;
    if (init) {
        const float w0 = wt[0];
        for (int j = 0; j < k; j++) {
            const float *row = t->w + ids[j] * (uint64_t)cd;
            float *oj = o + (size_t)j * cd;
            if (w0 == 1.0f) {
                copy_row(oj, row, cd, row_bytes);
            } else {
                for (int d = 0; d < cd; d++) oj[d] = w0 * row[d];
            }
        }
        i = 1;
    }
    for (; i < m; i++)
        for (int j = 0; j < k; j++)
            es__axpy(o + (size_t)j * cd, wt[i], t->w + ids[i * (size_t)k + j] * (uint64_t)cd, (size_t)cd);
}

/* A pair with more values than one block holds: resolve and pool it in
 * slices. */
static void pool_long_pair(const es_rows *t, int k, es__resolve_fn fn, const void *ctx, int field, const uint64_t *keys,
                           const float *wt, size_t m, uint64_t *ids, float *o) {
    const size_t slice = ES_RESOLVE_BLOCK / (size_t)k;
    for (size_t s = 0; s < m; s += slice) {
        size_t c = ES_MIN(slice, m - s);
        fn(ctx, field, keys + s, c, ids);
        for (size_t i = 0; i < c * (size_t)k; i++) prefetch_id(t, ids[i]);
        pool_values(t, k, wt + s, c, ids, o, s == 0);
    }
}

void es__rows_lookup(const es_rows *t, int k, es__resolve_fn fn, const void *ctx, const es_batch *b, int r0, int r1,
                     float *out) {
    const int F = b->n_fields;
    const int cd = t->dim;
    const size_t dim = (size_t)k * (size_t)cd;
    const size_t P0 = (size_t)r0 * (size_t)F, P1 = (size_t)r1 * (size_t)F;
    const uint32_t *off = b->off;
    uint64_t ids[ES_RESOLVE_BLOCK];
    size_t P = P0, f = 0;
    while (P < P1) {
        /* Phase 1: resolve the pairs [P, Q) whose rows fit in one block and
         * prefetch those rows, so their loads overlap the hashing of the
         * next pairs and the pooling below finds them in cache. */
        size_t n = 0, Q = P, fq = f;
        while (Q < P1) {
            size_t m = off[Q + 1] - off[Q], cnt = m * (size_t)k;
            if (n + cnt > ES_RESOLVE_BLOCK) break;
            if (m) {
                fn(ctx, (int)fq, b->val + off[Q], m, ids + n);
                for (size_t i = n; i < n + cnt; i++) prefetch_id(t, ids[i]);
            }
            n += cnt;
            Q++;
            if (++fq == (size_t)F) fq = 0;
        }
        if (Q == P) {
            /* One pair longer than a block. */
            size_t a = off[P], m = off[P + 1] - a;
            pool_long_pair(t, k, fn, ctx, (int)f, b->val + a, b->wt + a, m, ids, out + (P - P0) * dim);
            P++;
            if (++f == (size_t)F) f = 0;
            continue;
        }
        /* Phase 2: pool. */
        const uint64_t *id = ids;
        for (; P < Q; P++) {
            float *o = out + (P - P0) * dim;
            size_t a = off[P], m = off[P + 1] - a;
            if (m == 0) {
                memset(o, 0, dim * sizeof(float));
            } else {
                pool_values(t, k, b->wt + a, m, id, o, 1);
                id += m * (size_t)k;
            }
        }
        f = fq;
    }
}

void es__rows_lookup_ids(const es_rows *t, const es_batch *b, const uint64_t *ids, int r0, int r1, float *out) {
    const size_t F = (size_t)b->n_fields, cd = (size_t)t->dim;
    const size_t P0 = (size_t)r0 * F, P1 = (size_t)r1 * F;
    const uint32_t *off = b->off;
    const size_t v1 = off[P1];
    /* about 32 cache lines of rows in flight, 4 to 16 values */
    const size_t lines = (cd * sizeof(float) + 63) / 64, ahead = ES_MAX((size_t)4, ES_MIN((size_t)16, 32 / lines));
    size_t pf = off[P0];
    for (size_t P = P0; P < P1; P++) {
        const size_t a = off[P], m = off[P + 1] - a;
        for (const size_t e = ES_MIN(v1, a + m + ahead); pf < e; pf++) prefetch_id(t, ids[pf]);
        float *o = out + (P - P0) * cd;
        if (m == 0) memset(o, 0, cd * sizeof(float));
        else pool_values(t, 1, b->wt + a, m, ids + a, o, 1);
    }
}

int es__rows_backward(es_rows *t, es_gradacc *ga, int k, es__resolve_fn fn, const void *ctx, const es_batch *b,
                      const float *dout) {
    const int F = b->n_fields;
    const int cd = t->dim;
    const size_t dim = (size_t)k * (size_t)cd;
    const size_t slice = ES_RESOLVE_BLOCK / (size_t)k;
    const size_t PN = (size_t)b->n * (size_t)F;
    uint64_t ids[ES_RESOLVE_BLOCK];
    if (t->prec != ES_PREC_FP32 && t->qtrain == ES_QTRAIN_NONE)
        return ES_EINVAL; /* codes only: callers refuse first (es__storage_check_trainable) */
    es__gradacc_clear(ga);
    int f = 0;
    for (size_t P = 0; P < PN; P++) {
        const float *go = dout + P * dim;
        size_t a = b->off[P], e = b->off[P + 1];
        for (size_t s = a; s < e; s += slice) {
            size_t c = ES_MIN(slice, e - s);
            fn(ctx, f, b->val + s, c, ids);
            for (size_t i = 0; i < c; i++) {
                const float wt = b->wt[s + i];
                for (int j = 0; j < k; j++) {
                    float *g = es__gradacc_row(ga, ids[i * (size_t)k + j]);
                    if (!g) {
                        es__gradacc_clear(ga);
                        return ES_ENOMEM;
                    }
                    es__axpy(g, wt, go + (size_t)j * cd, (size_t)cd);
                }
            }
        }
        if (++f == F) f = 0;
    }
    es__gradacc_apply(ga, t);
    return ES_OK;
}

/* ---- field statistics ------------------------------------------------------------- */

typedef struct {
    uint64_t *keys;
    size_t n, cap;
} key_list;

static void collect_key(uint64_t key, uint64_t count, void *ctx) {
    key_list *l = ctx;
    (void)count;
    if (l->n < l->cap) l->keys[l->n++] = key;
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

static int cmp_tuple(const void *a, const void *b, void *kp) {
    const uint64_t *x = a, *y = b;
    int k = *(const int *)kp;
    for (int j = 0; j < k; j++)
        if (x[j] != y[j]) return (x[j] > y[j]) - (x[j] < y[j]);
    return 0;
}

void es__rows_field_stats(int k, es__resolve_fn fn, const void *ctx, const es_vocab *vocab, int field, uint64_t rows,
                          es_field_stats *out) {
    memset(out, 0, sizeof *out);
    out->rows = rows;
    out->rows_used = out->collisions = ES_STATS_UNKNOWN;
    if (!vocab || field < 0 || field >= es_vocab_n_fields(vocab)) return;
    uint64_t n = es_vocab_distinct(vocab, field);
    out->distinct = n;
    if (n == 0) {
        out->rows_used = out->collisions = 0;
        return;
    }
    size_t tb, cb;
    if (n > SIZE_MAX / 8 || !es__mul_size((size_t)n, (size_t)k * sizeof(uint64_t), &tb) ||
        !es__mul_size((size_t)n, sizeof(uint64_t), &cb))
        return;
    key_list l = {es__malloc(cb), 0, (size_t)n};
    uint64_t *tup = es__malloc(tb);
    uint64_t *col = es__malloc(cb);
    if (!l.keys || !tup || !col) goto done;
    es__vocab_each(vocab, field, collect_key, &l);
    /* Resolve in slices so fn never writes more than a block per call. */
    const size_t slice = ES_RESOLVE_BLOCK / (size_t)k;
    for (size_t s = 0; s < l.n; s += slice) fn(ctx, field, l.keys + s, ES_MIN(slice, l.n - s), tup + s * (size_t)k);
    /* rows used: distinct rows per chunk position, summed. */
    uint64_t used = 0;
    for (int j = 0; j < k; j++) {
        for (size_t i = 0; i < l.n; i++) col[i] = tup[i * (size_t)k + (size_t)j];
        qsort(col, l.n, sizeof *col, cmp_u64);
        for (size_t i = 0; i < l.n; i++) used += (i == 0 || col[i] != col[i - 1]);
    }
    /* collisions: values whose whole row tuple is shared. */
    qsort_r(tup, l.n, (size_t)k * sizeof(uint64_t), cmp_tuple, &k);
    uint64_t coll = 0;
    for (size_t i = 0; i < l.n;) {
        size_t e = i + 1;
        while (e < l.n && cmp_tuple(tup + e * (size_t)k, tup + i * (size_t)k, &k) == 0) e++;
        if (e - i >= 2) coll += e - i;
        i = e;
    }
    out->rows_used = used;
    out->collisions = coll;
done:
    es__free(l.keys);
    es__free(tup);
    es__free(col);
}

/* ---- the distributed step's view of a method's rows --------------------------------- */

es__row_map es__row_map_one(es_rows *t, int k, es__resolve_fn fn, const void *ctx, uint64_t rows) {
    es__row_map m;
    memset(&m, 0, sizeof m);
    m.t[0] = t;
    m.base[1] = rows;
    m.n_t = 1;
    m.k = k;
    m.combine = ES_COMBINE_CAT;
    m.fn = fn;
    m.ctx = ctx;
    m.rows = rows;
    return m;
}
