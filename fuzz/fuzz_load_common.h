/*
 * fuzz_load_common.h — shared step of the file-loader fuzz targets
 * (fuzz_model_load.c, fuzz_table_load.c): the loaders take a path, so the
 * input is written to a per-process temporary file first, with its header
 * checksum recomputed so that malformed tables reach the checks behind it.
 */
#ifndef FUZZ_LOAD_COMMON_H
#define FUZZ_LOAD_COMMON_H

#include "format/file.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Write data (checksum fixed) to "/tmp/<name>.<pid>.es"; returns the path
 * (static storage), or NULL when it could not be written. */
static inline const char *fuzz_load_file(const char *name, const uint8_t *data, size_t size) {
    static char path[96];
    if (!path[0]) snprintf(path, sizeof path, "/tmp/%s.%ld.es", name, (long)getpid());
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf) return NULL;
    memcpy(buf, data, size);
    es__file_fix_checksum(buf, size);
    FILE *f = fopen(path, "wb");
    size_t put = f ? fwrite(buf, 1, size, f) : 0;
    int ok = f && fclose(f) == 0 && put == size;
    free(buf);
    return ok ? path : NULL;
}

#endif
