/*
 * cmd_advise.c — `embstore advise DATA`: train a probe model with a
 * collision-free (`full`) table, diagnose each field's rows (es_diag_*),
 * propose a dimension per field from the spectrum's energy and the
 * `fielddim` storage that holds those widths at the budget, and, with
 * --verify, train the advised configuration and a uniform-dimension
 * baseline (`hash`, every field at the full width) at the same budget over
 * several seeds and report both (docs/diagnostics.md, "Advice").
 *
 * The rule: field f gets d_f = the fewest singular values of its rows that
 * hold --energy (default 0.9) of their energy (sum of sigma^2), at least 1
 * and at most the model's dimension.  A field whose rows the probe cannot
 * separate (fewer than 2 rows) gets 1.
 */
#include "cli.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char advise_help[] =
    "usage: embstore advise DATA [training options] [options]\n"
    "\n"
    "Propose an embedding dimension per field, and a storage that holds them at a\n"
    "byte budget, from a diagnosis of a model trained on DATA:\n"
    "  1. train a probe model on DATA with a full (collision-free) table at --dim;\n"
    "  2. for every field, the singular values of the rows it can address: its\n"
    "     dimension is the fewest that hold --energy of their energy (sigma^2);\n"
    "  3. advise `--storage fielddim --storage-opts dims=d0:d1:...` at --budget;\n"
    "  4. with --verify, train the advice and a uniform baseline (`hash`, every\n"
    "     field at --dim) at the same budget for each seed, and report both.\n"
    "The training settings are bench-storage's (DLRM, dim 16, row-wise Adagrad,\n"
    "one epoch, validation on the last 20% of the rows) unless given.\n"
    "\n"
    "options:\n"
    "  --budget B        serving bytes of the advised table: bytes or a fraction of\n"
    "                    the full table at --dim (default 1/8)\n"
    "  --energy E        energy share a field's dimensions must hold (default 0.9)\n"
    "  --verify          train the advice and the uniform baseline and compare\n"
    "  --seeds a,b,..    seeds of --verify (default 1,2,3)\n"
    "  --json            one JSON line on standard output\n"
    "  --quiet           no progress messages\n"
    "training options: those of `embstore train` (--model, --dim, --epochs, --batch,\n"
    "  --lr, --emb-lr, --emb-optim, --valid-frac, --max-rows, --threads, --seed, and\n"
    "  the input options --format, --columns, --label-threshold, ...)\n"
    "\n"
    "example:\n"
    "  embstore advise data/criteo_kaggle_train_first10k.tsv --budget 1/8 --verify\n";

#define MAX_SEEDS 16

typedef struct {
    char name[64];
    size_t rows;
    double erank;
    int k90, dim;
} field_advice;

static int train_one(const char *cmd, const es_train_params *p, es_train_result *r) {
    es_err err = {0};
    if (es_train(p, r, &err) != 0) return cli_fail(cmd, "%s", err.msg);
    return 0;
}

static void mean_sd(const double *v, int n, double *mean, double *sd) {
    double s = 0, q = 0;
    for (int i = 0; i < n; i++) s += v[i];
    *mean = n ? s / n : 0;
    for (int i = 0; i < n; i++) q += (v[i] - *mean) * (v[i] - *mean);
    *sd = n > 1 ? sqrt(q / (n - 1)) : 0;
}

