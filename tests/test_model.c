/*
 * test_model.c — dense layers, the four CTR models and the dense
 * optimizers:
 *   - every layer's forward against a naive formula and its backward against
 *     central finite differences (linear, ReLU, MLP, interaction, cross, FM,
 *     BCE), over awkward sizes;
 *   - the interaction kernel against its _ref twin;
 *   - every model's forward against a naive double-precision evaluation of
 *     the equations in docs/models.md, and its backward against finite
 *     differences w.r.t. every parameter and every embedding input;
 *   - SGD / Adagrad / Adam steps against hand computations, initialisation
 *     against the documented draw order, determinism, tensor coverage,
 *     argument validation, allocation failures, and a learning sanity run.
 */
#include "test.h"

#include "core/core.h"
#include "model/layers.h"
#include "model/net.h"

#ifdef _OPENMP
#include <omp.h>
#endif

/* ---- scratch memory freed at exit, so failing checks do not leak -------------- */

static void **arena;
static size_t arena_n, arena_cap;
static es_net **nets;
static size_t nets_n, nets_cap;

static void arena_release(void) {
    for (size_t i = 0; i < arena_n; i++) free(arena[i]);
    for (size_t i = 0; i < nets_n; i++) es__net_free(nets[i]);
    free(arena);
    free(nets);
    arena = NULL;
    nets = NULL;
    arena_n = arena_cap = nets_n = nets_cap = 0;
}

static void track(void ***list, size_t *n, size_t *cap, void *p) {
    static int registered;
    if (!registered) {
        atexit(arena_release);
        registered = 1;
    }
    if (*n == *cap) {
        size_t nc = *cap ? *cap * 2 : 64;
        void **nl = realloc(*list, nc * sizeof *nl);
        if (!nl) abort();
        *list = nl;
        *cap = nc;
    }
    (*list)[(*n)++] = p;
}

/* Zeroed floats; never NULL (an out-of-memory test machine aborts). */
static float *tf(size_t count) {
    float *p = calloc(count ? count : 1, sizeof(float));
    if (!p) abort();
    track(&arena, &arena_n, &arena_cap, p);
    return p;
}

static float *tf_rand(es_rng *r, size_t count, float a) {
    float *p = tf(count);
    es__rng_fill_uniform(r, p, count, a);
    return p;
}

static es_net *tnet(const es_net_params *p) {
    es_net *n = NULL;
    es_err err = {0};
    int rc = es__net_create(&n, p, &err);
    if (rc) {
        printf("    es__net_create: %s (%s)\n", err.msg, es_strerror(rc));
        return NULL;
    }
    track((void ***)&nets, &nets_n, &nets_cap, n);
    return n;
}

static double dotd(const float *a, const float *b, size_t n) {
    double s = 0.0;
    for (size_t i = 0; i < n; i++) s += (double)a[i] * b[i];
    return s;
}

/* ---- finite differences ----------------------------------------------------------
 * Central differences of a scalar loss (accumulated in double) w.r.t. each
 * element of x, compared with the analytic gradient g:
 *   |g - fd| <= FD_ATOL + FD_RTOL * max(|g|, |fd|).
 * Losses are random-weighted sums of the outputs, so gradients are O(1) and
 * the tolerances come to about half a percent (the float noise measured in
 * these checks stays below 2e-4).  Where a ReLU kink lies within eps of
 * the point the derivative does not exist: the one-sided differences then
 * disagree, and that element is skipped (and counted: more than a quarter
 * skipped fails the check; FD_DEBUG=1 in the environment prints how many
 * were skipped). */
#define FD_EPS 1e-3
#define FD_ATOL 5e-4
#define FD_RTOL 5e-3

typedef double (*loss_fn)(void *ctx);

static int fd_check(const char *what, float *x, const float *g, size_t count, loss_fn f, void *ctx) {
    double l0 = f(ctx);
    size_t skipped = 0, failed = 0;
    for (size_t i = 0; i < count; i++) {
        float old = x[i];
        x[i] = (float)(old + FD_EPS);
        double hp = (double)x[i] - old, lp = f(ctx);
        x[i] = (float)(old - FD_EPS);
        double hm = old - (double)x[i], lm = f(ctx);
        x[i] = old;
        double fwd = (lp - l0) / hp, bwd = (l0 - lm) / hm, fd = (lp - lm) / (hp + hm);
        if (!es_test_close(fwd, bwd, 2e-3, 2e-2)) {
            skipped++;
            continue;
        }
        if (!es_test_close(g[i], fd, FD_ATOL, FD_RTOL)) {
            if (failed < 5) printf("    %s[%zu]: analytic %.7g vs finite difference %.7g\n", what, i, g[i], fd);
            failed++;
        }
    }
    if (getenv("FD_DEBUG") && skipped) printf("    dbg %s: %zu of %zu skipped\n", what, skipped, count);
    if (skipped * 4 > count) {
        printf("    %s: %zu of %zu elements sit on ReLU kinks\n", what, skipped, count);
        failed++;
    }
    return (int)failed;
}

/* The checker itself must reject a wrong gradient, or every FD test below
 * would pass vacuously. */
typedef struct {
    float *x;
    int n;
} quad_ctx;
static double quad_loss(void *p) {
    quad_ctx *q = p;
    double s = 0;
    for (int i = 0; i < q->n; i++) s += 0.5 * (double)q->x[i] * q->x[i] * (i + 1);
    return s;
}
TEST(model_fd_checker_rejects_wrong_gradients) {
    float x[4] = {0.3f, -0.7f, 1.1f, 0.05f}, g[4];
    quad_ctx q = {x, 4};
    for (int i = 0; i < 4; i++) g[i] = x[i] * (i + 1);
    CHECK_EQ_INT(fd_check("quad", x, g, 4, quad_loss, &q), 0);
    g[2] *= 1.05f; /* 5% off */
    CHECK(fd_check("quad(wrong, expected to fail)", x, g, 4, quad_loss, &q) == 1);
}

/* ---- linear ------------------------------------------------------------------------- */

typedef struct {
    int n, I, O, relu;
    float *in, *W, *b, *out, *c;
} lin_ctx;

static double lin_loss(void *p) {
    lin_ctx *t = p;
    es__linear_forward(t->out, t->in, t->W, NULL, t->b, t->n, t->I, t->O, t->relu);
    return dotd(t->c, t->out, (size_t)t->n * t->O);
}

TEST(model_linear_forward_matches_naive_and_gradients) {
    static const int sizes[][3] = {{1, 1, 1}, {3, 5, 7}, {1, 17, 3}, {4, 3, 33}, {7, 15, 1}, {3, 0, 4}};
    es_rng r;
    es__rng_seed(&r, 11);
    for (size_t s = 0; s < ES_ARRAY_LEN(sizes); s++)
        for (int relu = 0; relu <= 1; relu++) {
            int n = sizes[s][0], I = sizes[s][1], O = sizes[s][2];
            lin_ctx t = {n, I, O, relu, tf_rand(&r, (size_t)n * I, 1), tf_rand(&r, (size_t)O * I, 1),
                         tf_rand(&r, O, 1), tf(n * O), tf_rand(&r, (size_t)n * O, 1)};
            lin_loss(&t);
            for (int i = 0; i < n; i++)
                for (int o = 0; o < O; o++) {
                    double z = t.b[o];
                    for (int j = 0; j < I; j++) z += (double)t.in[i * I + j] * t.W[o * I + j];
                    if (relu && z < 0) z = 0;
                    CHECK_MSG(es_test_close(t.out[i * O + o], z, 1e-5, 1e-5), "n=%d I=%d O=%d out[%d,%d] %g vs %g", n,
                              I, O, i, o, t.out[i * O + o], z);
                }
            /* backward: din overwritten (pre-filled with junk), dW/db accumulate */
            float *d = tf((size_t)n * O), *din = tf((size_t)n * I + 1), *dW = tf((size_t)O * I + 1), *db = tf(O);
            memcpy(d, t.c, sizeof(float) * n * O);
            if (relu) es__relu_backward(d, t.out, (size_t)n * O);
            for (int i = 0; i < n * I; i++) din[i] = 1e30f;
            for (int i = 0; i < O * I; i++) dW[i] = 0.25f;
            for (int i = 0; i < O; i++) db[i] = 0.25f;
            es__linear_backward(din, dW, db, d, t.in, t.W, n, I, O);
            for (int i = 0; i < O * I; i++) dW[i] -= 0.25f;
            for (int i = 0; i < O; i++) db[i] -= 0.25f;
            char what[64];
            snprintf(what, sizeof what, "linear n=%d I=%d O=%d relu=%d", n, I, O, relu);
            CHECK_MSG(fd_check(what, t.in, din, (size_t)n * I, lin_loss, &t) == 0, "%s: d in", what);
            CHECK_MSG(fd_check(what, t.W, dW, (size_t)O * I, lin_loss, &t) == 0, "%s: d W", what);
            CHECK_MSG(fd_check(what, t.b, db, O, lin_loss, &t) == 0, "%s: d b", what);
        }
}

