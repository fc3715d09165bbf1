/*
 * test_dedup.c — the `dedup` storage method (src/storage/dedup.c):
 *   - the generic harness (storage_harness.h) in both share modes and with
 *     blocks: finite differences on the dense table ("opt.train.weight"),
 *     budgets (serving bytes <= budget, bytes reported = bytes allocated),
 *     save/load round trips, determinism, threads, allocation failures;
 *   - the merge: a table holding exactly U distinct rows (duplicated) is
 *     served with unchanged lookups; the error of the served lookups grows
 *     smoothly as uniq= shrinks and stays well under a random merge's;
 *   - the serving form: a storage loaded without its training state serves
 *     the merged rows, refuses backward, and round trips; a remap entry out
 *     of range is refused at load;
 *   - checkpoints resume exactly (resume_harness.h);
 *   - slow: the merge's cost on 100k rows of dim 16 (printed), and fm on
 *     the Criteo sample at 1/4 and 1/8 of the full table.
 */
#include "embstore.h"
#include "resume_harness.h"
#include "storage/storage.h"
#include "storage_harness.h"
#include "test.h"
#include "train/model.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const double fracs[] = {0.25, 1.0 / 8, 1.0 / 32};
#define NFRACS ((int)ES_ARRAY_LEN(fracs))

/* ---- generic harness ------------------------------------------------------------------- */

static void harness(int share, const char *opts) {
    es_sh_cfg c = es_sh_cfg_make("dedup", share);
    c.opts = opts;
    CHECK(es_sh_all(&c));
    es_sh_cfg b = es_sh_cfg_make("dedup", share);
    b.opts = opts;
    CHECK(es_sh_budget(&b, fracs, NFRACS));
}

TEST(dedup_harness_share0) { harness(0, NULL); }
TEST(dedup_harness_share1) { harness(1, NULL); }
TEST(dedup_harness_block4_mean) { harness(0, "block=4,merge=mean,ratio=3"); }

/* ---- helpers ------------------------------------------------------------------------------ */

static es_storage *make(const char *opts, double budget, es_optim opt, float lr) {
    es_storage_params p = es__storage_params_default();
    p.method = "dedup";
    p.n_fields = 3;
    p.dim = 8;
    p.budget = budget;
    p.opts = opts;
    p.seed = 5;
    p.max_batch = 64;
    p.opt.kind = opt;
    p.opt.lr = lr;
    es_storage *s = NULL;
    es_err err;
    if (es__storage_create(&s, &p, NULL, &err) != 0) printf("    create dedup %s: %s\n", opts, err.msg);
    return s;
}


/* A storage created from s's meta, with s's serving tensors only (as a
 * plain saved model is loaded); NULL (after printing why) when that fails. */
static es_storage *served_copy(es_storage *s, int *load_rc) {
    es_storage_params p = s->p;
    p.opts = s->meta;
    p.budget = s->budget_bytes;
    p.seed = 999;
    es_storage *c = NULL;
    es_err err;
    if (es__storage_create(&c, &p, NULL, &err) != 0) {
        printf("    served copy: %s\n", err.msg);
        return NULL;
    }
    es_tensor_ref ra[16], rc[16];
    int na = es__storage_tensors(s, ra, 16), nc = es__storage_tensors(c, rc, 16);
    for (int i = 0; i < nc && i < na; i++)
        if (strncmp(rc[i].name, "opt.", 4) != 0 && rc[i].nbytes == ra[i].nbytes) memcpy(rc[i].data, ra[i].data, ra[i].nbytes);
    int r = es__storage_after_load(c);
    if (load_rc) *load_rc = r;
    if (r != 0) {
        printf("    after_load: %s\n", es__storage_errmsg(c));
        es__storage_free(c);
        return NULL;
    }
    return c;
}

/* Squared error of b's lookups against a's and a's squared norm, over a
 * batch of 200 rows; -1 when the test runs out of memory. */
