/*
 * dist.h — training one model across processes (docs/scale.md): the
 * distributed step over an es_comm (embstore.h), with the tables' rows
 * sharded over the processes.  The library holds no transport: the comm's
 * functions move the bytes (MPI in the CLI's MPI build, tools/mpi/).
 *
 * Ownership: row r of a method's global row space (es__row_map.rows rows
 * in all, over one table or several) lives on rank r % N at local index
 * r / N, with its optimizer state (es_storage_params.shard_rank /
 * shard_n).
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

/* 1 when the model's storage is replicated (dhe, tt: every rank holds it
 * whole), not sharded: the model file is then rank 0's model as it is. */
int es__dist_replicated(const es__dist *d);

/* The row tables as the model file holds them (es__model_save_whole_begin):
 * the storage's tensors holding the row map's (es__row_map) tables
 * ("weight", "weight.q" for codes; qr: "table0", ...; mde: its tiers one
 * after another in "rows.weight", its hashed rows in "tail.weight", or at
 * a precision "tier<t>.q" per tier and "tail.q"), each with its whole
 * first dimension; param_bytes the whole storage's.  wt's arrays are
 * allocated (es__whole_table_free; freed on failure).  Remembers each
 * table's tensor for es__dist_write_rows.  ES_EINVAL when no tensor holds
 * a table, ES_ENOMEM. */
int es__dist_tables(es__dist *d, es__whole_table *wt, es_err *err);

/* Probabilities of this rank's part of a global batch of n rows (g as in
 * es__dist_train_batch) into prob[0 .. g->n): the rows fetched from their
 * owners, the net's forward block by block (16 blocks of the global
 * batch), so each row's probability is the same on any number of ranks.
 * Not counted in the training counters.  Collective. */
int es__dist_predict(es__dist *d, const es_batch *g, int n, float *prob);

/* (probability, label) pairs of this rank's part of a global batch of n
 * rows (mine: [2 * part]) to rank 0, into all[2 n] in global row order
 * (NULL on the other ranks).  Collective. */
int es__dist_collect(es__dist *d, int n, const float *mine, float *all);

/* The row tables, each in global row order, into the tensors tensor[i]
 * (es__dist_tables' order) of rank 0's streaming writer w
 * (es__model_save_whole_begin; NULL on the other ranks): table i is
 * global rows [base[i], base[i + 1]), appended to its tensor after the
 * tables before it there, sent in rounds of a fixed number
 * of rows, each rank sending its rows of the round to rank 0, so rank 0
 * holds one round, never a table.  Every rank runs every round, even
 * after rank 0's write failed (then its error is returned by rank 0
 * only).  *broken = 1 when a rank left the rounds early (out of memory,
 * the transport failed): the others may wait, the job must end.
 * Collective. */
int es__dist_write_rows(es__dist *d, es_fwriter *w, const int *tensor, int *broken, es_err *err);

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
