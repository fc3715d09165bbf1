/*
 * reader_impl.h — private to src/data: the reader handle and the per-format
 * row parsers (criteo.c, csv.c, libsvm.c) that reader.c drives.
 *
 * A row parser turns one line (already checked for NUL bytes and invalid
 * UTF-8, unless row_checks_text says the parser does that itself) into row `row` of the batch: label, dense[n_dense], and the values
 * of every field appended at b->val[*nv...] with off[row*F + f + 1] set for
 * each field f.  off[row*F] (the end of the previous row) is read, never
 * written.  On a bad line it returns ES_EPARSE with the message in r->err
 * ("path:line:..." via es__row_err) and the caller drops the partial row;
 * ES_ENOMEM (growing the batch) is fatal.
 */
#ifndef ES_DATA_READER_IMPL_H
#define ES_DATA_READER_IMPL_H

#include "core/core.h"
#include "data/lineio.h"

#define ES__REPORT_MAX 5          /* bad-line messages kept for es_reader_bad_report */
#define ES__MAX_FIELDS 65536      /* categorical fields (libffm) and CSV columns */
#define ES__TLOG_N 4096           /* small integers with a precomputed transform */

enum { ES__COL_IGNORE = 0, ES__COL_LABEL, ES__COL_NUM, ES__COL_CAT, ES__COL_MULTI };

typedef struct es__col {
    int role;  /* ES__COL_* */
    int slot;  /* dense index (num) or field index (cat, multi) */
    int spec;  /* position of its entry in the column spec, -1 if none */
} es__col;

/* A row parser's working memory, one per thread: the reader's own (r->sc)
 * for the serial loop, one per part for the parallel loop of the
 * variable-length formats, so that threads never share it. */
typedef struct es__scratch {
    /* libffm: one line's terms, grown amortised */
    uint32_t *t_field;
    uint64_t *t_key;
    float *t_wt;
    size_t t_cap;
    uint32_t *f_count;    /* libffm: [n_fields + 1] */
    /* CSV fields renumbered out of column order: span[2f], span[2f+1] is the
     * text of field f on the current line ([2 * n_fields]; with field_col) */
    char **span;
    /* The last line with the wrong number of columns (messages only): the
     * columns it had, the columns expected, and how many it would have
     * with the other common delimiter (',' for TSV, '\t' for CSV). */
    int shape_got, shape_want, shape_alt;
} es__scratch;

/* The line being parsed: its number, where a bad-line message goes (NULL:
 * nowhere; the parallel Criteo stage parses without messages and re-parses
 * a bad line afterwards to produce its message in order), and the scratch
 * of the thread parsing it (NULL only with err NULL, for Criteo, which
 * needs none; the shape of a bad line is noted there only with err). */
typedef struct es__line {
    uint64_t no;
    es_err *err;
    es__scratch *sc;
} es__line;

typedef int (*es__row_fn)(es_reader *r, const es__line *ln, char *s, size_t n, es_batch *b, int row, size_t *nv);

/* One line of a block, for the parallel paths. */
typedef struct es__pline {
    char *s;
    size_t n;
    uint64_t no;     /* line number */
    size_t after;    /* block bytes up to and including this line */
    uint64_t seen;   /* block lines up to and including this line (blank ones too) */
    int status;
    /* variable-length formats: a good line's values are [v0, v1) of its
     * part's scratch batch; a bad line's message is bad[v0] of its part
     * (v0 = UINT32_MAX: none, out of memory) */
    uint32_t v0, v1;
} es__pline;

/* A bad line met by a part of the parallel parse: its message and, when
 * the parser noted one, its shape (es__scratch.shape_*). */
typedef struct es__badline {
    es_err err;
    int shape_got, shape_want, shape_alt;
} es__badline;

/* One thread's share of a block in the parallel parse of the
 * variable-length formats (reader.c, block_parallel_var): lines
 * [first, last) of the block parsed into rows 0.. of its own batch. */
typedef struct es__part {
    es_batch b;
    es__scratch sc;
    es__badline *bad;
    int n_bad, bad_cap;
    int first, last;
    int row0;        /* merge: the batch row of its first kept line */
    size_t nv0;      /* merge: the batch value slot of its first kept value */
    int end;         /* merge: lines [first, end) are copied */
} es__part;

