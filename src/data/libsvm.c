/*
 * libsvm.c — the sparse text formats
 *   libsvm:  label idx:val idx:val ...          one multi-valued field
 *   libffm:  label field:idx:val ...            fields 0..n_fields-1
 * Terms are separated by spaces or tabs; a token starting with '#' ends the
 * line (svmlight comments).  The key of a term is es_key of its index text
 * and its pooling weight is its value (times 1/count with mean pooling), so
 * sum pooling gives sum_i val_i * E[idx_i], the usual sparse dot product.
 *
 * libffm terms may come in any field order (xLearn's files put field 17
 * before 16), so a line's terms are collected in a scratch list and placed
 * by field with a counting sort; the scratch grows amortised, like the
 * batch.  In messages "column N" is the 1-based byte position of the term.
 */
#include "data/reader_impl.h"

#include <math.h>

/* XXH3 inlined (the function es_key calls; index texts are never empty
 * here, so the key is XXH3 itself), as in criteo.c: a call per term showed
 * in the profile. */
#define XXH_INLINE_ALL
#include <xxhash.h>

static inline const char *skip_sp(const char *p, const char *end) {
    while (p < end && (*p == ' ' || *p == '\t')) p++;
    return p;
}
static inline const char *tok_end(const char *p, const char *end) {
    while (p < end && *p != ' ' && *p != '\t') p++;
    return p;
}
/* One term from *pp: *pp moves to its end (a space, a tab or end) and
 * col[] gets its first colons; returns how many (at most 3 are looked
 * for).  One pass over the bytes instead of a token scan and two memchr
 * calls per term, which were a third of the libffm parse time. */
static inline int scan_term(const char **pp, const char *end, const char **col) {
    const char *p = *pp;
    int nc = 0;
    static const unsigned char cls[256] = {[' '] = 1, ['\t'] = 1, [':'] = 2};
    for (; p < end; p++) {
        const unsigned c = cls[(unsigned char)*p];
        if (ES_LIKELY(c == 0)) continue;
        if (c == 1) break;
        if (nc < 3) col[nc++] = p;
    }
    *pp = p;
    return nc;
}

/* The label token at the start of a line; p is moved past it. */
static int parse_line_label(es_reader *r, const es__line *ln, const char *s, const char **pp, const char *end, float *label) {
    const char *p = skip_sp(*pp, end);
    const char *t = p;
    p = tok_end(p, end);
    const char *why;
    if (!es__parse_label(r, t, (size_t)(p - t), 1, label, &why)) {
        char tb[200];
        return es__row_err(r, ln, "column %zu: %s, got '%s'%s", (size_t)(t - s) + 1, why,
                           es__tok(tb, sizeof tb, t, (size_t)(p - t)), es__label_hint(why));
    }
    *pp = p;
    return ES_OK;
}

/* A term's value that is not plain digits: es__parse_num, and the message
 * when it is no finite number.  Out of line: the common case stays small. */
static __attribute__((noinline)) int parse_value_slow(es_reader *r, const es__line *ln, const char *s, const char *t, size_t tlen,
                                                      const char *v, size_t vlen, float *out) {
    double d;
    if (!es__parse_num(v, vlen, &d) || !isfinite((float)d)) {
        char tb[200];
        return es__row_err(r, ln, "column %zu: the value of term '%s' is not a finite number", (size_t)(t - s) + 1,
                           es__tok(tb, sizeof tb, t, tlen));
    }
    *out = (float)d;
    return ES_OK;
}

static inline int parse_value(es_reader *r, const es__line *ln, const char *s, const char *t, size_t tlen, const char *v, size_t vlen,
                              float *out) {
    /* 1 to 9 plain digits (counts and 0/1 flags, most values of real
     * files): the integer converts exactly as es__parse_num's double would
     * round to float */
    if (vlen - 1 < 9) {
        uint32_t u = 0;
        size_t i = 0;
        while (i < vlen && (unsigned)(v[i] - '0') < 10) u = u * 10 + (uint32_t)(v[i++] - '0');
        if (i == vlen) {
            *out = (float)u;
            return ES_OK;
        }
    }
    return parse_value_slow(r, ln, s, t, tlen, v, vlen, out);
}

/* The key of an index text (never empty): es_key, i.e. XXH3-64.  Indexes
 * are short, so the short-input branch is called directly: XXH3_64bits
 * itself was not inlined here and its call was a sixth of the libffm parse. */
static inline uint64_t index_key(const char *s, size_t n) {
    return ES_LIKELY(n <= 16) ? XXH3_len_0to16_64b((const xxh_u8 *)s, n, XXH3_kSecret, 0) : XXH3_64bits(s, n);
}

