/*
 * fuzz_model_load.c — libFuzzer target for the model loader
 * (es_model_load, src/train/model_io.c) on arbitrary files.
 *
 * The container reader has its own target (fuzz_file.c); this one goes a
 * level up: metadata that parses as a container but describes an
 * impossible model (unknown kinds, absurd dimensions, layer lists,
 * storage options that do not match the tensors, missing or mis-sized
 * tensors).  Each input's header checksum is recomputed and the model is
 * loaded without tensor checksums, so mutations reach the model checks
 * instead of stopping at the checksum.  A load that succeeds must predict
 * on a one-row batch without crashing.  Seeds (small real models of every
 * kind) are in fuzz/corpus/model_load/; fuzz/run.sh builds and runs this.
 */
#include "fuzz_load_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_load_file("fuzz_model_load", data, size);
    if (!path) return 0;
    es_model *m = NULL;
    es_err err = {0};
    int rc = es_model_load(&m, path, ES_LOAD_NO_VERIFY, &err);
    if (rc != 0) {
        if (m != NULL || rc >= 0 || !memchr(err.msg, 0, sizeof err.msg)) abort();
    } else {
        es_batch b;
        int nf = es_model_n_fields(m), nd = es_model_n_dense(m);
        if (nf <= 64 && nd <= 64 && es_batch_alloc(&b, 1, nd, nf, (size_t)nf + 1) == 0) {
            b.n = 1;
            for (int i = 0; i <= nf; i++) b.off[i] = (uint32_t)i;
            for (int i = 0; i < nf; i++) {
                b.val[i] = (uint64_t)i * 0x9e3779b97f4a7c15ULL;
                b.wt[i] = 1.0f;
            }
            for (int i = 0; i < nd; i++) b.dense[i] = 0.5f;
            float p = 0;
            if (es_model_predict_batch(m, &b, &p) == 0 && !(p >= 0 && p <= 1) && p == p) abort();
            es_batch_free(&b);
        }
        es_model_free(m);
    }
    return 0;
}
