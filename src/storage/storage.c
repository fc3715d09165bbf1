/*
 * storage.c — the generic half of the storage interface: parameter
 * defaults and checks, budget resolution, create/free by method name, the
 * byte-accounting check every method must pass, thin wrappers over the
 * method table, and small helpers methods share (option parsing, salts).
 */
#include "storage/storage.h"

#include <math.h>
#include <stdarg.h>


es_storage_params es__storage_params_default(void) {
    es_storage_params p;
    memset(&p, 0, sizeof p);
    p.method = "hash";
    p.n_fields = 0;
    p.dim = 16;
    p.max_batch = 256;
    p.budget = 0;
    p.seed = 1;
    p.init_scale = 0.05f;
    p.opt.kind = ES_OPT_ROWWISE_ADAGRAD;
    p.opt.lr = 0.05f;
    p.opt.eps = 1e-8f;
    p.opt.beta1 = 0.9f;
    p.opt.beta2 = 0.999f;
    p.opt.init_acc = 0.0f;
    es__optim_ftrl_defaults(&p.opt);
    p.opts = NULL;
    return p;
}

size_t es__storage_full_bytes(const es_vocab *vocab, int dim, int min_count) {
    if (!vocab || dim <= 0) return 0;
    if (min_count < 1) min_count = 1;
    size_t rows = 0, bytes;
    for (int f = 0; f < es_vocab_n_fields(vocab); f++) {
        uint64_t n = es__vocab_distinct_min(vocab, f, (uint64_t)min_count);
        if (n >= SIZE_MAX || !es__add_size(rows, (size_t)n + 1, &rows)) return SIZE_MAX;
    }
    if (!es__mul_size(rows, (size_t)dim * sizeof(float), &bytes)) return SIZE_MAX;
    return bytes;
}

uint64_t es__storage_salt(uint64_t seed, int field, int chunk) {
    /* Two rounds of an invertible mixer: distinct (field, chunk) pairs give
     * distinct salts for a seed, and nearby seeds give unrelated salts. */
    uint64_t fc = ((uint64_t)(uint32_t)field << 32) | (uint32_t)chunk;
    return es__mix64(es__mix64(seed) ^ es__mix64(fc + UINT64_C(0x5bd1e9955bd1e995)));
}

/* ---- method options ---------------------------------------------------------------
 * opts "k=v,k=v" are parsed once against the method's table (es__opt_spec);
 * methods read the typed values and record what they resolve, and
 * meta_write joins the recorded values in table order, in the syntax
 * opts_parse reads, so a saved meta always loads back. */

static int unknown_method(const char *method, es_err *err) {
    char names[512];
    size_t o = 0;
    names[0] = 0;
    for (int i = 0; i < es__storage_n_methods() && o < sizeof names; i++)
        o += (size_t)snprintf(names + o, sizeof names - o, "%s%s", i ? ", " : "", es__storage_method_at(i)->name);
    return es__err(err, ES_EINVAL, "storage: unknown method '%s' (known: %s)", method, names);
}

static void free_optv(es__opt_val *v, int n) {
    for (int i = 0; v && i < n; i++) es__free(v[i].rec);
    es__free(v);
}

/* Free a storage whose method state is already gone. */
static void free_shell(es_storage *s) {
    free_optv(s->optv, s->ops->n_opts);
    es__free((char *)s->p.method);
    es__free((char *)s->p.opts);
    es__free(s);
}

static int spec_find(const es_storage_ops *ops, const char *key, size_t klen) {
    for (int i = 0; i < ops->n_opts; i++)
        if (strlen(ops->opts[i].name) == klen && memcmp(ops->opts[i].name, key, klen) == 0) return i;
    return -1;
}

/* "(expected ...)" text of an option. */
static void spec_expected(const es__opt_spec *o, char *buf, size_t cap) {
    switch (o->type) {
    case ES_OPT_UINT:
        snprintf(buf, cap, "an integer in [%llu, %llu]", (unsigned long long)o->lo, (unsigned long long)o->hi);
        break;
    case ES_OPT_FLOAT:
        snprintf(buf, cap, "a number in %c%g, %g%c", o->flags & ES_OPT_LO_OPEN ? '(' : '[', o->flo, o->fhi,
                 o->flags & ES_OPT_HI_OPEN ? ')' : ']');
        break;
    case ES_OPT_ENUM: {
        size_t n = (size_t)snprintf(buf, cap, "one of ");
        for (const char *c = o->choices; *c && n < cap; c++) n += (size_t)snprintf(buf + n, cap - n, *c == '|' ? ", " : "%c", *c);
        break;
    }
    case ES_OPT_LIST:
        snprintf(buf, cap, "integers in [%llu, %llu], groups separated by ':', members by '/'", (unsigned long long)o->lo,
                 (unsigned long long)o->hi);
        break;
    }
}

/* Digits only (no sign, no spaces), overflow-checked over the full uint64
 * range, so a seed written into meta always reads back. */
static int parse_u64(const char *v, size_t len, uint64_t *out) {
    uint64_t x = 0;
    if (len == 0 || len > 20) return 0;
    for (size_t i = 0; i < len; i++) {
        unsigned d = (unsigned)(v[i] - '0');
        if (d > 9 || __builtin_mul_overflow(x, 10, &x) || __builtin_add_overflow(x, d, &x)) return 0;
    }
    *out = x;
    return 1;
}

/* Parse one value of option o; NULL, or the reason it is invalid. */
static const char *value_parse(const es__opt_spec *o, const char *v, size_t len, uint64_t *u, double *f) {
    switch (o->type) {
    case ES_OPT_UINT:
        if (!parse_u64(v, len, u)) return "not an unsigned integer";
        return *u < o->lo || *u > o->hi ? "out of range" : NULL;
    case ES_OPT_FLOAT:
        if (!es__parse_double(v, len, f) || !isfinite(*f)) return "not a number";
        if (*f < o->flo || *f > o->fhi || ((o->flags & ES_OPT_LO_OPEN) && *f == o->flo) ||
            ((o->flags & ES_OPT_HI_OPEN) && *f == o->fhi))
            return "out of range";
        return NULL;
    case ES_OPT_ENUM: {
        uint64_t k = 0;
        for (const char *c = o->choices;; k++) {
            const char *e = strchr(c, '|');
            size_t n = e ? (size_t)(e - c) : strlen(c);
            if (n == len && memcmp(c, v, len) == 0) {
                *u = k;
                return NULL;
            }
            if (!e) return "not one of the choices";
            c = e + 1;
        }
    }
    case ES_OPT_LIST: {
        const char *p = v, *end = v + len;
        for (;;) {
            const char *q = p;
            while (q < end && *q != ':' && *q != '/') q++;
            uint64_t x;
            if (!parse_u64(p, (size_t)(q - p), &x)) return "not a list of unsigned integers";
            if (x < o->lo || x > o->hi) return "a member is out of range";
            if (q == end) return NULL;
            p = q + 1;
        }
    }
    }
    return "unknown option type";
}

