/*
 * dhe.c — the `dhe` storage method: Deep Hash Embedding (Kang et al.,
 * KDD 2021, "Learning to Embed Categorical Features without Embedding
 * Tables").  There is no embedding table at all: a value's vector is
 * computed from the value itself.
 *
 *   encode  k hash values of the key, each mapped to a real in [-1, 1)
 *           (the paper's "uniform" encoding), give a dense code x[k];
 *   decode  an MLP  k -> h -> ... -> h -> dim  with L hidden layers and
 *           the Mish activation (the paper's choice; it is also smooth, so
 *           finite-difference checks do not trip on ReLU kinks), linear
 *           output.  No batch normalisation: a value's vector must not
 *           depend on which other values share its batch.
 *
 * Encoding.  One XXH3 hash of the key under the field's salt seeds a
 * splitmix64 counter stream; draw j (j = 0..k-1) is
 *     u_j = es__mix64(h + j * 0x9e3779b97f4a7c15),  h = es__hash_u64(key, salt_f)
 * and code_j = (u_j >> 11) * 2^-52 - 1.  Up to a collision of the 64-bit
 * hash (probability ~2^-64 per pair of keys) these are k independent hash
 * functions, at the cost of one XXH3 call and k multiply-xorshift rounds
 * instead of k universal hashes.  The paper draws hashes into [0, m) with
 * m = 1e6 buckets; 52 bits of resolution is the m -> infinity limit.
 *
 * share=1: one MLP for all fields; the field enters through its salt
 *   es__storage_salt(seed, f, 0), so equal raw keys in two fields get
 *   unrelated codes.  share=0: one MLP per field (same salts).
 *
 * Budget.  Parameters are the MLPs' weights and biases; nothing depends on
 * the vocabulary, so there are no aux bytes.  With share=0 the budget is
 * split equally over the fields (a DHE has no per-value parameters, so a
 * field's cardinality gives no reason to give it a larger network).  Per
 * network of P floats, with L hidden layers (default 2, "layers="):
 *   params(k, h) = k h + h + (L - 1)(h^2 + h) + h dim + dim;
 * h is the largest width with params(2h, h) <= P (the paper's code is
 * about twice as wide as its hidden layers), then k grows to the largest
 * value that still fits, which leaves less than h floats of the budget
 * unused.  Widths are capped (h <= 2048, k <= 8192); past that size the
 * budget is not used up (a larger DHE would be too slow to serve).
 * "k=", "h=", "layers=" in opts fix the shape instead; s->meta records
 * "share=,layers=,h=,k=,seed=,dense_opt=" and create() honours it.
 *
 * Training.  The MLP is dense, so backward recomputes the forward of every
 * value of the batch (in blocks), back-propagates wt * dout of its (row,
 * field) pair, sums the parameter gradients over the whole batch and then
 * takes ONE optimizer step per network that saw a value.  The optimizer:
 * SGD (lr) when the storage optimizer is SGD, else Adam (the paper's
 * choice; opt.beta1/beta2/eps) with learning rate lr / 16.  Adam's steps
 * do not shrink over time as Adagrad's do, so it needs a smaller rate than
 * the tables; /16 maps the table default 0.05 to about 0.003, which
 * trained best on the bundled Criteo sample (AUC 0.732 at 1/4 of the full
 * table, against 0.616 for Adagrad at 0.05 and 0.719 at 0.02).
 * "dense_opt=sgd|adagrad|adam" and "dense_lr=" override both; Adagrad
 * uses opt.eps and opt.init_acc.
 *
 * Lookup scratch.  The MLP needs activations, and lookup must neither
 * allocate nor share writable memory between threads.  create() allocates
 * a few scratch slots (one per thread in effect, at least 2); a lookup
 * claims a free slot with an atomic compare-exchange and releases it at
 * the end, so any threads (OpenMP or not) may look up at once; when all
 * slots are busy the caller yields until one frees up.
 *
 * Batch invariance.  Forward products run on activations held transposed,
 * one column per value: Z^T[out, n] = W[out, in] X^T[in, n] through
 * es__gemm_fixed, which computes every element as one multiply-add chain
 * in input order.  So a value's vector is the same bits whatever values,
 * rows, block sizes or threads it is computed with (docs/determinism.md);
 * backward recomputes the forward the same way, so training sees exactly
 * the vectors a lookup returns.  Values go through in blocks of lb (at
 * most DHE_LOOKUP_BLOCK) columns, lb fixed at create from max_batch.
  */
