/*
 * dist.c — the distributed training step (design in dist.h and
 * docs/scale.md).  One step on the global batch g, on rank k of N:
 *
 *   1. resolve: the method's resolve function maps the keys of k's rows
 *      to global table rows (es__row_map);
 *   2. lookup: the distinct rows go to their owners (r % N) by alltoallv
 *      as local indices r / N, the owners send the rows back the same way,
 *      each at its table's width, and the rows are pooled from that cache
 *      as the method's own lookup pools them (es__rows_lookup for chunks
 *      side by side; the sum or product of a value's rows, or the method's
 *      pool callback, otherwise: es__row_map's combine), so the embeddings
 *      are those one process computes;
 *   3. dense: forward, loss (scaled by 1 / n of the global batch) and
 *      backward block by block; the block gradients are summed by the
 *      fixed tree of dist.h (a reduce-scatter and an allgather of the N
 *      subtree sums, dense_reduce) and every rank takes the same optimizer
 *      step; a method's replicated parameters (ES_COMBINE_METHOD: mde's
 *      projections) add their block gradients to the same reduce, and are
 *      updated after step 4, whose row gradients read them;
 *   4. sparse: every (row, field, value, chunk) of k's rows sends its
 *      weight and gradient slice to the row's owner, in batch order (a
 *      product's gradient, dout times the product of the value's other
 *      rows from the cache, is computed here and sent with weight 1; a
 *      method's row gradient comes from its pool_grad, or with its own
 *      weight from pool_grad_wt); the
 *      owner receives from ranks 0..N-1, i.e. in global batch order, sums
 *      each row's gradients in that order (es__axpy into an es_gradacc,
 *      as es__rows_backward does on one process) and applies ONE update
 *      per distinct row (es__gradacc_apply).  Gradients travel unsummed,
 *      not as per-rank partial sums: that costs the duplicates inside a
 *      rank's part, and buys a sum in the one-process order.
 *
 * Buffers grow as needed and are kept between steps.
 */
#include "train/dist.h"

#include "core/simd.h"
#include "model/layers.h"

#include <math.h>
#include <stdio.h>

struct es__dist {
    const es_comm *c;
    int rank, size;
    es_model *m;
    es__row_map map;
    int n_t;                /* the map's tables: */
    es_rows **tab;          /* [n_t] */
    uint64_t *base;         /* [n_t + 1] table i holds global rows [base[i], base[i + 1]) */
    uint64_t *lo;           /* [n_t + 1] table i holds this rank's local indices [lo[i], lo[i + 1]) */
    int *ttensor;           /* [n_t] its tensor in es__dist_tables' list */
    size_t rb_max;          /* the widest table's row bytes */
    int wmax;               /* and its floats */
    int rep;                /* a replicated storage (ops->rep_*: dhe, tt): no map, its gradient joins the dense one */
    size_t Pn;              /* the net's parameters */
    size_t P;               /* floats reduced per step: the net's, then the replicated storage's or the map's (dense) */
    es_gradacc *ga;         /* [n_t] owner side: summed gradients of owned rows, per table */
    /* step scratch */
    uint64_t *ids;          /* [n_ids] global rows of this rank's values, batch order */
    int32_t *iu;            /* [n_ids] their distinct (cache) index */
    size_t ids_cap, iu_cap, upos_cap;
    uint64_t *ukey;         /* distinct rows: open addressing over ucap slots */
    int32_t *uslot;
    size_t ucap;
    uint64_t *uniq;         /* [n_uniq] distinct rows in first-seen order */
    size_t *upos;           /* [n_uniq] its place in the owner's reply (bytes) */
    size_t n_uniq, uniq_cap;
    int32_t *utab;          /* [n_uniq] the table of each distinct row */
    size_t *uoff;           /* [n_uniq] its place in the cache (bytes) */
    size_t utab_cap, uoff_cap;
    unsigned char *cache;   /* the distinct rows as fetched (fp32 rows or codes, table_rows), each its table's width */
    size_t cache_cap;
    size_t *scnt, *sdsp, *rcnt, *rdsp, *cur; /* [size] bytes */
    unsigned char *sbuf, *rbuf, *sbuf2, *rbuf2;
    size_t sbuf_cap, rbuf_cap, sbuf2_cap, rbuf2_cap;
    float *part;            /* [ES_DIST_BLOCKS, P] block gradients */
    float *gsum;            /* [3, size, C] the dense reduce-scatter: sent, received, gathered (C = ceil(P / size)) */
    double *bloss;          /* [ES_DIST_BLOCKS] */
    float *tmp;             /* [widest row] */
    float *ebuf;            /* [2 k, widest row] a value's rows dequantized (a table at a precision), then
                             * (ES_COMBINE_METHOD) their gradients, which the method computes from those rows */
    es__dist_stats st;
};

/* ---- comm wrappers: timing, byte counts, errors ---------------------------------- */

static int comm_fail(es__dist *d, const char *what) {
    return es__err(&d->m->err, ES_EIO, "rank %d of %d: %s failed in the communication layer", d->rank, d->size, what);
}

static int do_alltoall(es__dist *d, const void *s, void *r, size_t each) {
    double t = es__now();
    int rc = d->c->alltoall(d->c->ctx, s, r, each);
    d->st.seconds += es__now() - t;
    d->st.sparse_bytes += (double)each * (d->size - 1);
    return rc ? comm_fail(d, "alltoall") : ES_OK;
}

static int do_alltoallv(es__dist *d, const void *s, const size_t *sc, const size_t *sd, void *r, const size_t *rc_,
                        const size_t *rd) {
    double t = es__now();
    int rc = d->c->alltoallv(d->c->ctx, s, sc, sd, r, rc_, rd);
    d->st.seconds += es__now() - t;
    for (int i = 0; i < d->size; i++)
        if (i != d->rank) d->st.sparse_bytes += (double)sc[i];
    return rc ? comm_fail(d, "alltoallv") : ES_OK;
}

static int do_allgather(es__dist *d, const void *s, void *r, size_t each) {
    double t = es__now();
    int rc = d->c->allgather(d->c->ctx, s, r, each);
    d->st.seconds += es__now() - t;
    d->st.dense_bytes += (double)each * (d->size - 1);
    return rc ? comm_fail(d, "allgather") : ES_OK;
}

/* What a lookup reads of table t, row by row: the fp32 rows, or the codes
 * of a table trained at a precision (QAT: the forward reads the codes, an
 * update changes the fp32 master and re-encodes, es__rows_update); *rb
 * the bytes of a row. */
static const unsigned char *table_rows(const es_rows *t, size_t *rb) {
    if (t->prec != ES_PREC_FP32) {
        *rb = es__prec_row_bytes(t->prec, t->dim);
        return t->q;
    }
    *rb = (size_t)t->dim * sizeof(float);
    return (const unsigned char *)t->w;
}

/* This rank's local row li (global row li * N + rank): its table, and
 * *r its row there; NULL past the rank's rows. */
static es_rows *local_row(const es__dist *d, uint64_t li, uint64_t *r, int *table) {
    if (li >= d->lo[d->n_t]) return NULL;
    int a = 0, b = d->n_t - 1; /* the last table with lo <= li (one holding none of the rank's rows has its next's lo) */
    while (a < b) {
        int mid = (a + b + 1) / 2;
        if (d->lo[mid] <= li) a = mid;
        else b = mid - 1;
    }
    *r = li - d->lo[a];
    if (table) *table = a;
    return d->tab[a];
}

