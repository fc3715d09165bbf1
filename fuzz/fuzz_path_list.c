/*
 * fuzz_path_list.c — libFuzzer target for the @LIST file parser
 * (es__path_list_parse in src/core/fileid.c): any bytes give either a list
 * of non-empty paths without NUL bytes, blanks at their ends or comments,
 * or an error whose message names the list.  Seeds: fuzz/corpus/path_list/.
 */
#include "core/fileid.h"

#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define REQUIRE(c)                                                       \
    do {                                                                 \
        if (!(c)) {                                                      \
            fprintf(stderr, "fuzz_path_list: broken promise: %s\n", #c); \
            abort();                                                     \
        }                                                                \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char **paths = NULL;
    int n = -1;
    es_err err = {0};
    int rc = es__path_list_parse((const char *)data, size, "list", &paths, &n, &err);
    if (rc != ES_OK) {
        REQUIRE(rc < 0 && paths == NULL && n == 0);
        REQUIRE(memchr(err.msg, 0, sizeof err.msg) != NULL && strncmp(err.msg, "list", 4) == 0);
        return 0;
    }
    REQUIRE(n >= 1 && paths != NULL);
    for (int i = 0; i < n; i++) {
        size_t len = strlen(paths[i]);
        REQUIRE(len >= 1 && len <= ES__PATH_MAX && paths[i][0] != '#');
        REQUIRE(paths[i][0] != ' ' && paths[i][0] != '\t' && paths[i][len - 1] != ' ' && paths[i][len - 1] != '\t');
        REQUIRE(paths[i][len - 1] != '\r' && !strchr(paths[i], '\n'));
    }
    es__path_list_free(paths, n);
    return 0;
}
