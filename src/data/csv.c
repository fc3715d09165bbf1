/*
 * csv.c — delimited text (CSV, TSV, any one-byte delimiter) with a header
 * line or a column spec.
 *
 * Quoting follows RFC 4180 within a line: a field that starts with '"' runs
 * to the matching '"', and "" inside it is one quote (MovieLens titles such
 * as "American President, The (1995)" need this).  Quoted line breaks are
 * not supported: each record is one line.  Fields are unquoted in place in
 * the line buffer, so nothing is copied or allocated per field.
 *
 * Column roles come from params.columns ("name:role" or "index:role"; see
 * embstore.h).  Dense features and categorical fields are numbered in the
 * order their columns appear in the file.
 */
#include "data/reader_impl.h"
#include "data/schema.h"

/* Cut the next field at *pp.  With `unquote`, a quoted field is rewritten
 * in place and [*fs, *fe) is its content; without, the line is left as is
 * (used to count columns of a line that is read again later).  *pp ends at
 * the delimiter or at end.  Returns 0, 1 (unterminated quote) or 2 (junk
 * after the closing quote). */
static int next_field(char **pp, char *end, char d, bool unquote, char **fs, char **fe) {
    char *p = *pp;
    if (p < end && *p == '"') {
        char *w = p, *q = p + 1;
        for (;;) {
            char *qq = memchr(q, '"', (size_t)(end - q));
            if (!qq) return 1;
            if (unquote) {
                size_t k = (size_t)(qq - q);
                memmove(w, q, k); /* w <= q: the text only moves left */
                w += k;
            }
            if (qq + 1 < end && qq[1] == '"') {
                if (unquote) *w++ = '"';
                q = qq + 2;
                continue;
            }
            p = qq + 1;
            break;
        }
        if (p < end && *p != d) return 2;
        *fs = *pp;
        *fe = unquote ? w : p;
        *pp = p;
        return 0;
    }
    char *q = memchr(p, d, (size_t)(end - p));
    if (!q) q = end;
    *fs = p;
    *fe = q;
    *pp = q;
    return 0;
}

/* Number of fields in [p, end) (p at the start of a field); -1 on a quote
 * error. */
static int count_fields(char *p, char *end, char d) {
    int c = 0;
    for (;;) {
        char *fs, *fe;
        if (next_field(&p, end, d, false, &fs, &fe)) return -1;
        c++;
        if (p == end) return c;
        p++;
    }
}

static const char *quote_problem(int q) {
    return q == 1 ? "unterminated quoted field (quoted line breaks are not supported)"
                  : "unexpected character after a closing quote";
}

/* ---- setup ----------------------------------------------------------------------- */
static int role_of(const char *s, size_t n) {
    static const struct {
        const char *name;
        int role;
    } roles[] = {{"label", ES__COL_LABEL}, {"num", ES__COL_NUM},     {"cat", ES__COL_CAT},
                 {"multi", ES__COL_MULTI}, {"ignore", ES__COL_IGNORE}};
    for (size_t i = 0; i < ES_ARRAY_LEN(roles); i++)
        if (strlen(roles[i].name) == n && memcmp(roles[i].name, s, n) == 0) return roles[i].role;
    return -1;
}

static void trim(const char **s, size_t *n) {
    while (*n && (**s == ' ' || **s == '\t')) (*s)++, (*n)--;
    while (*n && ((*s)[*n - 1] == ' ' || (*s)[*n - 1] == '\t')) (*n)--;
}

/* First non-blank line of the file (the header, or the first data line for
 * a header-less file). */
static int first_line(es_reader *r, char **s, size_t *n, es_err *err) {
    const char *name = es__lineio_name(r->io);
    for (;;) {
        int rc = es__lineio_next(r->io, s, n, &r->err);
        if (rc == 1 && *n == 0) continue;
        if (rc == 1) break;
        if (rc == 0) return es__err(err, ES_EPARSE, "%s: no data rows", name);
        if (err) *err = r->err;
        return rc;
    }
    if (*n >= 3 && es__lineio_lineno(r->io) == 1 && memcmp(*s, "\xef\xbb\xbf", 3) == 0) {
        *s += 3;
        *n -= 3;
    }
    const char *why;
    size_t bad = es__text_check(*s, *n, &why);
    if (bad < *n)
        return es__err(err, ES_EPARSE, "%s:%llu:column %zu: %s", name, (unsigned long long)es__lineio_lineno(r->io), bad + 1,
                       why);
    return ES_OK;
}

