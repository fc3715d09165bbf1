/*
 * test_ftrl.c — the FTRL-proximal table optimizer and lazy L2 on table rows
 * (issue 10):
 *   - the FTRL row update against the published rule (McMahan et al. 2013,
 *     Algorithm 1) stepped by hand in double, with l1 > 0 and l2 > 0; the
 *     dispatched update against its `_ref` twin over awkward widths;
 *   - lazy L2 (a row's missed decay applied when it is next touched) gives
 *     the weights of eager L2 applied to every row at every step, for SGD,
 *     Adagrad and row-wise Adagrad, with rows touched irregularly;
 *   - state accounting and the persisted optimizer record (old 6-number
 *     records still load);
 *   - checkpoints with FTRL state and with lazy-L2 state resume bit for bit;
 *   - the CLI: LR and FM train with --emb-optim ftrl; bad --emb-l2 values
 *     and FTRL / emb-l2 on methods without plain rows fail clearly.
 */
#include "test.h"
#include "resume_harness.h"
#include "core/core.h"
#include "optim/optim.h"
#include "storage/storage.h"

#define CRITEO "data/criteo_kaggle_train_first10k.tsv"

static void fill(es_rng *r, float *x, size_t n, float a) {
    for (size_t i = 0; i < n; i++) x[i] = (float)((es__rng_uniform(r) * 2.0 - 1.0) * a);
}

static es_optim_params ftrl_params(void) {
    es_optim_params o = {.kind = ES_OPT_FTRL, .lr = 0.05f, .eps = 1e-8f};
    es__optim_ftrl_defaults(&o);
    o.ftrl_alpha = 0.1f;
    o.ftrl_beta = 0.5f;
    o.ftrl_l1 = 0.5f;
    o.ftrl_l2 = 0.3f;
    return o;
}

/* ---- FTRL against the published rule ------------------------------------------ */

TEST(ftrl_update_follows_the_published_rule) {
    enum { ROWS = 3, DIM = 7, STEPS = 6 };
    const es_optim_params o = ftrl_params();
    es_rng rng;
    es__rng_seed(&rng, 7);
    es_rows t;
    CHECK(es__rows_init(&t, ROWS, DIM, &o, &rng, 0.05f) == ES_OK);
    CHECK_EQ_INT((int)es__rows_state_bytes(&t), ROWS * DIM * 2 * 4);
    /* the hand-stepped reference: w starts at the table's initial values, z = n = 0 */
    double w[ROWS][DIM], z[ROWS][DIM] = {{0}}, n[ROWS][DIM] = {{0}};
    for (int r = 0; r < ROWS; r++)
        for (int d = 0; d < DIM; d++) w[r][d] = t.w[r * DIM + d];
    const double a = o.ftrl_alpha, b = o.ftrl_beta, l1 = o.ftrl_l1, l2 = o.ftrl_l2;
    int zeros = 0;
    for (int s = 0; s < STEPS; s++) {
        for (int r = 0; r < ROWS; r++) {
            if ((s + r) % 3 == 2) continue; /* not every row every step */
            float g[DIM];
            fill(&rng, g, DIM, 0.8f);
            es__rows_update(&t, (uint64_t)r, g);
            for (int d = 0; d < DIM; d++) {
                double gd = g[d], sigma = (sqrt(n[r][d] + gd * gd) - sqrt(n[r][d])) / a;
                z[r][d] += gd - sigma * w[r][d];
                n[r][d] += gd * gd;
                w[r][d] = fabs(z[r][d]) <= l1 ? 0.0
                                              : -(z[r][d] - (z[r][d] > 0 ? l1 : -l1)) / ((b + sqrt(n[r][d])) / a + l2);
            }
        }
        for (int r = 0; r < ROWS; r++)
            for (int d = 0; d < DIM; d++) {
                double got = t.w[r * DIM + d];
                zeros += s == STEPS - 1 && got == 0.0;
                CHECK_MSG(es_test_close(got, w[r][d], 1e-7, 1e-6), "step %d row %d coord %d: %.9g vs %.9g", s, r, d,
                          got, w[r][d]);
                CHECK(es_test_close(t.acc[(size_t)r * 2 * DIM + d], z[r][d], 1e-6, 1e-5));
                CHECK(es_test_close(t.acc[(size_t)r * 2 * DIM + DIM + d], n[r][d], 1e-7, 1e-6));
            }
    }
    CHECK_MSG(zeros > 0, "l1 = %g should zero some coordinates", l1);
    es__rows_free(&t);
}