/* ---- ReLU ------------------------------------------------------------------------------ */

typedef struct {
    size_t len;
    float *x, *y, *c;
} relu_ctx;
static double relu_loss(void *p) {
    relu_ctx *t = p;
    memcpy(t->y, t->x, t->len * sizeof(float));
    es__relu_forward(t->y, t->len);
    return dotd(t->c, t->y, t->len);
}

TEST(model_relu_gradient) {
    es_rng r;
    es__rng_seed(&r, 12);
    for (size_t len = 1; len <= 65; len += 16) {
        relu_ctx t = {len, tf_rand(&r, len, 1), tf(len), tf_rand(&r, len, 1)};
        relu_loss(&t);
        for (size_t i = 0; i < len; i++) CHECK(t.y[i] == (t.x[i] > 0 ? t.x[i] : 0.0f));
        float *dx = tf(len);
        memcpy(dx, t.c, len * sizeof(float));
        es__relu_backward(dx, t.y, len);
        CHECK(fd_check("relu", t.x, dx, len, relu_loss, &t) == 0);
    }
}

/* ---- MLP ---------------------------------------------------------------------------------- */

typedef struct {
    es__mlp m;
    int n;
    float *in, *c;
    float *acts[ES__MLP_MAX];
} mlp_ctx;
static double mlp_loss(void *p) {
    mlp_ctx *t = p;
    es__mlp_forward(&t->m, t->n, t->in, t->acts);
    return dotd(t->c, t->acts[t->m.n_layers - 1], (size_t)t->n * t->m.dims[t->m.n_layers]);
}

TEST(model_mlp_gradient) {
    static const struct {
        int n_layers, dims[5], relu[4];
    } cfg[] = {{3, {5, 7, 3, 1}, {1, 1, 0}}, {2, {4, 6, 2}, {1, 1}}, {1, {3, 1}, {0}}, {4, {2, 9, 1, 5, 3}, {1, 1, 1, 0}}};
    static const int batches[] = {1, 3, 8};
    es_rng r;
    es__rng_seed(&r, 13);
    for (size_t ci = 0; ci < ES_ARRAY_LEN(cfg); ci++)
        for (size_t bi = 0; bi < ES_ARRAY_LEN(batches); bi++) {
            mlp_ctx t;
            memset(&t, 0, sizeof t);
            int n = batches[bi], L = cfg[ci].n_layers;
            t.n = n;
            t.m.n_layers = L;
            for (int l = 0; l <= L; l++) t.m.dims[l] = cfg[ci].dims[l];
            for (int l = 0; l < L; l++) {
                int I = t.m.dims[l], O = t.m.dims[l + 1];
                t.m.relu[l] = cfg[ci].relu[l];
                t.m.W[l] = tf_rand(&r, (size_t)O * I, 0.8f);
                t.m.b[l] = tf_rand(&r, O, 0.5f);
                t.m.dW[l] = tf((size_t)O * I);
                t.m.db[l] = tf(O);
                t.acts[l] = tf((size_t)n * O);
            }
            int outw = t.m.dims[L], w = es__mlp_max_width(&t.m);
            t.in = tf_rand(&r, (size_t)n * t.m.dims[0], 1);
            t.c = tf_rand(&r, (size_t)n * outw, 1);
            mlp_loss(&t);
            float *dout = tf((size_t)n * outw), *din = tf((size_t)n * t.m.dims[0]);
            memcpy(dout, t.c, sizeof(float) * n * outw);
            es__mlp_backward(&t.m, n, t.in, t.acts, dout, din, tf((size_t)n * w), tf((size_t)n * w));
            char what[64];
            snprintf(what, sizeof what, "mlp cfg %zu n=%d", ci, n);
            CHECK_MSG(fd_check(what, t.in, din, (size_t)n * t.m.dims[0], mlp_loss, &t) == 0, "%s: d in", what);
            for (int l = 0; l < L; l++) {
                size_t nw = (size_t)t.m.dims[l + 1] * t.m.dims[l];
                CHECK_MSG(fd_check(what, t.m.W[l], t.m.dW[l], nw, mlp_loss, &t) == 0, "%s: d W%d", what, l);
                CHECK_MSG(fd_check(what, t.m.b[l], t.m.db[l], t.m.dims[l + 1], mlp_loss, &t) == 0, "%s: d b%d", what, l);
            }
        }
}

/* ---- interaction ---------------------------------------------------------------------------- */

typedef struct {
    int n, F, k;
    float *z0, *emb, *out, *c;
} int_ctx;
static double int_loss(void *p) {
    int_ctx *t = p;
    es__interact_forward(t->out, t->z0, t->emb, t->n, t->F, t->k);
    return dotd(t->c, t->out, (size_t)t->n * es__interact_width(t->z0 != NULL, t->F, t->k));
}

TEST(model_interaction_forward_and_gradient) {
    static const int ns[] = {1, 3}, Fs[] = {1, 3}, ks[] = {1, 3, 5};
    es_rng r;
    es__rng_seed(&r, 14);
    for (int has = 0; has <= 1; has++)
        for (size_t a = 0; a < 2; a++)
            for (size_t b = 0; b < 2; b++)
                for (size_t c = 0; c < 3; c++) {
                    int n = ns[a], F = Fs[b], k = ks[c];
                    int W = es__interact_width(has, F, k), T = F + has;
                    CHECK_EQ_INT(W, (has ? k : 0) + T * (T - 1) / 2);
                    if (W == 0) continue; /* one vector: nothing to interact */
                    int_ctx t = {n, F, k, has ? tf_rand(&r, (size_t)n * k, 1) : NULL, tf_rand(&r, (size_t)n * F * k, 1),
                                 tf((size_t)n * W), tf_rand(&r, (size_t)n * W, 1)};
                    int_loss(&t);
                    /* naive: output = [z0, <x_i, x_j> for i < j row-major] */
                    for (int i = 0; i < n; i++) {
                        const float *o = t.out + (size_t)i * W;
                        int col = 0;
                        for (int q = 0; has && q < k; q++) CHECK(o[col++] == t.z0[i * k + q]);
                        for (int u = 0; u < T; u++)
                            for (int v = u + 1; v < T; v++) {
                                const float *xu = has ? (u ? t.emb + ((size_t)i * F + u - 1) * k : t.z0 + i * k)
                                                      : t.emb + ((size_t)i * F + u) * k;
                                const float *xv = has ? t.emb + ((size_t)i * F + v - 1) * k : t.emb + ((size_t)i * F + v) * k;
                                double s = dotd(xu, xv, k);
                                CHECK_MSG(es_test_close(o[col], s, 1e-5, 1e-5), "pair (%d,%d): %g vs %g", u, v, o[col], s);
                                col++;
                            }
                        CHECK_EQ_INT(col, W);
                    }
                    float *dz0 = has ? tf((size_t)n * k) : NULL, *demb = tf((size_t)n * F * k);
                    for (int i = 0; i < n * F * k; i++) demb[i] = 1e30f; /* must be overwritten */
                    es__interact_backward(dz0, demb, t.c, t.z0, t.emb, n, F, k);
                    char what[64];
                    snprintf(what, sizeof what, "interact z0=%d n=%d F=%d k=%d", has, n, F, k);
                    CHECK_MSG(fd_check(what, t.emb, demb, (size_t)n * F * k, int_loss, &t) == 0, "%s: d emb", what);
                    if (has) CHECK_MSG(fd_check(what, t.z0, dz0, (size_t)n * k, int_loss, &t) == 0, "%s: d z0", what);
                }
}

