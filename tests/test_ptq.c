/*
 * test_ptq.c — post-training quantization of row tables (issue 11, part 1):
 * es_model_quantize / es__storage_quantize and `embstore quantize`.
 *
 *   - ptq_roundtrip_*: for full, hash, adapt, unified (also with
 *     sub-tables) and qr (mult, add, cat; 2 to 4 partitions), a model
 *     trained on the Criteo sample is quantized; every table's row codes
 *     are es__quant_row of its fp32 row (nearest), every lookup equals
 *     that of the fp32 model with each row replaced by es__dequant_row of
 *     its codes (qr: every pair; the others: pairs of one value of weight
 *     1), the parameter bytes are the codes', the
 *     predictions after save + load (the codes mapped in place) equal those
 *     before the save bit for bit, and the loaded model refuses training;
 *   - ptq_qr_all_or_none: qr's tables convert together or not at all;
 *   - ptq_bytes: the table's parameter bytes are n_rows * row_bytes (maps
 *     unchanged), the optimizer state is 0, and int4 at dim 16 is 12/64 of
 *     fp32 (DLRM: FM's rows carry one more column, the linear weight);
 *   - ptq_auc (slow): on the Criteo split (last 2000 of the 10k rows held
 *     out), PTQ int8 of FM and DLRM on `full` loses at most 0.001 AUC
 *     against the same fp32 model for 3 seeds; fp16, int4 and int2 printed
 *     (the table in docs/methods.md);
 *   - ptq_auc_movielens (slow): the same on the first 30000 ratings of
 *     data/ml-latest-small.csv (rating >= 4; the last 6000 held out);
 *   - ptq_errors: unknown precision, a non-model file, an unsupported
 *     method (tt), OUT == MODEL, quantizing twice, a corrupt
 *     storage.precision and a code tensor of the wrong size: clear errors,
 *     non-zero exits, no output file.
 */
#include "test.h"
#include "embstore.h"
#include "storage/quant.h"
#include "storage/storage.h"
#include "format/file.h"
#include "train/model.h"
#include "ptq_check.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CRITEO "data/criteo_kaggle_train_first10k.tsv"

/* Train a model (es_train, 1 thread) and save it to out. */
static int train_budget(const char *out, const char *data, const char *model, const char *method, const char *opts,
                        double budget, int dim, uint64_t max_rows, double valid_frac, int early_stop, uint64_t seed,
                        es_train_result *res) {
    es_train_params p = es_train_params_default();
    p.budget = budget;
    p.train_path = data;
    p.model = model;
    p.storage = method;
    p.storage_opts = opts;
    p.dim = dim ? dim : ES_TRAIN_AUTO;
    p.max_rows = max_rows;
    p.valid_frac = valid_frac;
    p.early_stop = early_stop;
    p.refit = 0;
    p.epochs = early_stop ? ES_TRAIN_AUTO : 1;
    p.threads = 1;
    p.seed = seed;
    p.out_path = out;
    es_train_result r;
    es_err err = {0};
    int rc = es_train(&p, res ? res : &r, &err);
    if (rc) fprintf(stderr, "train %s/%s: %s\n", model, method, err.msg);
    return rc;
}

static int train_opts(const char *out, const char *data, const char *model, const char *method, const char *opts, int dim,
                      uint64_t max_rows, double valid_frac, int early_stop, uint64_t seed, es_train_result *res) {
    return train_budget(out, data, model, method, opts, 0, dim, max_rows, valid_frac, early_stop, seed, res);
}

static int train_to(const char *out, const char *model, const char *method, int dim, uint64_t max_rows, double valid_frac,
                    int early_stop, uint64_t seed, es_train_result *res) {
    return train_opts(out, CRITEO, model, method, NULL, dim, max_rows, valid_frac, early_stop, seed, res);
}

#define MAX_TABLES 1024 /* mde: one per field and tier */

/* The row tables of a storage (ops->rows); returns how many. */
static int tables_of(es_storage *st, es_rows **t) {
    int n = 0;
    while (st->ops->rows && n < MAX_TABLES && (t[n] = st->ops->rows(st, n)) != NULL) n++;
    return n;
}

