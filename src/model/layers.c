/*
 * layers.c — dense layers of the CTR models (see layers.h for the shapes
 * and the overwrite/accumulate conventions).
 *
 * Forward products are es__gemm_fixed calls (one multiply-add chain per
 * output, so a row never depends on its batch); backward products are
 * cblas_sgemm calls with the batch as M, so OpenBLAS sees one large
 * product per layer instead of n small ones.  The passes
 * around them (bias + ReLU, cross-layer products, ReLU masks) are single
 * contiguous loops marked `omp simd` so that they vectorise at -O2 without
 * -ffast-math; none of them reorders a reduction.  The per-row kernels of
 * the DLRM interaction and the FM term are laid out for 16-lane vector
 * arithmetic and compiled for several instruction sets (see ES__CLONES);
 * the interaction kernels have scalar `_ref` twins computing the same sums
 * in the same order, and the FM term is tested against the naive pair sum.
 * Per-row loops that write disjoint rows are spread over OpenMP threads;
 * loops that reduce over the batch stay serial, so results never depend on
 * the thread count.
 */
#include "model/layers.h"

#include "core/core.h"
#include "core/simd.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* The vector kernels and their references must round identically: no
 * fused multiply-add contraction (GCC already keeps it off in ISO C mode;
 * Clang contracts by default). */
#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif

/* Spread per-row loops over threads only when there is enough work to pay
 * for waking the team (about a few microseconds of work per thread). */
#define ES__PAR_ROWS 64
/* The FM and FFM row kernels: by the floats of the rows (core.h). */
#define ES__PAR_WORK(n, F, E) ((size_t)(n) * (size_t)(F) * (size_t)(E) >= ES__PAR_FLOATS)

/* ---- linear ------------------------------------------------------------------ */

void es__linear_pack(float *WT, const float *W, int nin, int nout) {
    for (int j = 0; j < nout; j++)
        for (int k = 0; k < nin; k++) WT[(size_t)k * nout + j] = W[(size_t)j * nin + k];
}

/* The row kernels below run the same arithmetic as the _ref twins (each dot
 * summed over d in order, each gradient summed over j in order), arranged so
 * that the innermost operation is a 16-lane vector multiply-add held in
 * registers (GCC/Clang vector extensions; the compiler splits a 16-lane
 * vector into whatever the target has).  They are compiled for AVX-512,
 * AVX2 and baseline x86-64 and picked at load time (ES__CLONES, core/simd.h),
 * so a default build still gets wide vectors. */

/* out = in W^T without a packed copy: the chains es__gemm_fixed computes,
 * four outputs at a time for some instruction-level parallelism. */
ES__CLONES_FMA static void linear_direct(float *out, const float *in, const float *W, int n, int nin, int nout) {
    for (int r = 0; r < n; r++) {
        const float *x = in + (size_t)r * nin;
        float *o = out + (size_t)r * nout;
        int j = 0;
        for (; j + 4 <= nout; j += 4) {
            const float *w0 = W + (size_t)j * nin, *w1 = w0 + nin, *w2 = w1 + nin, *w3 = w2 + nin;
            float c0 = 0.0f, c1 = 0.0f, c2 = 0.0f, c3 = 0.0f;
            for (int k = 0; k < nin; k++) {
                c0 = fmaf(x[k], w0[k], c0);
                c1 = fmaf(x[k], w1[k], c1);
                c2 = fmaf(x[k], w2[k], c2);
                c3 = fmaf(x[k], w3[k], c3);
            }
            o[j] = c0, o[j + 1] = c1, o[j + 2] = c2, o[j + 3] = c3;
        }
        for (; j < nout; j++) {
            const float *w0 = W + (size_t)j * nin;
            float c0 = 0.0f;
            for (int k = 0; k < nin; k++) c0 = fmaf(x[k], w0[k], c0);
            o[j] = c0;
        }
    }
}

/* ES_FORWARD=sgemm (read once) puts the forward products back on
 * cblas_sgemm, whose summation order depends on the batch size.  It exists
 * only so that `make bench` can measure what batch invariance costs in one
 * run; it voids the contract of docs/determinism.md. */
