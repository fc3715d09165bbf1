/*
 * test_freq_l2.c — frequency-aware lazy L2 on table rows (issue 10,
 * --emb-l2-freq P): a row touched c times so far decays at every step by
 * 1 - lr * l2 * (1 + c)^-P.
 *   - lazy (the catch-up at the next touch, with the count as it was
 *     through the missed steps) equals eager decay of every row at every
 *     step with per-row counts, for SGD, Adagrad and row-wise Adagrad and
 *     two exponents, to 1e-6 relative; the counts are the touches;
 *   - the state (u32 touch count per row) is counted and listed;
 *   - the persisted optimizer record: 11 numbers load as off, 12 carry P;
 *   - a checkpoint resumes bit for bit (hash, adapt, unified);
 *   - the run description has the key only when on;
 *   - API and CLI errors: without --emb-l2, with ftrl, on a method without
 *     plain rows, out of range.
 */
#include "test.h"
#include "resume_harness.h"
#include "core/core.h"
#include "optim/optim.h"
#include "storage/storage.h"

#include <math.h>

#define CRITEO "data/criteo_kaggle_train_first10k.tsv"

static void fill(es_rng *r, float *x, size_t n, float a) {
    for (size_t i = 0; i < n; i++) x[i] = (float)((es__rng_uniform(r) * 2.0 - 1.0) * a);
}

/* ---- lazy against eager --------------------------------------------------------- */

static void freq_lazy_vs_eager(es_optim kind, float p) {
    enum { ROWS = 9, DIM = 5, STEPS = 60 };
    es_optim_params o = {.kind = kind, .lr = 0.1f, .eps = 1e-8f, .init_acc = 0.1f};
    es__optim_ftrl_defaults(&o);
    es_optim_params lazy_o = o, plain_o = o;
    lazy_o.row_l2 = plain_o.row_l2 = 0.5f;
    lazy_o.row_l2_freq = p;
    const double l2 = lazy_o.row_l2;
    es_rng r1, r2, r3, rg;
    es__rng_seed(&r1, 11);
    es__rng_seed(&r2, 11);
    es__rng_seed(&r3, 11);
    es__rng_seed(&rg, 12);
    es_rows lazy, eager, plain;
    CHECK(es__rows_init(&lazy, ROWS, DIM, &lazy_o, &r1, 0.5f) == ES_OK);
    CHECK(es__rows_init(&eager, ROWS, DIM, &o, &r2, 0.5f) == ES_OK);
    CHECK(es__rows_init(&plain, ROWS, DIM, &plain_o, &r3, 0.5f) == ES_OK);
    CHECK(lazy.touch != NULL && plain.touch == NULL && eager.touch == NULL);
    /* state: last[] + step (8 bytes each) and the u32 counts */
    CHECK_EQ_INT((int)(es__rows_state_bytes(&lazy) - es__rows_state_bytes(&eager)), (ROWS + 1) * 8 + ROWS * 4);
    CHECK_EQ_INT(es__rows_tensors(&lazy, NULL, 0), es__rows_tensors(&eager, NULL, 0) + 3);
    es_gradacc ga, gp;
    CHECK(es__gradacc_init(&ga, 4, DIM) == ES_OK);
    CHECK(es__gradacc_init(&gp, 4, DIM) == ES_OK);
    uint32_t count[ROWS] = {0};
    for (int s = 0; s < STEPS; s++) {
        /* eager: every row decays with its own count (the touches before
         * this step), then the touched rows step and count */
        for (int r = 0; r < ROWS; r++) {
            const double f = 1.0 - o.lr * l2 * pow(1.0 + count[r], -(double)p);
            for (int d = 0; d < DIM; d++) {
                float *w = &eager.w[r * DIM + d];
                *w = (float)(*w * f);
            }
        }
        /* irregular touches: row r at steps where a hash says so; some rows
         * often (their decay weakens), some rarely */
        for (int r = 0; r < ROWS; r++) {
            uint64_t h = es__mix64((uint64_t)(s * 131 + r));
            if (h % (uint64_t)(r + 1) != 0) continue;
            float g[DIM];
            fill(&rg, g, DIM, 1.0f);
            memcpy(es__gradacc_row(&ga, (uint64_t)r), g, sizeof g);
            memcpy(es__gradacc_row(&gp, (uint64_t)r), g, sizeof g);
            es__rows_update(&eager, (uint64_t)r, g);
            count[r]++;
        }
        es__gradacc_apply(&ga, &lazy);
        es__gradacc_apply(&gp, &plain);
    }
    CHECK(lazy.step == STEPS);
    for (int r = 0; r < ROWS; r++) CHECK_MSG(lazy.touch[r] == count[r], "row %d: %u touches, counted %u", r, count[r], lazy.touch[r]);
    CHECK(count[0] == STEPS); /* row 0 every step: its strength fell to l2 / (1 + 59)^p */
    es__rows_catch_up(&lazy);
    es__rows_catch_up(&plain);
    int differs = 0;
    double maxdiff = 0;
    /* The same sums in another order: the lazy path raises the factor to
     * the power of the steps missed, the eager one multiplies step by step,
     * and the update kernels round as the CPU level has them (FMA or not).
     * Weights start in [-0.5, 0.5], so a few float roundings of that size
     * (6e-8 each) over 60 steps: 1e-6 absolute; a wrong decay would be off
     * by about lr l2 = 0.05 of a weight. */
    for (int i = 0; i < ROWS * DIM; i++) {
        maxdiff = fmax(maxdiff, fabs((double)lazy.w[i] - eager.w[i]));
        CHECK_MSG(es_test_close(lazy.w[i], eager.w[i], 1e-6, 1e-6), "kind %d p %g elem %d: lazy %.9g eager %.9g", (int)kind,
                  (double)p, i, lazy.w[i], eager.w[i]);
        differs += fabsf(lazy.w[i] - plain.w[i]) > 1e-4f * (fabsf(plain.w[i]) + 1e-3f);
    }
    printf("    kind %d p %g: largest |lazy - eager| %.3g\n", (int)kind, (double)p, maxdiff);
    /* the frequent rows decay less than with plain lazy L2 */
    CHECK_MSG(differs > ROWS * DIM / 2, "only %d of %d weights differ from plain L2", differs, ROWS * DIM);
    es__gradacc_free(&ga);
    es__gradacc_free(&gp);
    es__rows_free(&lazy);
    es__rows_free(&eager);
    es__rows_free(&plain);
}

