/*
 * model.c — es_model: storage + net + schema.  Forward/backward for one
 * batch, prediction, embedding lookup, and the model file (save/load) on
 * top of the embstore container format (src/format/file.h).
 *
 * Model file contents (docs/format.md has the container layout):
 *   metadata  embstore.type=model, model.*, storage.*, reader.*, schema.*,
 *             train.* (command line, metrics)
 *   tensors   "storage.<name>" for every tensor the storage lists,
 *             "net.<...>" for every dense parameter; with optimizer state
 *             (checkpoints) also the "opt.*" tensors of both.
 * Loading re-creates the storage and the net from the metadata and puts
 * the tensors into them after checking dtype and size: in place where it
 * can (see es__model_load), by copying otherwise.
 */
#include "model.h"

#include "model/layers.h"

#include "data/schema.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <unistd.h>

#ifdef _OPENMP
#include <omp.h>
#endif

/* ---- creation ------------------------------------------------------------ */

static int model_alloc_buffers(es_model *m, es_err *err) {
    size_t per = (size_t)m->max_batch * (size_t)m->n_fields * (size_t)m->E;
    size_t total;
    if (!es__mul_size(per, 2, &total) || !es__add_size(total, 2 * (size_t)m->max_batch, &total) ||
        !es__mul_size(total, sizeof(float), &total))
        return es__err(err, ES_EINVAL, "model buffers too large");
    m->buf = es__alloc_aligned(total);
    if (!m->buf) return es__err(err, ES_ENOMEM, "out of memory for model buffers (%zu bytes)", total);
    m->emb = m->buf;
    m->demb = m->emb + per;
    m->logit = m->demb + per;
    m->dlogit = m->logit + m->max_batch;
    if (es_batch_alloc(&m->one, 1, m->n_dense, m->n_fields, (size_t)m->n_fields + 1) != 0)
        return es__err(err, ES_ENOMEM, "out of memory");
    return ES_OK;
}

static int copy_reader_params(es_model *m, const es_reader_params *rp) {
    m->rp = *rp;
    m->rp_columns = NULL;
    if (rp->columns) {
        m->rp_columns = es__strdup(rp->columns);
        if (!m->rp_columns) return ES_ENOMEM;
    }
    m->rp.columns = m->rp_columns;
    return ES_OK;
}

int es__model_create(es_model **out, const es_net_params *np, const es_storage_params *sp, const es_vocab *vocab,
                     const es_reader_params *rp, es_err *err) {
    *out = NULL;
    es_model *m = es__calloc(1, sizeof *m);
    if (!m) return es__err(err, ES_ENOMEM, "out of memory");
    m->np = *np;
    m->n_dense = np->n_dense;
    m->n_fields = np->n_fields;
    m->E = es__net_emb_dim(np->kind, np->dim);
    m->max_batch = np->max_batch;
    int rc;
    if (sp->dim != m->E || sp->n_fields != np->n_fields || sp->max_batch != np->max_batch) {
        rc = es__err(err, ES_EINVAL, "storage shape (fields %d, dim %d) does not match the model (fields %d, dim %d)",
                     sp->n_fields, sp->dim, np->n_fields, m->E);
        goto fail;
    }
    if ((rc = copy_reader_params(m, rp)) != 0) {
        es__err(err, rc, "out of memory");
        goto fail;
    }
    if ((rc = es__storage_create(&m->st, sp, vocab, err)) != 0) goto fail;
    if ((rc = es__net_create(&m->net, np, err)) != 0) goto fail;
    if ((rc = model_alloc_buffers(m, err)) != 0) goto fail;
    *out = m;
    return ES_OK;
fail:
    es_model_free(m);
    return rc;
}

void es_model_free(es_model *m) {
    if (!m) return;
    es__storage_free(m->st);
    es__net_free(m->net);
    es__free_aligned(m->buf);
    es__free(m->rp_columns);
    es__free(m->in_columns);
    for (int i = 0; i < m->n_meta; i++) {
        es__free(m->meta_key[i]);
        es__free(m->meta_val[i]);
    }
    es__free(m->meta_key);
    es__free(m->meta_val);
    es_batch_free(&m->one);
    es__free(m);
}

