/*
 * step.c — the step-level model API (embstore.h, "The step-level model
 * API"): model parameters, create, set_reader, save, checkpoints, public
 * metadata and sizes.  The per-batch steps (train, eval, predict) live in
 * model.c next to the buffers they use.  es_train (train.c) is a driver
 * over exactly these calls, so a program that loops over them with the
 * same settings gets the same bits.
 */
#include "model.h"

#include "data/schema.h"
#include "train/integrity.h"

#include <math.h>

es_model_params es_model_params_default(void) {
    es_model_params p;
    memset(&p, 0, sizeof p);
    p.model = "dlrm";
    p.dim = 16;
    p.storage = "unified";
    p.batch = 256;
    p.lr = 1e-3f;
    p.emb_lr = 0.05f;
    p.optim = "adam";
    p.emb_optim = "rowwise";
    p.ftrl_alpha = 0.05f;
    p.ftrl_beta = 0.01f;
    p.seed = 1;
    return p;
}

es_model_params es_model_params_from_train(const es_train_params *tp, int n_dense, int n_fields) {
    es_train_params tr = *tp; /* its automatic values as es_train resolves them */
    es_train_params_resolve(&tr);
    const es_train_params *t = &tr;
    es_model_params p = es_model_params_default();
    p.model = t->model;
    p.dim = t->dim;
    p.n_bottom = t->n_bottom;
    p.n_top = t->n_top;
    p.n_cross = t->n_cross;
    p.norm_rows = t->norm_rows;
    p.pairs_only = t->pairs_only;
    if (t->n_bottom > 0 && t->n_bottom <= 8) memcpy(p.bottom, t->bottom, sizeof p.bottom);
    if (t->n_top > 0 && t->n_top <= 8) memcpy(p.top, t->top, sizeof p.top);
    p.n_dense = n_dense;
    p.n_fields = n_fields;
    p.storage = t->storage;
    p.budget = t->budget;
    p.storage_opts = t->storage_opts;
    p.batch = t->batch;
    p.lr = t->lr;
    p.emb_lr = t->emb_lr;
    p.optim = t->optim;
    p.emb_optim = t->emb_optim;
    p.emb_l2 = t->emb_l2;
    p.emb_l2_freq = t->emb_l2_freq;
    p.emb_init_acc = t->emb_init_acc;
    p.emb_init_scale = t->emb_init_scale;
    p.emb_init_shift = t->emb_init_shift;
    p.ftrl_alpha = t->ftrl_alpha;
    p.ftrl_beta = t->ftrl_beta;
    p.ftrl_l1 = t->ftrl_l1;
    p.ftrl_l2 = t->ftrl_l2;
    p.weight_decay = t->weight_decay;
    p.dropout = t->dropout;
    p.precision = t->precision;
    p.qtrain = t->qtrain;
    p.seed = t->seed;
    p.matryoshka = t->matryoshka;
    p.matryoshka_weights = t->matryoshka_weights;
    return p;
}

int es__parse_prefix_list(const char *s, int *v, int max) {
    int n = 0;
    if (!s || !*s) return -1;
    for (;;) {
        const char *q = strchr(s, ',');
        size_t len = q ? (size_t)(q - s) : strlen(s);
        long long x;
        if (n >= max || len == 0 || !(*s >= '0' && *s <= '9') || !es__parse_long(s, len, &x) || x < 1 || x > 4096) return -1;
        v[n++] = (int)x;
        if (!q) return n;
        s = q + 1;
    }
}

int es__parse_prefix_weights(const char *s, float *v, int max) {
    int n = 0;
    if (!s || !*s) return -1;
    for (;;) {
        const char *q = strchr(s, ',');
        size_t len = q ? (size_t)(q - s) : strlen(s);
        double x;
        if (n >= max || len == 0 || !es__parse_double(s, len, &x) || !(x >= 0) || !isfinite(x) || x > 1e6) return -1;
        v[n++] = (float)x;
        if (!q) return n;
        s = q + 1;
    }
}

