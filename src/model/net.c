/*
 * net.c — the five CTR models (LR, FM, FFM, DLRM, DCN-v2) on top of layers.c:
 * parameter layout, deterministic initialisation, forward, backward,
 * named tensors.  The optimizer is optim/'s es__dense_opt.
 *
 * Memory: parameters are one aligned block, their gradients a second block
 * with the same layout, optimizer state a third (owned by the
 * es__dense_opt, which also counts Adam's steps), activations and backward
 * scratch a fourth sized for max_batch.  Every weight and bias is a
 * "segment" of the parameter block: a name, a shape and an offset.  The
 * segment list fixes, in one place, the layout, the order in which the
 * initialiser draws from the rng, the tensors that es__net_tensors lists and
 * which arrays get weight decay (the optimizer gets the same segments, with
 * their weight-decay flags).  docs/models.md documents all of it for
 * the PyTorch reference.
 */
#include "model/net.h"

#include "model/layers.h"

#include <math.h>
#include <stdarg.h>
#include <strings.h>

/* One named parameter array inside the parameter block. */
#define ES__NET_SEG_NAME 48
typedef struct es__net_seg {
    char name[ES__NET_SEG_NAME];  /* tensor name, e.g. "net.top.0.w" */
    int ndim;
    uint64_t shape[2];
    size_t off, count;            /* in floats, within params / grads / each state array */
    int is_weight;                /* weight decay applies (weights, not biases) */
    float init_a;                 /* > 0: U(-a, a) at init; 0: zeros */
    float **p, **g;               /* where the pointers into params / grads go */
} es__net_seg;

_Static_assert(ES__MLP_MAX >= ES_NET_MAX_LAYERS + 1, "an MLP holds up to ES_NET_MAX_LAYERS hidden layers + the output");

/* LR/FM: 3 segments; DLRM: 2 * (8 bottom + 9 top) = 34; DCN: 2 * (8 cross
 * + 9 deep) = 34. */
#define ES__NET_MAX_SEGS (2 * (2 * ES_NET_MAX_LAYERS + 1) + 4)

struct es_net {
    es_net_params p;
    int E;                 /* embedding width per field */
    int inter_w;           /* DLRM: interaction output width (top MLP input) */
    int d0;                /* DCN: D + F*k */

    es__net_seg segs[ES__NET_MAX_SEGS];
    int n_segs;
    size_t n_params;
    float *params, *grads; /* [n_params] each, same layout */

    /* the optimizer: one segment per entry of segs, one step count
     * ("opt.net.step") */
    es__dense_opt opt;
    /* dropout: es__net_step calls so far (the masks' counter; saved as
     * "opt.net.dropout_step" when dropout > 0) */
    int64_t drop_step;

    /* LR / FM */
    float *lin_w, *lin_b, *fm_V;
    float *dlin_w, *dlin_b, *dfm_V;
    /* DLRM bottom and top; DCN deep stack in `top` */
    es__mlp bottom, top;
    /* DCN cross layers */
    float *cW[ES_NET_MAX_LAYERS], *cb[ES_NET_MAX_LAYERS];
    float *cWT[ES_NET_MAX_LAYERS];
    float *dcW[ES_NET_MAX_LAYERS], *dcb[ES_NET_MAX_LAYERS];

    /* Linear weights transposed for the forward kernel (es__linear_pack),
     * at the same offsets as params; other segments are unused.  Packed at
     * every forward unless wt_frozen, which es__net_freeze sets and any
     * call that may change the weights clears. */
    float *wt;
    int wt_frozen;

    /* activations and backward scratch: one block sized for max_batch */
    float *acts;
    float *fm_sum, *fm_pair;                      /* FM: [B, k], [B] */
    float *row_r, *g_lin;                         /* FM/FFM norm_rows: [B] 1/|row|^2, [B] scratch */
    float *bot_acts[ES__MLP_MAX], *top_acts[ES__MLP_MAX];
    float *inter;                                 /* DLRM: [B, inter_w] */
    float *x[ES_NET_MAX_LAYERS + 1], *u[ES_NET_MAX_LAYERS]; /* DCN: x[0] = x0 */
    float *buf0, *buf1, *g_out;
    float *d_inter, *dz0;                         /* DLRM */
    float *dx, *dx0, *h;                          /* DCN: [B, d0] each */
};

/* ---- params --------------------------------------------------------------------- */

es_net_params es__net_params_default(es_net_kind kind, int n_dense, int n_fields, int dim) {
    es_net_params p;
    memset(&p, 0, sizeof p);
    p.kind = kind;
    p.n_dense = n_dense;
    p.n_fields = n_fields;
    p.dim = dim;
    p.bottom[0] = 64;
    p.bottom[1] = dim;
    p.n_bottom = 2;
    p.top[0] = 64;
    p.top[1] = 32;
    p.n_top = 2;
    p.n_cross = 2;
    p.max_batch = 256;
    p.opt.kind = ES_OPT_ADAM;
    p.opt.lr = 1e-3f;
    p.opt.eps = 1e-8f;
    p.opt.beta1 = 0.9f;
    p.opt.beta2 = 0.999f;
    p.opt.init_acc = 0.0f;
    p.weight_decay = 0.0f;
    p.seed = 1;
    return p;
}

const char *es__net_kind_name(es_net_kind k) {
    switch (k) {
    case ES_NET_LR: return "lr";
    case ES_NET_FM: return "fm";
    case ES_NET_DLRM: return "dlrm";
    case ES_NET_DCN: return "dcn";
    case ES_NET_FFM: return "ffm";
    }
    return "unknown";
}

int es__net_kind_parse(const char *s, es_net_kind *out) {
    static const struct {
        const char *name;
        es_net_kind kind;
    } names[] = {{"lr", ES_NET_LR},     {"fm", ES_NET_FM},       {"dlrm", ES_NET_DLRM},
                 {"dcn", ES_NET_DCN},   {"dcnv2", ES_NET_DCN},   {"dcn-v2", ES_NET_DCN},
                 {"ffm", ES_NET_FFM}};
    if (!s || !out) return ES_EINVAL;
    for (size_t i = 0; i < ES_ARRAY_LEN(names); i++)
        if (strcasecmp(s, names[i].name) == 0) {
            *out = names[i].kind;
            return ES_OK;
        }
    return ES_EINVAL;
}

