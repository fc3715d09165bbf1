/*
 * vocab.c — per-field value counts (es_vocab): one open-addressing hash map
 * per field from value key to the number of times it was seen.  The `full`
 * method builds its collision-free rows from it, `hash` splits its rows by
 * the fields' distinct counts, budgets given as fractions are resolved
 * against it, and `inspect` reports collisions with it.
 *
 * Layout per field: slots of (key, count), cap a power of two kept at most
 * half full (linear probing stays short); a key and its count share a
 * cache line (they were two arrays: two misses a value once the map
 * outgrows the caches).  A count of 0 marks an empty slot, so every 64-bit
 * key value is usable.  Memory is 16 bytes per slot, 32 to 64 bytes per
 * distinct value.
 */
#include "storage/storage.h"

typedef struct vslot {
    uint64_t key, count;
} vslot;

typedef struct vfield {
    vslot *s;
    size_t cap, n;
    uint64_t total;
} vfield;

struct es_vocab {
    int n_fields;
    vfield *f;
    int failed;      /* sticky error code of a failed add (0 if none) */
    char msg[256];
};

#define VOCAB_INIT_CAP 64

static inline size_t home(uint64_t key, size_t cap) { return (size_t)es__mix64(key) & (cap - 1); }

int es_vocab_create(es_vocab **out, int n_fields) {
    *out = NULL;
    if (n_fields < 1 || n_fields > (1 << 20)) return ES_EINVAL;
    es_vocab *v = es__calloc(1, sizeof *v);
    if (!v) return ES_ENOMEM;
    v->n_fields = n_fields;
    v->f = es__calloc((size_t)n_fields, sizeof *v->f);
    if (!v->f) {
        es__free(v);
        return ES_ENOMEM;
    }
    for (int i = 0; i < n_fields; i++) {
        vfield *f = &v->f[i];
        f->s = es__calloc(VOCAB_INIT_CAP, sizeof *f->s);
        if (!f->s) {
            es_vocab_free(v);
            return ES_ENOMEM;
        }
        f->cap = VOCAB_INIT_CAP;
    }
    *out = v;
    return ES_OK;
}

void es_vocab_free(es_vocab *v) {
    if (!v) return;
    if (v->f)
        for (int i = 0; i < v->n_fields; i++) es__free(v->f[i].s);
    es__free(v->f);
    es__free(v);
}

/* Double a field's map.  On failure the old map is kept unchanged. */
static int grow(vfield *f) {
    size_t cap = f->cap * 2;
    if (cap > SIZE_MAX / sizeof(vslot)) return ES_ENOMEM;
    vslot *ns = es__calloc(cap, sizeof *ns);
    if (!ns) return ES_ENOMEM;
    for (size_t i = 0; i < f->cap; i++) {
        if (!f->s[i].count) continue;
        size_t h = home(f->s[i].key, cap);
        while (ns[h].count) h = (h + 1) & (cap - 1);
        ns[h] = f->s[i];
    }
    es__free(f->s);
    f->s = ns;
    f->cap = cap;
    return ES_OK;
}

/* Count `count` more of key. */
static inline int add_key(vfield *f, uint64_t key, uint64_t count) {
    size_t h = home(key, f->cap);
    while (f->s[h].count) {
        if (f->s[h].key == key) {
            f->s[h].count += count;
            f->total += count;
            return ES_OK;
        }
        h = (h + 1) & (f->cap - 1);
    }
    if ((f->n + 1) * 2 > f->cap) {
        int rc = grow(f);
        if (rc) return rc;
        h = home(key, f->cap);
        while (f->s[h].count) h = (h + 1) & (f->cap - 1);
    }
    f->s[h] = (vslot){key, count};
    f->n++;
    f->total += count;
    return ES_OK;
}

int es__vocab_add_count(es_vocab *v, int field, uint64_t key, uint64_t count) {
    if (!v || field < 0 || field >= v->n_fields || count == 0) return ES_EINVAL;
    if (v->failed) return v->failed;
    int rc = add_key(&v->f[field], key, count);
    if (rc) {
        v->failed = rc;
        snprintf(v->msg, sizeof v->msg, "vocab: out of memory growing field %d past %zu distinct values", field, v->f[field].n);
    }
    return rc;
}

