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

/* C[M, N] = A[M, K] B[K, N] (row-major with leading dimensions lda, ldb,
 * ldc; C is overwritten and must not alias A or B).  Every element is one
 * fused multiply-add chain in k order starting from +0:
 *     c = fma(A[i, K-1], B[K-1, j], ... fma(A[i, 0], B[0, j], +0) ...)
 * whatever the kernel (AVX-512, AVX2 or the scalar reference with fmaf),
 * the block an element falls in, M, N or the thread split.  So a row of C
 * depends only on the same row of A and on B: bit for bit the same on any
 * IEEE-754 machine, whatever other rows are computed with it.  This is the
 * product every inference path uses (docs/determinism.md).  Rows are
 * spread over `threads` OpenMP threads (<= 1: the caller's thread) when
 * the product is large enough to pay for it. */
void es__gemm_fixed(float *C, int ldc, const float *A, int lda, const float *B, int ldb, int M, int K, int N, int threads);
void es__gemm_fixed_ref(float *C, int ldc, const float *A, int lda, const float *B, int ldb, int M, int K, int N);

/* Which implementation the dispatcher picked: "avx512", "avx2" or "ref".
 * ES_SIMD=ref in the environment forces the reference kernels. */
const char *es__simd_level(void);

#endif
