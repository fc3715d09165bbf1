/*
 * reader.c — es_reader: opening a data file, resolving the format, the
 * batch-filling loop shared by every format, bad-line handling, and the
 * number/label parsing the format parsers share.
 *
 * The loop: take a block of whole lines from lineio, cut it into lines,
 * skip blank ones, reject NUL bytes and invalid UTF-8, hand each line to the
 * format's row parser, and either keep the row or (skip_bad) drop it, count
 * it and keep its message.  With threads > 1 a block's lines are parsed in
 * parallel, with results identical to the serial loop: Criteo rows (a
 * fixed number of values each) straight into their slots, the other
 * formats in per-thread parts copied in line order.  Only the batch's value
 * arrays, the per-block line table and the parts' scratch grow (amortised);
 * nothing else allocates after open.
 */
#include "data/reader_impl.h"
#include "core/fileid.h"
#include "data/schema.h"

#include <math.h>
#include <pthread.h>

es_reader_params es_reader_params_default(void) {
    es_reader_params p;
    memset(&p, 0, sizeof p);
    p.format = ES_FMT_AUTO;
    p.delim = 0; /* from the file name: '\t' for .tsv/.tab, else ',' */
    p.header = 1;
    p.columns = NULL;
    p.multi_sep = '|';
    p.pool = ES_POOL_SUM;
    p.label_threshold = -INFINITY;
    p.has_label = 1;
    p.n_fields_hint = 0;
    p.skip_bad = 0;
    p.max_line = (size_t)1 << 20;
    p.threads = 1; /* see embstore.h: the trainer overlaps parsing already */
    return p;
}

/* ---- helpers shared by the format parsers ------------------------------------ */
int es__row_err(const es_reader *r, const es__line *ln, const char *fmt, ...) {
    if (!ln->err) return ES_EPARSE; /* parallel stage: the message comes later */
    char tail[sizeof ln->err->msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tail, sizeof tail, fmt, ap);
    va_end(ap);
    /* "path:line:column N ...: reason" when a column is named (editors jump
     * to it), "path:line: reason" for whole-line problems. */
    bool col = strncmp(tail, "column ", 7) == 0;
    return es__err(ln->err, ES_EPARSE, "%s:%llu:%s%s", es__lineio_name(r->io), (unsigned long long)ln->no, col ? "" : " ",
                   tail);
}

const char *es__tok(char *dst, size_t cap, const char *s, size_t n) {
    static const char hex[] = "0123456789abcdef";
    size_t o = 0, show = ES_MIN(n, (size_t)40);
    ES_ASSERT(cap >= 8);
    for (size_t i = 0; i < show && o + 5 < cap; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c < 0x7f && c != '\'') {
            dst[o++] = (char)c;
        } else {
            dst[o++] = '\\';
            dst[o++] = 'x';
            dst[o++] = hex[c >> 4];
            dst[o++] = hex[c & 15];
        }
    }
    if (show < n && o + 4 < cap) {
        memcpy(dst + o, "...", 3);
        o += 3;
    }
    dst[o] = 0;
    return dst;
}

static const double pow10_exact[23] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,  1e8,  1e9,  1e10, 1e11,
                                       1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

bool es__parse_num(const char *s, size_t n, double *out) {
    while (n && *s == ' ') s++, n--;
    while (n && s[n - 1] == ' ') n--;
    if (n == 0) return false;
    const char *p = s, *e = s + n;
    bool neg = false;
    if (*p == '-' || *p == '+') neg = *p++ == '-';
    /* Fast path (Clinger): at most 19 digits, no exponent.  A mantissa
     * below 2^53 and a power of ten up to 1e22 are both exact doubles, so
     * one IEEE division gives the correctly rounded value, as strtod. */
    uint64_t m = 0;
    int nd = 0, frac = 0;
    bool fast = true;
    for (; p < e && (unsigned)(*p - '0') < 10; p++, nd++) {
        if (nd < 19) m = m * 10 + (unsigned)(*p - '0');
        else fast = false;
    }
    if (p < e && *p == '.') {
        for (p++; p < e && (unsigned)(*p - '0') < 10; p++, nd++, frac++) {
            if (nd < 19) m = m * 10 + (unsigned)(*p - '0');
            else fast = false;
        }
    }
    if (nd == 0) return false; /* "", "-", ".", "e5" */
    if (fast && p == e && m <= (UINT64_C(1) << 53) && frac <= 22) {
        double v = (double)m;
        if (frac) v /= pow10_exact[frac];
        *out = neg ? -v : v;
        return true;
    }
    /* Slow path: only the characters of a decimal number may reach strtod
     * (it would also take "inf", "nan", hex and leading spaces). */
    for (const char *q = s; q < e; q++) {
        char c = *q;
        if (!((unsigned)(c - '0') < 10 || c == '.' || c == 'e' || c == 'E' || c == '+' || c == '-')) return false;
    }
    double v;
    if (!es__parse_double(s, n, &v) || !isfinite(v)) return false;
    *out = v;
    return true;
}

bool es__parse_label(const es_reader *r, const char *s, size_t n, int pm1, float *out, const char **why) {
    if (n == 1 && (s[0] == '0' || s[0] == '1') && !(r->p.label_threshold > -INFINITY)) {
        *out = (float)(s[0] - '0');
        return true;
    }
    double v;
    if (n == 0 || !es__parse_num(s, n, &v)) {
        *why = n == 0 ? "missing label" : "label is not a number";
        return false;
    }
    if (r->p.label_threshold > -INFINITY) {
        *out = v >= r->p.label_threshold ? 1.0f : 0.0f;
        return true;
    }
    if (v == 0 || v == 1) {
        *out = (float)v;
        return true;
    }
    if (pm1 && v == -1) {
        *out = 0.0f;
        return true;
    }
    *why = pm1 ? "label must be 0/1 or -1/+1" : "label must be 0 or 1";
    return false;
}

const char *es__label_hint(const char *why) {
    return strncmp(why, "label must", 10) == 0 ? " (set label_threshold to binarise other values)" : "";
}

