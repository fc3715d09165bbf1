/*
 * train.c — the training loop and file-level evaluation/prediction.
 *
 * es_train, in passes over the training file (streamed, never loaded):
 *   1. count   rows (only when a validation fraction must be held out:
 *              the split is by position, the last valid_frac of rows);
 *   2. vocab   value counts of the training rows (for `full`, for budgets
 *              given as a fraction of the full table, and for statistics);
 *   3. train   `epochs` passes in file order, one optimizer step per batch;
 *   4. eval    predictions on the held-out rows or the validation file.
 * Memory: model + optimizer state + vocabulary + one batch (+ the
 * validation predictions, 8 bytes per validation row).
 */
#include "model.h"

#include "core/fileid.h"
#include "data/schema.h"
#include "train/integrity.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>

es_train_params es_train_params_default(void) {
    es_train_params p;
    memset(&p, 0, sizeof p);
    p.reader = es_reader_params_default();
    p.model = "dlrm";
    p.dim = 16;
    p.storage = "unified";
    p.budget = 0;
    p.min_count = 1;
    p.chunks = 1;
    p.subtables = 1;
    p.epochs = 1;
    p.batch = 256;
    p.lr = 1e-3f;
    p.emb_lr = 0.05f;
    p.optim = "adam";
    p.emb_optim = "rowwise";
    p.threads = 1;
    p.seed = 1;
    return p;
}

es_storage_params es__train_storage_params(const es_train_params *p, es_net_kind kind, int n_fields) {
    es_storage_params sp = es__storage_params_default();
    sp.method = p->storage;
    sp.n_fields = n_fields;
    sp.dim = es__net_emb_dim(kind, p->dim);
    sp.max_batch = p->batch;
    sp.budget = p->budget;
    sp.seed = p->seed;
    sp.min_count = p->min_count > 0 ? p->min_count : 1;
    sp.chunks = p->chunks > 0 ? p->chunks : 1;
    sp.subtables = p->subtables > 0 ? p->subtables : 1;
    sp.share = p->share;
    sp.opts = p->storage_opts;
    sp.opt.lr = p->emb_lr;
    if (kind == ES_NET_LR) sp.init_scale = 0.0f; /* LR weights start at zero */
    return sp;
}

/* Read at most `limit` rows into b (b->cap is the batch size). */
static int read_limited(es_reader *r, es_batch *b, uint64_t limit) {
    if (limit == 0) {
        b->n = 0;
        return 0;
    }
    if (limit >= (uint64_t)b->cap) return es_reader_next(r, b);
    es_batch tmp = *b;
    tmp.cap = (int)limit;
    int rc = es_reader_next(r, &tmp);
    /* the reader may have grown the value arrays */
    b->val = tmp.val;
    b->wt = tmp.wt;
    b->val_cap = tmp.val_cap;
    b->n = tmp.n;
    return rc;
}

/* ---- parse pipeline ------------------------------------------------------------
 * A reader thread fills batch k+1 while the trainer works on batch k, so
 * parsing overlaps with compute.  Two slots, filled and consumed in
 * alternation: the order of batches (and so the result) is the same as
 * reading inline. */
typedef struct {
    es_reader *r;
    es_batch slot[2];
    int full[2];
    int cur;           /* consumer's slot */
    int done, rc;      /* producer finished (rc < 0: reader error) */
    uint64_t limit;    /* rows to deliver */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t th;
    int running, stop;
} pipeline;

static void *pipeline_main(void *arg) {
    pipeline *pl = arg;
    uint64_t produced = 0;
    int k = 0;
    for (;;) {
        pthread_mutex_lock(&pl->mu);
        while (pl->full[k] && !pl->stop) pthread_cond_wait(&pl->cv, &pl->mu);
        int stop = pl->stop;
        pthread_mutex_unlock(&pl->mu);
        if (stop) break;
        int n = read_limited(pl->r, &pl->slot[k], pl->limit - produced);
        pthread_mutex_lock(&pl->mu);
        if (n <= 0) {
            pl->rc = n;
            pl->done = 1;
            pthread_cond_broadcast(&pl->cv);
            pthread_mutex_unlock(&pl->mu);
            break;
        }
        produced += (uint64_t)n;
        pl->full[k] = 1;
        pthread_cond_broadcast(&pl->cv);
        pthread_mutex_unlock(&pl->mu);
        k ^= 1;
    }
    return NULL;
}

static int pipeline_init(pipeline *pl, int cap, int n_dense, int n_fields) {
    memset(pl, 0, sizeof *pl);
    size_t vals = (size_t)cap * (size_t)(n_fields + 1);
    if (es_batch_alloc(&pl->slot[0], cap, n_dense, n_fields, vals) != 0 ||
        es_batch_alloc(&pl->slot[1], cap, n_dense, n_fields, vals) != 0) {
        es_batch_free(&pl->slot[0]);
        es_batch_free(&pl->slot[1]);
        return ES_ENOMEM;
    }
    pthread_mutex_init(&pl->mu, NULL);
    pthread_cond_init(&pl->cv, NULL);
    return ES_OK;
}

