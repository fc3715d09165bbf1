/*
 * vecio.c — vector file readers and writers for the index layer.
 *
 * Formats (docs/retrieval.md has the details):
 *   .fvecs/.bvecs/.ivecs  texmex: per record an int32 dimension d, then d
 *                         float32 / uint8 / int32 values, little-endian;
 *   raw float32           rows of `dim` floats, no header;
 *   text                  one vector per line: an optional label, then the
 *                         values, separated by spaces or tabs (GloVe,
 *                         word2vec text; a word2vec "rows dim" header line
 *                         is recognised and skipped; blank lines and lines
 *                         starting with '#' are ignored);
 *   tensor                one f32 2-D tensor of an embstore container.
 * Vector sets (multi-vector documents) group rows: consecutive text rows
 * sharing a label, or fixed-size runs of rows.
 *
 * Files are mapped and parsed in memory (es__vecs_parse, which the fuzz
 * targets call directly).  Every count and size read from a file is checked
 * against the bytes present and against ES_IX_MAX_DIM; values must be
 * finite.  Messages name the file and the record or line.
 */
#include "index.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

es_vec_read_params es_vec_read_params_default(void) {
    es_vec_read_params p;
    memset(&p, 0, sizeof p);
    p.format = ES_VEC_AUTO;
    return p;
}

void es_vecs_free(es_vecs *v) {
    if (!v) return;
    es__free_aligned(v->x);
    es__free(v->i);
    es__free(v->labels);
    es__free(v->priv_);
    es__free(v->set_off);
    memset(v, 0, sizeof *v);
}

/* ---- texmex ------------------------------------------------------------------------------ */
static int parse_texmex(es_vecs *out, const unsigned char *buf, size_t len, const char *name, es_vec_format fmt,
                        const es_vec_read_params *p, es_err *err) {
    size_t esz = fmt == ES_VEC_BVECS ? 1 : 4;
    if (len == 0) return es__err(err, ES_EPARSE, "%s: empty file", name);
    if (len < 4) return es__err(err, ES_EPARSE, "%s: truncated: %zu bytes, a record needs at least 4", name, len);
    int32_t d;
    memcpy(&d, buf, 4);
    if (d < 1 || d > ES_IX_MAX_DIM)
        return es__err(err, ES_EPARSE, "%s: record 0 declares dimension %d (must be 1..%d)", name, (int)d, ES_IX_MAX_DIM);
    if (p->dim > 0 && d != p->dim)
        return es__err(err, ES_EINVAL, "%s: dimension %d, expected %d", name, (int)d, p->dim);
    size_t rec = 4 + (size_t)d * esz;
    if (len % rec != 0)
        return es__err(err, ES_EPARSE,
                       "%s: truncated: %zu bytes is not a whole number of %zu-byte records (dimension %d); "
                       "record %zu is incomplete",
                       name, len, rec, (int)d, len / rec);
    size_t n = len / rec;
    if (p->max_rows && n > p->max_rows) n = p->max_rows;
    size_t cnt;
    if (!es__mul_size(n, (size_t)d, &cnt)) return es__err(err, ES_ERANGE, "%s: too large", name);
    if (fmt == ES_VEC_IVECS) {
        out->i = es__malloc(cnt * sizeof(int32_t));
        if (!out->i) return es__err(err, ES_ENOMEM, "%s: out of memory for %zu x %d values", name, n, (int)d);
    } else {
        out->x = es__alloc_aligned(cnt * sizeof(float));
        if (!out->x) return es__err(err, ES_ENOMEM, "%s: out of memory for %zu x %d values", name, n, (int)d);
    }
    for (size_t r = 0; r < n; r++) {
        const unsigned char *rp = buf + r * rec;
        int32_t dr;
        memcpy(&dr, rp, 4);
        if (dr != d)
            return es__err(err, ES_EPARSE, "%s: record %zu declares dimension %d, the first record %d", name, r,
                           (int)dr, (int)d);
        if (fmt == ES_VEC_IVECS) {
            memcpy(out->i + r * (size_t)d, rp + 4, (size_t)d * 4);
        } else if (fmt == ES_VEC_BVECS) {
            float *xr = out->x + r * (size_t)d;
            for (int32_t j = 0; j < d; j++) xr[j] = (float)rp[4 + j];
        } else {
            float *xr = out->x + r * (size_t)d;
            memcpy(xr, rp + 4, (size_t)d * 4);
            for (int32_t j = 0; j < d; j++)
                if (!isfinite(xr[j]))
                    return es__err(err, ES_EPARSE, "%s: record %zu, component %d is %s", name, r, (int)j,
                                   isnan(xr[j]) ? "NaN" : "infinite");
        }
    }
    out->n = n;
    out->dim = d;
    return ES_OK;
}

