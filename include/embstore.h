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

/* ES_API marks the exported functions: the shared library is built with
 * -fvisibility=hidden, so exactly the functions declared here (and nothing
 * internal) are visible in libembstore.so. */
#if defined(__GNUC__) || defined(__clang__)
#define ES_API __attribute__((visibility("default")))
#else
#define ES_API
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
ES_API const char *es_strerror(int code);

/* Error detail for functions that create a handle (the handle does not exist
 * yet when they fail).  `msg` holds "file:line:column: reason" style text. */
typedef struct es_err {
    int code;
    char msg[512];
} es_err;

/* ---------------------------------------------------------------------------
 * Temporary files.  Every file embstore writes (models, checkpoints, indexes,
 * predictions, vector files) is written to "<path>.tmp.<pid>", synced and
 * renamed over <path>; it is removed on every failure.  For signals, the
 * library keeps a table of the temporary files being written right now.
 * ------------------------------------------------------------------------- */

/* Remove (unlink) every temporary file this process is writing at the
 * moment.  Async-signal-safe: meant for an application's SIGINT / SIGTERM
 * handler, which then re-raises the signal with the default action (the
 * embstore CLI does exactly this).  Writers still running afterwards fail
 * at their rename. */
ES_API void es_temp_files_remove(void);
/* Track an application's own temporary file in the same table (the CLI's
 * bench-storage tables and plots): returns a slot to untrack with, or -1
 * when it could not be tracked (table full, path over 4095 bytes). */
ES_API int es_temp_file_track(const char *path);
ES_API void es_temp_file_untrack(int slot); /* -1 is a no-op */
/* Remove the temporary files "<path>.tmp.<pid>" that a process killed
 * without a chance to clean up (kill -9, power loss) left next to `path`:
 * only those whose pid names no running process (kill(pid, 0) fails with
 * ESRCH); a live process's file is never touched.  `removed` (may be NULL)
 * is called with each removed file's path and pid.  Returns the number
 * removed, or ES_EIO when the directory cannot be read (a missing directory
 * is 0).  Note: pids are per machine (and per pid namespace); a directory
 * shared with writers on other machines must not be cleaned this way. */
ES_API int es_temp_files_remove_stale(const char *path, void (*removed)(const char *tmp_path, long pid, void *ctx), void *ctx);

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
ES_API int es_batch_alloc(es_batch *b, int cap, int n_dense, int n_fields, size_t val_cap);
/* Free the arrays and zero *b (so freeing twice, or a zeroed batch, is a
 * no-op). */
ES_API void es_batch_free(es_batch *b);
/* Make sure at least `need` value slots exist (grows val/wt, at least
 * doubling, contents kept).  ES_ERANGE beyond UINT32_MAX slots (off[] is
 * 32-bit), ES_ENOMEM with the batch unchanged. */
ES_API int es_batch_reserve_vals(es_batch *b, size_t need);

/* ---------------------------------------------------------------------------
 * Data readers: Criteo TSV, delimited text (CSV/TSV with header or column
 * spec), libsvm, libffm; plain or gzip.  Streaming, bounded memory.
 * ------------------------------------------------------------------------- */
typedef enum {
    ES_FMT_AUTO = 0,   /* from the file name: .tsv -> criteo, .csv -> csv, .libsvm/.svm -> libsvm, .libffm/.ffm -> libffm */
    ES_FMT_CRITEO = 1, /* label \t I1..I13 \t C1..C26, no header */
    ES_FMT_CSV = 2,    /* delimited text with a header or a column spec */
    ES_FMT_LIBSVM = 3, /* label idx:val ... */
    ES_FMT_LIBFFM = 4, /* label field:idx:val ... */
    ES_FMT_ESD = 5     /* binary dataset cache written by es_dataset_convert (.esd; also
                          recognised by its magic whatever the format asked for) */
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
    /* Criteo TSV: 1 = each numeric column is ALSO a categorical field
     * (after the 26 C fields, named "<column>_b": I1_b .. I13_b) whose value
     * is the column's bucket: floor(ln(x)^2) for x > 2, else floor(x) (a
     * missing value counts as 0), the bucketing of the Criteo-winning
     * field-aware FM; the numeric features stay as they are.  0 = off
     * (default); -1 = on for Criteo files, off for the other formats, which
     * refuse 1. */
    int num_cat;
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
    /* Threads parsing each block of lines (every text format; gzip is
     * still decompressed by one thread): 1 (default) = serial, n > 1 = n
     * OpenMP threads, 0 = the library's thread setting.  Results (batches,
     * bad-line messages, skip_bad statistics) are identical for any
     * count.  Serial is the
     * default because the trainer already parses in its own thread,
     * overlapped with compute; more parse threads there would compete with
     * the model's.  On an oversubscribed machine, more threads only help
     * with OMP_WAIT_POLICY=passive. */
    int threads;
} es_reader_params;

ES_API es_reader_params es_reader_params_default(void);

typedef struct es_reader es_reader;

/* Open `path` (gzip is detected by its magic bytes; p NULL = defaults).
 * Reads the header (CSV), counts libffm fields when needed, and fails with
 * "path: no data rows" (ES_EPARSE) when the file has no data line.  Other
 * failures: "path: cannot open: <reason>" (ES_ENOTFOUND / ES_EIO), bad
 * params or column spec (ES_EINVAL).  On failure *out is NULL and err (if
 * not NULL) says why. */
ES_API int es_reader_open(es_reader **out, const char *path, const es_reader_params *p, es_err *err);
/* The files a data path names, in the order es_reader_open reads them:
 * "@LIST" (a file with one path a line) or a glob (a path with *, ? or [
 * that is not itself a file, sorted); any other path is itself.  *paths[*n]
 * is allocated (es_path_files_free).  ES_ENOTFOUND when a glob matches
 * nothing or the list is missing; ES_EPARSE for a bad list. */
ES_API int es_path_files(const char *spec, char ***paths, int *n, es_err *err);
ES_API void es_path_files_free(char **paths, int n);
ES_API void es_reader_free(es_reader *r);
/* Schema, known after open. */
ES_API int es_reader_n_dense(const es_reader *r);
ES_API int es_reader_n_fields(const es_reader *r);
ES_API const char *es_reader_field_name(const es_reader *r, int field); /* categorical field names */
ES_API const char *es_reader_dense_name(const es_reader *r, int i);
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
ES_API int es_reader_next(es_reader *r, es_batch *b);
/* Go back to the first data row (gzip: restart decoding) and reset the
 * statistics below.  ES_EIO for an input that cannot seek. */
ES_API int es_reader_rewind(es_reader *r);
ES_API const char *es_reader_errmsg(const es_reader *r);
/* The parameters in effect after open: the format and delimiter chosen
 * from the file name when they were left to be detected.  columns is the
 * spec given at open (a copy owned by the reader, valid until
 * es_reader_free), or NULL. */
ES_API es_reader_params es_reader_resolved_params(const es_reader *r);
/* Line-level statistics since open/rewind: physical lines read (header and
 * blank lines included), lines skipped as bad, and the first 5 bad-line
 * messages joined by newlines (empty when none). */
ES_API uint64_t es_reader_lines(const es_reader *r);
ES_API uint64_t es_reader_bad_lines(const es_reader *r);
ES_API const char *es_reader_bad_report(const es_reader *r);
/* Data rows handed out since open/rewind (for checkpoints: the position in
 * rows). */
ES_API uint64_t es_reader_rows(const es_reader *r);

/* ---------------------------------------------------------------------------
 * Binary dataset cache (.esd, docs/data-formats.md): the parsed and hashed
 * rows of a data file in an embstore container, read back by es_reader_open
 * (chosen by the .esd extension or the file's magic) with exactly the
 * batches the text gives, for any batch size.  A cache records the reader
 * options it was built with and its source file's identity (size,
 * modification time, XXH3 of the first MiB): opening it fails with a clear
 * message when the source still exists and has changed ("stale cache"),
 * when the caller's options differ from the recorded ones (format, columns,
 * label threshold, pooling, ...), or when the file is truncated or corrupt.
 * ------------------------------------------------------------------------- */
typedef struct es_dataset_info {
    uint64_t rows, values;  /* rows and categorical values in the cache */
    uint64_t bad_lines;     /* lines of the source skipped (skip_bad) */
    uint64_t bytes;         /* size of the cache file */
    int n_dense, n_fields;
    int built;              /* es_dataset_cache: 1 when it (re)built the cache */
    int stale;              /* es_dataset_cache: 1 when an existing cache was stale */
    double seconds;         /* time to build (0 when reused) */
} es_dataset_info;

/* Read `src` with `p` (NULL: defaults; every text format, gzip) and write
 * its rows to the cache file `dst` (temporary file, fsync, rename; never a
 * partial file).  Streams: two passes over src (count, then write), memory
 * one batch.  info (may be NULL) gets the counts.  Errors: those of
 * es_reader_open / es_reader_next on src (a bad line names file:line),
 * ES_EIO when src changes while it is read or dst cannot be written. */
ES_API int es_dataset_convert(const char *src, const es_reader_params *p, const char *dst, es_dataset_info *info, es_err *err);
/* Make sure `cache` is a cache of `src` read with `p`: reuse it when it is
 * one and src is unchanged (every checksum is verified); build it when it
 * does not exist; REBUILD it when src has changed since (info->stale).  A
 * cache that is truncated or corrupt, of another file, or built with other
 * options is an error (ES_EFORMAT, ES_ECHECKSUM, ES_EINVAL) naming the
 * problem, never a silent reuse. */
ES_API int es_dataset_cache(const char *src, const es_reader_params *p, const char *cache, es_dataset_info *info, es_err *err);

/* The numeric transform applied to every numeric feature:
 * log1p(x) for x >= 0, -log1p(-x) for x < 0 (sign-symmetric), 0 for missing. */
ES_API float es_transform_num(double x);
/* The categorical key of a numeric feature's bucket (es_reader_params.
 * num_cat), from its transformed value es_transform_num(x). */
ES_API uint64_t es_num_bucket_key(float t);

/* Key of a categorical token (XXH3-64 of its bytes; an empty token gives
 * ES_KEY_MISSING). */
ES_API uint64_t es_key(const char *s, size_t len);

/* ==== Embedding tables (storage methods without a model) ====
 *
 * A compressed embedding table on its own: every storage method a model
 * can use (full table, hashing trick, Unified Embedding, Q-R, ROBE, TT-Rec,
 * DHE, ...), created from a byte budget, looked up into caller-owned
 * arrays, trained by a sparse optimizer update from the caller's
 * gradients, and saved to / loaded from its own file.  The caller owns the
 * loop (its own model, loss and batches).  docs/table-api.md has an
 * example; docs/methods.md describes the methods and their options.
 * ------------------------------------------------------------------------- */

