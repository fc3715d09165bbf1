/*
 * cmd_diagnose.c — `embstore diagnose FILE...`: the spectrum, effective
 * rank, intrinsic dimension, Vendi score, dead and duplicate rows of a
 * model's tables (whole and per field), of an index's vectors or of a
 * vector file, through the es_diag_* API (docs/diagnostics.md); a text
 * table, one JSON document (--json), or a report directory (--report: SVG
 * plots, PNG where a converter exists, summary.md).
 */
#include "cli.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static const char diagnose_help[] =
    "usage: embstore diagnose FILE... [options]\n"
    "\n"
    "Measure how many dimensions a set of vectors really uses: the singular value\n"
    "spectrum, effective rank (RankMe, and centred), normalized nuclear norm,\n"
    "condition number, energy of the top k, intrinsic dimension (TwoNN and the\n"
    "Levina-Bickel MLE with confidence intervals and the spread of local\n"
    "estimates), the Vendi score (cosine kernel), dead rows and near-duplicates.\n"
    "docs/diagnostics.md defines each measure and how to read it.\n"
    "\n"
    "FILE is\n"
    "  a model (.es)     every embedding table whole, then the rows each field can\n"
    "                    address (full, hash, unified), plus the per-field\n"
    "                    collision statistics recorded at training time;\n"
    "  an index          its stored vectors (kinds that keep float vectors:\n"
    "                    flat, hnsw, or any built with keep_full=1);\n"
    "  vectors           .fvecs/.bvecs (several FILEs are parts of one set), text\n"
    "                    (.txt/.vec: one vector per line), raw float32\n"
    "                    (.f32/.raw/.bin, with --dim), or --tensor NAME of any\n"
    "                    embstore container.\n"
    "\n"
    "options:\n"
    "  --sample N     rows drawn for the neighbour-based measures and duplicates\n"
    "                 (default 10000; 0 = all; the spectrum always uses every row)\n"
    "  --k K          neighbours of the MLE estimator (default 20)\n"
    "  --top-k K      energy share of the top K singular values (default 10)\n"
    "  --seed S       the sample's seed (default 1)\n"
    "  --threads N    threads (default: all cores)\n"
    "  --dim D        dimension of a raw float32 file\n"
    "  --tensor NAME  read this 2-D f32 tensor of a container file\n"
    "  --no-fields    model: whole tables only\n"
    "  --data FILE    model (hash, unified): count the values of FILE, read as the\n"
    "                 model was trained, for the collision statistics (values per\n"
    "                 row, load, values losing their row to a more frequent one)\n"
    "  --json         one JSON document on standard output\n"
    "  --report DIR   write DIR/spectrum.svg, DIR/fields.svg (models), PNGs where\n"
    "                 rsvg-convert or ImageMagick exists, and DIR/summary.md\n"
    "  --dump FILE    write the rows of the first set analysed as .fvecs\n";

typedef struct {
    char name[160];
    int table, field; /* -1: not a model table / whole table */
    size_t n;
    int d;
    es_diag_report r;
    int have_coll;
    es_diag_collisions coll;
} dset;

typedef struct {
    dset *v;
    int n, cap;
} dsets;

static dset *dsets_add(dsets *s) {
    if (s->n == s->cap) {
        int nc = s->cap ? 2 * s->cap : 16;
        dset *nv = realloc(s->v, (size_t)nc * sizeof(dset));
        if (!nv) return NULL;
        s->v = nv, s->cap = nc;
    }
    memset(&s->v[s->n], 0, sizeof(dset));
    return &s->v[s->n++];
}

static void json_str(FILE *f, const char *s) {
    fputc('"', f);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') fprintf(f, "\\%c", c);
        else if (c < 0x20) fprintf(f, "\\u%04x", c);
        else fputc(c, f);
    }
    fputc('"', f);
}

/* A number for JSON: never NaN or inf (null then). */
static void jnum(FILE *f, double v) {
    if (isfinite(v)) fprintf(f, "%.10g", v);
    else fputs("null", f);
}

