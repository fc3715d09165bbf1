/*
 * staged_kill.c — see staged_kill.h.
 */
#include "staged_kill.h"

#include "test.h"

void es_test_staged_kill(const char *tag, const char *data, const char *args, const char *stage, int batches, int every) {
    char log[512];
    snprintf(log, sizeof log, "%s", es_test_path("staged_kill.log"));
    es_test_sh(NULL, "rm -f $ES_T/%s_ref.es $ES_T/%s_k.es $ES_T/%s_k.es.ckpt*", tag, tag, tag);
    CHECK(es_test_sh(log, "%s train %s %s%d --quiet --out $ES_T/%s_ref.es", es_bin(), data, args, every, tag) == 0);
    int kst = es_test_sh(NULL, "ES_TEST_KILL_AFTER=%s:%d %s train %s %s%d --quiet --out $ES_T/%s_k.es", stage, batches, es_bin(), data,
                         args, every, tag);
    CHECK_MSG(kst == 128 + 9, "exit %d, not the fault point's SIGKILL (137)", kst);
    int in_stage = es_test_sh(NULL, "grep -qa 'stage:%s' $ES_T/%s_k.es.ckpt", stage, tag) == 0;
    int finished = es_test_sh(NULL, "test -f $ES_T/%s_k.es", tag) == 0;
    printf("    killed after batch %d of the %s stage: checkpoint of that stage %s, run finished before the kill: %s\n", batches, stage,
           in_stage ? "yes" : "no", finished ? "yes" : "no");
    CHECK_MSG(in_stage && !finished, "the kill did not land in the %s stage; the test did not exercise resume", stage);
    CHECK(es_test_sh(log, "%s train %s %s%d --quiet --resume --out $ES_T/%s_k.es", es_bin(), data, args, every, tag) == 0);
    char *s = es_test_slurp(log);
    CHECK_STR_HAS(s, "\"resumed\":true");
    CHECK_STR_HAS(s, "{\"name\":\"retrain\"");
    free(s);
    char ref[256], k[256];
    snprintf(ref, sizeof ref, "%s_ref.es", tag);
    snprintf(k, sizeof k, "%s_k.es", tag);
    size_t n1 = 0, n2 = 0;
    float *p1 = es_test_model_probs(es_test_path(ref), data, &n1);
    float *p2 = es_test_model_probs(es_test_path(k), data, &n2);
    CHECK(p1 && p2 && n1 == n2 && n1 > 0);
    CHECK_MSG(p1 && p2 && n1 == n2 && memcmp(p1, p2, n1 * sizeof *p1) == 0, "the resumed model differs (killed in the %s stage)", stage);
    free(p1);
    free(p2);
    CHECK(es_test_sh(NULL, "test ! -f $ES_T/%s_k.es.ckpt", tag) == 0); /* removed once finished */
}

void es_test_staged_bad(const char *tag, const char *method, const char *data, const char *args, const char *msg) {
    char log[512];
    snprintf(log, sizeof log, "%s", es_test_path("staged_bad.log"));
    es_test_sh(NULL, "rm -f $ES_T/%s_bad.es", tag);
    int st = es_test_sh(log, "%s train %s --model dlrm --dim 16 --storage %s --max-rows 1000 --epochs 1 --quiet %s --out $ES_T/%s_bad.es",
                        es_bin(), data, method, args, tag);
    char *s = es_test_slurp(log);
    if (s && *s && s[strlen(s) - 1] == '\n') s[strlen(s) - 1] = 0;
    printf("    %-48s -> exit %d: %.150s\n", args, st, s ? s : "");
    CHECK_MSG(st != 0, "%s: exit 0", args);
    CHECK_STR_HAS(s, msg);
    CHECK_MSG(es_test_sh(NULL, "test ! -e $ES_T/%s_bad.es", tag) == 0, "%s: an output file was written", args);
    free(s);
}
