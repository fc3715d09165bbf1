/*
 * test_fielddim.c — tests of the storage method `fielddim` (a hashed
 * table per field with its own dimension d_f <= dim, zeros past d_f):
 * the generic harness with non-uniform dims, the padding coordinates
 * (exactly 0, never trained), the budget split in floats, dims=dim equal
 * to `hash` share=0 bit for bit, bad options, precision (QAT) through the
 * per-field tables, and a CLI train / save / reload / predict run on the
 * Criteo sample.
 */
#include "storage_harness.h"
#include "test.h"
#include "train/model.h"

#include <math.h>

static const double fracs[] = {0.25, 1.0 / 16, 1.0 / 64, 1.0 / 256};
#define NFRACS ((int)ES_ARRAY_LEN(fracs))
#define CHECK_STR_EQ(a, b) CHECK_MSG(strcmp((a), (b)) == 0, "\"%s\" != \"%s\"", (a), (b))

/* Value of key in a storage's meta (copied into buf). */
static const char *meta_val(const es_storage *s, const char *key, char *buf, size_t cap) {
    size_t kl = strlen(key);
    buf[0] = 0;
    for (const char *p = s->meta; p && *p;) {
        const char *end = strchr(p, ',');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        if (n > kl && strncmp(p, key, kl) == 0 && p[kl] == '=') {
            snprintf(buf, cap, "%.*s", (int)(n - kl - 1), p + kl + 1);
            return buf;
        }
        p = end ? end + 1 : NULL;
    }
    return buf;
}

static es_storage *make(const char *method, const char *opts, int F, int dim, double budget, const es_vocab *v, es_optim opt,
                        es_err *err) {
    es_storage_params p = es__storage_params_default();
    p.method = method;
    p.n_fields = F;
    p.dim = dim;
    p.budget = budget;
    p.seed = 11;
    p.max_batch = 64;
    p.opts = opts;
    p.opt.kind = opt;
    p.opt.lr = 0.1f;
    es_storage *s = NULL;
    if (es__storage_create(&s, &p, v, err) != 0) return NULL;
    return s;
}

/* ---- the generic harness ---------------------------------------------------------------- */

TEST(fielddim_harness) {
    static const char *opts[] = {"dims=8:3:5:1", "dims=2", "dims=1:8:8:4,split=prop"};
    for (size_t i = 0; i < ES_ARRAY_LEN(opts); i++) {
        es_sh_cfg c = es_sh_cfg_make("fielddim", 0);
        c.opts = opts[i];
        CHECK(es_sh_all(&c));
        CHECK(es_sh_budget(&c, fracs, NFRACS));
        c.use_vocab = 0;
        CHECK(es_sh_budget(&c, fracs, 1));
        CHECK(es_sh_roundtrip(&c));
    }
}

TEST(fielddim_harness_qat) {
    es_sh_cfg c = es_sh_cfg_make("fielddim", 0);
    c.opts = "dims=8:3:5:2";
    c.precision = ES_PREC_INT8;
    c.qtrain = ES_QTRAIN_QAT;
    CHECK(es_sh_gradcheck_qtrain(&c));
    CHECK(es_sh_roundtrip(&c));
}

/* ---- padding: exactly 0 in lookups, never trained ---------------------------------------- */

