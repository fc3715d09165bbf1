/*
 * storage_harness.c — the generic storage-method checks declared in
 * storage_harness.h: finite-difference gradients, byte budgets, save/load
 * round trips through tensors() and meta, determinism, thread safety of
 * lookups and allocation-failure sweeps, for any method in the registry.
 *
 * Everything is driven through the public storage interface
 * (es__storage_create / lookup / backward / tensors / after_load), never a
 * method's internals, so a pass means the method keeps the contracts of
 * storage.h as every caller sees them.
 */
#include "storage_harness.h"

#include "alloc_sweep.h"
#include "test.h"

#include <pthread.h>

/* ---- synthetic data ------------------------------------------------------------ */

uint64_t es_sh_distinct(int f) {
    static const uint64_t d[] = {37, 5000, 5, 800, 20000, 120};
    return d[(size_t)f % ES_ARRAY_LEN(d)];
}

uint64_t es_sh_key(int f, uint64_t i) { return es__mix64(((uint64_t)(uint32_t)f << 40) + i + 1); }

es_vocab *es_sh_vocab(int F) {
    uint64_t rows = 0;
    for (int f = 0; f < F; f++) rows = ES_MAX(rows, es_sh_distinct(f));
    es_batch b;
    if (es_batch_alloc(&b, (int)rows, 0, F, (size_t)rows * (size_t)F) != 0) return NULL;
    uint32_t o = 0;
    for (uint64_t r = 0; r < rows; r++)
        for (int f = 0; f < F; f++) {
            b.off[r * (uint64_t)F + (uint64_t)f] = o;
            b.val[o] = es_sh_key(f, r % es_sh_distinct(f));
            b.wt[o] = 1.0f;
            o++;
        }
    b.off[rows * (uint64_t)F] = o;
    b.n = (int)rows;
    es_vocab *v = NULL;
    if (es_vocab_create(&v, F) == 0 && es_vocab_add_batch(v, &b) != 0) {
        es_vocab_free(v);
        v = NULL;
    }
    es_batch_free(&b);
    return v;
}

int es_sh_batch(es_batch *b, int n, int F, uint64_t seed) {
    int rc = es_batch_alloc(b, n, 0, F, (size_t)n * (size_t)F * 6);
    if (rc) return rc;
    es_rng r;
    es__rng_seed(&r, seed);
    uint32_t o = 0;
    for (int row = 0; row < n; row++)
        for (int f = 0; f < F; f++) {
            b->off[row * F + f] = o;
            const int kind = f % 3; /* 0: single, weight 1; 1: multi, weighted; 2: single, weighted */
            const int m = kind == 1 ? (int)(es__rng_u64(&r) % 6) : 1;
            const uint64_t popular = ES_MIN(es_sh_distinct(f), kind == 1 ? 20u : 8u);
            for (int i = 0; i < m; i++) {
                uint64_t u = es__rng_u64(&r) % 12;
                uint64_t key;
                if (u == 0)
                    key = es_sh_key(f, es_sh_distinct(f) + es__rng_u64(&r) % 1000); /* never seen */
                else if (u == 1)
                    key = es_sh_key(0, 0); /* the same raw key in every field */
                else
                    key = es_sh_key(f, es__rng_u64(&r) % popular);
                if (kind == 1 && i > 0 && es__rng_u64(&r) % 3 == 0) key = b->val[o - 1];
                b->val[o] = key;
                b->wt[o] = kind == 0 ? 1.0f : (float)(0.25 + 1.25 * es__rng_uniform(&r));
                o++;
            }
        }
    b->off[n * F] = o;
    b->n = n;
    return 0;
}

/* ---- configuration ---------------------------------------------------------------- */

es_sh_cfg es_sh_cfg_make(const char *method, int share) {
    es_sh_cfg c;
    memset(&c, 0, sizeof c);
    c.method = method;
    c.share = share;
    c.n_fields = 4;
    c.dim = 8;
    c.budget = 4096;
    c.seed = 7;
    c.use_vocab = 1;
    c.chunks = 1;
    c.max_batch = 64;
    c.init_scale = 0.05f;
    return c;
}

/* Does "k=v,..." give key? */
static int opts_has(const char *opts, const char *key) {
    size_t n = strlen(key);
    for (const char *p = opts; p && *p;) {
        if (!strncmp(p, key, n) && p[n] == '=') return 1;
        p = strchr(p, ',');
        if (p) p++;
    }
    return 0;
}

void es_sh_opt(es_storage_params *p, const char *key, long long v) {
    static char bufs[16][512];
    static int slot;
    if (es_storage_has_option(p->method, key) != 1) return;
    char *o = bufs[slot++ % 16];
    snprintf(o, sizeof bufs[0], "%s%s%s=%lld", p->opts ? p->opts : "", p->opts && *p->opts ? "," : "", key, v);
    p->opts = o;
}

es_storage_params es_sh_params(const es_sh_cfg *c) {
    /* share and chunks become options of the methods that take them; the
     * string lives in a rotating static buffer (tests run on one thread) */
    static char bufs[8][2048];
    static int slot;
    char *o = bufs[slot++ % 8];
    size_t n = (size_t)snprintf(o, sizeof bufs[0], "%s", c->opts ? c->opts : "");
    if (es_storage_has_option(c->method, "share") == 1 && !opts_has(c->opts, "share"))
        n += (size_t)snprintf(o + n, sizeof bufs[0] - n, "%sshare=%d", n ? "," : "", c->share);
    if (es_storage_has_option(c->method, "chunks") == 1 && !opts_has(c->opts, "chunks") && c->chunks > 1)
        snprintf(o + n, sizeof bufs[0] - n, "%schunks=%d", n ? "," : "", c->chunks);
    es_storage_params p = es__storage_params_default();
    p.method = c->method;
    p.n_fields = c->n_fields;
    p.dim = c->dim;
    p.budget = c->budget;
    p.seed = c->seed;
    p.opts = o;
    p.max_batch = c->max_batch;
    p.init_scale = c->init_scale;
    p.precision = c->precision;
    p.qtrain = c->qtrain;
    return p;
}

int es_sh_create(es_storage **s, const es_sh_cfg *c, const es_vocab *v, es_optim opt, float lr, es_err *err) {
    es_storage_params p = es_sh_params(c);
    p.opt.kind = opt;
    p.opt.lr = lr;
    return es__storage_create(s, &p, c->use_vocab ? v : NULL, err);
}

static const char *cfg_name(const es_sh_cfg *c) {
    static char buf[4][192];
    static int slot;
    char *b = buf[slot++ % 4];
    snprintf(b, sizeof buf[0], "%s share=%d%s%s%s%s%s%s", c->method, c->share, c->opts ? " " : "", c->opts ? c->opts : "",
             c->precision ? " " : "", c->precision ? es__prec_name(c->precision) : "", c->qtrain ? " " : "",
             c->qtrain ? es__qtrain_name(c->qtrain) : "");
    return b;
}

/* ---- tensor helpers ------------------------------------------------------------------ */

typedef struct {
    es_tensor_ref *refs;
    int n;
} tlist;

