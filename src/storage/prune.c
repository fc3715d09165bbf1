/*
 * prune.c — pruned embedding tables: the `pep` and `deeplight` storage
 * methods (issue 11, point 5).  Both train a dense hashed table and serve a
 * sparse one that fits the byte budget.
 *
 * Rows.  The dense table has the row mapping of `hash`: share=0 gives
 * field f its own block of rows_f rows, share=1 one block of R rows for all
 * fields; value key of field f reads row
 *     base_f + es__range(es__hash_u64(key, salt_f), rows_f)
 * with salt_f = es__storage_salt(seed, f, 0) (the same rows as `hash`).  A
 * hashed mapping keeps the map out of the budget (3 u64 per field), so the
 * budget is spent on what pruning decides: which entries of the table are
 * kept.  (A vocabulary-indexed mapping, as `full`, costs 12-16 bytes of map
 * per value: at dim 8 that alone is half of the full table's bytes.)
 *
 * Training (both methods): the dense fp32 table W [R, dim] with its sparse
 * optimizer state (es_rows, one update per distinct row per batch), plus a
 * mask bitmap M [R, mb] (mb = ceil(dim / 8) bytes per row).  These are
 * training state: tensors "opt.train.weight", "opt.acc", "opt.mask",
 * "opt.prune" (u64 [4]: step, phase, trained flag, step of the switch), and
 * for pep "opt.train.s" (thresholds) and "opt.s_acc" (their Adagrad
 * accumulators).  They count in state_bytes, not in the budget; a plain
 * saved model leaves them out, a checkpoint keeps them (so a resume is
 * exact).  "opt.train.*" tensors are learnable (the storage harness checks
 * their gradients by finite differences) but are not served.
 *
 *   pep (Liu et al., ICLR 2021): search phase (phase 0):
 *       V^[r, j] = sign(W[r, j]) * relu(|W[r, j]| - g(s[k])),  g = sigmoid,
 *     k the threshold of (field, j) for granularity=table (1 threshold),
 *     field (F), dim (dim) or field_dim (F * dim); field and field_dim need
 *     share=0 (with a shared table a row's pruning would depend on the
 *     field that reads it).  s starts at s_init (default -15: nothing is
 *     pruned at first).  Gradients (a.e.): dL/dW = dL/dV^ * 1[|W| > g(s)],
 *     dL/ds[k] = -sum over elements using k of dL/dV^ * sign(W) *
 *     1[|W| > g(s)] * g'(s).  s is updated with the table's optimizer kind
 *     applied elementwise (SGD, or Adagrad for both Adagrad kinds: a
 *     threshold vector is not an embedding row).
 *     Every `interval` backward steps the kept entries (|W| > g(s)) are
 *     counted; once they fit the serving capacity (PEP's "target
 *     sparsity reached"), or at step `steps` at the latest (then the
 *     capacity's largest |V^| are kept), the mask is frozen and the table
 *     is retrained (phase 1): with rewind=1 (default, the paper's lottery-
 *     ticket step) W is reset to its initial values, regenerated from the
 *     seed, times the mask, and the optimizer state to its initial value;
 *     the forward is then W * M, with masked gradients.
 *   deeplight (Deng et al., WSDM 2021): the forward is W * M from the
 *     start (M all ones).  At backward steps t = interval, 2 interval, ...
 *     up to `steps` (and at t = steps) the entries are pruned to sparsity
 *     s_t = S (1 - (1 - t / steps)^3), S = 1 - capacity / (R dim): the
 *     smallest-magnitude kept entries are dropped (mask cleared, weight
 *     zeroed; pruned entries never come back).  At `steps` exactly the
 *     capacity remains and the mask is frozen (phase 1).
 *   In phase 1 (both) pruned weights are 0 and their gradients are masked,
 *   so they stay 0 under SGD, Adagrad and row-wise Adagrad.
 *
 * Serving form ("bitmap rows"): the kept entries in row-major order,
 *   serve.val  f32 [cap]          values (the first nnz used; param_bytes),
 *   serve.mask u8  [R, mb]        bit j of row r set = entry (r, j) kept,
 *   serve.off  u64 [R / B + 1]    kept entries before each block of B rows
 *                                 (B = rows whose mask fills ~64 bytes,
 *                                 a power of two <= 64),
 *   serve.gen  u64 [1]            the training step it was built at.
 * A lookup of row r reads off[r / B] + the popcount of the masks of the
 * rows before r in its block (one or two cache lines), then scatters the
 * row's values to the set bits.  Index bytes: mb per row + 8 per block,
 * e.g. 1.125 bytes per row at dim 8, against 4 + nnz_r for per-row CSR
 * (u32 offsets, u8 columns).  aux_bytes = mask + off + gen + the 24 F bytes
 * of base/rows/salt; param_bytes = 4 cap; param + aux <= budget.
 *
 * The serving form is rebuilt from the training state whenever tensors()
 * lists the tensors (a save, a checkpoint, a gradient check): it holds the
 * current effective table when that fits the capacity, else (a save before
 * the target was reached) the capacity's largest-magnitude effective
 * entries (ties: lower index first), so a saved model is always within
 * budget; the training state saved with it lets a checkpoint continue
 * exactly.  A storage whose tensors were loaded serves from the sparse form
 * unless the training state was loaded too and matches it (trained flag
 * set, serve.gen == step): then it keeps training from the dense state.
 * A storage serving from the sparse form refuses backward.  A table saved
 * before any step (serve.gen == 0) regenerates its initial training state
 * from the seed instead (exactly what it was), and trains on.
 *
 * Budget B (bytes).  With options rows= (dense rows per field, or one count
 * with share=1) and nnz= (capacity) the shapes are given (a saved model's
 * meta); otherwise, for density rho (option, default 0.25: the served
 * fraction of the dense entries) R = floor((B - 24 F - 24) / (4 rho dim +
 * mb + 8 / B_rows)) rows, split over the fields like `hash` does (one each,
 * then equally, capped at distinct + 1 with a vocabulary, caps lifted when
 * every field has its cap), and cap = floor((B - aux) / 4) (at most
 * R dim).  The budget check of the generic layer then holds by
 * construction.
 *
 * Lookups resolve 64 values ahead and prefetch (dense: row and mask;
 * served: block offset and masks, then the values); measured against the
 * dense table in docs/methods.md.  In training mode they read W (pep
 * phase 0 computes V^ on the fly,
 * sigmoid(s) included, so a perturbed s is seen), in serving mode the
 * sparse form; both are read only (thread safe for disjoint row ranges).
 * Backward, selection and the serving build use scratch allocated at
 * create (the gradient accumulator may grow, ES_ENOMEM).
 */