static int opt_error(const char *method, const es__opt_spec *o, const char *key, size_t klen, const char *v, size_t len,
                     const char *reason, es_err *err) {
    char exp[256];
    spec_expected(o, exp, sizeof exp);
    return es__err(err, ES_EINVAL, "%s: option %.*s=%.*s: %s (expected %s)", method, (int)ES_MIN(klen, 64), key,
                   (int)ES_MIN(len, 200), v, reason, exp);
}

/* Parse opts against ops' table into *out ([n_opts], texts pointing into opts). */
static int opts_parse(const es_storage_ops *ops, const char *opts, es__opt_val **out, es_err *err) {
    es__opt_val *v = es__calloc((size_t)ES_MAX(ops->n_opts, 1), sizeof *v);
    *out = NULL;
    if (!v) return es__err(err, ES_ENOMEM, "%s: out of memory for options", ops->name);
    for (const char *p = opts; p && *p;) {
        const char *end = strchr(p, ',');
        if (!end) end = p + strlen(p);
        const char *next = *end ? end + 1 : end;
        if (end == p) { /* empty item: ",," or a trailing comma */
            p = next;
            continue;
        }
        const char *eq = memchr(p, '=', (size_t)(end - p));
        const size_t klen = eq ? (size_t)(eq - p) : (size_t)(end - p);
        const char *val = eq ? eq + 1 : end;
        const size_t len = (size_t)(end - val);
        const int i = spec_find(ops, p, klen);
        char known[512];
        size_t o = 0;
        known[0] = 0;
        for (int k = 0; k < ops->n_opts && o < sizeof known; k++)
            o += (size_t)snprintf(known + o, sizeof known - o, "%s%s", k ? ", " : "", ops->opts[k].name);
        int rc = ES_OK;
        if (i < 0)
            rc = es__err(err, ES_EINVAL, "%s: option %.*s=%.*s: unknown option (expected one of: %s)", ops->name,
                         (int)ES_MIN(klen, 64), p, (int)ES_MIN(len, 200), val, ops->n_opts ? known : "no options");
        else if (!eq)
            rc = opt_error(ops->name, &ops->opts[i], p, klen, val, len, "no value", err);
        uint64_t u = 0;
        double f = 0;
        const char *why = rc ? NULL : value_parse(&ops->opts[i], val, len, &u, &f);
        if (why) rc = opt_error(ops->name, &ops->opts[i], p, klen, val, len, why, err);
        if (rc == ES_OK && v[i].text) {
            /* given twice: fine when both say the same */
            int same = ops->opts[i].type == ES_OPT_FLOAT ? v[i].f == f
                       : ops->opts[i].type == ES_OPT_LIST ? v[i].len == len && memcmp(v[i].text, val, len) == 0
                                                           : v[i].u == u;
            if (!same)
                rc = opt_error(ops->name, &ops->opts[i], p, klen, val, len, "given twice with different values", err);
        }
        if (rc != ES_OK) {
            es__free(v);
            return rc;
        }
        if (!v[i].text) {
            v[i].text = val;
            v[i].len = len;
            v[i].u = u;
            v[i].f = f;
        }
        p = next;
    }
    /* defaults for the options not given */
    for (int i = 0; i < ops->n_opts; i++)
        if (!v[i].text && ops->opts[i].def) {
            const char *why = value_parse(&ops->opts[i], ops->opts[i].def, strlen(ops->opts[i].def), &v[i].u, &v[i].f);
            ES_ASSERT(why == NULL); /* a bad default in a method's table */
        }
    *out = v;
    return ES_OK;
}

/* The index of key in s's table, which must have type t. */
static int opt_index(const es_storage *s, const char *key, es__opt_type t) {
    const int i = spec_find(s->ops, key, strlen(key));
    ES_ASSERT(i >= 0 && s->ops->opts[i].type == t);
    return i;
}

int es__storage_opt_given(const es_storage *s, const char *key) {
    const int i = spec_find(s->ops, key, strlen(key));
    ES_ASSERT(i >= 0);
    return s->optv[i].text != NULL;
}

uint64_t es__storage_opt_u64(const es_storage *s, const char *key) { return s->optv[opt_index(s, key, ES_OPT_UINT)].u; }

int es__storage_opt_int(const es_storage *s, const char *key) {
    const int i = opt_index(s, key, ES_OPT_UINT);
    ES_ASSERT(s->ops->opts[i].hi <= INT32_MAX);
    return (int)s->optv[i].u;
}

double es__storage_opt_f64(const es_storage *s, const char *key) { return s->optv[opt_index(s, key, ES_OPT_FLOAT)].f; }

int es__storage_opt_enum(const es_storage *s, const char *key) { return (int)s->optv[opt_index(s, key, ES_OPT_ENUM)].u; }

const char *es__storage_opt_text(const es_storage *s, const char *key, size_t *len) {
    const int i = spec_find(s->ops, key, strlen(key));
    ES_ASSERT(i >= 0);
    *len = s->optv[i].len;
    return s->optv[i].text;
}

int es__storage_opt_list(const es_storage *s, const char *key, int n, int g, uint64_t *out, int *found, es_err *err) {
    const int i = opt_index(s, key, ES_OPT_LIST);
    const es__opt_spec *o = &s->ops->opts[i];
    const char *v = s->optv[i].text;
    const size_t len = s->optv[i].len;
    *found = 0;
    if (!v) return ES_OK;
    const char *p = v, *end = v + len;
    const long total = (long)n * g;
    long k = 0;
    for (;;) { /* members were checked by opts_parse: only the shape is left */
        const char *q = p;
        while (q < end && *q != ':' && *q != '/') q++;
        uint64_t x = 0;
        if (k >= total || !parse_u64(p, (size_t)(q - p), &x)) break;
        const char want = (k % g == g - 1) ? ':' : '/';
        out[k++] = x;
        if (q == end) {
            if (k == total) {
                *found = 1;
                return ES_OK;
            }
            break;
        }
        if (*q != want) break;
        p = q + 1;
    }
    char why[96];
    snprintf(why, sizeof why, "needs %d group(s) of %d", n, g);
    return opt_error(s->p.method, o, key, strlen(key), v, len, why, err);
}

