/*
 * test_format.c — the container file format (src/format/file.c): round trips
 * of every dtype with metadata, detection of a flipped byte at every
 * position and of truncation at every length, version and endianness
 * refusal, lazy verification, crafted malformed tables, atomic writes, the
 * version-2 page rule for large tensors, and the committed fixtures of both
 * versions (v1_small.es must keep loading; today's writer must reproduce
 * v2_small.es byte for byte).
 *
 * Byte offsets used to craft bad files are the ones documented in
 * docs/format.md, written here independently of file.c on purpose: a change
 * to the layout that forgets the documentation fails these tests.
 */
#include "test.h"

#include "format/file.h"

#include "fixtures/fixture_v1.h"
#include "fixtures/fixture_v2.h"

#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

/* docs/format.md, "Header" and "Tensor table". */
enum {
    OFF_CHECKSUM = 8,
    OFF_VERSION = 16,
    OFF_ENDIAN = 20,
    OFF_N_META = 32,
    OFF_N_TENSORS = 36,
    OFF_META_OFF = 40,
    OFF_TABLE_OFF = 56,
    OFF_DATA_OFF = 72,
    OFF_DATA_BYTES = 80,
    OFF_FILE_SIZE = 88,
    OFF_RESERVED = 96,
    HEADER = 128,
    ENTRY = 128,
    ENT_DTYPE = 64,
    ENT_NDIM = 68,
    ENT_SHAPE = 72,
    ENT_OFFSET = 104,
    ENT_NBYTES = 112,
    /* Version 2: tensors of PAGE_MIN bytes or more start at a multiple of PAGE. */
    PAGE = 4096,
    PAGE_MIN = 65536,
};

static uint32_t get32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}
static uint64_t get64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}
static void put32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static void put64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }

static int host_little_endian(void) {
    const uint16_t one = 1;
    return *(const uint8_t *)&one == 1;
}

/* Read a whole file into a 64-byte aligned buffer (es__file_open_mem needs
 * that).  Returns NULL on failure. */
static uint8_t *load_aligned(const char *path, size_t *len) {
    FILE *fp = fopen(path, "rb");
    if (!fp) return NULL;
    fseek(fp, 0, SEEK_END);
    long n = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    uint8_t *b = n >= 0 ? aligned_alloc(64, ((size_t)n + 64) & ~(size_t)63) : NULL;
    if (b && fread(b, 1, (size_t)n, fp) != (size_t)n) {
        free(b);
        b = NULL;
    }
    fclose(fp);
    *len = (size_t)n;
    return b;
}

static int write_bytes(const char *path, const void *p, size_t n) {
    FILE *fp = fopen(path, "wb");
    if (!fp) return -1;
    size_t w = fwrite(p, 1, n, fp);
    return (fclose(fp) == 0 && w == n) ? 0 : -1;
}

/* Number of directory entries of dir whose name starts with prefix. */
static int count_prefixed(const char *dir, const char *prefix) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strncmp(e->d_name, prefix, strlen(prefix)) == 0) n++;
    closedir(d);
    return n;
}

/* The fixture content written anew with today's writer. */
static int write_fixture_copy(const char *path, es_err *err) {
    static _Alignas(64) uint8_t bufs[FIX_V1_N_TENSORS][64];
    es_fwriter *w;
    int rc = es__fwriter_open(&w, path, err);
    if (rc) return rc;
    for (int i = 0; i < FIX_V1_N_META; i++) es__fwriter_meta(w, fix_v1_meta[i][0], fix_v1_meta[i][1]);
    for (int k = 0; k < FIX_V1_N_TENSORS; k++) {
        const fix_v1_tensor *d = &fix_v1_tensors[k];
        es_tensor_ref t;
        fix_v1_fill(k, bufs[k]);
        es__tensor_ref_set(&t, d->name, (es_dtype)d->dtype, bufs[k], d->ndim, d->shape[0], d->shape[1], d->shape[2], d->shape[3]);
        es__fwriter_tensor(w, &t);
    }
    return es__fwriter_commit(w, err);
}

/* The v2 fixture content written anew with today's writer. */
static int write_fixture_v2_copy(const char *path, es_err *err) {
    static _Alignas(64) uint8_t small[FIX_V2_N_TENSORS][64];
    static _Alignas(64) uint8_t big[FIX_V2_BIG_BYTES];
    es_fwriter *w;
    int rc = es__fwriter_open(&w, path, err);
    if (rc) return rc;
    for (int i = 0; i < FIX_V2_N_META; i++) es__fwriter_meta(w, fix_v1_meta[i][0], fix_v1_meta[i][1]);
    for (int k = 0; k < FIX_V2_N_TENSORS; k++) {
        const fix_v1_tensor *d = fix_v2_tensor(k);
        void *buf = k == FIX_V2_BIG ? (void *)big : (void *)small[k];
        es_tensor_ref t;
        fix_v2_fill(k, buf);
        es__tensor_ref_set(&t, d->name, (es_dtype)d->dtype, buf, d->ndim, d->shape[0], d->shape[1], d->shape[2], d->shape[3]);
        es__fwriter_tensor(w, &t);
    }
    return es__fwriter_commit(w, err);
}

/* ---- small units ------------------------------------------------------------- */

TEST(format_dtype_numbers_are_frozen) {
    /* Persisted: these numbers are in every file ever written. */
    CHECK_EQ_INT(ES_DT_F32, 0);
    CHECK_EQ_INT(ES_DT_F16, 1);
    CHECK_EQ_INT(ES_DT_I8, 2);
    CHECK_EQ_INT(ES_DT_U8, 3);
    CHECK_EQ_INT(ES_DT_I32, 4);
    CHECK_EQ_INT(ES_DT_U32, 5);
    CHECK_EQ_INT(ES_DT_I64, 6);
    CHECK_EQ_INT(ES_DT_U64, 7);
    CHECK_EQ_INT(ES_DT_I4, 8);
}

TEST(format_dtype_bytes_and_names) {
    CHECK_EQ_INT(es__dtype_bytes(ES_DT_F32, 3), 12);
    CHECK_EQ_INT(es__dtype_bytes(ES_DT_F16, 3), 6);
    CHECK_EQ_INT(es__dtype_bytes(ES_DT_I8, 3), 3);
    CHECK_EQ_INT(es__dtype_bytes(ES_DT_U64, 3), 24);
    CHECK_EQ_INT(es__dtype_bytes(ES_DT_I4, 0), 0);
    CHECK_EQ_INT(es__dtype_bytes(ES_DT_I4, 1), 1);
    CHECK_EQ_INT(es__dtype_bytes(ES_DT_I4, 7), 4);
    CHECK_EQ_INT(es__dtype_bytes(ES_DT_I4, 8), 4);
    CHECK(es__dtype_bytes(ES_DT_I4, UINT64_MAX) == (size_t)(UINT64_MAX / 2 + 1));
    CHECK(es__dtype_bytes(ES_DT_F32, UINT64_MAX / 2) == SIZE_MAX); /* overflow */
    CHECK(es__dtype_bytes((es_dtype)ES_DT_COUNT_, 1) == SIZE_MAX);
    CHECK(strcmp(es__dtype_name(ES_DT_F32), "f32") == 0);
    CHECK(strcmp(es__dtype_name(ES_DT_I4), "i4") == 0);
    CHECK(strcmp(es__dtype_name((es_dtype)99), "unknown") == 0);
}

