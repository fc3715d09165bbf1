/*
 * test_prune.c — the pruned-table storage methods `pep` and `deeplight`
 * (src/storage/prune.c):
 *   - the generic harness (storage_harness.h) in both share modes: finite
 *     differences on the dense table and, for pep, on the thresholds s
 *     ("opt.train.*"), budgets (serving bytes <= budget, bytes reported =
 *     bytes allocated), save/load round trips, determinism, threads,
 *     allocation failures.  PEP's forward sign(w) relu(|w| - sigmoid(s))
 *     has kinks at |w| = sigmoid(s): the gradient check starts from
 *     init_min=0.2 with init_scale 1 (|w| in [0.2, 1)) and s_init=-3
 *     (threshold 0.047, moved by < 0.0005 by the check's step of 0.01 on
 *     s), so no checked element is within the step of 0.01 of a kink, and
 *     g'(s) = 0.045 makes the threshold gradient large enough to test;
 *   - pep's switch: once the soft-thresholded table fits the capacity the
 *     mask is frozen and the table restarts from its initial values under
 *     it (rewind=1), or keeps its values (rewind=0); forced at steps=;
 *   - deeplight's cubic schedule: kept entries after each pruning step;
 *   - the serving form: a storage loaded without its training state serves
 *     the same lookups from the bitmap rows and refuses backward; a save
 *     before the target holds the capacity's largest entries;
 *   - checkpoints resume exactly (resume_harness.h);
 *   - slow: fm on the Criteo sample at 1/4 and 1/8 of the full table.
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

static const double fracs[] = {0.25, 1.0 / 8, 1.0 / 32};
#define NFRACS ((int)ES_ARRAY_LEN(fracs))

/* ---- generic harness ------------------------------------------------------------------- */

static void harness(const char *method, int share, const char *opts, int fd_safe) {
    es_sh_cfg c = es_sh_cfg_make(method, share);
    c.opts = opts;
    if (fd_safe) c.init_scale = 1.0f;
    CHECK(es_sh_all(&c));
    es_sh_cfg b = es_sh_cfg_make(method, share);
    b.opts = opts;
    CHECK(es_sh_budget(&b, fracs, NFRACS));
}

#define PEP_FD "init_min=0.2,s_init=-3"
TEST(prune_pep_harness_share0) { harness("pep", 0, PEP_FD, 1); }
TEST(prune_pep_harness_share1) { harness("pep", 1, PEP_FD, 1); }
TEST(prune_pep_harness_granularities) {
    es_sh_cfg c = es_sh_cfg_make("pep", 0);
    c.init_scale = 1.0f;
    static const char *const g[] = {PEP_FD ",granularity=table", PEP_FD ",granularity=field", PEP_FD ",granularity=field_dim"};
    for (size_t i = 0; i < ES_ARRAY_LEN(g); i++) {
        c.opts = g[i];
        CHECK(es_sh_gradcheck(&c));
        CHECK(es_sh_roundtrip(&c));
    }
    c = es_sh_cfg_make("pep", 1);
    c.init_scale = 1.0f;
    c.opts = PEP_FD ",granularity=table";
    CHECK(es_sh_gradcheck(&c));
    /* odd dim: the last mask byte is partial */
    c.dim = 5;
    CHECK(es_sh_gradcheck(&c));
    CHECK(es_sh_roundtrip(&c));
}
TEST(prune_deeplight_harness_share0) { harness("deeplight", 0, NULL, 0); }
TEST(prune_deeplight_harness_share1) { harness("deeplight", 1, NULL, 0); }

TEST(prune_pep_field_granularity_needs_share0) {
    es_storage_params p = es__storage_params_default();
    p.method = "pep";
    p.n_fields = 2;
    p.dim = 8;
    p.budget = 4000;
    p.opts = "share=1,granularity=field";
    es_storage *s = NULL;
    es_err err;
    CHECK_EQ_INT(es__storage_create(&s, &p, NULL, &err), ES_EINVAL);
    CHECK_STR_HAS(err.msg, "needs share=0");
}

/* ---- helpers ------------------------------------------------------------------------------ */

