/*
 * test_serve_request.c — the server's request parser (src/serve/request.c)
 * without a socket, and the reuse of a model handle's reader between
 * es_model_predict_mem calls (issue 14's throughput work):
 *   - JSON rules cJSON does not enforce by itself (UTF-8, NUL, trailing
 *     data, duplicate keys) give a 400 naming the problem;
 *   - numbers: integers below 2^53 are digits, larger integral numbers in a
 *     categorical column are refused (a double is not exact there), reals
 *     are "%.17g";
 *   - the per-thread arena: thousands of parses of different sizes give the
 *     same text as the first parse of each body;
 *   - es_model_predict_mem on one handle, over a mixed sequence of good,
 *     empty, malformed and gzip bodies, gives each call the probabilities
 *     and the error message a fresh handle gives (bit for bit, 1 thread).
 */
#include "test.h"

#include "embstore.h"
#include "serve/serve.h"

#include <zlib.h>

static char *crit_names[39];
static int crit_multi[39];

/* A Criteo-like schema (13 numeric I1..I13, 26 categorical C1..C26). */
static void crit_schema(es__schema *s) {
    static char buf[39][16];
    for (int i = 0; i < 39; i++) {
        snprintf(buf[i], sizeof buf[i], "%c%d", i < 13 ? 'I' : 'C', i < 13 ? i + 1 : i - 12);
        crit_names[i] = buf[i];
    }
    memset(s, 0, sizeof *s);
    s->format = ES_FMT_CRITEO;
    s->delim = '\t';
    s->multi_sep = '|';
    s->n_dense = 13;
    s->n_fields = 26;
    s->n_in = 39;
    s->in_names = crit_names;
    s->in_multi = crit_multi;
    s->field_names = crit_names + 13;
}

/* Parse a JSON predict body; returns the status (200 or the error's) and
 * leaves the text or the reason in *out (malloc'd). */
static int parse(const es__schema *s, const char *body, char **out) {
    es__sb text = {0};
    es__req_err e = {0};
    long rows = 0;
    int lab = 0, first = 0;
    int rc = es__parse_predict(s, body, strlen(body), 0, 4096, &text, &rows, &lab, &first, &e);
    *out = strdup(rc == 0 ? (text.s ? text.s : "") : e.reason);
    es__sb_free(&text);
    return rc == 0 ? 200 : e.status;
}

