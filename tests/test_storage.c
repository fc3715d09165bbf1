/*
 * test_storage.c — the storage layer: vocabulary counts (hand batches and
 * the real Criteo sample), the full / hash / unified methods (finite-
 * difference gradient checks, byte accounting against budgets, determinism,
 * salts and chunk layout, OOV rows and min_count, save/load round trip
 * through tensors()), the sparse optimizers against hand computations,
 * the gradient accumulator, and clean failures on bad input and on every
 * allocation failure.
 */
#include "test.h"

#include "core/core.h"
#include "storage/storage.h"
#include "storage_harness.h"

/* ---- helpers ----------------------------------------------------------------- */

/* A batch built by hand (plain malloc: the test owns it). */
static int tb_alloc(es_batch *b, int cap, int F, size_t val_cap) {
    memset(b, 0, sizeof *b);
    b->cap = cap;
    b->n_fields = F;
    b->off = calloc((size_t)cap * F + 1, sizeof *b->off);
    b->val = calloc(val_cap ? val_cap : 1, sizeof *b->val);
    b->wt = calloc(val_cap ? val_cap : 1, sizeof *b->wt);
    b->label = calloc((size_t)cap, sizeof *b->label);
    b->val_cap = val_cap;
    return b->off && b->val && b->wt && b->label;
}

static void tb_free(es_batch *b) {
    free(b->off);
    free(b->val);
    free(b->wt);
    free(b->label);
    memset(b, 0, sizeof *b);
}

/* Random batch of n rows: fields [0, F - n_multi) single-valued (weight 1),
 * the last n_multi fields hold 0..max_vals values with weights in
 * [0.25, 1.5), sometimes repeating a value inside the pair.  Keys are
 * drawn from [1000, 1000 + key_range), the same range for every field, so
 * small ranges give many duplicates across rows and fields. */
static int tb_random(es_batch *b, int n, int F, int n_multi, int max_vals, uint64_t key_range, es_rng *r) {
    if (!tb_alloc(b, n, F, (size_t)n * F * (size_t)(max_vals > 1 ? max_vals : 1))) return 0;
    uint32_t o = 0;
    for (int row = 0; row < n; row++)
        for (int f = 0; f < F; f++) {
            b->off[row * F + f] = o;
            int multi = f >= F - n_multi;
            int m = multi ? (int)(es__rng_u64(r) % (uint64_t)(max_vals + 1)) : 1;
            for (int i = 0; i < m; i++) {
                b->val[o] = 1000 + es__rng_u64(r) % key_range;
                if (multi && i > 0 && es__rng_u64(r) % 3 == 0) b->val[o] = b->val[o - 1];
                b->wt[o] = multi ? (float)(0.25 + 1.25 * es__rng_uniform(r)) : 1.0f;
                o++;
            }
        }
    b->off[n * F] = o;
    b->n = n;
    return 1;
}

static es_storage_params sp_make(const char *method, int F, int dim, double budget) {
    es_storage_params p = es__storage_params_default();
    p.method = method;
    p.n_fields = F;
    p.dim = dim;
    p.budget = budget;
    p.max_batch = 64;
    return p;
}

static es_tensor_ref *find_tensor(es_storage *s, es_tensor_ref *refs, int *n, const char *name) {
    *n = es__storage_tensors(s, refs, 8);
    for (int i = 0; i < *n; i++)
        if (strcmp(refs[i].name, name) == 0) return &refs[i];
    return NULL;
}

static double loss_of(const float *out, const float *G, size_t n) {
    double L = 0;
    for (size_t i = 0; i < n; i++) L += (double)out[i] * G[i];
    return L;
}

/* Finite-difference check of backward for L = sum(out * G):
 * analytic gradient from one SGD step with lr = 1 (grad = old - new),
 * numeric from central differences on every parameter. */
static int grad_check(es_storage *s, const es_batch *b, uint64_t seed, const char *what) {
    const size_t nout = (size_t)b->n * b->n_fields * s->p.dim;
    es_tensor_ref refs[8];
    int nt;
    es_tensor_ref *w = find_tensor(s, refs, &nt, "weight");
    if (!w) {
        es_test_fail(__FILE__, __LINE__, "%s: no weight tensor", what);
        return 0;
    }
    float *wp = w->data;
    size_t nw = w->nbytes / sizeof(float);
    float *G = malloc(nout * sizeof *G), *out = malloc(nout * sizeof *out);
    float *w0 = malloc(nw * sizeof *w0), *grad = malloc(nw * sizeof *grad);
    int ok = 0;
    if (!G || !out || !w0 || !grad) goto done;
    es_rng r;
    es__rng_seed(&r, seed);
    for (size_t i = 0; i < nout; i++) G[i] = es__rng_normal(&r);
    memcpy(w0, wp, nw * sizeof *w0);
    if (es__storage_backward(s, b, G) != 0) {
        es_test_fail(__FILE__, __LINE__, "%s: backward failed: %s", what, es__storage_errmsg(s));
        goto done;
    }
    for (size_t i = 0; i < nw; i++) grad[i] = w0[i] - wp[i];
    memcpy(wp, w0, nw * sizeof *w0);
    const float h = 1e-2f;
    size_t touched = 0;
    double worst = 0;
    for (size_t i = 0; i < nw; i++) {
        wp[i] = w0[i] + h;
        es__storage_lookup(s, b, 0, b->n, out);
        double lp = loss_of(out, G, nout);
        wp[i] = w0[i] - h;
        es__storage_lookup(s, b, 0, b->n, out);
        double lm = loss_of(out, G, nout);
        wp[i] = w0[i];
        double fd = (lp - lm) / (2.0 * (double)h);
        touched += grad[i] != 0;
        double d = fabs(fd - grad[i]) / (1e-3 + fabs(fd));
        if (d > worst) worst = d;
        if (!es_test_close(fd, grad[i], 2e-4, 1e-3)) {
            es_test_fail(__FILE__, __LINE__, "%s: param %zu: backward %.7g vs finite difference %.7g", what, i, grad[i], fd);
            goto done;
        }
    }
    printf("    %s: %zu params, %zu with gradient, worst rel err %.2e\n", what, nw, touched, worst);
    if (touched == 0) {
        es_test_fail(__FILE__, __LINE__, "%s: no parameter received a gradient", what);
        goto done;
    }
    ok = 1;
done:
    free(G);
    free(out);
    free(w0);
    free(grad);
    return ok;
}

static es_vocab *vocab_of(const es_batch *b) {
    es_vocab *v;
    if (es_vocab_create(&v, b->n_fields) != 0) return NULL;
    if (es_vocab_add_batch(v, b) != 0) {
        es_vocab_free(v);
        return NULL;
    }
    return v;
}

/* ---- vocabulary --------------------------------------------------------------- */

TEST(storage_vocab_counts_by_hand) {
    es_batch b;
    CHECK(tb_alloc(&b, 3, 2, 16));
    /* row0: f0 {7}, f1 {5,5,9}; row1: f0 {7}, f1 {}; row2: f0 {8}, f1 {9} */
    uint64_t vals[] = {7, 5, 5, 9, 7, 8, 9};
    memcpy(b.val, vals, sizeof vals);
    uint32_t off[] = {0, 1, 4, 5, 5, 6, 7};
    memcpy(b.off, off, sizeof off);
    b.n = 3;
    es_vocab *v;
    CHECK_EQ_INT(es_vocab_create(&v, 2), 0);
    CHECK_EQ_INT(es_vocab_add_batch(v, &b), 0);
    CHECK_EQ_INT(es__vocab_count(v, 0, 7), 2);
    CHECK_EQ_INT(es__vocab_count(v, 0, 8), 1);
    CHECK_EQ_INT(es__vocab_count(v, 0, 5), 0);
    CHECK_EQ_INT(es__vocab_count(v, 1, 5), 2);
    CHECK_EQ_INT(es__vocab_count(v, 1, 9), 2);
    CHECK_EQ_INT(es_vocab_distinct(v, 0), 2);
    CHECK_EQ_INT(es_vocab_distinct(v, 1), 2);
    CHECK_EQ_INT(es__vocab_distinct_min(v, 0, 2), 1);
    CHECK_EQ_INT(es__vocab_total(v, 1), 4);
    CHECK_EQ_INT(es__vocab_count(v, 5, 7), 0); /* out-of-range field */
    /* a batch with the wrong field count is refused, nothing counted */
    b.n_fields = 3;
    CHECK_EQ_INT(es_vocab_add_batch(v, &b), ES_EINVAL);
    CHECK_STR_HAS(es_vocab_errmsg(v), "fields");
    b.n_fields = 2;
    /* decreasing offsets are refused */
    b.off[2] = 0;
    CHECK_EQ_INT(es_vocab_add_batch(v, &b), ES_EINVAL);
    CHECK_EQ_INT(es__vocab_count(v, 0, 7), 2);
    es_vocab_free(v);
    es_vocab_free(NULL);
    tb_free(&b);
}