TEST(format_tensor_ref_set_checks_its_input) {
    float x[6];
    es_tensor_ref t;
    CHECK_EQ_INT(es__tensor_ref_set(&t, "w", ES_DT_F32, x, 2, (uint64_t)2, (uint64_t)3), ES_OK);
    CHECK(strcmp(t.name, "w") == 0 && t.ndim == 2 && t.shape[0] == 2 && t.shape[1] == 3 && t.shape[2] == 0 && t.nbytes == 24 && t.data == x);
    CHECK_EQ_INT(es__tensor_ref_set(&t, "s", ES_DT_F32, x, 0), ES_OK);
    CHECK_EQ_INT(t.nbytes, 4); /* a scalar is one element */
    char longname[100];
    memset(longname, 'a', 99);
    longname[99] = 0;
    CHECK_EQ_INT(es__tensor_ref_set(&t, longname, ES_DT_F32, x, 1, (uint64_t)6), ES_EINVAL);
    CHECK_EQ_INT(t.ndim, -1);
    CHECK_EQ_INT(strlen(t.name), ES_TENSOR_NAME_MAX - 1);
    CHECK_EQ_INT(es__tensor_ref_set(&t, "", ES_DT_F32, x, 1, (uint64_t)6), ES_EINVAL);
    CHECK_EQ_INT(es__tensor_ref_set(&t, "w", ES_DT_F32, x, 5), ES_EINVAL);
    CHECK_EQ_INT(es__tensor_ref_set(&t, "w", ES_DT_F32, x, 2, UINT64_MAX, (uint64_t)3), ES_EINVAL);
    CHECK_EQ_INT(es__tensor_ref_set(&t, "w", (es_dtype)42, x, 1, (uint64_t)1), ES_EINVAL);

    /* A writer refuses the invalid ref even if the caller ignored the code,
     * and the error sticks through commit. */
    const char *path = es_test_path("fmt_badref.es");
    remove(path);
    es_err err = {0};
    es_fwriter *w;
    CHECK_EQ_INT(es__fwriter_open(&w, path, &err), ES_OK);
    es__tensor_ref_set(&t, longname, ES_DT_F32, x, 1, (uint64_t)6);
    CHECK(es__fwriter_tensor(w, &t) < 0);
    CHECK_STR_HAS(es__fwriter_errmsg(w), "invalid descriptor");
    CHECK(es__fwriter_meta(w, "k", "v") < 0); /* sticky */
    CHECK(es__fwriter_commit(w, &err) < 0);
    CHECK_STR_HAS(err.msg, path);
    CHECK(access(path, F_OK) != 0);
}

TEST(format_writer_validates_descriptors) {
    const char *path = es_test_path("fmt_validate.es");
    float x[4] = {0};
    es_tensor_ref t;
    es_err err = {0};
    es_fwriter *w;
    struct {
        const char *what, *expect;
    } cases[] = {{"dup tensor", "given twice"}, {"dup meta", "given twice"}, {"empty key", "key is empty"},
                 {"bad utf8 key", "not valid UTF-8"}, {"nbytes", "does not match"}, {"null data", "data is NULL"},
                 {"bad utf8 value", "not valid UTF-8"}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        CHECK_EQ_INT(es__fwriter_open(&w, path, &err), ES_OK);
        int rc = 0;
        es__tensor_ref_set(&t, "w", ES_DT_F32, x, 1, (uint64_t)4);
        switch (c) {
        case 0: es__fwriter_tensor(w, &t); rc = es__fwriter_tensor(w, &t); break;
        case 1: es__fwriter_meta(w, "k", "1"); rc = es__fwriter_meta(w, "k", "2"); break;
        case 2: rc = es__fwriter_meta(w, "", "v"); break;
        case 3: rc = es__fwriter_meta(w, "\xff\xfe", "v"); break;
        case 4: t.nbytes = 12; rc = es__fwriter_tensor(w, &t); break;
        case 5: t.data = NULL; rc = es__fwriter_tensor(w, &t); break;
        case 6: rc = es__fwriter_meta(w, "k", "\xed\xa0\x80"); break; /* UTF-16 surrogate */
        }
        CHECK_MSG(rc < 0, "%s accepted", cases[c].what);
        CHECK_STR_HAS(es__fwriter_errmsg(w), cases[c].expect);
        es__fwriter_abort(w);
        CHECK_MSG(access(path, F_OK) != 0, "%s: output left behind", cases[c].what);
    }
    /* Many tensors and metadata entries: growth of the arrays and index. */
    CHECK_EQ_INT(es__fwriter_open(&w, path, &err), ES_OK);
    char name[32];
    for (int i = 0; i < 100; i++) {
        snprintf(name, sizeof name, "t%d", i);
        es__tensor_ref_set(&t, name, ES_DT_F32, x, 1, (uint64_t)(i % 5));
        CHECK_EQ_INT(es__fwriter_tensor(w, &t), ES_OK);
        CHECK_EQ_INT(es__fwriter_metaf(w, name, "%d", i * 3), ES_OK);
    }
    snprintf(name, sizeof name, "t%d", 57);
    es__tensor_ref_set(&t, name, ES_DT_F32, x, 1, (uint64_t)1);
    CHECK(es__fwriter_tensor(w, &t) < 0);
    es__fwriter_abort(w);
}

/* ---- round trip ----------------------------------------------------------------- */

