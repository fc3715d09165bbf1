/*
 * storage_io.c — a storage inside an embstore container file: the metadata
 * that re-creates it and the tensors that hold its arrays.  Table files
 * (table.c) use it; the names and formats are those of the storage part of
 * a model file (src/train/model.c writes the same keys and tensor names),
 * so the two file kinds describe a storage the same way and model.c can
 * move onto these functions without changing its files.
 *
 *   metadata  storage.method, .dim, .n_fields, .max_batch, .budget_bytes,
 *             .seed, .init_scale, .opt ("kind,lr,eps,beta1,beta2,init_acc,
 *             ftrl_alpha,ftrl_beta,ftrl_l1,ftrl_l2,row_l2[,row_l2_freq]"; older
 *             files: the first 6; row_l2_freq only when it is not 0),
 *             .opts (the caller's method options), .resolved (s->meta),
 *             .param_bytes, .aux_bytes
 *   tensors   "storage.<name>" for every array the method lists; its
 *             optimizer state "opt.<x>" as "opt.storage.<x>", so that one
 *             rule ("opt." first) finds all optimizer state in any file.
 *
 * Everything read back is checked: integers strictly parsed and range
 * checked (by es__storage_create), tensors by dtype and byte size against
 * the arrays the re-created storage lists.
 */
#include "storage/storage.h"

#include <errno.h>
#include <stdio.h>
#include <math.h>
#include <unistd.h>

static int is_opt_name(const char *name) { return strncmp(name, "opt.", 4) == 0; }

int es__storage_file_name(const char *ref_name, char *out, size_t cap) {
    int n = is_opt_name(ref_name) ? snprintf(out, cap, "opt.storage.%s", ref_name + 4)
                                   : snprintf(out, cap, "storage.%s", ref_name);
    return (n < 0 || (size_t)n >= cap || (size_t)n >= ES_TENSOR_NAME_MAX) ? ES_EINVAL : ES_OK;
}

/* The method's tensor list (allocated; *n set). */
static int list_refs(es_storage *s, es_tensor_ref **refs, int *n, es_err *err) {
    *refs = NULL;
    *n = 0;
    int k = es__storage_tensors(s, NULL, 0);
    if (k < 0) return es__err(err, ES_EINVAL, "storage %s: cannot list its tensors", s->ops->name);
    *refs = es__calloc((size_t)k + 1, sizeof **refs);
    if (!*refs) return es__err(err, ES_ENOMEM, "out of memory");
    es__storage_tensors(s, *refs, k);
    *n = k;
    return ES_OK;
}

static int storage_write(es_fwriter *w, es_storage *s, int with_state, const es__whole_table *whole, es_err *err);
int es__storage_write(es_fwriter *w, es_storage *s, int with_state, es_err *err) { return storage_write(w, s, with_state, NULL, err); }
int es__storage_write_whole(es_fwriter *w, es_storage *s, const es__whole_table *wt, es_err *err) { return storage_write(w, s, 0, wt, err); }

void es__whole_table_free(es__whole_table *wt) {
    es__free(wt->tensor);
    es__free(wt->rows);
    wt->tensor = NULL;
    wt->rows = NULL;
    wt->n = 0;
}