/* --matryoshka / --matryoshka-weights into np (kind and dim set). */
static int resolve_prefixes(const es_model_params *p, es_net_params *np, es_err *err) {
    if (!p->matryoshka || !*p->matryoshka) {
        if (p->matryoshka_weights && *p->matryoshka_weights)
            return es__err(err, ES_EINVAL, "matryoshka weights '%.64s' given without matryoshka prefixes", p->matryoshka_weights);
        return ES_OK;
    }
    if (np->kind == ES_NET_LR)
        return es__err(err, ES_EINVAL, "matryoshka prefixes need an embedding dimension: lr has one weight per value (dim 1); "
                                       "use fm, ffm, dlrm or dcn");
    int n = es__parse_prefix_list(p->matryoshka, np->prefix, ES_NET_MAX_PREFIX);
    if (n < 1)
        return es__err(err, ES_EINVAL, "matryoshka prefixes '%.64s': expected up to %d comma-separated dimensions, e.g. 2,4,8,16",
                       p->matryoshka, ES_NET_MAX_PREFIX);
    for (int i = 0; i < n; i++) {
        if (np->prefix[i] > np->dim)
            return es__err(err, ES_EINVAL, "matryoshka prefix %d is larger than dim %d", np->prefix[i], np->dim);
        if (i > 0 && np->prefix[i] <= np->prefix[i - 1])
            return es__err(err, ES_EINVAL, "matryoshka prefixes '%.64s' must increase strictly", p->matryoshka);
    }
    if (np->prefix[n - 1] != np->dim)
        return es__err(err, ES_EINVAL, "the last matryoshka prefix (%d) must equal dim (%d)", np->prefix[n - 1], np->dim);
    for (int i = 0; i < n; i++) np->prefix_w[i] = 1.0f; /* Kusupati et al.: c_m = 1 */
    if (p->matryoshka_weights && *p->matryoshka_weights) {
        float w[ES_NET_MAX_PREFIX];
        int nw = es__parse_prefix_weights(p->matryoshka_weights, w, ES_NET_MAX_PREFIX);
        if (nw != n)
            return es__err(err, ES_EINVAL, "matryoshka weights '%.64s': expected %d finite weights >= 0, one per prefix",
                           p->matryoshka_weights, n);
        double sum = 0;
        for (int i = 0; i < n; i++) sum += w[i];
        if (!(sum > 0)) return es__err(err, ES_EINVAL, "matryoshka weights '%.64s' are all 0", p->matryoshka_weights);
        memcpy(np->prefix_w, w, sizeof(float) * (size_t)n);
    }
    np->n_prefix = n;
    return ES_OK;
}

