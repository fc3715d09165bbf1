/*
 * test_zoo_a.c — tests of the storage methods `qr`, `multihash`, `robe`
 * and `tt`: the generic harness (storage_harness.h: finite-difference
 * gradients, budgets, save/load round trips, determinism, threads,
 * allocation failures) in both share modes and with each method's
 * options, then what is particular to each method, checked against the
 * lookup rule its file comment documents:
 *   qr         values with the same quotient read the same quotient row;
 *              digits are the mixed-radix digits of the hashed index
 *   robe       lookups are signed contiguous reads of the flat array,
 *              wrapping inside the field's region
 *   tt         a looked-up vector is the product of the three cores
 *   multihash  k hashed pool rows summed with the importance weights
 * and every method at the acceptance budgets on the real Criteo sample.
 */
#include "storage_harness.h"
#include "test.h"

#include <math.h>

static const double fracs[] = {0.25, 1.0 / 16, 1.0 / 64, 1.0 / 256};
#define NFRACS ((int)ES_ARRAY_LEN(fracs))

/* ---- helpers ------------------------------------------------------------------------ */

/* Value of key in a storage's meta (pointer into meta, length in *len). */
static const char *meta_val(const es_storage *s, const char *key, size_t *len) {
    size_t kl = strlen(key);
    for (const char *p = s->meta; p && *p;) {
        const char *end = strchr(p, ',');
        if (!end) end = p + strlen(p);
        if (strncmp(p, key, kl) == 0 && p[kl] == '=') {
            *len = (size_t)(end - p - (long)kl - 1);
            return p + kl + 1;
        }
        p = *end ? end + 1 : NULL;
    }
    return NULL;
}

/* Up to max integers of meta key (separated by '/' or ':'); count or -1. */
static int meta_ints(const es_storage *s, const char *key, long long *out, int max) {
    size_t len;
    const char *v = meta_val(s, key, &len);
    if (!v) return -1;
    int n = 0;
    const char *p = v, *end = v + len;
    while (p < end && n < max) {
        out[n++] = strtoll(p, (char **)&p, 10);
        if (p < end) p++;
    }
    return n;
}

static es_tensor_ref *tensor(es_storage *s, es_tensor_ref *refs, const char *name) {
    int n = es__storage_tensors(s, refs, 16);
    for (int i = 0; i < n; i++)
        if (strcmp(refs[i].name, name) == 0) return &refs[i];
    return NULL;
}

/* A batch of n rows, F fields, one value per pair: keys[r*F + f], weight 1. */
static int batch_of_keys(es_batch *b, int n, int F, const uint64_t *keys) {
    if (es_batch_alloc(b, n, 0, F, (size_t)n * (size_t)F) != 0) return 0;
    for (int i = 0; i < n * F; i++) {
        b->off[i] = (uint32_t)i;
        b->val[i] = keys[i];
        b->wt[i] = 1.0f;
    }
    b->off[n * F] = (uint32_t)(n * F);
    b->n = n;
    return 1;
}

static es_storage *make(const char *method, int share, int F, int dim, double budget, const char *opts, es_optim opt,
                        float lr) {
    es_storage_params p = es__storage_params_default();
    p.method = method;
    p.n_fields = F;
    p.dim = dim;
    p.budget = budget;
    p.opts = opts;
    es_sh_opt(&p, "share", share);
    p.opt.kind = opt;
    p.opt.lr = lr;
    p.seed = 21;
    es_storage *s = NULL;
    es_err err;
    if (es__storage_create(&s, &p, NULL, &err) != 0) printf("    create %s: %s\n", method, err.msg);
    return s;
}

static uint64_t salt0(const es_storage *s, int f) { return es__storage_salt(s->p.seed, f, 0); }

/* Train s to map each pair of b to target (squared error); loss after
 * `steps` full-batch steps over the loss before. */
static double fit_ratio(es_storage *s, const es_batch *b, const float *target, int steps) {
    const size_t n = (size_t)b->n * (size_t)b->n_fields * (size_t)s->p.dim;
    float *out = malloc(n * sizeof *out), *g = malloc(n * sizeof *g);
    double first = 0, last = NAN;
    for (int t = 0; out && g && t <= steps; t++) {
        es__storage_lookup(s, b, 0, b->n, out);
        double L = 0;
        for (size_t i = 0; i < n; i++) {
            g[i] = out[i] - target[i];
            L += 0.5 * (double)g[i] * g[i];
        }
        if (t == 0) first = L;
        last = L;
        if (t < steps && es__storage_backward(s, b, g) != 0) {
            last = NAN;
            break;
        }
    }
    free(out);
    free(g);
    return last / first;
}

/* ---- the generic harness, every method, both share modes -------------------------------- */

static void harness_all(const char *method, int share, const char *opts) {
    es_sh_cfg c = es_sh_cfg_make(method, share);
    c.opts = opts;
    CHECK(es_sh_all(&c));
    CHECK(es_sh_budget(&c, fracs, NFRACS));
}

TEST(zoo_a_qr_harness_share0) { harness_all("qr", 0, NULL); }
TEST(zoo_a_qr_harness_share1) { harness_all("qr", 1, NULL); }
TEST(zoo_a_multihash_harness_share0) { harness_all("multihash", 0, NULL); }
TEST(zoo_a_multihash_harness_share1) { harness_all("multihash", 1, NULL); }
TEST(zoo_a_robe_harness_share0) { harness_all("robe", 0, NULL); }
TEST(zoo_a_robe_harness_share1) { harness_all("robe", 1, NULL); }
TEST(zoo_a_tt_harness_share0) { harness_all("tt", 0, NULL); }
TEST(zoo_a_tt_harness_share1) { harness_all("tt", 1, NULL); }

