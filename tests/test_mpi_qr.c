/*
 * test_mpi_qr.c — the qr storage trained across processes (docs/scale.md):
 * its p partition tables are one global row space (es__row_map), each
 * table sharded by global row, each value's rows multiplied (op=mult),
 * added (op=add) or set side by side (op=cat) by the distributed step as
 * qr's own lookup and backward do.
 *
 * Quick tier: a qr shard holds exactly the whole storage's rows that are
 * its rank's, with their initial values and optimizer state.  Slow tier
 * (`--full`; skipped without mpirun or without an MPI build, as in
 * test_mpi.c): the 1-, 2- and 4-rank model files are one file; the 1-rank
 * model predicts as the one-process trainer's up to rounding; a killed
 * rank resumes to the uninterrupted model, with early stopping's
 * evaluations on the shards; --rank-memory caps a rank's shard; op=cat
 * with partitions of two widths is refused on every rank.
 */
#include "mpi_test.h"

#include "core/core.h"
#include "storage/storage.h"

/* short runs: 2000 rows, 8 global batches of 256 */
#define COMMON "--max-rows 2000 --valid-frac 0 --early-stop 0 --epochs 1 --threads 1 --seed 5 --quiet"

/* Shard k of N of a qr storage: table i of its row map holds the rank's
 * global rows of table i of the whole storage (r % N == k, local index
 * r / N through the tables in order), with their initial values (mult with
 * init_scale 0: zeros, then ones) and optimizer state; the shards hold
 * every row once.  A table with fewer rows than processes is refused. */
TEST(mpi_qr_shards_hold_the_whole_tables_rows) {
    static const struct {
        const char *opts;
        es_optim kind;
        float scale;
    } cfg[] = {
        {"share=1,op=mult", ES_OPT_ROWWISE_ADAGRAD, 0.1f},
        {"share=0,op=add,partitions=3", ES_OPT_ADAGRAD, 0.1f},
        {"share=1,op=mult,partitions=4", ES_OPT_ROWWISE_ADAGRAD, 0.0f},
        {"share=0,op=cat", ES_OPT_ADAGRAD, 0.1f},
    };
    for (size_t c = 0; c < ES_ARRAY_LEN(cfg); c++) {
        es_storage_params p = es__storage_params_default();
        p.method = "qr";
        p.n_fields = 3;
        p.dim = 4;
        p.budget = 3000;
        p.seed = 11;
        p.init_scale = cfg[c].scale;
        p.opts = cfg[c].opts;
        p.opt.kind = cfg[c].kind;
        p.opt.init_acc = 0.25f;
        es_storage *whole, *sh;
        es_err err;
        CHECK_MSG(es__storage_create(&whole, &p, NULL, &err) == ES_OK, "%s: %s", cfg[c].opts, err.msg);
        es__row_map wm, sm;
        CHECK(whole->ops->row_map(whole, &wm) == ES_OK);
        CHECK(wm.n_t >= 2 && wm.k == wm.n_t);
        CHECK(wm.combine == (strstr(cfg[c].opts, "mult") ? ES_COMBINE_PROD : strstr(cfg[c].opts, "add") ? ES_COMBINE_SUM : ES_COMBINE_SLICES));
        const uint64_t wd = (uint64_t)wm.t[0]->dim; /* floats a row: dim, or dim / p for cat */
        const size_t acc_floats = cfg[c].kind == ES_OPT_ADAGRAD ? (size_t)wd : 1;
        for (int n = 1; n <= 5; n++) {
            uint64_t held[ES_ROW_MAP_TABLES] = {0};
            for (int k = 0; k < n; k++) {
                p.shard_rank = k;
                p.shard_n = n;
                CHECK_MSG(es__storage_create(&sh, &p, NULL, &err) == ES_OK, "%s, shard %d of %d: %s", cfg[c].opts, k, n, err.msg);
                CHECK(sh->ops->row_map(sh, &sm) == ES_OK);
                CHECK_EQ_INT(sm.n_t, wm.n_t);
                CHECK_EQ_INT(sm.rows, wm.rows);
                int bad = 0;
                for (int i = 0; i < wm.n_t; i++) {
                    CHECK_EQ_INT(sm.base[i], wm.base[i]);
                    const es_rows *st = sm.t[i], *wt = wm.t[i];
                    const uint64_t lo = (wm.base[i] + (uint64_t)n - 1 - (uint64_t)k) / (uint64_t)n; /* the rank's rows before table i */
                    for (uint64_t lr = 0; lr < st->n_rows; lr++) {
                        const uint64_t r = (lo + lr) * (uint64_t)n + (uint64_t)k, wr = r - wm.base[i];
                        if (r < wm.base[i] || r >= wm.base[i + 1] ||
                            memcmp(st->w + lr * wd, wt->w + wr * wd, (size_t)wd * sizeof(float)) != 0 ||
                            memcmp(st->acc + lr * acc_floats, wt->acc + wr * acc_floats, acc_floats * sizeof(float)) != 0)
                            bad++;
                    }
                    held[i] += st->n_rows;
                }
                CHECK_MSG(bad == 0, "%s, shard %d of %d: %d rows are not the whole storage's", cfg[c].opts, k, n, bad);
                es__storage_free(sh);
            }
            for (int i = 0; i < wm.n_t; i++) CHECK_EQ_INT(held[i], wm.t[i]->n_rows);
        }
        if (cfg[c].scale == 0.0f) CHECK(wm.t[0]->w[0] == 0.0f && wm.t[1]->w[0] == 1.0f);
        printf("    %s: tables of %llu", cfg[c].opts, (unsigned long long)wm.t[0]->n_rows);
        for (int i = 1; i < wm.n_t; i++) printf("/%llu", (unsigned long long)wm.t[i]->n_rows);
        printf(" rows, shards of 1 to 5 ranks hold them\n");
        es__storage_free(whole);
        p.shard_rank = p.shard_n = 0;
    }
    /* a table of 3 rows over 4 processes: a rank would hold none of it */
    es_storage_params p = es__storage_params_default();
    p.method = "qr";
    p.n_fields = 3;
    p.dim = 4;
    p.opts = "share=1,m=3/50";
    p.shard_rank = 3;
    p.shard_n = 4;
    es_storage *s = NULL;
    es_err err;
    CHECK(es__storage_create(&s, &p, NULL, &err) == ES_EINVAL);
    CHECK_STR_HAS(err.msg, "table 0 has 3 rows, fewer than the 4 processes");
    /* op=cat over partitions of two widths (4 floats over 3): refused when sharded */
    p.opts = "share=1,op=cat,partitions=3";
    p.budget = 3000;
    CHECK(es__storage_create(&s, &p, NULL, &err) == ES_EINVAL);
    CHECK_STR_HAS(err.msg, "op=cat with dim 4 over 3 partitions cannot be trained across processes");
}

