/*
 * test_dropout.c — inverted dropout on the hidden MLP units of DLRM and DCN
 * (es_model_params.dropout, `train --dropout P`, docs/models.md):
 *
 *   - the mask kernel: drop rate p, kept units scaled by exactly 1/(1-p),
 *     the same mask for the same key;
 *   - finite-difference gradients of the whole net through the training
 *     forward (masks held fixed: no step between the calls), DLRM and DCN;
 *   - the inference forward never drops: a net with dropout gives the bits
 *     of the same net without it, before and after a training forward;
 *   - through the public API: a checkpoint resumes to the same bits (the
 *     mask counter is restored), a saved and loaded model predicts the
 *     bits the trained one predicts, and the rate is kept in the file;
 *   - the CLI: two --threads 1 runs give the same model file, --threads 2
 *     the same metrics within a stated tolerance (the masks do not depend
 *     on threads, OpenBLAS's threaded backward sums may);
 *   - errors: --dropout 1, -0.1, abc, and dropout with lr/fm/ffm.
 */
#include "test.h"

#include "core/core.h"
#include "embstore.h"
#include "model/layers.h"
#include "model/net.h"

#define CRITEO "data/criteo_kaggle_train_first10k.tsv"

/* ---- the mask kernel --------------------------------------------------------------- */

TEST(dropout_mask_rate_and_scale) {
    const int n = 300, w = 100;
    const float p = 0.3f;
    float *x = malloc(sizeof(float) * n * w), *y = malloc(sizeof(float) * n * w);
    CHECK(x && y);
    for (int i = 0; i < n * w; i++) x[i] = y[i] = 1.0f;
    es__dropout_forward(x, n, w, p, 12345);
    es__dropout_forward(y, n, w, p, 12345);
    int zeros = 0, same = memcmp(x, y, sizeof(float) * n * w) == 0;
    for (int i = 0; i < n * w; i++) {
        if (x[i] == 0.0f) zeros++;
        else CHECK_MSG(x[i] == 1.0f / (1.0f - p), "kept unit %d is %.9g, not 1/(1-p)", i, x[i]);
    }
    double rate = (double)zeros / (n * w);
    printf("    drop rate %.4f (p = %.2f)\n", rate, (double)p);
    CHECK(same);
    CHECK_NEAR(rate, p, 0.015);
    for (int i = 0; i < n * w; i++) y[i] = 1.0f;
    es__dropout_forward(y, n, w, p, 12346); /* another key: another mask */
    CHECK(memcmp(x, y, sizeof(float) * n * w) != 0);
    free(x);
    free(y);
}

/* ---- net gradients ------------------------------------------------------------------- */

typedef struct {
    es_net *net;
    int n;
    float *emb, *dense, *logit, *c;
} ctx;

static double train_loss(void *p) {
    ctx *t = p;
    es__net_forward_train(t->net, t->n, t->emb, t->dense, t->logit);
    double s = 0;
    for (int i = 0; i < t->n; i++) s += (double)t->c[i] * t->logit[i];
    return s;
}

/* Central differences as in test_model.c (elements on a ReLU kink skipped,
 * at most a quarter of them). */
static int fd_check(const char *what, float *x, const float *g, size_t count, ctx *t) {
    double l0 = train_loss(t);
    size_t skipped = 0, failed = 0;
    for (size_t i = 0; i < count; i++) {
        float old = x[i];
        x[i] = (float)(old + 1e-3);
        double hp = (double)x[i] - old, lp = train_loss(t);
        x[i] = (float)(old - 1e-3);
        double hm = old - (double)x[i], lm = train_loss(t);
        x[i] = old;
        double fwd = (lp - l0) / hp, bwd = (l0 - lm) / hm, fd = (lp - lm) / (hp + hm);
        if (!es_test_close(fwd, bwd, 2e-3, 2e-2)) {
            skipped++;
            continue;
        }
        if (!es_test_close(g[i], fd, 5e-4, 5e-3)) {
            if (failed < 5) printf("    %s[%zu]: analytic %.7g vs finite difference %.7g\n", what, i, g[i], fd);
            failed++;
        }
    }
    if (skipped * 4 > count) {
        printf("    %s: %zu of %zu elements sit on ReLU kinks\n", what, skipped, count);
        failed++;
    }
    return (int)failed;
}

