/*
 * tt.c — the `tt` storage method: TT-Rec, tensor-train embedding tables
 * (Yin, Acun, Wu, Liu, "TT-Rec: Tensor Train Compression for Deep
 * Learning Recommendation Model Embeddings", MLSys 2021).
 *
 * What is stored: three tensor-train cores with a rank R and a
 * factorisation dim = d0 * d1 * d2 (share=1: one set of cores for every
 * field; share=0: one set per field, the fields' slices stacked in each
 * core).  A core "row" is one slice:
 *   core0 row i0: G0[i0] of shape [d0, R]
 *   core1 row i1: G1[i1] of shape [R, d1, R]
 *   core2 row i2: G2[i2] of shape [R, d2]
 * and the cores of a field have n0, n1, n2 slices.
 *
 * Lookup: the value's virtual row index in [0, n0 n1 n2) is its hash
 * (there is no vocabulary map), split into mixed-radix digits, most
 * significant first, exactly as in qr.c:
 *   h = es__hash_u64(key, salt_f),  salt_f = es__storage_salt(seed, f, 0)
 *   x_0 = h;  i_k = floor(x_k * n_k / 2^64);  x_{k+1} = x_k * n_k mod 2^64
 * and the value's vector is the tensor-train product, flattened row-major
 * over (a, b, c):
 *   E[a, b, c] = sum_{r, t} G0[i0][a, r] * G1[i1][r, b, t] * G2[i2][t, c]
 * computed left to right: T_a[b, t] = sum_r G0[a, r] G1[r, b, t] for each
 * a (d1 R floats of scratch on the stack, so lookups are allocation-free
 * and thread safe; d1 R <= 4096 is checked at create), then
 * E[a, b, :] = T_a[b, :] . G2.  That costs d0 d1 R (R + d2) multiply-adds
 * per value.  A pair pools sum(wt * E).
 *
 * Training: with dE = wt * dout (per value) and T, dT[t] = dE[a, b, :] .
 * G2[t, :] for each (a, b):
 *   dG2[t, c] += T[t] dE[a, b, c];  dG0[a, r] += G1[r, b, :] . dT;
 *   dG1[r, b, :] += G0[a, r] dT
 * all from the old cores; summed per distinct slice over the batch; one
 * update per touched slice of each core from the configured sparse
 * optimizer (for row-wise Adagrad a "row" is a core slice).
 *
 * Budget: with A = (B - aux) / 4 floats, slice costs u = (d0 R, R^2 d1,
 * R d2) floats.  The rank is the largest R <= max_rank (option, default
 * 32) for which cores of ceil(N^(1/3)) slices each fit, N being the
 * full-table rows (distinct + 1) the vocabulary reports (per field when
 * share=0, summed over the fields' costs); R = 1 if none does; without a
 * vocabulary R = min(8, max_rank).  Then the slices: one per core, and
 * n_k raised towards A / (3 u_k) (an equal share per core, which
 * maximises n0 n1 n2), then single slices to the core with the least
 * spent while any fits, so parameters + aux end within min(u) floats of
 * B.  share=0 first splits A over the fields (u0+u1+u2 each, the rest in
 * proportion to their full-table rows, or equally), fills them in order
 * and carries each field's leftover to the next.  aux is the base and size
 * arrays of each (field, core), or of each core when shared; the salts are
 * recomputed from the seed for each pair rather than stored.
 *
 * The factorisation of dim minimises the largest factor (then the sum);
 * the smallest factor goes in the middle, where it is multiplied by R^2 in
 * the parameter count, and the largest last, out of the d0 d1 R^2 term of
 * the lookup cost (16 = 2 x 2 x 4).
 * Initial values: every core from U(-a, a) with a = sqrt(3) sigma,
 * sigma = (s^2 / (3 R^2))^(1/6), so that E has the variance of U(-s, s),
 * s = init_scale; init_scale 0 makes core2 zero (E = 0, and training can
 * start because core0 and core1 are not) with core0/core1 drawn for
 * s = 0.05.  Options rank, max_rank, d=d0/d1/d2, n=...; resolved into
 * s->meta as "share=S,seed=N,rank=R,d=d0/d1/d2,n=n0/n1/n2[:...]" (one
 * group per field when share=0) and read back on load.
 */
