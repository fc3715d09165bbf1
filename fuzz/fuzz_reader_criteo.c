/*
 * fuzz_reader_criteo.c — libFuzzer target for the Criteo TSV reader
 * (plain and gzip).  Byte 0: options (see fuzz_reader_common.h; bit 5 reads
 * the file as unlabeled, 39 columns; bit 6 uses two threads; bit 7 turns on
 * num_cat, the bucketed numeric fields).  Seeds: fuzz/corpus/reader_criteo/.
 */
#include "fuzz_reader_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    int opt = data[0];
    es_reader_params p = es_reader_params_default();
    p.format = ES_FMT_CRITEO;
    p.has_label = !(opt & 32);
    /* bit 6: two threads, which selects the block-parallel Criteo path
     * (its row compaction and message regeneration) */
    p.threads = opt & 64 ? 2 : 1;
    p.num_cat = !!(opt & 128);
    fuzz_reader_run(data + 1, size - 1, "fuzz.tsv", p, opt);
    return 0;
}
