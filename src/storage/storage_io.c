/*
 * storage_io.c — a storage inside an embstore container file: the metadata
 * that re-creates it and the tensors that hold its arrays.  Table files
 * (table.c) use it; the names and formats are those of the storage part of
 * a model file (src/train/model.c writes the same keys and tensor names),
 * so the two file kinds describe a storage the same way and model.c can
 * move onto these functions without changing its files.
 *
 *   metadata  storage.method, .dim, .n_fields, .max_batch, .budget_bytes,
 *             .seed, .init_scale, .opt ("kind,lr,eps,beta1,beta2,init_acc"),
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

int es__storage_write(es_fwriter *w, es_storage *s, int with_state, es_err *err) {
    const es_storage_params *sp = &s->p;
    int rc = 0;
    rc |= es__fwriter_meta(w, "storage.method", sp->method);
    rc |= es__fwriter_metaf(w, "storage.dim", "%d", sp->dim);
    rc |= es__fwriter_metaf(w, "storage.n_fields", "%d", sp->n_fields);
    rc |= es__fwriter_metaf(w, "storage.max_batch", "%d", sp->max_batch);
    rc |= es__fwriter_metaf(w, "storage.budget_bytes", "%.0f", s->budget_bytes);
    rc |= es__fwriter_metaf(w, "storage.seed", "%llu", (unsigned long long)sp->seed);
    rc |= es__fwriter_metaf(w, "storage.init_scale", "%.9g", sp->init_scale);
    rc |= es__fwriter_metaf(w, "storage.opt", "%d,%.9g,%.9g,%.9g,%.9g,%.9g", (int)sp->opt.kind, sp->opt.lr, sp->opt.eps,
                            sp->opt.beta1, sp->opt.beta2, sp->opt.init_acc);
    rc |= es__fwriter_meta(w, "storage.opts", sp->opts ? sp->opts : "");
    rc |= es__fwriter_meta(w, "storage.resolved", s->meta);
    rc |= es__fwriter_metaf(w, "storage.param_bytes", "%zu", s->param_bytes);
    rc |= es__fwriter_metaf(w, "storage.aux_bytes", "%zu", s->aux_bytes);
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
        if ((rc = es__fwriter_tensor(w, &t)) != 0)
            es__err(err, rc, "cannot add tensor %s: %s", t.name, es__fwriter_errmsg(w));
    }
    es__free(refs);
    return rc;
}

/* Strict decimal integer in [lo, hi]; 0 when the key is absent (*found 0). */
static int meta_long(const es_file *f, const char *key, long lo, long hi, long *out, int *found, const char *path,
                     es_err *err) {
    const char *v = es__file_meta(f, key);
    *found = 0;
    if (!v) return ES_OK;
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (end == v || *end || errno || x < lo || x > hi)
        return es__err(err, ES_EFORMAT, "%s: metadata %s='%.64s' is not an integer in [%ld, %ld]", path, key, v, lo, hi);
    *out = x;
    *found = 1;
    return ES_OK;
}