/* ---- libsvm ------------------------------------------------------------------------ */
int es__libsvm_setup(es_reader *r, es_err *err) {
    r->field_names = es__calloc(1, sizeof(char *));
    if (r->field_names) r->field_names[0] = es__strdup("features");
    r->n_fields = 1;
    if (!r->field_names || !r->field_names[0]) return es__err(err, ES_ENOMEM, "%s: out of memory", es__lineio_name(r->io));
    r->n_dense = 0;
    r->row = es__libsvm_row;
    return ES_OK;
}

int es__libsvm_row(es_reader *r, const es__line *ln, char *s, size_t n, es_batch *b, int row, size_t *nv) {
    const char *p = s, *end = s + n;
    float label;
    int rc = parse_line_label(r, ln, s, &p, end, &label);
    if (rc) return rc;
    size_t start = *nv, k = 0;
    for (;;) {
        p = skip_sp(p, end);
        if (p == end || *p == '#') break;
        const char *t = p, *col[3];
        const int nc = scan_term(&p, end, col);
        size_t tlen = (size_t)(p - t);
        char tb[200];
        if (nc == 0 || col[0] == t)
            return es__row_err(r, ln, "column %zu: expected index:value, got '%s'", (size_t)(t - s) + 1, es__tok(tb, sizeof tb, t, tlen));
        const char *colon = col[0], *v = colon + 1;
        if (nc > 1)
            return es__row_err(r, ln, "column %zu: term '%s' has three parts (a libffm file? set the format to libffm)",
                               (size_t)(t - s) + 1, es__tok(tb, sizeof tb, t, tlen));
        float w = 0.0f;
        rc = parse_value(r, ln, s, t, tlen, v, (size_t)(p - v), &w);
        if (rc) return rc;
        rc = es__push_val(b, nv, index_key(t, (size_t)(colon - t)), w);
        if (rc) return rc;
        k++;
    }
    if (r->p.pool == ES_POOL_MEAN && k > 1)
        for (size_t i = start; i < *nv; i++) b->wt[i] /= (float)k;
    b->off[(size_t)row + 1] = (uint32_t)*nv;
    b->label[row] = label;
    return ES_OK;
}

/* ---- libffm ------------------------------------------------------------------------ */
/* Up to 9 plain digits at *pp as an integer; *pp moves past them. Returns
 * the count of digits (0 if none, 10 when there are more than 9). */
static inline int digits9(const char **pp, const char *end, uint32_t *out) {
    const char *p = *pp, *e = end - p > 10 ? p + 10 : end;
    uint32_t u = 0;
    while (p < e && (unsigned)(*p - '0') < 10) u = u * 10 + (uint32_t)(*p++ - '0');
    *out = u;
    int nd = (int)(p - *pp);
    *pp = p;
    return nd;
}

/* Field number of a term: 1 to 9 digits. */
static bool parse_field(const char *s, size_t n, uint32_t *out) {
    const char *p = s;
    return n >= 1 && n <= 9 && digits9(&p, s + n, out) == (int)n;
}

/* The largest field number of the well-formed terms of the lines in
 * [s, e) (each line up to a '\n' or e; a line longer than max_line once
 * a trailing CR is dropped is passed over, as lineio discards it), -1 if
 * none; *lines = the lines seen. */
static long lines_max_field(char *b, char *e, size_t max_line, uint64_t *lines) {
    long maxf = -1;
    uint64_t nl = 0;
    while (b < e) {
        char *s;
        size_t n;
        es__cut_line(&b, e, &s, &n);
        nl++;
        if (n <= max_line) {
            const char *end = s + n, *p = tok_end(skip_sp(s, end), end); /* the label */
            for (;;) {
                p = skip_sp(p, end);
                if (p == end || *p == '#') break;
                const char *t = p, *col[3];
                uint32_t f;
                if (scan_term(&p, end, col) >= 2 && parse_field(t, (size_t)(col[0] - t), &f) && f < ES__MAX_FIELDS && (long)f > maxf)
                    maxf = f;
            }
        }
    }
    *lines = nl;
    return maxf;
}

