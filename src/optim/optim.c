/*
 * optim.c — the optimizers: dense updates (SGD, Adagrad, Adam) on flat
 * arrays, the stateful dense optimizer built on them (es__dense_opt: state
 * arrays, Adam step counts, weight decay per segment, zeroing gradients)
 * that the net, DHE and MDE all use, and the sparse update of one
 * embedding row (es__row_update) that every table uses.  The dense
 * formulas follow torch.optim (see optim.h and docs/models.md) so that a
 * PyTorch reference tracks the same trajectory.
 *
 * Adagrad and Adam need a square root per element.  sqrtf may set errno,
 * so without -fno-math-errno GCC keeps a branch around every call and the
 * loops stay scalar (about 3 ns per parameter: a noticeable share of a
 * DCN-v2 step).  They therefore have AVX-512 and AVX2 versions written
 * with intrinsics, picked at first use, next to the portable `_ref`
 * loops.  The vector versions perform the same IEEE operations in the same
 * order (separate multiply and add, correctly rounded sqrt and divide), so
 * they give the same bits as the reference; tests/test_model.c checks it.
 * The level comes from the library's one CPU probe (es__cpu_level in
 * core/simd.h), so ES_SIMD=ref forces the reference loops here as it does
 * everywhere.
 *
 * Every update is elementwise, so long arrays are split over threads in
 * fixed blocks without changing any result.
 */
#include "optim/optim.h"

#include "core/core.h"
#include "core/simd.h"

#include <math.h>

/* The vector kernels and their references must round identically: no
 * fused multiply-add contraction (GCC already keeps it off in ISO C mode;
 * Clang contracts by default). */
#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif

#if defined(__x86_64__) && defined(__GNUC__)
#define ES__OPT_X86 1
#include <immintrin.h>
#endif

/* Arrays shorter than this are updated by the calling thread alone. */
#define ES__PAR_ELEMS (1 << 16)
#define ES__OPT_BLOCK 4096

/* ---- constants of one update ----------------------------------------------- */

typedef struct {
    float lr, eps, wd;
    float b1, b2, c1, c2;   /* beta1, beta2, 1 - beta1, 1 - beta2 */
    float step, inv_sqrt_bc2; /* lr / (1 - beta1^t), 1 / sqrt(1 - beta2^t) */
} opt_k;

/* ---- SGD: no square root, the plain loop vectorises ----------------------------- */

void es__sgd_update(float *w, const float *g, size_t count, float lr, float wd) {
    long long n = (long long)count;
ES__OMP(omp parallel for simd schedule(static) if (n >= ES__PAR_ELEMS))
    for (long long i = 0; i < n; i++) {
        float gi = g[i] + wd * w[i];
        w[i] -= lr * gi;
    }
}

/* ---- reference loops ----------------------------------------------------------- */

static void adagrad_ref(float *w, const float *g, float *acc, size_t n, const opt_k *k) {
    for (size_t i = 0; i < n; i++) {
        float gi = g[i] + k->wd * w[i];
        float a = acc[i] + gi * gi;
        acc[i] = a;
        w[i] -= k->lr * gi / (sqrtf(a) + k->eps);
    }
}

static void adam_ref(float *w, const float *g, float *m, float *v, size_t n, const opt_k *k) {
    for (size_t i = 0; i < n; i++) {
        float gi = g[i] + k->wd * w[i];
        float mi = k->b1 * m[i] + k->c1 * gi;
        float vi = k->b2 * v[i] + k->c2 * gi * gi;
        m[i] = mi;
        v[i] = vi;
        w[i] -= k->step * mi / (sqrtf(vi) * k->inv_sqrt_bc2 + k->eps);
    }
}

/* ---- vector versions (same operations, same order) ------------------------------ */

#ifdef ES__OPT_X86
__attribute__((target("avx512f"))) static void adagrad_avx512(float *w, const float *g, float *acc, size_t n,
                                                               const opt_k *k) {
    __m512 lr = _mm512_set1_ps(k->lr), eps = _mm512_set1_ps(k->eps), wd = _mm512_set1_ps(k->wd);
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 wi = _mm512_loadu_ps(w + i);
        __m512 gi = _mm512_add_ps(_mm512_loadu_ps(g + i), _mm512_mul_ps(wd, wi));
        __m512 a = _mm512_add_ps(_mm512_loadu_ps(acc + i), _mm512_mul_ps(gi, gi));
        _mm512_storeu_ps(acc + i, a);
        __m512 den = _mm512_add_ps(_mm512_sqrt_ps(a), eps);
        _mm512_storeu_ps(w + i, _mm512_sub_ps(wi, _mm512_div_ps(_mm512_mul_ps(lr, gi), den)));
    }
    adagrad_ref(w + i, g + i, acc + i, n - i, k);
}

