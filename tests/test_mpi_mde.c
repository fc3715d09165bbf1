/*
 * test_mpi_mde.c — the mde storage trained across processes
 * (docs/scale.md): its tiers (rows of d_t floats) and its hashed rows
 * (dim floats) are one global row space of tables of several widths
 * (es__row_map), each table sharded by global row; the distributed step
 * pools each value through mde's callbacks (a tier's row times the tier's
 * projection), sends each row's gradient P_t g to its owner, and adds the
 * projections' gradient to the dense layers' in the fixed 16-block reduce.
 *
 * Quick tier: an mde shard holds exactly the whole storage's rows that are
 * its rank's, of every tier and of the hashed rows, with their initial
 * values and optimizer state, and the whole key map and projections.
 * Slow tier (`--full`; skipped without mpirun or without an MPI build):
 * the 1-, 2- and 4-rank model files are one file; the 1-rank model
 * predicts as the one-process trainer's up to rounding; a killed rank
 * resumes to the uninterrupted model, with early stopping's evaluations
 * on the shards; --rank-memory caps a rank's shard; a precision is refused
 * on every rank.
 */
#include "mpi_test.h"
#include "storage_harness.h"

#include "core/core.h"
#include "storage/storage.h"

/* short runs: 2000 rows, 8 global batches of 256 */
#define COMMON "--max-rows 2000 --valid-frac 0 --early-stop 0 --epochs 1 --threads 1 --seed 5 --quiet"

/* The storage tensor `name` of s (NULL data when it has none). */
static es_tensor_ref tensor_of(es_storage *s, const char *name) {
    es_tensor_ref refs[32], none;
    memset(&none, 0, sizeof none);
    int n = es__storage_tensors(s, refs, 32);
    for (int i = 0; i < n; i++)
        if (strcmp(refs[i].name, name) == 0) return refs[i];
    return none;
}

/* Shard k of N of an mde storage: table i of its row map (tier i, then the
 * hashed rows as the last) holds the rank's global rows of table i of the
 * whole storage (r % N == k, local index r / N through the tables in
 * order), with their initial values and optimizer state; the shards hold
 * every row once; the key map and the projections are the whole
 * storage's; the whole parameter bytes are the whole storage's. */
