/*
 * tools/mpi/none.c — the plain build's stand-in for tools/mpi/comm.c: no
 * communicator.  A process launched by mpirun is refused, since N copies
 * of a one-process run would each train the whole model and write the
 * same output file.
 */
#include "../cli.h"

#include <stdlib.h>

const es_comm *cli_mpi_comm(const char *cmd, int *err) {
    *err = 0;
    const char *n = getenv("OMPI_COMM_WORLD_SIZE");
    if (!n) n = getenv("PMI_SIZE");
    if (n && atoi(n) > 1)
        *err = cli_fail(cmd, "launched by mpirun on %s processes, but this embstore was built without MPI: build it with "
                             "`make MPI=1` (needs mpicc; docs/scale.md)",
                        n);
    return NULL;
}

void cli_mpi_finish(void) {}

void cli_mpi_abort(int st) { (void)st; }