__attribute__((target("avx2"))) static void adagrad_avx2(float *w, const float *g, float *acc, size_t n,
                                                          const opt_k *k) {
    __m256 lr = _mm256_set1_ps(k->lr), eps = _mm256_set1_ps(k->eps), wd = _mm256_set1_ps(k->wd);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 wi = _mm256_loadu_ps(w + i);
        __m256 gi = _mm256_add_ps(_mm256_loadu_ps(g + i), _mm256_mul_ps(wd, wi));
        __m256 a = _mm256_add_ps(_mm256_loadu_ps(acc + i), _mm256_mul_ps(gi, gi));
        _mm256_storeu_ps(acc + i, a);
        __m256 den = _mm256_add_ps(_mm256_sqrt_ps(a), eps);
        _mm256_storeu_ps(w + i, _mm256_sub_ps(wi, _mm256_div_ps(_mm256_mul_ps(lr, gi), den)));
    }
    adagrad_ref(w + i, g + i, acc + i, n - i, k);
}

__attribute__((target("avx512f"))) static void adam_avx512(float *w, const float *g, float *m, float *v, size_t n,
                                                            const opt_k *k) {
    __m512 wd = _mm512_set1_ps(k->wd), b1 = _mm512_set1_ps(k->b1), b2 = _mm512_set1_ps(k->b2);
    __m512 c1 = _mm512_set1_ps(k->c1), c2 = _mm512_set1_ps(k->c2), step = _mm512_set1_ps(k->step);
    __m512 isb = _mm512_set1_ps(k->inv_sqrt_bc2), eps = _mm512_set1_ps(k->eps);
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 wi = _mm512_loadu_ps(w + i);
        __m512 gi = _mm512_add_ps(_mm512_loadu_ps(g + i), _mm512_mul_ps(wd, wi));
        __m512 mi = _mm512_add_ps(_mm512_mul_ps(b1, _mm512_loadu_ps(m + i)), _mm512_mul_ps(c1, gi));
        __m512 vi = _mm512_add_ps(_mm512_mul_ps(b2, _mm512_loadu_ps(v + i)), _mm512_mul_ps(_mm512_mul_ps(c2, gi), gi));
        _mm512_storeu_ps(m + i, mi);
        _mm512_storeu_ps(v + i, vi);
        __m512 den = _mm512_add_ps(_mm512_mul_ps(_mm512_sqrt_ps(vi), isb), eps);
        _mm512_storeu_ps(w + i, _mm512_sub_ps(wi, _mm512_div_ps(_mm512_mul_ps(step, mi), den)));
    }
    adam_ref(w + i, g + i, m + i, v + i, n - i, k);
}

__attribute__((target("avx2"))) static void adam_avx2(float *w, const float *g, float *m, float *v, size_t n,
                                                       const opt_k *k) {
    __m256 wd = _mm256_set1_ps(k->wd), b1 = _mm256_set1_ps(k->b1), b2 = _mm256_set1_ps(k->b2);
    __m256 c1 = _mm256_set1_ps(k->c1), c2 = _mm256_set1_ps(k->c2), step = _mm256_set1_ps(k->step);
    __m256 isb = _mm256_set1_ps(k->inv_sqrt_bc2), eps = _mm256_set1_ps(k->eps);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 wi = _mm256_loadu_ps(w + i);
        __m256 gi = _mm256_add_ps(_mm256_loadu_ps(g + i), _mm256_mul_ps(wd, wi));
        __m256 mi = _mm256_add_ps(_mm256_mul_ps(b1, _mm256_loadu_ps(m + i)), _mm256_mul_ps(c1, gi));
        __m256 vi = _mm256_add_ps(_mm256_mul_ps(b2, _mm256_loadu_ps(v + i)), _mm256_mul_ps(_mm256_mul_ps(c2, gi), gi));
        _mm256_storeu_ps(m + i, mi);
        _mm256_storeu_ps(v + i, vi);
        __m256 den = _mm256_add_ps(_mm256_mul_ps(_mm256_sqrt_ps(vi), isb), eps);
        _mm256_storeu_ps(w + i, _mm256_sub_ps(wi, _mm256_div_ps(_mm256_mul_ps(step, mi), den)));
    }
    adam_ref(w + i, g + i, m + i, v + i, n - i, k);
}
#endif

