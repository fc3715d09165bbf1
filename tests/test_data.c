/*
 * test_data.c — the data readers (src/data): every bad-input case named in
 * docs/data-formats.md fails with a message naming file:line(:column), the
 * bundled real files read with the documented counts, gzip gives the same
 * batches as plain text, pooling weights, bad-line skipping, rewind, and
 * allocation failures.  Expected counts for the real files come from
 * independent tools (awk/python) and are printed next to what was read.
 */
#include "test.h"

#include "core/core.h"
#include "data/lineio.h"
#include "data/reader_impl.h"

#include <errno.h>
#include <zlib.h>

#define CRITEO "data/criteo_kaggle_train_first10k.tsv"
#define XLEARN "data/criteo_xlearn_small_train.libffm"
#define MOVIELENS "data/ml-latest-small.csv"
#define DEEPCTR "data/criteo_deepctr_sample200.csv"

/* ---- helpers ---------------------------------------------------------------------- */
static int write_file(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t w = fwrite(data, 1, n, f);
    return fclose(f) == 0 && w == n ? 0 : -1;
}
static int write_str(const char *path, const char *s) { return write_file(path, s, strlen(s)); }

/* gzip src into dst with zlib (level 1: fast, still a real gzip stream). */
static int gzip_file(const char *src, const char *dst) {
    FILE *in = fopen(src, "rb");
    gzFile out = gzopen(dst, "wb1");
    if (!in || !out) {
        if (in) fclose(in);
        if (out) gzclose(out);
        return -1;
    }
    char buf[1 << 16];
    size_t k;
    int ok = 1;
    while ((k = fread(buf, 1, sizeof buf, in)) > 0)
        if (gzwrite(out, buf, (unsigned)k) != (int)k) ok = 0;
    fclose(in);
    if (gzclose(out) != Z_OK) ok = 0;
    return ok ? 0 : -1;
}

static long file_size(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fclose(f);
    return n;
}

/* Every row of a file, flattened, for comparisons. */
typedef struct {
    int n, D, F;
    float *label, *dense;
    uint32_t *off; /* [n*F + 1] */
    uint64_t *val;
    float *wt;
    size_t nv;
} table_t;

static void table_free(table_t *t) {
    free(t->label);
    free(t->dense);
    free(t->off);
    free(t->val);
    free(t->wt);
    memset(t, 0, sizeof *t);
}

/* Read r to the end with batches of `cap` rows; returns 0 or the error. */
static int read_all(es_reader *r, int cap, table_t *t) {
    memset(t, 0, sizeof *t);
    t->D = es_reader_n_dense(r);
    t->F = es_reader_n_fields(r);
    es_batch b;
    int rc = es_batch_alloc(&b, cap, t->D, t->F, 0);
    if (rc) return rc;
    size_t rcap = 0, vcap = 0;
    t->off = calloc(1, sizeof(uint32_t));
    for (;;) {
        rc = es_reader_next(r, &b);
        if (rc <= 0 && b.n == 0) break; /* on an error, b.n rows before it are valid */
        if ((size_t)(t->n + b.n) > rcap) {
            rcap = (rcap + (size_t)b.n) * 2;
            t->label = realloc(t->label, rcap * sizeof(float));
            t->dense = realloc(t->dense, rcap * (size_t)(t->D ? t->D : 1) * sizeof(float));
            t->off = realloc(t->off, (rcap * (size_t)t->F + 1) * sizeof(uint32_t));
        }
        size_t bv = b.off[(size_t)b.n * (size_t)t->F];
        if (t->nv + bv > vcap) {
            vcap = (vcap + bv) * 2 + 1;
            t->val = realloc(t->val, vcap * sizeof(uint64_t));
            t->wt = realloc(t->wt, vcap * sizeof(float));
        }
        memcpy(t->label + t->n, b.label, (size_t)b.n * sizeof(float));
        memcpy(t->dense + (size_t)t->n * (size_t)t->D, b.dense, (size_t)b.n * (size_t)t->D * sizeof(float));
        for (size_t i = 1; i <= (size_t)b.n * (size_t)t->F; i++)
            t->off[(size_t)t->n * (size_t)t->F + i] = (uint32_t)t->nv + b.off[i];
        if (bv) {
            memcpy(t->val + t->nv, b.val, bv * sizeof(uint64_t));
            memcpy(t->wt + t->nv, b.wt, bv * sizeof(float));
        }
        t->nv += bv;
        t->n += b.n;
        if (rc < 0) break;
    }
    es_batch_free(&b);
    return rc < 0 ? rc : 0;
}

/* 0 when identical, else prints the first difference and returns 1. */
static int table_diff(const table_t *a, const table_t *b) {
    if (a->n != b->n || a->D != b->D || a->F != b->F || a->nv != b->nv) {
        printf("    shapes differ: n %d/%d D %d/%d F %d/%d values %zu/%zu\n", a->n, b->n, a->D, b->D, a->F, b->F, a->nv, b->nv);
        return 1;
    }
    for (int i = 0; i < a->n; i++) {
        if (a->label[i] != b->label[i]) return printf("    row %d label %g vs %g\n", i, a->label[i], b->label[i]), 1;
        for (int j = 0; j < a->D; j++) {
            size_t k = (size_t)i * (size_t)a->D + (size_t)j;
            if (a->dense[k] != b->dense[k]) return printf("    row %d dense %d: %g vs %g\n", i, j, a->dense[k], b->dense[k]), 1;
        }
    }
    for (size_t i = 0; i <= (size_t)a->n * (size_t)a->F; i++)
        if (a->off[i] != b->off[i]) return printf("    off[%zu] %u vs %u\n", i, a->off[i], b->off[i]), 1;
    for (size_t i = 0; i < a->nv; i++)
        if (a->val[i] != b->val[i] || a->wt[i] != b->wt[i]) return printf("    value %zu differs\n", i), 1;
    return 0;
}

static es_reader *open_ok(const char *path, const es_reader_params *p) {
    es_reader *r = NULL;
    es_err err = {0};
    int rc = es_reader_open(&r, path, p, &err);
    if (rc) printf("    open %s failed: %s (%s)\n", path, err.msg, es_strerror(rc));
    return r;
}

/* Open and read a file expected to fail (at open or while reading);
 * returns the status and copies the message into msg. */
static int read_expect_fail(const char *path, const es_reader_params *p, char *msg, size_t cap) {
    es_reader *r = NULL;
    es_err err = {0};
    int rc = es_reader_open(&r, path, p, &err);
    if (rc) {
        snprintf(msg, cap, "%s", err.msg);
        printf("    open -> %d (%s): %s\n", rc, es_strerror(rc), msg);
        return rc;
    }
    table_t t;
    rc = read_all(r, 64, &t);
    snprintf(msg, cap, "%s", es_reader_errmsg(r));
    printf("    read %d rows -> %d (%s): %s\n", t.n, rc, es_strerror(rc), msg);
    table_free(&t);
    es_reader_free(r);
    return rc;
}

/* A valid Criteo line with label `y` and a distinct C1 token. */
static void criteo_line(char *buf, size_t cap, int y, int i) {
    int o = snprintf(buf, cap, "%d", y);
    for (int k = 0; k < 13; k++) o += snprintf(buf + o, cap - (size_t)o, "\t%d", (k * 7 + i) % 50 - 3);
    for (int k = 0; k < 26; k++) o += snprintf(buf + o, cap - (size_t)o, "\t%08x", (unsigned)(k * 1000 + i));
    snprintf(buf + o, cap - (size_t)o, "\n");
}

/* ---- bad input -------------------------------------------------------------------- */
TEST(reader_missing_file) {
    es_reader *r = (es_reader *)1;
    es_err err = {0};
    int rc = es_reader_open(&r, "data/no_such_file.tsv", NULL, &err);
    printf("    rc %d: %s\n", rc, err.msg);
    CHECK(rc < 0);
    CHECK(r == NULL);
    CHECK_STR_HAS(err.msg, "data/no_such_file.tsv");
    CHECK_STR_HAS(err.msg, "cannot open: No such file");
}

TEST(reader_empty_file) {
    char msg[600];
    const char *p = es_test_path("empty.tsv");
    CHECK(write_str(p, "") == 0);
    int rc = read_expect_fail(p, NULL, msg, sizeof msg);
    CHECK(rc == ES_EPARSE);
    CHECK_STR_HAS(msg, "empty.tsv: no data rows");
    /* a CSV with only a header and blank lines has no data rows either */
    p = es_test_path("header_only.csv");
    CHECK(write_str(p, "label,a,b\r\n\r\n\n") == 0);
    rc = read_expect_fail(p, NULL, msg, sizeof msg);
    CHECK(rc == ES_EPARSE);
    CHECK_STR_HAS(msg, "header_only.csv: no data rows");
    /* an empty gzip stream too */
    p = es_test_path("empty.tsv.gz");
    gzFile g = gzopen(p, "wb");
    CHECK(g != NULL);
    CHECK(gzclose(g) == Z_OK);
    rc = read_expect_fail(p, NULL, msg, sizeof msg);
    CHECK(rc == ES_EPARSE);
    CHECK_STR_HAS(msg, "no data rows");
}