/* Options change the code paths: each variant gets the gradient check,
 * the round trip and the budget check. */
static void variant(const char *method, int share, const char *opts, int dim) {
    es_sh_cfg c = es_sh_cfg_make(method, share);
    c.opts = opts;
    c.dim = dim;
    CHECK(es_sh_gradcheck(&c));
    CHECK(es_sh_roundtrip(&c));
    CHECK(es_sh_budget(&c, fracs, NFRACS));
}

TEST(zoo_a_qr_variants) {
    variant("qr", 0, "op=add", 8);
    variant("qr", 1, "op=cat", 7);        /* uneven split: 4 + 3 floats */
    variant("qr", 1, "partitions=3", 8);  /* three factors in the product */
    variant("qr", 0, "op=cat,partitions=4", 9);
}

TEST(zoo_a_multihash_variants) {
    variant("multihash", 1, "weights=0", 8);
    variant("multihash", 0, "k=3", 6);
    variant("multihash", 1, "k=1,wfrac=0.5", 8);
}

TEST(zoo_a_robe_variants) {
    variant("robe", 1, "z=3", 8); /* blocks of 3, 3 and 2 */
    variant("robe", 0, "z=1", 5); /* per-element hashing */
    variant("robe", 1, "z=4", 12);
}

TEST(zoo_a_tt_variants) {
    variant("tt", 1, NULL, 12);             /* d = 3 x 2 x 2 */
    variant("tt", 0, "max_rank=3", 16);     /* rank capped */
    variant("tt", 1, "d=1/2/4", 8);         /* a given factorisation */
    variant("tt", 1, NULL, 7);              /* prime dim: 7 x 1 x 1 */
}

/* init_scale 0 (as the LR model uses): lookups start at zero and training
 * can still move them (no method is stuck at a zero product). */
TEST(zoo_a_zero_init_trains) {
    const char *methods[] = {"qr", "multihash", "robe", "tt"};
    for (size_t i = 0; i < ES_ARRAY_LEN(methods); i++) {
        es_sh_cfg c = es_sh_cfg_make(methods[i], 1);
        c.init_scale = 0;
        es_vocab *v = es_sh_vocab(c.n_fields);
        es_storage *s;
        es_err err;
        CHECK(v);
        CHECK_MSG(es_sh_create(&s, &c, v, ES_OPT_ADAGRAD, 0.1f, &err) == 0, "%s: %s", methods[i], err.msg);
        es_batch b;
        CHECK(es_sh_batch(&b, 16, c.n_fields, 3) == 0);
        size_t n = (size_t)b.n * c.n_fields * c.dim;
        float *out = calloc(n, sizeof *out), *target = malloc(n * sizeof *target);
        CHECK(out && target);
        es__storage_lookup(s, &b, 0, b.n, out);
        double mx = 0;
        for (size_t e = 0; e < n; e++) mx = fmax(mx, fabs(out[e]));
        es_rng r;
        es__rng_seed(&r, 1);
        for (size_t e = 0; e < n; e++) target[e] = (float)(es__rng_uniform(&r) - 0.5);
        for (uint32_t p = 0; p < (uint32_t)(b.n * c.n_fields); p++) /* empty pairs pool to zero whatever we do */
            if (b.off[p] == b.off[p + 1]) memset(target + (size_t)p * c.dim, 0, (size_t)c.dim * sizeof *target);
        double ratio = fit_ratio(s, &b, target, 30);
        printf("    %-10s zero init: max |out| %g, loss ratio after 30 steps %.3f\n", methods[i], mx, ratio);
        free(out);
        free(target);
        es_batch_free(&b);
        es__storage_free(s);
        es_vocab_free(v);
        CHECK_MSG(mx == 0, "%s: init_scale 0 gives a non-zero lookup %g", methods[i], mx);
        CHECK_MSG(ratio < 0.9, "%s: training from zero init does not reduce the loss (%.3f)", methods[i], ratio);
    }
}

/* Every method learns: fitting random targets on a batch lowers the loss. */
TEST(zoo_a_methods_fit_targets) {
    const char *cfg[][2] = {{"qr", NULL}, {"qr", "op=cat"}, {"multihash", NULL}, {"robe", NULL}, {"tt", NULL}};
    for (size_t i = 0; i < ES_ARRAY_LEN(cfg); i++)
        for (int share = 0; share <= 1; share++) {
            es_sh_cfg c = es_sh_cfg_make(cfg[i][0], share);
            c.opts = cfg[i][1];
            c.budget = 40000;
            es_vocab *v = es_sh_vocab(c.n_fields);
            es_storage *s;
            es_err err;
            CHECK(v);
            CHECK_MSG(es_sh_create(&s, &c, v, ES_OPT_ROWWISE_ADAGRAD, 0.1f, &err) == 0, "%s", err.msg);
            es_batch b;
            CHECK(es_sh_batch(&b, 16, c.n_fields, 8) == 0);
            size_t n = (size_t)b.n * c.n_fields * c.dim;
            float *target = malloc(n * sizeof *target);
            CHECK(target);
            es_rng r;
            es__rng_seed(&r, 2);
            for (size_t e = 0; e < n; e++) target[e] = (float)(0.2 * (es__rng_uniform(&r) - 0.5));
            for (uint32_t p = 0; p < (uint32_t)(b.n * c.n_fields); p++)
                if (b.off[p] == b.off[p + 1]) memset(target + (size_t)p * c.dim, 0, (size_t)c.dim * sizeof *target);
            double ratio = fit_ratio(s, &b, target, 60);
            printf("    %-10s %-8s share=%d: loss ratio after 60 steps %.3f\n", cfg[i][0], cfg[i][1] ? cfg[i][1] : "",
                   share, ratio);
            free(target);
            es_batch_free(&b);
            es__storage_free(s);
            es_vocab_free(v);
            CHECK_MSG(ratio < 0.5, "%s share=%d: loss ratio %.3f", cfg[i][0], share, ratio);
        }
}