/* ---- dispatch ------------------------------------------------------------------- */

typedef void (*adagrad_fn)(float *, const float *, float *, size_t, const opt_k *);
typedef void (*adam_fn)(float *, const float *, float *, float *, size_t, const opt_k *);

static struct {
    int ready;
    adagrad_fn adagrad;
    adam_fn adam;
} K;

static void pick(void) {
    /* Racing threads all write the same pointers: harmless. */
    K.adagrad = adagrad_ref;
    K.adam = adam_ref;
#ifdef ES__OPT_X86
    /* The library's one CPU probe (core/simd.h), ES_SIMD applied. */
    switch (es__cpu_level()) {
    case ES_CPU_AVX512:
        K.adagrad = adagrad_avx512;
        K.adam = adam_avx512;
        break;
    case ES_CPU_AVX2:
        K.adagrad = adagrad_avx2;
        K.adam = adam_avx2;
        break;
    case ES_CPU_REF: break;
    }
#endif
    __atomic_store_n(&K.ready, 1, __ATOMIC_RELEASE);
}

static inline void ensure(void) {
    if (!__atomic_load_n(&K.ready, __ATOMIC_ACQUIRE)) pick();
}

/* ---- public entry points ------------------------------------------------------------ */

void es__adagrad_update_ref(float *w, const float *g, float *acc, size_t count, float lr, float eps, float wd) {
    opt_k k = {.lr = lr, .eps = eps, .wd = wd};
    adagrad_ref(w, g, acc, count, &k);
}

void es__adagrad_update(float *w, const float *g, float *acc, size_t count, float lr, float eps, float wd) {
    ensure();
    opt_k k = {.lr = lr, .eps = eps, .wd = wd};
    long long nb = (long long)((count + ES__OPT_BLOCK - 1) / ES__OPT_BLOCK);
ES__OMP(omp parallel for schedule(static) if (count >= ES__PAR_ELEMS))
    for (long long b = 0; b < nb; b++) {
        size_t off = (size_t)b * ES__OPT_BLOCK, len = ES_MIN((size_t)ES__OPT_BLOCK, count - off);
        K.adagrad(w + off, g + off, acc + off, len, &k);
    }
}

/* Bias corrections in double: 1 - beta^t for small t is tiny and would
 * lose digits in float. */
static opt_k adam_consts(float lr, float beta1, float beta2, float eps, float wd, int64_t t) {
    double bc1 = 1.0 - pow((double)beta1, (double)t);
    double bc2 = 1.0 - pow((double)beta2, (double)t);
    opt_k k = {.lr = lr,
               .eps = eps,
               .wd = wd,
               .b1 = beta1,
               .b2 = beta2,
               .c1 = 1.0f - beta1,
               .c2 = 1.0f - beta2,
               .step = (float)(lr / bc1),
               .inv_sqrt_bc2 = (float)(1.0 / sqrt(bc2))};
    return k;
}

void es__adam_update_ref(float *w, const float *g, float *m, float *v, size_t count, float lr, float beta1,
                         float beta2, float eps, float wd, int64_t t) {
    opt_k k = adam_consts(lr, beta1, beta2, eps, wd, t);
    adam_ref(w, g, m, v, count, &k);
}

void es__adam_update(float *w, const float *g, float *m, float *v, size_t count, float lr, float beta1, float beta2,
                     float eps, float wd, int64_t t) {
    ensure();
    opt_k k = adam_consts(lr, beta1, beta2, eps, wd, t);
    long long nb = (long long)((count + ES__OPT_BLOCK - 1) / ES__OPT_BLOCK);
ES__OMP(omp parallel for schedule(static) if (count >= ES__PAR_ELEMS))
    for (long long b = 0; b < nb; b++) {
        size_t off = (size_t)b * ES__OPT_BLOCK, len = ES_MIN((size_t)ES__OPT_BLOCK, count - off);
        K.adam(w + off, g + off, m + off, v + off, len, &k);
    }
}

/* ---- sparse row update ------------------------------------------------------------------ */

/* x where keep, else +0.0f: a select by bit mask, which vectorizes. */
static inline float keep_if(int keep, float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    u &= -(uint32_t)(keep != 0);
    memcpy(&x, &u, sizeof x);
    return x;
}