int es__storage_opt_set(es_storage *s, const char *key, es_err *err, const char *fmt, ...) {
    const int i = spec_find(s->ops, key, strlen(key));
    ES_ASSERT(i >= 0);
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    ES_ASSERT(n >= 0);
    char *t = es__malloc((size_t)n + 1);
    if (!t) return es__err(err, ES_ENOMEM, "%s: out of memory for option %s", s->p.method, key);
    va_start(ap, fmt);
    vsnprintf(t, (size_t)n + 1, fmt, ap);
    va_end(ap);
    uint64_t u;
    double f;
    ES_ASSERT(value_parse(&s->ops->opts[i], t, (size_t)n, &u, &f) == NULL); /* what is saved must load */
    es__free(s->optv[i].rec);
    s->optv[i].rec = t;
    return ES_OK;
}

int es__storage_opt_set_u64(es_storage *s, const char *key, uint64_t v, es_err *err) {
    return es__storage_opt_set(s, key, err, "%llu", (unsigned long long)v);
}

int es__storage_opt_set_list(es_storage *s, const char *key, const uint64_t *v, int n, int g, es_err *err) {
    size_t cap = (size_t)n * (size_t)g * 21 + 1, o = 0;
    char *t = es__malloc(cap);
    if (!t) return es__err(err, ES_ENOMEM, "%s: out of memory for option %s", s->p.method, key);
    t[0] = 0;
    for (long i = 0; i < (long)n * g; i++)
        o += (size_t)snprintf(t + o, cap - o, "%s%llu", i == 0 ? "" : (i % g == 0) ? ":" : "/", (unsigned long long)v[i]);
    int rc = es__storage_opt_set(s, key, err, "%s", t);
    es__free(t);
    return rc;
}

const char *es__storage_opt_value(const es_storage *s, int i, char *buf, size_t cap) {
    const es__opt_val *v = &s->optv[i];
    if (v->rec) snprintf(buf, cap, "%s", v->rec);
    else if (v->text) snprintf(buf, cap, "%.*s", (int)ES_MIN(v->len, (size_t)INT32_MAX), v->text);
    else snprintf(buf, cap, "%s", s->ops->opts[i].def ? s->ops->opts[i].def : "");
    return buf;
}

/* s->meta: the recorded values, "k=v" in table order. */
static int meta_write(es_storage *s, es_err *err) {
    size_t o = 0;
    const size_t cap = sizeof s->meta;
    s->meta[0] = 0;
    for (int i = 0; i < s->ops->n_opts && o < cap; i++)
        if (s->optv[i].rec)
            o += (size_t)snprintf(s->meta + o, cap - o, "%s%s=%s", o ? "," : "", s->ops->opts[i].name, s->optv[i].rec);
    if (o >= cap) {
        s->meta[0] = 0;
        return es__err(err, ES_ERANGE, "%s: the resolved options of %d fields do not fit the %zu-byte metadata%s", s->p.method,
                       s->p.n_fields, cap, spec_find(s->ops, "share", 5) >= 0 ? "; use share=1" : "");
    }
    return ES_OK;
}

int es__storage_default_budget(const char *method, const char *opts, double *budget, es_err *err) {
    const es_storage_ops *ops = es__storage_find(method);
    *budget = 0;
    if (!ops) return ES_OK; /* create names the unknown method */
    es__opt_val *v;
    int rc = opts_parse(ops, opts, &v, err);
    if (rc) return rc;
    int sized = 0;
    for (int i = 0; i < ops->n_opts; i++) sized |= v[i].text && (ops->opts[i].flags & ES_OPT_SIZES);
    free_optv(v, ops->n_opts);
    *budget = sized ? 0 : ops->default_budget;
    return ES_OK;
}

int es__storage_min_count(const es_storage_params *p) {
    const es_storage_ops *ops = es__storage_find(p->method);
    const int i = ops ? spec_find(ops, "min_count", 9) : -1;
    if (i < 0) return 1;
    es__opt_val *v;
    es_err e;
    if (opts_parse(ops, p->opts, &v, &e) != ES_OK) return 1; /* create reports it */
    uint64_t mc = v[i].u;
    free_optv(v, ops->n_opts);
    return mc < 1 ? 1 : mc > INT32_MAX ? INT32_MAX : (int)mc;
}

/* Does "k=v,..." s give key (klen bytes)? */
static int has_key(const char *s, const char *key, size_t klen) {
    for (const char *p = s; p && *p;) {
        const char *end = strchr(p, ',');
        if (!end) end = p + strlen(p);
        const char *eq = memchr(p, '=', (size_t)(end - p));
        if (eq && (size_t)(eq - p) == klen && memcmp(p, key, klen) == 0) return 1;
        p = *end ? end + 1 : end;
    }
    return 0;
}

char *es__storage_load_opts(const char *method, const char *resolved, const char *user, const char *legacy) {
    const es_storage_ops *ops = es__storage_find(method);
    const char *src[3] = {resolved ? resolved : "", user ? user : "", legacy ? legacy : ""};
    size_t cap = strlen(src[0]) + strlen(src[1]) + strlen(src[2]) + 4, o = 0;
    char *out = es__malloc(cap);
    if (!out) return NULL;
    out[0] = 0;
    for (int k = 0; k < 3; k++)
        for (const char *p = src[k]; *p;) {
            const char *end = strchr(p, ',');
            if (!end) end = p + strlen(p);
            const char *eq = memchr(p, '=', (size_t)(end - p));
            const size_t klen = eq ? (size_t)(eq - p) : (size_t)(end - p);
            /* resolved is kept whole; later sources add the keys the method
             * knows that are not there yet (older files' opts may carry keys
             * of other methods, ignored when they were written) */
            int keep = end > p && (k == 0 || !ops || (spec_find(ops, p, klen) >= 0 && !has_key(out, p, klen)));
            if (keep) o += (size_t)snprintf(out + o, cap - o, "%s%.*s", o ? "," : "", (int)(end - p), p);
            p = *end ? end + 1 : end;
        }
    return out;
}

