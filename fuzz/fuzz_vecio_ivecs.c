/*
 * fuzz_vecio_ivecs.c — libFuzzer target for the texmex .ivecs (int32 dimension + int32 values per record: ground truth)
 * reader in src/index/vecio.c.  Byte 0 holds reader options (see
 * fuzz_vecio_common.h).  Seeds: fuzz/corpus/vecio_ivecs/.
 */
#include "fuzz_vecio_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_vecio_run(data, size, ES_VEC_IVECS);
    return 0;
}
