/*
 * distance.c — index distance kernels with run-time dispatch (see
 * distance.h).  AVX versions are compiled with per-function target
 * attributes, so the library builds for any x86-64 and uses the wider
 * instructions only when the library's one CPU probe (es__cpu_get in
 * core/simd.h, which also applies ES_SIMD) says the CPU has them.
 */
#include "distance.h"

#include "core/simd.h"

#include <stdlib.h>
#include <string.h>

/* ---- reference kernels ------------------------------------------------------ */
float es__sq8_l2_ref(const float *qb, const float *scale, const uint8_t *code, size_t d) {
    float s = 0.0f;
    for (size_t j = 0; j < d; j++) {
        float t = qb[j] - scale[j] * (float)code[j];
        s += t * t;
    }
    return s;
}

float es__sq8_ip_ref(const float *qs, const uint8_t *code, size_t d) {
    float s = 0.0f;
    for (size_t j = 0; j < d; j++) s += qs[j] * (float)code[j];
    return s;
}

/* Portable population count (no popcnt instruction assumed). */
static inline uint32_t popcount64_ref(uint64_t x) {
    x = x - ((x >> 1) & UINT64_C(0x5555555555555555));
    x = (x & UINT64_C(0x3333333333333333)) + ((x >> 2) & UINT64_C(0x3333333333333333));
    x = (x + (x >> 4)) & UINT64_C(0x0f0f0f0f0f0f0f0f);
    return (uint32_t)((x * UINT64_C(0x0101010101010101)) >> 56);
}

uint32_t es__hamming_ref(const uint64_t *a, const uint64_t *b, size_t nw) {
    uint32_t s = 0;
    for (size_t i = 0; i < nw; i++) s += popcount64_ref(a[i] ^ b[i]);
    return s;
}

void es__pq_scan_ref(const float *lut, const uint8_t *codes, size_t n, int M, int ksub, float bias, float *out) {
    for (size_t i = 0; i < n; i++) {
        const uint8_t *c = codes + i * (size_t)M;
        float s = bias;
        for (int m = 0; m < M; m++) s += lut[(size_t)m * (size_t)ksub + c[m]];
        out[i] = s;
    }
}

void es__l2sq_x4_ref(const float *q, const float *x0, const float *x1, const float *x2, const float *x3, size_t d,
                     float out[4]) {
    const float *x[4] = {x0, x1, x2, x3};
    for (int r = 0; r < 4; r++) {
        float s = 0.0f;
        for (size_t j = 0; j < d; j++) {
            float t = q[j] - x[r][j];
            s += t * t;
        }
        out[r] = s;
    }
}

void es__dot_x4_ref(const float *q, const float *x0, const float *x1, const float *x2, const float *x3, size_t d,
                    float out[4]) {
    const float *x[4] = {x0, x1, x2, x3};
    for (int r = 0; r < 4; r++) {
        float s = 0.0f;
        for (size_t j = 0; j < d; j++) s += q[j] * x[r][j];
        out[r] = s;
    }
}

size_t es__select_le_ref(const float *base, const float *v, float mul, size_t m, float thr, uint32_t *j_out,
                         float *s_out) {
    size_t c = 0;
    for (size_t j = 0; j < m; j++) {
        float sc = base ? base[j] + mul * v[j] : mul * v[j];
        if (sc <= thr) {
            j_out[c] = (uint32_t)j;
            s_out[c++] = sc;
        }
    }
    return c;
}

/* The PQ scan is table lookups, which SIMD gathers do not speed up on
 * current x86 (measured: a 16-wide gather version was 1.6x slower).  The
 * fast version walks four codes at once, one accumulator each, so four
 * independent load-add chains are in flight; measured 1.3x faster than one
 * code at a time with split accumulators (10,000 codes of M = 16). */