static double lookup_err(es_storage *a, es_storage *b, uint64_t seed, double *norm) {
    es_batch bt;
    if (es_sh_batch(&bt, 200, a->p.n_fields, seed) != 0) return -1;
    size_t n = (size_t)bt.n * a->p.n_fields * a->p.dim;
    float *x = malloc(n * sizeof *x), *y = malloc(n * sizeof *y);
    double e = -1;
    if (x && y && es__storage_lookup(a, &bt, 0, bt.n, x) == 0 && es__storage_lookup(b, &bt, 0, bt.n, y) == 0) {
        e = 0;
        *norm = 0;
        for (size_t i = 0; i < n; i++) {
            e += ((double)x[i] - y[i]) * ((double)x[i] - y[i]);
            *norm += (double)x[i] * x[i];
        }
    }
    free(x);
    free(y);
    es_batch_free(&bt);
    return e;
}

/* Overwrite the dense table of s with a structured one: row r is
 * prototype (r mod P) (P prototypes drawn from seed 11) plus noise of
 * scale `noise`, with P distinct prototypes; exact duplicates when noise is 0. */
static void fill_structured(es_storage *s, uint64_t P, float noise) {
    es_tensor_ref r[16];
    es_tensor_ref *w = es_sh_tensor(s, r, 16, "opt.train.weight");
    if (!w) return;
    const int dim = s->p.dim;
    const uint64_t n = w->nbytes / sizeof(float) / (uint64_t)dim;
    float *proto = malloc((size_t)P * dim * sizeof *proto);
    if (!proto) return;
    es_rng g;
    es__rng_seed(&g, 11);
    for (size_t i = 0; i < (size_t)P * dim; i++) proto[i] = 0.1f * es__rng_normal(&g);
    float *x = w->data;
    for (uint64_t row = 0; row < n; row++) {
        /* a scrambled prototype order, so duplicates are not neighbours */
        uint64_t k = (row * 2654435761u) % P;
        for (int j = 0; j < dim; j++) x[row * dim + j] = proto[k * dim + j] + (noise > 0 ? noise * es__rng_normal(&g) : 0.0f);
    }
    free(proto);
}

/* ---- the merge ---------------------------------------------------------------------------- */

TEST(dedup_exact_duplicates_merge_first) {
    /* 400 dense rows holding 60 distinct rows; uniq=60: served lookups
     * equal the dense ones exactly; also with block=2 (rows r, r+1 of a
     * block are prototypes of the same pattern only when P divides the
     * block structure: 60 distinct blocks of 2 rows) */
    static const char *const opts[] = {"rows=400,share=1,uniq=60", "rows=400,share=1,uniq=60,merge=mean",
                                       "rows=130:140:130,uniq=60,bits=4"};
    for (size_t k = 0; k < ES_ARRAY_LEN(opts); k++) {
        es_storage *s = make(opts[k], 0, ES_OPT_ROWWISE_ADAGRAD, 0.05f);
        CHECK(s);
        CHECK(es_sh_step(s, 1) == 0);
        fill_structured(s, 60, 0.0f);
        es_storage *c = served_copy(s, NULL);
        CHECK(c);
        double norm = 0, e = lookup_err(s, c, 3, &norm);
        printf("    %-34s exact duplicates: squared error %.3g of %.3g\n", opts[k], e, norm);
        CHECK(e == 0 && norm > 0);
        es__storage_free(c);
        es__storage_free(s);
    }
    /* blocks: 100 blocks of 4 rows, 25 distinct blocks */
    es_storage *s = make("rows=400,share=1,uniq=25,block=4", 0, ES_OPT_ROWWISE_ADAGRAD, 0.05f);
    CHECK(s);
    CHECK(es_sh_step(s, 1) == 0);
    es_tensor_ref r[16];
    es_tensor_ref *w = es_sh_tensor(s, r, 16, "opt.train.weight");
    CHECK(w && w->nbytes == 400 * 8 * 4);
    float *x = w->data;
    for (int u = 0; u < 100; u++)
        for (int e = 0; e < 32; e++) x[u * 32 + e] = (float)((u * 7) % 25) * 0.01f + (float)e * 0.001f;
    es_storage *c = served_copy(s, NULL);
    CHECK(c);
    double norm = 0, e = lookup_err(s, c, 3, &norm);
    printf("    block=4 exact duplicate blocks: squared error %.3g of %.3g\n", e, norm);
    CHECK(e == 0 && norm > 0);
    es__storage_free(c);
    es__storage_free(s);
}

/* Squared error when the dense rows are served by a random merge to U
 * rows (row r -> a hash of r mod U; unique row = the mean of its rows). */
