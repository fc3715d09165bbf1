/*
 * test_qtrain.c — training at a precision (issue 11): the symmetric step
 * codec of ALPT (nearest within half a step, stochastic rounding
 * unbiased), LSQ's step-size gradient against finite differences, the
 * straight-through (QAT) and LSQ (ALPT) updates of whole storages against
 * finite differences of their forward pass (storage_harness.c), byte
 * accounting and budgets of every row-table method at every precision,
 * save/load and checkpoint round trips, the errors, and a real-data check
 * on the Criteo sample.
 */
#include "resume_harness.h"
#include "storage_harness.h"
#include "test.h"

#include "embstore.h"
#include "storage/quant.h"
#include "storage/storage.h"
#include "train/model.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

double es__alpt_step_grad(es_precision p, const float *v, const float *g, int dim, float s);

#define CRITEO "data/criteo_kaggle_train_first10k.tsv"

static const es_precision INTS[] = {ES_PREC_INT16, ES_PREC_INT8, ES_PREC_INT4, ES_PREC_INT2};

TEST(qtrain_step_codec_nearest) {
    es_rng rng;
    es__rng_seed(&rng, 5);
    float x[40], v[40];
    uint8_t row[256];
    long checked = 0;
    for (size_t k = 0; k < ES_ARRAY_LEN(INTS); k++)
        for (int dim = 1; dim <= 40; dim += dim < 8 ? 1 : 7)
            for (int rep = 0; rep < 50; rep++) {
                const es_precision p = INTS[k];
                const int bits = es__prec_bits(p);
                const float z = (float)(1u << (bits - 1));
                const float step = (float)(0.001 + 0.05 * es__rng_uniform(&rng));
                for (int d = 0; d < dim; d++) x[d] = (float)((es__rng_uniform(&rng) * 2 - 1) * (z + 2) * step);
                if (dim > 2) x[1] = 0.0f;
                CHECK(es__quant_row_step(p, x, dim, step, row, NULL) == ES_OK);
                es__dequant_row(p, row, dim, v);
                const float s = es__quant_row_scale(p, row, dim);
                CHECK_MSG(p == ES_PREC_INT16 ? s == step : s == es__f16_to_f32(es__f32_to_f16(step)),
                          "%s: scale %.9g for step %.9g", es__prec_name(p), (double)s, (double)step);
                for (int d = 0; d < dim; d++) {
                    /* inside [-z s, (z - 1) s]: within half a step; outside: the end */
                    const double lo = -(double)z * s, hi = ((double)z - 1) * s;
                    const double want = x[d] < lo ? lo : x[d] > hi ? hi : x[d];
                    /* plus the float rounding of bias + scale * code at |bias| = z s */
                    const double tol = ((x[d] < lo || x[d] > hi) ? 0 : 0.5 * s * (1 + 1e-5)) + 2.4e-7 * z * s;
                    CHECK_MSG(fabs((double)v[d] - want) <= tol, "%s dim %d: %.9g came back as %.9g (step %.9g)",
                              es__prec_name(p), dim, (double)x[d], (double)v[d], (double)s);
                    checked++;
                }
                if (dim > 2) CHECK_MSG(v[1] == 0.0f, "%s: zero came back as %.9g", es__prec_name(p), (double)v[1]);
            }
    float bad[2] = {NAN, 1};
    CHECK(es__quant_row_step(ES_PREC_INT8, bad, 2, 0.1f, row, NULL) == ES_ERANGE);
    CHECK(es__quant_row_step(ES_PREC_INT8, x, 2, 0.0f, row, NULL) == ES_ERANGE);
    CHECK(es__quant_row_step(ES_PREC_FP16, x, 2, 0.1f, row, NULL) == ES_EINVAL);
    printf("    %ld values checked\n", checked);
}