int es__net_emb_dim(es_net_kind kind, int n_fields, int dim) {
    switch (kind) {
    case ES_NET_LR: return 1;
    case ES_NET_FM: return 1 + dim;
    case ES_NET_FFM: { /* saturates instead of overflowing; validate() rejects it */
        long long e = 1 + (long long)n_fields * dim;
        return e > INT32_MAX ? INT32_MAX : (int)e;
    }
    case ES_NET_DLRM:
    case ES_NET_DCN: return dim;
    }
    return dim;
}

/* ---- validation ------------------------------------------------------------------- */

/* Generous sanity bounds: they keep every product of two sizes far from
 * overflowing an int (BLAS dimensions) and reject typos early. */
#define ES__NET_MAX_WIDTH (1 << 16)
#define ES__NET_MAX_BATCH (1 << 20)

static int check_widths(const int *w, int n, int max_n, const char *what, es_err *err) {
    if (n < 0 || n > max_n) return es__err(err, ES_EINVAL, "net: %s has %d layers (allowed 0..%d)", what, n, max_n);
    for (int i = 0; i < n; i++)
        if (w[i] < 1 || w[i] > ES__NET_MAX_WIDTH)
            return es__err(err, ES_EINVAL, "net: %s layer %d has width %d (allowed 1..%d)", what, i, w[i],
                           ES__NET_MAX_WIDTH);
    return ES_OK;
}

static int validate(const es_net_params *p, es_err *err) {
    if (p->kind < ES_NET_LR || p->kind > ES_NET_FFM) return es__err(err, ES_EINVAL, "net: unknown model kind %d", (int)p->kind);
    const char *kn = es__net_kind_name(p->kind);
    if (p->n_fields < 1 || p->n_fields > ES__NET_MAX_WIDTH)
        return es__err(err, ES_EINVAL, "net %s: n_fields = %d (need 1..%d)", kn, p->n_fields, ES__NET_MAX_WIDTH);
    if (p->n_dense < 0 || p->n_dense > ES__NET_MAX_WIDTH)
        return es__err(err, ES_EINVAL, "net %s: n_dense = %d (need 0..%d)", kn, p->n_dense, ES__NET_MAX_WIDTH);
    if (p->kind != ES_NET_LR && (p->dim < 1 || p->dim > 4096))
        return es__err(err, ES_EINVAL, "net %s: dim = %d (need 1..4096)", kn, p->dim);
    if (p->max_batch < 1 || p->max_batch > ES__NET_MAX_BATCH)
        return es__err(err, ES_EINVAL, "net %s: max_batch = %d (need 1..%d)", kn, p->max_batch, ES__NET_MAX_BATCH);
    int rc;
    if (p->kind == ES_NET_DLRM) {
        if (p->n_dense > 0) {
            if ((rc = check_widths(p->bottom, p->n_bottom, ES_NET_MAX_LAYERS, "bottom MLP", err))) return rc;
            if (p->n_bottom < 1 || p->bottom[p->n_bottom - 1] != p->dim)
                return es__err(err, ES_EINVAL, "net dlrm: the bottom MLP must end in dim = %d (it ends in %d)", p->dim,
                               p->n_bottom ? p->bottom[p->n_bottom - 1] : p->n_dense);
        } else if (p->n_fields < 2) {
            return es__err(err, ES_EINVAL, "net dlrm: no numeric features and one field leave no interaction");
        }
        if ((rc = check_widths(p->top, p->n_top, ES_NET_MAX_LAYERS, "top MLP", err))) return rc;
        long long T = (long long)p->n_fields + (p->n_dense > 0), w = T * (T - 1) / 2 + p->dim;
        if (w > ES__NET_MAX_WIDTH * 16LL)
            return es__err(err, ES_EINVAL, "net dlrm: %d fields give an interaction %lld wide (at most %d)",
                           p->n_fields, w, ES__NET_MAX_WIDTH * 16);
    }
    if (p->kind == ES_NET_DCN) {
        if ((rc = check_widths(p->top, p->n_top, ES_NET_MAX_LAYERS, "deep MLP", err))) return rc;
        if (p->n_cross < 0 || p->n_cross > ES_NET_MAX_LAYERS)
            return es__err(err, ES_EINVAL, "net dcn: n_cross = %d (allowed 0..%d)", p->n_cross, ES_NET_MAX_LAYERS);
        long long d0 = (long long)p->n_dense + (long long)p->n_fields * p->dim;
        if (d0 > ES__NET_MAX_WIDTH)
            return es__err(err, ES_EINVAL, "net dcn: input width %lld exceeds %d", d0, ES__NET_MAX_WIDTH);
    }
    if (p->norm_rows != 0 && p->norm_rows != 1)
        return es__err(err, ES_EINVAL, "net %s: norm_rows = %d (need 0 or 1)", kn, p->norm_rows);
    if (p->norm_rows && p->kind != ES_NET_FM && p->kind != ES_NET_FFM)
        return es__err(err, ES_EINVAL, "net %s: row normalization is for fm and ffm only", kn);
    if (p->pairs_only != 0 && p->pairs_only != 1)
        return es__err(err, ES_EINVAL, "net %s: pairs_only = %d (need 0 or 1)", kn, p->pairs_only);
    if (p->pairs_only && p->kind != ES_NET_FM && p->kind != ES_NET_FFM)
        return es__err(err, ES_EINVAL, "net %s: pairs_only is for fm and ffm only", kn);
    if (p->kind == ES_NET_FFM && (long long)p->n_fields * p->dim + 1 > ES__NET_MAX_WIDTH)
        return es__err(err, ES_EINVAL, "net ffm: %d fields x dim %d give %lld floats per field value (at most %d)",
                       p->n_fields, p->dim, (long long)p->n_fields * p->dim + 1, ES__NET_MAX_WIDTH);
    const es_optim_params *o = &p->opt;
    if (o->kind != ES_OPT_SGD && o->kind != ES_OPT_ADAGRAD && o->kind != ES_OPT_ADAM)
        return es__err(err, ES_EINVAL, "net %s: dense optimizer must be sgd, adagrad or adam (got %d)", kn, (int)o->kind);
    if (!(o->lr >= 0.0f) || !isfinite(o->lr)) return es__err(err, ES_EINVAL, "net %s: learning rate %g", kn, (double)o->lr);
    if (!(o->eps >= 0.0f) || !isfinite(o->eps)) return es__err(err, ES_EINVAL, "net %s: eps %g", kn, (double)o->eps);
    if (o->kind == ES_OPT_ADAM && !(o->beta1 >= 0.0f && o->beta1 < 1.0f && o->beta2 >= 0.0f && o->beta2 < 1.0f))
        return es__err(err, ES_EINVAL, "net %s: adam betas %g, %g (need [0, 1))", kn, (double)o->beta1, (double)o->beta2);
    if (o->kind == ES_OPT_ADAGRAD && (!(o->init_acc >= 0.0f) || !isfinite(o->init_acc)))
        return es__err(err, ES_EINVAL, "net %s: adagrad init_acc %g", kn, (double)o->init_acc);
    if (!(p->weight_decay >= 0.0f) || !isfinite(p->weight_decay))
        return es__err(err, ES_EINVAL, "net %s: weight_decay %g", kn, (double)p->weight_decay);
    if (!(p->dropout >= 0.0f && p->dropout < 1.0f))
        return es__err(err, ES_EINVAL, "net %s: dropout %g (need [0, 1))", kn, (double)p->dropout);
    if (p->n_prefix < 0 || p->n_prefix > ES_NET_MAX_PREFIX)
        return es__err(err, ES_EINVAL, "net %s: %d matryoshka prefixes (at most %d)", kn, p->n_prefix, ES_NET_MAX_PREFIX);
    if (p->n_prefix > 0) {
        if (p->kind == ES_NET_LR)
            return es__err(err, ES_EINVAL, "net lr: matryoshka prefixes need an embedding dimension; lr has one weight per value (dim 1)");
        double wsum = 0;
        for (int i = 0; i < p->n_prefix; i++) {
            if (p->prefix[i] < 1 || p->prefix[i] > p->dim || (i > 0 && p->prefix[i] <= p->prefix[i - 1]))
                return es__err(err, ES_EINVAL, "net %s: matryoshka prefixes must increase strictly within 1..dim = %d (prefix %d is %d)",
                               kn, p->dim, i, p->prefix[i]);
            if (!(p->prefix_w[i] >= 0.0f) || !isfinite(p->prefix_w[i]))
                return es__err(err, ES_EINVAL, "net %s: matryoshka weight %d is %g (need finite, >= 0)", kn, i, (double)p->prefix_w[i]);
            wsum += p->prefix_w[i];
        }
        if (p->prefix[p->n_prefix - 1] != p->dim)
            return es__err(err, ES_EINVAL, "net %s: the last matryoshka prefix must be dim = %d (it is %d)", kn, p->dim,
                           p->prefix[p->n_prefix - 1]);
        if (!(wsum > 0)) return es__err(err, ES_EINVAL, "net %s: the matryoshka weights are all 0", kn);
    }
    if (p->dropout > 0.0f && p->kind != ES_NET_DLRM && p->kind != ES_NET_DCN)
        return es__err(err, ES_EINVAL, "net %s: dropout is for dlrm and dcn only (their MLPs)", kn);
    return ES_OK;
}