TEST(reader_wrong_column_count) {
    char l1[1024], l2[1024], msg[600];
    criteo_line(l1, sizeof l1, 0, 1);
    criteo_line(l2, sizeof l2, 1, 2);
    char text[4096];
    /* line 3 loses its last column (39 columns) */
    snprintf(text, sizeof text, "%s%s%s", l1, l2, l1);
    char *last_tab = strrchr(text, '\t');
    memcpy(last_tab, "\n", 2);
    const char *p = es_test_path("cols39.tsv");
    CHECK(write_str(p, text) == 0);
    CHECK(read_expect_fail(p, NULL, msg, sizeof msg) == ES_EPARSE);
    CHECK_STR_HAS(msg, "cols39.tsv:3: expected 40 tab-separated columns, got 39");
    /* 41 columns on line 2 */
    snprintf(text, sizeof text, "%s", l1);
    size_t n = strlen(text);
    snprintf(text + n - 1, sizeof text - n, "\textra\n%s", l2);
    p = es_test_path("cols41.tsv");
    CHECK(write_str(p, text) == 0);
    CHECK(read_expect_fail(p, NULL, msg, sizeof msg) == ES_EPARSE);
    CHECK_STR_HAS(msg, "cols41.tsv:1: expected 40 tab-separated columns, got 41");
    /* CSV rows must match the header */
    p = es_test_path("cols.csv");
    CHECK(write_str(p, "y,a,b\n1,x,y\n0,x\n") == 0);
    CHECK(read_expect_fail(p, NULL, msg, sizeof msg) == ES_EPARSE);
    CHECK_STR_HAS(msg, "cols.csv:3: expected 3 columns, got 2");
}

TEST(reader_text_in_numeric_column) {
    char l1[1024], msg[600];
    criteo_line(l1, sizeof l1, 1, 5);
    /* replace I3 (column 4) with "abc" */
    char text[2048], *t = l1;
    for (int k = 0; k < 3; k++) t = strchr(t, '\t') + 1;
    char *e = strchr(t, '\t');
    snprintf(text, sizeof text, "%s%.*sabc%s", l1, (int)(t - l1), l1, e);
    const char *p = es_test_path("text_num.tsv");
    CHECK(write_str(p, text) == 0);
    CHECK(read_expect_fail(p, NULL, msg, sizeof msg) == ES_EPARSE);
    CHECK_STR_HAS(msg, "text_num.tsv:2:column 4 (I3): expected a number, got 'abc'");
    /* CSV num column */
    p = es_test_path("text_num.csv");
    CHECK(write_str(p, "click,price,shop\n1,3.5,a\n0,abc,b\n") == 0);
    es_reader_params rp = es_reader_params_default();
    rp.columns = "click:label,price:num,shop:cat";
    CHECK(read_expect_fail(p, &rp, msg, sizeof msg) == ES_EPARSE);
    CHECK_STR_HAS(msg, "text_num.csv:3:column 2 (price): expected a number, got 'abc'");
    /* a label that is not 0/1 */
    p = es_test_path("label2.tsv");
    criteo_line(l1, sizeof l1, 2, 1);
    CHECK(write_str(p, l1) == 0);
    CHECK(read_expect_fail(p, NULL, msg, sizeof msg) == ES_EPARSE);
    CHECK_STR_HAS(msg, "label2.tsv:1:column 1 (label): label must be 0 or 1");
    /* inf / nan / hex are not numbers */
    p = es_test_path("nan.csv");
    CHECK(write_str(p, "click,price\n1,nan\n") == 0);
    rp.columns = "click:label,price:num";
    CHECK(read_expect_fail(p, &rp, msg, sizeof msg) == ES_EPARSE);
    CHECK_STR_HAS(msg, "expected a number, got 'nan'");
}

TEST(reader_10mb_line) {
    const char *p = es_test_path("longline.tsv");
    char l1[1024];
    criteo_line(l1, sizeof l1, 1, 3);
    size_t big = (size_t)10 << 20, n1 = strlen(l1);
    char *text = malloc(2 * n1 + big + 1);
    CHECK(text != NULL);
    memcpy(text, l1, n1);
    memset(text + n1, '7', big);
    text[n1 + big - 1] = '\n';
    memcpy(text + n1 + big, l1, n1);
    int wr = write_file(p, text, 2 * n1 + big);
    free(text);
    CHECK(wr == 0);
    char msg[600];
    CHECK(read_expect_fail(p, NULL, msg, sizeof msg) == ES_EPARSE);
    CHECK_STR_HAS(msg, "longline.tsv:2: line longer than 1048576 bytes");
    /* skipping it: the line after it is read normally */
    es_reader_params rp = es_reader_params_default();
    rp.skip_bad = 1;
    es_reader *r = open_ok(p, &rp);
    CHECK(r != NULL);
    table_t t;
    int rc = read_all(r, 16, &t);
    printf("    skip_bad: rows %d bad %llu lines %llu report: %s\n", t.n, (unsigned long long)es_reader_bad_lines(r),
           (unsigned long long)es_reader_lines(r), es_reader_bad_report(r));
    CHECK_EQ_INT(rc, 0);
    CHECK_EQ_INT(t.n, 2);
    CHECK_EQ_INT(es_reader_bad_lines(r), 1);
    CHECK_EQ_INT(es_reader_lines(r), 3);
    table_free(&t);
    es_reader_free(r);
    /* the same as the very first line (a long line during open's peek) */
    p = es_test_path("longfirst.csv");
    text = malloc(big + 64);
    CHECK(text != NULL);
    memcpy(text, "y,a\n", 4);
    memset(text + 4, 'x', big);
    memcpy(text + 4 + big, "\n1,b\n", 5);
    wr = write_file(p, text, big + 9);
    free(text);
    CHECK(wr == 0);
    CHECK(read_expect_fail(p, NULL, msg, sizeof msg) == ES_EPARSE);
    CHECK_STR_HAS(msg, "longfirst.csv:2: line longer than 1048576 bytes");
}

TEST(reader_binary_garbage) {
    char msg[600];
    char l1[1024];
    criteo_line(l1, sizeof l1, 0, 1);
    /* a NUL byte inside a categorical token */
    char text[2048];
    size_t n = strlen(l1);
    memcpy(text, l1, n);
    memcpy(text + n, l1, n);
    text[n + n - 5] = 0;
    const char *p = es_test_path("nul.tsv");
    CHECK(write_file(p, text, 2 * n) == 0);
    CHECK(read_expect_fail(p, NULL, msg, sizeof msg) == ES_EPARSE);
    CHECK_STR_HAS(msg, "nul.tsv:2:column");
    CHECK_STR_HAS(msg, "NUL byte");
    /* invalid UTF-8 */
    p = es_test_path("latin1.csv");
    CHECK(write_str(p, "y,name\n1,caf\xe9\n") == 0);
    CHECK(read_expect_fail(p, NULL, msg, sizeof msg) == ES_EPARSE);
    CHECK_STR_HAS(msg, "latin1.csv:2:column 6: invalid UTF-8");
    /* random bytes, read as each format: an error, never a crash */
    es_rng rng;
    es__rng_seed(&rng, 99);
    unsigned char junk[8192];
    for (size_t i = 0; i < sizeof junk; i++) junk[i] = (unsigned char)es__rng_u64(&rng);
    const char *names[] = {"junk.tsv", "junk.csv", "junk.libsvm", "junk.libffm"};
    for (int k = 0; k < 4; k++) {
        p = es_test_path(names[k]);
        CHECK(write_file(p, junk, sizeof junk) == 0);
        int rc = read_expect_fail(p, NULL, msg, sizeof msg);
        CHECK(rc < 0);
        CHECK_STR_HAS(msg, names[k]);
    }
    /* other compressors are named */
    p = es_test_path("z.tsv");
    CHECK(write_file(p, "\x28\xb5\x2f\xfd\x00\x00\x00\x00", 8) == 0);
    CHECK(read_expect_fail(p, NULL, msg, sizeof msg) == ES_EUNSUPPORTED);
    CHECK_STR_HAS(msg, "zstd-compressed input is not supported");
}

