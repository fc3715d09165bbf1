/*
 * test_zoo_b.c — tests of the storage methods `dhe`, `mde` and `adapt`:
 * the generic harness (storage_harness.h: finite-difference gradients,
 * budgets, save/load round trips, determinism, threads, allocation
 * failures) in both share modes, and what is particular to each method.
 */
#include "storage_harness.h"
#include "test.h"

#include <math.h>

/* dhe.c: the dense code of a key (exported for this test). */
void es__dhe_encode(uint64_t key, uint64_t salt, int k, float *code);

static const double zoo_fracs[] = {0.25, 1.0 / 16, 1.0 / 64};

/* Value of integer key `key` in a storage's meta "k=v,..." (-1 if absent). */
static long long meta_int(const es_storage *s, const char *key) {
    size_t kl = strlen(key);
    for (const char *p = s->meta; p && *p;) {
        if (strncmp(p, key, kl) == 0 && p[kl] == '=') return atoll(p + kl + 1);
        p = strchr(p, ',');
        if (p) p++;
    }
    return -1;
}

static double meta_double(const es_storage *s, const char *key) {
    size_t kl = strlen(key);
    for (const char *p = s->meta; p && *p;) {
        if (strncmp(p, key, kl) == 0 && p[kl] == '=') return atof(p + kl + 1);
        p = strchr(p, ',');
        if (p) p++;
    }
    return NAN;
}

/* A batch of n rows whose every field holds one value: key keys[r*F + f]. */
static int batch_of_keys(es_batch *b, int n, int F, const uint64_t *keys) {
    if (es_batch_alloc(b, n, 0, F, (size_t)n * (size_t)F) != 0) return -1;
    for (int i = 0; i < n * F; i++) {
        b->off[i] = (uint32_t)i;
        b->val[i] = keys[i];
        b->wt[i] = 1.0f;
    }
    b->off[n * F] = (uint32_t)(n * F);
    b->n = n;
    return 0;
}

/* Train s to map each (row, field) of b to target[] (mean squared error,
 * full-batch steps); returns the loss after `steps` steps divided by the
 * loss before (NAN when out of memory). */
