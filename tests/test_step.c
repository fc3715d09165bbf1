/*
 * test_step.c — the step-level model API (embstore.h): a program that owns
 * the loop gets what es_train gets.
 *
 *   - create → train_batch → save → load → predict_batch through the public
 *     calls only gives the same bits as es_train with the same settings, on
 *     one thread (the promise of docs/api.md), for every model kind;
 *   - a checkpoint saved mid-run and loaded continues to the same bits as
 *     the run that never stopped;
 *   - every documented error: bad parameters, a batch of the wrong shape
 *     or size, a reserved metadata key, a model file as a checkpoint;
 *   - the example program examples/train_predict.c (linked to the shared
 *     library) writes the predictions `embstore train` + `embstore predict`
 *     write, byte for byte.
 * Bit-for-bit comparisons here hold on one machine, one binary, one thread.
 */
#include "test.h"

#include "embstore.h"

#include <libgen.h>

#define CRITEO "data/criteo_kaggle_train_first10k.tsv"

static const char *small_file(void) {
    static char path[4096];
    if (!path[0]) {
        snprintf(path, sizeof path, "%s", es_test_path("step_3000.tsv"));
        if (es_test_sh(NULL, "head -n 3000 %s > %s", CRITEO, path) != 0) path[0] = 0;
    }
    return path;
}

/* Train through the step API on every row of `path` (one epoch after a
 * vocabulary pass, as es_train does with --valid-frac 0), save to out. */
static int step_train(const char *path, const es_model_params *base, const char *out, double *loss, uint64_t *rows) {
    es_err err = {0};
    es_reader *r = NULL;
    es_vocab *v = NULL;
    es_model *m = NULL;
    es_batch b = {0};
    int n, rc = -1;
    if (es_reader_open(&r, path, NULL, &err) != 0) return -1;
    es_model_params mp = *base;
    mp.n_dense = es_reader_n_dense(r);
    mp.n_fields = es_reader_n_fields(r);
    if (es_batch_alloc(&b, mp.batch, mp.n_dense, mp.n_fields, 0) != 0 || es_vocab_create(&v, mp.n_fields) != 0) goto out;
    while ((n = es_reader_next(r, &b)) > 0) es_vocab_add_batch(v, &b);
    if (es_model_create(&m, &mp, v, &err) != 0) {
        es_test_fail(__FILE__, __LINE__, "create: %s", err.msg);
        goto out;
    }
    if (es_model_set_reader(m, r) != 0 || es_reader_rewind(r) != 0) goto out;
    *loss = 0;
    *rows = 0;
    while ((n = es_reader_next(r, &b)) > 0) {
        if (es_model_train_batch(m, &b, loss) != 0) goto out;
        *rows += (uint64_t)n;
    }
    rc = es_model_save(m, out, 0);
out:
    es_batch_free(&b);
    es_model_free(m);
    es_vocab_free(v);
    es_reader_free(r);
    return rc;
}

/* Probabilities of every row of path from the model file. */
static float *predict_all(const char *model, const char *path, size_t *count) {
    es_err err = {0};
    es_model *m = NULL;
    es_reader *r = NULL;
    es_batch b = {0};
    float *p = NULL;
    size_t n = 0;
    int got;
    if (es_model_load(&m, model, 0, &err) != 0) return NULL;
    es_reader_params rp = es_model_reader_params(m);
    if (es_reader_open(&r, path, &rp, &err) == 0 && es_batch_alloc(&b, 100, es_model_n_dense(m), es_model_n_fields(m), 0) == 0) {
        p = malloc(10000 * sizeof *p);
        while ((got = es_reader_next(r, &b)) > 0 && n + (size_t)got <= 10000 && es_model_predict_batch(m, &b, p + n) == 0)
            n += (size_t)got;
    }
    es_batch_free(&b);
    es_reader_free(r);
    es_model_free(m);
    *count = n;
    return p;
}