/* ---- vocabulary: per-field value counts ---------------------------------
 * Some methods and budgets need to know the values of each field: `full`
 * gives every value seen a row, the frequency-based methods (mde, adapt)
 * rank values by count, and a budget given as a fraction of the full
 * table (<= 1) is resolved against the vocabulary's size.  Build one with a
 * pass over the training data: es_vocab_add_batch for every batch a reader
 * yields.  One open-addressing map per field from value key to count;
 * memory grows with the distinct values seen (about 32 to 64 bytes each).
 * Thread rule: adds need exclusive access; the read functions may run
 * concurrently with each other (and with es_table_create using it). */
typedef struct es_vocab es_vocab;

/* Create an empty vocabulary of n_fields fields.  Returns 0, ES_EINVAL
 * (n_fields outside [1, 2^20]) or ES_ENOMEM; on failure *out is NULL (no
 * message: the code says it all). */
ES_API int es_vocab_create(es_vocab **out, int n_fields);
/* Free v and its maps.  NULL is a no-op. */
ES_API void es_vocab_free(es_vocab *v);
/* Count every value of every (row, field) of b (b is only read).  Returns
 * 0; ES_EINVAL when v or b is NULL, when b's field count differs from the vocabulary's or its
 * CSR offsets are inconsistent (nothing counted); ES_ENOMEM when a map
 * cannot grow (the batch may be partly counted).  A failure is sticky:
 * every later add returns the same code, and es_vocab_errmsg says why. */
ES_API int es_vocab_add_batch(es_vocab *v, const es_batch *b);
/* Fields of v (0 for NULL). */
ES_API int es_vocab_n_fields(const es_vocab *v);
/* Distinct value keys counted in field f (0 for NULL or a field outside
 * [0, n_fields)). */
ES_API uint64_t es_vocab_distinct(const es_vocab *v, int field);
/* Bytes held by the maps (0 for NULL). */
ES_API size_t es_vocab_bytes(const es_vocab *v);
/* Message of the failed add ("" when none).  Never NULL. */
ES_API const char *es_vocab_errmsg(const es_vocab *v);

/* ---- tables ---------------------------------------------------------------- */
typedef struct es_table_params {
    /* Storage method by name: one of es_storage_methods() ("full", "hash",
     * "unified", "qr", "robe", "dhe", "mde", "adapt", "multihash", "tt").
     * Default "hash". */
    const char *method;
    int n_fields;         /* categorical fields per row (required, >= 1; default 0) */
    int dim;              /* output floats per field (1..65536; default 16) */
    /* Largest batch (rows) passed to es_table_backward (sizes the
     * optimizer scratch at create time; 1..2^24; default 256). */
    int max_batch;
    /* Serving bytes (parameters + lookup maps) the table may use:
     *   > 1     bytes;
     *   (0, 1]  a fraction of the `full` table's parameter bytes for the
     *           vocabulary (needs a vocabulary);
     *   0       the method's default: `full` takes its exact size from the
     *           vocabulary; the budget-sized methods (hash, unified, ...)
     *           then need a size in opts (e.g. "rows=N"), else create fails.
     * Default 0. */
    double budget;
    uint64_t seed;        /* initial values and hash salts (default 1) */
    float init_scale;     /* initial rows ~ U(-s, s); 0 gives zeros (default 0.05) */
    /* Table optimizer, applied by es_table_backward to the parameters a
     * batch touches: "rowwise" (row-wise Adagrad: one accumulator per row,
     * the default; NULL means it too), "adagrad" (one accumulator per
     * float), "sgd" (no state) or "ftrl" (FTRL-proximal: z and n per float;
     * plain-row methods only, see es_model_params.emb_optim). */
    const char *optim;
    float lr;             /* learning rate (>= 0; default 0.05) */
    float eps;            /* Adagrad epsilon (> 0; default 1e-8; ignored by sgd) */
    /* Method options "key=value,...", e.g. "chunks=4" (unified),
     * "share=1" (one parameter space for all fields), "min_count=2"
     * (full), "op=mult" (qr).  The first occurrence of a key wins; keys a
     * method does not know are ignored; malformed values are ES_EINVAL.
     * docs/methods.md lists each method's keys.  Default NULL. */
    const char *opts;
    /* Lazy L2 on rows (>= 0; default 0) and the FTRL parameters (defaults
     * 0.05, 0.01, 0, 0), as in es_model_params (docs/training.md);
     * emb_l2_freq as in es_model_params. */
    float emb_l2;
    float emb_l2_freq;
    float ftrl_alpha, ftrl_beta, ftrl_l1, ftrl_l2;
} es_table_params;

/* The defaults above (n_fields 0: must be set). */
ES_API es_table_params es_table_params_default(void);

typedef struct es_table es_table;

/* Create a table: check p, resolve the budget, size the method from it,
 * allocate everything lookup and backward will ever need, and draw the
 * initial values from p->seed (the same parameters and vocabulary give the
 * same bits).  vocab may be NULL unless the method (full, mde, adapt) or a
 * fractional budget needs it; it is only read during the call (not kept).
 * The strings in p are copied.
 * Returns 0, or (*out NULL, err says why, naming the bad parameter):
 *   ES_EINVAL     bad parameters (NULL p, n_fields / dim / max_batch out of
 *                 range, negative or non-finite budget, lr, eps or
 *                 init_scale), an unknown method or optimizer (the message
 *                 lists the known ones), a malformed method option, a
 *                 vocabulary of another field count, or a method that
 *                 needs a vocabulary or a budget and got none;
 *   ES_EBUDGET    the budget is too small for the method's smallest shape;
 *   ES_ERANGE     sizes overflow, or the resolved options do not fit the
 *                 table's metadata;
 *   ES_ENOMEM     out of memory. */
ES_API int es_table_create(es_table **out, const es_table_params *p, const es_vocab *vocab, es_err *err);
/* Free the table (NULL is a no-op). */
ES_API void es_table_free(es_table *t);
/* Message of the last failed call on t ("" when none); never NULL. */
ES_API const char *es_table_errmsg(const es_table *t);

/* Embeddings of rows [r0, r1) of b into out[(r1 - r0) * n_fields * dim]
 * (caller-owned; row-major [row][field][dim]).  Each (row, field) pools its
 * values: the sum of the value vectors times their weights b->wt (a field
 * without values gives zeros).  Any key may be looked up: `full` maps a
 * value it never counted to its field's out-of-vocabulary row, the hashed
 * methods hash every key.  No allocation.
 * Returns 0, or ES_EINVAL (nothing written; message in es_table_errmsg):
 * NULL b or out, b->n_fields differs from the table's, or not
 * 0 <= r0 <= r1 <= b->n.
 * Thread rule: any number of threads may look up concurrently (the same
 * rows or not, each into its own out), but not while es_table_backward,
 * es_table_free or a load into t runs.  (Concurrent failing lookups may
 * overwrite each other's message.)  Deterministic: a row's output has the
 * same bits whatever range, batch or thread looks it up (docs/determinism.md). */
ES_API int es_table_lookup(es_table *t, const es_batch *b, int r0, int r1, float *out);
/* Train: given dout[b->n * n_fields * dim], the gradient of the caller's
 * loss with respect to es_table_lookup(t, b, 0, b->n, ...)'s output, apply
 * one sparse optimizer step to the parameters the batch touches (a
 * parameter touched by several (row, field) pairs gets one update with the
 * summed gradient).  dout is only read.  No allocation while
 * b->n <= max_batch.
 * Returns 0; ES_EINVAL (nothing changed): NULL b or dout, b->n_fields
 * differs, b->n < 0 or b->n > max_batch; ES_ENOMEM: a scratch structure
 * had to grow and could not (nothing applied).
 * Thread rule: one thread at a time, with no lookup running on t. */
ES_API int es_table_backward(es_table *t, const es_batch *b, const float *dout);

/* Sizes, as allocated.  es_table_bytes: what serving needs, parameters +
 * lookup maps (<= the budget in bytes whenever one was given);
 * es_table_param_bytes: the learnable parameters alone; es_table_state_bytes:
 * the optimizer state (training only; 0 for sgd). */
ES_API size_t es_table_bytes(const es_table *t);
ES_API size_t es_table_param_bytes(const es_table *t);
ES_API size_t es_table_state_bytes(const es_table *t);
/* Size in rows: param_bytes / (4 * dim), the number of dim-float rows the
 * parameters would fill.  For `full` and `hash` this is the number of rows
 * the method addresses (values plus one out-of-vocabulary row per field);
 * for the other methods it is the row equivalent of their parameters, to
 * compare with a vocabulary's distinct count (the compression ratio). */
ES_API uint64_t es_table_rows(const es_table *t);
ES_API int es_table_dim(const es_table *t);
ES_API int es_table_n_fields(const es_table *t);
ES_API int es_table_max_batch(const es_table *t);
/* Method name ("hash", ...); valid while t lives. */
ES_API const char *es_table_method(const es_table *t);
/* The method's resolved options "key=value,..." (rows per field, chunks,
 * seed, ...): passed as opts with budget 0 they re-create the same shapes
 * without a vocabulary.  Valid while t lives. */
ES_API const char *es_table_meta(const es_table *t);

/* es_table_save flag: also write the optimizer state (to continue training
 * after a load exactly where it stopped).  Without it the file holds what
 * serving needs, and a loaded table trains on from a fresh optimizer
 * state (as after create). */
#define ES_TABLE_SAVE_STATE 1u

/* Write t to `path`: an embstore container file (docs/format.md) with
 * embstore.type=table, the parameters (storage.*) and one tensor per array
 * ("storage.<name>"; optimizer state as "opt.storage.<name>").  Written to
 * "<path>.tmp.<pid>", fsynced and renamed over path: on failure path is
 * untouched and the temporary file removed.  Saving over the file the table
 * was loaded from is safe (the rename replaces it; a mapped table keeps the
 * old file's pages).  t is only read (the thread rule of a lookup).
 * Returns 0; ES_EINVAL (NULL path, unknown flag bits); ES_EIO (cannot
 * write, sync or rename; the message names the path); ES_ENOMEM.  The
 * message is in es_table_errmsg. */
ES_API int es_table_save(es_table *t, const char *path, unsigned flags);
/* Load a table saved by es_table_save.  flags: ES_LOAD_NO_VERIFY (skip the
 * tensor checksums) and ES_LOAD_MAP (map large arrays copy-on-write from
 * the file instead of reading them; the file must then only be replaced
 * by rename while the table lives), as for es_model_load.  The optimizer
 * state is restored when the file has it (ES_TABLE_SAVE_STATE).  The
 * loaded table looks up exactly the bits the saved one did.
 * Returns 0, or (*out NULL, err names the path and says why):
 *   ES_ENOTFOUND / ES_EIO   cannot open or read;
 *   ES_EFORMAT              not an embstore file, not a table (e.g. a model
 *                           file: embstore.type is not "table"), missing or
 *                           malformed metadata, a tensor missing or of the
 *                           wrong type or size;
 *   ES_EVERSION             a newer container version;
 *   ES_ECHECKSUM            corrupt data;
 *   ES_EINVAL               unknown flag bits;
 *   ES_ENOMEM. */