#include "storage/storage.h"

#include <math.h>

enum { GRAN_TABLE = 0, GRAN_FIELD = 1, GRAN_DIM = 2, GRAN_FIELD_DIM = 3 };
enum { ST_STEP = 0, ST_PHASE = 1, ST_TRAINED = 2, ST_SWITCH = 3, ST_N = 4 };
#define PRUNE_MAX_ROWS (UINT64_C(1) << 40)
#define THR_STACK 512

typedef struct prune_impl {
    int pep;                 /* 1: pep, 0: deeplight */
    int F, dim, share, gran, rewind;
    uint64_t seed;
    float init_scale, init_min, s_init;
    uint64_t steps, interval;
    es_rows t;               /* dense table W [R, dim] + optimizer state */
    es_gradacc ga;
    uint64_t R;
    uint64_t *base, *nrows, *salt; /* [F] each, one allocation */
    size_t mb;               /* mask bytes per row */
    uint8_t *mask;           /* [R * mb] training mask */
    uint64_t *st;            /* [ST_N] */
    float *s, *s_acc, *gs;   /* pep: thresholds [ns], Adagrad state [ns] or NULL, gradient scratch [ns] */
    size_t ns;
    float *thr;              /* [dim] scratch for selection and the serving build */
    uint64_t *hist;          /* [65536] radix-select histogram */
    /* serving form */
    uint64_t cap;
    float *val;              /* [cap] */
    uint8_t *smask;          /* [R * mb] */
    uint64_t *boff;          /* [nblk + 1] */
    uint64_t *sgen;          /* [1] */
    uint64_t nblk;
    int bshift;              /* B = 1 << bshift rows per block */
    int serving;             /* lookups read the sparse form */
} prune_impl;

/* ---- rows ----------------------------------------------------------------------------- */

static void prune_resolve(const void *ctx, int f, const uint64_t *keys, size_t n, uint64_t *ids) {
    const prune_impl *m = ctx;
    const uint64_t b = m->base[f], r = m->nrows[f], sl = m->salt[f];
    for (size_t i = 0; i < n; i++) ids[i] = b + es__range(es__hash_u64(keys[i], sl), r);
}

static inline uint64_t row_of(const prune_impl *m, int f, uint64_t key) {
    return m->base[f] + es__range(es__hash_u64(key, m->salt[f]), m->nrows[f]);
}

static inline int bit(const uint8_t *row_mask, int j) { return (row_mask[j >> 3] >> (j & 7)) & 1; }

static inline float sigm(float x) { return 1.0f / (1.0f + expf(-x)); }

/* Threshold index of (field f, element j). */
static inline size_t thr_idx(const prune_impl *m, int f, int j) {
    switch (m->gran) {
    case GRAN_TABLE: return 0;
    case GRAN_FIELD: return (size_t)f;
    case GRAN_DIM: return (size_t)j;
    default: return (size_t)f * (size_t)m->dim + (size_t)j;
    }
}

/* g(s) of field f's elements j0 .. j0 + n into thr[n]. */
static void thresholds(const prune_impl *m, int f, int j0, int n, float *thr) {
    for (int j = 0; j < n; j++) thr[j] = sigm(m->s[thr_idx(m, f, j0 + j)]);
}

/* Soft threshold sign(w) * relu(|w| - g). */
static inline float soft(float w, float g) {
    float a = fabsf(w) - g;
    return a > 0 ? copysignf(a, w) : 0.0f;
}

/* Initial values: U(-a, a) drawn row-major from the seed (es__rows_init's
 * draws), magnitudes then mapped to [init_min a, a) keeping the sign. */
static void fill_init(prune_impl *m, int always) {
    es_rng rng;
    es__rng_seed(&rng, m->seed);
    const size_t n = (size_t)m->R * (size_t)m->dim;
    if (m->init_scale == 0.0f) {
        memset(m->t.w, 0, n * sizeof(float));
        return;
    }
    if (always) /* es__rng_fill_uniform's values, also while a loader skips fills */
        for (size_t i = 0; i < n; i++) m->t.w[i] = (float)((2.0 * es__rng_uniform(&rng) - 1.0) * m->init_scale);
    else
        es__rng_fill_uniform(&rng, m->t.w, n, m->init_scale);
    if (m->init_min > 0) {
        const float a = m->init_scale, lo = m->init_min * a;
        for (size_t i = 0; i < n; i++) m->t.w[i] = copysignf(lo + (a - lo) * (fabsf(m->t.w[i]) / a), m->t.w[i]);
    }
}

/* ---- selection: the k largest keys among candidates ---------------------------------------
 * Keys are non-negative floats, so their bit patterns order like integers:
 * a two-pass radix select over the high and low 16 bits finds the k-th
 * largest key tau and how many keys equal to tau are kept (lowest index
 * first).  Candidates and keys come row by row from row_keys. */

typedef struct {
    uint32_t tau;
    uint64_t ties;
    int all;                 /* keep every candidate */
} sel_t;

/* Keys of row r of field f (f < 0: shared table, thresholds of field 0
 * are then the same for all: granularity table or dim).  use_thr: pep's
 * search phase (keys |W| - g, candidates those > 0) else keys |W|,
 * candidates the mask bits.  thr holds the field's thresholds. */
