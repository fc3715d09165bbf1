/*
 * test_optembed.c — the multi-stage method `optembed` (OptEmbed: row
 * pruning by learnable per-field L1-norm thresholds, a supernet of sampled
 * dimension prefixes, an evolutionary search of a dimension per field,
 * retrained as `fielddim`): the storage harness on the supernet, a
 * finite-difference check of the thresholds' straight-through surrogate
 * (mask=smooth, the surrogate the backward differentiates), the
 * regulariser and the hard mask, the budget at 1/4, 1/16 and 1/64 of the
 * full table on the Criteo sample and ml-latest-small, the evolutionary
 * search deterministic for a seed, resume after SIGKILL inside the search
 * and inside the retrain (bit for bit with --threads 1), and bad input
 * (each a clear error, exit != 0, no file).
 */
#include "storage_harness.h"
#include "staged_kill.h"
#include "test.h"
#include "train/model.h"

#include <math.h>

#define CRITEO "data/criteo_kaggle_train_first10k.tsv"
#define ML "data/ml-latest-small.csv"
#define ML_COLS "--columns rating:label,userId:cat,movieId:cat --label-threshold 4"

/* ---- the storage ------------------------------------------------------------------------ */

TEST(optembed_harness) {
    es_sh_cfg c = es_sh_cfg_make("optembed", 0);
    c.opts = "dims=2:4:8";
    c.init_scale = 0.5f;
    CHECK(es_sh_determinism(&c));
    CHECK(es_sh_threads(&c));
    CHECK(es_sh_roundtrip(&c));
    CHECK(es_sh_alloc_failures(&c));
    static const double fracs[] = {0.25, 1.0 / 16, 1.0 / 64};
    c.budget = 0;
    CHECK(es_sh_budget(&c, fracs, 3));
    c.budget = 4096;
    /* the harness's finite differences (h = 1e-2) on the rows, with the
     * thresholds far below the rows' norms, where the mask is constant (1;
     * the smooth surrogate's 1.44): the sampled prefixes and their padding.
     * Near the thresholds the surrogate has kinks (g jumps at |x| = 1, and
     * the L1 norm at 0) that a step of 1e-2 straddles; the rows' gradient
     * through the mask is checked there by optembed_threshold_gradient,
     * away from the kinks. */
    c.opts = "dims=2:4:8,reg=0,thresh0=-10";
    CHECK(es_sh_gradcheck(&c));
    c.opts = "dims=2:4:8,mask=smooth,reg=0,thresh0=-10";
    CHECK(es_sh_gradcheck(&c));
    CHECK(es_sh_roundtrip(&c));
    c.opts = "dims=3:8,reg=0,thresh0=-10"; /* odd prefix widths */
    CHECK(es_sh_gradcheck(&c));
    c.use_vocab = 0;
    CHECK(es_sh_gradcheck(&c));
}

static double loss_of(es_storage *s, const es_batch *b, const float *G, float *out, size_t nout) {
    s->ops->lookup(s, b, 0, b->n, out);
    double L = 0;
    for (size_t i = 0; i < nout; i++) L += (double)out[i] * G[i];
    return L;
}

/* Finite differences of L = sum(out * G) in each threshold t_f, with the
 * forward's smooth surrogate S(||e||_1 - t_f) whose derivative g is what
 * the straight-through backward uses (SGD at lr 1: the step moves t_f by
 * minus its gradient).  Several thresholds, so the rows' x = n - t fall on
 * each piece of g. */
