/*
 * test_qrows.c — precision for the zoo row methods (issue 11, point 1):
 * multihash (its pool), mde (hashed tail + tiers; projections fp32) and
 * robe (the flat array as blocks of Z), and qr's backward at a precision.
 *
 *   - qrows_ptq_*: a model trained on the Criteo sample is quantized
 *     (es_model_quantize); every table's codes are es__quant_row of its
 *     fp32 rows; every lookup equals that of the fp32 twin whose rows are
 *     es__dequant_row of the codes (bit for bit for mde, robe and qr,
 *     which dequantize a row and pool it as fp32; within the pooling's
 *     rounding for multihash, whose codes are pooled by es__dequant_axpy);
 *     param_bytes is the bytes of the parameter tensors (codes plus the
 *     fp32 parts: multihash's importance table, mde's projections) and the
 *     fp32 figure less the tables plus their codes; save + load (mapped)
 *     predicts the same bits, and the loaded model refuses training;
 *   - qrows_train_*: a model trained with precision int8 / int4 and qtrain
 *     qat / alpt on the first 8000 rows (one epoch) reaches a sensible AUC
 *     on the last 2000 (within 0.03 of the same model at fp32); saved and loaded (serving) it predicts the same bits; from a
 *     checkpoint it resumes exactly (three more steps on the resumed and
 *     the uninterrupted model give the same predictions);
 *   - qrows_bytes_*: created at fp16 / int8 / int4 / int2 (qat and alpt)
 *     for several byte budgets: param + aux <= budget, param_bytes is the
 *     bytes of the parameter tensors, and (but for mde, whose maps do not
 *     shrink) the budget is mostly used;
 *   - qrows_qr_backward_reads_codes: with QAT at int2, qr's gradient of a
 *     partition is taken from the other partitions' codes (what the forward
 *     combined), not from their fp32 master rows.
 */
#include "embstore.h"
#include "format/file.h"
#include "storage/quant.h"
#include "storage/storage.h"
#include "storage_harness.h"
#include "test.h"
#include "ptq_check.h"
#include "train/model.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CRITEO "data/criteo_kaggle_train_first10k.tsv"

/* The row tables of a storage (ops->rows); *t allocated (free it). */
static int tables_of(es_storage *st, es_rows ***t) {
    int n = 0;
    while (st->ops->rows && st->ops->rows(st, n)) n++;
    *t = malloc((size_t)(n + 1) * sizeof **t);
    for (int i = 0; i < n; i++) (*t)[i] = st->ops->rows(st, i);
    return n;
}


/* ---- (a) post-training quantization ------------------------------------------------ */

/* test_ptq.c's round trip (ptq_check.h): multihash pools its codes with
 * fp32 importance weights (within 1e-5 of the twin), robe and mde
 * dequantize each row before combining it (bit for bit). */
static void ptq(const char *method, const char *opts, double budget, const char *prec_name, int exact) {
    es_test_ptq_roundtrip(method, opts, budget, prec_name, exact ? ES_PTQ_ALL : ES_PTQ_NEAR);
}

TEST(qrows_ptq_multihash_int8) { ptq("multihash", NULL, 0, "int8", 0); }
TEST(qrows_ptq_multihash_int4) { ptq("multihash", "k=3", 0, "int4", 0); }
TEST(qrows_ptq_multihash_noweights_fp16) { ptq("multihash", "weights=0,share=1", 0, "fp16", 0); }
TEST(qrows_ptq_robe_int8) { ptq("robe", NULL, 0, "int8", 1); }
TEST(qrows_ptq_robe_z5_int4) { ptq("robe", "z=5", 0, "int4", 1); } /* windows across blocks, a short last block */
TEST(qrows_ptq_robe_z1_int2) { ptq("robe", "z=1,share=1", 0, "int2", 1); }
TEST(qrows_ptq_mde_int8) { ptq("mde", NULL, 0.25, "int8", 1); }
TEST(qrows_ptq_mde_int4) { ptq("mde", NULL, 0.1, "int4", 1); }
TEST(qrows_ptq_mde_share_int2) { ptq("mde", "share=1", 0.25, "int2", 1); }
TEST(qrows_ptq_mde_nobudget_fp16) { ptq("mde", NULL, 0, "fp16", 1); }