TEST(fielddim_padding_is_zero_and_untrained) {
    const int F = 4, dim = 8;
    const int d[4] = {8, 3, 5, 1};
    es_vocab *v = es_sh_vocab(F);
    es_err err = {0, ""};
    es_storage *s = make("fielddim", "dims=8:3:5:1", F, dim, 0.25, v, ES_OPT_ADAGRAD, &err);
    CHECK_MSG(s, "%s", err.msg);
    /* shapes: one table per field, [rows_f, d_f] */
    es_tensor_ref refs[32];
    int n = es__storage_tensors(s, refs, 32);
    CHECK(n > 0);
    int seen = 0;
    for (int i = 0; i < n; i++) {
        int f;
        char tail;
        if (sscanf(refs[i].name, "field%d%c", &f, &tail) == 1) {
            CHECK(f >= 0 && f < F);
            CHECK_EQ_INT(refs[i].ndim, 2);
            CHECK_EQ_INT(refs[i].shape[1], d[f]);
            seen |= 1 << f;
        }
    }
    CHECK_EQ_INT(seen, 15);
    es_batch b;
    CHECK(es_sh_batch(&b, 48, F, 5) == 0);
    size_t nout = (size_t)b.n * F * dim;
    float *out = malloc(nout * sizeof *out), *g = malloc(nout * sizeof *g), *out2 = malloc(nout * sizeof *out2);
    CHECK(out && g && out2);
    es_rng r;
    es__rng_seed(&r, 3);
    for (int step = 0; step < 4; step++) {
        CHECK(es__storage_lookup(s, &b, 0, b.n, out) == 0);
        size_t nonzero = 0;
        for (int i = 0; i < b.n; i++)
            for (int f = 0; f < F; f++)
                for (int j = 0; j < dim; j++) {
                    float x = out[((size_t)i * F + f) * dim + j];
                    if (j >= d[f]) CHECK_MSG(x == 0.0f && !signbit(x), "row %d field %d coord %d = %g", i, f, j, (double)x);
                    else nonzero += x != 0;
                }
        CHECK(nonzero > 0);
        for (size_t i = 0; i < nout; i++) g[i] = es__rng_normal(&r); /* padding gradients too */
        CHECK(es__storage_backward(s, &b, g) == 0);
    }
    /* a gradient only on the padding coordinates changes nothing */
    CHECK(es__storage_lookup(s, &b, 0, b.n, out) == 0);
    for (int i = 0; i < b.n; i++)
        for (int f = 0; f < F; f++)
            for (int j = 0; j < dim; j++) g[((size_t)i * F + f) * dim + j] = j >= d[f] ? 5.0f : 0.0f;
    CHECK(es__storage_backward(s, &b, g) == 0);
    CHECK(es__storage_lookup(s, &b, 0, b.n, out2) == 0);
    CHECK(memcmp(out, out2, nout * sizeof *out) == 0);
    free(out);
    free(out2);
    free(g);
    es_batch_free(&b);
    es__storage_free(s);
    es_vocab_free(v);
}

/* ---- dims=dim is hash share=0 -------------------------------------------------------------- */

static void same_as_hash(const char *opts, const char *hopts, double budget, int use_vocab, es_optim opt) {
    const int F = 4, dim = 8;
    es_vocab *v = use_vocab ? es_sh_vocab(F) : NULL;
    es_err err = {0, ""};
    es_storage *a = make("fielddim", opts, F, dim, budget, v, opt, &err);
    CHECK_MSG(a, "%s", err.msg);
    es_storage *h = make("hash", hopts, F, dim, budget, v, opt, &err);
    CHECK_MSG(h, "%s", err.msg);
    char ra[512], rh[512];
    meta_val(a, "rows", ra, sizeof ra);
    meta_val(h, "rows", rh, sizeof rh);
    CHECK_STR_EQ(ra, rh);
    CHECK_EQ_INT(a->param_bytes, h->param_bytes);
    CHECK_EQ_INT(a->aux_bytes, h->aux_bytes);
    CHECK_EQ_INT(a->state_bytes, h->state_bytes);
    es_batch b;
    CHECK(es_sh_batch(&b, 40, F, 9) == 0);
    size_t nout = (size_t)b.n * F * dim;
    float *oa = malloc(nout * sizeof *oa), *oh = malloc(nout * sizeof *oh), *g = malloc(nout * sizeof *g);
    CHECK(oa && oh && g);
    es_rng r;
    es__rng_seed(&r, 4);
    for (int step = 0; step < 4; step++) {
        CHECK(es__storage_lookup(a, &b, 0, b.n, oa) == 0 && es__storage_lookup(h, &b, 0, b.n, oh) == 0);
        CHECK_MSG(memcmp(oa, oh, nout * sizeof *oa) == 0, "%s budget %g vocab %d: lookups differ at step %d", opts ? opts : "",
                  budget, use_vocab, step);
        for (size_t i = 0; i < nout; i++) g[i] = oa[i] - 0.3f * es__rng_normal(&r);
        CHECK(es__storage_backward(a, &b, g) == 0 && es__storage_backward(h, &b, g) == 0);
    }
    printf("    fielddim %-8s budget %-8g vocab %d: rows %s = hash's, lookups equal bit for bit over 4 steps\n", opts ? opts : "",
           budget, use_vocab, ra);
    free(oa);
    free(oh);
    free(g);
    es_batch_free(&b);
    es__storage_free(a);
    es__storage_free(h);
    es_vocab_free(v);
}

