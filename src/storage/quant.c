/*
 * quant.c — low-precision row codecs and their lookup kernels (quant.h).
 */
#include "storage/quant.h"

#include "core/simd.h"

#include <math.h>
#include <string.h>

static const char *const PREC_NAMES[ES_PREC_COUNT_] = {"fp32", "fp16", "int16", "int8", "int4", "int2"};
static const int PREC_BITS[ES_PREC_COUNT_] = {32, 16, 16, 8, 4, 2};

int es__prec_parse(const char *s, es_precision *out) {
    for (int i = 0; s && i < ES_PREC_COUNT_; i++)
        if (!strcmp(s, PREC_NAMES[i])) {
            *out = (es_precision)i;
            return ES_OK;
        }
    return ES_EINVAL;
}

const char *es__prec_name(es_precision p) { return (unsigned)p < ES_PREC_COUNT_ ? PREC_NAMES[p] : "unknown"; }
int es__prec_bits(es_precision p) { return (unsigned)p < ES_PREC_COUNT_ ? PREC_BITS[p] : 0; }

/* bytes of the codes alone */
static size_t code_bytes(es_precision p, int dim) {
    size_t d = (size_t)dim;
    switch (p) {
    case ES_PREC_FP32: return 4 * d;
    case ES_PREC_FP16:
    case ES_PREC_INT16: return 2 * d;
    case ES_PREC_INT8: return d;
    case ES_PREC_INT4: return (d + 1) / 2;
    case ES_PREC_INT2: return (d + 3) / 4;
    default: return 0;
    }
}

size_t es__prec_row_bytes(es_precision p, int dim) {
    size_t c = code_bytes(p, dim);
    if (p == ES_PREC_INT16) return c + 8;
    if (p == ES_PREC_INT8 || p == ES_PREC_INT4 || p == ES_PREC_INT2) return c + 4;
    return c;
}

/* ---- binary16 ------------------------------------------------------------------ */

