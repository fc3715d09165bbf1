/*
 * test_safety.c — "no data loss" in the CLI and the file writers, tested
 * through the binary ($ES_BIN):
 *
 *   - an output path that names an input (or another output) is refused
 *     before anything is written, by device and inode, through symlinks;
 *   - a failed write to standard output (> /dev/full) is an error;
 *   - SIGTERM / SIGINT during a save leave no "<out>.tmp.<pid>" behind;
 *   - a checkpoint temp left by a killed process is removed on the next run;
 *   - a model file truncated and rewritten in place while `predict` runs
 *     never kills predict with a signal (SIGBUS).
 *
 * Every scratch file lives in its own directory under es_test_path().
 */
#include "test.h"

#include "embstore.h"
#include "train/model.h"

#include <unistd.h>

#define CRITEO "data/criteo_kaggle_train_first10k.tsv"
#define SIFT "data/siftsmall/"

/* A fresh, empty scratch directory for one test: dir gets its path. */
static int scratch(char *dir, size_t cap, const char *name) {
    snprintf(dir, cap, "%s", es_test_path(name));
    return es_test_sh(NULL, "rm -rf '%s' && mkdir -p '%s'", dir, dir);
}

/* 1 if the two files have identical bytes. */
static int same_bytes(const char *a, const char *b) { return es_test_sh(NULL, "cmp -s '%s' '%s'", a, b) == 0; }

/* Run `cmd` (stdout discarded, stderr to log), expect a refusal (exit 1
 * or 2, not a signal) whose message has `needle`. */
#define CHECK_REFUSED(log, needle, ...)                                                     \
    do {                                                                                     \
        int st_ = es_test_sh(log, __VA_ARGS__);                                              \
        char *s_ = es_test_slurp(log);                                                       \
        CHECK_MSG(st_ == 1 || st_ == 2, "exit %d, expected a refusal: %s", st_, s_ ? s_ : ""); \
        CHECK_STR_HAS(s_, needle);                                                           \
        free(s_);                                                                            \
    } while (0)

/* ---- 1. outputs that name inputs ----------------------------------------------------- */

TEST(safety_train_out_naming_an_input_is_refused) {
    char d[1024], data[1200], keep[1200], valid[1200], link[1200], log[1200], ck[1200];
    CHECK(scratch(d, sizeof d, "safety_train_out") == 0);
    snprintf(data, sizeof data, "%s/train.tsv", d);
    snprintf(keep, sizeof keep, "%s/train.keep", d);
    snprintf(valid, sizeof valid, "%s/valid.tsv", d);
    snprintf(link, sizeof link, "%s/link.es", d);
    snprintf(log, sizeof log, "%s/log", d);
    snprintf(ck, sizeof ck, "%s/p.es", d);
    CHECK(es_test_sh(NULL, "head -n 600 %s > %s && cp %s %s && tail -n 200 %s > %s && ln -s train.tsv %s", CRITEO, data, data, keep,
                     CRITEO, valid, link) == 0);
    const char *fast = "--max-rows 500 --storage hash --budget 64K --quiet";
    /* the training file itself */
    CHECK_REFUSED(log, "is the input file", "%s train %s %s --out %s", es_bin(), data, fast, data);
    CHECK(same_bytes(data, keep));
    /* the message names both paths */
    char *s = es_test_slurp(log);
    CHECK_STR_HAS(s, "--out");
    CHECK_STR_HAS(s, "train.tsv");
    free(s);
    /* through a symlink (same inode, another name) */
    CHECK_REFUSED(log, "is the input file", "%s train %s %s --out %s", es_bin(), data, fast, link);
    CHECK(same_bytes(data, keep));
    /* the validation file */
    CHECK_REFUSED(log, "is the validation file", "%s train %s %s --valid %s --out %s", es_bin(), data, fast, valid, valid);
    /* the checkpoint is the training file */
    CHECK_REFUSED(log, "is the input file", "%s train %s %s --checkpoint-every 1 --checkpoint %s --out %s/m.es", es_bin(), data, fast,
                  data, d);
    CHECK(same_bytes(data, keep));
    /* --checkpoint P --out P (P does not exist yet): two outputs, one file */
    CHECK_REFUSED(log, "name the same file", "%s train %s %s --checkpoint-every 2 --checkpoint %s --out %s", es_bin(), data, fast, ck,
                  ck);
    CHECK(access(ck, F_OK) != 0);
    /* the same not-yet-existing file spelled two ways */
    CHECK_REFUSED(log, "name the same file", "%s train %s %s --checkpoint-every 2 --checkpoint %s/./p.es --out %s", es_bin(), data,
                  fast, d, ck);
    /* a distinct output still works */
    CHECK(es_test_sh(log, "%s train %s %s --out %s/ok.es", es_bin(), data, fast, d) == 0);
}

