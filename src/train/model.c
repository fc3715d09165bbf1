/*
 * model.c — es_model in memory: storage + net + schema and the buffers
 * that connect them.  Create and free, metadata, and the per-batch steps
 * of the public API (train, eval, predict) and the embedding lookup.  The
 * model file is model_io.c; the rest of the step API is step.c.
 */
#include "model.h"

#include "model/layers.h"

#include "data/schema.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <unistd.h>

#ifdef _OPENMP
#include <omp.h>
#endif

/* ---- creation ------------------------------------------------------------ */

static int model_alloc_buffers(es_model *m, es_err *err) {
    size_t per = (size_t)m->max_batch * (size_t)m->n_fields * (size_t)m->E;
    size_t total;
    /* emb, demb, logit, dlogit, then row_loss (doubles: 2 floats each, 8-byte aligned after 2 per + 2 B floats) */
    if (!es__mul_size(per, 2, &total) || !es__add_size(total, 4 * (size_t)m->max_batch, &total) ||
        !es__mul_size(total, sizeof(float), &total))
        return es__err(err, ES_EINVAL, "model buffers too large");
    m->buf = es__alloc_aligned(total);
    if (!m->buf) return es__err(err, ES_ENOMEM, "out of memory for model buffers (%zu bytes)", total);
    m->emb = m->buf;
    m->demb = m->emb + per;
    m->logit = m->demb + per;
    m->dlogit = m->logit + m->max_batch;
    m->row_loss = (double *)(void *)(m->dlogit + m->max_batch);
    if (es_batch_alloc(&m->one, 1, m->n_dense, m->n_fields, (size_t)m->n_fields + 1) != 0)
        return es__err(err, ES_ENOMEM, "out of memory");
    return ES_OK;
}

static int copy_reader_params(es_model *m, const es_reader_params *rp) {
    m->rp = *rp;
    m->rp_columns = NULL;
    if (rp->columns) {
        m->rp_columns = es__strdup(rp->columns);
        if (!m->rp_columns) return ES_ENOMEM;
    }
    m->rp.columns = m->rp_columns;
    return ES_OK;
}

int es__model_create(es_model **out, const es_net_params *np, const es_storage_params *sp, const es_vocab *vocab,
                     const es_reader_params *rp, es_err *err) {
    *out = NULL;
    es_model *m = es__calloc(1, sizeof *m);
    if (!m) return es__err(err, ES_ENOMEM, "out of memory");
    m->np = *np;
    m->n_dense = np->n_dense;
    m->n_fields = np->n_fields;
    m->E = es__net_emb_dim(np->kind, np->n_fields, np->dim);
    m->max_batch = np->max_batch;
    int rc;
    if (sp->dim != m->E || sp->n_fields != np->n_fields || sp->max_batch != np->max_batch) {
        rc = es__err(err, ES_EINVAL, "storage shape (fields %d, dim %d) does not match the model (fields %d, dim %d)",
                     sp->n_fields, sp->dim, np->n_fields, m->E);
        goto fail;
    }
    if ((rc = copy_reader_params(m, rp)) != 0) {
        es__err(err, rc, "out of memory");
        goto fail;
    }
    if ((rc = es__storage_create(&m->st, sp, vocab, err)) != 0) goto fail;
    if ((rc = es__net_create(&m->net, np, err)) != 0) goto fail;
    if (np->n_prefix > 1 && (rc = es__nest_create(&m->nest, m->net, err)) != 0) goto fail;
    m->prefix_level = -1;
    m->nest_stale = 1;
    if ((rc = model_alloc_buffers(m, err)) != 0) goto fail;
    *out = m;
    return ES_OK;
fail:
    es_model_free(m);
    return rc;
}

void es_model_free(es_model *m) {
    if (!m) return;
    es__storage_free(m->st);
    es__nest_free(m->nest);
    es__net_free(m->net);
    es__free_aligned(m->buf);
    es__free(m->rp_columns);
    es__free(m->in_columns);
    for (int i = 0; i < m->n_meta; i++) {
        es__free(m->meta_key[i]);
        es__free(m->meta_val[i]);
    }
    es__free(m->meta_key);
    es__free(m->meta_val);
    es_batch_free(&m->one);
    es__model_mem_input_drop(m);
    es__free(m);
}

