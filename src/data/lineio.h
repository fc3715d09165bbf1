/*
 * lineio.h — streaming line source for the text readers: a file (plain or
 * gzip, detected by its magic bytes) or a memory buffer, cut into lines in
 * one large buffer with memchr, in bounded memory.
 *
 * Contract:
 *   - lines end at LF; a CR just before the LF (CRLF files) is dropped, and a
 *     last line without a newline is still a line;
 *   - a line longer than max_line bytes is reported (ES_ERANGE) and then
 *     discarded in chunks, so a 10 MB line costs no more memory than a short
 *     one; the next call resumes at the following line;
 *   - memory is max_line + a fixed read chunk (+ the gzip input buffer),
 *     allocated at open; next() never allocates;
 *   - a gzip stream that ends early (truncated file) or is corrupt is a
 *     fatal error, never silently shorter data.
 */
#ifndef ES_DATA_LINEIO_H
#define ES_DATA_LINEIO_H

#include "core/core.h"

/* Largest accepted max_line: keeps the buffer size sane for bad params. */
#define ES__LINEIO_MAX_LINE_LIMIT ((size_t)1 << 30)

typedef struct es__lineio es__lineio;

/* Open a file.  Messages are "path: cannot open: <strerror>" and similar. */
int es__lineio_open(es__lineio **out, const char *path, size_t max_line, es_err *err);
/* Read from memory (not copied: data must outlive the handle).  `name`
 * stands for the path in messages. */
int es__lineio_open_mem(es__lineio **out, const void *data, size_t n, const char *name,
                        size_t max_line, es_err *err);
/* A memory source reads new bytes from their start, as a fresh
 * es__lineio_open_mem would (gzip detected again), keeping the buffers. */
int es__lineio_reset_mem(es__lineio *l, const void *data, size_t n, es_err *err);
void es__lineio_free(es__lineio *l);
/* Several files read one after another as one stream (shards of a log,
 * a glob): each plain or gzip on its own; a line never spans two files;
 * line numbers and the name in messages are those of the current file
 * (es__lineio_name); rewind goes back to the first file.  n >= 1. */
int es__lineio_open_files(es__lineio **out, const char *const *paths, int n, size_t max_line, es_err *err);
/* A list whose files start with a header line: s[n] is the first file's
 * (read by the caller); every later file must start with the same line,
 * which is skipped (else a parse error naming both files).  A no-op for a
 * single file.  ES_ENOMEM. */
int es__lineio_keep_header(es__lineio *l, const char *s, size_t n);

/* Next line.  Returns
 *   1          *line and *len hold the line without its "\n" or "\r\n"; the
 *              bytes stay valid (and may be modified in place by the
 *              caller) until the next call of next/rewind;
 *   0          end of input;
 *   ES_ERANGE  the line was longer than max_line (message in err); it is
 *              discarded, the caller may go on;
 *   other < 0  fatal I/O or gzip error (message in err); stays failed until
 *              rewind.
 * Line numbers count every line returned or discarded (see lineno). */
int es__lineio_next(es__lineio *l, char **line, size_t *len, es_err *err);
/* Make the next call return the line just returned again (one level; only
 * valid right after next() returned 1 and before the caller modified it). */
void es__lineio_unget(es__lineio *l);
/* Block interface, for parsing many lines at once (possibly in parallel):
 * [*blk, *blk + *len) holds one or more whole lines, each ending with '\n'
 * except perhaps the last line of the input; CRs are left in place.  The
 * bytes stay valid (and may be modified in place) until the next call of
 * any lineio function other than consumed().  Lines inside a block are not
 * length-checked (the caller compares them with max_line) and not counted:
 * the caller must then call es__lineio_consumed with the bytes and lines it
 * used; the rest of the block is handed out again by the next call.
 * Returns 1, 0 at end of input, ES_ERANGE (an over-long line that did not
 * fit the buffer was discarded and counted), or a fatal error as next(). */
int es__lineio_next_block(es__lineio *l, char **blk, size_t *len, es_err *err);
void es__lineio_consumed(es__lineio *l, size_t bytes, uint64_t lines);
/* Back to the first byte (gzip: restart the inflater).  Fails with ES_EIO
 * on an input that cannot seek (a pipe). */
int es__lineio_rewind(es__lineio *l, es_err *err);
/* 1-based number of the line last returned (0 before the first). */
uint64_t es__lineio_lineno(const es__lineio *l);
int es__lineio_is_gzip(const es__lineio *l);
const char *es__lineio_name(const es__lineio *l);

/* Text validity of a line: returns the offset of the first NUL byte or
 * invalid UTF-8 sequence, or n when the text is clean; *why (if not NULL)
 * names the problem.  ASCII lines take a word-at-a-time fast path. */
size_t es__text_check(const char *s, size_t n, const char **why);

#endif /* ES_DATA_LINEIO_H */
