/*
 * embstore.h — the one public header of embstore, a C library for learnable
 * vector storage: embedding tables for click-through-rate models (train,
 * compress, store, serve) and vector search.
 *
 * Conventions (see docs/api.md):
 *   - every name starts with es_ / ES_;
 *   - handles are opaque: es_x_create(&out, ...) -> use -> es_x_free(x);
 *     es_x_free(NULL) is a no-op;
 *   - fallible functions return int: 0 (ES_OK) or a negative ES_E* code;
 *     the details (file, line, column, reason) are kept in the handle and
 *     read with es_x_errmsg(x), or, for functions that create a handle, in
 *     a caller-provided es_err;
 *   - the library never prints and never exits.
 */
#ifndef EMBSTORE_H
#define EMBSTORE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define ES_VERSION_MAJOR 0
#define ES_VERSION_MINOR 1
#define ES_VERSION_PATCH 0

/* ---------------------------------------------------------------------------
 * Status codes. One X-macro table generates the enum and es_strerror().
 * Persisted nowhere, but kept append-only all the same.
 * ------------------------------------------------------------------------- */
#define ES_ERRNO_MAP(X)                                              \
    X(OK, 0, "success")                                              \
    X(EINVAL, -1, "invalid argument")                                \
    X(ENOMEM, -2, "out of memory")                                   \
    X(EIO, -3, "input/output error")                                 \
    X(EPARSE, -4, "malformed input")                                 \
    X(EFORMAT, -5, "not a valid embstore file")                      \
    X(ECHECKSUM, -6, "checksum mismatch")                            \
    X(EVERSION, -7, "unsupported file version")                      \
    X(EBUDGET, -8, "memory budget too small for this method")        \
    X(ENOTFOUND, -9, "not found")                                    \
    X(EUNSUPPORTED, -10, "operation not supported by this component") \
    X(ERANGE, -11, "value out of range")                             \
    X(EEOF, -12, "end of input")

typedef enum {
#define ES__ERR_ENUM(name, code, msg) ES_##name = code,
    ES_ERRNO_MAP(ES__ERR_ENUM)
#undef ES__ERR_ENUM
} es_status;

/* Short static description of a status code; never NULL. */
const char *es_strerror(int code);

/* Error detail for functions that create a handle (the handle does not exist
 * yet when they fail).  `msg` holds "file:line:column: reason" style text. */
typedef struct es_err {
    int code;
    char msg[512];
} es_err;

/* ---------------------------------------------------------------------------
 * Batches: the fixed arrays that flow from readers into storage and models.
 * Owned by the caller (es_batch_alloc / es_batch_free).
 * ------------------------------------------------------------------------- */

/* Key of a missing categorical value (an empty field).  It is an ordinary key:
 * every method gives it a row, so "missing" can carry signal. */
#define ES_KEY_MISSING UINT64_C(0x9e3779b97f4a7c15)

typedef struct es_batch {
    int cap;        /* rows allocated */
    int n;          /* rows filled */
    int n_dense;    /* numeric features per row */
    int n_fields;   /* categorical fields per row */
    float *label;   /* [cap] 0 or 1 */
    float *dense;   /* [cap * n_dense], already transformed (log1p rule) */
    /* Categorical values in CSR form over (row, field): the values of row r,
     * field f are val[off[r*F+f] .. off[r*F+f+1]).  A single-valued field has
     * exactly one value (ES_KEY_MISSING when empty).  A multi-valued field
     * may have zero values, which pools to a zero vector. */
    uint32_t *off;  /* [cap * n_fields + 1] */
    uint64_t *val;  /* [val_cap] value keys: XXH3-64 of the token bytes */
    float *wt;      /* [val_cap] pooling weight (1, 1/count for mean, or the
                       value of a libsvm/libffm term) */
    size_t val_cap;
} es_batch;

/* Allocate a batch of `cap` rows (label and dense are 64-byte aligned).
 * val_cap = 0 means cap * n_fields value slots (one per (row, field)); the
 * value arrays grow on demand anyway.  Returns 0, ES_EINVAL (cap <= 0 or a
 * negative count), ES_ERANGE (sizes overflow, val_cap > UINT32_MAX) or
 * ES_ENOMEM; on failure *b is zeroed. */
int es_batch_alloc(es_batch *b, int cap, int n_dense, int n_fields, size_t val_cap);
/* Free the arrays and zero *b (so freeing twice, or a zeroed batch, is a
 * no-op). */
void es_batch_free(es_batch *b);
/* Make sure at least `need` value slots exist (grows val/wt, at least
 * doubling, contents kept).  ES_ERANGE beyond UINT32_MAX slots (off[] is
 * 32-bit), ES_ENOMEM with the batch unchanged. */
