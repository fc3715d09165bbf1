/*
 * test_stdin.c — standard input ("-") and pipes as input (tools/cli.c
 * cli_spool; the library's refusal in src/core/fileid.c):
 *   - stdin_train_and_convert_match_the_file: `train -` and `convert -`
 *     (plain and gzip piped in, a FIFO) give models that predict what the
 *     model trained from the file predicts, bit for bit (--threads 1), and
 *     leave no copy behind in $TMPDIR; `predict -` and `eval -` read a pipe
 *     once and print what they print for the file;
 *   - stdin_errors_are_clear_and_leave_nothing: no --format, --cache
 *     without a path, a bad line in the stream (named by its line), and
 *     the library asked to train on a pipe: each a clear error, a non-zero
 *     exit, no model file and no copy left.
 */
#include "test.h"

#include "embstore.h"

#define CRITEO "data/criteo_kaggle_train_first10k.tsv"
#define ARGS "--model lr --epochs 2 --seed 1 --threads 1 --quiet"

/* $ES_T/stdin_tmp: the TMPDIR of the commands, empty before each. */
static void fresh_tmpdir(void) { es_test_sh(NULL, "rm -rf $ES_T/stdin_tmp && mkdir -p $ES_T/stdin_tmp"); }
static int tmpdir_empty(void) { return es_test_sh(NULL, "test -z \"$(ls -A $ES_T/stdin_tmp)\"") == 0; }