static double random_err(es_storage *s, uint64_t U, double *norm) {
    es_storage *c = served_copy(s, NULL);
    if (!c) return -1;
    es_tensor_ref rs[16], rc[16];
    es_tensor_ref *w = es_sh_tensor(s, rs, 16, "opt.train.weight");
    es_tensor_ref *uq = es_sh_tensor(c, rc, 16, "serve.uniq"), *rm = es_sh_tensor(c, rc, 16, "serve.remap");
    const int dim = s->p.dim;
    const uint64_t n = w->nbytes / 4 / (uint64_t)dim;
    double *sum = calloc((size_t)U * dim, sizeof *sum);
    uint64_t *cnt = calloc((size_t)U, sizeof *cnt);
    const int ib = (int)(rm->nbytes / n);
    for (uint64_t r = 0; r < n; r++) {
        for (int j = 0; j < dim; j++) sum[(es__hash_u64(r, 99) % U) * dim + j] += ((float *)w->data)[r * dim + j];
        cnt[es__hash_u64(r, 99) % U]++;
        uint64_t v = es__hash_u64(r, 99) % U;
        for (int i = 0; i < ib; i++, v >>= 8) ((uint8_t *)rm->data)[r * ib + i] = (uint8_t)v;
    }
    for (uint64_t u = 0; u < U; u++)
        for (int j = 0; j < dim; j++) ((float *)uq->data)[u * dim + j] = cnt[u] ? (float)(sum[u * dim + j] / (double)cnt[u]) : 0.0f;
    double e = lookup_err(s, c, 3, norm);
    free(sum);
    free(cnt);
    es__storage_free(c);
    return e;
}

/* Relative lookup errors of the LSH merge and of a random one for 2048
 * dense rows from fill_structured(P, noise) served by uniq=U rows. */
static int merge_errors(uint64_t P, float noise, uint64_t U, double *rel, double *rel_random) {
    char o[96];
    snprintf(o, sizeof o, "rows=2048,share=1,merge=mean,uniq=%llu", (unsigned long long)U);
    es_storage *s = make(o, 0, ES_OPT_ROWWISE_ADAGRAD, 0.05f);
    if (!s || es_sh_step(s, 1) != 0) return 0;
    fill_structured(s, P, noise);
    es_storage *c = served_copy(s, NULL);
    double norm = 0, e = c ? lookup_err(s, c, 3, &norm) : -1, nn = 0, rnd = random_err(s, U, &nn);
    es__storage_free(c);
    es__storage_free(s);
    if (e < 0 || rnd < 0) return 0;
    *rel = sqrt(e / norm);
    *rel_random = sqrt(rnd / nn);
    printf("    P %4llu noise %.2f: uniq %5llu of 2048: relative lookup error %.4f (random merge: %.4f)\n", (unsigned long long)P,
           (double)noise, (unsigned long long)U, *rel, *rel_random);
    return 1;
}

TEST(dedup_error_grows_smoothly_as_uniq_shrinks) {
    static const uint64_t Us[] = {1024, 512, 256, 128, 64, 32, 16, 8};
    /* 2048 rows from 64 prototypes with noise 0.01 (prototypes 0.1 N(0,1)):
     * down to 64 unique rows the merge has only noise to remove (error
     * about the noise, 0.1 of the norm); below, prototypes must merge and
     * the error jumps, as it must */
    double prev = 0, rel, rnd;
    for (size_t k = 0; k < ES_ARRAY_LEN(Us); k++) {
        CHECK(merge_errors(64, 0.01f, Us[k], &rel, &rnd));
        CHECK_MSG(rel >= prev * 0.98, "error fell from %.4f to %.4f", prev, rel);
        if (Us[k] >= 64) CHECK_MSG(rel < 0.2, "uniq %llu: error %.4f with 64 prototypes", (unsigned long long)Us[k], rel);
        CHECK_MSG(rel < 0.8 * rnd, "LSH merge %.4f not better than random %.4f", rel, rnd);
        prev = rel;
    }
    /* 2048 distinct Gaussian rows, no structure: the error grows smoothly
     * (at most 2x per halving of uniq) and stays under a random merge's */
    prev = 0;
    for (size_t k = 0; k < ES_ARRAY_LEN(Us); k++) {
        CHECK(merge_errors(2048, 0.0f, Us[k], &rel, &rnd));
        CHECK_MSG(rel >= prev * 0.98, "error fell from %.4f to %.4f", prev, rel);
        if (prev > 0) CHECK_MSG(rel <= 2.0 * prev, "error jumped from %.4f to %.4f", prev, rel);
        CHECK_MSG(rel < rnd, "LSH merge %.4f not better than random %.4f", rel, rnd);
        prev = rel;
    }
}