/* One body for the dispatched update and its reference twin: they differ
 * only in the dot and axpy kernels (inlined with constant pointers). */
static inline __attribute__((always_inline)) void row_update(float *restrict w, float *restrict acc, const float *restrict g, int dim, const es_optim_params *o,
                              float (*dot)(const float *, const float *, size_t),
                              void (*axpy)(float *, float, const float *, size_t)) {
    const float lr = o->lr, eps = o->eps;
    switch (o->kind) {
    case ES_OPT_SGD: axpy(w, -lr, g, (size_t)dim); break;
    case ES_OPT_ADAGRAD:
        /* simd: lane-wise the same IEEE operations (sqrt and division are
         * correctly rounded in every width), so the same bits */
ES__OMP(omp simd)
        for (int d = 0; d < dim; d++) {
            acc[d] += g[d] * g[d];
            w[d] -= lr * g[d] / (sqrtf(acc[d]) + eps);
        }
        break;
    case ES_OPT_ROWWISE_ADAGRAD: {
        /* FBGEMM / TorchRec convention: the row's accumulator grows by the
         * mean squared gradient of the row, and the whole row takes one step
         * size.  One float of state per row instead of dim. */
        float ms = dot(g, g, (size_t)dim) / (float)dim;
        acc[0] += ms;
        axpy(w, -lr / (sqrtf(acc[0]) + eps), g, (size_t)dim);
        break;
    }
    case ES_OPT_FTRL: {
        /* McMahan et al. 2013, Algorithm 1, per coordinate; float state,
         * the same operations in the same order in both twins. */
        float *z = acc, *n = acc + dim;
        const float ia = 1.0f / o->ftrl_alpha, beta = o->ftrl_beta, l1 = o->ftrl_l1, l2 = o->ftrl_l2;
        /* simd, as Adagrad's; the new weight is computed for every lane and
         * zeroed by a bit mask where |z| <= l1 (the same +0.0f, and the same
         * NaN where z is NaN, as the branch it replaces), so that the loop
         * has no control flow to stop the vectorizer */
ES__OMP(omp simd)
        for (int d = 0; d < dim; d++) {
            const float gd = g[d], nd = n[d] + gd * gd, sq = sqrtf(nd);
            const float sigma = (sq - sqrtf(n[d])) * ia;
            const float zd = z[d] + (gd - sigma * w[d]);
            const float wn = -(zd - copysignf(l1, zd)) / ((beta + sq) * ia + l2);
            z[d] = zd;
            n[d] = nd;
            w[d] = keep_if(!(fabsf(zd) <= l1), wn);
        }
        break;
    }
    default: ES_ASSERT(!"row optimizer must be sgd, adagrad, rowwise adagrad or ftrl");
    }
}

size_t es__row_state_floats(es_optim kind, int dim) {
    switch (kind) {
    case ES_OPT_ADAGRAD: return (size_t)dim;
    case ES_OPT_ROWWISE_ADAGRAD: return 1;
    case ES_OPT_FTRL: return 2 * (size_t)dim;
    default: return 0;
    }
}

double es__row_decay_factor(const es_optim_params *o, uint32_t touches) {
    if (!(o->row_l2 > 0) || o->kind == ES_OPT_FTRL) return 1.0; /* FTRL: L2 is in the closed form */
    double l2 = (double)o->row_l2;
    if (o->row_l2_freq > 0) {
        const double c1 = 1.0 + (double)touches;
        l2 *= o->row_l2_freq == 0.5f ? 1.0 / sqrt(c1) : pow(c1, -(double)o->row_l2_freq);
    }
    return 1.0 - (double)o->lr * l2;
}

void es__row_decay(float *w, const float *acc, int dim, const es_optim_params *o, int64_t missed, uint32_t touches) {
    (void)acc; /* decoupled: the decay does not depend on the accumulator (see optim.h) */
    if (missed <= 0 || !(o->row_l2 > 0) || o->kind == ES_OPT_FTRL) return;
    const float f = (float)pow(es__row_decay_factor(o, touches), (double)missed);
    for (int d = 0; d < dim; d++) w[d] *= f;
}

/* cloned for AVX2 / AVX-512: Adagrad's and FTRL's square roots and
 * divisions 8 or 16 lanes at a time (lane-wise IEEE operations: the same
 * bits as the baseline and the reference) */