/* Start delivering up to `limit` rows from the reader's current position. */
static int pipeline_start(pipeline *pl, es_reader *r, uint64_t limit) {
    pl->r = r;
    pl->limit = limit;
    pl->full[0] = pl->full[1] = 0;
    pl->cur = 0;
    pl->done = pl->rc = pl->stop = 0;
    if (pthread_create(&pl->th, NULL, pipeline_main, pl) != 0) return ES_ENOMEM;
    pl->running = 1;
    return ES_OK;
}

/* Next batch (NULL at the end or on error: see pl->rc). */
static es_batch *pipeline_next(pipeline *pl) {
    pthread_mutex_lock(&pl->mu);
    while (!pl->full[pl->cur] && !pl->done) pthread_cond_wait(&pl->cv, &pl->mu);
    es_batch *b = pl->full[pl->cur] ? &pl->slot[pl->cur] : NULL;
    pthread_mutex_unlock(&pl->mu);
    return b;
}

static void pipeline_release(pipeline *pl) {
    pthread_mutex_lock(&pl->mu);
    pl->full[pl->cur] = 0;
    pl->cur ^= 1;
    pthread_cond_broadcast(&pl->cv);
    pthread_mutex_unlock(&pl->mu);
}

static void pipeline_stop(pipeline *pl) {
    if (!pl->running) return;
    pthread_mutex_lock(&pl->mu);
    pl->stop = 1;
    pthread_cond_broadcast(&pl->cv);
    pthread_mutex_unlock(&pl->mu);
    pthread_join(pl->th, NULL);
    pl->running = 0;
}

static void pipeline_free(pipeline *pl) {
    pipeline_stop(pl);
    es_batch_free(&pl->slot[0]);
    es_batch_free(&pl->slot[1]);
    pthread_mutex_destroy(&pl->mu);
    pthread_cond_destroy(&pl->cv);
}

static int parse_optim(const char *s, es_optim *out) {
    if (!s || !strcmp(s, "adam")) *out = ES_OPT_ADAM;
    else if (!strcmp(s, "sgd")) *out = ES_OPT_SGD;
    else if (!strcmp(s, "adagrad")) *out = ES_OPT_ADAGRAD;
    else if (!strcmp(s, "rowwise") || !strcmp(s, "rowwise-adagrad")) *out = ES_OPT_ROWWISE_ADAGRAD;
    else return ES_EINVAL;
    return ES_OK;
}

typedef struct {
    const es_train_params *p;
    double last_report;
    es_progress pr;
} progress_state;

static void report(progress_state *ps, int force) {
    if (!ps->p->progress) return;
    double now = es__now();
    if (!force && now - ps->last_report < 0.25) return;
    ps->last_report = now;
    ps->p->progress(&ps->pr, ps->p->progress_ctx);
}

static int reader_err(es_err *err, es_reader *r, int rc) {
    return es__err(err, rc, "%s", es_reader_errmsg(r));
}

/* Predict every row the reader yields (after skipping `skip` rows, up to
 * `limit` rows); probabilities and labels are appended to growing arrays. */
typedef struct {
    float *p, *y;
    size_t n, cap;
} pred_set;

static int pred_push(pred_set *s, const float *p, const float *y, int n) {
    if (s->n + (size_t)n > s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 4096;
        while (cap < s->n + (size_t)n) cap *= 2;
        float *np = es__realloc(s->p, cap * sizeof(float));
        if (!np) return ES_ENOMEM;
        s->p = np;
        float *ny = es__realloc(s->y, cap * sizeof(float));
        if (!ny) return ES_ENOMEM;
        s->y = ny;
        s->cap = cap;
    }
    memcpy(s->p + s->n, p, (size_t)n * sizeof(float));
    memcpy(s->y + s->n, y, (size_t)n * sizeof(float));
    s->n += (size_t)n;
    return ES_OK;
}

static int predict_stream(es_model *m, es_reader *r, es_batch *b, float *prob, uint64_t skip, uint64_t limit, pred_set *out,
                          es_err *err) {
    uint64_t seen = 0;
    while (seen < skip) {
        int n = read_limited(r, b, skip - seen);
        if (n < 0) return reader_err(err, r, n);
        if (n == 0) break;
        seen += (uint64_t)n;
    }
    uint64_t done = 0;
    for (;;) {
        int n = read_limited(r, b, limit ? limit - done : (uint64_t)b->cap);
        if (n < 0) return reader_err(err, r, n);
        if (n == 0) break;
        int rc = es_model_predict(m, b, prob);
        if (rc != 0) return es__err(err, rc, "%s", es_model_errmsg(m));
        if ((rc = pred_push(out, prob, b->label, n)) != 0) return es__err(err, rc, "out of memory for predictions");
        done += (uint64_t)n;
        if (limit && done >= limit) break;
    }
    return ES_OK;
}