ES_API int es_table_load(es_table **out, const char *path, unsigned flags, es_err *err);

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
ES_API double es_auc(const float *p, const float *y, size_t n);
/* Metrics of probabilities p[n] against labels y[n]. */
ES_API void es_metrics_compute(const float *p, const float *y, size_t n, es_metrics *out);

/* Progress report passed to es_train_params.progress (about 4 times a second). */
typedef struct es_progress {
    int epoch, epochs;
    uint64_t rows;           /* rows trained in this epoch so far */
    uint64_t rows_total;     /* rows per epoch (0 if unknown) */
    double rows_per_s;       /* recent training throughput */
    double loss;             /* running mean training loss of this epoch */
    const char *phase;       /* "count", "vocab", "train", "eval" */
    /* with a comm (es_train_params.comm): the bytes this process sent per
     * step so far (tables and dense, es_train_result's comm_*) and the
     * seconds in the collectives; 0 otherwise */
    double comm_bytes_per_step, comm_seconds;
} es_progress;

/* A communicator: what es_train needs to train one model across several
 * processes (docs/scale.md).  The library holds no transport of its own;
 * the CLI's MPI build (tools/mpi/) fills one over MPI, a test can fill one
 * over anything that moves bytes.  Every process calls the same
 * collectives in the same order; counts and displacements are in bytes,
 * the blocks of rank i at displacement i * bytes_each (alltoall,
 * allgather).  Each function returns 0, or nonzero when the transport
 * failed (es_train then fails with ES_EIO). */
typedef struct es_comm {
    int rank, size;   /* this process, of size (>= 1) */
    void *ctx;
    int (*alltoall)(void *ctx, const void *send, void *recv, size_t bytes_each);
    int (*alltoallv)(void *ctx, const void *send, const size_t *send_bytes, const size_t *send_displ, void *recv,
                     const size_t *recv_bytes, const size_t *recv_displ);
    int (*allgather)(void *ctx, const void *send, void *recv, size_t bytes_each);
    int (*bcast)(void *ctx, void *buf, size_t bytes, int root);
} es_comm;

typedef struct es_train_params {
    const char *train_path;
    const char *valid_path;   /* NULL: hold out the last valid_frac of train_path */
    double valid_frac;        /* in [0, 1); rows are split in file order */
    es_reader_params reader;  /* how to read both files */
    /* model */
    const char *model;        /* "lr", "fm", "ffm", "dlrm", "dcn" */
    int dim;                  /* embedding dim (FM factor size) */
    int bottom[8], n_bottom;  /* DLRM bottom MLP (0 layers: default) */
    int top[8], n_top;        /* DLRM top / DCN deep MLP (0 layers: default) */
    int n_cross;              /* DCN cross layers (0: default) */
    int norm_rows;            /* fm/ffm: rows x -> x / |x| (es_model_params) */
    int pairs_only;           /* fm/ffm: only the pair term (es_model_params) */
    /* storage */
    const char *storage;      /* "full", "hash", "unified", ... */
    double budget;            /* bytes (> 1), fraction of full (<= 1) or 0: the
                                 method's default (ES_DEFAULT_BUDGET for the
                                 methods sized by a budget unless storage_opts
                                 size the table; none for full and mde) */
    const char *storage_opts; /* method-specific "k=v,..." (min_count=,
                                 chunks=, share=, ...; es_storage_help lists
                                 each method's); an unknown key is an error */
    /* optimisation */
    int epochs, batch;
    float lr;                 /* dense optimizer learning rate */
    float emb_lr;             /* table optimizer learning rate */
    const char *optim;        /* dense: "adam" (default), "adagrad", "sgd" */
    const char *emb_optim;    /* tables: "rowwise", "adagrad", "sgd", "ftrl" (NULL: see es_train_params_default) */
    float emb_l2;             /* lazy L2 on table rows (es_model_params) */
    float emb_l2_freq;        /* frequency-aware lazy L2 exponent (es_model_params) */
    float emb_init_acc;       /* table Adagrad initial accumulator (es_model_params) */
    float emb_init_scale;     /* table rows start U(-s, s); 0: default (es_model_params) */
    float emb_init_shift;     /* ... U(m - s, m + s) (es_model_params) */
    float ftrl_alpha, ftrl_beta, ftrl_l1, ftrl_l2; /* FTRL (es_model_params) */
    float weight_decay;
    float dropout;            /* dlrm, dcn: MLP dropout in [0, 1) (es_model_params) */
    const char *precision;    /* table rows: NULL/"fp32", "fp16", "int16", "int8", "int4", "int2" (es_model_params) */
    const char *qtrain;       /* at a precision: "qat" (NULL: default) or "alpt" (es_model_params) */
    int threads;              /* 0: all cores */
    uint64_t seed;
    uint64_t max_rows;        /* 0: all rows of the train file */
    /* output */
    const char *out_path;     /* model file to write (NULL: none) */
    const char *command_line; /* stored in the model metadata */
    int checkpoint_every;     /* batches between checkpoints (0: never) */
    const char *checkpoint_path; /* default: out_path + ".ckpt" */
    int resume;               /* continue from checkpoint_path if present */
    /* Early stopping (docs/training.md).  early_stop = P > 0: evaluate on
     * the validation rows (valid_path, or the held-out valid_frac; one of
     * them is required) at the end of every epoch and every eval_every
     * batches, keep the model of the best evaluation, and stop after P
     * evaluations in a row without improvement; the result and the saved
     * model are those of the best evaluation.  0: off (the last model). */
    int early_stop;
    int eval_every;           /* batches between evaluations (0: epoch ends only); needs early_stop */
    /* Refit (docs/training.md): once early stopping on rows carved from
     * train_path (valid_frac) has chosen the number of passes, train a new
     * model, same settings and seed, on ALL rows of train_path (the held-out
     * ones included) for that many passes; the test metrics and the saved
     * model are the refit model's, the validation metrics those of the
     * chosen model (the refit one has trained on those rows).  1: on (an
     * error when it cannot apply: no early stopping, or a --valid file),
     * 0: off.  Checkpoints cover the refit too. */
    int refit;
    const char *stop_metric;  /* what "best" means: "logloss" (default, lower) or "auc" (higher) */
    /* A test file: evaluated once with the final model and reported in
     * es_train_result.test; never used for a decision.  NULL: none. */
    const char *test_path;
    void (*progress)(const es_progress *p, void *ctx);
    void *progress_ctx;
    /* Train across comm->size processes (docs/scale.md), each calling
     * es_train with the same parameters and its own comm: the tables'
     * rows are sharded over the processes, every global batch of `batch`
     * rows is split into contiguous parts, one per process, and the model
     * is bit-for-bit the same for any number of processes (1, 2, 4, ...:
     * a power of two up to 16) with threads = 1.  Methods full, hash,
     * unified and adapt (mode=vocab), fp32 or QAT, sharded; dhe and tt
     * replicated; process 0 writes out_path; checkpoints are one file per
     * process ("<checkpoint>.rank<k>of<N>"), resumed on as many.  NULL:
     * this process alone. */
    const es_comm *comm;
    const char *matryoshka;         /* Matryoshka prefixes "2,4,8,16" (es_model_params); NULL: none */
    const char *matryoshka_weights; /* their loss weights (es_model_params); NULL: all 1 */
    /* Bytes of table this process may hold (its rows and their optimizer
     * state; the method's maps, whole on every process, are not counted),
     * checked when the table (with a comm: this process's shard)
     * is created, before any row is trained; over it the run stops with
     * ES_EBUDGET, saying how many processes would fit it.  With a comm no
     * process ever holds more than its shard (evaluations and the model
     * file work from the shards: docs/scale.md).  0: no limit. */
    double rank_memory;
    /* With a comm and a training path that names several files (a glob or
     * "@LIST": es_reader_open): each process reads only its own files,
     * file i by process i mod N (data-parallel input), and every global
     * batch of `batch` rows (a multiple of N) takes batch / N rows from
     * each process.  Each epoch trains N x the fewest rows a process holds
     * (the rest are left out and counted in es_train_result.rows_dropped);
     * the batches, and so the model, depend on N.  Needs validation rows
     * from their own file (valid_path) or none; max_rows is split evenly.
     * 0: every process reads the whole input (the default: the model is
     * the same for any N). */
    int shard_files;
    /* 1: keep the training rows in memory after the first pass over
     * train_path that reads them all (parsed and hashed, as a dataset
     * cache holds them: 8 bytes a categorical value and 1 a row, plus 4 a
     * numeric value, and 4 a (row, field) when a field has other than one
     * value, 4 a value when a weight is not 1) and read every later pass
     * (the vocabulary, the epochs, a refit) from there instead of parsing
     * the text again.  The model is bit-identical to one trained without
     * it.  Ignored with a comm and for a dataset cache (already parsed);
     * es_train_result.in_memory_bytes says what was held.  0: off. */
    int in_memory;
} es_train_params;

/* The defaults of `embstore train` (the study behind them is in
 * docs/training.md).  Some are automatic, ES_TRAIN_AUTO (-1), and take
 * their value from the rest of the run in es_train_params_resolve:
 *   early_stop  2 when there are validation rows (valid_path or
 *               valid_frac > 0), else 0
 *   epochs      (0 or ES_TRAIN_AUTO) 100 with early stopping, else 1
 *   refit       1 when early stopping runs on rows carved from train_path,
 *               else 0
 *   dim         4 for lr, fm and ffm; 16 for dlrm and dcn
 *   optim       (NULL: the dense optimizer) "adagrad" for lr, else "adam"
 *   lr          (the dense rate) 0.1 for lr with adagrad; 0.01 for lr with
 *               another optimizer, fm and ffm; 0.001 for dlrm, dcn
 *   emb_optim   (NULL) "ftrl" for lr, fm and ffm on the storage methods with
 *               plain rows (full, hash, unified, robe, adapt), else "rowwise" */
ES_API es_train_params es_train_params_default(void);
/* The step API's defaults instead (es_model_params_default: DLRM, unified
 * at ES_DEFAULT_BUDGET, row-wise Adagrad tables, batch 256), one epoch, no
 * early stopping, no refit, sum pooling, no validation rows: what a sweep that
 * must treat every storage method alike starts from (bench-storage). */
ES_API es_train_params es_train_params_basic(void);
#define ES_TRAIN_AUTO (-1)
/* Replace the automatic values of p by what they mean for this run (see
 * es_train_params_default); es_train does the same on its own copy. */
ES_API void es_train_params_resolve(es_train_params *p);

