/*
 * file.c — the embstore container file: the writer (temporary file, fsync,
 * rename) and the reader (read-only mmap, every field validated before use).
 * The byte layout is specified in docs/format.md; the constants below are
 * that specification in code, and the two must change together.
 *
 * Layout (versions 1 and 2), all integers in the writer's native byte order
 * (the endianness mark lets a reader refuse a foreign file):
 *
 *   [0, 128)                header
 *   [128, table_offset)     metadata entries, then zero padding to 8
 *   [table_offset, +128*n)  tensor table, then zero padding to 64
 *   [data_offset, size)     tensor data, each tensor 64-byte aligned and
 *                           followed by zero padding to the next multiple of 64
 *
 * Version 2 differs in one rule only: a tensor of PAGE_TENSOR_MIN bytes or
 * more starts at a multiple of PAGE_ALIGN, preceded by the zero bytes that
 * takes.  Such a tensor's pages can then be moved (es__alloc_move) or
 * mapped (es__alloc_remap) straight into a model's arrays, which is how a
 * model loads without copying.
 *
 * The reader reads the file into private memory by default, so that the
 * open file never depends on the file staying as it was (a file truncated
 * in place under a mapping kills the reader with SIGBUS); ES_FILE_MAP maps
 * it instead, for callers that accept that contract (docs/format.md).
 *
 * The layout is canonical: every offset follows from the sizes, the reader
 * demands exactly that, and so every byte of a file is either covered by a
 * checksum or required to be zero.  That is what lets a single flipped byte
 * anywhere be detected on open.
 */
#include "format/file.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

/* ---- layout constants (docs/format.md) ----------------------------------- */
static const uint8_t MAGIC[8] = {'E', 'M', 'B', 'S', 'T', 'O', 'R', 0};
#define ENDIAN_MARK UINT32_C(0x01020304)
#define ENDIAN_SWAPPED UINT32_C(0x04030201)
#define HDR_BYTES 128u
#define ENTRY_BYTES 128u
/* The header checksum covers [CHECKSUM_FROM, data_offset). */
#define CHECKSUM_FROM 16u
/* Version 2: tensors of at least PAGE_TENSOR_MIN bytes start page-aligned. */
#define PAGE_ALIGN ((uint64_t)ES_FILE_PAGE_ALIGN)
#define PAGE_TENSOR_MIN ((uint64_t)ES_FILE_PAGE_TENSOR_MIN)

enum {
    H_MAGIC = 0,
    H_CHECKSUM = 8,
    H_VERSION = 16, /* bytes 0..23 keep their meaning in every version */
    H_ENDIAN = 20,
    H_HDR_BYTES = 24,
    H_FLAGS = 28,
    H_N_META = 32,
    H_N_TENSORS = 36,
    H_META_OFF = 40,
    H_META_BYTES = 48,
    H_TABLE_OFF = 56,
    H_TABLE_BYTES = 64,
    H_DATA_OFF = 72,
    H_DATA_BYTES = 80,
    H_FILE_SIZE = 88,
    H_RESERVED = 96 /* 32 bytes, zero */
};

enum {
    E_NAME = 0, /* 64 bytes: name, NUL, zero fill */
    E_DTYPE = 64,
    E_NDIM = 68,
    E_SHAPE = 72, /* 4 x u64, unused dims zero */
    E_OFFSET = 104,
    E_NBYTES = 112,
    E_CHECKSUM = 120
};

/* Smallest metadata entry: u32 klen, 1-byte key, NUL, u32 vlen, NUL. */
#define META_MIN_ENTRY 11u

/* Unaligned native loads and stores: the mapping is page aligned, but the
 * metadata block packs u32 lengths at arbitrary offsets. */
static uint32_t ld32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, sizeof v);
    return v;
}
static uint64_t ld64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, sizeof v);
    return v;
}
static void st32(uint8_t *p, uint32_t v) { memcpy(p, &v, sizeof v); }
static void st64(uint8_t *p, uint64_t v) { memcpy(p, &v, sizeof v); }

/* Round up to a multiple of a (a power of two); false on overflow. */
static bool align_up(uint64_t x, uint64_t a, uint64_t *out) {
    uint64_t t;
    if (__builtin_add_overflow(x, a - 1, &t)) return false;
    *out = t & ~(a - 1);
    return true;
}

/* Where a tensor of nbytes starts when the previous one (with its padding)
 * ended at `end`, in a file of format `version`; false on overflow.  The
 * one place the data layout rule lives, shared by writer and reader. */
static bool tensor_start(uint32_t version, uint64_t end, uint64_t nbytes, uint64_t *off) {
    if (!align_up(end, ES_ALIGN, off)) return false;
    if (version >= 2 && nbytes >= PAGE_TENSOR_MIN) return align_up(*off, PAGE_ALIGN, off);
    return true;
}

static bool all_zero(const uint8_t *p, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (p[i]) return false;
    return true;
}

/* Strict UTF-8: no overlong forms, no surrogates, nothing above U+10FFFF. */
static bool utf8_valid(const uint8_t *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t len;
        uint32_t cp, min;
        if (c >= 0xC2 && c <= 0xDF) {
            len = 2, cp = c & 0x1Fu, min = 0x80;
        } else if (c >= 0xE0 && c <= 0xEF) {
            len = 3, cp = c & 0x0Fu, min = 0x800;
        } else if (c >= 0xF0 && c <= 0xF4) {
            len = 4, cp = c & 0x07u, min = 0x10000;
        } else {
            return false;
        }
        if (n - i < len) return false;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xC0) != 0x80) return false;
            cp = (cp << 6) | (s[i + k] & 0x3Fu);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
        i += len;
    }
    return true;
}

/* ---- dtypes (persisted: append only) ---------------------------------------- */
static const char *const DTYPE_NAMES[ES_DT_COUNT_] = {"f32", "f16", "i8", "u8", "i32", "u32", "i64", "u64", "i4"};

/* Bytes for `count` elements of dtype `dt` (a raw u32 from a file or an
 * es_dtype); false for an unknown dtype or on overflow. */
static bool dtype_size(uint32_t dt, uint64_t count, uint64_t *out) {
    uint64_t per;
    switch (dt) {
    case ES_DT_I4: *out = count / 2 + (count & 1); return true;
    case ES_DT_I8:
    case ES_DT_U8: per = 1; break;
    case ES_DT_F16: per = 2; break;
    case ES_DT_F32:
    case ES_DT_I32:
    case ES_DT_U32: per = 4; break;
    case ES_DT_I64:
    case ES_DT_U64: per = 8; break;
    default: return false;
    }
    return !__builtin_mul_overflow(count, per, out);
}

size_t es__dtype_bytes(es_dtype dt, uint64_t count) {
    uint64_t n;
    if ((unsigned)dt >= ES_DT_COUNT_ || !dtype_size((uint32_t)dt, count, &n) || n > SIZE_MAX) return SIZE_MAX;
    return (size_t)n;
}

const char *es__dtype_name(es_dtype dt) {
    return (unsigned)dt < ES_DT_COUNT_ ? DTYPE_NAMES[dt] : "unknown";
}

/* Elements of a shape; false on overflow. */
static bool shape_count(int ndim, const uint64_t *shape, uint64_t *out) {
    uint64_t c = 1;
    for (int d = 0; d < ndim; d++)
        if (__builtin_mul_overflow(c, shape[d], &c)) return false;
    *out = c;
    return true;
}

