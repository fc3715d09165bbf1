/*
 * table.c — es_table, the public face of a storage: one embedding table
 * (any registered method) without a model around it.  A thin layer over
 * the internal storage interface (storage.h) that adds what a public
 * handle needs: parameters by name (method, optimizer), argument checks
 * with a per-handle message, and a file of its own.
 *
 * Table file (an embstore container, docs/format.md):
 *   metadata  embstore.type=table, embstore.version, table.state (1 when
 *             the optimizer state is included), and the storage.* keys of
 *             storage_io.c (the same as in a model file)
 *   tensors   "storage.<name>", with state also "opt.storage.<name>"
 * Loading re-creates the storage from the metadata (the resolved options
 * fix every shape, so no vocabulary is needed) and puts the tensors into
 * its arrays, in place where the file layout allows.
 */
#include "storage/storage.h"

struct es_table {
    es_storage *s;
    es_err err;           /* message of the last failed call */
    size_t mapped_bytes;  /* bytes a load placed without copying (tests, debugging) */
};

es_table_params es_table_params_default(void) {
    const es_storage_params d = es__storage_params_default(); /* one set of defaults */
    es_table_params p;
    memset(&p, 0, sizeof p);
    p.method = d.method;
    p.dim = d.dim;
    p.max_batch = d.max_batch;
    p.seed = d.seed;
    p.init_scale = d.init_scale;
    p.optim = "rowwise";
    p.lr = d.opt.lr;
    p.eps = d.opt.eps;
    p.emb_l2 = d.opt.row_l2;
    p.emb_l2_freq = d.opt.row_l2_freq;
    p.ftrl_alpha = d.opt.ftrl_alpha;
    p.ftrl_beta = d.opt.ftrl_beta;
    p.ftrl_l1 = d.opt.ftrl_l1;
    p.ftrl_l2 = d.opt.ftrl_l2;
    return p;
}

static int table_wrap(es_table **out, es_storage *s, es_err *err) {
    es_table *t = es__calloc(1, sizeof *t);
    if (!t) {
        es__storage_free(s);
        return es__err(err, ES_ENOMEM, "table: out of memory");
    }
    t->s = s;
    *out = t;
    return ES_OK;
}

int es_table_create(es_table **out, const es_table_params *p, const es_vocab *vocab, es_err *err) {
    if (!out) return es__err(err, ES_EINVAL, "table: no output handle");
    *out = NULL;
    if (!p) return es__err(err, ES_EINVAL, "table: no parameters");
    es_storage_params sp = es__storage_params_default();
    sp.method = p->method;
    sp.n_fields = p->n_fields;
    sp.dim = p->dim;
    sp.max_batch = p->max_batch;
    sp.budget = p->budget;
    sp.seed = p->seed;
    sp.init_scale = p->init_scale;
    if (es__optim_parse(p->optim ? p->optim : "rowwise", &sp.opt.kind) != 0 || sp.opt.kind == ES_OPT_ADAM)
        return es__err(err, ES_EINVAL, "table: unknown optimizer '%s' (expected rowwise, adagrad, sgd or ftrl)", p->optim);
    sp.opt.lr = p->lr;
    sp.opt.eps = p->eps;
    sp.opt.row_l2 = p->emb_l2;
    sp.opt.row_l2_freq = p->emb_l2_freq;
    sp.opt.ftrl_alpha = p->ftrl_alpha;
    sp.opt.ftrl_beta = p->ftrl_beta;
    sp.opt.ftrl_l1 = p->ftrl_l1;
    sp.opt.ftrl_l2 = p->ftrl_l2;
    sp.opts = p->opts;
    es_storage *s;
    int rc = es__storage_create(&s, &sp, vocab, err); /* checks every field, naming the bad one */
    if (rc != 0) return rc;
    return table_wrap(out, s, err);
}

void es_table_free(es_table *t) {
    if (!t) return;
    es__storage_free(t->s);
    es__free(t);
}

const char *es_table_errmsg(const es_table *t) { return t ? t->err.msg : "no table"; }

int es_table_lookup(es_table *t, const es_batch *b, int r0, int r1, float *out) {
    es_storage *s = t->s;
    if (!b || !out) return es__err(&t->err, ES_EINVAL, "table lookup: %s is NULL", !b ? "the batch" : "the output");
    if (b->n_fields != s->p.n_fields || r0 < 0 || r0 > r1 || r1 > b->n)
        return es__err(&t->err, ES_EINVAL, "table lookup: rows [%d, %d) of a %d-row batch with %d fields (the table has %d)", r0,
                       r1, b->n, b->n_fields, s->p.n_fields);
    s->ops->lookup(s, b, r0, r1, out);
    return ES_OK;
}

int es_table_backward(es_table *t, const es_batch *b, const float *dout) {
    es_storage *s = t->s;
    if (!b || !dout) return es__err(&t->err, ES_EINVAL, "table backward: %s is NULL", !b ? "the batch" : "the gradient");
    if (b->n_fields != s->p.n_fields)
        return es__err(&t->err, ES_EINVAL, "table backward: the batch has %d fields, the table %d", b->n_fields, s->p.n_fields);
    if (b->n < 0 || b->n > s->p.max_batch)
        return es__err(&t->err, ES_EINVAL, "table backward: a batch of %d rows (the table's max_batch is %d)", b->n,
                       s->p.max_batch);
    if (b->n == 0) return ES_OK;
    int rc = s->ops->backward(s, b, dout);
    if (rc != 0) return es__err(&t->err, rc, "table backward: %s", s->err.msg[0] ? s->err.msg : es_strerror(rc));
    return ES_OK;
}

