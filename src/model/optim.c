/*
 * optim.c — dense optimizer updates (SGD, Adagrad, Adam) on flat arrays.
 * The net keeps the state arrays and the step count and calls these once
 * per parameter segment, passing the weight decay for weights and 0 for
 * biases.  The formulas follow torch.optim (see layers.h and
 * docs/models.md) so that a PyTorch reference tracks the same trajectory.
 *
 * Every update is elementwise, so the loops can be split over threads (and
 * vectorised) without changing a single bit of the result.
 */
#include "model/layers.h"

#include <math.h>

/* Split a long update over threads; short ones are not worth a team. */
#define ES__PAR_ELEMS (1 << 16)

void es__sgd_update(float *w, const float *g, size_t count, float lr, float wd) {
    long long n = (long long)count;
#pragma omp parallel for simd schedule(static) if (n >= ES__PAR_ELEMS)
    for (long long i = 0; i < n; i++) {
        float gi = g[i] + wd * w[i];
        w[i] -= lr * gi;
    }
}

void es__adagrad_update(float *w, const float *g, float *acc, size_t count, float lr, float eps, float wd) {
    long long n = (long long)count;
#pragma omp parallel for simd schedule(static) if (n >= ES__PAR_ELEMS)
    for (long long i = 0; i < n; i++) {
        float gi = g[i] + wd * w[i];
        float a = acc[i] + gi * gi;
        acc[i] = a;
        w[i] -= lr * gi / (sqrtf(a) + eps);
    }
}

void es__adam_update(float *w, const float *g, float *m, float *v, size_t count, float lr, float beta1, float beta2,
                     float eps, float wd, int64_t t) {
    /* Bias corrections in double: 1 - beta^t for t of a few is tiny and
     * would lose digits in float. */
    double bc1 = 1.0 - pow((double)beta1, (double)t);
    double bc2 = 1.0 - pow((double)beta2, (double)t);
    float step = (float)(lr / bc1);
    float inv_sqrt_bc2 = (float)(1.0 / sqrt(bc2));
    float b1 = beta1, b2 = beta2, c1 = 1.0f - beta1, c2 = 1.0f - beta2;
    long long n = (long long)count;
#pragma omp parallel for simd schedule(static) if (n >= ES__PAR_ELEMS)
    for (long long i = 0; i < n; i++) {
        float gi = g[i] + wd * w[i];
        float mi = b1 * m[i] + c1 * gi;
        float vi = b2 * v[i] + c2 * gi * gi;
        m[i] = mi;
        v[i] = vi;
        w[i] -= step * mi / (sqrtf(vi) * inv_sqrt_bc2 + eps);
    }
}
