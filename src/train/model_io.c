/*
 * model_io.c — the model file: es_model save and load on top of the
 * embstore container format (src/format/file.h, docs/format.md).
 *
 *   metadata  embstore.type=model, model.* (the net), storage.* (written by
 *             storage_io.c, as in a table file), reader.* (how the model
 *             reads files), schema.*, train.*, stats.*, user.*, and with
 *             optimizer state (checkpoints) ckpt.*
 *   tensors   "storage.<name>" for every tensor the storage lists,
 *             "net.<...>" for every dense parameter; with optimizer state
 *             also the "opt.*" tensors of both.
 * Loading re-creates the storage and the net from the metadata, every
 * number parsed strictly, and puts the tensors into them after checking
 * dtype and size: in place where it can (see es__model_load), by copying
 * otherwise.  Files written by earlier versions load the same way.
 */
#include "model.h"

#include "data/schema.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <unistd.h>

/* ---- save ---------------------------------------------------------------------- */

static es_format format_parse(const char *s) {
    if (!s) return ES_FMT_AUTO;
    if (!strcmp(s, "criteo")) return ES_FMT_CRITEO;
    if (!strcmp(s, "csv")) return ES_FMT_CSV;
    if (!strcmp(s, "libsvm")) return ES_FMT_LIBSVM;
    if (!strcmp(s, "libffm")) return ES_FMT_LIBFFM;
    return ES_FMT_AUTO;
}

static void join_ints(char *buf, size_t cap, const int *v, int n) {
    size_t o = 0;
    buf[0] = 0;
    for (int i = 0; i < n && o < cap; i++) o += (size_t)snprintf(buf + o, cap - o, i ? ",%d" : "%d", v[i]);
}

/* A layer list "w,w,...": each width a whole integer in [1, 2^20], at most
 * max of them; returns the count or -1. */
static int parse_ints(const char *s, int *v, int max) {
    int n = 0;
    if (!s || !*s) return 0;
    for (;;) {
        const char *q = strchr(s, ',');
        size_t len = q ? (size_t)(q - s) : strlen(s);
        long long x;
        if (n >= max || len == 0 || !(*s >= '0' && *s <= '9') || !es__parse_long(s, len, &x) || x < 1 || x > (1 << 20)) return -1;
        v[n++] = (int)x;
        if (!q) return n;
        s = q + 1;
    }
}