static void json_set(FILE *f, const dset *s) {
    const es_diag_report *r = &s->r;
    fprintf(f, "{\"name\":");
    json_str(f, s->name);
    fprintf(f, ",\"table\":%d,\"field\":%d,\"n\":%zu,\"d\":%d,\"seconds\":%.3f,", s->table, s->field, s->n, s->d, r->seconds);
    const es_diag_spectrum *sp = &r->spec;
    fprintf(f, "\"spectrum\":{\"method\":\"%s\",\"erank\":", sp->method);
    jnum(f, sp->erank);
    fprintf(f, ",\"erank_centered\":");
    jnum(f, sp->erank_centered);
    fprintf(f, ",\"nuclear\":");
    jnum(f, sp->nuclear);
    fprintf(f, ",\"nuclear_norm\":");
    jnum(f, sp->nuclear_norm);
    fprintf(f, ",\"frobenius\":");
    jnum(f, sp->frobenius);
    fprintf(f, ",\"condition\":");
    if (sp->condition > 0) jnum(f, sp->condition);
    else fputs("null", f);
    fprintf(f, ",\"rank\":%d,\"top_k\":%d,\"energy_top_k\":", sp->rank, sp->top_k);
    jnum(f, sp->energy_top_k);
    fprintf(f, ",\"k90\":%d,\"k99\":%d,\"sv\":[", sp->k90, sp->k99);
    for (int i = 0; i < sp->m; i++) {
        if (i) fputc(',', f);
        jnum(f, sp->sv[i]);
    }
    fprintf(f, "]},\"id\":{\"ok\":%s,\"n_used\":%zu,\"k\":%d", r->id_ok ? "true" : "false", r->id.n_used, r->id.k);
    if (r->id_ok) {
        const es_diag_id *id = &r->id;
        fprintf(f, ",\"twonn\":");
        jnum(f, id->twonn);
        fprintf(f, ",\"twonn_ci\":[");
        jnum(f, id->twonn_lo);
        fputc(',', f);
        jnum(f, id->twonn_hi);
        fprintf(f, "],\"twonn_fit\":");
        jnum(f, id->twonn_fit);
        fprintf(f, ",\"mle\":");
        jnum(f, id->mle);
        fprintf(f, ",\"mle_ci\":[");
        jnum(f, id->mle_lo);
        fputc(',', f);
        jnum(f, id->mle_hi);
        fprintf(f, "],\"mle_lb\":");
        jnum(f, id->mle_lb);
        fprintf(f, ",\"local_q\":[");
        for (int i = 0; i < 5; i++) {
            if (i) fputc(',', f);
            jnum(f, id->local_q[i]);
        }
        fputc(']', f);
    } else {
        fprintf(f, ",\"note\":");
        json_str(f, r->id_note);
    }
    fprintf(f, "},\"vendi\":{\"ok\":%s", r->vendi_ok ? "true" : "false");
    if (r->vendi_ok) {
        fprintf(f, ",\"value\":");
        jnum(f, r->vendi);
    } else {
        fprintf(f, ",\"note\":");
        json_str(f, r->vendi_note);
    }
    const es_diag_rows *rw = &r->rows;
    fprintf(f, "},\"rows\":{\"n\":%zu,\"norm_min\":", rw->n);
    jnum(f, rw->norm_min);
    fprintf(f, ",\"norm_median\":");
    jnum(f, rw->norm_median);
    fprintf(f, ",\"norm_mean\":");
    jnum(f, rw->norm_mean);
    fprintf(f, ",\"norm_max\":");
    jnum(f, rw->norm_max);
    fprintf(f, ",\"zero\":%zu,\"dead\":%zu,\"sampled\":%zu,\"dup_exact\":%zu,\"dup_near\":%zu,\"max_cos_median\":", rw->zero,
            rw->dead, rw->sampled, rw->dup_exact, rw->dup_near);
    jnum(f, rw->max_cos_median);
    fputc('}', f);
    if (s->have_coll) {
        const es_diag_collisions *c = &s->coll;
        fprintf(f, ",\"collisions\":{\"values\":%llu,\"rows\":%llu,\"rows_used\":%llu,\"values_per_row\":",
                (unsigned long long)c->values, (unsigned long long)c->rows, (unsigned long long)c->rows_used);
        jnum(f, c->values_per_row);
        fprintf(f, ",\"load\":");
        jnum(f, c->load);
        fprintf(f, ",\"share_colliding\":");
        jnum(f, c->share_colliding);
        fprintf(f, ",\"share_colliding_weight\":");
        jnum(f, c->share_colliding_weight);
        fprintf(f, ",\"top_rows\":[");
        for (int i = 0; i < c->n_top; i++)
            fprintf(f, "%s{\"row\":%llu,\"values\":%llu}", i ? "," : "", (unsigned long long)c->top_row[i],
                    (unsigned long long)c->top_values[i]);
        fprintf(f, "]}");
    }
    fputc('}', f);
}

/* "12.3" or "-" when not available */
static const char *fmt_id(char *buf, size_t cap, int ok, double v) {
    if (ok) snprintf(buf, cap, "%.2f", v);
    else snprintf(buf, cap, "-");
    return buf;
}