/* The table of global row `row` (< base[n_t]). */
static int global_table(const es__dist *d, uint64_t row) { return (int)es__last_le(d->base, (size_t)d->n_t, row); }

/* Bytes of one row of table i as a lookup reads it. */
static size_t tab_row_bytes(const es__dist *d, int i) {
    size_t rb;
    table_rows(d->tab[i], &rb);
    return rb;
}

static void free_tables(es__dist *d) {
    for (int i = 0; d->ga && i < d->n_t; i++) es__gradacc_free(&d->ga[i]);
    es__free(d->ga);
    es__free(d->tab);
    es__free(d->base);
    es__free(d->lo);
    es__free(d->ttensor);
    d->ga = NULL;
    d->tab = NULL;
    d->base = d->lo = NULL;
    d->ttensor = NULL;
    d->n_t = 0;
}

/* Grow *p (elements of size el) to hold n. */
static int grow(void **p, size_t *cap, size_t n, size_t el) {
    if (n <= *cap) return ES_OK;
    size_t c = *cap ? *cap : 64;
    while (c < n) c *= 2;
    void *q = es__realloc(*p, c * el);
    if (!q) return ES_ENOMEM;
    *p = q;
    *cap = c;
    return ES_OK;
}

/* ---- creation --------------------------------------------------------------------- */

int es__dist_check_comm(const es_comm *c, es_err *err) {
    if (!c->alltoall || !c->alltoallv || !c->allgather || !c->bcast)
        return es__err(err, ES_EINVAL, "the communicator lacks a function");
    if (c->size < 1 || c->size > ES_DIST_BLOCKS || (c->size & (c->size - 1)) != 0)
        return es__err(err, ES_EINVAL,
                       "%d processes: training across processes needs a power of two up to %d (the fixed reduction "
                       "tree of docs/scale.md)",
                       c->size, ES_DIST_BLOCKS);
    if (c->rank < 0 || c->rank >= c->size) return es__err(err, ES_EINVAL, "rank %d out of range [0, %d)", c->rank, c->size);
    return ES_OK;
}

/* A replicated storage (dhe, tt: ops->rep_*): every rank holds all of it,
 * as it holds the dense layers; its gradient is reduced with theirs. */
static int dist_bind_replicated(es__dist *d, es_model *m, es_err *err) {
    es_storage *s = m->st;
    if (s->p.precision != ES_PREC_FP32) return es__err(err, ES_EINVAL, "storage '%s' trains at fp32 across processes", s->ops->name);
    if (s->p.opt.row_l2 > 0) return es__err(err, ES_EINVAL, "lazy L2 on the tables (--emb-l2) is not supported across processes yet");
    if (m->np.dropout > 0.0f)
        return es__err(err, ES_EINVAL, "dropout is not supported across processes yet (its masks depend on the row's place in the batch)");
    if (s->p.shard_n > 1) return es__err(err, ES_EINVAL, "storage '%s' is replicated, not sharded, across processes", s->ops->name);
    d->m = m;
    d->rep = 1;
    d->Pn = es__net_n_params(m->net);
    d->P = d->Pn + s->ops->rep_floats(s);
    memset(&d->map, 0, sizeof d->map);
    free_tables(d);
    es__free(d->part);
    es__free(d->gsum);
    es__free(d->tmp);
    d->tmp = NULL;
    d->part = es__malloc(((size_t)ES_DIST_BLOCKS * d->P + 1) * sizeof(float));
    d->gsum = es__malloc((3 * (size_t)d->size * ((d->P + (size_t)d->size - 1) / (size_t)d->size) + 1) * sizeof(float));
    if (!d->part || !d->gsum) return es__err(err, ES_ENOMEM, "out of memory for the distributed step");
    return ES_OK;
}

int es__dist_replicated(const es__dist *d) { return d->rep; }

