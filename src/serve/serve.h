/*
 * serve.h — `embstore serve`: an HTTP server (libmicrohttpd, jansson) over
 * the public API (embstore.h).  A client of the library like the CLI, so
 * this folder includes embstore.h only (tests/check_includes.sh); the CLI
 * entry tools/cmd_serve.c may include this header.
 *
 * Two layers:
 *   - request.c: the request parser, pure functions from a body to what the
 *     library takes (text lines in the model's input format, (field, key)
 *     pairs, query vectors).  No socket, no model: the fuzz target
 *     fuzz/fuzz_serve_request.c drives it directly.
 *   - server.c: the daemon (thread pool, routing, per-thread model handles,
 *     reference-counted hot reload, limits, metrics, graceful shutdown).
 * docs/serving.md describes the endpoints.
 */
#ifndef ES_SERVE_H
#define ES_SERVE_H

#include "embstore.h"

#include <stddef.h>
#include <stdint.h>

/* ---- a growable string (responses, generated text) ---------------------- */
typedef struct es__sb {
    char *s;
    size_t n, cap;
    int oom; /* sticky: an append failed */
} es__sb;
void es__sb_putn(es__sb *b, const char *s, size_t n);
void es__sb_puts(es__sb *b, const char *s);
void es__sb_printf(es__sb *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* A JSON string literal (quotes and escapes added). */
void es__sb_json_str(es__sb *b, const char *s);
void es__sb_free(es__sb *b);

/* ---- a request error: HTTP status, reason, row and column when known ---- */
typedef struct es__req_err {
    int status;       /* 400, 404, 413, ... */
    long row;         /* 0-based row of the request, -1 when not about a row */
    char column[64];  /* "" when not about a column */
    char reason[400];
} es__req_err;
/* {"error":"<reason>","row":R,"column":"C"} (row/column when set). */
void es__req_err_json(const es__req_err *e, es__sb *out);

/* ---- the input schema of a served model (from its metadata) ------------- */
typedef struct es__schema {
    es_format format;   /* the model's reader format */
    char delim;         /* CSV delimiter */
    char multi_sep;
    int header;         /* CSV: the model reads a header line */
    int n_dense, n_fields;
    int n_in;           /* input columns: dense then categorical (no derived num_cat fields) */
    char **in_names;    /* [n_in] column names, dense first */
    int *in_multi;      /* [n_in] 1 for a multi-valued CSV column */
    char **field_names; /* [n_fields] the model's categorical fields (embed) */
    int *col_slot;      /* index of in_names by hash: column + 1, 0 = empty */
    uint32_t col_mask;  /* slots - 1 */
} es__schema;
/* Fill from a loaded model; 0 or ES_ENOMEM.  es__schema_free(NULL-zeroed) ok. */
int es__schema_from_model(es__schema *s, const es_model *m);
void es__schema_free(es__schema *s);
/* (Re)build the column-name index of s->in_names (es__schema_from_model
 * does; a schema filled by hand, as the fuzz target's, calls it).  0 or
 * ES_ENOMEM. */
int es__schema_index(es__schema *s);
/* 1 when the two schemas read the same input (a reload keeps clients valid). */
int es__schema_same(const es__schema *a, const es__schema *b);

/* ---- parsers ------------------------------------------------------------- */
/* Predict body -> text in the model's input format, *rows the row count.
 * Accepted bodies (content type aside):
 *   {"rows": [{"COLUMN": value, ...}, ...]}   values: string, number, null
 *                                            (missing), array of strings for
 *                                            a multi-valued CSV column
 *   {"lines": ["text line", ...]}             lines in the model's format
 *   {"labeled": true, ...}                   lines carry a label column
 * plain=1: the body itself is text lines (Content-Type text/plain).
 * *first_line: line number of the first data row in the text (2 after a
 * generated CSV header, else 1) so reader messages map back to rows.
 * Returns 0 or -1 with e filled (400/413). */
int es__parse_predict(const es__schema *s, const char *body, size_t n, int plain, long max_rows, es__sb *text,
                      long *rows, int *has_label, int *first_line, es__req_err *e);
/* Embed body: {"field": F, "values": [v, ...]} or {"pairs": [{"field": F,
 * "value": v}, ...]}; F a field name or index, v a string/number/null.
 * Outputs malloc'd arrays fields[*n], keys[*n]. */
int es__parse_embed(const es__schema *s, const char *body, size_t n, long max_rows, int **fields, uint64_t **keys,
                    long *count, es__req_err *e);
/* Search body: {"vectors": [[...], ...]} or {"vector": [...]}, "k" (default
 * 10), optional "filter": {"attr": A, "values": [...]}.  Outputs malloc'd
 * q[nq * dim] and filter values. */
typedef struct es__search_req {
    float *q;
    long nq;
    int k;
    int has_filter;
    int attr;
    int n_values;
    int32_t *values;
} es__search_req;
int es__parse_search(const char *body, size_t n, int dim, long max_rows, es__search_req *out, es__req_err *e);
void es__search_req_free(es__search_req *r);

/* ---- the server ---------------------------------------------------------- */
#define ES__SERVE_MAX_NAMED 32
typedef struct es__serve_config {
    const char *host;    /* default 127.0.0.1 */
    int port;            /* 0: any free port (the bound port is printed) */
    int threads;         /* worker threads (default 2) */
    size_t max_body;     /* bytes (default 4 MiB) */
    long max_rows;       /* rows / pairs / queries per request (default 4096) */
    int max_conns;       /* open connections (default 256) */
    int timeout_s;       /* per request and idle connection (default 10) */
    int n_models, n_indexes;
    const char *model_name[ES__SERVE_MAX_NAMED], *model_path[ES__SERVE_MAX_NAMED];
    const char *index_name[ES__SERVE_MAX_NAMED], *index_path[ES__SERVE_MAX_NAMED];
} es__serve_config;
void es__serve_config_default(es__serve_config *c);
/* Load everything, serve until SIGTERM/SIGINT (graceful), reload on SIGHUP.
 * Prints "listening on http://HOST:PORT" on stdout once bound.  Returns 0
 * after a clean shutdown, else a negative code with err filled. */
int es__serve_run(const es__serve_config *c, char *err, size_t cap);

#endif /* ES_SERVE_H */
