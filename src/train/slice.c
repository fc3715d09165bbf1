/*
 * slice.c — es_model_slice: a Matryoshka model cut to one of its trained
 * prefixes (embstore.h; docs/methods.md, "matryoshka").  The cut model is
 * built the way a load builds one (the storage re-created from its
 * resolved options at the smaller width, the net at dimension p) and
 * filled from the full model: every storage tensor of the same name is
 * copied, a table [rows, E] keeps the columns es__net_prefix_cols names
 * (the first ones for FM, DLRM and DCN), and the net's parameters are the
 * prefix net's (es__net_prefix_params).  Lookups of the cut table give the
 * same bits as the first columns of the full lookup (per-column sums in
 * the same order), and the net is the very net es_model_set_prefix
 * evaluates, so the scores are equal bit for bit (tests/test_matryoshka.c).
 */
#include "model.h"

#include <math.h>

/* Methods whose tensors are plain row tables plus maps that do not depend
 * on the width (the others are refused by name). */
static int sliceable(const char *method) {
    return !strcmp(method, "full") || !strcmp(method, "hash") || !strcmp(method, "unified");
}

#define SLICE_TENSORS_MAX 64

/* dst's storage tensors from src's: same name; equal size copied, a
 * [rows, E] f32 table cut to [rows, Ep] through cols. */
static int copy_storage(es_storage *dst, es_storage *src, int E, int Ep, const int *cols, es_err *err) {
    es_tensor_ref a[SLICE_TENSORS_MAX], b[SLICE_TENSORS_MAX];
    int na = es__storage_tensors(dst, NULL, 0), nb = es__storage_tensors(src, NULL, 0);
    if (na < 0 || nb < 0 || na > SLICE_TENSORS_MAX || nb > SLICE_TENSORS_MAX)
        return es__err(err, ES_EINVAL, "slice: storage %s lists too many tensors", src->p.method);
    es__storage_tensors(dst, a, na);
    es__storage_tensors(src, b, nb);
    for (int i = 0; i < na; i++) {
        if (!strncmp(a[i].name, "opt.", 4) || !a[i].data) continue; /* optimizer state: not in a served model */
        const es_tensor_ref *t = NULL;
        for (int j = 0; j < nb && !t; j++)
            if (!strcmp(b[j].name, a[i].name)) t = &b[j];
        if (!t || !t->data) return es__err(err, ES_EINVAL, "slice: storage %s has no tensor '%s'", src->p.method, a[i].name);
        if (t->dtype == a[i].dtype && t->nbytes == a[i].nbytes) {
            memcpy(a[i].data, t->data, t->nbytes);
        } else if (t->dtype == ES_DT_F32 && a[i].dtype == ES_DT_F32 && t->ndim == 2 && a[i].ndim == 2 &&
                   t->shape[0] == a[i].shape[0] && t->shape[1] == (uint64_t)E && a[i].shape[1] == (uint64_t)Ep) {
            const float *s = t->data;
            float *d = a[i].data;
            for (uint64_t r = 0; r < t->shape[0]; r++)
                for (int c = 0; c < Ep; c++) d[r * (uint64_t)Ep + (uint64_t)c] = s[r * (uint64_t)E + (uint64_t)cols[c]];
        } else {
            return es__err(err, ES_EINVAL, "slice: storage %s: tensor '%s' cannot be cut to the prefix", src->p.method, a[i].name);
        }
    }
    return dst->ops->after_load ? dst->ops->after_load(dst, err) : ES_OK;
}

