/*
 * file.h — the embstore container file (models, indexes, checkpoints).
 *
 * A self-describing, versioned, checksummed, mmap-able file:
 *   header   magic "EMBSTOR\0", format version, endianness mark, counts,
 *            offsets, header checksum
 *   metadata key/value pairs (UTF-8 strings)
 *   tensors  table of (name, dtype, ndim, shape, offset, nbytes, checksum)
 *   data     each tensor 64-byte aligned; from version 2 on, tensors of
 *            ES_FILE_PAGE_TENSOR_MIN bytes or more start at a multiple of
 *            ES_FILE_PAGE_ALIGN, so their pages can be mapped in place
 * Full layout in docs/format.md.  Persisted enums (es_dtype) are append-only:
 * a value, once released, keeps its number and meaning forever.
 *
 * Writing: es_fwriter collects metadata and tensor descriptors (the data
 * pointers must stay valid until commit), then commit writes a temporary
 * file, fsyncs it and renames it over the destination.
 * Reading: es_file maps the file read-only; tensor data is used in place,
 * and a loader that wants writable arrays can map a page-aligned tensor
 * copy-on-write from es__file_fd at es__file_tensor_offset (es__alloc_remap).
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

/* Bytes for `count` elements (I4: (count + 1) / 2).  SIZE_MAX for an unknown
 * dtype or when the size does not fit in size_t. */
size_t es__dtype_bytes(es_dtype dt, uint64_t count);
/* "f32", "f16", "i8", "u8", "i32", "u32", "i64", "u64", "i4"; "unknown" otherwise. */
const char *es__dtype_name(es_dtype dt);

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

/* Fill a ref: `ndim` (0..4) shape arguments follow, each of type uint64_t
 * (cast literals and ints: (uint64_t)3, since varargs are not converted); nbytes is
 * computed from dtype and shape.  Returns 0, or ES_EINVAL when the name is
 * empty or longer than ES_TENSOR_NAME_MAX - 1 bytes, the dtype is unknown,
 * ndim is outside 0..4 or the size overflows; in that case the ref is still
 * filled (name truncated, ndim set to -1) in a way es__fwriter_tensor
 * refuses, so a caller that ignores the return value still gets an error at
 * write time instead of a silently renamed tensor. */
int es__tensor_ref_set(es_tensor_ref *t, const char *name, es_dtype dt, void *data, int ndim, ...);

/* ---- writer ---------------------------------------------------------------- */
/* Current format version written by this embstore, and the newest it reads
 * (it reads every version from 1 up).  Version 2 added the page rule below. */
#define ES_FILE_VERSION 2u
/* Version 2 layout rule: a tensor of at least ES_FILE_PAGE_TENSOR_MIN bytes
 * starts at a file offset that is a multiple of ES_FILE_PAGE_ALIGN (zero
 * bytes before it); smaller tensors stay 64-byte aligned.  Persisted: part
 * of the format, not a tuning knob. */
#define ES_FILE_PAGE_ALIGN 4096u
#define ES_FILE_PAGE_TENSOR_MIN 65536u
/* Hard limits checked on both sides (a reader refuses larger counts before
 * allocating anything). */
#define ES_FILE_MAX_META (1u << 20)          /* metadata entries */
#define ES_FILE_MAX_TENSORS (1u << 20)       /* tensors */
#define ES_FILE_MAX_META_BYTES (1u << 30)    /* metadata block */

/* Errors are sticky: after a failed es__fwriter_meta/tensor call every later
 * call returns the same code and commit fails (removing the temporary file),
 * so a caller may check only the result of commit. */
typedef struct es_fwriter es_fwriter;
/* Creates the temporary file "<path>.tmp.<pid>" at once, so an unwritable
 * destination is reported here (ES_EIO, message names the path). */
int es__fwriter_open(es_fwriter **out, const char *path, es_err *err);
/* Keys are non-empty, unique UTF-8; values are UTF-8 (may be empty).
 * Both are copied.  A repeated key is an error (ES_EINVAL). */