float es__f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13); /* inf / nan */
    } else if (exp != 0) {
        bits = sign | ((exp + 112) << 23) | (man << 13);
    } else {
        /* zero or subnormal: man * 2^-24, exact in float */
        float f = (float)man * 0x1p-24f;
        return sign ? -f : f;
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

uint16_t es__f32_to_f16(float x) {
    uint32_t b;
    memcpy(&b, &x, 4);
    uint16_t sign = (uint16_t)((b >> 16) & 0x8000);
    uint32_t a = b & 0x7fffffffu;
    if (a >= 0x7f800000u) return sign | (a > 0x7f800000u ? 0x7e00 : 0x7c00); /* nan, inf */
    if (a >= 0x477ff000u) return sign | 0x7c00;                               /* rounds past 65504 */
    if (a >= 0x38800000u) {                                                   /* normal half */
        uint32_t m = a - 0x38000000u; /* rebias the exponent 127 -> 15 */
        uint32_t h = m >> 13, rem = m & 0x1fffu;
        if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++; /* ties to even; a carry moves into the exponent */
        return sign | (uint16_t)h;
    }
    /* subnormal half (or zero): x / 2^-24 rounded to nearest even, exact in double */
    double q = (double)(sign ? -x : x) * 0x1p24;
    double r = nearbyint(q);
    return sign | (uint16_t)r;
}

/* The next half toward -inf / +inf from h (finite h). */
static uint16_t f16_next_down(uint16_t h) {
    if (h == 0x0000) return 0x8001;
    return (h & 0x8000) ? (uint16_t)(h + 1) : (uint16_t)(h - 1);
}
static uint16_t f16_next_up(uint16_t h) {
    if (h == 0x8000 || h == 0x0000) return 0x0001;
    return (h & 0x8000) ? (uint16_t)(h - 1) : (uint16_t)(h + 1);
}

uint16_t es__f32_to_f16_down(float x) {
    uint16_t h = es__f32_to_f16(x);
    if ((h & 0x7c00) == 0x7c00) return h;
    return es__f16_to_f32(h) > x ? f16_next_down(h) : h;
}

uint16_t es__f32_to_f16_up(float x) {
    uint16_t h = es__f32_to_f16(x);
    if ((h & 0x7c00) == 0x7c00) return h;
    return es__f16_to_f32(h) < x ? f16_next_up(h) : h;
}

/* ---- encode -------------------------------------------------------------------- */

static inline uint32_t code_of(float x, float bias, float scale, uint32_t top, es_rng *rng) {
    if (!(scale > 0)) return 0;
    double t = ((double)x - (double)bias) / (double)scale;
    double c = rng ? floor(t + es__rng_uniform(rng)) : nearbyint(t);
    if (c < 0) c = 0;
    if (c > (double)top) c = (double)top;
    return (uint32_t)c;
}

static int quant_fp16(const float *x, int dim, uint8_t *dst, es_rng *rng) {
    for (int d = 0; d < dim; d++) {
        if (!isfinite(x[d]) || fabsf(x[d]) > 65504.0f) return ES_ERANGE;
        uint16_t h;
        if (!rng) {
            h = es__f32_to_f16(x[d]);
        } else {
            uint16_t lo = es__f32_to_f16_down(x[d]), hi = es__f32_to_f16_up(x[d]);
            float flo = es__f16_to_f32(lo), fhi = es__f16_to_f32(hi);
            double u = es__rng_uniform(rng);
            h = fhi > flo && u < ((double)x[d] - flo) / ((double)fhi - flo) ? hi : lo;
        }
        memcpy(dst + 2 * (size_t)d, &h, 2);
    }
    return ES_OK;
}

static void put_codes(es_precision p, const float *x, int dim, float bias, float scale, uint32_t top, uint8_t *dst,
                      es_rng *rng);

int es__quant_row(es_precision p, const float *x, int dim, uint8_t *dst, es_rng *rng) {
    if (p == ES_PREC_FP32) {
        for (int d = 0; d < dim; d++)
            if (!isfinite(x[d])) return ES_ERANGE;
        memcpy(dst, x, 4 * (size_t)dim);
        return ES_OK;
    }
    if (p == ES_PREC_FP16) return quant_fp16(x, dim, dst, rng);
    if ((unsigned)p >= ES_PREC_COUNT_ || dim <= 0) return ES_EINVAL;
    float mn = INFINITY, mx = -INFINITY;
    for (int d = 0; d < dim; d++) {
        if (!isfinite(x[d])) return ES_ERANGE;
        mn = fminf(mn, x[d]);
        mx = fmaxf(mx, x[d]);
    }
    const int bits = es__prec_bits(p);
    const uint32_t top = (1u << bits) - 1u;
    const size_t cb = code_bytes(p, dim);
    float bias, scale;
    if (p == ES_PREC_INT16) {
        bias = mn;
        scale = (float)(((double)mx - (double)mn) / (double)top);
        /* the smallest f32 step that reaches max from bias */
        while (scale > 0 && (double)bias + (double)top * (double)scale < (double)mx) scale = nextafterf(scale, INFINITY);
        if (!isfinite(scale)) return ES_ERANGE;
        memcpy(dst + cb, &scale, 4);
        memcpy(dst + cb + 4, &bias, 4);
    } else {
        if (fabsf(mn) > 65504.0f || fabsf(mx) > 65504.0f) return ES_ERANGE;
        uint16_t hb = es__f32_to_f16_down(mn);
        bias = es__f16_to_f32(hb);
        uint16_t hs = es__f32_to_f16_up((float)(((double)mx - (double)bias) / (double)top));
        scale = es__f16_to_f32(hs);
        /* float rounding of the quotient: step up until the top code reaches max */
        while ((double)bias + (double)top * (double)scale < (double)mx && (hs & 0x7c00) != 0x7c00) scale = es__f16_to_f32(++hs);
        if ((hs & 0x7c00) == 0x7c00 || (hb & 0x7c00) == 0x7c00) return ES_ERANGE;
        memcpy(dst + cb, &hs, 2);
        memcpy(dst + cb + 2, &hb, 2);
    }
    put_codes(p, x, dim, bias, scale, top, dst, rng);
    return ES_OK;
}

/* Write the codes of x (bias + scale * code, clipped to [0, top]) into
 * dst's first code_bytes bytes. */
static void put_codes(es_precision p, const float *x, int dim, float bias, float scale, uint32_t top, uint8_t *dst,
                      es_rng *rng) {
    memset(dst, 0, code_bytes(p, dim));
    for (int d = 0; d < dim; d++) {
        uint32_t c = code_of(x[d], bias, scale, top, rng);
        switch (p) {
        case ES_PREC_INT16: {
            uint16_t v = (uint16_t)c;
            memcpy(dst + 2 * (size_t)d, &v, 2);
            break;
        }
        case ES_PREC_INT8: dst[d] = (uint8_t)c; break;
        case ES_PREC_INT4: dst[d >> 1] |= (uint8_t)(c << ((d & 1) * 4)); break;
        case ES_PREC_INT2: dst[d >> 2] |= (uint8_t)(c << ((d & 3) * 2)); break;
        default: break;
        }
    }
}

int es__quant_row_step(es_precision p, const float *x, int dim, float step, uint8_t *dst, es_rng *rng) {
    if (p < ES_PREC_INT16 || p >= ES_PREC_COUNT_ || dim <= 0) return ES_EINVAL;
    for (int d = 0; d < dim; d++)
        if (!isfinite(x[d])) return ES_ERANGE;
    if (!(step > 0) || !isfinite(step)) return ES_ERANGE;
    const int bits = es__prec_bits(p);
    const uint32_t top = (1u << bits) - 1u;
    const float z = (float)(1u << (bits - 1));
    const size_t cb = code_bytes(p, dim);
    float scale, bias;
    if (p == ES_PREC_INT16) {
        scale = step;
        bias = -z * scale; /* a power of two times a float: exact */
        memcpy(dst + cb, &scale, 4);
        memcpy(dst + cb + 4, &bias, 4);
    } else {
        uint16_t hs = es__f32_to_f16(step);
        if (hs == 0) hs = 1; /* the smallest positive half */
        scale = es__f16_to_f32(hs);
        uint16_t hb = es__f32_to_f16(-z * scale); /* exact: z is a power of two, z * 65504 overflows only past */
        if ((hs & 0x7c00) == 0x7c00 || (hb & 0x7c00) == 0x7c00) return ES_ERANGE;
        bias = es__f16_to_f32(hb);
        memcpy(dst + cb, &hs, 2);
        memcpy(dst + cb + 2, &hb, 2);
    }
    put_codes(p, x, dim, bias, scale, top, dst, rng);
    return ES_OK;
}

/* ---- decode: the reference kernels ------------------------------------------ */

static inline void scale_bias(es_precision p, const uint8_t *src, int dim, float *scale, float *bias) {
    const size_t cb = code_bytes(p, dim);
    if (p == ES_PREC_INT16) {
        memcpy(scale, src + cb, 4);
        memcpy(bias, src + cb + 4, 4);
    } else {
        uint16_t hs, hb;
        memcpy(&hs, src + cb, 2);
        memcpy(&hb, src + cb + 2, 2);
        *scale = es__f16_to_f32(hs);
        *bias = es__f16_to_f32(hb);
    }
}

float es__quant_row_scale(es_precision p, const uint8_t *src, int dim) {
    float scale, bias;
    scale_bias(p, src, dim, &scale, &bias);
    return scale;
}

static inline uint32_t code_at(es_precision p, const uint8_t *src, int d) {
    switch (p) {
    case ES_PREC_INT16: {
        uint16_t v;
        memcpy(&v, src + 2 * (size_t)d, 2);
        return v;
    }
    case ES_PREC_INT8: return src[d];
    case ES_PREC_INT4: return (src[d >> 1] >> ((d & 1) * 4)) & 0xfu;
    case ES_PREC_INT2: return (src[d >> 2] >> ((d & 3) * 2)) & 0x3u;
    default: return 0;
    }
}

void es__dequant_axpy_ref(es_precision p, const uint8_t *src, int dim, float w, float *out) {
    if (p == ES_PREC_FP32) {
        for (int d = 0; d < dim; d++) {
            float v;
            memcpy(&v, src + 4 * (size_t)d, 4);
            out[d] = fmaf(w, v, out[d]);
        }
        return;
    }
    if (p == ES_PREC_FP16) {
        for (int d = 0; d < dim; d++) {
            uint16_t h;
            memcpy(&h, src + 2 * (size_t)d, 2);
            out[d] = fmaf(w, es__f16_to_f32(h), out[d]);
        }
        return;
    }
    float scale, bias;
    scale_bias(p, src, dim, &scale, &bias);
    const float a = w * scale, b = w * bias;
    for (int d = 0; d < dim; d++) out[d] += fmaf(a, (float)code_at(p, src, d), b);
}

/* ---- decode: AVX2 ------------------------------------------------------------- */

#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#include <immintrin.h>
#define ES_QUANT_X86 1

/* 8 codes from the row's codes at value d (d a multiple of 8), as floats */
__attribute__((target("avx2,fma"))) static inline __m256 codes8(es_precision p, const uint8_t *src, int d) {
    __m256i c;
    switch (p) {
    case ES_PREC_INT16: c = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(src + 2 * (size_t)d))); break;
    case ES_PREC_INT8: c = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(src + d))); break;
    case ES_PREC_INT4: {
        uint32_t v;
        memcpy(&v, src + d / 2, 4);
        c = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32((int)v), _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28)),
                             _mm256_set1_epi32(0xf));
        break;
    }
    default: { /* INT2 */
        uint16_t v;
        memcpy(&v, src + d / 4, 2);
        c = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32((int)v), _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14)),
                             _mm256_set1_epi32(0x3));
        break;
    }
    }
    return _mm256_cvtepi32_ps(c);
}