TEST(reader_truncated_gz) {
    const char *gz = es_test_path("criteo_trunc_full.tsv.gz");
    CHECK(gzip_file(CRITEO, gz) == 0);
    long n = file_size(gz);
    printf("    gzip size %ld\n", n);
    CHECK(n > 1000);
    char *bytes = es_test_slurp(gz);
    CHECK(bytes != NULL);
    const char *cut = es_test_path("criteo_trunc.tsv.gz");
    CHECK(write_file(cut, bytes, (size_t)n / 2) == 0);
    char msg[600];
    int rc = read_expect_fail(cut, NULL, msg, sizeof msg);
    CHECK(rc == ES_EIO);
    CHECK_STR_HAS(msg, "criteo_trunc.tsv.gz: unexpected end of gzip stream");
    /* only the 8-byte trailer missing: still truncated */
    CHECK(write_file(cut, bytes, (size_t)n - 4) == 0);
    rc = read_expect_fail(cut, NULL, msg, sizeof msg);
    CHECK(rc == ES_EIO);
    CHECK_STR_HAS(msg, "unexpected end of gzip stream");
    /* corrupt data in the middle */
    bytes[n / 2] ^= 0x55;
    bytes[n / 2 + 1] ^= 0xaa;
    const char *bad = es_test_path("criteo_corrupt.tsv.gz");
    CHECK(write_file(bad, bytes, (size_t)n) == 0);
    rc = read_expect_fail(bad, NULL, msg, sizeof msg);
    CHECK(rc < 0);
    CHECK_STR_HAS(msg, "criteo_corrupt.tsv.gz");
    /* junk after a complete member */
    bytes[n / 2] ^= 0x55;
    bytes[n / 2 + 1] ^= 0xaa;
    char *more = malloc((size_t)n + 4);
    CHECK(more != NULL);
    memcpy(more, bytes, (size_t)n);
    memcpy(more + n, "junk", 4);
    CHECK(write_file(bad, more, (size_t)n + 4) == 0);
    free(more);
    free(bytes);
    rc = read_expect_fail(bad, NULL, msg, sizeof msg);
    CHECK(rc == ES_EPARSE);
    CHECK_STR_HAS(msg, "unexpected data after the end of the gzip stream");
    /* a broken stream is never a bad line to skip (this once looped forever) */
    es_reader_params rp = es_reader_params_default();
    rp.skip_bad = 1;
    rc = read_expect_fail(bad, &rp, msg, sizeof msg);
    CHECK(rc == ES_EPARSE);
    CHECK_STR_HAS(msg, "unexpected data after the end of the gzip stream");
    rc = read_expect_fail(cut, &rp, msg, sizeof msg);
    CHECK(rc == ES_EIO);
    CHECK_STR_HAS(msg, "unexpected end of gzip stream");
}

/* ---- real files -------------------------------------------------------------------- */
TEST(reader_criteo_real_file) {
    es_reader *r = open_ok(CRITEO, NULL);
    CHECK(r != NULL);
    CHECK_EQ_INT(es_reader_n_dense(r), 13);
    CHECK_EQ_INT(es_reader_n_fields(r), 26);
    CHECK(strcmp(es_reader_dense_name(r, 0), "I1") == 0 && strcmp(es_reader_dense_name(r, 12), "I13") == 0);
    CHECK(strcmp(es_reader_field_name(r, 0), "C1") == 0 && strcmp(es_reader_field_name(r, 25), "C26") == 0);
    CHECK(es_reader_field_name(r, 26) == NULL && es_reader_dense_name(r, -1) == NULL);
    table_t t;
    int rc = read_all(r, 1000, &t);
    CHECK_EQ_INT(rc, 0);
    int pos = 0;
    size_t missing = 0;
    double dsum = 0;
    for (int i = 0; i < t.n; i++) pos += t.label[i] == 1.0f;
    for (size_t i = 0; i < (size_t)t.n * 13; i++) dsum += t.dense[i];
    for (size_t i = 0; i < t.nv; i++) missing += t.val[i] == ES_KEY_MISSING;
    printf("    rows %d (expect 10000), positives %d (expect 2182), values %zu (expect 260000), missing %zu (awk: 29640)\n",
           t.n, pos, t.nv, missing);
    printf("    sum of transformed dense %.6f (python: 247792.759540)\n", dsum);
    CHECK_EQ_INT(t.n, 10000);
    CHECK_EQ_INT(pos, 2182);
    CHECK_EQ_INT(t.nv, 260000);
    CHECK_EQ_INT(missing, 29640);
    CHECK_NEAR(dsum, 247792.75954044424, 0.05);
    CHECK_EQ_INT(es_reader_rows(r), 10000);
    CHECK_EQ_INT(es_reader_lines(r), 10000);
    CHECK_EQ_INT(es_reader_bad_lines(r), 0);
    CHECK(strcmp(es_reader_bad_report(r), "") == 0);
    /* row 0: 0 1 1 5 0 1382 4 15 2 181 1 2 <empty> 2 68fd1e64 ... */
    CHECK_EQ_INT(t.label[0], 0);
    CHECK_NEAR(t.dense[0], log1p(1.0), 1e-6);
    CHECK_NEAR(t.dense[2], log1p(5.0), 1e-6);
    CHECK_NEAR(t.dense[3], 0.0, 0);
    CHECK_NEAR(t.dense[4], log1p(1382.0), 1e-5);
    CHECK_NEAR(t.dense[11], 0.0, 0); /* I12 missing */
    CHECK(t.val[0] == es_key("68fd1e64", 8));
    CHECK(t.val[21] == ES_KEY_MISSING); /* C22 empty */
    CHECK(t.val[25] == es_key("9727dd16", 8));
    for (int i = 0; i <= t.n * 26; i++) CHECK_MSG(t.off[i] == (uint32_t)i, "off[%d] = %u", i, t.off[i]);
    for (size_t i = 0; i < t.nv; i++) CHECK(t.wt[i] == 1.0f);
    /* another batch at the end gives 0 rows, again and again */
    es_batch b;
    CHECK(es_batch_alloc(&b, 8, 13, 26, 0) == 0);
    CHECK_EQ_INT(es_reader_next(r, &b), 0);
    CHECK_EQ_INT(es_reader_next(r, &b), 0);
    es_batch_free(&b);
    table_free(&t);
    es_reader_free(r);
}

TEST(reader_criteo_gzip_identical) {
    const char *gz = es_test_path("criteo10k.tsv.gz");
    CHECK(gzip_file(CRITEO, gz) == 0);
    es_reader *a = open_ok(CRITEO, NULL), *g = open_ok(gz, NULL);
    CHECK(a && g);
    CHECK(!es__lineio_is_gzip(a->io) && es__lineio_is_gzip(g->io));
    table_t ta, tg;
    CHECK_EQ_INT(read_all(a, 1000, &ta), 0);
    CHECK_EQ_INT(read_all(g, 777, &tg), 0); /* a different batch size on purpose */
    printf("    plain %d rows / %zu values, gzip (%ld bytes) %d rows / %zu values\n", ta.n, ta.nv, file_size(gz), tg.n, tg.nv);
    CHECK_EQ_INT(tg.n, 10000);
    CHECK(table_diff(&ta, &tg) == 0);
    /* two concatenated gzip members read as one stream */
    char *bytes = es_test_slurp(gz);
    long n = file_size(gz);
    CHECK(bytes != NULL);
    char *two = malloc(2 * (size_t)n);
    CHECK(two != NULL);
    memcpy(two, bytes, (size_t)n);
    memcpy(two + n, bytes, (size_t)n);
    const char *gz2 = es_test_path("criteo20k.tsv.gz");
    int wr = write_file(gz2, two, 2 * (size_t)n);
    free(two);
    free(bytes);
    CHECK(wr == 0);
    es_reader *g2 = open_ok(gz2, NULL);
    CHECK(g2 != NULL);
    table_t t2;
    CHECK_EQ_INT(read_all(g2, 4096, &t2), 0);
    printf("    two members: %d rows\n", t2.n);
    CHECK_EQ_INT(t2.n, 20000);
    CHECK(t2.val[260000] == ta.val[0] && t2.label[19999] == ta.label[9999]);
    table_free(&t2);
    es_reader_free(g2);
    table_free(&ta);
    table_free(&tg);
    es_reader_free(a);
    es_reader_free(g);
}

TEST(reader_criteo_unlabeled) {
    /* the first 50 rows of the real file without their label column */
    FILE *in = fopen(CRITEO, "rb");
    CHECK(in != NULL);
    const char *p = es_test_path("unlabeled.tsv");
    FILE *out = fopen(p, "wb");
    CHECK(out != NULL);
    char line[8192];
    for (int i = 0; i < 50 && fgets(line, sizeof line, in); i++) fputs(strchr(line, '\t') + 1, out);
    fclose(in);
    fclose(out);
    es_reader_params rp = es_reader_params_default();
    rp.has_label = 0;
    es_reader *r = open_ok(p, &rp), *full = open_ok(CRITEO, NULL);
    CHECK(r && full);
    table_t t;
    CHECK_EQ_INT(read_all(r, 16, &t), 0);
    es_batch b;
    CHECK(es_batch_alloc(&b, 50, 13, 26, 0) == 0);
    CHECK_EQ_INT(es_reader_next(full, &b), 50);
    printf("    unlabeled rows %d; dense[0] %g vs labeled %g\n", t.n, t.dense[0], b.dense[0]);
    CHECK_EQ_INT(t.n, 50);
    for (int i = 0; i < 50; i++) CHECK(t.label[i] == 0.0f);
    CHECK(memcmp(t.dense, b.dense, 50 * 13 * sizeof(float)) == 0);
    CHECK(memcmp(t.val, b.val, 50 * 26 * sizeof(uint64_t)) == 0);
    es_batch_free(&b);
    table_free(&t);
    es_reader_free(r);
    /* a labeled file read as unlabeled has one column too many */
    char msg[600];
    CHECK(read_expect_fail(CRITEO, &rp, msg, sizeof msg) == ES_EPARSE);
    CHECK_STR_HAS(msg, ":1: expected 39 tab-separated columns, got 40");
    es_reader_free(full);
}

/* The parallel Criteo path must give exactly what the serial one gives:
 * rows, values, bad-line counts, reports and the error where it stops. */
