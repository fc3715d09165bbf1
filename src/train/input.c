/*
 * input.c — reading a file for eval and predict the way the model was
 * trained, and saying what is wrong when a file does not fit.
 *
 * A model fixes the order of its fields and numeric features at training
 * time; a reader numbers them in the order of the file's columns.  For a
 * CSV file with a header the two are matched by name, so a file with the
 * same columns in another order (or with extra columns) gives the same
 * predictions as the training layout:
 *   - the reader is opened with the model's column spec (or, for a model
 *     trained without one, a spec built from the recorded label and field
 *     names: schema.label, schema.fields), so every column is found by its
 *     name, and a missing one is an error that names it;
 *   - the fields are then renumbered to the model's order (schema.fields,
 *     schema.dense) when the names are the model's;
 *   - a caller's own spec (es_model_set_reader_params) is matched by name
 *     when its names are the model's, else in the order of its entries.
 * Header-less files, specs by column index and models without recorded
 * names are read by position, as before.  libffm files are read with the
 * model's field count, so a file that lacks the highest field reads.
 */
#include "model.h"

#include "data/reader_impl.h"
#include "data/schema.h"

#include <stdbool.h>

int es_model_set_reader_params(es_model *m, const es_reader_params *rp) {
    if (!m) return ES_EINVAL;
    char *cols = NULL;
    if (rp && rp->columns && !(cols = es__strdup(rp->columns))) return es__err(&m->err, ES_ENOMEM, "out of memory");
    es__free(m->in_columns);
    m->in_columns = cols;
    m->in_set = rp != NULL;
    es__model_mem_input_drop(m);
    if (rp) {
        m->in_rp = *rp;
        m->in_rp.columns = cols;
    }
    return ES_OK;
}

const char *es_model_input_note(const es_model *m) { return m ? m->note : ""; }

int es__reader_require_fields(const es_reader *r, const char *path, es_err *err) {
    if (es_reader_n_fields(r) > 0) return ES_OK;
    return es__err(err, ES_EINVAL,
                   "%s: no categorical column in the column spec/header: a model needs at least one; mark one with :cat "
                   "(or :multi) in --columns, e.g. --columns 'label:label,user:cat'",
                   path);
}

static bool same_str(const char *a, const char *b) {
    if (!a || !*a) return !b || !*b;
    return b && strcmp(a, b) == 0;
}

/* The names a model recorded: fields[n_fields] and dense[n_dense], split
 * from the comma-joined schema.fields / schema.dense.  ok = false when they
 * are absent or do not split into exactly those counts of non-empty names
 * (names with commas, or a list cut at save time): then files are read by
 * position. */
typedef struct {
    char *buf;
    const char **fields, **dense;
    bool ok;
} model_names;

static void names_free(model_names *nm) {
    es__free(nm->buf);
    es__free(nm->fields);
    memset(nm, 0, sizeof *nm);
}

static bool split_into(char *s, int n, const char **out) {
    if (n == 0) return *s == 0;
    int k = 0;
    for (char *p = s;; k++) {
        char *c = strchr(p, ',');
        if (k >= n) return false;
        if (c) *c = 0;
        if (!*p) return false;
        out[k] = p;
        if (!c) break;
        p = c + 1;
    }
    return k + 1 == n;
}

static int load_names(const es_model *m, model_names *nm) {
    memset(nm, 0, sizeof *nm);
    const char *f = es_model_meta(m, "schema.fields"), *d = es_model_meta(m, "schema.dense");
    if (!f || (!d && m->n_dense > 0)) return ES_OK;
    if (!d) d = "";
    size_t lf = strlen(f), ld = strlen(d);
    nm->buf = es__malloc(lf + ld + 2);
    nm->fields = es__malloc(((size_t)m->n_fields + (size_t)m->n_dense + 1) * sizeof *nm->fields);
    if (!nm->buf || !nm->fields) {
        names_free(nm);
        return ES_ENOMEM;
    }
    memcpy(nm->buf, f, lf + 1);
    memcpy(nm->buf + lf + 1, d, ld + 1);
    nm->dense = nm->fields + m->n_fields;
    nm->ok = split_into(nm->buf, m->n_fields, nm->fields) && split_into(nm->buf + lf + 1, m->n_dense, nm->dense);
    return ES_OK;
}

