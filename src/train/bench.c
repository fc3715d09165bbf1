/*
 * bench.c — measurements the CLI's benchmark commands need from inside the
 * library: the list of storage methods and the lookup speed of a method.
 */
#include "model.h"

int es_storage_methods(const char **names, const char **summaries, int max) {
    int n = es__storage_n_methods();
    for (int i = 0; i < n && i < max; i++) {
        const es_storage_ops *ops = es__storage_method_at(i);
        if (names) names[i] = ops->name;
        if (summaries) summaries[i] = ops->summary ? ops->summary : "";
    }
    return n;
}

int es_bench_lookup(const es_train_params *p, int repeat, double *lookups_per_s, size_t *bytes, es_err *err) {
    es_reader *r = NULL;
    es_vocab *vocab = NULL;
    es_storage *st = NULL;
    es_batch *batches = NULL;
    float *out = NULL;
    int nb = 0, cap_b = 0, rc;
    *lookups_per_s = 0;
    *bytes = 0;
    if (repeat <= 0) repeat = 1;
    es__threads_set(p->threads);
    es_net_kind kind;
    if (es__net_kind_parse(p->model, &kind) != 0) return es__err(err, ES_EINVAL, "unknown model '%s'", p->model);
    if ((rc = es_reader_open(&r, p->train_path, &p->reader, err)) != 0) return rc;
    int n_dense = es_reader_n_dense(r), n_fields = es_reader_n_fields(r);
    if ((rc = es__reader_require_fields(r, p->train_path, err)) != 0) goto done;
    if ((rc = es_vocab_create(&vocab, n_fields)) != 0) goto oom;
    /* read the rows once into memory so that timing covers lookups only */
    uint64_t rows = 0;
    for (;;) {
        if (nb == cap_b) {
            int c = cap_b ? 2 * cap_b : 64;
            es_batch *nbt = es__realloc(batches, (size_t)c * sizeof *nbt);
            if (!nbt) goto oom;
            batches = nbt;
            cap_b = c;
        }
        es_batch *b = &batches[nb];
        memset(b, 0, sizeof *b);
        if (es_batch_alloc(b, p->batch, n_dense, n_fields, (size_t)p->batch * (size_t)(n_fields + 1)) != 0) goto oom;
        nb++;
        int n = es_reader_next(r, b);
        if (n < 0) {
            rc = es__err(err, n, "%s", es_reader_errmsg(r));
            goto done;
        }
        if (n == 0) break;
        if ((rc = es_vocab_add_batch(vocab, b)) != 0) goto oom;
        rows += (uint64_t)n;
        if (p->max_rows && rows >= p->max_rows) break;
    }
    es_model_params mp = es_model_params_from_train(p, n_dense, n_fields);
    es_net_params np;
    es_storage_params sp;
    if ((rc = es__model_params_resolve(&mp, &np, &sp, err)) != 0) goto done;
    if ((rc = es__storage_create(&st, &sp, vocab, err)) != 0) goto done;
    *bytes = st->param_bytes + st->aux_bytes;
    size_t per = (size_t)p->batch * (size_t)n_fields * (size_t)sp.dim;
    int nt = es__threads_get();
    out = es__alloc_aligned(per * sizeof(float));
    if (!out) goto oom;
    double t0 = es__now();
    uint64_t lookups = 0;
    for (int it = 0; it < repeat; it++) {
        for (int k = 0; k < nb; k++) {
            const es_batch *b = &batches[k];
            if (b->n == 0) continue;
            if (nt <= 1) {
                st->ops->lookup(st, b, 0, b->n, out);
            } else {
ES__OMP(omp parallel for schedule(static) num_threads(nt))
                for (int t = 0; t < nt; t++) {
                    int a = (int)((int64_t)b->n * t / nt), z = (int)((int64_t)b->n * (t + 1) / nt);
                    if (z > a) st->ops->lookup(st, b, a, z, out + (size_t)a * (size_t)n_fields * (size_t)sp.dim);
                }
            }
            lookups += (uint64_t)b->n * (uint64_t)n_fields;
        }
    }
    double dt = es__now() - t0;
    *lookups_per_s = dt > 0 ? (double)lookups / dt : 0;
    rc = ES_OK;
    goto done;
oom:
    rc = es__err(err, ES_ENOMEM, "out of memory");
done:
    es__free_aligned(out);
    es__storage_free(st);
    for (int k = 0; k < nb; k++) es_batch_free(&batches[k]);
    es__free(batches);
    es_vocab_free(vocab);
    es_reader_free(r);
    return rc;
}