int es__make_names(char ***out, int n, const char *prefix, int first) {
    *out = NULL;
    char **v = es__calloc((size_t)(n > 0 ? n : 1), sizeof *v);
    if (!v) return ES_ENOMEM;
    for (int i = 0; i < n; i++) {
        char buf[64];
        snprintf(buf, sizeof buf, "%s%d", prefix, i + first);
        v[i] = es__strdup(buf);
        if (!v[i]) {
            es__free_names(v, i);
            return ES_ENOMEM;
        }
    }
    *out = v;
    return ES_OK;
}

void es__free_names(char **names, int n) {
    if (!names) return;
    for (int i = 0; i < n; i++) es__free(names[i]);
    es__free(names);
}

/* ---- open / free --------------------------------------------------------------- */
static bool ends_with_ci(const char *s, size_t n, const char *suf) {
    size_t k = strlen(suf);
    if (n < k) return false;
    for (size_t i = 0; i < k; i++) {
        char a = s[n - k + i], b = suf[i];
        if (a >= 'A' && a <= 'Z') a = (char)(a - 'A' + 'a');
        if (a != b) return false;
    }
    return true;
}

/* Format from the name (".gz" is looked through); ES_FMT_AUTO if unknown. */
static es_format format_from_name(const char *name, bool *tsv) {
    size_t n = strlen(name);
    if (ends_with_ci(name, n, ".gz")) n -= 3;
    *tsv = ends_with_ci(name, n, ".tsv") || ends_with_ci(name, n, ".tab");
    if (ends_with_ci(name, n, ".tsv")) return ES_FMT_CRITEO;
    if (ends_with_ci(name, n, ".csv")) return ES_FMT_CSV;
    if (ends_with_ci(name, n, ".libsvm") || ends_with_ci(name, n, ".svm")) return ES_FMT_LIBSVM;
    if (ends_with_ci(name, n, ".libffm") || ends_with_ci(name, n, ".ffm")) return ES_FMT_LIBFFM;
    return ES_FMT_AUTO;
}

static int check_params(const es_reader_params *p, const char *name, es_err *err) {
    if ((int)p->format < ES_FMT_AUTO || (int)p->format > ES_FMT_ESD)
        return es__err(err, ES_EINVAL, "%s: unknown format %d", name, (int)p->format);
    if (p->delim == '"' || p->delim == '\n' || p->delim == '\r')
        return es__err(err, ES_EINVAL, "%s: the delimiter cannot be a quote or a line break", name);
    if (p->multi_sep == '"' || p->multi_sep == '\n' || p->multi_sep == '\r' || (p->delim && p->multi_sep == p->delim))
        return es__err(err, ES_EINVAL, "%s: multi_sep must differ from the delimiter, quotes and line breaks", name);
    if (p->pool != ES_POOL_SUM && p->pool != ES_POOL_MEAN)
        return es__err(err, ES_EINVAL, "%s: unknown pooling %d", name, (int)p->pool);
    if (p->n_fields_hint < 0 || p->n_fields_hint > ES__MAX_FIELDS)
        return es__err(err, ES_EINVAL, "%s: n_fields_hint must be in [0, %d], got %d", name, ES__MAX_FIELDS, p->n_fields_hint);
    if (isnan(p->label_threshold)) return es__err(err, ES_EINVAL, "%s: label_threshold is NaN", name);
    if (p->num_cat < -1 || p->num_cat > 1) return es__err(err, ES_EINVAL, "%s: num_cat must be 0, 1 or -1 (automatic), got %d", name, p->num_cat);
    if (p->threads < 0 || p->threads > 1024)
        return es__err(err, ES_EINVAL, "%s: threads must be in [0, 1024], got %d", name, p->threads);
    if (p->max_line > ES__LINEIO_MAX_LINE_LIMIT)
        return es__err(err, ES_EINVAL, "%s: max_line must be at most %zu, got %zu", name, ES__LINEIO_MAX_LINE_LIMIT, p->max_line);
    return ES_OK;
}

void es__scratch_free(es__scratch *sc) {
    es__free(sc->t_field);
    es__free(sc->t_key);
    es__free(sc->t_wt);
    es__free(sc->f_count);
    es__free(sc->span);
    memset(sc, 0, sizeof *sc);
}

int es__scratch_prepare(const es_reader *r, es__scratch *sc) {
    const size_t F = (size_t)r->n_fields;
    if (r->fmt == ES_FMT_LIBFFM && !sc->f_count && !(sc->f_count = es__calloc(F + 1, sizeof(uint32_t)))) return ES_ENOMEM;
    if (r->field_col && !sc->span && !(sc->span = es__calloc(2 * (F ? F : 1), sizeof(char *)))) return ES_ENOMEM;
    return ES_OK;
}

void es_reader_free(es_reader *r) {
    if (!r) return;
    es__esd_free(r->esd);
    es__keep_free(r->keep);
    es__lineio_free(r->io);
    es__free_names(r->dense_names, r->n_dense);
    es__free_names(r->field_names, r->n_fields);
    es__free_names(r->col_names, r->n_cols);
    es__free(r->cols);
    es__free(r->field_col);
    es__scratch_free(&r->sc);
    for (int t = 0; t < r->n_parts; t++) {
        es_batch_free(&r->parts[t].b);
        es__scratch_free(&r->parts[t].sc);
        es__free(r->parts[t].bad);
    }
    es__free(r->parts);
    es__free(r->pl);
    es__free(r->columns_copy);
    es__free(r);
}

/* num_cat: the numeric columns become categorical fields too, after the
 * format's own fields (names "<column>_b"). */
static int num_cat_setup(es_reader *r, es_err *err) {
    if (r->fmt != ES_FMT_CRITEO)
        return es__err(err, ES_EINVAL, "%s: num_cat (--num-cat, numeric columns as bucketed categorical fields) is for Criteo TSV files",
                       es__lineio_name(r->io));
    const int F = r->n_fields, D = r->n_dense;
    char **names = es__realloc(r->field_names, (size_t)(F + D) * sizeof *names);
    if (!names) return es__err(err, ES_ENOMEM, "%s: out of memory", es__lineio_name(r->io));
    r->field_names = names;
    for (int d = 0; d < D; d++) {
        size_t n = strlen(r->dense_names[d]) + 3;
        if (!(names[F + d] = es__malloc(n))) {
            r->n_fields = F + d; /* what is allocated, for es_reader_free */
            return es__err(err, ES_ENOMEM, "%s: out of memory", es__lineio_name(r->io));
        }
        snprintf(names[F + d], n, "%s_b", r->dense_names[d]);
    }
    r->n_fields = F + D;
    if (r->fixed_vals) r->fixed_vals += D;
    return ES_OK;
}

