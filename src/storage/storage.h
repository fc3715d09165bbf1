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
#include "optim/optim.h"
#include "storage/quant.h"

/* ---- vocabulary: per-field value counts from a pass over training data ----
 * One open-addressing hash map per field from value key to count (vocab.c);
 * memory is proportional to the distinct values seen (about 32 bytes each).
 * A failed add (out of memory) leaves the vocab failed: later adds return
 * the same code, and es_vocab_errmsg says why. */
/* es_vocab and its public functions (es_vocab_create, _free, _add_batch,
 * _n_fields, _distinct, _bytes, _errmsg) are declared in embstore.h; the
 * internal ones follow. */
uint64_t es__vocab_count(const es_vocab *v, int field, uint64_t key);
/* distinct keys with count >= min in field f */
uint64_t es__vocab_distinct_min(const es_vocab *v, int field, uint64_t min_count);
/* Iterate field f's keys: calls fn(key, count, ctx) for each; any order. */
void es__vocab_each(const es_vocab *v, int field, void (*fn)(uint64_t key, uint64_t count, void *ctx), void *ctx);
/* One (field, key, count) of a vocabulary. */
typedef struct es_vocab_entry {
    uint64_t count, key;
    int f;
} es_vocab_entry;
/* Popularity order: count descending, then field, then key. */
int es__vocab_entry_cmp(const void *a, const void *b);
/* Write every entry with count >= min_count to out (room for the sum over
 * fields of es__vocab_distinct_min), in popularity order, or grouped by
 * field first when by_field; returns the number written.  Deterministic. */
size_t es__vocab_ranked(const es_vocab *v, uint64_t min_count, int by_field, es_vocab_entry *out);
/* Add `count` (> 0) occurrences of key to field f (merging vocabularies
 * counted apart: training across processes).  ES_EINVAL for a bad field or
 * a zero count, ES_ENOMEM (the vocab stays failed, with a message). */
int es__vocab_add_count(es_vocab *v, int field, uint64_t key, uint64_t count);
/* Total value occurrences counted in field f. */
uint64_t es__vocab_total(const es_vocab *v, int field);

/* ---- storage parameters ----------------------------------------------------- */
typedef struct es_storage_params {
    const char *method;   /* registry name: "full", "hash", "unified", ... */
    int n_fields;
    int dim;              /* output dimension per field */
    int max_batch;        /* largest batch passed to lookup/backward (sizes scratch) */
    /* Budget for serving bytes (parameters + lookup maps):
     *   > 1      : bytes;
     *   (0, 1]   : fraction of the `full` table's parameter bytes for this
     *              vocabulary (needs a vocab);
     *   0        : method default (full: exact vocabulary size; hash and
     *              unified need a budget, or rows=... in opts). */
    double budget;
    uint64_t seed;        /* initial values and (hash/unified) the hash salts */
    float init_scale;     /* rows ~ U(-s, s); default 0.05; 0 gives zeros (LR) */
    /* Added to every initial row value of the plain-row methods (full,
     * hash, unified, robe, adapt): rows ~ U(m - s, m + s).  Default 0;
     * nonzero is an error for other methods.  libffm and xLearn draw FFM/FM
     * factors from U[0, c/sqrt(k)): s = m = c / (2 sqrt(k)).  Only the
     * initial values depend on it, so it is not recorded in files. */
    float init_shift;
    es_optim_params opt;  /* SGD, ADAGRAD or ROWWISE_ADAGRAD for tables */
    /* Method-specific "key=value,..." checked against the method's option
     * table (es_storage_ops.opts) before create: an unknown key, a value of
     * the wrong type or out of range, or a key given twice with different
     * values is ES_EINVAL with the message
     *   "<method>: option <key>=<value>: <reason> (expected ...)".
     * The keys a method records (its resolved hyper-parameters) are written
     * to es_storage.meta and take precedence over budget solving, so a
     * saved storage is re-created with the same shapes by passing its meta
     * as opts (budget 0 or the saved byte budget, vocab NULL). */
    const char *opts;
    /* Precision of the row tables (issue 11; methods with ops->rows only,
     * ES_EINVAL otherwise): ES_PREC_FP32 (default), or a lower one with
     * qtrain saying how: ES_QTRAIN_QAT / ES_QTRAIN_ALPT train at it
     * (es_rows), ES_QTRAIN_NONE creates an empty code table for a load to
     * fill (a served model).  A byte budget counts the rows at this
     * precision (codes, scales, biases): the method is sized for an fp32
     * budget scaled by 4 dim / row bytes, then shrunk until the codes fit
     * (es__storage_create), so unified at int4 holds about 8x the rows it
     * holds at fp32.  A fraction budget stays a fraction of the fp32 full
     * table. */
    es_precision precision;
    int qtrain;
    /* Row sharding (training over several processes, docs/scale.md):
     * with shard_n > 1 a method with ops->row_map keeps only the rows r of
     * its table with r % shard_n == shard_rank (row r at local index
     * r / shard_n) and their optimizer state; the initial values are
     * those of the whole table (every rank draws the whole stream and
     * keeps its rows).  Such a storage is driven by the distributed step
     * (src/train/dist.c) only: its own lookup/backward would read local
     * indices as global ones.  0 or 1: the whole table. */
    int shard_rank, shard_n;
} es_storage_params;

/* Defaults: row-wise Adagrad (lr 0.05, eps 1e-8, init_acc 0), init_scale
 * 0.05, max_batch 256, seed 1, budget 0, method "hash", no opts. */
es_storage_params es__storage_params_default(void);

/* Statistics for `embstore inspect`: per-field rows used and collisions. */
typedef struct es_field_stats {
    uint64_t distinct;    /* distinct values seen (from the vocab, or 0) */
    uint64_t rows;        /* rows this field can address */
    uint64_t rows_used;   /* rows with at least one value mapped to them */
    uint64_t collisions;  /* values sharing a row with another value */
} es_field_stats;
/* field_stats sets rows_used and collisions to ES_STATS_UNKNOWN when there
 * is no vocab or its scratch memory cannot be allocated. */
#define ES_STATS_UNKNOWN UINT64_MAX

typedef struct es_storage es_storage;

/* ---- declarative method options -------------------------------------------
 * Each method lists its "key=value" options once, in a static table of
 * es__opt_spec referenced from its es_storage_ops.  The generic layer
 * (storage.c) parses s->p.opts against the table before the method's
 * create, methods read typed values with es__storage_opt_* and record the
 * values they resolve (rows from the budget, the seed, ...) with
 * es__storage_opt_set*, and the generic layer writes s->meta from the
 * recorded values in table order with the same syntax it parses, so what
 * is saved is what load reads back.  Adding an option is one line in the
 * method's table (plus the code that uses it). */