#include "storage/storage.h"

#include "core/simd.h"
#include "optim/optim.h"

#include <cblas.h>
#include <math.h>
#include <sched.h>
#include <stdatomic.h>

#define DHE_MAX_LAYERS 8      /* hidden layers */
#define DHE_MAX_H 2048
#define DHE_MAX_K 8192
#define DHE_LOOKUP_BLOCK 128  /* most rows of a lookup product (fixed per storage: see above) */
#define DHE_BWD_BLOCK 256     /* values per backward block (fewer for very wide nets) */
#define DHE_MAX_SLOTS 256

typedef enum { DOPT_SGD = 0, DOPT_ADAGRAD = 1, DOPT_ADAM = 2 } dhe_dopt;
static const char *const dopt_names[] = {"sgd", "adagrad", "adam"};

typedef struct dhe_impl {
    int F, M, L, k, h, dim;  /* M networks (1 with share=1, F with share=0) */
    int share;
    uint64_t seed;
    uint64_t *salt;          /* [F] */
    /* Parameters, layer-major so each layer is one tensor [M, out, in]:
     * for layer l = 0..L: W_l at woff[l] (M*out*in floats), b_l at boff[l]
     * (M*out floats). */
    int in[DHE_MAX_LAYERS + 1], out[DHE_MAX_LAYERS + 1];
    size_t woff[DHE_MAX_LAYERS + 1], boff[DHE_MAX_LAYERS + 1];
    size_t n_params;         /* floats */
    float *w;                /* [n_params] */
    float *g;                /* [n_params] gradient of the current batch (zero between batches) */
    dhe_dopt dopt;
    float lr;
    /* the dense optimizer: segments W_l and b_l of each network, one group
     * (one Adam step count) per network */
    es__dense_opt opt;
    /* lookup scratch slots */
    int lb;                  /* rows of every lookup product */
    int n_slots;
    atomic_int *busy;        /* [n_slots] */
    float *slot_buf;         /* [n_slots * slot_floats] */
    size_t slot_floats;
    /* backward scratch (single-threaded) */
    int bb;                  /* values per backward block */
    float *bx, *bz, *ba, *bg, *bd1, *bd2; /* [bb,k], [L,bb,h] x2, [bb,dim], [bb,h] x2 */
    float *bt;               /* [max(k,h), bb]: a layer's input, transposed */
    size_t *bpos;            /* [bb] pair index of each value */
    float *bwt;              /* [bb] */
} dhe_impl;

/* ---- encoding ------------------------------------------------------------------- */

/* The dense code of a key under a field salt (see the file comment).
 * Exported for tests; code[k] receives values in [-1, 1). */
void es__dhe_encode(uint64_t key, uint64_t salt, int k, float *code) {
    const uint64_t h = es__hash_u64(key, salt);
    uint64_t c = h;
    for (int j = 0; j < k; j++) {
        uint64_t u = es__mix64(c);
        c += UINT64_C(0x9e3779b97f4a7c15);
        code[j] = (float)((double)(u >> 11) * 0x1p-52 - 1.0);
    }
}

/* ---- Mish ------------------------------------------------------------------------- */

/* mish(x) = x tanh(softplus(x)); with u = e^x, tanh(log(1 + u)) =
 * u(u + 2) / (u(u + 2) + 2), one exp per element.  Past x = 20 the tanh
 * is 1 in float. */
static inline float mish(float x) {
    if (x > 20.0f) return x;
    float u = expf(x), n = u * (u + 2.0f);
    return x * n / (n + 2.0f);
}

/* d mish / dx = t + x (1 - t^2) sigmoid(x), t = tanh(softplus(x)). */
static inline float mish_grad(float x) {
    if (x > 20.0f) return 1.0f;
    float u = expf(x), n = u * (u + 2.0f);
    float t = n / (n + 2.0f);
    float sg = u / (1.0f + u);
    return t + x * (1.0f - t * t) * sg;
}

