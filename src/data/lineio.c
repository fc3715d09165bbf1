/*
 * lineio.c — the line source behind every text reader (see lineio.h).
 *
 * One buffer of max_line + 2 + READ_CHUNK bytes holds the text not yet
 * returned.  Lines are found with memchr; when no newline is left the tail
 * is moved to the front and the buffer is refilled with at least
 * READ_CHUNK bytes, so big sequential reads dominate.  gzip input is
 * inflated straight into the same buffer (zlib's inflate with our own input
 * buffer rather than gzread, so that memory inputs, multi-member files,
 * truncation and trailing junk all get precise messages).
 */
#include "data/lineio.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#define READ_CHUNK ((size_t)256 << 10)
#define ZIN_CHUNK ((size_t)256 << 10)

struct es__lineio {
    char *name;
    /* raw source: a file descriptor, or a memory buffer when fd < 0 */
    int fd;
    const unsigned char *mem;
    size_t mem_n, mem_pos;
    int src_eof;
    /* gzip */
    int gz;
    int zs_ready;   /* inflateInit2 done */
    int in_member;  /* inside a gzip member (its end not reached yet) */
    z_stream zs;
    unsigned char *zin;
    /* text buffer: [pos, end) not returned yet; [pos, scan) has no '\n' */
    char *buf;
    size_t cap, pos, end, scan;
    size_t max_line;
    int eof;      /* no more text will come from the source */
    int discard;  /* skipping the rest of an over-long line */
    int ungot;
    char *last;
    size_t last_len;
    size_t block;  /* start of the block last handed out by next_block */
    uint64_t lineno;
    int failed;   /* sticky fatal error code, message in fail_err */
    es_err fail_err;
    /* several files read one after the other (es__lineio_open_files):
     * paths[cur] is open and l->name; NULL paths: one file or memory */
    char **paths;
    int n_paths, cur;
    char *header;      /* the first file's header line (es__lineio_keep_header) */
    size_t header_len;
    int has_header;
    int in_switch;     /* reading a later file's header: its end is not the next file's start */
};

/* zlib allocates through the library wrappers so that allocation-failure
 * tests reach the inflater too. */
static voidpf z_alloc(voidpf opaque, uInt items, uInt size) {
    (void)opaque;
    size_t n;
    if (!es__mul_size(items, size, &n)) return Z_NULL;
    return es__malloc(n);
}
static void z_free(voidpf opaque, voidpf p) {
    (void)opaque;
    es__free(p);
}

static int lio_fail(es__lineio *l, es_err *err, int code, const char *fmt, ...) ES_PRINTF(4, 5);
static int lio_fail(es__lineio *l, es_err *err, int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    es__verr(&l->fail_err, code, fmt, ap);
    va_end(ap);
    l->failed = code;
    if (err) *err = l->fail_err;
    return code;
}

/* Read up to n raw bytes from the source; *got = 0 means end of source. */
static int src_read(es__lineio *l, void *dst, size_t n, size_t *got, es_err *err) {
    *got = 0;
    if (l->fd < 0) {
        size_t left = l->mem_n - l->mem_pos;
        size_t k = ES_MIN(n, left);
        if (k) memcpy(dst, l->mem + l->mem_pos, k);
        l->mem_pos += k;
        *got = k;
        return ES_OK;
    }
    for (;;) {
        ssize_t k = read(l->fd, dst, n);
        if (k >= 0) {
            *got = (size_t)k;
            return ES_OK;
        }
        if (errno == EINTR) continue;
        return lio_fail(l, err, ES_EIO, "%s: read error: %s", l->name, strerror(errno));
    }
}