static int tlist_get(es_storage *s, tlist *t) {
    t->refs = NULL;
    t->n = es__storage_tensors(s, NULL, 0);
    if (t->n < 0) return 0;
    t->refs = calloc((size_t)t->n + 1, sizeof *t->refs);
    if (!t->refs) return 0;
    return es__storage_tensors(s, t->refs, t->n) == t->n;
}

static int is_param(const es_tensor_ref *r) { return r->dtype == ES_DT_F32 && strncmp(r->name, "opt.", 4) != 0; }
/* What the gradient check perturbs: the parameters, except the serving
 * tensors "serve.*" that tensors() derives from training parameters, plus
 * the learnable training-only tensors "opt.train.*" (pruned tables). */
static int is_learnable(const es_tensor_ref *r) {
    if (r->dtype != ES_DT_F32) return 0;
    if (strncmp(r->name, "opt.train.", 10) == 0) return 1;
    return is_param(r) && strncmp(r->name, "serve.", 6) != 0;
}

/* A code tensor ("*.q", u8) of a table at a precision: a parameter as served. */
static int is_codes(const es_tensor_ref *r) {
    const size_t nl = strlen(r->name);
    return r->dtype == ES_DT_U8 && nl >= 2 && !strcmp(r->name + nl - 2, ".q") && strncmp(r->name, "opt.", 4) != 0;
}

int es_sh_tensor_bytes(es_storage *s, size_t *param, size_t *state) {
    tlist t;
    *param = *state = 0;
    if (!tlist_get(s, &t)) {
        free(t.refs);
        return 0;
    }
    for (int i = 0; i < t.n; i++) {
        if (is_param(&t.refs[i]) || is_codes(&t.refs[i])) *param += t.refs[i].nbytes;
        if (strncmp(t.refs[i].name, "opt.", 4) == 0) *state += t.refs[i].nbytes;
    }
    free(t.refs);
    return 1;
}

static double loss_of(const float *out, const float *G, size_t n) {
    double L = 0;
    for (size_t i = 0; i < n; i++) L += (double)out[i] * G[i];
    return L;
}

static void fill_normal(float *x, size_t n, uint64_t seed) {
    es_rng r;
    es__rng_seed(&r, seed);
    for (size_t i = 0; i < n; i++) x[i] = es__rng_normal(&r);
}

/* ---- gradient check ---------------------------------------------------------------- */

#define SH_FD_MAX 3000

static int gradcheck_one(const es_sh_cfg *c, const es_vocab *v, uint64_t bseed) {
    const char *name = cfg_name(c);
    es_storage *s = NULL;
    es_err err;
    es_batch b;
    memset(&b, 0, sizeof b);
    tlist t = {0};
    float *G = NULL, *out = NULL, *old = NULL, *grad = NULL;
    char *state = NULL;
    size_t *pick = NULL, *off = NULL;
    int ok = 0;
    if (es_sh_create(&s, c, v, ES_OPT_SGD, 1.0f, &err) != 0) {
        es_test_fail(__FILE__, __LINE__, "%s: create: %s", name, err.msg);
        return 0;
    }
    if (es_sh_batch(&b, 8, c->n_fields, bseed) != 0 || !tlist_get(s, &t)) {
        es_test_fail(__FILE__, __LINE__, "%s: out of memory in the test", name);
        goto done;
    }
    const size_t nout = (size_t)b.n * (size_t)c->n_fields * (size_t)c->dim;
    /* parameters: the F32 non-"opt." tensors, concatenated */
    size_t total = 0;
    off = calloc((size_t)t.n + 1, sizeof *off);
    if (!off) goto done;
    for (int i = 0; i < t.n; i++) {
        off[i] = total;
        if (is_learnable(&t.refs[i])) total += t.refs[i].nbytes / sizeof(float);
    }
    off[t.n] = total;
    if (total == 0) {
        es_test_fail(__FILE__, __LINE__, "%s: no parameter tensors", name);
        goto done;
    }
    G = malloc(nout * sizeof *G);
    out = malloc(nout * sizeof *out);
    old = malloc(total * sizeof *old);
    grad = malloc(total * sizeof *grad);
    pick = malloc(total * sizeof *pick);
    if (!G || !out || !old || !grad || !pick) goto done;
    fill_normal(G, nout, bseed ^ 0x5555);
    for (int i = 0; i < t.n; i++)
        if (is_learnable(&t.refs[i])) memcpy(old + off[i], t.refs[i].data, t.refs[i].nbytes);
    /* F32 training state that a lookup may read (dpq's soft-mode queries)
     * goes back to the point of the check too */
    size_t nstate = 0;
    for (int i = 0; i < t.n; i++)
        if (t.refs[i].dtype == ES_DT_F32 && !is_learnable(&t.refs[i])) nstate += t.refs[i].nbytes;
    state = malloc(ES_MAX(nstate, (size_t)1));
    if (!state) goto done;
    for (size_t i = 0, o = 0; i < (size_t)t.n; i++)
        if (t.refs[i].dtype == ES_DT_F32 && !is_learnable(&t.refs[i])) {
            memcpy(state + o, t.refs[i].data, t.refs[i].nbytes);
            o += t.refs[i].nbytes;
        }
    if (es__storage_backward(s, &b, G) != 0) {
        es_test_fail(__FILE__, __LINE__, "%s: backward: %s", name, es__storage_errmsg(s));
        goto done;
    }
    size_t touched = 0;
    for (int i = 0; i < t.n; i++) {
        if (!is_learnable(&t.refs[i])) continue;
        const float *w = t.refs[i].data;
        size_t m = t.refs[i].nbytes / sizeof(float), nz = 0;
        for (size_t e = 0; e < m; e++) {
            grad[off[i] + e] = old[off[i] + e] - w[e];
            nz += grad[off[i] + e] != 0;
        }
        if (nz == 0) {
            es_test_fail(__FILE__, __LINE__, "%s: tensor %s (%zu floats) received no gradient", name, t.refs[i].name, m);
            goto done;
        }
        touched += nz;
        memcpy(t.refs[i].data, old + off[i], t.refs[i].nbytes); /* back to the point of the check */
    }
    for (size_t i = 0, o = 0; i < (size_t)t.n; i++)
        if (t.refs[i].dtype == ES_DT_F32 && !is_learnable(&t.refs[i])) {
            memcpy(t.refs[i].data, state + o, t.refs[i].nbytes);
            o += t.refs[i].nbytes;
        }
    /* Elements to check: all, or SH_FD_MAX of them, half drawn from the
     * touched ones (where mistakes show) and half from all. */
    size_t npick = 0;
    if (total <= SH_FD_MAX) {
        for (size_t e = 0; e < total; e++) pick[npick++] = e;
    } else {
        es_rng r;
        es__rng_seed(&r, bseed);
        size_t ntouched = 0;
        for (size_t e = 0; e < total; e++)
            if (grad[e] != 0) pick[ntouched++] = e;
        for (size_t i = 0; i < ntouched && i < SH_FD_MAX / 2; i++) { /* partial Fisher-Yates */
            size_t j = i + (size_t)(es__rng_u64(&r) % (ntouched - i));
            size_t tmp = pick[i];
            pick[i] = pick[j];
            pick[j] = tmp;
        }
        npick = ES_MIN(ntouched, (size_t)SH_FD_MAX / 2);
        while (npick < SH_FD_MAX) pick[npick++] = (size_t)(es__rng_u64(&r) % total);
    }
    const float h = 1e-2f;
    double worst = 0;
    for (size_t q = 0; q < npick; q++) {
        size_t e = pick[q];
        int ti = 0;
        while (off[ti + 1] <= e || !is_learnable(&t.refs[ti])) ti++;
        float *w = (float *)t.refs[ti].data + (e - off[ti]);
        const float w0 = *w;
        *w = w0 + h;
        es__storage_lookup(s, &b, 0, b.n, out);
        double lp = loss_of(out, G, nout);
        *w = w0 - h;
        es__storage_lookup(s, &b, 0, b.n, out);
        double lm = loss_of(out, G, nout);
        *w = w0;
        lp += c->arch_l1 * fabs((double)(w0 + h)); /* the penalty's term of this weight (the others cancel) */
        lm += c->arch_l1 * fabs((double)(w0 - h));
        double fd = (lp - lm) / ((double)(w0 + h) - (double)(w0 - h));
        double d = fabs(fd - grad[e]) / (1e-3 + fabs(fd));
        if (d > worst) worst = d;
        if (!es_test_close(fd, grad[e], 2e-4, 1e-3)) {
            es_test_fail(__FILE__, __LINE__, "%s: %s[%zu]: backward %.7g vs finite difference %.7g", name, t.refs[ti].name,
                         e - off[ti], grad[e], fd);
            goto done;
        }
    }
    printf("    grad %-34s %7zu params, %6zu with gradient, %4zu checked, worst rel err %.1e\n", name, total, touched, npick,
           worst);
    ok = 1;
done:
    if (!ok && !G) es_test_fail(__FILE__, __LINE__, "%s: out of memory in the test", name);
    free(G);
    free(out);
    free(old);
    free(grad);
    free(pick);
    free(off);
    free(state);
    free(t.refs);
    es_batch_free(&b);
    es__storage_free(s);
    return ok;
}

