/*
 * esd.c — the binary dataset cache (.esd): parsed and hashed rows of a text
 * data file in an embstore container (src/format), written once by
 * es_dataset_convert and read back behind the ordinary es_reader interface.
 *
 * Why: parsing text is most of the reading cost (about 280 ns a Criteo row,
 * docs/data-formats.md); a multi-epoch run parses the same bytes again on
 * every epoch.  A cache holds exactly what es_reader_next produced for the
 * text, so reading it is copying arrays, and a model trained from it is
 * bit-identical to one trained from the text.
 *
 * Layout (docs/data-formats.md, "Binary dataset cache"): metadata
 * embstore.type = "dataset", dataset.* (counts, the reader options that
 * shaped the rows, field and numeric names, the source file's identity),
 * and the tensors, one row-major column each, rows in file order:
 *   label   u8  [rows]            0 or 1
 *   dense   f32 [rows, n_dense]   transformed numeric features
 *   count   u32 [rows, n_fields]  values of each (row, field); absent when
 *                                 every field of every row has exactly one
 *                                 (dataset.one_per_field = 1: Criteo)
 *   key     u64 [values]          the values' keys, row by row, field by field
 *   weight  f32 [values]          their pooling weights; absent when all are
 *                                 1.0 (dataset.unit_weights = 1)
 *
 * Writing streams: the container puts the tensor table (with each tensor's
 * size and checksum) before the data, so the converter makes two passes
 * over the text: the first counts rows and values (and learns whether the
 * count and weight tensors are needed), the second writes each batch's
 * columns at their own cursors (es__fwriter_append) while the checksums
 * accumulate; the header is written last.  Memory is one batch, whatever
 * the file size.  The price is a second parse at convert time, paid once.
 *
 * Reading maps the file (ES_FILE_MAP, every checksum verified at open),
 * checks the rows as it copies them into the caller's batch (labels 0/1,
 * finite numbers, counts within the value total) so a crafted file with
 * valid checksums still cannot make it read out of bounds, and hands out
 * batches exactly as the text reader would for the same batch size.
 */
#include "core/fileid.h"
#include "data/reader_impl.h"
#include "data/schema.h"
#include "format/file.h"

#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <sys/stat.h>

#define ESD_VERSION 1
#define ESD_MAX_DENSE 65536
#define ESD_CONVERT_BATCH 8192

struct es__esd {
    es_file *f;
    const uint8_t *label;
    const float *dense;
    const uint32_t *count; /* NULL: one value per field */
    const uint64_t *key;
    const float *weight;   /* NULL: every weight is 1 */
    uint64_t rows, vals;   /* totals */
    uint64_t row, val;     /* cursor */
    uint64_t bad_lines;    /* of the source, at convert time */
    char *bad_report;
    char *label_name;
    char *name;            /* path or "(memory)" for messages */
    void *copy;            /* aligned copy of a memory image (es__reader_open_mem) */
    void *own[5];          /* rows kept by a text reader (es__esd_from_keep): the arrays above */
};

static const char *meta_or(const es_file *f, const char *key, const char *dflt) {
    const char *v = es__file_meta(f, key);
    return v ? v : dflt;
}

/* ---- reading -------------------------------------------------------------- */

int es__esd_sniff_mem(const void *data, size_t n) { return n >= 8 && memcmp(data, "EMBSTOR\0", 8) == 0; }

int es__esd_sniff_path(const char *path) {
    size_t n = strlen(path);
    if (n >= 4 && strcasecmp(path + n - 4, ".esd") == 0) return 1;
    /* only a regular file is sniffed: reading 8 bytes of a pipe would eat
     * them (and opening a FIFO could block) */
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISREG(st.st_mode)) return 0;
    FILE *fp = fopen(path, "rb");
    if (!fp) return 0;
    char m[8];
    size_t k = fread(m, 1, sizeof m, fp);
    fclose(fp);
    return es__esd_sniff_mem(m, k);
}

void es__esd_free(es__esd *e) {
    if (!e) return;
    for (int i = 0; i < 5; i++) es__free(e->own[i]);
    es__file_close(e->f);
    es__free_aligned(e->copy);
    es__free(e->bad_report);
    es__free(e->label_name);
    es__free(e->name);
    es__free(e);
}

static int fmt_parse(const char *s, es_format *out) {
    static const es_format all[] = {ES_FMT_CRITEO, ES_FMT_CSV, ES_FMT_LIBSVM, ES_FMT_LIBFFM};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        if (s && strcmp(s, es__format_name(all[i])) == 0) {
            *out = all[i];
            return 1;
        }
    return 0;
}

static int parse_threshold(const char *nm, const char *v, double *out, es_err *err) {
    if (v && strcmp(v, "-inf") == 0) {
        *out = -INFINITY;
        return ES_OK;
    }
    return es__meta_f64(nm, "dataset.label_threshold", v, -1e308, 1e308, out, err);
}

/* The source file's identity against the one recorded: ES_OK when the file
 * is gone (the cache stands alone) or unchanged; else a "stale" error. */
static int check_source(const es_file *f, const char *nm, es_err *err) {
    const char *src = es__file_meta(f, "dataset.source.path");
    if (!src || !*src) return ES_OK;
    es__file_id now;
    if (es__file_id_get(src, 1, &now, NULL) != ES_OK) return ES_OK;
    uint64_t size = 0, head = 0;
    int64_t mt = 0;
    int rc;
    if ((rc = es__meta_u64(nm, "dataset.source.size", es__file_meta(f, "dataset.source.size"), 0, UINT64_MAX, &size, err)) ||
        (rc = es__meta_i64(nm, "dataset.source.mtime_ns", es__file_meta(f, "dataset.source.mtime_ns"), INT64_MIN, INT64_MAX, &mt, err)))
        return rc;
    const char *hs = meta_or(f, "dataset.source.head", "");
    char *end = NULL;
    head = strtoull(hs, &end, 16);
    if (!*hs || *end) return es__err(err, ES_EFORMAT, "%s: metadata dataset.source.head=%.64s: expected 16 hex digits", nm, hs);
    const char *what = NULL;
    char why[160];
    if (now.size != size) {
        snprintf(why, sizeof why, "its size is %llu bytes, was %llu", (unsigned long long)now.size, (unsigned long long)size);
        what = why;
    } else if (now.mtime_ns != mt) {
        what = "it was modified (new modification time)";
    } else if (now.head_hash != head) {
        what = "its first bytes differ";
    }
    if (!what) return ES_OK;
    return es__err(err, ES_EINVAL,
                   "%s: stale cache: its source %s changed since the cache was built (%s); rebuild it (embstore convert, or "
                   "train --cache, which rebuilds a stale cache)",
                   nm, src, what);
}

