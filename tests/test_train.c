/*
 * test_train.c — metrics, the training loop and the train/eval/predict CLI
 * end to end on the bundled Criteo sample: save/load round trips, repeatable
 * runs, byte accounting, and bad input through the CLI (clear message,
 * non-zero exit, no partial output).
 */
#include "test.h"

#include "embstore.h"

#include <unistd.h>
#include <zlib.h>

#define CRITEO "data/criteo_kaggle_train_first10k.tsv"

TEST(auc_exact_with_ties) {
    float p1[] = {0.1f, 0.4f, 0.35f, 0.8f}, y1[] = {0, 0, 1, 1};
    double a = es_auc(p1, y1, 4);
    printf("    auc = %.6f (expect 0.75)\n", a);
    CHECK_NEAR(a, 0.75, 1e-12);
    float p2[] = {0.5f, 0.5f, 0.5f, 0.5f}, y2[] = {0, 1, 0, 1};
    CHECK_NEAR(es_auc(p2, y2, 4), 0.5, 1e-12);
    /* one positive tied with one of two negatives: (1 + 0.5) / 2 */
    float p3[] = {0.2f, 0.7f, 0.7f}, y3[] = {0, 0, 1};
    CHECK_NEAR(es_auc(p3, y3, 3), 0.75, 1e-12);
    float p4[] = {0.2f, 0.3f}, y4[] = {1, 1};
    CHECK(isnan(es_auc(p4, y4, 2)));
    /* brute force over random data with many ties */
    float p[300], y[300];
    unsigned s = 12345;
    for (int i = 0; i < 300; i++) {
        s = s * 1103515245u + 12345u;
        p[i] = (float)((s >> 16) % 20) / 20.0f;
        s = s * 1103515245u + 12345u;
        y[i] = (float)((s >> 16) % 3 == 0);
    }
    double num = 0, den = 0;
    for (int i = 0; i < 300; i++)
        for (int j = 0; j < 300; j++)
            if (y[i] > 0.5f && y[j] < 0.5f) {
                den += 1;
                num += p[i] > p[j] ? 1 : (p[i] == p[j] ? 0.5 : 0);
            }
    CHECK_NEAR(es_auc(p, y, 300), num / den, 1e-12);
}

TEST(metrics_logloss_calibration) {
    float p[] = {0.25f, 0.25f, 0.25f, 0.25f}, y[] = {1, 0, 0, 0};
    es_metrics m;
    es_metrics_compute(p, y, 4, &m);
    CHECK_NEAR(m.logloss, -(log(0.25) + 3 * log(0.75)) / 4, 1e-6);
    CHECK_NEAR(m.calibration, 1.0, 1e-6);
    CHECK_NEAR(m.base_rate, 0.25, 1e-12);
    CHECK_EQ_INT(m.rows, 4);
}

/* Train through the CLI; returns exit status, fills out (file with output). */
static int train_cli(const char *out, const char *args) {
    return es_test_sh(out, "%s train %s %s --quiet", es_bin(), CRITEO, args);
}

TEST(train_dlrm_unified_end_to_end) {
    const char *log = es_test_path("train_e2e.log"), *model = es_test_path("e2e.es");
    remove(model);
    char args[512];
    snprintf(args, sizeof args, "--valid-frac 0.2 --model dlrm --storage unified --budget 0.1 --epochs 2 --seed 1 --out %s", model);
    int st = train_cli(log, args);
    char *s = es_test_slurp(log);
    CHECK_MSG(st == 0, "exit %d: %s", st, s ? s : "");
    const char *j = es_test_last_line(s);
    double auc = es_test_json_num(j, "auc"), emb = es_test_json_num(j, "emb_bytes"), full = es_test_json_num(j, "full_bytes");
    double rows = es_test_json_num(j, "rows"), vrows = es_test_json_num(j, "valid_rows");
    printf("    %s\n", j);
    CHECK_EQ_INT(rows, 8000);
    CHECK_EQ_INT(vrows, 2000);
    CHECK_MSG(auc > 0.68 && auc < 1.0, "auc %.4f", auc);
    CHECK_MSG(emb <= 0.1 * full && emb >= 0.095 * full, "emb %.0f vs budget %.0f", emb, 0.1 * full);
    CHECK(access(model, F_OK) == 0);
    free(s);
}

