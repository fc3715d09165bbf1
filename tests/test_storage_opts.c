/*
 * test_storage_opts.c — the storage methods' declarative options
 * (es__opt_spec tables, storage.c): every option of every method round
 * trips through save and load, unknown keys and bad values fail in one
 * message format, the default budget follows the tables, and
 * `train --help-storage` prints them.
 */
#include "storage/storage.h"
#include "storage_harness.h"
#include "test.h"

#include <stdlib.h>
#include <string.h>

static es_storage_params opts_params(const char *method, const char *opts) {
    es_storage_params p = es__storage_params_default();
    p.method = method;
    p.n_fields = 2;
    p.dim = 8;
    p.max_batch = 64;
    p.seed = 3;
    /* full and mde size themselves from the vocabulary */
    p.budget = !strcmp(method, "full") || !strcmp(method, "mde") ? 0 : 40000;
    p.opts = opts;
    return p;
}

/* Create `method` with opts, train one step, save (tensors + meta + the
 * user's opts, as es_model_save does), load the way es__model_load does,
 * and compare every option's effective value and the lookups' bits. */
static int n_round_trips;

static void round_trip(const char *method, const char *opts, const es_vocab *v, const es_batch *b) {
    es_storage_params p = opts_params(method, opts);
    es_storage *a = NULL, *c = NULL;
    es_err err = {0, ""};
    CHECK_MSG(es__storage_create(&a, &p, v, &err) == 0, "%s %s: %s", method, opts, err.msg);
    const size_t nout = (size_t)b->n * 2 * 8;
    float *G = malloc(nout * sizeof *G), *oa = malloc(nout * sizeof *oa), *oc = malloc(nout * sizeof *oc);
    CHECK(G && oa && oc);
    for (size_t i = 0; i < nout; i++) G[i] = (float)((i * 7919) % 13) / 13.0f - 0.5f;
    CHECK_EQ_INT(es__storage_backward(a, b, G), 0);

    char *load = es__storage_load_opts(method, a->meta, opts, NULL);
    CHECK(load);
    es_storage_params q = p;
    q.opts = load;
    q.budget = a->budget_bytes;
    int rc = es__storage_create(&c, &q, NULL, &err);
    CHECK_MSG(rc == 0, "%s %s: load from '%s': %s", method, opts, load, err.msg);
    if (rc == 0) {
        CHECK_MSG(strcmp(a->meta, c->meta) == 0, "%s: meta '%s' vs '%s'", method, a->meta, c->meta);
        for (int i = 0; i < a->ops->n_opts; i++) {
            char va[512], vc[512];
            es__storage_opt_value(a, i, va, sizeof va);
            es__storage_opt_value(c, i, vc, sizeof vc);
            CHECK_MSG(strcmp(va, vc) == 0, "%s %s: option %s is '%s' created, '%s' loaded", method, opts, a->ops->opts[i].name, va,
                      vc);
        }
        es_tensor_ref ta[64], tc[64];
        int na = es__storage_tensors(a, NULL, 0), nc = es__storage_tensors(c, NULL, 0);
        CHECK_EQ_INT(na, nc);
        CHECK(na <= 64);
        es__storage_tensors(a, ta, 64);
        es__storage_tensors(c, tc, 64);
        for (int i = 0; i < na && i < nc; i++) {
            CHECK_EQ_INT(ta[i].nbytes, tc[i].nbytes);
            if (ta[i].nbytes == tc[i].nbytes && ta[i].nbytes) memcpy(tc[i].data, ta[i].data, ta[i].nbytes);
        }
        CHECK_MSG(es__storage_after_load(c) == 0, "%s: after_load: %s", method, es__storage_errmsg(c));
        es__storage_lookup(a, b, 0, b->n, oa);
        es__storage_lookup(c, b, 0, b->n, oc);
        CHECK_MSG(memcmp(oa, oc, nout * sizeof *oa) == 0, "%s %s: lookups differ after the round trip", method, opts);
        n_round_trips++;
    }
    es__free(load);
    free(G);
    free(oa);
    free(oc);
    es__storage_free(a);
    es__storage_free(c);
}