/* Compare what the caller asked for with what the cache was built with.
 * format AUTO/ESD: "read the cache as it is", so only options given a
 * non-default value are compared; any other format (a model's reader
 * options) is compared too.  Pooling is compared whenever it changes the
 * weights (some field has several values somewhere). */
static int check_request(const es_reader *r, const es_reader_params *q, int one_per_field, int strict, const char *nm, es_err *err) {
    const es_reader_params *c = &r->p;
    char why[400] = "";
    bool fmt_given = q->format != ES_FMT_AUTO && q->format != ES_FMT_ESD;
    bool any = strict || fmt_given;
    bool csv = c->format == ES_FMT_CSV;
    int q_nc = q->num_cat < 0 ? c->format == ES_FMT_CRITEO : q->num_cat;
    if (fmt_given && q->format != c->format)
        snprintf(why, sizeof why, "format %s, not %s", es__format_name(c->format), es__format_name(q->format));
    else if (q->columns && (!c->columns || strcmp(q->columns, c->columns) != 0))
        snprintf(why, sizeof why, "columns '%.150s', not '%.150s'", c->columns ? c->columns : "(none: label first, the rest cat)", q->columns);
    else if (q->label_threshold > -INFINITY && q->label_threshold != c->label_threshold)
        snprintf(why, sizeof why, "label threshold %.17g, not %.17g", c->label_threshold, q->label_threshold);
    else if (any && !(q->label_threshold > -INFINITY) && c->label_threshold > -INFINITY)
        snprintf(why, sizeof why, "label threshold %.17g, not none", c->label_threshold);
    else if ((any || q->has_label == 0) && q->has_label != c->has_label)
        snprintf(why, sizeof why, "%s", c->has_label ? "labels (read it without --unlabeled)" : "no labels");
    else if ((any || q_nc == 1) && q_nc != c->num_cat)
        snprintf(why, sizeof why, "%s", c->num_cat ? "--num-cat" : "--no-num-cat");
    else if (q->n_fields_hint > 0 && q->n_fields_hint != r->n_fields)
        snprintf(why, sizeof why, "%d fields, not %d", r->n_fields, q->n_fields_hint);
    else if (csv && q->delim && q->delim != c->delim)
        snprintf(why, sizeof why, "delimiter %d, not %d", c->delim, q->delim);
    else if (csv && (any || q->header == 0) && q->header != c->header)
        snprintf(why, sizeof why, "%s", c->header ? "a header line" : "no header line");
    else if (csv && q->multi_sep && q->multi_sep != c->multi_sep)
        snprintf(why, sizeof why, "multi-sep '%c', not '%c'", c->multi_sep, q->multi_sep);
    else if (!one_per_field && q->pool != c->pool)
        snprintf(why, sizeof why, "--pool %s, not %s", c->pool == ES_POOL_MEAN ? "mean" : "sum", q->pool == ES_POOL_MEAN ? "mean" : "sum");
    else if (!q->skip_bad && r->esd->bad_lines)
        snprintf(why, sizeof why, "--skip-bad, which skipped %llu bad lines", (unsigned long long)r->esd->bad_lines);
    if (!why[0]) return ES_OK;
    return es__err(err, ES_EINVAL,
                   "%s: the cache was built with other input options: %s; rebuild it with the options wanted (embstore "
                   "convert) or read it with the ones it was built with",
                   nm, why);
}

static int names_from_meta(const es_file *f, const char *nm, const char *prefix, int n, char ***out, es_err *err) {
    int rc = es__make_names(out, n, "", 0);
    if (rc) return es__err(err, rc, "%s: out of memory", nm);
    for (int i = 0; i < n; i++) {
        char key[48];
        snprintf(key, sizeof key, "%s%d", prefix, i);
        const char *v = es__file_meta(f, key);
        if (!v) return es__err(err, ES_EFORMAT, "%s: metadata lacks '%s'", nm, key);
        char *s = es__strdup(v);
        if (!s) return es__err(err, ES_ENOMEM, "%s: out of memory", nm);
        es__free((*out)[i]);
        (*out)[i] = s;
    }
    return ES_OK;
}

/* A tensor of the expected dtype and shape, or NULL (with a message) when
 * required, absent or different. */
static int want_tensor(const es_file *f, const char *nm, const char *name, es_dtype dt, int ndim, uint64_t d0, uint64_t d1,
                       const void **out, es_err *err) {
    const es_tensor_ref *t = es__file_tensor(f, name);
    if (!t) return es__err(err, ES_EFORMAT, "%s: dataset cache lacks the tensor '%s'", nm, name);
    if (t->dtype != dt || t->ndim != ndim || t->shape[0] != d0 || (ndim > 1 && t->shape[1] != d1))
        return es__err(err, ES_EFORMAT, "%s: tensor '%s' is %s with %d dims [%llu, %llu], expected %s [%llu, %llu]", nm, name,
                       es__dtype_name(t->dtype), t->ndim, (unsigned long long)t->shape[0],
                       (unsigned long long)(t->ndim > 1 ? t->shape[1] : 0), es__dtype_name(dt), (unsigned long long)d0,
                       (unsigned long long)d1);
    *out = t->data;
    return ES_OK;
}

