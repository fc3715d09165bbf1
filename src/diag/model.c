/*
 * model.c — a model's embedding tables as float arrays for the
 * diagnostics (whole, or the rows one field can address), and the
 * collisions of the hashed methods (hash, unified) for a vocabulary.
 * Contracts in embstore.h (es_diag_model_*).
 *
 * Per-field rows need the method's layout: `full` keeps field f's rows at
 * [field_off[f] + f, field_off[f+1] + f] (its OOV row first; the offsets
 * are the "map.field_off" tensor it lists), the hashed engine (hash,
 * unified) reads [base[c], base[c] + nrows[c]) for its chunks c of field f.
 * Other methods mix fields inside their tables (qr, mde, robe,
 * multihash): ES_EUNSUPPORTED, and the whole table is what there is.
 */
#include "diag/diag.h"

#include "storage/storage.h"
#include "train/model.h"

#define DIAG_MAX_TABLES 4096

int es_diag_model_tables(const es_model *m) {
    if (!m || !m->st || !m->st->ops->rows) return 0;
    int n = 0;
    while (n < DIAG_MAX_TABLES && m->st->ops->rows(m->st, n)) n++;
    return n;
}

/* Row ranges [lo, hi) of field f in table t; returns how many (<= cap) or
 * a negative code. */
static int field_ranges(es_model *m, int t, int f, uint64_t *lo, uint64_t *hi, int cap, es_err *err) {
    es_storage *st = m->st;
    if (f >= m->n_fields) return es__err(err, ES_EINVAL, "diagnose: field %d of %d", f, m->n_fields);
    if (st->ops->field_stats == es__hashed_field_stats) {
        es__hashed *h = st->impl;
        int n = 0;
        for (int j = 0; j < h->k; j++) {
            size_t c = (size_t)f * h->k + j;
            uint64_t a = h->base[c], b = a + h->nrows[c];
            int seen = 0;
            for (int u = 0; u < n; u++)
                if (lo[u] == a && hi[u] == b) seen = 1;
            if (!seen && n < cap) lo[n] = a, hi[n] = b, n++;
        }
        return n;
    }
    if (!strcmp(st->ops->name, "full") && t == 0) {
        es_tensor_ref refs[16];
        int nr = es__storage_tensors(st, refs, 16);
        for (int i = 0; i < nr; i++)
            if (!strcmp(refs[i].name, "map.field_off") && refs[i].shape[0] == (uint64_t)m->n_fields + 1) {
                const uint64_t *fo = refs[i].data;
                lo[0] = fo[f] + (uint64_t)f;
                hi[0] = fo[f + 1] + (uint64_t)f + 1;
                return 1;
            }
    }
    return es__err(err, ES_EUNSUPPORTED, "diagnose: storage method %s mixes the fields in its tables: no per-field rows",
                   st->ops->name);
}

int es_diag_model_table(es_model *m, int t, int field, float **x, size_t *n, int *dim, char *name, size_t name_cap,
                        es_err *err) {
    if (!m || !x || !n || !dim) return es__err(err, ES_EINVAL, "diagnose: NULL argument");
    *x = NULL;
    *n = 0;
    *dim = 0;
    int nt = es_diag_model_tables(m);
    if (t < 0 || t >= nt)
        return es__err(err, nt ? ES_EINVAL : ES_EUNSUPPORTED, "diagnose: table %d of %d (storage method %s)", t, nt,
                       m->st ? m->st->ops->name : "none");
    es_rows *r = m->st->ops->rows(m->st, t);
    uint64_t lo[64], hi[64];
    int nr;
    if (field < 0) {
        lo[0] = 0, hi[0] = r->n_rows, nr = 1;
    } else if ((nr = field_ranges(m, t, field, lo, hi, 64, err)) < 0) {
        return nr;
    }
    uint64_t total = 0;
    for (int i = 0; i < nr; i++) {
        if (hi[i] > r->n_rows || lo[i] > hi[i])
            return es__err(err, ES_EFORMAT, "diagnose: field %d's rows [%llu, %llu) outside the table's %llu", field,
                           (unsigned long long)lo[i], (unsigned long long)hi[i], (unsigned long long)r->n_rows);
        total += hi[i] - lo[i];
    }
    size_t bytes;
    if (total == 0) return es__err(err, ES_EINVAL, "diagnose: table %d has no rows", t);
    if (!es__mul_size((size_t)total, (size_t)r->dim * sizeof(float), &bytes))
        return es__err(err, ES_ERANGE, "diagnose: %llu rows overflow", (unsigned long long)total);
    float *out = es__malloc(bytes);
    if (!out) return es__err(err, ES_ENOMEM, "diagnose: out of memory for %llu rows of %d", (unsigned long long)total, r->dim);
    size_t o = 0;
    for (int i = 0; i < nr; i++)
        for (uint64_t row = lo[i]; row < hi[i]; row++, o++) {
            float *dst = out + o * (size_t)r->dim;
            const float *src = es__rows_get(r, row, dst);
            if (src != dst) memcpy(dst, src, (size_t)r->dim * sizeof(float));
        }
    *x = out;
    *n = (size_t)total;
    *dim = r->dim;
    if (name && name_cap) {
        if (nt == 1) snprintf(name, name_cap, "%s", m->st->ops->name);
        else snprintf(name, name_cap, "%s.%d", m->st->ops->name, t);
    }
    return ES_OK;
}

