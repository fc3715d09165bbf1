/*
 * gen_criteo.c — synthetic click log shaped like the Criteo display-ads
 * data (Kaggle "train.txt"): one row per line,
 *
 *     label \t I1 .. I13 \t C1 .. C26 \n
 *
 * so that speed benchmarks can run on any size without the real data set
 * (which cannot be shipped).  It is a stand-in for the *shape* of the data —
 * heavy-tailed counts, missing values, Zipf-distributed categorical values
 * over vocabularies from tens to a million — not for its statistics.
 *
 * Generative model (all of it deterministic from --seed):
 *   numerics   13 integer features, each of one family: lognormal counts,
 *              Pareto counts, or small counts with a few negative values
 *              (-1..-3, like Criteo's I2); 10-40 % of each are missing
 *              (empty field).
 *   categories 26 fields with vocabulary sizes log-spaced from 10 to 1e6
 *              (in a shuffled order); value ranks are drawn from a bounded
 *              power law P(rank = r) ~ r^-s (a discretised continuous power
 *              law, close to Zipf) with s in [1.05, 1.35] per field; 0-40 %
 *              of each field is empty.  Rank r of field f is written as 8 hex
 *              characters through a bijective 32-bit mixer, so tokens are
 *              distinct within a field and look like Criteo's.
 *   label      Bernoulli(sigmoid(b + sum_d a_d * t(x_d) + sum_f w_f(v_f)
 *              + sum over 6 field pairs u_fg(v_f, v_g))), where t is the
 *              log1p transform, w and u are pseudo-random normal weights
 *              derived by hashing (no tables, so any vocabulary size is
 *              free), and b is fitted on a 20k-row pilot so that the base
 *              rate is about 25 %.  The pairwise terms give factorisation
 *              and deep models something to find that LR cannot.
 *
 * Usage: gen_criteo [--rows N] [--bytes B] [--seed S] [--out FILE]
 *   --rows N    rows to write (default 100000; 0 = no row limit)
 *   --bytes B   stop before the output would exceed B bytes (suffixes k, M, G)
 *   --seed S    generator seed (default 1)
 *   --out FILE  output path (default: standard output)
 * At least one of --rows / --bytes must bound the output.
 *
 * Build: cc -O2 -o gen_criteo bench/gen_criteo.c -lm
 */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define N_DENSE 13
#define N_CAT 26
#define N_PAIRS 6

/* ---- random numbers: splitmix64 for seeding, xoshiro256** for streams ---- */
static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += UINT64_C(0x9e3779b97f4a7c15));
    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

typedef struct { uint64_t s[4]; } rng_t;

