/*
 * main.c — the test runner (see test.h).
 */
#include "test.h"

#include "embstore.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    const char *name;
    es_test_fn fn;
    int slow;
    const char *file;
} test_case;

static test_case cases[1024];
static int n_cases;
static int cur_failed, cur_skipped, full_tier;
static char tmp_dir[512] = "build/tmp";

void es_test_register(const char *name, es_test_fn fn, int slow, const char *file) {
    if (n_cases >= (int)(sizeof cases / sizeof cases[0])) {
        fprintf(stderr, "too many tests\n");
        exit(2);
    }
    cases[n_cases++] = (test_case){name, fn, slow, file};
}

void es_test_fail(const char *file, int line, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stdout, "    FAIL %s:%d: ", file, line);
    vfprintf(stdout, fmt, ap);
    fprintf(stdout, "\n");
    va_end(ap);
    cur_failed = 1;
}

void es_test_skip(const char *why) {
    fprintf(stdout, "    skip: %s\n", why);
    cur_skipped = 1;
}

int es_test_full(void) { return full_tier; }

const char *es_test_path(const char *name) {
    static char bufs[8][1024];
    static int slot;
    char *b = bufs[slot++ % 8];
    snprintf(b, 1024, "%s/%s", tmp_dir, name);
    return b;
}

int es_test_sh(const char *out, const char *fmt, ...) {
    char cmd[8192];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof cmd - 64) return -1;
    char full[8400];
    snprintf(full, sizeof full, "( %s ) > %s 2>&1", cmd, out ? out : "/dev/null");
    int st = system(full);
    if (st == -1) return -1;
    if (WIFEXITED(st)) return WEXITSTATUS(st);
    return 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
}

void es_test_train_refusals(const char *data, const es_test_refusal *refusals, size_t n) {
    const char *out = es_test_path("refusal.txt");
    for (size_t i = 0; i < n; i++) {
        int rc = es_test_sh(out, "%s train %s --model lr --max-rows 500 %s 2>&1", es_bin(), data, refusals[i].args);
        CHECK_MSG(rc != 0, "%s: exit 0", refusals[i].args);
        char *s = es_test_slurp(out);
        CHECK_STR_HAS(s, refusals[i].msg);
        free(s);
    }
}

char *es_test_slurp(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    if (n < 0) {
        fclose(f);
        return NULL;
    }
    char *s = malloc((size_t)n + 1);
    if (!s) {
        fclose(f);
        return NULL;
    }
    size_t got = fread(s, 1, (size_t)n, f);
    s[got] = 0;
    fclose(f);
    return s;
}

static int cmp_case(const void *a, const void *b) {
    const test_case *x = a, *y = b;
    int c = strcmp(x->file, y->file);
    return c ? c : strcmp(x->name, y->name);
}