TEST(reader_criteo_threads_identical) {
    /* the real file with bad lines sprinkled in (every 997th line) */
    FILE *in = fopen(CRITEO, "rb");
    CHECK(in != NULL);
    const char *p = es_test_path("threads.tsv");
    FILE *out = fopen(p, "wb");
    CHECK(out != NULL);
    char line[8192];
    int i = 0;
    while (fgets(line, sizeof line, in)) {
        if (++i % 997 == 0) fputs(i % 2 ? "1\tnot\tenough\n" : "\n\n", out);
        if (i % 1999 == 0) line[0] = '5';
        fputs(line, out);
    }
    fclose(in);
    fclose(out);
    for (int skip = 0; skip <= 1; skip++) {
        table_t t[2];
        uint64_t bad[2], lines[2];
        char msg[2][600];
        int rc[2];
        for (int th = 0; th < 2; th++) {
            es_reader_params rp = es_reader_params_default();
            rp.skip_bad = skip;
            rp.threads = th ? 2 : 1;
            es_reader *r = open_ok(p, &rp);
            CHECK(r != NULL);
            rc[th] = read_all(r, 700, &t[th]);
            bad[th] = es_reader_bad_lines(r);
            lines[th] = es_reader_lines(r);
            snprintf(msg[th], sizeof msg[th], "%s", skip ? es_reader_bad_report(r) : es_reader_errmsg(r));
            es_reader_free(r);
        }
        printf("    skip_bad=%d: 1 thread rc %d rows %d bad %llu lines %llu; 2 threads rc %d rows %d bad %llu lines %llu\n", skip,
               rc[0], t[0].n, (unsigned long long)bad[0], (unsigned long long)lines[0], rc[1], t[1].n,
               (unsigned long long)bad[1], (unsigned long long)lines[1]);
        printf("    first message: %.120s\n", msg[0]);
        CHECK_EQ_INT(rc[0], rc[1]);
        CHECK(table_diff(&t[0], &t[1]) == 0);
        CHECK_EQ_INT(bad[0], bad[1]);
        CHECK_EQ_INT(lines[0], lines[1]);
        CHECK(strcmp(msg[0], msg[1]) == 0);
        if (skip) {
            /* 5 short lines (odd multiples of 997) + 5 labels of 5 */
            CHECK_EQ_INT(t[0].n, 10000 - 5);
            CHECK_EQ_INT(bad[0], 10);
        } else {
            CHECK_EQ_INT(rc[0], ES_EPARSE);
            CHECK_EQ_INT(t[0].n, 996);
            CHECK_STR_HAS(msg[0], "threads.tsv:997: expected 40 tab-separated columns, got 3");
        }
        table_free(&t[0]);
        table_free(&t[1]);
    }
}

TEST(reader_csv_quotes) {
    const char *p = es_test_path("quotes.csv");
    CHECK(write_str(p, "\xef\xbb\xbfid,title,\"genres\",score\r\n"
                       "1,\"American President, The (1995)\",Comedy|Drama,4.5\r\n"
                       "0,\"11'09\"\"01 - September 11 (2002)\",Drama,\r\n"
                       "1,plain,,-2\r\n"
                       "0,\"\",\"A|B\",1e3\r\n") == 0);
    es_reader_params rp = es_reader_params_default();
    rp.columns = "id:label, title:cat, genres:multi, score:num";
    es_reader *r = open_ok(p, &rp);
    CHECK(r != NULL);
    CHECK_EQ_INT(es_reader_n_fields(r), 2);
    CHECK_EQ_INT(es_reader_n_dense(r), 1);
    CHECK(strcmp(es_reader_field_name(r, 1), "genres") == 0);
    CHECK(strcmp(es_reader_dense_name(r, 0), "score") == 0);
    table_t t;
    CHECK_EQ_INT(read_all(r, 3, &t), 0);
    printf("    rows %d values %zu labels %g %g %g %g\n", t.n, t.nv, t.label[0], t.label[1], t.label[2], t.label[3]);
    CHECK_EQ_INT(t.n, 4);
    CHECK(t.label[0] == 1 && t.label[1] == 0 && t.label[2] == 1 && t.label[3] == 0);
    CHECK(t.val[t.off[0]] == es_key("American President, The (1995)", 30));
    CHECK(t.val[t.off[2]] == es_key("11'09\"01 - September 11 (2002)", 30));
    CHECK(t.val[t.off[4]] == es_key("plain", 5));
    CHECK(t.val[t.off[6]] == ES_KEY_MISSING); /* "" is an empty (missing) value */
    CHECK_EQ_INT(t.off[2] - t.off[1], 2);     /* Comedy|Drama */
    CHECK_EQ_INT(t.off[6] - t.off[5], 0);     /* empty multi -> no values */
    CHECK_EQ_INT(t.off[8] - t.off[7], 2);     /* "A|B" quoted */
    CHECK(t.val[t.off[7]] == es_key("A", 1) && t.val[t.off[7] + 1] == es_key("B", 1));
    CHECK_NEAR(t.dense[0], log1p(4.5), 1e-6);
    CHECK_NEAR(t.dense[1], 0, 0);
    CHECK_NEAR(t.dense[2], -log1p(2.0), 1e-6);
    CHECK_NEAR(t.dense[3], log1p(1000.0), 1e-5);
    table_free(&t);
    es_reader_free(r);
    /* quote errors name line and column */
    char msg[600];
    p = es_test_path("badquote.csv");
    CHECK(write_str(p, "y,t\n1,\"open\n") == 0);
    CHECK(read_expect_fail(p, NULL, msg, sizeof msg) == ES_EPARSE);
    CHECK_STR_HAS(msg, "badquote.csv:2:column 2 (t): unterminated quoted field");
    CHECK(write_str(p, "y,t\n1,\"a\"b\n") == 0);
    CHECK(read_expect_fail(p, NULL, msg, sizeof msg) == ES_EPARSE);
    CHECK_STR_HAS(msg, "badquote.csv:2:column 2 (t): unexpected character after a closing quote");
}

TEST(reader_csv_spec_and_params) {
    const char *p = es_test_path("spec.csv");
    CHECK(write_str(p, "a,b,c\n1,2,3\n") == 0);
    es_reader_params rp = es_reader_params_default();
    const struct {
        const char *spec;
        const char *want;
    } cases[] = {
        {"a:label,zz:cat", "columns: 'zz' is not a column of"},
        {"a:label,b:bogus", "columns: unknown role 'bogus' for 'b'"},
        {"a:label,b", "columns: 'b' has no role"},
        {"a:label,7:cat", "columns: index 7 is out of range"},
        {"a:label,b:cat,1:num", "columns: column 'b' is given twice"},
        {"a:label,b:label", "columns: more than one label column ('a' and 'b')"},
        {"b:cat", "columns: no label column"},
    };
    for (size_t i = 0; i < ES_ARRAY_LEN(cases); i++) {
        rp.columns = cases[i].spec;
        es_reader *r = NULL;
        es_err err = {0};
        int rc = es_reader_open(&r, p, &rp, &err);
        printf("    '%s' -> %d: %s\n", cases[i].spec, rc, err.msg);
        CHECK(rc == ES_EINVAL && r == NULL);
        CHECK_STR_HAS(err.msg, cases[i].want);
    }
    /* index columns without a header, tab delimiter from the name */
    p = es_test_path("noheader.tsv");
    CHECK(write_str(p, "x\t1\t0.5\n\ny\t0\t-1\n") == 0);
    rp = es_reader_params_default();
    rp.format = ES_FMT_CSV;
    rp.header = 0;
    rp.columns = "1:label,0:cat,2:num";
    es_reader *r = open_ok(p, &rp);
    CHECK(r != NULL);
    table_t t;
    CHECK_EQ_INT(read_all(r, 8, &t), 0);
    printf("    header-less: rows %d fields %d dense %d name %s\n", t.n, t.F, t.D, es_reader_field_name(r, 0));
    CHECK_EQ_INT(t.n, 2);
    CHECK(strcmp(es_reader_field_name(r, 0), "c0") == 0);
    CHECK(t.label[0] == 1 && t.label[1] == 0 && t.val[0] == es_key("x", 1));
    CHECK_NEAR(t.dense[1], -log1p(1.0), 1e-6);
    CHECK_EQ_INT(es_reader_lines(r), 3);
    table_free(&t);
    es_reader_free(r);
    /* names need a header */
    rp.columns = "a:label";
    es_err err = {0};
    CHECK(es_reader_open(&r, p, &rp, &err) == ES_EINVAL);
    CHECK_STR_HAS(err.msg, "has no header, so name columns by 0-based index");
    /* unknown extension, bad params */
    CHECK(es_reader_open(&r, "data/make_movielens.sh", NULL, &err) == ES_EINVAL);
    CHECK_STR_HAS(err.msg, "cannot tell the format from the file name");
    rp = es_reader_params_default();
    rp.max_line = (size_t)1 << 40;
    CHECK(es_reader_open(&r, CRITEO, &rp, &err) == ES_EINVAL);
    CHECK_STR_HAS(err.msg, "max_line");
    rp = es_reader_params_default();
    rp.delim = '"';
    CHECK(es_reader_open(&r, CRITEO, &rp, &err) == ES_EINVAL);
    /* a batch of the wrong shape is refused with a message */
    r = open_ok(CRITEO, NULL);
    CHECK(r != NULL);
    es_batch b;
    CHECK(es_batch_alloc(&b, 4, 13, 3, 0) == 0);
    CHECK(es_reader_next(r, &b) == ES_EINVAL);
    CHECK_STR_HAS(es_reader_errmsg(r), "does not match the reader");
    es_batch_free(&b);
    es_reader_free(r);
    es_reader_free(NULL);
}

