/*
 * test_autosrh.c — the multi-stage method `autosrh` (AutoSrh's soft
 * selection weights over frequency blocks x coordinates with an L1
 * penalty, pruned to the budget, retrained as `fielddim`): the storage
 * harness on the search table, a finite-difference check of the soft
 * selection weights with the L1 term, the budget at 1/4, 1/16 and 1/64 of
 * the full table on the Criteo sample and ml-latest-small, the searched
 * dimensions per field and per block in the result JSON, resume after
 * SIGKILL inside the search and inside the retrain (bit for bit with
 * --threads 1; the pattern of test_autodim.c), and bad input (each a clear
 * error, exit != 0, no file).
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

TEST(autosrh_harness) {
    es_sh_cfg c = es_sh_cfg_make("autosrh", 0);
    c.opts = "blocks=3";
    c.init_scale = 0.5f;
    CHECK(es_sh_gradcheck(&c)); /* the table, the soft selection weights held fixed */
    CHECK(es_sh_determinism(&c));
    CHECK(es_sh_threads(&c));
    CHECK(es_sh_roundtrip(&c));
    CHECK(es_sh_alloc_failures(&c));
    static const double fracs[] = {0.25, 1.0 / 16, 1.0 / 64};
    c.budget = 0; /* the harness's budgets: fractions of its vocabulary's full table */
    /* The soft selection weights (4 F NB dim bytes, architecture state,
     * never served) are set aside from the budget: at the harness's 1/64
     * (2923 bytes) even one block's 128 bytes leave less than the
     * harness's 95% for the table, so 1/64 is checked below without that
     * floor: table + lookup arrays + weights <= the budget. */
    c.opts = "blocks=1";
    CHECK(es_sh_budget(&c, fracs, 2));
    c.opts = NULL;
    CHECK(es_sh_budget(&c, fracs, 2));
    es_vocab *v = es_sh_vocab(c.n_fields);
    CHECK(v != NULL);
    for (int nb = 0; nb <= 4 && v; nb++) {
        es_sh_cfg cc = c;
        char o[32];
        snprintf(o, sizeof o, "blocks=%d", nb);
        cc.opts = nb ? o : NULL;
        cc.budget = 1.0 / 64;
        es_storage *s = NULL;
        es_err err;
        CHECK_MSG(es_sh_create(&s, &cc, v, ES_OPT_ROWWISE_ADAGRAD, 0.05f, &err) == 0, "%s: %s", o, err.msg);
        if (!s) continue;
        es_tensor_ref refs[64];
        es_tensor_ref *a = es_sh_tensor(s, refs, 64, "opt.arch.alpha");
        CHECK(a != NULL);
        const double used = (double)s->param_bytes + (double)s->aux_bytes + (a ? (double)a->nbytes : 0);
        printf("    budget 1/64 %-10s %6.0f B: params %zu + aux %zu + weights %zu = %5.1f%%\n", nb ? o : "default", s->budget_bytes,
               s->param_bytes, s->aux_bytes, a ? (size_t)a->nbytes : 0, 100.0 * used / s->budget_bytes);
        CHECK_MSG(used <= s->budget_bytes, "%s: %.0f bytes over the budget %.0f", o, used, s->budget_bytes);
        es__storage_free(s);
    }
    es_vocab_free(v);
    c.budget = 4096;
    c.use_vocab = 0; /* no vocabulary: one block */
    CHECK(es_sh_gradcheck(&c));
}

/* The soft selection weights' gradient, with the L1 penalty in the loss. */
TEST(autosrh_soft_selection_gradient) {
    es_sh_cfg c = es_sh_cfg_make("autosrh", 0);
    c.init_scale = 0.5f;
    c.opts = "blocks=4,l1=0";
    CHECK(es_sh_gradcheck_arch(&c, "opt.arch.alpha"));
    c.opts = "blocks=4,l1=0.05";
    c.arch_l1 = 0.05;
    CHECK(es_sh_gradcheck_arch(&c, "opt.arch.alpha"));
    c.dim = 5;
    c.opts = "blocks=2,l1=0.3";
    c.arch_l1 = 0.3;
    CHECK(es_sh_gradcheck_arch(&c, "opt.arch.alpha"));
    c.use_vocab = 0;
    CHECK(es_sh_gradcheck_arch(&c, "opt.arch.alpha"));
}

/* A training step moves the table, never the soft selection weights; an
 * architecture step moves the weights (the L1 term pulls even those of
 * blocks the batch did not touch towards zero). */