int es_sh_gradcheck(const es_sh_cfg *c) {
    es_vocab *v = c->use_vocab ? es_sh_vocab(c->n_fields) : NULL;
    if (c->use_vocab && !v) {
        es_test_fail(__FILE__, __LINE__, "out of memory building the vocabulary");
        return 0;
    }
    int ok = 1;
    for (uint64_t k = 0; k < 3 && ok; k++) ok = gradcheck_one(c, v, c->seed * 31 + k);
    es_vocab_free(v);
    return ok;
}

/* ---- architecture weights of a multi-stage method ------------------------------------ */

/* One check of ops->staged->arch_backward: with SGD at lr 1 the step moves
 * tensor `name` by minus its gradient of sum(out * G); every other F32
 * tensor read by the lookup must be left as it was, except the noise the
 * step redraws (restored for the finite differences with the rest). */
static int gradcheck_arch_one(const es_sh_cfg *c, const es_vocab *v, const char *name, uint64_t bseed) {
    const char *cn = cfg_name(c);
    es_storage *s = NULL;
    es_err err;
    es_batch b;
    memset(&b, 0, sizeof b);
    tlist t = {0};
    float *G = NULL, *out = NULL, *grad = NULL;
    char *snap = NULL;
    int ok = 0;
    if (es_sh_create(&s, c, v, ES_OPT_SGD, 1.0f, &err) != 0) {
        es_test_fail(__FILE__, __LINE__, "%s: create: %s", cn, err.msg);
        return 0;
    }
    const es__staged *sg = s->ops->staged;
    if (!sg || !sg->arch_backward) {
        es_test_fail(__FILE__, __LINE__, "%s: not a multi-stage method", cn);
        goto done;
    }
    if (es_sh_batch(&b, 8, c->n_fields, bseed) != 0 || !tlist_get(s, &t)) goto done;
    int ai = -1;
    size_t total = 0;
    for (int i = 0; i < t.n; i++) {
        if (t.refs[i].dtype == ES_DT_F32) total += t.refs[i].nbytes;
        if (!strcmp(t.refs[i].name, name)) ai = i;
    }
    if (ai < 0 || t.refs[ai].dtype != ES_DT_F32) {
        es_test_fail(__FILE__, __LINE__, "%s: no f32 tensor %s", cn, name);
        goto done;
    }
    const size_t nout = (size_t)b.n * (size_t)c->n_fields * (size_t)c->dim, na = t.refs[ai].nbytes / sizeof(float);
    G = malloc(nout * sizeof *G);
    out = malloc(nout * sizeof *out);
    grad = malloc(na * sizeof *grad);
    snap = malloc(total + 1);
    if (!G || !out || !grad || !snap) goto done;
    fill_normal(G, nout, bseed ^ 0x3333);
    for (int i = 0, o = 0; i < t.n; i++)
        if (t.refs[i].dtype == ES_DT_F32) {
            memcpy(snap + o, t.refs[i].data, t.refs[i].nbytes);
            o += (int)t.refs[i].nbytes;
        }
    if (sg->arch_backward(s, &b, G) != 0) {
        es_test_fail(__FILE__, __LINE__, "%s: arch_backward: %s", cn, es__storage_errmsg(s));
        goto done;
    }
    size_t nz = 0;
    for (int i = 0, o = 0; i < t.n; i++) {
        if (t.refs[i].dtype != ES_DT_F32) continue;
        const float *old = (const float *)(snap + o), *now = t.refs[i].data;
        const size_t m = t.refs[i].nbytes / sizeof(float);
        if (i == ai) {
            for (size_t e = 0; e < m; e++) nz += (grad[e] = old[e] - now[e]) != 0;
        } else if (strncmp(t.refs[i].name, "opt.", 4) != 0 && memcmp(old, now, t.refs[i].nbytes) != 0) {
            es_test_fail(__FILE__, __LINE__, "%s: the architecture step changed %s", cn, t.refs[i].name);
            goto done;
        }
        memcpy(t.refs[i].data, old, t.refs[i].nbytes);
        o += (int)t.refs[i].nbytes;
    }
    if (nz == 0) {
        es_test_fail(__FILE__, __LINE__, "%s: %s received no gradient", cn, name);
        goto done;
    }
    const float h = 1e-2f;
    double worst = 0;
    for (size_t e = 0; e < na; e++) {
        float *w = (float *)t.refs[ai].data + e;
        const float w0 = *w;
        *w = w0 + h;
        es__storage_lookup(s, &b, 0, b.n, out);
        double lp = loss_of(out, G, nout);
        *w = w0 - h;
        es__storage_lookup(s, &b, 0, b.n, out);
        double lm = loss_of(out, G, nout);
        *w = w0;
        lp += c->arch_l1 * fabs((double)(w0 + h)); /* the penalty's term of this weight (the others cancel) */
        lm += c->arch_l1 * fabs((double)(w0 - h));
        double fd = (lp - lm) / ((double)(w0 + h) - (double)(w0 - h));
        double d = fabs(fd - grad[e]) / (1e-3 + fabs(fd));
        if (d > worst) worst = d;
        if (!es_test_close(fd, grad[e], 2e-4, 2e-3)) {
            es_test_fail(__FILE__, __LINE__, "%s: %s[%zu]: arch_backward %.7g vs finite difference %.7g", cn, name, e, grad[e], fd);
            goto done;
        }
    }
    printf("    arch grad %-30s %s: %zu weights, %zu with gradient, worst rel err %.1e\n", cn, name, na, nz, worst);
    ok = 1;
done:
    free(G);
    free(out);
    free(grad);
    free(snap);
    free(t.refs);
    es_batch_free(&b);
    es__storage_free(s);
    return ok;
}