static inline void row_keys(const prune_impl *m, int use_thr, uint64_t r, const float *thr, float *x, uint8_t *cand) {
    const float *w = m->t.w + (size_t)r * (size_t)m->dim;
    const uint8_t *mr = m->mask + (size_t)r * m->mb;
    for (int j = 0; j < m->dim; j++) {
        if (use_thr) {
            float a = fabsf(w[j]) - thr[j];
            cand[j] = a > 0;
            x[j] = a > 0 ? a : 0.0f;
        } else {
            cand[j] = (uint8_t)bit(mr, j);
            x[j] = fabsf(w[j]);
        }
    }
}

static inline uint32_t fbits(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

/* Field blocks to scan: share=0 field by field, share=1 one block. */
#define FOR_BLOCKS(m, fb, r0, r1)                                                                          \
    for (int fb = 0; fb < ((m)->share ? 1 : (m)->F); fb++)                                                \
        for (uint64_t r0 = (m)->base[fb], r1 = (m)->share ? (m)->R : (m)->base[fb] + (m)->nrows[fb], *_o = &r0; _o; _o = NULL)

/* Count candidates (into *n) and, when k < *n, find the selection of k. */
static sel_t select_top(prune_impl *m, int use_thr, uint64_t k, uint64_t *n_cand) {
    float x[256 * 8];
    uint8_t cand[256 * 8];
    sel_t sel = {0, 0, 1};
    const int dim = m->dim;
    ES_ASSERT(dim <= 2048);
    uint64_t n = 0;
    memset(m->hist, 0, 65536 * sizeof *m->hist);
    FOR_BLOCKS(m, fb, r0, r1) {
        if (use_thr) thresholds(m, fb, 0, dim, m->thr);
        for (uint64_t r = r0; r < r1; r++) {
            row_keys(m, use_thr, r, m->thr, x, cand);
            for (int j = 0; j < dim; j++)
                if (cand[j]) {
                    n++;
                    m->hist[fbits(x[j]) >> 16]++;
                }
        }
    }
    *n_cand = n;
    if (n <= k) return sel;
    sel.all = 0;
    uint64_t above = 0;
    uint32_t b1 = 65535;
    for (;; b1--) {
        if (above + m->hist[b1] >= k) break;
        above += m->hist[b1];
        ES_ASSERT(b1 > 0);
    }
    memset(m->hist, 0, 65536 * sizeof *m->hist);
    FOR_BLOCKS(m, fb, r0, r1) {
        if (use_thr) thresholds(m, fb, 0, dim, m->thr);
        for (uint64_t r = r0; r < r1; r++) {
            row_keys(m, use_thr, r, m->thr, x, cand);
            for (int j = 0; j < dim; j++)
                if (cand[j] && fbits(x[j]) >> 16 == b1) m->hist[fbits(x[j]) & 0xffffu]++;
        }
    }
    uint32_t b2 = 65535;
    for (;; b2--) {
        if (above + m->hist[b2] >= k) break;
        above += m->hist[b2];
        ES_ASSERT(b2 > 0);
    }
    sel.tau = b1 << 16 | b2;
    sel.ties = k - above;
    return sel;
}

/* Does the selection keep a candidate of key x?  (Call in index order.) */
static inline int sel_keep(sel_t *sel, float x) {
    if (sel->all) return 1;
    uint32_t b = fbits(x);
    if (b > sel->tau) return 1;
    if (b == sel->tau && sel->ties > 0) {
        sel->ties--;
        return 1;
    }
    return 0;
}

/* Rewrite the training mask to the selection (pruned weights zeroed). */
static void apply_selection(prune_impl *m, int use_thr, sel_t sel) {
    float x[256 * 8];
    uint8_t cand[256 * 8];
    const int dim = m->dim;
    FOR_BLOCKS(m, fb, r0, r1) {
        if (use_thr) thresholds(m, fb, 0, dim, m->thr);
        for (uint64_t r = r0; r < r1; r++) {
            row_keys(m, use_thr, r, m->thr, x, cand);
            uint8_t *mr = m->mask + (size_t)r * m->mb;
            float *w = m->t.w + (size_t)r * (size_t)dim;
            memset(mr, 0, m->mb);
            for (int j = 0; j < dim; j++) {
                if (cand[j] && sel_keep(&sel, x[j])) mr[j >> 3] |= (uint8_t)(1u << (j & 7));
                else w[j] = 0.0f;
            }
        }
    }
}

/* Build the serving form from the training state (file comment). */
static void build_serving(prune_impl *m) {
    float x[256 * 8], eff[256 * 8];
    uint8_t cand[256 * 8];
    const int dim = m->dim, use_thr = m->pep && m->st[ST_PHASE] == 0;
    uint64_t n;
    sel_t sel = select_top(m, use_thr, m->cap, &n);
    uint64_t o = 0;
    const uint64_t B = UINT64_C(1) << m->bshift;
    FOR_BLOCKS(m, fb, r0, r1) {
        if (use_thr) thresholds(m, fb, 0, dim, m->thr);
        for (uint64_t r = r0; r < r1; r++) {
            if ((r & (B - 1)) == 0) m->boff[r >> m->bshift] = o;
            row_keys(m, use_thr, r, m->thr, x, cand);
            const float *w = m->t.w + (size_t)r * (size_t)dim;
            for (int j = 0; j < dim; j++) eff[j] = use_thr ? soft(w[j], m->thr[j]) : w[j];
            uint8_t *mr = m->smask + (size_t)r * m->mb;
            memset(mr, 0, m->mb);
            for (int j = 0; j < dim; j++)
                if (cand[j] && sel_keep(&sel, x[j])) {
                    mr[j >> 3] |= (uint8_t)(1u << (j & 7));
                    m->val[o++] = eff[j];
                }
        }
    }
    ES_ASSERT(o <= m->cap);
    m->boff[m->nblk] = o;
    memset(m->val + o, 0, (size_t)(m->cap - o) * sizeof(float));
    m->sgen[0] = m->st[ST_STEP];
}

/* Reset the optimizer state of the table to its initial value. */
static void reset_opt_state(prune_impl *m) {
    if (!m->t.acc) return;
    const size_t n = (size_t)m->R * es__row_state_floats(m->t.opt.kind, m->dim);
    for (size_t i = 0; i < n; i++) m->t.acc[i] = m->t.opt.init_acc;
}

/* Everything but W as create leaves it: mask all ones, s = s_init, the
 * optimizer state at its initial value, step 0, search phase. */
static void initial_state(prune_impl *m) {
    memset(m->mask, 0xff, (size_t)m->R * m->mb);
    if (m->dim & 7)
        for (uint64_t r = 0; r < m->R; r++) m->mask[r * m->mb + m->mb - 1] = (uint8_t)((1u << (m->dim & 7)) - 1);
    for (size_t i = 0; i < m->ns; i++) {
        m->s[i] = m->s_init;
        if (m->s_acc) m->s_acc[i] = m->t.opt.init_acc;
    }
    memset(m->st, 0, ST_N * sizeof *m->st);
}

/* ---- lifecycle ---------------------------------------------------------------------------- */

static void prune_free(prune_impl *m) {
    if (!m) return;
    es__rows_free(&m->t);
    es__gradacc_free(&m->ga);
    es__free(m->base);
    es__free_aligned(m->mask);
    es__free(m->st);
    es__free(m->s);
    es__free(m->s_acc);
    es__free(m->gs);
    es__free(m->thr);
    es__free(m->hist);
    es__free_aligned(m->val);
    es__free_aligned(m->smask);
    es__free(m->boff);
    es__free(m->sgen);
    es__free(m);
}

static void prune_destroy(es_storage *s) {
    prune_free(s->impl);
    s->impl = NULL;
}

/* Equal split of R >= F rows over F fields, capped at distinct + 1 with a
 * vocabulary; caps lift once every field has its cap. */
static void split_equal(uint64_t R, int F, const es_vocab *v, uint64_t *rows) {
    uint64_t rem = R - (uint64_t)F;
    for (int f = 0; f < F; f++) rows[f] = 1;
    while (rem > 0 && v) {
        uint64_t open = 0;
        for (int f = 0; f < F; f++) open += rows[f] < es_vocab_distinct(v, f) + 1;
        if (open == 0) break;
        uint64_t each = rem / open, given = 0;
        for (int f = 0; f < F && rem > given; f++) {
            uint64_t c = es_vocab_distinct(v, f) + 1;
            if (rows[f] >= c) continue;
            uint64_t add = ES_MAX(each, 1);
            if (add > rem - given) add = rem - given;
            if (add > c - rows[f]) add = c - rows[f];
            rows[f] += add;
            given += add;
        }
        rem -= given;
    }
    for (int f = 0; f < F; f++) rows[f] += rem / (uint64_t)F + ((uint64_t)f < rem % (uint64_t)F);
}

static int block_shift(size_t mb) {
    int sh = 0;
    while (sh < 6 && ((size_t)2 << sh) * mb <= 64) sh++;
    return sh;
}

/* Serving aux bytes for R rows. */
static size_t serve_aux(uint64_t R, size_t mb, int bshift, int F) {
    uint64_t nblk = (R + (UINT64_C(1) << bshift) - 1) >> bshift;
    return (size_t)R * mb + ((size_t)nblk + 1) * 8 + 8 + 3 * (size_t)F * 8;
}

static const es__opt_spec pep_opts[] = {
    ES_OPT_SHARE,
    ES_OPT_SEED,
    ES_OPT_L("rows", 1, PRUNE_MAX_ROWS, NULL, ES_OPT_SIZES, "dense rows per field r0:r1:... (share=1: one count; default: from the budget)",
             "50:70", ""),
    ES_OPT_U("nnz", 1, UINT64_C(1) << 44, NULL, ES_OPT_SIZES, "entries the served table holds (default: from the budget)", "300", ""),
    ES_OPT_F("density", 0, 1, "0.25", ES_OPT_LO_OPEN, "served fraction of the dense table's entries (sizes the dense table)", "0.5", ""),
    ES_OPT_E("granularity", "table|field|dim|field_dim", "dim", 0, "one threshold per table, field, dimension or field x dimension",
             "field_dim", ""),
    ES_OPT_F("s_init", -100, 100, "-15", 0, "initial threshold parameter s (threshold sigmoid(s))", "-6", ""),
    ES_OPT_F("init_min", 0, 1, "0", ES_OPT_HI_OPEN, "initial magnitudes in [init_min, 1) x init_scale (for gradient checks)", "0.2",
             ""),
    ES_OPT_U("rewind", 0, 1, "1", 0, "1: retrain from the initial values under the found mask; 0: from the searched ones", "0", ""),
    ES_OPT_U("steps", 1, UINT64_MAX / 4, "10000", 0, "backward steps by which the mask is fixed even if the target is not reached",
             "50", ""),
    ES_OPT_U("interval", 1, UINT64_MAX / 4, "100", 0, "backward steps between checks of the pruned size", "7", ""),
};

static const es__opt_spec deeplight_opts[] = {
    ES_OPT_SHARE,
    ES_OPT_SEED,
    ES_OPT_L("rows", 1, PRUNE_MAX_ROWS, NULL, ES_OPT_SIZES, "dense rows per field r0:r1:... (share=1: one count; default: from the budget)",
             "50:70", ""),
    ES_OPT_U("nnz", 1, UINT64_C(1) << 44, NULL, ES_OPT_SIZES, "entries the served table holds (default: from the budget)", "300", ""),
    ES_OPT_F("density", 0, 1, "0.25", ES_OPT_LO_OPEN, "served fraction of the dense table's entries (sizes the dense table)", "0.5", ""),
    ES_OPT_U("steps", 1, UINT64_MAX / 4, "10000", 0, "backward steps of the sparsity schedule S (1 - (1 - t / steps)^3)", "50", ""),
    ES_OPT_U("interval", 1, UINT64_MAX / 4, "100", 0, "backward steps between pruning steps", "7", ""),
};

static int prune_create(es_storage *s, const es_vocab *vocab, es_err *err, int pep) {
    const char *name = s->p.method;
    const int F = s->p.n_fields, dim = s->p.dim;
    int rc, found;
    if (dim > 2048) return es__err(err, ES_EINVAL, "%s: dim %d is over the 2048 this method supports", name, dim);
    const int share = es__storage_opt_int(s, "share");
    const int gran = pep ? es__storage_opt_enum(s, "granularity") : GRAN_TABLE;
    if (share && (gran == GRAN_FIELD || gran == GRAN_FIELD_DIM))
        return es__err(err, ES_EINVAL, "%s: granularity=%s needs share=0 (a shared row would be pruned differently per field)",
                       name, gran == GRAN_FIELD ? "field" : "field_dim");
    if (es__storage_opt_given(s, "seed")) s->p.seed = es__storage_opt_u64(s, "seed");
    const double rho = es__storage_opt_f64(s, "density");
    const size_t mb = ((size_t)dim + 7) / 8;
    const int bshift = block_shift(mb);
    const int nspace = share ? 1 : F;

    uint64_t *rows = es__malloc((size_t)F * sizeof *rows);
    if (!rows) return es__err(err, ES_ENOMEM, "%s: out of memory", name);
    uint64_t R = 0, cap = 0;
    rc = es__storage_opt_list(s, "rows", nspace, 1, rows, &found, err);
    if (rc == ES_OK && found) {
        for (int f = 0; f < nspace; f++) R += rows[f];
    } else if (rc == ES_OK && es__storage_opt_given(s, "nnz")) {
        double r = ceil((double)es__storage_opt_u64(s, "nnz") / (rho * dim));
        R = (uint64_t)ES_MAX(r, (double)nspace);
        if (R > PRUNE_MAX_ROWS) rc = es__err(err, ES_ERANGE, "%s: nnz= needs more than 2^40 rows", name);
        else if (!share) split_equal(R, F, vocab, rows);
    } else if (rc == ES_OK) {
        if (!(s->budget_bytes > 0)) {
            rc = es__err(err, ES_EINVAL, "%s: needs a budget: bytes (> 1), or a fraction (0, 1] of the full table with a vocabulary",
                         name);
        } else {
            double per_row = 4.0 * rho * dim + (double)mb + 8.0 / (double)(1 << bshift);
            double avail = s->budget_bytes - (double)serve_aux(0, mb, bshift, F) - 8;
            double r = avail > 0 ? floor(avail / per_row) : 0;
            if (r > (double)PRUNE_MAX_ROWS) rc = es__err(err, ES_ERANGE, "%s: a budget of %.0f bytes is too large", name, s->budget_bytes);
            else R = (uint64_t)r;
            if (rc == ES_OK && R < (uint64_t)nspace)
                rc = es__err(err, ES_EBUDGET, "%s: a budget of %.0f bytes holds %llu rows; at least %d are needed", name,
                             s->budget_bytes, (unsigned long long)R, nspace);
        }
        if (rc == ES_OK && !share) split_equal(R, F, vocab, rows);
    }
    if (rc == ES_OK) {
        const size_t aux = serve_aux(R, mb, bshift, F);
        const uint64_t full = R * (uint64_t)dim;
        if (es__storage_opt_given(s, "nnz")) cap = es__storage_opt_u64(s, "nnz");
        else if (s->budget_bytes > 0)
            cap = (double)aux < s->budget_bytes ? (uint64_t)floor((s->budget_bytes - (double)aux) / 4.0) : 0;
        else cap = (uint64_t)ceil(rho * (double)full);
        if (cap > full) cap = full;
        if (cap == 0)
            rc = es__err(err, ES_EBUDGET, "%s: a budget of %.0f bytes leaves no room for values after %zu bytes of index for %llu rows",
                         name, s->budget_bytes, aux, (unsigned long long)R);
    }
    if (rc != ES_OK) {
        es__free(rows);
        return rc;
    }

    prune_impl *m = es__calloc(1, sizeof *m);
    if (!m) {
        es__free(rows);
        return es__err(err, ES_ENOMEM, "%s: out of memory", name);
    }
    m->pep = pep;
    m->F = F;
    m->dim = dim;
    m->share = share;
    m->gran = gran;
    m->rewind = pep ? es__storage_opt_int(s, "rewind") : 0;
    m->seed = s->p.seed;
    m->init_scale = s->p.init_scale;
    m->init_min = pep ? (float)es__storage_opt_f64(s, "init_min") : 0.0f;
    m->s_init = pep ? (float)es__storage_opt_f64(s, "s_init") : 0.0f;
    m->steps = es__storage_opt_u64(s, "steps");
    m->interval = es__storage_opt_u64(s, "interval");
    m->R = R;
    m->mb = mb;
    m->cap = cap;
    m->bshift = bshift;
    m->nblk = (R + (UINT64_C(1) << bshift) - 1) >> bshift;
    m->ns = !pep ? 0 : gran == GRAN_TABLE ? 1 : gran == GRAN_FIELD ? (size_t)F : gran == GRAN_DIM ? (size_t)dim : (size_t)F * dim;
    const int adagrad = s->p.opt.kind == ES_OPT_ADAGRAD || s->p.opt.kind == ES_OPT_ROWWISE_ADAGRAD;
    m->base = es__malloc(3 * (size_t)F * sizeof *m->base);
    m->mask = es__alloc_aligned((size_t)R * mb);
    m->st = es__calloc(ST_N, sizeof *m->st);
    m->thr = es__malloc((size_t)dim * sizeof *m->thr);
    m->hist = es__malloc(65536 * sizeof *m->hist);
    m->val = es__alloc_aligned((size_t)cap * sizeof *m->val);
    m->smask = es__alloc_aligned((size_t)R * mb);
    m->boff = es__calloc((size_t)m->nblk + 1, sizeof *m->boff);
    m->sgen = es__calloc(1, sizeof *m->sgen);
    if (pep) {
        m->s = es__malloc(m->ns * sizeof *m->s);
        m->gs = es__malloc(m->ns * sizeof *m->gs);
        if (adagrad) m->s_acc = es__malloc(m->ns * sizeof *m->s_acc);
    }
    int bad = !m->base || !m->mask || !m->st || !m->thr || !m->hist || !m->val || !m->smask || !m->boff || !m->sgen ||
              (pep && (!m->s || !m->gs || (adagrad && !m->s_acc)));
    if (!bad && es__rows_init(&m->t, R, dim, &s->p.opt, NULL, 0.0f) != ES_OK) bad = 1;
    size_t ga_cap = (size_t)s->p.max_batch * (size_t)F;
    if (ga_cap > R) ga_cap = (size_t)R;
    if (!bad && es__gradacc_init(&m->ga, ga_cap, dim) != ES_OK) bad = 1;
    if (bad) {
        prune_free(m);
        es__free(rows);
        return es__err(err, ES_ENOMEM, "%s: out of memory for %llu rows of %d floats", name, (unsigned long long)R, dim);
    }
    m->nrows = m->base + F;
    m->salt = m->nrows + F;
    uint64_t o = 0;
    for (int f = 0; f < F; f++) {
        m->salt[f] = es__storage_salt(s->p.seed, f, 0);
        m->base[f] = share ? 0 : o;
        m->nrows[f] = share ? R : rows[f];
        o += m->nrows[f];
    }
    fill_init(m, 0);
    initial_state(m);
    s->impl = m;
    if (share) rows[0] = R;
    if ((rc = es__storage_opt_set_u64(s, "share", (uint64_t)share, err)) != 0 ||
        (rc = es__storage_opt_set_u64(s, "seed", s->p.seed, err)) != 0 ||
        (rc = es__storage_opt_set_list(s, "rows", rows, nspace, 1, err)) != 0 ||
        (rc = es__storage_opt_set_u64(s, "nnz", cap, err)) != 0 ||
        (rc = es__storage_opt_set(s, "density", err, "%.17g", rho)) != 0 ||
        (rc = es__storage_opt_set_u64(s, "steps", m->steps, err)) != 0 ||
        (rc = es__storage_opt_set_u64(s, "interval", m->interval, err)) != 0 ||
        (pep && ((rc = es__storage_opt_set(s, "granularity", err, "%s",
                                          gran == GRAN_TABLE ? "table" : gran == GRAN_FIELD ? "field" : gran == GRAN_DIM ? "dim" : "field_dim")) != 0 ||
                 (rc = es__storage_opt_set(s, "s_init", err, "%.17g", es__storage_opt_f64(s, "s_init"))) != 0 ||
                 (rc = es__storage_opt_set(s, "init_min", err, "%.17g", es__storage_opt_f64(s, "init_min"))) != 0 ||
                 (rc = es__storage_opt_set_u64(s, "rewind", (uint64_t)m->rewind, err)) != 0))) {
        es__free(rows);
        prune_destroy(s);
        return rc;
    }
    es__free(rows);
    s->param_bytes = (size_t)cap * sizeof(float);
    s->aux_bytes = serve_aux(R, mb, bshift, F);
    s->state_bytes = es__rows_param_bytes(&m->t) + es__rows_state_bytes(&m->t) + (size_t)R * mb + ST_N * 8 +
                     m->ns * sizeof(float) * (m->s_acc ? 2 : 1);
    return ES_OK;
}

static int pep_create(es_storage *s, const es_vocab *vocab, es_err *err) { return prune_create(s, vocab, err, 1); }
static int deeplight_create(es_storage *s, const es_vocab *vocab, es_err *err) { return prune_create(s, vocab, err, 0); }

/* ---- lookup -------------------------------------------------------------------------------- */

static size_t popcount_bytes(const uint8_t *p, size_t n) {
    size_t c = 0, i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t u;
        memcpy(&u, p + i, 8);
        c += (size_t)__builtin_popcountll(u);
    }
    for (; i < n; i++) c += (size_t)__builtin_popcount(p[i]);
    return c;
}