static int check_net(const es_net_params *p, int n, uint64_t seed) {
    es_net *net = NULL;
    es_err err = {0};
    if (es__net_create(&net, p, &err) != 0) {
        printf("    create: %s\n", err.msg);
        return 1;
    }
    es_rng r;
    es__rng_seed(&r, seed);
    int E = es__net_emb_dim(p->kind, p->n_fields, p->dim), D = p->n_dense, F = p->n_fields;
    size_t ne = (size_t)n * F * E;
    float *emb = malloc(ne * sizeof(float)), *dense = malloc(((size_t)n * D + 1) * sizeof(float));
    float *logit = malloc((size_t)n * sizeof(float)), *c = malloc((size_t)n * sizeof(float));
    float *demb = malloc(ne * sizeof(float)), *plain = malloc((size_t)n * sizeof(float));
    es__rng_fill_uniform(&r, es__net_params_ptr(net), es__net_n_params(net), 0.6f);
    es__rng_fill_uniform(&r, emb, ne, 1);
    es__rng_fill_uniform(&r, dense, (size_t)n * D, 1);
    es__rng_fill_uniform(&r, c, (size_t)n, 1);
    ctx t = {net, n, emb, D ? dense : NULL, logit, c};
    int bad = 0;
    /* the masks must change something, or this checks nothing new */
    es__net_forward(net, n, emb, t.dense, plain);
    train_loss(&t);
    if (memcmp(plain, logit, (size_t)n * sizeof(float)) == 0) {
        printf("    %s: dropout changed no logit\n", es__net_kind_name(p->kind));
        bad++;
    }
    train_loss(&t);
    es__net_zero_grad(net);
    es__net_backward(net, n, emb, t.dense, c, demb);
    char what[64];
    snprintf(what, sizeof what, "%s p=%.2f", es__net_kind_name(p->kind), (double)p->dropout);
    bad += fd_check(what, es__net_params_ptr(net), es__net_grads_ptr(net), es__net_n_params(net), &t);
    bad += fd_check(what, emb, demb, ne, &t);
    free(emb), free(dense), free(logit), free(c), free(demb), free(plain);
    es__net_free(net);
    return bad;
}

TEST(dropout_net_gradients_dlrm_dcn) {
    static const float ps[] = {0.2f, 0.5f};
    for (int i = 0; i < 2; i++) {
        es_net_params p = es__net_params_default(ES_NET_DLRM, 4, 3, 3);
        p.bottom[0] = 7;
        p.bottom[1] = 3;
        p.n_bottom = 2;
        p.top[0] = 8;
        p.top[1] = 5;
        p.n_top = 2;
        p.max_batch = 6;
        p.dropout = ps[i];
        CHECK_MSG(check_net(&p, 6, 40 + i) == 0, "dlrm p=%g", (double)ps[i]);
        es_net_params q = es__net_params_default(ES_NET_DCN, 3, 3, 3);
        q.n_cross = 2;
        q.top[0] = 8;
        q.top[1] = 5;
        q.n_top = 2;
        q.max_batch = 6;
        q.dropout = ps[i];
        CHECK_MSG(check_net(&q, 6, 50 + i) == 0, "dcn p=%g", (double)ps[i]);
    }
}

/* es__net_forward is the inference path: a net with dropout gives the
 * bits of the same weights without it, also after a training forward. */
