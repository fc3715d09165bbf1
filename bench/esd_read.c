/*
 * esd_read.c — how much cheaper a pass over a binary dataset cache (.esd)
 * is than parsing the text it was made from: converts DATA once, then times
 * full passes (es_reader_next until the end, batches of --batch rows) over
 * the text and over the cache, alternating, and prints rows/s and MB/s of
 * the text for each, plus the cache's open time (the checksum pass).
 * A client of embstore.h only.
 *
 * Build: cc -O2 -Iinclude -o build/esd_read bench/esd_read.c -Lbuild -lembstore -Wl,-rpath,$PWD/build
 * Usage: build/esd_read DATA [--passes N] [--batch B] [--cache PATH]
 * Figures: docs/performance.md ("Binary dataset cache").
 */
#include "embstore.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* One pass; returns rows, adds a checksum of labels and keys so that the
 * work cannot be skipped. */
static long long pass(es_reader *r, es_batch *b, unsigned long long *sum) {
    long long rows = 0;
    int n;
    while ((n = es_reader_next(r, b)) > 0) {
        rows += n;
        size_t nv = b->off[(size_t)n * (size_t)b->n_fields];
        *sum += (unsigned long long)b->label[n - 1] + (nv ? b->val[nv - 1] : 0);
    }
    if (n < 0) {
        fprintf(stderr, "read error: %s\n", es_reader_errmsg(r));
        exit(1);
    }
    return rows;
}

int main(int argc, char **argv) {
    const char *data = NULL, *cache = NULL;
    int passes = 3, batch = 4096;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--passes") && i + 1 < argc) passes = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--batch") && i + 1 < argc) batch = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--cache") && i + 1 < argc) cache = argv[++i];
        else data = argv[i];
    }
    if (!data) {
        fprintf(stderr, "usage: esd_read DATA [--passes N] [--batch B] [--cache PATH]\n");
        return 2;
    }
    char buf[4096];
    if (!cache) {
        snprintf(buf, sizeof buf, "%s.esd", data);
        cache = buf;
    }
    es_reader_params p = es_reader_params_default();
    es_dataset_info info;
    es_err err = {0};
    double t0 = now();
    if (es_dataset_convert(data, &p, cache, &info, &err) != 0) {
        fprintf(stderr, "convert: %s\n", err.msg);
        return 1;
    }
    double tconv = now() - t0;
    struct stat st;
    stat(data, &st);
    double mb = (double)st.st_size / 1e6;
    printf("data %s: %.1f MB, %llu rows; cache %.1f MB, convert %.2f s\n", data, mb, (unsigned long long)info.rows,
           (double)info.bytes / 1e6, tconv);
    es_reader *rt = NULL, *rc = NULL;
    t0 = now();
    if (es_reader_open(&rc, cache, &p, &err) != 0) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    double topen = now() - t0;
    if (es_reader_open(&rt, data, &p, &err) != 0) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    es_batch b;
    if (es_batch_alloc(&b, batch, es_reader_n_dense(rt), es_reader_n_fields(rt), 0) != 0) return 1;
    unsigned long long sum = 0;
    double best_t = 1e30, best_c = 1e30;
    for (int k = 0; k < passes; k++) {
        t0 = now();
        long long n1 = pass(rt, &b, &sum);
        double tt = now() - t0;
        t0 = now();
        long long n2 = pass(rc, &b, &sum);
        double tc = now() - t0;
        if (n1 != n2) {
            fprintf(stderr, "rows differ: %lld vs %lld\n", n1, n2);
            return 1;
        }
        printf("pass %d: text %.3f s (%.2f Mrows/s, %.0f MB/s)   cache %.3f s (%.2f Mrows/s, %.0f text-MB/s)   cache/text %.1f%%\n", k + 1,
               tt, (double)n1 / tt / 1e6, mb / tt, tc, (double)n2 / tc / 1e6, mb / tc, 100.0 * tc / tt);
        if (tt < best_t) best_t = tt;
        if (tc < best_c) best_c = tc;
        es_reader_rewind(rt);
        es_reader_rewind(rc);
    }
    printf("best: text %.3f s, cache %.3f s (%.1f%% of the text); cache open (checksums) %.3f s; checksum %llx\n", best_t, best_c,
           100.0 * best_c / best_t, topen, sum);
    es_batch_free(&b);
    es_reader_free(rt);
    es_reader_free(rc);
    return 0;
}