/* The first n rows of the Criteo sample as one batch for model m. */
static int read_batch(es_model *m, es_batch *b, int n) {
    es_reader *r = NULL;
    es_err err = {0};
    es_reader_params rp = es_model_reader_params(m);
    if (es_reader_open(&r, CRITEO, &rp, &err) != 0) return -1;
    int rc = es_batch_alloc(b, n, es_model_n_dense(m), es_model_n_fields(m), 0);
    if (rc == 0) rc = es_reader_next(r, b) == n ? 0 : -1;
    es_reader_free(r);
    return rc;
}

size_t es_test_param_tensor_bytes(es_storage *st) {
    int n = es__storage_tensors(st, NULL, 0);
    es_tensor_ref *r = calloc((size_t)n + 1, sizeof *r);
    size_t b = 0;
    if (!r || es__storage_tensors(st, r, n) != n) {
        free(r);
        return SIZE_MAX;
    }
    for (int i = 0; i < n; i++)
        if (strncmp(r[i].name, "opt.", 4) && strncmp(r[i].name, "map.", 4)) b += r[i].nbytes;
    free(r);
    return b;
}

/* A model trained on the Criteo sample with `method` (opts, budget: 0 for
 * the method's default), quantized to prec_name: every table's codes are
 * es__quant_row of its fp32 rows; the lookups equal those of a twin fp32
 * model whose rows are es__dequant_row of the codes -- compare
 * ES_PTQ_SINGLE: bit for bit on the pairs of one value of weight 1 (where
 * the pooling kernels agree); ES_PTQ_ALL: bit for bit on every pair (a
 * method that dequantizes each row before combining it: qr, robe, mde);
 * ES_PTQ_NEAR: every pair within 1e-5 relative (multihash, which pools
 * codes with fp32 importance weights); the parameter bytes are the fp32
 * ones with the tables' bytes replaced by their codes; the predictions
 * survive save + load (mapped) bit for bit; training is refused.  Shared
 * with test_qrows.c (ptq_check.h). */