TEST(ftrl_update_equals_its_ref_twin) {
    static const int dims[] = {1, 3, 7, 15, 17, 33};
    const es_optim_params o = ftrl_params();
    es_rng rng;
    es__rng_seed(&rng, 3);
    for (size_t k = 0; k < sizeof dims / sizeof dims[0]; k++) {
        const int dim = dims[k];
        float w1[33], w2[33], s1[66] = {0}, s2[66] = {0}, g[33];
        fill(&rng, w1, (size_t)dim, 0.1f);
        memcpy(w2, w1, sizeof w1);
        for (int step = 0; step < 5; step++) {
            fill(&rng, g, (size_t)dim, 1.0f);
            es__row_update(w1, s1, g, dim, &o);
            es__row_update_ref(w2, s2, g, dim, &o);
        }
        CHECK_MSG(memcmp(w1, w2, (size_t)dim * 4) == 0 && memcmp(s1, s2, (size_t)dim * 8) == 0, "dim %d", dim);
    }
}

/* ---- lazy L2 against eager L2 ---------------------------------------------------- */

static void lazy_vs_eager(es_optim kind) {
    enum { ROWS = 9, DIM = 5, STEPS = 40 };
    es_optim_params o = {.kind = kind, .lr = 0.1f, .eps = 1e-8f, .init_acc = 0.1f};
    es__optim_ftrl_defaults(&o);
    es_optim_params lazy_o = o;
    lazy_o.row_l2 = 0.5f;
    const double l2 = lazy_o.row_l2;
    es_rng r1, r2, rg;
    es__rng_seed(&r1, 11);
    es__rng_seed(&r2, 11);
    es__rng_seed(&rg, 12);
    es_rows lazy, eager;
    CHECK(es__rows_init(&lazy, ROWS, DIM, &lazy_o, &r1, 0.5f) == ES_OK);
    CHECK(es__rows_init(&eager, ROWS, DIM, &o, &r2, 0.5f) == ES_OK);
    CHECK_EQ_INT((int)(es__rows_state_bytes(&lazy) - es__rows_state_bytes(&eager)), (ROWS + 1) * 8);
    CHECK_EQ_INT(es__rows_tensors(&lazy, NULL, 0), es__rows_tensors(&eager, NULL, 0) + 2);
    es_gradacc ga;
    CHECK(es__gradacc_init(&ga, 4, DIM) == ES_OK);
    for (int s = 0; s < STEPS; s++) {
        /* eager: every row decays (the accumulator untouched), then the touched rows step */
        for (int r = 0; r < ROWS; r++)
            for (int d = 0; d < DIM; d++) {
                float *w = &eager.w[r * DIM + d];
                double f = 1.0 - o.lr * l2;
                *w = (float)(*w * f);
            }
        /* irregular touches: row r at steps where a hash says so; some rows rarely */
        for (int r = 0; r < ROWS; r++) {
            uint64_t h = es__mix64((uint64_t)(s * 131 + r));
            if (h % (uint64_t)(r + 2) != 0) continue;
            float g[DIM];
            fill(&rg, g, DIM, 1.0f);
            memcpy(es__gradacc_row(&ga, (uint64_t)r), g, sizeof g);
            es__rows_update(&eager, (uint64_t)r, g);
        }
        es__gradacc_apply(&ga, &lazy);
    }
    CHECK(lazy.step == STEPS);
    es__rows_catch_up(&lazy);
    for (int i = 0; i < ROWS * DIM; i++)
        CHECK_MSG(es_test_close(lazy.w[i], eager.w[i], 1e-7, 1e-6), "kind %d elem %d: lazy %.9g eager %.9g", (int)kind, i,
                  lazy.w[i], eager.w[i]);
    es__gradacc_free(&ga);
    es__rows_free(&lazy);
    es__rows_free(&eager);
}

TEST(ftrl_lazy_l2_equals_eager_sgd) { lazy_vs_eager(ES_OPT_SGD); }
TEST(ftrl_lazy_l2_equals_eager_adagrad) { lazy_vs_eager(ES_OPT_ADAGRAD); }
TEST(ftrl_lazy_l2_equals_eager_rowwise) { lazy_vs_eager(ES_OPT_ROWWISE_ADAGRAD); }

/* ---- persisted record ------------------------------------------------------------- */