static void rng_seed(rng_t *r, uint64_t seed) {
    for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&seed);
}
static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
static inline uint64_t rng_u64(rng_t *r) {
    uint64_t *s = r->s;
    uint64_t out = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return out;
}
/* (0, 1): never 0, so logs and negative powers are safe. */
static inline double rng_unif(rng_t *r) { return ((double)(rng_u64(r) >> 11) + 0.5) * (1.0 / 9007199254740992.0); }
static double rng_normal(rng_t *r) {
    double u1 = rng_unif(r), u2 = rng_unif(r);
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

/* Stateless 64-bit hash of (a, b, c): the source of the hidden weights. */
static inline uint64_t hash3(uint64_t a, uint64_t b, uint64_t c) {
    uint64_t x = a * UINT64_C(0x9e3779b97f4a7c15) ^ rotl(b, 21) ^ rotl(c * UINT64_C(0xc2b2ae3d27d4eb4f), 42);
    return splitmix64(&x);
}
/* Approximately N(0, 1) from a hash: sum of four uniforms, rescaled
 * (variance of a sum of 4 U(0,1) is 1/3). */
static inline double hash_normal(uint64_t h) {
    double s = 0;
    for (int i = 0; i < 4; i++) s += (double)((h >> (16 * i)) & 0xffff) * (1.0 / 65536.0);
    return (s - 2.0) * 1.7320508075688772;
}

/* Bijective 32-bit mixer (each step is invertible), so distinct ranks give
 * distinct tokens within a field. */
static inline uint32_t mix32(uint32_t x) {
    x ^= x >> 16;
    x *= 0x7feb352du;
    x ^= x >> 15;
    x *= 0x846ca68bu;
    x ^= x >> 16;
    return x;
}

/* ---- the synthetic world -------------------------------------------------- */
typedef enum { NUM_LOGNORMAL, NUM_PARETO, NUM_SMALLNEG } num_kind;

typedef struct {
    num_kind kind;
    double p_missing;
    double a, b;       /* lognormal: mu, sigma; pareto: xm, alpha; smallneg: mean of the count */
    double weight;     /* label weight on the log1p-transformed value */
    double center;     /* typical transformed value, subtracted so the weight does not move the base rate much */
} num_spec;

typedef struct {
    uint32_t vocab;    /* ranks 1..vocab */
    double s;          /* power-law exponent (> 1) */
    double p_missing;
    double sigma;      /* spread of this field's per-value label weights */
    uint32_t salt;     /* token salt */
    /* precomputed for the inverse CDF of the bounded power law on [1, vocab + 1) */
    double lo, span;   /* lo = 1^(1-s) = 1, span = (vocab+1)^(1-s) - 1 */
} cat_spec;

typedef struct {
    num_spec num[N_DENSE];
    cat_spec cat[N_CAT];
    int pair[N_PAIRS][2];
    double pair_sigma[N_PAIRS];
    double bias;
    uint64_t wseed;    /* seed of the hashed weights */
} world_t;

static void world_init(world_t *w, uint64_t seed) {
    rng_t r;
    rng_seed(&r, seed ^ UINT64_C(0x5eed0fc1a551f1ed));
    w->wseed = rng_u64(&r);

    for (int d = 0; d < N_DENSE; d++) {
        num_spec *n = &w->num[d];
        n->p_missing = 0.10 + 0.30 * rng_unif(&r);
        if (d == 1) {
            n->kind = NUM_SMALLNEG;
            n->a = 2.0 + 20.0 * rng_unif(&r);
        } else if (d % 3 == 0) {
            n->kind = NUM_PARETO;
            n->a = 1.0 + 4.0 * rng_unif(&r);      /* xm */
            n->b = 0.8 + 1.2 * rng_unif(&r);      /* alpha: heavy tail */
        } else {
            n->kind = NUM_LOGNORMAL;
            n->a = 0.5 + 4.0 * rng_unif(&r);      /* mu */
            n->b = 0.7 + 1.3 * rng_unif(&r);      /* sigma */
        }
        n->weight = 0.25 * rng_normal(&r);
        n->center = 0;
    }

    /* Vocabulary sizes log-spaced 10 .. 1e6, assigned to fields in a
     * shuffled order so that big and small fields are interleaved. */
    int order[N_CAT];
    for (int i = 0; i < N_CAT; i++) order[i] = i;
    for (int i = N_CAT - 1; i > 0; i--) {
        int j = (int)(rng_u64(&r) % (uint64_t)(i + 1)), t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
    for (int f = 0; f < N_CAT; f++) {
        cat_spec *c = &w->cat[f];
        double e = 1.0 + 5.0 * (double)order[f] / (double)(N_CAT - 1);
        c->vocab = (uint32_t)llround(pow(10.0, e));
        c->s = 1.05 + 0.30 * rng_unif(&r);
        c->p_missing = (rng_unif(&r) < 0.4) ? 0.0 : 0.4 * rng_unif(&r);
        c->sigma = 0.15 + 0.6 * rng_unif(&r);
        c->salt = (uint32_t)rng_u64(&r);
        c->lo = 1.0;
        c->span = pow((double)c->vocab + 1.0, 1.0 - c->s) - 1.0;
    }
    for (int p = 0; p < N_PAIRS; p++) {
        int a = (int)(rng_u64(&r) % N_CAT), b;
        do b = (int)(rng_u64(&r) % N_CAT); while (b == a);
        w->pair[p][0] = a;
        w->pair[p][1] = b;
        w->pair_sigma[p] = 0.3 + 0.5 * rng_unif(&r);
    }
    w->bias = 0;
}

/* One value rank in [1, vocab] from the bounded power law (inverse CDF). */
static inline uint32_t draw_rank(const cat_spec *c, rng_t *r) {
    double u = rng_unif(r);
    double x = pow(c->lo + u * c->span, 1.0 / (1.0 - c->s));
    uint32_t k = (uint32_t)x;
    if (k < 1) k = 1;
    if (k > c->vocab) k = c->vocab;
    return k;
}

/* One numeric value; returns 0 and leaves *out alone when missing. */
static inline int draw_num(const num_spec *n, rng_t *r, long long *out) {
    if (rng_unif(r) < n->p_missing) return 0;
    double v;
    switch (n->kind) {
    case NUM_LOGNORMAL:
        v = floor(exp(n->a + n->b * rng_normal(r)));
        break;
    case NUM_PARETO:
        v = floor(n->a * pow(rng_unif(r), -1.0 / n->b) - n->a);
        break;
    default: { /* small counts (geometric) with a few -1..-3 */
        double u = rng_unif(r);
        if (u < 0.04) v = -1.0 - floor(3.0 * rng_unif(r));
        else v = floor(-n->a * log(rng_unif(r)));
        break;
    }
    }
    if (v > 1e12) v = 1e12;
    *out = (long long)v;
    return 1;
}

static inline double tlog(double x) { return x >= 0 ? log1p(x) : -log1p(-x); }

typedef struct {
    int has_num[N_DENSE];
    long long num[N_DENSE];
    uint32_t rank[N_CAT]; /* 0 = missing */
} row_t;

static void draw_row(const world_t *w, rng_t *r, row_t *row) {
    for (int d = 0; d < N_DENSE; d++) row->has_num[d] = draw_num(&w->num[d], r, &row->num[d]);
    for (int f = 0; f < N_CAT; f++) {
        const cat_spec *c = &w->cat[f];
        row->rank[f] = (c->p_missing > 0 && rng_unif(r) < c->p_missing) ? 0 : draw_rank(c, r);
    }
}

/* The hidden logit without the bias. */
static double row_logit(const world_t *w, const row_t *row) {
    double z = 0;
    for (int d = 0; d < N_DENSE; d++)
        if (row->has_num[d]) z += w->num[d].weight * (tlog((double)row->num[d]) - w->num[d].center);
    for (int f = 0; f < N_CAT; f++)
        z += w->cat[f].sigma * hash_normal(hash3(w->wseed, (uint64_t)f, row->rank[f]));
    for (int p = 0; p < N_PAIRS; p++) {
        int a = w->pair[p][0], b = w->pair[p][1];
        uint64_t key = ((uint64_t)row->rank[a] << 32) | row->rank[b];
        z += w->pair_sigma[p] * hash_normal(hash3(w->wseed ^ UINT64_C(0xabcdef), (uint64_t)(100 + p), key));
    }
    return z;
}

static double sigmoid(double z) { return 1.0 / (1.0 + exp(-z)); }

/* Centre the numeric terms and fit the bias on a pilot sample (its own
 * random stream) so that the mean click probability is about 25 %. */
static void world_calibrate(world_t *w, uint64_t seed) {
    enum { PILOT = 20000 };
    rng_t r;
    rng_seed(&r, seed ^ UINT64_C(0x1234567890abcdef));
    row_t row;
    double sum_t[N_DENSE] = {0};
    long cnt[N_DENSE] = {0};
    double *z = malloc(sizeof(double) * PILOT);
    if (!z) {
        fprintf(stderr, "gen_criteo: out of memory\n");
        exit(1);
    }
    for (int i = 0; i < PILOT; i++) {
        draw_row(w, &r, &row);
        for (int d = 0; d < N_DENSE; d++)
            if (row.has_num[d]) {
                sum_t[d] += tlog((double)row.num[d]);
                cnt[d]++;
            }
    }
    for (int d = 0; d < N_DENSE; d++) w->num[d].center = cnt[d] ? sum_t[d] / (double)cnt[d] : 0;
    rng_seed(&r, seed ^ UINT64_C(0x1234567890abcdef));
    for (int i = 0; i < PILOT; i++) {
        draw_row(w, &r, &row);
        z[i] = row_logit(w, &row);
    }
    double lo = -20, hi = 20;
    for (int it = 0; it < 60; it++) {
        double mid = 0.5 * (lo + hi), m = 0;
        for (int i = 0; i < PILOT; i++) m += sigmoid(z[i] + mid);
        if (m / PILOT > 0.25) hi = mid;
        else lo = mid;
    }
    w->bias = 0.5 * (lo + hi);
    free(z);
}

/* ---- fast output ----------------------------------------------------------- */
static char *put_ll(char *p, long long v) {
    char tmp[24];
    int n = 0;
    unsigned long long u;
    if (v < 0) {
        *p++ = '-';
        u = (unsigned long long)(-(v + 1)) + 1;
    } else u = (unsigned long long)v;
    do {
        tmp[n++] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    while (n) *p++ = tmp[--n];
    return p;
}
static char *put_hex8(char *p, uint32_t x) {
    static const char hex[] = "0123456789abcdef";
    for (int i = 7; i >= 0; i--) p[7 - i] = hex[(x >> (4 * i)) & 15];
    return p + 8;
}

static int parse_size(const char *s, unsigned long long *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || errno || v < 0) return -1;
    double mul = 1;
    if (*end == 'k' || *end == 'K') mul = 1e3, end++;
    else if (*end == 'M' || *end == 'm') mul = 1e6, end++;
    else if (*end == 'G' || *end == 'g') mul = 1e9, end++;
    if (*end) return -1;
    *out = (unsigned long long)(v * mul);
    return 0;
}

static void usage(FILE *f) {
    fprintf(f,
            "usage: gen_criteo [--rows N] [--bytes B] [--seed S] [--out FILE]\n"
            "  Writes a synthetic Criteo-shaped click log (label, 13 numerics, 26 categoricals, TSV).\n"
            "  --rows N    rows to write (default 100000; 0 = unbounded, needs --bytes)\n"
            "  --bytes B   stop before exceeding B bytes (suffixes k, M, G: powers of 1000)\n"
            "  --seed S    seed (default 1); the same seed gives the same file\n"
            "  --out FILE  output file (default stdout)\n");
}

int main(int argc, char **argv) {
    unsigned long long rows = 100000, bytes = 0, seed = 1;
    int rows_set = 0;
    const char *out_path = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "gen_criteo: %s needs a value (or unknown option)\n", a);
            usage(stderr);
            return 2;
        }
        const char *v = argv[++i];
        if (!strcmp(a, "--rows")) {
            if (parse_size(v, &rows)) goto bad;
            rows_set = 1;
        } else if (!strcmp(a, "--bytes")) {
            if (parse_size(v, &bytes)) goto bad;
        } else if (!strcmp(a, "--seed")) {
            if (parse_size(v, &seed)) goto bad;
        } else if (!strcmp(a, "--out")) {
            out_path = v;
        } else {
            fprintf(stderr, "gen_criteo: unknown option %s\n", a);
            usage(stderr);
            return 2;
        }
        continue;
    bad:
        fprintf(stderr, "gen_criteo: bad value '%s' for %s\n", v, a);
        return 2;
    }
    if (bytes && !rows_set) rows = 0;
    if (!rows && !bytes) {
        fprintf(stderr, "gen_criteo: --rows 0 needs --bytes\n");
        return 2;
    }

    FILE *out = stdout;
    if (out_path && !(out = fopen(out_path, "wb"))) {
        fprintf(stderr, "gen_criteo: cannot open %s: %s\n", out_path, strerror(errno));
        return 1;
    }

    world_t w;
    world_init(&w, seed);
    world_calibrate(&w, seed);

    rng_t r;
    rng_seed(&r, seed);
    enum { BUF = 1 << 20, LINE_MAX_BYTES = 1024 };
    char *buf = malloc(BUF);
    if (!buf) {
        fprintf(stderr, "gen_criteo: out of memory\n");
        return 1;
    }
    size_t used = 0;
    unsigned long long written = 0, n = 0;
    row_t row;
    char line[LINE_MAX_BYTES];
    for (; !rows || n < rows; n++) {
        draw_row(&w, &r, &row);
        double p = sigmoid(w.bias + row_logit(&w, &row));
        int label = rng_unif(&r) < p;
        char *q = line;
        *q++ = (char)('0' + label);
        for (int d = 0; d < N_DENSE; d++) {
            *q++ = '\t';
            if (row.has_num[d]) q = put_ll(q, row.num[d]);
        }
        for (int f = 0; f < N_CAT; f++) {
            *q++ = '\t';
            if (row.rank[f]) q = put_hex8(q, mix32(row.rank[f] ^ w.cat[f].salt));
        }
        *q++ = '\n';
        size_t len = (size_t)(q - line);
        if (bytes && written + len > bytes) break;
        if (used + len > BUF) {
            if (fwrite(buf, 1, used, out) != used) goto werr;
            used = 0;
        }
        memcpy(buf + used, line, len);
        used += len;
        written += len;
    }
    if (used && fwrite(buf, 1, used, out) != used) goto werr;
    if (fflush(out) || (out != stdout && fclose(out))) goto werr;
    free(buf);
    fprintf(stderr, "gen_criteo: %llu rows, %llu bytes, seed %llu\n", n, written, seed);
    return 0;
werr:
    fprintf(stderr, "gen_criteo: write failed: %s\n", strerror(errno));
    return 1;
}
