/*
 * request.c — the server's request parser: JSON bodies (cJSON) to what
 * the public API takes.  Pure functions of (schema, body): no socket, no
 * model, no global state, so the fuzz target calls them directly.
 *
 * Predict rows given as JSON objects are turned into text lines in the
 * model's own input format (a Criteo TSV line, or a CSV header plus lines)
 * and read by the library's reader (es_model_predict_mem): one parse path
 * for the CLI and the server, so a row gives the same bits either way.
 * Every failure names the row, the column and the reason.
 */
#include "serve/serve.h"

#include <cjson/cJSON.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- string buffer ------------------------------------------------------- */
static int sb_grow(es__sb *b, size_t add) {
    if (b->oom) return -1;
    if (b->n + add + 1 <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->n + add + 1) {
        if (cap > SIZE_MAX / 2) {
            b->oom = 1;
            return -1;
        }
        cap *= 2;
    }
    char *s = realloc(b->s, cap);
    if (!s) {
        b->oom = 1;
        return -1;
    }
    b->s = s;
    b->cap = cap;
    return 0;
}
void es__sb_putn(es__sb *b, const char *s, size_t n) {
    if (sb_grow(b, n)) return;
    memcpy(b->s + b->n, s, n);
    b->n += n;
    b->s[b->n] = 0;
}
void es__sb_puts(es__sb *b, const char *s) { es__sb_putn(b, s, strlen(s)); }
void es__sb_printf(es__sb *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    char tmp[256];
    int k = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (k < 0) return;
    if ((size_t)k < sizeof tmp) {
        es__sb_putn(b, tmp, (size_t)k);
        return;
    }
    if (sb_grow(b, (size_t)k)) return;
    va_start(ap, fmt);
    vsnprintf(b->s + b->n, (size_t)k + 1, fmt, ap);
    va_end(ap);
    b->n += (size_t)k;
}
void es__sb_json_str(es__sb *b, const char *s) {
    es__sb_putn(b, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') {
            char e[2] = {'\\', (char)*p};
            es__sb_putn(b, e, 2);
        } else if (*p < 0x20) {
            es__sb_printf(b, "\\u%04x", *p);
        } else {
            es__sb_putn(b, (const char *)p, 1);
        }
    }
    es__sb_putn(b, "\"", 1);
}
void es__sb_free(es__sb *b) {
    free(b->s);
    memset(b, 0, sizeof *b);
}

