/*
 * mpi_test.h — what the tests of training across processes share
 * (test_mpi.c, test_mpi_qr.c, test_mpi_mde.c, test_mpi_multihash.c,
 * test_mpi_alpt.c): the data file, the mpirun command, the check that
 * mpirun runs the MPI build of $ES_BIN, a training run on N ranks and a
 * model's predictions.
 */
#ifndef ES_TESTS_MPI_TEST_H
#define ES_TESTS_MPI_TEST_H

#include "test.h"

#define CRITEO "data/criteo_kaggle_train_first10k.tsv"
#define MPIRUN "mpirun --oversubscribe --allow-run-as-root"

/* 1 when mpirun runs and $ES_BIN is the MPI build; else skips the test
 * (the plain build refuses an mpirun launch with "built without MPI").
 * Probed once per test file. */
static inline int mpi_ready(void) {
    static int state = -1; /* -1 unknown, 0 no, 1 yes */
    static char why[160];
    if (state < 0) {
        state = 0;
        if (es_test_sh(NULL, "command -v mpirun") != 0) {
            snprintf(why, sizeof why, "mpirun not found (install openmpi-bin: .ci/deps.sh)");
        } else {
            const char *log = es_test_path("mpi_probe.log");
            es_test_sh(log, MPIRUN " -np 2 %s train /nonexistent-probe.tsv --valid-frac 0 --early-stop 0 --quiet", es_bin());
            char *s = es_test_slurp(log);
            if (s && strstr(s, "built without MPI")) snprintf(why, sizeof why, "%s was built without MPI (make MPI=1)", es_bin());
            else if (s && strstr(s, "nonexistent-probe")) state = 1;
            else snprintf(why, sizeof why, "mpirun did not run %s as expected: %.100s", es_bin(), s ? s : "");
            free(s);
        }
    }
    if (!state) es_test_skip(why);
    return state;
}

/* Train on np ranks (np 0: without mpirun) on CRITEO with `common`, then
 * `args`, into $ES_T/<out>, the output in $ES_T/<out>.log.  Every run
 * writes the same --out path ($ES_T/mpi_train.es, moved to <out> after),
 * so the command lines recorded in the files are the same.  The exit
 * status. */
static inline int mpi_train(int np, const char *common, const char *args, const char *out) {
    char pre[128] = "";
    if (np > 0) snprintf(pre, sizeof pre, MPIRUN " -np %d ", np);
    char log[256];
    snprintf(log, sizeof log, "%s.log", es_test_path(out));
    return es_test_sh(log, "rm -f $ES_T/mpi_train.es && %s%s train %s %s %s --out $ES_T/mpi_train.es && mv $ES_T/mpi_train.es $ES_T/%s",
                      pre, es_bin(), CRITEO, common, args, out);
}

/* Predictions (9 digits) of $ES_T/<model> on $ES_T/<data>, malloc'd
 * (NULL when predict fails). */
static inline char *mpi_predict(const char *model, const char *data) {
    if (es_test_sh(NULL, "%s predict $ES_T/%s $ES_T/%s --digits 9 --out $ES_T/%s.txt", es_bin(), model, data, model) != 0) return NULL;
    char p[256];
    snprintf(p, sizeof p, "%s.txt", es_test_path(model));
    return es_test_slurp(p);
}

/* Largest |a_i - b_i| over two prediction texts (one number a line), and
 * the rows compared. */
static inline double mpi_pred_maxdiff(const char *a, const char *b, int *rows) {
    double maxd = 0;
    *rows = 0;
    for (char *ea, *eb; *a && *b; ++*rows) {
        double x = strtod(a, &ea), y = strtod(b, &eb);
        if (ea == a || eb == b) break;
        if (fabs(x - y) > maxd) maxd = fabs(x - y);
        a = ea;
        b = eb;
    }
    return maxd;
}

/* The 1-, 2- and 4-rank model files of `common` `cfg` are one file
 * ($ES_T/<tag>_<np>.es), with table traffic on more than one rank only. */
static inline void mpi_check_same_file(const char *common, const char *cfg, const char *tag) {
    for (int np = 1; np <= 4; np *= 2) {
        char out[96], log[256];
        snprintf(out, sizeof out, "%s_%d.es", tag, np);
        int st = mpi_train(np, common, cfg, out);
        snprintf(log, sizeof log, "%s.log", es_test_path(out));
        char *s = es_test_slurp(log);
        CHECK_MSG(st == 0, "%s on %d ranks: exit %d: %s", cfg, np, st, s ? s : "");
        double a2a = es_test_json_num(s ? es_test_last_line(s) : NULL, "comm_alltoall_bytes_per_step");
        CHECK_MSG(np == 1 ? a2a == 0 : a2a > 0, "%s on %d ranks: %g table bytes per step", cfg, np, a2a);
        free(s);
        if (np == 1) continue;
        int same = es_test_sh(NULL, "cmp $ES_T/%s_1.es $ES_T/%s", tag, out);
        printf("    %-92s 1 vs %d ranks: %s\n", cfg, np, same == 0 ? "same file" : "DIFFERENT");
        CHECK_MSG(same == 0, "%s: the %d-rank model differs from the 1-rank one", cfg, np);
    }
}

