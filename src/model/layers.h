/*
 * layers.h — the dense layers the CTR models are built from, as plain
 * functions with their shapes in the signature (llm.c style): a layer owns
 * nothing; the caller passes parameters, inputs, outputs and any scratch.
 *
 * Conventions shared by every function here:
 *   - all arrays are float32, row-major, the batch n is the leading
 *     dimension: an activation of width d is x[n, d] with x[r*d + j];
 *   - linear weights are stored as W[out, in] (PyTorch nn.Linear layout)
 *     and biases as b[out];
 *   - forward functions overwrite their outputs; backward functions
 *     OVERWRITE input gradients (din, dx, demb: they are fresh values) and
 *     ACCUMULATE parameter gradients (dW, db, dV: they sum over batches
 *     until the optimizer step zeroes them);
 *   - nothing allocates; every buffer is sized by the caller;
 *   - with one thread every result is bit-for-bit repeatable.  Loops that
 *     reduce over the batch (bias and weight gradients) run in a fixed
 *     order; only loops writing disjoint rows are spread over threads.
 * Forward products go through es__gemm_fixed (core/simd.h): every output
 * is one fused multiply-add chain in input order, so a row's result does
 * not depend on the other rows of its batch, the batch size, the thread
 * count or the SIMD level (docs/determinism.md).  Backward products, which
 * reduce over the batch, go through cblas_sgemm with the batch as the M
 * dimension.
 */
#ifndef ES_MODEL_LAYERS_H
#define ES_MODEL_LAYERS_H

#include <stddef.h>
#include <stdint.h>

#include "optim/optim.h"


/* ---- linear ----------------------------------------------------------------
 * out[n, nout] = in[n, nin] W[nout, nin]^T + b[nout], then ReLU when
 * relu != 0 (bias add and ReLU fused into one pass over out).  b may be NULL
 * (no bias).  nin may be 0 (out = b, or 0).
 * WT, when not NULL, is W transposed ([nin, nout], es__linear_pack) and
 * takes the vector kernel; with WT == NULL the same chains are computed
 * straight from W by a scalar loop.  Both give the same bits. */
void es__linear_forward(float *out, const float *in, const float *W, const float *WT, const float *b, int n, int nin,
                        int nout, int relu);
/* WT[nin, nout] = W[nout, nin]^T. */
void es__linear_pack(float *WT, const float *W, int nin, int nout);
/* Given dout[n, nout] (gradient w.r.t. the linear output, before any ReLU):
 * din[n, nin] = dout W (overwritten; skipped when din is NULL),
 * dW[nout, nin] += dout^T in, db[nout] += column sums of dout (skipped if
 * NULL). */
void es__linear_backward(float *din, float *dW, float *db, const float *dout, const float *in, const float *W, int n,
                         int nin, int nout);

/* ---- ReLU -------------------------------------------------------------------
 * x[len] = max(x, 0) in place. */
void es__relu_forward(float *x, size_t len);
/* dx[len] *= (y > 0) in place, y being the ReLU output (y > 0 exactly where
 * the input was > 0, so the output is all backward needs). */
void es__relu_backward(float *dx, const float *y, size_t len);

/* ---- MLP stack ----------------------------------------------------------------
 * n_layers linear layers dims[0] -> dims[1] -> ... -> dims[n_layers], ReLU
 * after layer l when relu[l] != 0.  The struct only points into the net's
 * parameter and gradient blocks. */
#define ES__MLP_MAX 9
typedef struct es__mlp {
    int n_layers;
    int dims[ES__MLP_MAX + 1];
    int relu[ES__MLP_MAX];
    float *W[ES__MLP_MAX], *b[ES__MLP_MAX];   /* W[l] is [dims[l+1], dims[l]] */
    float *WT[ES__MLP_MAX];                   /* W[l] packed by es__linear_pack, or NULL */
    float *dW[ES__MLP_MAX], *db[ES__MLP_MAX];
    /* Inverted dropout (training only): after the ReLU of every layer l
     * with drop[l] != 0 when drop_p > 0, each unit is kept with
     * probability 1 - drop_p and scaled by 1 / (1 - drop_p), else zeroed;
     * the mask is es__dropout_keep(layer key, row, unit), the layer key
     * es__mix64(drop_key ^ (l + 1)).  drop_p = 0: no dropout (inference).
     * Backward reads the drop_p and drop[] of the forward it follows. */
    int drop[ES__MLP_MAX];
    float drop_p;
    uint64_t drop_key;
} es__mlp;