int es__tensor_ref_set(es_tensor_ref *t, const char *name, es_dtype dt, void *data, int ndim, ...) {
    memset(t, 0, sizeof *t);
    int rc = ES_OK;
    size_t len = name ? strlen(name) : 0;
    if (len >= ES_TENSOR_NAME_MAX) {
        len = ES_TENSOR_NAME_MAX - 1;
        rc = ES_EINVAL;
    }
    if (len == 0) rc = ES_EINVAL;
    if (len) memcpy(t->name, name, len);
    t->dtype = dt;
    t->data = data;
    if (ndim < 0 || ndim > ES_TENSOR_MAX_DIMS) {
        /* The shape arguments cannot be read safely: their count is unknown. */
        t->ndim = -1;
        t->nbytes = SIZE_MAX;
        return ES_EINVAL;
    }
    va_list ap;
    va_start(ap, ndim);
    for (int d = 0; d < ndim; d++) t->shape[d] = va_arg(ap, uint64_t);
    va_end(ap);
    t->ndim = ndim;
    uint64_t count;
    t->nbytes = shape_count(ndim, t->shape, &count) ? es__dtype_bytes(dt, count) : SIZE_MAX;
    if (t->nbytes == SIZE_MAX) rc = ES_EINVAL;
    if (rc != ES_OK) t->ndim = -1; /* make es__fwriter_tensor refuse it */
    return rc;
}

/* ---- name index ---------------------------------------------------------------
 * Open addressing over int32 slots (-1 empty), capacity a power of two at
 * least twice the entry count.  Used by the reader for O(1) lookups and
 * duplicate detection, and by the writer for duplicate detection. */
typedef const char *(*name_fn)(const void *ctx, int32_t i);

static uint32_t index_cap_for(uint32_t n) {
    uint32_t cap = 8;
    while (cap < 2 * n) cap *= 2;
    return cap;
}

/* Insert entry i (its name from name_of); returns -1 or the index of an
 * existing entry with the same name (then nothing is inserted). */
static int32_t index_insert(int32_t *slot, uint32_t cap, name_fn name_of, const void *ctx, int32_t i) {
    const char *nm = name_of(ctx, i);
    uint32_t h = (uint32_t)es__hash(nm, strlen(nm), 0) & (cap - 1);
    while (slot[h] >= 0) {
        if (strcmp(name_of(ctx, slot[h]), nm) == 0) return slot[h];
        h = (h + 1) & (cap - 1);
    }
    slot[h] = i;
    return -1;
}

static int32_t index_find(const int32_t *slot, uint32_t cap, name_fn name_of, const void *ctx, const char *nm) {
    if (!cap || !nm) return -1;
    uint32_t h = (uint32_t)es__hash(nm, strlen(nm), 0) & (cap - 1);
    while (slot[h] >= 0) {
        if (strcmp(name_of(ctx, slot[h]), nm) == 0) return slot[h];
        h = (h + 1) & (cap - 1);
    }
    return -1;
}

/* ==== writer ======================================================================= */
struct es_fwriter {
    es_afile af;
    int status;       /* sticky: first failure */
    es_err err;       /* its message */
    uint32_t n_meta, cap_meta;
    char **keys, **vals;
    uint32_t n_tensors, cap_tensors;
    es_tensor_ref *tensors;
    uint64_t *offsets; /* file offset of each tensor, set by commit */
    int32_t *tindex; /* name index over tensors */
    uint32_t tindex_cap;
    /* streaming (es__fwriter_begin): per tensor bytes appended and a hash */
    int streaming;
    bool stream_decl; /* some tensor was declared with es__fwriter_tensor_stream */
    uint64_t *done;
    XXH3_state_t **hs;
    uint64_t size;   /* file size of the planned layout */
};

static int wfail(es_fwriter *w, int code, const char *fmt, ...) ES_PRINTF(3, 4);
static int wfail(es_fwriter *w, int code, const char *fmt, ...) {
    if (w->status) return w->status; /* keep the first cause */
    va_list ap;
    va_start(ap, fmt);
    es__verr(&w->err, code, fmt, ap);
    va_end(ap);
    w->status = code;
    return code;
}

int es__fwriter_open(es_fwriter **out, const char *path, es_err *err) {
    *out = NULL;
    if (!path || !*path) return es__err(err, ES_EINVAL, "output path is empty");
    es_fwriter *w = es__calloc(1, sizeof *w);
    if (!w) return es__err(err, ES_ENOMEM, "%s: out of memory", path);
    int rc = es__afile_open(&w->af, path, err);
    if (rc != ES_OK) {
        es__free(w);
        return rc;
    }
    *out = w;
    return ES_OK;
}

static void fwriter_free(es_fwriter *w) {
    for (uint32_t i = 0; i < w->n_meta; i++) {
        es__free(w->keys[i]);
        es__free(w->vals[i]);
    }
    es__free(w->keys);
    es__free(w->vals);
    es__free(w->tensors);
    es__free(w->offsets);
    es__free(w->tindex);
    if (w->hs)
        for (uint32_t i = 0; i < w->n_tensors; i++) XXH3_freeState(w->hs[i]);
    es__free(w->hs);
    es__free(w->done);
    es__free(w);
}

void es__fwriter_abort(es_fwriter *w) {
    if (!w) return;
    es__afile_abort(&w->af);
    fwriter_free(w);
}

const char *es__fwriter_errmsg(const es_fwriter *w) { return w && w->status ? w->err.msg : ""; }

int es__fwriter_meta(es_fwriter *w, const char *key, const char *value) {
    if (w->status) return w->status;
    if (w->streaming) return wfail(w, ES_EINVAL, "%s: metadata after es__fwriter_begin", w->af.path);
    if (!key || !*key) return wfail(w, ES_EINVAL, "%s: metadata key is empty", w->af.path);
    if (!value) value = "";
    size_t kl = strlen(key), vl = strlen(value);
    if (!utf8_valid((const uint8_t *)key, kl))
        return wfail(w, ES_EINVAL, "%s: metadata key is not valid UTF-8", w->af.path);
    if (!utf8_valid((const uint8_t *)value, vl))
        return wfail(w, ES_EINVAL, "%s: metadata value of '%s' is not valid UTF-8", w->af.path, key);
    if (kl > ES_FILE_MAX_META_BYTES || vl > ES_FILE_MAX_META_BYTES)
        return wfail(w, ES_ERANGE, "%s: metadata '%.64s' is too long", w->af.path, key);
    /* Metadata is small (tens of entries); a linear duplicate scan is fine
     * and keeps the writer simple.  The hard limit bounds the worst case. */
    for (uint32_t i = 0; i < w->n_meta; i++)
        if (strcmp(w->keys[i], key) == 0)
            return wfail(w, ES_EINVAL, "%s: metadata key '%s' given twice", w->af.path, key);
    if (w->n_meta >= ES_FILE_MAX_META)
        return wfail(w, ES_ERANGE, "%s: more than %u metadata entries", w->af.path, ES_FILE_MAX_META);
    if (w->n_meta == w->cap_meta) {
        uint32_t cap = w->cap_meta ? w->cap_meta * 2 : 16;
        char **k = es__realloc(w->keys, cap * sizeof *k);
        if (!k) return wfail(w, ES_ENOMEM, "%s: out of memory", w->af.path);
        w->keys = k;
        char **v = es__realloc(w->vals, cap * sizeof *v);
        if (!v) return wfail(w, ES_ENOMEM, "%s: out of memory", w->af.path);
        w->vals = v;
        w->cap_meta = cap;
    }
    char *k = es__strdup(key), *v = es__strdup(value);
    if (!k || !v) {
        es__free(k);
        es__free(v);
        return wfail(w, ES_ENOMEM, "%s: out of memory", w->af.path);
    }
    w->keys[w->n_meta] = k;
    w->vals[w->n_meta] = v;
    w->n_meta++;
    return ES_OK;
}