void es_test_ptq_roundtrip(const char *method, const char *opts, double budget, const char *prec_name, int compare) {
    char base[64];
    snprintf(base, sizeof base, "ptq_%s_%s", method, prec_name);
    char fp32[500], qpath[512];
    snprintf(fp32, sizeof fp32, "%s", es_test_path(base));
    snprintf(qpath, sizeof qpath, "%s.q", fp32);
    /* full on every row: a table large enough (> 256 KiB of codes) for
     * its pages to be mapped from the file */
    const int big = !strcmp(method, "full");
    CHECK(train_budget(fp32, CRITEO, "fm", method, opts, budget, 16, big ? 0 : 600, 0, 0, 3, NULL) == 0);
    es_model *m = NULL, *m2 = NULL, *mr = NULL;
    es_err err = {0};
    CHECK_MSG(es_model_load(&m, fp32, 0, &err) == 0, "%s", err.msg);
    CHECK_MSG(es_model_load(&mr, fp32, 0, &err) == 0, "%s", err.msg);
    es_precision p;
    CHECK(es__prec_parse(prec_name, &p) == 0);
    static es_rows *t[MAX_TABLES], *tr[MAX_TABLES]; /* tests run on one thread */
    const int nt = tables_of(m->st, t);
    CHECK_MSG(nt >= 1 && nt < MAX_TABLES && tables_of(mr->st, tr) == nt, "%s has row tables (%d)", method, nt);
    size_t code_bytes = 0, fp32_table_bytes = 0;
    for (int i = 0; i < nt; i++) {
        CHECK(t[i]->prec == ES_PREC_FP32 && t[i]->w);
        code_bytes += (size_t)t[i]->n_rows * es__prec_row_bytes(p, t[i]->dim);
        fp32_table_bytes += es__rows_param_bytes(t[i]);
    }
    const size_t param_fp32 = m->st->param_bytes, param_q = param_fp32 - fp32_table_bytes + code_bytes;
    CHECK_EQ_INT(es_test_param_tensor_bytes(m->st), param_fp32);
    const int F = es_model_n_fields(m), n = 64;
    es_batch b = {0};
    const size_t od = (size_t)m->st->p.dim; /* the storage's output width (fm: dim + 1) */
    float *oq = malloc((size_t)n * F * od * sizeof *oq), *oref = malloc((size_t)n * F * od * sizeof *oref);
    float *p1 = malloc((size_t)n * sizeof *p1), *p2 = malloc((size_t)n * sizeof *p2);
    uint8_t *code = malloc(es__prec_row_bytes(p, (int)od) + 64);
    CHECK(oq && oref && p1 && p2 && code);
    CHECK(read_batch(m, &b, n) == 0);

    CHECK_MSG(es_model_quantize(m, prec_name, &err) == 0, "%s", err.msg);
    for (int i = 0; i < nt; i++) {
        CHECK(t[i]->prec == p && t[i]->w == NULL && t[i]->acc == NULL && t[i]->q != NULL);
        /* codes: nearest rounding of each fp32 row (the twin still has them);
         * then the twin's rows become the dequantized codes */
        const int td = t[i]->dim;
        const size_t rb = es__prec_row_bytes(p, td);
        for (size_t r = 0; r < (size_t)t[i]->n_rows; r++) {
            float *wr = tr[i]->w + r * (size_t)td;
            CHECK(es__quant_row(p, wr, td, code, NULL) == 0);
            CHECK_MSG(memcmp(code, t[i]->q + r * rb, rb) == 0, "%s %s: table %d row %zu codes differ", method, prec_name, i, r);
            es__dequant_row(p, t[i]->q + r * rb, td, wr);
        }
    }
    CHECK_EQ_INT(m->st->param_bytes, param_q);
    CHECK_EQ_INT(es_test_param_tensor_bytes(m->st), m->st->param_bytes);
    CHECK(es__storage_lookup(m->st, &b, 0, n, oq) == 0);
    CHECK(es__storage_lookup(mr->st, &b, 0, n, oref) == 0);
    int checked = 0;
    double maxd = 0;
    for (int r = 0; r < n; r++)
        for (int f = 0; f < F; f++) {
            size_t P = (size_t)r * F + (size_t)f;
            if (compare == ES_PTQ_SINGLE && (b.off[P + 1] - b.off[P] != 1 || b.wt[b.off[P]] != 1.0f)) continue;
            checked++;
            for (size_t e = P * od; e < (P + 1) * od; e++) {
                double d = fabs((double)oq[e] - (double)oref[e]);
                maxd = d > maxd ? d : maxd;
                if (compare == ES_PTQ_NEAR)
                    CHECK_MSG(d <= 1e-5 * (1.0 + fabs((double)oref[e])), "%s %s: lookup (%d, %d) is %.9g, the twin's %.9g",
                              method, prec_name, r, f, (double)oq[e], (double)oref[e]);
                else
                    CHECK_MSG(oq[e] == oref[e], "%s %s: lookup (%d, %d) is not the combination of the dequantized rows",
                              method, prec_name, r, f);
            }
        }
    CHECK(checked > n * F / 2);
    /* predictions before the save == after save + load (mapped in place) */
    CHECK(es_model_predict_batch(m, &b, p1) == 0);
    CHECK_MSG(es_model_save(m, qpath, 0) == 0, "%s", es_model_errmsg(m));
    CHECK_MSG(es_model_load(&m2, qpath, ES_LOAD_MAP, &err) == 0, "%s", err.msg);
    CHECK(es__storage_precision(m2->st) == p);
    CHECK_EQ_INT(m2->st->param_bytes, param_q);
    CHECK_EQ_INT(m2->st->aux_bytes, m->st->aux_bytes);
    CHECK(es_model_predict_batch(m2, &b, p2) == 0);
    CHECK_MSG(memcmp(p1, p2, (size_t)n * sizeof *p1) == 0, "%s %s: predictions changed over save + load", method, prec_name);
    printf("  %s %s: %d table(s), params %zu -> %zu bytes (codes %zu), %zu mapped bytes, max |lookup - twin| %.3g, p[0] %.9g\n",
           method, prec_name, nt, param_fp32, param_q, code_bytes, es__model_mapped_bytes(m2), maxd, (double)p1[0]);
    const char *no_remap = getenv("ES_NO_REMAP");
    if (big && !(no_remap && *no_remap && strcmp(no_remap, "0")))
        CHECK_MSG(es__model_mapped_bytes(m2) >= code_bytes / 4096 * 4096, "the codes were copied, not mapped: %zu bytes",
                  es__model_mapped_bytes(m2));
    /* training refused, before anything changes */
    int rc = es_model_train_batch(m2, &b, NULL);
    CHECK_EQ_INT(rc, ES_EINVAL);
    CHECK_STR_HAS(es_model_errmsg(m2), "codes without their training state (a quantized or served model): it serves only");
    CHECK_STR_HAS(es_model_errmsg(m2), prec_name);
    CHECK(es_model_predict_batch(m2, &b, p2) == 0 && memcmp(p1, p2, (size_t)n * sizeof *p1) == 0);
    /* and at the storage level */
    CHECK_EQ_INT(es__storage_backward(m2->st, &b, oq), ES_EINVAL);
    es_batch_free(&b);
    es_model_free(m);
    es_model_free(mr);
    es_model_free(m2);
    free(code);
    free(oq);
    free(oref);
    free(p1);
    free(p2);
    unlink(fp32);
    unlink(qpath);
}