/* ---- (b) training at a precision ------------------------------------------------------- */

static int next_batch(es_reader *r, es_batch *b) { return es_reader_next(r, b) > 0 ? 0 : -1; }

/* One epoch over the first n_train batches of r, then the AUC of the next
 * n_valid (b is left holding the last of them). */
static double fit(es_model *m, es_reader *r, es_batch *b, int n_train, int n_valid, float *prob, float *lab) {
    const int B = b->cap;
    if (es_reader_rewind(r) != 0) return -1;
    for (int i = 0; i < n_train; i++)
        if (next_batch(r, b) != 0 || es_model_train_batch(m, b, NULL) != 0) return -1;
    for (int i = 0; i < n_valid; i++) {
        if (next_batch(r, b) != 0 || b->n != B || es_model_predict_batch(m, b, prob + (size_t)i * B) != 0) return -1;
        memcpy(lab + (size_t)i * B, b->label, (size_t)B * sizeof *lab);
    }
    return es_auc(prob, lab, (size_t)B * n_valid);
}

static void train_at(const char *method, const char *opts, double budget, const char *prec, const char *qtrain) {
    const int B = 200, n_train = 40, n_valid = 10; /* 8000 rows to train, the last 2000 to evaluate */
    es_set_threads(1);
    es_err err = {0};
    es_reader *r = NULL;
    CHECK(es_reader_open(&r, CRITEO, NULL, &err) == 0);
    es_model_params mp = es_model_params_default();
    mp.model = "fm";
    mp.dim = 16;
    mp.storage = method;
    mp.storage_opts = opts;
    mp.budget = budget;
    mp.batch = B;
    mp.n_dense = es_reader_n_dense(r);
    mp.n_fields = es_reader_n_fields(r);
    mp.precision = prec;
    mp.qtrain = qtrain;
    mp.seed = 5;
    es_batch b = {0};
    CHECK(es_batch_alloc(&b, B, mp.n_dense, mp.n_fields, 0) == 0);
    es_vocab *v = NULL;
    CHECK(es_vocab_create(&v, mp.n_fields) == 0);
    for (int i = 0; i < n_train; i++) {
        CHECK(next_batch(r, &b) == 0);
        CHECK(es_vocab_add_batch(v, &b) == 0);
    }
    es_model *m = NULL, *l = NULL, *c = NULL;
    CHECK_MSG(es_model_create(&m, &mp, v, &err) == 0, "%s %s %s: %s", method, prec, qtrain, err.msg);
    es_precision p;
    CHECK(es__prec_parse(prec, &p) == 0);
    CHECK(es__storage_precision(m->st) == p);
    const int mode = !strcmp(qtrain, "alpt") ? ES_QTRAIN_ALPT : ES_QTRAIN_QAT;
    CHECK(es__storage_qtrain(m->st) == mode);
    es_rows **t;
    const int nt = tables_of(m->st, &t);
    for (int i = 0; i < nt; i++)
        CHECK_MSG(t[i]->prec == p && t[i]->qtrain == mode && (mode == ES_QTRAIN_QAT) == (t[i]->w != NULL),
                  "%s: table %d is not at %s %s", method, i, prec, qtrain);
    free(t);
    CHECK_MSG(m->st->param_bytes + m->st->aux_bytes <= m->st->budget_bytes || m->st->budget_bytes == 0,
              "%s: %zu + %zu bytes over the budget %.0f", method, m->st->param_bytes, m->st->aux_bytes, m->st->budget_bytes);
    CHECK_EQ_INT(es_test_param_tensor_bytes(m->st), m->st->param_bytes);
    float *prob = malloc((size_t)B * n_valid * sizeof *prob), *lab = malloc((size_t)B * n_valid * sizeof *lab);
    float *p1 = malloc((size_t)B * sizeof *p1), *p2 = malloc((size_t)B * sizeof *p2);
    CHECK(prob && lab && p1 && p2);
    const double auc = fit(m, r, &b, n_train, n_valid, prob, lab);
    /* the same model at fp32, for reference */
    es_model *ref = NULL;
    mp.precision = NULL;
    mp.qtrain = NULL;
    CHECK_MSG(es_model_create(&ref, &mp, v, &err) == 0, "%s", err.msg);
    const double auc32 = fit(ref, r, &b, n_train, n_valid, prob, lab);
    es_model_free(ref);
    printf("  %s %s %s: held-out AUC %.4f (fp32 %.4f), params %zu + aux %zu of %.0f bytes, state %zu\n", method, prec, qtrain,
           auc, auc32, m->st->param_bytes, m->st->aux_bytes, m->st->budget_bytes, m->st->state_bytes);
    CHECK_MSG(auc > 0.62 && auc > auc32 - 0.03, "%s %s %s: AUC %.4f (fp32 %.4f)", method, prec, qtrain, auc, auc32);
    /* b now holds the last 200 rows: the model at the end of training */
    CHECK(es_model_predict_batch(m, &b, p1) == 0);
    const char *path = es_test_path("qrows_train.es"), *ck = es_test_path("qrows_train.ckpt");
    char spath[512], sck[512];
    snprintf(spath, sizeof spath, "%s", path);
    snprintf(sck, sizeof sck, "%s", ck);
    CHECK_MSG(es_model_save(m, spath, 0) == 0, "%s", es_model_errmsg(m));
    CHECK_MSG(es_model_load(&l, spath, 0, &err) == 0, "%s", err.msg);
    CHECK(es__storage_precision(l->st) == p && es__storage_qtrain(l->st) == ES_QTRAIN_NONE);
    CHECK_EQ_INT(l->st->param_bytes, m->st->param_bytes);
    CHECK(es_model_predict_batch(l, &b, p2) == 0);
    CHECK_MSG(memcmp(p1, p2, (size_t)B * sizeof *p1) == 0, "%s %s %s: the saved model predicts differently", method, prec, qtrain);
    /* resume from a checkpoint: three more steps on both give the same bits */
    es_checkpoint pos = {1, 0, 8000, 0}, back = {0};
    CHECK_MSG(es_model_checkpoint_save(m, sck, &pos) == 0, "%s", es_model_errmsg(m));
    CHECK_MSG(es_model_checkpoint_load(&c, sck, &back, &err) == 0, "%s", err.msg);
    CHECK(es__storage_precision(c->st) == p && es__storage_qtrain(c->st) == mode);
    CHECK_EQ_INT(c->st->param_bytes, m->st->param_bytes);
    CHECK(es_model_predict_batch(c, &b, p2) == 0);
    CHECK_MSG(memcmp(p1, p2, (size_t)B * sizeof *p1) == 0, "%s %s %s: the checkpoint predicts differently", method, prec, qtrain);
    CHECK(es_reader_rewind(r) == 0);
    for (int i = 0; i < 3; i++) {
        CHECK(next_batch(r, &b) == 0);
        CHECK(es_model_train_batch(m, &b, NULL) == 0);
        CHECK_MSG(es_model_train_batch(c, &b, NULL) == 0, "%s", es_model_errmsg(c));
    }
    CHECK(es_model_predict_batch(m, &b, p1) == 0 && es_model_predict_batch(c, &b, p2) == 0);
    CHECK_MSG(memcmp(p1, p2, (size_t)B * sizeof *p1) == 0, "%s %s %s: the resumed model trains differently", method, prec, qtrain);
    es_model_free(m);
    es_model_free(l);
    es_model_free(c);
    es_vocab_free(v);
    es_batch_free(&b);
    es_reader_free(r);
    free(prob);
    free(lab);
    free(p1);
    free(p2);
    unlink(spath);
    unlink(sck);
}

