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
 *             the same file (both from the page cache), and the same rows
 *             as libsvm, libffm and CSV (with a multi-value column) files,
 *             each parsed at 1 thread and at T threads
 * Usage: build/bench_system [--threads T] [--tsv FILE] [--gib G] [--parse-only]
 * (--parse-only: only the parse figures, and the 1-minute load average)
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

/* The rows of a Criteo TSV file in the other text formats, written next to
 * it (FILE.libsvm, FILE.libffm, FILE.csv), so that every parser reads the
 * same synthetic rows:
 *   libsvm  label I<k>:<v> (non-empty counts) <token>:1 (non-empty tokens)
 *   libffm  label <k>:<k>:<v> (fields 0-12) <13+c>:<token>:1 (fields 13-38)
 *   csv     header label,I1..I13,C1..C23,M; M holds C24|C25|C26 (a
 *           multi-value column), empty fields kept
 * Returns 0, or -1 when a file cannot be written. */
#define CSV_SPEC_MAX 512
static int write_formats(const char *tsv, char *spec) {
    char path[3][1024];
    snprintf(path[0], sizeof path[0], "%s.libsvm", tsv);
    snprintf(path[1], sizeof path[1], "%s.libffm", tsv);
    snprintf(path[2], sizeof path[2], "%s.csv", tsv);
    size_t o = (size_t)snprintf(spec, CSV_SPEC_MAX, "label:label");
    for (int k = 1; k <= 13; k++) o += (size_t)snprintf(spec + o, CSV_SPEC_MAX - o, ",I%d:num", k);
    for (int c = 1; c <= 23; c++) o += (size_t)snprintf(spec + o, CSV_SPEC_MAX - o, ",C%d:cat", c);
    snprintf(spec + o, CSV_SPEC_MAX - o, ",M:multi");
    FILE *in = fopen(tsv, "rb"), *out[3];
    if (!in) return -1;
    int rc = 0;
    for (int i = 0; i < 3; i++) out[i] = fopen(path[i], "wb");
    if (!out[0] || !out[1] || !out[2]) rc = -1;
    if (!rc) {
        fputs("label", out[2]);
        for (int k = 1; k <= 13; k++) fprintf(out[2], ",I%d", k);
        for (int c = 1; c <= 23; c++) fprintf(out[2], ",C%d", c);
        fputs(",M\n", out[2]);
    }
    static char line[1 << 16];
    while (!rc && fgets(line, sizeof line, in)) {
        char *col[40];
        int nc = 0;
        char *p = line;
        line[strcspn(line, "\r\n")] = 0;
        for (;;) {
            char *t = strchr(p, '\t');
            if (nc < 40) col[nc++] = p;
            if (!t) break;
            *t = 0;
            p = t + 1;
        }
        if (nc != 40) continue;
        fputs(col[0], out[0]);
        fputs(col[0], out[1]);
        fputs(col[0], out[2]);
        for (int k = 0; k < 13; k++) {
            const char *v = col[1 + k];
            if (*v) {
                fprintf(out[0], " I%d:%s", k + 1, v);
                fprintf(out[1], " %d:%d:%s", k, k, v);
            }
            fprintf(out[2], ",%s", v);
        }
        for (int c = 0; c < 26; c++) {
            const char *v = col[14 + c];
            if (*v) {
                fprintf(out[0], " %s:1", v);
                fprintf(out[1], " %d:%s:1", 13 + c, v);
            }
            fprintf(out[2], c < 23 ? ",%s" : c == 23 ? ",%s" : "|%s", v);
        }
        fputc('\n', out[0]);
        fputc('\n', out[1]);
        fputc('\n', out[2]);
    }
    fclose(in);
    for (int i = 0; i < 3; i++)
        if (out[i] && fclose(out[i]) != 0) rc = -1;
    return rc;
}

static double file_mb(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    fseek(f, 0, SEEK_END);
    double mb = (double)ftell(f) / 1e6;
    fclose(f);
    return mb;
}