static int storage_write(es_fwriter *w, es_storage *s, int with_state, const es__whole_table *whole, es_err *err) {
    const es_storage_params *sp = &s->p;
    int rc = 0;
    rc |= es__fwriter_meta(w, "storage.method", sp->method);
    rc |= es__fwriter_metaf(w, "storage.dim", "%d", sp->dim);
    rc |= es__fwriter_metaf(w, "storage.n_fields", "%d", sp->n_fields);
    rc |= es__fwriter_metaf(w, "storage.max_batch", "%d", sp->max_batch);
    rc |= es__fwriter_metaf(w, "storage.budget_bytes", "%.0f", s->budget_bytes);
    rc |= es__fwriter_metaf(w, "storage.seed", "%llu", (unsigned long long)sp->seed);
    rc |= es__fwriter_metaf(w, "storage.init_scale", "%.9g", sp->init_scale);
    /* The 11-number record (FTRL and lazy L2 since the FTRL change), and a
     * 12th, row_l2_freq, only when frequency-aware L2 is on, so files
     * without it stay as before (and load as off); readers take the 6 of
     * older files too. */
    char optrec[512];
    int ol = snprintf(optrec, sizeof optrec, "%d,%.9g,%.9g,%.9g,%.9g,%.9g,%.9g,%.9g,%.9g,%.9g,%.9g", (int)sp->opt.kind,
                      sp->opt.lr, sp->opt.eps, sp->opt.beta1, sp->opt.beta2, sp->opt.init_acc, sp->opt.ftrl_alpha,
                      sp->opt.ftrl_beta, sp->opt.ftrl_l1, sp->opt.ftrl_l2, sp->opt.row_l2);
    if (sp->opt.row_l2_freq != 0 && ol > 0 && (size_t)ol < sizeof optrec)
        snprintf(optrec + ol, sizeof optrec - (size_t)ol, ",%.9g", sp->opt.row_l2_freq);
    rc |= es__fwriter_meta(w, "storage.opt", optrec);
    rc |= es__fwriter_meta(w, "storage.opts", whole && whole->opts ? whole->opts : sp->opts ? sp->opts : "");
    rc |= es__fwriter_meta(w, "storage.resolved", s->meta);
    rc |= es__fwriter_metaf(w, "storage.param_bytes", "%zu", whole ? whole->param_bytes : s->param_bytes);
    rc |= es__fwriter_metaf(w, "storage.aux_bytes", "%zu", s->aux_bytes);
    /* Only for a quantized table: files without the key are fp32, so older
     * files (and fp32 models) are unchanged. */
    if (es__storage_precision(s) != ES_PREC_FP32) rc |= es__fwriter_meta(w, "storage.precision", es__prec_name(es__storage_precision(s)));
    /* How it trained at that precision (qat, alpt): a resume re-creates the
     * training state (master copy, steps) from it; a load to serve ignores it. */
    if (es__storage_qtrain(s) != ES_QTRAIN_NONE) rc |= es__fwriter_meta(w, "storage.qtrain", es__qtrain_name(es__storage_qtrain(s)));
    /* Only for a shard (a checkpoint of a run across processes,
     * docs/scale.md): "rank/ranks"; whole tables are unchanged. */
    if (sp->shard_n > 1 && !whole) rc |= es__fwriter_metaf(w, "storage.shard", "%d/%d", sp->shard_rank, sp->shard_n);
    if (rc) return es__err(err, ES_ENOMEM, "cannot add the storage metadata: %s", es__fwriter_errmsg(w));

    es_tensor_ref *refs;
    int n;
    if ((rc = list_refs(s, &refs, &n, err)) != 0) return rc;
    for (int i = 0; i < n && rc == 0; i++) {
        if (!with_state && is_opt_name(refs[i].name)) continue;
        es_tensor_ref t = refs[i];
        if (es__storage_file_name(refs[i].name, t.name, sizeof t.name) != 0) {
            rc = es__err(err, ES_EINVAL, "storage tensor name too long: %s", refs[i].name);
            break;
        }
        int streamed = 0;
        for (int j = 0; whole && j < whole->n && !streamed; j++)
            if (strcmp(refs[i].name, whole->tensor[j]) == 0) streamed = 1 + j;
        if (streamed) { /* the whole table's rows, appended by the caller */
            /* from its dtype and row shape: a shard may hold none of it */
            uint64_t per = 1;
            for (int d = 1; d < t.ndim; d++) per *= t.shape[d];
            const size_t nb = t.ndim >= 1 ? es__dtype_bytes(t.dtype, per * whole->rows[streamed - 1]) : SIZE_MAX;
            if (nb == SIZE_MAX) {
                rc = es__err(err, ES_EINVAL, "storage tensor %s is not a table of rows", refs[i].name);
                break;
            }
            t.nbytes = nb;
            t.shape[0] = whole->rows[streamed - 1];
        }
        if ((rc = streamed ? es__fwriter_tensor_stream(w, &t) : es__fwriter_tensor(w, &t)) != 0)
            es__err(err, rc, "cannot add tensor %s: %s", t.name, es__fwriter_errmsg(w));
    }
    es__free(refs);
    return rc;
}