/* Budget of a training run that gives none (see es_train_params.budget):
 * a tenth of the full table. */
#define ES_DEFAULT_BUDGET 0.1

#define ES_TRAIN_MAX_EVALS 128

#define ES_TRAIN_MAX_STAGES 4
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
    /* Lines skipped as bad (reader.skip_bad): of the training file, counted
     * once (a line skipped in every epoch counts once), plus those of the
     * validation file; bad_report holds the first few messages
     * ("file:line: reason", newline separated; empty when none). */
    uint64_t bad_lines;
    char bad_report[1024];
    es_metrics test;          /* on test_path with the final model (rows = 0 if none) */
    /* Early stopping: the evaluations made during training (the first
     * ES_TRAIN_MAX_EVALS of them are kept in evals[], in order; after a
     * resume, those made before it count in n_evals but have rows = 0),
     * the best one (-1: none), where it was (epoch 1-based, rows of that
     * epoch trained), and whether training stopped before its last epoch.
     * train_loss is that of the last epoch trained, valid (above) that of
     * the model returned: the best one. */
    int n_evals;
    int best_eval;
    int best_epoch;
    uint64_t best_rows;
    int stopped_early;
    es_metrics evals[ES_TRAIN_MAX_EVALS];
    /* Refit: 1 when the returned model was retrained on all rows, with the
     * rows it trained on in all (passes x rows, a partial last pass when
     * the best evaluation was inside an epoch). */
    int refit;
    uint64_t refit_rows;
    /* With a comm: processes, training steps, and the bytes this process
     * sent per step on average: table traffic (keys to owners, rows back,
     * gradients to owners: alltoall) and dense gradients (the allreduce, a
     * reduce-scatter and an allgather in a fixed order), with the seconds
     * spent in them. */
    int ranks;
    uint64_t comm_steps;
    double comm_sparse_bytes_per_step, comm_dense_bytes_per_step, comm_seconds;
    /* With a comm, on failure: 1 when this process failed where the others
     * may not know it (inside a collective step, or the transport broke):
     * they may wait for it forever, so the caller must end the job
     * (MPI_Abort); 0 when every process returned the same error. */
    int comm_broken;
    /* Table bytes held (rows and optimizer state: what rank_memory
     * limits): by this process, and the most held by any process. */
    size_t rank_table_bytes, rank_table_bytes_max;
    /* shard_files: training rows of the larger shards left out of every
     * epoch so that each process trains as many rows (0 otherwise). */
    uint64_t rows_dropped;
    /* Multi-stage methods (--storage autodim; docs/methods.md "Multi-stage
     * training"): the stages run, in order ("search", "derive",
     * "retrain"), each with its seconds (of this process: a resumed run
     * reports the stages' seconds as recorded in the checkpoint plus its
     * own) and its result as a JSON object (search: the validation
     * metrics of the searched model; derive: the per-field dimensions;
     * retrain: the storage trained).  n_stages = 0 for single-stage
     * methods. */
    int n_stages;
    struct {
        char name[16];
        double seconds;
        char result[1024];
    } stages[ES_TRAIN_MAX_STAGES];
    /* Matryoshka (es_train_params.matryoshka): the returned model's
     * metrics at each trained prefix, smallest first, the last the whole
     * model (its valid, test and emb_bytes above): on the validation rows,
     * and on test_path when given (rows = 0 otherwise), each as
     * es_model_set_prefix(m, dim) scores them; emb_bytes is what the model
     * cut to the prefix holds (es_model_slice, then es_model_table_bytes;
     * 0 for a method that cannot be cut).  n_prefixes = 0 without
     * Matryoshka. */
    int n_prefixes;
    struct {
        int dim;
        es_metrics valid, test;
        size_t emb_bytes;
    } prefixes[8];
    /* in_memory: bytes of training rows held in memory (0: every pass read
     * the file) */
    uint64_t in_memory_bytes;
} es_train_result;

/* Train a model end to end: read, build the vocabulary, train, evaluate,
 * save.  On failure err says why (file:line:column for data errors).
 *
 * Integrity: the run fails rather than report results of data it did not
 * read.  It refuses a model it cannot fit in memory before allocating it
 * (ES_ENOMEM: bytes needed against physical memory, RLIMIT_AS and
 * RLIMIT_DATA); it fails when the training or validation file changes while
 * it is read (size, inode or modification time differ from the start, or a
 * pass yields another number of rows than the first) (ES_EIO); and with
 * p->resume it continues a checkpoint only if the checkpoint was made by
 * the same run: every setting in es_train_describe except those in
 * "epochs" and the validation file must match, or it fails (ES_EINVAL)
 * listing each difference. */
ES_API int es_train(const es_train_params *p, es_train_result *res, es_err *err);

/* Describe the settings of a training run that change its result, and the
 * identity of its data files, as "key=value" lines in a fixed order: keys
 * are option names without "--" ("model", "dim", "budget", "columns", ...),
 * "data.size"/"data.head" (size and XXH3-64 of the first MiB of
 * train_path) and "valid.size"/"valid.head" when valid_path is set.  Not
 * included: threads, output and checkpoint paths, progress.  Returns 0,
 * ES_ERANGE if cap is too small (4096 is enough), or the error of reading a
 * data file. */
ES_API int es_train_describe(const es_train_params *p, char *buf, size_t cap, es_err *err);
/* Compare two descriptions: for every key whose value differs, or that one
 * of them lacks, append "<option> <value in a> vs <value in b>" to out
 * (separated by "; ", truncated to cap), skipping the comma-separated keys
 * in `ignore` (may be NULL).  Returns the number of differences. */
ES_API int es_train_describe_diff(const char *a, const char *b, const char *ignore, char *out, size_t cap);

/* Threads used by training, prediction and search (OpenMP and OpenBLAS);
 * n <= 0 means all cores.  Returns the number in effect. */
ES_API int es_set_threads(int n);

/* ---- The step-level model API ------------------------------------------------
 * A model is an embedding table (storage) plus a dense net plus the schema
 * they were trained on.  The caller owns the loop (docs/api.md):
 *
 *     es_model_params mp = es_model_params_default();
 *     mp.n_dense = es_reader_n_dense(r); mp.n_fields = es_reader_n_fields(r);
 *     es_model_create(&m, &mp, vocab_or_NULL, &err);
 *     es_model_set_reader(m, r);            // how files are read, saved with it
 *     while (es_reader_next(r, &b) > 0) es_model_train_batch(m, &b, &loss);
 *     es_model_save(m, "model.es", 0);
 *     ... es_model_load(&m2, "model.es", 0, &err); es_model_predict_batch(m2, &b, prob);
 *
 * es_train (above) is such a loop, with counting, the vocabulary pass,
 * checkpoints, evaluation and metadata around it; with the same settings
 * and one thread, a loop over these calls gives the same bits.
 *
 * Thread rule: one call at a time per model (a model keeps the activations
 * of its batch).  Each call parallelises inside itself over es_set_threads
 * threads.  To serve from several threads, load one model per thread.
 * Errors: the functions taking a model return 0 or a negative ES_E* code
 * and keep the message in the model (es_model_errmsg). */
typedef struct es_model es_model;

typedef struct es_model_params {
    const char *model;        /* "lr", "fm", "ffm", "dlrm" (default), "dcn" */
    int dim;                  /* 16; embedding dim (FM factor size) */
    int bottom[8], n_bottom;  /* DLRM bottom MLP (0 layers: {64, dim}) */
    int top[8], n_top;        /* DLRM top / DCN deep MLP (0 layers: {64, 32}) */
    int n_cross;              /* DCN cross layers (0: 2) */
    /* 0; 1 (fm and ffm only): normalise each row x to x / |x|, with
     * |x|^2 = F + |dense|^2 (each field a one-hot 1) -- libffm's and
     * xLearn's instance normalization: the pair term is multiplied by
     * r = 1 / |x|^2, the first-order and numeric linear terms by sqrt(r),
     * the bias by 1.  Saved with the model. */
    int norm_rows;
    /* 0; 1 (fm and ffm only): the model is the pair term alone, no bias and
     * no linear terms (libffm's FFM).  Saved with the model. */
    int pairs_only;
    int n_dense;              /* numeric features per row (required, >= 0) */
    int n_fields;             /* categorical fields per row (required, >= 1) */
    const char *storage;      /* "unified" (default); es_storage_methods() lists them */
    /* Serving bytes of the table: bytes (> 1), a fraction of the full table
     * (<= 1; needs a vocabulary), or 0: the method's default (a tenth of the
     * full table, ES_DEFAULT_BUDGET, for methods sized by a budget; the
     * exact size for `full`; none for methods that solve their own size or
     * get it from storage_opts). */
    double budget;
    const char *storage_opts; /* method options "k=v,..." (es_storage_help, --help-storage) */
    int batch;                /* 256; most rows per train/eval call */
    float lr;                 /* 1e-3; dense optimizer learning rate */
    float emb_lr;             /* 0.05; table optimizer learning rate */
    const char *optim;        /* dense: "adam" (default), "adagrad", "sgd" */
    const char *emb_optim;    /* table: "rowwise" (default), "adagrad", "sgd", or "ftrl"
                                 (FTRL-proximal, per coordinate; only methods whose
                                 embeddings are plain rows: full, hash, unified, robe,
                                 adapt; others fail with ES_EINVAL) */
    /* 0; >= 0: L2 on table rows, applied lazily (a row takes the exact decay
     * of the steps it missed when it is next touched; docs/training.md).
     * Plain-row methods only (as FTRL), and not with ftrl (use ftrl_l2). */
    float emb_l2;
    /* 0 (off); p > 0 (0.5 the usual): frequency-aware lazy L2, a row touched
     * c times so far decays with strength emb_l2 * (1 + c)^-p, so rare
     * rows are regularized more than frequent ones (docs/training.md).
     * Needs emb_l2 > 0; not with ftrl. */
    float emb_l2_freq;
    /* 0; >= 0: the table Adagrad's (adagrad, rowwise) initial accumulator.
     * libffm starts it at 1, which caps the first steps at lr. */
    float emb_init_acc;
    /* 0: the default initial table rows (U(-0.05, 0.05); zeros for lr);
     * > 0: U(-s, s) (libffm's FFM draws U[0, 1/sqrt(k)), whose spread
     * U(-1/(2 sqrt(k)), 1/(2 sqrt(k))) matches up to a shift). */
    float emb_init_scale;
    /* 0; added to every initial table value (plain-row methods: full, hash,
     * unified, robe, adapt): rows start U(m - s, m + s).  libffm's init is
     * s = m = 1 / (2 sqrt(k)). */
    float emb_init_shift;
    /* FTRL-proximal (McMahan et al. 2013): alpha 0.05 (> 0), beta 0.01, l1 0,
     * l2 0 (each >= 0); used when emb_optim is "ftrl".  The paper's and
     * alphaFM's beta 1 is for per-example gradients; ours are batch means
     * (about 1/batch as large), where beta 1 would swamp sqrt(n) and freeze
     * the rate at alpha/beta: 0.01 lets it adapt (docs/training.md). */
    float ftrl_alpha, ftrl_beta, ftrl_l1, ftrl_l2;
    float weight_decay;       /* 0; L2 on dense weights (not biases) */
    /* 0; in [0, 1), dlrm and dcn only (else ES_EINVAL): inverted dropout
     * after the ReLU of every hidden MLP layer (not the DLRM bottom's
     * output z0, not the cross layers, not the logit), in
     * es_model_train_batch only -- eval and predict never drop.  The masks
     * follow from seed and the step count (saved in checkpoints), not from
     * the thread count.  Saved with the model. */
    float dropout;
    /* NULL (fp32): the precision of the table's rows while training and
     * serving, "fp16", "int16", "int8", "int4" or "int2", for the storage
     * methods whose embeddings are rows of tables (else ES_EINVAL).  The
     * budget then counts the rows at that precision (codes, per-row scale
     * and bias), and the saved model holds only codes.  How it trains is
     * qtrain: "qat" (the default: an fp32 master copy, the forward reads
     * the rows quantized to nearest, straight-through gradient) or "alpt"
     * (int kinds only: codes alone with a learned per-row step and
     * stochastic rounding on update; no fp32 copy of the table).
     * docs/methods.md, "Precision". */
    const char *precision;
    const char *qtrain;
    uint64_t seed;            /* 1; every initial value follows from it */
    /* NULL: a plain model.  "p1,p2,...,dim" (fm, ffm, dlrm, dcn; not lr):
     * Matryoshka training (docs/methods.md, "matryoshka"), the loss
     * sum_i w_i * logloss(model at prefix p_i), where the model at prefix p
     * uses only the first p columns of every embedding (FM: the first-order
     * weight and v[0..p); FFM: v[0..p) of every field-pair vector; DLRM:
     * also z0[0..p) of the bottom MLP; DCN: x0 without the columns past p).
     * At most 8 prefixes, strictly increasing, the last equal to dim.
     * Saved with the model; es_model_set_prefix evaluates at any of them and
     * es_model_slice cuts the model to one. */
    const char *matryoshka;
    /* NULL: every w_i = 1 (Kusupati et al. 2022); else "w1,w2,..." one
     * finite weight >= 0 per prefix, not all 0. */
    const char *matryoshka_weights;
} es_model_params;

