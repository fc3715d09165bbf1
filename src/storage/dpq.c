/*
 * dpq.c — the `dpq` and `mgqe` storage methods: product-quantized code
 * rows over learned codebooks.
 *
 *   dpq:  differentiable product quantization (Chen, Li & Sun, ICML 2020).
 *   mgqe: multi-granular quantized embeddings (Kang et al., WWW 2020
 *         companion): dpq where the rows of rare values may only use a
 *         prefix of each codebook.
 *
 * Shapes.  dim D is split into M groups of d = D/M floats.  A "space" is
 * one codebook plus the code rows that index it: share=0 gives every field
 * its own space (S = F), share=1 one space for all fields (S = 1).
 *   codebook [S*M*K, d]  f32   centroid k of group g of space s is row
 *                              (s*M + g)*K + k                   (param)
 *   codes    [N, M*cb]   u8    code of group g of row r; cb = 1 byte when
 *                              K <= 256, else 2 (little endian)   (aux)
 *   map.rows [S]         u64   code rows of each space            (aux)
 *   opt.query [N, D]     f32   training only: the query of each row
 *   opt.query_acc, opt.codebook_acc   optimizer state (Adagrad kinds)
 *   opt.tier [N]         u8    mgqe: 0 = head row (K centroids), 1 = tail
 *                              row (the first `small`)
 *   opt.trained [1]      u8    1 once a backward ran (see serving below)
 * Serving bytes (budget) = codebook + codes + map.rows (+ 8 S bytes of
 * derived row bases); everything named opt.* is training state.
 *
 * Rows.  Values hash into code rows like the hashing trick: value key of
 * field f reads row  base[s] + es__range(es__hash_u64(key, salt_f), rows[s])
 * with salt_f = es__storage_salt(seed, f, 0).  A code row costs only M*cb
 * bytes (a full row D*4), so at budgets such as 1/16 of the full table
 * there are about as many code rows as values and few collisions, while a
 * vocabulary index (the `full` map, ~16 bytes per value) alone would be
 * larger than such budgets.  share=0 splits N rows over the fields in
 * proportion to distinct values + 1 (es__storage_split; equally without a
 * vocabulary).
 *
 * Budget B.  K (centroids, when not given) is the largest power of two in
 * [2, 256] whose codebooks take at most B/4; N = floor((B - codebooks -
 * 16 S) / (M cb)) code rows fill the rest, so the serving bytes are within
 * M*cb bytes of B.  groups default: d = 4 when 4 divides D, else 2 when D
 * is even, else 1.
 *
 * Lookup.  hard (assign=ste, and any storage that serves): out_g = C_s,g,
 *   code[r][g]; reads codes and codebook only.
 * soft (assign=soft while training): out_g = sum_k p_k C_s,g,k with
 *   p = softmax(-|q_g - C_k|^2 / temperature) over the row's allowed
 *   centroids: fully differentiable in query and codebook.
 * A storage serves (hard lookups) when it was loaded without its training
 * state: after_load sees opt.trained == 0 (the file's opt.* tensors were
 * not read), rebuilds every query as its decoded vector (so training can
 * resume from it), and uses the codes until the next backward.
 *
 * Training (backward, one optimizer update per distinct query row and per
 * centroid, the storage's optimizer for both: SGD, Adagrad, row-wise
 * Adagrad; centroids are rows of d floats):
 *   ste:  first the codes of the batch's rows are re-assigned (argmin
 *         over the row's allowed centroids of |q_g - C_k|^2, ties to the
 *         lowest k) from the current query and codebook, so the forward
 *         the gradient is taken at is exactly codebook[codes]; then the
 *         chosen centroid gets the output gradient directly, and the query
 *         the same gradient (straight-through) plus the commitment pull
 *         beta (q_g - C_k) (VQ-VAE's commitment loss beta/2 |q - sg(C)|^2;
 *         option beta, 0 = pure straight-through).  The codes therefore
 *         lag the query by one update of that row.
 *   soft: the exact gradient of the softmax-weighted sum: with upstream
 *         gy and y = sum p_k C_k, a_k = p_k (gy.C_k - gy.y);
 *         dC_k = p_k gy + a_k (2/T)(q - C_k), dq = -sum_k a_k (2/T)(q - C_k).
 *         The codes (argmax p) of the batch's rows are refreshed after the
 *         update, and all rows' codes when tensors() is asked for the
 *         arrays (a save): soft lookups never read them while training.
 *
 * mgqe tiers.  With a vocabulary, each code row's frequency is the summed
 * count of the vocabulary values hashed to it; in each space the `head`
 * fraction (default 0.25) of rows with the highest frequency (ties: lower
 * row) choose among all K centroids, the others among the first `small`
 * (default K/4, at least 1).  Without a vocabulary every row is a head row
 * (the tiers of a saved model come back with its training state).  Codes
 * are one byte in both tiers, so the tiers do not change the bytes.
 *
 * Lookup allocates nothing and reads only (thread safe for disjoint row
 * ranges); backward uses scratch allocated at create (gradient
 * accumulators grown amortised by es_gradacc, a dense codebook gradient).
 */