#include "storage/storage.h"

#include "core/simd.h"

#include <math.h>

#define TT_MAX_RANK 128
#define TT_SCRATCH 4096 /* d1 * R floats of stack scratch per lookup */
#define TT_MAX_ROWS (UINT64_C(1) << 40)

typedef struct tt_impl {
    int F, G, R, dim;
    int d[3];
    int rl[3];            /* floats per slice of core k */
    es_rows c[3];
    es_gradacc ga[3];
    uint64_t *base;       /* [G * 3]: first slice of group g in core k at base[g*3 + k] */
    uint64_t *n;          /* [G * 3]: slices of group g in core k */
    uint64_t seed;        /* field f hashes with es__storage_salt(seed, f, 0), computed per pair */
} tt_impl;


/* ---- index --------------------------------------------------------------------------- */

static inline void tt_slices(const tt_impl *t, int f, uint64_t salt, uint64_t key, uint64_t *row) {
    const int g = t->G == 1 ? 0 : f;
    const uint64_t *n = t->n + (size_t)g * 3, *base = t->base + (size_t)g * 3;
    uint64_t x = es__hash_u64(key, salt);
    for (int k = 0; k < 3; k++) {
        unsigned __int128 y = (unsigned __int128)x * n[k];
        row[k] = base[k] + (uint64_t)(y >> 64);
        x = (uint64_t)y;
    }
}

static void tt_resolve(const void *ctx, int f, const uint64_t *keys, size_t n, uint64_t *ids) {
    const tt_impl *t = ctx;
    const uint64_t salt = es__storage_salt(t->seed, f, 0);
    for (size_t i = 0; i < n; i++) tt_slices(t, f, salt, keys[i], ids + i * 3);
}

/* ---- lookup and backward ------------------------------------------------------------------ */

static void tt_free(tt_impl *t) {
    if (!t) return;
    for (int k = 0; k < 3; k++) {
        es__rows_free(&t->c[k]);
        es__gradacc_free(&t->ga[k]);
    }
    es__free(t->base); /* n shares the allocation */
    es__free(t);
}

static void tt_destroy(es_storage *s) {
    tt_free(s->impl);
    s->impl = NULL;
}

/* o[dim] += wt * E for the slices A [d0, R], B [R, d1, R], C [R, d2]:
 * for each a, T_a[b, x] = sum_r A[a, r] B[r, b, x] (R axpys of d1 R
 * floats, the bulk of the work, through the SIMD kernels), then
 * E[a, b, :] = T_a[b, :] . C. */
static void tt_vec_acc(const tt_impl *t, const float *restrict A, const float *restrict B, const float *restrict C, float wt,
                       float *restrict o) {
    const int R = t->R, d0 = t->d[0], d1 = t->d[1], d2 = t->d[2];
    const size_t W = (size_t)d1 * (size_t)R;
    float T[TT_SCRATCH];
    for (int a = 0; a < d0; a++) {
        memset(T, 0, W * sizeof *T);
        for (int r = 0; r < R; r++) es__axpy(T, A[a * R + r], B + (size_t)r * W, W);
        for (int b = 0; b < d1; b++) {
            float *restrict oo = o + ((size_t)a * d1 + b) * d2;
            const float *restrict Tb = T + (size_t)b * R;
            for (int x = 0; x < R; x++) {
                const float w = wt * Tb[x];
                const float *restrict Cx = C + (size_t)x * d2;
                for (int c = 0; c < d2; c++) oo[c] += w * Cx[c];
            }
        }
    }
}