int es__storage_params_read(const es_file *f, const char *path, es_storage_params *sp, char **opts_out, es_err *err) {
    *sp = es__storage_params_default();
    *opts_out = NULL;
    int rc;
    const char *s;
    double x;
    sp->method = es__file_meta(f, "storage.method");
    if (!sp->method || !*sp->method) return es__err(err, ES_EFORMAT, "%s: metadata lacks 'storage.method'", path);
    if ((rc = es__meta_int(path, "storage.dim", es__file_meta(f, "storage.dim"), 1, 1 << 16, &sp->dim, err)) != 0) return rc;
    sp->n_fields = 0; /* the caller decides when they are required */
    sp->max_batch = 0;
    if ((s = es__file_meta(f, "storage.n_fields")) && (rc = es__meta_int(path, "storage.n_fields", s, 1, 1 << 20, &sp->n_fields, err)))
        return rc;
    if ((s = es__file_meta(f, "storage.max_batch")) && (rc = es__meta_int(path, "storage.max_batch", s, 1, 1 << 24, &sp->max_batch, err)))
        return rc;
    if ((s = es__file_meta(f, "storage.budget_bytes"))) {
        if ((rc = es__meta_f64(path, "storage.budget_bytes", s, 0, 1e18, &x, err)) != 0) return rc;
        sp->budget = x > 1 ? x : 0; /* a resolved budget is in bytes: never re-read it as a fraction */
    }
    if ((s = es__file_meta(f, "storage.seed")) && (rc = es__meta_u64(path, "storage.seed", s, 0, UINT64_MAX, &sp->seed, err))) return rc;
    if ((s = es__file_meta(f, "storage.init_scale"))) {
        if ((rc = es__meta_f64(path, "storage.init_scale", s, 0, 3.4e38, &x, err)) != 0) return rc;
        sp->init_scale = (float)x;
    }
    if ((s = es__file_meta(f, "storage.opt"))) {
        if ((rc = es__optim_meta_read(path, "storage.opt", s, 6, &sp->opt, err)) != 0) return rc;
        if (sp->opt.kind == ES_OPT_ADAM)
            return es__err(err, ES_EFORMAT, "%s: metadata storage.opt=%.64s: Adam is not a table optimizer", path, s);
    }
    /* storage.precision: absent is fp32; otherwise the storage is created
     * as codes of that precision (es_storage_params.precision), so a
     * quantized table is never expanded to fp32 by the load; with
     * storage.qtrain (qat, alpt) as a table that trains at it, which the
     * caller keeps only for a load with the training state. */
    if ((s = es__file_meta(f, "storage.precision"))) {
        if (es__prec_parse(s, &sp->precision) != ES_OK)
            return es__err(err, ES_EFORMAT, "%s: metadata storage.precision=%.32s is not a precision (fp32, fp16, int16, int8, int4, int2)",
                           path, s);
        const es_storage_ops *ops = es__storage_find(sp->method);
        if (sp->precision != ES_PREC_FP32 && ops && !ops->rows)
            return es__err(err, ES_EFORMAT, "%s: metadata storage.precision=%s, but method '%s' has no quantized tables", path, s,
                           ops->name);
    }
    if ((s = es__file_meta(f, "storage.qtrain"))) {
        if (es__qtrain_parse(s, &sp->qtrain) != ES_OK || (sp->qtrain != ES_QTRAIN_NONE && sp->precision == ES_PREC_FP32))
            return es__err(err, ES_EFORMAT, "%s: metadata storage.qtrain=%.32s is not qat or alpt for a precision below fp32", path, s);
    }
    /* storage.shard "k/N": rank k's shard of a table split over N
     * processes; the caller refuses it unless it resumes such a run */
    if ((s = es__file_meta(f, "storage.shard"))) {
        int k = -1, nn = 0, used = 0;
        if (sscanf(s, "%d/%d%n", &k, &nn, &used) != 2 || s[used] != 0 || nn < 2 || nn > (1 << 20) || k < 0 || k >= nn)
            return es__err(err, ES_EFORMAT, "%s: metadata storage.shard=%.32s is not rank/ranks", path, s);
        sp->shard_rank = k;
        sp->shard_n = nn;
    }
    /* The resolved hyper-parameters (rows per table, ...) take precedence
     * over budget solving, so the shapes match the saved tensors; then the
     * caller's own options the method knows; files from before the option
     * tables keep min_count, chunks, subtables and share in keys of their
     * own, folded in for the methods that take them. */
    static const char *const legacy_keys[] = {"min_count", "chunks", "subtables", "share"};
    char legacy[160];
    size_t o = 0;
    legacy[0] = 0;
    for (int i = 0; i < 4; i++) {
        char key[32];
        int64_t v;
        snprintf(key, sizeof key, "storage.%s", legacy_keys[i]);
        if (!(s = es__file_meta(f, key))) continue;
        if ((rc = es__meta_i64(path, key, s, 0, INT32_MAX, &v, err)) != 0) return rc;
        o += (size_t)snprintf(legacy + o, sizeof legacy - o, "%s%s=%lld", o ? "," : "", legacy_keys[i], (long long)v);
    }
    char *opts = es__storage_load_opts(sp->method, es__file_meta(f, "storage.resolved"), es__file_meta(f, "storage.opts"), legacy);
    if (!opts) return es__err(err, ES_ENOMEM, "out of memory");
    sp->opts = opts;
    *opts_out = opts;
    return ES_OK;
}

/* storage.precision: absent is fp32; anything else turns s's fp32 table
 * (just created from the metadata) into an empty code table of that
 * precision for the tensors to fill, so a quantized table is never
 * expanded to fp32 after the load. */
