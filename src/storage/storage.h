/*
 * storage.h — the storage interface: how an embedding table is stored,
 * looked up and trained.  Every compression method (full table, hashing
 * trick, Unified Embedding, Q-R, ROBE, TT-Rec, DHE, mixed dimensions,
 * quantized rows, pruning, Matryoshka prefixes, sharded tables) is one file
 * implementing es_storage_ops, plus one line in the registry (registry.c).
 *
 * Data flow:
 *   es_batch (CSR of (row, field) -> value keys + pooling weights)
 *     -> lookup  -> out[n, F, dim]   (pooled per field, contiguous)
 *     <- backward <- dout[n, F, dim] (sparse optimizer update of touched
 *                                     parameters only)
 *
 * Contracts every method keeps:
 *   - create() sizes the method from p->budget and allocates everything it
 *     will ever need for parameters and optimizer state; lookup/backward do
 *     not allocate (scratch is sized from p->max_batch at create time);
 *   - param_bytes + aux_bytes is what serving needs and never exceeds the
 *     resolved budget; state_bytes is the optimizer state (training only);
 *     the figures are the bytes actually allocated for those arrays;
 *   - lookup is thread safe for disjoint row ranges (it reads only);
 *   - backward is called from one thread for the whole batch; duplicate
 *     parameters touched by several (row, field) pairs get ONE optimizer
 *     update with the summed gradient (as PyTorch's sparse gradients do);
 *   - tensors() lists every persistent array (parameters, optimizer state,
 *     maps) so that save/load and gradient checks are generic.
 */
#ifndef ES_STORAGE_H
#define ES_STORAGE_H

#include "core/core.h"
#include "format/file.h"

/* ---- sparse optimizers for table parameters ------------------------------ */
typedef enum {
    ES_OPT_SGD = 0,
    ES_OPT_ADAGRAD = 1,          /* per-element accumulator */
    ES_OPT_ROWWISE_ADAGRAD = 2,  /* one accumulator per row: mean of g^2 over the row */
    ES_OPT_ADAM = 3              /* dense parameters only (models, DHE MLPs) */
} es_optim;

typedef struct es_optim_params {
    es_optim kind;
    float lr;
    float eps;         /* adagrad/adam epsilon (default 1e-8 adam, 1e-10 adagrad) */
    float beta1, beta2;/* adam */
    float init_acc;    /* adagrad initial accumulator (default 0) */
} es_optim_params;

/* ---- vocabulary: per-field value counts from a pass over training data ---- */
typedef struct es_vocab es_vocab;
int es_vocab_create(es_vocab **out, int n_fields);
void es_vocab_free(es_vocab *v);
int es_vocab_add_batch(es_vocab *v, const es_batch *b);
uint64_t es_vocab_count(const es_vocab *v, int field, uint64_t key);
/* distinct keys seen in field f (all counts), and those with count >= min */
uint64_t es_vocab_distinct(const es_vocab *v, int field);
uint64_t es_vocab_distinct_min(const es_vocab *v, int field, uint64_t min_count);
/* Iterate field f's keys: calls fn(key, count, ctx) for each; any order. */
void es_vocab_each(const es_vocab *v, int field, void (*fn)(uint64_t key, uint64_t count, void *ctx), void *ctx);
int es_vocab_n_fields(const es_vocab *v);

/* ---- storage parameters ----------------------------------------------------- */
typedef struct es_storage_params {
    const char *method;   /* registry name: "full", "hash", "unified", ... */
    int n_fields;
    int dim;              /* output dimension per field */
    int max_batch;        /* largest batch passed to lookup/backward */
    /* Budget for serving bytes (parameters + lookup maps):
     *   > 1      : bytes;
     *   (0, 1]   : fraction of the `full` table's parameter bytes for this
     *              vocabulary (needs a vocab);
     *   0        : method default (full: exact vocabulary size). */
    double budget;
    uint64_t seed;
    float init_scale;     /* rows ~ U(-s, s); default 0.05; 0 gives zeros (LR) */
    es_optim_params opt;
    int min_count;        /* full/adapt: values seen fewer times go to the field's OOV row (default 1) */
    int chunks;           /* unified: k chunks per field (default 1); feature dim = k * chunk dim */
    int subtables;        /* unified: T sub-tables the chunks are spread over (default 1) */
    int share;            /* 1: one parameter space for all fields (multiplexing); 0: per field */
    const char *opts;     /* method-specific "key=value,..." */
} es_storage_params;

es_storage_params es_storage_params_default(void);

