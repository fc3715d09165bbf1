/*
 * test_load_inplace.c — models load "in place": es_model_load maps the
 * pages of large tensors (format version 2 puts them at page-aligned file
 * offsets) copy-on-write into the model's arrays instead of copying them.
 *
 * What is checked, on a DLRM model with an 8 MB hashed table trained by the
 * CLI: the table is mapped (es__model_mapped_bytes), predictions equal bit
 * for bit those of a load with mapping disabled (ES_NO_REMAP=1); training
 * after loading a checkpoint in place writes private pages (the file stays
 * byte for byte as it was, and the result equals training a copied load);
 * a corrupted byte in the table is still caught by a verified load.  No
 * timings: "load time independent of size" is a property of the mechanism,
 * checked here through what was mapped, not through a clock.
 */
#include "test.h"

#include "embstore.h"
#include "format/file.h"
#include "train/model.h"

#include <unistd.h>

#define CRITEO "data/criteo_kaggle_train_first10k.tsv"
/* Scratch paths under $ES_TEST_TMP, set by big_ready(). */
static char big_path[1024], last_rows_path[1024];
#define BIG big_path
#define LAST_ROWS last_rows_path

/* The model every test here uses: trained once per runner process (the
 * CLI run takes a fraction of a second; each test still works alone). */
static int big_ready(void) {
    static int done = 0;
    if (done) return 1;
    snprintf(big_path, sizeof big_path, "%s", es_test_path("big.es"));
    snprintf(last_rows_path, sizeof last_rows_path, "%s", es_test_path("big_last.tsv"));
    const char *log = es_test_path("big_train.log");
    int st = es_test_sh(log, "%s train %s --valid-frac 0.2 --model dlrm --storage hash --budget 8M --emb-optim rowwise --threads 1 --seed 11 --quiet --out %s",
                        es_bin(), CRITEO, BIG);
    if (st != 0) {
        char *s = es_test_slurp(log);
        es_test_fail(__FILE__, __LINE__, "training the test model failed (exit %d): %s", st, s ? s : "");
        free(s);
        return 0;
    }
    if (es_test_sh(NULL, "tail -n 1500 %s > %s", CRITEO, LAST_ROWS) != 0) {
        es_test_fail(__FILE__, __LINE__, "cannot write %s", LAST_ROWS);
        return 0;
    }
    done = 1;
    return 1;
}

/* Load with mapping on or off (ES_NO_REMAP), restoring the environment. */
static int load_model(es_model **m, const char *path, unsigned flags, int with_state, int remap, es_err *err) {
    const char *old = getenv("ES_NO_REMAP");
    char *saved = old ? strdup(old) : NULL;
    if (remap) unsetenv("ES_NO_REMAP");
    else setenv("ES_NO_REMAP", "1", 1);
    int rc = es__model_load(m, path, flags, with_state, err);
    if (saved) setenv("ES_NO_REMAP", saved, 1);
    else unsetenv("ES_NO_REMAP");
    free(saved);
    return rc;
}

/* Probabilities of every row of `path` (read with the model's reader
 * parameters) into a malloc'd array; *n gets the row count. */
static float *predict_all(es_model *m, const char *path, size_t *n) {
    es_reader_params rp = es_model_reader_params(m);
    es_reader *r = NULL;
    es_err err = {0};
    *n = 0;
    if (es_reader_open(&r, path, &rp, &err) != 0) return NULL;
    es_batch b = {0};
    size_t cap = 4096;
    float *p = malloc(cap * sizeof *p);
    if (!p || es_batch_alloc(&b, 256, es_model_n_dense(m), es_model_n_fields(m), 0) != 0) goto fail;
    for (;;) {
        int got = es_reader_next(r, &b);
        if (got < 0) goto fail;
        if (got == 0) break;
        if (*n + (size_t)got > cap) {
            cap *= 2;
            float *q = realloc(p, cap * sizeof *q);
            if (!q) goto fail;
            p = q;
        }
        if (es_model_predict_batch(m, &b, p + *n) != 0) goto fail;
        *n += (size_t)got;
    }
    es_batch_free(&b);
    es_reader_free(r);
    return p;
fail:
    es_batch_free(&b);
    es_reader_free(r);
    free(p);
    return NULL;
}

