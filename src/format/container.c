/*
 * container.c — the public, read-only view of container files
 * (es_file_* in embstore.h) for tools such as `embstore inspect`:
 * thin wrappers over the internal reader in file.c.
 */
#include "format/file.h"

int es_file_open(es_file **out, const char *path, unsigned flags, es_err *err) {
    return es__file_open(out, path, (flags & ES_LOAD_NO_VERIFY) ? ES_FILE_NO_VERIFY : 0, err);
}
void es_file_close(es_file *f) { es__file_close(f); }
uint32_t es_file_version(const es_file *f) { return es__file_version(f); }
uint64_t es_file_size(const es_file *f) { return es__file_size(f); }
int es_file_n_meta(const es_file *f) { return es__file_n_meta(f); }
void es_file_meta_at(const es_file *f, int i, const char **key, const char **value) { es__file_meta_at(f, i, key, value); }
const char *es_file_meta(const es_file *f, const char *key) { return es__file_meta(f, key); }
int es_file_n_tensors(const es_file *f) { return es__file_n_tensors(f); }

int es_file_tensor_info(const es_file *f, int i, const char **name, const char **dtype, int *ndim, uint64_t shape[4],
                             uint64_t *nbytes) {
    if (i < 0 || i >= es__file_n_tensors(f)) return ES_ERANGE;
    const es_tensor_ref *t = es__file_tensor_at(f, i);
    *name = t->name;
    *dtype = es__dtype_name(t->dtype);
    *ndim = t->ndim;
    for (int d = 0; d < 4; d++) shape[d] = d < t->ndim ? t->shape[d] : 0;
    *nbytes = t->nbytes;
    return ES_OK;
}
