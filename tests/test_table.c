/*
 * test_table.c — the public embedding-table API (es_table_*, es_vocab_*),
 * used the way a program outside the library would: only embstore.h.
 * Real data (the bundled Criteo sample, read with the public reader), a
 * caller-owned training loop, the table file round trip, and the errors a
 * caller can meet.
 */
#include "embstore.h"
#include "alloc_sweep.h"
#include "test.h"

#define CRITEO "data/criteo_kaggle_train_first10k.tsv"
#define DIM 8
#define MAXB 64

/* The first `rows` rows of the sample into *b (cap = rows), and a
 * vocabulary of its first vocab_rows rows (when v is not NULL). */
static int read_rows(es_batch *b, int rows, es_vocab **v, int vocab_rows) {
    es_reader *r = NULL;
    es_err err = {0};
    int rc = es_reader_open(&r, CRITEO, NULL, &err);
    if (rc) {
        printf("    open: %s\n", err.msg);
        return rc;
    }
    const int F = es_reader_n_fields(r), D = es_reader_n_dense(r);
    if (v) {
        es_batch tmp;
        if ((rc = es_vocab_create(v, F)) != 0 || (rc = es_batch_alloc(&tmp, 500, D, F, 0)) != 0) goto out;
        for (int done = 0; done < vocab_rows && rc == 0;) {
            int n = es_reader_next(r, &tmp);
            if (n <= 0) {
                rc = n;
                break;
            }
            rc = es_vocab_add_batch(*v, &tmp);
            done += n;
        }
        es_batch_free(&tmp);
        if (rc) goto out;
        if ((rc = es_reader_rewind(r)) != 0) goto out;
    }
    if ((rc = es_batch_alloc(b, rows, D, F, 0)) != 0) goto out;
    int n = es_reader_next(r, b);
    rc = n == rows ? 0 : ES_EIO;
out:
    es_reader_free(r);
    return rc;
}

/* 0.5 * sum (out - target)^2, and dout = out - target. */
static double sq_loss(const float *out, const float *target, float *dout, size_t n) {
    double l = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)out[i] - target[i];
        if (dout) dout[i] = (float)d;
        l += 0.5 * d * d;
    }
    return l;
}

typedef struct {
    const char *method;
    const char *opts;
    double budget;   /* bytes, or 0 for full (exact size from the vocabulary) */
    int vocab;
} method_case;

static const method_case cases[] = {
    {"full", NULL, 0, 1},
    {"hash", NULL, 64 << 10, 0},
    {"unified", "chunks=2", 64 << 10, 0},
    {"qr", NULL, 64 << 10, 0},
    {"tt", NULL, 64 << 10, 0},
    {"robe", NULL, 64 << 10, 0},
};

/* What one_method allocates, owned by the caller so that a failed CHECK
 * (which returns at once) leaks nothing: the caller frees it all. */
typedef struct {
    float *out, *out2, *dout, *target;
    es_table *t, *u, *w;
} method_run;

static void method_run_free(method_run *m) {
    es_table_free(m->t);
    es_table_free(m->u);
    es_table_free(m->w);
    free(m->out);
    free(m->out2);
    free(m->dout);
    free(m->target);
    memset(m, 0, sizeof *m);
}