/* ---- errors ---------------------------------------------------------------- */
static int fail(es__req_err *e, int status, long row, const char *column, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static int fail(es__req_err *e, int status, long row, const char *column, const char *fmt, ...) {
    e->status = status;
    e->row = row;
    snprintf(e->column, sizeof e->column, "%s", column ? column : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->reason, sizeof e->reason, fmt, ap);
    va_end(ap);
    return -1;
}

void es__req_err_json(const es__req_err *e, es__sb *out) {
    es__sb_puts(out, "{\"error\":");
    es__sb_json_str(out, e->reason);
    if (e->row >= 0) es__sb_printf(out, ",\"row\":%ld", e->row);
    if (e->column[0]) {
        es__sb_puts(out, ",\"column\":");
        es__sb_json_str(out, e->column);
    }
    es__sb_printf(out, ",\"status\":%d}\n", e->status);
}

/* ---- cJSON's memory: a bump arena per thread ------------------------------------ */
/* A parsed body is a tree of small nodes, all freed together when the request
 * is answered; through malloc they were a sixth of a one-row predict.  While
 * a thread parses (arena_on), cJSON allocates from that thread's arena;
 * what does not fit comes from malloc, and the next request's arena is
 * sized to fit (up to ARENA_MAX, so memory stays bounded: larger bodies use
 * malloc for the rest).  A tree must be freed by the thread that parsed it,
 * as every caller here does.  Under AddressSanitizer the arena is off so that
 * every node is checked. */
#if defined(__SANITIZE_ADDRESS__)
#define ES_JSON_ARENA 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ES_JSON_ARENA 0
#endif
#endif
#ifndef ES_JSON_ARENA
#define ES_JSON_ARENA 1
#endif
#define ARENA_MIN ((size_t)64 << 10)
#define ARENA_MAX ((size_t)256 << 10)
typedef struct arena {
    char *buf;
    size_t cap, used, want;
    int on;
} arena;
static _Thread_local arena tl_arena;
static pthread_once_t hooks_once = PTHREAD_ONCE_INIT;

static void *arena_malloc(size_t n) {
    arena *a = &tl_arena;
    if (a->on) {
        size_t sz = (n + 15) & ~(size_t)15;
        a->want += sz;
        if (a->buf && sz >= n && sz <= a->cap - a->used) {
            void *p = a->buf + a->used;
            a->used += sz;
            return p;
        }
    }
    return malloc(n);
}
static void arena_free(void *p) {
    arena *a = &tl_arena;
    if (a->buf && (char *)p >= a->buf && (char *)p < a->buf + a->cap) return; /* freed with the arena */
    free(p);
}
static void hooks_init(void) {
    cJSON_Hooks h = {arena_malloc, arena_free};
    cJSON_InitHooks(&h);
}
/* Before a parse: an arena as large as the last request wanted (bounded). */
static void arena_begin(void) {
    if (!ES_JSON_ARENA) return;
    pthread_once(&hooks_once, hooks_init);
    arena *a = &tl_arena;
    if (!a->buf || (a->want > a->cap && a->cap < ARENA_MAX)) {
        size_t cap = ARENA_MIN;
        while (cap < a->want && cap < ARENA_MAX) cap *= 2;
        char *b = malloc(cap);
        if (b) {
            free(a->buf);
            a->buf = b;
            a->cap = cap;
        }
    }
    a->used = a->want = 0;
    a->on = 1;
}
/* After the tree is freed: later allocations of the thread are malloc's. */
static void arena_end(void) { tl_arena.on = 0; }

/* JSON numbers are doubles (cJSON): integers are exact below 2^53. */
#define EXACT_INT 9007199254740992.0

static int is_int(const cJSON *v) { return cJSON_IsNumber(v) && fabs(v->valuedouble) < EXACT_INT && v->valuedouble == floor(v->valuedouble); }

/* What cJSON lets through and JSON (RFC 8259) does not, checked before the
 * parse: bytes that are not UTF-8, raw NUL bytes, and \u0000 escapes (a
 * NUL inside a string would silently cut it short). */
static int body_check(const char *body, size_t n, es__req_err *e) {
    const unsigned char *b = (const unsigned char *)body;
    for (size_t i = 0; i < n;) {
        unsigned c = b[i];
        if (c == 0) return fail(e, 400, -1, NULL, "bad JSON: a NUL byte at byte %zu", i);
        if (c == '\\' && i + 1 < n) {
            if (b[i + 1] == 'u' && i + 5 < n && memcmp(b + i + 2, "0000", 4) == 0)
                return fail(e, 400, -1, NULL, "bad JSON: \\u0000 (a NUL character) at byte %zu: strings may not hold NUL", i);
            i += 2; /* past the escaped character: in \\u0000 the u0000 is text */
            continue;
        }
        if (c < 0x80) {
            i++;
            continue;
        }
        /* the shortest form of a code point in [0x80, 0x10FFFF], no surrogates */
        int k = c >= 0xC2 && c <= 0xDF ? 1 : c >= 0xE0 && c <= 0xEF ? 2 : c >= 0xF0 && c <= 0xF4 ? 3 : -1;
        unsigned lo = c == 0xE0 ? 0xA0 : c == 0xF0 ? 0x90 : 0x80, hi = c == 0xED ? 0x9F : c == 0xF4 ? 0x8F : 0xBF;
        if (k < 0 || i + (size_t)k >= n || b[i + 1] < lo || b[i + 1] > hi)
            return fail(e, 400, -1, NULL, "bad JSON: not UTF-8 at byte %zu", i);
        for (int q = 2; q <= k; q++)
            if ((b[i + (size_t)q] & 0xC0) != 0x80) return fail(e, 400, -1, NULL, "bad JSON: not UTF-8 at byte %zu", i);
        i += (size_t)k + 1;
    }
    return 0;
}

/* Line and column (1-based) of byte `pos` of the body, for messages. */
static void line_col(const char *body, size_t pos, int *line, int *col) {
    *line = 1;
    *col = 1;
    for (size_t i = 0; i < pos; i++) {
        if (body[i] == '\n') {
            ++*line;
            *col = 1;
        } else {
            ++*col;
        }
    }
}

/* The first key of object o that appears twice, or NULL. */
static const char *dup_key(const cJSON *o) {
    for (const cJSON *a = o->child; a; a = a->next)
        for (const cJSON *b = a->next; b; b = b->next)
            if (strcmp(a->string, b->string) == 0) return a->string;
    return NULL;
}

/* The body as a JSON object with distinct keys, nothing but white space
 * after it. */
static void unload(cJSON *j) {
    cJSON_Delete(j);
    arena_end();
}

static cJSON *load(const char *body, size_t n, es__req_err *e) {
    if (body_check(body, n, e)) return NULL;
    arena_begin();
    const char *end = NULL;
    cJSON *j = cJSON_ParseWithLengthOpts(body, n, &end, 0);
    size_t pos = end && end >= body && end <= body + n ? (size_t)(end - body) : n;
    int line, col;
    if (!j) {
        line_col(body, pos, &line, &col);
        fail(e, 400, -1, NULL, "bad JSON at line %d, column %d%s", line, col, pos >= n ? ": the body ends too early" : "");
        arena_end();
        return NULL;
    }
    while (pos < n && (body[pos] == ' ' || body[pos] == '\t' || body[pos] == '\n' || body[pos] == '\r')) pos++;
    const char *dup = NULL;
    if (pos < n) {
        line_col(body, pos, &line, &col);
        fail(e, 400, -1, NULL, "bad JSON at line %d, column %d: data after the end of the JSON value", line, col);
    } else if (!cJSON_IsObject(j)) {
        fail(e, 400, -1, NULL, "the body must be a JSON object");
    } else if ((dup = dup_key(j)) != NULL) {
        fail(e, 400, -1, NULL, "bad JSON: the key \"%.64s\" appears twice", dup);
    } else {
        return j;
    }
    unload(j);
    return NULL;
}

/* ---- schema ------------------------------------------------------------------ */
static char **split_names(const char *s, int want) {
    if (!s || want <= 0) return NULL;
    char **v = calloc((size_t)want, sizeof *v);
    if (!v) return NULL;
    int i = 0;
    const char *p = s;
    while (i < want) {
        const char *c = strchr(p, ',');
        size_t len = c ? (size_t)(c - p) : strlen(p);
        if (!(v[i] = strndup(p, len))) break;
        i++;
        if (!c) break;
        p = c + 1;
    }
    if (i != want) {
        for (int k = 0; k < i; k++) free(v[k]);
        free(v);
        return NULL;
    }
    return v;
}

static void free_names(char **v, int n) {
    if (!v) return;
    for (int i = 0; i < n; i++) free(v[i]);
    free(v);
}

/* Is `name` given the role "multi" in the column spec? */
static int spec_multi(const char *spec, const char *name) {
    if (!spec) return 0;
    size_t nl = strlen(name);
    for (const char *p = spec; *p;) {
        const char *c = strchr(p, ',');
        size_t len = c ? (size_t)(c - p) : strlen(p);
        if (len > nl && strncmp(p, name, nl) == 0 && p[nl] == ':' && len - nl - 1 == 5 && strncmp(p + nl + 1, "multi", 5) == 0)
            return 1;
        if (!c) break;
        p = c + 1;
    }
    return 0;
}

/* FNV-1a of a C string: the column-name index of a schema. */
static uint32_t name_hash(const char *k) {
    uint32_t h = 2166136261u;
    for (; *k; k++) h = (h ^ (unsigned char)*k) * 16777619u;
    return h;
}

/* The index of column names (open addressing, at most half full): built
 * once per loaded model, where matching each JSON key against every name
 * in turn was 5% of a one-row request.  The first of equal names wins, as
 * the scan did. */
int es__schema_index(es__schema *s) {
    free(s->col_slot);
    s->col_slot = NULL;
    s->col_mask = 0;
    if (s->n_in == 0) return 0;
    size_t cap = 4;
    while (cap < 2 * (size_t)s->n_in) cap *= 2;
    if (!(s->col_slot = calloc(cap, sizeof *s->col_slot))) return ES_ENOMEM;
    s->col_mask = (uint32_t)(cap - 1);
    for (int i = 0; i < s->n_in; i++) {
        uint32_t h = name_hash(s->in_names[i]) & s->col_mask;
        while (s->col_slot[h] && strcmp(s->in_names[s->col_slot[h] - 1], s->in_names[i]) != 0) h = (h + 1) & s->col_mask;
        if (!s->col_slot[h]) s->col_slot[h] = i + 1;
    }
    return 0;
}

int es__schema_from_model(es__schema *s, const es_model *m) {
    memset(s, 0, sizeof *s);
    es_reader_params rp = es_model_reader_params(m);
    s->format = rp.format;
    s->delim = rp.delim ? rp.delim : (rp.format == ES_FMT_CRITEO ? '\t' : ',');
    s->multi_sep = rp.multi_sep ? rp.multi_sep : '|';
    s->header = rp.header;
    s->n_dense = es_model_n_dense(m);
    s->n_fields = es_model_n_fields(m);
    char **dense = split_names(es_model_meta(m, "schema.dense"), s->n_dense);
    s->field_names = split_names(es_model_meta(m, "schema.fields"), s->n_fields);
    if (!s->field_names && s->n_fields > 0) {
        if (!(s->field_names = calloc((size_t)s->n_fields, sizeof(char *)))) goto oom;
        for (int f = 0; f < s->n_fields; f++) {
            char tmp[32];
            snprintf(tmp, sizeof tmp, "%d", f);
            if (!(s->field_names[f] = strdup(tmp))) goto oom;
        }
    }
    /* JSON rows: Criteo TSV (13 numeric then 26 categorical columns; the
     * num_cat fields after them are derived, not sent) and CSV with a header
     * (matched by name).  Other formats take text lines only. */
    int n_cat = s->n_fields;
    if (s->format == ES_FMT_CRITEO && n_cat > 26) n_cat = 26;
    int rows_ok = (s->format == ES_FMT_CRITEO || (s->format == ES_FMT_CSV && s->header)) && es_model_meta(m, "schema.fields") &&
                  (s->n_dense == 0 || dense);
    if (rows_ok) {
        s->n_in = s->n_dense + n_cat;
        s->in_names = calloc((size_t)s->n_in + 1, sizeof(char *));
        s->in_multi = calloc((size_t)s->n_in + 1, sizeof(int));
        if (!s->in_names || !s->in_multi) goto oom;
        for (int i = 0; i < s->n_dense; i++)
            if (!(s->in_names[i] = strdup(dense[i]))) goto oom;
        for (int f = 0; f < n_cat; f++) {
            if (!(s->in_names[s->n_dense + f] = strdup(s->field_names[f]))) goto oom;
            s->in_multi[s->n_dense + f] = s->format == ES_FMT_CSV && spec_multi(rp.columns, s->field_names[f]);
        }
    }
    free_names(dense, s->n_dense);
    if (es__schema_index(s)) {
        es__schema_free(s);
        return ES_ENOMEM;
    }
    return 0;
oom:
    free_names(dense, s->n_dense);
    es__schema_free(s);
    return ES_ENOMEM;
}

void es__schema_free(es__schema *s) {
    if (!s) return;
    free_names(s->in_names, s->n_in);
    free_names(s->field_names, s->n_fields);
    free(s->in_multi);
    free(s->col_slot);
    memset(s, 0, sizeof *s);
}

int es__schema_same(const es__schema *a, const es__schema *b) {
    if (a->format != b->format || a->delim != b->delim || a->header != b->header || a->n_dense != b->n_dense ||
        a->n_fields != b->n_fields || a->n_in != b->n_in || a->multi_sep != b->multi_sep)
        return 0;
    for (int i = 0; i < a->n_in; i++)
        if (strcmp(a->in_names[i], b->in_names[i]) != 0 || a->in_multi[i] != b->in_multi[i]) return 0;
    for (int f = 0; f < a->n_fields; f++)
        if (strcmp(a->field_names[f], b->field_names[f]) != 0) return 0;
    return 1;
}

/* ---- predict ----------------------------------------------------------------- */
static const char *format_name(es_format f) {
    switch (f) {
    case ES_FMT_CRITEO: return "Criteo TSV";
    case ES_FMT_CSV: return "CSV";
    case ES_FMT_LIBSVM: return "libsvm";
    case ES_FMT_LIBFFM: return "libffm";
    default: return "text";
    }
}

/* Append one text value for column c; -1 with e filled. */
static int put_text(const es__schema *s, es__sb *t, const char *v, size_t len, long row, int c, es__req_err *e) {
    const char *col = s->in_names[c];
    int quote = 0;
    for (size_t i = 0; i < len; i++) {
        char ch = v[i];
        if (ch == '\n' || ch == '\r' || ch == 0)
            return fail(e, 400, row, col, "a value may not hold a line break or a NUL byte");
        if (s->format == ES_FMT_CRITEO) {
            /* Criteo TSV has no quoting: a '"' is a character like any
             * other (the file reader hashes it as such), a tab cannot be */
            if (ch == '\t') return fail(e, 400, row, col, "a Criteo value may not hold a tab");
        } else if (ch == s->delim || ch == '"') {
            quote = 1;
        }
    }
    if (!quote) {
        es__sb_putn(t, v, len);
        return 0;
    }
    es__sb_putn(t, "\"", 1);
    for (size_t i = 0; i < len; i++) es__sb_putn(t, v[i] == '"' ? "\"\"" : v + i, v[i] == '"' ? 2 : 1);
    es__sb_putn(t, "\"", 1);
    return 0;
}

/* A scalar as text: a string as it is, an integral number below 2^53 as
 * digits, another number "%.17g" (reads back to the same double), null "".
 * Returns 0, 1 (not a scalar), 2 (an integral number of 2^53 or more:
 * doubles are not exact there). */
static int scalar_text(const cJSON *v, char *tmp, size_t cap, const char **out, size_t *len) {
    if (cJSON_IsString(v)) {
        *out = v->valuestring;
        *len = strlen(v->valuestring);
    } else if (cJSON_IsNumber(v)) {
        double x = v->valuedouble;
        if (is_int(v)) *len = (size_t)snprintf(tmp, cap, "%lld", (long long)x);
        else if (isfinite(x) && x == floor(x)) return 2;
        else *len = (size_t)snprintf(tmp, cap, "%.17g", x);
        *out = tmp;
    } else if (cJSON_IsNull(v)) {
        *out = "";
        *len = 0;
    } else {
        return 1;
    }
    return 0;
}

#define BIG_NUMBER "an integer of 2^53 or more is not exact in JSON numbers: send it as a string"

static int put_value(const es__schema *s, es__sb *t, const cJSON *v, long row, int c, es__req_err *e) {
    char tmp[64];
    const char *txt;
    size_t len;
    int k = scalar_text(v, tmp, sizeof tmp, &txt, &len);
    if (k == 0) return put_text(s, t, txt, len, row, c, e);
    if (k == 2) {
        if (c < s->n_dense) { /* a numeric column: the value as a real */
            len = (size_t)snprintf(tmp, sizeof tmp, "%.17g", v->valuedouble);
            return put_text(s, t, tmp, len, row, c, e);
        }
        return fail(e, 400, row, s->in_names[c], BIG_NUMBER);
    }
    if (cJSON_IsArray(v) && s->in_multi[c]) {
        /* a multi-valued column: the pieces joined by the separator */
        es__sb joined = {0};
        size_t i = 0;
        const cJSON *x;
        cJSON_ArrayForEach(x, v) {
            k = cJSON_IsNull(x) ? 1 : scalar_text(x, tmp, sizeof tmp, &txt, &len);
            if (k != 0) {
                es__sb_free(&joined);
                return k == 2 ? fail(e, 400, row, s->in_names[c], "element %zu: " BIG_NUMBER, i)
                              : fail(e, 400, row, s->in_names[c], "element %zu of a multi-valued column must be a string or number", i);
            }
            if (memchr(txt, s->multi_sep, len)) {
                es__sb_free(&joined);
                return fail(e, 400, row, s->in_names[c], "element %zu holds the separator '%c'", i, s->multi_sep);
            }
            if (i) es__sb_putn(&joined, &s->multi_sep, 1);
            es__sb_putn(&joined, txt, len);
            i++;
        }
        int rc = joined.oom ? fail(e, 500, row, NULL, "out of memory")
                            : put_text(s, t, joined.s ? joined.s : "", joined.n, row, c, e);
        es__sb_free(&joined);
        return rc;
    }
    return fail(e, 400, row, s->in_names[c], "expected a string, a number or null%s",
                s->in_multi[c] ? " (or an array of strings)" : "");
}

static int find_col(const es__schema *s, const char *key) {
    if (!s->col_slot) return -1;
    for (uint32_t h = name_hash(key) & s->col_mask; s->col_slot[h]; h = (h + 1) & s->col_mask)
        if (strcmp(s->in_names[s->col_slot[h] - 1], key) == 0) return s->col_slot[h] - 1;
    return -1;
}

static int rows_to_text(const es__schema *s, const cJSON *rows, long max_rows, es__sb *t, long *nrows, int *first_line,
                        es__req_err *e) {
    if (s->n_in == 0)
        return fail(e, 400, -1, NULL, "this model reads %s lines: send {\"lines\": [...]} or a text/plain body",
                    format_name(s->format));
    size_t nr = (size_t)cJSON_GetArraySize(rows);
    if (nr == 0) return fail(e, 400, -1, NULL, "\"rows\" is empty");
    if ((long)nr > max_rows) return fail(e, 413, -1, NULL, "%zu rows, the limit is %ld (--max-rows)", nr, max_rows);
    *first_line = 1;
    if (s->format == ES_FMT_CSV) {
        for (int c = 0; c < s->n_in; c++) {
            if (c) es__sb_putn(t, &s->delim, 1);
            if (put_text(s, t, s->in_names[c], strlen(s->in_names[c]), -1, c, e)) return -1;
        }
        es__sb_putn(t, "\n", 1);
        *first_line = 2;
    }
    const cJSON **cell = calloc((size_t)s->n_in, sizeof *cell);
    if (!cell) return fail(e, 500, -1, NULL, "out of memory");
    int rc = 0;
    long r = 0;
    const cJSON *o;
    cJSON_ArrayForEach(o, rows) {
        if (!cJSON_IsObject(o)) {
            rc = fail(e, 400, r, NULL, "a row must be a JSON object keyed by column name");
            break;
        }
        memset(cell, 0, (size_t)s->n_in * sizeof *cell);
        const cJSON *v;
        cJSON_ArrayForEach(v, o) {
            int c = find_col(s, v->string);
            if (c < 0) {
                rc = fail(e, 400, r, v->string, "not a column of the model (GET /v1/models lists the columns)");
                break;
            }
            if (cell[c]) {
                rc = fail(e, 400, r, v->string, "the column is given twice in the row");
                break;
            }
            cell[c] = v;
        }
        for (int c = 0; c < s->n_in && rc == 0; c++) {
            if (c) es__sb_putn(t, &s->delim, 1);
            if (cell[c]) rc = put_value(s, t, cell[c], r, c, e); /* absent: a missing value */
        }
        if (rc) break;
        es__sb_putn(t, "\n", 1);
        r++;
    }
    free(cell);
    if (rc == 0 && t->oom) rc = fail(e, 500, -1, NULL, "out of memory");
    if (rc == 0) *nrows = (long)nr;
    return rc;
}

static int lines_to_text(const cJSON *lines, long max_rows, es__sb *t, long *nrows, es__req_err *e) {
    size_t nl = (size_t)cJSON_GetArraySize(lines);
    if (nl == 0) return fail(e, 400, -1, NULL, "\"lines\" is empty");
    if ((long)nl > max_rows + 1) return fail(e, 413, -1, NULL, "%zu lines, the limit is %ld rows (--max-rows)", nl, max_rows);
    long i = 0;
    const cJSON *l;
    cJSON_ArrayForEach(l, lines) {
        if (!cJSON_IsString(l)) return fail(e, 400, i, NULL, "\"lines\" must hold strings");
        const char *p = l->valuestring;
        size_t len = strlen(p); /* no NUL inside: body_check */
        if (memchr(p, '\n', len)) return fail(e, 400, i, NULL, "a line may not hold a newline or NUL");
        es__sb_putn(t, p, len);
        es__sb_putn(t, "\n", 1);
        i++;
    }
    if (t->oom) return fail(e, 500, -1, NULL, "out of memory");
    *nrows = (long)nl;
    return 0;
}

int es__parse_predict(const es__schema *s, const char *body, size_t n, int plain, long max_rows, es__sb *text,
                      long *rows, int *has_label, int *first_line, es__req_err *e) {
    *rows = 0;
    *first_line = 1;
    if (plain) {
        /* the body as it is: the library reader checks every line */
        if (n == 0) return fail(e, 400, -1, NULL, "empty body");
        if (memchr(body, 0, n)) return fail(e, 400, -1, NULL, "a text body may not hold NUL bytes");
        es__sb_putn(text, body, n);
        if (text->oom) return fail(e, 500, -1, NULL, "out of memory");
        long nl = 0;
        for (size_t i = 0; i < n; i++) nl += body[i] == '\n';
        *rows = nl + (body[n - 1] != '\n');
        return 0;
    }
    cJSON *j = load(body, n, e);
    if (!j) return -1;
    int rc = 0;
    const cJSON *lab = cJSON_GetObjectItemCaseSensitive(j, "labeled");
    if (lab && !cJSON_IsBool(lab)) rc = fail(e, 400, -1, NULL, "\"labeled\" must be true or false");
    else if (lab) *has_label = cJSON_IsTrue(lab);
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(j, "rows"), *l = cJSON_GetObjectItemCaseSensitive(j, "lines");
    const cJSON *v;
    cJSON_ArrayForEach(v, j) {
        if (rc) break;
        if (strcmp(v->string, "rows") && strcmp(v->string, "lines") && strcmp(v->string, "labeled"))
            rc = fail(e, 400, -1, NULL, "unknown key \"%.64s\" (expected \"rows\" or \"lines\", optional \"labeled\")", v->string);
    }
    if (rc) {
    } else if ((r != NULL) == (l != NULL)) {
        rc = fail(e, 400, -1, NULL, "give exactly one of \"rows\" (objects keyed by column) or \"lines\" (text lines)");
    } else if (r) {
        if (!cJSON_IsArray(r)) rc = fail(e, 400, -1, NULL, "\"rows\" must be an array");
        else if (*has_label) rc = fail(e, 400, -1, NULL, "\"labeled\" applies to \"lines\" only");
        else rc = rows_to_text(s, r, max_rows, text, rows, first_line, e);
    } else {
        if (!cJSON_IsArray(l)) rc = fail(e, 400, -1, NULL, "\"lines\" must be an array of strings");
        else rc = lines_to_text(l, max_rows, text, rows, e);
    }
    unload(j);
    return rc;
}

/* ---- embed ---------------------------------------------------------------------- */
static int field_of(const es__schema *s, const cJSON *f, long row, int *out, es__req_err *e) {
    if (is_int(f)) {
        double v = f->valuedouble;
        if (v < 0 || v >= s->n_fields) return fail(e, 400, row, NULL, "field %.0f out of range [0, %d)", v, s->n_fields);
        *out = (int)v;
        return 0;
    }
    if (cJSON_IsString(f)) {
        for (int k = 0; k < s->n_fields; k++)
            if (strcmp(s->field_names[k], f->valuestring) == 0) {
                *out = k;
                return 0;
            }
        return fail(e, 400, row, f->valuestring, "not a categorical field of the model");
    }
    return fail(e, 400, row, NULL, "\"field\" must be a field name or index");
}

static int key_of(const cJSON *v, long row, uint64_t *out, es__req_err *e) {
    char tmp[64];
    const char *txt;
    size_t len;
    int k = scalar_text(v, tmp, sizeof tmp, &txt, &len);
    if (k == 2) return fail(e, 400, row, NULL, BIG_NUMBER);
    if (k != 0) return fail(e, 400, row, NULL, "a value must be a string, number or null");
    /* the reader's keys: XXH3 of the token bytes, the missing key for "" */
    *out = len ? es_key(txt, len) : ES_KEY_MISSING;
    return 0;
}

int es__parse_embed(const es__schema *s, const char *body, size_t n, long max_rows, int **fields, uint64_t **keys,
                    long *count, es__req_err *e) {
    *fields = NULL;
    *keys = NULL;
    *count = 0;
    cJSON *j = load(body, n, e);
    if (!j) return -1;
    int rc = 0;
    const cJSON *pairs = cJSON_GetObjectItemCaseSensitive(j, "pairs"), *field = cJSON_GetObjectItemCaseSensitive(j, "field"),
                *values = cJSON_GetObjectItemCaseSensitive(j, "values");
    size_t m = 0;
    if (pairs && !field && !values) {
        if (!cJSON_IsArray(pairs)) rc = fail(e, 400, -1, NULL, "\"pairs\" must be an array");
        else m = (size_t)cJSON_GetArraySize(pairs);
    } else if (!pairs && field && values) {
        if (!cJSON_IsArray(values)) rc = fail(e, 400, -1, NULL, "\"values\" must be an array");
        else m = (size_t)cJSON_GetArraySize(values);
    } else {
        rc = fail(e, 400, -1, NULL, "give \"pairs\": [{\"field\": F, \"value\": V}, ...] or \"field\" and \"values\"");
    }
    if (rc == 0 && m == 0) rc = fail(e, 400, -1, NULL, "no values");
    if (rc == 0 && (long)m > max_rows) rc = fail(e, 413, -1, NULL, "%zu values, the limit is %ld (--max-rows)", m, max_rows);
    if (rc == 0 && (!(*fields = malloc(m * sizeof **fields)) || !(*keys = malloc(m * sizeof **keys))))
        rc = fail(e, 500, -1, NULL, "out of memory");
    int f0 = 0;
    if (rc == 0 && field) rc = field_of(s, field, -1, &f0, e);
    long i = 0;
    const cJSON *x, *list = rc == 0 ? (pairs ? pairs : values) : NULL;
    cJSON_ArrayForEach(x, list) {
        if (rc) break;
        if (pairs) {
            const cJSON *pf = cJSON_GetObjectItemCaseSensitive(x, "field"), *pv = cJSON_GetObjectItemCaseSensitive(x, "value");
            if (!cJSON_IsObject(x) || !pf || !pv || cJSON_GetArraySize(x) != 2) {
                rc = fail(e, 400, i, NULL, "a pair is {\"field\": F, \"value\": V}");
                break;
            }
            rc = field_of(s, pf, i, &(*fields)[i], e);
            if (rc == 0) rc = key_of(pv, i, &(*keys)[i], e);
        } else {
            (*fields)[i] = f0;
            rc = key_of(x, i, &(*keys)[i], e);
        }
        i++;
    }
    unload(j);
    if (rc) {
        free(*fields);
        free(*keys);
        *fields = NULL;
        *keys = NULL;
        return rc;
    }
    *count = (long)m;
    return 0;
}

/* ---- search ---------------------------------------------------------------------- */
static int vec_into(const cJSON *a, int dim, long row, float *out, es__req_err *e) {
    if (!cJSON_IsArray(a)) return fail(e, 400, row, NULL, "a query vector must be an array of numbers");
    int got = cJSON_GetArraySize(a);
    if (got != dim) return fail(e, 400, row, NULL, "a query vector has %d values, the index has dimension %d", got, dim);
    int d = 0;
    const cJSON *x;
    cJSON_ArrayForEach(x, a) {
        if (!cJSON_IsNumber(x)) return fail(e, 400, row, NULL, "value %d is not a number", d);
        double v = x->valuedouble;
        if (!isfinite(v) || fabs(v) > 3.4e38) return fail(e, 400, row, NULL, "value %d is not a finite float", d);
        out[d++] = (float)v;
    }
    return 0;
}

int es__parse_search(const char *body, size_t n, int dim, long max_rows, es__search_req *out, es__req_err *e) {
    memset(out, 0, sizeof *out);
    if (dim <= 0) return fail(e, 500, -1, NULL, "index without a dimension");
    cJSON *j = load(body, n, e);
    if (!j) return -1;
    int rc = 0;
    const cJSON *vs = cJSON_GetObjectItemCaseSensitive(j, "vectors"), *v1 = cJSON_GetObjectItemCaseSensitive(j, "vector"),
                *k = cJSON_GetObjectItemCaseSensitive(j, "k"), *flt = cJSON_GetObjectItemCaseSensitive(j, "filter");
    const cJSON *val;
    cJSON_ArrayForEach(val, j) {
        const char *key = val->string;
        if (strcmp(key, "vectors") && strcmp(key, "vector") && strcmp(key, "k") && strcmp(key, "filter")) {
            rc = fail(e, 400, -1, NULL, "unknown key \"%.64s\" (expected vectors or vector, k, filter)", key);
            break;
        }
    }
    size_t nq = 0;
    if (rc == 0 && (vs != NULL) == (v1 != NULL)) rc = fail(e, 400, -1, NULL, "give exactly one of \"vectors\" and \"vector\"");
    if (rc == 0 && vs && !cJSON_IsArray(vs)) rc = fail(e, 400, -1, NULL, "\"vectors\" must be an array of arrays");
    if (rc == 0) nq = vs ? (size_t)cJSON_GetArraySize(vs) : 1;
    if (rc == 0 && nq == 0) rc = fail(e, 400, -1, NULL, "no query vectors");
    if (rc == 0 && (long)nq > max_rows) rc = fail(e, 413, -1, NULL, "%zu queries, the limit is %ld (--max-rows)", nq, max_rows);
    out->k = 10;
    if (rc == 0 && k) {
        if (!is_int(k) || k->valuedouble < 1 || k->valuedouble > 10000)
            rc = fail(e, 400, -1, NULL, "\"k\" must be an integer in [1, 10000]");
        else out->k = (int)k->valuedouble;
    }
    if (rc == 0 && flt) {
        const cJSON *a = cJSON_GetObjectItemCaseSensitive(flt, "attr"), *vals = cJSON_GetObjectItemCaseSensitive(flt, "values");
        int nv = cJSON_IsArray(vals) ? cJSON_GetArraySize(vals) : 0;
        if (!cJSON_IsObject(flt) || dup_key(flt) || !is_int(a) || nv == 0 || nv > 4096 || a->valuedouble < 0 ||
            a->valuedouble > INT_MAX) {
            rc = fail(e, 400, -1, NULL, "\"filter\" is {\"attr\": A, \"values\": [1 to 4096 integers]}");
        } else {
            out->has_filter = 1;
            out->attr = (int)a->valuedouble;
            out->n_values = nv;
            if (!(out->values = malloc((size_t)nv * sizeof *out->values))) rc = fail(e, 500, -1, NULL, "out of memory");
            int i = 0;
            const cJSON *x;
            cJSON_ArrayForEach(x, vals) {
                if (rc) break;
                if (!is_int(x) || x->valuedouble < INT32_MIN || x->valuedouble > INT32_MAX)
                    rc = fail(e, 400, -1, NULL, "filter value %d is not a 32-bit integer", i);
                else out->values[i] = (int32_t)x->valuedouble;
                i++;
            }
        }
    }
    if (rc == 0 && !(out->q = malloc(nq * (size_t)dim * sizeof(float)))) rc = fail(e, 500, -1, NULL, "out of memory");
    if (rc == 0 && v1) rc = vec_into(v1, dim, 0, out->q, e);
    if (rc == 0 && vs) {
        long i = 0;
        const cJSON *q;
        cJSON_ArrayForEach(q, vs) {
            if ((rc = vec_into(q, dim, i, out->q + (size_t)i * (size_t)dim, e)) != 0) break;
            i++;
        }
    }
    unload(j);
    if (rc) {
        es__search_req_free(out);
        return rc;
    }
    out->nq = (long)nq;
    return 0;
}

void es__search_req_free(es__search_req *r) {
    free(r->q);
    free(r->values);
    memset(r, 0, sizeof *r);
}
