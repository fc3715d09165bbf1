/*
 * fileid.c — identity of an input file (size, head checksum, stat fields);
 * see fileid.h for what uses it and why the head only.
 */
#include "core/fileid.h"

#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

static void from_stat(const struct stat *st, es__file_id *out) {
    out->size = (uint64_t)st->st_size;
    out->dev = (uint64_t)st->st_dev;
    out->ino = (uint64_t)st->st_ino;
    out->mtime_ns = (int64_t)st->st_mtim.tv_sec * 1000000000 + (int64_t)st->st_mtim.tv_nsec;
}

static int file_id_one(const char *path, int with_head, es__file_id *out, es_err *err);

/* ---- lists of files ---------------------------------------------------------------- */

void es__path_list_free(char **paths, int n) {
    for (int i = 0; paths && i < n; i++) es__free(paths[i]);
    es__free(paths);
}

static int push_path(char ***paths, int *n, int *cap, const char *s, size_t len) {
    if (*n == *cap) {
        int c = *cap ? 2 * *cap : 16;
        char **p = es__realloc(*paths, (size_t)c * sizeof *p);
        if (!p) return ES_ENOMEM;
        *paths = p;
        *cap = c;
    }
    char *d = es__malloc(len + 1);
    if (!d) return ES_ENOMEM;
    memcpy(d, s, len);
    d[len] = 0;
    (*paths)[(*n)++] = d;
    return ES_OK;
}

int es__path_is_list(const char *spec) {
    if (!spec || !*spec) return 0;
    if (spec[0] == '@') return 1;
    return strpbrk(spec, "*?[") != NULL && access(spec, F_OK) != 0;
}

int es__path_list_parse(const char *text, size_t size, const char *name, char ***out, int *n_out, es_err *err) {
    char **paths = NULL;
    int n = 0, cap = 0, rc = ES_OK;
    *out = NULL;
    *n_out = 0;
    unsigned long no = 0;
    for (size_t pos = 0; pos < size && rc == ES_OK;) {
        const char *line = text + pos, *nl = memchr(line, '\n', size - pos);
        size_t len = nl ? (size_t)(nl - line) : size - pos;
        pos += len + (nl != NULL);
        no++;
        while (len && (line[len - 1] == '\r' || line[len - 1] == ' ' || line[len - 1] == '\t')) len--;
        while (len && (*line == ' ' || *line == '\t')) line++, len--;
        if (!len || *line == '#') continue;
        if (memchr(line, 0, len)) rc = es__err(err, ES_EPARSE, "%s:%lu: a NUL byte in a path", name, no);
        else if (len > ES__PATH_MAX) rc = es__err(err, ES_EPARSE, "%s:%lu: a path longer than %d bytes", name, no, ES__PATH_MAX);
        else if (n >= ES__LIST_MAX_FILES) rc = es__err(err, ES_ERANGE, "%s:%lu: more than %d files", name, no, ES__LIST_MAX_FILES);
        else if (push_path(&paths, &n, &cap, line, len) != ES_OK) rc = es__err(err, ES_ENOMEM, "%s: out of memory", name);
    }
    if (rc == ES_OK && n == 0) rc = es__err(err, ES_EINVAL, "%s: the list of files is empty", name);
    if (rc != ES_OK) {
        es__path_list_free(paths, n);
        return rc;
    }
    *out = paths;
    *n_out = n;
    return ES_OK;
}

/* A list file into memory (at most ES__LIST_MAX_BYTES) and parsed. */
static int read_list(const char *path, char ***out, int *n_out, es_err *err) {
    FILE *fp = fopen(path, "rb");
    if (!fp) return es__err(err, errno == ENOENT ? ES_ENOTFOUND : ES_EIO, "%s: cannot open the list of files: %s", path, strerror(errno));
    /* one byte more than the file had at the stat: a longer read means it
     * grew (or it is longer than the limit) */
    struct stat st;
    size_t want = fstat(fileno(fp), &st) == 0 && st.st_size >= 0 && st.st_size <= ES__LIST_MAX_BYTES ? (size_t)st.st_size + 1
                                                                                                      : (size_t)ES__LIST_MAX_BYTES + 1;
    char *buf = es__malloc(want);
    size_t got = buf ? fread(buf, 1, want, fp) : 0;
    int rc = !buf ? es__err(err, ES_ENOMEM, "%s: out of memory", path)
           : ferror(fp) ? es__err(err, ES_EIO, "%s: cannot read the list of files", path)
           : got == want ? es__err(err, ES_ERANGE, "%s: a list of files longer than %d bytes (or growing while read)", path,
                                   want > (size_t)ES__LIST_MAX_BYTES ? ES__LIST_MAX_BYTES : (int)want - 1)
                         : es__path_list_parse(buf, got, path, out, n_out, err);
    fclose(fp);
    es__free(buf);
    return rc;
}

int es__path_list(const char *spec, char ***out, int *n_out, es_err *err) {
    *out = NULL;
    *n_out = 0;
    char **paths = NULL;
    int n = 0, cap = 0, rc = ES_OK;
    if (spec[0] == '@') { /* a list file: one path a line; blank lines and # comments skipped */
        return read_list(spec + 1, out, n_out, err);
    } else if (es__path_is_list(spec)) { /* a glob, in sorted order */
        glob_t g;
        int gr = glob(spec, 0, NULL, &g);
        if (gr == GLOB_NOMATCH) return es__err(err, ES_ENOTFOUND, "%s: no file matches the pattern", spec);
        if (gr != 0) return es__err(err, gr == GLOB_NOSPACE ? ES_ENOMEM : ES_EIO, "%s: cannot expand the pattern", spec);
        for (size_t i = 0; rc == ES_OK && i < g.gl_pathc; i++)
            if (push_path(&paths, &n, &cap, g.gl_pathv[i], strlen(g.gl_pathv[i])) != ES_OK) rc = es__err(err, ES_ENOMEM, "%s: out of memory", spec);
        globfree(&g);
    } else {
        rc = push_path(&paths, &n, &cap, spec, strlen(spec)) != ES_OK ? es__err(err, ES_ENOMEM, "out of memory") : ES_OK;
    }
    if (rc != ES_OK) {
        es__path_list_free(paths, n);
        return rc;
    }
    *out = paths;
    *n_out = n;
    return ES_OK;
}

