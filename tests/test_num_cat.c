/*
 * test_num_cat.c — es_reader_params.num_cat (--num-cat): Criteo's numeric
 * columns also read as bucketed categorical fields.
 *
 *   - 39 fields (C1..C26, then I1_b..I13_b), the numeric features unchanged,
 *     every bucket value the key of floor(ln(x)^2) (x > 2) or floor(x);
 *   - the same batches with 1 and 2 parse threads (the block-parallel path);
 *   - a model trained with it keeps it: eval in a new process equals the
 *     training run's metrics, whatever input options eval is given;
 *   - other formats refuse it.
 */
#include "test.h"
#include "embstore.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <math.h>
#include <string.h>

#define CRITEO "data/criteo_kaggle_train_first10k.tsv"

static int read_all(const char *path, es_reader_params p, es_batch *b, int cap) {
    es_reader *r = NULL;
    es_err err = {0};
    if (es_reader_open(&r, path, &p, &err) != 0) return -1;
    int D = es_reader_n_dense(r), F = es_reader_n_fields(r);
    if (es_batch_alloc(b, cap, D, F, 0) != 0) return -1;
    int n = es_reader_next(r, b);
    es_reader_free(r);
    return n;
}

/* The bucket of raw value x, computed independently of the reader. */
static uint64_t want_key(double x) { return es_num_bucket_key(es_transform_num(x)); }

TEST(num_cat_reads_buckets_as_fields) {
    es_reader_params p = es_reader_params_default();
    p.num_cat = 1;
    es_batch b = {0}, plain = {0};
    int n = read_all(CRITEO, p, &b, 512);
    CHECK_EQ_INT(n, 512);
    CHECK_EQ_INT(b.n_fields, 39);
    CHECK_EQ_INT(read_all(CRITEO, es_reader_params_default(), &plain, 512), 512);
    CHECK_EQ_INT(plain.n_fields, 26);
    es_reader *r = NULL;
    es_err err = {0};
    CHECK(es_reader_open(&r, CRITEO, &p, &err) == 0);
    CHECK_STR_HAS(es_reader_field_name(r, 26), "I1_b");
    CHECK_STR_HAS(es_reader_field_name(r, 38), "I13_b");
    es_reader_free(r);
    /* the raw numbers of the first rows, from the file itself */
    FILE *f = fopen(CRITEO, "r");
    CHECK(f != NULL);
    char line[65536];
    int distinct_checked = 0;
    for (int row = 0; row < 512 && fgets(line, sizeof line, f); row++) {
        char *tok = line;
        /* columns: label, I1..I13, C1..C26; strtok would skip empty fields */
        char *col[40];
        int nc = 0;
        for (char *s = tok; nc < 40;) {
            col[nc++] = s;
            char *t = strchr(s, '\t');
            if (!t) break;
            *t = 0;
            s = t + 1;
        }
        CHECK_EQ_INT(nc, 40);
        for (int d = 0; d < 13; d++) {
            double x = col[1 + d][0] ? atof(col[1 + d]) : 0.0;
            size_t at = b.off[(size_t)row * 39 + 26 + d];
            CHECK_EQ_INT(b.off[(size_t)row * 39 + 26 + d + 1] - at, 1);
            CHECK_MSG(b.val[at] == want_key(x), "row %d I%d = %s", row, d + 1, col[1 + d]);
            CHECK(b.dense[(size_t)row * 13 + d] == plain.dense[(size_t)row * 13 + d]);
        }
        /* the 26 categorical fields are those of the plain read */
        for (int k = 0; k < 26; k++)
            CHECK(b.val[b.off[(size_t)row * 39 + k]] == plain.val[plain.off[(size_t)row * 26 + k]]);
        distinct_checked++;
    }
    fclose(f);
    CHECK_EQ_INT(distinct_checked, 512);
    /* buckets: log-squared above 2, the integer itself at or below 2 */
    CHECK(want_key(3) == want_key(4));   /* ln^2 = 1.21, 1.92: bucket 1 */
    CHECK(want_key(5) != want_key(4));   /* 2.59: bucket 2 */
    CHECK(want_key(100) == want_key(105)); /* 21.2, 21.7 */
    CHECK(want_key(110) != want_key(105)); /* 22.1 */
    CHECK(want_key(1) != want_key(2) && want_key(0) != want_key(1) && want_key(-1) != want_key(0));
    es_batch_free(&b);
    es_batch_free(&plain);
}

TEST(num_cat_same_batches_with_parse_threads) {
    es_reader_params p = es_reader_params_default();
    p.num_cat = 1;
    es_batch a = {0}, c = {0};
    CHECK_EQ_INT(read_all(CRITEO, p, &a, 1024), 1024);
    p.threads = 2;
    CHECK_EQ_INT(read_all(CRITEO, p, &c, 1024), 1024);
    CHECK(memcmp(a.off, c.off, (1024 * 39 + 1) * sizeof *a.off) == 0);
    CHECK(memcmp(a.val, c.val, a.off[1024 * 39] * sizeof *a.val) == 0);
    es_batch_free(&a);
    es_batch_free(&c);
}

TEST(num_cat_model_keeps_it_and_other_formats_refuse_it) {
    char log[4096], model[4096];
    snprintf(log, sizeof log, "%s", es_test_path("nc.log"));
    snprintf(model, sizeof model, "%s", es_test_path("nc.es"));
    CHECK(es_test_sh(log, "%s train %s --num-cat --valid-frac 0 --max-rows 3000 --epochs 1 --quiet --out %s", es_bin(), CRITEO,
                     model) == 0);
    CHECK(es_test_sh(log, "%s inspect %s", es_bin(), model) == 0);
    char *s = es_test_slurp(log);
    CHECK_STR_HAS(s, "I13_b");
    free(s);
    /* eval reads the buckets too, even when told --no-num-cat */
    CHECK(es_test_sh(NULL, "%s eval %s %s > $ES_T/nc1.json && %s eval %s %s --no-num-cat > $ES_T/nc2.json && cmp $ES_T/nc1.json "
                           "$ES_T/nc2.json",
                     es_bin(), model, CRITEO, es_bin(), model, CRITEO) == 0);
    es_model *m = NULL;
    es_err err = {0};
    CHECK(es_model_load(&m, model, 0, &err) == 0);
    CHECK_EQ_INT(es_model_n_fields(m), 39);
    CHECK_EQ_INT(es_model_reader_params(m).num_cat, 1);
    es_model_free(m);
    /* CSV: refused with a message */
    int st = es_test_sh(log, "%s train data/ml-latest-small.csv --columns rating:label,userId:cat,movieId:cat --label-threshold 4 "
                             "--num-cat --max-rows 100 --quiet",
                        es_bin());
    s = es_test_slurp(log);
    CHECK_MSG(st != 0, "exit %d", st);
    CHECK_STR_HAS(s, "num_cat");
    CHECK_STR_HAS(s, "Criteo TSV");
    free(s);
}