TEST(safety_predict_out_naming_an_input_is_refused) {
    char d[1024], data[1200], keep[1200], model[1200], mkeep[1200], log[1200];
    CHECK(scratch(d, sizeof d, "safety_predict_out") == 0);
    snprintf(data, sizeof data, "%s/rows.tsv", d);
    snprintf(keep, sizeof keep, "%s/rows.keep", d);
    snprintf(model, sizeof model, "%s/m.es", d);
    snprintf(mkeep, sizeof mkeep, "%s/m.keep", d);
    snprintf(log, sizeof log, "%s/log", d);
    CHECK(es_test_sh(log, "head -n 300 %s > %s && cp %s %s && %s train %s --max-rows 300 --storage hash --budget 64K --quiet --out %s "
                          "&& cp %s %s",
                     CRITEO, data, data, keep, es_bin(), data, model, model, mkeep) == 0);
    CHECK_REFUSED(log, "is the input file", "%s predict %s %s --out %s", es_bin(), model, data, data);
    CHECK(same_bytes(data, keep));
    CHECK_REFUSED(log, "is the model file", "%s predict %s %s --out %s", es_bin(), model, data, model);
    CHECK(same_bytes(model, mkeep));
    CHECK(es_test_sh(log, "%s predict %s %s --out %s/p.txt", es_bin(), model, data, d) == 0);
}

TEST(safety_index_out_naming_an_input_is_refused) {
    char d[1024], base[1200], keep[1200], q[1200], qkeep[1200], ix[1200], ixkeep[1200], log[1200];
    CHECK(scratch(d, sizeof d, "safety_index_out") == 0);
    snprintf(base, sizeof base, "%s/base.fvecs", d);
    snprintf(keep, sizeof keep, "%s/base.keep", d);
    snprintf(q, sizeof q, "%s/q.fvecs", d);
    snprintf(qkeep, sizeof qkeep, "%s/q.keep", d);
    snprintf(ix, sizeof ix, "%s/ix.esi", d);
    snprintf(ixkeep, sizeof ixkeep, "%s/ix.keep", d);
    snprintf(log, sizeof log, "%s/log", d);
    /* 1000 base vectors (128 floats + a 4-byte dim each), 20 queries */
    CHECK(es_test_sh(NULL, "head -c 516000 " SIFT "siftsmall_base.part1.fvecs > %s && cp %s %s && head -c 10320 " SIFT
                           "siftsmall_query.fvecs > %s && cp %s %s",
                     base, base, keep, q, q, qkeep) == 0);
    CHECK_REFUSED(log, "is the input file", "%s index build %s --kind flat -o %s", es_bin(), base, base);
    CHECK(same_bytes(base, keep));
    CHECK(es_test_sh(log, "%s index build %s --kind flat -o %s && cp %s %s", es_bin(), base, ix, ix, ixkeep) == 0);
    CHECK_REFUSED(log, "is the query file", "%s index search %s %s -k 3 --out %s", es_bin(), ix, q, q);
    CHECK(same_bytes(q, qkeep));
    CHECK_REFUSED(log, "is the index file", "%s index search %s %s -k 3 --out %s", es_bin(), ix, q, ix);
    CHECK(same_bytes(ix, ixkeep));
    CHECK_REFUSED(log, "is the index file", "%s index search %s %s -k 3 --dist-out %s", es_bin(), ix, q, ix);
    CHECK(same_bytes(ix, ixkeep));
    CHECK_REFUSED(log, "name the same file", "%s index search %s %s -k 3 --out %s/r --dist-out %s/r", es_bin(), ix, q, d, d);
    CHECK(es_test_sh(log, "%s index search %s %s -k 3 --out %s/ids.ivecs --dist-out %s/d.fvecs", es_bin(), ix, q, d, d) == 0);
}

TEST(safety_bench_storage_out_naming_the_data_is_refused) {
    char d[1024], data[1200], keep[1200], log[1200];
    CHECK(scratch(d, sizeof d, "safety_bench_out") == 0);
    snprintf(data, sizeof data, "%s/train.tsv", d);
    snprintf(keep, sizeof keep, "%s/train.keep", d);
    snprintf(log, sizeof log, "%s/log", d);
    CHECK(es_test_sh(NULL, "head -n 400 %s > %s && cp %s %s", CRITEO, data, data, keep) == 0);
    CHECK_REFUSED(log, "is the data file",
                  "%s bench-storage %s --methods hash --budgets 1/4 --seeds 1 --max-rows 300 --no-lookup-speed --quiet --out %s", es_bin(),
                  data, data);
    CHECK(same_bytes(data, keep));
}