/* field_stats (for `inspect`): consistent figures over the vocabulary. */
TEST(zoo_a_field_stats) {
    const char *methods[] = {"qr", "multihash", "robe", "tt"};
    es_vocab *v = es_sh_vocab(4);
    CHECK(v);
    for (size_t i = 0; i < ES_ARRAY_LEN(methods); i++)
        for (int share = 0; share <= 1; share++) {
            es_sh_cfg c = es_sh_cfg_make(methods[i], share);
            c.budget = 0.05;
            es_storage *s;
            es_err err;
            CHECK_MSG(es_sh_create(&s, &c, v, ES_OPT_ROWWISE_ADAGRAD, 0.05f, &err) == 0, "%s", err.msg);
            CHECK(s->ops->field_stats);
            for (int f = 0; f < 4; f++) {
                es_field_stats st;
                s->ops->field_stats(s, v, f, &st);
                if (f == 1)
                    printf("    %-9s share=%d field 1: %llu distinct, %llu rows, %lld used, %lld collisions\n", methods[i], share,
                           (unsigned long long)st.distinct, (unsigned long long)st.rows,
                           st.rows_used == ES_STATS_UNKNOWN ? -1LL : (long long)st.rows_used,
                           st.collisions == ES_STATS_UNKNOWN ? -1LL : (long long)st.collisions);
                CHECK_EQ_INT(st.distinct, es_sh_distinct(f));
                CHECK(st.rows > 0);
                if (strcmp(methods[i], "robe") == 0) {
                    CHECK(st.rows_used == ES_STATS_UNKNOWN && st.collisions == ES_STATS_UNKNOWN);
                } else {
                    CHECK(st.rows_used != ES_STATS_UNKNOWN && st.rows_used <= st.rows && st.rows_used >= 1);
                    CHECK(st.collisions <= st.distinct);
                }
            }
            es_field_stats st;
            s->ops->field_stats(s, v, 9, &st); /* out of range: zeros */
            CHECK_EQ_INT(st.rows, 0);
            es__storage_free(s);
        }
    es_vocab_free(v);
}

/* Bad options are refused with a message naming them. */
TEST(zoo_a_bad_options) {
    const char *cases[][3] = {
        {"qr", "op=divide", "op="},           {"qr", "partitions=5", "partitions"}, {"qr", "m=3/4:5", "m="},
        {"qr", "op=cat,partitions=4", "dim"}, {"robe", "z=9", "z="},                {"robe", "z=0", "z="},
        {"tt", "d=2/2/3", "multiply"},        {"tt", "rank=0", "rank"},             {"tt", "n=2/2/2", "rank="},
        {"multihash", "k=17", "k="},          {"multihash", "wfrac=1.5", "wfrac"},  {"multihash", "weights=2", "weights"},
    };
    for (size_t i = 0; i < ES_ARRAY_LEN(cases); i++) {
        es_storage_params p = es__storage_params_default();
        p.method = cases[i][0];
        p.n_fields = 3;
        p.dim = 3;
        p.budget = 10000;
        p.opts = cases[i][1];
        es_sh_opt(&p, "share", 1);
        es_storage *s = NULL;
        es_err err = {0, ""};
        int rc = es__storage_create(&s, &p, NULL, &err);
        printf("    %s %-22s -> %s\n", cases[i][0], cases[i][1], err.msg);
        CHECK_MSG(rc == ES_EINVAL && !s, "%s %s gave %d", cases[i][0], cases[i][1], rc);
        CHECK_STR_HAS(err.msg, cases[i][2]);
    }
    /* no budget and no sizes: a clear error, not a default size */
    const char *m[] = {"qr", "multihash", "robe", "tt"};
    for (size_t i = 0; i < ES_ARRAY_LEN(m); i++) {
        es_storage_params p = es__storage_params_default();
        p.method = m[i];
        p.n_fields = 2;
        p.dim = 4;
        es_storage *s = NULL;
        es_err err = {0, ""};
        CHECK_EQ_INT(es__storage_create(&s, &p, NULL, &err), ES_EINVAL);
        CHECK_STR_HAS(err.msg, "budget");
    }
}

/* ---- qr ------------------------------------------------------------------------------------ */

/* Digits of h for radices m[0..p) (the documented rule). */
static void qr_digits_ref(uint64_t h, const long long *m, int p, uint64_t *d) {
    uint64_t x = h;
    for (int j = 0; j < p; j++) {
        unsigned __int128 y = (unsigned __int128)x * (uint64_t)m[j];
        d[j] = (uint64_t)(y >> 64);
        x = (uint64_t)y;
    }
}

/* Read each key's table rows by lookups: table j's row r set to r + 1 and
 * every other table to ones (mult), so out[0] - 1 is the row of table j. */