TEST(storage_vocab_grows_and_iterates) {
    /* 20000 distinct keys, each seen key % 3 + 1 times, in one field. */
    es_vocab *v;
    CHECK_EQ_INT(es_vocab_create(&v, 1), 0);
    es_batch b;
    CHECK(tb_alloc(&b, 1000, 1, 1000));
    uint64_t expect_total = 0;
    for (int rep = 0; rep < 3; rep++)
        for (int chunk = 0; chunk < 20; chunk++) {
            int n = 0;
            for (int i = 0; i < 1000; i++) {
                uint64_t key = (uint64_t)(chunk * 1000 + i) * UINT64_C(0x100000001b3);
                if ((uint64_t)(chunk * 1000 + i) % 3 + 1 > (uint64_t)rep) {
                    b.off[n] = (uint32_t)n;
                    b.val[n] = key;
                    n++;
                }
            }
            b.off[n] = (uint32_t)n;
            b.n = n;
            expect_total += (uint64_t)n;
            CHECK_EQ_INT(es_vocab_add_batch(v, &b), 0);
        }
    CHECK_EQ_INT(es_vocab_distinct(v, 0), 20000);
    CHECK_EQ_INT(es__vocab_total(v, 0), expect_total);
    CHECK_EQ_INT(es__vocab_distinct_min(v, 0, 2), 20000 - 6667);
    CHECK_EQ_INT(es__vocab_distinct_min(v, 0, 3), 6666);
    CHECK_EQ_INT(es__vocab_count(v, 0, (uint64_t)4 * UINT64_C(0x100000001b3)), 2);
    /* memory stays proportional to the distinct count: <= 64 bytes each */
    CHECK_MSG(es_vocab_bytes(v) <= 20000 * 64 + 1024, "vocab bytes %zu", es_vocab_bytes(v));
    tb_free(&b);
    es_vocab_free(v);
}