int es_sh_gradcheck_arch(const es_sh_cfg *c, const char *name) {
    es_vocab *v = c->use_vocab ? es_sh_vocab(c->n_fields) : NULL;
    int ok = 1;
    for (uint64_t k = 0; k < 3 && ok; k++) ok = gradcheck_arch_one(c, v, name, c->seed * 17 + k);
    es_vocab_free(v);
    return ok;
}

/* ---- budgets ------------------------------------------------------------------------ */

static int budget_one(const es_sh_cfg *c, const es_vocab *v, double budget, es_optim opt) {
    es_sh_cfg cc = *c;
    cc.budget = budget;
    cc.use_vocab = 1;
    es_storage *s;
    es_err err;
    if (es_sh_create(&s, &cc, v, opt, 0.05f, &err) != 0) {
        es_test_fail(__FILE__, __LINE__, "%s budget %g: create: %s", cfg_name(c), budget, err.msg);
        return 0;
    }
    size_t tp, ts;
    int ok = es_sh_tensor_bytes(s, &tp, &ts);
    const double B = s->budget_bytes;
    const double used = (double)s->param_bytes + (double)s->aux_bytes;
    if (opt == ES_OPT_ROWWISE_ADAGRAD)
        printf("    budget %-32s %10.0f B: params %9zu + aux %6zu = %5.1f%%, state %8zu\n", cfg_name(c), B, s->param_bytes,
               s->aux_bytes, 100.0 * used / B, s->state_bytes);
    if (!ok) {
        es_test_fail(__FILE__, __LINE__, "%s: cannot list tensors", cfg_name(c));
    } else if (tp != s->param_bytes) {
        es_test_fail(__FILE__, __LINE__, "%s budget %g: parameter tensors hold %zu bytes, param_bytes says %zu", cfg_name(c),
                     B, tp, s->param_bytes);
        ok = 0;
    } else if (ts != s->state_bytes) {
        es_test_fail(__FILE__, __LINE__, "%s budget %g opt %d: optimizer tensors hold %zu bytes, state_bytes says %zu",
                     cfg_name(c), B, (int)opt, ts, s->state_bytes);
        ok = 0;
    } else if (used > B) {
        es_test_fail(__FILE__, __LINE__, "%s: %.0f bytes over the %.0f-byte budget", cfg_name(c), used, B);
        ok = 0;
    } else if (used < 0.95 * B) {
        es_test_fail(__FILE__, __LINE__, "%s: %.0f bytes is more than 5%% below the %.0f-byte budget", cfg_name(c), used, B);
        ok = 0;
    }
    es__storage_free(s);
    return ok;
}

int es_sh_budget(const es_sh_cfg *c, const double *fracs, int n) {
    es_vocab *v = es_sh_vocab(c->n_fields);
    if (!v) {
        es_test_fail(__FILE__, __LINE__, "out of memory building the vocabulary");
        return 0;
    }
    const es_optim opts[] = {ES_OPT_ROWWISE_ADAGRAD, ES_OPT_ADAGRAD, ES_OPT_SGD};
    const double bytes[] = {20011, 300007};
    int ok = 1;
    for (int i = 0; i < n + (int)ES_ARRAY_LEN(bytes) && ok; i++)
        for (size_t o = 0; o < ES_ARRAY_LEN(opts) && ok; o++)
            ok = budget_one(c, v, i < n ? fracs[i] : bytes[i - n], opts[o]);
    if (ok) {
        es_sh_cfg cc = *c;
        cc.budget = 8;
        es_storage *s = NULL;
        es_err err;
        int rc = es_sh_create(&s, &cc, v, ES_OPT_ROWWISE_ADAGRAD, 0.05f, &err);
        if (rc != ES_EBUDGET || s) {
            es_test_fail(__FILE__, __LINE__, "%s: an 8-byte budget gave %d (%s), expected ES_EBUDGET", cfg_name(c), rc,
                         rc ? err.msg : "created");
            ok = 0;
        }
        es__storage_free(s);
    }
    es_vocab_free(v);
    return ok;
}

/* ---- save / load round trip ----------------------------------------------------------- */

static int train_steps(es_storage *s, const es_sh_cfg *c, int steps, uint64_t seed) {
    int ok = 1;
    for (int k = 0; k < steps && ok; k++) {
        es_batch b;
        if (es_sh_batch(&b, 16, c->n_fields, seed + (uint64_t)k) != 0) return 0;
        size_t nout = (size_t)b.n * (size_t)c->n_fields * (size_t)c->dim;
        float *G = malloc(nout * sizeof *G);
        if (!G) ok = 0;
        if (ok) {
            fill_normal(G, nout, seed * 7 + (uint64_t)k);
            if (es__storage_backward(s, &b, G) != 0) {
                es_test_fail(__FILE__, __LINE__, "%s: backward: %s", cfg_name(c), es__storage_errmsg(s));
                ok = 0;
            }
        }
        free(G);
        es_batch_free(&b);
    }
    return ok;
}

/* Lookups of a fixed batch by two storages are identical (out buffers
 * start with different garbage, so an unwritten slot also shows). */
static int same_lookups(es_storage *a, es_storage *b, const es_sh_cfg *c, uint64_t seed, const char *what) {
    es_batch bt;
    if (es_sh_batch(&bt, 24, c->n_fields, seed) != 0) return 0;
    size_t nout = (size_t)bt.n * (size_t)c->n_fields * (size_t)c->dim;
    float *oa = malloc(nout * sizeof *oa), *ob = malloc(nout * sizeof *ob);
    int ok = 0;
    if (oa && ob) {
        memset(oa, 0x7f, nout * sizeof *oa);
        memset(ob, 0x3c, nout * sizeof *ob);
        es__storage_lookup(a, &bt, 0, bt.n, oa);
        es__storage_lookup(b, &bt, 0, bt.n, ob);
        ok = memcmp(oa, ob, nout * sizeof *oa) == 0;
        if (!ok) {
            size_t i = 0;
            while (i < nout && memcmp(&oa[i], &ob[i], sizeof *oa) == 0) i++;
            es_test_fail(__FILE__, __LINE__, "%s: %s: lookups differ at output %zu: %.9g vs %.9g", cfg_name(c), what, i,
                         (double)oa[i], (double)ob[i]);
        }
    }
    free(oa);
    free(ob);
    es_batch_free(&bt);
    return ok;
}