int es__model_params_resolve(const es_model_params *p, es_net_params *np, es_storage_params *sp, es_err *err) {
    if (p->batch <= 0 || p->batch > (1 << 20)) return es__err(err, ES_EINVAL, "batch size %d out of range [1, 2^20]", p->batch);
    if (p->dim <= 0 || p->dim > 4096) return es__err(err, ES_EINVAL, "dim %d out of range [1, 4096]", p->dim);
    if (p->n_dense < 0 || p->n_fields < 1)
        return es__err(err, ES_EINVAL, "a model needs n_fields >= 1 and n_dense >= 0, got %d and %d", p->n_fields, p->n_dense);
    if (p->n_bottom < 0 || p->n_bottom > 8 || p->n_top < 0 || p->n_top > 8 || p->n_cross < 0)
        return es__err(err, ES_EINVAL, "layer counts out of range (bottom %d, top %d: at most 8; cross %d)", p->n_bottom, p->n_top,
                       p->n_cross);
    es_net_kind kind;
    if (es__net_kind_parse(p->model, &kind) != 0)
        return es__err(err, ES_EINVAL, "unknown model '%s' (expected lr, fm, ffm, dlrm or dcn)", p->model ? p->model : "");
    if (!(p->dropout >= 0.0f && p->dropout < 1.0f))
        return es__err(err, ES_EINVAL, "dropout %g out of range [0, 1)", (double)p->dropout);
    if (p->dropout > 0.0f && kind != ES_NET_DLRM && kind != ES_NET_DCN)
        return es__err(err, ES_EINVAL, "dropout is for the MLPs of dlrm and dcn; model '%s' has none (leave it 0)", p->model);
    es_optim dense_opt, emb_opt;
    if (es__optim_parse(p->optim ? p->optim : "adam", &dense_opt) != 0 || dense_opt == ES_OPT_ROWWISE_ADAGRAD)
        return es__err(err, ES_EINVAL, "unknown dense optimizer '%s' (expected adam, adagrad or sgd)", p->optim);
    if (es__optim_parse(p->emb_optim ? p->emb_optim : "rowwise", &emb_opt) != 0 || emb_opt == ES_OPT_ADAM)
        return es__err(err, ES_EINVAL, "unknown table optimizer '%s' (expected rowwise, adagrad, sgd or ftrl)", p->emb_optim);
    if (!p->storage || !es__storage_find(p->storage))
        return es__err(err, ES_EINVAL, "unknown storage method '%s'", p->storage ? p->storage : "");
    /* No budget: the method's default (ES_DEFAULT_BUDGET for the methods
     * sized by one, unless an option such as rows= sizes the table), so
     * that `train FILE` works with the default method.  Bad options fail
     * here, before any data is read. */
    double budget = p->budget;
    int rc = p->budget == 0 ? es__storage_default_budget(p->storage, p->storage_opts, &budget, err) : ES_OK;
    if (rc != ES_OK) return rc;
    if (!np) {
        if (sp) sp->budget = budget;
        return ES_OK;
    }

    *np = es__net_params_default(kind, p->n_dense, p->n_fields, p->dim);
    if (p->n_bottom > 0) {
        np->n_bottom = p->n_bottom;
        memcpy(np->bottom, p->bottom, sizeof(int) * (size_t)p->n_bottom);
    }
    if (p->n_top > 0) {
        np->n_top = p->n_top;
        memcpy(np->top, p->top, sizeof(int) * (size_t)p->n_top);
    }
    if (p->n_cross > 0) np->n_cross = p->n_cross;
    np->norm_rows = p->norm_rows;
    np->pairs_only = p->pairs_only;
    np->max_batch = p->batch;
    np->opt.kind = dense_opt;
    np->opt.lr = p->lr;
    if (dense_opt == ES_OPT_ADAGRAD) np->opt.eps = 1e-10f; /* torch.optim.Adagrad's default */
    np->weight_decay = p->weight_decay;
    np->dropout = p->dropout;
    np->seed = es__mix64(p->seed ^ 0x6e6574ULL);
    if ((rc = resolve_prefixes(p, np, err)) != ES_OK) return rc;

    *sp = es__storage_params_default();
    sp->method = p->storage;
    sp->n_fields = p->n_fields;
    sp->dim = es__net_emb_dim(kind, p->n_fields, p->dim);
    sp->max_batch = p->batch;
    sp->budget = budget;
    sp->seed = p->seed;
    sp->opts = p->storage_opts;
    sp->opt.lr = p->emb_lr;
    sp->opt.kind = emb_opt;
    sp->opt.row_l2 = p->emb_l2;
    sp->opt.row_l2_freq = p->emb_l2_freq;
    sp->opt.ftrl_alpha = p->ftrl_alpha;
    sp->opt.ftrl_beta = p->ftrl_beta;
    sp->opt.ftrl_l1 = p->ftrl_l1;
    sp->opt.ftrl_l2 = p->ftrl_l2;
    if (kind == ES_NET_LR) sp->init_scale = 0.0f; /* LR weights start at zero */
    if (!(p->emb_init_acc >= 0) || !isfinite(p->emb_init_acc) || !(p->emb_init_scale >= 0) || !isfinite(p->emb_init_scale))
        return es__err(err, ES_EINVAL, "emb_init_acc %g and emb_init_scale %g must be finite and >= 0", (double)p->emb_init_acc,
                       (double)p->emb_init_scale);
    sp->opt.init_acc = p->emb_init_acc;
    if (p->emb_init_scale > 0) sp->init_scale = p->emb_init_scale;
    if (!isfinite(p->emb_init_shift)) return es__err(err, ES_EINVAL, "emb_init_shift %g must be finite", (double)p->emb_init_shift);
    sp->init_shift = p->emb_init_shift;
    sp->precision = ES_PREC_FP32;
    sp->qtrain = ES_QTRAIN_NONE;
    if (p->precision && es__prec_parse(p->precision, &sp->precision) != ES_OK)
        return es__err(err, ES_EINVAL, "unknown precision '%.32s' (expected fp32, fp16, int16, int8, int4 or int2)", p->precision);
    if (p->qtrain && (es__qtrain_parse(p->qtrain, &sp->qtrain) != ES_OK || sp->qtrain == ES_QTRAIN_NONE))
        return es__err(err, ES_EINVAL, "unknown qtrain '%.32s' (expected qat or alpt)", p->qtrain);
    if (sp->precision == ES_PREC_FP32 && sp->qtrain != ES_QTRAIN_NONE)
        return es__err(err, ES_EINVAL, "qtrain %s needs a precision below fp32 (--precision)", p->qtrain);
    if (sp->precision != ES_PREC_FP32 && sp->qtrain == ES_QTRAIN_NONE) sp->qtrain = ES_QTRAIN_QAT;
    if (sp->qtrain == ES_QTRAIN_ALPT && sp->precision == ES_PREC_FP16)
        return es__err(err, ES_EINVAL, "qtrain alpt learns the step of integer codes: use int16, int8, int4 or int2, or qtrain qat for fp16");
    return ES_OK;
}

