/*
 * test_meta.c — numbers in file metadata are parsed strictly (core.h
 * es__meta_*): the helpers themselves, and a model file whose metadata
 * holds a malformed or out-of-range number is refused with ES_EFORMAT and
 * a message naming the file, the key and the value.  (Checkpoint numbers:
 * tests/test_integrity.c, integrity_resume_parses_checkpoint_numbers_strictly.)
 */
#include "test.h"

#include "core/core.h"
#include "embstore.h"
#include "format/file.h"

#include <unistd.h>

TEST(meta_helpers_are_strict) {
    es_err err = {0};
    int64_t i = 7;
    CHECK(es__meta_i64("f", "k", "42", 0, 100, &i, &err) == 0 && i == 42);
    CHECK(es__meta_i64("f", "k", "-3", -5, 5, &i, &err) == 0 && i == -3);
    static const char *bad_int[] = {"", " 1", "+1", "1 ", "1x", "0x10", "1.0", "-", "101", "-1", "99999999999999999999"};
    for (size_t k = 0; k < sizeof bad_int / sizeof bad_int[0]; k++) {
        i = 7;
        int rc = es__meta_i64("f.es", "a.b", bad_int[k], 0, 100, &i, &err);
        printf("    i64 '%s': %d %s\n", bad_int[k], rc, err.msg);
        CHECK_EQ_INT(rc, ES_EFORMAT);
        CHECK_EQ_INT(i, 7); /* untouched */
    }
    char want[128];
    snprintf(want, sizeof want, "f.es: metadata a.b=99999999999999999999: expected an integer in [0, 100]");
    CHECK_STR_HAS(err.msg, want);
    CHECK_EQ_INT(es__meta_i64("f.es", "a.b", NULL, 0, 1, &i, &err), ES_EFORMAT);
    CHECK_STR_HAS(err.msg, "f.es: metadata lacks 'a.b'");

    uint64_t u = 0;
    CHECK(es__meta_u64("f", "k", "18446744073709551615", 0, UINT64_MAX, &u, &err) == 0 && u == UINT64_MAX);
    CHECK_EQ_INT(es__meta_u64("f", "k", "-1", 0, UINT64_MAX, &u, &err), ES_EFORMAT); /* strtoull would wrap it */
    CHECK_STR_HAS(err.msg, "metadata k=-1: expected an integer in [0, 18446744073709551615]");
    CHECK_EQ_INT(es__meta_u64("f", "k", "18446744073709551616", 0, UINT64_MAX, &u, &err), ES_EFORMAT);
    CHECK_EQ_INT(es__meta_u64("f", "k", " 1", 0, UINT64_MAX, &u, &err), ES_EFORMAT);

    int n = 0;
    CHECK(es__meta_int("f", "k", "2147483647", 0, 2147483647, &n, &err) == 0 && n == 2147483647);
    CHECK_EQ_INT(es__meta_int("f", "k", "2147483648", 0, 2147483647, &n, &err), ES_EFORMAT);

    double d = 0;
    CHECK(es__meta_f64("f", "k", "0.25", 0, 1, &d, &err) == 0 && d == 0.25);
    CHECK(es__meta_f64("f", "k", "-inf", -INFINITY, INFINITY, &d, &err) == 0 && isinf(d) && d < 0);
    static const char *bad_num[] = {"", "nan", "inf", "1e999", " 0.5", "0.5x", "2", "-0.1"};
    for (size_t k = 0; k < sizeof bad_num / sizeof bad_num[0]; k++) {
        int rc = es__meta_f64("f", "k", bad_num[k], 0, 1, &d, &err);
        printf("    f64 '%s': %d %s\n", bad_num[k], rc, err.msg);
        CHECK_EQ_INT(rc, ES_EFORMAT);
    }
    CHECK_STR_HAS(err.msg, "f: metadata k=-0.1: expected a number in [0, 1]");

    double v[3];
    CHECK(es__meta_f64_list("f", "k", "1,2.5,0", 3, 0, 10, v, &err) == 0 && v[0] == 1 && v[1] == 2.5 && v[2] == 0);
    static const char *bad_list[] = {"1,2", "1,2,3,4", "1,,3", "1,2,", ",1,2", "1,2,x", "1,2,11", ""};
    for (size_t k = 0; k < sizeof bad_list / sizeof bad_list[0]; k++) {
        int rc = es__meta_f64_list("f", "k", bad_list[k], 3, 0, 10, v, &err);
        printf("    list '%s': %d %s\n", bad_list[k], rc, err.msg);
        CHECK_EQ_INT(rc, ES_EFORMAT);
    }
    CHECK_STR_HAS(err.msg, "expected 3 comma-separated numbers in [0, 10]");
}

/* Copy container src to dst with metadata `key` set to `value` (added
 * when absent; NULL removes it); tensors are copied as they are. */