/* A name that a column spec entry finds by name and nothing else. */
static bool spec_safe(const char *s) {
    size_t n = strlen(s);
    if (n == 0 || strchr(s, ',') || strspn(s, "0123456789") == n) return false;
    return !(s[0] == ' ' || s[0] == '\t' || s[n - 1] == ' ' || s[n - 1] == '\t');
}

/* For a model trained on a CSV file with a header and no column spec (the
 * first column the label, the rest categorical): the same roles by name,
 * "label:label,f1:cat,..."; NULL when the names do not allow it (older
 * models without schema.label, or names a spec cannot hold). */
static char *spec_from_names(const es_model *m, const model_names *nm) {
    const char *label = es_model_meta(m, "schema.label");
    if (!nm->ok || !label || !spec_safe(label) || m->n_dense > 0) return NULL;
    size_t len = strlen(label) + 8;
    for (int f = 0; f < m->n_fields; f++) {
        if (!spec_safe(nm->fields[f])) return NULL;
        len += strlen(nm->fields[f]) + 6;
    }
    char *s = es__malloc(len);
    if (!s) return NULL;
    size_t o = (size_t)snprintf(s, len, "%s:label", label);
    for (int f = 0; f < m->n_fields; f++) o += (size_t)snprintf(s + o, len - o, ",%s:cat", nm->fields[f]);
    return s;
}

/* The label column's name in a column spec (into out), or false. */
static bool spec_label(const char *spec, char *out, size_t cap) {
    for (const char *p = spec; p && *p;) {
        const char *c = strchr(p, ','), *e = c ? c : p + strlen(p);
        const char *colon = NULL;
        for (const char *q = p; q < e; q++)
            if (*q == ':') colon = q;
        if (colon) {
            const char *rn = colon + 1, *re = e;
            while (rn < re && (*rn == ' ' || *rn == '\t')) rn++;
            while (re > rn && (re[-1] == ' ' || re[-1] == '\t')) re--;
            if (re - rn == 5 && memcmp(rn, "label", 5) == 0) {
                const char *nb = p, *ne = colon;
                while (nb < ne && (*nb == ' ' || *nb == '\t')) nb++;
                while (ne > nb && (ne[-1] == ' ' || ne[-1] == '\t')) ne--;
                snprintf(out, cap, "%.*s", (int)(ne - nb), nb);
                return true;
            }
        }
        p = c ? c + 1 : NULL;
    }
    return false;
}

static const char *format_word(es_format f) {
    switch (f) {
    case ES_FMT_CRITEO: return "Criteo TSV";
    case ES_FMT_CSV: return "CSV";
    case ES_FMT_LIBSVM: return "libsvm";
    case ES_FMT_LIBFFM: return "libffm";
    default: return "auto-detected";
    }
}

/* A failed open of a CSV file for the model (a column spec problem):
 * say what the model reads and which options fit. */
static void open_hint(es_model *m, const es_reader_params *rp, const char *spec, int has_label, char *hint, size_t cap) {
    hint[0] = 0;
    if (m->err.code != ES_EINVAL || strncmp(m->err.msg, "columns:", 8) != 0) return;
    char label[128];
    bool lab = spec && spec_label(spec, label, sizeof label);
    if (!lab) {
        const char *l = es_model_meta(m, "schema.label");
        if (l && strlen(l) < sizeof label) {
            snprintf(label, sizeof label, "%s", l);
            lab = true;
        }
    }
    char quoted[140];
    snprintf(quoted, sizeof quoted, "'%s'", lab ? label : "");
    size_t o = 0;
    if (lab && has_label && strstr(m->err.msg, quoted) && strstr(m->err.msg, "not a column"))
        o += (size_t)snprintf(hint + o, cap - o, ". '%s' is the label column: to predict a file without labels, pass --unlabeled",
                              label);
    if (o < cap && spec && *spec) {
        if (!rp->header)
            snprintf(hint + o, cap - o, ". The model reads columns by name ('%s'); for a file without a header pass --columns "
                     "with 0-based column indexes", spec);
        else
            snprintf(hint + o, cap - o, ". The model reads the columns '%s'; pass --columns SPEC to say which columns of this "
                     "file hold them", spec);
    }
}

