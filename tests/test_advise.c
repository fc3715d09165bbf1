/*
 * test_advise.c — `embstore advise` (issue 13, part 3): the candidates'
 * per-field dimensions from a probe trained on the Criteo sample are within
 * [1, dim] and consistent with each field's spectrum (a field with fewer
 * rows than dimensions cannot use more than its rows); the advice is the
 * candidate with the best selection AUC unless that beats the uniform table
 * by less than two standard errors, and then it is the uniform table, said
 * so; the selection and --verify score disjoint rows (by position, as
 * documented in docs/diagnostics.md, "Advice"); bad usage is refused;
 * --verify (slow tier) trains the advice and the uniform baseline.
 */
#include "test.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CRITEO "data/criteo_kaggle_train_first10k.tsv"

/* The value after "key": in s (a number), or -1. */
static double num_after(const char *s, const char *key) {
    const char *p = strstr(s, key);
    return p ? atof(p + strlen(key)) : -1;
}

/* The string after "key":" in s, copied into out (up to the closing quote). */
static void str_after(const char *s, const char *key, char *out, size_t cap) {
    out[0] = 0;
    const char *p = strstr(s, key);
    if (!p) return;
    p += strlen(key);
    size_t n = 0;
    while (p[n] && p[n] != '"' && n + 1 < cap) n++;
    memcpy(out, p, n);
    out[n] = 0;
}

/* The selection rule, checked from the JSON's own numbers: "best" is the
 * argmax of the candidates' select_mean; the choice is best, or the uniform
 * table when best beats it by less than two standard errors (then storage
 * hash, every field at dim 16, "uniform":true and the reason says so).
 * *uniform_out: 1 if the uniform table was chosen. */
static void check_selection(const char *s, int n_sel, int *uniform_out) {
    *uniform_out = -1;
    char best[64], choice[64], label[64], best_label[64] = "";
    str_after(s, "\"best\":\"", best, sizeof best);
    str_after(s, "\"choice\":\"", choice, sizeof choice);
    const char *c0 = strstr(s, "\"candidates\":["), *c1 = strstr(s, "],\"best\":");
    CHECK(c0 && c1 && c0 < c1);
    double best_mean = -1, best_sd = 0, uni_mean = -1, uni_sd = 0;
    int n = 0;
    for (const char *p = c0; (p = strstr(p, "{\"label\":\"")) && p < c1; p++, n++) {
        str_after(p, "{\"label\":\"", label, sizeof label);
        const char *next = strstr(p + 1, "{\"label\":\"");
        const char *m = strstr(p, "\"select_mean\":");
        if (!m || (next && m > next) || m > c1) continue; /* not trained (an "error") */
        double mean = num_after(p, "\"select_mean\":"), sd = num_after(p, "\"select_sd\":");
        CHECK_MSG(mean > 0.5 && mean < 1, "%s: selection AUC %g", label, mean);
        if (!strcmp(label, "uniform")) uni_mean = mean, uni_sd = sd;
        if (mean > best_mean) best_mean = mean, best_sd = sd, snprintf(best_label, sizeof best_label, "%s", label);
    }
    CHECK_MSG(n >= 3, "%d candidates", n);
    CHECK_MSG(uni_mean > 0, "the uniform table is a candidate");
    /* the printed means are rounded to 6 digits: a tie at that precision may go either way */
    if (strcmp(best, best_label)) {
        char key[96];
        snprintf(key, sizeof key, "{\"label\":\"%s\"", best);
        const char *b = strstr(c0, key);
        CHECK_MSG(b && fabs(num_after(b, "\"select_mean\":") - best_mean) < 2e-6, "best %s, argmax %s", best, best_label);
    }
    double se = sqrt(best_sd * best_sd / n_sel + uni_sd * uni_sd / n_sel);
    int uniform = *uniform_out = !strcmp(choice, "uniform");
    if (uniform) {
        CHECK_MSG(!strcmp(best, "uniform") || best_mean - uni_mean < 2 * se + 2e-6, "best %s %+.6f over uniform, 2se %.6f", best,
                  best_mean - uni_mean, 2 * se);
        CHECK_STR_HAS(s, "\"uniform\":true");
        CHECK_STR_HAS(s, "\"reason\":\"no per-field change pays at this budget");
        CHECK_STR_HAS(s, "\"storage\":\"hash\"");
    } else {
        CHECK_MSG(!strcmp(choice, best), "choice %s, best %s", choice, best);
        CHECK_MSG(best_mean - uni_mean >= 2 * se - 2e-6, "best %s %+.6f over uniform, 2se %.6f", best, best_mean - uni_mean, 2 * se);
        CHECK_STR_HAS(s, "\"uniform\":false");
        CHECK_STR_HAS(s, "\"storage\":\"fielddim\"");
    }
    printf("    %d candidates, best %s (%.4f), uniform %.4f, 2se %.4f: advice %s\n", n, best, best_mean, uni_mean, 2 * se, choice);
}

