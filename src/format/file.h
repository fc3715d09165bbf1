/*
 * file.h — the embstore container file (models, indexes, checkpoints).
 *
 * A self-describing, versioned, checksummed, mmap-able file:
 *   header   magic "EMBSTOR\0", format version, endianness mark, counts,
 *            offsets, header checksum
 *   metadata key/value pairs (UTF-8 strings)
 *   tensors  table of (name, dtype, ndim, shape, offset, nbytes, checksum)
 *   data     each tensor 64-byte aligned
 * Full layout in docs/format.md.  Persisted enums (es_dtype) are append-only.
 *
 * Writing: es_fwriter collects metadata and tensor descriptors (the data
 * pointers must stay valid until commit), then commit writes a temporary
 * file, fsyncs it and renames it over the destination.
 * Reading: es_file maps the file read-only; tensor data is used in place.
 */
#ifndef ES_FORMAT_FILE_H
#define ES_FORMAT_FILE_H

#include "core/core.h"

typedef enum {
    ES_DT_F32 = 0,
    ES_DT_F16 = 1,
    ES_DT_I8 = 2,
    ES_DT_U8 = 3,
    ES_DT_I32 = 4,
    ES_DT_U32 = 5,
    ES_DT_I64 = 6,
    ES_DT_U64 = 7,
    ES_DT_I4 = 8,     /* two values per byte, low nibble first */
    ES_DT_COUNT_
} es_dtype;

size_t es_dtype_bytes(es_dtype dt, uint64_t count); /* bytes for `count` elements */
const char *es_dtype_name(es_dtype dt);

#define ES_TENSOR_NAME_MAX 64
#define ES_TENSOR_MAX_DIMS 4

/* A named view of an array (not owning). */
typedef struct es_tensor_ref {
    char name[ES_TENSOR_NAME_MAX];
    es_dtype dtype;
    int ndim;
    uint64_t shape[ES_TENSOR_MAX_DIMS];
    void *data;
    size_t nbytes;
} es_tensor_ref;

/* Fill a ref; nbytes computed from dtype and shape. */
void es_tensor_ref_set(es_tensor_ref *t, const char *name, es_dtype dt, void *data, int ndim, ...);

/* ---- writer ---------------------------------------------------------------- */
typedef struct es_fwriter es_fwriter;
int es_fwriter_open(es_fwriter **out, const char *path, es_err *err);
int es_fwriter_meta(es_fwriter *w, const char *key, const char *value);
int es_fwriter_metaf(es_fwriter *w, const char *key, const char *fmt, ...) ES_PRINTF(3, 4);
/* Adds the tensor (data not copied: must stay valid until commit).
 * Names must be unique. */
int es_fwriter_tensor(es_fwriter *w, const es_tensor_ref *t);
/* Write everything, fsync, rename.  Frees w in every case. */
int es_fwriter_commit(es_fwriter *w, es_err *err);
/* Drop the file (no output left behind).  Frees w. */
void es_fwriter_abort(es_fwriter *w);
const char *es_fwriter_errmsg(const es_fwriter *w);

/* ---- reader ---------------------------------------------------------------- */
#define ES_FILE_NO_VERIFY 1u   /* skip tensor checksums (header is always checked) */

typedef struct es_file es_file;
int es_file_open(es_file **out, const char *path, unsigned flags, es_err *err);
void es_file_close(es_file *f);
uint32_t es_file_version(const es_file *f);
int es_file_n_meta(const es_file *f);
/* i-th key/value (pointers into the mapping; NUL-terminated). */
void es_file_meta_at(const es_file *f, int i, const char **key, const char **value);
const char *es_file_meta(const es_file *f, const char *key); /* NULL if absent */
int es_file_n_tensors(const es_file *f);
const es_tensor_ref *es_file_tensor_at(const es_file *f, int i);
const es_tensor_ref *es_file_tensor(const es_file *f, const char *name); /* NULL if absent */
/* Verify one tensor's checksum now (for lazily verified files). */
int es_file_verify_tensor(const es_file *f, int i, es_err *err);
size_t es_file_size(const es_file *f);

#endif /* ES_FORMAT_FILE_H */