static int read_header(es_reader *r, es_err *err) {
    const char *name = es__lineio_name(r->io);
    char *s;
    size_t n;
    int rc = first_line(r, &s, &n, err);
    if (rc) return rc;
    unsigned long long ln = (unsigned long long)es__lineio_lineno(r->io);
    /* several files: each starts with this header (checked and skipped by lineio) */
    if (es__lineio_keep_header(r->io, s, n) != ES_OK) return es__err(err, ES_ENOMEM, "%s: out of memory", name);
    int nc = count_fields(s, s + n, r->delim);
    if (nc < 0) return es__err(err, ES_EPARSE, "%s:%llu: header: %s", name, ln, quote_problem(1));
    if (nc > ES__MAX_FIELDS)
        return es__err(err, ES_EPARSE, "%s:%llu: header has %d columns (at most %d are supported)", name, ln, nc, ES__MAX_FIELDS);
    r->col_names = es__calloc((size_t)nc, sizeof(char *));
    if (!r->col_names) return es__err(err, ES_ENOMEM, "%s: out of memory", name);
    r->n_cols = nc;
    char *p = s, *end = s + n;
    for (int c = 0; c < nc; c++) {
        char *fs, *fe;
        int q = next_field(&p, end, r->delim, true, &fs, &fe);
        if (q) return es__err(err, ES_EPARSE, "%s:%llu: header column %d: %s", name, ln, c + 1, quote_problem(q));
        size_t len = (size_t)(fe - fs);
        char buf[32];
        if (len == 0) {
            snprintf(buf, sizeof buf, "c%d", c);
            fs = buf;
            len = strlen(buf);
        }
        r->col_names[c] = es__malloc(len + 1);
        if (!r->col_names[c]) return es__err(err, ES_ENOMEM, "%s: out of memory", name);
        memcpy(r->col_names[c], fs, len);
        r->col_names[c][len] = 0;
        if (p < end) p++;
    }
    r->header_lines = 1;
    return ES_OK;
}

/* Header-less file: the column count comes from the first data line, which
 * is put back for next(). */
static int peek_columns(es_reader *r, es_err *err) {
    const char *name = es__lineio_name(r->io);
    char *s;
    size_t n;
    int rc = first_line(r, &s, &n, err);
    if (rc) return rc;
    int nc = count_fields(s, s + n, r->delim);
    unsigned long long ln = (unsigned long long)es__lineio_lineno(r->io);
    if (nc < 0) return es__err(err, ES_EPARSE, "%s:%llu: cannot count the columns: %s", name, ln, quote_problem(1));
    if (nc > ES__MAX_FIELDS)
        return es__err(err, ES_EPARSE, "%s:%llu: %d columns (at most %d are supported)", name, ln, nc, ES__MAX_FIELDS);
    es__lineio_unget(r->io);
    rc = es__make_names(&r->col_names, nc, "c", 0);
    if (rc) return es__err(err, rc, "%s: out of memory", name);
    r->n_cols = nc;
    return ES_OK;
}

/* Header names joined by ", " into buf (cut with "..."), for messages. */
static const char *header_list(const es_reader *r, char *buf, size_t cap) {
    size_t o = 0;
    buf[0] = 0;
    for (int c = 0; c < r->n_cols; c++) {
        size_t need = strlen(r->col_names[c]) + 2;
        if (o + need + 4 >= cap) {
            snprintf(buf + o, cap - o, "%s...", c ? ", " : "");
            break;
        }
        o += (size_t)snprintf(buf + o, cap - o, "%s%s", c ? ", " : "", r->col_names[c]);
    }
    return buf;
}

/* Roles from the spec into roles[column], and the position of each entry
 * into spec_pos[column].  Every name the header lacks is collected, so that
 * one message lists them all; a missing label column is no error for an
 * unlabeled read (has_label = 0), where the label is not read anyway. */
