/*
 * test_early_stop.c — early stopping (es_train_params.early_stop):
 *
 *   - the model a run ends with is the best one it evaluated: its
 *     validation metric equals the best of the evaluations, bit for bit
 *     (the same model on the same rows), for logloss and for AUC, with
 *     evaluations at epoch ends and inside epochs; so more epochs never end
 *     worse than the best epoch;
 *   - on synthetic Criteo-shaped data (bench/gen_criteo.c), DLRM + unified
 *     over 5 epochs ends no lower than after its best epoch;
 *   - a run killed and resumed from its checkpoint ends with the model of
 *     the uninterrupted run (one thread), and leaves no best-model file;
 *   - early stopping without validation rows, --eval-every without it, an
 *     unknown metric: clear errors, non-zero exit.
 */
#include "test.h"

#include "embstore.h"

#include <sys/wait.h>
#include <unistd.h>

#define CRITEO "data/criteo_kaggle_train_first10k.tsv"

static es_train_params base_params(const char *path) {
    es_train_params p = es_train_params_basic();
    p.train_path = path;
    p.valid_frac = 0.2;
    p.threads = 1;
    p.dim = 8;
    p.budget = 0.2;
    p.lr = 3e-3f;
    p.emb_lr = 0.1f;
    return p;
}

/* The run's final validation metric is the best of its evaluations. */
static void check_best(const es_train_result *res, int auc) {
    CHECK(res->n_evals >= 1 && res->n_evals <= ES_TRAIN_MAX_EVALS);
    int best = 0;
    for (int e = 1; e < res->n_evals; e++)
        if (auc ? res->evals[e].auc > res->evals[best].auc : res->evals[e].logloss < res->evals[best].logloss) best = e;
    CHECK_EQ_INT(res->best_eval, best);
    double got = auc ? res->valid.auc : res->valid.logloss, want = auc ? res->evals[best].auc : res->evals[best].logloss;
    CHECK_MSG(got == want, "final %s %.9g, best evaluation %.9g", auc ? "AUC" : "logloss", got, want);
    for (int e = 0; e < res->n_evals; e++)
        CHECK(auc ? res->valid.auc >= res->evals[e].auc : res->valid.logloss <= res->evals[e].logloss);
}

TEST_SLOW(early_stop_ends_with_the_best_model) {
    es_err err = {0};
    es_train_result res;
    /* logloss, epoch ends: DLRM overfits the 8000 rows after an epoch or two */
    es_train_params p = base_params(CRITEO);
    p.epochs = 6;
    p.early_stop = 2;
    p.out_path = es_test_path("es_best.es");
    CHECK_MSG(es_train(&p, &res, &err) == 0, "%s", err.msg);
    printf("    logloss: %d evaluations, best %d (epoch %d), stopped early %d, final logloss %.6f\n", res.n_evals, res.best_eval + 1,
           res.best_epoch, res.stopped_early, res.valid.logloss);
    check_best(&res, 0);
    CHECK(res.n_evals >= p.early_stop + 1);
    /* the saved model is the best one: evaluating it gives the same numbers */
    es_model *m = NULL;
    CHECK(es_model_load(&m, p.out_path, 0, &err) == 0);
    es_model_free(m);
    /* AUC, evaluations inside epochs too */
    p.stop_metric = "auc";
    p.eval_every = 9;
    p.early_stop = 3;
    p.out_path = NULL;
    CHECK_MSG(es_train(&p, &res, &err) == 0, "%s", err.msg);
    printf("    auc: %d evaluations, best %d (epoch %d, %llu rows), final AUC %.6f\n", res.n_evals, res.best_eval + 1, res.best_epoch,
           (unsigned long long)res.best_rows, res.valid.auc);
    check_best(&res, 1);
    CHECK(res.n_evals > 2);
    CHECK(es_test_sh(NULL, "ls /tmp/embstore-best.%ld.es 2>/dev/null", (long)getpid()) != 0); /* no best file left */
}