int es__storage_params_read(const es_file *f, const char *path, es_storage_params *sp, char **opts_out, es_err *err) {
    *sp = es__storage_params_default();
    *opts_out = NULL;
    long x;
    int found, rc;
    sp->method = es__file_meta(f, "storage.method");
    if (!sp->method || !*sp->method) return es__err(err, ES_EFORMAT, "%s: metadata lacks 'storage.method'", path);
    if ((rc = meta_long(f, "storage.dim", 1, 1 << 16, &x, &found, path, err)) != 0) return rc;
    if (!found) return es__err(err, ES_EFORMAT, "%s: metadata lacks 'storage.dim'", path);
    sp->dim = (int)x;
    sp->n_fields = 0; /* the caller decides when they are required */
    sp->max_batch = 0;
    if ((rc = meta_long(f, "storage.n_fields", 1, 1 << 20, &x, &found, path, err)) != 0) return rc;
    if (found) sp->n_fields = (int)x;
    if ((rc = meta_long(f, "storage.max_batch", 1, 1 << 24, &x, &found, path, err)) != 0) return rc;
    if (found) sp->max_batch = (int)x;
    const char *s;
    if ((s = es__file_meta(f, "storage.budget_bytes"))) {
        char *end;
        double b = strtod(s, &end);
        if (end == s || *end || !(b >= 0) || !isfinite(b))
            return es__err(err, ES_EFORMAT, "%s: metadata storage.budget_bytes='%.64s' is not a byte count", path, s);
        /* a resolved budget is in bytes: never re-read it as a fraction */
        sp->budget = b > 1 ? b : 0;
    }
    if ((s = es__file_meta(f, "storage.seed"))) {
        char *end;
        errno = 0;
        unsigned long long v = strtoull(s, &end, 10);
        if (end == s || *end || errno || *s == '-')
            return es__err(err, ES_EFORMAT, "%s: metadata storage.seed='%.64s' is not a seed", path, s);
        sp->seed = (uint64_t)v;
    }
    if ((s = es__file_meta(f, "storage.init_scale"))) {
        char *end;
        sp->init_scale = strtof(s, &end);
        if (end == s || *end) return es__err(err, ES_EFORMAT, "%s: metadata storage.init_scale='%.64s' is not a number", path, s);
    }
    if ((s = es__file_meta(f, "storage.opt"))) {
        int k = -1, used = 0;
        es_optim_params o = sp->opt;
        if (sscanf(s, "%d,%f,%f,%f,%f,%f%n", &k, &o.lr, &o.eps, &o.beta1, &o.beta2, &o.init_acc, &used) != 6 || s[used] ||
            (k != ES_OPT_SGD && k != ES_OPT_ADAGRAD && k != ES_OPT_ROWWISE_ADAGRAD))
            return es__err(err, ES_EFORMAT, "%s: metadata storage.opt='%.64s' is not a table optimizer", path, s);
        o.kind = (es_optim)k;
        sp->opt = o;
    }
    /* The resolved hyper-parameters (rows per table, ...) come first, so
     * they take precedence over budget solving and the shapes match the
     * saved tensors; the caller's own options follow. */
    const char *user = es__file_meta(f, "storage.opts");
    const char *resolved = es__file_meta(f, "storage.resolved");
    size_t len = (resolved ? strlen(resolved) : 0) + (user ? strlen(user) : 0) + 2;
    char *opts = es__malloc(len);
    if (!opts) return es__err(err, ES_ENOMEM, "out of memory");
    snprintf(opts, len, "%s%s%s", resolved ? resolved : "", (resolved && *resolved && user && *user) ? "," : "", user ? user : "");
    sp->opts = opts;
    *opts_out = opts;
    return ES_OK;
}

/* Put file tensor ti into dst (t->nbytes bytes): in place when allowed
 * and aligned (pages moved out of the handle's private copy, or mapped
 * copy-on-write from a mapped file), by copying otherwise.  The same rule
 * as model.c's place_tensor (see the comment on es__model_load). */
static int place(es_file *f, int ti, const es_tensor_ref *t, void *dst, int inplace, size_t *mapped, const char *path,
                 es_err *err) {
    size_t whole = t->nbytes & ~(size_t)(ES_FILE_PAGE_ALIGN - 1);
    uint64_t off = es__file_tensor_offset(f, ti);
    if (inplace && whole > 0 && off % ES_FILE_PAGE_ALIGN == 0 && (uintptr_t)dst % ES_FILE_PAGE_ALIGN == 0) {
        const char *src = t->data; /* the tail stays readable after a move */
        int rc = es__file_is_mapped(f) ? es__alloc_remap(dst, whole, es__file_fd(f), off) : es__file_move_pages(f, ti, dst, whole);
        if (rc == ES_OK) {
            memcpy((char *)dst + whole, src + whole, t->nbytes - whole);
            if (mapped) *mapped += whole;
            return ES_OK;
        }
        if (rc != ES_EINVAL)
            return es__err(err, rc, "%s: cannot place tensor '%s' from the file: %s", path, t->name, strerror(errno));
    }
    memcpy(dst, t->data, t->nbytes);
    return ES_OK;
}

int es__storage_read_tensors(es_storage *s, es_file *f, int with_state, const char *path, size_t *mapped, es_err *err) {
    es_tensor_ref *refs;
    int n, rc;
    if ((rc = list_refs(s, &refs, &n, err)) != 0) return rc;
    const char *no_remap = getenv("ES_NO_REMAP");
    const int inplace = es__file_fd(f) >= 0 && sysconf(_SC_PAGESIZE) == ES_FILE_PAGE_ALIGN &&
                        !(no_remap && *no_remap && strcmp(no_remap, "0") != 0);
    for (int i = 0; i < n && rc == 0; i++) {
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
        rc = place(f, ti, t, refs[i].data, inplace, mapped, path, err);
    }
    es__free(refs);
    if (rc == 0 && s->ops->after_load) rc = s->ops->after_load(s, err);
    return rc;
}