ES__CLONES static void row_update_wide(float *restrict w, float *restrict acc, const float *restrict g, int dim,
                                        const es_optim_params *o) {
    row_update(w, acc, g, dim, o, es__dot, es__axpy);
}

ES__CLONES static void row_update_range_wide(float *restrict w, float *restrict acc, const uint64_t *rows, const float *g,
                                              size_t i0, size_t i1, int dim, const es_optim_params *o) {
    /* Rows are scattered over the table: fetch a few updates ahead (for
     * writing) so the read-modify-writes do not wait on memory one by one:
     * the whole row and the whole state (FFM rows: 10 and 20 lines), up to
     * 2 KB each. */
    enum { AHEAD = 8 };
    const size_t d = (size_t)dim, per = es__row_state_floats(o->kind, dim);
    const size_t wb = ES_MIN(d * sizeof(float), (size_t)2048), sb = ES_MIN(per * sizeof(float), (size_t)2048);
    for (size_t i = i0; i < i1; i++) {
        if (i + AHEAD < i1) {
            const uint64_t r = rows[i + AHEAD];
            const char *pw = (const char *)(w + r * d);
            for (size_t b = 0; b < wb; b += 64) __builtin_prefetch(pw + b, 1, 1);
            if (sb) {
                const char *ps = (const char *)(acc + r * per);
                for (size_t b = 0; b < sb; b += 64) __builtin_prefetch(ps + b, 1, 1);
            }
        }
        const uint64_t r = rows[i];
        row_update(w + r * d, per ? acc + r * per : NULL, g + i * d, dim, o, es__dot, es__axpy);
    }
}

void es__row_update_range(float *w, float *acc, const uint64_t *rows, const float *g, size_t i0, size_t i1, int dim,
                          const es_optim_params *o) {
    row_update_range_wide(w, acc, rows, g, i0, i1, dim, o);
}

/* (the clones sit behind a static function: a cloned extern one is
 * exported from the shared library, resolver and all) */
void es__row_update(float *restrict w, float *restrict acc, const float *restrict g, int dim, const es_optim_params *o) {
    row_update_wide(w, acc, g, dim, o);
}

void es__row_update_ref(float *restrict w, float *restrict acc, const float *restrict g, int dim, const es_optim_params *o) {
    row_update(w, acc, g, dim, o, es__dot_ref, es__axpy_ref);
}

/* ---- the dense optimizer ------------------------------------------------------------------- */

static int n_state_arrays(es_optim kind) { return kind == ES_OPT_ADAM ? 2 : kind == ES_OPT_ADAGRAD ? 1 : 0; }

static size_t round_align(size_t x) { return (x + ES_ALIGN - 1) & ~(size_t)(ES_ALIGN - 1); }

/* The block: step counts [n_groups] (int64), the segment table, the marks,
 * then the state arrays, each part starting on a 64-byte boundary.  Fills
 * the offsets of the parts; 0 on overflow. */
typedef struct {
    size_t steps, segs, smark, gmark, arrays, array_stride, total;
} dense_layout;

static int dense_layout_of(es_optim kind, size_t n, int max_segs, int n_groups, dense_layout *L) {
    const size_t ng = (size_t)n_groups, ns = (size_t)max_segs;
    size_t a, b, c, stride, arr;
    L->steps = 0;
    if (ng > SIZE_MAX / 64 || ns > SIZE_MAX / 64 || n > SIZE_MAX / 8) return 0;
    a = round_align(ng * sizeof(int64_t));
    L->segs = a;
    b = round_align(ns * sizeof(es__dense_seg));
    if (!es__add_size(a, b, &a)) return 0;
    L->smark = a;
    L->gmark = a + ns;
    c = round_align(ns + ng);
    if (!es__add_size(a, c, &a)) return 0;
    L->arrays = a;
    stride = round_align(n * sizeof(float));
    L->array_stride = stride;
    if (!es__mul_size(stride, (size_t)n_state_arrays(kind), &arr) || !es__add_size(a, arr, &a)) return 0;
    L->total = a;
    return 1;
}

size_t es__dense_opt_alloc_bytes(es_optim kind, size_t n, int max_segs, int n_groups) {
    dense_layout L;
    if (max_segs < 0 || n_groups < 1 || !dense_layout_of(kind, n, max_segs, n_groups, &L)) return SIZE_MAX;
    return L.total;
}