TEST(saved_model_predicts_identically_in_new_process) {
    const char *log = es_test_path("rt.log");
    int st = train_cli(log, "--valid-frac 0.2 --model fm --storage full --epochs 1 --no-refit --seed 3 --out $ES_T/rt.es");
    char *s = es_test_slurp(log);
    CHECK_MSG(st == 0, "train exit %d: %s", st, s ? s : "");
    double auc_train = es_test_json_num(es_test_last_line(s), "auc");
    free(s);
    /* the held-out rows as their own file */
    CHECK(es_test_sh(NULL, "tail -n 2000 %s > $ES_T/rt_valid.tsv", CRITEO) == 0);
    CHECK(es_test_sh(log, "%s eval $ES_T/rt.es $ES_T/rt_valid.tsv", es_bin()) == 0);
    s = es_test_slurp(log);
    double auc_eval = es_test_json_num(es_test_last_line(s), "auc");
    printf("    train-time auc %.6f, eval in a new process %.6f\n", auc_train, auc_eval);
    CHECK_NEAR(auc_eval, auc_train, 1e-6);
    free(s);
    CHECK(es_test_sh(NULL, "%s predict $ES_T/rt.es $ES_T/rt_valid.tsv --out $ES_T/rt_p1.txt", es_bin()) == 0);
    CHECK(es_test_sh(NULL, "%s predict $ES_T/rt.es $ES_T/rt_valid.tsv --threads 2 --out $ES_T/rt_p2.txt", es_bin()) == 0);
    char *a = es_test_slurp(es_test_path("rt_p1.txt")), *b = es_test_slurp(es_test_path("rt_p2.txt"));
    CHECK(a && b);
    int lines = 0;
    for (char *q = a; *q; q++) lines += *q == '\n';
    CHECK_EQ_INT(lines, 2000);
    CHECK_MSG(strcmp(a, b) == 0, "predictions differ between runs");
    free(a);
    free(b);
    /* the model keeps the detected format: a file of any name reads the same */
    CHECK(es_test_sh(NULL, "cp $ES_T/rt_valid.tsv $ES_T/rt_valid.data") == 0);
    CHECK(es_test_sh(NULL, "%s predict $ES_T/rt.es $ES_T/rt_valid.data --out $ES_T/rt_p4.txt", es_bin()) == 0);
    CHECK(es_test_sh(NULL, "cmp $ES_T/rt_p1.txt $ES_T/rt_p4.txt") == 0);
    /* the unlabeled Criteo layout (39 columns) */
    CHECK(es_test_sh(NULL, "cut -f2- $ES_T/rt_valid.tsv > $ES_T/rt_unlab.tsv") == 0);
    CHECK(es_test_sh(NULL, "%s predict $ES_T/rt.es $ES_T/rt_unlab.tsv --unlabeled --out $ES_T/rt_p3.txt", es_bin()) == 0);
    a = es_test_slurp(es_test_path("rt_p1.txt"));
    b = es_test_slurp(es_test_path("rt_p3.txt"));
    CHECK(a && b && strcmp(a, b) == 0);
    free(a);
    free(b);
}

/* slow tier (as the next one): fast in the normal build (1.5 s), but over a
 * minute with ES_SIMD=ref (reference gemm), where the quick tier reruns;
 * they run once per `make check`, in the normal build */
TEST_SLOW(one_thread_runs_are_bit_for_bit_repeatable) {
    const char *args = "--valid-frac 0.2 --model dcn --storage hash --budget 0.05 --epochs 1 --seed 7 --threads 1 --max-rows 4000";
    char a1[256], a2[256];
    snprintf(a1, sizeof a1, "%s --out $ES_T/rep1.es", args);
    snprintf(a2, sizeof a2, "%s --out $ES_T/rep2.es", args);
    CHECK(train_cli(NULL, a1) == 0);
    CHECK(train_cli(NULL, a2) == 0);
    /* the files differ only in the stored command line (the --out path) */
    CHECK(es_test_sh(NULL, "%s predict $ES_T/rep1.es %s --out $ES_T/rep1.txt", es_bin(), CRITEO) == 0);
    CHECK(es_test_sh(NULL, "%s predict $ES_T/rep2.es %s --out $ES_T/rep2.txt", es_bin(), CRITEO) == 0);
    CHECK(es_test_sh(NULL, "cmp $ES_T/rep1.txt $ES_T/rep2.txt") == 0);
    /* and a different seed gives a different model */
    CHECK(train_cli(NULL, "--valid-frac 0.2 --model dcn --storage hash --budget 0.05 --epochs 1 --seed 8 --max-rows 4000 --out $ES_T/rep3.es") == 0);
    CHECK(es_test_sh(NULL, "%s predict $ES_T/rep3.es %s --out $ES_T/rep3.txt", es_bin(), CRITEO) == 0);
    CHECK(es_test_sh(NULL, "cmp -s $ES_T/rep1.txt $ES_T/rep3.txt") != 0);
}

