/*
 * test_optim.c — the optimizer layer (src/optim/) and the CPU probe
 * (core/simd.h):
 *   - es__dense_opt gives the same bits as calling the plain kernels per
 *     segment by hand, over awkward segment sizes (SIMD tails), several
 *     segments and groups, with and without weight decay, SGD / Adagrad /
 *     Adam, several steps; marked steps touch only what is marked;
 *   - es__row_update against a scalar reference, and es__rows_update
 *     (storage) going through it;
 *   - es__cpu_get applies ES_SIMD (make check reruns this with
 *     ES_SIMD=avx2 and ES_SIMD=ref).
 */
#include "test.h"
#include "core/core.h"
#include "core/simd.h"
#include "index/distance.h"
#include "optim/optim.h"
#include "storage/storage.h"

static const size_t seg_sizes[] = {1, 3, 7, 15, 17, 33};
#define N_SEGS ((int)(sizeof seg_sizes / sizeof seg_sizes[0]))

static void fill(es_rng *r, float *x, size_t n, float a) {
    for (size_t i = 0; i < n; i++) x[i] = (float)((es__rng_uniform(r) * 2.0 - 1.0) * a);
}

static int same(const float *a, const float *b, size_t n) { return memcmp(a, b, n * sizeof(float)) == 0; }

static es_optim_params dense_params(es_optim kind) {
    es_optim_params p = {.kind = kind, .lr = 0.01f, .eps = 1e-8f, .beta1 = 0.9f, .beta2 = 0.999f, .init_acc = 0.0f};
    if (kind == ES_OPT_ADAGRAD) {
        p.lr = 0.05f;
        p.eps = 1e-10f;
        p.init_acc = 0.1f;
    }
    return p;
}

/* The plain kernels by hand on one segment: what es__dense_opt must equal. */
static void ref_seg_update(const es_optim_params *p, float wd, float *w, const float *g, float *s0, float *s1, size_t n,
                           int64_t t) {
    switch (p->kind) {
    case ES_OPT_SGD:
        for (size_t i = 0; i < n; i++) {
            float gi = g[i] + wd * w[i];
            w[i] -= p->lr * gi;
        }
        break;
    case ES_OPT_ADAGRAD: es__adagrad_update_ref(w, g, s0, n, p->lr, p->eps, wd); break;
    case ES_OPT_ADAM: es__adam_update_ref(w, g, s0, s1, n, p->lr, p->beta1, p->beta2, p->eps, wd, t); break;
    default: break;
    }
}

/* Every segment every step: the net's use. */
TEST(optim_dense_opt_matches_kernels) {
    const es_optim kinds[] = {ES_OPT_SGD, ES_OPT_ADAGRAD, ES_OPT_ADAM};
    const float wds[] = {0.0f, 0.01f};
    size_t n = 0;
    for (int i = 0; i < N_SEGS; i++) n += seg_sizes[i];
    n += 5; /* a tail no segment covers: never touched */
    float *w = es__malloc(n * sizeof(float)), *g = es__malloc(n * sizeof(float));
    float *rw = es__malloc(n * sizeof(float)), *rg = es__malloc(n * sizeof(float));
    float *r0 = es__calloc(n, sizeof(float)), *r1 = es__calloc(n, sizeof(float));
    CHECK(w && g && rw && rg && r0 && r1);
    for (size_t ki = 0; ki < ES_ARRAY_LEN(kinds); ki++)
        for (size_t wi = 0; wi < ES_ARRAY_LEN(wds); wi++) {
            const es_optim_params p = dense_params(kinds[ki]);
            const float wd = wds[wi];
            es_rng r;
            es__rng_seed(&r, 7 + ki * 2 + wi);
            fill(&r, w, n, 1.0f);
            memcpy(rw, w, n * sizeof(float));
            memset(g, 0, n * sizeof(float));
            for (size_t i = 0; i < n; i++) r0[i] = kinds[ki] == ES_OPT_ADAGRAD ? p.init_acc : 0.0f, r1[i] = 0.0f;
            es__dense_opt o;
            CHECK_EQ_INT(es__dense_opt_init(&o, &p, wd, w, g, n, N_SEGS, 2), ES_OK);
            size_t off = 0;
            for (int i = 0; i < N_SEGS; i++) {
                /* odd segments are "biases" (no decay); groups alternate */
                CHECK_EQ_INT(es__dense_opt_add_seg(&o, off, seg_sizes[i], i % 2 == 0, i % 2), i);
                off += seg_sizes[i];
            }
            for (int64_t t = 1; t <= 4; t++) {
                fill(&r, g, off, 0.5f);
                memcpy(rg, g, n * sizeof(float));
                es__dense_opt_step(&o);
                size_t at = 0;
                for (int i = 0; i < N_SEGS; i++) {
                    ref_seg_update(&p, i % 2 == 0 ? wd : 0.0f, rw + at, rg + at, r0 + at, r1 + at, seg_sizes[i], t);
                    at += seg_sizes[i];
                }
                CHECK_MSG(same(w, rw, n), "kind %d wd %g step %lld: weights differ from the kernels",
                          (int)kinds[ki], (double)wd, (long long)t);
                for (int a = 0; a < es__dense_opt_n_states(&o); a++)
                    CHECK_MSG(same(es__dense_opt_state(&o, a), a ? r1 : r0, n), "kind %d wd %g step %lld: state %s differs",
                              (int)kinds[ki], (double)wd, (long long)t, es__dense_opt_state_name(&o, a));
                for (size_t i = 0; i < n; i++) CHECK_MSG(g[i] == 0.0f, "gradient %zu not zeroed after the step", i);
                if (kinds[ki] == ES_OPT_ADAM) {
                    CHECK_EQ_INT(es__dense_opt_steps(&o)[0], t);
                    CHECK_EQ_INT(es__dense_opt_steps(&o)[1], t);
                }
            }
            es__dense_opt_free(&o);
        }
    printf("    %d segments of 1..33 floats, sgd/adagrad/adam, wd 0 and 0.01, 4 steps: same bits as the kernels\n",
           N_SEGS);
    es__free(w);
    es__free(g);
    es__free(rw);
    es__free(rg);
    es__free(r0);
    es__free(r1);
}