/* ---- layout ------------------------------------------------------------------------ */

/* Append a segment of rows x cols floats (1-D when rows == 0).  init_a > 0:
 * U(-init_a, init_a); 0: zeros.  p/g receive the pointers into the
 * parameter and gradient blocks once they exist. */
static void add_seg(es_net *net, float **p, float **g, int is_weight, float init_a, size_t rows, size_t cols,
                    const char *fmt, ...) ES_PRINTF(8, 9);
static void add_seg(es_net *net, float **p, float **g, int is_weight, float init_a, size_t rows, size_t cols,
                    const char *fmt, ...) {
    ES_ASSERT(net->n_segs < ES__NET_MAX_SEGS);
    es__net_seg *s = &net->segs[net->n_segs++];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->name, sizeof s->name, fmt, ap);
    va_end(ap);
    s->ndim = rows ? 2 : 1;
    s->shape[0] = rows ? rows : cols;
    s->shape[1] = rows ? cols : 0;
    s->count = (rows ? rows : 1) * cols;
    s->off = net->n_params;
    s->is_weight = is_weight;
    s->init_a = init_a;
    s->p = p;
    s->g = g;
    net->n_params += s->count;
}

/* Linear layer I -> O of an MLP: W[O, I] then b[O], both U(+-1/sqrt(I)). */
static void add_linear(es_net *net, es__mlp *m, int l, const char *stack) {
    int I = m->dims[l], O = m->dims[l + 1];
    float a = 1.0f / sqrtf((float)I);
    add_seg(net, &m->W[l], &m->dW[l], 1, a, (size_t)O, (size_t)I, "net.%s.%d.w", stack, l);
    add_seg(net, &m->b[l], &m->db[l], 0, a, 0, (size_t)O, "net.%s.%d.b", stack, l);
}

/* An MLP in -> widths[0..n) -> (1 when final) with ReLU after every hidden
 * layer; relu_all also puts ReLU after the last layer (DLRM bottom). */
static void layout_mlp(es_net *net, es__mlp *m, int in, const int *widths, int n, int final_one, int relu_all,
                       const char *stack) {
    m->n_layers = n + (final_one ? 1 : 0);
    m->dims[0] = in;
    for (int l = 0; l < n; l++) m->dims[l + 1] = widths[l];
    if (final_one) m->dims[n + 1] = 1;
    for (int l = 0; l < m->n_layers; l++) m->relu[l] = relu_all || l < m->n_layers - 1;
    /* dropout goes after the hidden layers only: not after the stack's
     * output (the logit, or the DLRM bottom's z0, which meets the
     * embeddings in the interaction as one of them) */
    for (int l = 0; l < m->n_layers; l++) m->drop[l] = l < m->n_layers - 1;
    for (int l = 0; l < m->n_layers; l++) add_linear(net, m, l, stack);
}