static void roundtrip_opts(const char *method, const char *opts, const char *prec_name, int all_pairs) {
    es_test_ptq_roundtrip(method, opts, 0, prec_name, all_pairs ? ES_PTQ_ALL : ES_PTQ_SINGLE);
}

static void roundtrip(const char *method, const char *prec_name) { roundtrip_opts(method, NULL, prec_name, 0); }

TEST(ptq_roundtrip_full_int8) { roundtrip("full", "int8"); }
TEST(ptq_roundtrip_full_int4) { roundtrip("full", "int4"); }
TEST(ptq_roundtrip_hash_int8) { roundtrip("hash", "int8"); }
TEST(ptq_roundtrip_hash_int4) { roundtrip("hash", "int4"); }
TEST(ptq_roundtrip_adapt_int8) { roundtrip("adapt", "int8"); }
TEST(ptq_roundtrip_adapt_int4) { roundtrip("adapt", "int4"); }
TEST(ptq_roundtrip_unified_int8) { roundtrip("unified", "int8"); }
TEST(ptq_roundtrip_unified_int4) { roundtrip("unified", "int4"); }
/* fm's rows are dim + 1 = 17 floats: 17 chunks of one float over 5 sub-tables */
TEST(ptq_roundtrip_unified_chunks_int8) { roundtrip_opts("unified", "chunks=17,subtables=5", "int8", 0); }
TEST(ptq_roundtrip_qr_int8) { roundtrip_opts("qr", NULL, "int8", 1); }
TEST(ptq_roundtrip_qr_int4) { roundtrip_opts("qr", NULL, "int4", 1); }
TEST(ptq_roundtrip_qr_add3_int8) { roundtrip_opts("qr", "op=add,partitions=3", "int8", 1); }
TEST(ptq_roundtrip_qr_cat_fp16) { roundtrip_opts("qr", "op=cat,share=1", "fp16", 1); }
TEST(ptq_roundtrip_qr_mult4_int2) { roundtrip_opts("qr", "partitions=4", "int2", 1); }

/* qr's tables convert all or none: a value that cannot be encoded in table
 * 1 fails the quantize with the table named, and table 0 stays fp32. */
TEST(ptq_qr_all_or_none) {
    const char *path = es_test_path("ptq_qr_aon.es");
    CHECK(train_opts(path, CRITEO, "fm", "qr", NULL, 8, 300, 0, 0, 1, NULL) == 0);
    es_model *m = NULL;
    es_err err = {0};
    CHECK_MSG(es_model_load(&m, path, 0, &err) == 0, "%s", err.msg);
    es_rows *t[MAX_TABLES];
    CHECK(tables_of(m->st, t) == 2);
    const size_t pb = m->st->param_bytes, sb = m->st->state_bytes;
    t[1]->w[5] = 1e6f; /* beyond the f16 range of int8's scale and bias */
    CHECK_EQ_INT(es_model_quantize(m, "int8", &err), ES_ERANGE);
    CHECK_STR_HAS(err.msg, "table 1");
    CHECK(t[0]->prec == ES_PREC_FP32 && t[0]->w && t[0]->q == NULL);
    CHECK(t[1]->prec == ES_PREC_FP32 && t[1]->w && t[1]->q == NULL);
    CHECK_EQ_INT(m->st->param_bytes, pb);
    CHECK_EQ_INT(m->st->state_bytes, sb);
    t[1]->w[5] = 0.0f;
    CHECK_MSG(es_model_quantize(m, "int8", &err) == 0, "%s", err.msg);
    CHECK(t[0]->prec == ES_PREC_INT8 && t[1]->prec == ES_PREC_INT8);
    es_model_free(m);
    unlink(path);
}