TEST(serve_request_json_rules) {
    es__schema s;
    crit_schema(&s);
    CHECK_EQ_INT(es__schema_index(&s), 0);
    char *r = NULL;
    /* a good row: numbers as digits or %.17g, null and absent keys empty */
    CHECK_EQ_INT(parse(&s, "{\"rows\":[{\"I1\":3,\"I2\":1.5,\"I3\":null,\"C1\":\"ab\",\"C2\":7}]}", &r), 200);
    CHECK_MSG(strncmp(r, "3\t1.5\t\t", 7) == 0, "text '%.40s'", r);
    CHECK_STR_HAS(r, "\tab\t7\t");
    free(r);
    /* 2^53 - 1 is exact; 2^53 in a categorical column is refused, in a numeric one it is a real */
    CHECK_EQ_INT(parse(&s, "{\"rows\":[{\"C1\":9007199254740991}]}", &r), 200);
    CHECK_STR_HAS(r, "9007199254740991");
    free(r);
    CHECK_EQ_INT(parse(&s, "{\"rows\":[{\"C1\":9007199254740992}]}", &r), 400);
    CHECK_STR_HAS(r, "send it as a string");
    free(r);
    /* Criteo TSV has no quoting: a '"' goes into the line as it is (the
     * file reader reads it so), a tab is refused */
    CHECK_EQ_INT(parse(&s, "{\"rows\":[{\"C1\":\"a\\\"b\"}]}", &r), 200);
    CHECK_STR_HAS(r, "\ta\"b\t");
    free(r);
    CHECK_EQ_INT(parse(&s, "{\"rows\":[{\"C1\":\"a\\tb\"}]}", &r), 400);
    CHECK_STR_HAS(r, "may not hold a tab");
    free(r);
    CHECK_EQ_INT(parse(&s, "{\"rows\":[{\"I1\":1e20}]}", &r), 200);
    CHECK_STR_HAS(r, "1e+20");
    free(r);
    /* what JSON forbids and cJSON alone would let through */
    CHECK_EQ_INT(parse(&s, "{\"rows\":[{\"C1\":\"a\\u0000b\"}]}", &r), 400);
    CHECK_STR_HAS(r, "NUL");
    free(r);
    CHECK_EQ_INT(parse(&s, "{\"rows\":[{\"C1\":\"a\\\\u0000b\"}]}", &r), 200); /* an escaped backslash, then text */
    CHECK_STR_HAS(r, "a\\u0000b");
    free(r);
    CHECK_EQ_INT(parse(&s, "{\"rows\":[{\"C1\":\"\xff\"}]}", &r), 400);
    CHECK_STR_HAS(r, "not UTF-8");
    free(r);
    CHECK_EQ_INT(parse(&s, "{\"rows\":[{\"C1\":\"\xc3\xa9\"}]}", &r), 200); /* é */
    free(r);
    CHECK_EQ_INT(parse(&s, "{\"rows\":[{\"C1\":\"\xed\xa0\x80\"}]}", &r), 400); /* a UTF-16 surrogate */
    free(r);
    CHECK_EQ_INT(parse(&s, "{\"rows\":[]} x", &r), 400);
    CHECK_STR_HAS(r, "data after the end");
    free(r);
    CHECK_EQ_INT(parse(&s, "{\"rows\":[{\"C1\":\"a\"}", &r), 400);
    CHECK_STR_HAS(r, "bad JSON at line 1");
    free(r);
    CHECK_EQ_INT(parse(&s, "{\"rows\":[],\"rows\":[]}", &r), 400);
    CHECK_STR_HAS(r, "appears twice");
    free(r);
    CHECK_EQ_INT(parse(&s, "{\"rows\":[{\"C1\":\"a\",\"C1\":\"b\"}]}", &r), 400);
    CHECK_STR_HAS(r, "given twice");
    free(r);
    CHECK_EQ_INT(parse(&s, "{\"rows\":[{\"Cx\":\"a\"}]}", &r), 400);
    CHECK_STR_HAS(r, "not a column");
    free(r);
    CHECK_EQ_INT(parse(&s, "[1,2]", &r), 400);
    CHECK_STR_HAS(r, "must be a JSON object");
    free(r);
    free(s.col_slot); /* the names are static: not es__schema_free */
}

/* Many parses on one thread, bodies of 1 to 200 rows in turn (the arena
 * grows, is reused, and larger bodies spill to malloc): each text equals
 * the text of the first parse of the same body. */
TEST(serve_request_arena_reuse) {
    es__schema s;
    crit_schema(&s);
    CHECK_EQ_INT(es__schema_index(&s), 0);
    enum { NB = 4 };
    const int nrows[NB] = {1, 200, 7, 64};
    char *body[NB], *first[NB];
    for (int b = 0; b < NB; b++) {
        es__sb j = {0};
        es__sb_puts(&j, "{\"rows\":[");
        for (int r = 0; r < nrows[b]; r++)
            es__sb_printf(&j, "%s{\"I1\":%d,\"I5\":%d.25,\"C3\":\"v%d_%d\",\"C26\":\"%x\"}", r ? "," : "", r, b, b, r, r * 7919);
        es__sb_puts(&j, "]}");
        body[b] = j.s;
        CHECK_EQ_INT(parse(&s, body[b], &first[b]), 200);
    }
    for (int i = 0; i < 2000; i++) {
        char *t = NULL;
        int b = (i * 7) % NB;
        CHECK_EQ_INT(parse(&s, body[b], &t), 200);
        CHECK_MSG(strcmp(t, first[b]) == 0, "parse %d of body %d differs", i, b);
        free(t);
    }
    for (int b = 0; b < NB; b++) {
        free(body[b]);
        free(first[b]);
    }
    free(s.col_slot); /* the names are static: not es__schema_free */
}