TEST(format_round_trip_all_dtypes) {
    const char *path = es_test_path("fmt_roundtrip.es");
    enum { N = 1000 };
    static float f32[N];
    static uint16_t f16[N];
    static int8_t i8[N];
    static uint8_t u8[N], q4[(N + 1) / 2];
    static int32_t i32[N];
    static uint32_t u32[N];
    static int64_t i64[N];
    static uint64_t u64[N];
    for (int i = 0; i < N; i++) {
        f32[i] = (float)i * 0.5f - 3.f;
        f16[i] = (uint16_t)(i * 7);
        i8[i] = (int8_t)(i - 128);
        u8[i] = (uint8_t)(i * 3);
        q4[i / 2] = (uint8_t)(i * 13);
        i32[i] = -i * 1000;
        u32[i] = (uint32_t)i * 2654435761u;
        i64[i] = (int64_t)i << 33;
        u64[i] = ~(uint64_t)i;
    }
    struct {
        const char *name;
        es_dtype dt;
        void *data;
        int ndim;
        uint64_t s[4];
    } spec[] = {
        {"f32.matrix", ES_DT_F32, f32, 2, {25, 40}}, {"f16.vec", ES_DT_F16, f16, 1, {999}}, {"i8.cube", ES_DT_I8, i8, 3, {10, 10, 10}},
        {"u8.odd", ES_DT_U8, u8, 1, {13}},         {"i32.4d", ES_DT_I32, i32, 4, {2, 5, 10, 10}}, {"u32", ES_DT_U32, u32, 1, {1}},
        {"i64", ES_DT_I64, i64, 2, {1, 1000}},     {"u64", ES_DT_U64, u64, 1, {777}},           {"i4.odd", ES_DT_I4, q4, 1, {999}},
        {"zero", ES_DT_F32, f32, 2, {0, 7}},       {"scalar", ES_DT_I64, i64 + 5, 0, {0}},
    };
    int nt = (int)(sizeof spec / sizeof spec[0]);
    es_err err = {0};
    es_fwriter *w;
    CHECK_EQ_INT(es__fwriter_open(&w, path, &err), ES_OK);
    CHECK_EQ_INT(es__fwriter_meta(w, "model", "dlrm"), ES_OK);
    CHECK_EQ_INT(es__fwriter_meta(w, "unicode", "caf\xc3\xa9 \xf0\x9f\x98\x80"), ES_OK);
    CHECK_EQ_INT(es__fwriter_meta(w, "blank", ""), ES_OK);
    CHECK_EQ_INT(es__fwriter_metaf(w, "lr", "%.3f", 0.125), ES_OK);
    for (int k = 0; k < nt; k++) {
        es_tensor_ref t;
        CHECK_EQ_INT(es__tensor_ref_set(&t, spec[k].name, spec[k].dt, spec[k].data, spec[k].ndim, spec[k].s[0], spec[k].s[1], spec[k].s[2], spec[k].s[3]), ES_OK);
        CHECK_EQ_INT(es__fwriter_tensor(w, &t), ES_OK);
    }
    CHECK_EQ_INT(es__fwriter_commit(w, &err), ES_OK);

    es_file *f;
    int rc = es__file_open(&f, path, 0, &err);
    CHECK_MSG(rc == ES_OK, "open: %s", err.msg);
    CHECK_EQ_INT(es__file_version(f), 2);
    CHECK_EQ_INT(ES_FILE_VERSION, 2);
    CHECK_EQ_INT(es__file_size(f) % 64, 0);
    CHECK_EQ_INT(es__file_n_meta(f), 4);
    const char *k, *v;
    es__file_meta_at(f, 1, &k, &v);
    CHECK(strcmp(k, "unicode") == 0 && strcmp(v, "caf\xc3\xa9 \xf0\x9f\x98\x80") == 0);
    es__file_meta_at(f, 4, &k, &v);
    CHECK(k == NULL && v == NULL);
    CHECK(strcmp(es__file_meta(f, "model"), "dlrm") == 0);
    CHECK(strcmp(es__file_meta(f, "lr"), "0.125") == 0);
    CHECK(strcmp(es__file_meta(f, "blank"), "") == 0);
    CHECK(es__file_meta(f, "absent") == NULL);
    CHECK_EQ_INT(es__file_n_tensors(f), nt);
    CHECK(es__file_tensor_at(f, nt) == NULL && es__file_tensor_at(f, -1) == NULL);
    CHECK(es__file_tensor(f, "nope") == NULL);
    for (int i = 0; i < nt; i++) {
        const es_tensor_ref *t = es__file_tensor_at(f, i);
        CHECK(t && es__file_tensor(f, spec[i].name) == t);
        CHECK(strcmp(t->name, spec[i].name) == 0);
        CHECK_EQ_INT(t->dtype, spec[i].dt);
        CHECK_EQ_INT(t->ndim, spec[i].ndim);
        uint64_t count = 1;
        for (int d = 0; d < 4; d++) {
            CHECK_EQ_INT(t->shape[d], d < spec[i].ndim ? spec[i].s[d] : 0);
            if (d < spec[i].ndim) count *= spec[i].s[d];
        }
        CHECK_EQ_INT(t->nbytes, es__dtype_bytes(spec[i].dt, count));
        CHECK_MSG((uintptr_t)t->data % 64 == 0, "tensor %s not 64-byte aligned", t->name);
        CHECK_MSG(memcmp(t->data, spec[i].data, t->nbytes) == 0, "tensor %s data differs", t->name);
        CHECK_EQ_INT(es__file_verify_tensor(f, i, &err), ES_OK);
    }
    CHECK_EQ_INT(es__file_verify_tensor(f, nt, &err), ES_EINVAL);
    /* Spot-check a typed element through the view. */
    const float *m = es__file_tensor(f, "f32.matrix")->data;
    CHECK_NEAR(m[999], 999 * 0.5 - 3, 0);
    es__file_close(f);
    es__file_close(NULL);
}

TEST(format_empty_file_round_trip) {
    const char *path = es_test_path("fmt_empty.es");
    es_err err = {0};
    es_fwriter *w;
    CHECK_EQ_INT(es__fwriter_open(&w, path, &err), ES_OK);
    CHECK_EQ_INT(es__fwriter_commit(w, &err), ES_OK);
    es_file *f;
    CHECK_EQ_INT(es__file_open(&f, path, 0, &err), ES_OK);
    CHECK_EQ_INT(es__file_n_meta(f), 0);
    CHECK_EQ_INT(es__file_n_tensors(f), 0);
    CHECK_EQ_INT(es__file_size(f), 128);
    CHECK(es__file_meta(f, "x") == NULL && es__file_tensor(f, "x") == NULL);
    es__file_close(f);
}

/* ---- corruption ------------------------------------------------------------------ */

/* Flip every byte of b[0, len) with three masks (bytes inside [skip_lo,
 * skip_hi) only every `stride`-th, and the first and last of that range)
 * and require each flip to be refused with a message naming the input.
 * Returns 0 when all were refused; the counts by code are printed. */
static int flip_every_byte(uint8_t *b, size_t len, size_t skip_lo, size_t skip_hi, size_t stride, const char *what) {
    static const uint8_t masks[] = {0x01, 0x80, 0xff};
    int by_code[16] = {0};
    size_t tried = 0;
    es_err err = {0};
    es_file *f;
    for (size_t pos = 0; pos < len; pos++) {
        if (pos > skip_lo && pos + 1 < skip_hi && (pos - skip_lo) % stride) continue;
        tried++;
        for (size_t m = 0; m < sizeof masks; m++) {
            b[pos] ^= masks[m];
            err.msg[0] = 0;
            int rc = es__file_open_mem(&f, b, len, 0, &err);
            b[pos] ^= masks[m];
            if (rc == ES_OK) es__file_close(f);
            if (rc >= 0) {
                es_test_fail(__FILE__, __LINE__, "%s: flip 0x%02x at byte %zu of %zu not detected", what, masks[m], pos, len);
                return -1;
            }
            if (strstr(err.msg, "(memory)") != err.msg) {
                es_test_fail(__FILE__, __LINE__, "%s: byte %zu: message does not name the input: %s", what, pos, err.msg);
                return -1;
            }
            by_code[-rc < 16 ? -rc : 0]++;
        }
    }
    printf("    %s: %zu of %zu bytes x 3 flips: format %d, checksum %d, version %d\n", what, tried, len, by_code[-ES_EFORMAT],
           by_code[-ES_ECHECKSUM], by_code[-ES_EVERSION]);
    return 0;
}

TEST(format_every_flipped_byte_is_detected) {
    /* The fixture has metadata padding, table padding, a zero-size tensor
     * and tensor tails of 60, 54, 58, ... zero bytes: every kind of byte. */
    const char *path = es_test_path("fmt_flip.es");
    es_err err = {0};
    CHECK_EQ_INT(write_fixture_copy(path, &err), ES_OK);
    size_t len;
    uint8_t *b = load_aligned(path, &len);
    CHECK(b);
    es_file *f;
    CHECK_EQ_INT(es__file_open_mem(&f, b, len, 0, &err), ES_OK);
    es__file_close(f);
    CHECK(flip_every_byte(b, len, 0, 0, 1, "today's writer") == 0);
    /* The same through the file API for a flip in the data area. */
    b[len - 64] ^= 0x10;
    CHECK_EQ_INT(write_bytes(path, b, len), 0);
    CHECK_EQ_INT(es__file_open(&f, path, 0, &err), ES_ECHECKSUM);
    CHECK_STR_HAS(err.msg, path);
    CHECK_STR_HAS(err.msg, "'scalar'");
    free(b);

    /* The committed version-1 file, read by the version-1 rule. */
    if (host_little_endian()) {
        b = load_aligned(FIX_V1_PATH, &len);
        CHECK(b);
        CHECK(flip_every_byte(b, len, 0, 0, 1, "v1_small.es") == 0);
        free(b);
    }
}