static int parse_raw(es_vecs *out, const unsigned char *buf, size_t len, const char *name, const es_vec_read_params *p,
                     es_err *err) {
    if (p->dim < 1 || p->dim > ES_IX_MAX_DIM)
        return es__err(err, ES_EINVAL, "%s: raw float32 vectors need a dimension in [1, %d] (--dim)", name, ES_IX_MAX_DIM);
    if (len == 0) return es__err(err, ES_EPARSE, "%s: empty file", name);
    size_t row = (size_t)p->dim * 4;
    if (len % row)
        return es__err(err, ES_EPARSE, "%s: truncated: %zu bytes is not a whole number of %d-float rows (%zu bytes)", name,
                       len, p->dim, row);
    size_t n = len / row;
    if (p->max_rows && n > p->max_rows) n = p->max_rows;
    out->x = es__alloc_aligned(n * row);
    if (!out->x) return es__err(err, ES_ENOMEM, "%s: out of memory for %zu x %d values", name, n, p->dim);
    memcpy(out->x, buf, n * row);
    for (size_t r = 0; r < n; r++)
        for (int j = 0; j < p->dim; j++) {
            float v = out->x[r * (size_t)p->dim + (size_t)j];
            if (!isfinite(v))
                return es__err(err, ES_EPARSE, "%s: row %zu, component %d is %s", name, r, j, isnan(v) ? "NaN" : "infinite");
        }
    out->n = n;
    out->dim = p->dim;
    return ES_OK;
}

/* ---- text ---------------------------------------------------------------------------------- */
typedef struct {
    const unsigned char *s, *e; /* line without the newline (and a trailing \r) */
    const unsigned char *next;
} line_t;

static bool next_line(const unsigned char **cur, const unsigned char *end, line_t *l) {
    if (*cur >= end) return false;
    const unsigned char *s = *cur, *nl = memchr(s, '\n', (size_t)(end - s));
    const unsigned char *e = nl ? nl : end;
    l->next = nl ? nl + 1 : end;
    if (e > s && e[-1] == '\r') e--;
    l->s = s;
    l->e = e;
    *cur = l->next;
    return true;
}

static inline bool is_sp(unsigned char c) { return c == ' ' || c == '\t' || c == '\v' || c == '\f'; }

/* Next token in [*p, e): returns its length (0 at end). */
static size_t next_tok(const unsigned char **p, const unsigned char *e, const unsigned char **tok) {
    const unsigned char *q = *p;
    while (q < e && is_sp(*q)) q++;
    const unsigned char *t = q;
    while (q < e && !is_sp(*q)) q++;
    *tok = t;
    *p = q;
    return (size_t)(q - t);
}

static bool parse_float(const unsigned char *t, size_t n, float *out) {
    double v;
    if (!es__parse_double((const char *)t, n, &v)) return false;
    if (!isfinite(v) || fabs(v) > 3.4028234663852886e38) return false;
    *out = (float)v;
    return true;
}

static bool blank_or_comment(const line_t *l) {
    const unsigned char *q = l->s;
    while (q < l->e && is_sp(*q)) q++;
    return q == l->e || *q == '#';
}

static size_t count_toks(const line_t *l) {
    const unsigned char *p = l->s, *t;
    size_t c = 0;
    while (next_tok(&p, l->e, &t)) c++;
    return c;
}

