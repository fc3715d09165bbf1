/*
 * test_serve.c — `embstore serve` end to end (issue 14): a real server
 * ($ES_BIN serve, a child process on a free loopback port: --port 0 and the
 * printed port) spoken to over 127.0.0.1 by the small HTTP/1.1 client
 * below.  Every endpoint; predictions equal to the library's and the CLI's
 * on the same rows; reload under load; a corrupt file refused at reload;
 * malformed requests answered 4xx with bounded RSS; graceful SIGTERM.
 */
#include "test.h"

#include "embstore.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define CRITEO "data/criteo_kaggle_train_first10k.tsv"

typedef struct {
    pid_t pid;
    int port;
} srv;

/* A model trained once per run (and a second one, another seed, for reloads). */
static const char *model_a(void) {
    static char path[512];
    if (!path[0]) {
        snprintf(path, sizeof path, "%s", es_test_path("serve_a.es"));
        if (es_test_sh(NULL, "%s train %s --model dlrm --max-rows 2000 --epochs 1 --seed 1 --out %s", es_bin(), CRITEO, path))
            path[0] = 0;
    }
    return path;
}
static const char *model_b(void) {
    static char path[512];
    if (!path[0]) {
        snprintf(path, sizeof path, "%s", es_test_path("serve_b.es"));
        if (es_test_sh(NULL, "%s train %s --model dlrm --max-rows 2000 --epochs 1 --seed 7 --out %s", es_bin(), CRITEO, path))
            path[0] = 0;
    }
    return path;
}

/* Servers started and not yet reaped.  A test that fails returns from
 * its first failed CHECK, before it stops its server: the next srv_start
 * and the runner's exit kill what is left, so a failed test does not leave
 * a server holding the runner's stderr (and a pipe after it) open. */
static pid_t g_live[16];
static int g_n_live;

static void srv_forget(pid_t pid) {
    for (int i = 0; i < g_n_live; i++)
        if (g_live[i] == pid) g_live[i] = g_live[--g_n_live];
}

static void srv_kill_left(void) {
    while (g_n_live > 0) {
        pid_t pid = g_live[--g_n_live];
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
    }
}

/* Start `embstore serve ARGS --port 0`; reads the bound port from its stdout. */
static int srv_start(srv *s, const char *args) {
    static int hooked;
    if (!hooked) hooked = atexit(srv_kill_left) == 0;
    srv_kill_left(); /* from a test that failed before it stopped its server */
    int fd[2];
    if (pipe(fd)) return -1;
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "exec %s serve %s --port 0", es_bin(), args);
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        dup2(fd[1], 1);
        close(fd[0]);
        close(fd[1]);
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    close(fd[1]);
    s->pid = pid;
    s->port = 0;
    if (g_n_live < (int)(sizeof g_live / sizeof g_live[0])) g_live[g_n_live++] = pid;
    char buf[512];
    size_t n = 0;
    while (n < sizeof buf - 1) {
        ssize_t k = read(fd[0], buf + n, sizeof buf - 1 - n);
        if (k <= 0) break;
        n += (size_t)k;
        buf[n] = 0;
        if (strchr(buf, '\n')) break;
    }
    close(fd[0]);
    buf[n] = 0;
    const char *p = strstr(buf, "127.0.0.1:");
    if (p) s->port = atoi(p + 10);
    if (s->port <= 0) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        srv_forget(pid);
        return -1;
    }
    return 0;
}

/* SIGTERM and wait; the exit status (-1 if it died of a signal / timed out). */
static int srv_stop(srv *s) {
    kill(s->pid, SIGTERM);
    for (int i = 0; i < 1000; i++) {
        int st;
        pid_t r = waitpid(s->pid, &st, WNOHANG);
        if (r == s->pid) {
            srv_forget(s->pid);
            return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
        }
        usleep(10000);
    }
    kill(s->pid, SIGKILL);
    waitpid(s->pid, NULL, 0);
    srv_forget(s->pid);
    return -1;
}

static long rss_kb(pid_t pid) {
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    long kb = -1;
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "VmRSS:", 6)) kb = atol(line + 6);
    if (f) fclose(f);
    return kb;
}

static int connect_to(int port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct timeval tv = {20, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (struct sockaddr *)&a, sizeof a)) {
        close(fd);
        return -1;
    }
    return fd;
}