TEST(dedup_untouched_rows_merge_first) {
    /* merge=count: rows no value looked up weigh 1/16 and are merged into
     * the nearest before any trained row moves: with uniq >= the rows a
     * few training steps touched, lookups of the trained keys change
     * little compared with merge=mean */
    double rel[2];
    static const char *const opts[] = {"rows=3000,share=1,uniq=600", "rows=3000,share=1,uniq=600,merge=mean"};
    for (int k = 0; k < 2; k++) {
        es_storage *s = make(opts[k], 0, ES_OPT_ROWWISE_ADAGRAD, 0.1f);
        CHECK(s);
        for (int i = 1; i <= 3; i++) CHECK(es_sh_step(s, (uint64_t)i) == 0);
        es_storage *c = served_copy(s, NULL);
        CHECK(c);
        double norm = 0, e = lookup_err(s, c, 2, &norm); /* batch seed 2: keys trained on */
        rel[k] = sqrt(e / norm);
        printf("    %-40s relative error on trained keys %.4f\n", opts[k], rel[k]);
        es__storage_free(c);
        es__storage_free(s);
    }
    CHECK_MSG(rel[0] < rel[1], "count-weighted %.4f vs mean %.4f", rel[0], rel[1]);
}

/* ---- serving form ----------------------------------------------------------------------------- */

TEST(dedup_served_copy_refuses_training_and_round_trips) {
    es_storage *s = make(NULL, 6000, ES_OPT_ROWWISE_ADAGRAD, 0.05f);
    CHECK(s);
    printf("    budget 6000: meta %s, params %zu + aux %zu, state %zu\n", s->meta, s->param_bytes, s->aux_bytes, s->state_bytes);
    CHECK((double)(s->param_bytes + s->aux_bytes) <= 6000 && (double)(s->param_bytes + s->aux_bytes) >= 0.95 * 6000);
    for (int i = 1; i <= 4; i++) CHECK(es_sh_step(s, (uint64_t)i) == 0);
    es_storage *c = served_copy(s, NULL);
    CHECK(c);
    es_batch b;
    CHECK(es_sh_batch(&b, 4, 3, 1) == 0);
    float g[4 * 3 * 8] = {0};
    CHECK_EQ_INT(es__storage_backward(c, &b, g), ES_EINVAL);
    CHECK_STR_HAS(es__storage_errmsg(c), "without its training state");
    es_batch_free(&b);
    /* a copy of the served copy serves the same, bit for bit */
    es_storage *c2 = served_copy(c, NULL);
    CHECK(c2);
    double norm = 0;
    CHECK(lookup_err(c, c2, 9, &norm) == 0 && norm > 0);
    es_tensor_ref r1[16], r2[16];
    es_tensor_ref *u1 = es_sh_tensor(s, r1, 16, "serve.uniq"), *u2 = es_sh_tensor(c2, r2, 16, "serve.uniq");
    CHECK(u1 && u2 && u1->nbytes == u2->nbytes && memcmp(u1->data, u2->data, u1->nbytes) == 0);
    es__storage_free(c2);
    es__storage_free(c);
    es__storage_free(s);
}