TEST(optembed_threshold_gradient) {
    static const char *const opts[] = {"dims=2:4:8,mask=smooth,reg=0,thresh_lr=1,thresh0=2", "dims=2:4:8,mask=smooth,reg=0,thresh_lr=1,thresh0=1.6",
                                       "dims=2:4:8,mask=smooth,reg=0,thresh_lr=1,thresh0=2.5", "dims=1:3:8,mask=smooth,reg=0,thresh_lr=1,thresh0=2.2"};
    int checked = 0;
    for (size_t oi = 0; oi < ES_ARRAY_LEN(opts); oi++) {
        es_sh_cfg c = es_sh_cfg_make("optembed", 0);
        c.init_scale = 0.5f;
        c.opts = opts[oi];
        es_vocab *v = es_sh_vocab(c.n_fields);
        es_storage *s = NULL;
        es_err err;
        CHECK(v && es_sh_create(&s, &c, v, ES_OPT_SGD, 1.0f, &err) == 0);
        if (!s) {
            es_vocab_free(v);
            continue;
        }
        es_tensor_ref refs[64];
        es_tensor_ref *tr = es_sh_tensor(s, refs, 64, "opt.arch.thresh");
        CHECK(tr && tr->nbytes == (size_t)c.n_fields * sizeof(float));
        float *t = tr ? tr->data : NULL;
        /* the rows' tables "field<f>": [rows, W] */
        float *tw[16];
        size_t tn[16];
        int W = 8;
        for (int f = 0; f < c.n_fields && f < 16; f++) {
            char nm[32];
            snprintf(nm, sizeof nm, "field%d", f);
            es_tensor_ref *x = es_sh_tensor(s, refs, 64, nm);
            CHECK(x != NULL);
            tw[f] = x ? x->data : NULL;
            tn[f] = x ? x->nbytes / sizeof(float) : 0;
        }
        for (uint64_t bs = 1; t && bs <= 3; bs++) {
            es_batch b;
            CHECK(es_sh_batch(&b, 8, c.n_fields, bs * 17 + oi) == 0);
            const size_t nout = (size_t)b.n * c.n_fields * c.dim;
            float *G = malloc(nout * sizeof *G), *out = malloc(nout * sizeof *out);
            es_rng r;
            es__rng_seed(&r, bs);
            for (size_t i = 0; i < nout; i++) G[i] = es__rng_normal(&r);
            double num[64];
            const float h = 1e-2f;
            for (int f = 0; f < c.n_fields; f++) {
                const float t0 = t[f];
                t[f] = t0 + h;
                double Lp = loss_of(s, &b, G, out, nout);
                t[f] = t0 - h;
                double Lm = loss_of(s, &b, G, out, nout);
                t[f] = t0;
                num[f] = (Lp - Lm) / (2.0 * (double)h);
            }
            /* the rows, by finite differences of step 1e-3, away from the
             * surrogate's kinks (|x| within 2e-3 of 1, an element within
             * 2e-3 of 0) */
            size_t ntab = 0;
            for (int f = 0; f < c.n_fields; f++) ntab += tn[f];
            double *rnum = calloc(ntab, sizeof *rnum);
            float *rold = malloc(ntab * sizeof *rold);
            unsigned char *skip = calloc(ntab, 1);
            const float hr = 1e-3f;
            for (int f = 0, o = 0; f < c.n_fields; o += (int)tn[f], f++) {
                memcpy(rold + o, tw[f], tn[f] * sizeof(float));
                for (size_t e = 0; e < tn[f]; e++) {
                    const float *row = tw[f] + (e / W) * W;
                    float n = 0;
                    for (int j = 0; j < W; j++) n += fabsf(row[j]);
                    const float x = n - t[f];
                    if (fabsf(fabsf(x) - 1.0f) < 2e-3f || fabsf(tw[f][e]) < 2e-3f) {
                        skip[o + e] = 1;
                        continue;
                    }
                    const float w0 = tw[f][e];
                    tw[f][e] = w0 + hr;
                    double Lp = loss_of(s, &b, G, out, nout);
                    tw[f][e] = w0 - hr;
                    double Lm = loss_of(s, &b, G, out, nout);
                    tw[f][e] = w0;
                    rnum[o + e] = (Lp - Lm) / ((double)(w0 + hr) - (double)(w0 - hr));
                }
            }
            float old[64];
            memcpy(old, t, (size_t)c.n_fields * sizeof *t);
            CHECK(s->ops->backward(s, &b, G) == 0);
            size_t rchecked = 0, rnz = 0;
            for (int f = 0, o = 0; f < c.n_fields; o += (int)tn[f], f++)
                for (size_t e = 0; e < tn[f]; e++) {
                    const double a = (double)(rold[o + e] - tw[f][e]);
                    if (skip[o + e]) continue;
                    rchecked++;
                    rnz += a != 0;
                    CHECK_MSG(fabs(a - rnum[o + e]) <= 2e-3 + 2e-2 * fmax(fabs(a), fabs(rnum[o + e])),
                              "%s: field%d[%zu]: backward %g vs finite differences %g", opts[oi], f, e, a, rnum[o + e]);
                }
            printf("    %s batch %llu: %zu row elements checked (%zu with a gradient)\n", opts[oi], (unsigned long long)bs, rchecked, rnz);
            CHECK(rnz > 0);
            for (int f = 0, o = 0; f < c.n_fields; o += (int)tn[f], f++) memcpy(tw[f], rold + o, tn[f] * sizeof(float));
            free(rnum);
            free(rold);
            free(skip);
            for (int f = 0; f < c.n_fields; f++) {
                const double a = (double)(old[f] - t[f]);
                printf("    %s batch %llu field %d: threshold gradient %+.6f, finite differences %+.6f\n", opts[oi],
                       (unsigned long long)bs, f, a, num[f]);
                CHECK_MSG(fabs(a - num[f]) <= 2e-3 + 2e-2 * fmax(fabs(a), fabs(num[f])), "field %d: analytic %g numeric %g", f, a,
                          num[f]);
                checked += a != 0;
            }
            memcpy(t, old, (size_t)c.n_fields * sizeof *t); /* the next batch from the same thresholds */
            free(G);
            free(out);
            es_batch_free(&b);
        }
        es__storage_free(s);
        es_vocab_free(v);
    }
    CHECK_MSG(checked >= 10, "only %d nonzero threshold gradients", checked);
}