/* Statistics for `embstore inspect`: per-field rows used and collisions. */
typedef struct es_field_stats {
    uint64_t distinct;    /* distinct values seen (from the vocab, or 0) */
    uint64_t rows;        /* rows this field can address */
    uint64_t rows_used;   /* rows with at least one value mapped to them */
    uint64_t collisions;  /* values sharing a row with another value */
} es_field_stats;

typedef struct es_storage es_storage;

typedef struct es_storage_ops {
    const char *name;
    const char *summary;  /* one line for --help */
    /* Size from p (budget, vocab may be NULL unless the method needs it),
     * allocate, initialise with p->seed.  s->impl is the method's state. */
    int (*create)(es_storage *s, const es_vocab *vocab, es_err *err);
    /* out[(r - r0), f, :] for rows r in [r0, r1). */
    void (*lookup)(es_storage *s, const es_batch *b, int r0, int r1, float *out);
    /* dout[n, F, dim] for the whole batch b; sparse update of touched params. */
    int (*backward)(es_storage *s, const es_batch *b, const float *dout);
    /* List persistent tensors; returns count written (<= max) or, when refs is
     * NULL, the count needed. */
    int (*tensors)(es_storage *s, es_tensor_ref *refs, int max);
    /* Called after tensors were loaded into the arrays listed by tensors()
     * (rebuild derived structures). May be NULL. */
    int (*after_load)(es_storage *s, es_err *err);
    /* Optional: per-field statistics (may be NULL). */
    void (*field_stats)(es_storage *s, const es_vocab *vocab, int field, es_field_stats *out);
    void (*destroy)(es_storage *s);
} es_storage_ops;

struct es_storage {
    const es_storage_ops *ops;
    es_storage_params p;     /* copy; strings owned (method, opts) */
    double budget_bytes;     /* resolved budget in bytes (0 = unbounded) */
    size_t param_bytes;      /* learnable parameters, as allocated */
    size_t aux_bytes;        /* lookup structures needed to serve (maps) */
    size_t state_bytes;      /* optimizer state */
    char meta[256];          /* method's resolved hyper-parameters, "k=v,k=v" (saved with the model) */
    void *impl;
    es_err err;
};

/* Registry (registry.c): one line per method. */
const es_storage_ops *es_storage_find(const char *name);
int es_storage_n_methods(void);
const es_storage_ops *es_storage_method_at(int i);

/* Create a storage by method name.  vocab may be NULL when the method and
 * budget do not need one. */
int es_storage_create(es_storage **out, const es_storage_params *p, const es_vocab *vocab, es_err *err);
void es_storage_free(es_storage *s);
/* Bytes of the uncompressed `full` table for a vocabulary (parameters only,
 * rows with count >= min_count plus one OOV row per field). */
size_t es_storage_full_bytes(const es_vocab *vocab, int dim, int min_count);

/* ---- helpers shared by row-table methods (rows.c) -------------------------
 * A dense row table [n_rows, dim] with its sparse optimizer state, and a
 * gradient accumulator that sums the gradients of duplicate rows in a
 * batch before one optimizer update per distinct row. */
typedef struct es_rows {
    float *w;          /* [n_rows * dim], 64-byte aligned */
    float *acc;        /* adagrad: [n_rows*dim]; rowwise: [n_rows]; sgd: NULL */
    uint64_t n_rows;
    int dim;
    es_optim_params opt;
} es_rows;

int es_rows_init(es_rows *t, uint64_t n_rows, int dim, const es_optim_params *opt, es_rng *rng, float init_scale);
void es_rows_free(es_rows *t);
size_t es_rows_param_bytes(const es_rows *t);
size_t es_rows_state_bytes(const es_rows *t);

typedef struct es_gradacc {
    uint64_t *keys;    /* open-addressing map: row id -> slot */
    int32_t *slot;
    size_t map_cap;    /* power of two */
    float *g;          /* [cap, dim] summed gradients */
    uint64_t *rows;    /* [cap] row id of each slot, insertion order */
    size_t cap, n;
    int dim;
} es_gradacc;

int es_gradacc_init(es_gradacc *a, size_t cap, int dim);
void es_gradacc_free(es_gradacc *a);
void es_gradacc_clear(es_gradacc *a);
/* g_row += scale * g[0..len) at column offset col; returns the slot's gradient row. */
float *es_gradacc_row(es_gradacc *a, uint64_t row);
/* Apply one optimizer update per accumulated row to table t, then clear. */
void es_gradacc_apply(es_gradacc *a, es_rows *t);

#endif /* ES_STORAGE_H */