static void metrics_json(char *buf, size_t cap, const es_metrics *mt) {
    snprintf(buf, cap, "{\"auc\":%.6f,\"logloss\":%.6f,\"calibration\":%.4f,\"rows\":%llu}", mt->auc, mt->logloss, mt->calibration,
             (unsigned long long)mt->rows);
}

/* ---- integrity of a run ----------------------------------------------------------
 * A pass over a file that changed under the trainer would train or
 * evaluate on rows the run then reports as if it had read them.  Every pass
 * re-checks the file (stat: device, inode, size, modification time) and its
 * row count against the first pass; a failure names the file and what
 * changed. */

/* A reader error during a pass: when the file changed, say that (a
 * truncated last line is a symptom, not the cause). */
static int pass_err(es_err *err, es_reader *r, int rc, const char *path, const es__file_id *id) {
    if (es__file_id_recheck(path, id, "after a read error", err) != ES_OK) return ES_EIO;
    return reader_err(err, r, rc);
}

static int rows_changed(es_err *err, const char *path, const char *pass, uint64_t got, uint64_t want) {
    return es__err(err, ES_EIO,
                   "%s: %s read %llu rows where the first pass read %llu: the file changed while it was being read; "
                   "the run stops rather than report results of rows it never read (train on a copy that nothing "
                   "writes to)",
                   path, pass, (unsigned long long)got, (unsigned long long)want);
}

/* Bad lines (skip_bad) of one pass: every pass starts at the top of the
 * file, so the pass that read furthest saw every bad line the run met. */