TEST(dropout_inference_forward_never_drops) {
    for (int kind = 0; kind < 2; kind++) {
        es_net_params p = es__net_params_default(kind ? ES_NET_DCN : ES_NET_DLRM, 13, 5, 4);
        p.max_batch = 17;
        es_net_params q = p;
        q.dropout = 0.4f;
        es_net *a = NULL, *b = NULL;
        es_err err = {0};
        CHECK(es__net_create(&a, &p, &err) == 0 && es__net_create(&b, &q, &err) == 0);
        memcpy(es__net_params_ptr(b), es__net_params_ptr(a), es__net_param_bytes(a));
        es_rng r;
        es__rng_seed(&r, 9);
        float emb[17 * 5 * 4], dense[17 * 13], la[17], lb[17], lt[17];
        es__rng_fill_uniform(&r, emb, ES_ARRAY_LEN(emb), 1);
        es__rng_fill_uniform(&r, dense, ES_ARRAY_LEN(dense), 1);
        es__net_forward(a, 17, emb, dense, la);
        es__net_forward(b, 17, emb, dense, lb);
        CHECK(memcmp(la, lb, sizeof la) == 0);
        es__net_forward_train(b, 17, emb, dense, lt);
        CHECK(memcmp(la, lt, sizeof la) != 0);
        es__net_forward(b, 17, emb, dense, lb);
        CHECK(memcmp(la, lb, sizeof la) == 0);
        /* dropout 0: the training forward is the inference forward */
        es__net_forward_train(a, 17, emb, dense, lt);
        CHECK(memcmp(la, lt, sizeof la) == 0);
        /* the counter is listed with the optimizer state, with dropout only */
        es_tensor_ref refs[128];
        int na = es__net_tensors(a, refs, 128), nb = es__net_tensors(b, refs, 128);
        CHECK_EQ_INT(nb, na + 1);
        CHECK(strcmp(refs[nb - 1].name, "opt.net.dropout_step") == 0 && refs[nb - 1].dtype == ES_DT_I64);
        es__net_free(a);
        es__net_free(b);
    }
}

/* ---- public API: checkpoint resume, save/load ----------------------------------------- */

static const char *small_file(void) {
    static char path[4096];
    if (!path[0]) {
        snprintf(path, sizeof path, "%s", es_test_path("dropout_3000.tsv"));
        if (es_test_sh(NULL, "head -n 3000 %s > %s", CRITEO, path) != 0) path[0] = 0;
    }
    return path;
}

static int steps(es_model *m, es_reader *r, es_batch *b, int k) {
    for (int i = 0; i < k; i++) {
        if (es_reader_next(r, b) <= 0) return -1;
        if (es_model_train_batch(m, b, NULL) != 0) return -1;
    }
    return 0;
}