/* MB/s of es_reader over a whole file (best of `reps` passes). */
static double bench_parse(const char *path, es_format fmt, const char *columns, double mb, uint64_t *rows, int threads,
                          int reps) {
    double best = 0;
    for (int rep = 0; rep < reps; rep++) {
        es_reader *r = NULL;
        es_err err = {0};
        es_reader_params p = es_reader_params_default();
        p.format = fmt;
        p.columns = columns;
        p.threads = threads;
        if (fmt == ES_FMT_LIBFFM) p.n_fields_hint = 39;
        if (es_reader_open(&r, path, &p, &err) != 0) {
            fprintf(stderr, "parse: %s\n", err.msg);
            return 0;
        }
        es_batch b;
        es_batch_alloc(&b, 1024, es_reader_n_dense(r), es_reader_n_fields(r), 1024 * 40);
        double t = es__now();
        int n;
        *rows = 0;
        while ((n = es_reader_next(r, &b)) > 0) *rows += (uint64_t)n;
        double dt = es__now() - t;
        if (n < 0) fprintf(stderr, "parse: %s\n", es_reader_errmsg(r));
        es_batch_free(&b);
        es_reader_free(r);
        best = best_of(best, mb / dt);
    }
    return best;
}

static double loadavg1(void) {
    double l[1];
    return getloadavg(l, 1) == 1 ? l[0] : -1;
}