TEST(reader_multi_pooling_sum_mean) {
    const char *p = es_test_path("multi.csv");
    CHECK(write_str(p, "y,tags,u\n1,a|b|c,u1\n0,,u2\n1,a||d,u3\n0,solo,u4\n") == 0);
    for (int mean = 0; mean <= 1; mean++) {
        es_reader_params rp = es_reader_params_default();
        rp.columns = "y:label,tags:multi,u:cat";
        rp.pool = mean ? ES_POOL_MEAN : ES_POOL_SUM;
        es_reader *r = open_ok(p, &rp);
        CHECK(r != NULL);
        table_t t;
        CHECK_EQ_INT(read_all(r, 2, &t), 0);
        printf("    %s: counts %u %u %u %u, weights row0 %g %g %g row2 %g %g\n", mean ? "mean" : "sum", t.off[1] - t.off[0],
               t.off[3] - t.off[2], t.off[5] - t.off[4], t.off[7] - t.off[6], t.wt[0], t.wt[1], t.wt[2], t.wt[t.off[4]],
               t.wt[t.off[4] + 1]);
        CHECK_EQ_INT(t.n, 4);
        CHECK_EQ_INT(t.off[1] - t.off[0], 3);
        CHECK_EQ_INT(t.off[3] - t.off[2], 0);
        CHECK_EQ_INT(t.off[5] - t.off[4], 2); /* empty piece skipped */
        CHECK_EQ_INT(t.off[7] - t.off[6], 1);
        float w3 = mean ? 1.0f / 3.0f : 1.0f, w2 = mean ? 0.5f : 1.0f;
        for (int k = 0; k < 3; k++) CHECK_NEAR(t.wt[k], w3, 1e-7);
        CHECK_NEAR(t.wt[t.off[4]], w2, 1e-7);
        CHECK_NEAR(t.wt[t.off[4] + 1], w2, 1e-7);
        CHECK_NEAR(t.wt[t.off[6]], 1.0, 0);
        CHECK(t.val[t.off[4] + 1] == es_key("d", 1));
        /* the single-valued field keeps weight 1 under either pooling */
        CHECK_NEAR(t.wt[t.off[1]], 1.0, 0);
        table_free(&t);
        es_reader_free(r);
    }
}

TEST(reader_libffm_xlearn) {
    es_reader *r = open_ok(XLEARN, NULL);
    CHECK(r != NULL);
    CHECK_EQ_INT(es_reader_n_fields(r), 18); /* fields 0..17 */
    CHECK_EQ_INT(es_reader_n_dense(r), 0);
    table_t t;
    CHECK_EQ_INT(read_all(r, 64, &t), 0);
    int pos = 0;
    double wsum = 0;
    for (int i = 0; i < t.n; i++) pos += t.label[i] == 1.0f;
    for (size_t i = 0; i < t.nv; i++) wsum += t.wt[i];
    printf("    rows %d (expect 200) positives %d (48) terms %zu (3508) weight sum %.4f (python 1303.1186)\n", t.n, pos, t.nv, wsum);
    CHECK_EQ_INT(t.n, 200);
    CHECK_EQ_INT(pos, 48);
    CHECK_EQ_INT(t.nv, 3508);
    CHECK_NEAR(wsum, 1303.11861, 1e-2);
    /* row 0: "1 0:0:0.3651 2:1163:0.3651 ... 17:2434:0.50000 16:7755:0.50000" */
    CHECK(t.label[0] == 1.0f);
    CHECK_EQ_INT(t.off[1] - t.off[0], 1);
    CHECK(t.val[t.off[0]] == es_key("0", 1));
    CHECK_NEAR(t.wt[t.off[0]], 0.3651, 1e-7);
    CHECK_EQ_INT(t.off[2] - t.off[1], 0); /* field 1 absent */
    CHECK(t.val[t.off[16]] == es_key("7755", 4));
    CHECK(t.val[t.off[17]] == es_key("2434", 4));
    CHECK_NEAR(t.wt[t.off[17]], 0.5, 0);
    table_free(&t);
    es_reader_free(r);
    /* with a hint, a field beyond it is a bad line naming the term */
    es_reader_params rp = es_reader_params_default();
    rp.n_fields_hint = 17;
    char msg[600];
    CHECK(read_expect_fail(XLEARN, &rp, msg, sizeof msg) == ES_EPARSE);
    CHECK_STR_HAS(msg, "criteo_xlearn_small_train.libffm:1:column");
    CHECK_STR_HAS(msg, "field 17 of term '17:2434:0.50000' is out of range (n_fields = 17)");
}

/* Every kind of bad libffm term, after good terms on the same line (which
 * take the one-pass path), names its line, column and term; unusual but
 * valid terms (a leading-zero field, a 10-digit value, a value with an
 * exponent, fields out of order) read as the general code reads them. */
TEST(reader_libffm_term_errors_and_odd_terms) {
    const char *p = es_test_path("terms.libffm");
    static const struct {
        const char *line, *msg;
    } bad[] = {
        {"1 0:a:1 x\n", "terms.libffm:1:column 9: expected field:index:value, got 'x'"},
        {"1 0:a:1 0:ab\n", "column 9: expected field:index:value, got '0:ab'"},
        {"1 0:a:1 1:b:2:3\n", "column 9: term '1:b:2:3' has more than three parts"},
        {"1 0:a:1 z:a:1\n", "column 9: the field of term 'z:a:1' is not a non-negative integer"},
        {"1 0:a:1 1234567890:a:1\n", "column 9: the field of term '1234567890:a:1' is not a non-negative integer"},
        {"1 0:a:1 :a:1\n", "column 9: the field of term ':a:1' is not a non-negative integer"},
        {"1 0:a:1 3:abcdefghijk:1\n", "column 9: field 3 of term '3:abcdefghijk:1' is out of range (n_fields = 3)"},
        {"1 0:a:1 1::1\n", "column 9: term '1::1' has an empty index"},
        {"1 0:a:1 1:b:x\n", "column 9: the value of term '1:b:x' is not a finite number"},
        {"1 0:a:1 1:b:\n", "column 9: the value of term '1:b:' is not a finite number"},
        {"1 0:a:1 1:b:1e999\n", "column 9: the value of term '1:b:1e999' is not a finite number"},
    };
    es_reader_params rp = es_reader_params_default();
    rp.format = ES_FMT_LIBFFM;
    rp.n_fields_hint = 3;
    char msg[600];
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CHECK(write_str(p, bad[i].line) == 0);
        CHECK(read_expect_fail(p, &rp, msg, sizeof msg) == ES_EPARSE);
        CHECK_STR_HAS(msg, bad[i].msg);
    }
    CHECK(write_str(p, "1 01:x:1 2:yy:1234567890\t0:z:2.5e1  2:w:07 #c\n0 2:abcdefghijklmnopq:3\n") == 0);
    rp.pool = ES_POOL_SUM;
    es_reader *r = open_ok(p, &rp);
    CHECK(r != NULL);
    table_t t;
    CHECK_EQ_INT(read_all(r, 8, &t), 0);
    CHECK_EQ_INT(t.n, 2);
    CHECK_EQ_INT(t.nv, 5);
    /* row 0 by field: 0:z, 1:x, 2:yy, 2:w */
    CHECK(t.off[0] == 0 && t.off[1] == 1 && t.off[2] == 2 && t.off[3] == 4 && t.off[4] == 4 && t.off[5] == 4 && t.off[6] == 5);
    CHECK(t.val[0] == es_key("z", 1) && t.wt[0] == 25.0f);
    CHECK(t.val[1] == es_key("x", 1) && t.wt[1] == 1.0f);
    CHECK(t.val[2] == es_key("yy", 2) && t.wt[2] == 1234567890.0f);
    CHECK(t.val[3] == es_key("w", 1) && t.wt[3] == 7.0f);
    CHECK(t.val[4] == es_key("abcdefghijklmnopq", 17) && t.wt[4] == 3.0f);
    table_free(&t);
    es_reader_free(r);
}