#include "storage/storage.h"

#include <math.h>

typedef struct dpq_impl {
    int F, S, D, M, d, K, Ks, cb;
    int share, soft, mgqe, serving;
    float T, beta;
    uint64_t seed, N;
    uint64_t *srows;   /* [2S]: rows per space (tensor), then bases */
    uint64_t *sbase;
    uint8_t *codes;    /* [N * M * cb] */
    es_rows q;         /* queries [N, D] */
    es_rows c;         /* centroids [S*M*K, d] */
    uint8_t *tier;     /* mgqe: [N] */
    uint8_t *trained;  /* [1] */
    es_gradacc gq;     /* query gradients */
    float *gc;         /* [S*M*K*d] dense centroid gradient */
    uint8_t *gc_mark;  /* [S*M*K] */
    uint32_t *gc_list; /* [S*M*K] touched centroids, insertion order */
    size_t gc_n;
    float *p;          /* [K] softmax scratch (backward) */
    float *y;          /* [d] */
} dpq_impl;

/* ---- small helpers ----------------------------------------------------------------- */

static inline uint32_t code_get(const dpq_impl *m, uint64_t r, int g) {
    const size_t i = ((size_t)r * (size_t)m->M + (size_t)g) * (size_t)m->cb;
    return m->cb == 1 ? m->codes[i] : (uint32_t)m->codes[i] | (uint32_t)m->codes[i + 1] << 8;
}

static inline void code_set(dpq_impl *m, uint64_t r, int g, uint32_t k) {
    const size_t i = ((size_t)r * (size_t)m->M + (size_t)g) * (size_t)m->cb;
    m->codes[i] = (uint8_t)k;
    if (m->cb == 2) m->codes[i + 1] = (uint8_t)(k >> 8);
}

static inline int row_k(const dpq_impl *m, uint64_t r) { return m->mgqe && m->tier[r] ? m->Ks : m->K; }

static inline uint64_t cent_row(const dpq_impl *m, int s, int g, uint32_t k) {
    return ((uint64_t)s * (uint64_t)m->M + (uint64_t)g) * (uint64_t)m->K + k;
}

static inline const float *cent(const dpq_impl *m, int s, int g, uint32_t k) {
    return m->c.w + cent_row(m, s, g, k) * (uint64_t)m->d;
}

static inline float sqdist(const float *a, const float *b, int d) {
    float s = 0;
    for (int i = 0; i < d; i++) {
        float t = a[i] - b[i];
        s += t * t;
    }
    return s;
}

static inline uint64_t row_of(const dpq_impl *m, int f, uint64_t salt, uint64_t key) {
    const int s = m->share ? 0 : f;
    return m->sbase[s] + es__range(es__hash_u64(key, salt), m->srows[s]);
}

/* code[r] = argmin over the row's allowed centroids (ties: lowest k). */
static void assign_row(dpq_impl *m, int s, uint64_t r) {
    const int Kr = row_k(m, r);
    const float *q = m->q.w + r * (uint64_t)m->D;
    for (int g = 0; g < m->M; g++) {
        const float *qg = q + (size_t)g * m->d;
        uint32_t best = 0;
        float bd = INFINITY;
        for (int k = 0; k < Kr; k++) {
            float dd = sqdist(qg, cent(m, s, g, (uint32_t)k), m->d);
            if (dd < bd) {
                bd = dd;
                best = (uint32_t)k;
            }
        }
        code_set(m, r, g, best);
    }
}

static void assign_all(dpq_impl *m) {
    for (int s = 0; s < m->S; s++)
        for (uint64_t r = m->sbase[s]; r < m->sbase[s] + m->srows[s]; r++) assign_row(m, s, r);
}