int es_batch_reserve_vals(es_batch *b, size_t need);

/* ---------------------------------------------------------------------------
 * Data readers: Criteo TSV, delimited text (CSV/TSV with header or column
 * spec), libsvm, libffm; plain or gzip.  Streaming, bounded memory.
 * ------------------------------------------------------------------------- */
typedef enum {
    ES_FMT_AUTO = 0,   /* from the file name: .tsv -> criteo, .csv -> csv, .libsvm/.svm -> libsvm, .libffm/.ffm -> libffm */
    ES_FMT_CRITEO = 1, /* label \t I1..I13 \t C1..C26, no header */
    ES_FMT_CSV = 2,    /* delimited text with a header or a column spec */
    ES_FMT_LIBSVM = 3, /* label idx:val ... */
    ES_FMT_LIBFFM = 4  /* label field:idx:val ... */
} es_format;

typedef enum { ES_POOL_SUM = 0, ES_POOL_MEAN = 1 } es_pool;

typedef struct es_reader_params {
    es_format format;
    /* Delimited-text (ES_FMT_CSV) options. */
    char delim;            /* 0 (default): from the name, '\t' for .tsv/.tab
                              (also under .gz), else ',' */
    int header;            /* 1: first line names the columns (default 1) */
    /* Column spec, comma separated "name:role" (or "index:role" with a
     * 0-based column index) where role is one of
     *   label            the label column (0/1, or see label_threshold)
     *   num              numeric feature (log1p rule)
     *   cat              categorical feature
     *   multi            multi-valued categorical, values split by multi_sep
     *   ignore           skipped
     * Columns not named are ignored.  NULL: first column is the label
     * (when has_label), the rest categorical.  Dense features and fields
     * are numbered in the order of their columns in the file, and named
     * after the header (or "c<index>" without one). */
    const char *columns;
    char multi_sep;        /* '|' by default; empty pieces are skipped */
    es_pool pool;          /* pooling of multi-valued fields (CSV multi,
                              libsvm, libffm): SUM keeps the weights, MEAN
                              divides them by the field's value count */
    /* When > -inf: label = (value >= label_threshold), e.g. rating >= 4;
     * else the label must be 0 or 1 (libsvm also takes -1 as 0).  Default
     * -INFINITY. */
    double label_threshold;
    int has_label;         /* 0 for unlabeled files (label is set to 0) */
    /* libffm: number of fields; 0 (default) = a first pass over the file
     * finds the largest field index (+1).  A term with a field >= the hint
     * is a bad line.  libsvm always has one field. */
    int n_fields_hint;
    /* Bad lines: 0 = stop with an error naming file:line:column, 1 = skip
     * them, count them and keep the first few messages. */
    int skip_bad;
    size_t max_line;       /* longest accepted line in bytes (default 1 MiB,
                              0 = default, at most 1 GiB); a longer line is
                              a bad line and is never held in memory */
    /* Threads parsing Criteo rows (the other formats parse serially):
     * 1 (default) = serial, n > 1 = n OpenMP threads, 0 = the library's
     * thread setting.  Results are identical for any count.  Serial is the
     * default because the trainer already parses in its own thread,
     * overlapped with compute; more parse threads there would compete with
     * the model's.  On an oversubscribed machine, more threads only help
     * with OMP_WAIT_POLICY=passive. */
    int threads;
} es_reader_params;

es_reader_params es_reader_params_default(void);

typedef struct es_reader es_reader;

/* Open `path` (gzip is detected by its magic bytes; p NULL = defaults).
 * Reads the header (CSV), counts libffm fields when needed, and fails with
 * "path: no data rows" (ES_EPARSE) when the file has no data line.  Other
 * failures: "path: cannot open: <reason>" (ES_ENOTFOUND / ES_EIO), bad
 * params or column spec (ES_EINVAL).  On failure *out is NULL and err (if
 * not NULL) says why. */
int es_reader_open(es_reader **out, const char *path, const es_reader_params *p, es_err *err);
void es_reader_free(es_reader *r);
/* Schema, known after open. */
int es_reader_n_dense(const es_reader *r);
int es_reader_n_fields(const es_reader *r);
const char *es_reader_field_name(const es_reader *r, int field); /* categorical field names */
const char *es_reader_dense_name(const es_reader *r, int i);
/* Fill up to b->cap rows into b (b->n is set); b must have the reader's
 * n_dense and n_fields.  The only allocation is growing b's value arrays.
 * Returns the number of rows read (0 at end of input) or a negative code,
 * message in es_reader_errmsg: a bad line "path:line:column N (name):
 * reason" or "path:line: reason" (ES_EPARSE), a truncated or corrupt gzip
 * stream (ES_EIO / ES_EPARSE), ES_ENOMEM.  On an error b->n still holds the
 * valid rows read before it, and the error is sticky until rewind.  With
 * skip_bad, bad lines are counted and skipped instead; reaching the end
 * without a single good row is "path: no data rows (N bad lines skipped...)".
 * Blank lines are skipped silently. */