static void pq_scan_fast(const float *lut, const uint8_t *codes, size_t n, int M, int ksub, float bias, float *out) {
    size_t i = 0, Ms = (size_t)M;
    for (; i + 4 <= n; i += 4) {
        const uint8_t *c0 = codes + i * Ms, *c1 = c0 + Ms, *c2 = c1 + Ms, *c3 = c2 + Ms;
        float a0 = bias, a1 = bias, a2 = bias, a3 = bias;
        const float *t = lut;
        for (size_t m = 0; m < Ms; m++, t += ksub) {
            a0 += t[c0[m]];
            a1 += t[c1[m]];
            a2 += t[c2[m]];
            a3 += t[c3[m]];
        }
        out[i] = a0;
        out[i + 1] = a1;
        out[i + 2] = a2;
        out[i + 3] = a3;
    }
    if (i < n) es__pq_scan_ref(lut, codes + i * Ms, n - i, M, ksub, bias, out + i);
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define ES_HAVE_X86 1

#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl")))
#define AVX2 __attribute__((target("avx2,fma")))

AVX2 static float hsum8(__m256 v) {
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_add_ps(lo, hi);
    lo = _mm_hadd_ps(lo, lo);
    lo = _mm_hadd_ps(lo, lo);
    return _mm_cvtss_f32(lo);
}

AVX2 static float sq8_l2_avx2(const float *qb, const float *scale, const uint8_t *code, size_t d) {
    __m256 acc = _mm256_setzero_ps();
    size_t j = 0;
    for (; j + 8 <= d; j += 8) {
        __m128i c8 = _mm_loadl_epi64((const __m128i *)(code + j));
        __m256 c = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(c8));
        __m256 t = _mm256_fnmadd_ps(_mm256_loadu_ps(scale + j), c, _mm256_loadu_ps(qb + j));
        acc = _mm256_fmadd_ps(t, t, acc);
    }
    float s = hsum8(acc);
    for (; j < d; j++) {
        float t = qb[j] - scale[j] * (float)code[j];
        s += t * t;
    }
    return s;
}

AVX2 static float sq8_ip_avx2(const float *qs, const uint8_t *code, size_t d) {
    __m256 acc = _mm256_setzero_ps();
    size_t j = 0;
    for (; j + 8 <= d; j += 8) {
        __m128i c8 = _mm_loadl_epi64((const __m128i *)(code + j));
        __m256 c = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(c8));
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(qs + j), c, acc);
    }
    float s = hsum8(acc);
    for (; j < d; j++) s += qs[j] * (float)code[j];
    return s;
}

AVX512 static float sq8_l2_avx512(const float *qb, const float *scale, const uint8_t *code, size_t d) {
    __m512 acc = _mm512_setzero_ps();
    size_t j = 0;
    for (; j + 16 <= d; j += 16) {
        __m512 c = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(code + j))));
        __m512 t = _mm512_fnmadd_ps(_mm512_loadu_ps(scale + j), c, _mm512_loadu_ps(qb + j));
        acc = _mm512_fmadd_ps(t, t, acc);
    }
    if (j < d) {
        __mmask16 m = (__mmask16)((1u << (d - j)) - 1u);
        __m512 c = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, code + j)));
        __m512 t = _mm512_fnmadd_ps(_mm512_maskz_loadu_ps(m, scale + j), c, _mm512_maskz_loadu_ps(m, qb + j));
        acc = _mm512_fmadd_ps(t, t, acc);
    }
    return _mm512_reduce_add_ps(acc);
}

AVX512 static float sq8_ip_avx512(const float *qs, const uint8_t *code, size_t d) {
    __m512 acc = _mm512_setzero_ps();
    size_t j = 0;
    for (; j + 16 <= d; j += 16) {
        __m512 c = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(code + j))));
        acc = _mm512_fmadd_ps(_mm512_loadu_ps(qs + j), c, acc);
    }
    if (j < d) {
        __mmask16 m = (__mmask16)((1u << (d - j)) - 1u);
        __m512 c = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, code + j)));
        acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, qs + j), c, acc);
    }
    return _mm512_reduce_add_ps(acc);
}

