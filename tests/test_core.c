/*
 * test_core.c — core helpers: SIMD kernels against their reference twins
 * over awkward sizes, rng determinism, hashing, option parsing, atomic files.
 */
#include "test.h"

#include "core/core.h"
#include "core/simd.h"

#include <unistd.h>

static const size_t awkward[] = {0, 1, 3, 7, 8, 15, 16, 17, 31, 33, 64, 100, 127, 129};

TEST(simd_dot_axpy_l2_match_ref) {
    es_rng r;
    es__rng_seed(&r, 7);
    float a[160], b[160], y1[160], y2[160];
    printf("    simd level: %s\n", es__simd_level());
    for (size_t k = 0; k < ES_ARRAY_LEN(awkward); k++) {
        size_t n = awkward[k];
        for (size_t i = 0; i < 160; i++) {
            a[i] = es__rng_normal(&r);
            b[i] = es__rng_normal(&r);
            y1[i] = y2[i] = es__rng_normal(&r);
        }
        float d = es__dot(a, b, n), dr = es__dot_ref(a, b, n);
        CHECK_MSG(es_test_close(d, dr, 1e-5, 1e-5), "dot n=%zu: %g vs ref %g", n, d, dr);
        float l = es__l2sq(a, b, n), lr = es__l2sq_ref(a, b, n);
        CHECK_MSG(es_test_close(l, lr, 1e-5, 1e-5), "l2sq n=%zu: %g vs ref %g", n, l, lr);
        es__axpy(y1, 0.37f, a, n);
        es__axpy_ref(y2, 0.37f, a, n);
        for (size_t i = 0; i < 160; i++)
            CHECK_MSG(es_test_close(y1[i], y2[i], 1e-6, 1e-6), "axpy n=%zu i=%zu: %g vs %g", n, i, y1[i], y2[i]);
    }
}

/* The step's gradient scatter: the same bits as es__axpy called value by
 * value at the active level (ES_SIMD), for widths 1 (LR), 8 (FM), 16, 33
 * and 157 (FFM), pairs of 0 to 3 values, weights other than 1 (1 would
 * hide an unfused sum) and a slot range that skips some rows; the
 * reference twin within a tolerance. */
TEST(simd_scatter_axpy_matches_axpy) {
    static const size_t dims[] = {1, 8, 16, 33, 157};
    enum { PN = 40, U = 12 };
    es_rng r;
    es__rng_seed(&r, 11);
    uint32_t off[PN + 1], slot[3 * PN];
    float w[3 * PN];
    off[0] = 0;
    for (int P = 0; P < PN; P++) off[P + 1] = off[P] + (uint32_t)(es__rng_u64(&r) % 4);
    for (uint32_t v = 0; v < off[PN]; v++) {
        slot[v] = (uint32_t)(es__rng_u64(&r) % U);
        w[v] = 0.25f + es__rng_normal(&r);
    }
    for (size_t k = 0; k < ES_ARRAY_LEN(dims); k++) {
        const size_t dim = dims[k];
        float *x = malloc(PN * dim * sizeof *x), *y1 = calloc(U * dim, sizeof *y1), *y2 = calloc(U * dim, sizeof *y2),
              *y3 = calloc(U * dim, sizeof *y3);
        CHECK(x && y1 && y2 && y3);
        for (size_t i = 0; i < PN * dim; i++) x[i] = es__rng_normal(&r);
        const size_t u0 = 2, u1 = 9;
        es__scatter_axpy(y1, dim, slot, w, x, off, PN, u0, u1);
        es__scatter_axpy_ref(y3, dim, slot, w, x, off, PN, u0, u1);
        for (int P = 0; P < PN; P++)
            for (uint32_t v = off[P]; v < off[P + 1]; v++)
                if (slot[v] >= u0 && slot[v] < u1) es__axpy(y2 + slot[v] * dim, w[v], x + (size_t)P * dim, dim);
        CHECK_MSG(memcmp(y1, y2, U * dim * sizeof *y1) == 0, "dim %zu: scatter differs from es__axpy value by value", dim);
        for (size_t i = 0; i < U * dim; i++) {
            CHECK_MSG(es_test_close(y1[i], y3[i], 1e-5, 1e-5), "dim %zu i=%zu: %g vs ref %g", dim, i, y1[i], y3[i]);
            if (i / dim < u0 || i / dim >= u1) CHECK_MSG(y1[i] == 0.0f, "dim %zu: row %zu outside [u0, u1) written", dim, i / dim);
        }
        free(x);
        free(y1);
        free(y2);
        free(y3);
    }
}

