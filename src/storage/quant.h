/*
 * quant.h — low-precision embedding rows: the row codecs that the
 * precision option of the row-table methods is built on (issue 11).
 *
 * One row of `dim` values is stored in es__prec_row_bytes(p, dim) bytes,
 * rows back to back with no padding (FBGEMM's fused rows):
 *
 *   fp32   dim f32
 *   fp16   dim IEEE half (binary16)
 *   int16  dim u16 codes, then f32 scale, f32 bias             (2 dim + 8)
 *   int8   dim u8 codes,  then f16 scale, f16 bias             (dim + 4)
 *   int4   ceil(dim/2) bytes, two codes a byte, low nibble first,
 *          then f16 scale, f16 bias                            (ceil(dim/2) + 4)
 *   int2   ceil(dim/4) bytes, four codes a byte, lowest bits first,
 *          then f16 scale, f16 bias                            (ceil(dim/4) + 4)
 *
 * (little-endian; scale and bias unaligned, read with memcpy).  A value is
 * bias + scale * code.  FBGEMM's 8-bit fused rows keep f32 scale and bias;
 * these keep f16 for int8 too (4 bytes a row less), and f32 for int16,
 * whose 65536 levels an f16 step could not resolve.
 *
 * The quantization rule (per row, k bits, L = 2^k - 1): bias is the
 * largest f16 (f32 for int16) <= min(row), scale the smallest f16 (f32)
 * >= (max(row) - bias) / L; so every value lies in
 * [bias, bias + L scale] and its code is round((x - bias) / scale) (nearest)
 * or floor((x - bias) / scale + u) with u ~ U[0, 1) (stochastic, unbiased
 * inside the range).  Nearest rounding is within half a step (scale) of x,
 * up to float rounding; the row's minimum is exact when it is an f16
 * (f32) value.  fp16 rows round each value to the nearest half (or
 * stochastically between its two neighbours).
 */
#ifndef ES_STORAGE_QUANT_H
#define ES_STORAGE_QUANT_H

#include "core/core.h"

#include <stddef.h>
#include <stdint.h>

typedef enum {
    ES_PREC_FP32 = 0,
    ES_PREC_FP16 = 1,
    ES_PREC_INT16 = 2,
    ES_PREC_INT8 = 3,
    ES_PREC_INT4 = 4,
    ES_PREC_INT2 = 5,
    ES_PREC_COUNT_
} es_precision;

/* "fp32", "fp16", "int16", "int8", "int4", "int2" <-> the enum; parse
 * returns ES_EINVAL for anything else. */
int es__prec_parse(const char *s, es_precision *out);
const char *es__prec_name(es_precision p);
/* Bits of one value (32, 16, 16, 8, 4, 2). */
int es__prec_bits(es_precision p);
/* Bytes of one row of dim values, scale and bias included. */
size_t es__prec_row_bytes(es_precision p, int dim);

/* IEEE binary16 <-> float: nearest (ties to even), and the neighbours of
 * x below / above (the largest half <= x, the smallest half >= x; x finite
 * and within the half range, else +-inf halves). */
uint16_t es__f32_to_f16(float x);
uint16_t es__f32_to_f16_down(float x);
uint16_t es__f32_to_f16_up(float x);
float es__f16_to_f32(uint16_t h);

/* Encode row x[dim] into dst[es__prec_row_bytes(p, dim)].  rng NULL:
 * nearest rounding; else stochastic rounding with draws from rng (one per
 * value, in order).  ES_ERANGE when a value is not finite or the row does
 * not fit the scale/bias type (|x| beyond 65504 for the f16 kinds);
 * dst is then unspecified. */
int es__quant_row(es_precision p, const float *x, int dim, uint8_t *dst, es_rng *rng);

/* Symmetric encoding with a given step (ALPT's rows, rows.c): for k-bit
 * codes (int16, int8, int4, int2; ES_EINVAL for the float kinds) and
 * z = 2^(k-1), the row's scale is the half nearest `step` (int16: step
 * itself, f32; at least the smallest positive half) and its bias
 * -z * scale, so a value is scale * (code - z): the integers [-z, z - 1]
 * times the step, zero exact.  Codes are round(x / scale) + z (nearest,
 * rng NULL) or floor(x / scale + u) + z (stochastic), clipped to
 * [0, 2^k - 1].  ES_ERANGE for a value that is not finite or a step that
 * is not a positive finite number (or beyond the half range). */
int es__quant_row_step(es_precision p, const float *x, int dim, float step, uint8_t *dst, es_rng *rng);
/* The scale stored in an encoded int row (f16 or f32, as a float). */
float es__quant_row_scale(es_precision p, const uint8_t *src, int dim);

/* out[d] += w * value[d] for the row at src: the lookup kernel (pooling
 * a weighted value into the [batch, fields, dim] output).  For the int
 * kinds each term is fmaf(w*scale, code, w*bias) added to out[d]; for
 * fp16 and fp32 fmaf(w, value, out[d]).  The dispatched version and its
 * `_ref` twin give the same bits. */
void es__dequant_axpy(es_precision p, const uint8_t *src, int dim, float w, float *out);
void es__dequant_axpy_ref(es_precision p, const uint8_t *src, int dim, float w, float *out);
/* out[d] = value[d] (es__dequant_axpy onto zeros with w = 1, exactly). */
void es__dequant_row(es_precision p, const uint8_t *src, int dim, float *out);

#endif
