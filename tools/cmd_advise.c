/*
 * cmd_advise.c — `embstore advise DATA`: propose per-field embedding
 * dimensions and a storage for a byte budget, checked before they are
 * given (docs/diagnostics.md, "Advice").
 *
 * The rows of DATA are used by position, in three disjoint roles:
 *
 *   [0, a)      selection training rows (the probe and every candidate)
 *   [a, b)      selection rows: each candidate is scored here
 *   [b, N)      verify rows (or the --valid file): only --verify scores here
 *
 * where N is the number of rows (at most --max-rows), b = N - round(N *
 * valid_frac) (es_train's own split: --verify trains on [0, b) and scores
 * on [b, N), as `embstore train` would), and a = b - round(b *
 * select_frac).  So the choice never sees the rows that --verify reports.
 *
 * Candidates: for each --energy level E, field f gets d_f = the fewest
 * singular values of the probe's rows of f (or of their change in
 * training: rows minus the initial rows of a run with the table's learning
 * rate at 0) that hold E of their energy (sum of sigma^2), in [1, dim]
 * (`fielddim`); the uniform table (`hash`,
 * every field at dim) is a candidate too; each with hash's split=equal and
 * with split=prop (rows in proportion to a field's distinct values).
 * Duplicates are dropped.  Each is trained on [0, a) for every selection
 * seed and scored on [a, b).  The choice is the candidate with the highest
 * mean selection AUC, unless it is not the uniform table and beats it by
 * less than two standard errors of the difference of the means (then the
 * uniform table: "no per-field change pays at this budget").
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
    "byte budget, checked on held-out rows before it is given:\n"
    "  1. split DATA's rows by position: the last --valid-frac (0.2) are kept for\n"
    "     --verify; of the rest, the last --select-frac (0.2) are the selection\n"
    "     rows and the others the selection training rows;\n"
    "  2. train a probe with a full (collision-free) table at --dim on the\n"
    "     selection training rows, and the same run with the table's learning\n"
    "     rate at 0 (its initial rows); for each field, the singular values of its\n"
    "     rows (e) and of their change in training, rows - initial rows (c);\n"
    "  3. candidates: for each spectrum and --energy level E, every field at the\n"
    "     fewest dimensions that hold E of its energy (sigma^2), as\n"
    "     `--storage fielddim --storage-opts dims=d0:d1:...` (labels e0.9, c0.9);\n"
    "     and the uniform table (`hash`, every field at --dim); each with\n"
    "     split=equal and split=prop (rows in proportion to a field's distinct\n"
    "     values; labels +prop); duplicates dropped;\n"
    "  4. train each candidate on the selection training rows for each selection\n"
    "     seed and score it on the selection rows; advise the best mean AUC,\n"
    "     unless it beats the uniform table by less than two standard errors\n"
    "     (then: \"no per-field change pays at this budget\", the uniform table);\n"
    "  5. with --verify, train the advice and the uniform table on all rows but\n"
    "     the verify rows for each --seeds seed, and report both AUCs on the verify\n"
    "     rows, which the choice never saw (and, when the advice is the uniform\n"
    "     table, the best per-field candidate too).\n"
    "The training settings are bench-storage's (DLRM, dim 16, row-wise Adagrad,\n"
    "one epoch) unless given.  With --valid FILE, --verify scores on FILE and the\n"
    "selection splits all of DATA.  With --emb-optim ftrl (which ignores the\n"
    "table's learning rate) there is no change spectrum.\n"
    "\n"
    "options:\n"
    "  --budget B          serving bytes of the advised table: bytes or a fraction\n"
    "                      of the full table at --dim (default 1/8)\n"
    "  --energy E,E,...    energy levels of the candidates, each in [0.01, 1]\n"
    "                      (default 0.8,0.9,0.95,0.99)\n"
    "  --select-frac F     share of the non-verify rows that score the candidates\n"
    "                      (default 0.2)\n"
    "  --select-seeds a,.. seeds of the selection, at least 2 (default 101,102,103)\n"
    "  --verify            train the advice and the uniform table and compare\n"
    "  --seeds a,b,..      seeds of --verify (default 1,2,3)\n"
    "  --json              one JSON line on standard output\n"
    "  --quiet             no progress messages\n"
    "training options: those of `embstore train` (--model, --dim, --epochs, --batch,\n"
    "  --lr, --emb-lr, --emb-optim, --valid-frac, --valid, --max-rows, --threads,\n"
    "  and the input options --format, --columns, --label-threshold, ...)\n"
    "\n"
    "example:\n"
    "  embstore advise data/criteo_kaggle_train_first10k.tsv --budget 1/8 --verify\n";

#define MAX_SEEDS 16
#define MAX_ENERGIES 8
#define OPTS_CAP 8192

typedef struct {
    char name[64];
    size_t rows;
    double erank;
    int k90;
    int dims[MAX_ENERGIES];  /* per energy level, from the probe's rows */
    int cdims[MAX_ENERGIES]; /* ... from the probe's change (rows - initial rows) */
    double cerank;
} field_advice;

