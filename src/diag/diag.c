/*
 * diag.c — diagnostics of a set of vectors x[n, d] (issue 13): the
 * singular value spectrum and effective rank (RankMe), intrinsic dimension
 * (TwoNN, Levina-Bickel MLE), the Vendi score (cosine kernel), dead and
 * near-duplicate rows.  Contracts are in embstore.h; definitions,
 * references and how to read the numbers in docs/diagnostics.md.
 *
 * Numerics: everything is accumulated in double.  The spectrum comes from
 * the d x d Gram matrix when n > 4 d (one pass over x, dsyrk over blocks
 * of rows converted to double, then dsyevd: O(n d^2)), else from dgesdd on
 * a double copy (O(n d min(n, d))); squaring the singular values costs
 * relative precision only below ~1e-8 sigma_1, far under anything the
 * measures react to.  Nearest neighbours are exact: squared L2 with the
 * index kernel es__l2sq_x4 over every pair of the sample (O(m^2 d)),
 * queries spread over OpenMP threads in static ranges (each query's result
 * depends only on its own scan, so results do not depend on the thread
 * count).
 */
#include "diag/diag.h"

#include "core/simd.h"
#include "index/distance.h"

#include <cblas.h>
#include <float.h>
#include <lapacke.h>
#include <math.h>

#define DIAG_EPS 1e-7 /* RankMe's epsilon */
#define DIAG_MAX_DIM (1 << 20)

es_diag_params es_diag_params_default(void) {
    es_diag_params p;
    memset(&p, 0, sizeof p);
    p.k = 20;
    p.sample = 10000;
    p.seed = 1;
    p.top_k = 10;
    p.dead_rel = 1e-3;
    p.dup_cos = 0.999;
    p.threads = 0;
    return p;
}

int es__diag_check(const float *x, size_t n, int d, const es_diag_params *p, es_err *err) {
    if (n == 0) return es__err(err, ES_EINVAL, "diagnose: no vectors (n = 0)");
    if (d < 1 || d > DIAG_MAX_DIM) return es__err(err, ES_EINVAL, "diagnose: dimension %d outside [1, %d]", d, DIAG_MAX_DIM);
    if (!x) return es__err(err, ES_EINVAL, "diagnose: x is NULL");
    size_t nd;
    if (!es__mul_size(n, (size_t)d, &nd)) return es__err(err, ES_ERANGE, "diagnose: %zu x %d values overflow", n, d);
    for (size_t i = 0; i < nd; i++)
        if (!isfinite(x[i]))
            return es__err(err, ES_EINVAL, "diagnose: row %zu, column %zu is %s (values must be finite)", i / (size_t)d,
                           i % (size_t)d, isnan(x[i]) ? "NaN" : "infinite");
    if (p) {
        if (p->k < 3 || p->k > 1000) return es__err(err, ES_EINVAL, "diagnose: k = %d neighbours outside [3, 1000]", p->k);
        if (p->top_k < 1) return es__err(err, ES_EINVAL, "diagnose: top_k = %d (need >= 1)", p->top_k);
        if (!(p->dead_rel >= 0 && p->dead_rel < 1))
            return es__err(err, ES_EINVAL, "diagnose: dead_rel = %g outside [0, 1)", p->dead_rel);
        if (!(p->dup_cos > -1 && p->dup_cos <= 1))
            return es__err(err, ES_EINVAL, "diagnose: dup_cos = %g outside (-1, 1]", p->dup_cos);
        if (p->threads < 0) return es__err(err, ES_EINVAL, "diagnose: threads = %d", p->threads);
    }
    return ES_OK;
}

static int n_threads(const es_diag_params *p) {
    int t = p && p->threads > 0 ? p->threads : es__threads_get();
    return t > 0 ? t : 1;
}

/* ---- spectrum ------------------------------------------------------------ */

/* Descending singular values of x (minus mean when mean != NULL) into
 * sv[min(n, d)]; *method names the route. */