static void note_bad_lines(const es_reader *r, uint64_t *count, char *report, size_t cap) {
    uint64_t n = es_reader_bad_lines(r);
    if (n <= *count) return;
    *count = n;
    snprintf(report, cap, "%s", es_reader_bad_report(r));
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

int es_train(const es_train_params *p, es_train_result *res, es_err *err) {
    memset(res, 0, sizeof *res);
    /* No budget: the methods that size their table from one get
     * ES_DEFAULT_BUDGET (a fraction of the full table), so that `train FILE`
     * works with the default method.  full sizes itself exactly and mde
     * solves without one; method options (k=, rows=, ...) may size a table
     * on their own, so they are left to the method. */
    es_train_params with_budget;
    if (p && p->budget == 0 && p->storage && strcmp(p->storage, "full") != 0 && strcmp(p->storage, "mde") != 0 &&
        !(p->storage_opts && *p->storage_opts)) {
        with_budget = *p;
        with_budget.budget = ES_DEFAULT_BUDGET;
        p = &with_budget;
    }
    double t_start = es__now();
    es_reader *r = NULL, *rv = NULL;
    es_vocab *vocab = NULL;
    es_model *m = NULL;
    es_batch b = {0};
    float *prob = NULL;
    pred_set ps_valid = {0};
    pipeline pl;
    memset(&pl, 0, sizeof pl);
    char ckpt_buf[4096];
    const char *ckpt = NULL;
    char *cfg = NULL;
    es__file_id tid, vid;
    uint64_t bad_train = 0;
    char bad_rep[sizeof res->bad_report] = "";
    int pl_ready = 0;
    int rc;
    progress_state ps = {.p = p};

    if (!p->train_path) return es__err(err, ES_EINVAL, "no training file given");
    if (!(p->valid_frac >= 0 && p->valid_frac < 1)) return es__err(err, ES_EINVAL, "valid fraction %g not in [0, 1)", p->valid_frac);
    if (p->batch <= 0 || p->batch > (1 << 20)) return es__err(err, ES_EINVAL, "batch size %d out of range", p->batch);
    if (p->epochs <= 0) return es__err(err, ES_EINVAL, "epochs must be positive");
    if (p->dim <= 0 || p->dim > 4096) return es__err(err, ES_EINVAL, "dim %d out of range [1, 4096]", p->dim);
    es_net_kind kind;
    if (es__net_kind_parse(p->model, &kind) != 0)
        return es__err(err, ES_EINVAL, "unknown model '%s' (expected lr, fm, dlrm or dcn)", p->model ? p->model : "");
    es_optim dense_opt, emb_opt;
    if (parse_optim(p->optim, &dense_opt) != 0 || dense_opt == ES_OPT_ROWWISE_ADAGRAD)
        return es__err(err, ES_EINVAL, "unknown dense optimizer '%s' (expected adam, adagrad or sgd)", p->optim);
    if (parse_optim(p->emb_optim ? p->emb_optim : "rowwise", &emb_opt) != 0 || emb_opt == ES_OPT_ADAM)
        return es__err(err, ES_EINVAL, "unknown table optimizer '%s' (expected rowwise, adagrad or sgd)", p->emb_optim);
    res->threads = es__threads_set(p->threads);

    if ((rc = es_reader_open(&r, p->train_path, &p->reader, err)) != 0) return rc;
    /* the identity the file must keep while it is read */
    if ((rc = es__file_id_get(p->train_path, 0, &tid, err)) != 0) goto done;
    int n_dense = es_reader_n_dense(r), n_fields = es_reader_n_fields(r);
    if ((rc = es__reader_require_fields(r, p->train_path, err)) != 0) goto done;
    if ((rc = es_batch_alloc(&b, p->batch, n_dense, n_fields, (size_t)p->batch * (size_t)(n_fields + 1))) != 0) {
        es__err(err, rc, "out of memory for a batch of %d rows", p->batch);
        goto done;
    }
    /* what decides the result: recorded in checkpoints, compared on resume */
    {
        es_reader_params rrp = es_reader_resolved_params(r);
        rrp.columns = p->reader.columns;
        size_t cap = 8192;
        if (!(cfg = es__malloc(cap))) {
            rc = es__err(err, ES_ENOMEM, "out of memory");
            goto done;
        }
        if ((rc = es__train_describe(p, &rrp, cfg, cap, err)) != 0) goto done;
    }

    /* pass 1 (+2): count rows, build the vocabulary of the training rows.
     * The vocabulary is skipped when the method works from hashes alone
     * and the budget is in bytes: then training keeps no per-value state
     * and its memory is the model plus the batch buffers. */
    const es_storage_ops *ops = es__storage_find(p->storage);
    if (!ops) {
        rc = es__err(err, ES_EINVAL, "unknown storage method '%s'", p->storage ? p->storage : "");
        goto done;
    }
    int need_vocab = !(p->budget > 1) || ops->needs_vocab;
    if (need_vocab && (rc = es_vocab_create(&vocab, n_fields)) != 0) {
        es__err(err, rc, "out of memory");
        goto done;
    }
    uint64_t n_total = 0, n_train;
    if (p->valid_frac > 0 && !p->valid_path) {
        ps.pr.phase = "count";
        for (;;) {
            int n = es_reader_next(r, &b);
            if (n < 0) {
                rc = pass_err(err, r, n, p->train_path, &tid);
                goto done;
            }
            if (n == 0) break;
            n_total += (uint64_t)n;
            if (p->max_rows && n_total >= p->max_rows) {
                n_total = p->max_rows;
                break;
            }
            ps.pr.rows = n_total;
            report(&ps, 0);
        }
        n_train = n_total - (uint64_t)llround((double)n_total * p->valid_frac);
        note_bad_lines(r, &bad_train, bad_rep, sizeof bad_rep);
        if ((rc = es__file_id_recheck(p->train_path, &tid, "after counting rows", err)) != 0) goto done;
        if ((rc = es_reader_rewind(r)) != 0) {
            reader_err(err, r, rc);
            goto done;
        }
    } else {
        n_train = p->max_rows ? p->max_rows : UINT64_MAX;
    }
    /* n_train is a count of rows read (exact) or only a limit (max_rows, or
     * none) until the first full pass */
    int n_exact = n_total > 0;
    ps.pr.phase = "vocab";
    uint64_t seen = 0;
    for (; vocab;) {
        int n = read_limited(r, &b, n_train - seen);
        if (n < 0) {
            rc = pass_err(err, r, n, p->train_path, &tid);
            goto done;
        }
        if (n == 0) break;
        if ((rc = es_vocab_add_batch(vocab, &b)) != 0) {
            es__err(err, rc, "out of memory building the vocabulary");
            goto done;
        }
        seen += (uint64_t)n;
        ps.pr.rows = seen;
        report(&ps, 0);
    }
    if (vocab) {
        note_bad_lines(r, &bad_train, bad_rep, sizeof bad_rep);
        if ((rc = es__file_id_recheck(p->train_path, &tid, "after building the vocabulary", err)) != 0) goto done;
        if (n_exact && seen != n_train) {
            rc = rows_changed(err, p->train_path, "the vocabulary pass", seen, n_train);
            goto done;
        }
        n_train = seen;
        n_exact = 1;
    } else if (n_total) {
        seen = n_train; /* counted in pass 1 */
    }
    if (n_train == 0 || (vocab && seen == 0)) {
        rc = es__err(err, ES_EPARSE, "%s: no training rows", p->train_path);
        goto done;
    }
    res->train_rows = n_train;

    /* model */
    es_net_params np = es__net_params_default(kind, n_dense, n_fields, p->dim);
    if (p->n_bottom > 0) {
        np.n_bottom = p->n_bottom;
        memcpy(np.bottom, p->bottom, sizeof(int) * (size_t)p->n_bottom);
    }
    if (p->n_top > 0) {
        np.n_top = p->n_top;
        memcpy(np.top, p->top, sizeof(int) * (size_t)p->n_top);
    }
    if (p->n_cross > 0) np.n_cross = p->n_cross;
    np.max_batch = p->batch;
    np.opt.kind = dense_opt;
    np.opt.lr = p->lr;
    if (dense_opt == ES_OPT_ADAGRAD) np.opt.eps = 1e-10f; /* torch.optim.Adagrad's default */
    np.weight_decay = p->weight_decay;
    np.seed = es__mix64(p->seed ^ 0x6e6574ULL);
    es_storage_params sp = es__train_storage_params(p, kind, n_fields);
    sp.opt.kind = emb_opt;
    {
        /* the table's serving bytes: a budget in bytes, a fraction of the
         * full table, or the full table itself */
        double full = vocab ? (double)es__storage_full_bytes(vocab, sp.dim, sp.min_count) : 0;
        double tb = p->budget > 1 ? p->budget : p->budget > 0 ? p->budget * full : full;
        if ((rc = es__train_check_memory(&np, &sp, tb, err)) != 0) goto done;
    }
    /* checkpoint: model with optimizer state + data position */
    ckpt = p->checkpoint_path;
    if (!ckpt && (p->checkpoint_every > 0 || p->resume)) {
        if (!p->out_path) {
            rc = es__err(err, ES_EINVAL, "checkpoints need --out or --checkpoint PATH");
            goto done;
        }
        snprintf(ckpt_buf, sizeof ckpt_buf, "%s.ckpt", p->out_path);
        ckpt = ckpt_buf;
    }
    int start_epoch = 0;
    uint64_t start_rows = 0, trained = 0;
    double start_loss = 0;
    if (p->resume && ckpt && access(ckpt, F_OK) == 0) {
        if ((rc = es__model_load(&m, ckpt, 0, 1, err)) != 0) goto done;
        if (!es_model_meta(m, "ckpt.epoch")) {
            rc = es__err(err, ES_EFORMAT, "%s: not a training checkpoint (no ckpt.epoch)", ckpt);
            goto done;
        }
        /* the run it came from must be this one (data file included); what
         * may differ (epochs) is then recorded as this command says */
        if ((rc = es__train_cfg_check_resume(m, ckpt, cfg, err)) != 0) goto done;
        if ((rc = es__train_cfg_record(m, cfg)) != 0) {
            es__err(err, rc, "out of memory");
            goto done;
        }
        /* strict: a checkpoint is a file like any other input */
        long long ep_v, rows_v, trained_v;
        if ((rc = ckpt_int(m, ckpt, "ckpt.epoch", 0, 100000000, &ep_v, err)) != 0 ||
            (rc = ckpt_int(m, ckpt, "ckpt.rows", 0, INT64_MAX, &rows_v, err)) != 0 ||
            (rc = ckpt_int(m, ckpt, "ckpt.trained", 0, INT64_MAX, &trained_v, err)) != 0)
            goto done;
        const char *v = es_model_meta(m, "ckpt.loss_sum");
        if ((rc = es__meta_f64(ckpt, "ckpt.loss_sum", v, 0, 1e300, &start_loss, err)) != 0) goto done;
        start_epoch = (int)ep_v;
        start_rows = (uint64_t)rows_v;
        trained = (uint64_t)trained_v;
        if (start_epoch >= p->epochs) {
            rc = es__err(err, ES_EINVAL, "%s: the checkpoint is in epoch %d, this command asks for %d epoch%s in all", ckpt,
                         start_epoch + 1, p->epochs, p->epochs == 1 ? "" : "s");
            goto done;
        }
        if (m->n_dense != n_dense || m->n_fields != n_fields || start_rows > n_train) {
            rc = es__err(err, ES_EINVAL, "%s: checkpoint does not match this run (epoch %d of %d, row %llu of %llu)", ckpt,
                         start_epoch + 1, p->epochs, (unsigned long long)start_rows, (unsigned long long)n_train);
            goto done;
        }
        res->resumed = 1;
    } else if ((rc = es__model_create(&m, &np, &sp, vocab, &p->reader, err)) != 0) {
        goto done;
    } else if ((rc = es__train_cfg_record(m, cfg)) != 0) {
        es__err(err, rc, "out of memory");
        goto done;
    }
    res->emb_param_bytes = m->st->param_bytes;
    res->emb_bytes = m->st->param_bytes + m->st->aux_bytes;
    res->emb_state_bytes = m->st->state_bytes;
    res->net_bytes = es__net_param_bytes(m->net);
    res->param_bytes = res->emb_bytes + res->net_bytes;
    res->full_bytes = es__storage_full_bytes(vocab, sp.dim, sp.min_count);

    /* train */
    if ((rc = pipeline_init(&pl, p->batch, n_dense, n_fields)) != 0) {
        es__err(err, rc, "out of memory for batches");
        goto done;
    }
    pl_ready = 1;
    double t_train = es__now();
    uint64_t trained_here = 0;
    long batches = 0;
    ps.pr.epochs = p->epochs;
    ps.pr.rows_total = n_exact ? n_train : 0;
    ps.pr.phase = "train";
    for (int ep = start_epoch; ep < p->epochs; ep++) {
        char when[64];
        snprintf(when, sizeof when, "at the start of epoch %d", ep + 1);
        if ((rc = es__file_id_recheck(p->train_path, &tid, when, err)) != 0) goto done;
        if ((rc = es_reader_rewind(r)) != 0) {
            reader_err(err, r, rc);
            goto done;
        }
        double loss_sum = 0, t_ep = es__now();
        uint64_t done_rows = 0;
        if (ep == start_epoch && start_rows > 0) {
            /* resume: skip the rows this epoch already trained on */
            while (done_rows < start_rows) {
                int n = read_limited(r, &b, start_rows - done_rows);
                if (n <= 0) {
                    rc = n < 0 ? pass_err(err, r, n, p->train_path, &tid)
                               : es__err(err, ES_EINVAL, "%s: fewer rows than the checkpoint", p->train_path);
                    goto done;
                }
                done_rows += (uint64_t)n;
            }
            loss_sum = start_loss;
        }
        ps.pr.epoch = ep + 1;
        if ((rc = pipeline_start(&pl, r, n_train - done_rows)) != 0) {
            es__err(err, rc, "cannot start the reader thread");
            goto done;
        }
        es_batch *cb;
        while ((cb = pipeline_next(&pl))) {
            int n = cb->n;
            rc = es__model_train_batch(m, cb, &loss_sum);
            pipeline_release(&pl);
            if (rc != 0) {
                pipeline_stop(&pl);
                es__err(err, rc, "%s", es_model_errmsg(m));
                goto done;
            }
            done_rows += (uint64_t)n;
            trained_here += (uint64_t)n;
            batches++;
            ps.pr.rows = done_rows;
            ps.pr.loss = loss_sum / (double)done_rows;
            ps.pr.rows_per_s = (double)done_rows / (es__now() - t_ep + 1e-9);
            report(&ps, 0);
            if (p->checkpoint_every > 0 && batches % p->checkpoint_every == 0 && done_rows < n_train) {
                char v[64];
                snprintf(v, sizeof v, "%d", ep);
                es__model_set_meta(m, "ckpt.epoch", v);
                snprintf(v, sizeof v, "%llu", (unsigned long long)done_rows);
                es__model_set_meta(m, "ckpt.rows", v);
                snprintf(v, sizeof v, "%.17g", loss_sum);
                es__model_set_meta(m, "ckpt.loss_sum", v);
                snprintf(v, sizeof v, "%llu", (unsigned long long)(trained + trained_here));
                es__model_set_meta(m, "ckpt.trained", v);
                if ((rc = es__model_save(m, ckpt, 1, err)) != 0) {
                    pipeline_stop(&pl);
                    goto done;
                }
            }
        }
        pipeline_stop(&pl);
        if (pl.rc < 0) {
            rc = pass_err(err, r, pl.rc, p->train_path, &tid);
            goto done;
        }
        note_bad_lines(r, &bad_train, bad_rep, sizeof bad_rep);
        snprintf(when, sizeof when, "at the end of epoch %d", ep + 1);
        if ((rc = es__file_id_recheck(p->train_path, &tid, when, err)) != 0) goto done;
        res->train_loss = done_rows ? loss_sum / (double)done_rows : NAN;
        if (!n_exact) { /* row count learnt from the first full pass */
            if (done_rows == 0) {
                rc = es__err(err, ES_EPARSE, "%s: no training rows", p->train_path);
                goto done;
            }
            n_train = done_rows;
            n_exact = 1;
            res->train_rows = n_train;
            ps.pr.rows_total = n_train;
        } else if (done_rows != n_train) {
            snprintf(when, sizeof when, "epoch %d", ep + 1);
            rc = rows_changed(err, p->train_path, when, done_rows, n_train);
            goto done;
        }
        report(&ps, 1);
    }
    trained += trained_here;
    (void)trained;
    res->train_rows_per_s = (double)trained_here / (es__now() - t_train + 1e-9);

    /* evaluate */
    ps.pr.phase = "eval";
    report(&ps, 1);
    prob = es__malloc((size_t)p->batch * sizeof(float));
    if (!prob) {
        rc = es__err(err, ES_ENOMEM, "out of memory");
        goto done;
    }
    double t_eval = es__now();
    if (p->valid_path) {
        if ((rc = es__file_id_get(p->valid_path, 0, &vid, err)) != 0) goto done;
        if ((rc = es_reader_open(&rv, p->valid_path, &p->reader, err)) != 0) goto done;
        if (es_reader_n_dense(rv) != n_dense || es_reader_n_fields(rv) != n_fields) {
            rc = es__err(err, ES_EINVAL, "%s: %d numeric and %d categorical columns, the training file has %d and %d", p->valid_path,
                         es_reader_n_dense(rv), es_reader_n_fields(rv), n_dense, n_fields);
            goto done;
        }
        if ((rc = predict_stream(m, rv, &b, prob, 0, 0, &ps_valid, err)) != 0) {
            if (es__file_id_recheck(p->valid_path, &vid, "after a read error", err) != ES_OK) rc = ES_EIO;
            goto done;
        }
        if ((rc = es__file_id_recheck(p->valid_path, &vid, "while evaluating", err)) != 0) goto done;
    } else if (p->valid_frac > 0) {
        if ((rc = es__file_id_recheck(p->train_path, &tid, "before evaluating", err)) != 0) goto done;
        if ((rc = es_reader_rewind(r)) != 0) {
            reader_err(err, r, rc);
            goto done;
        }
        if ((rc = predict_stream(m, r, &b, prob, n_train, n_total - n_train, &ps_valid, err)) != 0) {
            if (es__file_id_recheck(p->train_path, &tid, "after a read error", err) != ES_OK) rc = ES_EIO;
            goto done;
        }
        note_bad_lines(r, &bad_train, bad_rep, sizeof bad_rep);
        if ((rc = es__file_id_recheck(p->train_path, &tid, "while evaluating", err)) != 0) goto done;
        if (ps_valid.n != n_total - n_train) {
            rc = rows_changed(err, p->train_path, "the evaluation", (uint64_t)ps_valid.n, n_total - n_train);
            goto done;
        }
    }
    if (ps_valid.n > 0) {
        res->eval_rows_per_s = (double)ps_valid.n / (es__now() - t_eval + 1e-9);
        es_metrics_compute(ps_valid.p, ps_valid.y, ps_valid.n, &res->valid);
    }

    if (p->out_path) {
        /* keep the detected format and delimiter, so the model reads files
         * of any name the same way */
        es_reader_params rp = es_reader_resolved_params(r);
        m->rp.format = rp.format;
        m->rp.delim = rp.delim;
        m->rp.multi_sep = rp.multi_sep;
        char buf[512];
        if (p->command_line) es__model_set_meta(m, "train.command", p->command_line);
        metrics_json(buf, sizeof buf, &res->valid);
        es__model_set_meta(m, "train.metrics", buf);
        snprintf(buf, sizeof buf, "%llu", (unsigned long long)n_train);
        es__model_set_meta(m, "train.rows", buf);
        char names[4096];
        size_t o = 0;
        names[0] = 0;
        for (int f = 0; f < n_fields && o < sizeof names; f++)
            o += (size_t)snprintf(names + o, sizeof names - o, f ? ",%s" : "%s", es_reader_field_name(r, f));
        es__model_set_meta(m, "schema.fields", names);
        o = 0;
        names[0] = 0;
        for (int d = 0; d < n_dense && o < sizeof names; d++)
            o += (size_t)snprintf(names + o, sizeof names - o, d ? ",%s" : "%s", es_reader_dense_name(r, d));
        es__model_set_meta(m, "schema.dense", names);
        /* the label column's name: eval/predict find a CSV's columns by name */
        if (es__reader_label_name(r)) es__model_set_meta(m, "schema.label", es__reader_label_name(r));
        if (m->st->ops->field_stats && vocab) {
            /* per-field table statistics for `embstore inspect` */
            for (int f = 0; f < n_fields; f++) {
                es_field_stats fs = {0};
                m->st->ops->field_stats(m->st, vocab, f, &fs);
                char key[128], val[256];
                snprintf(key, sizeof key, "stats.field.%s", es_reader_field_name(r, f));
                snprintf(val, sizeof val, "distinct=%llu,rows=%llu,rows_used=%llu,collisions=%llu", (unsigned long long)fs.distinct,
                         (unsigned long long)fs.rows, (unsigned long long)fs.rows_used, (unsigned long long)fs.collisions);
                es__model_set_meta(m, key, val);
            }
        }
        snprintf(buf, sizeof buf, "%zu", res->full_bytes);
        es__model_set_meta(m, "stats.full_bytes", buf);
        if ((rc = es__model_save(m, p->out_path, 0, err)) != 0) goto done;
    }
    rc = ES_OK;
done:
    res->seconds = es__now() - t_start;
    res->bad_lines = bad_train + (rv ? es_reader_bad_lines(rv) : 0);
    {
        /* the first few bad lines of both files, at most 5 in all */
        const char *vrep = rv ? es_reader_bad_report(rv) : "";
        int lines = 0;
        size_t o = 0;
        for (const char *part = bad_rep; part; part = part == bad_rep ? vrep : NULL)
            for (const char *q = part; *q && lines < 5;) {
                const char *nl = strchr(q, '\n');
                size_t len = nl ? (size_t)(nl - q) : strlen(q);
                int k = snprintf(res->bad_report + o, sizeof res->bad_report - o, "%s%.*s", o ? "\n" : "", (int)len, q);
                if (k < 0 || (size_t)k >= sizeof res->bad_report - o) break;
                o += (size_t)k;
                lines++;
                q = nl ? nl + 1 : q + len;
            }
    }
    if (pl_ready) pipeline_free(&pl);
    if (rc == ES_OK && ckpt && p->checkpoint_every > 0) remove(ckpt); /* finished: the model file supersedes it */
    es__free(ps_valid.p);
    es__free(ps_valid.y);
    es__free(prob);
    es__free(cfg);
    es_model_free(m);
    es_vocab_free(vocab);
    es_batch_free(&b);
    es_reader_free(r);
    es_reader_free(rv);
    return rc;
}

/* ---- file-level evaluation and prediction ------------------------------------ */

int es_set_threads(int n) { return es__threads_set(n); }

int es_model_eval_file(es_model *m, const char *path, es_metrics *out) {
    es_reader *r = NULL;
    es_batch b = {0};
    pred_set ps = {0};
    float *prob = NULL;
    int rc = es__model_open_input(m, path, 1, &r, &b);
    if (rc != 0) return rc;
    prob = es__malloc((size_t)m->max_batch * sizeof(float));
    if (!prob) {
        rc = es__err(&m->err, ES_ENOMEM, "out of memory");
        goto done;
    }
    if ((rc = predict_stream(m, r, &b, prob, 0, 0, &ps, &m->err)) != 0) {
        es__model_input_hint(m, r, 1);
        goto done;
    }
    if (ps.n == 0) {
        rc = es__err(&m->err, ES_EPARSE, "%s: no rows to evaluate", path);
        goto done;
    }
    es_metrics_compute(ps.p, ps.y, ps.n, out);
done:
    es__free(ps.p);
    es__free(ps.y);
    es__free(prob);
    es_batch_free(&b);
    es_reader_free(r);
    return rc;
}

int es_model_predict_file(es_model *m, const char *in, int has_label, const char *out_path, uint64_t *rows_out) {
    es_reader *r = NULL;
    es_batch b = {0};
    float *prob = NULL;
    es_afile af = {0};
    FILE *fp = stdout;
    uint64_t rows = 0;
    int to_stdout = !out_path || strcmp(out_path, "-") == 0;
    int rc = es__model_open_input(m, in, has_label, &r, &b);
    if (rc != 0) return rc;
    prob = es__malloc((size_t)m->max_batch * sizeof(float));
    if (!prob) {
        rc = es__err(&m->err, ES_ENOMEM, "out of memory");
        goto done;
    }
    if (!to_stdout) {
        if ((rc = es__afile_open(&af, out_path, &m->err)) != 0) goto done;
        fp = af.fp;
    }
    for (;;) {
        int n = es_reader_next(r, &b);
        if (n < 0) {
            rc = es__err(&m->err, n, "%s", es_reader_errmsg(r));
            es__model_input_hint(m, r, has_label);
            goto done;
        }
        if (n == 0) break;
        if ((rc = es_model_predict(m, &b, prob)) != 0) goto done;
        for (int i = 0; i < n; i++) fprintf(fp, "%.6f\n", prob[i]);
        rows += (uint64_t)n;
        if (ferror(fp)) break; /* a full disk or closed output: stop reading */
    }
    if (fflush(fp) != 0 || ferror(fp)) {
        rc = es__err(&m->err, ES_EIO, "%s: write failed: %s", to_stdout ? "standard output" : out_path, strerror(errno));
        goto done;
    }
    if (!to_stdout) {
        rc = es__afile_commit(&af, &m->err);
        af.fp = NULL;
    }
done:
    if (af.fp) es__afile_abort(&af);
    if (rows_out) *rows_out = rows;
    es__free(prob);
    es_batch_free(&b);
    es_reader_free(r);
    return rc;
}