TEST(advise_cli_dims_per_field) {
    const char *log = es_test_path("advise.json");
    /* 2000 rows and 2 selection seeds keep it quick (it runs in four tiers) */
    CHECK(es_test_sh(log, "%s advise " CRITEO " --max-rows 2000 --select-seeds 101,102 --threads 1 --json --quiet", es_bin()) == 0);
    char *s = es_test_slurp(log);
    CHECK(s != NULL);
    CHECK_STR_HAS(s, "\"energies\":[0.800000,0.900000,0.950000,0.990000]");
    CHECK_STR_HAS(s, "\"storage_opts\":\"dims=");
    int uniform;
    check_selection(s, 2, &uniform);
    int fields = 0;
    for (const char *p = strstr(s, "\"fields\":["); p && (p = strstr(p, "{\"name\":")); p++) {
        double rows = num_after(p, "\"rows\":"), dim = num_after(p, "\"dim\":");
        CHECK_MSG(dim >= 1 && dim <= 16, "field %d: dim %g", fields, dim);
        if (uniform) CHECK_MSG(dim == 16, "field %d: dim %g under the uniform advice", fields, dim);
        /* the candidates' dims, of the rows and of their change */
        const char *keys[2] = {"\"dims\":[", "\"change_dims\":["};
        for (int k = 0; k < 2; k++) {
            const char *d = strstr(p, keys[k]);
            CHECK(d != NULL);
            d += strlen(keys[k]);
            int prev = 0;
            for (int e = 0; e < 4; e++) {
                int v = atoi(d);
                CHECK_MSG(v >= 1 && v <= 16, "field %d: %s %d", fields, keys[k], v);
                CHECK_MSG(rows < 2 || v <= rows, "field %d: %s %d from %g rows", fields, keys[k], v, rows);
                CHECK_MSG(v >= prev, "field %d: %s not increasing with the energy", fields, keys[k]);
                prev = v;
                d = strchr(d, e < 3 ? ',' : ']') + 1;
            }
        }
        fields++;
    }
    CHECK_EQ_INT(fields, 26);
    /* a per-field candidate's dims string has one entry per field */
    const char *o = strstr(s, "dims=");
    int colons = 0;
    for (const char *c = o; c && *c && *c != '"' && *c != ','; c++) colons += *c == ':';
    CHECK_EQ_INT(colons, 25);
    /* the rows: 2000, of which the last 400 are verify's; selection 1280 + 320 */
    CHECK_EQ_INT((int)num_after(s, "\"select_train\":"), 1280);
    CHECK_EQ_INT((int)num_after(s, "\"select_valid\":"), 320);
    free(s);
    /* usage errors */
    CHECK(es_test_sh(log, "%s advise " CRITEO " --verify --valid-frac 0 --quiet", es_bin()) != 0);
    s = es_test_slurp(log);
    CHECK_STR_HAS(s, "--verify compares validation AUCs");
    free(s);
    CHECK(es_test_sh(log, "%s advise " CRITEO " --energy 2 --quiet", es_bin()) != 0);
    CHECK(es_test_sh(log, "%s advise " CRITEO " --energy 0.9,x --quiet", es_bin()) != 0);
    CHECK(es_test_sh(log, "%s advise " CRITEO " --select-seeds 1 --quiet", es_bin()) != 0);
    s = es_test_slurp(log);
    CHECK_STR_HAS(s, "at least 2 seeds");
    free(s);
    CHECK(es_test_sh(log, "%s advise " CRITEO " --select-frac 1 --quiet", es_bin()) != 0);
    CHECK(es_test_sh(log, "%s advise --quiet", es_bin()) != 0);
    CHECK(es_test_sh(log, "%s advise --help", es_bin()) == 0);
    s = es_test_slurp(log);
    CHECK_STR_HAS(s, "usage: embstore advise DATA");
    CHECK_STR_HAS(s, "no per-field change pays at this budget");
    free(s);
}

