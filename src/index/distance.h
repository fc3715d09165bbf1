/*
 * distance.h — distance kernels of the vector indexes that src/core/simd.h
 * does not already provide (float L2 and dot products live there).
 *
 * Every kernel has a portable `_ref` twin; the plain name dispatches at
 * first use to AVX-512 or AVX2 code when the running CPU has it (ES_SIMD=ref
 * forces the references, as for the core kernels).  tests/test_index.c
 * compares each kernel with its twin over awkward sizes.
 */
#ifndef ES_INDEX_DISTANCE_H
#define ES_INDEX_DISTANCE_H

#include <stddef.h>
#include <stdint.h>

/* 8-bit scalar quantization.  A code c decodes to x_j = bias_j + scale_j * c_j.
 *   sq8_l2: sum_j (qb_j - scale_j * c_j)^2   with qb = q - bias
 *   sq8_ip: sum_j qs_j * c_j                 with qs = q * scale
 * so that ||q - x||^2 = sq8_l2 and <q, x> = <q, bias> + sq8_ip. */
float es__sq8_l2(const float *qb, const float *scale, const uint8_t *code, size_t d);
float es__sq8_l2_ref(const float *qb, const float *scale, const uint8_t *code, size_t d);
float es__sq8_ip(const float *qs, const uint8_t *code, size_t d);
float es__sq8_ip_ref(const float *qs, const uint8_t *code, size_t d);

/* Hamming distance between two codes of nw 64-bit words. */
uint32_t es__hamming(const uint64_t *a, const uint64_t *b, size_t nw);
uint32_t es__hamming_ref(const uint64_t *a, const uint64_t *b, size_t nw);

/* Product-quantization ADC scan: out[i] = bias + sum_m lut[m*ksub + codes[i*M + m]]
 * for n codes of M bytes. */
void es__pq_scan(const float *lut, const uint8_t *codes, size_t n, int M, int ksub, float bias, float *out);
void es__pq_scan_ref(const float *lut, const uint8_t *codes, size_t n, int M, int ksub, float bias, float *out);

/* Four rows at once against one query (graph and list scans):
 * out[r] = ||q - x_r||^2  or  <q, x_r>. */
void es__l2sq_x4(const float *q, const float *x0, const float *x1, const float *x2, const float *x3, size_t d,
                 float out[4]);
void es__l2sq_x4_ref(const float *q, const float *x0, const float *x1, const float *x2, const float *x3, size_t d,
                     float out[4]);
void es__dot_x4(const float *q, const float *x0, const float *x1, const float *x2, const float *x3, size_t d,
                float out[4]);
void es__dot_x4_ref(const float *q, const float *x0, const float *x1, const float *x2, const float *x3, size_t d,
                    float out[4]);

/* Candidate selection for top-k scans: with s_j = (base ? base[j] : 0) +
 * mul * v[j] for j < m, write the j with s_j <= thr and their scores, in
 * increasing j, to j_out / s_out; returns how many.  Lets a scan test 16
 * scores per instruction against the heap's current worst and touch the
 * heap only for the few that can enter. */
size_t es__select_le(const float *base, const float *v, float mul, size_t m, float thr, uint32_t *j_out, float *s_out);
size_t es__select_le_ref(const float *base, const float *v, float mul, size_t m, float thr, uint32_t *j_out,
                         float *s_out);

/* "avx512", "avx2" or "ref": what the dispatcher picked for these kernels. */
const char *es__index_simd_level(void);

#endif