struct es_reader {
    es_reader_params p;   /* resolved params; p.columns is columns_copy */
    char *columns_copy;   /* the column spec given at open (owned), or NULL */
    es_format fmt;
    char delim, msep;
    es__lineio *io;
    es__row_fn row;
    int row_checks_text;  /* the row parser does the NUL/UTF-8 check itself */
    int fixed_vals;       /* > 0: every row has exactly this many values and
                             the row parser is thread safe (Criteo), so
                             blocks of lines are parsed in parallel into
                             their final slots (block_parallel); otherwise
                             in parts and copied (block_parallel_var) */
    es__pline *pl;        /* [pl_cap] lines of the current block */
    size_t pl_cap;
    es__part *parts;      /* [n_parts] of block_parallel_var, grown on demand */
    int n_parts;
    int n_dense, n_fields;
    char **dense_names, **field_names;
    /* CSV: one entry per column of the file */
    int n_cols;
    es__col *cols;
    char **col_names;
    int header_lines;     /* lines to skip after a rewind (0 or 1) */
    /* CSV fields renumbered out of column order (es__reader_match_names,
     * es__reader_spec_order): field_col[f] is the column of field f (its
     * text on the current line goes to es__scratch.span); NULL when the
     * fields are in column order (the common case, parsed in one pass). */
    int *field_col;
    /* the serial loop's scratch; its shape_* are what es__reader_shape
     * reports (the parallel loop copies a bad line's shape there in order) */
    es__scratch sc;
    /* statistics since open/rewind */
    uint64_t rows, bad;
    int n_report;
    size_t report_len;
    char report[ES__REPORT_MAX * sizeof(((es_err *)0)->msg)];
    /* errors: a fatal one is sticky until rewind; `pending` is a bad line
     * met while peeking at open, handed to the first next(). */
    es_err err;
    int failed;
    int pending;
    const float *tlog;      /* es_transform_num(i) for 0 <= i < ES__TLOG_N (one process-wide table) */
    struct es__esd *esd;    /* a dataset cache (esd.c), else NULL; io is then NULL and
                               fmt / p describe the text the cache was built from
                               (or, after es__reader_keep_rows, io stays open, unused) */
    struct es__keep *keep;  /* es__reader_keep_rows: the rows of this pass, else NULL */
    uint64_t kept_bytes;    /* bytes of rows served from memory (es__reader_keep_rows) */
};

/* ---- the binary dataset cache (esd.c) ---- */
typedef struct es__esd es__esd;
/* 1 if the path ends in .esd or the file starts with the container magic. */
int es__esd_sniff_path(const char *path);
int es__esd_sniff_mem(const void *data, size_t n);
/* Fill a zeroed reader from a cache (path, or n bytes at mem); q: what the
 * caller asked for, compared with the recorded options (strict: as the
 * options of a text read, else only those given non-default values). */
int es__esd_open(es_reader *r, const char *path, const void *mem, size_t n, const es_reader_params *q, int strict, es_err *err);
int es__esd_next(es_reader *r, es_batch *b);
void es__esd_rewind(es_reader *r);
void es__esd_free(es__esd *e);
uint64_t es__esd_bad_lines(const es_reader *r);
/* Rows kept in memory by a text reader (es__reader_keep_rows; esd.c): a
 * store filled while a pass reads the text, handed to an es__esd when the
 * pass is whole. */
typedef struct es__keep es__keep;
es__keep *es__keep_new(uint64_t need, int n_dense, int n_fields);
void es__keep_free(es__keep *k);
void es__keep_add(es__keep *k, const es_batch *b); /* a batch read; drops the store for good on OOM */
void es__keep_eof(es__keep *k);                     /* the pass reached the end of the input */
void es__keep_stop(es__keep *k);                    /* the pass skipped rows or failed: not whole */
void es__keep_restart(es__keep *k);                 /* a new pass from the top */
int es__keep_ready(const es__keep *k);              /* a whole pass is kept */
uint64_t es__keep_bytes(const es__keep *k);
/* Move a whole pass into r->esd (the store is left empty). */
int es__esd_from_keep(es_reader *r, es__keep *k, const char *name, const char *label_name, uint64_t bad, const char *report,
                      es_err *err);