static void layout(es_net *net) {
    const es_net_params *p = &net->p;
    int D = p->n_dense, F = p->n_fields, k = p->dim;
    switch (p->kind) {
    case ES_NET_LR:
    case ES_NET_FM:
    case ES_NET_FFM:
        if (D > 0) add_seg(net, &net->lin_w, &net->dlin_w, 1, 0.0f, 1, (size_t)D, "net.linear.w");
        add_seg(net, &net->lin_b, &net->dlin_b, 0, 0.0f, 0, 1, "net.linear.b");
        if (p->kind == ES_NET_FM && D > 0)
            add_seg(net, &net->fm_V, &net->dfm_V, 1, 0.05f, (size_t)D, (size_t)k, "net.fm.v");
        break;
    case ES_NET_DLRM:
        if (D > 0) layout_mlp(net, &net->bottom, D, p->bottom, p->n_bottom, 0, 1, "bottom");
        net->inter_w = es__interact_width(D > 0, F, k);
        layout_mlp(net, &net->top, net->inter_w, p->top, p->n_top, 1, 0, "top");
        break;
    case ES_NET_DCN: {
        net->d0 = D + F * k;
        float a = 1.0f / sqrtf((float)net->d0);
        for (int l = 0; l < p->n_cross; l++) {
            add_seg(net, &net->cW[l], &net->dcW[l], 1, a, (size_t)net->d0, (size_t)net->d0, "net.cross.%d.w", l);
            add_seg(net, &net->cb[l], &net->dcb[l], 0, a, 0, (size_t)net->d0, "net.cross.%d.b", l);
        }
        layout_mlp(net, &net->top, net->d0, p->top, p->n_top, 1, 0, "deep");
        break;
    }
    }
}

/* Activation and scratch buffers, each rounded to 16 floats (64 bytes). */
typedef struct {
    float *base;
    size_t used;
} carver;

static size_t round16(size_t x) { return (x + 15) & ~(size_t)15; }

static float *carve(carver *c, size_t count) {
    float *p = c->base ? c->base + c->used : NULL;
    c->used += round16(count);
    return p;
}

/* Called twice: once with c->base == NULL to size the block, once to carve
 * it.  Keeping one function makes the two passes agree by construction. */
static void carve_acts(es_net *net, carver *c) {
    const es_net_params *p = &net->p;
    size_t B = (size_t)p->max_batch;
    int k = p->dim;
    switch (p->kind) {
    case ES_NET_LR: break;
    case ES_NET_FFM:
        net->fm_pair = carve(c, B);
        net->row_r = carve(c, B);
        net->g_out = carve(c, B);
        net->g_lin = carve(c, B);
        break;
    case ES_NET_FM:
        net->fm_sum = carve(c, B * k);
        net->fm_pair = carve(c, B);
        net->row_r = carve(c, B);
        net->g_out = carve(c, B);
        net->g_lin = carve(c, B);
        break;
    case ES_NET_DLRM: {
        for (int l = 0; l < net->bottom.n_layers; l++) net->bot_acts[l] = carve(c, B * net->bottom.dims[l + 1]);
        net->inter = carve(c, B * net->inter_w);
        for (int l = 0; l < net->top.n_layers; l++) net->top_acts[l] = carve(c, B * net->top.dims[l + 1]);
        int w = ES_MAX(es__mlp_max_width(&net->top), net->bottom.n_layers ? es__mlp_max_width(&net->bottom) : 0);
        net->buf0 = carve(c, B * w);
        net->buf1 = carve(c, B * w);
        net->g_out = carve(c, B);
        net->d_inter = carve(c, B * net->inter_w);
        if (net->bottom.n_layers) net->dz0 = carve(c, B * k);
        break;
    }
    case ES_NET_DCN: {
        size_t d0 = (size_t)net->d0;
        for (int l = 0; l <= p->n_cross; l++) net->x[l] = carve(c, B * d0);
        for (int l = 0; l < p->n_cross; l++) net->u[l] = carve(c, B * d0);
        for (int l = 0; l < net->top.n_layers; l++) net->top_acts[l] = carve(c, B * net->top.dims[l + 1]);
        int w = es__mlp_max_width(&net->top);
        net->buf0 = carve(c, B * w);
        net->buf1 = carve(c, B * w);
        net->g_out = carve(c, B);
        net->dx = carve(c, B * d0);
        net->dx0 = carve(c, B * d0);
        net->h = carve(c, B * d0);
        break;
    }
    }
}

static void init_params(es_net *net) {
    es_rng rng;
    es__rng_seed(&rng, net->p.seed);
    for (int i = 0; i < net->n_segs; i++) {
        const es__net_seg *s = &net->segs[i];
        float *w = net->params + s->off;
        if (s->init_a > 0.0f)
            es__rng_fill_uniform(&rng, w, s->count, s->init_a);
        else
            memset(w, 0, s->count * sizeof(float));
    }
}

/* ---- optimizer state ------------------------------------------------------------------ */

/* The optimizer sees the segments in their order, weights with weight decay. */
static int optim_init(es_net *net, es_err *err) {
    int rc = es__dense_opt_init(&net->opt, &net->p.opt, net->p.weight_decay, net->params, net->grads, net->n_params,
                                net->n_segs, 1);
    if (rc == ES_ENOMEM)
        return es__err(err, rc, "net: cannot allocate %zu bytes of optimizer state",
                       es__dense_opt_alloc_bytes(net->p.opt.kind, net->n_params, net->n_segs, 1));
    if (rc) return es__err(err, rc, "net: optimizer state size overflows");
    for (int i = 0; i < net->n_segs; i++)
        es__dense_opt_add_seg(&net->opt, net->segs[i].off, net->segs[i].count, net->segs[i].is_weight, 0);
    return ES_OK;
}

/* ---- lifecycle --------------------------------------------------------------------------- */

/* What layout() and carve_acts() need to index their arrays safely; the
 * width caps of validate() are left out so that an oversized net can still
 * be sized (and refused for its size). */
static int sizable(const es_net_params *p) {
    if (p->kind < ES_NET_LR || p->kind > ES_NET_FFM) return 0;
    if (p->n_fields < 1 || p->n_fields > ES__NET_MAX_WIDTH || p->n_dense < 0 || p->n_dense > ES__NET_MAX_WIDTH) return 0;
    if (p->dim < 1 || p->dim > 4096 || p->max_batch < 1 || p->max_batch > ES__NET_MAX_BATCH) return 0;
    if (p->n_bottom < 0 || p->n_bottom > ES_NET_MAX_LAYERS || p->n_top < 0 || p->n_top > ES_NET_MAX_LAYERS) return 0;
    if (p->n_cross < 0 || p->n_cross > ES_NET_MAX_LAYERS) return 0;
    for (int i = 0; i < p->n_bottom; i++)
        if (p->bottom[i] < 1) return 0;
    for (int i = 0; i < p->n_top; i++)
        if (p->top[i] < 1) return 0;
    long long T = (long long)p->n_fields + 1; /* the interaction width must fit an int */
    return T * (T - 1) / 2 + p->dim <= INT32_MAX;
}

