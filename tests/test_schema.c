/*
 * test_schema.c — files read the way the model was trained, defaults that
 * work, and errors that say what was expected and which option fits, all
 * through the CLI ($ES_BIN):
 *   - CSV columns are matched to the model by name at eval/predict time
 *     (reordered and extra columns give byte-identical predictions; a
 *     missing column is named);
 *   - predict --unlabeled reads a CSV without its label column, and
 *     --columns / --format / --delim override the stored reader settings;
 *   - a libffm model scores files that lack its highest field;
 *   - misleading "out of memory" messages (CSV without a categorical column,
 *     ragged text vectors) name the input problem;
 *   - `train FILE` works with no other option (a default budget);
 *   - layout mismatches (unlabeled Criteo, a CSV given to a Criteo model)
 *     say what the model expects and which flag helps.
 * Scratch files live under es_test_path (ES_TEST_TMP).
 */
#include "test.h"

#include "embstore.h"

#include <stdarg.h>
#include <unistd.h>

#define CRITEO "data/criteo_kaggle_train_first10k.tsv"
#define DEEPCTR "data/criteo_deepctr_sample200.csv"
#define MOVIELENS "data/ml-latest-small.csv"
#define FFM_TRAIN "data/criteo_xlearn_small_train.libffm"
#define FFM_TEST "data/criteo_xlearn_small_test.libffm"
#define ML_SPEC "rating:label,userId:cat,movieId:cat,genres:multi"

/* A scratch path that outlives the runner's 8 rotating slots. */
typedef struct {
    char s[1024];
} path_t;
static path_t tmp(const char *name) {
    path_t p;
    snprintf(p.s, sizeof p.s, "%s", es_test_path(name));
    return p;
}

/* Runs a command; returns its exit status and (when log is not NULL) its
 * combined output, malloc'd, in *log. */