/* ---- the network ---------------------------------------------------------------- */

static size_t net_params(int k, int h, int L, int dim) {
    /* in size_t: callers keep k, h <= caps, so this cannot overflow */
    return (size_t)k * h + (size_t)h + (size_t)(L - 1) * ((size_t)h * h + h) + (size_t)h * dim + (size_t)dim;
}

/* ZT[out_l, n] = W_l XT[in_l, n] + b (pre-activation) for layer l of network
 * mi; activations are transposed, one column per value, leading dimension
 * ld (see "Batch invariance" above). */
static void layer_forward_t(const dhe_impl *m, int mi, int l, int n, const float *XT, float *ZT, int ld) {
    const int ni = m->in[l], no = m->out[l];
    const float *W = m->w + m->woff[l] + (size_t)mi * no * ni;
    const float *b = m->w + m->boff[l] + (size_t)mi * no;
    es__gemm_fixed(ZT, ld, W, ni, XT, ld, no, ni, n, 1);
    for (int j = 0; j < no; j++) {
        float *z = ZT + (size_t)j * ld;
        for (int i = 0; i < n; i++) z[i] += b[j];
    }
}

/* Lookup forward of n <= lb codes XT[k, lb] through network mi,
 * ping-ponging between ha and hb ([h, lb] each), into YT[dim, lb]. */
static void net_forward_t(const dhe_impl *m, int mi, int n, const float *XT, float *ha, float *hb, float *YT) {
    const float *cur = XT;
    for (int l = 0; l < m->L; l++) {
        float *nxt = (l & 1) ? hb : ha;
        layer_forward_t(m, mi, l, n, cur, nxt, m->lb);
        for (int j = 0; j < m->h; j++) {
            float *z = nxt + (size_t)j * m->lb;
            for (int i = 0; i < n; i++) z[i] = mish(z[i]);
        }
        cur = nxt;
    }
    layer_forward_t(m, mi, m->L, n, cur, YT, m->lb);
}

/* ---- scratch slots ------------------------------------------------------------- */

static int claim_slot(dhe_impl *m) {
    for (;;) {
        for (int i = 0; i < m->n_slots; i++) {
            int expect = 0;
            if (atomic_load_explicit(&m->busy[i], memory_order_relaxed) == 0 &&
                atomic_compare_exchange_strong_explicit(&m->busy[i], &expect, 1, memory_order_acquire,
                                                        memory_order_relaxed))
                return i;
        }
        sched_yield();
    }
}

static void release_slot(dhe_impl *m, int i) { atomic_store_explicit(&m->busy[i], 0, memory_order_release); }

/* ---- lifecycle ---------------------------------------------------------------------- */

static void dhe_free(dhe_impl *m) {
    if (!m) return;
    es__free(m->salt);
    es__free_aligned(m->w);
    es__free_aligned(m->g);
    es__dense_opt_free(&m->opt);
    es__free(m->busy);
    es__free_aligned(m->slot_buf);
    es__free_aligned(m->bx);
    es__free(m->bpos);
    es__free(m->bwt);
    es__free(m);
}

static void dhe_destroy(es_storage *s) {
    dhe_free(s->impl);
    s->impl = NULL;
}

/* Solve (k, h) for a network of at most P floats with L hidden layers. */
static int solve_shape(double P, int L, int dim, int *k_out, int *h_out) {
    if ((double)net_params(1, 1, L, dim) > P) return ES_EBUDGET;
    int lo = 1, hi = DHE_MAX_H;
    while (lo < hi) { /* largest h with params(2h, h) <= P */
        int mid = lo + (hi - lo + 1) / 2;
        if ((double)net_params(ES_MIN(2 * mid, DHE_MAX_K), mid, L, dim) <= P) lo = mid;
        else hi = mid - 1;
    }
    int h = lo;
    double rest = (double)net_params(0, h, L, dim);
    double k = floor((P - rest) / (double)h);
    if (k < 1) k = 1; /* only when h = 1 and params(1, 1) fits: checked above */
    if (k > DHE_MAX_K) k = DHE_MAX_K;
    *k_out = (int)k;
    *h_out = h;
    return ES_OK;
}