static int parse_text(es_vecs *out, const unsigned char *buf, size_t len, const char *name, const es_vec_read_params *p,
                      es_err *err) {
    const unsigned char *cur = buf, *end = buf + len;
    line_t l;
    size_t lineno = 0, first_line = 0;
    bool found = false;
    while (next_line(&cur, end, &l)) {
        lineno++;
        if (!blank_or_comment(&l)) {
            found = true;
            break;
        }
    }
    if (!found) return es__err(err, ES_EPARSE, "%s: no vectors (empty file or only comments)", name);
    first_line = lineno;
    /* word2vec header "rows dim"? */
    {
        const unsigned char *q = l.s, *t1, *t2, *t3;
        size_t n1 = next_tok(&q, l.e, &t1), n2 = next_tok(&q, l.e, &t2), n3 = next_tok(&q, l.e, &t3);
        long long a, b;
        if (n1 && n2 && !n3 && es__parse_long((const char *)t1, n1, &a) && es__parse_long((const char *)t2, n2, &b) &&
            a >= 0 && b >= 1 && b <= ES_IX_MAX_DIM) {
            const unsigned char *c2 = cur;
            line_t l2;
            size_t skipped = 0;
            bool more = false;
            while (next_line(&c2, end, &l2)) {
                skipped++;
                if (!blank_or_comment(&l2)) {
                    more = true;
                    break;
                }
            }
            if (more && count_toks(&l2) == (size_t)b + 1) {
                l = l2;
                cur = c2;
                lineno += skipped;
                first_line = lineno;
            }
        }
    }
    const unsigned char *q = l.s, *tok;
    size_t tn = next_tok(&q, l.e, &tok);
    float dummy;
    bool labelled = !parse_float(tok, tn, &dummy);
    size_t ntok = count_toks(&l);
    size_t dim = labelled ? ntok - 1 : ntok;
    if (dim < 1) return es__err(err, ES_EPARSE, "%s:%zu: a label but no values", name, first_line);
    if (dim > ES_IX_MAX_DIM) return es__err(err, ES_EPARSE, "%s:%zu: %zu values (max %d)", name, first_line, dim, ES_IX_MAX_DIM);
    if (p->dim > 0 && dim != (size_t)p->dim)
        return es__err(err, ES_EINVAL, "%s:%zu: %zu values, expected dimension %d", name, first_line, dim, p->dim);
    /* Upper bound on rows: lines left. */
    size_t ub = 1;
    for (const unsigned char *c = l.next; c < end;) {
        const unsigned char *nl = memchr(c, '\n', (size_t)(end - c));
        ub++;
        c = nl ? nl + 1 : end;
    }
    if (p->max_rows && ub > p->max_rows) ub = p->max_rows;
    size_t cnt;
    if (!es__mul_size(ub, dim, &cnt) || cnt > SIZE_MAX / 4) return es__err(err, ES_ERANGE, "%s: too large", name);
    /* Rows are checked as they are read, so the array grows in steps
     * (doubling from about 16 MiB) instead of being sized up front as lines
     * x the first row's length: a ragged file whose first row is long must
     * fail on the row that differs, not on an allocation it never needed. */
    size_t cap = ES_MIN(ub, ES_MAX((size_t)1, ((size_t)16 << 20) / (dim * sizeof(float))));
    out->x = es__alloc_aligned(cap * dim * sizeof(float));
    char *blob = NULL;
    size_t blob_n = 0;
    if (labelled) {
        blob = es__malloc((size_t)(end - l.s) + ub + 1);
        out->labels = es__malloc(ub * sizeof(char *));
        out->priv_ = blob;
        if (!blob || !out->labels) return es__err(err, ES_ENOMEM, "%s: out of memory for labels", name);
    }
    if (!out->x) return es__err(err, ES_ENOMEM, "%s: out of memory for %zu x %zu values", name, cap, dim);
    size_t n = 0;
    for (;;) {
        if (!blank_or_comment(&l)) {
            if (n == ub) break;
            if (n == cap) {
                size_t nc = ES_MIN(ub, 2 * cap);
                float *nx = es__alloc_aligned(nc * dim * sizeof(float));
                if (!nx) return es__err(err, ES_ENOMEM, "%s:%zu: out of memory for %zu x %zu values", name, lineno, nc, dim);
                memcpy(nx, out->x, n * dim * sizeof(float));
                es__free_aligned(out->x);
                out->x = nx;
                cap = nc;
            }
            const unsigned char *pp = l.s, *t;
            size_t nt;
            if (labelled) {
                nt = next_tok(&pp, l.e, &t);
                memcpy(blob + blob_n, t, nt);
                blob[blob_n + nt] = 0;
                out->labels[n] = blob + blob_n; /* the blob never moves */
                blob_n += nt + 1;
            }
            float *xr = out->x + n * dim;
            size_t j = 0;
            while ((nt = next_tok(&pp, l.e, &t)) > 0) {
                if (j == dim) {
                    j++;
                    break;
                }
                if (!parse_float(t, nt, &xr[j]))
                    return es__err(err, ES_EPARSE, "%s:%zu: value %zu '%.*s' is not a finite number", name, lineno, j + 1,
                                   (int)ES_MIN(nt, (size_t)40), (const char *)t);
                j++;
            }
            if (j != dim) {
                size_t have = labelled ? count_toks(&l) - 1 : count_toks(&l);
                return es__err(err, ES_EPARSE, "%s:%zu: %zu values, the first vector (line %zu) has %zu", name, lineno,
                               have, first_line, dim);
            }
            n++;
        }
        if (!next_line(&cur, end, &l)) break;
        lineno++;
    }
    out->n = n;
    out->dim = (int)dim;
    return ES_OK;
}