/* Inflate into buf[end, cap) until some text came out or the input ended. */
static int fill_gz(es__lineio *l, es_err *err) {
    size_t room = l->cap - l->end;
    l->zs.next_out = (Bytef *)(l->buf + l->end);
    l->zs.avail_out = (uInt)ES_MIN(room, (size_t)UINT32_MAX);
    const uInt avail0 = l->zs.avail_out;
    while (l->zs.avail_out == avail0) {
        if (l->zs.avail_in == 0 && !l->src_eof) {
            size_t got;
            int rc = src_read(l, l->zin, ZIN_CHUNK, &got, err);
            if (rc) return rc;
            if (got == 0) l->src_eof = 1;
            l->zs.next_in = l->zin;
            l->zs.avail_in = (uInt)got;
        }
        if (l->zs.avail_in == 0 && l->src_eof) {
            if (l->in_member)
                return lio_fail(l, err, ES_EIO, "%s: unexpected end of gzip stream (truncated file?)", l->name);
            l->eof = 1;
            break;
        }
        if (!l->in_member) {
            /* More bytes after a complete member: only another member may
             * follow (concatenated gzip files are valid gzip). */
            if (l->zs.next_in[0] != 0x1f)
                return lio_fail(l, err, ES_EPARSE, "%s: unexpected data after the end of the gzip stream", l->name);
            if (inflateReset(&l->zs) != Z_OK)
                return lio_fail(l, err, ES_EIO, "%s: cannot restart the gzip decoder", l->name);
            l->in_member = 1;
        }
        int zr = inflate(&l->zs, Z_NO_FLUSH);
        if (zr == Z_STREAM_END) {
            l->in_member = 0;
        } else if (zr == Z_OK) {
            /* progress made */
        } else if (zr == Z_BUF_ERROR && l->zs.avail_in == 0) {
            /* needs more input: the loop reads it */
        } else if (zr == Z_MEM_ERROR) {
            return lio_fail(l, err, ES_ENOMEM, "%s: out of memory in the gzip decoder", l->name);
        } else {
            return lio_fail(l, err, ES_EPARSE, "%s: corrupt gzip data: %s", l->name,
                            l->zs.msg ? l->zs.msg : zError(zr));
        }
    }
    l->end += avail0 - l->zs.avail_out;
    return ES_OK;
}

static int fill(es__lineio *l, es_err *err) {
    if (l->gz) return fill_gz(l, err);
    size_t got;
    int rc = src_read(l, l->buf + l->end, l->cap - l->end, &got, err);
    if (rc) return rc;
    if (got == 0) l->eof = 1;
    l->end += got;
    return ES_OK;
}

static bool has_prefix(const unsigned char *b, size_t n, const char *magic, size_t m) {
    return n >= m && memcmp(b, magic, m) == 0;
}

/* Read the first bytes, detect the encoding, set up gzip when needed. */
static int probe(es__lineio *l, es_err *err) {
    /* Read at most ZIN_CHUNK so that gzip bytes fit the inflater's buffer. */
    size_t want = ES_MIN(ZIN_CHUNK, l->cap), n = 0;
    while (n < 6) {
        size_t got;
        int rc = src_read(l, l->buf + n, want - n, &got, err);
        if (rc) return rc;
        if (got == 0) {
            l->src_eof = 1;
            break;
        }
        n += got;
    }
    const unsigned char *b = (const unsigned char *)l->buf;
    if (n >= 2 && b[0] == 0x1f && b[1] == 0x8b) {
        l->gz = 1;
        l->zin = es__malloc(ZIN_CHUNK);
        if (!l->zin) return lio_fail(l, err, ES_ENOMEM, "%s: out of memory", l->name);
        memcpy(l->zin, l->buf, n);
        memset(&l->zs, 0, sizeof l->zs);
        l->zs.zalloc = z_alloc;
        l->zs.zfree = z_free;
        int zr = inflateInit2(&l->zs, 15 + 16); /* gzip wrapper only */
        if (zr == Z_MEM_ERROR) return lio_fail(l, err, ES_ENOMEM, "%s: out of memory starting the gzip decoder", l->name);
        if (zr != Z_OK) return lio_fail(l, err, ES_EIO, "%s: cannot start the gzip decoder (zlib error %d)", l->name, zr);
        l->zs_ready = 1;
        l->in_member = 1;
        l->zs.next_in = l->zin;
        l->zs.avail_in = (uInt)n;
        l->end = 0;
        return ES_OK;
    }
    const char *other = NULL;
    if (has_prefix(b, n, "\x28\xb5\x2f\xfd", 4)) other = "zstd";
    else if (has_prefix(b, n, "BZh", 3)) other = "bzip2";
    else if (has_prefix(b, n, "\xfd" "7zXZ", 5)) other = "xz";
    else if (has_prefix(b, n, "PK\x03\x04", 4)) other = "zip";
    if (other)
        return lio_fail(l, err, ES_EUNSUPPORTED, "%s: %s-compressed input is not supported (decompress it, or use gzip)",
                        l->name, other);
    l->end = n;
    return ES_OK;
}