TEST(ftrl_optim_record_old_and_new) {
    es_err err = {0};
    es_optim_params o;
    memset(&o, 0, sizeof o);
    CHECK(es__optim_meta_read("f", "storage.opt", "2,0.05,1e-08,0.9,0.999,0", 6, &o, &err) == ES_OK);
    CHECK(o.kind == ES_OPT_ROWWISE_ADAGRAD && o.ftrl_alpha == 0.05f && o.ftrl_beta == 0.01f && o.row_l2 == 0.0f);
    CHECK_MSG(es__optim_meta_read("f", "storage.opt", "4,0.05,1e-08,0.9,0.999,0,0.1,0.5,0.2,0.3,0", 6, &o, &err) ==
                  ES_OK, "%s", err.msg);
    CHECK(o.kind == ES_OPT_FTRL && o.ftrl_alpha == 0.1f && o.ftrl_beta == 0.5f && o.ftrl_l1 == 0.2f && o.ftrl_l2 == 0.3f);
    CHECK(es__optim_meta_read("f", "storage.opt", "1,0.05,1e-08,0.9,0.999,0,0.05,0.01,0,0,0.25", 6, &o, &err) == ES_OK);
    CHECK(o.row_l2 == 0.25f);
    CHECK_EQ_INT(es__optim_meta_read("f", "storage.opt", "5,0.05,1e-08,0.9,0.999,0", 6, &o, &err), ES_EFORMAT);
    CHECK_EQ_INT(es__optim_meta_read("f", "storage.opt", "1,0.05,1e-08,0.9,0.999,0,1", 6, &o, &err), ES_EFORMAT);
    es_optim k;
    CHECK(es__optim_parse("ftrl", &k) == ES_OK && k == ES_OPT_FTRL);
}

/* ---- checkpoints resume bit for bit ------------------------------------------------- */

static void checkpoint_continues(const char *emb_optim, float emb_l2, const char *model) {
    es_model_params mp = es_model_params_default();
    mp.model = model;
    mp.storage = "hash";
    mp.budget = 20000;
    mp.batch = 64;
    mp.emb_optim = emb_optim;
    mp.emb_l2 = emb_l2;
    mp.ftrl_l1 = 0.01f;
    mp.ftrl_l2 = 0.1f;
    char tag[96];
    snprintf(tag, sizeof tag, "%s l2 %g %s", emb_optim, (double)emb_l2, model);
    es_test_checkpoint_continues(mp, tag);
}

TEST(ftrl_checkpoint_continues_bitwise) { checkpoint_continues("ftrl", 0, "fm"); }
TEST(ftrl_lazy_l2_checkpoint_continues_bitwise) { checkpoint_continues("rowwise", 1e-3f, "fm"); }
TEST(ftrl_lazy_l2_sgd_checkpoint_continues_bitwise) { checkpoint_continues("sgd", 1e-2f, "lr"); }

TEST(ftrl_api_errors) {
    es_err err = {0};
    es_model *m = NULL;
    es_model_params mp = es_model_params_default();
    mp.n_dense = 2;
    mp.n_fields = 3;
    mp.storage = "hash";
    mp.budget = 10000;
    mp.batch = 8;
    mp.emb_optim = "ftrl";
    mp.emb_l2 = 0.1f;
    CHECK_EQ_INT(es_model_create(&m, &mp, NULL, &err), ES_EINVAL);
    CHECK_STR_HAS(err.msg, "ftrl_l2");
    mp.emb_l2 = 0;
    mp.ftrl_alpha = 0;
    CHECK_EQ_INT(es_model_create(&m, &mp, NULL, &err), ES_EINVAL);
    CHECK_STR_HAS(err.msg, "alpha");
    mp = es_model_params_default();
    mp.n_dense = 2;
    mp.n_fields = 3;
    mp.storage = "tt";
    mp.emb_optim = "ftrl";
    CHECK_EQ_INT(es_model_create(&m, &mp, NULL, &err), ES_EINVAL);
    CHECK_STR_HAS(err.msg, "FTRL needs per-coordinate table parameters; tt");
    mp.emb_optim = "sgd";
    mp.emb_l2 = -1;
    CHECK_EQ_INT(es_model_create(&m, &mp, NULL, &err), ES_EINVAL);
    CHECK(m == NULL);
}

/* ---- the CLI ------------------------------------------------------------------------ */