int cmd_advise(int argc, char **argv) {
    const char *cmd = "advise";
    es_train_params p = es_train_params_basic();
    p.valid_frac = 0.2;
    const char *file = NULL;
    double budget = 1.0 / 8, energy = 0.9;
    int verify = 0, json = 0, quiet = 0, n_seeds = 0;
    int seeds[MAX_SEEDS];
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        int r = cli_reader_opt(cmd, argc, argv, &i, &p.reader);
        if (r == 0) r = cli_train_opt(cmd, argc, argv, &i, &p);
        if (r < 0) return ES_EXIT_USAGE;
        if (r > 0) continue;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(advise_help, stdout);
            return 0;
        } else if (!strcmp(a, "--budget")) {
            if (!(v = cli_next(cmd, argc, argv, &i)) || cli_budget(cmd, v, &budget) != 0) return ES_EXIT_USAGE;
        } else if (!strcmp(a, "--energy")) {
            if (!(v = cli_next(cmd, argc, argv, &i)) || cli_double(cmd, a, v, 0.01, 1.0, &energy) != 0) return ES_EXIT_USAGE;
        } else if (!strcmp(a, "--verify")) {
            verify = 1;
        } else if (!strcmp(a, "--seeds")) {
            if (!(v = cli_next(cmd, argc, argv, &i))) return ES_EXIT_USAGE;
            n_seeds = 0;
            for (const char *s = v; *s && n_seeds < MAX_SEEDS;) {
                char *end;
                long x = strtol(s, &end, 10);
                if (end == s || x < 0 || (*end && *end != ',')) return cli_usage(cmd, "bad --seeds list '%s'", v);
                seeds[n_seeds++] = (int)x;
                s = *end ? end + 1 : end;
            }
            if (n_seeds == 0) return cli_usage(cmd, "bad --seeds list '%s'", v);
        } else if (!strcmp(a, "--json")) {
            json = 1;
        } else if (!strcmp(a, "--quiet") || !strcmp(a, "-q")) {
            quiet = 1;
        } else if (a[0] == '-' && a[1]) {
            return cli_usage(cmd, "unknown option '%s'", a);
        } else if (!file) {
            file = a;
        } else {
            return cli_usage(cmd, "unexpected argument '%s'", a);
        }
    }
    if (!file) return cli_usage(cmd, "no data file given");
    if (p.valid_path) p.valid_frac = 0;
    if (p.valid_frac <= 0 && !p.valid_path && verify)
        return cli_usage(cmd, "--verify compares validation AUCs: keep --valid-frac > 0 or give --valid FILE");
    if (n_seeds == 0) seeds[0] = 1, seeds[1] = 2, seeds[2] = 3, n_seeds = 3;
    p.train_path = file;
    es_train_params_resolve(&p);
    const int D = p.dim;

    /* 1. the probe: a full table, so every value has its own row */
    char probe[4096];
    const char *tmp = getenv("TMPDIR");
    snprintf(probe, sizeof probe, "%s/embstore-advise.%ld.es", tmp && *tmp ? tmp : "/tmp", (long)getpid());
    int slot = es_temp_file_track(probe);
    es_train_params q = p;
    q.storage = "full";
    q.budget = 0;
    q.storage_opts = NULL;
    q.out_path = probe;
    es_train_result pr;
    if (!quiet) fprintf(stderr, "advise: training the probe (%s, full table, dim %d) on %s\n", q.model, D, file);
    if (train_one(cmd, &q, &pr)) {
        remove(probe);
        es_temp_file_untrack(slot);
        return ES_EXIT_FAIL;
    }
    es_model *m = NULL;
    es_err err = {0};
    int rc = es_model_load(&m, probe, 0, &err);
    remove(probe);
    es_temp_file_untrack(slot);
    if (rc != 0) return cli_fail(cmd, "%s", err.msg);

    /* field names, read as the model was */
    es_reader *rd = NULL;
    es_reader_params rp = es_model_reader_params(m);
    if (es_reader_open(&rd, file, &rp, &err) != 0) {
        es_model_free(m);
        return cli_fail(cmd, "%s", err.msg);
    }
    const int F = es_model_n_fields(m);
    field_advice *fa = calloc((size_t)F, sizeof *fa);
    if (!fa) {
        es_reader_free(rd);
        es_model_free(m);
        return cli_fail(cmd, "out of memory");
    }
    /* 2. each field's rows: spectrum, energy */
    es_diag_params dp = es_diag_params_default();
    dp.threads = p.threads;
    for (int f = 0; f < F && rc == 0; f++) {
        float *x = NULL;
        size_t n = 0;
        int d = 0;
        char tname[128];
        snprintf(fa[f].name, sizeof fa[f].name, "%s", es_reader_field_name(rd, f));
        if ((rc = es_diag_model_table(m, 0, f, &x, &n, &d, tname, sizeof tname, &err)) != 0) break;
        fa[f].rows = n;
        es_diag_spectrum sp;
        memset(&sp, 0, sizeof sp);
        if (n < 2) {
            fa[f].dim = 1; /* nothing to separate */
        } else if ((rc = es_diag_compute_spectrum(x, n, d, &dp, &sp, &err)) == 0) {
            double tot = 0, acc = 0;
            for (int k = 0; k < sp.m; k++) tot += sp.sv[k] * sp.sv[k];
            int k = 0;
            while (k < sp.m && tot > 0 && acc < energy * tot) {
                acc += sp.sv[k] * sp.sv[k];
                k++;
            }
            fa[f].dim = k < 1 ? 1 : k > D ? D : k;
            fa[f].erank = sp.erank;
            fa[f].k90 = sp.k90;
            es_diag_spectrum_free(&sp);
        }
        es_diag_free(x);
    }
    es_reader_free(rd);
    es_model_free(m);
    if (rc != 0) {
        free(fa);
        return cli_fail(cmd, "diagnosing the probe: %s", err.msg);
    }
    /* 3. the advice */
    size_t o = 0;
    char opts[8192];
    o += (size_t)snprintf(opts, sizeof opts, "dims=");
    double mean_dim = 0;
    for (int f = 0; f < F && o < sizeof opts; f++) {
        o += (size_t)snprintf(opts + o, sizeof opts - o, "%s%d", f ? ":" : "", fa[f].dim);
        mean_dim += fa[f].dim / (double)F;
    }
    if (o >= sizeof opts) {
        free(fa);
        return cli_fail(cmd, "too many fields for the advice string");
    }
    char budget_s[64];
    if (budget > 1) snprintf(budget_s, sizeof budget_s, "%.0f", budget);
    else snprintf(budget_s, sizeof budget_s, "%.6g", budget);
    if (!json) {
        printf("probe: %s, full table, dim %d, validation AUC %.4f (%llu rows)\n", q.model, D, pr.valid.auc,
               (unsigned long long)pr.valid.rows);
        printf("%-24s %10s %8s %5s %7s\n", "field", "rows", "erank", "k90", "advice");
        for (int f = 0; f < F; f++)
            printf("%-24s %10zu %8.2f %5d %7d\n", fa[f].name, fa[f].rows, fa[f].erank, fa[f].k90, fa[f].dim);
        printf("advice (%.0f%% of each field's energy; mean dim %.2f of %d):\n  embstore train %s --model %s --dim %d "
               "--storage fielddim --storage-opts %s --budget %s\n",
               100 * energy, mean_dim, D, file, q.model, D, opts, budget_s);
    }
    /* 4. verify */
    double adv[MAX_SEEDS], uni[MAX_SEEDS];
    if (verify) {
        for (int s = 0; s < n_seeds; s++) {
            es_train_params a = p, u = p;
            a.seed = u.seed = (uint64_t)seeds[s];
            a.storage = "fielddim";
            a.storage_opts = opts;
            a.budget = budget;
            u.storage = "hash";
            u.storage_opts = NULL;
            u.budget = budget;
            es_train_result ra, ru;
            if (!quiet) fprintf(stderr, "advise: verify, seed %d\n", seeds[s]);
            if (train_one(cmd, &a, &ra) || train_one(cmd, &u, &ru)) {
                free(fa);
                return ES_EXIT_FAIL;
            }
            adv[s] = ra.valid.auc;
            uni[s] = ru.valid.auc;
        }
    }
    double am = 0, asd = 0, um = 0, usd = 0, se = 0;
    const char *verdict = "";
    if (verify) {
        mean_sd(adv, n_seeds, &am, &asd);
        mean_sd(uni, n_seeds, &um, &usd);
        se = sqrt(asd * asd / n_seeds + usd * usd / n_seeds);
        verdict = n_seeds < 2 ? "one seed: noise unknown"
                  : fabs(am - um) < 2 * se ? "tie (within seed noise)"
                  : am > um ? "the advice wins" : "the uniform baseline wins";
        if (!json)
            printf("verify at budget %s, seeds %d: advised %.4f (sd %.4f), uniform hash %.4f (sd %.4f): %s (diff %+.4f, 2se %.4f)\n",
                   budget_s, n_seeds, am, asd, um, usd, verdict, am - um, 2 * se);
    }
    if (json) {
        printf("{\"data\":\"%s\",\"model\":\"%s\",\"dim\":%d,\"energy\":%g,\"budget\":%.9g,\"probe_auc\":%.6f,\"fields\":[", file,
               q.model, D, energy, budget, pr.valid.auc);
        for (int f = 0; f < F; f++)
            printf("%s{\"name\":\"%s\",\"rows\":%zu,\"erank\":%.4f,\"k90\":%d,\"dim\":%d}", f ? "," : "", fa[f].name, fa[f].rows,
                   fa[f].erank, fa[f].k90, fa[f].dim);
        printf("],\"storage\":\"fielddim\",\"storage_opts\":\"%s\"", opts);
        if (verify) {
            printf(",\"verify\":{\"seeds\":%d,\"advised_auc\":[", n_seeds);
            for (int s = 0; s < n_seeds; s++) printf("%s%.6f", s ? "," : "", adv[s]);
            printf("],\"uniform_auc\":[");
            for (int s = 0; s < n_seeds; s++) printf("%s%.6f", s ? "," : "", uni[s]);
            printf("],\"advised_mean\":%.6f,\"uniform_mean\":%.6f,\"verdict\":\"%s\"}", am, um, verdict);
        }
        printf("}\n");
    }
    free(fa);
    return 0;
}
