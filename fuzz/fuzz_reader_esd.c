/*
 * fuzz_reader_esd.c — libFuzzer target for the binary dataset cache reader
 * (src/data/esd.c) behind es_reader.  Byte 0: options (bits 0-2 the batch
 * size 1..8, bit 3 a request with an explicit format and mean pooling, so
 * the option comparison runs both ways); the rest is the cache file,
 * read from memory (es__reader_open_mem, which recognises it by its magic).
 *
 * The harness drains the reader and checks the batch invariants every
 * consumer relies on (fuzz_reader_common.h's fuzz_drain: monotone offsets
 * within the value arrays, labels 0/1, finite numbers and weights), rewinds
 * and requires the same rows and status.  Checksums guard a cache against
 * accidents; the checks behind them (counts, labels, finiteness, shapes)
 * are what this target exercises, with inputs whose checksums it fixes:
 * bit 4 recomputes every tensor checksum and the header checksum of the
 * image before reading it, so mutations reach the content checks.
 * Seeds: fuzz/corpus/reader_esd/ (small caches of Criteo, CSV with
 * multi-valued fields, libsvm).
 */
#include "fuzz_reader_common.h"
#include "format/file.h"

#include <stdlib.h>
#include <xxhash.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Recompute the tensor checksums (table entries, docs/format.md) of a
 * well-formed-enough image, then the header checksum. */
static void fix_sums(uint8_t *b, size_t n) {
    if (n < 128) return;
    uint32_t nt;
    uint64_t table_off, data_off;
    memcpy(&nt, b + 36, 4);
    memcpy(&table_off, b + 56, 8);
    memcpy(&data_off, b + 72, 8);
    if (nt > 64 || table_off > n || (uint64_t)nt * 128 > n - table_off) return;
    for (uint32_t i = 0; i < nt; i++) {
        uint8_t *e = b + table_off + (uint64_t)i * 128;
        uint64_t off, nb;
        memcpy(&off, e + 104, 8);
        memcpy(&nb, e + 112, 8);
        if (off > n || nb > n - off) continue;
        uint64_t h = XXH3_64bits(b + off, (size_t)nb);
        memcpy(e + 120, &h, 8);
    }
    (void)data_off;
    es__file_fix_checksum(b, n);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    int opt = data[0];
    es_reader_params p = es_reader_params_default();
    if (opt & 8) {
        p.format = ES_FMT_CRITEO;
        p.pool = ES_POOL_MEAN;
    }
    p.skip_bad = 1;
    const uint8_t *img = data + 1;
    size_t n = size - 1;
    uint8_t *copy = NULL;
    if (opt & 16) {
        copy = malloc(n ? n : 1);
        if (!copy) return 0;
        memcpy(copy, img, n);
        fix_sums(copy, n);
        img = copy;
    }
    es_reader *r = NULL;
    es_err err = {0};
    int rc = es__reader_open_mem(&r, img, n, "fuzz.esd", &p, &err);
    if (rc) {
        FUZZ_CHECK(r == NULL && err.msg[0] != 0);
        free(copy);
        return 0;
    }
    es_batch b;
    if (es_batch_alloc(&b, 1 + (opt & 7), es_reader_n_dense(r), es_reader_n_fields(r), 1) == 0) {
        uint64_t rows1 = 0, sum1 = 0, rows2 = 0, sum2 = 0;
        int rc1 = fuzz_drain(r, &b, &rows1, &sum1);
        FUZZ_CHECK(es_reader_rows(r) == rows1);
        FUZZ_CHECK(es_reader_rewind(r) == 0);
        int rc2 = fuzz_drain(r, &b, &rows2, &sum2);
        FUZZ_CHECK(rc1 == rc2 && rows1 == rows2 && sum1 == sum2);
        es_batch_free(&b);
    }
    es_reader_free(r);
    free(copy);
    return 0;
}