TEST(reader_libsvm) {
    const char *p = es_test_path("small.libsvm");
    CHECK(write_str(p, "+1 3:0.5 10:2 # a comment\n-1 7:1\n0\n1 3:1e-1\t 4:-2.5\n") == 0);
    for (int mean = 0; mean <= 1; mean++) {
        es_reader_params rp = es_reader_params_default();
        rp.pool = mean ? ES_POOL_MEAN : ES_POOL_SUM;
        es_reader *r = open_ok(p, &rp);
        CHECK(r != NULL);
        CHECK_EQ_INT(es_reader_n_fields(r), 1);
        CHECK_EQ_INT(es_reader_n_dense(r), 0);
        table_t t;
        CHECK_EQ_INT(read_all(r, 3, &t), 0);
        printf("    %s: rows %d labels %g %g %g %g counts %u %u %u %u weights %g %g\n", mean ? "mean" : "sum", t.n, t.label[0],
               t.label[1], t.label[2], t.label[3], t.off[1], t.off[2] - t.off[1], t.off[3] - t.off[2], t.off[4] - t.off[3],
               t.wt[0], t.wt[1]);
        CHECK_EQ_INT(t.n, 4);
        CHECK(t.label[0] == 1 && t.label[1] == 0 && t.label[2] == 0 && t.label[3] == 1);
        CHECK(t.off[1] == 2 && t.off[2] == 3 && t.off[3] == 3 && t.off[4] == 5);
        CHECK(t.val[0] == es_key("3", 1) && t.val[1] == es_key("10", 2) && t.val[2] == es_key("7", 1));
        float d = mean ? 2.0f : 1.0f;
        CHECK_NEAR(t.wt[0], 0.5 / d, 1e-7);
        CHECK_NEAR(t.wt[1], 2.0 / d, 1e-7);
        CHECK_NEAR(t.wt[2], 1.0, 0);
        CHECK_NEAR(t.wt[3], 0.1 / d, 1e-7);
        CHECK_NEAR(t.wt[4], -2.5 / d, 1e-7);
        table_free(&t);
        es_reader_free(r);
    }
    char msg[600];
    CHECK(write_str(p, "1 3:0.5\n1 4\n") == 0);
    CHECK(read_expect_fail(p, NULL, msg, sizeof msg) == ES_EPARSE);
    CHECK_STR_HAS(msg, "small.libsvm:2:column 3: expected index:value, got '4'");
    CHECK(write_str(p, "1 1:2:3\n") == 0);
    CHECK(read_expect_fail(p, NULL, msg, sizeof msg) == ES_EPARSE);
    CHECK_STR_HAS(msg, "has three parts (a libffm file?");
    CHECK(write_str(p, "2 1:1\n") == 0);
    CHECK(read_expect_fail(p, NULL, msg, sizeof msg) == ES_EPARSE);
    CHECK_STR_HAS(msg, "small.libsvm:1:column 1: label must be 0/1 or -1/+1");
    CHECK(write_str(p, "1 1:1e999\n") == 0);
    CHECK(read_expect_fail(p, NULL, msg, sizeof msg) == ES_EPARSE);
    CHECK_STR_HAS(msg, "is not a finite number");
}

TEST(reader_skip_bad_counts_and_report) {
    char good[1024];
    criteo_line(good, sizeof good, 1, 9);
    char text[16384];
    size_t o = 0;
    /* lines 1, 5, 9 good; the other 7 bad in different ways */
    for (int i = 1; i <= 10; i++) {
        if (i == 1 || i == 5 || i == 9) o += (size_t)snprintf(text + o, sizeof text - o, "%s", good);
        else if (i == 2) o += (size_t)snprintf(text + o, sizeof text - o, "garbage\n");
        else if (i == 3) o += (size_t)snprintf(text + o, sizeof text - o, "7%s", good + 1);
        else o += (size_t)snprintf(text + o, sizeof text - o, "1\t2\t3 line %d\n", i);
    }
    const char *p = es_test_path("skipbad.tsv");
    CHECK(write_str(p, text) == 0);
    es_reader_params rp = es_reader_params_default();
    rp.skip_bad = 1;
    es_reader *r = open_ok(p, &rp);
    CHECK(r != NULL);
    table_t t;
    CHECK_EQ_INT(read_all(r, 2, &t), 0);
    const char *rep = es_reader_bad_report(r);
    printf("    rows %d bad %llu lines %llu\n    report:\n%s\n", t.n, (unsigned long long)es_reader_bad_lines(r),
           (unsigned long long)es_reader_lines(r), rep);
    CHECK_EQ_INT(t.n, 3);
    CHECK_EQ_INT(es_reader_bad_lines(r), 7);
    CHECK_EQ_INT(es_reader_lines(r), 10);
    int nl = 0;
    for (const char *q = rep; *q; q++) nl += *q == '\n';
    CHECK_EQ_INT(nl, 4); /* 5 messages */
    CHECK_STR_HAS(rep, "skipbad.tsv:2: expected 40 tab-separated columns, got 1");
    CHECK_STR_HAS(rep, "skipbad.tsv:3:column 1 (label): label must be 0 or 1, got '7'");
    CHECK_STR_HAS(rep, "skipbad.tsv:7: expected 40");
    CHECK(strstr(rep, "skipbad.tsv:8:") == NULL); /* only the first five are kept */
    table_free(&t);
    /* rewind clears the statistics and reads the same again */
    CHECK_EQ_INT(es_reader_rewind(r), 0);
    CHECK_EQ_INT(es_reader_bad_lines(r), 0);
    CHECK_EQ_INT(read_all(r, 5, &t), 0);
    CHECK_EQ_INT(t.n, 3);
    CHECK_EQ_INT(es_reader_bad_lines(r), 7);
    table_free(&t);
    es_reader_free(r);
    /* all lines bad: no data rows, with the count */
    CHECK(write_str(p, "a\nb\n") == 0);
    char msg[600];
    CHECK(read_expect_fail(p, &rp, msg, sizeof msg) == ES_EPARSE);
    CHECK_STR_HAS(msg, "skipbad.tsv: no data rows (2 bad lines skipped");
    /* without skip_bad the reader stops at line 2 and stays failed */
    CHECK(write_str(p, text) == 0);
    r = open_ok(p, NULL);
    CHECK(r != NULL);
    es_batch b;
    CHECK(es_batch_alloc(&b, 100, 13, 26, 0) == 0);
    int rc = es_reader_next(r, &b);
    printf("    stop: rc %d rows in batch %d: %s\n", rc, b.n, es_reader_errmsg(r));
    CHECK(rc == ES_EPARSE);
    CHECK_EQ_INT(b.n, 1);
    CHECK_STR_HAS(es_reader_errmsg(r), "skipbad.tsv:2: expected 40 tab-separated columns, got 1");
    CHECK(es_reader_next(r, &b) == ES_EPARSE);
    es_batch_free(&b);
    es_reader_free(r);
}

TEST(reader_rewind_same_rows) {
    const char *files[] = {CRITEO, XLEARN, MOVIELENS};
    for (int k = 0; k < 3; k++) {
        es_reader_params rp = es_reader_params_default();
        if (k == 2) {
            rp.columns = "rating:label,userId:cat,movieId:cat,genres:multi";
            rp.label_threshold = 4;
        }
        es_reader *r = open_ok(files[k], &rp);
        CHECK(r != NULL);
        /* a partial pass first, then rewind mid-file */
        es_batch b;
        CHECK(es_batch_alloc(&b, 77, es_reader_n_dense(r), es_reader_n_fields(r), 0) == 0);
        CHECK_EQ_INT(es_reader_next(r, &b), 77);
        CHECK_EQ_INT(es_reader_rows(r), 77);
        es_batch_free(&b);
        CHECK_EQ_INT(es_reader_rewind(r), 0);
        CHECK_EQ_INT(es_reader_rows(r), 0);
        table_t t1, t2;
        CHECK_EQ_INT(read_all(r, 333, &t1), 0);
        uint64_t rows1 = es_reader_rows(r);
        CHECK_EQ_INT(es_reader_rewind(r), 0);
        CHECK_EQ_INT(read_all(r, 1000, &t2), 0);
        printf("    %s: pass 1 %d rows, pass 2 %d rows (rows counter %llu, %llu)\n", files[k], t1.n, t2.n,
               (unsigned long long)rows1, (unsigned long long)es_reader_rows(r));
        CHECK(t1.n > 0);
        CHECK_EQ_INT(rows1, (uint64_t)t1.n);
        CHECK_EQ_INT(es_reader_rows(r), (uint64_t)t2.n);
        CHECK(table_diff(&t1, &t2) == 0);
        table_free(&t1);
        table_free(&t2);
        es_reader_free(r);
    }
}

TEST(reader_movielens_joined) {
    es_reader_params rp = es_reader_params_default();
    rp.format = ES_FMT_CSV;
    rp.columns = "rating:label,userId:cat,movieId:cat,genres:multi";
    rp.label_threshold = 4;
    es_reader *r = open_ok(MOVIELENS, &rp);
    CHECK(r != NULL);
    CHECK_EQ_INT(es_reader_n_fields(r), 3);
    CHECK_EQ_INT(es_reader_n_dense(r), 0);
    CHECK(strcmp(es_reader_field_name(r, 2), "genres") == 0);
    table_t t;
    CHECK_EQ_INT(read_all(r, 4096, &t), 0);
    int pos = 0;
    for (int i = 0; i < t.n; i++) pos += t.label[i] == 1.0f;
    size_t genres = 0;
    for (int i = 0; i < t.n; i++) genres += t.off[(size_t)i * 3 + 3] - t.off[(size_t)i * 3 + 2];
    printf("    rows %d (expect 100836) rating>=4 %d (awk: 48580) genre values %zu (python: 274480)\n", t.n, pos, genres);
    CHECK_EQ_INT(t.n, 100836);
    CHECK_EQ_INT(pos, 48580);
    CHECK_EQ_INT(genres, 274480);
    /* first row: 4.0,429,22,Crime|Drama|Horror|Mystery|Thriller */
    CHECK(t.label[0] == 1.0f);
    CHECK(t.val[0] == es_key("429", 3) && t.val[1] == es_key("22", 2));
    CHECK_EQ_INT(t.off[3] - t.off[2], 5);
    CHECK(t.val[t.off[2]] == es_key("Crime", 5));
    CHECK_EQ_INT(es_reader_lines(r), 100837);
    table_free(&t);
    es_reader_free(r);
}

