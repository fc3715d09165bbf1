/*
 * fileid.c — identity of an input file (size, head checksum, stat fields);
 * see fileid.h for what uses it and why the head only.
 */
#include "core/fileid.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

static void from_stat(const struct stat *st, es__file_id *out) {
    out->size = (uint64_t)st->st_size;
    out->dev = (uint64_t)st->st_dev;
    out->ino = (uint64_t)st->st_ino;
    out->mtime_ns = (int64_t)st->st_mtim.tv_sec * 1000000000 + (int64_t)st->st_mtim.tv_nsec;
}

int es__file_id_get(const char *path, int with_head, es__file_id *out, es_err *err) {
    memset(out, 0, sizeof *out);
    if (!with_head) {
        struct stat st;
        if (stat(path, &st) != 0) {
            int e = errno;
            return es__err(err, e == ENOENT ? ES_ENOTFOUND : ES_EIO, "%s: cannot stat: %s", path, strerror(e));
        }
        from_stat(&st, out);
        return ES_OK;
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        return es__err(err, e == ENOENT ? ES_ENOTFOUND : ES_EIO, "%s: cannot open: %s", path, strerror(e));
    }
    struct stat st;
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
