/*
 * mpi_test.h — what the tests of training across processes share
 * (test_mpi.c, test_mpi_qr.c, test_mpi_mde.c, test_mpi_alpt.c): the data
 * file, the mpirun command, the check that mpirun runs the MPI build of
 * $ES_BIN, a training run on N ranks and a model's predictions.
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

#endif
