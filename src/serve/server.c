/*
 * server.c — the `embstore serve` daemon over libmicrohttpd.
 *
 * Threading: MHD's own thread pool (--threads workers, each polling its
 * share of the connections and running the handler to completion).  A
 * model handle keeps scratch for one batch, so each loaded model version
 * holds one handle per worker (all mapping the same file: ES_LOAD_MAP,
 * opened through one descriptor so they see the same inode) plus one
 * spare behind a mutex; a worker picks its handle by a thread-local slot.
 * Indexes are searched concurrently on one handle (es_index_search is
 * thread safe).
 *
 * Hot reload: every name points at a reference-counted version.  A request
 * takes a reference under the name's mutex (a pointer copy and an
 * increment), works without locks, and drops it; a reload loads and checks
 * the new file with no lock held, swaps the pointer under the mutex and
 * drops the name's reference, so the old version is freed by the last
 * request still using it.  A file that fails to load (corrupt, checksum)
 * or reads another input schema is refused and the old version serves on.
 *
 * Shutdown: SIGTERM/SIGINT stop accepting (the accept policy refuses every
 * new connection once `stopping` is set), wait for requests in flight
 * (counted from the first handler call to MHD's completion callback), then
 * stop the daemon and return 0.  Responses sent while stopping carry
 * "Connection: close".  Not MHD_quiesce_daemon: in libmicrohttpd 0.9.75
 * with a thread pool and epoll it races with the worker threads, which
 * take the listening socket out of their epoll sets themselves once they
 * see the flag it sets, and a second removal aborts the process ("Failed
 * to remove listen FD from epoll set"; seen in the tests).
 */
#include "serve/serve.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <microhttpd.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ---- endpoints and metrics ------------------------------------------------ */
enum { EP_PREDICT, EP_EMBED, EP_SEARCH, EP_MODELS, EP_HEALTHZ, EP_METRICS, EP_RELOAD, EP_OTHER, EP_N };
static const char *ep_name[EP_N] = {"predict", "embed", "search", "models", "healthz", "metrics", "reload", "other"};
static const double lat_bucket[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5};
#define N_BUCKETS (sizeof lat_bucket / sizeof lat_bucket[0])

typedef struct {
    atomic_ullong requests[EP_N], errors[EP_N], lat_count[EP_N], lat_us_sum[EP_N];
    atomic_ullong lat_bucket[EP_N][N_BUCKETS];
    atomic_ullong rows_predicted, vectors_embedded, queries_searched, reloads_ok, reloads_failed;
} metrics;

/* ---- served versions ----------------------------------------------------------- */
typedef struct version {
    atomic_int ref;
    int is_index;
    es_model **h; /* [n_h]: one per worker, the last one shared under spare_mu */
    int n_h;
    pthread_mutex_t spare_mu;
    es_index *ix;
    es__schema schema;
    char *path;
    uint64_t checksum;
    uint32_t file_version;
    uint64_t generation;
    char loaded_at[40];
    double load_ms;
} version;

typedef struct slot {
    char *name;
    int is_index;
    pthread_mutex_t mu;
    version *cur;
    uint64_t generation;
} slot;

typedef struct server {
    es__serve_config cfg;
    slot models[ES__SERVE_MAX_NAMED], indexes[ES__SERVE_MAX_NAMED];
    int n_models, n_indexes;
    struct MHD_Daemon *d;
    metrics m;
    atomic_int in_flight;
    atomic_int stopping;
    atomic_int next_worker;
    pthread_mutex_t reload_mu;
    double t_start;
} server;

static _Thread_local int tl_worker = -1;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void version_free(version *v) {
    if (!v) return;
    for (int i = 0; i < v->n_h; i++) es_model_free(v->h[i]);
    free(v->h);
    es_index_free(v->ix);
    es__schema_free(&v->schema);
    if (!v->is_index) pthread_mutex_destroy(&v->spare_mu);
    free(v->path);
    free(v);
}
static void version_put(version *v) {
    if (v && atomic_fetch_sub_explicit(&v->ref, 1, memory_order_acq_rel) == 1) version_free(v);
}
static version *slot_get(slot *s) {
    pthread_mutex_lock(&s->mu);
    version *v = s->cur;
    if (v) atomic_fetch_add_explicit(&v->ref, 1, memory_order_relaxed);
    pthread_mutex_unlock(&s->mu);
    return v;
}

/* XXH3-64 of the file's bytes (through es_key), from the open descriptor. */
static int file_checksum(int fd, uint64_t *out) {
    struct stat st;
    if (fstat(fd, &st) != 0) return -1;
    if (st.st_size == 0) {
        *out = es_key("", 0);
        return 0;
    }
    void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) return -1;
    *out = es_key(p, (size_t)st.st_size);
    munmap(p, (size_t)st.st_size);
    return 0;
}