TEST(qtrain_step_codec_stochastic_is_unbiased) {
    enum { DIM = 11, N = 100000 };
    es_rng rng, draw;
    es__rng_seed(&rng, 8);
    es__rng_seed(&draw, 9);
    float x[DIM], v[DIM];
    uint8_t row[64];
    for (size_t k = 1; k < ES_ARRAY_LEN(INTS); k++) { /* int8, int4, int2 */
        const es_precision p = INTS[k];
        const float z = (float)(1u << (es__prec_bits(p) - 1)), step = 0.01f;
        for (int d = 0; d < DIM; d++) x[d] = (float)((es__rng_uniform(&rng) * 2 - 1) * (z - 1) * step); /* inside the range */
        double rsum = 0, rsq = 0;
        for (int i = 0; i < N; i++) {
            CHECK(es__quant_row_step(p, x, DIM, step, row, &draw) == ES_OK);
            es__dequant_row(p, row, DIM, v);
            double r = 0;
            for (int d = 0; d < DIM; d++) r += ((double)v[d] - (double)x[d]) / DIM;
            rsum += r;
            rsq += r * r;
        }
        double mean = rsum / N, se = sqrt(fmax(rsq / N - mean * mean, 0) / N);
        CHECK_MSG(fabs(mean) <= 3 * se, "%s: mean error %.3g, 3 SE %.3g", es__prec_name(p), mean, 3 * se);
        printf("    %s: mean error %.3g (%.2f SE)\n", es__prec_name(p), mean, se > 0 ? fabs(mean) / se : 0.0);
    }
}

/* LSQ's step-size gradient is the derivative of the straight-through
 * surrogate of the quantizer, s * clip(v/s + sg(round(v/s) - v/s)): with
 * the rounding residual held at its value at s0, the surrogate is linear
 * in s and equals the quantizer at s0.  Finite differences of
 * sum_d g_d * surrogate_d(s) at s0 must give the gradient (times LSQ's
 * scale sqrt(dim * Qp)). */
TEST(qtrain_lsq_step_gradient_finite_differences) {
    es_rng rng;
    es__rng_seed(&rng, 12);
    int cases = 0;
    for (size_t k = 0; k < ES_ARRAY_LEN(INTS); k++)
        for (int dim = 1; dim <= 33; dim += 4) {
            const es_precision p = INTS[k];
            const double z = (double)(1u << (es__prec_bits(p) - 1)), qn = -z, qp = z - 1;
            float v[33], g[33];
            const float s0 = (float)(0.002 + 0.02 * es__rng_uniform(&rng));
            for (int d = 0; d < dim; d++) {
                v[d] = (float)((es__rng_uniform(&rng) * 2 - 1) * (z + 3) * s0); /* some beyond the range */
                g[d] = es__rng_normal(&rng);
            }
            double res[33], Q0 = 0, S0 = 0;
            for (int d = 0; d < dim; d++) {
                double u = (double)v[d] / s0;
                res[d] = nearbyint(u) - u;
                double c = fmin(fmax(nearbyint(u), qn), qp);
                Q0 += g[d] * s0 * c;
            }
            /* surrogate(s): inside, v + s * res (res frozen); outside, s * bound */
            double h = 1e-3 * s0, Lp = 0, Lm = 0;
            for (int d = 0; d < dim; d++) {
                double u = (double)v[d] / s0;
                for (int sgn = -1; sgn <= 1; sgn += 2) {
                    double s = s0 + sgn * h;
                    double q = u <= qn ? s * qn : u >= qp ? s * qp : (double)v[d] + s * res[d];
                    if (sgn > 0) Lp += g[d] * q;
                    else Lm += g[d] * q;
                }
                S0 += g[d] * (u <= qn ? s0 * qn : u >= qp ? s0 * qp : (double)v[d] + s0 * res[d]);
            }
            double fd = (Lp - Lm) / (2 * h);
            double an = es__alpt_step_grad(p, v, g, dim, s0) * sqrt((double)dim * fmax(qp, 1));
            CHECK_MSG(fabs(S0 - Q0) <= 1e-5 * (1 + fabs(Q0)), "%s dim %d: the surrogate %.9g is not the quantizer %.9g at s0",
                      es__prec_name(p), dim, S0, Q0);
            CHECK_MSG(fabs(fd - an) <= 1e-6 + 1e-4 * fabs(fd), "%s dim %d: LSQ gradient %.9g, finite differences %.9g",
                      es__prec_name(p), dim, an, fd);
            cases++;
        }
    printf("    %d cases\n", cases);
}

