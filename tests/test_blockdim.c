/*
 * test_blockdim.c — the `blockdim` storage (a dimension per (field,
 * frequency block), popular values through a key map, the rest one OOV row
 * per field; what autosrh retrains): the storage harness's generic checks
 * (gradients, determinism, threads, round trip, allocation failures,
 * budgets), padding and the OOV row, and bad options.
 */
#include "storage_harness.h"
#include "test.h"

#include <math.h>

/* es_sh_budget's checks but for its largest budget (300007 bytes), more
 * than the whole key map of the harness's 5842 values takes (a table of
 * the vocabulary's values cannot use more): there every value is kept and
 * the bytes are within the budget.  Each budget with the three optimizers'
 * state; an 8-byte budget is ES_EBUDGET. */
static int budgets(const es_sh_cfg *c) {
    static const double B[] = {0.25, 1.0 / 16, 1.0 / 64, 20011, 300007};
    static const es_optim opts[] = {ES_OPT_ROWWISE_ADAGRAD, ES_OPT_ADAGRAD, ES_OPT_SGD};
    es_vocab *v = es_sh_vocab(c->n_fields);
    if (!v) return 0;
    uint64_t distinct = 0;
    for (int f = 0; f < c->n_fields; f++) distinct += es_vocab_distinct(v, f);
    int ok = 1;
    for (size_t i = 0; i < ES_ARRAY_LEN(B) && ok; i++)
        for (size_t o = 0; o < ES_ARRAY_LEN(opts) && ok; o++) {
            es_sh_cfg cc = *c;
            cc.budget = B[i];
            es_storage *s = NULL;
            es_err err;
            if (es_sh_create(&s, &cc, v, opts[o], 0.05f, &err) != 0) {
                es_test_fail(__FILE__, __LINE__, "budget %g: %s", B[i], err.msg);
                ok = 0;
                break;
            }
            size_t tp = 0, ts = 0;
            ok = es_sh_tensor_bytes(s, &tp, &ts);
            const double used = (double)s->param_bytes + (double)s->aux_bytes;
            uint64_t kept = 0;
            es_tensor_ref refs[64];
            es_tensor_ref *k = es_sh_tensor(s, refs, 64, "map.keys");
            if (k) kept = k->nbytes / sizeof(uint64_t);
            if (o == 0)
                printf("    budget %-8g %8.0f B: params %7zu + aux %6zu = %5.1f%%, %llu of %llu values kept\n", B[i], s->budget_bytes,
                       s->param_bytes, s->aux_bytes, 100.0 * used / s->budget_bytes, (unsigned long long)kept, (unsigned long long)distinct);
            if (ok && (tp != s->param_bytes || ts != s->state_bytes)) {
                es_test_fail(__FILE__, __LINE__, "budget %g: tensors %zu / %zu bytes, the storage says %zu / %zu", B[i], tp, ts,
                             s->param_bytes, s->state_bytes);
                ok = 0;
            } else if (used > s->budget_bytes) {
                es_test_fail(__FILE__, __LINE__, "budget %g: %.0f bytes over %.0f", B[i], used, s->budget_bytes);
                ok = 0;
            } else if (kept < distinct && used < 0.95 * s->budget_bytes) {
                es_test_fail(__FILE__, __LINE__, "budget %g: %.0f bytes, more than 5%% below %.0f with values left out", B[i], used,
                             s->budget_bytes);
                ok = 0;
            }
            es__storage_free(s);
        }
    if (ok) {
        es_sh_cfg cc = *c;
        cc.budget = 8;
        es_storage *s = NULL;
        es_err err;
        if (es_sh_create(&s, &cc, v, ES_OPT_ROWWISE_ADAGRAD, 0.05f, &err) != ES_EBUDGET || s) {
            es_test_fail(__FILE__, __LINE__, "an 8-byte budget did not give ES_EBUDGET");
            ok = 0;
        }
        es__storage_free(s);
    }
    es_vocab_free(v);
    return ok;
}

/* The harness's gradient check needs every table touched by its batches,
 * which draw a field's few most popular values (and unseen ones): with
 * several blocks the less popular blocks' tables are never reached, so it
 * runs with one block; blockdim_block_gradients checks several. */