static size_t help_method(const es_storage_ops *ops, char *buf, size_t cap, size_t o) {
#define HP(...) o += (size_t)snprintf(o < cap ? buf + o : NULL, o < cap ? cap - o : 0, __VA_ARGS__)
    static const char *const tn[] = {"int", "number", "choice", "list"};
    HP("%s: %s\n", ops->name, ops->summary);
    if (ops->default_budget > 0) HP("  default budget: %g of the full table\n", ops->default_budget);
    else HP("  default budget: none (the method sizes itself)\n");
    if (ops->n_opts == 0) HP("  (no options)\n");
    for (int i = 0; i < ops->n_opts; i++) {
        const es__opt_spec *x = &ops->opts[i];
        char exp[256];
        spec_expected(x, exp, sizeof exp);
        HP("  %-13s %-6s default %-8s %s%s\n                       %s\n", x->name, tn[x->type], x->def ? x->def : "-", x->help,
           x->flags & ES_OPT_SIZES ? " (sizes the table: no default budget)" : "", exp);
    }
#undef HP
    return o;
}

int es__storage_help(const char *method, char *buf, size_t cap, es_err *err) {
    size_t o = 0;
    if (cap) buf[0] = 0;
    if (method) {
        const es_storage_ops *ops = es__storage_find(method);
        if (!ops) return unknown_method(method, err);
        o = help_method(ops, buf, cap, o);
    } else {
        for (int i = 0; i < es__storage_n_methods(); i++) {
            if (i) o += (size_t)snprintf(o < cap ? buf + o : NULL, o < cap ? cap - o : 0, "\n");
            o = help_method(es__storage_method_at(i), buf, cap, o);
        }
    }
    return o > INT32_MAX ? INT32_MAX : (int)o;
}

int es_storage_help(const char *method, char *buf, size_t cap, es_err *err) { return es__storage_help(method, buf, cap, err); }

int es_storage_has_option(const char *method, const char *key) {
    const es_storage_ops *ops = es__storage_find(method);
    if (!ops || !key) return ES_EINVAL;
    return spec_find(ops, key, strlen(key)) >= 0;
}

/* Check the fields every method relies on, naming the bad one. */
static int check_params(const es_storage_params *p, const es_vocab *vocab, es_err *err) {
    if (!p->method || !*p->method) return es__err(err, ES_EINVAL, "storage: no method given");
    if (p->n_fields < 1 || p->n_fields > (1 << 20))
        return es__err(err, ES_EINVAL, "storage: n_fields must be in [1, 1048576], got %d", p->n_fields);
    if (p->dim < 1 || p->dim > (1 << 16)) return es__err(err, ES_EINVAL, "storage: dim must be in [1, 65536], got %d", p->dim);
    if (p->max_batch < 1 || p->max_batch > (1 << 24))
        return es__err(err, ES_EINVAL, "storage: max_batch must be in [1, 16777216], got %d", p->max_batch);
    if (!(p->budget >= 0) || !isfinite(p->budget))
        return es__err(err, ES_EINVAL, "storage: budget must be a finite number >= 0, got %g", p->budget);
    if (!(p->init_scale >= 0) || !isfinite(p->init_scale))
        return es__err(err, ES_EINVAL, "storage: init_scale must be >= 0, got %g", (double)p->init_scale);
    if (!isfinite(p->init_shift))
        return es__err(err, ES_EINVAL, "storage: init_shift must be finite, got %g", (double)p->init_shift);
    if (p->opt.kind != ES_OPT_SGD && p->opt.kind != ES_OPT_ADAGRAD && p->opt.kind != ES_OPT_ROWWISE_ADAGRAD &&
        p->opt.kind != ES_OPT_FTRL)
        return es__err(err, ES_EINVAL,
                       "storage: embedding tables train with sgd, adagrad, rowwise-adagrad or ftrl (optimizer %d)",
                       (int)p->opt.kind);
    if (p->opt.kind == ES_OPT_FTRL) {
        const es_optim_params *o = &p->opt;
        if (!(o->ftrl_alpha > 0) || !isfinite(o->ftrl_alpha))
            return es__err(err, ES_EINVAL, "storage: ftrl alpha must be > 0, got %g", (double)o->ftrl_alpha);
        if (!(o->ftrl_beta >= 0) || !isfinite(o->ftrl_beta) || !(o->ftrl_l1 >= 0) || !isfinite(o->ftrl_l1) ||
            !(o->ftrl_l2 >= 0) || !isfinite(o->ftrl_l2))
            return es__err(err, ES_EINVAL, "storage: ftrl beta, l1 and l2 must be finite numbers >= 0, got %g, %g, %g",
                           (double)o->ftrl_beta, (double)o->ftrl_l1, (double)o->ftrl_l2);
        if (o->row_l2 != 0)
            return es__err(err, ES_EINVAL,
                           "storage: emb_l2 (lazy L2) does not apply to ftrl, whose L2 is in its closed form: use ftrl_l2");
    }
    if (!(p->opt.row_l2 >= 0) || !isfinite(p->opt.row_l2))
        return es__err(err, ES_EINVAL, "storage: emb_l2 must be a finite number >= 0, got %g", (double)p->opt.row_l2);
    if (p->opt.row_l2 > 0 && !((double)p->opt.lr * (double)p->opt.row_l2 < 1.0))
        return es__err(err, ES_EINVAL, "storage: emb_l2 * emb_lr must be < 1 (the per-step decay factor is 1 - lr * l2), got %g * %g",
                       (double)p->opt.row_l2, (double)p->opt.lr);
    if (!(p->opt.row_l2_freq >= 0) || !(p->opt.row_l2_freq <= 4))
        return es__err(err, ES_EINVAL, "storage: emb_l2_freq (the exponent of frequency-aware L2) must be in [0, 4], got %g",
                       (double)p->opt.row_l2_freq);
    if (p->opt.row_l2_freq > 0 && p->opt.kind == ES_OPT_FTRL)
        return es__err(err, ES_EINVAL,
                       "storage: emb_l2_freq (frequency-aware lazy L2) does not apply to ftrl: use sgd, adagrad or rowwise");
    if (p->opt.row_l2_freq > 0 && !(p->opt.row_l2 > 0))
        return es__err(err, ES_EINVAL, "storage: emb_l2_freq (frequency-aware lazy L2) needs emb_l2 > 0");
    if (!(p->opt.lr >= 0) || !isfinite(p->opt.lr))
        return es__err(err, ES_EINVAL, "storage: learning rate must be >= 0, got %g", (double)p->opt.lr);
    if (p->opt.kind != ES_OPT_SGD && !(p->opt.eps > 0 && isfinite(p->opt.eps)))
        return es__err(err, ES_EINVAL, "storage: adagrad epsilon must be > 0, got %g", (double)p->opt.eps);
    if (!(p->opt.init_acc >= 0) || !isfinite(p->opt.init_acc))
        return es__err(err, ES_EINVAL, "storage: adagrad initial accumulator must be >= 0, got %g", (double)p->opt.init_acc);
    if (vocab && es_vocab_n_fields(vocab) != p->n_fields)
        return es__err(err, ES_EINVAL, "storage: vocabulary has %d fields but the storage has %d", es_vocab_n_fields(vocab),
                       p->n_fields);
    return ES_OK;
}