typedef enum {
    ES_OPT_UINT,  /* unsigned integer in [lo, hi] (digits only) */
    ES_OPT_FLOAT, /* finite number in [flo, fhi], ends open per ES_OPT_*_OPEN */
    ES_OPT_ENUM,  /* one of the '|'-separated names in choices; the value is its index */
    ES_OPT_LIST,  /* unsigned integers in [lo, hi] in groups: "a/b:c/d" ('/' inside a
                     group, ':' between groups); the method checks the shape */
} es__opt_type;

#define ES_OPT_SIZES 1u   /* by itself sizes the table: no default budget is needed */
#define ES_OPT_LO_OPEN 2u /* FLOAT: flo excluded */
#define ES_OPT_HI_OPEN 4u /* FLOAT: fhi excluded */

typedef struct es__opt_spec {
    const char *name;
    es__opt_type type;
    uint64_t lo, hi;     /* UINT and LIST members */
    double flo, fhi;     /* FLOAT */
    const char *choices; /* ENUM: "mult|add|cat" */
    const char *def;     /* default as text, or NULL when resolved at create (help says how) */
    unsigned flags;      /* ES_OPT_* */
    const char *help;    /* one line for --help-storage */
    /* For the generic round-trip test: a valid non-default value, and the
     * other options it needs ("" for none), for a storage of 2 fields,
     * dim 8, per-field parameters unless the example says otherwise. */
    const char *example, *example_with;
} es__opt_spec;

/* Table-line helpers: name, range or choices, default, flags, help, example, needs. */
#define ES_OPT_U(n, l, h, d, fl, hp, ex, w) {n, ES_OPT_UINT, l, h, 0, 0, NULL, d, fl, hp, ex, w}
#define ES_OPT_F(n, l, h, d, fl, hp, ex, w) {n, ES_OPT_FLOAT, 0, 0, l, h, NULL, d, fl, hp, ex, w}
#define ES_OPT_E(n, ch, d, fl, hp, ex, w) {n, ES_OPT_ENUM, 0, 0, 0, 0, ch, d, fl, hp, ex, w}
#define ES_OPT_L(n, l, h, d, fl, hp, ex, w) {n, ES_OPT_LIST, l, h, 0, 0, NULL, d, fl, hp, ex, w}
/* the options most methods share */
#define ES_OPT_SHARE ES_OPT_U("share", 0, 1, "0", 0, "1: one parameter space for all fields; 0: one per field", "1", "")
#define ES_OPT_SEED ES_OPT_U("seed", 0, UINT64_MAX, NULL, 0, "initial values and hash salts (default: the run's seed)", "7", "")
#define ES_OPT_MIN_COUNT \
    ES_OPT_U("min_count", 1, UINT32_MAX, "1", 0, "values seen fewer times have no row of their own", "2", "")

/* One parsed option of a storage (es_storage.optv[i] for ops->opts[i]). */
typedef struct es__opt_val {
    const char *text;  /* given value in s->p.opts (not terminated), or NULL */
    size_t len;
    uint64_t u;        /* UINT; ENUM: the index */
    double f;          /* FLOAT */
    char *rec;         /* value recorded by the method (saved in meta), or NULL */
} es__opt_val;

struct es__row_map;
/* Tables an es__row_map lists in its arrays (qr's partitions; more: its
 * table() callback), and tensors one model file streams from the shards. */
#define ES_ROW_MAP_TABLES 4

#define ES__PIPE_SLOTS 8 /* the most batches the training pipeline holds (step_prepare's k) */

typedef struct es_storage_ops {
    const char *name;
    const char *summary;  /* one line for --help */
    /* Size from p (budget, vocab may be NULL unless the method needs it),
     * allocate, initialise with p->seed.  s->impl is the method's state.
     * On failure the method frees what it allocated (destroy is not called)
     * and sets err. */
    int (*create)(es_storage *s, const es_vocab *vocab, es_err *err);
    /* out[(r - r0), f, :] for rows r in [r0, r1). */
    void (*lookup)(es_storage *s, const es_batch *b, int r0, int r1, float *out);
    /* dout[n, F, dim] for the whole batch b; sparse update of touched params.
     * Errors (ES_ENOMEM when scratch cannot grow) leave a message in s->err. */
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
    /* 1 if create() needs a vocabulary even when the budget is given in
     * bytes (e.g. `full`, frequency-based methods); the trainer then builds
     * one.  Methods that work from hashes alone leave it 0, so training
     * with a byte budget streams the data without keeping per-value state. */
    int needs_vocab;
    /* The method's options (see es__opt_spec), and the budget a training
     * run that gives none uses (ES_DEFAULT_BUDGET for methods sized by a
     * budget, 0 for methods that size themselves, e.g. full, mde), unless
     * an ES_OPT_SIZES option is given. */
    const es__opt_spec *opts;
    int n_opts;
    double default_budget;
    /* 1 if every trainable parameter of the method is a plain row of
     * es_rows tables, updated only through es__gradacc_apply, and read
     * into the output as it is (pooled, not multiplied with other
     * parameters): FTRL and lazy L2 (row_l2) need that, and the generic
     * layer refuses them for the other methods. */
    int plain_rows;
    /* Optional: the method's row tables when the method can be quantized
     * after training (every parameter is a row of them): table i, or NULL
     * when i is past the last (full, hash, unified, adapt: one table read
     * by es__rows_lookup; qr: its p partition tables, combined after each
     * row is dequantized; multihash: its pool; mde: its hashed tail, then
     * one table per tier; robe: its array as blocks of Z).  Every table of a storage has one precision.
     * NULL for the methods that cannot yet (es__storage_quantize refuses
     * them). */
    struct es_rows *(*rows)(es_storage *s, int i);
    /* Optional: called after every table of ops->rows changed precision
     * (es__storage_convert, and the conversions of es__storage_create), so
     * the method can free what no table uses now and set param_bytes /
     * state_bytes for its other parts (mde: the fp32 array its tiers were
     * views of).  May be NULL. */
    void (*after_convert)(es_storage *s);
    /* 1 if the form a saved model serves is derived from the training state
     * at save and can predict differently from the storage in training
     * (pep and deeplight: the sparse table; dedup: the merged rows): the
     * trainer then reports the final validation and test metrics of the
     * model as saved (es_train), not of the one in memory. */
    int derived_serving;
    /* Optional (methods whose parameters are rows of es_rows tables, read
     * as they are or combined with the value's other rows by a sum, a
     * product or side by side: full, hash, unified, adapt, qr; or by the
     * method's own callbacks (mde, with its replicated projections;
     * multihash, its importance weights a second table): how a key maps
     * to rows (es__row_map), for the distributed step (src/train/dist.c),
     * which looks rows up and updates them on the rank that owns them.  ES_EINVAL for options it cannot map (qr's
     * op=cat with dim not a multiple of the partitions: rows of two
     * widths).  Methods without it are refused under several processes.
     * NULL otherwise. */
    int (*row_map)(es_storage *s, struct es__row_map *out);
    /* Optional, for a method with few parameters and no row table (dhe,
     * tt): trained across processes *replicated* (src/train/dist.c): every
     * rank holds all its parameters, looks its rows up with ops->lookup,
     * and its gradient joins the dense layers' in the fixed-order reduce.
     *   rep_floats    the floats of that gradient (and of whatever marks
     *                 what an update touches);
     *   rep_backward  the gradient ops->backward would compute for batch b,
     *                 ADDED into acc[rep_floats], with nothing updated;
     *   rep_apply     the update ops->backward makes from such a gradient
     *                 (acc: the sum over the ranks' parts of a batch).
     * backward(b) is then rep_apply of rep_backward(b) into zeros. */
    size_t (*rep_floats)(es_storage *s);
    int (*rep_backward)(es_storage *s, const es_batch *b, const float *dout, float *acc);
    void (*rep_apply)(es_storage *s, const float *acc);
    /* Optional: called by a training step (es_model_train_batch), on one
     * thread, before its lookup of b; the lookup and the backward that
     * follow are of the same b, unchanged between them (s->step == b for
     * both), so a method may resolve b's keys once, here, and reuse the
     * rows in both (full: its key map's probe, value by value in the
     * lookup and again in the backward, was a quarter of an LR epoch;
     * here the whole batch is probed with the next slots prefetched).
     * Without it, or with s->step not b, lookup and backward each resolve
     * as before. */
    void (*step_begin)(es_storage *s, const es_batch *b);
    /* Optional: called by the training pipeline's reader thread for a
     * batch it has just read into its slot k (0 <= k < ES__PIPE_SLOTS),
     * while a step on another slot's batch may be under way on the
     * training thread; the batch is not changed until after its own step.
     * A method may do there the part of step_begin that reads only what training leaves
     * unchanged (full: the key map's probes and the batch's deduplication), for step_begin to pick up by
     * b->val.  Must give the same step as without it. */
    void (*step_prepare)(es_storage *s, const es_batch *b, int k);
    /* Optional: a multi-stage method (search -> derive -> retrain; see
     * es__staged below and docs/methods.md "Multi-stage training").  NULL
     * for every single-stage method, which es_train runs as before. */
    const struct es__staged *staged;
} es_storage_ops;

