/*
 * test_bench_storage.c — `embstore bench-storage`: the Pareto set marked in
 * the plot and in results.json is recomputed here from cells.csv; the sweep
 * resumes without recomputing finished cells.
 */
#include "test.h"

#include <unistd.h>

typedef struct {
    char method[32], share[16], budget[24];
    double bytes, auc;
    int n;
} point;

/* Aggregate cells.csv by (method, share, budget): mean bytes and AUC. */
static int read_points(const char *csv, point *pt, int max) {
    FILE *f = fopen(csv, "r");
    if (!f) return -1;
    char line[1024];
    int n = 0;
    if (!fgets(line, sizeof line, f)) {
        fclose(f);
        return -1;
    }
    while (fgets(line, sizeof line, f)) {
        char ds[128], model[32], method[32], share[16], budget[24], status[160];
        double frac, bytes, full, auc, ll, tr, pr;
        int ep, seed;
        if (sscanf(line, "%127[^,],%31[^,],%31[^,],%15[^,],%23[^,],%lf,%lf,%lf,%lf,%lf,%lf,%lf,%d,%d,%159[^\n]", ds, model, method,
                   share, budget, &frac, &bytes, &full, &auc, &ll, &tr, &pr, &ep, &seed, status) != 15)
            continue;
        if (strcmp(status, "ok") != 0) continue;
        int k;
        for (k = 0; k < n; k++)
            if (!strcmp(pt[k].method, method) && !strcmp(pt[k].share, share) && !strcmp(pt[k].budget, budget)) break;
        if (k == n) {
            if (n == max) break;
            memset(&pt[n], 0, sizeof pt[n]);
            snprintf(pt[n].method, sizeof pt[n].method, "%s", method);
            snprintf(pt[n].share, sizeof pt[n].share, "%s", share);
            snprintf(pt[n].budget, sizeof pt[n].budget, "%s", budget);
            n++;
        }
        pt[k].bytes += bytes;
        pt[k].auc += auc;
        pt[k].n++;
    }
    fclose(f);
    for (int k = 0; k < n; k++) {
        pt[k].bytes /= pt[k].n;
        pt[k].auc /= pt[k].n;
    }
    return n;
}

static int dominated(const point *pt, int n, int k) {
    for (int j = 0; j < n; j++) {
        if (j == k) continue;
        /* 1e-6 slack: the CSV stores AUC with 6 decimals */
        if (pt[j].bytes <= pt[k].bytes && pt[j].auc >= pt[k].auc - 1e-9 &&
            (pt[j].bytes < pt[k].bytes || pt[j].auc > pt[k].auc + 1e-9))
            return 1;
    }
    return 0;
}