/* Budget in bytes: > 1 bytes; (0, 1] a fraction of the full table; 0 the
 * method's default (reported as 0 = unbounded). */
static int resolve_budget(const es_storage_params *p, const es_vocab *vocab, double *bytes, es_err *err) {
    *bytes = 0;
    if (p->budget > 1) {
        *bytes = floor(p->budget);
    } else if (p->budget > 0) {
        if (!vocab)
            return es__err(err, ES_EINVAL,
                           "storage %s: budget %g is a fraction of the full table, which needs a vocabulary "
                           "(count the training data first, or give the budget in bytes)",
                           p->method, p->budget);
        size_t full = es__storage_full_bytes(vocab, p->dim, es__storage_min_count(p));
        if (full == SIZE_MAX) return es__err(err, ES_ERANGE, "storage %s: full table size overflows", p->method);
        *bytes = floor(p->budget * (double)full);
        if (*bytes < 1)
            return es__err(err, ES_EBUDGET, "storage %s: budget %g of a %zu-byte full table is less than one byte", p->method,
                           p->budget, full);
    }
    return ES_OK;
}

/* Every row table of s (ops->rows) to precision p trained by mode
 * (es__rows_qtrain; NONE: empty codes for a load, es__storage_convert),
 * all or none, with the byte counts updated. */
static int storage_qsetup(es_storage *s, es_precision p, int mode, es_err *err);

/* ops->create at s->p.precision: for a byte budget B and a precision
 * other than fp32, the method is sized for the fp32 budget B * 4 dim /
 * row_bytes (so a method that solves rows from bytes gets the rows that
 * fit B as codes), its tables converted, and while the codes and maps
 * come to more than B (the maps and per-row scales do not scale) the
 * fp32 budget shrinks by the excess and the method is created again, then
 * bisects once a try fits and leaves more than 2% of B unused: at most
 * ES_PREC_TRIES + 1 tries, an over-budget last one left for the generic
 * budget check to judge. */
#define ES_PREC_TRIES 12
/* The parameter bytes of the whole table: a shard's (shard_n > 1,
 * training across processes) are its own rows only, but the table is sized
 * as a whole, so that every rank count gets the same shapes. */
double es__storage_whole_param_bytes(es_storage *s) {
    es__row_map m;
    if (s->p.shard_n <= 1 || !s->ops->row_map || s->ops->row_map(s, &m) != ES_OK) return (double)s->param_bytes;
    double b = (double)s->param_bytes;
    for (int i = 0; i < m.n_t; i++) {
        const es_rows *t = es__row_map_table(&m, i);
        const double rb = t->prec != ES_PREC_FP32 ? (double)es__prec_row_bytes(t->prec, t->dim) : 4.0 * t->dim;
        b += rb * ((double)(es__row_map_base(&m, i + 1) - es__row_map_base(&m, i)) - (double)t->n_rows);
    }
    return b;
}

static int create_at_precision(es_storage *s, const es_vocab *vocab, es_err *e) {
    const es_precision prec = s->p.precision;
    if (prec == ES_PREC_FP32) return s->ops->create(s, vocab, e);
    if (!s->ops->rows)
        return es__err(e, ES_EINVAL,
                       "storage %s: precision %s needs a method whose embeddings are rows of tables (full, hash, "
                       "unified, qr, fielddim, multihash, mde, robe, adapt); %s has none",
                       s->ops->name, es__prec_name(prec), s->ops->name);
    const double B = s->budget_bytes;
    if (s->p.qtrain == ES_QTRAIN_NONE) {
        /* a load of codes: the shapes come from the file's options */
        int rc = s->ops->create(s, vocab, e);
        if (rc == ES_OK && (rc = storage_qsetup(s, prec, ES_QTRAIN_NONE, e)) != ES_OK) {
            s->ops->destroy(s);
            s->impl = NULL;
        }
        return rc;
    }
    double Bp = B > 0 ? B * 4.0 * (double)s->p.dim / (double)es__prec_row_bytes(prec, s->p.dim) : 0, prev_Bp = 0, prev_tot = 0;
    double lo = 0, hi = 0; /* the largest fp32 figure that fitted, the smallest that did not (0: none yet) */
    for (int attempt = 0;; attempt++) {
        s->budget_bytes = Bp;
        int rc = s->ops->create(s, vocab, e);
        s->budget_bytes = B;
        if (rc != ES_OK) {
            if (Bp != B) {
                es_err m = *e;
                es__err(e, rc, "%s (sized as an fp32 budget of %.0f bytes, for %s rows in %.0f bytes)", m.msg, Bp,
                        es__prec_name(prec), B);
            }
            return rc;
        }
        if ((rc = storage_qsetup(s, prec, s->p.qtrain, e)) != ES_OK) {
            s->ops->destroy(s);
            s->impl = NULL;
            return rc;
        }
        const double tot = es__storage_whole_param_bytes(s) + (double)s->aux_bytes;
        if (!(B > 0)) return ES_OK;
        const int fits = tot <= B;
        /* done: the first try fits, or a later one fills 98% of B, or the
         * tries are spent (an over-budget last one is left for the
         * generic budget check to judge) */
        if (fits && (hi == 0 || tot >= 0.98 * B || attempt >= ES_PREC_TRIES - 1)) return ES_OK;
        if (!fits && attempt >= ES_PREC_TRIES - 1 && (lo == 0 || attempt >= ES_PREC_TRIES)) return ES_OK;
        s->ops->destroy(s);
        s->impl = NULL;
        s->param_bytes = s->aux_bytes = s->state_bytes = 0;
        for (int i = 0; i < s->ops->n_opts; i++) {
            es__free(s->optv[i].rec);
            s->optv[i].rec = NULL;
        }
        if (fits) {
            lo = Bp;
            Bp = 0.5 * (lo + hi); /* between the largest fit and the smallest miss */
            continue;
        }
        hi = Bp;
        if (lo > 0) {
            /* the tries are spent: back to the largest fit (the same shapes
             * again: create is deterministic) */
            Bp = attempt >= ES_PREC_TRIES - 1 ? lo : 0.5 * (lo + hi);
            continue;
        }
        /* shrink the fp32 figure by the excess, scaled like the rows (at
         * least a little); from the second try on, by the excess over the
         * slope the last two tries measured (secant) when that cuts more,
         * up to 4 times as much and half the figure: a method whose bytes
         * do not scale with its rows (mde: maps, and rows of a few values
         * whose codes are hardly smaller) would otherwise creep down for
         * many tries.  Once a try fits, the rest bisect between it and the
         * smallest miss until 98% of B is used. */
        double cut = (tot - B) * (Bp / tot) * 1.01;
        if (attempt > 0 && prev_Bp > Bp && prev_tot > tot) {
            double sec = (tot - B) * (prev_Bp - Bp) / (prev_tot - tot) * 1.01;
            if (sec > cut) cut = ES_MIN(ES_MIN(sec, 4 * cut), Bp * 0.5);
        }
        prev_Bp = Bp;
        prev_tot = tot;
        Bp -= ES_MAX(cut, Bp * 1e-4);
    }
}

