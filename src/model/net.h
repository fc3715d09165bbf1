/*
 * net.h — the dense part of a CTR model: everything after the embedding
 * lookup.  A net takes the pooled embeddings emb[n, F, E] and the numeric
 * features dense[n, D] and produces one logit per row; its backward returns
 * the gradient w.r.t. the embeddings (for the storage's sparse update) and
 * accumulates gradients of its own parameters, which es__net_step applies.
 *
 * Models:
 *   LR    logit = b + w . dense + sum_f emb[f][0]                (E = 1)
 *   FM    logit = b + w . dense + sum_f emb[f][0]
 *                 + sum_{i<j} <v_i, v_j>, v over the F field vectors
 *                   emb[f][1..E) and the D numeric vectors x_d * V_d  (E = 1 + k)
 *   FFM   logit = b + w . dense + sum_f emb[f][0]
 *                 + sum_{i<j} <v_{i,j}, v_{j,i}>, v_{i,g} = emb[i][1+g*k .. 1+(g+1)*k)
 *                   (field i's vector for meeting field g)           (E = 1 + F*k)
 *         FM and FFM with norm_rows: x -> x / |x|, |x|^2 = F + |dense|^2: the
 *         pair sum times r = 1 / |x|^2, w . dense + sum_f emb[f][0] times sqrt(r)
 *   DLRM  z0 = bottom MLP(dense) -> k;  pairwise dots of {z0, emb_1..emb_F}
 *         (strict upper triangle); top MLP([z0, dots]) -> logit      (E = k)
 *   DCN   x0 = [dense, emb_1..emb_F] (D + F*k);  cross layers
 *         x_{l+1} = x0 * (W_l x_l + b_l) + x_l;  deep MLP on x_L;
 *         final linear -> logit                                     (E = k)
 * MLP hidden layers use ReLU; the last layer of a top/deep stack is linear.
 * Dropout (DLRM, DCN; training forwards only): inverted dropout after the
 * ReLU of every hidden layer of the MLPs -- the DLRM bottom stack but its
 * last layer (z0), the DLRM top and DCN deep stacks but the output -- never
 * on the cross layers, z0 or the logit.  The mask of unit j of row r is a
 * counter-based hash of (seed, training step, stack, layer, r, j), so it
 * does not depend on the thread count, and the step counter is saved with
 * the optimizer state ("opt.net.dropout_step") so a resume is exact.
 * Forward products go through es__gemm_fixed, so a row's logit does not
 * depend on the rest of its batch, the batch size, the thread count or the
 * SIMD level; backward products go through OpenBLAS (cblas_sgemm).
 *
 * All parameters live in one allocation (params), gradients in another
 * (grads), optimizer state in a third (owned by the net's es__dense_opt,
 * optim/optim.h: the dense optimizer DHE and MDE use too); activations are
 * sized for max_batch at create time.  No allocation after create.  docs/models.md gives the
 * equations, shapes, initialisation (a fixed draw order from `seed`),
 * tensor names and optimizer formulas precisely.
 *
 * Forward and backward keep their activations in the net: one call at a
 * time per net (use one net per thread to serve in parallel).  With one
 * thread every result is bit-for-bit repeatable.
 */
#ifndef ES_MODEL_NET_H
#define ES_MODEL_NET_H

#include "core/core.h"
#include "format/file.h"
#include "optim/optim.h"

/* Persisted by name (es__net_kind_name); the values are internal but
 * append-only. */
typedef enum { ES_NET_LR = 0, ES_NET_FM = 1, ES_NET_DLRM = 2, ES_NET_DCN = 3, ES_NET_FFM = 4 } es_net_kind;

#define ES_NET_MAX_LAYERS 8
/* Most Matryoshka prefixes (es_net_params.prefix). */
#define ES_NET_MAX_PREFIX 8