/* Load a new version of `path`; NULL with err filled on failure. */
static version *version_load(server *S, const char *path, int is_index, char *err, size_t cap) {
    double t0 = now_s();
    version *v = calloc(1, sizeof *v);
    if (!v) {
        snprintf(err, cap, "out of memory");
        return NULL;
    }
    atomic_init(&v->ref, 1);
    v->is_index = is_index;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, cap, "%s: cannot open: %s", path, strerror(errno));
        free(v);
        return NULL;
    }
    if (!is_index) pthread_mutex_init(&v->spare_mu, NULL);
    char fdpath[64];
    snprintf(fdpath, sizeof fdpath, "/proc/self/fd/%d", fd);
    es_err e = {0};
    int rc = 0;
    if (!(v->path = strdup(path)) || file_checksum(fd, &v->checksum) != 0) {
        snprintf(err, cap, "%s: cannot read: %s", path, strerror(errno));
        rc = -1;
    }
    es_file *f = NULL;
    if (rc == 0 && es_file_open(&f, fdpath, 0, &e) == 0) {
        v->file_version = es_file_version(f);
        es_file_close(f);
    }
    if (rc == 0 && is_index) {
        if ((rc = es_index_load(&v->ix, fdpath, &e)) != 0) snprintf(err, cap, "%s: %s", path, e.msg);
    } else if (rc == 0) {
        v->n_h = S->cfg.threads + 1;
        if (!(v->h = calloc((size_t)v->n_h, sizeof *v->h))) rc = -1, snprintf(err, cap, "out of memory");
        for (int i = 0; rc == 0 && i < v->n_h; i++) {
            if ((rc = es_model_load(&v->h[i], fdpath, ES_LOAD_MAP, &e)) != 0) {
                snprintf(err, cap, "%s: %s", path, e.msg);
                break;
            }
            /* lines no longer than a body: a small per-request line buffer */
            es_reader_params rp = es_model_reader_params(v->h[i]);
            rp.max_line = S->cfg.max_body < ((size_t)1 << 20) ? S->cfg.max_body + 1 : 0;
            if (es_model_set_reader_params(v->h[i], &rp) != 0) rc = -1, snprintf(err, cap, "out of memory");
        }
        if (rc == 0 && es__schema_from_model(&v->schema, v->h[0]) != 0) rc = -1, snprintf(err, cap, "out of memory");
    }
    close(fd);
    if (rc) {
        version_free(v);
        return NULL;
    }
    time_t t = time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(v->loaded_at, sizeof v->loaded_at, "%Y-%m-%dT%H:%M:%SZ", &tm);
    v->load_ms = 1000.0 * (now_s() - t0);
    return v;
}

/* Reload one name: 1 swapped, 0 unchanged, -1 refused (err says why). */
static int slot_reload(server *S, slot *s, char *err, size_t cap) {
    version *old = slot_get(s);
    version *nv = version_load(S, old->path, s->is_index, err, cap);
    int rc;
    if (!nv) {
        rc = -1;
    } else if (nv->checksum == old->checksum) {
        version_free(nv);
        rc = 0;
    } else if (!s->is_index && !es__schema_same(&old->schema, &nv->schema)) {
        snprintf(err, cap, "%s: reads other input columns than the model being served (a new schema needs a restart)",
                 old->path);
        version_free(nv);
        rc = -1;
    } else if (s->is_index && es_index_dim(nv->ix) != es_index_dim(old->ix)) {
        snprintf(err, cap, "%s: dimension %d, the index being served has %d", old->path, es_index_dim(nv->ix),
                 es_index_dim(old->ix));
        version_free(nv);
        rc = -1;
    } else {
        pthread_mutex_lock(&s->mu);
        nv->generation = ++s->generation;
        version *prev = s->cur;
        s->cur = nv;
        pthread_mutex_unlock(&s->mu);
        version_put(prev); /* the slot's reference: freed by the last request using it */
        rc = 1;
    }
    version_put(old);
    return rc;
}

/* Reload every name; the JSON report into out.  Returns 1 if one failed. */
static int reload_all(server *S, es__sb *out) {
    pthread_mutex_lock(&S->reload_mu);
    int failed = 0;
    es__sb_puts(out, "{\"results\":[");
    int first = 1;
    for (int kind = 0; kind < 2; kind++) {
        slot *v = kind ? S->indexes : S->models;
        int n = kind ? S->n_indexes : S->n_models;
        for (int i = 0; i < n; i++) {
            char err[600] = "";
            int rc = slot_reload(S, &v[i], err, sizeof err);
            if (rc < 0) {
                failed = 1;
                atomic_fetch_add(&S->m.reloads_failed, 1);
                fprintf(stderr, "embstore serve: reload of %s refused, the old version keeps serving: %s\n", v[i].name, err);
            } else if (rc > 0) {
                atomic_fetch_add(&S->m.reloads_ok, 1);
                fprintf(stderr, "embstore serve: reloaded %s\n", v[i].name);
            }
            es__sb_puts(out, first ? "{\"name\":" : ",{\"name\":");
            first = 0;
            es__sb_json_str(out, v[i].name);
            es__sb_printf(out, ",\"kind\":\"%s\",\"result\":\"%s\"", kind ? "index" : "model",
                          rc < 0 ? "refused" : rc ? "reloaded" : "unchanged");
            if (rc < 0) {
                es__sb_puts(out, ",\"error\":");
                es__sb_json_str(out, err);
            }
            es__sb_puts(out, "}");
        }
    }
    es__sb_puts(out, "]}\n");
    pthread_mutex_unlock(&S->reload_mu);
    return failed;
}