TEST_SLOW(every_model_and_method_trains) {
    const char *models[] = {"lr", "fm", "dlrm", "dcn"};
    const char *methods[] = {"full --budget 0", "hash --budget 0.1", "unified --budget 0.1",
                             "unified --budget 0.1 --chunks 2 --subtables 2"};
    for (int i = 0; i < 4; i++)
        for (int k = 0; k < 4; k++) {
            if (i <= 1 && k == 3) continue; /* LR rows are 1 wide, FM rows 1 + k: chunking needs an even width */
            char args[256];
            snprintf(args, sizeof args, "--valid-frac 0.2 --model %s --storage %s --dim 8 --epochs 1", models[i],
                     methods[k]);
            const char *log = es_test_path("each.log");
            int st = train_cli(log, args);
            char *s = es_test_slurp(log);
            const char *j = s ? es_test_last_line(s) : "";
            double auc = es_test_json_num(j, "auc");
            printf("    %-4s %-46s auc %.4f\n", models[i], methods[k], auc);
            CHECK_MSG(st == 0, "exit %d: %s", st, s ? s : "");
            CHECK_MSG(auc > 0.62, "auc %.4f for %s", auc, args);
            free(s);
        }
}

/* ---- bad input through the CLI ------------------------------------------------------ */

static void write_file(const char *path, const char *content, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) return;
    fwrite(content, 1, n, f);
    fclose(f);
}

/* Runs train on `input` writing to a model path; checks exit != 0, that the
 * message contains `needle`, and that no model file appeared. */
static int bad_train(const char *input, const char *needle, const char *extra) {
    const char *log = es_test_path("bad.log");
    const char *model = es_test_path("bad_model.es");
    remove(model);
    int st = es_test_sh(log, "%s train %s --valid-frac 0.2 --storage full --out %s --quiet %s", es_bin(), input, model,
                        extra ? extra : "");
    char *s = es_test_slurp(log);
    int ok = 1;
    printf("    exit %d: %s", st, s ? s : "(no output)\n");
    if (st == 0 || st >= 128) ok = 0; /* must fail cleanly, not crash */
    if (!s || !strstr(s, needle)) ok = 0;
    if (access(model, F_OK) == 0) ok = 0;
    free(s);
    return ok;
}

TEST(cli_bad_missing_file) { CHECK(bad_train("$ES_T/does_not_exist.tsv", "does_not_exist.tsv", NULL)); }

TEST(cli_bad_empty_file) {
    write_file(es_test_path("empty.tsv"), "", 0);
    CHECK(bad_train(es_test_path("empty.tsv"), "empty.tsv", NULL));
}

TEST(cli_bad_wrong_column_count) {
    CHECK(es_test_sh(NULL, "head -n 50 %s > $ES_T/cols.tsv && printf '1\\t2\\t3\\n' >> $ES_T/cols.tsv", CRITEO) == 0);
    CHECK(bad_train("$ES_T/cols.tsv", "cols.tsv:51", NULL));
}

TEST(cli_bad_text_in_numeric_column) {
    CHECK(es_test_sh(NULL, "head -n 20 %s > $ES_T/num.tsv && head -n 1 %s | sed 's/^0\\t1\\t1\\t5/0\\t1\\tabc\\t5/' >> $ES_T/num.tsv",
                     CRITEO, CRITEO) == 0);
    CHECK(bad_train("$ES_T/num.tsv", "num.tsv:21", NULL));
}

TEST(cli_bad_10mb_line) {
    size_t n = 10u << 20;
    char *big = malloc(n + 1);
    CHECK(big);
    memset(big, 'a', n);
    big[n] = '\n';
    write_file(es_test_path("big.tsv"), big, n + 1);
    free(big);
    CHECK(bad_train(es_test_path("big.tsv"), "big.tsv:1", NULL));
}

TEST(cli_bad_binary_garbage) {
    unsigned char g[4096];
    unsigned s = 99;
    for (size_t i = 0; i < sizeof g; i++) {
        s = s * 1103515245u + 12345u;
        g[i] = (unsigned char)(s >> 16);
    }
    write_file(es_test_path("garbage.tsv"), (const char *)g, sizeof g);
    CHECK(bad_train(es_test_path("garbage.tsv"), "garbage.tsv", NULL));
}

TEST(cli_bad_truncated_gz) {
    char *src = es_test_slurp(CRITEO);
    CHECK(src);
    const char *gz = es_test_path("trunc.tsv.gz");
    gzFile g = gzopen(gz, "wb");
    CHECK(g);
    gzwrite(g, src, (unsigned)strlen(src));
    gzclose(g);
    free(src);
    CHECK(es_test_sh(NULL, "head -c 30000 %s > %s.cut && mv %s.cut %s", gz, gz, gz, gz) == 0);
    CHECK(bad_train(gz, "trunc.tsv.gz", NULL));
}

