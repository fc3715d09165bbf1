/*
 * test_matryoshka.c — Matryoshka training and serving (train --matryoshka,
 * eval/predict --dim, embstore slice; model/nest.h, docs/methods.md):
 *
 *   - finite-difference gradients of the nested loss sum_i w_i logloss_i
 *     w.r.t. the embeddings and every parameter of the full net, for FM,
 *     FFM, DLRM (with and without numeric features) and DCN;
 *   - what "the model at prefix p" is: the full net on rows whose columns
 *     past p are zero (DLRM: and z0's), within float rounding;
 *   - the plain path: weights 0,..,0,1 train the bits of a run without
 *     --matryoshka, and a plain model file has no matryoshka metadata;
 *   - eval at each prefix (public API and CLI), es_model_set_prefix errors;
 *   - train's per-prefix metrics (es_train_result.prefixes) equal eval --dim;
 *   - slice == --dim bit for bit, for fm/full, dlrm/hash, dcn/unified,
 *     ffm/hash, at every prefix, through the CLI and es_model_slice;
 *   - bad input: a prefix not trained, output = input, an unreadable model,
 *     a method that cannot be cut, bad --matryoshka lists: clear errors,
 *     non-zero exits and no output file.
 */
#include "test.h"

#include "core/core.h"
#include "embstore.h"
#include "model/layers.h"
#include "model/nest.h"
#include "model/net.h"

#include <unistd.h>

#define CRITEO "data/criteo_kaggle_train_first10k.tsv"

/* ---- gradients of the nested loss ------------------------------------------------- */

typedef struct {
    es_nest *ns;
    int n;
    float *emb, *dense, *label, *demb;
} ctx;

static double nested_loss(ctx *t) { return es__nest_train_grad(t->ns, t->n, t->emb, t->dense, t->label, t->demb, NULL, 0) / t->n; }

/* Central differences; elements on a ReLU kink (one-sided slopes differ)
 * skipped, at most a quarter of them.  The loss is evaluated in double
 * from float logits, so steps of 1e-3 and a tolerance of 5e-4 + 5e-3 rel. */
static int fd_check(const char *what, float *x, const float *g, size_t count, ctx *t) {
    size_t skipped = 0, failed = 0;
    double l0 = nested_loss(t);
    for (size_t i = 0; i < count; i++) {
        float old = x[i];
        x[i] = (float)(old + 1e-3);
        double hp = (double)x[i] - old, lp = nested_loss(t);
        x[i] = (float)(old - 1e-3);
        double hm = old - (double)x[i], lm = nested_loss(t);
        x[i] = old;
        double fwd = (lp - l0) / hp, bwd = (l0 - lm) / hm, fd = (lp - lm) / (hp + hm);
        if (!es_test_close(fwd, bwd, 2e-3, 2e-2)) {
            skipped++;
            continue;
        }
        if (!es_test_close(g[i], fd, 5e-4, 5e-3)) {
            if (failed < 5) printf("    %s[%zu]: analytic %.7g vs finite difference %.7g\n", what, i, g[i], fd);
            failed++;
        }
    }
    if (skipped * 4 > count) {
        printf("    %s: %zu of %zu elements sit on ReLU kinks\n", what, skipped, count);
        failed++;
    }
    return (int)failed;
}