int es__fwriter_metaf(es_fwriter *w, const char *key, const char *fmt, ...) {
    if (w->status) return w->status;
    va_list ap, ap2;
    va_start(ap, fmt);
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) {
        va_end(ap2);
        return wfail(w, ES_EINVAL, "%s: bad format for metadata '%.64s'", w->af.path, key ? key : "");
    }
    char *s = es__malloc((size_t)n + 1);
    if (!s) {
        va_end(ap2);
        return wfail(w, ES_ENOMEM, "%s: out of memory", w->af.path);
    }
    vsnprintf(s, (size_t)n + 1, fmt, ap2);
    va_end(ap2);
    int rc = es__fwriter_meta(w, key, s);
    es__free(s);
    return rc;
}

static const char *wtensor_name(const void *ctx, int32_t i) {
    return ((const es_fwriter *)ctx)->tensors[i].name;
}

/* Check a descriptor the way the reader will check the table entry made
 * from it, so that a writer never produces a file its reader refuses. */
static int check_ref(es_fwriter *w, const es_tensor_ref *t, bool streamed) {
    const char *path = w->af.path;
    const char *nul = memchr(t->name, 0, ES_TENSOR_NAME_MAX);
    if (!nul) return wfail(w, ES_EINVAL, "%s: tensor name '%.60s...' is longer than %d bytes", path, t->name, ES_TENSOR_NAME_MAX - 1);
    size_t nl = (size_t)(nul - t->name);
    if (nl == 0) return wfail(w, ES_EINVAL, "%s: tensor name is empty", path);
    if (!utf8_valid((const uint8_t *)t->name, nl)) return wfail(w, ES_EINVAL, "%s: tensor name is not valid UTF-8", path);
    if ((unsigned)t->dtype >= ES_DT_COUNT_) return wfail(w, ES_EINVAL, "%s: tensor '%s': unknown dtype %d", path, t->name, (int)t->dtype);
    if (t->ndim < 0 || t->ndim > ES_TENSOR_MAX_DIMS)
        return wfail(w, ES_EINVAL, "%s: tensor '%s': invalid descriptor (name too long, ndim outside 0..%d, or size overflow when it was made)", path, t->name, ES_TENSOR_MAX_DIMS);
    uint64_t count, bytes;
    if (!shape_count(t->ndim, t->shape, &count) || !dtype_size((uint32_t)t->dtype, count, &bytes))
        return wfail(w, ES_ERANGE, "%s: tensor '%s': size overflows", path, t->name);
    if (bytes != (uint64_t)t->nbytes)
        return wfail(w, ES_EINVAL, "%s: tensor '%s': nbytes %zu does not match its shape and dtype %s (%llu bytes)", path, t->name, t->nbytes,
                     es__dtype_name(t->dtype), (unsigned long long)bytes);
    if (bytes && !t->data && !streamed) return wfail(w, ES_EINVAL, "%s: tensor '%s': data is NULL", path, t->name);
    return ES_OK;
}

static int add_tensor(es_fwriter *w, const es_tensor_ref *t, bool streamed);
int es__fwriter_tensor(es_fwriter *w, const es_tensor_ref *t) { return add_tensor(w, t, false); }
int es__fwriter_tensor_stream(es_fwriter *w, const es_tensor_ref *t) { return add_tensor(w, t, true); }

static int add_tensor(es_fwriter *w, const es_tensor_ref *t, bool streamed) {
    if (w->status) return w->status;
    if (w->streaming) return wfail(w, ES_EINVAL, "%s: tensor after es__fwriter_begin", w->af.path);
    int rc = check_ref(w, t, streamed);
    if (rc) return rc;
    if (w->n_tensors >= ES_FILE_MAX_TENSORS)
        return wfail(w, ES_ERANGE, "%s: more than %u tensors", w->af.path, ES_FILE_MAX_TENSORS);
    if (w->n_tensors == w->cap_tensors) {
        uint32_t cap = w->cap_tensors ? w->cap_tensors * 2 : 16;
        es_tensor_ref *nt = es__realloc(w->tensors, cap * sizeof *nt);
        if (!nt) return wfail(w, ES_ENOMEM, "%s: out of memory", w->af.path);
        w->tensors = nt;
        w->cap_tensors = cap;
    }
    /* Grow the name index before inserting, so a failed allocation leaves
     * the writer consistent (and failed anyway: errors are sticky). */
    if (2 * (w->n_tensors + 1) > w->tindex_cap) {
        uint32_t cap = index_cap_for(w->n_tensors + 1);
        int32_t *slot = es__malloc(cap * sizeof *slot);
        if (!slot) return wfail(w, ES_ENOMEM, "%s: out of memory", w->af.path);
        memset(slot, 0xff, cap * sizeof *slot);
        for (uint32_t i = 0; i < w->n_tensors; i++) index_insert(slot, cap, wtensor_name, w, (int32_t)i);
        es__free(w->tindex);
        w->tindex = slot;
        w->tindex_cap = cap;
    }
    w->tensors[w->n_tensors] = *t;
    if (streamed) { /* its bytes come by es__fwriter_append; data marks the in-memory ones */
        w->tensors[w->n_tensors].data = NULL;
        w->stream_decl = true;
    }
    if (index_insert(w->tindex, w->tindex_cap, wtensor_name, w, (int32_t)w->n_tensors) >= 0)
        return wfail(w, ES_EINVAL, "%s: tensor name '%s' given twice", w->af.path, t->name);
    w->n_tensors++;
    return ES_OK;
}

/* Layout of a file to be written; every sum overflow-checked. */
typedef struct {
    uint64_t meta_bytes, table_off, table_bytes, data_off, data_bytes, size;
} layout;

static int plan_layout(es_fwriter *w, layout *L) {
    uint64_t mb = 0;
    for (uint32_t i = 0; i < w->n_meta; i++) mb += 4 + strlen(w->keys[i]) + 1 + 4 + strlen(w->vals[i]) + 1;
    /* Each string is <= 1 GiB and there are <= 2^20 entries, so mb cannot
     * overflow u64; the block limit keeps it readable. */
    if (mb > ES_FILE_MAX_META_BYTES) return wfail(w, ES_ERANGE, "%s: metadata block exceeds %u bytes", w->af.path, ES_FILE_MAX_META_BYTES);
    L->meta_bytes = mb;
    align_up(HDR_BYTES + mb, 8, &L->table_off);
    L->table_bytes = (uint64_t)w->n_tensors * ENTRY_BYTES;
    align_up(L->table_off + L->table_bytes, ES_ALIGN, &L->data_off);
    /* Tensor offsets by the rule of the version written; the end of the
     * last tensor's padding is the file size. */
    uint64_t end = L->data_off;
    for (uint32_t i = 0; i < w->n_tensors; i++) {
        uint64_t off, a;
        if (!tensor_start(ES_FILE_VERSION, end, w->tensors[i].nbytes, &off) || !align_up(w->tensors[i].nbytes, ES_ALIGN, &a) ||
            __builtin_add_overflow(off, a, &end))
            return wfail(w, ES_ERANGE, "%s: total size overflows", w->af.path);
        w->offsets[i] = off;
    }
    L->data_bytes = end - L->data_off;
    L->size = end;
    if (L->data_off > SIZE_MAX) return wfail(w, ES_ERANGE, "%s: total size overflows", w->af.path);
    return ES_OK;
}

static uint8_t *put_str(uint8_t *p, const char *s) {
    size_t n = strlen(s);
    st32(p, (uint32_t)n);
    memcpy(p + 4, s, n);
    p[4 + n] = 0;
    return p + 4 + n + 1;
}