static void text_header(FILE *f, int md) {
    if (md) {
        fprintf(f, "| set | rows | dim | erank | erank (centred) | nuclear norm | condition | k90 | TwoNN [95%% CI] | MLE [95%% CI] | Vendi | dead | near-dup |\n");
        fprintf(f, "|---|---:|---:|---:|---:|---:|---:|---:|---|---|---:|---:|---:|\n");
    } else {
        fprintf(f, "%-28s %8s %5s %7s %7s %6s %9s %4s %-22s %-22s %7s %6s %6s\n", "set", "rows", "dim", "erank", "erank_c",
                "nucl", "cond", "k90", "TwoNN [95% CI]", "MLE [95% CI]", "Vendi", "dead", "dup");
    }
}

static void text_row(FILE *f, const dset *s, int md) {
    const es_diag_report *r = &s->r;
    char cond[32], tw[64], ml[64], ve[32], b1[16], b2[16], b3[16];
    if (r->spec.condition > 0) snprintf(cond, sizeof cond, "%.3g", r->spec.condition);
    else snprintf(cond, sizeof cond, "inf");
    if (r->id_ok) {
        snprintf(tw, sizeof tw, "%.2f [%.2f, %.2f]", r->id.twonn, r->id.twonn_lo, r->id.twonn_hi);
        snprintf(ml, sizeof ml, "%.2f [%.2f, %.2f]", r->id.mle, r->id.mle_lo, r->id.mle_hi);
    } else {
        snprintf(tw, sizeof tw, "- (%zu distinct)", r->id.n_used);
        snprintf(ml, sizeof ml, "-");
    }
    fmt_id(ve, sizeof ve, r->vendi_ok, r->vendi);
    (void)b1, (void)b2, (void)b3;
    if (md)
        fprintf(f, "| %s | %zu | %d | %.2f | %.2f | %.3f | %s | %d | %s | %s | %s | %zu | %zu |\n", s->name, s->n, s->d,
                r->spec.erank, r->spec.erank_centered, r->spec.nuclear_norm, cond, r->spec.k90, tw, ml, ve, r->rows.dead,
                r->rows.dup_near);
    else
        fprintf(f, "%-28.28s %8zu %5d %7.2f %7.2f %6.3f %9s %4d %-22s %-22s %7s %6zu %6zu\n", s->name, s->n, s->d,
                r->spec.erank, r->spec.erank_centered, r->spec.nuclear_norm, cond, r->spec.k90, tw, ml, ve, r->rows.dead,
                r->rows.dup_near);
}

/* ---- files ------------------------------------------------------------------ */


static const char *palette[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"};

static void svg_text(FILE *f, const char *s) {
    for (; *s; s++) {
        if (*s == '<') fputs("&lt;", f);
        else if (*s == '>') fputs("&gt;", f);
        else if (*s == '&') fputs("&amp;", f);
        else fputc(*s, f);
    }
}

/* Normalized singular values sigma_i / sigma_1 (log scale) of the whole
 * sets (field == -1), at most 8 lines. */
static int write_spectrum_svg(const char *path, const dsets *S, const char *title) {
    char tmp[4200];
    int slot;
    FILE *f = cli_open_tmp(path, tmp, sizeof tmp, &slot);
    if (!f) return -1;
    const double W = 720, H = 440, L = 70, R = 200, T = 40, B = 50;
    int maxm = 1;
    double lo = 1;
    for (int i = 0; i < S->n; i++) {
        const es_diag_spectrum *sp = &S->v[i].r.spec;
        if (S->v[i].field >= 0 || sp->sv[0] <= 0) continue;
        if (sp->m > maxm) maxm = sp->m;
        for (int j = 0; j < sp->m; j++) {
            double v = sp->sv[j] / sp->sv[0];
            if (v > 0 && v < lo) lo = v;
        }
    }
    double e_lo = floor(log10(lo > 1e-8 ? lo : 1e-8));
    if (e_lo > -1) e_lo = -1;
    fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" font-family=\"sans-serif\" font-size=\"12\">\n", W, H);
    fprintf(f, "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n<text x=\"%.0f\" y=\"22\" font-size=\"14\">", L);
    svg_text(f, title);
    fprintf(f, "</text>\n");
    const double pw = W - L - R, ph = H - T - B;
#define XS(i) (L + (maxm > 1 ? pw * (double)(i) / (maxm - 1) : pw / 2))
#define YS(v) (T + ph * (0 - log10(v)) / (0 - e_lo))
    fprintf(f, "<rect x=\"%.0f\" y=\"%.0f\" width=\"%.0f\" height=\"%.0f\" fill=\"none\" stroke=\"#333\"/>\n", L, T, pw, ph);
    for (int e = 0; e >= (int)e_lo; e--) {
        double y = YS(pow(10, e));
        fprintf(f, "<line x1=\"%.0f\" x2=\"%.0f\" y1=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>\n", L, L + pw, y, y);
        fprintf(f, "<text x=\"%.0f\" y=\"%.1f\" text-anchor=\"end\">1e%d</text>\n", L - 6, y + 4, e);
    }
    fprintf(f, "<text x=\"%.0f\" y=\"%.0f\" text-anchor=\"middle\">singular value index (1 .. %d)</text>\n", L + pw / 2, H - 15, maxm);
    fprintf(f, "<text x=\"18\" y=\"%.0f\" transform=\"rotate(-90 18 %.0f)\" text-anchor=\"middle\">sigma_i / sigma_1 (log)</text>\n",
            T + ph / 2, T + ph / 2);
    int line = 0;
    for (int i = 0; i < S->n && line < 8; i++) {
        const es_diag_spectrum *sp = &S->v[i].r.spec;
        if (S->v[i].field >= 0 || sp->sv[0] <= 0) continue;
        const char *col = palette[line % 8];
        fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"2\" points=\"", col);
        for (int j = 0; j < sp->m; j++) {
            double v = sp->sv[j] / sp->sv[0];
            if (v < pow(10, e_lo)) v = pow(10, e_lo);
            fprintf(f, "%.1f,%.1f ", XS(j), YS(v));
        }
        fprintf(f, "\"/>\n<text x=\"%.0f\" y=\"%.0f\" fill=\"%s\">", L + pw + 10, T + 16 + 18.0 * line, col);
        svg_text(f, S->v[i].name);
        fprintf(f, " (erank %.1f)</text>\n", sp->erank);
        line++;
    }
