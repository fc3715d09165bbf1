/*
 * runcfg.c — the description of a training run that decides its result:
 * every setting that changes what is trained and measured, plus the
 * identity of the data files (size and a checksum of their first MiB).
 *
 * It is written as "key=value" lines, one per setting, in a fixed order.
 * Two users:
 *   - checkpoints record each line as metadata "train.cfg.<key>", and
 *     --resume refuses a command whose description differs (train.c), so a
 *     resumed run can only continue the run it came from;
 *   - bench-storage keeps the description of the run that produced its
 *     cached cells and refuses to mix them with another run's.
 * Keys are the CLI option names (without "--"), or "data.*" / "valid.*" for
 * file identities, so that a difference can be reported as the user typed
 * it: "--model fm vs dlrm; data file size 1234 vs 999".
 *
 * Not part of the description, because they do not change the result or
 * only change how it is reached: threads (bit-for-bit equality is promised
 * for --threads 1 only, see docs), output paths, checkpoint frequency,
 * progress, the command line.
 */
#include "core/fileid.h"
#include "data/schema.h"
#include "train/integrity.h"

#include <math.h>

static void char_name(char *dst, size_t cap, char c) {
    if (c == 0) snprintf(dst, cap, "auto");
    else if (c == '\t') snprintf(dst, cap, "tab");
    else if ((unsigned char)c >= 0x21 && (unsigned char)c < 0x7f) snprintf(dst, cap, "%c", c);
    else snprintf(dst, cap, "0x%02x", (unsigned)(unsigned char)c);
}

static const char *optim_name(const char *s, const char *dflt) {
    if (!s) return dflt;
    if (!strcmp(s, "rowwise-adagrad")) return "rowwise";
    return s;
}

typedef struct {
    char *buf;
    size_t cap, len;
    int overflow;
} sbuf;