AVX2 static size_t select_le_avx2(const float *base, const float *v, float mul, size_t m, float thr, uint32_t *j_out,
                                  float *s_out) {
    __m256 vm = _mm256_set1_ps(mul), vt = _mm256_set1_ps(thr);
    size_t c = 0, j = 0;
    for (; j + 8 <= m; j += 8) {
        __m256 sc = base ? _mm256_fmadd_ps(vm, _mm256_loadu_ps(v + j), _mm256_loadu_ps(base + j))
                         : _mm256_mul_ps(vm, _mm256_loadu_ps(v + j));
        unsigned bits = (unsigned)_mm256_movemask_ps(_mm256_cmp_ps(sc, vt, _CMP_LE_OQ));
        if (!bits) continue;
        float tmp[8];
        _mm256_storeu_ps(tmp, sc);
        while (bits) {
            int b = __builtin_ctz(bits);
            bits &= bits - 1;
            j_out[c] = (uint32_t)(j + (size_t)b);
            s_out[c++] = tmp[b];
        }
    }
    for (; j < m; j++) {
        float sc = base ? base[j] + mul * v[j] : mul * v[j];
        if (sc <= thr) {
            j_out[c] = (uint32_t)j;
            s_out[c++] = sc;
        }
    }
    return c;
}

AVX512 static size_t select_le_avx512(const float *base, const float *v, float mul, size_t m, float thr,
                                      uint32_t *j_out, float *s_out) {
    __m512 vm = _mm512_set1_ps(mul), vt = _mm512_set1_ps(thr);
    __m512i idx = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0), step = _mm512_set1_epi32(16);
    size_t c = 0, j = 0;
    for (; j + 16 <= m; j += 16, idx = _mm512_add_epi32(idx, step)) {
        __m512 sc = base ? _mm512_fmadd_ps(vm, _mm512_loadu_ps(v + j), _mm512_loadu_ps(base + j))
                         : _mm512_mul_ps(vm, _mm512_loadu_ps(v + j));
        __mmask16 k = _mm512_cmp_ps_mask(sc, vt, _CMP_LE_OQ);
        if (!k) continue;
        _mm512_mask_compressstoreu_ps(s_out + c, k, sc);
        _mm512_mask_compressstoreu_epi32(j_out + c, k, idx);
        c += (size_t)__builtin_popcount((unsigned)k);
    }
    if (j < m) {
        __mmask16 t = (__mmask16)((1u << (m - j)) - 1u);
        __m512 sc = base ? _mm512_fmadd_ps(vm, _mm512_maskz_loadu_ps(t, v + j), _mm512_maskz_loadu_ps(t, base + j))
                         : _mm512_mul_ps(vm, _mm512_maskz_loadu_ps(t, v + j));
        __mmask16 k = _mm512_mask_cmp_ps_mask(t, sc, vt, _CMP_LE_OQ);
        _mm512_mask_compressstoreu_ps(s_out + c, k, sc);
        _mm512_mask_compressstoreu_epi32(j_out + c, k, idx);
        c += (size_t)__builtin_popcount((unsigned)k);
    }
    return c;
}

__attribute__((target("popcnt"))) static uint32_t hamming_popcnt(const uint64_t *a, const uint64_t *b, size_t nw) {
    uint64_t s0 = 0, s1 = 0;
    size_t i = 0;
    for (; i + 2 <= nw; i += 2) {
        s0 += (uint64_t)__builtin_popcountll(a[i] ^ b[i]);
        s1 += (uint64_t)__builtin_popcountll(a[i + 1] ^ b[i + 1]);
    }
    if (i < nw) s0 += (uint64_t)__builtin_popcountll(a[i] ^ b[i]);
    return (uint32_t)(s0 + s1);
}