#undef XS
#undef YS
    fprintf(f, "</svg>\n");
    return cli_commit_tmp(f, tmp, path, slot);
}

/* Per-field effective rank (bars) against the table's dimension. */
static int write_fields_svg(const char *path, const dsets *S, const char *title) {
    int nf = 0, d = 1;
    for (int i = 0; i < S->n; i++)
        if (S->v[i].field >= 0) {
            nf++;
            if (S->v[i].d > d) d = S->v[i].d;
        }
    if (nf == 0) return 0;
    char tmp[4200];
    int slot;
    FILE *f = cli_open_tmp(path, tmp, sizeof tmp, &slot);
    if (!f) return -1;
    const double bw = 22, L = 60, T = 40, ph = 300, B = 110;
    const double W = L + bw * nf + 40, H = T + ph + B;
    fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" font-family=\"sans-serif\" font-size=\"11\">\n", W, H);
    fprintf(f, "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n<text x=\"%.0f\" y=\"22\" font-size=\"14\">", L);
    svg_text(f, title);
    fprintf(f, "</text>\n");
    for (int t = 0; t <= 4; t++) {
        double v = d * t / 4.0, y = T + ph - ph * v / d;
        fprintf(f, "<line x1=\"%.0f\" x2=\"%.0f\" y1=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>\n", L, L + bw * nf, y, y);
        fprintf(f, "<text x=\"%.0f\" y=\"%.1f\" text-anchor=\"end\">%.0f</text>\n", L - 6, y + 4, v);
    }
    fprintf(f, "<text x=\"14\" y=\"%.0f\" transform=\"rotate(-90 14 %.0f)\" text-anchor=\"middle\">effective rank (dim %d)</text>\n",
            T + ph / 2, T + ph / 2, d);
    int k = 0;
    for (int i = 0; i < S->n; i++) {
        const dset *s = &S->v[i];
        if (s->field < 0) continue;
        double v = s->r.spec.erank, x = L + bw * k + 3, h = ph * v / d;
        fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"%s\"><title>", x, T + ph - h, bw - 6, h,
                palette[s->table % 8]);
        svg_text(f, s->name);
        fprintf(f, ": %.2f</title></rect>\n", v);
        const char *lab = strrchr(s->name, '/');
        lab = lab ? lab + 1 : s->name;
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" transform=\"rotate(60 %.1f %.1f)\">", x + 4, T + ph + 12, x + 4, T + ph + 12);
        svg_text(f, lab);
        fprintf(f, "</text>\n");
        k++;
    }
    fprintf(f, "</svg>\n");
    return cli_commit_tmp(f, tmp, path, slot);
}


/* ---- inputs ----------------------------------------------------------------- */

typedef struct {
    const char *cmd;
    es_diag_params p;
    dsets *S;
    int quiet;
} runner;

/* Diagnose x[n, d] as set `name`; takes ownership of nothing. */
static int run_set(runner *R, const char *name, int table, int field, const float *x, size_t n, int d, dset **out) {
    dset *s = dsets_add(R->S);
    if (!s) return cli_fail(R->cmd, "out of memory");
    snprintf(s->name, sizeof s->name, "%s", name);
    s->table = table, s->field = field, s->n = n, s->d = d;
    es_err err = {0};
    if (es_diag_run(x, n, d, &R->p, &s->r, &err) != 0) {
        R->S->n--;
        return cli_fail(R->cmd, "%s: %s", name, err.msg);
    }
    if (out) *out = s;
    return 0;
}