TEST(model_interaction_matches_ref_over_awkward_sizes) {
    /* k past 64 and 128 resumes the forward's column chunks; F = 100 takes
     * the many-fields path of the backward */
    static const int ks[] = {1, 3, 7, 8, 15, 16, 17, 33, 65, 129}, Fs[] = {1, 2, 5, 9, 100};
    es_rng r;
    es__rng_seed(&r, 15);
    int n = 70; /* above the threading threshold, so the parallel loop runs too */
    for (size_t a = 0; a < ES_ARRAY_LEN(ks); a++)
        for (size_t b = 0; b < ES_ARRAY_LEN(Fs); b++)
            for (int has = 0; has <= 1; has++) {
                int k = ks[a], F = Fs[b], W = es__interact_width(has, F, k);
                if (W == 0 || (F == 100 && k > 17)) continue;
                float *z0 = has ? tf_rand(&r, (size_t)n * k, 1) : NULL, *emb = tf_rand(&r, (size_t)n * F * k, 1);
                float *o1 = tf((size_t)n * W), *o2 = tf((size_t)n * W), *g = tf_rand(&r, (size_t)n * W, 1);
                es__interact_forward(o1, z0, emb, n, F, k);
                es__interact_forward_ref(o2, z0, emb, n, F, k);
                for (int i = 0; i < n * W; i++)
                    CHECK_MSG(es_test_close(o1[i], o2[i], 1e-5, 1e-5), "fwd k=%d F=%d z0=%d [%d]: %g vs ref %g", k, F,
                              has, i, o1[i], o2[i]);
                float *dz1 = has ? tf((size_t)n * k) : NULL, *dz2 = has ? tf((size_t)n * k) : NULL;
                float *de1 = tf((size_t)n * F * k), *de2 = tf((size_t)n * F * k);
                es__interact_backward(dz1, de1, g, z0, emb, n, F, k);
                es__interact_backward_ref(dz2, de2, g, z0, emb, n, F, k);
                for (int i = 0; i < n * F * k; i++)
                    CHECK_MSG(es_test_close(de1[i], de2[i], 1e-5, 1e-5), "bwd demb k=%d F=%d [%d]: %g vs ref %g", k,
                              F, i, de1[i], de2[i]);
                for (int i = 0; has && i < n * k; i++)
                    CHECK_MSG(es_test_close(dz1[i], dz2[i], 1e-5, 1e-5), "bwd dz0 k=%d F=%d [%d]: %g vs ref %g", k, F,
                              i, dz1[i], dz2[i]);
            }
}

/* ---- cross layer ------------------------------------------------------------------------------ */

typedef struct {
    int n, d;
    float *x0, *xl, *W, *b, *u, *xo, *c;
} cross_ctx;
static double cross_loss(void *p) {
    cross_ctx *t = p;
    es__cross_forward(t->xo, t->u, t->x0, t->xl, t->W, NULL, t->b, t->n, t->d);
    return dotd(t->c, t->xo, (size_t)t->n * t->d);
}

TEST(model_cross_layer_forward_and_gradient) {
    static const int sizes[][2] = {{1, 1}, {3, 4}, {2, 7}, {5, 17}};
    es_rng r;
    es__rng_seed(&r, 16);
    for (size_t s = 0; s < ES_ARRAY_LEN(sizes); s++) {
        int n = sizes[s][0], d = sizes[s][1];
        size_t nd = (size_t)n * d;
        cross_ctx t = {n,  d,           tf_rand(&r, nd, 1), tf_rand(&r, nd, 1), tf_rand(&r, (size_t)d * d, 0.7f),
                       tf_rand(&r, d, 0.5f), tf(nd),         tf(nd),             tf_rand(&r, nd, 1)};
        cross_loss(&t);
        for (int i = 0; i < n; i++)
            for (int o = 0; o < d; o++) {
                double u = t.b[o];
                for (int j = 0; j < d; j++) u += (double)t.W[o * d + j] * t.xl[i * d + j];
                double want = t.x0[i * d + o] * u + t.xl[i * d + o];
                CHECK_MSG(es_test_close(t.xo[i * d + o], want, 1e-5, 1e-5), "d=%d xo[%d,%d]: %g vs %g", d, i, o,
                          t.xo[i * d + o], want);
            }
        float *dx = tf(nd), *dx0 = tf(nd), *dW = tf((size_t)d * d), *db = tf(d), *h = tf(nd);
        memcpy(dx, t.c, nd * sizeof(float));
        for (size_t i = 0; i < nd; i++) dx0[i] = 0.5f;
        for (int i = 0; i < d * d; i++) dW[i] = 0.25f;
        for (int i = 0; i < d; i++) db[i] = 0.25f;
        es__cross_backward(dx, dx0, dW, db, t.x0, t.xl, t.u, t.W, h, n, d);
        for (size_t i = 0; i < nd; i++) dx0[i] -= 0.5f;
        for (int i = 0; i < d * d; i++) dW[i] -= 0.25f;
        for (int i = 0; i < d; i++) db[i] -= 0.25f;
        char what[64];
        snprintf(what, sizeof what, "cross n=%d d=%d", n, d);
        CHECK_MSG(fd_check(what, t.xl, dx, nd, cross_loss, &t) == 0, "%s: d xl", what);
        CHECK_MSG(fd_check(what, t.x0, dx0, nd, cross_loss, &t) == 0, "%s: d x0", what);
        CHECK_MSG(fd_check(what, t.W, dW, (size_t)d * d, cross_loss, &t) == 0, "%s: d W", what);
        CHECK_MSG(fd_check(what, t.b, db, d, cross_loss, &t) == 0, "%s: d b", what);
    }
}

/* ---- FM term --------------------------------------------------------------------------------- */

typedef struct {
    int n, F, D, k, E;
    float *emb, *dense, *V, *sum, *out, *c;
} fm_ctx;
static double fm_loss(void *p) {
    fm_ctx *t = p;
    es__fm_forward(t->out, t->sum, t->emb, t->F, t->E, 1, t->dense, t->V, t->D, t->k, t->n);
    return dotd(t->c, t->out, t->n);
}

TEST(model_fm_term_forward_and_gradient) {
    static const int ns[] = {1, 3}, Fs[] = {1, 3}, Ds[] = {0, 2}, ks[] = {1, 3, 5};
    es_rng r;
    es__rng_seed(&r, 17);
    for (size_t a = 0; a < 2; a++)
        for (size_t b = 0; b < 2; b++)
            for (size_t c = 0; c < 2; c++)
                for (size_t e = 0; e < 3; e++) {
                    int n = ns[a], F = Fs[b], D = Ds[c], k = ks[e], E = 1 + k;
                    fm_ctx t = {n,
                                F,
                                D,
                                k,
                                E,
                                tf_rand(&r, (size_t)n * F * E, 1),
                                D ? tf_rand(&r, (size_t)n * D, 1) : NULL,
                                D ? tf_rand(&r, (size_t)D * k, 1) : NULL,
                                tf((size_t)n * k),
                                tf(n),
                                tf_rand(&r, n, 1)};
                    fm_loss(&t);
                    /* naive O((F+D)^2 k) pair loop over v_f = emb[f][1..] and x_d V_d */
                    for (int i = 0; i < n; i++) {
                        int nv = F + D;
                        double want = 0.0;
                        for (int u = 0; u < nv; u++)
                            for (int v = u + 1; v < nv; v++)
                                for (int q = 0; q < k; q++) {
                                    double a1 = u < F ? t.emb[((size_t)i * F + u) * E + 1 + q]
                                                      : (double)t.dense[i * D + u - F] * t.V[(u - F) * k + q];
                                    double a2 = v < F ? t.emb[((size_t)i * F + v) * E + 1 + q]
                                                      : (double)t.dense[i * D + v - F] * t.V[(v - F) * k + q];
                                    want += a1 * a2;
                                }
                        CHECK_MSG(es_test_close(t.out[i], want, 1e-5, 1e-5), "fm F=%d D=%d k=%d row %d: %g vs %g", F, D,
                                  k, i, t.out[i], want);
                    }
                    float *demb = tf((size_t)n * F * E), *dV = tf((size_t)D * k + 1);
                    for (int i = 0; i < n * F * E; i++) demb[i] = 7.0f;
                    for (int i = 0; i < D * k; i++) dV[i] = 0.25f;
                    es__fm_backward(demb, dV, t.c, t.sum, t.emb, F, E, 1, t.dense, t.V, D, k, n);
                    for (int i = 0; i < n * F; i++) CHECK(demb[(size_t)i * E] == 7.0f); /* column 0 untouched */
                    for (int i = 0; i < n * F; i++) demb[(size_t)i * E] = 0.0f; /* loss does not depend on it */
                    for (int i = 0; i < D * k; i++) dV[i] -= 0.25f;
                    char what[64];
                    snprintf(what, sizeof what, "fm n=%d F=%d D=%d k=%d", n, F, D, k);
                    CHECK_MSG(fd_check(what, t.emb, demb, (size_t)n * F * E, fm_loss, &t) == 0, "%s: d emb", what);
                    if (D) CHECK_MSG(fd_check(what, t.V, dV, (size_t)D * k, fm_loss, &t) == 0, "%s: d V", what);
                }
}