/* Write all structural metadata (what load needs to rebuild the model). */
static int write_meta(es_model *m, es_fwriter *w, int with_state) {
    char buf[256];
    const es_net_params *np = &m->np;
    int rc = 0;
    rc |= es__fwriter_meta(w, "embstore.type", "model");
    rc |= es__fwriter_metaf(w, "embstore.version", "%d.%d.%d", ES_VERSION_MAJOR, ES_VERSION_MINOR, ES_VERSION_PATCH);
    rc |= es__fwriter_meta(w, "model.kind", es__net_kind_name(np->kind));
    rc |= es__fwriter_metaf(w, "model.dim", "%d", np->dim);
    rc |= es__fwriter_metaf(w, "model.n_dense", "%d", np->n_dense);
    rc |= es__fwriter_metaf(w, "model.n_fields", "%d", np->n_fields);
    join_ints(buf, sizeof buf, np->bottom, np->n_bottom);
    rc |= es__fwriter_meta(w, "model.bottom", buf);
    join_ints(buf, sizeof buf, np->top, np->n_top);
    rc |= es__fwriter_meta(w, "model.top", buf);
    rc |= es__fwriter_metaf(w, "model.n_cross", "%d", np->n_cross);
    /* absent: 0 (files from before these options) */
    if (np->norm_rows) rc |= es__fwriter_metaf(w, "model.norm_rows", "%d", np->norm_rows);
    if (np->pairs_only) rc |= es__fwriter_metaf(w, "model.pairs_only", "%d", np->pairs_only);
    /* Inference never applies dropout; the rate is kept so that a loaded
     * model (a checkpoint above all) trains on the same way, and its
     * "opt.net.dropout_step" tensor is expected exactly when it is > 0. */
    if (np->dropout > 0) rc |= es__fwriter_metaf(w, "model.dropout", "%.9g", (double)np->dropout);
    if (np->n_prefix > 0) { /* Matryoshka: absent in models without it */
        join_ints(buf, sizeof buf, np->prefix, np->n_prefix);
        rc |= es__fwriter_meta(w, "model.matryoshka", buf);
        size_t o = 0;
        for (int i = 0; i < np->n_prefix && o < sizeof buf; i++)
            o += (size_t)snprintf(buf + o, sizeof buf - o, i ? ",%.9g" : "%.9g", (double)np->prefix_w[i]);
        rc |= es__fwriter_meta(w, "model.matryoshka_weights", buf);
    }
    rc |= es__fwriter_metaf(w, "model.max_batch", "%d", np->max_batch);
    rc |= es__fwriter_metaf(w, "model.opt", "%d,%.9g,%.9g,%.9g,%.9g", (int)np->opt.kind, np->opt.lr, np->opt.eps, np->opt.beta1,
                           np->opt.beta2);
    rc |= es__fwriter_metaf(w, "model.weight_decay", "%.9g", np->weight_decay);
    rc |= es__fwriter_metaf(w, "model.seed", "%llu", (unsigned long long)np->seed);
    rc |= es__fwriter_meta(w, "reader.format", es__format_name(m->rp.format));
    rc |= es__fwriter_metaf(w, "reader.delim", "%d", (int)(unsigned char)m->rp.delim);
    rc |= es__fwriter_metaf(w, "reader.header", "%d", m->rp.header);
    rc |= es__fwriter_meta(w, "reader.columns", m->rp.columns ? m->rp.columns : "");
    rc |= es__fwriter_metaf(w, "reader.multi_sep", "%d", (int)(unsigned char)m->rp.multi_sep);
    rc |= es__fwriter_metaf(w, "reader.pool", "%d", (int)m->rp.pool);
    rc |= es__fwriter_metaf(w, "reader.label_threshold", "%.17g", m->rp.label_threshold);
    rc |= es__fwriter_metaf(w, "reader.n_fields_hint", "%d", m->rp.n_fields_hint);
    if (m->rp.num_cat > 0) rc |= es__fwriter_meta(w, "reader.num_cat", "1"); /* only when on: older readers never see it */
    for (int i = 0; i < m->n_meta; i++) {
        if (strncmp(m->meta_key[i], "train.", 6) == 0 || strncmp(m->meta_key[i], "schema.", 7) == 0 ||
            strncmp(m->meta_key[i], "user.", 5) == 0 || strncmp(m->meta_key[i], "stats.", 6) == 0 ||
            (with_state && strncmp(m->meta_key[i], "ckpt.", 5) == 0))
            rc |= es__fwriter_meta(w, m->meta_key[i], m->meta_val[i]);
    }
    return rc ? ES_ENOMEM : ES_OK;
}

/* The net's tensors: parameters, and with with_state its optimizer state
 * ("opt.*"); refs allocated, *n set. */
static int net_tensors(es_model *m, es_tensor_ref **refs, int *n, es_err *err) {
    *n = es__net_tensors(m->net, NULL, 0);
    *refs = *n >= 0 ? es__calloc((size_t)*n + 1, sizeof **refs) : NULL;
    if (!*refs) return es__err(err, ES_ENOMEM, "out of memory");
    es__net_tensors(m->net, *refs, *n);
    return ES_OK;
}

static int is_opt_tensor(const char *name) { return strncmp(name, "opt.", 4) == 0; }

/* The model's metadata and tensors into a new writer *w (whole: the
 * shard written as the whole table, es__model_save_whole_begin). */
static int model_declare(es_model *m, const char *path, int with_state, const es__whole_table *whole, es_fwriter **out, es_err *err) {
    es_fwriter *w = NULL;
    es_tensor_ref *refs = NULL;
    *out = NULL;
    int n = 0, rc = es__fwriter_open(&w, path, err);
    if (rc != 0) return rc;
    if ((rc = write_meta(m, w, with_state)) != 0) {
        es__err(err, rc, "%s: cannot add metadata", path);
        goto fail;
    }
    if ((rc = whole ? es__storage_write_whole(w, m->st, whole, err) : es__storage_write(w, m->st, with_state, err)) != 0) {
        char msg[sizeof err->msg];
        snprintf(msg, sizeof msg, "%s", err->msg);
        es__err(err, rc, "%s: %s", path, msg);
        goto fail;
    }
    if ((rc = net_tensors(m, &refs, &n, err)) != 0) goto fail;
    for (int i = 0; i < n; i++) {
        if (!with_state && is_opt_tensor(refs[i].name)) continue;
        if ((rc = es__fwriter_tensor(w, &refs[i])) != 0) {
            es__err(err, rc, "%s: cannot add tensor %s: %s", path, refs[i].name, es__fwriter_errmsg(w));
            goto fail;
        }
    }
    es__free(refs);
    *out = w;
    return ES_OK;
fail:
    es__free(refs);
    es__fwriter_abort(w);
    return rc;
}