int es__dist_rebind(es__dist *d, es_model *m, es_err *err) {
    es_storage *s = m->st;
    if (!s->ops->row_map && !s->ops->rep_floats)
        return es__err(err, ES_EINVAL,
                       "storage '%s' cannot be trained across processes yet (full, hash, unified, adapt, qr, mde and "
                       "multihash are sharded, dhe and tt replicated: docs/scale.md)",
                       s->ops->name);
    if (!s->ops->row_map) return dist_bind_replicated(d, m, err);
    if (s->p.opt.row_l2 > 0) return es__err(err, ES_EINVAL, "lazy L2 on the tables (--emb-l2) is not supported across processes yet");
    if (m->np.dropout > 0.0f)
        return es__err(err, ES_EINVAL, "dropout is not supported across processes yet (its masks depend on the row's place in the batch)");
    if ((s->p.shard_n > 1 ? s->p.shard_n : 1) != d->size || s->p.shard_rank != d->rank) /* a 1-rank shard is stored as a whole table */
        return es__err(err, ES_EINVAL, "the storage is not sharded for rank %d of %d", d->rank, d->size);
    free_tables(d);
    int rc = s->ops->row_map(s, &d->map);
    if (rc != ES_OK)
        return es__err(err, rc, "storage '%s' with these options (%s) cannot be trained across processes (docs/scale.md)", s->ops->name,
                       s->meta);
    const es__row_map *mp = &d->map;
    const int method = mp->combine == ES_COMBINE_METHOD;
    if (mp->n_t < 1 || (!mp->table && mp->n_t > ES_ROW_MAP_TABLES) || mp->k < 1 || mp->k > ES_RESOLVE_BLOCK / 2 ||
        (mp->combine != ES_COMBINE_CAT && mp->combine != ES_COMBINE_SUM && mp->combine != ES_COMBINE_PROD &&
         mp->combine != ES_COMBINE_SLICES && !method) ||
        (method && (!mp->pool || (!mp->pool_grad && !mp->pool_grad_wt) || (mp->dense && (!mp->dense_grad || !mp->dense_apply)))))
        return es__err(err, ES_EINVAL, "storage '%s': a row map of %d tables, %d rows a value, combine %d is not one the distributed step takes",
                       s->ops->name, mp->n_t, mp->k, mp->combine);
    const int n_t = mp->n_t;
    d->tab = es__calloc((size_t)n_t, sizeof *d->tab);
    d->base = es__calloc((size_t)n_t + 1, sizeof *d->base);
    d->lo = es__calloc((size_t)n_t + 1, sizeof *d->lo);
    d->ttensor = es__calloc((size_t)n_t, sizeof *d->ttensor);
    d->ga = es__calloc((size_t)n_t, sizeof *d->ga);
    if (!d->tab || !d->base || !d->lo || !d->ttensor || !d->ga) {
        free_tables(d);
        return es__err(err, ES_ENOMEM, "out of memory for the distributed step");
    }
    d->n_t = n_t;
    for (int i = 0; i < n_t; i++) d->tab[i] = es__row_map_table(mp, i);
    for (int i = 0; i <= n_t; i++) d->base[i] = es__row_map_base(mp, i);
    const int cd = d->tab[0]->dim;
    int wmax = 0;
    for (int i = 0; i < n_t; i++) wmax = ES_MAX(wmax, d->tab[i]->dim);
    d->wmax = wmax;
    const int side = mp->combine == ES_COMBINE_CAT || mp->combine == ES_COMBINE_SLICES; /* a value's rows side by side */
    if (!method && (side ? mp->k * cd != m->E : cd != m->E))
        return es__err(err, ES_EINVAL, "storage '%s': %d %s of %d floats do not make the model's %d", s->ops->name, mp->k,
                       side ? "chunks" : "combined rows", cd, m->E);
    /* table i: the rank's global rows in [base[i], base[i + 1]), at local
     * indices from the count of its rows below base[i] */
    const uint64_t N = (uint64_t)d->size, rk = (uint64_t)d->rank;
    for (int i = 0; i <= n_t; i++) {
        d->lo[i] = (d->base[i] + N - 1 - rk) / N;
        if (i == n_t) break;
        const es_rows *t = d->tab[i];
        /* the built-in modes combine rows of one width and precision; a
         * method's callbacks read each table's rows as floats of its width
         * (codes dequantized by cached_rows, as es__rows_get does) */
        if (!method && (t->dim != cd || t->prec != d->tab[0]->prec))
            return es__err(err, ES_EINVAL, "storage '%s': table %d of its row map differs in width or precision from table 0", s->ops->name, i);
        if (d->base[i + 1] <= d->base[i]) return es__err(err, ES_EINVAL, "storage '%s': table %d of its row map is empty", s->ops->name, i);
        if (i > 0 && d->lo[i] - d->lo[i - 1] != d->tab[i - 1]->n_rows)
            return es__err(err, ES_EINVAL, "storage '%s': table %d holds %llu rows on rank %d of %d, its share of the global rows is %llu",
                           s->ops->name, i - 1, (unsigned long long)d->tab[i - 1]->n_rows, d->rank, d->size,
                           (unsigned long long)(d->lo[i] - d->lo[i - 1]));
    }
    if (d->lo[n_t] - d->lo[n_t - 1] != d->tab[n_t - 1]->n_rows || d->base[n_t] != mp->rows)
        return es__err(err, ES_EINVAL, "storage '%s': its last table holds %llu rows on rank %d of %d, its share of the global rows is %llu",
                       s->ops->name, (unsigned long long)d->tab[n_t - 1]->n_rows, d->rank, d->size,
                       (unsigned long long)(d->lo[n_t] - d->lo[n_t - 1]));
    d->rb_max = 0;
    for (int i = 0; i < n_t; i++) d->rb_max = ES_MAX(d->rb_max, tab_row_bytes(d, i));
    d->m = m;
    d->rep = 0;
    d->Pn = es__net_n_params(m->net);
    d->P = d->Pn + (method ? mp->dense : 0);
    es__free(d->part);
    es__free(d->gsum);
    es__free(d->tmp);
    es__free(d->ebuf);
    d->part = es__malloc(((size_t)ES_DIST_BLOCKS * d->P + 1) * sizeof(float));
    d->gsum = es__malloc((3 * (size_t)d->size * ((d->P + (size_t)d->size - 1) / (size_t)d->size) + 1) * sizeof(float));
    d->tmp = es__malloc((size_t)wmax * sizeof(float));
    d->ebuf = es__malloc(2 * (size_t)mp->k * (size_t)wmax * sizeof(float));
    if (!d->part || !d->gsum || !d->tmp || !d->ebuf) return es__err(err, ES_ENOMEM, "out of memory for the distributed step");
    for (int i = 0; i < n_t; i++) {
        size_t cap = (size_t)m->max_batch * (size_t)m->n_fields;
        if (cap > d->tab[i]->n_rows) cap = (size_t)d->tab[i]->n_rows;
        if (es__gradacc_init(&d->ga[i], cap ? cap : 1, d->tab[i]->dim) != ES_OK) return es__err(err, ES_ENOMEM, "out of memory for the distributed step");
    }
    return ES_OK;
}

int es__dist_create(es__dist **out, const es_comm *c, es_model *m, es_err *err) {
    *out = NULL;
    int rc = es__dist_check_comm(c, err);
    if (rc != ES_OK) return rc;
    es__dist *d = es__calloc(1, sizeof *d);
    if (!d) return es__err(err, ES_ENOMEM, "out of memory");
    d->c = c;
    d->rank = c->rank;
    d->size = c->size;
    size_t n = (size_t)c->size;
    d->scnt = es__calloc(5 * n, sizeof(size_t));
    d->bloss = es__calloc(ES_DIST_BLOCKS, sizeof(double));
    if (!d->scnt || !d->bloss) {
        es__dist_free(d);
        return es__err(err, ES_ENOMEM, "out of memory");
    }
    d->sdsp = d->scnt + n;
    d->rcnt = d->sdsp + n;
    d->rdsp = d->rcnt + n;
    d->cur = d->rdsp + n;
    if ((rc = es__dist_rebind(d, m, err)) != ES_OK) {
        es__dist_free(d);
        return rc;
    }
    *out = d;
    return ES_OK;
}

void es__dist_free(es__dist *d) {
    if (!d) return;
    free_tables(d);
    es__free(d->utab);
    es__free(d->uoff);
    es__free(d->ids);
    es__free(d->iu);
    es__free(d->ukey);
    es__free(d->uslot);
    es__free(d->uniq);
    es__free(d->upos);
    es__free(d->cache);
    es__free(d->scnt);
    es__free(d->sbuf);
    es__free(d->rbuf);
    es__free(d->sbuf2);
    es__free(d->rbuf2);
    es__free(d->part);
    es__free(d->gsum);
    es__free(d->bloss);
    es__free(d->tmp);
    es__free(d->ebuf);
    es__free(d);
}

void es__dist_get_stats(const es__dist *d, es__dist_stats *out) { *out = d->st; }

/* ---- the distinct rows of a step ---------------------------------------------------- */

static int uniq_reset(es__dist *d, size_t n_ids) {
    size_t cap = 16;
    while (cap < 2 * n_ids) cap <<= 1;
    if (cap > d->ucap) {
        es__free(d->ukey);
        es__free(d->uslot);
        d->ukey = es__malloc(cap * sizeof *d->ukey);
        d->uslot = es__malloc(cap * sizeof *d->uslot);
        if (!d->ukey || !d->uslot) {
            d->ucap = 0;
            return ES_ENOMEM;
        }
        d->ucap = cap;
    }
    memset(d->uslot, 0xff, d->ucap * sizeof *d->uslot);
    d->n_uniq = 0;
    if (grow((void **)&d->uniq, &d->uniq_cap, n_ids + 1, sizeof *d->uniq) != ES_OK ||
        grow((void **)&d->upos, &d->upos_cap, n_ids + 1, sizeof *d->upos) != ES_OK)
        return ES_ENOMEM;
    return ES_OK;
}

/* Distinct index of global row `row` (-1 when absent and !add). */
static int32_t uniq_find(es__dist *d, uint64_t row, int add) {
    size_t mask = d->ucap - 1, h = (size_t)es__mix64(row) & mask;
    for (;;) {
        int32_t s = d->uslot[h];
        if (s < 0) {
            if (!add) return -1;
            d->ukey[h] = row;
            d->uslot[h] = (int32_t)d->n_uniq;
            d->uniq[d->n_uniq] = row;
            return (int32_t)d->n_uniq++;
        }
        if (d->ukey[h] == row) return s;
        h = (h + 1) & mask;
    }
}

/* The resolve function es__rows_lookup sees: the method's, then the
 * distinct index (the cache row). */