/* ---- sets --------------------------------------------------------------------------------------- */
typedef struct {
    const char *s;
    size_t set;
} lab_t;
static int cmp_lab(const void *a, const void *b) {
    const lab_t *x = a, *y = b;
    int c = strcmp(x->s, y->s);
    return c ? c : (x->set > y->set) - (x->set < y->set);
}

static int group_sets(es_vecs *v, const char *name, const es_vec_read_params *p, es_err *err) {
    if (p->set_size < 0) return es__err(err, ES_EINVAL, "%s: set size must be >= 0", name);
    if (p->set_size > 0) {
        size_t g = (size_t)p->set_size, ns = (v->n + g - 1) / g;
        v->set_off = es__malloc((ns + 1) * sizeof(size_t));
        if (!v->set_off) return es__err(err, ES_ENOMEM, "%s: out of memory", name);
        for (size_t s = 0; s <= ns; s++) v->set_off[s] = ES_MIN(s * g, v->n);
        v->n_sets = ns;
        return ES_OK;
    }
    if (!p->sets_by_label) return ES_OK;
    if (!v->labels)
        return es__err(err, ES_EINVAL, "%s: vector sets by label need a labelled text file (label v1 .. vd per line)", name);
    size_t ns = 0;
    for (size_t i = 0; i < v->n; i++)
        if (i == 0 || strcmp(v->labels[i], v->labels[i - 1])) ns++;
    v->set_off = es__malloc((ns + 1) * sizeof(size_t));
    lab_t *lab = es__malloc((ns ? ns : 1) * sizeof *lab);
    if (!v->set_off || !lab) {
        es__free(lab);
        return es__err(err, ES_ENOMEM, "%s: out of memory", name);
    }
    size_t s = 0;
    for (size_t i = 0; i < v->n; i++)
        if (i == 0 || strcmp(v->labels[i], v->labels[i - 1])) {
            lab[s] = (lab_t){v->labels[i], s};
            v->set_off[s++] = i;
        }
    v->set_off[ns] = v->n;
    v->n_sets = ns;
    qsort(lab, ns, sizeof *lab, cmp_lab);
    for (size_t i = 1; i < ns; i++)
        if (!strcmp(lab[i].s, lab[i - 1].s)) {
            int rc = es__err(err, ES_EPARSE,
                             "%s: set '%.60s' appears as sets %zu and %zu: rows of one set must be consecutive", name,
                             lab[i].s, lab[i - 1].set, lab[i].set);
            es__free(lab);
            return rc;
        }
    es__free(lab);
    return ES_OK;
}

