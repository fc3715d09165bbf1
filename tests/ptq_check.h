/*
 * ptq_check.h — the post-training-quantization round trip of one storage
 * method (defined in test_ptq.c, used by test_qrows.c too): train fp32 on
 * the Criteo sample, quantize, compare with a dequantized fp32 twin, save,
 * load, predict, refuse training.
 */
#ifndef ES_TEST_PTQ_CHECK_H
#define ES_TEST_PTQ_CHECK_H

enum { ES_PTQ_SINGLE = 0, ES_PTQ_ALL = 1, ES_PTQ_NEAR = 2 };
void es_test_ptq_roundtrip(const char *method, const char *opts, double budget, const char *prec_name, int compare);

/* Bytes of a storage's parameter tensors: every tensor but the optimizer
 * state (opt.*) and the maps (map.*, aux); SIZE_MAX when they cannot be
 * listed. */
#include <stddef.h>
struct es_storage;
size_t es_test_param_tensor_bytes(struct es_storage *st);

#endif