/* Softmax weights p[0..Kr) of query group qg over its centroids; returns Kr. */
static int soft_weights(const dpq_impl *m, int s, int g, const float *qg, int Kr, float *p) {
    float lo = INFINITY;
    for (int k = 0; k < Kr; k++) {
        p[k] = sqdist(qg, cent(m, s, g, (uint32_t)k), m->d);
        if (p[k] < lo) lo = p[k];
    }
    float Z = 0;
    for (int k = 0; k < Kr; k++) Z += p[k] = expf(-(p[k] - lo) / m->T);
    const float iz = 1.0f / Z;
    for (int k = 0; k < Kr; k++) p[k] *= iz;
    return Kr;
}

/* o += w * sum_k softmax_k C_k for one group, without scratch: one pass for
 * the smallest distance, one for the normaliser, one to accumulate. */
static void soft_axpy(const dpq_impl *m, int s, int g, const float *qg, int Kr, float w, float *o) {
    const int d = m->d;
    float lo = INFINITY;
    for (int k = 0; k < Kr; k++) {
        float dd = sqdist(qg, cent(m, s, g, (uint32_t)k), d);
        if (dd < lo) lo = dd;
    }
    float Z = 0;
    for (int k = 0; k < Kr; k++) Z += expf(-(sqdist(qg, cent(m, s, g, (uint32_t)k), d) - lo) / m->T);
    const float wz = w / Z;
    for (int k = 0; k < Kr; k++) {
        const float *ck = cent(m, s, g, (uint32_t)k);
        const float a = wz * expf(-(sqdist(qg, ck, d) - lo) / m->T);
        for (int i = 0; i < d; i++) o[i] += a * ck[i];
    }
}

/* ---- lifecycle ---------------------------------------------------------------------- */

static void dpq_free(dpq_impl *m) {
    if (!m) return;
    es__rows_free(&m->q);
    es__rows_free(&m->c);
    es__free(m->srows);
    es__free(m->codes);
    es__free(m->tier);
    es__free(m->trained);
    es__gradacc_free(&m->gq);
    es__free(m->gc);
    es__free(m->gc_mark);
    es__free(m->gc_list);
    es__free(m->p);
    es__free(m->y);
    es__free(m);
}

static void dpq_destroy(es_storage *s) {
    dpq_free(s->impl);
    s->impl = NULL;
}

static void set_bases(dpq_impl *m) {
    uint64_t o = 0;
    for (int s = 0; s < m->S; s++) {
        m->sbase[s] = o;
        o += m->srows[s];
    }
}

#define DPQ_OPTS_COMMON                                                                                                   \
    ES_OPT_U("share", 0, 1, "1", 0, "1 (default): one codebook and row space for all fields; 0: one per field", "0", ""), \
        ES_OPT_U("groups", 1, 65536, NULL, 0, "M sub-vectors per embedding, dividing dim (default: dim/4, dim/2 or dim)", \
                 "2", ""),                                                                                                \
        ES_OPT_U("centroids", 2, 65536, NULL, 0,                                                                          \
                 "K centroids per group codebook (default: largest power of two <= 256 with codebooks <= budget/4)",      \
                 "16", ""),                                                                                               \
        ES_OPT_E("assign", "ste|soft", "ste", 0,                                                                          \
                 "ste: hard argmin, straight-through gradient; soft: softmax-weighted centroids while training", "soft",  \
                 ""),                                                                                                     \
        ES_OPT_F("temperature", 0, 1e6, "0.001", ES_OPT_LO_OPEN, "soft: softmax temperature on squared distances",        \
                 "0.5", "assign=soft"),                                                                                   \
        ES_OPT_F("beta", 0, 1e3, "0.25", 0, "ste: commitment pull of the query toward its centroid", "0", ""),           \
        ES_OPT_U("rows", 1, UINT64_C(1) << 40, NULL, ES_OPT_SIZES, "code rows in all (default: from the budget)", "300", \
                 ""),                                                                                                     \
        ES_OPT_SEED

static const es__opt_spec dpq_opts[] = {DPQ_OPTS_COMMON};
static const es__opt_spec mgqe_opts[] = {
    DPQ_OPTS_COMMON,
    ES_OPT_U("small", 1, 65536, NULL, 0, "centroids the tail rows may use, a prefix of the codebook (default: K/4)", "3", ""),
    ES_OPT_F("head", 0, 1, "0.25", ES_OPT_LO_OPEN, "fraction of each space's rows, the most frequent, that use all K", "0.5",
             ""),
};

typedef struct {
    const dpq_impl *m;
    int f;
    uint64_t salt;
    double *freq;
} freq_ctx;

static void add_freq(uint64_t key, uint64_t count, void *ctx) {
    freq_ctx *x = ctx;
    x->freq[row_of(x->m, x->f, x->salt, key)] += (double)count;
}

typedef struct {
    double f;
    uint64_t r;
} row_freq;

