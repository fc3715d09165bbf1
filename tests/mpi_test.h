/*
 * mpi_test.h — what the tests of training across processes share
 * (test_mpi.c, test_mpi_qr.c, test_mpi_mde.c): the data file, the mpirun
 * command, and the check that mpirun runs the MPI build of $ES_BIN.
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

#endif