static int forward_sgemm(void) {
    static int v = -1;
    int x = __atomic_load_n(&v, __ATOMIC_RELAXED);
    if (x < 0) {
        const char *e = getenv("ES_FORWARD");
        x = e && strcmp(e, "sgemm") == 0;
        __atomic_store_n(&v, x, __ATOMIC_RELAXED);
    }
    return x;
}

void es__linear_forward(float *out, const float *in, const float *W, const float *WT, const float *b, int n, int nin,
                        int nout, int relu) {
    if (n <= 0 || nout <= 0) return;
    size_t len = (size_t)n * (size_t)nout;
    if (nin > 0 && forward_sgemm())
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, nout, nin, 1.0f, in, nin, W, nin, 0.0f, out, nout);
    else if (nin > 0 && WT)
        es__gemm_fixed(out, nout, in, nin, WT, nout, n, nin, nout, es__threads_get());
    else if (nin > 0)
        linear_direct(out, in, W, n, nin, nout);
    else
        memset(out, 0, len * sizeof(float));
    /* One fused pass: bias, then ReLU. */
    if (b && relu) {
        for (int r = 0; r < n; r++) {
            float *o = out + (size_t)r * nout;
ES__OMP(omp simd)
            for (int j = 0; j < nout; j++) {
                float v = o[j] + b[j];
                o[j] = v > 0.0f ? v : 0.0f;
            }
        }
    } else if (b) {
        for (int r = 0; r < n; r++) {
            float *o = out + (size_t)r * nout;
ES__OMP(omp simd)
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
ES__OMP(omp simd)
            for (int j = 0; j < nout; j++) db[j] += g[j];
        }
    }
}

/* ---- ReLU ----------------------------------------------------------------------- */

void es__relu_forward(float *x, size_t len) {
ES__OMP(omp simd)
    for (size_t i = 0; i < len; i++) x[i] = x[i] > 0.0f ? x[i] : 0.0f;
}

void es__relu_backward(float *dx, const float *y, size_t len) {
ES__OMP(omp simd)
    for (size_t i = 0; i < len; i++) dx[i] = y[i] > 0.0f ? dx[i] : 0.0f;
}

/* ---- dropout ---------------------------------------------------------------------- */

void es__dropout_forward(float *x, int n, int w, float p, uint64_t key) {
    const uint64_t thr = es__dropout_thr(p);
    const float scale = 1.0f / (1.0f - p);
    for (int r = 0; r < n; r++) {
        float *row = x + (size_t)r * (size_t)w;
        for (int j = 0; j < w; j++) row[j] = es__dropout_keep(key, (uint64_t)r, (uint64_t)j, thr) ? row[j] * scale : 0.0f;
    }
}

void es__dropout_relu_backward(float *dx, const float *y, size_t len, float scale) {
ES__OMP(omp simd)
    for (size_t i = 0; i < len; i++) dx[i] = y[i] > 0.0f ? dx[i] * scale : 0.0f;
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
        es__linear_forward(acts[l], x, m->W[l], m->WT[l], m->b[l], n, m->dims[l], m->dims[l + 1], m->relu[l]);
        if (m->drop_p > 0.0f && m->drop[l]) {
            ES_ASSERT(m->relu[l]); /* the backward below relies on it */
            es__dropout_forward(acts[l], n, m->dims[l + 1], m->drop_p, es__mix64(m->drop_key ^ (uint64_t)(l + 1)));
        }
    }
}