TEST_SLOW(early_stop_on_synthetic_data_ends_at_its_best_epoch) {
    CHECK(es_test_sh(NULL, "cc -O2 -o $ES_T/gen_criteo bench/gen_criteo.c -lm && $ES_T/gen_criteo --rows 30000 --seed 3 --out "
                           "$ES_T/synth.tsv > /dev/null") == 0);
    es_train_params p = base_params(es_test_path("synth.tsv"));
    p.storage = "unified";
    p.model = "dlrm";
    p.epochs = 5;
    p.early_stop = 5; /* never stops: every epoch is evaluated, the best is kept */
    p.stop_metric = "auc";
    es_train_result res;
    es_err err = {0};
    CHECK_MSG(es_train(&p, &res, &err) == 0, "%s", err.msg);
    for (int e = 0; e < res.n_evals; e++) printf("    epoch %d: AUC %.4f logloss %.4f\n", e + 1, res.evals[e].auc, res.evals[e].logloss);
    CHECK_EQ_INT(res.n_evals, 5);
    check_best(&res, 1);
    printf("    final AUC %.4f (best epoch %d)\n", res.valid.auc, res.best_epoch);
}

TEST_SLOW(early_stop_kill_and_resume_matches_uninterrupted_run) {
    const char *args = "--valid-frac 0.2 --model dcn --storage unified --budget 0.2 --epochs 3 --batch 32 --threads 1 --seed 5 "
                       "--checkpoint-every 7 --early-stop 4 --eval-every 40";
    const char *log = es_test_path("esr.log");
    CHECK(es_test_sh(log, "%s train %s %s --quiet --out $ES_T/esref.es", es_bin(), CRITEO, args) == 0);
    CHECK(es_test_sh(NULL, "%s predict $ES_T/esref.es %s --out $ES_T/esref.txt", es_bin(), CRITEO) == 0);
    char *ref = es_test_slurp(log);
    double ref_epoch = es_test_json_num(ref, "best_epoch"), ref_rows = es_test_json_num(ref, "best_rows");
    free(ref);
    /* after delays (wherever they land on this machine), then at the
     * trainer's fault point: batch 290 of 750, past the evaluation at
     * batch 280 and 3 batches past a checkpoint, the same step everywhere */
    const char *delays[] = {"0.3", "0.7", NULL};
    int resumed_any = 0;
    for (int i = 0; i < 3; i++) {
        es_test_sh(NULL, "rm -f $ES_T/esk.es $ES_T/esk.es.ckpt $ES_T/esk.es.ckpt.best");
        if (delays[i])
            es_test_sh(NULL, "%s train %s %s --quiet --out $ES_T/esk.es & pid=$!; sleep %s; kill -9 $pid; wait $pid", es_bin(), CRITEO,
                       args, delays[i]);
        else
            CHECK(es_test_sh(NULL, "ES_TEST_KILL_AFTER=train:290 %s train %s %s --quiet --out $ES_T/esk.es", es_bin(), CRITEO, args) == 137);
        CHECK(es_test_sh(log, "%s train %s %s --quiet --resume --out $ES_T/esk.es", es_bin(), CRITEO, args) == 0);
        char *s = es_test_slurp(log);
        int resumed = s && strstr(s, "\"resumed\":true") != NULL;
        printf("    killed %s%s%s: resumed %s, best epoch %g rows %g (uninterrupted: %g, %g)\n", delays[i] ? "after " : "at batch 290",
               delays[i] ? delays[i] : "", delays[i] ? "s" : "", resumed ? "yes" : "no",
               es_test_json_num(s, "best_epoch"), es_test_json_num(s, "best_rows"), ref_epoch, ref_rows);
        CHECK(es_test_json_num(s, "best_epoch") == ref_epoch && es_test_json_num(s, "best_rows") == ref_rows);
        free(s);
        resumed_any += resumed;
        CHECK(es_test_sh(NULL, "%s predict $ES_T/esk.es %s --out $ES_T/esk.txt", es_bin(), CRITEO) == 0);
        CHECK_MSG(es_test_sh(NULL, "cmp $ES_T/esref.txt $ES_T/esk.txt") == 0, "resumed model differs (kill %d)", i);
        CHECK(es_test_sh(NULL, "test ! -e $ES_T/esk.es.ckpt && test ! -e $ES_T/esk.es.ckpt.best && ! ls $ES_T/esk.es.best.tmp.* 2>/dev/null") == 0);
    }
    CHECK_MSG(resumed_any, "no run resumed from a checkpoint");
}