size_t es_table_bytes(const es_table *t) { return t->s->param_bytes + t->s->aux_bytes; }
size_t es_table_param_bytes(const es_table *t) { return t->s->param_bytes; }
size_t es_table_state_bytes(const es_table *t) { return t->s->state_bytes; }
uint64_t es_table_rows(const es_table *t) {
    return (uint64_t)(t->s->param_bytes / (sizeof(float) * (size_t)t->s->p.dim));
}
int es_table_dim(const es_table *t) { return t->s->p.dim; }
int es_table_n_fields(const es_table *t) { return t->s->p.n_fields; }
int es_table_max_batch(const es_table *t) { return t->s->p.max_batch; }
const char *es_table_method(const es_table *t) { return t->s->p.method; }
const char *es_table_meta(const es_table *t) { return t->s->meta; }

/* ---- file ------------------------------------------------------------------- */

int es_table_save(es_table *t, const char *path, unsigned flags) {
    if (!path || !*path) return es__err(&t->err, ES_EINVAL, "table save: no path");
    if (flags & ~ES_TABLE_SAVE_STATE) return es__err(&t->err, ES_EINVAL, "table save: unknown flags 0x%x", flags);
    const int with_state = (flags & ES_TABLE_SAVE_STATE) != 0;
    es_fwriter *w = NULL;
    int rc = es__fwriter_open(&w, path, &t->err);
    if (rc != 0) return rc;
    int m = 0;
    m |= es__fwriter_meta(w, "embstore.type", "table");
    m |= es__fwriter_metaf(w, "embstore.version", "%d.%d.%d", ES_VERSION_MAJOR, ES_VERSION_MINOR, ES_VERSION_PATCH);
    m |= es__fwriter_metaf(w, "table.state", "%d", with_state);
    if (m) {
        rc = es__err(&t->err, ES_ENOMEM, "%s: cannot add metadata: %s", path, es__fwriter_errmsg(w));
        goto fail;
    }
    if ((rc = es__storage_write(w, t->s, with_state, &t->err)) != 0) {
        char why[sizeof t->err.msg];
        snprintf(why, sizeof why, "%s", t->err.msg);
        es__err(&t->err, rc, "%s: %.400s", path, why);
        goto fail;
    }
    return es__fwriter_commit(w, &t->err); /* temp file, fsync, rename; removes the temp file on failure */
fail:
    es__fwriter_abort(w);
    return rc;
}

int es_table_load(es_table **out, const char *path, unsigned flags, es_err *err) {
    if (!out) return es__err(err, ES_EINVAL, "table load: no output handle");
    *out = NULL;
    if (!path || !*path) return es__err(err, ES_EINVAL, "table load: no path");
    if (flags & ~(ES_LOAD_NO_VERIFY | ES_LOAD_MAP)) return es__err(err, ES_EINVAL, "table load: unknown flags 0x%x", flags);
    unsigned fflags = ((flags & ES_LOAD_NO_VERIFY) ? ES_FILE_NO_VERIFY : 0) | ((flags & ES_LOAD_MAP) ? ES_FILE_MAP : 0);
    es_file *f = NULL;
    es_storage *s = NULL;
    char *opts = NULL;
    size_t mapped = 0;
    int rc = es__file_open(&f, path, fflags, err);
    if (rc != 0) return rc;
    const char *type = es__file_meta(f, "embstore.type");
    if (!type || strcmp(type, "table") != 0) {
        rc = es__err(err, ES_EFORMAT, "%s: not a table file (embstore.type is '%s', expected 'table')%s", path,
                     type ? type : "missing",
                     type && !strcmp(type, "model") ? "; a model is loaded with es_model_load" : "");
        goto done;
    }
    const char *st = es__file_meta(f, "table.state");
    if (st && strcmp(st, "0") != 0 && strcmp(st, "1") != 0) {
        rc = es__err(err, ES_EFORMAT, "%s: metadata table.state='%.32s' is not 0 or 1", path, st);
        goto done;
    }
    const int with_state = st && !strcmp(st, "1");
    es_storage_params sp;
    if ((rc = es__storage_params_read(f, path, &sp, &opts, err)) != 0) goto done;
    if (sp.shard_n > 1) {
        rc = es__err(err, ES_EFORMAT, "%s: rank %d's shard of a table split over %d processes, not a whole table", path, sp.shard_rank,
                     sp.shard_n);
        goto done;
    }
    if (!with_state) sp.qtrain = ES_QTRAIN_NONE; /* serve the codes: no master copy, no steps */
    if (sp.n_fields < 1 || sp.max_batch < 1) {
        rc = es__err(err, ES_EFORMAT, "%s: metadata lacks '%s'", path, sp.n_fields < 1 ? "storage.n_fields" : "storage.max_batch");
        goto done;
    }
    /* Every parameter is replaced by the file's values below: skip the
     * random initial fill, so load time does not grow with the size. */
    es__rng_fill_skip(1);
    rc = es__storage_create(&s, &sp, NULL, err);
    es__rng_fill_skip(0);
    if (rc != 0) {
        if (rc != ES_ENOMEM) {
            char why[sizeof err->msg];
            snprintf(why, sizeof why, "%s", err ? err->msg : es_strerror(rc));
            rc = es__err(err, ES_EFORMAT, "%s: the metadata does not re-create a table: %.300s", path, why);
        }
        goto done;
    }
    if ((rc = es__storage_read_tensors(s, f, with_state, path, &mapped, err)) != 0) goto done;
    es_table *t = NULL;
    if ((rc = table_wrap(&t, s, err)) != 0) {
        s = NULL; /* freed by table_wrap */
        goto done;
    }
    s = NULL;
    t->mapped_bytes = mapped;
    *out = t;
done:
    es__storage_free(s);
    es__free(opts);
    es__file_close(f);
    return rc;
}
