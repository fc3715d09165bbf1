/*
 * cmd_bench_storage.c — `embstore bench-storage`: sweep storage methods x
 * budgets x share modes x seeds on one dataset and model, and answer
 * "which method should I use at this budget?".
 *
 * Every cell is one es_train run (same data, split, model and
 * hyper-parameters; only the storage changes).  Results go to OUTDIR:
 *   cells.csv     one line per finished cell (rewritten atomically after
 *                 each cell, so an interrupted sweep resumes where it
 *                 stopped: finished cells are never recomputed, failed
 *                 ones are tried again)
 *   config.txt    what the cells were run with: every setting that changes
 *                 a result and the data files' identity (es_train_describe
 *                 without the sweep axes).  A cell is keyed on it plus
 *                 (method, share, budget, seed): a rerun whose config
 *                 differs refuses to mix its cells with the old ones.
 *   lookup.csv    lookup speed of each method (lookups/s, ratio to full)
 *   results.json  cells + aggregates (mean/std over seeds) + Pareto flags
 *   pareto.svg    AUC against bytes (log scale), Pareto front marked;
 *                 pareto.png too when rsvg-convert or ImageMagick is present
 *   summary.md    aggregate table, best method per budget (saying when the
 *                 lead is within seed noise), Pareto set, lookup speeds
 */
#include "cli.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAX_METHODS 64
#define MAX_BUDGETS 32
#define MAX_SEEDS 32
#define ITEM_LEN 64 /* a --methods, --budgets or --seeds entry */

typedef struct {
    char method[ITEM_LEN];
    int share;
    char budget[24];     /* as given: "1/16", "0.25", or "full" */
    double frac;         /* budget as a fraction of the full table */
    int seed;
    double bytes, full_bytes, auc, logloss, train_rps, predict_rps;
    int epochs;
    char status[160];    /* "ok" or the error */
} cell;

typedef struct {
    char method[ITEM_LEN];
    int share;
    char budget[24];
    double frac, bytes, auc_mean, auc_std, auc_min, auc_max, logloss_mean, train_rps;
    int n;
    int pareto;
} agg;

typedef struct {
    cell *c;
    int n, cap;
} cell_list;

static const char help[] =
    "usage: embstore bench-storage FILE [options]\n"
    "\n"
    "Sweep embedding storage methods x budgets x share modes x seeds on one dataset\n"
    "and model (each cell is a full train + evaluation), then write the results, a\n"
    "Pareto plot of AUC against bytes and a recommendation table to OUTDIR.\n"
    "A finished cell is never recomputed: rerun the same command to resume.  Cells are\n"
    "reused only when the model, training and input settings and the data file (size,\n"
    "checksum of its first MiB) match the run that made them (OUTDIR/config.txt; the\n"
    "sweep lists, --name and --threads may change); otherwise the command stops and\n"
    "lists the differences: pick another --out, or add --fresh.\n"
    "\n"
    "sweep:\n"
    "  --methods a,b,..      methods to compare (default: every registered method and\n"
    "                        matryoshka); METHOD@P\n"
    "                        trains METHOD's rows at precision P (fp16 int16 int8 int4 int2),\n"
    "                        METHOD@P/alpt by ALPT instead of QAT, e.g. unified@int4,qr@int8;\n"
    "                        METHOD:k=v;k=v gives that entry its own --storage-opts;\n"
    "                        `matryoshka`: one hash table per seed trained with the nested\n"
    "                        loss over the prefixes dim x b / (largest b), each budget b's\n"
    "                        cell the table cut to its prefix (one training, every size)\n"
    "  --budgets a,b,..      budgets as fractions of the full table\n"
    "                        (default 1/4,1/16,1/64,1/256,1/1024); `full` runs once at its own size\n"
    "  --seeds a,b,..        seeds (default 1,2,3)\n"
    "  --share none|fields|both  parameter sharing across fields (default none)\n"
    "  --out DIR             output directory (default bench-storage-out)\n"
    "  --name LABEL          dataset label for tables and plots (default: file name)\n"
    "  --no-lookup-speed     skip the lookup-speed measurement\n"
    "  --fresh               discard the cells of an earlier run in OUTDIR and start over\n"
    "model and training (same meaning as in `embstore train`):\n"
    "  --model M --dim K --bottom L --top L --cross N --epochs E --batch N --lr X\n"
    "  --emb-lr X --optim O --emb-optim O --emb-l2 X --emb-l2-freq P --ftrl-alpha X --ftrl-beta X\n"
    "  --ftrl-l1 X --ftrl-l2 X --chunks K --subtables T --min-count N\n"
    "                        (--chunks, --subtables, --min-count go to the methods that take them)\n"
    "  --storage-opts S --threads T --valid FILE | --valid-frac F (default 0.2) --max-rows N\n" CLI_READER_HELP
    "  --quiet               no progress bar\n"
    "\n"
    "train_rows_per_s is the training rate of the model as saved; for a multi-stage method\n"
    "(autodim) the search and derive stages count in its time (the retrain's rate divided\n"
    "by 1 + their seconds / the retrain's), so a search is never free in the table.\n"
    "\n"
    "example (the sweep in docs/benchmarks.md):\n"
    "  embstore bench-storage data/criteo_kaggle_train_first10k.tsv --out bench/out/criteo\n";

/* ---- small helpers ------------------------------------------------------------- */

static int split_list(const char *s, char out[][ITEM_LEN], int max) {
    int n = 0;
    while (*s && n < max) {
        const char *e = strchr(s, ',');
        size_t len = e ? (size_t)(e - s) : strlen(s);
        if (len == 0 || len >= ITEM_LEN) return -1;
        memcpy(out[n], s, len);
        out[n][len] = 0;
        n++;
        s = e ? e + 1 : s + len;
    }
    return n;
}

static void sanitize(char *s) {
    for (; *s; s++)
        if (*s == ',' || *s == '\n' || *s == '\r' || *s == '"') *s = ';';
}

static const char *share_name(int s) { return s ? "fields" : "none"; }

/* ---- results file (resume) ------------------------------------------------------ */

static const char csv_header[] =
    "dataset,model,method,share,budget,budget_frac,bytes,full_bytes,auc,logloss,train_rows_per_s,predict_rows_per_s,epochs,seed,status";

static int find_cell(const cell_list *l, const char *method, int share, const char *budget, int seed) {
    for (int i = 0; i < l->n; i++)
        if (!strcmp(l->c[i].method, method) && l->c[i].share == share && !strcmp(l->c[i].budget, budget) && l->c[i].seed == seed)
            return i;
    return -1;
}

static int push_cell(cell_list *l, const cell *c) {
    if (l->n == l->cap) {
        int cap = l->cap ? 2 * l->cap : 64;
        cell *nc = realloc(l->c, (size_t)cap * sizeof *nc);
        if (!nc) return -1;
        l->c = nc;
        l->cap = cap;
    }
    l->c[l->n++] = *c;
    return 0;
}

static void load_cells(const char *path, cell_list *l) {
    FILE *f = fopen(path, "r");
    if (!f) return;
    char line[1024];
    if (!fgets(line, sizeof line, f)) {
        fclose(f);
        return;
    }
    while (fgets(line, sizeof line, f)) {
        cell c;
        memset(&c, 0, sizeof c);
        char ds[128], model[32], share[16];
        int k = sscanf(line, "%127[^,],%31[^,],%63[^,],%15[^,],%23[^,],%lf,%lf,%lf,%lf,%lf,%lf,%lf,%d,%d,%159[^\n]", ds, model,
                       c.method, share, c.budget, &c.frac, &c.bytes, &c.full_bytes, &c.auc, &c.logloss, &c.train_rps,
                       &c.predict_rps, &c.epochs, &c.seed, c.status);
        if (k != 15) continue;
        c.share = !strcmp(share, "fields");
        if (strcmp(c.status, "ok") != 0) continue; /* failed cells are retried */
        push_cell(l, &c);
    }
    fclose(f);
}