static int singular_values(const float *x, size_t n, int d, const double *mean, double *sv, const char **method, es_err *err) {
    const size_t m = n < (size_t)d ? n : (size_t)d;
    if (n > 4 * (size_t)d) {
        /* Gram in double: blocks of rows, converted, then dsyrk. */
        const size_t B = 1024;
        double *G = es__calloc((size_t)d * d, sizeof(double));
        double *buf = es__malloc(B * (size_t)d * sizeof(double));
        double *w = es__malloc((size_t)d * sizeof(double));
        if (!G || !buf || !w) {
            es__free(G), es__free(buf), es__free(w);
            return es__err(err, ES_ENOMEM, "diagnose: out of memory for the %d x %d Gram matrix", d, d);
        }
        for (size_t r0 = 0; r0 < n; r0 += B) {
            size_t rb = n - r0 < B ? n - r0 : B;
            for (size_t i = 0; i < rb; i++)
                for (int j = 0; j < d; j++)
                    buf[i * d + j] = (double)x[(r0 + i) * d + j] - (mean ? mean[j] : 0.0);
            cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, d, (int)rb, 1.0, buf, d, 1.0, G, d);
        }
        lapack_int info = LAPACKE_dsyevd(LAPACK_ROW_MAJOR, 'N', 'U', d, G, d, w);
        if (info == 0)
            for (int i = 0; i < d; i++) sv[i] = sqrt(w[d - 1 - i] > 0 ? w[d - 1 - i] : 0.0);
        es__free(G), es__free(buf), es__free(w);
        if (info != 0) return es__err(err, ES_EINVAL, "diagnose: dsyevd failed (info %d)", (int)info);
        *method = "gram";
        return ES_OK;
    }
    size_t nd = n * (size_t)d;
    double *a = es__malloc(nd * sizeof(double));
    if (!a) return es__err(err, ES_ENOMEM, "diagnose: out of memory for a %zu x %d copy", n, d);
    for (size_t i = 0; i < n; i++)
        for (int j = 0; j < d; j++) a[i * d + j] = (double)x[i * d + j] - (mean ? mean[j] : 0.0);
    /* jobz 'N': u and vt are not referenced, but LAPACKE checks their
     * leading dimensions against the row-major shapes */
    lapack_int info = LAPACKE_dgesdd(LAPACK_ROW_MAJOR, 'N', (lapack_int)n, d, a, d, sv, NULL, (lapack_int)n, NULL, d);
    es__free(a);
    if (info != 0) return es__err(err, ES_EINVAL, "diagnose: dgesdd failed (info %d)", (int)info);
    for (size_t i = 0; i < m; i++)
        if (!(sv[i] >= 0)) sv[i] = 0;
    *method = "gesdd";
    return ES_OK;
}

double es__diag_rankme(const double *sv, int m) {
    double l1 = 0;
    for (int i = 0; i < m; i++) l1 += sv[i];
    if (!(l1 > 0)) return 0;
    double h = 0;
    for (int i = 0; i < m; i++) {
        double pk = sv[i] / l1 + DIAG_EPS;
        h -= pk * log(pk);
    }
    return exp(h);
}