/* The defaults above (those of es_train_params_default and the CLI). */
ES_API es_model_params es_model_params_default(void);
/* The model part of a training run's parameters, for a file of n_dense
 * numeric and n_fields categorical columns (es_train uses exactly this). */
ES_API es_model_params es_model_params_from_train(const es_train_params *p, int n_dense, int n_fields);

/* Create a model for training.  vocab (may be NULL) holds the value counts
 * of the training rows: needed by methods that size themselves from it
 * (`full`, mde, adapt) and by budgets given as a fraction; a method that
 * needs one and gets NULL fails with ES_EINVAL saying so.  The vocabulary
 * is only read during the call.  Before allocating, the bytes the model
 * needs are compared with physical memory and the process limits (ES_ENOMEM
 * with the figures).  Errors: ES_EINVAL (a parameter out of range, unknown
 * model, method or optimizer, or an invalid method option: the message
 * names it), ES_EBUDGET (budget too small for the method), ES_ENOMEM.  On
 * failure *out is NULL and err says why. */
ES_API int es_model_create(es_model **out, const es_model_params *p, const es_vocab *vocab, es_err *err);
/* Record how this model reads files: the reader's resolved parameters
 * (format, delimiter, column spec, ...) and its column names (the
 * categorical fields, the numeric features, the label).  They are saved
 * with the model, so that es_model_eval_file / es_model_predict_file read
 * other files the same way and match CSV columns by name.  The reader must
 * have the model's n_dense and n_fields (ES_EINVAL otherwise).  Optional:
 * without it a model reads files with the default reader parameters.
 * Returns 0, ES_EINVAL or ES_ENOMEM. */
ES_API int es_model_set_reader(es_model *m, const es_reader *r);
/* One optimisation step on the rows of b (1 <= b->n <= params.batch):
 * lookup, forward, log loss, backward, dense optimizer step, sparse table
 * update.  loss_sum (may be NULL) receives the SUM over the rows of the
 * log loss before the step (divide by b->n for the batch mean; es_train
 * reports the mean over an epoch).  Errors: ES_EINVAL (b->n out of range
 * or b's shape differs from the model's; nothing changes), ES_ENOMEM (the
 * table's update scratch could not grow: the dense step was applied, the
 * table update was not). */
ES_API int es_model_train_batch(es_model *m, const es_batch *b, double *loss_sum);
/* Probabilities of the rows of b into prob[b->n] (any b->n >= 0: rows are
 * processed params.batch at a time) and, when loss_sum is not NULL, the
 * summed log loss against b->label.  Nothing is updated.  A row's
 * probability does not depend on the other rows of b, on how a file is cut
 * into batches, on the thread count or on the SIMD level (bit for bit on
 * one machine: docs/determinism.md).  ES_EINVAL when b's shape differs. */
ES_API int es_model_eval_batch(es_model *m, const es_batch *b, float *prob, double *loss_sum);
/* Matryoshka: evaluate and predict (es_model_eval_batch, _predict_batch,
 * _eval_file, _predict_file, _predict_mem) with the model at prefix dim:
 * only the first dim columns of every embedding (es_model_params.
 * matryoshka says what that means per model).  dim must be one of the
 * prefixes the model was trained with (model.matryoshka in its metadata),
 * or 0 or the model's dim for the whole model (the default).  Training is
 * not affected: es_model_train_batch always trains the nested loss.  The
 * scores equal, bit for bit, those of es_model_slice(m, dim).  Errors:
 * ES_EINVAL (not a trained prefix; es_model_errmsg names the trained
 * prefixes). */
ES_API int es_model_set_prefix(es_model *m, int dim);
/* A new model m cut to the trained prefix dim (see es_model_set_prefix):
 * table rows of the first columns only, the net of dimension dim, the
 * same reader settings and metadata, prefixes up to dim.  It scores every
 * row exactly as m at es_model_set_prefix(m, dim) does.  Storage methods
 * full, hash and unified at fp32; others are ES_EINVAL (the message says
 * which).  The new model carries no optimizer state.  Save it with
 * es_model_save.  Errors (err): ES_EINVAL (dim not a trained prefix, a
 * method that cannot be cut), ES_ENOMEM. */
ES_API int es_model_slice(es_model *m, int dim, es_model **out, es_err *err);
/* es_model_eval_batch without the loss. */
ES_API int es_model_predict_batch(es_model *m, const es_batch *b, float *prob);

/* Post-training quantization (docs/methods.md, "Precision"): convert the
 * model's embedding table in place from fp32 to `precision` ("fp16",
 * "int16", "int8", "int4" or "int2"; rows in the fused layout of
 * src/storage/quant.h, nearest rounding), freeing the fp32 weights and the
 * table's optimizer state.  The model then predicts (lookups dequantize
 * each row on the fly), saves (the codes as a u8 tensor "storage.weight.q"
 * and metadata storage.precision) and loads like any other, but refuses
 * training (es_model_train_batch: ES_EINVAL: the codes carry no training
 * state; to train at a precision, create the model with
 * es_model_params.precision and qtrain).  The dense layers stay fp32.
 * Supported for the row-table methods (full, hash, unified, qr, multihash, mde,
 * robe, adapt).  Errors (the model unchanged,
 * message in err and es_model_errmsg): ES_EINVAL for an unknown precision,
 * fp32, a method that does not support it (named), or a table already
 * quantized; ES_ERANGE when a row is not finite or beyond the half range;
 * ES_ENOMEM. */
ES_API int es_model_quantize(es_model *m, const char *precision, es_err *err);

/* Save flags. */
#define ES_SAVE_STATE 1u /* also the optimizer state (to continue training) */
/* Write the model to `path` atomically (temporary file, fsync, rename; the
 * temporary file is removed on failure, and `path` is untouched).  With
 * ES_SAVE_STATE the file also holds the optimizer state (to continue
 * training exactly, write a checkpoint instead: es_model_checkpoint_save
 * adds the loop position, and es_model_checkpoint_load reads both).  Errors: ES_EIO (cannot write; message names the path), ES_ENOMEM. */
ES_API int es_model_save(es_model *m, const char *path, unsigned flags);

/* Where a training loop is: saved with a checkpoint so a resumed run skips
 * what it has done.  epoch counts from 0; rows are the rows of that epoch
 * already trained on; trained the rows of all epochs; loss_sum the summed
 * loss of the rows of this epoch so far. */
typedef struct es_checkpoint {
    int epoch;
    uint64_t rows;
    uint64_t trained;
    double loss_sum;
} es_checkpoint;
/* Save a checkpoint: the model with its optimizer state and `pos`
 * (atomically, like es_model_save).  Errors as es_model_save, ES_EINVAL for
 * a negative or non-finite position. */
ES_API int es_model_checkpoint_save(es_model *m, const char *path, const es_checkpoint *pos);
/* Load a checkpoint written by es_model_checkpoint_save into a model that
 * can continue training, and its position.  Every number is checked:
 * ES_EFORMAT (with the key and value) for a file that is not a complete
 * checkpoint or holds a position out of range (a negative epoch, ...),
 * and the errors of es_model_load. */
ES_API int es_model_checkpoint_load(es_model **out, const char *path, es_checkpoint *pos, es_err *err);

/* Set a metadata entry saved with the model (copied; replaces the value of
 * an existing key).  Applications may set keys under "user." only (the
 * other prefixes are the library's): ES_EINVAL otherwise, ES_ENOMEM. */
ES_API int es_model_set_meta(es_model *m, const char *key, const char *value);

/* Model sizes: serving bytes of the embedding table (parameters + lookup
 * maps), of its optimizer state, and of the dense parameters. */
ES_API size_t es_model_table_bytes(const es_model *m);
ES_API size_t es_model_table_state_bytes(const es_model *m);
ES_API size_t es_model_net_bytes(const es_model *m);

#define ES_LOAD_NO_VERIFY 1u  /* skip tensor checksums when loading */
/* Map the large tensors from the file instead of reading them: opening
 * then takes no time that grows with the model (with ES_LOAD_NO_VERIFY),
 * but the file must not be modified in place while the model is in use —
 * replace it by rename (as embstore's writers do), never by `cp` over it or
 * truncation, which make the process die of SIGBUS.  Without this flag the
 * model is read into private memory once and never depends on the file
 * again.  See docs/format.md, "Loading: read or map". */
#define ES_LOAD_MAP 2u