static int cmp_freq(const void *a, const void *b) {
    const row_freq *x = a, *y = b;
    if (x->f != y->f) return x->f > y->f ? -1 : 1;
    return (x->r > y->r) - (x->r < y->r);
}

/* mgqe: tier of every row from the vocabulary (file comment). */
static int set_tiers(dpq_impl *m, const es_vocab *vocab, double head) {
    memset(m->tier, 0, (size_t)m->N);
    if (!vocab) return ES_OK;
    double *freq = es__calloc((size_t)m->N, sizeof *freq);
    row_freq *ord = es__malloc((size_t)m->N * sizeof *ord);
    if (!freq || !ord) {
        es__free(freq);
        es__free(ord);
        return ES_ENOMEM;
    }
    for (int f = 0; f < m->F && f < es_vocab_n_fields(vocab); f++) {
        freq_ctx x = {m, f, es__storage_salt(m->seed, f, 0), freq};
        es__vocab_each(vocab, f, add_freq, &x);
    }
    for (int s = 0; s < m->S; s++) {
        const uint64_t b = m->sbase[s], n = m->srows[s];
        for (uint64_t i = 0; i < n; i++) ord[i] = (row_freq){freq[b + i], b + i};
        qsort(ord, (size_t)n, sizeof *ord, cmp_freq);
        uint64_t nh = (uint64_t)ceil(head * (double)n);
        for (uint64_t i = nh; i < n; i++) m->tier[ord[i].r] = 1;
    }
    es__free(freq);
    es__free(ord);
    return ES_OK;
}