/* The model expects other counts than the file gives. */
static int shape_error(es_model *m, const char *path, const es_reader *r, const es_reader_params *used,
                       const model_names *nm) {
    int nd = es_reader_n_dense(r), nf = es_reader_n_fields(r);
    char want[600] = "";
    if (nm->ok && used->format == ES_FMT_CSV) {
        size_t o = (size_t)snprintf(want, sizeof want, " (fields: ");
        for (int f = 0; f < m->n_fields && o + 8 < sizeof want; f++)
            o += (size_t)snprintf(want + o, sizeof want - o, "%s%s", f ? ", " : "", nm->fields[f]);
        if (o + 16 < sizeof want && m->n_dense) {
            o += (size_t)snprintf(want + o, sizeof want - o, "; numeric: ");
            for (int d = 0; d < m->n_dense && o + 8 < sizeof want; d++)
                o += (size_t)snprintf(want + o, sizeof want - o, "%s%s", d ? ", " : "", nm->dense[d]);
        }
        if (o + 2 < sizeof want) snprintf(want + o, sizeof want - o, ")");
    }
    const char *fix = used->format == ES_FMT_CSV
                          ? "; pass --columns SPEC with one cat/multi entry per field and one num entry per numeric feature, in "
                            "the model's order"
                          : "";
    return es__err(&m->err, ES_EINVAL, "%s: %d numeric and %d categorical columns (read as %s), the model expects %d and %d%s%s",
                   path, nd, nf, format_word(used->format), m->n_dense, m->n_fields, want, fix);
}

int es__model_open_input(es_model *m, const char *path, int has_label, es_reader **out, es_batch *b) {
    return es__model_open_input_mem(m, path, NULL, 0, has_label, out, b);
}

/* data != NULL: read the n bytes at data (named `path` in messages) instead
 * of the file `path` (es_model_predict_mem). */
int es__model_open_input_mem(es_model *m, const char *path, const void *data, size_t n, int has_label, es_reader **out,
                             es_batch *b) {
    *out = NULL;
    m->note[0] = 0;
    es_reader *r = NULL;
    model_names nm = {0};
    char *synth = NULL;
    es_reader_params rp = m->in_set ? m->in_rp : m->rp;
    rp.has_label = has_label;
    rp.num_cat = m->rp.num_cat; /* the model's fields, whatever the input options say */
    const bool own_spec = m->in_set && !same_str(m->in_rp.columns, m->rp.columns);
    int rc = load_names(m, &nm);
    if (rc) return es__err(&m->err, rc, "out of memory");
    /* a dataset cache is checked against the model's names after open,
     * not read through a spec made from them */
    const bool cache = !data && es__path_is_cache(path);
    if (!cache && rp.format == ES_FMT_CSV && rp.header && !rp.columns && !own_spec) rp.columns = synth = spec_from_names(m, &nm);
    /* libffm: the model's field count, not the largest field of this file */
    if (rp.format == ES_FMT_LIBFFM && rp.n_fields_hint == 0) rp.n_fields_hint = m->n_fields;
    es_err e = {0};
    rc = data ? es__reader_open_mem(&r, data, n, path, &rp, &e) : es_reader_open(&r, path, &rp, &e);
    if (rc != 0) {
        es__err(&m->err, rc, "%s", e.msg);
        char hint[600];
        open_hint(m, &rp, rp.columns, has_label, hint, sizeof hint);
        if (hint[0]) es__err(&m->err, rc, "%s%s", e.msg, hint);
        goto done;
    }
    es_reader_params used = es_reader_resolved_params(r);
    if (used.format == ES_FMT_CSV) {
        rc = nm.ok ? es__reader_match_names(r, nm.fields, m->n_fields, nm.dense, m->n_dense) : 0;
        if (rc == 0 && own_spec) rc = es__reader_spec_order(r);
        if (rc < 0) {
            es__err(&m->err, rc, "out of memory");
            goto done;
        }
        rc = ES_OK;
    }
    if (es_reader_n_dense(r) != m->n_dense || es_reader_n_fields(r) != m->n_fields) {
        rc = shape_error(m, path, r, &used, &nm);
        goto done;
    }
    if (es__reader_is_cache(r) && nm.ok) {
        /* a cache's fields are fixed: they must be the model's, in order */
        for (int i = 0; i < m->n_fields + m->n_dense; i++) {
            bool fld = i < m->n_fields;
            const char *want = fld ? nm.fields[i] : nm.dense[i - m->n_fields];
            const char *got = fld ? es_reader_field_name(r, i) : es_reader_dense_name(r, i - m->n_fields);
            if (strcmp(want, got) != 0) {
                rc = es__err(&m->err, ES_EINVAL,
                             "%s: the dataset cache's %s %d is '%s', the model's is '%s': a cache of another schema (rebuild it "
                             "with the model's input options, or read the text file)",
                             path, fld ? "field" : "numeric feature", fld ? i : i - m->n_fields, got, want);
                goto done;
            }
        }
    }
    char unused[400];
    int k = es__reader_unused_columns(r, unused, sizeof unused);
    if (k > 0)
        snprintf(m->note, sizeof m->note, "%s: %d column%s not read by the model %s ignored: %s", path, k, k == 1 ? "" : "s",
                 k == 1 ? "is" : "are", unused);
    if ((rc = es_batch_alloc(b, m->max_batch, m->n_dense, m->n_fields, (size_t)m->max_batch * (size_t)(m->n_fields + 1))) != 0) {
        es__err(&m->err, rc, "out of memory");
        goto done;
    }
    *out = r;
    r = NULL;
done:
    es_reader_free(r);
    es__free(synth);
    names_free(&nm);
    return rc;
}