/* ---- multi-stage methods ---------------------------------------------------
 * A method whose storage only *searches* for the table to serve (AutoDim:
 * a dimension per field) declares its stages here; es_train (train.c)
 * then runs, on the training rows:
 *   search   search_epochs() passes over the training rows; after every
 *            training batch (an ordinary es_model_train_batch: backward
 *            updates the weights, the architecture held fixed) one
 *            architecture step on the next batch of the validation rows
 *            carved from the training file (--valid-frac; never the test
 *            file): the model's loss gradient at the embeddings is passed
 *            to arch_backward, which updates only the architecture
 *            parameters (the net's gradients are dropped);
 *   derive   derive() turns the searched storage into the method and
 *            options of the table to serve, fitted to the budget;
 *   retrain  a new model with that storage, from scratch (the run's seed),
 *            trained as any single-stage run (early stopping, refit).
 * Each stage's name, seconds and result go to es_train_result.stages.
 * Checkpoints (--checkpoint-every) record the stage ("ckpt.stage"), so
 * --resume continues inside the search or inside the retrain; the stage
 * boundary itself is checkpointed (the fresh retrain model at row 0).
 * This generalizes what pep and deeplight do inside one storage (a search
 * phase, then a retrain under the found mask): those need no validation
 * rows and keep one storage, so they stay single-stage; a method whose
 * search needs validation data or whose result is another storage method
 * is staged. */
typedef struct es__staged {
    /* passes over the training rows the search makes (>= 1) */
    int (*search_epochs)(const es_storage *s);
    /* The architecture step: dout [n, F, dim] of the loss of validation
     * batch b at the lookup's output; update only the architecture
     * parameters.  Errors as backward.  May be NULL (optembed: its
     * thresholds train with the weights): then the search passes make no
     * architecture steps. */
    int (*arch_backward)(es_storage *s, const es_batch *b, const float *dout);
    /* Evaluation mode: 1 = deterministic lookups (no sampling noise), for
     * the search's validation metrics; 0 = training (the default). */
    void (*set_eval)(es_storage *s, int on);
    /* The table to serve: method name (static string) and its options
     * "k=v,..." into opts[cap], fitted to the storage's byte budget
     * (vocab may be NULL); a JSON object describing the choice into
     * json[jcap] (for the result).  ES_EBUDGET when no derived table fits. */
    int (*derive)(es_storage *s, const es_vocab *vocab, const char **method, char *opts, size_t cap, char *json, size_t jcap,
                  es_err *err);
    /* Optional (NULL: none, autodim): a search over configurations of the
     * trained search storage (optembed: an evolutionary search over
     * per-field dimensions), run after the search passes and before
     * derive.  The storage sets its current configuration, then calls
     * evaluate(ctx, &auc), which runs the model over the carved
     * validation rows in evaluation mode (set_eval on) and gives their
     * AUC; evaluate's non-zero return (an ES_E* code, message in err) is
     * returned as it is.  It runs inside the search stage without
     * checkpoints inside it, so it must be deterministic from the
     * storage's state (a resumed search runs it again from the start). */
    int (*search_finish)(es_storage *s, int (*evaluate)(void *ctx, double *auc), void *ctx, es_err *err);
} es__staged;
/* Helpers of the dimension-search methods (autodim, optembed):
 * es__search_dims: the candidate dimensions from option dims=c0:c1:...
 *   (ascending, each <= --dim, at most max) or the default 2,4,8,16,32
 *   capped at --dim (just --dim when it is below 2); ES_EINVAL naming the
 *   method and the bad entry.
 * es__split_rows_vocab: R >= F rows over F fields: one each, then with a
 *   vocabulary in proportion to distinct_f + 1, capped there (water-filling:
 *   what capped fields cannot take goes round again), without one equally;
 *   rest_equally: rows no capped field can take go equally to all fields
 *   (else they stay unallocated). */
int es__search_dims(es_storage *s, const char *method, int max, int *cand, int *C, es_err *err);
void es__split_rows_vocab(uint64_t R, int F, const es_vocab *vocab, uint64_t *rows, int rest_equally);

#define ES_STORAGE_OPTS(table) .opts = table, .n_opts = (int)ES_ARRAY_LEN(table)