/* Build header + metadata + table (the first data_off bytes) in memory. */
static int build_head(es_fwriter *w, const layout *L, uint8_t **out) {
    uint8_t *h = es__calloc(1, (size_t)L->data_off);
    if (!h) return wfail(w, ES_ENOMEM, "%s: out of memory", w->af.path);
    memcpy(h + H_MAGIC, MAGIC, sizeof MAGIC);
    st32(h + H_VERSION, ES_FILE_VERSION);
    st32(h + H_ENDIAN, ENDIAN_MARK);
    st32(h + H_HDR_BYTES, HDR_BYTES);
    st32(h + H_FLAGS, 0);
    st32(h + H_N_META, w->n_meta);
    st32(h + H_N_TENSORS, w->n_tensors);
    st64(h + H_META_OFF, HDR_BYTES);
    st64(h + H_META_BYTES, L->meta_bytes);
    st64(h + H_TABLE_OFF, L->table_off);
    st64(h + H_TABLE_BYTES, L->table_bytes);
    st64(h + H_DATA_OFF, L->data_off);
    st64(h + H_DATA_BYTES, L->data_bytes);
    st64(h + H_FILE_SIZE, L->size);
    uint8_t *p = h + HDR_BYTES;
    for (uint32_t i = 0; i < w->n_meta; i++) {
        p = put_str(p, w->keys[i]);
        p = put_str(p, w->vals[i]);
    }
    for (uint32_t i = 0; i < w->n_tensors; i++) {
        const es_tensor_ref *t = &w->tensors[i];
        uint8_t *e = h + L->table_off + (uint64_t)i * ENTRY_BYTES;
        memcpy(e + E_NAME, t->name, strlen(t->name)); /* rest stays zero */
        st32(e + E_DTYPE, (uint32_t)t->dtype);
        st32(e + E_NDIM, (uint32_t)t->ndim);
        for (int d = 0; d < t->ndim; d++) st64(e + E_SHAPE + 8 * d, t->shape[d]);
        st64(e + E_OFFSET, w->offsets[i]);
        st64(e + E_NBYTES, t->nbytes);
        st64(e + E_CHECKSUM, w->streaming ? XXH3_64bits_digest(w->hs[i]) : es__hash(t->nbytes ? t->data : "", t->nbytes, 0));
    }
    st64(h + H_CHECKSUM, es__hash(h + CHECKSUM_FROM, (size_t)L->data_off - CHECKSUM_FROM, 0));
    *out = h;
    return ES_OK;
}

static bool write_all(FILE *fp, const void *p, size_t n) { return n == 0 || fwrite(p, 1, n, fp) == n; }

/* n zero bytes (n < PAGE_ALIGN + ES_ALIGN: padding before or after a tensor). */
static bool write_zeros(FILE *fp, uint64_t n) {
    static const uint8_t zeros[4096];
    while (n > 0) {
        size_t k = n < sizeof zeros ? (size_t)n : sizeof zeros;
        if (!write_all(fp, zeros, k)) return false;
        n -= k;
    }
    return true;
}

int es__fwriter_begin(es_fwriter *w) {
    if (w->status) return w->status;
    if (w->streaming) return wfail(w, ES_EINVAL, "%s: es__fwriter_begin called twice", w->af.path);
    layout L = {0};
    uint32_t n = w->n_tensors;
    if (n && (!(w->offsets = es__malloc(n * sizeof *w->offsets)) || !(w->done = es__calloc(n, sizeof *w->done)) ||
              !(w->hs = es__calloc(n, sizeof *w->hs))))
        return wfail(w, ES_ENOMEM, "%s: out of memory", w->af.path);
    for (uint32_t i = 0; i < n; i++) {
        if (!(w->hs[i] = XXH3_createState())) return wfail(w, ES_ENOMEM, "%s: out of memory", w->af.path);
        XXH3_64bits_reset(w->hs[i]); /* == XXH3_64bits_withSeed(.., 0), the file's checksum */
    }
    int rc = plan_layout(w, &L);
    if (rc) return rc;
    if (fflush(w->af.fp) != 0 || ftruncate(fileno(w->af.fp), (off_t)L.size) != 0)
        return wfail(w, ES_EIO, "%s: cannot size the output to %llu bytes: %s", w->af.path, (unsigned long long)L.size, strerror(errno));
    w->size = L.size;
    w->streaming = 1;
    /* the tensors given in memory: written now, whole */
    for (uint32_t i = 0; i < n; i++)
        if (w->tensors[i].data && w->tensors[i].nbytes && (rc = es__fwriter_append(w, (int)i, w->tensors[i].data, w->tensors[i].nbytes)) != 0)
            return rc;
    return ES_OK;
}

int es__fwriter_tensor_index(const es_fwriter *w, const char *name) {
    if (!w->tindex_cap) return -1;
    int32_t i = index_find(w->tindex, w->tindex_cap, wtensor_name, w, name);
    return i >= 0 ? (int)i : -1;
}

int es__fwriter_append(es_fwriter *w, int i, const void *data, size_t n) {
    if (w->status) return w->status;
    if (!w->streaming || i < 0 || (uint32_t)i >= w->n_tensors)
        return wfail(w, ES_EINVAL, "%s: es__fwriter_append: bad tensor %d or not streaming", w->af.path, i);
    const es_tensor_ref *t = &w->tensors[i];
    if (n > t->nbytes - w->done[i])
        return wfail(w, ES_ERANGE, "%s: tensor '%s': %zu more bytes than its %zu", w->af.path, t->name, (size_t)(n - (t->nbytes - w->done[i])), t->nbytes);
    const uint8_t *p = data;
    uint64_t off = w->offsets[i] + w->done[i];
    size_t left = n;
    while (left > 0) {
        ssize_t k = pwrite(fileno(w->af.fp), p, left, (off_t)off);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return wfail(w, ES_EIO, "%s: write failed: %s", w->af.path, k < 0 ? strerror(errno) : "no progress");
        p += k;
        off += (uint64_t)k;
        left -= (size_t)k;
    }
    XXH3_64bits_update(w->hs[i], data, n);
    w->done[i] += n;
    return ES_OK;
}

/* Streaming commit: every tensor complete, then the head at offset 0. */
static int commit_streamed(es_fwriter *w) {
    for (uint32_t i = 0; i < w->n_tensors; i++)
        if (w->done[i] != w->tensors[i].nbytes)
            return wfail(w, ES_EINVAL, "%s: tensor '%s': %llu of its %zu bytes written", w->af.path, w->tensors[i].name,
                         (unsigned long long)w->done[i], w->tensors[i].nbytes);
    layout L = {0};
    int rc = plan_layout(w, &L); /* the same layout as at begin */
    if (rc) return rc;
    ES_ASSERT(L.size == w->size);
    uint8_t *head = NULL;
    if ((rc = build_head(w, &L, &head)) != 0) return rc;
    size_t left = (size_t)L.data_off;
    const uint8_t *p = head;
    uint64_t off = 0;
    while (left > 0) {
        ssize_t k = pwrite(fileno(w->af.fp), p, left, (off_t)off);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) {
            es__free(head);
            return wfail(w, ES_EIO, "%s: write failed: %s", w->af.path, k < 0 ? strerror(errno) : "no progress");
        }
        p += k;
        off += (uint64_t)k;
        left -= (size_t)k;
    }
    es__free(head);
    return ES_OK;
}