static int save_cells(const char *path, const cell_list *l, const char *ds, const char *model) {
    char tmp[4200];
    int slot;
    FILE *f = cli_open_tmp(path, tmp, sizeof tmp, &slot);
    if (!f) return -1;
    fprintf(f, "%s\n", csv_header);
    for (int i = 0; i < l->n; i++) {
        const cell *c = &l->c[i];
        fprintf(f, "%s,%s,%s,%s,%s,%.9g,%.0f,%.0f,%.6f,%.6f,%.1f,%.1f,%d,%d,%s\n", ds, model, c->method, share_name(c->share),
                c->budget, c->frac, c->bytes, c->full_bytes, c->auc, c->logloss, c->train_rps, c->predict_rps, c->epochs, c->seed,
                c->status);
    }
    return cli_commit_tmp(f, tmp, path, slot);
}

/* ---- the run's key ------------------------------------------------------------------ */

/* The storage options of one cell: the run's, less the method knobs
 * (min_count, chunks, subtables: the CLI flags) this method does not take,
 * plus share=0|1 for the methods with a share option. */
static void cell_opts(const char *method, const char *opts, int share, char *buf, size_t cap) {
    static const char *const knobs[] = {"min_count", "chunks", "subtables", "share"};
    size_t o = 0;
    buf[0] = 0;
    for (const char *p = opts ? opts : ""; *p;) {
        const char *end = strchr(p, ',');
        if (!end) end = p + strlen(p);
        const char *eq = memchr(p, '=', (size_t)(end - p));
        size_t klen = eq ? (size_t)(eq - p) : (size_t)(end - p);
        int keep = 1;
        for (size_t k = 0; k < sizeof knobs / sizeof knobs[0]; k++)
            if (strlen(knobs[k]) == klen && !strncmp(p, knobs[k], klen)) {
                char key[16];
                snprintf(key, sizeof key, "%s", knobs[k]);
                keep = k < 3 && es_storage_has_option(method, key) == 1; /* share comes from the sweep */
            }
        if (keep && end > p && o < cap) o += (size_t)snprintf(buf + o, cap - o, "%s%.*s", o ? "," : "", (int)(end - p), p);
        p = *end ? end + 1 : end;
    }
    if (es_storage_has_option(method, "share") == 1 && o < cap) snprintf(buf + o, cap - o, "%sshare=%d", o ? "," : "", share);
}

/* The sweep entry that is not a storage method: one `hash` table trained
 * with Matryoshka's nested loss and served at a prefix per budget
 * (matryoshka_cells). */
#define MATRYOSHKA "matryoshka"

/* A method with one layout (full; methods without a share option, e.g.
 * unified, which always shares) runs in the first share mode swept only. */
static int one_layout(const char *method) {
    if (!strcmp(method, MATRYOSHKA)) method = "hash"; /* the table it trains */
    return !strcmp(method, "full") || es_storage_has_option(method, "share") != 1;
}

/* A sweep entry "METHOD[@PRECISION[/qat|alpt]]": the registered method, and
 * the precision its rows train and serve at (NULL: fp32) and how
 * (NULL: qat, the default of --precision). */
typedef struct {
    char base[32], prec[8], mode[8], opts[ITEM_LEN];
} method_spec;

/* "METHOD[@PRECISION[/qat|alpt]][:k=v;k=v]": the options after ':' (';'
 * between them, as ',' separates the sweep's methods) go to this entry
 * only, e.g. pep:steps=24;interval=4. */
static int parse_spec(const char *spec, method_spec *m) {
    memset(m, 0, sizeof *m);
    char head[64];
    const char *colon = strchr(spec, ':');
    size_t hl = colon ? (size_t)(colon - spec) : strlen(spec);
    if (hl >= sizeof head) return -1;
    memcpy(head, spec, hl);
    head[hl] = 0;
    if (colon) {
        if (!colon[1] || strlen(colon + 1) >= sizeof m->opts) return -1;
        snprintf(m->opts, sizeof m->opts, "%s", colon + 1);
        for (char *c = m->opts; *c; c++)
            if (*c == ';') *c = ',';
    }
    spec = head;
    const char *at = strchr(spec, '@');
    size_t bl = at ? (size_t)(at - spec) : strlen(spec);
    if (bl == 0 || bl >= sizeof m->base) return -1;
    memcpy(m->base, spec, bl);
    if (!at) return 0;
    const char *sl = strchr(at + 1, '/');
    size_t pl = sl ? (size_t)(sl - at - 1) : strlen(at + 1);
    if (pl == 0 || pl >= sizeof m->prec) return -1;
    memcpy(m->prec, at + 1, pl);
    if (sl) {
        if (strlen(sl + 1) == 0 || strlen(sl + 1) >= sizeof m->mode) return -1;
        snprintf(m->mode, sizeof m->mode, "%s", sl + 1);
        if (strcmp(m->mode, "qat") && strcmp(m->mode, "alpt")) return -1;
    }
    static const char *const precs[] = {"fp32", "fp16", "int16", "int8", "int4", "int2"};
    int ok = 0;
    for (size_t i = 0; i < sizeof precs / sizeof precs[0]; i++) ok |= !strcmp(m->prec, precs[i]);
    return ok ? 0 : -1;
}

/* cell_opts of an entry, with the entry's own options after the run's. */
static void spec_opts(const method_spec *m, const char *opts, int share, char *buf, size_t cap) {
    cell_opts(m->base, opts, share, buf, cap);
    size_t o = strlen(buf);
    if (m->opts[0] && o < cap) snprintf(buf + o, cap - o, "%s%s", o ? "," : "", m->opts);
}

/* The two families the summary compares: methods that compress inside a
 * row (fewer bits per value, codebooks, pruning; any method at a
 * precision below fp32) and those that compress across rows (hashing,
 * composition, generation: fewer rows shared by more values). */
static int intra_row(const char *spec) {
    static const char *const names[] = {"dpq", "mgqe", "pep", "deeplight", "dedup", MATRYOSHKA};
    method_spec m;
    if (parse_spec(spec, &m) != 0) return 0;
    if (m.prec[0] && strcmp(m.prec, "fp32")) return 1;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (!strcmp(m.base, names[i])) return 1;
    return 0;
}

/* Description of the run without the sweep axes (storage, budget, share,
 * seed vary per cell and are in each cell's own key). */
static int run_config(const es_train_params *p, char *buf, size_t cap, es_err *err) {
    es_train_params q = *p;
    q.storage = "";
    q.budget = 0;
    q.seed = 0;
    int rc = es_train_describe(&q, buf, cap, err);
    if (rc != 0) return rc;
    static const char *axes[] = {"storage=", "budget=", "share=", "seed="};
    char *w = buf;
    for (const char *r = buf; *r;) {
        const char *nl = strchr(r, '\n');
        size_t len = nl ? (size_t)(nl - r) + 1 : strlen(r);
        int skip = 0;
        for (size_t i = 0; i < sizeof axes / sizeof axes[0]; i++) skip |= !strncmp(r, axes[i], strlen(axes[i]));
        if (!skip) {
            memmove(w, r, len);
            w += len;
        }
        r += len;
    }
    *w = 0;
    return 0;
}

