/*
 * core.c — implementation of the internal helpers declared in core.h.
 */
#include "core.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/mman.h>
#include <math.h>
#include <time.h>
#include <unistd.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#ifdef _OPENMP
#include <omp.h>
#endif

/* ---- status codes -------------------------------------------------------- */
const char *es_strerror(int code) {
    switch (code) {
#define ES__ERR_STR(name, c, msg) \
    case c: return msg;
        ES_ERRNO_MAP(ES__ERR_STR)
#undef ES__ERR_STR
    default: return "unknown error";
    }
}

void es__assert_fail(const char *file, int line, const char *cond) {
    fprintf(stderr, "embstore: internal error at %s:%d: assertion failed: %s\n", file, line, cond);
    abort();
}

int es__verr(es_err *err, int code, const char *fmt, va_list ap) {
    if (err) {
        err->code = code;
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    }
    return code;
}

int es__err(es_err *err, int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    es__verr(err, code, fmt, ap);
    va_end(ap);
    return code;
}

/* ---- allocation with failure injection ---------------------------------- */
static _Thread_local uint64_t alloc_count;
static _Thread_local uint64_t alloc_fail_at;

uint64_t es__alloc_fail_at(uint64_t n) {
    uint64_t done = alloc_count;
    alloc_count = 0;
    alloc_fail_at = n;
    return done;
}

static bool alloc_should_fail(void) {
    alloc_count++;
    return alloc_fail_at && alloc_count >= alloc_fail_at;
}

/* Blocks from ES_HUGE_MIN bytes up are the tables, maps and state that
 * training and lookups read at random: they ask for transparent huge pages
 * (where the kernel gives them only on request, THP "madvise", each random
 * row otherwise costs a TLB miss and a page walk besides its cache miss).
 * Advice only: nothing changes where the kernel says no. */
#define ES_HUGE_MIN ((size_t)4 << 20)
static void advise_huge(void *p, size_t n) {
#ifdef MADV_HUGEPAGE
    if (!p || n < ES_HUGE_MIN) return;
    const uintptr_t a = ((uintptr_t)p + 4095) & ~(uintptr_t)4095, e = ((uintptr_t)p + n) & ~(uintptr_t)4095;
    if (e > a) (void)madvise((void *)a, e - a, MADV_HUGEPAGE);
#else
    (void)p, (void)n;
#endif
}

void *es__malloc(size_t n) {
    if (alloc_should_fail()) return NULL;
    void *p = malloc(n ? n : 1);
    advise_huge(p, n);
    return p;
}
void *es__calloc(size_t count, size_t size) {
    if (alloc_should_fail()) return NULL;
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (count && size && count <= SIZE_MAX / size) advise_huge(p, count * size);
    return p;
}
void *es__realloc(void *p, size_t n) {
    if (alloc_should_fail()) return NULL;
    void *q = realloc(p, n ? n : 1);
    advise_huge(q, n);
    return q;
}
void *es__realloc_grow(void *p, size_t n) {
    if (alloc_should_fail()) return NULL;
    return realloc(p, n ? n : 1);
}
void es__free(void *p) { free(p); }

/* Aligned blocks carry a 64-byte header just before the data: small blocks
 * come from aligned_alloc, large ones (>= ES_MAP_MIN) from an anonymous
 * mmap, which is zero-filled lazily (allocation time does not grow with the
 * size) and page-aligned, so a model loader can later map file pages over
 * it copy-on-write (es__alloc_remap). */
#define ES_MAP_MIN ((size_t)256 << 10)
#define ES_PAGE ((size_t)4096)
typedef struct {
    uint64_t magic;
    size_t size;   /* usable bytes (rounded) */
    int mapped;    /* 1: mmap'd; base is the mapping start */
    void *base;
} alloc_hdr;
#define ES_ALLOC_MAGIC UINT64_C(0x45534d454d424c4b)