/* The regulariser pushes the thresholds up (reg exp(-t) per step, SGD);
 * the hard mask reads rows below their field's threshold as zeros. */
TEST(optembed_regulariser_and_mask) {
    es_sh_cfg c = es_sh_cfg_make("optembed", 0);
    c.opts = "dims=2:4:8,reg=0.5,thresh0=1,thresh_lr=1";
    es_vocab *v = es_sh_vocab(c.n_fields);
    es_storage *s = NULL;
    es_err err;
    CHECK(v && es_sh_create(&s, &c, v, ES_OPT_SGD, 0.1f, &err) == 0);
    es_tensor_ref refs[64];
    es_tensor_ref *tr = s ? es_sh_tensor(s, refs, 64, "opt.arch.thresh") : NULL;
    CHECK(tr != NULL);
    es_batch b;
    CHECK(es_sh_batch(&b, 8, c.n_fields, 3) == 0);
    const size_t nout = (size_t)b.n * c.n_fields * c.dim;
    float *G = calloc(nout, sizeof *G), *out = malloc(nout * sizeof *out);
    if (tr && s) {
        float *t = tr->data;
        CHECK(s->ops->backward(s, &b, G) == 0); /* no loss gradient: the regulariser alone */
        for (int f = 0; f < c.n_fields; f++) {
            const double want = 1.0 + 0.1 * 0.5 * exp(-1.0);
            CHECK_MSG(fabs(t[f] - want) < 1e-6, "field %d: threshold %.7f, want %.7f", f, t[f], want);
        }
        /* init 0.05: every row's norm is below 1.03, so every row is masked */
        s->ops->lookup(s, &b, 0, b.n, out);
        size_t nz = 0;
        for (size_t i = 0; i < nout; i++) nz += out[i] != 0;
        CHECK_MSG(nz == 0, "%zu nonzero outputs under thresholds above every row's norm", nz);
        for (int f = 0; f < c.n_fields; f++) t[f] = -1;
        s->ops->lookup(s, &b, 0, b.n, out);
        for (size_t i = 0; i < nout; i++) nz += out[i] != 0;
        CHECK_MSG(nz > 0, "thresholds below every norm: the output is still zero");
    }
    free(G);
    free(out);
    es_batch_free(&b);
    es__storage_free(s);
    es_vocab_free(v);
}

/* ---- through the CLI ------------------------------------------------------------------------ */