const char *es_model_errmsg(const es_model *m) { return m ? m->err.msg : "no model"; }
int es_model_n_fields(const es_model *m) { return m->n_fields; }
int es_model_n_dense(const es_model *m) { return m->n_dense; }
int es_model_emb_dim(const es_model *m) { return m->E; }
es_reader_params es_model_reader_params(const es_model *m) { return m->rp; }

int es__model_set_meta(es_model *m, const char *key, const char *value) {
    for (int i = 0; i < m->n_meta; i++) {
        if (strcmp(m->meta_key[i], key) == 0) {
            char *v = es__strdup(value);
            if (!v) return ES_ENOMEM;
            es__free(m->meta_val[i]);
            m->meta_val[i] = v;
            return ES_OK;
        }
    }
    if (m->n_meta == m->cap_meta) {
        int cap = m->cap_meta ? 2 * m->cap_meta : 64;
        char **k2 = es__realloc(m->meta_key, (size_t)cap * sizeof *k2);
        if (!k2) return ES_ENOMEM;
        m->meta_key = k2;
        char **v2 = es__realloc(m->meta_val, (size_t)cap * sizeof *v2);
        if (!v2) return ES_ENOMEM;
        m->meta_val = v2;
        m->cap_meta = cap;
    }
    char *k = es__strdup(key), *v = es__strdup(value);
    if (!k || !v) {
        es__free(k);
        es__free(v);
        return ES_ENOMEM;
    }
    m->meta_key[m->n_meta] = k;
    m->meta_val[m->n_meta] = v;
    m->n_meta++;
    return ES_OK;
}

const char *es_model_meta(const es_model *m, const char *key) {
    for (int i = 0; i < m->n_meta; i++)
        if (strcmp(m->meta_key[i], key) == 0) return m->meta_val[i];
    return NULL;
}

/* ---- forward / backward ------------------------------------------------------ */

/* emb[0..n) <- lookup of rows [r0, r0+n) of b, split over threads. */
static void lookup_rows(es_model *m, const es_batch *b, int r0, int n) {
    size_t row_floats = (size_t)m->n_fields * (size_t)m->E;
    int nt = es__threads_get();
    if (nt <= 1 || n < 32) {
        m->st->ops->lookup(m->st, b, r0, r0 + n, m->emb);
        return;
    }
ES__OMP(omp parallel for schedule(static) num_threads(nt))
    for (int t = 0; t < nt; t++) {
        int a = r0 + (int)((int64_t)n * t / nt), z = r0 + (int)((int64_t)n * (t + 1) / nt);
        if (z > a) m->st->ops->lookup(m->st, b, a, z, m->emb + (size_t)(a - r0) * row_floats);
    }
}

/* Shape of a batch against the model (ES_EINVAL with a message). */
static int check_batch(es_model *m, const es_batch *b) {
    if (b->n_fields != m->n_fields || b->n_dense != m->n_dense)
        return es__err(&m->err, ES_EINVAL, "batch has %d numeric and %d categorical features, the model expects %d and %d",
                       b->n_dense, b->n_fields, m->n_dense, m->n_fields);
    if (b->n < 0 || b->n > b->cap) return es__err(&m->err, ES_EINVAL, "batch row count %d out of range [0, %d]", b->n, b->cap);
    return ES_OK;
}

int es_model_train_batch(es_model *m, const es_batch *b, double *loss_sum) {
    int n = b->n, rc = check_batch(m, b);
    if (rc != ES_OK) return rc;
    if (n < 1 || n > m->max_batch)
        return es__err(&m->err, ES_EINVAL, "a training batch needs 1 to %d rows (the model's batch size), got %d", m->max_batch, n);
    lookup_rows(m, b, 0, n);
    es__net_forward(m->net, n, m->emb, b->dense, m->logit);
    /* the tested layer loss: summed over the rows, dlogit of the batch mean */
    double loss = es__bce_logits_sum(m->logit, b->label, n, 1.0f / (float)n, m->dlogit);
    if (loss_sum) *loss_sum += loss;
    es__net_backward(m->net, n, m->emb, b->dense, m->dlogit, m->demb);
    es__net_step(m->net);
    rc = m->st->ops->backward(m->st, b, m->demb);
    if (rc != 0) return es__err(&m->err, rc, "embedding update failed: %s", m->st->err.msg);
    return ES_OK;
}