static int apply_spec(es_reader *r, const char *spec, int *roles, int *spec_pos, es_err *err) {
    const char *name = es__lineio_name(r->io);
    const int have_header = r->header_lines > 0;
    const char *p = spec;
    char missing[320];
    size_t mo = 0;
    int n_missing = 0, entry = 0;
    missing[0] = 0;
    for (;; entry++) {
        const char *comma = strchr(p, ',');
        size_t n = comma ? (size_t)(comma - p) : strlen(p);
        const char *item = p;
        trim(&item, &n);
        if (n == 0) {
            if (!comma) break; /* a trailing comma is harmless */
            return es__err(err, ES_EINVAL, "columns: empty entry in '%s'", spec);
        }
        const char *colon = NULL;
        for (size_t i = 0; i < n; i++)
            if (item[i] == ':') colon = item + i; /* the last one: names may contain ':' */
        if (!colon)
            return es__err(err, ES_EINVAL, "columns: '%.*s' has no role (expected name:role, role one of label, num, cat, multi, ignore)",
                           (int)n, item);
        const char *cn = item, *rn = colon + 1;
        size_t cl = (size_t)(colon - item), rl = n - cl - 1;
        trim(&cn, &cl);
        trim(&rn, &rl);
        int role = role_of(rn, rl);
        if (role < 0)
            return es__err(err, ES_EINVAL, "columns: unknown role '%.*s' for '%.*s' (expected label, num, cat, multi or ignore)",
                           (int)rl, rn, (int)cl, cn);
        int idx = -1;
        if (have_header) {
            for (int c = 0; c < r->n_cols; c++) {
                if (strlen(r->col_names[c]) == cl && memcmp(r->col_names[c], cn, cl) == 0) {
                    if (idx >= 0)
                        return es__err(err, ES_EINVAL, "columns: '%.*s' appears twice in the header of %s; use its 0-based index",
                                       (int)cl, cn, name);
                    idx = c;
                }
            }
        }
        if (idx < 0 && cl > 0 && cl <= 9 && strspn(cn, "0123456789") >= cl) {
            long v = 0;
            for (size_t i = 0; i < cl; i++) v = v * 10 + (cn[i] - '0');
            if (v >= r->n_cols)
                return es__err(err, ES_EINVAL, "columns: index %ld is out of range (%s has %d columns)", v, name, r->n_cols);
            idx = (int)v;
        }
        if (idx < 0) {
            if (!have_header)
                return es__err(err, ES_EINVAL, "columns: '%.*s': %s has no header, so name columns by 0-based index", (int)cl,
                               cn, name);
            if (!(role == ES__COL_LABEL && !r->p.has_label) && role != ES__COL_IGNORE) {
                if (n_missing < 8 && mo + cl + 8 < sizeof missing)
                    mo += (size_t)snprintf(missing + mo, sizeof missing - mo, "%s'%.*s'", n_missing ? ", " : "", (int)cl, cn);
                else if (mo + 6 < sizeof missing && (mo < 3 || strcmp(missing + mo - 3, "...") != 0))
                    mo += (size_t)snprintf(missing + mo, sizeof missing - mo, ", ...");
                n_missing++;
            }
        } else {
            if (roles[idx] >= 0)
                return es__err(err, ES_EINVAL, "columns: column '%s' is given twice", r->col_names[idx]);
            roles[idx] = role;
            spec_pos[idx] = entry;
        }
        if (!comma) break;
        p = comma + 1;
    }
    if (n_missing) {
        char hl[240], count[32] = "", delim[96] = "";
        if (n_missing > 8) snprintf(count, sizeof count, " (%d in all)", n_missing);
        /* one column holding the other common delimiter: the wrong one */
        const char *other = r->delim == ',' ? "\t;|" : ",\t;";
        for (const char *o = other; r->n_cols == 1 && *o && !delim[0]; o++)
            if (strchr(r->col_names[0], *o))
                snprintf(delim, sizeof delim, "; it looks %s-separated, not '%s' (set the delimiter: --delim %s)",
                         *o == '\t' ? "tab" : (char[]){'\'', *o, '\'', 0}, r->delim == '\t' ? "\\t" : (char[]){r->delim, 0},
                         *o == '\t' ? "tab" : (char[]){*o, 0});
        return es__err(err, ES_EINVAL, "columns: %s%s %s of %s (the header has %d column%s: %s)%s", missing, count,
                       n_missing == 1 ? "is not a column" : "are not columns", name, r->n_cols, r->n_cols == 1 ? "" : "s",
                       header_list(r, hl, sizeof hl), delim);
    }
    return ES_OK;
}