TEST(stdin_train_and_convert_match_the_file) {
    CHECK(es_test_sh(NULL, "head -3000 %s > $ES_T/in.tsv && gzip -c $ES_T/in.tsv > $ES_T/in_gz.bin", CRITEO) == 0);
    CHECK(es_test_sh(NULL, "%s train $ES_T/in.tsv " ARGS " --out $ES_T/ref.es && %s predict $ES_T/ref.es $ES_T/in.tsv > $ES_T/ref.txt",
                     es_bin(), es_bin()) == 0);
    const char *log = es_test_path("stdin.log");
    static const struct {
        const char *what, *cmd;
    } cases[] = {
        {"train - (plain)", "cat $ES_T/in.tsv | TMPDIR=$ES_T/stdin_tmp %s train - --format criteo " ARGS " --out $ES_T/m.es"},
        {"train - (gzip)", "TMPDIR=$ES_T/stdin_tmp %s train - --format criteo " ARGS " --out $ES_T/m.es < $ES_T/in_gz.bin"},
        {"train FIFO", "rm -f $ES_T/fifo && mkfifo $ES_T/fifo && (cat $ES_T/in.tsv > $ES_T/fifo &) && "
                       "TMPDIR=$ES_T/stdin_tmp %s train $ES_T/fifo --format criteo " ARGS " --out $ES_T/m.es"},
        {"train - --cache", "cat $ES_T/in.tsv | TMPDIR=$ES_T/stdin_tmp %s train - --format criteo --cache $ES_T/c.esd " ARGS
                            " --out $ES_T/m.es && test -s $ES_T/c.esd"},
        {"convert - then train", "gzip -dc $ES_T/in_gz.bin | TMPDIR=$ES_T/stdin_tmp %s convert - --format criteo -o $ES_T/s.esd --quiet "
                                 ">/dev/null && %s train $ES_T/s.esd " ARGS " --out $ES_T/m.es"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        fresh_tmpdir();
        es_test_sh(NULL, "rm -f $ES_T/m.es");
        int st = es_test_sh(log, cases[i].cmd, es_bin(), es_bin());
        char *s = es_test_slurp(log);
        CHECK_MSG(st == 0, "%s: exit %d: %.300s", cases[i].what, st, s ? s : "");
        free(s);
        CHECK(es_test_sh(NULL, "%s predict $ES_T/m.es $ES_T/in.tsv > $ES_T/m.txt", es_bin()) == 0);
        int same = es_test_sh(NULL, "cmp -s $ES_T/ref.txt $ES_T/m.txt") == 0;
        printf("    %-22s predictions %s the file's; TMPDIR %s\n", cases[i].what, same ? "equal" : "DIFFER from", tmpdir_empty() ? "empty" : "NOT EMPTY");
        CHECK_MSG(same, "%s: the model predicts differently from the one trained on the file", cases[i].what);
        CHECK_MSG(tmpdir_empty(), "%s: a copy of the input was left in TMPDIR", cases[i].what);
    }
    /* predict and eval read once: a pipe as it is, "-" for standard input */
    CHECK(es_test_sh(NULL, "cat $ES_T/in.tsv | %s predict $ES_T/ref.es - > $ES_T/p.txt && cmp -s $ES_T/ref.txt $ES_T/p.txt", es_bin()) == 0);
    CHECK(es_test_sh(NULL, "%s eval $ES_T/ref.es $ES_T/in.tsv > $ES_T/e1.txt && %s eval $ES_T/ref.es - < $ES_T/in_gz.bin > $ES_T/e2.txt && "
                           "cmp -s $ES_T/e1.txt $ES_T/e2.txt",
                     es_bin(), es_bin()) == 0);
}

TEST(stdin_errors_are_clear_and_leave_nothing) {
    CHECK(es_test_sh(NULL, "head -500 %s > $ES_T/in.tsv && (head -300 $ES_T/in.tsv; printf 'x\\ty\\n'; tail -200 $ES_T/in.tsv) > $ES_T/bad.tsv",
                     CRITEO) == 0);
    const char *log = es_test_path("stdin_err.log");
    static const struct {
        const char *cmd, *msg;
        int exit;
    } cases[] = {
        {"cat $ES_T/in.tsv | TMPDIR=$ES_T/stdin_tmp %s train - " ARGS " --out $ES_T/m.es", "has no file name to tell the format from", 2},
        {"cat $ES_T/in.tsv | TMPDIR=$ES_T/stdin_tmp %s train - --format criteo --cache " ARGS " --out $ES_T/m.es", "say where the cache goes", 2},
        {"cat $ES_T/in.tsv | TMPDIR=$ES_T/stdin_tmp %s convert - --format criteo", "say where the cache goes", 2},
        {"cat $ES_T/bad.tsv | TMPDIR=$ES_T/stdin_tmp %s train - --format criteo " ARGS " --out $ES_T/m.es", "(standard input):301:", 1},
        {"cat $ES_T/in.tsv | TMPDIR=$ES_T/no/such/dir %s train - --format criteo " ARGS " --out $ES_T/m.es", "cannot create a temporary file", 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        fresh_tmpdir();
        es_test_sh(NULL, "rm -f $ES_T/m.es");
        int st = es_test_sh(log, cases[i].cmd, es_bin());
        char *s = es_test_slurp(log);
        printf("    exit %d: %.160s\n", st, s ? s : "");
        CHECK_MSG(st == cases[i].exit, "case %zu: exit %d, expected %d", i, st, cases[i].exit);
        CHECK_STR_HAS(s, cases[i].msg);
        free(s);
        CHECK_MSG(es_test_sh(NULL, "test ! -e $ES_T/m.es") == 0, "case %zu: a model file was written", i);
        CHECK_MSG(tmpdir_empty(), "case %zu: a copy of the input was left in TMPDIR", i);
    }
    /* the library itself refuses a pipe for training (it reads the input
     * several times), before reading a byte of it */
    CHECK(es_test_sh(NULL, "rm -f $ES_T/fifo2 && mkfifo $ES_T/fifo2") == 0);
    es_train_params p = es_train_params_default();
    p.train_path = es_test_path("fifo2");
    p.reader.format = ES_FMT_CRITEO;
    p.epochs = 1;
    es_train_result res;
    es_err err = {0};
    CHECK(es_train(&p, &res, &err) == ES_EINVAL);
    CHECK_STR_HAS(err.msg, "not a regular file");
    printf("    es_train on a FIFO: %s\n", err.msg);
}