int es__fwriter_commit(es_fwriter *w, es_err *err) {
    layout L = {0};
    uint8_t *head = NULL;
    int rc = w->status;
    if (!rc && w->streaming) {
        if ((rc = commit_streamed(w)) != 0) {
            if (err) *err = w->err;
            es__fwriter_abort(w);
            return rc;
        }
        rc = es__afile_commit(&w->af, err);
        fwriter_free(w);
        return rc;
    }
    if (!rc && w->stream_decl) rc = wfail(w, ES_EINVAL, "%s: streamed tensors need es__fwriter_begin before commit", w->af.path);
    if (!rc && w->n_tensors && !(w->offsets = es__malloc(w->n_tensors * sizeof *w->offsets)))
        rc = wfail(w, ES_ENOMEM, "%s: out of memory", w->af.path);
    if (!rc) rc = plan_layout(w, &L);
    if (!rc) rc = build_head(w, &L, &head);
    if (!rc) {
        FILE *fp = w->af.fp;
        bool ok = write_all(fp, head, (size_t)L.data_off);
        uint64_t pos = L.data_off; /* bytes written so far */
        for (uint32_t i = 0; ok && i < w->n_tensors; i++) {
            const es_tensor_ref *t = &w->tensors[i];
            uint64_t pad = (ES_ALIGN - t->nbytes % ES_ALIGN) % ES_ALIGN;
            ok = write_zeros(fp, w->offsets[i] - pos) && write_all(fp, t->data, t->nbytes) && write_zeros(fp, pad);
            pos = w->offsets[i] + t->nbytes + pad;
        }
        if (!ok) rc = wfail(w, ES_EIO, "%s: write failed: %s", w->af.path, strerror(errno));
    }
    es__free(head);
    if (rc) {
        if (err) *err = w->err;
        es__fwriter_abort(w);
        return rc;
    }
    rc = es__afile_commit(&w->af, err); /* removes the temporary on failure */
    fwriter_free(w);
    return rc;
}

/* ==== reader ======================================================================= */
struct es_file {
    const uint8_t *base;
    size_t size;
    bool mapped;       /* munmap on close (a zero-size view is not mapped) */
    bool file_mapped;  /* base maps the file itself (ES_FILE_MAP); otherwise
                          a mapped base is a private anonymous copy */
    int fd;            /* the file, open until close; -1 for memory */
    uint32_t version;
    const char *name;  /* path, or "(memory)"; carved from this allocation */
    int n_meta;
    const char **keys, **vals;
    int32_t *mindex;
    uint32_t mindex_cap;
    int n_tensors;
    es_tensor_ref *tensors;
    uint64_t *sums;
    int32_t *tindex;
    uint32_t tindex_cap;
    bool verified;     /* every tensor's checksum was checked at open */
};

static const char *rkey_name(const void *ctx, int32_t i) { return ((const es_file *)ctx)->keys[i]; }
static const char *rtensor_name(const void *ctx, int32_t i) { return ((const es_file *)ctx)->tensors[i].name; }

/* Header fields after the fixed prefix has been checked. */
typedef struct {
    uint32_t n_meta, n_tensors;
    uint64_t meta_off, meta_bytes, table_off, table_bytes, data_off, data_bytes, size;
} header;

static int check_header(const char *nm, const uint8_t *b, size_t size, uint32_t *version, header *H, es_err *err) {
    if (size == 0) return es__err(err, ES_EFORMAT, "%s: not an embstore file (empty)", nm);
    if (size < sizeof MAGIC) {
        if (memcmp(b, MAGIC, size) == 0)
            return es__err(err, ES_EFORMAT, "%s: truncated: file has %zu bytes, an embstore header needs %u", nm, size, HDR_BYTES);
        return es__err(err, ES_EFORMAT, "%s: not an embstore file (bad magic)", nm);
    }
    if (memcmp(b, MAGIC, sizeof MAGIC) != 0) return es__err(err, ES_EFORMAT, "%s: not an embstore file (bad magic)", nm);
    if (size < H_ENDIAN + 4)
        return es__err(err, ES_EFORMAT, "%s: truncated: file has %zu bytes, an embstore header needs %u", nm, size, HDR_BYTES);
    /* Endianness before version: a foreign file's version reads byte-swapped. */
    uint32_t mark = ld32(b + H_ENDIAN);
    if (mark == ENDIAN_SWAPPED)
        return es__err(err, ES_EFORMAT, "%s: wrong endianness: the file was written on a machine with the other byte order", nm);
    if (mark != ENDIAN_MARK) return es__err(err, ES_EFORMAT, "%s: bad endianness mark 0x%08x (expected 0x%08x)", nm, mark, ENDIAN_MARK);
    uint32_t v = ld32(b + H_VERSION);
    if (v == 0) return es__err(err, ES_EFORMAT, "%s: invalid format version 0", nm);
    if (v > ES_FILE_VERSION)
        return es__err(err, ES_EVERSION, "%s: format version %u is newer than this embstore (max %u)", nm, v, ES_FILE_VERSION);
    *version = v;
    if (size < HDR_BYTES) return es__err(err, ES_EFORMAT, "%s: truncated: file has %zu bytes, an embstore header needs %u", nm, size, HDR_BYTES);

    H->size = ld64(b + H_FILE_SIZE);
    H->data_off = ld64(b + H_DATA_OFF);
    /* Verify the checksum first whenever the covered range is present, so a
     * corrupted size field reads as corruption rather than truncation. */
    if (H->data_off < HDR_BYTES || H->data_off > size) {
        if (H->data_off > size || H->size > size) {
            uint64_t claim = H->size > H->data_off ? H->size : H->data_off;
            return es__err(err, ES_EFORMAT, "%s: truncated: header says %llu bytes, file has %zu", nm, (unsigned long long)claim, size);
        }
        return es__err(err, ES_EFORMAT, "%s: data offset %llu lies inside the header", nm, (unsigned long long)H->data_off);
    }
    uint64_t want = ld64(b + H_CHECKSUM);
    uint64_t got = es__hash(b + CHECKSUM_FROM, (size_t)H->data_off - CHECKSUM_FROM, 0);
    if (want != got)
        return es__err(err, ES_ECHECKSUM, "%s: header checksum mismatch (stored %016llx, computed %016llx): file corrupted", nm,
                       (unsigned long long)want, (unsigned long long)got);
    if (H->size > size)
        return es__err(err, ES_EFORMAT, "%s: truncated: header says %llu bytes, file has %zu", nm, (unsigned long long)H->size, size);
    if (H->size < size)
        return es__err(err, ES_EFORMAT, "%s: trailing bytes: header says %llu bytes, file has %zu", nm, (unsigned long long)H->size, size);

    uint32_t hb = ld32(b + H_HDR_BYTES), flags = ld32(b + H_FLAGS);
    if (hb != HDR_BYTES) return es__err(err, ES_EFORMAT, "%s: header size %u, format version %u has %u", nm, hb, v, HDR_BYTES);
    if (flags != 0) return es__err(err, ES_EFORMAT, "%s: unknown header flags 0x%x", nm, flags);
    if (!all_zero(b + H_RESERVED, HDR_BYTES - H_RESERVED)) return es__err(err, ES_EFORMAT, "%s: reserved header bytes are not zero", nm);
    H->n_meta = ld32(b + H_N_META);
    H->n_tensors = ld32(b + H_N_TENSORS);
    H->meta_off = ld64(b + H_META_OFF);
    H->meta_bytes = ld64(b + H_META_BYTES);
    H->table_off = ld64(b + H_TABLE_OFF);
    H->table_bytes = ld64(b + H_TABLE_BYTES);
    H->data_bytes = ld64(b + H_DATA_BYTES);
    if (H->n_meta > ES_FILE_MAX_META) return es__err(err, ES_EFORMAT, "%s: %u metadata entries exceed the limit %u", nm, H->n_meta, ES_FILE_MAX_META);
    if (H->n_tensors > ES_FILE_MAX_TENSORS)
        return es__err(err, ES_EFORMAT, "%s: %u tensors exceed the limit %u", nm, H->n_tensors, ES_FILE_MAX_TENSORS);
    if (H->meta_bytes > ES_FILE_MAX_META_BYTES)
        return es__err(err, ES_EFORMAT, "%s: metadata block of %llu bytes exceeds the limit %u", nm, (unsigned long long)H->meta_bytes, ES_FILE_MAX_META_BYTES);
    /* The canonical layout: each offset follows from the sizes before it.
     * With the limits above none of these sums can overflow. */
    uint64_t t_off, d_off;
    align_up(HDR_BYTES + H->meta_bytes, 8, &t_off);
    align_up(t_off + (uint64_t)H->n_tensors * ENTRY_BYTES, ES_ALIGN, &d_off);
    if (H->meta_off != HDR_BYTES)
        return es__err(err, ES_EFORMAT, "%s: metadata offset %llu, expected %u", nm, (unsigned long long)H->meta_off, HDR_BYTES);
    if (H->table_off != t_off)
        return es__err(err, ES_EFORMAT, "%s: tensor table offset %llu, expected %llu", nm, (unsigned long long)H->table_off, (unsigned long long)t_off);
    if (H->table_bytes != (uint64_t)H->n_tensors * ENTRY_BYTES)
        return es__err(err, ES_EFORMAT, "%s: tensor table of %llu bytes does not hold %u entries of %u bytes", nm,
                       (unsigned long long)H->table_bytes, H->n_tensors, ENTRY_BYTES);
    if (H->data_off != d_off)
        return es__err(err, ES_EFORMAT, "%s: data offset %llu, expected %llu", nm, (unsigned long long)H->data_off, (unsigned long long)d_off);
    if (H->data_bytes != H->size - H->data_off)
        return es__err(err, ES_EFORMAT, "%s: data area of %llu bytes, file size implies %llu", nm, (unsigned long long)H->data_bytes,
                       (unsigned long long)(H->size - H->data_off));
    if (H->n_meta > H->meta_bytes / META_MIN_ENTRY)
        return es__err(err, ES_EFORMAT, "%s: %u metadata entries cannot fit in %llu bytes", nm, H->n_meta, (unsigned long long)H->meta_bytes);
    if (!all_zero(b + HDR_BYTES + H->meta_bytes, (size_t)(t_off - HDR_BYTES - H->meta_bytes)) ||
        !all_zero(b + t_off + H->table_bytes, (size_t)(d_off - t_off - H->table_bytes)))
        return es__err(err, ES_EFORMAT, "%s: padding before the tensor table or the data is not zero", nm);
    return ES_OK;
}

