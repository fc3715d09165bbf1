/*
 * dist.h — training one model across processes (docs/scale.md): the
 * distributed step over an es_comm (embstore.h), with the tables' rows
 * sharded over the processes.  The library holds no transport: the comm's
 * functions move the bytes (MPI in the CLI's MPI build, tools/mpi/).
 *
 * Ownership: row r of a method's table (es__row_map.rows rows in all)
 * lives on rank r % N at local index r / N, with its optimizer state
 * (es_storage_params.shard_rank / shard_n).
 *
 * A global batch of n rows (the same on every rank) is cut into
 * ES_DIST_BLOCKS blocks, block j = rows [j n / 16, (j + 1) n / 16); rank k
 * trains blocks [k 16 / N, (k + 1) 16 / N), a contiguous part.  The dense
 * gradients of each block are summed over its rows by the net as usual,
 * then the 16 block sums are added by a fixed pairwise tree, whose
 * subtrees are the ranks' parts (N a power of two, at most 16): each rank
 * adds its own, then a reduce-scatter (rank c adds chunk c of the N
 * subtree sums by the top of the tree) and an allgather of the chunks give
 * every rank the whole sum.  Every element is added in the same order
 * whatever N, so the sum, and the model, do not depend on N.
 */
#ifndef ES_TRAIN_DIST_H
#define ES_TRAIN_DIST_H

#include "train/model.h"

#define ES_DIST_BLOCKS 16

typedef struct es__dist es__dist;

/* Communication counters of one process (bytes it sent to others). */
typedef struct es__dist_stats {
    uint64_t steps;
    double sparse_bytes; /* keys to owners, rows back, gradients to owners */
    double dense_bytes;  /* the dense allreduce (reduce-scatter + allgather) and the block losses */
    double seconds;      /* in the comm's functions */
} es__dist_stats;

/* ES_OK when comm can train: size a power of two in [1, ES_DIST_BLOCKS],
 * rank in range, every function set; else ES_EINVAL with a message. */
int es__dist_check_comm(const es_comm *c, es_err *err);

/* The distributed step for model m (created with a sharded storage whose
 * ops->row_map is set; shard_rank / shard_n = the comm's).  ES_EINVAL
 * (the method cannot be sharded), ES_ENOMEM. */
int es__dist_create(es__dist **out, const es_comm *c, es_model *m, es_err *err);
void es__dist_free(es__dist *d);
/* Point the step at another model of the same shape (a refit). */
int es__dist_rebind(es__dist *d, es_model *m, es_err *err);

/* Rows [lo, hi) of a global batch of n rows: this rank's part (block
 * rows of dist.h). */
void es__dist_part(const es__dist *d, int n, int *lo, int *hi);
void es__dist_part_of(int rank, int size, int n, int *lo, int *hi);

/* Train on a global batch of n rows, of which g holds this rank's part
 * (es__dist_part: rows [lo, hi) as g's rows 0 .. hi - lo; may be none).
 * loss_sum gets the loss summed over all n rows, the same on every rank.
 * Collective.  ES_EIO when the transport fails, ES_ENOMEM, ES_EFORMAT
 * when a peer sends a row out of range; errors in m->err. */
int es__dist_train_batch(es__dist *d, const es_batch *g, int n, double *loss_sum);

/* Copy the whole model into dst on rank 0 (dst: a model of the same
 * parameters created unsharded, e.g. from the shard's resolved options;
 * NULL on the other ranks): every rank's rows, rank 0's lookup maps and
 * dense parameters (every rank holds the same).  Collective. */
int es__dist_gather(es__dist *d, es_model *dst, es_err *err);

void es__dist_get_stats(const es__dist *d, es__dist_stats *out);

/* Agreement point, the one collective that error handling uses: every rank
 * passes its status rc (0 or ES_E*, message in err), a count n and a
 * hash h.  Returns 0 when every rank passed rc 0, the same n and the same
 * h; otherwise every rank returns the same error: the first failing rank's
 * code and message ("on rank k: ..."), or ES_EINVAL "ranks disagree on
 * <what>" (what names n and h).  *failed is set to 1 on an error, and
 * later calls with *failed set return rc at once without communicating,
 * so that after an agreed error no process waits on another; to 2 when
 * the transport itself failed (nothing is agreed: the job must be ended,
 * es_train_result.comm_broken). */
int es__dist_agree(const es_comm *c, int *failed, int rc, int64_t n, uint64_t h, const char *what, es_err *err);

#endif