/* Create, look up, train a few steps, save, load, compare bits. */
static void one_method(const method_case *c, const es_batch *b, const es_vocab *v, method_run *m) {
    const int F = b->n_fields, n = b->n;
    const size_t cnt = (size_t)n * (size_t)F * DIM;
    float *out = m->out = malloc(cnt * sizeof(float)), *out2 = m->out2 = malloc(cnt * sizeof(float)),
          *dout = m->dout = malloc(cnt * sizeof(float)), *target = m->target = malloc(cnt * sizeof(float));
    es_err err = {0};
    CHECK(out && out2 && dout && target);
    es_table_params p = es_table_params_default();
    p.method = c->method;
    p.n_fields = F;
    p.dim = DIM;
    p.max_batch = MAXB;
    p.budget = c->budget;
    p.opts = c->opts;
    p.seed = 11;
    p.lr = 0.05f;
    int rc = es_table_create(&m->t, &p, c->vocab ? v : NULL, &err);
    CHECK_MSG(rc == 0, "%s: create: %s (%d)", c->method, err.msg, rc);
    es_table *t = m->t;
    /* sizes */
    CHECK_MSG(!strcmp(es_table_method(t), c->method), "method %s", es_table_method(t));
    CHECK_EQ_INT(es_table_dim(t), DIM);
    CHECK_EQ_INT(es_table_n_fields(t), F);
    CHECK_EQ_INT(es_table_max_batch(t), MAXB);
    CHECK_MSG(es_table_bytes(t) == es_table_param_bytes(t) + (es_table_bytes(t) - es_table_param_bytes(t)) &&
                  es_table_param_bytes(t) > 0 && es_table_param_bytes(t) <= es_table_bytes(t),
              "%s: bytes %zu, param bytes %zu", c->method, es_table_bytes(t), es_table_param_bytes(t));
    if (c->budget > 1)
        CHECK_MSG((double)es_table_bytes(t) <= c->budget, "%s: %zu bytes over the %.0f budget", c->method, es_table_bytes(t),
                  c->budget);
    CHECK_EQ_INT(es_table_rows(t), es_table_param_bytes(t) / (4 * DIM));
    if (!strcmp(c->method, "full")) {
        uint64_t want = 0;
        for (int f = 0; f < F; f++) want += es_vocab_distinct(v, f) + 1;
        CHECK_EQ_INT(es_table_rows(t), want);
    }
    CHECK_MSG(es_table_state_bytes(t) > 0, "%s: rowwise adagrad has state", c->method);
    printf("    %-8s bytes %zu (params %zu, state %zu), rows %llu, meta %.80s\n", c->method, es_table_bytes(t),
           es_table_param_bytes(t), es_table_state_bytes(t), (unsigned long long)es_table_rows(t), es_table_meta(t));

    /* a target the table has to move towards */
    for (size_t i = 0; i < cnt; i++) target[i] = (float)((int)(i * 2654435761u % 201) - 100) * 0.001f;
    CHECK_MSG(es_table_lookup(t, b, 0, n, out) == 0, "lookup: %s", es_table_errmsg(t));
    const double loss0 = sq_loss(out, target, dout, cnt);
    CHECK_MSG(es_table_backward(t, b, dout) == 0, "backward: %s", es_table_errmsg(t));
    CHECK(es_table_lookup(t, b, 0, n, out2) == 0);
    /* first-order: the outputs moved against the gradient */
    double dot = 0;
    for (size_t i = 0; i < cnt; i++) dot += (double)(out2[i] - out[i]) * dout[i];
    CHECK_MSG(dot < 0, "%s: <change, gradient> = %g, expected < 0", c->method, dot);
    double loss = loss0;
    for (int step = 0; step < 5; step++) {
        CHECK(es_table_lookup(t, b, 0, n, out) == 0);
        loss = sq_loss(out, target, dout, cnt);
        CHECK(es_table_backward(t, b, dout) == 0);
    }
    CHECK(es_table_lookup(t, b, 0, n, out) == 0);
    loss = sq_loss(out, target, NULL, cnt);
    printf("    %-8s loss %.6g -> %.6g after 6 steps (<change, grad> %.3g)\n", c->method, loss0, loss, dot);
    CHECK_MSG(loss < loss0, "%s: loss did not decrease: %g -> %g", c->method, loss0, loss);

    /* save with state and without; load both ways; identical bits */
    const char *ps = es_test_path("table_state.es"), *pl = es_test_path("table_light.es");
    CHECK_MSG(es_table_save(t, ps, ES_TABLE_SAVE_STATE) == 0, "save: %s", es_table_errmsg(t));
    CHECK_MSG(es_table_save(t, pl, 0) == 0, "save: %s", es_table_errmsg(t));
    CHECK_MSG(es_table_load(&m->u, ps, 0, &err) == 0, "%s: load: %s", c->method, err.msg);
    CHECK_MSG(es_table_load(&m->w, pl, ES_LOAD_MAP | ES_LOAD_NO_VERIFY, &err) == 0, "%s: load (map): %s", c->method, err.msg);
    es_table *u = m->u, *w = m->w;
    CHECK_MSG(!strcmp(es_table_method(u), c->method) && !strcmp(es_table_meta(u), es_table_meta(t)), "meta %s vs %s",
              es_table_meta(u), es_table_meta(t));
    CHECK_EQ_INT(es_table_bytes(u), es_table_bytes(t));
    CHECK_EQ_INT(es_table_state_bytes(u), es_table_state_bytes(t));
    CHECK(es_table_lookup(u, b, 0, n, out2) == 0);
    CHECK_MSG(memcmp(out, out2, cnt * sizeof(float)) == 0, "%s: loaded table looks up other bits", c->method);
    CHECK(es_table_lookup(w, b, 0, n, out2) == 0);
    CHECK_MSG(memcmp(out, out2, cnt * sizeof(float)) == 0, "%s: mapped table looks up other bits", c->method);
    /* saving a mapped table over its own file replaces the file by rename:
     * the table keeps its pages, the new file reads back the same */
    CHECK_MSG(es_table_save(w, pl, 0) == 0, "save over the mapped file: %s", es_table_errmsg(w));
    CHECK(es_table_lookup(w, b, 0, n, out2) == 0);
    CHECK_MSG(memcmp(out, out2, cnt * sizeof(float)) == 0, "%s: mapped table changed by saving over its file", c->method);
    es_table_free(m->w);
    w = m->w = NULL;
    CHECK_MSG(es_table_load(&m->w, pl, ES_LOAD_MAP, &err) == 0, "%s: reload: %s", c->method, err.msg);
    w = m->w;
    CHECK(es_table_lookup(w, b, 0, n, out2) == 0);
    CHECK_MSG(memcmp(out, out2, cnt * sizeof(float)) == 0, "%s: re-saved file looks up other bits", c->method);
    /* a sub-range gives the same rows */
    CHECK(es_table_lookup(u, b, 3, 10, out2) == 0);
    CHECK_MSG(memcmp(out + (size_t)3 * F * DIM, out2, (size_t)7 * F * DIM * sizeof(float)) == 0, "%s: sub-range differs",
              c->method);
    /* with the optimizer state saved, training continues bit for bit */
    sq_loss(out, target, dout, cnt);
    CHECK(es_table_backward(t, b, dout) == 0 && es_table_backward(u, b, dout) == 0);
    CHECK(es_table_lookup(t, b, 0, n, out) == 0 && es_table_lookup(u, b, 0, n, out2) == 0);
    CHECK_MSG(memcmp(out, out2, cnt * sizeof(float)) == 0, "%s: training after a load with state diverged", c->method);
}