static int create_common(es_storage *s, const es_vocab *vocab, int mgqe, es_err *err) {
    const char *name = s->p.method;
    const int F = s->p.n_fields, D = s->p.dim;
    const int share = es__storage_opt_int(s, "share");
    const int S = share ? 1 : F;
    const int soft = es__storage_opt_enum(s, "assign") == 1;
    const float T = (float)es__storage_opt_f64(s, "temperature"), beta = (float)es__storage_opt_f64(s, "beta");
    const uint64_t seed = es__storage_opt_given(s, "seed") ? es__storage_opt_u64(s, "seed") : s->p.seed;
    const double B = s->budget_bytes;
    int rc;

    int M;
    if (es__storage_opt_given(s, "groups")) {
        M = es__storage_opt_int(s, "groups");
        if (M > D || D % M != 0)
            return es__err(err, ES_EINVAL, "%s: option groups=%d: must divide dim %d", name, M, D);
    } else {
        M = D % 4 == 0 ? D / 4 : D % 2 == 0 ? D / 2 : D;
    }
    const int d = D / M;
    const double cent_bytes = (double)S * (double)D * sizeof(float); /* codebook bytes per centroid index */
    int K;
    if (es__storage_opt_given(s, "centroids")) {
        K = es__storage_opt_int(s, "centroids");
    } else if (B > 0) {
        K = 2;
        while (K < 256 && (double)(2 * K) * cent_bytes <= B / 4) K *= 2;
    } else {
        K = 256;
    }
    const int cb = K <= 256 ? 1 : 2;
    int Ks = K;
    double head = 1;
    if (mgqe) {
        Ks = es__storage_opt_given(s, "small") ? es__storage_opt_int(s, "small") : ES_MAX(K / 4, 1);
        if (Ks > K) return es__err(err, ES_EINVAL, "%s: option small=%d: more than centroids=%d", name, Ks, K);
        head = es__storage_opt_f64(s, "head");
    }
    const double cbk = (double)K * cent_bytes, fixed = cbk + 16.0 * S, rowb = (double)M * cb;
    uint64_t N;
    if (es__storage_opt_given(s, "rows")) {
        N = es__storage_opt_u64(s, "rows");
        if (N < (uint64_t)S)
            return es__err(err, ES_EINVAL, "%s: option rows=%llu: fewer than one code row per field (%d)", name,
                           (unsigned long long)N, S);
    } else {
        if (!(B > 0))
            return es__err(err, ES_EINVAL,
                           "%s: needs a budget: bytes (> 1), or a fraction (0, 1] of the full table with a vocabulary",
                           name);
        double r = floor((B - fixed) / rowb);
        if (r < (double)S)
            return es__err(err, ES_EBUDGET,
                           "%s: a budget of %.0f bytes cannot hold %s codebooks of %d x %d floats (%.0f bytes) and one "
                           "code row of %.0f bytes per %s",
                           name, B, share ? "the" : "the per-field", K, D, cbk, rowb, share ? "table" : "field");
        if (r > (double)(UINT64_C(1) << 40))
            return es__err(err, ES_ERANGE, "%s: a budget of %.0f bytes is larger than this method allocates", name, B);
        N = (uint64_t)r;
    }
    size_t code_bytes;
    if (!es__mul_size((size_t)N, (size_t)M * (size_t)cb, &code_bytes) || N > (UINT64_C(1) << 40))
        return es__err(err, ES_ERANGE, "%s: %llu code rows is too large", name, (unsigned long long)N);
    const size_t n_cent = (size_t)S * (size_t)M * (size_t)K;
    if ((double)S * (double)M * (double)K > (double)UINT32_MAX)
        return es__err(err, ES_ERANGE, "%s: %d x %d x %d centroids is more than this method indexes (2^32 - 1)", name, S, M, K);

    dpq_impl *m = es__calloc(1, sizeof *m);
    if (!m) return es__err(err, ES_ENOMEM, "%s: out of memory", name);
    m->F = F;
    m->S = S;
    m->D = D;
    m->M = M;
    m->d = d;
    m->K = K;
    m->Ks = Ks;
    m->cb = cb;
    m->share = share;
    m->soft = soft;
    m->mgqe = mgqe;
    m->T = T;
    m->beta = beta;
    m->seed = seed;
    m->N = N;
    m->srows = es__malloc(2 * (size_t)S * sizeof *m->srows);
    m->codes = es__malloc(ES_MAX(code_bytes, (size_t)1));
    m->trained = es__calloc(1, 1);
    m->gc = es__calloc(n_cent * (size_t)d, sizeof *m->gc);
    m->gc_mark = es__calloc(n_cent, 1);
    m->gc_list = es__malloc(n_cent * sizeof *m->gc_list);
    m->p = es__malloc((size_t)K * sizeof *m->p);
    m->y = es__malloc((size_t)d * sizeof *m->y);
    int ok = m->srows && m->codes && m->trained && m->gc && m->gc_mark && m->gc_list && m->p && m->y;
    if (ok && mgqe) ok = (m->tier = es__malloc((size_t)N)) != NULL;
    es_rng rng;
    es__rng_seed(&rng, s->p.seed);
    if (ok) ok = es__rows_init(&m->c, n_cent, d, &s->p.opt, &rng, s->p.init_scale) == ES_OK;
    if (ok) ok = es__rows_init(&m->q, N, D, &s->p.opt, &rng, s->p.init_scale) == ES_OK;
    if (ok) ok = es__gradacc_init(&m->gq, ES_MIN((size_t)s->p.max_batch * (size_t)F, (size_t)N), D) == ES_OK;
    if (!ok) {
        dpq_free(m);
        return es__err(err, ES_ENOMEM, "%s: out of memory for %llu code rows and %zu centroids of %d floats", name,
                       (unsigned long long)N, n_cent, d);
    }
    m->sbase = m->srows + S;
    if (S == 1)
        m->srows[0] = N;
    else
        es__storage_split(N, F, vocab, 1, m->srows);
    set_bases(m);
    if (mgqe && set_tiers(m, vocab, head) != ES_OK) {
        dpq_free(m);
        return es__err(err, ES_ENOMEM, "%s: out of memory ranking %llu code rows", name, (unsigned long long)N);
    }
    assign_all(m);

    if ((rc = es__storage_opt_set_u64(s, "share", (uint64_t)share, err)) != 0 ||
        (rc = es__storage_opt_set_u64(s, "groups", (uint64_t)M, err)) != 0 ||
        (rc = es__storage_opt_set_u64(s, "centroids", (uint64_t)K, err)) != 0 ||
        (rc = es__storage_opt_set(s, "assign", err, "%s", soft ? "soft" : "ste")) != 0 ||
        (rc = es__storage_opt_set(s, "temperature", err, "%.9g", (double)T)) != 0 ||
        (rc = es__storage_opt_set(s, "beta", err, "%.9g", (double)beta)) != 0 ||
        (rc = es__storage_opt_set_u64(s, "rows", N, err)) != 0 || (rc = es__storage_opt_set_u64(s, "seed", seed, err)) != 0 ||
        (mgqe && ((rc = es__storage_opt_set_u64(s, "small", (uint64_t)Ks, err)) != 0 ||
                  (rc = es__storage_opt_set(s, "head", err, "%.9g", head)) != 0))) {
        dpq_free(m);
        return rc;
    }
    s->impl = m;
    s->param_bytes = es__rows_param_bytes(&m->c);
    s->aux_bytes = code_bytes + 16 * (size_t)S;
    s->state_bytes = es__rows_param_bytes(&m->q) + es__rows_state_bytes(&m->q) + es__rows_state_bytes(&m->c) +
                     (mgqe ? (size_t)N : 0) + 1;
    return ES_OK;
}