static void cache_resolve(const void *ctx, int f, const uint64_t *keys, size_t n, uint64_t *ids) {
    es__dist *d = (es__dist *)ctx;
    d->map.fn(d->map.ctx, f, keys, n, ids);
    for (size_t i = 0; i < n * (size_t)d->map.k; i++) {
        int32_t u = uniq_find(d, ids[i], 0);
        ES_ASSERT(u >= 0);
        ids[i] = (uint64_t)u;
    }
}

/* Exchange: send[bytes per rank in d->scnt, at d->sdsp] -> recv (counts
 * first, by alltoall); the receive layout in d->rcnt / d->rdsp. */
static int exchange(es__dist *d, const void *send, unsigned char **recv, size_t *recv_cap) {
    int rc = do_alltoall(d, d->scnt, d->rcnt, sizeof(size_t));
    if (rc) return rc;
    size_t tot = 0;
    for (int i = 0; i < d->size; i++) {
        d->rdsp[i] = tot;
        tot += d->rcnt[i];
    }
    if (grow((void **)recv, recv_cap, tot + 1, 1) != ES_OK) return es__err(&d->m->err, ES_ENOMEM, "out of memory for a receive buffer");
    return do_alltoallv(d, send, d->scnt, d->sdsp, *recv, d->rcnt, d->rdsp);
}

/* ---- one step ------------------------------------------------------------------------ */

static int block_row(int j, int n) { return (int)((int64_t)j * n / ES_DIST_BLOCKS); }

void es__dist_part_of(int rank, int size, int n, int *lo, int *hi) {
    *lo = block_row(rank * ES_DIST_BLOCKS / size, n);
    *hi = block_row((rank + 1) * ES_DIST_BLOCKS / size, n);
}

void es__dist_part(const es__dist *d, int n, int *lo, int *hi) { es__dist_part_of(d->rank, d->size, n, lo, hi); }

/* a[i] += b[i]: the one addition of the reduction tree */
static void add_into(float *restrict a, const float *restrict b, size_t n) {
    for (size_t i = 0; i < n; i++) a[i] += b[i];
}

/* Pairwise tree over cnt (a power of two) arrays of P floats at x: the
 * sum ends in x[0]. */
static void tree_sum(float *x, int cnt, size_t P) {
    for (int w = 1; w < cnt; w *= 2)
        for (int i = 0; i + w < cnt; i += 2 * w) add_into(x + (size_t)i * P, x + (size_t)(i + w) * P, P);
}

/* The dense allreduce in the tree's order, as a reduce-scatter then an
 * allgather: the P floats are cut into N chunks of C; rank c receives every
 * rank's subtree sum of chunk c (alltoall), adds them by the top of the
 * tree, and an allgather hands every rank all the chunks.  Each element is
 * added in the same order as by one tree over all 16 blocks, so the result
 * does not depend on N; each rank sends about 2 (N - 1) / N * 4P bytes
 * (an allgather of whole sums would send (N - 1) * 4P).  x: [P] this
 * rank's subtree sum in, the global sum out. */
static int dense_reduce(es__dist *d, float *x) {
    const size_t P = d->P, N = (size_t)d->size, C = (P + N - 1) / N;
    float *snd = d->gsum, *rcv = snd + N * C, *all = rcv + N * C;
    memcpy(snd, x, P * sizeof(float));
    memset(snd + P, 0, (N * C - P) * sizeof(float));
    double t = es__now();
    int rc = d->c->alltoall(d->c->ctx, snd, rcv, C * sizeof(float));
    if (rc == 0) {
        tree_sum(rcv, (int)N, C); /* rcv[0 .. C): chunk `rank` of the sum */
        rc = d->c->allgather(d->c->ctx, rcv, all, C * sizeof(float));
    }
    d->st.seconds += es__now() - t;
    d->st.dense_bytes += 2.0 * (double)(C * sizeof(float)) * (double)(N - 1);
    if (rc) return comm_fail(d, "the dense reduce-scatter");
    memcpy(x, all, P * sizeof(float));
    return ES_OK;
}

/* The k cached rows of one value (cache indices iu[0 .. k)): pointers
 * into the cache, or, for a table at a precision, dequantized into
 * d->ebuf (es__dequant_row: the values the method's own lookup combines);
 * tab[j] (may be NULL) row j's table. */
static void cached_rows(es__dist *d, const int32_t *iu, const float **e, int *tab) {
    for (int j = 0; j < d->map.k; j++) {
        const es_rows *t = d->tab[d->utab[iu[j]]];
        const unsigned char *row = d->cache + d->uoff[iu[j]];
        if (tab) tab[j] = d->utab[iu[j]];
        if (t->prec == ES_PREC_FP32) {
            e[j] = (const float *)(const void *)row;
        } else {
            float *dst = d->ebuf + (size_t)j * (size_t)t->dim;
            es__dequant_row(t->prec, row, t->dim, dst);
            e[j] = dst;
        }
    }
}

/* es__row_map's SUM, PROD, SLICES and METHOD pooling of this rank's
 * first `rows` rows of g from the cache, into out[rows, F, E]: per (row,
 * field) pair, from zero, each value's combined rows times its weight, in
 * the float operations of the method's own lookup (qr_lookup; METHOD: the
 * method's pool, mde_lookup's). */
static void combine_lookup(es__dist *d, const es_batch *g, int rows, float *out) {
    const int F = d->m->n_fields, k = d->map.k, dim = d->tab[0]->dim, E = d->m->E;
    const float *e[ES_RESOLVE_BLOCK / 2];
    int tab[ES_RESOLVE_BLOCK / 2];
    size_t v = 0; /* value index: d->iu + v * k are its rows */
    for (size_t P = 0, P1 = (size_t)rows * (size_t)F; P < P1; P++) {
        float *restrict o = out + P * (size_t)E;
        memset(o, 0, (size_t)E * sizeof *o);
        for (uint32_t i = g->off[P]; i < g->off[P + 1]; i++, v++) {
            const float wt = g->wt[i];
            cached_rows(d, d->iu + v * (size_t)k, e, tab);
            if (d->map.combine == ES_COMBINE_METHOD) {
                d->map.pool(d->map.self, tab, e, wt, o);
            } else if (d->map.combine == ES_COMBINE_PROD) {
                for (int c = 0; c < dim; c++) {
                    float x = wt;
                    for (int j = 0; j < k; j++) x *= e[j][c];
                    o[c] += x;
                }
            } else {
                const size_t step = d->map.combine == ES_COMBINE_SLICES ? (size_t)dim : 0;
                for (int j = 0; j < k; j++) es__axpy(o + (size_t)j * step, wt, e[j], (size_t)dim);
            }
        }
    }
}

/* Steps 1 and 2 of a step: the rows of g's first `rows` rows (this
 * rank's part) resolved to global rows (d->ids, the distinct ones in
 * d->uniq), fetched from their owners and pooled into m->emb.  A row
 * travels with its table's width: the owner knows the table from the
 * local index, the requester from the global row.  Collective. */