const char *es_model_errmsg(const es_model *m) { return m ? m->err.msg : "no model"; }
int es_model_n_fields(const es_model *m) { return m->n_fields; }
int es_model_n_dense(const es_model *m) { return m->n_dense; }
int es_model_emb_dim(const es_model *m) { return m->E; }

/* The storage's arrays as the model file names them ("storage.<name>"),
 * without the optimizer state ("opt.*"), which a loaded model lacks. */
static int model_param_refs(es_model *m, es_tensor_ref *refs, int max) {
    if (!m->st) return 0;
    int n = es__storage_tensors(m->st, refs, max), k = 0;
    for (int i = 0; i < n; i++)
        if (strncmp(refs[i].name, "opt.", 4) != 0 && refs[i].data) refs[k++] = refs[i];
    return k;
}

#define MODEL_TENSORS_MAX 64

int es_model_n_tensors(es_model *m) {
    if (!m) return 0;
    es_tensor_ref refs[MODEL_TENSORS_MAX];
    return model_param_refs(m, refs, MODEL_TENSORS_MAX);
}

int es_model_tensor(es_model *m, int i, const char **name, const char **dtype, int *ndim, uint64_t shape[4],
                    void **data) {
    if (!m) return ES_EINVAL;
    es_tensor_ref refs[MODEL_TENSORS_MAX];
    int n = model_param_refs(m, refs, MODEL_TENSORS_MAX);
    if (i < 0 || i >= n) return es__err(&m->err, ES_ERANGE, "tensor %d out of range [0, %d)", i, n);
    m->tref = refs[i];
    snprintf(m->tref.name, sizeof m->tref.name, "storage.%s", refs[i].name);
    if (name) *name = m->tref.name;
    if (dtype) *dtype = es__dtype_name(refs[i].dtype);
    if (ndim) *ndim = refs[i].ndim;
    if (shape)
        for (int d = 0; d < 4; d++) shape[d] = d < refs[i].ndim ? refs[i].shape[d] : 0;
    if (data) *data = refs[i].data;
    return ES_OK;
}
es_reader_params es_model_reader_params(const es_model *m) { return m->rp; }

int es__model_set_meta(es_model *m, const char *key, const char *value) {
    for (int i = 0; i < m->n_meta; i++) {
        if (strcmp(m->meta_key[i], key) == 0) {
            char *v = es__strdup(value);
            if (!v) return ES_ENOMEM;
            es__free(m->meta_val[i]);
            m->meta_val[i] = v;
            return ES_OK;
        }
    }
    if (m->n_meta == m->cap_meta) {
        int cap = m->cap_meta ? 2 * m->cap_meta : 64;
        char **k2 = es__realloc(m->meta_key, (size_t)cap * sizeof *k2);
        if (!k2) return ES_ENOMEM;
        m->meta_key = k2;
        char **v2 = es__realloc(m->meta_val, (size_t)cap * sizeof *v2);
        if (!v2) return ES_ENOMEM;
        m->meta_val = v2;
        m->cap_meta = cap;
    }
    char *k = es__strdup(key), *v = es__strdup(value);
    if (!k || !v) {
        es__free(k);
        es__free(v);
        return ES_ENOMEM;
    }
    m->meta_key[m->n_meta] = k;
    m->meta_val[m->n_meta] = v;
    m->n_meta++;
    return ES_OK;
}

const char *es_model_meta(const es_model *m, const char *key) {
    for (int i = 0; i < m->n_meta; i++)
        if (strcmp(m->meta_key[i], key) == 0) return m->meta_val[i];
    return NULL;
}

/* ---- forward / backward ------------------------------------------------------ */