static const es__opt_spec dhe_opts[] = {
    ES_OPT_SHARE,
    ES_OPT_U("layers", 1, DHE_MAX_LAYERS, "2", 0, "hidden layers of the decoder MLP", "1", ""),
    ES_OPT_U("h", 1, DHE_MAX_H, NULL, ES_OPT_SIZES, "hidden width (with k=: no budget needed; default: from the budget)", "4", ""),
    ES_OPT_U("k", 1, DHE_MAX_K, NULL, ES_OPT_SIZES, "hash code length (with h=: no budget needed; default: from the budget)", "16",
             ""),
    ES_OPT_SEED,
    ES_OPT_E("dense_opt", "sgd|adagrad|adam", NULL, 0, "the MLP's optimizer (default: adam; sgd when the tables use sgd)",
             "adagrad", ""),
    ES_OPT_F("dense_lr", 0, 1e30, NULL, 0, "the MLP's learning rate (default: the table lr, / 16 for adam)", "0.01", ""),
};

static int dhe_create(es_storage *s, const es_vocab *vocab, es_err *err) {
    (void)vocab;
    const int F = s->p.n_fields, dim = s->p.dim;
    int rc;
    const int share = es__storage_opt_int(s, "share"), L = es__storage_opt_int(s, "layers");
    int k = es__storage_opt_given(s, "k") ? es__storage_opt_int(s, "k") : 0;
    int h = es__storage_opt_given(s, "h") ? es__storage_opt_int(s, "h") : 0;
    const uint64_t seed = es__storage_opt_given(s, "seed") ? es__storage_opt_u64(s, "seed") : s->p.seed;
    int dopt = s->p.opt.kind == ES_OPT_SGD ? DOPT_SGD : DOPT_ADAM;
    if (es__storage_opt_given(s, "dense_opt")) dopt = es__storage_opt_enum(s, "dense_opt");
    float lr = dopt == DOPT_ADAM ? s->p.opt.lr / 16 : s->p.opt.lr;
    if (es__storage_opt_given(s, "dense_lr")) lr = (float)es__storage_opt_f64(s, "dense_lr");
    const int M = share ? 1 : F;

    if (!k || !h) {
        if (s->budget_bytes <= 0)
            return es__err(err, ES_EINVAL, "dhe: needs a budget (bytes or a fraction of the full table), or k= and h=");
        double P = floor(s->budget_bytes / (double)M / sizeof(float));
        int ks, hs;
        if (solve_shape(P, L, dim, &ks, &hs) != ES_OK)
            return es__err(err, ES_EBUDGET,
                           "dhe: a budget of %.0f bytes cannot hold %d network(s) of even width 1 (%zu bytes each, "
                           "dim %d, %d hidden layers)",
                           s->budget_bytes, M, net_params(1, 1, L, dim) * sizeof(float), dim, L);
        if (!h) h = hs;
        if (!k) {
            /* h may have come from opts: fill with k for that width */
            double rest = (double)net_params(0, h, L, dim);
            double kk = floor((P - rest) / (double)h);
            if (kk < 1)
                return es__err(err, ES_EBUDGET, "dhe: width h=%d leaves no room for the code in %.0f bytes", h,
                               s->budget_bytes);
            k = (int)ES_MIN(kk, (double)DHE_MAX_K);
        }
    }

    dhe_impl *m = es__calloc(1, sizeof *m);
    if (!m) return es__err(err, ES_ENOMEM, "dhe: out of memory");
    m->F = F;
    m->M = M;
    m->L = L;
    m->k = k;
    m->h = h;
    m->dim = dim;
    m->share = share;
    m->seed = seed;
    m->dopt = (dhe_dopt)dopt;
    m->lr = lr;
    size_t o = 0;
    for (int l = 0; l <= L; l++) {
        m->in[l] = l == 0 ? k : h;
        m->out[l] = l == L ? dim : h;
        m->woff[l] = o;
        o += (size_t)M * m->out[l] * m->in[l];
        m->boff[l] = o;
        o += (size_t)M * m->out[l];
    }
    m->n_params = o; /* M * net_params(k, h, L, dim): at most F * 8192 * 2048 * 9, fits size_t */
    const size_t pbytes = o * sizeof(float);
    int lb = 8;
    while (lb < DHE_LOOKUP_BLOCK && (int64_t)lb * 2 < (int64_t)s->p.max_batch * (share ? F : 1)) lb *= 2;
    /* XT[k, lb], ha and hb [h, lb], YT[dim, lb], one code [k] */
    const size_t slot_floats = (size_t)lb * ((size_t)k + 2 * (size_t)h + (size_t)dim) + (size_t)k;
    int n_slots = ES_MAX(2, es__threads_get());
    if (n_slots > DHE_MAX_SLOTS) n_slots = DHE_MAX_SLOTS;
    /* backward block: DHE_BWD_BLOCK values, fewer when a value's
     * activations are wide (about 16 MB of scratch at most) */
    const size_t per_val = (size_t)k + 2 * (size_t)L * h + (size_t)dim + 2 * (size_t)h + (size_t)ES_MAX(k, h);
    size_t bb = (size_t)(4u << 20) / per_val;
    bb = ES_MAX((size_t)8, ES_MIN(bb, (size_t)DHE_BWD_BLOCK));
    m->bb = (int)bb;
    m->lb = lb;
    m->n_slots = n_slots;
    m->slot_floats = slot_floats;

    m->salt = es__malloc((size_t)F * sizeof *m->salt);
    m->w = es__alloc_aligned(pbytes);
    m->g = es__alloc_aligned(pbytes);
    m->busy = es__calloc((size_t)n_slots, sizeof *m->busy);
    m->slot_buf = es__alloc_aligned((size_t)n_slots * slot_floats * sizeof(float));
    m->bx = es__alloc_aligned(bb * per_val * sizeof(float));
    m->bpos = es__malloc(bb * sizeof *m->bpos);
    m->bwt = es__malloc(bb * sizeof *m->bwt);
    int ok = m->salt && m->w && m->g && m->busy && m->slot_buf && m->bx && m->bpos && m->bwt;
    if (ok) {
        /* the dense optimizer: the storage optimizer's eps, betas and
         * init_acc with this method's kind and rate; no weight decay */
        es_optim_params dp = s->p.opt;
        dp.kind = dopt == DOPT_SGD ? ES_OPT_SGD : dopt == DOPT_ADAGRAD ? ES_OPT_ADAGRAD : ES_OPT_ADAM;
        dp.lr = lr;
        ok = es__dense_opt_init(&m->opt, &dp, 0.0f, m->w, m->g, o, 2 * (L + 1) * M, M) == ES_OK;
        for (int mi = 0; ok && mi < M; mi++)
            for (int l = 0; l <= L; l++) {
                const size_t nw = (size_t)m->out[l] * m->in[l], nb = (size_t)m->out[l];
                es__dense_opt_add_seg(&m->opt, m->woff[l] + (size_t)mi * nw, nw, 0, mi);
                es__dense_opt_add_seg(&m->opt, m->boff[l] + (size_t)mi * nb, nb, 0, mi);
            }
    }
    if (!ok) {
        dhe_free(m);
        return es__err(err, ES_ENOMEM, "dhe: out of memory for %d network(s) of %zu floats", M, o / (size_t)M);
    }
    for (int i = 0; i < n_slots; i++) atomic_init(&m->busy[i], 0);
    m->bz = m->bx + bb * (size_t)k;
    m->ba = m->bz + (size_t)L * bb * h;
    m->bg = m->ba + (size_t)L * bb * h;
    m->bd1 = m->bg + bb * (size_t)dim;
    m->bd2 = m->bd1 + bb * (size_t)h;
    m->bt = m->bd2 + bb * (size_t)h;
    for (int f = 0; f < F; f++) m->salt[f] = es__storage_salt(seed, f, 0);

    /* Initial weights, layer by layer, network by network, row-major.
     * Hidden layers keep unit pre-activation variance: the code is U(-1, 1)
     * (variance 1/3), so layer 0 uses U(+-3/sqrt(k)); a Mish output of a
     * unit-variance input has a second moment of about 0.35, so deeper
     * layers use U(+-sqrt(8/h)).  The output layer is scaled so that a
     * vector's entries have about the spread of U(-init_scale, init_scale)
     * rows (zeros when init_scale is 0).  Biases start at 0. */
    es_rng rng;
    es__rng_seed(&rng, s->p.seed);
    for (int l = 0; l <= L; l++) {
        float a = l == 0 ? 3.0f / sqrtf((float)k) : sqrtf(8.0f / (float)h);
        if (l == L) a = s->p.init_scale / sqrtf(0.35f * (float)(L ? h : k));
        size_t n = (size_t)M * m->out[l] * m->in[l];
        if (a > 0) es__rng_fill_uniform(&rng, m->w + m->woff[l], n, a);
    }

    if ((rc = es__storage_opt_set_u64(s, "share", (uint64_t)share, err)) != 0 ||
        (rc = es__storage_opt_set_u64(s, "layers", (uint64_t)L, err)) != 0 || (rc = es__storage_opt_set_u64(s, "h", (uint64_t)h, err)) != 0 ||
        (rc = es__storage_opt_set_u64(s, "k", (uint64_t)k, err)) != 0 || (rc = es__storage_opt_set_u64(s, "seed", seed, err)) != 0 ||
        (rc = es__storage_opt_set(s, "dense_opt", err, "%s", dopt_names[dopt])) != 0) {
        dhe_free(m);
        return rc;
    }
    s->impl = m;
    s->param_bytes = pbytes;
    s->aux_bytes = 0;
    s->state_bytes = es__dense_opt_state_bytes(&m->opt);
    return ES_OK;
}