int es__esd_open(es_reader *r, const char *path, const void *mem, size_t n, const es_reader_params *q, int strict, es_err *err) {
    int rc;
    es__esd *e = es__calloc(1, sizeof *e);
    if (!e || !(e->name = es__strdup(path))) {
        es__free(e);
        return es__err(err, ES_ENOMEM, "%s: out of memory", path);
    }
    r->esd = e;
    const char *nm = e->name;
    es_err fe = {0};
    if (mem) { /* the container wants 64-byte aligned memory; callers' buffers need not be */
        if (!(e->copy = es__alloc_aligned(n ? n : 1))) return es__err(err, ES_ENOMEM, "%s: out of memory", nm);
        memcpy(e->copy, mem, n);
    }
    rc = mem ? es__file_open_mem(&e->f, e->copy, n, 0, &fe) : es__file_open(&e->f, path, ES_FILE_MAP, &fe);
    if (rc) {
        /* "(memory): ..." from the container: name the input instead */
        const char *msg = strncmp(fe.msg, "(memory)", 8) == 0 ? fe.msg + 8 : fe.msg;
        if (mem) return es__err(err, rc, "%s%s", nm, msg);
        return es__err(err, rc, "%s%s", msg, rc == ES_ECHECKSUM || rc == ES_EFORMAT ? " (a truncated or corrupt dataset cache: rebuild it)" : "");
    }
    const es_file *f = e->f;
    const char *type = es__file_meta(f, "embstore.type");
    if (!type || strcmp(type, "dataset") != 0)
        return es__err(err, ES_EFORMAT, "%s: an embstore %s file, not a dataset cache (made by embstore convert)", nm, type ? type : "(untyped)");
    int ver = 0;
    if ((rc = es__meta_int(nm, "dataset.version", es__file_meta(f, "dataset.version"), 1, INT_MAX, &ver, err))) return rc;
    if (ver > ESD_VERSION)
        return es__err(err, ES_EVERSION, "%s: dataset cache version %d is newer than this embstore (max %d)", nm, ver, ESD_VERSION);
    int D = 0, F = 0, opf = 0, unit = 0, delim = 0, msep = 0, pool = 0, hl = 0, nc = 0, hint = 0, header = 0, skip = 0;
    uint64_t maxl = 0;
    if ((rc = es__meta_u64(nm, "dataset.rows", es__file_meta(f, "dataset.rows"), 1, UINT64_MAX, &e->rows, err)) ||
        (rc = es__meta_u64(nm, "dataset.values", es__file_meta(f, "dataset.values"), 0, UINT64_MAX, &e->vals, err)) ||
        (rc = es__meta_int(nm, "dataset.n_dense", es__file_meta(f, "dataset.n_dense"), 0, ESD_MAX_DENSE, &D, err)) ||
        (rc = es__meta_int(nm, "dataset.n_fields", es__file_meta(f, "dataset.n_fields"), 0, ES__MAX_FIELDS + ESD_MAX_DENSE, &F, err)) ||
        (rc = es__meta_int(nm, "dataset.one_per_field", es__file_meta(f, "dataset.one_per_field"), 0, 1, &opf, err)) ||
        (rc = es__meta_int(nm, "dataset.unit_weights", es__file_meta(f, "dataset.unit_weights"), 0, 1, &unit, err)) ||
        (rc = es__meta_int(nm, "dataset.delim", es__file_meta(f, "dataset.delim"), 0, 255, &delim, err)) ||
        (rc = es__meta_int(nm, "dataset.header", es__file_meta(f, "dataset.header"), 0, 1, &header, err)) ||
        (rc = es__meta_int(nm, "dataset.multi_sep", es__file_meta(f, "dataset.multi_sep"), 0, 255, &msep, err)) ||
        (rc = es__meta_int(nm, "dataset.pool", es__file_meta(f, "dataset.pool"), 0, 1, &pool, err)) ||
        (rc = es__meta_int(nm, "dataset.has_label", es__file_meta(f, "dataset.has_label"), 0, 1, &hl, err)) ||
        (rc = es__meta_int(nm, "dataset.num_cat", es__file_meta(f, "dataset.num_cat"), 0, 1, &nc, err)) ||
        (rc = es__meta_int(nm, "dataset.n_fields_hint", es__file_meta(f, "dataset.n_fields_hint"), 0, ES__MAX_FIELDS, &hint, err)) ||
        (rc = es__meta_int(nm, "dataset.skip_bad", es__file_meta(f, "dataset.skip_bad"), 0, 1, &skip, err)) ||
        (rc = es__meta_u64(nm, "dataset.max_line", es__file_meta(f, "dataset.max_line"), 1, ES__LINEIO_MAX_LINE_LIMIT, &maxl, err)) ||
        (rc = es__meta_u64(nm, "dataset.bad_lines", es__file_meta(f, "dataset.bad_lines"), 0, UINT64_MAX, &e->bad_lines, err)) ||
        (rc = parse_threshold(nm, es__file_meta(f, "dataset.label_threshold"), &r->p.label_threshold, err)))
        return rc;
    if (!fmt_parse(es__file_meta(f, "dataset.format"), &r->p.format))
        return es__err(err, ES_EFORMAT, "%s: metadata dataset.format=%.32s: expected criteo, csv, libsvm or libffm", nm,
                       meta_or(f, "dataset.format", "(absent)"));
    r->fmt = r->p.format;
    r->p.delim = (char)delim;
    r->delim = (char)delim;
    r->p.header = header;
    r->p.multi_sep = (char)msep;
    r->msep = (char)msep;
    r->p.pool = (es_pool)pool;
    r->p.has_label = hl;
    r->p.num_cat = nc;
    r->p.n_fields_hint = hint;
    r->p.skip_bad = skip;
    r->p.max_line = (size_t)maxl;
    r->p.threads = q->threads;
    const char *cols = es__file_meta(f, "dataset.columns");
    r->p.columns = NULL;
    if (cols && !(r->p.columns = r->columns_copy = es__strdup(cols))) return es__err(err, ES_ENOMEM, "%s: out of memory", nm);
    if ((rc = names_from_meta(f, nm, "dataset.dense.", D, &r->dense_names, err))) {
        r->n_dense = D;
        return rc;
    }
    r->n_dense = D;
    if ((rc = names_from_meta(f, nm, "dataset.field.", F, &r->field_names, err))) {
        r->n_fields = F;
        return rc;
    }
    r->n_fields = F;
    const char *ln = es__file_meta(f, "dataset.label_name");
    if (ln && !(e->label_name = es__strdup(ln))) return es__err(err, ES_ENOMEM, "%s: out of memory", nm);
    if (!(e->bad_report = es__strdup(meta_or(f, "dataset.bad_report", "")))) return es__err(err, ES_ENOMEM, "%s: out of memory", nm);
    /* tensors: shapes follow from the counts, checked without overflow */
    uint64_t rf;
    if (__builtin_mul_overflow(e->rows, (uint64_t)F, &rf)) return es__err(err, ES_EFORMAT, "%s: rows x fields overflows", nm);
    if (opf && e->vals != rf)
        return es__err(err, ES_EFORMAT, "%s: one value per field but %llu values for %llu rows x %d fields", nm,
                       (unsigned long long)e->vals, (unsigned long long)e->rows, F);
    const void *p;
    if ((rc = want_tensor(f, nm, "label", ES_DT_U8, 1, e->rows, 0, &p, err))) return rc;
    e->label = p;
    if ((rc = want_tensor(f, nm, "dense", ES_DT_F32, 2, e->rows, (uint64_t)D, &p, err))) return rc;
    e->dense = p;
    if (!opf) {
        if ((rc = want_tensor(f, nm, "count", ES_DT_U32, 2, e->rows, (uint64_t)F, &p, err))) return rc;
        e->count = p;
    }
    if ((rc = want_tensor(f, nm, "key", ES_DT_U64, 1, e->vals, 0, &p, err))) return rc;
    e->key = p;
    if (!unit) {
        if ((rc = want_tensor(f, nm, "weight", ES_DT_F32, 1, e->vals, 0, &p, err))) return rc;
        e->weight = p;
    }
    if ((rc = check_request(r, q, opf, strict, nm, err))) return rc;
    if (!mem && (rc = check_source(f, nm, err))) return rc;
    return ES_OK;
}