int es_diag_compute_spectrum(const float *x, size_t n, int d, const es_diag_params *p, es_diag_spectrum *out, es_err *err) {
    if (!out) return es__err(err, ES_EINVAL, "diagnose: out is NULL");
    memset(out, 0, sizeof *out);
    es_diag_params def = es_diag_params_default();
    if (!p) p = &def;
    int rc = es__diag_check(x, n, d, p, err);
    if (rc) return rc;
    const int m = (int)(n < (size_t)d ? n : (size_t)d);
    double *sv = es__calloc((size_t)m, sizeof(double));
    double *svc = es__calloc((size_t)m, sizeof(double));
    double *mean = es__calloc((size_t)d, sizeof(double));
    if (!sv || !svc || !mean) {
        es__free(sv), es__free(svc), es__free(mean);
        return es__err(err, ES_ENOMEM, "diagnose: out of memory");
    }
    const char *method = NULL, *mc = NULL;
    rc = singular_values(x, n, d, NULL, sv, &method, err);
    if (!rc) {
        for (size_t i = 0; i < n; i++)
            for (int j = 0; j < d; j++) mean[j] += x[i * d + j];
        for (int j = 0; j < d; j++) mean[j] /= (double)n;
        rc = singular_values(x, n, d, mean, svc, &mc, err);
    }
    if (rc) {
        es__free(sv), es__free(svc), es__free(mean);
        return rc;
    }
    out->n = n;
    out->d = d;
    out->m = m;
    out->sv = sv;
    out->method = method;
    out->erank = es__diag_rankme(sv, m);
    out->erank_centered = es__diag_rankme(svc, m);
    double l1 = 0, l2 = 0;
    for (int i = 0; i < m; i++) l1 += sv[i], l2 += sv[i] * sv[i];
    out->nuclear = l1;
    out->frobenius = sqrt(l2);
    out->nuclear_norm = l2 > 0 ? l1 / (sqrt(l2) * sqrt((double)m)) : 0;
    double tol = sv[0] * (double)(n > (size_t)d ? n : (size_t)d) * FLT_EPSILON;
    int rank = 0;
    for (int i = 0; i < m; i++)
        if (sv[i] > tol) rank++;
    out->rank = rank;
    out->condition = (sv[0] > 0 && sv[m - 1] > tol) ? sv[0] / sv[m - 1] : 0;
    out->top_k = p->top_k < m ? p->top_k : m;
    double cum = 0;
    out->k90 = out->k99 = 0;
    for (int i = 0; i < m; i++) {
        cum += sv[i] * sv[i];
        double share = l2 > 0 ? cum / l2 : 0;
        if (i + 1 == out->top_k) out->energy_top_k = share;
        if (!out->k90 && share >= 0.9 - 1e-12) out->k90 = i + 1;
        if (!out->k99 && share >= 0.99 - 1e-12) out->k99 = i + 1;
    }
    if (l2 == 0) out->k90 = out->k99 = 0;
    es__free(svc);
    es__free(mean);
    return ES_OK;
}

void es_diag_spectrum_free(es_diag_spectrum *s) {
    if (!s) return;
    es__free(s->sv);
    memset(s, 0, sizeof *s);
}

/* ---- Vendi --------------------------------------------------------------- */

int es_diag_compute_vendi(const float *x, size_t n, int d, const es_diag_params *p, double *out, es_err *err) {
    if (!out) return es__err(err, ES_EINVAL, "diagnose: out is NULL");
    *out = 0;
    int rc = es__diag_check(x, n, d, p, err);
    if (rc) return rc;
    size_t nz = 0;
    for (size_t i = 0; i < n; i++) {
        double s = 0;
        for (int j = 0; j < d; j++) s += (double)x[i * d + j] * x[i * d + j];
        if (s > 0) nz++;
    }
    if (nz == 0) return es__err(err, ES_EINVAL, "diagnose: Vendi score: every row is zero (cosine undefined)");
    /* U: the unit rows; K/n' = U U^T / n' (n' x n') or C = U^T U / n' (d x d). */
    const int small = nz <= (size_t)d;
    const size_t S = small ? nz : (size_t)d;
    const size_t B = small ? nz : 1024;
    double *G = es__calloc(S * S, sizeof(double));
    double *buf = es__malloc(B * (size_t)d * sizeof(double));
    double *w = es__malloc(S * sizeof(double));
    if (!G || !buf || !w) {
        es__free(G), es__free(buf), es__free(w);
        return es__err(err, ES_ENOMEM, "diagnose: out of memory for the Vendi kernel");
    }
    size_t filled = 0;
    for (size_t i = 0; i < n; i++) {
        double s = 0;
        for (int j = 0; j < d; j++) s += (double)x[i * d + j] * x[i * d + j];
        if (!(s > 0)) continue;
        double inv = 1.0 / sqrt(s);
        for (int j = 0; j < d; j++) buf[filled * d + j] = x[i * d + j] * inv;
        if (++filled == B && !small) {
            cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, d, (int)filled, 1.0, buf, d, 1.0, G, d);
            filled = 0;
        }
    }
    if (small) cblas_dsyrk(CblasRowMajor, CblasUpper, CblasNoTrans, (int)S, d, 1.0, buf, d, 0.0, G, (int)S);
    else if (filled) cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, d, (int)filled, 1.0, buf, d, 1.0, G, d);
    for (size_t i = 0; i < S * S; i++) G[i] /= (double)nz;
    lapack_int info = LAPACKE_dsyevd(LAPACK_ROW_MAJOR, 'N', 'U', (lapack_int)S, G, (lapack_int)S, w);
    double h = 0;
    if (info == 0)
        for (size_t i = 0; i < S; i++)
            if (w[i] > 0) h -= w[i] * log(w[i]);
    es__free(G), es__free(buf), es__free(w);
    if (info != 0) return es__err(err, ES_EINVAL, "diagnose: dsyevd failed (info %d)", (int)info);
    *out = exp(h);
    return ES_OK;
}

