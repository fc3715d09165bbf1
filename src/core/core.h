/*
 * core.h — internal helpers shared by every layer: errors, checked
 * allocation (with failure injection for tests), overflow-checked sizes,
 * hashing, random numbers, timing, threads, atomic file writes.
 *
 * Nothing here prints or exits, except ES_ASSERT, which guards invariants
 * that can only break through a bug in embstore itself.
 */
#ifndef ES_CORE_H
#define ES_CORE_H

#include "embstore.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* OpenMP pragmas that vanish (without unknown-pragma warnings) in NO_OMP=1
 * builds: ES__OMP(omp parallel for num_threads(n)).  The one way the
 * library writes an OpenMP pragma. */
#ifdef _OPENMP
#define ES__OMP(x) _Pragma(#x)
#else
#define ES__OMP(x)
#endif
/* Per-row loops of the embedding rows (lookups, the FM and FFM kernels)
 * go parallel from this many floats of rows (n x fields x width): below
 * it, waking the team costs more than the work, measured at batch 64
 * (FM k=8 over 39 fields, 22k floats, was slower on 2 threads). */
#define ES__PAR_FLOATS ((size_t)1 << 15)
#define ES_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define ES_MIN(a, b) ((a) < (b) ? (a) : (b))
#define ES_MAX(a, b) ((a) > (b) ? (a) : (b))
#define ES_ALIGN 64

#if defined(__GNUC__)
#define ES_LIKELY(x) __builtin_expect(!!(x), 1)
#define ES_UNLIKELY(x) __builtin_expect(!!(x), 0)
#define ES_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define ES_LIKELY(x) (x)
#define ES_UNLIKELY(x) (x)
#define ES_PRINTF(a, b)
#endif

