/*
 * test_mpi.c — training across processes under mpirun (docs/scale.md,
 * issue 15): the CLI's MPI build run with 1, 2 and 4 ranks on the bundled
 * Criteo sample.
 *
 * Slow tier (`--full`, once per `make check` in the normal build): each
 * test launches mpirun several times (about 0.5 s a launch on 2 cores).
 * Every test skips when mpirun is absent or $ES_BIN was built without MPI
 * (`make MPI=0`, or no mpicc): the plain build must keep passing on a
 * machine without MPI.
 *
 * What is guaranteed and tested: with --threads 1, the model file of a run
 * on 1, 2 and 4 ranks is the same file, byte for byte (the model, and the
 * metadata, which records the command line, not the rank count).
 *
 * The first tests (quick tier, no mpirun) check the two pieces below the
 * distributed step that every build has: a table's shards and the reader's
 * unparsed skip.
 */
#include "mpi_test.h"

#include "core/core.h"
#include "data/reader_impl.h"
#include "storage/storage.h"

/* short runs: 2000 rows, 8 global batches of 256 */
#define COMMON "--max-rows 2000 --valid-frac 0 --early-stop 0 --epochs 1 --threads 1 --seed 5 --quiet"

/* Shard k of N holds exactly the rows r % N == k of the whole table, at
 * r / N, with the whole table's initial values and optimizer state. */
TEST(mpi_rows_shards_hold_the_whole_tables_rows) {
    es_optim_params opt = es__storage_params_default().opt; /* row-wise Adagrad */
    opt.init_acc = 0.25f;
    const uint64_t rows = 37;
    const int dim = 5;
    es_rows whole;
    es_rng rng;
    es__rng_seed(&rng, 9);
    CHECK(es__rows_init(&whole, rows, dim, &opt, &rng, 0.1f) == ES_OK);
    for (int n = 1; n <= 5; n++) {
        uint64_t total = 0;
        for (int k = 0; k < n; k++) {
            es_rows sh;
            es__rng_seed(&rng, 9);
            CHECK(es__rows_init_shard(&sh, rows, dim, &opt, &rng, 0.1f, k, n) == ES_OK);
            total += sh.n_rows;
            for (uint64_t li = 0; li < sh.n_rows; li++) {
                uint64_t r = li * (uint64_t)n + (uint64_t)k;
                CHECK_MSG(r < rows, "shard %d of %d has a row past the table", k, n);
                CHECK_MSG(memcmp(sh.w + li * dim, whole.w + r * dim, dim * sizeof(float)) == 0, "shard %d of %d, row %llu differs", k, n,
                          (unsigned long long)r);
                CHECK(sh.acc[li] == 0.25f);
            }
            es__rows_free(&sh);
        }
        CHECK_EQ_INT(total, rows);
    }
    es_rows empty;
    CHECK(es__rows_init_shard(&empty, 3, dim, &opt, &rng, 0.1f, 3, 4) == ES_EINVAL); /* an empty shard */
    es__rows_free(&whole);
}

/* es__reader_skip passes rows unparsed: reading with skips in between gives
 * exactly the rows a full read gives at those positions; --skip-bad is
 * refused. */
TEST(mpi_reader_skip_matches_reading_every_row) {
    es_reader_params rp = es_reader_params_default();
    es_err err = {0};
    es_reader *all = NULL, *sk = NULL;
    CHECK(es_reader_open(&all, CRITEO, &rp, &err) == 0);
    CHECK(es_reader_open(&sk, CRITEO, &rp, &err) == 0);
    const int F = es_reader_n_fields(all), D = es_reader_n_dense(all), cap = 300;
    es_batch a, b;
    CHECK(es_batch_alloc(&a, cap, D, F, (size_t)cap * (F + 1)) == 0);
    CHECK(es_batch_alloc(&b, cap, D, F, (size_t)cap * (F + 1)) == 0);
    int pos = 0, checked = 0;
    for (int step = 0; pos < 3000; step++) {
        int skip = (step * 37) % 50, take = 1 + (step * 13) % 29;
        /* the full reader: read the skipped rows too, keep the next `take` */
        a.cap = skip;
        if (skip) CHECK(es_reader_next(all, &a) == skip);
        a.cap = take;
        CHECK(es_reader_next(all, &a) == take);
        uint64_t got = 0;
        CHECK(es__reader_skip(sk, (uint64_t)skip, &got) == ES_OK);
        CHECK_EQ_INT(got, skip);
        b.cap = take;
        CHECK(es_reader_next(sk, &b) == take);
        CHECK(memcmp(a.label, b.label, (size_t)take * sizeof(float)) == 0);
        CHECK(memcmp(a.dense, b.dense, (size_t)take * D * sizeof(float)) == 0);
        CHECK(memcmp(a.off, b.off, ((size_t)take * F + 1) * sizeof *a.off) == 0);
        CHECK(memcmp(a.val, b.val, a.off[(size_t)take * F] * sizeof *a.val) == 0);
        pos += skip + take;
        checked += take;
    }
    /* past the end: fewer rows than asked, no error */
    uint64_t got = 0;
    CHECK(es__reader_skip(sk, UINT64_MAX, &got) == ES_OK);
    printf("    %d rows compared after skips; %llu rows left skipped to the end\n", checked, (unsigned long long)got);
    CHECK_EQ_INT((uint64_t)pos + got, 10000);
    es_reader_free(all);
    es_reader_free(sk);
    rp.skip_bad = 1;
    CHECK(es_reader_open(&sk, CRITEO, &rp, &err) == 0);
    CHECK(es__reader_skip(sk, 5, &got) == ES_EINVAL);
    CHECK_STR_HAS(es_reader_errmsg(sk), "--skip-bad");
    es_reader_free(sk);
    a.cap = b.cap = cap;
    es_batch_free(&a);
    es_batch_free(&b);
}