static int run(char **log, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int run(char **log, const char *fmt, ...) {
    path_t out = tmp("schema_cmd.log");
    char cmd[6000];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    int st = es_test_sh(out.s, "%s", cmd);
    char *s = es_test_slurp(out.s);
    printf("    $ %.300s\n    -> exit %d: %.600s\n", cmd, st, s ? s : "");
    if (log) *log = s;
    else free(s);
    return st;
}

/* Byte-identical files (and not empty). */
static int same_file(const char *a, const char *b) {
    char *x = es_test_slurp(a), *y = es_test_slurp(b);
    int same = x && y && *x && strcmp(x, y) == 0;
    free(x);
    free(y);
    return same;
}

static int count_lines(const char *path) {
    char *s = es_test_slurp(path);
    int n = 0;
    for (char *q = s; q && *q; q++) n += *q == '\n';
    free(s);
    return n;
}

/* A MovieLens model trained with a column spec (first 3000 ratings). */
static int movielens_model(path_t *csv, path_t *model) {
    *csv = tmp("schema_ml.csv");
    *model = tmp("schema_ml.es");
    if (es_test_sh(NULL, "head -n 3001 %s > %s", MOVIELENS, csv->s) != 0) return -1;
    remove(model->s);
    return es_test_sh(NULL, "%s train %s --columns " ML_SPEC " --label-threshold 4 --model fm --storage full --valid-frac 0.2 --quiet --out %s",
                      es_bin(), csv->s, model->s);
}

TEST(schema_csv_columns_matched_by_name) {
    path_t csv, model;
    CHECK(movielens_model(&csv, &model) == 0);
    path_t re = tmp("schema_ml_reordered.csv"), extra = tmp("schema_ml_extra.csv");
    path_t p1 = tmp("schema_ml_p1.txt"), p2 = tmp("schema_ml_p2.txt"), p3 = tmp("schema_ml_p3.txt");
    /* same columns, another order: movieId,genres,rating,userId */
    CHECK(es_test_sh(NULL, "awk -F, 'BEGIN{OFS=\",\"} {print $3,$4,$1,$2}' %s > %s", csv.s, re.s) == 0);
    /* and with two columns the model does not read, one in the middle */
    CHECK(es_test_sh(NULL, "awk -F, 'BEGIN{OFS=\",\"} {print $2, (NR==1?\"ts\":NR), $4, $1, $3, \"x\"}' %s > %s", csv.s, extra.s) ==
          0);
    CHECK(run(NULL, "%s predict %s %s --out %s", es_bin(), model.s, csv.s, p1.s) == 0);
    CHECK(run(NULL, "%s predict %s %s --out %s", es_bin(), model.s, re.s, p2.s) == 0);
    char *log = NULL;
    int st = run(&log, "%s predict %s %s --out %s", es_bin(), model.s, extra.s, p3.s);
    CHECK_EQ_INT(count_lines(p1.s), 3000);
    CHECK_MSG(same_file(p1.s, p2.s), "reordered columns give other predictions");
    CHECK_MSG(same_file(p1.s, p3.s), "extra columns give other predictions");
    CHECK_EQ_INT(st, 0);
    /* the unused columns are reported once, by name */
    CHECK_STR_HAS(log, "2 columns not read by the model are ignored: ts, x");
    CHECK(strstr(strstr(log, "ignored") + 1, "ignored") == NULL); /* once */
    free(log);
    /* eval agrees too */
    char *e1 = NULL, *e2 = NULL;
    CHECK(run(&e1, "%s eval %s %s", es_bin(), model.s, csv.s) == 0);
    CHECK(run(&e2, "%s eval %s %s 2>/dev/null", es_bin(), model.s, re.s) == 0);
    CHECK_MSG(e1 && e2 && strcmp(e1, e2) == 0, "eval differs: %s vs %s", e1 ? e1 : "", e2 ? e2 : "");
    free(e1);
    free(e2);
}

TEST(schema_csv_missing_column_is_named) {
    path_t csv, model;
    CHECK(movielens_model(&csv, &model) == 0);
    path_t miss = tmp("schema_ml_missing.csv"), out = tmp("schema_ml_missing.txt");
    CHECK(es_test_sh(NULL, "cut -d, -f1,2,4 %s > %s", csv.s, miss.s) == 0); /* no movieId */
    remove(out.s);
    char *log = NULL;
    int st = run(&log, "%s predict %s %s --out %s", es_bin(), model.s, miss.s, out.s);
    CHECK(st != 0);
    CHECK_STR_HAS(log, "'movieId' is not a column of");
    CHECK_STR_HAS(log, "--columns");
    CHECK(access(out.s, F_OK) != 0);
    free(log);
    /* two missing: both named in one message */
    CHECK(es_test_sh(NULL, "cut -d, -f1,4 %s > %s", csv.s, miss.s) == 0);
    st = run(&log, "%s eval %s %s", es_bin(), model.s, miss.s);
    CHECK(st != 0);
    CHECK_STR_HAS(log, "'userId', 'movieId' are not columns of");
    free(log);
}

TEST(schema_csv_model_without_spec_matched_by_name) {
    /* trained without --columns: the first column is the label, the rest
     * categorical; the model records the names, so the label may move */
    path_t model = tmp("schema_deepctr.es"), re = tmp("schema_deepctr_re.csv");
    path_t p1 = tmp("schema_deepctr_p1.txt"), p2 = tmp("schema_deepctr_p2.txt");
    remove(model.s);
    CHECK(run(NULL, "%s train %s --model lr --storage full --valid-frac 0 --quiet --out %s", es_bin(), DEEPCTR, model.s) == 0);
    CHECK(es_test_sh(NULL, "awk -F, 'BEGIN{OFS=\",\"} {x=$1; $1=$40; $40=x; print}' %s > %s", DEEPCTR, re.s) == 0);
    CHECK(run(NULL, "%s predict %s %s --out %s", es_bin(), model.s, DEEPCTR, p1.s) == 0);
    CHECK(run(NULL, "%s predict %s %s --out %s", es_bin(), model.s, re.s, p2.s) == 0);
    CHECK_EQ_INT(count_lines(p1.s), 200);
    CHECK_MSG(same_file(p1.s, p2.s), "moving the label column changes the predictions");
}

TEST(schema_predict_unlabeled_csv_without_label_column) {
    path_t csv, model;
    CHECK(movielens_model(&csv, &model) == 0);
    path_t nolab = tmp("schema_ml_nolabel.csv");
    path_t p1 = tmp("schema_ml_u1.txt"), p2 = tmp("schema_ml_u2.txt"), p3 = tmp("schema_ml_u3.txt");
    CHECK(es_test_sh(NULL, "cut -d, -f2- %s > %s", csv.s, nolab.s) == 0);
    CHECK(run(NULL, "%s predict %s %s --out %s", es_bin(), model.s, csv.s, p1.s) == 0);
    CHECK(run(NULL, "%s predict %s %s --unlabeled --out %s", es_bin(), model.s, nolab.s, p2.s) == 0);
    CHECK_MSG(same_file(p1.s, p2.s), "an unlabeled CSV predicts differently");
    /* a label column that is there is ignored (and said so) */
    char *log = NULL;
    CHECK(run(&log, "%s predict %s %s --unlabeled --out %s", es_bin(), model.s, csv.s, p3.s) == 0);
    CHECK(same_file(p1.s, p3.s));
    CHECK_STR_HAS(log, "ignored: rating");
    free(log);
    /* without --unlabeled the missing label is named, with the flag */
    CHECK(run(&log, "%s predict %s %s", es_bin(), model.s, nolab.s) != 0);
    CHECK_STR_HAS(log, "'rating' is not a column of");
    CHECK_STR_HAS(log, "--unlabeled");
    free(log);
}

TEST(schema_predict_reader_options_override_the_model) {
    path_t csv, model;
    CHECK(movielens_model(&csv, &model) == 0);
    path_t renamed = tmp("schema_ml_renamed.csv"), semi = tmp("schema_ml_semi.csv");
    path_t p1 = tmp("schema_ml_o1.txt"), p2 = tmp("schema_ml_o2.txt"), p3 = tmp("schema_ml_o3.txt");
    CHECK(run(NULL, "%s predict %s %s --out %s", es_bin(), model.s, csv.s, p1.s) == 0);
    /* other column names, other order: a spec in the model's field order */
    CHECK(es_test_sh(NULL, "(echo 'g,m,u,r'; tail -n +2 %s | awk -F, 'BEGIN{OFS=\",\"} {print $4,$3,$2,$1}') > %s", csv.s,
                     renamed.s) == 0);
    CHECK(run(NULL, "%s predict %s %s --columns r:label,u:cat,m:cat,g:multi --out %s", es_bin(), model.s, renamed.s, p2.s) == 0);
    CHECK_MSG(same_file(p1.s, p2.s), "--columns with other names predicts differently");
    /* another delimiter */
    CHECK(es_test_sh(NULL, "tr ',' ';' < %s > %s", csv.s, semi.s) == 0);
    CHECK(run(NULL, "%s predict %s %s --delim ';' --out %s", es_bin(), model.s, semi.s, p3.s) == 0);
    CHECK_MSG(same_file(p1.s, p3.s), "--delim predicts differently");
    /* a spec that does not fit the model: a clear error */
    char *log = NULL;
    CHECK(run(&log, "%s predict %s %s --columns r:label,u:cat,m:cat", es_bin(), model.s, renamed.s) != 0);
    CHECK_STR_HAS(log, "0 numeric and 2 categorical columns");
    CHECK_STR_HAS(log, "the model expects 0 and 3");
    CHECK_STR_HAS(log, "userId, movieId, genres");
    free(log);
    /* options that would misalign rows are refused */
    CHECK(run(&log, "%s predict %s %s --skip-bad", es_bin(), model.s, csv.s) == 2);
    free(log);
}

TEST(schema_criteo_model_reads_a_csv_with_format_and_columns) {
    path_t model = tmp("schema_criteo.es"), tsv = tmp("schema_deepctr.tsv");
    path_t p1 = tmp("schema_criteo_p1.txt"), p2 = tmp("schema_criteo_p2.txt");
    remove(model.s);
    CHECK(run(NULL, "%s train %s --model lr --storage full --max-rows 2000 --valid-frac 0 --quiet --out %s", es_bin(), CRITEO,
              model.s) == 0);
    CHECK(es_test_sh(NULL, "tail -n +2 %s | tr ',' '\\t' > %s", DEEPCTR, tsv.s) == 0);
    char spec[1024];
    size_t o = (size_t)snprintf(spec, sizeof spec, "label:label");
    for (int i = 1; i <= 13; i++) o += (size_t)snprintf(spec + o, sizeof spec - o, ",I%d:num", i);
    for (int i = 1; i <= 26; i++) o += (size_t)snprintf(spec + o, sizeof spec - o, ",C%d:cat", i);
    CHECK(run(NULL, "%s predict %s %s --out %s", es_bin(), model.s, tsv.s, p1.s) == 0);
    CHECK(run(NULL, "%s predict %s %s --format csv --columns %s --out %s", es_bin(), model.s, DEEPCTR, spec, p2.s) == 0);
    CHECK_EQ_INT(count_lines(p1.s), 200);
    CHECK_MSG(same_file(p1.s, p2.s), "the CSV copy of a TSV file predicts differently");
}

TEST(schema_libffm_model_scores_rows_without_its_highest_field) {
    path_t model = tmp("schema_ffm.es"), f17 = tmp("schema_no17.libffm"), out = tmp("schema_ffm.txt");
    remove(model.s);
    CHECK(run(NULL, "%s train %s --model fm --storage full --valid-frac 0 --quiet --out %s", es_bin(), FFM_TRAIN, model.s) == 0);
    /* the same rows without field 17 (the model has fields 0..17) */
    CHECK(es_test_sh(NULL, "awk '{o=$1; for(i=2;i<=NF;i++) if ($i !~ /^17:/) o=o\" \"$i; print o}' %s > %s", FFM_TEST, f17.s) ==
          0);
    CHECK(es_test_sh(NULL, "! grep -q ' 17:' %s", f17.s) == 0);
    CHECK(run(NULL, "%s predict %s %s --out %s", es_bin(), model.s, f17.s, out.s) == 0);
    CHECK_EQ_INT(count_lines(out.s), 200);
    char *log = NULL;
    CHECK(run(&log, "%s eval %s %s", es_bin(), model.s, f17.s) == 0);
    CHECK_STR_HAS(log, "\"rows\":200");
    free(log);
    /* a field beyond the model's is a clear error */
    path_t f18 = tmp("schema_f18.libffm");
    CHECK(es_test_sh(NULL, "echo '1 0:5:1 18:3:1' > %s", f18.s) == 0);
    CHECK(run(&log, "%s predict %s %s", es_bin(), model.s, f18.s) != 0);
    CHECK_STR_HAS(log, "field 18 of term '18:3:1' is out of range (n_fields = 18)");
    free(log);
}

TEST(schema_csv_without_categorical_column_says_so) {
    path_t csv = tmp("schema_nocat.csv");
    CHECK(es_test_sh(NULL, "printf 'label,x,y\\n1,2,3\\n0,4,5\\n1,3,3\\n0,1,1\\n' > %s", csv.s) == 0);
    char *log = NULL;
    CHECK(run(&log, "%s train %s --columns label:label,x:num,y:num --storage full --quiet", es_bin(), csv.s) == 1);
    CHECK_STR_HAS(log, "no categorical column in the column spec/header");
    CHECK_STR_HAS(log, ":cat");
    CHECK(strstr(log, "out of memory") == NULL);
    free(log);
}

TEST(schema_ragged_vector_file_says_which_line) {
    /* a long first row and short rows after it: sizing the array by the
     * first row times the line count asked for ~80 GB before the second
     * row was looked at */
    path_t txt = tmp("schema_ragged.txt"), idx = tmp("schema_ragged.idx");
    FILE *f = fopen(txt.s, "w");
    CHECK(f != NULL);
    for (int i = 0; i < 200000; i++) fputs(i ? " 1" : "1", f);
    fputc('\n', f);
    for (int i = 0; i < 100000; i++) fputs("1 2\n", f);
    fclose(f);
    char *log = NULL;
    CHECK(run(&log, "%s index build %s -o %s", es_bin(), txt.s, idx.s) == 1);
    CHECK_STR_HAS(log, "schema_ragged.txt:2: 2 values, the first vector (line 1) has 200000");
    CHECK(strstr(log, "out of memory") == NULL);
    free(log);
}

TEST(schema_train_with_no_options_uses_the_studied_defaults) {
    char *log = NULL;
    int st = run(&log, "%s train %s --quiet", es_bin(), CRITEO);
    CHECK_MSG(st == 0, "exit %d", st);
    /* docs/training.md (round 3): LR, full table, FTRL, early stopping, refit */
    CHECK_STR_HAS(log, "{\"model\":\"lr\",\"storage\":\"full\",\"auc\":");
    CHECK_STR_HAS(log, "\"epochs\":100,");
    CHECK_STR_HAS(log, "\"refit\":true,");
    free(log);
    /* without validation rows: one epoch, no early stopping, no refit */
    st = run(&log, "%s train %s --valid-frac 0 --quiet", es_bin(), CRITEO);
    CHECK_MSG(st == 0, "exit %d", st);
    CHECK_STR_HAS(log, "\"epochs\":1,");
    CHECK_STR_HAS(log, "\"refit\":false,");
    CHECK(strstr(log, "best_epoch") == NULL);
    free(log);
    /* the automatic values, per model family */
    es_train_params p = es_train_params_default();
    es_train_params_resolve(&p);
    CHECK(!strcmp(p.model, "lr") && !strcmp(p.optim, "adagrad") && !strcmp(p.emb_optim, "ftrl"));
    CHECK(p.lr == 0.1f && p.batch == 64 && p.epochs == 100 && p.early_stop == 2 && p.refit == 1);
    CHECK(p.ftrl_alpha == 0.05f && p.ftrl_l1 == 0.01f && p.ftrl_l2 == 0.3f);
    p = es_train_params_default();
    p.model = "fm";
    es_train_params_resolve(&p);
    CHECK(p.dim == 4 && !strcmp(p.optim, "adam") && p.lr == 0.01f && !strcmp(p.emb_optim, "ftrl"));
    p = es_train_params_default();
    p.model = "dlrm";
    es_train_params_resolve(&p);
    CHECK(p.dim == 16 && !strcmp(p.optim, "adam") && p.lr == 0.001f && !strcmp(p.emb_optim, "rowwise"));
    p = es_train_params_default();
    p.optim = "adam";
    es_train_params_resolve(&p);
    CHECK(p.lr == 0.01f); /* lr with Adam: the rate of the other factorization models */
    /* and the help says which */
    CHECK(run(&log, "%s train --help", es_bin()) == 0);
    CHECK_STR_HAS(log, "default 0.1 of");
    free(log);
}

TEST(schema_layout_mismatch_errors_give_a_hint) {
    path_t model = tmp("schema_hint.es"), unl = tmp("schema_unl.tsv");
    remove(model.s);
    CHECK(run(NULL, "%s train %s --model lr --storage full --max-rows 2000 --valid-frac 0 --quiet --out %s", es_bin(), CRITEO,
              model.s) == 0);
    CHECK(es_test_sh(NULL, "head -n 50 %s | cut -f2- > %s", CRITEO, unl.s) == 0);
    char *log = NULL;
    /* the 39-column unlabeled layout without --unlabeled */
    CHECK(run(&log, "%s predict %s %s", es_bin(), model.s, unl.s) == 1);
    CHECK_STR_HAS(log, "schema_unl.tsv:1: expected 40 tab-separated columns, got 39");
    CHECK_STR_HAS(log, "Criteo TSV with a label (40 columns)");
    CHECK_STR_HAS(log, "pass --unlabeled");
    free(log);
    /* and the other way round */
    CHECK(run(&log, "%s predict %s %s --unlabeled", es_bin(), model.s, CRITEO) == 1);
    CHECK_STR_HAS(log, ":1: expected 39 tab-separated columns, got 40");
    CHECK_STR_HAS(log, "leave out --unlabeled");
    free(log);
    /* a CSV file given to a Criteo model */
    CHECK(run(&log, "%s eval %s %s", es_bin(), model.s, DEEPCTR) == 1);
    CHECK_STR_HAS(log, "criteo_deepctr_sample200.csv:1: expected 40 tab-separated columns, got 1");
    CHECK_STR_HAS(log, "looks like CSV");
    CHECK_STR_HAS(log, "this model reads Criteo TSV");
    CHECK_STR_HAS(log, "--format csv --columns");
    free(log);
}

TEST(schema_api_reader_params_and_note) {
    path_t csv, model;
    CHECK(movielens_model(&csv, &model) == 0);
    path_t re = tmp("schema_api_re.csv"), renamed = tmp("schema_api_renamed.csv");
    CHECK(es_test_sh(NULL, "awk -F, 'BEGIN{OFS=\",\"} {print $4,$2,\"z\",$1,$3}' %s > %s", csv.s, re.s) == 0);
    CHECK(es_test_sh(NULL, "(echo 'r,u,m,g'; tail -n +2 %s) > %s", csv.s, renamed.s) == 0);
    es_model *m = NULL;
    es_err err = {0};
    CHECK_MSG(es_model_load(&m, model.s, 0, &err) == 0, "%s", err.msg);
    es_metrics a, b, c;
    CHECK(es_model_eval_file(m, csv.s, &a) == 0);
    CHECK_EQ_INT(es_model_input_note(m)[0], 0);
    CHECK_MSG(es_model_eval_file(m, re.s, &b) == 0, "%s", es_model_errmsg(m));
    CHECK_STR_HAS(es_model_input_note(m), "1 column not read by the model is ignored: z");
    printf("    auc %.9f vs reordered %.9f\n", a.auc, b.auc);
    CHECK(a.auc == b.auc && a.logloss == b.logloss && a.rows == b.rows);
    /* other names: the model's spec fails, an override by position works */
    CHECK(es_model_eval_file(m, renamed.s, &c) == ES_EINVAL);
    CHECK_STR_HAS(es_model_errmsg(m), "are not columns of");
    es_reader_params rp = es_model_reader_params(m);
    rp.columns = "r:label,u:cat,m:cat,g:multi";
    CHECK(es_model_set_reader_params(m, &rp) == 0);
    CHECK_STR_HAS(es_model_reader_params(m).columns, "rating:label"); /* the trained settings are kept */
    CHECK_MSG(es_model_eval_file(m, renamed.s, &c) == 0, "%s", es_model_errmsg(m));
    CHECK(a.auc == c.auc && a.logloss == c.logloss);
    /* back to the model's own */
    CHECK(es_model_set_reader_params(m, NULL) == 0);
    CHECK(es_model_eval_file(m, renamed.s, &c) == ES_EINVAL);
    es_model_free(m);
}
