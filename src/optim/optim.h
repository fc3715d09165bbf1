/*
 * optim.h — the optimizer layer, below both storage (embedding tables) and
 * models (dense nets): the optimizer kinds and their parameters, the
 * sparse row update every embedding table uses (es__row_update), the dense
 * update kernels, and the one stateful dense optimizer (es__dense_opt)
 * that every dense parameter group uses: the net's layers (model/net.c),
 * DHE's MLPs (storage/dhe.c) and MDE's projections (storage/mde.c).
 * Nothing in this folder includes storage/ or model/; only core/.
 */
#ifndef ES_OPTIM_H
#define ES_OPTIM_H

#include "core/core.h"

#include <stddef.h>
#include <stdint.h>

/* ---- optimizer kinds (persisted by number in file metadata: append-only) -- */
typedef enum {
    ES_OPT_SGD = 0,
    ES_OPT_ADAGRAD = 1,          /* per-element accumulator */
    ES_OPT_ROWWISE_ADAGRAD = 2,  /* one accumulator per row: mean of g^2 over the row */
    ES_OPT_ADAM = 3,             /* dense parameters only (models, DHE MLPs) */
    ES_OPT_FTRL = 4              /* FTRL-proximal, per coordinate; tables of plain rows only */
} es_optim;

typedef struct es_optim_params {
    es_optim kind;
    float lr;
    float eps;         /* adagrad/adam epsilon (default 1e-8 adam, 1e-10 adagrad) */
    float beta1, beta2;/* adam */
    float init_acc;    /* adagrad initial accumulator (default 0) */
    /* FTRL-proximal (McMahan et al. 2013): alpha (the learning rate of the
     * per-coordinate schedule alpha / (beta + sqrt(n))), beta, and the L1
     * and L2 strengths of the closed form.  Defaults 0.05, 0.01, 0, 0. */
    float ftrl_alpha, ftrl_beta, ftrl_l1, ftrl_l2;
    /* Lazy L2 on table rows (>= 0; default 0 = off): a row's weight decay
     * is applied when the row is next touched, with the exact catch-up
     * for the steps it missed (es__row_decay).  Not with FTRL (its L2 is
     * ftrl_l2) and not used by dense optimizers. */
    float row_l2;
    /* Frequency-aware lazy L2 (>= 0; default 0 = off; needs row_l2 > 0):
     * the exponent p of the per-row strength row_l2 * (1 + c)^-p, c the
     * row's touch count (es__row_decay).  0.5 is the usual setting. */
    float row_l2_freq;
} es_optim_params;

/* The defaults of the FTRL fields, row_l2 and row_l2_freq (the rest of p is left). */
void es__optim_ftrl_defaults(es_optim_params *p);

/* ---- dense optimizers (optim.c) ------------------------------------------------------
 * One update of count parameters w from their gradients g (g is read, not
 * cleared).  wd > 0 adds L2 weight decay to the gradient first
 * (g' = g + wd * w, the PyTorch `weight_decay` convention); callers pass 0
 * for biases.  Elementwise, so any split over threads gives the same bits.
 * The `_ref` twins are the portable scalar loops; the plain names dispatch
 * to AVX-512/AVX2 versions that produce identical results. */
/* w -= lr * g' */
void es__sgd_update(float *w, const float *g, size_t count, float lr, float wd);
/* acc += g'^2;  w -= lr * g' / (sqrt(acc) + eps)   (torch.optim.Adagrad) */
void es__adagrad_update(float *w, const float *g, float *acc, size_t count, float lr, float eps, float wd);
void es__adagrad_update_ref(float *w, const float *g, float *acc, size_t count, float lr, float eps, float wd);
/* Step t >= 1 (already incremented for this update), torch.optim.Adam:
 *   m = b1 m + (1 - b1) g';  v = b2 v + (1 - b2) g'^2;
 *   w -= (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps). */
void es__adam_update(float *w, const float *g, float *m, float *v, size_t count, float lr, float beta1, float beta2,
                     float eps, float wd, int64_t t);
void es__adam_update_ref(float *w, const float *g, float *m, float *v, size_t count, float lr, float beta1,
                         float beta2, float eps, float wd, int64_t t);

/* ---- sparse row update (optim.c) ------------------------------------------------------
 * One update of one embedding row w[dim] from its gradient g[dim] (read,
 * not cleared), o->lr and o->eps:
 *   SGD               w -= lr g                                  (acc unused, may be NULL)
 *   ADAGRAD           acc[d] += g[d]^2;  w[d] -= lr g[d] / (sqrt(acc[d]) + eps)
 *                     (acc: the row's dim accumulators)
 *   ROWWISE_ADAGRAD   acc[0] += mean_d g[d]^2;  w -= lr / (sqrt(acc[0]) + eps) g
 *                     (acc: the row's one accumulator; the FBGEMM/TorchRec rule)
 *   FTRL              per coordinate, with z = acc[0..dim), n = acc[dim..2 dim)
 *                     (McMahan et al. 2013, Algorithm 1; alpha = ftrl_alpha ...):
 *                       sigma = (sqrt(n + g^2) - sqrt(n)) / alpha
 *                       z += g - sigma w;  n += g^2
 *                       w = 0 if |z| <= l1, else
 *                           -(z - sgn(z) l1) / ((beta + sqrt(n)) / alpha + l2)
 *                     w stays materialised (the table's rows), so lookups are a
 *                     plain row read; until a coordinate's first update it
 *                     holds its initial value (alphaFM's convention).
 * ADAM is not a row optimizer (asserts).  w, acc and g must not overlap. */