static double fit_ratio(es_storage *s, const es_batch *b, const float *target, int steps) {
    const size_t n = (size_t)b->n * (size_t)b->n_fields * (size_t)s->p.dim;
    float *out = malloc(n * sizeof *out), *g = malloc(n * sizeof *g);
    double first = 0, last = 0;
    if (!out || !g) {
        free(out);
        free(g);
        return NAN;
    }
    for (int t = 0; t <= steps; t++) {
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

/* ---- dhe ------------------------------------------------------------------------- */

TEST(zoo_b_dhe_harness_share0) {
    es_sh_cfg c = es_sh_cfg_make("dhe", 0);
    CHECK(es_sh_all(&c));
    CHECK(es_sh_budget(&c, zoo_fracs, (int)ES_ARRAY_LEN(zoo_fracs)));
}

TEST(zoo_b_dhe_harness_share1) {
    es_sh_cfg c = es_sh_cfg_make("dhe", 1);
    CHECK(es_sh_all(&c));
    CHECK(es_sh_budget(&c, zoo_fracs, (int)ES_ARRAY_LEN(zoo_fracs)));
}

TEST(zoo_b_dhe_harness_adam_one_layer) {
    /* A one-hidden-layer network passes the gradient check (which trains
     * with SGD), and Adam's state (two moments and a step count per
     * network) round-trips and repeats like the other optimizers'. */
    es_sh_cfg c = es_sh_cfg_make("dhe", 0);
    c.opts = "layers=1";
    CHECK(es_sh_gradcheck(&c));
    c.opts = "dense_opt=adam,layers=1,dense_lr=0.01";
    CHECK(es_sh_roundtrip(&c));
    CHECK(es_sh_determinism(&c));
    CHECK(es_sh_threads(&c));
}

TEST(zoo_b_dhe_code) {
    /* The code is a deterministic function of (key, salt): k values of the
     * documented splitmix64 stream seeded by one XXH3 hash. */
    enum { K = 64 };
    float a[K], b[K], c[K];
    const uint64_t salt = es__storage_salt(3, 1, 0);
    es__dhe_encode(12345, salt, K, a);
    es__dhe_encode(12345, salt, K, b);
    CHECK(memcmp(a, b, sizeof a) == 0);
    uint64_t h = es__hash_u64(12345, salt);
    for (int j = 0; j < K; j++) {
        uint64_t u = es__mix64(h + (uint64_t)j * UINT64_C(0x9e3779b97f4a7c15));
        float want = (float)((double)(u >> 11) * 0x1p-52 - 1.0);
        CHECK_NEAR(a[j], want, 0);
    }
    /* a prefix of a longer code is the shorter code */
    float longer[2 * K];
    es__dhe_encode(12345, salt, 2 * K, longer);
    CHECK(memcmp(a, longer, sizeof a) == 0);
    /* another key, another salt: another code */
    es__dhe_encode(12346, salt, K, b);
    es__dhe_encode(12345, es__storage_salt(3, 2, 0), K, c);
    int diff_key = 0, diff_salt = 0;
    for (int j = 0; j < K; j++) {
        diff_key += a[j] != b[j];
        diff_salt += a[j] != c[j];
    }
    CHECK(diff_key > K - 4 && diff_salt > K - 4);
    /* uniform on [-1, 1): mean 0, variance 1/3 */
    double s1 = 0, s2 = 0;
    int n = 0;
    for (uint64_t key = 0; key < 2000; key++) {
        es__dhe_encode(key, salt, K, a);
        for (int j = 0; j < K; j++) {
            CHECK(a[j] >= -1.0f && a[j] < 1.0f);
            s1 += a[j];
            s2 += (double)a[j] * a[j];
            n++;
        }
    }
    printf("    code mean %.4f, variance %.4f over %d draws\n", s1 / n, s2 / n - (s1 / n) * (s1 / n), n);
    CHECK_NEAR(s1 / n, 0.0, 0.01);
    CHECK_NEAR(s2 / n - (s1 / n) * (s1 / n), 1.0 / 3, 0.01);
}

TEST(zoo_b_dhe_no_table) {
    /* The parameters are the networks alone: the same bytes whatever the
     * vocabulary, no maps, and no tensor with a row per value. */
    for (int share = 0; share <= 1; share++) {
        es_storage_params p = es__storage_params_default();
        p.method = "dhe";
        p.n_fields = 3;
        p.dim = 16;
        es_sh_opt(&p, "share", share);
        p.budget = 100000;
        es_storage *s = NULL;
        es_err err;
        CHECK_MSG(es__storage_create(&s, &p, NULL, &err) == 0, "%s", err.msg);
        long long k = meta_int(s, "k"), h = meta_int(s, "h"), L = meta_int(s, "layers");
        const long long M = share ? 1 : 3;
        long long per = k * h + h + (L - 1) * (h * h + h) + h * 16 + 16;
        printf("    share=%d: meta %s, %zu bytes\n", share, s->meta, s->param_bytes);
        CHECK_EQ_INT(s->param_bytes, 4 * M * per);
        CHECK_EQ_INT(s->aux_bytes, 0);
        CHECK(s->param_bytes <= 100000 && (long long)s->param_bytes > 100000 - 4 * M * h);
        CHECK(k >= 2 * h);
        int nt = es__storage_tensors(s, NULL, 0);
        es_tensor_ref refs[64];
        CHECK(nt > 0 && nt <= 64);
        CHECK_EQ_INT(es__storage_tensors(s, refs, nt), nt);
        for (int i = 0; i < nt; i++) {
            CHECK_MSG(strstr(refs[i].name, "mlp.") != NULL || strcmp(refs[i].name, "opt.step") == 0, "tensor %s",
                      refs[i].name);
            CHECK((long long)refs[i].shape[0] == M);
        }
        /* a vocabulary does not change anything */
        es_vocab *v = es_sh_vocab(3);
        es_storage *s2 = NULL;
        CHECK(v);
        CHECK_MSG(es__storage_create(&s2, &p, v, &err) == 0, "%s", err.msg);
        CHECK(strcmp(s->meta, s2->meta) == 0 && s->param_bytes == s2->param_bytes);
        es__storage_free(s2);
        es_vocab_free(v);
        es__storage_free(s);
    }
}

TEST(zoo_b_dhe_same_key_same_vector) {
    es_storage_params p = es__storage_params_default();
    p.method = "dhe";
    p.n_fields = 2;
    p.dim = 8;
    es_sh_opt(&p, "share", 1);
    p.budget = 20000;
    es_storage *s = NULL;
    es_err err;
    CHECK_MSG(es__storage_create(&s, &p, NULL, &err) == 0, "%s", err.msg);
    /* rows: (7, 9), (9, 7), (7, 7): key 7 in field 0 at rows 0 and 2 */
    const uint64_t keys[] = {7, 9, 9, 7, 7, 7};
    es_batch b;
    CHECK(batch_of_keys(&b, 3, 2, keys) == 0);
    float out[3 * 2 * 8];
    es__storage_lookup(s, &b, 0, 3, out);
    /* outputs (r, f) start at (2r + f) * 8 */
    CHECK(memcmp(out + 0, out + 32, 8 * sizeof(float)) == 0);  /* key 7, field 0, rows 0 and 2 */
    CHECK(memcmp(out + 24, out + 40, 8 * sizeof(float)) == 0); /* key 7, field 1, rows 1 and 2 */
    CHECK(memcmp(out + 0, out + 24, 8 * sizeof(float)) != 0);  /* key 7: field 0 != field 1 (salts) */
    CHECK(memcmp(out + 8, out + 16, 8 * sizeof(float)) != 0);  /* key 9: field 1 != field 0 */
    CHECK(memcmp(out + 0, out + 8, 8 * sizeof(float)) != 0);   /* keys 7 and 9 differ */
    float nrm = 0;
    for (int d = 0; d < 8; d++) nrm += out[d] * out[d];
    CHECK(nrm > 0);
    es_batch_free(&b);
    es__storage_free(s);
}

TEST(zoo_b_dhe_learns) {
    /* Without a table the network must still be able to give 24 values
     * their own target vectors: the squared error falls by 10x. */
    const char *opts[] = {NULL, "dense_opt=adagrad", "dense_opt=adam,dense_lr=0.01"};
    for (int i = 0; i < 3; i++) {
        es_storage_params p = es__storage_params_default();
        p.method = "dhe";
        p.n_fields = 2;
        p.dim = 4;
        p.budget = 40000;
        p.opts = opts[i];
        es_sh_opt(&p, "share", 1);
        p.opt.lr = 0.05f;
        es_storage *s = NULL;
        es_err err;
        CHECK_MSG(es__storage_create(&s, &p, NULL, &err) == 0, "%s", err.msg);
        uint64_t keys[24];
        for (int r = 0; r < 24; r++) keys[r] = es__mix64((uint64_t)r);
        es_batch b;
        CHECK(batch_of_keys(&b, 12, 2, keys) == 0);
        float target[12 * 2 * 4];
        es_rng rng;
        es__rng_seed(&rng, 5);
        es__rng_fill_uniform(&rng, target, ES_ARRAY_LEN(target), 0.5f);
        double ratio = fit_ratio(s, &b, target, 300);
        printf("    %s: loss ratio after 300 steps %.2e\n", opts[i] ? opts[i] : "default (adam)", ratio);
        CHECK(ratio < 0.1);
        es_batch_free(&b);
        es__storage_free(s);
    }
}

/* ---- adapt ------------------------------------------------------------------------- */

TEST(zoo_b_adapt_harness_share0) {
    es_sh_cfg c = es_sh_cfg_make("adapt", 0);
    CHECK(es_sh_all(&c));
    CHECK(es_sh_budget(&c, zoo_fracs, (int)ES_ARRAY_LEN(zoo_fracs)));
}

TEST(zoo_b_adapt_harness_share1) {
    es_sh_cfg c = es_sh_cfg_make("adapt", 1);
    CHECK(es_sh_all(&c));
    CHECK(es_sh_budget(&c, zoo_fracs, (int)ES_ARRAY_LEN(zoo_fracs)));
}

TEST(zoo_b_adapt_harness_online) {
    /* Online mode: no promotions during the gradient check (a promotion
     * copies a row, which is not a gradient step), frequent promotions
     * (promote=2) in the round trip, determinism and thread checks, so the
     * sketch and the growing map must carry over exactly. */
    for (int share = 0; share <= 1; share++) {
        es_sh_cfg c = es_sh_cfg_make("adapt", share);
        c.opts = "mode=online,promote=1000000";
        CHECK(es_sh_gradcheck(&c));
        c.opts = "mode=online,promote=2";
        CHECK(es_sh_roundtrip(&c));
        CHECK(es_sh_determinism(&c));
        CHECK(es_sh_threads(&c));
        CHECK(es_sh_alloc_failures(&c));
        c.use_vocab = 0;
        CHECK(es_sh_roundtrip(&c));
    }
}

/* ---- mde ------------------------------------------------------------------------- */

TEST(zoo_b_mde_harness_share0) {
    es_sh_cfg c = es_sh_cfg_make("mde", 0);
    CHECK(es_sh_all(&c));
    CHECK(es_sh_budget(&c, zoo_fracs, (int)ES_ARRAY_LEN(zoo_fracs)));
}

TEST(zoo_b_mde_harness_share1) {
    es_sh_cfg c = es_sh_cfg_make("mde", 1);
    CHECK(es_sh_all(&c));
    CHECK(es_sh_budget(&c, zoo_fracs, (int)ES_ARRAY_LEN(zoo_fracs)));
}

/* ---- frequency-skewed data for mde and adapt ------------------------------------------ */

/* Value i of every field has count zipf_count(i) = 600 / (i + 1) (600 down
 * to 1) and key es_sh_key(f, i). */
#define ZIPF_N 600
static uint64_t zipf_count(uint64_t i) { return 600 / (i + 1); }

static es_vocab *zipf_vocab(int F) {
    size_t total = 0;
    for (uint64_t i = 0; i < ZIPF_N; i++) total += zipf_count(i);
    es_batch b;
    if (es_batch_alloc(&b, 1, 0, F, total * (size_t)F) != 0) return NULL;
    uint32_t o = 0;
    for (int f = 0; f < F; f++) {
        b.off[f] = o;
        for (uint64_t i = 0; i < ZIPF_N; i++)
            for (uint64_t c = 0; c < zipf_count(i); c++) {
                b.val[o] = es_sh_key(f, i);
                b.wt[o++] = 1.0f;
            }
    }
    b.off[F] = o;
    b.n = 1;
    es_vocab *v = NULL;
    if (es_vocab_create(&v, F) == 0 && es_vocab_add_batch(v, &b) != 0) {
        es_vocab_free(v);
        v = NULL;
    }
    es_batch_free(&b);
    return v;
}

/* A batch with one row per (field, value i < n): the row's field f holds
 * es_sh_key(f, i), its other fields are empty. */
static int one_value_rows(es_batch *b, int F, uint64_t n) {
    if (es_batch_alloc(b, (int)(n * (uint64_t)F), 0, F, (size_t)n * (size_t)F) != 0) return -1;
    uint32_t o = 0;
    int r = 0;
    for (int f = 0; f < F; f++)
        for (uint64_t i = 0; i < n; i++, r++)
            for (int g = 0; g < F; g++) {
                b->off[r * F + g] = o;
                if (g == f) {
                    b->val[o] = es_sh_key(f, i);
                    b->wt[o++] = 1.0f;
                }
            }
    b->off[r * F] = o;
    b->n = r;
    return 0;
}

/* The tensor named `name` of s (NULL if none). */
static const es_tensor_ref *find_tensor(es_storage *s, const char *name, es_tensor_ref *refs, int max) {
    int n = es__storage_tensors(s, refs, max);
    for (int i = 0; i < n; i++)
        if (strcmp(refs[i].name, name) == 0) return &refs[i];
    return NULL;
}

/* One SGD step (lr of s) on value i of field f alone; returns how many
 * OTHER (field, value) vectors of `all` changed, or -1 if its own did not. */
static int others_moved(es_storage *s, const es_batch *all, int F, int f, uint64_t i, float *before, float *after) {
    const int dim = s->p.dim;
    const size_t per_row = (size_t)F * (size_t)dim;
    es__storage_lookup(s, all, 0, all->n, before);
    es_batch one;
    if (es_batch_alloc(&one, 1, 0, F, 1) != 0) return -2;
    for (int g = 0; g <= F; g++) one.off[g] = g <= f ? 0u : 1u;
    one.val[0] = es_sh_key(f, i);
    one.wt[0] = 1.0f;
    one.n = 1;
    float G[64];
    for (size_t k = 0; k < per_row && k < 64; k++) G[k] = 1.0f;
    int rc = es__storage_backward(s, &one, G);
    es_batch_free(&one);
    if (rc) return -2;
    es__storage_lookup(s, all, 0, all->n, after);
    int moved = 0, own = 0;
    const size_t self_row = (size_t)f * ZIPF_N + i;
    for (size_t r = 0; r < (size_t)all->n; r++) {
        const size_t fo = r / ZIPF_N; /* rows of field fo hold their value in field fo */
        const float *x = before + r * per_row + fo * (size_t)dim, *y = after + r * per_row + fo * (size_t)dim;
        int ch = memcmp(x, y, (size_t)dim * sizeof(float)) != 0;
        if (r == self_row) own = ch;
        else moved += ch;
    }
    return own ? moved : -1;
}

/* ---- adapt: who gets private rows -------------------------------------------------------- */

TEST(zoo_b_adapt_frequent_private) {
    es_vocab *v = zipf_vocab(2);
    CHECK(v);
    for (int share = 0; share <= 1; share++) {
        es_storage_params p = es__storage_params_default();
        p.method = "adapt";
        p.n_fields = 2;
        p.dim = 4;
        es_sh_opt(&p, "share", share);
        p.budget = 8000;
        p.opt.kind = ES_OPT_SGD;
        p.opt.lr = 1.0f;
        es_storage *s = NULL;
        es_err err;
        CHECK_MSG(es__storage_create(&s, &p, v, &err) == 0, "%s", err.msg);
        long long P = meta_int(s, "private"), H = meta_int(s, "hashed");
        printf("    share=%d: %s\n", share, s->meta);
        CHECK(P >= 40 && P < 2 * ZIPF_N && H > 0);
        /* every private row is in use, and the rule spent about half the budget on them */
        es_tensor_ref refs[16];
        const es_tensor_ref *tn = find_tensor(s, "map.n", refs, 16);
        CHECK(tn);
        CHECK_EQ_INT(*(const uint64_t *)tn->data, P);
        CHECK_NEAR((double)P * (4 * 4 + 14), 0.5 * 8000, 0.05 * 8000);
        es_batch all;
        CHECK(one_value_rows(&all, 2, ZIPF_N) == 0);
        const size_t nout = (size_t)all.n * 2 * 4;
        float *before = malloc(nout * sizeof *before), *after = malloc(nout * sizeof *after);
        CHECK(before && after);
        /* the most frequent values (ranks < P/2 in each field, since both
         * fields have the same counts) own their rows */
        for (uint64_t i = 0; i < 10; i++)
            for (int f = 0; f < 2; f++) CHECK_EQ_INT(others_moved(s, &all, 2, f, i, before, after), 0);
        /* the rarest share hashed rows: (1200 - P) values in H rows */
        int shared = 0;
        for (uint64_t i = ZIPF_N - 10; i < ZIPF_N; i++) {
            int m = others_moved(s, &all, 2, 0, i, before, after);
            CHECK(m >= 0);
            shared += m > 0;
        }
        printf("    share=%d: 20 frequent values alone in their rows, %d of 10 rare ones share theirs\n", share, shared);
        CHECK(shared >= 8);
        es_field_stats st;
        s->ops->field_stats(s, v, 0, &st);
        printf("    field 0: distinct %llu, rows %llu, used %llu, collisions %llu\n", (unsigned long long)st.distinct,
               (unsigned long long)st.rows, (unsigned long long)st.rows_used, (unsigned long long)st.collisions);
        CHECK_EQ_INT(st.distinct, ZIPF_N);
        CHECK(st.collisions > 0 && st.collisions < ZIPF_N);
        free(before);
        free(after);
        es_batch_free(&all);
        es__storage_free(s);
    }
    /* a budget above the full table gives every value a private row */
    es_storage_params p = es__storage_params_default();
    p.method = "adapt";
    p.n_fields = 2;
    p.dim = 4;
    p.budget = (double)es__storage_full_bytes(v, 4, 1) * 3;
    es_storage *s = NULL;
    es_err err;
    CHECK_MSG(es__storage_create(&s, &p, v, &err) == 0, "%s", err.msg);
    CHECK_EQ_INT(meta_int(s, "private"), 2 * ZIPF_N);
    es__storage_free(s);
    es_vocab_free(v);
}

TEST(zoo_b_adapt_online_sketch) {
    /* No vocabulary: a count-min sketch finds the 5 values that recur and
     * promotes them; 400 values seen once stay hashed.  With lr = 0 no
     * vector may change, so a promotion must copy the hashed row exactly. */
    es_storage_params p = es__storage_params_default();
    p.method = "adapt";
    p.n_fields = 2;
    p.dim = 4;
    p.budget = 6000;
    p.opt.lr = 0.0f;
    p.opts = "promote=5,width=4096";
    es_sh_opt(&p, "share", 1);
    es_storage *s = NULL;
    es_err err;
    CHECK_MSG(es__storage_create(&s, &p, NULL, &err) == 0, "%s", err.msg);
    CHECK_STR_HAS(s->meta, "mode=online");
    es_batch b;
    CHECK(es_batch_alloc(&b, 20, 0, 2, 40) == 0);
    float out0[20 * 2 * 4], out1[20 * 2 * 4], G[20 * 2 * 4];
    for (size_t i = 0; i < ES_ARRAY_LEN(G); i++) G[i] = 1.0f;
    es_tensor_ref refs[16];
    uint64_t promoted_at = 0;
    for (int step = 0; step < 20; step++) {
        for (int r = 0; r < 20; r++) {
            b.off[2 * r] = (uint32_t)(2 * r);
            b.off[2 * r + 1] = (uint32_t)(2 * r + 1);
            b.val[2 * r] = es_sh_key(0, (uint64_t)(r % 5));                 /* recurring */
            b.val[2 * r + 1] = es_sh_key(1, (uint64_t)(step * 20 + r));     /* once each */
            b.wt[2 * r] = b.wt[2 * r + 1] = 1.0f;
        }
        b.off[40] = 40;
        b.n = 20;
        es__storage_lookup(s, &b, 0, 20, out0);
        CHECK(es__storage_backward(s, &b, G) == 0);
        es__storage_lookup(s, &b, 0, 20, out1);
        CHECK(memcmp(out0, out1, sizeof out0) == 0);
        const es_tensor_ref *tn = find_tensor(s, "map.n", refs, 16);
        CHECK(tn);
        uint64_t n = *(const uint64_t *)tn->data;
        if (n && !promoted_at) promoted_at = (uint64_t)step + 1;
    }
    const es_tensor_ref *tn = find_tensor(s, "map.n", refs, 16);
    printf("    %s: %llu promoted (first after step %llu)\n", s->meta, (unsigned long long)*(const uint64_t *)tn->data,
           (unsigned long long)promoted_at);
    CHECK_EQ_INT(*(const uint64_t *)tn->data, 5);
    CHECK_EQ_INT(promoted_at, 2); /* 4 occurrences per step: the 5th comes in step 2 */
    es_batch_free(&b);
    es__storage_free(s);
}

/* ---- mde: dimensions and alpha ----------------------------------------------------------- */

typedef struct {
    int f;
    uint64_t i;
} fi_t;

static int cmp_fi_pop(const void *a, const void *b) {
    const fi_t *x = a, *y = b;
    uint64_t cx = zipf_count(x->i), cy = zipf_count(y->i);
    if (cx != cy) return cx > cy ? -1 : 1;
    if (x->f != y->f) return x->f < y->f ? -1 : 1;
    uint64_t kx = es_sh_key(x->f, x->i), ky = es_sh_key(y->f, y->i);
    return (kx > ky) - (kx < ky);
}

static int cmp_fi_field_pop(const void *a, const void *b) {
    const fi_t *x = a, *y = b;
    if (x->f != y->f) return x->f < y->f ? -1 : 1;
    return cmp_fi_pop(a, b);
}

TEST(zoo_b_mde_dims_follow_popularity) {
    es_vocab *v = zipf_vocab(2);
    CHECK(v);
    const double full = (double)es__storage_full_bytes(v, 16, 1);
    for (int share = 0; share <= 1; share++) {
        double prev_alpha = -1;
        const double fracs[] = {2.0, 0.5, 0.25, 0.1, 0.05};
        for (size_t q = 0; q < ES_ARRAY_LEN(fracs); q++) {
            es_storage_params p = es__storage_params_default();
            p.method = "mde";
            p.n_fields = 2;
            p.dim = 16;
            es_sh_opt(&p, "share", share);
            p.budget = fracs[q] * full;
            es_storage *s = NULL;
            es_err err;
            CHECK_MSG(es__storage_create(&s, &p, v, &err) == 0, "%s", err.msg);
            const double alpha = meta_double(s, "alpha");
            const double used = (double)s->param_bytes + (double)s->aux_bytes;
            printf("    share=%d budget %.3g of full: %s (%.1f%%)\n", share, fracs[q], s->meta, 100 * used / s->budget_bytes);
            CHECK(used <= s->budget_bytes && used >= 0.95 * s->budget_bytes);
            /* alpha solves the budget: a smaller budget needs a larger alpha */
            CHECK(alpha >= prev_alpha);
            if (q == 0) CHECK(alpha == 0);
            else CHECK(alpha > 0);
            prev_alpha = alpha;
            es_tensor_ref refs[16];
            const es_tensor_ref *tt = find_tensor(s, "map.tiers", refs, 16);
            CHECK(tt);
            const uint64_t *tier = tt->data;
            const uint64_t T = tt->shape[0];
            const es_tensor_ref *tk = find_tensor(s, "map.keys", refs, 16);
            CHECK(tk);
            const uint64_t *keys = tk->data;
            /* The documented order of the map: popularity (count desc),
             * ties by field, then key (share=0: per field). */
            fi_t order[2 * ZIPF_N];
            size_t no = 0;
            for (int f = 0; f < 2; f++)
                for (uint64_t i = 0; i < ZIPF_N; i++) order[no++] = (fi_t){f, i};
            qsort(order, no, sizeof *order, share ? cmp_fi_pop : cmp_fi_field_pop);
            /* Walk the tiers: within a space, dims fall as popularity falls,
             * and each tier's dims follow round(16 (c / c_top)^alpha) at its
             * first and last value (+-1 for the printed alpha).  Keys are
             * tagged per field, so the XOR of two keys of one field is the
             * XOR of their raw keys. */
            uint64_t k = 0, first_key[2] = {0, 0};
            int seen[2] = {0, 0};
            size_t next[2] = {0, ZIPF_N}; /* share=0: field f's run starts at f * ZIPF_N */
            for (uint64_t t = 0; t < T; t++) {
                const uint64_t sp = tier[3 * t], cnt = tier[3 * t + 1], d = tier[3 * t + 2];
                if (t && tier[3 * (t - 1)] == sp) CHECK(d < tier[3 * (t - 1) + 2]);
                if (q == 0) CHECK_EQ_INT(d, 16);
                for (uint64_t j = 0; j < cnt; j++, k++) {
                    const fi_t e = order[next[share ? 0 : sp]++];
                    if (!seen[e.f]) {
                        seen[e.f] = 1;
                        first_key[e.f] = keys[k] ^ es_sh_key(e.f, e.i);
                    }
                    CHECK_MSG((keys[k] ^ es_sh_key(e.f, e.i)) == first_key[e.f], "map value %llu is not (%d, %llu)",
                              (unsigned long long)k, e.f, (unsigned long long)e.i);
                    if (j == 0 || j + 1 == cnt) {
                        double want = floor(16 * pow((double)zipf_count(e.i) / (double)zipf_count(0), alpha) + 0.5);
                        CHECK_MSG(fabs(want - (double)d) <= 1, "tier %llu (dim %llu): value %llu of count %llu wants %g",
                                  (unsigned long long)t, (unsigned long long)d, (unsigned long long)e.i,
                                  (unsigned long long)zipf_count(e.i), want);
                    }
                }
            }
            es__storage_free(s);
        }
    }
    es_vocab_free(v);
}
