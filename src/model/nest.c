/*
 * nest.c — Matryoshka nets: the nested loss over prefix dimensions and the
 * forward at one prefix (nest.h).  Each prefix p < dim is a net of
 * dimension p (net.c) with a gather map into the full net's parameters and
 * a column map into the full embedding rows: pull gathers the parameters,
 * a forward gathers the columns, a backward scatters the embedding
 * gradient back into its columns and adds the parameter gradients into
 * the full net's.  Sums run level by level in prefix order, so results are
 * repeatable bit for bit with one thread.
 */
#include "model/nest.h"

#include "model/layers.h"

typedef struct {
    int p, Ep;
    es_net *net;     /* NULL at the last level: the full net */
    size_t *pmap;    /* [es__net_n_params(net)]: full parameter index */
    size_t np;
    int *cols;       /* [Ep] */
    float *emb, *demb;          /* [B, F, Ep] */
    float *logit, *dlogit;      /* [B] */
} nest_level;

struct es_nest {
    es_net *full;
    int n, F, E, B;
    float w[ES_NET_MAX_PREFIX];
    nest_level lv[ES_NET_MAX_PREFIX];
};

void es__nest_free(es_nest *ns) {
    if (!ns) return;
    for (int i = 0; i < ns->n; i++) {
        nest_level *l = &ns->lv[i];
        es__net_free(l->net);
        es__free(l->pmap);
        es__free(l->cols);
        es__free_aligned(l->emb);
        es__free_aligned(l->demb);
        es__free_aligned(l->logit);
        es__free_aligned(l->dlogit);
    }
    es__free(ns);
}

int es__nest_create(es_nest **out, es_net *full, es_err *err) {
    *out = NULL;
    const es_net_params *fp = es__net_get_params(full);
    if (fp->n_prefix < 1) return es__err(err, ES_EINVAL, "nest: the net has no matryoshka prefixes");
    es_nest *ns = es__calloc(1, sizeof *ns);
    if (!ns) return es__err(err, ES_ENOMEM, "out of memory");
    ns->full = full;
    ns->n = fp->n_prefix;
    ns->F = fp->n_fields;
    ns->E = es__net_emb_dim(fp->kind, fp->n_fields, fp->dim);
    ns->B = fp->max_batch;
    int rc = ES_OK;
    for (int i = 0; i < ns->n; i++) {
        nest_level *l = &ns->lv[i];
        ns->w[i] = fp->prefix_w[i];
        l->p = fp->prefix[i];
        l->Ep = es__net_emb_dim(fp->kind, fp->n_fields, l->p);
        size_t per = (size_t)ns->B * (size_t)ns->F * (size_t)l->Ep;
        l->cols = es__malloc((size_t)l->Ep * sizeof(int));
        l->logit = es__alloc_aligned((size_t)ns->B * sizeof(float));
        l->dlogit = es__alloc_aligned((size_t)ns->B * sizeof(float));
        if (!l->cols || !l->logit || !l->dlogit) goto oom;
        es__net_prefix_cols(fp->kind, fp->n_fields, fp->dim, l->p, l->cols);
        if (i == ns->n - 1) break; /* the full net: no copy of anything */
        l->emb = es__alloc_aligned(per * sizeof(float));
        l->demb = es__alloc_aligned(per * sizeof(float));
        if (!l->emb || !l->demb) goto oom;
        es_net_params sp = *fp;
        sp.dim = l->p;
        sp.n_prefix = 0;
        if (sp.kind == ES_NET_DLRM && sp.n_dense > 0 && sp.n_bottom > 0) sp.bottom[sp.n_bottom - 1] = l->p;
        /* a sub-net never steps: no optimizer state */
        sp.opt.kind = ES_OPT_SGD;
        if ((rc = es__net_create(&l->net, &sp, err)) != ES_OK) goto fail;
        l->np = es__net_n_params(l->net);
        l->pmap = es__malloc((l->np ? l->np : 1) * sizeof(size_t));
        if (!l->pmap) goto oom;
        es__net_prefix_params(full, l->net, l->pmap);
    }
    *out = ns;
    return ES_OK;
oom:
    rc = es__err(err, ES_ENOMEM, "nest: out of memory for the matryoshka prefixes");
fail:
    es__nest_free(ns);
    return rc;
}