int es__model_check_memory(const es_net_params *np, const es_storage_params *sp, const es_vocab *vocab, es_err *err) {
    double full = vocab ? (double)es__storage_full_bytes(vocab, sp->dim, es__storage_min_count(sp)) : 0;
    double tb = sp->budget > 1 ? sp->budget : sp->budget > 0 ? sp->budget * full : full;
    return es__train_check_memory(np, sp, tb, err);
}

int es_model_create(es_model **out, const es_model_params *p, const es_vocab *vocab, es_err *err) {
    *out = NULL;
    es_net_params np;
    es_storage_params sp;
    int rc = es__model_params_resolve(p, &np, &sp, err);
    if (rc != ES_OK) return rc;
    /* refused before anything is allocated when the machine cannot hold it */
    if ((rc = es__model_check_memory(&np, &sp, vocab, err)) != ES_OK) return rc;
    es_reader_params rp = es_reader_params_default();
    return es__model_create(out, &np, &sp, vocab, &rp, err);
}

/* "a,b,c" of n names from get(r, i). */
static int set_names(es_model *m, const char *key, const es_reader *r, int n, const char *(*get)(const es_reader *, int)) {
    size_t cap = 1, o = 0;
    for (int i = 0; i < n; i++) cap += strlen(get(r, i)) + 1;
    char *s = es__malloc(cap);
    if (!s) return ES_ENOMEM;
    s[0] = 0;
    for (int i = 0; i < n; i++) o += (size_t)snprintf(s + o, cap - o, i ? ",%s" : "%s", get(r, i));
    int rc = es__model_set_meta(m, key, s);
    es__free(s);
    return rc;
}

int es_model_set_reader(es_model *m, const es_reader *r) {
    if (es_reader_n_dense(r) != m->n_dense || es_reader_n_fields(r) != m->n_fields)
        return es__err(&m->err, ES_EINVAL, "the reader has %d numeric and %d categorical columns, the model %d and %d",
                       es_reader_n_dense(r), es_reader_n_fields(r), m->n_dense, m->n_fields);
    /* the detected format and delimiter are kept, so the model reads files
     * of any name the same way */
    es_reader_params rp = es_reader_resolved_params(r);
    char *cols = rp.columns ? es__strdup(rp.columns) : NULL;
    if (rp.columns && !cols) return es__err(&m->err, ES_ENOMEM, "out of memory");
    es__free(m->rp_columns);
    m->rp = rp;
    m->rp.columns = m->rp_columns = cols;
    int rc = set_names(m, "schema.fields", r, m->n_fields, es_reader_field_name);
    if (rc == ES_OK) rc = set_names(m, "schema.dense", r, m->n_dense, es_reader_dense_name);
    /* the label column's name: eval/predict find a CSV's columns by name */
    if (rc == ES_OK && es__reader_label_name(r)) rc = es__model_set_meta(m, "schema.label", es__reader_label_name(r));
    return rc == ES_OK ? ES_OK : es__err(&m->err, rc, "out of memory");
}

int es_model_save(es_model *m, const char *path, unsigned flags) {
    if (!path) return es__err(&m->err, ES_EINVAL, "no output path");
    return es__model_save(m, path, (flags & ES_SAVE_STATE) != 0, &m->err);
}