int es__fwriter_meta(es_fwriter *w, const char *key, const char *value);
int es__fwriter_metaf(es_fwriter *w, const char *key, const char *fmt, ...) ES_PRINTF(3, 4);
/* Adds the tensor (data not copied: must stay valid until commit).
 * Names must be unique; the descriptor is checked (name, dtype, ndim, and
 * nbytes against shape and dtype). */
int es__fwriter_tensor(es_fwriter *w, const es_tensor_ref *t);
/* Streaming (for data that does not fit in memory, e.g. a dataset cache):
 * declare every metadata entry and every tensor first (es__fwriter_tensor_stream:
 * data is ignored, the shape fixes the size), then es__fwriter_begin fixes
 * the layout, and es__fwriter_append adds the bytes of tensor i in pieces,
 * in any interleaving of tensors (each is written at its own cursor with
 * pwrite, its checksum computed as it goes).  commit then checks that every
 * tensor got exactly its nbytes, writes the header and table (whose
 * checksums are only known now) at the start of the file, fsyncs and
 * renames.  The padding between tensors is the zero fill of ftruncate.
 * Memory: the header and one XXH3 state per tensor, whatever the data. */
int es__fwriter_tensor_stream(es_fwriter *w, const es_tensor_ref *t);
int es__fwriter_begin(es_fwriter *w);
int es__fwriter_append(es_fwriter *w, int i, const void *data, size_t n);
/* Tensors added with es__fwriter_tensor may be mixed with streamed ones:
 * es__fwriter_begin then writes the in-memory ones whole (their data need
 * stay valid only until begin), and the streamed ones take appends (a
 * model file written from the shards of a run across processes: its row
 * table streamed, the rest from memory).  The file is byte for byte the
 * one es__fwriter_commit writes from memory. */
/* Index of the tensor named `name` (for es__fwriter_append), -1 if none. */
int es__fwriter_tensor_index(const es_fwriter *w, const char *name);
/* Write everything, fsync, rename.  Frees w in every case.  On failure no
 * file is left at the destination (an existing file there is untouched). */
int es__fwriter_commit(es_fwriter *w, es_err *err);
/* Drop the file (no output left behind).  Frees w.  NULL is a no-op. */
void es__fwriter_abort(es_fwriter *w);
/* Message of the last failure ("" when none). */
const char *es__fwriter_errmsg(const es_fwriter *w);

/* ---- reader ---------------------------------------------------------------- */
#define ES_FILE_NO_VERIFY 1u   /* skip tensor checksums (header is always checked) */
#define ES_FILE_MAP 2u         /* map the file instead of reading it (see es__file_open) */

typedef struct es_file es_file;
/* Read `path` into private memory and validate the header, metadata,
 * tensor table and padding (and, unless ES_FILE_NO_VERIFY, every tensor
 * checksum).  Codes: ES_EIO (cannot open/read/map, or the file changed
 * while being read), ES_EFORMAT (not an embstore file, truncated, wrong
 * endianness, inconsistent field), ES_EVERSION (newer format),
 * ES_ECHECKSUM (corruption), ES_ENOMEM.  Messages start with the path.
 * Tensor data is a view into that memory: read-only, valid until close.
 * The file descriptor stays open until close too (es__file_fd).
 *
 * By default the bytes are read (one pass over the file): the handle then
 * owns its copy, and nothing another process does to the file later (a
 * `cp` over it truncates and rewrites it in place) can affect it.  With
 * ES_FILE_MAP the file is mapped instead: open time is then independent of
 * the size except for checksum verification, but, as with any mapped
 * reader, a file truncated in place while open makes later accesses fault
 * (SIGBUS) and a file rewritten in place changes under the reader; only
 * replace such a file with es_fwriter (write, fsync, rename). */
int es__file_open(es_file **out, const char *path, unsigned flags, es_err *err);
/* The same from a memory buffer (not copied: it must stay valid and
 * unchanged until es__file_close).  `data` must be 64-byte aligned (so that
 * tensor views are aligned as in a mapped file); messages name "(memory)". */
