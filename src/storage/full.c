/*
 * full.c — the `full` storage method: a collision-free embedding table.
 *
 * Every value with count >= min_count in the vocabulary gets a private
 * row; each field also has one out-of-vocabulary (OOV) row shared by the
 * values that were rare or never seen.  This is the uncompressed baseline
 * the other methods are measured against.
 *
 * Layout (deterministic, so 1-thread runs repeat bit for bit):
 *   keys[N]        the kept keys, field by field, sorted ascending within
 *                  each field;
 *   field_off[F+1] field f's keys are keys[field_off[f] .. field_off[f+1]);
 *   rows           field f owns rows [field_off[f] + f, field_off[f+1] + f]:
 *                  first its OOV row, then one row per key in key order, so
 *                  key index i of field f has row i + f + 1;
 *   index[icap]    open-addressing hash index over (field, key) holding key
 *                  index + 1 (0 = empty); derived from keys/field_off, so
 *                  it is rebuilt after a load instead of being saved.
 * keys, field_off and index are the serving map: they count as aux_bytes.
 *
 * Re-creating from saved metadata needs no vocabulary: opts "keys=N" gives
 * the shapes, the loader fills keys/field_off/weights, and after_load
 * checks the map and rebuilds the index.
 */
#include "storage/storage.h"

#include "core/simd.h"

typedef struct full_impl {
    es_rows t;
    int F;
    uint64_t n_keys;
    uint64_t *keys;      /* [n_keys] */
    uint64_t *field_off; /* [F + 1] */
    uint32_t *index;     /* [icap] */
    size_t icap;
    uint64_t min_count;
    es_gradacc ga;
    /* A training step's rows (ops->step_begin): value v of the step's
     * batch (its position in b->val) resolved to sb.ids[v] before the
     * lookup, which reads them, as the backward does; step_n values, 0:
     * none kept.  The step's gradient accumulator is deduplicated through
     * the map itself instead of the hash map of es_gradacc: sb.vslot[v] =
     * value v's place among the step's distinct rows sb.urows[0 .. sb.un)
     * (in the order of first touch, as es_gradacc keeps them; un SIZE_MAX:
     * not deduplicated), ug[u] their summed gradients.  ts[] is the index
     * with each slot's key beside it (one cache line a value instead of an
     * index slot and then a key); the dedup marks a slot (tmark[slot] on
     * the training thread, ts[slot].pad on the reader thread) and field f's
     * OOV row (oov_mark[f], poov[f]) with 1 + its place, 0 for a row the
     * step does not touch; uwhere[u] says which mark row u set (a slot, or
     * icap + f).  Built by step_begin (full_resolve_dedup, which clears the marks
     * it set), or taken from the batch's step_prepare; used by the
     * backward.  Training scratch, allocated at the first step (ts: 16
     * bytes a slot of the index, tmark 4, built again when the index is).
     * ts_ok is read by the reader thread's step_prepare (atomically). */
    struct full_bufs {
        uint64_t *ids, *where, *urows, *uwhere; /* where: scratch (the home slots) */
        uint32_t *vslot;
        size_t cap, un;
    } sb;
    size_t step_n;
    const uint64_t *step_val; /* the batch's b->val */
    struct full_tslot {
        uint64_t key;
        uint32_t s, pad; /* s as index[]: key index + 1, 0 = empty; pad: the reader's dedup mark */
    } *ts;
    int ts_ok;
    uint32_t *tmark, *oov_mark;
    float *ug;
    size_t ugcap;
    /* Batches resolved and deduplicated ahead by step_prepare on the
     * training pipeline's reader thread, one per pipeline slot: the
     * buffers of the batch whose b->val is val (NULL: none), as step_begin
     * would fill them; step_begin swaps them with its own (no copy).  The
     * pipeline hands a slot to one thread at a time, so no lock; poov is
     * the reader's own OOV marks. */
    struct full_prep {
        const uint64_t *val; /* atomic: the reader thread publishes it last */
        size_t nv;
        uint64_t first, last; /* b->val[0] and b->val[nv - 1], a check */
        struct full_bufs s;
    } prep[ES__PIPE_SLOTS];
    uint32_t *poov;
} full_impl;

static inline size_t full_home(uint64_t key, int f, size_t mask) {
    return (size_t)es__mix64(key ^ ((uint64_t)(uint32_t)f * UINT64_C(0x9e3779b97f4a7c15))) & mask;
}