/* Load a model file for prediction (the optimizer state, if any, is not
 * read; es_model_checkpoint_load continues training).  Every count, shape
 * and number in the file is checked: ES_EFORMAT / ES_ECHECKSUM /
 * ES_EVERSION with the path and the key, ES_ENOTFOUND / ES_EIO, ES_ENOMEM.
 * Files written by earlier versions of embstore load and predict the same
 * bits. */
ES_API int es_model_load(es_model **out, const char *path, unsigned flags, es_err *err);
/* Free a model (NULL is a no-op). */
ES_API void es_model_free(es_model *m);
/* The message of the last failed call on m ("" when none). */
ES_API const char *es_model_errmsg(const es_model *m);
/* Metadata value stored with the model (NULL if absent). */
ES_API const char *es_model_meta(const es_model *m, const char *key);
/* Reader parameters the model was trained with (columns, format, ...). */
ES_API es_reader_params es_model_reader_params(const es_model *m);
ES_API int es_model_n_fields(const es_model *m);
ES_API int es_model_n_dense(const es_model *m);
/* Evaluate on a labeled file (read with the model's reader parameters).
 *
 * How eval and predict read a file (docs/data-formats.md): with the
 * model's reader parameters (es_model_reader_params), or those set with
 * es_model_set_reader_params.  A CSV file with a header is matched to the
 * model by column name: columns may come in any order, columns the model
 * does not read are ignored (es_model_input_note names them), and a missing
 * column is an error that names it.  Header-less files and column specs by
 * index are read by position.  libffm files are read with the model's
 * field count (a file may lack the highest field).  Errors (es_model_errmsg)
 * keep the file:line:column prefix and, for a file of the wrong layout,
 * say what the model expects and which option fits. */
ES_API int es_model_eval_file(es_model *m, const char *path, es_metrics *out);
/* Write one probability per line of `in` to out_path (atomically; "-" or
 * NULL for stdout).  has_label = 0 reads an unlabeled file (no label
 * column, e.g. the 39-column Criteo test file; a CSV file may lack the
 * label column, or have it, ignored). */
ES_API int es_model_predict_file(es_model *m, const char *in, int has_label, const char *out_path, uint64_t *rows_out);
/* How the following es_model_predict_file calls print each probability:
 * digits 0 (a model's default) "%.6f", six decimals; 1..9 that many
 * significant digits ("%.*g").  9 prints every float exactly: strtof reads
 * each line back to the very float es_model_predict_batch gave (and the
 * server sends, "%.9g"), so outputs can be compared bit for bit.  Returns
 * 0 or ES_EINVAL (digits out of range; es_model_errmsg). */
ES_API int es_model_set_predict_digits(es_model *m, int digits);
/* es_model_predict_file over text in memory: data[n] holds lines in the
 * model's input format, read exactly as es_model_predict_file reads a file
 * (the same reader parameters, a CSV header line first when the model's
 * format has one, blank lines skipped), so the probabilities are the same
 * bits.  Writes one probability per row into prob[cap] and the row count
 * to *rows_out (may be NULL).  name stands for the file name in messages
 * (NULL: "<memory>"), e.g. "request:3:column 5 (C2): ...".  Returns 0,
 * ES_ERANGE when the text holds more than cap rows, or the errors of
 * es_model_predict_file (message in es_model_errmsg).  Not thread safe on
 * one model (the model's scratch is used); load one handle per thread.
 * The handle keeps the reader and batch of the call (about 1.3 MB) for the
 * next call with the same name and has_label (Criteo, libsvm, libffm
 * models), which then reads without opening afresh and gives the same
 * result; es_model_free releases them. */
ES_API int es_model_predict_mem(es_model *m, const void *data, size_t n, const char *name, int has_label, float *prob,
                                size_t cap, size_t *rows_out);
/* Reader parameters for the following es_model_eval_file and
 * es_model_predict_file calls (copied, the column spec too); NULL goes back
 * to the model's own.  Start from es_model_reader_params(m) and change what
 * differs (delimiter, header, format, columns).  A column spec other than
 * the model's is checked when a file is opened: it must give as many
 * categorical (cat/multi) and numeric (num) columns as the model has fields
 * and numeric features; they are matched to the model's by name when the
 * names are the model's (schema.fields, schema.dense), else in the order of
 * the spec's entries.  has_label is set by each call.  The model file is
 * unchanged (es_model_reader_params still returns the trained ones).
 * Returns 0 or ES_ENOMEM. */
ES_API int es_model_set_reader_params(es_model *m, const es_reader_params *rp);
/* A note about the last file eval or predict opened that is not an error
 * ("FILE: 2 columns not read by the model are ignored: a, b"), or "". */
ES_API const char *es_model_input_note(const es_model *m);
/* Embedding of a value: out[dim] for (field, key). */
ES_API int es_model_embedding(es_model *m, int field, uint64_t key, float *out);
ES_API int es_model_emb_dim(const es_model *m);
/* The arrays of the model's embedding storage in place, no copy (for
 * bindings that expose them as arrays, e.g. the Python package's
 * Model.table): es_model_n_tensors counts them (the optimizer state is not
 * listed); es_model_tensor gives tensor i's name as the model file has it
 * ("storage.weight", ...), its dtype name ("f32", "u8", ... as
 * es_file_tensor_info), ndim, shape and a pointer to the model's own
 * memory: after es_model_load with ES_LOAD_MAP the pages mapped
 * copy-on-write from the file, else private memory.  Writes through it
 * change what the model looks up (never the file).  Valid until the model
 * is freed or quantized; the name until the next es_model_tensor call on
 * m.  Quantized tables are their codes ("storage.weight.q", u8), not
 * floats.  Returns 0 or ES_ERANGE (i out of range; es_model_errmsg). */
ES_API int es_model_n_tensors(es_model *m);
ES_API int es_model_tensor(es_model *m, int i, const char **name, const char **dtype, int *ndim, uint64_t shape[4],
                           void **data);

/* Names of the registered storage methods (at most max); returns the count.
 * `summaries` (may be NULL) receives one line describing each. */
ES_API int es_storage_methods(const char **names, const char **summaries, int max);
/* Help text of a storage method (or of every method when method is NULL):
 * its summary and its options (name, type, default, help, range), into
 * buf; returns the length the whole text needs (as snprintf), or ES_EINVAL
 * for an unknown method (message in err). */
ES_API int es_storage_help(const char *method, char *buf, size_t cap, es_err *err);
/* 1 if the method takes option key in storage_opts, 0 if not, ES_EINVAL for
 * an unknown method. */
ES_API int es_storage_has_option(const char *method, const char *key);

/* Lookup speed of a storage method: build the vocabulary of p->train_path
 * (first p->max_rows rows, or all), create p->storage at p->budget, then
 * time `repeat` passes of batched lookups over those rows (batches of
 * p->batch, p->threads threads; parsing is done before timing).  Reports
 * (row, field) lookups per second and the method's serving bytes. */
ES_API int es_bench_lookup(const es_train_params *p, int repeat, double *lookups_per_s, size_t *bytes, es_err *err);

/* ==== Container files (models, indexes, checkpoints): inspection ==== */

/* Open any embstore container file read-only (mmap) to look at it.  flags:
 * ES_LOAD_NO_VERIFY skips tensor checksums.  See docs/format.md. */
typedef struct es_file es_file;
ES_API int es_file_open(es_file **out, const char *path, unsigned flags, es_err *err);
ES_API void es_file_close(es_file *f);
ES_API uint32_t es_file_version(const es_file *f);
ES_API uint64_t es_file_size(const es_file *f);
ES_API int es_file_n_meta(const es_file *f);
ES_API void es_file_meta_at(const es_file *f, int i, const char **key, const char **value);
ES_API const char *es_file_meta(const es_file *f, const char *key);
ES_API int es_file_n_tensors(const es_file *f);
/* Description of tensor i: name, dtype name ("f32", ...), dims, bytes. */
ES_API int es_file_tensor_info(const es_file *f, int i, const char **name, const char **dtype, int *ndim, uint64_t shape[4],
                               uint64_t *nbytes);

/* ==== Vector search (index) ==== */
/* Search stored vectors: exact, quantized, binary and graph indexes,
 * prefix (Matryoshka / PCA) search with full-dimension re-ranking, filtered
 * search over integer attributes, and multi-vector retrieval (MUVERA).
 * docs/retrieval.md describes the kinds, options and file formats.
 *
 * Results are written to caller-owned arrays ids[nq*k] and dist[nq*k],
 * best first.  dist is the squared L2 distance for ES_METRIC_L2 (smaller is
 * better) and the inner product / cosine similarity otherwise (larger is
 * better).  Slots without a result (fewer than k vectors pass a filter, or
 * an approximate index found fewer) hold id -1 and distance +inf (L2) or
 * -inf (IP, cosine). */

/* Persisted in index files: append-only. */
typedef enum { ES_METRIC_L2 = 0, ES_METRIC_IP = 1, ES_METRIC_COSINE = 2 } es_metric;

/* Persisted in index files: append-only. */
typedef enum {
    ES_INDEX_FLAT = 0,   /* exact search over float32 vectors */
    ES_INDEX_SQ8 = 1,    /* per-dimension 8-bit scalar quantization */
    ES_INDEX_BINARY = 2, /* sign bits (optionally after PCA + ITQ rotation), Hamming distance */
    ES_INDEX_PQ = 3,     /* product quantization (optional OPQ rotation), ADC tables */
    ES_INDEX_HNSW = 4,   /* hierarchical navigable small-world graph over float32 vectors */
    ES_INDEX_IVF = 5     /* coarse k-means lists over flat, sq8 or pq codes */
} es_index_kind;

/* HNSW insertion order (order changes recall).  Persisted: append-only. */
typedef enum {
    ES_ORDER_INPUT = 0,    /* ids in increasing order */
    ES_ORDER_RANDOM = 1,   /* a seeded shuffle */
    ES_ORDER_LID_DESC = 2, /* decreasing local intrinsic dimension (hardest first) */
    ES_ORDER_LID_ASC = 3   /* increasing local intrinsic dimension */
} es_insert_order;