TEST(dedup_bad_remap_refused_at_load) {
    es_storage *s = make("rows=300,share=1,uniq=40", 0, ES_OPT_SGD, 0.05f);
    CHECK(s);
    CHECK(es_sh_step(s, 1) == 0);
    es_tensor_ref r[16];
    es_tensor_ref *rm = es_sh_tensor(s, r, 16, "serve.remap");
    CHECK(rm && rm->nbytes == 300); /* 40 unique rows: one byte per entry */
    ((uint8_t *)rm->data)[17] = 40;
    CHECK_EQ_INT(es__storage_after_load(s), ES_EFORMAT);
    CHECK_STR_HAS(es__storage_errmsg(s), "serve.remap[17] = 40 is out of range");
    es__storage_free(s);
    /* two bytes per entry past 256 unique rows */
    s = make("rows=2000,share=1,uniq=300", 0, ES_OPT_SGD, 0.05f);
    CHECK(s);
    CHECK(es_sh_step(s, 1) == 0);
    rm = es_sh_tensor(s, r, 16, "serve.remap");
    CHECK(rm && rm->nbytes == 4000);
    ((uint8_t *)rm->data)[2 * 5 + 1] = 0xff;
    CHECK_EQ_INT(es__storage_after_load(s), ES_EFORMAT);
    CHECK_STR_HAS(es__storage_errmsg(s), "serve.remap[5]");
    es__storage_free(s);
}

TEST(dedup_bad_options_are_refused) {
    es_storage_params p = es__storage_params_default();
    p.method = "dedup";
    p.n_fields = 2;
    p.dim = 8;
    es_storage *s = NULL;
    es_err err;
    p.opts = "rows=100,share=1,uniq=101";
    CHECK_EQ_INT(es__storage_create(&s, &p, NULL, &err), ES_EINVAL);
    CHECK_STR_HAS(err.msg, "uniq=101 is more than the 100 dense units");
    p.opts = "";
    CHECK_EQ_INT(es__storage_create(&s, &p, NULL, &err), ES_EINVAL);
    CHECK_STR_HAS(err.msg, "needs a budget");
    p.opts = "ratio=0.5";
    p.budget = 4000;
    CHECK_EQ_INT(es__storage_create(&s, &p, NULL, &err), ES_EINVAL);
    CHECK_STR_HAS(err.msg, "ratio");
    p.opts = "block=65";
    CHECK_EQ_INT(es__storage_create(&s, &p, NULL, &err), ES_EINVAL);
    CHECK_STR_HAS(err.msg, "block");
    p.opts = NULL;
    p.budget = 60;
    CHECK_EQ_INT(es__storage_create(&s, &p, NULL, &err), ES_EBUDGET);
    printf("    budget 60: %s\n", err.msg);
    CHECK(!s);
}

/* ---- checkpoints ------------------------------------------------------------------------------- */

/* The generic es_test_checkpoint_continues (resume_harness.c) also wants a
 * plain model file to predict what the trained model does, which a lossy
 * serving form cannot: this copy of it checks the resume bit for bit, and
 * then that the plain file's predictions are stable (a re-save of the
 * loaded model predicts the same bits) and near the trained model's. */
static int train_steps(es_model *m, es_reader *r, es_batch *b, int batches) {
    for (int i = 0; i < batches; i++)
        if (es_reader_next(r, b) <= 0 || es_model_train_batch(m, b, NULL) != 0) return -1;
    return 0;
}

