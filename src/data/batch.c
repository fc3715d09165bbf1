/*
 * batch.c — es_batch: the caller-owned fixed arrays that readers fill and
 * storage methods and models consume (layout in embstore.h).
 *
 * label and dense are 64-byte aligned (models read them with SIMD); off,
 * val and wt are plain allocations because val/wt grow with
 * es_batch_reserve_vals and off is indexed, not vectorised.  The value
 * arrays are limited to UINT32_MAX entries because off[] is uint32_t.
 */
#include "core/core.h"

int es_batch_alloc(es_batch *b, int cap, int n_dense, int n_fields, size_t val_cap) {
    if (!b) return ES_EINVAL;
    memset(b, 0, sizeof *b);
    if (cap <= 0 || n_dense < 0 || n_fields < 0) return ES_EINVAL;
    size_t nd, nf, nf1;
    if (!es__mul_size((size_t)cap, (size_t)n_dense, &nd) || !es__mul_size((size_t)cap, (size_t)n_fields, &nf) ||
        !es__add_size(nf, 1, &nf1))
        return ES_ERANGE;
    if (val_cap == 0) val_cap = nf ? nf : 1; /* one value per (row, field) is the common case */
    if (val_cap > UINT32_MAX) return ES_ERANGE;
    size_t bl, bd, bo, bv, bw;
    if (!es__mul_size((size_t)cap, sizeof(float), &bl) || !es__mul_size(nd, sizeof(float), &bd) ||
        !es__mul_size(nf1, sizeof(uint32_t), &bo) || !es__mul_size(val_cap, sizeof(uint64_t), &bv) ||
        !es__mul_size(val_cap, sizeof(float), &bw))
        return ES_ERANGE;
    b->label = es__alloc_aligned(bl);
    b->dense = es__alloc_aligned(bd);
    b->off = es__calloc(nf1, sizeof(uint32_t));
    b->val = es__malloc(bv);
    b->wt = es__malloc(bw);
    if (!b->label || !b->dense || !b->off || !b->val || !b->wt) {
        es_batch_free(b);
        return ES_ENOMEM;
    }
    b->cap = cap;
    b->n_dense = n_dense;
    b->n_fields = n_fields;
    b->val_cap = val_cap;
    b->n = 0;
    return ES_OK;
}

void es_batch_free(es_batch *b) {
    if (!b) return;
    es__free_aligned(b->label);
    es__free_aligned(b->dense);
    es__free(b->off);
    es__free(b->val);
    es__free(b->wt);
    memset(b, 0, sizeof *b);
}

int es_batch_reserve_vals(es_batch *b, size_t need) {
    if (!b) return ES_EINVAL;
    if (need <= b->val_cap) return ES_OK;
    if (need > UINT32_MAX) return ES_ERANGE;
    /* Double so that a reader growing one value at a time stays amortised
     * O(1) per value. */
    size_t cap = b->val_cap > UINT32_MAX / 2 ? (size_t)UINT32_MAX : b->val_cap * 2;
    if (cap < need) cap = need;
    if (cap < 64) cap = 64;
    uint64_t *v = es__realloc(b->val, cap * sizeof(uint64_t));
    if (!v) return ES_ENOMEM;
    b->val = v;
    float *w = es__realloc(b->wt, cap * sizeof(float));
    if (!w) return ES_ENOMEM; /* val is larger already; harmless */
    b->wt = w;
    b->val_cap = cap;
    return ES_OK;
}