static int dpq_create(es_storage *s, const es_vocab *vocab, es_err *err) { return create_common(s, vocab, 0, err); }
static int mgqe_create(es_storage *s, const es_vocab *vocab, es_err *err) { return create_common(s, vocab, 1, err); }

/* ---- lookup --------------------------------------------------------------------------------- */

static void dpq_lookup(es_storage *st, const es_batch *b, int r0, int r1, float *out) {
    const dpq_impl *m = st->impl;
    const int F = m->F, D = m->D, d = m->d, soft = m->soft && !m->serving;
    for (int i = r0; i < r1; i++)
        for (int f = 0; f < F; f++) {
            float *o = out + ((size_t)(i - r0) * F + f) * (size_t)D;
            memset(o, 0, (size_t)D * sizeof *o);
            const size_t P = (size_t)i * F + (size_t)f;
            const int s = m->share ? 0 : f;
            const uint64_t salt = es__storage_salt(m->seed, f, 0);
            for (uint32_t j = b->off[P]; j < b->off[P + 1]; j++) {
                const uint64_t r = row_of(m, f, salt, b->val[j]);
                const float w = b->wt[j];
                for (int g = 0; g < m->M; g++) {
                    float *og = o + (size_t)g * d;
                    if (soft) {
                        soft_axpy(m, s, g, m->q.w + r * (uint64_t)D + (size_t)g * d, row_k(m, r), w, og);
                    } else {
                        const float *ck = cent(m, s, g, code_get(m, r, g));
                        for (int e = 0; e < d; e++) og[e] += w * ck[e];
                    }
                }
            }
        }
}

/* ---- backward ------------------------------------------------------------------------------- */

static inline float *cent_grad(dpq_impl *m, uint64_t cr) {
    if (!m->gc_mark[cr]) {
        m->gc_mark[cr] = 1;
        m->gc_list[m->gc_n++] = (uint32_t)cr;
    }
    return m->gc + cr * (uint64_t)m->d;
}