/* The row of `key` of field f, probing from its home slot h: the key's
 * own row, or the field's OOV row. */
static inline uint64_t full_probe(const full_impl *m, int f, uint64_t key, size_t h) {
    const uint64_t lo = m->field_off[f], hi = m->field_off[f + 1];
    const size_t mask = m->icap - 1;
    uint32_t s;
    while ((s = m->index[h]) != 0) {
        uint64_t idx = s - 1;
        if (m->keys[idx] == key && idx >= lo && idx < hi) return idx + (uint64_t)f + 1;
        h = (h + 1) & mask;
    }
    return lo + (uint64_t)f;
}

/* Rows of keys[0..n) of field f: the key's own row, or the field's OOV row. */
static void full_resolve(const void *ctx, int f, const uint64_t *keys, size_t n, uint64_t *ids) {
    const full_impl *m = ctx;
    const size_t mask = m->icap - 1;
    for (size_t i = 0; i < n; i++) ids[i] = full_probe(m, f, keys[i], full_home(keys[i], f, mask));
}

/* The rows full_step_begin resolved for keys (a part of the step's b->val). */
static void full_resolve_kept(const void *ctx, int f, const uint64_t *keys, size_t n, uint64_t *ids) {
    const full_impl *m = ctx;
    (void)f;
    memcpy(ids, m->sb.ids + (keys - m->step_val), n * sizeof *ids);
}

/* How far ahead the step's resolve prefetches the training slots
 * (one line a value). */
#define PF_TS 16

/* *p grown to n elements; false (and *p as it was) when out of memory. */
static bool grow_u64(uint64_t **p, size_t n) {
    uint64_t *q = es__realloc(*p, n * sizeof *q);
    if (q) *p = q;
    return q != NULL;
}

static bool grow_u32(uint32_t **p, size_t n) {
    uint32_t *q = es__realloc(*p, n * sizeof *q);
    if (q) *p = q;
    return q != NULL;
}

static bool grow_f32(float **p, size_t n) {
    float *q = es__realloc(*p, n * sizeof *q);
    if (q) *p = q;
    return q != NULL;
}

/* A step's buffers grown to n values; false when out of memory (those
 * grown keep their contents, cap is unchanged). */
static bool step_bufs_grow(struct full_bufs *q, size_t n) {
    if (!grow_u64(&q->ids, n) || !grow_u64(&q->where, n) || !grow_u64(&q->urows, n) || !grow_u64(&q->uwhere, n) ||
        !grow_u32(&q->vslot, n))
        return false;
    q->cap = n;
    return true;
}

static void step_bufs_free(struct full_bufs *q) {
    es__free(q->ids);
    es__free(q->where);
    es__free(q->urows);
    es__free(q->uwhere);
    es__free(q->vslot);
}

/* The training slots and the step's scratch for nv values; false when
 * out of memory (the step then resolves in its lookup and backward, and
 * sums through es_gradacc, as without step_begin: the same bits). */
static bool full_step_scratch(full_impl *m, size_t nv) {
    if (!m->ts && !(m->ts = es__malloc(m->icap * sizeof *m->ts))) return false;
    if (!m->tmark && !(m->tmark = es__calloc(m->icap, sizeof *m->tmark))) return false;
    if (!m->oov_mark && !(m->oov_mark = es__calloc((size_t)m->F, sizeof *m->oov_mark))) return false;
    if (!__atomic_load_n(&m->ts_ok, __ATOMIC_ACQUIRE)) {
        for (size_t i = 0; i < m->icap; i++) {
            const uint32_t si = m->index[i];
            m->ts[i] = (struct full_tslot){si ? m->keys[si - 1] : 0, si, 0};
        }
        __atomic_store_n(&m->ts_ok, 1, __ATOMIC_RELEASE);
    }
    if (nv > m->sb.cap && !step_bufs_grow(&m->sb, nv)) return false; /* not counted: training only */
    if (nv > m->ugcap) {
        if (!grow_f32(&m->ug, nv * (size_t)m->t.dim)) return false;
        m->ugcap = nv;
    }
    return true;
}