int es__model_save(es_model *m, const char *path, int with_state, es_err *err) {
    es_fwriter *w = NULL;
    int rc = model_declare(m, path, with_state, NULL, &w, err);
    return rc != ES_OK ? rc : es__fwriter_commit(w, err);
}

int es__model_save_whole_begin(es_model *m, const char *path, const es__whole_table *wt, es_fwriter **out, int *rows_tensor,
                               es_err *err) {
    es_fwriter *w = NULL;
    char name[ES_TENSOR_NAME_MAX];
    *out = NULL;
    for (int i = 0; i < wt->n; i++)
        if (es__storage_file_name(wt->tensor[i], name, sizeof name) != ES_OK)
            return es__err(err, ES_EINVAL, "tensor name too long: %s", wt->tensor[i]);
    int rc = model_declare(m, path, 0, wt, &w, err);
    if (rc != ES_OK) return rc;
    for (int i = 0; i < wt->n; i++) {
        es__storage_file_name(wt->tensor[i], name, sizeof name); /* fits: checked above */
        if ((rows_tensor[i] = es__fwriter_tensor_index(w, name)) < 0) {
            es__fwriter_abort(w);
            return es__err(err, ES_EINVAL, "%s: storage '%s' has no tensor %s", path, m->st->ops->name, name);
        }
    }
    if ((rc = es__fwriter_begin(w)) != ES_OK) {
        es__err(err, rc, "%s", es__fwriter_errmsg(w));
        es__fwriter_abort(w);
        return rc;
    }
    *out = w;
    return ES_OK;
}

/* ---- load ------------------------------------------------------------------------ */

static const char *need(const es_file *f, const char *key, const char *path, es_err *err, int *rc) {
    const char *v = es__file_meta(f, key);
    if (!v && *rc == 0) *rc = es__err(err, ES_EFORMAT, "%s: model metadata lacks '%s'", path, key);
    return v;
}

/* A required integer in [lo, hi] (strict, core.h es__meta_int); 0 and
 * *rc set on the first failure. */
static int meta_int(const es_file *f, const char *key, int lo, int hi, const char *path, es_err *err, int *rc) {
    const char *v = need(f, key, path, err, rc);
    int x = 0;
    if (v && *rc == 0) *rc = es__meta_int(path, key, v, lo, hi, &x, err);
    return *rc == 0 ? x : 0;
}

size_t es__model_mapped_bytes(const es_model *m) { return m->mapped_bytes; }

/* Loading copies each byte at most once.  By default the container is
 * read into private memory (es__file_open), and each large tensor whose
 * file offset is page-aligned (every tensor of 64 KiB or more in a
 * version-2 file) has its pages moved, not copied, into its freshly
 * allocated array (place_tensor).  The loaded model then owns all its
 * memory: a `cp` over the model file, or a truncation, while it is in use
 * cannot touch it (with a mapping it would die of SIGBUS).  Load time is
 * one read of the file plus checksum verification.
 *
 * With ES_LOAD_MAP the container is mapped instead, and each such tensor
 * replaces the pages of its array with a private, copy-on-write mapping of
 * the file: reads come from the page cache, so load time does not grow
 * with the model except for verification (skipped by ES_LOAD_NO_VERIFY);
 * the price is that the file must only ever be replaced by rename, as every
 * embstore writer does.  In both modes training after a load or resume
 * writes private pages and never the file.  The environment variable
 * ES_NO_REMAP=1 turns in-place placement off (every tensor is copied), to
 * compare the paths or rule them out when debugging. */