static int dpq_backward(es_storage *st, const es_batch *b, const float *dout) {
    dpq_impl *m = st->impl;
    const int F = m->F, D = m->D, d = m->d;
    const size_t PN = (size_t)b->n * (size_t)F;
    /* the forward this gradient belongs to is the soft one, or the hard one
     * at codes refreshed from the current query and codebook */
    m->serving = 0;
    m->trained[0] = 1;
    if (!m->soft)
        for (size_t P = 0; P < PN; P++) {
            const int f = (int)(P % (size_t)F), s = m->share ? 0 : f;
            const uint64_t salt = es__storage_salt(m->seed, f, 0);
            for (uint32_t j = b->off[P]; j < b->off[P + 1]; j++) assign_row(m, s, row_of(m, f, salt, b->val[j]));
        }
    es__gradacc_clear(&m->gq);
    const float two_t = 2.0f / m->T;
    for (size_t P = 0; P < PN; P++) {
        const int f = (int)(P % (size_t)F), s = m->share ? 0 : f;
        const uint64_t salt = es__storage_salt(m->seed, f, 0);
        const float *go = dout + P * (size_t)D;
        for (uint32_t j = b->off[P]; j < b->off[P + 1]; j++) {
            const uint64_t r = row_of(m, f, salt, b->val[j]);
            const float w = b->wt[j];
            float *gq = es__gradacc_row(&m->gq, r);
            if (!gq) {
                es__gradacc_clear(&m->gq);
                for (size_t i = 0; i < m->gc_n; i++) {
                    memset(m->gc + (size_t)m->gc_list[i] * d, 0, (size_t)d * sizeof *m->gc);
                    m->gc_mark[m->gc_list[i]] = 0;
                }
                m->gc_n = 0;
                return es__err(&st->err, ES_ENOMEM, "%s: out of memory growing the gradient scratch past %zu rows",
                               st->p.method, m->gq.cap);
            }
            const float *q = m->q.w + r * (uint64_t)D;
            for (int g = 0; g < m->M; g++) {
                const float *qg = q + (size_t)g * d, *gg = go + (size_t)g * d;
                float *gqg = gq + (size_t)g * d;
                if (!m->soft) {
                    const uint32_t k = code_get(m, r, g);
                    const float *ck = cent(m, s, g, k);
                    float *gc = cent_grad(m, cent_row(m, s, g, k));
                    for (int e = 0; e < d; e++) {
                        gc[e] += w * gg[e];
                        gqg[e] += w * gg[e] + m->beta * (qg[e] - ck[e]);
                    }
                    continue;
                }
                const int Kr = soft_weights(m, s, g, qg, row_k(m, r), m->p);
                float *y = m->y;
                memset(y, 0, (size_t)d * sizeof *y);
                for (int k = 0; k < Kr; k++) {
                    const float *ck = cent(m, s, g, (uint32_t)k);
                    for (int e = 0; e < d; e++) y[e] += m->p[k] * ck[e];
                }
                float gyy = 0;
                for (int e = 0; e < d; e++) gyy += w * gg[e] * y[e];
                for (int k = 0; k < Kr; k++) {
                    const float *ck = cent(m, s, g, (uint32_t)k);
                    const float pk = m->p[k];
                    float gyc = 0;
                    for (int e = 0; e < d; e++) gyc += w * gg[e] * ck[e];
                    const float a = pk * (gyc - gyy) * two_t;
                    float *gc = cent_grad(m, cent_row(m, s, g, (uint32_t)k));
                    for (int e = 0; e < d; e++) {
                        const float diff = qg[e] - ck[e];
                        gc[e] += pk * w * gg[e] + a * diff;
                        gqg[e] -= a * diff;
                    }
                }
            }
        }
    }
    /* one update per touched centroid (insertion order), then per query row */
    for (size_t i = 0; i < m->gc_n; i++) {
        const uint32_t cr = m->gc_list[i];
        float *g = m->gc + (size_t)cr * d;
        es__rows_update(&m->c, cr, g);
        memset(g, 0, (size_t)d * sizeof *g);
        m->gc_mark[cr] = 0;
    }
    m->gc_n = 0;
    /* one update per query row (es__gradacc_apply without its lazy-L2
     * step, which this method refuses); soft: refresh the serving codes of
     * the rows just trained */
    for (size_t i = 0; i < m->gq.n; i++) {
        const uint64_t r = m->gq.rows[i];
        es__rows_update(&m->q, r, m->gq.g + i * (size_t)D);
        if (m->soft) {
            int sp = 0;
            while (sp + 1 < m->S && r >= m->sbase[sp + 1]) sp++;
            assign_row(m, sp, r);
        }
    }
    es__gradacc_clear(&m->gq);
    return ES_OK;
}

/* ---- tensors / load ------------------------------------------------------------------------------ */

static int dpq_tensors(es_storage *st, es_tensor_ref *refs, int max) {
    dpq_impl *m = st->impl;
    const int n = 5 + (m->q.acc != NULL) + (m->c.acc != NULL) + m->mgqe;
    if (!refs) return n;
    if (max < n) return ES_ERANGE;
    /* a save of a soft-trained storage: every row's serving code from the
     * current query and codebook (soft lookups do not read codes) */
    if (m->soft && !m->serving) assign_all(m);
    int i = 0;
    es__tensor_ref_set(&refs[i++], "codebook", ES_DT_F32, m->c.w, 2, (uint64_t)m->c.n_rows, (uint64_t)m->d);
    es__tensor_ref_set(&refs[i++], "codes", ES_DT_U8, m->codes, 2, m->N, (uint64_t)m->M * (uint64_t)m->cb);
    es__tensor_ref_set(&refs[i++], "map.rows", ES_DT_U64, m->srows, 1, (uint64_t)m->S);
    es__tensor_ref_set(&refs[i++], "opt.query", ES_DT_F32, m->q.w, 2, m->N, (uint64_t)m->D);
    if (m->q.acc)
        es__tensor_ref_set(&refs[i++], "opt.query_acc", ES_DT_F32, m->q.acc, 1,
                           (uint64_t)(es__rows_state_bytes(&m->q) / sizeof(float)));
    if (m->c.acc)
        es__tensor_ref_set(&refs[i++], "opt.codebook_acc", ES_DT_F32, m->c.acc, 1,
                           (uint64_t)(es__rows_state_bytes(&m->c) / sizeof(float)));
    if (m->mgqe) es__tensor_ref_set(&refs[i++], "opt.tier", ES_DT_U8, m->tier, 1, m->N);
    es__tensor_ref_set(&refs[i++], "opt.trained", ES_DT_U8, m->trained, 1, (uint64_t)1);
    return i;
}