/* ---- BCE ------------------------------------------------------------------------------------- */

typedef struct {
    float *z, *y;
    int n;
} bce_ctx;
static double bce_loss(void *p) {
    bce_ctx *t = p;
    return es__bce_logits(t->z, t->y, t->n, NULL);
}

TEST(model_bce_with_logits) {
    float z[5] = {-2.0f, -0.1f, 0.0f, 0.7f, 3.0f}, y[5] = {0, 1, 1, 0, 1}, g[5];
    bce_ctx t = {z, y, 5};
    double l = es__bce_logits(z, y, 5, g), want = 0;
    for (int i = 0; i < 5; i++) {
        double p = 1.0 / (1.0 + exp(-(double)z[i]));
        want -= y[i] ? log(p) : log(1 - p);
    }
    CHECK_NEAR(l, want / 5, 1e-6);
    CHECK(fd_check("bce", z, g, 5, bce_loss, &t) == 0);
    /* extreme logits: finite loss, saturated gradients */
    float zx[2] = {-200.0f, 200.0f}, yx[2] = {1, 0}, gx[2];
    double lx = es__bce_logits(zx, yx, 2, gx);
    CHECK(isfinite(lx));
    CHECK_NEAR(lx, 200.0, 1e-3);
    CHECK_NEAR(gx[0], -0.5, 1e-6);
    CHECK_NEAR(gx[1], 0.5, 1e-6);
    CHECK_NEAR(es__sigmoid(-100.0f), 0.0, 1e-30);
    CHECK_NEAR(es__sigmoid(0.0f), 0.5, 0);
}

/* ---- whole models ------------------------------------------------------------------------------ */

static float *tensor(es_tensor_ref *refs, int nr, const char *name) {
    for (int i = 0; i < nr; i++)
        if (strcmp(refs[i].name, name) == 0) return refs[i].data;
    return NULL;
}

/* out[O] = W in + b (optionally ReLU) in double, W[O, I] row-major. */
static void naive_linear(double *out, const double *in, const float *W, const float *b, int I, int O, int relu) {
    for (int o = 0; o < O; o++) {
        double z = b[o];
        for (int i = 0; i < I; i++) z += (double)W[(size_t)o * I + i] * in[i];
        out[o] = relu && z < 0 ? 0 : z;
    }
}

/* A stack "net.<stack>.l" of n_hidden ReLU layers and a final linear to 1. */
static double naive_mlp_to_logit(es_tensor_ref *refs, int nr, const char *stack, const double *in, int I,
                                 const int *widths, int n_hidden, double *a, double *b) {
    char nw[64], nb[64];
    memcpy(a, in, sizeof(double) * I);
    for (int l = 0; l <= n_hidden; l++) {
        int O = l < n_hidden ? widths[l] : 1;
        snprintf(nw, sizeof nw, "net.%s.%d.w", stack, l);
        snprintf(nb, sizeof nb, "net.%s.%d.b", stack, l);
        naive_linear(b, a, tensor(refs, nr, nw), tensor(refs, nr, nb), I, O, l < n_hidden);
        memcpy(a, b, sizeof(double) * O);
        I = O;
    }
    return a[0];
}

/* The equations of docs/models.md, evaluated per row in double. */
static double naive_logit(es_net *net, const float *emb, const float *dense) {
    const es_net_params *p = es__net_get_params(net);
    int D = p->n_dense, F = p->n_fields, k = p->dim, E = es__net_emb_dim(p->kind, p->n_fields, k);
    es_tensor_ref refs[128];
    int nr = es__net_tensors(net, refs, 128);
    double a[4096], b[4096], z = 0;
    switch (p->kind) {
    case ES_NET_LR:
    case ES_NET_FM:
    case ES_NET_FFM: {
        /* norm_rows: x / |x| with |x|^2 = F + |dense|^2 -- linear terms
         * times 1/|x|, pairs times 1/|x|^2; pairs_only: the pairs alone */
        const float *w = tensor(refs, nr, "net.linear.w"), *bias = tensor(refs, nr, "net.linear.b");
        double lin = 0, pairs = 0, nrm2 = F;
        for (int d = 0; d < D; d++) lin += (double)w[d] * dense[d], nrm2 += (double)dense[d] * dense[d];
        for (int f = 0; f < F; f++) lin += emb[f * E];
        if (p->kind == ES_NET_FM) {
            const float *V = tensor(refs, nr, "net.fm.v");
            for (int u = 0; u < F + D; u++)
                for (int v = u + 1; v < F + D; v++)
                    for (int q = 0; q < k; q++) {
                        double x1 = u < F ? emb[u * E + 1 + q] : (double)dense[u - F] * V[(u - F) * k + q];
                        double x2 = v < F ? emb[v * E + 1 + q] : (double)dense[v - F] * V[(v - F) * k + q];
                        pairs += x1 * x2;
                    }
        }
        if (p->kind == ES_NET_FFM)
            for (int i = 0; i < F; i++)
                for (int j = i + 1; j < F; j++)
                    for (int q = 0; q < k; q++) pairs += (double)emb[i * E + 1 + j * k + q] * emb[j * E + 1 + i * k + q];
        double rs = p->norm_rows ? 1.0 / nrm2 : 1.0;
        z = p->pairs_only ? rs * pairs : bias[0] + sqrt(rs) * lin + rs * pairs;
        break;
    }
    case ES_NET_DLRM: {
        /* vectors: z0 (bottom MLP, ReLU after every layer) then the fields */
        double vec[64][64];
        int T = 0;
        double inter[4096];
        int w = 0;
        if (D > 0) {
            char nw[64], nb[64];
            int I = D;
            for (int d = 0; d < D; d++) a[d] = dense[d];
            for (int l = 0; l < p->n_bottom; l++) {
                snprintf(nw, sizeof nw, "net.bottom.%d.w", l);
                snprintf(nb, sizeof nb, "net.bottom.%d.b", l);
                naive_linear(b, a, tensor(refs, nr, nw), tensor(refs, nr, nb), I, p->bottom[l], 1);
                I = p->bottom[l];
                memcpy(a, b, sizeof(double) * I);
            }
            for (int q = 0; q < k; q++) vec[T][q] = inter[w++] = a[q];
            T++;
        }
        for (int f = 0; f < F; f++, T++)
            for (int q = 0; q < k; q++) vec[T][q] = emb[f * k + q];
        for (int i = 0; i < T; i++)
            for (int j = i + 1; j < T; j++) {
                double s = 0;
                for (int q = 0; q < k; q++) s += vec[i][q] * vec[j][q];
                inter[w++] = s;
            }
        z = naive_mlp_to_logit(refs, nr, "top", inter, w, p->top, p->n_top, a, b);
        break;
    }
    case ES_NET_DCN: {
        int d0 = D + F * k;
        double x0[4096], x[4096], u[4096];
        for (int d = 0; d < D; d++) x0[d] = dense[d];
        for (int j = 0; j < F * k; j++) x0[D + j] = emb[j];
        memcpy(x, x0, sizeof(double) * d0);
        for (int l = 0; l < p->n_cross; l++) {
            char nw[64], nb[64];
            snprintf(nw, sizeof nw, "net.cross.%d.w", l);
            snprintf(nb, sizeof nb, "net.cross.%d.b", l);
            naive_linear(u, x, tensor(refs, nr, nw), tensor(refs, nr, nb), d0, d0, 0);
            for (int j = 0; j < d0; j++) x[j] = x0[j] * u[j] + x[j];
        }
        z = naive_mlp_to_logit(refs, nr, "deep", x, d0, p->top, p->n_top, a, b);
        break;
    }
    }
    return z;
}

typedef struct {
    es_net *net;
    int n;
    float *emb, *dense, *logit, *c;
} net_ctx;
static double net_loss(void *p) {
    net_ctx *t = p;
    es__net_forward(t->net, t->n, t->emb, t->dense, t->logit);
    return dotd(t->c, t->logit, t->n);
}