/* ---- es_model_predict_mem: one handle over many calls ------------------------ */
static const char *model_path(void) {
    static char path[512];
    if (!path[0]) {
        snprintf(path, sizeof path, "%s", es_test_path("predict_mem.es"));
        if (es_test_sh(NULL, "%s train data/criteo_kaggle_train_first10k.tsv --model dlrm --max-rows 1500 --epochs 1 --seed 5 "
                             "--out %s",
                       es_bin(), path))
            path[0] = 0;
    }
    return path;
}

/* The call's outcome as text: the probabilities "%a" or "error <rc>: msg". */
static char *outcome(es_model *m, const char *data, size_t n, int has_label) {
    float prob[64];
    size_t got = 0;
    int rc = es_model_predict_mem(m, data, n, "request", has_label, prob, 64, &got);
    es__sb o = {0};
    if (rc) es__sb_printf(&o, "error %d: %s", rc, es_model_errmsg(m));
    else
        for (size_t i = 0; i < got; i++) es__sb_printf(&o, "%a ", (double)prob[i]);
    return o.s ? o.s : strdup("");
}

static size_t gzip_mem(const char *src, size_t n, unsigned char *dst, size_t cap) {
    z_stream z = {0};
    if (deflateInit2(&z, 1, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK) return 0;
    z.next_in = (Bytef *)src;
    z.avail_in = (uInt)n;
    z.next_out = dst;
    z.avail_out = (uInt)cap;
    int r = deflate(&z, Z_FINISH);
    size_t out = r == Z_STREAM_END ? cap - z.avail_out : 0;
    deflateEnd(&z);
    return out;
}

TEST(predict_mem_reused_reader_equals_fresh) {
    const char *mp = model_path();
    CHECK_MSG(mp[0], "training the test model failed");
    char *data = es_test_slurp("data/criteo_kaggle_train_first10k.tsv");
    CHECK(data != NULL);
    /* rows 1..3 of the file, with and without the label column */
    char *end3 = data;
    for (int i = 0; i < 3; i++) end3 = strchr(end3, '\n') + 1;
    const size_t n3 = (size_t)(end3 - data);
    const char *unl = strchr(data, '\t') + 1; /* line 1 without its label (one row) */
    const size_t n_unl = (size_t)(strchr(unl, '\n') - unl + 1);
    unsigned char gz[8192];
    size_t ngz = gzip_mem(data, n3, gz, sizeof gz);
    CHECK(ngz > 0);
    struct {
        const char *d;
        size_t n;
        int label;
    } seq[] = {
        {data, n3, 1},           {"", 0, 1},         {"1\tx\n", 4, 1},       {data, n3, 1},  {(const char *)gz, ngz, 1},
        {data, n3, 1},           {unl, n_unl, 0},    {"\n\n", 2, 1},         {data, 40, 1},  {data + 1, n3 - 1, 1},
        {unl, n_unl, 0},         {data, n3, 1},      {"\x28\xb5\x2f\xfd", 4, 1}, {data, n3, 1},
    };
    es_model *reused = NULL;
    CHECK_EQ_INT(es_model_load(&reused, mp, 0, NULL), 0);
    for (size_t i = 0; i < sizeof seq / sizeof seq[0]; i++) {
        es_model *fresh = NULL;
        CHECK_EQ_INT(es_model_load(&fresh, mp, 0, NULL), 0);
        char *a = outcome(reused, seq[i].d, seq[i].n, seq[i].label), *b = outcome(fresh, seq[i].d, seq[i].n, seq[i].label);
        CHECK_MSG(strcmp(a, b) == 0, "call %zu: reused handle gave '%.120s', a fresh one '%.120s'", i, a, b);
        if (i == 0) CHECK_MSG(strncmp(a, "error", 5) != 0, "the first call failed: %s", a);
        free(a);
        free(b);
        es_model_free(fresh);
    }
    es_model_free(reused);
    free(data);
}