static int qr_probe_rows(es_storage *s, int p, const es_batch *b, uint64_t *rows /* [pairs * p] */) {
    es_tensor_ref refs[16];
    const size_t pairs = (size_t)b->n * b->n_fields, dim = (size_t)s->p.dim;
    float *out = malloc(pairs * dim * sizeof *out);
    if (!out) return 0;
    for (int j = 0; j < p; j++) {
        for (int l = 0; l < p; l++) {
            char name[24];
            snprintf(name, sizeof name, "table%d", l);
            es_tensor_ref *t = tensor(s, refs, name);
            if (!t) {
                free(out);
                return 0;
            }
            float *w = t->data;
            for (uint64_t r = 0; r < t->shape[0]; r++)
                for (uint64_t d = 0; d < t->shape[1]; d++) w[r * t->shape[1] + d] = l == j ? (float)(r + 1) : 1.0f;
        }
        es__storage_lookup(s, b, 0, b->n, out);
        for (size_t q = 0; q < pairs; q++) rows[q * p + j] = (uint64_t)out[q * dim] - 1;
    }
    free(out);
    return 1;
}

TEST(zoo_a_qr_rows_follow_the_quotient_remainder_rule) {
    /* share=1 and share=0, two and three partitions */
    const struct {
        int share, p;
    } cfg[] = {{1, 2}, {0, 2}, {1, 3}};
    for (size_t c = 0; c < ES_ARRAY_LEN(cfg); c++) {
        char opts[64];
        snprintf(opts, sizeof opts, "partitions=%d", cfg[c].p);
        const int F = 2, p = cfg[c].p, n = 300;
        es_storage *s = make("qr", cfg[c].share, F, 4, 6000, opts, ES_OPT_SGD, 1.0f);
        CHECK(s);
        long long m[8];
        CHECK_EQ_INT(meta_ints(s, "m", m, 8), cfg[c].share ? p : F * p);
        uint64_t *keys = malloc((size_t)n * F * sizeof *keys), *rows = malloc((size_t)n * F * p * sizeof *rows);
        CHECK(keys && rows);
        for (int i = 0; i < n * F; i++) keys[i] = es__mix64((uint64_t)i + 12345);
        es_batch b;
        CHECK(batch_of_keys(&b, n, F, keys));
        CHECK(qr_probe_rows(s, p, &b, rows));
        int bad = 0;
        for (int i = 0; i < n * F && !bad; i++) {
            const int f = i % F;
            const long long *mf = cfg[c].share ? m : m + f * p;
            uint64_t d[4];
            qr_digits_ref(es__hash_u64(keys[i], salt0(s, f)), mf, p, d);
            for (int j = 0; j < p; j++) {
                /* share=0: field 1's rows start after field 0's in every table */
                uint64_t base = (!cfg[c].share && f == 1) ? (uint64_t)m[j] : 0;
                if (rows[(size_t)i * p + j] != base + d[j]) bad = 1;
            }
            if (p == 2) {
                /* the digits are the quotient and remainder of the virtual index */
                uint64_t N = (uint64_t)mf[0] * (uint64_t)mf[1];
                uint64_t vi = (uint64_t)(((unsigned __int128)es__hash_u64(keys[i], salt0(s, f)) * N) >> 64);
                if (vi / (uint64_t)mf[1] != d[0] || vi % (uint64_t)mf[1] != d[1]) bad = 2;
            }
        }
        printf("    qr share=%d p=%d: m = %.60s, %d keys x %d fields: rows %s\n", cfg[c].share, p, s->meta, n, F,
               bad ? "WRONG" : "as documented");
        free(keys);
        free(rows);
        es_batch_free(&b);
        es__storage_free(s);
        CHECK_MSG(!bad, "config %zu: rows differ from the documented rule (%d)", c, bad);
    }
}

TEST(zoo_a_qr_same_quotient_shares_the_q_row) {
    const int n = 400, dim = 4;
    es_storage *s = make("qr", 1, 1, dim, 2 * 30 * dim * 4 + 64, "op=cat", ES_OPT_SGD, 1.0f);
    CHECK(s);
    long long m[2];
    CHECK_EQ_INT(meta_ints(s, "m", m, 2), 2);
    uint64_t *keys = malloc(n * sizeof *keys);
    CHECK(keys);
    for (int i = 0; i < n; i++) keys[i] = es__mix64((uint64_t)i * 7 + 1);
    /* find A, B with the same quotient and different remainders, and C
     * with a different quotient and a different remainder than A */
    int A = -1, B = -1, C = -1;
    uint64_t dA[2] = {0, 0};
    for (int i = 0; i < n && (B < 0 || C < 0); i++) {
        uint64_t d[2];
        qr_digits_ref(es__hash_u64(keys[i], salt0(s, 0)), m, 2, d);
        if (A < 0) {
            A = i;
            dA[0] = d[0];
            dA[1] = d[1];
        } else if (B < 0 && d[0] == dA[0] && d[1] != dA[1]) {
            B = i;
        } else if (C < 0 && d[0] != dA[0] && d[1] != dA[1]) {
            C = i;
        }
    }
    CHECK(B >= 0 && C >= 0);
    uint64_t k3[3] = {keys[A], keys[B], keys[C]};
    es_batch b;
    CHECK(batch_of_keys(&b, 3, 1, k3));
    float before[12], after[12], g[12];
    es__storage_lookup(s, &b, 0, 3, before);
    /* op=cat: [Q row | R row]; A and B show the same Q half, different R halves */
    const int hq = (dim + 1) / 2;
    CHECK(memcmp(before, before + dim, (size_t)hq * sizeof(float)) == 0);
    CHECK(memcmp(before + hq, before + dim + hq, (size_t)(dim - hq) * sizeof(float)) != 0);
    /* a gradient on A alone moves B's Q half (the shared row), not C */
    memset(g, 0, sizeof g);
    for (int d = 0; d < dim; d++) g[d] = 1.0f;
    CHECK_EQ_INT(es__storage_backward(s, &b, g), 0);
    es__storage_lookup(s, &b, 0, 3, after);
    for (int d = 0; d < hq; d++) CHECK_NEAR(after[dim + d], before[dim + d] - 1.0f, 1e-6);
    for (int d = hq; d < dim; d++) CHECK(after[dim + d] == before[dim + d]);
    CHECK(memcmp(after + 2 * dim, before + 2 * dim, (size_t)dim * sizeof(float)) == 0);
    printf("    keys %d and %d share quotient row %llu (m = %lld/%lld); a step on one moved the other's Q half by -1\n", A,
           B, (unsigned long long)dA[0], m[0], m[1]);
    es_batch_free(&b);
    free(keys);
    es__storage_free(s);
}