/* The three loops of a batch that touch every slot: whether every float
 * is finite (exponent not all ones), offsets 0, 1, 2, ... (one value per
 * field), and weights of 1.  With GCC's vector extensions (4 lanes, plain
 * SSE2 on x86-64, NEON on arm64) they run about 4x faster than the scalar
 * loops, which -O2 does not vectorise; each has a scalar _ref twin, and
 * tests compare them over awkward sizes (esd_kernels_match_ref). */
typedef uint32_t es__v4u __attribute__((vector_size(16)));
typedef float es__v4f __attribute__((vector_size(16)));

bool es__esd_all_finite_ref(const float *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return false;
    return true;
}

bool es__esd_all_finite(const float *x, size_t n) {
    const es__v4u m = {0x7f800000u, 0x7f800000u, 0x7f800000u, 0x7f800000u};
    es__v4u bad = {0, 0, 0, 0};
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        es__v4u u;
        memcpy(&u, x + i, sizeof u);
        bad |= (es__v4u)((u & m) == m);
    }
    uint32_t b = bad[0] | bad[1] | bad[2] | bad[3];
    for (; i < n; i++) {
        uint32_t u;
        memcpy(&u, x + i, sizeof u);
        b |= (u & 0x7f800000u) == 0x7f800000u;
    }
    return b == 0;
}

void es__esd_iota_ref(uint32_t *off, size_t n) {
    for (size_t j = 0; j < n; j++) off[j] = (uint32_t)j;
}

void es__esd_iota(uint32_t *off, size_t n) {
    es__v4u v = {0, 1, 2, 3};
    const es__v4u step = {4, 4, 4, 4};
    size_t j = 0;
    for (; j + 4 <= n; j += 4, v += step) memcpy(off + j, &v, sizeof v);
    for (; j < n; j++) off[j] = (uint32_t)j;
}

void es__esd_ones_ref(float *w, size_t n) {
    for (size_t j = 0; j < n; j++) w[j] = 1.0f;
}

void es__esd_ones(float *w, size_t n) {
    const es__v4f one = {1.0f, 1.0f, 1.0f, 1.0f};
    size_t j = 0;
    for (; j + 4 <= n; j += 4) memcpy(w + j, &one, sizeof one);
    for (; j < n; j++) w[j] = 1.0f;
}

static bool all_finite(const float *x, size_t n) { return es__esd_all_finite(x, n); }

/* Corrupt content behind valid checksums (a crafted file): sticky.  The
 * batch is left empty (b->n = 0): its arrays are only filled after every
 * check of the batch passed, so no row of it is valid. */
static int bad_row(es_reader *r, es_batch *b, int row, const char *what) {
    b->n = 0;
    r->failed = es__err(&r->err, ES_EFORMAT, "%s: row %llu of the dataset cache: %s (a corrupt cache: rebuild it)", r->esd->name,
                        (unsigned long long)(r->esd->row + (uint64_t)row + 1), what);
    return r->failed;
}

int es__esd_next(es_reader *r, es_batch *b) {
    es__esd *e = r->esd;
    const size_t D = (size_t)r->n_dense, F = (size_t)r->n_fields;
    if (e->row == e->rows) {
        b->n = 0;
        if (e->val != e->vals) return bad_row(r, b, 0, "fewer values than the cache says");
        r->bad = e->bad_lines; /* as a text pass reports them at its end */
        return 0;
    }
    const int n = (int)ES_MIN((uint64_t)b->cap, e->rows - e->row);
    const uint64_t r0 = e->row;
    const uint8_t *lab = e->label + r0;
    uint8_t hi = 0;
    for (int i = 0; i < n; i++) {
        hi |= lab[i];
        b->label[i] = (float)lab[i];
    }
    if (hi > 1) {
        int i = 0;
        while (lab[i] <= 1) i++;
        return bad_row(r, b, i, "label is not 0 or 1");
    }
    if (D) {
        const float *src = e->dense + r0 * D;
        if (!all_finite(src, (size_t)n * D)) {
            size_t i = 0;
            while (isfinite(src[i])) i++;
            return bad_row(r, b, (int)(i / D), "a numeric feature is not finite");
        }
        memcpy(b->dense, src, (size_t)n * D * sizeof(float));
    }
    /* offsets, checked against the values left */
    const uint64_t left = e->vals - e->val;
    size_t nv;
    if (!e->count) {
        nv = (size_t)n * F;
        if (nv > left) return bad_row(r, b, 0, "more values than the cache holds");
        es__esd_iota(b->off, nv + 1);
    } else {
        const uint32_t *c = e->count + r0 * F;
        uint64_t acc = 0;
        b->off[0] = 0;
        for (size_t j = 0; j < (size_t)n * F; j++) {
            acc += c[j];
            if (acc > left || acc > UINT32_MAX) return bad_row(r, b, (int)(j / (F ? F : 1)), "more values than the cache holds");
            b->off[j + 1] = (uint32_t)acc;
        }
        nv = (size_t)acc;
    }
    if (nv > b->val_cap) {
        int rc = es_batch_reserve_vals(b, nv);
        if (rc) {
            b->n = 0;
            return r->failed = es__err(&r->err, rc, "%s: out of memory growing the batch", e->name);
        }
    }
    memcpy(b->val, e->key + e->val, nv * sizeof(uint64_t));
    if (e->weight) {
        const float *w = e->weight + e->val;
        if (!all_finite(w, nv)) return bad_row(r, b, 0, "a weight is not finite");
        memcpy(b->wt, w, nv * sizeof(float));
    } else {
        es__esd_ones(b->wt, nv);
    }
    e->row += (uint64_t)n;
    e->val += nv;
    b->n = n;
    r->rows += (uint64_t)n;
    return n;
}

