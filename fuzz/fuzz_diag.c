/*
 * fuzz_diag.c — libFuzzer target for the diagnostics (src/diag): any
 * float array must give a clean ES_EINVAL (empty, NaN, Inf) or a report
 * whose every number is finite (the contract of es_diag_run: nothing is
 * ever NaN), whatever the magnitudes (denormals, values near FLT_MAX whose
 * squared distances overflow float), duplicates or ties.
 * Byte 0: dimension (1 + b % 8); byte 1: k (3 + b % 6) and sample size
 * (b / 8: 0 = all); the rest: float32 rows (a partial row is dropped).
 */
#include "embstore.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 2) return 0;
    int d = 1 + data[0] % 8;
    es_diag_params p = es_diag_params_default();
    p.k = 3 + data[1] % 6;
    p.sample = data[1] / 8;
    p.threads = 1;
    size_t n = (size - 2) / (sizeof(float) * (size_t)d);
    if (n > 512) n = 512;
    float *x = malloc(n * (size_t)d * sizeof(float) + 1);
    if (!x) return 0;
    memcpy(x, data + 2, n * (size_t)d * sizeof(float));
    es_diag_report r;
    es_err err = {0};
    int rc = es_diag_run(x, n, d, &p, &r, &err);
    if (rc == 0) {
        const double v[] = {r.spec.erank, r.spec.erank_centered, r.spec.nuclear, r.spec.nuclear_norm, r.spec.frobenius,
                            r.spec.condition, r.spec.energy_top_k, r.id.twonn, r.id.twonn_lo, r.id.twonn_hi, r.id.twonn_fit,
                            r.id.mle, r.id.mle_lo, r.id.mle_hi, r.id.mle_lb, r.vendi, r.rows.norm_min, r.rows.norm_median,
                            r.rows.norm_max, r.rows.norm_mean, r.rows.max_cos_median};
        for (size_t i = 0; i < sizeof v / sizeof v[0]; i++)
            if (isnan(v[i])) abort();
        for (int i = 0; i < r.spec.m; i++)
            if (isnan(r.spec.sv[i])) abort();
        es_diag_report_free(&r);
    } else if (rc != ES_EINVAL) {
        abort();
    }
    free(x);
    return 0;
}
