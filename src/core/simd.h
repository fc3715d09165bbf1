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
#include <stdint.h>

/* Function multi-versioning for loops written as plain C (omp simd, vector
 * extensions): ES__CLONES compiles the function for AVX-512, AVX2 and
 * baseline x86-64 and picks one at load time (GCC target_clones), so a
 * default build still gets wide vectors.  Only for code whose bits do not
 * depend on the width (lane-wise IEEE operations, chains kept in order;
 * -std=c11 keeps floating-point contraction off).  ES__CLONES_FMA is for
 * kernels whose arithmetic is explicit fmaf (one rounding, so the same bits
 * on every path): an FMA clone turns each into one instruction instead of a
 * call into libm. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define ES__CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#define ES__CLONES_FMA __attribute__((target_clones("fma", "default")))
#else
#define ES__CLONES
#define ES__CLONES_FMA
#endif

/* sum_i a[i]*b[i] */
float es__dot(const float *a, const float *b, size_t n);
float es__dot_ref(const float *a, const float *b, size_t n);
/* y[i] += alpha * x[i] */
void es__axpy(float *restrict y, float alpha, const float *restrict x, size_t n);
void es__axpy_ref(float *restrict y, float alpha, const float *restrict x, size_t n);
/* For the pairs P in [0, PN) and their values v in [off[P], off[P+1]):
 *     y[slot[v] * dim ..] += w[v] * x[P * dim ..]   where u0 <= slot[v] < u1,
 * value by value in order: the same bits as es__axpy(y + slot[v] * dim,
 * w[v], x + P * dim, dim) called for each value (a step's gradient sums
 * per distinct row), without a call a value. */
void es__scatter_axpy(float *y, size_t dim, const uint32_t *slot, const float *w, const float *x, const uint32_t *off,
                      size_t PN, size_t u0, size_t u1);
void es__scatter_axpy_ref(float *y, size_t dim, const uint32_t *slot, const float *w, const float *x, const uint32_t *off,
                          size_t PN, size_t u0, size_t u1);
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

/* ---- the CPU probe ----------------------------------------------------------
 * Every dispatcher in the library (these kernels, the optimizer updates in
 * optim/, the distance kernels in index/) picks its implementation from this
 * one probe, so they all agree and ES_SIMD means the same everywhere:
 *   ES_SIMD=ref     every dispatcher takes its portable `_ref` kernels
 *                   (level ES_CPU_REF, no feature bits, ref = 1);
 *   ES_SIMD=avx2    no AVX-512 even when the CPU has it (the ES_CPU_AVX512*
 *                   bits are cleared, the level is at most ES_CPU_AVX2);
 *   unset or other  the best the CPU has.
 * The CPU is asked once (__builtin_cpu_supports on x86-64 with GCC/Clang;
 * elsewhere nothing is reported) and ES_SIMD read once, at the first call
 * from any thread; the answer is published with one atomic store, so any
 * thread may call at any time and all see the same answer. */
typedef enum {
    ES_CPU_REF = 0,    /* portable C only */
    ES_CPU_AVX2 = 1,   /* AVX2 and FMA */
    ES_CPU_AVX512 = 2  /* AVX-512F */
} es__cpu_isa;

/* Feature bits (what the CPU has, less what ES_SIMD turns off). */
#define ES_CPU_POPCNT (1u << 0)
#define ES_CPU_AVX2F (1u << 1)
#define ES_CPU_FMA (1u << 2)
#define ES_CPU_AVX512F (1u << 3)
#define ES_CPU_AVX512BW (1u << 4)
#define ES_CPU_AVX512VL (1u << 5)
#define ES_CPU_AVX512VPOPCNTDQ (1u << 6)
#define ES_CPU_AVX512_ALL (ES_CPU_AVX512F | ES_CPU_AVX512BW | ES_CPU_AVX512VL | ES_CPU_AVX512VPOPCNTDQ)

typedef struct es__cpu {
    es__cpu_isa level; /* ES_CPU_AVX512 with avx512f, else ES_CPU_AVX2 with avx2 and fma, else ES_CPU_REF */
    unsigned features; /* ES_CPU_* bits */
    int ref;           /* 1 when ES_SIMD=ref: take the `_ref` kernels even where a portable fast one exists */
} es__cpu;

/* The cached answer (probed at the first call). */
es__cpu es__cpu_get(void);
/* Its level alone. */
es__cpu_isa es__cpu_level(void);
/* The answer for ES_SIMD = simd_env (NULL: unset) on this CPU, computed
 * afresh and not cached: for tests, which cannot change the environment
 * of a probe that has already run. */
es__cpu es__cpu_probe(const char *simd_env);

#endif