int es__dense_opt_init(es__dense_opt *o, const es_optim_params *p, float weight_decay, float *w, float *g, size_t n,
                       int max_segs, int n_groups) {
    memset(o, 0, sizeof *o);
    if (p->kind != ES_OPT_SGD && p->kind != ES_OPT_ADAGRAD && p->kind != ES_OPT_ADAM) return ES_EINVAL;
    if (max_segs < 0 || n_groups < 1 || (n && (!w || !g))) return ES_EINVAL;
    dense_layout L;
    if (!dense_layout_of(p->kind, n, max_segs, n_groups, &L)) return ES_EINVAL;
    char *b = es__alloc_aligned(L.total); /* zeroed: m = v = 0, steps 0, no marks */
    if (!b) return ES_ENOMEM;
    o->p = *p;
    o->weight_decay = weight_decay;
    o->w = w;
    o->g = g;
    o->n = n;
    o->max_segs = max_segs;
    o->n_groups = n_groups;
    o->block = b;
    o->segs = (es__dense_seg *)(b + L.segs);
    o->seg_mark = (unsigned char *)(b + L.smark);
    o->group_mark = (unsigned char *)(b + L.gmark);
    if (p->kind == ES_OPT_ADAM) o->step = (int64_t *)(b + L.steps);
    for (int a = 0; a < n_state_arrays(p->kind); a++) o->state[a] = (float *)(b + L.arrays + (size_t)a * L.array_stride);
    if (p->kind == ES_OPT_ADAGRAD)
        for (size_t i = 0; i < n; i++) o->state[0][i] = p->init_acc;
    return ES_OK;
}

void es__dense_opt_free(es__dense_opt *o) {
    if (!o) return;
    es__free_aligned(o->block);
    memset(o, 0, sizeof *o);
}

int es__dense_opt_add_seg(es__dense_opt *o, size_t off, size_t count, int decay, int group) {
    ES_ASSERT(o->n_segs < o->max_segs);
    ES_ASSERT(group >= 0 && group < o->n_groups);
    ES_ASSERT(off <= o->n && count <= o->n - off);
    o->segs[o->n_segs] = (es__dense_seg){.off = off, .count = count, .decay = decay != 0, .group = group};
    o->seg_mark[o->n_segs] = 0;
    return o->n_segs++;
}

void es__dense_opt_clear_segs(es__dense_opt *o) {
    o->n_segs = 0;
    memset(o->seg_mark, 0, (size_t)o->max_segs);
    memset(o->group_mark, 0, (size_t)o->n_groups);
}

/* Update segment s with the group's step count already advanced. */
static void dense_seg_update(es__dense_opt *o, const es__dense_seg *s) {
    const es_optim_params *p = &o->p;
    if (s->count == 0) return; /* a placeholder */
    const float wd = s->decay ? o->weight_decay : 0.0f;
    float *w = o->w + s->off;
    const float *g = o->g + s->off;
    switch (p->kind) {
    case ES_OPT_SGD: es__sgd_update(w, g, s->count, p->lr, wd); break;
    case ES_OPT_ADAGRAD: es__adagrad_update(w, g, o->state[0] + s->off, s->count, p->lr, p->eps, wd); break;
    case ES_OPT_ADAM:
        es__adam_update(w, g, o->state[0] + s->off, o->state[1] + s->off, s->count, p->lr, p->beta1, p->beta2, p->eps,
                        wd, o->step[s->group]);
        break;
    default: ES_ASSERT(!"dense optimizer kind checked at init");
    }
    memset(o->g + s->off, 0, s->count * sizeof(float));
}

void es__dense_opt_step(es__dense_opt *o) {
    if (o->step)
        for (int gr = 0; gr < o->n_groups; gr++) o->step[gr]++;
    for (int i = 0; i < o->n_segs; i++) dense_seg_update(o, &o->segs[i]);
    memset(o->seg_mark, 0, (size_t)o->n_segs);
    memset(o->group_mark, 0, (size_t)o->n_groups);
}

void es__dense_opt_mark(es__dense_opt *o, int i) {
    ES_ASSERT(i >= 0 && i < o->n_segs);
    o->seg_mark[i] = 1;
}

void es__dense_opt_mark_group(es__dense_opt *o, int gr) {
    ES_ASSERT(gr >= 0 && gr < o->n_groups);
    o->group_mark[gr] = 1;
}