static const char *const qr_cfgs[] = {
    "--model dlrm --storage qr --budget 100000 --storage-opts share=1,op=mult",
    "--model lr --storage qr --budget 100000 --storage-opts share=0,op=add",
    "--model dlrm --storage qr --budget 150000 --storage-opts share=0,op=mult,partitions=3",
    "--model dlrm --storage qr --budget 100000 --storage-opts share=1,op=mult --precision int8", /* QAT: codes travel */
    "--model dlrm --storage qr --budget 100000 --storage-opts share=1,op=cat",
};

/* The 1-, 2- and 4-rank model files are one file (each table of the
 * whole storage streamed as its own tensor from the shards). */
TEST_SLOW(mpi_qr_1_2_4_ranks_give_the_same_model_file) {
    if (!mpi_ready()) return;
    mpi_check_same_files(COMMON, qr_cfgs, ES_ARRAY_LEN(qr_cfgs), "mpi_qr_same");
}

/* The 1-rank model predicts as the one-process trainer's (no mpirun) up to
 * rounding (its dense gradients are summed over the whole batch at once,
 * not by the 16-block tree: docs/scale.md), with the same tables (tensor
 * names and shapes); the 4-rank model as the 1-rank one, exactly. */
TEST_SLOW(mpi_qr_1_rank_model_predicts_as_the_one_process_trainer) {
    if (!mpi_ready()) return;
    CHECK(es_test_sh(NULL, "tail -n 1000 %s > $ES_T/mpi_qr_valid.tsv", CRITEO) == 0);
    static const size_t pick[] = {0, 1, 4}; /* mult, add, cat */
    for (size_t i = 0; i < ES_ARRAY_LEN(pick); i++)
        mpi_check_vs_one_process(COMMON, qr_cfgs[pick[i]], "mpi_qr", "mpi_qr_valid.tsv", "storage\\.(table|resolved)", 1e-4);
}

/* Rank 1 of 2 killed (the trainer's fault point, after its 7th batch) once
 * both ranks hold a checkpoint of their shard: --resume ends with the
 * model of the run that never stopped, early stopping's validation (on
 * the shards) and the best model included. */
TEST_SLOW(mpi_qr_resume_after_a_killed_rank_gives_the_uninterrupted_model) {
    if (!mpi_ready()) return;
    CHECK(es_test_sh(NULL, "tail -n 1000 %s > $ES_T/mpi_qr_valid.tsv", CRITEO) == 0);
    mpi_check_resume("--model dlrm --storage qr --budget 100000 --storage-opts share=1 --max-rows 3000 --valid-frac 0.2 --early-stop 2 "
                     "--epochs 2 --eval-every 5 --threads 1 --checkpoint-every 4 --quiet",
                     "mpi_qr", "mpi_qr_valid.tsv");
}

/* --rank-memory: the bytes of a qr shard (its rows of every table and their
 * optimizer state) are a quarter of the whole on 4 ranks; a cap of that
 * quarter refuses 1 rank (about 4 processes needed) and trains on 4, with
 * the test file evaluated on the shards, to the 1-rank model's predictions. */
TEST_SLOW(mpi_qr_rank_memory_a_quarter_of_the_tables_trains_on_4_ranks) {
    if (!mpi_ready()) return;
    CHECK(es_test_sh(NULL, "tail -n 1000 %s > $ES_T/mpi_qr_valid.tsv", CRITEO) == 0);
    mpi_check_rank_memory(COMMON, "--model dlrm --storage qr --budget 200000 --storage-opts share=0 --test $ES_T/mpi_qr_valid.tsv", "mpi_qr",
                          "mpi_qr_valid.tsv", 3.9);
}

/* op=cat over partitions of two widths (dim 16 over 3): every rank says
 * why, no model file. */
TEST_SLOW(mpi_qr_cat_of_two_widths_is_refused_on_every_rank) {
    if (!mpi_ready()) return;
    mpi_check_refused(COMMON, "--model dlrm --storage qr --budget 100000 --storage-opts op=cat,partitions=3", "mpi_qr_cat",
                      "qr: op=cat with dim 16 over 3 partitions cannot be trained across processes");
}