typedef struct {
    char label[48];      /* "uniform", "uniform+prop", "e0.9", "c0.9+prop", ... */
    const char *storage; /* "hash" or "fielddim" */
    char opts[OPTS_CAP]; /* storage options ("" for the uniform table) */
    int src;             /* 0: the uniform table, 1: the rows' spectrum, 2: the change's */
    int e;               /* energy level index (src > 0) */
    double energy;       /* 0: the uniform table */
    double mean_dim;
    int prop;            /* split=prop */
    char error[512];     /* why it could not be trained; "" when it was */
    double auc[MAX_SEEDS], mean, sd;
} candidate;

static void mean_sd(const double *v, int n, double *mean, double *sd) {
    double s = 0, q = 0;
    for (int i = 0; i < n; i++) s += v[i];
    *mean = n ? s / n : 0;
    for (int i = 0; i < n; i++) q += (v[i] - *mean) * (v[i] - *mean);
    *sd = n > 1 ? sqrt(q / (n - 1)) : 0;
}

/* "a,b,c" of non-negative integers into v[<= MAX_SEEDS]; the count, or 0. */
static int parse_seeds(const char *s, int *v) {
    int n = 0;
    while (*s && n < MAX_SEEDS) {
        char *end;
        long x = strtol(s, &end, 10);
        if (end == s || x < 0 || (*end && *end != ',')) return 0;
        v[n++] = (int)x;
        s = *end ? end + 1 : end;
    }
    return *s ? 0 : n;
}

/* Data rows of p's training file, at most p->max_rows: what es_train
 * counts before it holds out valid_frac.  -1 with err set on failure. */
static long long count_rows(const es_train_params *p, es_err *err) {
    es_reader *r = NULL;
    if (es_reader_open(&r, p->train_path, &p->reader, err) != 0) return -1;
    es_batch b;
    if (es_batch_alloc(&b, 4096, es_reader_n_dense(r), es_reader_n_fields(r), 0) != 0) {
        es_reader_free(r);
        snprintf(err->msg, sizeof err->msg, "out of memory");
        return -1;
    }
    long long n = 0;
    int k;
    while ((k = es_reader_next(r, &b)) > 0) {
        n += k;
        if (p->max_rows && (uint64_t)n >= p->max_rows) {
            n = (long long)p->max_rows;
            break;
        }
    }
    if (k < 0) {
        snprintf(err->msg, sizeof err->msg, "%s", es_reader_errmsg(r));
        n = -1;
    }
    es_batch_free(&b);
    es_reader_free(r);
    return n;
}