void es__dense_opt_step_marked(es__dense_opt *o) {
    /* A marked group marks its segments; then every group with a marked
     * segment (or marked itself) advances.  group_mark: 1 = marked by the
     * caller, 2 = advances. */
    for (int i = 0; i < o->n_segs; i++)
        if (o->group_mark[o->segs[i].group] == 1) o->seg_mark[i] = 1;
    for (int i = 0; i < o->n_segs; i++)
        if (o->seg_mark[i]) o->group_mark[o->segs[i].group] = 2;
    if (o->step)
        for (int gr = 0; gr < o->n_groups; gr++) o->step[gr] += o->group_mark[gr] != 0;
    for (int i = 0; i < o->n_segs; i++)
        if (o->seg_mark[i]) dense_seg_update(o, &o->segs[i]);
    memset(o->seg_mark, 0, (size_t)o->n_segs);
    memset(o->group_mark, 0, (size_t)o->n_groups);
}

size_t es__dense_opt_state_bytes(const es__dense_opt *o) {
    size_t b = (size_t)n_state_arrays(o->p.kind) * o->n * sizeof(float);
    if (o->p.kind == ES_OPT_ADAM) b += (size_t)o->n_groups * sizeof(int64_t);
    return b;
}

int es__dense_opt_n_states(const es__dense_opt *o) { return n_state_arrays(o->p.kind); }

float *es__dense_opt_state(es__dense_opt *o, int a) {
    ES_ASSERT(a >= 0 && a < n_state_arrays(o->p.kind));
    return o->state[a];
}

const char *es__dense_opt_state_name(const es__dense_opt *o, int a) {
    ES_ASSERT(a >= 0 && a < n_state_arrays(o->p.kind));
    return o->p.kind == ES_OPT_ADAGRAD ? "acc" : a == 0 ? "m" : "v";
}

int64_t *es__dense_opt_steps(es__dense_opt *o) { return o->step; }

void es__optim_ftrl_defaults(es_optim_params *p) {
    p->ftrl_alpha = 0.05f;
    p->ftrl_beta = 0.01f;
    p->ftrl_l1 = 0.0f;
    p->ftrl_l2 = 0.0f;
    p->row_l2 = 0.0f;
    p->row_l2_freq = 0.0f;
}

static int count_fields(const char *s) {
    int c = 1;
    for (; *s; s++) c += *s == ',';
    return c;
}

int es__optim_meta_read(const char *path, const char *key, const char *s, int n, es_optim_params *o, es_err *err) {
    double v[ES__OPTIM_META_FREQ];
    /* Records since FTRL carry 11 numbers where older ones carry 6; those
     * with frequency-aware L2 on, 12. */
    if (n == 6 && (count_fields(s) == ES__OPTIM_META_LONG || count_fields(s) == ES__OPTIM_META_FREQ)) n = count_fields(s);
    int rc = es__meta_f64_list(path, key, s, n, 0, 3.4e38, v, err);
    if (rc) return rc;
    if (v[0] != (int)v[0] || v[0] > ES_OPT_FTRL)
        return es__err(err, ES_EFORMAT, "%s: metadata %s=%.64s: unknown optimizer %.9g", path, key, s, v[0]);
    o->kind = (es_optim)(int)v[0];
    o->lr = (float)v[1];
    o->eps = (float)v[2];
    o->beta1 = (float)v[3];
    o->beta2 = (float)v[4];
    if (n > 5) o->init_acc = (float)v[5];
    es__optim_ftrl_defaults(o);
    if (n > 6) {
        o->ftrl_alpha = (float)v[6];
        o->ftrl_beta = (float)v[7];
        o->ftrl_l1 = (float)v[8];
        o->ftrl_l2 = (float)v[9];
        o->row_l2 = (float)v[10];
    }
    if (n > 11) o->row_l2_freq = (float)v[11];
    return ES_OK;
}

int es__optim_parse(const char *s, es_optim *out) {
    if (!strcmp(s, "adam")) *out = ES_OPT_ADAM;
    else if (!strcmp(s, "sgd")) *out = ES_OPT_SGD;
    else if (!strcmp(s, "adagrad")) *out = ES_OPT_ADAGRAD;
    else if (!strcmp(s, "rowwise") || !strcmp(s, "rowwise-adagrad")) *out = ES_OPT_ROWWISE_ADAGRAD;
    else if (!strcmp(s, "ftrl")) *out = ES_OPT_FTRL;
    else return ES_EINVAL;
    return ES_OK;
}