/* ---- sample, duplicates, kNN ----------------------------------------------- */

void es__diag_knn_free(es__diag_nn *k) {
    if (!k) return;
    es__free(k->x), es__free(k->idx), es__free(k->norm), es__free(k->dup_later), es__free(k->has_equal);
    es__free(k->d2), es__free(k->maxcos);
    memset(k, 0, sizeof *k);
}

typedef struct {
    uint64_t h;
    size_t i;
} hrow;

static int hrow_cmp(const void *a, const void *b) {
    const hrow *x = a, *y = b;
    if (x->h != y->h) return x->h < y->h ? -1 : 1;
    return x->i < y->i ? -1 : x->i > y->i;
}

static int size_cmp(const void *a, const void *b) {
    size_t x = *(const size_t *)a, y = *(const size_t *)b;
    return x < y ? -1 : x > y;
}

/* Insert distance v with index j into the ascending list d2[0..*cnt) of capacity k. */
static inline void topk_insert(float *d2, int *cnt, int k, float v) {
    int c = *cnt;
    if (c == k && v >= d2[k - 1]) return;
    int pos = c < k ? c : k - 1;
    while (pos > 0 && d2[pos - 1] > v) {
        d2[pos] = d2[pos - 1];
        pos--;
    }
    d2[pos] = v;
    if (c < k) *cnt = c + 1;
}