static void qgrad(const char *method, const char *opts, int share, es_precision p, int mode) {
    es_sh_cfg c = es_sh_cfg_make(method, share);
    c.opts = opts;
    if (!strcmp(method, "full")) c.budget = 0; /* sized by the vocabulary */
    c.precision = p;
    c.qtrain = mode;
    CHECK(es_sh_gradcheck_qtrain(&c));
}

TEST(qtrain_ste_gradcheck) {
    qgrad("hash", NULL, 0, ES_PREC_INT4, ES_QTRAIN_QAT);
    qgrad("hash", NULL, 1, ES_PREC_INT8, ES_QTRAIN_QAT);
    qgrad("unified", "chunks=2", 1, ES_PREC_INT2, ES_QTRAIN_QAT);
    qgrad("full", NULL, 0, ES_PREC_FP16, ES_QTRAIN_QAT);
    qgrad("adapt", NULL, 0, ES_PREC_INT4, ES_QTRAIN_QAT);
}

TEST(qtrain_lsq_gradcheck) {
    qgrad("hash", NULL, 0, ES_PREC_INT4, ES_QTRAIN_ALPT);
    qgrad("hash", NULL, 1, ES_PREC_INT8, ES_QTRAIN_ALPT);
    qgrad("unified", "chunks=2", 1, ES_PREC_INT2, ES_QTRAIN_ALPT);
    qgrad("full", NULL, 0, ES_PREC_INT16, ES_QTRAIN_ALPT);
}

/* Bytes reported are the bytes allocated (codes as parameters; master,
 * steps and optimizer state as training state) and within the budget, for
 * every registered method at every precision and training mode: the
 * methods sized by a budget through es_sh_budget (which also asks that
 * the budget be used, >= 95%); `full` (sized by its vocabulary) and `mde`
 * (whose maps do not shrink with the budget, so its fill can be low) by
 * the same accounting without the fill; the methods without row tables
 * refuse every precision with a message. */
static int bytes_within(const es_sh_cfg *c, const es_vocab *v, double budget) {
    es_sh_cfg cc = *c;
    cc.budget = budget;
    es_storage *s = NULL;
    es_err err;
    if (es_sh_create(&s, &cc, v, ES_OPT_ROWWISE_ADAGRAD, 0.05f, &err) != 0) {
        es_test_fail(__FILE__, __LINE__, "%s %s %s budget %g: %s", c->method, es__prec_name(c->precision),
                     es__qtrain_name(c->qtrain), budget, err.msg);
        return 0;
    }
    size_t tp, ts;
    int ok = es_sh_tensor_bytes(s, &tp, &ts) && tp == s->param_bytes && ts == s->state_bytes &&
             (s->budget_bytes == 0 || (double)s->param_bytes + (double)s->aux_bytes <= s->budget_bytes);
    if (!ok)
        es_test_fail(__FILE__, __LINE__, "%s %s %s budget %g: tensors %zu + %zu, reported %zu + %zu, %zu + %zu of %.0f bytes",
                     c->method, es__prec_name(c->precision), es__qtrain_name(c->qtrain), budget, tp, ts, s->param_bytes,
                     s->state_bytes, s->param_bytes, s->aux_bytes, s->budget_bytes);
    es__storage_free(s);
    return ok;
}