int es_model_eval_batch(es_model *m, const es_batch *b, float *prob, double *loss_sum) {
    int rc = check_batch(m, b);
    if (rc != ES_OK) return rc;
    es__net_freeze(m->net); /* weights packed once for every batch until the next training step */
    for (int r0 = 0; r0 < b->n; r0 += m->max_batch) {
        int n = ES_MIN(m->max_batch, b->n - r0);
        lookup_rows(m, b, r0, n);
        es__net_forward(m->net, n, m->emb, b->dense + (size_t)r0 * (size_t)m->n_dense, m->logit);
        for (int i = 0; i < n; i++) prob[r0 + i] = es__sigmoid(m->logit[i]);
        if (loss_sum) *loss_sum += es__bce_logits_sum(m->logit, b->label + r0, n, 0.0f, NULL);
    }
    return ES_OK;
}

int es_model_predict_batch(es_model *m, const es_batch *b, float *prob) { return es_model_eval_batch(m, b, prob, NULL); }

int es_model_embedding(es_model *m, int field, uint64_t key, float *out) {
    if (field < 0 || field >= m->n_fields) return es__err(&m->err, ES_ERANGE, "field %d out of range [0, %d)", field, m->n_fields);
    es_batch *b = &m->one;
    b->n = 1;
    /* only `field` has a value: offsets 0..0 before it, 0..1 at it, 1..1 after */
    for (int f = 0; f <= m->n_fields; f++) b->off[f] = f <= field ? 0u : 1u;
    b->val[0] = key;
    b->wt[0] = 1.0f;
    float *tmp = m->emb; /* [1, F, E] scratch */
    m->st->ops->lookup(m->st, b, 0, 1, tmp);
    memcpy(out, tmp + (size_t)field * (size_t)m->E, (size_t)m->E * sizeof(float));
    return ES_OK;
}

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

static int is_opt_tensor(const char *name) { return strncmp(name, "opt.", 4) == 0; }

/* Storage and net tensors, each with its file name. */
typedef struct {
    es_tensor_ref *refs;
    char (*names)[ES_TENSOR_NAME_MAX + 16];
    int n;
} tensor_list;

static int list_tensors(es_model *m, tensor_list *tl, es_err *err) {
    int ns = m->st->ops->tensors(m->st, NULL, 0);
    int nn = es__net_tensors(m->net, NULL, 0);
    if (ns < 0 || nn < 0) return es__err(err, ES_EINVAL, "cannot list model tensors");
    tl->refs = es__calloc((size_t)(ns + nn) + 1, sizeof *tl->refs);
    tl->names = es__calloc((size_t)(ns + nn) + 1, sizeof *tl->names);
    if (!tl->refs || !tl->names) return es__err(err, ES_ENOMEM, "out of memory");
    m->st->ops->tensors(m->st, tl->refs, ns);
    es__net_tensors(m->net, tl->refs + ns, nn);
    for (int i = 0; i < ns + nn; i++) {
        if (i < ns) {
            /* storage tensors get a "storage." prefix; their optimizer state
             * keeps "opt." first so one rule finds all optimizer state. */
            if (is_opt_tensor(tl->refs[i].name))
                snprintf(tl->names[i], sizeof tl->names[i], "opt.storage.%s", tl->refs[i].name + 4);
            else
                snprintf(tl->names[i], sizeof tl->names[i], "storage.%s", tl->refs[i].name);
        } else {
            snprintf(tl->names[i], sizeof tl->names[i], "%s", tl->refs[i].name);
        }
        if (strlen(tl->names[i]) >= ES_TENSOR_NAME_MAX)
            return es__err(err, ES_EINVAL, "tensor name too long: %s", tl->names[i]);
    }
    tl->n = ns + nn;
    return ES_OK;
}

static void free_tensors(tensor_list *tl) {
    es__free(tl->refs);
    es__free(tl->names);
}

