/*
 * test_mpi_multihash.c — the multihash storage trained across processes
 * (docs/scale.md): its pool (rows of dim floats) and importance table
 * (rows of k floats) are one global row space of two tables
 * (es__row_map), each sharded by global row; the distributed step pools a
 * value's k pool rows with its importance weights through multihash's
 * callbacks, and sends each row's gradient to its owner with the weight
 * multihash's own backward adds it with.
 *
 * Quick tier: a multihash shard holds exactly the whole storage's rows
 * that are its rank's, of both tables, with their initial values and
 * optimizer state; the map's callbacks pool and differentiate a batch
 * bit for bit as the method's own lookup and backward; a precision, and a
 * table with fewer rows than processes, are refused.  Slow tier
 * (`--full`; skipped without mpirun or without an MPI build): the 1-, 2-
 * and 4-rank model files are one file; the 1-rank model predicts as the
 * one-process trainer's up to rounding; a killed rank resumes to the
 * uninterrupted model; --rank-memory caps a rank's shard; a precision is
 * refused on every rank.
 */
#include "mpi_test.h"
#include "storage_harness.h"

#include "core/core.h"
#include "core/simd.h"
#include "storage/storage.h"

/* short runs: 2000 rows, 8 global batches of 256 */
#define COMMON "--max-rows 2000 --valid-frac 0 --early-stop 0 --epochs 1 --threads 1 --seed 5 --quiet"

static es_storage_params mh_params(const char *opts, es_optim kind) {
    es_storage_params p = es__storage_params_default();
    p.method = "multihash";
    p.n_fields = 3;
    p.dim = 4;
    p.budget = 3000;
    p.seed = 11;
    p.init_scale = 0.1f;
    p.opts = opts;
    p.opt.kind = kind;
    p.opt.init_acc = 0.25f;
    return p;
}

/* Shard k of N of a multihash storage: table 0 of its row map (the pool)
 * and table 1 (the importance table, weights=1) hold the rank's global
 * rows of the whole storage's tables (r % N == k, local index r / N
 * through the tables in order), with their initial values (importance
 * weights 1) and optimizer state; the shards hold every row once, and
 * count the whole storage's parameter bytes. */