static int read_precision(es_storage *s, const es_file *f, const char *path, es_err *err) {
    const char *v = es__file_meta(f, "storage.precision");
    es_precision p;
    if (!v) return ES_OK;
    if (es__prec_parse(v, &p) != ES_OK)
        return es__err(err, ES_EFORMAT, "%s: metadata storage.precision=%.32s is not a precision (fp32, fp16, int16, int8, int4, int2)",
                       path, v);
    if (p == ES_PREC_FP32 || es__storage_precision(s) == p) return ES_OK; /* created at it (es__storage_params_read) */
    if (!s->ops->rows)
        return es__err(err, ES_EFORMAT, "%s: metadata storage.precision=%s, but method '%s' has no quantized tables", path, v,
                       s->ops->name);
    es_err e = {0};
    int rc = es__storage_convert(s, p, 0, &e);
    if (rc != ES_OK) return es__err(err, rc, "%s: %s table: %s", path, v, e.msg);
    return ES_OK;
}

/* Read refs[from, n) from the file into their arrays (see es__storage_read_tensors). */
static int read_refs(es_storage *s, es_file *f, const es_tensor_ref *refs, int from, int n, int with_state, const char *path,
                     size_t *mapped, es_err *err) {
    const int inplace = es__file_inplace_ok(f);
    int rc = 0;
    for (int i = from; i < n && rc == 0; i++) {
        if (!with_state && is_opt_name(refs[i].name)) continue;
        char name[ES_TENSOR_NAME_MAX];
        if (es__storage_file_name(refs[i].name, name, sizeof name) != 0) {
            rc = es__err(err, ES_EINVAL, "storage tensor name too long: %s", refs[i].name);
            break;
        }
        const es_tensor_ref *t = es__file_tensor(f, name);
        if (!t) {
            rc = es__err(err, ES_EFORMAT, "%s: tensor '%s' is missing", path, name);
            break;
        }
        if (t->dtype != refs[i].dtype || t->nbytes != refs[i].nbytes) {
            rc = es__err(err, ES_EFORMAT, "%s: tensor '%s' has %s x %zu bytes, the %s storage expects %s x %zu bytes", path,
                         name, es__dtype_name(t->dtype), t->nbytes, s->ops->name, es__dtype_name(refs[i].dtype),
                         refs[i].nbytes);
            break;
        }
        int ti = (int)(t - es__file_tensor_at(f, 0)); /* es__file_tensor points into that table */
        ES_ASSERT(es__file_tensor_at(f, ti) == t);
        rc = es__file_place(f, ti, refs[i].data, inplace, mapped, path, err);
    }
    return rc;
}

int es__storage_read_tensors(es_storage *s, es_file *f, int with_state, const char *path, size_t *mapped, es_err *err) {
    es_tensor_ref *refs;
    int n, rc;
    if ((rc = read_precision(s, f, path, err)) != 0) return rc;
    if ((rc = list_refs(s, &refs, &n, err)) != 0) return rc;
    rc = read_refs(s, f, refs, 0, n, with_state, path, mapped, err);
    if (rc == 0 && s->ops->after_load) rc = s->ops->after_load(s, err);
    /* A second stage: a method whose arrays take their shapes from tensors
     * just read (mde's tiers of codes: map.tiers gives each tier's rows and
     * dim) makes them in after_load and lists them after the others; those
     * are read now, and after_load called again. */
    if (rc == 0 && s->ops->after_load) {
        es_tensor_ref *more;
        int n2;
        if ((rc = list_refs(s, &more, &n2, err)) == 0) {
            if (n2 > n) {
                for (int i = 0; i < n && rc == 0; i++)
                    if (strcmp(refs[i].name, more[i].name) != 0)
                        rc = es__err(err, ES_EINVAL, "storage %s: its tensor list changed over the load (%s, then %s)",
                                     s->ops->name, refs[i].name, more[i].name);
                if (rc == 0) rc = read_refs(s, f, more, n, n2, with_state, path, mapped, err);
                if (rc == 0) rc = s->ops->after_load(s, err);
            }
            es__free(more);
        }
    }
    es__free(refs);
    /* Codes whose scale or bias is not a number (a file written wrong, with
     * a good checksum) would predict NaN: refused when the file was read
     * whole for its checksums anyway; --no-verify trusts the file. */
    if (rc == 0 && es__file_verified(f) && s->ops->rows)
        for (int i = 0; rc == 0; i++) {
            es_rows *t = s->ops->rows(s, i);
            if (!t) break;
            uint64_t bad = es__rows_check_codes(t);
            if (bad != UINT64_MAX)
                rc = es__err(err, ES_EFORMAT, "%s: table %d row %llu: the %s codes' %s is not a finite number (a corrupt file)",
                             path, i, (unsigned long long)bad, es__prec_name(t->prec),
                             t->prec == ES_PREC_FP16 ? "value" : "scale or bias");
        }
    return rc;
}
