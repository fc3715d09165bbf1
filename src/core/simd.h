/*
 * simd.h — small vector kernels used on hot paths (embedding pooling,
 * gradient scatter, interactions).  Each kernel has a portable `_ref` twin;
 * the public name dispatches at first use to an AVX-512 or AVX2 version
 * when the CPU has it (checked at run time), else to the reference.
 * tests/test_core.c compares every kernel with its twin over awkward sizes.
 */
#ifndef ES_SIMD_H
#define ES_SIMD_H

#include <stddef.h>

/* sum_i a[i]*b[i] */
float es__dot(const float *a, const float *b, size_t n);
float es__dot_ref(const float *a, const float *b, size_t n);
/* y[i] += alpha * x[i] */
void es__axpy(float *restrict y, float alpha, const float *restrict x, size_t n);
void es__axpy_ref(float *restrict y, float alpha, const float *restrict x, size_t n);
/* sum_i (a[i]-b[i])^2 */
float es__l2sq(const float *a, const float *b, size_t n);
float es__l2sq_ref(const float *a, const float *b, size_t n);

/* Which implementation the dispatcher picked: "avx512", "avx2" or "ref".
 * ES_SIMD=ref in the environment forces the reference kernels. */
const char *es__simd_level(void);

#endif
