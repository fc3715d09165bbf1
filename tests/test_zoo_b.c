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
        es_storage_lookup(s, b, 0, b->n, out);
        double L = 0;
        for (size_t i = 0; i < n; i++) {
            g[i] = out[i] - target[i];
            L += 0.5 * (double)g[i] * g[i];
        }
        if (t == 0) first = L;
        last = L;
        if (t < steps && es_storage_backward(s, b, g) != 0) {
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
        es_storage_params p = es_storage_params_default();
        p.method = "dhe";
        p.n_fields = 3;
        p.dim = 16;
        p.share = share;
        p.budget = 100000;
        es_storage *s = NULL;
        es_err err;
        CHECK_MSG(es_storage_create(&s, &p, NULL, &err) == 0, "%s", err.msg);
        long long k = meta_int(s, "k"), h = meta_int(s, "h"), L = meta_int(s, "layers");
        const long long M = share ? 1 : 3;
        long long per = k * h + h + (L - 1) * (h * h + h) + h * 16 + 16;
        printf("    share=%d: meta %s, %zu bytes\n", share, s->meta, s->param_bytes);
        CHECK_EQ_INT(s->param_bytes, 4 * M * per);
        CHECK_EQ_INT(s->aux_bytes, 0);
        CHECK(s->param_bytes <= 100000 && (long long)s->param_bytes > 100000 - 4 * M * h);
        CHECK(k >= 2 * h);
        int nt = es_storage_tensors(s, NULL, 0);
        es_tensor_ref refs[64];
        CHECK(nt > 0 && nt <= 64);
        CHECK_EQ_INT(es_storage_tensors(s, refs, nt), nt);
        for (int i = 0; i < nt; i++) {
            CHECK_MSG(strstr(refs[i].name, "mlp.") != NULL || strcmp(refs[i].name, "opt.step") == 0, "tensor %s",
                      refs[i].name);
            CHECK((long long)refs[i].shape[0] == M);
        }
        /* a vocabulary does not change anything */
        es_vocab *v = es_sh_vocab(3);
        es_storage *s2 = NULL;
        CHECK(v);
        CHECK_MSG(es_storage_create(&s2, &p, v, &err) == 0, "%s", err.msg);
        CHECK(strcmp(s->meta, s2->meta) == 0 && s->param_bytes == s2->param_bytes);
        es_storage_free(s2);
        es_vocab_free(v);
        es_storage_free(s);
    }
}

TEST(zoo_b_dhe_same_key_same_vector) {
    es_storage_params p = es_storage_params_default();
    p.method = "dhe";
    p.n_fields = 2;
    p.dim = 8;
    p.share = 1;
    p.budget = 20000;
    es_storage *s = NULL;
    es_err err;
    CHECK_MSG(es_storage_create(&s, &p, NULL, &err) == 0, "%s", err.msg);
    /* rows: (7, 9), (9, 7), (7, 7): key 7 in field 0 at rows 0 and 2 */
    const uint64_t keys[] = {7, 9, 9, 7, 7, 7};
    es_batch b;
    CHECK(batch_of_keys(&b, 3, 2, keys) == 0);
    float out[3 * 2 * 8];
    es_storage_lookup(s, &b, 0, 3, out);
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
    es_storage_free(s);
}

TEST(zoo_b_dhe_learns) {
    /* Without a table the network must still be able to give 24 values
     * their own target vectors: the squared error falls by 10x. */
    const char *opts[] = {NULL, "dense_opt=adam,dense_lr=0.01"};
    for (int i = 0; i < 2; i++) {
        es_storage_params p = es_storage_params_default();
        p.method = "dhe";
        p.n_fields = 2;
        p.dim = 4;
        p.share = 1;
        p.budget = 40000;
        p.opts = opts[i];
        p.opt.lr = 0.05f;
        es_storage *s = NULL;
        es_err err;
        CHECK_MSG(es_storage_create(&s, &p, NULL, &err) == 0, "%s", err.msg);
        uint64_t keys[24];
        for (int r = 0; r < 24; r++) keys[r] = es__mix64((uint64_t)r);
        es_batch b;
        CHECK(batch_of_keys(&b, 12, 2, keys) == 0);
        float target[12 * 2 * 4];
        es_rng rng;
        es__rng_seed(&rng, 5);
        es__rng_fill_uniform(&rng, target, ES_ARRAY_LEN(target), 0.5f);
        double ratio = fit_ratio(s, &b, target, 300);
        printf("    %s: loss ratio after 300 steps %.4f\n", opts[i] ? opts[i] : "adagrad", ratio);
        CHECK(ratio < 0.1);
        es_batch_free(&b);
        es_storage_free(s);
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
