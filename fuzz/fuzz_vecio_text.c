/*
 * fuzz_vecio_text.c — libFuzzer target for the whitespace text vectors (optional label, word2vec header, comments, vector sets by label)
 * reader in src/index/vecio.c.  Byte 0 holds reader options (see
 * fuzz_vecio_common.h).  Seeds: fuzz/corpus/vecio_text/.
 */
#include "fuzz_vecio_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_vecio_run(data, size, ES_VEC_TEXT);
    return 0;
}