static char **split_names(const char *s, int n) {
    char **v = calloc((size_t)n + 1, sizeof(char *));
    if (!v || !s) return v;
    const char *p = s;
    for (int i = 0; i < n && *p; i++) {
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        v[i] = strndup(p, len);
        p = e ? e + 1 : p + len;
    }
    return v;
}

static int build_vocab(const char *cmd, es_model *m, const char *data, es_vocab **out) {
    es_reader_params rp = es_model_reader_params(m);
    es_reader *r = NULL;
    es_err err = {0};
    if (es_reader_open(&r, data, &rp, &err) != 0) return cli_fail(cmd, "--data %s", err.msg);
    es_batch b;
    es_vocab *v = NULL;
    int rc = es_batch_alloc(&b, 4096, es_reader_n_dense(r), es_reader_n_fields(r), 0);
    if (rc == 0) rc = es_vocab_create(&v, es_model_n_fields(m));
    if (rc == 0 && es_reader_n_fields(r) != es_model_n_fields(m)) {
        int nf = es_reader_n_fields(r);
        es_reader_free(r);
        es_batch_free(&b);
        es_vocab_free(v);
        return cli_fail(cmd, "--data %s has %d categorical fields, the model %d", data, nf, es_model_n_fields(m));
    }
    while (rc == 0) {
        int got = es_reader_next(r, &b);
        if (got < 0) {
            rc = cli_fail(cmd, "--data %s", es_reader_errmsg(r));
            break;
        }
        if (got == 0) break;
        if (es_vocab_add_batch(v, &b) != 0) {
            rc = cli_fail(cmd, "--data: %s", es_vocab_errmsg(v));
            break;
        }
    }
    es_batch_free(&b);
    es_reader_free(r);
    if (rc) {
        es_vocab_free(v);
        return rc ? rc : ES_EXIT_FAIL;
    }
    *out = v;
    return 0;
}

static int diagnose_model(runner *R, const char *path, int fields, const char *data, float **dump_x, size_t *dump_n,
                          int *dump_d) {
    es_model *m = NULL;
    es_err err = {0};
    if (es_model_load(&m, path, 0, &err) != 0) return cli_fail(R->cmd, "%s", err.msg);
    int nt = es_diag_model_tables(m), rc = 0;
    const char *method = es_model_meta(m, "storage.method");
    if (nt == 0) {
        es_model_free(m);
        return cli_fail(R->cmd, "%s: storage method %s keeps no row tables to diagnose (tt, dhe compute their rows)", path,
                        method ? method : "?");
    }
    int nf = es_model_n_fields(m);
    char **names = split_names(es_model_meta(m, "schema.fields"), nf);
    es_vocab *vocab = NULL;
    if (data && (rc = build_vocab(R->cmd, m, data, &vocab)) != 0) goto done;
    for (int t = 0; t < nt && rc == 0; t++) {
        float *x = NULL;
        size_t n;
        int d;
        char tname[64], name[160];
        if (es_diag_model_table(m, t, -1, &x, &n, &d, tname, sizeof tname, &err) != 0) {
            rc = cli_fail(R->cmd, "%s: %s", path, err.msg);
            break;
        }
        snprintf(name, sizeof name, "%s", tname);
        rc = run_set(R, name, t, -1, x, n, d, NULL);
        if (rc == 0 && dump_x && !*dump_x) {
            *dump_x = x, *dump_n = n, *dump_d = d;
            x = NULL;
        }
        es_diag_free(x);
        for (int f = 0; fields && f < nf && rc == 0; f++) {
            if (es_diag_model_table(m, t, f, &x, &n, &d, tname, sizeof tname, &err) != 0) {
                if (err.code == ES_EUNSUPPORTED || err.code == 0) break; /* no per-field rows for this method */
                rc = cli_fail(R->cmd, "%s: %s", path, err.msg);
                break;
            }
            char fname[64];
            if (names && names[f]) snprintf(fname, sizeof fname, "%s", names[f]);
            else snprintf(fname, sizeof fname, "field%d", f);
            snprintf(name, sizeof name, "%s/%s", tname, fname);
            dset *s = NULL;
            rc = run_set(R, name, t, f, x, n, d, &s);
            es_diag_free(x);
            if (rc == 0 && vocab && t == 0) {
                es_err cerr = {0};
                if (es_diag_model_collisions(m, vocab, f, &s->coll, &cerr) == 0) s->have_coll = 1;
            }
        }
    }
done:
    if (names)
        for (int f = 0; f < nf; f++) free(names[f]);
    free(names);
    es_vocab_free(vocab);
    es_model_free(m);
    return rc;
}