/* config.txt without its comment lines ("" when absent). */
static void load_config(const char *path, char *buf, size_t cap) {
    buf[0] = 0;
    FILE *f = fopen(path, "r");
    if (!f) return;
    size_t o = 0;
    char line[2048];
    while (fgets(line, sizeof line, f)) {
        if (line[0] == '#') continue;
        size_t n = strlen(line);
        if (o + n + 1 > cap) break;
        memcpy(buf + o, line, n + 1);
        o += n;
    }
    fclose(f);
}

/* ---- aggregation, Pareto, recommendation --------------------------------------------- */

static int aggregate(const cell_list *l, agg *out, int max) {
    int n = 0;
    for (int i = 0; i < l->n; i++) {
        const cell *c = &l->c[i];
        if (strcmp(c->status, "ok") != 0 || !isfinite(c->auc)) continue;
        int k;
        for (k = 0; k < n; k++)
            if (!strcmp(out[k].method, c->method) && out[k].share == c->share && !strcmp(out[k].budget, c->budget)) break;
        if (k == n) {
            if (n == max) continue;
            memset(&out[n], 0, sizeof out[n]);
            snprintf(out[n].method, sizeof out[n].method, "%s", c->method);
            out[n].share = c->share;
            snprintf(out[n].budget, sizeof out[n].budget, "%s", c->budget);
            out[n].frac = c->frac;
            out[n].auc_min = INFINITY;
            out[n].auc_max = -INFINITY;
            n++;
        }
        agg *a = &out[k];
        a->n++;
        a->bytes += c->bytes;
        a->auc_mean += c->auc;
        a->auc_std += c->auc * c->auc;
        a->logloss_mean += c->logloss;
        a->train_rps += c->train_rps;
        if (c->auc < a->auc_min) a->auc_min = c->auc;
        if (c->auc > a->auc_max) a->auc_max = c->auc;
    }
    for (int k = 0; k < n; k++) {
        agg *a = &out[k];
        a->bytes /= a->n;
        a->auc_mean /= a->n;
        a->logloss_mean /= a->n;
        a->train_rps /= a->n;
        double var = a->n > 1 ? (a->auc_std - a->n * a->auc_mean * a->auc_mean) / (a->n - 1) : 0;
        a->auc_std = var > 0 ? sqrt(var) : 0;
    }
    /* Pareto front: no other point has fewer-or-equal bytes and higher-or-
     * equal mean AUC with one of them strict. */
    for (int k = 0; k < n; k++) {
        out[k].pareto = 1;
        for (int j = 0; j < n && out[k].pareto; j++) {
            if (j == k) continue;
            if (out[j].bytes <= out[k].bytes && out[j].auc_mean >= out[k].auc_mean &&
                (out[j].bytes < out[k].bytes || out[j].auc_mean > out[k].auc_mean))
                out[k].pareto = 0;
        }
    }
    return n;
}

static int cmp_frac_desc(const void *a, const void *b) {
    double x = ((const agg *)a)->frac, y = ((const agg *)b)->frac;
    return (x < y) - (x > y);
}

/* ---- SVG plot -------------------------------------------------------------------------- */

static const char *palette[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
                                "#7f7f7f", "#bcbd22", "#17becf", "#000000", "#aec7e8", "#ffbb78", "#98df8a",
                                "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#dbdb8d", "#9edae5"};

static int write_svg(const char *path, const agg *a, int n, const char *title) {
    char tmp[4200];
    int slot;
    FILE *f = cli_open_tmp(path, tmp, sizeof tmp, &slot);
    if (!f) return -1;
    const double W = 1000, H = 560, L = 80, R = 320, T = 50, B = 60;
    double xmin = INFINITY, xmax = -INFINITY, ymin = INFINITY, ymax = -INFINITY;
    for (int i = 0; i < n; i++) {
        double x = log10(a[i].bytes > 1 ? a[i].bytes : 1);
        if (x < xmin) xmin = x;
        if (x > xmax) xmax = x;
        if (a[i].auc_min < ymin) ymin = a[i].auc_min;
        if (a[i].auc_max > ymax) ymax = a[i].auc_max;
    }
    if (n == 0) xmin = 0, xmax = 1, ymin = 0.5, ymax = 1;
    xmin = floor(xmin);
    xmax = ceil(xmax);
    if (xmax <= xmin) xmax = xmin + 1;
    double pad = (ymax - ymin) * 0.05 + 1e-3;
    ymin -= pad;
    ymax += pad;
#define PX(v) (L + ((v) - xmin) / (xmax - xmin) * (W - L - R))
#define PY(v) (H - B - ((v) - ymin) / (ymax - ymin) * (H - T - B))
    fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" font-family=\"sans-serif\" font-size=\"12\">\n",
            W, H);
    fprintf(f, "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n");
    fprintf(f, "<text x=\"%.0f\" y=\"24\" font-size=\"15\" text-anchor=\"middle\">%s</text>\n", (W - R + L) / 2, title);
    /* axes and grid */
    fprintf(f, "<g stroke=\"#ccc\">\n");
    for (double x = xmin; x <= xmax + 1e-9; x += 1)
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"/>\n", PX(x), (double)T, PX(x), H - B);
    double ystep = (ymax - ymin) > 0.2 ? 0.05 : (ymax - ymin) > 0.05 ? 0.01 : 0.005;
    for (double y = ceil(ymin / ystep) * ystep; y <= ymax; y += ystep)
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"/>\n", L, PY(y), W - R, PY(y));
    fprintf(f, "</g>\n");
    for (double x = xmin; x <= xmax + 1e-9; x += 1)
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">1e%.0f</text>\n", PX(x), H - B + 18, x);
    for (double y = ceil(ymin / ystep) * ystep; y <= ymax; y += ystep)
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%.3f</text>\n", L - 6, PY(y) + 4, y);
    fprintf(f, "<text x=\"%.0f\" y=\"%.0f\" text-anchor=\"middle\">embedding bytes (log scale)</text>\n", (W - R + L) / 2, H - 18);
    fprintf(f, "<text transform=\"translate(18,%.0f) rotate(-90)\" text-anchor=\"middle\">test AUC (mean over seeds; bars: min-max)</text>\n",
            (H - B + T) / 2);
    fprintf(f, "<rect x=\"%.0f\" y=\"%.0f\" width=\"%.0f\" height=\"%.0f\" fill=\"none\" stroke=\"#333\"/>\n", L, T, W - L - R, H - T - B);
    /* one series per (method, share): sorted by bytes, joined by a line */
    int legend = 0;
    int done[1024] = {0};
    for (int i = 0; i < n && i < 1024; i++) {
        if (done[i]) continue;
        const char *color = palette[legend % (int)(sizeof palette / sizeof palette[0])];
        int idx[64], m = 0;
        for (int j = i; j < n && m < 64; j++)
            if (!done[j] && !strcmp(a[j].method, a[i].method) && a[j].share == a[i].share) {
                idx[m++] = j;
                done[j] = 1;
            }
        for (int x = 1; x < m; x++)
            for (int y = x; y > 0 && a[idx[y]].bytes < a[idx[y - 1]].bytes; y--) {
                int t = idx[y];
                idx[y] = idx[y - 1];
                idx[y - 1] = t;
            }
        fprintf(f, "<g class=\"series\" data-method=\"%s\" data-share=\"%s\">\n", a[i].method, share_name(a[i].share));
        if (m > 1) {
            fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"1.5\"%s points=\"", color,
                    a[i].share ? " stroke-dasharray=\"5,3\"" : "");
            for (int k = 0; k < m; k++) fprintf(f, "%.1f,%.1f ", PX(log10(a[idx[k]].bytes)), PY(a[idx[k]].auc_mean));
            fprintf(f, "\"/>\n");
        }
        for (int k = 0; k < m; k++) {
            const agg *p = &a[idx[k]];
            double px = PX(log10(p->bytes));
            fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\"/>\n", px, PY(p->auc_min), px, PY(p->auc_max),
                    color);
            if (intra_row(p->method)) {
                /* the intra-row family: squares */
                const double h = p->pareto ? 6 : 4;
                fprintf(f,
                        "<rect class=\"point intra%s\" data-method=\"%s\" data-share=\"%s\" data-budget=\"%s\" data-bytes=\"%.0f\" "
                        "data-auc=\"%.6f\" x=\"%.1f\" y=\"%.1f\" width=\"%.0f\" height=\"%.0f\" fill=\"%s\"%s/>\n",
                        p->pareto ? " pareto" : "", p->method, share_name(p->share), p->budget, p->bytes, p->auc_mean, px - h,
                        PY(p->auc_mean) - h, 2 * h, 2 * h, color, p->pareto ? " stroke=\"black\" stroke-width=\"2\"" : "");
            } else {
                fprintf(f,
                        "<circle class=\"point%s\" data-method=\"%s\" data-share=\"%s\" data-budget=\"%s\" data-bytes=\"%.0f\" "
                        "data-auc=\"%.6f\" cx=\"%.1f\" cy=\"%.1f\" r=\"%s\" fill=\"%s\"%s/>\n",
                        p->pareto ? " pareto" : "", p->method, share_name(p->share), p->budget, p->bytes, p->auc_mean, px,
                        PY(p->auc_mean), p->pareto ? "6" : "4", color, p->pareto ? " stroke=\"black\" stroke-width=\"2\"" : "");
            }
        }
        fprintf(f, "</g>\n");
        double ly = T + 10 + 18 * legend;
        fprintf(f, "<line x1=\"%.0f\" y1=\"%.1f\" x2=\"%.0f\" y2=\"%.1f\" stroke=\"%s\" stroke-width=\"2\"%s/>\n", W - R + 15, ly,
                W - R + 40, ly, color, a[i].share ? " stroke-dasharray=\"5,3\"" : "");
        fprintf(f, "<text x=\"%.0f\" y=\"%.1f\">%s%s</text>\n", W - R + 46, ly + 4, a[i].method, a[i].share ? " (shared)" : "");
        legend++;
    }
    double ly = T + 10 + 18 * legend + 8;
    fprintf(f, "<circle cx=\"%.0f\" cy=\"%.1f\" r=\"6\" fill=\"white\" stroke=\"black\" stroke-width=\"2\"/>\n", W - R + 27, ly);
    fprintf(f, "<text x=\"%.0f\" y=\"%.1f\">Pareto front</text>\n", W - R + 46, ly + 4);
    ly += 20;
    fprintf(f, "<circle cx=\"%.0f\" cy=\"%.1f\" r=\"4\" fill=\"#888\"/>\n", W - R + 27, ly);
    fprintf(f, "<text x=\"%.0f\" y=\"%.1f\">across rows (hashing family)</text>\n", W - R + 46, ly + 4);
    ly += 18;
    fprintf(f, "<rect x=\"%.0f\" y=\"%.1f\" width=\"8\" height=\"8\" fill=\"#888\"/>\n", W - R + 23, ly - 4);
    fprintf(f, "<text x=\"%.0f\" y=\"%.1f\">inside rows (precision, codebooks, pruning)</text>\n", W - R + 46, ly + 4);
    fprintf(f, "</svg>\n");