static int lio_new(es__lineio **out, const char *name, size_t max_line, es_err *err) {
    *out = NULL;
    if (max_line == 0 || max_line > ES__LINEIO_MAX_LINE_LIMIT)
        return es__err(err, ES_EINVAL, "%s: max_line must be in [1, %zu], got %zu", name, ES__LINEIO_MAX_LINE_LIMIT, max_line);
    es__lineio *l = es__calloc(1, sizeof *l);
    if (!l) return es__err(err, ES_ENOMEM, "%s: out of memory", name);
    l->fd = -1;
    l->max_line = max_line;
    l->cap = max_line + 2 + READ_CHUNK; /* cannot overflow: max_line <= 1 GiB */
    l->name = es__strdup(name);
    l->buf = es__malloc(l->cap);
    if (!l->name || !l->buf) {
        es__lineio_free(l);
        return es__err(err, ES_ENOMEM, "%s: out of memory for a %zu-byte line buffer", name, max_line);
    }
    *out = l;
    return ES_OK;
}

/* Open path on l's descriptor (closed before), as es__lineio_open does. */
static int open_fd(es__lineio *l, const char *path, es_err *err) {
    if (l->fd >= 0) close(l->fd);
    l->fd = open(path, O_RDONLY | O_CLOEXEC);
    if (l->fd < 0) {
        int e = errno;
        return es__err(err, e == ENOENT ? ES_ENOTFOUND : ES_EIO, "%s: cannot open: %s", path, strerror(e));
    }
    struct stat st;
    if (fstat(l->fd, &st) == 0 && S_ISDIR(st.st_mode)) return es__err(err, ES_EINVAL, "%s: cannot open: is a directory, not a data file", path);
#ifdef POSIX_FADV_SEQUENTIAL
    (void)posix_fadvise(l->fd, 0, 0, POSIX_FADV_SEQUENTIAL);
#endif
    return ES_OK;
}

/* Make file i of a list the current one, read from its start: the text
 * state reset, gzip detected again, line numbers from 1; after the first
 * file, a header kept from the first (es__lineio_keep_header) must be the
 * file's first non-blank line, and is skipped.  Fatal errors stick. */
static int switch_file(es__lineio *l, int i, es_err *err) {
    if (l->zs_ready) inflateEnd(&l->zs);
    es__free(l->zin);
    l->zin = NULL;
    l->gz = l->zs_ready = l->in_member = 0;
    l->src_eof = 0;
    l->pos = l->end = l->scan = l->block = 0;
    l->eof = l->discard = l->ungot = 0;
    l->last = NULL;
    l->last_len = 0;
    l->lineno = 0;
    l->cur = i;
    char *nm = es__strdup(l->paths[i]);
    if (!nm) return lio_fail(l, err, ES_ENOMEM, "%s: out of memory", l->paths[i]);
    es__free(l->name);
    l->name = nm;
    es_err e = {0};
    int rc = open_fd(l, l->name, &e);
    if (rc == ES_OK) rc = probe(l, &e);
    if (rc != ES_OK) return lio_fail(l, err, rc, "%s", e.msg);
    if (i == 0 || !l->has_header) return ES_OK;
    char *s;
    size_t n;
    l->in_switch = 1;
    for (;;) {
        rc = es__lineio_next(l, &s, &n, err);
        if (rc == 1 && n == 0) continue;
        break;
    }
    l->in_switch = 0;
    if (rc == 0) return ES_OK; /* an empty file: no header, no rows (the caller goes on to the next) */
    if (rc < 0) return rc;
    if (n >= 3 && memcmp(s, "\xef\xbb\xbf", 3) == 0) s += 3, n -= 3;
    if (n != l->header_len || memcmp(s, l->header, n) != 0)
        return lio_fail(l, err, ES_EPARSE, "%s:%llu: the header differs from that of %s, the first file (%.*s vs %.80s)", l->name,
                        (unsigned long long)l->lineno, l->paths[0], (int)ES_MIN(n, (size_t)80), s, l->header);
    return ES_OK;
}