/* The selection never scores on verify's rows: selection trains on [0, a)
 * and scores on [a, b); verify trains on [0, b) and scores on [b, N), as the
 * rows reported by the runs themselves show. */
TEST(advise_verify_rows_disjoint) {
    const char *log = es_test_path("advise_rows.json");
    CHECK(es_test_sh(log,
                     "%s advise " CRITEO " --max-rows 3000 --valid-frac 0.25 --select-frac 0.5 --energy 0.9 --select-seeds 1,2 "
                     "--verify --seeds 1,2 --threads 1 --json --quiet",
                     es_bin()) == 0);
    char *s = es_test_slurp(log);
    CHECK(s != NULL);
    const int st = (int)num_after(s, "\"select_train\":"), sv = (int)num_after(s, "\"select_valid\":");
    const int vt = (int)num_after(s, "\"verify_train\":"), vv = (int)num_after(s, "\"verify_valid\":");
    CHECK_EQ_INT(vt + vv, 3000);
    CHECK_EQ_INT(vv, 750);
    CHECK_EQ_INT(st + sv, vt); /* the selection's rows end where verify's scored rows begin */
    CHECK_EQ_INT(sv, 1125);
    int uniform;
    check_selection(s, 2, &uniform);
    CHECK_EQ_INT(uniform, 0); /* this run advises a per-field candidate (e0.9+prop): the other branch of the rule */
    CHECK_STR_HAS(s, "\"verify\":{\"seeds\":2,\"advised_auc\":[");
    printf("    rows: selection %d + %d, verify %d + %d\n", st, sv, vt, vv);
    free(s);
}

/* --verify trains the advice and the uniform baseline per seed and says
 * which won (the measured table is in docs/diagnostics.md); when the advice
 * is the uniform table it also verifies the best per-field candidate. */
TEST_SLOW(advise_verify_reports_both) {
    const char *log = es_test_path("advise_verify.json");
    CHECK(es_test_sh(log, "%s advise " CRITEO " --max-rows 4000 --budget 1/16 --verify --seeds 1,2 --threads 1 --json --quiet", es_bin()) == 0);
    char *s = es_test_slurp(log);
    CHECK(s != NULL);
    CHECK_STR_HAS(s, "\"verify\":{\"seeds\":2,\"advised_auc\":[");
    CHECK_STR_HAS(s, "\"uniform_auc\":[");
    double a = num_after(s, "\"advised_mean\":"), u = num_after(s, "\"uniform_mean\":");
    CHECK_MSG(a > 0.55 && a < 1 && u > 0.55 && u < 1, "advised %g, uniform %g", a, u);
    CHECK(strstr(s, "\"verdict\":\"tie") || strstr(s, "wins\""));
    int uniform;
    check_selection(s, 3, &uniform);
    if (uniform) {
        CHECK_NEAR(a, u, 0);
        CHECK_STR_HAS(s, "\"best_per_field\":{\"label\":\"");
    }
    printf("    advised %.4f, uniform %.4f\n", a, u);
    free(s);
}