int main(int argc, char **argv) {
    const char *queue = NULL;
    /* name filters: a test runs when its name or file holds any of them
     * (none: every test) */
    const char **filters = calloc((size_t)argc, sizeof *filters);
    int n_filters = 0;
    if (!filters) return 2;
    int shard_k = 0, shard_n = 1;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--full") == 0) full_tier = 1;
        else if (strcmp(argv[i], "--shard") == 0 && i + 1 < argc) {
            /* --shard K/N: every N-th test from the K-th (0-based), so that
             * N runners side by side run the tier once between them */
            if (sscanf(argv[++i], "%d/%d", &shard_k, &shard_n) != 2 || shard_n < 1 || shard_k < 0 || shard_k >= shard_n) {
                fprintf(stderr, "test_runner: --shard K/N with 0 <= K < N, got '%s'\n", argv[i]);
                return 2;
            }
        } else if (strcmp(argv[i], "--queue") == 0 && i + 1 < argc) {
            /* --queue DIR: runners side by side given the same DIR take the
             * tests in turn, each claiming the next one nobody has claimed
             * (creating DIR/<index>), so a long test on one runner does not
             * leave the other idle as a fixed --shard split can */
            queue = argv[++i];
            if (mkdir(queue, 0755) != 0 && errno != EEXIST) {
                fprintf(stderr, "test_runner: --queue %s: %s\n", queue, strerror(errno));
                return 2;
            }
        } else filters[n_filters++] = argv[i];
    }
    if (getenv("ES_TEST_FULL")) full_tier = 1;
    /* Run from the repository root so data/ paths work. */
    if (access("data", F_OK) != 0 && access("../data", F_OK) == 0) {
        if (chdir("..") != 0) return 2;
    }
    const char *t = getenv("ES_TEST_TMP");
    if (t) snprintf(tmp_dir, sizeof tmp_dir, "%s", t);
    /* mkdir -p tmp_dir */
    for (char *q = tmp_dir + 1; *q; q++)
        if (*q == '/') {
            *q = 0;
            mkdir(tmp_dir, 0755);
            *q = '/';
        }
    mkdir(tmp_dir, 0755);
    /* Shell commands of the tests name scratch files as $ES_T/name. */
    setenv("ES_T", tmp_dir, 1);
    qsort(cases, (size_t)n_cases, sizeof cases[0], cmp_case);
    int passed = 0, failed = 0, skipped = 0, seen = 0;
    for (int i = 0; i < n_cases; i++) {
        test_case *c = &cases[i];
        int wanted = n_filters == 0;
        for (int k = 0; k < n_filters && !wanted; k++) wanted = strstr(c->name, filters[k]) || strstr(c->file, filters[k]);
        if (!wanted) continue;
        if (seen++ % shard_n != shard_k) continue;
        if (queue) { /* claimed by another runner: not this one's */
            char claim[4400];
            snprintf(claim, sizeof claim, "%s/%d", queue, i);
            int fd = open(claim, O_CREAT | O_EXCL | O_WRONLY, 0644);
            if (fd < 0) continue;
            close(fd);
        }
        if (c->slow && !full_tier) {
            skipped++;
            continue;
        }
        cur_failed = cur_skipped = 0;
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        printf("[ RUN  ] %s\n", c->name);
        fflush(stdout);
        c->fn();
        clock_gettime(CLOCK_MONOTONIC, &t1);
        double ms = (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) / 1e6;
        if (cur_failed) {
            failed++;
            printf("[ FAIL ] %s (%.0f ms)\n", c->name, ms);
        } else if (cur_skipped) {
            skipped++;
            printf("[ SKIP ] %s\n", c->name);
        } else {
            passed++;
            printf("[  OK  ] %s (%.0f ms)\n", c->name, ms);
        }
        fflush(stdout);
    }
    free(filters);
    printf("%d passed, %d failed, %d skipped\n", passed, failed, skipped);
    /* Flush before exit handlers run: LeakSanitizer ends the process with
     * _exit when it reports, which would drop a buffered summary line. */
    fflush(stdout);
    return failed ? 1 : 0;
}

float *es_test_model_probs(const char *model, const char *file, size_t *n) {
    es_model *m = NULL;
    *n = 0;
    if (es_model_load(&m, model, 0, NULL)) return NULL;
    es_reader_params rp = es_model_reader_params(m);
    es_reader *r = NULL;
    es_batch b;
    if (es_reader_open(&r, file, &rp, NULL) || es_batch_alloc(&b, 64, es_model_n_dense(m), es_model_n_fields(m), 0)) {
        es_reader_free(r);
        es_model_free(m);
        return NULL;
    }
    size_t cap = 1024;
    float *out = malloc(cap * sizeof *out);
    int k;
    while (out && (k = es_reader_next(r, &b)) > 0) {
        if (*n + (size_t)k > cap) {
            cap = 2 * (*n + (size_t)k);
            float *o2 = realloc(out, cap * sizeof *out);
            if (!o2) {
                free(out);
                out = NULL;
                break;
            }
            out = o2;
        }
        es_model_predict_batch(m, &b, out + *n);
        *n += (size_t)k;
    }
    es_batch_free(&b);
    es_reader_free(r);
    es_model_free(m);
    return out;
}