static int check_nested(es_net_params p, int n, uint64_t seed) {
    static const int pre[] = {1, 2, 4};
    static const float w[] = {0.5f, 1.0f, 2.0f};
    p.n_prefix = 3;
    for (int i = 0; i < 3; i++) p.prefix[i] = pre[i], p.prefix_w[i] = w[i];
    p.dim = 4;
    if (p.kind == ES_NET_DLRM && p.n_dense > 0) p.bottom[p.n_bottom - 1] = 4;
    es_net *net = NULL;
    es_nest *ns = NULL;
    es_err err = {0};
    if (es__net_create(&net, &p, &err) != 0 || es__nest_create(&ns, net, &err) != 0) {
        printf("    create: %s\n", err.msg);
        es__net_free(net);
        return 1;
    }
    es_rng r;
    es__rng_seed(&r, seed);
    int E = es__net_emb_dim(p.kind, p.n_fields, p.dim), D = p.n_dense, F = p.n_fields;
    size_t ne = (size_t)n * F * E;
    float *emb = malloc(ne * sizeof(float)), *dense = malloc(((size_t)n * D + 1) * sizeof(float));
    float *label = malloc((size_t)n * sizeof(float)), *demb = malloc(ne * sizeof(float)), *g = malloc(ne * sizeof(float));
    size_t np = es__net_n_params(net);
    float *pg = malloc(np * sizeof(float));
    es__rng_fill_uniform(&r, es__net_params_ptr(net), np, 0.6f);
    es__rng_fill_uniform(&r, emb, ne, 1);
    es__rng_fill_uniform(&r, dense, (size_t)n * D, 1);
    for (int i = 0; i < n; i++) label[i] = (float)(i % 3 == 0);
    ctx t = {ns, n, emb, D ? dense : NULL, label, demb};
    es__net_zero_grad(net);
    nested_loss(&t);
    memcpy(g, demb, ne * sizeof(float));
    memcpy(pg, es__net_grads_ptr(net), np * sizeof(float));
    char what[64];
    snprintf(what, sizeof what, "%s D=%d", es__net_kind_name(p.kind), D);
    int bad = fd_check(what, emb, g, ne, &t);
    bad += fd_check(what, es__net_params_ptr(net), pg, np, &t);
    free(emb), free(dense), free(label), free(demb), free(g), free(pg);
    es__nest_free(ns);
    es__net_free(net);
    return bad;
}

TEST(matryoshka_nested_loss_gradients) {
    es_net_params fm = es__net_params_default(ES_NET_FM, 3, 3, 4);
    fm.max_batch = 5;
    CHECK_MSG(check_nested(fm, 5, 1) == 0, "fm");
    es_net_params ffm = es__net_params_default(ES_NET_FFM, 2, 3, 4);
    ffm.max_batch = 5;
    CHECK_MSG(check_nested(ffm, 5, 2) == 0, "ffm");
    for (int D = 0; D <= 3; D += 3) {
        es_net_params d = es__net_params_default(ES_NET_DLRM, D, 3, 4);
        d.bottom[0] = 6;
        d.n_bottom = 2;
        d.top[0] = 7;
        d.top[1] = 5;
        d.max_batch = 5;
        CHECK_MSG(check_nested(d, 5, 3 + D) == 0, "dlrm D=%d", D);
    }
    es_net_params c = es__net_params_default(ES_NET_DCN, 2, 3, 4);
    c.top[0] = 7;
    c.top[1] = 5;
    c.max_batch = 5;
    CHECK_MSG(check_nested(c, 5, 9) == 0, "dcn");
}

/* The net at prefix p is the full net on rows zeroed past p (DLRM: the
 * bottom's output rows past p zeroed too, so z0 is), up to float rounding:
 * the sums run over other widths. */
