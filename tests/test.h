/*
 * test.h — the in-tree test runner.  Each tests/test_*.c file defines tests
 * with TEST(name) { ... }; they register themselves before main runs.
 * Checks print the values they compared.  The runner ends with the line
 * "N passed, N failed" (and ", N skipped").
 *
 *   build/test_runner               all quick tests
 *   build/test_runner --full        also the slow tier (TEST_SLOW)
 *   build/test_runner SUB [SUB..]   only tests whose name or file holds one of them
 *
 * Tests read data relative to the repository root (the runner chdirs there
 * when started from build/) and write scratch files under $ES_TEST_TMP
 * (default build/tmp).
 */
#ifndef ES_TEST_H
#define ES_TEST_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef void (*es_test_fn)(void);
void es_test_register(const char *name, es_test_fn fn, int slow, const char *file);
void es_test_fail(const char *file, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void es_test_skip(const char *why);
/* Scratch path: returns a path under the test tmp dir (static buffer per call slot). */
const char *es_test_path(const char *name);
/* 1 if --full was given. */
int es_test_full(void);

#define ES__TEST(name, slow)                                                        \
    static void test_##name(void);                                                  \
    __attribute__((constructor)) static void register_##name(void) {                \
        es_test_register(#name, test_##name, slow, __FILE__);                       \
    }                                                                               \
    static void test_##name(void)

#define TEST(name) ES__TEST(name, 0)
#define TEST_SLOW(name) ES__TEST(name, 1)

/* Each CHECK returns from the test on failure. */
#define CHECK(cond)                                                                 \
    do {                                                                            \
        if (!(cond)) {                                                              \
            es_test_fail(__FILE__, __LINE__, "CHECK(%s)", #cond);                  \
            return;                                                                 \
        }                                                                           \
    } while (0)
#define CHECK_MSG(cond, ...)                                                        \
    do {                                                                            \
        if (!(cond)) {                                                              \
            es_test_fail(__FILE__, __LINE__, __VA_ARGS__);                         \
            return;                                                                 \
        }                                                                           \
    } while (0)
#define CHECK_EQ_INT(a, b)                                                          \
    do {                                                                            \
        long long va_ = (long long)(a), vb_ = (long long)(b);                       \
        if (va_ != vb_) {                                                           \
            es_test_fail(__FILE__, __LINE__, "%s == %s: %lld != %lld", #a, #b, va_, vb_); \
            return;                                                                 \
        }                                                                           \
    } while (0)
#define CHECK_NEAR(a, b, tol)                                                       \
    do {                                                                            \
        double va_ = (double)(a), vb_ = (double)(b);                                \
        if (!(fabs(va_ - vb_) <= (tol))) {                                          \
            es_test_fail(__FILE__, __LINE__, "%s ~ %s: %.9g vs %.9g (tol %g)", #a, #b, va_, vb_, (double)(tol)); \
            return;                                                                 \
        }                                                                           \
    } while (0)
#define CHECK_STR_HAS(s, sub)                                                       \
    do {                                                                            \
        const char *vs_ = (s);                                                      \
        if (!vs_ || !strstr(vs_, (sub))) {                                          \
            es_test_fail(__FILE__, __LINE__, "\"%s\" contains \"%s\"", vs_ ? vs_ : "(null)", (sub)); \
            return;                                                                 \
        }                                                                           \
    } while (0)

/* Relative-error gradient comparison used by every finite-difference check:
 * |a-b| <= atol + rtol * max(|a|,|b|). */
static inline int es_test_close(double a, double b, double atol, double rtol) {
    double m = fabs(a) > fabs(b) ? fabs(a) : fabs(b);
    return fabs(a - b) <= atol + rtol * m;
}

/* The CLI binary of this build flavour ($ES_BIN, set by `make test`). */
static inline const char *es_bin(void) {
    const char *b = getenv("ES_BIN");
    return b ? b : "build/embstore";
}

/* Run a shell command; returns its exit status (or -1).  Output goes to
 * the file named out (may be NULL to discard). */
int es_test_sh(const char *out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Read a whole small file into a malloc'd NUL-terminated string. */
char *es_test_slurp(const char *path);
/* The probabilities the library's batch path gives for `file` (a reader with
 * the model's parameters, es_model_predict_batch over batches of 64): a
 * malloc'd array of *n floats, NULL on failure. */
float *es_test_model_probs(const char *model, const char *file, size_t *n);
/* Command lines `embstore train DATA --model lr --max-rows 500 ARGS` that
 * must be refused: each exits non-zero and prints its msg. */
typedef struct {
    const char *args, *msg;
} es_test_refusal;
void es_test_train_refusals(const char *data, const es_test_refusal *refusals, size_t n);

/* Value of "key": in a JSON line (numbers only); NAN if absent or s is NULL. */
static inline double es_test_json_num(const char *s, const char *key) {
    char pat[128];
    snprintf(pat, sizeof pat, "\"%s\":", key);
    const char *p = s ? strstr(s, pat) : NULL;
    if (!p) return NAN;
    return strtod(p + strlen(pat), NULL);
}

/* Last line of a text (a command's JSON result); trailing newlines are cut. */
static inline const char *es_test_last_line(char *s) {
    size_t n = strlen(s);
    while (n && s[n - 1] == '\n') s[--n] = 0;
    char *p = strrchr(s, '\n');
    return p ? p + 1 : s;
}

#endif