static int dist_fetch(es__dist *d, const es_batch *g, int rows) {
    es_model *m = d->m;
    es_err *err = &m->err;
    const int F = m->n_fields, N = d->size, k = d->map.k, cd = d->tab[0]->dim;
    const size_t P0 = 0, P1 = (size_t)rows * F;
    const size_t nv = (size_t)(g->off[P1] - g->off[P0]), n_ids = nv * (size_t)k;
    const int lo = 0, hi = rows;
    int rc;
    /* 1. resolve this rank's values to global rows; the distinct ones */
    if (grow((void **)&d->ids, &d->ids_cap, n_ids + 1, sizeof *d->ids) != ES_OK ||
        grow((void **)&d->iu, &d->iu_cap, n_ids + 1, sizeof *d->iu) != ES_OK || uniq_reset(d, n_ids) != ES_OK ||
        grow((void **)&d->utab, &d->utab_cap, n_ids + 1, sizeof *d->utab) != ES_OK ||
        grow((void **)&d->uoff, &d->uoff_cap, n_ids + 1, sizeof *d->uoff) != ES_OK)
        return es__err(err, ES_ENOMEM, "out of memory for the rows of a batch");
    {
        size_t o = 0;
        int f = 0;
        for (size_t P = P0; P < P1; P++) {
            size_t a = g->off[P], cnt = g->off[P + 1] - a;
            if (cnt) d->map.fn(d->map.ctx, f, g->val + a, cnt, d->ids + o);
            o += cnt * (size_t)k;
            if (++f == F) f = 0;
        }
        for (size_t i = 0; i < n_ids; i++) {
            if (d->ids[i] >= d->map.rows) return es__err(err, ES_EFORMAT, "row %llu out of the table", (unsigned long long)d->ids[i]);
            d->iu[i] = uniq_find(d, d->ids[i], 1);
        }
    }

    /* 2. lookup: local indices to the owners, rows back (upos: a row's
     * place in its owner's reply, in bytes) */
    memset(d->scnt, 0, (size_t)N * sizeof(size_t));
    memset(d->cur, 0, (size_t)N * sizeof(size_t));
    for (size_t u = 0; u < d->n_uniq; u++) {
        int o = (int)(d->uniq[u] % (uint64_t)N);
        d->utab[u] = global_table(d, d->uniq[u]);
        d->upos[u] = d->cur[o];
        d->cur[o] += tab_row_bytes(d, d->utab[u]);
        d->scnt[o] += sizeof(uint64_t);
    }
    size_t tot = 0;
    for (int i = 0; i < N; i++) {
        d->sdsp[i] = tot;
        tot += d->scnt[i];
    }
    if (grow((void **)&d->sbuf, &d->sbuf_cap, tot + 1, 1) != ES_OK) return es__err(err, ES_ENOMEM, "out of memory");
    memset(d->cur, 0, (size_t)N * sizeof(size_t));
    for (size_t u = 0; u < d->n_uniq; u++) {
        int o = (int)(d->uniq[u] % (uint64_t)N);
        uint64_t li = d->uniq[u] / (uint64_t)N;
        memcpy(d->sbuf + d->sdsp[o] + d->cur[o], &li, sizeof li);
        d->cur[o] += sizeof li;
    }
    if ((rc = exchange(d, d->sbuf, &d->rbuf, &d->rbuf_cap)) != ES_OK) return rc;
    /* as owner: the rows asked for, in the order asked (fp32 rows, or a
     * QAT table's codes: the requester pools them as one process would);
     * d->cur[i]: the bytes of the reply to rank i */
    size_t reply = 0;
    for (int i = 0; i < N; i++) {
        d->cur[i] = 0;
        for (size_t q = 0, cnt = d->rcnt[i] / sizeof(uint64_t); q < cnt; q++) {
            uint64_t li, r;
            int t;
            memcpy(&li, d->rbuf + d->rdsp[i] + q * sizeof li, sizeof li);
            if (!local_row(d, li, &r, &t))
                return es__err(err, ES_EFORMAT, "rank %d asked rank %d for local row %llu of %llu", i, d->rank, (unsigned long long)li,
                               (unsigned long long)d->lo[d->n_t]);
            d->cur[i] += tab_row_bytes(d, t);
        }
        reply += d->cur[i];
    }
    if (grow((void **)&d->sbuf2, &d->sbuf2_cap, reply + 1, 1) != ES_OK) return es__err(err, ES_ENOMEM, "out of memory");
    {
        size_t o = 0;
        for (int i = 0; i < N; i++) {
            size_t cnt = d->rcnt[i] / sizeof(uint64_t);
            for (size_t q = 0; q < cnt; q++) {
                uint64_t li, r;
                memcpy(&li, d->rbuf + d->rdsp[i] + q * sizeof li, sizeof li);
                const es_rows *t = local_row(d, li, &r, NULL);
                size_t rb;
                const unsigned char *src = table_rows(t, &rb);
                memcpy(d->sbuf2 + o, src + (size_t)r * rb, rb);
                o += rb;
            }
        }
    }
    /* the reply: counts mirror the request */
    {
        size_t o = 0;
        for (int i = 0; i < N; i++) {
            d->sdsp[i] = o;
            o += d->cur[i];
        }
        memcpy(d->scnt, d->cur, (size_t)N * sizeof(size_t));
    }
    if ((rc = exchange(d, d->sbuf2, &d->rbuf2, &d->rbuf2_cap)) != ES_OK) return rc;
    size_t cbytes = 0;
    for (size_t u = 0; u < d->n_uniq; u++) {
        d->uoff[u] = cbytes;
        cbytes += tab_row_bytes(d, d->utab[u]);
    }
    if (grow((void **)&d->cache, &d->cache_cap, cbytes + 1, 1) != ES_OK) return es__err(err, ES_ENOMEM, "out of memory for the rows of a batch");
    for (size_t u = 0; u < d->n_uniq; u++) {
        int o = (int)(d->uniq[u] % (uint64_t)N);
        memcpy(d->cache + d->uoff[u], d->rbuf2 + d->rdsp[o] + d->upos[u], tab_row_bytes(d, d->utab[u]));
    }
    if (hi == lo) return ES_OK;
    if (d->map.combine != ES_COMBINE_CAT) {
        combine_lookup(d, g, hi - lo, m->emb);
        return ES_OK;
    }
    es_rows cache; /* CAT: every table of one width, so the cache is a table of the distinct rows */
    memset(&cache, 0, sizeof cache);
    if (d->tab[0]->prec != ES_PREC_FP32) cache.q = d->cache; /* codes: pooled by dequantizing, as one process does */
    else cache.w = (float *)(void *)d->cache;
    cache.n_rows = d->n_uniq;
    cache.dim = cd;
    cache.prec = d->tab[0]->prec;
    cache.opt = d->tab[0]->opt;
    es__rows_lookup(&cache, k, cache_resolve, d, g, 0, hi - lo, m->emb);
    return ES_OK;
}

/* This rank's blocks [*jb0, *jb1) of a global batch of n rows, its rows
 * [*lo, *hi), and g checked to hold them.  what: "training" or "evaluation". */
static int my_part(es__dist *d, const es_batch *g, int n, const char *what, int *jb0, int *jb1, int *lo, int *hi) {
    const es_model *m = d->m;
    if (n < 1 || n > m->max_batch)
        return es__err(&d->m->err, ES_EINVAL, "a%s %s batch needs 1 to %d rows (the model's batch size), got %d", what[0] == 'e' ? "n" : "",
                       what, m->max_batch, n);
    *jb0 = d->rank * ES_DIST_BLOCKS / d->size;
    *jb1 = (d->rank + 1) * ES_DIST_BLOCKS / d->size;
    *lo = block_row(*jb0, n);
    *hi = block_row(*jb1, n);
    if (g->n != *hi - *lo || g->n_fields != m->n_fields || g->n_dense != m->n_dense)
        return es__err(&d->m->err, ES_EINVAL, "rank %d's part of a batch of %d rows is rows [%d, %d), got %d rows", d->rank, n, *lo, *hi,
                       g->n);
    return ES_OK;
}