/* At the end of the current file: the next one of a list (1), or none (0). */
static int next_file(es__lineio *l, es_err *err) {
    if (!l->paths || l->in_switch || l->cur + 1 >= l->n_paths) return 0;
    int rc = switch_file(l, l->cur + 1, err);
    return rc ? rc : 1;
}

int es__lineio_open_files(es__lineio **out, const char *const *paths, int n, size_t max_line, es_err *err) {
    if (!out || !paths || n < 1) return es__err(err, ES_EINVAL, "lineio: no files");
    *out = NULL;
    es__lineio *l;
    int rc = lio_new(&l, paths[0], max_line, err);
    if (rc) return rc;
    if (!(l->paths = es__calloc((size_t)n, sizeof *l->paths))) {
        es__lineio_free(l);
        return es__err(err, ES_ENOMEM, "%s: out of memory", paths[0]);
    }
    l->n_paths = n;
    for (int i = 0; i < n; i++)
        if (!(l->paths[i] = es__strdup(paths[i]))) {
            es__lineio_free(l);
            return es__err(err, ES_ENOMEM, "%s: out of memory", paths[0]);
        }
    if ((rc = switch_file(l, 0, err)) != ES_OK) {
        es__lineio_free(l);
        return rc;
    }
    *out = l;
    return ES_OK;
}

int es__lineio_keep_header(es__lineio *l, const char *s, size_t n) {
    if (!l->paths) return ES_OK;
    char *h = es__malloc(n + 1);
    if (!h) return ES_ENOMEM;
    memcpy(h, s, n);
    h[n] = 0;
    es__free(l->header);
    l->header = h;
    l->header_len = n;
    l->has_header = 1;
    return ES_OK;
}

int es__lineio_open(es__lineio **out, const char *path, size_t max_line, es_err *err) {
    if (!out || !path) return es__err(err, ES_EINVAL, "lineio: NULL argument");
    es__lineio *l;
    int rc = lio_new(&l, path, max_line, err);
    if (rc) return rc;
    if ((rc = open_fd(l, path, err)) == ES_OK) rc = probe(l, err);
    if (rc) {
        es__lineio_free(l);
        return rc;
    }
    *out = l;
    return ES_OK;
}

int es__lineio_open_mem(es__lineio **out, const void *data, size_t n, const char *name, size_t max_line, es_err *err) {
    if (!out || (!data && n)) return es__err(err, ES_EINVAL, "lineio: NULL argument");
    if (!name) name = "<memory>";
    es__lineio *l;
    int rc = lio_new(&l, name, max_line, err);
    if (rc) return rc;
    l->mem = data;
    l->mem_n = n;
    rc = probe(l, err);
    if (rc) {
        es__lineio_free(l);
        return rc;
    }
    *out = l;
    return ES_OK;
}

int es__lineio_reset_mem(es__lineio *l, const void *data, size_t n, es_err *err) {
    if (!l || l->fd >= 0 || (!data && n)) return es__err(err, ES_EINVAL, "lineio: not a memory source");
    if (l->zs_ready) inflateEnd(&l->zs);
    es__free(l->zin);
    l->zin = NULL;
    l->gz = l->zs_ready = l->in_member = 0;
    l->mem = data;
    l->mem_n = n;
    l->mem_pos = 0;
    l->src_eof = 0;
    l->pos = l->end = l->scan = l->block = 0;
    l->eof = l->discard = l->ungot = l->failed = 0;
    l->last = NULL;
    l->last_len = 0;
    l->lineno = 0;
    return probe(l, err);
}

void es__lineio_free(es__lineio *l) {
    if (!l) return;
    for (int i = 0; l->paths && i < l->n_paths; i++) es__free(l->paths[i]);
    es__free(l->paths);
    es__free(l->header);
    if (l->fd >= 0) close(l->fd);
    if (l->zs_ready) inflateEnd(&l->zs);
    es__free(l->zin);
    es__free(l->buf);
    es__free(l->name);
    es__free(l);
}

/* Hand out buf[s, s+n) as a line (n excludes the '\n'). */
static int deliver(es__lineio *l, char *s, size_t n, char **line, size_t *len, es_err *err) {
    if (n && s[n - 1] == '\r') n--;
    l->lineno++;
    if (n > l->max_line)
        return es__err(err, ES_ERANGE, "%s:%llu: line longer than %zu bytes", l->name, (unsigned long long)l->lineno,
                       l->max_line);
    l->last = s;
    l->last_len = n;
    *line = s;
    *len = n;
    return 1;
}