__attribute__((target("avx2,fma"))) static void dequant_axpy_int_avx2(es_precision p, const uint8_t *src, int dim, float w, float *out) {
    float scale, bias;
    scale_bias(p, src, dim, &scale, &bias);
    const float a = w * scale, b = w * bias;
    const __m256 va = _mm256_set1_ps(a), vb = _mm256_set1_ps(b);
    int d = 0;
    for (; d + 8 <= dim; d += 8) {
        __m256 t = _mm256_fmadd_ps(va, codes8(p, src, d), vb);
        _mm256_storeu_ps(out + d, _mm256_add_ps(_mm256_loadu_ps(out + d), t));
    }
    for (; d < dim; d++) out[d] += fmaf(a, (float)code_at(p, src, d), b);
}

__attribute__((target("avx2,fma,f16c"))) static void dequant_axpy_fp16_f16c(const uint8_t *src, int dim, float w, float *out) {
    const __m256 vw = _mm256_set1_ps(w);
    int d = 0;
    for (; d + 8 <= dim; d += 8) {
        __m256 v = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + 2 * (size_t)d)));
        _mm256_storeu_ps(out + d, _mm256_fmadd_ps(vw, v, _mm256_loadu_ps(out + d)));
    }
    for (; d < dim; d++) {
        uint16_t h;
        memcpy(&h, src + 2 * (size_t)d, 2);
        out[d] = fmaf(w, es__f16_to_f32(h), out[d]);
    }
}