/* Lookups walk the values of rows [r0, r1) in chunks of LK values: first
 * every value's row is hashed and its first cache lines prefetched (dense:
 * the row and its mask; served: the block offset and the block's masks),
 * then (served) each value's start in serve.val is computed and prefetched,
 * then the values are pooled in order, pair by pair. */
#define LK 64

static void prune_lookup(es_storage *s, const es_batch *b, int r0, int r1, float *out) {
    prune_impl *m = s->impl;
    const int F = m->F, dim = m->dim;
    const int soft_phase = m->pep && m->st[ST_PHASE] == 0 && !m->serving;
    const size_t p0 = (size_t)r0 * F, p1 = (size_t)r1 * F;
    uint64_t row[LK];
    const float *src[LK];
    size_t c_lo = 0, c_hi = 0; /* values [c_lo, c_hi) resolved */
    float thr_f[THR_STACK];
    int thr_field = -1;
    for (size_t p = p0; p < p1; p++) {
        const int f = (int)(p % (size_t)F);
        float *o = out + (p - p0) * (size_t)dim;
        memset(o, 0, (size_t)dim * sizeof *o);
        if (soft_phase && dim <= THR_STACK && b->off[p] < b->off[p + 1] && thr_field != f) {
            thresholds(m, f, 0, dim, thr_f);
            thr_field = f;
        }
        for (uint32_t i = b->off[p]; i < b->off[p + 1]; i++) {
            if (i >= c_hi) {
                /* resolve the next chunk: values i .. , walking pairs from p */
                c_lo = i;
                size_t q = p;
                uint32_t k = 0, v = i;
                while (k < LK && q < p1) {
                    if (v >= b->off[q + 1]) {
                        q++;
                        continue;
                    }
                    const int fq = (int)(q % (size_t)F);
                    const uint64_t r = row_of(m, fq, b->val[v]);
                    row[k] = r;
                    if (m->serving) {
                        const uint64_t blk = r >> m->bshift;
                        __builtin_prefetch(&m->boff[blk]);
                        __builtin_prefetch(m->smask + (size_t)(blk << m->bshift) * m->mb);
                    } else {
                        __builtin_prefetch(m->t.w + (size_t)r * dim);
                        __builtin_prefetch(m->mask + (size_t)r * m->mb);
                    }
                    k++;
                    v++;
                }
                c_hi = c_lo + k;
                if (m->serving)
                    for (uint32_t j = 0; j < k; j++) {
                        const uint64_t r = row[j], blk = r >> m->bshift, r_lo = blk << m->bshift;
                        src[j] = m->val + m->boff[blk] +
                                 popcount_bytes(m->smask + (size_t)r_lo * m->mb, (size_t)(r - r_lo) * m->mb);
                        __builtin_prefetch(src[j]);
                    }
            }
            const uint32_t j = (uint32_t)(i - c_lo);
            const uint64_t r = row[j];
            const float wt = b->wt[i];
            if (m->serving) {
                const uint8_t *mr = m->smask + (size_t)r * m->mb;
                const float *v = src[j];
                for (size_t x = 0; x < m->mb; x++) {
                    unsigned bb = mr[x];
                    while (bb) {
                        o[x * 8 + (size_t)__builtin_ctz(bb)] += wt * *v++;
                        bb &= bb - 1;
                    }
                }
                continue;
            }
            const float *w = m->t.w + (size_t)r * dim;
            if (soft_phase) {
                if (dim <= THR_STACK)
                    for (int d = 0; d < dim; d++) o[d] += wt * soft(w[d], thr_f[d]);
                else
                    for (int d = 0; d < dim; d++) o[d] += wt * soft(w[d], sigm(m->s[thr_idx(m, f, d)]));
            } else {
                const uint8_t *mr = m->mask + (size_t)r * m->mb;
                for (int d = 0; d < dim; d++) o[d] += wt * (bit(mr, d) ? w[d] : 0.0f);
            }
        }
    }
}

