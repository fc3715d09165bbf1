/*
 * test_quant.c — the low-precision row codecs (src/storage/quant.c):
 *
 *   - binary16 conversion: every half round-trips, nearest is nearest,
 *     down/up are the neighbours;
 *   - nearest rounding is within half a step of every value (up to float
 *     rounding), and a row minimum that is an f16 (f32) value comes back
 *     exactly;
 *   - stochastic rounding is unbiased: over 10^5 draws the mean error of
 *     every value is within 3 standard errors of 0;
 *   - the dispatched lookup kernel equals its `_ref` twin bit for bit over
 *     awkward dims, for every precision (the dispatched one is whatever
 *     ES_SIMD and the CPU allow: check.sh runs the quick tier at each level);
 *   - the row layout sizes and the errors.
 */
#include "test.h"
#include "core/core.h"
#include "storage/quant.h"
#include "core/simd.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const es_precision ALL[] = {ES_PREC_FP32, ES_PREC_FP16, ES_PREC_INT16, ES_PREC_INT8, ES_PREC_INT4, ES_PREC_INT2};
static const es_precision INTS[] = {ES_PREC_INT16, ES_PREC_INT8, ES_PREC_INT4, ES_PREC_INT2};

TEST(quant_f16_conversion) {
    int checked = 0;
    for (uint32_t h = 0; h < 0x10000u; h++) {
        if ((h & 0x7c00u) == 0x7c00u) continue; /* inf, nan */
        float f = es__f16_to_f32((uint16_t)h);
        uint16_t back = es__f32_to_f16(f);
        CHECK_MSG(back == h || (f == 0 && (back & 0x7fff) == 0), "half %04x -> %g -> %04x", h, (double)f, back);
        CHECK(es__f32_to_f16_down(f) == back && es__f32_to_f16_up(f) == back);
        checked++;
    }
    CHECK_EQ_INT(checked, 63488);
    CHECK(es__f16_to_f32(0x7bff) == 65504.0f && es__f16_to_f32(0x0001) == 0x1p-24f && es__f16_to_f32(0x3c00) == 1.0f);
    es_rng rng;
    es__rng_seed(&rng, 5);
    for (int i = 0; i < 200000; i++) {
        /* values across the half range, normal and subnormal */
        float x = (float)((es__rng_uniform(&rng) * 2 - 1) * ldexp(1.0, (int)(es__rng_u64(&rng) % 40) - 24));
        if (fabsf(x) > 65504.0f) continue;
        uint16_t n = es__f32_to_f16(x), lo = es__f32_to_f16_down(x), hi = es__f32_to_f16_up(x);
        float fn = es__f16_to_f32(n), flo = es__f16_to_f32(lo), fhi = es__f16_to_f32(hi);
        CHECK_MSG(flo <= x && x <= fhi, "x %.9g: down %.9g up %.9g", (double)x, (double)flo, (double)fhi);
        CHECK(fn == flo || fn == fhi);
        CHECK_MSG(fabsf(x - fn) <= fabsf(x - (fn == flo ? fhi : flo)), "x %.9g: nearest %.9g is not nearest", (double)x, (double)fn);
        if (flo != fhi) CHECK(es__f32_to_f16_down(fhi) == hi && es__f32_to_f16_up(flo) == lo);
    }
    CHECK(es__f32_to_f16(1e6f) == 0x7c00 && es__f32_to_f16(-1e6f) == 0xfc00);
    CHECK(es__f32_to_f16(65519.0f) == 0x7bff && es__f32_to_f16(65520.0f) == 0x7c00); /* the rounding edge of the largest half */
}

/* A row of one of several shapes. */
static void fill_row(es_rng *rng, float *x, int dim, int kind) {
    for (int d = 0; d < dim; d++) {
        double u = es__rng_uniform(rng);
        switch (kind % 6) {
        case 0: x[d] = (float)(u * 0.2 - 0.1); break;               /* an initialised embedding */
        case 1: x[d] = es__rng_normal(rng) * 3.0f; break;           /* trained, wide */
        case 2: x[d] = 0.25f; break;                                /* constant */
        case 3: x[d] = 1.0f + (float)(u * 1e-6); break;             /* tiny range */
        case 4: x[d] = (float)((u * 2 - 1) * 60000.0); break;       /* near the f16 limit */
        default: x[d] = d % 2 ? 1e-5f * (float)u : -1e-5f; break;   /* subnormal-scale steps */
        }
    }
}