/* One step of skipping the rest of an over-long line: 2 = the line ended
 * (reading resumes after it), 1 = more input was read and skipping goes on,
 * 0 = the input ended, < 0 = a read error. */
static int discard_step(es__lineio *l, es_err *err) {
    char *nl = l->pos < l->end ? memchr(l->buf + l->pos, '\n', l->end - l->pos) : NULL;
    if (nl) {
        l->pos = l->scan = (size_t)(nl - l->buf) + 1;
        l->discard = 0;
        return 2;
    }
    l->pos = l->end = l->scan = 0;
    if (l->eof) {
        l->discard = 0;
        return 0;
    }
    int rc = fill(l, err);
    return rc ? rc : 1;
}


int es__lineio_next(es__lineio *l, char **line, size_t *len, es_err *err) {
    if (l->failed) {
        if (err) *err = l->fail_err;
        return l->failed;
    }
    if (l->ungot) {
        l->ungot = 0;
        *line = l->last;
        *len = l->last_len;
        return 1;
    }
    for (;;) {
        if (l->discard) {
            int rc = discard_step(l, err);
            if (rc == 0 && (rc = next_file(l, err)) == 1) continue; /* a list: on in the next file */
            if (rc <= 0) return rc; /* end of input (0) or an error */
            if (rc == 1) continue;  /* read more, still discarding */
        }
        char *nl = l->scan < l->end ? memchr(l->buf + l->scan, '\n', l->end - l->scan) : NULL;
        if (nl) {
            char *s = l->buf + l->pos;
            size_t n = (size_t)(nl - s);
            l->pos = l->scan = (size_t)(nl - l->buf) + 1;
            return deliver(l, s, n, line, len, err);
        }
        l->scan = l->end;
        if (l->eof) {
            if (l->pos < l->end) {
                char *s = l->buf + l->pos;
                size_t n = l->end - l->pos;
                l->pos = l->scan = l->end;
                return deliver(l, s, n, line, len, err);
            }
            int rc = next_file(l, err); /* a list: on in the next file */
            if (rc == 1) continue;
            return rc;
        }
        /* No newline in the pending bytes.  More than max_line + 1 of them
         * (a CR may still precede the LF) means the line is too long. */
        if (l->end - l->pos > l->max_line + 1) {
            l->lineno++;
            l->discard = 1;
            return es__err(err, ES_ERANGE, "%s:%llu: line longer than %zu bytes", l->name,
                           (unsigned long long)l->lineno, l->max_line);
        }
        if (l->cap - l->end < READ_CHUNK && l->pos > 0) {
            memmove(l->buf, l->buf + l->pos, l->end - l->pos);
            l->end -= l->pos;
            l->scan -= l->pos;
            l->pos = 0;
        }
        int rc = fill(l, err);
        if (rc) return rc;
    }
}

void es__lineio_unget(es__lineio *l) {
    ES_ASSERT(l->last != NULL);
    l->ungot = 1;
}

/* Last '\n' in s[0, n) or NULL.  A plain backward loop (memrchr is a GNU
 * extension): the last newline is normally within one line of the end. */
static char *last_newline(char *s, size_t n) {
    while (n > 0)
        if (s[--n] == '\n') return s + n;
    return NULL;
}