TEST(autosrh_steps_update_their_own_parameters) {
    es_sh_cfg c = es_sh_cfg_make("autosrh", 0);
    c.opts = "blocks=4,l1=0.01";
    es_storage *s = NULL;
    es_err err;
    es_vocab *v = es_sh_vocab(c.n_fields);
    CHECK(v != NULL);
    CHECK(es_sh_create(&s, &c, v, ES_OPT_ADAGRAD, 0.1f, &err) == 0);
    es_tensor_ref refs[256];
    es_tensor_ref *a = es_sh_tensor(s, refs, 256, "opt.arch.alpha");
    CHECK(a != NULL);
    const size_t na = a->nbytes / sizeof(float);
    float *a0 = malloc(a->nbytes);
    memcpy(a0, a->data, a->nbytes);
    CHECK(es_sh_step(s, 3) == 0);
    CHECK_MSG(memcmp(a0, a->data, a->nbytes) == 0, "a training step changed the soft selection weights");
    es_batch b;
    CHECK(es_sh_batch(&b, 16, c.n_fields, 5) == 0);
    float *g = malloc((size_t)b.n * c.n_fields * c.dim * sizeof *g);
    for (size_t i = 0; i < (size_t)b.n * c.n_fields * c.dim; i++) g[i] = (float)((i * 7) % 5) - 2.0f;
    CHECK(s->ops->staged->arch_backward(s, &b, g) == 0);
    size_t moved = 0;
    for (size_t i = 0; i < na; i++) moved += ((float *)a->data)[i] != a0[i];
    CHECK_MSG(moved == na, "%zu of %zu soft selection weights moved", moved, na);
    free(g);
    free(a0);
    es_batch_free(&b);
    es__storage_free(s);
    es_vocab_free(v);
}

/* ---- through the CLI ------------------------------------------------------------------------ */

/* The ints of a JSON array "key":[...] (nested arrays flattened): count. */
static int json_ints(const char *s, const char *key, int *d, int max) {
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\":[", key);
    const char *p = s ? strstr(s, pat) : NULL;
    if (!p) return -1;
    p += strlen(pat);
    int n = 0, depth = 1;
    while (*p && depth > 0 && n < max) {
        if (*p == '[') depth++, p++;
        else if (*p == ']') depth--, p++;
        else if (*p == ',') p++;
        else {
            char *end;
            d[n++] = (int)strtol(p, &end, 10);
            if (end == p) break;
            p = end;
        }
    }
    return n;
}

/* One run at a budget; retrain "" (blockdim, the default) or "fielddim". */
static void budget_case(const char *data, const char *cols, const char *frac_s, double frac, int F, const char *retrain) {
    const char *log = es_test_path("as_budget.log");
    const int fd = !strcmp(retrain, "fielddim");
    es_test_sh(NULL, "rm -f $ES_T/as_b.es");
    int st = es_test_sh(log,
                        "%s train %s %s --model fm --dim 16 --storage autosrh %s%s --budget %s --epochs 1 --early-stop 0 --batch 64 "
                        "--max-rows 3000 --threads 1 --quiet --out $ES_T/as_b.es",
                        es_bin(), data, cols, fd ? "--storage-opts retrain=" : "", retrain, frac_s);
    char *s = es_test_slurp(log);
    CHECK_MSG(st == 0, "%s at %s: exit %d: %s", data, frac_s, st, s ? s : "");
    const char *j = s ? es_test_last_line(s) : NULL;
    double emb = es_test_json_num(j, "emb_bytes"), full = es_test_json_num(j, "full_bytes"), auc = es_test_json_num(j, "auc");
    const char *sr = j ? strstr(j, "\"name\":\"search\"") : NULL;
    double search = es_test_json_num(sr, "emb_bytes");
    int d[64], bd[256];
    int n = json_ints(j, "dims", d, 64), nb = json_ints(j, "block_dims", bd, 256);
    const int NB = (int)es_test_json_num(j, "blocks");
    printf("    %-38s %-8s %-5s %9.0f bytes of %9.0f (%.4f; search %.0f), auc %.4f, block dims", data, fd ? "fielddim" : "blockdim",
           frac_s, emb, full, emb / full, search, auc);
    for (int i = 0; i < nb; i++) printf("%s%d", NB > 0 && i % NB ? ":" : " ", bd[i]);
    if (fd) {
        printf(", dims");
        for (int i = 0; i < n; i++) printf("%s%d", i ? ":" : " ", d[i]);
    }
    printf("\n");
    CHECK_MSG(emb > 0 && emb <= frac * full, "%s: %.0f bytes over the budget %.0f", frac_s, emb, frac * full);
    CHECK_MSG(search > 0 && search <= frac * full, "%s: the search table (%.0f bytes) over the budget %.0f", frac_s, search, frac * full);
    CHECK_MSG(NB >= 1 && NB <= 4, "blocks %d", NB);
    CHECK_EQ_INT(nb, NB * F);
    if (fd) CHECK_EQ_INT(n, F);
    const char *rt = j ? strstr(j, "{\"name\":\"retrain\"") : NULL;
    CHECK_STR_HAS(rt, fd ? "\"storage\":\"fielddim\"" : "\"storage\":\"blockdim\"");
    CHECK(es_test_sh(NULL, "test -f $ES_T/as_b.es") == 0);
    free(s);
}

