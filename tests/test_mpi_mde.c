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
 * values and optimizer state, and the whole key map and projections; at a
 * precision (QAT, ALPT) their codes.  Slow tier (`--full`; skipped without
 * mpirun or without an MPI build): the 1-, 2- and 4-rank model files are
 * one file, at fp32 and at precisions from int16 to int2; the 1-rank
 * model predicts as the one-process trainer's up to rounding; a killed
 * rank resumes to the uninterrupted model, with early stopping's
 * evaluations on the shards; --rank-memory caps a rank's shard.
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
    es_vocab_free(v);
}

/* At a precision (QAT int8, ALPT int4), shard k of N of an mde storage is
 * converted as the whole storage is: table i of its row map holds the
 * whole table i's codes of the rank's rows (ALPT: and their steps, the
 * rounding keyed by the row's index in the whole tier), the row map
 * exposes the codes, and the whole parameter bytes are the whole
 * storage's (so every rank count solves the same shapes). */
TEST(mpi_mde_shards_at_a_precision_hold_the_whole_tables_codes) {
    static const struct {
        es_precision prec;
        int qtrain;
        const char *opts;
    } cfg[] = {
        {ES_PREC_INT8, ES_QTRAIN_QAT, "share=0"},
        {ES_PREC_INT4, ES_QTRAIN_ALPT, "share=1"},
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
        p.budget = 20000;
        p.seed = 11;
        p.init_scale = 0.1f;
        p.opts = cfg[c].opts;
        p.precision = cfg[c].prec;
        p.qtrain = cfg[c].qtrain;
        es_storage *whole, *sh;
        es_err err;
        int wrc = es__storage_create(&whole, &p, v, &err);
        CHECK_MSG(wrc == ES_OK, "%s: %s", cfg[c].opts, err.msg);
        if (wrc != ES_OK) continue;
        es__row_map wm, sm;
        CHECK(whole->ops->row_map(whole, &wm) == ES_OK);
        for (int n = 2; n <= 4; n *= 2)
            for (int k = 0; k < n; k++) {
                p.shard_rank = k;
                p.shard_n = n;
                int rc = es__storage_create(&sh, &p, v, &err);
                CHECK_MSG(rc == ES_OK, "%s, shard %d of %d: %s", cfg[c].opts, k, n, err.msg);
                if (rc != ES_OK) continue;
                CHECK(sh->ops->row_map(sh, &sm) == ES_OK);
                CHECK_EQ_INT(sm.n_t, wm.n_t);
                int bad = 0;
                for (int i = 0; i < wm.n_t && sm.n_t == wm.n_t; i++) {
                    const es_rows *st = es__row_map_table(&sm, i), *wt = es__row_map_table(&wm, i);
                    const uint64_t b0 = es__row_map_base(&wm, i), lo = (b0 + (uint64_t)n - 1 - (uint64_t)k) / (uint64_t)n;
                    const size_t rb = es__prec_row_bytes(wt->prec, wt->dim);
                    if (st->prec != cfg[c].prec || st->qtrain != cfg[c].qtrain || st->dim != wt->dim) bad++;
                    for (uint64_t lr = 0; lr < st->n_rows; lr++) {
                        const uint64_t wr = (lo + lr) * (uint64_t)n + (uint64_t)k - b0;
                        if (memcmp(st->q + lr * rb, wt->q + wr * rb, rb) != 0 ||
                            (cfg[c].qtrain == ES_QTRAIN_ALPT && st->qstep[lr] != wt->qstep[wr]) ||
                            (cfg[c].qtrain == ES_QTRAIN_QAT && memcmp(st->w + lr * (size_t)st->dim, wt->w + wr * (size_t)wt->dim,
                                                                      (size_t)st->dim * sizeof(float)) != 0))
                            bad++;
                    }
                }
                CHECK_MSG(bad == 0, "%s at %s, shard %d of %d: %d rows are not the whole storage's", cfg[c].opts,
                          es__prec_name(cfg[c].prec), k, n, bad);
                CHECK_MSG(es__storage_whole_param_bytes(sh) == (double)whole->param_bytes, "%s, shard %d of %d: %.0f whole bytes, not %zu",
                          cfg[c].opts, k, n, es__storage_whole_param_bytes(sh), whole->param_bytes);
                es__storage_free(sh);
            }
        printf("    %s at %s (%s): %d tables; shards of 2 and 4 ranks hold the whole tables' codes\n", cfg[c].opts,
               es__prec_name(cfg[c].prec), es__qtrain_name(cfg[c].qtrain), wm.n_t);
        es__storage_free(whole);
    }
    es_vocab_free(v);
}

static const char *const mde_cfgs[] = {
    "--model dlrm --storage mde --budget 100000",
    "--model fm --storage mde --budget 100000 --storage-opts share=1",
    "--model lr --storage mde --budget 20000",
    "--model dlrm --storage mde --budget 300000 --storage-opts dense_opt=adam,min_count=2 --optim adagrad",
    "--model dlrm --storage mde --storage-opts share=1", /* no budget: one hashed row, on rank 0 only */
};

/* At a precision: QAT (fp32 master on the owners, codes fetched) and ALPT
 * (codes and steps on the owners, rounding keyed by the row's index in its
 * tier), from int16 to int2. */
