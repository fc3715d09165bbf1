/*
 * vocab.c — per-field value counts (es_vocab): one open-addressing hash map
 * per field from value key to the number of times it was seen.  The `full`
 * method builds its collision-free rows from it, `hash` splits its rows by
 * the fields' distinct counts, budgets given as fractions are resolved
 * against it, and `inspect` reports collisions with it.
 *
 * Layout per field: parallel arrays keys[cap] and counts[cap], cap a power
 * of two kept at most half full (linear probing stays short).  A count of
 * 0 marks an empty slot, so every 64-bit key value is usable.  Memory is
 * 16 bytes per slot, 32 to 64 bytes per distinct value.
 */
#include "storage/storage.h"

typedef struct vfield {
    uint64_t *keys;
    uint64_t *counts;
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
        f->keys = es__malloc(VOCAB_INIT_CAP * sizeof *f->keys);
        f->counts = es__calloc(VOCAB_INIT_CAP, sizeof *f->counts);
        if (!f->keys || !f->counts) {
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
        for (int i = 0; i < v->n_fields; i++) {
            es__free(v->f[i].keys);
            es__free(v->f[i].counts);
        }
    es__free(v->f);
    es__free(v);
}

/* Double a field's map.  On failure the old map is kept unchanged. */
static int grow(vfield *f) {
    size_t cap = f->cap * 2;
    if (cap > SIZE_MAX / sizeof(uint64_t)) return ES_ENOMEM;
    uint64_t *keys = es__malloc(cap * sizeof *keys);
    uint64_t *counts = es__calloc(cap, sizeof *counts);
    if (!keys || !counts) {
        es__free(keys);
        es__free(counts);
        return ES_ENOMEM;
    }
    for (size_t i = 0; i < f->cap; i++) {
        if (!f->counts[i]) continue;
        size_t h = home(f->keys[i], cap);
        while (counts[h]) h = (h + 1) & (cap - 1);
        keys[h] = f->keys[i];
        counts[h] = f->counts[i];
    }
    es__free(f->keys);
    es__free(f->counts);
    f->keys = keys;
    f->counts = counts;
    f->cap = cap;
    return ES_OK;
}

static int add_key(vfield *f, uint64_t key) {
    size_t h = home(key, f->cap);
    while (f->counts[h]) {
        if (f->keys[h] == key) {
            f->counts[h]++;
            f->total++;
            return ES_OK;
        }
        h = (h + 1) & (f->cap - 1);
    }
    if ((f->n + 1) * 2 > f->cap) {
        int rc = grow(f);
        if (rc) return rc;
        h = home(key, f->cap);
        while (f->counts[h]) h = (h + 1) & (f->cap - 1);
    }
    f->keys[h] = key;
    f->counts[h] = 1;
    f->n++;
    f->total++;
    return ES_OK;
}

int es__vocab_add_count(es_vocab *v, int field, uint64_t key, uint64_t count) {
    if (!v || field < 0 || field >= v->n_fields || count == 0) return ES_EINVAL;
    if (v->failed) return v->failed;
    vfield *f = &v->f[field];
    size_t h = home(key, f->cap);
    while (f->counts[h]) {
        if (f->keys[h] == key) {
            f->counts[h] += count;
            f->total += count;
            return ES_OK;
        }
        h = (h + 1) & (f->cap - 1);
    }
    if ((f->n + 1) * 2 > f->cap) {
        int rc = grow(f);
        if (rc) {
            v->failed = rc;
            snprintf(v->msg, sizeof v->msg, "vocab: out of memory growing field %d past %zu distinct values", field, f->n);
            return rc;
        }
        h = home(key, f->cap);
        while (f->counts[h]) h = (h + 1) & (f->cap - 1);
    }
    f->keys[h] = key;
    f->counts[h] = count;
    f->n++;
    f->total += count;
    return ES_OK;
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
    int f = 0;
    for (size_t p = 0; p < pairs; p++) {
        for (uint32_t i = b->off[p]; i < b->off[p + 1]; i++) {
            int rc = add_key(&v->f[f], b->val[i]);
            if (rc) {
                v->failed = rc;
                snprintf(v->msg, sizeof v->msg, "vocab: out of memory growing field %d past %zu distinct values", f,
                         v->f[f].n);
                return rc;
            }
        }
        if (++f == v->n_fields) f = 0;
    }
    return ES_OK;
}

uint64_t es__vocab_count(const es_vocab *v, int field, uint64_t key) {
    if (!v || field < 0 || field >= v->n_fields) return 0;
    const vfield *f = &v->f[field];
    size_t h = home(key, f->cap);
    while (f->counts[h]) {
        if (f->keys[h] == key) return f->counts[h];
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
    for (size_t i = 0; i < f->cap; i++) n += f->counts[i] >= min_count;
    return n;
}

void es__vocab_each(const es_vocab *v, int field, void (*fn)(uint64_t key, uint64_t count, void *ctx), void *ctx) {
    if (!v || field < 0 || field >= v->n_fields) return;
    const vfield *f = &v->f[field];
    for (size_t i = 0; i < f->cap; i++)
        if (f->counts[i]) fn(f->keys[i], f->counts[i], ctx);
}

int es_vocab_n_fields(const es_vocab *v) { return v ? v->n_fields : 0; }

uint64_t es__vocab_total(const es_vocab *v, int field) {
    if (!v || field < 0 || field >= v->n_fields) return 0;
    return v->f[field].total;
}

size_t es_vocab_bytes(const es_vocab *v) {
    if (!v) return 0;
    size_t b = sizeof *v + (size_t)v->n_fields * sizeof *v->f;
    for (int i = 0; i < v->n_fields; i++) b += v->f[i].cap * 2 * sizeof(uint64_t);
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