static int parse_any(es_vecs *out, const unsigned char *buf, size_t len, const char *name, const es_vec_read_params *p,
                     es_err *err) {
    switch (p->format) {
    case ES_VEC_FVECS:
    case ES_VEC_BVECS:
    case ES_VEC_IVECS: return parse_texmex(out, buf, len, name, p->format, p, err);
    case ES_VEC_RAW_F32: return parse_raw(out, buf, len, name, p, err);
    case ES_VEC_TEXT: return parse_text(out, buf, len, name, p, err);
    default: return es__err(err, ES_EINVAL, "%s: this format cannot be parsed from memory", name);
    }
}

int es__vecs_parse(es_vecs *out, const unsigned char *buf, size_t len, const char *name, const es_vec_read_params *p,
                   es_err *err) {
    memset(out, 0, sizeof *out);
    int rc = parse_any(out, buf, len, name, p, err);
    if (!rc) rc = group_sets(out, name, p, err);
    if (rc) es_vecs_free(out);
    return rc;
}

/* ---- files --------------------------------------------------------------------------------------- */
static bool ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && strcasecmp(s + a - b, suf) == 0;
}

static es_vec_format guess_format(const char *path) {
    static const struct {
        const char *ext;
        es_vec_format f;
    } map[] = {{".fvecs", ES_VEC_FVECS}, {".bvecs", ES_VEC_BVECS}, {".ivecs", ES_VEC_IVECS},  {".txt", ES_VEC_TEXT},
               {".vec", ES_VEC_TEXT},    {".text", ES_VEC_TEXT},   {".tsv", ES_VEC_TEXT},     {".f32", ES_VEC_RAW_F32},
               {".raw", ES_VEC_RAW_F32}, {".bin", ES_VEC_RAW_F32}, {".es", ES_VEC_TENSOR},    {".embstore", ES_VEC_TENSOR},
               {".model", ES_VEC_TENSOR}, {".esm", ES_VEC_TENSOR}, {".esi", ES_VEC_TENSOR}};
    for (size_t i = 0; i < ES_ARRAY_LEN(map); i++)
        if (ends_with(path, map[i].ext)) return map[i].f;
    return ES_VEC_AUTO;
}

static int read_tensor(es_vecs *out, const char *path, const es_vec_read_params *p, es_err *err) {
    es_file *f = NULL;
    es_err e = {0};
    int rc = es__file_open(&f, path, 0, &e);
    if (rc) return es__err(err, rc, "%s", e.msg);
    const es_tensor_ref *t = p->tensor ? es__file_tensor(f, p->tensor) : NULL;
    if (!t || t->dtype != ES_DT_F32 || t->ndim != 2) {
        char list[256] = "";
        size_t used = 0;
        for (int i = 0; i < es__file_n_tensors(f) && used + 70 < sizeof list; i++) {
            const es_tensor_ref *c = es__file_tensor_at(f, i);
            if (c->dtype == ES_DT_F32 && c->ndim == 2)
                used += (size_t)snprintf(list + used, sizeof list - used, "%s%s", used ? ", " : "", c->name);
        }
        rc = es__err(err, ES_ENOTFOUND, "%s: %s%s%s; f32 2-D tensors here: %s", path, p->tensor ? "tensor '" : "no tensor named",
                     p->tensor ? p->tensor : " (--model-tensor)", p->tensor ? (t ? "' is not f32 2-D" : "' not found") : "",
                     used ? list : "none");
        es__file_close(f);
        return rc;
    }
    uint64_t n = t->shape[0], d = t->shape[1];
    if (d < 1 || d > ES_IX_MAX_DIM || n > ES_IX_MAX_N || t->nbytes != (size_t)(n * d * 4)) {
        es__file_close(f);
        return es__err(err, ES_EFORMAT, "%s: tensor '%s' has shape %llu x %llu", path, p->tensor, (unsigned long long)n,
                       (unsigned long long)d);
    }
    if (p->max_rows && n > p->max_rows) n = p->max_rows;
    if (p->dim > 0 && d != (uint64_t)p->dim) {
        es__file_close(f);
        return es__err(err, ES_EINVAL, "%s: tensor '%s' has dimension %llu, expected %d", path, p->tensor,
                       (unsigned long long)d, p->dim);
    }
    out->x = es__alloc_aligned((size_t)(n * d) * sizeof(float));
    if (!out->x) {
        es__file_close(f);
        return es__err(err, ES_ENOMEM, "%s: out of memory", path);
    }
    if (n) memcpy(out->x, t->data, (size_t)(n * d) * sizeof(float));
    es__file_close(f);
    out->n = (size_t)n;
    out->dim = (int)d;
    es_err fe = {0};
    if ((rc = es__check_finite(out->x, out->n, out->dim, "tensor rows", &fe)))
        return es__err(err, ES_EPARSE, "%s: %s: %s", path, p->tensor, fe.msg);
    return ES_OK;
}

