/*
 * storage.c — the generic half of the storage interface: parameter
 * defaults and checks, budget resolution, create/free by method name, the
 * byte-accounting check every method must pass, thin wrappers over the
 * method table, and small helpers methods share (option parsing, salts).
 */
#include "storage/storage.h"

#include <math.h>

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
    p.min_count = 1;
    p.chunks = 1;
    p.subtables = 1;
    p.share = 0;
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

const char *es__storage_opt(const es_storage *s, const char *key, size_t *len) {
    const char *p = s->p.opts;
    if (!p || !key) return NULL;
    size_t klen = strlen(key);
    while (*p) {
        const char *end = strchr(p, ',');
        if (!end) end = p + strlen(p);
        const char *eq = memchr(p, '=', (size_t)(end - p));
        if (eq && (size_t)(eq - p) == klen && memcmp(p, key, klen) == 0) {
            *len = (size_t)(end - eq - 1);
            return eq + 1;
        }
        p = *end ? end + 1 : end;
    }
    return NULL;
}

int es__storage_opt_u64(const es_storage *s, const char *key, uint64_t lo, uint64_t hi, uint64_t *val, int *found,
                        es_err *err) {
    size_t len;
    const char *v = es__storage_opt(s, key, &len);
    *found = 0;
    if (!v) return ES_OK;
    /* Digits only (no sign, no spaces), overflow-checked: the full uint64
     * range, so a seed written into meta always reads back. */
    uint64_t x = 0;
    int ok = len > 0 && len <= 20;
    for (size_t i = 0; ok && i < len; i++) {
        unsigned d = (unsigned)(v[i] - '0');
        if (d > 9 || __builtin_mul_overflow(x, 10, &x) || __builtin_add_overflow(x, d, &x)) ok = 0;
    }
    if (!ok || x < lo || x > hi)
        return es__err(err, ES_EINVAL, "%s: option %s=%.*s is not an integer in [%llu, %llu]", s->p.method, key,
                       (int)ES_MIN(len, 200), v, (unsigned long long)lo, (unsigned long long)hi);
    *val = x;
    *found = 1;
    return ES_OK;
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
    if (p->opt.kind != ES_OPT_SGD && p->opt.kind != ES_OPT_ADAGRAD && p->opt.kind != ES_OPT_ROWWISE_ADAGRAD)
        return es__err(err, ES_EINVAL, "storage: embedding tables train with sgd, adagrad or rowwise-adagrad (optimizer %d)",
                       (int)p->opt.kind);
    if (!(p->opt.lr >= 0) || !isfinite(p->opt.lr))
        return es__err(err, ES_EINVAL, "storage: learning rate must be >= 0, got %g", (double)p->opt.lr);
    if (p->opt.kind != ES_OPT_SGD && !(p->opt.eps > 0 && isfinite(p->opt.eps)))
        return es__err(err, ES_EINVAL, "storage: adagrad epsilon must be > 0, got %g", (double)p->opt.eps);
    if (!(p->opt.init_acc >= 0) || !isfinite(p->opt.init_acc))
        return es__err(err, ES_EINVAL, "storage: adagrad initial accumulator must be >= 0, got %g", (double)p->opt.init_acc);
    if (p->min_count < 1) return es__err(err, ES_EINVAL, "storage: min_count must be >= 1, got %d", p->min_count);
    if (p->chunks < 1) return es__err(err, ES_EINVAL, "storage: chunks must be >= 1, got %d", p->chunks);
    if (p->subtables < 1) return es__err(err, ES_EINVAL, "storage: subtables must be >= 1, got %d", p->subtables);
    if (p->share != 0 && p->share != 1) return es__err(err, ES_EINVAL, "storage: share must be 0 or 1, got %d", p->share);
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
        size_t full = es__storage_full_bytes(vocab, p->dim, p->min_count);
        if (full == SIZE_MAX) return es__err(err, ES_ERANGE, "storage %s: full table size overflows", p->method);
        *bytes = floor(p->budget * (double)full);
        if (*bytes < 1)
            return es__err(err, ES_EBUDGET, "storage %s: budget %g of a %zu-byte full table is less than one byte", p->method,
                           p->budget, full);
    }
    return ES_OK;
}