TEST(freq_l2_lazy_equals_eager_sgd) {
    freq_lazy_vs_eager(ES_OPT_SGD, 0.5f);
    freq_lazy_vs_eager(ES_OPT_SGD, 1.0f);
}
TEST(freq_l2_lazy_equals_eager_adagrad) {
    freq_lazy_vs_eager(ES_OPT_ADAGRAD, 0.5f);
    freq_lazy_vs_eager(ES_OPT_ADAGRAD, 1.0f);
}
TEST(freq_l2_lazy_equals_eager_rowwise) {
    freq_lazy_vs_eager(ES_OPT_ROWWISE_ADAGRAD, 0.5f);
    freq_lazy_vs_eager(ES_OPT_ROWWISE_ADAGRAD, 1.0f);
}

TEST(freq_l2_decay_factor) {
    es_optim_params o = {.kind = ES_OPT_ADAGRAD, .lr = 0.1f, .eps = 1e-10f};
    es__optim_ftrl_defaults(&o);
    CHECK(es__row_decay_factor(&o, 5) == 1.0); /* no L2 */
    o.row_l2 = 0.5f;
    CHECK(fabs(es__row_decay_factor(&o, 99) - (1.0 - 0.1 * 0.5)) < 1e-9); /* plain: the count does not matter */
    o.row_l2_freq = 0.5f;
    CHECK(fabs(es__row_decay_factor(&o, 0) - (1.0 - (double)0.1f * 0.5)) < 1e-9);
    CHECK(fabs(es__row_decay_factor(&o, 99) - (1.0 - (double)0.1f * 0.5 / 10.0)) < 1e-9);
    o.row_l2_freq = 1.0f;
    CHECK(fabs(es__row_decay_factor(&o, 3) - (1.0 - (double)0.1f * 0.5 / 4.0)) < 1e-9);
    o.kind = ES_OPT_FTRL;
    CHECK(es__row_decay_factor(&o, 3) == 1.0);
}