TEST(qtrain_budget_every_method) {
    static const double fracs[] = {0.25, 1.0 / 16};
    const es_precision precs[] = {ES_PREC_FP16, ES_PREC_INT8, ES_PREC_INT4, ES_PREC_INT2};
    es_vocab *v = es_sh_vocab(4);
    CHECK(v != NULL);
    int n = 0, refused = 0;
    for (int i = 0; i < es__storage_n_methods(); i++) {
        const es_storage_ops *ops = es__storage_method_at(i);
        for (size_t k = 0; k < ES_ARRAY_LEN(precs); k++)
            for (int mode = ES_QTRAIN_QAT; mode <= ES_QTRAIN_ALPT; mode++) {
                if (mode == ES_QTRAIN_ALPT && precs[k] == ES_PREC_FP16) continue;
                es_sh_cfg c = es_sh_cfg_make(ops->name, 0);
                c.precision = precs[k];
                c.qtrain = mode;
                if (!ops->rows) {
                    es_storage *s = NULL;
                    es_err err;
                    int rc = es_sh_create(&s, &c, v, ES_OPT_ROWWISE_ADAGRAD, 0.05f, &err);
                    es__storage_free(s);
                    CHECK_MSG(rc == ES_EINVAL && strstr(err.msg, "needs a method whose embeddings are rows of tables"),
                              "%s at %s: rc %d, %s", ops->name, es__prec_name(precs[k]), rc, rc ? err.msg : "created");
                    refused++;
                    continue;
                }
                if (!strcmp(ops->name, "full")) {
                    CHECK(bytes_within(&c, v, 0));
                } else if (!strcmp(ops->name, "mde")) {
                    for (size_t f = 0; f < ES_ARRAY_LEN(fracs); f++) CHECK(bytes_within(&c, v, fracs[f]));
                } else {
                    CHECK(es_sh_budget(&c, fracs, 2));
                }
                n++;
            }
    }
    es_vocab_free(v);
    printf("    %d method x precision x mode cases checked, %d refused (methods without row tables)\n", n, refused);
}

/* full is sized by its vocabulary: at a precision its codes are the
 * table, and the accounting still matches the tensors. */
TEST(qtrain_full_bytes) {
    es_vocab *v = es_sh_vocab(4);
    CHECK(v != NULL);
    size_t fp32_bytes = 0;
    const es_precision precs[] = {ES_PREC_FP32, ES_PREC_FP16, ES_PREC_INT8, ES_PREC_INT4, ES_PREC_INT2};
    for (size_t k = 0; k < ES_ARRAY_LEN(precs); k++) {
        es_sh_cfg c = es_sh_cfg_make("full", 0);
        c.budget = 0;
        c.dim = 16;
        c.precision = precs[k];
        c.qtrain = precs[k] == ES_PREC_FP32 ? ES_QTRAIN_NONE : ES_QTRAIN_ALPT * (precs[k] != ES_PREC_FP16) + ES_QTRAIN_QAT * (precs[k] == ES_PREC_FP16);
        es_storage *s = NULL;
        es_err err;
        CHECK_MSG(es_sh_create(&s, &c, v, ES_OPT_ROWWISE_ADAGRAD, 0.05f, &err) == 0, "%s", err.msg);
        size_t tp, ts;
        CHECK(es_sh_tensor_bytes(s, &tp, &ts));
        CHECK_MSG(tp == s->param_bytes && ts == s->state_bytes, "%s: tensors %zu + %zu, reported %zu + %zu",
                  es__prec_name(precs[k]), tp, ts, s->param_bytes, s->state_bytes);
        es_rows *t = s->ops->rows(s, 0);
        CHECK_EQ_INT((long long)s->param_bytes, (long long)(t->n_rows * es__prec_row_bytes(precs[k], 16)));
        if (precs[k] == ES_PREC_FP32) fp32_bytes = s->param_bytes;
        printf("    full %-5s %9zu parameter bytes (%.2fx fp32), %zu state\n", es__prec_name(precs[k]), s->param_bytes,
               (double)fp32_bytes / (double)s->param_bytes, s->state_bytes);
        es__storage_free(s);
    }
    es_vocab_free(v);
}