void *es__alloc_aligned(size_t n) {
    if (alloc_should_fail()) return NULL;
    size_t rounded;
    if (!es__add_size(n, ES_ALIGN - 1, &rounded)) return NULL;
    rounded &= ~(size_t)(ES_ALIGN - 1);
    if (rounded == 0) rounded = ES_ALIGN;
    if (rounded >= ES_MAP_MIN) {
        size_t len;
        if (!es__add_size(rounded, ES_PAGE - 1, &len)) return NULL;
        len &= ~(ES_PAGE - 1);
        if (!es__add_size(len, ES_PAGE, &len)) return NULL;
        void *base = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (base == MAP_FAILED) return NULL;
        advise_huge(base, len);
        char *data = (char *)base + ES_PAGE;
        alloc_hdr *h = (alloc_hdr *)(data - ES_ALIGN);
        h->magic = ES_ALLOC_MAGIC;
        h->size = len - ES_PAGE;
        h->mapped = 1;
        h->base = base;
        return data;
    }
    char *p = aligned_alloc(ES_ALIGN, rounded + ES_ALIGN);
    if (!p) return NULL;
    memset(p + ES_ALIGN, 0, rounded);
    alloc_hdr *h = (alloc_hdr *)p;
    h->magic = ES_ALLOC_MAGIC;
    h->size = rounded;
    h->mapped = 0;
    h->base = p;
    return p + ES_ALIGN;
}

void es__free_aligned(void *p) {
    if (!p) return;
    alloc_hdr *h = (alloc_hdr *)((char *)p - ES_ALIGN);
    ES_ASSERT(h->magic == ES_ALLOC_MAGIC);
    h->magic = 0;
    if (h->mapped) munmap(h->base, h->size + ES_PAGE);
    else free(h->base);
}

int es__alloc_remap(void *p, size_t nbytes, int fd, uint64_t offset) {
    if (!p || fd < 0 || (offset & (ES_PAGE - 1)) != 0 || ((uintptr_t)p & (ES_PAGE - 1)) != 0) return ES_EINVAL;
    alloc_hdr *h = (alloc_hdr *)((char *)p - ES_ALIGN);
    if (h->magic != ES_ALLOC_MAGIC || !h->mapped || nbytes > h->size || ((uintptr_t)p & (ES_PAGE - 1)) != 0) return ES_EINVAL;
    size_t len = (nbytes + ES_PAGE - 1) & ~(ES_PAGE - 1);
    if (len == 0) return ES_OK;
    void *q = mmap(p, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED, fd, (off_t)offset);
    if (q == MAP_FAILED) {
        /* MAP_FIXED failed: the old anonymous pages are still in place */
        return ES_EIO;
    }
    return ES_OK;
}