void es__row_update(float *w, float *acc, const float *g, int dim, const es_optim_params *o);
/* The same with plain scalar loops (the SGD and row-wise paths above go
 * through es__axpy / es__dot); equal bits with ES_SIMD=ref. */
void es__row_update_ref(float *w, float *acc, const float *g, int dim, const es_optim_params *o);

/* es__row_update of rows[i0 .. i1) of a plain fp32 table in order: row r
 * is w + r dim with state acc + r es__row_state_floats(kind, dim), its
 * gradient g + i dim.  One call for the range (the rows of a step): the
 * same bits as the calls one row at a time, without a call and a switch a
 * row (LR's rows are one float); the rows and states a few places ahead
 * are prefetched for writing. */
void es__row_update_range(float *w, float *acc, const uint64_t *rows, const float *g, size_t i0, size_t i1, int dim,
                          const es_optim_params *o);
/* Floats of row-optimizer state per row of dim: Adagrad dim, row-wise 1,
 * FTRL 2 dim (z then n), SGD 0. */
size_t es__row_state_floats(es_optim kind, int dim);

/* Lazy L2 catch-up (o->row_l2 > 0, not FTRL): bring row w[dim] through
 * `missed` >= 0 steps of weight decay it did not take.  The eager rule it
 * stands for, applied to every row at every step before the gradient step
 * of the touched rows, is decoupled weight decay (as AdamW decouples it),
 * the same for SGD, Adagrad and row-wise Adagrad:
 *   w *= 1 - lr l2
 * It does not divide by the accumulator: the coupled form
 * 1 - lr l2 / (sqrt(acc) + eps) goes negative, and the weights blow up,
 * for every row whose accumulator is still near 0 (rows seldom or never
 * touched), which is most rows of a sparse table.  The factor is the same
 * in every missed step, so the catch-up is (1 - lr l2)^missed, computed
 * in double.  A touched row at step t last brought up to date at step s
 * takes missed = t - s (the steps s+1 .. t, this one's decay included)
 * and then es__row_update.  acc is unused (kept for the call sites).
 *
 * Frequency-aware (o->row_l2_freq = p > 0): the strength of row r is
 *   l2_r = l2 (1 + c_r)^-p,   w *= 1 - lr l2_r   at every step,
 * where c_r (`touches`) is the number of steps that have touched the row
 * so far (its gradient updates; es_rows keeps it per row).  The count
 * changes only when the row is touched, so between two touches the factor
 * is constant and the catch-up stays exact: (1 - lr l2_r)^missed with the
 * count as it was before this touch; the caller increments the count after
 * the update.  Rare rows (small c) get nearly the full l2, a row touched c
 * times about l2 / c^p.  `touches` is ignored when p = 0. */
void es__row_decay(float *w, const float *acc, int dim, const es_optim_params *o, int64_t missed, uint32_t touches);
/* The per-step factor of that decay, 1 - lr l2 (1 + touches)^-p, in double
 * (1 when there is no lazy L2). */
double es__row_decay_factor(const es_optim_params *o, uint32_t touches);

/* ---- the dense optimizer (optim.c) --------------------------------------------------
 * The optimizer of one set of dense parameters: the caller's parameter and
 * gradient arrays w[n] and g[n], cut into segments (a weight matrix, a bias
 * vector, a projection; each with its own weight-decay flag), and the
 * state, which this type owns in ONE allocation: the state arrays (Adagrad:
 * acc; Adam: m, v; each [n], in the layout of w), the Adam step counts (one
 * per "group" of segments: the net has one, DHE one per network, MDE one
 * for all its projections) and the segment table.
 *
 * A step updates segments with es__sgd_update / es__adagrad_update /
 * es__adam_update, passing weight_decay for flagged segments and 0 for the
 * others, and then zeroes their gradients; an Adam group's count goes up
 * by one (before its segments update) whenever one of its segments steps.
 * The results are exactly those of calling the kernels by hand.
 *
 *   es__dense_opt o;
 *   es__dense_opt_init(&o, &params, wd, w, g, n, max_segs, n_groups);
 *   es__dense_opt_add_seg(&o, off, count, decay, group);   ... per segment
 *   ... accumulate into g ...;  es__dense_opt_step(&o);      every segment
 *   ... or mark (es__dense_opt_mark / _mark_group);  es__dense_opt_step_marked(&o);
 *   es__dense_opt_free(&o);
 *
 * The state is listed for save/load by each user under its own (persisted)
 * tensor names: es__dense_opt_state(o, a) is state array a (a <
 * es__dense_opt_n_states(o)) in the parameters' layout, and
 * es__dense_opt_state_name(o, a) its short name ("acc", or "m" then "v");
 * es__dense_opt_steps(o) the step counts [n_groups] (Adam only). */