TEST(table_methods_train_save_load) {
    es_batch b;
    es_vocab *v = NULL;
    int rc = read_rows(&b, MAXB, &v, 2000);
    CHECK_MSG(rc == 0, "reading %s: %d", CRITEO, rc);
    CHECK(es_vocab_n_fields(v) == b.n_fields && es_vocab_bytes(v) > 0 && es_vocab_distinct(v, 0) > 0);
    CHECK_EQ_INT(es_vocab_distinct(v, -1), 0);
    CHECK_MSG(!strcmp(es_vocab_errmsg(v), ""), "vocab message '%s'", es_vocab_errmsg(v));
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        method_run m = {0};
        one_method(&cases[i], &b, v, &m);
        method_run_free(&m);
    }
    es_batch_free(&b);
    es_vocab_free(v);
}

/* Every registered method makes a table that survives a file round trip. */
TEST(table_every_method_roundtrips) {
    es_batch b;
    es_vocab *v = NULL;
    CHECK(read_rows(&b, 32, &v, 1000) == 0);
    const char *names[64];
    int nm = es_storage_methods(names, NULL, 64), bad = 0;
    float *o1 = malloc((size_t)32 * b.n_fields * DIM * sizeof(float)), *o2 = malloc((size_t)32 * b.n_fields * DIM * sizeof(float));
    for (int i = 0; i < nm; i++) {
        es_table_params p = es_table_params_default();
        p.method = names[i];
        p.n_fields = b.n_fields;
        p.dim = DIM;
        p.max_batch = 32;
        p.budget = strcmp(names[i], "full") ? 0.25 : 0;
        es_table *t = NULL, *u = NULL;
        es_err err = {0};
        int rc = es_table_create(&t, &p, v, &err);
        if (rc == 0) rc = es_table_save(t, es_test_path("table_rt.es"), ES_TABLE_SAVE_STATE);
        if (rc == 0) rc = es_table_load(&u, es_test_path("table_rt.es"), 0, &err);
        if (rc == 0) rc = es_table_lookup(t, &b, 0, b.n, o1) | es_table_lookup(u, &b, 0, b.n, o2);
        if (rc != 0 || memcmp(o1, o2, (size_t)32 * b.n_fields * DIM * sizeof(float)) != 0) {
            printf("    FAILED %s: rc %d, %s %s\n", names[i], rc, err.msg, t ? es_table_errmsg(t) : "");
            bad++;
        } else {
            printf("    %-9s %8zu bytes, rows %llu\n", names[i], es_table_bytes(t), (unsigned long long)es_table_rows(t));
        }
        es_table_free(t);
        es_table_free(u);
    }
    free(o1);
    free(o2);
    es_batch_free(&b);
    es_vocab_free(v);
    CHECK_EQ_INT(bad, 0);
    CHECK(nm >= 6);
}