int es__diag_knn_scan(const float *x, size_t n, int d, const es_diag_params *p, int k, es__diag_nn *out, es_err *err) {
    memset(out, 0, sizeof *out);
    size_t m = (p->sample && p->sample < n) ? p->sample : n;
    out->m = m;
    out->d = d;
    out->idx = es__malloc(m * sizeof(size_t));
    out->x = es__malloc(m * (size_t)d * sizeof(float));
    out->norm = es__malloc(m * sizeof(double));
    out->dup_later = es__calloc(m, 1);
    out->has_equal = es__calloc(m, 1);
    out->maxcos = es__malloc(m * sizeof(float));
    hrow *hr = es__malloc(m * sizeof(hrow));
    if (!out->idx || !out->x || !out->norm || !out->dup_later || !out->has_equal || !out->maxcos || !hr) {
        es__free(hr);
        es__diag_knn_free(out);
        return es__err(err, ES_ENOMEM, "diagnose: out of memory for a sample of %zu rows", m);
    }
    if (m == n) {
        for (size_t i = 0; i < n; i++) out->idx[i] = i;
    } else {
        /* Floyd's sampling without replacement would need a set; a partial
         * Fisher-Yates over an index array is simpler and O(n) memory. */
        size_t *perm = es__malloc(n * sizeof(size_t));
        if (!perm) {
            es__free(hr);
            es__diag_knn_free(out);
            return es__err(err, ES_ENOMEM, "diagnose: out of memory sampling %zu of %zu rows", m, n);
        }
        for (size_t i = 0; i < n; i++) perm[i] = i;
        es_rng rng;
        es__rng_seed(&rng, p->seed);
        for (size_t i = 0; i < m; i++) {
            size_t j = i + (size_t)es__range(es__rng_u64(&rng), n - i);
            size_t t = perm[i];
            perm[i] = perm[j];
            perm[j] = t;
        }
        memcpy(out->idx, perm, m * sizeof(size_t));
        es__free(perm);
        qsort(out->idx, m, sizeof(size_t), size_cmp);
    }
    for (size_t i = 0; i < m; i++) {
        float *r = out->x + i * d;
        memcpy(r, x + out->idx[i] * d, (size_t)d * sizeof(float));
        double s = 0;
        for (int j = 0; j < d; j++) {
            if (r[j] == 0) r[j] = 0; /* -0 -> +0: equal rows hash equal */
            s += (double)r[j] * r[j];
        }
        out->norm[i] = sqrt(s);
        hr[i].h = es__hash(r, (size_t)d * sizeof(float), 0x5eed);
        hr[i].i = i;
    }
    /* Exact duplicates: sort by hash, confirm with memcmp. */
    qsort(hr, m, sizeof(hrow), hrow_cmp);
    for (size_t a = 0; a < m;) {
        size_t b = a + 1;
        while (b < m && hr[b].h == hr[a].h) b++;
        for (size_t u = a; u < b; u++)
            for (size_t v = a; v < u; v++) {
                size_t iu = hr[u].i, iv = hr[v].i;
                if (memcmp(out->x + iu * d, out->x + iv * d, (size_t)d * sizeof(float)) == 0) {
                    out->has_equal[iu] = out->has_equal[iv] = 1;
                    /* hr is sorted by index within a hash, so iv < iu */
                    out->dup_later[iu] = 1;
                }
            }
        a = b;
    }
    es__free(hr);
    size_t nd = 0;
    for (size_t i = 0; i < m; i++) nd += !out->dup_later[i];
    out->n_distinct = nd;
    out->k = k < (int)(nd > 0 ? nd - 1 : 0) ? k : (int)(nd > 0 ? nd - 1 : 0);
    const int kk = out->k;
    if (kk > 0) {
        size_t cells;
        if (!es__mul_size(m, (size_t)kk, &cells) || !(out->d2 = es__malloc(cells * sizeof(float)))) {
            es__diag_knn_free(out);
            return es__err(err, ES_ENOMEM, "diagnose: out of memory for %zu x %d neighbours", m, kk);
        }
    }
    /* The distinct rows are the references; each distinct row a query. */
    size_t *ref = es__malloc((nd ? nd : 1) * sizeof(size_t));
    if (!ref) {
        es__diag_knn_free(out);
        return es__err(err, ES_ENOMEM, "diagnose: out of memory");
    }
    for (size_t i = 0, c = 0; i < m; i++)
        if (!out->dup_later[i]) ref[c++] = i;
    const float *X = out->x;
    const double *nrm = out->norm;
    float *D2 = out->d2;
    float *MC = out->maxcos;
    const uint8_t *has_eq = out->has_equal;
    const int nt = n_threads(p);
    (void)nt;
    ES__OMP(omp parallel for schedule(dynamic, 16) num_threads(nt))
    for (size_t qi = 0; qi < nd; qi++) {
        const size_t i = ref[qi];
        const float *q = X + i * d;
        float *best = kk > 0 ? D2 + i * (size_t)kk : NULL;
        int cnt = 0;
        double ni = nrm[i], mc = has_eq[i] ? 1.0 : -2.0;
        size_t r = 0;
        float dd[4];
        for (; r + 4 <= nd; r += 4) {
            es__l2sq_x4(q, X + ref[r] * d, X + ref[r + 1] * d, X + ref[r + 2] * d, X + ref[r + 3] * d, (size_t)d, dd);
            for (int u = 0; u < 4; u++) {
                size_t j = ref[r + u];
                if (j == i || !(dd[u] > 0)) continue;
                if (kk > 0) topk_insert(best, &cnt, kk, dd[u]);
                double nj = nrm[j];
                if (ni > 0 && nj > 0) {
                    double c = (ni * ni + nj * nj - (double)dd[u]) / (2 * ni * nj);
                    if (c > mc) mc = c;
                }
            }
        }
        for (; r < nd; r++) {
            size_t j = ref[r];
            if (j == i) continue;
            float v = es__l2sq(q, X + j * d, (size_t)d);
            if (!(v > 0)) continue;
            if (kk > 0) topk_insert(best, &cnt, kk, v);
            double nj = nrm[j];
            if (ni > 0 && nj > 0) {
                double c = (ni * ni + nj * nj - (double)v) / (2 * ni * nj);
                if (c > mc) mc = c;
            }
        }
        for (int u = cnt; u < kk; u++) best[u] = INFINITY; /* only when float distances underflowed to 0 */
        MC[i] = (float)(mc > 1 ? 1 : mc);
    }
    /* a later copy's largest cosine is its copy's: 1 (when not zero) */
    for (size_t i = 0; i < m; i++)
        if (out->dup_later[i]) MC[i] = out->norm[i] > 0 ? 1.0f : -2.0f;
    es__free(ref);
    return ES_OK;
}

