/*
 * registry.c — the table of storage methods, one line per method.  A new
 * method adds its ops here (and its own file and tests); nothing else in
 * the library needs to know about it.
 */
#include "storage/storage.h"

extern const es_storage_ops es__storage_full;
extern const es_storage_ops es__storage_hash;
extern const es_storage_ops es__storage_unified;
extern const es_storage_ops es__storage_qr;
extern const es_storage_ops es__storage_robe;
extern const es_storage_ops es__storage_dhe;
extern const es_storage_ops es__storage_mde;
extern const es_storage_ops es__storage_adapt;
extern const es_storage_ops es__storage_multihash;
extern const es_storage_ops es__storage_tt;
extern const es_storage_ops es__storage_dpq;
extern const es_storage_ops es__storage_mgqe;
extern const es_storage_ops es__storage_pep;
extern const es_storage_ops es__storage_deeplight;
extern const es_storage_ops es__storage_dedup;
extern const es_storage_ops es__storage_fielddim;
extern const es_storage_ops es__storage_autodim;
extern const es_storage_ops es__storage_optembed;
extern const es_storage_ops es__storage_autosrh;
extern const es_storage_ops es__storage_blockdim;

static const es_storage_ops *const methods[] = {
    &es__storage_full,
    &es__storage_hash,
    &es__storage_unified,
    &es__storage_qr,
    &es__storage_robe,
    &es__storage_dhe,
    &es__storage_mde,
    &es__storage_adapt,
    &es__storage_multihash,
    &es__storage_tt,
    &es__storage_dpq,
    &es__storage_mgqe,
    &es__storage_pep,
    &es__storage_deeplight,
    &es__storage_dedup,
    &es__storage_fielddim,
    &es__storage_autodim,
    &es__storage_optembed,
    &es__storage_autosrh,
    &es__storage_blockdim,
};

const es_storage_ops *es__storage_find(const char *name) {
    if (!name) return NULL;
    for (size_t i = 0; i < ES_ARRAY_LEN(methods); i++)
        if (strcmp(methods[i]->name, name) == 0) return methods[i];
    return NULL;
}

int es__storage_n_methods(void) { return (int)ES_ARRAY_LEN(methods); }

const es_storage_ops *es__storage_method_at(int i) {
    return i >= 0 && i < (int)ES_ARRAY_LEN(methods) ? methods[i] : NULL;
}