TEST(fielddim_full_dims_equal_hash) {
    same_as_hash(NULL, "share=0", 0.25, 1, ES_OPT_ROWWISE_ADAGRAD);
    same_as_hash("dims=8", "share=0", 1.0 / 64, 1, ES_OPT_ADAGRAD);
    same_as_hash("dims=8:8:8:8", "share=0", 3000, 0, ES_OPT_SGD);
    same_as_hash(NULL, "share=0", 5e6, 1, ES_OPT_ROWWISE_ADAGRAD); /* every field at its cap: the uncapped phase */
    same_as_hash("dims=8,split=prop", "share=0,split=prop", 0.1, 1, ES_OPT_ADAGRAD);
    same_as_hash("split=sqrt", "split=sqrt", 1.0 / 16, 1, ES_OPT_SGD);
}

/* ---- sizing --------------------------------------------------------------------------------- */

TEST(fielddim_budget_split) {
    const int F = 4, dim = 8;
    es_err err = {0, ""};
    char buf[512];
    /* no vocabulary: the same rows in every field (a leftover row to the first fields that fit) */
    es_storage *s = make("fielddim", "dims=8:2:4:1", F, dim, 20000, NULL, ES_OPT_SGD, &err);
    CHECK_MSG(s, "%s", err.msg);
    unsigned long long r[4];
    CHECK(sscanf(meta_val(s, "rows", buf, sizeof buf), "%llu:%llu:%llu:%llu", &r[0], &r[1], &r[2], &r[3]) == 4);
    for (int f = 1; f < F; f++) CHECK(r[f] + 1 >= r[0] && r[f] <= r[0] + 1);
    CHECK_EQ_INT(s->param_bytes, 4 * (r[0] * 8 + r[1] * 2 + r[2] * 4 + r[3]));
    CHECK((double)(s->param_bytes + s->aux_bytes) <= 20000 && (double)(s->param_bytes + s->aux_bytes) > 20000 - 4 * 15);
    CHECK_STR_EQ(meta_val(s, "dims", buf, sizeof buf), "8:2:4:1");
    printf("    no vocab, dims 8:2:4:1, 20000 bytes: rows %llu:%llu:%llu:%llu, %zu + %zu bytes\n", r[0], r[1], r[2], r[3],
           s->param_bytes, s->aux_bytes);
    es__storage_free(s);
    /* with a vocabulary: field 2 (5 distinct values) stops at 6 rows, field 0 (37) at 38 */
    es_vocab *v = es_sh_vocab(F);
    s = make("fielddim", "dims=8:2:4:1", F, dim, 1.0 / 32, v, ES_OPT_SGD, &err);
    CHECK_MSG(s, "%s", err.msg);
    CHECK(sscanf(meta_val(s, "rows", buf, sizeof buf), "%llu:%llu:%llu:%llu", &r[0], &r[1], &r[2], &r[3]) == 4);
    CHECK_EQ_INT(r[0], 38);
    CHECK_EQ_INT(r[2], 6);
    CHECK(r[1] + 1 >= r[3] && r[3] + 1 >= r[1]); /* split=equal: the uncapped fields get the same rows */
    CHECK((double)(s->param_bytes + s->aux_bytes) <= s->budget_bytes &&
          (double)(s->param_bytes + s->aux_bytes) > s->budget_bytes - 4 * 8);
    printf("    vocab, dims 8:2:4:1, 1/32 of full (%.0f bytes): rows %llu:%llu:%llu:%llu, %zu + %zu bytes\n", s->budget_bytes, r[0],
           r[1], r[2], r[3], s->param_bytes, s->aux_bytes);
    /* smaller dims, more rows at the same budget */
    es_storage *h = make("hash", "share=0", F, dim, 1.0 / 32, v, ES_OPT_SGD, &err);
    CHECK_MSG(h, "%s", err.msg);
    unsigned long long q[4];
    CHECK(sscanf(meta_val(h, "rows", buf, sizeof buf), "%llu:%llu:%llu:%llu", &q[0], &q[1], &q[2], &q[3]) == 4);
    CHECK(r[1] > 3 * q[1]);
    printf("    hash at the same budget: rows %llu:%llu:%llu:%llu\n", q[0], q[1], q[2], q[3]);
    /* every field capped and budget left: the rest goes out without caps */
    es_storage *big = make("fielddim", "dims=8:2:4:1", F, dim, 0.25, v, ES_OPT_SGD, &err);
    CHECK_MSG(big, "%s", err.msg);
    CHECK(sscanf(meta_val(big, "rows", buf, sizeof buf), "%llu:%llu:%llu:%llu", &q[0], &q[1], &q[2], &q[3]) == 4);
    CHECK(q[0] > 38 && q[1] > 5001 && q[2] > 6 && q[3] > 801);
    CHECK((double)(big->param_bytes + big->aux_bytes) <= big->budget_bytes &&
          (double)(big->param_bytes + big->aux_bytes) > big->budget_bytes - 4 * 8);
    es__storage_free(big);
    es__storage_free(h);
    /* meta re-creates the same shapes without a vocabulary or budget */
    es_storage *c = make("fielddim", s->meta, F, dim, 0, NULL, ES_OPT_SGD, &err);
    CHECK_MSG(c, "%s", err.msg);
    CHECK_STR_EQ(c->meta, s->meta);
    CHECK_EQ_INT(c->param_bytes, s->param_bytes);
    es__storage_free(c);
    es__storage_free(s);
    /* too small a budget: a clear refusal */
    s = make("fielddim", "dims=8:2:4:1", F, dim, 150, NULL, ES_OPT_SGD, &err);
    CHECK(!s && err.code == ES_EBUDGET);
    CHECK_STR_HAS(err.msg, "fielddim");
    es_vocab_free(v);
}