TEST(format_every_flipped_byte_is_detected_v2) {
    /* The version-2 fixture: every byte of the header, metadata, table, the
     * 2112 zero bytes before the page-aligned tensor and everything after
     * it; inside that 64 KiB tensor every 61st byte (and its first and
     * last), which its checksum covers like any other. */
    if (!host_little_endian()) {
        es_test_skip("the fixture was written on a little-endian machine");
        return;
    }
    size_t len;
    uint8_t *b = load_aligned(FIX_V2_PATH, &len);
    CHECK(b);
    es_err err = {0};
    es_file *f;
    CHECK_MSG(es__file_open_mem(&f, b, len, 0, &err) == ES_OK, "%s", err.msg);
    size_t lo = (size_t)es__file_tensor_offset(f, FIX_V2_BIG);
    size_t hi = lo + es__file_tensor_at(f, FIX_V2_BIG)->nbytes;
    es__file_close(f);
    CHECK_EQ_INT(lo, 4096);
    CHECK(flip_every_byte(b, len, lo, hi, 61, "v2_small.es") == 0);
    free(b);
}

TEST(format_truncation_is_refused) {
    const char *path = es_test_path("fmt_trunc.es");
    es_err err = {0};
    CHECK_EQ_INT(write_fixture_copy(path, &err), ES_OK);
    size_t len;
    uint8_t *b = load_aligned(path, &len);
    CHECK(b);
    es_file *f;
    for (size_t n = 0; n < len; n++) {
        int rc = es__file_open_mem(&f, b, n, 0, &err);
        if (rc == ES_OK) es__file_close(f);
        CHECK_MSG(rc == ES_EFORMAT, "length %zu: rc %d (%s)", n, rc, err.msg);
        CHECK_MSG(strstr(err.msg, n ? "truncated" : "empty"), "length %zu: %s", n, err.msg);
    }
    /* A real file cut inside the data area: the message gives both sizes. */
    CHECK_EQ_INT(truncate(path, (off_t)len - 100), 0);
    CHECK_EQ_INT(es__file_open(&f, path, 0, &err), ES_EFORMAT);
    char want[128];
    snprintf(want, sizeof want, "truncated: header says %zu bytes, file has %zu", len, len - 100);
    CHECK_STR_HAS(err.msg, want);
    CHECK_STR_HAS(err.msg, path);
    /* Extra bytes after the end are refused too. */
    uint8_t *big = aligned_alloc(64, len + 64);
    CHECK(big);
    memcpy(big, b, len);
    memset(big + len, 0, 64);
    CHECK_EQ_INT(es__file_open_mem(&f, big, len + 1, 0, &err), ES_EFORMAT);
    CHECK_STR_HAS(err.msg, "trailing bytes");
    free(big);
    free(b);
}

TEST(format_newer_version_is_refused) {
    const char *path = es_test_path("fmt_version.es");
    es_err err = {0};
    CHECK_EQ_INT(write_fixture_copy(path, &err), ES_OK);
    size_t len;
    uint8_t *b = load_aligned(path, &len);
    CHECK(b);
    put32(b + OFF_VERSION, 3);
    es__file_fix_checksum(b, len); /* a well-formed file of a newer version */
    CHECK_EQ_INT(write_bytes(path, b, len), 0);
    es_file *f;
    CHECK_EQ_INT(es__file_open(&f, path, 0, &err), ES_EVERSION);
    CHECK_STR_HAS(err.msg, path);
    CHECK_STR_HAS(err.msg, "format version 3 is newer than this embstore (max 2)");
    /* Without tensors of 64 KiB or more both versions lay a file out alike,
     * so the same image is a valid file of either. */
    for (uint32_t v = 1; v <= 2; v++) {
        put32(b + OFF_VERSION, v);
        es__file_fix_checksum(b, len);
        CHECK_EQ_INT(es__file_open_mem(&f, b, len, 0, &err), ES_OK);
        CHECK_EQ_INT(es__file_version(f), v);
        es__file_close(f);
    }
    put32(b + OFF_VERSION, 0);
    es__file_fix_checksum(b, len);
    CHECK_EQ_INT(es__file_open_mem(&f, b, len, 0, &err), ES_EFORMAT);
    CHECK_STR_HAS(err.msg, "version 0");
    free(b);
}

TEST(format_wrong_endianness_is_refused) {
    const char *path = es_test_path("fmt_endian.es");
    es_err err = {0};
    CHECK_EQ_INT(write_fixture_copy(path, &err), ES_OK);
    size_t len;
    uint8_t *b = load_aligned(path, &len);
    CHECK(b);
    /* What a machine of the other byte order writes: every integer field
     * reversed.  The reader must stop at the mark, before trusting any. */
    put64(b + OFF_CHECKSUM, __builtin_bswap64(get64(b + OFF_CHECKSUM)));
    for (size_t off = OFF_VERSION; off < OFF_META_OFF; off += 4) put32(b + off, __builtin_bswap32(get32(b + off)));
    for (size_t off = OFF_META_OFF; off < OFF_RESERVED; off += 8) put64(b + off, __builtin_bswap64(get64(b + off)));
    CHECK_EQ_INT(write_bytes(path, b, len), 0);
    es_file *f;
    CHECK_EQ_INT(es__file_open(&f, path, 0, &err), ES_EFORMAT);
    CHECK_STR_HAS(err.msg, path);
    CHECK_STR_HAS(err.msg, "wrong endianness");
    /* Not the swapped mark, just garbage. */
    put32(b + OFF_ENDIAN, 0x01020305);
    CHECK_EQ_INT(es__file_open_mem(&f, b, len, 0, &err), ES_EFORMAT);
    CHECK_STR_HAS(err.msg, "bad endianness mark");
    free(b);
}

TEST(format_no_verify_defers_tensor_checksums) {
    const char *path = es_test_path("fmt_lazy.es");
    es_err err = {0};
    CHECK_EQ_INT(write_fixture_copy(path, &err), ES_OK);
    size_t len;
    uint8_t *b = load_aligned(path, &len);
    CHECK(b);
    es_file *f;
    CHECK_EQ_INT(es__file_open_mem(&f, b, len, 0, &err), ES_OK);
    const es_tensor_ref *t = es__file_tensor(f, "i32");
    size_t at = (size_t)((const uint8_t *)t->data - b) + 5;
    es__file_close(f);
    b[at] ^= 0x04;
    CHECK_EQ_INT(write_bytes(path, b, len), 0);
    CHECK_EQ_INT(es__file_open(&f, path, 0, &err), ES_ECHECKSUM);
    CHECK_STR_HAS(err.msg, "tensor 'i32' checksum mismatch");
    CHECK_STR_HAS(err.msg, path);
    CHECK_EQ_INT(es__file_open(&f, path, ES_FILE_NO_VERIFY, &err), ES_OK);
    int bad = -1;
    for (int i = 0; i < es__file_n_tensors(f); i++) {
        int rc = es__file_verify_tensor(f, i, &err);
        if (rc) {
            CHECK_EQ_INT(rc, ES_ECHECKSUM);
            CHECK_MSG(bad < 0, "two tensors fail verification");
            bad = i;
            CHECK_STR_HAS(err.msg, "tensor 'i32'");
            CHECK_STR_HAS(err.msg, path);
        }
    }
    CHECK_EQ_INT(bad, 4);
    es__file_close(f);
    /* Padding is still checked under NO_VERIFY (it is cheap). */
    b[at] ^= 0x04;
    b[len - 1] = 1;
    CHECK_EQ_INT(es__file_open_mem(&f, b, len, ES_FILE_NO_VERIFY, &err), ES_ECHECKSUM);
    CHECK_STR_HAS(err.msg, "padding after tensor 'scalar'");
    free(b);
}

/* Apply `edit` to a fresh copy of the fixture image, fix the header
 * checksum, and expect a refusal with `want` in the message. */
typedef void (*edit_fn)(uint8_t *b, size_t len);