TEST(step_api_equals_es_train_bitwise) {
    static const char *models[] = {"lr", "fm", "dlrm", "dcn", "ffm"};
    static const char *methods[] = {"hash", "unified", "full", "qr", "unified"};
    const char *data = small_file();
    CHECK(data[0]);
    es_set_threads(1);
    for (size_t i = 0; i < sizeof models / sizeof *models; i++) {
        es_train_params tp = es_train_params_basic();
        tp.train_path = data;
        tp.model = models[i];
        tp.storage = methods[i];
        tp.dim = 8;
        tp.threads = 1;
        tp.seed = 7 + i;
        tp.out_path = es_test_path("step_cli.es");
        es_train_result res;
        es_err err = {0};
        CHECK_MSG(es_train(&tp, &res, &err) == 0, "%s", err.msg);

        es_model_params mp = es_model_params_from_train(&tp, 0, 0);
        double loss = 0;
        uint64_t rows = 0;
        CHECK(step_train(data, &mp, es_test_path("step_api.es"), &loss, &rows) == 0);
        CHECK_EQ_INT((long long)rows, (long long)res.train_rows);
        CHECK_MSG(loss / (double)rows == res.train_loss, "%s: loss %.17g vs es_train %.17g", models[i], loss / (double)rows,
                  res.train_loss);
        size_t n1 = 0, n2 = 0;
        float *p1 = predict_all(es_test_path("step_cli.es"), data, &n1);
        float *p2 = predict_all(es_test_path("step_api.es"), data, &n2);
        CHECK(p1 && p2 && n1 == 3000 && n2 == 3000);
        size_t diff = 0;
        for (size_t k = 0; p1 && p2 && k < n1 && k < n2; k++) diff += memcmp(&p1[k], &p2[k], sizeof(float)) != 0;
        CHECK_MSG(diff == 0, "%s + %s: %zu of %zu predictions differ", models[i], methods[i], diff, n1);
        printf("    %-4s + %-7s: %zu predictions equal bit for bit, train loss %.6f\n", models[i], methods[i], n1, res.train_loss);
        free(p1);
        free(p2);
    }
}

/* Train `batches` batches from the reader's position. */
static int steps(es_model *m, es_reader *r, es_batch *b, int batches) {
    for (int i = 0; i < batches; i++)
        if (es_reader_next(r, b) <= 0 || es_model_train_batch(m, b, NULL) != 0) return -1;
    return 0;
}

TEST(step_api_checkpoint_continues_bitwise) {
    es_set_threads(1);
    es_err err = {0};
    es_reader *r = NULL;
    CHECK(es_reader_open(&r, small_file(), NULL, &err) == 0);
    es_model_params mp = es_model_params_default();
    mp.storage = "hash";
    mp.budget = 20000;
    mp.batch = 64;
    mp.n_dense = es_reader_n_dense(r);
    mp.n_fields = es_reader_n_fields(r);
    es_batch b = {0};
    CHECK(es_batch_alloc(&b, 64, mp.n_dense, mp.n_fields, 0) == 0);
    es_model *m = NULL, *c = NULL;
    CHECK_MSG(es_model_create(&m, &mp, NULL, &err) == 0, "%s", err.msg);
    CHECK(steps(m, r, &b, 5) == 0);
    es_checkpoint pos = {0, 320, 320, 12.5}, back = {0};
    CHECK(es_model_checkpoint_save(m, es_test_path("step.ckpt"), &pos) == 0);
    CHECK(steps(m, r, &b, 5) == 0); /* the run that never stopped */
    CHECK_MSG(es_model_checkpoint_load(&c, es_test_path("step.ckpt"), &back, &err) == 0, "%s", err.msg);
    CHECK(back.epoch == 0 && back.rows == 320 && back.trained == 320 && back.loss_sum == 12.5);
    CHECK(es_reader_rewind(r) == 0);
    for (int i = 0; i < 5; i++) CHECK(es_reader_next(r, &b) > 0); /* the rows the checkpoint has seen */
    CHECK(steps(c, r, &b, 5) == 0);
    es_reader_rewind(r);
    CHECK(es_reader_next(r, &b) > 0);
    float p1[64], p2[64];
    CHECK(es_model_predict_batch(m, &b, p1) == 0 && es_model_predict_batch(c, &b, p2) == 0);
    CHECK_MSG(memcmp(p1, p2, sizeof p1) == 0, "resumed model differs: %.9g vs %.9g", p1[0], p2[0]);
    /* a model file without optimizer state is not a checkpoint */
    CHECK(es_model_save(m, es_test_path("step_plain.es"), 0) == 0);
    es_model *bad = NULL;
    CHECK_EQ_INT(es_model_checkpoint_load(&bad, es_test_path("step_plain.es"), &back, &err), ES_EFORMAT);
    CHECK(bad == NULL);
    CHECK_STR_HAS(err.msg, "not a training checkpoint");
    es_model_free(m);
    es_model_free(c);
    es_batch_free(&b);
    es_reader_free(r);
}