TEST(early_stop_errors) {
    es_err err = {0};
    es_train_result res;
    es_train_params p = base_params(CRITEO);
    p.valid_frac = 0;
    p.early_stop = 2;
    CHECK_EQ_INT(es_train(&p, &res, &err), ES_EINVAL);
    CHECK_STR_HAS(err.msg, "--early-stop needs validation rows");
    p = base_params(CRITEO);
    p.eval_every = 5;
    CHECK_EQ_INT(es_train(&p, &res, &err), ES_EINVAL);
    CHECK_STR_HAS(err.msg, "--eval-every needs --early-stop");
    p = base_params(CRITEO);
    p.early_stop = 1;
    p.stop_metric = "accuracy";
    CHECK_EQ_INT(es_train(&p, &res, &err), ES_EINVAL);
    CHECK_STR_HAS(err.msg, "accuracy");
    const char *log = es_test_path("es_err.log");
    CHECK(es_test_sh(log, "%s train %s --valid-frac 0 --early-stop 2 --quiet", es_bin(), CRITEO) != 0);
    char *s = es_test_slurp(log);
    CHECK_STR_HAS(s, "--early-stop needs validation rows");
    free(s);
    CHECK(es_test_sh(log, "%s train %s --early-stop -1 --quiet", es_bin(), CRITEO) == 2);
    CHECK(es_test_sh(log, "%s train %s --early-stop 2 --stop-metric acc --quiet", es_bin(), CRITEO) == 2);
    /* a test file is only reported */
    CHECK(es_test_sh(NULL, "tail -n 2000 %s > $ES_T/es_test.tsv", CRITEO) == 0);
    CHECK(es_test_sh(log, "%s train %s --max-rows 3000 --test $ES_T/es_test.tsv --quiet", es_bin(), CRITEO) == 0);
    s = es_test_slurp(log);
    CHECK(es_test_json_num(s, "test_auc") > 0.5 && es_test_json_num(s, "test_rows") == 2000);
    free(s);
    /* and needs no validation rows */
    CHECK(es_test_sh(log, "%s train %s --max-rows 3000 --valid-frac 0 --test $ES_T/es_test.tsv --quiet", es_bin(), CRITEO) == 0);
    s = es_test_slurp(log);
    CHECK(es_test_json_num(s, "test_auc") > 0.5 && es_test_json_num(s, "test_rows") == 2000);
    free(s);
}

/* Refit: after early stopping on rows carved from the file, a new model
 * trains on all rows for the chosen passes; the reported test metrics and
 * the saved model are the refit model's. */
TEST(early_stop_refit_trains_on_all_rows) {
    es_err err = {0};
    es_train_result res;
    es_train_params p = base_params(CRITEO);
    p.model = "fm";
    p.storage = "full";
    p.budget = 0;
    p.epochs = 5;
    p.early_stop = 1;
    p.refit = 1;
    p.test_path = CRITEO;
    p.out_path = es_test_path("es_refit.es");
    CHECK_MSG(es_train(&p, &res, &err) == 0, "%s", err.msg);
    printf("    best epoch %d of %d evaluations; refit %d, %llu rows; valid AUC %.4f, test AUC %.4f\n", res.best_epoch, res.n_evals,
           res.refit, (unsigned long long)res.refit_rows, res.valid.auc, res.test.auc);
    CHECK(res.refit == 1);
    CHECK_EQ_INT(res.train_rows, 8000);
    CHECK_EQ_INT((long long)res.refit_rows, (long long)res.best_epoch * 10000);
    check_best(&res, 0);
    /* the saved model is the one the test metrics describe */
    es_model *m = NULL;
    CHECK(es_model_load(&m, p.out_path, 0, &err) == 0);
    es_metrics mt;
    CHECK(es_model_eval_file(m, CRITEO, &mt) == 0);
    CHECK_NEAR(mt.auc, res.test.auc, 1e-9);
    CHECK(es_model_meta(m, "train.refit") != NULL);
    /* its vocabulary covers the held-out rows too: the full table has more rows */
    es_train_params q = p;
    q.refit = 0;
    q.out_path = NULL;
    es_train_result r0;
    CHECK_MSG(es_train(&q, &r0, &err) == 0, "%s", err.msg);
    CHECK(res.emb_param_bytes > r0.emb_param_bytes);
    CHECK(r0.refit == 0 && r0.refit_rows == 0);
    es_model_free(m);

    /* where it cannot apply, asking for it is an error */
    q = p;
    q.valid_frac = 0;
    q.valid_path = CRITEO;
    CHECK_EQ_INT(es_train(&q, &res, &err), ES_EINVAL);
    CHECK_STR_HAS(err.msg, "--refit needs early stopping on validation rows carved");
    q = p;
    q.early_stop = 0;
    CHECK_EQ_INT(es_train(&q, &res, &err), ES_EINVAL);
    /* automatic: on with early stopping on carved rows, checkpoints or not */
    q = p;
    q.refit = ES_TRAIN_AUTO;
    es_train_params_resolve(&q);
    CHECK(q.refit == 1);
    q.refit = ES_TRAIN_AUTO;
    q.checkpoint_every = 10;
    es_train_params_resolve(&q);
    CHECK(q.refit == 1);
    q = p;
    q.refit = ES_TRAIN_AUTO;
    q.early_stop = 0;
    es_train_params_resolve(&q);
    CHECK(q.refit == 0);
}