void es__esd_rewind(es_reader *r) {
    r->esd->row = 0;
    r->esd->val = 0;
}

uint64_t es__esd_bad_lines(const es_reader *r) { return r->esd->bad_lines; }
const char *es__esd_bad_report(const es_reader *r) { return r->esd->bad_report; }
const char *es__esd_label_name(const es_reader *r) { return r->esd->label_name; }
const char *es__esd_name(const es_reader *r) { return r->esd->name; }

int es__esd_source_id(const char *path, uint64_t *size, uint64_t *head, es_err *err) {
    if (!es__esd_sniff_path(path)) return 0;
    es_file *f = NULL;
    if (es__file_open(&f, path, ES_FILE_MAP | ES_FILE_NO_VERIFY, err) != ES_OK) return 0; /* the open of the reader says why */
    const char *t = es__file_meta(f, "embstore.type");
    const char *s = es__file_meta(f, "dataset.source.size"), *h = es__file_meta(f, "dataset.source.head");
    int found = 0;
    if (t && strcmp(t, "dataset") == 0 && s && h) {
        char *end;
        *size = strtoull(s, &end, 10);
        *head = strtoull(h, &end, 16);
        found = 1;
    }
    es__file_close(f);
    return found;
}

/* ---- writing --------------------------------------------------------------- */

enum { T_LABEL, T_DENSE, T_COUNT, T_KEY, T_WEIGHT, T_N };

typedef struct {
    uint64_t rows, vals, bad;
    int one_per_field, unit_weights;
    char report[ES__REPORT_MAX * sizeof(((es_err *)0)->msg)];
} esd_counts;

/* Whether the first n rows of b keep the two shortcuts of the layout: one
 * value per (row, field) (*opf), every weight 1 (*unit).  Each flag is
 * only checked while it is still set (callers fold it over batches). */
static void batch_layout(const es_batch *b, size_t n, int *opf, int *unit) {
    const size_t F = (size_t)b->n_fields, nv = b->off[n * F];
    if (*opf && nv != n * F) *opf = 0;
    for (size_t j = 0; *opf && j < n * F; j++)
        if (b->off[j + 1] - b->off[j] != 1) *opf = 0;
    for (size_t j = 0; *unit && j < nv; j++)
        if (b->wt[j] != 1.0f || signbit(b->wt[j])) *unit = 0;
}

static int pass_count(es_reader *r, es_batch *b, esd_counts *c, es_err *err) {
    const size_t F = (size_t)b->n_fields;
    c->rows = c->vals = 0;
    c->one_per_field = c->unit_weights = 1;
    for (;;) {
        int n = es_reader_next(r, b);
        if (n < 0) return es__err(err, n, "%s", es_reader_errmsg(r));
        if (n == 0) return ES_OK;
        size_t nv = b->off[(size_t)n * F];
        batch_layout(b, (size_t)n, &c->one_per_field, &c->unit_weights);
        c->rows += (uint64_t)n;
        c->vals += nv;
    }
}

static void hex64(char *s, size_t cap, uint64_t v) { snprintf(s, cap, "%016llx", (unsigned long long)v); }

static int write_meta(es_fwriter *w, const es_reader *r, const char *src, const es__file_id *id, const esd_counts *c) {
    es_reader_params p = es_reader_resolved_params(r);
    int rc = 0;
    char buf[64];
    rc |= es__fwriter_meta(w, "embstore.type", "dataset");
    rc |= es__fwriter_metaf(w, "dataset.version", "%d", ESD_VERSION);
    rc |= es__fwriter_metaf(w, "dataset.rows", "%llu", (unsigned long long)c->rows);
    rc |= es__fwriter_metaf(w, "dataset.values", "%llu", (unsigned long long)c->vals);
    rc |= es__fwriter_metaf(w, "dataset.n_dense", "%d", es_reader_n_dense(r));
    rc |= es__fwriter_metaf(w, "dataset.n_fields", "%d", es_reader_n_fields(r));
    rc |= es__fwriter_metaf(w, "dataset.one_per_field", "%d", c->one_per_field);
    rc |= es__fwriter_metaf(w, "dataset.unit_weights", "%d", c->unit_weights);
    rc |= es__fwriter_meta(w, "dataset.format", es__format_name(p.format));
    rc |= es__fwriter_metaf(w, "dataset.delim", "%d", (int)(unsigned char)p.delim);
    rc |= es__fwriter_metaf(w, "dataset.header", "%d", p.header ? 1 : 0);
    if (p.columns) rc |= es__fwriter_meta(w, "dataset.columns", p.columns);
    rc |= es__fwriter_metaf(w, "dataset.multi_sep", "%d", (int)(unsigned char)p.multi_sep);
    rc |= es__fwriter_metaf(w, "dataset.pool", "%d", (int)p.pool);
    if (p.label_threshold > -INFINITY) rc |= es__fwriter_metaf(w, "dataset.label_threshold", "%.17g", p.label_threshold);
    else rc |= es__fwriter_meta(w, "dataset.label_threshold", "-inf");
    rc |= es__fwriter_metaf(w, "dataset.has_label", "%d", p.has_label ? 1 : 0);
    rc |= es__fwriter_metaf(w, "dataset.num_cat", "%d", p.num_cat > 0);
    rc |= es__fwriter_metaf(w, "dataset.n_fields_hint", "%d", p.n_fields_hint);
    rc |= es__fwriter_metaf(w, "dataset.skip_bad", "%d", p.skip_bad ? 1 : 0);
    rc |= es__fwriter_metaf(w, "dataset.max_line", "%zu", p.max_line);
    rc |= es__fwriter_metaf(w, "dataset.bad_lines", "%llu", (unsigned long long)c->bad);
    rc |= es__fwriter_meta(w, "dataset.bad_report", c->report);
    const char *ln = es__reader_label_name(r);
    if (ln) rc |= es__fwriter_meta(w, "dataset.label_name", ln);
    char key[48];
    for (int i = 0; i < es_reader_n_dense(r); i++) {
        snprintf(key, sizeof key, "dataset.dense.%d", i);
        rc |= es__fwriter_meta(w, key, es_reader_dense_name(r, i));
    }
    for (int i = 0; i < es_reader_n_fields(r); i++) {
        snprintf(key, sizeof key, "dataset.field.%d", i);
        rc |= es__fwriter_meta(w, key, es_reader_field_name(r, i));
    }
    char *abs = realpath(src, NULL);
    rc |= es__fwriter_meta(w, "dataset.source.path", abs ? abs : src);
    free(abs);
    rc |= es__fwriter_metaf(w, "dataset.source.size", "%llu", (unsigned long long)id->size);
    rc |= es__fwriter_metaf(w, "dataset.source.mtime_ns", "%lld", (long long)id->mtime_ns);
    hex64(buf, sizeof buf, id->head_hash);
    rc |= es__fwriter_meta(w, "dataset.source.head", buf);
    return rc;
}