TEST(bench_storage_pareto_matches_csv_and_resumes) {
    char dir[1024], args[2048];
    snprintf(dir, sizeof dir, "%s", es_test_path("bs"));
    es_test_sh(NULL, "rm -rf %s", dir);
    const char *log = es_test_path("bs.log");
    snprintf(args, sizeof args,
             "data/criteo_kaggle_train_first10k.tsv --max-rows 3000 --methods full,hash,unified --budgets 1/4,1/64 "
             "--seeds 1,2 --share both --dim 8 --out %s --quiet",
             dir);
    int st = es_test_sh(log, "%s bench-storage %s", es_bin(), args);
    char *s = es_test_slurp(log);
    CHECK_MSG(st == 0, "exit %d: %s", st, s ? s : "");
    free(s);
    point pt[64];
    int n = read_points(es_test_path("bs/cells.csv"), pt, 64);
    printf("    %d aggregated points\n", n);
    /* full once; hash x 2 budgets x 2 share modes; unified (no share option: its
     * share=fields cells are skipped) x 2 budgets */
    CHECK_EQ_INT(n, 1 + 2 * 2 + 2);
    char *svg = es_test_slurp(es_test_path("bs/pareto.svg"));
    char *json = es_test_slurp(es_test_path("bs/results.json"));
    CHECK(svg && json);
    int n_front = 0;
    for (int k = 0; k < n; k++) {
        int front = !dominated(pt, n, k);
        n_front += front;
        /* the plot marks the point with class "point pareto" iff it is on the front */
        char needle[256];
        snprintf(needle, sizeof needle, "class=\"point pareto\" data-method=\"%.32s\" data-share=\"%.16s\" data-budget=\"%.32s\"", pt[k].method,
                 pt[k].share, pt[k].budget);
        int marked = strstr(svg, needle) != NULL;
        printf("    %-8s %-6s %-5s bytes %8.0f auc %.4f front %d marked %d\n", pt[k].method, pt[k].share, pt[k].budget, pt[k].bytes,
               pt[k].auc, front, marked);
        CHECK_MSG(front == marked, "%s/%s@%s: Pareto %d but plot says %d", pt[k].method, pt[k].share, pt[k].budget, front, marked);
        snprintf(needle, sizeof needle, "\"method\":\"%.32s\",\"share\":\"%.16s\",\"budget\":\"%.32s\"", pt[k].method, pt[k].share, pt[k].budget);
        char *aggs = strstr(json, "\"aggregates\"");
        CHECK(aggs);
        char *a = strstr(aggs, needle);
        CHECK(a);
        char *pf = strstr(a, "\"pareto\":");
        CHECK(pf);
        CHECK_MSG((strncmp(pf + 9, "true", 4) == 0) == front, "results.json disagrees for %s", needle);
    }
    CHECK(n_front >= 1);
    free(svg);
    free(json);
    /* budgets hold: every cell's bytes <= its budget share of the full table */
    FILE *f = fopen(es_test_path("bs/cells.csv"), "r");
    CHECK(f);
    char line[1024];
    int cells = 0;
    CHECK(fgets(line, sizeof line, f) != NULL);
    while (fgets(line, sizeof line, f)) {
        double frac, bytes, full;
        char b[64];
        if (sscanf(line, "%*[^,],%*[^,],%*[^,],%*[^,],%63[^,],%lf,%lf,%lf", b, &frac, &bytes, &full) != 4) continue;
        cells++;
        if (strcmp(b, "full") != 0) CHECK_MSG(bytes <= frac * full + 1, "cell %s: %.0f bytes > %.0f", b, bytes, frac * full);
    }
    fclose(f);
    CHECK_EQ_INT(cells, 2 + 2 * 2 * 2 * 2 - 2 * 2 * 1); /* 2 seeds; no unified share=fields */
    /* resume: nothing recomputed; then drop one cell and only it is redone */
    CHECK(es_test_sh(log, "%s bench-storage %s", es_bin(), args) == 0);
    s = es_test_slurp(log);
    CHECK_STR_HAS(s, "14 cells (14 from an earlier run, 0 failed)");
    free(s);
    CHECK(es_test_sh(NULL, "grep -v ',hash,fields,1/64,' %s/cells.csv > %s/c2 && mv %s/c2 %s/cells.csv", dir, dir, dir, dir) == 0);
    CHECK(es_test_sh(log, "%s bench-storage %s", es_bin(), args) == 0);
    s = es_test_slurp(log);
    CHECK_STR_HAS(s, "14 cells (12 from an earlier run, 0 failed)");
    free(s);
    CHECK(access(es_test_path("bs/summary.md"), F_OK) == 0);
}

/* Sweep entries with a precision (METHOD@P[/mode]) and their own options
 * (METHOD:k=v;k=v) run as their own series: inside-row points are squares
 * in the plot, the summary compares the two families per budget, and a
 * malformed entry is a usage error. */