static es_storage *make(const char *method, const char *opts, double budget, es_optim opt, float lr) {
    es_storage_params p = es__storage_params_default();
    p.method = method;
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
    if (es__storage_create(&s, &p, NULL, &err) != 0) printf("    create %s %s: %s\n", method, opts, err.msg);
    return s;
}


static uint64_t bits_set(const uint8_t *p, size_t n) {
    uint64_t c = 0;
    for (size_t i = 0; i < n; i++) c += (uint64_t)__builtin_popcount(p[i]);
    return c;
}

/* The state vector "opt.prune": step, phase, trained, switch step. */
static const uint64_t *pstate(es_storage *s, es_tensor_ref *refs) {
    es_tensor_ref *t = es_sh_tensor(s, refs, 16, "opt.prune");
    return t ? t->data : NULL;
}

/* A storage created from s's meta, with s's serving tensors only (as a
 * plain saved model is loaded). */
static es_storage *served_copy(es_storage *s) {
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
    if (es__storage_after_load(c) != 0) {
        printf("    after_load: %s\n", es__storage_errmsg(c));
        es__storage_free(c);
        return NULL;
    }
    return c;
}

/* Lookups of a and b are equal as numbers (a served table adds no zeros,
 * so -0 may read +0). */
static int same_values(es_storage *a, es_storage *b, uint64_t seed) {
    es_batch bt;
    if (es_sh_batch(&bt, 40, a->p.n_fields, seed) != 0) return 0;
    size_t n = (size_t)bt.n * a->p.n_fields * a->p.dim;
    float *x = malloc(n * sizeof *x), *y = malloc(n * sizeof *y);
    int ok = x && y && es__storage_lookup(a, &bt, 0, bt.n, x) == 0 && es__storage_lookup(b, &bt, 0, bt.n, y) == 0;
    for (size_t i = 0; ok && i < n; i++)
        if (x[i] != y[i]) {
            printf("    output %zu: %.9g vs %.9g\n", i, (double)x[i], (double)y[i]);
            ok = 0;
        }
    free(x);
    free(y);
    es_batch_free(&bt);
    return ok;
}

/* ---- pep: the switch ------------------------------------------------------------------------ */

TEST(prune_pep_switch_rewinds_to_init) {
    /* s_init=-3.2 (threshold 0.039) with init U(-0.05, 0.05) keeps about
     * 22% of the entries, under the capacity (25%): the first check (step
     * 2) finds the target reached */
    es_storage *s = make("pep", "s_init=-3.2,interval=2,steps=1000", 6000, ES_OPT_ADAGRAD, 0.05f);
    CHECK(s);
    es_storage *fresh = make("pep", "s_init=-3.2,interval=2,steps=1000", 6000, ES_OPT_ADAGRAD, 0.05f);
    CHECK(fresh);
    es_tensor_ref r[16], rf[16];
    CHECK(es_sh_step(s, 1) == 0);
    const uint64_t *st = pstate(s, r);
    CHECK(st && st[0] == 1 && st[1] == 0);
    /* a step in the search phase moves s */
    es_tensor_ref *ts = es_sh_tensor(s, r, 16, "opt.train.s");
    CHECK(ts && ((float *)ts->data)[0] != -3.2f);
    CHECK(es_sh_step(s, 2) == 0);
    st = pstate(s, r);
    CHECK_MSG(st[1] == 1 && st[3] == 2, "phase %llu switch %llu", (unsigned long long)st[1], (unsigned long long)st[3]);
    /* the kept entries are the initial values, the others 0 */
    es_tensor_ref *w = es_sh_tensor(s, r, 16, "opt.train.weight"), *w0 = es_sh_tensor(fresh, rf, 16, "opt.train.weight");
    es_tensor_ref *mk = es_sh_tensor(s, r, 16, "opt.mask");
    CHECK(w && w0 && mk);
    const float *a = w->data, *a0 = w0->data;
    const uint8_t *mm = mk->data;
    size_t n = w->nbytes / 4, kept = 0;
    for (size_t e = 0; e < n; e++) {
        int b = (mm[e / 8] >> (e % 8)) & 1; /* dim 8: one byte per row */
        kept += (size_t)b;
        CHECK(a[e] == (b ? a0[e] : 0.0f));
    }
    printf("    kept %zu of %zu entries after the switch, capacity %zu\n", kept, n, s->param_bytes / 4);
    CHECK(kept <= s->param_bytes / 4);
    /* retraining changes only kept entries */
    CHECK(es_sh_step(s, 3) == 0);
    w = es_sh_tensor(s, r, 16, "opt.train.weight");
    mk = es_sh_tensor(s, r, 16, "opt.mask");
    a = w->data;
    mm = mk->data;
    for (size_t e = 0; e < n; e++)
        if (!((mm[e / 8] >> (e % 8)) & 1)) CHECK(a[e] == 0.0f);
    es__storage_free(s);
    es__storage_free(fresh);
}