/* Train on np ranks (np 0: without mpirun) into $ES_T/<out>; the exit
 * status, the output in $ES_T/<out>.log.  The same --out path for every
 * run (moved afterwards), so the recorded command lines are the same. */
static int train_np(int np, const char *args, const char *out) { return mpi_train(np, COMMON, args, out); }

static char *slurp_log(const char *out) {
    char log[256];
    snprintf(log, sizeof log, "%s.log", es_test_path(out));
    return es_test_slurp(log);
}

/* The 1-, 2- and 4-rank model files of each method and model are one file. */
TEST_SLOW(mpi_1_2_4_ranks_give_the_same_model_file) {
    if (!mpi_ready()) return;
    static const char *cfgs[] = {
        "--model lr --storage full",
        "--model lr --storage hash --budget 100000",
        "--model lr --storage unified --budget 100000",
        "--model dlrm --storage full",
        "--model dlrm --storage hash --budget 200000",
        "--model dlrm --storage unified --budget 200000 --storage-opts chunks=4",
        "--model dlrm --storage adapt --budget 200000",
        "--model dlrm --storage hash --budget 100000 --precision int8", /* QAT: the codes travel, the fp32 master stays with the owner */
        /* replicated: every rank holds the method whole, its gradient joins the dense reduce */
        "--model lr --storage dhe --budget 100000",
        "--model dlrm --storage tt --budget 100000",
    };
    for (size_t c = 0; c < sizeof cfgs / sizeof cfgs[0]; c++) {
        for (int np = 1; np <= 4; np *= 2) {
            char out[64];
            snprintf(out, sizeof out, "mpi_same_%zu_%d.es", c, np);
            int st = train_np(np, cfgs[c], out);
            char *s = slurp_log(out);
            CHECK_MSG(st == 0, "%s on %d ranks: exit %d: %s", cfgs[c], np, st, s ? s : "");
            const char *j = es_test_last_line(s);
            double ranks = es_test_json_num(j, "ranks"), a2a = es_test_json_num(j, "comm_alltoall_bytes_per_step"),
                   ag = es_test_json_num(j, "comm_allreduce_bytes_per_step");
            /* communication: none to others on one rank, both kinds on more
             * (a replicated method sends no table traffic) */
            const int rep = strstr(cfgs[c], "dhe") || strstr(cfgs[c], "storage tt");
            CHECK_EQ_INT((int)ranks, np);
            CHECK_MSG(np == 1 ? a2a == 0 && ag == 0 : (rep ? a2a == 0 : a2a > 0) && ag > 0, "%s on %d ranks: bytes per step %g, %g", cfgs[c],
                      np, a2a, ag);
            free(s);
            if (np > 1) {
                int same = es_test_sh(NULL, "cmp $ES_T/mpi_same_%zu_1.es $ES_T/%s", c, out);
                printf("    %-62s 1 vs %d ranks: %s (alltoall %.0f, allreduce %.0f bytes/step)\n", cfgs[c], np,
                       same == 0 ? "same file" : "DIFFERENT", a2a, ag);
                CHECK_MSG(same == 0, "%s: the %d-rank model differs from the 1-rank one", cfgs[c], np);
            }
        }
    }
}

/* Validation on rank 0 (the gathered model), early stopping with
 * evaluations inside epochs, and the refit on all rows: the decisions are
 * shared, so the run is still the same on any number of ranks. */
TEST_SLOW(mpi_early_stopping_and_refit_are_the_same_on_1_2_4_ranks) {
    if (!mpi_ready()) return;
    /* COMMON's --valid-frac 0 --early-stop 0 are overridden (the last one counts) */
    const char *args = "--model dlrm --storage unified --budget 100000 --max-rows 3000 --valid-frac 0.2 --early-stop 2 --eval-every 4 "
                       "--epochs 4 --refit";
    char *first = NULL;
    for (int np = 1; np <= 4; np *= 2) {
        char out[64];
        snprintf(out, sizeof out, "mpi_es_%d.es", np);
        int st = train_np(np, args, out);
        char *s = slurp_log(out);
        CHECK_MSG(st == 0, "%d ranks: exit %d: %s", np, st, s ? s : "");
        const char *j = es_test_last_line(s);
        CHECK_STR_HAS(j, "\"refit\":true");
        CHECK_STR_HAS(j, "\"stopped_early\":true");
        /* the result line, less what differs by design (bytes of this rank's shard, memory, speed) */
        char *cut = strstr(j, "\"emb_bytes\"");
        char key[512];
        snprintf(key, sizeof key, "%.*s", cut ? (int)(cut - j) : 200, j);
        printf("    %d ranks: %s\n", np, key);
        if (!first) first = strdup(key);
        else CHECK_MSG(strcmp(first, key) == 0, "%d ranks report other metrics: %s vs %s", np, key, first);
        free(s);
        if (np > 1) CHECK_MSG(es_test_sh(NULL, "cmp $ES_T/mpi_es_1.es $ES_T/%s", out) == 0, "the %d-rank model differs from the 1-rank one", np);
    }
    free(first);
}