/* Write all structural metadata (what load needs to rebuild the model). */
static int write_meta(es_model *m, es_fwriter *w, int with_state) {
    char buf[256];
    const es_net_params *np = &m->np;
    const es_storage_params *sp = &m->st->p;
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
    rc |= es__fwriter_metaf(w, "model.max_batch", "%d", np->max_batch);
    rc |= es__fwriter_metaf(w, "model.opt", "%d,%.9g,%.9g,%.9g,%.9g", (int)np->opt.kind, np->opt.lr, np->opt.eps, np->opt.beta1,
                           np->opt.beta2);
    rc |= es__fwriter_metaf(w, "model.weight_decay", "%.9g", np->weight_decay);
    rc |= es__fwriter_metaf(w, "model.seed", "%llu", (unsigned long long)np->seed);
    rc |= es__fwriter_meta(w, "storage.method", sp->method);
    rc |= es__fwriter_metaf(w, "storage.dim", "%d", sp->dim);
    rc |= es__fwriter_metaf(w, "storage.budget_bytes", "%.0f", m->st->budget_bytes);
    rc |= es__fwriter_metaf(w, "storage.seed", "%llu", (unsigned long long)sp->seed);
    rc |= es__fwriter_metaf(w, "storage.init_scale", "%.9g", sp->init_scale);
    rc |= es__fwriter_metaf(w, "storage.opt", "%d,%.9g,%.9g,%.9g,%.9g,%.9g", (int)sp->opt.kind, sp->opt.lr, sp->opt.eps,
                           sp->opt.beta1, sp->opt.beta2, sp->opt.init_acc);
    rc |= es__fwriter_meta(w, "storage.opts", sp->opts ? sp->opts : "");
    rc |= es__fwriter_meta(w, "storage.resolved", m->st->meta);
    rc |= es__fwriter_metaf(w, "storage.param_bytes", "%zu", m->st->param_bytes);
    rc |= es__fwriter_metaf(w, "storage.aux_bytes", "%zu", m->st->aux_bytes);
    rc |= es__fwriter_meta(w, "reader.format", es__format_name(m->rp.format));
    rc |= es__fwriter_metaf(w, "reader.delim", "%d", (int)(unsigned char)m->rp.delim);
    rc |= es__fwriter_metaf(w, "reader.header", "%d", m->rp.header);
    rc |= es__fwriter_meta(w, "reader.columns", m->rp.columns ? m->rp.columns : "");
    rc |= es__fwriter_metaf(w, "reader.multi_sep", "%d", (int)(unsigned char)m->rp.multi_sep);
    rc |= es__fwriter_metaf(w, "reader.pool", "%d", (int)m->rp.pool);
    rc |= es__fwriter_metaf(w, "reader.label_threshold", "%.17g", m->rp.label_threshold);
    rc |= es__fwriter_metaf(w, "reader.n_fields_hint", "%d", m->rp.n_fields_hint);
    for (int i = 0; i < m->n_meta; i++) {
        if (strncmp(m->meta_key[i], "train.", 6) == 0 || strncmp(m->meta_key[i], "schema.", 7) == 0 ||
            strncmp(m->meta_key[i], "user.", 5) == 0 || strncmp(m->meta_key[i], "stats.", 6) == 0 ||
            (with_state && strncmp(m->meta_key[i], "ckpt.", 5) == 0))
            rc |= es__fwriter_meta(w, m->meta_key[i], m->meta_val[i]);
    }
    return rc ? ES_ENOMEM : ES_OK;
}

