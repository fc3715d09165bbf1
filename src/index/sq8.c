/*
 * sq8.c — per-dimension 8-bit scalar quantization: the codec (also used by
 * IVF lists) and the "sq8" index kind, which scans every code.
 *
 * Each dimension gets its own range [vmin, vmax] from the training vectors,
 * cut into 256 equal bins; a component is stored as its bin and decoded to
 * the bin centre.  Distances are asymmetric: the query stays float32 and
 * the kernels (distance.c) decode codes on the fly, so a code costs one byte
 * per dimension and no precision is lost on the query side.
 */
#include "index.h"

#include "distance.h"

int es__sq8_train(es__sq8 *c, const float *x, size_t n, int d, es_err *err) {
    if (n == 0) return es__err(err, ES_EINVAL, "sq8: no training vectors");
    float *scale = es__malloc((size_t)d * sizeof *scale), *bias = es__malloc((size_t)d * sizeof *bias);
    if (!scale || !bias) {
        es__free(scale);
        es__free(bias);
        return es__err(err, ES_ENOMEM, "sq8: out of memory");
    }
    for (int j = 0; j < d; j++) scale[j] = bias[j] = x[j];
    /* scale holds vmax and bias vmin during the pass. */
    for (size_t i = 1; i < n; i++)
        for (int j = 0; j < d; j++) {
            float v = x[i * (size_t)d + (size_t)j];
            if (v > scale[j]) scale[j] = v;
            if (v < bias[j]) bias[j] = v;
        }
    for (int j = 0; j < d; j++) {
        float vmin = bias[j], range = scale[j] - vmin;
        scale[j] = range / 256.0f;
        bias[j] = vmin + 0.5f * scale[j];
    }
    es__sq8_free(c);
    c->d = d;
    c->scale = scale;
    c->bias = bias;
    return ES_OK;
}

void es__sq8_encode(const es__sq8 *c, const float *x, uint8_t *code) {
    for (int j = 0; j < c->d; j++) {
        float s = c->scale[j];
        int v = 0;
        if (s > 0) {
            float t = (x[j] - (c->bias[j] - 0.5f * s)) / s;
            /* Compare before converting: out-of-range floats must not reach
             * the int conversion (undefined behaviour). */
            v = t <= 0.0f ? 0 : t >= 255.0f ? 255 : (int)t;
        }
        code[j] = (uint8_t)v;
    }
}

void es__sq8_decode(const es__sq8 *c, const uint8_t *code, float *x) {
    for (int j = 0; j < c->d; j++) x[j] = c->bias[j] + c->scale[j] * (float)code[j];
}

void es__sq8_prep(const es__sq8 *c, const float *q, int ip, float *qp, float *cst) {
    if (ip) {
        double s = 0;
        for (int j = 0; j < c->d; j++) {
            qp[j] = q[j] * c->scale[j];
            s += (double)q[j] * c->bias[j];
        }
        *cst = (float)s;
    } else {
        for (int j = 0; j < c->d; j++) qp[j] = q[j] - c->bias[j];
        *cst = 0.0f;
    }
}

void es__sq8_free(es__sq8 *c) {
    es__free(c->scale);
    es__free(c->bias);
    c->scale = c->bias = NULL;
}

int es__sq8_save(const es__sq8 *c, es_fwriter *w, const char *pfx, es_err *err) {
    int rc = es__ix_put(w, pfx, "sq.scale", ES_DT_F32, c->scale, 1, (uint64_t)c->d, 0, err);
    return rc ? rc : es__ix_put(w, pfx, "sq.bias", ES_DT_F32, c->bias, 1, (uint64_t)c->d, 0, err);
}

int es__sq8_load(es__sq8 *c, int d, const es_file *f, const char *pfx, es_err *err) {
    uint64_t shape[1] = {(uint64_t)d};
    const void *ps, *pb;
    int rc = es__ix_tensor(f, pfx, "sq.scale", ES_DT_F32, 1, shape, &ps, err);
    if (!rc) rc = es__ix_tensor(f, pfx, "sq.bias", ES_DT_F32, 1, shape, &pb, err);
    if (rc) return rc;
    if ((rc = es__check_finite(ps, 1, d, "sq8 scales", err)) || (rc = es__check_finite(pb, 1, d, "sq8 offsets", err)))
        return rc;
    for (int j = 0; j < d; j++)
        if (((const float *)ps)[j] < 0) return es__err(err, ES_EFORMAT, "sq8: negative scale in dimension %d", j);
    es__sq8_free(c);
    c->d = d;
    c->scale = es__malloc((size_t)d * sizeof(float));
    c->bias = es__malloc((size_t)d * sizeof(float));
    if (!c->scale || !c->bias) {
        es__sq8_free(c);
        return es__err(err, ES_ENOMEM, "sq8: out of memory");
    }
    memcpy(c->scale, ps, (size_t)d * sizeof(float));
    memcpy(c->bias, pb, (size_t)d * sizeof(float));
    return ES_OK;
}