static void tt_lookup(es_storage *s, const es_batch *b, int r0, int r1, float *out) {
    const tt_impl *t = s->impl;
    const int F = t->F, dim = t->dim;
    uint64_t row[3];
    for (size_t P = (size_t)r0 * F, P1 = (size_t)r1 * F, fi = 0; P < P1; P++, fi = fi + 1 == (size_t)F ? 0 : fi + 1) {
        const int f = (int)fi;
        const uint64_t salt = es__storage_salt(t->seed, f, 0);
        float *o = out + (P - (size_t)r0 * F) * (size_t)dim;
        memset(o, 0, (size_t)dim * sizeof *o);
        for (uint32_t i = b->off[P]; i < b->off[P + 1]; i++) {
            tt_slices(t, f, salt, b->val[i], row);
            tt_vec_acc(t, t->c[0].w + row[0] * (uint64_t)t->rl[0], t->c[1].w + row[1] * (uint64_t)t->rl[1],
                       t->c[2].w + row[2] * (uint64_t)t->rl[2], b->wt[i], o);
        }
    }
}

/* The gradient of batch b, added slice by slice: into the gradient
 * accumulators (acc NULL), or into acc (storage.h rep_*: core k's
 * gradient [rows, rl] from acc + aoff[k], then a count per slice of the
 * values that touched it from acc + moff[k]); racc is that acc. */
static int tt_grads(es_storage *s, const es_batch *b, const float *dout, float *racc, const size_t *aoff, const size_t *moff) {
    tt_impl *t = s->impl;
    const int F = t->F, dim = t->dim, R = t->R, d0 = t->d[0], d1 = t->d[1], d2 = t->d[2];
    const size_t W = (size_t)d1 * (size_t)R;
    uint64_t row[3];
    float T[TT_SCRATCH], dT[TT_SCRATCH];
    for (size_t P = 0, PN = (size_t)b->n * F, fi = 0; P < PN; P++, fi = fi + 1 == (size_t)F ? 0 : fi + 1) {
        const int f = (int)fi;
        const uint64_t salt = es__storage_salt(t->seed, f, 0);
        const float *go = dout + P * (size_t)dim;
        for (uint32_t i = b->off[P]; i < b->off[P + 1]; i++) {
            const float wt = b->wt[i];
            tt_slices(t, f, salt, b->val[i], row);
            const float *restrict A = t->c[0].w + row[0] * (uint64_t)t->rl[0];
            const float *restrict B = t->c[1].w + row[1] * (uint64_t)t->rl[1];
            const float *restrict C = t->c[2].w + row[2] * (uint64_t)t->rl[2];
            float *g[3];
            for (int k = 0; k < 3; k++) {
                if (racc) {
                    g[k] = racc + aoff[k] + row[k] * (uint64_t)t->rl[k];
                    racc[moff[k] + row[k]] += 1.0f;
                } else if (!(g[k] = es__gradacc_row(&t->ga[k], row[k]))) {
                    for (int l = 0; l < 3; l++) es__gradacc_clear(&t->ga[l]);
                    return es__err(&s->err, ES_ENOMEM, "tt: out of memory growing the gradient scratch of core %d", k);
                }
            }
            float *restrict gA = g[0], *restrict gB = g[1], *restrict gC = g[2];
            for (int a = 0; a < d0; a++) {
                memset(T, 0, W * sizeof *T);
                for (int r = 0; r < R; r++) es__axpy(T, A[a * R + r], B + (size_t)r * W, W);
                for (int bb = 0; bb < d1; bb++) {
                    const float *restrict ge = go + ((size_t)a * d1 + bb) * d2;
                    const float *restrict Tb = T + (size_t)bb * R;
                    float *restrict dTb = dT + (size_t)bb * R;
                    for (int x = 0; x < R; x++) {
                        const float *restrict Cx = C + (size_t)x * d2;
                        float *restrict gCx = gC + (size_t)x * d2;
                        const float w = wt * Tb[x];
                        float acc = 0;
                        for (int c = 0; c < d2; c++) {
                            acc += ge[c] * Cx[c];
                            gCx[c] += w * ge[c];
                        }
                        dTb[x] = wt * acc;
                    }
                }
                for (int r = 0; r < R; r++) {
                    gA[a * R + r] += es__dot(B + (size_t)r * W, dT, W);
                    es__axpy(gB + (size_t)r * W, A[a * R + r], dT, W);
                }
            }
        }
    }
    return ES_OK;
}

