/*
 * unified.c — the `unified` storage method: Unified Embedding (Coleman et
 * al., "Unified Embedding: Battle-Tested Feature Representations for
 * Web-Scale ML Systems", NeurIPS 2023), i.e. feature multiplexing.
 *
 * All fields share one parameter space instead of owning a table each;
 * each field hashes into it with its own salts, so the model can tell
 * fields apart even when their values land on the same rows.  A field's
 * dim-wide vector is the concatenation of k = chunks lookups of
 * cd = dim / k floats each (the paper's multi-probe / variable-length
 * variant: a value collides completely only if all k probes collide).
 *
 * Layout: T = subtables sub-tables of cd-float rows, stacked in one row
 * table; sub-table t has R / T rows, the first R mod T sub-tables one
 * more.  Chunk j of field f uses sub-table  t = (f*k + j) mod T  with salt
 * es__storage_salt(seed, f, j), and reads row
 *   base_t + es__range(es__hash_u64(key, salt), rows_t).
 * T > 1 models the paper's hardware-friendly split of the shared table
 * into equal shards; T = 1 is a single shared table.  T may not exceed
 * F * k (a sub-table no chunk uses would be dead weight).
 *
 * Sizing from the budget B: R = floor((B - aux) / (cd * 4)), aux being the
 * per-(field, chunk) base/rows/salt arrays, so parameters + aux are within
 * cd * 4 bytes of B.  The options are in unified_opts; the resolved
 * chunks, subtables, seed and rows are recorded (saved in s->meta) and read
 * back from opts on load.
 */
#include "storage/storage.h"

#define UNIFIED_MAX_CHUNKS 64 /* ES_RESOLVE_BLOCK / 2: a block holds two values' rows */

static const es__opt_spec unified_opts[] = {
    ES_OPT_U("chunks", 1, UNIFIED_MAX_CHUNKS, "1", 0, "k lookups per field of dim / k floats each, concatenated", "2", ""),
    ES_OPT_U("subtables", 1, INT32_MAX, "1", 0, "T equal sub-tables the chunks are spread over (<= fields x chunks)", "2", ""),
    ES_OPT_SEED,
    ES_OPT_U("rows", 1, UINT64_C(1) << 48, NULL, ES_OPT_SIZES, "rows of the shared table (default: from the budget)", "64", ""),
};

static int unified_create(es_storage *s, const es_vocab *vocab, es_err *err) {
    (void)vocab; /* sized from the budget alone: the shared table needs no per-field split */
    const int F = s->p.n_fields, dim = s->p.dim;
    int rc;
    const int k = es__storage_opt_int(s, "chunks"), T = es__storage_opt_int(s, "subtables");
    if (es__storage_opt_given(s, "seed")) s->p.seed = es__storage_opt_u64(s, "seed");
    if (dim % k != 0)
        return es__err(err, ES_EINVAL, "unified: dim %d is not divisible by chunks %d (each chunk is dim / chunks floats)",
                       dim, k);
    if ((uint64_t)T > (uint64_t)F * (uint64_t)k)
        return es__err(err, ES_EINVAL,
                       "unified: subtables must be in [1, fields x chunks = %llu], got %d (more would leave sub-tables "
                       "no chunk uses)",
                       (unsigned long long)F * (unsigned long long)k, T);
    const int cd = dim / k;
    const size_t aux = es__hashed_aux_bytes(F, k);
    uint64_t total;
    if (es__storage_opt_given(s, "rows")) {
        total = es__storage_opt_u64(s, "rows");
        if (total < (uint64_t)T)
            return es__err(err, ES_EINVAL, "unified: rows=%llu is fewer than the %d sub-tables", (unsigned long long)total, T);
    } else if ((rc = es__hashed_rows_from_budget(s, aux, cd, (uint64_t)T, &total, err)) != 0) {
        return rc;
    }
    if ((rc = es__hashed_alloc(s, total, k, cd, err)) != 0) return rc;
    es__hashed *h = s->impl;
    const uint64_t per = total / (uint64_t)T, extra = total % (uint64_t)T;
    for (int f = 0; f < F; f++)
        for (int j = 0; j < k; j++) {
            size_t c = (size_t)f * (size_t)k + (size_t)j;
            uint64_t t = (uint64_t)c % (uint64_t)T;
            /* sub-table t starts after t full sub-tables and min(t, extra) extra rows */
            h->base[c] = t * per + (t < extra ? t : extra);
            h->nrows[c] = per + (t < extra);
            h->salt[c] = es__storage_salt(s->p.seed, f, j);
        }
    /* resolved values, written to s->meta and read back on load */
    if ((rc = es__storage_opt_set_u64(s, "chunks", (uint64_t)k, err)) != 0 ||
        (rc = es__storage_opt_set_u64(s, "subtables", (uint64_t)T, err)) != 0 ||
        (rc = es__storage_opt_set_u64(s, "seed", s->p.seed, err)) != 0 || (rc = es__storage_opt_set_u64(s, "rows", total, err)) != 0) {
        es__hashed_destroy(s);
        return rc;
    }
    return ES_OK;
}

const es_storage_ops es__storage_unified = {
    .name = "unified",
    .summary = "Unified Embedding: one shared hashed table for all fields, per-field salts, k chunks per field",
    .create = unified_create,
    .lookup = es__hashed_lookup,
    .backward = es__hashed_backward,
    .tensors = es__hashed_tensors,
    .after_load = NULL,
    .field_stats = es__hashed_field_stats,
    .destroy = es__hashed_destroy,
    ES_STORAGE_OPTS(unified_opts),
    .default_budget = ES_DEFAULT_BUDGET,
    .plain_rows = 1,
    .rows = es__hashed_rows, /* es__rows_lookup pools codes chunk by chunk */
    .row_map = es__hashed_row_map,
};