TEST(reader_deepctr_csv_spec) {
    /* the DeepCTR Criteo sample: a CSV with a header and float-written integers */
    char spec[1024];
    int o = snprintf(spec, sizeof spec, "label:label");
    for (int i = 1; i <= 13; i++) o += snprintf(spec + o, sizeof spec - (size_t)o, ",I%d:num", i);
    for (int i = 1; i <= 26; i++) o += snprintf(spec + o, sizeof spec - (size_t)o, ",C%d:cat", i);
    es_reader_params rp = es_reader_params_default();
    rp.columns = spec;
    es_reader *r = open_ok(DEEPCTR, &rp);
    CHECK(r != NULL);
    table_t t;
    CHECK_EQ_INT(read_all(r, 64, &t), 0);
    int pos = 0;
    double dsum = 0;
    for (int i = 0; i < t.n; i++) pos += t.label[i] == 1.0f;
    for (size_t i = 0; i < (size_t)t.n * 13; i++) dsum += t.dense[i];
    printf("    rows %d (200) positives %d (49) dense %d fields %d dense sum %.5f (python 4977.21431)\n", t.n, pos, t.D, t.F, dsum);
    CHECK_EQ_INT(t.n, 200);
    CHECK_EQ_INT(pos, 49);
    CHECK_EQ_INT(t.D, 13);
    CHECK_EQ_INT(t.F, 26);
    CHECK_NEAR(dsum, 4977.214311110772, 1e-2);
    /* row 0: 0,,3,260.0,,17668.0,... C1 05db9164 */
    CHECK_NEAR(t.dense[2], log1p(260.0), 1e-6);
    CHECK(t.val[0] == es_key("05db9164", 8));
    table_free(&t);
    es_reader_free(r);
}

/* ---- robustness and internals --------------------------------------------------------- */
TEST(reader_alloc_failures) {
    /* Make every allocation in turn fail while opening and reading (plain and
     * gzip, CSV and libffm): each run ends in success or ES_ENOMEM with a
     * message, never a crash or a leak (ASan checks the latter). */
    const char *csv = es_test_path("af.csv");
    CHECK(write_str(csv, "y,a,b\n1,x|y|z|w|v|u,q\n0,p,r\n1,a|b|c|d|e|f|g|h|i|j|k|l|m|n|o|p|q|r|s|t|u|v|w|x|y|z|aa|bb|cc|dd|ee|ff|gg|hh|ii|jj|kk|ll|mm|nn|oo|pp|qq|rr|ss|tt|uu|vv|ww|xx|yy|zz|a1|a2|a3|a4|a5|a6|a7|a8|a9|b1|b2|b3|b4|b5|b6|b7|b8|b9,s\n") == 0);
    const char *ffm = es_test_path("af.libffm");
    CHECK(write_str(ffm, "1 0:1:1 3:2:1 1:5:0.5\n0 2:2:1\n") == 0);
    const char *gz = es_test_path("af.csv.gz");
    CHECK(gzip_file(csv, gz) == 0);
    const char *paths[] = {csv, ffm, gz};
    for (int k = 0; k < 3; k++) {
        es_reader_params rp = es_reader_params_default();
        if (k != 1) rp.columns = "y:label,a:multi,b:cat";
        int ok_at = -1, nomem = 0;
        for (uint64_t fail = 1; fail < 200 && ok_at < 0; fail++) {
            es__alloc_fail_at(fail);
            es_reader *r = NULL;
            es_err err = {0};
            int rc = es_reader_open(&r, paths[k], &rp, &err);
            es_batch b;
            memset(&b, 0, sizeof b);
            if (rc == 0) {
                rc = es_batch_alloc(&b, 2, es_reader_n_dense(r), es_reader_n_fields(r), 1);
                if (rc) snprintf(err.msg, sizeof err.msg, "es_batch_alloc: out of memory");
                while (rc == 0) {
                    rc = es_reader_next(r, &b);
                    if (rc == 0) break;
                    if (rc < 0) snprintf(err.msg, sizeof err.msg, "%s", es_reader_errmsg(r));
                    rc = rc > 0 ? 0 : rc;
                }
            }
            es__alloc_fail_at(0);
            es_batch_free(&b);
            es_reader_free(r);
            if (rc == ES_ENOMEM) CHECK_STR_HAS(err.msg, "out of memory");
            CHECK_MSG(rc == 0 || rc == ES_ENOMEM, "fail at %llu: rc %d (%s)", (unsigned long long)fail, rc, err.msg);
            if (rc == 0) ok_at = (int)fail;
            else nomem++;
        }
        printf("    %s: %d runs ended in ES_ENOMEM, first success with failure point %d\n", paths[k], nomem, ok_at);
        CHECK(ok_at > 1);
    }
}

TEST(reader_memory_source) {
    const char text[] = "1,a\n0,b\n";
    es_reader *r = NULL;
    es_err err = {0};
    CHECK(es__reader_open_mem(&r, text, sizeof text - 1, "mem.csv", NULL, &err) == 0);
    es_batch b;
    CHECK(es_batch_alloc(&b, 10, 0, 1, 0) == 0);
    /* default params: "1,a" is the header, column "1" the label */
    CHECK_EQ_INT(es_reader_next(r, &b), 1);
    CHECK(b.label[0] == 0 && b.val[0] == es_key("b", 1));
    es_batch_free(&b);
    es_reader_free(r);
}

TEST(reader_parse_num_matches_strtod) {
    es_rng rng;
    es__rng_seed(&rng, 5);
    char buf[64];
    int checked = 0;
    for (int i = 0; i < 20000; i++) {
        uint64_t u = es__rng_u64(&rng);
        int kind = (int)(u % 4);
        double want;
        if (kind == 0) snprintf(buf, sizeof buf, "%lld", (long long)(es__rng_u64(&rng) >> (u % 60 + 1)) * (u & 8 ? -1 : 1));
        else if (kind == 1) snprintf(buf, sizeof buf, "%.*f", (int)(u >> 8) % 12, (es__rng_uniform(&rng) - 0.5) * 1e6);
        else if (kind == 2) snprintf(buf, sizeof buf, "%.17g", (es__rng_uniform(&rng) - 0.5) * 1e-3);
        else snprintf(buf, sizeof buf, "%.6e", (es__rng_uniform(&rng) - 0.5) * 1e30);
        want = strtod(buf, NULL);
        double got;
        CHECK_MSG(es__parse_num(buf, strlen(buf), &got), "'%s' not parsed", buf);
        CHECK_MSG(got == want, "'%s': %.17g vs strtod %.17g", buf, got, want);
        checked++;
    }
    printf("    %d numbers equal to strtod\n", checked);
    const char *bad[] = {"", "-", ".", "e5", "1e", "inf", "nan", "0x10", "1,5", "--1", "1.2.3", "abc", "1 2"};
    double v;
    for (size_t i = 0; i < ES_ARRAY_LEN(bad); i++) CHECK_MSG(!es__parse_num(bad[i], strlen(bad[i]), &v), "'%s' accepted", bad[i]);
    CHECK(es__parse_num(" 42 ", 4, &v) && v == 42);
    CHECK(es__parse_num("+.5", 3, &v) && v == 0.5);
    CHECK(es__parse_num("-0", 2, &v) && v == 0 && signbit(v));
    CHECK(es__parse_num("123456789012345678901234567890", 30, &v) && v == 123456789012345678901234567890.0);
}

TEST(reader_text_check) {
    const char *why = NULL;
    CHECK_EQ_INT(es__text_check("plain ascii text here", 21, &why), 21);
    static const char utf8[] = "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 ok";
    CHECK_EQ_INT(es__text_check(utf8, sizeof utf8 - 1, &why), sizeof utf8 - 1);
    CHECK_EQ_INT(es__text_check("0123456789\0abc", 14, &why), 10);
    CHECK_STR_HAS(why, "NUL");
    CHECK_EQ_INT(es__text_check("0123456789ab\xff", 13, &why), 12);
    CHECK_STR_HAS(why, "UTF-8");
    CHECK_EQ_INT(es__text_check("ab\xc3", 3, &why), 2);           /* cut sequence */
    CHECK_EQ_INT(es__text_check("ab\xed\xa0\x80", 5, &why), 2);   /* surrogate */
    CHECK_EQ_INT(es__text_check("ab\xc0\xaf", 4, &why), 2);       /* overlong */
    CHECK_EQ_INT(es__text_check("ab\xf4\x90\x80\x80", 6, &why), 2); /* > U+10FFFF */
}