/* ---- persisted record ------------------------------------------------------------- */

TEST(freq_l2_optim_record) {
    es_err err = {0};
    es_optim_params o;
    memset(&o, 0, sizeof o);
    o.row_l2_freq = 7; /* overwritten by the defaults */
    CHECK(es__optim_meta_read("f", "storage.opt", "1,0.05,1e-08,0.9,0.999,0,0.05,0.01,0,0,0.25", 6, &o, &err) == ES_OK);
    CHECK(o.row_l2 == 0.25f && o.row_l2_freq == 0.0f);
    CHECK(es__optim_meta_read("f", "storage.opt", "2,0.05,1e-08,0.9,0.999,0", 6, &o, &err) == ES_OK);
    CHECK(o.row_l2_freq == 0.0f);
    CHECK(es__optim_meta_read("f", "storage.opt", "1,0.05,1e-08,0.9,0.999,0,0.05,0.01,0,0,0.25,0.5", 6, &o, &err) == ES_OK);
    CHECK(o.row_l2 == 0.25f && o.row_l2_freq == 0.5f);
    CHECK_EQ_INT(es__optim_meta_read("f", "storage.opt", "1,0.05,1e-08,0.9,0.999,0,0.05,0.01,0,0,0.25,0.5,1", 6, &o, &err),
                 ES_EFORMAT);
    CHECK_EQ_INT(es__optim_meta_read("f", "storage.opt", "1,0.05,1e-08,0.9,0.999,0,0.05,0.01,0,0,0.25,-1", 6, &o, &err),
                 ES_EFORMAT);
}

/* ---- checkpoints resume bit for bit ------------------------------------------------- */

static void freq_checkpoint_continues(const char *emb_optim, const char *model, const char *storage) {
    es_model_params mp = es_model_params_default();
    mp.model = model;
    mp.storage = storage;
    mp.budget = 20000;
    mp.batch = 64;
    mp.emb_optim = emb_optim;
    mp.emb_lr = 0.05f;
    mp.emb_l2 = 1.0f;
    mp.emb_l2_freq = 0.5f;
    char tag[96];
    snprintf(tag, sizeof tag, "%s %s %s", emb_optim, model, storage);
    es_test_checkpoint_continues(mp, tag);
}

TEST(freq_l2_checkpoint_continues_bitwise) {
    freq_checkpoint_continues("adagrad", "fm", "hash");
    freq_checkpoint_continues("rowwise", "fm", "adapt");
    freq_checkpoint_continues("sgd", "lr", "unified");
}

/* ---- the run description ------------------------------------------------------------ */

TEST(freq_l2_run_description) {
    es_err err = {0};
    char buf[8192];
    es_train_params p = es_train_params_basic();
    p.train_path = CRITEO;
    p.emb_optim = "adagrad";
    p.emb_l2 = 0.1f;
    CHECK_MSG(es_train_describe(&p, buf, sizeof buf, &err) == 0, "%s", err.msg);
    CHECK(strstr(buf, "emb-l2=0.1") != NULL);
    CHECK(strstr(buf, "emb-l2-freq") == NULL); /* off: no key, so older checkpoints resume */
    p.emb_l2_freq = 0.5f;
    CHECK_MSG(es_train_describe(&p, buf, sizeof buf, &err) == 0, "%s", err.msg);
    CHECK_STR_HAS(buf, "emb-l2-freq=0.5");
}

/* ---- errors ------------------------------------------------------------------------ */

