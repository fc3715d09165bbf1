/*
 * test_integrity.c — training runs that cannot silently report wrong
 * results (issue 8):
 *   - --resume refuses a checkpoint made by another run (settings or data
 *     file) and lists every difference; checkpoint numbers are parsed
 *     strictly;
 *   - bench-storage does not reuse cells of another run;
 *   - a training file that changes while it is read fails the run;
 *   - --skip-bad says how many lines it skipped, and which;
 *   - a model that cannot fit in memory is refused before allocating.
 * Every scratch file lives under es_test_path (ES_TEST_TMP).
 */
#include "test.h"

#include "embstore.h"
#include "train/integrity.h"
#include "train/model.h"

#include <fcntl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define CRITEO "data/criteo_kaggle_train_first10k.tsv"

/* ASan reserves terabytes of address space for its shadow memory, so a
 * sanitizer build cannot start under ulimit -v or -d. */
#if defined(__SANITIZE_ADDRESS__)
#define ES_TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ES_TEST_ASAN 1
#endif
#endif
#ifndef ES_TEST_ASAN
#define ES_TEST_ASAN 0
#endif

/* A scratch path copied out of es_test_path's rotating buffers. */
static const char *tp(char *buf, size_t cap, const char *name) {
    snprintf(buf, cap, "%s", es_test_path(name));
    return buf;
}
#define TP(var, name) \
    char var##_buf[1024]; \
    const char *var = tp(var##_buf, sizeof var##_buf, name)

/* ---- 1. --resume checks the checkpoint against the command -------------------------- */

/* A checkpoint left by a run that stopped part way, deterministically: the
 * file has a bad line after 4000 good rows, and with a byte budget on a
 * hashing method and no held-out rows there is no counting or vocabulary
 * pass, so the first epoch checkpoints and then fails on that line. */
#define CKPT_ARGS "--valid-frac 0 --storage hash --budget 100000 --model fm --dim 8 --batch 256 --checkpoint-every 2 --quiet"

static int make_interrupted(const char *data, const char *model, const char *log) {
    char ckpt[1100];
    snprintf(ckpt, sizeof ckpt, "%s.ckpt", model);
    remove(ckpt);
    remove(model);
    if (es_test_sh(NULL, "head -n 4000 %s > %s && printf 'not a criteo line\\n' >> %s", CRITEO, data, data) != 0) return -1;
    int st = es_test_sh(log, "%s train %s " CKPT_ARGS " --out %s", es_bin(), data, model);
    if (st != 1) return -2;
    if (access(ckpt, F_OK) != 0) return -3;
    return 0;
}

TEST(integrity_resume_refuses_other_settings_and_lists_them) {
    TP(data, "ir_data.tsv");
    TP(model, "ir_model.es");
    TP(log, "ir.log");
    int r = make_interrupted(data, model, log);
    char *s = es_test_slurp(log);
    CHECK_MSG(r == 0, "interrupted run: %d: %s", r, s ? s : "");
    free(s);
    /* another model, dimension and budget: refused, each difference listed */
    int st = es_test_sh(log, "%s train %s --valid-frac 0 --storage hash --budget 200000 --model dlrm --dim 16 --checkpoint-every 2 "
                        "--quiet --resume --out %s",
                        es_bin(), data, model);
    s = es_test_slurp(log);
    printf("    %s", s ? s : "");
    CHECK_MSG(st == 1, "exit %d", st);
    CHECK_STR_HAS(s, "ir_model.es.ckpt was made by another run");
    CHECK_STR_HAS(s, "--model fm vs dlrm");
    CHECK_STR_HAS(s, "--dim 8 vs 16");
    CHECK_STR_HAS(s, "--budget 100000 vs 200000");
    CHECK(strstr(s, "\"resumed\"") == NULL); /* no JSON line claiming the new flags */
    free(s);
    /* the checkpoint is still there: nothing was overwritten */
    char ckpt[1100];
    snprintf(ckpt, sizeof ckpt, "%s.ckpt", model);
    CHECK(access(ckpt, F_OK) == 0);
    /* reader settings count too */
    st = es_test_sh(log, "%s train %s " CKPT_ARGS " --skip-bad --resume --out %s", es_bin(), data, model);
    s = es_test_slurp(log);
    printf("    %s", s ? s : "");
    CHECK_MSG(st == 1, "exit %d", st);
    CHECK_STR_HAS(s, "--skip-bad no vs yes");
    free(s);
}

TEST(integrity_resume_refuses_a_changed_data_file) {
    TP(data, "ird_data.tsv");
    TP(model, "ird_model.es");
    TP(log, "ird.log");
    int r = make_interrupted(data, model, log);
    char *s = es_test_slurp(log);
    CHECK_MSG(r == 0, "interrupted run: %d: %s", r, s ? s : "");
    free(s);
    /* another file of the same size (the first label flipped): the
     * checksum of the head tells them apart */
    CHECK(es_test_sh(NULL, "sed -i '1s/^0/1/;t;1s/^1/0/' %s", data) == 0);
    int st = es_test_sh(log, "%s train %s " CKPT_ARGS " --resume --out %s", es_bin(), data, model);
    s = es_test_slurp(log);
    printf("    %s", s ? s : "");
    CHECK_MSG(st == 1, "exit %d", st);
    CHECK_STR_HAS(s, "data file checksum (first MiB)");
    CHECK(strstr(s, "data file size") == NULL);
    free(s);
    /* "fix" the data (drop the bad line, and more): same command, other file */
    CHECK(es_test_sh(NULL, "head -n 3000 %s > %s.2 && mv %s.2 %s", data, data, data, data) == 0);
    st = es_test_sh(log, "%s train %s " CKPT_ARGS " --resume --out %s", es_bin(), data, model);
    s = es_test_slurp(log);
    printf("    %s", s ? s : "");
    CHECK_MSG(st == 1, "exit %d", st);
    CHECK_STR_HAS(s, "data file size");
    free(s);
}

TEST(integrity_resume_parses_checkpoint_numbers_strictly) {
    TP(data, "irn_data.tsv");
    TP(model, "irn_model.es");
    TP(log, "irn.log");
    int r = make_interrupted(data, model, log);
    char *s = es_test_slurp(log);
    CHECK_MSG(r == 0, "interrupted run: %d: %s", r, s ? s : "");
    free(s);
    char ckpt[1100];
    snprintf(ckpt, sizeof ckpt, "%s.ckpt", model);
    static const struct {
        const char *key, *val, *expect;
    } bad[] = {{"ckpt.epoch", "-1", "metadata ckpt.epoch=-1: expected an integer in [0, 100000000]"},
               {"ckpt.epoch", "1x", "metadata ckpt.epoch=1x: expected an integer"},
               {"ckpt.rows", "-5", "metadata ckpt.rows=-5: expected an integer"},
               {"ckpt.rows", "99999999999999999999", "metadata ckpt.rows=99999999999999999999"},
               {"ckpt.loss_sum", "nan", "metadata ckpt.loss_sum=nan: expected a number"},
               {"ckpt.trained", "", "metadata ckpt.trained=: expected an integer"}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char edited[1200];
        snprintf(edited, sizeof edited, "%s.edit.ckpt", model);
        es_model *m = NULL;
        es_err err = {0};
        CHECK_MSG(es__model_load(&m, ckpt, 0, 1, &err) == 0, "%s", err.msg);
        CHECK(es__model_set_meta(m, bad[i].key, bad[i].val) == 0);
        CHECK_MSG(es__model_save(m, edited, 1, &err) == 0, "%s", err.msg);
        es_model_free(m);
        int st = es_test_sh(log, "%s train %s " CKPT_ARGS " --resume --checkpoint %s --out %s", es_bin(), data, edited, model);
        s = es_test_slurp(log);
        printf("    %s = '%s': exit %d: %s", bad[i].key, bad[i].val, st, s ? s : "");
        CHECK_MSG(st == 1, "exit %d", st);
        CHECK_STR_HAS(s, bad[i].expect);
        free(s);
    }
}

/* A run that only changes what may change (epochs, threads) is resumed. */
TEST(integrity_resume_allows_epochs_and_threads_to_change) {
    TP(data, "ira_data.tsv");
    TP(model, "ira_model.es");
    TP(log, "ira.log");
    int r = make_interrupted(data, model, log);
    char *s = es_test_slurp(log);
    CHECK_MSG(r == 0, "interrupted run: %d: %s", r, s ? s : "");
    free(s);
    /* The checkpoint describes the file with its bad line; accepting that
     * file again is the only way to match, so skip it... which changes a
     * setting.  Instead resume on the same file, and see that the refusal
     * is not about epochs or threads: the run gets as far as the bad line. */
    int st = es_test_sh(log, "%s train %s " CKPT_ARGS " --epochs 3 --threads 2 --resume --out %s", es_bin(), data, model);
    s = es_test_slurp(log);
    printf("    %s", s ? s : "");
    CHECK_MSG(st == 1, "exit %d", st);
    CHECK(strstr(s, "made by another run") == NULL);
    CHECK_STR_HAS(s, "ira_data.tsv:4001");
    free(s);
}

/* ---- 2. bench-storage keys its cells on the whole run ----------------------------------- */

TEST(integrity_bench_storage_does_not_reuse_another_runs_cells) {
    TP(out, "ibs");
    TP(data, "ibs_data.tsv");
    TP(log, "ibs.log");
    es_test_sh(NULL, "rm -rf %s", out);
    CHECK(es_test_sh(NULL, "head -n 1500 %s > %s", CRITEO, data) == 0);
    char args[2048];
    snprintf(args, sizeof args, "--methods hash --budgets 1/4 --seeds 1 --dim 4 --no-lookup-speed --quiet --out %s", out);
    int st = es_test_sh(log, "%s bench-storage %s --model fm %s", es_bin(), data, args);
    char *s = es_test_slurp(log);
    CHECK_MSG(st == 0, "exit %d: %s", st, s ? s : "");
    CHECK_STR_HAS(s, "1 cells (0 from an earlier run, 0 failed)");
    free(s);
    /* the same run again: the cell is reused */
    st = es_test_sh(log, "%s bench-storage %s --model fm %s", es_bin(), data, args);
    s = es_test_slurp(log);
    CHECK_MSG(st == 0, "exit %d: %s", st, s ? s : "");
    CHECK_STR_HAS(s, "1 cells (1 from an earlier run, 0 failed)");
    free(s);
    /* another model: refused, with the difference and the way out */
    st = es_test_sh(log, "%s bench-storage %s --model lr %s", es_bin(), data, args);
    s = es_test_slurp(log);
    printf("    %s", s ? s : "");
    CHECK_MSG(st == 1, "exit %d", st);
    CHECK_STR_HAS(s, "--model fm vs lr");
    CHECK_STR_HAS(s, "--fresh");
    free(s);
    /* another training setting */
    st = es_test_sh(log, "%s bench-storage %s --model fm --epochs 2 %s", es_bin(), data, args);
    s = es_test_slurp(log);
    CHECK_MSG(st == 1, "exit %d: %s", st, s ? s : "");
    CHECK_STR_HAS(s, "--epochs 1 vs 2");
    free(s);
    /* another data file under the same name */
    CHECK(es_test_sh(NULL, "head -n 1200 %s > %s", CRITEO, data) == 0);
    st = es_test_sh(log, "%s bench-storage %s --model fm %s", es_bin(), data, args);
    s = es_test_slurp(log);
    printf("    %s", s ? s : "");
    CHECK_MSG(st == 1, "exit %d", st);
    CHECK_STR_HAS(s, "data file size");
    free(s);
    /* --fresh: the old cell is discarded and the new run's cell computed */
    st = es_test_sh(log, "%s bench-storage %s --model lr --fresh %s", es_bin(), data, args);
    s = es_test_slurp(log);
    CHECK_MSG(st == 0, "exit %d: %s", st, s ? s : "");
    CHECK_STR_HAS(s, "1 cells (0 from an earlier run, 0 failed)");
    free(s);
    char cfg[1100];
    snprintf(cfg, sizeof cfg, "%s/config.txt", out);
    s = es_test_slurp(cfg);
    CHECK_STR_HAS(s, "model=lr\n");
    CHECK_STR_HAS(s, "data.size=");
    free(s);
    /* cells.csv without config.txt (an older embstore): not reused */
    remove(cfg);
    st = es_test_sh(log, "%s bench-storage %s --model lr %s", es_bin(), data, args);
    s = es_test_slurp(log);
    CHECK_MSG(st == 1, "exit %d: %s", st, s ? s : "");
    CHECK_STR_HAS(s, "no config.txt");
    free(s);
}

/* ---- 3. a file that changes while it is read ----------------------------------------------- */

typedef struct {
    const char *path;
    int mode; /* 0: truncate; 1: same size and mtime, fewer rows */
    int fired;
} change_ctx;

/* After the first epoch's final progress report, change the file. */
static void change_after_epoch1(const es_progress *pr, void *ctx) {
    change_ctx *c = ctx;
    if (c->fired || strcmp(pr->phase, "train") != 0 || pr->epoch != 1 || pr->rows_total == 0 || pr->rows < pr->rows_total) return;
    c->fired = 1;
    struct stat st;
    if (stat(c->path, &st) != 0) return;
    if (c->mode == 0) {
        if (truncate(c->path, st.st_size / 2) != 0) c->fired = -1;
        return;
    }
    /* Rewrite in place: the first half of the lines, then newlines up to the
     * old size (blank lines are skipped), and the old modification time:
     * stat sees nothing, only the row count tells. */
    FILE *f = fopen(c->path, "r+b");
    if (!f) {
        c->fired = -1;
        return;
    }
    char *buf = malloc((size_t)st.st_size);
    size_t n = buf ? fread(buf, 1, (size_t)st.st_size, f) : 0;
    size_t half = n / 2;
    while (half < n && buf[half - 1] != '\n') half++;
    memset(buf + half, '\n', n - half);
    rewind(f);
    if (fwrite(buf, 1, n, f) != n) c->fired = -1;
    fclose(f);
    free(buf);
    struct timespec ts[2] = {st.st_atim, st.st_mtim};
    if (utimensat(AT_FDCWD, c->path, ts, 0) != 0) c->fired = -1;
}

static void run_changing(const char *name, int mode, double valid_frac, es_err *err, int *rc, change_ctx *c) {
    char data[1024];
    snprintf(data, sizeof data, "%s", es_test_path(name));
    es_test_sh(NULL, "head -n 3000 %s > %s", CRITEO, data);
    es_train_params p = es_train_params_basic();
    p.train_path = data;
    p.valid_frac = valid_frac;
    p.model = "lr";
    p.storage = "hash";
    p.budget = 50000;
    p.epochs = 3;
    c->path = data;
    c->mode = mode;
    c->fired = 0;
    p.progress = change_after_epoch1;
    p.progress_ctx = c;
    es_train_result res;
    *rc = es_train(&p, &res, err);
    printf("    mode %d valid %.1f: rc %d fired %d: %s\n", mode, valid_frac, *rc, c->fired, err->msg);
}

TEST(integrity_train_fails_when_the_file_shrinks_while_training) {
    change_ctx c;
    es_err err = {0};
    int rc;
    run_changing("ich_trunc.tsv", 0, 0.2, &err, &rc, &c);
    CHECK_EQ_INT(c.fired, 1);
    CHECK_EQ_INT(rc, ES_EIO);
    CHECK_STR_HAS(err.msg, "ich_trunc.tsv: the file changed while it was being read");
    CHECK_STR_HAS(err.msg, "at the start of epoch 2");
    /* no held-out rows (the row count comes from the first epoch) */
    memset(&err, 0, sizeof err);
    run_changing("ich_trunc0.tsv", 0, 0, &err, &rc, &c);
    CHECK_EQ_INT(c.fired, 1);
    CHECK_EQ_INT(rc, ES_EIO);
    CHECK_STR_HAS(err.msg, "ich_trunc0.tsv: the file changed");
}

TEST(integrity_train_fails_when_a_pass_reads_fewer_rows) {
    change_ctx c;
    es_err err = {0};
    int rc;
    /* same size, same inode, same mtime: only the row count shows it */
    run_changing("ich_rows.tsv", 1, 0.2, &err, &rc, &c);
    CHECK_EQ_INT(c.fired, 1);
    CHECK_EQ_INT(rc, ES_EIO);
    CHECK_STR_HAS(err.msg, "ich_rows.tsv: epoch 2 read ");
    CHECK_STR_HAS(err.msg, " rows where the first pass read 2400");
}

/* The CLI: a multi-epoch run on a copy, rewritten in place with its first
 * 1000 lines (whole lines: nothing fails to parse) once the run is under
 * way (its first checkpoint exists).  The run is far longer than the wait
 * (500 epochs), so the truncation always lands while it trains. */
TEST(integrity_cli_train_notices_a_truncated_file) {
    TP(data, "ict.tsv");
    TP(model, "ict.es");
    TP(log, "ict.log");
    char ckpt[1100];
    snprintf(ckpt, sizeof ckpt, "%s.ckpt", model);
    remove(ckpt);
    CHECK(es_test_sh(NULL, "cp %s %s", CRITEO, data) == 0);
    int st = es_test_sh(log,
                        "%s train %s --valid-frac 0 --model lr --storage hash --budget 50000 --epochs 500 --checkpoint-every 5 "
                        "--quiet --out %s & pid=$!; "
                        "i=0; while [ ! -e %s ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done; "
                        "head -n 1000 %s > %s.small; cat %s.small > %s; wait $pid",
                        es_bin(), data, model, ckpt, CRITEO, data, data, data);
    char *s = es_test_slurp(log);
    printf("    exit %d: %s", st, s ? s : "");
    CHECK_MSG(st == 1, "exit %d (want 1: a clean failure)", st);
    CHECK_STR_HAS(s, "ict.tsv");
    CHECK(strstr(s, "changed while it was being read") || strstr(s, "where the first pass read"));
    CHECK(strstr(s, "\"auc\"") == NULL);
    free(s);
}

/* ---- 4. --skip-bad counts and names what it skipped ------------------------------------------ */

TEST(integrity_skip_bad_reports_count_and_lines) {
    TP(data, "isb.tsv");
    TP(log, "isb.log");
    TP(errlog, "isb.err");
    /* bad lines at 101 and 2002 (training part) and 9503 (held-out part) */
    CHECK(es_test_sh(NULL,
                     "{ head -n 100 %s; echo 'bad one'; sed -n '101,2000p' %s; echo 'bad two'; sed -n '2001,9500p' %s; "
                     "printf 'x\\ty\\n'; sed -n '9501,10000p' %s; } > %s",
                     CRITEO, CRITEO, CRITEO, CRITEO, data) == 0);
    int st = es_test_sh(log, "%s train %s --skip-bad --model lr --storage hash --budget 50000 --epochs 2 --quiet 2>%s", es_bin(), data,
                        errlog);
    char *s = es_test_slurp(log), *e = es_test_slurp(errlog);
    printf("    stderr: %s", e ? e : "");
    CHECK_MSG(st == 0, "exit %d: %s %s", st, s ? s : "", e ? e : "");
    const char *j = es_test_last_line(s);
    printf("    %s\n", j);
    CHECK_EQ_INT(es_test_json_num(j, "bad_lines"), 3);
    CHECK_EQ_INT(es_test_json_num(j, "rows"), 8000);
    CHECK_STR_HAS(e, "skipped 3 bad lines");
    CHECK_STR_HAS(e, "isb.tsv:101:");
    CHECK_STR_HAS(e, "isb.tsv:2002:");
    CHECK_STR_HAS(e, "isb.tsv:9503:");
    free(s);
    free(e);
    /* a clean file says 0 */
    st = es_test_sh(log, "head -n 2000 %s > %s && %s train %s --skip-bad --model lr --storage hash --budget 50000 --quiet", CRITEO, data,
                    es_bin(), data);
    s = es_test_slurp(log);
    CHECK_MSG(st == 0, "exit %d: %s", st, s ? s : "");
    CHECK_EQ_INT(es_test_json_num(es_test_last_line(s), "bad_lines"), 0);
    CHECK(strstr(s, "skipped") == NULL);
    free(s);
}

TEST(integrity_skip_bad_counts_the_validation_file) {
    TP(train, "isv_train.tsv");
    TP(valid, "isv_valid.tsv");
    TP(log, "isv.log");
    CHECK(es_test_sh(NULL, "head -n 3000 %s > %s && { sed -n '3001,3500p' %s; echo bad; echo worse; } > %s", CRITEO, train, CRITEO,
                     valid) == 0);
    int st = es_test_sh(log, "%s train %s --valid %s --skip-bad --model lr --storage hash --budget 50000", es_bin(), train, valid);
    char *s = es_test_slurp(log);
    CHECK_MSG(st == 0, "exit %d: %s", st, s ? s : "");
    const char *j = es_test_last_line(s);
    printf("    %s\n", j);
    CHECK_EQ_INT(es_test_json_num(j, "bad_lines"), 2);
    CHECK_EQ_INT(es_test_json_num(j, "valid_rows"), 500);
    CHECK_STR_HAS(s, "isv_valid.tsv:501:");
    free(s);
}

/* ---- 5. models that cannot fit are refused before allocating ---------------------------------- */

TEST(integrity_huge_net_refused_under_ulimit) {
    TP(log, "ihn.log");
    if (ES_TEST_ASAN) {
        es_test_skip("an ASan build cannot run under ulimit -v");
        return;
    }
    /* 4 GB of address space; the net alone needs 64 GiB (params, grads, Adam) */
    int st = es_test_sh(log, "ulimit -v 4000000; %s train %s --model dlrm --max-rows 500 --top 65536,65536 --quiet", es_bin(), CRITEO);
    char *s = es_test_slurp(log);
    printf("    exit %d: %s", st, s ? s : "");
    CHECK_MSG(st == 1, "exit %d (want 1: refused, not killed)", st);
    CHECK_STR_HAS(s, "this model needs about");
    CHECK_STR_HAS(s, "RLIMIT_AS");
    CHECK_STR_HAS(s, "--top");
    free(s);
    /* a DCN whose cross layers are the problem (d0 = 13 + 26 * 4096) */
    st = es_test_sh(log, "ulimit -v 4000000; %s train %s --max-rows 500 --model dcn --dim 4096 --storage hash --budget 100000 --quiet",
                    es_bin(), CRITEO);
    s = es_test_slurp(log);
    printf("    exit %d: %s", st, s ? s : "");
    CHECK_MSG(st == 1, "exit %d", st);
    CHECK_STR_HAS(s, "this model needs about");
    free(s);
    /* an ordinary model still trains under the same limit */
    st = es_test_sh(log, "ulimit -v 4000000; %s train %s --max-rows 500 --storage hash --budget 100000 --quiet", es_bin(), CRITEO);
    s = es_test_slurp(log);
    CHECK_MSG(st == 0, "exit %d: %s", st, s ? s : "");
    free(s);
}

/* Without a limit, physical memory is the bound.  The net's parameters
 * alone exceed twice the machine's memory, so even a build without the
 * check could not touch them (the kernel refuses the mapping), and a
 * virtual-memory limit of three times physical memory is a safety net. */
TEST(integrity_huge_net_refused_beyond_physical_memory) {
    TP(log, "ihp.log");
    long pages = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
    CHECK(pages > 0 && psz > 0);
    double phys = (double)pages * (double)psz, layer = 65536.0 * 65536.0 * 4;
    int n = 1;
    while ((double)n * layer <= 2 * phys) n++;
    if (n > 7) {
        es_test_skip("more physical memory than 7 layers of 65536x65536 can exceed");
        return;
    }
    char top[256] = "65536", limit[64] = "";
    for (int i = 0; i < n; i++) strcat(top, ",65536");
    if (ES_TEST_ASAN) {
        /* no ulimit possible; the kernel's heuristic overcommit (mode 0)
         * still refuses a single mapping beyond RAM + swap */
        FILE *f = fopen("/proc/sys/vm/overcommit_memory", "r"); /* size 0 to stat: read it, don't slurp */
        int heuristic = f && fgetc(f) == '0';
        if (f) fclose(f);
        if (!heuristic) {
            es_test_skip("ASan build and overcommit_memory != 0: no safety net");
            return;
        }
    } else {
        snprintf(limit, sizeof limit, "ulimit -v %llu;", (unsigned long long)(3 * phys / 1024));
    }
    int st = es_test_sh(log, "%s %s train %s --model dlrm --max-rows 500 --top %s --quiet", limit, es_bin(), CRITEO, top);
    char *s = es_test_slurp(log);
    printf("    %d layers, exit %d: %s", n, st, s ? s : "");
    CHECK_MSG(st == 1, "exit %d", st);
    CHECK_STR_HAS(s, "this model needs about");
    CHECK_STR_HAS(s, "physical memory");
    free(s);
}

/* The limit check itself, in a child process that lowers its own
 * RLIMIT_AS after start (so that an ASan build, whose shadow memory is
 * already mapped, can run it too): 4 GiB more than it maps now. */
TEST(integrity_memory_check_reads_the_address_space_limit) {
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        setvbuf(stdout, NULL, _IONBF, 0); /* the child leaves by _exit */
        FILE *f = fopen("/proc/self/statm", "r");
        unsigned long long pages = 0;
        if (!f || fscanf(f, "%llu", &pages) != 1) _exit(10);
        fclose(f);
        struct rlimit rl;
        if (getrlimit(RLIMIT_AS, &rl) != 0) _exit(11);
        rl.rlim_cur = (rlim_t)(pages * (unsigned long long)sysconf(_SC_PAGESIZE) + (4ull << 30));
        if (setrlimit(RLIMIT_AS, &rl) != 0) _exit(12);
        es_net_params np = es__net_params_default(ES_NET_DLRM, 13, 26, 16);
        np.n_top = 2;
        np.top[0] = np.top[1] = 65536;
        es_storage_params sp = es__storage_params_default();
        sp.dim = 16;
        es_err err = {0};
        int rc = es__train_check_memory(&np, &sp, 1e6, &err);
        printf("    huge: rc %d: %s\n", rc, err.msg);
        if (rc != ES_ENOMEM || !strstr(err.msg, "RLIMIT_AS") || !strstr(err.msg, "this model needs about")) _exit(1);
        np = es__net_params_default(ES_NET_DLRM, 13, 26, 16);
        memset(&err, 0, sizeof err);
        rc = es__train_check_memory(&np, &sp, 1e6, &err);
        printf("    default: rc %d %s\n", rc, err.msg);
        if (rc != ES_OK) _exit(2);
        /* a table budget beyond the limit is refused as well */
        rc = es__train_check_memory(&np, &sp, 64e9, &err);
        printf("    64 GB table: rc %d: %s\n", rc, err.msg);
        if (rc != ES_ENOMEM || !strstr(err.msg, "embedding table 6")) _exit(3);
        fflush(stdout);
        _exit(0);
    }
    int st = 0;
    CHECK(waitpid(pid, &st, 0) == pid);
    CHECK_MSG(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child status %d", st);
}