#undef PX
#undef PY
    return cli_commit_tmp(f, tmp, path, slot);
}

/* ---- summary ------------------------------------------------------------------------------- */

typedef struct {
    char method[ITEM_LEN];
    int share;
    double lps, bytes;
    char status[120];
} speed;

static void write_summary(FILE *f, const char *ds, const char *model, const agg *a, int n, const speed *sp, int nsp, int n_seeds,
                          int epochs, const cell_list *cl) {
    agg *s = malloc(sizeof(agg) * (size_t)(n ? n : 1));
    if (!s) return;
    memcpy(s, a, sizeof(agg) * (size_t)n);
    qsort(s, (size_t)n, sizeof *s, cmp_frac_desc);
    fprintf(f, "### %s, model %s, %d epoch(s), %d seed(s)\n\n", ds, model, epochs, n_seeds);
    fprintf(f, "| method | share | budget | bytes | AUC mean | AUC std | AUC min..max | logloss | train rows/s | Pareto |\n");
    fprintf(f, "|---|---|---|---:|---:|---:|---|---:|---:|:-:|\n");
    for (int i = 0; i < n; i++)
        fprintf(f, "| %s | %s | %s | %.0f | %.4f | %.4f | %.4f..%.4f | %.4f | %.0f | %s |\n", s[i].method, share_name(s[i].share),
                s[i].budget, s[i].bytes, s[i].auc_mean, s[i].auc_std, s[i].auc_min, s[i].auc_max, s[i].logloss_mean, s[i].train_rps,
                s[i].pareto ? "yes" : "");
    fprintf(f, "\n**Best method per budget** (highest mean AUC; \"within noise\" when the runner-up's mean is closer than "
               "twice the standard error of the difference):\n\n");
    fprintf(f, "| budget | best | AUC | runner-up | AUC | verdict |\n|---|---|---:|---|---:|---|\n");
    for (int i = 0; i < n;) {
        int j = i;
        while (j < n && !strcmp(s[j].budget, s[i].budget)) j++;
        int best = -1, second = -1;
        for (int k = i; k < j; k++) {
            if (best < 0 || s[k].auc_mean > s[best].auc_mean) {
                second = best;
                best = k;
            } else if (second < 0 || s[k].auc_mean > s[second].auc_mean) {
                second = k;
            }
        }
        if (best >= 0) {
            if (second < 0) {
                fprintf(f, "| %s | %s (%s) | %.4f | - | - | only method |\n", s[best].budget, s[best].method, share_name(s[best].share),
                        s[best].auc_mean);
            } else {
                double se = sqrt(s[best].auc_std * s[best].auc_std / s[best].n + s[second].auc_std * s[second].auc_std / s[second].n);
                double d = s[best].auc_mean - s[second].auc_mean;
                const char *verdict = (s[best].n < 2 || s[second].n < 2) ? "one seed: noise unknown"
                                      : d < 2 * se                      ? "within seed noise"
                                                                         : "ahead beyond seed noise";
                fprintf(f, "| %s | %s (%s) | %.4f | %s (%s) | %.4f | %s (diff %.4f, 2se %.4f) |\n", s[best].budget, s[best].method,
                        share_name(s[best].share), s[best].auc_mean, s[second].method, share_name(s[second].share), s[second].auc_mean,
                        verdict, d, 2 * se);
            }
        }
        i = j;
    }
    /* the two families per budget, when the sweep has both */
    int has[2] = {0, 0};
    for (int i = 0; i < n; i++) has[intra_row(s[i].method)] = 1;
    if (has[0] && has[1]) {
        fprintf(f, "\n**Inside rows vs across rows** (best of each family per budget: methods at a precision below fp32, "
                   "codebooks and pruning against hashing, composition and generation; verdict as above):\n\n");
        fprintf(f, "| budget | best inside rows | AUC | best across rows | AUC | verdict |\n|---|---|---:|---|---:|---|\n");
        for (int i = 0; i < n;) {
            int j = i;
            while (j < n && !strcmp(s[j].budget, s[i].budget)) j++;
            int b[2] = {-1, -1};
            for (int k = i; k < j; k++) {
                int fam = intra_row(s[k].method);
                if (b[fam] < 0 || s[k].auc_mean > s[b[fam]].auc_mean) b[fam] = k;
            }
            if (b[0] >= 0 && b[1] >= 0) {
                const agg *x = &s[b[1]], *y = &s[b[0]];
                double se = sqrt(x->auc_std * x->auc_std / x->n + y->auc_std * y->auc_std / y->n);
                double d = x->auc_mean - y->auc_mean;
                const char *verdict = (x->n < 2 || y->n < 2) ? "one seed: noise unknown"
                                      : fabs(d) < 2 * se     ? "within seed noise"
                                      : d > 0                ? "inside rows ahead"
                                                             : "across rows ahead";
                fprintf(f, "| %s | %s (%s) | %.4f | %s (%s) | %.4f | %s (diff %+.4f, 2se %.4f) |\n", x->budget, x->method,
                        share_name(x->share), x->auc_mean, y->method, share_name(y->share), y->auc_mean, verdict, d, 2 * se);
            }
            i = j;
        }
    }
    fprintf(f, "\n**Pareto set** (no other point has fewer bytes and higher mean AUC): ");
    int first = 1;
    for (int i = 0; i < n; i++)
        if (s[i].pareto) {
            fprintf(f, "%s%s/%s@%s", first ? "" : ", ", s[i].method, share_name(s[i].share), s[i].budget);
            first = 0;
        }
    fprintf(f, "\n");
    if (nsp > 0) {
        /* relative to `full`, else to the first method measured */
        double full = 0;
        const char *ref = "full";
        for (int i = 0; i < nsp; i++)
            if (!strcmp(sp[i].method, "full") && sp[i].lps > 0) full = sp[i].lps;
        for (int i = 0; i < nsp && full <= 0; i++)
            if (sp[i].lps > 0) {
                full = sp[i].lps;
                ref = sp[i].method;
            }
        fprintf(f, "\n**Lookup speed** (batched (row, field) lookups per second over the data, no training):\n\n");
        fprintf(f, "| method | share | bytes | lookups/s | relative to %s |\n|---|---|---:|---:|---:|\n", ref);
        for (int i = 0; i < nsp; i++) {
            if (strcmp(sp[i].status, "ok") != 0) {
                fprintf(f, "| %s | %s | - | - | %s |\n", sp[i].method, share_name(sp[i].share), sp[i].status);
                continue;
            }
            fprintf(f, "| %s | %s | %.0f | %.3g | %s%.2f |\n", sp[i].method, share_name(sp[i].share), sp[i].bytes, sp[i].lps,
                    full > 0 ? "" : "n/a ", full > 0 ? sp[i].lps / full : 0.0);
        }
    }
    int nfail = 0;
    for (int i = 0; i < cl->n; i++) nfail += strcmp(cl->c[i].status, "ok") != 0;
    if (nfail) {
        fprintf(f, "\n**Cells that did not run** (%d):\n\n", nfail);
        for (int i = 0; i < cl->n; i++)
            if (strcmp(cl->c[i].status, "ok") != 0)
                fprintf(f, "- %s/%s@%s seed %d: %s\n", cl->c[i].method, share_name(cl->c[i].share), cl->c[i].budget, cl->c[i].seed,
                        cl->c[i].status);
    }
    free(s);
}