__attribute__((target("avx2,fma"))) static void dequant_axpy_fp32_avx2(const uint8_t *src, int dim, float w, float *out) {
    const __m256 vw = _mm256_set1_ps(w);
    int d = 0;
    for (; d + 8 <= dim; d += 8)
        _mm256_storeu_ps(out + d, _mm256_fmadd_ps(vw, _mm256_loadu_ps((const float *)(const void *)(src + 4 * (size_t)d)),
                                                  _mm256_loadu_ps(out + d)));
    for (; d < dim; d++) {
        float v;
        memcpy(&v, src + 4 * (size_t)d, 4);
        out[d] = fmaf(w, v, out[d]);
    }
}
#endif

/* 0: reference, 1: AVX2 (+FMA), 2: AVX2 with F16C */
static int quant_level(void) {
    static int level = -1;
    int l = __atomic_load_n(&level, __ATOMIC_ACQUIRE);
    if (l >= 0) return l;
    l = 0;
#ifdef ES_QUANT_X86
    if (es__cpu_level() >= ES_CPU_AVX2) {
        /* F16C: CPUID leaf 1, ECX bit 29 (asked directly: clang's
         * __builtin_cpu_supports does not know "f16c") */
        unsigned a = 0, b = 0, c = 0, d = 0;
        l = __get_cpuid(1, &a, &b, &c, &d) && (c >> 29 & 1u) ? 2 : 1;
    }
#endif
    __atomic_store_n(&level, l, __ATOMIC_RELEASE);
    return l;
}

void es__dequant_axpy(es_precision p, const uint8_t *src, int dim, float w, float *out) {
#ifdef ES_QUANT_X86
    int l = quant_level();
    if (l >= 1) {
        if (p == ES_PREC_FP32) return dequant_axpy_fp32_avx2(src, dim, w, out);
        if (p == ES_PREC_FP16) {
            if (l == 2) return dequant_axpy_fp16_f16c(src, dim, w, out);
        } else {
            return dequant_axpy_int_avx2(p, src, dim, w, out);
        }
    }
#endif
    es__dequant_axpy_ref(p, src, dim, w, out);
}

void es__dequant_row(es_precision p, const uint8_t *src, int dim, float *out) {
    memset(out, 0, (size_t)dim * sizeof *out);
    es__dequant_axpy(p, src, dim, 1.0f, out);
}