/* ---- requests ------------------------------------------------------------------ */
typedef struct request {
    int ep;
    double t0;
    es__sb body;
    int too_big, timed_out, answered;
    int status;
} request;

static int send_buf(struct MHD_Connection *c, server *S, request *rq, int status, const char *type, es__sb *b) {
    const char *s = b->oom ? "{\"error\":\"out of memory\",\"status\":500}\n" : (b->s ? b->s : "");
    if (b->oom) status = 500;
    struct MHD_Response *r = MHD_create_response_from_buffer(strlen(s), (void *)s, MHD_RESPMEM_MUST_COPY);
    if (!r) return MHD_NO;
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    if (atomic_load(&S->stopping)) MHD_add_response_header(r, MHD_HTTP_HEADER_CONNECTION, "close");
    int ret = MHD_queue_response(c, (unsigned)status, r);
    MHD_destroy_response(r);
    if (ret == MHD_YES) {
        rq->status = status;
        rq->answered = 1;
    }
    return ret;
}

static int send_err(struct MHD_Connection *c, server *S, request *rq, const es__req_err *e) {
    es__sb b = {0};
    es__req_err_json(e, &b);
    int ret = send_buf(c, S, rq, e->status, "application/json", &b);
    es__sb_free(&b);
    return ret;
}

static int simple_err(struct MHD_Connection *c, server *S, request *rq, int status, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static int simple_err(struct MHD_Connection *c, server *S, request *rq, int status, const char *fmt, ...) {
    es__req_err e = {.status = status, .row = -1};
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e.reason, sizeof e.reason, fmt, ap);
    va_end(ap);
    return send_err(c, S, rq, &e);
}

static slot *find_slot(slot *v, int n, const char *name, size_t len) {
    for (int i = 0; i < n; i++)
        if (strlen(v[i].name) == len && memcmp(v[i].name, name, len) == 0) return &v[i];
    return NULL;
}

static es_model *handle_take(version *v, int *spare) {
    if (tl_worker >= 0 && tl_worker < v->n_h - 1) {
        *spare = 0;
        return v->h[tl_worker];
    }
    pthread_mutex_lock(&v->spare_mu);
    *spare = 1;
    return v->h[v->n_h - 1];
}
static void handle_give(version *v, int spare) {
    if (spare) pthread_mutex_unlock(&v->spare_mu);
}

/* A reader message "request:LINE:column N (NAME): reason" -> row/column. */
static void reader_err(const char *msg, int first_line, es__req_err *e) {
    e->status = 400;
    e->row = -1;
    snprintf(e->reason, sizeof e->reason, "%s", msg);
    const char *p = strstr(msg, "request:");
    if (!p) return;
    char *end;
    long line = strtol(p + 8, &end, 10);
    if (end == p + 8) return;
    if (line >= first_line) e->row = line - first_line;
    const char *c = strstr(end, "(");
    const char *ce = c ? strstr(c, "):") : NULL;
    if (c && ce && (size_t)(ce - c - 1) < sizeof e->column) snprintf(e->column, sizeof e->column, "%.*s", (int)(ce - c - 1), c + 1);
}

