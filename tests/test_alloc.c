/*
 * test_alloc.c — the allocation-failure sweep (alloc_sweep.h) and its use on
 * the container format: a write + read round trip must fail cleanly (error
 * status, no crash, no leak, no file left behind) whichever allocation
 * fails.  Other test files include alloc_sweep.h to sweep their own
 * components.
 */
#include "test.h"

#include "alloc_sweep.h"
#include "core/core.h"
#include "format/file.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__)
#define ES_SWEEP_LSAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ES_SWEEP_LSAN 1
#endif
#endif
#ifdef ES_SWEEP_LSAN
#include <sanitizer/lsan_interface.h>
#endif

/* Nonzero when LeakSanitizer finds unreachable blocks now. */
static int leaks_now(void) {
#ifdef ES_SWEEP_LSAN
    return __lsan_do_recoverable_leak_check();
#else
    return 0;
#endif
}

/* Result bits of one run (the exit status of the child). */
enum { RUN_HIT = 1, RUN_NEG = 2, RUN_LEAK = 4 };

/* Zero the stack below the caller's frame.  LeakSanitizer scans a stopped
 * thread's stack from its current stack pointer, which lies deep inside
 * the leak check, so the dead frames of fn (still holding the pointer it
 * dropped) would count as live references and hide the leak. */
__attribute__((noinline)) static void wipe_dead_stack(void) {
    volatile char pad[64 * 1024];
    memset((char *)pad, 0, sizeof pad);
    __asm__ volatile("" : : "r"(pad) : "memory");
}

static int run_once(int (*fn)(void *), void *ctx, int n, int check_leaks) {
    es__alloc_fail_at((uint64_t)n);
    int rc = fn(ctx);
    uint64_t done = es__alloc_fail_at(0);
    int res = 0;
    if (done >= (uint64_t)n) res |= RUN_HIT;
    if (rc < 0) res |= RUN_NEG;
    if (check_leaks) {
        wipe_dead_stack();
        if (leaks_now()) res |= RUN_LEAK;
    }
    return res;
}

static double sweep_timeout(void) {
    const char *t = getenv("ES_ALLOC_SWEEP_TIMEOUT");
    double s = t ? atof(t) : 0;
    return s > 0 ? s : 120;
}

/* Run fn in a child: the result bits, or -1 (printed) if it crashed or hung. */
static int run_forked(int (*fn)(void *), void *ctx, int n, int check_leaks) {
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        printf("    alloc sweep: fork failed: %s\n", strerror(errno));
        return -1;
    }
    if (pid == 0) {
        /* An OpenMP pool inherited through fork would deadlock; one thread
         * keeps every allocation on this thread, where injection happens. */
        es__threads_set(1);
        _exit(run_once(fn, ctx, n, check_leaks));
    }
    double t0 = es__now(), limit = sweep_timeout();
    int st;
    for (;;) {
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid) break;
        if (r < 0 && errno != EINTR) {
            printf("    alloc sweep: waitpid failed: %s\n", strerror(errno));
            return -1;
        }
        if (es__now() - t0 > limit) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            printf("    alloc sweep: run with allocation %d failing hung for %.0f s (killed)\n", n, limit);
            return -1;
        }
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    if (WIFSIGNALED(st)) {
        printf("    alloc sweep: run with allocation %d failing crashed (signal %d)\n", n, WTERMSIG(st));
        return -1;
    }
    int code = WEXITSTATUS(st);
    if (code & ~(RUN_HIT | RUN_NEG | RUN_LEAK)) {
        printf("    alloc sweep: run with allocation %d failing exited with status %d\n", n, code);
        return -1;
    }
    return code;
}

/* Leaks that exist before the sweep would be reported in every child;
 * check once in a child and, if there are any, sweep without leak checks. */