/* The 4-rank model is an ordinary model file: predict reads it, and its
 * predictions are the 1-rank model's; and the one-process trainer (no
 * mpirun) differs only by rounding (its dense gradients are summed over
 * the whole batch at once, not by the 16-block tree: docs/scale.md). */
TEST_SLOW(mpi_4_rank_model_predicts_as_1_rank_and_plain) {
    if (!mpi_ready()) return;
    /* unified, and full with min_count=2, whose keys come from the
     * vocabulary the ranks count apart and add up */
    static const char *cfgs[] = {"--model dlrm --storage unified --budget 200000",
                                 "--model dlrm --storage full --storage-opts min_count=2"};
    CHECK(es_test_sh(NULL, "tail -n 1000 %s > $ES_T/mpi_valid.tsv", CRITEO) == 0);
    for (size_t c = 0; c < sizeof cfgs / sizeof cfgs[0]; c++) {
        CHECK(train_np(1, cfgs[c], "mpi_p1.es") == 0);
        CHECK(train_np(4, cfgs[c], "mpi_p4.es") == 0);
        CHECK(train_np(0, cfgs[c], "mpi_p0.es") == 0);
        const char *name[3] = {"mpi_p1.es", "mpi_p4.es", "mpi_p0.es"};
        char *pred[3];
        for (int i = 0; i < 3; i++) {
            CHECK(es_test_sh(NULL, "%s predict $ES_T/%s $ES_T/mpi_valid.tsv --digits 9 --out $ES_T/%s.txt", es_bin(), name[i], name[i]) == 0);
            char p[256];
            snprintf(p, sizeof p, "%s.txt", es_test_path(name[i]));
            pred[i] = es_test_slurp(p);
            CHECK(pred[i] != NULL);
        }
        /* the one-process trainer's table has the same keys (resolved options) */
        CHECK(es_test_sh(NULL, "%s inspect $ES_T/mpi_p4.es | grep storage.resolved > $ES_T/mpi_r4.txt && "
                               "%s inspect $ES_T/mpi_p0.es | grep storage.resolved > $ES_T/mpi_r0.txt && "
                               "cmp $ES_T/mpi_r4.txt $ES_T/mpi_r0.txt",
                         es_bin(), es_bin()) == 0);
        CHECK_MSG(strcmp(pred[0], pred[1]) == 0, "%s: the 4-rank model predicts differently from the 1-rank one", cfgs[c]);
        double maxd = 0;
        int rows = 0;
        for (char *a = pred[0], *b = pred[2]; *a && *b; rows++) {
            char *ea, *eb;
            double x = strtod(a, &ea), y = strtod(b, &eb);
            if (ea == a || eb == b) break;
            if (fabs(x - y) > maxd) maxd = fabs(x - y);
            a = ea;
            b = eb;
        }
        printf("    %s: %d rows, 4 ranks = 1 rank exactly; one-process trainer within %.3g\n", cfgs[c], rows, maxd);
        CHECK_EQ_INT(rows, 1000);
        CHECK_MSG(maxd < 1e-4, "%s: the MPI path and the one-process trainer differ by %g (more than rounding)", cfgs[c], maxd);
        for (int i = 0; i < 3; i++) free(pred[i]);
    }
}

/* Bad input: every rank says why, the exit status is not 0, and no model
 * file (nor a temporary) is left. */