TEST(matryoshka_prefix_is_the_zero_padded_model) {
    static const es_net_kind kinds[] = {ES_NET_FM, ES_NET_FFM, ES_NET_DLRM, ES_NET_DCN};
    for (int ki = 0; ki < 4; ki++) {
        const int n = 7, F = 3, D = 2, k = 8;
        es_net_params p = es__net_params_default(kinds[ki], D, F, k);
        p.max_batch = n;
        p.n_prefix = 3;
        p.prefix[0] = 2, p.prefix[1] = 5, p.prefix[2] = 8;
        p.prefix_w[0] = p.prefix_w[1] = p.prefix_w[2] = 1;
        es_net *net = NULL;
        es_nest *ns = NULL;
        es_err err = {0};
        CHECK_MSG(es__net_create(&net, &p, &err) == 0 && es__nest_create(&ns, net, &err) == 0, "%s", err.msg);
        es_rng r;
        es__rng_seed(&r, 77 + ki);
        int E = es__net_emb_dim(p.kind, F, k);
        float emb[7 * 3 * (1 + 3 * 8)], z[7 * 3 * (1 + 3 * 8)], dense[7 * 2], a[7], b[7];
        es__rng_fill_uniform(&r, es__net_params_ptr(net), es__net_n_params(net), 0.5f);
        es__rng_fill_uniform(&r, emb, (size_t)n * F * E, 1);
        es__rng_fill_uniform(&r, dense, (size_t)n * D, 1);
        es__nest_pull(ns);
        for (int lv = 0; lv < 2; lv++) {
            int pp = p.prefix[lv];
            es__nest_forward(ns, lv, n, emb, dense, a);
            /* zero the columns the prefix does not use */
            int cols[1 + 3 * 8], Ep = es__net_emb_dim(p.kind, F, pp);
            es__net_prefix_cols(p.kind, F, k, pp, cols);
            memset(z, 0, sizeof z);
            for (int rf = 0; rf < n * F; rf++)
                for (int c = 0; c < Ep; c++) z[rf * E + cols[c]] = emb[rf * E + cols[c]];
            es_net *full = net;
            float *saved = NULL;
            if (p.kind == ES_NET_FM || p.kind == ES_NET_DLRM) { /* FM: V's columns past p; DLRM: bottom rows past p */
                es_tensor_ref refs[64];
                int nr = es__net_tensors(full, refs, 64);
                saved = malloc(es__net_param_bytes(full));
                memcpy(saved, es__net_params_ptr(full), es__net_param_bytes(full));
                for (int i = 0; i < nr; i++) {
                    float *d = refs[i].data;
                    if (!strcmp(refs[i].name, "net.fm.v"))
                        for (int dd = 0; dd < D; dd++)
                            for (int c = pp; c < k; c++) d[dd * k + c] = 0;
                    if (!strcmp(refs[i].name, "net.bottom.1.w"))
                        for (int o = pp; o < k; o++)
                            for (uint64_t c = 0; c < refs[i].shape[1]; c++) d[o * refs[i].shape[1] + c] = 0;
                    if (!strcmp(refs[i].name, "net.bottom.1.b"))
                        for (int o = pp; o < k; o++) d[o] = 0;
                }
            }
            es__net_forward(full, n, z, dense, b);
            if (saved) {
                memcpy(es__net_params_ptr(full), saved, es__net_param_bytes(full));
                free(saved);
            }
            for (int i = 0; i < n; i++)
                CHECK_MSG(es_test_close(a[i], b[i], 1e-5, 1e-5), "%s p=%d row %d: %.9g vs zero-padded %.9g",
                          es__net_kind_name(p.kind), pp, i, a[i], b[i]);
        }
        printf("    %s: prefixes 2 and 5 of 8 match the zero-padded net\n", es__net_kind_name(p.kind));
        es__nest_free(ns);
        es__net_free(net);
    }
}

/* ---- the CLI and the public API ------------------------------------------------------ */

#define TRAIN_ARGS "--max-rows 2000 --valid-frac 0 --epochs 1 --threads 1 --quiet"

static int same_file(const char *a, const char *b) { return es_test_sh(NULL, "cmp -s %s %s", a, b) == 0; }