/* ---- lookup --------------------------------------------------------------------- */

/* Run the block [0, n) of codes (XT, one column each) through network mi
 * and pool the vectors into out. */
static void lookup_flush(const dhe_impl *m, int mi, int n, float *buf, const size_t *pos, const float *wts, float *out) {
    const size_t B = (size_t)m->lb;
    float *x = buf, *ha = x + B * m->k, *hb = ha + B * m->h, *y = hb + B * m->h;
    net_forward_t(m, mi, n, x, ha, hb, y);
    for (int i = 0; i < n; i++) {
        float *o = out + pos[i] * (size_t)m->dim;
        const float wt = wts[i];
        for (int d = 0; d < m->dim; d++) o[d] += wt * y[(size_t)d * B + i];
    }
}

static void dhe_lookup(es_storage *s, const es_batch *b, int r0, int r1, float *out) {
    dhe_impl *m = s->impl;
    const int F = m->F, k = m->k;
    memset(out, 0, (size_t)(r1 - r0) * F * m->dim * sizeof(float));
    if (r1 <= r0) return;
    const int slot = claim_slot(m);
    float *buf = m->slot_buf + (size_t)slot * m->slot_floats;
    float *code = buf + m->slot_floats - (size_t)k;
    const size_t B = (size_t)m->lb;
    size_t pos[DHE_LOOKUP_BLOCK];
    float wts[DHE_LOOKUP_BLOCK];
    for (int mi = 0; mi < m->M; mi++) {
        const int f0 = m->share ? 0 : mi, f1 = m->share ? F : mi + 1;
        int n = 0;
        for (int r = r0; r < r1; r++)
            for (int f = f0; f < f1; f++) {
                const size_t P = (size_t)r * F + f;
                for (uint32_t i = b->off[P]; i < b->off[P + 1]; i++) {
                    es__dhe_encode(b->val[i], m->salt[f], k, code);
                    for (int j = 0; j < k; j++) buf[(size_t)j * B + (size_t)n] = code[j];
                    pos[n] = P - (size_t)r0 * F;
                    wts[n] = b->wt[i];
                    if (++n == m->lb) {
                        lookup_flush(m, mi, n, buf, pos, wts, out);
                        n = 0;
                    }
                }
            }
        if (n) lookup_flush(m, mi, n, buf, pos, wts, out);
    }
    release_slot(m, slot);
}

