/*
 * fuzz_vecio_raw.c — libFuzzer target for the raw float32 rows of a given dimension
 * reader in src/index/vecio.c.  Byte 0 holds reader options (see
 * fuzz_vecio_common.h).  Seeds: fuzz/corpus/vecio_raw/.
 */
#include "fuzz_vecio_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_vecio_run(data, size, ES_VEC_RAW_F32);
    return 0;
}