/* Dropout mask bit of unit `unit` of row `row` for a layer key: 1 (keep)
 * when the counter-based hash of (key, row, unit) is at or above
 * thr = p * 2^53 (es__dropout_thr), so each unit drops with probability p
 * independently of the batch split, the thread count and the call order. */
static inline uint64_t es__dropout_thr(float p) { return (uint64_t)((double)p * 9007199254740992.0); }
static inline int es__dropout_keep(uint64_t key, uint64_t row, uint64_t unit, uint64_t thr) {
    uint64_t rk = es__mix64(key + row * UINT64_C(0xd1b54a32d192ed03));
    return (es__mix64(rk ^ unit) >> 11) >= thr;
}
/* x[n, w] (ReLU outputs): kept units times 1 / (1 - p), the others 0. */
void es__dropout_forward(float *x, int n, int w, float p, uint64_t key);
/* dx[len] = y > 0 ? dx * scale : 0, y being the dropped-out ReLU output:
 * y > 0 exactly where the ReLU input was > 0 and the unit was kept, so the
 * output is again all backward needs (scale = 1 / (1 - p)). */
void es__dropout_relu_backward(float *dx, const float *y, size_t len, float scale);

/* Widest of dims[1..n_layers] (the size of the ping-pong scratch rows). */
int es__mlp_max_width(const es__mlp *m);
/* acts[l][n, dims[l+1]] = output of layer l (post-ReLU when relu[l]);
 * acts[n_layers-1] is the stack's output. */
void es__mlp_forward(const es__mlp *m, int n, const float *in, float *const *acts);
/* dout[n, dims[L]]: gradient w.r.t. the stack's output; it is used as
 * scratch (modified).  din[n, dims[0]] is overwritten (NULL: not wanted).
 * buf0, buf1: [n, es__mlp_max_width(m)] scratch each.  Parameter gradients
 * accumulate into m->dW, m->db.  acts must be those of the forward on in. */
void es__mlp_backward(const es__mlp *m, int n, const float *in, float *const *acts, float *dout, float *din,
                      float *buf0, float *buf1);

/* ---- DLRM pairwise dot interaction ----------------------------------------------
 * Per row, T vectors of width k: X_0 = z0[r] when z0 != NULL, then the F
 * field embeddings emb[r, f, :].  Output row (width es__interact_width):
 *   [z0[r] (k values, only when z0 != NULL),
 *    <X_i, X_j> for i < j in row-major order (0,1),(0,2),...,(0,T-1),(1,2),...]
 * i.e. the strict upper triangle of the T x T Gram matrix, P = T(T-1)/2. */
int es__interact_width(int has_z0, int F, int k);
void es__interact_forward(float *out, const float *z0, const float *emb, int n, int F, int k);
void es__interact_forward_ref(float *out, const float *z0, const float *emb, int n, int F, int k);
/* dout[n, width]: dz0[n, k] (when z0 != NULL) and demb[n, F, k] are
 * overwritten with the gradients w.r.t. z0 and emb (dz0 includes the
 * pass-through of the first k output columns). */
void es__interact_backward(float *dz0, float *demb, const float *dout, const float *z0, const float *emb, int n, int F,
                           int k);
void es__interact_backward_ref(float *dz0, float *demb, const float *dout, const float *z0, const float *emb, int n,
                               int F, int k);

/* ---- DCN-v2 cross layer (full rank) -------------------------------------------
 * xo[n, d] = x0 * (xl W[d, d]^T + b[d]) + xl  (elementwise *), and the
 * cache u[n, d] = xl W^T + b that backward needs.  xo must not alias xl.
 * WT: W packed, or NULL (as in es__linear_forward). */
void es__cross_forward(float *xo, float *u, const float *x0, const float *xl, const float *W, const float *WT,
                       const float *b, int n, int d);
/* dx[n, d]: on entry dL/dxo, on return dL/dxl (in place).  dx0[n, d] +=
 * the gradient through x0; dW, db accumulate; h[n, d] is scratch. */