int es_vocab_add_batch(es_vocab *v, const es_batch *b) {
    if (!v || !b) return ES_EINVAL;
    if (v->failed) return v->failed;
    if (b->n_fields != v->n_fields) {
        snprintf(v->msg, sizeof v->msg, "vocab: batch has %d fields, vocabulary has %d", b->n_fields, v->n_fields);
        return ES_EINVAL;
    }
    if (b->n < 0 || b->n > b->cap) {
        snprintf(v->msg, sizeof v->msg, "vocab: batch row count %d outside [0, %d]", b->n, b->cap);
        return ES_EINVAL;
    }
    const size_t pairs = (size_t)b->n * (size_t)b->n_fields;
    /* Check the CSR offsets before counting anything. */
    for (size_t p = 0; p < pairs; p++)
        if (b->off[p + 1] < b->off[p]) {
            snprintf(v->msg, sizeof v->msg, "vocab: batch offsets decrease at pair %zu", p);
            return ES_EINVAL;
        }
    if (pairs && b->off[pairs] > b->val_cap) {
        snprintf(v->msg, sizeof v->msg, "vocab: batch offsets reach %u, beyond %zu value slots", b->off[pairs], b->val_cap);
        return ES_EINVAL;
    }
    /* the home slot of the first value of the pair PF ahead is fetched
     * while this one is counted (the maps outgrow the caches) */
    enum { PF = 8 };
    const int F = v->n_fields;
    int f = 0, fa = PF % F;
    for (size_t p = 0; p < pairs; p++) {
        if (p + PF < pairs && b->off[p + PF] < b->off[p + PF + 1]) {
            const vfield *g = &v->f[fa];
            __builtin_prefetch(&g->s[home(b->val[b->off[p + PF]], g->cap)], 1);
        }
        if (++fa == F) fa = 0;
        for (uint32_t i = b->off[p]; i < b->off[p + 1]; i++) {
            int rc = add_key(&v->f[f], b->val[i], 1);
            if (rc) {
                v->failed = rc;
                snprintf(v->msg, sizeof v->msg, "vocab: out of memory growing field %d past %zu distinct values", f,
                         v->f[f].n);
                return rc;
            }
        }
        if (++f == F) f = 0;
    }
    return ES_OK;
}

uint64_t es__vocab_count(const es_vocab *v, int field, uint64_t key) {
    if (!v || field < 0 || field >= v->n_fields) return 0;
    const vfield *f = &v->f[field];
    size_t h = home(key, f->cap);
    while (f->s[h].count) {
        if (f->s[h].key == key) return f->s[h].count;
        h = (h + 1) & (f->cap - 1);
    }
    return 0;
}

uint64_t es_vocab_distinct(const es_vocab *v, int field) {
    if (!v || field < 0 || field >= v->n_fields) return 0;
    return v->f[field].n;
}

uint64_t es__vocab_distinct_min(const es_vocab *v, int field, uint64_t min_count) {
    if (!v || field < 0 || field >= v->n_fields) return 0;
    const vfield *f = &v->f[field];
    if (min_count <= 1) return f->n;
    uint64_t n = 0;
    for (size_t i = 0; i < f->cap; i++) n += f->s[i].count >= min_count;
    return n;
}

void es__vocab_each(const es_vocab *v, int field, void (*fn)(uint64_t key, uint64_t count, void *ctx), void *ctx) {
    if (!v || field < 0 || field >= v->n_fields) return;
    const vfield *f = &v->f[field];
    for (size_t i = 0; i < f->cap; i++)
        if (f->s[i].count) fn(f->s[i].key, f->s[i].count, ctx);
}

int es_vocab_n_fields(const es_vocab *v) { return v ? v->n_fields : 0; }

uint64_t es__vocab_total(const es_vocab *v, int field) {
    if (!v || field < 0 || field >= v->n_fields) return 0;
    return v->f[field].total;
}

size_t es_vocab_bytes(const es_vocab *v) {
    if (!v) return 0;
    size_t b = sizeof *v + (size_t)v->n_fields * sizeof *v->f;
    for (int i = 0; i < v->n_fields; i++) b += v->f[i].cap * sizeof(vslot);
    return b;
}

const char *es_vocab_errmsg(const es_vocab *v) { return v ? v->msg : "no vocabulary"; }

/* ---- ranking (frequency-based methods) ---------------------------------------- */

int es__vocab_entry_cmp(const void *a, const void *b) {
    const es_vocab_entry *x = a, *y = b;
    if (x->count != y->count) return x->count > y->count ? -1 : 1;
    if (x->f != y->f) return x->f < y->f ? -1 : 1;
    return (x->key > y->key) - (x->key < y->key);
}

static int entry_cmp_by_field(const void *a, const void *b) {
    const es_vocab_entry *x = a, *y = b;
    if (x->f != y->f) return x->f < y->f ? -1 : 1;
    return es__vocab_entry_cmp(a, b);
}

typedef struct {
    es_vocab_entry *out;
    size_t n, cap;
    uint64_t min_count;
    int f;
} rank_ctx;

static void rank_collect(uint64_t key, uint64_t count, void *ctx) {
    rank_ctx *x = ctx;
    if (count >= x->min_count && x->n < x->cap) x->out[x->n++] = (es_vocab_entry){count, key, x->f};
}

size_t es__vocab_ranked(const es_vocab *v, uint64_t min_count, int by_field, es_vocab_entry *out) {
    size_t n = 0;
    for (int f = 0; f < es_vocab_n_fields(v); f++) {
        rank_ctx x = {out + n, 0, (size_t)es__vocab_distinct_min(v, f, min_count), min_count, f};
        es__vocab_each(v, f, rank_collect, &x);
        n += x.n;
    }
    qsort(out, n, sizeof *out, by_field ? entry_cmp_by_field : es__vocab_entry_cmp);
    return n;
}