const char *es__esd_bad_report(const es_reader *r);
const char *es__esd_label_name(const es_reader *r);
const char *es__esd_name(const es_reader *r);
/* Batch kernels of the cache reader and their scalar twins: every float
 * finite; off[j] = j for j < n; w[j] = 1 for j < n. */
bool es__esd_all_finite(const float *x, size_t n);
bool es__esd_all_finite_ref(const float *x, size_t n);
void es__esd_iota(uint32_t *off, size_t n);
void es__esd_iota_ref(uint32_t *off, size_t n);
void es__esd_ones(float *w, size_t n);
void es__esd_ones_ref(float *w, size_t n);
/* es_reader_open of a cache, strict as above (es_dataset_cache). */
int es__reader_open_esd(es_reader **out, const char *path, const es_reader_params *p, int strict, es_err *err);

/* Set *ln->err (if not NULL) to "path:line: <fmt>" and return ES_EPARSE. */
int es__row_err(const es_reader *r, const es__line *ln, const char *fmt, ...) ES_PRINTF(3, 4);
/* Render a token for a message: at most 40 bytes, non-printable bytes as
 * \xNN, "..." when cut.  Returns dst. */
const char *es__tok(char *dst, size_t cap, const char *s, size_t n);
/* Strict number: optional sign, digits, '.', exponent; spaces around are
 * allowed; inf/nan/hex are not.  Exact (correctly rounded) like strtod. */
bool es__parse_num(const char *s, size_t n, double *out);
/* Numeric feature: empty -> 0 (missing), else es_transform_num(value).
 * Returns false when the text is not a number.  Inline because Criteo
 * calls it 13 times a row: short integers take a table lookup, everything
 * else goes through es__parse_num. */
static inline bool es__num_feature(const es_reader *r, const char *s, size_t n, float *out);
/* Label text -> 0/1 (label_threshold when set, else the value must be 0 or
 * 1; libsvm's -1/+1 are accepted when pm1 is true).  On failure returns
 * false and *why names the problem. */
bool es__parse_label(const es_reader *r, const char *s, size_t n, int pm1, float *out, const char **why);
/* " (set label_threshold ...)" after a "label must be ..." reason, else "". */
const char *es__label_hint(const char *why);

static inline bool es__num_feature(const es_reader *r, const char *s, size_t n, float *out) {
    if (n == 0) {
        *out = 0.0f; /* missing */
        return true;
    }
    const char *p = s, *e = s + n;
    bool neg = *p == '-';
    p += neg;
    if (p < e && e - p <= 9) {
        uint32_t v = 0;
        const char *q = p;
        while (q < e && (unsigned)(*q - '0') < 10) v = v * 10 + (uint32_t)(*q++ - '0');
        if (q == e) {
            /* transform(-x) == -transform(x) exactly, so one table serves both signs */
            float f = v < ES__TLOG_N ? r->tlog[v] : es_transform_num((double)v);
            *out = neg ? -f : f;
            return true;
        }
    }
    double d;
    if (!es__parse_num(s, n, &d)) return false;
    *out = es_transform_num(d);
    return true;
}

/* Append one value (key, weight) to the batch, growing it when full. */
static inline int es__push_val(es_batch *b, size_t *nv, uint64_t key, float w) {
    size_t i = *nv;
    if (ES_UNLIKELY(i >= b->val_cap)) {
        int rc = es_batch_reserve_vals(b, i + 1);
        if (rc) return rc;
    }
    b->val[i] = key;
    b->wt[i] = w;
    *nv = i + 1;
    return ES_OK;
}

/* Format setup at open (names, columns, n_fields); err gets the message. */
int es__criteo_setup(es_reader *r, es_err *err);
int es__csv_setup(es_reader *r, const char *columns, es_err *err);
int es__libsvm_setup(es_reader *r, es_err *err);
int es__libffm_setup(es_reader *r, es_err *err);
/* Make a part's scratch ready for the reader's format (f_count, span);
 * ES_ENOMEM. */
int es__scratch_prepare(const es_reader *r, es__scratch *sc);
void es__scratch_free(es__scratch *sc);
/* Column count of a line split at byte d (for the shape hints above). */
int es__count_byte(const char *s, size_t n, char d);
/* Skip the header line(s) again after a rewind. */
int es__csv_skip_header(es_reader *r);

