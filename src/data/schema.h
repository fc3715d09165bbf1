/*
 * schema.h — internal: what the model layer (src/train) may ask of a reader
 * beyond the public API, to read a file the way a model was trained.
 *
 * A reader numbers its fields and numeric features in the order of their
 * columns in the file.  A model fixes that order at training time, so a CSV
 * file with the same columns in another order must be renumbered to the
 * model's order before its rows are read; these functions do that, and
 * report what a mismatch error needs (unused columns, the label column's
 * name, the shape of the last line with a wrong column count).
 */
#ifndef ES_DATA_SCHEMA_H
#define ES_DATA_SCHEMA_H

#include "embstore.h"

#include <stddef.h>

/* The name a model file and a run description use for a format:
 * "criteo", "csv", "libsvm", "libffm", or "auto". */
const char *es__format_name(es_format f);

/* CSV: renumber the fields and numeric features so that field i is the
 * column named fields[i] and numeric feature j the column named dense[j]
 * (the names a model recorded).  Only when the reader's names are exactly
 * a permutation of the given ones (same counts, each name used once): then
 * returns 1.  Returns 0 (reader unchanged) when they are not, or for other
 * formats; ES_ENOMEM.  Call before the first es_reader_next. */
int es__reader_match_names(es_reader *r, const char *const *fields, int nf, const char *const *dense, int nd);
/* CSV: renumber fields and numeric features in the order of their entries
 * in the column spec instead of the file's column order.  0 or ES_ENOMEM. */
int es__reader_spec_order(es_reader *r);
/* CSV with a header: the names of the columns no role uses (ignored
 * columns, and the label column of an unlabeled read), joined by ", " into
 * buf (cut with "..." when long).  Returns how many there are (0 for other
 * formats and header-less files). */
int es__reader_unused_columns(const es_reader *r, char *buf, size_t cap);
/* CSV with a header: the name of the label column, else NULL. */
const char *es__reader_label_name(const es_reader *r);
/* The last line read with a wrong number of columns (Criteo, CSV): the
 * columns it had, the columns expected, and the count split at the other
 * common delimiter (',' for Criteo TSV, tab for comma CSV).  All 0 when no
 * such line was met. */
void es__reader_shape(const es_reader *r, int *got, int *want, int *alt);

/* 1 when r reads a binary dataset cache (.esd). */
int es__reader_is_cache(const es_reader *r);
/* 1 when path is a dataset cache (by name or magic). */
int es__path_is_cache(const char *path);
/* A dataset cache's source identity (size, head hash) into *size / *head:
 * returns 1; 0 when path is not a readable cache. */
int es__esd_source_id(const char *path, uint64_t *size, uint64_t *head, es_err *err);

#endif
