/*
 * optim.h — the optimizer layer, below both storage (embedding tables) and
 * models (dense nets): the optimizer kinds and their parameters, and the
 * dense update kernels every parameter group uses.  Tables update rows
 * sparsely (storage/rows.c); nets, DHE and MDE update dense arrays with the
 * kernels here.  Nothing in this folder includes storage/ or model/.
 */
#ifndef ES_OPTIM_H
#define ES_OPTIM_H

#include <stddef.h>
#include <stdint.h>

/* ---- optimizer kinds (persisted in metadata by name, not number) --------- */
typedef enum {
    ES_OPT_SGD = 0,
    ES_OPT_ADAGRAD = 1,          /* per-element accumulator */
    ES_OPT_ROWWISE_ADAGRAD = 2,  /* one accumulator per row: mean of g^2 over the row */
    ES_OPT_ADAM = 3              /* dense parameters only (models, DHE MLPs) */
} es_optim;

typedef struct es_optim_params {
    es_optim kind;
    float lr;
    float eps;         /* adagrad/adam epsilon (default 1e-8 adam, 1e-10 adagrad) */
    float beta1, beta2;/* adam */
    float init_acc;    /* adagrad initial accumulator (default 0) */
} es_optim_params;

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

#endif /* ES_OPTIM_H */