/* The integers of "key":[...] in s: count written to d. */
static int json_ints(const char *s, const char *key, long long *d, int max) {
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\":[", key);
    const char *p = s ? strstr(s, pat) : NULL;
    if (!p) return -1;
    p += strlen(pat);
    int n = 0;
    while (*p && *p != ']' && n < max) {
        char *end;
        d[n++] = strtoll(p, &end, 10);
        p = *end == ',' ? end + 1 : end;
    }
    return n;
}

static void budget_case(const char *data, const char *cols, const char *frac_s, double frac, int F) {
    const char *log = es_test_path("oe_budget.log");
    es_test_sh(NULL, "rm -f $ES_T/oe_b.es");
    int st = es_test_sh(log,
                        "%s train %s %s --model fm --dim 16 --storage optembed --budget %s --epochs 1 --early-stop 0 --batch 64 "
                        "--max-rows 3000 --threads 1 --quiet --out $ES_T/oe_b.es",
                        es_bin(), data, cols, frac_s);
    char *s = es_test_slurp(log);
    CHECK_MSG(st == 0, "%s at %s: exit %d: %s", data, frac_s, st, s ? s : "");
    const char *j = s ? es_test_last_line(s) : NULL;
    double emb = es_test_json_num(j, "emb_bytes"), full = es_test_json_num(j, "full_bytes");
    const char *sr = j ? strstr(j, "\"name\":\"search\"") : NULL;
    double search = es_test_json_num(sr, "emb_bytes");
    long long d[64], k[64];
    int n = json_ints(j, "dims", d, 64), nk = json_ints(j, "kept_rows", k, 64);
    printf("    %-40s budget %-5s %9.0f bytes of %9.0f (%.4f; search %.0f)\n      dims", data, frac_s, emb, full, emb / full, search);
    for (int i = 0; i < n; i++) printf("%s%lld", i ? ":" : " ", d[i]);
    printf("\n      kept rows");
    for (int i = 0; i < nk; i++) printf("%s%lld", i ? ":" : " ", k[i]);
    printf("\n");
    CHECK_MSG(emb > 0 && emb <= frac * full, "%s: %.0f bytes over the budget %.0f", frac_s, emb, frac * full);
    CHECK_MSG(search > 0 && search <= frac * full, "%s: the supernet (%.0f bytes) over the budget %.0f", frac_s, search, frac * full);
    CHECK_EQ_INT(n, F);
    CHECK_EQ_INT(nk, F);
    /* the stages in order, and the retrain is fielddim with those dims and rows */
    const char *a = j ? strstr(j, "\"stages\":[{\"name\":\"search\"") : NULL, *b = a ? strstr(a, "{\"name\":\"derive\"") : NULL,
               *c = b ? strstr(b, "{\"name\":\"retrain\"") : NULL;
    CHECK_MSG(a && b && c, "stages missing or out of order: %s", j ? j : "");
    if (n == F && nk == F && c) {
        char want[1024];
        size_t o = (size_t)snprintf(want, sizeof want, "\"storage\":\"fielddim\",\"opts\":\"dims=");
        for (int i = 0; i < n; i++) o += (size_t)snprintf(want + o, sizeof want - o, i ? ":%lld" : "%lld", d[i]);
        o += (size_t)snprintf(want + o, sizeof want - o, ",rows=");
        for (int i = 0; i < nk; i++) o += (size_t)snprintf(want + o, sizeof want - o, i ? ":%lld" : "%lld", k[i]);
        CHECK_STR_HAS(c, want);
    }
    free(s);
}

TEST(optembed_budget_criteo) {
    budget_case(CRITEO, "", "0.25", 0.25, 26);
    budget_case(CRITEO, "", "1/16", 1.0 / 16, 26);
    budget_case(CRITEO, "", "1/64", 1.0 / 64, 26);
}

TEST(optembed_budget_movielens) {
    budget_case(ML, ML_COLS, "0.25", 0.25, 2);
    budget_case(ML, ML_COLS, "1/16", 1.0 / 16, 2);
    budget_case(ML, ML_COLS, "1/64", 1.0 / 64, 2);
}