/* ---- bad options ---------------------------------------------------------------------------- */

TEST(fielddim_bad_options) {
    const char *cases[][2] = {
        {"dims=0:8:8", "outside [1, 8]"}, {"dims=8:9:8", "outside [1, 8]"}, {"dims=8:8", "2 values for 3 fields"},
        {"dims=8:8:8:8", "4 values for 3 fields"}, {"dims=0", "outside [1, 8]"}, {"dims=4/4:4:4", "no '/'"},
        {"dims=a", "dims="}, {"rows=5:5", "rows="}, {"split=half", "split="},
    };
    for (size_t i = 0; i < ES_ARRAY_LEN(cases); i++) {
        es_err err = {0, ""};
        es_storage *s = make("fielddim", cases[i][0], 3, 8, 10000, NULL, ES_OPT_SGD, &err);
        printf("    %-16s -> %s\n", cases[i][0], err.msg);
        CHECK_MSG(!s && err.code == ES_EINVAL, "%s was accepted", cases[i][0]);
        CHECK_STR_HAS(err.msg, cases[i][1]);
        CHECK_STR_HAS(err.msg, "fielddim");
    }
    es_err err = {0, ""};
    es_storage *s = make("fielddim", "dims=4", 3, 8, 0, NULL, ES_OPT_SGD, &err);
    CHECK(!s && err.code == ES_EINVAL);
    CHECK_STR_HAS(err.msg, "budget");
}

/* ---- the CLI on the Criteo sample ----------------------------------------------------------- */

TEST(fielddim_cli_train_save_reload_predict) {
    const char *data = "data/criteo_kaggle_train_first10k.tsv";
    const char *model = es_test_path("fielddim.es"), *model2 = es_test_path("fielddim2.es");
    const char *p1 = es_test_path("fielddim_p1.txt"), *p2 = es_test_path("fielddim_p2.txt");
    const char *log = es_test_path("fielddim_train.log");
    /* dlrm on this sample: 26 categorical fields of dim 16; one dim per field */
    char dims[256];
    size_t n = 0;
    for (int f = 0; f < 26; f++) n += (size_t)snprintf(dims + n, sizeof dims - n, "%s%d", f ? ":" : "", f % 4 == 0 ? 16 : 2 + f % 7 * 2);
    int rc = es_test_sh(log, "%s train %s --model dlrm --storage fielddim --storage-opts dims=%s --budget 1/8 --epochs 1 --out %s",
                        es_bin(), data, dims, model);
    if (rc != 0) {
        char *txt = es_test_slurp(log);
        printf("    %s\n", txt ? txt : "");
        free(txt);
    }
    CHECK_EQ_INT(rc, 0);
    CHECK(es_test_sh(NULL, "%s predict %s %s --out %s", es_bin(), model, data, p1) == 0);
    es_model *m = NULL;
    es_err err = {0, ""};
    char buf[512];
    CHECK_MSG(es_model_load(&m, model, 0, &err) == 0, "%s", err.msg);
    CHECK_STR_EQ(m->st->ops->name, "fielddim");
    CHECK_STR_EQ(meta_val(m->st, "dims", buf, sizeof buf), dims);
    printf("    trained dims %s rows %s; %zu + %zu bytes <= %.0f\n", meta_val(m->st, "dims", buf, sizeof buf),
           meta_val(m->st, "rows", buf + 256, 256), m->st->param_bytes, m->st->aux_bytes, m->st->budget_bytes);
    CHECK((double)(m->st->param_bytes + m->st->aux_bytes) <= m->st->budget_bytes);
    CHECK(m->st->param_bytes + m->st->aux_bytes > 0.97 * m->st->budget_bytes);
    CHECK_MSG(es_model_save(m, model2, 0) == 0, "%s", es_model_errmsg(m));
    es_model_free(m);
    CHECK(es_test_sh(NULL, "%s predict %s %s --out %s", es_bin(), model2, data, p2) == 0);
    char *a = es_test_slurp(p1), *b = es_test_slurp(p2);
    CHECK(a && b && strlen(a) > 1000);
    CHECK_MSG(a && b && strcmp(a, b) == 0, "predictions of the reloaded and re-saved model differ");
    free(a);
    free(b);
}