int es__storage_create(es_storage **out, const es_storage_params *p, const es_vocab *vocab, es_err *err) {
    *out = NULL;
    if (!p) return es__err(err, ES_EINVAL, "storage: no parameters");
    int rc = check_params(p, vocab, err);
    if (rc) return rc;
    const es_storage_ops *ops = es__storage_find(p->method);
    if (!ops) {
        char names[512];
        size_t o = 0;
        names[0] = 0;
        for (int i = 0; i < es__storage_n_methods() && o < sizeof names; i++)
            o += (size_t)snprintf(names + o, sizeof names - o, "%s%s", i ? ", " : "", es__storage_method_at(i)->name);
        return es__err(err, ES_EINVAL, "storage: unknown method '%s' (known: %s)", p->method, names);
    }
    double budget_bytes;
    if ((rc = resolve_budget(p, vocab, &budget_bytes, err)) != 0) return rc;

    es_storage *s = es__calloc(1, sizeof *s);
    if (!s) return es__err(err, ES_ENOMEM, "storage %s: out of memory", p->method);
    s->ops = ops;
    s->p = *p;
    s->p.method = es__strdup(ops->name);
    s->p.opts = p->opts ? es__strdup(p->opts) : NULL;
    if (!s->p.method || (p->opts && !s->p.opts)) {
        es__free((char *)s->p.method);
        es__free((char *)s->p.opts);
        es__free(s);
        return es__err(err, ES_ENOMEM, "storage %s: out of memory", p->method);
    }
    s->budget_bytes = budget_bytes;
    es_err e = {0, ""};
    rc = ops->create(s, vocab, &e);
    if (rc == ES_OK && s->budget_bytes > 0 && (double)s->param_bytes + (double)s->aux_bytes > s->budget_bytes) {
        /* A method bug, but reported as an error rather than trusted. */
        ops->destroy(s);
        s->impl = NULL;
        rc = es__err(&e, ES_EBUDGET, "storage %s: uses %zu parameter + %zu map bytes, over the %.0f-byte budget", ops->name,
                     s->param_bytes, s->aux_bytes, s->budget_bytes);
    }
    if (rc != ES_OK) {
        if (!e.msg[0]) es__err(&e, rc, "storage %s: %s", ops->name, es_strerror(rc));
        es__err(err, rc, "%s", e.msg);
        es__free((char *)s->p.method);
        es__free((char *)s->p.opts);
        es__free(s);
        return rc;
    }
    *out = s;
    return ES_OK;
}

void es__storage_free(es_storage *s) {
    if (!s) return;
    if (s->impl && s->ops->destroy) s->ops->destroy(s);
    es__free((char *)s->p.method);
    es__free((char *)s->p.opts);
    es__free(s);
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
    return s->ops->backward(s, b, dout);
}

int es__storage_tensors(es_storage *s, es_tensor_ref *refs, int max) { return s->ops->tensors(s, refs, max); }

int es__storage_after_load(es_storage *s) {
    if (!s->ops->after_load) return ES_OK;
    return s->ops->after_load(s, &s->err);
}

const char *es__storage_errmsg(const es_storage *s) { return s ? s->err.msg : "no storage"; }

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

/* Option `key` as n groups of g integers in [lo, hi], groups separated by
 * ':' and the members of a group by '/' ("3/4:5/6").  *found = 0 when the
 * option is absent. */
int es__storage_opt_list(const es_storage *s, const char *key, int n, int g, uint64_t lo, uint64_t hi, uint64_t *out,
                        int *found, es_err *err) {
    size_t len;
    const char *v = es__storage_opt(s, key, &len);
    *found = 0;
    if (!v) return ES_OK;
    const char *p = v, *end = v + len;
    const long total = (long)n * g;
    long i = 0;
    for (;;) {
        const char *q = p;
        while (q < end && *q != ':' && *q != '/') q++;
        long long x;
        if (i >= total || !es__parse_long(p, (size_t)(q - p), &x) || x < 0 || (uint64_t)x < lo || (uint64_t)x > hi) break;
        const char want = (i % g == g - 1) ? ':' : '/';
        out[i++] = (uint64_t)x;
        if (q == end) {
            if (i == total) {
                *found = 1;
                return ES_OK;
            }
            break;
        }
        if (*q != want) break;
        p = q + 1;
    }
    return es__err(err, ES_EINVAL,
                   "%s: option %s=%.*s must be %d group(s) of %d integer(s) in [%llu, %llu] (groups separated by ':', "
                   "members by '/')",
                   s->p.method, key, (int)ES_MIN(len, 200), v, n, g, (unsigned long long)lo, (unsigned long long)hi);
}

/* Append ",key=a/b:c/d" (n groups of g) to s->meta at *o. */
void es__storage_meta_list(es_storage *s, size_t *o, const char *key, const uint64_t *v, int n, int g) {
    const size_t cap = sizeof s->meta;
    if (*o < cap) *o += (size_t)snprintf(s->meta + *o, cap - *o, ",%s=", key);
    for (long i = 0; i < (long)n * g && *o < cap; i++)
        *o += (size_t)snprintf(s->meta + *o, cap - *o, "%s%llu", i == 0 ? "" : (i % g == 0) ? ":" : "/",
                               (unsigned long long)v[i]);
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