TEST(mpi_mde_shards_hold_the_whole_tables_rows) {
    static const struct {
        const char *opts;
        es_optim kind;
        double budget;
    } cfg[] = {
        {"share=0", ES_OPT_ROWWISE_ADAGRAD, 40000},
        {"share=1", ES_OPT_ADAGRAD, 20000}, /* hashed rows: fewer than the ranks, some hold none */
        {"share=0,dense_opt=adam,min_count=2", ES_OPT_ROWWISE_ADAGRAD, 30000},
        {"share=1", ES_OPT_SGD, 0}, /* no budget: every value at dim, one hashed row (ranks > 0 hold none) */
    };
    const int F = 6;
    es_vocab *v = es_sh_vocab(F);
    CHECK(v != NULL);
    if (!v) return;
    for (size_t c = 0; c < ES_ARRAY_LEN(cfg); c++) {
        es_storage_params p = es__storage_params_default();
        p.method = "mde";
        p.n_fields = F;
        p.dim = 8;
        p.budget = cfg[c].budget;
        p.seed = 11;
        p.init_scale = 0.1f;
        p.opts = cfg[c].opts;
        p.opt.kind = cfg[c].kind;
        p.opt.init_acc = 0.25f;
        es_storage *whole, *sh;
        es_err err;
        int wrc = es__storage_create(&whole, &p, v, &err);
        CHECK_MSG(wrc == ES_OK, "%s: %s", cfg[c].opts, err.msg);
        if (wrc != ES_OK) continue;
        es__row_map wm, sm;
        CHECK(whole->ops->row_map(whole, &wm) == ES_OK);
        CHECK(wm.combine == ES_COMBINE_METHOD && wm.k == 1 && wm.n_t >= 2);
        CHECK(es__row_map_table(&wm, wm.n_t - 1)->dim == p.dim); /* the hashed rows, after the tiers */
        const es_tensor_ref wproj = tensor_of(whole, "proj.weight"), wkeys = tensor_of(whole, "map.keys");
        CHECK(wkeys.data && (wproj.data != NULL) == (cfg[c].budget > 0));
        int widths = 0; /* tables narrower than dim: the row space holds several widths */
        for (int i = 0; i < wm.n_t; i++) widths += es__row_map_table(&wm, i)->dim < p.dim;
        CHECK(cfg[c].budget > 0 ? widths > 0 : widths == 0);
        for (int n = 2; n <= 4; n++) {
            uint64_t *held = calloc((size_t)wm.n_t, sizeof *held);
            for (int k = 0; k < n; k++) {
                p.shard_rank = k;
                p.shard_n = n;
                int rc = es__storage_create(&sh, &p, v, &err);
                CHECK_MSG(rc == ES_OK, "%s, shard %d of %d: %s", cfg[c].opts, k, n, err.msg);
                if (rc != ES_OK) continue;
                CHECK(sh->ops->row_map(sh, &sm) == ES_OK);
                CHECK_EQ_INT(sm.n_t, wm.n_t);
                CHECK_EQ_INT(sm.rows, wm.rows);
                int bad = 0;
                for (int i = 0; i < wm.n_t; i++) {
                    const uint64_t b0 = es__row_map_base(&wm, i), b1 = es__row_map_base(&wm, i + 1);
                    if (es__row_map_base(&sm, i) != b0) bad++;
                    const es_rows *st = es__row_map_table(&sm, i), *wt = es__row_map_table(&wm, i);
                    const size_t wd = (size_t)wt->dim, acc_floats = cfg[c].kind == ES_OPT_ADAGRAD ? wd : cfg[c].kind == ES_OPT_SGD ? 0 : 1;
                    if (st->dim != wt->dim) bad++;
                    const uint64_t lo = (b0 + (uint64_t)n - 1 - (uint64_t)k) / (uint64_t)n; /* the rank's rows before table i */
                    for (uint64_t lr = 0; lr < st->n_rows; lr++) {
                        const uint64_t r = (lo + lr) * (uint64_t)n + (uint64_t)k, wr = r - b0;
                        if (r < b0 || r >= b1 || memcmp(st->w + lr * wd, wt->w + wr * wd, wd * sizeof(float)) != 0 ||
                            (acc_floats && memcmp(st->acc + lr * acc_floats, wt->acc + wr * acc_floats, acc_floats * sizeof(float)) != 0))
                            bad++;
                    }
                    held[i] += st->n_rows;
                }
                CHECK_MSG(bad == 0, "%s, shard %d of %d: %d rows are not the whole storage's", cfg[c].opts, k, n, bad);
                const es_tensor_ref sproj = tensor_of(sh, "proj.weight"), skeys = tensor_of(sh, "map.keys");
                CHECK(sproj.nbytes == wproj.nbytes && (!wproj.data || memcmp(sproj.data, wproj.data, wproj.nbytes) == 0));
                CHECK(skeys.nbytes == wkeys.nbytes && memcmp(skeys.data, wkeys.data, wkeys.nbytes) == 0);
                CHECK_MSG(es__storage_whole_param_bytes(sh) == (double)whole->param_bytes, "%s, shard %d of %d: %.0f whole bytes, not %zu",
                          cfg[c].opts, k, n, es__storage_whole_param_bytes(sh), whole->param_bytes);
                CHECK(sh->param_bytes < whole->param_bytes);
                es__storage_free(sh);
            }
            for (int i = 0; i < wm.n_t; i++) CHECK_EQ_INT(held[i], es__row_map_table(&wm, i)->n_rows);
            free(held);
        }
        printf("    %s: %d tables (%d narrower than dim %d), %llu rows (%llu hashed); shards of 2 to 4 ranks hold them\n", cfg[c].opts, wm.n_t,
               widths, p.dim, (unsigned long long)wm.rows, (unsigned long long)(wm.rows - es__row_map_base(&wm, wm.n_t - 1)));
        es__storage_free(whole);
    }
    /* a precision across processes (shard_n 1: one rank) */
    es_storage_params p = es__storage_params_default();
    p.method = "mde";
    p.n_fields = F;
    p.dim = 8;
    es_storage *s = NULL;
    es_err err;
    p.opts = "share=0";
    p.budget = 20000;
    p.shard_rank = 0;
    p.shard_n = 1;
    p.precision = ES_PREC_INT8;
    p.qtrain = ES_QTRAIN_QAT;
    CHECK(es__storage_create(&s, &p, v, &err) == ES_EINVAL);
    CHECK_STR_HAS(err.msg, "mde: --precision int8 is not supported across processes yet");
    es_vocab_free(v);
}