static float row_scale(es_precision p, const uint8_t *row, int dim) {
    /* the step: dequantize codes 0 and 1 would need the layout; read it instead */
    size_t cb = es__prec_row_bytes(p, dim) - (p == ES_PREC_INT16 ? 8 : 4);
    if (p == ES_PREC_INT16) {
        float s;
        memcpy(&s, row + cb, 4);
        return s;
    }
    uint16_t h;
    memcpy(&h, row + cb, 2);
    return es__f16_to_f32(h);
}

TEST(quant_nearest_within_half_a_step) {
    es_rng rng;
    es__rng_seed(&rng, 11);
    float x[130], v[130];
    uint8_t row[1024];
    long checked = 0;
    for (int dim = 1; dim <= 130; dim += dim < 20 ? 1 : 7)
        for (int kind = 0; kind < 12; kind++)
            for (size_t pi = 0; pi < sizeof ALL / sizeof *ALL; pi++) {
                es_precision p = ALL[pi];
                fill_row(&rng, x, dim, kind);
                if (kind >= 6) { /* make the minimum an f16 value: it must come back exactly */
                    int at = (int)(es__rng_u64(&rng) % (uint64_t)dim);
                    float mn = x[0];
                    for (int d = 1; d < dim; d++) mn = fminf(mn, x[d]);
                    x[at] = es__f16_to_f32(es__f32_to_f16_down(mn));
                }
                CHECK_MSG(es__quant_row(p, x, dim, row, NULL) == ES_OK, "%s dim %d kind %d", es__prec_name(p), dim, kind);
                es__dequant_row(p, row, dim, v);
                float mn = x[0];
                int at_min = 0;
                for (int d = 1; d < dim; d++)
                    if (x[d] < mn) mn = x[d], at_min = d;
                for (int d = 0; d < dim; d++) {
                    double err = fabs((double)x[d] - (double)v[d]), tol;
                    if (p == ES_PREC_FP32) tol = 0;
                    else if (p == ES_PREC_FP16) { /* half a half-ulp */
                        uint16_t h = es__f32_to_f16(x[d]);
                        tol = 0.5 * fabs((double)es__f16_to_f32(h ^ 1) - (double)es__f16_to_f32(h)) + 1e-30;
                    } else {
                        tol = 0.5 * (double)row_scale(p, row, dim) * (1 + 1e-6) + 2e-7 * fabs((double)x[d]) + 1e-30;
                    }
                    CHECK_MSG(err <= tol, "%s dim %d kind %d value %d: %.9g -> %.9g (err %.3g > %.3g)", es__prec_name(p), dim, kind, d,
                              (double)x[d], (double)v[d], err, tol);
                    checked++;
                }
                if (kind >= 6 && p != ES_PREC_FP32)
                    CHECK_MSG(v[at_min] == x[at_min], "%s dim %d: the minimum %.9g came back as %.9g", es__prec_name(p), dim,
                              (double)x[at_min], (double)v[at_min]);
            }
    printf("    %ld values checked\n", checked);
}

TEST(quant_stochastic_rounding_is_unbiased) {
    enum { DIM = 13, N = 100000 };
    es_rng rng, draw;
    es__rng_seed(&rng, 3);
    es__rng_seed(&draw, 4);
    float x[DIM], v[DIM];
    uint8_t row[256];
    const es_precision kinds[] = {ES_PREC_FP16, ES_PREC_INT8, ES_PREC_INT4, ES_PREC_INT2};
    for (size_t k = 0; k < sizeof kinds / sizeof *kinds; k++) {
        fill_row(&rng, x, DIM, 1);
        /* per value, and for the row mean per draw (one statistic per kind) */
        double sum[DIM] = {0}, sq[DIM] = {0}, rsum = 0, rsq = 0;
        for (int i = 0; i < N; i++) {
            CHECK(es__quant_row(kinds[k], x, DIM, row, &draw) == ES_OK);
            es__dequant_row(kinds[k], row, DIM, v);
            double r = 0;
            for (int d = 0; d < DIM; d++) {
                double e = (double)v[d] - (double)x[d];
                sum[d] += e;
                sq[d] += e * e;
                r += e / DIM;
            }
            rsum += r;
            rsq += r * r;
        }
        double rmean = rsum / N, rse = sqrt(fmax(rsq / N - rmean * rmean, 0) / N);
        CHECK_MSG(fabs(rmean) <= 3 * rse, "%s: mean error %.3g, 3 SE %.3g", es__prec_name(kinds[k]), rmean, 3 * rse);
        double worst = 0;
        for (int d = 0; d < DIM; d++) {
            double mean = sum[d] / N, var = sq[d] / N - mean * mean, se = sqrt(var > 0 ? var / N : 0);
            /* every value too, at 5 SE (13 values: 3 SE each would fail by chance about once in seven) */
            CHECK_MSG(fabs(mean) <= 5 * se + 1e-7 * fabs((double)x[d]), "%s value %d: mean error %.3g, 5 SE %.3g",
                      es__prec_name(kinds[k]), d, mean, 5 * se);
            if (se > 0) worst = fmax(worst, fabs(mean) / se);
        }
        printf("    %s: mean error %.3g (%.2f SE); largest per value %.2f SE\n", es__prec_name(kinds[k]), rmean,
               rse > 0 ? fabs(rmean) / rse : 0.0, worst);
    }
}