TEST(storage_opts_every_option_round_trips) {
    es_vocab *v = es_sh_vocab(2);
    es_batch b;
    CHECK(v && es_sh_batch(&b, 16, 2, 5) == 0);
    n_round_trips = 0;
    for (int m = 0; m < es__storage_n_methods(); m++) {
        const es_storage_ops *ops = es__storage_method_at(m);
        CHECK_MSG(ops->n_opts > 0 && ops->opts, "%s declares no options", ops->name);
        CHECK_MSG(ops->default_budget >= 0 && ops->default_budget <= 1, "%s: default budget %g", ops->name, ops->default_budget);
        for (int i = 0; i < ops->n_opts; i++) {
            const es__opt_spec *o = &ops->opts[i];
            CHECK_MSG(o->example && o->help && *o->help, "%s: option %s needs an example and help", ops->name, o->name);
            if (!o->example) continue;
            CHECK_MSG(!o->def || strcmp(o->def, o->example) != 0, "%s: option %s: the example is the default", ops->name, o->name);
            char opts[256];
            snprintf(opts, sizeof opts, "%s=%s%s%s", o->name, o->example, o->example_with && *o->example_with ? "," : "",
                     o->example_with ? o->example_with : "");
            printf("    %-9s %s\n", ops->name, opts);
            round_trip(ops->name, opts, v, &b);
        }
        /* and with no options at all */
        round_trip(ops->name, "", v, &b);
    }
    printf("    %d round trips\n", n_round_trips);
    es_batch_free(&b);
    es_vocab_free(v);
}

static void expect_einval(const char *method, const char *opts, const char *const *has) {
    es_storage_params p = opts_params(method, opts);
    es_storage *s = NULL;
    es_err err = {0, ""};
    es_vocab *v = es_sh_vocab(2);
    int rc = es__storage_create(&s, &p, v, &err);
    printf("    %-9s %-24s -> %s\n", method, opts, err.msg);
    CHECK_MSG(rc == ES_EINVAL && !s, "%s %s gave %d", method, opts, rc);
    for (; *has; has++) CHECK_STR_HAS(err.msg, *has);
    es__storage_free(s);
    es_vocab_free(v);
}

TEST(storage_opts_unknown_key_lists_the_known_ones) {
    expect_einval("unified", "chunk=4",
                  (const char *[]){"unified: option chunk=4: unknown option", "chunks, subtables, seed, rows", NULL});
    expect_einval("full", "share=1", (const char *[]){"full: option share=1: unknown option", "keys, min_count", NULL});
    expect_einval("hash", "rows", (const char *[]){"hash: option rows=: no value", NULL});
}

TEST(storage_opts_bad_values_one_format) {
    expect_einval("qr", "partitions=9",
                  (const char *[]){"qr: option partitions=9: out of range (expected an integer in [2, 4])", NULL});
    expect_einval("qr", "partitions=2x", (const char *[]){"qr: option partitions=2x: not an unsigned integer (expected", NULL});
    expect_einval("qr", "op=mul", (const char *[]){"qr: option op=mul: not one of the choices (expected one of mult, add, cat)", NULL});
    expect_einval("multihash", "wfrac=1", (const char *[]){"multihash: option wfrac=1: out of range (expected a number in (0, 1))", NULL});
    expect_einval("multihash", "wfrac=abc", (const char *[]){"multihash: option wfrac=abc: not a number", NULL});
    expect_einval("robe", "rows=3:x", (const char *[]){"robe: option rows=3:x: not a list", NULL});
    expect_einval("robe", "rows=3", (const char *[]){"robe: option rows=3: needs 2 group(s) of 1", NULL});
    expect_einval("hash", "share=1,share=0", (const char *[]){"hash: option share=0: given twice with different values", NULL});
    expect_einval("hash", "seed=-1", (const char *[]){"hash: option seed=-1: not an unsigned integer", NULL});
    /* every option of every method: junk, and one past the top of a bounded range */
    for (int m = 0; m < es__storage_n_methods(); m++) {
        const es_storage_ops *ops = es__storage_method_at(m);
        for (int i = 0; i < ops->n_opts; i++) {
            const es__opt_spec *o = &ops->opts[i];
            char opts[128], want[160];
            snprintf(opts, sizeof opts, "%s=x!", o->name);
            snprintf(want, sizeof want, "%s: option %s=x!: ", ops->name, o->name);
            expect_einval(ops->name, opts, (const char *[]){want, "(expected ", NULL});
            if ((o->type == ES_OPT_UINT || o->type == ES_OPT_LIST) && o->hi < UINT64_MAX) {
                snprintf(opts, sizeof opts, "%s=%llu", o->name, (unsigned long long)o->hi + 1);
                snprintf(want, sizeof want, "%s: option %s=%llu: ", ops->name, o->name, (unsigned long long)o->hi + 1);
                expect_einval(ops->name, opts, (const char *[]){want, "range", NULL});
            }
        }
    }
    /* the same value twice is fine */
    es_storage_params p = opts_params("hash", "share=1,share=1,,");
    es_storage *s = NULL;
    es_err err;
    CHECK_MSG(es__storage_create(&s, &p, NULL, &err) == 0, "%s", err.msg);
    es__storage_free(s);
}