int es__net_footprint(const es_net_params *p, size_t *bytes) {
    if (!sizable(p)) return ES_EINVAL;
    es_net *net = es__calloc(1, sizeof *net);
    if (!net) return ES_ENOMEM;
    net->p = *p;
    net->E = es__net_emb_dim(p->kind, p->n_fields, p->dim);
    layout(net);
    carver c = {NULL, 0};
    carve_acts(net, &c);
    size_t floats, total;
    /* params, grads and the packed copy; activations; the optimizer's block */
    const size_t state = es__dense_opt_alloc_bytes(p->opt.kind, net->n_params, net->n_segs, 1);
    int ok = es__mul_size(net->n_params, 3, &floats) && es__add_size(floats, c.used, &floats) &&
             es__mul_size(floats, sizeof(float), &total) && state != SIZE_MAX && es__add_size(total, state, &total);
    es__free(net);
    *bytes = ok ? total : SIZE_MAX;
    return ES_OK;
}

int es__net_create(es_net **out, const es_net_params *p, es_err *err) {
    if (!out || !p) return es__err(err, ES_EINVAL, "net: NULL argument");
    *out = NULL;
    int rc = validate(p, err);
    if (rc) return rc;
    es_net *net = es__calloc(1, sizeof *net);
    if (!net) return es__err(err, ES_ENOMEM, "net: out of memory");
    net->p = *p;
    net->E = es__net_emb_dim(p->kind, p->n_fields, p->dim);
    layout(net);

    size_t pbytes, abytes;
    carver c = {NULL, 0};
    carve_acts(net, &c);
    if (!es__mul_size(net->n_params, sizeof(float), &pbytes) || !es__mul_size(c.used, sizeof(float), &abytes)) {
        es__net_free(net);
        return es__err(err, ES_EINVAL, "net: sizes overflow");
    }
    net->params = es__alloc_aligned(pbytes);
    net->grads = es__alloc_aligned(pbytes);
    net->wt = es__alloc_aligned(pbytes);
    net->acts = c.used ? es__alloc_aligned(abytes) : NULL;
    if (!net->params || !net->grads || !net->wt || (c.used && !net->acts)) {
        es__net_free(net);
        return es__err(err, ES_ENOMEM, "net: cannot allocate %zu parameter bytes and %zu activation bytes", pbytes,
                       abytes);
    }
    for (int i = 0; i < net->n_segs; i++) {
        *net->segs[i].p = net->params + net->segs[i].off;
        *net->segs[i].g = net->grads + net->segs[i].off;
    }
    c.base = net->acts;
    c.used = 0;
    carve_acts(net, &c);
    for (int l = 0; l < net->bottom.n_layers; l++) net->bottom.WT[l] = net->wt + (net->bottom.W[l] - net->params);
    for (int l = 0; l < net->top.n_layers; l++) net->top.WT[l] = net->wt + (net->top.W[l] - net->params);
    for (int l = 0; l < p->n_cross && p->kind == ES_NET_DCN; l++) net->cWT[l] = net->wt + (net->cW[l] - net->params);
    init_params(net);
    if ((rc = optim_init(net, err))) {
        es__net_free(net);
        return rc;
    }
    *out = net;
    return ES_OK;
}

void es__net_free(es_net *net) {
    if (!net) return;
    es__free_aligned(net->params);
    es__free_aligned(net->grads);
    es__free_aligned(net->wt);
    es__free_aligned(net->acts);
    es__dense_opt_free(&net->opt);
    es__free(net);
}

const es_net_params *es__net_get_params(const es_net *net) { return &net->p; }

/* ---- forward / backward -------------------------------------------------------------------- */

/* logit[r] += sum_f emb[r, f, 0]: the first-order terms of LR and FM. */
static void add_first_order(float *logit, const float *emb, int n, int F, int E) {
    for (int r = 0; r < n; r++) {
        const float *e = emb + (size_t)r * F * E;
        float s = 0.0f;
        for (int f = 0; f < F; f++) s += e[(size_t)f * E];
        logit[r] += s;
    }
}

static void pack_mlp(es__mlp *m) {
    for (int l = 0; l < m->n_layers; l++) es__linear_pack(m->WT[l], m->W[l], m->dims[l], m->dims[l + 1]);
}

/* Transpose every linear weight into net->wt (a copy: the bits of the
 * forward do not depend on whether it is fresh, only the speed). */
static void pack_weights(es_net *net) {
    pack_mlp(&net->bottom);
    pack_mlp(&net->top);
    if (net->p.kind == ES_NET_DCN)
        for (int l = 0; l < net->p.n_cross; l++) es__linear_pack(net->cWT[l], net->cW[l], net->d0, net->d0);
}

void es__net_freeze(es_net *net) {
    if (net->wt_frozen) return;
    pack_weights(net);
    net->wt_frozen = 1;
}

/* norm_rows: r = 1 / (F + |dense|^2) per row, the sum in double (libffm's
 * R = 1 / sum of value^2, with each field's value a one-hot 1). */
static void row_scales(float *r_out, const float *dense, int n, int D, int F) {
    for (int r = 0; r < n; r++) {
        double s = F;
        for (int d = 0; d < D; d++) {
            double x = dense[(size_t)r * D + d];
            s += x * x;
        }
        r_out[r] = (float)(1.0 / s);
    }
}

/* Set (train with dropout > 0) or clear the MLPs' dropout for the forward
 * about to run and the backward after it.  Each stack draws from its own
 * key: the step's key mixed with the stack's number. */
static void set_dropout(es_net *net, int train) {
    float p = train ? net->p.dropout : 0.0f;
    uint64_t key = es__mix64(es__mix64(net->p.seed ^ UINT64_C(0x64726f706f7574)) + (uint64_t)net->drop_step);
    net->bottom.drop_p = net->top.drop_p = p;
    net->bottom.drop_key = es__mix64(key ^ 1);
    net->top.drop_key = es__mix64(key ^ 2);
}

/* ---- LR, FM and FFM by rows ------------------------------------------------------------
 * Their forward and backward are a part over the batch (the dense linear
 * term through the linear layer, the row scales; the batch's sums of the
 * dense gradients) and a part per row that reads and writes only that
 * row's places, so rows may run on different threads in any split
 * (es__net_rows: the trainer's fused step).  es__net_forward and
 * es__net_backward are the two parts over all rows: the same operations
 * either way, so the same bits. */