TEST(quant_lookup_kernel_equals_its_twin) {
    es_rng rng;
    es__rng_seed(&rng, 21);
    float x[200], o1[200], o2[200];
    uint8_t row[1024];
    for (int dim = 1; dim <= 200; dim += dim < 40 ? 1 : 13)
        for (size_t pi = 0; pi < sizeof ALL / sizeof *ALL; pi++) {
            es_precision p = ALL[pi];
            fill_row(&rng, x, dim, (int)pi);
            CHECK(es__quant_row(p, x, dim, row, NULL) == ES_OK);
            for (int d = 0; d < dim; d++) o1[d] = o2[d] = es__rng_normal(&rng);
            float w = es__rng_normal(&rng);
            es__dequant_axpy(p, row, dim, w, o1);
            es__dequant_axpy_ref(p, row, dim, w, o2);
            CHECK_MSG(memcmp(o1, o2, (size_t)dim * sizeof(float)) == 0, "%s dim %d (%s)", es__prec_name(p), dim, es__simd_level());
        }
}

TEST(quant_layout_and_errors) {
    CHECK_EQ_INT(es__prec_row_bytes(ES_PREC_FP32, 5), 20);
    CHECK_EQ_INT(es__prec_row_bytes(ES_PREC_FP16, 5), 10);
    CHECK_EQ_INT(es__prec_row_bytes(ES_PREC_INT16, 5), 18);
    CHECK_EQ_INT(es__prec_row_bytes(ES_PREC_INT8, 5), 9);
    CHECK_EQ_INT(es__prec_row_bytes(ES_PREC_INT4, 5), 7);
    CHECK_EQ_INT(es__prec_row_bytes(ES_PREC_INT2, 5), 6);
    CHECK_EQ_INT(es__prec_row_bytes(ES_PREC_INT4, 64), 36); /* 8x fewer code bytes than fp32's 256 */
    es_precision p;
    for (size_t i = 0; i < sizeof ALL / sizeof *ALL; i++) {
        CHECK(es__prec_parse(es__prec_name(ALL[i]), &p) == ES_OK && p == ALL[i]);
        CHECK_EQ_INT(es__prec_bits(ALL[i]) * 1, es__prec_bits(p));
    }
    CHECK_EQ_INT(es__prec_parse("int3", &p), ES_EINVAL);
    CHECK_EQ_INT(es__prec_parse(NULL, &p), ES_EINVAL);
    uint8_t row[64];
    float bad[3] = {0.5f, NAN, 1.0f}, inf[3] = {0.5f, INFINITY, 1.0f}, big[3] = {0.5f, 1e5f, 1.0f};
    for (size_t i = 0; i < sizeof ALL / sizeof *ALL; i++) {
        CHECK_EQ_INT(es__quant_row(ALL[i], bad, 3, row, NULL), ES_ERANGE);
        CHECK_EQ_INT(es__quant_row(ALL[i], inf, 3, row, NULL), ES_ERANGE);
    }
    for (size_t i = 0; i < sizeof INTS / sizeof *INTS; i++)
        CHECK_EQ_INT(es__quant_row(INTS[i], big, 3, row, NULL), INTS[i] == ES_PREC_INT16 ? ES_OK : ES_ERANGE);
    CHECK_EQ_INT(es__quant_row(ES_PREC_FP16, big, 3, row, NULL), ES_ERANGE);
}