/* ---- backward ------------------------------------------------------------------------ */

/* Forward (keeping pre-activations) and backward of block [0, n) of
 * network mi; parameter gradients accumulate into m->g. */
static void backward_block(dhe_impl *m, int mi, int n, const float *dout) {
    const int L = m->L, h = m->h, k = m->k, dim = m->dim;
    const size_t bb = (size_t)m->bb;
    float *x = m->bx;
    /* forward: z_l = a_{l-1} W_l^T + b_l, a_l = mish(z_l); a_{-1} = x,
     * computed transposed as in a lookup (bt holds the layer input, bd1 the
     * pre-activation), then kept row-major for the backward products */
    float *t = m->bt, *zt = m->bd1;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < k; j++) t[(size_t)j * bb + i] = x[(size_t)i * k + j];
    for (int l = 0; l < L; l++) {
        float *z = m->bz + (size_t)l * bb * h, *a = m->ba + (size_t)l * bb * h;
        layer_forward_t(m, mi, l, n, t, zt, (int)bb);
        for (int j = 0; j < h; j++)
            for (int i = 0; i < n; i++) {
                const float v = zt[(size_t)j * bb + i], av = mish(v);
                z[(size_t)i * h + j] = v;
                a[(size_t)i * h + j] = av;
                t[(size_t)j * bb + i] = av;
            }
    }
    /* gradient w.r.t. each value's vector: its pooling weight times the
     * gradient of its (row, field) output */
    float *gy = m->bg;
    for (int i = 0; i < n; i++) {
        const float *go = dout + m->bpos[i] * (size_t)dim;
        for (int d = 0; d < dim; d++) gy[(size_t)i * dim + d] = m->bwt[i] * go[d];
    }
    float *dz = gy, *spare = m->bd1, *other = m->bd2;
    for (int l = L; l >= 0; l--) {
        const int ni = m->in[l], no = m->out[l];
        const float *in = l == 0 ? x : m->ba + (size_t)(l - 1) * bb * h;
        const float *W = m->w + m->woff[l] + (size_t)mi * no * ni;
        float *dW = m->g + m->woff[l] + (size_t)mi * no * ni;
        float *db = m->g + m->boff[l] + (size_t)mi * no;
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, no, ni, n, 1.0f, dz, no, in, ni, 1.0f, dW, ni);
        for (int r = 0; r < n; r++) {
            const float *gr = dz + (size_t)r * no;
            for (int j = 0; j < no; j++) db[j] += gr[j];
        }
        if (l == 0) break;
        /* d a_{l-1} = dz W_l, then through Mish: d z_{l-1} = d a_{l-1} * mish'(z_{l-1}) */
        float *da = spare;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, ni, no, 1.0f, dz, no, W, ni, 0.0f, da, ni);
        const float *zp = m->bz + (size_t)(l - 1) * bb * h;
        const size_t len = (size_t)n * h;
        for (size_t i = 0; i < len; i++) da[i] *= mish_grad(zp[i]);
        dz = da;
        spare = other;
        other = da;
    }
    (void)k;
}

