/*
 * layers.c — dense layers of the CTR models (see layers.h for the shapes
 * and the overwrite/accumulate conventions).
 *
 * Matrix products are cblas_sgemm calls with the batch as M, so OpenBLAS
 * sees one large product per layer instead of n small ones.  The passes
 * around them (bias + ReLU, cross-layer products, ReLU masks) are single
 * contiguous loops marked `omp simd` so that they vectorise at -O2 without
 * -ffast-math; none of them reorders a reduction.  Per-row loops that write
 * disjoint rows (interaction, FM) are spread over OpenMP threads; loops
 * that reduce over the batch stay serial so results never depend on the
 * thread count.
 */
#include "model/layers.h"

#include "core/core.h"
#include "core/simd.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

/* Spread per-row loops over threads only when there is enough work to pay
 * for waking the team (about a few microseconds of work per thread). */
#define ES__PAR_ROWS 64

/* ---- linear ------------------------------------------------------------------ */

void es__linear_forward(float *out, const float *in, const float *W, const float *b, int n, int nin, int nout, int relu) {
    if (n <= 0 || nout <= 0) return;
    size_t len = (size_t)n * (size_t)nout;
    if (nin > 0)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, nout, nin, 1.0f, in, nin, W, nin, 0.0f, out, nout);
    else
        memset(out, 0, len * sizeof(float));
    /* One fused pass: bias, then ReLU. */
    if (b && relu) {
        for (int r = 0; r < n; r++) {
            float *o = out + (size_t)r * nout;
#pragma omp simd
            for (int j = 0; j < nout; j++) {
                float v = o[j] + b[j];
                o[j] = v > 0.0f ? v : 0.0f;
            }
        }
    } else if (b) {
        for (int r = 0; r < n; r++) {
            float *o = out + (size_t)r * nout;
#pragma omp simd
            for (int j = 0; j < nout; j++) o[j] += b[j];
        }
    } else if (relu) {
        es__relu_forward(out, len);
    }
}

void es__linear_backward(float *din, float *dW, float *db, const float *dout, const float *in, const float *W, int n,
                         int nin, int nout) {
    if (n <= 0 || nout <= 0) return;
    if (nin > 0) {
        if (din) cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, nin, nout, 1.0f, dout, nout, W, nin, 0.0f, din, nin);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, nout, nin, n, 1.0f, dout, nout, in, nin, 1.0f, dW, nin);
    }
    if (db) {
        /* Column sums in row order: a fixed summation order for every run. */
        for (int r = 0; r < n; r++) {
            const float *g = dout + (size_t)r * nout;
#pragma omp simd
            for (int j = 0; j < nout; j++) db[j] += g[j];
        }
    }
}

/* ---- ReLU ----------------------------------------------------------------------- */

void es__relu_forward(float *x, size_t len) {
#pragma omp simd
    for (size_t i = 0; i < len; i++) x[i] = x[i] > 0.0f ? x[i] : 0.0f;
}

void es__relu_backward(float *dx, const float *y, size_t len) {
#pragma omp simd
    for (size_t i = 0; i < len; i++) dx[i] = y[i] > 0.0f ? dx[i] : 0.0f;
}

/* ---- MLP stack ------------------------------------------------------------------- */

int es__mlp_max_width(const es__mlp *m) {
    int w = 0;
    for (int l = 1; l <= m->n_layers; l++) w = ES_MAX(w, m->dims[l]);
    return w;
}

void es__mlp_forward(const es__mlp *m, int n, const float *in, float *const *acts) {
    for (int l = 0; l < m->n_layers; l++) {
        const float *x = l ? acts[l - 1] : in;
        es__linear_forward(acts[l], x, m->W[l], m->b[l], n, m->dims[l], m->dims[l + 1], m->relu[l]);
    }
}

void es__mlp_backward(const es__mlp *m, int n, const float *in, float *const *acts, float *dout, float *din,
                      float *buf0, float *buf1) {
    float *g = dout;
    for (int l = m->n_layers - 1; l >= 0; l--) {
        int nin = m->dims[l], nout = m->dims[l + 1];
        /* g is dL/d(output of layer l); the mask turns it into dL/d(pre-activation). */
        if (m->relu[l]) es__relu_backward(g, acts[l], (size_t)n * (size_t)nout);
        const float *x = l ? acts[l - 1] : in;
        float *dst = l ? (g == buf0 ? buf1 : buf0) : din;
        es__linear_backward(dst, m->dW[l], m->db[l], g, x, m->W[l], n, nin, nout);
        g = dst;
    }
}

/* ---- DLRM interaction ------------------------------------------------------------------ */