static void progress(int done, int total, const char *what, double t0, double now) {
    int w = 30, k = total ? w * done / total : w;
    double eta = done ? (now - t0) / done * (total - done) : 0;
    fprintf(stderr, "\r[");
    for (int i = 0; i < w; i++) fputc(i < k ? '#' : '-', stderr);
    fprintf(stderr, "] %d/%d  %-44.44s  ETA %4.0fs ", done, total, what, eta);
    if (done == total) fputc('\n', stderr);
    fflush(stderr);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* The `matryoshka` entry's cells for one share mode and seed: ONE `hash`
 * table trained with the nested loss over the prefixes D b / b_top of the
 * sweep's budgets b (b_top the largest, D = --dim; the budgets whose
 * prefix is a whole number), then cut to the prefix of each budget: the
 * cell of budget b is that slice (bytes: es_model_slice's table; AUC and
 * log loss: the model at that prefix on the validation rows,
 * es_train_result.prefixes).  One training gives every size, so each cell
 * reports that training's rate (that of the run kept: a sizing run is not
 * counted).  The table is sized so that every slice meets its budget: a
 * slice cuts the rows but not the lookup arrays (aux = emb_bytes -
 * emb_param_bytes), and some models keep columns whatever the prefix (FM:
 * the first-order weight), so when a first run at b_top leaves a slice
 * over its budget, the table is trained again with its rows scaled by the
 * largest factor that fits every slice.  out[b] for every budget. */
static void matryoshka_cells(const es_train_params *base, const char *opts, int share, int seed, const double *fracs, int n_budgets,
                             cell *out) {
    es_train_params q = *base;
    es_train_params_resolve(&q);
    const int D = q.dim;
    double top = 0;
    for (int b = 0; b < n_budgets; b++) top = fracs[b] > top ? fracs[b] : top;
    int pref[MAX_BUDGETS], list[MAX_BUDGETS], n = 0;
    for (int b = 0; b < n_budgets; b++) {
        double x = (double)D * fracs[b] / top;
        long long r = llround(x);
        pref[b] = fabs(x - (double)r) < 1e-9 && r >= 1 ? (int)r : 0;
        int seen = !pref[b];
        for (int i = 0; i < n && !seen; i++) seen = list[i] == pref[b];
        if (!seen) list[n++] = pref[b];
    }
    for (int i = 1; i < n; i++) /* increasing, as --matryoshka wants */
        for (int j = i; j > 0 && list[j - 1] > list[j]; j--) {
            int t = list[j];
            list[j] = list[j - 1];
            list[j - 1] = t;
        }
    char mlist[256] = "", why[160] = "";
    for (int i = 0, o = 0; i < n && o < (int)sizeof mlist; i++) o += snprintf(mlist + o, sizeof mlist - (size_t)o, i ? ",%d" : "%d", list[i]);
    es_train_result res;
    es_err err = {0};
    int rc = -1;
    double full = 0;
    memset(&res, 0, sizeof res);
    if (n < 2) {
        snprintf(why, sizeof why, "error: fewer than two budgets give a whole prefix of dim %d (dim x budget / largest budget)", D);
    } else {
        q.storage = "hash";
        q.storage_opts = opts;
        q.matryoshka = mlist;
        q.matryoshka_weights = NULL;
        q.seed = (uint64_t)seed;
        q.budget = top;
        rc = es_train(&q, &res, &err);
        full = (double)res.full_bytes; /* a budget in bytes (below) skips the vocabulary that sizes the full table */
        /* the rows' bytes of a slice scale with the table's rows, the lookup
         * arrays (aux) do not: the largest scale s <= 1 of the rows that
         * keeps every slice within its budget */
        double aux = rc == 0 ? (double)res.emb_bytes - (double)res.emb_param_bytes : 0, sc = 1;
        for (int i = 0; rc == 0 && i < res.n_prefixes; i++) {
            double lim = top * (double)res.prefixes[i].dim / D * full, rows = (double)res.prefixes[i].emb_bytes - aux;
            if (rows > 0 && lim - aux < sc * rows) sc = (lim - aux) / rows;
        }
        if (rc == 0 && sc < 1) { /* again, with the rows scaled */
            q.budget = floor(((double)res.emb_bytes - aux) * sc + aux);
            rc = sc > 0 && q.budget > 1 ? es_train(&q, &res, &err) : -1;
            if (rc == -1) snprintf(err.msg, sizeof err.msg, "the lookup arrays (%.0f bytes) do not fit the smallest prefix's budget", aux);
        }
        if (rc != 0) snprintf(why, sizeof why, "error: %.150s", err.msg);
    }
    for (int b = 0; b < n_budgets; b++) {
        cell *c = &out[b];
        c->auc = c->logloss = NAN;
        const char *st = why;
        char own[160];
        if (!why[0] && !pref[b]) {
            snprintf(own, sizeof own, "error: prefix %g of dim %d is not a whole number", (double)D * fracs[b] / top, D);
            st = own;
        }
        for (int i = 0; !st[0] && i < res.n_prefixes; i++) {
            if (res.prefixes[i].dim != pref[b]) continue;
            c->bytes = (double)res.prefixes[i].emb_bytes;
            c->full_bytes = full;
            c->auc = res.prefixes[i].valid.auc;
            c->logloss = res.prefixes[i].valid.logloss;
            c->train_rps = res.train_rows_per_s;
            c->predict_rps = res.eval_rows_per_s;
            if (c->bytes > fracs[b] * c->full_bytes) {
                snprintf(own, sizeof own, "error: the slice at prefix %d holds %.0f bytes, over the budget", pref[b], c->bytes);
                st = own;
            } else {
                st = "ok";
            }
        }
        snprintf(c->status, sizeof c->status, "%s", st[0] ? st : "error: no such prefix in the result");
        if (strcmp(c->status, "ok")) c->auc = c->logloss = NAN;
        sanitize(c->status);
    }
    (void)share;
}

