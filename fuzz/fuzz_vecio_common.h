/*
 * fuzz_vecio_common.h — shared body of the vector-reader fuzz targets
 * (fuzz_vecio_*.c): parse the input with es__vecs_parse and check the
 * reader's promises on success; a broken promise aborts.
 *
 * Byte 0 of every input holds options: bit 0 groups text rows into sets by
 * label, bits 1-2 pick a fixed set size (0, 1, 3, 7), bit 3 limits the rows
 * read to 5, bits 4-7 give the expected dimension (0 = any; raw files use
 * it as their dimension, 1..16).
 */
#ifndef FUZZ_VECIO_COMMON_H
#define FUZZ_VECIO_COMMON_H

#include "index/index.h"

#include <math.h>
#include <stdlib.h>

#define REQUIRE(c)                                                   \
    do {                                                             \
        if (!(c)) {                                                  \
            fprintf(stderr, "fuzz_vecio: broken promise: %s\n", #c); \
            abort();                                                 \
        }                                                            \
    } while (0)

static inline void fuzz_vecio_run(const uint8_t *data, size_t size, es_vec_format fmt) {
    if (size < 1) return;
    int opt = data[0];
    es_vec_read_params p = es_vec_read_params_default();
    static const int set_sizes[4] = {0, 1, 3, 7};
    p.format = fmt;
    p.sets_by_label = (opt & 1) && fmt == ES_VEC_TEXT;
    p.set_size = p.sets_by_label ? 0 : set_sizes[(opt >> 1) & 3];
    p.max_rows = (opt & 8) ? 5 : 0;
    p.dim = opt >> 4;
    if (fmt == ES_VEC_RAW_F32 && p.dim == 0) p.dim = 16;
    es_vecs v;
    es_err err = {0};
    int rc = es__vecs_parse(&v, data + 1, size - 1, "fuzz", &p, &err);
    if (rc != ES_OK) {
        REQUIRE(rc < 0);
        REQUIRE(memchr(err.msg, 0, sizeof err.msg) != NULL && strncmp(err.msg, "fuzz", 4) == 0);
        REQUIRE(v.x == NULL && v.i == NULL && v.labels == NULL && v.set_off == NULL);
        return;
    }
    REQUIRE(v.dim >= 1 && v.dim <= ES_IX_MAX_DIM);
    REQUIRE(p.dim == 0 || v.dim == p.dim);
    REQUIRE(!p.max_rows || v.n <= p.max_rows);
    REQUIRE((v.x != NULL) != (v.i != NULL) || v.n == 0);
    /* every value was in the input: at least 1 byte per value */
    REQUIRE(v.n * (size_t)v.dim <= size);
    if (v.x)
        for (size_t i = 0; i < v.n * (size_t)v.dim; i++) REQUIRE(isfinite(v.x[i]));
    if (v.labels)
        for (size_t i = 0; i < v.n; i++) REQUIRE(v.labels[i] && strlen(v.labels[i]) < size);
    if (p.set_size || p.sets_by_label) {
        REQUIRE(v.set_off && v.set_off[0] == 0 && v.set_off[v.n_sets] == v.n);
        for (size_t s = 0; s < v.n_sets; s++) REQUIRE(v.set_off[s] < v.set_off[s + 1]);
    } else {
        REQUIRE(v.set_off == NULL && v.n_sets == 0);
    }
    es_vecs_free(&v);
}

#endif