TEST(ptq_bytes) {
    const char *path = es_test_path("ptq_bytes.es");
    CHECK(train_to(path, "dlrm", "full", 16, 600, 0, 0, 1, NULL) == 0); /* dlrm: rows of exactly dim floats */
    static const char *const precs[] = {"fp16", "int16", "int8", "int4", "int2"};
    size_t fp32_param = 0;
    for (int i = 0; i < 5; i++) {
        es_model *m = NULL;
        es_err err = {0};
        CHECK_MSG(es_model_load(&m, path, 0, &err) == 0, "%s", err.msg);
        es_rows *t = m->st->ops->rows(m->st, 0);
        const size_t aux = m->st->aux_bytes, n_rows = (size_t)t->n_rows;
        fp32_param = m->st->param_bytes;
        CHECK_EQ_INT(fp32_param, n_rows * 16 * sizeof(float));
        CHECK_EQ_INT(es_model_table_bytes(m), fp32_param + aux);
        CHECK(es_model_quantize(m, precs[i], &err) == 0);
        es_precision p;
        es__prec_parse(precs[i], &p);
        CHECK_EQ_INT(m->st->param_bytes, n_rows * es__prec_row_bytes(p, 16));
        CHECK_EQ_INT(m->st->aux_bytes, aux);
        CHECK_EQ_INT(es_model_table_bytes(m), m->st->param_bytes + aux);
        CHECK_EQ_INT(es_model_table_state_bytes(m), 0);
        printf("  %-5s: %zu table parameter bytes (%.4f of fp32's %zu), maps %zu\n", precs[i], m->st->param_bytes,
               (double)m->st->param_bytes / (double)fp32_param, fp32_param, aux);
        if (p == ES_PREC_INT4) {
            /* 8 bytes of codes + 4 of scale and bias per 64 of fp32 */
            CHECK_EQ_INT(m->st->param_bytes * 64, fp32_param * 12);
            CHECK(m->st->param_bytes * 5 < fp32_param);
        }
        es_model_free(m);
    }
    unlink(path);
}

/* The held-out rows of --valid-frac 0.2: the last 2000 lines of the sample. */
static const char *valid_file(void) {
    const char *path = es_test_path("ptq_valid.tsv");
    if (es_test_sh(NULL, "tail -n 2000 %s > %s", CRITEO, path) != 0) return NULL;
    return path;
}

/* For each model and seeds 1..3: train fp32 on `data` (valid_frac 0.2 held
 * out, early stopping on it, 1 thread), then quantize to fp16/int8/int4/int2
 * and evaluate on `valid` (the same held-out rows); int8 must lose at most
 * 0.001 AUC.  Prints the rows of the table in docs/methods.md. */