__attribute__((target("avx512f,avx512vpopcntdq,popcnt"))) static uint32_t hamming_avx512(const uint64_t *a,
                                                                                       const uint64_t *b,
                                                                                       size_t nw) {
    if (nw < 8) return hamming_popcnt(a, b, nw);
    __m512i acc = _mm512_setzero_si512();
    size_t i = 0;
    for (; i + 8 <= nw; i += 8) {
        __m512i x = _mm512_xor_si512(_mm512_loadu_si512(a + i), _mm512_loadu_si512(b + i));
        acc = _mm512_add_epi64(acc, _mm512_popcnt_epi64(x));
    }
    uint64_t s = (uint64_t)_mm512_reduce_add_epi64(acc);
    for (; i < nw; i++) s += (uint64_t)__builtin_popcountll(a[i] ^ b[i]);
    return (uint32_t)s;
}

AVX2 static void l2sq_x4_avx2(const float *q, const float *x0, const float *x1, const float *x2, const float *x3,
                              size_t d, float out[4]) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    size_t j = 0;
    for (; j + 8 <= d; j += 8) {
        __m256 vq = _mm256_loadu_ps(q + j);
        __m256 t0 = _mm256_sub_ps(vq, _mm256_loadu_ps(x0 + j));
        __m256 t1 = _mm256_sub_ps(vq, _mm256_loadu_ps(x1 + j));
        __m256 t2 = _mm256_sub_ps(vq, _mm256_loadu_ps(x2 + j));
        __m256 t3 = _mm256_sub_ps(vq, _mm256_loadu_ps(x3 + j));
        a0 = _mm256_fmadd_ps(t0, t0, a0);
        a1 = _mm256_fmadd_ps(t1, t1, a1);
        a2 = _mm256_fmadd_ps(t2, t2, a2);
        a3 = _mm256_fmadd_ps(t3, t3, a3);
    }
    float s[4] = {hsum8(a0), hsum8(a1), hsum8(a2), hsum8(a3)};
    const float *x[4] = {x0, x1, x2, x3};
    for (; j < d; j++)
        for (int r = 0; r < 4; r++) {
            float t = q[j] - x[r][j];
            s[r] += t * t;
        }
    memcpy(out, s, sizeof s);
}

AVX2 static void dot_x4_avx2(const float *q, const float *x0, const float *x1, const float *x2, const float *x3,
                             size_t d, float out[4]) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    size_t j = 0;
    for (; j + 8 <= d; j += 8) {
        __m256 vq = _mm256_loadu_ps(q + j);
        a0 = _mm256_fmadd_ps(vq, _mm256_loadu_ps(x0 + j), a0);
        a1 = _mm256_fmadd_ps(vq, _mm256_loadu_ps(x1 + j), a1);
        a2 = _mm256_fmadd_ps(vq, _mm256_loadu_ps(x2 + j), a2);
        a3 = _mm256_fmadd_ps(vq, _mm256_loadu_ps(x3 + j), a3);
    }
    float s[4] = {hsum8(a0), hsum8(a1), hsum8(a2), hsum8(a3)};
    const float *x[4] = {x0, x1, x2, x3};
    for (; j < d; j++)
        for (int r = 0; r < 4; r++) s[r] += q[j] * x[r][j];
    memcpy(out, s, sizeof s);
}

