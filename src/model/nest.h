/*
 * nest.h — Matryoshka nets (Kusupati et al. 2022, "Matryoshka
 * Representation Learning"): one net and one embedding table trained with
 * a nested loss over prefix dimensions p_1 < ... < p_m = dim,
 *
 *     L = sum_i w_i * logloss(net at prefix p_i),
 *
 * so that the first p columns of every embedding row are a model of their
 * own.  "The net at prefix p" is a net of dimension p (net.h,
 * es__net_prefix_params) whose parameters are gathered from the full net:
 * the same function as the full net on rows whose embedding columns past p
 * are zero (and, for DLRM, whose bottom-MLP output z0 is zeroed past p),
 * computed at width p, so that a model cut to p predicts the same bits.
 * The gradient of every prefix flows back into the shared table columns
 * and the shared net parameters it uses.
 *
 * An es_nest holds one sub-net per prefix below dim (the prefix dim is the
 * full net itself) with its buffers, all allocated at create; train, pull
 * and forward never allocate.  One call at a time.
 */
#ifndef ES_MODEL_NEST_H
#define ES_MODEL_NEST_H

#include "model/net.h"

typedef struct es_nest es_nest;

/* A nest over full, whose parameters (es_net_params.n_prefix > 0) give the
 * prefixes and weights; full stays owned by the caller and must outlive
 * the nest.  ES_EINVAL when full has no prefixes, ES_ENOMEM. */
int es__nest_create(es_nest **out, es_net *full, es_err *err);
void es__nest_free(es_nest *ns);
/* The level of prefix p (0..n_prefix-1), or -1 when p is not a prefix. */
int es__nest_level(const es_nest *ns, int p);
/* The net of a level (the full net for the last); its parameters are the
 * full net's as of the last es__nest_pull. */
es_net *es__nest_net(es_nest *ns, int level);
/* Embedding width of a level's rows and where its columns come from in a
 * full row (es__net_prefix_cols). */
int es__nest_emb_dim(const es_nest *ns, int level);
const int *es__nest_cols(const es_nest *ns, int level);
/* Copy the full net's parameters into every sub-net (after they changed:
 * a step, a load). */
void es__nest_pull(es_nest *ns);
/* The nested loss and its gradients on a batch of n rows: pulls, then for
 * every level i runs the level's net on the first columns of emb[n, F, E]
 * (the training forward, dropout included, when train = 1), the log loss
 * with the gradient scale w_i / n, and its backward.  demb[n, F, E] is
 * overwritten with dL/demb (each column the sum over the levels that use
 * it); the gradients of the full net's parameters are accumulated (each
 * sub-net's added into the parameters it was gathered from); no step is
 * taken.  Returns sum_i w_i * (sum over rows of the level's log loss), so
 * that L = return / n.  logit_out (may be NULL): the full level's logits. */
double es__nest_train_grad(es_nest *ns, int n, const float *emb, const float *dense, const float *label, float *demb,
                           float *logit_out, int train);
/* The logits of a level on emb[n, F, E] (full rows); the level's
 * parameters as of the last pull. */
void es__nest_forward(es_nest *ns, int level, int n, const float *emb, const float *dense, float *logit);

#endif /* ES_MODEL_NEST_H */