/* Marked steps (DHE marks networks = groups, MDE marks projections =
 * segments): only what is marked moves; a group's count advances when any
 * of its segments steps. */
TEST(optim_dense_opt_step_marked) {
    const es_optim_params p = dense_params(ES_OPT_ADAM);
    size_t n = 0;
    for (int i = 0; i < N_SEGS; i++) n += seg_sizes[i];
    float *w = es__malloc(n * sizeof(float)), *g = es__calloc(n, sizeof(float));
    float *rw = es__malloc(n * sizeof(float)), *rg = es__malloc(n * sizeof(float));
    float *r0 = es__calloc(n, sizeof(float)), *r1 = es__calloc(n, sizeof(float));
    CHECK(w && g && rw && rg && r0 && r1);
    es_rng r;
    es__rng_seed(&r, 99);
    fill(&r, w, n, 1.0f);
    memcpy(rw, w, n * sizeof(float));
    es__dense_opt o;
    CHECK_EQ_INT(es__dense_opt_init(&o, &p, 0.01f, w, g, n, N_SEGS, 3), ES_OK);
    size_t offs[N_SEGS], off = 0;
    for (int i = 0; i < N_SEGS; i++) {
        offs[i] = off;
        es__dense_opt_add_seg(&o, off, seg_sizes[i], 1, i % 3); /* groups {0,3} {1,4} {2,5} */
        off += seg_sizes[i];
    }
    int64_t rt[3] = {0, 0, 0};
    /* round 0: group 1 marked; round 1: segment 2 (group 2) and segment 3
     * (group 0) marked; round 2: nothing; round 3: group 0 and segment 5 */
    for (int round = 0; round < 4; round++) {
        int stepped[N_SEGS] = {0};
        if (round == 0) es__dense_opt_mark_group(&o, 1), stepped[1] = stepped[4] = 1;
        if (round == 1) es__dense_opt_mark(&o, 2), es__dense_opt_mark(&o, 3), stepped[2] = stepped[3] = 1;
        if (round == 3) es__dense_opt_mark_group(&o, 0), es__dense_opt_mark(&o, 5), stepped[0] = stepped[3] = stepped[5] = 1;
        /* gradients only where a step will use them (as DHE and MDE do) */
        for (int i = 0; i < N_SEGS; i++)
            if (stepped[i]) fill(&r, g + offs[i], seg_sizes[i], 0.5f);
        memcpy(rg, g, n * sizeof(float));
        int adv[3] = {0, 0, 0};
        for (int i = 0; i < N_SEGS; i++) adv[i % 3] |= stepped[i];
        for (int gr = 0; gr < 3; gr++) rt[gr] += adv[gr];
        es__dense_opt_step_marked(&o);
        for (int i = 0; i < N_SEGS; i++)
            if (stepped[i]) ref_seg_update(&p, 0.01f, rw + offs[i], rg + offs[i], r0 + offs[i], r1 + offs[i], seg_sizes[i], rt[i % 3]);
        CHECK_MSG(same(w, rw, n), "round %d: weights differ", round);
        CHECK_MSG(same(es__dense_opt_state(&o, 0), r0, n) && same(es__dense_opt_state(&o, 1), r1, n),
                  "round %d: adam state differs", round);
        for (int gr = 0; gr < 3; gr++) CHECK_EQ_INT(es__dense_opt_steps(&o)[gr], rt[gr]);
        for (size_t i = 0; i < n; i++) CHECK_MSG(g[i] == 0.0f, "round %d: gradient %zu not zeroed", round, i);
    }
    printf("    step counts after 4 marked rounds: %lld %lld %lld\n", (long long)rt[0], (long long)rt[1], (long long)rt[2]);
    es__dense_opt_free(&o);
    es__free(w);
    es__free(g);
    es__free(rw);
    es__free(rg);
    es__free(r0);
    es__free(r1);
}