TEST(dropout_api_resume_and_save_load_bitwise) {
    static const char *models[] = {"dlrm", "dcn"};
    es_set_threads(1);
    for (int mi = 0; mi < 2; mi++) {
        es_err err = {0};
        es_reader *r = NULL;
        CHECK(es_reader_open(&r, small_file(), NULL, &err) == 0);
        es_model_params mp = es_model_params_default();
        mp.model = models[mi];
        mp.storage = "hash";
        mp.budget = 20000;
        mp.batch = 64;
        mp.n_dense = es_reader_n_dense(r);
        mp.n_fields = es_reader_n_fields(r);
        mp.dropout = 0.3f;
        es_batch b = {0};
        CHECK(es_batch_alloc(&b, 64, mp.n_dense, mp.n_fields, 0) == 0);
        es_model *m = NULL, *c = NULL, *z = NULL, *l = NULL;
        CHECK_MSG(es_model_create(&m, &mp, NULL, &err) == 0, "%s", err.msg);
        CHECK(steps(m, r, &b, 5) == 0);
        es_checkpoint pos = {0, 320, 320, 1.0}, back = {0};
        CHECK(es_model_checkpoint_save(m, es_test_path("dropout.ckpt"), &pos) == 0);
        CHECK(steps(m, r, &b, 5) == 0); /* the run that never stopped */
        CHECK_MSG(es_model_checkpoint_load(&c, es_test_path("dropout.ckpt"), &back, &err) == 0, "%s", err.msg);
        CHECK(es_reader_rewind(r) == 0);
        for (int i = 0; i < 5; i++) CHECK(es_reader_next(r, &b) > 0);
        CHECK(steps(c, r, &b, 5) == 0);
        /* the same run without dropout: dropout did change the training */
        mp.dropout = 0;
        CHECK(es_reader_rewind(r) == 0);
        CHECK_MSG(es_model_create(&z, &mp, NULL, &err) == 0, "%s", err.msg);
        CHECK(steps(z, r, &b, 10) == 0);
        es_reader_rewind(r);
        CHECK(es_reader_next(r, &b) > 0);
        float p1[64], p2[64], p3[64], p4[64], p5[64];
        CHECK(es_model_predict_batch(m, &b, p1) == 0 && es_model_predict_batch(c, &b, p2) == 0);
        CHECK_MSG(memcmp(p1, p2, sizeof p1) == 0, "%s: resumed model differs: %.9g vs %.9g", models[mi], p1[0], p2[0]);
        CHECK(es_model_predict_batch(z, &b, p3) == 0);
        CHECK_MSG(memcmp(p1, p3, sizeof p1) != 0, "%s: dropout 0.3 trained the same bits as dropout 0", models[mi]);
        /* predict twice: no randomness at inference */
        CHECK(es_model_predict_batch(m, &b, p4) == 0);
        CHECK(memcmp(p1, p4, sizeof p1) == 0);
        /* saved (no optimizer state) and loaded: the same predictions, the rate kept */
        CHECK(es_model_save(m, es_test_path("dropout.es"), 0) == 0);
        CHECK_MSG(es_model_load(&l, es_test_path("dropout.es"), 0, &err) == 0, "%s", err.msg);
        CHECK(es_model_predict_batch(l, &b, p5) == 0);
        CHECK(memcmp(p1, p5, sizeof p1) == 0);
        const char *dv = es_model_meta(l, "model.dropout");
        CHECK_MSG(dv && fabs(atof(dv) - 0.3) < 1e-6, "model.dropout = %s", dv ? dv : "(absent)");
        es_model_free(m);
        es_model_free(c);
        es_model_free(z);
        es_model_free(l);
        es_batch_free(&b);
        es_reader_free(r);
    }
}

/* ---- CLI --------------------------------------------------------------------------------- */

static int cli_train(const char *log, const char *model, const char *extra) {
    return es_test_sh(log, "%s train %s --model %s --storage hash --budget 50000 --epochs 2 --batch 128 --seed 3 --out %s %s",
                      es_bin(), small_file(), model, es_test_path("dropout_cli.es"), extra);
}