/* Train on np ranks (np 0: without mpirun) into $ES_T/<out>, the output
 * in $ES_T/<out>.log; the same --out path for every run (moved after), so
 * the recorded command lines are the same.  The exit status. */
static int mde_train(int np, const char *args, const char *out) { return mpi_train(np, COMMON, args, out); }

/* Predictions (9 digits) of $ES_T/<model> on $ES_T/mpi_mde_valid.tsv, malloc'd. */
static char *mde_predict(const char *model) { return mpi_predict(model, "mpi_mde_valid.tsv"); }

static const char *const mde_cfgs[] = {
    "--model dlrm --storage mde --budget 100000",
    "--model fm --storage mde --budget 100000 --storage-opts share=1",
    "--model lr --storage mde --budget 20000",
    "--model dlrm --storage mde --budget 300000 --storage-opts dense_opt=adam,min_count=2 --optim adagrad",
    "--model dlrm --storage mde --storage-opts share=1", /* no budget: one hashed row, on rank 0 only */
};

/* The 1-, 2- and 4-rank model files are one file (the tiers' rows
 * streamed from the shards into "rows.weight", the hashed rows into
 * "tail.weight", rank 0's projections and maps). */
TEST_SLOW(mpi_mde_1_2_4_ranks_give_the_same_model_file) {
    if (!mpi_ready()) return;
    for (size_t c = 0; c < ES_ARRAY_LEN(mde_cfgs); c++) {
        for (int np = 1; np <= 4; np *= 2) {
            char out[64], log[256];
            snprintf(out, sizeof out, "mpi_mde_same_%zu_%d.es", c, np);
            int st = mde_train(np, mde_cfgs[c], out);
            snprintf(log, sizeof log, "%s.log", es_test_path(out));
            char *s = es_test_slurp(log);
            CHECK_MSG(st == 0, "%s on %d ranks: exit %d: %s", mde_cfgs[c], np, st, s ? s : "");
            const char *j = s ? es_test_last_line(s) : NULL;
            double a2a = es_test_json_num(j, "comm_alltoall_bytes_per_step");
            CHECK_MSG(np == 1 ? a2a == 0 : a2a > 0, "%s on %d ranks: %g table bytes per step", mde_cfgs[c], np, a2a);
            free(s);
            if (np > 1) {
                int same = es_test_sh(NULL, "cmp $ES_T/mpi_mde_same_%zu_1.es $ES_T/%s", c, out);
                printf("    %-100s 1 vs %d ranks: %s\n", mde_cfgs[c], np, same == 0 ? "same file" : "DIFFERENT");
                CHECK_MSG(same == 0, "%s: the %d-rank model differs from the 1-rank one", mde_cfgs[c], np);
            }
        }
    }
}

/* The 1-rank model predicts as the one-process trainer's (no mpirun) up to
 * rounding (its dense gradients, the projections' included, are summed by
 * the 16-block tree, and a row's gradient is projected per occurrence, not
 * per value: docs/scale.md), with the same tensors; the 4-rank model as
 * the 1-rank one, exactly. */