static int do_predict(struct MHD_Connection *c, server *S, request *rq, slot *s, int plain) {
    version *v = slot_get(s);
    es__req_err e = {.row = -1};
    es__sb text = {0}, out = {0};
    long rows = 0;
    int has_label = 0, first_line = 1, ret;
    float small[64], *prob = NULL;
    if (es__parse_predict(&v->schema, rq->body.s ? rq->body.s : "", rq->body.n, plain, S->cfg.max_rows, &text, &rows,
                          &has_label, &first_line, &e) != 0) {
        ret = send_err(c, S, rq, &e);
        goto done;
    }
    const char *lab = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "labeled");
    if (plain && lab) has_label = strcmp(lab, "1") == 0 || strcmp(lab, "true") == 0;
    /* room for the rows the parser counted (at least the data rows: a text
     * body's count includes a header line), never more than --max-rows: a
     * reader that finds more fails with ES_ERANGE below (413).  A small
     * request's answers live on the stack; a max-rows buffer per request was
     * a 16 KiB malloc/free each time. */
    size_t cap = (size_t)(rows > 0 && rows < S->cfg.max_rows ? rows : S->cfg.max_rows), got = 0;
    if (cap <= sizeof small / sizeof *small) prob = small;
    else if (!(prob = malloc(cap * sizeof *prob))) {
        ret = simple_err(c, S, rq, 500, "out of memory");
        goto done;
    }
    int spare;
    es_model *m = handle_take(v, &spare);
    int rc = es_model_predict_mem(m, text.s ? text.s : "", text.n, "request", has_label, prob, cap, &got);
    if (rc != 0) {
        if (rc == ES_ERANGE) {
            e.status = 413;
            snprintf(e.reason, sizeof e.reason, "more than %ld rows (--max-rows)", S->cfg.max_rows);
        } else if (rc == ES_ENOMEM) {
            e.status = 500;
            snprintf(e.reason, sizeof e.reason, "out of memory");
        } else {
            reader_err(es_model_errmsg(m), first_line, &e);
        }
        handle_give(v, spare);
        ret = send_err(c, S, rq, &e);
        goto done;
    }
    handle_give(v, spare);
    if (got == 0) {
        ret = simple_err(c, S, rq, 400, "no rows");
        goto done;
    }
    atomic_fetch_add_explicit(&S->m.rows_predicted, got, memory_order_relaxed);
    es__sb_puts(&out, "{\"model\":");
    es__sb_json_str(&out, s->name);
    es__sb_printf(&out, ",\"generation\":%llu,\"predictions\":[", (unsigned long long)v->generation);
    for (size_t i = 0; i < got; i++) es__sb_printf(&out, i ? ",%.9g" : "%.9g", (double)prob[i]);
    es__sb_puts(&out, "]}\n");
    ret = send_buf(c, S, rq, 200, "application/json", &out);
done:
    if (prob != small) free(prob);
    es__sb_free(&text);
    es__sb_free(&out);
    version_put(v);
    return ret;
}

static int do_embed(struct MHD_Connection *c, server *S, request *rq, slot *s) {
    version *v = slot_get(s);
    es__req_err e = {.row = -1};
    int *fields = NULL;
    uint64_t *keys = NULL;
    long n = 0;
    es__sb out = {0};
    float *vec = NULL;
    int ret;
    if (es__parse_embed(&v->schema, rq->body.s ? rq->body.s : "", rq->body.n, S->cfg.max_rows, &fields, &keys, &n, &e)) {
        ret = send_err(c, S, rq, &e);
        goto done;
    }
    int spare;
    es_model *m = handle_take(v, &spare);
    int dim = es_model_emb_dim(m);
    if (dim <= 0 || !(vec = malloc((size_t)dim * sizeof *vec))) {
        handle_give(v, spare);
        ret = simple_err(c, S, rq, dim <= 0 ? 400 : 500, dim <= 0 ? "this model has no embedding dimension" : "out of memory");
        goto done;
    }
    es__sb_puts(&out, "{\"model\":");
    es__sb_json_str(&out, s->name);
    es__sb_printf(&out, ",\"dim\":%d,\"vectors\":[", dim);
    int rc = 0;
    for (long i = 0; i < n && rc == 0; i++) {
        if ((rc = es_model_embedding(m, fields[i], keys[i], vec)) != 0) break;
        es__sb_puts(&out, i ? ",[" : "[");
        for (int d = 0; d < dim; d++) es__sb_printf(&out, d ? ",%.9g" : "%.9g", (double)vec[d]);
        es__sb_puts(&out, "]");
    }
    char msg[400];
    snprintf(msg, sizeof msg, "%s", rc ? es_model_errmsg(m) : "");
    handle_give(v, spare);
    if (rc) {
        ret = simple_err(c, S, rq, rc == ES_EUNSUPPORTED || rc == ES_EINVAL ? 400 : 500, "embedding failed: %s", msg);
        goto done;
    }
    es__sb_puts(&out, "]}\n");
    atomic_fetch_add_explicit(&S->m.vectors_embedded, (unsigned long long)n, memory_order_relaxed);
    ret = send_buf(c, S, rq, 200, "application/json", &out);
done:
    free(fields);
    free(keys);
    free(vec);
    es__sb_free(&out);
    version_put(v);
    return ret;
}