/* ---- backward ------------------------------------------------------------------------------ */

/* Schedule actions after step t (file comment). */
static void after_step(prune_impl *m) {
    const uint64_t t = m->st[ST_STEP];
    if (m->st[ST_PHASE] != 0) return;
    if (t % m->interval != 0 && t < m->steps) return;
    uint64_t n;
    if (m->pep) {
        sel_t sel = select_top(m, 1, m->cap, &n);
        if (n > m->cap && t < m->steps) return; /* not at the target yet */
        apply_selection(m, 1, sel);
        if (m->rewind) {
            /* lottery ticket: the initial values under the found mask */
            fill_init(m, 1);
            const size_t N = (size_t)m->R * (size_t)m->dim;
            for (size_t e = 0; e < N; e++)
                if (!bit(m->mask + (e / (size_t)m->dim) * m->mb, (int)(e % (size_t)m->dim))) m->t.w[e] = 0.0f;
            reset_opt_state(m);
        }
        m->st[ST_PHASE] = 1;
        m->st[ST_SWITCH] = t;
        return;
    }
    /* deeplight: sparsity s_t = S (1 - (1 - t / T)^3), kept = N - s_t N */
    const double N = (double)m->R * m->dim, S = 1.0 - (double)m->cap / N;
    const double u = t >= m->steps ? 1.0 : (double)t / (double)m->steps;
    const double st = S * (1.0 - (1.0 - u) * (1.0 - u) * (1.0 - u));
    uint64_t keep = t >= m->steps ? m->cap : (uint64_t)(N - floor(st * N));
    if (keep < m->cap) keep = m->cap;
    sel_t sel = select_top(m, 0, keep, &n);
    if (n > keep) apply_selection(m, 0, sel);
    if (t >= m->steps) {
        m->st[ST_PHASE] = 1;
        m->st[ST_SWITCH] = t;
    }
}