typedef struct es_net_params {
    es_net_kind kind;
    int n_dense;            /* D */
    int n_fields;           /* F */
    int dim;                /* k: embedding dim (FM factor size); E = es__net_emb_dim() */
    int bottom[ES_NET_MAX_LAYERS], n_bottom; /* DLRM bottom MLP widths (last must be k) */
    int top[ES_NET_MAX_LAYERS], n_top;       /* DLRM top / DCN deep widths, final 1 implied */
    int n_cross;            /* DCN cross layers */
    /* FM / FFM: 1 normalises each row x to x / |x| (libffm's and xLearn's
     * default) with |x|^2 = F + |dense|^2 (each field a one-hot 1):
     * r = 1 / |x|^2 scales the pair term, sqrt(r) the first-order terms
     * and w . dense; the bias is not scaled.  0 (default): no scaling.
     * Other models must leave it 0. */
    int norm_rows;
    /* FM / FFM: 1 keeps only the pair term, logit = sum of pairs (libffm's
     * model: no bias, no first-order or numeric linear terms; their
     * tensors stay, at zero, with zero gradients).  0 (default): all terms. */
    int pairs_only;
    int max_batch;
    es_optim_params opt;    /* dense optimizer: SGD, ADAGRAD or ADAM */
    float weight_decay;     /* L2 on dense weights (not biases) */
    /* DLRM / DCN: inverted dropout probability in [0, 1) on the hidden MLP
     * units in es__net_forward_train (0, the default: none).  Other models
     * must leave it 0. */
    float dropout;
    uint64_t seed;
    /* Matryoshka (Kusupati et al. 2022; model/nest.h): n_prefix = 0 (the
     * default) is a plain net.  Otherwise prefix[0..n_prefix) are the
     * trained prefix dimensions, strictly increasing in 1..dim, the last
     * equal to dim, with the weights prefix_w (finite, >= 0, not all 0) of
     * the nested loss.  The net itself computes at dim only; es_nest runs
     * the prefixes.  Not for lr (dim 1). */
    int n_prefix;
    int prefix[ES_NET_MAX_PREFIX];
    float prefix_w[ES_NET_MAX_PREFIX];
} es_net_params;

/* Defaults: DLRM bottom {64, dim}, top {64, 32}; DCN 2 cross layers, deep
 * {64, 32}; max_batch 256; Adam lr 1e-3, betas 0.9/0.999, eps 1e-8,
 * init_acc 0; weight_decay 0; seed 1.  create() rejects bad combinations
 * (ES_EINVAL with a message): e.g. a DLRM bottom that does not end in dim,
 * DLRM with no numeric features and one field, a row-wise Adagrad. */
es_net_params es__net_params_default(es_net_kind kind, int n_dense, int n_fields, int dim);
const char *es__net_kind_name(es_net_kind k);
int es__net_kind_parse(const char *s, es_net_kind *out); /* "lr","fm","ffm","dlrm","dcn" (also "dcnv2","dcn-v2") */
/* Embedding width per field the net expects from the storage (E): LR 1,
 * FM 1 + dim, FFM 1 + n_fields*dim (F latent vectors per value), DLRM and
 * DCN dim.  n_fields only matters for FFM. */
int es__net_emb_dim(es_net_kind kind, int n_fields, int dim);

typedef struct es_net es_net;

int es__net_create(es_net **out, const es_net_params *p, es_err *err);
void es__net_free(es_net *n);
/* Bytes es__net_create would allocate for p (parameters, gradients, the
 * packed forward weights, optimizer state and activations), without
 * allocating them; SIZE_MAX when the count overflows.  Widths past
 * create()'s caps are still sized; ES_EINVAL for parameters that describe
 * no net at all (unknown kind, layer counts out of range), ES_ENOMEM. */
int es__net_footprint(const es_net_params *p, size_t *bytes);
const es_net_params *es__net_get_params(const es_net *n);

/* logit[n] from emb[n, F, E] and dense[n, D] (dense may be NULL when
 * D = 0); caches what backward needs.  0 <= n <= max_batch. */
void es__net_forward(es_net *net, int n, const float *emb, const float *dense, float *logit);
/* The training forward: es__net_forward plus, when dropout > 0, inverted
 * dropout with the masks of the net's current step (the count of
 * es__net_step calls, restored from "opt.net.dropout_step"): calls
 * between two steps draw the same masks, so a finite-difference check of
 * es__net_backward holds them fixed.  With dropout 0 it is es__net_forward. */
void es__net_forward_train(es_net *net, int n, const float *emb, const float *dense, float *logit);
/* Prepare for inference: pack the weights for the forward kernel once and
 * keep them until es__net_step, es__net_params_ptr or es__net_tensors (any
 * call through which the weights may change).  Optional: an unfrozen net
 * packs at every forward (0.5% of a 256-row DLRM forward, most of a
 * 1-row one).  Results are the same bits either way. */