TEST(zoo_a_qr_combiners_match_the_tables) {
    const char *ops[] = {"op=mult", "op=add", "op=cat"};
    for (size_t o = 0; o < ES_ARRAY_LEN(ops); o++) {
        const int dim = 5, n = 50;
        es_storage *s = make("qr", 1, 1, dim, 3000, ops[o], ES_OPT_SGD, 1.0f);
        CHECK(s);
        long long m[2];
        CHECK_EQ_INT(meta_ints(s, "m", m, 2), 2);
        es_tensor_ref refs[16];
        es_tensor_ref t0 = *tensor(s, refs, "table0"), t1 = *tensor(s, refs, "table1");
        uint64_t keys[50];
        for (int i = 0; i < n; i++) keys[i] = es__mix64((uint64_t)i + 99);
        es_batch b;
        CHECK(batch_of_keys(&b, n, 1, keys));
        float out[50 * 5];
        es__storage_lookup(s, &b, 0, n, out);
        double worst = 0;
        for (int i = 0; i < n; i++) {
            uint64_t d[2];
            qr_digits_ref(es__hash_u64(keys[i], salt0(s, 0)), m, 2, d);
            const float *q = (const float *)t0.data + d[0] * t0.shape[1], *r = (const float *)t1.data + d[1] * t1.shape[1];
            for (int e = 0; e < dim; e++) {
                double want = o == 0 ? (double)q[e] * r[e] : o == 1 ? (double)q[e] + r[e]
                                                                     : (e < (int)t0.shape[1] ? q[e] : r[e - t0.shape[1]]);
                worst = fmax(worst, fabs(want - out[i * dim + e]));
            }
        }
        printf("    qr %-8s tables %llux%llu and %llux%llu: worst |lookup - rule| %.2g\n", ops[o],
               (unsigned long long)t0.shape[0], (unsigned long long)t0.shape[1], (unsigned long long)t1.shape[0],
               (unsigned long long)t1.shape[1], worst);
        es_batch_free(&b);
        es__storage_free(s);
        CHECK(worst < 1e-7);
    }
}

/* ---- robe ------------------------------------------------------------------------------------ */

TEST(zoo_a_robe_reads_signed_contiguous_blocks) {
    const struct {
        int share, dim;
        const char *opts;
    } cfg[] = {{1, 8, "z=8"}, {1, 8, "z=3"}, {0, 8, "z=4"}};
    for (size_t c = 0; c < ES_ARRAY_LEN(cfg); c++) {
        const int F = 3, n = 200, dim = cfg[c].dim;
        /* small regions, so that many blocks wrap around a region's end */
        es_storage *s = make("robe", cfg[c].share, F, dim, 1200, cfg[c].opts, ES_OPT_SGD, 1.0f);
        CHECK(s);
        long long z, rows[8];
        CHECK_EQ_INT(meta_ints(s, "z", &z, 1), 1);
        int nr = meta_ints(s, "rows", rows, 8);
        CHECK_EQ_INT(nr, cfg[c].share ? 1 : F);
        es_tensor_ref refs[16];
        es_tensor_ref *a = tensor(s, refs, "array");
        CHECK(a);
        float *M = a->data;
        const size_t m = a->nbytes / sizeof(float);
        for (size_t e = 0; e < m; e++) M[e] = (float)(e + 1); /* element e holds e + 1 */
        uint64_t *keys = malloc((size_t)n * F * sizeof *keys);
        float *out = malloc((size_t)n * F * dim * sizeof *out);
        CHECK(keys && out);
        for (int i = 0; i < n * F; i++) keys[i] = es__mix64((uint64_t)i + 777);
        es_batch b;
        CHECK(batch_of_keys(&b, n, F, keys));
        es__storage_lookup(s, &b, 0, n, out);
        int bad = 0, wraps = 0, neg = 0, blocks = 0;
        for (int i = 0; i < n * F && !bad; i++) {
            const int f = i % F;
            uint64_t base = 0, size = (uint64_t)rows[0] * (uint64_t)z;
            if (!cfg[c].share) {
                for (int g = 0; g < f; g++) base += (uint64_t)rows[g] * (uint64_t)z;
                size = (uint64_t)rows[f] * (uint64_t)z;
            }
            const uint64_t h = es__hash_u64(keys[i], salt0(s, f));
            for (int j = 0; j * z < dim; j++, blocks++) {
                const uint64_t hj = es__mix64(h + (uint64_t)j * UINT64_C(0x9e3779b97f4a7c15));
                const uint64_t off = es__range(hj, size);
                const float sg = (hj & 1) ? -1.0f : 1.0f;
                neg += sg < 0;
                const float *o = out + (size_t)i * dim + (size_t)j * z;
                const int L = (int)ES_MIN(z, dim - j * z);
                /* structure first: one sign, consecutive elements of the region */
                uint64_t e0 = (uint64_t)fabsf(o[0]) - 1;
                if (e0 < base || e0 >= base + size) bad = 1;
                for (int k = 1; k < L && !bad; k++) {
                    if ((o[k] < 0) != (o[0] < 0)) bad = 2;
                    uint64_t ek = (uint64_t)fabsf(o[k]) - 1, prev = (uint64_t)fabsf(o[k - 1]) - 1;
                    uint64_t want = prev + 1 == base + size ? base : prev + 1;
                    if (ek != want) bad = 3;
                    if (want == base) wraps++;
                }
                /* then the documented offset and sign */
                if (!bad && (e0 != base + off || (o[0] < 0) != (sg < 0))) bad = 4;
            }
        }
        printf("    robe share=%d dim=%d %s (rows %.40s): %d blocks, %d negative, %d wrapped: %s\n", cfg[c].share, dim,
               cfg[c].opts, s->meta, blocks, neg, wraps, bad ? "WRONG" : "signed contiguous reads");
        free(keys);
        free(out);
        es_batch_free(&b);
        es__storage_free(s);
        CHECK_MSG(!bad, "config %zu: block structure broken (%d)", c, bad);
        CHECK(wraps > 0);
        CHECK(neg > blocks / 4 && neg < 3 * blocks / 4);
    }
}