/* emb[0..n) <- lookup of rows [r0, r0+n) of b, split over threads. */
static void lookup_rows(es_model *m, const es_batch *b, int r0, int n) {
    size_t row_floats = (size_t)m->n_fields * (size_t)m->E;
    int nt = es__threads_get();
    if (nt <= 1 || n < 32 || (size_t)n * row_floats < ES__PAR_FLOATS) {
        m->st->ops->lookup(m->st, b, r0, r0 + n, m->emb);
        return;
    }
ES__OMP(omp parallel for schedule(static) num_threads(nt))
    for (int t = 0; t < nt; t++) {
        int a = r0 + (int)((int64_t)n * t / nt), z = r0 + (int)((int64_t)n * (t + 1) / nt);
        if (z > a) m->st->ops->lookup(m->st, b, a, z, m->emb + (size_t)(a - r0) * row_floats);
    }
}

/* Shape of a batch against the model (ES_EINVAL with a message). */
static int check_batch(es_model *m, const es_batch *b) {
    if (b->n_fields != m->n_fields || b->n_dense != m->n_dense)
        return es__err(&m->err, ES_EINVAL, "batch has %d numeric and %d categorical features, the model expects %d and %d",
                       b->n_dense, b->n_fields, m->n_dense, m->n_fields);
    if (b->n < 0 || b->n > b->cap) return es__err(&m->err, ES_EINVAL, "batch row count %d out of range [0, %d]", b->n, b->cap);
    return ES_OK;
}

static int train_step(es_model *m, const es_batch *b, int n, double *loss_sum);

int es_model_train_batch(es_model *m, const es_batch *b, double *loss_sum) {
    int n = b->n, rc = check_batch(m, b);
    if (rc != ES_OK) return rc;
    if (n < 1 || n > m->max_batch)
        return es__err(&m->err, ES_EINVAL, "a training batch needs 1 to %d rows (the model's batch size), got %d", m->max_batch, n);
    /* before anything changes: a quantized table serves only */
    if ((rc = es__storage_check_trainable(m->st, &m->err)) != ES_OK) return rc;
    rc = train_step(m, b, n, loss_sum);
    m->st->step = NULL;
    return rc;
}

void es__model_step_prepare(es_model *m, const es_batch *b, int k) {
    if (m->st->ops->step_prepare && b->n_fields == m->n_fields) m->st->ops->step_prepare(m->st, b, k);
}

/* The step of LR, FM and FFM on nt threads in one parallel region: each
 * thread looks up its share of the rows and runs their forward, loss and
 * backward (es__net_rows: those models' rows are independent until the
 * batch's sums), where the separate calls of train_step would start a
 * region for each (lookup, forward, backward) and wake the team three
 * times.  The batch parts (dense linear term, dense gradients, the loss
 * sum in row order) run around it as es__net_forward and es__net_backward
 * run them: the same bits as train_step's path, whatever the threads.
 * Returns the batch's summed loss. */
static double train_rows(es_model *m, const es_batch *b, int n, int nt) {
    const size_t rf = (size_t)m->n_fields * (size_t)m->E;
    const float scale = 1.0f / (float)n;
    es__net_rows_begin(m->net, n, b->dense, m->logit);
ES__OMP(omp parallel for schedule(static) num_threads(nt))
    for (int t = 0; t < nt; t++) {
        const int a = (int)((int64_t)n * t / nt), z = (int)((int64_t)n * (t + 1) / nt);
        if (z > a) {
            m->st->ops->lookup(m->st, b, a, z, m->emb + (size_t)a * rf);
            es__net_forward_rows(m->net, a, z, m->emb, b->dense, m->logit);
            es__bce_logits_rows(m->logit, b->label, a, z, scale, m->dlogit, m->row_loss);
            es__net_backward_rows(m->net, a, z, m->emb, m->dlogit, m->demb);
        }
    }
    double loss = 0.0;
    for (int r = 0; r < n; r++) loss += m->row_loss[r];
    es__net_backward_end(m->net, n, b->dense, m->dlogit);
    return loss;
}

/* Whether train_step runs the fused train_rows: several threads, a model
 * whose rows are independent, and the work a step that lookup_rows
 * splits (FFM at batch 64 has 25 times that; FM at dim 8 and LR stay on one
 * thread: measured slower split, the wake-ups costing more than the
 * shared work). */