static const char *const mde_prec_cfgs[] = {
    "--model dlrm --storage mde --budget 100000 --precision int8 --qtrain qat",
    "--model dlrm --storage mde --budget 100000 --precision int4 --qtrain alpt",
    "--model fm --storage mde --budget 100000 --storage-opts share=1 --precision fp16 --qtrain qat",
    "--model lr --storage mde --budget 20000 --precision int2 --qtrain alpt",
    "--model dlrm --storage mde --budget 300000 --storage-opts dense_opt=adam,min_count=2 --optim adagrad --precision int16 --qtrain alpt",
};

/* The 1-, 2- and 4-rank model files are one file (the tiers' rows
 * streamed from the shards into "rows.weight", the hashed rows into
 * "tail.weight", rank 0's projections and maps; at a precision each
 * tier's codes into "tier<t>.q", the hashed rows' into "tail.q"). */
TEST_SLOW(mpi_mde_1_2_4_ranks_give_the_same_model_file) {
    if (!mpi_ready()) return;
    mpi_check_same_files(COMMON, mde_cfgs, ES_ARRAY_LEN(mde_cfgs), "mpi_mde_same");
    mpi_check_same_files(COMMON, mde_prec_cfgs, ES_ARRAY_LEN(mde_prec_cfgs), "mpi_mde_same_q");
}

/* The 1-rank model predicts as the one-process trainer's (no mpirun) up to
 * rounding (its dense gradients, the projections' included, are summed by
 * the 16-block tree, and a row's gradient is projected per occurrence, not
 * per value: docs/scale.md), with the same tensors; the 4-rank model as
 * the 1-rank one, exactly. */
TEST_SLOW(mpi_mde_1_rank_model_predicts_as_the_one_process_trainer) {
    if (!mpi_ready()) return;
    CHECK(es_test_sh(NULL, "tail -n 1000 %s > $ES_T/mpi_mde_valid.tsv", CRITEO) == 0);
    for (size_t c = 0; c < ES_ARRAY_LEN(mde_cfgs); c++)
        mpi_check_vs_one_process(COMMON, mde_cfgs[c], "mpi_mde", "mpi_mde_valid.tsv", "storage\\.(table|resolved)", 1e-4);
}

/* The same at a precision, the tensors (every tier's codes, their shapes
 * and the parameter bytes) as the one-process file's.  The bound is
 * test_mpi_alpt.c's 2e-3: a code is the rounding of its row, so the
 * dense-sum rounding that moves an fp32 row by 1e-7 can move a code by a
 * whole step (QAT: a master value near a rounding boundary; ALPT: the
 * step's LSQ update and the range guard, then stochastic rounding), and
 * the forward reads the codes.  Measured: 2e-6 (int8 QAT), 6e-8 (int4
 * ALPT), 7e-5 (fp16 QAT, fm), 1e-7 (int2 ALPT, lr), 7e-4 (int16 ALPT with
 * Adam on the projections). */
TEST_SLOW(mpi_mde_at_a_precision_1_rank_model_predicts_as_the_one_process_trainer) {
    if (!mpi_ready()) return;
    CHECK(es_test_sh(NULL, "tail -n 1000 %s > $ES_T/mpi_mde_valid.tsv", CRITEO) == 0);
    for (size_t c = 0; c < ES_ARRAY_LEN(mde_prec_cfgs); c++)
        mpi_check_vs_one_process(COMMON, mde_prec_cfgs[c], "mpi_mde_q", "mpi_mde_valid.tsv",
                                 "storage\\.(tier|tail|proj|map|resolved|param_bytes|precision|qtrain)", 2e-3);
}

/* Rank 1 of 2 killed (the trainer's fault point, after its 7th batch) once
 * both ranks hold a checkpoint of their shard: --resume (each shard
 * re-created from its file: the tiers' rows made once map.tiers is read)
 * ends with the model of the run that never stopped, early stopping's
 * validation (on the shards) and the best model included.  Also with
 * share=1 and no budget: one hashed row, which rank 1 does not hold; and
 * at a precision (QAT: codes and master; ALPT: codes, steps and counts,
 * the tiers' state made and read in the load's second stage). */
TEST_SLOW(mpi_mde_resume_after_a_killed_rank_gives_the_uninterrupted_model) {
    if (!mpi_ready()) return;
    static const char *const storage[] = {"--storage mde --budget 100000", "--storage mde --storage-opts share=1",
                                          "--storage mde --budget 100000 --precision int8 --qtrain qat",
                                          "--storage mde --budget 100000 --precision int4 --qtrain alpt"};
    CHECK(es_test_sh(NULL, "tail -n 1000 %s > $ES_T/mpi_mde_valid.tsv", CRITEO) == 0);
    for (size_t c = 0; c < ES_ARRAY_LEN(storage); c++) {
        char args[512];
        snprintf(args, sizeof args,
                 "--model dlrm %s --max-rows 3000 --valid-frac 0.2 --early-stop 2 --epochs 2 --eval-every 5 --threads 1 "
                 "--checkpoint-every 4 --quiet",
                 storage[c]);
        mpi_check_resume(args, "mpi_mde", "mpi_mde_valid.tsv");
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
    mpi_check_rank_memory(COMMON, "--model dlrm --storage mde --budget 1000000 --test $ES_T/mpi_mde_valid.tsv", "mpi_mde", "mpi_mde_valid.tsv",
                          3);
}