TEST(zoo_a_robe_update_touches_only_the_read_blocks) {
    const int dim = 8;
    es_storage *s = make("robe", 1, 1, dim, 4096, "z=4", ES_OPT_SGD, 1.0f);
    CHECK(s);
    es_tensor_ref refs[16];
    es_tensor_ref *a = tensor(s, refs, "array");
    CHECK(a);
    const size_t m = a->nbytes / sizeof(float);
    float *M = a->data, *M0 = malloc(m * sizeof *M0);
    CHECK(M0);
    for (size_t e = 0; e < m; e++) M[e] = (float)(e + 1);
    memcpy(M0, M, m * sizeof *M0);
    uint64_t key = 4242;
    es_batch b;
    CHECK(batch_of_keys(&b, 1, 1, &key));
    float out[8], g[8];
    es__storage_lookup(s, &b, 0, 1, out);
    for (int d = 0; d < dim; d++) g[d] = (float)(d + 1) * 0.5f;
    CHECK_EQ_INT(es__storage_backward(s, &b, g), 0);
    /* element read into out[d] moved by -sign * g[d]; nothing else moved */
    size_t moved = 0;
    for (size_t e = 0; e < m; e++) moved += M[e] != M0[e];
    for (int d = 0; d < dim; d++) {
        size_t e = (size_t)fabsf(out[d]) - 1;
        float sg = out[d] < 0 ? -1.0f : 1.0f;
        CHECK_NEAR(M[e], M0[e] - sg * g[d], 1e-5);
    }
    CHECK_EQ_INT(moved, (size_t)dim);
    free(M0);
    es_batch_free(&b);
    es__storage_free(s);
}

/* ---- tt -------------------------------------------------------------------------------------- */

TEST(zoo_a_tt_row_is_the_product_of_the_cores) {
    const struct {
        int share, dim;
        const char *opts;
    } cfg[] = {{1, 8, NULL}, {0, 12, NULL}, {1, 16, "rank=5"}, {1, 6, "d=3/1/2,rank=2"}};
    for (size_t c = 0; c < ES_ARRAY_LEN(cfg); c++) {
        const int F = 2, n = 40, dim = cfg[c].dim;
        es_storage *s = make("tt", cfg[c].share, F, dim, 30000, cfg[c].opts, ES_OPT_SGD, 1.0f);
        CHECK(s);
        long long R, d[3], nn[6];
        CHECK_EQ_INT(meta_ints(s, "rank", &R, 1), 1);
        CHECK_EQ_INT(meta_ints(s, "d", d, 3), 3);
        CHECK_EQ_INT(meta_ints(s, "n", nn, 6), cfg[c].share ? 3 : 6);
        CHECK_EQ_INT(d[0] * d[1] * d[2], dim);
        es_tensor_ref refs[16];
        es_tensor_ref c0 = *tensor(s, refs, "core0"), c1 = *tensor(s, refs, "core1"), c2 = *tensor(s, refs, "core2");
        CHECK_EQ_INT(c0.shape[1], d[0] * R);
        CHECK_EQ_INT(c1.shape[1], R * d[1] * R);
        CHECK_EQ_INT(c2.shape[1], R * d[2]);
        uint64_t keys[80];
        float out[80 * 16];
        for (int i = 0; i < n * F; i++) keys[i] = es__mix64((uint64_t)i + 5);
        es_batch b;
        CHECK(batch_of_keys(&b, n, F, keys));
        es__storage_lookup(s, &b, 0, n, out);
        double worst = 0, scale = 0;
        for (int i = 0; i < n * F; i++) {
            const int f = i % F;
            const long long *nf = cfg[c].share ? nn : nn + 3 * f;
            uint64_t idx[3], x = es__hash_u64(keys[i], salt0(s, f));
            for (int k = 0; k < 3; k++) {
                unsigned __int128 y = (unsigned __int128)x * (uint64_t)nf[k];
                idx[k] = (uint64_t)(y >> 64) + ((!cfg[c].share && f == 1) ? (uint64_t)nn[k] : 0);
                x = (uint64_t)y;
            }
            const float *A = (const float *)c0.data + idx[0] * c0.shape[1];
            const float *B = (const float *)c1.data + idx[1] * c1.shape[1];
            const float *C = (const float *)c2.data + idx[2] * c2.shape[1];
            for (long long a = 0; a < d[0]; a++)
                for (long long bb = 0; bb < d[1]; bb++)
                    for (long long cc = 0; cc < d[2]; cc++) {
                        double e = 0;
                        for (long long r = 0; r < R; r++)
                            for (long long t = 0; t < R; t++)
                                e += (double)A[a * R + r] * B[(r * d[1] + bb) * R + t] * C[t * d[2] + cc];
                        double got = out[(size_t)i * dim + (size_t)((a * d[1] + bb) * d[2] + cc)];
                        worst = fmax(worst, fabs(e - got));
                        scale = fmax(scale, fabs(e));
                    }
        }
        printf("    tt share=%d dim=%d: %.70s: worst |lookup - core product| %.2g (values up to %.2g)\n", cfg[c].share,
               dim, s->meta, worst, scale);
        es_batch_free(&b);
        es__storage_free(s);
        CHECK(scale > 0);
        CHECK(worst <= 1e-5 * scale + 1e-9);
    }
}