int es__storage_create(es_storage **out, const es_storage_params *p, const es_vocab *vocab, es_err *err) {
    *out = NULL;
    if (!p) return es__err(err, ES_EINVAL, "storage: no parameters");
    int rc = check_params(p, vocab, err);
    if (rc) return rc;
    const es_storage_ops *ops = es__storage_find(p->method);
    if (!ops) return unknown_method(p->method, err);
    if (!ops->plain_rows && p->opt.kind == ES_OPT_FTRL)
        return es__err(err, ES_EINVAL,
                       "storage %s: FTRL needs per-coordinate table parameters; %s's embeddings are computed from "
                       "parameters (not plain rows): use sgd, adagrad or rowwise-adagrad",
                       ops->name, ops->name);
    if (!ops->plain_rows && p->init_shift != 0)
        return es__err(err, ES_EINVAL, "storage %s: init_shift needs plain table rows (full, hash, unified, robe, adapt)",
                       ops->name);
    if (!ops->plain_rows && p->opt.row_l2 > 0)
        return es__err(err, ES_EINVAL,
                       "storage %s: emb_l2 (lazy L2 on table rows) needs per-coordinate table parameters; %s's "
                       "embeddings are computed from parameters (not plain rows)",
                       ops->name, ops->name);
    es__opt_val *optv = NULL;
    if ((rc = opts_parse(ops, p->opts, &optv, err)) != 0) return rc;
    double budget_bytes;
    if ((rc = resolve_budget(p, vocab, &budget_bytes, err)) != 0) {
        es__free(optv);
        return rc;
    }

    es_storage *s = es__calloc(1, sizeof *s);
    if (!s) {
        es__free(optv);
        return es__err(err, ES_ENOMEM, "storage %s: out of memory", p->method);
    }
    s->ops = ops;
    s->p = *p;
    s->optv = optv;
    s->p.method = es__strdup(ops->name);
    s->p.opts = p->opts ? es__strdup(p->opts) : NULL;
    if (!s->p.method || (p->opts && !s->p.opts)) {
        free_shell(s);
        return es__err(err, ES_ENOMEM, "storage %s: out of memory", p->method);
    }
    /* the parsed texts point into the copy of opts */
    for (int i = 0; i < ops->n_opts; i++)
        if (optv[i].text) optv[i].text = s->p.opts + (optv[i].text - p->opts);
    s->budget_bytes = budget_bytes;
    es_err e = {0, ""};
    rc = create_at_precision(s, vocab, &e);
    if (rc == ES_OK && (rc = meta_write(s, &e)) != ES_OK) {
        ops->destroy(s);
        s->impl = NULL;
    }
    /* (not for a load of codes quantized after training: their budget is
     * the fp32 model's, which codes of very short rows can exceed -- an
     * int8 row of 1 value takes 5 bytes -- and the file is what it is) */
    const int loaded_codes = p->precision != ES_PREC_FP32 && p->qtrain == ES_QTRAIN_NONE;
    if (rc == ES_OK && !loaded_codes && s->budget_bytes > 0 &&
        (double)s->param_bytes + (double)s->aux_bytes > s->budget_bytes) {
        /* A method bug, but reported as an error rather than trusted. */
        ops->destroy(s);
        s->impl = NULL;
        rc = es__err(&e, ES_EBUDGET, "storage %s: uses %zu parameter + %zu map bytes, over the %.0f-byte budget", ops->name,
                     s->param_bytes, s->aux_bytes, s->budget_bytes);
    }
    if (rc != ES_OK) {
        if (!e.msg[0]) es__err(&e, rc, "storage %s: %s", ops->name, es_strerror(rc));
        es__err(err, rc, "%s", e.msg);
        free_shell(s);
        return rc;
    }
    *out = s;
    return ES_OK;
}

void es__storage_free(es_storage *s) {
    if (!s) return;
    if (s->impl && s->ops->destroy) s->ops->destroy(s);
    free_shell(s);
}

int es__storage_lookup(es_storage *s, const es_batch *b, int r0, int r1, float *out) {
    if (b->n_fields != s->p.n_fields || r0 < 0 || r0 > r1 || r1 > b->n)
        return es__err(&s->err, ES_EINVAL, "storage %s: lookup of rows [%d, %d) of a %d-row batch with %d fields (storage has %d)",
                       s->ops->name, r0, r1, b->n, b->n_fields, s->p.n_fields);
    s->ops->lookup(s, b, r0, r1, out);
    return ES_OK;
}