TEST_SLOW(dropout_cli_threads_and_repeatable) {
    CHECK(small_file()[0]);
    static const char *models[] = {"dlrm", "dcn"};
    for (int mi = 0; mi < 2; mi++) {
        char *log[3];
        const char *logs[3] = {es_test_path("dropout_t1a.log"), es_test_path("dropout_t1b.log"), es_test_path("dropout_t2.log")};
        const char *outs[2] = {es_test_path("dropout_t1a.es"), es_test_path("dropout_t1b.es")};
        for (int i = 0; i < 3; i++) {
            int rc = cli_train(logs[i], models[mi], i < 2 ? "--dropout 0.2 --threads 1" : "--dropout 0.2 --threads 2");
            log[i] = es_test_slurp(logs[i]);
            CHECK_MSG(rc == 0, "%s run %d: %s", models[mi], i, log[i] ? log[i] : "");
            if (i < 2) CHECK(es_test_sh(NULL, "cp %s %s", es_test_path("dropout_cli.es"), outs[i]) == 0);
        }
        double auc[3], ll[3];
        for (int i = 0; i < 3; i++) {
            const char *j = es_test_last_line(log[i]);
            auc[i] = es_test_json_num(j, "auc");
            ll[i] = es_test_json_num(j, "logloss");
        }
        printf("    %s AUC: threads 1 %.6f, again %.6f, threads 2 %.6f\n", models[mi], auc[0], auc[1], auc[2]);
        /* one thread: repeatable to the byte */
        CHECK_MSG(es_test_sh(NULL, "cmp %s %s", outs[0], outs[1]) == 0, "%s: two --threads 1 runs differ", models[mi]);
        CHECK(auc[0] == auc[1] && ll[0] == ll[1]);
        /* two threads: the same masks; only the backward's summation order
         * may differ (docs/determinism.md), so metrics within 0.01 */
        CHECK_NEAR(auc[2], auc[0], 0.01);
        CHECK_NEAR(ll[2], ll[0], 0.01);
        for (int i = 0; i < 3; i++) free(log[i]);
    }
}

TEST(dropout_cli_and_api_errors) {
    CHECK(small_file()[0]);
    static const char *bad[] = {"1", "-0.1", "abc", "1.5", ""};
    for (size_t i = 0; i < ES_ARRAY_LEN(bad); i++) {
        char extra[64];
        snprintf(extra, sizeof extra, "--dropout '%s'", bad[i]);
        int rc = cli_train(es_test_path("dropout_err.log"), "dlrm", extra);
        char *log = es_test_slurp(es_test_path("dropout_err.log"));
        CHECK_MSG(rc != 0, "--dropout '%s' accepted", bad[i]);
        CHECK_STR_HAS(log, "--dropout expects a probability in [0, 1)");
        free(log);
    }
    static const char *plain[] = {"fm", "lr", "ffm"};
    for (size_t i = 0; i < ES_ARRAY_LEN(plain); i++) {
        int rc = cli_train(es_test_path("dropout_err.log"), plain[i], "--dropout 0.1");
        char *log = es_test_slurp(es_test_path("dropout_err.log"));
        CHECK_MSG(rc != 0, "--model %s --dropout 0.1 accepted", plain[i]);
        CHECK_STR_HAS(log, "dropout is for the MLPs of dlrm and dcn");
        free(log);
    }
    /* dropout 0 with fm is the default, not an error */
    CHECK(cli_train(NULL, "fm", "--dropout 0") == 0);
    /* the API: ES_EINVAL with a message */
    es_model_params mp = es_model_params_default();
    mp.n_dense = 2;
    mp.n_fields = 3;
    mp.storage = "hash";
    mp.budget = 10000;
    es_model *m = NULL;
    es_err err = {0};
    mp.model = "fm";
    mp.dropout = 0.2f;
    CHECK_EQ_INT(es_model_create(&m, &mp, NULL, &err), ES_EINVAL);
    CHECK_STR_HAS(err.msg, "dropout");
    mp.model = "dlrm";
    mp.dropout = 1.0f;
    CHECK_EQ_INT(es_model_create(&m, &mp, NULL, &err), ES_EINVAL);
    mp.dropout = NAN;
    CHECK_EQ_INT(es_model_create(&m, &mp, NULL, &err), ES_EINVAL);
    mp.dropout = 0.5f;
    CHECK_MSG(es_model_create(&m, &mp, NULL, &err) == 0, "%s", err.msg);
    es_model_free(m);
    /* the net refuses it too */
    es_net_params np = es__net_params_default(ES_NET_FM, 2, 3, 4);
    np.dropout = 0.1f;
    es_net *n = NULL;
    CHECK_EQ_INT(es__net_create(&n, &np, &err), ES_EINVAL);
    CHECK_STR_HAS(err.msg, "dropout is for dlrm and dcn only");
}