/* ---- intrinsic dimension ---------------------------------------------------- */

static int dbl_cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* numpy's default ('linear') quantile of sorted v[n]. */
static double quantile(const double *v, size_t n, double q) {
    double pos = q * (double)(n - 1);
    size_t lo = (size_t)floor(pos);
    if (lo + 1 >= n) return v[n - 1];
    double f = pos - (double)lo;
    return v[lo] + f * (v[lo + 1] - v[lo]);
}

int es__diag_id_from_knn(const es__diag_nn *kn, int k, es_diag_id *out, char *note, size_t note_cap) {
    memset(out, 0, sizeof *out);
    out->k = k;
    const size_t N = kn->n_distinct;
    out->n_used = N;
    if (N < (size_t)k + 1 || kn->k < k) {
        snprintf(note, note_cap, "needs %d distinct rows (k + 1), found %zu", k + 1, N);
        return ES_EINVAL;
    }
    double *mu = es__malloc(N * sizeof(double)), *inv = es__malloc(N * sizeof(double)), *loc = es__malloc(N * sizeof(double));
    if (!mu || !inv || !loc) {
        es__free(mu), es__free(inv), es__free(loc);
        snprintf(note, note_cap, "out of memory");
        return ES_ENOMEM;
    }
    size_t c = 0, nloc = 0;
    double S = 0, sinv = 0, sinv2 = 0, slb = 0;
    for (size_t i = 0; i < kn->m; i++) {
        if (kn->dup_later[i]) continue;
        const float *d2 = kn->d2 + i * (size_t)kn->k;
        double lm = 0.5 * log((double)d2[1] / (double)d2[0]);
        if (!isfinite(lm)) lm = 0; /* an underflowed distance: count as a tie */
        mu[c] = lm;
        S += lm;
        double a = 0, tk = log((double)d2[k - 1]);
        for (int j = 0; j < k - 1; j++) a += 0.5 * (tk - log((double)d2[j]));
        a /= (double)(k - 1);
        if (!isfinite(a)) a = 0;
        inv[c] = a;
        sinv += a;
        sinv2 += a * a;
        if (a > 0) {
            loc[nloc++] = 1.0 / a;
            slb += 1.0 / a;
        }
        c++;
    }
    int rc = ES_OK;
    if (!(S > 0) || !(sinv > 0)) {
        snprintf(note, note_cap, "every neighbour distance is tied (a lattice or a few repeated distances)");
        rc = ES_EINVAL;
        goto done;
    }
    out->twonn = (double)(N - 1) / S;
    out->twonn_lo = out->twonn * (1 - 1.96 / sqrt((double)N));
    out->twonn_hi = out->twonn * (1 + 1.96 / sqrt((double)N));
    if (out->twonn_lo < 0) out->twonn_lo = 0;
    /* linear fit through the origin, largest 10% of mu discarded */
    qsort(mu, N, sizeof(double), dbl_cmp);
    size_t keep = (size_t)floor(0.9 * (double)N);
    double sxy = 0, sxx = 0;
    for (size_t i = 0; i < keep; i++) {
        double F = (double)i / (double)N, y = -log(1 - F);
        sxy += mu[i] * y;
        sxx += mu[i] * mu[i];
    }
    out->twonn_fit = sxx > 0 ? sxy / sxx : 0;
    double mi = sinv / (double)N;
    double var = N > 1 ? (sinv2 - (double)N * mi * mi) / (double)(N - 1) : 0;
    double se = sqrt(var > 0 ? var : 0) / sqrt((double)N);
    out->mle = 1.0 / mi;
    out->mle_lo = out->mle - 1.96 * out->mle * out->mle * se;
    out->mle_hi = out->mle + 1.96 * out->mle * out->mle * se;
    if (out->mle_lo < 0) out->mle_lo = 0;
    out->mle_lb = nloc ? slb / (double)nloc : 0;
    if (nloc) {
        qsort(loc, nloc, sizeof(double), dbl_cmp);
        const double qs[5] = {0.05, 0.25, 0.5, 0.75, 0.95};
        for (int i = 0; i < 5; i++) out->local_q[i] = quantile(loc, nloc, qs[i]);
    }
done:
    es__free(mu), es__free(inv), es__free(loc);
    return rc;
}