static void auc_case(const char *data, const char *valid, uint64_t valid_rows, const char *columns, double label_threshold,
                     uint64_t max_rows, const char *method) {
    static const char *const models[] = {"fm", "dlrm"};
    static const char *const precs[] = {"fp16", "int8", "int4", "int2"};
    printf("  %s (%s)\n  model seed fp32_auc   fp16_loss   int8_loss   int4_loss   int2_loss  (AUC lost on the held-out rows)\n",
           data, method);
    for (int mi = 0; mi < 2; mi++) {
        double sum[5] = {0}, worst[5] = {-1, -1, -1, -1, -1};
        size_t bytes[5] = {0};
        for (uint64_t seed = 1; seed <= 3; seed++) {
            const char *path = es_test_path("ptq_auc.es");
            es_train_result res;
            es_train_params p = es_train_params_default();
            p.train_path = data;
            if (columns) {
                p.reader.columns = columns;
                p.reader.label_threshold = label_threshold;
            }
            p.model = models[mi];
            p.storage = method;
            p.max_rows = max_rows;
            p.valid_frac = 0.2;
            p.early_stop = 2;
            p.refit = 0;
            p.epochs = ES_TRAIN_AUTO;
            p.threads = 1;
            p.seed = seed;
            p.out_path = path;
            es_err err = {0};
            CHECK_MSG(es_train(&p, &res, &err) == 0, "train %s: %s", models[mi], err.msg);
            es_model *m = NULL;
            es_metrics m32, mq;
            CHECK_MSG(es_model_load(&m, path, 0, &err) == 0, "%s", err.msg);
            CHECK_MSG(es_model_eval_file(m, valid, &m32) == 0, "%s", es_model_errmsg(m));
            CHECK_EQ_INT(m32.rows, valid_rows);
            CHECK_NEAR(m32.auc, res.valid.auc, 1e-12); /* the same rows as the run's validation */
            bytes[0] = es_model_table_bytes(m) - m->st->aux_bytes;
            es_model_free(m);
            sum[0] += m32.auc;
            printf("  %-5s %4llu %.6f", models[mi], (unsigned long long)seed, m32.auc);
            for (int pi = 0; pi < 4; pi++) {
                CHECK(es_model_load(&m, path, 0, &err) == 0);
                CHECK_MSG(es_model_quantize(m, precs[pi], &err) == 0, "%s", err.msg);
                CHECK_MSG(es_model_eval_file(m, valid, &mq) == 0, "%s", es_model_errmsg(m));
                bytes[pi + 1] = m->st->param_bytes;
                es_model_free(m);
                double loss = m32.auc - mq.auc;
                sum[pi + 1] += mq.auc;
                if (seed == 1 || loss > worst[pi + 1]) worst[pi + 1] = loss;
                printf("  %+.6f", loss);
                if (!strcmp(precs[pi], "int8")) CHECK_MSG(loss <= 0.001, "%s seed %llu: int8 loses %.6f AUC", models[mi], (unsigned long long)seed, loss);
            }
            printf("\n");
            unlink(path);
        }
        printf("  %-5s mean AUC: fp32 %.4f (%zu B)", models[mi], sum[0] / 3, bytes[0]);
        for (int pi = 0; pi < 4; pi++)
            printf(", %s %.4f (mean loss %+.6f, worst %+.6f, %zu B)", precs[pi], sum[pi + 1] / 3, (sum[0] - sum[pi + 1]) / 3,
                   worst[pi + 1], bytes[pi + 1]);
        printf("\n");
    }
}

TEST_SLOW(ptq_auc) {
    const char *valid = valid_file();
    CHECK(valid);
    auc_case(CRITEO, valid, 2000, NULL, 0, 0, "full");
}

#define MOVIELENS "data/ml-latest-small.csv"

/* MovieLens: the first 30000 ratings, rating >= 4 is a click; the last
 * 6000 of them (valid_frac 0.2) are held out. */
TEST_SLOW(ptq_auc_movielens) {
    const char *valid = es_test_path("ptq_valid_ml.csv");
    CHECK(es_test_sh(NULL, "{ head -n 1 %s; sed -n 24002,30001p %s; } > %s", MOVIELENS, MOVIELENS, valid) == 0);
    auc_case(MOVIELENS, valid, 6000, "rating:label,userId:cat,movieId:cat,genres:multi", 4, 30000, "full");
    unlink(valid);
}

/* Copy model file src to dst with the last digit of its storage.precision
 * value ("int8") replaced by c. */
static int patch_precision(const char *src, const char *dst, char c) {
    FILE *f = fopen(src, "rb");
    if (!f) return -1;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *img = malloc((size_t)len);
    int rc = -1;
    if (img && fread(img, 1, (size_t)len, f) == (size_t)len) {
        char *k = memmem(img, (size_t)len, "storage.precision", 17);
        char *v = k ? memmem(k, (size_t)(img + len - k), "int8", 4) : NULL;
        if (v && v - k < 40) {
            v[3] = c;
            es__file_fix_checksum(img, (size_t)len); /* reach the checks behind the header checksum */
            FILE *o = fopen(dst, "wb");
            if (o) {
                rc = fwrite(img, 1, (size_t)len, o) == (size_t)len ? 0 : -1;
                if (fclose(o) != 0) rc = -1;
            }
        }
    }
    fclose(f);
    free(img);
    return rc;
}