int es__csv_setup(es_reader *r, const char *columns, es_err *err) {
    const char *name = es__lineio_name(r->io);
    int rc = r->p.header ? read_header(r, err) : peek_columns(r, err);
    if (rc) return rc;
    const int nc = r->n_cols;
    int *roles = es__malloc(2 * (size_t)nc * sizeof(int));
    int *spec_pos = roles ? roles + nc : NULL;
    r->cols = es__calloc((size_t)nc, sizeof(es__col));
    if (!roles || !r->cols) {
        es__free(roles);
        return es__err(err, ES_ENOMEM, "%s: out of memory", name);
    }
    for (int c = 0; c < nc; c++) roles[c] = spec_pos[c] = -1;
    if (columns) {
        rc = apply_spec(r, columns, roles, spec_pos, err);
    } else {
        /* No spec: the first column is the label, the rest categorical. */
        for (int c = 0; c < nc; c++) roles[c] = (c == 0 && r->p.has_label) ? ES__COL_LABEL : ES__COL_CAT;
    }
    int n_label = 0, n_dense = 0, n_fields = 0, first_label = -1;
    for (int c = 0; rc == ES_OK && c < nc; c++) {
        if (roles[c] < 0) roles[c] = ES__COL_IGNORE;
        if (roles[c] == ES__COL_LABEL && !r->p.has_label) roles[c] = ES__COL_IGNORE;
        switch (roles[c]) {
        case ES__COL_LABEL:
            if (n_label++)
                rc = es__err(err, ES_EINVAL, "columns: more than one label column ('%s' and '%s')", r->col_names[first_label],
                             r->col_names[c]);
            first_label = c;
            break;
        case ES__COL_NUM: r->cols[c].slot = n_dense++; break;
        case ES__COL_CAT:
        case ES__COL_MULTI: r->cols[c].slot = n_fields++; break;
        default: break;
        }
        r->cols[c].role = roles[c];
        r->cols[c].spec = spec_pos[c];
    }
    es__free(roles);
    if (rc) return rc;
    if (r->p.has_label && n_label == 0)
        return es__err(err, ES_EINVAL, "columns: no label column in %s (mark one as name:label, or set has_label = 0)", name);
    r->dense_names = es__calloc((size_t)(n_dense ? n_dense : 1), sizeof(char *));
    r->field_names = es__calloc((size_t)(n_fields ? n_fields : 1), sizeof(char *));
    if (!r->dense_names || !r->field_names) return es__err(err, ES_ENOMEM, "%s: out of memory", name);
    for (int c = 0; c < nc; c++) {
        const es__col *col = &r->cols[c];
        char **slot = col->role == ES__COL_NUM                                     ? &r->dense_names[col->slot]
                      : (col->role == ES__COL_CAT || col->role == ES__COL_MULTI) ? &r->field_names[col->slot]
                                                                                   : NULL;
        if (!slot) continue;
        *slot = es__strdup(r->col_names[c]);
        if (!*slot) {
            /* names allocated so far are freed with counts set below */
            r->n_dense = n_dense;
            r->n_fields = n_fields;
            return es__err(err, ES_ENOMEM, "%s: out of memory", name);
        }
    }
    r->n_dense = n_dense;
    r->n_fields = n_fields;
    r->row = es__csv_row;
    return ES_OK;
}

int es__csv_skip_header(es_reader *r) {
    char *s;
    size_t n;
    for (;;) {
        int rc = es__lineio_next(r->io, &s, &n, &r->err);
        if (rc == 1 && n == 0) continue;
        if (rc == 1) return ES_OK;
        if (rc == 0) return es__err(&r->err, ES_EPARSE, "%s: the header line is gone (file changed?)", es__lineio_name(r->io));
        return rc;
    }
}