TEST(qrows_train_multihash_int8_qat) { train_at("multihash", NULL, 0.25, "int8", "qat"); }
TEST(qrows_train_multihash_int4_alpt) { train_at("multihash", NULL, 0.25, "int4", "alpt"); }
TEST(qrows_train_robe_int4_qat) { train_at("robe", NULL, 0.25, "int4", "qat"); }
TEST(qrows_train_robe_int8_alpt) { train_at("robe", "z=5", 0.25, "int8", "alpt"); }
TEST(qrows_train_mde_int8_qat) { train_at("mde", NULL, 0.25, "int8", "qat"); }
TEST(qrows_train_mde_int4_alpt) { train_at("mde", NULL, 0.25, "int4", "alpt"); }
TEST(qrows_train_qr_int4_alpt) { train_at("qr", NULL, 0.25, "int4", "alpt"); }
TEST(qrows_train_qr_int8_qat) { train_at("qr", "partitions=3", 0.25, "int8", "qat"); }

/* ---- (c) byte accounting ----------------------------------------------------------------- */

static void bytes_of(const char *method, const char *opts, double min_fill) {
    es_vocab *v = es_sh_vocab(4);
    CHECK(v != NULL);
    static const double budgets[] = {20000, 60000, 300000};
    static const struct {
        es_precision p;
        int mode;
    } kinds[] = {{ES_PREC_FP16, ES_QTRAIN_QAT}, {ES_PREC_INT8, ES_QTRAIN_QAT}, {ES_PREC_INT8, ES_QTRAIN_ALPT},
                 {ES_PREC_INT4, ES_QTRAIN_ALPT}, {ES_PREC_INT2, ES_QTRAIN_QAT}, {ES_PREC_INT4, ES_QTRAIN_NONE}};
    for (size_t bi = 0; bi < ES_ARRAY_LEN(budgets); bi++)
        for (size_t k = 0; k < ES_ARRAY_LEN(kinds); k++) {
            es_sh_cfg c = es_sh_cfg_make(method, 0);
            c.opts = opts;
            es_storage_params p = es_sh_params(&c);
            p.budget = budgets[bi];
            p.precision = kinds[k].p;
            p.qtrain = kinds[k].mode;
            es_storage *s = NULL;
            es_err err = {0};
            CHECK_MSG(es__storage_create(&s, &p, v, &err) == 0, "%s %s %s %.0f: %s", method, es__prec_name(kinds[k].p),
                      es__qtrain_name(kinds[k].mode), budgets[bi], err.msg);
            const double used = (double)s->param_bytes + (double)s->aux_bytes;
            es_rows **t;
            const int nt = tables_of(s, &t);
            size_t codes = 0;
            for (int i = 0; i < nt; i++) {
                CHECK(t[i]->prec == kinds[k].p && t[i]->qtrain == kinds[k].mode && t[i]->q);
                codes += (size_t)t[i]->n_rows * es__prec_row_bytes(kinds[k].p, t[i]->dim);
            }
            free(t);
            printf("    %-9s %-5s %-4s %7.0f B: params %7zu (codes %7zu) + aux %6zu = %5.1f%%\n", method,
                   es__prec_name(kinds[k].p), es__qtrain_name(kinds[k].mode), budgets[bi], s->param_bytes, codes,
                   s->aux_bytes, 100.0 * used / budgets[bi]);
            /* a code table made for a load (NONE) is sized by the fp32 rule:
             * the budget is the fp32 model's, not checked */
            if (kinds[k].mode != ES_QTRAIN_NONE) {
                CHECK_MSG(used <= budgets[bi], "%s: %.0f bytes over the %.0f budget", method, used, budgets[bi]);
                CHECK_MSG(used >= min_fill * budgets[bi], "%s %s: uses only %.0f of %.0f bytes", method,
                          es__prec_name(kinds[k].p), used, budgets[bi]);
            }
            CHECK_EQ_INT(es_test_param_tensor_bytes(s), s->param_bytes);
            CHECK(s->param_bytes >= codes);
            es__storage_free(s);
        }
    es_vocab_free(v);
}