static int do_search(struct MHD_Connection *c, server *S, request *rq, slot *s) {
    version *v = slot_get(s);
    es__req_err e = {.row = -1};
    es__search_req q;
    es__sb out = {0};
    int64_t *ids = NULL;
    float *dist = NULL;
    int ret;
    if (es__parse_search(rq->body.s ? rq->body.s : "", rq->body.n, es_index_dim(v->ix), S->cfg.max_rows, &q, &e)) {
        ret = send_err(c, S, rq, &e);
        goto done_noq;
    }
    size_t nk = (size_t)q.nq * (size_t)q.k;
    if (!(ids = malloc(nk * sizeof *ids)) || !(dist = malloc(nk * sizeof *dist))) {
        ret = simple_err(c, S, rq, 500, "out of memory");
        goto done;
    }
    es_filter f = {q.attr, q.n_values, q.values};
    es_err err = {0};
    int rc = es_index_search_ex(v->ix, (size_t)q.nq, q.q, q.k, q.has_filter ? &f : NULL, ids, dist, &err);
    if (rc) {
        ret = simple_err(c, S, rq, rc == ES_ENOMEM ? 500 : 400, "search failed: %s", err.msg);
        goto done;
    }
    atomic_fetch_add_explicit(&S->m.queries_searched, (unsigned long long)q.nq, memory_order_relaxed);
    es__sb_puts(&out, "{\"index\":");
    es__sb_json_str(&out, s->name);
    es__sb_printf(&out, ",\"k\":%d,\"ids\":[", q.k);
    for (long i = 0; i < q.nq; i++) {
        es__sb_puts(&out, i ? ",[" : "[");
        for (int j = 0; j < q.k; j++) es__sb_printf(&out, j ? ",%lld" : "%lld", (long long)ids[(size_t)i * (size_t)q.k + (size_t)j]);
        es__sb_puts(&out, "]");
    }
    es__sb_puts(&out, "],\"distances\":[");
    for (long i = 0; i < q.nq; i++) {
        es__sb_puts(&out, i ? ",[" : "[");
        for (int j = 0; j < q.k; j++) es__sb_printf(&out, j ? ",%.9g" : "%.9g", (double)dist[(size_t)i * (size_t)q.k + (size_t)j]);
        es__sb_puts(&out, "]");
    }
    es__sb_puts(&out, "]}\n");
    ret = send_buf(c, S, rq, 200, "application/json", &out);
done:
    es__search_req_free(&q);
done_noq:
    free(ids);
    free(dist);
    es__sb_free(&out);
    version_put(v);
    return ret;
}

static void list_entry(es__sb *out, slot *s, int first) {
    version *v = slot_get(s);
    es__sb_puts(out, first ? "{\"name\":" : ",{\"name\":");
    es__sb_json_str(out, s->name);
    es__sb_puts(out, ",\"file\":");
    es__sb_json_str(out, v->path);
    es__sb_printf(out, ",\"format_version\":%u,\"generation\":%llu,\"checksum\":\"%016llx\",\"loaded_at\":\"%s\",\"load_ms\":%.3f",
                  v->file_version, (unsigned long long)v->generation, (unsigned long long)v->checksum, v->loaded_at, v->load_ms);
    if (v->is_index) {
        es__sb_printf(out, ",\"kind\":\"%s\",\"dim\":%d,\"size\":%zu", es_index_kind_name(es_index_params_of(v->ix)->kind),
                      es_index_dim(v->ix), es_index_size(v->ix));
    } else {
        const char *ver = es_model_meta(v->h[0], "embstore.version"), *mt = es_model_meta(v->h[0], "model.type");
        es__sb_puts(out, ",\"embstore_version\":");
        es__sb_json_str(out, ver ? ver : "");
        if (mt) {
            es__sb_puts(out, ",\"model\":");
            es__sb_json_str(out, mt);
        }
        es__sb_puts(out, ",\"columns\":[");
        for (int i = 0; i < v->schema.n_in; i++) {
            if (i) es__sb_puts(out, ",");
            es__sb_json_str(out, v->schema.in_names[i]);
        }
        es__sb_printf(out, "],\"fields\":%d,\"dense\":%d,\"dim\":%d", v->schema.n_fields, v->schema.n_dense, es_model_emb_dim(v->h[0]));
    }
    es__sb_puts(out, "}");
    version_put(v);
}

static int do_list(struct MHD_Connection *c, server *S, request *rq) {
    es__sb out = {0};
    es__sb_puts(&out, "{\"models\":[");
    for (int i = 0; i < S->n_models; i++) list_entry(&out, &S->models[i], i == 0);
    es__sb_puts(&out, "],\"indexes\":[");
    for (int i = 0; i < S->n_indexes; i++) list_entry(&out, &S->indexes[i], i == 0);
    es__sb_puts(&out, "]}\n");
    int ret = send_buf(c, S, rq, 200, "application/json", &out);
    es__sb_free(&out);
    return ret;
}

