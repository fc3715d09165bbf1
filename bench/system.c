/*
 * system.c — machine limits and embstore's kernels measured in the same
 * run, so speed figures are ratios against this machine, not absolute
 * claims:
 *   sgemm     peak single-precision GEMM rate (OpenBLAS, large square)
 *   mlp       DLRM-reference dense part (bottom 512-256-64-16, top
 *             512-256-1, dim 16, 26 fields) forward+backward+Adam step:
 *             achieved GFLOP/s and its fraction of the sgemm peak
 *   gather    random 64-byte reads per second over a 1 GiB array (the
 *             random-read limit) against embedding lookups per second of
 *             a 1 GiB `hash` table (dim 16 = 64-byte rows), uniform keys
 *   parse     Criteo TSV parse MB/s against a plain line-count pass over
 *             the same file (both from the page cache)
 * Usage: build/bench_system [--threads T] [--tsv FILE] [--gib G]
 * Prints a table and one JSON line.
 */
#include "core/core.h"
#include "core/simd.h"
#include "model/net.h"
#include "storage/storage.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>

#ifdef _OPENMP
#include <omp.h>
#endif

static double best_of(double a, double b) { return a > b ? a : b; }

static double bench_sgemm(int n, int reps) {
    size_t nn = (size_t)n * (size_t)n;
    float *a = es__alloc_aligned(nn * 4), *b = es__alloc_aligned(nn * 4), *c = es__alloc_aligned(nn * 4);
    es_rng r;
    es__rng_seed(&r, 1);
    es__rng_fill_uniform(&r, a, nn, 1);
    es__rng_fill_uniform(&r, b, nn, 1);
    double best = 0;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1, a, n, b, n, 0, c, n); /* warm up */
    for (int i = 0; i < reps; i++) {
        double t = es__now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1, a, n, b, n, 0, c, n);
        best = best_of(best, 2.0 * n * (double)n * n / (es__now() - t) / 1e9);
    }
    es__free_aligned(a);
    es__free_aligned(b);
    es__free_aligned(c);
    return best;
}

static double bench_mlp(int batch, int reps, double *rows_per_s) {
    es_net_params p = es__net_params_default(ES_NET_DLRM, 13, 26, 16);
    int bottom[] = {512, 256, 64, 16}, top[] = {512, 256};
    memcpy(p.bottom, bottom, sizeof bottom);
    p.n_bottom = 4;
    memcpy(p.top, top, sizeof top);
    p.n_top = 2;
    p.max_batch = batch;
    es_net *net = NULL;
    es_err err = {0};
    if (es__net_create(&net, &p, &err) != 0) {
        fprintf(stderr, "net: %s\n", err.msg);
        return 0;
    }
    size_t ne = (size_t)batch * 26 * 16;
    float *emb = es__alloc_aligned(ne * 4), *demb = es__alloc_aligned(ne * 4), *dense = es__alloc_aligned((size_t)batch * 13 * 4);
    float *logit = es__alloc_aligned((size_t)batch * 4), *dl = es__alloc_aligned((size_t)batch * 4);
    es_rng r;
    es__rng_seed(&r, 2);
    es__rng_fill_uniform(&r, emb, ne, 0.05f);
    es__rng_fill_uniform(&r, dense, (size_t)batch * 13, 1);
    for (int i = 0; i < batch; i++) dl[i] = 0.001f;
    double best = 0;
    for (int i = 0; i < reps + 1; i++) {
        double t = es__now();
        es__net_forward(net, batch, emb, dense, logit);
        es__net_backward(net, batch, emb, dense, dl, demb);
        es__net_step(net);
        double dt = es__now() - t;
        if (i > 0) best = best_of(best, batch / dt);
    }
    *rows_per_s = best;
    /* forward multiply-adds per row; backward does about twice the forward work */
    double flops = 2.0 * es__net_flops_per_row(net) * 3.0 * best / 1e9;
    es__net_free(net);
    es__free_aligned(emb);
    es__free_aligned(demb);
    es__free_aligned(dense);
    es__free_aligned(logit);
    es__free_aligned(dl);
    return flops;
}