TEST(mpi_multihash_shards_hold_the_whole_tables_rows) {
    static const struct {
        const char *opts;
        es_optim kind;
    } cfg[] = {
        {"share=0", ES_OPT_ROWWISE_ADAGRAD},
        {"share=1,k=3", ES_OPT_ADAGRAD},
        {"share=1,weights=0", ES_OPT_ROWWISE_ADAGRAD},
        {"share=0,k=1,wfrac=0.5", ES_OPT_SGD},
    };
    for (size_t c = 0; c < ES_ARRAY_LEN(cfg); c++) {
        es_storage_params p = mh_params(cfg[c].opts, cfg[c].kind);
        es_storage *whole, *sh;
        es_err err;
        int wrc = es__storage_create(&whole, &p, NULL, &err);
        CHECK_MSG(wrc == ES_OK, "%s: %s", cfg[c].opts, err.msg);
        if (wrc != ES_OK) continue;
        es__row_map wm, sm;
        CHECK(whole->ops->row_map(whole, &wm) == ES_OK);
        const int weighted = strstr(cfg[c].opts, "weights=0") == NULL, k = es__storage_opt_int(whole, "k");
        CHECK(wm.combine == ES_COMBINE_METHOD && wm.n_t == 1 + weighted && wm.k == k + weighted);
        CHECK(wm.t[0]->dim == p.dim && (!weighted || (wm.t[1]->dim == k && wm.t[1]->w[0] == 1.0f)));
        for (int n = 1; n <= 5; n++) {
            uint64_t held[2] = {0, 0};
            for (int r = 0; r < n; r++) {
                p.shard_rank = r;
                p.shard_n = n;
                int rc = es__storage_create(&sh, &p, NULL, &err);
                CHECK_MSG(rc == ES_OK, "%s, shard %d of %d: %s", cfg[c].opts, r, n, err.msg);
                if (rc != ES_OK) continue;
                CHECK(sh->ops->row_map(sh, &sm) == ES_OK);
                CHECK_EQ_INT(sm.n_t, wm.n_t);
                CHECK_EQ_INT(sm.rows, wm.rows);
                int bad = 0;
                for (int i = 0; i < wm.n_t; i++) {
                    if (sm.base[i + 1] != wm.base[i + 1]) bad++;
                    const es_rows *st = sm.t[i], *wt = wm.t[i];
                    const size_t wd = (size_t)wt->dim, acc_floats = cfg[c].kind == ES_OPT_ADAGRAD ? wd : cfg[c].kind == ES_OPT_SGD ? 0 : 1;
                    const uint64_t lo = (wm.base[i] + (uint64_t)n - 1 - (uint64_t)r) / (uint64_t)n; /* the rank's rows before table i */
                    for (uint64_t lr = 0; lr < st->n_rows; lr++) {
                        const uint64_t g = (lo + lr) * (uint64_t)n + (uint64_t)r, wr = g - wm.base[i];
                        if (g < wm.base[i] || g >= wm.base[i + 1] || memcmp(st->w + lr * wd, wt->w + wr * wd, wd * sizeof(float)) != 0 ||
                            (acc_floats && memcmp(st->acc + lr * acc_floats, wt->acc + wr * acc_floats, acc_floats * sizeof(float)) != 0))
                            bad++;
                    }
                    held[i] += st->n_rows;
                }
                CHECK_MSG(bad == 0, "%s, shard %d of %d: %d rows are not the whole storage's", cfg[c].opts, r, n, bad);
                CHECK_MSG(es__storage_whole_param_bytes(sh) == (double)whole->param_bytes, "%s, shard %d of %d: %.0f whole bytes, not %zu",
                          cfg[c].opts, r, n, es__storage_whole_param_bytes(sh), whole->param_bytes);
                es__storage_free(sh);
            }
            for (int i = 0; i < wm.n_t; i++) CHECK_EQ_INT(held[i], wm.t[i]->n_rows);
        }
        printf("    %s: a pool of %llu rows", cfg[c].opts, (unsigned long long)wm.t[0]->n_rows);
        if (weighted) printf(" and %llu importance rows of %d", (unsigned long long)wm.t[1]->n_rows, k);
        printf("; shards of 1 to 5 ranks hold them\n");
        es__storage_free(whole);
    }
    es_storage_params p = mh_params("share=1,pool=3,imp=50", ES_OPT_ROWWISE_ADAGRAD);
    es_storage *s = NULL;
    es_err err;
    /* a pool of 3 rows over 4 processes: a rank would hold none of it */
    p.shard_rank = 3;
    p.shard_n = 4;
    CHECK(es__storage_create(&s, &p, NULL, &err) == ES_EINVAL);
    CHECK_STR_HAS(err.msg, "multihash: 3 pool rows and 50 importance rows: each table needs a row on each of the 4 processes");
    /* a precision across processes (shard_n 1: one rank) */
    p = mh_params("share=1", ES_OPT_ROWWISE_ADAGRAD);
    p.shard_rank = 0;
    p.shard_n = 1;
    p.precision = ES_PREC_INT8;
    p.qtrain = ES_QTRAIN_QAT;
    CHECK(es__storage_create(&s, &p, NULL, &err) == ES_EINVAL);
    CHECK_STR_HAS(err.msg, "multihash: --precision int8 is not supported across processes yet");
}

/* The callbacks the distributed step calls, on a whole storage (global row
 * = a table's row + its base): pooling a batch's values through the map
 * (resolve, pool) gives multihash's lookup bit for bit, and summing
 * pool_grad_wt's gradients per row with their weights (es__axpy into an
 * es_gradacc, in batch order, as the owners do), then one update per row,
 * leaves the tables multihash's backward leaves, bit for bit.  A batch of
 * weighted, repeated and multi-valued values (es_sh_batch). */