TEST(autosrh_budget_criteo) {
    budget_case(CRITEO, "", "0.25", 0.25, 26, "");
    budget_case(CRITEO, "", "1/16", 1.0 / 16, 26, "");
    budget_case(CRITEO, "", "1/64", 1.0 / 64, 26, "");
    budget_case(CRITEO, "", "0.25", 0.25, 26, "fielddim");
    budget_case(CRITEO, "", "1/16", 1.0 / 16, 26, "fielddim");
    budget_case(CRITEO, "", "1/64", 1.0 / 64, 26, "fielddim");
}

TEST(autosrh_budget_movielens) {
    budget_case(ML, ML_COLS, "0.25", 0.25, 2, "");
    budget_case(ML, ML_COLS, "1/16", 1.0 / 16, 2, "");
    budget_case(ML, ML_COLS, "1/64", 1.0 / 64, 2, "");
    budget_case(ML, ML_COLS, "0.25", 0.25, 2, "fielddim");
    budget_case(ML, ML_COLS, "1/16", 1.0 / 16, 2, "fielddim");
    budget_case(ML, ML_COLS, "1/64", 1.0 / 64, 2, "fielddim");
}

/* Each stage in the JSON result, in order, with the kept dims per (field,
 * block) and the values per block; the retrain is blockdim with exactly
 * those dims, and `inspect` shows the stages; --help lists the method. */
TEST(autosrh_stages_reported) {
    const char *log = es_test_path("as_stages.log");
    es_test_sh(NULL, "rm -f $ES_T/as_s.es");
    CHECK(es_test_sh(log, "%s train %s --model dlrm --dim 8 --storage autosrh --budget 0.25 --epochs 2 --batch 64 --max-rows 2000 "
                          "--threads 1 --quiet --out $ES_T/as_s.es",
                     es_bin(), CRITEO) == 0);
    char *s = es_test_slurp(log);
    const char *j = s ? es_test_last_line(s) : "";
    const char *a = strstr(j, "\"stages\":[{\"name\":\"search\""), *b = a ? strstr(a, "{\"name\":\"derive\"") : NULL,
               *c = b ? strstr(b, "{\"name\":\"retrain\"") : NULL;
    CHECK_MSG(a && b && c, "stages missing or out of order: %s", j);
    double vauc = es_test_json_num(a, "valid_auc");
    CHECK_MSG(vauc > 0.5 && vauc < 1, "search validation AUC %g", vauc);
    int bd[256], bv[256];
    CHECK_EQ_INT(json_ints(b, "block_dims", bd, 256), 26 * 4);
    CHECK_EQ_INT(json_ints(b, "block_values", bv, 256), 26 * 4);
    for (int i = 0; i < 26 * 4; i++) CHECK_MSG(bd[i] >= 1 && bd[i] <= 8, "block %d: dim %d", i, bd[i]);
    CHECK_STR_HAS(c, "\"storage\":\"blockdim\"");
    CHECK_STR_HAS(j, "\"storage\":\"autosrh\"");
    char want[1024];
    size_t o = (size_t)snprintf(want, sizeof want, "blocks=4,dims=");
    for (int i = 0; i < 26 * 4; i++) o += (size_t)snprintf(want + o, sizeof want - o, i ? ":%d" : "%d", bd[i]);
    CHECK_STR_HAS(c, want);
    free(s);
    CHECK(es_test_sh(log, "%s inspect $ES_T/as_s.es", es_bin()) == 0);
    s = es_test_slurp(log);
    CHECK_STR_HAS(s, "blockdim");
    CHECK_STR_HAS(s, "\"name\":\"derive\"");
    CHECK_STR_HAS(s, want + 9); /* the derived dims, in the saved storage options */
    CHECK_STR_HAS(s, "per-(field, block) dimensions (blockdim");
    char line[32];
    snprintf(line, sizeof line, "b3:%d", bd[3]); /* field 0's tail block: always a table (its OOV row) */
    CHECK_STR_HAS(s, line);
    const char *t0 = strstr(s, "per-(field, block) dimensions");
    printf("    inspect: %.300s\n", t0 ? t0 : "");
    free(s);
    CHECK(es_test_sh(log, "%s eval $ES_T/as_s.es %s", es_bin(), CRITEO) == 0); /* a loaded blockdim model serves */
    s = es_test_slurp(log);
    CHECK_STR_HAS(s, "\"auc\"");
    free(s);
    CHECK(es_test_sh(log, "%s train --help", es_bin()) == 0);
    s = es_test_slurp(log);
    CHECK_STR_HAS(s, "autosrh");
    free(s);
    CHECK(es_test_sh(log, "%s train --help-storage --storage autosrh", es_bin()) == 0);
    s = es_test_slurp(log);
    CHECK_STR_HAS(s, "soft selection");
    free(s);
}