int es__interact_width(int has_z0, int F, int k) {
    int T = F + (has_z0 ? 1 : 0);
    return (has_z0 ? k : 0) + T * (T - 1) / 2;
}

/* Vector i of row r: z0[r] first when present, then the F embeddings. */
static inline const float *ivec(const float *z0, const float *erow, int i, int k) {
    if (z0) return i == 0 ? z0 : erow + (size_t)(i - 1) * k;
    return erow + (size_t)i * k;
}
static inline float *ivec_mut(float *z0, float *erow, int i, int k) {
    if (z0) return i == 0 ? z0 : erow + (size_t)(i - 1) * k;
    return erow + (size_t)i * k;
}

void es__interact_forward(float *out, const float *z0, const float *emb, int n, int F, int k) {
    int has = z0 != NULL, T = F + has, W = es__interact_width(has, F, k);
#pragma omp parallel for schedule(static) if (n >= ES__PAR_ROWS)
    for (int r = 0; r < n; r++) {
        float *o = out + (size_t)r * W;
        const float *e = emb + (size_t)r * F * k;
        const float *z = has ? z0 + (size_t)r * k : NULL;
        if (has) memcpy(o, z, (size_t)k * sizeof(float));
        float *p = o + (has ? k : 0);
        for (int i = 0; i < T; i++) {
            const float *xi = ivec(z, e, i, k);
            for (int j = i + 1; j < T; j++) *p++ = es__dot(xi, ivec(z, e, j, k), (size_t)k);
        }
    }
}

void es__interact_forward_ref(float *out, const float *z0, const float *emb, int n, int F, int k) {
    int has = z0 != NULL, T = F + has, W = es__interact_width(has, F, k);
    for (int r = 0; r < n; r++) {
        float *o = out + (size_t)r * W;
        const float *e = emb + (size_t)r * F * k;
        const float *z = has ? z0 + (size_t)r * k : NULL;
        int c = 0;
        for (int t = 0; has && t < k; t++) o[c++] = z[t];
        for (int i = 0; i < T; i++)
            for (int j = i + 1; j < T; j++) {
                const float *a = ivec(z, e, i, k), *b = ivec(z, e, j, k);
                float s = 0.0f;
                for (int t = 0; t < k; t++) s += a[t] * b[t];
                o[c++] = s;
            }
    }
}

void es__interact_backward(float *dz0, float *demb, const float *dout, const float *z0, const float *emb, int n, int F,
                           int k) {
    int has = z0 != NULL, T = F + has, W = es__interact_width(has, F, k);
#pragma omp parallel for schedule(static) if (n >= ES__PAR_ROWS)
    for (int r = 0; r < n; r++) {
        const float *g = dout + (size_t)r * W;
        const float *e = emb + (size_t)r * F * k;
        const float *z = has ? z0 + (size_t)r * k : NULL;
        float *de = demb + (size_t)r * F * k;
        float *dz = has ? dz0 + (size_t)r * k : NULL;
        memset(de, 0, (size_t)F * k * sizeof(float));
        if (has) {
            memcpy(dz, g, (size_t)k * sizeof(float)); /* z0 passes straight through */
            g += k;
        }
        /* d<x_i, x_j> = x_j dx_i + x_i dx_j for every pair. */
        for (int i = 0; i < T; i++) {
            const float *xi = ivec(z, e, i, k);
            float *dxi = ivec_mut(dz, de, i, k);
            for (int j = i + 1; j < T; j++) {
                float gij = *g++;
                es__axpy(dxi, gij, ivec(z, e, j, k), (size_t)k);
                es__axpy(ivec_mut(dz, de, j, k), gij, xi, (size_t)k);
            }
        }
    }
}

void es__interact_backward_ref(float *dz0, float *demb, const float *dout, const float *z0, const float *emb, int n,
                               int F, int k) {
    int has = z0 != NULL, T = F + has, W = es__interact_width(has, F, k);
    for (int r = 0; r < n; r++) {
        const float *g = dout + (size_t)r * W;
        const float *e = emb + (size_t)r * F * k;
        const float *z = has ? z0 + (size_t)r * k : NULL;
        float *de = demb + (size_t)r * F * k;
        float *dz = has ? dz0 + (size_t)r * k : NULL;
        /* dx_i = sum_{j != i} g_ij x_j, computed vector by vector. */
        int P0 = has ? k : 0;
        for (int i = 0; i < T; i++) {
            float *dxi = ivec_mut(dz, de, i, k);
            for (int t = 0; t < k; t++) dxi[t] = (has && i == 0) ? g[t] : 0.0f;
            for (int j = 0; j < T; j++) {
                if (j == i) continue;
                int a = i < j ? i : j, b = i < j ? j : i;
                /* index of pair (a, b) in row-major strict upper triangle */
                int p = a * T - a * (a + 1) / 2 + (b - a - 1);
                const float *xj = ivec(z, e, j, k);
                for (int t = 0; t < k; t++) dxi[t] += g[P0 + p] * xj[t];
            }
        }
    }
}