static int expect_refusal(const uint8_t *orig, size_t len, edit_fn edit, int code, const char *want, char *msg, size_t msgsz) {
    uint8_t *b = aligned_alloc(64, (len + 63) & ~(size_t)63);
    if (!b) return 0;
    memcpy(b, orig, len);
    edit(b, len);
    es__file_fix_checksum(b, len);
    es_err err = {0};
    es_file *f;
    int rc = es__file_open_mem(&f, b, len, 0, &err);
    if (rc == ES_OK) es__file_close(f);
    free(b);
    snprintf(msg, msgsz, "rc %d, message: %s", rc, err.msg);
    return rc == code && strstr(err.msg, want) && strstr(err.msg, "(memory)") == err.msg;
}

static uint8_t *entry(uint8_t *b, int i) { return b + get64(b + OFF_TABLE_OFF) + (size_t)i * ENTRY; }
static void ed_dtype(uint8_t *b, size_t n) { put32(entry(b, 0) + ENT_DTYPE, 77); }
static void ed_ndim(uint8_t *b, size_t n) { put32(entry(b, 0) + ENT_NDIM, 5); }
static void ed_unused_dim(uint8_t *b, size_t n) { put64(entry(b, 0) + ENT_SHAPE + 24, 1); }
static void ed_shape(uint8_t *b, size_t n) { put64(entry(b, 0) + ENT_SHAPE, 4); }
static void ed_shape_overflow(uint8_t *b, size_t n) {
    put64(entry(b, 0) + ENT_SHAPE, UINT64_MAX / 2);
    put64(entry(b, 0) + ENT_SHAPE + 8, 3);
}
static void ed_overlap(uint8_t *b, size_t n) { put64(entry(b, 1) + ENT_OFFSET, get64(entry(b, 0) + ENT_OFFSET)); }
static void ed_gap(uint8_t *b, size_t n) { put64(entry(b, 1) + ENT_OFFSET, get64(entry(b, 1) + ENT_OFFSET) + 64); }
static void ed_unaligned(uint8_t *b, size_t n) { put64(entry(b, 1) + ENT_OFFSET, get64(entry(b, 1) + ENT_OFFSET) + 8); }
static void ed_out_of_range(uint8_t *b, size_t n) { put64(entry(b, 10) + ENT_OFFSET, UINT64_MAX - 63); }
static void ed_before_data(uint8_t *b, size_t n) { put64(entry(b, 0) + ENT_OFFSET, 0); }
static void ed_nbytes(uint8_t *b, size_t n) { put64(entry(b, 0) + ENT_NBYTES, 44); }
static void ed_dup_name(uint8_t *b, size_t n) { memcpy(entry(b, 3), "i8", 3); } /* "u8" -> "i8" */
static void ed_name_unterminated(uint8_t *b, size_t n) { memset(entry(b, 2), 'x', 64); }
static void ed_name_empty(uint8_t *b, size_t n) { memset(entry(b, 2), 0, 64); }
static void ed_name_junk(uint8_t *b, size_t n) { entry(b, 2)[40] = 'j'; }
static void ed_name_utf8(uint8_t *b, size_t n) { entry(b, 2)[0] = 0xC0; }
/* Metadata: first entry "embstore.kind" (klen 13) at 128, its value at
 * 128 + 4 + 14; second key "note" at 128 + 4 + 14 + 4 + 8. */
static void ed_meta_unterminated(uint8_t *b, size_t n) { b[HEADER + 4 + 13] = 'x'; }
static void ed_meta_nul_inside(uint8_t *b, size_t n) { b[HEADER + 4 + 3] = 0; }
static void ed_meta_len(uint8_t *b, size_t n) { put32(b + HEADER, 0x7fffffff); }
static void ed_meta_utf8(uint8_t *b, size_t n) { b[HEADER + 4] = 0xff; }
static void ed_meta_empty_key(uint8_t *b, size_t n) {
    put32(b + HEADER, 0);
    b[HEADER + 4] = 0;
}
static void ed_n_meta_big(uint8_t *b, size_t n) { put32(b + OFF_N_META, 5); }
static void ed_n_meta_small(uint8_t *b, size_t n) { put32(b + OFF_N_META, 3); }
static void ed_n_meta_huge(uint8_t *b, size_t n) { put32(b + OFF_N_META, 0xffffffff); }
static void ed_n_tensors(uint8_t *b, size_t n) { put32(b + OFF_N_TENSORS, 10); }
static void ed_reserved(uint8_t *b, size_t n) { b[OFF_RESERVED + 5] = 1; }
static void ed_table_off(uint8_t *b, size_t n) { put64(b + OFF_TABLE_OFF, get64(b + OFF_TABLE_OFF) + 8); }
static void ed_data_off_inside_header(uint8_t *b, size_t n) { put64(b + OFF_DATA_OFF, 64); }
static void ed_file_size(uint8_t *b, size_t n) { put64(b + OFF_FILE_SIZE, n - 64); }

TEST(format_malformed_tables_are_refused) {
    const char *path = es_test_path("fmt_malformed.es");
    es_err err = {0};
    CHECK_EQ_INT(write_fixture_copy(path, &err), ES_OK);
    size_t len;
    uint8_t *b = load_aligned(path, &len);
    CHECK(b);
    struct {
        const char *what;
        edit_fn edit;
        int code;
        const char *want;
    } cases[] = {
        {"unknown dtype", ed_dtype, ES_EFORMAT, "tensor 'emb.weight': unknown dtype 77"},
        {"ndim 5", ed_ndim, ES_EFORMAT, "5 dimensions"},
        {"unused dim", ed_unused_dim, ES_EFORMAT, "unused dimension 3"},
        {"shape vs nbytes", ed_shape, ES_EFORMAT, "need 64 bytes, table says 48"},
        {"shape overflow", ed_shape_overflow, ES_EFORMAT, "overflows"},
        {"nbytes", ed_nbytes, ES_EFORMAT, "table says 44"},
        {"overlap", ed_overlap, ES_EFORMAT, "tensor 'half' overlaps tensor 'emb.weight'"},
        {"gap", ed_gap, ES_EFORMAT, "unexpected gap"},
        {"unaligned", ed_unaligned, ES_EFORMAT, "not 64-byte aligned"},
        {"out of range", ed_out_of_range, ES_EFORMAT, "outside the file"},
        {"before data", ed_before_data, ES_EFORMAT, "before the data area"},
        {"duplicate tensor", ed_dup_name, ES_EFORMAT, "duplicate tensor name 'i8'"},
        {"unterminated name", ed_name_unterminated, ES_EFORMAT, "tensor 2: name is not NUL-terminated"},
        {"empty name", ed_name_empty, ES_EFORMAT, "name is empty"},
        {"junk after name", ed_name_junk, ES_EFORMAT, "bytes after the name"},
        {"name utf8", ed_name_utf8, ES_EFORMAT, "not valid UTF-8"},
        {"meta unterminated", ed_meta_unterminated, ES_EFORMAT, "metadata entry 0: key is not NUL-terminated"},
        {"meta inner nul", ed_meta_nul_inside, ES_EFORMAT, "contains a NUL"},
        {"meta length", ed_meta_len, ES_EFORMAT, "runs past the metadata block"},
        {"meta utf8", ed_meta_utf8, ES_EFORMAT, "not valid UTF-8"},
        {"meta empty key", ed_meta_empty_key, ES_EFORMAT, "key is empty"},
        {"n_meta too big", ed_n_meta_big, ES_EFORMAT, "metadata entry 4"},
        {"n_meta too small", ed_n_meta_small, ES_EFORMAT, "after its last entry"},
        {"n_meta huge", ed_n_meta_huge, ES_EFORMAT, "exceed the limit"},
        {"n_tensors", ed_n_tensors, ES_EFORMAT, "tensor table"},
        {"reserved", ed_reserved, ES_EFORMAT, "reserved header bytes"},
        {"table offset", ed_table_off, ES_EFORMAT, "tensor table offset"},
        {"data offset", ed_data_off_inside_header, ES_EFORMAT, "inside the header"},
        {"file size", ed_file_size, ES_EFORMAT, "trailing bytes"},
    };
    char msg[600];
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++)
        CHECK_MSG(expect_refusal(b, len, cases[c].edit, cases[c].code, cases[c].want, msg, sizeof msg), "%s: want \"%s\", got %s", cases[c].what,
                  cases[c].want, msg);
    free(b);

    /* Duplicate metadata keys: write "ab" and "cd", then rename "cd". */
    es_fwriter *w;
    CHECK_EQ_INT(es__fwriter_open(&w, path, &err), ES_OK);
    es__fwriter_meta(w, "ab", "1");
    es__fwriter_meta(w, "cd", "2");
    CHECK_EQ_INT(es__fwriter_commit(w, &err), ES_OK);
    b = load_aligned(path, &len);
    CHECK(b);
    CHECK(memcmp(b + HEADER + 4 + 3 + 4 + 2 + 4, "cd", 2) == 0); /* entry 0 takes 4+3+4+2 bytes */
    memcpy(b + HEADER + 4 + 3 + 4 + 2 + 4, "ab", 2);
    es__file_fix_checksum(b, len);
    es_file *f;
    CHECK_EQ_INT(es__file_open_mem(&f, b, len, 0, &err), ES_EFORMAT);
    CHECK_STR_HAS(err.msg, "duplicate metadata key 'ab'");

    /* A data area longer than its tensors: 64 zero bytes appended and the
     * sizes in the header raised to match. */
    memcpy(b + HEADER + 4 + 3 + 4 + 2 + 4, "cd", 2);
    uint8_t *big = aligned_alloc(64, len + 64);
    CHECK(big);
    memcpy(big, b, len);
    memset(big + len, 0, 64);
    put64(big + OFF_FILE_SIZE, len + 64);
    put64(big + OFF_DATA_BYTES, get64(big + OFF_DATA_BYTES) + 64);
    es__file_fix_checksum(big, len + 64);
    CHECK_EQ_INT(es__file_open_mem(&f, big, len + 64, 0, &err), ES_EFORMAT);
    CHECK_STR_HAS(err.msg, "64 bytes at the end of the data area belong to no tensor");
    free(big);
    free(b);
}