/* Forward against the naive equations, then FD w.r.t. every parameter and
 * every embedding input.  Returns 0 when all agree. */
static int check_model(const es_net_params *p, int n, uint64_t seed) {
    es_net *net = tnet(p);
    if (!net) return 1;
    es_rng r;
    es__rng_seed(&r, seed);
    int E = es__net_emb_dim(p->kind, p->n_fields, p->dim), D = p->n_dense, F = p->n_fields;
    /* Randomise every parameter (LR/FM start at zero, which would hide terms). */
    float *w = es__net_params_ptr(net);
    es__rng_fill_uniform(&r, w, es__net_n_params(net), 0.6f);
    net_ctx t = {net, n, tf_rand(&r, (size_t)n * F * E, 1), D ? tf_rand(&r, (size_t)n * D, 1) : NULL, tf(n),
                 tf_rand(&r, n, 1)};
    char what[96];
    snprintf(what, sizeof what, "%s D=%d F=%d k=%d n=%d", es__net_kind_name(p->kind), D, F, p->dim, n);
    net_loss(&t);
    for (int i = 0; i < n; i++) {
        double want = naive_logit(net, t.emb + (size_t)i * F * E, D ? t.dense + (size_t)i * D : NULL);
        if (!es_test_close(t.logit[i], want, 1e-4, 1e-4)) {
            printf("    %s: logit[%d] %.7g, equations give %.7g\n", what, i, t.logit[i], want);
            return 1;
        }
    }
    float *demb = tf((size_t)n * F * E);
    for (size_t i = 0; i < (size_t)n * F * E; i++) demb[i] = 1e30f;
    es__net_zero_grad(net);
    es__net_backward(net, n, t.emb, t.dense, t.c, demb);
    int bad = fd_check(what, es__net_params_ptr(net), es__net_grads_ptr(net), es__net_n_params(net), net_loss, &t);
    bad += fd_check(what, t.emb, demb, (size_t)n * F * E, net_loss, &t);
    return bad;
}

/* FFM end to end: logits against the pair loop of docs/models.md, FD
 * w.r.t. the dense parameters (net.linear.w/.b) and every emb column. */
TEST(model_ffm_forward_and_gradients) {
    static const int Ds[] = {0, 2}, Fs[] = {1, 2, 3, 5}, ks[] = {1, 3, 4}, ns[] = {1, 3};
    for (size_t a = 0; a < 2; a++)
        for (size_t b = 0; b < 4; b++)
            for (size_t c = 0; c < 3; c++)
                for (size_t e = 0; e < 2; e++) {
                    es_net_params p = es__net_params_default(ES_NET_FFM, Ds[a], Fs[b], ks[c]);
                    p.max_batch = ns[e] + 2;
                    CHECK_MSG(check_model(&p, ns[e], 300 + a * 7 + b * 5 + c * 3 + e) == 0, "ffm D=%d F=%d k=%d n=%d",
                              Ds[a], Fs[b], ks[c], ns[e]);
                }
}

TEST(model_lr_fm_forward_and_gradients) {
    static const int Ds[] = {0, 3}, Fs[] = {1, 3}, ks[] = {1, 3, 5}, ns[] = {1, 3};
    for (int kind = ES_NET_LR; kind <= ES_NET_FM; kind++)
        for (size_t a = 0; a < 2; a++)
            for (size_t b = 0; b < 2; b++)
                for (size_t c = 0; c < 3; c++)
                    for (size_t e = 0; e < 2; e++) {
                        if (kind == ES_NET_LR && c > 0) continue; /* k does not matter to LR */
                        es_net_params p = es__net_params_default((es_net_kind)kind, Ds[a], Fs[b], ks[c]);
                        p.max_batch = ns[e] + 2;
                        CHECK_MSG(check_model(&p, ns[e], 100 + a * 7 + b * 5 + c * 3 + e) == 0, "%s D=%d F=%d k=%d n=%d",
                                  es__net_kind_name(p.kind), Ds[a], Fs[b], ks[c], ns[e]);
                    }
}

/* The libffm-parity options (norm_rows: x -> x / |x|; pairs_only: no bias
 * or linear terms) against the equations, with FD w.r.t. every parameter
 * and emb column; with D > 0 the numeric features enter |x|^2. */
TEST(model_fm_ffm_norm_rows_and_pairs_only_gradients) {
    static const int Ds[] = {0, 2}, Fs[] = {1, 3}, ns[] = {1, 3};
    int runs = 0;
    for (int kind = ES_NET_FM; kind <= ES_NET_FFM; kind += ES_NET_FFM - ES_NET_FM)
        for (int nr = 0; nr <= 1; nr++)
            for (int po = 0; po <= 1; po++)
                for (size_t a = 0; a < 2; a++)
                    for (size_t b = 0; b < 2; b++)
                        for (size_t e = 0; e < 2; e++) {
                            es_net_params p = es__net_params_default((es_net_kind)kind, Ds[a], Fs[b], 3);
                            p.max_batch = ns[e] + 2;
                            p.norm_rows = nr;
                            p.pairs_only = po;
                            CHECK_MSG(check_model(&p, ns[e], 900 + nr * 13 + po * 11 + a * 7 + b * 5 + e) == 0,
                                      "%s norm_rows=%d pairs_only=%d D=%d F=%d n=%d", es__net_kind_name(p.kind), nr, po,
                                      Ds[a], Fs[b], ns[e]);
                            runs++;
                        }
    printf("    %d configurations agree with the equations and finite differences\n", runs);
    /* only FM and FFM take them */
    es_err err = {0};
    es_net *net = NULL;
    es_net_params p = es__net_params_default(ES_NET_DLRM, 2, 3, 4);
    p.norm_rows = 1;
    CHECK(es__net_create(&net, &p, &err) == ES_EINVAL && net == NULL);
    p = es__net_params_default(ES_NET_LR, 2, 3, 4);
    p.pairs_only = 1;
    CHECK(es__net_create(&net, &p, &err) == ES_EINVAL && net == NULL);
    p = es__net_params_default(ES_NET_FFM, 2, 3, 4);
    p.norm_rows = 2;
    CHECK(es__net_create(&net, &p, &err) == ES_EINVAL && net == NULL);
}

TEST(model_dlrm_forward_and_gradients) {
    static const int Ds[] = {0, 4}, Fs[] = {1, 3}, ks[] = {1, 3, 5}, ns[] = {1, 3};
    for (size_t a = 0; a < 2; a++)
        for (size_t b = 0; b < 2; b++)
            for (size_t c = 0; c < 3; c++)
                for (size_t e = 0; e < 2; e++) {
                    int D = Ds[a], F = Fs[b], k = ks[c];
                    if (D == 0 && F == 1) F = 2; /* needs two vectors to interact */
                    es_net_params p = es__net_params_default(ES_NET_DLRM, D, F, k);
                    p.bottom[0] = 5;
                    p.bottom[1] = k;
                    p.n_bottom = 2;
                    /* alternate a two-layer top and a bare final linear */
                    p.n_top = (c % 2) ? 0 : 2;
                    p.top[0] = 6;
                    p.top[1] = 4;
                    p.max_batch = ns[e];
                    CHECK_MSG(check_model(&p, ns[e], 200 + a * 7 + b * 5 + c * 3 + e) == 0, "dlrm D=%d F=%d k=%d n=%d",
                              D, F, k, ns[e]);
                }
}

TEST(model_dcn_forward_and_gradients) {
    static const int Ds[] = {0, 3}, Fs[] = {1, 3}, ks[] = {1, 3, 5}, ns[] = {1, 3};
    for (size_t a = 0; a < 2; a++)
        for (size_t b = 0; b < 2; b++)
            for (size_t c = 0; c < 3; c++)
                for (size_t e = 0; e < 2; e++)
                    for (int nc = 0; nc <= 2; nc++) {
                        es_net_params p = es__net_params_default(ES_NET_DCN, Ds[a], Fs[b], ks[c]);
                        p.n_cross = nc;
                        p.n_top = 1 + (int)e;
                        p.top[0] = 5;
                        p.top[1] = 3;
                        p.max_batch = 4;
                        CHECK_MSG(check_model(&p, ns[e], 300 + a * 7 + b * 5 + c * 3 + e + nc * 11) == 0,
                                  "dcn D=%d F=%d k=%d n=%d cross=%d", Ds[a], Fs[b], ks[c], ns[e], nc);
                    }
}