/* Index and bytes of the largest tensor of a container file. */
static int largest_tensor(const char *path, int *idx, size_t *bytes, uint64_t *offset) {
    es_file *f;
    es_err err = {0};
    if (es__file_open(&f, path, ES_FILE_NO_VERIFY, &err) != 0) return -1;
    *idx = -1;
    *bytes = 0;
    for (int i = 0; i < es__file_n_tensors(f); i++) {
        const es_tensor_ref *t = es__file_tensor_at(f, i);
        if (t->nbytes > *bytes) {
            *idx = i;
            *bytes = t->nbytes;
            *offset = es__file_tensor_offset(f, i);
        }
    }
    es__file_close(f);
    return *idx >= 0 ? 0 : -1;
}

TEST(load_inplace_maps_the_table_and_predicts_identically) {
    if (!big_ready()) return;
    int ti;
    size_t table;
    uint64_t off;
    CHECK(largest_tensor(BIG, &ti, &table, &off) == 0);
    printf("    table: tensor %d, %zu bytes at file offset %llu\n", ti, table, (unsigned long long)off);
    CHECK(table >= (size_t)4 << 20); /* the 8 MB budget is nearly all table */
    CHECK_EQ_INT(off % ES_FILE_PAGE_ALIGN, 0);

    es_err err = {0};
    es_model *mapped = NULL, *copied = NULL;
    CHECK_MSG(load_model(&mapped, BIG, ES_LOAD_NO_VERIFY, 0, 1, &err) == ES_OK, "%s", err.msg);
    CHECK_MSG(load_model(&copied, BIG, ES_LOAD_NO_VERIFY, 0, 0, &err) == ES_OK, "%s", err.msg);
    size_t mb = es__model_mapped_bytes(mapped);
    printf("    mapped %zu bytes in place (ES_NO_REMAP=1: %zu)\n", mb, es__model_mapped_bytes(copied));
    /* Whole pages are mapped; the last partial page of a tensor is copied. */
    CHECK_MSG(mb >= (table & ~(size_t)(ES_FILE_PAGE_ALIGN - 1)), "mapped %zu bytes, the table alone has %zu", mb, table);
    CHECK_EQ_INT(es__model_mapped_bytes(copied), 0);
    /* The public loader maps too (verification on: same placement). */
    es_model *pub = NULL;
    CHECK_MSG(es_model_load(&pub, BIG, 0, &err) == ES_OK, "%s", err.msg);
    CHECK_EQ_INT(es__model_mapped_bytes(pub), mb);
    es_model_free(pub);

    /* Bit for bit: raw probabilities, then the CLI-facing text output. */
    size_t n1, n2;
    float *p1 = predict_all(mapped, LAST_ROWS, &n1), *p2 = predict_all(copied, LAST_ROWS, &n2);
    CHECK(p1 && p2);
    CHECK_EQ_INT(n1, 1500);
    CHECK_EQ_INT(n2, n1);
    size_t diff = 0;
    while (diff < n1 && memcmp(&p1[diff], &p2[diff], sizeof(float)) == 0) diff++;
    CHECK_MSG(diff == n1, "row %zu: mapped load predicts %.9g, copied load %.9g", diff, diff < n1 ? p1[diff] : 0.f, diff < n1 ? p2[diff] : 0.f);
    free(p1);
    free(p2);
    const char *o1 = es_test_path("big_pred_mapped.txt"), *o2 = es_test_path("big_pred_copied.txt");
    uint64_t rows = 0;
    CHECK_MSG(es_model_predict_file(mapped, LAST_ROWS, 1, o1, &rows) == ES_OK, "%s", es_model_errmsg(mapped));
    CHECK_EQ_INT(rows, 1500);
    CHECK_MSG(es_model_predict_file(copied, LAST_ROWS, 1, o2, &rows) == ES_OK, "%s", es_model_errmsg(copied));
    CHECK_MSG(es_test_sh(NULL, "cmp %s %s", o1, o2) == 0, "predict_file outputs differ");
    /* And the same as the CLI's own predictions from the file. */
    const char *o3 = es_test_path("big_pred_cli.txt");
    CHECK(es_test_sh(NULL, "%s predict %s %s --out %s", es_bin(), BIG, LAST_ROWS, o3) == 0);
    CHECK_MSG(es_test_sh(NULL, "cmp %s %s", o1, o3) == 0, "CLI predictions differ from the in-process ones");

    /* The mapping outlives the container handle (closed at the end of the
     * load) and survives the file being replaced by rename, which is how
     * every embstore writer replaces a file. */
    const char *moved = es_test_path("big_replaced.es");
    CHECK(es_test_sh(NULL, "cp %s %s", BIG, moved) == 0);
    es_model *victim = NULL;
    CHECK_MSG(load_model(&victim, moved, 0, 0, 1, &err) == ES_OK, "%s", err.msg);
    CHECK(es__model_mapped_bytes(victim) > 0);
    CHECK(es_test_sh(NULL, "%s train %s --valid-frac 0.2 --model dlrm --storage hash --budget 8M --emb-optim rowwise --threads 1 --seed 12 --quiet --max-rows 3000 --out %s",
                     es_bin(), CRITEO, moved) == 0);
    CHECK_MSG(es_test_sh(NULL, "cmp -s %s %s", BIG, moved) != 0, "the retrained file is identical; the test would prove nothing");
    p1 = predict_all(victim, LAST_ROWS, &n1);
    p2 = predict_all(copied, LAST_ROWS, &n2);
    CHECK(p1 && p2 && n1 == n2);
    CHECK_MSG(memcmp(p1, p2, n1 * sizeof *p1) == 0, "a model mapped from a file changed when the file was replaced");
    free(p1);
    free(p2);
    es_model_free(victim);
    es_model_free(mapped);
    es_model_free(copied);
}