TEST(prune_pep_switch_forced_at_steps) {
    /* s_init=-15: nothing is pruned; at steps=3 the capacity's largest
     * entries are kept (rewind=0 keeps their trained values) */
    es_storage *s = make("pep", "interval=100,steps=3,rewind=0", 6000, ES_OPT_ROWWISE_ADAGRAD, 0.05f);
    CHECK(s);
    es_tensor_ref r[16];
    for (int i = 1; i <= 2; i++) CHECK(es_sh_step(s, (uint64_t)i) == 0);
    CHECK(pstate(s, r)[1] == 0);
    es_tensor_ref *w = es_sh_tensor(s, r, 16, "opt.train.weight");
    const size_t n = w->nbytes / 4;
    float *before = malloc(n * sizeof *before);
    CHECK(before);
    memcpy(before, w->data, n * sizeof *before);
    CHECK(es_sh_step(s, 3) == 0);
    const uint64_t *st = pstate(s, r);
    CHECK(st[1] == 1 && st[3] == 3);
    es_tensor_ref *mk = es_sh_tensor(s, r, 16, "opt.mask");
    CHECK_EQ_INT(bits_set(mk->data, mk->nbytes), s->param_bytes / 4);
    free(before);
    es__storage_free(s);
}

/* ---- deeplight: the schedule ----------------------------------------------------------------- */

TEST(prune_deeplight_cubic_schedule) {
    es_storage *s = make("deeplight", "steps=20,interval=5", 6000, ES_OPT_ROWWISE_ADAGRAD, 0.05f);
    CHECK(s);
    es_tensor_ref r[16];
    es_tensor_ref *mk = es_sh_tensor(s, r, 16, "opt.mask");
    const double N = (double)mk->nbytes * 8, cap = (double)(s->param_bytes / 4), S = 1 - cap / N;
    uint64_t prev = (uint64_t)N;
    for (int t = 1; t <= 25; t++) {
        CHECK(es_sh_step(s, (uint64_t)t) == 0);
        mk = es_sh_tensor(s, r, 16, "opt.mask");
        uint64_t kept = bits_set(mk->data, mk->nbytes);
        CHECK(kept <= prev);
        prev = kept;
        if (t % 5 == 0 && t <= 20) {
            double u = t / 20.0, st = S * (1 - (1 - u) * (1 - u) * (1 - u));
            uint64_t want = (uint64_t)(N - floor(st * N));
            if (want < cap) want = (uint64_t)cap;
            printf("    step %2d: kept %6llu (schedule %6llu of %.0f)\n", t, (unsigned long long)kept, (unsigned long long)want, N);
            CHECK_EQ_INT(kept, want);
        }
    }
    CHECK_EQ_INT(prev, (uint64_t)cap);
    CHECK(pstate(s, r)[1] == 1);
    /* pruned weights are 0 and stay 0 */
    es_tensor_ref *w = es_sh_tensor(s, r, 16, "opt.train.weight");
    const float *a = w->data;
    const uint8_t *mm = mk->data;
    for (size_t e = 0; e < w->nbytes / 4; e++)
        if (!((mm[e / 8] >> (e % 8)) & 1)) CHECK(a[e] == 0.0f);
    es__storage_free(s);
}