static int fused_rows(const es_model *m, int n, int nt) {
    return nt > 1 && !m->nest && es__net_rows(m->net) && n >= 32 &&
           (size_t)n * (size_t)m->n_fields * (size_t)m->E >= ES__PAR_FLOATS;
}

/* es_model_train_batch's step: the lookup and the backward of b, which the
 * storage may tie together (ops->step_begin, s->step). */
static int train_step(es_model *m, const es_batch *b, int n, double *loss_sum) {
    int rc;
    m->st->step = b;
    if (m->st->ops->step_begin) m->st->ops->step_begin(m->st, b);
    const int nt = es__threads_get();
    if (fused_rows(m, n, nt)) {
        double loss = train_rows(m, b, n, nt);
        if (loss_sum) *loss_sum += loss;
        es__net_step(m->net);
        rc = m->st->ops->backward(m->st, b, m->demb);
        if (rc != 0) return es__err(&m->err, rc, "embedding update failed: %s", m->st->err.msg);
        return ES_OK;
    }
    lookup_rows(m, b, 0, n);
    if (m->nest) { /* Matryoshka: the nested loss over the prefixes (model/nest.h) */
        double wl = es__nest_train_grad(m->nest, n, m->emb, b->dense, b->label, m->demb, m->logit, 1), ws = 0;
        for (int i = 0; i < m->np.n_prefix; i++) ws += m->np.prefix_w[i];
        if (loss_sum) *loss_sum += wl / ws; /* the weighted mean of the levels' losses */
        es__net_step(m->net);
        m->nest_stale = 1;
        rc = m->st->ops->backward(m->st, b, m->demb);
        if (rc != 0) return es__err(&m->err, rc, "embedding update failed: %s", m->st->err.msg);
        return ES_OK;
    }
    es__net_forward_train(m->net, n, m->emb, b->dense, m->logit); /* dropout, when set, here only */
    /* the tested layer loss: summed over the rows, dlogit of the batch mean */
    double loss = es__bce_logits_sum(m->logit, b->label, n, 1.0f / (float)n, m->dlogit);
    if (loss_sum) *loss_sum += loss;
    es__net_backward(m->net, n, m->emb, b->dense, m->dlogit, m->demb);
    es__net_step(m->net);
    rc = m->st->ops->backward(m->st, b, m->demb);
    if (rc != 0) return es__err(&m->err, rc, "embedding update failed: %s", m->st->err.msg);
    return ES_OK;
}

/* The architecture step of a multi-stage storage's search (storage.h,
 * es__staged): the loss gradient of validation batch b at the embeddings,
 * from the same forward and backward as a training step, goes to the
 * storage's arch_backward; the net's gradients are dropped (its weights and
 * optimizer state do not change) and the tables are not updated. */
int es__model_arch_batch(es_model *m, const es_batch *b) {
    int n = b->n, rc = check_batch(m, b);
    if (rc != ES_OK) return rc;
    const es__staged *sg = m->st->ops->staged;
    if (!sg || !sg->arch_backward) return es__err(&m->err, ES_EINVAL, "storage '%s' has no architecture step", m->st->ops->name);
    if (n < 1 || n > m->max_batch)
        return es__err(&m->err, ES_EINVAL, "an architecture batch needs 1 to %d rows, got %d", m->max_batch, n);
    lookup_rows(m, b, 0, n);
    es__net_forward(m->net, n, m->emb, b->dense, m->logit);
    (void)es__bce_logits_sum(m->logit, b->label, n, 1.0f / (float)n, m->dlogit);
    es__net_backward(m->net, n, m->emb, b->dense, m->dlogit, m->demb);
    es__net_zero_grad(m->net);
    rc = sg->arch_backward(m->st, b, m->demb);
    if (rc != 0) return es__err(&m->err, rc, "architecture update failed: %s", m->st->err.msg);
    return ES_OK;
}

