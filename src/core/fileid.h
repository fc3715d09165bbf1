/*
 * fileid.h — the identity of an input file, for the checks that keep a run
 * from reporting results of data it did not read:
 *   - a checkpoint records the identity of its training file, and --resume
 *     refuses a file that differs (src/train/runcfg.c);
 *   - bench-storage keys its cached cells on it (through es_train_describe);
 *   - the trainer re-checks it at every pass so that a file that shrinks or
 *     is replaced while training fails the run (src/train/train.c).
 *
 * "Same content" is judged cheaply: the size and an XXH3-64 of the first
 * ES__FILE_HEAD_BYTES bytes (reading a multi-GB log whole at every resume
 * would cost more than the resume saves).  "Unchanged while open" is judged
 * by what stat(2) says: device, inode, size and modification time.
 */
#ifndef ES_CORE_FILEID_H
#define ES_CORE_FILEID_H

#include "core/core.h"

#define ES__FILE_HEAD_BYTES ((size_t)1 << 20)

typedef struct es__file_id {
    uint64_t size;      /* bytes (st_size) */
    uint64_t head_hash; /* XXH3-64 of the first min(size, ES__FILE_HEAD_BYTES) bytes (0 unless asked for) */
    uint64_t dev, ino;
    int64_t mtime_ns;
} es__file_id;

/* stat(2) `path` into *out; with_head also reads and hashes its head.
 * ES_ENOTFOUND / ES_EIO with "path: cannot ...: reason" in err. */
int es__file_id_get(const char *path, int with_head, es__file_id *out, es_err *err);

/* Lists of files (the shards of a log): "@LIST" names a file with one
 * path a line (blank lines and # comments skipped; relative paths are
 * relative to the working directory, not to the list), and a path with
 * *, ? or [ that is not itself a file is a glob, expanded in sorted order.
 * es__file_id_get of a list: sizes summed, the latest mtime, inodes and
 * heads hashed in order (a file added, removed, replaced, grown or
 * touched changes it). */
int es__path_is_list(const char *spec);
/* The files of spec (a list, a glob, or one path) into *paths[*n]
 * (es__path_list_free).  ES_ENOTFOUND when a glob matches nothing. */
int es__path_list(const char *spec, char ***paths, int *n, es_err *err);
void es__path_list_free(char **paths, int n);
/* The lines of a list file text[size] (name: for messages, "name:line:
 * ...") as paths: blank lines and # comments skipped, spaces around a path
 * dropped; a NUL byte, a path over ES__PATH_MAX bytes, more than
 * ES__LIST_MAX_FILES paths or none is an error.  The fuzz target's entry. */
#define ES__PATH_MAX 4096
#define ES__LIST_MAX_FILES (1 << 20)
#define ES__LIST_MAX_BYTES (64 << 20)
int es__path_list_parse(const char *text, size_t size, const char *name, char ***paths, int *n, es_err *err);

/* Compare the stat part of two identities (not head_hash).  Returns 0 when
 * equal, else writes what changed ("size 123 -> 45 bytes", "replaced by
 * another file (inode ...)", "modified (mtime ...)") to why and returns 1. */
int es__file_id_changed(const es__file_id *was, const es__file_id *now, char *why, size_t cap);

/* Re-stat `path` and compare with *was.  ES_OK when unchanged; else
 * ES_EIO with "path: the file changed while it was being read (<what>)
 * during <when>; ..." in err. */
int es__file_id_recheck(const char *path, const es__file_id *was, const char *when, es_err *err);

#endif