int es__storage_backward(es_storage *s, const es_batch *b, const float *dout) {
    if (b->n_fields != s->p.n_fields || b->n < 0)
        return es__err(&s->err, ES_EINVAL, "storage %s: batch has %d fields, storage has %d", s->ops->name, b->n_fields,
                       s->p.n_fields);
    int rc = es__storage_check_trainable(s, &s->err);
    if (rc != ES_OK) return rc;
    return s->ops->backward(s, b, dout);
}

int es__storage_tensors(es_storage *s, es_tensor_ref *refs, int max) { return s->ops->tensors(s, refs, max); }

int es__storage_after_load(es_storage *s) {
    if (!s->ops->after_load) return ES_OK;
    return s->ops->after_load(s, &s->err);
}

const char *es__storage_errmsg(const es_storage *s) { return s ? s->err.msg : "no storage"; }

/* ---- post-training quantization ------------------------------------------------ */

es_precision es__storage_precision(const es_storage *s) {
    if (!s || !s->ops->rows || !s->impl) return ES_PREC_FP32;
    return s->ops->rows((es_storage *)s, 0)->prec; /* every table has one precision */
}

int es__storage_qtrain(const es_storage *s) {
    if (!s || !s->ops->rows || !s->impl) return ES_QTRAIN_NONE;
    return s->ops->rows((es_storage *)s, 0)->qtrain;
}

int es__storage_check_trainable(const es_storage *s, es_err *err) {
    es_precision p = es__storage_precision(s);
    if (p == ES_PREC_FP32 || es__storage_qtrain(s) != ES_QTRAIN_NONE) return ES_OK;
    return es__err(err, ES_EINVAL,
                   "the table holds %s codes without their training state (a quantized or served model): it serves "
                   "only; to train at %s, train with --precision %s --qtrain qat|alpt",
                   es__prec_name(p), es__prec_name(p), es__prec_name(p));
}

/* The row tables of s (ops->rows) into a new array *t (free it); their
 * number in *n.  ES_ENOMEM with a message. */
static int row_tables(es_storage *s, es_rows ***t, int *n, es_err *err) {
    int c = 0;
    while (s->ops->rows(s, c) != NULL) c++;
    *n = c;
    if (!(*t = es__malloc((size_t)ES_MAX(c, 1) * sizeof **t)))
        return es__err(err, ES_ENOMEM, "storage %s: out of memory listing %d row tables", s->ops->name, c);
    for (int i = 0; i < c; i++) (*t)[i] = s->ops->rows(s, i);
    return ES_OK;
}

static int storage_qsetup(es_storage *s, es_precision p, int mode, es_err *err) {
    if (mode == ES_QTRAIN_NONE) return es__storage_convert(s, p, 0, err);
    es_rows **t;
    int n;
    int rc = row_tables(s, &t, &n, err);
    if (rc != ES_OK) return rc;
    for (int i = 0; i < n; i++) {
        const size_t pb = es__rows_param_bytes(t[i]), sb = es__rows_state_bytes(t[i]);
        rc = es__rows_qtrain(t[i], p, mode, s->p.seed + (uint64_t)i, err);
        if (rc != ES_OK) {
            /* the tables converted so far are freed with the storage by the caller */
            if (n > 1 && err) {
                es_err m = *err;
                es__err(err, rc, "storage %s: table %d: %s", s->ops->name, i, m.msg);
            } else if (err) {
                es_err m = *err;
                es__err(err, rc, "storage %s: %s", s->ops->name, m.msg);
            }
            es__free(t);
            return rc;
        }
        s->param_bytes = s->param_bytes - pb + es__rows_param_bytes(t[i]);
        s->state_bytes = s->state_bytes - sb + es__rows_state_bytes(t[i]);
    }
    es__free(t);
    if (s->ops->after_convert) s->ops->after_convert(s);
    return ES_OK;
}


int es__storage_convert(es_storage *s, es_precision p, int encode, es_err *err) {
    es_rows **t;
    uint8_t **q;
    int n, rc = row_tables(s, &t, &n, err);
    if (rc != ES_OK) return rc;
    if (!(q = es__calloc((size_t)ES_MAX(n, 1), sizeof *q))) {
        es__free(t);
        return es__err(err, ES_ENOMEM, "storage %s: out of memory", s->ops->name);
    }
    for (int i = 0; i < n && rc == ES_OK; i++) {
        rc = es__rows_encode(t[i], p, encode, &q[i], err);
        if (rc != ES_OK && n > 1 && err) {
            es_err e = *err;
            es__err(err, rc, "table %d: %s", i, e.msg);
        }
    }
    if (rc != ES_OK) {
        for (int i = 0; i < n; i++) es__free_aligned(q[i]);
        es__free(q);
        es__free(t);
        return rc;
    }
    for (int i = 0; i < n; i++) {
        const size_t pb = es__rows_param_bytes(t[i]), sb = es__rows_state_bytes(t[i]);
        es__rows_adopt(t[i], p, q[i]);
        s->param_bytes = s->param_bytes - pb + es__rows_param_bytes(t[i]);
        s->state_bytes -= sb;
    }
    es__free(q);
    es__free(t);
    if (p != ES_PREC_FP32 && s->ops->after_convert) s->ops->after_convert(s);
    return ES_OK;
}

int es__storage_quantize(es_storage *s, es_precision p, es_err *err) {
    if (p < 0 || p >= ES_PREC_COUNT_) return es__err(err, ES_EINVAL, "precision %d out of range", (int)p);
    if (!s->ops->rows)
        return es__err(err, ES_EINVAL,
                       "storage method '%s' has no row tables to quantize (supported: full, hash, unified, qr, fielddim, "
                       "multihash, mde, robe, adapt; tt and dhe have no rows, and dpq, mgqe, pep, deeplight and "
                       "dedup compress their rows their own way)",
                       s->ops->name);
    int rc = es__storage_convert(s, p, 1, err);
    if (rc != ES_OK && err) {
        es_err e = *err;
        es__err(err, rc, "%s: %s", s->ops->name, e.msg);
    }
    return rc;
}

/* ---- helpers shared by the zoo methods (qr, multihash, robe, tt) ---------------- */

/* Split `total` units over F fields: min_each to each, the rest in
 * proportion to the fields' full-table rows (distinct + 1) from the
 * vocabulary, or equally without one; the few units rounding leaves go one
 * each to fields in order.  Needs total >= F * min_each. */