/* The bucket of a numeric feature as a categorical key, from its
 * transformed value t = es_transform_num(x) (monotone and odd, so x is
 * recovered; a missing value was read as 0).  x > 2: floor(ln(x)^2), else
 * floor(x) (the small integers -3 .. 2 of Criteo's counts), tagged apart. */
uint64_t es_num_bucket_key(float t) {
    double x = t >= 0 ? expm1((double)t) : -expm1(-(double)t);
    uint64_t tag, b;
    if (x > 2) {
        double l = log(x);
        tag = 1;
        b = (uint64_t)(int64_t)floor(l * l + 1e-9);
    } else {
        tag = 2;
        b = (uint64_t)(int64_t)floor(x + 1e-4); /* x = 1 comes back as 0.99999994 */
    }
    return es__mix64((tag << 56) ^ b ^ UINT64_C(0x6e756d5f63617421));
}

/* num_cat: append row `row`'s bucket values after its other fields. */
static int num_cat_append(es_reader *r, es_batch *b, int row, size_t *nv) {
    const int D = r->n_dense, F = r->n_fields, F0 = F - D;
    size_t v = *nv;
    if (v + (size_t)D > b->val_cap) { /* never in the parallel stage: it reserves every row's slots */
        int rc = es_batch_reserve_vals(b, v + (size_t)D);
        if (rc) return rc;
    }
    const float *dense = b->dense + (size_t)row * (size_t)D;
    uint32_t *off = b->off + (size_t)row * (size_t)F;
    for (int d = 0; d < D; d++) {
        b->val[v + (size_t)d] = es_num_bucket_key(dense[d]);
        b->wt[v + (size_t)d] = 1.0f;
        off[F0 + d + 1] = (uint32_t)(v + (size_t)d + 1);
    }
    *nv = v + (size_t)D;
    return ES_OK;
}

/* es_transform_num of the small integers, computed once per process: a
 * reader used to fill its own copy (4096 log1p calls), which was a quarter
 * of the time of a one-row request to `embstore serve` (it opens a reader
 * per request). */
static float g_tlog[ES__TLOG_N];
static pthread_once_t g_tlog_once = PTHREAD_ONCE_INIT;
static void tlog_init(void) {
    for (int i = 0; i < ES__TLOG_N; i++) g_tlog[i] = es_transform_num((double)i);
}

static int peek_first(es_reader *r, es_err *err);

/* Everything after the line source exists: format setup, then a peek for a
 * first data line so that an empty file fails here. */
static int open_common(es_reader *r, const char *columns, es_err *err) {
    pthread_once(&g_tlog_once, tlog_init);
    r->tlog = g_tlog;
    int rc;
    switch (r->fmt) {
    case ES_FMT_CRITEO: rc = es__criteo_setup(r, err); break;
    case ES_FMT_CSV: rc = es__csv_setup(r, columns, err); break;
    case ES_FMT_LIBSVM: rc = es__libsvm_setup(r, err); break;
    case ES_FMT_LIBFFM: rc = es__libffm_setup(r, err); break;
    default: rc = es__err(err, ES_EINVAL, "%s: no format", es__lineio_name(r->io));
    }
    if (rc) return rc;
    if (r->p.num_cat < 0) r->p.num_cat = r->fmt == ES_FMT_CRITEO;
    if (r->p.num_cat && (rc = num_cat_setup(r, err)) != ES_OK) return rc;
    ES_ASSERT(r->fixed_vals == 0 || r->fixed_vals == r->n_fields); /* block_parallel relies on it */
    return peek_first(r, err);
}

/* Clear the statistics and errors of a reader about to read from the start. */
static void clear_state(es_reader *r) {
    r->rows = r->bad = 0;
    r->n_report = 0;
    r->report_len = 0;
    r->report[0] = 0;
    r->failed = 0;
    r->pending = 0;
    r->err.code = 0;
    r->err.msg[0] = 0;
}

int es__reader_reset_mem(es_reader *r, const void *data, size_t n, es_err *err) {
    /* CSV reads a header and matches columns at open, and libffm without a
     * field count scans the whole input: those open afresh (and caches) */
    if (!r || r->esd || r->fmt == ES_FMT_CSV || (r->fmt == ES_FMT_LIBFFM && r->p.n_fields_hint <= 0))
        return es__err(err, ES_EINVAL, "es__reader_reset_mem: only for Criteo, libsvm and libffm (with a field count) readers");
    int rc = es__lineio_reset_mem(r->io, data, n, err);
    if (rc) return rc;
    clear_state(r);
    return peek_first(r, err);
}

/* The peek of an open: a first data line must exist (an empty input fails
 * here, not at the first next()); it is handed back to the first next(). */
static int peek_first(es_reader *r, es_err *err) {
    int rc;
    r->err.code = 0;
    r->err.msg[0] = 0;
    for (;;) {
        char *s;
        size_t n;
        rc = es__lineio_next(r->io, &s, &n, &r->err);
        if (rc == 1 && n == 0) continue;
        if (rc == 1) {
            es__lineio_unget(r->io);
            break;
        }
        if (rc == 0) return es__err(err, ES_EPARSE, "%s: no data rows", es__lineio_name(r->io));
        if (rc == ES_ERANGE) {
            r->pending = rc; /* a bad line: next() decides (skip or stop) */
            break;
        }
        if (err) *err = r->err;
        return rc;
    }
    return ES_OK;
}