TEST(table_bad_params) {
    es_table *t = (es_table *)(uintptr_t)1;
    es_err err = {0};
    es_table_params p = es_table_params_default();
    p.n_fields = 3;
    p.budget = 4096;
    p.dim = 0;
    CHECK_EQ_INT(es_table_create(&t, &p, NULL, &err), ES_EINVAL);
    CHECK(t == NULL);
    CHECK_STR_HAS(err.msg, "dim");
    p.dim = 8;
    p.method = "no-such-method";
    CHECK_EQ_INT(es_table_create(&t, &p, NULL, &err), ES_EINVAL);
    CHECK_STR_HAS(err.msg, "unknown method 'no-such-method'");
    CHECK_STR_HAS(err.msg, "unified"); /* lists the known ones */
    p.method = "hash";
    p.optim = "adam";
    CHECK_EQ_INT(es_table_create(&t, &p, NULL, &err), ES_EINVAL);
    CHECK_STR_HAS(err.msg, "optimizer 'adam'");
    p.optim = "sgd";
    p.n_fields = 0;
    CHECK_EQ_INT(es_table_create(&t, &p, NULL, &err), ES_EINVAL);
    CHECK_STR_HAS(err.msg, "n_fields");
    p.n_fields = 3;
    p.budget = 0.5; /* a fraction needs a vocabulary */
    CHECK_EQ_INT(es_table_create(&t, &p, NULL, &err), ES_EINVAL);
    CHECK_STR_HAS(err.msg, "vocabulary");
    p.budget = 4096;
    p.method = "unified";
    p.opts = "chunks=3"; /* 8 is not divisible by 3 */
    CHECK_EQ_INT(es_table_create(&t, &p, NULL, &err), ES_EINVAL);
    CHECK_STR_HAS(err.msg, "chunks");
    CHECK_EQ_INT(es_table_create(&t, NULL, NULL, &err), ES_EINVAL);
    es_table_free(NULL); /* no-op */
    es_vocab_free(NULL);
    CHECK_STR_HAS(es_table_errmsg(NULL), "no table");
    es_vocab *v = NULL;
    CHECK_EQ_INT(es_vocab_create(&v, 0), ES_EINVAL);
    CHECK(v == NULL);

    /* a good table (sgd: no state) refuses bad calls with a message */
    p.opts = NULL;
    p.method = "hash";
    p.max_batch = 4;
    CHECK_MSG(es_table_create(&t, &p, NULL, &err) == 0, "create: %s", err.msg);
    CHECK_EQ_INT(es_table_state_bytes(t), 0);
    es_batch b;
    CHECK(es_batch_alloc(&b, 8, 0, 2, 0) == 0); /* 2 fields, the table has 3 */
    b.n = 1;
    float out[3 * 8 * 8];
    CHECK_EQ_INT(es_table_lookup(t, &b, 0, 1, out), ES_EINVAL);
    CHECK_STR_HAS(es_table_errmsg(t), "fields");
    es_batch_free(&b);
    CHECK(es_batch_alloc(&b, 8, 0, 3, 0) == 0);
    for (int i = 0; i <= 3 * 8; i++) b.off[i] = (uint32_t)i;
    for (int i = 0; i < 3 * 8; i++) {
        b.val[i] = (uint64_t)i * 7919u;
        b.wt[i] = 1;
    }
    b.n = 8;
    CHECK_EQ_INT(es_table_lookup(t, &b, 2, 9, out), ES_EINVAL);
    CHECK_EQ_INT(es_table_lookup(t, &b, 0, 8, NULL), ES_EINVAL);
    CHECK_EQ_INT(es_table_lookup(t, &b, 0, 8, out), 0); /* lookups take any range */
    CHECK_EQ_INT(es_table_backward(t, &b, out), ES_EINVAL); /* 8 rows > max_batch 4 */
    CHECK_STR_HAS(es_table_errmsg(t), "max_batch");
    b.n = 4;
    CHECK_EQ_INT(es_table_backward(t, &b, out), 0);
    CHECK_EQ_INT(es_table_save(t, es_test_path("table_flags.es"), 8u), ES_EINVAL);
    CHECK_EQ_INT(es_table_save(t, "/nonexistent-dir/x.es", 0), ES_EIO);
    CHECK_STR_HAS(es_table_errmsg(t), "/nonexistent-dir/x.es");
    es_batch_free(&b);
    es_table_free(t);
}