TEST(step_api_errors) {
    es_err err = {0};
    es_model *m = NULL;
    es_model_params mp = es_model_params_default();
    mp.n_dense = 2;
    mp.n_fields = 3;
    mp.storage = "hash";
    mp.budget = 10000;
    mp.batch = 8;
    es_model_params bad = mp;
    bad.dim = 0;
    CHECK_EQ_INT(es_model_create(&m, &bad, NULL, &err), ES_EINVAL);
    CHECK_STR_HAS(err.msg, "dim 0");
    bad = mp;
    bad.model = "gbdt";
    CHECK_EQ_INT(es_model_create(&m, &bad, NULL, &err), ES_EINVAL);
    CHECK_STR_HAS(err.msg, "unknown model 'gbdt'");
    bad = mp;
    bad.storage = "nope";
    CHECK_EQ_INT(es_model_create(&m, &bad, NULL, &err), ES_EINVAL);
    CHECK_STR_HAS(err.msg, "unknown storage method 'nope'");
    bad = mp;
    bad.n_fields = 0;
    CHECK_EQ_INT(es_model_create(&m, &bad, NULL, &err), ES_EINVAL);
    bad = mp;
    bad.emb_optim = "adam";
    CHECK_EQ_INT(es_model_create(&m, &bad, NULL, &err), ES_EINVAL);
    bad = mp;
    bad.storage = "full"; /* sizes itself from a vocabulary */
    CHECK(es_model_create(&m, &bad, NULL, &err) != 0);
    CHECK(m == NULL);

    CHECK_MSG(es_model_create(&m, &mp, NULL, &err) == 0, "%s", err.msg);
    es_batch b = {0}, wrong = {0};
    CHECK(es_batch_alloc(&b, 16, 2, 3, 0) == 0);
    CHECK(es_batch_alloc(&wrong, 4, 1, 3, 0) == 0);
    for (int r = 0; r < 16; r++) {
        b.label[r] = (float)(r & 1);
        b.dense[2 * r] = 0.5f;
        b.dense[2 * r + 1] = (float)r;
        for (int f = 0; f < 3; f++) {
            b.off[r * 3 + f] = (uint32_t)(r * 3 + f);
            b.val[r * 3 + f] = (uint64_t)(r * 31 + f);
            b.wt[r * 3 + f] = 1.0f;
        }
    }
    b.off[48] = 48;
    b.n = 16; /* more than the model's batch of 8 */
    CHECK_EQ_INT(es_model_train_batch(m, &b, NULL), ES_EINVAL);
    CHECK_STR_HAS(es_model_errmsg(m), "1 to 8 rows");
    b.n = 0;
    CHECK_EQ_INT(es_model_train_batch(m, &b, NULL), ES_EINVAL);
    b.n = 8;
    double loss = 0;
    CHECK(es_model_train_batch(m, &b, &loss) == 0 && loss > 0);
    wrong.n = 1;
    float prob[16];
    CHECK_EQ_INT(es_model_predict_batch(m, &wrong, prob), ES_EINVAL);
    CHECK_STR_HAS(es_model_errmsg(m), "the model expects 2 and 3");
    b.n = 16; /* prediction takes any batch size */
    double eloss = 0;
    CHECK(es_model_eval_batch(m, &b, prob, &eloss) == 0 && eloss > 0);
    for (int r = 0; r < 16; r++) CHECK(prob[r] > 0 && prob[r] < 1);
    CHECK_EQ_INT(es_model_set_meta(m, "model.dim", "3"), ES_EINVAL);
    CHECK_EQ_INT(es_model_set_meta(m, "user.", "x"), ES_EINVAL);
    CHECK(es_model_set_meta(m, "user.run", "42") == 0);
    CHECK(es_model_save(m, es_test_path("step_meta.es"), 0) == 0);
    es_model *l = NULL;
    CHECK(es_model_load(&l, es_test_path("step_meta.es"), 0, &err) == 0);
    CHECK(l && es_model_meta(l, "user.run") && strcmp(es_model_meta(l, "user.run"), "42") == 0);
    es_checkpoint neg = {-1, 0, 0, 0};
    CHECK_EQ_INT(es_model_checkpoint_save(m, es_test_path("step_neg.ckpt"), &neg), ES_EINVAL);
    CHECK_EQ_INT(es_model_save(m, es_test_path("no_such_dir/x.es"), 0), ES_EIO);
    es_model_free(l);
    es_model_free(m);
    es_model_free(NULL);
    es_batch_free(&b);
    es_batch_free(&wrong);
}

TEST_SLOW(example_program_matches_cli) {
    const char *bin = es_bin();
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", bin);
    const char *d = dirname(dir);
    char log[4096];
    snprintf(log, sizeof log, "%s", es_test_path("example.log"));
    CHECK_MSG(es_test_sh(log, "%s/examples/train_predict %s $ES_T/ex.es $ES_T/ex.pred 1", d, CRITEO) == 0, "%s",
              es_test_slurp(log));
    CHECK(es_test_sh(NULL,
                     "%s train %s --valid-frac 0 --model dlrm --storage unified --budget 0.1 --epochs 1 --seed 1 "
                     "--dim 16 --emb-optim rowwise --batch 256 --lr 0.001 "
                     "--threads 1 --quiet --out $ES_T/ex_cli.es && %s predict $ES_T/ex_cli.es %s --out $ES_T/ex_cli.pred",
                     bin, CRITEO, bin, CRITEO) == 0);
    CHECK_MSG(es_test_sh(NULL, "cmp $ES_T/ex.pred $ES_T/ex_cli.pred") == 0, "the example's predictions differ from the CLI's");
    CHECK(es_test_sh(NULL, "test $(wc -l < $ES_T/ex.pred) -eq 10000") == 0);
}
