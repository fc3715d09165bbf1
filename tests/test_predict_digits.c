/*
 * test_predict_digits.c — `embstore predict --digits N` and
 * es_model_set_predict_digits (issue 14): 9 significant digits read back
 * (strtof) to the very floats es_model_predict_batch gives, so the CLI can
 * be compared with the library and the server bit for bit; the default
 * output stays six decimals; bad values are refused naming the option.
 */
#include "test.h"

#include "embstore.h"

#define CRITEO "data/criteo_kaggle_train_first10k.tsv"

/* The lines of a predict output parsed with strtof; *n lines. */
static float *read_probs(const char *path, size_t *n) {
    char *s = es_test_slurp(path);
    *n = 0;
    if (!s) return NULL;
    size_t cap = 1024;
    float *out = malloc(cap * sizeof *out);
    for (char *p = s, *e; out && *p; p = e) {
        float v = strtof(p, &e);
        if (e == p) break;
        while (*e == '\n') e++;
        if (*n == cap) {
            float *o2 = realloc(out, 2 * cap * sizeof *out);
            if (!o2) break;
            out = o2;
            cap *= 2;
        }
        out[(*n)++] = v;
    }
    free(s);
    return out;
}

static const char *digits_model(void) {
    static char path[512];
    if (!path[0]) {
        snprintf(path, sizeof path, "%s", es_test_path("digits.es"));
        if (es_test_sh(NULL, "%s train %s --model dlrm --max-rows 1500 --epochs 1 --seed 3 --out %s", es_bin(), CRITEO, path))
            path[0] = 0;
    }
    return path;
}

TEST(predict_digits_cli_bits) {
    const char *ma = digits_model();
    CHECK_MSG(ma[0], "training the test model failed");
    const char *rows = es_test_path("digits_rows.tsv"), *p9 = es_test_path("digits_p9.txt"),
               *p6 = es_test_path("digits_p6.txt"), *p3 = es_test_path("digits_p3.txt");
    CHECK(es_test_sh(NULL, "tail -300 %s > %s", CRITEO, rows) == 0);
    size_t n_ref = 0, n9 = 0;
    float *ref = es_test_model_probs(ma, rows, &n_ref);
    CHECK(ref && n_ref == 300);
    CHECK(es_test_sh(NULL, "%s predict %s %s --digits 9 --out %s", es_bin(), ma, rows, p9) == 0);
    float *got = read_probs(p9, &n9);
    CHECK(got);
    CHECK_EQ_INT(n9, n_ref);
    for (size_t i = 0; i < n_ref; i++)
        CHECK_MSG(memcmp(&got[i], &ref[i], sizeof(float)) == 0, "row %zu: --digits 9 %.9g != library %.9g", i, got[i],
                  ref[i]);
    /* the default is today's output exactly: "%.6f" of the same floats */
    CHECK(es_test_sh(NULL, "%s predict %s %s --out %s", es_bin(), ma, rows, p6) == 0);
    char *s6 = es_test_slurp(p6), *want = calloc(1, n_ref * 16 + 1);
    size_t o = 0;
    for (size_t i = 0; i < n_ref; i++) o += (size_t)sprintf(want + o, "%.6f\n", ref[i]);
    CHECK_MSG(s6 && strcmp(s6, want) == 0, "the default output is no longer %%.6f per line");
    /* --digits 3: "%.3g" */
    CHECK(es_test_sh(NULL, "%s predict %s %s --digits 3 > %s", es_bin(), ma, rows, p3) == 0);
    char *s3 = es_test_slurp(p3);
    o = 0;
    for (size_t i = 0; i < n_ref; i++) o += (size_t)sprintf(want + o, "%.3g\n", ref[i]);
    CHECK_MSG(s3 && strcmp(s3, want) == 0, "--digits 3 is not %%.3g per line");
    printf("  300 rows: predict --digits 9 == es_model_predict_batch (strtof, all bits); default %%.6f; --digits 3 %%.3g\n");
    free(s3);
    free(s6);
    free(want);
    free(got);
    free(ref);
}

TEST(predict_digits_refusals) {
    const char *ma = digits_model();
    CHECK_MSG(ma[0], "training the test model failed");
    const char *rows = es_test_path("digits_rows2.tsv"), *out = es_test_path("digits_err.txt");
    CHECK(es_test_sh(NULL, "head -20 %s > %s", CRITEO, rows) == 0);
    const char *bad[] = {"x", "0", "10", "-1", "9x", ""};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        int rc = es_test_sh(out, "%s predict %s %s --digits '%s'", es_bin(), ma, rows, bad[i]);
        CHECK_MSG(rc != 0, "--digits '%s': exit 0", bad[i]);
        char *s = es_test_slurp(out);
        CHECK_STR_HAS(s, "--digits expects an integer in [1, 9]");
        free(s);
    }
    int rc = es_test_sh(out, "%s predict %s %s --digits", es_bin(), ma, rows);
    CHECK_MSG(rc != 0, "--digits without a value: exit 0");
    char *s = es_test_slurp(out);
    CHECK_STR_HAS(s, "--digits");
    free(s);
    /* eval has no such option */
    rc = es_test_sh(out, "%s eval %s %s --digits 9", es_bin(), ma, rows);
    CHECK_MSG(rc != 0, "eval --digits: exit 0");
    /* --help documents it */
    CHECK(es_test_sh(out, "%s predict --help", es_bin()) == 0);
    s = es_test_slurp(out);
    CHECK_STR_HAS(s, "--digits N");
    free(s);
    /* the library refuses out-of-range digits with a message, keeps the old setting */
    es_model *m = NULL;
    CHECK(es_model_load(&m, ma, 0, NULL) == 0);
    CHECK_EQ_INT(es_model_set_predict_digits(m, 10), ES_EINVAL);
    CHECK_STR_HAS(es_model_errmsg(m), "1..9");
    CHECK_EQ_INT(es_model_set_predict_digits(m, -1), ES_EINVAL);
    CHECK_EQ_INT(es_model_set_predict_digits(NULL, 9), ES_EINVAL);
    CHECK_EQ_INT(es_model_set_predict_digits(m, 9), 0);
    const char *p = es_test_path("digits_lib9.txt");
    uint64_t n = 0;
    CHECK_MSG(es_model_predict_file(m, rows, 1, p, &n) == 0, "%s", es_model_errmsg(m));
    CHECK_EQ_INT(n, 20);
    CHECK_EQ_INT(es_model_set_predict_digits(m, 0), 0); /* back to six decimals */
    const char *q = es_test_path("digits_lib6.txt");
    CHECK_MSG(es_model_predict_file(m, rows, 1, q, &n) == 0, "%s", es_model_errmsg(m));
    es_model_free(m);
    size_t n_ref = 0, n9 = 0;
    float *ref = es_test_model_probs(ma, rows, &n_ref), *got = read_probs(p, &n9);
    CHECK(ref && got && n_ref == 20 && n9 == 20);
    CHECK(memcmp(ref, got, 20 * sizeof(float)) == 0);
    s = es_test_slurp(q);
    char line[32];
    snprintf(line, sizeof line, "%.6f\n", ref[0]);
    CHECK_MSG(s && strncmp(s, line, strlen(line)) == 0, "digits 0: %s", s ? s : "(null)");
    free(s);
    free(ref);
    free(got);
}
