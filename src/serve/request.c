/*
 * request.c — the server's request parser: JSON bodies (jansson) to what
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

#include <jansson.h>
#include <limits.h>
#include <math.h>
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

static json_t *load(const char *body, size_t n, es__req_err *e) {
    json_error_t je;
    json_t *j = json_loadb(body, n, JSON_REJECT_DUPLICATES, &je);
    if (!j) {
        fail(e, 400, -1, NULL, "bad JSON at line %d, column %d: %s", je.line, je.column, je.text);
        return NULL;
    }
    if (!json_is_object(j)) {
        json_decref(j);
        fail(e, 400, -1, NULL, "the body must be a JSON object");
        return NULL;
    }
    return j;
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
        if (ch == s->delim || ch == '"') {
            if (s->format == ES_FMT_CRITEO)
                return fail(e, 400, row, col, "a Criteo value may not hold a tab");
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

/* A scalar as text: string as is, integer %lld, real %.17g (reads back to
 * the same double), null "".  Returns 0, 1 (not a scalar) */
static int scalar_text(json_t *v, char *tmp, size_t cap, const char **out, size_t *len) {
    if (json_is_string(v)) {
        *out = json_string_value(v);
        *len = json_string_length(v);
    } else if (json_is_integer(v)) {
        *len = (size_t)snprintf(tmp, cap, "%lld", (long long)json_integer_value(v));
        *out = tmp;
    } else if (json_is_real(v)) {
        *len = (size_t)snprintf(tmp, cap, "%.17g", json_real_value(v));
        *out = tmp;
    } else if (json_is_null(v)) {
        *out = "";
        *len = 0;
    } else {
        return 1;
    }
    return 0;
}