static int do_metrics(struct MHD_Connection *c, server *S, request *rq) {
    es__sb o = {0};
    metrics *m = &S->m;
    es__sb_puts(&o, "# HELP embstore_requests_total Requests by endpoint.\n# TYPE embstore_requests_total counter\n");
    for (int e = 0; e < EP_N; e++)
        es__sb_printf(&o, "embstore_requests_total{endpoint=\"%s\"} %llu\n", ep_name[e], (unsigned long long)atomic_load(&m->requests[e]));
    es__sb_puts(&o, "# HELP embstore_errors_total Requests answered with a 4xx or 5xx status.\n# TYPE embstore_errors_total counter\n");
    for (int e = 0; e < EP_N; e++)
        es__sb_printf(&o, "embstore_errors_total{endpoint=\"%s\"} %llu\n", ep_name[e], (unsigned long long)atomic_load(&m->errors[e]));
    es__sb_puts(&o, "# HELP embstore_request_seconds Request latency, first byte of the request handled to response sent.\n"
                    "# TYPE embstore_request_seconds histogram\n");
    for (int e = 0; e < EP_N; e++) {
        unsigned long long cum = 0;
        for (size_t b = 0; b < N_BUCKETS; b++) {
            cum += atomic_load(&m->lat_bucket[e][b]);
            es__sb_printf(&o, "embstore_request_seconds_bucket{endpoint=\"%s\",le=\"%g\"} %llu\n", ep_name[e], lat_bucket[b], cum);
        }
        unsigned long long n = atomic_load(&m->lat_count[e]);
        es__sb_printf(&o, "embstore_request_seconds_bucket{endpoint=\"%s\",le=\"+Inf\"} %llu\n", ep_name[e], n);
        es__sb_printf(&o, "embstore_request_seconds_sum{endpoint=\"%s\"} %.6f\n", ep_name[e], 1e-6 * (double)atomic_load(&m->lat_us_sum[e]));
        es__sb_printf(&o, "embstore_request_seconds_count{endpoint=\"%s\"} %llu\n", ep_name[e], n);
    }
    es__sb_printf(&o, "# TYPE embstore_rows_predicted_total counter\nembstore_rows_predicted_total %llu\n",
                  (unsigned long long)atomic_load(&m->rows_predicted));
    es__sb_printf(&o, "# TYPE embstore_vectors_embedded_total counter\nembstore_vectors_embedded_total %llu\n",
                  (unsigned long long)atomic_load(&m->vectors_embedded));
    es__sb_printf(&o, "# TYPE embstore_queries_searched_total counter\nembstore_queries_searched_total %llu\n",
                  (unsigned long long)atomic_load(&m->queries_searched));
    es__sb_printf(&o, "# HELP embstore_reloads_total Reloads by result.\n# TYPE embstore_reloads_total counter\n"
                      "embstore_reloads_total{result=\"ok\"} %llu\nembstore_reloads_total{result=\"refused\"} %llu\n",
                  (unsigned long long)atomic_load(&m->reloads_ok), (unsigned long long)atomic_load(&m->reloads_failed));
    es__sb_printf(&o, "# TYPE embstore_in_flight gauge\nembstore_in_flight %d\n", atomic_load(&S->in_flight));
    es__sb_printf(&o, "# TYPE embstore_uptime_seconds gauge\nembstore_uptime_seconds %.3f\n", now_s() - S->t_start);
    int ret = send_buf(c, S, rq, 200, "text/plain; version=0.0.4", &o);
    es__sb_free(&o);
    return ret;
}

/* Which endpoint a method + URL names (for metrics, before the body). */
static int route_ep(const char *method, const char *url) {
    if (strncmp(url, "/v1/models/", 11) == 0) {
        const char *slash = strrchr(url + 11, '/');
        if (slash && strcmp(slash, "/predict") == 0) return EP_PREDICT;
        if (slash && strcmp(slash, "/embed") == 0) return EP_EMBED;
        return EP_OTHER;
    }
    if (strncmp(url, "/v1/indexes/", 12) == 0) return EP_SEARCH;
    if (strcmp(url, "/v1/models") == 0) return EP_MODELS;
    if (strcmp(url, "/healthz") == 0) return EP_HEALTHZ;
    if (strcmp(url, "/metrics") == 0) return EP_METRICS;
    if (strcmp(url, "/v1/admin/reload") == 0) return EP_RELOAD;
    (void)method;
    return EP_OTHER;
}