#define ES_STORAGE_META_MAX 4096

struct es_storage {
    const es_storage_ops *ops;
    es_storage_params p;     /* copy; strings owned (method, opts) */
    double budget_bytes;     /* resolved budget in bytes (0 = unbounded) */
    size_t param_bytes;      /* learnable parameters, as allocated */
    size_t aux_bytes;        /* lookup structures needed to serve (maps) */
    size_t state_bytes;      /* optimizer state */
    /* Method's resolved hyper-parameters, "k=v,k=v" (saved with the model;
     * fed back as opts on load).  Large enough for a per-field row list of
     * a few hundred fields; a method returns ES_ERANGE if it does not fit. */
    char meta[ES_STORAGE_META_MAX];
    es__opt_val *optv;       /* [ops->n_opts] parsed from p.opts */
    void *impl;
    es_err err;
    /* The batch of the training step under way (es_model_train_batch sets
     * it before the step's lookup and clears it after its backward; see
     * ops->step_begin), else NULL. */
    const es_batch *step;
};

/* Registry (registry.c): one line per method. */
const es_storage_ops *es__storage_find(const char *name);
int es__storage_n_methods(void);
const es_storage_ops *es__storage_method_at(int i);

/* Create a storage by method name.  vocab may be NULL when the method and
 * budget do not need one.  Checks the parameters (ES_EINVAL with a message
 * naming the bad one), resolves the budget into s->budget_bytes, calls the
 * method's create and checks its byte accounting against the budget. */
int es__storage_create(es_storage **out, const es_storage_params *p, const es_vocab *vocab, es_err *err);
void es__storage_free(es_storage *s);
/* Bytes of the uncompressed `full` table for a vocabulary (parameters only,
 * rows with count >= min_count plus one OOV row per field).  SIZE_MAX if the
 * figure overflows. */
size_t es__storage_full_bytes(const es_vocab *vocab, int dim, int min_count);
/* Thin wrappers over s->ops (same contracts); lookup and backward also
 * check the batch shape and row range (ES_EINVAL, nothing written).
 * errmsg is the last error's message. */
int es__storage_lookup(es_storage *s, const es_batch *b, int r0, int r1, float *out);
int es__storage_backward(es_storage *s, const es_batch *b, const float *dout);
int es__storage_tensors(es_storage *s, es_tensor_ref *refs, int max);
int es__storage_after_load(es_storage *s);
const char *es__storage_errmsg(const es_storage *s);
/* Post-training quantization: convert s's row table to precision p in
 * place (es__rows_quantize with encode; fp32 weights and optimizer state
 * freed), and update param_bytes (codes, scale and bias) and state_bytes.
 * ES_EINVAL naming the method for methods without ops->rows, or when the
 * table already holds codes; the errors of es__rows_quantize.  Unchanged
 * on failure.  es__storage_precision: the table's precision (FP32 for
 * methods without ops->rows). */
int es__storage_quantize(es_storage *s, es_precision p, es_err *err);
/* Convert every table of s (ops->rows) to precision p, all or none, and
 * update param_bytes / state_bytes; encode as in es__rows_quantize (0: the
 * codes are zeroed for a load to fill).  Errors of es__rows_encode, with
 * the table number in the message when there are several. */
int es__storage_convert(es_storage *s, es_precision p, int encode, es_err *err);
es_precision es__storage_precision(const es_storage *s);
/* How the storage trains at its precision (ES_QTRAIN_*; NONE for fp32). */
int es__storage_qtrain(const es_storage *s);
/* The error a quantized storage gives a training step (ES_EINVAL, with the
 * precision in the message), or ES_OK for an fp32 one. */
int es__storage_check_trainable(const es_storage *s, es_err *err);

/* ---- a storage inside a container file (storage_io.c) ---------------------
 * The layout of a storage in a file (the storage part of a model file, and
 * a table file): metadata "storage.*" and tensors "storage.<name>", the
 * optimizer state "opt.<x>" as "opt.storage.<x>".
 * es__storage_file_name: the file name of a tensor the method lists as
 *   ref_name; ES_EINVAL when it does not fit ES_TENSOR_NAME_MAX.
 * es__storage_write: add s's metadata and tensors (optimizer state only
 *   with with_state) to w; the arrays must stay unchanged until commit.
 * es__storage_params_read: the parameters to re-create a saved storage
 *   from a file's metadata (vocab NULL): method, dim, n_fields and
 *   max_batch (0 when the file lacks them), budget in bytes, seed,
 *   init_scale, optimizer, and opts = es__storage_load_opts of the
 *   resolved options, the caller's, and the keys files from before the
 *   option tables kept apart (storage.min_count, .chunks, .subtables,
 *   .share) (allocated into *opts, which sp->opts points to; free it after
 *   the create).  Strings point into f.  Every number is parsed strictly
 *   (core.h es__meta_*): ES_EFORMAT names a missing or malformed key.
 * es__storage_read_tensors: put the file's tensors into the arrays of s
 *   (created from those parameters), checking dtype and size, in place
 *   where possible (pages moved or mapped; *mapped, may be NULL, grows by
 *   the bytes so placed), then call after_load.  Optimizer state is read
 *   only with with_state (and must then be present).  ES_EFORMAT for a
 *   missing or mismatched tensor. */
int es__storage_file_name(const char *ref_name, char *out, size_t cap);
int es__storage_write(es_fwriter *w, es_storage *s, int with_state, es_err *err);
/* es__storage_write of a shard (shard_n > 1) as the whole tables it is a
 * part of, without optimizer state: the n row tensors (tensor[i], e.g.
 * "weight", or qr's "table0", "table1", ...) declared streamed with rows[i]
 * rows, whose bytes the caller appends (es__fwriter_append, at the index
 * es__fwriter_tensor_index gives for the file name "storage.<tensor>";
 * rows[i]: the tensor's first dimension in the whole storage, rows of a
 * table or floats of mde's flat "rows.weight"),
 * param_bytes the whole tables', and no storage.shard: the file is the one
 * the whole storage writes (src/train/dist.c, es__dist_write_rows). */
typedef struct es__whole_table {
    /* tensor[n], rows[n]: one entry per row table at most (es__dist_tables
     * allocates them; es__whole_table_free), not a fixed few: mde at a
     * precision streams one code tensor per tier */
    int n;
    char (*tensor)[ES_TENSOR_NAME_MAX];
    uint64_t *rows;
    size_t param_bytes;
    const char *opts; /* storage.opts to record (the resolved ones, as a load sees them), NULL: the shard's */
} es__whole_table;
int es__storage_write_whole(es_fwriter *w, es_storage *s, const es__whole_table *wt, es_err *err);
void es__whole_table_free(es__whole_table *wt);
int es__storage_params_read(const es_file *f, const char *path, es_storage_params *sp, char **opts, es_err *err);
int es__storage_read_tensors(es_storage *s, es_file *f, int with_state, const char *path, size_t *mapped, es_err *err);

