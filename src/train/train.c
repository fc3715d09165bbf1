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
#include "data/reader_impl.h"
#include "train/dist.h"
#include "train/integrity.h"

#include <errno.h>
#include <glob.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <unistd.h>

es_train_params es_train_params_basic(void) {
    const es_model_params m = es_model_params_default(); /* the model's defaults, stated once */
    es_train_params p;
    memset(&p, 0, sizeof p);
    p.reader = es_reader_params_default();
    p.model = m.model;
    p.dim = m.dim;
    p.storage = m.storage;
    p.budget = m.budget;
    p.batch = m.batch;
    p.lr = m.lr;
    p.emb_lr = m.emb_lr;
    p.optim = m.optim;
    p.emb_optim = m.emb_optim;
    p.ftrl_alpha = m.ftrl_alpha;
    p.ftrl_beta = m.ftrl_beta;
    p.seed = m.seed;
    p.epochs = 1;
    p.threads = 1;
    return p;
}

es_train_params es_train_params_default(void) {
    es_train_params p = es_train_params_basic();
    /* where `embstore train` departs from es_model_params_default: chosen
     * by the study in docs/training.md (bench/defaults_study.py) */
    p.model = "lr";
    p.dim = ES_TRAIN_AUTO;
    p.storage = "full";
    p.batch = 64;
    p.lr = ES_TRAIN_AUTO;
    p.optim = NULL;     /* automatic, see es_train_params_resolve */
    p.emb_optim = NULL; /* automatic, see es_train_params_resolve */
    p.ftrl_alpha = 0.05f;
    p.ftrl_l1 = 0.01f;
    p.ftrl_l2 = 0.3f;
    p.reader.pool = ES_POOL_MEAN;
    p.valid_frac = 0.2;
    p.epochs = ES_TRAIN_AUTO;
    p.early_stop = ES_TRAIN_AUTO;
    p.refit = ES_TRAIN_AUTO;
    return p;
}