int es__file_id_get(const char *path, int with_head, es__file_id *out, es_err *err) {
    if (!es__path_is_list(path)) return file_id_one(path, with_head, out, err);
    /* a list: sizes summed, the latest mtime, the inodes and heads hashed
     * in order, so that a file added, removed, replaced, grown or touched
     * changes the identity */
    char **paths;
    int n;
    int rc = es__path_list(path, &paths, &n, err);
    if (rc != ES_OK) return rc;
    memset(out, 0, sizeof *out);
    uint64_t ih = UINT64_C(0xcbf29ce484222325), hh = ih;
    for (int i = 0; i < n && rc == ES_OK; i++) {
        es__file_id one;
        if ((rc = file_id_one(paths[i], with_head, &one, err)) != ES_OK) break;
        if (i == 0) out->dev = one.dev;
        out->size += one.size;
        if (one.mtime_ns > out->mtime_ns) out->mtime_ns = one.mtime_ns;
        uint64_t v[3] = {one.dev, one.ino, ih};
        ih = XXH3_64bits(v, sizeof v);
        uint64_t w[3] = {one.head_hash, one.size, hh};
        hh = XXH3_64bits(w, sizeof w);
    }
    out->ino = ih;
    out->head_hash = with_head ? hh : 0;
    es__path_list_free(paths, n);
    return rc;
}

static int file_id_one(const char *path, int with_head, es__file_id *out, es_err *err) {
    memset(out, 0, sizeof *out);
    struct stat st;
    if (stat(path, &st) != 0) { /* worded as the reader's open, which this now precedes */
        int e = errno;
        return es__err(err, e == ENOENT ? ES_ENOTFOUND : ES_EIO, "%s: cannot open: %s", path, strerror(e));
    }
    /* what has an identity is read more than once (training's passes, a
     * conversion's two passes): a pipe or a terminal would give each pass
     * what the last one left, so it is refused before anything is read
     * (and before an open that would wait for a FIFO's writer) */
    if (S_ISDIR(st.st_mode)) return es__err(err, ES_EINVAL, "%s: a directory, not a data file", path);
    if (!S_ISREG(st.st_mode))
        return es__err(err, ES_EINVAL,
                       "%s: not a regular file (a pipe, FIFO or terminal?): it would be read more than once; save it to a "
                       "file first (the CLI's train and convert do that for '-', standard input)",
                       path);
    if (!with_head) {
        from_stat(&st, out);
        return ES_OK;
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        return es__err(err, e == ENOENT ? ES_ENOTFOUND : ES_EIO, "%s: cannot open: %s", path, strerror(e));
    }
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return es__err(err, ES_EIO, "%s: cannot stat: %s", path, strerror(e));
    }
    from_stat(&st, out);
    /* stream the head through XXH3 in 64 KiB pieces: no large buffer */
    XXH3_state_t *hs = XXH3_createState();
    if (!hs) {
        close(fd);
        return es__err(err, ES_ENOMEM, "%s: out of memory hashing the file", path);
    }
    XXH3_64bits_reset(hs);
    char buf[65536];
    size_t left = ES__FILE_HEAD_BYTES;
    int rc = ES_OK;
    while (left > 0) {
        ssize_t k = read(fd, buf, left < sizeof buf ? left : sizeof buf);
        if (k < 0 && errno == EINTR) continue;
        if (k < 0) {
            rc = es__err(err, ES_EIO, "%s: cannot read: %s", path, strerror(errno));
            break;
        }
        if (k == 0) break;
        XXH3_64bits_update(hs, buf, (size_t)k);
        left -= (size_t)k;
    }
    out->head_hash = XXH3_64bits_digest(hs);
    XXH3_freeState(hs);
    close(fd);
    return rc;
}

int es__file_id_changed(const es__file_id *was, const es__file_id *now, char *why, size_t cap) {
    if (was->dev != now->dev || was->ino != now->ino) {
        snprintf(why, cap, "replaced by another file: inode %llu, was %llu", (unsigned long long)now->ino,
                 (unsigned long long)was->ino);
        return 1;
    }
    if (was->size != now->size) {
        snprintf(why, cap, "size %llu bytes, was %llu", (unsigned long long)now->size, (unsigned long long)was->size);
        return 1;
    }
    if (was->mtime_ns != now->mtime_ns) {
        snprintf(why, cap, "modified: same size, new modification time");
        return 1;
    }
    return 0;
}

int es__file_id_recheck(const char *path, const es__file_id *was, const char *when, es_err *err) {
    es__file_id now;
    char why[160];
    if (es__file_id_get(path, 0, &now, NULL) != ES_OK) snprintf(why, sizeof why, "it can no longer be found");
    else if (!es__file_id_changed(was, &now, why, sizeof why)) return ES_OK;
    return es__err(err, ES_EIO,
                   "%s: the file changed while it was being read (%s), noticed %s; the run stops rather than report "
                   "results of rows it never read (train on a copy that nothing writes to)",
                   path, why, when);
}