int es_reader_next(es_reader *r, es_batch *b);
/* Go back to the first data row (gzip: restart decoding) and reset the
 * statistics below.  ES_EIO for an input that cannot seek. */
int es_reader_rewind(es_reader *r);
const char *es_reader_errmsg(const es_reader *r);
/* Line-level statistics since open/rewind: physical lines read (header and
 * blank lines included), lines skipped as bad, and the first 5 bad-line
 * messages joined by newlines (empty when none). */
uint64_t es_reader_lines(const es_reader *r);
uint64_t es_reader_bad_lines(const es_reader *r);
const char *es_reader_bad_report(const es_reader *r);
/* Data rows handed out since open/rewind (for checkpoints: the position in
 * rows). */
uint64_t es_reader_rows(const es_reader *r);

/* The numeric transform applied to every numeric feature:
 * log1p(x) for x >= 0, -log1p(-x) for x < 0 (sign-symmetric), 0 for missing. */
float es_transform_num(double x);

/* Key of a categorical token (XXH3-64 of its bytes; an empty token gives
 * ES_KEY_MISSING). */
uint64_t es_key(const char *s, size_t len);

/* ==== Models and training ==== */

/* Evaluation metrics over a labeled set. */
typedef struct es_metrics {
    double auc;          /* exact ROC AUC, tied scores counted half */
    double logloss;      /* mean binary cross-entropy (natural log) */
    double calibration;  /* mean prediction / base rate (1 = calibrated) */
    double base_rate;    /* fraction of positive labels */
    double mean_pred;    /* mean predicted probability */
    uint64_t rows;
} es_metrics;

/* Exact AUC of scores p[n] against labels y[n] (0/1); ties count half.
 * Returns NaN when only one class is present.  Allocates O(n) scratch;
 * returns NaN if that fails. */
double es_auc(const float *p, const float *y, size_t n);
/* Metrics of probabilities p[n] against labels y[n]. */
void es_metrics_compute(const float *p, const float *y, size_t n, es_metrics *out);

/* Progress report passed to es_train_params.progress (about 4 times a second). */
typedef struct es_progress {
    int epoch, epochs;
    uint64_t rows;           /* rows trained in this epoch so far */
    uint64_t rows_total;     /* rows per epoch (0 if unknown) */
    double rows_per_s;       /* recent training throughput */
    double loss;             /* running mean training loss of this epoch */
    const char *phase;       /* "count", "vocab", "train", "eval" */
} es_progress;

typedef struct es_train_params {
    const char *train_path;
    const char *valid_path;   /* NULL: hold out the last valid_frac of train_path */
    double valid_frac;        /* in [0, 1); rows are split in file order */
    es_reader_params reader;  /* how to read both files */
    /* model */
    const char *model;        /* "lr", "fm", "dlrm", "dcn" */
    int dim;                  /* embedding dim (FM factor size) */
    int bottom[8], n_bottom;  /* DLRM bottom MLP (0 layers: default) */
    int top[8], n_top;        /* DLRM top / DCN deep MLP (0 layers: default) */
    int n_cross;              /* DCN cross layers (0: default) */
    /* storage */
    const char *storage;      /* "full", "hash", "unified", ... */
    double budget;            /* bytes (> 1), fraction of full (<= 1) or 0 */
    int min_count, chunks, subtables, share;
    const char *storage_opts; /* method-specific "k=v,..." */
    /* optimisation */
    int epochs, batch;
    float lr;                 /* dense optimizer learning rate */
    float emb_lr;             /* table optimizer learning rate */
    const char *optim;        /* dense: "adam" (default), "adagrad", "sgd" */
    const char *emb_optim;    /* tables: "rowwise" (default), "adagrad", "sgd" */
    float weight_decay;
    int threads;              /* 0: all cores */
    uint64_t seed;
    uint64_t max_rows;        /* 0: all rows of the train file */
    /* output */
    const char *out_path;     /* model file to write (NULL: none) */
    const char *command_line; /* stored in the model metadata */
    int checkpoint_every;     /* batches between checkpoints (0: never) */
    const char *checkpoint_path; /* default: out_path + ".ckpt" */
    int resume;               /* continue from checkpoint_path if present */
    void (*progress)(const es_progress *p, void *ctx);
    void *progress_ctx;
} es_train_params;