/* The gradient of batch b into m->g (zero before), and the networks that
 * saw a value: marked in the optimizer, or counted in marks[M] when given. */
static void dhe_accumulate(dhe_impl *m, const es_batch *b, const float *dout, float *marks) {
    const int F = m->F, k = m->k;
    for (int mi = 0; mi < m->M; mi++) {
        const int f0 = m->share ? 0 : mi, f1 = m->share ? F : mi + 1;
        int n = 0;
        for (int r = 0; r < b->n; r++)
            for (int f = f0; f < f1; f++) {
                const size_t P = (size_t)r * F + f;
                for (uint32_t i = b->off[P]; i < b->off[P + 1]; i++) {
                    es__dhe_encode(b->val[i], m->salt[f], k, m->bx + (size_t)n * k);
                    m->bpos[n] = P;
                    m->bwt[n] = b->wt[i];
                    if (++n == m->bb) {
                        backward_block(m, mi, n, dout);
                        n = 0;
                    }
                    if (marks) marks[mi] += 1.0f;
                    else es__dense_opt_mark_group(&m->opt, mi);
                }
            }
        if (n) backward_block(m, mi, n, dout);
    }
}

static int dhe_backward(es_storage *s, const es_batch *b, const float *dout) {
    dhe_impl *m = s->impl;
    dhe_accumulate(m, b, dout, NULL);
    /* one step of each network that saw a value; zeroes their gradients */
    es__dense_opt_step_marked(&m->opt);
    return ES_OK;
}