void es__net_freeze(es_net *net);
/* Given dlogit[n] (dLoss/dlogit, already divided by the batch size if the
 * loss is a mean), write demb[n, F, E] (every element is overwritten) and
 * ACCUMULATE parameter gradients.  Must follow es__net_forward or
 * es__net_forward_train on the same inputs (the dropout masks of the
 * latter apply). */
void es__net_backward(es_net *net, int n, const float *emb, const float *dense, const float *dlogit, float *demb);
/* LR, FM and FFM (es__net_rows is 1) by rows: es__net_forward is
 * es__net_rows_begin (the batch part) then es__net_forward_rows over [0, n),
 * es__net_backward is es__net_backward_rows over [0, n) then
 * es__net_backward_end (the batch's sums).  The row parts read and write
 * only the places of rows [r0, r1), so disjoint ranges may run on different
 * threads at once, in any split, with the same bits. */
int es__net_rows(const es_net *net);
void es__net_rows_begin(es_net *net, int n, const float *dense, float *logit);
void es__net_forward_rows(es_net *net, int r0, int r1, const float *emb, const float *dense, float *logit);
void es__net_backward_rows(es_net *net, int r0, int r1, const float *emb, const float *dlogit, float *demb);
void es__net_backward_end(es_net *net, int n, const float *dense, const float *dlogit);
/* Optimizer step on accumulated gradients (weight decay on weights only,
 * not biases), then zero them: es__dense_opt_step over the net's segments.
 * Adam counts its steps in the state; the net counts its steps for the
 * dropout masks. */
void es__net_step(es_net *net);
void es__net_zero_grad(es_net *net);

/* Flat views for gradient checks and save/load: n_params floats in the
 * order of es__net_tensors; param_bytes = 4 * n_params; state_bytes is the
 * sum of the "opt." tensors' bytes (0 for SGD). */
size_t es__net_n_params(const es_net *net);
float *es__net_params_ptr(es_net *net);
float *es__net_grads_ptr(es_net *net);
size_t es__net_param_bytes(const es_net *net);
size_t es__net_state_bytes(const es_net *net);
/* Named tensors: each weight and bias ("net.top.0.w" [out, in],
 * "net.top.0.b" [out], ...), then optimizer state named after them with an
 * "opt." prefix (".m"/".v" for Adam, ".acc" for Adagrad) and, for Adam,
 * "opt.net.step" (I64 [1]), and with dropout > 0 "opt.net.dropout_step"
 * (I64 [1], the steps taken, which pick the dropout masks).  Same calling convention as
 * es_storage_ops.tensors: returns the count written (<= max), or with
 * refs == NULL the count needed. */
int es__net_tensors(es_net *net, es_tensor_ref *refs, int max);
/* Matryoshka support (model/nest.c).  The net at prefix p < dim is the
 * net of dimension p whose parameters are the full net's restricted to the
 * prefix: it is exactly the full net evaluated on inputs whose embedding
 * columns past p are zero (and, for DLRM, the bottom MLP's output columns
 * past p zeroed), but computed at width p, so a model cut to p (es_model
 * slice) gives the same bits.  es__net_prefix_params: sub's parameter i
 * is full's parameter map[i] (map has es__net_n_params(sub) entries; sub
 * must have full's parameters but dim = p <= full's dim, and, for DLRM,
 * its bottom ending in p).  es__net_prefix_cols: embedding column c of a
 * prefix-p row comes from column cols[c] of a full row (E_p =
 * es__net_emb_dim(kind, F, p) entries). */
void es__net_prefix_params(const es_net *full, const es_net *sub, size_t *map);
void es__net_prefix_cols(es_net_kind kind, int n_fields, int dim, int p, int *cols);
/* The dropout step counter (es__net_step calls): a sub-net draws the
 * full net's masks when given its count. */
int64_t es__net_drop_step(const es_net *net);
void es__net_set_drop_step(es_net *net, int64_t step);
/* Multiply-adds per row of forward (for GFLOP/s figures): every linear
 * layer in*out, DLRM k per pair dot, DCN d0*d0 + d0 per cross layer, LR
 * D + F, FM D + F + D*k + 2(F+D)k + k, FFM D + F + F(F-1)/2 k.  Bias adds and activations are not
 * counted. */
double es__net_flops_per_row(const es_net *net);

#endif /* ES_MODEL_NET_H */