typedef struct es_index_params {
    es_index_kind kind;     /* ES_INDEX_FLAT */
    es_metric metric;       /* ES_METRIC_L2 */
    int dim;                /* vector dimension (required, >= 1) */
    /* Prefix search: the kind indexes only the first search_dim components
     * (after the PCA rotation when pca = 1); 0 = all.  With rerank > 0 the
     * shortlist is re-scored at full dimension. */
    int search_dim;         /* 0 */
    int pca;                /* 0; 1: fit a PCA rotation at train time */
    /* Re-ranking: the kind returns rerank * k candidates, re-scored exactly
     * with the full float32 vectors (kept by the index).  0 = off. */
    int rerank;             /* 0 */
    /* binary */
    int binary_bits;        /* 0 = dim (or search_dim); bits per code */
    int itq_iters;          /* 0 = plain sign bits of centred data; > 0: PCA + ITQ rotation */
    /* pq (also the codes of ivf with ivf_codes = ES_INDEX_PQ) */
    int pq_m;               /* 0 = dim / 4 rounded to a divisor of dim; sub-quantizers */
    int pq_bits;            /* 8; bits per sub-quantizer code (1..8) */
    int opq_iters;          /* 0; > 0 learns an OPQ rotation */
    /* hnsw */
    int hnsw_m;             /* 16; links per node (2M on the base layer) */
    int ef_construction;    /* 200 */
    int ef_search;          /* 64; search-time, see es_index_set */
    es_insert_order order;  /* ES_ORDER_INPUT */
    /* ivf */
    int nlist;              /* 0 = about 4 * sqrt(n) at train time */
    int nprobe;             /* 8; search-time */
    es_index_kind ivf_codes;/* ES_INDEX_FLAT, ES_INDEX_SQ8 or ES_INDEX_PQ */
    /* training */
    int kmeans_iters;       /* 20 */
    size_t train_max;       /* 65536; vectors sampled for training */
    uint64_t seed;          /* 1 */
    int threads;            /* 0 = all cores (OpenMP default) */
} es_index_params;

ES_API es_index_params es_index_params_default(void);

typedef struct es_index es_index;

/* Create an empty index.  Fails (ES_EINVAL, message in err) on invalid
 * parameters, e.g. pq_m not dividing the dimension. */
ES_API int es_index_create(es_index **out, const es_index_params *p, es_err *err);
/* Learn what the kind needs (PCA, codebooks, coarse centroids, ITQ/OPQ
 * rotations) from n vectors x[n][dim].  Must come before the first add;
 * es_index_add trains on its own input when this was not called. */
ES_API int es_index_train(es_index *ix, size_t n, const float *x);
/* Append n vectors x[n][dim]; they get ids size() .. size() + n - 1.
 * Non-finite values are rejected (ES_EINVAL, nothing added). */
ES_API int es_index_add(es_index *ix, size_t n, const float *x);
/* Attach n_attr integer attributes to every vector: attrs[size()][n_attr],
 * copied.  Replaces earlier attributes. */
ES_API int es_index_set_attrs(es_index *ix, size_t n, int n_attr, const int32_t *attrs);
ES_API int es_index_n_attrs(const es_index *ix);

/* A query filter: attribute `attr` must equal one of values[0..n_values). */
typedef struct es_filter {
    int attr;
    int n_values;
    const int32_t *values;
} es_filter;

/* k nearest neighbours of each query q[nq][dim] into ids[nq*k], dist[nq*k]
 * (see above).  filter may be NULL; with a filter every result satisfies
 * it.  Errors (ES_EINVAL, or ES_ENOMEM): an empty index, k < 1 or larger
 * than the index, dimension mismatch (caller's contract), non-finite query
 * values, filter on an unknown attribute.
 * Thread safe: several threads may search one index at once (not while it
 * is modified: add, train, set_attrs, set, save, free).  A failed search's
 * message is kept for the calling thread only: es_index_errmsg(ix), called
 * afterwards from the same thread, returns it, and a search failing in
 * another thread at the same time neither overwrites nor shows in it. */
ES_API int es_index_search(es_index *ix, size_t nq, const float *q, int k, const es_filter *filter, int64_t *ids,
                           float *dist);
/* es_index_search with the message of a failure written to err (may be
 * NULL; untouched on success) and nowhere else: neither the handle nor the
 * thread's message es_index_errmsg returns changes.  For callers that hand
 * an error across threads, or want it per call. */
ES_API int es_index_search_ex(es_index *ix, size_t nq, const float *q, int k, const es_filter *filter, int64_t *ids,
                              float *dist, es_err *err);
/* Change a search-time parameter: "ef_search", "nprobe", "rerank",
 * "threads".  ES_EINVAL for an unknown name or an out-of-range value. */
ES_API int es_index_set(es_index *ix, const char *name, double value);

ES_API size_t es_index_size(const es_index *ix);    /* vectors added */
ES_API int es_index_dim(const es_index *ix);
/* The parameters in effect (after defaults were resolved at train time). */
ES_API const es_index_params *es_index_params_of(const es_index *ix);
/* Bytes held for search: codes, graph, codebooks, rotations, full vectors
 * kept for re-ranking, attributes. */
ES_API size_t es_index_bytes(const es_index *ix);
/* Seconds spent training and adding (kept in the file across save/load). */
ES_API double es_index_build_seconds(const es_index *ix);

/* Save to `path` (embstore container: versioned, checksummed; written to a
 * temporary file and renamed).  Load maps the file and uses the arrays in
 * place; a loaded index can be searched, and added to (arrays are copied on
 * the first change).  Every count, id and offset in the file is checked. */
ES_API int es_index_save(es_index *ix, const char *path);
ES_API int es_index_load(es_index **out, const char *path, es_err *err);
ES_API void es_index_free(es_index *ix);
/* The message of the last failure on ix seen by the calling thread: its
 * own last failed es_index_search on ix, or the last failure of the other
 * calls (add, train, set_attrs, set, save), whichever came later; "" when
 * none.  Valid until the next call on ix from this thread (or a failing
 * non-search call from any thread). */
ES_API const char *es_index_errmsg(const es_index *ix);

ES_API const char *es_index_kind_name(es_index_kind k);
ES_API const char *es_metric_name(es_metric m);
/* Parse "flat", "sq8", ... / "l2", "ip", "cosine"; ES_EINVAL if unknown. */
ES_API int es_index_kind_parse(const char *s, es_index_kind *out);
ES_API int es_metric_parse(const char *s, es_metric *out);

/* ---- vector files -------------------------------------------------------------
 * texmex .fvecs/.bvecs/.ivecs (int32 d, then d values per record), raw
 * float32 with a given dimension, whitespace text ("label v1 .. vd" per line,
 * GloVe / word2vec style; a label is optional, a word2vec "n d" header line
 * is skipped, '#' lines are comments), or one f32 2-D tensor of an embstore
 * container file (e.g. "storage.<...>.w" rows of a trained model). */
typedef enum {
    ES_VEC_AUTO = 0,  /* from the extension: .fvecs .bvecs .ivecs .txt/.vec/.text,
                         .f32/.raw/.bin (raw, needs dim), .es/.embstore (needs tensor) */
    ES_VEC_FVECS = 1,
    ES_VEC_BVECS = 2,
    ES_VEC_IVECS = 3,
    ES_VEC_RAW_F32 = 4,
    ES_VEC_TEXT = 5,
    ES_VEC_TENSOR = 6
} es_vec_format;

typedef struct es_vec_read_params {
    es_vec_format format;  /* ES_VEC_AUTO */
    int dim;               /* raw: required; others: 0, or the dimension expected */
    const char *tensor;    /* ES_VEC_TENSOR: tensor name */
    size_t max_rows;       /* 0 = all; else read only the first max_rows */
    /* Vector sets (multi-vector documents): 1 groups consecutive text rows
     * that share a label into one set; set_size > 0 groups every set_size
     * consecutive rows of any format (the last set may be shorter). */
    int sets_by_label;     /* 0 */
    int set_size;          /* 0 */
} es_vec_read_params;

ES_API es_vec_read_params es_vec_read_params_default(void);

typedef struct es_vecs {
    size_t n;          /* rows */
    int dim;
    float *x;          /* [n*dim] rows (NULL for .ivecs) */
    int32_t *i;        /* [n*dim] for .ivecs (NULL otherwise) */
    char **labels;     /* [n] row labels of a labelled text file, else NULL */
    size_t n_sets;     /* sets when requested, else 0 */
    size_t *set_off;   /* [n_sets + 1]: set s is rows set_off[s] .. set_off[s+1]-1 */
    void *priv_;       /* internal */
} es_vecs;

/* Read one file.  Rejects: records of differing dimension, truncated
 * records, NaN/Inf values, empty files, dimensions above 2^20; the message
 * names the file and the record or line. */
ES_API int es_vecs_read(es_vecs *out, const char *path, const es_vec_read_params *p, es_err *err);
/* Read several files of one format as one set (e.g. a base split in
 * parts); dimensions must agree. */
ES_API int es_vecs_read_many(es_vecs *out, const char *const *paths, int n_paths, const es_vec_read_params *p,
                             es_err *err);
ES_API void es_vecs_free(es_vecs *v);
/* Write texmex files atomically (temporary file, then rename). */
ES_API int es_fvecs_write(const char *path, size_t n, int dim, const float *x, es_err *err);
ES_API int es_ivecs_write(const char *path, size_t n, int dim, const int32_t *x, es_err *err);

/* ---- multi-vector retrieval (MUVERA) ------------------------------------------
 * Documents and queries are sets of vectors.  Each set is mapped to one
 * Fixed Dimensional Encoding (FDE): `reps` repetitions of a SimHash
 * partition into 2^k_sim buckets, each bucket holding the (projected)
 * vectors that fall in it (documents: their mean, queries: their sum),
 * optionally compressed by a final Count-Sketch projection.  The inner
 * product of FDEs approximates the Chamfer similarity
 *   sum over query vectors q of max over document vectors p of <q, p>.
 * A single-vector index over the document FDEs retrieves `candidates`
 * documents, which are re-ranked by exact Chamfer similarity. */
typedef struct es_multi_params {
    int dim;                /* token vector dimension (required) */
    int k_sim;              /* 4; SimHash bits per repetition (buckets = 2^k_sim) */
    int reps;               /* 10; repetitions */
    int d_proj;             /* 0 = dim; random +-1 projection of each vector per repetition */
    int d_final;            /* 0 = off; Count-Sketch output dimension */
    int fill_empty;         /* 1; a document's empty bucket takes its nearest vector (Hamming) */
    int candidates;         /* 100; documents re-ranked per query */
    int normalize;          /* 1; scale every token vector to unit length */
    int center;             /* 0; 1: subtract the mean document vector (learned at the first add)
                               before normalising, for data confined to one orthant (e.g. SIFT),
                               where SimHash cuts would otherwise be unbalanced */
    uint64_t seed;          /* 1 */
    es_index_params inner;  /* index over the FDEs (metric forced to IP, dim set) */
} es_multi_params;

ES_API es_multi_params es_multi_params_default(void);

typedef struct es_multi es_multi;
ES_API int es_multi_create(es_multi **out, const es_multi_params *p, es_err *err);
/* Add n_sets documents; set s has rows off[s] .. off[s+1]-1 of x[off[n_sets]][dim]
 * (off[0] must be 0; empty sets are rejected).  Ids are consecutive. */
ES_API int es_multi_add(es_multi *m, size_t n_sets, const size_t *off, const float *x);
/* Top k documents of each query set by Chamfer similarity among the
 * FDE candidates: ids[nq*k], score[nq*k] (larger is better; -inf, -1 pad).
 * n_scored (may be NULL) receives the total documents scored exactly. */