int es_model_checkpoint_save(es_model *m, const char *path, const es_checkpoint *pos) {
    if (pos->epoch < 0 || !isfinite(pos->loss_sum) || pos->loss_sum < 0)
        return es__err(&m->err, ES_EINVAL, "checkpoint position out of range (epoch %d, loss sum %g)", pos->epoch, pos->loss_sum);
    char v[64];
    int rc = ES_OK;
    snprintf(v, sizeof v, "%d", pos->epoch);
    rc |= es__model_set_meta(m, "ckpt.epoch", v);
    snprintf(v, sizeof v, "%llu", (unsigned long long)pos->rows);
    rc |= es__model_set_meta(m, "ckpt.rows", v);
    snprintf(v, sizeof v, "%.17g", pos->loss_sum);
    rc |= es__model_set_meta(m, "ckpt.loss_sum", v);
    snprintf(v, sizeof v, "%llu", (unsigned long long)pos->trained);
    rc |= es__model_set_meta(m, "ckpt.trained", v);
    if (rc) return es__err(&m->err, ES_ENOMEM, "out of memory");
    return es__model_save(m, path, 1, &m->err);
}

/* A checkpoint's number: the whole string an integer in [lo, hi]. */
static int ckpt_int(const es_model *m, const char *ckpt, const char *key, long long lo, long long hi, long long *out, es_err *err) {
    const char *v = es_model_meta(m, key);
    int64_t x;
    if (!v) return es__err(err, ES_EFORMAT, "%s: not a complete training checkpoint (no %s)", ckpt, key);
    int rc = es__meta_i64(ckpt, key, v, lo, hi, &x, err);
    if (rc == ES_OK) *out = x;
    return rc;
}

int es_model_checkpoint_load(es_model **out, const char *path, es_checkpoint *pos, es_err *err) {
    return es__model_checkpoint_load(out, path, pos, 0, err);
}

int es__model_checkpoint_load(es_model **out, const char *path, es_checkpoint *pos, unsigned flags, es_err *err) {
    es_model *m = NULL;
    *out = NULL;
    int rc = es__model_load(&m, path, flags, 1, err);
    if (rc == ES_EFORMAT) {
        /* a model file saved without optimizer state: say that, rather
         * than which tensor it lacks */
        es_err e2 = {0};
        if (es__model_load(&m, path, flags | ES_LOAD_NO_VERIFY, 0, &e2) == ES_OK && !es_model_meta(m, "ckpt.epoch"))
            es__err(err, rc, "%s: not a training checkpoint (a model file without optimizer state)", path);
        es_model_free(m);
        return rc;
    }
    if (rc != ES_OK) return rc;
    long long ep, rows, trained;
    const char *v = es_model_meta(m, "ckpt.loss_sum");
    if (!es_model_meta(m, "ckpt.epoch")) {
        rc = es__err(err, ES_EFORMAT, "%s: not a training checkpoint (no ckpt.epoch)", path);
    } else if ((rc = ckpt_int(m, path, "ckpt.epoch", 0, 100000000, &ep, err)) != ES_OK ||
               (rc = ckpt_int(m, path, "ckpt.rows", 0, INT64_MAX, &rows, err)) != ES_OK ||
               (rc = ckpt_int(m, path, "ckpt.trained", 0, INT64_MAX, &trained, err)) != ES_OK) {
        /* message set */
    } else if (!v) {
        rc = es__err(err, ES_EFORMAT, "%s: not a complete training checkpoint (no ckpt.loss_sum)", path);
    } else {
        rc = es__meta_f64(path, "ckpt.loss_sum", v, 0, 1e300, &pos->loss_sum, err);
    }
    if (rc != ES_OK) {
        es_model_free(m);
        return rc;
    }
    pos->epoch = (int)ep;
    pos->rows = (uint64_t)rows;
    pos->trained = (uint64_t)trained;
    *out = m;
    return ES_OK;
}

int es_model_set_meta(es_model *m, const char *key, const char *value) {
    if (!key || !value || strncmp(key, "user.", 5) != 0 || !key[5])
        return es__err(&m->err, ES_EINVAL, "metadata key '%s': applications set keys under \"user.\" only", key ? key : "(null)");
    if (es__model_set_meta(m, key, value) != ES_OK) return es__err(&m->err, ES_ENOMEM, "out of memory");
    return ES_OK;
}

size_t es_model_table_bytes(const es_model *m) { return m->st->param_bytes + m->st->aux_bytes; }
size_t es_model_table_state_bytes(const es_model *m) { return m->st->state_bytes; }
size_t es_model_net_bytes(const es_model *m) { return es__net_param_bytes(m->net); }