int es__net_rows(const es_net *net) {
    const es_net_kind k = net->p.kind;
    return k == ES_NET_LR || k == ES_NET_FM || k == ES_NET_FFM;
}

void es__net_rows_begin(es_net *net, int n, const float *dense, float *logit) {
    ES_ASSERT(es__net_rows(net) && n >= 0 && n <= net->p.max_batch);
    if (n == 0) return;
    if (!net->wt_frozen) pack_weights(net);
    const es_net_params *p = &net->p;
    /* logit = dense w^T + b (then + first-order terms, then + FM / FFM pairs,
     * by rows); W[1, D] transposed is the same D floats; with norm_rows the
     * bias is added last, unscaled */
    es__linear_forward(logit, dense, net->lin_w, net->lin_w, p->norm_rows ? NULL : net->lin_b, n, p->n_dense, 1, 0);
    if (p->norm_rows) row_scales(net->row_r, dense, n, p->n_dense, p->n_fields);
}

void es__net_forward_rows(es_net *net, int r0, int r1, const float *emb, const float *dense, float *logit) {
    const es_net_params *p = &net->p;
    const int D = p->n_dense, F = p->n_fields, k = p->dim, E = net->E, n = r1 - r0;
    if (n <= 0) return;
    const size_t rf = (size_t)F * (size_t)E;
    add_first_order(logit + r0, emb + (size_t)r0 * rf, n, F, E);
    if (p->kind == ES_NET_FM)
        es__fm_forward(net->fm_pair + r0, net->fm_sum + (size_t)r0 * k, emb + (size_t)r0 * rf, F, E, 1,
                       D ? dense + (size_t)r0 * D : NULL, net->fm_V, D, k, n);
    else if (p->kind == ES_NET_FFM)
        es__ffm_forward(net->fm_pair + r0, emb + (size_t)r0 * rf, F, E, k, n);
    if (p->pairs_only) {
        for (int r = r0; r < r1; r++) logit[r] = p->norm_rows ? net->row_r[r] * net->fm_pair[r] : net->fm_pair[r];
    } else if (p->norm_rows) { /* the row x / |x|: linear terms times sqrt(r), pairs times r */
        for (int r = r0; r < r1; r++)
            logit[r] = net->lin_b[0] + sqrtf(net->row_r[r]) * logit[r] + net->row_r[r] * net->fm_pair[r];
    } else if (p->kind != ES_NET_LR) {
        for (int r = r0; r < r1; r++) logit[r] += net->fm_pair[r];
    }
}

void es__net_backward_rows(es_net *net, int r0, int r1, const float *emb, const float *dlogit, float *demb) {
    const es_net_params *p = &net->p;
    const int F = p->n_fields, k = p->dim, E = net->E, n = r1 - r0;
    if (n <= 0) return;
    const size_t rf = (size_t)F * (size_t)E;
    const float *g = dlogit; /* the pairs' gradient: dlogit, or g_out scaled by the row */
    if (p->pairs_only) { /* bias and linear terms are not in the model */
        for (int r = r0; r < r1; r++) {
            for (int f = 0; f < F; f++) demb[((size_t)r * F + f) * E] = 0.0f;
            if (p->norm_rows) net->g_out[r] = dlogit[r] * net->row_r[r];
        }
        if (p->norm_rows) g = net->g_out;
    } else if (p->norm_rows) { /* forward scaled the linear terms by sqrt(r), the pairs by r, not the bias */
        for (int r = r0; r < r1; r++) {
            net->g_lin[r] = dlogit[r] * sqrtf(net->row_r[r]);
            net->g_out[r] = dlogit[r] * net->row_r[r];
            for (int f = 0; f < F; f++) demb[((size_t)r * F + f) * E] = net->g_lin[r];
        }
        g = net->g_out;
    } else {
        for (int r = r0; r < r1; r++)
            for (int f = 0; f < F; f++) demb[((size_t)r * F + f) * E] = dlogit[r];
    }
    if (p->kind == ES_NET_FM)
        es__fm_backward_rows(demb + (size_t)r0 * rf, g + r0, net->fm_sum + (size_t)r0 * k, emb + (size_t)r0 * rf, F, E, 1,
                             k, n);
    if (p->kind == ES_NET_FFM) es__ffm_backward(demb + (size_t)r0 * rf, g + r0, emb + (size_t)r0 * rf, F, E, k, n);
}

void es__net_backward_end(es_net *net, int n, const float *dense, const float *dlogit) {
    const es_net_params *p = &net->p;
    const int D = p->n_dense, k = p->dim;
    if (n <= 0) return;
    const float *g = dlogit;
    if (p->pairs_only) {
        if (p->norm_rows) g = net->g_out;
    } else if (p->norm_rows) {
        double db = 0;
        for (int r = 0; r < n; r++) db += dlogit[r];
        net->dlin_b[0] += (float)db;
        es__linear_backward(NULL, net->dlin_w, NULL, net->g_lin, dense, net->lin_w, n, D, 1);
        g = net->g_out;
    } else {
        es__linear_backward(NULL, net->dlin_w, net->dlin_b, dlogit, dense, net->lin_w, n, D, 1);
    }
    if (p->kind == ES_NET_FM) es__fm_backward_dV(net->dfm_V, g, net->fm_sum, dense, net->fm_V, D, k, n);
}

static void forward(es_net *net, int n, const float *emb, const float *dense, float *logit);

void es__net_forward(es_net *net, int n, const float *emb, const float *dense, float *logit) {
    set_dropout(net, 0);
    forward(net, n, emb, dense, logit);
}

void es__net_forward_train(es_net *net, int n, const float *emb, const float *dense, float *logit) {
    set_dropout(net, 1);
    forward(net, n, emb, dense, logit);
}

