/*
 * model.h — internal view of es_model: a storage (embedding table) plus a
 * net (dense part) plus the schema they were trained on, with the batch
 * buffers that connect them.  Shared by model.c (forward/backward, save,
 * load) and train.c (the training loop).
 */
#ifndef ES_TRAIN_MODEL_H
#define ES_TRAIN_MODEL_H

#include "core/core.h"
#include "format/file.h"
#include "model/net.h"
#include "model/nest.h"
#include "storage/storage.h"

struct es_model {
    es_net_params np;
    es_storage *st;
    es_net *net;
    /* Matryoshka (np.n_prefix > 1): the nets at the prefixes below dim,
     * used by es_model_train_batch (the nested loss) and by eval/predict
     * at the level es_model_set_prefix chose (prefix_level, -1: dim);
     * nest_stale: the full net changed since the nest's last pull */
    es_nest *nest;
    int prefix_level;
    int nest_stale;
    int n_dense, n_fields, E, max_batch;
    /* activations for one batch of max_batch rows (one allocation) */
    float *buf;
    float *emb;     /* [max_batch, F, E] */
    float *demb;    /* [max_batch, F, E] */
    float *logit;   /* [max_batch] */
    float *dlogit;  /* [max_batch] */
    double *row_loss; /* [max_batch] each row's loss (the fused step, train_rows) */
    /* reader parameters the model was trained with; strings owned */
    es_reader_params rp;
    char *rp_columns;
    /* reader parameters for eval/predict (es_model_set_reader_params;
     * in_set = 0: rp), in_columns owned; note: es_model_input_note */
    es_reader_params in_rp;
    char *in_columns;
    int in_set;
    char note[512];
    /* how es_model_predict_file prints a probability
     * (es_model_set_predict_digits): 0 = "%.6f", 1..9 = "%.*g" */
    int pred_digits;
    /* metadata (owned copies) */
    int n_meta, cap_meta;
    char **meta_key;
    char **meta_val;
    es_batch one;   /* 1-row batch for es_model_embedding */
    /* es_model_predict_mem's reader and batch, kept for the next call with
     * the same name and label setting (es__model_mem_input); NULL: none */
    es_reader *mem_r;
    es_batch mem_b;
    char *mem_name;
    int mem_label;
    es_tensor_ref tref; /* the last es_model_tensor answer (its name lives here) */
    es_err err;
    size_t mapped_bytes; /* bytes of tensors es__model_load mapped from the file instead of copying */
};

/* Create a model for training.  vocab may be NULL if the storage does not
 * need one. */
int es__model_create(es_model **out, const es_net_params *np, const es_storage_params *sp, const es_vocab *vocab,
                     const es_reader_params *rp, es_err *err);
/* Set a metadata entry (copied; replaces an existing key). */
int es__model_set_meta(es_model *m, const char *key, const char *value);
/* The architecture step of a staged storage's search on validation batch b
 * (model.c; storage.h es__staged). */
int es__model_arch_batch(es_model *m, const es_batch *b);
/* The storage's ops->step_prepare for b, read into pipeline slot k (the
 * training pipeline's reader thread calls it; see storage.h). */
void es__model_step_prepare(es_model *m, const es_batch *b, int k);
/* Write the model (with optimizer state when with_state) atomically. */
int es__model_save(es_model *m, const char *path, int with_state, es_err *err);
/* The model file of a run across processes, written by rank 0 from its
 * shard model m (es__storage_write_whole): every metadata entry and tensor
 * declared and the in-memory ones written; *w is then streaming, and the
 * bytes of row table i (wt->tensor[i]) go to tensor rows_tensor[i] (of
 * wt->n) by es__fwriter_append (es__dist_write_rows), then
 * es__fwriter_commit.  On failure nothing is
 * left behind and *w is NULL. */
int es__model_save_whole_begin(es_model *m, const char *path, const es__whole_table *wt, es_fwriter **w, int *rows_tensor,
                               es_err *err);
/* Load a model file; with_state also restores optimizer state.  Large
 * tensors are mapped copy-on-write from the file rather than copied where
 * possible (ES_NO_REMAP=1 in the environment copies everything). */
int es__model_load(es_model **out, const char *path, unsigned flags, int with_state, es_err *err);
/* es__model_load flag: accept a shard (storage.shard, a checkpoint of a run
 * across processes, docs/scale.md); without it a shard is ES_EFORMAT. */
#define ES__LOAD_SHARD (1u << 16)
/* es_model_checkpoint_load with es__model_load flags (ES__LOAD_SHARD). */
int es__model_checkpoint_load(es_model **out, const char *path, es_checkpoint *pos, unsigned flags, es_err *err);
/* Bytes of tensors the load mapped in place (0 for a created model, with
 * ES_NO_REMAP=1, or when nothing qualified). */
size_t es__model_mapped_bytes(const es_model *m);

/* Open `path` for eval/predict the way m was trained (input.c): the reader
 * parameters of the model (or es_model_set_reader_params), CSV columns
 * matched to the model's fields by name, libffm read with the model's
 * field count; checks the shape against the model and allocates b (batch
 * of max_batch rows).  Sets m->note (unused columns).  Errors go to m->err
 * with a hint of the option that fits. */
int es__model_open_input(es_model *m, const char *path, int has_label, es_reader **r, es_batch *b);
int es__model_open_input_mem(es_model *m, const char *path, const void *data, size_t n, int has_label, es_reader **r,
                             es_batch *b);
/* es__model_open_input_mem for es_model_predict_mem, with the reader and
 * batch owned by m and reused: a call with the same name and has_label as
 * the last reads the new bytes with the last call's reader (Criteo,
 * libsvm, libffm: es__reader_reset_mem), which gives what a fresh open
 * gives without its allocations.  A one-row request to `embstore serve`
 * spent a fifth of its time opening.  Errors as es__model_open_input_mem;
 * es__model_mem_input_drop frees them (es_model_free, a change of reader
 * parameters). */
int es__model_mem_input(es_model *m, const char *name, const void *data, size_t n, int has_label, es_reader **r,
                        es_batch **b);
void es__model_mem_input_drop(es_model *m);
/* After a reader error while reading for eval/predict (the message already
 * in m->err): append what the model expects and which option fits, when
 * the error was a line with the wrong number of columns. */
void es__model_input_hint(es_model *m, const es_reader *r, int has_label);
/* A model needs at least one categorical field: a clear ES_EINVAL naming
 * the file when the reader has none. */
int es__reader_require_fields(const es_reader *r, const char *path, es_err *err);

/* The net and storage parameters of model parameters p (step.c): checks
 * every field (ES_EINVAL naming it; the storage options are parsed) and
 * resolves defaults, the budget too (p->budget, or the method's default
 * when 0).  np == NULL: only check, and set sp->budget when sp is not
 * NULL. */
int es__model_params_resolve(const es_model_params *p, es_net_params *np, es_storage_params *sp, es_err *err);
/* ES_ENOMEM (with the figures) when the model of np and sp cannot fit in
 * memory; the table's serving bytes are the budget in bytes, a fraction of
 * the full table of vocab, or the full table itself. */
int es__model_check_memory(const es_net_params *np, const es_storage_params *sp, const es_vocab *vocab, es_err *err);

/* Matryoshka lists: "p1,p2,..." prefixes (each an integer in 1..4096) and
 * "w1,w2,..." weights (finite, >= 0); the count, or -1 when s is not such a
 * list of at most max entries. */
int es__parse_prefix_list(const char *s, int *v, int max);
int es__parse_prefix_weights(const char *s, float *v, int max);

#endif