/* Rows do not leak into each other: a batch gives each row's logit alone. */
TEST(model_rows_are_independent) {
    es_rng r;
    es__rng_seed(&r, 21);
    for (int kind = 0; kind < 4; kind++) {
        es_net_params p = es__net_params_default((es_net_kind)kind, 4, 3, 5);
        p.max_batch = 9;
        es_net *net = tnet(&p);
        CHECK(net);
        int E = es__net_emb_dim(p.kind, p.n_fields, 5), n = 9;
        float *emb = tf_rand(&r, (size_t)n * 3 * E, 1), *dense = tf_rand(&r, (size_t)n * 4, 1), *lg = tf(n), one;
        es__rng_fill_uniform(&r, es__net_params_ptr(net), es__net_n_params(net), 0.3f);
        es__net_forward(net, n, emb, dense, lg);
        for (int i = 0; i < n; i++) {
            es__net_forward(net, 1, emb + (size_t)i * 3 * E, dense + i * 4, &one);
            CHECK_MSG(es_test_close(one, lg[i], 1e-5, 1e-5), "%s row %d: alone %g, in batch %g", es__net_kind_name(p.kind),
                      i, one, lg[i]);
        }
    }
}

/* ---- optimizers ------------------------------------------------------------------------------- */

/* LR with D = 2: params are w[0], w[1] (weights, decayed) then b (bias). */
static es_net *lr_net(es_optim kind, float lr, float wd) {
    es_net_params p = es__net_params_default(ES_NET_LR, 2, 1, 1);
    p.opt.kind = kind;
    p.opt.lr = lr;
    p.opt.init_acc = 0.1f;
    p.opt.eps = kind == ES_OPT_ADAM ? 1e-8f : 1e-10f;
    p.weight_decay = wd;
    return tnet(&p);
}

TEST(model_adam_step_matches_hand_computation) {
    const float lr = 0.01f, wd = 0.1f, b1 = 0.9f, b2 = 0.999f, eps = 1e-8f;
    es_net *net = lr_net(ES_OPT_ADAM, lr, wd);
    CHECK(net);
    CHECK_EQ_INT(es__net_n_params(net), 3);
    float *w = es__net_params_ptr(net), *g = es__net_grads_ptr(net);
    double hw[3] = {0.5, -0.25, 0.125}, m[3] = {0}, v[3] = {0};
    for (int i = 0; i < 3; i++) w[i] = (float)hw[i];
    static const double grads[3][3] = {{0.3, -0.2, 0.05}, {-0.1, 0.4, 0.0}, {1.5, -0.01, -0.3}};
    for (int t = 1; t <= 3; t++) {
        for (int i = 0; i < 3; i++) g[i] = (float)grads[t - 1][i];
        es__net_step(net);
        for (int i = 0; i < 3; i++) {
            double gi = grads[t - 1][i] + (i < 2 ? wd * hw[i] : 0.0); /* no decay on the bias */
            m[i] = b1 * m[i] + (1 - b1) * gi;
            v[i] = b2 * v[i] + (1 - b2) * gi * gi;
            double mhat = m[i] / (1 - pow(b1, t)), vhat = v[i] / (1 - pow(b2, t));
            hw[i] -= lr * mhat / (sqrt(vhat) + eps);
            CHECK_MSG(es_test_close(w[i], hw[i], 1e-6, 1e-5), "step %d param %d: %.8g vs hand %.8g", t, i, w[i], hw[i]);
            CHECK(g[i] == 0.0f); /* step zeroes the gradients */
        }
    }
    es_tensor_ref refs[16];
    int nr = es__net_tensors(net, refs, 16);
    const int64_t *step = (const int64_t *)tensor(refs, nr, "opt.net.step");
    CHECK(step && *step == 3);
    const float *mw = tensor(refs, nr, "opt.net.linear.w.m"), *vb = tensor(refs, nr, "opt.net.linear.b.v");
    CHECK(mw && vb);
    CHECK_NEAR(mw[1], m[1], 1e-7);
    CHECK_NEAR(vb[0], v[2], 1e-9);
}

TEST(model_sgd_and_adagrad_steps_match_hand_computation) {
    const float lr = 0.05f, wd = 0.2f;
    for (int which = 0; which < 2; which++) {
        es_net *net = lr_net(which ? ES_OPT_ADAGRAD : ES_OPT_SGD, lr, wd);
        CHECK(net);
        CHECK_EQ_INT(es__net_state_bytes(net), which ? 3 * sizeof(float) : 0);
        float *w = es__net_params_ptr(net), *g = es__net_grads_ptr(net);
        double hw[3] = {0.5, -0.25, 0.125}, acc[3] = {0.1, 0.1, 0.1};
        for (int i = 0; i < 3; i++) w[i] = (float)hw[i];
        for (int t = 0; t < 3; t++) {
            double gr[3] = {0.3 - t, -0.2 * t, 0.05 + t};
            for (int i = 0; i < 3; i++) g[i] = (float)gr[i];
            es__net_step(net);
            for (int i = 0; i < 3; i++) {
                double gi = gr[i] + (i < 2 ? wd * hw[i] : 0.0);
                if (which) {
                    acc[i] += gi * gi;
                    hw[i] -= lr * gi / (sqrt(acc[i]) + 1e-10);
                } else {
                    hw[i] -= lr * gi;
                }
                CHECK_MSG(es_test_close(w[i], hw[i], 1e-6, 1e-5), "%s step %d param %d: %.8g vs hand %.8g",
                          which ? "adagrad" : "sgd", t, i, w[i], hw[i]);
            }
        }
    }
}

/* ---- initialisation, determinism, tensors ----------------------------------------------------- */

/* Rebuild the parameters from the seed following docs/models.md: tensors in
 * es__net_tensors order; linear and cross W and b ~ U(+-1/sqrt(fan_in)) with
 * fan_in the W's column count; FM V ~ U(+-0.05); LR/FM w, b zeros. */
TEST(model_init_follows_documented_draw_order) {
    for (int kind = 0; kind < 4; kind++) {
        es_net_params p = es__net_params_default((es_net_kind)kind, 3, 4, 5);
        p.seed = 77 + (uint64_t)kind;
        es_net *net = tnet(&p);
        CHECK(net);
        es_tensor_ref refs[128];
        int nr = es__net_tensors(net, refs, 128);
        es_rng r;
        es__rng_seed(&r, p.seed);
        double fan_in = 0;
        for (int i = 0; i < nr; i++) {
            const es_tensor_ref *t = &refs[i];
            if (strncmp(t->name, "opt.", 4) == 0) continue;
            size_t cnt = t->nbytes / sizeof(float);
            float a = 0.0f;
            size_t L = strlen(t->name);
            if (strcmp(t->name, "net.fm.v") == 0)
                a = 0.05f;
            else if (strncmp(t->name, "net.linear.", 11) == 0)
                a = 0.0f;
            else if (t->name[L - 1] == 'w') {
                fan_in = (double)t->shape[1];
                a = (float)(1.0 / sqrt(fan_in));
            } else {
                a = (float)(1.0 / sqrt(fan_in)); /* bias: its W's fan-in */
            }
            const float *got = t->data;
            for (size_t j = 0; j < cnt; j++) {
                float want = a > 0 ? (float)((2.0 * es__rng_uniform(&r) - 1.0) * a) : 0.0f;
                CHECK_MSG(got[j] == want, "%s %s[%zu]: %.9g, documented draw gives %.9g", es__net_kind_name(p.kind),
                          t->name, j, got[j], want);
                CHECK(fabsf(got[j]) <= a);
            }
        }
    }
}

/* Train two nets built from the same seed for a few steps on the same
 * batches; returns 0 when every logit, embedding gradient and parameter
 * agrees bit for bit. */
static int twin_run(es_net *a, es_net *b, int n, const float *emb, const float *dense, const float *d, float *la,
                    float *lb, float *ga, float *gb, size_t ne) {
    for (int step = 0; step < 4; step++) {
        es__net_forward(a, n, emb, dense, la);
        es__net_forward(b, n, emb, dense, lb);
        if (memcmp(la, lb, (size_t)n * sizeof(float)) != 0) return 1;
        es__net_backward(a, n, emb, dense, d, ga);
        es__net_backward(b, n, emb, dense, d, gb);
        if (memcmp(ga, gb, ne * sizeof(float)) != 0) return 2;
        es__net_step(a);
        es__net_step(b);
    }
    return memcmp(es__net_params_ptr(a), es__net_params_ptr(b), es__net_n_params(a) * sizeof(float)) != 0 ? 3 : 0;
}