TEST(storage_opts_default_budget_and_min_count) {
    const struct {
        const char *m, *opts;
        double want;
    } cases[] = {
        {"hash", "", ES_DEFAULT_BUDGET},      {"hash", "split=prop", ES_DEFAULT_BUDGET}, {"hash", "rows=5:5", 0},
        {"unified", "chunks=2", ES_DEFAULT_BUDGET}, {"unified", "rows=100", 0},       {"full", "", 0},
        {"mde", "", 0},                       {"dhe", "k=4,h=4", 0},                     {"qr", "op=add", ES_DEFAULT_BUDGET},
        {"no-such-method", "x=1", 0},
    };
    for (size_t i = 0; i < ES_ARRAY_LEN(cases); i++) {
        double b = -1;
        es_err err = {0, ""};
        CHECK_MSG(es__storage_default_budget(cases[i].m, cases[i].opts, &b, &err) == 0, "%s %s: %s", cases[i].m, cases[i].opts,
                  err.msg);
        CHECK_MSG(b == cases[i].want, "%s %s: default budget %g, want %g", cases[i].m, cases[i].opts, b, cases[i].want);
    }
    double b;
    es_err err;
    CHECK_EQ_INT(es__storage_default_budget("unified", "chunk=2", &b, &err), ES_EINVAL);
    CHECK_STR_HAS(err.msg, "unknown option");
    es_storage_params p = opts_params("full", "min_count=3");
    CHECK_EQ_INT(es__storage_min_count(&p), 3);
    p.opts = NULL;
    CHECK_EQ_INT(es__storage_min_count(&p), 1);
    p = opts_params("hash", "split=prop");
    CHECK_EQ_INT(es__storage_min_count(&p), 1);
}

TEST(storage_opts_load_folds_old_keys) {
    /* resolved first; then the user's keys the method knows and resolved
     * lacks; then the keys older files kept outside opts */
    char *o = es__storage_load_opts("unified", "seed=1,rows=9", "foo=1,chunks=2,rows=7", "min_count=1,chunks=4,subtables=1,share=0");
    CHECK(o);
    CHECK_MSG(o && strcmp(o, "seed=1,rows=9,chunks=2,subtables=1") == 0, "got '%s'", o ? o : "");
    es__free(o);
    o = es__storage_load_opts("adapt", "share=1,mode=vocab", "", "min_count=3,chunks=1,subtables=1,share=0");
    CHECK_MSG(o && strcmp(o, "share=1,mode=vocab,min_count=3") == 0, "got '%s'", o ? o : "");
    es__free(o);
}

TEST(storage_opts_help_storage_cli) {
    const char *log = es_test_path("help_storage.txt");
    CHECK_EQ_INT(es_test_sh(log, "%s train --storage qr --help-storage", es_bin()), 0);
    char *s = es_test_slurp(log);
    CHECK(s);
    if (s) {
        CHECK_STR_HAS(s, "qr: ");
        CHECK_STR_HAS(s, "partitions");
        CHECK_STR_HAS(s, "one of mult, add, cat");
        CHECK_STR_HAS(s, "sizes the table");
        CHECK(strstr(s, "chunks") == NULL); /* qr only */
    }
    free(s);
    CHECK_EQ_INT(es_test_sh(log, "%s train --help-storage", es_bin()), 0);
    s = es_test_slurp(log);
    CHECK(s);
    for (int m = 0; s && m < es__storage_n_methods(); m++) {
        char name[64];
        snprintf(name, sizeof name, "%s: ", es__storage_method_at(m)->name);
        CHECK_STR_HAS(s, name);
    }
    if (s) CHECK_STR_HAS(s, "subtables");
    free(s);
    CHECK(es_test_sh(log, "%s train --storage nope --help-storage", es_bin()) != 0);
    s = es_test_slurp(log);
    if (s) CHECK_STR_HAS(s, "unknown method 'nope'");
    free(s);
    CHECK_EQ_INT(es_test_sh(log, "%s train --help", es_bin()), 0);
    s = es_test_slurp(log);
    if (s) CHECK_STR_HAS(s, "--help-storage");
    free(s);
}