/* Across processes, replicated (storage.h rep_*): the gradient [n_params]
 * then a count per network of the values it saw [M]. */
static size_t dhe_rep_floats(es_storage *s) {
    const dhe_impl *m = s->impl;
    return m->n_params + (size_t)m->M;
}

static int dhe_rep_backward(es_storage *s, const es_batch *b, const float *dout, float *acc) {
    dhe_impl *m = s->impl;
    dhe_accumulate(m, b, dout, acc + m->n_params);
    for (size_t i = 0; i < m->n_params; i++) acc[i] += m->g[i];
    memset(m->g, 0, m->n_params * sizeof *m->g);
    return ES_OK;
}

static void dhe_rep_apply(es_storage *s, const float *acc) {
    dhe_impl *m = s->impl;
    memcpy(m->g, acc, m->n_params * sizeof *m->g);
    for (int mi = 0; mi < m->M; mi++)
        if (acc[m->n_params + (size_t)mi] > 0) es__dense_opt_mark_group(&m->opt, mi);
    es__dense_opt_step_marked(&m->opt); /* zeroes the marked networks' gradients; the others' are zero */
}

/* ---- tensors ------------------------------------------------------------------------- */

static int dhe_tensors(es_storage *s, es_tensor_ref *refs, int max) {
    dhe_impl *m = s->impl;
    const int per = m->dopt == DOPT_SGD ? 1 : m->dopt == DOPT_ADAGRAD ? 2 : 3;
    const int n = 2 * (m->L + 1) * per + (m->dopt == DOPT_ADAM);
    if (!refs) return n;
    if (max < n) return ES_ERANGE;
    int i = 0;
    for (int q = 0; q < per; q++) {
        /* q = 0: parameters, "mlp.w0"...; then the optimizer's state arrays
         * in its order, "opt.acc.mlp.w0"... or "opt.m.", "opt.v." */
        float *base = q == 0 ? m->w : es__dense_opt_state(&m->opt, q - 1);
        char p[16] = "";
        if (q) snprintf(p, sizeof p, "opt.%s.", es__dense_opt_state_name(&m->opt, q - 1));
        for (int l = 0; l <= m->L; l++) {
            char name[ES_TENSOR_NAME_MAX];
            snprintf(name, sizeof name, "%smlp.w%d", p, l);
            es__tensor_ref_set(&refs[i++], name, ES_DT_F32, base + m->woff[l], 3, (uint64_t)m->M, (uint64_t)m->out[l],
                              (uint64_t)m->in[l]);
            snprintf(name, sizeof name, "%smlp.b%d", p, l);
            es__tensor_ref_set(&refs[i++], name, ES_DT_F32, base + m->boff[l], 2, (uint64_t)m->M, (uint64_t)m->out[l]);
        }
    }
    if (m->dopt == DOPT_ADAM) {
        es__tensor_ref_set(&refs[i++], "opt.step", ES_DT_U64, es__dense_opt_steps(&m->opt), 1, (uint64_t)m->M);
    }
    return i;
}

const es_storage_ops es__storage_dhe = {
    .name = "dhe",
    .summary = "Deep Hash Embedding: k hashes -> dense code -> MLP, no table (budget sizes the MLP)",
    .create = dhe_create,
    .lookup = dhe_lookup,
    .backward = dhe_backward,
    .tensors = dhe_tensors,
    .after_load = NULL,
    .field_stats = NULL,
    .destroy = dhe_destroy,
    ES_STORAGE_OPTS(dhe_opts),
    .default_budget = ES_DEFAULT_BUDGET,
    .needs_vocab = 0,
    .rep_floats = dhe_rep_floats,
    .rep_backward = dhe_rep_backward,
    .rep_apply = dhe_rep_apply,
};