static void put(sbuf *b, const char *key, const char *fmt, ...) ES_PRINTF(3, 4);
static void put(sbuf *b, const char *key, const char *fmt, ...) {
    char val[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(val, sizeof val, fmt, ap);
    va_end(ap);
    /* one line per key: a newline inside a value (a column spec, say) would
     * split it, so it is shown as a space */
    for (char *s = val; *s; s++)
        if (*s == '\n' || *s == '\r') *s = ' ';
    int k = snprintf(b->buf + b->len, b->cap - b->len, "%s=%s\n", key, val);
    if (k < 0 || (size_t)k >= b->cap - b->len) {
        b->overflow = 1;
        b->buf[b->len] = 0;
        return;
    }
    b->len += (size_t)k;
}

static void put_layers(sbuf *b, const char *key, const int *v, int n) {
    char s[128] = "default";
    size_t o = 0;
    for (int i = 0; i < n && o < sizeof s; i++) o += (size_t)snprintf(s + o, sizeof s - o, i ? ",%d" : "%d", v[i]);
    put(b, key, "%s", s);
}

static int put_file(sbuf *b, const char *prefix, const char *path, es_err *err) {
    es__file_id id;
    int rc = es__file_id_get(path, 1, &id, err);
    if (rc != ES_OK) return rc;
    /* a dataset cache stands for its source: the same run from the text
     * and from its cache describe alike (and resume each other) */
    uint64_t ssize, shead;
    if (es__esd_source_id(path, &ssize, &shead, NULL) == 1) {
        id.size = ssize;
        id.head_hash = shead;
    }
    char key[32];
    snprintf(key, sizeof key, "%s.size", prefix);
    put(b, key, "%llu", (unsigned long long)id.size);
    snprintf(key, sizeof key, "%s.head", prefix);
    put(b, key, "%016llx", (unsigned long long)id.head_hash);
    return ES_OK;
}

int es__train_describe(const es_train_params *p, const es_reader_params *rp, char *buf, size_t cap, es_err *err) {
    if (!p || !rp || !buf || cap == 0) return es__err(err, ES_EINVAL, "describe: NULL argument");
    sbuf b = {buf, cap, 0, 0};
    buf[0] = 0;
    int rc;
    if (!p->train_path) return es__err(err, ES_EINVAL, "no training file given");
    if ((rc = put_file(&b, "data", p->train_path, err)) != ES_OK) return rc;
    if (p->valid_path && (rc = put_file(&b, "valid", p->valid_path, err)) != ES_OK) return rc;
    es_net_kind kind;
    put(&b, "model", "%s", p->model && es__net_kind_parse(p->model, &kind) == 0 ? es__net_kind_name(kind) : p->model ? p->model : "");
    put(&b, "dim", "%d", p->dim);
    put_layers(&b, "bottom", p->bottom, p->n_bottom);
    put_layers(&b, "top", p->top, p->n_top);
    if (p->n_cross > 0) put(&b, "cross", "%d", p->n_cross);
    else put(&b, "cross", "default");
    /* only when set, so that older checkpoints still resume */
    if (p->norm_rows) put(&b, "norm-rows", "%d", p->norm_rows);
    if (p->pairs_only) put(&b, "pairs-only", "%d", p->pairs_only);
    put(&b, "storage", "%s", p->storage ? p->storage : "");
    put(&b, "budget", "%.17g", p->budget);
    put(&b, "storage-opts", "%s", p->storage_opts ? p->storage_opts : "");
    put(&b, "epochs", "%d", p->epochs);
    put(&b, "batch", "%d", p->batch);
    put(&b, "lr", "%.9g", (double)p->lr);
    put(&b, "optim", "%s", optim_name(p->optim, "adam"));
    put(&b, "emb-lr", "%.9g", (double)p->emb_lr);
    put(&b, "emb-optim", "%s", optim_name(p->emb_optim, "rowwise"));
    /* Written only when they apply / differ from the default, so that
     * checkpoints from before these settings still resume. */
    if (p->emb_l2 != 0) put(&b, "emb-l2", "%.9g", (double)p->emb_l2);
    if (p->emb_l2_freq != 0) put(&b, "emb-l2-freq", "%.9g", (double)p->emb_l2_freq);
    if (p->emb_init_acc != 0) put(&b, "emb-init-acc", "%.9g", (double)p->emb_init_acc);
    if (p->emb_init_scale != 0) put(&b, "emb-init-scale", "%.9g", (double)p->emb_init_scale);
    if (p->emb_init_shift != 0) put(&b, "emb-init-shift", "%.9g", (double)p->emb_init_shift);
    if (p->emb_optim && !strcmp(p->emb_optim, "ftrl")) {
        put(&b, "ftrl-alpha", "%.9g", (double)p->ftrl_alpha);
        put(&b, "ftrl-beta", "%.9g", (double)p->ftrl_beta);
        put(&b, "ftrl-l1", "%.9g", (double)p->ftrl_l1);
        put(&b, "ftrl-l2", "%.9g", (double)p->ftrl_l2);
    }
    put(&b, "weight-decay", "%.9g", (double)p->weight_decay);
    if (p->dropout != 0) put(&b, "dropout", "%.9g", (double)p->dropout); /* only when set: older checkpoints resume */
    if (p->matryoshka) put(&b, "matryoshka", "%s", p->matryoshka);
    if (p->matryoshka && p->matryoshka_weights) put(&b, "matryoshka-weights", "%s", p->matryoshka_weights);
    if (p->precision && strcmp(p->precision, "fp32")) put(&b, "precision", "%s", p->precision);
    if (p->qtrain) put(&b, "qtrain", "%s", p->qtrain);
    put(&b, "seed", "%llu", (unsigned long long)p->seed);
    put(&b, "max-rows", "%llu", (unsigned long long)p->max_rows);
    put(&b, "valid-frac", "%.17g", p->valid_path ? 0.0 : p->valid_frac);
    put(&b, "early-stop", "%d", p->early_stop);
    put(&b, "eval-every", "%d", p->early_stop ? p->eval_every : 0);
    put(&b, "stop-metric", "%s", !p->early_stop ? "" : p->stop_metric ? p->stop_metric : "logloss");
    if (p->refit > 0) put(&b, "refit", "1"); /* only when on: checkpointed runs never refit */
    char c[16];
    put(&b, "format", "%s", es__format_name(rp->format));
    char_name(c, sizeof c, rp->delim);
    put(&b, "delim", "%s", c);
    put(&b, "header", "%s", rp->header ? "yes" : "no");
    put(&b, "columns", "%s", rp->columns ? rp->columns : "");
    char_name(c, sizeof c, rp->multi_sep);
    put(&b, "multi-sep", "%s", c);
    put(&b, "pool", "%s", rp->pool == ES_POOL_MEAN ? "mean" : "sum");
    if (rp->num_cat > 0) put(&b, "num-cat", "1"); /* only when on, so older checkpoints resume */
    if (isfinite(rp->label_threshold)) put(&b, "label-threshold", "%.17g", rp->label_threshold);
    else put(&b, "label-threshold", "none");
    put(&b, "skip-bad", "%s", rp->skip_bad ? "yes" : "no");
    put(&b, "max-line", "%zu", rp->max_line ? rp->max_line : (size_t)1 << 20);
    put(&b, "n-fields-hint", "%d", rp->n_fields_hint);
    if (b.overflow) return es__err(err, ES_ERANGE, "describe: the description needs more than %zu bytes", cap);
    return ES_OK;
}

int es_train_describe(const es_train_params *p, char *buf, size_t cap, es_err *err) {
    if (!p) return es__err(err, ES_EINVAL, "describe: NULL argument");
    es_train_params q = *p; /* the automatic values as the run resolves them */
    es_train_params_resolve(&q);
    return es__train_describe(&q, &q.reader, buf, cap, err);
}

/* ---- comparing two descriptions ------------------------------------------------ */

/* Value of `key` in a description (pointer into it, length in *n), NULL if absent. */
static const char *find_key(const char *text, const char *key, size_t klen, size_t *n) {
    for (const char *s = text; s && *s;) {
        const char *nl = strchr(s, '\n');
        size_t len = nl ? (size_t)(nl - s) : strlen(s);
        if (len > klen && s[klen] == '=' && !memcmp(s, key, klen)) {
            *n = len - klen - 1;
            return s + klen + 1;
        }
        s = nl ? nl + 1 : NULL;
    }
    return NULL;
}

static int ignored(const char *ignore, const char *key, size_t klen) {
    for (const char *s = ignore; s && *s;) {
        const char *e = strchr(s, ',');
        size_t len = e ? (size_t)(e - s) : strlen(s);
        if (len == klen && !memcmp(s, key, klen)) return 1;
        s = e ? e + 1 : NULL;
    }
    return 0;
}

static void display(char *dst, size_t cap, const char *key, size_t klen) {
    static const struct {
        const char *key, *show;
    } names[] = {{"data.size", "data file size"},
                 {"data.head", "data file checksum (first MiB)"},
                 {"valid.size", "--valid file size"},
                 {"valid.head", "--valid file checksum (first MiB)"},
                 {"header", "header line"},
                 {"max-line", "longest line accepted"},
                 {"n-fields-hint", "libffm field count"}};
    for (size_t i = 0; i < ES_ARRAY_LEN(names); i++)
        if (strlen(names[i].key) == klen && !memcmp(names[i].key, key, klen)) {
            snprintf(dst, cap, "%s", names[i].show);
            return;
        }
    snprintf(dst, cap, "--%.*s", (int)klen, key);
}

/* Append one difference of key (in a: av/an, in b: bv/bn). */
static void note(char *out, size_t cap, size_t *o, int *count, const char *key, size_t klen, const char *av, size_t an,
                 const char *bv, size_t bn) {
    char what[64];
    display(what, sizeof what, key, klen);
    if (out && cap > 0 && *o < cap) {
        int k = snprintf(out + *o, cap - *o, "%s%s %.*s vs %.*s", *count ? "; " : "", what, av ? (int)an : 12,
                         av ? av : "(not recorded)", bv ? (int)bn : 6, bv ? bv : "(none)");
        if (k > 0) *o += ES_MIN((size_t)k, cap - *o - 1);
    }
    (*count)++;
}

int es_train_describe_diff(const char *a, const char *b, const char *ignore, char *out, size_t cap) {
    size_t o = 0;
    int count = 0;
    if (out && cap) out[0] = 0;
    if (!a) a = "";
    if (!b) b = "";
    /* keys of b in b's order, then keys only a has */
    for (int pass = 0; pass < 2; pass++) {
        const char *text = pass == 0 ? b : a;
        for (const char *s = text; *s;) {
            const char *nl = strchr(s, '\n');
            size_t len = nl ? (size_t)(nl - s) : strlen(s);
            const char *eq = memchr(s, '=', len);
            if (eq) {
                size_t klen = (size_t)(eq - s), an = 0, bn = 0;
                if (!ignored(ignore, s, klen)) {
                    const char *av = find_key(a, s, klen, &an), *bv = find_key(b, s, klen, &bn);
                    if (pass == 0 ? (!av || an != bn || memcmp(av, bv, an) != 0) : !bv)
                        note(out, cap, &o, &count, s, klen, av, an, bv, bn);
                }
            }
            if (!nl) break;
            s = nl + 1;
        }
    }
    return count;
}

/* ---- checkpoints ------------------------------------------------------------------ */

#define CFG_PREFIX "train.cfg."

int es__train_cfg_record(es_model *m, const char *cfg) {
    char key[160];
    for (const char *s = cfg; *s;) {
        const char *nl = strchr(s, '\n');
        size_t len = nl ? (size_t)(nl - s) : strlen(s);
        const char *eq = memchr(s, '=', len);
        if (eq && (size_t)(eq - s) + sizeof CFG_PREFIX < sizeof key) {
            snprintf(key, sizeof key, CFG_PREFIX "%.*s", (int)(eq - s), s);
            char *val = es__malloc(len - (size_t)(eq - s));
            if (!val) return ES_ENOMEM;
            memcpy(val, eq + 1, len - (size_t)(eq - s) - 1);
            val[len - (size_t)(eq - s) - 1] = 0;
            int rc = es__model_set_meta(m, key, val);
            es__free(val);
            if (rc != ES_OK) return rc;
        }
        if (!nl) break;
        s = nl + 1;
    }
    return ES_OK;
}

int es__train_cfg_check_resume(const es_model *m, const char *path, const char *cfg, es_err *err) {
    if (!es_model_meta(m, CFG_PREFIX "data.size"))
        return es__err(err, ES_EINVAL,
                       "%s: the checkpoint records no settings (made by an older embstore?), so resuming it could "
                       "continue another run; delete it to start over",
                       path);
    /* the checkpoint's description: the recorded value of each key of the
     * command's (the recorded set has the same keys unless versions differ) */
    size_t cap = strlen(cfg) + 8192, o = 0;
    char *old = es__malloc(cap);
    if (!old) return es__err(err, ES_ENOMEM, "out of memory");
    old[0] = 0;
    for (int i = 0; i < m->n_meta; i++) {
        const char *k = m->meta_key[i];
        if (strncmp(k, CFG_PREFIX, sizeof CFG_PREFIX - 1) != 0) continue;
        int w = snprintf(old + o, cap - o, "%s=%s\n", k + sizeof CFG_PREFIX - 1, m->meta_val[i]);
        if (w < 0 || (size_t)w >= cap - o) break;
        o += (size_t)w;
    }
    char diff[400];
    int n = es_train_describe_diff(old, cfg, ES__RESUME_MAY_CHANGE, diff, sizeof diff);
    es__free(old);
    if (n == 0) return ES_OK;
    return es__err(err, ES_EINVAL,
                   "%s was made by another run (checkpoint vs this command): %s. Resume with the command that made it, "
                   "or delete %s to start over",
                   path, diff, path);
}
