/*
 * staged_kill.h — the SIGKILL-and-resume and bad-input checks of the
 * multi-stage methods' tests (test_autodim.c, test_optembed.c, test_autosrh.c).
 *
 * es_test_staged_kill(tag, data, args, stage, batches, every) trains
 * `embstore train DATA ARGS<every> --quiet` twice into $ES_T/<tag>_ref.es
 * (uninterrupted) and $ES_T/<tag>_k.es, kills the second with SIGKILL
 * after its `batches`-th batch of `stage` ("search" or "retrain"; the
 * trainer's fault point ES_TEST_KILL_AFTER, so the kill lands at the same
 * step on every machine), resumes it with --resume, and checks that
 * the kill landed in that stage, that the resumed run reports the retrain
 * stage, that both models predict the same probabilities bit for bit, and
 * that the checkpoint is gone.  ARGS must end with "--checkpoint-every ".
 */
#ifndef ES_TEST_STAGED_KILL_H
#define ES_TEST_STAGED_KILL_H

void es_test_staged_kill(const char *tag, const char *data, const char *args, const char *stage, int batches, int every);

/* One bad-input case of a multi-stage method: `embstore train DATA --model
 * dlrm --dim 16 --storage METHOD --max-rows 1000 --epochs 1 --quiet ARGS`
 * into $ES_T/<tag>_bad.es must exit non-zero, print msg, and leave no
 * output file. */
void es_test_staged_bad(const char *tag, const char *method, const char *data, const char *args, const char *msg);

#endif
