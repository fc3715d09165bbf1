/*
 * fuzz_reader_libsvm.c — libFuzzer target for the libsvm and libffm
 * readers (plain and gzip).  Byte 0: options (fuzz_reader_common.h); bit 5
 * picks libffm over libsvm, bit 6 mean pooling, bit 7 a fixed n_fields_hint
 * of 4 (else libffm counts fields with a first pass).
 * Seeds: fuzz/corpus/reader_libsvm/.
 */
#include "fuzz_reader_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    int opt = data[0];
    es_reader_params p = es_reader_params_default();
    p.format = (opt & 32) ? ES_FMT_LIBFFM : ES_FMT_LIBSVM;
    p.pool = (opt & 64) ? ES_POOL_MEAN : ES_POOL_SUM;
    p.n_fields_hint = (opt & 128) ? 4 : 0;
    fuzz_reader_run(data + 1, size - 1, (opt & 32) ? "fuzz.libffm" : "fuzz.libsvm", p, opt);
    return 0;
}