static void forward(es_net *net, int n, const float *emb, const float *dense, float *logit) {
    ES_ASSERT(n >= 0 && n <= net->p.max_batch);
    if (n == 0) return;
    if (!net->wt_frozen) pack_weights(net);
    const es_net_params *p = &net->p;
    int D = p->n_dense, F = p->n_fields, k = p->dim;
    switch (p->kind) {
    case ES_NET_LR:
    case ES_NET_FM:
    case ES_NET_FFM:
        es__net_rows_begin(net, n, dense, logit);
        es__net_forward_rows(net, 0, n, emb, dense, logit);
        break;
    case ES_NET_DLRM: {
        const float *z0 = NULL;
        if (D > 0) {
            es__mlp_forward(&net->bottom, n, dense, net->bot_acts);
            z0 = net->bot_acts[net->bottom.n_layers - 1];
        }
        es__interact_forward(net->inter, z0, emb, n, F, k);
        es__mlp_forward(&net->top, n, net->inter, net->top_acts);
        memcpy(logit, net->top_acts[net->top.n_layers - 1], (size_t)n * sizeof(float));
        break;
    }
    case ES_NET_DCN: {
        int d0 = net->d0;
        size_t ek = (size_t)F * k;
        float *x0 = net->x[0];
        for (int r = 0; r < n; r++) {
            float *row = x0 + (size_t)r * d0;
            if (D > 0) memcpy(row, dense + (size_t)r * D, (size_t)D * sizeof(float));
            memcpy(row + D, emb + (size_t)r * ek, ek * sizeof(float));
        }
        for (int l = 0; l < p->n_cross; l++)
            es__cross_forward(net->x[l + 1], net->u[l], x0, net->x[l], net->cW[l], net->cWT[l], net->cb[l], n, d0);
        es__mlp_forward(&net->top, n, net->x[p->n_cross], net->top_acts);
        memcpy(logit, net->top_acts[net->top.n_layers - 1], (size_t)n * sizeof(float));
        break;
    }
    }
}

void es__net_backward(es_net *net, int n, const float *emb, const float *dense, const float *dlogit, float *demb) {
    ES_ASSERT(n >= 0 && n <= net->p.max_batch);
    if (n == 0) return;
    const es_net_params *p = &net->p;
    int D = p->n_dense, F = p->n_fields, k = p->dim;
    switch (p->kind) {
    case ES_NET_LR:
    case ES_NET_FM:
    case ES_NET_FFM:
        es__net_backward_rows(net, 0, n, emb, dlogit, demb);
        es__net_backward_end(net, n, dense, dlogit);
        break;
    case ES_NET_DLRM: {
        /* the MLP backward uses its dout as scratch, so copy dlogit first */
        memcpy(net->g_out, dlogit, (size_t)n * sizeof(float));
        es__mlp_backward(&net->top, n, net->inter, net->top_acts, net->g_out, net->d_inter, net->buf0, net->buf1);
        const float *z0 = D > 0 ? net->bot_acts[net->bottom.n_layers - 1] : NULL;
        es__interact_backward(D > 0 ? net->dz0 : NULL, demb, net->d_inter, z0, emb, n, F, k);
        if (D > 0) es__mlp_backward(&net->bottom, n, dense, net->bot_acts, net->dz0, NULL, net->buf0, net->buf1);
        break;
    }
    case ES_NET_DCN: {
        int d0 = net->d0, L = p->n_cross;
        size_t len = (size_t)n * d0, ek = (size_t)F * k;
        memcpy(net->g_out, dlogit, (size_t)n * sizeof(float));
        es__mlp_backward(&net->top, n, net->x[L], net->top_acts, net->g_out, net->dx, net->buf0, net->buf1);
        /* dx walks down the residual path (dL/dx_l); dx0 gathers every
         * layer's gradient through its x0 factor. */
        memset(net->dx0, 0, len * sizeof(float));
        for (int l = L - 1; l >= 0; l--)
            es__cross_backward(net->dx, net->dx0, net->dcW[l], net->dcb[l], net->x[0], net->x[l], net->u[l], net->cW[l],
                               net->h, n, d0);
        /* x_0 is x0 itself: both paths add; the emb part goes back to the storage */
        for (int r = 0; r < n; r++) {
            const float *a = net->dx0 + (size_t)r * d0 + D, *b = net->dx + (size_t)r * d0 + D;
            float *o = demb + (size_t)r * ek;
            for (size_t j = 0; j < ek; j++) o[j] = a[j] + b[j];
        }
        break;
    }
    }
}

void es__net_step(es_net *net) {
    net->wt_frozen = 0;
    net->drop_step++;
    es__dense_opt_step(&net->opt); /* every segment; zeroes the gradients */
}

int64_t es__net_drop_step(const es_net *net) { return net->drop_step; }
void es__net_set_drop_step(es_net *net, int64_t step) { net->drop_step = step; }

/* ---- prefixes (Matryoshka) ---------------------------------------------------------- */

void es__net_prefix_cols(es_net_kind kind, int n_fields, int dim, int p, int *cols) {
    int Ep = es__net_emb_dim(kind, n_fields, p);
    if (kind == ES_NET_FFM) { /* column 0, then the first p of each field-pair vector */
        cols[0] = 0;
        for (int g = 0; g < n_fields; g++)
            for (int c = 0; c < p; c++) cols[1 + g * p + c] = 1 + g * dim + c;
        return;
    }
    for (int c = 0; c < Ep; c++) cols[c] = c; /* FM: weight + v[0..p); DLRM, DCN: e[0..p) */
}

/* How an axis of a sub-net tensor indexes the full net's: */
enum { AX_SAME, AX_PREFIX, AX_TOPIN, AX_X0 };

/* Full index of sub index j along an axis of that kind (sub dim p, full k). */
static size_t axis_map(int ax, size_t j, int D, int k, int p) {
    switch (ax) {
    case AX_PREFIX: return j;                                  /* the first p of k */
    case AX_TOPIN: return j < (size_t)p ? j : j + (size_t)(k - p); /* DLRM top input [z0 (p of k), dots] */
    case AX_X0:                                                /* DCN x0 = [dense, e_0 (p of k), e_1, ...] */
        if (j < (size_t)D) return j;
        return (size_t)D + (j - D) / (size_t)p * (size_t)k + (j - D) % (size_t)p;
    }
    return j;
}