int es_model_eval_batch(es_model *m, const es_batch *b, float *prob, double *loss_sum) {
    int rc = check_batch(m, b);
    if (rc != ES_OK) return rc;
    const int lv = m->nest ? m->prefix_level : -1;
    if (lv >= 0 && m->nest_stale) { /* the prefix's net from the current weights */
        es__nest_pull(m->nest);
        m->nest_stale = 0;
    }
    es_net *net = lv >= 0 ? es__nest_net(m->nest, lv) : m->net;
    es__net_freeze(net); /* weights packed once for every batch until the next training step */
    for (int r0 = 0; r0 < b->n; r0 += m->max_batch) {
        int n = ES_MIN(m->max_batch, b->n - r0);
        lookup_rows(m, b, r0, n);
        if (lv >= 0)
            es__nest_forward(m->nest, lv, n, m->emb, b->dense + (size_t)r0 * (size_t)m->n_dense, m->logit);
        else
            es__net_forward(m->net, n, m->emb, b->dense + (size_t)r0 * (size_t)m->n_dense, m->logit);
        for (int i = 0; i < n; i++) prob[r0 + i] = es__sigmoid(m->logit[i]);
        if (loss_sum) *loss_sum += es__bce_logits_sum(m->logit, b->label + r0, n, 0.0f, NULL);
    }
    return ES_OK;
}

int es_model_set_prefix(es_model *m, int dim) {
    if (!m) return ES_EINVAL;
    if (dim == 0 || dim == m->np.dim) {
        m->prefix_level = -1;
        return ES_OK;
    }
    int lv = m->nest ? es__nest_level(m->nest, dim) : -1;
    if (lv < 0) {
        char list[96] = "";
        size_t o = 0;
        for (int i = 0; i < m->np.n_prefix && o < sizeof list; i++)
            o += (size_t)snprintf(list + o, sizeof list - o, i ? ",%d" : "%d", m->np.prefix[i]);
        if (m->np.n_prefix > 1)
            return es__err(&m->err, ES_EINVAL, "dim %d is not a trained prefix of this model (trained with --matryoshka %s)", dim, list);
        return es__err(&m->err, ES_EINVAL, "dim %d: this model was trained at dim %d only (no --matryoshka prefixes); it can be evaluated at %d",
                       dim, m->np.dim, m->np.dim);
    }
    if (m->prefix_level != lv) m->nest_stale = 1; /* pull at the next eval: cheap, and safe after a load */
    m->prefix_level = lv;
    return ES_OK;
}

int es_model_predict_batch(es_model *m, const es_batch *b, float *prob) { return es_model_eval_batch(m, b, prob, NULL); }

int es_model_quantize(es_model *m, const char *precision, es_err *err) {
    es_precision p;
    if (!m || !precision) return es__err(err, ES_EINVAL, "es_model_quantize: model and precision are required");
    if (es__prec_parse(precision, &p) != ES_OK)
        return es__err(err, ES_EINVAL, "unknown precision '%.32s' (expected fp16, int16, int8, int4 or int2)", precision);
    if (p == ES_PREC_FP32)
        return es__err(err, ES_EINVAL, "precision fp32 is what training gives; quantize to fp16, int16, int8, int4 or int2");
    int rc = es__storage_quantize(m->st, p, err);
    if (rc != ES_OK && err) es__err(&m->err, rc, "%s", err->msg);
    return rc;
}

int es_model_embedding(es_model *m, int field, uint64_t key, float *out) {
    if (field < 0 || field >= m->n_fields) return es__err(&m->err, ES_ERANGE, "field %d out of range [0, %d)", field, m->n_fields);
    es_batch *b = &m->one;
    b->n = 1;
    /* only `field` has a value: offsets 0..0 before it, 0..1 at it, 1..1 after */
    for (int f = 0; f <= m->n_fields; f++) b->off[f] = f <= field ? 0u : 1u;
    b->val[0] = key;
    b->wt[0] = 1.0f;
    float *tmp = m->emb; /* [1, F, E] scratch */
    m->st->ops->lookup(m->st, b, 0, 1, tmp);
    memcpy(out, tmp + (size_t)field * (size_t)m->E, (size_t)m->E * sizeof(float));
    return ES_OK;
}