/* ---- serving form ----------------------------------------------------------------------------- */

static void serves_the_same(const char *method, const char *opts) {
    es_storage *s = make(method, opts, 8000, ES_OPT_ROWWISE_ADAGRAD, 0.05f);
    CHECK(s);
    es_tensor_ref r[16];
    for (int i = 1; i <= 12; i++) CHECK(es_sh_step(s, (uint64_t)i) == 0);
    CHECK_MSG(pstate(s, r)[1] == 1, "%s %s: not at the target after 12 steps", method, opts);
    es_storage *c = served_copy(s);
    CHECK(c);
    CHECK(same_values(s, c, 77));
    /* the served copy refuses training and saves what it loaded */
    es_batch b;
    CHECK(es_sh_batch(&b, 4, 3, 1) == 0);
    float g[4 * 3 * 8] = {0};
    CHECK_EQ_INT(es__storage_backward(c, &b, g), ES_EINVAL);
    CHECK_STR_HAS(es__storage_errmsg(c), "without its training state");
    es_batch_free(&b);
    es_tensor_ref rc2[16];
    es_tensor_ref *v1 = es_sh_tensor(s, r, 16, "serve.val"), *v2 = es_sh_tensor(c, rc2, 16, "serve.val");
    CHECK(v1 && v2 && memcmp(v1->data, v2->data, v1->nbytes) == 0);
    es_tensor_ref *o = es_sh_tensor(c, rc2, 16, "serve.off");
    uint64_t nnz = ((uint64_t *)o->data)[o->nbytes / 8 - 1];
    printf("    %s %s: serves %llu of %zu entries, %zu + %zu bytes <= %.0f\n", method, opts, (unsigned long long)nnz,
           s->param_bytes / 4, s->param_bytes, s->aux_bytes, s->budget_bytes);
    CHECK((double)(s->param_bytes + s->aux_bytes) <= s->budget_bytes);
    es__storage_free(c);
    es__storage_free(s);
}

TEST(prune_served_lookups_equal_training) {
    serves_the_same("pep", "s_init=-3.2,interval=2");
    serves_the_same("pep", "interval=100,steps=4,granularity=table");
    serves_the_same("deeplight", "steps=6,interval=3");
    serves_the_same("deeplight", "steps=6,interval=3,share=1");
}

TEST(prune_save_before_target_keeps_the_largest) {
    es_storage *s = make("deeplight", "steps=1000,interval=1000", 6000, ES_OPT_ROWWISE_ADAGRAD, 0.05f);
    CHECK(s);
    CHECK(es_sh_step(s, 1) == 0);
    es_tensor_ref r[16];
    es_tensor_ref *w = es_sh_tensor(s, r, 16, "opt.train.weight"), *v = es_sh_tensor(s, r, 16, "serve.val");
    es_tensor_ref *o = es_sh_tensor(s, r, 16, "serve.off");
    const size_t cap = s->param_bytes / 4, n = w->nbytes / 4;
    CHECK_EQ_INT(((uint64_t *)o->data)[o->nbytes / 8 - 1], cap);
    /* the smallest served magnitude >= every magnitude left out */
    float lo = INFINITY;
    for (size_t i = 0; i < cap; i++) lo = fminf(lo, fabsf(((float *)v->data)[i]));
    size_t above = 0;
    for (size_t e = 0; e < n; e++) above += fabsf(((float *)w->data)[e]) > lo;
    CHECK(above < cap);
    /* and a storage loaded from it serves those values */
    es_storage *c = served_copy(s);
    CHECK(c);
    es__storage_free(c);
    es__storage_free(s);
}

TEST(prune_corrupt_serving_offsets_refused) {
    es_storage *s = make("pep", "s_init=-3.2,interval=2", 6000, ES_OPT_SGD, 0.05f);
    CHECK(s);
    CHECK(es_sh_step(s, 1) == 0 && es_sh_step(s, 2) == 0);
    es_tensor_ref r[16];
    es_tensor_ref *o = es_sh_tensor(s, r, 16, "serve.off");
    ((uint64_t *)o->data)[1] += 1;
    CHECK_EQ_INT(es__storage_after_load(s), ES_EFORMAT);
    CHECK_STR_HAS(es__storage_errmsg(s), "serving offsets");
    es__storage_free(s);
}