static int tt_backward(es_storage *s, const es_batch *b, const float *dout) {
    tt_impl *t = s->impl;
    for (int k = 0; k < 3; k++) es__gradacc_clear(&t->ga[k]);
    int rc = tt_grads(s, b, dout, NULL, NULL, NULL);
    if (rc != ES_OK) return rc;
    for (int k = 0; k < 3; k++) es__gradacc_apply(&t->ga[k], &t->c[k]);
    return ES_OK;
}

/* Across processes, replicated (storage.h rep_*): the three cores'
 * gradients, then a count per slice of each core. */
static void tt_rep_layout(const tt_impl *t, size_t *aoff, size_t *moff, size_t *total) {
    size_t o = 0;
    for (int k = 0; k < 3; k++) {
        aoff[k] = o;
        o += (size_t)t->c[k].n_rows * (size_t)t->rl[k];
    }
    for (int k = 0; k < 3; k++) {
        moff[k] = o;
        o += (size_t)t->c[k].n_rows;
    }
    *total = o;
}

static size_t tt_rep_floats(es_storage *s) {
    size_t a[3], m[3], n;
    tt_rep_layout(s->impl, a, m, &n);
    return n;
}

static int tt_rep_backward(es_storage *s, const es_batch *b, const float *dout, float *acc) {
    size_t a[3], m[3], n;
    tt_rep_layout(s->impl, a, m, &n);
    return tt_grads(s, b, dout, acc, a, m);
}

/* One update per touched slice, as es__gradacc_apply makes it (the
 * table's step counts once; slices are independent, so their order does
 * not matter). */
static void tt_rep_apply(es_storage *s, const float *acc) {
    tt_impl *t = s->impl;
    size_t a[3], m[3], n;
    tt_rep_layout(t, a, m, &n);
    for (int k = 0; k < 3; k++) {
        es_rows *c = &t->c[k];
        if (c->last) c->step++;
        for (uint64_t r = 0; r < c->n_rows; r++)
            if (acc[m[k] + r] > 0) es__rows_update(c, r, acc + a[k] + r * (uint64_t)t->rl[k]);
    }
}

static int tt_tensors(es_storage *s, es_tensor_ref *refs, int max) {
    tt_impl *t = s->impl;
    int n = 0;
    for (int k = 0; k < 3; k++) n += es__rows_tensors(&t->c[k], NULL, 0);
    if (!refs) return n;
    if (max < n) return ES_ERANGE;
    int at = 0;
    for (int k = 0; k < 3; k++) {
        int m = es__rows_tensors(&t->c[k], refs + at, max - at);
        snprintf(refs[at].name, sizeof refs[at].name, "core%d", k);
        if (m == 2) snprintf(refs[at + 1].name, sizeof refs[at + 1].name, "opt.core%d.acc", k);
        at += m;
    }
    return at;
}

static void tt_field_stats(es_storage *s, const es_vocab *vocab, int field, es_field_stats *out) {
    tt_impl *t = s->impl;
    if (field < 0 || field >= t->F) {
        memset(out, 0, sizeof *out);
        return;
    }
    /* rows: the field's core slices; collisions: values sharing all three */
    const int g = t->G == 1 ? 0 : field;
    es__rows_field_stats(3, tt_resolve, t, vocab, field, t->n[g * 3] + t->n[g * 3 + 1] + t->n[g * 3 + 2], out);
}

/* ---- create --------------------------------------------------------------------------------- */

/* dim = d0 d1 d2 with the smallest largest factor (then smallest sum):
 * the smallest in the middle, the largest last (file comment). */