TEST(mpi_multihash_callbacks_are_the_methods_lookup_and_backward) {
    static const char *const cfg[] = {"share=0", "share=1,k=3", "share=1,weights=0", "share=0,k=5,wfrac=0.5"};
    const int F = 3, n = 64, dim = 4;
    for (size_t c = 0; c < ES_ARRAY_LEN(cfg); c++) {
        es_storage_params p = mh_params(cfg[c], ES_OPT_ADAGRAD);
        es_storage *a = NULL, *b = NULL;
        es_err err;
        CHECK(es__storage_create(&a, &p, NULL, &err) == ES_OK && es__storage_create(&b, &p, NULL, &err) == ES_OK);
        es_batch bt;
        CHECK(es_sh_batch(&bt, n, F, 7 + c) == 0);
        es__row_map am, bm;
        CHECK(a->ops->row_map(a, &am) == ES_OK && b->ops->row_map(b, &bm) == ES_OK);
        const int K = bm.k, W = ES_MAX(dim, K);
        float *want = calloc((size_t)n * F * dim, sizeof(float)), *got = calloc((size_t)n * F * dim, sizeof(float));
        float *dout = malloc((size_t)n * F * dim * sizeof(float)), *gbuf = malloc((size_t)K * W * sizeof(float));
        es_gradacc ga[2];
        memset(ga, 0, sizeof ga);
        for (int t = 0; t < bm.n_t; t++) CHECK(es__gradacc_init(&ga[t], 64, bm.t[t]->dim) == ES_OK);
        es_rng rng;
        es__rng_seed(&rng, 3);
        es__rng_fill_uniform(&rng, dout, (size_t)n * F * dim, 1.0f);
        es__storage_lookup(a, &bt, 0, n, want);
        CHECK(es__storage_backward(a, &bt, dout) == ES_OK);
        for (int P = 0; P < n * F; P++)
            for (uint32_t i = bt.off[P]; i < bt.off[P + 1]; i++) {
                uint64_t id[8];
                const float *e[8];
                float *g[8], w[8];
                int tab[8];
                bm.fn(bm.ctx, P % F, bt.val + i, 1, id);
                for (int j = 0; j < K; j++) {
                    tab[j] = id[j] >= bm.base[1];
                    const es_rows *t = bm.t[tab[j]];
                    e[j] = t->w + (id[j] - bm.base[tab[j]]) * (uint64_t)t->dim;
                    g[j] = gbuf + (size_t)j * W;
                }
                bm.pool(bm.self, tab, e, bt.wt[i], got + (size_t)P * dim);
                bm.pool_grad_wt(bm.self, tab, e, bt.wt[i], dout + (size_t)P * dim, g, w);
                for (int j = 0; j < K; j++) {
                    float *gr = es__gradacc_row(&ga[tab[j]], id[j] - bm.base[tab[j]]);
                    CHECK(gr != NULL);
                    if (gr) es__axpy(gr, w[j], g[j], (size_t)bm.t[tab[j]]->dim);
                }
            }
        CHECK_MSG(memcmp(want, got, (size_t)n * F * dim * sizeof(float)) == 0, "%s: the map's pooling differs from the lookup", cfg[c]);
        int bad = 0;
        for (int t = 0; t < bm.n_t; t++) {
            es__gradacc_apply(&ga[t], bm.t[t]);
            const size_t fl = (size_t)am.t[t]->n_rows * (size_t)am.t[t]->dim;
            bad += memcmp(am.t[t]->w, bm.t[t]->w, fl * sizeof(float)) != 0 || memcmp(am.t[t]->acc, bm.t[t]->acc, fl * sizeof(float)) != 0;
            es__gradacc_free(&ga[t]);
        }
        CHECK_MSG(bad == 0, "%s: the owners' updates differ from the backward's in %d tables", cfg[c], bad);
        printf("    %s: %u values, lookup and backward through the map = multihash's, bit for bit\n", cfg[c], bt.off[n * F]);
        free(want);
        free(got);
        free(dout);
        free(gbuf);
        es_batch_free(&bt);
        es__storage_free(a);
        es__storage_free(b);
    }
}