int es__nest_level(const es_nest *ns, int p) {
    for (int i = 0; i < ns->n; i++)
        if (ns->lv[i].p == p) return i;
    return -1;
}

es_net *es__nest_net(es_nest *ns, int level) { return ns->lv[level].net ? ns->lv[level].net : ns->full; }
int es__nest_emb_dim(const es_nest *ns, int level) { return ns->lv[level].Ep; }
const int *es__nest_cols(const es_nest *ns, int level) { return ns->lv[level].cols; }

void es__nest_pull(es_nest *ns) {
    const float *src = es__net_params_ptr(ns->full);
    for (int i = 0; i < ns->n - 1; i++) {
        nest_level *l = &ns->lv[i];
        float *dst = es__net_params_ptr(l->net); /* also unfreezes its packed weights */
        for (size_t j = 0; j < l->np; j++) dst[j] = src[l->pmap[j]];
    }
}

/* dst[n, F, Ep] <- the level's columns of src[n, F, E]. */
static void gather_cols(const es_nest *ns, const nest_level *l, int n, const float *src, float *dst) {
    size_t rows = (size_t)n * (size_t)ns->F;
    for (size_t r = 0; r < rows; r++) {
        const float *s = src + r * (size_t)ns->E;
        float *d = dst + r * (size_t)l->Ep;
        for (int c = 0; c < l->Ep; c++) d[c] = s[l->cols[c]];
    }
}

void es__nest_forward(es_nest *ns, int level, int n, const float *emb, const float *dense, float *logit) {
    ES_ASSERT(level >= 0 && level < ns->n && n >= 0 && n <= ns->B);
    nest_level *l = &ns->lv[level];
    if (!l->net) {
        es__net_forward(ns->full, n, emb, dense, logit);
        return;
    }
    gather_cols(ns, l, n, emb, l->emb);
    es__net_forward(l->net, n, l->emb, dense, logit);
}

double es__nest_train_grad(es_nest *ns, int n, const float *emb, const float *dense, const float *label, float *demb,
                           float *logit_out, int train) {
    ES_ASSERT(n >= 1 && n <= ns->B);
    es__nest_pull(ns);
    double loss = 0;
    /* the full level first: its backward overwrites demb, the others add */
    nest_level *top = &ns->lv[ns->n - 1];
    if (train) es__net_forward_train(ns->full, n, emb, dense, top->logit);
    else es__net_forward(ns->full, n, emb, dense, top->logit);
    loss += (double)ns->w[ns->n - 1] * es__bce_logits_sum(top->logit, label, n, ns->w[ns->n - 1] / (float)n, top->dlogit);
    es__net_backward(ns->full, n, emb, dense, top->dlogit, demb);
    if (logit_out) memcpy(logit_out, top->logit, (size_t)n * sizeof(float));
    float *g = es__net_grads_ptr(ns->full);
    for (int i = 0; i < ns->n - 1; i++) {
        nest_level *l = &ns->lv[i];
        gather_cols(ns, l, n, emb, l->emb);
        if (train) {
            es__net_set_drop_step(l->net, es__net_drop_step(ns->full)); /* the full net's masks */
            es__net_forward_train(l->net, n, l->emb, dense, l->logit);
        } else {
            es__net_forward(l->net, n, l->emb, dense, l->logit);
        }
        loss += (double)ns->w[i] * es__bce_logits_sum(l->logit, label, n, ns->w[i] / (float)n, l->dlogit);
        es__net_zero_grad(l->net);
        es__net_backward(l->net, n, l->emb, dense, l->dlogit, l->demb);
        const float *sg = es__net_grads_ptr(l->net);
        for (size_t j = 0; j < l->np; j++) g[l->pmap[j]] += sg[j];
        size_t rows = (size_t)n * (size_t)ns->F;
        for (size_t r = 0; r < rows; r++) {
            const float *s = l->demb + r * (size_t)l->Ep;
            float *d = demb + r * (size_t)ns->E;
            for (int c = 0; c < l->Ep; c++) d[l->cols[c]] += s[c];
        }
    }
    return loss;
}