/* Read one length-prefixed, NUL-terminated UTF-8 string at *pos within
 * [.., end); advances *pos. */
static int read_str(const char *nm, const uint8_t *b, uint64_t *pos, uint64_t end, int entry, const char *what, bool nonempty,
                    const char **out, es_err *err) {
    if (end - *pos < 4) return es__err(err, ES_EFORMAT, "%s: metadata entry %d: %s length runs past the metadata block", nm, entry, what);
    uint64_t len = ld32(b + *pos);
    *pos += 4;
    if (len >= end - *pos)
        return es__err(err, ES_EFORMAT, "%s: metadata entry %d: %s of %llu bytes runs past the metadata block", nm, entry, what, (unsigned long long)len);
    const uint8_t *s = b + *pos;
    if (s[len] != 0) return es__err(err, ES_EFORMAT, "%s: metadata entry %d: %s is not NUL-terminated", nm, entry, what);
    if (memchr(s, 0, (size_t)len)) return es__err(err, ES_EFORMAT, "%s: metadata entry %d: %s contains a NUL byte", nm, entry, what);
    if (nonempty && len == 0) return es__err(err, ES_EFORMAT, "%s: metadata entry %d: %s is empty", nm, entry, what);
    if (!utf8_valid(s, (size_t)len)) return es__err(err, ES_EFORMAT, "%s: metadata entry %d: %s is not valid UTF-8", nm, entry, what);
    *out = (const char *)s;
    *pos += len + 1;
    return ES_OK;
}

static int parse_meta(es_file *f, const header *H, es_err *err) {
    const char *nm = f->name;
    uint64_t pos = HDR_BYTES, end = HDR_BYTES + H->meta_bytes;
    for (int i = 0; i < f->n_meta; i++) {
        int rc = read_str(nm, f->base, &pos, end, i, "key", true, &f->keys[i], err);
        if (!rc) rc = read_str(nm, f->base, &pos, end, i, "value", false, &f->vals[i], err);
        if (rc) return rc;
        if (index_insert(f->mindex, f->mindex_cap, rkey_name, f, i) >= 0)
            return es__err(err, ES_EFORMAT, "%s: duplicate metadata key '%.200s'", nm, f->keys[i]);
    }
    if (pos != end) return es__err(err, ES_EFORMAT, "%s: metadata block has %llu bytes after its last entry", nm, (unsigned long long)(end - pos));
    return ES_OK;
}