/* Train the probe q (a full table) into a temporary file and load it. */
static int train_probe(const es_train_params *q, const char *tag, es_model **m, es_train_result *pr, es_err *err) {
    char path[4096];
    const char *tmp = getenv("TMPDIR");
    snprintf(path, sizeof path, "%s/embstore-advise.%ld.%s.es", tmp && *tmp ? tmp : "/tmp", (long)getpid(), tag);
    int slot = es_temp_file_track(path);
    es_train_params t = *q;
    t.out_path = path;
    int rc = es_train(&t, pr, err);
    if (rc == 0) rc = es_model_load(m, path, 0, err);
    remove(path);
    es_temp_file_untrack(slot);
    return rc;
}

/* dims[e] = the fewest singular values of x[n x d] that hold energies[e]
 * of their energy (sum of sigma^2), in [1, D]; 1 for fewer than 2 rows. */
static int spectrum_dims(const float *x, size_t n, int d, const es_diag_params *dp, const double *energies, int n_e,
                         int D, int *dims, double *erank, int *k90, es_err *err) {
    for (int e = 0; e < n_e; e++) dims[e] = 1;
    if (n < 2) return 0;
    es_diag_spectrum sp;
    memset(&sp, 0, sizeof sp);
    int rc = es_diag_compute_spectrum(x, n, d, dp, &sp, err);
    if (rc != 0) return rc;
    double tot = 0;
    for (int k = 0; k < sp.m; k++) tot += sp.sv[k] * sp.sv[k];
    for (int e = 0; e < n_e; e++) {
        double acc = 0;
        int k = 0;
        while (k < sp.m && tot > 0 && acc < energies[e] * tot) {
            acc += sp.sv[k] * sp.sv[k];
            k++;
        }
        dims[e] = k < 1 ? 1 : k > D ? D : k;
    }
    *erank = sp.erank;
    if (k90) *k90 = sp.k90;
    es_diag_spectrum_free(&sp);
    return 0;
}

/* p with candidate c's storage at the budget. */
static es_train_params with_candidate(const es_train_params *p, const candidate *c, double budget) {
    es_train_params t = *p;
    t.storage = c->storage;
    t.storage_opts = c->opts[0] ? c->opts : NULL;
    t.budget = budget;
    return t;
}

/* Train c at each seed on p's rows; AUCs into auc[].  0, or -1 with the
 * reason in c->error (a candidate the budget cannot hold, say). */
static int train_candidate(const es_train_params *p, candidate *c, double budget, const int *seeds, int n_seeds,
                           double *auc, es_train_result *last, int quiet, const char *what) {
    for (int s = 0; s < n_seeds; s++) {
        es_train_params t = with_candidate(p, c, budget);
        t.seed = (uint64_t)seeds[s];
        es_err err = {0};
        es_train_result r;
        if (!quiet) fprintf(stderr, "advise: %s %s, seed %d\n", what, c->label, seeds[s]);
        if (es_train(&t, &r, &err) != 0) {
            snprintf(c->error, sizeof c->error, "%s", err.msg);
            return -1;
        }
        if (!(r.valid.auc == r.valid.auc)) {
            snprintf(c->error, sizeof c->error, "no AUC: the scored rows hold one class only");
            return -1;
        }
        auc[s] = r.valid.auc;
        if (last) *last = r;
    }
    return 0;
}

/* JSON array of n numbers. */
static void json_nums(const double *v, int n) {
    putchar('[');
    for (int i = 0; i < n; i++) printf("%s%.6f", i ? "," : "", v[i]);
    putchar(']');
}

/* a (mean am, sd asd) against the uniform table (um, usd) over n seeds: a
 * tie when the means differ by less than two standard errors. */
static const char *verdict_of(double am, double asd, double um, double usd, int n, const char *a_wins, double *se) {
    *se = sqrt(asd * asd / n + usd * usd / n);
    return n < 2 ? "one seed: noise unknown"
           : fabs(am - um) < 2 * *se ? "tie (within seed noise)"
           : am > um ? a_wins : "the uniform baseline wins";
}