typedef struct es__dense_seg {
    size_t off, count; /* floats, within w, g and every state array */
    int decay;         /* 1: weight decay applies (weights), 0: not (biases) */
    int group;         /* Adam step counter this segment advances with */
} es__dense_seg;

typedef struct es__dense_opt {
    es_optim_params p;     /* kind SGD, ADAGRAD or ADAM; lr, eps, betas, init_acc */
    float weight_decay;    /* for segments with decay = 1 */
    float *w, *g;          /* [n] each, owned by the caller */
    size_t n;
    int n_segs, max_segs, n_groups;
    void *block;           /* the one allocation: everything below */
    es__dense_seg *segs;   /* [max_segs] */
    unsigned char *seg_mark, *group_mark; /* [max_segs], [n_groups] */
    int64_t *step;         /* [n_groups] Adam steps taken; NULL unless Adam */
    float *state[2];       /* Adagrad: acc; Adam: m, v; [n] each (NULL when unused) */
} es__dense_opt;

/* Bytes es__dense_opt_init allocates for these counts; SIZE_MAX on
 * overflow.  kind other than SGD/ADAGRAD/ADAM counts no state arrays. */
size_t es__dense_opt_alloc_bytes(es_optim kind, size_t n, int max_segs, int n_groups);
/* Set up o for w[n], g[n] (the caller's; g must start zeroed), room for
 * max_segs segments (>= 0) and n_groups >= 1 step counters.  The state
 * starts at zero (Adagrad accumulators at p->init_acc), the steps at 0.
 * ES_EINVAL for a kind other than SGD, ADAGRAD, ADAM or bad counts,
 * ES_ENOMEM; o is zeroed on failure (so es__dense_opt_free is safe). */
int es__dense_opt_init(es__dense_opt *o, const es_optim_params *p, float weight_decay, float *w, float *g, size_t n,
                       int max_segs, int n_groups);
void es__dense_opt_free(es__dense_opt *o);
/* Append a segment [off, off + count) of group `group`; returns its index.
 * Segments must not overlap (asserted: in range, room left). count 0 is
 * allowed (a placeholder that keeps segment indexes aligned with the
 * caller's). */
int es__dense_opt_add_seg(es__dense_opt *o, size_t off, size_t count, int decay, int group);
/* Forget every segment (the state arrays keep their values). */
void es__dense_opt_clear_segs(es__dense_opt *o);
/* One step of every segment (every group advances), then zero their gradients. */
void es__dense_opt_step(es__dense_opt *o);
/* Mark segment i, or every segment of group gr, for the next step_marked. */
void es__dense_opt_mark(es__dense_opt *o, int i);
void es__dense_opt_mark_group(es__dense_opt *o, int gr);
/* One step of the marked segments only (a group advances when any of its
 * segments is marked), zero their gradients, clear the marks.  Unmarked
 * segments, their gradients and their groups' counts are left alone. */
void es__dense_opt_step_marked(es__dense_opt *o);
/* Optimizer-state bytes for the byte accounting: the state arrays
 * (4 n each) plus, for Adam, 8 per step counter; 0 for SGD. */
size_t es__dense_opt_state_bytes(const es__dense_opt *o);
int es__dense_opt_n_states(const es__dense_opt *o);
float *es__dense_opt_state(es__dense_opt *o, int a);
const char *es__dense_opt_state_name(const es__dense_opt *o, int a);
int64_t *es__dense_opt_steps(es__dense_opt *o);

/* The optimizer of a name: "adam", "sgd", "adagrad", "rowwise" (or
 * "rowwise-adagrad"), "ftrl", the names the CLI and the public parameter structs
 * take; ES_EINVAL for another.  Which kinds fit where (dense parameters:
 * not row-wise; tables: not Adam) is the caller's check. */
int es__optim_parse(const char *s, es_optim *out);

/* ---- persisted optimizer settings ---------------------------------------------
 * Files record an optimizer as "kind,lr,eps,beta1,beta2[,init_acc[,
 * ftrl_alpha,ftrl_beta,ftrl_l1,ftrl_l2,row_l2[,row_l2_freq]]]" (kind is the
 * es_optim number; the enum is append-only).  es__optim_meta_read parses
 * such a record strictly: n (5 or 6) numbers, or, where n is 6, also the
 * 11 of files since FTRL or the 12 of files since frequency-aware L2
 * (older files: the FTRL fields, row_l2 and row_l2_freq take their
 * defaults); each a finite number >= 0, the kind a known optimizer;
 * ES_EFORMAT naming path and key.  Writers add the 12th number only when
 * row_l2_freq is not 0, so files without it stay as they were. */
#define ES__OPTIM_META_LONG 11
#define ES__OPTIM_META_FREQ 12
int es__optim_meta_read(const char *path, const char *key, const char *s, int n, es_optim_params *o, es_err *err);

#endif /* ES_OPTIM_H */
