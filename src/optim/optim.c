/*
 * optim.c — dense optimizer updates (SGD, Adagrad, Adam) on flat arrays.
 * The net keeps the state arrays and the step count and calls these once
 * per parameter segment, passing the weight decay for weights and 0 for
 * biases.  The formulas follow torch.optim (see layers.h and
 * docs/models.md) so that a PyTorch reference tracks the same trajectory.
 *
 * Adagrad and Adam need a square root per element.  sqrtf may set errno,
 * so without -fno-math-errno GCC keeps a branch around every call and the
 * loops stay scalar (about 3 ns per parameter: a noticeable share of a
 * DCN-v2 step).  They therefore have AVX-512 and AVX2 versions written
 * with intrinsics, picked at first use, next to the portable `_ref`
 * loops.  The vector versions perform the same IEEE operations in the same
 * order (separate multiply and add, correctly rounded sqrt and divide), so
 * they give the same bits as the reference; tests/test_model.c checks it.
 * ES_SIMD=ref in the environment forces the reference loops, as in simd.c.
 *
 * Every update is elementwise, so long arrays are split over threads in
 * fixed blocks without changing any result.
 */
#include "optim/optim.h"

#include "core/core.h"

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
    const char *force = getenv("ES_SIMD");
    K.adagrad = adagrad_ref;
    K.adam = adam_ref;
#ifdef ES__OPT_X86
    if (!(force && strcmp(force, "ref") == 0)) {
        __builtin_cpu_init();
        int want512 = !(force && strcmp(force, "avx2") == 0);
        if (want512 && __builtin_cpu_supports("avx512f")) {
            K.adagrad = adagrad_avx512;
            K.adam = adam_avx512;
        } else if (__builtin_cpu_supports("avx2")) {
            K.adagrad = adagrad_avx2;
            K.adam = adam_avx2;
        }
    }
#else
    (void)force;
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