int es__model_save(es_model *m, const char *path, int with_state, es_err *err) {
    es_fwriter *w = NULL;
    tensor_list tl = {0};
    int rc = es__fwriter_open(&w, path, err);
    if (rc != 0) return rc;
    if ((rc = write_meta(m, w, with_state)) != 0) {
        es__err(err, rc, "%s: cannot add metadata", path);
        goto fail;
    }
    if ((rc = list_tensors(m, &tl, err)) != 0) goto fail;
    for (int i = 0; i < tl.n; i++) {
        if (!with_state && is_opt_tensor(tl.names[i])) continue;
        es_tensor_ref t = tl.refs[i];
        snprintf(t.name, sizeof t.name, "%s", tl.names[i]);
        if ((rc = es__fwriter_tensor(w, &t)) != 0) {
            es__err(err, rc, "%s: cannot add tensor %s: %s", path, t.name, es__fwriter_errmsg(w));
            goto fail;
        }
    }
    free_tensors(&tl);
    return es__fwriter_commit(w, err);
fail:
    free_tensors(&tl);
    es__fwriter_abort(w);
    return rc;
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

/* An optimizer record "kind,lr,eps,beta1,beta2[,init_acc]" (n numbers):
 * each a finite number >= 0, the kind a known optimizer. */
static int meta_opt(const char *path, const char *key, const char *s, int n, es_optim_params *o, es_err *err) {
    double v[6];
    int rc = es__meta_f64_list(path, key, s, n, 0, 3.4e38, v, err);
    if (rc) return rc;
    if (v[0] != (int)v[0] || v[0] > ES_OPT_ADAM)
        return es__err(err, ES_EFORMAT, "%s: metadata %s=%.64s: unknown optimizer %.9g", path, key, s, v[0]);
    o->kind = (es_optim)(int)v[0];
    o->lr = (float)v[1];
    o->eps = (float)v[2];
    o->beta1 = (float)v[3];
    o->beta2 = (float)v[4];
    if (n > 5) o->init_acc = (float)v[5];
    return ES_OK;
}

/* Put file tensor `t` (tensor index ti of f) into the model array `dst`
 * (t->nbytes bytes).  When in-place placement is allowed, the file offset
 * and dst are page-aligned and dst is a large block from es__alloc_aligned,
 * the tensor's whole pages are placed without copying: moved from the
 * handle's private copy of the file (es__file_move_pages; the default), or,
 * for a mapped file (ES_LOAD_MAP), mapped copy-on-write from the file
 * (es__alloc_remap).  Only the last partial page is copied; the rest of the
 * block past nbytes stays the allocator's zeros.  Otherwise (small tensors,
 * net parameters carved from one allocation, memory buffers, version-1
 * offsets, ES_NO_REMAP) the bytes are copied.  Adds the bytes placed
 * without copying to m->mapped_bytes. */
static int place_tensor(es_model *m, es_file *f, int ti, const es_tensor_ref *t, void *dst, int inplace, const char *path, es_err *err) {
    size_t whole = t->nbytes & ~(size_t)(ES_FILE_PAGE_ALIGN - 1);
    uint64_t off = es__file_tensor_offset(f, ti);
    if (inplace && whole > 0 && off % ES_FILE_PAGE_ALIGN == 0 && (uintptr_t)dst % ES_FILE_PAGE_ALIGN == 0) {
        const char *src = t->data; /* the tail stays readable after a move */
        int rc = es__file_is_mapped(f) ? es__alloc_remap(dst, whole, es__file_fd(f), off) : es__file_move_pages(f, ti, dst, whole);
        if (rc == ES_OK) {
            memcpy((char *)dst + whole, src + whole, t->nbytes - whole);
            m->mapped_bytes += whole;
            return ES_OK;
        }
        /* ES_EINVAL: the block does not qualify, copy below.  Anything else
         * is a failed mmap/mremap over the block: refuse rather than guess. */
        if (rc != ES_EINVAL) return es__err(err, rc, "%s: cannot place tensor '%s' from the file: %s", path, t->name, strerror(errno));
    }
    memcpy(dst, t->data, t->nbytes);
    return ES_OK;
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
    tensor_list tl = {0};
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
    np.max_batch = meta_int(f, "model.max_batch", 1, 1 << 20, path, err, &rc);
    if (rc) goto done;
    if (np.max_batch <= 0 || np.max_batch > (1 << 20)) {
        rc = es__err(err, ES_EFORMAT, "%s: max_batch %d out of range", path, np.max_batch);
        goto done;
    }
    const char *s;
    double x;
    if ((s = es__file_meta(f, "model.opt")) && (rc = meta_opt(path, "model.opt", s, 5, &np.opt, err))) goto done;
    if ((s = es__file_meta(f, "model.weight_decay"))) {
        if ((rc = es__meta_f64(path, "model.weight_decay", s, 0, 3.4e38, &x, err))) goto done;
        np.weight_decay = (float)x;
    }
    if ((s = es__file_meta(f, "model.seed")) && (rc = es__meta_u64(path, "model.seed", s, 0, UINT64_MAX, &np.seed, err))) goto done;

    es_storage_params sp = es__storage_params_default();
    sp.method = need(f, "storage.method", path, err, &rc);
    sp.dim = meta_int(f, "storage.dim", 1, 65536, path, err, &rc);
    if (rc) goto done;
    sp.n_fields = n_fields;
    sp.max_batch = np.max_batch;
    if ((s = es__file_meta(f, "storage.budget_bytes")) && (rc = es__meta_f64(path, "storage.budget_bytes", s, 0, 1e18, &sp.budget, err))) goto done;
    if ((s = es__file_meta(f, "storage.seed")) && (rc = es__meta_u64(path, "storage.seed", s, 0, UINT64_MAX, &sp.seed, err))) goto done;
    if ((s = es__file_meta(f, "storage.init_scale"))) {
        if ((rc = es__meta_f64(path, "storage.init_scale", s, 0, 3.4e38, &x, err))) goto done;
        sp.init_scale = (float)x;
    }
    if ((s = es__file_meta(f, "storage.opt")) && (rc = meta_opt(path, "storage.opt", s, 6, &sp.opt, err))) goto done;
    /* The resolved hyper-parameters (rows per table, ...) take precedence
     * over budget solving, so the shapes match the saved tensors; files
     * from before the option tables keep min_count, chunks, subtables and
     * share in keys of their own, folded in for the methods that take them. */
    char legacy[160];
    size_t lo = 0;
    static const char *const legacy_keys[] = {"min_count", "chunks", "subtables", "share"};
    legacy[0] = 0;
    for (int i = 0; i < 4; i++) {
        char key[32];
        snprintf(key, sizeof key, "storage.%s", legacy_keys[i]);
        int64_t v;
        if (!(s = es__file_meta(f, key))) continue;
        if ((rc = es__meta_i64(path, key, s, 0, INT32_MAX, &v, err)) != 0) goto done;
        lo += (size_t)snprintf(legacy + lo, sizeof legacy - lo, "%s%s=%lld", lo ? "," : "", legacy_keys[i], (long long)v);
    }
    opts = es__storage_load_opts(sp.method, es__file_meta(f, "storage.resolved"), es__file_meta(f, "storage.opts"), legacy);
    if (!opts) {
        rc = es__err(err, ES_ENOMEM, "out of memory");
        goto done;
    }
    sp.opts = opts;

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
    if ((rc = list_tensors(m, &tl, err)) != 0) goto done;
    const char *no_remap = getenv("ES_NO_REMAP");
    int remap = es__file_fd(f) >= 0 && sysconf(_SC_PAGESIZE) == ES_FILE_PAGE_ALIGN && !(no_remap && *no_remap && strcmp(no_remap, "0") != 0);
    for (int i = 0; i < tl.n; i++) {
        int opt = is_opt_tensor(tl.names[i]);
        const es_tensor_ref *t = es__file_tensor(f, tl.names[i]);
        if (!t) {
            if (opt && !with_state) continue;
            rc = es__err(err, ES_EFORMAT, "%s: tensor '%s' is missing", path, tl.names[i]);
            goto done;
        }
        if (opt && !with_state) continue;
        if (t->dtype != tl.refs[i].dtype || t->nbytes != tl.refs[i].nbytes) {
            rc = es__err(err, ES_EFORMAT, "%s: tensor '%s' has %s x %zu bytes, the model expects %s x %zu bytes", path, tl.names[i],
                         es__dtype_name(t->dtype), t->nbytes, es__dtype_name(tl.refs[i].dtype), tl.refs[i].nbytes);
            goto done;
        }
        int ti = (int)(t - es__file_tensor_at(f, 0)); /* es__file_tensor points into the table es__file_tensor_at indexes */
        ES_ASSERT(es__file_tensor_at(f, ti) == t);
        if ((rc = place_tensor(m, f, ti, t, tl.refs[i].data, remap, path, err)) != 0) goto done;
    }
    if (m->st->ops->after_load && (rc = m->st->ops->after_load(m->st, err)) != 0) goto done;
    *out = m;
    m = NULL;
done:
    es__free(opts);
    free_tensors(&tl);
    es_model_free(m);
    es__file_close(f);
    return rc;
}

int es_model_load(es_model **out, const char *path, unsigned flags, es_err *err) {
    return es__model_load(out, path, flags, 0, err);
}