TEST(zoo_a_tt_rank_follows_the_budget) {
    /* the rank grows with the budget up to max_rank; at the chosen rank
     * cores of ceil(N^(1/3)) slices fit and at rank + 1 they do not */
    es_vocab *v = es_sh_vocab(4);
    CHECK(v);
    double N = 0;
    for (int f = 0; f < 4; f++) N += (double)es_sh_distinct(f) + 1;
    const double side = ceil(cbrt(N));
    long long prev = 0;
    const double budgets[] = {0.01, 0.03, 0.1, 0.3, 1.0};
    for (size_t i = 0; i < ES_ARRAY_LEN(budgets); i++) {
        es_storage_params p = es__storage_params_default();
        p.method = "tt";
        p.n_fields = 4;
        p.dim = 16;
        es_sh_opt(&p, "share", 1);
        p.budget = budgets[i];
        es_storage *s;
        es_err err;
        CHECK_MSG(es__storage_create(&s, &p, v, &err) == 0, "%s", err.msg);
        long long R, d[3];
        CHECK_EQ_INT(meta_ints(s, "rank", &R, 1), 1);
        CHECK_EQ_INT(meta_ints(s, "d", d, 3), 3);
        CHECK_EQ_INT(d[0] * d[1] * d[2], 16);
        CHECK(d[1] <= d[0] && d[1] <= d[2]); /* smallest factor in the middle */
        double A = floor((s->budget_bytes - (double)s->aux_bytes) / 4);
        double cost = side * (double)(d[0] * R + R * R * d[1] + R * d[2]);
        double cost1 = side * (double)(d[0] * (R + 1) + (R + 1) * (R + 1) * d[1] + (R + 1) * d[2]);
        printf("    tt budget %.2f of full (%.0f B): rank %lld, %.60s\n", budgets[i], s->budget_bytes, R, s->meta);
        es__storage_free(s);
        CHECK(R >= prev);
        CHECK(R <= 32);
        CHECK(R == 1 || cost <= A);
        CHECK(R == 32 || cost1 > A);
        prev = R;
    }
    CHECK_EQ_INT(prev, 32);
    es_vocab_free(v);
}

/* ---- multihash -------------------------------------------------------------------------------- */

TEST(zoo_a_multihash_sums_k_rows_with_importance_weights) {
    const struct {
        int share, k, weighted;
    } cfg[] = {{1, 2, 1}, {0, 3, 1}, {1, 2, 0}};
    for (size_t c = 0; c < ES_ARRAY_LEN(cfg); c++) {
        const int F = 2, n = 60, dim = 4;
        char opts[64];
        snprintf(opts, sizeof opts, "k=%d,weights=%d", cfg[c].k, cfg[c].weighted);
        es_storage *s = make("multihash", cfg[c].share, F, dim, 9000, opts, ES_OPT_SGD, 1.0f);
        CHECK(s);
        long long P[2], K[2] = {0, 0};
        const int G = cfg[c].share ? 1 : F;
        CHECK_EQ_INT(meta_ints(s, "pool", P, 2), G);
        if (cfg[c].weighted) CHECK_EQ_INT(meta_ints(s, "imp", K, 2), G);
        es_tensor_ref refs[16];
        es_tensor_ref pool = *tensor(s, refs, "pool");
        es_tensor_ref *imp = tensor(s, refs, "importance");
        CHECK(cfg[c].weighted == (imp != NULL));
        /* distinct pool rows and importance weights, so any wrong row shows */
        float *pw = pool.data;
        for (size_t e = 0; e < pool.nbytes / sizeof(float); e++) pw[e] = (float)((e * 37) % 101) * 0.01f - 0.5f;
        float *iw = imp ? imp->data : NULL;
        if (iw)
            for (size_t e = 0; e < imp->nbytes / sizeof(float); e++) iw[e] = 0.5f + (float)(e % 7) * 0.25f;
        uint64_t keys[120];
        float out[120 * 4];
        for (int i = 0; i < n * F; i++) keys[i] = es__mix64((uint64_t)i + 31);
        es_batch b;
        CHECK(batch_of_keys(&b, n, F, keys));
        es__storage_lookup(s, &b, 0, n, out);
        double worst = 0;
        for (int i = 0; i < n * F; i++) {
            const int f = i % F, g = cfg[c].share ? 0 : f;
            const uint64_t pbase = g ? (uint64_t)P[0] : 0, kbase = g ? (uint64_t)K[0] : 0;
            const uint64_t h = es__hash_u64(keys[i], salt0(s, f));
            const uint64_t w = kbase + (cfg[c].weighted ? es__range(h, (uint64_t)K[g]) : 0);
            for (int d = 0; d < dim; d++) {
                double want = 0;
                for (int j = 0; j < cfg[c].k; j++) {
                    uint64_t r = pbase + es__range(es__mix64(h + (uint64_t)j * UINT64_C(0x9e3779b97f4a7c15)), (uint64_t)P[g]);
                    want += (iw ? iw[w * cfg[c].k + j] : 1.0) * pw[r * dim + d];
                }
                worst = fmax(worst, fabs(want - out[i * dim + d]));
            }
        }
        printf("    multihash share=%d k=%d weights=%d (%.50s): worst |lookup - rule| %.2g\n", cfg[c].share, cfg[c].k,
               cfg[c].weighted, s->meta, worst);
        es_batch_free(&b);
        es__storage_free(s);
        CHECK(worst < 1e-5);
    }
}