/* ---- checkpoints ------------------------------------------------------------------------------- */

static void resume(const char *method, const char *opts, const char *model) {
    es_model_params mp = es_model_params_default();
    mp.model = model;
    mp.storage = method;
    mp.storage_opts = opts;
    mp.budget = 20000;
    mp.batch = 64;
    char tag[160];
    snprintf(tag, sizeof tag, "%s %s %s", method, opts, model);
    es_test_checkpoint_continues(mp, tag);
}

TEST(prune_checkpoint_resumes_exactly) {
    /* the switch before the checkpoint (step 5), and after it */
    resume("pep", "s_init=-4,interval=2,steps=4", "fm");
    resume("pep", "interval=3,steps=9", "fm");
    resume("deeplight", "steps=4,interval=2", "fm");
    resume("deeplight", "steps=9,interval=3", "dlrm");
}

/* ---- real data ---------------------------------------------------------------------------------- */

#define CRITEO "data/criteo_kaggle_train_first10k.tsv"

/* fm, dim 8, row-wise Adagrad tables at lr 0.01, 2 epochs (about 31
 * steps of 256 rows each; fm on this sample overfits after that), the last
 * 2000 rows held out; AUC of the run's validation (or, for baseline, only
 * returned in *auc).  Checks that the saved model is within its budget and
 * predicts what the trained one did. */
static void criteo_case(const char *method, const char *opts, double budget, double *auc) {
    const char *path = es_test_path("prune_criteo.es");
    es_train_params p = es_sh_criteo_fm(method, opts, budget, path);
    es_train_result res;
    es_err err = {0};
    CHECK_MSG(es_train(&p, &res, &err) == 0, "%s: %s", method, err.msg);
    es_model *m = NULL;
    CHECK_MSG(es_model_load(&m, path, 0, &err) == 0, "%s", err.msg);
    const char *valid = es_test_path("prune_valid.tsv");
    CHECK(es_test_sh(NULL, "tail -n 2000 %s > %s", CRITEO, valid) == 0);
    es_metrics mt;
    CHECK_MSG(es_model_eval_file(m, valid, &mt) == 0, "%s", es_model_errmsg(m));
    const es_storage *st = m->st;
    printf("    fm %-9s %-28s budget %.3f: valid AUC %.4f (loaded %.4f), serving %zu + %zu <= %.0f bytes (full %zu), "
           "training state %zu\n",
           method, opts ? opts : "", budget, res.valid.auc, mt.auc, st->param_bytes, st->aux_bytes, st->budget_bytes,
           res.full_bytes, st->state_bytes);
    CHECK_NEAR(mt.auc, res.valid.auc, 1e-9); /* the loaded model predicts what the trained one did */
    CHECK((double)(st->param_bytes + st->aux_bytes) <= st->budget_bytes);
    CHECK((double)st->budget_bytes <= budget * (double)res.full_bytes + 1);
    es_model_free(m);
    *auc = res.valid.auc;
}

TEST_SLOW(prune_criteo_fm) {
    /* the masks are fixed at step 40, in the second epoch, which then
     * retrains; hash at the larger budget, same optimizer, as the yardstick
     * (fm with row-wise Adagrad reaches about 0.69-0.70 on this sample) */
    double hash = 0, auc = 0;
    criteo_case("hash", NULL, 0.25, &hash);
    static const char *const methods[] = {"pep", "deeplight"};
    static const char *const opts[] = {"steps=40,interval=5,s_init=-8", "steps=40,interval=5"};
    static const double budgets[] = {0.25, 0.125};
    for (int i = 0; i < 2; i++)
        for (int b = 0; b < 2; b++) {
            criteo_case(methods[i], opts[i], budgets[b], &auc);
            CHECK_MSG(auc > 0.67 && auc > hash - 0.02, "%s at %.3f: AUC %.4f, hash at 0.25 %.4f", methods[i], budgets[b], auc, hash);
        }
}