static int dispatch(struct MHD_Connection *c, server *S, request *rq, const char *method, const char *url) {
    int post = strcmp(method, "POST") == 0, get = strcmp(method, "GET") == 0;
    switch (rq->ep) {
    case EP_PREDICT:
    case EP_EMBED: {
        if (!post) return simple_err(c, S, rq, 405, "use POST");
        const char *name = url + 11, *slash = strrchr(name, '/');
        slot *s = find_slot(S->models, S->n_models, name, (size_t)(slash - name));
        if (!s) return simple_err(c, S, rq, 404, "no model named \"%.*s\"", (int)(slash - name) > 100 ? 100 : (int)(slash - name), name);
        if (rq->ep == EP_EMBED) return do_embed(c, S, rq, s);
        const char *ct = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE);
        return do_predict(c, S, rq, s, ct && strncmp(ct, "text/plain", 10) == 0);
    }
    case EP_SEARCH: {
        const char *name = url + 12, *slash = strrchr(name, '/');
        if (!slash || strcmp(slash, "/search") != 0) return simple_err(c, S, rq, 404, "no such endpoint");
        if (!post) return simple_err(c, S, rq, 405, "use POST");
        slot *s = find_slot(S->indexes, S->n_indexes, name, (size_t)(slash - name));
        if (!s) return simple_err(c, S, rq, 404, "no index named \"%.*s\"", (int)(slash - name) > 100 ? 100 : (int)(slash - name), name);
        return do_search(c, S, rq, s);
    }
    case EP_MODELS:
        return get ? do_list(c, S, rq) : simple_err(c, S, rq, 405, "use GET");
    case EP_HEALTHZ: {
        if (!get) return simple_err(c, S, rq, 405, "use GET");
        es__sb o = {0};
        es__sb_printf(&o, "{\"status\":\"%s\",\"models\":%d,\"indexes\":%d}\n", atomic_load(&S->stopping) ? "stopping" : "ok",
                      S->n_models, S->n_indexes);
        int ret = send_buf(c, S, rq, 200, "application/json", &o);
        es__sb_free(&o);
        return ret;
    }
    case EP_METRICS:
        return get ? do_metrics(c, S, rq) : simple_err(c, S, rq, 405, "use GET");
    case EP_RELOAD: {
        if (!post) return simple_err(c, S, rq, 405, "use POST");
        es__sb o = {0};
        int failed = reload_all(S, &o);
        int ret = send_buf(c, S, rq, failed ? 409 : 200, "application/json", &o);
        es__sb_free(&o);
        return ret;
    }
    default:
        return simple_err(c, S, rq, 404, "no such endpoint (see docs/serving.md)");
    }
}

/* New connections are refused once shutdown has begun. */
static enum MHD_Result on_accept(void *cls, const struct sockaddr *addr, socklen_t addrlen) {
    server *S = cls;
    (void)addr;
    (void)addrlen;
    return atomic_load(&S->stopping) ? MHD_NO : MHD_YES;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version_, const char *upload, size_t *upload_size, void **con_cls) {
    server *S = cls;
    request *rq = *con_cls;
    if (tl_worker < 0) tl_worker = atomic_fetch_add(&S->next_worker, 1);
    if (!rq) {
        if (!(rq = calloc(1, sizeof *rq))) return MHD_NO;
        rq->t0 = now_s();
        rq->ep = route_ep(method, url);
        *con_cls = rq;
        atomic_fetch_add(&S->in_flight, 1);
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl) {
            char *end;
            unsigned long long v = strtoull(cl, &end, 10);
            if (end != cl && v > S->cfg.max_body)
                return simple_err(c, S, rq, 413, "body of %llu bytes, the limit is %zu (--max-body)", v, S->cfg.max_body) == MHD_YES
                           ? MHD_YES
                           : MHD_NO;
        }
        return MHD_YES;
    }
    if (rq->answered) {
        *upload_size = 0; /* drain what follows an early answer */
        return MHD_YES;
    }
    if (*upload_size) {
        /* libmicrohttpd 0.9.75 cannot queue a response while a body is still
         * arriving.  A body over size is dropped as it comes and answered 413
         * once in (a declared Content-Length over the limit is answered at
         * once, before any body byte is read).  A body still arriving after
         * --timeout is dropped the same way and answered 408 once in; one
         * still arriving after 3 x --timeout has its connection closed (a
         * client that sends nothing at all is closed by the idle timeout). */
        double el = now_s() - rq->t0;
        if (el > S->cfg.timeout_s && !rq->timed_out) {
            rq->timed_out = 1;
            es__sb_free(&rq->body);
        }
        if (rq->timed_out && el > 3.0 * S->cfg.timeout_s) {
            fprintf(stderr, "embstore serve: a request body took over %d s (3 x --timeout): connection closed\n", 3 * S->cfg.timeout_s);
            return MHD_NO;
        }
        if (!rq->too_big && !rq->timed_out) {
            if (rq->body.n + *upload_size > S->cfg.max_body) {
                rq->too_big = 1;
                es__sb_free(&rq->body);
            } else {
                es__sb_putn(&rq->body, upload, *upload_size);
            }
        }
        *upload_size = 0;
        return MHD_YES;
    }
    if (rq->timed_out)
        return simple_err(c, S, rq, 408, "the request body took over %d s to arrive (--timeout)", S->cfg.timeout_s) == MHD_YES
                   ? MHD_YES
                   : MHD_NO;
    if (rq->too_big) return simple_err(c, S, rq, 413, "body over %zu bytes (--max-body)", S->cfg.max_body) == MHD_YES ? MHD_YES : MHD_NO;
    if (rq->body.oom) return simple_err(c, S, rq, 500, "out of memory") == MHD_YES ? MHD_YES : MHD_NO;
    (void)version_;
    return dispatch(c, S, rq, method, url) == MHD_YES ? MHD_YES : MHD_NO;
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe) {
    server *S = cls;
    request *rq = *con_cls;
    (void)c;
    if (!rq) return;
    metrics *m = &S->m;
    double dt = now_s() - rq->t0;
    atomic_fetch_add_explicit(&m->requests[rq->ep], 1, memory_order_relaxed);
    if (!rq->answered || rq->status >= 400) atomic_fetch_add_explicit(&m->errors[rq->ep], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&m->lat_count[rq->ep], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&m->lat_us_sum[rq->ep], (unsigned long long)(dt * 1e6), memory_order_relaxed);
    for (size_t b = 0; b < N_BUCKETS; b++)
        if (dt <= lat_bucket[b]) {
            atomic_fetch_add_explicit(&m->lat_bucket[rq->ep][b], 1, memory_order_relaxed);
            break;
        }
    es__sb_free(&rq->body);
    free(rq);
    *con_cls = NULL;
    atomic_fetch_sub(&S->in_flight, 1);
    (void)toe;
}