/* All tensors of a and b have the same names, shapes and bytes. */
static int same_tensors(es_storage *a, es_storage *b, const es_sh_cfg *c, const char *what) {
    tlist ta, tb;
    int ok = tlist_get(a, &ta) & tlist_get(b, &tb);
    if (ok && ta.n != tb.n) {
        es_test_fail(__FILE__, __LINE__, "%s: %s: %d vs %d tensors", cfg_name(c), what, ta.n, tb.n);
        ok = 0;
    }
    for (int i = 0; ok && i < ta.n; i++) {
        const es_tensor_ref *x = &ta.refs[i], *y = &tb.refs[i];
        if (strcmp(x->name, y->name) != 0 || x->nbytes != y->nbytes || x->dtype != y->dtype) {
            es_test_fail(__FILE__, __LINE__, "%s: %s: tensor %d is %s (%zu bytes) vs %s (%zu bytes)", cfg_name(c), what, i,
                         x->name, x->nbytes, y->name, y->nbytes);
            ok = 0;
        } else if (memcmp(x->data, y->data, x->nbytes) != 0) {
            es_test_fail(__FILE__, __LINE__, "%s: %s: tensor %s differs", cfg_name(c), what, x->name);
            ok = 0;
        }
    }
    free(ta.refs);
    free(tb.refs);
    return ok;
}

static int roundtrip_one(const es_sh_cfg *c, es_storage *s1, double budget, const char *what) {
    char opts[ES_STORAGE_META_MAX + 512];
    snprintf(opts, sizeof opts, "%s%s%s", s1->meta, c->opts && *c->opts ? "," : "", c->opts ? c->opts : "");
    es_sh_cfg c2 = *c;
    c2.opts = opts;
    c2.budget = budget;
    c2.seed = c->seed + 1000; /* initial values and salts must come from the saved state */
    c2.use_vocab = 0;
    es_storage *s2 = NULL;
    es_err err;
    if (es_sh_create(&s2, &c2, NULL, ES_OPT_ROWWISE_ADAGRAD, 0.05f, &err) != 0) {
        es_test_fail(__FILE__, __LINE__, "%s: %s: re-create from meta \"%s\": %s", cfg_name(c), what, s1->meta, err.msg);
        return 0;
    }
    int ok = 1;
    if (strcmp(s1->meta, s2->meta) != 0 || s1->param_bytes != s2->param_bytes || s1->aux_bytes != s2->aux_bytes ||
        s1->state_bytes != s2->state_bytes) {
        es_test_fail(__FILE__, __LINE__, "%s: %s: re-created storage differs: meta \"%s\" vs \"%s\", bytes %zu/%zu/%zu vs %zu/%zu/%zu",
                     cfg_name(c), what, s1->meta, s2->meta, s1->param_bytes, s1->aux_bytes, s1->state_bytes, s2->param_bytes,
                     s2->aux_bytes, s2->state_bytes);
        ok = 0;
    }
    tlist t1 = {0}, t2 = {0};
    if (ok && !(tlist_get(s1, &t1) & tlist_get(s2, &t2))) ok = 0;
    if (ok && t1.n != t2.n) {
        es_test_fail(__FILE__, __LINE__, "%s: %s: %d tensors saved, %d after re-create", cfg_name(c), what, t1.n, t2.n);
        ok = 0;
    }
    /* copy by name, as the model loader does */
    for (int i = 0; ok && i < t2.n; i++) {
        const es_tensor_ref *src = NULL;
        for (int j = 0; j < t1.n; j++)
            if (strcmp(t1.refs[j].name, t2.refs[i].name) == 0) src = &t1.refs[j];
        if (!src || src->dtype != t2.refs[i].dtype || src->nbytes != t2.refs[i].nbytes || src->ndim != t2.refs[i].ndim) {
            es_test_fail(__FILE__, __LINE__, "%s: %s: tensor %s has no saved twin of the same type and size", cfg_name(c), what,
                         t2.refs[i].name);
            ok = 0;
            break;
        }
        memcpy(t2.refs[i].data, src->data, src->nbytes);
    }
    free(t1.refs);
    free(t2.refs);
    if (ok && es__storage_after_load(s2) != 0) {
        es_test_fail(__FILE__, __LINE__, "%s: %s: after_load: %s", cfg_name(c), what, es__storage_errmsg(s2));
        ok = 0;
    }
    ok = ok && same_lookups(s1, s2, c, c->seed + 77, what);
    /* training continues identically (optimizer state was carried over);
     * s1 is trained too, so each round trip starts from a new state */
    ok = ok && train_steps(s1, c, 1, c->seed + 500) && train_steps(s2, c, 1, c->seed + 500);
    ok = ok && same_tensors(s1, s2, c, what) && same_lookups(s1, s2, c, c->seed + 78, what);
    es__storage_free(s2);
    return ok;
}

int es_sh_roundtrip(const es_sh_cfg *c) {
    es_vocab *v = c->use_vocab ? es_sh_vocab(c->n_fields) : NULL;
    es_storage *s1 = NULL;
    es_err err;
    int ok = 0;
    if (c->use_vocab && !v) {
        es_test_fail(__FILE__, __LINE__, "out of memory building the vocabulary");
        return 0;
    }
    if (es_sh_create(&s1, c, v, ES_OPT_ROWWISE_ADAGRAD, 0.05f, &err) != 0) {
        es_test_fail(__FILE__, __LINE__, "%s: create: %s", cfg_name(c), err.msg);
        goto done;
    }
    if (!train_steps(s1, c, 2, c->seed + 300)) goto done;
    ok = roundtrip_one(c, s1, s1->budget_bytes, "reload with the saved budget") &&
         roundtrip_one(c, s1, 0, "reload with budget 0");
    if (ok) printf("    roundtrip %-31s meta \"%.120s\"\n", cfg_name(c), s1->meta);
done:
    es__storage_free(s1);
    es_vocab_free(v);
    return ok;
}

/* ---- determinism ---------------------------------------------------------------------- */