static int open_esd(es_reader **out, const char *name, const void *mem, size_t mem_n, bool is_mem, const es_reader_params *p,
                    int strict, es_err *err) {
    es_reader *r = es__calloc(1, sizeof *r);
    if (!r) return es__err(err, ES_ENOMEM, "%s: out of memory", name);
    pthread_once(&g_tlog_once, tlog_init);
    r->tlog = g_tlog;
    int rc = es__esd_open(r, name, is_mem ? mem : NULL, is_mem ? mem_n : 0, p, strict, err);
    if (rc) {
        es_reader_free(r);
        return rc;
    }
    *out = r;
    return ES_OK;
}

int es__reader_open_esd(es_reader **out, const char *path, const es_reader_params *p, int strict, es_err *err) {
    *out = NULL;
    es_reader_params q = p ? *p : es_reader_params_default();
    int rc = check_params(&q, path, err);
    if (rc) return rc;
    return open_esd(out, path, NULL, 0, false, &q, strict, err);
}

int es__reader_is_cache(const es_reader *r) { return r && r->esd != NULL; }
int es__path_is_cache(const char *path) { return path && es__esd_sniff_path(path); }

/* files[n_files]: several files read as one stream (a list or glob), name
 * the first; NULL: name alone (or memory). */
static int open_any(es_reader **out, const char *name, const char *const *files, int n_files, const void *mem, size_t mem_n,
                    bool is_mem, const es_reader_params *pp, es_err *err) {
    if (!out) return es__err(err, ES_EINVAL, "es_reader_open: out is NULL");
    *out = NULL;
    if (!name) return es__err(err, ES_EINVAL, "es_reader_open: path is NULL");
    es_reader_params p = pp ? *pp : es_reader_params_default();
    int rc = check_params(&p, name, err);
    if (rc) return rc;
    if (files && (p.format == ES_FMT_ESD || es__esd_sniff_path(name)))
        return es__err(err, ES_EUNSUPPORTED, "%s: a list of dataset caches (.esd) is not supported: convert the files into one cache", name);
    /* a dataset cache: by its format, name or magic, whatever was asked */
    if (p.format == ES_FMT_ESD || (is_mem ? es__esd_sniff_mem(mem, mem_n) : es__esd_sniff_path(name)))
        return open_esd(out, name, mem, mem_n, is_mem, &p, 0, err);
    if (p.max_line == 0) p.max_line = (size_t)1 << 20;
    if (p.multi_sep == 0) p.multi_sep = '|';
    bool tsv;
    es_format guess = format_from_name(name, &tsv);
    if (p.format == ES_FMT_AUTO) {
        if (guess == ES_FMT_AUTO)
            return es__err(err, ES_EINVAL,
                           "%s: cannot tell the format from the file name (expected .tsv, .csv, .libsvm/.svm or "
                           ".libffm/.ffm, optionally .gz); set the format explicitly",
                           name);
        p.format = guess;
    }
    es_reader *r = es__calloc(1, sizeof *r);
    if (!r) return es__err(err, ES_ENOMEM, "%s: out of memory", name);
    const char *columns = p.columns;
    r->p = p;
    r->p.columns = NULL;
    if (columns && !(r->p.columns = r->columns_copy = es__strdup(columns))) {
        es__free(r);
        return es__err(err, ES_ENOMEM, "%s: out of memory", name);
    }
    r->fmt = p.format;
    r->delim = p.delim ? p.delim : (tsv ? '\t' : ',');
    r->msep = p.multi_sep;
    if (r->fmt == ES_FMT_CSV && r->msep == r->delim) {
        es_reader_free(r);
        return es__err(err, ES_EINVAL, "%s: multi_sep and the delimiter are both '%c'", name, p.multi_sep);
    }
    rc = is_mem ? es__lineio_open_mem(&r->io, mem, mem_n, name, p.max_line, err)
         : files ? es__lineio_open_files(&r->io, files, n_files, p.max_line, err)
                 : es__lineio_open(&r->io, name, p.max_line, err);
    if (!rc) rc = open_common(r, columns, err);
    if (rc) {
        es_reader_free(r);
        return rc;
    }
    *out = r;
    return ES_OK;
}

int es__reader_open_files(es_reader **out, const char *const *paths, int n, const es_reader_params *p, es_err *err) {
    if (!out) return es__err(err, ES_EINVAL, "es_reader_open: out is NULL");
    *out = NULL;
    if (!paths || n < 1) return es__err(err, ES_EINVAL, "es_reader_open: no files");
    return n == 1 ? open_any(out, paths[0], NULL, 0, NULL, 0, false, p, err) : open_any(out, paths[0], paths, n, NULL, 0, false, p, err);
}

int es_path_files(const char *spec, char ***paths, int *n, es_err *err) {
    if (!paths || !n) return es__err(err, ES_EINVAL, "es_path_files: NULL argument");
    *paths = NULL;
    *n = 0;
    if (!spec || !*spec) return es__err(err, ES_EINVAL, "es_path_files: empty path");
    return es__path_list(spec, paths, n, err);
}

void es_path_files_free(char **paths, int n) { es__path_list_free(paths, n); }

int es_reader_open(es_reader **out, const char *path, const es_reader_params *p, es_err *err) {
    if (!path || !es__path_is_list(path)) return open_any(out, path, NULL, 0, NULL, 0, false, p, err);
    char **paths;
    int n;
    if (out) *out = NULL;
    int rc = es__path_list(path, &paths, &n, err);
    if (rc != ES_OK) return rc;
    rc = es__reader_open_files(out, (const char *const *)paths, n, p, err);
    es__path_list_free(paths, n);
    return rc;
}

int es__reader_open_mem(es_reader **out, const void *data, size_t n, const char *name, const es_reader_params *p,
                        es_err *err) {
    return open_any(out, name ? name : "<memory>", NULL, 0, data, n, true, p, err);
}

/* ---- schema and statistics -------------------------------------------------------- */
int es_reader_n_dense(const es_reader *r) { return r ? r->n_dense : 0; }
void es__reader_set_threads(es_reader *r, int threads) { r->p.threads = threads; }

int es__reader_keep_rows(es_reader *r, uint64_t need) {
    if (!r) return ES_EINVAL;
    if (r->esd || r->keep) return ES_OK;
    return (r->keep = es__keep_new(need, r->n_dense, r->n_fields)) ? ES_OK : ES_ENOMEM;
}

