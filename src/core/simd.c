/*
 * simd.c — vector kernels with run-time dispatch (see simd.h).
 *
 * The AVX versions are compiled with per-function target attributes so the
 * library builds for any x86-64 and only uses wider instructions when
 * __builtin_cpu_supports says the running CPU has them.  Other
 * architectures get the reference kernels.
 */
#include "simd.h"

#include <stdlib.h>
#include <string.h>

float es__dot_ref(const float *a, const float *b, size_t n) {
    float s = 0.0f;
    for (size_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

void es__axpy_ref(float *restrict y, float alpha, const float *restrict x, size_t n) {
    for (size_t i = 0; i < n; i++) y[i] += alpha * x[i];
}

float es__l2sq_ref(const float *a, const float *b, size_t n) {
    float s = 0.0f;
    for (size_t i = 0; i < n; i++) {
        float d = a[i] - b[i];
        s += d * d;
    }
    return s;
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define ES_HAVE_X86 1

__attribute__((target("avx2,fma"))) static float hsum256(__m256 v) {
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_add_ps(lo, hi);
    lo = _mm_hadd_ps(lo, lo);
    lo = _mm_hadd_ps(lo, lo);
    return _mm_cvtss_f32(lo);
}

__attribute__((target("avx2,fma"))) static float dot_avx2(const float *a, const float *b, size_t n) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
    }
    for (; i + 8 <= n; i += 8) acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
    float s = hsum256(_mm256_add_ps(acc0, acc1));
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

__attribute__((target("avx2,fma"))) static void axpy_avx2(float *restrict y, float alpha, const float *restrict x, size_t n) {
    __m256 va = _mm256_set1_ps(alpha);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++) y[i] += alpha * x[i];
}

__attribute__((target("avx2,fma"))) static float l2sq_avx2(const float *a, const float *b, size_t n) {
    __m256 acc = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 d = _mm256_sub_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i));
        acc = _mm256_fmadd_ps(d, d, acc);
    }
    float s = hsum256(acc);
    for (; i < n; i++) {
        float d = a[i] - b[i];
        s += d * d;
    }
    return s;
}

__attribute__((target("avx512f"))) static float dot_avx512(const float *a, const float *b, size_t n) {
    __m512 acc = _mm512_setzero_ps();
    size_t i = 0;
    for (; i + 16 <= n; i += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc);
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1u);
        acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), acc);
    }
    return _mm512_reduce_add_ps(acc);
}

__attribute__((target("avx512f"))) static void axpy_avx512(float *restrict y, float alpha, const float *restrict x, size_t n) {
    __m512 va = _mm512_set1_ps(alpha);
    size_t i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, _mm512_fmadd_ps(va, _mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i)));
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1u);
        _mm512_mask_storeu_ps(y + i, m, _mm512_fmadd_ps(va, _mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, y + i)));
    }
}

__attribute__((target("avx512f"))) static float l2sq_avx512(const float *a, const float *b, size_t n) {
    __m512 acc = _mm512_setzero_ps();
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 d = _mm512_sub_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i));
        acc = _mm512_fmadd_ps(d, d, acc);
    }
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1u);
        __m512 d = _mm512_sub_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i));
        acc = _mm512_fmadd_ps(d, d, acc);
    }
    return _mm512_reduce_add_ps(acc);
}
#endif

typedef float (*dot_fn)(const float *, const float *, size_t);
typedef void (*axpy_fn)(float *restrict, float, const float *restrict, size_t);

static struct {
    int ready;
    const char *level;
    dot_fn dot;
    axpy_fn axpy;
    dot_fn l2sq;
} K;

static void simd_init(void) {
    const char *force = getenv("ES_SIMD");
    K.level = "ref";
    K.dot = es__dot_ref;
    K.axpy = es__axpy_ref;
    K.l2sq = es__l2sq_ref;
#ifdef ES_HAVE_X86
    if (!(force && strcmp(force, "ref") == 0)) {
        __builtin_cpu_init();
        int want512 = !(force && strcmp(force, "avx2") == 0);
        if (want512 && __builtin_cpu_supports("avx512f")) {
            K.level = "avx512";
            K.dot = dot_avx512;
            K.axpy = axpy_avx512;
            K.l2sq = l2sq_avx512;
        } else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
            K.level = "avx2";
            K.dot = dot_avx2;
            K.axpy = axpy_avx2;
            K.l2sq = l2sq_avx2;
        }
    }
#else
    (void)force;
#endif
    __atomic_store_n(&K.ready, 1, __ATOMIC_RELEASE);
}

static inline void ensure(void) {
    if (!__atomic_load_n(&K.ready, __ATOMIC_ACQUIRE)) simd_init();
}

float es__dot(const float *a, const float *b, size_t n) {
    ensure();
    return K.dot(a, b, n);
}
void es__axpy(float *restrict y, float alpha, const float *restrict x, size_t n) {
    ensure();
    K.axpy(y, alpha, x, n);
}
float es__l2sq(const float *a, const float *b, size_t n) {
    ensure();
    return K.l2sq(a, b, n);
}
const char *es__simd_level(void) {
    ensure();
    return K.level;
}