int es__dist_train_batch(es__dist *d, const es_batch *g, int n, double *loss_sum) {
    es_model *m = d->m;
    es_err *err = &m->err;
    const int F = m->n_fields, E = m->E, N = d->size, k = d->rep ? 0 : d->map.k;
    const int nd = m->n_dense;
    int jb0, jb1, lo, hi;
    int rc = my_part(d, g, n, "training", &jb0, &jb1, &lo, &hi);
    if (rc != ES_OK) return rc;
    /* g holds rows [lo, hi) of the global batch as its rows 0 .. hi - lo */
    const size_t P0 = 0, P1 = (size_t)(hi - lo) * F;
    const size_t n_ids = (size_t)(g->off[P1] - g->off[P0]) * (size_t)k;
    const size_t head = sizeof(uint64_t) + sizeof(float); /* a gradient record: local index, weight, then the row's floats */
    const int method = !d->rep && d->map.combine == ES_COMBINE_METHOD;
    size_t tot;
    d->st.steps++;
    es_storage *st = m->st;
    if (d->rep) { /* replicated: every rank looks its own rows up */
        if (hi > lo) st->ops->lookup(st, g, 0, hi - lo, m->emb);
    } else if ((rc = dist_fetch(d, g, hi - lo)) != ES_OK) {
        return rc;
    }

    /* 3. dense: block by block, then the fixed tree */
    const size_t P = d->P, Pn = d->Pn;
    const size_t rowf = (size_t)F * (size_t)E;
    const float *e[ES_RESOLVE_BLOCK / 2];
    int tab[ES_RESOLVE_BLOCK / 2];
    for (int j = jb0; j < jb1; j++) {
        const int a = block_row(j, n), z = block_row(j + 1, n), nb = z - a, la = a - lo;
        float *pj = d->part + (size_t)(j - jb0) * P;
        d->bloss[j - jb0] = 0;
        if (nb == 0) {
            memset(pj, 0, P * sizeof(float));
            continue;
        }
        es__net_zero_grad(m->net);
        const float *dense = g->dense + (size_t)la * (size_t)nd;
        es__net_forward_train(m->net, nb, m->emb + (size_t)la * rowf, dense, m->logit + la);
        d->bloss[j - jb0] = es__bce_logits_sum(m->logit + la, g->label + la, nb, 1.0f / (float)n, m->dlogit + la);
        es__net_backward(m->net, nb, m->emb + (size_t)la * rowf, dense, m->dlogit + la, m->demb + (size_t)la * rowf);
        memcpy(pj, es__net_grads_ptr(m->net), Pn * sizeof(float));
        if (d->rep) { /* the block's gradient of the replicated storage, computed on the block's rows alone */
            es_batch sub = *g;
            sub.n = sub.cap = nb;
            sub.label = g->label + la;
            sub.dense = g->dense + (size_t)la * (size_t)nd;
            sub.off = g->off + (size_t)la * (size_t)F;
            memset(pj + Pn, 0, (P - Pn) * sizeof(float));
            if ((rc = st->ops->rep_backward(st, &sub, m->demb + (size_t)la * rowf, pj + Pn)) != ES_OK)
                return es__err(err, rc, "%s", es__storage_errmsg(st));
        } else if (method && P > Pn) { /* the block's gradient of the map's replicated parameters, from its values alone */
            memset(pj + Pn, 0, (P - Pn) * sizeof(float));
            for (size_t Pp = (size_t)la * F, Pz = (size_t)(la + nb) * F; Pp < Pz; Pp++)
                for (uint32_t v = g->off[Pp]; v < g->off[Pp + 1]; v++) {
                    cached_rows(d, d->iu + (size_t)(v - g->off[0]) * (size_t)k, e, tab);
                    d->map.dense_grad(d->map.self, tab, e, g->wt[v], m->demb + Pp * (size_t)E, pj + Pn);
                }
        }
    }
    const int cnt = jb1 - jb0;
    tree_sum(d->part, cnt, P);
    if ((rc = dense_reduce(d, d->part)) != ES_OK) return rc;
    memcpy(es__net_grads_ptr(m->net), d->part, Pn * sizeof(float));
    es__net_step(m->net);
    if (d->rep) st->ops->rep_apply(st, d->part + Pn);
    {
        double all[ES_DIST_BLOCKS];
        if ((rc = do_allgather(d, d->bloss, all, (size_t)cnt * sizeof(double))) != ES_OK) return rc;
        for (int j = 0; j < ES_DIST_BLOCKS; j++)
            if (loss_sum) *loss_sum += all[j];
    }
    if (d->rep) return ES_OK; /* no rows to update at their owners */

    /* 4. sparse: every value's gradient slice to its row's owner, in batch
     * order, with its table's width */
    memset(d->scnt, 0, (size_t)N * sizeof(size_t));
    for (size_t i = 0; i < n_ids; i++) d->scnt[d->ids[i] % (uint64_t)N] += head + (size_t)d->tab[d->utab[d->iu[i]]]->dim * sizeof(float);
    tot = 0;
    for (int i = 0; i < N; i++) {
        d->sdsp[i] = d->cur[i] = tot;
        tot += d->scnt[i];
    }
    if (grow((void **)&d->sbuf, &d->sbuf_cap, tot + 1, 1) != ES_OK) return es__err(err, ES_ENOMEM, "out of memory");
    {
        const int comb = d->map.combine, cd = d->tab[0]->dim;
        float *gj[ES_RESOLVE_BLOCK / 2], gw[ES_RESOLVE_BLOCK / 2];
        size_t o = 0;
        for (size_t Pp = P0; Pp < P1; Pp++) {
            const float *go = m->demb + (Pp - P0) * (size_t)E;
            for (uint32_t s = g->off[Pp]; s < g->off[Pp + 1]; s++) {
                const float wt = g->wt[s];
                /* a product: the value's rows as the forward combined them */
                if (comb == ES_COMBINE_PROD || comb == ES_COMBINE_METHOD) cached_rows(d, d->iu + o, e, tab);
                if (comb == ES_COMBINE_METHOD) { /* the rows' gradients into ebuf past the dequantized rows, and the weights they are summed with */
                    for (int j = 0; j < k; j++) gj[j] = d->ebuf + (size_t)(k + j) * (size_t)d->wmax;
                    if (d->map.pool_grad_wt) {
                        d->map.pool_grad_wt(d->map.self, tab, e, wt, go, gj, gw);
                    } else {
                        d->map.pool_grad(d->map.self, tab, e, go, gj);
                        for (int j = 0; j < k; j++) gw[j] = wt;
                    }
                }
                for (int j = 0; j < k; j++, o++) {
                    uint64_t row = d->ids[o];
                    int ow = (int)(row % (uint64_t)N);
                    uint64_t li = row / (uint64_t)N;
                    unsigned char *q = d->sbuf + d->cur[ow];
                    const float *slice = comb == ES_COMBINE_CAT || comb == ES_COMBINE_SLICES ? go + (size_t)j * cd : go;
                    const size_t width = (size_t)d->tab[d->utab[d->iu[o]]]->dim;
                    float sw = wt;
                    if (comb == ES_COMBINE_METHOD) {
                        slice = gj[j];
                        sw = gw[j];
                    }
                    if (comb == ES_COMBINE_PROD) {
                        /* wt dout times the other rows, in qr_backward's order; summed
                         * at the owner with weight 1 (an exact add) */
                        for (int c = 0; c < cd; c++) {
                            float x = wt * go[c];
                            for (int l = 0; l < k; l++)
                                if (l != j) x *= e[l][c];
                            d->tmp[c] = x;
                        }
                        slice = d->tmp;
                        sw = 1.0f;
                    }
                    memcpy(q, &li, sizeof li);
                    memcpy(q + sizeof li, &sw, sizeof sw);
                    memcpy(q + head, slice, width * sizeof(float));
                    d->cur[ow] += head + width * sizeof(float);
                }
            }
        }
    }
    if ((rc = exchange(d, d->sbuf, &d->rbuf, &d->rbuf_cap)) != ES_OK) return rc;
    for (int t = 0; t < d->n_t; t++) es__gradacc_clear(&d->ga[t]);
    for (int i = 0; i < N; i++) {
        for (size_t q = 0; q + head <= d->rcnt[i];) {
            const unsigned char *r = d->rbuf + d->rdsp[i] + q;
            uint64_t li, lr;
            float wt;
            int t;
            memcpy(&li, r, sizeof li);
            memcpy(&wt, r + sizeof li, sizeof wt);
            const es_rows *tr = local_row(d, li, &lr, &t);
            if (!tr || q + head + (size_t)tr->dim * sizeof(float) > d->rcnt[i])
                return es__err(err, ES_EFORMAT, "rank %d sent rank %d a gradient of local row %llu of %llu", i, d->rank,
                               (unsigned long long)li, (unsigned long long)d->lo[d->n_t]);
            const size_t width = (size_t)tr->dim;
            memcpy(d->tmp, r + head, width * sizeof(float));
            q += head + width * sizeof(float);
            float *gr = es__gradacc_row(&d->ga[t], lr);
            if (!gr) {
                for (int u = 0; u < d->n_t; u++) es__gradacc_clear(&d->ga[u]);
                return es__err(err, ES_ENOMEM, "out of memory growing the gradient scratch");
            }
            es__axpy(gr, wt, d->tmp, width);
        }
    }
    for (int t = 0; t < d->n_t; t++) es__gradacc_apply(&d->ga[t], d->tab[t]);
    /* the map's replicated parameters last: the rows' gradients above read them before the update */
    if (method && P > Pn) d->map.dense_apply(d->map.self, d->part + Pn);
    return ES_OK;
}