static void tt_factor(int dim, int *d) {
    int best_max = INT32_MAX, best_sum = INT32_MAX;
    d[0] = d[1] = 1;
    d[2] = dim;
    for (int a = 1; a <= dim; a++) {
        if (dim % a) continue;
        for (int b = a; b <= dim / a; b++) {
            if ((dim / a) % b) continue;
            int c = dim / a / b;
            if (c < b) break;
            /* a <= b <= c */
            if (c < best_max || (c == best_max && a + b + c < best_sum)) {
                best_max = c;
                best_sum = a + b + c;
                d[0] = b;
                d[1] = a;
                d[2] = c;
            }
        }
    }
}

static void tt_costs(const int *d, int R, uint64_t *u) {
    u[0] = (uint64_t)d[0] * (uint64_t)R;
    u[1] = (uint64_t)R * (uint64_t)R * (uint64_t)d[1];
    u[2] = (uint64_t)R * (uint64_t)d[2];
}

/* Slices per core for A >= u0 + u1 + u2 floats (file comment); returns the
 * floats left. */
static uint64_t tt_fill(uint64_t A, const uint64_t *u, uint64_t *n) {
    uint64_t left = A;
    for (int k = 0; k < 3; k++) {
        n[k] = 1;
        left -= u[k];
    }
    for (int k = 0; k < 3; k++) {
        uint64_t want = A / (3 * u[k]);
        if (want > TT_MAX_ROWS) want = TT_MAX_ROWS;
        if (want > n[k]) {
            uint64_t add = ES_MIN(want - n[k], left / u[k]);
            n[k] += add;
            left -= add * u[k];
        }
    }
    for (;;) {
        int best = -1;
        for (int k = 0; k < 3; k++)
            if (u[k] <= left && n[k] < TT_MAX_ROWS && (best < 0 || n[k] * u[k] < n[best] * u[best])) best = k;
        if (best < 0) break;
        n[best]++;
        left -= u[best];
    }
    return left;
}

static const es__opt_spec tt_opts[] = {
    ES_OPT_SHARE,
    ES_OPT_SEED,
    ES_OPT_U("rank", 1, TT_MAX_RANK, NULL, 0, "TT rank R (default: the largest <= max_rank the budget holds)", "2", ""),
    ES_OPT_L("d", 1, 65536, NULL, 0, "factorisation of dim d0/d1/d2 (default: as balanced as dim allows)", "2/1/4", ""),
    ES_OPT_L("n", 1, TT_MAX_ROWS, NULL, ES_OPT_SIZES, "rows of each core n0/n1/n2[:...] per field (needs rank=; default: from the budget)",
             "2/2/2:3/3/3", "rank=2"),
    ES_OPT_U("max_rank", 1, TT_MAX_RANK, "32", 0, "largest rank the budget solver tries", "4", ""),
};

