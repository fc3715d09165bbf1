/*
 * tools/mpi/comm.c — the CLI's communicator over MPI (docs/scale.md), in
 * the MPI build only (`make MPI=1`, or automatic when mpicc is found):
 * an es_comm (embstore.h) whose collectives are MPI's on MPI_COMM_WORLD.
 * The library itself never links MPI; tools/mpi/none.c stands in for this
 * file in the plain build.
 *
 * MPI is started only when the process was launched by mpirun (its
 * environment says so), so the MPI build of `embstore train` run alone is
 * the ordinary one-process program.
 */
#include "../cli.h"

#include <limits.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

static es_comm g_comm;
static int g_started;

static int a2a(void *ctx, const void *s, void *r, size_t each) {
    (void)ctx;
    if (each > INT_MAX) return 1;
    return MPI_Alltoall(s, (int)each, MPI_BYTE, r, (int)each, MPI_BYTE, MPI_COMM_WORLD) != MPI_SUCCESS;
}

/* Byte counts and displacements as MPI's ints (a message over 2 GiB is
 * refused: docs/scale.md). */
static int to_int(const size_t *x, int *out, int n) {
    for (int i = 0; i < n; i++) {
        if (x[i] > INT_MAX) return 1;
        out[i] = (int)x[i];
    }
    return 0;
}

static int a2av(void *ctx, const void *s, const size_t *sc, const size_t *sd, void *r, const size_t *rc, const size_t *rd) {
    (void)ctx;
    int n = g_comm.size, bad = 0;
    int *v = malloc(4 * (size_t)n * sizeof *v);
    if (!v) return 1;
    bad = to_int(sc, v, n) || to_int(sd, v + n, n) || to_int(rc, v + 2 * n, n) || to_int(rd, v + 3 * n, n);
    if (!bad)
        bad = MPI_Alltoallv(s, v, v + n, MPI_BYTE, r, v + 2 * n, v + 3 * n, MPI_BYTE, MPI_COMM_WORLD) != MPI_SUCCESS;
    free(v);
    return bad;
}

static int agather(void *ctx, const void *s, void *r, size_t each) {
    (void)ctx;
    if (each > INT_MAX) return 1;
    return MPI_Allgather(s, (int)each, MPI_BYTE, r, (int)each, MPI_BYTE, MPI_COMM_WORLD) != MPI_SUCCESS;
}

static int bcast(void *ctx, void *buf, size_t bytes, int root) {
    (void)ctx;
    if (bytes > INT_MAX) return 1;
    return MPI_Bcast(buf, (int)bytes, MPI_BYTE, root, MPI_COMM_WORLD) != MPI_SUCCESS;
}

/* Launched by mpirun (Open MPI, or a PMI launcher)? */
static int launched(void) { return getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMI_SIZE") || getenv("PMIX_RANK"); }

const es_comm *cli_mpi_comm(const char *cmd, int *err) {
    *err = 0;
    if (g_started) return &g_comm;
    if (!launched()) return NULL;
    if (MPI_Init(NULL, NULL) != MPI_SUCCESS) {
        *err = cli_fail(cmd, "MPI_Init failed");
        return NULL;
    }
    g_started = 1;
    /* errors come back as codes: es_train turns them into messages */
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, &g_comm.rank);
    MPI_Comm_size(MPI_COMM_WORLD, &g_comm.size);
    g_comm.alltoall = a2a;
    g_comm.alltoallv = a2av;
    g_comm.allgather = agather;
    g_comm.bcast = bcast;
    return &g_comm;
}

void cli_mpi_finish(void) {
    /* the barrier: no rank leaves (mpirun ends the job at a rank's first
     * non-zero exit) before every rank has said what it has to say */
    if (g_started) {
        fflush(stdout);
        fflush(stderr);
        MPI_Barrier(MPI_COMM_WORLD);
        MPI_Finalize();
    }
    g_started = 0;
}

void cli_mpi_abort(int st) {
    if (!g_started) return;
    fflush(stdout);
    fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, st);
}