/* Always-on invariant check: a failure is a bug in embstore, not bad input. */
#define ES_ASSERT(cond)                                                        \
    do {                                                                       \
        if (ES_UNLIKELY(!(cond))) es__assert_fail(__FILE__, __LINE__, #cond); \
    } while (0)
void es__assert_fail(const char *file, int line, const char *cond) __attribute__((noreturn));

/* ---- errors ------------------------------------------------------------ */
/* Set err (may be NULL) and return code.  Message is printf-formatted. */
int es__err(es_err *err, int code, const char *fmt, ...) ES_PRINTF(3, 4);
int es__verr(es_err *err, int code, const char *fmt, va_list ap);

/* ---- allocation ---------------------------------------------------------
 * All library allocations go through these so that tests can make the Nth
 * allocation fail (es__alloc_fail_at) and check for a clean error. */
void *es__malloc(size_t n);
void *es__calloc(size_t count, size_t size);
void *es__realloc(void *p, size_t n);
/* es__realloc without the huge-page advice, for an array grown by doubling
 * and read in order: on huge pages its untouched slack becomes resident
 * (a 312 MB array grown to 512 MB held 513 MB, against 298 MB on 4 KB
 * pages). */
void *es__realloc_grow(void *p, size_t n);
void es__free(void *p);
/* 64-byte aligned, zeroed; free with es__free_aligned.  Blocks of 256 KiB
 * or more are page-aligned anonymous mappings (zeroed lazily by the OS). */
void *es__alloc_aligned(size_t n);
void es__free_aligned(void *p);
/* Replace the first nbytes of a large aligned block with a private
 * (copy-on-write) mapping of file fd at offset (page-aligned): reads use
 * the page cache in place, writes copy the touched pages.  ES_EINVAL when
 * the block or offset does not qualify (the caller then copies). */
int es__alloc_remap(void *p, size_t nbytes, int fd, uint64_t offset);
/* A private, zeroed, page-aligned anonymous mapping of n bytes, populated
 * at once (for a block about to be filled, e.g. by reading a file), counted
 * by the failure injection like every allocation; NULL on failure.  Release
 * with es__unmap_anon(p, n). */
void *es__map_anon(size_t n);
void es__unmap_anon(void *p, size_t n);
/* Move the whole pages of [src, src + nbytes) (page-aligned, inside a
 * private anonymous mapping such as es__map_anon's) to the start of the
 * large aligned block p, without copying: afterwards p holds those bytes
 * and the source range is unmapped (reading it faults).  Only whole pages
 * move; nbytes is rounded down to a page and the caller copies the rest.
 * ES_EINVAL when the blocks do not qualify (nothing changed: the caller
 * copies); ES_EIO when the move failed (p's pages are zero again). */
int es__alloc_move(void *p, void *src, size_t nbytes);
char *es__strdup(const char *s);
/* Test hook: the n-th allocation from now (1-based) and all after it fail;
 * n = 0 disables.  Returns the number of allocations done since the last call. */
uint64_t es__alloc_fail_at(uint64_t n);

/* a*b and a+b with overflow detection: return false on overflow. */
static inline bool es__mul_size(size_t a, size_t b, size_t *out) {
    return !__builtin_mul_overflow(a, b, out);
}
static inline bool es__add_size(size_t a, size_t b, size_t *out) {
    return !__builtin_add_overflow(a, b, out);
}

/* ---- hashing (xxHash) ---------------------------------------------------- */
uint64_t es__hash(const void *data, size_t len, uint64_t seed);
/* Hash of a 64-bit key under a seed (one XXH3 call on 8 bytes). */
uint64_t es__hash_u64(uint64_t key, uint64_t seed);
/* Cheap invertible 64-bit mixer (splitmix64 finaliser), for seeds. */
/* The last index i in [0, n) with a[i] <= x, for a[0 .. n) ascending and
 * a[0] <= x (binary search): the segment holding x of a list of starts. */
static inline size_t es__last_le(const uint64_t *a, size_t n, uint64_t x) {
    size_t lo = 0, hi = n - 1;
    while (lo < hi) {
        size_t mid = (lo + hi + 1) / 2;
        if (a[mid] <= x) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

static inline uint64_t es__mix64(uint64_t x) {
    x += UINT64_C(0x9e3779b97f4a7c15);
    x = (x ^ (x >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    x = (x ^ (x >> 27)) * UINT64_C(0x94d049bb133111eb);
    return x ^ (x >> 31);
}
/* Map a 64-bit hash to [0, n) without modulo bias worth noticing
 * (Lemire's multiply-shift). */
static inline uint64_t es__range(uint64_t h, uint64_t n) {
    return (uint64_t)(((unsigned __int128)h * n) >> 64);
}

/* ---- random numbers (xoshiro256**) ----------------------------------------
 * Deterministic for a given seed on every platform. */
typedef struct es_rng {
    uint64_t s[4];
} es_rng;
void es__rng_seed(es_rng *r, uint64_t seed);
uint64_t es__rng_u64(es_rng *r);
double es__rng_uniform(es_rng *r);           /* [0, 1) */
float es__rng_normal(es_rng *r);             /* N(0, 1) */
/* Fill x[n] with U(-a, a). */
void es__rng_fill_uniform(es_rng *r, float *x, size_t n, float a);
/* While on (this thread only), es__rng_fill_uniform does nothing: a loader
 * that creates a model only to replace every value with the file's turns
 * it on, so load time does not grow with the table size. */
void es__rng_fill_skip(int on);

/* ---- time and threads -------------------------------------------------- */
double es__now(void); /* monotonic seconds */
/* Set the threads used by OpenMP regions and OpenBLAS; returns the number
 * in effect.  n <= 0 means all cores. */
int es__threads_set(int n);
int es__threads_get(void);

/* ---- files ----------------------------------------------------------------
 * Atomic output: write to "<path>.tmp.<pid>", fsync, rename over path.
 * Nothing is left at `path` unless commit succeeds. */
typedef struct es_afile {
    FILE *fp;
    char *path;
    char *tmp;
    int slot; /* temp-file registry slot + 1 (0: none), see es__tmp_track */
} es_afile;
int es__afile_open(es_afile *a, const char *path, es_err *err);
int es__afile_commit(es_afile *a, es_err *err); /* closes; on failure removes tmp */
void es__afile_abort(es_afile *a);               /* closes and removes tmp */

/* The registry of live temporary files: a writer tracks its temporary path
 * before creating it and untracks it once renamed or removed, so that
 * es_temp_files_remove() (embstore.h; async-signal-safe) can delete every
 * temporary file of the process from a SIGINT/SIGTERM handler.  A fixed
 * table, no allocation: track returns a slot >= 0, or -1 when the table is
 * full or the path too long (the file is then simply not tracked). */
int es__tmp_track(const char *path);
void es__tmp_untrack(int slot); /* -1 is a no-op */

/* ---- small string helpers ------------------------------------------------ */
/* Parse "k=v,k=v" option strings: returns the value of key as a newly
 * allocated string or NULL. */
char *es__opt_get(const char *opts, const char *key);
/* Parse a double/long strictly (whole string); false on junk or overflow. */
bool es__parse_double(const char *s, size_t len, double *out);
bool es__parse_long(const char *s, size_t len, long long *out);

/* ---- numbers from file metadata -------------------------------------------
 * Every number read from a file's key/value metadata (model files,
 * checkpoints) goes through these: the whole value must be the number (no
 * leading blanks, sign only where negative values are possible, no
 * trailing bytes, no overflow) and lie in [lo, hi]; a float must also not
 * be NaN (infinities only when lo or hi is one).  `path` names the file in
 * the message, `value` is the metadata value (NULL when the key is absent).
 * Returns ES_OK with *out set, or ES_EFORMAT with *out untouched and err
 * saying
 *     "path: metadata lacks 'key'"
 *     "path: metadata key=value: expected an integer in [lo, hi]"
 *     "path: metadata key=value: expected a number in [lo, hi]"
 *     "path: metadata key=value: expected N comma-separated numbers in [lo, hi]"
 * (the value is cut at 64 bytes in the message). */
int es__meta_i64(const char *path, const char *key, const char *value, int64_t lo, int64_t hi, int64_t *out, es_err *err);
int es__meta_int(const char *path, const char *key, const char *value, int lo, int hi, int *out, es_err *err);
int es__meta_u64(const char *path, const char *key, const char *value, uint64_t lo, uint64_t hi, uint64_t *out, es_err *err);
int es__meta_f64(const char *path, const char *key, const char *value, double lo, double hi, double *out, es_err *err);
/* Exactly n comma-separated numbers, each in [lo, hi], into out[n]. */
int es__meta_f64_list(const char *path, const char *key, const char *value, int n, double lo, double hi, double *out, es_err *err);

#endif /* ES_CORE_H */