/* unified at int4 holds about 8x its fp32 rows at the same budget: exactly
 * 4 dim / (dim / 2 + 4), 7.1x at dim 64. */
TEST(qtrain_budget_buys_rows) {
    es_vocab *v = es_sh_vocab(4);
    CHECK(v != NULL);
    uint64_t rows[2] = {0, 0};
    for (int k = 0; k < 2; k++) {
        es_sh_cfg c = es_sh_cfg_make("unified", 1);
        c.dim = 64;
        c.budget = 1 << 20;
        c.precision = k ? ES_PREC_INT4 : ES_PREC_FP32;
        c.qtrain = k ? ES_QTRAIN_ALPT : ES_QTRAIN_NONE;
        es_storage *s = NULL;
        es_err err;
        CHECK_MSG(es_sh_create(&s, &c, v, ES_OPT_ROWWISE_ADAGRAD, 0.05f, &err) == 0, "%s", err.msg);
        rows[k] = s->ops->rows(s, 0)->n_rows;
        CHECK((double)s->param_bytes + (double)s->aux_bytes <= s->budget_bytes);
        CHECK((double)s->param_bytes + (double)s->aux_bytes >= 0.99 * s->budget_bytes);
        es__storage_free(s);
    }
    const double ratio = (double)rows[1] / (double)rows[0], want = 4.0 * 64 / (32 + 4);
    printf("    unified, 1 MiB, dim 64: %llu rows fp32, %llu rows int4 (%.3fx; 4 dim / row bytes = %.3f)\n",
           (unsigned long long)rows[0], (unsigned long long)rows[1], ratio, want);
    CHECK_MSG(fabs(ratio - want) <= 0.01 * want, "ratio %.3f", ratio);
    es_vocab_free(v);
}

/* Save/load through tensors and meta, with the training state (lookups
 * equal, one more step equal: an exact resume) and without (es_sh_roundtrip
 * covers both budgets); determinism, threads, allocation failures. */
static void contracts(const char *method, int share, es_precision p, int mode) {
    es_sh_cfg c = es_sh_cfg_make(method, share);
    if (!strcmp(method, "full")) c.budget = 0; /* sized by the vocabulary */
    c.precision = p;
    c.qtrain = mode;
    CHECK(es_sh_roundtrip(&c));
    CHECK(es_sh_determinism(&c));
    CHECK(es_sh_threads(&c));
    CHECK(es_sh_alloc_failures(&c));
}

TEST_SLOW(qtrain_contracts_qat) { /* slow tier: the allocation sweeps take a minute under ASan */
    contracts("hash", 0, ES_PREC_INT4, ES_QTRAIN_QAT);
    contracts("unified", 1, ES_PREC_INT8, ES_QTRAIN_QAT);
    contracts("qr", 0, ES_PREC_INT4, ES_QTRAIN_QAT);
}

TEST_SLOW(qtrain_contracts_alpt) {
    contracts("hash", 1, ES_PREC_INT4, ES_QTRAIN_ALPT);
    contracts("adapt", 0, ES_PREC_INT8, ES_QTRAIN_ALPT);
    contracts("full", 0, ES_PREC_INT2, ES_QTRAIN_ALPT);
    contracts("qr", 1, ES_PREC_INT2, ES_QTRAIN_ALPT);
}

static es_model_params qmp(const char *method, const char *prec, const char *mode) {
    es_model_params mp = es_model_params_default();
    mp.model = "fm";
    mp.dim = 8;
    mp.batch = 64;
    mp.storage = method;
    mp.budget = 40000;
    mp.precision = prec;
    mp.qtrain = mode;
    return mp;
}