TEST(optim_dense_opt_accounting) {
    float w[40], g[40] = {0};
    const struct {
        es_optim kind;
        int n_states;
        size_t bytes; /* for n = 40, 3 groups */
    } cases[] = {{ES_OPT_SGD, 0, 0}, {ES_OPT_ADAGRAD, 1, 160}, {ES_OPT_ADAM, 2, 320 + 24}};
    for (size_t c = 0; c < ES_ARRAY_LEN(cases); c++) {
        es_optim_params p = dense_params(cases[c].kind);
        es__dense_opt o;
        CHECK_EQ_INT(es__dense_opt_init(&o, &p, 0.0f, w, g, 40, 2, 3), ES_OK);
        CHECK_EQ_INT(es__dense_opt_n_states(&o), cases[c].n_states);
        CHECK_EQ_INT(es__dense_opt_state_bytes(&o), cases[c].bytes);
        CHECK((es__dense_opt_steps(&o) != NULL) == (cases[c].kind == ES_OPT_ADAM));
        CHECK(es__dense_opt_alloc_bytes(cases[c].kind, 40, 2, 3) >= cases[c].bytes);
        if (cases[c].kind == ES_OPT_ADAGRAD) CHECK(!strcmp(es__dense_opt_state_name(&o, 0), "acc"));
        if (cases[c].kind == ES_OPT_ADAM)
            CHECK(!strcmp(es__dense_opt_state_name(&o, 0), "m") && !strcmp(es__dense_opt_state_name(&o, 1), "v"));
        es__dense_opt_free(&o);
        es__dense_opt_free(&o); /* freed twice: a no-op */
    }
    es_optim_params bad = dense_params(ES_OPT_ROWWISE_ADAGRAD);
    es__dense_opt o;
    CHECK_EQ_INT(es__dense_opt_init(&o, &bad, 0.0f, w, g, 40, 2, 1), ES_EINVAL);
    CHECK(o.block == NULL);
    es_optim_params ok = dense_params(ES_OPT_ADAM);
    CHECK_EQ_INT(es__dense_opt_init(&o, &ok, 0.0f, w, g, 40, 2, 0), ES_EINVAL);
    CHECK(es__dense_opt_alloc_bytes(ES_OPT_ADAM, SIZE_MAX / 2, 1, 1) == SIZE_MAX);
}

/* Scalar reference of the sparse row rules (sequential sums). */
static void row_ref(float *w, float *acc, const float *g, int dim, const es_optim_params *o) {
    switch (o->kind) {
    case ES_OPT_SGD:
        for (int d = 0; d < dim; d++) w[d] += -o->lr * g[d];
        break;
    case ES_OPT_ADAGRAD:
        for (int d = 0; d < dim; d++) {
            acc[d] += g[d] * g[d];
            w[d] -= o->lr * g[d] / (sqrtf(acc[d]) + o->eps);
        }
        break;
    case ES_OPT_ROWWISE_ADAGRAD: {
        float s = 0.0f;
        for (int d = 0; d < dim; d++) s += g[d] * g[d];
        acc[0] += s / (float)dim;
        const float step = -o->lr / (sqrtf(acc[0]) + o->eps);
        for (int d = 0; d < dim; d++) w[d] += step * g[d];
        break;
    }
    default: break;
    }
}