static int pass_write(es_reader *r, es_batch *b, es_fwriter *w, const int *ti, const esd_counts *c, uint8_t *lab, uint32_t *cnt,
                      uint64_t *rows, uint64_t *vals, es_err *err) {
    const size_t F = (size_t)b->n_fields, D = (size_t)b->n_dense;
    *rows = *vals = 0;
    for (;;) {
        int n = es_reader_next(r, b);
        if (n < 0) return es__err(err, n, "%s", es_reader_errmsg(r));
        if (n == 0) return ES_OK;
        size_t nv = b->off[(size_t)n * F];
        if (*rows + (uint64_t)n > c->rows || *vals + nv > c->vals)
            return es__err(err, ES_EIO, "the file gave more rows on the second pass than on the first (changed while read?)");
        for (int i = 0; i < n; i++) lab[i] = b->label[i] != 0.0f;
        int rc = es__fwriter_append(w, ti[T_LABEL], lab, (size_t)n);
        if (!rc && D) rc = es__fwriter_append(w, ti[T_DENSE], b->dense, (size_t)n * D * sizeof(float));
        if (!rc && ti[T_COUNT] >= 0) {
            for (size_t j = 0; j < (size_t)n * F; j++) cnt[j] = b->off[j + 1] - b->off[j];
            rc = es__fwriter_append(w, ti[T_COUNT], cnt, (size_t)n * F * sizeof(uint32_t));
        }
        if (!rc && nv) rc = es__fwriter_append(w, ti[T_KEY], b->val, nv * sizeof(uint64_t));
        if (!rc && nv && ti[T_WEIGHT] >= 0) rc = es__fwriter_append(w, ti[T_WEIGHT], b->wt, nv * sizeof(float));
        if (rc) return es__err(err, rc, "%s", es__fwriter_errmsg(w));
        *rows += (uint64_t)n;
        *vals += nv;
    }
}

int es_dataset_convert(const char *src, const es_reader_params *p, const char *dst, es_dataset_info *info, es_err *err) {
    if (info) memset(info, 0, sizeof *info);
    if (!src || !dst) return es__err(err, ES_EINVAL, "es_dataset_convert: NULL path");
    es__file_id id;
    int rc = es__file_id_get(src, 1, &id, err);
    if (rc) return rc;
    if (es__esd_sniff_path(src)) return es__err(err, ES_EINVAL, "%s: already a dataset cache", src);
    es_reader *r = NULL;
    es_batch b = {0};
    es_fwriter *w = NULL;
    uint8_t *lab = NULL;
    uint32_t *cnt = NULL;
    double t0 = es__now();
    if ((rc = es_reader_open(&r, src, p, err))) return rc;
    const int D = es_reader_n_dense(r), F = es_reader_n_fields(r);
    if ((rc = es_batch_alloc(&b, ESD_CONVERT_BATCH, D, F, 0))) {
        rc = es__err(err, rc, "%s: out of memory for a batch", src);
        goto done;
    }
    esd_counts c;
    if ((rc = pass_count(r, &b, &c, err))) goto done;
    /* the bad lines of the pass (a rewind clears the reader's count) */
    c.bad = es_reader_bad_lines(r);
    snprintf(c.report, sizeof c.report, "%s", es_reader_bad_report(r));
    if ((rc = es__file_id_recheck(src, &id, "after counting rows", err))) goto done;
    if ((rc = es_reader_rewind(r))) {
        rc = es__err(err, rc, "%s", es_reader_errmsg(r));
        goto done;
    }
    lab = es__malloc(ESD_CONVERT_BATCH);
    cnt = es__malloc((size_t)ESD_CONVERT_BATCH * (size_t)(F ? F : 1) * sizeof *cnt);
    if (!lab || !cnt) {
        rc = es__err(err, ES_ENOMEM, "%s: out of memory", src);
        goto done;
    }
    if ((rc = es__fwriter_open(&w, dst, err))) goto done;
    if (write_meta(w, r, src, &id, &c)) {
        rc = es__err(err, ES_EINVAL, "%s", es__fwriter_errmsg(w));
        goto done;
    }
    int ti[T_N] = {-1, -1, -1, -1, -1}, k = 0;
    es_tensor_ref t;
    es__tensor_ref_set(&t, "label", ES_DT_U8, NULL, 1, c.rows);
    es__fwriter_tensor_stream(w, &t), ti[T_LABEL] = k++;
    es__tensor_ref_set(&t, "dense", ES_DT_F32, NULL, 2, c.rows, (uint64_t)D);
    es__fwriter_tensor_stream(w, &t), ti[T_DENSE] = k++;
    if (!c.one_per_field) {
        es__tensor_ref_set(&t, "count", ES_DT_U32, NULL, 2, c.rows, (uint64_t)F);
        es__fwriter_tensor_stream(w, &t), ti[T_COUNT] = k++;
    }
    es__tensor_ref_set(&t, "key", ES_DT_U64, NULL, 1, c.vals);
    es__fwriter_tensor_stream(w, &t), ti[T_KEY] = k++;
    if (!c.unit_weights) {
        es__tensor_ref_set(&t, "weight", ES_DT_F32, NULL, 1, c.vals);
        es__fwriter_tensor_stream(w, &t), ti[T_WEIGHT] = k++;
    }
    if ((rc = es__fwriter_begin(w))) {
        rc = es__err(err, rc, "%s", es__fwriter_errmsg(w));
        goto done;
    }
    uint64_t rows2, vals2;
    if ((rc = pass_write(r, &b, w, ti, &c, lab, cnt, &rows2, &vals2, err))) goto done;
    if (rows2 != c.rows || vals2 != c.vals) {
        rc = es__err(err, ES_EIO, "%s: the second pass read %llu rows, the first %llu (the file changed while it was read?)", src,
                     (unsigned long long)rows2, (unsigned long long)c.rows);
        goto done;
    }
    if ((rc = es__file_id_recheck(src, &id, "while writing the cache", err))) goto done;
    rc = es__fwriter_commit(w, err);
    w = NULL;
    if (!rc && info) {
        info->rows = c.rows;
        info->values = c.vals;
        info->bad_lines = c.bad;
        info->n_dense = D;
        info->n_fields = F;
        info->seconds = es__now() - t0;
        es__file_id out;
        if (es__file_id_get(dst, 0, &out, NULL) == ES_OK) info->bytes = out.size;
    }
done:
    es__fwriter_abort(w);
    es__free(lab);
    es__free(cnt);
    es_batch_free(&b);
    es_reader_free(r);
    return rc;
}