/* The derive stage's result of one run (the whole "derive" object). */
static char *derive_of(const char *extra, int seed) {
    const char *log = es_test_path("oe_det.log");
    int st = es_test_sh(log,
                        "%s train %s --model fm --dim 8 --storage optembed --budget 1/16 --epochs 1 --early-stop 0 --batch 64 "
                        "--max-rows 3000 --threads 2 --seed %d --quiet %s",
                        es_bin(), CRITEO, seed, extra);
    char *s = es_test_slurp(log);
    if (st != 0) es_test_fail(__FILE__, __LINE__, "exit %d: %s", st, s ? s : ""); /* not CHECK_MSG: it returns void */
    const char *j = s ? es_test_last_line(s) : NULL;
    const char *a = j ? strstr(j, "{\"name\":\"derive\"") : NULL, *b = a ? strstr(a, "{\"name\":\"retrain\"") : NULL;
    a = a ? strstr(a, "\"result\":") : NULL; /* not its seconds */
    char *r = a && b ? strndup(a, (size_t)(b - a)) : NULL;
    free(s);
    return r;
}

/* Same seed, same search (dims, kept rows, evaluations, best AUC); the
 * evaluations as the options say; the stages reported; --help lists it. */
TEST(optembed_search_deterministic) {
    char *a = derive_of("", 5), *b = derive_of("", 5), *c = derive_of("--storage-opts pop=4,generations=2", 5);
    CHECK(a && b && c);
    if (a && b) {
        printf("    seed 5: %s\n", a);
        CHECK_MSG(strcmp(a, b) == 0, "two runs with seed 5 differ:\n%s\n%s", a, b);
        CHECK_EQ_INT((int)es_test_json_num(a, "evaluations"), 8 + 4 * 4);
        double auc = es_test_json_num(a, "best_valid_auc");
        CHECK_MSG(auc > 0.5 && auc < 1, "best validation AUC %g", auc);
    }
    if (c) CHECK_EQ_INT((int)es_test_json_num(c, "evaluations"), 4 + 2 * 2);
    free(a);
    free(b);
    free(c);
    const char *log = es_test_path("oe_help.log");
    CHECK(es_test_sh(log, "%s train --help", es_bin()) == 0);
    char *s = es_test_slurp(log);
    CHECK_STR_HAS(s, "optembed");
    free(s);
    CHECK(es_test_sh(log, "%s train --help-storage --storage optembed", es_bin()) == 0);
    s = es_test_slurp(log);
    CHECK_STR_HAS(s, "evolutionary");
    CHECK_STR_HAS(s, "generations");
    free(s);
}

/* ---- resume after SIGKILL ----------------------------------------------------------------- */

#define KILL_ARGS                                                                                                             \
    "--model fm --dim 8 --storage optembed --storage-opts search_epochs=6 --budget 0.25 --epochs 3 --early-stop 0 --batch 16 " \
    "--threads 1 --max-rows 4000 --seed 3 --checkpoint-every "

static void kill_in_stage(const char *stage, int batches, int every) {
    es_test_staged_kill("oe", CRITEO, KILL_ARGS, stage, batches, every);
}

TEST_SLOW(optembed_resume_after_kill_in_search) { kill_in_stage("search", 455, 10); }
TEST_SLOW(optembed_resume_after_kill_in_retrain) { kill_in_stage("retrain", 333, 10); }

/* ---- bad input ---------------------------------------------------------------------------- */

TEST(optembed_bad_input) {
    static const struct {
        const char *args, *msg;
    } cases[] = {
        {"--budget 2000", "unreachable budget"}, /* not one supernet row per field */
        {"--budget 800 --storage-opts dims=2", "unreachable budget"}, /* the supernet fits (728 bytes), no derived table (832) */
        {"--dim 8 --budget 0.25 --storage-opts dims=4:16", "larger than the embedding dimension"},
        {"--budget 0.25 --storage-opts dims=8:4", "ascending"},
        {"--budget 0.25 --valid-frac 0", "--valid-frac"},
    };
    for (size_t i = 0; i < ES_ARRAY_LEN(cases); i++) es_test_staged_bad("oe", "optembed", CRITEO, cases[i].args, cases[i].msg);
}