TEST(optim_row_update_matches_scalar) {
    const es_optim kinds[] = {ES_OPT_SGD, ES_OPT_ADAGRAD, ES_OPT_ROWWISE_ADAGRAD};
    const int ref_forced = es__cpu_level() == ES_CPU_REF;
    double worst = 0;
    for (size_t ki = 0; ki < ES_ARRAY_LEN(kinds); ki++)
        for (int si = 0; si < N_SEGS; si++) {
            const int dim = (int)seg_sizes[si];
            es_optim_params p = {.kind = kinds[ki], .lr = 0.05f, .eps = 1e-8f, .init_acc = 0.1f};
            float w1[33], w2[33], w3[33], a1[33], a2[33], a3[33], g[33];
            es_rng r;
            es__rng_seed(&r, 300 + ki * 40 + (uint64_t)si);
            fill(&r, w1, (size_t)dim, 1.0f);
            memcpy(w2, w1, sizeof w1);
            memcpy(w3, w1, sizeof w1);
            for (int d = 0; d < 33; d++) a1[d] = a2[d] = a3[d] = p.init_acc;
            for (int it = 0; it < 5; it++) {
                fill(&r, g, (size_t)dim, 0.5f);
                es__row_update(w1, a1, g, dim, &p);
                es__row_update_ref(w2, a2, g, dim, &p);
                row_ref(w3, a3, g, dim, &p);
            }
            /* the _ref twin is the scalar loops: same bits */
            CHECK_MSG(same(w2, w3, (size_t)dim) && same(a2, a3, (size_t)dim), "kind %d dim %d: ref twin differs",
                      (int)kinds[ki], dim);
            /* the dispatched one sums / multiply-adds in vector order */
            for (int d = 0; d < dim; d++) {
                double e = fabs((double)w1[d] - w3[d]) / (fabs((double)w3[d]) + 1e-3);
                if (e > worst) worst = e;
                CHECK_MSG(e < 1e-5, "kind %d dim %d: w[%d] %.9g vs scalar %.9g", (int)kinds[ki], dim, d, (double)w1[d],
                          (double)w3[d]);
            }
            if (ref_forced)
                CHECK_MSG(same(w1, w3, (size_t)dim) && same(a1, a3, (size_t)dim),
                          "kind %d dim %d: ES_SIMD=ref but not the scalar bits", (int)kinds[ki], dim);
        }
    printf("    worst relative difference from the scalar loops: %.3g%s\n", worst,
           ref_forced ? " (ES_SIMD=ref: bit for bit)" : "");
}

/* es__rows_update (storage/rows.c) is es__row_update on the row and its state. */
TEST(optim_rows_update_uses_row_update) {
    const es_optim kinds[] = {ES_OPT_SGD, ES_OPT_ADAGRAD, ES_OPT_ROWWISE_ADAGRAD};
    for (size_t ki = 0; ki < ES_ARRAY_LEN(kinds); ki++) {
        const int dim = 17;
        es_optim_params p = {.kind = kinds[ki], .lr = 0.05f, .eps = 1e-8f, .init_acc = 0.0f};
        es_rows t;
        es_rng r;
        es__rng_seed(&r, 5);
        CHECK_EQ_INT(es__rows_init(&t, 4, dim, &p, &r, 0.1f), ES_OK);
        float w[17], acc[17] = {0}, g[17];
        fill(&r, g, (size_t)dim, 0.5f);
        memcpy(w, t.w + 2 * dim, sizeof w);
        for (int it = 0; it < 3; it++) {
            es__rows_update(&t, 2, g);
            es__row_update(w, acc, g, dim, &p);
        }
        CHECK_MSG(same(w, t.w + 2 * dim, (size_t)dim), "kind %d: row differs", (int)kinds[ki]);
        if (kinds[ki] == ES_OPT_ADAGRAD) CHECK(same(acc, t.acc + 2 * dim, (size_t)dim));
        if (kinds[ki] == ES_OPT_ROWWISE_ADAGRAD) CHECK(acc[0] == t.acc[2] && t.acc[1] == 0.0f && t.acc[3] == 0.0f);
        es__rows_free(&t);
    }
}

/* es__row_update_range (a step's rows in one call) is es__row_update row
 * by row, bit for bit: every row optimizer, widths 1 (LR), 9 (FM 8 + its
 * linear weight), 17 and 157 (FFM), rows in a scattered order with some
 * skipped, a range that starts past 0. */
