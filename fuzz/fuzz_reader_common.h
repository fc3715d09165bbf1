/*
 * fuzz_reader_common.h — shared body of the reader fuzz targets
 * (fuzz_reader_criteo.c, fuzz_reader_csv.c, fuzz_reader_libsvm.c).
 *
 * Input layout: byte 0 selects options (skip_bad, max_line, batch size and
 * format-specific bits chosen by each target); the rest is the file, read
 * from memory (es__reader_open_mem), so gzip input is fuzzed too when the
 * bytes start with the gzip magic.  The harness drains the reader, checks
 * the batch invariants every consumer relies on, rewinds and checks that
 * the second pass returns the same rows and the same final status,
 * (Criteo, libsvm, libffm) that a reader reset to the same memory
 * (es__reader_reset_mem) reads them a third time, and that a reader at the
 * other thread count (1 or 2: the parallel paths) reads the same rows with
 * the same status, message and bad-line statistics.
 */
#ifndef ES_FUZZ_READER_COMMON_H
#define ES_FUZZ_READER_COMMON_H

#include "data/reader_impl.h"
#include "data/schema.h"

#include <math.h>

#define FUZZ_CHECK(c)                \
    do {                             \
        if (!(c)) __builtin_trap();  \
    } while (0)

/* Read everything; returns the final status (0 at a clean end) and adds the
 * rows and a checksum of labels/keys to *rows / *sum. */
static int fuzz_drain(es_reader *r, es_batch *b, uint64_t *rows, uint64_t *sum) {
    const size_t F = (size_t)b->n_fields, D = (size_t)b->n_dense;
    for (int guard = 0; guard < 1000000; guard++) {
        int rc = es_reader_next(r, b);
        if (rc < 0) FUZZ_CHECK(es_reader_errmsg(r)[0] != 0); /* every failure says why */
        /* on an error b->n rows (those before the bad line) are still valid */
        FUZZ_CHECK(b->n >= 0 && b->n <= b->cap && (rc < 0 || rc == b->n));
        if (b->n == 0) return rc;
        FUZZ_CHECK(b->off[0] == 0);
        for (size_t i = 0; i < (size_t)b->n * F; i++) FUZZ_CHECK(b->off[i] <= b->off[i + 1]);
        FUZZ_CHECK(b->off[(size_t)b->n * F] <= b->val_cap);
        for (int i = 0; i < b->n; i++) {
            FUZZ_CHECK(b->label[i] == 0.0f || b->label[i] == 1.0f);
            *sum = *sum * 31 + (uint64_t)b->label[i];
        }
        for (size_t i = 0; i < (size_t)b->n * D; i++) FUZZ_CHECK(isfinite(b->dense[i]));
        for (uint32_t i = 0; i < b->off[(size_t)b->n * F]; i++) {
            FUZZ_CHECK(isfinite(b->wt[i]));
            *sum = *sum * 31 + b->val[i];
        }
        *rows += (uint64_t)b->n;
        if (rc < 0) return rc;
    }
    FUZZ_CHECK(0); /* a reader that never ends */
    return 0;
}

/* Set by a target before fuzz_reader_run: renumber the fields in the order
 * of the column spec after open (es__reader_spec_order), as eval/predict do
 * for a caller's spec, so the row parser's out-of-column-order path runs. */
static int fuzz_spec_order;

static void fuzz_reader_run(const uint8_t *data, size_t size, const char *name, es_reader_params p, int opt) {
    p.skip_bad = opt & 1;
    p.max_line = (opt & 2) ? 48 : 4096; /* small limits reach the over-long-line path */
    es_reader *r = NULL;
    es_err err = {0};
    int rc = es__reader_open_mem(&r, data, size, name, &p, &err);
    if (rc) {
        FUZZ_CHECK(r == NULL && err.msg[0] != 0);
        return;
    }
    if (fuzz_spec_order && es__reader_spec_order(r) != 0) {
        es_reader_free(r);
        return;
    }
    es_batch b;
    /* 1 value slot to start with, so the growth path runs */
    if (es_batch_alloc(&b, 1 + ((opt >> 2) & 7), es_reader_n_dense(r), es_reader_n_fields(r), 1) != 0) {
        es_reader_free(r);
        return;
    }
    uint64_t rows1 = 0, sum1 = 0, rows2 = 0, sum2 = 0;
    int rc1 = fuzz_drain(r, &b, &rows1, &sum1);
    FUZZ_CHECK(es_reader_rows(r) == rows1);
    FUZZ_CHECK(es_reader_bad_lines(r) <= es_reader_lines(r));
    static char msg1[sizeof err.msg], report1[ES__REPORT_MAX * sizeof err.msg];
    snprintf(msg1, sizeof msg1, "%s", rc1 < 0 ? es_reader_errmsg(r) : "");
    snprintf(report1, sizeof report1, "%s", es_reader_bad_report(r));
    const uint64_t bad1 = es_reader_bad_lines(r), lines1 = es_reader_lines(r);
    if (es_reader_rewind(r) == 0) {
        int rc2 = fuzz_drain(r, &b, &rows2, &sum2);
        FUZZ_CHECK(rc1 == rc2 && rows1 == rows2 && sum1 == sum2);
    }
    /* The reuse of a reader for new memory (es_model_predict_mem's): the
     * same bytes again must open as they did and read the same rows. */
    if (p.format != ES_FMT_CSV && !(p.format == ES_FMT_LIBFFM && p.n_fields_hint <= 0)) {
        uint64_t rows3 = 0, sum3 = 0;
        FUZZ_CHECK(es__reader_reset_mem(r, data, size, &err) == 0);
        int rc3 = fuzz_drain(r, &b, &rows3, &sum3);
        FUZZ_CHECK(rc1 == rc3 && rows1 == rows3 && sum1 == sum3);
    }
    /* The other thread count: parsing must not depend on it. */
    es_reader_params q = p;
    q.threads = p.threads > 1 ? 1 : 2;
    es_reader *r2 = NULL;
    FUZZ_CHECK(es__reader_open_mem(&r2, data, size, name, &q, &err) == 0);
    if (!fuzz_spec_order || es__reader_spec_order(r2) == 0) {
        uint64_t rows4 = 0, sum4 = 0;
        int rc4 = fuzz_drain(r2, &b, &rows4, &sum4);
        FUZZ_CHECK(rc1 == rc4 && rows1 == rows4 && sum1 == sum4);
        FUZZ_CHECK(strcmp(msg1, rc4 < 0 ? es_reader_errmsg(r2) : "") == 0);
        FUZZ_CHECK(bad1 == es_reader_bad_lines(r2) && lines1 == es_reader_lines(r2));
        FUZZ_CHECK(strcmp(report1, es_reader_bad_report(r2)) == 0);
    }
    es_reader_free(r2);
    es_batch_free(&b);
    es_reader_free(r);
}

#endif