TEST(reader_tab_index_matches_ref) {
    /* awkward lengths so the 16-byte loop and its tail both run */
    static const size_t sizes[] = {0, 1, 3, 7, 15, 16, 17, 31, 33, 64, 100, 255, 257};
    es_rng rng;
    es__rng_seed(&rng, 11);
    char s[300];
    int checked = 0;
    for (size_t z = 0; z < ES_ARRAY_LEN(sizes); z++) {
        for (int rep = 0; rep < 50; rep++) {
            size_t n = sizes[z];
            for (size_t i = 0; i < n; i++) {
                uint64_t u = es__rng_u64(&rng) % 100;
                s[i] = u < 20 ? '\t' : u == 20 && rep % 5 == 0 ? (char)0xc3 : u == 21 && rep % 7 == 0 ? 0 : (char)('a' + u % 26);
            }
            for (int max = 0; max <= 45; max += 9) {
                uint32_t p1[64], p2[64];
                int s1, s2;
                int k1 = es__tab_index(s, n, p1, max, &s1), k2 = es__tab_index_ref(s, n, p2, max, &s2);
                CHECK_MSG(k1 == k2 && s1 == s2, "n=%zu max=%d: %d/%d tabs, suspect %d/%d", n, max, k1, k2, s1, s2);
                for (int j = 0; j < ES_MIN(k1, max); j++) CHECK_MSG(p1[j] == p2[j], "n=%zu tab %d: %u vs %u", n, j, p1[j], p2[j]);
                checked++;
            }
        }
    }
    printf("    %d cases equal to the reference\n", checked);
}

/* Long libffm and libsvm lines with terms of random lengths, separated by
 * runs of spaces and tabs, so term ends and colons fall on every side of
 * the 64-byte blocks of a vector scan and of the 8-byte words of the
 * libffm index scan: the keys, fields and weights equal a naive split done
 * here.  libffm twice: fields in random order (placed by field) and in
 * order (written straight through). */
TEST(reader_sparse_long_lines_match_naive_split) {
    es_rng rng;
    es__rng_seed(&rng, 13);
    for (int mode = 0; mode <= 2; mode++) {
        const int ffm = mode > 0, sorted = mode == 2;
        const int F = 7, rows = 60;
        size_t cap = 1 << 20, len = 0;
        char *text = malloc(cap);
        uint64_t *want_key = malloc(rows * 400 * sizeof *want_key);
        int *want_f = malloc(rows * 400 * sizeof *want_f), *row_terms = calloc(rows, sizeof *row_terms);
        float *want_w = malloc(rows * 400 * sizeof *want_w);
        size_t nw = 0;
        for (int r = 0; r < rows; r++) {
            len += (size_t)snprintf(text + len, cap - len, "%d", r % 2);
            const int terms = (int)(es__rng_u64(&rng) % 300);
            for (int k = 0; k < terms; k++) {
                const int gap = 1 + (int)(es__rng_u64(&rng) % 3);
                for (int g = 0; g < gap; g++) text[len++] = es__rng_u64(&rng) % 4 ? ' ' : '\t';
                const int f = sorted ? k * F / terms : (int)(es__rng_u64(&rng) % F), ilen = 1 + (int)(es__rng_u64(&rng) % 17);
                char idx[24];
                for (int c = 0; c < ilen; c++) idx[c] = (char)('a' + es__rng_u64(&rng) % 26);
                const unsigned v = (unsigned)(es__rng_u64(&rng) % 1000);
                const int frac = es__rng_u64(&rng) % 3 == 0; /* not plain digits: the slow value path */
                if (ffm) len += (size_t)snprintf(text + len, cap - len, "%d:", f);
                memcpy(text + len, idx, (size_t)ilen);
                len += (size_t)ilen;
                len += (size_t)snprintf(text + len, cap - len, ":%u%s", v, frac ? ".25" : "");
                want_key[nw] = es_key(idx, (size_t)ilen);
                want_f[nw] = ffm ? f : 0;
                want_w[nw] = (float)v + (frac ? 0.25f : 0.0f);
                nw++;
            }
            row_terms[r] = terms;
            if (r % 5 == 0) len += (size_t)snprintf(text + len, cap - len, "  # a comment: 1:2:3");
            text[len++] = '\n';
        }
        const char *p = es_test_path(ffm ? "long.libffm" : "long.libsvm");
        CHECK(write_file(p, text, len) == 0);
        es_reader_params rp = es_reader_params_default();
        rp.format = ffm ? ES_FMT_LIBFFM : ES_FMT_LIBSVM;
        rp.pool = ES_POOL_SUM;
        if (ffm) rp.n_fields_hint = F;
        es_reader *rd = open_ok(p, &rp);
        CHECK(rd != NULL);
        table_t t;
        CHECK_EQ_INT(read_all(rd, 16, &t), 0);
        CHECK_EQ_INT(t.n, rows);
        CHECK_EQ_INT((long long)t.nv, (long long)nw);
        /* the reader groups a row's terms by field (stable); compare per row */
        size_t w0 = 0, bad = 0;
        const int nf = ffm ? F : 1;
        for (int r = 0; r < t.n && r < rows; r++) {
            size_t at = t.off[(size_t)r * nf];
            for (int f = 0; f < nf; f++)
                for (size_t j = w0; j < w0 + (size_t)row_terms[r]; j++) {
                    if (want_f[j] != f) continue;
                    if (at >= t.nv || t.val[at] != want_key[j] || t.wt[at] != want_w[j]) bad++;
                    at++;
                }
            w0 += (size_t)row_terms[r];
        }
        printf("    %s: %d rows, %zu terms, %zu bytes, %zu mismatches\n", ffm ? (sorted ? "libffm, fields in order" : "libffm") : "libsvm", t.n,
               t.nv, len, bad);
        CHECK_EQ_INT((long long)bad, 0);
        table_free(&t);
        es_reader_free(rd);
        /* also without the hint: the field-counting pass finds F */
        if (ffm) {
            rp.n_fields_hint = 0;
            rd = open_ok(p, &rp);
            CHECK(rd != NULL && es_reader_n_fields(rd) == F);
            es_reader_free(rd);
        }
        free(text), free(want_key), free(want_f), free(want_w), free(row_terms);
    }
}

/* libffm without a field count: the counting pass at open splits its
 * blocks over the reader's threads; 1, 2 and 4 threads find the same
 * count, passing over malformed terms, comments, CRs and a line longer
 * than max_line (each of which names a field higher than the answer). */
TEST(reader_libffm_field_count_any_threads) {
    const size_t cap = 400000;
    char *text = malloc(cap);
    size_t len = 0;
    for (int r = 0; r < 3000; r++) {
        len += (size_t)snprintf(text + len, cap - len, "%d", r % 2);
        for (int f = 0; f < 6; f++) len += (size_t)snprintf(text + len, cap - len, " %d:v%d:1", (r * 7 + f) % 11, r);
        if (r == 1000) len += (size_t)snprintf(text + len, cap - len, " 40:v");               /* one colon: passed over */
        if (r == 1500) len += (size_t)snprintf(text + len, cap - len, " # 50:v:1");           /* a comment */
        if (r == 2000) len += (size_t)snprintf(text + len, cap - len, " 17:v:1\r");           /* the largest field; a CR */
        if (r == 2500) { /* over max_line: lineio discards it, and so does the count */
            len += (size_t)snprintf(text + len, cap - len, " 60:v:1");
            for (int k = 0; k < 300; k++) text[len++] = 'x';
        }
        text[len++] = '\n';
    }
    const char *p = es_test_path("count.libffm");
    CHECK(write_file(p, text, len) == 0);
    for (int t = 1; t <= 4; t *= 2) {
        es_reader_params rp = es_reader_params_default();
        rp.format = ES_FMT_LIBFFM;
        rp.threads = t;
        rp.max_line = 200;
        es_reader *r = open_ok(p, &rp);
        CHECK(r != NULL);
        CHECK_MSG(r && es_reader_n_fields(r) == 18, "%d threads: %d fields, expected 18", t, r ? es_reader_n_fields(r) : -1);
        es_reader_free(r);
    }
    free(text);
}

TEST(batch_alloc_reserve) {
    es_batch b;
    CHECK(es_batch_alloc(&b, 0, 1, 1, 0) == ES_EINVAL);
    CHECK(es_batch_alloc(&b, 4, 2, 3, 0) == 0);
    printf("    cap %d n_dense %d n_fields %d val_cap %zu\n", b.cap, b.n_dense, b.n_fields, b.val_cap);
    CHECK_EQ_INT(b.val_cap, 12);
    CHECK(((uintptr_t)b.dense % 64) == 0 && ((uintptr_t)b.label % 64) == 0);
    b.val[11] = 42;
    CHECK(es_batch_reserve_vals(&b, 10) == 0 && b.val_cap == 12);
    CHECK(es_batch_reserve_vals(&b, 13) == 0 && b.val_cap >= 24);
    CHECK(b.val[11] == 42);
    CHECK(es_batch_reserve_vals(&b, (size_t)UINT32_MAX + 1) == ES_ERANGE);
    es__alloc_fail_at(1);
    int rc = es_batch_reserve_vals(&b, 1000);
    es__alloc_fail_at(0);
    CHECK(rc == ES_ENOMEM && b.val[11] == 42 && b.val_cap >= 24);
    es_batch_free(&b);
    es_batch_free(&b); /* freeing twice is harmless: the struct is zeroed */
    CHECK(b.label == NULL && b.cap == 0);
}