int es_dataset_cache(const char *src, const es_reader_params *p, const char *cache, es_dataset_info *info, es_err *err) {
    if (info) memset(info, 0, sizeof *info);
    if (!src || !cache) return es__err(err, ES_EINVAL, "es_dataset_cache: NULL path");
    es__file_id cid;
    if (es__file_id_get(cache, 0, &cid, NULL) == ES_OK) {
        /* 1. what it is a cache of (header only): another file is an error,
         *    a changed source a rebuild */
        es_file *f = NULL;
        es_err fe = {0};
        int rc = es__file_open(&f, cache, ES_FILE_MAP | ES_FILE_NO_VERIFY, &fe);
        if (rc)
            return es__err(err, rc, "%s (the --cache file is not a readable dataset cache; delete it to rebuild it)", fe.msg);
        const char *t = es__file_meta(f, "embstore.type");
        const char *was = es__file_meta(f, "dataset.source.path");
        char *abs = realpath(src, NULL);
        bool is_ds = t && strcmp(t, "dataset") == 0, same = was && abs && strcmp(was, abs) == 0;
        free(abs);
        if (!is_ds || !same) {
            rc = is_ds ? es__err(err, ES_EINVAL, "%s: a dataset cache of another file (%s), not of %s; choose another cache path",
                                 cache, was ? was : "(unknown)", src)
                       : es__err(err, ES_EINVAL, "%s: an embstore %s file, not a dataset cache; choose another cache path", cache,
                                 t ? t : "(untyped)");
            es__file_close(f);
            return rc;
        }
        rc = check_source(f, cache, NULL);
        es__file_close(f);
        if (rc == ES_OK) {
            /* 2. fresh: a full open verifies every checksum and the options */
            es_reader_params q = p ? *p : es_reader_params_default();
            es_reader *r = NULL;
            if ((rc = es__reader_open_esd(&r, cache, &q, 1, err)) != ES_OK) return rc;
            if (info) {
                info->rows = r->esd->rows;
                info->values = r->esd->vals;
                info->bad_lines = r->esd->bad_lines;
                info->n_dense = r->n_dense;
                info->n_fields = r->n_fields;
                info->bytes = cid.size;
            }
            es_reader_free(r);
            return ES_OK;
        }
        if (info) info->stale = 1; /* rebuilt below (documented: --cache rebuilds a stale cache) */
    }
    int st = info ? info->stale : 0;
    int rc = es_dataset_convert(src, p, cache, info, err);
    if (info) {
        info->built = rc == ES_OK;
        info->stale = st;
    }
    return rc;
}

/* ---- rows kept in memory by a text reader (es__reader_keep_rows) ----------
 *
 * The same columns as a cache file (label u8, dense, count only once a row
 * has other than one value per field, key, weight only once a weight is
 * not 1), grown by doubling while a pass reads the text.  When the pass is
 * whole, es__esd_from_keep hands the arrays to an es__esd, and the reader
 * serves later passes through es__esd_next: the batches a cache file of
 * the same text gives, which are the text's (tests/test_esd.c). */
enum { KEEP_REC, KEEP_DONE, KEEP_OFF, KEEP_DEAD };

struct es__keep {
    uint64_t need;   /* a pass that has handed out this many rows is whole */
    int state, D, F;
    int opf, unit;   /* so far: one value per (row, field); every weight 1 */
    uint8_t *label;
    float *dense;
    uint32_t *count; /* NULL while opf */
    uint64_t *key;
    float *weight;   /* NULL while unit */
    uint64_t rows, vals, cap_rows, cap_vals;
};

static void keep_clear(es__keep *k) {
    es__free(k->label), es__free(k->dense), es__free(k->count), es__free(k->key), es__free(k->weight);
    k->label = NULL, k->dense = NULL, k->count = NULL, k->key = NULL, k->weight = NULL;
    k->rows = k->vals = k->cap_rows = k->cap_vals = 0;
    k->opf = k->unit = 1;
}

es__keep *es__keep_new(uint64_t need, int D, int F) {
    es__keep *k = es__calloc(1, sizeof *k);
    if (!k) return NULL;
    k->need = need ? need : UINT64_MAX;
    k->D = D, k->F = F;
    k->opf = k->unit = 1;
    k->state = KEEP_REC;
    return k;
}

void es__keep_free(es__keep *k) {
    if (!k) return;
    keep_clear(k);
    es__free(k);
}

int es__keep_ready(const es__keep *k) { return k && k->state == KEEP_DONE; }

void es__keep_restart(es__keep *k) {
    if (!k || k->state == KEEP_DEAD) return;
    k->rows = k->vals = 0;
    k->opf = k->unit = 1;
    k->state = KEEP_REC;
}