/* One pass of training over the first `batches` batches of CRITEO. */
static int train_some(es_model *m, int batches, double *loss) {
    es_reader_params rp = es_model_reader_params(m);
    es_reader *r = NULL;
    es_err err = {0};
    *loss = 0;
    if (es_reader_open(&r, CRITEO, &rp, &err) != 0) return -1;
    es_batch b = {0};
    int rc = es_batch_alloc(&b, 64, es_model_n_dense(m), es_model_n_fields(m), 0);
    for (int i = 0; rc == 0 && i < batches; i++) {
        int got = es_reader_next(r, &b);
        if (got <= 0) {
            rc = -1;
            break;
        }
        rc = es_model_train_batch(m, &b, loss);
    }
    if (rc) printf("    train_some: %s\n", es_model_errmsg(m));
    es_batch_free(&b);
    es_reader_free(r);
    return rc;
}

TEST(load_inplace_training_after_load_writes_private_pages) {
    if (!big_ready()) return;
    es_err err = {0};
    /* A checkpoint (optimizer state included) of the trained model. */
    const char *ckpt = es_test_path("big_state.es"), *pristine = es_test_path("big_state_copy.es");
    es_model *m0 = NULL;
    CHECK_MSG(load_model(&m0, BIG, 0, 0, 0, &err) == ES_OK, "%s", err.msg);
    CHECK_MSG(es__model_save(m0, ckpt, 1, &err) == ES_OK, "%s", err.msg);
    es_model_free(m0);
    CHECK(es_test_sh(NULL, "cp %s %s", ckpt, pristine) == 0);

    int prev_threads = es_set_threads(1); /* one thread: bit-for-bit repeatable */
    es_model *mapped = NULL, *copied = NULL;
    CHECK_MSG(load_model(&mapped, ckpt, 0, 1, 1, &err) == ES_OK, "%s", err.msg);
    CHECK_MSG(load_model(&copied, ckpt, 0, 1, 0, &err) == ES_OK, "%s", err.msg);
    int ti;
    size_t table;
    uint64_t off;
    CHECK(largest_tensor(ckpt, &ti, &table, &off) == 0);
    size_t mb = es__model_mapped_bytes(mapped);
    printf("    checkpoint: mapped %zu bytes (largest tensor %zu)\n", mb, table);
    CHECK(mb >= (table & ~(size_t)(ES_FILE_PAGE_ALIGN - 1)));

    double l1 = 0, l2 = 0;
    CHECK(train_some(mapped, 12, &l1) == 0);
    CHECK(train_some(copied, 12, &l2) == 0);
    printf("    loss over 12 batches: mapped %.9f, copied %.9f\n", l1, l2);
    CHECK_MSG(memcmp(&l1, &l2, sizeof l1) == 0, "training losses differ: %.17g vs %.17g", l1, l2);
    size_t n1, n2;
    float *p1 = predict_all(mapped, LAST_ROWS, &n1), *p2 = predict_all(copied, LAST_ROWS, &n2);
    CHECK(p1 && p2 && n1 == n2 && n1 == 1500);
    CHECK_MSG(memcmp(p1, p2, n1 * sizeof *p1) == 0, "predictions after training differ between a mapped and a copied load");
    free(p1);
    free(p2);

    /* The writes went to private copies: the file is untouched and still
     * verifies, and a fresh load predicts as the untrained model did. */
    CHECK_MSG(es_test_sh(NULL, "cmp %s %s", ckpt, pristine) == 0, "training after an in-place load changed the file");
    es_file *f;
    CHECK_MSG(es__file_open(&f, ckpt, 0, &err) == ES_OK, "%s", err.msg);
    const es_tensor_ref *t = es__file_tensor_at(f, ti);
    es_model *fresh = NULL;
    CHECK_MSG(load_model(&fresh, ckpt, 0, 1, 1, &err) == ES_OK, "%s", err.msg);
    /* Compare the trained table against the file: some rows moved. */
    es_tensor_ref refs[64];
    int ns = mapped->st->ops->tensors(mapped->st, NULL, 0);
    CHECK(ns > 0 && ns <= 64);
    mapped->st->ops->tensors(mapped->st, refs, ns);
    int found = -1;
    for (int i = 0; i < ns; i++)
        if (refs[i].nbytes == t->nbytes && strncmp(t->name, "storage.", 8) == 0 && strcmp(refs[i].name, t->name + 8) == 0) found = i;
    CHECK_MSG(found >= 0, "table tensor '%s' not found in the storage", t->name);
    CHECK_MSG(memcmp(refs[found].data, t->data, t->nbytes) != 0, "training did not change the table (the test would prove nothing)");
    fresh->st->ops->tensors(fresh->st, refs, ns);
    CHECK_MSG(memcmp(refs[found].data, t->data, t->nbytes) == 0, "a fresh load does not see the file's table");
    es__file_close(f);
    es_model_free(fresh);

    /* Saving the trained model over the very file it was mapped from
     * (a checkpoint does exactly that) keeps the model intact. */
    CHECK_MSG(es__model_save(mapped, ckpt, 1, &err) == ES_OK, "%s", err.msg);
    p1 = predict_all(mapped, LAST_ROWS, &n1);
    es_model *reloaded = NULL;
    CHECK_MSG(load_model(&reloaded, ckpt, 0, 1, 1, &err) == ES_OK, "%s", err.msg);
    p2 = predict_all(reloaded, LAST_ROWS, &n2);
    CHECK(p1 && p2 && n1 == n2);
    CHECK_MSG(memcmp(p1, p2, n1 * sizeof *p1) == 0, "a checkpoint saved from a mapped model reloads differently");
    free(p1);
    free(p2);
    es_model_free(reloaded);
    es_model_free(mapped);
    es_model_free(copied);
    es_set_threads(prev_threads);
}