TEST(qtrain_checkpoint_continues) {
    es_test_checkpoint_continues(qmp("hash", "int4", "qat"), "hash int4 qat");
    es_test_checkpoint_continues(qmp("unified", "int4", "alpt"), "unified int4 alpt");
    es_model_params mp = qmp("hash", "int8", "alpt");
    mp.emb_l2 = 0.01f; /* lazy L2 on ALPT rows: the catch-up re-encodes */
    es_test_checkpoint_continues(mp, "hash int8 alpt emb_l2");
}

TEST(qtrain_errors) {
    es_model *m = NULL;
    es_err err = {0};
    es_model_params mp = qmp("dhe", "int8", NULL);
    mp.n_fields = 3;
    mp.n_dense = 0;
    CHECK(es_model_create(&m, &mp, NULL, &err) == ES_EINVAL);
    CHECK_STR_HAS(err.msg, "precision int8 needs a method whose embeddings are rows of tables");
    mp = qmp("hash", "int3", NULL);
    mp.n_fields = 3;
    CHECK(es_model_create(&m, &mp, NULL, &err) == ES_EINVAL);
    CHECK_STR_HAS(err.msg, "unknown precision 'int3'");
    mp = qmp("hash", "fp16", "alpt");
    mp.n_fields = 3;
    CHECK(es_model_create(&m, &mp, NULL, &err) == ES_EINVAL);
    CHECK_STR_HAS(err.msg, "qtrain alpt learns the step of integer codes");
    mp = qmp("hash", NULL, "qat");
    mp.n_fields = 3;
    CHECK(es_model_create(&m, &mp, NULL, &err) == ES_EINVAL);
    CHECK_STR_HAS(err.msg, "needs a precision below fp32");
    mp = qmp("hash", "int8", "fast");
    mp.n_fields = 3;
    CHECK(es_model_create(&m, &mp, NULL, &err) == ES_EINVAL);
    CHECK_STR_HAS(err.msg, "unknown qtrain 'fast'");
    CHECK(m == NULL);
    /* the CLI: a clear message, a non-zero exit, no output file */
    const char *bin = getenv("ES_BIN") ? getenv("ES_BIN") : "build/embstore";
    char out[600], cmd[2048];
    snprintf(out, sizeof out, "%s", es_test_path("qtrain_err.es"));
    unlink(out);
    snprintf(cmd, sizeof cmd, "%s train " CRITEO " --max-rows 500 --storage dhe --precision int4 --out %s 2>&1", bin, out);
    FILE *f = popen(cmd, "r");
    CHECK(f != NULL);
    char buf[4096] = {0};
    size_t got = fread(buf, 1, sizeof buf - 1, f);
    buf[got] = 0;
    int st = pclose(f);
    CHECK_MSG(st != 0, "exit status %d", st);
    CHECK_STR_HAS(buf, "precision int4 needs a method whose embeddings are rows of tables");
    CHECK(access(out, F_OK) != 0);
}

/* The Criteo sample (8,000 training rows, 2,000 held out), fm k=8 on a
 * full table, one thread, early stopping: int8 trained by QAT and by ALPT
 * stays within 0.01 AUC of fp32, and the saved model (codes only)
 * evaluates to the result es_train reported. */