int es_sh_determinism(const es_sh_cfg *c) {
    es_vocab *v = c->use_vocab ? es_sh_vocab(c->n_fields) : NULL;
    es_storage *a = NULL, *b = NULL, *d = NULL;
    es_err err;
    int ok = 0;
    es_batch bt;
    memset(&bt, 0, sizeof bt);
    float *whole = NULL, *part = NULL;
    if (c->use_vocab && !v) goto done;
    if (es_sh_create(&a, c, v, ES_OPT_ROWWISE_ADAGRAD, 0.05f, &err) != 0 ||
        es_sh_create(&b, c, v, ES_OPT_ROWWISE_ADAGRAD, 0.05f, &err) != 0) {
        es_test_fail(__FILE__, __LINE__, "%s: create: %s", cfg_name(c), err.msg);
        goto done;
    }
    if (!same_tensors(a, b, c, "same seed, fresh") || !same_lookups(a, b, c, 11, "same seed, fresh")) goto done;
    if (!train_steps(a, c, 3, 40) || !train_steps(b, c, 3, 40)) goto done;
    if (!same_tensors(a, b, c, "same seed, trained") || !same_lookups(a, b, c, 12, "same seed, trained")) goto done;
    /* another seed: other parameters */
    es_sh_cfg c2 = *c;
    c2.seed = c->seed + 1;
    if (es_sh_create(&d, &c2, v, ES_OPT_ROWWISE_ADAGRAD, 0.05f, &err) != 0) {
        es_test_fail(__FILE__, __LINE__, "%s: create: %s", cfg_name(c), err.msg);
        goto done;
    }
    {
        es_storage *a0 = NULL;
        if (es_sh_create(&a0, c, v, ES_OPT_ROWWISE_ADAGRAD, 0.05f, &err) != 0) goto done;
        tlist t1, t2;
        int differ = 0, okl = tlist_get(a0, &t1) & tlist_get(d, &t2);
        for (int i = 0; okl && i < t1.n && i < t2.n; i++)
            if ((is_param(&t1.refs[i]) || is_codes(&t1.refs[i])) && t1.refs[i].nbytes == t2.refs[i].nbytes &&
                memcmp(t1.refs[i].data, t2.refs[i].data, t1.refs[i].nbytes) != 0)
                differ = 1;
        free(t1.refs);
        free(t2.refs);
        es__storage_free(a0);
        if (c->init_scale > 0 && !differ) {
            es_test_fail(__FILE__, __LINE__, "%s: seeds %llu and %llu give identical parameters", cfg_name(c),
                         (unsigned long long)c->seed, (unsigned long long)c2.seed);
            goto done;
        }
    }
    /* sub-range lookups equal the slices of the whole-batch lookup */
    if (es_sh_batch(&bt, 20, c->n_fields, 13) != 0) goto done;
    const size_t per_row = (size_t)c->n_fields * (size_t)c->dim, nout = (size_t)bt.n * per_row;
    whole = malloc(nout * sizeof *whole);
    part = malloc(nout * sizeof *part);
    if (!whole || !part) goto done;
    es__storage_lookup(a, &bt, 0, bt.n, whole);
    const int cuts[][2] = {{0, 1}, {3, 7}, {7, 8}, {19, 20}, {5, 5}, {0, 20}};
    for (size_t k = 0; k < ES_ARRAY_LEN(cuts); k++) {
        memset(part, 0x55, nout * sizeof *part);
        es__storage_lookup(a, &bt, cuts[k][0], cuts[k][1], part);
        size_t n = (size_t)(cuts[k][1] - cuts[k][0]) * per_row;
        if (n && memcmp(part, whole + (size_t)cuts[k][0] * per_row, n * sizeof *part) != 0) {
            es_test_fail(__FILE__, __LINE__, "%s: lookup of rows [%d, %d) differs from the whole-batch lookup", cfg_name(c),
                         cuts[k][0], cuts[k][1]);
            goto done;
        }
    }
    printf("    determinism %-29s ok\n", cfg_name(c));
    ok = 1;
done:
    if (!ok && !a) es_test_fail(__FILE__, __LINE__, "%s: setup failed", cfg_name(c));
    free(whole);
    free(part);
    es_batch_free(&bt);
    es__storage_free(a);
    es__storage_free(b);
    es__storage_free(d);
    es_vocab_free(v);
    return ok;
}

/* ---- threads -------------------------------------------------------------------------- */

typedef struct {
    es_storage *s;
    const es_batch *b;
    int r0, r1;
    float *out;
} lookup_job;

static void *lookup_thread(void *arg) {
    lookup_job *j = arg;
    for (int rep = 0; rep < 20; rep++) es__storage_lookup(j->s, j->b, j->r0, j->r1, j->out);
    return NULL;
}

int es_sh_threads(const es_sh_cfg *c) {
    es_vocab *v = c->use_vocab ? es_sh_vocab(c->n_fields) : NULL;
    es_storage *s = NULL;
    es_err err;
    es_batch b;
    memset(&b, 0, sizeof b);
    float *one = NULL, *many = NULL;
    int ok = 0;
    if (c->use_vocab && !v) goto done;
    if (es_sh_create(&s, c, v, ES_OPT_ROWWISE_ADAGRAD, 0.05f, &err) != 0) {
        es_test_fail(__FILE__, __LINE__, "%s: create: %s", cfg_name(c), err.msg);
        goto done;
    }
    if (es_sh_batch(&b, 64, c->n_fields, 99) != 0) goto done;
    const size_t per_row = (size_t)c->n_fields * (size_t)c->dim, nout = (size_t)b.n * per_row;
    one = malloc(nout * sizeof *one);
    many = malloc(nout * sizeof *many);
    if (!one || !many) goto done;
    es__storage_lookup(s, &b, 0, b.n, one);
    memset(many, 0x7f, nout * sizeof *many);
    pthread_t th[4];
    lookup_job jobs[4];
    for (int k = 0; k < 4; k++) {
        jobs[k] = (lookup_job){s, &b, k * 16, k * 16 + 16, many + (size_t)k * 16 * per_row};
        if (pthread_create(&th[k], NULL, lookup_thread, &jobs[k]) != 0) {
            for (int j = 0; j < k; j++) pthread_join(th[j], NULL);
            goto done;
        }
    }
    for (int k = 0; k < 4; k++) pthread_join(th[k], NULL);
    if (memcmp(one, many, nout * sizeof *one) != 0) {
        es_test_fail(__FILE__, __LINE__, "%s: lookups on 4 threads differ from a 1-thread lookup", cfg_name(c));
        goto done;
    }
    ok = 1;
done:
    if (!ok && !s) es_test_fail(__FILE__, __LINE__, "%s: setup failed", cfg_name(c));
    free(one);
    free(many);
    es_batch_free(&b);
    es__storage_free(s);
    es_vocab_free(v);
    return ok;
}

/* ---- allocation failures ------------------------------------------------------------------ */

typedef struct {
    const es_sh_cfg *c;
    const es_vocab *v;
    const es_batch *b;
    const float *G;
    float *out;
} sweep_ctx;

static int sweep_fn(void *arg) {
    sweep_ctx *x = arg;
    es_storage *s = NULL;
    es_err err;
    int rc = es_sh_create(&s, x->c, x->v, ES_OPT_ROWWISE_ADAGRAD, 0.05f, &err);
    if (rc) return rc;
    es__storage_lookup(s, x->b, 0, x->b->n, x->out);
    rc = es__storage_backward(s, x->b, x->G);
    if (rc == 0) rc = es__storage_backward(s, x->b, x->G); /* a second step: no hidden first-use allocation */
    if (rc == 0 && es__storage_tensors(s, NULL, 0) < 1) rc = ES_EINVAL;
    es__storage_free(s);
    return rc;
}

int es_sh_alloc_failures(const es_sh_cfg *c) {
    es_vocab *v = c->use_vocab ? es_sh_vocab(c->n_fields) : NULL;
    es_batch b;
    memset(&b, 0, sizeof b);
    float *G = NULL, *out = NULL;
    int ok = 0;
    if ((c->use_vocab && !v) || es_sh_batch(&b, 32, c->n_fields, 5) != 0) goto done;
    size_t nout = (size_t)b.n * (size_t)c->n_fields * (size_t)c->dim;
    G = malloc(nout * sizeof *G);
    out = malloc(nout * sizeof *out);
    if (!G || !out) goto done;
    fill_normal(G, nout, 3);
    sweep_ctx x = {c, v, &b, G, out};
    int points = es_test_alloc_sweep(sweep_fn, &x, 5000);
    if (points < 0) {
        es_test_fail(__FILE__, __LINE__, "%s: allocation-failure sweep failed (see above)", cfg_name(c));
        goto done;
    }
    printf("    alloc sweep %-29s %d failure points, all clean\n", cfg_name(c), points);
    ok = 1;
done:
    if (!ok && !G) es_test_fail(__FILE__, __LINE__, "%s: setup failed", cfg_name(c));
    free(G);
    free(out);
    es_batch_free(&b);
    es_vocab_free(v);
    return ok;
}

