/*
 * fuzz_file.c — libFuzzer target for the container file reader
 * (es__file_open_mem, src/format/file.c) on arbitrary bytes.
 *
 * Each input is opened twice: as given (almost every mutation dies at the
 * header checksum, which is the point of a checksum), and once more with the
 * header checksum recomputed, so that mutations of the metadata and tensor
 * table reach the field checks behind it.  The second open skips tensor
 * checksums and verifies them one by one afterwards, to cover the lazy path.
 *
 * Whatever opens must keep the reader's promises; a broken one aborts:
 * every string NUL-terminated, every tensor view inside the input and its
 * size consistent with its dtype and shape, its reported offset matching
 * the view (page-aligned for a large tensor of a version-2 file), name
 * lookups finding their entries.  Built and run by fuzz/run.sh; seeds in fuzz/corpus/file/.
 */
#include "format/file.h"

#include <stdlib.h>

#define REQUIRE(c)                                                  \
    do {                                                            \
        if (!(c)) {                                                 \
            fprintf(stderr, "fuzz_file: broken promise: %s\n", #c); \
            abort();                                                \
        }                                                           \
    } while (0)

static volatile uint8_t sink;

static void exercise(const uint8_t *buf, size_t size, unsigned flags) {
    es_err err = {0};
    es_file *f = NULL;
    int rc = es__file_open_mem(&f, buf, size, flags, &err);
    if (rc != ES_OK) {
        REQUIRE(rc < 0 && f == NULL);
        REQUIRE(memchr(err.msg, 0, sizeof err.msg) != NULL && strncmp(err.msg, "(memory)", 8) == 0);
        return;
    }
    REQUIRE(es__file_size(f) == size);
    REQUIRE(es__file_version(f) >= 1 && es__file_version(f) <= ES_FILE_VERSION);
    int nm = es__file_n_meta(f);
    REQUIRE(nm >= 0);
    for (int i = 0; i < nm; i++) {
        const char *k, *v;
        es__file_meta_at(f, i, &k, &v);
        REQUIRE(k && v && k[0] != 0);
        REQUIRE((const uint8_t *)k >= buf && (const uint8_t *)k + strlen(k) < buf + size);
        REQUIRE((const uint8_t *)v >= buf && (const uint8_t *)v + strlen(v) < buf + size);
        REQUIRE(es__file_meta(f, k) == v); /* keys are unique */
    }
    int nt = es__file_n_tensors(f);
    REQUIRE(nt >= 0);
    for (int i = 0; i < nt; i++) {
        const es_tensor_ref *t = es__file_tensor_at(f, i);
        REQUIRE(t && memchr(t->name, 0, ES_TENSOR_NAME_MAX) && t->name[0]);
        REQUIRE(es__file_tensor(f, t->name) == t);
        REQUIRE(t->ndim >= 0 && t->ndim <= ES_TENSOR_MAX_DIMS);
        uint64_t count = 1;
        for (int d = 0; d < t->ndim; d++) count *= t->shape[d]; /* cannot overflow: checked on open */
        REQUIRE(es__dtype_bytes(t->dtype, count) == t->nbytes);
        const uint8_t *p = t->data;
        REQUIRE((uintptr_t)p % ES_ALIGN == 0);
        REQUIRE(p >= buf && t->nbytes <= size && (size_t)(p - buf) <= size - t->nbytes);
        REQUIRE(es__file_tensor_offset(f, i) == (uint64_t)(p - buf));
        /* version 2: large tensors page-aligned in the file */
        if (es__file_version(f) >= 2 && t->nbytes >= ES_FILE_PAGE_TENSOR_MIN) REQUIRE((p - buf) % ES_FILE_PAGE_ALIGN == 0);
        uint8_t x = 0;
        for (size_t j = 0; j < t->nbytes; j++) x ^= p[j];
        sink = x;
        rc = es__file_verify_tensor(f, i, &err);
        REQUIRE(rc == ES_OK || (rc == ES_ECHECKSUM && (flags & ES_FILE_NO_VERIFY)));
    }
    REQUIRE(es__file_tensor_at(f, nt) == NULL);
    REQUIRE(es__file_tensor_offset(f, nt) == UINT64_MAX);
    REQUIRE(es__file_fd(f) == -1); /* a memory image has no descriptor */
    es__file_close(f);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    /* es__file_open_mem wants 64-byte alignment, like a mapping gives. */
    uint8_t *buf = aligned_alloc(ES_ALIGN, (size + ES_ALIGN) & ~(size_t)(ES_ALIGN - 1));
    if (!buf) return 0;
    memcpy(buf, data, size);
    exercise(buf, size, 0);
    if (es__file_fix_checksum(buf, size) == ES_OK) exercise(buf, size, ES_FILE_NO_VERIFY);
    free(buf);
    return 0;
}