TEST(ftrl_cli_trains_lr_and_fm) {
    const char *out = es_test_path("ftrl_cli.txt");
    CHECK(es_test_sh(out, "%s train %s --model lr --emb-optim ftrl --valid-frac 0.2 --threads 1 --json", es_bin(),
                     CRITEO) == 0);
    char *s = es_test_slurp(out);
    double auc = es_test_json_num(s, "auc");
    CHECK_MSG(auc > 0.70, "lr + ftrl AUC %.4f", auc);
    free(s);
    CHECK(es_test_sh(out, "%s train %s --model fm --emb-optim ftrl --ftrl-l1 0.001 --ftrl-l2 0.01 --valid-frac 0.2 "
                          "--threads 1 --json",
                     es_bin(), CRITEO) == 0);
    s = es_test_slurp(out);
    auc = es_test_json_num(s, "auc");
    CHECK_MSG(auc > 0.65, "fm + ftrl AUC %.4f", auc);
    free(s);
    CHECK(es_test_sh(out, "%s train %s --model lr --emb-optim sgd --emb-lr 0.5 --emb-l2 0.001 --valid-frac 0.2 "
                          "--threads 1 --json",
                     es_bin(), CRITEO) == 0);
    s = es_test_slurp(out);
    CHECK(es_test_json_num(s, "auc") > 0.6);
    free(s);
    CHECK(es_test_sh(out, "%s train --help", es_bin()) == 0);
    s = es_test_slurp(out);
    CHECK_STR_HAS(s, "--emb-l2");
    CHECK_STR_HAS(s, "--ftrl-alpha");
    free(s);
}

TEST(ftrl_cli_bad_input) {
    static const es_test_refusal cases[] = {
        {"--emb-l2 -1", "--emb-l2 expects a number"},
        {"--emb-l2 abc", "--emb-l2 expects a number"},
        {"--ftrl-l1 -0.5", "--ftrl-l1 expects a number"},
        {"--storage dhe --emb-optim ftrl", "FTRL needs per-coordinate table parameters; dhe"},
        {"--storage tt --emb-l2 0.1", "emb_l2"},
        {"--emb-optim ftrl --emb-l2 0.1", "use ftrl_l2"},
        {"--emb-optim ftrl --ftrl-alpha 0", "alpha must be > 0"},
    };
    es_test_train_refusals(CRITEO, cases, sizeof cases / sizeof cases[0]);
}

TEST(ftrl_table_api) {
    es_err err = {0};
    es_table *t = NULL;
    es_table_params p = es_table_params_default();
    CHECK(p.ftrl_alpha == 0.05f && p.ftrl_beta == 0.01f && p.emb_l2 == 0.0f);
    p.n_fields = 2;
    p.dim = 4;
    p.budget = 4096;
    p.optim = "ftrl";
    CHECK_MSG(es_table_create(&t, &p, NULL, &err) == 0, "%s", err.msg);
    es_table_free(t);
    t = NULL;
    p.method = "dhe";
    CHECK_EQ_INT(es_table_create(&t, &p, NULL, &err), ES_EINVAL);
    CHECK_STR_HAS(err.msg, "FTRL needs per-coordinate table parameters; dhe");
    p.method = "hash";
    p.optim = "sgd";
    p.emb_l2 = 0.01f;
    CHECK_MSG(es_table_create(&t, &p, NULL, &err) == 0, "%s", err.msg);
    es_table_free(t);
}

/* Lazy L2 with Adagrad on a real sparse table: rows seldom touched have a
 * near-zero accumulator, which the decay must not divide by (the coupled
 * form did, and this run ended at AUC 0.5). */
TEST(ftrl_lazy_l2_adagrad_trains_a_sparse_table) {
    es_train_params p = es_train_params_basic();
    p.train_path = CRITEO;
    p.valid_frac = 0.2;
    p.model = "fm";
    p.storage = "full";
    p.budget = 0;
    p.dim = 4;
    p.emb_optim = "adagrad";
    p.emb_lr = 0.05f;
    p.emb_l2 = 0.01f;
    p.epochs = 2;
    es_train_result res;
    es_err err = {0};
    CHECK_MSG(es_train(&p, &res, &err) == 0, "%s", err.msg);
    printf("    FM + Adagrad + emb-l2 0.01: AUC %.4f\n", res.valid.auc);
    CHECK_MSG(res.valid.auc > 0.65, "AUC %.4f", res.valid.auc);
    /* a decay factor 1 - lr l2 <= 0 is refused */
    p.emb_l2 = 20.0f;
    CHECK_EQ_INT(es_train(&p, &res, &err), ES_EINVAL);
    CHECK_STR_HAS(err.msg, "emb_l2 * emb_lr must be < 1");
}
