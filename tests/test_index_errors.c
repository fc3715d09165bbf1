/*
 * test_index_errors.c — es_index_search is thread safe including its error
 * message: two threads search one index at once, one with a bad query
 * (NaN) and one with good queries; each sees only its own outcome through
 * es_index_errmsg, and es_index_search_ex reports per call.  Also run under
 * SAN=1 (ASan) to catch a shared buffer written by two threads.
 */
#include "test.h"

#include "embstore.h"

#include <pthread.h>
#include <stdatomic.h>

#define DIM 8
#define N 300
#define ROUNDS 400

static es_index *make_index(es_index_kind kind) {
    es_index_params p = es_index_params_default();
    p.kind = kind;
    p.dim = DIM;
    p.threads = 1;
    es_index *ix = NULL;
    es_err err = {0};
    if (es_index_create(&ix, &p, &err) != 0) return NULL;
    static float x[N * DIM];
    uint64_t s = 12345;
    for (int i = 0; i < N * DIM; i++) {
        s = s * 6364136223846793005ULL + 1442695040888963407ULL;
        x[i] = (float)((s >> 40) & 0xffff) / 65536.0f - 0.5f;
    }
    if (es_index_add(ix, N, x) != 0) {
        es_index_free(ix);
        return NULL;
    }
    return ix;
}

typedef struct {
    es_index *ix;
    int bad;              /* 1: every query has a NaN */
    int use_ex;           /* search with es_index_search_ex */
    atomic_int *go;       /* start together */
    int wrong;            /* rounds with an unexpected outcome */
    char first_wrong[600];
} worker;

static void *run(void *arg) {
    worker *w = arg;
    float q[2 * DIM];
    for (int i = 0; i < 2 * DIM; i++) q[i] = 0.1f * (float)(i % DIM);
    if (w->bad) q[DIM + 3] = NAN;
    int64_t ids[2 * 5];
    float dist[2 * 5];
    while (!atomic_load(w->go)) {
    }
    for (int r = 0; r < ROUNDS; r++) {
        es_err err = {0};
        int rc = w->use_ex ? es_index_search_ex(w->ix, 2, q, 5, NULL, ids, dist, &err) : es_index_search(w->ix, 2, q, 5, NULL, ids, dist);
        const char *msg = w->use_ex ? err.msg : es_index_errmsg(w->ix);
        int ok = w->bad ? (rc == ES_EINVAL && strstr(msg, "queries") && strstr(msg, "NaN")) : (rc == 0 && msg[0] == 0 && ids[0] >= 0);
        if (!ok && w->wrong++ == 0)
            snprintf(w->first_wrong, sizeof w->first_wrong, "round %d: rc %d, message '%s'", r, rc, msg);
    }
    return NULL;
}

static int race(es_index *ix, int use_ex, char *why, size_t cap) {
    atomic_int go = 0;
    worker w[4] = {{ix, 1, use_ex, &go, 0, ""}, {ix, 0, use_ex, &go, 0, ""}, {ix, 1, use_ex, &go, 0, ""}, {ix, 0, use_ex, &go, 0, ""}};
    pthread_t t[4];
    for (int i = 0; i < 4; i++)
        if (pthread_create(&t[i], NULL, run, &w[i]) != 0) return snprintf(why, cap, "pthread_create failed"), -1;
    atomic_store(&go, 1);
    for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
    int wrong = 0;
    for (int i = 0; i < 4; i++) {
        printf("    %s thread %d (%s): %d of %d rounds wrong%s%s\n", use_ex ? "search_ex" : "search", i, w[i].bad ? "NaN query" : "good query",
               w[i].wrong, ROUNDS, w[i].wrong ? ": " : "", w[i].first_wrong);
        if (w[i].wrong && !wrong) snprintf(why, cap, "thread %d: %s", i, w[i].first_wrong);
        wrong += w[i].wrong;
    }
    return wrong;
}

TEST(index_search_errors_are_per_thread) {
    static const es_index_kind kinds[] = {ES_INDEX_FLAT, ES_INDEX_HNSW};
    for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++) {
        es_index *ix = make_index(kinds[k]);
        CHECK(ix);
        char why[700] = "";
        int wrong = race(ix, 0, why, sizeof why);
        if (wrong == 0) wrong = race(ix, 1, why, sizeof why);
        es_index_free(ix);
        CHECK_MSG(wrong == 0, "%s: %s", es_index_kind_name(kinds[k]), why);
    }
}

TEST(index_errmsg_orders_search_and_other_errors) {
    es_index *ix = make_index(ES_INDEX_FLAT);
    CHECK(ix);
    CHECK_STR_HAS(es_index_errmsg(ix), ""); /* nothing failed yet */
    CHECK(es_index_errmsg(ix)[0] == 0);
    float q[DIM] = {0};
    int64_t ids[3];
    float dist[3];
    /* search_ex: the message goes to err only */
    es_err err = {0};
    CHECK_EQ_INT(es_index_search_ex(ix, 1, q, 0, NULL, ids, dist, &err), ES_EINVAL);
    printf("    search_ex k=0: %s\n", err.msg);
    CHECK_STR_HAS(err.msg, "k must be in [1,");
    CHECK(es_index_errmsg(ix)[0] == 0);
    CHECK_EQ_INT(es_index_search_ex(ix, 1, q, 0, NULL, ids, dist, NULL), ES_EINVAL); /* err may be NULL */
    /* search: the calling thread's message */
    CHECK_EQ_INT(es_index_search(ix, 1, q, 0, NULL, ids, dist), ES_EINVAL);
    CHECK_STR_HAS(es_index_errmsg(ix), "k must be in [1,");
    /* a later failure of another call wins... */
    CHECK_EQ_INT(es_index_set(ix, "no_such_knob", 1), ES_EINVAL);
    CHECK_STR_HAS(es_index_errmsg(ix), "unknown parameter 'no_such_knob'");
    /* ...and a later search failure wins again */
    es_filter f = {.attr = 3, .n_values = 1, .values = (const int32_t[]){1}};
    CHECK_EQ_INT(es_index_search(ix, 1, q, 3, &f, ids, dist), ES_EINVAL);
    CHECK_STR_HAS(es_index_errmsg(ix), "filter on attribute 3");
    /* a successful search changes nothing */
    CHECK_EQ_INT(es_index_search(ix, 1, q, 3, NULL, ids, dist), 0);
    CHECK_STR_HAS(es_index_errmsg(ix), "filter on attribute 3");
    es_index_free(ix);
    /* a new index (perhaps at the same address) starts with no message */
    ix = make_index(ES_INDEX_FLAT);
    CHECK(ix);
    CHECK_MSG(es_index_errmsg(ix)[0] == 0, "new index says '%s'", es_index_errmsg(ix));
    es_index_free(ix);
}