int es__libffm_setup(es_reader *r, es_err *err) {
    const char *name = es__lineio_name(r->io);
    int nf = r->p.n_fields_hint;
    if (nf <= 0) {
        /* First pass: n_fields = largest field number + 1.  Malformed terms
         * are passed over here; the real pass reports them.  Whole blocks
         * of lines, each split at line starts over the reader's threads
         * (a maximum: the same for any split). */
        const int nt = r->p.threads > 0 ? r->p.threads : es__threads_get();
        long maxf = -1;
        for (;;) {
            char *blk;
            size_t len;
            int rc = es__lineio_next_block(r->io, &blk, &len, &r->err);
            if (rc == 0) break;
            if (rc == ES_ERANGE) continue;
            if (rc < 0) {
                if (err) *err = r->err;
                return rc;
            }
            const int parts = len >= ((size_t)1 << 16) ? nt : 1;
            uint64_t lines = 0;
ES__OMP(omp parallel for schedule(static) num_threads(parts) reduction(max : maxf) reduction(+ : lines) if (parts > 1))
            for (int t = 0; t < parts; t++) {
                /* part t: the lines starting in [len t / parts, len (t+1) / parts) */
                char *a = blk + len * (size_t)t / (size_t)parts, *z = blk + len * (size_t)(t + 1) / (size_t)parts;
                if (t > 0) {
                    char *nl = memchr(a - 1, '\n', (size_t)(blk + len - (a - 1)));
                    a = nl ? nl + 1 : blk + len;
                }
                if (t + 1 < parts) {
                    char *nl = memchr(z - 1, '\n', (size_t)(blk + len - (z - 1)));
                    z = nl ? nl + 1 : blk + len;
                } else {
                    z = blk + len;
                }
                uint64_t nl = 0;
                long m = a < z ? lines_max_field(a, z, r->p.max_line, &nl) : -1;
                if (m > maxf) maxf = m;
                lines += nl;
            }
            es__lineio_consumed(r->io, len, lines);
        }
        int rc = es__lineio_rewind(r->io, &r->err);
        if (rc)
            return es__err(err, rc, "%s: cannot go back after counting the libffm fields (%s); set n_fields_hint", name,
                           r->err.msg);
        nf = maxf >= 0 ? (int)maxf + 1 : 1;
    }
    r->sc.f_count = es__calloc((size_t)nf + 1, sizeof(uint32_t));
    if (!r->sc.f_count || es__make_names(&r->field_names, nf, "f", 0) != ES_OK)
        return es__err(err, ES_ENOMEM, "%s: out of memory", name);
    r->n_fields = nf;
    r->n_dense = 0;
    r->row = es__libffm_row;
    return ES_OK;
}

static int grow_terms(es__scratch *sc, size_t need) {
    if (need <= sc->t_cap) return ES_OK;
    size_t cap = sc->t_cap ? sc->t_cap : 64;
    while (cap < need) cap *= 2;
    uint32_t *f = es__realloc(sc->t_field, cap * sizeof *f);
    if (!f) return ES_ENOMEM;
    sc->t_field = f;
    uint64_t *k = es__realloc(sc->t_key, cap * sizeof *k);
    if (!k) return ES_ENOMEM;
    sc->t_key = k;
    float *w = es__realloc(sc->t_wt, cap * sizeof *w);
    if (!w) return ES_ENOMEM;
    sc->t_wt = w;
    sc->t_cap = cap;
    return ES_OK;
}

/* The well-formed term of most files, "field:index:value" with a field of
 * 1 to 9 digits, a non-empty index without ':', and a value of 1 to 9 plain
 * digits, read in one pass: *pp moves to the term's end.  Returns false for
 * anything else (the caller then reads the term with the general code,
 * which gives the same result or the error), without moving *pp. */
static inline bool fast_term(const char **pp, const char *end, uint32_t *field, const char **idx, size_t *idx_len, float *w) {
    const char *p = *pp;
    uint32_t f, u;
    int nd = digits9(&p, end, &f);
    if (nd == 0 || nd > 9 || p == end || *p != ':') return false;
    const char *a = ++p;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    /* the first ':', ' ' or '\t' among the next 8 bytes, in one word */
    if (end - a >= 8) {
        uint64_t x;
        memcpy(&x, a, 8);
        const uint64_t lo = UINT64_C(0x0101010101010101), hi = UINT64_C(0x8080808080808080);
        const uint64_t c = x ^ (lo * ':'), sp = x ^ (lo * ' '), tb = x ^ (lo * '\t');
        const uint64_t m = ((c - lo) & ~c) | ((sp - lo) & ~sp) | ((tb - lo) & ~tb);
        if (m & hi) p = a + (__builtin_ctzll(m & hi) >> 3);
        else
            for (p = a + 8; p < end && *p != ':' && *p != ' ' && *p != '\t';) p++;
    } else
#endif
        while (p < end && *p != ':' && *p != ' ' && *p != '\t') p++;
    if (p == end || *p != ':' || p == a) return false;
    *idx = a;
    *idx_len = (size_t)(p - a);
    p++;
    nd = digits9(&p, end, &u);
    if (nd == 0 || nd > 9 || (p < end && *p != ' ' && *p != '\t')) return false;
    *field = f;
    *w = (float)u;
    *pp = p;
    return true;
}

/* Any other term at *pp: its field, index text and value, or the error of
 * the first thing wrong with it; *pp moves to its end. */