TEST(blockdim_harness) {
    es_sh_cfg c = es_sh_cfg_make("blockdim", 0);
    c.opts = "blocks=1,dims=3:8:5:2";
    c.init_scale = 0.5f;
    CHECK(es_sh_gradcheck(&c));
    c.opts = "blocks=2,dims=3:8:5:2:8:1:4:6"; /* odd widths: the padding of each block's rows */
    CHECK(es_sh_determinism(&c));
    CHECK(es_sh_threads(&c));
    CHECK(es_sh_roundtrip(&c));
    CHECK(es_sh_alloc_failures(&c));
    CHECK(budgets(&c));
    c.opts = NULL; /* 4 blocks at dim */
    CHECK(budgets(&c));
    CHECK(es_sh_roundtrip(&c));
}

/* Finite differences against backward (SGD at lr 1: the step is minus the
 * gradient) over every weight, on a batch with values of every block of
 * every field (the first, middle and last of each field's values and an
 * unseen one), 3 blocks of odd widths. */
TEST(blockdim_block_gradients) {
    es_sh_cfg c = es_sh_cfg_make("blockdim", 0);
    c.opts = "blocks=3,dims=3:8:5:2:7:1:4:6:8:1:5:3";
    c.init_scale = 0.5f;
    c.budget = 0.1;
    es_storage *s = NULL;
    es_err err;
    es_vocab *v = es_sh_vocab(c.n_fields);
    CHECK(v != NULL);
    CHECK(es_sh_create(&s, &c, v, ES_OPT_SGD, 1.0f, &err) == 0);
    if (!s) return;
    enum { N = 6 };
    es_batch b;
    CHECK(es_batch_alloc(&b, N, 0, c.n_fields, (size_t)N * c.n_fields) == 0);
    uint32_t o = 0;
    for (int r = 0; r < N; r++)
        for (int f = 0; f < c.n_fields; f++) {
            const uint64_t n = es_sh_distinct(f);
            const uint64_t pick[N] = {0, n / 3, n / 2, 2 * n / 3, n - 1, n + 7}; /* the last: unseen */
            b.off[r * c.n_fields + f] = o;
            b.val[o] = es_sh_key(f, pick[r]);
            b.wt[o] = 0.5f + 0.25f * (float)r;
            o++;
        }
    b.off[N * c.n_fields] = o;
    b.n = N;
    const size_t nout = (size_t)N * c.n_fields * c.dim;
    float *G = malloc(nout * sizeof *G), *out = malloc(nout * sizeof *out);
    for (size_t i = 0; i < nout; i++) G[i] = (float)((int)((i * 7919) % 11) - 5) * 0.3f;
    es_tensor_ref refs[64];
    const int nt = s->ops->tensors(s, refs, 64);
    CHECK(nt > 0);
    size_t total = 0;
    for (int i = 0; i < nt; i++)
        if (strncmp(refs[i].name, "field", 5) == 0) total += refs[i].nbytes / sizeof(float);
    float *old = malloc(total * sizeof *old);
    for (int i = 0, at = 0; i < nt; i++)
        if (strncmp(refs[i].name, "field", 5) == 0) {
            memcpy(old + at, refs[i].data, refs[i].nbytes);
            at += (int)(refs[i].nbytes / sizeof(float));
        }
    CHECK(es__storage_backward(s, &b, G) == 0);
    double worst = 0;
    int tables = 0;
    for (int i = 0, at = 0; i < nt; i++) {
        if (strncmp(refs[i].name, "field", 5) != 0) continue;
        float *w = refs[i].data;
        const size_t m = refs[i].nbytes / sizeof(float);
        size_t nz = 0;
        float *grad = malloc(m * sizeof *grad);
        for (size_t e = 0; e < m; e++) {
            grad[e] = old[at + e] - w[e];
            nz += grad[e] != 0;
        }
        memcpy(w, old + at, refs[i].nbytes);
        CHECK_MSG(nz > 0, "table %s received no gradient", refs[i].name);
        tables++;
        for (size_t e = 0; e < m; e++) {
            const float w0 = w[e], h = 1e-2f;
            double L[2];
            for (int k = 0; k < 2; k++) {
                w[e] = k ? w0 - h : w0 + h;
                es__storage_lookup(s, &b, 0, N, out);
                L[k] = 0;
                for (size_t j = 0; j < nout; j++) L[k] += (double)out[j] * G[j];
            }
            w[e] = w0;
            const double fd = (L[0] - L[1]) / ((double)(w0 + h) - (double)(w0 - h));
            const double d = fabs(fd - grad[e]) / (1e-3 + fabs(fd));
            if (d > worst) worst = d;
            CHECK_MSG(es_test_close(fd, grad[e], 2e-4, 2e-3), "%s[%zu]: backward %.7g vs finite difference %.7g", refs[i].name, e, grad[e], fd);
        }
        free(grad);
        at += (int)m;
    }
    printf("    %d block tables, every one touched; worst rel err %.1e\n", tables, worst);
    CHECK(tables >= 2 * c.n_fields);
    free(old);
    free(G);
    free(out);
    es_batch_free(&b);
    es__storage_free(s);
    es_vocab_free(v);
}