TEST(table_load_rejects_other_files) {
    es_table *t = NULL;
    es_err err = {0};
    /* a model file is not a table */
    const char *mp = es_test_path("table_not_a_model.es");
    es_train_params p = es_train_params_basic();
    p.train_path = CRITEO;
    p.valid_frac = 0;
    p.max_rows = 300;
    p.model = "lr";
    p.storage = "hash";
    p.budget = 8192;
    p.dim = 4;
    p.threads = 1;
    p.out_path = mp;
    es_train_result res;
    CHECK_MSG(es_train(&p, &res, &err) == 0, "train: %s", err.msg);
    CHECK_EQ_INT(es_table_load(&t, mp, 0, &err), ES_EFORMAT);
    CHECK(t == NULL);
    CHECK_STR_HAS(err.msg, "not a table file");
    CHECK_STR_HAS(err.msg, "es_model_load");
    printf("    %s\n", err.msg);
    /* not an embstore file at all; missing; bad flags */
    const char *junk = es_test_path("table_junk.es");
    FILE *f = fopen(junk, "wb");
    CHECK(f);
    fputs("this is not a table\n", f);
    fclose(f);
    CHECK_EQ_INT(es_table_load(&t, junk, 0, &err), ES_EFORMAT);
    int rc = es_table_load(&t, es_test_path("table_missing.es"), 0, &err);
    CHECK_MSG(rc == ES_ENOTFOUND || rc == ES_EIO, "missing file: %d %s", rc, err.msg);
    CHECK_EQ_INT(es_table_load(&t, junk, 64u, &err), ES_EINVAL);
    CHECK(t == NULL);
}

/* ---- every failed allocation is clean ------------------------------------ */
typedef struct {
    const char *method;
    const es_vocab *v;
    const es_batch *b;
} sweep_ctx;

/* The whole life of a table: create, lookup, backward, save, load. */
static int table_life(void *arg) {
    const sweep_ctx *c = arg;
    es_table_params p = es_table_params_default();
    p.method = c->method;
    p.n_fields = c->b->n_fields;
    p.dim = 4;
    p.max_batch = c->b->n;
    p.budget = strcmp(c->method, "full") ? 16384 : 0;
    es_table *t = NULL, *u = NULL;
    es_err err = {0};
    size_t cnt = (size_t)c->b->n * (size_t)c->b->n_fields * 4;
    float *out = malloc(cnt * sizeof(float));
    const char *path = es_test_path("table_sweep.es");
    int rc = out ? 0 : ES_ENOMEM;
    if (!rc) rc = es_table_create(&t, &p, c->v, &err);
    if (!rc) rc = es_table_lookup(t, c->b, 0, c->b->n, out);
    if (!rc) rc = es_table_backward(t, c->b, out);
    if (!rc) rc = es_table_save(t, path, ES_TABLE_SAVE_STATE);
    if (!rc) rc = es_table_load(&u, path, 0, &err);
    if (!rc) rc = es_table_lookup(u, c->b, 0, c->b->n, out);
    es_table_free(t);
    es_table_free(u);
    free(out);
    return rc;
}

TEST(table_allocation_failures_are_clean) {
    es_batch b;
    es_vocab *v = NULL;
    CHECK(read_rows(&b, 16, &v, 200) == 0);
    const char *methods[] = {"full", "hash", "unified"};
    for (int i = 0; i < 3; i++) {
        sweep_ctx c = {methods[i], v, &b};
        int n = es_test_alloc_sweep(table_life, &c, 2000);
        printf("    %-8s %d failure points\n", methods[i], n);
        if (n < 0) es_test_fail(__FILE__, __LINE__, "%s: a failed allocation was not handled cleanly", methods[i]);
    }
    es_batch_free(&b);
    es_vocab_free(v);
}