int es_sh_all(const es_sh_cfg *c) {
    return es_sh_gradcheck(c) && es_sh_roundtrip(c) && es_sh_determinism(c) && es_sh_threads(c) && es_sh_alloc_failures(c);
}

/* ---- training at a precision: straight-through and LSQ gradients ------------------ */

double es__alpt_step_grad(es_precision p, const float *v, const float *g, int dim, float s);

/* The row tables of s (ops->rows), up to 8; returns how many. */
static int sh_tables(es_storage *s, es_rows **t) {
    int n = 0;
    while (s->ops->rows && n < 8 && (t[n] = s->ops->rows(s, n)) != NULL) n++;
    return n;
}

int es_sh_gradcheck_qtrain(const es_sh_cfg *c) {
    const char *name = cfg_name(c);
    es_vocab *v = c->use_vocab ? es_sh_vocab(c->n_fields) : NULL;
    es_storage *s = NULL, *tw = NULL;
    es_err err;
    es_batch b;
    memset(&b, 0, sizeof b);
    float *G = NULL, *out = NULL, *out2 = NULL, *num = NULL, *before = NULL, *xr = NULL;
    int ok = 0;
    const float lr = c->qtrain == ES_QTRAIN_QAT ? 1.0f : 0.01f;
    es_sh_cfg fc = *c;
    fc.precision = ES_PREC_FP32;
    fc.qtrain = ES_QTRAIN_NONE;
    if (es_sh_create(&s, c, v, ES_OPT_SGD, lr, &err) != 0) {
        es_test_fail(__FILE__, __LINE__, "%s: create: %s", name, err.msg);
        goto done;
    }
    /* the fp32 twin has the same shapes: created from s's resolved options */
    es_storage_params tp = es_sh_params(&fc);
    tp.opts = s->meta;
    tp.budget = 0;
    tp.max_batch = c->max_batch;
    tp.opt.kind = ES_OPT_SGD;
    tp.opt.lr = 1.0f;
    if (es__storage_create(&tw, &tp, v, &err) != 0) {
        es_test_fail(__FILE__, __LINE__, "%s: the fp32 twin: %s", name, err.msg);
        goto done;
    }
    es_rows *qt[8], *ft[8];
    const int nt = sh_tables(s, qt);
    if (nt < 1 || sh_tables(tw, ft) != nt) {
        es_test_fail(__FILE__, __LINE__, "%s: %d row tables, the twin %d", name, nt, sh_tables(tw, ft));
        goto done;
    }
    /* the maps (full's keys, ...) as s holds them, as a load would put them */
    {
        tlist a, b2;
        int okl = tlist_get(s, &a) & tlist_get(tw, &b2);
        for (int i = 0; okl && i < a.n; i++) {
            if (is_param(&a.refs[i]) || is_codes(&a.refs[i]) || !strncmp(a.refs[i].name, "opt.", 4)) continue;
            for (int j = 0; j < b2.n; j++)
                if (!strcmp(a.refs[i].name, b2.refs[j].name) && a.refs[i].nbytes == b2.refs[j].nbytes)
                    memcpy(b2.refs[j].data, a.refs[i].data, a.refs[i].nbytes);
        }
        free(a.refs);
        free(b2.refs);
        if (!okl || es__storage_after_load(tw) != 0) {
            es_test_fail(__FILE__, __LINE__, "%s: the fp32 twin's maps: %s", name, es__storage_errmsg(tw));
            goto done;
        }
    }
    /* ALPT: steps twice the initial ones (the rows re-encoded), so that the
     * rows sit inside half the range and LSQ's step, not the range guard,
     * decides most updates */
    if (c->qtrain == ES_QTRAIN_ALPT)
        for (int i = 0; i < nt; i++) {
            float row[256];
            const size_t rb = es__prec_row_bytes(qt[i]->prec, qt[i]->dim);
            for (uint64_t r = 0; r < qt[i]->n_rows && qt[i]->dim <= 256; r++) {
                es__rows_get(qt[i], r, row);
                qt[i]->qstep[r] *= 2;
                es__quant_row_step(qt[i]->prec, row, qt[i]->dim, qt[i]->qstep[r], qt[i]->q + r * rb, NULL);
            }
        }
    /* the twin's rows are the dequantized codes: the values the forward uses */
    for (int i = 0; i < nt; i++)
        for (uint64_t r = 0; r < qt[i]->n_rows; r++) es__rows_get(qt[i], r, ft[i]->w + r * (uint64_t)ft[i]->dim);
    if (es_sh_batch(&b, 8, c->n_fields, c->seed + 77) != 0) goto oom;
    const size_t nout = (size_t)b.n * (size_t)c->n_fields * (size_t)c->dim;
    G = malloc(nout * sizeof *G);
    out = malloc(nout * sizeof *out);
    out2 = malloc(nout * sizeof *out2);
    if (!G || !out || !out2) goto oom;
    fill_normal(G, nout, c->seed ^ 0x7777);
    es__storage_lookup(s, &b, 0, b.n, out);
    es__storage_lookup(tw, &b, 0, b.n, out2);
    for (size_t i = 0; i < nout; i++)
        if (fabsf(out[i] - out2[i]) > 1e-6f * (1 + fabsf(out[i]))) {
            es_test_fail(__FILE__, __LINE__, "%s: lookup %zu is %.9g, the twin's %.9g", name, i, (double)out[i], (double)out2[i]);
            goto done;
        }
    /* numeric gradient of L = sum(out * G) with respect to every value of
     * the twin's tables (central differences; the forward is linear in the
     * rows for these methods' pooling, so h is not critical) */
    size_t total = 0, at = 0;
    for (int i = 0; i < nt; i++) total += (size_t)ft[i]->n_rows * (size_t)ft[i]->dim;
    num = calloc(total, sizeof *num);
    before = malloc(total * sizeof *before);
    if (!num || !before) goto oom;
    const float h = 1e-2f;
    for (int i = 0; i < nt; i++) {
        const size_t m = (size_t)ft[i]->n_rows * (size_t)ft[i]->dim;
        for (size_t e = 0; e < m; e++) {
            float *w = ft[i]->w + e, w0 = *w;
            *w = w0 + h;
            es__storage_lookup(tw, &b, 0, b.n, out);
            double Lp = loss_of(out, G, nout);
            *w = w0 - h;
            es__storage_lookup(tw, &b, 0, b.n, out);
            double Lm = loss_of(out, G, nout);
            *w = w0;
            num[at + e] = (float)((Lp - Lm) / (2.0 * h));
            before[at + e] = ft[i]->w[e];
        }
        at += m;
    }
    /* QAT: the master's change / lr; ALPT: the step follows LSQ at the
     * updated row, and the codes are that row rounded with the new step */
    float *master0 = NULL;
    float *step0 = NULL, *acc0 = NULL;
    size_t nr = 0;
    for (int i = 0; i < nt; i++) nr += qt[i]->n_rows;
    if (c->qtrain == ES_QTRAIN_QAT) {
        master0 = malloc(total * sizeof *master0);
        if (!master0) goto oom;
        at = 0;
        for (int i = 0; i < nt; i++) {
            memcpy(master0 + at, qt[i]->w, (size_t)qt[i]->n_rows * qt[i]->dim * sizeof(float));
            at += (size_t)qt[i]->n_rows * qt[i]->dim;
        }
    } else {
        step0 = malloc(nr * sizeof *step0);
        acc0 = malloc(nr * sizeof *acc0);
        if (!step0 || !acc0) {
            free(step0);
            free(acc0);
            goto oom;
        }
        size_t o = 0;
        for (int i = 0; i < nt; i++) {
            /* a small accumulator, so the step's move depends on the size of
             * LSQ's gradient, not only on its sign (as on a first update) */
            for (uint64_t r = 0; r < qt[i]->n_rows; r++) qt[i]->qstep_acc[r] = 1e-8f;
            memcpy(step0 + o, qt[i]->qstep, qt[i]->n_rows * sizeof(float));
            memcpy(acc0 + o, qt[i]->qstep_acc, qt[i]->n_rows * sizeof(float));
            o += qt[i]->n_rows;
        }
    }
    if (es__storage_backward(s, &b, G) != 0) {
        es_test_fail(__FILE__, __LINE__, "%s: backward: %s", name, es__storage_errmsg(s));
        free(master0);
        free(step0);
        free(acc0);
        goto done;
    }
    size_t checked = 0, steps = 0, bad = 0, guarded = 0;
    double worst = 0;
    at = 0;
    size_t ro = 0;
    xr = malloc(64 * 1024 * sizeof *xr);
    if (!xr) goto oom;
    for (int i = 0; i < nt && !bad; i++) {
        const int d = qt[i]->dim;
        for (uint64_t r = 0; r < qt[i]->n_rows && !bad; r++) {
            const float *n = num + at + r * (uint64_t)d;
            int touched = 0;
            for (int k = 0; k < d; k++) touched |= n[k] != 0;
            if (c->qtrain == ES_QTRAIN_QAT) {
                for (int k = 0; k < d; k++) {
                    float a = (master0[at + r * d + k] - qt[i]->w[r * d + k]) / lr;
                    double tol = 2e-4 + 1e-3 * fmax(fabs(a), fabs(n[k]));
                    worst = fmax(worst, fabs(a - n[k]));
                    if (fabs(a - n[k]) > tol) {
                        es_test_fail(__FILE__, __LINE__, "%s: table %d row %llu value %d: straight-through gradient %.6g, "
                                     "finite differences %.6g", name, i, (unsigned long long)r, k, (double)a, (double)n[k]);
                        bad = 1;
                        break;
                    }
                    checked++;
                }
            } else if (touched && d <= 64 * 1024) {
                /* the row the optimizer made (SGD: old - lr g, g from the
                 * finite differences), LSQ's gradient at it, and the step
                 * one Adagrad step on ln s gives (the first: |gl| / sqrt(gl^2) = 1) */
                const float *x0 = before + at + r * (uint64_t)d;
                for (int k = 0; k < d; k++) xr[k] = x0[k] - lr * n[k];
                const float s0 = step0[ro + r];
                double gl = es__alpt_step_grad(qt[i]->prec, xr, n, d, s0) * s0;
                double acc = acc0[ro + r] + gl * gl;
                double want = gl != 0 ? exp(log(s0) - lr * gl / (sqrt(acc) + 1e-10)) : s0;
                /* then the range guard: a step that holds the row */
                const double qp = fmax((double)(1u << (es__prec_bits(qt[i]->prec) - 1)) - 1, 1);
                double mx = 0;
                for (int k = 0; k < d; k++) mx = fmax(mx, fabs((double)xr[k]));
                if (mx > qp * want) {
                    want = fmin(mx / qp, 256.0);
                    guarded++;
                }
                double got = qt[i]->qstep[r];
                worst = fmax(worst, fabs(got - want) / want);
                if (fabs(got - want) > 1e-3 * want) {
                    es_test_fail(__FILE__, __LINE__, "%s: table %d row %llu: step %.9g, LSQ from the finite-difference "
                                 "gradient gives %.9g (from %.9g)", name, i, (unsigned long long)r, got, want, (double)s0);
                    bad = 1;
                    break;
                }
                steps++;
            }
        }
        at += (size_t)qt[i]->n_rows * (size_t)d;
        ro += qt[i]->n_rows;
    }
    free(master0);
    free(step0);
    free(acc0);
    if (bad) goto done;
    if (checked + steps == 0) {
        es_test_fail(__FILE__, __LINE__, "%s: nothing checked", name);
        goto done;
    }
    printf("    qtrain gradcheck %-34s %zu values, %zu steps (%zu by the range guard), worst %.3g\n", name, checked, steps,
           guarded, worst);
    ok = 1;
    goto done;
oom:
    es_test_fail(__FILE__, __LINE__, "%s: out of memory in the test", name);
done:
    free(G);
    free(out);
    free(out2);
    free(num);
    free(before);
    free(xr);
    es_batch_free(&b);
    es__storage_free(s);
    es__storage_free(tw);
    es_vocab_free(v);
    return ok;
}

