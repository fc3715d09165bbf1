/* resume_harness.c — see resume_harness.h. */
#include "resume_harness.h"

#include "test.h"

#include <string.h>

static int steps(es_model *m, es_reader *r, es_batch *b, int batches) {
    for (int i = 0; i < batches; i++)
        if (es_reader_next(r, b) <= 0 || es_model_train_batch(m, b, NULL) != 0) return -1;
    return 0;
}

void es_test_checkpoint_continues(es_model_params mp, const char *tag) {
    es_set_threads(1);
    es_err err = {0};
    es_reader *r = NULL;
    CHECK(es_reader_open(&r, "data/criteo_kaggle_train_first10k.tsv", NULL, &err) == 0);
    mp.n_dense = es_reader_n_dense(r);
    mp.n_fields = es_reader_n_fields(r);
    es_batch b = {0};
    es_model *m = NULL, *c = NULL;
    float p1[64], p2[64];
    int reported = 0;
    int ok = es_batch_alloc(&b, 64, mp.n_dense, mp.n_fields, 0) == 0;
    if (ok && es_model_create(&m, &mp, NULL, &err) != 0) {
        es_test_fail(__FILE__, __LINE__, "%s: %s", tag, err.msg);
        ok = 0;
        reported = 1;
    }
    es_checkpoint pos = {0, 320, 320, 1.0}, back = {0};
    const char *path = es_test_path("resume_harness.ckpt");
    ok = ok && steps(m, r, &b, 5) == 0 && es_model_checkpoint_save(m, path, &pos) == 0 && steps(m, r, &b, 7) == 0;
    if (ok && es_model_checkpoint_load(&c, path, &back, &err) != 0) {
        es_test_fail(__FILE__, __LINE__, "%s: %s", tag, err.msg);
        ok = 0;
        reported = 1;
    }
    ok = ok && es_reader_rewind(r) == 0;
    for (int i = 0; ok && i < 5; i++) ok = es_reader_next(r, &b) > 0;
    ok = ok && steps(c, r, &b, 7) == 0 && es_reader_rewind(r) == 0 && es_reader_next(r, &b) > 0;
    ok = ok && es_model_predict_batch(m, &b, p1) == 0 && es_model_predict_batch(c, &b, p2) == 0;
    if (ok && memcmp(p1, p2, sizeof p1) != 0) {
        es_test_fail(__FILE__, __LINE__, "%s: resumed model differs: %.9g vs %.9g", tag, p1[0], p2[0]);
        ok = 0;
        reported = 1;
    }
    /* a plain model file predicts the same */
    es_model_free(c);
    c = NULL;
    const char *file = es_test_path("resume_harness.es");
    ok = ok && es_model_save(m, file, 0) == 0 && es_model_load(&c, file, 0, &err) == 0 && es_model_predict_batch(c, &b, p2) == 0;
    if (ok && memcmp(p1, p2, sizeof p1) != 0) es_test_fail(__FILE__, __LINE__, "%s: saved and loaded model differs", tag);
    else if (!ok && !reported) es_test_fail(__FILE__, __LINE__, "%s: a training, checkpoint or save step failed", tag);
    es_model_free(m);
    es_model_free(c);
    es_batch_free(&b);
    es_reader_free(r);
}