static int send_all(int fd, const char *p, size_t n) {
    while (n) {
        ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
        if (k <= 0) return -1;
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

/* Read one response: status, malloc'd body (until Content-Length or EOF). */
static int read_resp(int fd, char **body) {
    size_t cap = 1 << 16, n = 0, hoff = 0; /* hoff: body start (0: headers not complete) */
    char *b = malloc(cap);
    *body = NULL;
    if (!b) return -1;
    long want = -1;
    for (;;) {
        if (hoff && want >= 0 && (long)(n - hoff) >= want) break;
        if (n + 4096 > cap) {
            char *nb = realloc(b, cap *= 2);
            if (!nb) break;
            b = nb;
        }
        ssize_t k = recv(fd, b + n, cap - n - 1, 0);
        if (k <= 0) break;
        n += (size_t)k;
        b[n] = 0;
        char *he;
        if (!hoff && (he = strstr(b, "\r\n\r\n"))) {
            hoff = (size_t)(he - b) + 4;
            char *cl = strcasestr(b, "Content-Length:");
            if (cl && cl < he) want = atol(cl + 15);
        }
    }
    b[n] = 0;
    int status = -1;
    if (n > 12 && !strncmp(b, "HTTP/1.", 7)) status = atoi(b + 9);
    if (hoff) memmove(b, b + hoff, n - hoff + 1);
    *body = b;
    return status;
}

/* One request on a new connection; returns the status and the body. */
static int http(int port, const char *method, const char *path, const char *ctype, const char *body, size_t n, char **resp) {
    int fd = connect_to(port);
    *resp = NULL;
    if (fd < 0) return -1;
    char hdr[512];
    int h = snprintf(hdr, sizeof hdr, "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: %s\r\nContent-Length: %zu\r\n\r\n",
                     method, path, ctype ? ctype : "application/json", n);
    int st = -1;
    if (send_all(fd, hdr, (size_t)h) == 0 && send_all(fd, body ? body : "", n) == 0) st = read_resp(fd, resp);
    close(fd);
    return st;
}
static int post(int port, const char *path, const char *body, char **resp) {
    return http(port, "POST", path, NULL, body, strlen(body), resp);
}

/* GET /metrics until every string in want[] is there, for at most 5 s. The
 * server counts a request when libmicrohttpd reports it complete, which is
 * after the client has read the response: a scrape sent straight after may
 * not count the last request yet. Returns the last body (the caller checks
 * it and frees it). */
static char *metrics_settled(int port, const char *const *want, int nwant) {
    char *r = NULL;
    for (int tries = 0; tries < 100; tries++) {
        free(r);
        r = NULL;
        if (http(port, "GET", "/metrics", NULL, "", 0, &r) != 200 || !r) continue;
        int ok = 1;
        for (int i = 0; i < nwant && ok; i++) ok = strstr(r, want[i]) != NULL;
        if (ok) break;
        usleep(50000);
    }
    return r;
}

/* The first n lines of the Criteo file: with labels into lab, without into unl. */
static void criteo_rows(int n, const char *lab, const char *unl) {
    es_test_sh(NULL, "head -%d %s > %s && cut -f2- %s > %s", n, CRITEO, lab, lab, unl);
}

/* Reference probabilities through the library's batch path (reader with the
 * model's parameters, es_model_predict_batch), one "%.9g" per line. */
static char *reference(const char *model, const char *file) {
    size_t n = 0;
    float *prob = es_test_model_probs(model, file, &n);
    if (!prob) return NULL;
    size_t cap = 16 * n + 1, o = 0;
    char *out = calloc(1, cap);
    for (size_t i = 0; out && i < n; i++) o += (size_t)snprintf(out + o, cap - o, "%.9g\n", prob[i]);
    free(prob);
    return out;
}

/* "predictions":[a,b,...] -> one value per line. */
static char *preds_lines(const char *json) {
    const char *p = json ? strstr(json, "\"predictions\":[") : NULL;
    if (!p) return NULL;
    p += 15;
    const char *e = strchr(p, ']');
    if (!e) return NULL;
    char *out = malloc((size_t)(e - p) + 2);
    size_t o = 0;
    for (; p < e; p++) out[o++] = *p == ',' ? '\n' : *p;
    out[o++] = '\n';
    out[o] = 0;
    return out;
}

TEST(serve_endpoints) {
    const char *ma = model_a();
    CHECK_MSG(ma[0], "training the test model failed");
    const char *ix = es_test_path("serve_items.esi");
    CHECK(es_test_sh(NULL, "%s index build data/siftsmall/siftsmall_base.part1.fvecs --kind flat -o %s", es_bin(), ix) == 0);
    char args[1024];
    snprintf(args, sizeof args, "--model ctr=%s --index items=%s --threads 2", ma, ix);
    srv s;
    CHECK(srv_start(&s, args) == 0);
    char *r = NULL;
    int st = http(s.port, "GET", "/healthz", NULL, "", 0, &r);
    CHECK_EQ_INT(st, 200);
    CHECK_STR_HAS(r, "\"status\":\"ok\"");
    free(r);
    st = http(s.port, "GET", "/v1/models", NULL, "", 0, &r);
    CHECK_EQ_INT(st, 200);
    CHECK_STR_HAS(r, "\"name\":\"ctr\"");
    CHECK_STR_HAS(r, "\"checksum\":\"");
    CHECK_STR_HAS(r, "\"loaded_at\":\"");
    CHECK_STR_HAS(r, "\"name\":\"items\"");
    free(r);
    /* predict: JSON rows, JSON lines, text/plain */
    st = post(s.port, "/v1/models/ctr/predict", "{\"rows\":[{\"I1\":3,\"C1\":\"05db9164\"},{\"I2\":1.5,\"C3\":null}]}", &r);
    CHECK_EQ_INT(st, 200);
    CHECK_STR_HAS(r, "\"predictions\":[");
    free(r);
    /* embed */
    st = post(s.port, "/v1/models/ctr/embed", "{\"pairs\":[{\"field\":\"C1\",\"value\":\"05db9164\"},{\"field\":2,\"value\":\"\"}]}", &r);
    CHECK_EQ_INT(st, 200);
    CHECK_STR_HAS(r, "\"dim\":16");
    CHECK_STR_HAS(r, "\"vectors\":[[");
    free(r);
    st = post(s.port, "/v1/models/ctr/embed", "{\"field\":\"nope\",\"values\":[\"x\"]}", &r);
    CHECK_EQ_INT(st, 400);
    CHECK_STR_HAS(r, "\"column\":\"nope\"");
    free(r);
    /* search: the first base vector finds itself at distance 0 */
    es_vecs v = {0};
    es_vec_read_params vp = es_vec_read_params_default();
    CHECK(es_vecs_read(&v, "data/siftsmall/siftsmall_base.part1.fvecs", &vp, NULL) == 0);
    char q[8192];
    size_t o = (size_t)snprintf(q, sizeof q, "{\"k\":3,\"vectors\":[[");
    for (int d = 0; d < v.dim; d++) o += (size_t)snprintf(q + o, sizeof q - o, d ? ",%g" : "%g", v.x[d]);
    snprintf(q + o, sizeof q - o, "]]}");
    es_vecs_free(&v);
    st = post(s.port, "/v1/indexes/items/search", q, &r);
    CHECK_EQ_INT(st, 200);
    CHECK_STR_HAS(r, "\"ids\":[[0,");
    CHECK_STR_HAS(r, "\"distances\":[[0,");
    free(r);
    st = post(s.port, "/v1/indexes/items/search", "{\"k\":3,\"vector\":[1,2]}", &r);
    CHECK_EQ_INT(st, 400);
    CHECK_STR_HAS(r, "dimension 128");
    free(r);
    /* errors: unknown model, method, path; bad column names row and column */
    CHECK_EQ_INT(post(s.port, "/v1/models/nope/predict", "{}", &r), 404);
    free(r);
    CHECK_EQ_INT(http(s.port, "GET", "/v1/models/ctr/predict", NULL, "", 0, &r), 405);
    free(r);
    CHECK_EQ_INT(http(s.port, "GET", "/nothing", NULL, "", 0, &r), 404);
    free(r);
    st = post(s.port, "/v1/models/ctr/predict", "{\"rows\":[{\"I1\":1},{\"I1\":\"x\"}]}", &r);
    CHECK_EQ_INT(st, 400);
    CHECK_STR_HAS(r, "\"row\":1");
    CHECK_STR_HAS(r, "\"column\":\"I1\"");
    free(r);
    /* metrics */
    static const char *const want[] = {"embstore_requests_total{endpoint=\"embed\"} 2", "embstore_errors_total{endpoint=\"embed\"} 1",
                                       "embstore_rows_predicted_total 2",
                                       "embstore_request_seconds_bucket{endpoint=\"search\",le=\"+Inf\"} 2",
                                       "embstore_reloads_total{result=\"ok\"} 0"};
    r = metrics_settled(s.port, want, (int)(sizeof want / sizeof *want));
    CHECK(r != NULL);
    for (size_t i = 0; i < sizeof want / sizeof *want; i++) CHECK_STR_HAS(r, want[i]);
    free(r);
    CHECK_EQ_INT(srv_stop(&s), 0);
}

TEST(serve_predict_bits) {
    const char *ma = model_a();
    CHECK(ma[0]);
    const char *lab = es_test_path("serve_rows.tsv"), *unl = es_test_path("serve_rows_unl.tsv");
    criteo_rows(300, lab, unl);
    char *ref = reference(ma, lab);
    CHECK(ref);
    char args[600];
    snprintf(args, sizeof args, "--model ctr=%s --threads 2", ma);
    srv s;
    CHECK(srv_start(&s, args) == 0);
    /* text/plain, labeled lines */
    char *txt = es_test_slurp(lab), *r = NULL;
    int st = http(s.port, "POST", "/v1/models/ctr/predict?labeled=1", "text/plain", txt, strlen(txt), &r);
    CHECK_EQ_INT(st, 200);
    char *got = preds_lines(r);
    CHECK(got);
    CHECK_MSG(strcmp(got, ref) == 0, "text/plain predictions differ from the library's");
    free(got);
    free(r);
    /* JSON rows built from the unlabeled lines: each column as a string */
    char *u = es_test_slurp(unl);
    size_t cap = strlen(u) * 3 + 4096, o = 0;
    char *js = malloc(cap);
    o += (size_t)snprintf(js + o, cap - o, "{\"rows\":[");
    int row = 0;
    for (char *line = strtok(u, "\n"); line; line = strtok(NULL, "\n"), row++) {
        o += (size_t)snprintf(js + o, cap - o, row ? ",{" : "{");
        char *p = line;
        for (int c = 0; c < 39; c++) {
            char *t = strchr(p, '\t');
            if (t) *t = 0;
            o += (size_t)snprintf(js + o, cap - o, "%s\"%s%d\":\"%s\"", c ? "," : "", c < 13 ? "I" : "C", c < 13 ? c + 1 : c - 12, p);
            p = t ? t + 1 : p + strlen(p);
        }
        o += (size_t)snprintf(js + o, cap - o, "}");
    }
    snprintf(js + o, cap - o, "]}");
    st = post(s.port, "/v1/models/ctr/predict", js, &r);
    CHECK_EQ_INT(st, 200);
    got = preds_lines(r);
    CHECK(got);
    CHECK_MSG(strcmp(got, ref) == 0, "JSON-row predictions differ from the library's");
    /* and the CLI's: `embstore predict --digits 9` prints every float
     * exactly, so both read back (strtof) to the same bits */
    const char *cli = es_test_path("serve_cli.txt");
    CHECK(es_test_sh(NULL, "%s predict %s %s --unlabeled --digits 9 --out %s", es_bin(), ma, unl, cli) == 0);
    char *c9 = es_test_slurp(cli);
    CHECK(c9);
    int n_cmp = 0;
    for (char *p = got, *q = c9;; n_cmp++) {
        while (*p == '\n') p++;
        while (*q == '\n') q++;
        if (!*p || !*q) {
            CHECK_MSG(!*p && !*q, "after %d rows: the %s has more predictions", n_cmp, *p ? "server" : "CLI");
            break;
        }
        char *pe, *qe;
        float a = strtof(p, &pe), b = strtof(q, &qe);
        CHECK(pe != p && qe != q);
        CHECK_MSG(memcmp(&a, &b, sizeof a) == 0, "row %d: server %.9g != embstore predict --digits 9 %.9g", n_cmp, a, b);
        p = pe;
        q = qe;
    }
    CHECK_EQ_INT(n_cmp, 300);
    printf("  300 rows: server == library (%%.9g) == CLI (predict --digits 9, strtof: all bits)\n");
    free(c9);
    free(got);
    free(r);
    free(js);
    free(u);
    free(txt);
    free(ref);
    CHECK_EQ_INT(srv_stop(&s), 0);
}

/* A client loop for the reload and shutdown tests. */
typedef struct {
    int port;
    atomic_int stop;
    atomic_int sent, failed, gen_seen_max; /* two client threads share them */
    char first_fail[160]; /* the first failure's status and body (its one writer: the thread that counted it) */
} loop_arg;

static void *client_loop(void *p) {
    loop_arg *a = p;
    const char *body = "{\"rows\":[{\"I1\":3,\"C1\":\"05db9164\"},{\"I5\":100,\"C2\":\"08d6d899\"}]}";
    while (!atomic_load(&a->stop)) {
        char *r = NULL;
        int st = post(a->port, "/v1/models/ctr/predict", body, &r);
        atomic_fetch_add(&a->sent, 1);
        if (st != 200 || !r || !strstr(r, "\"predictions\":[")) {
            if (atomic_fetch_add(&a->failed, 1) == 0)
                snprintf(a->first_fail, sizeof a->first_fail, "status %d: %.120s", st, r ? r : "(no body)");
        }
        const char *g = r ? strstr(r, "\"generation\":") : NULL;
        for (int gen = g ? atoi(g + 13) : 0, seen = atomic_load(&a->gen_seen_max);
             gen > seen && !atomic_compare_exchange_weak(&a->gen_seen_max, &seen, gen);)
            ;
        free(r);
    }
    return NULL;
}

TEST(serve_reload) {
    const char *ma = model_a(), *mb = model_b();
    CHECK(ma[0] && mb[0]);
    const char *path = es_test_path("serve_live.es"), *tmp = es_test_path("serve_live.tmp");
    CHECK(es_test_sh(NULL, "cp %s %s", ma, path) == 0);
    char args[600];
    snprintf(args, sizeof args, "--model ctr=%s --threads 2", path);
    srv s;
    CHECK(srv_start(&s, args) == 0);
    /* the replacement files made before the clients start: the process
     * does not fork a shell while its client threads run */
    char f[4][600]; /* model b, model a, b corrupted, not a model */
    for (int i = 0; i < 4; i++) snprintf(f[i], sizeof f[i], "%s.%d", tmp, i + 1);
    CHECK(es_test_sh(NULL, "cp %s %s && cp %s %s && cp %s %s && printf 'garbage' | dd of=%s bs=1 seek=5000 conv=notrunc 2>/dev/null && "
                           "printf 'not a model' > %s",
                     mb, f[0], ma, f[1], mb, f[2], f[2], f[3]) == 0);
    loop_arg a = {.port = s.port};
    pthread_t th[2];
    for (int i = 0; i < 2; i++) pthread_create(&th[i], NULL, client_loop, &a);
    usleep(100000);
    /* a new model by rename, then reload by HTTP and by SIGHUP */
    CHECK(rename(f[0], path) == 0);
    char *r = NULL;
    int st = post(s.port, "/v1/admin/reload", "", &r);
    CHECK_EQ_INT(st, 200);
    CHECK_STR_HAS(r, "\"result\":\"reloaded\"");
    free(r);
    usleep(100000);
    CHECK(rename(f[1], path) == 0);
    kill(s.pid, SIGHUP);
    usleep(200000);
    /* a corrupt file: refused, the old model answers */
    CHECK(rename(f[2], path) == 0);
    st = post(s.port, "/v1/admin/reload", "", &r);
    CHECK_EQ_INT(st, 409);
    CHECK_STR_HAS(r, "\"result\":\"refused\"");
    free(r);
    CHECK(rename(f[3], path) == 0);
    st = post(s.port, "/v1/admin/reload", "", &r);
    CHECK_EQ_INT(st, 409);
    free(r);
    usleep(100000);
    atomic_store(&a.stop, 1);
    for (int i = 0; i < 2; i++) pthread_join(th[i], NULL);
    printf("  %d requests during 2 reloads and 2 refused ones: %d failed, generation seen %d\n", atomic_load(&a.sent),
           atomic_load(&a.failed), atomic_load(&a.gen_seen_max));
    CHECK_MSG(atomic_load(&a.failed) == 0, "%d requests failed, the first: %s", atomic_load(&a.failed), a.first_fail);
    CHECK(atomic_load(&a.gen_seen_max) == 2);
    static const char *const want[] = {"embstore_reloads_total{result=\"ok\"} 2", "embstore_reloads_total{result=\"refused\"} 2"};
    r = metrics_settled(s.port, want, 2);
    CHECK(r != NULL);
    for (int i = 0; i < 2; i++) CHECK_STR_HAS(r, want[i]);
    free(r);
    st = http(s.port, "GET", "/v1/models", NULL, "", 0, &r);
    CHECK_STR_HAS(r, "\"generation\":2");
    free(r);
    CHECK_EQ_INT(srv_stop(&s), 0);
}

TEST(serve_sigterm) {
    const char *ma = model_a();
    CHECK(ma[0]);
    const char *lab = es_test_path("serve_big.tsv"), *unl = es_test_path("serve_big_unl.tsv");
    criteo_rows(4000, lab, unl);
    char args[600];
    snprintf(args, sizeof args, "--model ctr=%s --threads 2", ma);
    srv s;
    CHECK(srv_start(&s, args) == 0);
    char *txt = es_test_slurp(unl);
    size_t n = strlen(txt);
    /* 4 slow-ish requests sent, then SIGTERM while they run */
    int fds[4];
    for (int i = 0; i < 4; i++) {
        fds[i] = connect_to(s.port);
        CHECK(fds[i] >= 0);
        char hdr[256];
        int h = snprintf(hdr, sizeof hdr, "POST /v1/models/ctr/predict HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n\r\n", n);
        CHECK(send_all(fds[i], hdr, (size_t)h) == 0 && send_all(fds[i], txt, n) == 0);
    }
    /* SIGTERM once the server has all four (a request counts from its
     * first handler call; the scrape counts itself too): a fixed sleep
     * sent it before a loaded machine had read the last ones, and a
     * connection still waiting to be accepted is refused, not in flight */
    static const char *const four[] = {"embstore_in_flight 5\n"};
    free(metrics_settled(s.port, four, 1));
    kill(s.pid, SIGTERM);
    int ok = 0;
    for (int i = 0; i < 4; i++) {
        char *r = NULL;
        int st = read_resp(fds[i], &r);
        char *g = preds_lines(r);
        long lines = 0;
        for (char *p = g; p && *p; p++) lines += *p == '\n';
        ok += st == 200 && lines == 4000;
        free(g);
        free(r);
        close(fds[i]);
    }
    free(txt);
    int st = -1;
    for (int i = 0; i < 1000; i++) {
        int w;
        if (waitpid(s.pid, &w, WNOHANG) == s.pid) {
            srv_forget(s.pid);
            st = WIFEXITED(w) ? WEXITSTATUS(w) : -1;
            break;
        }
        usleep(10000);
    }
    printf("  %d of 4 in-flight requests answered in full; exit status %d\n", ok, st);
    CHECK_EQ_INT(ok, 4);
    CHECK_EQ_INT(st, 0);
}

/* n malformed requests of every kind; each must get a 4xx; RSS growth < 5 MB. */
static void malformed(int n) {
    const char *ma = model_a();
    CHECK(ma[0]);
    char args[600];
    snprintf(args, sizeof args, "--model ctr=%s --threads 2 --max-body 65536 --max-rows 100 --timeout 1", ma);
    srv s;
    CHECK(srv_start(&s, args) == 0);
    static const char *bad[] = {
        "{", "[1,2]", "{\"rows\":[{\"I1\":3,", "{\"rows\":[{\"nope\":1}]}", "{\"rows\":[{\"I1\":\"abc\"}]}", "{\"rows\":7}",
        "{\"rows\":[1]}", "{\"rows\":[{\"C1\":{\"a\":1}}]}", "{\"lines\":[\"1\\t2\"]}", "{\"rows\":[],\"lines\":[]}", "\xff\xfe",
        "{\"rows\":[{\"C1\":\"a\\tb\"}]}", "{\"lines\":[3]}", "{\"rows\":[{\"I1\":1}],\"x\":1}", "null", "{\"rows\":[{\"I1\":1e999}]}",
    };
    const int nb = (int)(sizeof bad / sizeof bad[0]);
    char *big = malloc(70000);
    memset(big, 'x', 69999);
    big[69999] = 0;
    char many[4096];
    size_t o = (size_t)snprintf(many, sizeof many, "{\"rows\":[");
    for (int i = 0; i < 101; i++) o += (size_t)snprintf(many + o, sizeof many - o, i ? ",{}" : "{}");
    snprintf(many + o, sizeof many - o, "]}");
    /* warm up, then measure */
    char *r = NULL;
    for (int i = 0; i < 200; i++) {
        post(s.port, "/v1/models/ctr/predict", bad[i % nb], &r);
        free(r);
    }
    long rss0 = rss_kb(s.pid);
    int not4xx = 0;
    for (int i = 0; i < n; i++) {
        int st, kind = i % (nb + 4);
        if (kind < nb) st = post(s.port, "/v1/models/ctr/predict", bad[kind], &r);
        else if (kind == nb) st = post(s.port, "/v1/models/ctr/predict", big, &r); /* oversize */
        else if (kind == nb + 1) st = post(s.port, "/v1/models/ctr/predict", many, &r); /* too many rows */
        else if (kind == nb + 2) st = post(s.port, "/v1/indexes/none/search", "{}", &r);
        else st = http(s.port, "POST", "/v1/models/ctr/predict", "text/plain", "1\t2\t3\n", 6, &r); /* truncated line */
        if (st < 400 || st >= 500) {
            if (not4xx++ < 3) printf("  request kind %d: status %d: %s\n", kind, st, r ? r : "");
        }
        free(r);
    }
    /* slow clients: a body trickled past --timeout (1 s here) is answered 408
     * once it is in; a client that stops sending is closed by the idle
     * timeout; both in bounded time.  The three connections run at once. */
    int slow_ok = 0, stalled_ok = 0, fd[3];
    const char *h = "POST /v1/models/ctr/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 30\r\n\r\n";
    for (int i = 0; i < 3; i++) {
        fd[i] = connect_to(s.port);
        send_all(fd[i], h, strlen(h));
    }
    send_all(fd[2], "{\"rows\"", 7); /* the stalled one: nothing more is sent */
    double t0 = (double)time(NULL);
    for (int k = 0; k < 30; k++) { /* 30 bytes to each slow one, one per 60 ms: 1.8 s */
        for (int i = 0; i < 2; i++) send_all(fd[i], k == 0 ? "{" : " ", 1);
        usleep(60000);
    }
    for (int i = 0; i < 3; i++) {
        int st = read_resp(fd[i], &r);
        if (i < 2) {
            if (st != 408) printf("  slow client %d: status %d: %s\n", i, st, r ? r : "");
            slow_ok += st == 408 && r && strstr(r, "--timeout") && (double)time(NULL) - t0 < 5;
        } else {
            stalled_ok = st == -1 && (double)time(NULL) - t0 < 5;
        }
        free(r);
        close(fd[i]);
    }
    long rss1 = rss_kb(s.pid);
    printf("  %d malformed requests: %d not 4xx; 2 slow clients: %d answered 408; a stalled client closed: %d; RSS %ld -> "
           "%ld kB\n",
           n, not4xx, slow_ok, stalled_ok, rss0, rss1);
    free(big);
    CHECK_EQ_INT(not4xx, 0);
    CHECK_EQ_INT(slow_ok, 2);
    CHECK_EQ_INT(stalled_ok, 1);
#if defined(__SANITIZE_ADDRESS__)
    /* ASan holds freed memory in its quarantine (256 MB by default), so the
     * server's RSS grows by design there: the bound is checked in the
     * normal build */
    printf("  (RSS bound not checked under AddressSanitizer)\n");
#else
    CHECK(rss1 - rss0 < 5 * 1024);
#endif
    CHECK(post(s.port, "/v1/models/ctr/predict", "{\"rows\":[{\"I1\":1}]}", &r) == 200); /* still serving */
    free(r);
    CHECK_EQ_INT(srv_stop(&s), 0);
}

TEST(serve_malformed_quick) { malformed(400); }
TEST_SLOW(serve_malformed_10k) { malformed(10000); }