int es__model_load(es_model **out, const char *path, unsigned flags, int with_state, es_err *err) {
    *out = NULL;
    es_file *f = NULL;
    es_model *m = NULL;
    es_tensor_ref *refs = NULL;
    int n_refs = 0;
    char *opts = NULL;
    unsigned fflags = ((flags & ES_LOAD_NO_VERIFY) ? ES_FILE_NO_VERIFY : 0) | ((flags & ES_LOAD_MAP) ? ES_FILE_MAP : 0);
    int rc = es__file_open(&f, path, fflags, err);
    if (rc != 0) return rc;
    const char *type = es__file_meta(f, "embstore.type");
    if (!type || strcmp(type, "model") != 0) {
        rc = es__err(err, ES_EFORMAT, "%s: not a model file (type '%s')", path, type ? type : "none");
        goto done;
    }
    es_net_kind kind;
    const char *ks = need(f, "model.kind", path, err, &rc);
    if (rc) goto done;
    if (es__net_kind_parse(ks, &kind) != 0) {
        rc = es__err(err, ES_EFORMAT, "%s: unknown model kind '%s'", path, ks);
        goto done;
    }
    int dim = meta_int(f, "model.dim", 1, 65536, path, err, &rc);
    int n_dense = meta_int(f, "model.n_dense", 0, 100000, path, err, &rc);
    int n_fields = meta_int(f, "model.n_fields", 0, 100000, path, err, &rc);
    if (rc) goto done;
    if (dim <= 0 || dim > 65536 || n_dense < 0 || n_dense > 100000 || n_fields < 0 || n_fields > 100000) {
        rc = es__err(err, ES_EFORMAT, "%s: model shape out of range (dim %d, dense %d, fields %d)", path, dim, n_dense, n_fields);
        goto done;
    }
    es_net_params np = es__net_params_default(kind, n_dense, n_fields, dim);
    int nb = parse_ints(es__file_meta(f, "model.bottom"), np.bottom, ES_NET_MAX_LAYERS);
    int nt = parse_ints(es__file_meta(f, "model.top"), np.top, ES_NET_MAX_LAYERS);
    if (nb < 0 || nt < 0) {
        rc = es__err(err, ES_EFORMAT, "%s: metadata model.%s=%.64s: expected at most %d comma-separated layer widths in [1, %d]", path,
                     nb < 0 ? "bottom" : "top", es__file_meta(f, nb < 0 ? "model.bottom" : "model.top"), ES_NET_MAX_LAYERS, 1 << 20);
        goto done;
    }
    np.n_bottom = nb;
    np.n_top = nt;
    np.n_cross = meta_int(f, "model.n_cross", 0, 1024, path, err, &rc);
    if (es__file_meta(f, "model.norm_rows")) np.norm_rows = meta_int(f, "model.norm_rows", 0, 1, path, err, &rc);
    if (es__file_meta(f, "model.pairs_only")) np.pairs_only = meta_int(f, "model.pairs_only", 0, 1, path, err, &rc);
    np.max_batch = meta_int(f, "model.max_batch", 1, 1 << 20, path, err, &rc);
    if (rc) goto done;
    if (np.max_batch <= 0 || np.max_batch > (1 << 20)) {
        rc = es__err(err, ES_EFORMAT, "%s: max_batch %d out of range", path, np.max_batch);
        goto done;
    }
    const char *s;
    double x;
    if ((s = es__file_meta(f, "model.opt")) && (rc = es__optim_meta_read(path, "model.opt", s, 5, &np.opt, err))) goto done;
    if ((s = es__file_meta(f, "model.weight_decay"))) {
        if ((rc = es__meta_f64(path, "model.weight_decay", s, 0, 3.4e38, &x, err))) goto done;
        np.weight_decay = (float)x;
    }
    if ((s = es__file_meta(f, "model.dropout"))) {
        if ((rc = es__meta_f64(path, "model.dropout", s, 0, 0.999999, &x, err))) goto done;
        np.dropout = (float)x;
    }
    if ((s = es__file_meta(f, "model.matryoshka"))) {
        int npre = parse_ints(s, np.prefix, ES_NET_MAX_PREFIX);
        const char *ws = es__file_meta(f, "model.matryoshka_weights");
        float wv[ES_NET_MAX_PREFIX];
        int nw = ws ? es__parse_prefix_weights(ws, wv, ES_NET_MAX_PREFIX) : -1;
        if (npre < 1 || nw != npre) {
            rc = es__err(err, ES_EFORMAT, "%s: metadata model.matryoshka=%.64s / model.matryoshka_weights=%.64s: expected as many weights as prefixes (at most %d)",
                         path, s, ws ? ws : "(missing)", ES_NET_MAX_PREFIX);
            goto done;
        }
        np.n_prefix = npre;
        memcpy(np.prefix_w, wv, sizeof wv);
    }
    if ((s = es__file_meta(f, "model.seed")) && (rc = es__meta_u64(path, "model.seed", s, 0, UINT64_MAX, &np.seed, err))) goto done;

    es_storage_params sp;
    if ((rc = es__storage_params_read(f, path, &sp, &opts, err)) != 0) goto done;
    if (sp.shard_n > 1 && !(flags & ES__LOAD_SHARD)) {
        rc = es__err(err, ES_EFORMAT,
                     "%s: rank %d's shard of a checkpoint of a run across %d processes, not a model: resume the run with "
                     "mpirun -np %d ... --resume (docs/scale.md)",
                     path, sp.shard_rank, sp.shard_n, sp.shard_n);
        goto done;
    }
    sp.n_fields = n_fields;
    sp.max_batch = np.max_batch;
    if (!with_state) sp.qtrain = ES_QTRAIN_NONE; /* serve the codes: no master copy, no steps */

    es_reader_params rp = es_reader_params_default();
    rp.format = format_parse(es__file_meta(f, "reader.format"));
    int iv;
    if ((s = es__file_meta(f, "reader.delim"))) {
        if ((rc = es__meta_int(path, "reader.delim", s, 0, 255, &iv, err))) goto done;
        rp.delim = (char)iv;
    }
    if ((s = es__file_meta(f, "reader.header")) && (rc = es__meta_int(path, "reader.header", s, 0, 1, &rp.header, err))) goto done;
    if ((s = es__file_meta(f, "reader.columns")) && *s) rp.columns = s;
    if ((s = es__file_meta(f, "reader.multi_sep"))) {
        if ((rc = es__meta_int(path, "reader.multi_sep", s, 0, 255, &iv, err))) goto done;
        rp.multi_sep = (char)iv;
    }
    if ((s = es__file_meta(f, "reader.pool"))) {
        if ((rc = es__meta_int(path, "reader.pool", s, ES_POOL_SUM, ES_POOL_MEAN, &iv, err))) goto done;
        rp.pool = (es_pool)iv;
    }
    if ((s = es__file_meta(f, "reader.label_threshold")) &&
        (rc = es__meta_f64(path, "reader.label_threshold", s, -INFINITY, INFINITY, &rp.label_threshold, err)))
        goto done;
    if ((s = es__file_meta(f, "reader.n_fields_hint")) && (rc = es__meta_int(path, "reader.n_fields_hint", s, 0, 100000, &rp.n_fields_hint, err)))
        goto done;
    if ((s = es__file_meta(f, "reader.num_cat")) && (rc = es__meta_int(path, "reader.num_cat", s, 0, 1, &rp.num_cat, err))) goto done;

    /* Every parameter is replaced by the file's values below, so skip the
     * random initial fill: load time then does not grow with the size. */
    es__rng_fill_skip(1);
    rc = es__model_create(&m, &np, &sp, NULL, &rp, err);
    es__rng_fill_skip(0);
    if (rc != 0) goto done;
    for (int i = 0; i < es__file_n_meta(f); i++) {
        const char *k, *v;
        es__file_meta_at(f, i, &k, &v);
        if ((rc = es__model_set_meta(m, k, v)) != 0) {
            es__err(err, rc, "%s: out of memory for metadata", path);
            goto done;
        }
    }
    if ((rc = es__storage_read_tensors(m->st, f, with_state, path, &m->mapped_bytes, err)) != 0) goto done;
    if ((rc = net_tensors(m, &refs, &n_refs, err)) != 0) goto done;
    const int inplace = es__file_inplace_ok(f);
    for (int i = 0; i < n_refs; i++) {
        int opt = is_opt_tensor(refs[i].name);
        if (opt && !with_state) continue;
        const es_tensor_ref *t = es__file_tensor(f, refs[i].name);
        if (!t) {
            rc = es__err(err, ES_EFORMAT, "%s: tensor '%s' is missing", path, refs[i].name);
            goto done;
        }
        if (t->dtype != refs[i].dtype || t->nbytes != refs[i].nbytes) {
            rc = es__err(err, ES_EFORMAT, "%s: tensor '%s' has %s x %zu bytes, the model expects %s x %zu bytes", path, refs[i].name,
                         es__dtype_name(t->dtype), t->nbytes, es__dtype_name(refs[i].dtype), refs[i].nbytes);
            goto done;
        }
        int ti = (int)(t - es__file_tensor_at(f, 0)); /* es__file_tensor points into the table es__file_tensor_at indexes */
        ES_ASSERT(es__file_tensor_at(f, ti) == t);
        if ((rc = es__file_place(f, ti, refs[i].data, inplace, &m->mapped_bytes, path, err)) != 0) goto done;
    }
    *out = m;
    m = NULL;
done:
    es__free(opts);
    es__free(refs);
    es_model_free(m);
    es__file_close(f);
    return rc;
}

int es_model_load(es_model **out, const char *path, unsigned flags, es_err *err) {
    return es__model_load(out, path, flags, 0, err);
}