TEST(matryoshka_weights_zero_below_dim_train_the_plain_model) {
    const char *plain = es_test_path("mat_plain.es"), *nest = es_test_path("mat_nest0.es");
    const char *one = es_test_path("mat_one.es");
    const char *pa = es_test_path("mat_plain.txt"), *pb = es_test_path("mat_nest0.txt"), *pc = es_test_path("mat_one.txt");
    for (int kind = 0; kind < 2; kind++) {
        const char *model = kind ? "fm --storage full" : "dlrm --storage hash --budget 0.2";
        CHECK(es_test_sh(NULL, "%s train %s --model %s --dim 8 " TRAIN_ARGS " -o %s", es_bin(), CRITEO, model, plain) == 0);
        CHECK(es_test_sh(NULL, "%s train %s --model %s --dim 8 --matryoshka 2,4,8 --matryoshka-weights 0,0,1 " TRAIN_ARGS " -o %s",
                         es_bin(), CRITEO, model, nest) == 0);
        CHECK(es_test_sh(NULL, "%s train %s --model %s --dim 8 --matryoshka 8 " TRAIN_ARGS " -o %s", es_bin(), CRITEO, model, one) == 0);
        CHECK(es_test_sh(pa, "tail -n 1500 %s | %s predict %s /dev/stdin --format criteo --digits 9", CRITEO, es_bin(), plain) == 0);
        CHECK(es_test_sh(pb, "tail -n 1500 %s | %s predict %s /dev/stdin --format criteo --digits 9", CRITEO, es_bin(), nest) == 0);
        CHECK(es_test_sh(pc, "tail -n 1500 %s | %s predict %s /dev/stdin --format criteo --digits 9", CRITEO, es_bin(), one) == 0);
        CHECK_MSG(same_file(pa, pb), "%s: weights 0,0,1 changed the predictions", model);
        CHECK_MSG(same_file(pa, pc), "%s: --matryoshka 8 changed the predictions", model);
        printf("    %s: 1500 predictions equal bit for bit\n", model);
    }
    es_model *m = NULL;
    es_err err = {0};
    CHECK(es_model_load(&m, plain, 0, &err) == 0);
    CHECK(es_model_meta(m, "model.matryoshka") == NULL); /* a plain model's file is unchanged */
    es_model_free(m);
}

/* Train one model per configuration (cached across tests in build/tmp). */
static const char *trained(const char *name, const char *args) {
    const char *path = es_test_path(name);
    if (es_test_sh(NULL, "%s train %s %s " TRAIN_ARGS " -o %s", es_bin(), CRITEO, args, path) != 0) return NULL;
    return path;
}

TEST(matryoshka_eval_at_each_prefix) {
    const char *model = trained("mat_dlrm.es", "--model dlrm --dim 8 --matryoshka 2,4,8 --storage hash --budget 0.2");
    CHECK(model);
    const char *log = es_test_path("mat_eval.log");
    double auc[3];
    for (int i = 0; i < 3; i++) {
        int p = 2 << i;
        CHECK(es_test_sh(log, "tail -n 2000 %s > %s.tsv && %s eval %s %s.tsv --dim %d", CRITEO, log, es_bin(), model, log, p) == 0);
        char *s = es_test_slurp(log);
        auc[i] = es_test_json_num(s, "auc");
        free(s);
        printf("    dlrm prefix %d: AUC %.4f\n", p, auc[i]);
        CHECK(auc[i] > 0.6 && auc[i] < 1);
    }
    CHECK(auc[0] != auc[1] && auc[1] != auc[2]);
    /* the public call: unknown prefixes are named */
    es_model *m = NULL;
    es_err err = {0};
    CHECK(es_model_load(&m, model, 0, &err) == 0);
    CHECK_STR_HAS(es_model_meta(m, "model.matryoshka"), "2,4,8");
    CHECK(es_model_set_prefix(m, 3) == ES_EINVAL);
    CHECK_STR_HAS(es_model_errmsg(m), "2,4,8");
    CHECK(es_model_set_prefix(m, 16) == ES_EINVAL);
    CHECK(es_model_set_prefix(m, 4) == 0);
    CHECK(es_model_set_prefix(m, 0) == 0);
    CHECK(es_model_set_prefix(m, 8) == 0);
    es_model_free(m);
    CHECK(es_test_sh(log, "%s eval %s %s.tsv --dim 3", es_bin(), model, log) == 1);
    char *s = es_test_slurp(log);
    CHECK_STR_HAS(s, "not a trained prefix");
    CHECK_STR_HAS(s, "2,4,8");
    free(s);
}