/* ---- 2. standard output that cannot be written --------------------------------------- */

TEST(safety_stdout_write_errors_fail_the_command) {
    char d[1024], data[1200], model[1200], log[1200], base[1200], ix[1200];
    CHECK(scratch(d, sizeof d, "safety_stdout") == 0);
    if (access("/dev/full", W_OK) != 0) {
        es_test_skip("no /dev/full");
        return;
    }
    snprintf(data, sizeof data, "%s/rows.tsv", d);
    snprintf(model, sizeof model, "%s/m.es", d);
    snprintf(log, sizeof log, "%s/log", d);
    snprintf(base, sizeof base, "%s/base.fvecs", d);
    snprintf(ix, sizeof ix, "%s/ix.esi", d);
    CHECK(es_test_sh(log, "head -n 300 %s > %s && %s train %s --max-rows 300 --storage hash --budget 64K --quiet --out %s", CRITEO, data,
                     es_bin(), data, model) == 0);
    CHECK(es_test_sh(NULL, "head -c 51600 " SIFT "siftsmall_base.part1.fvecs > %s && %s index build %s --kind flat -o %s", base,
                     es_bin(), base, ix) == 0);
    /* predict: 300 lines, less than one stdio buffer, so only the final
     * flush can notice; eval and train print one JSON line */
    CHECK_REFUSED(log, "standard output", "%s predict %s %s > /dev/full", es_bin(), model, data);
    CHECK_REFUSED(log, "standard output", "%s eval %s %s > /dev/full", es_bin(), model, data);
    CHECK_REFUSED(log, "standard output", "%s train %s --max-rows 300 --storage hash --budget 64K --quiet > /dev/full", es_bin(), data);
    CHECK_REFUSED(log, "standard output", "%s index search %s %s -k 2 > /dev/full", es_bin(), ix, base);
    CHECK_REFUSED(log, "standard output", "%s index search %s %s -k 2 --json > /dev/full", es_bin(), ix, base);
    /* many lines: the failure shows during the run */
    CHECK(es_test_sh(NULL, "for i in 1 2 3 4 5 6; do cat %s; done > %s.big", data, data) == 0);
    CHECK_REFUSED(log, "write", "%s predict %s %s.big > /dev/full", es_bin(), model, data);
}

/* ---- 3. signals during a save ---------------------------------------------------------- */

/* Start `train ... --out DIR/m.es` with a 64 MB table in the background;
 * as soon as a temporary file shows up in DIR, send `sig` (again every
 * 10 ms while the process lives; bounded).  Prints "signalled" if the
 * signal was sent at least once.  Then DIR must hold no *.tmp.* file.
 * A shell starts background commands with SIGINT ignored (and embstore
 * leaves an ignored signal ignored), so the command runs under
 * `env --default-signal` where that exists. */
static int save_and_signal(const char *dir, const char *sig, const char *log) {
    return es_test_sh(log,
                      "pre=; env --default-signal=INT true 2>/dev/null && pre='env --default-signal=INT'; "
                      "$pre %s train %s --max-rows 400 --valid-frac 0 --storage hash --budget 64M --quiet --out %s/m.es > /dev/null 2>&1 & "
                      "pid=$!; sent=0; i=0; "
                      "while [ $i -lt 3000 ] && kill -0 $pid 2>/dev/null; do "
                      "  if ls %s | grep -q '[.]tmp[.]'; then kill -%s $pid 2>/dev/null; sent=1; fi; "
                      "  sleep 0.01; i=$((i+1)); "
                      "done; "
                      "wait $pid; rc=$?; [ $sent = 1 ] && echo signalled; echo \"exit $rc\"; ls %s",
                      es_bin(), CRITEO, dir, dir, sig, dir);
}