TEST(rng_is_deterministic) {
    es_rng a, b;
    es__rng_seed(&a, 42);
    es__rng_seed(&b, 42);
    for (int i = 0; i < 1000; i++) CHECK(es__rng_u64(&a) == es__rng_u64(&b));
    es__rng_seed(&b, 43);
    CHECK(es__rng_u64(&a) != es__rng_u64(&b));
    double s = 0;
    for (int i = 0; i < 100000; i++) s += es__rng_uniform(&a);
    CHECK_NEAR(s / 100000, 0.5, 0.01);
}

TEST(keys_and_hashes) {
    CHECK(es_key("", 0) == ES_KEY_MISSING);
    CHECK(es_key("abc", 3) == es_key("abc", 3));
    CHECK(es_key("abc", 3) != es_key("abd", 3));
    CHECK(es__hash_u64(1, 1) != es__hash_u64(1, 2));
    /* es__range stays in range and spreads */
    uint64_t hist[10] = {0};
    for (uint64_t i = 0; i < 100000; i++) {
        uint64_t v = es__range(es__hash_u64(i, 9), 10);
        CHECK(v < 10);
        hist[v]++;
    }
    for (int i = 0; i < 10; i++) CHECK_MSG(hist[i] > 9500 && hist[i] < 10500, "bucket %d: %llu", i, (unsigned long long)hist[i]);
}

TEST(option_strings_and_numbers) {
    char *v = es__opt_get("a=1,bb=two,c=", "bb");
    CHECK(v && strcmp(v, "two") == 0);
    es__free(v);
    v = es__opt_get("a=1,bb=two,c=", "c");
    CHECK(v && v[0] == 0);
    es__free(v);
    CHECK(es__opt_get("a=1", "b") == NULL);
    double d;
    long long l;
    CHECK(es__parse_double("1.5e3", 5, &d) && d == 1500);
    CHECK(!es__parse_double("1.5x", 4, &d));
    CHECK(es__parse_long("-42", 3, &l) && l == -42);
    CHECK(!es__parse_long("4 2", 3, &l));
    CHECK_NEAR(es_transform_num(0), 0, 0);
    CHECK_NEAR(es_transform_num(-3), -log1p(3.0), 1e-6);
    CHECK_NEAR(es_transform_num(1382), log1p(1382.0), 1e-4);
}

TEST(atomic_file_commit_and_abort) {
    const char *p = es_test_path("atomic.txt");
    remove(p);
    es_afile a;
    es_err err = {0};
    CHECK(es__afile_open(&a, p, &err) == 0);
    fputs("hello", a.fp);
    CHECK(access(p, F_OK) != 0); /* nothing at the destination before commit */
    CHECK(es__afile_commit(&a, &err) == 0);
    char *s = es_test_slurp(p);
    CHECK(s && strcmp(s, "hello") == 0);
    free(s);
    CHECK(es__afile_open(&a, p, &err) == 0);
    fputs("partial", a.fp);
    es__afile_abort(&a);
    s = es_test_slurp(p);
    CHECK(s && strcmp(s, "hello") == 0); /* old content intact */
    free(s);
    CHECK(es__afile_open(&a, "/nonexistent-dir/x", &err) == ES_EIO);
    CHECK_STR_HAS(err.msg, "/nonexistent-dir/x");
}

TEST(alloc_failure_injection) {
    es__alloc_fail_at(2);
    void *a = es__malloc(10);
    void *b = es__malloc(10);
    es__alloc_fail_at(0);
    CHECK(a != NULL);
    CHECK(b == NULL);
    es__free(a);
}