int cmd_advise(int argc, char **argv) {
    const char *cmd = "advise";
    es_train_params p = es_train_params_basic();
    p.valid_frac = 0.2;
    const char *file = NULL;
    double budget = 1.0 / 8, select_frac = 0.2;
    double energies[MAX_ENERGIES] = {0.8, 0.9, 0.95, 0.99};
    int n_energies = 4;
    int verify = 0, json = 0, quiet = 0, n_seeds = 0, n_sel = 0;
    int seeds[MAX_SEEDS], sel_seeds[MAX_SEEDS];
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
            if (!(v = cli_next(cmd, argc, argv, &i))) return ES_EXIT_USAGE;
            n_energies = 0;
            char buf[256];
            snprintf(buf, sizeof buf, "%s", v);
            for (char *t = strtok(buf, ","); t; t = strtok(NULL, ",")) {
                if (n_energies == MAX_ENERGIES) return cli_usage(cmd, "--energy: at most %d levels", MAX_ENERGIES);
                if (cli_double(cmd, a, t, 0.01, 1.0, &energies[n_energies]) != 0) return ES_EXIT_USAGE;
                n_energies++;
            }
            if (n_energies == 0) return cli_usage(cmd, "bad --energy list '%s'", v);
        } else if (!strcmp(a, "--select-frac")) {
            if (!(v = cli_next(cmd, argc, argv, &i)) || cli_double(cmd, a, v, 0.01, 0.9, &select_frac) != 0)
                return ES_EXIT_USAGE;
        } else if (!strcmp(a, "--verify")) {
            verify = 1;
        } else if (!strcmp(a, "--seeds") || !strcmp(a, "--select-seeds")) {
            if (!(v = cli_next(cmd, argc, argv, &i))) return ES_EXIT_USAGE;
            int *dst = a[2] == 's' && a[3] == 'e' && a[4] == 'l' ? sel_seeds : seeds;
            int n = parse_seeds(v, dst);
            if (n == 0) return cli_usage(cmd, "bad %s list '%s'", a, v);
            if (dst == seeds) n_seeds = n;
            else n_sel = n;
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
    if (n_sel == 0) sel_seeds[0] = 101, sel_seeds[1] = 102, sel_seeds[2] = 103, n_sel = 3;
    if (n_sel < 2) return cli_usage(cmd, "--select-seeds: give at least 2 seeds (the tie rule needs their spread)");
    p.train_path = file;
    es_train_params_resolve(&p);
    const int D = p.dim;
    es_err err = {0};

    /* 1. the rows: selection uses [0, b), verify scores [b, N) */
    es_train_params sel = p; /* the selection runs: rows [0, b), scored on [a, b) */
    sel.valid_path = NULL;
    sel.valid_frac = select_frac;
    sel.test_path = NULL;
    sel.out_path = NULL;
    if (!p.valid_path && p.valid_frac > 0) {
        long long n = count_rows(&p, &err);
        if (n < 0) return cli_fail(cmd, "%s", err.msg);
        long long b = n - llround((double)n * p.valid_frac);
        if (b < 2) return cli_fail(cmd, "%s: %lld rows leave %lld outside the verify rows: too few to select on", file, n, b);
        sel.max_rows = (uint64_t)b;
    }

    /* 2. the probe: a full table, so every value has its own row; and the
     * same run with the table's learning rate at 0, whose rows are the
     * probe's initial rows (same seed, same vocabulary), for the spectrum of
     * what training changed.  FTRL ignores the rate: no change spectrum. */
    es_train_params q = sel;
    q.storage = "full";
    q.budget = 0;
    q.storage_opts = NULL;
    const int with_change = !(q.emb_optim && !strcmp(q.emb_optim, "ftrl"));
    es_train_result pr, pr0;
    es_model *m = NULL, *m0 = NULL;
    if (!quiet) fprintf(stderr, "advise: training the probe (%s, full table, dim %d) on %s\n", q.model, D, file);
    int rc = train_probe(&q, "probe", &m, &pr, &err);
    if (rc == 0 && with_change) {
        es_train_params q0 = q;
        q0.emb_lr = 0;
        rc = train_probe(&q0, "init", &m0, &pr0, &err);
    }
    if (rc != 0) {
        es_model_free(m);
        return cli_fail(cmd, "%s", err.msg);
    }

    /* field names, read as the model was */
    es_reader *rd = NULL;
    es_reader_params rp = es_model_reader_params(m);
    if (es_reader_open(&rd, file, &rp, &err) != 0) {
        es_model_free(m);
        es_model_free(m0);
        return cli_fail(cmd, "%s", err.msg);
    }
    const int F = es_model_n_fields(m);
    field_advice *fa = calloc((size_t)F, sizeof *fa);
    const int max_cands = 2 * (2 * n_energies + 1);
    candidate *cs = calloc((size_t)max_cands, sizeof *cs);
    if (!fa || !cs) {
        free(fa);
        free(cs);
        es_reader_free(rd);
        es_model_free(m);
        es_model_free(m0);
        return cli_fail(cmd, "out of memory");
    }
    /* each field's rows and their change: spectra, dims at each energy level */
    es_diag_params dp = es_diag_params_default();
    dp.threads = p.threads;
    for (int f = 0; f < F && rc == 0; f++) {
        float *x = NULL, *x0 = NULL;
        size_t n = 0, n0 = 0;
        int d = 0, d0 = 0;
        char tname[128];
        snprintf(fa[f].name, sizeof fa[f].name, "%s", es_reader_field_name(rd, f));
        if ((rc = es_diag_model_table(m, 0, f, &x, &n, &d, tname, sizeof tname, &err)) != 0) break;
        fa[f].rows = n;
        rc = spectrum_dims(x, n, d, &dp, energies, n_energies, D, fa[f].dims, &fa[f].erank, &fa[f].k90, &err);
        if (rc == 0 && with_change && (rc = es_diag_model_table(m0, 0, f, &x0, &n0, &d0, tname, sizeof tname, &err)) == 0) {
            if (n0 != n || d0 != d) {
                snprintf(err.msg, sizeof err.msg, "field %d: the initial table has %zu x %d rows, the probe %zu x %d", f, n0, d0, n, d);
                rc = ES_EINVAL;
            } else {
                for (size_t i = 0; i < n * (size_t)d; i++) x[i] -= x0[i];
                rc = spectrum_dims(x, n, d, &dp, energies, n_energies, D, fa[f].cdims, &fa[f].cerank, NULL, &err);
            }
        }
        es_diag_free(x0);
        es_diag_free(x);
    }
    es_reader_free(rd);
    es_model_free(m);
    es_model_free(m0);
    if (rc != 0) {
        free(fa);
        free(cs);
        return cli_fail(cmd, "diagnosing the probe: %s", err.msg);
    }

    /* 3. the candidates: uniform first (cs[0] is the baseline), then each
     * energy level; each with split=equal and split=prop; duplicates (the
     * same dims and split, or dims all equal to --dim, which is `hash`)
     * dropped */
    int nc = 0;
    for (int ce = -1; ce < 2 * n_energies; ce++) {
        const int src = ce < 0 ? 0 : ce < n_energies ? 1 : 2, e = ce < 0 ? -1 : ce % n_energies;
        if (src == 2 && !with_change) break;
        char dims[OPTS_CAP - 16];
        size_t o = 0;
        int all_full = 1;
        double mean_dim = D;
        if (e >= 0) {
            mean_dim = 0;
            o += (size_t)snprintf(dims, sizeof dims, "dims=");
            for (int f = 0; f < F && o < sizeof dims; f++) {
                const int df = src == 1 ? fa[f].dims[e] : fa[f].cdims[e];
                o += (size_t)snprintf(dims + o, sizeof dims - o, "%s%d", f ? ":" : "", df);
                mean_dim += df / (double)F;
                all_full &= df == D;
            }
            if (o >= sizeof dims) {
                free(fa);
                free(cs);
                return cli_fail(cmd, "too many fields for the advice string");
            }
            if (all_full) continue; /* the uniform table */
        }
        for (int prop = 0; prop < 2; prop++) {
            candidate *c = &cs[nc];
            memset(c, 0, sizeof *c);
            c->energy = e >= 0 ? energies[e] : 0;
            c->mean_dim = mean_dim;
            c->prop = prop;
            c->src = src;
            c->e = e;
            c->storage = e >= 0 ? "fielddim" : "hash";
            if (e >= 0) snprintf(c->opts, sizeof c->opts, "%s%s", dims, prop ? ",split=prop" : "");
            else snprintf(c->opts, sizeof c->opts, "%s", prop ? "split=prop" : "");
            if (e >= 0) snprintf(c->label, sizeof c->label, "%c%g%s", src == 1 ? 'e' : 'c', energies[e], prop ? "+prop" : "");
            else snprintf(c->label, sizeof c->label, "uniform%s", prop ? "+prop" : "");
            int dup = 0;
            for (int j = 0; j < nc; j++) dup |= !strcmp(cs[j].storage, c->storage) && !strcmp(cs[j].opts, c->opts);
            if (!dup) nc++;
        }
    }

    /* 4. selection: train each on [0, a), score on [a, b) */
    es_train_result sr;
    memset(&sr, 0, sizeof sr);
    for (int c = 0; c < nc; c++) {
        if (train_candidate(&sel, &cs[c], budget, sel_seeds, n_sel, cs[c].auc, &sr, quiet, "selection") != 0) {
            if (c == 0) {
                int r = cli_fail(cmd, "the uniform table at this budget: %s", cs[0].error);
                free(fa);
                free(cs);
                return r;
            }
            continue;
        }
        mean_sd(cs[c].auc, n_sel, &cs[c].mean, &cs[c].sd);
    }
    int best = 0;
    for (int c = 1; c < nc; c++)
        if (!cs[c].error[0] && cs[c].mean > cs[best].mean) best = c;
    double sel_se = sqrt(cs[best].sd * cs[best].sd / n_sel + cs[0].sd * cs[0].sd / n_sel);
    int choice = best;
    if (best != 0 && cs[best].mean - cs[0].mean < 2 * sel_se) choice = 0;
    const candidate *ch = &cs[choice];
    /* the best per-field candidate (not the uniform table), for the report */
    int best_pf = -1;
    for (int c = 0; c < nc; c++)
        if (cs[c].energy > 0 && !cs[c].error[0] && (best_pf < 0 || cs[c].mean > cs[best_pf].mean)) best_pf = c;
    char reason[512];
    if (choice == 0 && best == 0)
        snprintf(reason, sizeof reason, "no per-field change pays at this budget: the uniform table has the best selection AUC");
    else if (choice == 0)
        snprintf(reason, sizeof reason,
                 "no per-field change pays at this budget: the best, %s, beats the uniform table by %+.4f, less than "
                 "two standard errors (%.4f)",
                 cs[best].label, cs[best].mean - cs[0].mean, 2 * sel_se);
    else
        snprintf(reason, sizeof reason, "%s beats the uniform table by %+.4f on the selection rows (two standard errors %.4f)",
                 ch->label, ch->mean - cs[0].mean, 2 * sel_se);

    char budget_s[64];
    if (budget > 1) snprintf(budget_s, sizeof budget_s, "%.0f", budget);
    else snprintf(budget_s, sizeof budget_s, "%.6g", budget);
    const unsigned long long sel_train = sr.train_rows, sel_valid = sr.valid.rows;
    if (!json) {
        printf("rows: selection trains on %llu, scores on the next %llu; %s\n", sel_train, sel_valid,
               p.valid_path ? "--verify scores on the --valid file" : "--verify trains on both and scores on the rest");
        printf("probe: %s, full table, dim %d, selection AUC %.4f\n", q.model, D, pr.valid.auc);
        printf("dims at each energy level, of the probe's rows (e) and of their change in training (c):\n");
        printf("%-20s %8s %7s %4s", "field", "rows", "erank", "k90");
        for (int src = 1; src <= 1 + with_change; src++)
            for (int e = 0; e < n_energies; e++) {
                char h[16];
                snprintf(h, sizeof h, "%c%g", src == 1 ? 'e' : 'c', energies[e]);
                printf(" %5s", h);
            }
        putchar('\n');
        for (int f = 0; f < F; f++) {
            printf("%-20s %8zu %7.2f %4d", fa[f].name, fa[f].rows, fa[f].erank, fa[f].k90);
            for (int e = 0; e < n_energies; e++) printf(" %5d", fa[f].dims[e]);
            for (int e = 0; with_change && e < n_energies; e++) printf(" %5d", fa[f].cdims[e]);
            putchar('\n');
        }
        printf("candidates at budget %s, selection seeds %d (mean AUC, sd):\n", budget_s, n_sel);
        for (int c = 0; c < nc; c++) {
            if (cs[c].error[0]) printf("  %-14s mean dim %5.2f  not trained: %s\n", cs[c].label, cs[c].mean_dim, cs[c].error);
            else
                printf("  %-14s mean dim %5.2f  %.4f (%.4f)%s\n", cs[c].label, cs[c].mean_dim, cs[c].mean, cs[c].sd,
                       c == choice ? "  <- advice" : "");
        }
        printf("advice: %s\n  embstore train %s --model %s --dim %d --storage %s%s%s --budget %s\n", reason, file, q.model, D,
               ch->storage, ch->opts[0] ? " --storage-opts " : "", ch->opts, budget_s);
    }

    /* 5. verify: train on [0, b), score on [b, N) (or --valid) */
    double adv[MAX_SEEDS], uni[MAX_SEEDS], alt[MAX_SEEDS];
    double am = 0, asd = 0, um = 0, usd = 0, xm = 0, xsd = 0, se = 0;
    int have_alt = 0;
    const char *verdict = "";
    es_train_result vr;
    memset(&vr, 0, sizeof vr);
    if (verify) {
        candidate tmpc;
        if (train_candidate(&p, &cs[0], budget, seeds, n_seeds, uni, &vr, quiet, "verify") != 0) {
            int r = cli_fail(cmd, "verify, the uniform table: %s", cs[0].error);
            free(fa);
            free(cs);
            return r;
        }
        if (choice == 0) {
            memcpy(adv, uni, sizeof adv);
        } else {
            tmpc = *ch;
            if (train_candidate(&p, &tmpc, budget, seeds, n_seeds, adv, NULL, quiet, "verify") != 0) {
                int r = cli_fail(cmd, "verify, %s: %s", ch->label, tmpc.error);
                free(fa);
                free(cs);
                return r;
            }
        }
        if (choice == 0 && best_pf >= 0) {
            tmpc = cs[best_pf];
            have_alt = train_candidate(&p, &tmpc, budget, seeds, n_seeds, alt, NULL, quiet, "verify") == 0;
            if (have_alt) mean_sd(alt, n_seeds, &xm, &xsd);
        }
        mean_sd(adv, n_seeds, &am, &asd);
        mean_sd(uni, n_seeds, &um, &usd);
        verdict = choice == 0 ? "tie (the advice is the uniform table)" : verdict_of(am, asd, um, usd, n_seeds, "the advice wins", &se);
        if (!json) {
            printf("verify at budget %s on %llu rows not used by the selection, seeds %d: advised %.4f (sd %.4f), "
                   "uniform hash %.4f (sd %.4f): %s (diff %+.4f)\n",
                   budget_s, (unsigned long long)vr.valid.rows, n_seeds, am, asd, um, usd, verdict, am - um);
            if (have_alt) {
                double xse;
                printf("  the best per-field candidate, %s (not advised): %.4f (sd %.4f): %s (diff %+.4f)\n", cs[best_pf].label,
                       xm, xsd, verdict_of(xm, xsd, um, usd, n_seeds, "the candidate wins", &xse), xm - um);
            }
        }
    }
    if (json) {
        printf("{\"data\":\"%s\",\"model\":\"%s\",\"dim\":%d,\"budget\":%.9g,\"energies\":", file, q.model, D, budget);
        json_nums(energies, n_energies);
        printf(",\"probe_auc\":%.6f,\"rows\":{\"select_train\":%llu,\"select_valid\":%llu", pr.valid.auc, sel_train, sel_valid);
        if (verify) printf(",\"verify_train\":%llu,\"verify_valid\":%llu", (unsigned long long)vr.train_rows, (unsigned long long)vr.valid.rows);
        printf("},\"fields\":[");
        for (int f = 0; f < F; f++) {
            const int d = ch->src == 0 ? D : ch->src == 1 ? fa[f].dims[ch->e] : fa[f].cdims[ch->e];
            printf("%s{\"name\":\"%s\",\"rows\":%zu,\"erank\":%.4f,\"k90\":%d,\"dims\":[", f ? "," : "", fa[f].name, fa[f].rows,
                   fa[f].erank, fa[f].k90);
            for (int e = 0; e < n_energies; e++) printf("%s%d", e ? "," : "", fa[f].dims[e]);
            printf("]");
            if (with_change) {
                printf(",\"change_erank\":%.4f,\"change_dims\":[", fa[f].cerank);
                for (int e = 0; e < n_energies; e++) printf("%s%d", e ? "," : "", fa[f].cdims[e]);
                printf("]");
            }
            printf(",\"dim\":%d}", d);
        }
        printf("],\"select_seeds\":%d,\"candidates\":[", n_sel);
        for (int c = 0; c < nc; c++) {
            printf("%s{\"label\":\"%s\",\"source\":\"%s\",\"storage\":\"%s\",\"storage_opts\":\"%s\",\"energy\":%g,"
                   "\"mean_dim\":%.4f",
                   c ? "," : "", cs[c].label, cs[c].src == 0 ? "uniform" : cs[c].src == 1 ? "rows" : "change", cs[c].storage,
                   cs[c].opts, cs[c].energy, cs[c].mean_dim);
            if (cs[c].error[0]) {
                printf(",\"error\":\"");
                for (const char *s = cs[c].error; *s; s++)
                    if (*s == '"' || *s == '\\') printf("\\%c", *s);
                    else if ((unsigned char)*s >= 0x20) putchar(*s);
                printf("\"}");
            } else {
                printf(",\"select_auc\":");
                json_nums(cs[c].auc, n_sel);
                printf(",\"select_mean\":%.6f,\"select_sd\":%.6f}", cs[c].mean, cs[c].sd);
            }
        }
        printf("],\"best\":\"%s\",\"choice\":\"%s\",\"uniform\":%s,\"reason\":\"%s\",\"storage\":\"%s\",\"storage_opts\":\"%s\"",
               cs[best].label, ch->label, choice == 0 ? "true" : "false", reason, ch->storage, ch->opts);
        if (verify) {
            printf(",\"verify\":{\"seeds\":%d,\"advised_auc\":", n_seeds);
            json_nums(adv, n_seeds);
            printf(",\"uniform_auc\":");
            json_nums(uni, n_seeds);
            printf(",\"advised_mean\":%.6f,\"uniform_mean\":%.6f,\"verdict\":\"%s\"", am, um, verdict);
            if (have_alt) {
                double xse;
                printf(",\"best_per_field\":{\"label\":\"%s\",\"auc\":", cs[best_pf].label);
                json_nums(alt, n_seeds);
                printf(",\"mean\":%.6f,\"verdict\":\"%s\"}", xm, verdict_of(xm, xsd, um, usd, n_seeds, "the candidate wins", &xse));
            }
            putchar('}');
        }
        printf("}\n");
    }
    free(fa);
    free(cs);
    return 0;
}