/* ---- run ---------------------------------------------------------------------- */
void es__serve_config_default(es__serve_config *c) {
    memset(c, 0, sizeof *c);
    c->host = "127.0.0.1";
    c->port = 8080;
    c->threads = 2;
    c->max_body = (size_t)4 << 20;
    c->max_rows = 4096;
    c->max_conns = 256;
    c->timeout_s = 10;
}

static void free_slots(server *S) {
    for (int i = 0; i < S->n_models; i++) version_put(S->models[i].cur), free(S->models[i].name), pthread_mutex_destroy(&S->models[i].mu);
    for (int i = 0; i < S->n_indexes; i++) version_put(S->indexes[i].cur), free(S->indexes[i].name), pthread_mutex_destroy(&S->indexes[i].mu);
}

int es__serve_run(const es__serve_config *cfg, char *err, size_t cap) {
    server *S = calloc(1, sizeof *S);
    if (!S) return snprintf(err, cap, "out of memory"), ES_ENOMEM;
    S->cfg = *cfg;
    S->t_start = now_s();
    pthread_mutex_init(&S->reload_mu, NULL);
    int rc = 0;
    for (int k = 0; k < 2 && rc == 0; k++) {
        int n = k ? cfg->n_indexes : cfg->n_models;
        for (int i = 0; i < n; i++) {
            slot *s = k ? &S->indexes[i] : &S->models[i];
            const char *name = k ? cfg->index_name[i] : cfg->model_name[i], *path = k ? cfg->index_path[i] : cfg->model_path[i];
            pthread_mutex_init(&s->mu, NULL);
            s->is_index = k;
            s->name = strdup(name);
            if (k) S->n_indexes++;
            else S->n_models++;
            if (!(s->cur = version_load(S, path, k, err, cap))) {
                rc = ES_EINVAL;
                break;
            }
        }
    }
    if (rc) {
        free_slots(S);
        free(S);
        return rc;
    }
    /* Signals go to the main thread only: block them before MHD starts
     * its threads (they inherit the mask), then sigwait below. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)cfg->port);
    if (inet_pton(AF_INET, cfg->host, &sa.sin_addr) != 1) {
        snprintf(err, cap, "--host %s: not an IPv4 address", cfg->host);
        free_slots(S);
        free(S);
        return ES_EINVAL;
    }
    S->d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_USE_ITC | MHD_USE_ERROR_LOG, (uint16_t)cfg->port,
                            on_accept, S, on_request, S, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa, MHD_OPTION_THREAD_POOL_SIZE,
                            (unsigned)cfg->threads, MHD_OPTION_CONNECTION_LIMIT, (unsigned)cfg->max_conns,
                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)cfg->timeout_s, MHD_OPTION_NOTIFY_COMPLETED, on_completed, S,
                            MHD_OPTION_LISTENING_ADDRESS_REUSE, (unsigned)1, MHD_OPTION_END);
    if (!S->d) {
        snprintf(err, cap, "cannot listen on %s:%d (in use, or not allowed)", cfg->host, cfg->port);
        free_slots(S);
        free(S);
        return ES_EIO;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(S->d, MHD_DAEMON_INFO_BIND_PORT);
    printf("embstore serve: listening on http://%s:%u (%d threads, %d models, %d indexes)\n", cfg->host,
           di ? (unsigned)di->port : (unsigned)cfg->port, cfg->threads, S->n_models, S->n_indexes);
    fflush(stdout);
    for (;;) {
        int sig = 0;
        if (sigwait(&set, &sig) != 0) continue;
        if (sig == SIGHUP) {
            es__sb o = {0};
            reload_all(S, &o);
            es__sb_free(&o);
            continue;
        }
        break;
    }
    /* graceful: no new connections, finish what is in flight */
    atomic_store(&S->stopping, 1);
    double t_end = now_s() + cfg->timeout_s + 1;
    while (atomic_load(&S->in_flight) > 0 && now_s() < t_end) {
        struct timespec ts = {0, 2 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    MHD_stop_daemon(S->d);
    fprintf(stderr, "embstore serve: stopped\n");
    free_slots(S);
    pthread_mutex_destroy(&S->reload_mu);
    free(S);
    return 0;
}