/* ---- the sq8 kind ------------------------------------------------------------------ */
typedef struct {
    es__ix h;
    es__sq8 sq;
    es__arr codes; /* uint8 [n][dim] */
} sq8_ix;

static int sq8_train(es__ix *ix, const float *x, size_t n, es_err *err) {
    sq8_ix *s = (sq8_ix *)ix;
    int rc = es__sq8_train(&s->sq, x, n, ix->dim, err);
    if (!rc) ix->trained = true;
    return rc;
}

static int sq8_add(es__ix *ix, const float *x, size_t n, es_err *err) {
    sq8_ix *s = (sq8_ix *)ix;
    size_t d = (size_t)ix->dim, tot = ix->n + n, b;
    if (!es__mul_size(tot, d, &b)) return es__err(err, ES_ERANGE, "sq8: too many vectors");
    if (es__arr_reserve(&s->codes, b)) return es__err(err, ES_ENOMEM, "sq8: out of memory adding %zu vectors", n);
    uint8_t *c = (uint8_t *)s->codes.p + ix->n * d;
    for (size_t i = 0; i < n; i++) es__sq8_encode(&s->sq, x + i * d, c + i * d);
    s->codes.bytes = b;
    ix->n = tot;
    return ES_OK;
}

static size_t sq8_scratch(const es__ix *ix, int k) { return es__carved((size_t)ix->dim * sizeof(float)); }

static void sq8_search1(const es__ix *ix, const float *q, int k, const es__filter *f, es__scratch *sc, float *dist,
                        int64_t *ids) {
    const sq8_ix *s = (const sq8_ix *)ix;
    unsigned char *cur = sc->mem;
    float *qp = es__carve(&cur, (size_t)ix->dim * sizeof(float)), cst;
    es__sq8_prep(&s->sq, q, ix->ip, qp, &cst);
    const uint8_t *codes = s->codes.p;
    size_t d = (size_t)ix->dim;
    int size = 0;
    for (size_t i = 0; i < ix->n; i++) {
        if (f && !es__filter_ok(f, i)) continue;
        float v = ix->ip ? -(cst + es__sq8_ip(qp, codes + i * d, d)) : es__sq8_l2(qp, s->sq.scale, codes + i * d, d);
        es__heap_push(dist, ids, &size, k, v, (int64_t)i);
    }
    es__heap_finish(dist, ids, size, k);
}

static size_t sq8_bytes(const es__ix *ix) {
    const sq8_ix *s = (const sq8_ix *)ix;
    return s->codes.bytes + 2 * (size_t)ix->dim * sizeof(float);
}

static int sq8_save(const es__ix *ix, es_fwriter *w, const char *pfx, es_err *err) {
    const sq8_ix *s = (const sq8_ix *)ix;
    int rc = es__sq8_save(&s->sq, w, pfx, err);
    return rc ? rc : es__ix_put(w, pfx, "codes", ES_DT_U8, s->codes.p, 2, ix->n, (uint64_t)ix->dim, err);
}

static int sq8_load(es__ix *ix, const es_file *f, const char *pfx, es_err *err) {
    sq8_ix *s = (sq8_ix *)ix;
    int rc = es__sq8_load(&s->sq, ix->dim, f, pfx, err);
    if (rc) return rc;
    uint64_t shape[2] = {ix->n, (uint64_t)ix->dim};
    const void *p;
    if ((rc = es__ix_tensor(f, pfx, "codes", ES_DT_U8, 2, shape, &p, err))) return rc;
    es__arr_map(&s->codes, p, ix->n * (size_t)ix->dim);
    ix->trained = true;
    return ES_OK;
}

static void sq8_destroy(es__ix *ix) {
    sq8_ix *s = (sq8_ix *)ix;
    es__sq8_free(&s->sq);
    es__arr_free(&s->codes);
    es__free(s);
}

static const es__ix_vt sq8_vt = {
    .name = "sq8",
    .train = sq8_train,
    .add = sq8_add,
    .scratch_need = sq8_scratch,
    .search1 = sq8_search1,
    .bytes = sq8_bytes,
    .save = sq8_save,
    .load = sq8_load,
    .destroy = sq8_destroy,
};

int es__sq8_new(es__ix **out, int dim, int ip, es_index_params *p, es_err *err) {
    sq8_ix *s = es__calloc(1, sizeof *s);
    if (!s) return es__err(err, ES_ENOMEM, "sq8: out of memory");
    s->h = (es__ix){.vt = &sq8_vt, .dim = dim, .ip = ip, .p = p};
    *out = &s->h;
    return ES_OK;
}
