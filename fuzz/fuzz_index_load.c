/*
 * fuzz_index_load.c — libFuzzer target for the index loaders
 * (es__index_read / es__multi_read in src/index/) on arbitrary container
 * files, followed by a search of what loaded.
 *
 * The input is opened as an in-memory container twice: as given (with
 * checksums), and with the header checksum recomputed and tensor checksums
 * skipped, so that mutated metadata, shapes, offsets, graph links and list
 * ids reach the index's own validation.  Whatever loads must be searchable
 * without reading outside its arrays (ASan/UBSan watch), and every result
 * id must be -1 or a vector of the index.  Seeds: fuzz/corpus/index_load/
 * (small indexes of every kind and a multi-vector index).
 */
#include "index/index.h"

#include <stdlib.h>

#define REQUIRE(c)                                                        \
    do {                                                                  \
        if (!(c)) {                                                       \
            fprintf(stderr, "fuzz_index_load: broken promise: %s\n", #c); \
            abort();                                                      \
        }                                                                 \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void search_index(es_index *ix) {
    size_t n = es_index_size(ix);
    int dim = es_index_dim(ix);
    REQUIRE(dim >= 1);
    if (n == 0 || dim > 4096) return;
    float *q = calloc((size_t)dim, sizeof *q);
    int k = n < 3 ? (int)n : 3;
    int64_t ids[3];
    float d[3];
    if (q) {
        for (int j = 0; j < dim; j++) q[j] = (float)(j % 7) - 3.0f;
        if (es_index_search(ix, 1, q, k, NULL, ids, d) == ES_OK)
            for (int i = 0; i < k; i++) REQUIRE(ids[i] >= -1 && ids[i] < (int64_t)n);
        if (es_index_n_attrs(ix) > 0) {
            int32_t v = 0;
            es_filter f = {0, 1, &v};
            if (es_index_search(ix, 1, q, k, &f, ids, d) == ES_OK)
                for (int i = 0; i < k; i++) REQUIRE(ids[i] >= -1 && ids[i] < (int64_t)n);
        }
    }
    (void)es_index_bytes(ix);
    free(q);
}

static void exercise(const uint8_t *buf, size_t size, unsigned flags) {
    es_file *f = NULL;
    es_err err = {0};
    if (es__file_open_mem(&f, buf, size, flags, &err) != ES_OK) return;
    const char *type = es__file_meta(f, "embstore.type");
    if (type && !strcmp(type, "multi")) {
        es_multi *m = NULL;
        if (es__multi_read(&m, f, &err) == ES_OK) {
            size_t n = es_multi_size(m);
            int dim = es_multi_dim(m);
            REQUIRE(dim >= 1);
            (void)es_multi_bytes(m);
            float *q = dim <= 4096 ? calloc(2 * (size_t)dim, sizeof *q) : NULL;
            if (n > 0 && q) {
                for (int j = 0; j < 2 * dim; j++) q[j] = (float)(j % 5) - 2.0f;
                size_t qoff[2] = {0, 2};
                int k = n < 2 ? 1 : 2;
                int64_t ids[2];
                float sc[2];
                if (es_multi_search(m, 1, qoff, q, k, ids, sc, NULL) == ES_OK)
                    for (int i = 0; i < k; i++) REQUIRE(ids[i] >= -1 && ids[i] < (int64_t)n);
            }
            free(q);
            es_multi_free(m);
        } else {
            REQUIRE(m == NULL && memchr(err.msg, 0, sizeof err.msg));
        }
    } else {
        es_index *ix = NULL;
        if (es__index_read(&ix, f, "index.", &err) == ES_OK) {
            search_index(ix);
            es_index_free(ix);
        } else {
            REQUIRE(ix == NULL && memchr(err.msg, 0, sizeof err.msg));
        }
    }
    es__file_close(f);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    /* The reader wants a 64-byte aligned image, as a mapping would be. */
    uint8_t *buf = aligned_alloc(64, (size + 63) & ~(size_t)63);
    if (!buf) return 0;
    memcpy(buf, data, size);
    exercise(buf, size, 0);
    if (es__file_fix_checksum(buf, size) == ES_OK) exercise(buf, size, ES_FILE_NO_VERIFY);
    free(buf);
    return 0;
}