/* The rows of b's values into ids[], and their places among the batch's
 * distinct rows: vslot[v], and the distinct rows urows[u] with the mark
 * each set, uwhere[u] (a slot of ts, or icap + f for field f's OOV row), in
 * the order of first touch (as es_gradacc keeps them); returns their count.
 * One pass that prefetches the slots of the values ahead (the map
 * outgrows the caches) and marks a row in the line the probe just read:
 * mark NULL: the slot's ts[].pad (the reader thread's step_prepare, the
 * only writer of pad), else mark[slot] (the training thread's tmark); an
 * OOV row's mark is oov[f].  The marks are 0 before and after; where[] is
 * scratch.  Reads of ts's keys and s only, so the two threads may run it
 * side by side. */
static size_t full_resolve_dedup(full_impl *m, const es_batch *b, uint32_t *mark, uint32_t *oov, uint64_t *ids,
                                 uint64_t *where, uint32_t *vslot, uint64_t *urows, uint64_t *uwhere) {
    const int F = b->n_fields;
    const size_t nv = b->off[(size_t)b->n * (size_t)F], mask = m->icap - 1;
    uint64_t *h = where;
    for (size_t P = 0, n = (size_t)b->n * (size_t)F; P < n; P++) {
        const int f = (int)(P % (size_t)F);
        for (uint32_t v = b->off[P]; v < b->off[P + 1]; v++) h[v] = full_home(b->val[v], f, mask);
    }
    struct full_tslot *ts = m->ts;
    size_t P = 0, un = 0;
    for (size_t v = 0; v < nv; v++) {
        if (v + PF_TS < nv) {
            __builtin_prefetch(&ts[h[v + PF_TS]], 1);
            if (mark) __builtin_prefetch(&mark[h[v + PF_TS]], 1);
        }
        while (b->off[P + 1] <= v) P++;
        const int f = (int)(P % (size_t)F);
        const uint64_t key = b->val[v], lo = m->field_off[f], hi = m->field_off[f + 1];
        uint64_t row = lo + (uint64_t)f, w = m->icap + (uint64_t)f;
        uint32_t *mk = &oov[f];
        for (size_t i = (size_t)h[v]; ts[i].s; i = (i + 1) & mask) {
            const uint64_t idx = ts[i].s - 1;
            if (ts[i].key == key && idx >= lo && idx < hi) {
                row = idx + (uint64_t)f + 1;
                w = i;
                mk = mark ? &mark[i] : &ts[i].pad;
                break;
            }
        }
        if (!*mk) {
            urows[un] = row;
            uwhere[un] = w;
            *mk = (uint32_t)++un;
        }
        vslot[v] = *mk - 1;
        ids[v] = row;
    }
    for (size_t u = 0; u < un; u++) {
        const uint64_t w = uwhere[u];
        if (w >= m->icap) oov[w - m->icap] = 0;
        else if (mark) mark[w] = 0;
        else ts[w].pad = 0;
    }
    return un;
}

/* ops->step_prepare: b resolved and deduplicated ahead, on the pipeline's
 * reader thread, into pipeline slot k's buffers; nothing when the training
 * slots are not built yet (the first step builds them) or out of memory. */
static void full_step_prepare(es_storage *s, const es_batch *b, int k) {
    full_impl *m = s->impl;
    struct full_prep *pp = &m->prep[k % ES__PIPE_SLOTS];
    __atomic_store_n(&pp->val, NULL, __ATOMIC_RELEASE);
    if (!__atomic_load_n(&m->ts_ok, __ATOMIC_ACQUIRE)) return;
    const size_t nv = b->off[(size_t)b->n * (size_t)b->n_fields];
    if (nv == 0) return;
    if (!m->poov && !(m->poov = es__calloc((size_t)m->F, sizeof *m->poov))) return;
    if (nv > pp->s.cap && !step_bufs_grow(&pp->s, nv)) return;
    pp->s.un = full_resolve_dedup(m, b, NULL, m->poov, pp->s.ids, pp->s.where, pp->s.vslot, pp->s.urows, pp->s.uwhere);
    pp->nv = nv;
    pp->first = b->val[0];
    pp->last = b->val[nv - 1];
    __atomic_store_n(&pp->val, b->val, __ATOMIC_RELEASE);
}