/* ---- collisions ------------------------------------------------------------ */

typedef struct {
    uint64_t row, count, key;
} kv;

typedef struct {
    kv *v;
    size_t n, cap;
    const es__hashed *h;
    size_t c;
    int oom;
} kv_ctx;

static void collect(uint64_t key, uint64_t count, void *ctx) {
    kv_ctx *x = ctx;
    if (x->oom) return;
    if (x->n == x->cap) {
        size_t nc = x->cap ? 2 * x->cap : 1024;
        kv *nv = es__realloc(x->v, nc * sizeof(kv));
        if (!nv) {
            x->oom = 1;
            return;
        }
        x->v = nv, x->cap = nc;
    }
    const es__hashed *h = x->h;
    x->v[x->n].row = h->base[x->c] + es__range(es__hash_u64(key, h->salt[x->c]), h->nrows[x->c]);
    x->v[x->n].count = count;
    x->v[x->n].key = key;
    x->n++;
}

/* row ascending, then count descending, then key descending: the first of
 * a row is the value that keeps it */
static int kv_cmp(const void *a, const void *b) {
    const kv *x = a, *y = b;
    if (x->row != y->row) return x->row < y->row ? -1 : 1;
    if (x->count != y->count) return x->count > y->count ? -1 : 1;
    return x->key > y->key ? -1 : x->key < y->key;
}

int es_diag_model_collisions(es_model *m, const es_vocab *v, int field, es_diag_collisions *out, es_err *err) {
    if (!m || !v || !out) return es__err(err, ES_EINVAL, "diagnose: NULL argument");
    memset(out, 0, sizeof *out);
    if (field < 0 || field >= m->n_fields || field >= es_vocab_n_fields(v))
        return es__err(err, ES_EINVAL, "diagnose: field %d outside the model's %d fields", field, m->n_fields);
    es_storage *st = m->st;
    if (st->ops->field_stats != es__hashed_field_stats)
        return es__err(err, ES_EUNSUPPORTED, "diagnose: collisions are measured for hash and unified, not %s", st->ops->name);
    kv_ctx x = {.h = st->impl, .c = (size_t)field * ((const es__hashed *)st->impl)->k};
    es__vocab_each(v, field, collect, &x);
    if (x.oom) {
        es__free(x.v);
        return es__err(err, ES_ENOMEM, "diagnose: out of memory listing field %d's values", field);
    }
    out->rows = x.h->nrows[x.c];
    out->values = x.n;
    qsort(x.v, x.n, sizeof(kv), kv_cmp);
    uint64_t total = 0, lost = 0, lost_w = 0;
    for (size_t i = 0; i < x.n; i++) total += x.v[i].count;
    for (size_t a = 0; a < x.n;) {
        size_t b = a + 1;
        while (b < x.n && x.v[b].row == x.v[a].row) b++;
        out->rows_used++;
        lost += b - a - 1;
        for (size_t i = a + 1; i < b; i++) lost_w += x.v[i].count;
        uint64_t cnt = b - a;
        /* keep the ES_DIAG_TOP_ROWS fullest rows (ties: lower row first) */
        int pos = out->n_top;
        while (pos > 0 && out->top_values[pos - 1] < cnt) pos--;
        if (pos < ES_DIAG_TOP_ROWS) {
            int last = out->n_top < ES_DIAG_TOP_ROWS ? out->n_top : ES_DIAG_TOP_ROWS - 1;
            for (int u = last; u > pos; u--) out->top_row[u] = out->top_row[u - 1], out->top_values[u] = out->top_values[u - 1];
            out->top_row[pos] = x.v[a].row;
            out->top_values[pos] = cnt;
            if (out->n_top < ES_DIAG_TOP_ROWS) out->n_top++;
        }
        a = b;
    }
    out->values_per_row = out->rows_used ? (double)x.n / (double)out->rows_used : 0;
    out->load = out->rows ? (double)out->rows_used / (double)out->rows : 0;
    out->share_colliding = x.n ? (double)lost / (double)x.n : 0;
    out->share_colliding_weight = total ? (double)lost_w / (double)total : 0;
    es__free(x.v);
    return ES_OK;
}