/* ---- rows ---------------------------------------------------------------------------- */
int es__count_byte(const char *s, size_t n, char d) {
    int k = 1;
    for (const char *p = s, *e = s + n; (p = memchr(p, d, (size_t)(e - p))) != NULL; p++) k++;
    return k;
}

/* "expected N columns, got M", remembering the shape for the hints of the
 * model layer (es__reader_shape).  line/n: the whole line, for the count at
 * the other delimiter when the line is one column (e.g. a TSV file read as
 * CSV); it may be partly unquoted already, which does not matter there. */
static int shape_err(es_reader *r, const es__line *ln, int got, const char *line, size_t n) {
    if (ln->err) {
        ln->sc->shape_got = got;
        ln->sc->shape_want = r->n_cols;
        ln->sc->shape_alt = got == 1 ? es__count_byte(line, n, r->delim == ',' ? '\t' : ',') : 0;
    }
    return es__row_err(r, ln, "expected %d columns, got %d", r->n_cols, got);
}

/* Column-level error; when the line also has the wrong number of columns,
 * that is the message (a shifted line makes later columns look wrong).
 * `rest` is where the current field ended (at a delimiter or end). */
static int csv_col_err(es_reader *r, const es__line *ln, const char *line, int c, char *rest, char *end, const char *what,
                       const char *tok, size_t tlen) {
    if (rest) {
        int more = rest < end ? count_fields(rest + 1, end, r->delim) : 0;
        if (more >= 0 && c + 1 + more != r->n_cols) return shape_err(r, ln, c + 1 + more, line, (size_t)(end - line));
    }
    const char *cname = c < r->n_cols ? r->col_names[c] : "extra";
    if (!tok) return es__row_err(r, ln, "column %d (%s): %s", c + 1, cname, what);
    char tb[200];
    return es__row_err(r, ln, "column %d (%s): %s, got '%s'%s", c + 1, cname, what, es__tok(tb, sizeof tb, tok, tlen),
                       es__label_hint(what));
}

static int push_multi(es_reader *r, const char *s, size_t n, es_batch *b, size_t *nv) {
    const char sep = r->msep;
    const char *end = s + n;
    size_t count = 0;
    for (const char *p = s; p < end;) {
        const char *q = memchr(p, sep, (size_t)(end - p));
        if (!q) q = end;
        count += q > p;
        p = q + 1;
    }
    if (count == 0) return ES_OK; /* an empty list pools to zero */
    float w = r->p.pool == ES_POOL_MEAN ? 1.0f / (float)count : 1.0f;
    for (const char *p = s; p < end;) {
        const char *q = memchr(p, sep, (size_t)(end - p));
        if (!q) q = end;
        if (q > p) {
            int rc = es__push_val(b, nv, es_key(p, (size_t)(q - p)), w);
            if (rc) return rc;
        }
        p = q + 1;
    }
    return ES_OK;
}

static inline int push_field(es_reader *r, int role, const char *fs, size_t len, es_batch *b, size_t *nv) {
    return role == ES__COL_CAT ? es__push_val(b, nv, es_key(fs, len), 1.0f) : push_multi(r, fs, len, b, nv);
}

/* Values are appended field by field (CSR).  When the fields are in column
 * order they are pushed as their columns go by; when they were renumbered
 * (r->field_col), the columns' text is noted first and pushed in field
 * order after the line is cut. */