static const char *const mh_cfgs[] = {
    "--model dlrm --storage multihash --budget 100000 --storage-opts share=0",
    "--model fm --storage multihash --budget 100000 --storage-opts share=1",
    "--model lr --storage multihash --budget 50000 --storage-opts share=1,weights=0",
    "--model dlrm --storage multihash --budget 100000 --storage-opts share=0,k=3",
};

/* The 1-, 2- and 4-rank model files are one file (the pool streamed from
 * the shards into "pool", the importance table into "importance"). */
TEST_SLOW(mpi_multihash_1_2_4_ranks_give_the_same_model_file) {
    if (!mpi_ready()) return;
    mpi_check_same_files(COMMON, mh_cfgs, ES_ARRAY_LEN(mh_cfgs), "mpi_mh_same");
}

/* The 1-rank model predicts as the one-process trainer's (no mpirun) up to
 * rounding (its dense gradients are summed over the whole batch at once,
 * not by the 16-block tree: docs/scale.md), with the same tensors; the
 * 4-rank model as the 1-rank one, exactly. */
TEST_SLOW(mpi_multihash_1_rank_model_predicts_as_the_one_process_trainer) {
    if (!mpi_ready()) return;
    CHECK(es_test_sh(NULL, "tail -n 1000 %s > $ES_T/mpi_mh_valid.tsv", CRITEO) == 0);
    static const size_t pick[] = {0, 2}; /* DLRM share=0, LR weights=0 */
    for (size_t i = 0; i < ES_ARRAY_LEN(pick); i++)
        mpi_check_vs_one_process(COMMON, mh_cfgs[pick[i]], "mpi_mh", "mpi_mh_valid.tsv", "storage\\.(pool|importance|resolved)", 1e-4);
}

/* Rank 1 of 2 killed (the trainer's fault point, after its 7th batch) once
 * both ranks hold a checkpoint of their shard: --resume ends with the
 * model of the run that never stopped, early stopping's validation (on
 * the shards) and the best model included. */
TEST_SLOW(mpi_multihash_resume_after_a_killed_rank_gives_the_uninterrupted_model) {
    if (!mpi_ready()) return;
    CHECK(es_test_sh(NULL, "tail -n 1000 %s > $ES_T/mpi_mh_valid.tsv", CRITEO) == 0);
    mpi_check_resume("--model dlrm --storage multihash --budget 100000 --storage-opts share=0 --max-rows 3000 --valid-frac 0.2 "
                     "--early-stop 2 --epochs 2 --eval-every 5 --threads 1 --checkpoint-every 4 --quiet",
                     "mpi_mh", "mpi_mh_valid.tsv");
}

/* --rank-memory: a multihash shard holds its rows of the pool and of the
 * importance table with their optimizer state, about a quarter of the
 * whole on 4 ranks; a cap of that quarter refuses 1 rank and trains on 4,
 * with the test file evaluated on the shards, to the 1-rank model's
 * predictions. */
TEST_SLOW(mpi_multihash_rank_memory_a_quarter_of_the_tables_trains_on_4_ranks) {
    if (!mpi_ready()) return;
    CHECK(es_test_sh(NULL, "tail -n 1000 %s > $ES_T/mpi_mh_valid.tsv", CRITEO) == 0);
    mpi_check_rank_memory(COMMON, "--model dlrm --storage multihash --budget 200000 --storage-opts share=0 --test $ES_T/mpi_mh_valid.tsv",
                          "mpi_mh", "mpi_mh_valid.tsv", 3.9);
}

/* A precision (QAT at int8) is refused on every rank, no model file. */
TEST_SLOW(mpi_multihash_precision_is_refused_on_every_rank) {
    if (!mpi_ready()) return;
    mpi_check_refused(COMMON, "--model dlrm --storage multihash --budget 100000 --precision int8", "mpi_mh_prec",
                      "multihash: --precision int8 is not supported across processes yet");
}