ES_API int es_multi_search(es_multi *m, size_t nq, const size_t *qoff, const float *q, int k, int64_t *ids, float *score,
                           size_t *n_scored);
/* Exact Chamfer top-k over all documents (ground truth). */
ES_API int es_multi_search_exact(es_multi *m, size_t nq, const size_t *qoff, const float *q, int k, int64_t *ids,
                                 float *score);
ES_API int es_multi_set(es_multi *m, const char *name, double value); /* "candidates", then es_index_set names */
ES_API size_t es_multi_size(const es_multi *m);
ES_API int es_multi_dim(const es_multi *m);     /* token vector dimension */
ES_API int es_multi_fde_dim(const es_multi *m);
ES_API size_t es_multi_bytes(const es_multi *m);
ES_API int es_multi_save(es_multi *m, const char *path);
ES_API int es_multi_load(es_multi **out, const char *path, es_err *err);
ES_API void es_multi_free(es_multi *m);
ES_API const char *es_multi_errmsg(const es_multi *m);
/* The FDE of one set (document or query side) into out[fde_dim]. */
ES_API int es_multi_encode(es_multi *m, int is_query, size_t n, const float *x, float *out);
/* ==== end index ==== */

/* ==== Diagnostics of representations (src/diag; docs/diagnostics.md) ====
 * Measures of a set of n vectors x[n, d] (row-major float32): the singular
 * value spectrum and the effective rank (RankMe), intrinsic dimension
 * (TwoNN, Levina-Bickel MLE), the Vendi score (cosine kernel), dead and
 * near-duplicate rows; and, for a model, its tables per field and the
 * collisions of the hashed methods.
 *
 * Input rules (every es_diag_* taking x): n >= 1, 1 <= d <= 2^20, every
 * value finite; otherwise ES_EINVAL with a message naming the bad row and
 * column.  Results are plain structs; arrays in them are owned by the
 * struct and released by its _free function (which zeroes it; freeing a
 * zeroed struct is a no-op).  Nothing is ever NaN: a measure that does not
 * exist for the input (an estimator with too few distinct rows) is marked
 * unavailable with a reason, see each struct. */
typedef struct es_diag_params {
    int k;            /* 20: Levina-Bickel neighbours (>= 3) */
    size_t sample;    /* 10000: rows drawn (without replacement, seeded) for
                         the kNN estimators and the duplicate search; 0 = all */
    uint64_t seed;    /* 1: the sample */
    int top_k;        /* 10: the energy share of the top_k singular values */
    double dead_rel;  /* 1e-3: a row is dead when its norm is 0 or below
                         dead_rel times the median row norm */
    double dup_cos;   /* 0.999: a row is a near-duplicate when another row of
                         the sample has cosine similarity above dup_cos */
    int threads;      /* 0: the library's (es_set_threads) */
} es_diag_params;
ES_API es_diag_params es_diag_params_default(void);

/* Singular values of x as given (not centred).  n > 4 d: eigenvalues of the
 * d x d Gram matrix X^T X accumulated in double (dsyrk over blocks of rows
 * converted to double) by LAPACKE_dsyevd, sigma = sqrt(max(lambda, 0)):
 * relative precision about 1e-16 on lambda, so sigma_i is exact to about
 * 1e-8 sigma_1; otherwise LAPACKE_dgesdd on a double copy of x. */
typedef struct es_diag_spectrum {
    size_t n;
    int d;
    int m;                  /* min(n, d): number of singular values */
    double *sv;             /* [m] descending */
    const char *method;     /* "gram" or "gesdd" (static) */
    /* RankMe (Garrido et al. 2023): exp(-sum p_k log p_k), p_k =
     * sigma_k / ||sigma||_1 + 1e-7; 0 when every sigma is 0. */
    double erank;
    double erank_centered;  /* the same on x minus its column means */
    double nuclear;         /* ||X||_* = sum sigma */
    double frobenius;       /* ||X||_F */
    /* ||X||_* / (||X||_F sqrt(m)), in [1/sqrt(m), 1]: 1 when every sigma
     * is equal; 0 when X = 0. */
    double nuclear_norm;
    /* sigma_1 / sigma_m; 0 (meaning "infinite", rank deficient) when
     * sigma_m <= sigma_1 * max(n, d) * FLT_EPSILON, as numpy's matrix_rank
     * tolerance for float32 data. */
    double condition;
    int rank;               /* sigma above that tolerance */
    int top_k;              /* min(params top_k, m) */
    double energy_top_k;    /* sum_{i<top_k} sigma^2 / sum sigma^2 (0 for X = 0) */
    int k90, k99;           /* fewest singular values holding 90% / 99% of the energy */
} es_diag_spectrum;
ES_API int es_diag_compute_spectrum(const float *x, size_t n, int d, const es_diag_params *p, es_diag_spectrum *out,
                                    es_err *err);
ES_API void es_diag_spectrum_free(es_diag_spectrum *s);

/* Intrinsic dimension from exact nearest neighbours (squared L2 through the
 * index kernels, blocked, OpenMP over queries) among the sampled rows.
 * Duplicates are one point: the estimators run on the distinct rows of the
 * sample (a zero distance is never a neighbour).
 *   TwoNN (Facco et al. 2017): mu = r2 / r1; twonn = (N - 1) / sum log mu
 *     (maximum likelihood, unbiased), CI from its exact distribution (sum
 *     log mu ~ Gamma(N, d)) by the normal approximation d (1 +- 1.96 /
 *     sqrt(N)); twonn_fit: least squares through the origin of
 *     -log(1 - F(mu)) on log mu with the largest 10% of mu discarded.
 *   MLE (Levina & Bickel 2004) with k neighbours: local m(x) = [1/(k-1)
 *     sum_{j<k} log(T_k / T_j)]^-1; mle = the mean of the inverses, inverted
 *     (MacKay & Ghahramani), CI +-1.96 standard errors of that mean (delta
 *     method; neighbourhoods overlap, so it is optimistic); mle_lb = the
 *     mean of the local estimates (Levina-Bickel's own average); local_q:
 *     the 5, 25, 50, 75 and 95% quantiles of the local estimates.
 * ES_EINVAL with a message when fewer than k + 1 distinct rows (TwoNN: 3)
 * remain; es_diag_run marks it unavailable instead. */
typedef struct es_diag_id {
    size_t n_used;          /* distinct rows the estimators ran on */
    int k;
    double twonn, twonn_lo, twonn_hi, twonn_fit;
    double mle, mle_lo, mle_hi, mle_lb;
    double local_q[5];
} es_diag_id;
ES_API int es_diag_compute_id(const float *x, size_t n, int d, const es_diag_params *p, es_diag_id *out, es_err *err);

/* Vendi score with the cosine kernel (Friedman & Dieng 2023): exp of the
 * entropy of the eigenvalues of K / n', K the Gram matrix of the unit rows
 * (n' rows of nonzero norm; zero rows are left out).  Computed on the
 * smaller of the n' x n' and d x d matrices (the same nonzero eigenvalues),
 * in double.  In [1, min(n', d)].  ES_EINVAL when every row is zero. */
ES_API int es_diag_compute_vendi(const float *x, size_t n, int d, const es_diag_params *p, double *out, es_err *err);

/* Row norms, dead rows and near-duplicates (over the sample, exact: the
 * cosine of every pair from the kNN scan's distances). */
typedef struct es_diag_rows {
    size_t n;
    double norm_min, norm_median, norm_mean, norm_max;
    size_t zero, dead;      /* rows of norm 0; dead (see dead_rel), zero included */
    size_t sampled;         /* rows searched for duplicates */
    size_t dup_exact;       /* sampled rows equal to another sampled row */
    size_t dup_near;        /* sampled rows with a near-duplicate (exact ones included) */
    double max_cos_median;  /* median over sampled rows of the largest cosine to another row */
} es_diag_rows;
ES_API int es_diag_compute_rows(const float *x, size_t n, int d, const es_diag_params *p, es_diag_rows *out,
                                es_err *err);

/* Everything above in one call (one kNN scan serves the estimators and the
 * duplicates).  Parts that do not exist for the input are marked:
 * id_ok / vendi_ok = 0 with the reason in id_note / vendi_note. */
typedef struct es_diag_report {
    es_diag_spectrum spec;
    es_diag_rows rows;
    es_diag_id id;
    int id_ok;
    char id_note[160];
    double vendi;
    int vendi_ok;
    char vendi_note[160];
    double seconds;         /* wall time of the whole call */
} es_diag_report;
ES_API int es_diag_run(const float *x, size_t n, int d, const es_diag_params *p, es_diag_report *out, es_err *err);
ES_API void es_diag_report_free(es_diag_report *r);

/* A model's embedding rows as float arrays.  es_diag_model_tables: the
 * number of row tables of the model's storage (0 when its method has none
 * that can be read as rows, e.g. tt or dhe).  es_diag_model_table: table t
 * (0 <= t < tables) as a new array *x [*n, *dim] (rows decoded to float
 * from any precision; free with es_diag_free) and its name; field >= 0
 * gives only the rows that field can address (full: its OOV row and its
 * values' rows; hash and unified: its hash ranges; ES_EUNSUPPORTED for the
 * other methods), field = -1 the whole table. */
ES_API int es_diag_model_tables(const es_model *m);
ES_API int es_diag_model_table(es_model *m, int t, int field, float **x, size_t *n, int *dim, char *name,
                               size_t name_cap, es_err *err);
ES_API void es_diag_free(void *p);

/* Collisions of one field of a hashed table (hash, unified) for the values
 * of a vocabulary counted on data (es_vocab_add_batch): how many values
 * share a row, and how many of them lose their row to a more frequent
 * value.  For chunked tables (unified with chunks > 1) chunk 0 is used. */
#define ES_DIAG_TOP_ROWS 5
typedef struct es_diag_collisions {
    uint64_t values;        /* distinct values of the field */
    uint64_t rows;          /* rows the field can address */
    uint64_t rows_used;     /* rows holding at least one value */
    double values_per_row;  /* values / rows_used */
    double load;            /* rows_used / rows */
    /* values sharing their row with a strictly more frequent value (ties:
     * the larger key wins), as a share of the values, and the share of the
     * field's occurrences they carry */
    double share_colliding, share_colliding_weight;
    int n_top;
    uint64_t top_row[ES_DIAG_TOP_ROWS];    /* rows holding the most values */
    uint64_t top_values[ES_DIAG_TOP_ROWS];
} es_diag_collisions;
ES_API int es_diag_model_collisions(es_model *m, const es_vocab *v, int field, es_diag_collisions *out, es_err *err);
/* ==== end diagnostics ==== */

#ifdef __cplusplus
}
#endif
#endif /* EMBSTORE_H */
