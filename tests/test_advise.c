/*
 * test_advise.c — `embstore advise` (issue 13, part 3): the advice from a
 * probe trained on the Criteo sample has one dimension per field within
 * [1, dim], consistent with each field's spectrum (a field with fewer rows
 * than dimensions cannot use more than its rows); bad usage is refused;
 * --verify (slow tier) trains the advice and the uniform baseline.
 */
#include "test.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CRITEO "data/criteo_kaggle_train_first10k.tsv"

/* The value after "key": in s (a number), or -1. */
static double num_after(const char *s, const char *key) {
    const char *p = strstr(s, key);
    return p ? atof(p + strlen(key)) : -1;
}

TEST(advise_cli_dims_per_field) {
    const char *log = es_test_path("advise.json");
    CHECK(es_test_sh(log, "%s advise " CRITEO " --max-rows 4000 --json --quiet", es_bin()) == 0);
    char *s = es_test_slurp(log);
    CHECK(s != NULL);
    CHECK_STR_HAS(s, "\"storage\":\"fielddim\"");
    CHECK_STR_HAS(s, "\"storage_opts\":\"dims=");
    int fields = 0;
    for (const char *p = strstr(s, "\"fields\":["); p && (p = strstr(p, "{\"name\":")); p++) {
        double rows = num_after(p, "\"rows\":"), dim = num_after(p, "\"dim\":");
        CHECK_MSG(dim >= 1 && dim <= 16, "field %d: dim %g", fields, dim);
        CHECK_MSG(rows < 0 || dim <= rows || rows < 2, "field %d: dim %g from %g rows", fields, dim, rows);
        fields++;
    }
    CHECK_EQ_INT(fields, 26);
    /* the dims string has one entry per field */
    const char *o = strstr(s, "dims=");
    int colons = 0;
    for (const char *c = o; c && *c && *c != '"'; c++) colons += *c == ':';
    CHECK_EQ_INT(colons, 25);
    printf("    %.160s...\n", o);
    free(s);
    /* usage errors */
    CHECK(es_test_sh(log, "%s advise " CRITEO " --verify --valid-frac 0 --quiet", es_bin()) != 0);
    s = es_test_slurp(log);
    CHECK_STR_HAS(s, "--verify compares validation AUCs");
    free(s);
    CHECK(es_test_sh(log, "%s advise " CRITEO " --energy 2 --quiet", es_bin()) != 0);
    CHECK(es_test_sh(log, "%s advise --quiet", es_bin()) != 0);
    CHECK(es_test_sh(log, "%s advise --help", es_bin()) == 0);
    s = es_test_slurp(log);
    CHECK_STR_HAS(s, "usage: embstore advise DATA");
    free(s);
}

/* --verify trains the advice and the uniform baseline per seed and says
 * which won (the measured table is in docs/diagnostics.md). */
TEST_SLOW(advise_verify_reports_both) {
    const char *log = es_test_path("advise_verify.json");
    CHECK(es_test_sh(log, "%s advise " CRITEO " --max-rows 4000 --budget 1/16 --verify --seeds 1,2 --json --quiet", es_bin()) == 0);
    char *s = es_test_slurp(log);
    CHECK(s != NULL);
    CHECK_STR_HAS(s, "\"verify\":{\"seeds\":2,\"advised_auc\":[");
    CHECK_STR_HAS(s, "\"uniform_auc\":[");
    double a = num_after(s, "\"advised_mean\":"), u = num_after(s, "\"uniform_mean\":");
    CHECK_MSG(a > 0.55 && a < 1 && u > 0.55 && u < 1, "advised %g, uniform %g", a, u);
    CHECK(strstr(s, "\"verdict\":\"tie") || strstr(s, "wins\""));
    printf("    advised %.4f, uniform %.4f\n", a, u);
    free(s);
}