/* Coordinates past a block's width are 0; a value the vocabulary never saw
 * reads its field's OOV row (the same for every unseen value). */
TEST(blockdim_padding_and_oov) {
    es_sh_cfg c = es_sh_cfg_make("blockdim", 0);
    c.opts = "blocks=2,dims=3:2:5:1:8:1:4:2";
    c.init_scale = 0.5f;
    es_storage *s = NULL;
    es_err err;
    es_vocab *v = es_sh_vocab(c.n_fields);
    CHECK(v != NULL);
    CHECK(es_sh_create(&s, &c, v, ES_OPT_SGD, 0.1f, &err) == 0);
    es_batch b;
    CHECK(es_sh_batch(&b, 16, c.n_fields, 3) == 0);
    float *out = malloc((size_t)b.n * c.n_fields * c.dim * sizeof *out);
    es__storage_lookup(s, &b, 0, b.n, out);
    static const int maxw[4] = {3, 5, 8, 4}; /* the widest block of each field */
    for (int r = 0; r < b.n; r++)
        for (int f = 0; f < c.n_fields; f++)
            for (int d = maxw[f]; d < c.dim; d++)
                CHECK_MSG(out[((size_t)r * c.n_fields + f) * c.dim + d] == 0, "row %d field %d coordinate %d not padded", r, f, d);
    es_batch_free(&b);
    /* two unseen keys of field 0 read the same row, of the tail's width 2 */
    uint32_t off[5] = {0, 1, 1, 1, 1};
    uint64_t val[1] = {UINT64_C(0xdeadbeef12345)};
    float wt[1] = {1};
    es_batch u;
    memset(&u, 0, sizeof u);
    u.n = 1;
    u.n_fields = 4;
    u.off = off;
    u.val = val;
    u.wt = wt;
    float o1[32], o2[32];
    es__storage_lookup(s, &u, 0, 1, o1);
    val[0] = UINT64_C(0xfeedface9876);
    es__storage_lookup(s, &u, 0, 1, o2);
    CHECK(memcmp(o1, o2, 8 * sizeof(float)) == 0);
    CHECK(o1[0] != 0 && o1[2] == 0);
    free(out);
    es__storage_free(s);
    es_vocab_free(v);
}

TEST(blockdim_bad_options) {
    const char *log = es_test_path("bd_bad.log");
    static const struct {
        const char *args, *msg;
    } cases[] = {
        {"--budget 0.25 --storage-opts dims=4:32", "expected one dimension or 26 fields x 4 blocks"},
        {"--budget 0.25 --storage-opts dims=32", "larger than the embedding dimension"},
        {"--budget 0.25 --storage-opts blocks=17", "blocks"},
        {"--budget 300", "unreachable budget"},
    };
    for (size_t i = 0; i < ES_ARRAY_LEN(cases); i++) {
        es_test_sh(NULL, "rm -f $ES_T/bd_bad.es");
        int st = es_test_sh(log, "%s train data/criteo_kaggle_train_first10k.tsv --model fm --dim 16 --storage blockdim --max-rows 1000 "
                                 "--epochs 1 --quiet %s --out $ES_T/bd_bad.es",
                            es_bin(), cases[i].args);
        char *s = es_test_slurp(log);
        if (s && *s && s[strlen(s) - 1] == '\n') s[strlen(s) - 1] = 0;
        printf("    %-48s -> exit %d: %.150s\n", cases[i].args, st, s ? s : "");
        CHECK_MSG(st != 0, "%s: exit 0", cases[i].args);
        CHECK_STR_HAS(s, cases[i].msg);
        CHECK_MSG(es_test_sh(NULL, "test ! -e $ES_T/bd_bad.es") == 0, "%s: an output file was written", cases[i].args);
        free(s);
    }
}