static int tt_create(es_storage *s, const es_vocab *vocab, es_err *err) {
    const int F = s->p.n_fields, dim = s->p.dim;
    int found, rc;
    const int share = es__storage_opt_int(s, "share");
    int R = es__storage_opt_given(s, "rank") ? es__storage_opt_int(s, "rank") : 0, max_rank = es__storage_opt_int(s, "max_rank");
    if (es__storage_opt_given(s, "seed")) s->p.seed = es__storage_opt_u64(s, "seed");
    int d[3];
    uint64_t dv[3];
    if ((rc = es__storage_opt_list(s, "d", 1, 3, dv, &found, err)) != 0) return rc;
    if (found) {
        if (dv[0] * dv[1] * dv[2] != (uint64_t)dim)
            return es__err(err, ES_EINVAL, "tt: d=%llu/%llu/%llu does not multiply to dim %d", (unsigned long long)dv[0],
                           (unsigned long long)dv[1], (unsigned long long)dv[2], dim);
        for (int k = 0; k < 3; k++) d[k] = (int)dv[k];
    } else {
        tt_factor(dim, d);
    }
    /* the lookup's stack scratch holds d1 R floats */
    max_rank = ES_MIN(max_rank, TT_SCRATCH / d[1]);
    if (R > 0 && (size_t)d[1] * (size_t)R > TT_SCRATCH)
        return es__err(err, ES_EINVAL, "tt: rank %d with a middle factor d1 = %d exceeds the %d-float lookup scratch (d1 x rank)",
                       R, d[1], TT_SCRATCH);
    if (max_rank < 1)
        return es__err(err, ES_EINVAL, "tt: a middle factor d1 = %d exceeds the %d-float lookup scratch; choose d= with a smaller "
                       "middle factor", d[1], TT_SCRATCH);
    const int G = share ? 1 : F;
    const size_t aux = (size_t)6 * G * sizeof(uint64_t);

    uint64_t *n = es__malloc((size_t)G * 3 * sizeof *n), *Af = es__malloc((size_t)G * sizeof *Af);
    if (!n || !Af) {
        rc = es__err(err, ES_ENOMEM, "tt: out of memory");
        goto fail;
    }
    if ((rc = es__storage_opt_list(s, "n", G, 3, n, &found, err)) != 0) goto fail;
    if (found && R == 0) {
        rc = es__err(err, ES_EINVAL, "tt: option n= needs rank=");
        goto fail;
    }
    uint64_t u[3];
    if (!found) {
        if (!(s->budget_bytes > 0)) {
            rc = es__err(err, ES_EINVAL, "tt: needs a budget: bytes (> 1), or a fraction (0, 1] of the full table with a "
                                         "vocabulary");
            goto fail;
        }
        double avail = s->budget_bytes - (double)aux;
        double A = avail > 0 ? floor(avail / sizeof(float)) : 0;
        if (A > (double)TT_MAX_ROWS) {
            rc = es__err(err, ES_ERANGE, "tt: a budget of %.0f bytes is larger than this build allocates", s->budget_bytes);
            goto fail;
        }
        if (R == 0) {
            /* the largest rank whose cores cover the vocabulary (file comment) */
            R = 1;
            for (int r = vocab ? max_rank : ES_MIN(8, max_rank); r >= 1; r--) {
                tt_costs(d, r, u);
                double cost = 0;
                for (int g = 0; g < G; g++) {
                    double N = 0;
                    if (vocab)
                        for (int f = share ? 0 : g; f < (share ? F : g + 1); f++) N += (double)es_vocab_distinct(vocab, f) + 1;
                    double side = vocab ? ceil(cbrt(N)) : 1;
                    cost += side * (double)(u[0] + u[1] + u[2]);
                }
                if (cost <= A) {
                    R = r;
                    break;
                }
            }
        }
        tt_costs(d, R, u);
        const uint64_t umin = u[0] + u[1] + u[2];
        if (A < (double)G * (double)umin) {
            rc = es__err(err, ES_EBUDGET,
                         "tt: a budget of %.0f bytes leaves %.0f floats after %zu bytes of lookup arrays; one slice per "
                         "core at rank %d needs %llu floats%s (%.0f bytes in all)%s",
                         s->budget_bytes, A, aux, R, (unsigned long long)umin, share ? "" : " per field",
                         (double)aux + (double)G * (double)umin * sizeof(float),
                         share ? "" : "; share=1 pays for one set, not one per field");
            goto fail;
        }
        es__storage_split((uint64_t)A, G, share ? NULL : vocab, umin, Af);
        uint64_t carry = 0;
        for (int g = 0; g < G; g++) carry = tt_fill(Af[g] + carry, u, n + (size_t)g * 3);
    }
    tt_costs(d, R, u);
    uint64_t rows[3] = {0, 0, 0};
    for (int g = 0; g < G; g++)
        for (int k = 0; k < 3; k++) rows[k] += n[(size_t)g * 3 + k]; /* each <= 2^40, G <= 2^20 */
    for (int k = 0; k < 3; k++)
        if (rows[k] > TT_MAX_ROWS) {
            rc = es__err(err, ES_ERANGE, "tt: core %d of %llu slices is more than this build allocates", k,
                         (unsigned long long)rows[k]);
            goto fail;
        }

    tt_impl *t = es__calloc(1, sizeof *t);
    if (!t) {
        rc = es__err(err, ES_ENOMEM, "tt: out of memory");
        goto fail;
    }
    t->F = F;
    t->G = G;
    t->R = R;
    t->dim = dim;
    memcpy(t->d, d, sizeof d);
    for (int k = 0; k < 3; k++) t->rl[k] = (int)u[k];
    t->base = es__malloc(aux);
    if (!t->base) {
        tt_free(t);
        rc = es__err(err, ES_ENOMEM, "tt: out of memory");
        goto fail;
    }
    t->n = t->base + (size_t)G * 3;
    es_rng rng;
    es__rng_seed(&rng, s->p.seed);
    const float sc = s->p.init_scale > 0 ? s->p.init_scale : 0.05f;
    const float a = sqrtf(3.0f) * powf(sc * sc / (3.0f * (float)R * (float)R), 1.0f / 6.0f);
    for (int k = 0; k < 3; k++) {
        const float ak = (k == 2 && s->p.init_scale == 0) ? 0.0f : a;
        size_t ga_cap = ES_MIN((size_t)s->p.max_batch * (size_t)F, (size_t)rows[k]);
        if (es__rows_init(&t->c[k], rows[k], t->rl[k], &s->p.opt, &rng, ak) != ES_OK ||
            es__gradacc_init(&t->ga[k], ga_cap, t->rl[k]) != ES_OK) {
            tt_free(t);
            rc = es__err(err, ES_ENOMEM, "tt: out of memory for core %d (%llu slices of %llu floats)", k,
                         (unsigned long long)rows[k], (unsigned long long)u[k]);
            goto fail;
        }
    }
    uint64_t at[3] = {0, 0, 0};
    for (int g = 0; g < G; g++)
        for (int k = 0; k < 3; k++) {
            t->n[(size_t)g * 3 + k] = n[(size_t)g * 3 + k];
            t->base[(size_t)g * 3 + k] = at[k];
            at[k] += n[(size_t)g * 3 + k];
        }
    t->seed = s->p.seed;

    const uint64_t dr[3] = {(uint64_t)d[0], (uint64_t)d[1], (uint64_t)d[2]};
    if ((rc = es__storage_opt_set_u64(s, "share", (uint64_t)share, err)) != 0 ||
        (rc = es__storage_opt_set_u64(s, "seed", s->p.seed, err)) != 0 || (rc = es__storage_opt_set_u64(s, "rank", (uint64_t)R, err)) != 0 ||
        (rc = es__storage_opt_set_list(s, "d", dr, 1, 3, err)) != 0 || (rc = es__storage_opt_set_list(s, "n", n, G, 3, err)) != 0) {
        tt_free(t);
        goto fail;
    }
    s->impl = t;
    s->param_bytes = s->state_bytes = 0;
    for (int k = 0; k < 3; k++) {
        s->param_bytes += es__rows_param_bytes(&t->c[k]);
        s->state_bytes += es__rows_state_bytes(&t->c[k]);
    }
    s->aux_bytes = aux;
    es__free(n);
    es__free(Af);
    return ES_OK;
fail:
    es__free(n);
    es__free(Af);
    return rc;
}

const es_storage_ops es__storage_tt = {
    .name = "tt",
    .summary = "TT-Rec: three tensor-train cores over a hashed virtual index, rank solved from the budget",
    .create = tt_create,
    .lookup = tt_lookup,
    .backward = tt_backward,
    .tensors = tt_tensors,
    .after_load = NULL,
    .field_stats = tt_field_stats,
    .destroy = tt_destroy,
    ES_STORAGE_OPTS(tt_opts),
    .default_budget = ES_DEFAULT_BUDGET,
    .rep_floats = tt_rep_floats,
    .rep_backward = tt_rep_backward,
    .rep_apply = tt_rep_apply,
};