int es_model_slice(es_model *m, int dim, es_model **out, es_err *err) {
    if (!out) return es__err(err, ES_EINVAL, "es_model_slice: out is NULL");
    *out = NULL;
    if (!m) return es__err(err, ES_EINVAL, "es_model_slice: no model");
    const es_net_params *fp = &m->np;
    int lv = -1;
    for (int i = 0; i < fp->n_prefix; i++)
        if (fp->prefix[i] == dim) lv = i;
    if (dim == fp->dim) lv = fp->n_prefix > 0 ? fp->n_prefix - 1 : 0;
    if (lv < 0) {
        char list[96] = "";
        size_t o = 0;
        for (int i = 0; i < fp->n_prefix && o < sizeof list; i++)
            o += (size_t)snprintf(list + o, sizeof list - o, i ? ",%d" : "%d", fp->prefix[i]);
        if (fp->n_prefix > 1) return es__err(err, ES_EINVAL, "dim %d is not a trained prefix of this model (trained with --matryoshka %s)", dim, list);
        return es__err(err, ES_EINVAL, "dim %d: this model was trained at dim %d only (no --matryoshka prefixes)", dim, fp->dim);
    }
    const char *method = m->st->p.method;
    if (!sliceable(method))
        return es__err(err, ES_EINVAL, "slice: storage method %s is not supported (full, hash and unified are: their tables are plain rows)",
                       method);
    if (es__storage_precision(m->st) != ES_PREC_FP32)
        return es__err(err, ES_EINVAL, "slice: the table is stored at %s; slice the fp32 model, then quantize",
                       es__prec_name(es__storage_precision(m->st)));

    es_net_params np = *fp;
    np.dim = dim;
    np.n_prefix = fp->n_prefix > 0 ? lv + 1 : 0;
    if (np.kind == ES_NET_DLRM && np.n_dense > 0 && np.n_bottom > 0) np.bottom[np.n_bottom - 1] = dim;
    const int E = m->E, Ep = es__net_emb_dim(np.kind, np.n_fields, dim);
    es_storage_params sp = m->st->p;
    sp.dim = Ep;
    sp.budget = m->st->budget_bytes > 1 ? m->st->budget_bytes : 0;
    sp.precision = ES_PREC_FP32;
    sp.qtrain = ES_QTRAIN_NONE;
    char *opts = es__storage_load_opts(method, m->st->meta, m->st->p.opts, NULL);
    if (!opts) return es__err(err, ES_ENOMEM, "out of memory");
    sp.opts = opts;
    int *cols = es__malloc((size_t)Ep * sizeof(int));
    es_model *s = NULL;
    int rc;
    if (!cols) {
        rc = es__err(err, ES_ENOMEM, "out of memory");
        goto done;
    }
    es__net_prefix_cols(np.kind, np.n_fields, fp->dim, dim, cols);
    es__rng_fill_skip(1); /* every value is copied below */
    rc = es__model_create(&s, &np, &sp, NULL, &m->rp, err);
    es__rng_fill_skip(0);
    if (rc != ES_OK) goto done;
    if ((rc = copy_storage(s->st, m->st, E, Ep, cols, err)) != ES_OK) goto done;
    if (s->st->budget_bytes > 0) s->st->budget_bytes = (double)(s->st->param_bytes + s->st->aux_bytes);
    /* the net: the prefix net's parameters, gathered from the full net now */
    es_net *src = m->net;
    if (m->nest && dim != fp->dim) {
        es__nest_pull(m->nest);
        m->nest_stale = 0;
        src = es__nest_net(m->nest, es__nest_level(m->nest, dim));
    }
    ES_ASSERT(es__net_n_params(src) == es__net_n_params(s->net));
    memcpy(es__net_params_ptr(s->net), es__net_params_ptr(src), es__net_param_bytes(src));
    for (int i = 0; i < m->n_meta && rc == ES_OK; i++) rc = es__model_set_meta(s, m->meta_key[i], m->meta_val[i]);
    char v[64];
    snprintf(v, sizeof v, "%d of %d", dim, fp->dim);
    if (rc == ES_OK) rc = es__model_set_meta(s, "train.slice", v);
    if (rc != ES_OK) rc = es__err(err, ES_ENOMEM, "out of memory");
done:
    es__free(opts);
    es__free(cols);
    if (rc != ES_OK) {
        es_model_free(s);
        return rc;
    }
    *out = s;
    return ES_OK;
}