TEST(model_same_seed_same_net_bit_for_bit) {
#ifdef _OPENMP
    int threads = omp_get_max_threads(); /* restored at the end */
#else
    int threads = es__threads_get();
#endif
    es_rng r;
    es__rng_seed(&r, 31);
    for (int kind = 0; kind < 4; kind++) {
        es_net_params p = es__net_params_default((es_net_kind)kind, 5, 4, 6);
        p.max_batch = 80; /* above the threading threshold of the row loops */
        p.seed = 5;
        es_net *a = tnet(&p), *b = tnet(&p), *a2 = tnet(&p);
        p.seed = 6;
        es_net *c = tnet(&p);
        CHECK(a && b && c && a2);
        size_t np = es__net_n_params(a);
        CHECK(memcmp(es__net_params_ptr(a), es__net_params_ptr(b), np * sizeof(float)) == 0);
        if (kind >= ES_NET_FM) /* LR starts at zero whatever the seed */
            CHECK(memcmp(es__net_params_ptr(a), es__net_params_ptr(c), np * sizeof(float)) != 0);
        int E = es__net_emb_dim(p.kind, p.n_fields, 6), n = 80;
        size_t ne = (size_t)n * 4 * E;
        float *emb = tf_rand(&r, ne, 1), *dense = tf_rand(&r, (size_t)n * 5, 1);
        float *la = tf(n), *lb = tf(n), *d = tf_rand(&r, n, 0.1f), *ga = tf(ne), *gb = tf(ne);
        /* a2 is a's untrained twin: its logits with 1 thread and with the
         * default threads agree up to the order of sums inside BLAS */
        float *l1 = tf(n), *lt = tf(n);
        es__threads_set(1);
        es__net_forward(a2, n, emb, dense, l1);
        int rc = twin_run(a, b, n, emb, dense, d, la, lb, ga, gb, ne);
        es__threads_set(threads);
        CHECK_MSG(rc == 0, "%s, 1 thread: twin nets differ (stage %d)", es__net_kind_name(p.kind), rc);
        es__net_forward(a2, n, emb, dense, lt);
        for (int i = 0; i < n; i++)
            CHECK_MSG(es_test_close(l1[i], lt[i], 1e-5, 1e-5), "%s row %d: 1 thread %g, %d threads %g",
                      es__net_kind_name(p.kind), i, l1[i], threads, lt[i]);
    }
}

TEST(model_tensors_cover_every_byte_once) {
    static const es_optim opts[] = {ES_OPT_SGD, ES_OPT_ADAGRAD, ES_OPT_ADAM};
    for (int kind = 0; kind < 4; kind++)
        for (size_t o = 0; o < 3; o++) {
            es_net_params p = es__net_params_default((es_net_kind)kind, 13, 26, 16);
            p.opt.kind = opts[o];
            es_net *net = tnet(&p);
            CHECK(net);
            int need = es__net_tensors(net, NULL, 0);
            CHECK(need > 0 && need <= 256);
            es_tensor_ref refs[256];
            CHECK_EQ_INT(es__net_tensors(net, refs, 256), need);
            CHECK_EQ_INT(es__net_tensors(net, refs, 2), 2); /* never more than max */
            es__net_tensors(net, refs, 256);
            size_t np = es__net_n_params(net), pbytes = 0, sbytes = 0;
            unsigned char *seen = calloc(np, 1);
            CHECK(seen);
            track(&arena, &arena_n, &arena_cap, seen);
            const char *base = (const char *)es__net_params_ptr(net);
            for (int i = 0; i < need; i++) {
                for (int j = 0; j < i; j++) CHECK_MSG(strcmp(refs[i].name, refs[j].name) != 0, "duplicate %s", refs[i].name);
                uint64_t cnt = 1;
                for (int d = 0; d < refs[i].ndim; d++) cnt *= refs[i].shape[d];
                CHECK_EQ_INT(refs[i].nbytes, cnt * (refs[i].dtype == ES_DT_I64 ? 8 : 4));
                if (strncmp(refs[i].name, "opt.", 4) == 0) {
                    sbytes += refs[i].nbytes;
                    continue;
                }
                CHECK(refs[i].dtype == ES_DT_F32);
                pbytes += refs[i].nbytes;
                size_t off = (size_t)((const char *)refs[i].data - base) / sizeof(float);
                CHECK(off + cnt <= np);
                for (size_t j = off; j < off + cnt; j++) {
                    CHECK_MSG(!seen[j], "param %zu listed twice (%s)", j, refs[i].name);
                    seen[j] = 1;
                }
            }
            CHECK_EQ_INT(pbytes, es__net_param_bytes(net));
            CHECK_EQ_INT(pbytes, np * sizeof(float));
            CHECK_EQ_INT(sbytes, es__net_state_bytes(net));
            for (size_t j = 0; j < np; j++) CHECK(seen[j]);
        }
    /* names and shapes of the defaults, as documented */
    es_net_params p = es__net_params_default(ES_NET_DLRM, 13, 26, 16);
    es_net *net = tnet(&p);
    CHECK(net);
    es_tensor_ref refs[64];
    int nr = es__net_tensors(net, refs, 64);
    CHECK_EQ_INT(nr, 3 * 10 + 1); /* 5 layers x (w, b), each with m and v, plus the step */
    CHECK(strcmp(refs[0].name, "net.bottom.0.w") == 0 && refs[0].shape[0] == 64 && refs[0].shape[1] == 13);
    CHECK(strcmp(refs[3].name, "net.bottom.1.b") == 0 && refs[3].ndim == 1 && refs[3].shape[0] == 16);
    CHECK(strcmp(refs[4].name, "net.top.0.w") == 0 && refs[4].shape[0] == 64 && refs[4].shape[1] == 16 + 27 * 26 / 2);
    CHECK(strcmp(refs[8].name, "net.top.2.w") == 0 && refs[8].shape[0] == 1 && refs[8].shape[1] == 32);
    CHECK(strcmp(refs[10].name, "opt.net.bottom.0.w.m") == 0);
    CHECK(strcmp(refs[11].name, "opt.net.bottom.0.w.v") == 0);
    CHECK(strcmp(refs[nr - 1].name, "opt.net.step") == 0 && refs[nr - 1].dtype == ES_DT_I64);
}

TEST(model_flops_per_row) {
    es_net_params p = es__net_params_default(ES_NET_DLRM, 13, 26, 16);
    es_net *net = tnet(&p);
    CHECK(net);
    double want = 13 * 64 + 64 * 16 + 367.0 * 64 + 64 * 32 + 32 * 1 + 351.0 * 16;
    CHECK_NEAR(es__net_flops_per_row(net), want, 0);
    es_net_params q = es__net_params_default(ES_NET_DCN, 2, 3, 4);
    es_net *dcn = tnet(&q);
    CHECK(dcn);
    CHECK_NEAR(es__net_flops_per_row(dcn), 2 * (14.0 * 14 + 14) + 14 * 64 + 64 * 32 + 32, 0);
    es_net_params l = es__net_params_default(ES_NET_LR, 13, 26, 16);
    es_net *lr = tnet(&l);
    CHECK(lr);
    CHECK_NEAR(es__net_flops_per_row(lr), 13 + 26, 0);
}

/* ---- parameters and failures --------------------------------------------------------------------- */

