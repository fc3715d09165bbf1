/*
 * test_model_tensor.c — es_model_n_tensors / es_model_tensor: a model's
 * storage arrays in place (what the Python package's Model.table wraps as
 * a zero-copy numpy view).  Checked: the table is listed under its file
 * name with its dtype and shape, the pointer is the model's own memory (a
 * write through it changes es_model_embedding), the optimizer state is not
 * listed, an index out of range is ES_ERANGE with a message, and a
 * quantized model lists its codes.
 */
#include "test.h"

#include "embstore.h"

#define CRITEO "data/criteo_kaggle_train_first10k.tsv"

static const char *small_model(void) {
    static char path[1024];
    static int done = 0;
    if (done) return path;
    snprintf(path, sizeof path, "%s", es_test_path("tensor_view.es"));
    const char *log = es_test_path("tensor_view_train.log");
    int st = es_test_sh(log, "%s train %s --max-rows 2000 --model lr --storage hash --budget 64K --threads 1 --quiet --out %s",
                        es_bin(), CRITEO, path);
    if (st != 0) {
        char *s = es_test_slurp(log);
        es_test_fail(__FILE__, __LINE__, "training the test model failed (exit %d): %s", st, s ? s : "");
        free(s);
        return NULL;
    }
    done = 1;
    return path;
}

TEST(model_tensor_is_the_models_own_table) {
    const char *path = small_model();
    if (!path) return;
    es_err err = {0};
    es_model *m = NULL;
    CHECK_MSG(es_model_load(&m, path, ES_LOAD_MAP, &err) == ES_OK, "%s", err.msg);
    int n = es_model_n_tensors(m);
    printf("    %d storage tensors\n", n);
    CHECK(n >= 1);
    int wi = -1;
    float *w = NULL;
    uint64_t rows = 0, cols = 0;
    for (int i = 0; i < n; i++) {
        const char *name, *dtype;
        int nd;
        uint64_t shape[4];
        void *data;
        CHECK_EQ_INT(es_model_tensor(m, i, &name, &dtype, &nd, shape, &data), ES_OK);
        printf("    %s %s ndim %d [%llu, %llu]\n", name, dtype, nd, (unsigned long long)shape[0],
               (unsigned long long)shape[1]);
        CHECK(!strncmp(name, "storage.", 8));
        CHECK(strncmp(name, "opt.", 4) != 0);
        if (!strcmp(name, "storage.weight") && !strcmp(dtype, "f32") && nd == 2) wi = i, w = data, rows = shape[0], cols = shape[1];
    }
    CHECK_MSG(wi >= 0, "no f32 storage.weight among %d tensors", n);
    CHECK_EQ_INT(cols, es_model_emb_dim(m));
    CHECK(rows > 0);
    /* A write through the pointer is what the model looks up. */
    uint64_t key = es_key("abc", 3);
    int E = es_model_emb_dim(m);
    float before[64], after[64];
    CHECK(E <= 64);
    CHECK_EQ_INT(es_model_embedding(m, 2, key, before), ES_OK);
    for (uint64_t i = 0; i < rows * cols; i++) w[i] = 2.0f * w[i] + 1.0f;
    CHECK_EQ_INT(es_model_embedding(m, 2, key, after), ES_OK);
    for (int d = 0; d < E; d++) CHECK_MSG(after[d] == 2.0f * before[d] + 1.0f, "dim %d: %g then %g", d, before[d], after[d]);
    /* Out of range. */
    CHECK_EQ_INT(es_model_tensor(m, n, NULL, NULL, NULL, NULL, NULL), ES_ERANGE);
    CHECK(strstr(es_model_errmsg(m), "out of range") != NULL);
    CHECK_EQ_INT(es_model_tensor(m, -1, NULL, NULL, NULL, NULL, NULL), ES_ERANGE);
    /* The file is untouched (copy-on-write): a fresh load sees the old rows. */
    es_model *m2 = NULL;
    CHECK_MSG(es_model_load(&m2, path, 0, &err) == ES_OK, "%s", err.msg);
    float again[64];
    CHECK_EQ_INT(es_model_embedding(m2, 2, key, again), ES_OK);
    CHECK(memcmp(again, before, (size_t)E * sizeof(float)) == 0);
    /* Quantized: the codes are listed (u8), not floats. */
    CHECK_MSG(es_model_quantize(m2, "int8", &err) == ES_OK, "%s", err.msg);
    int found_q = 0;
    for (int i = 0; i < es_model_n_tensors(m2); i++) {
        const char *name, *dtype;
        CHECK_EQ_INT(es_model_tensor(m2, i, &name, &dtype, NULL, NULL, NULL), ES_OK);
        if (!strcmp(name, "storage.weight.q")) found_q = !strcmp(dtype, "u8");
        CHECK(strcmp(name, "storage.weight") != 0 || strcmp(dtype, "f32") != 0);
    }
    CHECK(found_q);
    es_model_free(m2);
    es_model_free(m);
    CHECK_EQ_INT(es_model_n_tensors(NULL), 0);
}
