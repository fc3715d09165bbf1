/*
 * simd.c — vector kernels with run-time dispatch (see simd.h).
 *
 * The AVX versions are compiled with per-function target attributes so the
 * library builds for any x86-64 and only uses wider instructions when
 * the running CPU has them.  The CPU probe here (es__cpu_get) is the only
 * one in the library: optim/ and index/ dispatch from it too, so ES_SIMD
 * reaches every kernel the same way.  Other architectures get the
 * reference kernels.
 */
#include "simd.h"
#include "core.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

float es__dot_ref(const float *a, const float *b, size_t n) {
    float s = 0.0f;
    for (size_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

static inline void axpy_ref_body(float *restrict y, float alpha, const float *restrict x, size_t n) {
    for (size_t i = 0; i < n; i++) y[i] += alpha * x[i];
}

void es__axpy_ref(float *restrict y, float alpha, const float *restrict x, size_t n) { axpy_ref_body(y, alpha, x, n); }

/* The scatter over the pairs' values: BODY(y + slot * dim, w, x + P * dim,
 * dim) value by value, each variant with its own axpy's body (the same
 * bits as calling it). */
#define SCATTER_LOOP(BODY)                                                                   \
    for (size_t P = 0; P < PN; P++)                                                          \
        for (uint32_t v = off[P]; v < off[P + 1]; v++) {                                     \
            const size_t u = slot[v];                                                        \
            if (u - u0 < u1 - u0) BODY(y + u * dim, w[v], x + P * dim, dim);                 \
        }

void es__scatter_axpy_ref(float *y, size_t dim, const uint32_t *slot, const float *w, const float *x, const uint32_t *off,
                          size_t PN, size_t u0, size_t u1) {
    SCATTER_LOOP(axpy_ref_body)
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

__attribute__((target("avx2,fma"))) static inline void axpy_avx2_body(float *restrict y, float alpha,
                                                                    const float *restrict x, size_t n) {
    __m256 va = _mm256_set1_ps(alpha);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++) y[i] += alpha * x[i];
}

__attribute__((target("avx2,fma"))) static void axpy_avx2(float *restrict y, float alpha, const float *restrict x, size_t n) {
    axpy_avx2_body(y, alpha, x, n);
}

__attribute__((target("avx2,fma"))) static void scatter_axpy_avx2(float *y, size_t dim, const uint32_t *slot, const float *w,
                                                                  const float *x, const uint32_t *off, size_t PN, size_t u0,
                                                                  size_t u1) {
    SCATTER_LOOP(axpy_avx2_body)
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

__attribute__((target("avx512f"))) static inline void axpy_avx512_body(float *restrict y, float alpha,
                                                                     const float *restrict x, size_t n) {
    __m512 va = _mm512_set1_ps(alpha);
    size_t i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, _mm512_fmadd_ps(va, _mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i)));
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1u);
        _mm512_mask_storeu_ps(y + i, m, _mm512_fmadd_ps(va, _mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, y + i)));
    }
}

__attribute__((target("avx512f"))) static void axpy_avx512(float *restrict y, float alpha, const float *restrict x, size_t n) {
    axpy_avx512_body(y, alpha, x, n);
}

/* One float: a scalar fused multiply-add, what the body's masked one
 * computes in its only lane. */
__attribute__((target("avx512f,fma"))) static inline void axpy1_avx512_body(float *restrict y, float alpha,
                                                                          const float *restrict x, size_t n) {
    (void)n;
    _mm_store_ss(y, _mm_fmadd_ss(_mm_set_ss(alpha), _mm_load_ss(x), _mm_load_ss(y)));
}