int es__lineio_next_block(es__lineio *l, char **blk, size_t *len, es_err *err) {
    if (l->failed) {
        if (err) *err = l->fail_err;
        return l->failed;
    }
    if (l->ungot) {
        /* The put-back line is still in the buffer just before pos (next()
         * never moves text it has handed out until the following call). */
        l->ungot = 0;
        l->pos = l->scan = (size_t)(l->last - l->buf);
        l->lineno--;
    }
    l->last = NULL;
    for (;;) {
        if (l->discard) {
            int rc = discard_step(l, err);
            if (rc == 0 && (rc = next_file(l, err)) == 1) continue; /* a list: on in the next file */
            if (rc <= 0) return rc; /* end of input (0) or an error */
            if (rc == 1) continue;  /* read more, still discarding */
        }
        if (l->pos < l->end) {
            char *nl = last_newline(l->buf + l->pos, l->end - l->pos);
            if (nl || l->eof) {
                size_t stop = nl ? (size_t)(nl - l->buf) + 1 : l->end;
                *blk = l->buf + l->pos;
                *len = stop - l->pos;
                l->block = l->pos;
                l->pos = l->scan = stop;
                return 1;
            }
            if (l->end - l->pos > l->max_line + 1) {
                l->lineno++;
                l->discard = 1;
                return es__err(err, ES_ERANGE, "%s:%llu: line longer than %zu bytes", l->name,
                               (unsigned long long)l->lineno, l->max_line);
            }
        } else if (l->eof) {
            int rc = next_file(l, err); /* a list: on in the next file */
            if (rc == 1) continue;
            return rc;
        }
        if (l->cap - l->end < READ_CHUNK && l->pos > 0) {
            memmove(l->buf, l->buf + l->pos, l->end - l->pos);
            l->end -= l->pos;
            l->pos = 0;
        }
        l->scan = l->pos;
        int rc = fill(l, err);
        if (rc) return rc;
    }
}

void es__lineio_consumed(es__lineio *l, size_t bytes, uint64_t lines) {
    ES_ASSERT(l->block + bytes <= l->pos);
    l->pos = l->scan = l->block + bytes;
    l->lineno += lines;
}

int es__lineio_rewind(es__lineio *l, es_err *err) {
    if (l->paths && (l->cur != 0 || l->failed)) { /* a list: its first file again */
        l->failed = 0;
        return switch_file(l, 0, err);
    }
    if (l->fd >= 0) {
        if (lseek(l->fd, 0, SEEK_SET) != 0)
            return es__err(err, ES_EIO, "%s: cannot rewind: %s", l->name, strerror(errno));
    } else {
        l->mem_pos = 0;
    }
    l->src_eof = 0;
    l->pos = l->end = l->scan = 0;
    l->eof = l->discard = l->ungot = l->failed = 0;
    l->last = NULL;
    l->last_len = 0;
    l->lineno = 0;
    if (l->gz) {
        if (inflateReset(&l->zs) != Z_OK) return lio_fail(l, err, ES_EIO, "%s: cannot restart the gzip decoder", l->name);
        l->zs.next_in = l->zin;
        l->zs.avail_in = 0;
        l->in_member = 1;
    }
    return ES_OK;
}

uint64_t es__lineio_lineno(const es__lineio *l) { return l->lineno; }
int es__lineio_is_gzip(const es__lineio *l) { return l->gz; }
const char *es__lineio_name(const es__lineio *l) { return l->name; }

/* ---- text validity ---------------------------------------------------------- */
size_t es__text_check(const char *s, size_t n, const char **why) {
    const unsigned char *p = (const unsigned char *)s;
    const uint64_t ones = UINT64_C(0x0101010101010101), highs = UINT64_C(0x8080808080808080);
    size_t i = 0;
    /* Fast path: 8 bytes at a time while they are ASCII and not NUL.  The
     * zero-byte test ((w - ones) & ~w & highs) is exact about whether a zero
     * byte exists, which is all we need before the byte loop. */
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        if ((w | ((w - ones) & ~w)) & highs) break;
    }
    while (i < n) {
        unsigned c = p[i];
        if (c == 0) {
            if (why) *why = "NUL byte in text (binary data?)";
            return i;
        }
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t need;
        unsigned lo = 0x80, hi = 0xBF;
        if (c >= 0xC2 && c <= 0xDF) need = 1;
        else if (c == 0xE0) need = 2, lo = 0xA0;
        else if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF) need = 2;
        else if (c == 0xED) need = 2, hi = 0x9F;
        else if (c == 0xF0) need = 3, lo = 0x90;
        else if (c >= 0xF1 && c <= 0xF3) need = 3;
        else if (c == 0xF4) need = 3, hi = 0x8F;
        else need = 0;
        bool ok = need > 0 && n - i > need && p[i + 1] >= lo && p[i + 1] <= hi;
        for (size_t k = 2; ok && k <= need; k++) ok = p[i + k] >= 0x80 && p[i + k] <= 0xBF;
        if (!ok) {
            if (why) *why = "invalid UTF-8 (binary data or a non-UTF-8 text encoding?)";
            return i;
        }
        i += need + 1;
    }
    return n;
}