int es_diag_compute_id(const float *x, size_t n, int d, const es_diag_params *p, es_diag_id *out, es_err *err) {
    if (!out) return es__err(err, ES_EINVAL, "diagnose: out is NULL");
    memset(out, 0, sizeof *out);
    es_diag_params def = es_diag_params_default();
    if (!p) p = &def;
    int rc = es__diag_check(x, n, d, p, err);
    if (rc) return rc;
    es__diag_nn kn;
    if ((rc = es__diag_knn_scan(x, n, d, p, p->k, &kn, err)) != 0) return rc;
    char note[160] = "";
    rc = es__diag_id_from_knn(&kn, p->k, out, note, sizeof note);
    es__diag_knn_free(&kn);
    if (rc) return es__err(err, rc, "diagnose: intrinsic dimension: %s", note);
    return ES_OK;
}

/* ---- rows ---------------------------------------------------------------- */

static int row_norms(const float *x, size_t n, int d, const es_diag_params *p, es_diag_rows *out, es_err *err) {
    double *nr = es__malloc(n * sizeof(double));
    if (!nr) return es__err(err, ES_ENOMEM, "diagnose: out of memory for %zu norms", n);
    double sum = 0;
    out->n = n;
    out->zero = 0;
    for (size_t i = 0; i < n; i++) {
        double s = 0;
        for (int j = 0; j < d; j++) s += (double)x[i * d + j] * x[i * d + j];
        nr[i] = sqrt(s);
        sum += nr[i];
        if (s == 0) out->zero++;
    }
    double *sorted = es__malloc(n * sizeof(double));
    if (!sorted) {
        es__free(nr);
        return es__err(err, ES_ENOMEM, "diagnose: out of memory for %zu norms", n);
    }
    memcpy(sorted, nr, n * sizeof(double));
    qsort(sorted, n, sizeof(double), dbl_cmp);
    out->norm_min = sorted[0];
    out->norm_max = sorted[n - 1];
    out->norm_median = quantile(sorted, n, 0.5);
    out->norm_mean = sum / (double)n;
    double thr = p->dead_rel * out->norm_median;
    out->dead = 0;
    for (size_t i = 0; i < n; i++)
        if (nr[i] == 0 || nr[i] < thr) out->dead++;
    es__free(nr), es__free(sorted);
    return ES_OK;
}