void es__model_mem_input_drop(es_model *m) {
    es_reader_free(m->mem_r);
    es_batch_free(&m->mem_b);
    es__free(m->mem_name);
    m->mem_r = NULL;
    m->mem_name = NULL;
}

int es__model_mem_input(es_model *m, const char *name, const void *data, size_t n, int has_label, es_reader **r,
                        es_batch **b) {
    if (m->mem_r && m->mem_label == has_label && strcmp(m->mem_name, name) == 0) {
        es_err e = {0};
        if (es__reader_reset_mem(m->mem_r, data, n, &e) == ES_OK) {
            m->note[0] = 0;
            *r = m->mem_r;
            *b = &m->mem_b;
            return ES_OK;
        }
        /* a reader that cannot be reset, or new bytes that fail the open's
         * checks: a fresh open below gives the same outcome and message */
    }
    es__model_mem_input_drop(m);
    int rc = es__model_open_input_mem(m, name, data, n, has_label, &m->mem_r, &m->mem_b);
    if (rc) return rc;
    if (!(m->mem_name = es__strdup(name))) {
        es__model_mem_input_drop(m);
        return es__err(&m->err, ES_ENOMEM, "out of memory");
    }
    m->mem_label = has_label;
    *r = m->mem_r;
    *b = &m->mem_b;
    return ES_OK;
}

void es__model_input_hint(es_model *m, const es_reader *r, int has_label) {
    int got, want, alt;
    es__reader_shape(r, &got, &want, &alt);
    if (!r || got <= 0 || m->err.code != ES_EPARSE) return;
    char needle[48];
    snprintf(needle, sizeof needle, "columns, got %d", got);
    if (!strstr(m->err.msg, needle)) return; /* another error than the line's column count */
    es_format fmt = es_reader_resolved_params(r).format;
    char hint[400] = "";
    if (fmt == ES_FMT_CRITEO) {
        if (got == 1 && alt > 1)
            snprintf(hint, sizeof hint,
                     ": the line looks like CSV (%d comma-separated columns); this model reads Criteo TSV (%d tab-separated "
                     "columns: %slabel, 13 numeric, 26 categorical). For a CSV file pass --format csv --columns SPEC with 13 "
                     "num and 26 cat entries",
                     alt, want, has_label ? "" : "no ");
        else if (has_label && got == want - 1)
            snprintf(hint, sizeof hint,
                     ": the model was trained on Criteo TSV with a label (%d columns). If the file has no label column, pass "
                     "--unlabeled",
                     want);
        else if (!has_label && got == want + 1)
            snprintf(hint, sizeof hint,
                     ": with --unlabeled the model reads Criteo TSV without a label (%d columns). If the first column is the "
                     "label, leave out --unlabeled",
                     want);
    } else if (fmt == ES_FMT_CSV) {
        es_reader_params rp = es_reader_resolved_params(r);
        if (got == 1 && alt > 1)
            snprintf(hint, sizeof hint, ": the line has %d %s-separated columns; this model reads '%c'-separated CSV: pass --delim %s",
                     alt, rp.delim == ',' ? "tab" : "comma", rp.delim, rp.delim == ',' ? "tab" : ",");
        else if (has_label && got == want - 1)
            snprintf(hint, sizeof hint, ": one column short; if the file has no label column, pass --unlabeled");
    }
    if (!hint[0]) return;
    size_t l = strlen(m->err.msg);
    snprintf(m->err.msg + l, sizeof m->err.msg - l, "%s", hint);
}