static __attribute__((noinline)) int general_term(es_reader *r, const es__line *ln, const char *s, const char **pp, const char *end,
                                                  uint32_t *field, const char **idx, size_t *idx_len, float *w) {
    const char *t = *pp, *col[3];
    const int nc = scan_term(pp, end, col);
    const char *p = *pp;
    size_t tlen = (size_t)(p - t);
    char tb[200];
    if (nc < 2)
        return es__row_err(r, ln, "column %zu: expected field:index:value, got '%s'", (size_t)(t - s) + 1, es__tok(tb, sizeof tb, t, tlen));
    const char *c1 = col[0], *c2 = col[1];
    if (nc > 2)
        return es__row_err(r, ln, "column %zu: term '%s' has more than three parts", (size_t)(t - s) + 1, es__tok(tb, sizeof tb, t, tlen));
    if (!parse_field(t, (size_t)(c1 - t), field))
        return es__row_err(r, ln, "column %zu: the field of term '%s' is not a non-negative integer", (size_t)(t - s) + 1,
                           es__tok(tb, sizeof tb, t, tlen));
    const uint32_t F = (uint32_t)r->n_fields;
    if (*field >= F)
        return es__row_err(r, ln, "column %zu: field %u of term '%s' is out of range (n_fields = %u)", (size_t)(t - s) + 1, *field,
                           es__tok(tb, sizeof tb, t, tlen), F);
    if (c2 == c1 + 1)
        return es__row_err(r, ln, "column %zu: term '%s' has an empty index", (size_t)(t - s) + 1, es__tok(tb, sizeof tb, t, tlen));
    *idx = c1 + 1;
    *idx_len = (size_t)(c2 - c1 - 1);
    return parse_value(r, ln, s, t, tlen, c2 + 1, (size_t)(p - c2 - 1), w);
}

int es__libffm_row(es_reader *r, const es__line *ln, char *s, size_t n, es_batch *b, int row, size_t *nv) {
    const char *p = s, *end = s + n;
    const uint32_t F = (uint32_t)r->n_fields;
    es__scratch *sc = ln->sc;
    float label;
    int rc = parse_line_label(r, ln, s, &p, end, &label);
    if (rc) return rc;
    /* The terms go straight to the batch, in file order, their fields to
     * the scratch; a line whose fields are not in order is then placed by
     * field (stable within a field), the same result either way. */
    const size_t base = *nv;
    size_t k = 0;
    uint32_t last = 0;
    bool in_order = true;
    for (;;) {
        p = skip_sp(p, end);
        if (p == end || *p == '#') break;
        const char *t = p, *idx;
        size_t ilen;
        uint32_t f;
        float w;
        if (ES_LIKELY(fast_term(&p, end, &f, &idx, &ilen, &w))) {
            if (ES_UNLIKELY(f >= F)) { /* the general code's message */
                p = t;
                return general_term(r, ln, s, &p, end, &f, &idx, &ilen, &w);
            }
        } else {
            rc = general_term(r, ln, s, &p, end, &f, &idx, &ilen, &w);
            if (rc) return rc;
        }
        if (ES_UNLIKELY(k >= sc->t_cap) && (rc = grow_terms(sc, k + 1)) != 0) return rc;
        if (ES_UNLIKELY(base + k >= b->val_cap) && (rc = es_batch_reserve_vals(b, base + k + 1)) != 0) return rc;
        b->val[base + k] = index_key(idx, ilen);
        b->wt[base + k] = w;
        sc->t_field[k] = f;
        in_order &= f >= last;
        last = f;
        k++;
    }
    uint32_t *cnt = sc->f_count;
    memset(cnt, 0, ((size_t)F + 1) * sizeof *cnt);
    for (size_t i = 0; i < k; i++) cnt[sc->t_field[i] + 1]++;
    uint32_t *off = b->off + (size_t)row * F;
    for (uint32_t f = 0; f < F; f++) {
        cnt[f + 1] += cnt[f];
        off[f + 1] = (uint32_t)(base + cnt[f + 1]);
    }
    if (!in_order) {
        memcpy(sc->t_key, b->val + base, k * sizeof *sc->t_key);
        memcpy(sc->t_wt, b->wt + base, k * sizeof *sc->t_wt);
        for (size_t i = 0; i < k; i++) {
            size_t at = base + cnt[sc->t_field[i]]++;
            b->val[at] = sc->t_key[i];
            b->wt[at] = sc->t_wt[i];
        }
    }
    if (r->p.pool == ES_POOL_MEAN) {
        for (uint32_t f = 0; f < F; f++) {
            uint32_t c = off[f + 1] - off[f];
            if (c > 1)
                for (uint32_t j = off[f]; j < off[f + 1]; j++) b->wt[j] /= (float)c;
        }
    }
    *nv = base + k;
    b->label[row] = label;
    return ES_OK;
}