/* The training result's per-prefix metrics (es_train_result.prefixes, the
 * JSON's "prefixes") are what eval --dim says of the saved model on the
 * test file, and the whole model's are its auc / test_auc. */
TEST(matryoshka_train_reports_every_prefix) {
    const char *log = es_test_path("mat_pref.log");
    CHECK(es_test_sh(NULL, "tail -n 1500 %s > $ES_T/mat_pref_test.tsv", CRITEO) == 0);
    CHECK(es_test_sh(log, "%s train %s --model fm --dim 8 --matryoshka 2,4,8 --max-rows 3000 --epochs 1 --threads 1 --quiet "
                          "--test $ES_T/mat_pref_test.tsv -o $ES_T/mat_pref.es",
                     es_bin(), CRITEO) == 0);
    char *s = es_test_slurp(log);
    const char *j = s ? es_test_last_line(s) : NULL;
    const char *pr = j ? strstr(j, "\"prefixes\":[") : NULL;
    CHECK(pr);
    for (int i = 0; pr && i < 3; i++) {
        const int d = 2 << i;
        char key[32];
        snprintf(key, sizeof key, "{\"dim\":%d,", d);
        const char *e = strstr(pr, key);
        CHECK_MSG(e, "no prefix %d in %.300s", d, pr);
        if (!e) continue;
        double auc = es_test_json_num(e, "auc"), tauc = es_test_json_num(e, "test_auc");
        CHECK(es_test_sh(log, "%s eval $ES_T/mat_pref.es $ES_T/mat_pref_test.tsv --dim %d", es_bin(), d) == 0);
        char *ev = es_test_slurp(log);
        double eauc = es_test_json_num(ev, "auc");
        free(ev);
        printf("    prefix %d: valid AUC %.6f, test AUC %.6f, eval --dim %d: %.6f\n", d, auc, tauc, d, eauc);
        CHECK(auc > 0.5 && auc < 1);
        CHECK_MSG(fabs(tauc - eauc) < 5e-7, "prefix %d: test_auc %.6f, eval --dim says %.6f", d, tauc, eauc);
        if (d == 8) {
            CHECK(auc == es_test_json_num(j, "auc"));
            CHECK(tauc == es_test_json_num(j, "test_auc"));
        }
    }
    free(s);
    /* without --matryoshka: no "prefixes" */
    CHECK(es_test_sh(log, "%s train %s --model fm --dim 8 --max-rows 1000 --epochs 1 --quiet", es_bin(), CRITEO) == 0);
    s = es_test_slurp(log);
    CHECK(s && !strstr(s, "\"prefixes\""));
    free(s);
}