void es_train_params_resolve(es_train_params *p) {
    int carved = !p->valid_path && p->valid_frac > 0;
    if (p->early_stop == ES_TRAIN_AUTO) p->early_stop = p->valid_path || p->valid_frac > 0 ? 2 : 0;
    if (p->epochs == 0 || p->epochs == ES_TRAIN_AUTO) p->epochs = p->early_stop > 0 ? 100 : 1;
    /* the factorization models (lr, fm, ffm) and the deep ones (dlrm, dcn)
     * were studied apart, and lr's dense weights apart again: docs/training.md */
    es_net_kind kind = ES_NET_FM;
    int known = p->model && es__net_kind_parse(p->model, &kind) == 0;
    int deep = known && (kind == ES_NET_DLRM || kind == ES_NET_DCN), lr = known && kind == ES_NET_LR;
    if (p->dim == ES_TRAIN_AUTO) p->dim = deep ? 16 : 4;
    if (!p->optim) p->optim = lr ? "adagrad" : "adam";
    if (p->lr == (float)ES_TRAIN_AUTO) p->lr = deep ? 0.001f : lr && !strcmp(p->optim, "adagrad") ? 0.1f : 0.01f;
    if (!p->emb_optim) {
        const es_storage_ops *ops = p->storage ? es__storage_find(p->storage) : NULL;
        p->emb_optim = !deep && ops && ops->plain_rows ? "ftrl" : "rowwise";
    }
    if (p->refit == ES_TRAIN_AUTO) p->refit = p->early_stop > 0 && carved;
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
 * A reader thread fills the next batches while the trainer works on the
 * current one, so parsing overlaps with compute.  A ring of n_slots batches
 * (2 to ES__PIPE_SLOTS, fewer for large batches), filled and consumed in
 * ring order: the order of batches (and so the result) is the same as
 * reading inline.  Each side sleeps only when it must (the ring full, or
 * empty) and is woken once half the ring is ready for it (or at the end),
 * so a pass of small batches costs a wake-up every n_slots / 2 batches, not
 * two a batch (a condition-variable handoff a batch of 64 LR rows was
 * about a tenth of the run).  With --threads > 1 the reader thread runs
 * below the model's priority (pipeline_main). */
typedef struct {
    es_reader *r;
    int n_slots;
    es_batch slot[ES__PIPE_SLOTS];
    int full[ES__PIPE_SLOTS];
    int n_full;        /* slots filled and not yet released */
    int cur;           /* consumer's slot */
    int done, rc;      /* producer finished (rc < 0: reader error) */
    int cwait, pwait;  /* the consumer / the producer is asleep */
    uint64_t limit;    /* rows to deliver */
    /* across processes (part_size > 0): global batches of `batch` rows
     * (the last one shorter), of which this rank parses only its part
     * (es__dist_part_of) and skips the others' rows unparsed; gn[k] is
     * the global size of slot k's batch, short = 1 when the input ended
     * before `limit` rows (the file changed since it was counted) */
    int part_rank, part_size, batch;
    int gn[ES__PIPE_SLOTS], short_read;
    int local;         /* shard files: this rank's own rows, batch / part_size a step, limit counts them */
    /* called on the reader thread for each batch read, before it is
     * handed over (training passes: the model's step_prepare), or NULL */
    es_model *prep;
    pthread_mutex_t mu;
    pthread_cond_t cv_c, cv_p; /* the consumer's and the producer's */
    pthread_t th;
    int running, stop;
} pipeline;

/* Across processes: rank `rank` of `size`'s rows of a global batch of n
 * rows (es__dist_part_of) into b, the others' skipped unparsed.  Returns
 * n, 0 when the input ended first (*short_read = 1), or a reader error
 * (< 0). */
static int read_part(es_reader *r, es_batch *b, int rank, int size, int n, int *short_read) {
    uint64_t got;
    int lo, hi, rc;
    es__dist_part_of(rank, size, n, &lo, &hi);
    if ((rc = es__reader_skip(r, (uint64_t)lo, &got)) != 0) return rc;
    if (got < (uint64_t)lo) goto short_input;
    b->n = 0;
    if (hi > lo) {
        if ((rc = read_limited(r, b, (uint64_t)(hi - lo))) < 0) return rc;
        if (rc < hi - lo) goto short_input;
    }
    if ((rc = es__reader_skip(r, (uint64_t)(n - hi), &got)) != 0) return rc;
    if (got < (uint64_t)(n - hi)) goto short_input;
    return n;
short_input:
    *short_read = 1;
    return 0;
}

/* Part mode: this rank's rows of the next global batch into b; returns the
 * global batch's rows (0 at the end), or a reader error (< 0). */
static int pipeline_read_part(pipeline *pl, es_batch *b, uint64_t produced) {
    uint64_t left = pl->limit - produced;
    if (left == 0) return 0;
    if (pl->local) { /* its own files: batch / N rows of its own, the global batch N times that */
        int want = (int)ES_MIN(left, (uint64_t)(pl->batch / pl->part_size)), rc = read_limited(pl->r, b, (uint64_t)want);
        if (rc < 0) return rc;
        if (rc < want) {
            pl->short_read = 1;
            return 0;
        }
        return want * pl->part_size;
    }
    return read_part(pl->r, b, pl->part_rank, pl->part_size, (int)ES_MIN(left, (uint64_t)pl->batch), &pl->short_read);
}

static void *pipeline_main(void *arg) {
    pipeline *pl = arg;
#ifdef __linux__
    /* With --threads > 1 the model's OpenMP threads and this one share the
     * cores: the model's loops wait at their ends for every thread of the
     * team, so a team thread that this one has pushed off its core stalls
     * the step, while this thread has the ring's slack.  Below the model's
     * priority it runs in the gaps the team leaves (its workers sleep
     * between loops) and keeps up there.  FFM, 1 epoch at 2 threads on 2
     * cores: 11.4-12.6 s against 14.2-15.4 s (docs/performance.md).  On
     * Linux the nice value is a thread's own; it can only be raised, and
     * each pass's reader thread starts from the process's. */
    if (es__threads_get() > 1) {
        errno = 0;
        if (nice(10) == -1 && errno) errno = 0; /* not allowed: run as it is */
    }
#endif
    uint64_t produced = 0;
    int k = 0;
    const int half = pl->n_slots / 2;
    for (;;) {
        pthread_mutex_lock(&pl->mu);
        while (pl->full[k] && !pl->stop) {
            pl->pwait = 1;
            pthread_cond_wait(&pl->cv_p, &pl->mu);
            pl->pwait = 0;
        }
        int stop = pl->stop;
        pthread_mutex_unlock(&pl->mu);
        if (stop) break;
        int n;
        if (pl->part_size > 0) {
            n = pipeline_read_part(pl, &pl->slot[k], produced);
            pl->gn[k] = n;
            if (pl->local && n > 0) n /= pl->part_size; /* the limit counts this rank's rows */
        } else {
            n = read_limited(pl->r, &pl->slot[k], pl->limit - produced);
        }
        if (n > 0 && pl->prep) es__model_step_prepare(pl->prep, &pl->slot[k], k);
        pthread_mutex_lock(&pl->mu);
        if (n <= 0) {
            pl->rc = n;
            pl->done = 1;
            pthread_cond_signal(&pl->cv_c);
            pthread_mutex_unlock(&pl->mu);
            break;
        }
        produced += (uint64_t)n;
        pl->full[k] = 1;
        pl->n_full++;
        /* the last row read: the consumer must not wait for more */
        if (pl->cwait && (pl->n_full >= half || produced >= pl->limit)) pthread_cond_signal(&pl->cv_c);
        pthread_mutex_unlock(&pl->mu);
        if (++k == pl->n_slots) k = 0;
    }
    return NULL;
}

int es__pipeline_slots(int cap) {
    int n = cap > 0 ? 4096 / cap : 2;
    return n < 2 ? 2 : n > ES__PIPE_SLOTS ? ES__PIPE_SLOTS : n;
}

static int pipeline_init(pipeline *pl, int cap, int n_dense, int n_fields) {
    memset(pl, 0, sizeof *pl);
    pl->n_slots = es__pipeline_slots(cap);
    size_t vals = (size_t)cap * (size_t)(n_fields + 1);
    for (int k = 0; k < pl->n_slots; k++)
        if (es_batch_alloc(&pl->slot[k], cap, n_dense, n_fields, vals) != 0) {
            for (int j = 0; j < k; j++) es_batch_free(&pl->slot[j]);
            return ES_ENOMEM;
        }
    pthread_mutex_init(&pl->mu, NULL);
    pthread_cond_init(&pl->cv_c, NULL);
    pthread_cond_init(&pl->cv_p, NULL);
    return ES_OK;
}

/* Start delivering up to `limit` rows from the reader's current position. */
static int pipeline_start(pipeline *pl, es_reader *r, uint64_t limit) {
    pl->r = r;
    pl->limit = limit;
    memset(pl->full, 0, sizeof pl->full);
    pl->n_full = pl->cur = 0;
    pl->cwait = pl->pwait = 0;
    pl->done = pl->rc = pl->stop = pl->short_read = 0;
    if (pthread_create(&pl->th, NULL, pipeline_main, pl) != 0) return ES_ENOMEM;
    pl->running = 1;
    return ES_OK;
}

/* Next batch (NULL at the end or on error: see pl->rc). */
static es_batch *pipeline_next(pipeline *pl) {
    pthread_mutex_lock(&pl->mu);
    while (!pl->full[pl->cur] && !pl->done) {
        pl->cwait = 1;
        pthread_cond_wait(&pl->cv_c, &pl->mu);
        pl->cwait = 0;
    }
    es_batch *b = pl->full[pl->cur] ? &pl->slot[pl->cur] : NULL;
    pthread_mutex_unlock(&pl->mu);
    return b;
}

static void pipeline_release(pipeline *pl) {
    pthread_mutex_lock(&pl->mu);
    pl->full[pl->cur] = 0;
    pl->n_full--;
    if (++pl->cur == pl->n_slots) pl->cur = 0;
    if (pl->pwait && pl->n_slots - pl->n_full >= pl->n_slots / 2) pthread_cond_signal(&pl->cv_p);
    pthread_mutex_unlock(&pl->mu);
}

static void pipeline_stop(pipeline *pl) {
    if (!pl->running) return;
    pthread_mutex_lock(&pl->mu);
    pl->stop = 1;
    pthread_cond_signal(&pl->cv_p);
    pthread_mutex_unlock(&pl->mu);
    pthread_join(pl->th, NULL);
    pl->running = 0;
}

static void pipeline_free(pipeline *pl) {
    pipeline_stop(pl);
    for (int k = 0; k < pl->n_slots; k++) es_batch_free(&pl->slot[k]);
    pthread_mutex_destroy(&pl->mu);
    pthread_cond_destroy(&pl->cv_c);
    pthread_cond_destroy(&pl->cv_p);
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
        int rc = es_model_predict_batch(m, b, prob);
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

/* ---- es_train: a driver over the step API ----------------------------------------
 * The state of one run, and one function per phase.  Each phase returns 0 or
 * an error code with the message in x->err; es_train runs them in order and
 * run_finish releases everything whatever happened. */
typedef struct {
    const es_train_params *p;
    es_train_result *res;
    es_err *err;
    es_model_params mp;       /* the model part of p */
    es_reader *r, *rv;        /* training and validation files */
    es__file_id tid, vid;     /* their identity, re-checked at every pass */
    es_vocab *vocab;
    es_model *m;
    es_batch b;
    float *prob;
    pred_set valid;
    pipeline pl;
    int pl_ready;
    char *cfg;                /* es__train_describe of the run */
    char ckpt_buf[4096];
    char ckpt_rank[4160];     /* across processes: "<checkpoint>.rank<k>of<N>" */
    char ckpt_new[4170];      /* and the next one before it is committed: "<...>.new" */
    const char *ckpt_load;    /* the file --resume loads, when not ckpt */
    const char *ckpt;         /* checkpoint path, or NULL */
    es_checkpoint start;      /* where training starts (a resumed checkpoint) */
    uint64_t n_total;         /* rows counted in the first pass (0: not counted) */
    uint64_t n_train;         /* training rows: exact when n_exact, else a limit */
    int n_exact;
    uint64_t trained_here;    /* rows trained by this run */
    uint64_t bad_train;
    char bad_rep[sizeof ((es_train_result *)0)->bad_report];
    progress_state ps;
    /* early stopping */
    es_reader *rva;           /* the held-out rows of the training file, read apart */
    char best_path[4200];     /* the best model so far (a file, so memory does not double) */
    int best_slot;            /* its slot in the temporary-file table, -1: none */
    int have_best, best_is_current, best_in_ckpt, bad_evals, stop;
    int last_eval_ep;         /* where the last evaluation was (epoch, rows): -1 none */
    uint64_t last_eval_done;
    double best_score;        /* lower is better (-AUC for "auc") */
    int refitting;            /* in the refit: no evaluations */
    int refit_resumed;        /* resumed from a checkpoint written in the refit */
    /* across processes (p->comm, docs/scale.md): the distributed step
     * over x->m, whose tables are this rank's shards (no rank holds the
     * whole table: evaluations and the model file work from the shards) */
    es__dist *dist;
    int shards;               /* shard_files: this rank reads only its own files of the list */
    int dist_failed;          /* 1: an error every rank knows of: no more collectives; 2: one the others may not know of */
    /* multi-stage methods (storage.h es__staged; run_search) */
    int staged;               /* the storage method declares stages */
    int in_retrain;           /* past the search: x->m is the retrain model */
    int searching;            /* inside the search's passes: an architecture step after each batch */
    es_reader *rav;           /* the validation rows of the architecture steps, read apart */
    es_batch ab;              /* their batch */
    uint64_t av_next;         /* the validation batch rav reads next (UINT64_MAX: not positioned) */
    char derived_opts[ES_STORAGE_META_MAX];
    char derived_method[32];
    long fault_batches;       /* batches this process trained in the stage ES_TEST_KILL_AFTER names */
} run;

/* Under a comm: every rank's status after a phase (es__dist_agree); else rc. */
static int agree(run *x, int rc) {
    if (!x->p->comm) return rc;
    return es__dist_agree(x->p->comm, &x->dist_failed, rc, 0, 0, "the run", x->err);
}

static uint64_t fnv1a(const void *p, size_t n, uint64_t h) {
    const unsigned char *c = p;
    for (size_t i = 0; i < n; i++) h = (h ^ c[i]) * UINT64_C(0x100000001b3);
    return h;
}

/* What training across processes supports so far (docs/scale.md). */
static int dist_check_params(const es_train_params *p, es_err *err) {
    int rc = es__dist_check_comm(p->comm, err);
    if (rc != ES_OK) return rc;
    const es_storage_ops *ops = p->storage ? es__storage_find(p->storage) : NULL;
    if (ops && !ops->row_map && !ops->rep_floats)
        return es__err(err, ES_EINVAL,
                       "storage '%s' cannot be trained across processes yet: full, hash, unified, adapt, qr, mde and multihash can "
                       "(sharded), dhe and tt (replicated; docs/scale.md)",
                       p->storage);
    if (p->reader.skip_bad)
        return es__err(err, ES_EINVAL,
                       "--skip-bad is not supported across processes yet: each rank skips the others' rows unparsed, "
                       "and only parsing tells a bad line (docs/scale.md)");
    if (p->matryoshka && p->matryoshka[0])
        return es__err(err, ES_EINVAL, "--matryoshka (the nested loss over prefixes) is not supported across processes yet");
    if (p->reader.format == ES_FMT_ESD || (p->train_path && es__esd_sniff_path(p->train_path)))
        return es__err(err, ES_EINVAL,
                       "%s: a dataset cache (.esd, --cache) is not supported across processes yet: train from the text file",
                       p->train_path);
    return ES_OK;
}

/* --shard-files: this rank's files of the training list (file i on rank
 * i mod N) as its training reader. */
static int run_open_shards(run *x) {
    const es_train_params *p = x->p;
    const int N = p->comm->size, k = p->comm->rank;
    es_err *err = x->err;
    if (!es__path_is_list(p->train_path))
        return es__err(err, ES_EINVAL, "%s: --shard-files needs several files: a glob ('logs/day-*.tsv.gz') or @LIST", p->train_path);
    if (p->valid_frac > 0 && !p->valid_path)
        return es__err(err, ES_EINVAL,
                       "--shard-files: validation rows must come from their own file (--valid FILE), or none (--valid-frac 0): "
                       "the ranks hold different rows");
    if (p->batch % N != 0)
        return es__err(err, ES_EINVAL, "--shard-files: the batch (%d rows) must be a multiple of the %d ranks (each gives batch / N rows)",
                       p->batch, N);
    char **paths;
    int n, rc = es__path_list(p->train_path, &paths, &n, err);
    if (rc != ES_OK) return rc;
    if (n < N) {
        es__path_list_free(paths, n);
        return es__err(err, ES_EINVAL, "%s: %d file%s for %d ranks: --shard-files gives each rank its own files (at least one each)",
                       p->train_path, n, n == 1 ? "" : "s", N);
    }
    const char **mine = es__malloc((size_t)n * sizeof *mine);
    int m = 0;
    for (int i = k; mine && i < n; i += N) mine[m++] = paths[i];
    rc = mine ? es__reader_open_files(&x->r, mine, m, &p->reader, err) : es__err(err, ES_ENOMEM, "out of memory");
    es__free(mine);
    es__path_list_free(paths, n);
    return rc;
}

/* Check the parameters, open the training file and describe the run. */
static int run_open(run *x) {
    const es_train_params *p = x->p;
    es_err *err = x->err;
    int rc;
    if (!p->train_path) return es__err(err, ES_EINVAL, "no training file given");
    if (!(p->valid_frac >= 0 && p->valid_frac < 1)) return es__err(err, ES_EINVAL, "valid fraction %g not in [0, 1)", p->valid_frac);
    if (p->epochs <= 0) return es__err(err, ES_EINVAL, "epochs must be positive");
    if (p->early_stop < 0 || p->eval_every < 0)
        return es__err(err, ES_EINVAL, "early stopping: patience %d and eval-every %d must be >= 0", p->early_stop, p->eval_every);
    if (p->early_stop && !p->valid_path && !(p->valid_frac > 0))
        return es__err(err, ES_EINVAL,
                       "--early-stop needs validation rows: give --valid FILE or --valid-frac F (the test file is never "
                       "used for decisions)");
    if (p->eval_every && !p->early_stop) return es__err(err, ES_EINVAL, "--eval-every needs --early-stop");
    if (p->refit && !(p->early_stop > 0 && !p->valid_path && p->valid_frac > 0))
        return es__err(err, ES_EINVAL,
                       "--refit needs early stopping on validation rows carved from the training file (--valid-frac F, "
                       "not --valid FILE): it retrains on all rows for the number of passes early stopping chose");
    if (p->stop_metric && strcmp(p->stop_metric, "logloss") != 0 && strcmp(p->stop_metric, "auc") != 0)
        return es__err(err, ES_EINVAL, "unknown early-stopping metric '%s' (expected logloss or auc)", p->stop_metric);
    if (p->comm && (rc = dist_check_params(p, err)) != 0) return rc;
    x->shards = p->comm && p->shard_files;
    const es_storage_ops *sops = p->storage ? es__storage_find(p->storage) : NULL;
    if (sops && sops->staged) {
        x->staged = 1;
        if (p->comm) return es__err(err, ES_EINVAL, "storage '%s' (multi-stage) cannot be trained across processes yet", p->storage);
        if (p->matryoshka && p->matryoshka[0])
            return es__err(err, ES_EINVAL, "storage '%s' (multi-stage) and --matryoshka cannot be combined", p->storage);
        if (p->valid_path || !(p->valid_frac > 0))
            return es__err(err, ES_EINVAL,
                           "storage '%s' searches on validation rows carved from the training file: give --valid-frac F "
                           "(0 < F < 1), not --valid FILE (the test file is never used for decisions)",
                           p->storage);
    }
    x->mp = es_model_params_from_train(p, 0, 1);
    if ((rc = es__model_params_resolve(&x->mp, NULL, NULL, err)) != 0) return rc;
    x->res->threads = es__threads_set(p->threads);
    /* the identity the file must keep while it is read (first: a pipe is
     * refused before an open that would wait for its writer) */
    if (!x->shards && (rc = es__file_id_get(p->train_path, 0, &x->tid, err)) != 0) return rc;
    if (x->shards) {
        if ((rc = run_open_shards(x)) != 0) return rc;
    } else {
        /* the pass a libffm file without a field count makes at open runs
         * before any model work: on the run's threads; parsing for the
         * model then gets the reader's own setting back */
        es_reader_params rp = p->reader;
        if (rp.threads == 1) rp.threads = p->threads;
        if ((rc = es_reader_open(&x->r, p->train_path, &rp, err)) != 0) return rc;
        es__reader_set_threads(x->r, p->reader.threads);
        /* --in-memory: passes after the first whole one read the rows
         * from memory (the trainer reads at most max_rows a pass) */
        if (p->in_memory && !p->comm && (rc = es__reader_keep_rows(x->r, p->max_rows)) != 0)
            return es__err(err, rc, "out of memory");
    }
    if (x->shards && (rc = es__file_id_get(p->train_path, 0, &x->tid, err)) != 0) return rc;
    if ((rc = es__reader_require_fields(x->r, p->train_path, err)) != 0) return rc;
    int n_dense = es_reader_n_dense(x->r), n_fields = es_reader_n_fields(x->r);
    x->mp = es_model_params_from_train(p, n_dense, n_fields);
    if ((rc = es_batch_alloc(&x->b, p->batch, n_dense, n_fields, (size_t)p->batch * (size_t)(n_fields + 1))) != 0)
        return es__err(err, rc, "out of memory for a batch of %d rows", p->batch);
    /* what decides the result: recorded in checkpoints, compared on resume */
    es_reader_params rrp = es_reader_resolved_params(x->r);
    size_t cap = 8192;
    if (!(x->cfg = es__malloc(cap))) return es__err(err, ES_ENOMEM, "out of memory");
    return es__train_describe(p, &rrp, x->cfg, cap, err);
}

/* Pass 1, only when a validation fraction must be held out (the split is
 * by position): count the rows. */
static int run_count(run *x) {
    const es_train_params *p = x->p;
    if (!(p->valid_frac > 0 && !p->valid_path)) {
        x->n_train = p->max_rows ? p->max_rows : UINT64_MAX;
        return ES_OK;
    }
    x->ps.pr.phase = "count";
    if (p->comm) { /* every rank counts by a scan that parses nothing (a bad line is met by the rank that parses it) */
        uint64_t got = 0;
        int rc = es__reader_skip(x->r, p->max_rows ? p->max_rows : UINT64_MAX, &got);
        if (rc != 0) return pass_err(x->err, x->r, rc, p->train_path, &x->tid);
        x->n_total = got;
    }
    for (; !p->comm;) {
        int n = es_reader_next(x->r, &x->b);
        if (n < 0) return pass_err(x->err, x->r, n, p->train_path, &x->tid);
        if (n == 0) break;
        x->n_total += (uint64_t)n;
        if (p->max_rows && x->n_total >= p->max_rows) {
            x->n_total = p->max_rows;
            break;
        }
        x->ps.pr.rows = x->n_total;
        report(&x->ps, 0);
    }
    x->n_train = x->n_total - (uint64_t)llround((double)x->n_total * p->valid_frac);
    x->n_exact = 1;
    note_bad_lines(x->r, &x->bad_train, x->bad_rep, sizeof x->bad_rep);
    int rc = es__file_id_recheck(p->train_path, &x->tid, "after counting rows", x->err);
    if (rc == ES_OK && (rc = es_reader_rewind(x->r)) != 0) reader_err(x->err, x->r, rc);
    return rc;
}

static int run_vocab_dist(run *x);
static int run_pipeline(run *x);

/* Pass 2: the value counts of the training rows.  Skipped when the method
 * works from hashes alone and the budget is in bytes: then training keeps
 * no per-value state and its memory is the model plus the batch buffers. */
static int run_vocab(run *x) {
    const es_train_params *p = x->p;
    int rc;
    if (p->comm) return run_vocab_dist(x);
    es_storage_params sp;
    if ((rc = es__model_params_resolve(&x->mp, NULL, &sp, x->err)) != 0) return rc;
    if (!(sp.budget > 1) || es__storage_find(p->storage)->needs_vocab) {
        if ((rc = es_vocab_create(&x->vocab, x->mp.n_fields)) != 0) return es__err(x->err, rc, "out of memory");
        x->ps.pr.phase = "vocab";
        uint64_t seen = 0;
        /* the reader thread parses the next batch while this one is
         * counted, as in training (counting is order-independent, so the
         * vocabulary is the same as from one thread) */
        if ((rc = run_pipeline(x)) != 0) return rc;
        if ((rc = pipeline_start(&x->pl, x->r, x->n_train)) != 0) return es__err(x->err, rc, "cannot start the reader thread");
        es_batch *cb;
        while ((cb = pipeline_next(&x->pl))) {
            int n = cb->n;
            rc = es_vocab_add_batch(x->vocab, cb);
            pipeline_release(&x->pl);
            if (rc != 0) break;
            seen += (uint64_t)n;
            x->ps.pr.rows = seen;
            report(&x->ps, 0);
        }
        pipeline_stop(&x->pl);
        if (rc != 0) return es__err(x->err, rc, "out of memory building the vocabulary");
        if (x->pl.rc < 0) return pass_err(x->err, x->r, x->pl.rc, p->train_path, &x->tid);
        note_bad_lines(x->r, &x->bad_train, x->bad_rep, sizeof x->bad_rep);
        if ((rc = es__file_id_recheck(p->train_path, &x->tid, "after building the vocabulary", x->err)) != 0) return rc;
        if (x->n_exact && seen != x->n_train) return rows_changed(x->err, p->train_path, "the vocabulary pass", seen, x->n_train);
        x->n_train = seen;
        x->n_exact = 1;
    }
    /* n_train is now a count of rows read (exact) or only a limit
     * (max_rows, or none) until the first full pass */
    if (x->n_train == 0) return es__err(x->err, ES_EPARSE, "%s: no training rows", p->train_path);
    x->res->train_rows = x->n_train;
    return ES_OK;
}

static int comm_io_fail(run *x, const char *what);

/* --shard-files: every rank counts its own rows (at most max_rows / N),
 * and each epoch trains the fewest any rank holds on every rank: n_train
 * = N x that; the rest is rows_dropped.  Collective. */
static int run_count_shards(run *x) {
    const es_train_params *p = x->p;
    const es_comm *c = p->comm;
    const uint64_t N = (uint64_t)c->size;
    uint64_t got = 0, *all = es__calloc(N, sizeof *all);
    int rc = all ? ES_OK : es__err(x->err, ES_ENOMEM, "out of memory");
    x->ps.pr.phase = "count";
    if (rc == ES_OK && (rc = es__reader_skip(x->r, p->max_rows ? p->max_rows / N : UINT64_MAX, &got)) != 0)
        rc = pass_err(x->err, x->r, rc, p->train_path, &x->tid);
    else if (rc == ES_OK && (rc = es_reader_rewind(x->r)) != 0)
        reader_err(x->err, x->r, rc);
    if ((rc = agree(x, rc)) == ES_OK && c->allgather(c->ctx, &got, all, sizeof got) != 0) rc = comm_io_fail(x, "counting the shards' rows");
    if (rc == ES_OK) {
        uint64_t least = UINT64_MAX, sum = 0;
        for (uint64_t i = 0; i < N; i++) {
            least = ES_MIN(least, all[i]);
            sum += all[i];
        }
        if (least == 0)
            rc = es__err(x->err, ES_EPARSE, "%s: a rank's files hold no training rows (--shard-files: every rank needs some)", p->train_path);
        x->n_train = x->res->train_rows = least * N;
        x->res->rows_dropped = sum - least * N;
        x->n_exact = 1;
    }
    es__free(all);
    return agree(x, rc);
}

/* Across processes, before the vocabulary: the training rows counted
 * exactly when the validation split has not (no --valid-frac), by a scan
 * that skips rows unparsed, since every rank must know the size of the
 * last global batch to split it, and the vocabulary pass splits the rows.
 * Then the ranks agree on the count (the same file on every rank). */
static int run_count_dist(run *x) {
    const es_train_params *p = x->p;
    int rc = ES_OK;
    if (x->shards) return run_count_shards(x);
    if (!x->n_exact) {
        uint64_t got = 0;
        x->ps.pr.phase = "count";
        if ((rc = es__reader_skip(x->r, p->max_rows ? p->max_rows : UINT64_MAX, &got)) != 0)
            rc = pass_err(x->err, x->r, rc, p->train_path, &x->tid);
        else if ((rc = es__file_id_recheck(p->train_path, &x->tid, "after counting rows", x->err)) == 0 &&
                 (rc = es_reader_rewind(x->r)) != 0)
            reader_err(x->err, x->r, rc);
        if (rc == ES_OK && got == 0) rc = es__err(x->err, ES_EPARSE, "%s: no training rows", p->train_path);
        if (rc == ES_OK) {
            x->n_train = x->res->train_rows = got;
            x->n_exact = 1;
        }
    }
    if ((rc = agree(x, rc)) != ES_OK) return rc;
    return es__dist_agree(p->comm, &x->dist_failed, 0, (int64_t)x->n_train, 0, "the number of training rows (the same file on every rank?)",
                          x->err);
}

typedef struct {
    uint64_t *out;
    size_t n;
    uint64_t f;
} vocab_pack;

static void vocab_pack_one(uint64_t key, uint64_t count, void *ctx) {
    vocab_pack *pk = ctx;
    pk->out[pk->n * 3] = pk->f;
    pk->out[pk->n * 3 + 1] = key;
    pk->out[pk->n * 3 + 2] = count;
    pk->n++;
}

/* A collective failed: nothing is agreed, the job must end. */
static int comm_io_fail(run *x, const char *what) {
    x->dist_failed = 2; /* nothing agreed: the job must end */
    return es__err(x->err, ES_EIO, "rank %d of %d: %s failed in the communication layer", x->p->comm->rank, x->p->comm->size, what);
}

/* run_vocab across processes (the rows counted exactly first, run_count_dist):
 * rank k counts the values of training rows [k n / N, (k + 1) n / N) only,
 * skipping the others unparsed, then every rank receives every rank's
 * (field, key, count) entries and adds them up.  The counts, and so
 * everything built from them (full's sorted keys, hash's row split, the
 * budget fractions), are those of one pass over all rows.  Collective. */
static int run_vocab_dist(run *x) {
    const es_train_params *p = x->p;
    const es_comm *c = p->comm;
    es_storage_params sp;
    int rc;
    if ((rc = es__model_params_resolve(&x->mp, NULL, &sp, x->err)) != 0) return rc;
    if (sp.budget > 1 && !es__storage_find(p->storage)->needs_vocab) {
        if (x->n_train == 0) return es__err(x->err, ES_EPARSE, "%s: no training rows", p->train_path);
        x->res->train_rows = x->n_train;
        return ES_OK;
    }
    ES_ASSERT(x->n_exact);
    const uint64_t n = x->n_train;
    /* the rows [lo, hi) of the training rows (with --shard-files: of its own) */
    const uint64_t lo = x->shards ? 0 : (uint64_t)((unsigned __int128)n * (unsigned)c->rank / (unsigned)c->size);
    const uint64_t hi = x->shards ? n / (uint64_t)c->size : (uint64_t)((unsigned __int128)n * (unsigned)(c->rank + 1) / (unsigned)c->size);
    es_vocab *mine = NULL;
    uint64_t got = 0, seen = 0;
    x->ps.pr.phase = "vocab";
    if ((rc = es_vocab_create(&mine, x->mp.n_fields)) != 0) rc = es__err(x->err, rc, "out of memory");
    if (rc == ES_OK && (rc = es__reader_skip(x->r, lo, &got)) != 0) rc = pass_err(x->err, x->r, rc, p->train_path, &x->tid);
    while (rc == ES_OK && seen < hi - lo) {
        int k = read_limited(x->r, &x->b, hi - lo - seen);
        if (k < 0) rc = pass_err(x->err, x->r, k, p->train_path, &x->tid);
        else if (k == 0) break;
        else if ((rc = es_vocab_add_batch(mine, &x->b)) != 0) rc = es__err(x->err, rc, "out of memory building the vocabulary");
        else seen += (uint64_t)k;
    }
    if (rc == ES_OK && (got != lo || seen != hi - lo)) rc = rows_changed(x->err, p->train_path, "the vocabulary pass", lo + seen, hi);
    if (rc == ES_OK) rc = es__file_id_recheck(p->train_path, &x->tid, "after building the vocabulary", x->err);
    note_bad_lines(x->r, &x->bad_train, x->bad_rep, sizeof x->bad_rep);
    /* this rank's entries, (field, key, count) */
    size_t cnt = 0, bytes = 0;
    uint64_t *buf = NULL;
    if (rc == ES_OK) {
        for (int f = 0; f < x->mp.n_fields; f++) cnt += es_vocab_distinct(mine, f);
        bytes = cnt * 3 * sizeof(uint64_t);
        if (!(buf = es__malloc(bytes + 1))) rc = es__err(x->err, ES_ENOMEM, "out of memory sending the vocabulary");
    }
    if (rc == ES_OK) {
        vocab_pack pk = {buf, 0, 0};
        for (int f = 0; f < x->mp.n_fields; f++) {
            pk.f = (uint64_t)f;
            es__vocab_each(mine, f, vocab_pack_one, &pk);
        }
    }
    es_vocab_free(mine);
    if ((rc = agree(x, rc)) != ES_OK) {
        es__free(buf);
        return rc;
    }
    /* every rank's entries to every rank */
    const size_t N = (size_t)c->size;
    size_t *v = es__calloc(5 * N, sizeof *v);
    unsigned char *all = NULL;
    if (!v) rc = es__err(x->err, ES_ENOMEM, "out of memory");
    else if (c->allgather(c->ctx, &bytes, v + 2 * N, sizeof bytes) != 0) rc = comm_io_fail(x, "sending the vocabulary sizes");
    size_t tot = 0;
    if (rc == ES_OK) {
        for (size_t i = 0; i < N; i++) {
            v[i] = bytes;            /* send: the same entries to everyone */
            v[N + i] = 0;
            v[3 * N + i] = tot;      /* receive displacement */
            tot += v[2 * N + i];
        }
        if (!(all = es__malloc(tot + 1))) rc = es__err(x->err, ES_ENOMEM, "out of memory receiving the vocabulary (%zu bytes)", tot);
    }
    if (!x->dist_failed) rc = agree(x, rc);
    if (rc == ES_OK && c->alltoallv(c->ctx, buf, v, v + N, all, v + 2 * N, v + 3 * N) != 0) rc = comm_io_fail(x, "sending the vocabulary");
    es__free(buf);
    es__free(v);
    /* the sum, in rank order */
    if (rc == ES_OK && (rc = es_vocab_create(&x->vocab, x->mp.n_fields)) != 0) rc = es__err(x->err, rc, "out of memory");
    for (size_t o = 0; rc == ES_OK && o + 3 * sizeof(uint64_t) <= tot; o += 3 * sizeof(uint64_t)) {
        uint64_t e[3];
        memcpy(e, all + o, sizeof e);
        if (e[0] >= (uint64_t)x->mp.n_fields || e[2] == 0) rc = es__err(x->err, ES_EFORMAT, "a rank sent a bad vocabulary entry");
        else if ((rc = es__vocab_add_count(x->vocab, (int)e[0], e[1], e[2])) != 0)
            rc = es__err(x->err, rc, "%s", es_vocab_errmsg(x->vocab));
    }
    es__free(all);
    if (!x->dist_failed && (rc = agree(x, rc)) != ES_OK) return rc;
    if (rc != ES_OK) return rc;
    if (x->n_train == 0) return es__err(x->err, ES_EPARSE, "%s: no training rows", p->train_path);
    x->res->train_rows = x->n_train;
    return ES_OK;
}

/* Copy src to dst atomically (temporary file, fsync, rename). */
static int copy_file(const char *src, const char *dst, es_err *err) {
    FILE *in = fopen(src, "rb");
    if (!in) return es__err(err, ES_EIO, "%s: cannot open: %s", src, strerror(errno));
    es_afile af = {0};
    int rc = es__afile_open(&af, dst, err);
    char buf[1 << 16];
    size_t n;
    while (rc == ES_OK && (n = fread(buf, 1, sizeof buf, in)) > 0)
        if (fwrite(buf, 1, n, af.fp) != n) rc = es__err(err, ES_EIO, "%s: write failed: %s", dst, strerror(errno));
    if (rc == ES_OK && ferror(in)) rc = es__err(err, ES_EIO, "%s: read failed", src);
    fclose(in);
    if (rc == ES_OK) return es__afile_commit(&af, err);
    if (af.fp) es__afile_abort(&af);
    return rc;
}

/* The checkpoint's copy of the best model: "<checkpoint>.best". */
static void ckpt_best_path(const run *x, char *buf, size_t cap) { snprintf(buf, cap, "%s.best", x->ckpt); }

/* The probabilities buffer of evaluations (one batch), allocated once. */
static int run_prob(run *x) {
    if (!x->prob && !(x->prob = es__malloc((size_t)x->p->batch * sizeof(float)))) return es__err(x->err, ES_ENOMEM, "out of memory");
    return ES_OK;
}

/* Across processes: the metrics of the sharded model on rows [skip, skip +
 * n_rows) of r (n_rows 0: to the end, counted first by a scan that parses
 * nothing), in global batches of the run's batch size of which every rank
 * reads and predicts its part (es__dist_predict); rank 0 gathers
 * (probability, label) in row order into x->valid and computes the
 * metrics, which every rank gets.  A collective: every rank calls it, with
 * its status rc so far (the ranks agree on it first). */
static int dist_eval_rows(run *x, int rc, es_reader *r, const char *path, uint64_t skip, uint64_t n_rows, es_metrics *out) {
    const es_comm *c = x->p->comm;
    const int B = x->p->batch;
    float *mine = NULL, *all = NULL;
    memset(out, 0, sizeof *out);
    x->valid.n = 0;
    if (rc == ES_OK && !(mine = es__malloc(4 * (size_t)B * sizeof(float)))) rc = es__err(x->err, ES_ENOMEM, "out of memory");
    all = mine ? mine + 2 * (size_t)B : NULL;
    if (rc == ES_OK && n_rows == 0) { /* count: every rank, unparsed */
        uint64_t got = 0;
        if ((rc = es__reader_skip(r, UINT64_MAX, &got)) != 0) rc = reader_err(x->err, r, rc);
        else if ((rc = es_reader_rewind(r)) != 0) rc = reader_err(x->err, r, rc);
        else if (got <= skip) rc = es__err(x->err, ES_EPARSE, "%s: no rows to evaluate", path);
        else n_rows = got - skip;
    }
    if (rc == ES_OK && skip > 0) {
        uint64_t got = 0;
        if ((rc = es__reader_skip(r, skip, &got)) != 0) rc = reader_err(x->err, r, rc);
        else if (got < skip) rc = rows_changed(x->err, path, "the evaluation", got, skip);
    }
    rc = es__dist_agree(c, &x->dist_failed, rc, (int64_t)n_rows, 0, "the rows to evaluate (the same file on every rank?)", x->err);
    for (uint64_t done = 0; rc == ES_OK && done < n_rows;) {
        int n = (int)ES_MIN((uint64_t)B, n_rows - done), short_read = 0;
        int got = read_part(r, &x->b, c->rank, c->size, n, &short_read), lrc = ES_OK;
        if (got < 0) lrc = reader_err(x->err, r, got);
        else if (short_read) lrc = rows_changed(x->err, path, "the evaluation", done, n_rows);
        if ((rc = es__dist_agree(c, &x->dist_failed, lrc, n, 0, "the rows of an evaluation batch", x->err)) != ES_OK) break;
        if ((rc = es__dist_predict(x->dist, &x->b, n, all)) == ES_OK) {
            for (int i = 0; i < x->b.n; i++) {
                mine[2 * i] = all[i];
                mine[2 * i + 1] = x->b.label[i];
            }
            rc = es__dist_collect(x->dist, n, mine, all);
        }
        if (rc != ES_OK) { /* inside collectives: the others may wait */
            x->dist_failed = 2;
            es__err(x->err, rc, "%s", es_model_errmsg(x->m));
            break;
        }
        for (int i = 0; c->rank == 0 && i < n && rc == ES_OK; i++)
            if (pred_push(&x->valid, all + 2 * i, all + 2 * i + 1, 1) != ES_OK) rc = es__err(x->err, ES_ENOMEM, "out of memory for predictions");
        done += (uint64_t)n;
        if ((rc = agree(x, rc)) != ES_OK) break;
    }
    es__free(mine);
    if (rc != ES_OK) return rc;
    if (c->rank == 0 && x->valid.n > 0) es_metrics_compute(x->valid.p, x->valid.y, x->valid.n, out);
    if (c->bcast(c->ctx, out, sizeof *out, 0) != 0) {
        x->dist_failed = 2;
        return es__err(x->err, ES_EIO, "the communication layer failed sending the metrics");
    }
    return ES_OK;
}

/* Metrics of the current model on the validation file, or on the
 * held-out last rows of the training file (read by a reader of its own, so
 * that an evaluation in the middle of an epoch leaves the training reader
 * where it is). */
/* Reader options for a validation or test file: the training file's, and
 * for libffm its field count (a file whose largest field is smaller reads
 * as the model's fields, one with a larger field is a bad line naming the
 * term, and no counting pass reads the file first). */
static es_reader_params eval_reader_params(const run *x) {
    es_reader_params rp = x->p->reader;
    if (rp.n_fields_hint <= 0 && x->r && es_reader_resolved_params(x->r).format == ES_FMT_LIBFFM) rp.n_fields_hint = x->mp.n_fields;
    return rp;
}

/* The validation reader *rd of path: opened (and its identity taken) the
 * first time, else rewound. */
static int valid_reader(run *x, const char *path, es__file_id *id, es_reader **rd) {
    const es_train_params *p = x->p;
    es_err *err = x->err;
    int rc;
    if (*rd) return (rc = es_reader_rewind(*rd)) != 0 ? reader_err(err, *rd, rc) : ES_OK;
    if (p->valid_path && (rc = es__file_id_get(path, 0, id, err)) != 0) return rc;
    const es_reader_params rp = eval_reader_params(x);
    if ((rc = es_reader_open(rd, path, &rp, err)) != 0) return rc;
    if (es_reader_n_dense(*rd) != x->mp.n_dense || es_reader_n_fields(*rd) != x->mp.n_fields)
        return es__err(err, ES_EINVAL, "%s: %d numeric and %d categorical columns, the training file has %d and %d", path,
                       es_reader_n_dense(*rd), es_reader_n_fields(*rd), x->mp.n_dense, x->mp.n_fields);
    return ES_OK;
}

static int run_validate(run *x, es_metrics *out) {
    const es_train_params *p = x->p;
    es_err *err = x->err;
    x->valid.n = 0;
    const char *path = p->valid_path ? p->valid_path : p->train_path;
    es__file_id *id = p->valid_path ? &x->vid : &x->tid;
    es_reader **rd = p->valid_path ? &x->rv : &x->rva;
    int rc = run_prob(x);
    if (rc == ES_OK) rc = valid_reader(x, path, id, rd);
    uint64_t skip = p->valid_path ? 0 : x->n_train, n_valid = p->valid_path ? 0 : x->n_total - x->n_train;
    if (p->comm) { /* every rank, whatever its status */
        rc = dist_eval_rows(x, rc, *rd, path, skip, n_valid, out);
        if (rc == ES_OK && !p->valid_path) note_bad_lines(*rd, &x->bad_train, x->bad_rep, sizeof x->bad_rep);
        if (rc == ES_OK) rc = es__file_id_recheck(path, id, "while evaluating", err);
        return agree(x, rc);
    }
    if (rc != ES_OK) return rc;
    if ((rc = predict_stream(x->m, *rd, &x->b, x->prob, skip, n_valid, &x->valid, err)) != 0)
        return es__file_id_recheck(path, id, "after a read error", err) != ES_OK ? ES_EIO : rc;
    if (!p->valid_path) note_bad_lines(*rd, &x->bad_train, x->bad_rep, sizeof x->bad_rep);
    if ((rc = es__file_id_recheck(path, id, "while evaluating", err)) != 0) return rc;
    if (!p->valid_path && x->valid.n != n_valid) return rows_changed(err, path, "the evaluation", (uint64_t)x->valid.n, n_valid);
    memset(out, 0, sizeof *out);
    if (x->valid.n > 0) es_metrics_compute(x->valid.p, x->valid.y, x->valid.n, out);
    return ES_OK;
}

/* The model as it would be saved, for a storage whose served form is
 * derived at save (ops->derived_serving: pruned and deduplicated tables):
 * x->m saved without its training state to a temporary file next to the
 * output (or in TMPDIR) and loaded back into *out; NULL for the others,
 * whose saved model predicts exactly what the one in memory does. */
static int served_copy(run *x, es_model **out) {
    *out = NULL;
    if (!x->m->st->ops->derived_serving) return ES_OK;
    const char *tmp = getenv("TMPDIR");
    char path[sizeof x->best_path];
    if (x->p->out_path) snprintf(path, sizeof path, "%s.served.tmp.%ld", x->p->out_path, (long)getpid());
    else snprintf(path, sizeof path, "%s/embstore-served.%ld.es", tmp && *tmp ? tmp : "/tmp", (long)getpid());
    int slot = es_temp_file_track(path);
    int rc = es_model_save(x->m, path, 0);
    if (rc != ES_OK) es__err(x->err, rc, "%s", es_model_errmsg(x->m));
    else rc = es_model_load(out, path, ES_LOAD_NO_VERIFY, x->err);
    remove(path);
    es_temp_file_untrack(slot);
    return rc;
}

/* Run fn on the served copy of the model in place of x->m (when there is
 * one), so the reported metrics are those of the model as saved. */
static int as_served(run *x, int (*fn)(run *x)) {
    es_model *c = NULL, *m = x->m;
    int rc = served_copy(x, &c);
    if (rc != ES_OK) return rc;
    if (c) x->m = c;
    rc = fn(x);
    x->m = m;
    es_model_free(c);
    return rc;
}

/* The final model on the validation rows. */
static int run_evaluate_valid_now(run *x);
static int run_evaluate_valid(run *x) { return as_served(x, run_evaluate_valid_now); }
static int run_evaluate_valid_now(run *x) {
    const es_train_params *p = x->p;
    int rc;
    if (x->refit_resumed) return ES_OK; /* the chosen model's metrics came with the checkpoint */
    x->ps.pr.phase = "eval";
    report(&x->ps, 1);
    double t_eval = es__now();
    if (p->valid_path || p->valid_frac > 0) {
        if ((rc = run_validate(x, &x->res->valid)) != 0) return rc;
        if (x->valid.n > 0) x->res->eval_rows_per_s = (double)x->valid.n / (es__now() - t_eval + 1e-9);
    }
    return ES_OK;
}

/* The final model on the test file. */
static int run_evaluate_test_now(run *x);
static int run_evaluate_test(run *x) { return as_served(x, run_evaluate_test_now); }
static int run_test_into(run *x, es_metrics *out);
static int run_evaluate_test_now(run *x) { return run_test_into(x, &x->res->test); }
static int run_test_into(run *x, es_metrics *out) {
    const es_train_params *p = x->p;
    int rc;
    if (!p->test_path) return ES_OK;
    es_reader *rt = NULL;
    es__file_id id;
    x->valid.n = 0;
    if ((rc = run_prob(x)) != 0) return rc;
    const es_reader_params rp = eval_reader_params(x);
    if ((rc = es__file_id_get(p->test_path, 0, &id, x->err)) == 0 && (rc = es_reader_open(&rt, p->test_path, &rp, x->err)) == 0) {
        if (es_reader_n_dense(rt) != x->mp.n_dense || es_reader_n_fields(rt) != x->mp.n_fields)
            rc = es__err(x->err, ES_EINVAL, "%s: %d numeric and %d categorical columns, the training file has %d and %d", p->test_path,
                         es_reader_n_dense(rt), es_reader_n_fields(rt), x->mp.n_dense, x->mp.n_fields);
        else if (p->comm)
            ; /* below */
        else if ((rc = predict_stream(x->m, rt, &x->b, x->prob, 0, 0, &x->valid, x->err)) == 0 &&
                 (rc = es__file_id_recheck(p->test_path, &id, "while evaluating", x->err)) == 0 && x->valid.n > 0)
            es_metrics_compute(x->valid.p, x->valid.y, x->valid.n, out);
    }
    if (p->comm) { /* every rank, whatever its status */
        rc = dist_eval_rows(x, rc, rt, p->test_path, 0, 0, out);
        if (rc == ES_OK) rc = es__file_id_recheck(p->test_path, &id, "while evaluating", x->err);
        rc = agree(x, rc);
    }
    es_reader_free(rt);
    return rc;
}

/* Matryoshka: the model at each trained prefix (es_train_result.prefixes),
 * measured where the whole model is: on the validation rows right after
 * its validation (before a refit, as res->valid), on the test file after
 * its test (the final model, whose slices give the bytes). */
static int run_prefixes_on(run *x, int test) {
    const es_net_params *np = &x->m->np;
    es_train_result *res = x->res;
    if (np->n_prefix < 2) return ES_OK;
    const int measure = test ? x->p->test_path != NULL : x->p->valid_path || x->p->valid_frac > 0;
    int rc = ES_OK;
    for (int i = 0; i < np->n_prefix && i < (int)(sizeof res->prefixes / sizeof *res->prefixes) && rc == ES_OK; i++) {
        const int d = np->prefix[i];
        es_metrics *out = test ? &res->prefixes[i].test : &res->prefixes[i].valid;
        res->prefixes[i].dim = d;
        if (res->n_prefixes < i + 1) res->n_prefixes = i + 1;
        if (d == np->dim) { /* the whole model: measured already */
            *out = test ? res->test : res->valid;
            res->prefixes[i].emb_bytes = res->emb_bytes;
            continue;
        }
        if (test) { /* the final model's bytes at the prefix: its slice's (0: a method slice refuses) */
            es_model *sl = NULL;
            es_err serr = {0};
            res->prefixes[i].emb_bytes = es_model_slice(x->m, d, &sl, &serr) == ES_OK ? es_model_table_bytes(sl) : 0;
            es_model_free(sl);
        }
        if (!measure) continue;
        if ((rc = es_model_set_prefix(x->m, d)) != ES_OK) return es__err(x->err, rc, "%s", es_model_errmsg(x->m));
        rc = test ? run_test_into(x, out) : run_validate(x, out);
    }
    es_model_set_prefix(x->m, 0);
    return rc;
}
static int run_prefixes_valid_now(run *x) { return x->refit_resumed ? ES_OK : run_prefixes_on(x, 0); }
static int run_prefixes_test_now(run *x) { return run_prefixes_on(x, 1); }

/* ---- across processes: the model stays sharded ----------------------------------------
 * No rank ever holds the whole table (--rank-memory): evaluations run on
 * the shards (dist_eval_rows), early stopping's best model is every rank's
 * shard in a file of its own, and the model file is streamed to rank 0 row
 * round by row round (run_save). */

/* After training (or the refit): x->m becomes early stopping's best model
 * (every rank its shard's file) when that is not the last; the
 * communication counters go to the result.  Collective. */
static int run_final(run *x, int use_best) {
    const es_train_params *p = x->p;
    es__dist_stats st;
    es__dist_get_stats(x->dist, &st);
    x->res->ranks = p->comm->size;
    x->res->comm_steps = st.steps;
    if (st.steps) {
        x->res->comm_sparse_bytes_per_step = st.sparse_bytes / (double)st.steps;
        x->res->comm_dense_bytes_per_step = st.dense_bytes / (double)st.steps;
    }
    x->res->comm_seconds = st.seconds;
    /* every rank knows: the decisions are shared; a resumed refit goes on
     * with its model (the chosen one's metrics came with the checkpoint) */
    if (!(use_best && x->have_best && !x->best_is_current) || x->refit_resumed) return ES_OK;
    es_model *m = NULL;
    int rc = es__model_load(&m, x->best_path, ES__LOAD_SHARD | ES_LOAD_NO_VERIFY, 0, x->err);
    if (rc == ES_OK && (rc = es_model_set_reader(m, x->r)) != ES_OK) es__err(x->err, rc, "%s", es_model_errmsg(m));
    if (rc == ES_OK && (rc = es__dist_rebind(x->dist, m, x->err)) == ES_OK) {
        es_model_free(x->m);
        x->m = m;
        m = NULL;
    }
    es_model_free(m);
    return agree(x, rc);
}

/* ---- early stopping -------------------------------------------------------------- */

/* Where the best model is kept while training: a temporary file next to
 * the output (or in TMPDIR), removed at the end and on a signal.  A
 * checkpoint keeps its own copy, "<checkpoint>.best" (run_ckpt_best). */
static void best_path_init(run *x) {
    const es_train_params *p = x->p;
    const char *tmp = getenv("TMPDIR");
    char rk[32] = ""; /* across processes: every rank keeps its shard's */
    if (p->comm) snprintf(rk, sizeof rk, ".rank%dof%d", p->comm->rank, p->comm->size);
    if (p->out_path) snprintf(x->best_path, sizeof x->best_path, "%s.best.tmp.%ld%s", p->out_path, (long)getpid(), rk);
    else snprintf(x->best_path, sizeof x->best_path, "%s/embstore-best.%ld%s.es", tmp && *tmp ? tmp : "/tmp", (long)getpid(), rk);
    x->best_slot = es_temp_file_track(x->best_path);
}

/* One evaluation during training: record it, keep the model when it is the
 * best so far, and ask to stop after early_stop evaluations without one. */
static int run_eval_point(run *x, int ep, uint64_t done) {
    const es_train_params *p = x->p;
    es_train_result *res = x->res;
    es_metrics mt;
    int rc;
    if ((rc = run_validate(x, &mt)) != ES_OK) return rc; /* across processes: on the shards, the metrics on every rank */
    if (res->n_evals < ES_TRAIN_MAX_EVALS) res->evals[res->n_evals] = mt;
    int auc = p->stop_metric && !strcmp(p->stop_metric, "auc");
    double score = auc ? -mt.auc : mt.logloss;
    if (!x->have_best || score < x->best_score) {
        if (p->comm) { /* every rank its shard */
            if ((rc = agree(x, es__model_save(x->m, x->best_path, 0, x->err))) != ES_OK) return rc;
        } else if ((rc = es_model_save(x->m, x->best_path, 0)) != ES_OK) {
            return es__err(x->err, rc, "%s", es_model_errmsg(x->m));
        }
        x->have_best = x->best_is_current = 1;
        x->best_in_ckpt = 0;
        x->best_score = score;
        x->bad_evals = 0;
        res->best_eval = res->n_evals;
        res->best_epoch = ep + 1;
        res->best_rows = done;
    } else {
        x->best_is_current = 0;
        if (++x->bad_evals >= p->early_stop) x->stop = 1;
    }
    res->n_evals++;
    x->last_eval_ep = ep;
    x->last_eval_done = done;
    return ES_OK;
}

/* After training: continue with the best model when a later one is worse. */
static int run_take_best(run *x) {
    if (!x->have_best || x->best_is_current || x->p->comm) return ES_OK; /* across processes: run_final */
    es_model *best = NULL;
    int rc = es_model_load(&best, x->best_path, ES_LOAD_NO_VERIFY, x->err);
    if (rc != ES_OK) return rc;
    es_model_free(x->m);
    x->m = best;
    return ES_OK;
}

/* Early-stopping state in a checkpoint's metadata, so --resume goes on
 * with the same best model, score and count. */
static int run_ckpt_state_put(run *x) {
    char v[64];
    int rc = 0;
    es_train_result *res = x->res;
    snprintf(v, sizeof v, "%d,%d,%d,%d,%d,%llu", x->have_best, x->bad_evals, res->n_evals, res->best_eval + 1, res->best_epoch,
             (unsigned long long)res->best_rows);
    rc |= es__model_set_meta(x->m, "ckpt.early_stop", v);
    snprintf(v, sizeof v, "%.17g", x->best_score);
    rc |= es__model_set_meta(x->m, "ckpt.best_score", v);
    if (rc) return es__err(x->err, ES_ENOMEM, "out of memory");
    if (!x->have_best || x->best_in_ckpt) return ES_OK;
    char cb[sizeof x->best_path]; /* across processes: this rank's shard, next to its checkpoint */
    ckpt_best_path(x, cb, sizeof cb);
    if ((rc = copy_file(x->best_path, cb, x->err)) == ES_OK) x->best_in_ckpt = 1;
    return rc;
}

static int run_ckpt_state_get(run *x) {
    const char *v = es_model_meta(x->m, "ckpt.early_stop"), *s = es_model_meta(x->m, "ckpt.best_score");
    double f[6];
    int rc;
    if (!x->p->early_stop) return ES_OK;
    if (!v || !s) return es__err(x->err, ES_EFORMAT, "%s: the checkpoint has no early-stopping state", x->ckpt);
    if ((rc = es__meta_f64_list(x->ckpt, "ckpt.early_stop", v, 6, 0, 9e15, f, x->err)) != 0 ||
        (rc = es__meta_f64(x->ckpt, "ckpt.best_score", s, -INFINITY, INFINITY, &x->best_score, x->err)) != 0)
        return rc;
    x->have_best = f[0] != 0;
    x->bad_evals = (int)f[1];
    x->res->n_evals = (int)f[2];
    x->res->best_eval = (int)f[3] - 1;
    x->res->best_epoch = (int)f[4];
    x->res->best_rows = (uint64_t)f[5];
    if (!x->have_best) return ES_OK;
    char cb[sizeof x->best_path];
    ckpt_best_path(x, cb, sizeof cb);
    if (access(cb, R_OK) != 0) return es__err(x->err, ES_ENOTFOUND, "%s: the best model of the checkpointed run is missing (%s)", x->ckpt, cb);
    return copy_file(cb, x->best_path, x->err);
}

/* A checkpoint written during the refit says so, with the validation
 * metrics of the model early stopping chose (which the refit model cannot
 * measure again). */
static int run_ckpt_refit_put(run *x) {
    const es_metrics *v = &x->res->valid;
    char buf[256];
    snprintf(buf, sizeof buf, "%.17g,%.17g,%.17g,%.17g,%.17g,%llu,%d", v->auc, v->logloss, v->calibration, v->base_rate, v->mean_pred,
             (unsigned long long)v->rows, x->res->stopped_early);
    if (es__model_set_meta(x->m, "ckpt.refit", buf) != 0) return es__err(x->err, ES_ENOMEM, "out of memory");
    return ES_OK;
}

static int run_ckpt_refit_get(run *x) {
    const char *v = es_model_meta(x->m, "ckpt.refit");
    if (!v) return ES_OK;
    if (!x->p->refit) return es__err(x->err, ES_EINVAL, "%s: the checkpoint is in a refit, this command has none", x->ckpt);
    double f[7];
    int rc = es__meta_f64_list(x->ckpt, "ckpt.refit", v, 7, -INFINITY, INFINITY, f, x->err);
    if (rc != ES_OK) return rc;
    es_metrics *m = &x->res->valid;
    m->auc = f[0];
    m->logloss = f[1];
    m->calibration = f[2];
    m->base_rate = f[3];
    m->mean_pred = f[4];
    m->rows = (uint64_t)f[5];
    x->res->stopped_early = f[6] != 0;
    x->refit_resumed = 1;
    return ES_OK;
}

static int stage_meta_get(run *x);
static int stage_meta_put(run *x, es_model *m);

/* Continue from the checkpoint: it must come from this run (the data file
 * included), and what may differ (epochs) is then recorded as this command
 * says. */
static int run_resume(run *x) {
    const es_train_params *p = x->p;
    es_err *err = x->err;
    int rc;
    if (p->comm) { /* this rank's shard, written by the same rank of as many */
        if ((rc = es__model_checkpoint_load(&x->m, x->ckpt_load ? x->ckpt_load : x->ckpt, &x->start, ES__LOAD_SHARD, err)) != 0) return rc;
        const es_storage_params *sp = &x->m->st->p;
        const int replicated = !x->m->st->ops->row_map && x->m->st->ops->rep_floats;
        if (!replicated && ((sp->shard_n > 1 ? sp->shard_n : 1) != p->comm->size || sp->shard_rank != p->comm->rank)) /* 1 rank: a whole table */
            return es__err(err, ES_EINVAL, "%s: written by rank %d of %d, this is rank %d of %d: resume with as many processes", x->ckpt,
                           sp->shard_rank, sp->shard_n > 1 ? sp->shard_n : 1, p->comm->rank, p->comm->size);
        if ((rc = es__dist_create(&x->dist, p->comm, x->m, err)) != 0) return rc;
    } else if ((rc = es_model_checkpoint_load(&x->m, x->ckpt, &x->start, err)) != 0) {
        return rc;
    }
    if ((rc = es__train_cfg_check_resume(x->m, x->ckpt, x->cfg, err)) != 0) return rc;
    if ((rc = es__train_cfg_record(x->m, x->cfg)) != 0) return es__err(err, rc, "out of memory");
    if ((rc = run_ckpt_state_get(x)) != 0 || (rc = run_ckpt_refit_get(x)) != 0) return rc;
    if (x->staged && (rc = stage_meta_get(x)) != 0) return rc;
    if (x->refit_resumed) { /* the refit's passes and rows: checked by run_refit */
        x->res->resumed = 1;
        return ES_OK;
    }
    /* a search checkpoint: its epochs are the search's */
    const int epochs = x->staged && !x->in_retrain ? x->m->st->ops->staged->search_epochs(x->m->st) : p->epochs;
    if (x->start.epoch >= epochs)
        return es__err(err, ES_EINVAL, "%s: the checkpoint is in epoch %d, this command asks for %d epoch%s in all", x->ckpt,
                       x->start.epoch + 1, epochs, epochs == 1 ? "" : "s");
    if (x->m->n_dense != x->mp.n_dense || x->m->n_fields != x->mp.n_fields || x->start.rows > x->n_train)
        return es__err(err, ES_EINVAL, "%s: checkpoint does not match this run (epoch %d of %d, row %llu of %llu)", x->ckpt,
                       x->start.epoch + 1, p->epochs, (unsigned long long)x->start.rows, (unsigned long long)x->n_train);
    x->res->resumed = 1;
    return ES_OK;
}

/* --rank-memory: the table bytes this process holds (its rows and their
 * optimizer state: its shard with a comm) against the limit, once the
 * table is created and before any row is trained.  The method's maps (full's
 * key index, hashed salts) are whole on every process and not counted. */
static int run_check_rank_memory(run *x) {
    const es_storage *st = x->m->st;
    const size_t held = st->param_bytes + st->state_bytes;
    const double lim = x->p->rank_memory;
    const int N = x->p->comm ? x->p->comm->size : 1, k = x->p->comm ? x->p->comm->rank : 0;
    x->res->rank_table_bytes = held;
    if (held > x->res->rank_table_bytes_max) x->res->rank_table_bytes_max = held;
    if (!(lim > 0) || (double)held <= lim) return ES_OK;
    char who[48] = "";
    if (x->p->comm) snprintf(who, sizeof who, "rank %d of %d: ", k, N);
    double need = (double)held * N / lim; /* the rows split over the processes */
    int procs = 1;
    while (procs < need && procs < 1 << 20) procs *= 2;
    return es__err(x->err, ES_EBUDGET,
                   "%sthe table%s takes %zu bytes (rows %zu, optimizer state %zu), more than --rank-memory %.0f bytes; about %d "
                   "processes (mpirun -np %d, docs/scale.md) would hold it",
                   who, x->p->comm ? "'s shard" : "", held, st->param_bytes, st->state_bytes, lim, procs, procs);
}

/* Across processes: the most table bytes any process holds, in the
 * result.  Collective. */
static int run_rank_bytes(run *x) {
    const es_comm *c = x->p->comm;
    uint64_t mine = x->res->rank_table_bytes, *all = es__calloc((size_t)c->size, sizeof *all);
    int rc = agree(x, all ? ES_OK : es__err(x->err, ES_ENOMEM, "out of memory"));
    if (rc != ES_OK) {
        es__free(all);
        return rc;
    }
    if (c->allgather(c->ctx, &mine, all, sizeof mine) != 0) rc = comm_io_fail(x, "counting the table bytes");
    for (int i = 0; rc == ES_OK && i < c->size; i++)
        if (all[i] > x->res->rank_table_bytes_max) x->res->rank_table_bytes_max = (size_t)all[i];
    es__free(all);
    return rc;
}

/* Give the model the training reader and record its sizes. */
static int run_attach(run *x) {
    int rc;
    if ((rc = es_model_set_reader(x->m, x->r)) != 0) return es__err(x->err, rc, "%s", es_model_errmsg(x->m));
    es_train_result *res = x->res;
    res->emb_bytes = es_model_table_bytes(x->m);
    res->emb_param_bytes = x->m->st->param_bytes;
    res->emb_state_bytes = es_model_table_state_bytes(x->m);
    res->net_bytes = es_model_net_bytes(x->m);
    res->param_bytes = res->emb_bytes + res->net_bytes;
    res->full_bytes = es__storage_full_bytes(x->vocab, x->m->st->p.dim, es__storage_min_count(&x->m->st->p));
    return run_check_rank_memory(x);
}

/* A checkpoint file's step: its ckpt.trained + 1 (0: no such file) and a
 * hash of its position. */
static void ckpt_ident(const char *path, uint64_t *id, uint64_t *h) {
    es_file *f = NULL;
    es_err e = {0};
    *id = *h = 0;
    if (access(path, F_OK) != 0 || es__file_open(&f, path, ES_FILE_MAP | ES_FILE_NO_VERIFY, &e) != 0) return;
    static const char *const keys[] = {"ckpt.trained", "ckpt.epoch", "ckpt.rows", "ckpt.loss_sum", "ckpt.refit"};
    const char *t = es__file_meta(f, "ckpt.trained");
    char *end = NULL;
    unsigned long long v = t ? strtoull(t, &end, 10) : 0;
    if (t && end && !*end && v < UINT64_MAX) {
        uint64_t hh = UINT64_C(0xcbf29ce484222325);
        for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
            const char *s = es__file_meta(f, keys[i]);
            hh = fnv1a(s ? s : "-", s ? strlen(s) + 1 : 2, hh);
        }
        *id = (uint64_t)v + 1;
        *h = hh;
    }
    es__file_close(f);
}

/* --resume across processes: each rank has up to two files of its shard,
 * "<ckpt>" and "<ckpt>.new" (a commit cut short: run_batches_dist).  Every
 * rank tells every other which steps it holds; the newest step that every
 * rank holds is resumed, each rank from its file of that step
 * (x->ckpt_load); *exists = 0 when no rank has a file.  ES_EINVAL (agreed)
 * when files exist but no step is on every rank.  Collective. */
static int dist_pick_checkpoint(run *x, int *exists) {
    const es_comm *c = x->p->comm;
    const size_t N = (size_t)c->size;
    uint64_t mine[4] = {0, 0, 0, 0};
    *exists = 0;
    x->ckpt_load = NULL;
    if (x->p->resume && x->ckpt) {
        ckpt_ident(x->ckpt, &mine[0], &mine[1]);
        ckpt_ident(x->ckpt_new, &mine[2], &mine[3]);
    }
    uint64_t *all = es__calloc(4 * N, sizeof *all);
    if (!all) return agree(x, es__err(x->err, ES_ENOMEM, "out of memory"));
    int rc = agree(x, ES_OK);
    if (rc == ES_OK && c->allgather(c->ctx, mine, all, sizeof mine) != 0) rc = comm_io_fail(x, "choosing the checkpoint");
    uint64_t best = 0, bh = 0;
    int any = 0;
    for (size_t r = 0; rc == ES_OK && r < N; r++)
        for (int s = 0; s < 2; s++) {
            uint64_t id = all[r * 4 + 2 * s], h = all[r * 4 + 2 * s + 1];
            if (!id) continue;
            any = 1;
            int everywhere = 1;
            for (size_t q = 0; q < N && everywhere; q++)
                everywhere = (all[q * 4] == id && all[q * 4 + 1] == h) || (all[q * 4 + 2] == id && all[q * 4 + 3] == h);
            if (everywhere && id > best) {
                best = id;
                bh = h;
            }
        }
    es__free(all);
    if (rc != ES_OK) return rc;
    if (any && !best)
        return agree(x, es__err(x->err, ES_EINVAL,
                                "%s: the ranks' checkpoint files are of different steps and no step is on every rank; start again "
                                "without --resume",
                                x->ckpt));
    if (best) {
        *exists = 1;
        x->ckpt_load = mine[0] == best && mine[1] == bh ? x->ckpt : x->ckpt_new;
    }
    return agree(x, ES_OK);
}

/* Across processes: this rank's shard of a sharded method's table (a
 * replicated one, dhe or tt, is whole on every rank: no shard). */
static void dist_shard_params(const es_train_params *p, es_storage_params *sp) {
    const es_storage_ops *ops = es__storage_find(sp->method);
    if (ops && !ops->row_map && ops->rep_floats) return;
    sp->shard_rank = p->comm->rank;
    sp->shard_n = p->comm->size;
}

/* Across processes: x->m with this rank's shard of the tables, and the
 * distributed step over it. */
static int run_create_shard(run *x) {
    const es_train_params *p = x->p;
    es_err *err = x->err;
    es_net_params np;
    es_storage_params sp;
    es_reader_params rp = es_reader_params_default();
    int rc;
    if ((rc = es__model_params_resolve(&x->mp, &np, &sp, err)) != 0) return rc;
    dist_shard_params(p, &sp);
    if ((rc = es__model_check_memory(&np, &sp, x->vocab, err)) != 0 || (rc = es__model_create(&x->m, &np, &sp, x->vocab, &rp, err)) != 0)
        return rc;
    rc = x->dist ? es__dist_rebind(x->dist, x->m, err) : es__dist_create(&x->dist, p->comm, x->m, err);
    if (rc != 0) return rc;
    if ((rc = es__train_cfg_record(x->m, x->cfg)) != 0) return es__err(err, rc, "out of memory");
    return ES_OK;
}

/* --resume found no checkpoint of this run: ES_EINVAL when the first
 * `len` characters of ckpt + ".rank<rank>of<M>" name a checkpoint of a
 * run on M processes other than `size` (0: a run without mpirun, for
 * which every such file is another run's), so that it is not silently
 * ignored and training started afresh. */
static int other_rank_ckpt(const char *ckpt, int len, int rank, int size, es_err *err) {
    char pat[4400];
    glob_t g;
    int rc = ES_OK;
    snprintf(pat, sizeof pat, "%.*s.rank%dof*", len, ckpt, rank);
    if (glob(pat, 0, NULL, &g) != 0) return ES_OK;
    for (size_t i = 0; i < g.gl_pathc && rc == ES_OK; i++) { /* "...of<M>" exactly (not .best, .new, temporaries) */
        const char *o = strrchr(g.gl_pathv[i], 'f');
        char *end = NULL;
        long m = o ? strtol(o + 1, &end, 10) : 0;
        if (!o || end == o + 1 || *end || m == size) continue;
        rc = size ? es__err(err, ES_EINVAL, "%s is a checkpoint of a run on %ld processes; resume it with as many "
                                            "(re-sharding is not done yet: docs/scale.md)", g.gl_pathv[i], m)
                  : es__err(err, ES_EINVAL, "%s is a checkpoint of a run on %ld processes (mpirun -np %ld); resume it under "
                                            "mpirun with as many, or start afresh without --resume", g.gl_pathv[i], m, m);
    }
    globfree(&g);
    return rc;
}

/* Create the model, or resume it from the checkpoint. */
static int run_model(run *x) {
    const es_train_params *p = x->p;
    es_err *err = x->err;
    int rc;
    x->ckpt = p->checkpoint_path;
    if (!x->ckpt && (p->checkpoint_every > 0 || p->resume)) {
        if (!p->out_path) return es__err(err, ES_EINVAL, "checkpoints need --out or --checkpoint PATH");
        snprintf(x->ckpt_buf, sizeof x->ckpt_buf, "%s.ckpt", p->out_path);
        x->ckpt = x->ckpt_buf;
    }
    if (p->early_stop) best_path_init(x);
    if (p->comm) { /* this rank's shard of the tables; its own checkpoint file */
        if (x->ckpt) {
            snprintf(x->ckpt_rank, sizeof x->ckpt_rank, "%s.rank%dof%d", x->ckpt, p->comm->rank, p->comm->size);
            x->ckpt = x->ckpt_rank;
        }
        if (x->ckpt) snprintf(x->ckpt_new, sizeof x->ckpt_new, "%s.new", x->ckpt);
        int exists = 0;
        if ((rc = dist_pick_checkpoint(x, &exists)) != ES_OK) return rc;
        rc = ES_OK;
        if (p->resume && x->ckpt && !exists) /* a checkpoint of another rank count is not silently ignored */
            rc = other_rank_ckpt(x->ckpt, (int)(strlen(x->ckpt) - strlen(strrchr(x->ckpt, '.'))), p->comm->rank, p->comm->size, err);
        if ((rc = agree(x, rc)) != 0) return rc;
        if (exists) {
            es_net_params np;
            es_storage_params sp;
            rc = es__model_params_resolve(&x->mp, &np, &sp, err);
            if (rc == 0) {
                dist_shard_params(p, &sp);
                rc = es__model_check_memory(&np, &sp, x->vocab, err);
            }
            if (rc == 0) rc = run_resume(x);
            if ((rc = agree(x, rc)) != 0) return rc;
            /* the ranks' checkpoints must be of one step */
            uint64_t h = fnv1a(&x->start.loss_sum, sizeof x->start.loss_sum, UINT64_C(0xcbf29ce484222325));
            h = fnv1a(&x->start.trained, sizeof x->start.trained, h);
            if ((rc = es__dist_agree(p->comm, &x->dist_failed, 0, (int64_t)x->start.epoch * 1000003 + (int64_t)x->start.rows, h,
                                     "the checkpoint's position (the ranks' files are of different steps)", err)) != 0)
                return rc;
        } else if ((rc = run_create_shard(x)) != 0) {
            return rc;
        }
    } else if (p->resume && x->ckpt && access(x->ckpt, F_OK) != 0 &&
               (rc = other_rank_ckpt(x->ckpt, (int)strlen(x->ckpt), 0, 0, err)) != ES_OK) {
        return rc; /* a run under mpirun left per-rank checkpoints: not silently started afresh */
    } else if (p->resume && x->ckpt && access(x->ckpt, F_OK) == 0) {
        es_net_params np;
        es_storage_params sp;
        if ((rc = es__model_params_resolve(&x->mp, &np, &sp, err)) != 0 ||
            (rc = es__model_check_memory(&np, &sp, x->vocab, err)) != 0 || (rc = run_resume(x)) != 0)
            return rc;
    } else if ((rc = es_model_create(&x->m, &x->mp, x->vocab, err)) != 0) {
        return rc;
    } else if ((rc = es__train_cfg_record(x->m, x->cfg)) != 0) {
        return es__err(err, rc, "out of memory");
    } else if ((rc = stage_meta_put(x, x->m)) != 0) {
        return rc;
    }
    return run_attach(x);
}

/* Skip the rows of this epoch a resumed checkpoint already trained on. */
static int run_skip(run *x, uint64_t rows) {
    if (x->p->comm) { /* unparsed: these rows were trained before the checkpoint */
        uint64_t got = 0;
        if (x->shards) rows /= (uint64_t)x->p->comm->size; /* its own part of them */
        int rc = es__reader_skip(x->r, rows, &got);
        if (rc != 0) return pass_err(x->err, x->r, rc, x->p->train_path, &x->tid);
        if (got < rows) return es__err(x->err, ES_EINVAL, "%s: fewer rows than the checkpoint", x->p->train_path);
        return ES_OK;
    }
    for (uint64_t done = 0; done < rows;) {
        int n = read_limited(x->r, &x->b, rows - done);
        if (n < 0) return pass_err(x->err, x->r, n, x->p->train_path, &x->tid);
        if (n == 0) return es__err(x->err, ES_EINVAL, "%s: fewer rows than the checkpoint", x->p->train_path);
        done += (uint64_t)n;
    }
    return ES_OK;
}

/* A fault point for the kill-and-resume tests: ES_TEST_KILL_AFTER=STAGE:N
 * (STAGE "train", or "search" / "retrain" of a multi-stage method) ends
 * this process with SIGKILL right after its N-th batch in that stage,
 * counted from the process's start, before that batch's checkpoint: the
 * same point of the run on every machine, where a kill after a delay
 * lands wherever the machine's speed puts it (or after the run ended).
 * Not set: nothing happens. */
static void fault_point(run *x) {
    const char *e = getenv("ES_TEST_KILL_AFTER");
    if (!e || !*e) return;
    const char *stage = x->searching ? "search" : x->in_retrain ? "retrain" : "train";
    size_t ls = strlen(stage);
    if (strncmp(e, stage, ls) != 0 || e[ls] != ':') return;
    char *end;
    long n = strtol(e + ls + 1, &end, 10);
    if (*end || n < 1) return;
    if (++x->fault_batches == n) {
        fflush(NULL);
        raise(SIGKILL);
    }
}

/* After a batch of n rows: the counts and the progress line. */
static void batch_done(run *x, int n, uint64_t *done, long *batches, double loss_sum, double t_ep) {
    fault_point(x);
    *done += (uint64_t)n;
    x->trained_here += (uint64_t)n;
    ++*batches;
    x->ps.pr.rows = *done;
    x->ps.pr.loss = loss_sum / (double)*done;
    x->ps.pr.rows_per_s = (double)*done / (es__now() - t_ep + 1e-9);
    report(&x->ps, 0);
}

/* Is an evaluation inside the epoch due after `done` rows (--eval-every)? */
static int eval_due(const run *x, uint64_t done) {
    const es_train_params *p = x->p;
    return p->early_stop && !x->refitting && !x->searching && p->eval_every > 0 && done < x->n_train &&
           ((done + (uint64_t)p->batch - 1) / (uint64_t)p->batch) % (uint64_t)p->eval_every == 0;
}

static int run_arch_step(run *x, int ep, uint64_t done);

/* The batches of epoch ep, read by the pipeline thread, from row `done`
 * on: one es_model_train_batch each, and a checkpoint every
 * checkpoint_every batches. */
static int run_batches(run *x, int ep, uint64_t *done, double *loss_sum, long *batches) {
    const es_train_params *p = x->p;
    int rc, erc = ES_OK;
    es_batch *cb;
    double t_ep = es__now();
    x->pl.prep = x->m; /* the storage resolves each batch ahead on the reader thread */
    if ((rc = pipeline_start(&x->pl, x->r, x->n_train - *done)) != 0) {
        x->pl.prep = NULL;
        return es__err(x->err, rc, "cannot start the reader thread");
    }
    while ((cb = pipeline_next(&x->pl))) {
        int n = cb->n;
        rc = es_model_train_batch(x->m, cb, loss_sum);
        pipeline_release(&x->pl);
        if (rc != 0) break;
        batch_done(x, n, done, batches, *loss_sum, t_ep);
        if (x->searching && x->m->st->ops->staged->arch_backward && (erc = run_arch_step(x, ep, *done)) != 0) break;
        /* an evaluation every eval_every batches of the epoch (counted from
         * its start, so a resumed run evaluates at the same rows), before
         * the checkpoint of the same batch, which then records it */
        if (eval_due(x, *done)) {
            if ((erc = run_eval_point(x, ep, *done)) != 0 || x->stop) break;
        }
        if (p->checkpoint_every > 0 && *batches % p->checkpoint_every == 0 && *done < x->n_train) {
            es_checkpoint pos = {ep, *done, x->start.trained + x->trained_here, *loss_sum};
            if (p->early_stop && (erc = run_ckpt_state_put(x)) != 0) break;
            if (x->refitting && (erc = run_ckpt_refit_put(x)) != 0) break;
            if ((rc = es_model_checkpoint_save(x->m, x->ckpt, &pos)) != 0) break;
        }
    }
    pipeline_stop(&x->pl);
    x->pl.prep = NULL;
    if (erc != 0) return erc;
    if (rc != 0) return es__err(x->err, rc, "%s", es_model_errmsg(x->m));
    if (x->pl.rc < 0) return pass_err(x->err, x->r, x->pl.rc, p->train_path, &x->tid);
    return ES_OK;
}

/* run_batches across processes: every rank reads the same global batches
 * (the pipeline), the ranks agree on each one (status, rows, a hash of its
 * labels and keys) before the collective step trains each rank's part. */
static int run_eval_point(run *x, int ep, uint64_t done);
static int run_batches_dist(run *x, int ep, uint64_t *done, double *loss_sum, long *batches) {
    const es_train_params *p = x->p;
    int rc = ES_OK, prc;
    double t_ep = es__now();
    x->pl.part_rank = p->comm->rank;
    x->pl.part_size = p->comm->size;
    x->pl.batch = p->batch;
    x->pl.local = x->shards;
    if ((prc = pipeline_start(&x->pl, x->r, x->shards ? (x->n_train - *done) / (uint64_t)p->comm->size : x->n_train - *done)) != 0) prc = es__err(x->err, prc, "cannot start the reader thread");
    for (;;) {
        es_batch *cb = prc ? NULL : pipeline_next(&x->pl);
        int lrc = prc;
        if (!cb && !lrc && x->pl.rc < 0) lrc = pass_err(x->err, x->r, x->pl.rc, p->train_path, &x->tid);
        if (!cb && !lrc && x->pl.short_read)
            lrc = es__err(x->err, ES_EIO, "%s: the file ended before the %llu rows counted at the start (changed while training?)",
                          p->train_path, (unsigned long long)x->n_train);
        int n = cb ? x->pl.gn[x->pl.cur] : 0;
        rc = es__dist_agree(p->comm, &x->dist_failed, lrc, n, 0, "the rows of a batch (the same training file on every rank?)", x->err);
        if (rc != ES_OK || n == 0) {
            if (cb) pipeline_release(&x->pl);
            break;
        }
        rc = es__dist_train_batch(x->dist, cb, n, loss_sum);
        pipeline_release(&x->pl);
        if (rc != ES_OK) {
            /* inside a collective step: the others may wait in a collective
             * this rank never joins; the caller must end the job */
            x->dist_failed = 2;
            es__err(x->err, rc, "%s", es_model_errmsg(x->m));
            break;
        }
        es__dist_stats cs;
        es__dist_get_stats(x->dist, &cs);
        x->ps.pr.comm_bytes_per_step = cs.steps ? (cs.sparse_bytes + cs.dense_bytes) / (double)cs.steps : 0;
        x->ps.pr.comm_seconds = cs.seconds;
        batch_done(x, n, done, batches, *loss_sum, t_ep);
        /* as run_batches: the same batches on every rank, so a collective */
        if (eval_due(x, *done)) {
            if ((rc = run_eval_point(x, ep, *done)) != 0 || x->stop) break;
        }
        /* every rank its shard's checkpoint (atomic each); the ranks agree
         * it is written before going on */
        if (p->checkpoint_every > 0 && *batches % p->checkpoint_every == 0 && *done < x->n_train) {
            es_checkpoint pos = {ep, *done, x->start.trained + x->trained_here, *loss_sum};
            int erc = ES_OK;
            if (p->early_stop) erc = run_ckpt_state_put(x);
            if (erc == ES_OK && x->refitting) erc = run_ckpt_refit_put(x);
            /* two steps: every rank writes "<its file>.new", the ranks agree
             * that all are written, then each renames its own over the last
             * one; a job killed between the renames leaves every rank the
             * previous step or this one in one of its two files, and
             * --resume takes the newest step every rank has (run_model) */
            if (erc == ES_OK && (erc = es_model_checkpoint_save(x->m, x->ckpt_new, &pos)) != ES_OK)
                es__err(x->err, erc, "%s", es_model_errmsg(x->m));
            if ((rc = agree(x, erc)) != ES_OK) break;
            if (rename(x->ckpt_new, x->ckpt) != 0) erc = es__err(x->err, ES_EIO, "%s: cannot rename to %s: %s", x->ckpt_new, x->ckpt, strerror(errno));
            if ((rc = agree(x, erc)) != ES_OK) break;
        }
    }
    if (!prc) pipeline_stop(&x->pl);
    return rc;
}

/* One pass over the training rows (from a checkpoint's row in its epoch). */
static int run_epoch(run *x, int ep, long *batches) {
    const es_train_params *p = x->p;
    char when[64];
    snprintf(when, sizeof when, "at the start of epoch %d", ep + 1);
    int rc = es__file_id_recheck(p->train_path, &x->tid, when, x->err);
    if (rc == 0 && (rc = es_reader_rewind(x->r)) != 0) reader_err(x->err, x->r, rc);
    if ((rc = agree(x, rc)) != 0) return rc;
    double loss_sum = 0;
    uint64_t done = 0;
    if (ep == x->start.epoch && x->start.rows > 0) {
        if ((rc = run_skip(x, x->start.rows)) != 0) return rc;
        done = x->start.rows;
        loss_sum = x->start.loss_sum;
    }
    x->ps.pr.epoch = ep + 1;
    if ((rc = p->comm ? run_batches_dist(x, ep, &done, &loss_sum, batches) : run_batches(x, ep, &done, &loss_sum, batches)) != 0)
        return rc;
    note_bad_lines(x->r, &x->bad_train, x->bad_rep, sizeof x->bad_rep);
    if (x->stop) { /* early stop inside the epoch */
        x->res->train_loss = done ? loss_sum / (double)done : NAN;
        x->res->stopped_early = 1;
        return ES_OK;
    }
    snprintf(when, sizeof when, "at the end of epoch %d", ep + 1);
    if ((rc = es__file_id_recheck(p->train_path, &x->tid, when, x->err)) != 0) return rc;
    x->res->train_loss = done ? loss_sum / (double)done : NAN;
    if (!x->n_exact) { /* row count learnt from the first full pass */
        if (done == 0) return es__err(x->err, ES_EPARSE, "%s: no training rows", p->train_path);
        x->n_train = x->res->train_rows = x->ps.pr.rows_total = done;
        x->n_exact = 1;
    } else if (done != x->n_train) {
        snprintf(when, sizeof when, "epoch %d", ep + 1);
        return rows_changed(x->err, p->train_path, when, done, x->n_train);
    }
    report(&x->ps, 1);
    if (p->early_stop && !x->refitting && !x->searching && !(x->last_eval_ep == ep && x->last_eval_done == done)) {
        if ((rc = run_eval_point(x, ep, done)) != 0) return rc;
        if (x->stop && ep + 1 < p->epochs) x->res->stopped_early = 1;
    }
    return ES_OK;
}


/* ---- multi-stage methods (storage.h es__staged) -----------------------------------
 * A staged storage (autodim) is the search model: es_train runs
 *   search   run_search: search_epochs passes of run_epoch over the training
 *            rows, an architecture step (es__model_arch_batch) on the next
 *            batch of the held-out rows after every training batch
 *            (run_arch_step), no early stopping; then the searched model's
 *            metrics on the held-out rows (noise-free);
 *   derive   ops->staged->derive: the storage to serve and its options;
 *   retrain  the search model is freed and a new one created with the
 *            derived storage (x->mp now names it, so a refit re-creates
 *            it); run_train and everything after run as for any method.
 * The stage is in every checkpoint's metadata ("ckpt.stage": "stage:search"
 * or "stage:retrain", set when the model is created), with, in the
 * retrain, the finished stages ("ckpt.stage.<i>": "name|seconds|json") and
 * the derived storage ("ckpt.derived": "method|opts"); the fresh retrain
 * model is checkpointed at row 0, so a run killed after the search does
 * not search again.  The validation batch of an architecture step follows
 * from the training position (epoch, rows), so a resumed search reads the
 * same batches as an uninterrupted one. */

static int stage_add(run *x, const char *name, double seconds, const char *json) {
    es_train_result *res = x->res;
    if (res->n_stages >= ES_TRAIN_MAX_STAGES) return es__err(x->err, ES_ERANGE, "more than %d stages", ES_TRAIN_MAX_STAGES);
    snprintf(res->stages[res->n_stages].name, sizeof res->stages[0].name, "%s", name);
    res->stages[res->n_stages].seconds = seconds;
    snprintf(res->stages[res->n_stages].result, sizeof res->stages[0].result, "%s", json);
    res->n_stages++;
    return ES_OK;
}

/* The stage metadata of a model the run creates (see above). */
static int stage_meta_put(run *x, es_model *m) {
    if (!x->staged) return ES_OK;
    int rc = es__model_set_meta(m, "ckpt.stage", x->in_retrain ? "stage:retrain" : "stage:search");
    if (x->in_retrain) {
        char key[32], *v = es__malloc(ES_STORAGE_META_MAX + 64);
        if (!v) return es__err(x->err, ES_ENOMEM, "out of memory");
        snprintf(v, ES_STORAGE_META_MAX + 64, "%s|%s", x->derived_method, x->derived_opts);
        rc |= es__model_set_meta(m, "ckpt.derived", v);
        for (int i = 0; i < x->res->n_stages; i++) {
            snprintf(key, sizeof key, "ckpt.stage.%d", i);
            snprintf(v, ES_STORAGE_META_MAX + 64, "%s|%.17g|%s", x->res->stages[i].name, x->res->stages[i].seconds,
                     x->res->stages[i].result);
            rc |= es__model_set_meta(m, key, v);
        }
        es__free(v);
    }
    return rc ? es__err(x->err, ES_ENOMEM, "out of memory") : ES_OK;
}

/* A resumed checkpoint's stage (run_resume). */
static int stage_meta_get(run *x) {
    const char *v = es_model_meta(x->m, "ckpt.stage");
    if (!v) return es__err(x->err, ES_EFORMAT, "%s: not a checkpoint of a multi-stage run (no ckpt.stage)", x->ckpt);
    if (!strcmp(v, "stage:search")) {
        if (!x->m->st->ops->staged)
            return es__err(x->err, ES_EFORMAT, "%s: a search checkpoint whose storage '%s' has no stages", x->ckpt, x->m->st->ops->name);
        return ES_OK;
    }
    if (strcmp(v, "stage:retrain") != 0) return es__err(x->err, ES_EFORMAT, "%s: unknown stage '%.32s'", x->ckpt, v);
    const char *d = es_model_meta(x->m, "ckpt.derived"), *bar = d ? strchr(d, '|') : NULL;
    if (bar && (size_t)(bar - d) < sizeof x->derived_method)
        snprintf(x->derived_method, sizeof x->derived_method, "%.*s", (int)(bar - d), d);
    if (!bar || (size_t)(bar - d) >= sizeof x->derived_method || strlen(bar + 1) >= sizeof x->derived_opts ||
        strcmp(x->m->st->ops->name, x->derived_method) != 0)
        return es__err(x->err, ES_EFORMAT, "%s: the retrain checkpoint's derived storage (ckpt.derived) is missing or malformed", x->ckpt);
    snprintf(x->derived_opts, sizeof x->derived_opts, "%s", bar + 1);
    x->res->n_stages = 0;
    for (int i = 0; i < ES_TRAIN_MAX_STAGES; i++) {
        char key[32];
        snprintf(key, sizeof key, "ckpt.stage.%d", i);
        const char *s = es_model_meta(x->m, key), *b1 = s ? strchr(s, '|') : NULL, *b2 = b1 ? strchr(b1 + 1, '|') : NULL;
        if (!s) break;
        char name[16], *end = NULL;
        double sec = b2 ? strtod(b1 + 1, &end) : NAN;
        if (!b2 || end != b2 || (size_t)(b1 - s) >= sizeof name)
            return es__err(x->err, ES_EFORMAT, "%s: malformed %s in the checkpoint", x->ckpt, key);
        snprintf(name, sizeof name, "%.*s", (int)(b1 - s), s);
        int rc = stage_add(x, name, sec, b2 + 1);
        if (rc != ES_OK) return rc;
    }
    x->in_retrain = 1;
    x->mp.storage = x->derived_method;
    x->mp.storage_opts = x->derived_opts;
    return ES_OK;
}

/* The architecture step after the training batch that ended at row `done`
 * of pass ep: validation batch j = (the global index of that training
 * batch) mod (validation batches), read from a reader of its own (moved
 * to batch j when it is elsewhere: the first step, a wrap, a resume). */
static int run_arch_step(run *x, int ep, uint64_t done) {
    const es_train_params *p = x->p;
    const uint64_t B = (uint64_t)p->batch, nv = x->n_total - x->n_train;
    const uint64_t nb = (x->n_train + B - 1) / B, nvb = (nv + B - 1) / B;
    const uint64_t j = ((uint64_t)ep * nb + (done - 1) / B) % nvb;
    int rc;
    if (!x->rav) {
        if ((rc = es_reader_open(&x->rav, p->train_path, &p->reader, x->err)) != 0) return rc;
        if ((rc = es_batch_alloc(&x->ab, p->batch, x->mp.n_dense, x->mp.n_fields, (size_t)p->batch * (size_t)(x->mp.n_fields + 1))) != 0)
            return es__err(x->err, rc, "out of memory for a batch of %d rows", p->batch);
        x->av_next = UINT64_MAX;
    }
    if (j != x->av_next) {
        if ((rc = es_reader_rewind(x->rav)) != 0) return reader_err(x->err, x->rav, rc);
        for (uint64_t skip = x->n_train + j * B, got = 0; got < skip;) {
            int n = read_limited(x->rav, &x->ab, skip - got);
            if (n < 0) return pass_err(x->err, x->rav, n, p->train_path, &x->tid);
            if (n == 0) return rows_changed(x->err, p->train_path, "the search's validation rows", got, skip);
            got += (uint64_t)n;
        }
    }
    const uint64_t want = ES_MIN(B, nv - j * B);
    int n = read_limited(x->rav, &x->ab, want);
    if (n < 0) return pass_err(x->err, x->rav, n, p->train_path, &x->tid);
    if ((uint64_t)n != want) return rows_changed(x->err, p->train_path, "the search's validation rows", (uint64_t)n, want);
    x->av_next = j + 1 < nvb ? j + 1 : UINT64_MAX;
    if ((rc = es__model_arch_batch(x->m, &x->ab)) != 0) return es__err(x->err, rc, "%s", es_model_errmsg(x->m));
    return ES_OK;
}

static int run_pipeline(run *x) {
    if (x->pl_ready) return ES_OK;
    int rc = pipeline_init(&x->pl, x->p->batch, x->mp.n_dense, x->mp.n_fields);
    if (rc != 0) return es__err(x->err, rc, "out of memory for batches");
    x->pl_ready = 1;
    return ES_OK;
}

/* es__staged.search_finish's evaluate: the search model's validation AUC
 * over the carved rows in evaluation mode, at the configuration the
 * storage set. */
static int stage_evaluate(void *ctx, double *auc) {
    run *x = ctx;
    const es__staged *sg = x->m->st->ops->staged;
    es_metrics vm;
    sg->set_eval(x->m->st, 1);
    int rc = run_validate(x, &vm);
    sg->set_eval(x->m->st, 0);
    *auc = rc == ES_OK ? vm.auc : 0;
    return rc;
}

/* The search and derive stages, then the retrain model (see above). */
static int run_search(run *x) {
    const es_train_params *p = x->p;
    int rc;
    if (!x->staged || x->in_retrain) return ES_OK;
    const es__staged *sg = x->m->st->ops->staged;
    if (x->n_total <= x->n_train)
        return es__err(x->err, ES_EINVAL, "%s: no validation rows for the search (--valid-frac %g of %llu rows)", p->train_path,
                       p->valid_frac, (unsigned long long)x->n_total);
    if ((rc = run_pipeline(x)) != 0) return rc;
    double t0 = es__now();
    const int epochs = sg->search_epochs(x->m->st);
    const size_t search_bytes = es_model_table_bytes(x->m);
    long batches = 0;
    x->searching = 1;
    x->ps.pr.phase = "search";
    x->ps.pr.epochs = epochs;
    x->ps.pr.rows_total = x->n_train;
    for (int ep = x->start.epoch; ep < epochs && rc == ES_OK; ep++) rc = run_epoch(x, ep, &batches);
    x->searching = 0;
    if (rc != ES_OK) return rc;
    es_metrics vm;
    sg->set_eval(x->m->st, 1);
    rc = run_validate(x, &vm);
    sg->set_eval(x->m->st, 0);
    if (rc != ES_OK) return rc;
    /* a search over the trained storage's configurations (optembed's
     * evolutionary search), in this stage, without checkpoints inside it */
    if (sg->search_finish && (rc = sg->search_finish(x->m->st, stage_evaluate, x, x->err)) != ES_OK) return rc;
    char json[1024];
    snprintf(json, sizeof json, "{\"storage\":\"%s\",\"epochs\":%d,\"rows\":%llu,\"valid_rows\":%llu,\"valid_auc\":%.6f,\"valid_logloss\":%.6f,"
             "\"emb_bytes\":%zu}",
             x->m->st->ops->name, epochs, (unsigned long long)x->n_train, (unsigned long long)vm.rows, vm.auc, vm.logloss, search_bytes);
    if ((rc = stage_add(x, "search", es__now() - t0, json)) != ES_OK) return rc;
    /* derive */
    t0 = es__now();
    const char *method = NULL;
    if ((rc = sg->derive(x->m->st, x->vocab, &method, x->derived_opts, sizeof x->derived_opts, json, sizeof json, x->err)) != ES_OK) return rc;
    snprintf(x->derived_method, sizeof x->derived_method, "%s", method);
    if ((rc = stage_add(x, "derive", es__now() - t0, json)) != ES_OK) return rc;
    /* the retrain model, from scratch */
    es_model_free(x->m);
    x->m = NULL;
    x->in_retrain = 1;
    x->mp.storage = x->derived_method;
    x->mp.storage_opts = x->derived_opts;
    if ((rc = es_model_create(&x->m, &x->mp, x->vocab, x->err)) != 0) return rc;
    if ((rc = es__train_cfg_record(x->m, x->cfg)) != 0) return es__err(x->err, rc, "out of memory");
    if ((rc = stage_meta_put(x, x->m)) != 0 || (rc = run_attach(x)) != 0) return rc;
    x->start = (es_checkpoint){0};
    x->trained_here = 0;
    if (p->checkpoint_every > 0 && x->ckpt) { /* the stage boundary */
        es_checkpoint pos = {0};
        if (p->early_stop && (rc = run_ckpt_state_put(x)) != 0) return rc;
        if ((rc = es_model_checkpoint_save(x->m, x->ckpt, &pos)) != 0) return es__err(x->err, rc, "%s", es_model_errmsg(x->m));
    }
    return ES_OK;
}

static int run_train(run *x) {
    int rc = run_pipeline(x);
    if (rc != 0) return rc;
    double t_train = es__now();
    long batches = 0;
    x->ps.pr.epochs = x->p->epochs;
    x->ps.pr.rows_total = x->n_exact ? x->n_train : 0;
    x->ps.pr.phase = "train";
    if (x->refit_resumed) return ES_OK; /* the selection is over: run_refit goes on */
    for (int ep = x->start.epoch; ep < x->p->epochs && !x->stop; ep++)
        if ((rc = run_epoch(x, ep, &batches)) != 0) return rc;
    x->res->train_rows_per_s = (double)x->trained_here / (es__now() - t_train + 1e-9);
    return run_take_best(x);
}

/* Refit: a new model (same settings and seed) trained on all rows of the
 * training file, the held-out ones included, for as many passes as early
 * stopping chose (a partial last pass, scaled to the larger row count,
 * when the best evaluation was inside an epoch).  The vocabulary, when
 * the method keeps one, is rebuilt over all rows. */
static int run_refit(run *x) {
    const es_train_params *p = x->p;
    es_train_result *res = x->res;
    int rc;
    if (!p->refit || res->best_epoch < 1) return ES_OK;
    const uint64_t n_sel = x->n_train, n_all = x->n_total;
    int full = res->best_epoch - (res->best_rows < n_sel);
    uint64_t part = res->best_rows < n_sel ? (uint64_t)llround((double)res->best_rows / (double)n_sel * (double)n_all) : 0;
    const int passes = full + (part > 0);
    if (!x->refit_resumed) {
        es_model_free(x->m);
        x->m = NULL;
        if ((rc = es_reader_rewind(x->r)) != 0) return reader_err(x->err, x->r, rc);
        x->n_train = n_all;
        if (x->vocab) {
            es_vocab_free(x->vocab);
            x->vocab = NULL;
            if ((rc = run_vocab(x)) != 0) return rc;
        }
        if (p->comm) {
            if ((rc = run_create_shard(x)) != 0) return rc;
        } else if ((rc = es_model_create(&x->m, &x->mp, x->vocab, x->err)) != 0) {
            return rc;
        }
        if ((rc = es__train_cfg_record(x->m, x->cfg)) != 0) return es__err(x->err, rc, "out of memory");
        if ((rc = stage_meta_put(x, x->m)) != 0) return rc;
        if ((rc = run_attach(x)) != 0) return rc;
        x->start = (es_checkpoint){0};
    } else if (x->start.epoch >= passes || x->start.rows > (x->start.epoch < full ? n_all : part)) {
        return es__err(x->err, ES_EINVAL, "%s: the refit checkpoint (pass %d, row %llu) does not match this run (%d passes)", x->ckpt,
                       x->start.epoch + 1, (unsigned long long)x->start.rows, passes);
    }
    res->train_rows = n_sel; /* rows per epoch of the run that chose */
    x->refitting = 1;
    x->stop = 0;
    x->ps.pr.phase = "refit";
    x->ps.pr.epochs = passes;
    long batches = 0;
    for (int ep = x->start.epoch; ep < passes; ep++) {
        x->n_train = ep < full ? n_all : part;
        x->ps.pr.rows_total = x->n_train;
        if ((rc = run_epoch(x, ep, &batches)) != 0) return rc;
    }
    x->n_train = n_all;
    res->refit = 1;
    res->refit_rows = (uint64_t)full * n_all + part;
    return ES_OK;
}

/* Across processes: the model file, the one the whole model would write,
 * by rank 0 from its shard model (metadata, maps, dense parameters: every
 * rank holds the same) with the row tables (qr: one per partition)
 * streamed from every rank's shard in rounds (es__dist_write_rows).
 * Collective. */
static int dist_save(run *x) {
    es_fwriter *w = NULL;
    int broken = 0, rc = ES_OK;
    if (es__dist_replicated(x->dist)) { /* every rank holds the whole model: rank 0 writes its own */
        if (x->p->comm->rank == 0) rc = es__model_save(x->m, x->p->out_path, 0, x->err);
        return agree(x, rc);
    }
    es__whole_table wt;
    int *tensor = NULL;
    rc = es__dist_tables(x->dist, &wt, x->err);
    if (rc == ES_OK && !(tensor = es__calloc((size_t)ES_MAX(wt.n, 1), sizeof *tensor))) rc = es__err(x->err, ES_ENOMEM, "out of memory");
    if (rc == ES_OK && x->p->comm->rank == 0) {
        /* the options as the whole model records them: resolved (what a
         * load re-creates the table from) */
        const es_storage *st = x->m->st;
        char *opts = es__storage_load_opts(st->p.method, st->meta, st->p.opts, "");
        wt.opts = opts;
        rc = opts ? es__model_save_whole_begin(x->m, x->p->out_path, &wt, &w, tensor, x->err) : es__err(x->err, ES_ENOMEM, "out of memory");
        es__free(opts);
    }
    es__whole_table_free(&wt);
    if ((rc = agree(x, rc)) != ES_OK) {
        es__free(tensor);
        return rc;
    }
    rc = es__dist_write_rows(x->dist, w, tensor, &broken, x->err);
    es__free(tensor);
    if (broken) { /* a rank left the rounds: the others may wait */
        x->dist_failed = 2;
        es__fwriter_abort(w);
        return rc;
    }
    if (w) {
        if (rc == ES_OK) rc = es__fwriter_commit(w, x->err);
        else es__fwriter_abort(w);
    }
    return agree(x, rc);
}

/* What the run was and what it measured, in the model's metadata, then
 * the model file. */
static int run_save(run *x) {
    const es_train_params *p = x->p;
    es_model *m = x->m;
    char buf[512];
    int rc = ES_OK;
    if (!p->out_path) return ES_OK;
    if (p->command_line) rc |= es__model_set_meta(m, "train.command", p->command_line);
    metrics_json(buf, sizeof buf, &x->res->valid);
    rc |= es__model_set_meta(m, "train.metrics", buf);
    snprintf(buf, sizeof buf, "%llu", (unsigned long long)x->n_train);
    rc |= es__model_set_meta(m, "train.rows", buf);
    if (x->res->refit) { /* train.metrics are those of the model early stopping chose, before the refit */
        snprintf(buf, sizeof buf, "passes=%d,rows=%llu", x->ps.pr.epochs, (unsigned long long)x->res->refit_rows);
        rc |= es__model_set_meta(m, "train.refit", buf);
    }
    for (int f = 0; x->vocab && m->st->ops->field_stats && f < m->n_fields; f++) {
        /* per-field table statistics for `embstore inspect` */
        es_field_stats fs = {0};
        m->st->ops->field_stats(m->st, x->vocab, f, &fs);
        char key[128], val[256];
        snprintf(key, sizeof key, "stats.field.%s", es_reader_field_name(x->r, f));
        snprintf(val, sizeof val, "distinct=%llu,rows=%llu,rows_used=%llu,collisions=%llu", (unsigned long long)fs.distinct,
                 (unsigned long long)fs.rows, (unsigned long long)fs.rows_used, (unsigned long long)fs.collisions);
        rc |= es__model_set_meta(m, key, val);
    }
    snprintf(buf, sizeof buf, "%zu", x->res->full_bytes);
    rc |= es__model_set_meta(m, "stats.full_bytes", buf);
    if (x->res->n_stages) { /* multi-stage: what each stage found, for `embstore inspect` */
        size_t cap = (size_t)ES_TRAIN_MAX_STAGES * 1200, o = 0;
        char *js = es__malloc(cap);
        if (!js) return es__err(x->err, ES_ENOMEM, "out of memory");
        o += (size_t)snprintf(js, cap, "[");
        for (int i = 0; i < x->res->n_stages && o < cap; i++)
            o += (size_t)snprintf(js + o, cap - o, "%s{\"name\":\"%s\",\"seconds\":%.3f,\"result\":%s}", i ? "," : "", x->res->stages[i].name,
                                  x->res->stages[i].seconds, x->res->stages[i].result);
        if (o < cap) snprintf(js + o, cap - o, "]");
        rc |= es__model_set_meta(m, "train.stages", js);
        es__free(js);
    }
    if (rc) return es__err(x->err, ES_ENOMEM, "out of memory");
    if (p->comm) return dist_save(x);
    if ((rc = es_model_save(m, p->out_path, 0)) != 0) return es__err(x->err, rc, "%s", es_model_errmsg(m));
    return ES_OK;
}

/* The first few bad lines of both files, at most 5 in all, then free
 * everything the run holds. */
static void run_finish(run *x, int rc) {
    es_train_result *res = x->res;
    const char *vrep = x->rv ? es_reader_bad_report(x->rv) : "";
    int lines = 0;
    size_t o = 0;
    res->bad_lines = x->bad_train + (x->rv ? es_reader_bad_lines(x->rv) : 0);
    res->in_memory_bytes = es__reader_kept_bytes(x->r);
    for (const char *part = x->bad_rep; part; part = part == x->bad_rep ? vrep : NULL)
        for (const char *q = part; *q && lines < 5;) {
            const char *nl = strchr(q, '\n');
            size_t len = nl ? (size_t)(nl - q) : strlen(q);
            int k = snprintf(res->bad_report + o, sizeof res->bad_report - o, "%s%.*s", o ? "\n" : "", (int)len, q);
            if (k < 0 || (size_t)k >= sizeof res->bad_report - o) break;
            o += (size_t)k;
            lines++;
            q = nl ? nl + 1 : q + len;
        }
    if (x->pl_ready) pipeline_free(&x->pl);
    if (rc == ES_OK && x->ckpt && x->p->checkpoint_every > 0) { /* the model file supersedes it */
        remove(x->ckpt);
        if (x->ckpt_new[0]) remove(x->ckpt_new); /* across processes */
        if (x->p->early_stop) {
            char cb[sizeof x->best_path];
            ckpt_best_path(x, cb, sizeof cb);
            remove(cb);
        }
    }
    if (x->best_path[0]) {
        remove(x->best_path);
        es_temp_file_untrack(x->best_slot);
    }
    es_reader_free(x->rva);
    es_reader_free(x->rav);
    es_batch_free(&x->ab);
    es__free(x->valid.p);
    es__free(x->valid.y);
    es__free(x->prob);
    es__free(x->cfg);
    es_model_free(x->m);
    es__dist_free(x->dist);
    es_vocab_free(x->vocab);
    es_batch_free(&x->b);
    es_reader_free(x->r);
    es_reader_free(x->rv);
}

/* The retrain stage's entry in the result (multi-stage methods). */
static int run_retrain_done(run *x, double seconds) {
    char json[1024];
    const es_train_result *res = x->res;
    snprintf(json, sizeof json, "{\"storage\":\"%s\",\"opts\":\"%.700s\",\"emb_bytes\":%zu,\"valid_auc\":%.6f,\"valid_logloss\":%.6f}",
             x->derived_method, x->derived_opts, res->emb_bytes, res->valid.auc, res->valid.logloss);
    return stage_add(x, "retrain", seconds, json);
}

int es_train(const es_train_params *p, es_train_result *res, es_err *err) {
    memset(res, 0, sizeof *res);
    double t_start = es__now();
    run *x = es__calloc(1, sizeof *x);
    if (!x) return es__err(err, ES_ENOMEM, "out of memory");
    es_train_params q = *p;
    es_train_params_resolve(&q);
    x->p = &q;
    x->res = res;
    x->err = err;
    x->ps.p = p;
    x->best_slot = -1;
    x->last_eval_ep = -1;
    res->best_eval = -1;
    int rc = run_open(x);
    if (q.comm) {
        /* across processes: each phase ends with every rank's status
         * (agree), and ranks must describe the same run; then rank 0
         * alone evaluates and writes the gathered model */
        rc = agree(x, rc);
        if (rc == ES_OK)
            rc = es__dist_agree(q.comm, &x->dist_failed, 0, 0, fnv1a(x->cfg, strlen(x->cfg), UINT64_C(0xcbf29ce484222325)),
                                "the run's description (the same flags and files on every rank?)", err);
        if (rc == ES_OK) rc = agree(x, run_count(x));
        if (rc == ES_OK) rc = run_count_dist(x);
        if (rc == ES_OK) rc = agree(x, run_vocab(x)); /* run_vocab_dist */
        if (rc == ES_OK) rc = agree(x, run_model(x));
        if (rc == ES_OK) rc = run_rank_bytes(x);
        if (rc == ES_OK) rc = agree(x, run_train(x));
        if (rc == ES_OK) rc = run_final(x, 1);
        /* the evaluations are collectives, their metrics on every rank (a
         * refit's checkpoints record the validation ones) */
        if (rc == ES_OK) rc = run_evaluate_valid(x);
        if (rc == ES_OK && q.refit && x->res->best_epoch >= 1) { /* a new sharded model, trained as on one process */
            rc = agree(x, run_refit(x));
            if (rc == ES_OK) rc = run_final(x, 0);
        }
        if (rc == ES_OK) rc = run_evaluate_test(x);
        if (rc == ES_OK) rc = run_save(x);
        if (!x->dist_failed) rc = agree(x, rc);
    } else {
        if (rc == ES_OK) rc = run_count(x);
        if (rc == ES_OK) rc = run_vocab(x);
        if (rc == ES_OK) rc = run_model(x);
        if (rc == ES_OK) rc = run_search(x);
        double t_retrain = es__now();
        if (rc == ES_OK) rc = run_train(x);
        if (rc == ES_OK) rc = run_evaluate_valid(x);
        if (rc == ES_OK) rc = as_served(x, run_prefixes_valid_now);
        if (rc == ES_OK) rc = run_refit(x);
        if (rc == ES_OK && x->staged) rc = run_retrain_done(x, es__now() - t_retrain);
        if (rc == ES_OK) rc = run_evaluate_test(x);
        if (rc == ES_OK) rc = as_served(x, run_prefixes_test_now);
        if (rc == ES_OK) rc = run_save(x);
    }
    res->comm_broken = x->dist_failed == 2;
    run_finish(x, rc);
    es__free(x);
    res->seconds = es__now() - t_start;
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

/* es_model_predict_file over a buffer: the same reader, the same batches,
 * so the same bits (the server's predict endpoint). */
int es_model_predict_mem(es_model *m, const void *data, size_t n, const char *name, int has_label, float *prob, size_t cap,
                         size_t *rows_out) {
    if (rows_out) *rows_out = 0;
    if (!m || (!data && n) || (!prob && cap)) return ES_EINVAL;
    es_reader *r = NULL;
    es_batch *b = NULL;
    size_t rows = 0;
    int rc = es__model_mem_input(m, name ? name : "<memory>", data ? data : "", n, has_label, &r, &b);
    if (rc != 0) return rc;
    for (;;) {
        int k = es_reader_next(r, b);
        if (k < 0) {
            rc = es__err(&m->err, k, "%s", es_reader_errmsg(r));
            es__model_input_hint(m, r, has_label);
            break;
        }
        if (k == 0) break;
        if ((size_t)k > cap - rows) {
            rc = es__err(&m->err, ES_ERANGE, "%s: more than %zu rows", name ? name : "<memory>", cap);
            break;
        }
        /* prob + rows: es_model_predict_batch writes b.n values */
        if ((rc = es_model_predict_batch(m, b, prob + rows)) != 0) break;
        rows += (size_t)k;
    }
    if (rows_out) *rows_out = rows;
    return rc;
}

int es_model_set_predict_digits(es_model *m, int digits) {
    if (!m) return ES_EINVAL;
    if (digits < 0 || digits > 9)
        return es__err(&m->err, ES_EINVAL, "predict digits %d: expected 1..9 significant digits, or 0 for 6 decimals", digits);
    m->pred_digits = digits;
    return ES_OK;
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
        if ((rc = es_model_predict_batch(m, &b, prob)) != 0) goto done;
        if (m->pred_digits)
            for (int i = 0; i < n; i++) fprintf(fp, "%.*g\n", m->pred_digits, prob[i]);
        else
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