int main(int argc, char **argv) {
    int threads = 2, parse_only = 0;
    const char *tsv = NULL;
    double gib = 1.0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--tsv") && i + 1 < argc) tsv = argv[++i];
        else if (!strcmp(argv[i], "--gib") && i + 1 < argc) gib = atof(argv[++i]);
        else if (!strcmp(argv[i], "--parse-only")) parse_only = 1;
    }
    es__threads_set(threads);
    size_t bytes = (size_t)(gib * 1073741824.0);
    double peak = 0, mlp_rows = 0, mlp = 0, rr = 0, gather = 0;
    if (!parse_only) {
        peak = bench_sgemm(1536, 5);
        mlp = bench_mlp(4096, 5, &mlp_rows);
        rr = bench_random_read(bytes, 50000000);
        gather = bench_gather(bytes, 200, 4096);
    }
    double load0 = loadavg1();
    double lc_mb = 0, lc = 0;
    /* [format][0]: 1 thread, [1]: `threads` threads */
    static const char *fname[4] = {"Criteo TSV", "libsvm", "libffm", "CSV (multi-value column)"};
    static const char *fkey[4] = {"tsv", "libsvm", "libffm", "csv"};
    static const es_format fmts[4] = {ES_FMT_CRITEO, ES_FMT_LIBSVM, ES_FMT_LIBFFM, ES_FMT_CSV};
    double mbs[4][2] = {{0}}, fmb[4] = {0};
    uint64_t frows[4] = {0};
    int have[4] = {0};
    char spec[CSV_SPEC_MAX];
    if (tsv) {
        lc = bench_linecount(tsv, &lc_mb);     /* warms the page cache too */
        lc = best_of(lc, bench_linecount(tsv, &lc_mb));
        char path[4][1024];
        snprintf(path[0], sizeof path[0], "%s", tsv);
        snprintf(path[1], sizeof path[1], "%s.libsvm", tsv);
        snprintf(path[2], sizeof path[2], "%s.libffm", tsv);
        snprintf(path[3], sizeof path[3], "%s.csv", tsv);
        int other = write_formats(tsv, spec) == 0;
        if (!other) fprintf(stderr, "parse: cannot write the libsvm/libffm/CSV copies next to %s\n", tsv);
        for (int f = 0; f < 4; f++) {
            if (f > 0 && !other) break;
            fmb[f] = f ? file_mb(path[f]) : lc_mb;
            if (f) bench_linecount(path[f], &(double){0}); /* into the page cache */
            mbs[f][0] = bench_parse(path[f], fmts[f], f == 3 ? spec : NULL, fmb[f], &frows[f], 1, 2);
            mbs[f][1] = bench_parse(path[f], fmts[f], f == 3 ? spec : NULL, fmb[f], &frows[f], threads, 2);
            have[f] = 1;
        }
        if (other)
            for (int f = 1; f < 4; f++) remove(path[f]);
    }
    double load1 = loadavg1();
    printf("threads %d, simd %s\n", threads, es__simd_level());
    if (!parse_only) {
        printf("%-44s %12.1f GFLOP/s\n", "sgemm peak (1536^3, OpenBLAS)", peak);
        printf("%-44s %12.1f GFLOP/s  (%.0f%% of sgemm peak, %.0f rows/s)\n", "DLRM-reference MLPs fwd+bwd+step (batch 4096)",
               mlp, 100 * mlp / peak, mlp_rows);
        printf("%-44s %12.3g reads/s\n", "random 64-byte reads over the table size", rr);
        printf("%-44s %12.3g lookups/s (%.0f%% of the random-read limit)\n", "hash table lookups, dim 16, uniform keys", gather,
               100 * gather / rr);
    }
    if (tsv) {
        printf("load average (1 min) %.2f before the parse runs, %.2f after\n", load0, load1);
        printf("%-44s %12.1f MB/s\n", "line-count pass (fread + memchr)", lc);
        printf("%-44s %12.1f MB/s  (%.0f%% of the line-count pass, %llu rows, %.0f MB)\n", "Criteo TSV parse, 1 thread",
               mbs[0][0], 100 * mbs[0][0] / lc, (unsigned long long)frows[0], lc_mb);
        printf("%-44s %12.1f MB/s  (%.0f%% of the line-count pass, %.2fx 1 thread)\n", "Criteo TSV parse, reader threads = threads",
               mbs[0][1], 100 * mbs[0][1] / lc, mbs[0][0] > 0 ? mbs[0][1] / mbs[0][0] : 0);
        for (int f = 1; f < 4; f++) {
            if (!have[f]) continue;
            char label[64];
            snprintf(label, sizeof label, "%s parse, 1 thread", fname[f]);
            printf("%-44s %12.1f MB/s  (%.0f%% of the TSV parser's MB/s, %llu rows, %.0f MB)\n", label, mbs[f][0],
                   100 * mbs[f][0] / mbs[0][0], (unsigned long long)frows[f], fmb[f]);
            snprintf(label, sizeof label, "%s parse, %d threads", fname[f], threads);
            printf("%-44s %12.1f MB/s  (%.0f%% of the TSV parser's, %.2fx 1 thread)\n", label, mbs[f][1],
                   100 * mbs[f][1] / mbs[0][1], mbs[f][0] > 0 ? mbs[f][1] / mbs[f][0] : 0);
        }
    }
    printf("{\"threads\":%d,\"sgemm_gflops\":%.2f,\"mlp_gflops\":%.2f,\"mlp_frac_of_peak\":%.3f,\"mlp_rows_per_s\":%.0f,"
           "\"random_reads_per_s\":%.4g,\"gathers_per_s\":%.4g,\"gather_frac_of_limit\":%.3f,\"table_bytes\":%zu,"
           "\"linecount_mb_s\":%.1f,\"parse_mb_s\":%.1f,\"parse_frac_of_linecount\":%.3f,\"parse_threads_mb_s\":%.1f,"
           "\"loadavg_before\":%.2f,\"loadavg_after\":%.2f",
           threads, peak, mlp, peak > 0 ? mlp / peak : 0, mlp_rows, rr, gather, rr > 0 ? gather / rr : 0, bytes, lc, mbs[0][0],
           lc > 0 ? mbs[0][0] / lc : 0, mbs[0][1], load0, load1);
    for (int f = 1; f < 4; f++)
        if (have[f])
            printf(",\"%s_mb_s\":%.1f,\"%s_threads_mb_s\":%.1f,\"%s_frac_of_tsv\":%.3f", fkey[f], mbs[f][0], fkey[f], mbs[f][1],
                   fkey[f], mbs[0][0] > 0 ? mbs[f][0] / mbs[0][0] : 0);
    printf("}\n");
    return 0;
}