static int put_value(const es__schema *s, es__sb *t, json_t *v, long row, int c, es__req_err *e) {
    char tmp[64];
    const char *txt;
    size_t len;
    if (scalar_text(v, tmp, sizeof tmp, &txt, &len) == 0) return put_text(s, t, txt, len, row, c, e);
    if (json_is_array(v) && s->in_multi[c]) {
        /* a multi-valued column: the pieces joined by the separator */
        es__sb joined = {0};
        size_t i;
        json_t *x;
        json_array_foreach(v, i, x) {
            if (scalar_text(x, tmp, sizeof tmp, &txt, &len) != 0 || json_is_null(x)) {
                es__sb_free(&joined);
                return fail(e, 400, row, s->in_names[c], "element %zu of a multi-valued column must be a string or number", i);
            }
            if (memchr(txt, s->multi_sep, len)) {
                es__sb_free(&joined);
                return fail(e, 400, row, s->in_names[c], "element %zu holds the separator '%c'", i, s->multi_sep);
            }
            if (i) es__sb_putn(&joined, &s->multi_sep, 1);
            es__sb_putn(&joined, txt, len);
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
    for (int i = 0; i < s->n_in; i++)
        if (strcmp(s->in_names[i], key) == 0) return i;
    return -1;
}

static int rows_to_text(const es__schema *s, json_t *rows, long max_rows, es__sb *t, long *nrows, int *first_line,
                        es__req_err *e) {
    if (s->n_in == 0)
        return fail(e, 400, -1, NULL, "this model reads %s lines: send {\"lines\": [...]} or a text/plain body",
                    format_name(s->format));
    size_t nr = json_array_size(rows);
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
    json_t **cell = calloc((size_t)s->n_in, sizeof *cell);
    if (!cell) return fail(e, 500, -1, NULL, "out of memory");
    int rc = 0;
    for (size_t r = 0; r < nr && rc == 0; r++) {
        json_t *o = json_array_get(rows, r);
        if (!json_is_object(o)) {
            rc = fail(e, 400, (long)r, NULL, "a row must be a JSON object keyed by column name");
            break;
        }
        memset(cell, 0, (size_t)s->n_in * sizeof *cell);
        const char *key;
        json_t *v;
        json_object_foreach(o, key, v) {
            int c = find_col(s, key);
            if (c < 0) {
                rc = fail(e, 400, (long)r, key, "not a column of the model (GET /v1/models lists the columns)");
                break;
            }
            cell[c] = v;
        }
        for (int c = 0; c < s->n_in && rc == 0; c++) {
            if (c) es__sb_putn(t, &s->delim, 1);
            if (cell[c]) rc = put_value(s, t, cell[c], (long)r, c, e); /* absent: a missing value */
        }
        es__sb_putn(t, "\n", 1);
    }
    free(cell);
    if (rc == 0 && t->oom) rc = fail(e, 500, -1, NULL, "out of memory");
    if (rc == 0) *nrows = (long)nr;
    return rc;
}

static int lines_to_text(json_t *lines, long max_rows, es__sb *t, long *nrows, es__req_err *e) {
    size_t nl = json_array_size(lines);
    if (nl == 0) return fail(e, 400, -1, NULL, "\"lines\" is empty");
    if ((long)nl > max_rows + 1) return fail(e, 413, -1, NULL, "%zu lines, the limit is %ld rows (--max-rows)", nl, max_rows);
    for (size_t i = 0; i < nl; i++) {
        json_t *l = json_array_get(lines, i);
        if (!json_is_string(l)) return fail(e, 400, (long)i, NULL, "\"lines\" must hold strings");
        const char *p = json_string_value(l);
        size_t len = json_string_length(l);
        if (memchr(p, '\n', len) || memchr(p, 0, len)) return fail(e, 400, (long)i, NULL, "a line may not hold a newline or NUL");
        es__sb_putn(t, p, len);
        es__sb_putn(t, "\n", 1);
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
    json_t *j = load(body, n, e);
    if (!j) return -1;
    int rc = 0;
    json_t *lab = json_object_get(j, "labeled");
    if (lab && !json_is_boolean(lab)) rc = fail(e, 400, -1, NULL, "\"labeled\" must be true or false");
    else if (lab) *has_label = json_is_true(lab);
    json_t *r = json_object_get(j, "rows"), *l = json_object_get(j, "lines");
    const char *key;
    json_t *v;
    json_object_foreach(j, key, v) {
        if (rc) break;
        if (strcmp(key, "rows") && strcmp(key, "lines") && strcmp(key, "labeled"))
            rc = fail(e, 400, -1, NULL, "unknown key \"%.64s\" (expected \"rows\" or \"lines\", optional \"labeled\")", key);
    }
    if (rc) {
    } else if ((r != NULL) == (l != NULL)) {
        rc = fail(e, 400, -1, NULL, "give exactly one of \"rows\" (objects keyed by column) or \"lines\" (text lines)");
    } else if (r) {
        if (!json_is_array(r)) rc = fail(e, 400, -1, NULL, "\"rows\" must be an array");
        else if (*has_label) rc = fail(e, 400, -1, NULL, "\"labeled\" applies to \"lines\" only");
        else rc = rows_to_text(s, r, max_rows, text, rows, first_line, e);
    } else {
        if (!json_is_array(l)) rc = fail(e, 400, -1, NULL, "\"lines\" must be an array of strings");
        else rc = lines_to_text(l, max_rows, text, rows, e);
    }
    json_decref(j);
    return rc;
}

/* ---- embed ---------------------------------------------------------------------- */
static int field_of(const es__schema *s, json_t *f, long row, int *out, es__req_err *e) {
    if (json_is_integer(f)) {
        json_int_t v = json_integer_value(f);
        if (v < 0 || v >= s->n_fields) return fail(e, 400, row, NULL, "field %lld out of range [0, %d)", (long long)v, s->n_fields);
        *out = (int)v;
        return 0;
    }
    if (json_is_string(f)) {
        for (int k = 0; k < s->n_fields; k++)
            if (strcmp(s->field_names[k], json_string_value(f)) == 0) {
                *out = k;
                return 0;
            }
        return fail(e, 400, row, json_string_value(f), "not a categorical field of the model");
    }
    return fail(e, 400, row, NULL, "\"field\" must be a field name or index");
}

static int key_of(json_t *v, long row, uint64_t *out, es__req_err *e) {
    char tmp[64];
    const char *txt;
    size_t len;
    if (scalar_text(v, tmp, sizeof tmp, &txt, &len) != 0) return fail(e, 400, row, NULL, "a value must be a string, number or null");
    /* the reader's keys: XXH3 of the token bytes, the missing key for "" */
    *out = len ? es_key(txt, len) : ES_KEY_MISSING;
    return 0;
}

int es__parse_embed(const es__schema *s, const char *body, size_t n, long max_rows, int **fields, uint64_t **keys,
                    long *count, es__req_err *e) {
    *fields = NULL;
    *keys = NULL;
    *count = 0;
    json_t *j = load(body, n, e);
    if (!j) return -1;
    int rc = 0;
    json_t *pairs = json_object_get(j, "pairs"), *field = json_object_get(j, "field"), *values = json_object_get(j, "values");
    size_t m = 0;
    if (pairs && !field && !values) {
        if (!json_is_array(pairs)) rc = fail(e, 400, -1, NULL, "\"pairs\" must be an array");
        m = json_array_size(pairs);
    } else if (!pairs && field && values) {
        if (!json_is_array(values)) rc = fail(e, 400, -1, NULL, "\"values\" must be an array");
        m = json_array_size(values);
    } else {
        rc = fail(e, 400, -1, NULL, "give \"pairs\": [{\"field\": F, \"value\": V}, ...] or \"field\" and \"values\"");
    }
    if (rc == 0 && m == 0) rc = fail(e, 400, -1, NULL, "no values");
    if (rc == 0 && (long)m > max_rows) rc = fail(e, 413, -1, NULL, "%zu values, the limit is %ld (--max-rows)", m, max_rows);
    if (rc == 0 && (!(*fields = malloc(m * sizeof **fields)) || !(*keys = malloc(m * sizeof **keys))))
        rc = fail(e, 500, -1, NULL, "out of memory");
    int f0 = 0;
    if (rc == 0 && field) rc = field_of(s, field, -1, &f0, e);
    for (size_t i = 0; i < m && rc == 0; i++) {
        if (pairs) {
            json_t *p = json_array_get(pairs, i);
            if (!json_is_object(p) || !json_object_get(p, "field") || !json_object_get(p, "value") || json_object_size(p) != 2) {
                rc = fail(e, 400, (long)i, NULL, "a pair is {\"field\": F, \"value\": V}");
                break;
            }
            rc = field_of(s, json_object_get(p, "field"), (long)i, &(*fields)[i], e);
            if (rc == 0) rc = key_of(json_object_get(p, "value"), (long)i, &(*keys)[i], e);
        } else {
            (*fields)[i] = f0;
            rc = key_of(json_array_get(values, i), (long)i, &(*keys)[i], e);
        }
    }
    json_decref(j);
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
static int vec_into(json_t *a, int dim, long row, float *out, es__req_err *e) {
    if (!json_is_array(a)) return fail(e, 400, row, NULL, "a query vector must be an array of numbers");
    if (json_array_size(a) != (size_t)dim)
        return fail(e, 400, row, NULL, "a query vector has %zu values, the index has dimension %d", json_array_size(a), dim);
    for (int d = 0; d < dim; d++) {
        json_t *x = json_array_get(a, (size_t)d);
        if (!json_is_number(x)) return fail(e, 400, row, NULL, "value %d is not a number", d);
        double v = json_number_value(x);
        if (!isfinite(v) || fabs(v) > 3.4e38) return fail(e, 400, row, NULL, "value %d is not a finite float", d);
        out[d] = (float)v;
    }
    return 0;
}

int es__parse_search(const char *body, size_t n, int dim, long max_rows, es__search_req *out, es__req_err *e) {
    memset(out, 0, sizeof *out);
    if (dim <= 0) return fail(e, 500, -1, NULL, "index without a dimension");
    json_t *j = load(body, n, e);
    if (!j) return -1;
    int rc = 0;
    json_t *vs = json_object_get(j, "vectors"), *v1 = json_object_get(j, "vector"), *k = json_object_get(j, "k"),
           *flt = json_object_get(j, "filter");
    const char *key;
    json_t *val;
    json_object_foreach(j, key, val) {
        if (strcmp(key, "vectors") && strcmp(key, "vector") && strcmp(key, "k") && strcmp(key, "filter")) {
            rc = fail(e, 400, -1, NULL, "unknown key \"%.64s\" (expected vectors or vector, k, filter)", key);
            break;
        }
    }
    size_t nq = 0;
    if (rc == 0 && (vs != NULL) == (v1 != NULL)) rc = fail(e, 400, -1, NULL, "give exactly one of \"vectors\" and \"vector\"");
    if (rc == 0 && vs && !json_is_array(vs)) rc = fail(e, 400, -1, NULL, "\"vectors\" must be an array of arrays");
    if (rc == 0) nq = vs ? json_array_size(vs) : 1;
    if (rc == 0 && nq == 0) rc = fail(e, 400, -1, NULL, "no query vectors");
    if (rc == 0 && (long)nq > max_rows) rc = fail(e, 413, -1, NULL, "%zu queries, the limit is %ld (--max-rows)", nq, max_rows);
    out->k = 10;
    if (rc == 0 && k) {
        if (!json_is_integer(k) || json_integer_value(k) < 1 || json_integer_value(k) > 10000)
            rc = fail(e, 400, -1, NULL, "\"k\" must be an integer in [1, 10000]");
        else out->k = (int)json_integer_value(k);
    }
    if (rc == 0 && flt) {
        json_t *a = json_object_get(flt, "attr"), *vals = json_object_get(flt, "values");
        if (!json_is_object(flt) || !json_is_integer(a) || !json_is_array(vals) || json_array_size(vals) == 0 ||
            json_array_size(vals) > 4096 || json_integer_value(a) < 0 || json_integer_value(a) > INT_MAX) {
            rc = fail(e, 400, -1, NULL, "\"filter\" is {\"attr\": A, \"values\": [1 to 4096 integers]}");
        } else {
            out->has_filter = 1;
            out->attr = (int)json_integer_value(a);
            out->n_values = (int)json_array_size(vals);
            if (!(out->values = malloc((size_t)out->n_values * sizeof *out->values))) rc = fail(e, 500, -1, NULL, "out of memory");
            for (int i = 0; rc == 0 && i < out->n_values; i++) {
                json_t *x = json_array_get(vals, (size_t)i);
                if (!json_is_integer(x) || json_integer_value(x) < INT32_MIN || json_integer_value(x) > INT32_MAX)
                    rc = fail(e, 400, -1, NULL, "filter value %d is not a 32-bit integer", i);
                else out->values[i] = (int32_t)json_integer_value(x);
            }
        }
    }
    if (rc == 0 && !(out->q = malloc(nq * (size_t)dim * sizeof(float)))) rc = fail(e, 500, -1, NULL, "out of memory");
    for (size_t i = 0; rc == 0 && i < nq; i++)
        rc = vec_into(vs ? json_array_get(vs, i) : v1, dim, (long)i, out->q + i * (size_t)dim, e);
    json_decref(j);
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