void es__keep_stop(es__keep *k) {
    if (k && k->state == KEEP_REC) k->state = KEEP_OFF;
}

void es__keep_eof(es__keep *k) {
    if (k && k->state == KEEP_REC) k->state = KEEP_DONE;
}

static void keep_die(es__keep *k) {
    keep_clear(k);
    k->state = KEEP_DEAD;
}

/* Grow *p to hold cap elements of sz bytes (0: failed; *p kept). */
static int keep_grow(void **p, uint64_t cap, size_t sz) {
    if (cap > SIZE_MAX / (sz ? sz : 1)) return 0;
    const size_t bytes = (size_t)cap * sz;
    void *q = es__realloc_grow(*p, bytes ? bytes : 1);
    if (!q) return 0;
    *p = q;
    return 1;
}

static uint64_t keep_cap(uint64_t have, uint64_t need) {
    uint64_t c = have ? have : 4096;
    while (c < need) c = c > UINT64_MAX / 2 ? need : c * 2;
    return c;
}

void es__keep_add(es__keep *k, const es_batch *b) {
    if (!k || k->state != KEEP_REC || b->n <= 0) return;
    /* no row past `need`: the reader's caller reads no more a pass */
    const size_t n = (size_t)ES_MIN((uint64_t)b->n, k->need - k->rows), D = (size_t)k->D, F = (size_t)k->F, nv = b->off[n * F];
    /* what a cache cannot hold exactly (es__esd_next refuses it): the
     * reader goes on parsing every pass */
    for (size_t i = 0; i < n; i++)
        if (!(b->label[i] == 0.0f || b->label[i] == 1.0f) || signbit(b->label[i])) return keep_die(k);
    if (D && !es__esd_all_finite(b->dense, n * D)) return keep_die(k);
    if (!es__esd_all_finite(b->wt, nv)) return keep_die(k);
    int opf = 1, unit = 1;
    batch_layout(b, n, &opf, &unit);
    const uint64_t R = k->rows + n, V = k->vals + nv;
    if (R > k->cap_rows || (k->opf && !opf)) {
        const uint64_t c = R > k->cap_rows ? keep_cap(k->cap_rows, R) : k->cap_rows;
        if (!keep_grow((void **)&k->label, c, 1) || (D && !keep_grow((void **)&k->dense, c, D * sizeof(float))) ||
            ((!k->opf || !opf) && !keep_grow((void **)&k->count, c, F * sizeof(uint32_t))))
            return keep_die(k);
        if (k->opf && !opf) { /* the rows so far had one value per field */
            for (uint64_t j = 0; j < k->rows * F; j++) k->count[j] = 1;
            k->opf = 0;
        }
        k->cap_rows = c;
    }
    if (V > k->cap_vals || (k->unit && !unit)) {
        const uint64_t c = V > k->cap_vals ? keep_cap(k->cap_vals, V) : k->cap_vals;
        if (!keep_grow((void **)&k->key, c, sizeof(uint64_t)) || ((!k->unit || !unit) && !keep_grow((void **)&k->weight, c, sizeof(float))))
            return keep_die(k);
        if (k->unit && !unit) { /* the values so far had weight 1 */
            for (uint64_t j = 0; j < k->vals; j++) k->weight[j] = 1.0f;
            k->unit = 0;
        }
        k->cap_vals = c;
    }
    for (size_t i = 0; i < n; i++) k->label[k->rows + i] = (uint8_t)(b->label[i] != 0.0f);
    if (D) memcpy(k->dense + k->rows * D, b->dense, n * D * sizeof(float));
    if (!k->opf)
        for (size_t j = 0; j < n * F; j++) k->count[k->rows * F + j] = b->off[j + 1] - b->off[j];
    memcpy(k->key + k->vals, b->val, nv * sizeof(uint64_t));
    if (!k->unit) memcpy(k->weight + k->vals, b->wt, nv * sizeof(float));
    k->rows = R, k->vals = V;
    if (k->rows >= k->need) k->state = KEEP_DONE;
}

uint64_t es__keep_bytes(const es__keep *k) {
    if (!k) return 0;
    return k->rows * (1 + 4 * (uint64_t)k->D + (k->opf ? 0 : 4 * (uint64_t)k->F)) + k->vals * (8 + (k->unit ? 0 : 4));
}

/* Shrink an array to n elements (it was grown by doubling); on failure it
 * stays as it is. */
static void *keep_fit(void *p, uint64_t n, size_t sz) {
    if (!p) return NULL;
    const size_t bytes = (size_t)n * sz;
    void *q = es__realloc_grow(p, bytes ? bytes : 1);
    return q ? q : p;
}

int es__esd_from_keep(es_reader *r, es__keep *k, const char *name, const char *label_name, uint64_t bad, const char *report, es_err *err) {
    if (!es__keep_ready(k) || k->rows == 0) return es__err(err, ES_EINVAL, "es__esd_from_keep: no whole pass kept");
    es__esd *e = es__calloc(1, sizeof *e);
    if (!e || !(e->name = es__strdup(name)) || !(e->bad_report = es__strdup(report ? report : "")) ||
        (label_name && !(e->label_name = es__strdup(label_name)))) {
        es__esd_free(e);
        return es__err(err, ES_ENOMEM, "%s: out of memory", name);
    }
    const size_t D = (size_t)k->D, F = (size_t)k->F;
    if (k->opf) { /* arrays an earlier, unfinished pass grew: not this pass's */
        es__free(k->count);
        k->count = NULL;
    }
    if (k->unit) {
        es__free(k->weight);
        k->weight = NULL;
    }
    e->own[0] = keep_fit(k->label, k->rows, 1);
    e->own[1] = keep_fit(k->dense, k->rows, D * sizeof(float));
    e->own[2] = keep_fit(k->count, k->rows, F * sizeof(uint32_t));
    e->own[3] = keep_fit(k->key, k->vals, sizeof(uint64_t));
    e->own[4] = keep_fit(k->weight, k->vals, sizeof(float));
    e->label = e->own[0], e->dense = e->own[1], e->count = e->own[2], e->key = e->own[3], e->weight = e->own[4];
    e->rows = k->rows, e->vals = k->vals;
    e->bad_lines = bad;
    k->label = NULL, k->dense = NULL, k->count = NULL, k->key = NULL, k->weight = NULL;
    r->esd = e;
    return ES_OK;
}