/* Random 64-byte line reads per second over `bytes` of memory. */
static double bench_random_read(size_t bytes, uint64_t n_reads) {
    size_t lines = bytes / 64;
    float *a = es__alloc_aligned(bytes);
    if (!a) return 0;
    for (size_t i = 0; i < bytes / 4; i += 1024) a[i] = 1.0f; /* touch every page */
    double t = es__now();
    double sum = 0;
#pragma omp parallel reduction(+ : sum)
    {
        int nt = 1, id = 0;
#ifdef _OPENMP
        nt = omp_get_num_threads();
        id = omp_get_thread_num();
#endif
        uint64_t h = (uint64_t)id * 0x9e3779b97f4a7c15ULL + 1;
        float acc = 0;
        for (uint64_t i = (uint64_t)id; i < n_reads; i += (uint64_t)nt) {
            h = es__mix64(h);
            const float *line = a + es__range(h, lines) * 16;
            acc += line[0] + line[15];
        }
        sum += acc;
    }
    double dt = es__now() - t;
    es__free_aligned(a);
    if (sum == 12345.678) printf("(unlikely)\n");
    return (double)n_reads / dt;
}

/* Embedding lookups per second of a `hash` table of `bytes`, dim 16. */
static double bench_gather(size_t bytes, int batches, int batch) {
    const int F = 26, D = 16;
    es_storage_params sp = es__storage_params_default();
    sp.method = "hash";
    sp.n_fields = F;
    sp.dim = D;
    sp.max_batch = batch;
    sp.budget = (double)bytes;
    es_storage *st = NULL;
    es_err err = {0};
    if (es__storage_create(&st, &sp, NULL, &err) != 0) {
        fprintf(stderr, "storage: %s\n", err.msg);
        return 0;
    }
    es_batch b;
    es_batch_alloc(&b, batch, 0, F, (size_t)batch * F);
    float *out = es__alloc_aligned((size_t)batch * F * D * 4);
    uint64_t h = 7;
    double t_total = 0;
    uint64_t lookups = 0;
    for (int k = 0; k < batches; k++) {
        b.n = batch;
        for (int i = 0; i <= batch * F; i++) b.off[i] = (uint32_t)i;
        for (int i = 0; i < batch * F; i++) {
            h = es__mix64(h);
            b.val[i] = h;
            b.wt[i] = 1.0f;
        }
        double t = es__now();
        int nt = es__threads_get();
#pragma omp parallel for schedule(static) num_threads(nt)
        for (int th = 0; th < nt; th++) {
            int a0 = batch * th / nt, a1 = batch * (th + 1) / nt;
            st->ops->lookup(st, &b, a0, a1, out + (size_t)a0 * F * D);
        }
        t_total += es__now() - t;
        lookups += (uint64_t)batch * F;
    }
    es_batch_free(&b);
    es__free_aligned(out);
    es__storage_free(st);
    return (double)lookups / t_total;
}

static double bench_linecount(const char *path, double *mb) {
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    static char buf[1 << 20];
    size_t n, total = 0, lines = 0;
    double t = es__now();
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) {
        total += n;
        const char *p = buf, *e = buf + n;
        while ((p = memchr(p, '\n', (size_t)(e - p)))) {
            lines++;
            p++;
        }
    }
    double dt = es__now() - t;
    fclose(f);
    *mb = (double)total / 1e6;
    return lines ? *mb / dt : 0;
}