/* ---- FTRL, lazy L2 and post-training quantization through the per-field tables ------------- */

TEST(fielddim_ftrl_lazy_l2_and_quantize) {
    const int F = 4, dim = 8;
    es_vocab *v = es_sh_vocab(F);
    es_batch b;
    CHECK(es_sh_batch(&b, 40, F, 12) == 0);
    size_t nout = (size_t)b.n * F * dim;
    float *o1 = malloc(nout * sizeof *o1), *o2 = malloc(nout * sizeof *o2), *g = malloc(nout * sizeof *g);
    CHECK(o1 && o2 && g);
    /* FTRL and row-wise Adagrad with lazy L2: dims=dim still equals hash share=0 */
    for (int k = 0; k < 2; k++) {
        es_storage_params p = es__storage_params_default();
        p.n_fields = F;
        p.dim = dim;
        p.budget = 1.0 / 16;
        p.seed = 5;
        p.max_batch = 64;
        if (k == 0) {
            p.opt.kind = ES_OPT_FTRL;
            es__optim_ftrl_defaults(&p.opt);
        } else {
            p.opt.kind = ES_OPT_ROWWISE_ADAGRAD;
            p.opt.row_l2 = 0.01f;
        }
        es_storage *a = NULL, *h = NULL;
        es_err err = {0, ""};
        p.method = "fielddim";
        CHECK_MSG(es__storage_create(&a, &p, v, &err) == 0, "%s", err.msg);
        p.method = "hash";
        CHECK_MSG(es__storage_create(&h, &p, v, &err) == 0, "%s", err.msg);
        es_rng r;
        es__rng_seed(&r, 8);
        for (int step = 0; step < 3; step++) {
            CHECK(es__storage_lookup(a, &b, 0, b.n, o1) == 0 && es__storage_lookup(h, &b, 0, b.n, o2) == 0);
            CHECK_MSG(memcmp(o1, o2, nout * sizeof *o1) == 0, "%s: step %d differs", k ? "lazy L2" : "ftrl", step);
            for (size_t i = 0; i < nout; i++) g[i] = es__rng_normal(&r);
            CHECK(es__storage_backward(a, &b, g) == 0 && es__storage_backward(h, &b, g) == 0);
        }
        es__storage_free(a);
        es__storage_free(h);
    }
    /* quantized (post-training quantization): every table converts, lookups near fp32, padding still 0 */
    es_err err = {0, ""};
    es_storage *s = make("fielddim", "dims=8:3:5:1", F, dim, 0.25, v, ES_OPT_ADAGRAD, &err);
    CHECK_MSG(s, "%s", err.msg);
    CHECK(es__storage_lookup(s, &b, 0, b.n, o1) == 0);
    size_t before = s->param_bytes;
    CHECK_MSG(es__storage_quantize(s, ES_PREC_INT8, &err) == 0, "%s", err.msg);
    CHECK(s->param_bytes < before);
    for (int i = 0; i < F; i++) CHECK(s->ops->rows(s, i)->prec == ES_PREC_INT8);
    CHECK(es__storage_lookup(s, &b, 0, b.n, o2) == 0);
    const int d[4] = {8, 3, 5, 1};
    double worst = 0;
    for (size_t i = 0; i < nout; i++) {
        int j = (int)(i % dim), f = (int)(i / dim % F);
        if (j >= d[f]) CHECK(o2[i] == 0.0f);
        worst = fmax(worst, fabs(o1[i] - o2[i]));
    }
    CHECK(worst < 5e-3);
    CHECK(es__storage_backward(s, &b, g) != 0); /* a served code table refuses training */
    printf("    int8 quantization: %zu -> %zu parameter bytes, worst lookup error %.2g\n", before, s->param_bytes, worst);
    es__storage_free(s);
    free(o1);
    free(o2);
    free(g);
    es_batch_free(&b);
    es_vocab_free(v);
}