int cmd_bench_storage(int argc, char **argv) {
    const char *cmd = "bench-storage";
    /* not train's tuned defaults: one model and one table optimizer for
     * every method, so that the methods differ only in their storage */
    es_train_params p = es_train_params_basic();
    p.valid_frac = 0.2;
    const char *file = NULL, *outdir = "bench-storage-out", *name = NULL;
    char methods[MAX_METHODS][ITEM_LEN], budgets[MAX_BUDGETS][ITEM_LEN], seeds_s[MAX_SEEDS][ITEM_LEN];
    int n_methods = 0, n_budgets = 0, n_seeds = 0, share_lo = 0, share_hi = 0, quiet = 0, lookup_speed = 1, fresh = 0;
    long long ll;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        int r = cli_reader_opt(cmd, argc, argv, &i, &p.reader);
        if (r == 0) r = cli_train_opt(cmd, argc, argv, &i, &p);
        if (r < 0) return ES_EXIT_USAGE;
        if (r > 0) continue;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(help, stdout);
            return 0;
        } else if (!strcmp(a, "--methods")) {
            if (!(v = cli_next(cmd, argc, argv, &i))) return ES_EXIT_USAGE;
            if ((n_methods = split_list(v, methods, MAX_METHODS)) <= 0) return cli_usage(cmd, "bad --methods list '%s'", v);
        } else if (!strcmp(a, "--budgets")) {
            if (!(v = cli_next(cmd, argc, argv, &i))) return ES_EXIT_USAGE;
            if ((n_budgets = split_list(v, budgets, MAX_BUDGETS)) <= 0) return cli_usage(cmd, "bad --budgets list '%s'", v);
        } else if (!strcmp(a, "--seeds")) {
            if (!(v = cli_next(cmd, argc, argv, &i))) return ES_EXIT_USAGE;
            if ((n_seeds = split_list(v, seeds_s, MAX_SEEDS)) <= 0) return cli_usage(cmd, "bad --seeds list '%s'", v);
        } else if (!strcmp(a, "--share")) {
            if (!(v = cli_next(cmd, argc, argv, &i))) return ES_EXIT_USAGE;
            if (!strcmp(v, "none")) share_lo = share_hi = 0;
            else if (!strcmp(v, "fields")) share_lo = share_hi = 1;
            else if (!strcmp(v, "both")) share_lo = 0, share_hi = 1;
            else return cli_usage(cmd, "--share expects none, fields or both, got '%s'", v);
        } else if (!strcmp(a, "--out")) {
            if (!(outdir = cli_next(cmd, argc, argv, &i))) return ES_EXIT_USAGE;
        } else if (!strcmp(a, "--name")) {
            if (!(name = cli_next(cmd, argc, argv, &i))) return ES_EXIT_USAGE;
        } else if (!strcmp(a, "--no-lookup-speed")) {
            lookup_speed = 0;
        } else if (!strcmp(a, "--fresh")) {
            fresh = 1;
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
    p.train_path = file;
    if (n_methods == 0) {
        const char *names[MAX_METHODS];
        n_methods = es_storage_methods(names, NULL, MAX_METHODS);
        if (n_methods > MAX_METHODS - 1) n_methods = MAX_METHODS - 1;
        for (int i = 0; i < n_methods; i++) snprintf(methods[i], ITEM_LEN, "%s", names[i]);
        snprintf(methods[n_methods++], ITEM_LEN, "%s", MATRYOSHKA);
    } else {
        const char *names[MAX_METHODS];
        int nm = es_storage_methods(names, NULL, MAX_METHODS);
        for (int i = 0; i < n_methods; i++) {
            method_spec ms;
            if (parse_spec(methods[i], &ms) != 0)
                return cli_usage(cmd, "bad --methods entry '%s' (expected METHOD, METHOD@PRECISION[/qat|alpt] and "
                                      "optionally :k=v;k=v, PRECISION one of fp32 fp16 int16 int8 int4 int2)", methods[i]);
            int ok = !strcmp(ms.base, MATRYOSHKA);
            if (ok && ms.prec[0] && strcmp(ms.prec, "fp32"))
                return cli_usage(cmd, "%s: the matryoshka entry trains fp32 rows (slice first, then quantize)", methods[i]);
            for (int k = 0; k < nm && k < MAX_METHODS; k++) ok |= !strcmp(names[k], ms.base);
            if (!ok) return cli_usage(cmd, "unknown storage method '%s' (or " MATRYOSHKA ")", ms.base);
        }
    }
    if (n_budgets == 0) {
        const char *def[] = {"1/4", "1/16", "1/64", "1/256", "1/1024"};
        for (int i = 0; i < 5; i++) snprintf(budgets[i], ITEM_LEN, "%s", def[i]);
        n_budgets = 5;
    }
    double fracs[MAX_BUDGETS];
    for (int i = 0; i < n_budgets; i++) {
        if (cli_budget(cmd, budgets[i], &fracs[i]) != 0) return ES_EXIT_USAGE;
        if (!(fracs[i] > 0 && fracs[i] <= 1)) return cli_usage(cmd, "sweep budgets are fractions of the full table in (0, 1], got '%s'", budgets[i]);
    }
    int seeds[MAX_SEEDS];
    if (n_seeds == 0) {
        seeds[0] = 1, seeds[1] = 2, seeds[2] = 3;
        n_seeds = 3;
    } else {
        for (int i = 0; i < n_seeds; i++)
            if (cli_int(cmd, "--seeds", seeds_s[i], 0, INT32_MAX, &ll)) return ES_EXIT_USAGE;
            else seeds[i] = (int)ll;
    }
    if (!name) {
        const char *b = strrchr(file, '/');
        name = b ? b + 1 : file;
    }
    char path_cells[4096], path_json[4096], path_svg[4096], path_md[4096], path_png[4096], path_lookup[4096];
    snprintf(path_cells, sizeof path_cells, "%s/cells.csv", outdir);
    snprintf(path_json, sizeof path_json, "%s/results.json", outdir);
    snprintf(path_svg, sizeof path_svg, "%s/pareto.svg", outdir);
    snprintf(path_png, sizeof path_png, "%s/pareto.png", outdir);
    snprintf(path_md, sizeof path_md, "%s/summary.md", outdir);
    snprintf(path_lookup, sizeof path_lookup, "%s/lookup.csv", outdir);
    char path_config[4096];
    snprintf(path_config, sizeof path_config, "%s/config.txt", outdir);
    /* the directory, and every file written into it, against the inputs */
    const cli_path ins[] = {{"FILE", file, "the data file"}, {"--valid", p.valid_path, "the validation file"}};
    const cli_path outs[] = {{"--out", outdir, NULL},    {"--out", path_cells, NULL}, {"--out", path_json, NULL},
                             {"--out", path_svg, NULL},  {"--out", path_png, NULL},   {"--out", path_md, NULL},
                             {"--out", path_lookup, NULL}, {"--out", path_config, NULL}};
    if (cli_check_outputs(cmd, ins, 2, outs, 8) != 0) return ES_EXIT_USAGE;
    if (mkdir(outdir, 0755) != 0 && errno != EEXIST) return cli_fail(cmd, "%s: cannot create directory: %s", outdir, strerror(errno));

    /* the key every cell shares: refuse to reuse cells of another run */
    static char config[16384], old_config[16384];
    es_err cerr = {0};
    if (run_config(&p, config, sizeof config, &cerr) != 0) return cli_fail(cmd, "%s", cerr.msg);
    load_config(path_config, old_config, sizeof old_config);
    cell_list cl = {0};
    load_cells(path_cells, &cl);
    if (cl.n > 0 && fresh) {
        cl.n = 0;
    } else if (cl.n > 0) {
        char diff[1024];
        if (!old_config[0]) {
            free(cl.c);
            return cli_fail(cmd,
                            "%s holds %d cells but no config.txt saying what they were run with (an older embstore?); "
                            "pick another --out, or add --fresh to discard them",
                            outdir, cl.n);
        }
        if (es_train_describe_diff(old_config, config, NULL, diff, sizeof diff) > 0) {
            free(cl.c);
            return cli_fail(cmd,
                            "%s holds %d cells of another run (that run vs this command: %s); its numbers would be "
                            "reported under this run's labels: pick another --out, or add --fresh to discard them",
                            outdir, cl.n, diff);
        }
    }
    if (cl.n == 0 || strcmp(old_config, config) != 0) {
        char tmpc[4200];
        int cslot;
        FILE *cf = cli_open_tmp(path_config, tmpc, sizeof tmpc, &cslot);
        if (!cf) return cli_fail(cmd, "%s: cannot write: %s", path_config, strerror(errno));
        fprintf(cf, "# embstore bench-storage: what the cells in cells.csv were run with (settings that change a\n"
                    "# result, and the data files: size and XXH3-64 of the first MiB); a rerun reuses cells only\n"
                    "# when this matches.\n%s",
                config);
        if (cli_commit_tmp(cf, tmpc, path_config, cslot) != 0) {
            free(cl.c);
            return cli_fail(cmd, "%s: cannot write: %s", path_config, strerror(errno));
        }
    }
    if (fresh && access(path_cells, F_OK) == 0 && save_cells(path_cells, &cl, name, p.model) != 0) {
        free(cl.c);
        return cli_fail(cmd, "%s: cannot write results: %s", path_cells, strerror(errno));
    }
    int resumed = cl.n;
    /* the plan: `full` runs once per seed at its own size; methods with one
     * layout (no share option) in the first share mode only */
    int total = 0;
    method_spec specs[MAX_METHODS];
    for (int m = 0; m < n_methods; m++) parse_spec(methods[m], &specs[m]); /* checked above */
    for (int m = 0; m < n_methods; m++)
        total += !strcmp(specs[m].base, "full") ? n_seeds
                                                : n_budgets * (one_layout(specs[m].base) ? 1 : share_hi - share_lo + 1) * n_seeds;
    int done = 0, failed = 0;
    double t0 = now_s();
    int show = !quiet && cli_tty();
    for (int m = 0; m < n_methods; m++) {
        const method_spec *ms = &specs[m];
        int is_full = !strcmp(ms->base, "full");
        if (one_layout(ms->base) && !is_full && share_hi > share_lo && !quiet)
            fprintf(stderr, "%s: no share option (one layout): swept with share=%s only\n", methods[m], share_name(share_lo));
        if (!strcmp(ms->base, MATRYOSHKA)) { /* one training per share mode and seed gives every budget's cell */
            for (int sh = share_lo; sh <= (one_layout(ms->base) ? share_lo : share_hi); sh++)
                for (int s = 0; s < n_seeds; s++) {
                    int missing = 0;
                    for (int b = 0; b < n_budgets; b++) missing += find_cell(&cl, methods[m], sh, budgets[b], seeds[s]) < 0;
                    if (!missing) {
                        done += n_budgets;
                        continue;
                    }
                    char what[128], copts[4096];
                    snprintf(what, sizeof what, "%.63s share=%s seed=%d (every budget)", methods[m], share_name(sh), seeds[s]);
                    if (show) progress(done, total, what, t0, now_s());
                    method_spec hs = *ms;
                    snprintf(hs.base, sizeof hs.base, "hash");
                    spec_opts(&hs, p.storage_opts, sh, copts, sizeof copts);
                    cell mc[MAX_BUDGETS];
                    memset(mc, 0, sizeof mc);
                    matryoshka_cells(&p, copts, sh, seeds[s], fracs, n_budgets, mc);
                    for (int b = 0; b < n_budgets; b++) {
                        cell *c = &mc[b];
                        snprintf(c->method, sizeof c->method, "%.63s", methods[m]);
                        c->share = sh;
                        snprintf(c->budget, sizeof c->budget, "%s", budgets[b]);
                        c->frac = fracs[b];
                        c->seed = seeds[s];
                        c->epochs = p.epochs;
                        if (strcmp(c->status, "ok")) {
                            failed++;
                            if (!quiet) fprintf(stderr, "%s%s budget=%s: %s\n", show ? "\n" : "", what, budgets[b], c->status);
                        }
                        if (find_cell(&cl, methods[m], sh, budgets[b], seeds[s]) < 0 &&
                            (push_cell(&cl, c) != 0 || save_cells(path_cells, &cl, name, p.model) != 0)) {
                            free(cl.c);
                            return cli_fail(cmd, "%s: cannot write results: %s", path_cells, strerror(errno));
                        }
                        done++;
                    }
                }
            continue;
        }
        for (int sh = share_lo; sh <= (one_layout(ms->base) ? share_lo : share_hi); sh++)
            for (int b = 0; b < (is_full ? 1 : n_budgets); b++)
                for (int s = 0; s < n_seeds; s++) {
                    const char *bud = is_full ? "full" : budgets[b];
                    char what[128], copts[4096];
                    snprintf(what, sizeof what, "%.63s share=%s budget=%.23s seed=%d", methods[m], share_name(sh), bud, seeds[s]);
                    if (find_cell(&cl, methods[m], sh, bud, seeds[s]) >= 0) {
                        done++;
                        continue;
                    }
                    spec_opts(ms, p.storage_opts, sh, copts, sizeof copts);
                    if (show) progress(done, total, what, t0, now_s());
                    es_train_params q = p;
                    q.storage = ms->base;
                    q.precision = ms->prec[0] ? ms->prec : NULL;
                    q.qtrain = ms->mode[0] ? ms->mode : NULL;
                    q.budget = is_full ? 0 : fracs[b];
                    q.storage_opts = copts;
                    q.seed = (uint64_t)seeds[s];
                    es_train_result res;
                    es_err err = {0};
                    int rc = es_train(&q, &res, &err);
                    cell c;
                    memset(&c, 0, sizeof c);
                    snprintf(c.method, sizeof c.method, "%.63s", methods[m]);
                    c.share = sh;
                    snprintf(c.budget, sizeof c.budget, "%s", bud);
                    c.frac = is_full ? 1.0 : fracs[b];
                    c.seed = seeds[s];
                    c.epochs = p.epochs;
                    if (rc == 0) {
                        c.bytes = (double)res.emb_bytes;
                        c.full_bytes = (double)res.full_bytes;
                        c.auc = res.valid.auc;
                        c.logloss = res.valid.logloss;
                        c.train_rps = res.train_rows_per_s;
                        /* a multi-stage method (autodim): the search and derive
                         * stages count in the training time, as a slowdown of
                         * the retrain's rate by their share of the time */
                        double t_retrain = 0, t_other = 0;
                        for (int k = 0; k < res.n_stages; k++) {
                            if (!strcmp(res.stages[k].name, "retrain")) t_retrain += res.stages[k].seconds;
                            else t_other += res.stages[k].seconds;
                        }
                        if (t_retrain > 0) c.train_rps /= 1.0 + t_other / t_retrain;
                        c.predict_rps = res.eval_rows_per_s;
                        snprintf(c.status, sizeof c.status, "ok");
                    } else {
                        c.auc = c.logloss = NAN;
                        snprintf(c.status, sizeof c.status, "error: %.150s", err.msg);
                        sanitize(c.status);
                        failed++;
                        if (!quiet) fprintf(stderr, "%s%s: %s\n", show ? "\n" : "", what, err.msg);
                    }
                    if (push_cell(&cl, &c) != 0 || save_cells(path_cells, &cl, name, p.model) != 0) {
                        free(cl.c);
                        return cli_fail(cmd, "%s: cannot write results: %s", path_cells, strerror(errno));
                    }
                    done++;
                }
    }
    if (show) progress(total, total, "done", t0, now_s());

    /* lookup speed per (method, share) at the middle budget */
    speed sp[2 * MAX_METHODS];
    int nsp = 0;
    if (lookup_speed) {
        const char *mid = budgets[n_budgets / 2];
        double midf = fracs[n_budgets / 2];
        char tmp[4200];
        int lslot;
        FILE *lf = cli_open_tmp(path_lookup, tmp, sizeof tmp, &lslot);
        if (lf) fprintf(lf, "method,share,budget,bytes,lookups_per_s,threads\n");
        for (int m = 0; m < n_methods; m++) {
            const method_spec *ms = &specs[m];
            int is_full = !strcmp(ms->base, "full");
            for (int sh = share_lo; sh <= (one_layout(ms->base) ? share_lo : share_hi); sh++) {
                es_train_params q = p;
                q.storage = ms->base;
                q.precision = ms->prec[0] ? ms->prec : NULL;
                q.qtrain = ms->mode[0] ? ms->mode : NULL;
                q.budget = is_full ? 0 : midf;
                char copts[4096];
                spec_opts(ms, p.storage_opts, sh, copts, sizeof copts);
                q.storage_opts = copts;
                speed *x = &sp[nsp++];
                memset(x, 0, sizeof *x);
                snprintf(x->method, sizeof x->method, "%s", methods[m]);
                x->share = sh;
                size_t bytes = 0;
                es_err err = {0};
                if (!strcmp(ms->base, MATRYOSHKA)) {
                    snprintf(x->status, sizeof x->status, "n/a: a slice is served as hash");
                } else if (es_bench_lookup(&q, 3, &x->lps, &bytes, &err) == 0) {
                    x->bytes = (double)bytes;
                    snprintf(x->status, sizeof x->status, "ok");
                } else {
                    snprintf(x->status, sizeof x->status, "error: %.110s", err.msg);
                    sanitize(x->status);
                }
                if (lf)
                    fprintf(lf, "%s,%s,%s,%.0f,%.1f,%d\n", x->method, share_name(sh), is_full ? "full" : mid, x->bytes, x->lps,
                            p.threads);
            }
        }
        if (lf) cli_commit_tmp(lf, tmp, path_lookup, lslot);
    }

    agg *ag = calloc((size_t)cl.n + 1, sizeof *ag);
    if (!ag) {
        free(cl.c);
        return cli_fail(cmd, "out of memory");
    }
    int na = aggregate(&cl, ag, cl.n);
    char title[512];
    snprintf(title, sizeof title, "%s: %s, AUC vs embedding bytes", name, p.model);
    int werr = write_svg(path_svg, ag, na, title);
    if (!werr) cli_svg_to_png(path_svg, path_png);
    char tmp[4200];
    int slot;
    FILE *jf = cli_open_tmp(path_json, tmp, sizeof tmp, &slot);
    if (jf) {
        fprintf(jf, "{\"dataset\":\"%s\",\"model\":\"%s\",\"epochs\":%d,\"threads\":%d,\"cells\":[", name, p.model, p.epochs, p.threads);
        for (int i = 0; i < cl.n; i++) {
            const cell *c = &cl.c[i];
            fprintf(jf, "%s{\"method\":\"%s\",\"share\":\"%s\",\"budget\":\"%s\",\"budget_frac\":%.9g,\"bytes\":%.0f,\"seed\":%d,",
                    i ? "," : "", c->method, share_name(c->share), c->budget, c->frac, c->bytes, c->seed);
            if (isfinite(c->auc)) fprintf(jf, "\"auc\":%.6f,\"logloss\":%.6f,", c->auc, c->logloss);
            fprintf(jf, "\"train_rows_per_s\":%.1f,\"predict_rows_per_s\":%.1f,\"epochs\":%d,\"status\":\"%s\"}", c->train_rps,
                    c->predict_rps, c->epochs, c->status);
        }
        fprintf(jf, "],\"aggregates\":[");
        for (int i = 0; i < na; i++)
            fprintf(jf,
                    "%s{\"method\":\"%s\",\"share\":\"%s\",\"budget\":\"%s\",\"bytes\":%.0f,\"auc_mean\":%.6f,\"auc_std\":%.6f,"
                    "\"seeds\":%d,\"pareto\":%s}",
                    i ? "," : "", ag[i].method, share_name(ag[i].share), ag[i].budget, ag[i].bytes, ag[i].auc_mean, ag[i].auc_std,
                    ag[i].n, ag[i].pareto ? "true" : "false");
        fprintf(jf, "],\"lookup_speed\":[");
        for (int i = 0; i < nsp; i++)
            fprintf(jf, "%s{\"method\":\"%s\",\"share\":\"%s\",\"bytes\":%.0f,\"lookups_per_s\":%.1f,\"status\":\"%s\"}", i ? "," : "",
                    sp[i].method, share_name(sp[i].share), sp[i].bytes, sp[i].lps, sp[i].status);
        fprintf(jf, "]}\n");
        if (cli_commit_tmp(jf, tmp, path_json, slot) != 0) werr = -1;
    } else {
        werr = -1;
    }
    FILE *mf = cli_open_tmp(path_md, tmp, sizeof tmp, &slot);
    if (mf) {
        write_summary(mf, name, p.model, ag, na, sp, nsp, n_seeds, p.epochs, &cl);
        if (cli_commit_tmp(mf, tmp, path_md, slot) != 0) werr = -1;
    } else {
        werr = -1;
    }
    if (!quiet) write_summary(stdout, name, p.model, ag, na, sp, nsp, n_seeds, p.epochs, &cl);
    fprintf(stderr, "%d cells (%d from an earlier run, %d failed); results in %s/\n", total, resumed, failed, outdir);
    free(ag);
    free(cl.c);
    if (werr) return cli_fail(cmd, "%s: cannot write result files: %s", outdir, strerror(errno));
    return 0;
}