void es__net_prefix_params(const es_net *full, const es_net *sub, size_t *map) {
    const es_net_params *fp = &full->p;
    int D = fp->n_dense, k = fp->dim, p = sub->p.dim;
    ES_ASSERT(sub->p.kind == fp->kind && sub->p.n_fields == fp->n_fields && D == sub->p.n_dense && p <= k);
    ES_ASSERT(sub->n_segs == full->n_segs);
    char name[ES__NET_SEG_NAME];
    snprintf(name, sizeof name, "net.bottom.%d.", full->bottom.n_layers - 1);
    for (int i = 0; i < sub->n_segs; i++) {
        const es__net_seg *s = &sub->segs[i], *f = &full->segs[i];
        ES_ASSERT(strcmp(s->name, f->name) == 0);
        int rax = AX_SAME, cax = AX_SAME; /* 1-D: the one axis is the column axis */
        if (fp->kind == ES_NET_FM && !strcmp(s->name, "net.fm.v")) cax = AX_PREFIX;
        if (fp->kind == ES_NET_DLRM && D > 0 && !strncmp(s->name, name, strlen(name))) {
            if (s->ndim == 2) rax = AX_PREFIX; else cax = AX_PREFIX; /* the bottom's output rows */
        }
        if (fp->kind == ES_NET_DLRM && D > 0 && !strcmp(s->name, "net.top.0.w")) cax = AX_TOPIN;
        if (fp->kind == ES_NET_DCN && !strncmp(s->name, "net.cross.", 10)) {
            if (s->ndim == 2) rax = AX_X0;
            cax = AX_X0;
        }
        if (fp->kind == ES_NET_DCN && !strcmp(s->name, "net.deep.0.w")) cax = AX_X0;
        size_t rows = s->ndim == 2 ? s->shape[0] : 1, cols = s->ndim == 2 ? s->shape[1] : s->shape[0];
        size_t fcols = f->ndim == 2 ? f->shape[1] : f->shape[0];
        for (size_t r = 0; r < rows; r++) {
            size_t fr = axis_map(rax, r, D, k, p);
            for (size_t c = 0; c < cols; c++) {
                size_t fc = axis_map(cax, c, D, k, p);
                ES_ASSERT(fr * fcols + fc < f->count);
                map[s->off + r * cols + c] = f->off + fr * fcols + fc;
            }
        }
    }
}

void es__net_zero_grad(es_net *net) { memset(net->grads, 0, net->n_params * sizeof(float)); }

/* ---- flat views and tensors ------------------------------------------------------------------ */

size_t es__net_n_params(const es_net *net) { return net->n_params; }
float *es__net_params_ptr(es_net *net) {
    net->wt_frozen = 0; /* the caller may write through it */
    return net->params;
}
float *es__net_grads_ptr(es_net *net) { return net->grads; }
size_t es__net_param_bytes(const es_net *net) { return net->n_params * sizeof(float); }
size_t es__net_state_bytes(const es_net *net) {
    return es__dense_opt_state_bytes(&net->opt) + (net->p.dropout > 0.0f ? sizeof(int64_t) : 0);
}

/* Fill a ref by hand (name = prefix + seg name + suffix) so that the net
 * does not depend on the file layer being linked. */
static void set_ref(es_tensor_ref *t, const char *prefix, const char *name, const char *suffix,
                    es_dtype dt, void *data, int ndim, const uint64_t *shape) {
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s%s%s", prefix, name, suffix);
    t->dtype = dt;
    t->ndim = ndim;
    uint64_t count = 1;
    for (int i = 0; i < ndim; i++) {
        t->shape[i] = shape[i];
        count *= shape[i];
    }
    t->data = data;
    t->nbytes = (size_t)count * (dt == ES_DT_I64 ? sizeof(int64_t) : sizeof(float));
}

int es__net_tensors(es_net *net, es_tensor_ref *refs, int max) {
    es_optim kind = net->p.opt.kind;
    int per_seg = 1 + (kind == ES_OPT_ADAM ? 2 : kind == ES_OPT_ADAGRAD ? 1 : 0);
    int need = net->n_segs * per_seg + (kind == ES_OPT_ADAM ? 1 : 0) + (net->p.dropout > 0.0f ? 1 : 0);
    if (!refs) return need;
    net->wt_frozen = 0; /* the caller may write through the refs (a load does) */
    int c = 0;
    for (int i = 0; i < net->n_segs && c < max; i++) {
        const es__net_seg *s = &net->segs[i];
        set_ref(&refs[c++], "", s->name, "", ES_DT_F32, net->params + s->off, s->ndim, s->shape);
    }
    /* per segment its state arrays: "opt.<name>.m", ".v" (Adam) or ".acc" */
    const int ns = es__dense_opt_n_states(&net->opt);
    for (int i = 0; i < net->n_segs; i++) {
        const es__net_seg *s = &net->segs[i];
        for (int a = 0; a < ns && c < max; a++) {
            char suffix[8];
            snprintf(suffix, sizeof suffix, ".%s", es__dense_opt_state_name(&net->opt, a));
            set_ref(&refs[c++], "opt.", s->name, suffix, ES_DT_F32, es__dense_opt_state(&net->opt, a) + s->off,
                    s->ndim, s->shape);
        }
    }
    if (kind == ES_OPT_ADAM && c < max) {
        const uint64_t one = 1;
        set_ref(&refs[c++], "opt.net.", "step", "", ES_DT_I64, es__dense_opt_steps(&net->opt), 1, &one);
    }
    /* listed only with dropout, so files of nets without it are unchanged */
    if (net->p.dropout > 0.0f && c < max) {
        const uint64_t one = 1;
        set_ref(&refs[c++], "opt.net.", "dropout_step", "", ES_DT_I64, &net->drop_step, 1, &one);
    }
    return c;
}

double es__net_flops_per_row(const es_net *net) {
    const es_net_params *p = &net->p;
    double D = p->n_dense, F = p->n_fields, k = p->dim, f = 0.0;
    switch (p->kind) {
    case ES_NET_LR: f = D + F; break;
    case ES_NET_FM:
        /* linear D, first order F, numeric vectors D*k, sum and sum of
         * squares 2(F+D)k, |s|^2 k */
        f = D + F + D * k + 2.0 * (F + D) * k + k;
        break;
    case ES_NET_FFM: f = D + F + F * (F - 1) / 2 * k; break; /* linear, first order, one k-dot per pair */
    case ES_NET_DLRM:
    case ES_NET_DCN: {
        for (int s = 0; s < 2; s++) {
            const es__mlp *m = s ? &net->top : &net->bottom;
            for (int l = 0; l < m->n_layers; l++) f += (double)m->dims[l] * m->dims[l + 1];
        }
        if (p->kind == ES_NET_DLRM) {
            double T = F + (p->n_dense > 0 ? 1 : 0);
            f += T * (T - 1) / 2 * k;
        } else {
            /* each cross layer: d0 x d0 product plus the x0 * u product */
            f += p->n_cross * ((double)net->d0 * net->d0 + net->d0);
        }
        break;
    }
    }
    return f;
}