TEST(model_kinds_defaults_and_validation) {
    es_net_kind k;
    CHECK(es__net_kind_parse("dlrm", &k) == 0 && k == ES_NET_DLRM);
    CHECK(es__net_kind_parse("DCN-v2", &k) == 0 && k == ES_NET_DCN);
    CHECK(es__net_kind_parse("dcnv2", &k) == 0 && k == ES_NET_DCN);
    CHECK(es__net_kind_parse("fm", &k) == 0 && k == ES_NET_FM);
    CHECK(es__net_kind_parse("lr", &k) == 0 && k == ES_NET_LR);
    CHECK(es__net_kind_parse("ffm", &k) == 0 && k == ES_NET_FFM);
    CHECK(es__net_kind_parse("xgboost", &k) == ES_EINVAL);
    for (int i = 0; i <= ES_NET_FFM; i++) {
        CHECK(es__net_kind_parse(es__net_kind_name((es_net_kind)i), &k) == 0 && (int)k == i);
    }
    CHECK_EQ_INT(es__net_emb_dim(ES_NET_LR, 26, 16), 1);
    CHECK_EQ_INT(es__net_emb_dim(ES_NET_FM, 26, 16), 17);
    CHECK_EQ_INT(es__net_emb_dim(ES_NET_DLRM, 26, 16), 16);
    CHECK_EQ_INT(es__net_emb_dim(ES_NET_DCN, 26, 16), 16);
    CHECK_EQ_INT(es__net_emb_dim(ES_NET_FFM, 26, 4), 1 + 26 * 4);

    es_net_params p = es__net_params_default(ES_NET_DLRM, 13, 26, 16);
    CHECK(p.n_bottom == 2 && p.bottom[0] == 64 && p.bottom[1] == 16);
    CHECK(p.n_top == 2 && p.top[0] == 64 && p.top[1] == 32 && p.n_cross == 2 && p.max_batch == 256);
    CHECK(p.opt.kind == ES_OPT_ADAM && p.opt.lr == 1e-3f && p.opt.beta1 == 0.9f && p.opt.beta2 == 0.999f &&
          p.opt.eps == 1e-8f && p.weight_decay == 0.0f);

    es_err err;
    es_net *net = (es_net *)&err; /* must be set to NULL on failure */
    es_net_params q = p;
    q.bottom[1] = 8; /* bottom must end in k */
    CHECK(es__net_create(&net, &q, &err) == ES_EINVAL && net == NULL);
    CHECK_STR_HAS(err.msg, "bottom");
    q = es__net_params_default(ES_NET_DLRM, 0, 1, 4); /* nothing to interact */
    CHECK(es__net_create(&net, &q, &err) == ES_EINVAL);
    q = p;
    q.n_top = ES_NET_MAX_LAYERS + 1;
    CHECK(es__net_create(&net, &q, &err) == ES_EINVAL);
    CHECK_STR_HAS(err.msg, "top");
    q = p;
    q.max_batch = 0;
    CHECK(es__net_create(&net, &q, &err) == ES_EINVAL);
    q = p;
    q.opt.kind = ES_OPT_ROWWISE_ADAGRAD;
    CHECK(es__net_create(&net, &q, &err) == ES_EINVAL);
    CHECK_STR_HAS(err.msg, "optimizer");
    q = p;
    q.opt.beta2 = 1.0f;
    CHECK(es__net_create(&net, &q, &err) == ES_EINVAL);
    q = p;
    q.weight_decay = -1.0f;
    CHECK(es__net_create(&net, &q, &err) == ES_EINVAL);
    q = es__net_params_default(ES_NET_DCN, 3, 2, 4);
    q.n_cross = -1;
    CHECK(es__net_create(&net, &q, &err) == ES_EINVAL);
    q = es__net_params_default(ES_NET_FM, 3, 0, 4);
    CHECK(es__net_create(&net, &q, &err) == ES_EINVAL);
    CHECK(es__net_create(NULL, &p, &err) == ES_EINVAL);
    es__net_free(NULL);
}

TEST(model_create_survives_every_allocation_failure) {
    for (int kind = 0; kind < 4; kind++) {
        es_net_params p = es__net_params_default((es_net_kind)kind, 3, 4, 5);
        int ok = 0;
        for (uint64_t at = 1; at < 50 && !ok; at++) {
            es_net *net = NULL;
            es_err err;
            es__alloc_fail_at(at);
            int rc = es__net_create(&net, &p, &err);
            es__alloc_fail_at(0);
            if (rc == 0) {
                ok = 1;
                es__net_free(net);
            } else {
                CHECK_MSG(rc == ES_ENOMEM && net == NULL, "%s: fail at %llu gave %d", es__net_kind_name(p.kind),
                          (unsigned long long)at, rc);
            }
        }
        CHECK(ok);
    }
}

/* ---- learning sanity --------------------------------------------------------------------------------- */

/* A small synthetic problem: the label is the sign of a function of the
 * numeric features (a linear part and a product) plus, for the models
 * that can see it, the dot product of the first two field embeddings.
 * A few hundred Adam steps on the dense parameters must cut the loss to
 * well under half of where it started. */
TEST(model_learns_a_separable_problem) {
    const int N = 512, D = 2, F = 3, k = 4, B = 64, epochs = 40;
    es_rng r;
    es__rng_seed(&r, 41);
    for (int kind = 0; kind < 4; kind++) {
        es_net_params p = es__net_params_default((es_net_kind)kind, D, F, k);
        p.max_batch = B;
        p.opt.lr = 0.01f;
        es_net *net = tnet(&p);
        CHECK(net);
        int E = es__net_emb_dim(p.kind, p.n_fields, k);
        /* LR/FM see first-order terms emb[f][0] that they cannot reweight: keep them small */
        float *emb = tf_rand(&r, (size_t)N * F * E, kind <= ES_NET_FM ? 0.05f : 1.0f);
        float *dense = tf_rand(&r, (size_t)N * D, 1), *y = tf(N), *lg = tf(B), *dl = tf(B), *demb = tf((size_t)B * F * E);
        for (int i = 0; i < N; i++) {
            const float *x = dense + i * D, *e = emb + (size_t)i * F * E;
            double s = 1.5 * x[0] - x[1] + 0.3;
            if (kind >= ES_NET_DLRM) s = 0.5 * s + dotd(e, e + k, k);
            y[i] = s > 0 ? 1.0f : 0.0f;
        }
        double first = 0, last = 0;
        for (int ep = 0; ep < epochs; ep++) {
            double tot = 0;
            for (int b0 = 0; b0 < N; b0 += B) {
                es__net_forward(net, B, emb + (size_t)b0 * F * E, dense + b0 * D, lg);
                tot += es__bce_logits(lg, y + b0, B, dl) * B;
                es__net_backward(net, B, emb + (size_t)b0 * F * E, dense + b0 * D, dl, demb);
                es__net_step(net);
            }
            if (ep == 0) first = tot / N;
            last = tot / N;
        }
        printf("    %s: loss %.4f -> %.4f after %d steps\n", es__net_kind_name(p.kind), first, last, epochs * N / B);
        CHECK_MSG(last < 0.5 * first && last < 0.35, "%s did not learn: %.4f -> %.4f", es__net_kind_name(p.kind), first,
                  last);
    }
}

/* The vector optimizer updates perform the reference's operations in the
 * same order: same bits, over awkward lengths so every tail runs. */
TEST(model_optimizer_kernels_match_ref) {
    static const size_t lens[] = {1, 3, 7, 8, 15, 16, 17, 33, 100, 4097, 70001};
    es_rng r;
    es__rng_seed(&r, 51);
    for (size_t li = 0; li < ES_ARRAY_LEN(lens); li++) {
        size_t n = lens[li];
        float *g = tf_rand(&r, n, 1), *w1 = tf_rand(&r, n, 1), *w2 = tf(n), *m1 = tf_rand(&r, n, 0.1f), *m2 = tf(n);
        float *v1 = tf(n), *v2 = tf(n);
        for (size_t i = 0; i < n; i++) v1[i] = (float)es__rng_uniform(&r) * 0.01f;
        memcpy(w2, w1, n * sizeof(float));
        memcpy(m2, m1, n * sizeof(float));
        memcpy(v2, v1, n * sizeof(float));
        for (int t = 1; t <= 3; t++) {
            es__adam_update(w1, g, m1, v1, n, 1e-2f, 0.9f, 0.999f, 1e-8f, 0.01f, t);
            es__adam_update_ref(w2, g, m2, v2, n, 1e-2f, 0.9f, 0.999f, 1e-8f, 0.01f, t);
        }
        CHECK_MSG(memcmp(w1, w2, n * sizeof(float)) == 0 && memcmp(m1, m2, n * sizeof(float)) == 0 &&
                      memcmp(v1, v2, n * sizeof(float)) == 0,
                  "adam n=%zu differs from ref", n);
        es__adagrad_update(w1, g, v1, n, 0.05f, 1e-10f, 0.01f);
        es__adagrad_update_ref(w2, g, v2, n, 0.05f, 1e-10f, 0.01f);
        CHECK_MSG(memcmp(w1, w2, n * sizeof(float)) == 0 && memcmp(v1, v2, n * sizeof(float)) == 0,
                  "adagrad n=%zu differs from ref", n);
    }
}