int es__csv_row(es_reader *r, const es__line *ln, char *s, size_t n, es_batch *b, int row, size_t *nv) {
    const size_t F = (size_t)r->n_fields;
    uint32_t *off = b->off + (size_t)row * F;
    float *dense = b->dense + (size_t)row * (size_t)r->n_dense;
    const char d = r->delim;
    const bool mapped = r->field_col != NULL;
    float label = 0.0f;
    char *p = s, *end = s + n;
    int c = 0;
    for (;; c++) {
        char *fs, *fe;
        int q = next_field(&p, end, d, true, &fs, &fe);
        if (q) return csv_col_err(r, ln, s, c, NULL, end, quote_problem(q), NULL, 0);
        if (c < r->n_cols) {
            const es__col *col = &r->cols[c];
            size_t len = (size_t)(fe - fs);
            int rc = ES_OK;
            switch (col->role) {
            case ES__COL_LABEL: {
                const char *why;
                if (!es__parse_label(r, fs, len, 0, &label, &why)) return csv_col_err(r, ln, s, c, p, end, why, fs, len);
                break;
            }
            case ES__COL_NUM:
                if (!es__num_feature(r, fs, len, &dense[col->slot]))
                    return csv_col_err(r, ln, s, c, p, end, "expected a number", fs, len);
                break;
            case ES__COL_CAT:
            case ES__COL_MULTI:
                if (mapped) {
                    ln->sc->span[2 * col->slot] = fs;
                    ln->sc->span[2 * col->slot + 1] = fe;
                    break;
                }
                rc = push_field(r, col->role, fs, len, b, nv);
                off[col->slot + 1] = (uint32_t)*nv;
                break;
            default: break;
            }
            if (rc) return rc;
        }
        if (p == end) break;
        p++;
    }
    if (c + 1 != r->n_cols) return shape_err(r, ln, c + 1, s, n);
    if (mapped) {
        for (size_t f = 0; f < F; f++) {
            const char *fs = ln->sc->span[2 * f], *fe = ln->sc->span[2 * f + 1];
            int rc = push_field(r, r->cols[r->field_col[f]].role, fs, (size_t)(fe - fs), b, nv);
            if (rc) return rc;
            off[f + 1] = (uint32_t)*nv;
        }
    }
    b->label[row] = label;
    return ES_OK;
}

/* ---- renumbering (schema.h) ---------------------------------------------------------- */
/* Give field slot i the new number fnew[i] and numeric slot j dnew[j] (both
 * permutations; NULL = unchanged).  Names move with their slots. */
static int csv_renumber(es_reader *r, const int *fnew, const int *dnew) {
    const int F = r->n_fields, D = r->n_dense;
    char **fn = es__calloc((size_t)(F ? F : 1), sizeof *fn), **dn = es__calloc((size_t)(D ? D : 1), sizeof *dn);
    int *fcol = es__malloc((size_t)(F ? F : 1) * sizeof *fcol);
    char **span = es__calloc(2 * (size_t)(F ? F : 1), sizeof *span);
    if (!fn || !dn || !fcol || !span) {
        es__free(fn);
        es__free(dn);
        es__free(fcol);
        es__free(span);
        return ES_ENOMEM;
    }
    for (int i = 0; i < F; i++) fn[fnew ? fnew[i] : i] = r->field_names[i];
    for (int j = 0; j < D; j++) dn[dnew ? dnew[j] : j] = r->dense_names[j];
    es__free(r->field_names);
    es__free(r->dense_names);
    r->field_names = fn;
    r->dense_names = dn;
    bool in_order = true;
    int last = -1;
    for (int c = 0; c < r->n_cols; c++) {
        es__col *col = &r->cols[c];
        if (col->role == ES__COL_NUM && dnew) col->slot = dnew[col->slot];
        if (col->role == ES__COL_CAT || col->role == ES__COL_MULTI) {
            if (fnew) col->slot = fnew[col->slot];
            fcol[col->slot] = c;
            in_order = in_order && col->slot == last + 1;
            last = col->slot;
        }
    }
    es__free(r->field_col);
    es__free(r->sc.span);
    r->field_col = NULL;
    r->sc.span = NULL;
    if (in_order) {
        es__free(fcol);
        es__free(span);
    } else {
        r->field_col = fcol;
        r->sc.span = span;
    }
    return ES_OK;
}

/* new[i] = the index j of names[j] equal to have[i], each j used once;
 * false when `have` is not a permutation of `names`. */
static bool match_perm(char *const *have, const char *const *names, int n, int *out, char *used) {
    memset(used, 0, (size_t)(n ? n : 1));
    for (int i = 0; i < n; i++) {
        int j = 0;
        while (j < n && (used[j] || !names[j] || strcmp(have[i], names[j]) != 0)) j++;
        if (j == n) return false;
        used[j] = 1;
        out[i] = j;
    }
    return true;
}