void *es__map_anon(size_t n) {
    if (alloc_should_fail()) return NULL;
    /* populated at once: every caller fills the whole block right away */
    void *p = mmap(NULL, n ? n : 1, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

void es__unmap_anon(void *p, size_t n) {
    if (p) munmap(p, n ? n : 1);
}

/* mremap moves the page table entries: no byte is copied, and the pages
 * stay private anonymous memory (a later write does not copy again). */
int es__alloc_move(void *p, void *src, size_t nbytes) {
    if (!p || !src || ((uintptr_t)p & (ES_PAGE - 1)) != 0 || ((uintptr_t)src & (ES_PAGE - 1)) != 0) return ES_EINVAL;
    alloc_hdr *h = (alloc_hdr *)((char *)p - ES_ALIGN);
    if (h->magic != ES_ALLOC_MAGIC || !h->mapped || nbytes > h->size) return ES_EINVAL;
    size_t len = nbytes & ~(ES_PAGE - 1);
    if (len == 0) return ES_OK;
    void *q = mremap(src, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, p);
    if (q == MAP_FAILED) {
        /* The kernel may have unmapped the destination before failing:
         * put fresh zero pages back so the block stays whole. */
        mmap(p, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
        return ES_EIO;
    }
    return ES_OK;
}

char *es__strdup(const char *s) {
    if (!s) return NULL;
    size_t n = strlen(s) + 1;
    char *d = es__malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

/* ---- hashing -------------------------------------------------------------- */
uint64_t es__hash(const void *data, size_t len, uint64_t seed) {
    return XXH3_64bits_withSeed(data, len, seed);
}
uint64_t es__hash_u64(uint64_t key, uint64_t seed) {
    return XXH3_64bits_withSeed(&key, sizeof key, seed);
}

uint64_t es_key(const char *s, size_t len) {
    if (len == 0) return ES_KEY_MISSING;
    return XXH3_64bits(s, len);
}

/* ---- rng ------------------------------------------------------------------ */
static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

void es__rng_seed(es_rng *r, uint64_t seed) {
    uint64_t x = seed;
    for (int i = 0; i < 4; i++) {
        x += UINT64_C(0x9e3779b97f4a7c15);
        uint64_t z = x;
        z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
        z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
        r->s[i] = z ^ (z >> 31);
    }
}

uint64_t es__rng_u64(es_rng *r) {
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double es__rng_uniform(es_rng *r) { return (double)(es__rng_u64(r) >> 11) * 0x1.0p-53; }

float es__rng_normal(es_rng *r) {
    /* Box-Muller; one value per call keeps the stream simple to reproduce. */
    double u1 = es__rng_uniform(r), u2 = es__rng_uniform(r);
    if (u1 < 1e-300) u1 = 1e-300;
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

static _Thread_local int fill_skipped;

void es__rng_fill_skip(int on) { fill_skipped = on; }

void es__rng_fill_uniform(es_rng *r, float *x, size_t n, float a) {
    if (fill_skipped) return; /* a loader replaces these values right after */
    for (size_t i = 0; i < n; i++) x[i] = (float)((2.0 * es__rng_uniform(r) - 1.0) * a);
}

/* ---- time and threads ------------------------------------------------------ */
double es__now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

extern void openblas_set_num_threads(int) __attribute__((weak));

static int n_threads = 1;

int es__threads_set(int n) {
    if (n <= 0) {
        long c = sysconf(_SC_NPROCESSORS_ONLN);
        n = c > 0 ? (int)c : 1;
    }
    n_threads = n;
#ifdef _OPENMP
    omp_set_num_threads(n);
#endif
    if (openblas_set_num_threads) openblas_set_num_threads(n);
    return n;
}
int es__threads_get(void) { return n_threads; }

/* ---- temporary-file registry ------------------------------------------------- */
/* Each slot: state 0 free, 1 being filled or emptied, 2 live (path valid).
 * A signal handler reads only live slots and calls only unlink(), so it is
 * async-signal-safe; the paths live in the table itself (no allocation, no
 * pointer that could be freed under the handler). */
#define ES_TMP_SLOTS 32
#define ES_TMP_PATH_MAX 4096
static struct {
    atomic_int state;
    char path[ES_TMP_PATH_MAX];
} tmp_slots[ES_TMP_SLOTS];

int es__tmp_track(const char *path) {
    size_t n = strlen(path);
    if (n >= ES_TMP_PATH_MAX) return -1;
    for (int i = 0; i < ES_TMP_SLOTS; i++) {
        int free_ = 0;
        if (atomic_compare_exchange_strong(&tmp_slots[i].state, &free_, 1)) {
            memcpy(tmp_slots[i].path, path, n + 1);
            atomic_store(&tmp_slots[i].state, 2);
            return i;
        }
    }
    return -1;
}

void es__tmp_untrack(int slot) {
    if (slot < 0 || slot >= ES_TMP_SLOTS) return;
    atomic_store(&tmp_slots[slot].state, 0);
}

void es_temp_files_remove(void) {
    for (int i = 0; i < ES_TMP_SLOTS; i++)
        if (atomic_load(&tmp_slots[i].state) == 2) unlink(tmp_slots[i].path);
}

int es_temp_file_track(const char *path) { return path ? es__tmp_track(path) : -1; }
void es_temp_file_untrack(int slot) { es__tmp_untrack(slot); }

/* "<base>.tmp.<digits>" -> the pid, or -1 for any other name.  Also
 * "<base>.tmp.<pid>.tmp.<pid>" (same pid): the atomic write of a
 * per-process temporary file, such as the best model early stopping keeps,
 * cut short. */
static long stale_pid(const char *name, const char *base, size_t blen) {
    if (strncmp(name, base, blen) != 0 || strncmp(name + blen, ".tmp.", 5) != 0) return -1;
    const char *d = name + blen + 5;
    size_t nd = strspn(d, "0123456789");
    if (nd == 0 || nd > 9) return -1;
    if (d[nd] != 0 && !(strncmp(d + nd, ".tmp.", 5) == 0 && strncmp(d + nd + 5, d, nd) == 0 && d[2 * nd + 5] == 0)) return -1;
    return strtol(d, NULL, 10);
}

int es_temp_files_remove_stale(const char *path, void (*removed)(const char *tmp_path, long pid, void *ctx), void *ctx) {
    if (!path || !*path) return ES_EINVAL;
    const char *slash = strrchr(path, '/');
    const char *base = slash ? slash + 1 : path;
    size_t dlen = slash ? (size_t)(slash - path) : 0, blen = strlen(base);
    if (blen == 0) return ES_EINVAL;
    char dir[ES_TMP_PATH_MAX], full[ES_TMP_PATH_MAX];
    if (dlen + 1 >= sizeof dir) return ES_EINVAL;
    if (slash) {
        memcpy(dir, path, dlen ? dlen : 1); /* "/x": the root */
        dir[dlen ? dlen : 1] = 0;
    } else {
        snprintf(dir, sizeof dir, ".");
    }
    DIR *dp = opendir(dir);
    if (!dp) return errno == ENOENT || errno == ENOTDIR ? 0 : ES_EIO;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(dp)) != NULL) {
        long pid = stale_pid(e->d_name, base, blen);
        if (pid <= 0 || pid == (long)getpid()) continue;
        if (kill((pid_t)pid, 0) == 0 || errno != ESRCH) continue; /* alive, or not ours to judge (EPERM) */
        if ((size_t)snprintf(full, sizeof full, "%s/%s", dir, e->d_name) >= sizeof full) continue;
        if (unlink(full) == 0) {
            n++;
            if (removed) removed(full, pid, ctx);
        }
    }
    closedir(dp);
    return n;
}

/* ---- atomic files ----------------------------------------------------------- */
int es__afile_open(es_afile *a, const char *path, es_err *err) {
    memset(a, 0, sizeof *a);
    size_t n = strlen(path) + 64;
    a->path = es__strdup(path);
    a->tmp = es__malloc(n);
    if (!a->path || !a->tmp) {
        es__free(a->path);
        es__free(a->tmp);
        memset(a, 0, sizeof *a);
        return es__err(err, ES_ENOMEM, "%s: out of memory", path);
    }
    snprintf(a->tmp, n, "%s.tmp.%ld", path, (long)getpid());
    /* tracked before it exists, so a signal at any later point removes it */
    a->slot = es__tmp_track(a->tmp) + 1;
    a->fp = fopen(a->tmp, "wb");
    if (!a->fp) {
        int e = errno;
        es__tmp_untrack(a->slot - 1);
        es__free(a->path);
        es__free(a->tmp);
        memset(a, 0, sizeof *a);
        return es__err(err, ES_EIO, "%s: cannot create output: %s", path, strerror(e));
    }
    return ES_OK;
}

/* A rename is an update of the directory, not of the file: until the
 * directory itself reaches the disk, a power loss may bring back the old
 * name (or none).  So after the rename, fsync the parent directory.  A
 * directory that cannot be opened for reading (no read permission) or a
 * file system that cannot sync directories (EINVAL, EROFS) is not an error:
 * the file is in place and readable, only its durability is unconfirmed.
 * `path` is cut at its last '/' in place and restored (no allocation, so
 * nothing can fail for lack of memory after the rename). */
static int sync_parent_dir(char *path, es_err *err) {
    char *slash = strrchr(path, '/');
    const char *dir = ".";
    char saved = 0, *cut = NULL;
    if (slash) {
        cut = slash == path ? slash + 1 : slash; /* "/x" -> "/" */
        saved = *cut;
        *cut = 0;
        dir = path;
    }
    int rc = ES_OK;
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        if (fsync(fd) != 0 && errno != EINVAL && errno != EROFS) {
            int e = errno;
            if (cut) *cut = saved;
            rc = es__err(err, ES_EIO, "%s: written and renamed, but syncing its directory failed: %s", path, strerror(e));
        }
        close(fd);
    }
    if (cut) *cut = saved;
    return rc;
}

int es__afile_commit(es_afile *a, es_err *err) {
    int rc = ES_OK;
    if (!a->fp) return es__err(err, ES_EINVAL, "output file not open");
    if (fflush(a->fp) != 0 || ferror(a->fp)) {
        rc = es__err(err, ES_EIO, "%s: write failed: %s", a->path, strerror(errno));
    } else if (fsync(fileno(a->fp)) != 0 && errno != EINVAL && errno != EROFS) {
        rc = es__err(err, ES_EIO, "%s: fsync failed: %s", a->path, strerror(errno));
    }
    if (fclose(a->fp) != 0 && rc == ES_OK) rc = es__err(err, ES_EIO, "%s: close failed: %s", a->path, strerror(errno));
    a->fp = NULL;
    if (rc == ES_OK && rename(a->tmp, a->path) != 0) {
        rc = es__err(err, ES_EIO, "%s: rename from temporary file failed: %s", a->path, strerror(errno));
    }
    if (rc != ES_OK) remove(a->tmp);
    es__tmp_untrack(a->slot - 1);
    a->slot = 0;
    if (rc == ES_OK) rc = sync_parent_dir(a->path, err);
    es__free(a->path);
    es__free(a->tmp);
    a->path = a->tmp = NULL;
    return rc;
}

void es__afile_abort(es_afile *a) {
    if (a->fp) fclose(a->fp);
    if (a->tmp) remove(a->tmp);
    if (a->tmp) es__tmp_untrack(a->slot - 1);
    es__free(a->path);
    es__free(a->tmp);
    memset(a, 0, sizeof *a);
}

/* ---- strings ------------------------------------------------------------------- */
char *es__opt_get(const char *opts, const char *key) {
    if (!opts || !key) return NULL;
    size_t klen = strlen(key);
    const char *p = opts;
    while (*p) {
        const char *end = strchr(p, ',');
        if (!end) end = p + strlen(p);
        const char *eq = memchr(p, '=', (size_t)(end - p));
        if (eq && (size_t)(eq - p) == klen && memcmp(p, key, klen) == 0) {
            size_t vlen = (size_t)(end - eq - 1);
            char *v = es__malloc(vlen + 1);
            if (!v) return NULL;
            memcpy(v, eq + 1, vlen);
            v[vlen] = 0;
            return v;
        }
        p = *end ? end + 1 : end;
    }
    return NULL;
}

bool es__parse_double(const char *s, size_t len, double *out) {
    char buf[64];
    if (len == 0 || len >= sizeof buf) return false;
    memcpy(buf, s, len);
    buf[len] = 0;
    char *end;
    errno = 0;
    double v = strtod(buf, &end);
    if (end != buf + len || errno == ERANGE) return false;
    *out = v;
    return true;
}

bool es__parse_long(const char *s, size_t len, long long *out) {
    char buf[32];
    if (len == 0 || len >= sizeof buf) return false;
    memcpy(buf, s, len);
    buf[len] = 0;
    char *end;
    errno = 0;
    long long v = strtoll(buf, &end, 10);
    if (end != buf + len || errno == ERANGE) return false;
    *out = v;
    return true;
}

/* ---- numbers from file metadata (core.h) ---------------------------------- */

static int meta_missing(const char *path, const char *key, es_err *err) {
    return es__err(err, ES_EFORMAT, "%s: metadata lacks '%s'", path, key);
}

int es__meta_i64(const char *path, const char *key, const char *value, int64_t lo, int64_t hi, int64_t *out, es_err *err) {
    if (!value) return meta_missing(path, key, err);
    long long x;
    /* es__parse_long (strtoll) would skip leading blanks and take a '+' */
    int lead_ok = value[0] == '-' ? isdigit((unsigned char)value[1]) : isdigit((unsigned char)value[0]);
    if (!lead_ok || !es__parse_long(value, strlen(value), &x) || x < lo || x > hi)
        return es__err(err, ES_EFORMAT, "%s: metadata %s=%.64s: expected an integer in [%lld, %lld]", path, key, value, (long long)lo,
                       (long long)hi);
    *out = (int64_t)x;
    return ES_OK;
}

int es__meta_int(const char *path, const char *key, const char *value, int lo, int hi, int *out, es_err *err) {
    int64_t x;
    int rc = es__meta_i64(path, key, value, lo, hi, &x, err);
    if (rc == ES_OK) *out = (int)x;
    return rc;
}

int es__meta_u64(const char *path, const char *key, const char *value, uint64_t lo, uint64_t hi, uint64_t *out, es_err *err) {
    if (!value) return meta_missing(path, key, err);
    size_t len = strlen(value);
    char *end = NULL;
    unsigned long long x = 0;
    int ok = len > 0 && len < 32 && isdigit((unsigned char)value[0]); /* strtoull would take "-1" as 2^64-1 */
    if (ok) {
        errno = 0;
        x = strtoull(value, &end, 10);
        ok = end == value + len && errno != ERANGE && x >= lo && x <= hi;
    }
    if (!ok)
        return es__err(err, ES_EFORMAT, "%s: metadata %s=%.64s: expected an integer in [%llu, %llu]", path, key, value,
                       (unsigned long long)lo, (unsigned long long)hi);
    *out = (uint64_t)x;
    return ES_OK;
}

/* One number of a metadata value: s[0..len) whole, not NaN, in [lo, hi]. */
static bool meta_number(const char *s, size_t len, double lo, double hi, double *out) {
    double x;
    if (len == 0 || isspace((unsigned char)s[0]) || !es__parse_double(s, len, &x) || !(x >= lo && x <= hi)) return false;
    *out = x;
    return true;
}

int es__meta_f64(const char *path, const char *key, const char *value, double lo, double hi, double *out, es_err *err) {
    if (!value) return meta_missing(path, key, err);
    if (!meta_number(value, strlen(value), lo, hi, out))
        return es__err(err, ES_EFORMAT, "%s: metadata %s=%.64s: expected a number in [%.9g, %.9g]", path, key, value, lo, hi);
    return ES_OK;
}

int es__meta_f64_list(const char *path, const char *key, const char *value, int n, double lo, double hi, double *out, es_err *err) {
    if (!value) return meta_missing(path, key, err);
    const char *p = value;
    int i = 0;
    for (; i < n; i++) {
        const char *q = strchr(p, ',');
        size_t len = q ? (size_t)(q - p) : strlen(p);
        if (!meta_number(p, len, lo, hi, &out[i]) || (i + 1 < n) != (q != NULL)) break;
        if (q) p = q + 1;
    }
    if (i < n)
        return es__err(err, ES_EFORMAT, "%s: metadata %s=%.64s: expected %d comma-separated numbers in [%.9g, %.9g]", path, key, value, n,
                       lo, hi);
    return ES_OK;
}

float es_transform_num(double x) {
    if (x != x) return 0.0f;
    return x >= 0 ? (float)log1p(x) : (float)-log1p(-x);
}