TEST(freq_l2_api_errors) {
    es_err err = {0};
    es_model *m = NULL;
    es_model_params mp = es_model_params_default();
    mp.n_dense = 2;
    mp.n_fields = 3;
    mp.storage = "hash";
    mp.budget = 10000;
    mp.batch = 8;
    mp.emb_optim = "adagrad";
    mp.emb_l2_freq = 0.5f;
    CHECK_EQ_INT(es_model_create(&m, &mp, NULL, &err), ES_EINVAL);
    CHECK_STR_HAS(err.msg, "needs emb_l2 > 0");
    mp.emb_l2 = 0.1f;
    mp.emb_l2_freq = -1;
    CHECK_EQ_INT(es_model_create(&m, &mp, NULL, &err), ES_EINVAL);
    CHECK_STR_HAS(err.msg, "emb_l2_freq");
    mp.emb_l2_freq = NAN;
    CHECK_EQ_INT(es_model_create(&m, &mp, NULL, &err), ES_EINVAL);
    mp.emb_l2_freq = 0.5f;
    mp.emb_optim = "ftrl";
    mp.emb_l2 = 0;
    CHECK_EQ_INT(es_model_create(&m, &mp, NULL, &err), ES_EINVAL);
    CHECK_STR_HAS(err.msg, "does not apply to ftrl");
    mp.emb_optim = "sgd";
    mp.emb_l2 = 0.1f;
    mp.storage = "tt";
    CHECK_EQ_INT(es_model_create(&m, &mp, NULL, &err), ES_EINVAL);
    CHECK_STR_HAS(err.msg, "emb_l2");
    CHECK(m == NULL);
    mp.storage = "hash";
    CHECK_MSG(es_model_create(&m, &mp, NULL, &err) == 0, "%s", err.msg);
    es_model_free(m);
    /* the table API takes it too */
    es_table *t = NULL;
    es_table_params tp = es_table_params_default();
    tp.n_fields = 2;
    tp.dim = 4;
    tp.budget = 4096;
    tp.optim = "adagrad";
    tp.emb_l2 = 0.01f;
    tp.emb_l2_freq = 1.0f;
    CHECK_MSG(es_table_create(&t, &tp, NULL, &err) == 0, "%s", err.msg);
    es_table_free(t);
    tp.emb_l2 = 0;
    t = NULL;
    CHECK_EQ_INT(es_table_create(&t, &tp, NULL, &err), ES_EINVAL);
}

TEST(freq_l2_cli) {
    const char *out = es_test_path("freq_l2_cli.txt");
    static const es_test_refusal cases[] = {
        {"--emb-optim adagrad --emb-l2-freq -1", "--emb-l2-freq expects a number"},
        {"--emb-optim adagrad --emb-l2-freq abc", "--emb-l2-freq expects a number"},
        {"--emb-optim adagrad --emb-l2-freq 5", "--emb-l2-freq expects a number"},
        {"--emb-optim adagrad --emb-l2-freq 0.5", "needs emb_l2 > 0"},
        {"--emb-optim ftrl --emb-l2-freq 0.5", "does not apply to ftrl"},
        {"--emb-optim sgd --storage tt --emb-l2 0.1 --emb-l2-freq 0.5", "emb_l2"},
    };
    es_test_train_refusals(CRITEO, cases, sizeof cases / sizeof cases[0]);
    CHECK(es_test_sh(out, "%s train %s --model fm --storage full --emb-optim adagrad --emb-lr 0.05 --emb-l2 1 "
                          "--emb-l2-freq 1 --valid-frac 0.2 --epochs 1 --threads 1 --json",
                     es_bin(), CRITEO) == 0);
    char *s = es_test_slurp(out);
    double auc = es_test_json_num(s, "auc");
    CHECK_MSG(auc > 0.68, "fm + adagrad + freq L2 AUC %.4f", auc);
    free(s);
    CHECK(es_test_sh(out, "%s train --help", es_bin()) == 0);
    s = es_test_slurp(out);
    CHECK_STR_HAS(s, "--emb-l2-freq");
    free(s);
}