TEST(cli_bad_unwritable_output) {
    const char *log = es_test_path("unwritable.log");
    int st = es_test_sh(log, "%s train %s --max-rows 500 --storage full --quiet --out /nonexistent-dir/m.es", es_bin(), CRITEO);
    char *s = es_test_slurp(log);
    printf("    exit %d: %s", st, s ? s : "");
    CHECK(st != 0 && st < 128);
    CHECK_STR_HAS(s, "/nonexistent-dir/m.es");
    free(s);
    /* predict to an unwritable path leaves nothing either */
    CHECK(train_cli(NULL, "--max-rows 500 --storage full --out $ES_T/small.es") == 0);
    st = es_test_sh(log, "%s predict $ES_T/small.es %s --out /nonexistent-dir/p.txt", es_bin(), CRITEO);
    CHECK(st != 0 && st < 128);
}

TEST(cli_usage_errors_and_help) {
    const char *log = es_test_path("usage.log");
    CHECK(es_test_sh(log, "%s train %s --budget banana", es_bin(), CRITEO) == 2);
    char *s = es_test_slurp(log);
    CHECK_STR_HAS(s, "--budget");
    free(s);
    CHECK(es_test_sh(log, "%s train %s --model transformer --quiet", es_bin(), CRITEO) == 1);
    s = es_test_slurp(log);
    CHECK_STR_HAS(s, "transformer");
    free(s);
    const char *cmds[] = {"train", "eval", "predict"};
    for (int i = 0; i < 3; i++) {
        CHECK(es_test_sh(log, "%s %s --help", es_bin(), cmds[i]) == 0);
        s = es_test_slurp(log);
        CHECK_STR_HAS(s, "usage: embstore");
        free(s);
    }
}

TEST_SLOW(kill_and_resume_matches_uninterrupted_run) {
    const char *args = "--valid-frac 0.2 --model dcn --storage unified --budget 0.2 --epochs 3 --batch 32 --threads 1 --seed 5 "
                       "--checkpoint-every 7";
    const char *log = es_test_path("resume.log");
    CHECK(es_test_sh(log, "%s train %s %s --quiet --out $ES_T/ref.es", es_bin(), CRITEO, args) == 0);
    CHECK(es_test_sh(NULL, "%s predict $ES_T/ref.es %s --out $ES_T/ref.txt", es_bin(), CRITEO) == 0);
    /* kill at several points: the resumed run must end with the same model;
     * after delays (wherever they land on this machine) and, last, at the
     * trainer's fault point (batch 400 of 750, 3 past a checkpoint: the
     * same step everywhere) */
    const char *delays[] = {"0.2", "0.5", NULL};
    int resumed_from_ckpt = 0;
    for (int i = 0; i < 3; i++) {
        es_test_sh(NULL, "rm -f $ES_T/kr.es $ES_T/kr.es.ckpt");
        if (delays[i])
            es_test_sh(NULL, "%s train %s %s --quiet --out $ES_T/kr.es & pid=$!; sleep %s; kill -9 $pid; wait $pid", es_bin(), CRITEO,
                       args, delays[i]);
        else
            CHECK(es_test_sh(NULL, "ES_TEST_KILL_AFTER=train:400 %s train %s %s --quiet --out $ES_T/kr.es", es_bin(), CRITEO, args) == 137);
        int had_ckpt = es_test_sh(NULL, "test -f $ES_T/kr.es.ckpt") == 0;
        CHECK(es_test_sh(log, "%s train %s %s --quiet --resume --out $ES_T/kr.es", es_bin(), CRITEO, args) == 0);
        char *s = es_test_slurp(log);
        int resumed = s && strstr(s, "\"resumed\":true") != NULL;
        printf("    killed %s%s%s: checkpoint %s, resumed %s\n", delays[i] ? "after " : "at batch 400", delays[i] ? delays[i] : "",
               delays[i] ? "s" : "", had_ckpt ? "present" : "absent", resumed ? "yes" : "no");
        free(s);
        CHECK(resumed == had_ckpt);
        resumed_from_ckpt += resumed;
        CHECK(es_test_sh(NULL, "%s predict $ES_T/kr.es %s --out $ES_T/kr.txt", es_bin(), CRITEO) == 0);
        CHECK_MSG(es_test_sh(NULL, "cmp $ES_T/ref.txt $ES_T/kr.txt") == 0, "resumed model differs (kill %d)", i);
        CHECK(es_test_sh(NULL, "test ! -f $ES_T/kr.es.ckpt") == 0); /* removed once finished */
    }
    CHECK_MSG(resumed_from_ckpt > 0, "no run was killed mid-training; the test did not exercise resume");
}
