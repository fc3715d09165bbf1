/*
 * resume_harness.h — the checkpoint check every table optimizer and
 * regularizer must pass: train a model from `mp` on the first batches of
 * the Criteo sample, checkpoint it, train on; a model loaded from the
 * checkpoint and trained on the same batches predicts the same bits, and
 * so does the first model saved as a plain file and loaded again.
 * mp's n_dense and n_fields are set from the data; batch must be <= 64.
 * `tag` names the case in failure messages.  One thread.
 */
#ifndef ES_TEST_RESUME_HARNESS_H
#define ES_TEST_RESUME_HARNESS_H

#include "embstore.h"

void es_test_checkpoint_continues(es_model_params mp, const char *tag);

#endif