/* Offsets of the first `max` tabs of s[0, n) into pos[]; returns the total
 * number of tabs; *suspect = 1 when s has a NUL or non-ASCII byte.  SSE2
 * version and its portable _ref twin (criteo.c). */
int es__tab_index(const char *s, size_t n, uint32_t *pos, int max, int *suspect);
int es__tab_index_ref(const char *s, size_t n, uint32_t *pos, int max, int *suspect);

int es__criteo_row(es_reader *r, const es__line *ln, char *s, size_t n, es_batch *b, int row, size_t *nv);
int es__csv_row(es_reader *r, const es__line *ln, char *s, size_t n, es_batch *b, int row, size_t *nv);
int es__libsvm_row(es_reader *r, const es__line *ln, char *s, size_t n, es_batch *b, int row, size_t *nv);
int es__libffm_row(es_reader *r, const es__line *ln, char *s, size_t n, es_batch *b, int row, size_t *nv);

/* Allocate `n` names "<prefix><i + first>" into *out. */
int es__make_names(char ***out, int n, const char *prefix, int first);
void es__free_names(char **names, int n);

/* Open over a memory buffer (fuzz targets and tests; data is not copied and
 * must outlive the reader).  `name` stands for the path in messages and
 * for ES_FMT_AUTO. */
int es__reader_open_mem(es_reader **out, const void *data, size_t n, const char *name, const es_reader_params *p,
                        es_err *err);

/* Open several files read one after another as one stream (es_reader_open
 * does this for "@LIST" and globs, core/fileid.h): plain or gzip each;
 * messages name the file a line is in; a CSV header must open every file.
 * The format comes from the first file's name. */
int es__reader_open_files(es_reader **out, const char *const *paths, int n, const es_reader_params *p, es_err *err);

/* Read new memory with a reader from es__reader_open_mem, as a fresh open
 * with the same parameters would (statistics, errors and the first-line
 * peek start over), keeping its buffers.  Criteo, libsvm and libffm with
 * n_fields_hint > 0 only (ES_EINVAL otherwise: open afresh). */
int es__reader_reset_mem(es_reader *r, const void *data, size_t n, es_err *err);
/* Move past the next n rows without parsing them (training across
 * processes: each rank parses only its part of every batch, train.c).  A
 * row is a non-blank line, as es_reader_next counts rows of a file whose
 * lines are all good; a line skipped here is not checked (the rank that
 * owns it parses it).  *skipped: the rows passed (fewer than n at the end
 * of the input).  ES_EINVAL with skip_bad (only parsing tells a bad line,
 * which is no row), else es_reader_next's errors (I/O, gzip, an over-long
 * line), which leave the reader failed. */
int es__reader_skip(es_reader *r, uint64_t n, uint64_t *skipped);
/* Cut the next line off [*p, end): its text (without "\n" or "\r\n") goes
 * to *s / *n and *p moves past it. */
static inline void es__cut_line(char **p, char *end, char **s, size_t *n) {
    char *nl = memchr(*p, '\n', (size_t)(end - *p));
    char *le = nl ? nl : end;
    *s = *p;
    *n = (size_t)(le - *p);
    if (*n && le[-1] == '\r') (*n)--;
    *p = nl ? nl + 1 : end;
}

/* Parse threads of the next es_reader_next calls (r->p.threads; the
 * batches do not depend on it). */
void es__reader_set_threads(es_reader *r, int threads);

/* Keep the rows in memory (train --in-memory): from now on (the reader at
 * the top of its input), every row a pass hands out is copied; when a pass
 * has handed out `need` rows (0: all of them) or reached the end of the
 * input, the next rewind makes the reader serve those rows from memory,
 * as a dataset cache of the text would (r->esd), so later passes parse
 * nothing and give the same batches.  No row past `need` is kept (the
 * last batch of a pass ends there): the caller must then never read more
 * than `need` rows a pass.  A pass that skips rows (es__reader_skip)
 * or fails keeps nothing (the next one tries again); rows a cache cannot
 * hold exactly, or running out of memory, end the copy for good (the
 * reader goes on parsing).  A no-op on a cache.  ES_ENOMEM. */
int es__reader_keep_rows(es_reader *r, uint64_t need);
/* Bytes of rows the reader serves from memory (0 before the switch). */
uint64_t es__reader_kept_bytes(const es_reader *r);

#endif /* ES_DATA_READER_IMPL_H */