static void full_step_begin(es_storage *s, const es_batch *b) {
    full_impl *m = s->impl;
    const int F = b->n_fields;
    const size_t nv = b->off[(size_t)b->n * (size_t)F];
    m->step_n = 0;
    m->sb.un = SIZE_MAX;
    if (!full_step_scratch(m, nv)) return;
    /* Every value of the batch resolved, and placed among the step's
     * distinct rows (here, or ahead by step_prepare: its buffers are
     * swapped in).  The lookup and the backward read the rows kept here. */
    struct full_prep *pp = NULL;
    for (int k = 0; k < ES__PIPE_SLOTS; k++) {
        struct full_prep *q = &m->prep[k];
        if (nv && __atomic_load_n(&q->val, __ATOMIC_ACQUIRE) == b->val && q->nv == nv && q->first == b->val[0] &&
            q->last == b->val[nv - 1])
            pp = q;
    }
    if (pp) {
        const struct full_bufs t = m->sb;
        m->sb = pp->s;
        pp->s = t;
        __atomic_store_n(&pp->val, NULL, __ATOMIC_RELEASE);
    } else {
        m->sb.un = full_resolve_dedup(m, b, m->tmark, m->oov_mark, m->sb.ids, m->sb.where, m->sb.vslot, m->sb.urows,
                                      m->sb.uwhere);
    }
    m->step_n = nv;
    m->step_val = b->val;
}

static void build_index(full_impl *m) {
    const size_t mask = m->icap - 1;
    __atomic_store_n(&m->ts_ok, 0, __ATOMIC_RELEASE);
    for (int k = 0; k < ES__PIPE_SLOTS; k++) m->prep[k].val = NULL;
    memset(m->index, 0, m->icap * sizeof *m->index);
    for (int f = 0; f < m->F; f++)
        for (uint64_t i = m->field_off[f]; i < m->field_off[f + 1]; i++) {
            size_t h = full_home(m->keys[i], f, mask);
            while (m->index[h]) h = (h + 1) & mask;
            m->index[h] = (uint32_t)(i + 1);
        }
}

static void full_free(full_impl *m) {
    if (!m) return;
    es__rows_free(&m->t);
    es__free(m->keys);
    es__free(m->field_off);
    es__free(m->index);
    es__gradacc_free(&m->ga);
    step_bufs_free(&m->sb);
    es__free(m->ts);
    es__free(m->tmark);
    es__free(m->oov_mark);
    for (int k = 0; k < ES__PIPE_SLOTS; k++) step_bufs_free(&m->prep[k].s);
    es__free(m->poov);
    es__free(m->ug);
    es__free(m);
}

static void full_destroy(es_storage *s) {
    full_free(s->impl);
    s->impl = NULL;
}

typedef struct {
    uint64_t *dst;
    size_t n, cap;
    uint64_t min_count;
} collect_ctx;