uint64_t es__reader_kept_bytes(const es_reader *r) { return r ? r->kept_bytes : 0; }

es_reader_params es_reader_resolved_params(const es_reader *r) {
    es_reader_params p = r->p;
    p.format = r->fmt;
    p.delim = r->delim;
    p.multi_sep = r->msep;
    return p;
}
int es_reader_n_fields(const es_reader *r) { return r ? r->n_fields : 0; }
const char *es_reader_field_name(const es_reader *r, int field) {
    return r && field >= 0 && field < r->n_fields ? r->field_names[field] : NULL;
}
const char *es_reader_dense_name(const es_reader *r, int i) {
    return r && i >= 0 && i < r->n_dense ? r->dense_names[i] : NULL;
}
const char *es_reader_errmsg(const es_reader *r) { return r ? r->err.msg : "no reader"; }
uint64_t es_reader_lines(const es_reader *r) { return !r ? 0 : r->esd ? r->rows + r->bad : es__lineio_lineno(r->io); }
uint64_t es_reader_bad_lines(const es_reader *r) { return r ? r->bad : 0; }
const char *es_reader_bad_report(const es_reader *r) { return !r ? "" : r->esd ? (r->bad ? es__esd_bad_report(r) : "") : r->report; }
uint64_t es_reader_rows(const es_reader *r) { return r ? r->rows : 0; }
void es__reader_shape(const es_reader *r, int *got, int *want, int *alt) {
    *got = r ? r->sc.shape_got : 0;
    *want = r ? r->sc.shape_want : 0;
    *alt = r ? r->sc.shape_alt : 0;
}

/* ---- the batch loop ------------------------------------------------------------------ */
static void note_bad(es_reader *r) {
    r->bad++;
    if (r->n_report >= ES__REPORT_MAX) return;
    size_t room = sizeof r->report - r->report_len;
    int k = snprintf(r->report + r->report_len, room, "%s%s", r->n_report ? "\n" : "", r->err.msg);
    if (k > 0) r->report_len += ES_MIN((size_t)k, room - 1);
    r->n_report++;
}

/* One non-blank line (CR already dropped) into row `row`: the checks every
 * format shares, then the format's row parser. */
static int parse_line(es_reader *r, const es__line *ln, char *s, size_t n, es_batch *b, int row, size_t *nv) {
    if (n > r->p.max_line) return es__row_err(r, ln, "line longer than %zu bytes", r->p.max_line);
    if (ln->no == 1 && n >= 3 && memcmp(s, "\xef\xbb\xbf", 3) == 0) {
        s += 3; /* UTF-8 byte-order mark */
        n -= 3;
    }
    if (!r->row_checks_text) {
        const char *why = NULL;
        size_t bad = es__text_check(s, n, &why);
        if (bad < n) return es__row_err(r, ln, "column %zu: %s", bad + 1, why);
    }
    int rc = r->row(r, ln, s, n, b, row, nv);
    if (rc == ES_OK && r->p.num_cat) rc = num_cat_append(r, b, row, nv);
    if (rc == ES_ENOMEM && ln->err)
        es__err(ln->err, rc, "%s:%llu: out of memory growing the batch", es__lineio_name(r->io), (unsigned long long)ln->no);
    return rc;
}

/* Parse the lines of one block in order, until the batch is full. */
static int block_serial(es_reader *r, es_batch *b, char *blk, size_t len, int *prow, size_t *pnv) {
    const size_t F = (size_t)r->n_fields;
    const uint64_t base = es__lineio_lineno(r->io);
    char *p = blk, *end = blk + len;
    uint64_t seen = 0;
    int row = *prow, rc = ES_OK;
    size_t nv = *pnv;
    while (p < end && row < b->cap) {
        char *s;
        size_t n;
        es__cut_line(&p, end, &s, &n);
        seen++;
        if (n == 0) continue; /* blank lines carry nothing */
        es__line ln = {base + seen, &r->err, &r->sc};
        rc = parse_line(r, &ln, s, n, b, row, &nv);
        if (rc == ES_OK) {
            row++;
            continue;
        }
        nv = b->off[(size_t)row * F]; /* drop the partial row */
        if (rc == ES_EPARSE && r->p.skip_bad) {
            note_bad(r);
            rc = ES_OK;
            continue;
        }
        break;
    }
    es__lineio_consumed(r->io, (size_t)(p - blk), seen);
    *prow = row;
    *pnv = nv;
    return rc;
}

/* Cut up to `want` non-blank lines of a block into r->pl (grown on demand):
 * *k lines, *used bytes and *used_lines lines (blank ones too) up to the
 * last one.  ES_ENOMEM (message in r->err, nothing consumed). */
static int cut_lines(es_reader *r, char *blk, size_t len, int want, int *k, size_t *used, uint64_t *used_lines) {
    if ((size_t)want > r->pl_cap) {
        es__pline *pl = es__realloc(r->pl, (size_t)want * sizeof *pl);
        if (!pl) {
            es__lineio_consumed(r->io, 0, 0);
            return es__err(&r->err, ES_ENOMEM, "%s: out of memory for %d line slots", es__lineio_name(r->io), want);
        }
        r->pl = pl;
        r->pl_cap = (size_t)want;
    }
    es__pline *pl = r->pl;
    const uint64_t base = es__lineio_lineno(r->io);
    char *p = blk, *end = blk + len;
    uint64_t seen = 0;
    int n_lines = 0;
    while (p < end && n_lines < want) {
        char *s;
        size_t n;
        es__cut_line(&p, end, &s, &n);
        seen++;
        if (n == 0) continue;
        pl[n_lines] = (es__pline){s, n, base + seen, (size_t)(p - blk), seen, 0, 0, 0};
        n_lines++;
    }
    *k = n_lines;
    *used = (size_t)(p - blk);
    *used_lines = seen;
    return ES_OK;
}

/* Criteo with several threads: every row has exactly fixed_vals values (one
 * per field), so row i of the block can be parsed into its final slots
 * independently.  Lines are parsed in parallel without messages; then, in
 * line order, good rows are kept (moved down over dropped ones) and each bad
 * line is parsed once more, serially, to produce its message.  The result
 * is identical to block_serial for any thread count. */