static void resume(const char *opts, const char *model) {
    es_model_params mp = es_model_params_default();
    mp.model = model;
    mp.storage = "dedup";
    mp.storage_opts = opts;
    mp.budget = 20000;
    mp.batch = 64;
    es_set_threads(1);
    es_err err = {0};
    es_reader *r = NULL;
    CHECK(es_reader_open(&r, "data/criteo_kaggle_train_first10k.tsv", NULL, &err) == 0);
    mp.n_dense = es_reader_n_dense(r);
    mp.n_fields = es_reader_n_fields(r);
    es_batch b = {0};
    es_model *m = NULL, *c = NULL, *c2 = NULL;
    float p1[64], p2[64], p3[64];
    CHECK(es_batch_alloc(&b, 64, mp.n_dense, mp.n_fields, 0) == 0);
    CHECK_MSG(es_model_create(&m, &mp, NULL, &err) == 0, "%s", err.msg);
    es_checkpoint pos = {0, 320, 320, 1.0}, back = {0};
    const char *path = es_test_path("dedup_resume.ckpt");
    CHECK(train_steps(m, r, &b, 5) == 0 && es_model_checkpoint_save(m, path, &pos) == 0 && train_steps(m, r, &b, 7) == 0);
    CHECK_MSG(es_model_checkpoint_load(&c, path, &back, &err) == 0, "%s", err.msg);
    CHECK(es_reader_rewind(r) == 0);
    for (int i = 0; i < 5; i++) CHECK(es_reader_next(r, &b) > 0);
    CHECK(train_steps(c, r, &b, 7) == 0 && es_reader_rewind(r) == 0 && es_reader_next(r, &b) > 0);
    CHECK(es_model_predict_batch(m, &b, p1) == 0 && es_model_predict_batch(c, &b, p2) == 0);
    CHECK_MSG(memcmp(p1, p2, sizeof p1) == 0, "%s %s: resumed model differs: %.9g vs %.9g", opts ? opts : "", model, p1[0], p2[0]);
    es_model_free(c);
    c = NULL;
    const char *file = es_test_path("dedup_resume.es"), *file2 = es_test_path("dedup_resume2.es");
    CHECK(es_model_save(m, file, 0) == 0 && es_model_load(&c, file, 0, &err) == 0 && es_model_predict_batch(c, &b, p2) == 0);
    CHECK(es_model_save(c, file2, 0) == 0 && es_model_load(&c2, file2, 0, &err) == 0 && es_model_predict_batch(c2, &b, p3) == 0);
    CHECK_MSG(memcmp(p2, p3, sizeof p2) == 0, "re-saved served model differs");
    double d = 0;
    for (int i = 0; i < 64; i++) d = fmax(d, fabs((double)p1[i] - p2[i]));
    printf("    dedup %s %s: resumed exactly; served predictions within %.4f of the trained model's (%s)\n", opts ? opts : "", model, d,
           c->st->meta);
    es_model_free(m);
    es_model_free(c);
    es_model_free(c2);
    es_batch_free(&b);
    es_reader_free(r);
}

TEST(dedup_checkpoint_resumes_exactly) {
    resume(NULL, "fm");
    resume("block=2,share=1", "dlrm");
}

/* ---- cost ----------------------------------------------------------------------------------------- */

TEST_SLOW(dedup_cost_100k) {
    /* 100k dense rows of dim 16 (rows=, share=1) to 25k unique rows: the
     * time of one serving build (tensors()), printed, not asserted */
    es_storage_params p = es__storage_params_default();
    p.method = "dedup";
    p.n_fields = 1;
    p.dim = 16;
    p.opts = "rows=100000,share=1,uniq=25000";
    es_storage *s = NULL;
    es_err err;
    CHECK_MSG(es__storage_create(&s, &p, NULL, &err) == 0, "%s", err.msg);
    CHECK(es_sh_step(s, 1) == 0);
    es_tensor_ref r[16];
    double t0 = es__now();
    int n = es__storage_tensors(s, r, 16);
    double t1 = es__now();
    CHECK(n > 0);
    printf("    dedup of 100000 x 16 to 25000 unique rows: %.3f s (%s)\n", t1 - t0, s->meta);
    es__storage_free(s);
}

/* ---- real data ---------------------------------------------------------------------------------- */

#define CRITEO "data/criteo_kaggle_train_first10k.tsv"

/* fm, dim 8, row-wise Adagrad tables at lr 0.01, 2 epochs, the last 2000
 * rows held out (as test_prune.c).  The run's validation AUC is the dense
 * table's; the saved model serves the merged table: its AUC on the
 * held-out rows is *served.  Checks the saved model is within its budget
 * and that saving the loaded model again and loading that predicts the
 * same. */