static int prune_backward(es_storage *s, const es_batch *b, const float *dout) {
    prune_impl *m = s->impl;
    const int F = m->F, dim = m->dim;
    if (m->serving)
        return es__err(&s->err, ES_EINVAL,
                       "%s: this table was loaded without its training state (a saved model serves only); "
                       "resume from a checkpoint to train it",
                       s->p.method);
    const int soft_phase = m->pep && m->st[ST_PHASE] == 0;
    float thr_stack[THR_STACK];
    if (soft_phase) memset(m->gs, 0, m->ns * sizeof *m->gs);
    es__gradacc_clear(&m->ga);
    for (int f = 0; f < F; f++) {
        const int thr_ok = soft_phase && dim <= THR_STACK;
        if (thr_ok) thresholds(m, f, 0, dim, thr_stack);
        for (int r = 0; r < b->n; r++) {
            const size_t p = (size_t)r * F + (size_t)f;
            const float *d = dout + p * (size_t)dim;
            for (uint32_t i = b->off[p]; i < b->off[p + 1]; i++) {
                const uint64_t row = row_of(m, f, b->val[i]);
                const float wt = b->wt[i];
                float *g = es__gradacc_row(&m->ga, row);
                if (!g) {
                    es__gradacc_clear(&m->ga);
                    return es__err(&s->err, ES_ENOMEM, "%s: out of memory growing the gradient scratch past %zu rows",
                                   s->p.method, m->ga.cap);
                }
                const float *w = m->t.w + (size_t)row * dim;
                if (soft_phase) {
                    for (int j = 0; j < dim; j++) {
                        const size_t k = thr_idx(m, f, j);
                        const float th = thr_ok ? thr_stack[j] : sigm(m->s[k]);
                        if (fabsf(w[j]) - th > 0) {
                            const float gd = wt * d[j];
                            g[j] += gd;
                            m->gs[k] -= gd * copysignf(1.0f, w[j]) * th * (1.0f - th);
                        }
                    }
                } else {
                    const uint8_t *mr = m->mask + (size_t)row * m->mb;
                    for (int j = 0; j < dim; j++)
                        if (bit(mr, j)) g[j] += wt * d[j];
                }
            }
        }
    }
    es__gradacc_apply(&m->ga, &m->t);
    if (soft_phase) {
        if (m->s_acc) es__adagrad_update(m->s, m->gs, m->s_acc, m->ns, m->t.opt.lr, m->t.opt.eps, 0.0f);
        else es__sgd_update(m->s, m->gs, m->ns, m->t.opt.lr, 0.0f);
    }
    m->st[ST_STEP]++;
    m->st[ST_TRAINED] = 1;
    after_step(m);
    return ES_OK;
}