TEST_SLOW(mpi_mde_1_rank_model_predicts_as_the_one_process_trainer) {
    if (!mpi_ready()) return;
    CHECK(es_test_sh(NULL, "tail -n 1000 %s > $ES_T/mpi_mde_valid.tsv", CRITEO) == 0);
    for (size_t c = 0; c < ES_ARRAY_LEN(mde_cfgs); c++) {
        CHECK(mde_train(0, mde_cfgs[c], "mpi_mde_p0.es") == 0);
        CHECK(mde_train(1, mde_cfgs[c], "mpi_mde_p1.es") == 0);
        CHECK(mde_train(4, mde_cfgs[c], "mpi_mde_p4.es") == 0);
        CHECK(es_test_sh(NULL,
                         "for m in p0 p1; do %s inspect $ES_T/mpi_mde_$m.es | grep -E 'storage\\.(table|resolved)' > $ES_T/mpi_mde_$m.t; "
                         "done; cmp $ES_T/mpi_mde_p0.t $ES_T/mpi_mde_p1.t",
                         es_bin()) == 0);
        char *p0 = mde_predict("mpi_mde_p0.es"), *p1 = mde_predict("mpi_mde_p1.es"), *p4 = mde_predict("mpi_mde_p4.es");
        CHECK(p0 && p1 && p4);
        if (!p0 || !p1 || !p4) return;
        CHECK_MSG(strcmp(p1, p4) == 0, "%s: the 4-rank model predicts differently from the 1-rank one", mde_cfgs[c]);
        double maxd = 0;
        int rows = 0;
        for (char *a = p0, *b = p1; *a && *b; rows++) {
            char *ea, *eb;
            double x = strtod(a, &ea), y = strtod(b, &eb);
            if (ea == a || eb == b) break;
            if (fabs(x - y) > maxd) maxd = fabs(x - y);
            a = ea;
            b = eb;
        }
        printf("    %s: %d rows, 4 ranks = 1 rank exactly; one-process trainer within %.3g\n", mde_cfgs[c], rows, maxd);
        CHECK_EQ_INT(rows, 1000);
        CHECK_MSG(maxd < 1e-4, "%s: the MPI path and the one-process trainer differ by %g (more than rounding)", mde_cfgs[c], maxd);
        free(p0);
        free(p1);
        free(p4);
    }
}

/* Rank 1 of 2 killed (the trainer's fault point, after its 7th batch) once
 * both ranks hold a checkpoint of their shard: --resume (each shard
 * re-created from its file: the tiers' rows made once map.tiers is read)
 * ends with the model of the run that never stopped, early stopping's
 * validation (on the shards) and the best model included.  Also with
 * share=1 and no budget: one hashed row, which rank 1 does not hold. */
TEST_SLOW(mpi_mde_resume_after_a_killed_rank_gives_the_uninterrupted_model) {
    if (!mpi_ready()) return;
    static const char *const storage[] = {"--storage mde --budget 100000", "--storage mde --storage-opts share=1"};
    const char *log = es_test_path("mpi_mde_resume.log");
    CHECK(es_test_sh(NULL, "tail -n 1000 %s > $ES_T/mpi_mde_valid.tsv", CRITEO) == 0);
    for (size_t c = 0; c < ES_ARRAY_LEN(storage); c++) {
        char args[512];
        snprintf(args, sizeof args,
                 "--model dlrm %s --max-rows 3000 --valid-frac 0.2 --early-stop 2 --epochs 2 --eval-every 5 --threads 1 "
                 "--checkpoint-every 4 --quiet",
                 storage[c]);
        CHECK(es_test_sh(NULL, "rm -f $ES_T/mpi_mde_ra.es* $ES_T/mpi_mde_rb.es*") == 0);
        CHECK(es_test_sh(log, MPIRUN " -np 2 %s train " CRITEO " %s --out $ES_T/mpi_mde_ra.es", es_bin(), args) == 0);
        int st = es_test_sh(log,
                            "timeout 120 " MPIRUN " -np 2 sh -c 'if [ \"$OMPI_COMM_WORLD_RANK\" = 1 ]; then export ES_TEST_KILL_AFTER=train:7; fi; "
                            "exec %s train " CRITEO " %s --out $ES_T/mpi_mde_rb.es'",
                            es_bin(), args);
        CHECK_MSG(st != 0 && st != 124, "%s: the killed run: exit %d (124: it hung)", storage[c], st);
        CHECK(es_test_sh(NULL, "test ! -e $ES_T/mpi_mde_rb.es && test -e $ES_T/mpi_mde_rb.es.ckpt.rank0of2 && test -e "
                               "$ES_T/mpi_mde_rb.es.ckpt.rank1of2") == 0);
        st = es_test_sh(log, MPIRUN " -np 2 %s train " CRITEO " %s --resume --out $ES_T/mpi_mde_rb.es", es_bin(), args);
        char *s = es_test_slurp(log);
        CHECK_MSG(st == 0, "%s: resume: exit %d: %s", storage[c], st, s ? s : "");
        CHECK_STR_HAS(s, "\"resumed\":true");
        free(s);
        char *a = mde_predict("mpi_mde_ra.es"), *b = mde_predict("mpi_mde_rb.es");
        CHECK_MSG(a && b && strcmp(a, b) == 0, "%s: the resumed model predicts differently from the uninterrupted one", storage[c]);
        printf("    %s: killed after a checkpoint, resumed: the same predictions as the run that never stopped\n", storage[c]);
        free(a);
        free(b);
    }
}