int es__file_open_mem(es_file **out, const void *data, size_t len, unsigned flags, es_err *err);
void es__file_close(es_file *f); /* NULL is a no-op */
uint32_t es__file_version(const es_file *f);
int es__file_n_meta(const es_file *f);
/* i-th key/value (pointers into the mapping; NUL-terminated). */
void es__file_meta_at(const es_file *f, int i, const char **key, const char **value);
const char *es__file_meta(const es_file *f, const char *key); /* NULL if absent */
int es__file_n_tensors(const es_file *f);
const es_tensor_ref *es__file_tensor_at(const es_file *f, int i);
const es_tensor_ref *es__file_tensor(const es_file *f, const char *name); /* NULL if absent */
/* Verify one tensor's checksum now (for lazily verified files).
 * ES_ECHECKSUM (message names the file and tensor) or ES_EINVAL for a bad i. */
int es__file_verify_tensor(const es_file *f, int i, es_err *err);
size_t es__file_size(const es_file *f);
/* The read-only descriptor of a file opened with es__file_open (open until
 * es__file_close; do not close it), or -1 for es__file_open_mem.  A mapping
 * made from it stays valid after es__file_close. */
int es__file_fd(const es_file *f);
/* 1 if the handle maps the file itself (ES_FILE_MAP), 0 if it owns a copy
 * (or is a memory image). */
int es__file_is_mapped(const es_file *f);
/* Move the first nbytes (a multiple of the page size) of tensor i's bytes
 * into the large aligned block dst without copying (es__alloc_move): only
 * for a handle that owns its copy (es__file_open without ES_FILE_MAP) and a
 * page-aligned tensor.  Afterwards those bytes of the tensor's view are
 * gone (unmapped): the caller must not read them through the handle again
 * (nor verify that tensor); the rest of the view stays.  ES_EINVAL when it
 * does not qualify (nothing changed: copy instead), ES_EIO on failure. */
int es__file_move_pages(es_file *f, int i, void *dst, size_t nbytes);
/* File offset of tensor i's data (a multiple of 64; of ES_FILE_PAGE_ALIGN
 * for a large tensor in a version >= 2 file), UINT64_MAX for a bad i. */
uint64_t es__file_tensor_offset(const es_file *f, int i);

/* Put tensor i (its descriptor t = es__file_tensor_at(f, i)) into the
 * array dst of t->nbytes bytes, copying each byte at most once.  When
 * es__file_inplace_ok(f) said yes (`inplace`), the tensor's file offset and
 * dst are page-aligned and dst is a large block from es__alloc_aligned,
 * its whole pages are placed without copying: moved from the handle's
 * private copy of the file (es__file_move_pages), or, for a mapped file
 * (ES_FILE_MAP), mapped copy-on-write from the file (es__alloc_remap); only
 * the last partial page is copied, and *placed (may be NULL) grows by the
 * bytes placed.  Otherwise (small tensors, arrays carved from one
 * allocation, memory images, version-1 offsets) the bytes are copied.
 * A failed mmap/mremap over dst is ES_EIO / ES_ENOMEM with a message
 * naming path and the tensor. */
int es__file_place(es_file *f, int i, void *dst, int inplace, size_t *placed, const char *path, es_err *err);
/* Whether es__file_place may place pages in place for f: a real file, 4
 * KiB pages, and not turned off by ES_NO_REMAP=1 in the environment (to
 * compare the paths or rule them out when debugging). */
int es__file_inplace_ok(const es_file *f);
/* 1 if every tensor's checksum was checked when f was opened (not
 * ES_FILE_NO_VERIFY): the whole file has been read, so loaders may afford
 * to validate tensor contents too. */
int es__file_verified(const es_file *f);

/* Internal, for tests and the fuzzer: recompute the header checksum of a
 * file image in place (bytes 8..15), so that deliberately malformed tables
 * reach the field checks behind the checksum.  ES_EFORMAT if the image is
 * too short or its data offset lies outside it. */
int es__file_fix_checksum(void *data, size_t len);

#endif /* ES_FORMAT_FILE_H */
