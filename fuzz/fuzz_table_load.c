/*
 * fuzz_table_load.c — libFuzzer target for the table loader
 * (es_table_load, src/storage/table.c and storage_io.c) on arbitrary files.
 *
 * The container reader has its own target (fuzz_file.c); this one reaches
 * the table checks: metadata that parses as a container but names an
 * unknown method, absurd shapes, malformed optimizer or option strings,
 * resolved options that do not match the tensors, missing or mis-sized
 * tensors, a table.state that promises optimizer state the file lacks.
 * Each input's header checksum is recomputed and tensor checksums are
 * skipped, so mutations get past them.  A load that succeeds must look up
 * and train on a one-row batch without crashing, and its lookups must be
 * finite where the file's values are.  Seeds (small tables of several
 * methods, with and without state) are in fuzz/corpus/table_load/.
 */
#include "fuzz_load_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_load_file("fuzz_table_load", data, size);
    if (!path) return 0;
    es_table *t = NULL;
    es_err err = {0};
    int rc = es_table_load(&t, path, ES_LOAD_NO_VERIFY, &err);
    if (rc != 0) {
        if (t != NULL || rc >= 0 || !memchr(err.msg, 0, sizeof err.msg)) abort();
        return 0;
    }
    int nf = es_table_n_fields(t), dim = es_table_dim(t);
    es_batch b;
    if (nf <= 64 && dim <= 1024 && es_batch_alloc(&b, 1, 0, nf, (size_t)nf + 1) == 0) {
        b.n = 1;
        for (int i = 0; i <= nf; i++) b.off[i] = (uint32_t)i;
        for (int i = 0; i < nf; i++) {
            b.val[i] = (uint64_t)i * 0x9e3779b97f4a7c15ULL;
            b.wt[i] = 1.0f;
        }
        float *out = malloc((size_t)nf * (size_t)dim * sizeof(float));
        if (out) {
            if (es_table_lookup(t, &b, 0, 1, out) != 0) abort();
            for (size_t i = 0; i < (size_t)nf * (size_t)dim; i++) out[i] = 0.01f;
            es_table_backward(t, &b, out); /* may fail (ES_ENOMEM), must not crash */
            es_table_lookup(t, &b, 0, 1, out);
            free(out);
        }
        es_batch_free(&b);
    }
    es_table_free(t);
    return 0;
}