TEST(zoo_a_multihash_learns_the_importance_weights) {
    /* one value, one step: its importance row moves by -dout . pool row */
    es_storage *s = make("multihash", 1, 1, 4, 5000, "k=2", ES_OPT_SGD, 1.0f);
    CHECK(s);
    es_tensor_ref refs[16];
    es_tensor_ref pool = *tensor(s, refs, "pool"), imp = *tensor(s, refs, "importance");
    const size_t ni = imp.nbytes / sizeof(float), np = pool.nbytes / sizeof(float);
    float *i0 = malloc(ni * sizeof *i0), *p0 = malloc(np * sizeof *p0);
    CHECK(i0 && p0);
    memcpy(i0, imp.data, ni * sizeof *i0);
    memcpy(p0, pool.data, np * sizeof *p0);
    for (size_t e = 0; e < ni; e++) CHECK(i0[e] == 1.0f); /* weights start at 1 */
    uint64_t key = 99;
    es_batch b;
    CHECK(batch_of_keys(&b, 1, 1, &key));
    float g[4] = {1, -2, 0.5f, 3};
    CHECK_EQ_INT(es__storage_backward(s, &b, g), 0);
    const uint64_t h = es__hash_u64(key, salt0(s, 0));
    const uint64_t w = es__range(h, imp.shape[0]);
    size_t moved = 0;
    for (size_t e = 0; e < ni; e++) moved += ((float *)imp.data)[e] != i0[e];
    for (int j = 0; j < 2; j++) {
        uint64_t r = es__range(es__mix64(h + (uint64_t)j * UINT64_C(0x9e3779b97f4a7c15)), pool.shape[0]);
        double dot = 0;
        for (int d = 0; d < 4; d++) dot += (double)g[d] * p0[r * 4 + d];
        CHECK_NEAR(((float *)imp.data)[w * 2 + j], 1.0 - dot, 1e-6);
    }
    CHECK(moved >= 1 && moved <= 2);
    free(i0);
    free(p0);
    es_batch_free(&b);
    es__storage_free(s);
}

/* ---- the acceptance budgets on the real Criteo sample ---------------------------------------------- */

static es_vocab *criteo_vocab(void) {
    es_reader_params rp = es_reader_params_default();
    es_reader *r;
    es_err err;
    if (es_reader_open(&r, "data/criteo_kaggle_train_first10k.tsv", &rp, &err) != 0) {
        printf("    %s\n", err.msg);
        return NULL;
    }
    const int F = es_reader_n_fields(r);
    es_batch b;
    es_vocab *v = NULL;
    if (es_batch_alloc(&b, 1024, es_reader_n_dense(r), F, 1024 * (size_t)F) == 0 && es_vocab_create(&v, F) == 0) {
        int got;
        while ((got = es_reader_next(r, &b)) > 0)
            if (es_vocab_add_batch(v, &b) != 0) break;
        if (got != 0) {
            es_vocab_free(v);
            v = NULL;
        }
    }
    es_batch_free(&b);
    es_reader_free(r);
    return v;
}

TEST(zoo_a_criteo_acceptance_budgets) {
    es_vocab *v = criteo_vocab();
    CHECK(v);
    const double budgets[] = {1.0 / 4, 1.0 / 16, 1.0 / 64, 1.0 / 256, 1.0 / 1024};
    const char *methods[] = {"qr", "multihash", "robe", "tt"};
    int refused = 0;
    for (size_t m = 0; m < ES_ARRAY_LEN(methods); m++)
        for (int share = 1; share >= 0; share--)
            for (size_t i = 0; i < ES_ARRAY_LEN(budgets); i++) {
                es_storage_params p = es__storage_params_default();
                p.method = methods[m];
                p.n_fields = 26;
                p.dim = 16;
                es_sh_opt(&p, "share", share);
                p.budget = budgets[i];
                es_storage *s = NULL;
                es_err err = {0, ""};
                int rc = es__storage_create(&s, &p, v, &err);
                if (rc == ES_EBUDGET && share == 0 && i == ES_ARRAY_LEN(budgets) - 1) {
                    /* 1/1024 of this sample is 2.7 kB: 26 per-field parameter
                     * sets may not fit; the refusal must say so */
                    printf("    %-9s share=0 1/1024: refused: %.150s\n", methods[m], err.msg);
                    CHECK_STR_HAS(err.msg, "per field");
                    refused++;
                    continue;
                }
                CHECK_MSG(rc == 0, "%s share=%d budget %g: %s", methods[m], share, budgets[i], err.msg);
                double used = (double)s->param_bytes + (double)s->aux_bytes;
                printf("    %-9s share=%d 1/%-4.0f %8.0f B: %8.0f used (%5.1f%%)  %.60s\n", methods[m], share,
                       1 / budgets[i], s->budget_bytes, used, 100 * used / s->budget_bytes, s->meta);
                CHECK(used <= s->budget_bytes && used >= 0.95 * s->budget_bytes);
                es__storage_free(s);
            }
    printf("    %d of 40 configurations refused (share=0 at 1/1024 only)\n", refused);
    es_vocab_free(v);
}
