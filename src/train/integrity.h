/*
 * integrity.h — internal checks that keep es_train from reporting results
 * of a run other than the one asked for:
 *   runcfg.c    the run description (es_train_describe with the reader's
 *               resolved parameters), its record in a checkpoint and the
 *               comparison --resume makes;
 *   memcheck.c  the up-front estimate of the memory a model needs, refused
 *               before anything is allocated when it cannot fit.
 * The file identity they rest on is in core/fileid.h.
 */
#ifndef ES_TRAIN_INTEGRITY_H
#define ES_TRAIN_INTEGRITY_H

#include "model.h"

/* Keys that may differ between a checkpoint and the command resuming it:
 * more epochs continue the same run, and the validation file is read only
 * after training, entirely by the resuming command. */
#define ES__RESUME_MAY_CHANGE "epochs,valid.size,valid.head"

/* es_train_describe with explicit reader parameters (those the reader
 * resolved: format and delimiter detected from the file name), so that
 * leaving --format to be detected and naming it describe the same run. */
int es__train_describe(const es_train_params *p, const es_reader_params *rp, char *buf, size_t cap, es_err *err);

/* Record a description in the model's metadata, one "train.cfg.<key>"
 * entry per line (checkpoints and model files carry it). */
int es__train_cfg_record(es_model *m, const char *cfg);

/* Compare the description recorded in checkpoint m (loaded from `path`)
 * with cfg, the description of the command resuming it.  ES_OK when they
 * agree (except ES__RESUME_MAY_CHANGE); else ES_EINVAL with every
 * difference listed in err. */
int es__train_cfg_check_resume(const es_model *m, const char *path, const char *cfg, es_err *err);

/* Refuse a model that cannot fit: estimate the bytes of the dense net
 * (parameters, gradients, optimizer state, activations for np->max_batch
 * rows), of the table (table_bytes: its serving bytes, 0 if unknown yet,
 * plus the optimizer state of sp) and of the batch buffers, with
 * overflow-checked arithmetic, and compare them with physical memory and
 * with what RLIMIT_AS and RLIMIT_DATA still allow.  ES_OK or ES_ENOMEM with
 * the bytes needed and available in err. */
int es__train_check_memory(const es_net_params *np, const es_storage_params *sp, double table_bytes, es_err *err);

/* Batches the training pipeline's ring holds for batches of `batch` rows
 * (train.c): at most ES__PIPE_SLOTS, about 4096 rows in all, at least 2. */
int es__pipeline_slots(int batch);

#endif