TEST(matryoshka_slice_equals_dim_bitwise) {
    static const struct {
        const char *name, *args;
    } cfg[] = {
        {"mat_s_fm.es", "--model fm --dim 8 --matryoshka 2,4,8 --storage full"},
        {"mat_s_dlrm.es", "--model dlrm --dim 8 --matryoshka 2,4,8 --storage hash --budget 0.2"},
        {"mat_s_dcn.es", "--model dcn --dim 8 --matryoshka 2,4,8 --storage unified --budget 0.2"},
        {"mat_s_ffm.es", "--model ffm --dim 4 --matryoshka 2,4 --storage hash --budget 0.2"},
    };
    const char *in = es_test_path("mat_slice_in.tsv"), *small = es_test_path("mat_small.es");
    const char *a = es_test_path("mat_a.txt"), *b = es_test_path("mat_b.txt");
    CHECK(es_test_sh(NULL, "tail -n 1000 %s > %s", CRITEO, in) == 0);
    for (size_t c = 0; c < ES_ARRAY_LEN(cfg); c++) {
        const char *model = trained(cfg[c].name, cfg[c].args);
        CHECK_MSG(model, "%s", cfg[c].args);
        for (int p = 2; p <= 8; p *= 2) {
            if (strstr(cfg[c].args, "ffm") && p > 4) break;
            unlink(small);
            CHECK(es_test_sh(NULL, "%s slice %s --dim %d -o %s", es_bin(), model, p, small) == 0);
            CHECK(es_test_sh(a, "%s predict %s %s --dim %d --digits 9", es_bin(), model, in, p) == 0);
            CHECK(es_test_sh(b, "%s predict %s %s --digits 9", es_bin(), small, in) == 0);
            CHECK_MSG(same_file(a, b), "%s: slice %d predicts other bits than --dim %d", cfg[c].args, p, p);
            if (p > 2) { /* the slice keeps the smaller prefixes */
                CHECK(es_test_sh(a, "%s predict %s %s --dim 2 --digits 9", es_bin(), model, in) == 0);
                CHECK(es_test_sh(b, "%s predict %s %s --dim 2 --digits 9", es_bin(), small, in) == 0);
                CHECK_MSG(same_file(a, b), "%s: slice %d at --dim 2", cfg[c].args, p);
            }
        }
        printf("    %s: every slice predicts the bits of --dim\n", cfg[c].args);
    }
    /* the API: a slice is smaller, and its batch scores equal the prefix's */
    es_model *m = NULL, *s = NULL;
    es_err err = {0};
    CHECK(es_model_load(&m, es_test_path("mat_s_dlrm.es"), 0, &err) == 0);
    CHECK_MSG(es_model_slice(m, 4, &s, &err) == 0, "%s", err.msg);
    printf("    dlrm/hash table: %zu bytes at dim 8, %zu at dim 4\n", es_model_table_bytes(m), es_model_table_bytes(s));
    CHECK(es_model_table_bytes(s) < es_model_table_bytes(m) * 0.55); /* rows of 4 floats instead of 8, the hash maps kept */
    CHECK(es_model_emb_dim(s) == 4);
    es_model_free(s);
    es_model_free(m);
}

TEST(matryoshka_bad_input) {
    const char *model = trained("mat_bad.es", "--model fm --dim 8 --matryoshka 4,8 --storage full");
    CHECK(model);
    const char *out = es_test_path("mat_bad_out.es"), *log = es_test_path("mat_bad.log");
    const char *junk = es_test_path("mat_junk.es");
    unlink(out);
    CHECK(es_test_sh(log, "%s slice %s --dim 2 -o %s", es_bin(), model, out) == 1);
    char *s = es_test_slurp(log);
    CHECK_STR_HAS(s, "not a trained prefix");
    CHECK_STR_HAS(s, "4,8");
    free(s);
    CHECK(access(out, F_OK) != 0);
    CHECK(es_test_sh(log, "%s slice %s --dim 4 -o %s", es_bin(), model, model) == 2); /* output = input */
    CHECK(access(model, F_OK) == 0);
    CHECK(es_test_sh(log, "%s slice %s.missing --dim 4 -o %s", es_bin(), model, out) == 1);
    CHECK(access(out, F_OK) != 0);
    CHECK(es_test_sh(NULL, "head -c 300 %s > %s", model, junk) == 0); /* a truncated model file */
    CHECK(es_test_sh(log, "%s slice %s --dim 4 -o %s", es_bin(), junk, out) == 1);
    CHECK(access(out, F_OK) != 0);
    CHECK(es_test_sh(log, "%s slice %s -o %s", es_bin(), model, out) == 2); /* no --dim */
    const char *pred = es_test_path("mat_bad_pred.txt");
    unlink(pred);
    CHECK(es_test_sh(log, "tail -n 100 %s > %s.tsv && %s predict %s %s.tsv --dim 2 --out %s", CRITEO, log, es_bin(), model, log, pred) == 1);
    CHECK(access(pred, F_OK) != 0); /* no prediction file for a prefix that was not trained */
    /* a method that cannot be cut, and a model without prefixes */
    const char *qr = trained("mat_bad_qr.es", "--model fm --dim 8 --matryoshka 4,8 --storage qr --budget 0.2");
    CHECK(qr);
    CHECK(es_test_sh(log, "%s slice %s --dim 4 -o %s", es_bin(), qr, out) == 1);
    s = es_test_slurp(log);
    CHECK_STR_HAS(s, "storage method qr is not supported");
    free(s);
    CHECK(access(out, F_OK) != 0);
    const char *plain = trained("mat_bad_plain.es", "--model fm --dim 8 --storage full");
    CHECK(plain);
    CHECK(es_test_sh(log, "%s slice %s --dim 4 -o %s", es_bin(), plain, out) == 1);
    CHECK(access(out, F_OK) != 0);
    CHECK(es_test_sh(log, "tail -n 100 %s > %s.tsv && %s predict %s %s.tsv --dim 4", CRITEO, log, es_bin(), plain, log) == 1);
    s = es_test_slurp(log);
    CHECK_STR_HAS(s, "no --matryoshka prefixes");
    free(s);
    /* training refusals */
    static const es_test_refusal bad[] = {
        {"--matryoshka 1", "lr has one weight per value"},
        {"--model fm --dim 8 --matryoshka 2,4,16", "larger than dim"},
        {"--model fm --dim 8 --matryoshka 4,2,8", "must increase strictly"},
        {"--model dlrm --dim 8 --matryoshka 2,4", "must equal dim"},
        {"--model fm --dim 8 --matryoshka 2,x,8", "comma-separated dimensions"},
        {"--model fm --dim 8 --matryoshka 4,8 --matryoshka-weights 1", "one per prefix"},
        {"--model fm --dim 8 --matryoshka 4,8 --matryoshka-weights 0,0", "all 0"},
        {"--model fm --dim 8 --matryoshka-weights 1,1", "without matryoshka prefixes"},
    };
    es_test_train_refusals(CRITEO, bad, ES_ARRAY_LEN(bad));
}