void es__mlp_backward(const es__mlp *m, int n, const float *in, float *const *acts, float *dout, float *din,
                      float *buf0, float *buf1) {
    float *g = dout;
    for (int l = m->n_layers - 1; l >= 0; l--) {
        int nin = m->dims[l], nout = m->dims[l + 1];
        /* g is dL/d(output of layer l); the mask turns it into dL/d(pre-activation). */
        if (m->drop_p > 0.0f && m->drop[l]) /* dL/d(pre-activation): ReLU mask, dropout mask and scale */
            es__dropout_relu_backward(g, acts[l], (size_t)n * (size_t)nout, 1.0f / (1.0f - m->drop_p));
        else if (m->relu[l])
            es__relu_backward(g, acts[l], (size_t)n * (size_t)nout);
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

/* Index of pair (i, j), i < j, in the row-major strict upper triangle of a
 * T x T matrix: rows 0..i-1 hold (T-1) + (T-2) + ... + (T-i) pairs. */
static inline int pair_index(int i, int j, int T) { return i * T - i * (i + 1) / 2 + (j - i - 1); }

#define ES__JB 16 /* lanes: vectors j whose dots with x_i are formed together */
#define ES__DB 64 /* d-chunk of the forward (bounds the transposed block on the stack) */
typedef float es__v16 __attribute__((vector_size(64)));

/* Load / store the first dk <= 16 lanes of a vector; the other lanes load
 * as 0.  The full-width case is a fixed-size copy (one vector move); only
 * column tails take the variable-length path. */
static inline void v16_load(es__v16 *v, const float *src, int dk) {
    if (dk == ES__JB) {
        memcpy(v, src, sizeof *v);
    } else {
        float pad[ES__JB] = {0};
        for (int d = 0; d < dk; d++) pad[d] = src[d];
        memcpy(v, pad, sizeof *v);
    }
}
static inline void v16_store(float *dst, const es__v16 *v, int dk) {
    if (dk == ES__JB) {
        memcpy(dst, v, sizeof *v);
    } else {
        float part[ES__JB];
        memcpy(part, v, sizeof part);
        for (int d = 0; d < dk; d++) dst[d] = part[d];
    }
}

/* Forward of one row: o[P] = <x_i, x_j> for i < j.  A block of up to 16
 * vectors x_j is transposed into xt[d] (lane jj = x_{jb+jj}[d]), so that for
 * each x_i the dots with the whole block accumulate as acc += x_i[d] * xt[d]:
 * one 16-lane multiply-add per column instead of a horizontal reduction
 * per pair.  Four x_i go together: four independent accumulator chains
 * hide the add latency and share each load of xt[d]. */
ES__CLONES static void gram_row(float *restrict o, const float *z, const float *e, int T, int k) {
    static const float zeros[ES__DB]; /* stands in for missing vectors of the last block */
    es__v16 xt[ES__DB];
    for (int jb = 1; jb < T; jb += ES__JB) {
        int nb = ES_MIN(ES__JB, T - jb), imax = jb + nb - 1; /* pairs need i < j <= jb+nb-1 */
        for (int d0 = 0; d0 < k; d0 += ES__DB) {
            int dk = ES_MIN(ES__DB, k - d0);
            /* Row by row of xt (d outer): each xt[d] is written by 16
             * consecutive stores long before the loop below loads it as one
             * vector, so the load does not stall on store forwarding. */
            const float *xs[ES__JB];
            for (int jj = 0; jj < ES__JB; jj++) xs[jj] = jj < nb ? ivec(z, e, jb + jj, k) + d0 : zeros;
            for (int d = 0; d < dk; d++)
                for (int jj = 0; jj < ES__JB; jj++) xt[d][jj] = xs[jj][d];
            for (int i = 0; i < imax; i += 4) {
                int ni = ES_MIN(4, imax - i);
                const float *x[4];
                for (int q = 0; q < 4; q++) x[q] = ivec(z, e, i + (q < ni ? q : 0), k) + d0;
                float part[4][ES__JB];
                if (d0 > 0) { /* resume the sums of earlier columns */
                    for (int q = 0; q < 4; q++) {
                        int j0 = ES_MAX(jb, i + q + 1), off = j0 - jb;
                        const float *src = o + (q < ni ? pair_index(i + q, j0, T) : 0);
                        for (int jj = 0; jj < ES__JB; jj++)
                            part[q][jj] = (q < ni && jj >= off && jj < nb) ? src[jj - off] : 0.0f;
                    }
                } else {
                    memset(part, 0, sizeof part);
                }
                es__v16 a0, a1, a2, a3;
                memcpy(&a0, part[0], sizeof a0);
                memcpy(&a1, part[1], sizeof a1);
                memcpy(&a2, part[2], sizeof a2);
                memcpy(&a3, part[3], sizeof a3);
                for (int d = 0; d < dk; d++) {
                    es__v16 t = xt[d];
                    a0 += x[0][d] * t;
                    a1 += x[1][d] * t;
                    a2 += x[2][d] * t;
                    a3 += x[3][d] * t;
                }
                memcpy(part[0], &a0, sizeof a0);
                memcpy(part[1], &a1, sizeof a1);
                memcpy(part[2], &a2, sizeof a2);
                memcpy(part[3], &a3, sizeof a3);
                for (int q = 0; q < ni; q++) { /* only lanes j > i are pairs; they are contiguous in o */
                    int j0 = ES_MAX(jb, i + q + 1), off = j0 - jb;
                    float *dst = o + pair_index(i + q, j0, T);
                    for (int jj = 0; jj < nb - off; jj++) dst[jj] = part[q][off + jj];
                }
            }
        }
    }
}

void es__interact_forward(float *out, const float *z0, const float *emb, int n, int F, int k) {
    int has = z0 != NULL, T = F + has, W = es__interact_width(has, F, k);
ES__OMP(omp parallel for schedule(static) if (n >= ES__PAR_ROWS))
    for (int r = 0; r < n; r++) {
        float *o = out + (size_t)r * W;
        const float *e = emb + (size_t)r * F * k;
        const float *z = has ? z0 + (size_t)r * k : NULL;
        if (has) memcpy(o, z, (size_t)k * sizeof(float));
        gram_row(o + (has ? k : 0), z, e, T, k);
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

/* Backward of one row: dx_i = [gz when i is z0] + sum_{j != i} g_ij x_j,
 * summed over j in order, i.e. dX = S X with S the symmetric T x T matrix
 * of pair gradients (zero diagonal).  S is expanded once per row into sm
 * (row stride ldS, a multiple of 4 with zero padding), so that the four
 * coefficients g_{i..i+3, j} are four adjacent floats of row j.  Four dx_i
 * accumulate together (four independent chains sharing each load of x_j),
 * 16 columns at a time; the j == i term enters as 0 * x_i, which leaves a
 * finite sum unchanged. */
ES__CLONES static void gram_row_backward(float *dz, float *de, const float *gz, const float *g, const float *z,
                                         const float *e, int T, int k, float *restrict sm, int ldS) {
    for (int i = 0; i < T; i++) {
        float *si = sm + (size_t)i * ldS;
        si[i] = 0.0f;
        for (int j = i + 1; j < T; j++) si[j] = sm[(size_t)j * ldS + i] = *g++;
        for (int j = T; j < ldS; j++) si[j] = 0.0f;
    }
    for (int i = 0; i < T; i += 4) {
        int ni = ES_MIN(4, T - i);
        for (int d0 = 0; d0 < k; d0 += ES__JB) {
            int dk = ES_MIN(ES__JB, k - d0);
            es__v16 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, t;
            if (gz && i == 0) v16_load(&a0, gz + d0, dk);
            for (int j = 0; j < T; j++) {
                const float *s = sm + (size_t)j * ldS + i; /* g_{i+q, j} = S[j][i+q] */
                v16_load(&t, ivec(z, e, j, k) + d0, dk);
                a0 += s[0] * t;
                a1 += s[1] * t;
                a2 += s[2] * t;
                a3 += s[3] * t;
            }
            v16_store(ivec_mut(dz, de, i, k) + d0, &a0, dk);
            if (ni > 1) v16_store(ivec_mut(dz, de, i + 1, k) + d0, &a1, dk);
            if (ni > 2) v16_store(ivec_mut(dz, de, i + 2, k) + d0, &a2, dk);
            if (ni > 3) v16_store(ivec_mut(dz, de, i + 3, k) + d0, &a3, dk);
        }
    }
}

/* Reference backward of one row (also the path for very many fields). */
static void interact_row_backward_ref(float *dz, float *de, const float *g, const float *z, const float *e, int T,
                                      int k) {
    int P0 = z ? k : 0;
    for (int i = 0; i < T; i++) {
        float *dxi = ivec_mut(dz, de, i, k);
        for (int t = 0; t < k; t++) dxi[t] = (z && i == 0) ? g[t] : 0.0f;
        for (int j = 0; j < T; j++) {
            if (j == i) continue;
            float gij = g[P0 + (i < j ? pair_index(i, j, T) : pair_index(j, i, T))];
            const float *xj = ivec(z, e, j, k);
            for (int t = 0; t < k; t++) dxi[t] += gij * xj[t];
        }
    }
}

/* Largest T whose S matrix the fast backward keeps on the stack (36 KiB). */
#define ES__SMAX 96

void es__interact_backward(float *dz0, float *demb, const float *dout, const float *z0, const float *emb, int n, int F,
                           int k) {
    int has = z0 != NULL, T = F + has, W = es__interact_width(has, F, k), ldS = (T + 3) & ~3;
ES__OMP(omp parallel for schedule(static) if (n >= ES__PAR_ROWS))
    for (int r = 0; r < n; r++) {
        const float *g = dout + (size_t)r * W;
        const float *e = emb + (size_t)r * F * k;
        const float *z = has ? z0 + (size_t)r * k : NULL;
        float *de = demb + (size_t)r * F * k;
        float *dz = has ? dz0 + (size_t)r * k : NULL;
        if (T <= ES__SMAX) {
            float sm[ES__SMAX * ES__SMAX];
            /* z0 passes straight through the first k columns */
            gram_row_backward(dz, de, has ? g : NULL, g + (has ? k : 0), z, e, T, k, sm, ldS);
        } else {
            interact_row_backward_ref(dz, de, g, z, e, T, k);
        }
    }
}

void es__interact_backward_ref(float *dz0, float *demb, const float *dout, const float *z0, const float *emb, int n,
                               int F, int k) {
    int has = z0 != NULL, T = F + has, W = es__interact_width(has, F, k);
    for (int r = 0; r < n; r++)
        interact_row_backward_ref(has ? dz0 + (size_t)r * k : NULL, demb + (size_t)r * F * k, dout + (size_t)r * W,
                                  has ? z0 + (size_t)r * k : NULL, emb + (size_t)r * F * k, T, k);
}

/* ---- DCN-v2 cross layer ------------------------------------------------------------------ */

void es__cross_forward(float *xo, float *u, const float *x0, const float *xl, const float *W, const float *WT,
                       const float *b, int n, int d) {
    es__linear_forward(u, xl, W, WT, b, n, d, d, 0);
    size_t len = (size_t)n * (size_t)d;
ES__OMP(omp simd)
    for (size_t i = 0; i < len; i++) xo[i] = x0[i] * u[i] + xl[i];
}

void es__cross_backward(float *dx, float *dx0, float *dW, float *db, const float *x0, const float *xl, const float *u,
                        const float *W, float *h, int n, int d) {
    if (n <= 0) return;
    size_t len = (size_t)n * (size_t)d;
    /* With g = dL/dxo: dL/dx0 = g*u, dL/du = g*x0 = h. */
ES__OMP(omp simd)
    for (size_t i = 0; i < len; i++) {
        dx0[i] += dx[i] * u[i];
        h[i] = dx[i] * x0[i];
    }
    /* dW += h^T xl, db += colsum(h), and in place dx = g + h W (residual path). */
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, d, d, n, 1.0f, h, d, xl, d, 1.0f, dW, d);
    for (int r = 0; r < n; r++) {
        const float *hr = h + (size_t)r * d;
ES__OMP(omp simd)
        for (int j = 0; j < d; j++) db[j] += hr[j];
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, d, d, 1.0f, h, d, W, d, 1.0f, dx, d);
}

/* ---- FM second-order term ----------------------------------------------------------------- */

/* One row of the FM term: s[k] = sum of the row's vectors, returns the pair
 * sum.  Columns go 64 at a time through local accumulators so that the
 * inner loops are contiguous vector operations; the sums of squares are
 * kept in double, because |s|^2 - sum |v|^2 cancels when the pair term is
 * small next to the squares. */
ES__CLONES static double fm_row(float *restrict s, const float *er, int F, int E, int off, const float *x,
                                const float *V, int D, int k) {
    double pair = 0.0;
    for (int c0 = 0; c0 < k; c0 += ES__DB) {
        int ck = ES_MIN(ES__DB, k - c0);
        float sv[ES__DB];
        double qv[ES__DB];
        for (int c = 0; c < ck; c++) {
            sv[c] = 0.0f;
            qv[c] = 0.0;
        }
        for (int f = 0; f < F; f++) {
            const float *v = er + (size_t)f * E + off + c0;
ES__OMP(omp simd)
            for (int c = 0; c < ck; c++) {
                sv[c] += v[c];
                qv[c] += (double)v[c] * v[c];
            }
        }
        for (int d = 0; d < D; d++) {
            float xd = x[d];
            const float *vd = V + (size_t)d * k + c0;
ES__OMP(omp simd)
            for (int c = 0; c < ck; c++) {
                float t = xd * vd[c];
                sv[c] += t;
                qv[c] += (double)t * t;
            }
        }
        memcpy(s + c0, sv, (size_t)ck * sizeof(float));
        for (int c = 0; c < ck; c++) pair += (double)sv[c] * sv[c] - qv[c];
    }
    return 0.5 * pair;
}

void es__fm_forward(float *out, float *sum, const float *emb, int F, int E, int off, const float *dense,
                    const float *V, int D, int k, int n) {
ES__OMP(omp parallel for schedule(static) if (ES__PAR_WORK(n, F, E)))
    for (int r = 0; r < n; r++)
        out[r] = (float)fm_row(sum + (size_t)r * k, emb + (size_t)r * F * E, F, E, off,
                               D ? dense + (size_t)r * D : NULL, V, D, k);
}

/* demb of one row: dv_f = g (s - v_f) for the F field vectors. */
ES__CLONES static void fm_row_demb(float *restrict der, float g, const float *s, const float *er, int F, int E, int off,
                                   int k) {
    for (int f = 0; f < F; f++) {
        const float *v = er + (size_t)f * E + off;
        float *dv = der + (size_t)f * E + off;
ES__OMP(omp simd)
        for (int c = 0; c < k; c++) dv[c] = g * (s[c] - v[c]);
    }
}

/* dV += g x_d (s - x_d V_d) for one row. */
ES__CLONES static void fm_row_dV(float *restrict dV, float g, const float *s, const float *x, const float *V, int D,
                                 int k) {
    for (int d = 0; d < D; d++) {
        float xd = x[d], gx = g * xd;
        const float *vd = V + (size_t)d * k;
        float *gd = dV + (size_t)d * k;
ES__OMP(omp simd)
        for (int c = 0; c < k; c++) gd[c] += gx * (s[c] - xd * vd[c]);
    }
}

void es__fm_backward_rows(float *demb, const float *dout, const float *sum, const float *emb, int F, int E, int off, int k,
                          int n) {
ES__OMP(omp parallel for schedule(static) if (ES__PAR_WORK(n, F, E)))
    for (int r = 0; r < n; r++)
        fm_row_demb(demb + (size_t)r * F * E, dout[r], sum + (size_t)r * k, emb + (size_t)r * F * E, F, E, off, k);
}

void es__fm_backward_dV(float *dV, const float *dout, const float *sum, const float *dense, const float *V, int D, int k,
                        int n) {
    for (int r = 0; D > 0 && r < n; r++) fm_row_dV(dV, dout[r], sum + (size_t)r * k, dense + (size_t)r * D, V, D, k);
}

void es__fm_backward(float *demb, float *dV, const float *dout, const float *sum, const float *emb, int F, int E,
                     int off, const float *dense, const float *V, int D, int k, int n) {
    /* demb rows are independent; dV sums over the batch and stays serial
     * (a fixed order, whatever the thread count). */
    es__fm_backward_rows(demb, dout, sum, emb, F, E, off, k, n);
    es__fm_backward_dV(dV, dout, sum, dense, V, D, k, n);
}

/* ---- FFM pairwise term ---------------------------------------------------------------------- */

/* One row: the pair sum in double over float dots, each dot one fmaf chain
 * in column order.  The sum runs in four accumulators (pairs j, j+1, j+2,
 * j+3 of each i; the rest of an i into the first), added as (s0 + s1) +
 * (s2 + s3): an order fixed by this code and F alone, so the same bits on
 * every CPU level and thread count (no -ffast-math reorders it), with four
 * independent chains where one chain of F(F-1)/2 dependent double adds
 * bounded the row.  The body is compiled for k = 4 and 8 as constants too. */
static inline __attribute__((always_inline)) float ffm_dot(const float *a, const float *b, const int k) {
    float d = 0.0f;
    for (int c = 0; c < k; c++) d = fmaf(a[c], b[c], d);
    return d;
}

static inline __attribute__((always_inline)) double ffm_row_k(const float *er, int F, int E, const int k) {
    double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
    for (int i = 0; i < F; i++) {
        const float *ei = er + (size_t)i * E + 1;     /* v_{i, j} = ei + j k */
        const float *vi = er + 1 + (size_t)i * k;      /* v_{j, i} = vi + j E */
        int j = i + 1;
        for (; j + 4 <= F; j += 4) {
            s0 += ffm_dot(ei + (size_t)j * k, vi + (size_t)j * E, k);
            s1 += ffm_dot(ei + (size_t)(j + 1) * k, vi + (size_t)(j + 1) * E, k);
            s2 += ffm_dot(ei + (size_t)(j + 2) * k, vi + (size_t)(j + 2) * E, k);
            s3 += ffm_dot(ei + (size_t)(j + 3) * k, vi + (size_t)(j + 3) * E, k);
        }
        for (; j < F; j++) s0 += ffm_dot(ei + (size_t)j * k, vi + (size_t)j * E, k);
    }
    return (s0 + s1) + (s2 + s3);
}

ES__CLONES_FMA static double ffm_row(const float *er, int F, int E, int k) {
    if (k == 4) return ffm_row_k(er, F, E, 4);
    if (k == 8) return ffm_row_k(er, F, E, 8);
    return ffm_row_k(er, F, E, k);
}

void es__ffm_forward(float *out, const float *emb, int F, int E, int k, int n) {
ES__OMP(omp parallel for schedule(static) if (ES__PAR_WORK(n, F, E)))
    for (int r = 0; r < n; r++) out[r] = (float)ffm_row(emb + (size_t)r * F * E, F, E, k);
}

/* d v_{i,j} = g v_{j,i}; the diagonal blocks v_{i,i} get 0.  The body is
 * compiled for k = 4 and k = 8 as constants too (one vector load, multiply
 * and store a block instead of a loop of k), elementwise either way, so the
 * same bits. */
static inline __attribute__((always_inline)) void ffm_row_backward_k(float *restrict der, float g, const float *er, int F, int E,
                                                                    const int k) {
    for (int i = 0; i < F; i++) {
        float *di = der + (size_t)i * E + 1;
        for (int j = 0; j < F; j++) {
            float *d = di + (size_t)j * k;
            if (j == i) {
                memset(d, 0, (size_t)k * sizeof(float));
                continue;
            }
            const float *b = er + (size_t)j * E + 1 + (size_t)i * k;
ES__OMP(omp simd)
            for (int c = 0; c < k; c++) d[c] = g * b[c];
        }
    }
}

ES__CLONES static void ffm_row_backward(float *restrict der, float g, const float *er, int F, int E, int k) {
    if (k == 4) ffm_row_backward_k(der, g, er, F, E, 4);
    else if (k == 8) ffm_row_backward_k(der, g, er, F, E, 8);
    else ffm_row_backward_k(der, g, er, F, E, k);
}

void es__ffm_backward(float *demb, const float *dout, const float *emb, int F, int E, int k, int n) {
ES__OMP(omp parallel for schedule(static) if (ES__PAR_WORK(n, F, E)))
    for (int r = 0; r < n; r++)
        ffm_row_backward(demb + (size_t)r * F * E, dout[r], emb + (size_t)r * F * E, F, E, k);
}

/* ---- loss ---------------------------------------------------------------------------------- */

float es__sigmoid(float z) {
    if (z >= 0.0f) return 1.0f / (1.0f + expf(-z));
    float e = expf(z);
    return e / (1.0f + e);
}

double es__bce_logits_sum(const float *logit, const float *label, int n, float scale, float *dlogit) {
    double total = 0.0;
    for (int r = 0; r < n; r++) {
        double z = logit[r], y = label[r];
        total += (z > 0 ? z : 0.0) - z * y + log1p(exp(-fabs(z)));
        if (dlogit) dlogit[r] = (es__sigmoid(logit[r]) - label[r]) * scale;
    }
    return total;
}

void es__bce_logits_rows(const float *logit, const float *label, int r0, int r1, float scale, float *dlogit, double *loss) {
    for (int r = r0; r < r1; r++) {
        double z = logit[r], y = label[r];
        loss[r] = (z > 0 ? z : 0.0) - z * y + log1p(exp(-fabs(z)));
        dlogit[r] = (es__sigmoid(logit[r]) - label[r]) * scale;
    }
}

double es__bce_logits(const float *logit, const float *label, int n, float *dlogit) {
    if (n <= 0) return 0.0;
    return es__bce_logits_sum(logit, label, n, 1.0f / (float)n, dlogit) / n;
}