/* ---- small helpers for method tests --------------------------------------------- */

es_tensor_ref *es_sh_tensor(es_storage *s, es_tensor_ref *refs, int max, const char *name) {
    int n = es__storage_tensors(s, refs, max);
    for (int i = 0; i < n; i++)
        if (strcmp(refs[i].name, name) == 0) return &refs[i];
    return NULL;
}

int es_sh_step(es_storage *s, uint64_t seed) {
    es_batch b;
    if (es_sh_batch(&b, 32, s->p.n_fields, seed) != 0) return -1;
    size_t n = (size_t)b.n * s->p.n_fields * s->p.dim;
    float *o = malloc(n * sizeof *o);
    es_rng r;
    es__rng_seed(&r, seed);
    int rc = -1;
    if (o && es__storage_lookup(s, &b, 0, b.n, o) == 0) {
        for (size_t i = 0; i < n; i++) o[i] = o[i] - 0.3f * es__rng_normal(&r);
        rc = es__storage_backward(s, &b, o);
    }
    free(o);
    es_batch_free(&b);
    return rc;
}

es_train_params es_sh_criteo_fm(const char *method, const char *opts, double budget, const char *out) {
    es_train_params p = es_train_params_default();
    p.train_path = "data/criteo_kaggle_train_first10k.tsv";
    p.model = "fm";
    p.storage = method;
    p.storage_opts = opts;
    p.budget = budget;
    p.dim = 8;
    p.emb_optim = "rowwise";
    p.emb_lr = 0.01f;
    p.valid_frac = 0.2;
    p.early_stop = 0;
    p.refit = 0;
    p.epochs = 2;
    p.threads = 1;
    p.seed = 1;
    p.out_path = out;
    return p;
}