static int block_parallel(es_reader *r, es_batch *b, char *blk, size_t len, int nt, int *prow, size_t *pnv) {
    const size_t V = (size_t)r->fixed_vals, D = (size_t)r->n_dense;
    const int row = *prow;
    const size_t nv = *pnv;
    int k;
    size_t used;
    uint64_t used_lines;
    int rc = cut_lines(r, blk, len, b->cap - row, &k, &used, &used_lines);
    if (rc) return rc;
    es__pline *pl = r->pl;
    if (k > 0 && es_batch_reserve_vals(b, nv + (size_t)k * V) != ES_OK) {
        es__lineio_consumed(r->io, 0, 0);
        return es__err(&r->err, ES_ENOMEM, "%s:%llu: out of memory growing the batch", es__lineio_name(r->io),
                       (unsigned long long)pl[0].no);
    }
ES__OMP(omp parallel for schedule(dynamic, 32) num_threads(nt) if (nt > 1 && k >= 64))
    for (int i = 0; i < k; i++) {
        es__line ln = {pl[i].no, NULL, NULL};
        size_t v = nv + (size_t)i * V;
        pl[i].status = parse_line(r, &ln, pl[i].s, pl[i].n, b, row + i, &v);
    }
    int kept = 0;
    for (int i = 0; i < k; i++) {
        if (pl[i].status == ES_OK) {
            if (kept != i) {
                int dst = row + kept, src = row + i;
                b->label[dst] = b->label[src];
                memcpy(b->dense + (size_t)dst * D, b->dense + (size_t)src * D, D * sizeof(float));
                memcpy(b->val + nv + (size_t)kept * V, b->val + nv + (size_t)i * V, V * sizeof(uint64_t));
                memcpy(b->wt + nv + (size_t)kept * V, b->wt + nv + (size_t)i * V, V * sizeof(float));
            }
            kept++;
            continue;
        }
        es__line ln = {pl[i].no, &r->err, &r->sc};
        size_t v = nv + (size_t)i * V;
        int again = parse_line(r, &ln, pl[i].s, pl[i].n, b, row + i, &v);
        ES_ASSERT(again == pl[i].status); /* parsing is deterministic */
        if (again == ES_EPARSE && r->p.skip_bad) {
            note_bad(r);
            continue;
        }
        rc = again;
        used = pl[i].after;
        used_lines = pl[i].seen;
        break;
    }
    /* one value per field: the offsets of kept row j are consecutive */
    uint32_t *off = b->off + (size_t)row * V;
    for (size_t j = 1; j <= (size_t)kept * V; j++) off[j] = (uint32_t)(nv + j);
    es__lineio_consumed(r->io, used, used_lines);
    *prow = row + kept;
    *pnv = nv + (size_t)kept * V;
    return rc;
}

/* ---- the parallel parse of the variable-length formats --------------------------
 * CSV, libsvm and libffm rows have any number of values, so a row's place
 * in the batch is known only once the rows before it are parsed.  The
 * block's lines are cut into contiguous parts of about equal bytes (up to
 * PARTS_PER_THREAD a thread); a thread parses each part it takes into that
 * part's own batch (rows 0.., values from 0) with the part's own scratch,
 * keeping every bad line's message and shape.  Then, in
 * line order, one pass finds where the first fatal line stops the block
 * (the same one block_serial would stop at) and where each part's kept
 * rows go; the bad lines' messages are handed over in line order (r->err,
 * the skip-bad count and report, the shape); and the parts' kept rows
 * are copied into the batch, shifting the offsets (by the calling thread:
 * the copy is a small fraction of the parse).  Batches,
 * messages, statistics and the bytes and lines consumed are those of
 * block_serial for any thread count.  Parsing once with messages (unlike
 * the Criteo path, which parses a bad line again) matters for CSV, whose
 * parser unquotes fields in place: a second parse of the same bytes would
 * not see the same line. */
#define PART_MIN_LINES 64 /* fewer lines a part are not worth a thread */
#define PARTS_PER_THREAD 4 /* threads take parts as they finish (dynamic), so a
                              thread that lost its core holds back at most
                              one small part, not half the block */

/* r->parts grown to n (new ones zeroed); ES_ENOMEM. */
static int parts_reserve(es_reader *r, int n) {
    if (n <= r->n_parts) return ES_OK;
    es__part *pa = es__realloc(r->parts, (size_t)n * sizeof *pa);
    if (!pa) return ES_ENOMEM;
    memset(pa + r->n_parts, 0, (size_t)(n - r->n_parts) * sizeof *pa);
    r->parts = pa;
    r->n_parts = n;
    return ES_OK;
}

/* Note a bad line of part P: its message and shape go to P->bad, its index
 * to pl->v0 (UINT32_MAX and status ES_ENOMEM when the list cannot grow). */
static void part_bad(es__part *P, es__pline *pl, const es_err *e) {
    pl->v0 = UINT32_MAX;
    if (P->n_bad == P->bad_cap) {
        int cap = P->bad_cap ? 2 * P->bad_cap : 8;
        es__badline *nb = es__realloc(P->bad, (size_t)cap * sizeof *nb);
        if (!nb) {
            pl->status = ES_ENOMEM;
            return;
        }
        P->bad = nb;
        P->bad_cap = cap;
    }
    es__badline *bl = &P->bad[P->n_bad];
    bl->err = *e;
    bl->shape_got = P->sc.shape_got;
    bl->shape_want = P->sc.shape_want;
    bl->shape_alt = P->sc.shape_alt;
    pl->v0 = (uint32_t)P->n_bad++;
}