TEST(format_open_errors_name_the_input) {
    es_err err = {0};
    es_file *f = (es_file *)1;
    const char *missing = es_test_path("fmt_does_not_exist.es");
    CHECK_EQ_INT(es__file_open(&f, missing, 0, &err), ES_EIO);
    CHECK(f == NULL);
    CHECK_STR_HAS(err.msg, missing);
    CHECK_STR_HAS(err.msg, "cannot open");
    const char *dir = es_test_path("");
    CHECK(es__file_open(&f, dir, 0, &err) < 0);
    const char *empty = es_test_path("fmt_zero.es");
    CHECK_EQ_INT(write_bytes(empty, "", 0), 0);
    CHECK_EQ_INT(es__file_open(&f, empty, 0, &err), ES_EFORMAT);
    CHECK_STR_HAS(err.msg, "not an embstore file (empty)");
    const char *text = es_test_path("fmt_text.es");
    const char *junk = "label,a,b\n1,2,3\n this is a csv file, not an embstore file at all .......................\n";
    CHECK_EQ_INT(write_bytes(text, junk, strlen(junk)), 0);
    CHECK_EQ_INT(es__file_open(&f, text, 0, &err), ES_EFORMAT);
    CHECK_STR_HAS(err.msg, text);
    CHECK_STR_HAS(err.msg, "not an embstore file");
    static _Alignas(64) uint8_t buf[256];
    CHECK_EQ_INT(es__file_open_mem(&f, buf + 8, 128, 0, &err), ES_EINVAL);
    CHECK_STR_HAS(err.msg, "aligned");
    CHECK_EQ_INT(es__file_open_mem(&f, NULL, 0, 0, &err), ES_EFORMAT);
}

/* ---- atomic writes ------------------------------------------------------------- */

TEST(format_unwritable_path_leaves_nothing) {
    const char *path = es_test_path("fmt_no_such_dir/out.es");
    es_err err = {0};
    es_fwriter *w = (es_fwriter *)1;
    CHECK_EQ_INT(es__fwriter_open(&w, path, &err), ES_EIO);
    CHECK(w == NULL);
    CHECK_STR_HAS(err.msg, path);
    CHECK(access(path, F_OK) != 0);

    /* The rename fails (destination is a directory): no temporary is left
     * and the directory is untouched. */
    const char *dirdest = es_test_path("fmt_dir_dest");
    mkdir(dirdest, 0755);
    CHECK_EQ_INT(es__fwriter_open(&w, dirdest, &err), ES_OK);
    CHECK_EQ_INT(es__fwriter_meta(w, "k", "v"), ES_OK);
    CHECK(es__fwriter_commit(w, &err) < 0);
    CHECK_STR_HAS(err.msg, dirdest);
    struct stat st;
    CHECK(stat(dirdest, &st) == 0 && S_ISDIR(st.st_mode));
    const char *tmpdir = es_test_path("");
    CHECK_EQ_INT(count_prefixed(tmpdir, "fmt_dir_dest.tmp."), 0);

    /* A failed commit over an existing file leaves that file intact. */
    const char *keep = es_test_path("fmt_keep.es");
    CHECK_EQ_INT(write_fixture_copy(keep, &err), ES_OK);
    char *before = es_test_slurp(keep);
    CHECK(before);
    CHECK_EQ_INT(es__fwriter_open(&w, keep, &err), ES_OK);
    CHECK(es__fwriter_meta(w, "", "empty key") < 0);
    CHECK(es__fwriter_commit(w, &err) < 0);
    CHECK_STR_HAS(err.msg, "key is empty");
    size_t n;
    uint8_t *after = load_aligned(keep, &n);
    CHECK(after && n == 2304 && memcmp(before, after, n) == 0);
    free(before);
    free(after);
    CHECK_EQ_INT(count_prefixed(tmpdir, "fmt_keep.es.tmp."), 0);

    /* Abort leaves nothing either. */
    const char *ab = es_test_path("fmt_aborted.es");
    remove(ab);
    CHECK_EQ_INT(es__fwriter_open(&w, ab, &err), ES_OK);
    es__fwriter_abort(w);
    es__fwriter_abort(NULL);
    CHECK(access(ab, F_OK) != 0);
    CHECK_EQ_INT(count_prefixed(tmpdir, "fmt_aborted.es.tmp."), 0);
}

/* ---- the committed fixture ------------------------------------------------------- */

