/*
 * fuzz_vecio_fvecs.c — libFuzzer target for the texmex .fvecs (int32 dimension + float32 values per record)
 * reader in src/index/vecio.c.  Byte 0 holds reader options (see
 * fuzz_vecio_common.h).  Seeds: fuzz/corpus/vecio_fvecs/.
 */
#include "fuzz_vecio_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_vecio_run(data, size, ES_VEC_FVECS);
    return 0;
}