TEST(optim_row_update_range_matches_rows) {
    const es_optim kinds[] = {ES_OPT_SGD, ES_OPT_ADAGRAD, ES_OPT_ROWWISE_ADAGRAD, ES_OPT_FTRL};
    const int dims[] = {1, 9, 17, 157};
    enum { R = 40, N = 25 };
    for (size_t ki = 0; ki < ES_ARRAY_LEN(kinds); ki++)
        for (size_t di = 0; di < ES_ARRAY_LEN(dims); di++) {
            const int dim = dims[di];
            es_optim_params p = {.kind = kinds[ki], .lr = 0.05f, .eps = 1e-8f, .init_acc = 0.1f};
            es__optim_ftrl_defaults(&p);
            p.ftrl_l1 = 0.01f;
            const size_t per = es__row_state_floats(p.kind, dim);
            float *w1 = malloc(R * (size_t)dim * sizeof(float)), *w2 = malloc(R * (size_t)dim * sizeof(float));
            float *a1 = calloc(R * (per ? per : 1), sizeof(float)), *a2 = calloc(R * (per ? per : 1), sizeof(float));
            float *g = malloc(N * (size_t)dim * sizeof(float));
            uint64_t rows[N];
            CHECK(w1 && w2 && a1 && a2 && g);
            es_rng r;
            es__rng_seed(&r, 900 + ki * 10 + di);
            fill(&r, w1, R * (size_t)dim, 1.0f);
            memcpy(w2, w1, R * (size_t)dim * sizeof(float));
            for (size_t i = 0; i < R * per; i++) a1[i] = a2[i] = p.kind == ES_OPT_FTRL ? 0.0f : p.init_acc;
            for (int i = 0; i < N; i++) rows[i] = (uint64_t)((i * 7 + 3) % R); /* distinct */
            for (int it = 0; it < 3; it++) {
                fill(&r, g, N * (size_t)dim, 0.5f);
                es__row_update_range(w1, per ? a1 : NULL, rows, g, 2, N, dim, &p);
                for (int i = 2; i < N; i++)
                    es__row_update(w2 + rows[i] * (size_t)dim, per ? a2 + rows[i] * per : NULL, g + (size_t)i * dim, dim, &p);
            }
            CHECK_MSG(same(w1, w2, R * (size_t)dim) && same(a1, a2, R * per), "kind %d dim %d: the range update differs",
                      (int)kinds[ki], dim);
            free(w1);
            free(w2);
            free(a1);
            free(a2);
            free(g);
        }
}

TEST(optim_cpu_probe_respects_es_simd) {
    es__cpu c = es__cpu_probe("ref");
    CHECK(c.level == ES_CPU_REF && c.features == 0 && c.ref == 1);
    es__cpu a = es__cpu_probe("avx2"), best = es__cpu_probe(NULL);
    CHECK(a.level <= ES_CPU_AVX2 && (a.features & ES_CPU_AVX512_ALL) == 0 && !a.ref);
    CHECK((a.features & ~best.features) == 0 && !best.ref); /* avx2 only takes away */
    CHECK(a.level <= best.level);
    if (best.level == ES_CPU_AVX512) CHECK(best.features & ES_CPU_AVX512F);
    if (a.level == ES_CPU_AVX2) CHECK((a.features & ES_CPU_AVX2F) && (a.features & ES_CPU_FMA));
    /* the cached answer is the probe of this process's ES_SIMD, and every
     * dispatcher follows it */
    const char *env = getenv("ES_SIMD");
    es__cpu now = es__cpu_get(), fresh = es__cpu_probe(env);
    CHECK(now.level == fresh.level && now.features == fresh.features && now.ref == fresh.ref);
    static const char *const names[] = {"ref", "avx2", "avx512"};
    CHECK_MSG(!strcmp(es__simd_level(), names[now.level]), "simd %s, probe %s", es__simd_level(), names[now.level]);
    if (env && !strcmp(env, "ref")) {
        CHECK(es__cpu_level() == ES_CPU_REF && now.ref);
        CHECK(!strcmp(es__index_simd_level(), "ref"));
    }
    if (env && !strcmp(env, "avx2")) {
        CHECK(es__cpu_level() <= ES_CPU_AVX2);
        CHECK(strcmp(es__index_simd_level(), "avx512") != 0);
    }
    printf("    ES_SIMD=%s: level %s, features 0x%x (the CPU alone: %s, 0x%x)\n", env ? env : "(unset)", names[now.level],
           now.features, names[best.level], best.features);
}