static int parse_table(es_file *f, const header *H, es_err *err) {
    const char *nm = f->name;
    const uint8_t *b = f->base;
    uint64_t prev = H->data_off; /* where the previous tensor's padding ended */
    for (int i = 0; i < f->n_tensors; i++) {
        const uint8_t *e = b + H->table_off + (uint64_t)i * ENTRY_BYTES;
        es_tensor_ref *t = &f->tensors[i];
        const uint8_t *nul = memchr(e + E_NAME, 0, ES_TENSOR_NAME_MAX);
        if (!nul) return es__err(err, ES_EFORMAT, "%s: tensor %d: name is not NUL-terminated", nm, i);
        size_t nl = (size_t)(nul - (e + E_NAME));
        if (nl == 0) return es__err(err, ES_EFORMAT, "%s: tensor %d: name is empty", nm, i);
        if (!utf8_valid(e + E_NAME, nl)) return es__err(err, ES_EFORMAT, "%s: tensor %d: name is not valid UTF-8", nm, i);
        if (!all_zero(nul, ES_TENSOR_NAME_MAX - nl)) return es__err(err, ES_EFORMAT, "%s: tensor %d: bytes after the name are not zero", nm, i);
        memcpy(t->name, e + E_NAME, nl + 1);
        uint32_t dt = ld32(e + E_DTYPE), ndim = ld32(e + E_NDIM);
        if (dt >= ES_DT_COUNT_)
            return es__err(err, ES_EFORMAT, "%s: tensor '%s': unknown dtype %u (this embstore knows 0..%d)", nm, t->name, dt, ES_DT_COUNT_ - 1);
        if (ndim > ES_TENSOR_MAX_DIMS) return es__err(err, ES_EFORMAT, "%s: tensor '%s': %u dimensions (at most %d)", nm, t->name, ndim, ES_TENSOR_MAX_DIMS);
        t->dtype = (es_dtype)dt;
        t->ndim = (int)ndim;
        for (int d = 0; d < ES_TENSOR_MAX_DIMS; d++) t->shape[d] = ld64(e + E_SHAPE + 8 * d);
        for (int d = (int)ndim; d < ES_TENSOR_MAX_DIMS; d++)
            if (t->shape[d]) return es__err(err, ES_EFORMAT, "%s: tensor '%s': unused dimension %d is not zero", nm, t->name, d);
        uint64_t count, bytes, off = ld64(e + E_OFFSET), nbytes = ld64(e + E_NBYTES), padded, tend, expect;
        if (!shape_count(t->ndim, t->shape, &count) || !dtype_size(dt, count, &bytes))
            return es__err(err, ES_EFORMAT, "%s: tensor '%s': size of its shape overflows", nm, t->name);
        if (bytes != nbytes)
            return es__err(err, ES_EFORMAT, "%s: tensor '%s': shape and dtype %s need %llu bytes, table says %llu", nm, t->name,
                           DTYPE_NAMES[dt], (unsigned long long)bytes, (unsigned long long)nbytes);
        if (off % ES_ALIGN) return es__err(err, ES_EFORMAT, "%s: tensor '%s': offset %llu is not 64-byte aligned", nm, t->name, (unsigned long long)off);
        /* prev <= size here, so this cannot overflow, but an overflow
         * would only mean "outside the file" anyway. */
        if (!tensor_start(f->version, prev, nbytes, &expect)) expect = UINT64_MAX;
        if (off < expect && off >= prev) /* only the version-2 page rule leaves room here */
            return es__err(err, ES_EFORMAT, "%s: tensor '%s': offset %llu, expected %llu (format version %u starts tensors of %llu bytes or more at a multiple of %llu)",
                           nm, t->name, (unsigned long long)off, (unsigned long long)expect, f->version, (unsigned long long)PAGE_TENSOR_MIN,
                           (unsigned long long)PAGE_ALIGN);
        if (off < expect) {
            if (i == 0) return es__err(err, ES_EFORMAT, "%s: tensor '%s': offset %llu lies before the data area", nm, t->name, (unsigned long long)off);
            return es__err(err, ES_EFORMAT, "%s: tensor '%s' overlaps tensor '%s' (or is out of order)", nm, t->name, f->tensors[i - 1].name);
        }
        if (!align_up(nbytes, ES_ALIGN, &padded) || __builtin_add_overflow(off, padded, &tend) || tend > H->size)
            return es__err(err, ES_EFORMAT, "%s: tensor '%s': bytes [%llu, +%llu) lie outside the file (%llu bytes)", nm, t->name,
                           (unsigned long long)off, (unsigned long long)nbytes, (unsigned long long)H->size);
        if (off != expect)
            return es__err(err, ES_EFORMAT, "%s: tensor '%s': unexpected gap of %llu bytes before it", nm, t->name, (unsigned long long)(off - expect));
        /* Version 2 pads before a page-aligned tensor; that padding (at most
         * a page) lies inside the file because the tensor does. */
        if (!all_zero(b + prev, (size_t)(off - prev)))
            return es__err(err, ES_ECHECKSUM, "%s: padding before tensor '%s' is not zero: file corrupted", nm, t->name);
        if (!all_zero(b + off + nbytes, (size_t)(padded - nbytes)))
            return es__err(err, ES_ECHECKSUM, "%s: padding after tensor '%s' is not zero: file corrupted", nm, t->name);
        t->data = (void *)(uintptr_t)(b + off); /* read-only view */
        t->nbytes = (size_t)nbytes;
        f->sums[i] = ld64(e + E_CHECKSUM);
        int32_t dup = index_insert(f->tindex, f->tindex_cap, rtensor_name, f, i);
        if (dup >= 0) return es__err(err, ES_EFORMAT, "%s: duplicate tensor name '%s' (entries %d and %d)", nm, t->name, (int)dup, i);
        prev = tend;
    }
    if (prev != H->size)
        return es__err(err, ES_EFORMAT, "%s: %llu bytes at the end of the data area belong to no tensor", nm, (unsigned long long)(H->size - prev));
    return ES_OK;
}

/* One allocation holds the handle, its arrays and the name (carved below). */
static es_file *file_alloc(const char *nm, const header *H) {
    size_t nmeta = H->n_meta, nt = H->n_tensors;
    uint32_t mcap = nmeta ? index_cap_for((uint32_t)nmeta) : 0, tcap = nt ? index_cap_for((uint32_t)nt) : 0;
    /* Counts are bounded by ES_FILE_MAX_* (2^20), so these sizes are far
     * from overflowing; all pieces are multiples of 8 except the name. */
    size_t o_keys = (sizeof(es_file) + 7) & ~(size_t)7;
    size_t o_vals = o_keys + nmeta * sizeof(char *);
    size_t o_tens = o_vals + nmeta * sizeof(char *);
    size_t o_sums = o_tens + nt * sizeof(es_tensor_ref);
    size_t o_midx = o_sums + nt * sizeof(uint64_t);
    size_t o_tidx = o_midx + mcap * sizeof(int32_t);
    size_t o_name = o_tidx + tcap * sizeof(int32_t);
    size_t total = o_name + strlen(nm) + 1;
    uint8_t *m = es__malloc(total);
    if (!m) return NULL;
    es_file *f = (es_file *)m;
    memset(f, 0, sizeof *f);
    f->keys = (const char **)(m + o_keys);
    f->vals = (const char **)(m + o_vals);
    f->tensors = (es_tensor_ref *)(m + o_tens);
    memset(f->tensors, 0, nt * sizeof(es_tensor_ref));
    f->sums = (uint64_t *)(m + o_sums);
    f->mindex = (int32_t *)(m + o_midx);
    f->mindex_cap = mcap;
    memset(f->mindex, 0xff, mcap * sizeof(int32_t));
    f->tindex = (int32_t *)(m + o_tidx);
    f->tindex_cap = tcap;
    memset(f->tindex, 0xff, tcap * sizeof(int32_t));
    memcpy(m + o_name, nm, strlen(nm) + 1);
    f->name = (const char *)(m + o_name);
    f->n_meta = (int)nmeta;
    f->n_tensors = (int)nt;
    return f;
}

static int verify_one(const es_file *f, int i, es_err *err) {
    const es_tensor_ref *t = &f->tensors[i];
    uint64_t got = es__hash(t->nbytes ? t->data : "", t->nbytes, 0);
    if (got != f->sums[i])
        return es__err(err, ES_ECHECKSUM, "%s: tensor '%s' checksum mismatch (stored %016llx, computed %016llx): data corrupted", f->name, t->name,
                       (unsigned long long)f->sums[i], (unsigned long long)got);
    return ES_OK;
}

/* Validate the image [b, b+size) and build the handle.  On failure nothing
 * is kept; the caller unmaps. */
static int open_image(es_file **out, const char *nm, const uint8_t *b, size_t size, unsigned flags, es_err *err) {
    header H = {0};
    uint32_t version = 0;
    int rc = check_header(nm, b, size, &version, &H, err);
    if (rc) return rc;
    es_file *f = file_alloc(nm, &H);
    if (!f) return es__err(err, ES_ENOMEM, "%s: out of memory", nm);
    f->base = b;
    f->size = size;
    f->version = version;
    f->fd = -1;
    rc = parse_meta(f, &H, err);
    if (!rc) rc = parse_table(f, &H, err);
    for (int i = 0; !rc && !(flags & ES_FILE_NO_VERIFY) && i < f->n_tensors; i++) rc = verify_one(f, i, err);
    if (rc) {
        es__free(f);
        return rc;
    }
    f->verified = !(flags & ES_FILE_NO_VERIFY);
    *out = f;
    return ES_OK;
}

int es__file_open_mem(es_file **out, const void *data, size_t len, unsigned flags, es_err *err) {
    *out = NULL;
    if (!data && len) return es__err(err, ES_EINVAL, "(memory): buffer is NULL");
    if ((uintptr_t)data % ES_ALIGN) return es__err(err, ES_EINVAL, "(memory): buffer must be %d-byte aligned", ES_ALIGN);
    return open_image(out, "(memory)", data ? data : (const void *)"", len, flags, err);
}