es_train_params es_train_params_default(void);

typedef struct es_train_result {
    es_metrics valid;         /* on the validation rows (rows = 0 if none) */
    double train_loss;        /* mean loss of the last epoch */
    uint64_t train_rows;      /* rows per epoch */
    size_t emb_bytes;         /* embedding serving bytes (params + maps), as allocated */
    size_t emb_param_bytes;   /* of which learnable parameters */
    size_t emb_state_bytes;   /* table optimizer state */
    size_t full_bytes;        /* what the full table would need for this vocabulary */
    size_t net_bytes;         /* dense parameters */
    size_t param_bytes;       /* emb_bytes + net_bytes */
    double train_rows_per_s;  /* training throughput (all epochs, parsing included) */
    double eval_rows_per_s;   /* inference throughput on the validation rows */
    double seconds;
    int threads;
    int resumed;              /* 1 if training continued from a checkpoint */
} es_train_result;

/* Train a model end to end: read, build the vocabulary, train, evaluate,
 * save.  On failure err says why (file:line:column for data errors). */
int es_train(const es_train_params *p, es_train_result *res, es_err *err);

/* Threads used by training, prediction and search (OpenMP and OpenBLAS);
 * n <= 0 means all cores.  Returns the number in effect. */
int es_set_threads(int n);

typedef struct es_model es_model;

#define ES_LOAD_NO_VERIFY 1u  /* skip tensor checksums when loading */

int es_model_load(es_model **out, const char *path, unsigned flags, es_err *err);
void es_model_free(es_model *m);
const char *es_model_errmsg(const es_model *m);
/* Metadata value stored with the model (NULL if absent). */
const char *es_model_meta(const es_model *m, const char *key);
/* Reader parameters the model was trained with (columns, format, ...). */
es_reader_params es_model_reader_params(const es_model *m);
int es_model_n_fields(const es_model *m);
int es_model_n_dense(const es_model *m);
/* Click probabilities for the rows of b: prob[b->n]. */
int es_model_predict(es_model *m, const es_batch *b, float *prob);
/* Evaluate on a labeled file (read with the model's reader parameters). */
int es_model_eval_file(es_model *m, const char *path, es_metrics *out);
/* Write one probability per line of `in` to out_path (atomically; "-" or
 * NULL for stdout).  has_label = 0 reads an unlabeled file (no label
 * column, e.g. the 39-column Criteo test file). */
int es_model_predict_file(es_model *m, const char *in, int has_label, const char *out_path, uint64_t *rows_out);
/* Embedding of a value: out[dim] for (field, key). */
int es_model_embedding(es_model *m, int field, uint64_t key, float *out);
int es_model_emb_dim(const es_model *m);

/* Names of the registered storage methods (at most max); returns the count.
 * `summaries` (may be NULL) receives one line describing each. */
int es_storage_methods(const char **names, const char **summaries, int max);

/* Lookup speed of a storage method: build the vocabulary of p->train_path
 * (first p->max_rows rows, or all), create p->storage at p->budget, then
 * time `repeat` passes of batched lookups over those rows (batches of
 * p->batch, p->threads threads; parsing is done before timing).  Reports
 * (row, field) lookups per second and the method's serving bytes. */
int es_bench_lookup(const es_train_params *p, int repeat, double *lookups_per_s, size_t *bytes, es_err *err);

/* ==== Container files (models, indexes, checkpoints): inspection ==== */

/* Open any embstore container file read-only (mmap) to look at it.  flags:
 * ES_LOAD_NO_VERIFY skips tensor checksums.  See docs/format.md. */
typedef struct es_file es_file;
int es_container_open(es_file **out, const char *path, unsigned flags, es_err *err);
void es_container_close(es_file *f);
uint32_t es_container_version(const es_file *f);
uint64_t es_container_size(const es_file *f);
int es_container_n_meta(const es_file *f);
void es_container_meta_at(const es_file *f, int i, const char **key, const char **value);
const char *es_container_meta(const es_file *f, const char *key);
int es_container_n_tensors(const es_file *f);
/* Description of tensor i: name, dtype name ("f32", ...), dims, bytes. */
int es_container_tensor_info(const es_file *f, int i, const char **name, const char **dtype, int *ndim, uint64_t shape[4],
                             uint64_t *nbytes);

#ifdef __cplusplus
}
#endif
#endif /* EMBSTORE_H */