AVX512 static void l2sq_x4_avx512(const float *q, const float *x0, const float *x1, const float *x2, const float *x3,
                                  size_t d, float out[4]) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    size_t j = 0;
    for (; j + 16 <= d; j += 16) {
        __m512 vq = _mm512_loadu_ps(q + j);
        __m512 t0 = _mm512_sub_ps(vq, _mm512_loadu_ps(x0 + j));
        __m512 t1 = _mm512_sub_ps(vq, _mm512_loadu_ps(x1 + j));
        __m512 t2 = _mm512_sub_ps(vq, _mm512_loadu_ps(x2 + j));
        __m512 t3 = _mm512_sub_ps(vq, _mm512_loadu_ps(x3 + j));
        a0 = _mm512_fmadd_ps(t0, t0, a0);
        a1 = _mm512_fmadd_ps(t1, t1, a1);
        a2 = _mm512_fmadd_ps(t2, t2, a2);
        a3 = _mm512_fmadd_ps(t3, t3, a3);
    }
    if (j < d) {
        __mmask16 m = (__mmask16)((1u << (d - j)) - 1u);
        __m512 vq = _mm512_maskz_loadu_ps(m, q + j);
        __m512 t0 = _mm512_sub_ps(vq, _mm512_maskz_loadu_ps(m, x0 + j));
        __m512 t1 = _mm512_sub_ps(vq, _mm512_maskz_loadu_ps(m, x1 + j));
        __m512 t2 = _mm512_sub_ps(vq, _mm512_maskz_loadu_ps(m, x2 + j));
        __m512 t3 = _mm512_sub_ps(vq, _mm512_maskz_loadu_ps(m, x3 + j));
        a0 = _mm512_fmadd_ps(t0, t0, a0);
        a1 = _mm512_fmadd_ps(t1, t1, a1);
        a2 = _mm512_fmadd_ps(t2, t2, a2);
        a3 = _mm512_fmadd_ps(t3, t3, a3);
    }
    out[0] = _mm512_reduce_add_ps(a0);
    out[1] = _mm512_reduce_add_ps(a1);
    out[2] = _mm512_reduce_add_ps(a2);
    out[3] = _mm512_reduce_add_ps(a3);
}

AVX512 static void dot_x4_avx512(const float *q, const float *x0, const float *x1, const float *x2, const float *x3,
                                 size_t d, float out[4]) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    size_t j = 0;
    for (; j + 16 <= d; j += 16) {
        __m512 vq = _mm512_loadu_ps(q + j);
        a0 = _mm512_fmadd_ps(vq, _mm512_loadu_ps(x0 + j), a0);
        a1 = _mm512_fmadd_ps(vq, _mm512_loadu_ps(x1 + j), a1);
        a2 = _mm512_fmadd_ps(vq, _mm512_loadu_ps(x2 + j), a2);
        a3 = _mm512_fmadd_ps(vq, _mm512_loadu_ps(x3 + j), a3);
    }
    if (j < d) {
        __mmask16 m = (__mmask16)((1u << (d - j)) - 1u);
        __m512 vq = _mm512_maskz_loadu_ps(m, q + j);
        a0 = _mm512_fmadd_ps(vq, _mm512_maskz_loadu_ps(m, x0 + j), a0);
        a1 = _mm512_fmadd_ps(vq, _mm512_maskz_loadu_ps(m, x1 + j), a1);
        a2 = _mm512_fmadd_ps(vq, _mm512_maskz_loadu_ps(m, x2 + j), a2);
        a3 = _mm512_fmadd_ps(vq, _mm512_maskz_loadu_ps(m, x3 + j), a3);
    }
    out[0] = _mm512_reduce_add_ps(a0);
    out[1] = _mm512_reduce_add_ps(a1);
    out[2] = _mm512_reduce_add_ps(a2);
    out[3] = _mm512_reduce_add_ps(a3);
}
#endif

/* ---- dispatch ------------------------------------------------------------------ */
typedef float (*sq8_l2_fn)(const float *, const float *, const uint8_t *, size_t);
typedef float (*sq8_ip_fn)(const float *, const uint8_t *, size_t);
typedef uint32_t (*ham_fn)(const uint64_t *, const uint64_t *, size_t);
typedef void (*pq_fn)(const float *, const uint8_t *, size_t, int, int, float, float *);
typedef void (*x4_fn)(const float *, const float *, const float *, const float *, const float *, size_t, float *);
typedef size_t (*sel_fn)(const float *, const float *, float, size_t, float, uint32_t *, float *);