/* Parse the lines of part P into its own batch. */
static void parse_part(es_reader *r, es__part *P) {
    es__pline *pl = r->pl;
    const int rows = P->last - P->first;
    P->n_bad = 0;
    if (rows <= 0) return;
    int rc = ES_OK;
    if (rows > P->b.cap) {
        size_t vc = P->b.val_cap;
        int cap = ES_MAX(rows, 2 * P->b.cap);
        es_batch_free(&P->b);
        rc = es_batch_alloc(&P->b, cap, r->n_dense, r->n_fields, vc);
    }
    if (rc == ES_OK) rc = es__scratch_prepare(r, &P->sc);
    if (rc) {
        for (int i = P->first; i < P->last; i++) {
            pl[i].status = ES_ENOMEM;
            pl[i].v0 = UINT32_MAX;
        }
        return;
    }
    size_t nv = 0;
    es_err e;
    for (int i = P->first; i < P->last; i++) {
        es__line ln = {pl[i].no, &e, &P->sc};
        size_t v0 = nv;
        P->sc.shape_want = 0; /* set again only by a line with the wrong column count */
        rc = parse_line(r, &ln, pl[i].s, pl[i].n, &P->b, i - P->first, &nv);
        pl[i].status = rc;
        if (rc == ES_OK) {
            pl[i].v0 = (uint32_t)v0;
            pl[i].v1 = (uint32_t)nv;
            continue;
        }
        nv = v0; /* drop the partial row */
        part_bad(P, &pl[i], &e);
        if (!(pl[i].status == ES_EPARSE && r->p.skip_bad)) break; /* the block stops here at the latest */
    }
}

/* Copy the kept rows of part P, lines [first, end), to rows row0.. and
 * values nv0.. of the batch. */
static void copy_part(const es_reader *r, es_batch *b, const es__part *P) {
    const size_t F = (size_t)r->n_fields, D = (size_t)r->n_dense;
    const es__pline *pl = r->pl;
    size_t row = (size_t)P->row0, nv = P->nv0;
    for (int i = P->first; i < P->end; i++) {
        if (pl[i].status != ES_OK) continue;
        const size_t li = (size_t)(i - P->first);
        const uint32_t v0 = pl[i].v0, cnt = pl[i].v1 - pl[i].v0;
        const uint32_t delta = (uint32_t)nv - v0; /* modulo 2^32, like off[] */
        b->label[row] = P->b.label[li];
        if (D) memcpy(b->dense + row * D, P->b.dense + li * D, D * sizeof(float));
        const uint32_t *so = P->b.off + li * F;
        uint32_t *o = b->off + row * F;
        for (size_t f = 1; f <= F; f++) o[f] = so[f] + delta;
        memcpy(b->val + nv, P->b.val + v0, cnt * sizeof(uint64_t));
        memcpy(b->wt + nv, P->b.wt + v0, cnt * sizeof(float));
        row++;
        nv += cnt;
    }
}

static int block_parallel_var(es_reader *r, es_batch *b, char *blk, size_t len, int nt, int *prow, size_t *pnv) {
    const int row = *prow;
    const size_t nv = *pnv;
    int k;
    size_t used;
    uint64_t used_lines;
    int rc = cut_lines(r, blk, len, b->cap - row, &k, &used, &used_lines);
    if (rc) return rc;
    es__pline *pl = r->pl;
    int np = ES_MIN(nt * PARTS_PER_THREAD, k / PART_MIN_LINES);
    if (np < 1) np = 1;
    if (parts_reserve(r, np) != ES_OK) {
        es__lineio_consumed(r->io, 0, 0);
        return es__err(&r->err, ES_ENOMEM, "%s: out of memory for %d parse parts", es__lineio_name(r->io), np);
    }
    /* parts of about equal bytes (pl[i].after grows with i) */
    es__part *parts = r->parts;
    const size_t total = k ? pl[k - 1].after : 0;
    for (int t = 0, i = 0; t < np; t++) {
        parts[t].first = i;
        if (t == np - 1) {
            i = k;
        } else {
            const size_t cut = total / (size_t)np * (size_t)(t + 1);
            while (i < k && pl[i].after <= cut) i++;
        }
        parts[t].last = i;
    }
ES__OMP(omp parallel for schedule(dynamic, 1) num_threads(ES_MIN(nt, np)) if (np > 1))
    for (int t = 0; t < np; t++) parse_part(r, &parts[t]);
    /* where the block stops, and where each part's kept rows go */
    int stop = k, kept = 0;
    size_t vals = 0;
    for (int t = 0; t < np && stop == k; t++) {
        es__part *P = &parts[t];
        P->row0 = row + kept;
        P->nv0 = nv + vals;
        for (int i = P->first; i < P->last; i++) {
            if (pl[i].status == ES_OK) {
                kept++;
                vals += pl[i].v1 - pl[i].v0;
            } else if (!(pl[i].status == ES_EPARSE && r->p.skip_bad)) {
                stop = i;
                break;
            }
        }
    }
    for (int t = 0; t < np; t++) parts[t].end = parts[t].first >= stop ? parts[t].first : ES_MIN(parts[t].last, stop);
    if (vals > 0 && es_batch_reserve_vals(b, nv + vals) != ES_OK) {
        es__lineio_consumed(r->io, 0, 0);
        return es__err(&r->err, ES_ENOMEM, "%s:%llu: out of memory growing the batch", es__lineio_name(r->io),
                       (unsigned long long)pl[0].no);
    }
    /* the bad lines' messages in line order, as block_serial leaves them */
    for (int t = 0; t < np; t++) {
        es__part *P = &parts[t];
        const int last = ES_MIN(P->last, stop + 1);
        for (int i = P->first; i < last; i++) {
            if (pl[i].status == ES_OK) continue;
            if (pl[i].v0 != UINT32_MAX) {
                const es__badline *bl = &P->bad[pl[i].v0];
                r->err = bl->err;
                if (bl->shape_want) {
                    r->sc.shape_got = bl->shape_got;
                    r->sc.shape_want = bl->shape_want;
                    r->sc.shape_alt = bl->shape_alt;
                }
            } else {
                es__err(&r->err, ES_ENOMEM, "%s:%llu: out of memory", es__lineio_name(r->io), (unsigned long long)pl[i].no);
            }
            if (i < stop) note_bad(r);
        }
    }
    /* serial: a second parallel region a block cost more than the copy on
     * this shared machine (each fork/join may wait for a descheduled thread) */
    for (int t = 0; t < np; t++) copy_part(r, b, &parts[t]);
    if (stop < k) {
        rc = pl[stop].status;
        used = pl[stop].after;
        used_lines = pl[stop].seen;
    }
    es__lineio_consumed(r->io, used, used_lines);
    *prow = row + kept;
    *pnv = nv + vals;
    return rc;
}