/* ---- options: accessors for methods, and helpers for the callers ----------
 * The key must be in the method's table, with the accessor's type (an
 * assert otherwise: a method bug).
 * es__storage_opt_given: 1 if opts gave the key.
 * es__storage_opt_u64 / _int / _f64 / _enum: the given value, else the
 *   table's default (0 when the table has none: check _given first).
 * es__storage_opt_text: the given text (*len bytes, not terminated) or NULL.
 * es__storage_opt_list: a LIST option as n groups of g members; *found = 0
 *   when absent, ES_EINVAL with a message when the shape differs.
 * es__storage_opt_set / _set_u64 / _set_list: record the resolved value
 *   (formatted like the parser reads it; asserted to parse back) to be
 *   written to s->meta after create; ES_ENOMEM with a message. */
int es__storage_opt_given(const es_storage *s, const char *key);
uint64_t es__storage_opt_u64(const es_storage *s, const char *key);
int es__storage_opt_int(const es_storage *s, const char *key);
double es__storage_opt_f64(const es_storage *s, const char *key);
int es__storage_opt_enum(const es_storage *s, const char *key);
const char *es__storage_opt_text(const es_storage *s, const char *key, size_t *len);
int es__storage_opt_list(const es_storage *s, const char *key, int n, int g, uint64_t *out, int *found, es_err *err);
int es__storage_opt_set(es_storage *s, const char *key, es_err *err, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
int es__storage_opt_set_u64(es_storage *s, const char *key, uint64_t v, es_err *err);
int es__storage_opt_set_list(es_storage *s, const char *key, const uint64_t *v, int n, int g, es_err *err);
/* The effective value of option i as text: recorded, else given, else the
 * default ("" when none), in buf; for tests and inspection. */
const char *es__storage_opt_value(const es_storage *s, int i, char *buf, size_t cap);
/* Budget a training run without one uses for `method` with `opts`:
 * the method's default_budget, or 0 when opts give an ES_OPT_SIZES option
 * or the method is unknown (its create reports that).  ES_EINVAL with the
 * option message when opts do not parse. */
int es__storage_default_budget(const char *method, const char *opts, double *budget, es_err *err);
/* min_count for es__storage_full_bytes: the method's option when it has
 * one (given in p->opts, else its default), else 1. */
int es__storage_min_count(const es_storage_params *p);
/* Opts to re-create a saved storage (es__model_load): the resolved keys,
 * then the user's keys the method knows and resolved does not give, then
 * legacy (pre-option-table files: "min_count=..,chunks=..,subtables=..,
 * share=..") keys likewise.  Returns a malloc'd string or NULL (out of
 * memory).  Unknown method: resolved + user, unchanged. */
char *es__storage_load_opts(const char *method, const char *resolved, const char *user, const char *legacy);
/* Help for --help-storage: the method's summary and option table, or every
 * method's when method is NULL; snprintf-like (the length needed), or
 * ES_EINVAL for an unknown method. */
int es__storage_help(const char *method, char *buf, size_t cap, es_err *err);

/* Salt of (field, chunk) for hashed methods: one function so that `hash`
 * with share=1 and `unified` with k=1, T=1 are the same model. */
uint64_t es__storage_salt(uint64_t seed, int field, int chunk);

/* ---- helpers shared by row-table methods (rows.c) -------------------------
 * A dense row table [n_rows, dim] with its sparse optimizer state, and a
 * gradient accumulator that sums the gradients of duplicate rows in a
 * batch before one optimizer update per distinct row. */
typedef struct es_rows {
    float *w;          /* [n_rows * dim], 64-byte aligned */
    float *acc;        /* adagrad: [n_rows*dim]; rowwise: [n_rows]; ftrl: [n_rows][2][dim]
                        * (z then n of each row); sgd: NULL */
    /* Lazy L2 (opt.row_l2 > 0): step counts the gradient applications of
     * this table (es__gradacc_apply), last[r] the step row r's weight decay
     * has been applied through; NULL / 0 otherwise.  A row not touched
     * since step s holds its weights as of s: the decay it owes is applied
     * when it is next touched (or by es__rows_catch_up). */
    int64_t *last;     /* [n_rows] */
    int64_t step;
    /* Frequency-aware lazy L2 (opt.row_l2_freq > 0 as well): touch[r] the
     * number of gradient updates row r has taken (saturating at
     * UINT32_MAX), which sets its decay strength (es__row_decay); NULL
     * otherwise. */
    uint32_t *touch;   /* [n_rows] */
    uint64_t n_rows;
    int dim;
    es_optim_params opt;
    /* Precision (post-training quantization, issue 11): ES_PREC_FP32 keeps
     * the weights in w (training and serving); any other precision keeps
     * only codes in q, n_rows rows of es__prec_row_bytes(prec, dim) bytes
     * in quant.h's fused layout, with w and the optimizer state freed
     * (NULL): such a table serves (lookup pools with es__dequant_axpy) and
     * refuses training. */
    es_precision prec;
    uint8_t *q;        /* [n_rows * row_bytes], 64-byte aligned, or NULL */
    /* Training at a precision (es__rows_qtrain, issue 11): qtrain is
     * ES_QTRAIN_NONE for an fp32 table or a served code table, else:
     *   QAT:  w is the fp32 master copy (with the optimizer state as for
     *         fp32), q its codes rounded to nearest; lookups read q (the
     *         forward sees exactly what serving will), an update changes
     *         the master row and re-encodes it (straight-through: the
     *         gradient at the dequantized row is applied to the master);
     *   ALPT: no w at all; q holds symmetric codes scale * (code - z)
     *         (es__quant_row_step) with a learned per-row step: an update
     *         dequantizes the row, applies the optimizer to it, moves the
     *         step by LSQ's gradient and re-encodes with stochastic
     *         rounding (es__rows_update).
     * qstep [n_rows] is ALPT's step as a float (the row's f16 scale is it
     * rounded), qstep_acc [n_rows] the Adagrad accumulator of ln(step),
     * qcount [n_rows] how many times the row was re-encoded since
     * es__rows_qtrain (wrapping), qtmp a row of scratch; all NULL
     * otherwise.  ALPT's stochastic rounding of a row draws from a stream
     * keyed by (qseed, the row's index in the whole table, its qcount),
     * not from one stream in update order: a row rounds the same whatever
     * rows were updated before it, so threads and the ranks of a sharded
     * table (shard_r0, shard_n) round as one process does.  qseed is
     * saved with the state ("opt.qseed"): a reload keys the rounding as
     * the run that saved it, whatever seed the new storage was given. */
    int qtrain;
    float *qstep, *qstep_acc, *qtmp;
    uint32_t *qcount;
    uint64_t qseed;
    /* A shard (es__rows_init_shard_at, shard_n > 1) holds the whole
     * table's rows shard_r0 + li * shard_n at local indices li; 0 for a
     * whole table. */
    uint64_t shard_r0, shard_n;
    /* 1 when w and acc point into arrays the method owns (mde's tiers are
     * views of one allocation): es__rows_adopt, es__rows_qtrain (ALPT) and
     * es__rows_free then drop those two pointers without freeing them
     * (the codes and ALPT's arrays are the table's own either way). */
    int view;
} es_rows;

/* How a storage with a precision other than fp32 trains (es_storage_params.qtrain). */
#define ES_QTRAIN_NONE 0 /* fp32 training; a code table only serves */
#define ES_QTRAIN_QAT 1  /* fp32 master copy, fake-quantized forward, straight-through gradient */
#define ES_QTRAIN_ALPT 2 /* codes only, learned step (LSQ), stochastic rounding on update */
const char *es__qtrain_name(int mode); /* "none", "qat", "alpt" */
int es__qtrain_parse(const char *s, int *mode);

/* Allocate w (exactly n_rows*dim floats) and the optimizer state, fill w
 * with U(-init_scale, init_scale) drawn row-major from rng (zeros, and no
 * draws, when init_scale is 0) and the accumulators with opt->init_acc.
 * ES_EINVAL for ADAM or a bad shape, ES_ENOMEM; t is zeroed on failure. */
int es__rows_init(es_rows *t, uint64_t n_rows, int dim, const es_optim_params *opt, es_rng *rng, float init_scale);
/* es__rows_init for the shard of rank `rank` of n (n <= 1: the whole
 * table): t holds the rows r < n_rows with r % n == rank (local index
 * r / n), with the values the whole table would have (the stream is drawn
 * for every row, the others' rows discarded).  ES_EINVAL also when the
 * shard would be empty (n_rows <= rank). */
int es__rows_init_shard(es_rows *t, uint64_t n_rows, int dim, const es_optim_params *opt, es_rng *rng, float init_scale,
                        int rank, int n);
/* es__rows_init_shard of a table whose row r is row first + r of a
 * global row space sharded over n (es__row_map): t holds the rows r with
 * (first + r) % n == rank, in order; the stream is drawn for every row
 * as es__rows_init draws it.  ES_EINVAL also when that is none. */
int es__rows_init_shard_at(es_rows *t, uint64_t n_rows, int dim, const es_optim_params *opt, es_rng *rng, float init_scale,
                           uint64_t first, int rank, int n);
/* Add shift to every weight of a freshly initialised table (init_shift). */
void es__rows_shift(es_rows *t, float shift);
void es__rows_free(es_rows *t);
size_t es__rows_param_bytes(const es_rows *t);
size_t es__rows_state_bytes(const es_rows *t);
/* One optimizer update of row r with gradient g[dim]; with lazy L2, the
 * row's missed decay (es__row_decay, through t->step) first. */
void es__rows_update(es_rows *t, uint64_t r, const float *g);
/* Lazy L2: apply every row's owed decay now (last[r] = step); a no-op
 * without row_l2.  Tests compare against eager decay with it. */
void es__rows_catch_up(es_rows *t);
/* Copy row src's weights and optimizer state (and lazy-L2 step and touch
 * count) to dst. */
void es__rows_copy_row(es_rows *t, uint64_t dst, uint64_t src);
/* Tensor refs for w ("weight", f32 [n_rows, dim]) and, when there is
 * optimizer state, "opt.acc" (f32 [n_rows, dim] or [n_rows]) or, for FTRL,
 * "opt.ftrl_zn" (f32 [n_rows, 2, dim]), and with lazy L2 "opt.last"
 * (i64 [n_rows]) and "opt.step" (i64 [1]), and with frequency-aware lazy
 * L2 "opt.touch" (u32 [n_rows]).  Returns the
 * number of refs (written only when refs != NULL and they fit in max). */
int es__rows_tensors(es_rows *t, es_tensor_ref *refs, int max);
/* Convert an fp32 table to precision p in place: with encode, every row of
 * w is quantized (nearest rounding, quant.h) into a new code array;
 * without, the code array is zeroed (a load fills it).  Then w and the
 * optimizer state are freed.  p == FP32 on an fp32 table is a no-op.
 * ES_EINVAL when the table already holds codes, ES_ERANGE (message names
 * the row) when a row cannot be encoded (not finite, beyond the f16 range),
 * ES_ENOMEM; the table is unchanged on failure.  Tensors then list only
 * "weight.q" (u8 [n_rows, row_bytes]). */
int es__rows_quantize(es_rows *t, es_precision p, int encode, es_err *err);
/* es__rows_quantize in two steps, so that a storage with several tables
 * converts all of them or none: es__rows_encode makes the code array
 * (*q, NULL for p == FP32) without touching t, with es__rows_quantize's
 * errors; es__rows_adopt installs it (frees w and the optimizer state). */
int es__rows_encode(const es_rows *t, es_precision p, int encode, uint8_t **q, es_err *err);
void es__rows_adopt(es_rows *t, es_precision p, uint8_t *q);
/* Turn an fp32 table (fresh from es__rows_init) into a table that trains
 * at precision p by mode (see es_rows): QAT (fp16, int16, int8, int4,
 * int2) encodes every row to nearest and keeps w as the master copy; ALPT
 * (int16, int8, int4, int2) starts row r's step at max(max|row r|, 0.01)
 * / Qp (Qp = z - 1, at least 1), encodes it with stochastic rounding
 * (keyed by seed, see es_rows), and frees w.  ES_EINVAL for a mode and precision
 * that do not go together or a table that is not fp32, ES_ENOMEM,
 * ES_ERANGE (a row that cannot be encoded); unchanged on failure. */
int es__rows_qtrain(es_rows *t, es_precision p, int mode, uint64_t seed, es_err *err);
/* Row r as the forward pass sees it: a pointer into w for an fp32 table,
 * else row r dequantized from the codes into buf[dim] and buf returned
 * (QAT: the codes, not the master). */
const float *es__rows_get(const es_rows *t, uint64_t r, float *buf);
/* Check a code table's rows: every int row's scale is finite and >= 0 and
 * its bias finite, every fp16 value finite (what encoding guarantees).
 * Returns the first bad row, or UINT64_MAX when all are good (or the table
 * is fp32). */
uint64_t es__rows_check_codes(const es_rows *t);

typedef struct es_gradacc {
    uint64_t *keys;    /* open-addressing map: row id -> slot */
    int32_t *slot;     /* -1 = empty */
    size_t map_cap;    /* power of two, >= 2 * cap */
    float *g;          /* [cap, dim] summed gradients */
    uint64_t *rows;    /* [cap] row id of each slot, insertion order */
    size_t cap, n;
    int dim;
} es_gradacc;

/* cap: distinct rows expected per batch (grown, amortised, when exceeded). */
int es__gradacc_init(es_gradacc *a, size_t cap, int dim);
void es__gradacc_free(es_gradacc *a);
void es__gradacc_clear(es_gradacc *a);
/* The summed-gradient row [dim] of table row `row`, zeroed when the row is
 * new in this batch (slots keep insertion order).  NULL when the
 * accumulator had to grow and could not (nothing else changes). */
float *es__gradacc_row(es_gradacc *a, uint64_t row);
/* Apply one optimizer update per accumulated row to table t (in insertion
 * order, so a 1-thread run is deterministic), then clear. */
void es__gradacc_apply(es_gradacc *a, es_rows *t);
/* The same update for n distinct rows[i] with summed gradients g[i * dim]
 * (a method that deduplicates a step's rows itself). */
void es__rows_apply(es_rows *t, const uint64_t *rows, const float *g, size_t n);
/* es__rows_apply with the sums formed where they are applied: sum(ctx, i0,
 * i1) writes g[i * dim] for rows [i0, i1), and each thread that updates a
 * range of the rows sums that range first, so a method's summing runs on
 * the threads too.  Row i's sum may not depend on how the rows are split
 * (a method sums each row's gradients in a fixed order). */
void es__rows_sum_apply(es_rows *t, const uint64_t *rows, float *g, size_t n, void (*sum)(void *ctx, size_t i0, size_t i1),
                        void *ctx);
/* Bytes held by the accumulator (training scratch; not in any budget). */
size_t es__gradacc_bytes(const es_gradacc *a);

/* ---- the shared lookup / backward kernels -----------------------------------
 * A method maps the keys of a (row, field) pair to table rows with a
 * resolve function: ids[i*k + j] = row of value keys[i], chunk j.  Each
 * value contributes k chunk rows of t->dim floats, concatenated into the
 * field's k * t->dim output.  The kernels resolve a block of upcoming
 * pairs, prefetch the rows, then pool them (copy or scale for the first
 * value, axpy for the rest), so the common single-value case costs one
 * row copy. */
typedef void (*es__resolve_fn)(const void *ctx, int field, const uint64_t *keys, size_t n, uint64_t *ids);
#define ES_RESOLVE_BLOCK 128   /* row ids resolved ahead of use; k must be <= this / 2 */
void es__rows_lookup(const es_rows *t, int k, es__resolve_fn fn, const void *ctx, const es_batch *b, int r0, int r1,
                     float *out);
/* es__rows_lookup with k = 1 and the rows already resolved: ids[v] is the
 * row of b->val[v] for every value of the batch (a step's rows resolved
 * ahead).  No resolve calls; the rows are prefetched a few values ahead
 * and pooled as es__rows_lookup pools them (the same bits). */
void es__rows_lookup_ids(const es_rows *t, const es_batch *b, const uint64_t *ids, int r0, int r1, float *out);
/* Accumulate dout into ga per distinct row and apply the optimizer.
 * ES_ENOMEM (nothing applied) if ga cannot grow. */
int es__rows_backward(es_rows *t, es_gradacc *ga, int k, es__resolve_fn fn, const void *ctx, const es_batch *b,
                      const float *dout);
/* Field statistics from the vocab's keys of `field` resolved with fn.
 * For k > 1, rows_used counts distinct (chunk, row) pairs and collisions
 * counts values whose whole k-row tuple equals another value's. */
void es__rows_field_stats(int k, es__resolve_fn fn, const void *ctx, const es_vocab *vocab, int field,
                          uint64_t rows, es_field_stats *out);

/* A method's rows as the distributed step sees them (ops->row_map): one
 * global row space of `rows` rows, made of n_t tables (a one-table
 * method: n_t = 1; qr: its p partition tables; mde: its tiers, then its
 * hashed rows), table i holding global rows [base[i], base[i + 1]),
 * base[0] = 0 and base[n_t] = rows.  Up to ES_ROW_MAP_TABLES tables are
 * listed in t[] and base[]; a method with more sets table() and bases[]
 * instead (es__row_map_table / es__row_map_base read either).  Sharded
 * over N processes, table i keeps its global rows r with r % N == rank
 * (es__rows_init_shard_at), so rank k's local index r / N runs through
 * the tables in order: table i holds the local indices [lo_i, lo_i +
 * n_rows), lo_i the rows r < base[i] the rank owns (a table may hold none
 * on a rank).  The resolve function gives k global rows per value (those
 * of its lookup/backward, offset by the table's base), combined by
 * `combine`:
 *   ES_COMBINE_CAT   side by side, k chunks of t[0]->dim floats (k * dim
 *                    = the field's output), pooled as es__rows_lookup does;
 *   ES_COMBINE_SUM   added, each row of the output's width:
 *                    o = 0, then o += wt * e_j for j = 0 .. k-1 (es__axpy);
 *   ES_COMBINE_PROD  multiplied element-wise, each row of the output's
 *                    width: o = 0, then o[d] += ((wt * e_0[d]) * e_1[d]) ...;
 *   ES_COMBINE_SLICES side by side as CAT, but pooled as SUM: o = 0, then
 *                    o[j dim .. (j + 1) dim) += wt * e_j (es__axpy)
 * (qr's op=add, op=mult and op=cat: the float operations, in their order,
 * of the method's own lookup and backward, so that any number of
 * processes computes the embeddings one process does).  These four need
 * every table of one width and precision.
 *   ES_COMBINE_METHOD the method's callbacks combine a value's rows, and
 *                    its tables may differ in width (mde: a tier's row
 *                    times the tier's projection; multihash: k pool rows
 *                    weighted by the importance row).  tab[j] is the table
 *                    of the value's row j, e[j] the row as floats (a table
 *                    at a precision: its codes dequantized by
 *                    es__dequant_row, the values es__rows_get gives;
 *                    multihash refuses a precision):
 *     pool        ADDS wt times the value's vector into out[E] (from a
 *                 zeroed out per (row, field) pair, value by value, in the
 *                 method's lookup order);
 *     pool_grad   row j's gradient for the output gradient dout[E] into
 *                 g[j] (t[tab[j]]'s width), weight 1: the step sends it
 *                 with the value's weight, and the owner sums and applies
 *                 it as any row's;
 *     pool_grad_wt in place of pool_grad: row j's gradient into g[j] and
 *                 the weight the owner adds it with into w[j]
 *                 (es__axpy(acc, w[j], g[j])), given the value's weight
 *                 wt: a backward that adds (wt a_j) dout sends dout with
 *                 weight wt a_j, one that adds the rounded wt x sends that
 *                 with weight 1 (an exact add), so the owners' sums are
 *                 the method's own backward's, float for float (multihash);
 *     dense       floats of the gradient of the method's replicated
 *                 parameters (every rank holds them whole, as the dense
 *                 layers: mde's projections), with what marks what an
 *                 update touches; dense_grad ADDS a value's share (weight
 *                 wt, output gradient dout) into acc[dense], the step sums
 *                 them per block of the batch in the dense layers' fixed
 *                 tree, and dense_apply makes the update from that sum once
 *                 the rows' gradients (which read the parameters before
 *                 it) are computed;
 *     tensor      the storage tensor holding table i's rows (tables may
 *                 share one, one after the other: mde's fp32 tiers in
 *                 "rows.weight"; the name may live in a buffer of self
 *                 that the next call reuses); NULL: the tensor whose data
 *                 is the table's rows. */
enum { ES_COMBINE_CAT = 0, ES_COMBINE_SUM = 1, ES_COMBINE_PROD = 2, ES_COMBINE_SLICES = 3, ES_COMBINE_METHOD = 4 };
typedef struct es__row_map {
    es_rows *t[ES_ROW_MAP_TABLES];
    uint64_t base[ES_ROW_MAP_TABLES + 1];
    es_rows *(*table)(void *self, int i); /* more tables: table i, and bases[n_t + 1] */
    const uint64_t *bases;
    int n_t;
    int k, combine;
    es__resolve_fn fn;
    const void *ctx;
    uint64_t rows;
    /* ES_COMBINE_METHOD */
    void *self;
    void (*pool)(void *self, const int *tab, const float *const *e, float wt, float *out);
    void (*pool_grad)(void *self, const int *tab, const float *const *e, const float *dout, float *const *g);
    void (*pool_grad_wt)(void *self, const int *tab, const float *const *e, float wt, const float *dout, float *const *g, float *w);
    size_t dense;
    void (*dense_grad)(void *self, const int *tab, const float *const *e, float wt, const float *dout, float *acc);
    void (*dense_apply)(void *self, const float *acc);
    const char *(*tensor)(void *self, int i);
} es__row_map;
static inline es_rows *es__row_map_table(const es__row_map *m, int i) { return m->table ? m->table(m->self, i) : m->t[i]; }
static inline uint64_t es__row_map_base(const es__row_map *m, int i) { return m->table ? m->bases[i] : m->base[i]; }
/* The parameter bytes of the whole storage a shard is part of: its own
 * bytes with its rows of every table replaced by the table's global rows
 * (the other parameters, mde's projections, are whole on every rank);
 * s->param_bytes without a row map or unsharded. */
double es__storage_whole_param_bytes(es_storage *s);
/* The map of a one-table method: table t holds the `rows` global rows. */
es__row_map es__row_map_one(es_rows *t, int k, es__resolve_fn fn, const void *ctx, uint64_t rows);

/* ---- hashed-row engine (hash.c), shared by `hash` and `unified` ------------
 * One row table of chunk-dim rows; field f's chunk j reads rows
 * [base[c], base[c] + nrows[c]) with c = f*k + j, at
 *   base[c] + es__range(es__hash_u64(key, salt[c]), nrows[c]).
 * A method sizes the table, calls es__hashed_alloc, fills base/nrows/salt
 * and writes s->meta; lookup, backward, tensors, field_stats and destroy
 * are common. */
typedef struct es__hashed {
    es_rows t;         /* [total rows, cd] */
    int F, k, cd;
    uint64_t *base;    /* [F*k] */
    uint64_t *nrows;   /* [F*k] */
    uint64_t *salt;    /* [F*k] */
    es_gradacc ga;
} es__hashed;
/* Bytes of base/nrows/salt for F fields of k chunks (counted as aux). */
size_t es__hashed_aux_bytes(int F, int k);
/* Allocate and initialise (weights from s->p.seed) and set s->impl and the
 * byte counts; ES_ENOMEM with a message. */
int es__hashed_alloc(es_storage *s, uint64_t n_rows, int k, int cd, es_err *err);
void es__hashed_lookup(es_storage *s, const es_batch *b, int r0, int r1, float *out);
int es__hashed_backward(es_storage *s, const es_batch *b, const float *dout);
int es__hashed_tensors(es_storage *s, es_tensor_ref *refs, int max);
void es__hashed_field_stats(es_storage *s, const es_vocab *vocab, int field, es_field_stats *out);
void es__hashed_destroy(es_storage *s);
/* ops->row_map of hash and unified. */
int es__hashed_row_map(es_storage *s, es__row_map *out);
/* ops->rows of hash and unified: the one row table. */
struct es_rows *es__hashed_rows(es_storage *s, int i);
/* Rows from budget: floor((budget - aux) / row_bytes), or ES_EBUDGET /
 * ES_EINVAL (no budget) with a message naming the method. */
int es__hashed_rows_from_budget(const es_storage *s, size_t aux, int row_floats, uint64_t min_rows, uint64_t *rows,
                                es_err *err);

/* Helpers shared by the zoo methods (storage.c).
 * es__storage_split: split `total` units over F fields, min_each to each and
 *   the rest in proportion to distinct + 1 from the vocabulary (equally
 *   without one).  Needs total >= F * min_each. */
void es__storage_split(uint64_t total, int F, const es_vocab *v, uint64_t min_each, uint64_t *out);
/* Split H >= S hashed rows over S spaces: one each, the rest in proportion
 * to w[s] (largest remainder, ties to the lower space); equal when w is
 * NULL or all 0.  Used by the frequency-based methods (mde, adapt). */
void es__storage_split_rows(uint64_t H, int S, const uint64_t *w, uint64_t *rows);

/* An index over an array of 64-bit keys (frequency-based methods: mde,
 * adapt): open addressing over uint32 slots holding position + 1 (0 =
 * empty), capacity es__keyidx_cap(n) for n keys.  find returns the key's
 * position or UINT64_MAX; insert adds position i (keys[i] already set) and
 * returns 1 if that key was present. */
static inline size_t es__keyidx_cap(uint64_t n) { return (size_t)(n + n / 2 + 1); }
uint64_t es__keyidx_find(const uint64_t *keys, const uint32_t *index, size_t cap, uint64_t key);
int es__keyidx_insert(const uint64_t *keys, uint32_t *index, size_t cap, uint64_t i);

#endif /* ES_STORAGE_H */
