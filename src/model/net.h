/*
 * net.h — the dense part of a CTR model: everything after the embedding
 * lookup.  A net takes the pooled embeddings emb[n, F, E] and the numeric
 * features dense[n, D] and produces one logit per row; its backward returns
 * the gradient w.r.t. the embeddings (for the storage's sparse update) and
 * accumulates gradients of its own parameters, which es_net_step applies.
 *
 * Models:
 *   LR    logit = b + w . dense + sum_f emb[f][0]                (E = 1)
 *   FM    logit = b + w . dense + sum_f emb[f][0]
 *                 + sum_{i<j} <v_i, v_j>, v over the F field vectors
 *                   emb[f][1..E) and the D numeric vectors x_d * V_d  (E = 1 + k)
 *   DLRM  z0 = bottom MLP(dense) -> k;  pairwise dots of {z0, emb_1..emb_F}
 *         (strict upper triangle); top MLP([z0, dots]) -> logit      (E = k)
 *   DCN   x0 = [dense, emb_1..emb_F] (D + F*k);  cross layers
 *         x_{l+1} = x0 * (W_l x_l + b_l) + x_l;  deep MLP on x_L;
 *         final linear -> logit                                     (E = k)
 * MLP hidden layers use ReLU; the last layer of a top/deep stack is linear.
 * Dense products go through OpenBLAS (cblas_sgemm).
 *
 * All parameters live in one allocation (params), gradients in another
 * (grads), optimizer state in a third; activations are sized for max_batch
 * at create time.  No allocation after create.
 */
#ifndef ES_MODEL_NET_H
#define ES_MODEL_NET_H

#include "core/core.h"
#include "format/file.h"
#include "storage/storage.h"

typedef enum { ES_NET_LR = 0, ES_NET_FM = 1, ES_NET_DLRM = 2, ES_NET_DCN = 3 } es_net_kind;

#define ES_NET_MAX_LAYERS 8

typedef struct es_net_params {
    es_net_kind kind;
    int n_dense;            /* D */
    int n_fields;           /* F */
    int dim;                /* k: embedding dim (FM factor size); E = es_net_emb_dim() */
    int bottom[ES_NET_MAX_LAYERS], n_bottom; /* DLRM bottom MLP widths (last must be k) */
    int top[ES_NET_MAX_LAYERS], n_top;       /* DLRM top / DCN deep widths, final 1 implied */
    int n_cross;            /* DCN cross layers */
    int max_batch;
    es_optim_params opt;    /* dense optimizer: SGD, ADAGRAD or ADAM */
    float weight_decay;     /* L2 on dense weights (not biases) */
    uint64_t seed;
} es_net_params;

es_net_params es_net_params_default(es_net_kind kind, int n_dense, int n_fields, int dim);
const char *es_net_kind_name(es_net_kind k);
int es_net_kind_parse(const char *s, es_net_kind *out); /* "lr","fm","dlrm","dcn" (also "dcnv2","dcn-v2") */
/* Embedding width per field the net expects from the storage (E). */
int es_net_emb_dim(es_net_kind kind, int dim);

typedef struct es_net es_net;

int es_net_create(es_net **out, const es_net_params *p, es_err *err);
void es_net_free(es_net *n);
const es_net_params *es_net_get_params(const es_net *n);

/* logit[n] from emb[n, F, E] and dense[n, D]; caches what backward needs.
 * n <= max_batch. */
void es_net_forward(es_net *net, int n, const float *emb, const float *dense, float *logit);
/* Given dlogit[n] (dLoss/dlogit, already divided by the batch size if the
 * loss is a mean), write demb[n, F, E] and ACCUMULATE parameter gradients.
 * Must follow es_net_forward on the same inputs. */
void es_net_backward(es_net *net, int n, const float *emb, const float *dense, const float *dlogit, float *demb);
/* Optimizer step on accumulated gradients, then zero them. */
void es_net_step(es_net *net);
void es_net_zero_grad(es_net *net);

/* Flat views for gradient checks and save/load. */
size_t es_net_n_params(const es_net *net);
float *es_net_params_ptr(es_net *net);
float *es_net_grads_ptr(es_net *net);
size_t es_net_param_bytes(const es_net *net);
size_t es_net_state_bytes(const es_net *net);
/* Named tensors (each layer's weights/biases, and optimizer state with a
 * "opt." prefix).  Same calling convention as es_storage_ops.tensors. */
int es_net_tensors(es_net *net, es_tensor_ref *refs, int max);
/* Multiply-adds per row of forward (for GFLOP/s figures). */
double es_net_flops_per_row(const es_net *net);

#endif /* ES_MODEL_NET_H */