static int baseline_leak_free(void) {
#ifdef ES_SWEEP_LSAN
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) return 0;
    if (pid == 0) {
        int devnull = open("/dev/null", O_WRONLY);
        if (devnull >= 0) dup2(devnull, 2);
        _exit(leaks_now() ? 1 : 0);
    }
    int st;
    if (waitpid(pid, &st, 0) != pid) return 0;
    if (WIFEXITED(st) && WEXITSTATUS(st) == 0) return 1;
    printf("    alloc sweep: the process already holds leaked memory; per-run leak checks are off\n");
#endif
    return 0;
}

int es_test_alloc_sweep(int (*fn)(void *ctx), void *ctx, int max_n) {
    const char *e = getenv("ES_ALLOC_SWEEP_INPROC");
    int inproc = e && *e && strcmp(e, "0") != 0;
    int check_leaks = !inproc && baseline_leak_free();
    for (int n = 1; n <= max_n; n++) {
        int res = inproc ? run_once(fn, ctx, n, 0) : run_forked(fn, ctx, n, check_leaks);
        if (res < 0) return -1;
        if (res & RUN_LEAK) {
            printf("    alloc sweep: memory leaked in the run with allocation %d failing%s\n", n, (res & RUN_HIT) ? "" : " (it was never reached)");
            return -1;
        }
        if (!(res & RUN_HIT)) {
            if (res & RUN_NEG) {
                printf("    alloc sweep: the run without any failed allocation returned an error\n");
                return -1;
            }
            return n - 1;
        }
        if (!(res & RUN_NEG)) {
            printf("    alloc sweep: allocation %d failed but the function returned success\n", n);
            return -1;
        }
    }
    printf("    alloc sweep: still failing after %d allocation points (raise max_n?)\n", max_n);
    return -1;
}

/* ---- the sweep itself ------------------------------------------------------------ */

static int sweep_fine(void *ctx) {
    void *p[5] = {0};
    int rc = 0;
    for (int i = 0; i < 5 && !rc; i++)
        if (!(p[i] = es__malloc(16))) rc = ES_ENOMEM;
    for (int i = 0; i < 5; i++) es__free(p[i]);
    return rc;
}

static int sweep_ignores_failure(void *ctx) {
    for (int i = 0; i < 3; i++) es__free(es__malloc(16)); /* NULL is never used, but also never reported */
    return 0;
}

static int sweep_crashes(void *ctx) {
    void *a = es__malloc(8), *b = es__malloc(8);
    if (!a || !b) abort();
    es__free(a);
    es__free(b);
    return 0;
}

#ifdef ES_SWEEP_LSAN
static void *volatile leak_sink;

/* Drops 16 blocks when its 17th allocation fails.  LeakSanitizer scans
 * registers and stacks conservatively, so a single dropped pointer can
 * survive in a register and hide; sixteen cannot all. */
static int sweep_leaks(void *ctx) {
    (void)ctx;
    char *blk[16];
    for (int i = 0; i < 16; i++) {
        if (!(blk[i] = es__malloc(32))) {
            while (i--) es__free(blk[i]);
            return ES_ENOMEM;
        }
        memset(blk[i], 1, 32);
    }
    char *b = es__malloc(32);
    if (!b) {
        memset(blk, 0, sizeof blk); /* all dropped: the leak under test */
        leak_sink = blk;
        return ES_ENOMEM;
    }
    for (int i = 0; i < 16; i++) es__free(blk[i]);
    es__free(b);
    return 0;
}
#endif

TEST(alloc_sweep_accepts_a_correct_function) {
    CHECK_EQ_INT(es_test_alloc_sweep(sweep_fine, NULL, 100), 5);
}

TEST(alloc_sweep_flags_a_success_after_failure) {
    CHECK_EQ_INT(es_test_alloc_sweep(sweep_ignores_failure, NULL, 100), -1);
}

TEST(alloc_sweep_flags_a_crash) {
    const char *e = getenv("ES_ALLOC_SWEEP_INPROC");
    if (e && *e && strcmp(e, "0") != 0) {
        es_test_skip("in-process sweeps cannot survive a crash");
        return;
    }
    CHECK_EQ_INT(es_test_alloc_sweep(sweep_crashes, NULL, 100), -1);
}