/* ---- tensors ------------------------------------------------------------------------------- */

static int prune_tensors(es_storage *s, es_tensor_ref *refs, int max) {
    prune_impl *m = s->impl;
    const int nrows_t = es__rows_tensors(&m->t, NULL, 0);
    const int n = nrows_t + 4 + 2 + (m->pep ? 1 + (m->s_acc ? 1 : 0) : 0);
    if (!refs) return n;
    if (max < n) return ES_ERANGE;
    if (!m->serving) build_serving(m);
    int i = es__rows_tensors(&m->t, refs, max);
    for (int k = 0; k < i; k++)
        if (strcmp(refs[k].name, "weight") == 0) snprintf(refs[k].name, sizeof refs[k].name, "opt.train.weight");
    es__tensor_ref_set(&refs[i++], "serve.val", ES_DT_F32, m->val, 1, m->cap);
    es__tensor_ref_set(&refs[i++], "serve.mask", ES_DT_U8, m->smask, 2, m->R, (uint64_t)m->mb);
    es__tensor_ref_set(&refs[i++], "serve.off", ES_DT_U64, m->boff, 1, m->nblk + 1);
    es__tensor_ref_set(&refs[i++], "serve.gen", ES_DT_U64, m->sgen, 1, (uint64_t)1);
    es__tensor_ref_set(&refs[i++], "opt.mask", ES_DT_U8, m->mask, 2, m->R, (uint64_t)m->mb);
    es__tensor_ref_set(&refs[i++], "opt.prune", ES_DT_U64, m->st, 1, (uint64_t)ST_N);
    if (m->pep) {
        es__tensor_ref_set(&refs[i++], "opt.train.s", ES_DT_F32, m->s, 1, (uint64_t)m->ns);
        if (m->s_acc) es__tensor_ref_set(&refs[i++], "opt.s_acc", ES_DT_F32, m->s_acc, 1, (uint64_t)m->ns);
    }
    return i;
}