/* mpi_check_same_file for each of cfgs[0 .. n), tagged <prefix>_<i>. */
static inline void mpi_check_same_files(const char *common, const char *const *cfgs, size_t n, const char *prefix) {
    for (size_t c = 0; c < n; c++) {
        char tag[64];
        snprintf(tag, sizeof tag, "%s_%zu", prefix, c);
        mpi_check_same_file(common, cfgs[c], tag);
    }
}

/* The 1-rank model of `common` `cfg` predicts on $ES_T/<valid> (1000 rows)
 * as the one-process trainer's (no mpirun) within `bound` (its dense
 * gradients are summed over the whole batch at once, not by the 16-block
 * tree: docs/scale.md), with the same tensors (the `inspect` lines that
 * the extended regex `tensors` matches); the 4-rank model as the 1-rank
 * one, exactly.  Files $ES_T/<tag>_p{0,1,4}.es. */
static inline void mpi_check_vs_one_process(const char *common, const char *cfg, const char *tag, const char *valid, const char *tensors,
                                            double bound) {
    char m[3][96];
    char *p[3];
    static const int nps[3] = {0, 1, 4};
    for (int i = 0; i < 3; i++) {
        snprintf(m[i], sizeof m[i], "%s_p%d.es", tag, nps[i]);
        CHECK(mpi_train(nps[i], common, cfg, m[i]) == 0);
    }
    CHECK(es_test_sh(NULL, "for m in p0 p1; do %s inspect $ES_T/%s_$m.es | grep -E '%s' > $ES_T/%s_$m.t; done; cmp $ES_T/%s_p0.t $ES_T/%s_p1.t",
                     es_bin(), tag, tensors, tag, tag, tag) == 0);
    for (int i = 0; i < 3; i++) p[i] = mpi_predict(m[i], valid);
    CHECK(p[0] && p[1] && p[2]);
    if (p[0] && p[1] && p[2]) {
        CHECK_MSG(strcmp(p[1], p[2]) == 0, "%s: the 4-rank model predicts differently from the 1-rank one", cfg);
        int rows;
        double maxd = mpi_pred_maxdiff(p[0], p[1], &rows);
        printf("    %s: %d rows, 4 ranks = 1 rank exactly; one-process trainer within %.3g\n", cfg, rows, maxd);
        CHECK_EQ_INT(rows, 1000);
        CHECK_MSG(maxd < bound, "%s: the MPI path and the one-process trainer differ by %g (more than rounding)", cfg, maxd);
    }
    for (int i = 0; i < 3; i++) free(p[i]);
}

/* Rank 1 of 2 killed (the trainer's fault point, after its 7th batch)
 * once both ranks hold a checkpoint of their shard (`args` must checkpoint
 * often enough): --resume ends with the model of the run that never
 * stopped (predictions on $ES_T/<valid> equal).  Files $ES_T/<tag>_r{a,b}.es. */
static inline void mpi_check_resume(const char *args, const char *tag, const char *valid) {
    const char *log = es_test_path("mpi_resume_check.log");
    CHECK(es_test_sh(NULL, "rm -f $ES_T/%s_ra.es* $ES_T/%s_rb.es*", tag, tag) == 0);
    CHECK(es_test_sh(log, MPIRUN " -np 2 %s train " CRITEO " %s --out $ES_T/%s_ra.es", es_bin(), args, tag) == 0);
    int st = es_test_sh(log,
                        "timeout 120 " MPIRUN " -np 2 sh -c 'if [ \"$OMPI_COMM_WORLD_RANK\" = 1 ]; then export ES_TEST_KILL_AFTER=train:7; fi; "
                        "exec %s train " CRITEO " %s --out $ES_T/%s_rb.es'",
                        es_bin(), args, tag);
    CHECK_MSG(st != 0 && st != 124, "%s: the killed run: exit %d (124: it hung)", args, st);
    CHECK(es_test_sh(NULL, "test ! -e $ES_T/%s_rb.es && test -e $ES_T/%s_rb.es.ckpt.rank0of2 && test -e $ES_T/%s_rb.es.ckpt.rank1of2", tag,
                     tag, tag) == 0);
    st = es_test_sh(log, MPIRUN " -np 2 %s train " CRITEO " %s --resume --out $ES_T/%s_rb.es", es_bin(), args, tag);
    char *s = es_test_slurp(log);
    CHECK_MSG(st == 0, "%s: resume: exit %d: %s", args, st, s ? s : "");
    CHECK_STR_HAS(s, "\"resumed\":true");
    free(s);
    char ra[128], rb[128];
    snprintf(ra, sizeof ra, "%s_ra.es", tag);
    snprintf(rb, sizeof rb, "%s_rb.es", tag);
    char *a = mpi_predict(ra, valid), *b = mpi_predict(rb, valid);
    CHECK_MSG(a && b && strcmp(a, b) == 0, "%s: the resumed model predicts differently from the uninterrupted one", args);
    printf("    killed after a checkpoint, resumed: the same predictions as the run that never stopped\n");
    free(a);
    free(b);
}