static const char *r_name(const es_reader *r) { return r->esd ? es__esd_name(r) : es__lineio_name(r->io); }

int es_reader_next(es_reader *r, es_batch *b) {
    if (!r) return ES_EINVAL;
    if (!b || b->cap <= 0 || !b->off || !b->label || (r->n_dense && !b->dense)) {
        return es__err(&r->err, ES_EINVAL, "%s: es_reader_next: batch not allocated", r_name(r));
    }
    if (b->n_dense != r->n_dense || b->n_fields != r->n_fields) {
        return es__err(&r->err, ES_EINVAL,
                       "%s: batch shape (%d dense, %d fields) does not match the reader (%d dense, %d fields)",
                       r_name(r), b->n_dense, b->n_fields, r->n_dense, r->n_fields);
    }
    if (r->failed) return r->failed;
    if (r->esd) return es__esd_next(r, b);
    const int nt = r->p.threads > 0 ? r->p.threads : es__threads_get();
    const bool parallel = nt > 1;
    int row = 0, rc = ES_OK;
    size_t nv = 0;
    b->off[0] = 0;
    b->n = 0;
    while (row < b->cap) {
        if (r->pending) {
            rc = r->pending; /* an over-long line met at open; message in r->err */
            r->pending = 0;
        } else {
            char *blk;
            size_t len;
            rc = es__lineio_next_block(r->io, &blk, &len, &r->err);
            if (rc == 0) break;
            if (rc == 1) {
                rc = !parallel        ? block_serial(r, b, blk, len, &row, &nv)
                     : r->fixed_vals ? block_parallel(r, b, blk, len, nt, &row, &nv)
                                     : block_parallel_var(r, b, blk, len, nt, &row, &nv);
                if (rc == ES_OK) continue;
            }
        }
        /* Only an over-long line from lineio is a bad line to skip: the
         * blocks skip their own bad lines, so any other status here (a gzip
         * or I/O error, even one reported as ES_EPARSE) is fatal. */
        if (rc == ES_ERANGE) {
            rc = ES_EPARSE;
            if (r->p.skip_bad) {
                note_bad(r);
                continue;
            }
        }
        b->n = row;
        r->rows += (uint64_t)row;
        r->failed = rc;
        es__keep_stop(r->keep);
        return rc;
    }
    b->n = row;
    r->rows += (uint64_t)row;
    if (r->keep) {
        if (row > 0) es__keep_add(r->keep, b);
        else if (r->rows > 0) es__keep_eof(r->keep);
    }
    if (row == 0 && r->rows == 0) {
        if (r->bad)
            es__err(&r->err, ES_EPARSE, "%s: no data rows (%llu bad lines skipped; first: %.300s)", es__lineio_name(r->io),
                    (unsigned long long)r->bad, r->report);
        else
            es__err(&r->err, ES_EPARSE, "%s: no data rows", es__lineio_name(r->io));
        r->failed = ES_EPARSE;
        return ES_EPARSE;
    }
    return row;
}

int es__reader_skip(es_reader *r, uint64_t n, uint64_t *skipped) {
    *skipped = 0;
    if (!r) return ES_EINVAL;
    if (r->esd)
        return es__err(&r->err, ES_EUNSUPPORTED, "rows of a dataset cache (.esd) cannot be skipped yet: read the text file");
    if (r->failed) return r->failed;
    if (r->p.skip_bad)
        return es__err(&r->err, ES_EINVAL, "%s: rows cannot be skipped unparsed with --skip-bad (a bad line is no row)",
                       es__lineio_name(r->io));
    es__keep_stop(r->keep); /* the kept rows would have a hole */
    uint64_t done = 0;
    while (done < n) {
        int rc;
        if (r->pending) {
            rc = r->pending; /* an over-long line met at open; message in r->err */
            r->pending = 0;
        } else {
            char *blk;
            size_t len;
            rc = es__lineio_next_block(r->io, &blk, &len, &r->err);
            if (rc == 0) break;
            if (rc == 1) {
                char *p = blk, *end = blk + len;
                uint64_t seen = 0;
                while (p < end && done < n) {
                    char *s;
                    size_t ln;
                    es__cut_line(&p, end, &s, &ln);
                    seen++;
                    if (ln) done++; /* blank lines carry nothing, as in block_serial */
                }
                es__lineio_consumed(r->io, (size_t)(p - blk), seen);
                continue;
            }
        }
        if (rc == ES_ERANGE) rc = ES_EPARSE; /* an over-long line */
        r->failed = rc;
        *skipped = done;
        return rc;
    }
    *skipped = done;
    return ES_OK;
}

int es_reader_rewind(es_reader *r) {
    if (!r) return ES_EINVAL;
    if (r->keep && es__keep_ready(r->keep)) {
        /* a whole pass is kept: serve the rows from memory from now on */
        const uint64_t bytes = es__keep_bytes(r->keep);
        es_err e = {0};
        if (es__esd_from_keep(r, r->keep, es__lineio_name(r->io), es__reader_label_name(r), r->bad, r->report, &e) == ES_OK)
            r->kept_bytes = bytes;
        es__keep_free(r->keep);
        r->keep = NULL;
    } else {
        es__keep_restart(r->keep);
    }
    if (r->esd) {
        es__esd_rewind(r);
        clear_state(r);
        return ES_OK;
    }
    int rc = es__lineio_rewind(r->io, &r->err);
    if (rc) return rc;
    clear_state(r);
    if (r->fmt == ES_FMT_CSV && r->header_lines) {
        rc = es__csv_skip_header(r);
        if (rc) {
            r->failed = rc;
            return rc;
        }
    }
    return ES_OK;
}

const char *es__format_name(es_format f) {
    switch (f) {
    case ES_FMT_CRITEO: return "criteo";
    case ES_FMT_CSV: return "csv";
    case ES_FMT_LIBSVM: return "libsvm";
    case ES_FMT_LIBFFM: return "libffm";
    case ES_FMT_ESD: return "esd";
    default: return "auto";
    }
}