/* A checkpoint of a Matryoshka model resumes to the same bits (the
 * prefixes come back from the file; the prefix nets are views, not state),
 * and a saved and loaded one predicts the bits of the trained one. */
#include "resume_harness.h"

TEST(matryoshka_checkpoint_continues) {
    es_model_params mp = es_model_params_default();
    mp.model = "dlrm";
    mp.dim = 8;
    mp.storage = "hash";
    mp.budget = 20000;
    mp.batch = 64;
    mp.matryoshka = "2,4,8";
    mp.matryoshka_weights = "1,0.5,2";
    es_test_checkpoint_continues(mp, "dlrm matryoshka");
    mp.dropout = 0.3f; /* the prefix nets draw the full net's masks of the step */
    es_test_checkpoint_continues(mp, "dlrm matryoshka dropout");
    mp.dropout = 0;
    mp.model = "fm";
    mp.storage = "unified";
    mp.emb_optim = "ftrl";
    es_test_checkpoint_continues(mp, "fm matryoshka ftrl");
}

/* Every allocation of a Matryoshka model's create (its prefix nets) and
 * of a slice may fail: a negative status, no crash, no leak (under ASan). */
#include "alloc_sweep.h"

static int create_and_slice(void *arg) {
    (void)arg;
    es_model_params mp = es_model_params_default();
    mp.model = "dlrm";
    mp.dim = 8;
    mp.n_dense = 3;
    mp.n_fields = 4;
    mp.storage = "hash";
    mp.budget = 8192;
    mp.batch = 16;
    mp.matryoshka = "2,4,8";
    es_model *m = NULL, *s = NULL;
    es_err err = {0};
    int rc = es_model_create(&m, &mp, NULL, &err);
    if (rc == 0) rc = es_model_slice(m, 4, &s, &err);
    es_model_free(s);
    es_model_free(m);
    return rc;
}

TEST(matryoshka_alloc_failures) {
    CHECK_EQ_INT(create_and_slice(NULL), 0); /* the in-memory (never saved) model cuts too */
    int n = es_test_alloc_sweep(create_and_slice, NULL, 2000);
    printf("    %d allocation failure points\n", n);
    CHECK(n > 10);
}