static int dpq_after_load(es_storage *st, es_err *err) {
    dpq_impl *m = st->impl;
    const char *name = st->p.method;
    uint64_t sum = 0;
    for (int s = 0; s < m->S; s++) {
        if (m->srows[s] == 0 || m->srows[s] > m->N)
            return es__err(err, ES_EFORMAT, "%s: space %d has %llu code rows (1..%llu expected)", name, s,
                           (unsigned long long)m->srows[s], (unsigned long long)m->N);
        sum += m->srows[s];
    }
    if (sum != m->N)
        return es__err(err, ES_EFORMAT, "%s: code rows per space sum to %llu, expected %llu", name, (unsigned long long)sum,
                       (unsigned long long)m->N);
    set_bases(m);
    if (m->trained[0] > 1) return es__err(err, ES_EFORMAT, "%s: opt.trained is %u, expected 0 or 1", name, m->trained[0]);
    for (uint64_t r = 0; r < m->N; r++) {
        if (m->mgqe && m->tier[r] > 1)
            return es__err(err, ES_EFORMAT, "%s: code row %llu has tier %u (0 or 1 expected)", name, (unsigned long long)r,
                           m->tier[r]);
        for (int g = 0; g < m->M; g++)
            if (code_get(m, r, g) >= (uint32_t)row_k(m, r))
                return es__err(err, ES_EFORMAT, "%s: code row %llu group %d has code %u, beyond its %d centroids", name,
                               (unsigned long long)r, g, code_get(m, r, g), row_k(m, r));
    }
    /* Without the training state (opt.trained was not read): serve from the
     * codes, and start any further training from the decoded vectors. */
    m->serving = m->trained[0] == 0;
    if (m->serving)
        for (int s = 0; s < m->S; s++)
            for (uint64_t r = m->sbase[s]; r < m->sbase[s] + m->srows[s]; r++)
                for (int g = 0; g < m->M; g++)
                    memcpy(m->q.w + r * (uint64_t)m->D + (size_t)g * m->d, cent(m, s, g, code_get(m, r, g)),
                           (size_t)m->d * sizeof(float));
    return ES_OK;
}

typedef struct {
    const dpq_impl *m;
    int f;
    uint64_t salt;
    uint8_t *seen;
    uint64_t used, values;
} stats_ctx;

static void count_rows(uint64_t key, uint64_t count, void *ctx) {
    stats_ctx *x = ctx;
    (void)count;
    const uint64_t r = row_of(x->m, x->f, x->salt, key) - x->m->sbase[x->m->share ? 0 : x->f];
    x->values++;
    if (!x->seen[r]) {
        x->seen[r] = 1;
        x->used++;
    }
}

static void dpq_field_stats(es_storage *st, const es_vocab *vocab, int field, es_field_stats *out) {
    dpq_impl *m = st->impl;
    memset(out, 0, sizeof *out);
    if (field < 0 || field >= m->F) return;
    const int s = m->share ? 0 : field;
    out->rows = m->srows[s];
    out->rows_used = out->collisions = ES_STATS_UNKNOWN;
    if (!vocab || field >= es_vocab_n_fields(vocab)) return;
    out->distinct = es_vocab_distinct(vocab, field);
    uint8_t *seen = es__calloc((size_t)m->srows[s], 1);
    if (!seen) return;
    stats_ctx x = {m, field, es__storage_salt(m->seed, field, 0), seen, 0, 0};
    es__vocab_each(vocab, field, count_rows, &x);
    out->rows_used = x.used;
    out->collisions = x.values - x.used; /* values beyond the first of each row */
    es__free(seen);
}

const es_storage_ops es__storage_dpq = {
    .name = "dpq",
    .summary = "differentiable product quantization: hashed code rows of M one-byte codes into learned per-group codebooks",
    .create = dpq_create,
    .lookup = dpq_lookup,
    .backward = dpq_backward,
    .tensors = dpq_tensors,
    .after_load = dpq_after_load,
    .field_stats = dpq_field_stats,
    .destroy = dpq_destroy,
    ES_STORAGE_OPTS(dpq_opts),
    .default_budget = ES_DEFAULT_BUDGET,
};

const es_storage_ops es__storage_mgqe = {
    .name = "mgqe",
    .summary = "multi-granular quantized embeddings: dpq where rare values' rows use only a prefix of each codebook",
    .create = mgqe_create,
    .lookup = dpq_lookup,
    .backward = dpq_backward,
    .tensors = dpq_tensors,
    .after_load = dpq_after_load,
    .field_stats = dpq_field_stats,
    .destroy = dpq_destroy,
    .needs_vocab = 1,
    ES_STORAGE_OPTS(mgqe_opts),
    .default_budget = ES_DEFAULT_BUDGET,
};