/* ---- the whole model on rank 0 --------------------------------------------------------- */

int es__dist_tables(es__dist *d, es__whole_table *wt, es_err *err) {
    es_storage *st = d->m->st;
    memset(wt, 0, sizeof *wt);
    int n = es__storage_tensors(st, NULL, 0);
    es_tensor_ref *refs = n > 0 ? es__calloc((size_t)n, sizeof *refs) : NULL;
    if (!refs) return es__err(err, n > 0 ? ES_ENOMEM : ES_EINVAL, "storage '%s': cannot list its tensors", st->ops->name);
    wt->tensor = es__calloc((size_t)d->n_t, sizeof *wt->tensor); /* a tensor per table at most */
    wt->rows = es__calloc((size_t)d->n_t, sizeof *wt->rows);
    if (!wt->tensor || !wt->rows) {
        es__free(refs);
        es__whole_table_free(wt);
        return es__err(err, ES_ENOMEM, "out of memory");
    }
    es__storage_tensors(st, refs, n);
    int rc = ES_OK;
    for (int i = 0; i < d->n_t && rc == ES_OK; i++) {
        /* the method's tensor holding the table's rows: named by the map,
         * or the one whose data are its fp32 rows or codes */
        size_t rb;
        const void *rows = table_rows(d->tab[i], &rb);
        const char *name = d->map.tensor ? d->map.tensor(d->map.self, i) : NULL;
        int found = -1;
        for (int j = 0; j < n && found < 0; j++)
            if (name ? strcmp(refs[j].name, name) == 0 : refs[j].data == rows) found = j;
        if (found < 0) {
            rc = es__err(err, ES_EINVAL, "storage '%s': no tensor holds table %d of its rows", st->ops->name, i);
            break;
        }
        int at = 0; /* its place in wt: tables may share a tensor, one after the other */
        while (at < wt->n && strcmp(wt->tensor[at], refs[found].name) != 0) at++;
        if (at == wt->n) {
            snprintf(wt->tensor[at], sizeof wt->tensor[at], "%s", refs[found].name);
            wt->n++;
        }
        d->ttensor[i] = at;
        /* the tensor's first dimension grows by the table's rows, in its units */
        uint64_t per = 1;
        for (int j = 1; j < refs[found].ndim; j++) per *= refs[found].shape[j];
        const size_t unit = es__dtype_bytes(refs[found].dtype, per);
        if (unit == 0 || unit == SIZE_MAX || rb % unit != 0) {
            rc = es__err(err, ES_EINVAL, "storage '%s': tensor %s does not hold whole rows of table %d", st->ops->name, refs[found].name, i);
            break;
        }
        wt->rows[at] += (d->base[i + 1] - d->base[i]) * (rb / unit);
    }
    wt->param_bytes = (size_t)es__storage_whole_param_bytes(st);
    es__free(refs);
    if (rc != ES_OK) es__whole_table_free(wt);
    return rc;
}

/* ---- agreement ------------------------------------------------------------------------- */

typedef struct {
    int32_t rc, pad;
    int64_t n;
    uint64_t h;
} agree_rec;

int es__dist_agree(const es_comm *c, int *failed, int rc, int64_t n, uint64_t h, const char *what, es_err *err) {
    if (!c) return rc;
    if (*failed) return rc ? rc : ES_EIO;
    agree_rec me = {rc, 0, n, h};
    agree_rec *all = es__calloc((size_t)c->size, sizeof *all);
    if (!all) {
        *failed = 1;
        return es__err(err, ES_ENOMEM, "out of memory");
    }
    if (c->allgather(c->ctx, &me, all, sizeof me) != 0) {
        es__free(all);
        *failed = 2; /* the transport broke: nothing is agreed */
        return es__err(err, ES_EIO, "rank %d of %d: the communication layer failed", c->rank, c->size);
    }
    int first = -1, code = 0;
    for (int i = 0; i < c->size; i++)
        if (all[i].rc != 0) {
            first = i;
            code = all[i].rc;
            break;
        }
    if (first >= 0) {
        char msg[sizeof err->msg];
        snprintf(msg, sizeof msg, "%s", rc ? err->msg : "");
        if (c->bcast(c->ctx, msg, sizeof msg, first) != 0) snprintf(msg, sizeof msg, "(its message was lost)");
        *failed = 1;
        es__free(all);
        char m2[sizeof err->msg];
        snprintf(m2, sizeof m2, "%s", msg);
        return es__err(err, code, "on rank %d: %s", first, m2);
    }
    for (int i = 1; i < c->size; i++)
        if (all[i].n != all[0].n || all[i].h != all[0].h) {
            agree_rec a = all[0], b = all[i];
            es__free(all);
            *failed = 1;
            return es__err(err, ES_EINVAL, "ranks disagree on %s: rank 0 has %lld/%016llx, rank %d %lld/%016llx", what, (long long)a.n,
                           (unsigned long long)a.h, i, (long long)b.n, (unsigned long long)b.h);
        }
    es__free(all);
    return ES_OK;
}