static void sum_counts(uint64_t key, uint64_t count, void *ctx) {
    (void)key;
    ((uint64_t *)ctx)[0] += count;
    ((uint64_t *)ctx)[1]++;
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* Vocabulary of the bundled Criteo sample, read with es_reader. */
static es_vocab *criteo_vocab(int *rows) {
    const char *path = "data/criteo_kaggle_train_first10k.tsv";
    es_reader_params rp = es_reader_params_default();
    es_reader *r;
    es_err err;
    if (es_reader_open(&r, path, &rp, &err) != 0) {
        printf("    cannot open %s: %s\n", path, err.msg);
        return NULL;
    }
    int F = es_reader_n_fields(r);
    es_batch b;
    es_vocab *v = NULL;
    *rows = 0;
    if (es_batch_alloc(&b, 512, es_reader_n_dense(r), F, 512 * (size_t)F) != 0) {
        es_reader_free(r);
        return NULL;
    }
    if (es_vocab_create(&v, F) == 0) {
        int got;
        while ((got = es_reader_next(r, &b)) > 0) {
            if (es_vocab_add_batch(v, &b) != 0) break;
            *rows += got;
        }
        if (got < 0) {
            printf("    read error: %s\n", es_reader_errmsg(r));
            es_vocab_free(v);
            v = NULL;
        }
    }
    es_batch_free(&b);
    es_reader_free(r);
    return v;
}

TEST(storage_vocab_criteo_sample) {
    int rows;
    es_vocab *v = criteo_vocab(&rows);
    CHECK(v);
    CHECK_EQ_INT(rows, 10000);
    CHECK_EQ_INT(es_vocab_n_fields(v), 26);
    /* Independent count: split the TSV by hand and count distinct tokens of
     * each categorical column (14 + f) with a sort. */
    char *text = es_test_slurp("data/criteo_kaggle_train_first10k.tsv");
    CHECK(text);
    uint64_t *keys = malloc(10000 * sizeof *keys);
    CHECK(keys);
    uint64_t sum_distinct = 0;
    for (int f = 0; f < 26; f++) {
        size_t n = 0;
        for (char *line = text; *line && n < 10000;) {
            char *eol = strchr(line, '\n');
            if (!eol) eol = line + strlen(line);
            char *c = line;
            for (int col = 0; col < 14 + f && c < eol; col++) {
                char *t = memchr(c, '\t', (size_t)(eol - c));
                c = t ? t + 1 : eol;
            }
            char *t = memchr(c, '\t', (size_t)(eol - c));
            size_t len = (size_t)((t ? t : eol) - c);
            if (len && c[len - 1] == '\r') len--;
            keys[n++] = es_key(c, len);
            line = *eol ? eol + 1 : eol;
        }
        CHECK_EQ_INT(n, 10000);
        qsort(keys, n, sizeof *keys, cmp_u64);
        uint64_t d = 0;
        for (size_t i = 0; i < n; i++) d += i == 0 || keys[i] != keys[i - 1];
        CHECK_MSG(es_vocab_distinct(v, f) == d, "field %d: vocab %llu distinct, by hand %llu", f,
                  (unsigned long long)es_vocab_distinct(v, f), (unsigned long long)d);
        uint64_t acc[2] = {0, 0};
        es__vocab_each(v, f, sum_counts, acc);
        CHECK_EQ_INT(acc[0], 10000); /* single-valued: one value per row */
        CHECK_EQ_INT(acc[1], d);
        CHECK_EQ_INT(es__vocab_count(v, f, keys[0]) > 0, 1);
        sum_distinct += d;
    }
    printf("    26 fields, %llu distinct values in 10000 rows\n", (unsigned long long)sum_distinct);
    size_t full = es__storage_full_bytes(v, 16, 1);
    CHECK_EQ_INT(full, (sum_distinct + 26) * 16 * 4);
    free(keys);
    free(text);
    es_vocab_free(v);
}

/* ---- finite-difference gradient checks ----------------------------------------- */

static void fd_method(const char *method, int dim, int chunks, int subtables, int share, int use_vocab, uint64_t seed) {
    es_rng r;
    es__rng_seed(&r, seed);
    es_batch b;
    CHECK(tb_random(&b, 12, 4, 2, 4, 40, &r));
    es_vocab *v = use_vocab ? vocab_of(&b) : NULL;
    CHECK(!use_vocab || v);
    es_storage_params p = sp_make(method, 4, dim, 0);
    p.opt.kind = ES_OPT_SGD;
    p.opt.lr = 1.0f;
    es_sh_opt(&p, "chunks", chunks);
    es_sh_opt(&p, "subtables", subtables);
    es_sh_opt(&p, "share", share);
    p.seed = seed;
    es_sh_opt(&p, "min_count", 2); /* full: rare values exercise the OOV rows */
    if (strcmp(method, "full") != 0) p.budget = 60.0 * dim * 4; /* ~60 rows: many collisions */
    es_storage *s;
    es_err err;
    int rc = es__storage_create(&s, &p, v, &err);
    CHECK_MSG(rc == 0, "%s create: %s", method, err.msg);
    char what[128];
    snprintf(what, sizeof what, "%s dim=%d k=%d T=%d share=%d", method, dim, chunks, subtables, share);
    int ok = grad_check(s, &b, seed + 1, what);
    es__storage_free(s);
    es_vocab_free(v);
    tb_free(&b);
    CHECK(ok);
}

TEST(storage_full_gradient_matches_finite_differences) { fd_method("full", 5, 1, 1, 0, 1, 11); }
TEST(storage_hash_gradient_matches_finite_differences) {
    fd_method("hash", 7, 1, 1, 0, 1, 12);
    fd_method("hash", 3, 1, 1, 0, 0, 13);
    fd_method("hash", 4, 1, 1, 1, 0, 14);
}
TEST(storage_unified_gradient_matches_finite_differences) {
    fd_method("unified", 8, 1, 1, 0, 0, 15);
    fd_method("unified", 8, 4, 3, 0, 0, 16);
    fd_method("unified", 6, 2, 8, 0, 0, 17);
}

/* ---- lookup against a plain reference --------------------------------------------- */

/* out computed from the hashed engine's arrays with the documented row rule. */
static void hashed_lookup_ref(es_storage *s, const es_batch *b, double *ref) {
    es__hashed *h = s->impl;
    const int F = b->n_fields, dim = s->p.dim, k = h->k, cd = h->cd;
    for (int r = 0; r < b->n; r++)
        for (int f = 0; f < F; f++) {
            double *o = ref + ((size_t)r * F + f) * dim;
            for (int d = 0; d < dim; d++) o[d] = 0;
            for (uint32_t i = b->off[r * F + f]; i < b->off[r * F + f + 1]; i++)
                for (int j = 0; j < k; j++) {
                    size_t c = (size_t)f * k + j;
                    uint64_t row = h->base[c] + es__range(es__hash_u64(b->val[i], h->salt[c]), h->nrows[c]);
                    for (int d = 0; d < cd; d++) o[j * cd + d] += (double)b->wt[i] * h->t.w[row * cd + d];
                }
        }
}

TEST(storage_lookup_matches_reference_with_long_and_empty_pairs) {
    es_rng r;
    es__rng_seed(&r, 5);
    /* max 300 values per multi-valued pair: longer than a resolve block */
    es_batch b;
    CHECK(tb_random(&b, 9, 3, 1, 300, 5000, &r));
    es_vocab *v = vocab_of(&b);
    CHECK(v);
    /* {chunks, subtables, method: 0 unified, 1 hash share=1, 2 hash share=0 with the vocab split} */
    const int chunk_cfg[][3] = {{1, 1, 0}, {4, 3, 0}, {2, 1, 0}, {1, 1, 1}, {1, 1, 2}};
    for (size_t c = 0; c < ES_ARRAY_LEN(chunk_cfg); c++) {
        es_storage_params p = sp_make(chunk_cfg[c][2] ? "hash" : "unified", 3, 12, 20000);
        es_sh_opt(&p, "chunks", chunk_cfg[c][0]);
        es_sh_opt(&p, "subtables", chunk_cfg[c][1]);
        es_sh_opt(&p, "share", chunk_cfg[c][2] == 1);
        es_storage *s;
        es_err err;
        CHECK_MSG(es__storage_create(&s, &p, chunk_cfg[c][2] == 2 ? v : NULL, &err) == 0, "%s", err.msg);
        size_t nout = (size_t)b.n * 3 * 12;
        float *out = malloc(nout * sizeof *out), *part = malloc(nout * sizeof *part);
        double *ref = malloc(nout * sizeof *ref);
        CHECK(out && part && ref);
        memset(out, 0x7f, nout * sizeof *out); /* garbage: lookup must overwrite every slot */
        es__storage_lookup(s, &b, 0, b.n, out);
        hashed_lookup_ref(s, &b, ref);
        int bad = -1;
        for (size_t i = 0; i < nout && bad < 0; i++)
            if (!es_test_close(out[i], ref[i], 1e-5, 1e-5)) bad = (int)i;
        /* sub-ranges give the same rows, bit for bit */
        es__storage_lookup(s, &b, 3, 7, part);
        int sub_ok = memcmp(part, out + (size_t)3 * 3 * 12, (size_t)4 * 3 * 12 * sizeof *out) == 0;
        if (bad >= 0) printf("    config %zu: out[%d] = %g, reference %g\n", c, bad, out[bad], ref[bad]);
        free(out);
        free(part);
        free(ref);
        es__storage_free(s);
        CHECK_MSG(bad < 0, "lookup differs from the reference (config %zu)", c);
        CHECK_MSG(sub_ok, "sub-range lookup differs (config %zu)", c);
    }
    es_vocab_free(v);
    tb_free(&b);
}

/* ---- byte accounting ------------------------------------------------------------- */

static int check_bytes(es_storage *s, double budget, int within5, const char *what) {
    es_tensor_ref refs[8];
    int nt;
    es_tensor_ref *w = find_tensor(s, refs, &nt, "weight");
    es_tensor_ref *acc = NULL;
    for (int i = 0; i < nt; i++)
        if (strcmp(refs[i].name, "opt.acc") == 0) acc = &refs[i];
    size_t used = s->param_bytes + s->aux_bytes;
    printf("    %-28s budget %10.0f  params %9zu  aux %7zu  state %8zu  (%.1f%%)\n", what, budget, s->param_bytes,
           s->aux_bytes, s->state_bytes, budget > 0 ? 100.0 * (double)used / budget : 0.0);
    if (!w || w->nbytes != s->param_bytes) {
        es_test_fail(__FILE__, __LINE__, "%s: weight tensor bytes %zu != param_bytes %zu", what, w ? w->nbytes : 0,
                     s->param_bytes);
        return 0;
    }
    if ((acc ? acc->nbytes : 0) != s->state_bytes) {
        es_test_fail(__FILE__, __LINE__, "%s: opt.acc bytes != state_bytes %zu", what, s->state_bytes);
        return 0;
    }
    if (budget > 0 && (double)used > budget) {
        es_test_fail(__FILE__, __LINE__, "%s: %zu bytes over the %.0f budget", what, used, budget);
        return 0;
    }
    if (within5 && (double)used < 0.95 * budget) {
        es_test_fail(__FILE__, __LINE__, "%s: %zu bytes is more than 5%% below the %.0f budget", what, used, budget);
        return 0;
    }
    return 1;
}

TEST(storage_bytes_match_allocation_and_budget) {
    const double budgets[] = {4096, 50000, 123457, 2e6};
    for (size_t i = 0; i < ES_ARRAY_LEN(budgets); i++) {
        struct {
            const char *m;
            int k, T, share;
            es_optim o;
        } cfg[] = {{"hash", 1, 1, 0, ES_OPT_ROWWISE_ADAGRAD}, {"hash", 1, 1, 1, ES_OPT_ADAGRAD},
                   {"unified", 1, 1, 0, ES_OPT_SGD},           {"unified", 4, 1, 0, ES_OPT_ROWWISE_ADAGRAD},
                   {"unified", 2, 5, 0, ES_OPT_ADAGRAD}};
        for (size_t c = 0; c < ES_ARRAY_LEN(cfg); c++) {
            es_storage_params p = sp_make(cfg[c].m, 10, 16, budgets[i]);
            es_sh_opt(&p, "chunks", cfg[c].k);
            es_sh_opt(&p, "subtables", cfg[c].T);
            es_sh_opt(&p, "share", cfg[c].share);
            p.opt.kind = cfg[c].o;
            es_storage *s;
            es_err err;
            CHECK_MSG(es__storage_create(&s, &p, NULL, &err) == 0, "%s: %s", cfg[c].m, err.msg);
            char what[64];
            snprintf(what, sizeof what, "%s k=%d T=%d share=%d", cfg[c].m, cfg[c].k, cfg[c].T, cfg[c].share);
            int ok = check_bytes(s, budgets[i], 1, what);
            /* aux is exactly the per-(field, chunk) arrays */
            int aux_ok = s->aux_bytes == (size_t)10 * cfg[c].k * 3 * 8;
            es__storage_free(s);
            CHECK(ok);
            CHECK(aux_ok);
        }
    }
    /* full: exact bytes of rows and map */
    es_rng r;
    es__rng_seed(&r, 3);
    es_batch b;
    CHECK(tb_random(&b, 50, 3, 1, 3, 300, &r));
    es_vocab *v = vocab_of(&b);
    CHECK(v);
    es_storage_params p = sp_make("full", 3, 8, 0);
    es_storage *s;
    es_err err;
    CHECK_MSG(es__storage_create(&s, &p, v, &err) == 0, "%s", err.msg);
    uint64_t distinct = es_vocab_distinct(v, 0) + es_vocab_distinct(v, 1) + es_vocab_distinct(v, 2);
    CHECK_EQ_INT(s->param_bytes, (distinct + 3) * 8 * 4);
    CHECK_EQ_INT(s->param_bytes, es__storage_full_bytes(v, 8, 1));
    CHECK_EQ_INT(s->state_bytes, (distinct + 3) * 4); /* row-wise adagrad: one float per row */
    size_t icap = 2;
    while (icap < 2 * distinct) icap <<= 1;
    CHECK_EQ_INT(s->aux_bytes, distinct * 8 + 4 * 8 + icap * 4);
    CHECK(check_bytes(s, 0, 0, "full (budget 0)"));
    double need = (double)(s->param_bytes + s->aux_bytes);
    es__storage_free(s);
    /* a budget that fits exactly works; one byte less is refused */
    p.budget = need;
    CHECK_MSG(es__storage_create(&s, &p, v, &err) == 0, "%s", err.msg);
    es__storage_free(s);
    p.budget = need - 1;
    CHECK_EQ_INT(es__storage_create(&s, &p, v, &err), ES_EBUDGET);
    CHECK_STR_HAS(err.msg, "budget");
    CHECK(s == NULL);
    es_vocab_free(v);
    tb_free(&b);
}

TEST(storage_budget_fractions_on_criteo_vocab) {
    int rows;
    es_vocab *v = criteo_vocab(&rows);
    CHECK(v);
    const size_t full = es__storage_full_bytes(v, 16, 1);
    const double fr[] = {0.1, 0.01};
    for (size_t i = 0; i < 2; i++) {
        const char *methods[] = {"hash", "unified", "unified"};
        for (int m = 0; m < 3; m++) {
            es_storage_params p = sp_make(methods[m], 26, 16, fr[i]);
            if (m == 2) {
                es_sh_opt(&p, "chunks", 4);
                es_sh_opt(&p, "subtables", 2);
            }
            es_storage *s;
            es_err err;
            CHECK_MSG(es__storage_create(&s, &p, v, &err) == 0, "%s: %s", methods[m], err.msg);
            CHECK_NEAR(s->budget_bytes, floor(fr[i] * (double)full), 0.5);
            char what[64];
            snprintf(what, sizeof what, "%s 1/%.0f of full %s", methods[m], 1 / fr[i], m == 2 ? "k=4,T=2" : "");
            int ok = check_bytes(s, s->budget_bytes, 1, what);
            /* hash: rows split by distinct counts, never above d_f + 1 */
            int split_ok = 1;
            if (m == 0) {
                es__hashed *h = s->impl;
                for (int f = 0; f < 26; f++) {
                    if (h->nrows[f] < 1 || h->nrows[f] > es_vocab_distinct(v, f) + 1) split_ok = 0;
                    /* a field with more distinct values never gets fewer rows */
                    for (int g = 0; g < 26; g++)
                        if (es_vocab_distinct(v, g) > es_vocab_distinct(v, f) && h->nrows[g] + 1 < h->nrows[f] &&
                            h->nrows[g] < es_vocab_distinct(v, g) + 1)
                            split_ok = 0;
                }
            }
            es_field_stats st;
            s->ops->field_stats(s, v, 2, &st);
            es__storage_free(s);
            CHECK(ok);
            CHECK_MSG(split_ok, "hash row split is not monotone in distinct counts / capped");
            /* k > 1: rows_used counts (chunk, row) pairs, up to k per value */
            CHECK_MSG(st.rows_used <= st.rows && st.rows_used <= st.distinct * (uint64_t)(m == 2 ? 4 : 1) &&
                          st.collisions <= st.distinct && st.distinct == es_vocab_distinct(v, 2),
                      "%s field 2: distinct %llu rows %llu used %llu collisions %llu", what,
                      (unsigned long long)st.distinct, (unsigned long long)st.rows, (unsigned long long)st.rows_used,
                      (unsigned long long)st.collisions);
            if (i == 1 && m == 0) CHECK(st.collisions > 0); /* 1/100 of full must collide */
        }
    }
    /* full on the real vocabulary: one row per value, no collisions */
    es_storage_params p = sp_make("full", 26, 16, 0);
    es_storage *s;
    es_err err;
    CHECK_MSG(es__storage_create(&s, &p, v, &err) == 0, "%s", err.msg);
    CHECK_EQ_INT(s->param_bytes, full);
    for (int f = 0; f < 26; f++) {
        es_field_stats st;
        s->ops->field_stats(s, v, f, &st);
        CHECK_EQ_INT(st.collisions, 0);
        CHECK_EQ_INT(st.rows_used, st.distinct);
        CHECK_EQ_INT(st.rows, st.distinct + 1);
    }
    es__storage_free(s);
    es_vocab_free(v);
}

TEST(storage_hash_row_split_rules) {
    /* distinct counts 1, 3, 100, 1000; 200 rows to split */
    es_batch b;
    CHECK(tb_alloc(&b, 1000, 4, 4000));
    for (int i = 0; i < 1000; i++) {
        const uint64_t key[4] = {0, (uint64_t)(i % 3), (uint64_t)(i % 100), (uint64_t)i};
        for (int f = 0; f < 4; f++) {
            b.off[i * 4 + f] = (uint32_t)(i * 4 + f);
            b.val[i * 4 + f] = key[f];
            b.wt[i * 4 + f] = 1;
        }
    }
    b.off[4000] = 4000;
    b.n = 1000;
    es_vocab *v = vocab_of(&b);
    CHECK(v);
    struct {
        const char *opts;
        uint64_t rows[4];
    } cases[] = {
        /* equal: 49 each, the two small fields capped at d + 1, the rest
         * shared by the large ones */
        {NULL, {2, 4, 97, 97}},
        {"split=equal", {2, 4, 97, 97}},
        /* prop: 196 spare rows by 1:3:100:1000 -> 0, 0, 17, 177; the 2
         * left: 2 by 1:3:100:1000 -> one to field 3; the last goes to the
         * first uncapped field */
        {"split=prop", {2, 1, 18, 179}},
    };
    for (size_t c = 0; c < ES_ARRAY_LEN(cases); c++) {
        es_storage_params p = sp_make("hash", 4, 4, 4 * 24 + 200 * 4 * 4);
        p.opts = cases[c].opts;
        es_storage *s;
        es_err err;
        CHECK_MSG(es__storage_create(&s, &p, v, &err) == 0, "%s", err.msg);
        es__hashed *h = s->impl;
        for (int f = 0; f < 4; f++)
            CHECK_MSG(h->nrows[f] == cases[c].rows[f], "%s: field %d has %llu rows, expected %llu",
                      cases[c].opts ? cases[c].opts : "default", f, (unsigned long long)h->nrows[f],
                      (unsigned long long)cases[c].rows[f]);
        CHECK_EQ_INT(h->base[3], cases[c].rows[0] + cases[c].rows[1] + cases[c].rows[2]);
        es__storage_free(s);
    }
    es_storage_params p = sp_make("hash", 4, 4, 4 * 24 + 200 * 4 * 4);
    p.opts = "split=sqrt";
    es_storage *s;
    es_err err;
    CHECK_EQ_INT(es__storage_create(&s, &p, v, &err), 0);
    es__hashed *h = s->impl;
    CHECK(h->nrows[0] == 2 && h->nrows[1] == 4 && h->nrows[2] < h->nrows[3]);
    CHECK_EQ_INT(h->t.n_rows, 200);
    es__storage_free(s);
    /* exactly the caps: 2 + 4 + 101 + 1001 = 1108 rows */
    p.opts = NULL;
    p.budget = 4 * 24 + 1108 * 4 * 4;
    CHECK_EQ_INT(es__storage_create(&s, &p, v, &err), 0);
    h = s->impl;
    CHECK(h->nrows[0] == 2 && h->nrows[1] == 4 && h->nrows[2] == 101 && h->nrows[3] == 1001);
    es__storage_free(s);
    /* 12 rows more than the caps: equal weights lift the caps, 3 each */
    p.budget = 4 * 24 + 1120 * 4 * 4;
    CHECK_EQ_INT(es__storage_create(&s, &p, v, &err), 0);
    h = s->impl;
    CHECK(h->nrows[0] == 5 && h->nrows[1] == 7 && h->nrows[2] == 104 && h->nrows[3] == 1004);
    es__storage_free(s);
    p.opts = "split=bogus";
    CHECK_EQ_INT(es__storage_create(&s, &p, v, &err), ES_EINVAL);
    CHECK_STR_HAS(err.msg, "split=bogus");
    es_vocab_free(v);
    tb_free(&b);
}

/* ---- determinism -------------------------------------------------------------------- */

static int train_and_hash(const es_storage_params *p, const es_vocab *v, const es_batch *b, uint64_t *digest) {
    es_storage *s;
    es_err err;
    if (es__storage_create(&s, p, v, &err) != 0) return 0;
    size_t nout = (size_t)b->n * b->n_fields * p->dim;
    float *G = malloc(nout * sizeof *G);
    es_rng r;
    es__rng_seed(&r, 99);
    for (int step = 0; step < 3; step++) {
        for (size_t i = 0; i < nout; i++) G[i] = es__rng_normal(&r);
        es__storage_backward(s, b, G);
    }
    free(G);
    es_tensor_ref refs[8];
    int nt = es__storage_tensors(s, refs, 8);
    *digest = 0;
    for (int i = 0; i < nt; i++) *digest ^= es__hash(refs[i].data, refs[i].nbytes, (uint64_t)i);
    es__storage_free(s);
    return 1;
}

TEST(storage_same_seed_gives_identical_tables) {
    es_rng r;
    es__rng_seed(&r, 8);
    es_batch b;
    CHECK(tb_random(&b, 30, 5, 2, 3, 500, &r));
    es_vocab *v = vocab_of(&b);
    CHECK(v);
    const char *methods[] = {"full", "hash", "unified"};
    for (int m = 0; m < 3; m++) {
        es_storage_params p = sp_make(methods[m], 5, 8, m == 0 ? 0 : 0.3);
        es_sh_opt(&p, "chunks", m == 2 ? 2 : 1);
        uint64_t d1, d2, d3;
        CHECK(train_and_hash(&p, v, &b, &d1));
        CHECK(train_and_hash(&p, v, &b, &d2));
        p.seed = 2;
        CHECK(train_and_hash(&p, v, &b, &d3));
        CHECK_MSG(d1 == d2, "%s: same seed, different tables", methods[m]);
        CHECK_MSG(d1 != d3, "%s: different seeds, same tables", methods[m]);
    }
    /* init_scale 0 gives zeros */
    es_storage_params p = sp_make("hash", 5, 8, 10000);
    p.init_scale = 0;
    es_storage *s;
    es_err err;
    CHECK_EQ_INT(es__storage_create(&s, &p, NULL, &err), 0);
    es_tensor_ref refs[8];
    int nt;
    es_tensor_ref *w = find_tensor(s, refs, &nt, "weight");
    int zeros = 1;
    for (size_t i = 0; i < w->nbytes / 4; i++) zeros &= ((float *)w->data)[i] == 0.0f;
    /* and U(-s, s) otherwise */
    es__storage_free(s);
    CHECK(zeros);
    p.init_scale = 0.05f;
    CHECK_EQ_INT(es__storage_create(&s, &p, NULL, &err), 0);
    w = find_tensor(s, refs, &nt, "weight");
    float lo = 1, hi = -1;
    for (size_t i = 0; i < w->nbytes / 4; i++) {
        float x = ((float *)w->data)[i];
        lo = x < lo ? x : lo;
        hi = x > hi ? x : hi;
    }
    es__storage_free(s);
    CHECK(lo >= -0.05f && hi <= 0.05f && lo < -0.04f && hi > 0.04f);
    es_vocab_free(v);
    tb_free(&b);
}

/* ---- method specifics ------------------------------------------------------------------ */

TEST(storage_unified_salts_and_chunk_layout) {
    /* 3 fields all holding the same key 42: each field's chunks must read
     * the rows the documented rule gives, which differ across fields. */
    const int F = 3, dim = 12, k = 3, T = 2, cd = 4;
    es_storage_params p = sp_make("unified", F, dim, 100000);
    es_sh_opt(&p, "chunks", k);
    es_sh_opt(&p, "subtables", T);
    es_storage *s;
    es_err err;
    CHECK_MSG(es__storage_create(&s, &p, NULL, &err) == 0, "%s", err.msg);
    es__hashed *h = s->impl;
    uint64_t R = h->t.n_rows;
    CHECK_EQ_INT(h->cd, cd);
    CHECK_STR_HAS(s->meta, "chunks=3,subtables=2");
    es_batch b;
    CHECK(tb_alloc(&b, 1, F, F));
    for (int f = 0; f < F; f++) {
        b.off[f] = (uint32_t)f;
        b.val[f] = 42;
        b.wt[f] = 1;
    }
    b.off[F] = F;
    b.n = 1;
    float out[3 * 12];
    es__storage_lookup(s, &b, 0, 1, out);
    uint64_t rows_seen[9];
    for (int f = 0; f < F; f++)
        for (int j = 0; j < k; j++) {
            int t = (f * k + j) % T;
            uint64_t per = R / T, base = (uint64_t)t * per + (uint64_t)(t < (int)(R % T) ? t : (int)(R % T));
            uint64_t nrows = per + ((uint64_t)t < R % T);
            uint64_t row = base + es__range(es__hash_u64(42, es__storage_salt(p.seed, f, j)), nrows);
            rows_seen[f * k + j] = row;
            CHECK(memcmp(out + f * dim + j * cd, h->t.w + row * cd, cd * sizeof(float)) == 0);
        }
    /* salts: the same key gets different rows in different fields */
    for (int a = 0; a < 9; a++)
        for (int c = a + 1; c < 9; c++) CHECK_MSG(rows_seen[a] != rows_seen[c], "chunks %d and %d share row", a, c);
    CHECK(memcmp(out, out + dim, dim * sizeof(float)) != 0);
    es__storage_free(s);
    /* dim not divisible by chunks */
    p.dim = 10;
    CHECK_EQ_INT(es__storage_create(&s, &p, NULL, &err), ES_EINVAL);
    CHECK_STR_HAS(err.msg, "divisible");
    /* too many sub-tables */
    p.dim = 12;
    p.opts = "chunks=3,subtables=10";
    CHECK_EQ_INT(es__storage_create(&s, &p, NULL, &err), ES_EINVAL);
    CHECK_STR_HAS(err.msg, "subtables");
    tb_free(&b);
}

TEST(storage_hash_share_equals_unified_k1) {
    es_rng r;
    es__rng_seed(&r, 4);
    es_batch b;
    CHECK(tb_random(&b, 20, 6, 2, 3, 1000, &r));
    es_storage_params ph = sp_make("hash", 6, 8, 30000), pu = sp_make("unified", 6, 8, 30000);
    es_sh_opt(&ph, "share", 1);
    es_storage *sh, *su;
    es_err err;
    CHECK_EQ_INT(es__storage_create(&sh, &ph, NULL, &err), 0);
    CHECK_EQ_INT(es__storage_create(&su, &pu, NULL, &err), 0);
    size_t n = (size_t)20 * 6 * 8;
    float *a = malloc(n * 4), *c = malloc(n * 4);
    es__storage_lookup(sh, &b, 0, 20, a);
    es__storage_lookup(su, &b, 0, 20, c);
    int same = memcmp(a, c, n * 4) == 0;
    int bytes_same = sh->param_bytes == su->param_bytes && sh->aux_bytes == su->aux_bytes;
    free(a);
    free(c);
    es__storage_free(sh);
    es__storage_free(su);
    tb_free(&b);
    CHECK(same);
    CHECK(bytes_same);
}

TEST(storage_full_oov_rows_and_min_count) {
    /* field 0: key 10 x3, key 20 x1, key 5 x2; field 1: key 10 x1 */
    es_batch b;
    CHECK(tb_alloc(&b, 6, 2, 12));
    uint64_t f0[] = {10, 20, 10, 5, 10, 5};
    uint32_t o = 0;
    for (int r = 0; r < 6; r++) {
        b.off[r * 2] = o;
        b.val[o] = f0[r];
        b.wt[o++] = 1;
        b.off[r * 2 + 1] = o;
        if (r == 0) {
            b.val[o] = 10;
            b.wt[o++] = 1;
        }
    }
    b.off[12] = o;
    b.n = 6;
    es_vocab *v = vocab_of(&b);
    CHECK(v);
    es_storage_params p = sp_make("full", 2, 4, 0);
    es_sh_opt(&p, "min_count", 2);
    es_storage *s;
    es_err err;
    CHECK_MSG(es__storage_create(&s, &p, v, &err) == 0, "%s", err.msg);
    /* kept: field 0 {5, 10} (sorted), field 1 {} -> rows: f0 OOV=0, 5->1,
     * 10->2; f1 OOV=3 */
    CHECK_EQ_INT(s->param_bytes, 4 * 4 * 4);
    CHECK_STR_HAS(s->meta, "keys=2");
    es_batch q;
    CHECK(tb_alloc(&q, 5, 2, 10));
    uint64_t qv[5][2] = {{5, 10}, {10, 77}, {20, 10}, {999, 5}, {10, 10}};
    for (int r = 0; r < 5; r++)
        for (int f = 0; f < 2; f++) {
            q.off[r * 2 + f] = (uint32_t)(r * 2 + f);
            q.val[r * 2 + f] = qv[r][f];
            q.wt[r * 2 + f] = 1;
        }
    q.off[10] = 10;
    q.n = 5;
    float out[5 * 2 * 4];
    es__storage_lookup(s, &q, 0, 5, out);
    es_tensor_ref refs[8];
    int nt;
    es_tensor_ref *wt = find_tensor(s, refs, &nt, "weight");
    const float *W = wt->data;
    int expect[5][2] = {{1, 3}, {2, 3}, {0, 3}, {0, 3}, {2, 3}};
    for (int r = 0; r < 5; r++)
        for (int f = 0; f < 2; f++)
            CHECK_MSG(memcmp(out + (r * 2 + f) * 4, W + expect[r][f] * 4, 16) == 0, "row %d field %d: expected table row %d",
                      r, f, expect[r][f]);
    /* OOV rows are distinct rows, not copies */
    CHECK(memcmp(W, W + 3 * 4, 16) != 0);
    es_field_stats st;
    s->ops->field_stats(s, v, 0, &st);
    CHECK_EQ_INT(st.distinct, 3);
    CHECK_EQ_INT(st.rows, 3);
    CHECK_EQ_INT(st.rows_used, 3);  /* 5, 10 own rows; 20 in OOV */
    CHECK_EQ_INT(st.collisions, 0); /* 20 is alone in the OOV row */
    s->ops->field_stats(s, v, 1, &st);
    CHECK_EQ_INT(st.rows, 1);
    CHECK_EQ_INT(st.rows_used, 1);
    es__storage_free(s);
    /* without a vocabulary, full refuses with a hint */
    CHECK_EQ_INT(es__storage_create(&s, &p, NULL, &err), ES_EINVAL);
    CHECK_STR_HAS(err.msg, "vocabulary");
    es_vocab_free(v);
    tb_free(&b);
    tb_free(&q);
}

/* ---- optimizers --------------------------------------------------------------------- */

/* Two backward steps on one row (a value that appears twice in the batch,
 * so its gradient is summed first) against the formulas by hand. */
static void opt_by_hand(es_optim kind) {
    es_batch b;
    CHECK(tb_alloc(&b, 2, 1, 2));
    b.off[0] = 0;
    b.off[1] = 1;
    b.off[2] = 2;
    b.val[0] = b.val[1] = 77;
    b.wt[0] = 1.0f;
    b.wt[1] = 0.5f;
    b.n = 2;
    es_vocab *v = vocab_of(&b);
    CHECK(v);
    es_storage_params p = sp_make("full", 1, 3, 0);
    p.opt.kind = kind;
    p.opt.lr = 0.1f;
    p.opt.eps = 1e-8f;
    p.opt.init_acc = 0.01f;
    es_storage *s;
    es_err err;
    CHECK_MSG(es__storage_create(&s, &p, v, &err) == 0, "%s", err.msg);
    es_tensor_ref refs[8];
    int nt;
    float *W = find_tensor(s, refs, &nt, "weight")->data;
    float *w = W + 3; /* key 77 is row 1 (row 0 is the OOV row) */
    double x[3], acc[3] = {0.01, 0.01, 0.01}, racc = 0.01;
    for (int d = 0; d < 3; d++) x[d] = w[d];
    const float dout[2][2][3] = {{{0.3f, -0.2f, 0.5f}, {1.0f, 0.4f, -0.6f}}, {{-0.1f, 0.7f, 0.2f}, {0.3f, 0.3f, 0.9f}}};
    for (int step = 0; step < 2; step++) {
        CHECK_EQ_INT(es__storage_backward(s, &b, &dout[step][0][0]), 0);
        double g[3], ms = 0;
        for (int d = 0; d < 3; d++) {
            g[d] = 1.0 * dout[step][0][d] + 0.5 * dout[step][1][d];
            ms += g[d] * g[d] / 3;
        }
        racc += ms;
        for (int d = 0; d < 3; d++) {
            if (kind == ES_OPT_SGD) {
                x[d] -= 0.1 * g[d];
            } else if (kind == ES_OPT_ADAGRAD) {
                acc[d] += g[d] * g[d];
                x[d] -= 0.1 * g[d] / (sqrt(acc[d]) + 1e-8);
            } else {
                x[d] -= 0.1 * g[d] / (sqrt(racc) + 1e-8);
            }
        }
        for (int d = 0; d < 3; d++) CHECK_NEAR(w[d], x[d], 2e-6);
    }
    es_tensor_ref *a = NULL;
    for (int i = 0; i < nt; i++)
        if (strcmp(refs[i].name, "opt.acc") == 0) a = &refs[i];
    if (kind == ES_OPT_SGD) {
        CHECK(a == NULL);
    } else if (kind == ES_OPT_ADAGRAD) {
        CHECK(a && a->ndim == 2);
        for (int d = 0; d < 3; d++) CHECK_NEAR(((float *)a->data)[3 + d], acc[d], 1e-6);
        CHECK_NEAR(((float *)a->data)[0], 0.01, 1e-9); /* untouched OOV row keeps init_acc */
    } else {
        CHECK(a && a->ndim == 1);
        CHECK_NEAR(((float *)a->data)[1], racc, 1e-6);
        CHECK_NEAR(((float *)a->data)[0], 0.01, 1e-9);
    }
    es__storage_free(s);
    es_vocab_free(v);
    tb_free(&b);
}

TEST(storage_sgd_update_by_hand) { opt_by_hand(ES_OPT_SGD); }
TEST(storage_adagrad_update_by_hand) { opt_by_hand(ES_OPT_ADAGRAD); }
TEST(storage_rowwise_adagrad_update_by_hand) { opt_by_hand(ES_OPT_ROWWISE_ADAGRAD); }

TEST(storage_gradacc_sums_duplicates_and_grows) {
    es_gradacc a;
    CHECK_EQ_INT(es__gradacc_init(&a, 4, 2), 0);
    CHECK_EQ_INT(a.cap, 16);
    /* 1000 distinct rows, each touched 3 times: forces several doublings */
    for (int rep = 0; rep < 3; rep++)
        for (uint64_t r = 0; r < 1000; r++) {
            float *g = es__gradacc_row(&a, r * 7919);
            CHECK(g);
            g[0] += 1.0f;
            g[1] += (float)r;
        }
    CHECK_EQ_INT(a.n, 1000);
    CHECK(a.cap >= 1000);
    for (size_t i = 0; i < a.n; i++) {
        CHECK_EQ_INT(a.rows[i], i * 7919); /* insertion order */
        CHECK_NEAR(a.g[i * 2], 3.0, 0);
        CHECK_NEAR(a.g[i * 2 + 1], 3.0 * i, 0);
    }
    es__gradacc_clear(&a);
    CHECK_EQ_INT(a.n, 0);
    for (size_t i = 0; i < a.map_cap; i++) CHECK(a.slot[i] == -1);
    float *g = es__gradacc_row(&a, 5);
    CHECK(g && g[0] == 0.0f && g[1] == 0.0f);
    /* growth failure: NULL, and the accumulator is unchanged */
    es__gradacc_clear(&a);
    size_t cap = a.cap;
    for (size_t r = 0; r < cap; r++) CHECK(es__gradacc_row(&a, r));
    es__alloc_fail_at(1);
    float *fail = es__gradacc_row(&a, cap + 1);
    es__alloc_fail_at(0);
    CHECK(fail == NULL);
    CHECK_EQ_INT(a.n, cap);
    CHECK(es__gradacc_row(&a, 3) == a.g + 3 * 2);
    es__gradacc_free(&a);
}

TEST(storage_backward_out_of_memory_is_clean) {
    es_rng r;
    es__rng_seed(&r, 21);
    es_batch b;
    CHECK(tb_random(&b, 40, 4, 0, 1, 100000, &r)); /* ~160 distinct rows > scratch of 16 */
    es_storage_params p = sp_make("hash", 4, 4, 1e6);
    p.max_batch = 1;
    es_storage *s;
    es_err err;
    CHECK_EQ_INT(es__storage_create(&s, &p, NULL, &err), 0);
    es_tensor_ref refs[8];
    int nt;
    es_tensor_ref *w = find_tensor(s, refs, &nt, "weight");
    float *before = malloc(w->nbytes);
    memcpy(before, w->data, w->nbytes);
    float *G = malloc((size_t)40 * 4 * 4 * sizeof *G);
    for (int i = 0; i < 40 * 16; i++) G[i] = 1.0f;
    es__alloc_fail_at(1);
    int rc = es__storage_backward(s, &b, G);
    es__alloc_fail_at(0);
    CHECK_EQ_INT(rc, ES_ENOMEM);
    CHECK_STR_HAS(es__storage_errmsg(s), "out of memory");
    CHECK(memcmp(before, w->data, w->nbytes) == 0); /* nothing applied */
    CHECK_EQ_INT(es__storage_backward(s, &b, G), 0);
    CHECK(memcmp(before, w->data, w->nbytes) != 0);
    /* a batch of the wrong shape is refused */
    b.n_fields = 3;
    CHECK_EQ_INT(es__storage_backward(s, &b, G), ES_EINVAL);
    CHECK_EQ_INT(es__storage_lookup(s, &b, 0, 1, G), ES_EINVAL);
    b.n_fields = 4;
    CHECK_EQ_INT(es__storage_lookup(s, &b, 5, 41, G), ES_EINVAL);
    CHECK_STR_HAS(es__storage_errmsg(s), "lookup of rows [5, 41)");
    free(before);
    free(G);
    es__storage_free(s);
    tb_free(&b);
}

/* ---- save / load through tensors() -------------------------------------------------------- */

/* Train a, re-create b from a's meta (no vocab, another seed), copy every
 * tensor, call after_load: lookups and further training must match a's
 * bit for bit. */
static void round_trip(es_storage_params p, const es_vocab *v, const es_batch *b, const char *what) {
    es_storage *a, *c;
    es_err err;
    CHECK_MSG(es__storage_create(&a, &p, v, &err) == 0, "%s: %s", what, err.msg);
    size_t nout = (size_t)b->n * b->n_fields * p.dim;
    float *G = malloc(nout * sizeof *G), *oa = malloc(nout * sizeof *oa), *oc = malloc(nout * sizeof *oc);
    es_rng r;
    es__rng_seed(&r, 31);
    for (size_t i = 0; i < nout; i++) G[i] = es__rng_normal(&r);
    CHECK_EQ_INT(es__storage_backward(a, b, G), 0);

    es_storage_params q = p;
    q.opts = a->meta;
    q.budget = 0;
    q.seed = p.seed + 1000; /* the meta's seed must win for the hash salts */
    int rc = es__storage_create(&c, &q, NULL, &err);
    CHECK_MSG(rc == 0, "%s: re-create from meta '%s': %s", what, a->meta, err.msg);
    CHECK_MSG(strcmp(a->meta, c->meta) == 0, "%s: meta '%s' vs '%s'", what, a->meta, c->meta);
    CHECK_EQ_INT(a->param_bytes, c->param_bytes);
    CHECK_EQ_INT(a->aux_bytes, c->aux_bytes);
    CHECK_EQ_INT(a->state_bytes, c->state_bytes);
    es_tensor_ref ta[8], tc[8];
    int na = es__storage_tensors(a, ta, 8), nc = es__storage_tensors(c, tc, 8);
    CHECK_EQ_INT(na, nc);
    CHECK_EQ_INT(na, es__storage_tensors(a, NULL, 0));
    for (int i = 0; i < na; i++) {
        CHECK(strcmp(ta[i].name, tc[i].name) == 0);
        CHECK_EQ_INT(ta[i].dtype, tc[i].dtype);
        CHECK_EQ_INT(ta[i].nbytes, tc[i].nbytes);
        for (int d = 0; d < ta[i].ndim; d++) CHECK_EQ_INT(ta[i].shape[d], tc[i].shape[d]);
        if (ta[i].nbytes) memcpy(tc[i].data, ta[i].data, ta[i].nbytes);
    }
    CHECK_MSG(es__storage_after_load(c) == 0, "%s: after_load: %s", what, es__storage_errmsg(c));
    es__storage_lookup(a, b, 0, b->n, oa);
    es__storage_lookup(c, b, 0, b->n, oc);
    CHECK_MSG(memcmp(oa, oc, nout * sizeof *oa) == 0, "%s: lookups differ after the round trip", what);
    /* optimizer state came along: one more step stays identical */
    CHECK_EQ_INT(es__storage_backward(a, b, G), 0);
    CHECK_EQ_INT(es__storage_backward(c, b, G), 0);
    es__storage_lookup(a, b, 0, b->n, oa);
    es__storage_lookup(c, b, 0, b->n, oc);
    CHECK_MSG(memcmp(oa, oc, nout * sizeof *oa) == 0, "%s: training diverges after the round trip", what);
    printf("    %s: meta \"%.60s%s\"\n", what, a->meta, strlen(a->meta) > 60 ? "..." : "");
    free(G);
    free(oa);
    free(oc);
    es__storage_free(a);
    es__storage_free(c);
}

TEST(storage_round_trip_through_tensors) {
    es_rng r;
    es__rng_seed(&r, 12);
    es_batch b;
    CHECK(tb_random(&b, 25, 5, 2, 3, 300, &r));
    es_vocab *v = vocab_of(&b);
    CHECK(v);
    es_storage_params p = sp_make("full", 5, 8, 0);
    es_sh_opt(&p, "min_count", 2);
    round_trip(p, v, &b, "full min_count=2");
    p = sp_make("hash", 5, 8, 0.2);
    round_trip(p, v, &b, "hash (vocab split)");
    es_sh_opt(&p, "share", 1);
    p.opt.kind = ES_OPT_ADAGRAD;
    round_trip(p, v, &b, "hash share=1");
    p = sp_make("unified", 5, 8, 5000);
    es_sh_opt(&p, "chunks", 4);
    es_sh_opt(&p, "subtables", 3);
    p.seed = UINT64_MAX - 5;
    round_trip(p, NULL, &b, "unified k=4 T=3");
    es_vocab_free(v);
    tb_free(&b);
}

TEST(storage_full_after_load_rejects_a_bad_map) {
    es_rng r;
    es__rng_seed(&r, 13);
    es_batch b;
    CHECK(tb_random(&b, 10, 2, 0, 1, 20, &r));
    es_vocab *v = vocab_of(&b);
    es_storage_params p = sp_make("full", 2, 4, 0);
    es_storage *s;
    es_err err;
    CHECK_EQ_INT(es__storage_create(&s, &p, v, &err), 0);
    es_tensor_ref refs[8];
    int nt;
    es_tensor_ref *keys = find_tensor(s, refs, &nt, "map.keys");
    es_tensor_ref *fo = find_tensor(s, refs, &nt, "map.field_off");
    CHECK(keys && fo && keys->shape[0] >= 2);
    uint64_t *K = keys->data, *FO = fo->data;
    uint64_t save = K[1];
    K[1] = K[0]; /* duplicate key in field 0 (if field 0 has >= 2 keys) */
    if (FO[1] >= 2) {
        CHECK_EQ_INT(es__storage_after_load(s), ES_EFORMAT);
        CHECK_STR_HAS(es__storage_errmsg(s), "increasing");
    }
    K[1] = save;
    FO[2] += 1; /* offsets past the key count */
    CHECK_EQ_INT(es__storage_after_load(s), ES_EFORMAT);
    CHECK_STR_HAS(es__storage_errmsg(s), "offsets");
    FO[2] -= 1;
    CHECK_EQ_INT(es__storage_after_load(s), 0);
    es__storage_free(s);
    es_vocab_free(v);
    tb_free(&b);
}

/* ---- bad parameters and allocation failures ------------------------------------------------ */

TEST(storage_bad_parameters_get_clear_errors) {
    es_storage *s = (es_storage *)1;
    es_err err;
    es_storage_params p = sp_make("nosuch", 3, 8, 1000);
    CHECK_EQ_INT(es__storage_create(&s, &p, NULL, &err), ES_EINVAL);
    CHECK(s == NULL);
    CHECK_STR_HAS(err.msg, "unknown method 'nosuch'");
    CHECK_STR_HAS(err.msg, "unified");
    p = sp_make("hash", 3, 8, 0);
    CHECK_EQ_INT(es__storage_create(&s, &p, NULL, &err), ES_EINVAL);
    CHECK_STR_HAS(err.msg, "needs a budget");
    p.budget = 0.5;
    CHECK_EQ_INT(es__storage_create(&s, &p, NULL, &err), ES_EINVAL);
    CHECK_STR_HAS(err.msg, "vocabulary");
    p.budget = 100; /* fewer bytes than one row per field */
    CHECK_EQ_INT(es__storage_create(&s, &p, NULL, &err), ES_EBUDGET);
    CHECK_STR_HAS(err.msg, "at least 3 rows");
    p.budget = -1;
    CHECK_EQ_INT(es__storage_create(&s, &p, NULL, &err), ES_EINVAL);
    p.budget = 1e30; /* absurd: refused, no overflow */
    CHECK(es__storage_create(&s, &p, NULL, &err) != 0);
    p.budget = 10000;
    p.dim = 0;
    CHECK_EQ_INT(es__storage_create(&s, &p, NULL, &err), ES_EINVAL);
    CHECK_STR_HAS(err.msg, "dim");
    p.dim = 8;
    p.opt.kind = ES_OPT_ADAM;
    CHECK_EQ_INT(es__storage_create(&s, &p, NULL, &err), ES_EINVAL);
    CHECK_STR_HAS(err.msg, "adagrad");
    p.opt.kind = ES_OPT_ADAGRAD;
    p.opt.eps = 0;
    CHECK_EQ_INT(es__storage_create(&s, &p, NULL, &err), ES_EINVAL);
    p.opt.eps = 1e-8f;
    const char *bad_opts[] = {"rows=abc", "rows=1:2", "rows=1:2:0", "share=2", "rows=5:5:5:5", "seed=-1", "rows="};
    for (size_t i = 0; i < ES_ARRAY_LEN(bad_opts); i++) {
        p.opts = bad_opts[i];
        CHECK_MSG(es__storage_create(&s, &p, NULL, &err) == ES_EINVAL, "opts '%s' accepted", bad_opts[i]);
        CHECK_STR_HAS(err.msg, "hash: option");
    }
    p.opts = "rows=3:4:5";
    CHECK_EQ_INT(es__storage_create(&s, &p, NULL, &err), 0);
    CHECK_EQ_INT(s->param_bytes, 12 * 8 * 4);
    es__storage_free(s);
    p = sp_make("unified", 3, 8, 10000);
    p.opts = "chunks=0";
    CHECK_EQ_INT(es__storage_create(&s, &p, NULL, &err), ES_EINVAL);
    p.opts = "chunks=2,subtables=4,rows=3";
    CHECK_EQ_INT(es__storage_create(&s, &p, NULL, &err), ES_EINVAL);
    CHECK_STR_HAS(err.msg, "sub-tables");
    p = sp_make("full", 3, 8, 0);
    p.opts = "keys=x";
    CHECK_EQ_INT(es__storage_create(&s, &p, NULL, &err), ES_EINVAL);
    /* a vocabulary with the wrong field count */
    es_vocab *v;
    CHECK_EQ_INT(es_vocab_create(&v, 2), 0);
    p.opts = NULL;
    CHECK_EQ_INT(es__storage_create(&s, &p, v, &err), ES_EINVAL);
    CHECK_STR_HAS(err.msg, "fields");
    es_vocab_free(v);
    es__storage_free(NULL);
}

TEST(storage_every_allocation_failure_is_clean) {
    es_rng r;
    es__rng_seed(&r, 41);
    es_batch b;
    CHECK(tb_random(&b, 20, 3, 1, 3, 200, &r));
    es_vocab *v = vocab_of(&b);
    CHECK(v);
    struct {
        const char *m;
        double budget;
        int k;
    } cfg[] = {{"full", 0, 1}, {"hash", 0.3, 1}, {"unified", 20000, 2}};
    for (size_t c = 0; c < ES_ARRAY_LEN(cfg); c++) {
        es_storage_params p = sp_make(cfg[c].m, 3, 8, cfg[c].budget);
        es_sh_opt(&p, "chunks", cfg[c].k);
        int done = 0;
        for (uint64_t n = 1; n < 100 && !done; n++) {
            es_storage *s = NULL;
            es_err err = {0, ""};
            es__alloc_fail_at(n);
            int rc = es__storage_create(&s, &p, v, &err);
            es__alloc_fail_at(0);
            if (rc == 0) {
                done = 1;
                es__storage_free(s);
            } else {
                CHECK_MSG(rc == ES_ENOMEM, "%s: allocation %llu failing gave %d (%s)", cfg[c].m, (unsigned long long)n, rc,
                          err.msg);
                CHECK(s == NULL);
                CHECK_STR_HAS(err.msg, "memory");
            }
        }
        CHECK_MSG(done, "%s never succeeded", cfg[c].m);
    }
    /* the vocabulary too: creation and growth */
    for (uint64_t n = 1; n < 10; n++) {
        es_vocab *w = NULL;
        es__alloc_fail_at(n);
        int rc = es_vocab_create(&w, 3);
        es__alloc_fail_at(0);
        if (rc == 0) {
            es_vocab_free(w);
            break;
        }
        CHECK_EQ_INT(rc, ES_ENOMEM);
        CHECK(w == NULL);
    }
    es_vocab *w;
    CHECK_EQ_INT(es_vocab_create(&w, 1), 0);
    es_batch big;
    CHECK(tb_alloc(&big, 100, 1, 100));
    for (int i = 0; i < 100; i++) {
        big.off[i] = (uint32_t)i;
        big.val[i] = (uint64_t)i;
    }
    big.off[100] = 100;
    big.n = 100;
    es__alloc_fail_at(1);
    int rc = es_vocab_add_batch(w, &big);
    es__alloc_fail_at(0);
    CHECK_EQ_INT(rc, ES_ENOMEM);
    CHECK_STR_HAS(es_vocab_errmsg(w), "out of memory");
    CHECK_EQ_INT(es_vocab_add_batch(w, &big), ES_ENOMEM); /* sticky */
    es_vocab_free(w);
    tb_free(&big);
    es_vocab_free(v);
    tb_free(&b);
}

TEST(storage_registry_lists_methods) {
    CHECK(es__storage_n_methods() >= 3);
    const char *want[] = {"full", "hash", "unified"};
    for (int i = 0; i < 3; i++) {
        const es_storage_ops *o = es__storage_find(want[i]);
        CHECK(o && strcmp(o->name, want[i]) == 0 && o->summary && o->create && o->lookup && o->backward && o->tensors &&
              o->destroy);
    }
    for (int i = 0; i < es__storage_n_methods(); i++) CHECK(es__storage_method_at(i) != NULL);
    CHECK(es__storage_method_at(-1) == NULL);
    CHECK(es__storage_find("nosuch") == NULL);
    CHECK(es__storage_find(NULL) == NULL);
}

/* ---- the generic storage harness (storage_harness.h) on these methods ---------- */

TEST(storage_harness_full) {
    es_sh_cfg c = es_sh_cfg_make("full", 0);
    c.budget = 0; /* full sizes itself from the vocabulary */
    CHECK(es_sh_all(&c));
}

TEST(storage_harness_hash) {
    static const double fracs[] = {0.5, 0.1, 0.01};
    for (int share = 0; share <= 1; share++) {
        es_sh_cfg c = es_sh_cfg_make("hash", share);
        CHECK(es_sh_all(&c));
        CHECK(es_sh_budget(&c, fracs, 3));
    }
    es_sh_cfg c = es_sh_cfg_make("hash", 0);
    c.use_vocab = 0; /* equal split */
    CHECK(es_sh_roundtrip(&c));
    CHECK(es_sh_budget(&c, NULL, 0));
}

TEST(storage_harness_unified) {
    static const double fracs[] = {0.5, 0.1, 0.01};
    es_sh_cfg c = es_sh_cfg_make("unified", 1);
    CHECK(es_sh_all(&c));
    CHECK(es_sh_budget(&c, fracs, 3));
    c.chunks = 4;
    c.opts = "subtables=3";
    CHECK(es_sh_all(&c));
    CHECK(es_sh_budget(&c, fracs, 3));
}

/* A training step's lookup and backward of one batch (s->step set, ops->
 * step_begin): full resolves the keys once, in the lookup (split over two
 * row ranges, as two threads do), and its backward sums the gradients of
 * the rows it deduplicated itself (mark/vslot, no es_gradacc); five such
 * steps, one of them after a step begun and dropped, leave the table bit
 * for bit as five plain lookup + backward pairs do. */
TEST(storage_full_step_keeps_the_lookups_rows) {
    es_sh_cfg c = es_sh_cfg_make("full", 0);
    c.budget = 0;
    es_vocab *v = es_sh_vocab(c.n_fields);
    es_storage *a = NULL, *b = NULL;
    es_err err;
    CHECK(v && es_sh_create(&a, &c, v, ES_OPT_FTRL, 0.05f, &err) == 0 && es_sh_create(&b, &c, v, ES_OPT_FTRL, 0.05f, &err) == 0);
    CHECK(a->ops->step_begin != NULL);
    for (uint64_t step = 0; a && b && step < 5; step++) {
        es_batch bt;
        CHECK(es_sh_batch(&bt, 32, c.n_fields, 100 + step) == 0);
        const size_t half = 16 * (size_t)c.n_fields * (size_t)c.dim, n = 2 * half;
        float *oa = malloc(n * sizeof *oa), *ob = malloc(n * sizeof *ob);
        CHECK(oa && ob);
        a->step = &bt;
        if (step == 2) { /* a step begun and dropped (no backward) leaves no trace in the next one's deduplication */
            es_batch other;
            CHECK(es_sh_batch(&other, 32, c.n_fields, 999) == 0);
            a->step = &other;
            a->ops->step_begin(a, &other);
            es_batch_free(&other);
            a->step = &bt;
        }
        a->ops->step_begin(a, &bt);
        CHECK(es__storage_lookup(a, &bt, 0, 16, oa) == 0 && es__storage_lookup(a, &bt, 16, 32, oa + half) == 0);
        CHECK(es__storage_lookup(b, &bt, 0, 32, ob) == 0);
        CHECK(memcmp(oa, ob, n * sizeof *oa) == 0);
        for (size_t i = 0; i < n; i++) oa[i] = ob[i] = oa[i] - 0.1f * (float)(i % 7);
        CHECK(es__storage_backward(a, &bt, oa) == 0 && es__storage_backward(b, &bt, ob) == 0);
        a->step = NULL;
        free(oa);
        free(ob);
        es_batch_free(&bt);
    }
    es_tensor_ref ra[16], rb[16];
    int na = a ? es__storage_tensors(a, ra, 16) : 0, nb = b ? es__storage_tensors(b, rb, 16) : 0;
    CHECK(na > 0 && na == nb);
    for (int i = 0; i < na && i < nb; i++)
        CHECK_MSG(ra[i].nbytes == rb[i].nbytes && memcmp(ra[i].data, rb[i].data, ra[i].nbytes) == 0, "tensor %s differs", ra[i].name);
    es__storage_free(a);
    es__storage_free(b);
    es_vocab_free(v);
}