TEST_SLOW(qtrain_criteo_int8) {
    const char *modes[][2] = {{NULL, NULL}, {"int8", "qat"}, {"int8", "alpt"}, {"int4", "alpt"}};
    double auc[4];
    for (int k = 0; k < 4; k++) {
        es_train_params p = es_train_params_default();
        p.train_path = CRITEO;
        p.model = "fm";
        p.dim = 8;
        p.storage = "full";
        p.emb_optim = "rowwise";
        p.refit = 0;
        p.threads = 1;
        p.test_path = CRITEO;
        p.precision = modes[k][0];
        p.qtrain = modes[k][1];
        char out[600];
        snprintf(out, sizeof out, "%s", es_test_path(k ? "qtrain_criteo_q.es" : "qtrain_criteo_fp32.es"));
        p.out_path = out;
        es_train_result r;
        es_err err = {0};
        CHECK_MSG(es_train(&p, &r, &err) == 0, "%s", err.msg);
        auc[k] = r.valid.auc;
        printf("    %-5s %-4s: validation AUC %.4f, table %zu bytes\n", modes[k][0] ? modes[k][0] : "fp32",
               modes[k][1] ? modes[k][1] : "", r.valid.auc, r.emb_param_bytes);
        /* the saved model (codes only) scores the test file as es_train's final model did */
        es_model *m = NULL;
        CHECK_MSG(es_model_load(&m, out, 0, &err) == 0, "%s", err.msg);
        es_metrics e;
        CHECK(es_model_eval_file(m, CRITEO, &e) == 0);
        CHECK_MSG(fabs(e.auc - r.test.auc) <= 1e-6 && fabs(e.logloss - r.test.logloss) <= 1e-6,
                  "reloaded: AUC %.6f logloss %.6f; at the end of training %.6f %.6f", e.auc, e.logloss, r.test.auc,
                  r.test.logloss);
        es_model_free(m);
        unlink(out);
    }
    CHECK_MSG(auc[1] >= auc[0] - 0.01 && auc[2] >= auc[0] - 0.01, "fp32 %.4f, qat int8 %.4f, alpt int8 %.4f", auc[0], auc[1],
              auc[2]);
}

/* A quantized file whose checksums are right but one row's scale is not a
 * number (a writer's bug, not a disk error): the load refuses it, naming
 * the file, table and row; the CLI exits non-zero.  ES_LOAD_NO_VERIFY
 * trusts the file (documented) and still loads. */
TEST(qtrain_corrupt_scale_refused) {
    char out[600], bad[600];
    snprintf(out, sizeof out, "%s", es_test_path("qtrain_scale.es"));
    snprintf(bad, sizeof bad, "%s", es_test_path("qtrain_scale_bad.es"));
    es_train_params p = es_train_params_default();
    p.train_path = CRITEO;
    p.max_rows = 500;
    p.storage = "hash";
    p.budget = 20000;
    p.epochs = 1;
    p.early_stop = 0;
    p.refit = 0;
    p.valid_frac = 0;
    p.threads = 1;
    p.precision = "int8";
    p.out_path = out;
    es_train_result r;
    es_err err = {0};
    CHECK_MSG(es_train(&p, &r, &err) == 0, "%s", err.msg);
    es_model *m = NULL;
    CHECK_MSG(es_model_load(&m, out, 0, &err) == 0, "%s", err.msg);
    es_rows *t = m->st->ops->rows(m->st, 0);
    CHECK(t && t->prec == ES_PREC_INT8 && t->n_rows > 7);
    const size_t rb = es__prec_row_bytes(t->prec, t->dim);
    const uint16_t nan_half = 0x7e00;
    memcpy(t->q + 7 * rb + rb - 4, &nan_half, 2); /* row 7's scale */
    CHECK(es_model_save(m, bad, 0) == 0);
    es_model_free(m);
    m = NULL;
    CHECK_EQ_INT(es_model_load(&m, bad, 0, &err), ES_EFORMAT);
    CHECK_STR_HAS(err.msg, bad);
    CHECK_STR_HAS(err.msg, "table 0 row 7: the int8 codes' scale or bias is not a finite number");
    CHECK(m == NULL);
    CHECK(es_model_load(&m, bad, ES_LOAD_NO_VERIFY, &err) == 0);
    es_model_free(m);
    const char *bin = getenv("ES_BIN") ? getenv("ES_BIN") : "build/embstore";
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "%s eval %s " CRITEO " > /dev/null 2>&1", bin, bad);
    CHECK(system(cmd) != 0);
    unlink(out);
    unlink(bad);
}