void es__storage_split(uint64_t total, int F, const es_vocab *v, uint64_t min_each, uint64_t *out) {
    const uint64_t rem = total - (uint64_t)F * min_each;
    unsigned __int128 W = 0;
    for (int f = 0; f < F; f++) W += v ? es_vocab_distinct(v, f) + 1 : 1;
    uint64_t given = 0;
    for (int f = 0; f < F; f++) {
        uint64_t w = v ? es_vocab_distinct(v, f) + 1 : 1;
        uint64_t add = (uint64_t)((unsigned __int128)rem * w / W);
        out[f] = min_each + add;
        given += add;
    }
    for (int f = 0; given < rem; f = (f + 1) % F, given++) out[f]++;
}

/* ---- key index shared by the frequency-based methods ---------------------------- */

static inline size_t keyidx_home(uint64_t key, size_t cap) { return (size_t)es__range(es__mix64(key), cap); }

uint64_t es__keyidx_find(const uint64_t *keys, const uint32_t *index, size_t cap, uint64_t key) {
    size_t h = keyidx_home(key, cap);
    uint32_t v;
    while ((v = index[h]) != 0) {
        if (keys[v - 1] == key) return v - 1;
        if (++h == cap) h = 0;
    }
    return UINT64_MAX;
}

int es__keyidx_insert(const uint64_t *keys, uint32_t *index, size_t cap, uint64_t i) {
    const uint64_t key = keys[i];
    size_t h = keyidx_home(key, cap);
    uint32_t v;
    while ((v = index[h]) != 0) {
        if (keys[v - 1] == key) return 1;
        if (++h == cap) h = 0;
    }
    index[h] = (uint32_t)(i + 1);
    return 0;
}

/* Split H hashed rows over the spaces: one each, the rest in proportion
 * to w[s] (largest remainder, ties to the lower space); equal when all
 * weights are 0. */
void es__storage_split_rows(uint64_t H, int S, const uint64_t *w, uint64_t *rows) {
    uint64_t tw = 0, rest = H - (uint64_t)S, given = 0;
    for (int s = 0; s < S; s++) tw += w ? w[s] : 0;
    for (int s = 0; s < S; s++) {
        long double share = tw ? (long double)rest * (long double)w[s] / (long double)tw : (long double)rest / S;
        rows[s] = 1 + (uint64_t)share;
        given += (uint64_t)share;
    }
    while (given < rest) { /* hand out the remainder by largest fractional part */
        int best = 0;
        long double bf = -1;
        for (int s = 0; s < S; s++) {
            long double share = tw ? (long double)rest * (long double)w[s] / (long double)tw : (long double)rest / S;
            long double fr = share - (long double)(rows[s] - 1);
            if (fr > bf) {
                bf = fr;
                best = s;
            }
        }
        rows[best]++;
        given++;
    }
}

/* ---- helpers of the dimension-search methods (autodim, optembed) ------------------ */

int es__search_dims(es_storage *s, const char *method, int max, int *cand, int *C, es_err *err) {
    const int dim = s->p.dim;
    size_t len = 0;
    const char *v = es__storage_opt_text(s, "dims", &len);
    if (!v) {
        static const int def[] = {2, 4, 8, 16, 32};
        *C = 0;
        for (size_t i = 0; i < ES_ARRAY_LEN(def) && *C < max; i++)
            if (def[i] <= dim) cand[(*C)++] = def[i];
        if (*C == 0) cand[(*C)++] = dim; /* dim 1 (LR): one candidate */
        return ES_OK;
    }
    int groups = 1;
    for (size_t i = 0; i < len; i++) groups += v[i] == ':';
    if (groups > max || groups > 64 || memchr(v, '/', len))
        return es__err(err, ES_EINVAL, "%s: option dims=%.*s: expected 1 to %d candidate dimensions c0:c1:... ascending", method, (int)len, v,
                       max);
    uint64_t u[64];
    int found = 0, rc = es__storage_opt_list(s, "dims", groups, 1, u, &found, err);
    if (rc != ES_OK) return rc;
    for (int k = 0; k < groups; k++) {
        if (u[k] > (uint64_t)dim)
            return es__err(err, ES_EINVAL, "%s: option dims=%.*s: candidate dimension %llu is larger than the embedding dimension %d (--dim)",
                           method, (int)len, v, (unsigned long long)u[k], dim);
        if (k && u[k] <= u[k - 1])
            return es__err(err, ES_EINVAL, "%s: option dims=%.*s: candidate dimensions must be ascending", method, (int)len, v);
        cand[k] = (int)u[k];
    }
    *C = groups;
    return ES_OK;
}

void es__split_rows_vocab(uint64_t R, int F, const es_vocab *vocab, uint64_t *rows, int rest_equally) {
    for (int f = 0; f < F; f++) rows[f] = 1;
    R -= (uint64_t)F;
    if (!vocab) {
        for (int f = 0; f < F; f++) rows[f] += R / (uint64_t)F + ((uint64_t)f < R % (uint64_t)F);
        return;
    }
    for (int round = 0; round < 64 && R > 0; round++) {
        double W = 0;
        for (int f = 0; f < F; f++)
            if (rows[f] < es_vocab_distinct(vocab, f) + 1) W += (double)(es_vocab_distinct(vocab, f) + 1);
        if (W == 0) break;
        uint64_t given = 0;
        for (int f = 0; f < F; f++) {
            const uint64_t cap = es_vocab_distinct(vocab, f) + 1;
            if (rows[f] >= cap) continue;
            uint64_t g = (uint64_t)floor((double)R * (double)cap / W);
            if (g > cap - rows[f]) g = cap - rows[f];
            rows[f] += g;
            given += g;
        }
        if (given == 0) { /* rounding: one row each, in field order, while some are left */
            for (int f = 0; f < F && given < R; f++)
                if (rows[f] < es_vocab_distinct(vocab, f) + 1) rows[f]++, given++;
            if (given == 0) break;
        }
        R -= given;
    }
    if (rest_equally) /* every field at distinct + 1 and rows left: the rest equally (more hashed rows, fewer collisions) */
        for (int f = 0; f < F; f++) rows[f] += R / (uint64_t)F + ((uint64_t)f < R % (uint64_t)F);
}