TEST(ptq_errors) {
    const char *model = es_test_path("ptq_err.es"), *out = es_test_path("ptq_err_out.es"), *log = es_test_path("ptq_err.log");
    char uni[512];
    snprintf(uni, sizeof uni, "%s", es_test_path("ptq_err_tt.es"));
    CHECK(train_to(model, "fm", "full", 8, 300, 0, 0, 1, NULL) == 0);
    unlink(out);
    /* unknown precision */
    CHECK(es_test_sh(log, "%s quantize %s --precision int3 -o %s", es_bin(), model, out) == 2);
    CHECK(access(out, F_OK) != 0);
    char *s = es_test_slurp(log);
    CHECK_STR_HAS(s, "int3");
    free(s);
    /* a file that is not a model */
    CHECK(es_test_sh(log, "%s quantize %s --precision int8 -o %s", es_bin(), CRITEO, out) == 1);
    CHECK(access(out, F_OK) != 0);
    s = es_test_slurp(log);
    CHECK_STR_HAS(s, "not an embstore file");
    free(s);
    /* OUT == MODEL */
    CHECK(es_test_sh(log, "%s quantize %s --precision int8 -o %s", es_bin(), model, model) == 2);
    s = es_test_slurp(log);
    CHECK_STR_HAS(s, "is the input model");
    free(s);
    /* a method that cannot be quantized yet */
    CHECK(es_test_sh(NULL, "%s train %s --max-rows 300 --valid-frac 0 --model fm --storage tt --quiet --out %s", es_bin(), CRITEO, uni) == 0);
    CHECK(es_test_sh(log, "%s quantize %s --precision int8 -o %s", es_bin(), uni, out) == 1);
    CHECK(access(out, F_OK) != 0);
    s = es_test_slurp(log);
    CHECK_STR_HAS(s, "storage method 'tt' has no row tables to quantize");
    free(s);
    /* the API: fp32 is not a target, twice is refused, the model stays usable */
    es_model *m = NULL;
    es_err err = {0};
    CHECK(es_model_load(&m, model, 0, &err) == 0);
    CHECK_EQ_INT(es_model_quantize(m, "fp32", &err), ES_EINVAL);
    CHECK_EQ_INT(es_model_quantize(m, "int7", &err), ES_EINVAL);
    CHECK_STR_HAS(err.msg, "unknown precision 'int7'");
    CHECK(es_model_quantize(m, "int8", &err) == 0);
    CHECK_EQ_INT(es_model_quantize(m, "int4", &err), ES_EINVAL);
    CHECK_STR_HAS(err.msg, "already holds int8 codes");
    es_model_free(m);
    /* the CLI works, and refuses to quantize its own output again */
    CHECK(es_test_sh(log, "%s quantize %s --precision int8 -o %s", es_bin(), model, out) == 0);
    CHECK(es_test_sh(log, "%s quantize --help", es_bin()) == 0);
    s = es_test_slurp(log);
    CHECK_STR_HAS(s, "--precision P");
    free(s);
    CHECK(es_test_sh(log, "%s --help", es_bin()) == 0);
    s = es_test_slurp(log);
    CHECK_STR_HAS(s, "quantize");
    free(s);
    /* corrupt files: a precision that is not one, and one that makes the
     * code tensor the wrong size (int8 rows read as int4) */
    const char *bad = es_test_path("ptq_err_bad.es");
    CHECK(patch_precision(out, bad, '9') == 0);
    m = NULL;
    CHECK_EQ_INT(es_model_load(&m, bad, ES_LOAD_NO_VERIFY, &err), ES_EFORMAT);
    CHECK_STR_HAS(err.msg, bad);
    CHECK_STR_HAS(err.msg, "storage.precision=int9 is not a precision");
    CHECK(patch_precision(out, bad, '4') == 0);
    CHECK_EQ_INT(es_model_load(&m, bad, ES_LOAD_NO_VERIFY, &err), ES_EFORMAT);
    CHECK_STR_HAS(err.msg, bad);
    CHECK_STR_HAS(err.msg, "storage.weight.q");
    CHECK(es_test_sh(log, "%s eval %s %s", es_bin(), bad, CRITEO) != 0);
    unlink(bad);
    unlink(out);
    unlink(model);
    unlink(uni);
    unlink(log);
}