/* --rank-memory: an mde shard holds its rows of every tier and of the
 * hashed rows with their optimizer state, and the whole projections (with
 * theirs); with a large budget the hashed rows dominate, so 4 ranks hold
 * about a quarter each.  A cap of the 4-rank shard refuses 1 rank and
 * trains on 4, with the test file evaluated on the shards, to the 1-rank
 * model's predictions. */
TEST_SLOW(mpi_mde_rank_memory_a_quarter_of_the_tables_trains_on_4_ranks) {
    if (!mpi_ready()) return;
    CHECK(es_test_sh(NULL, "tail -n 1000 %s > $ES_T/mpi_mde_valid.tsv", CRITEO) == 0);
    const char *args = "--model dlrm --storage mde --budget 1000000 --test $ES_T/mpi_mde_valid.tsv";
    char log[256], capped[512];
    CHECK(mde_train(1, args, "mpi_mde_rm1.es") == 0);
    snprintf(log, sizeof log, "%s.log", es_test_path("mpi_mde_rm1.es"));
    char *s = es_test_slurp(log);
    const double whole = es_test_json_num(s ? es_test_last_line(s) : NULL, "rank_table_bytes");
    free(s);
    CHECK(mde_train(4, args, "mpi_mde_rm4_free.es") == 0);
    snprintf(log, sizeof log, "%s.log", es_test_path("mpi_mde_rm4_free.es"));
    s = es_test_slurp(log);
    const double quarter = es_test_json_num(s ? es_test_last_line(s) : NULL, "rank_table_bytes_max");
    free(s);
    printf("    the tables: %.0f bytes on 1 rank, at most %.0f on each of 4\n", whole, quarter);
    CHECK_MSG(quarter > 0 && whole >= 3 * quarter && whole <= 4 * quarter, "the whole (%.0f) is not about 4 shards (%.0f)", whole, quarter);
    snprintf(capped, sizeof capped, "%s --rank-memory %.0f", args, quarter);
    CHECK(mde_train(1, capped, "mpi_mde_rm_refused.es") != 0);
    snprintf(log, sizeof log, "%s.log", es_test_path("mpi_mde_rm_refused.es"));
    s = es_test_slurp(log);
    CHECK_STR_HAS(s, "more than --rank-memory");
    free(s);
    CHECK(mde_train(4, capped, "mpi_mde_rm4.es") == 0);
    snprintf(log, sizeof log, "%s.log", es_test_path("mpi_mde_rm4.es"));
    s = es_test_slurp(log);
    CHECK_MSG(s && es_test_json_num(es_test_last_line(s), "test_rows") == 1000, "the test file was not evaluated: %s", s ? s : "");
    free(s);
    char *a = mde_predict("mpi_mde_rm1.es"), *b = mde_predict("mpi_mde_rm4.es");
    CHECK_MSG(a && b && strcmp(a, b) == 0, "the capped 4-rank model predicts differently from the 1-rank one");
    free(a);
    free(b);
}

/* A precision (QAT at int8) is refused on every rank, no model file. */
TEST_SLOW(mpi_mde_precision_is_refused_on_every_rank) {
    if (!mpi_ready()) return;
    const char *log = es_test_path("mpi_mde_prec.log");
    CHECK(es_test_sh(NULL, "rm -f $ES_T/mpi_mde_prec.es*") == 0);
    int st = es_test_sh(log, MPIRUN " -np 2 %s train " CRITEO " " COMMON " --model dlrm --storage mde --budget 100000 --precision int8 "
                                    "--out $ES_T/mpi_mde_prec.es",
                        es_bin());
    char *s = es_test_slurp(log);
    CHECK_MSG(st != 0, "mde at int8 trained: %s", s ? s : "");
    CHECK_STR_HAS(s, "mde: --precision int8 is not supported across processes yet");
    CHECK_STR_HAS(s, "[rank 0 of 2]");
    CHECK_STR_HAS(s, "[rank 1 of 2]");
    free(s);
    CHECK(es_test_sh(NULL, "ls $ES_T/mpi_mde_prec.es* >/dev/null 2>&1") != 0);
}