static double bench_parse(const char *path, double mb, uint64_t *rows, int threads) {
    es_reader *r = NULL;
    es_err err = {0};
    es_reader_params p = es_reader_params_default();
    p.format = ES_FMT_CRITEO;
    p.threads = threads;
    if (es_reader_open(&r, path, &p, &err) != 0) {
        fprintf(stderr, "parse: %s\n", err.msg);
        return 0;
    }
    es_batch b;
    es_batch_alloc(&b, 1024, es_reader_n_dense(r), es_reader_n_fields(r), 1024 * 27);
    double t = es__now();
    int n;
    *rows = 0;
    while ((n = es_reader_next(r, &b)) > 0) *rows += (uint64_t)n;
    double dt = es__now() - t;
    if (n < 0) fprintf(stderr, "parse: %s\n", es_reader_errmsg(r));
    es_batch_free(&b);
    es_reader_free(r);
    return mb / dt;
}

int main(int argc, char **argv) {
    int threads = 2;
    const char *tsv = NULL;
    double gib = 1.0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--tsv") && i + 1 < argc) tsv = argv[++i];
        else if (!strcmp(argv[i], "--gib") && i + 1 < argc) gib = atof(argv[++i]);
    }
    es__threads_set(threads);
    size_t bytes = (size_t)(gib * 1073741824.0);
    double peak = bench_sgemm(1536, 5);
    double mlp_rows = 0, mlp = bench_mlp(4096, 5, &mlp_rows);
    double rr = bench_random_read(bytes, 50000000);
    double gather = bench_gather(bytes, 200, 4096);
    double lc_mb = 0, lc = 0, parse = 0, parse_t = 0;
    uint64_t rows = 0;
    if (tsv) {
        lc = bench_linecount(tsv, &lc_mb);     /* warms the page cache too */
        lc = best_of(lc, bench_linecount(tsv, &lc_mb));
        parse = bench_parse(tsv, lc_mb, &rows, 1);
        parse_t = bench_parse(tsv, lc_mb, &rows, threads);
    }
    printf("threads %d, simd %s\n", threads, es__simd_level());
    printf("%-44s %12.1f GFLOP/s\n", "sgemm peak (1536^3, OpenBLAS)", peak);
    printf("%-44s %12.1f GFLOP/s  (%.0f%% of sgemm peak, %.0f rows/s)\n", "DLRM-reference MLPs fwd+bwd+step (batch 4096)", mlp,
           100 * mlp / peak, mlp_rows);
    printf("%-44s %12.3g reads/s\n", "random 64-byte reads over the table size", rr);
    printf("%-44s %12.3g lookups/s (%.0f%% of the random-read limit)\n", "hash table lookups, dim 16, uniform keys", gather,
           100 * gather / rr);
    if (tsv) {
        printf("%-44s %12.1f MB/s\n", "line-count pass (fread + memchr)", lc);
        printf("%-44s %12.1f MB/s  (%.0f%% of the line-count pass, %llu rows, %.0f MB)\n", "Criteo TSV parse, 1 thread", parse,
               100 * parse / lc, (unsigned long long)rows, lc_mb);
        printf("%-44s %12.1f MB/s  (%.0f%% of the line-count pass)\n", "Criteo TSV parse, reader threads = threads", parse_t,
               100 * parse_t / lc);
    }
    printf("{\"threads\":%d,\"sgemm_gflops\":%.2f,\"mlp_gflops\":%.2f,\"mlp_frac_of_peak\":%.3f,\"mlp_rows_per_s\":%.0f,"
           "\"random_reads_per_s\":%.4g,\"gathers_per_s\":%.4g,\"gather_frac_of_limit\":%.3f,\"table_bytes\":%zu,"
           "\"linecount_mb_s\":%.1f,\"parse_mb_s\":%.1f,\"parse_frac_of_linecount\":%.3f,\"parse_threads_mb_s\":%.1f}\n",
           threads, peak, mlp, mlp / peak, mlp_rows, rr, gather, gather / rr, bytes, lc, parse, lc > 0 ? parse / lc : 0, parse_t);
    return 0;
}