TEST(load_inplace_verified_load_catches_a_corrupt_table) {
    if (!big_ready()) return;
    int ti;
    size_t table;
    uint64_t off;
    CHECK(largest_tensor(BIG, &ti, &table, &off) == 0);
    const char *bad = es_test_path("big_corrupt.es");
    CHECK(es_test_sh(NULL, "cp %s %s", BIG, bad) == 0);
    /* flip one byte in the middle of the table */
    FILE *fp = fopen(bad, "r+b");
    CHECK(fp);
    long at = (long)(off + table / 2 + 3);
    int c = (fseek(fp, at, SEEK_SET) == 0) ? fgetc(fp) : EOF;
    CHECK(c != EOF);
    CHECK(fseek(fp, at, SEEK_SET) == 0 && fputc(c ^ 0x40, fp) != EOF);
    CHECK(fclose(fp) == 0);

    es_err err = {0};
    es_model *m = (es_model *)1;
    CHECK_EQ_INT(es_model_load(&m, bad, 0, &err), ES_ECHECKSUM);
    CHECK(m == NULL);
    CHECK_STR_HAS(err.msg, bad);
    CHECK_STR_HAS(err.msg, "'storage.weight' checksum mismatch");
    /* Verification is what catches it: skipped, the load succeeds (in
     * place) and the damage is visible only to an explicit check. */
    CHECK_MSG(es_model_load(&m, bad, ES_LOAD_NO_VERIFY, &err) == ES_OK, "%s", err.msg);
    CHECK(es__model_mapped_bytes(m) > 0);
    es_model_free(m);
    es_file *f;
    CHECK_EQ_INT(es__file_open(&f, bad, ES_FILE_NO_VERIFY, &err), ES_OK);
    CHECK_EQ_INT(es__file_verify_tensor(f, ti, &err), ES_ECHECKSUM);
    es__file_close(f);
}