TEST(safety_signal_during_save_leaves_no_temp_file) {
    const char *sigs[2] = {"TERM", "INT"};
    int signalled = 0;
    for (int k = 0; k < 2; k++) {
        char d[1024], log[1200];
        CHECK(scratch(d, sizeof d, k ? "safety_sigint" : "safety_sigterm") == 0);
        snprintf(log, sizeof log, "%s.log", d);
        CHECK_EQ_INT(save_and_signal(d, sigs[k], log), 0);
        char *s = es_test_slurp(log);
        CHECK(s);
        int left = strstr(s, ".tmp.") != NULL;
        signalled += strstr(s, "signalled") != NULL;
        CHECK_MSG(!left, "SIG%s left a temporary file: %s", sigs[k], s);
        free(s);
    }
    /* On a machine too fast to ever see the temporary file the test proves
     * nothing; say so instead of passing silently. */
    if (!signalled) es_test_skip("the save finished before a signal could be sent");
}

/* ---- 4. a checkpoint temp left by kill -9 ---------------------------------------------- */

TEST(safety_stale_checkpoint_temp_is_removed) {
    char d[1024], log[1200], stale[1200], live[1200];
    CHECK(scratch(d, sizeof d, "safety_stale_ckpt") == 0);
    snprintf(log, sizeof log, "%s/log", d);
    /* a pid that has just exited (reuse within these milliseconds would only
     * make the test keep the file, never remove a live one) */
    CHECK(es_test_sh(log, "sh -c 'echo $$'") == 0);
    char *s = es_test_slurp(log);
    CHECK(s);
    long dead = atol(s);
    free(s);
    CHECK(dead > 0);
    snprintf(stale, sizeof stale, "%s/m.es.ckpt.tmp.%ld", d, dead);
    snprintf(live, sizeof live, "%s/m.es.ckpt.tmp.%ld", d, (long)getpid()); /* this runner: alive */
    CHECK(es_test_sh(NULL, "head -c 100000 /dev/zero > %s && head -c 100 /dev/zero > %s", stale, live) == 0);
    CHECK_EQ_INT(es_test_sh(log, "%s train %s --max-rows 600 --storage hash --budget 64K --checkpoint-every 1 --resume --quiet --out %s/m.es",
                            es_bin(), CRITEO, d),
                 0);
    s = es_test_slurp(log);
    CHECK_MSG(access(stale, F_OK) != 0, "stale checkpoint temp still there; log: %s", s ? s : "");
    CHECK_STR_HAS(s, "stale");
    CHECK_STR_HAS(s, stale);
    free(s);
    CHECK_MSG(access(live, F_OK) == 0, "the temp of a live process was removed");
    remove(live);
}

/* A kill -9 while the best model of early stopping was being written
 * leaves "<out>.best.tmp.<pid>.tmp.<pid>": removed as stale too, but not a
 * name whose two pids differ. */
TEST(safety_stale_temp_of_a_temp_is_removed) {
    char d[1024], log[1200], twice[1200], mixed[1200];
    CHECK(scratch(d, sizeof d, "safety_stale_twice") == 0);
    snprintf(log, sizeof log, "%s/log", d);
    CHECK(es_test_sh(log, "sh -c 'echo $$'") == 0);
    char *s = es_test_slurp(log);
    CHECK(s);
    long dead = atol(s);
    free(s);
    CHECK(dead > 0);
    snprintf(twice, sizeof twice, "%s/m.es.best.tmp.%ld.tmp.%ld", d, dead, dead);
    snprintf(mixed, sizeof mixed, "%s/m.es.best.tmp.%ld.tmp.%ld", d, dead, dead + 1);
    CHECK(es_test_sh(NULL, "touch %s %s", twice, mixed) == 0);
    char base[1100];
    snprintf(base, sizeof base, "%s/m.es.best", d);
    CHECK_EQ_INT(es_temp_files_remove_stale(base, NULL, NULL), 1);
    CHECK(access(twice, F_OK) != 0);
    CHECK(access(mixed, F_OK) == 0);
    remove(mixed);
}

/* ---- 5. a model rewritten in place while predict runs ---------------------------------- */