static void collect(uint64_t key, uint64_t count, void *ctx) {
    collect_ctx *c = ctx;
    if (count >= c->min_count && c->n < c->cap) c->dst[c->n++] = key;
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

static const es__opt_spec full_opts[] = {
    ES_OPT_U("keys", 0, (uint64_t)UINT32_MAX - 2, NULL, ES_OPT_SIZES, "distinct values with a row (default: from the vocabulary)",
             "0", ""),
    ES_OPT_MIN_COUNT,
};

static int full_create(es_storage *s, const es_vocab *vocab, es_err *err) {
    const int F = s->p.n_fields, dim = s->p.dim;
    uint64_t n_keys = 0;
    const uint64_t mc = es__storage_opt_u64(s, "min_count");
    int from_meta = 0, rc;
    if (es__storage_opt_given(s, "keys")) {
        n_keys = es__storage_opt_u64(s, "keys");
        from_meta = 1;
    } else if (!vocab) {
        return es__err(err, ES_EINVAL,
                       "full: needs a vocabulary (count the training data first) or keys=N from a saved model");
    } else {
        for (int f = 0; f < F; f++) n_keys += es__vocab_distinct_min(vocab, f, mc);
        if (n_keys > (uint64_t)UINT32_MAX - 2)
            return es__err(err, ES_ERANGE, "full: %llu distinct values is more than this method indexes (2^32 - 2)",
                           (unsigned long long)n_keys);
    }
    const uint64_t n_rows = n_keys + (uint64_t)F;
    size_t icap = 2;
    while (icap < 2 * (size_t)n_keys) icap <<= 1;

    /* Bytes, checked for overflow before anything is allocated. */
    size_t pbytes, abytes = 0, tmp;
    if (!es__mul_size((size_t)n_rows, (size_t)dim * sizeof(float), &pbytes) ||
        !es__mul_size((size_t)n_keys, sizeof(uint64_t), &abytes) ||
        !es__add_size(abytes, ((size_t)F + 1) * sizeof(uint64_t), &abytes) ||
        !es__mul_size(icap, sizeof(uint32_t), &tmp) || !es__add_size(abytes, tmp, &abytes) ||
        !es__add_size(abytes, pbytes, &tmp))
        return es__err(err, ES_ERANGE, "full: table size overflows");
    if (s->budget_bytes > 0 && (double)tmp > s->budget_bytes)
        return es__err(err, ES_EBUDGET,
                       "full: the vocabulary needs %zu parameter bytes (%llu rows x %d floats) + %zu map bytes = %zu, "
                       "over the budget of %.0f bytes; use budget 0 for the exact size, or a compressed method",
                       pbytes, (unsigned long long)n_rows, dim, abytes, tmp, s->budget_bytes);

    full_impl *m = es__calloc(1, sizeof *m);
    if (!m) return es__err(err, ES_ENOMEM, "full: out of memory");
    m->F = F;
    m->n_keys = n_keys;
    m->icap = icap;
    m->min_count = mc;
    m->keys = es__malloc((size_t)n_keys * sizeof *m->keys);
    m->field_off = es__calloc((size_t)F + 1, sizeof *m->field_off);
    m->index = es__malloc(icap * sizeof *m->index);
    if (!m->keys || !m->field_off || !m->index) {
        full_free(m);
        return es__err(err, ES_ENOMEM, "full: out of memory for the map of %llu keys", (unsigned long long)n_keys);
    }
    es_rng rng;
    es__rng_seed(&rng, s->p.seed);
    if (es__rows_init_shard(&m->t, n_rows, dim, &s->p.opt, &rng, s->p.init_scale, s->p.shard_rank, s->p.shard_n) != ES_OK) {
        full_free(m);
        return es__err(err, ES_ENOMEM, "full: out of memory for %llu rows of %d floats", (unsigned long long)n_rows, dim);
    }
    es__rows_shift(&m->t, s->p.init_shift);
    size_t ga_cap = (size_t)s->p.max_batch * (size_t)F;
    if (ga_cap > n_rows) ga_cap = (size_t)n_rows;
    if (es__gradacc_init(&m->ga, ga_cap, dim) != ES_OK) {
        full_free(m);
        return es__err(err, ES_ENOMEM, "full: out of memory for gradient scratch");
    }
    if (!from_meta) {
        uint64_t o = 0;
        for (int f = 0; f < F; f++) {
            uint64_t nf = es__vocab_distinct_min(vocab, f, mc);
            collect_ctx c = {m->keys + o, 0, (size_t)nf, mc};
            es__vocab_each(vocab, f, collect, &c);
            ES_ASSERT(c.n == nf);
            qsort(m->keys + o, c.n, sizeof *m->keys, cmp_u64);
            m->field_off[f] = o;
            o += nf;
        }
        m->field_off[F] = o;
    }
    /* From meta the map is empty until loaded: every key resolves to its
     * field's OOV row, which exists, so lookups stay in bounds. */
    build_index(m);

    if ((rc = es__storage_opt_set_u64(s, "keys", n_keys, err)) != 0 || (rc = es__storage_opt_set_u64(s, "min_count", mc, err)) != 0) {
        full_free(m);
        return rc;
    }
    s->impl = m;
    s->param_bytes = es__rows_param_bytes(&m->t);
    s->state_bytes = es__rows_state_bytes(&m->t);
    s->aux_bytes = abytes;
    return ES_OK;
}

static void full_lookup(es_storage *s, const es_batch *b, int r0, int r1, float *out) {
    full_impl *m = s->impl;
    const int kept = s->step == b && m->step_n && m->step_val == b->val; /* full_step_begin resolved b */
    if (kept) es__rows_lookup_ids(&m->t, b, m->sb.ids, r0, r1, out);
    else es__rows_lookup(&m->t, 1, full_resolve, m, b, r0, r1, out);
}

/* The step's summed gradients of its distinct rows [u0, u1) into ug: each
 * row's gradients added in value order onto zero (es__axpy, as
 * es__rows_backward adds them), whatever range the caller splits off. */
struct full_sum {
    full_impl *m;
    const es_batch *b;
    const float *dout;
};

static void full_sum_rows(void *ctx, size_t u0, size_t u1) {
    const struct full_sum *cx = ctx;
    const full_impl *m = cx->m;
    const es_batch *b = cx->b;
    const size_t dim = (size_t)m->t.dim, PN = (size_t)b->n * (size_t)b->n_fields;
    memset(m->ug + u0 * dim, 0, (u1 - u0) * dim * sizeof *m->ug);
    es__scatter_axpy(m->ug, dim, m->sb.vslot, b->wt, cx->dout, b->off, PN, u0, u1);
}

static int full_backward(es_storage *s, const es_batch *b, const float *dout) {
    full_impl *m = s->impl;
    const int kept = s->step == b && m->step_n && m->step_val == b->val;
    if (kept && m->sb.un != SIZE_MAX && (m->t.prec == ES_PREC_FP32 || m->t.qtrain != ES_QTRAIN_NONE)) {
        /* the step's rows deduplicated by step_begin: the sums es_gradacc
         * would form (each row's gradients added in value order onto zero,
         * es__axpy as es__rows_backward calls it), without its hash probes,
         * summed by the threads that update the rows (full_sum_rows) */
        struct full_sum cx = {m, b, dout};
        es__rows_sum_apply(&m->t, m->sb.urows, m->ug, m->sb.un, full_sum_rows, &cx);
        m->step_n = 0;
        return ES_OK;
    }
    m->step_n = 0;
    int rc = es__rows_backward(&m->t, &m->ga, 1, kept ? full_resolve_kept : full_resolve, m, b, dout);
    if (rc) es__err(&s->err, rc, "full: out of memory growing the gradient scratch past %zu rows", m->ga.cap);
    return rc;
}

static int full_tensors(es_storage *s, es_tensor_ref *refs, int max) {
    full_impl *m = s->impl;
    int n = es__rows_tensors(&m->t, NULL, 0) + 2;
    if (!refs) return n;
    if (max < n) return ES_ERANGE;
    int i = es__rows_tensors(&m->t, refs, max);
    es__tensor_ref_set(&refs[i++], "map.keys", ES_DT_U64, m->keys, 1, m->n_keys);
    es__tensor_ref_set(&refs[i++], "map.field_off", ES_DT_U64, m->field_off, 1, (uint64_t)m->F + 1);
    return i;
}

static int full_after_load(es_storage *s, es_err *err) {
    full_impl *m = s->impl;
    const uint64_t *fo = m->field_off;
    if (fo[0] != 0 || fo[m->F] != m->n_keys)
        return es__err(err, ES_EFORMAT, "full: map field offsets span [%llu, %llu], expected [0, %llu]",
                       (unsigned long long)fo[0], (unsigned long long)fo[m->F], (unsigned long long)m->n_keys);
    for (int f = 0; f < m->F; f++) {
        if (fo[f + 1] < fo[f] || fo[f + 1] > m->n_keys)
            return es__err(err, ES_EFORMAT, "full: map field offsets are not increasing at field %d", f);
        for (uint64_t i = fo[f] + 1; i < fo[f + 1]; i++)
            if (m->keys[i] <= m->keys[i - 1])
                return es__err(err, ES_EFORMAT, "full: map keys of field %d are not strictly increasing at %llu", f,
                               (unsigned long long)i);
    }
    build_index(m);
    return ES_OK;
}

static void full_field_stats(es_storage *s, const es_vocab *vocab, int field, es_field_stats *out) {
    full_impl *m = s->impl;
    if (field < 0 || field >= m->F) {
        memset(out, 0, sizeof *out);
        return;
    }
    uint64_t rows = m->field_off[field + 1] - m->field_off[field] + 1;
    es__rows_field_stats(1, full_resolve, m, vocab, field, rows, out);
}

static int full_row_map(es_storage *s, es__row_map *out) {
    full_impl *m = s->impl;
    *out = es__row_map_one(&m->t, 1, full_resolve, m, m->n_keys + (uint64_t)m->F);
    return ES_OK;
}

static es_rows *full_rows(es_storage *s, int i) { return i == 0 ? &((full_impl *)s->impl)->t : NULL; }

const es_storage_ops es__storage_full = {
    .name = "full",
    .summary = "collision-free table: one row per value seen >= min_count times, one OOV row per field",
    .create = full_create,
    .lookup = full_lookup,
    .backward = full_backward,
    .tensors = full_tensors,
    .after_load = full_after_load,
    .field_stats = full_field_stats,
    .destroy = full_destroy,
    .needs_vocab = 1,
    ES_STORAGE_OPTS(full_opts),
    .default_budget = 0, /* exactly the vocabulary */
    .plain_rows = 1,
    .rows = full_rows,
    .row_map = full_row_map,
    .step_begin = full_step_begin,
    .step_prepare = full_step_prepare,
};
