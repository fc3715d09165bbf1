/*
 * fuzz_serve_request.c — libFuzzer target for the server's request parser
 * (src/serve/request.c): predict bodies (JSON rows / lines / text) against
 * a Criteo-like and a CSV schema, embed and search bodies.  No socket, no
 * model.  Byte 0 picks the parser and schema; the rest is the body.
 */
#include "serve/serve.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char *crit_names[39], *csv_names[4] = {"price", "user", "item", "tags"};
static int crit_multi[39], csv_multi[4] = {0, 0, 0, 1};

static void schemas(es__schema *crit, es__schema *csv) {
    static char buf[39][8];
    for (int i = 0; i < 39; i++) {
        snprintf(buf[i], sizeof buf[i], "%c%d", i < 13 ? 'I' : 'C', i < 13 ? i + 1 : i - 12);
        crit_names[i] = buf[i];
    }
    memset(crit, 0, sizeof *crit);
    crit->format = ES_FMT_CRITEO;
    crit->delim = '\t';
    crit->multi_sep = '|';
    crit->n_dense = 13;
    crit->n_fields = 26;
    crit->n_in = 39;
    crit->in_names = crit_names;
    crit->in_multi = crit_multi;
    crit->field_names = crit_names + 13;
    memset(csv, 0, sizeof *csv);
    csv->format = ES_FMT_CSV;
    csv->delim = ',';
    csv->multi_sep = '|';
    csv->header = 1;
    csv->n_dense = 1;
    csv->n_fields = 3;
    csv->n_in = 4;
    csv->in_names = csv_names;
    csv->in_multi = csv_multi;
    csv->field_names = csv_names + 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    static es__schema crit, csv; /* built once: the column index is allocated */
    static int ready;
    if (!ready) {
        schemas(&crit, &csv);
        if (es__schema_index(&crit) || es__schema_index(&csv)) abort();
        ready = 1;
    }
    int opt = data[0];
    const char *body = (const char *)data + 1;
    size_t n = size - 1;
    es__req_err e = {0};
    const es__schema *s = (opt & 1) ? &csv : &crit;
    switch ((opt >> 1) % 3) {
    case 0: {
        es__sb text = {0};
        long rows = 0;
        int has_label = 0, first = 0;
        int rc = es__parse_predict(s, body, n, (opt >> 3) & 1, 64, &text, &rows, &has_label, &first, &e);
        if (rc == 0 && !(opt & 8) && rows > 64) __builtin_trap(); /* JSON rows are limited before any text is made */
        if (rc != 0 && (e.status < 400 || e.status > 599 || !e.reason[0])) __builtin_trap();
        es__sb_free(&text);
        break;
    }
    case 1: {
        int *f = NULL;
        uint64_t *k = NULL;
        long cnt = 0;
        if (es__parse_embed(s, body, n, 64, &f, &k, &cnt, &e) == 0) {
            for (long i = 0; i < cnt; i++)
                if (f[i] < 0 || f[i] >= s->n_fields) __builtin_trap();
        } else if (!e.reason[0]) {
            __builtin_trap();
        }
        free(f);
        free(k);
        break;
    }
    default: {
        es__search_req q;
        if (es__parse_search(body, n, 4, 64, &q, &e) == 0) {
            if (q.nq < 1 || q.nq > 64 || q.k < 1) __builtin_trap();
            es__search_req_free(&q);
        } else if (!e.reason[0]) {
            __builtin_trap();
        }
        break;
    }
    }
    es__sb out = {0};
    if (e.reason[0]) es__req_err_json(&e, &out);
    es__sb_free(&out);
    return 0;
}