static int prune_after_load(es_storage *s, es_err *err) {
    prune_impl *m = s->impl;
    const uint64_t B = UINT64_C(1) << m->bshift;
    /* the serving form must be consistent whatever is used */
    if (m->boff[0] != 0 || m->boff[m->nblk] > m->cap)
        return es__err(err, ES_EFORMAT, "%s: serving offsets span [%llu, %llu], capacity %llu", s->p.method,
                       (unsigned long long)m->boff[0], (unsigned long long)m->boff[m->nblk], (unsigned long long)m->cap);
    for (uint64_t k = 0; k < m->nblk; k++) {
        uint64_t r0 = k * B, r1 = ES_MIN(r0 + B, m->R);
        size_t c = popcount_bytes(m->smask + (size_t)r0 * m->mb, (size_t)(r1 - r0) * m->mb);
        if (m->boff[k + 1] != m->boff[k] + c)
            return es__err(err, ES_EFORMAT, "%s: serving offsets do not match the mask at block %llu", s->p.method,
                           (unsigned long long)k);
    }
    if (m->dim & 7)
        for (uint64_t r = 0; r < m->R; r++)
            if (m->smask[r * m->mb + m->mb - 1] >> (m->dim & 7))
                return es__err(err, ES_EFORMAT, "%s: serving mask row %llu has bits past dim", s->p.method, (unsigned long long)r);
    if (m->sgen[0] == 0) {
        /* saved before any training step: the training state is the
         * initial one, regenerated from the seed whether or not it was
         * loaded, so the table looks up what the saved one did */
        fill_init(m, 1);
        initial_state(m);
        reset_opt_state(m);
        m->serving = 0;
        return ES_OK;
    }
    m->serving = !(m->st[ST_TRAINED] == 1 && m->sgen[0] == m->st[ST_STEP]);
    if (!m->serving && (m->st[ST_PHASE] > 1 || m->interval == 0))
        return es__err(err, ES_EFORMAT, "%s: training state phase %llu is not 0 or 1", s->p.method,
                       (unsigned long long)m->st[ST_PHASE]);
    return ES_OK;
}

static void prune_field_stats(es_storage *s, const es_vocab *vocab, int field, es_field_stats *out) {
    prune_impl *m = s->impl;
    if (field < 0 || field >= m->F) {
        memset(out, 0, sizeof *out);
        return;
    }
    es__rows_field_stats(1, prune_resolve, m, vocab, field, m->nrows[field], out);
}

const es_storage_ops es__storage_pep = {
    .name = "pep",
    .summary = "PEP: learnable soft thresholds prune a hashed table to the budget, then retrain under the mask; serves bitmap rows",
    .create = pep_create,
    .lookup = prune_lookup,
    .backward = prune_backward,
    .tensors = prune_tensors,
    .after_load = prune_after_load,
    .field_stats = prune_field_stats,
    .destroy = prune_destroy,
    ES_STORAGE_OPTS(pep_opts),
    .default_budget = ES_DEFAULT_BUDGET,
    .derived_serving = 1,
};

const es_storage_ops es__storage_deeplight = {
    .name = "deeplight",
    .summary = "DeepLight: magnitude pruning of a hashed table on a cubic sparsity schedule to the budget; serves bitmap rows",
    .create = deeplight_create,
    .lookup = prune_lookup,
    .backward = prune_backward,
    .tensors = prune_tensors,
    .after_load = prune_after_load,
    .field_stats = prune_field_stats,
    .destroy = prune_destroy,
    ES_STORAGE_OPTS(deeplight_opts),
    .default_budget = ES_DEFAULT_BUDGET,
    .derived_serving = 1,
};