/* A run killed inside its refit (after a refit checkpoint) and resumed
 * ends with the model of the uninterrupted run, bit for bit (one thread). */
static int refit_kill_pass;
static void kill_in_refit(const es_progress *pr, void *ctx) {
    (void)ctx;
    if (!strcmp(pr->phase, "refit") && pr->epoch == refit_kill_pass && pr->rows >= 3000) _exit(7); /* as a kill would: no cleanup */
}

TEST_SLOW(early_stop_refit_resumes_exactly) {
    es_err err = {0};
    es_train_result res, ref;
    es_train_params p = base_params(CRITEO);
    p.model = "fm";
    p.storage = "full";
    p.budget = 0;
    p.emb_optim = "ftrl";
    p.batch = 64;
    p.epochs = 6;
    p.early_stop = 1;
    p.refit = 1;
    p.checkpoint_every = 5;
    p.test_path = CRITEO;
    p.out_path = es_test_path("es_rr_ref.es");
    CHECK_MSG(es_train(&p, &ref, &err) == 0, "%s", err.msg);
    CHECK(ref.refit && ref.best_epoch >= 1);
    refit_kill_pass = ref.best_epoch; /* the refit's last pass */
    p.out_path = es_test_path("es_rr.es");
    es_test_sh(NULL, "rm -f $ES_T/es_rr.es $ES_T/es_rr.es.ckpt $ES_T/es_rr.es.ckpt.best");
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        p.progress = kill_in_refit;
        es_train_result r;
        es_err e = {0};
        es_train(&p, &r, &e);
        _exit(0); /* not reached when the kill fires */
    }
    int st = 0;
    CHECK(pid > 0 && waitpid(pid, &st, 0) == pid);
    CHECK_MSG(WIFEXITED(st) && WEXITSTATUS(st) == 7, "the child was not stopped in its refit (status %d)", st);
    CHECK(access(es_test_path("es_rr.es.ckpt"), F_OK) == 0);
    p.resume = 1;
    CHECK_MSG(es_train(&p, &res, &err) == 0, "%s", err.msg);
    printf("    best epoch %d, killed in refit pass %d; resumed %d: test AUC %.6f (uninterrupted %.6f), valid %.6f (%.6f)\n", ref.best_epoch,
           refit_kill_pass, res.resumed, res.test.auc, ref.test.auc, res.valid.auc, ref.valid.auc);
    CHECK(res.resumed && res.refit);
    CHECK(res.test.auc == ref.test.auc && res.test.logloss == ref.test.logloss);
    CHECK(res.valid.auc == ref.valid.auc && res.valid.logloss == ref.valid.logloss);
    CHECK_EQ_INT((long long)res.refit_rows, (long long)ref.refit_rows);
    CHECK_EQ_INT(res.best_epoch, ref.best_epoch);
    CHECK(es_test_sh(NULL, "cmp $ES_T/es_rr.es $ES_T/es_rr_ref.es") == 0 ||
          es_test_sh(NULL, "%s predict $ES_T/es_rr.es %s --out $ES_T/rr1.txt && %s predict $ES_T/es_rr_ref.es %s --out $ES_T/rr2.txt && "
                           "cmp $ES_T/rr1.txt $ES_T/rr2.txt",
                     es_bin(), CRITEO, es_bin(), CRITEO) == 0);
    CHECK(access(es_test_path("es_rr.es.ckpt"), F_OK) != 0); /* the model file supersedes it */
}