void es__diag_dups(const es__diag_nn *kn, const es_diag_params *p, es_diag_rows *out) {
    out->sampled = kn->m;
    out->dup_exact = out->dup_near = 0;
    double *mc = es__malloc((kn->m ? kn->m : 1) * sizeof(double));
    size_t nmc = 0;
    for (size_t i = 0; i < kn->m; i++) {
        if (kn->has_equal[i]) out->dup_exact++;
        if (kn->has_equal[i] || (kn->norm[i] > 0 && kn->maxcos[i] > p->dup_cos)) out->dup_near++;
        if (mc && kn->maxcos[i] >= -1) mc[nmc++] = kn->maxcos[i];
    }
    out->max_cos_median = 0;
    if (mc && nmc) {
        qsort(mc, nmc, sizeof(double), dbl_cmp);
        out->max_cos_median = quantile(mc, nmc, 0.5);
    }
    es__free(mc);
}

int es_diag_compute_rows(const float *x, size_t n, int d, const es_diag_params *p, es_diag_rows *out, es_err *err) {
    if (!out) return es__err(err, ES_EINVAL, "diagnose: out is NULL");
    memset(out, 0, sizeof *out);
    es_diag_params def = es_diag_params_default();
    if (!p) p = &def;
    int rc = es__diag_check(x, n, d, p, err);
    if (rc || (rc = row_norms(x, n, d, p, out, err)) != 0) return rc;
    es__diag_nn kn;
    if ((rc = es__diag_knn_scan(x, n, d, p, 0, &kn, err)) != 0) return rc;
    es__diag_dups(&kn, p, out);
    es__diag_knn_free(&kn);
    return ES_OK;
}

/* ---- everything ---------------------------------------------------------- */

int es_diag_run(const float *x, size_t n, int d, const es_diag_params *p, es_diag_report *out, es_err *err) {
    if (!out) return es__err(err, ES_EINVAL, "diagnose: out is NULL");
    memset(out, 0, sizeof *out);
    es_diag_params def = es_diag_params_default();
    if (!p) p = &def;
    double t0 = es__now();
    int rc = es__diag_check(x, n, d, p, err);
    if (rc) return rc;
    if ((rc = es_diag_compute_spectrum(x, n, d, p, &out->spec, err)) != 0) return rc;
    if ((rc = row_norms(x, n, d, p, &out->rows, err)) != 0) goto fail;
    es__diag_nn kn;
    if ((rc = es__diag_knn_scan(x, n, d, p, p->k, &kn, err)) != 0) goto fail;
    es__diag_dups(&kn, p, &out->rows);
    rc = es__diag_id_from_knn(&kn, p->k, &out->id, out->id_note, sizeof out->id_note);
    es__diag_knn_free(&kn);
    if (rc == ES_ENOMEM) {
        rc = es__err(err, rc, "diagnose: out of memory for the intrinsic dimension");
        goto fail;
    }
    out->id_ok = rc == ES_OK;
    if (!out->id_ok) {
        es_diag_id keep = {.n_used = out->id.n_used, .k = p->k};
        out->id = keep;
    }
    es_err verr = {0};
    rc = es_diag_compute_vendi(x, n, d, p, &out->vendi, &verr);
    if (rc == ES_ENOMEM) {
        rc = es__err(err, rc, "%s", verr.msg);
        goto fail;
    }
    out->vendi_ok = rc == ES_OK;
    if (!out->vendi_ok) {
        const char *m = strstr(verr.msg, "Vendi score: ");
        snprintf(out->vendi_note, sizeof out->vendi_note, "%.150s", m ? m + 13 : verr.msg);
        out->vendi = 0;
    }
    out->seconds = es__now() - t0;
    return ES_OK;
fail:
    es_diag_report_free(out);
    return rc;
}

void es_diag_report_free(es_diag_report *r) {
    if (!r) return;
    es_diag_spectrum_free(&r->spec);
    memset(r, 0, sizeof *r);
}

void es_diag_free(void *p) { es__free(p); }