TEST(format_fixture_v1_loads) {
    es_err err = {0};
    es_file *f;
    int rc = es__file_open(&f, FIX_V1_PATH, 0, &err);
    if (!host_little_endian()) {
        /* The fixture was written on a little-endian machine. */
        CHECK_EQ_INT(rc, ES_EFORMAT);
        CHECK_STR_HAS(err.msg, "wrong endianness");
        return;
    }
    CHECK_MSG(rc == ES_OK, "%s", err.msg);
    CHECK_EQ_INT(es__file_version(f), 1);
    CHECK_EQ_INT(es__file_size(f), 2304);
    CHECK_EQ_INT(es__file_n_meta(f), FIX_V1_N_META);
    for (int i = 0; i < FIX_V1_N_META; i++) {
        const char *k, *v;
        es__file_meta_at(f, i, &k, &v);
        CHECK(strcmp(k, fix_v1_meta[i][0]) == 0 && strcmp(v, fix_v1_meta[i][1]) == 0);
    }
    CHECK(strcmp(es__file_meta(f, "note"), "h\xc3\xa9llo w\xc3\xb6rld \xe2\x9c\x93") == 0);
    CHECK_EQ_INT(es__file_n_tensors(f), FIX_V1_N_TENSORS);
    static const es_dtype want_dt[FIX_V1_N_TENSORS] = {ES_DT_F32, ES_DT_F16, ES_DT_I8, ES_DT_U8, ES_DT_I32, ES_DT_U32,
                                                       ES_DT_I64, ES_DT_U64, ES_DT_I4, ES_DT_F32, ES_DT_F32};
    for (int k = 0; k < FIX_V1_N_TENSORS; k++) {
        const es_tensor_ref *t = es__file_tensor_at(f, k);
        const fix_v1_tensor *d = &fix_v1_tensors[k];
        CHECK(strcmp(t->name, d->name) == 0);
        CHECK_EQ_INT(t->dtype, want_dt[k]);
        CHECK_EQ_INT(t->ndim, d->ndim);
        for (int j = 0; j < 4; j++) CHECK_EQ_INT(t->shape[j], d->shape[j]);
    }
    const es_tensor_ref *t;
    t = es__file_tensor(f, "emb.weight");
    CHECK_EQ_INT(t->nbytes, 48);
    for (int i = 0; i < 12; i++) CHECK_NEAR(((const float *)t->data)[i], fix_v1_f32(i), 0);
    t = es__file_tensor(f, "half");
    for (int i = 0; i < 5; i++) CHECK_EQ_INT(((const uint16_t *)t->data)[i], fix_v1_f16(i));
    t = es__file_tensor(f, "i8");
    for (int i = 0; i < 6; i++) CHECK_EQ_INT(((const int8_t *)t->data)[i], fix_v1_i8(i));
    t = es__file_tensor(f, "u8");
    for (int i = 0; i < 7; i++) CHECK_EQ_INT(((const uint8_t *)t->data)[i], fix_v1_u8(i));
    t = es__file_tensor(f, "i32");
    for (int i = 0; i < 8; i++) CHECK_EQ_INT(((const int32_t *)t->data)[i], fix_v1_i32(i));
    t = es__file_tensor(f, "u32");
    for (int i = 0; i < 3; i++) CHECK_EQ_INT(((const uint32_t *)t->data)[i], fix_v1_u32(i));
    t = es__file_tensor(f, "i64");
    for (int i = 0; i < 2; i++) CHECK_EQ_INT(((const int64_t *)t->data)[i], fix_v1_i64(i));
    t = es__file_tensor(f, "u64");
    for (int i = 0; i < 2; i++) CHECK(((const uint64_t *)t->data)[i] == fix_v1_u64(i));
    t = es__file_tensor(f, "q4");
    CHECK_EQ_INT(t->nbytes, 4);
    for (int i = 0; i < 7; i++) CHECK_EQ_INT((((const uint8_t *)t->data)[i / 2] >> (4 * (i & 1))) & 15, i); /* low nibble first */
    t = es__file_tensor(f, "empty");
    CHECK_EQ_INT(t->nbytes, 0);
    t = es__file_tensor(f, "scalar");
    CHECK_EQ_INT(t->nbytes, 4);
    CHECK_NEAR(*(const float *)t->data, FIX_V1_SCALAR, 0);
    es__file_close(f);

    /* Its content has no tensor of 64 KiB, so today's (version-2) writer
     * lays it out identically: the bytes differ only in the version field
     * and the header checksum over it. */
    const char *path = es_test_path("fmt_fixture_again.es");
    CHECK_EQ_INT(write_fixture_copy(path, &err), ES_OK);
    size_t n1, n2;
    uint8_t *a = load_aligned(FIX_V1_PATH, &n1), *b = load_aligned(path, &n2);
    CHECK(a && b);
    CHECK_EQ_INT(n1, n2);
    CHECK_EQ_INT(get32(a + OFF_VERSION), 1);
    CHECK_EQ_INT(get32(b + OFF_VERSION), 2);
    for (size_t i = 0; i < n1; i++)
        CHECK_MSG(a[i] == b[i] || (i >= OFF_CHECKSUM && i < OFF_VERSION + 4), "v1 content written today differs from v1_small.es at byte %zu", i);
    free(a);
    free(b);
}

TEST(format_fixture_v2_loads) {
    es_err err = {0};
    es_file *f;
    int rc = es__file_open(&f, FIX_V2_PATH, 0, &err);
    if (!host_little_endian()) {
        CHECK_EQ_INT(rc, ES_EFORMAT);
        CHECK_STR_HAS(err.msg, "wrong endianness");
        return;
    }
    CHECK_MSG(rc == ES_OK, "%s", err.msg);
    CHECK_EQ_INT(es__file_version(f), 2);
    CHECK_EQ_INT(es__file_size(f), 70080);
    CHECK(es__file_fd(f) >= 0);
    CHECK_EQ_INT(es__file_n_meta(f), FIX_V2_N_META);
    for (int i = 0; i < FIX_V2_N_META; i++) {
        const char *k, *v;
        es__file_meta_at(f, i, &k, &v);
        CHECK(strcmp(k, fix_v1_meta[i][0]) == 0 && strcmp(v, fix_v1_meta[i][1]) == 0);
    }
    CHECK_EQ_INT(es__file_n_tensors(f), FIX_V2_N_TENSORS);
    /* Every tensor's bytes against a fresh fill, and the layout rule: the
     * 64 KiB tensor at the next multiple of 4096 after i8's padding (the
     * gap zero), every other one right after its predecessor's padding. */
    static _Alignas(64) uint8_t want[FIX_V2_BIG_BYTES];
    /* The mapping starts at file offset 0, so tensor 0's view minus its
     * offset is the header (this also checks offsets against views). */
    const uint8_t *base = (const uint8_t *)es__file_tensor_at(f, 0)->data - es__file_tensor_offset(f, 0);
    CHECK(memcmp(base, "EMBSTOR", 8) == 0);
    uint64_t end = get64(base + OFF_DATA_OFF);
    for (int k = 0; k < FIX_V2_N_TENSORS; k++) {
        const es_tensor_ref *t = es__file_tensor_at(f, k);
        const fix_v1_tensor *d = fix_v2_tensor(k);
        CHECK(strcmp(t->name, d->name) == 0);
        CHECK_EQ_INT(t->dtype, d->dtype);
        CHECK_EQ_INT(t->ndim, d->ndim);
        for (int j = 0; j < 4; j++) CHECK_EQ_INT(t->shape[j], d->shape[j]);
        size_t n = fix_v2_fill(k, want);
        CHECK_EQ_INT(t->nbytes, n);
        CHECK_MSG(memcmp(t->data, want, n) == 0, "tensor %s differs", t->name);
        CHECK(!n || (const uint8_t *)t->data == base + es__file_tensor_offset(f, k));
        uint64_t off = es__file_tensor_offset(f, k), expect = (end + 63) & ~(uint64_t)63;
        if (t->nbytes >= PAGE_MIN) expect = (expect + PAGE - 1) & ~(uint64_t)(PAGE - 1);
        CHECK_MSG(off == expect, "tensor %s at %llu, expected %llu", t->name, (unsigned long long)off, (unsigned long long)expect);
        end = off + ((t->nbytes + 63) & ~(size_t)63);
    }
    CHECK_EQ_INT(end, es__file_size(f));
    CHECK_EQ_INT(es__file_tensor_offset(f, FIX_V2_BIG), 4096);
    const float *big = es__file_tensor(f, "big")->data;
    CHECK_NEAR(big[FIX_V2_BIG_ROWS * FIX_V2_BIG_COLS - 1], fix_v2_big(FIX_V2_BIG_ROWS * FIX_V2_BIG_COLS - 1), 0);
    CHECK_EQ_INT((uintptr_t)big % PAGE, 0); /* a page-aligned offset in a mapping is page-aligned in memory */
    CHECK(es__file_tensor_offset(f, -1) == UINT64_MAX && es__file_tensor_offset(f, FIX_V2_N_TENSORS) == UINT64_MAX);
    es__file_close(f);

    /* Today's writer produces exactly these bytes: version 2 has not
     * drifted (a layout change needs a version bump and a new fixture). */
    const char *path = es_test_path("fmt_fixture_v2_again.es");
    CHECK_EQ_INT(write_fixture_v2_copy(path, &err), ES_OK);
    size_t n1, n2;
    uint8_t *a = load_aligned(FIX_V2_PATH, &n1), *b = load_aligned(path, &n2);
    CHECK(a && b);
    CHECK_EQ_INT(n1, n2);
    size_t diff = 0;
    while (diff < n1 && a[diff] == b[diff]) diff++;
    CHECK_MSG(diff == n1, "writer output differs from v2_small.es at byte %zu", diff);
    free(a);
    free(b);
}