static struct {
    int ready;
    const char *level;
    sq8_l2_fn sq8_l2;
    sq8_ip_fn sq8_ip;
    ham_fn hamming;
    pq_fn pq_scan;
    x4_fn l2sq_x4, dot_x4;
    sel_fn select_le;
} K;

static void kernels_init(void) {
    /* The library's one CPU probe (core/simd.h), ES_SIMD applied. */
    const es__cpu cpu = es__cpu_get();
    K.level = "ref";
    K.sq8_l2 = es__sq8_l2_ref;
    K.sq8_ip = es__sq8_ip_ref;
    K.hamming = es__hamming_ref;
    K.pq_scan = cpu.ref ? es__pq_scan_ref : pq_scan_fast;
    K.l2sq_x4 = es__l2sq_x4_ref;
    K.dot_x4 = es__dot_x4_ref;
    K.select_le = es__select_le_ref;
#ifdef ES_HAVE_X86
    const unsigned f = cpu.features;
    const unsigned f512 = ES_CPU_AVX512F | ES_CPU_AVX512BW | ES_CPU_AVX512VL;
    if (f & ES_CPU_POPCNT) K.hamming = hamming_popcnt;
    if ((f & f512) == f512) {
        K.level = "avx512";
        K.sq8_l2 = sq8_l2_avx512;
        K.sq8_ip = sq8_ip_avx512;
        K.l2sq_x4 = l2sq_x4_avx512;
        K.dot_x4 = dot_x4_avx512;
        K.select_le = select_le_avx512;
        if ((f & ES_CPU_AVX512VPOPCNTDQ) && (f & ES_CPU_POPCNT)) K.hamming = hamming_avx512;
    } else if ((f & ES_CPU_AVX2F) && (f & ES_CPU_FMA)) {
        /* (an AVX-512 CPU without BW or VL lands here too) */
        K.level = "avx2";
        K.sq8_l2 = sq8_l2_avx2;
        K.sq8_ip = sq8_ip_avx2;
        K.l2sq_x4 = l2sq_x4_avx2;
        K.dot_x4 = dot_x4_avx2;
        K.select_le = select_le_avx2;
    }
#endif
    __atomic_store_n(&K.ready, 1, __ATOMIC_RELEASE);
}

static inline void ensure(void) {
    if (!__atomic_load_n(&K.ready, __ATOMIC_ACQUIRE)) kernels_init();
}

float es__sq8_l2(const float *qb, const float *scale, const uint8_t *code, size_t d) {
    ensure();
    return K.sq8_l2(qb, scale, code, d);
}
float es__sq8_ip(const float *qs, const uint8_t *code, size_t d) {
    ensure();
    return K.sq8_ip(qs, code, d);
}
uint32_t es__hamming(const uint64_t *a, const uint64_t *b, size_t nw) {
    ensure();
    return K.hamming(a, b, nw);
}
void es__pq_scan(const float *lut, const uint8_t *codes, size_t n, int M, int ksub, float bias, float *out) {
    ensure();
    K.pq_scan(lut, codes, n, M, ksub, bias, out);
}
void es__l2sq_x4(const float *q, const float *x0, const float *x1, const float *x2, const float *x3, size_t d,
                 float out[4]) {
    ensure();
    K.l2sq_x4(q, x0, x1, x2, x3, d, out);
}
void es__dot_x4(const float *q, const float *x0, const float *x1, const float *x2, const float *x3, size_t d,
                float out[4]) {
    ensure();
    K.dot_x4(q, x0, x1, x2, x3, d, out);
}
size_t es__select_le(const float *base, const float *v, float mul, size_t m, float thr, uint32_t *j_out, float *s_out) {
    ensure();
    return K.select_le(base, v, mul, m, thr, j_out, s_out);
}
const char *es__index_simd_level(void) {
    ensure();
    return K.level;
}