/* ---- DCN-v2 cross layer ------------------------------------------------------------------ */

void es__cross_forward(float *xo, float *u, const float *x0, const float *xl, const float *W, const float *b, int n,
                       int d) {
    es__linear_forward(u, xl, W, b, n, d, d, 0);
    size_t len = (size_t)n * (size_t)d;
#pragma omp simd
    for (size_t i = 0; i < len; i++) xo[i] = x0[i] * u[i] + xl[i];
}

void es__cross_backward(float *dx, float *dx0, float *dW, float *db, const float *x0, const float *xl, const float *u,
                        const float *W, float *h, int n, int d) {
    if (n <= 0) return;
    size_t len = (size_t)n * (size_t)d;
    /* With g = dL/dxo: dL/dx0 = g*u, dL/du = g*x0 = h. */
#pragma omp simd
    for (size_t i = 0; i < len; i++) {
        dx0[i] += dx[i] * u[i];
        h[i] = dx[i] * x0[i];
    }
    /* dW += h^T xl, db += colsum(h), and in place dx = g + h W (residual path). */
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, d, d, n, 1.0f, h, d, xl, d, 1.0f, dW, d);
    for (int r = 0; r < n; r++) {
        const float *hr = h + (size_t)r * d;
#pragma omp simd
        for (int j = 0; j < d; j++) db[j] += hr[j];
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, d, d, 1.0f, h, d, W, d, 1.0f, dx, d);
}

/* ---- FM second-order term ----------------------------------------------------------------- */

void es__fm_forward(float *out, float *sum, const float *emb, int F, int E, int off, const float *dense,
                    const float *V, int D, int k, int n) {
#pragma omp parallel for schedule(static) if (n >= ES__PAR_ROWS)
    for (int r = 0; r < n; r++) {
        float *s = sum + (size_t)r * k;
        double sq = 0.0; /* sum_i |v_i|^2; double keeps |s|^2 - sq from cancelling badly */
        memset(s, 0, (size_t)k * sizeof(float));
        for (int f = 0; f < F; f++) {
            const float *v = emb + ((size_t)r * F + f) * E + off;
            for (int c = 0; c < k; c++) {
                s[c] += v[c];
                sq += (double)v[c] * v[c];
            }
        }
        for (int dd = 0; dd < D; dd++) {
            float x = dense[(size_t)r * D + dd];
            const float *vd = V + (size_t)dd * k;
            for (int c = 0; c < k; c++) {
                float t = x * vd[c];
                s[c] += t;
                sq += (double)t * t;
            }
        }
        double ss = 0.0;
        for (int c = 0; c < k; c++) ss += (double)s[c] * s[c];
        out[r] = (float)(0.5 * (ss - sq));
    }
}

void es__fm_backward(float *demb, float *dV, const float *dout, const float *sum, const float *emb, int F, int E,
                     int off, const float *dense, const float *V, int D, int k, int n) {
    /* Serial: dV reduces over the batch, and the whole term is nout(n (F+D) k). */
    for (int r = 0; r < n; r++) {
        float g = dout[r];
        const float *s = sum + (size_t)r * k;
        for (int f = 0; f < F; f++) {
            size_t at = ((size_t)r * F + f) * E + off;
            const float *v = emb + at;
            float *dv = demb + at;
            for (int c = 0; c < k; c++) dv[c] = g * (s[c] - v[c]);
        }
        for (int dd = 0; dd < D; dd++) {
            float x = dense[(size_t)r * D + dd];
            const float *vd = V + (size_t)dd * k;
            float *gd = dV + (size_t)dd * k;
            float gx = g * x;
            for (int c = 0; c < k; c++) gd[c] += gx * (s[c] - x * vd[c]);
        }
    }
}

/* ---- loss ---------------------------------------------------------------------------------- */

float es__sigmoid(float z) {
    if (z >= 0.0f) return 1.0f / (1.0f + expf(-z));
    float e = expf(z);
    return e / (1.0f + e);
}

double es__bce_logits(const float *logit, const float *label, int n, float *dlogit) {
    if (n <= 0) return 0.0;
    double total = 0.0;
    for (int r = 0; r < n; r++) {
        double z = logit[r], y = label[r];
        total += (z > 0 ? z : 0.0) - z * y + log1p(exp(-fabs(z)));
        if (dlogit) dlogit[r] = (es__sigmoid(logit[r]) - label[r]) / (float)n;
    }
    return total / n;
}