/* ---- version 2: page-aligned large tensors ------------------------------------- */

TEST(format_v2_page_rule_round_trip) {
    /* Sizes around the threshold, in an order that needs padding before
     * each large tensor, a zero-size tensor between two large ones, and a
     * large tensor last (the file ends at its 64-byte padding). */
    const char *path = es_test_path("fmt_pages.es");
    static _Alignas(64) uint8_t data[3 * 65536 + 64];
    for (size_t i = 0; i < sizeof data; i++) data[i] = (uint8_t)(i * 131 + (i >> 9));
    static const uint64_t sizes[] = {100, 65535, 1, 65536, 0, 65537, 7, 3 * 65536 + 1, 64, 131072};
    enum { NT = sizeof sizes / sizeof sizes[0] };
    es_err err = {0};
    es_fwriter *w;
    CHECK_EQ_INT(es__fwriter_open(&w, path, &err), ES_OK);
    char name[32];
    for (int k = 0; k < NT; k++) {
        es_tensor_ref t;
        snprintf(name, sizeof name, "t%d", k);
        /* i8 data, offset by k so neighbouring tensors differ */
        CHECK_EQ_INT(es__tensor_ref_set(&t, name, ES_DT_I8, data + k, 1, sizes[k]), ES_OK);
        CHECK_EQ_INT(es__fwriter_tensor(w, &t), ES_OK);
    }
    CHECK_EQ_INT(es__fwriter_commit(w, &err), ES_OK);
    es_file *f;
    CHECK_MSG(es__file_open(&f, path, 0, &err) == ES_OK, "%s", err.msg);
    CHECK(es__file_fd(f) >= 0);
    const uint8_t *base = (const uint8_t *)es__file_tensor_at(f, 0)->data - es__file_tensor_offset(f, 0); /* file offset 0 */
    uint64_t end = get64(base + OFF_DATA_OFF);
    int paged = 0;
    for (int k = 0; k < NT; k++) {
        const es_tensor_ref *t = es__file_tensor_at(f, k);
        uint64_t off = es__file_tensor_offset(f, k), expect = (end + 63) & ~(uint64_t)63;
        if (sizes[k] >= PAGE_MIN) {
            expect = (expect + PAGE - 1) & ~(uint64_t)(PAGE - 1);
            paged++;
        }
        CHECK_MSG(off == expect, "t%d (%llu bytes) at %llu, expected %llu", k, (unsigned long long)sizes[k], (unsigned long long)off,
                  (unsigned long long)expect);
        CHECK_EQ_INT(t->nbytes, sizes[k]);
        CHECK_MSG(memcmp(t->data, data + k, t->nbytes) == 0, "t%d data differs", k);
        end = off + ((sizes[k] + 63) & ~(uint64_t)63);
    }
    CHECK_EQ_INT(paged, 4);
    CHECK_EQ_INT(end, es__file_size(f));
    /* The descriptor reads the same bytes at the reported offsets. */
    const es_tensor_ref *t3 = es__file_tensor_at(f, 3);
    uint8_t head[64];
    CHECK_EQ_INT(pread(es__file_fd(f), head, sizeof head, (off_t)es__file_tensor_offset(f, 3)), 64);
    CHECK(memcmp(head, t3->data, 64) == 0);
    es__file_close(f);

    /* A memory image has no descriptor. */
    size_t len;
    uint8_t *b = load_aligned(path, &len);
    CHECK(b);
    CHECK_EQ_INT(es__file_open_mem(&f, b, len, 0, &err), ES_OK);
    CHECK_EQ_INT(es__file_fd(f), -1);
    CHECK_EQ_INT(es__file_tensor_offset(f, 3), (const uint8_t *)es__file_tensor_at(f, 3)->data - b);
    es__file_close(f);
    free(b);
}

static void ed2_big_at_v1_place(uint8_t *b, size_t n) { put64(entry(b, FIX_V2_BIG) + ENT_OFFSET, 1984); }
static void ed2_big_late(uint8_t *b, size_t n) { put64(entry(b, FIX_V2_BIG) + ENT_OFFSET, 4096 + 64); }
static void ed2_as_version1(uint8_t *b, size_t n) { put32(b + OFF_VERSION, 1); }

TEST(format_v2_malformed_layout_is_refused) {
    if (!host_little_endian()) {
        es_test_skip("the fixture was written on a little-endian machine");
        return;
    }
    size_t len;
    uint8_t *b = load_aligned(FIX_V2_PATH, &len);
    CHECK(b);
    CHECK_EQ_INT(get64(entry(b, FIX_V2_BIG) + ENT_OFFSET), 4096);
    struct {
        const char *what;
        edit_fn edit;
        int code;
        const char *want;
    } cases[] = {
        /* the 64 KiB tensor right after i8 (where version 1 puts it) */
        {"big not page-aligned", ed2_big_at_v1_place, ES_EFORMAT,
         "tensor 'big': offset 1984, expected 4096 (format version 2 starts tensors of 65536 bytes or more at a multiple of 4096)"},
        {"big 64 bytes late", ed2_big_late, ES_EFORMAT, "tensor 'big': unexpected gap of 64 bytes"},
        /* the same bytes read by the version-1 rule: the padding is a gap */
        {"relabelled version 1", ed2_as_version1, ES_EFORMAT, "tensor 'big': unexpected gap of 2112 bytes"},
    };
    char msg[600];
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++)
        CHECK_MSG(expect_refusal(b, len, cases[c].edit, cases[c].code, cases[c].want, msg, sizeof msg), "%s: want \"%s\", got %s", cases[c].what,
                  cases[c].want, msg);
    /* A non-zero byte in the padding before the page-aligned tensor: no
     * checksum covers it, the zero rule catches it, with or without
     * tensor verification. */
    es_err err = {0};
    es_file *f;
    for (unsigned flags = 0; flags <= ES_FILE_NO_VERIFY; flags += ES_FILE_NO_VERIFY) {
        for (size_t at = 1984; at < 4096; at += 1000) {
            b[at] = 0x20;
            int rc = es__file_open_mem(&f, b, len, flags, &err);
            b[at] = 0;
            CHECK_MSG(rc == ES_ECHECKSUM, "byte %zu: rc %d (%s)", at, rc, err.msg);
            CHECK_STR_HAS(err.msg, "padding before tensor 'big' is not zero");
        }
    }
    /* Truncation anywhere, including inside the padding and the big tensor. */
    for (size_t n = 0; n < len; n += n < 4200 ? 1 : 97) {
        int rc = es__file_open_mem(&f, b, n, 0, &err);
        if (rc == ES_OK) es__file_close(f);
        CHECK_MSG(rc == ES_EFORMAT && strstr(err.msg, n ? "truncated" : "empty"), "length %zu: rc %d (%s)", n, rc, err.msg);
    }
    free(b);
}