/* retrain=fielddim: one dimension per field from its blocks, in the JSON
 * and in `inspect`; the search's sanity on the bundled data (the weak form
 * of test_autodim.c's): no field wider than its rows (distinct + 1, the
 * values of its blocks), so a field with at most as many rows as the
 * largest field's width is no wider than the largest field. */
TEST(autosrh_retrain_fielddim) {
    const char *log = es_test_path("as_fd.log");
    es_test_sh(NULL, "rm -f $ES_T/as_fd.es");
    CHECK(es_test_sh(log, "%s train %s --model dlrm --dim 8 --storage autosrh --storage-opts retrain=fielddim --budget 0.25 --epochs 1 "
                          "--batch 64 --max-rows 2000 --threads 1 --quiet --out $ES_T/as_fd.es",
                     es_bin(), CRITEO) == 0);
    char *s = es_test_slurp(log);
    const char *j = s ? es_test_last_line(s) : "";
    const char *b = strstr(j, "{\"name\":\"derive\""), *c = b ? strstr(b, "{\"name\":\"retrain\"") : NULL;
    CHECK(b && c);
    int d[64], bv[256];
    CHECK_EQ_INT(json_ints(b, "dims", d, 64), 26);
    CHECK_EQ_INT(json_ints(b, "block_values", bv, 256), 26 * 4);
    CHECK_STR_HAS(c, "\"storage\":\"fielddim\"");
    int distinct[26], largest = 0;
    for (int f = 0; f < 26; f++) {
        distinct[f] = bv[4 * f] + bv[4 * f + 1] + bv[4 * f + 2] + bv[4 * f + 3];
        if (distinct[f] > distinct[largest]) largest = f;
    }
    printf("    largest field %d (%d values): dim %d; few-valued fields (values: dim):", largest, distinct[largest], d[largest]);
    for (int f = 0; f < 26; f++) {
        CHECK_MSG(d[f] >= 1 && d[f] <= 8, "field %d: dim %d", f, d[f]);
        CHECK_MSG(d[f] <= distinct[f] + 1, "field %d: dim %d for %d values", f, d[f], distinct[f]);
        if (distinct[f] + 1 <= d[largest]) {
            printf(" f%d (%d: %d)", f, distinct[f], d[f]);
            CHECK_MSG(d[f] <= d[largest], "field %d (%d values) dim %d > the largest field's %d", f, distinct[f], d[f], d[largest]);
        }
    }
    printf("\n");
    free(s);
    CHECK(es_test_sh(log, "%s inspect $ES_T/as_fd.es", es_bin()) == 0);
    s = es_test_slurp(log);
    CHECK_STR_HAS(s, "per-field dimensions (fielddim)");
    free(s);
}

/* ---- resume after SIGKILL ----------------------------------------------------------------- */

#define KILL_ARGS                                                                                                               \
    "--model fm --dim 8 --storage autosrh --storage-opts search_epochs=30,l1=0.01 --budget 0.25 --epochs 3 --early-stop 0 --batch 16 " \
    "--threads 1 --max-rows 4000 --seed 3 --checkpoint-every "

static void kill_in_stage(const char *stage, int batches, int every) {
    es_test_staged_kill("as", CRITEO, KILL_ARGS, stage, batches, every);
}

TEST_SLOW(autosrh_resume_after_kill_in_search) { kill_in_stage("search", 455, 10); }
TEST_SLOW(autosrh_resume_after_kill_in_retrain) { kill_in_stage("retrain", 333, 10); }

/* ---- bad input ---------------------------------------------------------------------------- */

TEST(autosrh_bad_input) {
    static const struct {
        const char *args, *msg;
    } cases[] = {
        {"--budget 2000", "unreachable budget"},                               /* not the weights and one row per field */
        {"--budget 12000 --storage-opts min_rows=1000", "unreachable budget"}, /* the search fits, no derived table can */
        {"--budget 0.25 --storage-opts blocks=17", "blocks"},                  /* more blocks than allowed */
        {"--budget 0.25 --storage-opts blocks=0", "blocks"},
        {"--dim 512 --budget 0.25 --storage-opts blocks=16", "soft selection weights"},
        {"--budget 0.25 --storage-opts l1=-1", "l1"},
        {"--budget 0.25 --storage-opts retrain=full", "retrain"},       /* not a retrain table autosrh derives */
        {"--budget 0.25 --valid-frac 0", "--valid-frac"},
    };
    for (size_t i = 0; i < ES_ARRAY_LEN(cases); i++) es_test_staged_bad("as", "autosrh", CRITEO, cases[i].args, cases[i].msg);
}