/* The float vectors an index keeps: "index.full" (keep_full) or "index.x". */
static int index_tensor(es_file *f, const char **name) {
    static const char *cands[] = {"index.full", "index.x"};
    for (int c = 0; c < 2; c++)
        for (int i = 0; i < es_file_n_tensors(f); i++) {
            const char *nm, *dt;
            int nd;
            uint64_t sh[4], nb;
            es_file_tensor_info(f, i, &nm, &dt, &nd, sh, &nb);
            if (!strcmp(nm, cands[c]) && nd == 2 && !strcmp(dt, "f32")) {
                *name = cands[c];
                return 1;
            }
        }
    return 0;
}

int cmd_diagnose(int argc, char **argv) {
    const char *cmd = "diagnose", *report = NULL, *dump = NULL, *tensor = NULL, *data = NULL;
    const char *files[64];
    int n_files = 0, json = 0, fields = 1, dim = 0, threads = 0;
    long long ll;
    double dv;
    runner R = {.cmd = cmd, .p = es_diag_params_default()};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(diagnose_help, stdout);
            return 0;
        } else if (!strcmp(a, "--json")) json = 1;
        else if (!strcmp(a, "--no-fields")) fields = 0;
        else if (!strcmp(a, "--sample")) {
            if (!(v = cli_next(cmd, argc, argv, &i)) || cli_int(cmd, a, v, 0, INT64_MAX, &ll)) return ES_EXIT_USAGE;
            R.p.sample = (size_t)ll;
        } else if (!strcmp(a, "--k")) {
            if (!(v = cli_next(cmd, argc, argv, &i)) || cli_int(cmd, a, v, 3, 1000, &ll)) return ES_EXIT_USAGE;
            R.p.k = (int)ll;
        } else if (!strcmp(a, "--top-k")) {
            if (!(v = cli_next(cmd, argc, argv, &i)) || cli_int(cmd, a, v, 1, 1 << 20, &ll)) return ES_EXIT_USAGE;
            R.p.top_k = (int)ll;
        } else if (!strcmp(a, "--seed")) {
            if (!(v = cli_next(cmd, argc, argv, &i)) || cli_int(cmd, a, v, 0, INT64_MAX, &ll)) return ES_EXIT_USAGE;
            R.p.seed = (uint64_t)ll;
        } else if (!strcmp(a, "--threads")) {
            if (!(v = cli_next(cmd, argc, argv, &i)) || cli_int(cmd, a, v, 0, 4096, &ll)) return ES_EXIT_USAGE;
            threads = (int)ll;
        } else if (!strcmp(a, "--dim")) {
            if (!(v = cli_next(cmd, argc, argv, &i)) || cli_int(cmd, a, v, 1, 1 << 20, &ll)) return ES_EXIT_USAGE;
            dim = (int)ll;
        } else if (!strcmp(a, "--dup-cos")) {
            if (!(v = cli_next(cmd, argc, argv, &i)) || cli_double(cmd, a, v, -1, 1, &dv)) return ES_EXIT_USAGE;
            R.p.dup_cos = dv;
        } else if (!strcmp(a, "--tensor")) {
            if (!(tensor = cli_next(cmd, argc, argv, &i))) return ES_EXIT_USAGE;
        } else if (!strcmp(a, "--data")) {
            if (!(data = cli_next(cmd, argc, argv, &i))) return ES_EXIT_USAGE;
        } else if (!strcmp(a, "--report")) {
            if (!(report = cli_next(cmd, argc, argv, &i))) return ES_EXIT_USAGE;
        } else if (!strcmp(a, "--dump")) {
            if (!(dump = cli_next(cmd, argc, argv, &i))) return ES_EXIT_USAGE;
        } else if (a[0] == '-' && a[1]) return cli_usage(cmd, "unknown option '%s'", a);
        else if (n_files < 64) files[n_files++] = a;
        else return cli_usage(cmd, "more than 64 files");
    }
    if (n_files == 0) return cli_usage(cmd, "no file given");
    es_set_threads(threads); /* all cores unless --threads */
    /* outputs against inputs */
    char p_svg[4096] = "", p_png[4096] = "", p_fsvg[4096] = "", p_fpng[4096] = "", p_md[4096] = "";
    if (report) {
        snprintf(p_svg, sizeof p_svg, "%s/spectrum.svg", report);
        snprintf(p_png, sizeof p_png, "%s/spectrum.png", report);
        snprintf(p_fsvg, sizeof p_fsvg, "%s/fields.svg", report);
        snprintf(p_fpng, sizeof p_fpng, "%s/fields.png", report);
        snprintf(p_md, sizeof p_md, "%s/summary.md", report);
    }
    cli_path ins[66];
    int n_in = 0;
    for (int i = 0; i < n_files; i++) ins[n_in++] = (cli_path){"FILE", files[i], "an input file"};
    if (data) ins[n_in++] = (cli_path){"--data", data, "the data file"};
    const cli_path outs[] = {{"--dump", dump, NULL},      {"--report", report, NULL}, {"--report", report ? p_svg : NULL, NULL},
                             {"--report", report ? p_png : NULL, NULL}, {"--report", report ? p_fsvg : NULL, NULL},
                             {"--report", report ? p_fpng : NULL, NULL}, {"--report", report ? p_md : NULL, NULL}};
    if (cli_check_outputs(cmd, ins, n_in, outs, 7) != 0) return ES_EXIT_USAGE;

    dsets S = {0};
    R.S = &S;
    const char *kind = "vectors";
    float *dump_x = NULL;
    size_t dump_n = 0;
    int dump_d = 0, rc = 0;
    double t0 = 0;
    {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        t0 = ts.tv_sec + ts.tv_nsec * 1e-9;
    }
    es_file *cf = NULL;
    es_err err = {0};
    const char *type = NULL;
    if (n_files == 1 && !tensor && es_file_open(&cf, files[0], ES_LOAD_NO_VERIFY, &err) == 0) {
        type = es_file_meta(cf, "embstore.type");
        if (type && !strcmp(type, "model")) {
            es_file_close(cf);
            cf = NULL;
            kind = "model";
            rc = diagnose_model(&R, files[0], fields, data, dump ? &dump_x : NULL, &dump_n, &dump_d);
        } else if (type && !strcmp(type, "index")) {
            kind = "index";
            if (!index_tensor(cf, &tensor)) {
                es_file_close(cf);
                return cli_fail(cmd, "%s: this index keeps no float vectors (index.x or index.full); build it with "
                                     "keep_full=1, or diagnose the vectors it was built from", files[0]);
            }
        } else {
            es_file_close(cf);
            return cli_fail(cmd, "%s: an embstore %s file: name the tensor to read with --tensor NAME ('embstore inspect' "
                                 "lists them)", files[0], type ? type : "container");
        }
        if (cf) es_file_close(cf);
    }
    if (strcmp(kind, "model") != 0) {
        if (data) return cli_usage(cmd, "--data is for models");
        es_vec_read_params vp = es_vec_read_params_default();
        vp.dim = dim;
        if (tensor) {
            vp.format = ES_VEC_TENSOR;
            vp.tensor = tensor;
        }
        es_vecs vs;
        if (es_vecs_read_many(&vs, files, n_files, &vp, &err) != 0) return cli_fail(cmd, "%s", err.msg);
        if (!vs.x) {
            es_vecs_free(&vs);
            return cli_fail(cmd, "%s: integer vectors (.ivecs) are ids, not embeddings", files[0]);
        }
        const char *b = strrchr(files[0], '/');
        char name[160];
        snprintf(name, sizeof name, "%s%s%s", tensor && !strcmp(kind, "vectors") ? tensor : (b ? b + 1 : files[0]),
                 n_files > 1 ? " +" : "", n_files > 1 ? "parts" : "");
        rc = run_set(&R, name, -1, -1, vs.x, vs.n, vs.dim, NULL);
        if (rc == 0 && dump) {
            size_t bytes = vs.n * (size_t)vs.dim * sizeof(float);
            dump_x = malloc(bytes ? bytes : 1);
            if (dump_x) memcpy(dump_x, vs.x, bytes), dump_n = vs.n, dump_d = vs.dim;
        }
        es_vecs_free(&vs);
    }
    double total;
    {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        total = ts.tv_sec + ts.tv_nsec * 1e-9 - t0;
    }
    if (rc == 0 && dump) {
        if (!dump_x) rc = cli_fail(cmd, "--dump: nothing to write");
        else if (es_fvecs_write(dump, dump_n, dump_d, dump_x, &err) != 0) rc = cli_fail(cmd, "--dump %s", err.msg);
    }
    /* dump_x came from es_diag_model_table (es_diag_free) or malloc (vectors) */
    if (!strcmp(kind, "model")) es_diag_free(dump_x);
    else free(dump_x);
    if (rc == 0) {
        char title[600];
        const char *b = strrchr(files[0], '/');
        snprintf(title, sizeof title, "embstore diagnose %s", b ? b + 1 : files[0]);
        if (json) {
            printf("{\"file\":");
            json_str(stdout, files[0]);
            printf(",\"kind\":\"%s\",\"params\":{\"k\":%d,\"sample\":%zu,\"seed\":%llu,\"top_k\":%d,\"dead_rel\":%g,\"dup_cos\":%g},"
                   "\"seconds\":%.3f,\"sets\":[",
                   kind, R.p.k, R.p.sample, (unsigned long long)R.p.seed, R.p.top_k, R.p.dead_rel, R.p.dup_cos, total);
            for (int i = 0; i < S.n; i++) {
                if (i) putchar(',');
                json_set(stdout, &S.v[i]);
            }
            printf("]}\n");
        } else {
            printf("%s: %s, %d set%s, %.2f s (sample %zu rows for neighbours, k %d)\n\n", files[0], kind, S.n,
                   S.n == 1 ? "" : "s", total, R.p.sample, R.p.k);
            text_header(stdout, 0);
            for (int i = 0; i < S.n; i++) text_row(stdout, &S.v[i], 0);
            int coll = 0;
            for (int i = 0; i < S.n; i++) coll |= S.v[i].have_coll;
            if (coll) {
                printf("\ncollisions (values of --data):\n  %-24s %9s %9s %9s %8s %7s %10s %10s  %s\n", "field", "values", "rows",
                       "used", "val/row", "load", "colliding", "(weight)", "fullest rows (row:values)");
                for (int i = 0; i < S.n; i++) {
                    const es_diag_collisions *c = &S.v[i].coll;
                    if (!S.v[i].have_coll) continue;
                    printf("  %-24.24s %9llu %9llu %9llu %8.2f %7.3f %10.3f %10.3f  ", S.v[i].name, (unsigned long long)c->values,
                           (unsigned long long)c->rows, (unsigned long long)c->rows_used, c->values_per_row, c->load,
                           c->share_colliding, c->share_colliding_weight);
                    for (int t = 0; t < c->n_top; t++)
                        printf("%s%llu:%llu", t ? " " : "", (unsigned long long)c->top_row[t], (unsigned long long)c->top_values[t]);
                    printf("\n");
                }
            }
            for (int i = 0; i < S.n; i++) {
                const es_diag_report *r = &S.v[i].r;
                if (S.v[i].field >= 0) continue;
                printf("\n%s: %zu x %d, spectrum by %s; sigma_1 %.4g, energy of the top %d %.3f, 90%% in %d, 99%% in %d; "
                       "rank %d; MLE local estimates 5/25/50/75/95%%: %.2f %.2f %.2f %.2f %.2f; norms %.3g .. %.3g "
                       "(median %.3g); %zu zero, %zu exact duplicates\n",
                       S.v[i].name, S.v[i].n, S.v[i].d, r->spec.method, r->spec.sv[0], r->spec.top_k, r->spec.energy_top_k,
                       r->spec.k90, r->spec.k99, r->spec.rank, r->id.local_q[0], r->id.local_q[1], r->id.local_q[2],
                       r->id.local_q[3], r->id.local_q[4], r->rows.norm_min, r->rows.norm_max, r->rows.norm_median,
                       r->rows.zero, r->rows.dup_exact);
                if (!r->id_ok) printf("  intrinsic dimension unavailable: %s\n", r->id_note);
                if (!r->vendi_ok) printf("  Vendi score unavailable: %s\n", r->vendi_note);
            }
        }
        if (report) {
            if (mkdir(report, 0755) != 0 && errno != EEXIST)
                rc = cli_fail(cmd, "%s: cannot create directory: %s", report, strerror(errno));
            int werr = rc ? -1 : write_spectrum_svg(p_svg, &S, title);
            if (!werr) cli_svg_to_png(p_svg, p_png);
            int nfield = 0;
            for (int i = 0; i < S.n; i++) nfield += S.v[i].field >= 0;
            if (!werr && nfield) {
                werr = write_fields_svg(p_fsvg, &S, title);
                if (!werr) cli_svg_to_png(p_fsvg, p_fpng);
            }
            char tmp[4200];
            int slot;
            FILE *mf = werr ? NULL : cli_open_tmp(p_md, tmp, sizeof tmp, &slot);
            if (mf) {
                fprintf(mf, "# %s\n\n%s (%s): %d sets, %.2f s; neighbours on a sample of %zu rows, k = %d.\n\n", title, files[0],
                        kind, S.n, total, R.p.sample, R.p.k);
                fprintf(mf, "![spectrum](spectrum.svg)\n\n");
                if (nfield) fprintf(mf, "![per-field effective rank](fields.svg)\n\n");
                text_header(mf, 1);
                for (int i = 0; i < S.n; i++) text_row(mf, &S.v[i], 1);
                fprintf(mf, "\nerank: RankMe effective rank; k90: singular values holding 90%% of the energy; "
                            "inf condition: rank deficient. Definitions: docs/diagnostics.md.\n");
                if (cli_commit_tmp(mf, tmp, p_md, slot) != 0) werr = -1;
            } else if (!werr) werr = -1;
            if (werr && !rc) rc = cli_fail(cmd, "--report %s: cannot write the report files", report);
        }
    }
    for (int i = 0; i < S.n; i++) es_diag_report_free(&S.v[i].r);
    free(S.v);
    return rc;
}