TEST(alloc_sweep_flags_a_leak) {
#ifndef ES_SWEEP_LSAN
    es_test_skip("leak detection needs the SAN=1 build");
#else
    const char *e = getenv("ES_ALLOC_SWEEP_INPROC");
    if (e && *e && strcmp(e, "0") != 0) {
        es_test_skip("in-process sweeps check leaks only at exit");
        return;
    }
    /* The child's leak report is expected: keep it out of the log. */
    fflush(NULL);
    int saved = dup(2), devnull = open("/dev/null", O_WRONLY);
    CHECK(saved >= 0 && devnull >= 0);
    dup2(devnull, 2);
    int r = es_test_alloc_sweep(sweep_leaks, NULL, 100);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    close(devnull);
    CHECK_EQ_INT(r, -1);
#endif
}

/* ---- the format under allocation failure ---------------------------------------- */

enum { RT_TENSORS = 20, RT_META = 20, RT_ROWS = 7, RT_DIM = 5 };

static float rt_data[RT_TENSORS][RT_ROWS * RT_DIM];

/* Write a file with enough metadata and tensors that the writer's arrays
 * and name index grow, then read it back and check it.  0 or an ES_E* code. */
static int format_round_trip(void *ctx) {
    const char *path = ctx;
    es_err err = {0};
    es_fwriter *w;
    int rc = es__fwriter_open(&w, path, &err);
    if (rc) return rc;
    char name[32];
    for (int i = 0; i < RT_META; i++) {
        snprintf(name, sizeof name, "key%d", i);
        es__fwriter_metaf(w, name, "value %d", i); /* errors are sticky: commit reports them */
    }
    for (int i = 0; i < RT_TENSORS; i++) {
        es_tensor_ref t;
        snprintf(name, sizeof name, "layer%d.weight", i);
        es__tensor_ref_set(&t, name, ES_DT_F32, rt_data[i], 2, (uint64_t)RT_ROWS, (uint64_t)RT_DIM);
        es__fwriter_tensor(w, &t);
    }
    rc = es__fwriter_commit(w, &err);
    if (rc) return rc;
    es_file *f;
    rc = es__file_open(&f, path, 0, &err);
    if (rc) return rc;
    if (es__file_n_meta(f) != RT_META || es__file_n_tensors(f) != RT_TENSORS) rc = ES_EFORMAT;
    const char *v = es__file_meta(f, "key7");
    if (!v || strcmp(v, "value 7") != 0) rc = ES_EFORMAT;
    for (int i = 0; i < RT_TENSORS && !rc; i++) {
        snprintf(name, sizeof name, "layer%d.weight", i);
        const es_tensor_ref *t = es__file_tensor(f, name);
        if (!t || t->nbytes != sizeof rt_data[i] || memcmp(t->data, rt_data[i], t->nbytes) != 0) rc = ES_EFORMAT;
    }
    es__file_close(f);
    return rc;
}

static int count_tmp_files(const char *dir, const char *prefix) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strncmp(e->d_name, prefix, strlen(prefix)) == 0) n++;
    closedir(d);
    return n;
}

TEST(alloc_sweep_format_round_trip) {
    for (int i = 0; i < RT_TENSORS; i++)
        for (int j = 0; j < RT_ROWS * RT_DIM; j++) rt_data[i][j] = (float)(i * 100 + j) * 0.5f;
    char path[1024];
    snprintf(path, sizeof path, "%s", es_test_path("alloc_rt.es"));
    int points = es_test_alloc_sweep(format_round_trip, path, 10000);
    printf("    %d allocation failure points exercised\n", points);
    /* writer struct + 2 temp-path strings + arrays grown twice + index
     * growth + 40 strings + header buffer + reader handle: far more than 40. */
    CHECK_MSG(points >= 40, "only %d failure points", points);
    CHECK_EQ_INT(count_tmp_files(es_test_path(""), "alloc_rt.es.tmp."), 0);
    /* And it really works when nothing fails (in this process). */
    CHECK_EQ_INT(format_round_trip(path), ES_OK);
}