TEST(qrows_bytes_multihash) { bytes_of("multihash", NULL, 0.9); }
TEST(qrows_bytes_robe) { bytes_of("robe", "z=4", 0.9); }
TEST(qrows_bytes_mde) { bytes_of("mde", NULL, 0); }
TEST(qrows_bytes_qr) { bytes_of("qr", NULL, 0.9); }

/* ---- qr's backward reads the codes ------------------------------------------------------- */

TEST(qrows_qr_backward_reads_codes) {
    es_sh_cfg c = es_sh_cfg_make("qr", 1);
    es_vocab *v = es_sh_vocab(c.n_fields);
    es_storage_params p = es_sh_params(&c);
    p.budget = 4096;
    p.opt.kind = ES_OPT_SGD;
    p.opt.lr = 1.0f;
    p.precision = ES_PREC_INT2;
    p.qtrain = ES_QTRAIN_QAT;
    p.init_scale = 0.5f; /* int2 codes of such rows are far from the master */
    es_storage *s = NULL;
    es_err err = {0};
    CHECK_MSG(es__storage_create(&s, &p, v, &err) == 0, "%s", err.msg);
    es_rows *t0 = s->ops->rows(s, 0), *t1 = s->ops->rows(s, 1);
    CHECK(t0 && t1 && !s->ops->rows(s, 2) && t0->qtrain == ES_QTRAIN_QAT);
    const int F = c.n_fields, dim = c.dim;
    es_batch b = {0};
    CHECK(es_batch_alloc(&b, 1, 0, F, 0) == 0);
    b.n = 1;
    b.off[0] = 0;
    for (int f = 0; f < F; f++) b.off[f + 1] = 1; /* field 0: one value; the rest empty */
    b.val[0] = UINT64_C(0x1234567);
    b.wt[0] = 1.0f;
    const size_t n0 = (size_t)t0->n_rows * dim, n1 = (size_t)t1->n_rows * dim;
    float *w0 = malloc(n0 * sizeof *w0), *w1 = malloc(n1 * sizeof *w1), *dout = calloc((size_t)F * dim, sizeof *dout);
    float *c0 = malloc((size_t)dim * sizeof *c0), *c1 = malloc((size_t)dim * sizeof *c1), *buf = malloc((size_t)dim * sizeof *buf);
    memcpy(w0, t0->w, n0 * sizeof *w0);
    memcpy(w1, t1->w, n1 * sizeof *w1);
    for (int d = 0; d < dim; d++) dout[d] = 0.25f + 0.125f * (float)d;
    CHECK(es__storage_backward(s, &b, dout) == 0);
    /* the one row of each table that moved, and by how much (SGD, lr 1: g) */
    long r0 = -1, r1 = -1;
    for (size_t r = 0; r < t0->n_rows; r++)
        if (memcmp(w0 + r * dim, t0->w + r * dim, (size_t)dim * sizeof *w0)) r0 = r0 < 0 ? (long)r : -2;
    for (size_t r = 0; r < t1->n_rows; r++)
        if (memcmp(w1 + r * dim, t1->w + r * dim, (size_t)dim * sizeof *w1)) r1 = r1 < 0 ? (long)r : -2;
    CHECK_MSG(r0 >= 0 && r1 >= 0, "one row of each table moved (%ld, %ld)", r0, r1);
    /* the forward's rows: the codes of the master rows before the step */
    CHECK(es__quant_row(ES_PREC_INT2, w0 + r0 * dim, dim, (uint8_t *)buf, NULL) == 0);
    es__dequant_row(ES_PREC_INT2, (uint8_t *)buf, dim, c0);
    CHECK(es__quant_row(ES_PREC_INT2, w1 + r1 * dim, dim, (uint8_t *)buf, NULL) == 0);
    es__dequant_row(ES_PREC_INT2, (uint8_t *)buf, dim, c1);
    double far = 0;
    for (int d = 0; d < dim; d++) {
        const float g0 = w0[r0 * dim + d] - t0->w[r0 * dim + d], g1 = w1[r1 * dim + d] - t1->w[r1 * dim + d];
        CHECK_NEAR(g0, dout[d] * c1[d], 1e-5);
        CHECK_NEAR(g1, dout[d] * c0[d], 1e-5);
        far = fmax(far, fabs((double)dout[d] * (c1[d] - w1[r1 * dim + d])));
    }
    printf("  qr int2 qat: gradients from the codes; from the master they would differ by up to %.3g\n", far);
    CHECK(far > 1e-3);
    es_batch_free(&b);
    es__storage_free(s);
    es_vocab_free(v);
    free(w0);
    free(w1);
    free(dout);
    free(c0);
    free(c1);
    free(buf);
}