__attribute__((target("avx512f,fma"))) static void scatter_axpy_avx512(float *y, size_t dim, const uint32_t *slot,
                                                                      const float *w, const float *x, const uint32_t *off,
                                                                      size_t PN, size_t u0, size_t u1) {
    if (dim == 1) {
        SCATTER_LOOP(axpy1_avx512_body)
    } else {
        SCATTER_LOOP(axpy_avx512_body)
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

/* ---- fixed-order matrix product (see simd.h) ------------------------------------
 * Rows of C are computed in blocks of 4 (a 1-row loop takes the rest) and
 * columns in blocks of 16 lanes (masked at the right edge); each lane keeps
 * its own fused multiply-add chain over k, so the blocking decides only
 * which elements are computed together, never how one is summed. */

/* Rows [i0, i1) of C. */
typedef void (*gemm_rows_fn)(float *C, int ldc, const float *A, int lda, const float *B, int ldb, int i0, int i1, int K,
                             int N);

static void gemm_rows_ref(float *C, int ldc, const float *A, int lda, const float *B, int ldb, int i0, int i1, int K,
                          int N) {
    for (int i = i0; i < i1; i++) {
        const float *a = A + (size_t)i * lda;
        for (int j0 = 0; j0 < N; j0 += 16) {
            int w = N - j0 < 16 ? N - j0 : 16;
            float acc[16] = {0};
            for (int k = 0; k < K; k++) {
                const float *b = B + (size_t)k * ldb + j0;
                for (int t = 0; t < w; t++) acc[t] = fmaf(a[k], b[t], acc[t]);
            }
            memcpy(C + (size_t)i * ldc + j0, acc, (size_t)w * sizeof(float));
        }
    }
}

void es__gemm_fixed_ref(float *C, int ldc, const float *A, int lda, const float *B, int ldb, int M, int K, int N) {
    gemm_rows_ref(C, ldc, A, lda, B, ldb, 0, M, K, N);
}

#ifdef ES_HAVE_X86
/* Rows are taken in chunks of GEMM_CHUNK (a chunk of A stays in L2 while
 * every 16-column strip of B, which stays in L1, passes over it). */
#define GEMM_CHUNK 48

__attribute__((target("avx2,fma"))) static void gemm_chunk_avx2(float *C, int ldc, const float *A, int lda,
                                                               const float *B, int ldb, int i0, int i1, int K, int N) {
    for (int j0 = 0; j0 < N; j0 += 16) {
        int w = N - j0 < 16 ? N - j0 : 16;
        /* lane masks for the two 8-wide halves of the 16-column block */
        __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        __m256i m0 = _mm256_cmpgt_epi32(_mm256_set1_epi32(w), idx);
        __m256i m1 = _mm256_cmpgt_epi32(_mm256_set1_epi32(w - 8), idx);
        const int full = w == 16;
        int i = i0;
        for (; i + 4 <= i1; i += 4) {
            const float *a0 = A + (size_t)i * lda, *a1 = a0 + lda, *a2 = a1 + lda, *a3 = a2 + lda;
            __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00, c31 = c00;
            const float *b = B + j0;
            for (int k = 0; k < K; k++, b += ldb) {
                __m256 w0, w1;
                if (full) {
                    w0 = _mm256_loadu_ps(b);
                    w1 = _mm256_loadu_ps(b + 8);
                } else {
                    w0 = _mm256_maskload_ps(b, m0);
                    w1 = _mm256_maskload_ps(b + 8, m1);
                }
                __m256 x = _mm256_broadcast_ss(a0 + k);
                c00 = _mm256_fmadd_ps(x, w0, c00);
                c01 = _mm256_fmadd_ps(x, w1, c01);
                x = _mm256_broadcast_ss(a1 + k);
                c10 = _mm256_fmadd_ps(x, w0, c10);
                c11 = _mm256_fmadd_ps(x, w1, c11);
                x = _mm256_broadcast_ss(a2 + k);
                c20 = _mm256_fmadd_ps(x, w0, c20);
                c21 = _mm256_fmadd_ps(x, w1, c21);
                x = _mm256_broadcast_ss(a3 + k);
                c30 = _mm256_fmadd_ps(x, w0, c30);
                c31 = _mm256_fmadd_ps(x, w1, c31);
            }
            float *c = C + (size_t)i * ldc + j0;
            if (full) {
                _mm256_storeu_ps(c, c00), _mm256_storeu_ps(c + 8, c01), c += ldc;
                _mm256_storeu_ps(c, c10), _mm256_storeu_ps(c + 8, c11), c += ldc;
                _mm256_storeu_ps(c, c20), _mm256_storeu_ps(c + 8, c21), c += ldc;
                _mm256_storeu_ps(c, c30), _mm256_storeu_ps(c + 8, c31);
            } else {
                _mm256_maskstore_ps(c, m0, c00), _mm256_maskstore_ps(c + 8, m1, c01), c += ldc;
                _mm256_maskstore_ps(c, m0, c10), _mm256_maskstore_ps(c + 8, m1, c11), c += ldc;
                _mm256_maskstore_ps(c, m0, c20), _mm256_maskstore_ps(c + 8, m1, c21), c += ldc;
                _mm256_maskstore_ps(c, m0, c30), _mm256_maskstore_ps(c + 8, m1, c31);
            }
        }
        for (; i < i1; i++) {
            const float *a0 = A + (size_t)i * lda;
            __m256 c00 = _mm256_setzero_ps(), c01 = c00;
            const float *b = B + j0;
            for (int k = 0; k < K; k++, b += ldb) {
                __m256 x = _mm256_broadcast_ss(a0 + k);
                c00 = _mm256_fmadd_ps(x, _mm256_maskload_ps(b, m0), c00);
                c01 = _mm256_fmadd_ps(x, _mm256_maskload_ps(b + 8, m1), c01);
            }
            float *c = C + (size_t)i * ldc + j0;
            _mm256_maskstore_ps(c, m0, c00);
            _mm256_maskstore_ps(c + 8, m1, c01);
        }
    }
}

__attribute__((target("avx2,fma"))) static void gemm_rows_avx2(float *C, int ldc, const float *A, int lda,
                                                               const float *B, int ldb, int i0, int i1, int K, int N) {
    for (int ch = i0; ch < i1; ch += GEMM_CHUNK) {
        const int ch1 = ch + GEMM_CHUNK < i1 ? ch + GEMM_CHUNK : i1;
        gemm_chunk_avx2(C, ldc, A, lda, B, ldb, ch, ch1, K, N);
    }
}

static void gemm_chunk_avx512(float *C, int ldc, const float *A, int lda, const float *B, int ldb, int i0, int i1,
                              int K, int N);
__attribute__((target("avx512f"))) static void gemm_rows_avx512(float *C, int ldc, const float *A, int lda,
                                                                const float *B, int ldb, int i0, int i1, int K, int N) {
    for (int ch = i0; ch < i1; ch += GEMM_CHUNK) {
        const int ch1 = ch + GEMM_CHUNK < i1 ? ch + GEMM_CHUNK : i1;
        gemm_chunk_avx512(C, ldc, A, lda, B, ldb, ch, ch1, K, N);
    }
}

__attribute__((target("avx512f"))) static void gemm_chunk_avx512(float *C, int ldc, const float *A, int lda,
                                                                 const float *B, int ldb, int i0, int i1, int K, int N) {
    for (int j0 = 0; j0 < N; j0 += 32) {
        int w = N - j0 < 32 ? N - j0 : 32;
        __mmask16 m0 = (__mmask16)(w >= 16 ? 0xffffu : ((1u << w) - 1u));
        __mmask16 m1 = (__mmask16)(w >= 32 ? 0xffffu : (w > 16 ? ((1u << (w - 16)) - 1u) : 0u));
        int i = i0;
        for (; i + 4 <= i1; i += 4) {
            const float *a0 = A + (size_t)i * lda, *a1 = a0 + lda, *a2 = a1 + lda, *a3 = a2 + lda;
            __m512 c00 = _mm512_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00, c31 = c00;
            const float *b = B + j0;
            for (int k = 0; k < K; k++, b += ldb) {
                __m512 w0 = _mm512_maskz_loadu_ps(m0, b), w1 = _mm512_maskz_loadu_ps(m1, b + 16);
                __m512 x = _mm512_set1_ps(a0[k]);
                c00 = _mm512_fmadd_ps(x, w0, c00);
                c01 = _mm512_fmadd_ps(x, w1, c01);
                x = _mm512_set1_ps(a1[k]);
                c10 = _mm512_fmadd_ps(x, w0, c10);
                c11 = _mm512_fmadd_ps(x, w1, c11);
                x = _mm512_set1_ps(a2[k]);
                c20 = _mm512_fmadd_ps(x, w0, c20);
                c21 = _mm512_fmadd_ps(x, w1, c21);
                x = _mm512_set1_ps(a3[k]);
                c30 = _mm512_fmadd_ps(x, w0, c30);
                c31 = _mm512_fmadd_ps(x, w1, c31);
            }
            float *c = C + (size_t)i * ldc + j0;
            _mm512_mask_storeu_ps(c, m0, c00), _mm512_mask_storeu_ps(c + 16, m1, c01), c += ldc;
            _mm512_mask_storeu_ps(c, m0, c10), _mm512_mask_storeu_ps(c + 16, m1, c11), c += ldc;
            _mm512_mask_storeu_ps(c, m0, c20), _mm512_mask_storeu_ps(c + 16, m1, c21), c += ldc;
            _mm512_mask_storeu_ps(c, m0, c30), _mm512_mask_storeu_ps(c + 16, m1, c31);
        }
        for (; i < i1; i++) {
            const float *a0 = A + (size_t)i * lda;
            __m512 c00 = _mm512_setzero_ps(), c01 = c00;
            const float *b = B + j0;
            for (int k = 0; k < K; k++, b += ldb) {
                __m512 x = _mm512_set1_ps(a0[k]);
                c00 = _mm512_fmadd_ps(x, _mm512_maskz_loadu_ps(m0, b), c00);
                c01 = _mm512_fmadd_ps(x, _mm512_maskz_loadu_ps(m1, b + 16), c01);
            }
            float *c = C + (size_t)i * ldc + j0;
            _mm512_mask_storeu_ps(c, m0, c00);
            _mm512_mask_storeu_ps(c + 16, m1, c01);
        }
    }
}
#endif

typedef float (*dot_fn)(const float *, const float *, size_t);
typedef void (*axpy_fn)(float *restrict, float, const float *restrict, size_t);
typedef void (*scatter_fn)(float *, size_t, const uint32_t *, const float *, const float *, const uint32_t *, size_t, size_t,
                           size_t);

static struct {
    int ready;
    const char *level;
    dot_fn dot;
    axpy_fn axpy;
    scatter_fn scatter;
    dot_fn l2sq;
    gemm_rows_fn gemm;
} K;

/* ---- the CPU probe (simd.h) -------------------------------------------------- */

es__cpu es__cpu_probe(const char *simd_env) {
    es__cpu c = {ES_CPU_REF, 0u, 0};
    if (simd_env && strcmp(simd_env, "ref") == 0) {
        c.ref = 1;
        return c;
    }
#ifdef ES_HAVE_X86
    __builtin_cpu_init();
    unsigned f = 0;
    if (__builtin_cpu_supports("popcnt")) f |= ES_CPU_POPCNT;
    if (__builtin_cpu_supports("avx2")) f |= ES_CPU_AVX2F;
    if (__builtin_cpu_supports("fma")) f |= ES_CPU_FMA;
    if (__builtin_cpu_supports("avx512f")) f |= ES_CPU_AVX512F;
    if (__builtin_cpu_supports("avx512bw")) f |= ES_CPU_AVX512BW;
    if (__builtin_cpu_supports("avx512vl")) f |= ES_CPU_AVX512VL;
    if (__builtin_cpu_supports("avx512vpopcntdq")) f |= ES_CPU_AVX512VPOPCNTDQ;
    if (simd_env && strcmp(simd_env, "avx2") == 0) f &= ~ES_CPU_AVX512_ALL;
    c.features = f;
    if (f & ES_CPU_AVX512F) c.level = ES_CPU_AVX512;
    else if ((f & ES_CPU_AVX2F) && (f & ES_CPU_FMA)) c.level = ES_CPU_AVX2;
#endif
    return c;
}

/* The answer packed in one word so that one atomic load reads all of it:
 * bit 31 = probed, bits 0-1 level, bit 2 ref, bits 8-23 features.  Threads
 * racing through the first call all compute and store the same word. */
static unsigned cpu_word;

es__cpu es__cpu_get(void) {
    unsigned w = __atomic_load_n(&cpu_word, __ATOMIC_ACQUIRE);
    if (!(w & (1u << 31))) {
        es__cpu c = es__cpu_probe(getenv("ES_SIMD"));
        w = (1u << 31) | (unsigned)c.level | (c.ref ? 4u : 0u) | (c.features << 8);
        __atomic_store_n(&cpu_word, w, __ATOMIC_RELEASE);
    }
    es__cpu c = {(es__cpu_isa)(w & 3u), (w >> 8) & 0xffffu, (int)((w >> 2) & 1u)};
    return c;
}

es__cpu_isa es__cpu_level(void) { return es__cpu_get().level; }

/* ---- dispatch ------------------------------------------------------------------- */

static void simd_init(void) {
    K.level = "ref";
    K.dot = es__dot_ref;
    K.axpy = es__axpy_ref;
    K.scatter = es__scatter_axpy_ref;
    K.l2sq = es__l2sq_ref;
    K.gemm = gemm_rows_ref;
#ifdef ES_HAVE_X86
    switch (es__cpu_level()) {
    case ES_CPU_AVX512:
        K.level = "avx512";
        K.dot = dot_avx512;
        K.axpy = axpy_avx512;
        K.scatter = scatter_axpy_avx512;
        K.l2sq = l2sq_avx512;
        K.gemm = gemm_rows_avx512;
        break;
    case ES_CPU_AVX2:
        K.level = "avx2";
        K.dot = dot_avx2;
        K.axpy = axpy_avx2;
        K.scatter = scatter_axpy_avx2;
        K.l2sq = l2sq_avx2;
        K.gemm = gemm_rows_avx2;
        break;
    case ES_CPU_REF: break;
    }
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
void es__scatter_axpy(float *y, size_t dim, const uint32_t *slot, const float *w, const float *x, const uint32_t *off,
                      size_t PN, size_t u0, size_t u1) {
    ensure();
    K.scatter(y, dim, slot, w, x, off, PN, u0, u1);
}
float es__l2sq(const float *a, const float *b, size_t n) {
    ensure();
    return K.l2sq(a, b, n);
}
/* Spread rows over threads only past this many multiply-adds (a few tens
 * of microseconds of work), in blocks of 4 rows so that every thread but
 * the last runs whole 4-row blocks. */
#define ES__GEMM_PAR_MACS (1 << 18)

void es__gemm_fixed(float *C, int ldc, const float *A, int lda, const float *B, int ldb, int M, int Kd, int N, int threads) {
    if (M <= 0 || N <= 0) return;
    ensure();
    if (Kd <= 0) {
        for (int i = 0; i < M; i++) memset(C + (size_t)i * ldc, 0, (size_t)N * sizeof(float));
        return;
    }
    int nb = (M + 3) / 4;
    if (threads > nb) threads = nb;
    if (threads <= 1 || (double)M * Kd * N < ES__GEMM_PAR_MACS) {
        K.gemm(C, ldc, A, lda, B, ldb, 0, M, Kd, N);
        return;
    }
ES__OMP(omp parallel for schedule(static) num_threads(threads))
    for (int t = 0; t < threads; t++) {
        int b0 = (int)((int64_t)nb * t / threads), b1 = (int)((int64_t)nb * (t + 1) / threads);
        int i0 = b0 * 4, i1 = b1 * 4 < M ? b1 * 4 : M;
        if (i1 > i0) K.gemm(C, ldc, A, lda, B, ldb, i0, i1, Kd, N);
    }
}

const char *es__simd_level(void) {
    ensure();
    return K.level;
}
