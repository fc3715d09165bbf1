/*
 * criteo.c — the Criteo display-advertising TSV format:
 *   label \t I1..I13 \t C1..C26     (40 columns; 39 without the label)
 * I = integer counts (may be negative or empty), C = categorical tokens
 * (8 hex digits in the Kaggle data, may be empty).  No header.
 *
 * This is the hot format: one vectorised pass finds every tab (which also
 * checks the column count before any field is looked at), then the label,
 * 13 numbers (small integers through a table, es__num_feature) and 26
 * hashed tokens are parsed in three straight loops.  Every row has exactly
 * 26 values with weight 1, reserved once per row.
 */
#include "data/reader_impl.h"

/* XXH3 inlined here (the same function es_key calls), because hashing 26
 * short tokens a row through a call was a fifth of the parse time. */
#define XXH_INLINE_ALL
#include <xxhash.h>

#ifdef __SSE2__
#include <emmintrin.h>
#endif

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
    r->row_checks_text = 1;
    r->fixed_vals = CRITEO_CAT;
    return ES_OK;
}

/* Must equal es_key (tests compare them on real data). */
static inline uint64_t token_key(const char *s, size_t n) { return n ? XXH3_64bits(s, n) : ES_KEY_MISSING; }

/* Offsets of the tabs in s[0, n): the first `max` go to pos[], and the
 * total count is returned (so a line with too many columns is still counted
 * exactly).  One pass with 16-byte compares instead of a scan per field: the
 * field boundaries then cost no unpredictable branches.  The same pass
 * flags NUL and non-ASCII bytes (*suspect), so that the full NUL/UTF-8
 * check (es__text_check) runs only on lines that have them. */
int es__tab_index_ref(const char *s, size_t n, uint32_t *pos, int max, int *suspect) {
    int k = 0;
    unsigned sus = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        sus |= (c == 0) | (c >> 7);
        if (c == '\t') {
            if (k < max) pos[k] = (uint32_t)i;
            k++;
        }
    }
    *suspect = sus != 0;
    return k;
}

int es__tab_index(const char *s, size_t n, uint32_t *pos, int max, int *suspect) {
#ifdef __SSE2__
    const __m128i tab = _mm_set1_epi8('\t'), zero = _mm_setzero_si128();
    int k = 0;
    unsigned sus = 0;
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m128i v = _mm_loadu_si128((const __m128i *)(s + i));
        /* high bit set (non-ASCII) or a zero byte: the line needs the full
         * text check */
        sus |= (unsigned)_mm_movemask_epi8(v) | (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(v, zero));
        unsigned m = (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(v, tab));
        while (m) {
            if (k < max) pos[k] = (uint32_t)(i + (unsigned)__builtin_ctz(m));
            k++;
            m &= m - 1;
        }
    }
    int sus_tail;
    int rest = es__tab_index_ref(s + i, n - i, pos + ES_MIN(k, max), k < max ? max - k : 0, &sus_tail);
    for (int j = k; j < max && j < k + rest; j++) pos[j] += (uint32_t)i;
    *suspect = sus != 0 || sus_tail;
    return k + rest;
#else
    return es__tab_index_ref(s, n, pos, max, suspect);
#endif
}

/* A column-level error (the column count is already known to be right). */
static int col_err(es_reader *r, const es__line *ln, int col, const char *name, const char *what, const char *tok, size_t tlen) {
    char tb[200];
    const char *hint = es__label_hint(what);
    if (col == 1 && ln->no == 1 && !es__parse_num(tok, tlen, &(double){0}))
        hint = " (a header line? Criteo TSV files have none)";
    return es__row_err(r, ln, "column %d (%s): %s, got '%s'%s", col, name, what, es__tok(tb, sizeof tb, tok, tlen), hint);
}

int es__criteo_row(es_reader *r, const es__line *ln, char *s, size_t n, es_batch *b, int row, size_t *nv) {
    const int has_label = r->p.has_label ? 1 : 0;
    const int ncol = CRITEO_DENSE + CRITEO_CAT + has_label;
    /* bound[c] = offset where column c starts, bound[c+1] - 1 where it ends */
    uint32_t bound[CRITEO_DENSE + CRITEO_CAT + 2];
    int suspect;
    int tabs = es__tab_index(s, n, bound + 1, ncol - 1, &suspect);
    if (suspect) {
        const char *why;
        size_t bad = es__text_check(s, n, &why);
        if (bad < n) return es__row_err(r, ln, "column %zu: %s", bad + 1, why);
    }
    if (tabs != ncol - 1) {
        if (ln->err) { /* serial (re-)parse: note the shape for the model layer's hints */
            ln->sc->shape_got = tabs + 1;
            ln->sc->shape_want = ncol;
            ln->sc->shape_alt = es__count_byte(s, n, ',');
        }
        return es__row_err(r, ln, "expected %d tab-separated columns, got %d", ncol, tabs + 1);
    }
    bound[0] = 0;
    for (int c = 1; c < ncol; c++) bound[c] += 1; /* tab offset -> next column start */
    bound[ncol] = (uint32_t)n + 1;
#define COL_PTR(c) (s + bound[c])
#define COL_LEN(c) ((size_t)(bound[(c) + 1] - bound[c] - 1))
    float label = 0.0f;
    if (has_label) {
        const char *why;
        if (!es__parse_label(r, COL_PTR(0), COL_LEN(0), 0, &label, &why))
            return col_err(r, ln, 1, "label", why, COL_PTR(0), COL_LEN(0));
    }
    float *dense = b->dense + (size_t)row * CRITEO_DENSE;
    for (int k = 0; k < CRITEO_DENSE; k++) {
        int c = k + has_label;
        if (!es__num_feature(r, COL_PTR(c), COL_LEN(c), &dense[k]))
            return col_err(r, ln, c + 1, r->dense_names[k], "expected a number", COL_PTR(c), COL_LEN(c));
    }
    size_t v = *nv;
    if (v + CRITEO_CAT > b->val_cap) {
        int rc = es_batch_reserve_vals(b, v + CRITEO_CAT);
        if (rc) return rc;
    }
    uint64_t *val = b->val + v;
    float *wt = b->wt + v;
    uint32_t *off = b->off + (size_t)row * (size_t)r->n_fields; /* more than CRITEO_CAT with num_cat */
    for (int k = 0; k < CRITEO_CAT; k++) {
        int c = k + CRITEO_DENSE + has_label;
        val[k] = token_key(COL_PTR(c), COL_LEN(c));
        wt[k] = 1.0f;
        off[k + 1] = (uint32_t)(v + (size_t)k + 1);
    }
#undef COL_PTR
#undef COL_LEN
    v += CRITEO_CAT;
    b->label[row] = label;
    *nv = v;
    return ES_OK;
}