/* --rank-memory: train `common` `args` on 1 rank (the whole tables'
 * bytes) and on 4 (the largest shard's, `quarter`), check whole is
 * between min_ratio and 4 quarters, then a cap of `quarter` refuses 1
 * rank and trains 4, evaluating `args`' --test file (1000 rows) on the
 * shards, to the 1-rank model's predictions on $ES_T/<valid>. */
static inline void mpi_check_rank_memory(const char *common, const char *args, const char *tag, const char *valid, double min_ratio) {
    char out[4][96], log[256], capped[640];
    static const char *const sfx[4] = {"rm1", "rm4_free", "rm_refused", "rm4"};
    double got[2] = {0, 0};
    for (int i = 0; i < 4; i++) snprintf(out[i], sizeof out[i], "%s_%s.es", tag, sfx[i]);
    for (int i = 0; i < 2; i++) {
        CHECK(mpi_train(i ? 4 : 1, common, args, out[i]) == 0);
        snprintf(log, sizeof log, "%s.log", es_test_path(out[i]));
        char *s = es_test_slurp(log);
        got[i] = es_test_json_num(s ? es_test_last_line(s) : NULL, i ? "rank_table_bytes_max" : "rank_table_bytes");
        free(s);
    }
    const double whole = got[0], quarter = got[1];
    printf("    the tables: %.0f bytes on 1 rank, at most %.0f on each of 4\n", whole, quarter);
    CHECK_MSG(quarter > 0 && whole >= min_ratio * quarter && whole <= 4 * quarter, "the whole (%.0f) is not about 4 shards (%.0f)", whole,
              quarter);
    snprintf(capped, sizeof capped, "%s --rank-memory %.0f", args, quarter);
    CHECK(mpi_train(1, common, capped, out[2]) != 0);
    snprintf(log, sizeof log, "%s.log", es_test_path(out[2]));
    char *s = es_test_slurp(log);
    CHECK_STR_HAS(s, "more than --rank-memory");
    free(s);
    CHECK(mpi_train(4, common, capped, out[3]) == 0);
    snprintf(log, sizeof log, "%s.log", es_test_path(out[3]));
    s = es_test_slurp(log);
    CHECK_MSG(s && es_test_json_num(es_test_last_line(s), "test_rows") == 1000, "the test file was not evaluated: %s", s ? s : "");
    free(s);
    char *a = mpi_predict(out[0], valid), *b = mpi_predict(out[3], valid);
    CHECK_MSG(a && b && strcmp(a, b) == 0, "the capped 4-rank model predicts differently from the 1-rank one");
    free(a);
    free(b);
}

/* `common` `args` on 2 ranks is refused on every rank with `msg`, no
 * model file ($ES_T/<tag>.es). */
static inline void mpi_check_refused(const char *common, const char *args, const char *tag, const char *msg) {
    const char *log = es_test_path("mpi_refused_check.log");
    CHECK(es_test_sh(NULL, "rm -f $ES_T/%s.es*", tag) == 0);
    int st = es_test_sh(log, MPIRUN " -np 2 %s train " CRITEO " %s %s --out $ES_T/%s.es", es_bin(), common, args, tag);
    char *s = es_test_slurp(log);
    CHECK_MSG(st != 0, "%s trained: %s", args, s ? s : "");
    CHECK_STR_HAS(s, msg);
    CHECK_STR_HAS(s, "[rank 0 of 2]");
    CHECK_STR_HAS(s, "[rank 1 of 2]");
    free(s);
    CHECK(es_test_sh(NULL, "ls $ES_T/%s.es* >/dev/null 2>&1", tag) != 0);
}

#endif