static int read_one(es_vecs *out, const char *path, const es_vec_read_params *p, es_err *err) {
    memset(out, 0, sizeof *out);
    es_vec_read_params q = *p;
    q.set_size = 0;
    q.sets_by_label = 0;
    if (q.format == ES_VEC_AUTO) {
        q.format = guess_format(path);
        if (q.format == ES_VEC_AUTO)
            return es__err(err, ES_EINVAL,
                           "%s: cannot tell the format from the extension (use .fvecs .bvecs .ivecs .txt .f32 or give the "
                           "format)",
                           path);
    }
    if (q.format == ES_VEC_TENSOR) return read_tensor(out, path, &q, err);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return es__err(err, ES_EIO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int en = errno;
        close(fd);
        return es__err(err, ES_EIO, "%s: cannot stat: %s", path, strerror(en));
    }
    unsigned char *buf = NULL;
    size_t len = 0;
    bool mapped = false;
    int rc = ES_OK;
    if (S_ISREG(st.st_mode)) {
        len = (size_t)st.st_size;
        if (len > 0) {
            void *m = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
            if (m == MAP_FAILED) rc = es__err(err, ES_EIO, "%s: cannot map: %s", path, strerror(errno));
            else buf = m, mapped = true;
        }
    } else {
        /* Pipes and devices: read everything. */
        size_t cap = 0;
        for (;;) {
            if (len == cap) {
                size_t nc = cap ? 2 * cap : 65536;
                unsigned char *nb = es__realloc(buf, nc);
                if (!nb) {
                    rc = es__err(err, ES_ENOMEM, "%s: out of memory", path);
                    break;
                }
                buf = nb;
                cap = nc;
            }
            ssize_t r = read(fd, buf + len, cap - len);
            if (r < 0 && errno == EINTR) continue;
            if (r < 0) {
                rc = es__err(err, ES_EIO, "%s: read failed: %s", path, strerror(errno));
                break;
            }
            if (r == 0) break;
            len += (size_t)r;
        }
    }
    close(fd);
    if (!rc) rc = parse_any(out, buf ? buf : (const unsigned char *)"", len, path, &q, err);
    if (mapped) munmap(buf, len);
    else es__free(buf);
    if (rc) es_vecs_free(out);
    return rc;
}

int es_vecs_read(es_vecs *out, const char *path, const es_vec_read_params *p, es_err *err) {
    return es_vecs_read_many(out, &path, 1, p, err);
}