TEST_SLOW(mpi_bad_input_fails_on_every_rank_without_a_file) {
    if (!mpi_ready()) return;
    const char *log = es_test_path("mpi_bad.log");
    struct {
        const char *what, *cmd, *msg;
    } cases[] = {
        {"a missing training file", MPIRUN " -np 2 %s train $ES_T/no-such-file.tsv " COMMON " --model lr --storage hash --budget 100000 --out $ES_T/mpi_bad.es",
         "cannot open"},
        /* rank 1 asks for another learning rate: the run descriptions differ */
        {"ranks that disagree on flags",
         MPIRUN " -np 2 sh -c 'if [ \"$OMPI_COMM_WORLD_RANK\" = 1 ]; then X=\"--lr 0.5\"; fi; exec %s train " CRITEO " " COMMON
                " --model lr --storage hash --budget 100000 $X --out $ES_T/mpi_bad.es'",
         "ranks disagree on the run's description"},
        {"a rank count that is not a power of two", MPIRUN " -np 3 %s train " CRITEO " " COMMON " --model lr --storage hash --budget 100000 --out $ES_T/mpi_bad.es",
         "power of two"},
        {"a method without rows to shard", MPIRUN " -np 2 %s train " CRITEO " " COMMON " --model lr --storage robe --budget 100000 --out $ES_T/mpi_bad.es",
         "cannot be trained across processes yet"},
        {"a dataset cache", MPIRUN " -np 2 sh -c '%s convert " CRITEO " -o $ES_T/mpi_bad_$OMPI_COMM_WORLD_RANK.esd >/dev/null && exec \"$0\" train "
         "$ES_T/mpi_bad_$OMPI_COMM_WORLD_RANK.esd " COMMON " --model lr --storage hash --budget 100000 --out $ES_T/mpi_bad.es' %s",
         "dataset cache (.esd, --cache) is not supported across processes"},
        {"adapt promoting rows while training", MPIRUN " -np 2 %s train " CRITEO " " COMMON " --model lr --storage adapt --budget 100000 "
         "--storage-opts mode=online --out $ES_T/mpi_bad.es", "cannot be trained across processes"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        CHECK(es_test_sh(NULL, "rm -f $ES_T/mpi_bad.es*") == 0);
        int st = i == 4 ? es_test_sh(log, cases[i].cmd, es_bin(), es_bin()) : es_test_sh(log, cases[i].cmd, es_bin());
        char *s = es_test_slurp(log);
        CHECK_MSG(st != 0, "%s: exit 0: %s", cases[i].what, s ? s : "");
        CHECK_STR_HAS(s, cases[i].msg);
        int np = i == 2 ? 3 : 2;
        for (int r = 0; r < np; r++) {
            char tag[64];
            snprintf(tag, sizeof tag, "[rank %d of %d]", r, np);
            CHECK_MSG(s && strstr(s, tag), "%s: no error from rank %d: %s", cases[i].what, r, s ? s : "");
        }
        printf("    %s: exit %d, every rank says why\n", cases[i].what, st);
        free(s);
        CHECK_MSG(es_test_sh(NULL, "ls $ES_T/mpi_bad.es* >/dev/null 2>&1") != 0, "%s: a model file was left", cases[i].what);
    }
}

/* A rank killed with SIGKILL in the middle of training: mpirun ends the job
 * (no rank waits forever: the command runs under a 60 s timeout, and exit
 * status 124 would be that timeout), the exit status is not 0, and no
 * model file is left.  (Resuming from a checkpoint is not done yet under
 * MPI: docs/scale.md.) */
TEST_SLOW(mpi_killed_rank_ends_the_job_without_a_file) {
    if (!mpi_ready()) return;
    const char *log = es_test_path("mpi_kill.log");
    CHECK(es_test_sh(NULL, "rm -f $ES_T/mpi_kill.es*") == 0);
    double t0 = es__now();
    int st = es_test_sh(log,
                        "timeout 60 " MPIRUN " -np 2 sh -c 'if [ \"$OMPI_COMM_WORLD_RANK\" = 1 ]; then (sleep 1.5; kill -9 $$) & fi; "
                        "exec %s train " CRITEO " --model dlrm --storage full --valid-frac 0 --early-stop 0 --epochs 200 --threads 1 "
                        "--quiet --out $ES_T/mpi_kill.es'",
                        es_bin());
    double dt = es__now() - t0;
    char *s = es_test_slurp(log);
    printf("    exit %d after %.1f s\n", st, dt);
    CHECK_MSG(st != 0 && st != 124, "exit %d (124: the job hung until the timeout): %s", st, s ? s : "");
    free(s);
    CHECK_MSG(es_test_sh(NULL, "ls $ES_T/mpi_kill.es* >/dev/null 2>&1") != 0, "a model file was left");
}

/* Checkpoints per shard and --resume (docs/scale.md): rank 1 of 2 is
 * killed with SIGKILL once it has a checkpoint (first: its first one, in
 * the training that early stopping watches; then: one written in the
 * refit); mpirun ends the job; `--resume` on 2 ranks then ends with the
 * model of a run that never stopped (the same predictions, all 9 digits),
 * validation, early-stopping state and the best model's file included.
 * Resuming on another number of ranks is refused, and a shard is not a
 * model to predict with. */
TEST_SLOW(mpi_resume_after_a_killed_rank_gives_the_uninterrupted_model) {
    if (!mpi_ready()) return;
#define RESUME_ARGS                                                                                                   \
    "--model dlrm --storage full --max-rows 4000 --valid-frac 0.2 --early-stop 2 --epochs 3 --eval-every 5 --threads 1 " \
    "--checkpoint-every 4 --quiet"
    const char *log = es_test_path("mpi_resume.log");
    CHECK(es_test_sh(NULL, "rm -f $ES_T/mpi_ra.es* $ES_T/mpi_rb.es*") == 0);
    int st = es_test_sh(log, MPIRUN " -np 2 %s train " CRITEO " " RESUME_ARGS " --out $ES_T/mpi_ra.es", es_bin());
    CHECK_MSG(st == 0, "uninterrupted run: exit %d", st);
    CHECK(es_test_sh(NULL, "tail -n 1000 %s > $ES_T/mpi_rv.tsv", CRITEO) == 0);
    CHECK(es_test_sh(NULL, "%s predict $ES_T/mpi_ra.es $ES_T/mpi_rv.tsv --digits 9 --out $ES_T/mpi_ra.txt", es_bin()) == 0);
    /* what rank 1 waits for before it is killed: a checkpoint file, or one of the refit */
    static const char *const when[2] = {"test -e $ES_T/mpi_rb.es.ckpt.rank1of2",
                                        "%s inspect $ES_T/mpi_rb.es.ckpt.rank1of2 2>/dev/null | grep -q ckpt.refit"};
    for (int w = 0; w < 2; w++) {
        char cond[512];
        snprintf(cond, sizeof cond, when[w], es_bin());
        CHECK(es_test_sh(NULL, "rm -f $ES_T/mpi_rb.es*") == 0);
        st = es_test_sh(log,
                        "timeout 120 " MPIRUN " -np 2 sh -c 'if [ \"$OMPI_COMM_WORLD_RANK\" = 1 ]; then "
                        "%s train " CRITEO " " RESUME_ARGS " --out $ES_T/mpi_rb.es & pid=$!; "
                        "until %s; do sleep 0.01; done; kill -9 $pid; wait $pid; exit 9; fi; "
                        "exec %s train " CRITEO " " RESUME_ARGS " --out $ES_T/mpi_rb.es'",
                        es_bin(), cond, es_bin());
        CHECK_MSG(st != 0 && st != 124, "the killed run (%d): exit %d (124: it hung)", w, st);
        CHECK_MSG(es_test_sh(NULL, "test ! -e $ES_T/mpi_rb.es && test -e $ES_T/mpi_rb.es.ckpt.rank0of2 && test -e $ES_T/mpi_rb.es.ckpt.rank1of2") == 0,
                  "after the kill (%d): no model file, both ranks' checkpoints", w);
        if (w == 0) { /* a shard is not a model; another rank count is refused */
            CHECK(es_test_sh(log, "%s predict $ES_T/mpi_rb.es.ckpt.rank1of2 " CRITEO, es_bin()) != 0);
            char *s = es_test_slurp(log);
            CHECK_STR_HAS(s, "shard of a checkpoint");
            free(s);
            CHECK(es_test_sh(log, MPIRUN " -np 4 %s train " CRITEO " " RESUME_ARGS " --resume --out $ES_T/mpi_rb.es", es_bin()) != 0);
            s = es_test_slurp(log);
            CHECK_STR_HAS(s, "is a checkpoint of a run on 2 processes");
            free(s);
        }
        st = es_test_sh(log, MPIRUN " -np 2 %s train " CRITEO " " RESUME_ARGS " --resume --out $ES_T/mpi_rb.es", es_bin());
        char *s = es_test_slurp(log);
        CHECK_MSG(st == 0, "resume (%d): exit %d: %s", w, st, s ? s : "");
        CHECK_STR_HAS(s, "\"resumed\":true");
        free(s);
        CHECK(es_test_sh(NULL, "%s predict $ES_T/mpi_rb.es $ES_T/mpi_rv.tsv --digits 9 --out $ES_T/mpi_rb.txt", es_bin()) == 0);
        CHECK_MSG(es_test_sh(NULL, "cmp $ES_T/mpi_ra.txt $ES_T/mpi_rb.txt") == 0, "the model resumed (%d) predicts differently", w);
        /* the checkpoints are gone once the model is written */
        CHECK(es_test_sh(NULL, "ls $ES_T/mpi_rb.es.ckpt.rank* 2>/dev/null | grep -v tmp >/dev/null") != 0);
        printf("    killed after a checkpoint %s, resumed: the same predictions as the run that never stopped\n",
               w ? "of the refit" : "of the selection");
    }
#undef RESUME_ARGS
}

/* --rank-memory: a table 4x one rank's cap (its rows and their optimizer
 * state) is refused on 1 rank, by mpirun and without it, with the number
 * of ranks it needs and no file; it trains on 4 ranks, each holding its
 * quarter and no rank ever the whole table (evaluations on the shards:
 * early stopping's validation and the test file; the model file streamed
 * from the shards), and that 4-rank model predicts what the 1-rank model
 * without a cap does, to the last digit. */
TEST_SLOW(mpi_rank_memory_a_table_4x_the_cap_trains_on_4_ranks) {
    if (!mpi_ready()) return;
    CHECK(es_test_sh(NULL, "tail -n 1000 %s > $ES_T/mpi_rm_test.tsv", CRITEO) == 0);
    const char *args = "--model dlrm --storage unified --budget 400000 --max-rows 3000 --valid-frac 0.2 --early-stop 1 --epochs 3 "
                       "--test $ES_T/mpi_rm_test.tsv";
    /* the cap: what one of 4 ranks holds */
    CHECK(train_np(4, args, "mpi_rm4_free.es") == 0);
    char *s = slurp_log("mpi_rm4_free.es");
    double quarter = es_test_json_num(es_test_last_line(s), "rank_table_bytes_max");
    free(s);
    CHECK(train_np(1, args, "mpi_rm1.es") == 0);
    s = slurp_log("mpi_rm1.es");
    double whole = es_test_json_num(es_test_last_line(s), "rank_table_bytes");
    free(s);
    printf("    the table: %.0f bytes on 1 rank, at most %.0f on each of 4 (%.3fx)\n", whole, quarter, whole / quarter);
    CHECK_MSG(quarter > 0 && whole >= 4 * quarter, "the whole table (%.0f) is not 4x a quarter (%.0f)", whole, quarter);
    char capped[512];
    snprintf(capped, sizeof capped, "%s --rank-memory %.0f", args, quarter);
    /* 1 rank, under mpirun and alone: refused, no file */
    for (int np = 1; np >= 0; np--) {
        int st = train_np(np, capped, "mpi_rm_refused.es");
        s = slurp_log("mpi_rm_refused.es");
        CHECK_MSG(st != 0, "%d: a table 4x the cap trained: %s", np, s ? s : "");
        CHECK_STR_HAS(s, "more than --rank-memory");
        CHECK_STR_HAS(s, "about 4 processes");
        free(s);
        CHECK(es_test_sh(NULL, "ls $ES_T/mpi_train.es* $ES_T/mpi_rm_refused.es >/dev/null 2>&1") != 0);
    }
    /* 4 ranks under the cap */
    int st = train_np(4, capped, "mpi_rm4.es");
    s = slurp_log("mpi_rm4.es");
    CHECK_MSG(st == 0, "4 ranks under the cap: exit %d: %s", st, s ? s : "");
    const char *j = es_test_last_line(s);
    CHECK_MSG(es_test_json_num(j, "rank_table_bytes_max") <= quarter, "a rank held %g bytes, the cap is %.0f",
              es_test_json_num(j, "rank_table_bytes_max"), quarter);
    CHECK_STR_HAS(j, "\"stopped_early\":true");
    CHECK_MSG(es_test_json_num(j, "test_rows") == 1000, "test rows %g", es_test_json_num(j, "test_rows"));
    free(s);
    /* the same command, the same file; the capped one records another command line */
    CHECK_MSG(es_test_sh(NULL, "cmp $ES_T/mpi_rm1.es $ES_T/mpi_rm4_free.es") == 0, "the 4-rank model file differs from the 1-rank one");
    char *pred[2];
    const char *name[2] = {"mpi_rm1.es", "mpi_rm4.es"};
    for (int i = 0; i < 2; i++) {
        CHECK(es_test_sh(NULL, "%s predict $ES_T/%s $ES_T/mpi_rm_test.tsv --digits 9 --out $ES_T/%s.txt", es_bin(), name[i], name[i]) == 0);
        char p[256];
        snprintf(p, sizeof p, "%s.txt", es_test_path(name[i]));
        pred[i] = es_test_slurp(p);
    }
    CHECK(pred[0] && pred[1] && strcmp(pred[0], pred[1]) == 0);
    printf("    refused on 1 rank (with and without mpirun); 4 ranks under a cap of %.0f bytes: the 1-rank model, same predictions\n", quarter);
    free(pred[0]);
    free(pred[1]);
}

/* --shard-files: data-parallel input.  8 shard files (one gzip) of the
 * Criteo sample; rank k of N reads only files k, k+N, ...  Each global
 * batch is batch / N rows of every rank in rank order, so the 2-rank model
 * is exactly the 1-rank model trained on one file whose rows interleave
 * the two ranks' streams in runs of 32; on 1 rank it is the model of the
 * concatenated files.  Uneven shards: every rank trains as many rows as
 * the smallest, the rest counted in rows_dropped.  Rank 1 killed after a
 * checkpoint: --resume gives the uninterrupted model.  A bad line names its
 * shard file and line; too few files, one file, and validation carved from
 * the training rows are refused; a missing shard and a shard only rank 1
 * reads that cannot be read: every rank says why, no file. */
TEST_SLOW(mpi_shard_files_each_rank_reads_its_own) {
    if (!mpi_ready()) return;
    const char *log = es_test_path("mpi_shard.log");
    CHECK(es_test_sh(NULL, "rm -rf $ES_T/shards && mkdir -p $ES_T/shards && head -n 4000 " CRITEO " > $ES_T/shards/all.tsv && "
                           "tail -n 1000 " CRITEO " > $ES_T/shards/valid.tsv && cd $ES_T/shards && "
                           "split -l 500 -d all.tsv s- --additional-suffix=.tsv && "
                           /* the two ranks' streams, and their interleaving in runs of 32 rows */
                           "cat s-00.tsv s-02.tsv s-04.tsv s-06.tsv > r0.txt && cat s-01.tsv s-03.tsv s-05.tsv s-07.tsv > r1.txt && "
                           "awk 'FNR==NR{a[NR]=$0;n=NR;next}{b[FNR]=$0;m=FNR}END{for(i=0;i*32<n;i++){for(j=1;j<=32&&i*32+j<=n;j++)print a[i*32+j];"
                           "for(j=1;j<=32&&i*32+j<=m;j++)print b[i*32+j]}}' r0.txt r1.txt > inter2.tsv && gzip s-03.tsv") == 0);
#define SHARD_ARGS "--model dlrm --storage hash --budget 100000 --epochs 2 --early-stop 1 --threads 1 --seed 3 --quiet " \
                   "--valid $ES_T/shards/valid.tsv"
    struct {
        int np;
        const char *input, *flags, *out;
    } runs[] = {
        {2, "\"$ES_T/shards/s-*\"", "--shard-files", "sh2"},
        {1, "$ES_T/shards/inter2.tsv", "", "ref2"},
        {1, "\"$ES_T/shards/s-*\"", "--shard-files", "sh1"},
        {1, "$ES_T/shards/all.tsv", "", "ref1"},
    };
    for (size_t i = 0; i < sizeof runs / sizeof runs[0]; i++) {
        int st = es_test_sh(log, MPIRUN " -np %d %s train %s %s " SHARD_ARGS " --out $ES_T/shards/%s.es", runs[i].np, es_bin(), runs[i].input,
                            runs[i].flags, runs[i].out);
        char *s = es_test_slurp(log);
        CHECK_MSG(st == 0, "%s: exit %d: %s", runs[i].out, st, s ? s : "");
        if (runs[i].flags[0]) CHECK_STR_HAS(s, "\"rows_dropped\":0");
        free(s);
        CHECK(es_test_sh(NULL, "%s predict $ES_T/shards/%s.es $ES_T/shards/valid.tsv --digits 9 --out $ES_T/shards/%s.txt", es_bin(),
                         runs[i].out, runs[i].out) == 0);
    }
    CHECK_MSG(es_test_sh(NULL, "cmp $ES_T/shards/sh2.txt $ES_T/shards/ref2.txt") == 0,
              "2 ranks on shard files differ from 1 rank on the interleaved rows");
    CHECK_MSG(es_test_sh(NULL, "cmp $ES_T/shards/sh1.txt $ES_T/shards/ref1.txt") == 0, "1 rank on shard files differs from the concatenation");
    CHECK_MSG(es_test_sh(NULL, "cmp $ES_T/shards/sh1.txt $ES_T/shards/sh2.txt") != 0, "1 and 2 ranks gave one model: the shards were not split");
    printf("    2 ranks on 8 shard files (one gzip) = 1 rank on the interleaved rows; 1 rank = the concatenation\n");
    /* rank 1 killed after a checkpoint: --resume skips each rank's own
     * trained rows and ends with the model of the run that never stopped */
    int st;
    char *s;
    CHECK(es_test_sh(NULL, "rm -f $ES_T/shards/rk*; B=$(cd $(dirname %s) && pwd)/$(basename %s); cat > $ES_T/shards/run.sh <<EOF\n"
                           "#!/bin/sh\nout=\\$1; shift\nexec $B train \"$ES_T/shards/s-*\" --shard-files " SHARD_ARGS
                           " --epochs 3 --early-stop 0 --batch 16 --checkpoint-every 20 --out \\$out \"\\$@\"\nEOF\n"
                           "chmod +x $ES_T/shards/run.sh",
                     es_bin(), es_bin()) == 0);
    CHECK(es_test_sh(log, MPIRUN " -np 2 $ES_T/shards/run.sh $ES_T/shards/rk_a.es") == 0);
    st = es_test_sh(log, "timeout 120 " MPIRUN " -np 2 sh -c 'if [ \"$OMPI_COMM_WORLD_RANK\" = 1 ]; then $ES_T/shards/run.sh $ES_T/shards/rk.es & "
                         "pid=$!; until [ -s $ES_T/shards/rk.es.ckpt.rank1of2 ]; do sleep 0.01; done; kill -9 $pid; wait $pid; exit 9; fi; "
                         "exec $ES_T/shards/run.sh $ES_T/shards/rk.es'");
    CHECK_MSG(st != 0 && st != 124, "the killed run: exit %d (124: it hung)", st);
    st = es_test_sh(log, MPIRUN " -np 2 $ES_T/shards/run.sh $ES_T/shards/rk.es --resume");
    s = es_test_slurp(log);
    CHECK_MSG(st == 0 && s && strstr(s, "\"resumed\":true"), "resume: exit %d: %s", st, s ? s : "");
    free(s);
    CHECK(es_test_sh(NULL, "%s predict $ES_T/shards/rk_a.es $ES_T/shards/valid.tsv --digits 9 > $ES_T/shards/rk_a.txt && "
                           "%s predict $ES_T/shards/rk.es $ES_T/shards/valid.tsv --digits 9 > $ES_T/shards/rk.txt && "
                           "cmp $ES_T/shards/rk_a.txt $ES_T/shards/rk.txt",
                     es_bin(), es_bin()) == 0);
    printf("    killed and resumed on shard files: the uninterrupted model\n");
    /* uneven: rank 1's files hold 100 rows fewer */
    CHECK(es_test_sh(NULL, "cd $ES_T/shards && head -n 400 s-07.tsv > t && mv t s-07.tsv") == 0);
    st = es_test_sh(log, MPIRUN " -np 2 %s train \"$ES_T/shards/s-*\" --shard-files " SHARD_ARGS " --out $ES_T/shards/un.es", es_bin());
    s = es_test_slurp(log);
    CHECK_MSG(st == 0, "uneven shards: exit %d: %s", st, s ? s : "");
    CHECK_STR_HAS(s, "\"rows_dropped\":100");
    CHECK_STR_HAS(s, "\"rows\":3800");
    free(s);
    /* a bad line in a shard: its file and line */
    CHECK(es_test_sh(NULL, "cd $ES_T/shards && sed -i '7s/^[01]\\t/x\\t/' s-05.tsv") == 0);
    st = es_test_sh(log, MPIRUN " -np 2 %s train \"$ES_T/shards/s-*\" --shard-files " SHARD_ARGS " --out $ES_T/shards/bad.es", es_bin());
    s = es_test_slurp(log);
    CHECK_MSG(st != 0, "a bad line trained: %s", s ? s : "");
    CHECK_STR_HAS(s, "s-05.tsv:7:");
    free(s);
    struct {
        const char *args, *msg;
    } bad[] = {
        {"\"$ES_T/shards/s-0[01].tsv\" --shard-files --valid-frac 0 -np 4", "2 files for 4 ranks"},
        {"$ES_T/shards/all.tsv --shard-files --valid-frac 0 -np 2", "needs several files"},
        {"\"$ES_T/shards/s-*\" --shard-files --valid-frac 0.1 -np 2", "validation rows must come from their own file"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        /* -np last in args: split it off for mpirun */
        char a[256];
        snprintf(a, sizeof a, "%s", bad[i].args);
        char *np = strstr(a, " -np ");
        *np = 0;
        st = es_test_sh(log, MPIRUN " %s %s train %s --model lr --storage hash --budget 100000 --epochs 1 --early-stop 0 --quiet --out $ES_T/shards/bad.es",
                        np + 1, es_bin(), a);
        s = es_test_slurp(log);
        CHECK_MSG(st != 0, "%s: exit 0", bad[i].args);
        CHECK_STR_HAS(s, bad[i].msg);
        free(s);
    }
    /* a list naming a missing shard; a shard only rank 1 reads that cannot
     * be read (a truncated gzip; the tests run as root, so a chmod would not
     * stop a read): every rank says why, no file */
    CHECK(es_test_sh(NULL, "cd $ES_T/shards && sed -i '7s/^x\t/0\t/' s-05.tsv && printf '%%s/s-00.tsv\\n%%s/s-gone.tsv\\n' $PWD $PWD > gone.list && "
                           "head -c 3000 s-03.tsv.gz > cut.tsv.gz && printf '%%s/s-00.tsv\\n%%s/cut.tsv.gz\\n' $PWD $PWD > cut.list") == 0);
    struct {
        const char *list, *msg;
    } unread[] = {{"gone.list", "s-gone.tsv"}, {"cut.list", "cut.tsv.gz"}};
    for (size_t i = 0; i < sizeof unread / sizeof unread[0]; i++) {
        st = es_test_sh(log, MPIRUN " -np 2 %s train @$ES_T/shards/%s --shard-files " SHARD_ARGS " --out $ES_T/shards/bad.es", es_bin(),
                        unread[i].list);
        s = es_test_slurp(log);
        CHECK_MSG(st != 0, "%s: exit 0", unread[i].list);
        CHECK_STR_HAS(s, unread[i].msg);
        for (int r = 0; r < 2; r++) {
            char tag[32];
            snprintf(tag, sizeof tag, "[rank %d of 2]", r);
            CHECK_MSG(s && strstr(s, tag), "%s: no error from rank %d: %s", unread[i].list, r, s ? s : "");
        }
        printf("    %s: %.160s\n", unread[i].list, s ? s : "");
        free(s);
    }
    CHECK(es_test_sh(NULL, "ls $ES_T/shards/bad.es* >/dev/null 2>&1") != 0);
#undef SHARD_ARGS
}

/* --resume without mpirun where only a run across processes left
 * checkpoints (<ckpt>.rank<k>of<N>): refused, naming the file and the
 * rank count, rather than starting afresh as if none existed (no mpirun
 * needed: the file's name is what is checked). */
TEST(mpi_plain_resume_refuses_per_rank_checkpoints) {
    const char *log = es_test_path("mpi_plain_resume.log");
    CHECK(es_test_sh(NULL, "rm -f $ES_T/pr.es* && echo x > $ES_T/pr.es.ckpt.rank0of2 && echo x > $ES_T/pr.es.ckpt.rank1of2") == 0);
    int st = es_test_sh(log, "%s train " CRITEO " --model lr --max-rows 500 --epochs 1 --quiet --resume --out $ES_T/pr.es", es_bin());
    char *s = es_test_slurp(log);
    printf("    exit %d: %.200s", st, s ? s : "");
    CHECK(st == 1);
    CHECK_STR_HAS(s, "pr.es.ckpt.rank0of2 is a checkpoint of a run on 2 processes");
    CHECK_STR_HAS(s, "mpirun");
    free(s);
    CHECK(es_test_sh(NULL, "test ! -e $ES_T/pr.es") == 0);
    /* without those files, --resume with no checkpoint starts afresh as before */
    CHECK(es_test_sh(NULL, "rm -f $ES_T/pr.es.ckpt.rank*") == 0);
    CHECK(es_test_sh(log, "%s train " CRITEO " --model lr --max-rows 500 --epochs 1 --quiet --resume --out $ES_T/pr.es", es_bin()) == 0);
}