TEST(safety_model_rewritten_in_place_never_kills_predict) {
    char d[1024], log[1200], rows[1200], model[1200], log2[1200];
    CHECK(scratch(d, sizeof d, "safety_rewrite") == 0);
    snprintf(log, sizeof log, "%s/log", d);
    snprintf(log2, sizeof log2, "%s/predict.log", d);
    snprintf(rows, sizeof rows, "%s/rows.tsv", d);
    snprintf(model, sizeof model, "%s/m.es", d);
    /* an 8 MB hashed table: large enough that its pages used to be mapped
     * from the file (tests/test_load_inplace.c) */
    CHECK(es_test_sh(log, "%s train %s --max-rows 3000 --valid-frac 0 --storage hash --budget 8M --quiet --out %s && cp %s %s.bak && "
                          "for i in 1 2 3; do cat %s; done > %s",
                     es_bin(), CRITEO, model, model, model, CRITEO, rows) == 0);
    /* A writer truncates the model and copies it back, over and over, while
     * predict runs on it again and again; no predict may die by a signal
     * (some fail to load, with a message; some load and then see the file
     * truncated under them while they predict). */
    int st = es_test_sh(log,
                        "( i=0; while [ $i -lt 400 ] && [ ! -e %s/stop ]; do : > %s; cp %s.bak %s; sleep 0.01; i=$((i+1)); done ) & w=$!; "
                        "worst=0; ok=0; j=0; "
                        "while [ $j -lt 12 ]; do "
                        "  %s predict %s %s --no-verify > /dev/null 2>> %s; rc=$?; "
                        "  [ $rc -ge 128 ] && worst=$rc; [ $rc = 0 ] && ok=$((ok+1)); j=$((j+1)); "
                        "done; touch %s/stop; wait $w; echo \"worst $worst ok $ok\"; [ $worst = 0 ]",
                        d, model, model, model, es_bin(), model, rows, log2, d);
    char *s = es_test_slurp(log), *e = es_test_slurp(log2);
    CHECK_MSG(st == 0, "predict died by a signal: %s\npredict errors: %.2000s", s ? s : "", e ? e : "");
    free(s);
    free(e);
}

/* In process: a model loaded the default way owns its memory (its table
 * was moved from a private copy of the file, not mapped), so truncating
 * the file afterwards changes nothing; ES_LOAD_MAP (CLI --map) still maps
 * the table and predicts the same. */
TEST(safety_loaded_model_does_not_depend_on_its_file) {
    char d[1024], log[1200], rows[1200], model[1200], p1[1200], p2[1200], p3[1200];
    CHECK(scratch(d, sizeof d, "safety_owned") == 0);
    snprintf(log, sizeof log, "%s/log", d);
    snprintf(rows, sizeof rows, "%s/rows.tsv", d);
    snprintf(model, sizeof model, "%s/m.es", d);
    snprintf(p1, sizeof p1, "%s/p1.txt", d);
    snprintf(p2, sizeof p2, "%s/p2.txt", d);
    snprintf(p3, sizeof p3, "%s/p3.txt", d);
    CHECK(es_test_sh(log, "%s train %s --max-rows 2000 --valid-frac 0 --storage hash --budget 8M --quiet --out %s && tail -n 500 %s > %s",
                     es_bin(), CRITEO, model, CRITEO, rows) == 0);
    es_err err = {0};
    es_model *m = NULL;
    CHECK_MSG(es_model_load(&m, model, 0, &err) == 0, "%s", err.msg);
    size_t moved = es__model_mapped_bytes(m);
    printf("    default load: %zu bytes moved into place\n", moved);
    CHECK(moved >= 4u << 20);
    uint64_t n = 0;
    CHECK_MSG(es_model_predict_file(m, rows, 1, p1, &n) == 0, "%s", es_model_errmsg(m));
    CHECK_EQ_INT(n, 500);
    CHECK(es_test_sh(NULL, "cp %s %s.bak && : > %s", model, model, model) == 0); /* truncated under the live model */
    CHECK_MSG(es_model_predict_file(m, rows, 1, p2, &n) == 0, "%s", es_model_errmsg(m));
    es_model_free(m);
    CHECK(same_bytes(p1, p2));
    CHECK(es_test_sh(NULL, "cp %s.bak %s", model, model) == 0);
    m = NULL;
    CHECK_MSG(es_model_load(&m, model, ES_LOAD_MAP | ES_LOAD_NO_VERIFY, &err) == 0, "%s", err.msg);
    printf("    ES_LOAD_MAP: %zu bytes mapped\n", es__model_mapped_bytes(m));
    CHECK(es__model_mapped_bytes(m) == moved);
    CHECK_MSG(es_model_predict_file(m, rows, 1, p3, &n) == 0, "%s", es_model_errmsg(m));
    es_model_free(m);
    CHECK(same_bytes(p1, p3));
    /* the CLI's --map gives the same bytes as its default (CLI against
     * in-process equality is test_load_inplace.c's business) */
    CHECK(es_test_sh(log, "%s predict %s %s --out %s/p4.txt && %s predict %s %s --map --no-verify --out %s/p5.txt && cmp %s/p4.txt %s/p5.txt",
                     es_bin(), model, rows, d, es_bin(), model, rows, d, d, d) == 0);
}