int es_vecs_read_many(es_vecs *out, const char *const *paths, int n_paths, const es_vec_read_params *pin,
                      es_err *err) {
    if (!out || !paths || n_paths < 1) return es__err(err, ES_EINVAL, "vectors: no input files");
    memset(out, 0, sizeof *out);
    es_vec_read_params p = pin ? *pin : es_vec_read_params_default();
    int rc = read_one(out, paths[0], &p, err);
    if (rc) return rc;
    for (int f = 1; f < n_paths; f++) {
        es_vec_read_params q = p;
        if (q.max_rows) {
            if (out->n >= q.max_rows) break;
            q.max_rows -= out->n;
        }
        q.dim = out->dim;
        es_vecs more;
        if ((rc = read_one(&more, paths[f], &q, err))) goto fail;
        if ((out->x == NULL) != (more.x == NULL) || (out->labels == NULL) != (more.labels == NULL)) {
            es_vecs_free(&more);
            rc = es__err(err, ES_EINVAL, "%s: not the same kind of file as %s", paths[f], paths[0]);
            goto fail;
        }
        size_t tot = out->n + more.n, d = (size_t)out->dim;
        if (out->x) {
            float *nx = es__alloc_aligned(tot * d * sizeof(float));
            if (!nx) goto oom_more;
            memcpy(nx, out->x, out->n * d * sizeof(float));
            memcpy(nx + out->n * d, more.x, more.n * d * sizeof(float));
            es__free_aligned(out->x);
            out->x = nx;
        } else {
            int32_t *ni = es__malloc(tot * d * sizeof(int32_t));
            if (!ni) goto oom_more;
            memcpy(ni, out->i, out->n * d * sizeof(int32_t));
            memcpy(ni + out->n * d, more.i, more.n * d * sizeof(int32_t));
            es__free(out->i);
            out->i = ni;
        }
        if (out->labels) {
            /* New blob holding both label sets. */
            size_t bl = 0;
            for (size_t i = 0; i < out->n; i++) bl += strlen(out->labels[i]) + 1;
            for (size_t i = 0; i < more.n; i++) bl += strlen(more.labels[i]) + 1;
            char *blob = es__malloc(bl ? bl : 1);
            char **lab = es__malloc(tot * sizeof(char *));
            if (!blob || !lab) {
                es__free(blob);
                es__free(lab);
                goto oom_more;
            }
            size_t o = 0;
            for (size_t i = 0; i < tot; i++) {
                const char *s = i < out->n ? out->labels[i] : more.labels[i - out->n];
                size_t l = strlen(s) + 1;
                memcpy(blob + o, s, l);
                lab[i] = blob + o;
                o += l;
            }
            es__free(out->labels);
            es__free(out->priv_);
            out->labels = lab;
            out->priv_ = blob;
        }
        out->n = tot;
        es_vecs_free(&more);
        continue;
    oom_more:
        es_vecs_free(&more);
        rc = es__err(err, ES_ENOMEM, "%s: out of memory", paths[f]);
        goto fail;
    }
    if ((rc = group_sets(out, paths[0], &p, err))) goto fail;
    return ES_OK;
fail:
    es_vecs_free(out);
    return rc;
}

static int write_texmex(const char *path, size_t n, int dim, const void *x, es_err *err) {
    if (dim < 1) return es__err(err, ES_EINVAL, "%s: dimension must be >= 1", path);
    es_afile a;
    int rc = es__afile_open(&a, path, err);
    if (rc) return rc;
    int32_t d = dim;
    const unsigned char *p = x;
    for (size_t i = 0; i < n; i++) {
        if (fwrite(&d, 4, 1, a.fp) != 1 || fwrite(p + i * (size_t)dim * 4, 4, (size_t)dim, a.fp) != (size_t)dim) {
            es__afile_abort(&a);
            return es__err(err, ES_EIO, "%s: write failed: %s", path, strerror(errno));
        }
    }
    return es__afile_commit(&a, err);
}

int es_fvecs_write(const char *path, size_t n, int dim, const float *x, es_err *err) {
    return write_texmex(path, n, dim, x, err);
}
int es_ivecs_write(const char *path, size_t n, int dim, const int32_t *x, es_err *err) {
    return write_texmex(path, n, dim, x, err);
}