static int rewrite_meta(const char *src, const char *dst, const char *key, const char *value, es_err *err) {
    es_file *f = NULL;
    es_fwriter *w = NULL;
    int rc = es__file_open(&f, src, 0, err);
    if (rc) return rc;
    if ((rc = es__fwriter_open(&w, dst, err)) != 0) {
        es__file_close(f);
        return rc;
    }
    int found = 0;
    for (int i = 0; i < es__file_n_meta(f); i++) {
        const char *k, *v;
        es__file_meta_at(f, i, &k, &v);
        if (strcmp(k, key) == 0) {
            found = 1;
            if (!value) continue;
            v = value;
        }
        es__fwriter_meta(w, k, v);
    }
    if (!found && value) es__fwriter_meta(w, key, value);
    for (int i = 0; i < es__file_n_tensors(f); i++) es__fwriter_tensor(w, es__file_tensor_at(f, i));
    rc = es__fwriter_commit(w, err); /* errors are sticky: commit reports any */
    es__file_close(f);
    return rc;
}

TEST(meta_model_load_refuses_bad_numbers) {
    char model[1024], edited[1024], log[1024];
    snprintf(model, sizeof model, "%s", es_test_path("meta_model.es"));
    snprintf(edited, sizeof edited, "%s", es_test_path("meta_edited.es"));
    snprintf(log, sizeof log, "%s", es_test_path("meta_train.log"));
    int st = es_test_sh(log,
                        "%s train data/criteo_kaggle_train_first10k.tsv --max-rows 1000 --valid-frac 0 --storage hash "
                        "--budget 100000 --model dlrm --dim 8 --quiet --out %s",
                        es_bin(), model);
    char *s = es_test_slurp(log);
    CHECK_MSG(st == 0, "train exit %d: %s", st, s ? s : "");
    free(s);
    es_err err = {0};
    es_model *m = NULL;
    /* the copy itself loads: only the edited value makes a difference */
    CHECK_MSG(rewrite_meta(model, edited, "user.note", "x", &err) == 0, "%s", err.msg);
    CHECK_MSG(es_model_load(&m, edited, 0, &err) == 0, "%s", err.msg);
    es_model_free(m);
    static const struct {
        const char *key, *val, *expect;
    } bad[] = {
        {"model.dim", "abc", "metadata model.dim=abc: expected an integer in [1, 65536]"},
        {"model.dim", "8x", "metadata model.dim=8x: expected an integer"},
        {"model.dim", "0", "metadata model.dim=0: expected an integer in [1, 65536]"},
        {"model.dim", "4294967304", "metadata model.dim=4294967304"}, /* 2^32 + 8: atoi gave 8 */
        {"model.dim", NULL, "metadata lacks 'model.dim'"},
        {"model.n_fields", "-1", "metadata model.n_fields=-1"},
        {"model.max_batch", "99999999", "metadata model.max_batch=99999999: expected an integer in [1, 1048576]"},
        {"model.bottom", "64,,8", "metadata model.bottom=64,,8"},
        {"model.top", "64,-1", "metadata model.top=64,-1"},
        {"model.opt", "3,0.001,1e-8,0.9", "metadata model.opt=3,0.001,1e-8,0.9: expected 5 comma-separated numbers"},
        {"model.opt", "9,0.001,1e-8,0.9,0.999", "unknown optimizer 9"},
        {"model.weight_decay", "nan", "metadata model.weight_decay=nan"},
        {"model.seed", "-1", "metadata model.seed=-1"},
        {"storage.dim", "", "metadata storage.dim=: expected an integer"},
        {"storage.seed", "1e3", "metadata storage.seed=1e3"},
        {"storage.init_scale", "-0.5", "metadata storage.init_scale=-0.5"},
        {"storage.opt", "2,0.05,x,0,0,0", "metadata storage.opt=2,0.05,x,0,0,0"},
        {"storage.budget_bytes", "lots", "metadata storage.budget_bytes=lots"},
        {"reader.header", "2", "metadata reader.header=2: expected an integer in [0, 1]"},
        {"reader.delim", "300", "metadata reader.delim=300"},
        {"reader.pool", "7", "metadata reader.pool=7"},
        {"reader.label_threshold", "nan", "metadata reader.label_threshold=nan"},
        {"reader.n_fields_hint", "-2", "metadata reader.n_fields_hint=-2"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CHECK_MSG(rewrite_meta(model, edited, bad[i].key, bad[i].val, &err) == 0, "%s", err.msg);
        memset(&err, 0, sizeof err);
        int rc = es_model_load(&m, edited, 0, &err);
        printf("    %s=%s: %d %s\n", bad[i].key, bad[i].val ? bad[i].val : "(removed)", rc, err.msg);
        CHECK_EQ_INT(rc, ES_EFORMAT);
        CHECK(m == NULL);
        CHECK_STR_HAS(err.msg, edited);
        CHECK_STR_HAS(err.msg, bad[i].expect);
    }
    /* the CLI says the same */
    CHECK_MSG(rewrite_meta(model, edited, "model.dim", "abc", &err) == 0, "%s", err.msg);
    st = es_test_sh(log, "%s predict %s data/criteo_kaggle_train_first10k.tsv --out /dev/null", es_bin(), edited);
    s = es_test_slurp(log);
    printf("    cli: exit %d: %s", st, s ? s : "");
    CHECK(st != 0);
    CHECK_STR_HAS(s, "metadata model.dim=abc");
    free(s);
    remove(edited);
}