TEST(bench_storage_precision_entries) {
    char dir[1024];
    snprintf(dir, sizeof dir, "%s", es_test_path("bsq"));
    es_test_sh(NULL, "rm -rf %s", dir);
    const char *log = es_test_path("bsq.log");
    int st = es_test_sh(log,
                        "%s bench-storage data/criteo_kaggle_train_first10k.tsv --max-rows 2000 --methods "
                        "'hash,hash@int4,unified@int8/alpt,hash@int8:seed=5' --budgets 1/8 --seeds 1,2 --dim 8 --out %s "
                        "--no-lookup-speed --quiet",
                        es_bin(), dir);
    char *s = es_test_slurp(log);
    CHECK_MSG(st == 0, "exit %d: %s", st, s ? s : "");
    free(s);
    char *svg = es_test_slurp(es_test_path("bsq/pareto.svg"));
    char *md = es_test_slurp(es_test_path("bsq/summary.md"));
    char *csv = es_test_slurp(es_test_path("bsq/cells.csv"));
    CHECK(svg && md && csv);
    CHECK_STR_HAS(svg, "class=\"point intra");
    CHECK_STR_HAS(svg, "data-method=\"hash@int4\"");
    CHECK_STR_HAS(svg, "<circle class=\"point");
    CHECK_STR_HAS(md, "**Inside rows vs across rows**");
    CHECK_STR_HAS(csv, ",unified@int8/alpt,");
    CHECK_STR_HAS(csv, ",hash@int8:seed=5,");
    free(svg);
    free(md);
    free(csv);
    st = es_test_sh(log, "%s bench-storage data/criteo_kaggle_train_first10k.tsv --methods hash@int3 --out %s --quiet", es_bin(), dir);
    s = es_test_slurp(log);
    CHECK_MSG(st != 0, "exit %d", st);
    CHECK_STR_HAS(s, "bad --methods entry 'hash@int3'");
    free(s);
    es_test_sh(NULL, "rm -rf %s", dir);
}

/* The `matryoshka` entry: one hash table per seed trained with the nested
 * loss, each budget's cell the table cut to its prefix, within its budget;
 * a budget whose prefix is not a whole number is an error cell, the others
 * are unaffected; a precision is refused. */
TEST(bench_storage_matryoshka_entry) {
    const char *out = es_test_path("bs_mat");
    const char *log = es_test_path("bs_mat.log");
    CHECK(es_test_sh(log, "%s bench-storage data/criteo_kaggle_train_first10k.tsv --methods matryoshka --budgets 1/4,1/8,1/64,1/12 "
                          "--seeds 1 --model fm --dim 16 --max-rows 3000 --no-lookup-speed --quiet --fresh --out %s",
                     es_bin(), out) == 0);
    char csv[600];
    snprintf(csv, sizeof csv, "%s/cells.csv", out);
    FILE *f = fopen(csv, "r");
    CHECK(f);
    char line[1024];
    int ok = 0, bad = 0;
    double prev = 1e300;
    while (f && fgets(line, sizeof line, f)) {
        char method[32], budget[24], status[160];
        double frac, bytes, full, auc;
        if (sscanf(line, "%*[^,],%*[^,],%31[^,],%*[^,],%23[^,],%lf,%lf,%lf,%lf,%*[^,],%*[^,],%*[^,],%*[^,],%*[^,],%159[^\n]", method, budget,
                   &frac, &bytes, &full, &auc, status) != 7)
            continue;
        printf("    %s %s: %.0f bytes of %.0f (budget %.0f), AUC %.4f, %s\n", method, budget, bytes, full, frac * full, auc, status);
        if (!strcmp(budget, "1/12")) {
            bad++;
            CHECK_STR_HAS(status, "not a whole number");
            continue;
        }
        CHECK_MSG(!strcmp(status, "ok"), "%s: %s", budget, status);
        CHECK_MSG(bytes > 0 && bytes <= frac * full, "%s: %.0f bytes over the budget %.0f", budget, bytes, frac * full);
        CHECK(bytes < prev); /* the budgets are listed largest first: each slice smaller */
        CHECK(auc > 0.55 && auc < 1);
        prev = bytes;
        ok++;
    }
    if (f) fclose(f);
    CHECK_EQ_INT(ok, 3);
    CHECK_EQ_INT(bad, 1);
    CHECK(es_test_sh(log, "%s bench-storage data/criteo_kaggle_train_first10k.tsv --methods matryoshka@int8 --out %s", es_bin(), out) == 2);
    char *s = es_test_slurp(log);
    CHECK_STR_HAS(s, "fp32");
    free(s);
}