static void criteo_case(const char *method, const char *opts, double budget, double *auc, double *served) {
    const char *path = es_test_path("dedup_criteo.es");
    const char *path2 = es_test_path("dedup_criteo2.es");
    es_train_params p = es_sh_criteo_fm(method, opts, budget, path);
    es_train_result res;
    es_err err = {0};
    CHECK_MSG(es_train(&p, &res, &err) == 0, "%s: %s", method, err.msg);
    es_model *m = NULL, *m2 = NULL;
    CHECK_MSG(es_model_load(&m, path, 0, &err) == 0, "%s", err.msg);
    const char *valid = es_test_path("dedup_valid.tsv");
    CHECK(es_test_sh(NULL, "tail -n 2000 %s > %s", CRITEO, valid) == 0);
    es_metrics mt, mt2;
    CHECK_MSG(es_model_eval_file(m, valid, &mt) == 0, "%s", es_model_errmsg(m));
    CHECK_MSG(es_model_save(m, path2, 0) == 0, "%s", es_model_errmsg(m));
    CHECK_MSG(es_model_load(&m2, path2, 0, &err) == 0, "%s", err.msg);
    CHECK_MSG(es_model_eval_file(m2, valid, &mt2) == 0, "%s", es_model_errmsg(m2));
    const es_storage *st = m->st;
    printf("    fm %-6s %-10s budget %.3f: valid AUC %.4f trained, %.4f served; serving %zu + %zu <= %.0f bytes (full %zu), "
           "training state %zu\n",
           method, opts ? opts : "", budget, res.valid.auc, mt.auc, st->param_bytes, st->aux_bytes, st->budget_bytes,
           res.full_bytes, st->state_bytes);
    CHECK(mt2.auc == mt.auc);
    CHECK((double)(st->param_bytes + st->aux_bytes) <= st->budget_bytes);
    CHECK((double)st->budget_bytes <= budget * (double)res.full_bytes + 1);
    es_model_free(m);
    es_model_free(m2);
    *auc = res.valid.auc;
    *served = mt.auc;
}

TEST_SLOW(dedup_criteo_fm) {
    /* hash at the same budget, same optimizer, as the yardstick (fm with
     * row-wise Adagrad reaches about 0.69-0.70 on this sample) */
    static const double budgets[] = {0.25, 0.125};
    for (int b = 0; b < 2; b++) {
        double hash = 0, hs = 0, auc = 0, served = 0;
        criteo_case("hash", NULL, budgets[b], &hash, &hs);
        CHECK_NEAR(hs, hash, 1e-9);
        criteo_case("dedup", NULL, budgets[b], &auc, &served);
        CHECK_MSG(served > 0.66 && served > hash - 0.03, "dedup at %.3f: served AUC %.4f, hash %.4f", budgets[b], served, hash);
        CHECK_MSG(fabs(served - auc) < 0.02, "dedup at %.3f: served AUC %.4f, trained %.4f", budgets[b], served, auc);
    }
}

/* For methods whose saved model is derived at save (dedup, pep,
 * deeplight), es_train reports the validation metrics of the model as
 * saved: the saved file, evaluated on the held-out rows, gives the same
 * AUC and logloss. */
TEST(dedup_train_reports_the_saved_model) {
    const char *methods[] = {"dedup", "pep", "deeplight"};
    const char *valid = es_test_path("dedup_served_valid.tsv");
    FILE *in = fopen("data/criteo_kaggle_train_first10k.tsv", "r"), *out = fopen(valid, "w");
    CHECK(in && out);
    char line[8192];
    for (int i = 0; fgets(line, sizeof line, in); i++)
        if (i >= 8000) fputs(line, out);
    fclose(in);
    fclose(out);
    for (int k = 0; k < 3; k++) {
        char path[600];
        snprintf(path, sizeof path, "%s", es_test_path("dedup_served.es"));
        es_train_params p = es_train_params_default();
        p.train_path = "data/criteo_kaggle_train_first10k.tsv";
        p.model = "dlrm";
        p.storage = methods[k];
        p.budget = 1.0 / 8;
        p.valid_frac = 0.2;
        p.epochs = 1;
        p.early_stop = 0;
        p.refit = 0;
        p.threads = 1;
        p.out_path = path;
        es_train_result r;
        es_err err = {0};
        CHECK_MSG(es_train(&p, &r, &err) == 0, "%s: %s", methods[k], err.msg);
        es_model *m = NULL;
        CHECK_MSG(es_model_load(&m, path, 0, &err) == 0, "%s", err.msg);
        es_metrics e;
        CHECK(es_model_eval_file(m, valid, &e) == 0);
        printf("    %-9s reported AUC %.6f, saved model %.6f\n", methods[k], r.valid.auc, e.auc);
        CHECK_MSG(fabs(e.auc - r.valid.auc) <= 1e-9 && fabs(e.logloss - r.valid.logloss) <= 1e-9,
                  "%s: reported %.9f / %.9f, the saved model %.9f / %.9f", methods[k], r.valid.auc, r.valid.logloss, e.auc,
                  e.logloss);
        es_model_free(m);
        unlink(path);
    }
    unlink(valid);
}
