/*
 * criteo.c — the Criteo display-advertising TSV format:
 *   label \t I1..I13 \t C1..C26     (40 columns; 39 without the label)
 * I = integer counts (may be negative or empty), C = categorical tokens
 * (8 hex digits in the Kaggle data, may be empty).  No header.
 *
 * This is the hot format, so the parser walks each line once, numbers go
 * through a table for small integers (es__num_feature), and every row has
 * exactly 26 values with weight 1, reserved once per row.
 */
#include "data/reader_impl.h"

/* XXH3 inlined here (the same function es_key calls), because hashing 26
 * short tokens a row through a call was a fifth of the parse time. */
#define XXH_INLINE_ALL
#include <xxhash.h>

#define CRITEO_DENSE 13
#define CRITEO_CAT 26

int es__criteo_setup(es_reader *r, es_err *err) {
    if (es__make_names(&r->dense_names, CRITEO_DENSE, "I", 1) != ES_OK)
        return es__err(err, ES_ENOMEM, "%s: out of memory", es__lineio_name(r->io));
    r->n_dense = CRITEO_DENSE;
    if (es__make_names(&r->field_names, CRITEO_CAT, "C", 1) != ES_OK)
        return es__err(err, ES_ENOMEM, "%s: out of memory", es__lineio_name(r->io));
    r->n_fields = CRITEO_CAT;
    r->row = es__criteo_row;
    return ES_OK;
}

/* Must equal es_key (tests compare them on real data). */
static inline uint64_t token_key(const char *s, size_t n) { return n ? XXH3_64bits(s, n) : ES_KEY_MISSING; }

/* First '\t' in [p, end), or end.  Eight bytes at a time: Criteo tokens
 * are 8 hex digits and integers are short, so most fields end within one
 * or two words.  (w ^ tabs) has a zero byte exactly where w has a tab; the
 * lowest flagged byte of the zero-byte test is always a true zero. */
static inline const char *find_tab(const char *p, const char *end) {
    const uint64_t ones = UINT64_C(0x0101010101010101), tabs = ones * '\t', highs = ones * 0x80;
    while (end - p >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        w ^= tabs;
        uint64_t z = (w - ones) & ~w & highs;
        if (z) return p + (__builtin_ctzll(z) >> 3); /* little-endian: lowest byte first */
        p += 8;
    }
    while (p < end && *p != '\t') p++;
    return p;
}

static int count_cols(const char *s, size_t n) {
    int c = 1;
    for (const char *p = s, *e = s + n; (p = memchr(p, '\t', (size_t)(e - p))) != NULL; p++) c++;
    return c;
}

/* A column-level error, unless the real problem is the column count (a
 * shifted line makes every later column look wrong). */
static int col_err(es_reader *r, const char *s, size_t n, int ncol, int col, const char *name, const char *what,
                   const char *tok, size_t tlen) {
    int got = count_cols(s, n);
    if (got != ncol) return es__row_err(r, "expected %d tab-separated columns, got %d", ncol, got);
    char tb[200];
    const char *hint = es__label_hint(what);
    if (col == 1 && es__lineio_lineno(r->io) == 1 && !es__parse_num(tok, tlen, &(double){0}))
        hint = " (a header line? Criteo TSV files have none)";
    return es__row_err(r, "column %d (%s): %s, got '%s'%s", col, name, what, es__tok(tb, sizeof tb, tok, tlen), hint);
}

int es__criteo_row(es_reader *r, char *s, size_t n, es_batch *b, int row, size_t *nv) {
    const int has_label = r->p.has_label ? 1 : 0;
    const int ncol = CRITEO_DENSE + CRITEO_CAT + has_label;
    float *dense = b->dense + (size_t)row * CRITEO_DENSE;
    uint32_t *off = b->off + (size_t)row * CRITEO_CAT;
    size_t v = *nv;
    if (v + CRITEO_CAT > b->val_cap) {
        int rc = es_batch_reserve_vals(b, v + CRITEO_CAT);
        if (rc) return rc;
    }
    uint64_t *val = b->val;
    float *wt = b->wt;
    float label = 0.0f;
    const char *p = s, *end = s + n;
    for (int c = 0;; c++) {
        const char *q = find_tab(p, end);
        size_t len = (size_t)(q - p);
        int k = c - has_label; /* -1: label, 0..12: I, 13..38: C */
        if (k < 0) {
            const char *why;
            if (!es__parse_label(r, p, len, 0, &label, &why)) return col_err(r, s, n, ncol, c + 1, "label", why, p, len);
        } else if (k < CRITEO_DENSE) {
            if (!es__num_feature(r, p, len, &dense[k]))
                return col_err(r, s, n, ncol, c + 1, r->dense_names[k], "expected a number", p, len);
        } else {
            val[v] = token_key(p, len);
            wt[v] = 1.0f;
            v++;
            off[k - CRITEO_DENSE + 1] = (uint32_t)v;
        }
        if (q == end) {
            if (c != ncol - 1) return es__row_err(r, "expected %d tab-separated columns, got %d", ncol, c + 1);
            break;
        }
        if (c == ncol - 1) return es__row_err(r, "expected %d tab-separated columns, got %d", ncol, count_cols(s, n));
        p = q + 1;
    }
    b->label[row] = label;
    *nv = v;
    return ES_OK;
}