/* Read the whole file into a private anonymous mapping.  The file must not
 * change while it is read: a short read, or a size, inode or modification
 * time that differs after the read from before it, means it is being
 * rewritten (a `cp` over it), and the open fails with a message saying so
 * rather than validating a mix of two files. */
static int read_private(const char *path, int fd, const struct stat *st0, uint8_t **out, es_err *err) {
    size_t size = (size_t)st0->st_size;
    uint8_t *b = es__map_anon(size);
    if (!b) return es__err(err, ES_ENOMEM, "%s: out of memory reading %zu bytes", path, size);
    size_t got = 0;
    while (got < size) {
        ssize_t r = pread(fd, b + got, size - got, (off_t)got);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            int e = errno;
            es__unmap_anon(b, size);
            return es__err(err, ES_EIO, "%s: read failed: %s", path, strerror(e));
        }
        if (r == 0) break;
        got += (size_t)r;
    }
    struct stat st1;
    if (got < size || fstat(fd, &st1) != 0 || st1.st_size != st0->st_size || st1.st_ino != st0->st_ino ||
        st1.st_mtim.tv_sec != st0->st_mtim.tv_sec || st1.st_mtim.tv_nsec != st0->st_mtim.tv_nsec) {
        es__unmap_anon(b, size);
        return es__err(err, ES_EIO, "%s: the file changed on disk while it was being read (rewritten in place?); retry once the writer is done", path);
    }
    *out = b;
    return ES_OK;
}

int es__file_open(es_file **out, const char *path, unsigned flags, es_err *err) {
    *out = NULL;
    if (!path || !*path) return es__err(err, ES_EINVAL, "input path is empty");
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return es__err(err, ES_EIO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return es__err(err, ES_EIO, "%s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return es__err(err, ES_EIO, "%s: not a regular file", path);
    }
    if ((uint64_t)st.st_size > SIZE_MAX) {
        close(fd);
        return es__err(err, ES_ERANGE, "%s: file too large to map", path);
    }
    size_t size = (size_t)st.st_size;
    const uint8_t *b = (const uint8_t *)"";
    int map = (flags & ES_FILE_MAP) != 0;
    if (size && map) {
        void *m = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED) {
            int e = errno;
            close(fd);
            return es__err(err, ES_EIO, "%s: cannot map: %s", path, strerror(e));
        }
        b = m;
    } else if (size) {
        uint8_t *copy = NULL;
        int rc = read_private(path, fd, &st, &copy, err);
        if (rc) {
            close(fd);
            return rc;
        }
        b = copy;
    }
    int rc = open_image(out, path, b, size, flags, err);
    if (rc) {
        if (size) munmap((void *)(uintptr_t)b, size);
        close(fd);
        return rc;
    }
    /* The descriptor stays open (es__file_fd): a loader maps tensor pages
     * from it into its own arrays. */
    (*out)->mapped = size > 0;
    (*out)->file_mapped = map && size > 0;
    (*out)->fd = fd;
    return ES_OK;
}

void es__file_close(es_file *f) {
    if (!f) return;
    if (f->mapped) munmap((void *)(uintptr_t)f->base, f->size);
    if (f->fd >= 0) close(f->fd);
    es__free(f);
}

int es__file_fd(const es_file *f) { return f->fd; }
int es__file_is_mapped(const es_file *f) { return f->file_mapped; }

int es__file_move_pages(es_file *f, int i, void *dst, size_t nbytes) {
    if (i < 0 || i >= f->n_tensors || f->file_mapped || !f->mapped || nbytes > f->tensors[i].nbytes) return ES_EINVAL;
    return es__alloc_move(dst, f->tensors[i].data, nbytes);
}

uint64_t es__file_tensor_offset(const es_file *f, int i) {
    if (i < 0 || i >= f->n_tensors) return UINT64_MAX;
    return (uint64_t)((const uint8_t *)f->tensors[i].data - f->base);
}

uint32_t es__file_version(const es_file *f) { return f->version; }
int es__file_n_meta(const es_file *f) { return f->n_meta; }

void es__file_meta_at(const es_file *f, int i, const char **key, const char **value) {
    bool ok = i >= 0 && i < f->n_meta;
    if (key) *key = ok ? f->keys[i] : NULL;
    if (value) *value = ok ? f->vals[i] : NULL;
}

const char *es__file_meta(const es_file *f, const char *key) {
    int32_t i = index_find(f->mindex, f->mindex_cap, rkey_name, f, key);
    return i >= 0 ? f->vals[i] : NULL;
}

int es__file_n_tensors(const es_file *f) { return f->n_tensors; }

const es_tensor_ref *es__file_tensor_at(const es_file *f, int i) {
    return i >= 0 && i < f->n_tensors ? &f->tensors[i] : NULL;
}

const es_tensor_ref *es__file_tensor(const es_file *f, const char *name) {
    int32_t i = index_find(f->tindex, f->tindex_cap, rtensor_name, f, name);
    return i >= 0 ? &f->tensors[i] : NULL;
}

int es__file_verify_tensor(const es_file *f, int i, es_err *err) {
    if (i < 0 || i >= f->n_tensors) return es__err(err, ES_EINVAL, "%s: no tensor %d (file has %d)", f->name, i, f->n_tensors);
    return verify_one(f, i, err);
}

size_t es__file_size(const es_file *f) { return f->size; }

int es__file_fix_checksum(void *data, size_t len) {
    uint8_t *b = data;
    if (len < HDR_BYTES || memcmp(b, MAGIC, sizeof MAGIC) != 0) return ES_EFORMAT;
    uint64_t d = ld64(b + H_DATA_OFF);
    if (d < HDR_BYTES || d > len) return ES_EFORMAT;
    st64(b + H_CHECKSUM, es__hash(b + CHECKSUM_FROM, (size_t)d - CHECKSUM_FROM, 0));
    return ES_OK;
}

int es__file_place(es_file *f, int i, void *dst, int inplace, size_t *placed, const char *path, es_err *err) {
    const es_tensor_ref *t = es__file_tensor_at(f, i);
    size_t whole = t->nbytes & ~(size_t)(ES_FILE_PAGE_ALIGN - 1);
    uint64_t off = es__file_tensor_offset(f, i);
    if (inplace && whole > 0 && off % ES_FILE_PAGE_ALIGN == 0 && (uintptr_t)dst % ES_FILE_PAGE_ALIGN == 0) {
        const char *src = t->data; /* the tail stays readable after a move */
        int rc = es__file_is_mapped(f) ? es__alloc_remap(dst, whole, es__file_fd(f), off) : es__file_move_pages(f, i, dst, whole);
        if (rc == ES_OK) {
            memcpy((char *)dst + whole, src + whole, t->nbytes - whole);
            if (placed) *placed += whole;
            return ES_OK;
        }
        /* ES_EINVAL: the block does not qualify, copy below.  Anything else
         * is a failed mmap/mremap over the block: refuse rather than guess. */
        if (rc != ES_EINVAL) return es__err(err, rc, "%s: cannot place tensor '%s' from the file: %s", path, t->name, strerror(errno));
    }
    memcpy(dst, t->data, t->nbytes);
    return ES_OK;
}

int es__file_verified(const es_file *f) { return f && f->verified; }

int es__file_inplace_ok(const es_file *f) {
    const char *no_remap = getenv("ES_NO_REMAP");
    return es__file_fd(f) >= 0 && sysconf(_SC_PAGESIZE) == ES_FILE_PAGE_ALIGN &&
           !(no_remap && *no_remap && strcmp(no_remap, "0") != 0);
}