/* ---- evaluation and the model file ------------------------------------------------------ */

int es__dist_predict(es__dist *d, const es_batch *g, int n, float *prob) {
    es_model *m = d->m;
    const int F = m->n_fields, E = m->E, nd = m->n_dense;
    int jb0, jb1, lo, hi;
    int rc = my_part(d, g, n, "evaluation", &jb0, &jb1, &lo, &hi);
    if (rc != ES_OK) return rc;
    es__dist_stats keep = d->st; /* the counters are of training steps */
    if (d->rep) {
        if (hi > lo) m->st->ops->lookup(m->st, g, 0, hi - lo, m->emb);
    } else {
        rc = dist_fetch(d, g, hi - lo);
    }
    d->st = keep;
    if (rc != ES_OK) return rc;
    /* block by block, as the training step: a row's forward is computed
     * with the rows of its block whatever N */
    es__net_freeze(m->net);
    const size_t rowf = (size_t)F * (size_t)E;
    for (int j = jb0; j < jb1; j++) {
        const int a = block_row(j, n), z = block_row(j + 1, n), nb = z - a, la = a - lo;
        if (nb == 0) continue;
        es__net_forward(m->net, nb, m->emb + (size_t)la * rowf, g->dense + (size_t)la * (size_t)nd, m->logit + la);
        for (int i = 0; i < nb; i++) prob[la + i] = es__sigmoid(m->logit[la + i]);
    }
    return ES_OK;
}

/* Rows of the whole table sent to rank 0 per round. */
#define DIST_WRITE_ROWS ((uint64_t)ES_DIST_BLOCKS * 1024)

/* Global rows [A, B) into tensor `tensor` of w (rank 0), in rounds of
 * DIST_WRITE_ROWS rows; out: rank 0's round buffer.  *wrc: rank 0's
 * append status (after a failure the rounds go on, unwritten, so that no
 * rank waits).  Returns an error only when this rank leaves the rounds. */
static int write_range(es__dist *d, es_fwriter *w, int tensor, uint64_t A, uint64_t B, size_t row_bytes, unsigned char *out, int *wrc,
                       es_err *err) {
    const int N = d->size;
    const uint64_t NN = (uint64_t)N, C = DIST_WRITE_ROWS;
    for (uint64_t a = A; a < B; a += C) {
        /* rows [a, b): rank i holds r0[i], r0[i] + N, ... (the first row
         * >= a that is i mod N), at local indices r0[i] / N, ... */
        const uint64_t b = ES_MIN(B, a + C);
        memset(d->scnt, 0, (size_t)N * sizeof(size_t));
        memset(d->sdsp, 0, (size_t)N * sizeof(size_t));
        size_t tot = 0;
        uint64_t r0[ES_DIST_BLOCKS], cnt[ES_DIST_BLOCKS];
        for (int i = 0; i < N; i++) {
            r0[i] = a + ((uint64_t)i + NN - a % NN) % NN;
            cnt[i] = r0[i] < b ? (b - r0[i] + NN - 1) / NN : 0;
            d->rcnt[i] = d->rank == 0 ? (size_t)cnt[i] * row_bytes : 0;
            d->rdsp[i] = tot;
            tot += d->rcnt[i];
        }
        const uint64_t mine = cnt[d->rank];
        d->scnt[0] = (size_t)mine * row_bytes;
        if (grow((void **)&d->rbuf, &d->rbuf_cap, tot + 1, 1) != ES_OK ||
            grow((void **)&d->sbuf, &d->sbuf_cap, (size_t)mine * row_bytes + 1, 1) != ES_OK)
            return es__err(err, ES_ENOMEM, "out of memory writing the model");
        for (uint64_t q = 0; q < mine; q++) {
            uint64_t lr;
            const es_rows *t = local_row(d, r0[d->rank] / NN + q, &lr, NULL);
            if (!t)
                return es__err(err, ES_EINVAL, "rank %d's shard has %llu rows, the tables' rule gives it more", d->rank,
                               (unsigned long long)d->lo[d->n_t]);
            size_t rb;
            memcpy(d->sbuf + (size_t)q * row_bytes, table_rows(t, &rb) + (size_t)lr * row_bytes, row_bytes);
        }
        if (d->c->alltoallv(d->c->ctx, d->sbuf, d->scnt, d->sdsp, d->rbuf, d->rcnt, d->rdsp) != 0)
            return es__err(err, ES_EIO, "rank %d of %d: sending the tables to rank 0 failed in the communication layer", d->rank, N);
        if (d->rank != 0 || *wrc != ES_OK) continue;
        for (int i = 0; i < N; i++)
            for (uint64_t q = 0; q < cnt[i]; q++)
                memcpy(out + (size_t)(r0[i] - a + q * NN) * row_bytes, d->rbuf + d->rdsp[i] + q * row_bytes, row_bytes);
        if ((*wrc = es__fwriter_append(w, tensor, out, (size_t)(b - a) * row_bytes)) != ES_OK)
            es__err(err, *wrc, "%s", es__fwriter_errmsg(w));
    }
    return ES_OK;
}

int es__dist_write_rows(es__dist *d, es_fwriter *w, const int *tensor, int *broken, es_err *err) {
    *broken = 1; /* until every round is done */
    int wrc = ES_OK; /* rank 0: a failed append; the rounds go on, so that no rank waits */
    double t0 = es__now();
    unsigned char *out = NULL;
    if (d->rank == 0 && !(out = es__malloc((size_t)DIST_WRITE_ROWS * d->rb_max + 1)))
        wrc = es__err(err, ES_ENOMEM, "out of memory writing the model");
    for (int i = 0; i < d->n_t; i++) { /* table i: its global rows, into its tensor (after the tables before it there) */
        int rc = write_range(d, w, d->rank == 0 ? tensor[d->ttensor[i]] : -1, d->base[i], d->base[i + 1], tab_row_bytes(d, i), out, &wrc, err);
        if (rc != ES_OK) {
            es__free(out);
            return rc;
        }
    }
    d->st.seconds += es__now() - t0;
    es__free(out);
    *broken = 0;
    return wrc;
}

int es__dist_collect(es__dist *d, int n, const float *mine, float *all) {
    const int N = d->size;
    int lo, hi;
    size_t tot = 0;
    memset(d->scnt, 0, (size_t)N * sizeof(size_t));
    memset(d->sdsp, 0, (size_t)N * sizeof(size_t));
    for (int i = 0; i < N; i++) {
        es__dist_part_of(i, N, n, &lo, &hi);
        d->rcnt[i] = d->rank == 0 ? (size_t)(hi - lo) * 2 * sizeof(float) : 0;
        d->rdsp[i] = tot;
        tot += d->rcnt[i];
        if (i == d->rank) d->scnt[0] = (size_t)(hi - lo) * 2 * sizeof(float);
    }
    static float none;
    if (d->c->alltoallv(d->c->ctx, mine ? (const void *)mine : &none, d->scnt, d->sdsp, d->rank == 0 ? (void *)all : &none, d->rcnt,
                        d->rdsp) != 0)
        return es__err(&d->m->err, ES_EIO, "rank %d of %d: sending predictions to rank 0 failed in the communication layer", d->rank, N);
    return ES_OK;
}