int es__reader_match_names(es_reader *r, const char *const *fields, int nf, const char *const *dense, int nd) {
    if (r->fmt != ES_FMT_CSV || !r->cols || nf != r->n_fields || nd != r->n_dense) return 0;
    const int F = r->n_fields, D = r->n_dense, M = F > D ? F : D;
    int *fnew = es__malloc((size_t)(F + D + 1) * sizeof(int));
    char *used = es__malloc((size_t)M + 1);
    if (!fnew || !used) {
        es__free(fnew);
        es__free(used);
        return ES_ENOMEM;
    }
    int *dnew = fnew + F;
    int rc = 0;
    if (match_perm(r->field_names, fields, F, fnew, used) && match_perm(r->dense_names, dense, D, dnew, used))
        rc = csv_renumber(r, fnew, dnew) == ES_OK ? 1 : ES_ENOMEM;
    es__free(fnew);
    es__free(used);
    return rc;
}

/* (spec entry, column) pairs sorted by entry: columns without an entry
 * (spec = -1) keep their place before the named ones, in column order. */
typedef struct {
    int spec, col;
} spec_col;
static int cmp_spec_col(const void *a, const void *b) {
    const spec_col *x = a, *y = b;
    if (x->spec != y->spec) return x->spec < y->spec ? -1 : 1;
    return (x->col > y->col) - (x->col < y->col);
}

int es__reader_spec_order(es_reader *r) {
    if (r->fmt != ES_FMT_CSV || !r->cols) return ES_OK;
    const int F = r->n_fields, D = r->n_dense;
    spec_col *fs = es__malloc((size_t)(F + D + 1) * sizeof *fs);
    int *fnew = es__malloc((size_t)(F + D + 1) * sizeof(int));
    if (!fs || !fnew) {
        es__free(fs);
        es__free(fnew);
        return ES_ENOMEM;
    }
    spec_col *ds = fs + F;
    int *dnew = fnew + F;
    int nf = 0, nd = 0;
    for (int c = 0; c < r->n_cols; c++) {
        const es__col *col = &r->cols[c];
        if (col->role == ES__COL_CAT || col->role == ES__COL_MULTI) fs[nf++] = (spec_col){col->spec, c};
        else if (col->role == ES__COL_NUM) ds[nd++] = (spec_col){col->spec, c};
    }
    ES_ASSERT(nf == F && nd == D);
    qsort(fs, (size_t)F, sizeof *fs, cmp_spec_col);
    qsort(ds, (size_t)D, sizeof *ds, cmp_spec_col);
    for (int i = 0; i < F; i++) fnew[r->cols[fs[i].col].slot] = i;
    for (int i = 0; i < D; i++) dnew[r->cols[ds[i].col].slot] = i;
    int rc = csv_renumber(r, fnew, dnew);
    es__free(fs);
    es__free(fnew);
    return rc;
}

int es__reader_unused_columns(const es_reader *r, char *buf, size_t cap) {
    if (cap) buf[0] = 0;
    if (r->fmt != ES_FMT_CSV || !r->cols || !r->header_lines) return 0;
    int k = 0;
    size_t o = 0;
    for (int c = 0; c < r->n_cols; c++) {
        if (r->cols[c].role != ES__COL_IGNORE) continue;
        size_t need = strlen(r->col_names[c]) + 2;
        if (cap && o + need + 5 < cap) o += (size_t)snprintf(buf + o, cap - o, "%s%s", k ? ", " : "", r->col_names[c]);
        else if (cap && o + 5 < cap && (o < 3 || strcmp(buf + o - 3, "...") != 0))
            o += (size_t)snprintf(buf + o, cap - o, "%s...", k ? ", " : "");
        k++;
    }
    return k;
}

const char *es__reader_label_name(const es_reader *r) {
    if (r->esd) return es__esd_label_name(r);
    if (r->fmt != ES_FMT_CSV || !r->cols || !r->header_lines) return NULL;
    for (int c = 0; c < r->n_cols; c++)
        if (r->cols[c].role == ES__COL_LABEL) return r->col_names[c];
    return NULL;
}