void es__cross_backward(float *dx, float *dx0, float *dW, float *db, const float *x0, const float *xl, const float *u,
                        const float *W, float *h, int n, int d);

/* ---- FM second-order term --------------------------------------------------------
 * Per row the vectors are the F field vectors emb[r, f, off .. off+k) (field
 * stride E floats) followed by the D numeric vectors dense[r, d] * V[d, :].
 * out[r] = sum_{i<j} <v_i, v_j> = 0.5 * (|s|^2 - sum_i |v_i|^2), s = sum_i v_i
 * (the O((F+D)k) identity, not the O((F+D)^2 k) pair loop).
 * sum[n, k] receives s (backward needs it).  dense/V may be NULL when D = 0. */
void es__fm_forward(float *out, float *sum, const float *emb, int F, int E, int off, const float *dense,
                    const float *V, int D, int k, int n);
/* Given dout[n]: demb[r, f, off .. off+k) = dout[r] * (s - v_f) (only
 * those columns are written), dV[d, :] += dout[r] * x_d * (s - x_d V_d). */
void es__fm_backward(float *demb, float *dV, const float *dout, const float *sum, const float *emb, int F, int E,
                     int off, const float *dense, const float *V, int D, int k, int n);
/* Its two parts: the rows' demb (rows independent), and the batch's dV
 * (a sum over the rows in row order). */
void es__fm_backward_rows(float *demb, const float *dout, const float *sum, const float *emb, int F, int E, int off, int k,
                          int n);
void es__fm_backward_dV(float *dV, const float *dout, const float *sum, const float *dense, const float *V, int D, int k,
                        int n);

/* ---- FFM pairwise term (field-aware factorization machine) ----------------------------
 * Per row, field i owns F latent vectors of width k, v_{i,g} =
 * emb[r, i, 1 + g*k .. 1 + (g+1)*k) (field stride E = 1 + F*k floats;
 * column 0, the first-order weight, is not read), one per field g it may
 * meet (libffm's layout).  out[r] = sum_{i<j} <v_{i,j}, v_{j,i}>, pairs in
 * row-major order (0,1),(0,2),...,(F-2,F-1); each dot is a float
 * multiply-add chain in column order, the pair sum is accumulated in double
 * and rounded once.  A row's result is computed the same way whatever n and
 * the thread count (rows are spread over threads, never split).
 * F = 1: out = 0.  There is no fast kernel and so no _ref twin: this is
 * the reference (an F^2 k loop per row, the same cost as libffm's). */
void es__ffm_forward(float *out, const float *emb, int F, int E, int k, int n);
/* Given dout[n]: demb[r, i, 1 + j*k + c] = dout[r] * emb[r, j, 1 + i*k + c]
 * for j != i, and 0 for j == i (v_{i,i} takes part in no pair).  Every
 * pairwise column 1..F*k of demb is overwritten; column 0 is not written. */
void es__ffm_backward(float *demb, const float *dout, const float *emb, int F, int E, int k, int n);

/* ---- loss ---------------------------------------------------------------------------
 * Binary cross-entropy on logits, computed stably:
 *   l_r = max(z, 0) - z y + log(1 + exp(-|z|)).
 * Returns the mean over the n rows (accumulated in double); when dlogit is
 * not NULL writes dlogit[r] = (sigmoid(z_r) - y_r) * (1/n), the gradient of the
 * mean.  Labels are 0 or 1 (any value in [0, 1] works). */
double es__bce_logits(const float *logit, const float *label, int n, float *dlogit);
/* The sum of l_r over the n rows (double, in row order) and, when dlogit is
 * not NULL, dlogit[r] = (sigmoid(z_r) - y_r) * scale (scale = 1/n: the
 * gradient of the mean, as es__bce_logits gives it).  The trainer's loss. */
double es__bce_logits_sum(const float *logit, const float *label, int n, float scale, float *dlogit);
/* Rows [r0, r1) of it: loss[r] = l_r and dlogit[r] as above.  Adding
 * loss[0 .. n) in row order gives es__bce_logits_sum's bits. */
void es__bce_logits_rows(const float *logit, const float *label, int r0, int r1, float scale, float *dlogit, double *loss);
/* 1 / (1 + exp(-z)) without overflow for large |z|. */
float es__sigmoid(float z);

#endif /* ES_MODEL_LAYERS_H */
