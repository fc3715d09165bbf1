/*
 * test_index.c — vector search: distance kernels against their reference
 * twins over awkward sizes, the vector readers (good and bad files), every
 * index kind on real SIFT vectors (data/siftsmall) with recall measured
 * against the shipped exact ground truth, save/load of every kind, filters,
 * prefix search with re-ranking, metrics, allocation failures, corrupted
 * files, MUVERA multi-vector retrieval, and the `embstore index` CLI.
 */
#include "test.h"

#include "core/core.h"
#include "index/distance.h"
#include "index/index.h"

#include <pthread.h>
#include <unistd.h>

#define SIFT_DIR "data/siftsmall/"

/* ---- shared data ----------------------------------------------------------------------- */
typedef struct {
    es_vecs base, query, gt;
    int ok;
} sift_t;

static sift_t S;

static int sift_load(void) {
    if (S.ok) return 1;
    const char *parts[2] = {SIFT_DIR "siftsmall_base.part1.fvecs", SIFT_DIR "siftsmall_base.part2.fvecs"};
    es_vec_read_params rp = es_vec_read_params_default();
    es_err e = {0};
    if (es_vecs_read_many(&S.base, parts, 2, &rp, &e) ||
        es_vecs_read(&S.query, SIFT_DIR "siftsmall_query.fvecs", &rp, &e) ||
        es_vecs_read(&S.gt, SIFT_DIR "siftsmall_groundtruth.ivecs", &rp, &e)) {
        printf("    cannot read siftsmall: %s\n", e.msg);
        return 0;
    }
    S.ok = 1;
    return 1;
}

/* |top-R ∩ true top-R| / R averaged over queries; truth has gk columns. */
static double recall(const int64_t *ids, int k, const int32_t *truth, int gk, size_t nq, int R) {
    double tot = 0;
    for (size_t q = 0; q < nq; q++) {
        int hit = 0;
        for (int a = 0; a < R; a++)
            for (int b = 0; b < R; b++)
                if (ids[q * (size_t)k + (size_t)a] == truth[q * (size_t)gk + (size_t)b]) {
                    hit++;
                    break;
                }
        tot += (double)hit / R;
    }
    return tot / (double)nq;
}

static es_index *build(es_index_params p, const float *x, size_t n) {
    es_index *ix = NULL;
    es_err e = {0};
    if (es_index_create(&ix, &p, &e)) {
        printf("    create failed: %s\n", e.msg);
        return NULL;
    }
    if (es_index_add(ix, n, x)) {
        printf("    add failed: %s\n", es_index_errmsg(ix));
        es_index_free(ix);
        return NULL;
    }
    return ix;
}

static es_index_params sift_params(es_index_kind kind) {
    es_index_params p = es_index_params_default();
    p.kind = kind;
    p.dim = 128;
    return p;
}

/* Search all queries with k and report recall@1/10 against the shipped truth. */
static int sift_eval(es_index *ix, int k, double *r1, double *r10, double *r100) {
    size_t nq = S.query.n;
    int64_t *ids = malloc(nq * (size_t)k * sizeof *ids);
    float *d = malloc(nq * (size_t)k * sizeof *d);
    int rc = es_index_search(ix, nq, S.query.x, k, NULL, ids, d);
    if (rc) printf("    search failed: %s\n", es_index_errmsg(ix));
    else {
        *r1 = recall(ids, k, S.gt.i, S.gt.dim, nq, 1);
        *r10 = k >= 10 ? recall(ids, k, S.gt.i, S.gt.dim, nq, 10) : -1;
        if (r100) *r100 = k >= 100 ? recall(ids, k, S.gt.i, S.gt.dim, nq, 100) : -1;
    }
    free(ids);
    free(d);
    return rc;
}

/* ---- kernels ------------------------------------------------------------------------------ */
static const size_t awkward[] = {0, 1, 3, 7, 8, 15, 16, 17, 31, 33, 64, 100, 127, 129};

TEST(index_kernels_match_ref) {
    es_rng r;
    es__rng_seed(&r, 11);
    enum { N = 160 };
    float q[N], sc[N], x[4][N];
    uint8_t code[N];
    uint64_t a[N], b[N];
    printf("    index simd level: %s\n", es__index_simd_level());
    for (size_t t = 0; t < ES_ARRAY_LEN(awkward); t++) {
        size_t n = awkward[t];
        for (size_t i = 0; i < N; i++) {
            q[i] = es__rng_normal(&r);
            sc[i] = (float)es__rng_uniform(&r);
            code[i] = (uint8_t)es__rng_u64(&r);
            a[i] = es__rng_u64(&r);
            b[i] = es__rng_u64(&r);
            for (int j = 0; j < 4; j++) x[j][i] = es__rng_normal(&r);
        }
        float v = es__sq8_l2(q, sc, code, n), vr = es__sq8_l2_ref(q, sc, code, n);
        CHECK_MSG(es_test_close(v, vr, 1e-3, 1e-5), "sq8_l2 n=%zu: %g vs ref %g", n, v, vr);
        v = es__sq8_ip(q, code, n), vr = es__sq8_ip_ref(q, code, n);
        CHECK_MSG(es_test_close(v, vr, 1e-3, 1e-5), "sq8_ip n=%zu: %g vs ref %g", n, v, vr);
        uint32_t h = es__hamming(a, b, n), hr = es__hamming_ref(a, b, n);
        CHECK_MSG(h == hr, "hamming nw=%zu: %u vs ref %u", n, h, hr);
        float o4[4], r4[4];
        es__l2sq_x4(q, x[0], x[1], x[2], x[3], n, o4);
        es__l2sq_x4_ref(q, x[0], x[1], x[2], x[3], n, r4);
        for (int j = 0; j < 4; j++) CHECK_MSG(es_test_close(o4[j], r4[j], 1e-4, 1e-5), "l2sq_x4 n=%zu row %d: %g vs %g", n, j, o4[j], r4[j]);
        es__dot_x4(q, x[0], x[1], x[2], x[3], n, o4);
        es__dot_x4_ref(q, x[0], x[1], x[2], x[3], n, r4);
        for (int j = 0; j < 4; j++) CHECK_MSG(es_test_close(o4[j], r4[j], 1e-4, 1e-5), "dot_x4 n=%zu row %d: %g vs %g", n, j, o4[j], r4[j]);
    }
    /* PQ scan over code counts with M = 8 (fast path) and M = 3 (generic). */
    int Ms[2] = {8, 3};
    for (int mi = 0; mi < 2; mi++) {
        int M = Ms[mi], ks = 256;
        float *lut = malloc((size_t)M * ks * sizeof *lut);
        uint8_t *codes = malloc(33 * (size_t)M);
        float o[33], orf[33];
        for (int i = 0; i < M * ks; i++) lut[i] = es__rng_normal(&r);
        for (int i = 0; i < 33 * M; i++) codes[i] = (uint8_t)es__rng_u64(&r);
        for (size_t t = 0; t < ES_ARRAY_LEN(awkward) && awkward[t] <= 33; t++) {
            size_t n = awkward[t];
            es__pq_scan(lut, codes, n, M, ks, 0.5f, o);
            es__pq_scan_ref(lut, codes, n, M, ks, 0.5f, orf);
            for (size_t i = 0; i < n; i++)
                CHECK_MSG(es_test_close(o[i], orf[i], 1e-4, 1e-5), "pq_scan M=%d n=%zu i=%zu: %g vs %g", M, n, i, o[i], orf[i]);
        }
        free(lut);
        free(codes);
    }
}

/* ---- readers ------------------------------------------------------------------------------ */
static void write_bytes(const char *path, const void *p, size_t n) {
    FILE *f = fopen(path, "wb");
    if (f) {
        fwrite(p, 1, n, f);
        fclose(f);
    }
}

static int read_err(const char *path, es_vec_format fmt, int dim, char *msg, size_t msz) {
    es_vecs v;
    es_vec_read_params rp = es_vec_read_params_default();
    rp.format = fmt;
    rp.dim = dim;
    es_err e = {0};
    int rc = es_vecs_read(&v, path, &rp, &e);
    snprintf(msg, msz, "%s", e.msg);
    if (!rc) es_vecs_free(&v);
    return rc;
}

TEST(index_vecio_roundtrip) {
    float x[3 * 5];
    for (int i = 0; i < 15; i++) x[i] = (float)i * 0.5f - 3.0f;
    es_err e = {0};
    const char *pf = es_test_path("ix_rt.fvecs");
    CHECK(es_fvecs_write(pf, 3, 5, x, &e) == 0);
    es_vecs v;
    es_vec_read_params rp = es_vec_read_params_default();
    CHECK_MSG(es_vecs_read(&v, pf, &rp, &e) == 0, "%s", e.msg);
    CHECK_EQ_INT(v.n, 3);
    CHECK_EQ_INT(v.dim, 5);
    for (int i = 0; i < 15; i++) CHECK(v.x[i] == x[i]);
    es_vecs_free(&v);
    /* max_rows and sets of fixed size */
    rp.max_rows = 2;
    rp.set_size = 1;
    CHECK(es_vecs_read(&v, pf, &rp, &e) == 0);
    CHECK_EQ_INT(v.n, 2);
    CHECK_EQ_INT(v.n_sets, 2);
    es_vecs_free(&v);
    /* ivecs */
    int32_t ii[6] = {1, -2, 3, 4, 5, 6};
    const char *pi = es_test_path("ix_rt.ivecs");
    CHECK(es_ivecs_write(pi, 2, 3, ii, &e) == 0);
    rp = es_vec_read_params_default();
    CHECK(es_vecs_read(&v, pi, &rp, &e) == 0);
    CHECK(v.x == NULL && v.i && v.n == 2 && v.dim == 3 && v.i[1] == -2 && v.i[5] == 6);
    es_vecs_free(&v);
    /* bvecs by hand: two records of dimension 3 */
    unsigned char bv[2 * 7] = {3, 0, 0, 0, 1, 2, 255, 3, 0, 0, 0, 9, 8, 7};
    const char *pb = es_test_path("ix_rt.bvecs");
    write_bytes(pb, bv, sizeof bv);
    CHECK(es_vecs_read(&v, pb, &rp, &e) == 0);
    CHECK(v.n == 2 && v.dim == 3 && v.x[2] == 255.0f && v.x[5] == 7.0f);
    es_vecs_free(&v);
    /* raw float32 with a dimension */
    const char *pr = es_test_path("ix_rt.f32");
    write_bytes(pr, x, sizeof x);
    rp.dim = 5;
    CHECK_MSG(es_vecs_read(&v, pr, &rp, &e) == 0, "%s", e.msg);
    CHECK(v.n == 3 && v.x[14] == x[14]);
    es_vecs_free(&v);
    /* several base files read as one set (the siftsmall split) */
    CHECK(sift_load());
    CHECK_EQ_INT(S.base.n, 10000);
    CHECK_EQ_INT(S.base.dim, 128);
    CHECK_EQ_INT(S.query.n, 100);
    CHECK_EQ_INT(S.gt.dim, 100);
    /* canonical first SIFT vector: 0 16 35 5 32 31 14 10 ... */
    CHECK(S.base.x[0] == 0 && S.base.x[1] == 16 && S.base.x[2] == 35 && S.base.x[7] == 10);
}

TEST(index_vecio_text_formats) {
    const char *p1 = es_test_path("ix_glove.txt");
    FILE *f = fopen(p1, "w");
    CHECK(f);
    /* GloVe style: word then values; a numeric word later stays a label. */
    fprintf(f, "# comment\nthe 0.1 0.2 -0.3\n\n, 1e-3 2 3\n1998 4 5 6\r\n");
    fclose(f);
    es_vecs v;
    es_vec_read_params rp = es_vec_read_params_default();
    es_err e = {0};
    CHECK_MSG(es_vecs_read(&v, p1, &rp, &e) == 0, "%s", e.msg);
    CHECK(v.n == 3 && v.dim == 3 && v.labels);
    CHECK(!strcmp(v.labels[0], "the") && !strcmp(v.labels[1], ",") && !strcmp(v.labels[2], "1998"));
    CHECK_NEAR(v.x[2], -0.3, 1e-7);
    CHECK_NEAR(v.x[8], 6, 0);
    es_vecs_free(&v);
    /* word2vec text header "rows dim" is skipped */
    const char *p2 = es_test_path("ix_w2v.vec");
    f = fopen(p2, "w");
    fprintf(f, "2 2\na 1 2\nb 3 4\n");
    fclose(f);
    CHECK_MSG(es_vecs_read(&v, p2, &rp, &e) == 0, "%s", e.msg);
    CHECK(v.n == 2 && v.dim == 2 && !strcmp(v.labels[1], "b") && v.x[3] == 4);
    es_vecs_free(&v);
    /* unlabelled numbers */
    const char *p3 = es_test_path("ix_plain.txt");
    f = fopen(p3, "w");
    fprintf(f, "1 2 3 4\n5 6 7 8\n");
    fclose(f);
    CHECK(es_vecs_read(&v, p3, &rp, &e) == 0);
    CHECK(v.n == 2 && v.dim == 4 && !v.labels && v.x[7] == 8);
    es_vecs_free(&v);
    /* vector sets by label */
    const char *p4 = es_test_path("ix_sets.txt");
    f = fopen(p4, "w");
    fprintf(f, "doc1 1 0\ndoc1 0 1\ndoc2 1 1\ndoc3 2 2\ndoc3 3 3\ndoc3 4 4\n");
    fclose(f);
    rp.sets_by_label = 1;
    CHECK(es_vecs_read(&v, p4, &rp, &e) == 0);
    CHECK_EQ_INT(v.n_sets, 3);
    CHECK(v.set_off[0] == 0 && v.set_off[1] == 2 && v.set_off[2] == 3 && v.set_off[3] == 6);
    es_vecs_free(&v);
    /* a set split by another set is an error naming it */
    f = fopen(p4, "w");
    fprintf(f, "doc1 1 0\ndoc2 0 1\ndoc1 1 1\n");
    fclose(f);
    CHECK(es_vecs_read(&v, p4, &rp, &e) != 0);
    CHECK_STR_HAS(e.msg, "doc1");
    CHECK_STR_HAS(e.msg, "consecutive");
}

TEST(index_vecio_bad_inputs) {
    char msg[512];
    const char *p = es_test_path("ix_bad.fvecs");
    /* empty */
    write_bytes(p, "", 0);
    CHECK(read_err(p, ES_VEC_AUTO, 0, msg, sizeof msg) != 0);
    CHECK_STR_HAS(msg, "bad.fvecs");
    CHECK_STR_HAS(msg, "empty");
    /* truncated: one full record of d=2 and 5 bytes of the next */
    unsigned char t[12 + 5];
    int32_t d = 2;
    float vals[2] = {1, 2};
    memcpy(t, &d, 4);
    memcpy(t + 4, vals, 8);
    memcpy(t + 12, &d, 4);
    t[16] = 0;
    write_bytes(p, t, sizeof t);
    CHECK(read_err(p, ES_VEC_AUTO, 0, msg, sizeof msg) != 0);
    CHECK_STR_HAS(msg, "truncated");
    CHECK_STR_HAS(msg, "record 1");
    /* records of differing dimension */
    unsigned char m[24];
    int32_t d1 = 2, d2 = 3;
    memset(m, 0, sizeof m);
    memcpy(m, &d1, 4);
    memcpy(m + 12, &d2, 4);
    write_bytes(p, m, sizeof m);
    CHECK(read_err(p, ES_VEC_AUTO, 0, msg, sizeof msg) != 0);
    CHECK_STR_HAS(msg, "record 1 declares dimension 3");
    /* NaN and Inf */
    float nanv[2] = {1, NAN};
    memcpy(t, &d, 4);
    memcpy(t + 4, nanv, 8);
    write_bytes(p, t, 12);
    CHECK(read_err(p, ES_VEC_AUTO, 0, msg, sizeof msg) != 0);
    CHECK_STR_HAS(msg, "NaN");
    float infv[2] = {INFINITY, 1};
    memcpy(t + 4, infv, 8);
    write_bytes(p, t, 12);
    CHECK(read_err(p, ES_VEC_AUTO, 0, msg, sizeof msg) != 0);
    CHECK_STR_HAS(msg, "infinite");
    /* absurd dimension */
    int32_t huge = 1 << 30;
    write_bytes(p, &huge, 4);
    CHECK(read_err(p, ES_VEC_AUTO, 0, msg, sizeof msg) != 0);
    CHECK_STR_HAS(msg, "dimension");
    /* raw without a dimension, and with a size that does not fit */
    const char *pr = es_test_path("ix_bad.f32");
    write_bytes(pr, vals, 8);
    CHECK(read_err(pr, ES_VEC_AUTO, 0, msg, sizeof msg) != 0);
    CHECK_STR_HAS(msg, "dimension");
    CHECK(read_err(pr, ES_VEC_AUTO, 3, msg, sizeof msg) != 0);
    CHECK_STR_HAS(msg, "truncated");
    /* text: wrong column count names the line; junk value named */
    const char *pt = es_test_path("ix_bad.txt");
    FILE *f = fopen(pt, "w");
    fprintf(f, "a 1 2 3\nb 1 2\n");
    fclose(f);
    CHECK(read_err(pt, ES_VEC_AUTO, 0, msg, sizeof msg) != 0);
    CHECK_STR_HAS(msg, "bad.txt:2");
    f = fopen(pt, "w");
    fprintf(f, "a 1 2 3\nb 1 x 3\n");
    fclose(f);
    CHECK(read_err(pt, ES_VEC_AUTO, 0, msg, sizeof msg) != 0);
    CHECK_STR_HAS(msg, "bad.txt:2");
    CHECK_STR_HAS(msg, "'x'");
    f = fopen(pt, "w");
    fprintf(f, "a 1 nan 3\n");
    fclose(f);
    CHECK(read_err(pt, ES_VEC_AUTO, 0, msg, sizeof msg) != 0);
    /* unknown extension, missing file */
    CHECK(read_err(es_test_path("ix_x.unknown"), ES_VEC_AUTO, 0, msg, sizeof msg) != 0);
    CHECK_STR_HAS(msg, "extension");
    CHECK(read_err(es_test_path("ix_missing.fvecs"), ES_VEC_AUTO, 0, msg, sizeof msg) != 0);
    CHECK_STR_HAS(msg, "missing.fvecs");
    /* several files of different dimensions */
    float a3[3] = {1, 2, 3};
    es_err e = {0};
    const char *pa = es_test_path("ix_d3.fvecs"), *pb2 = es_test_path("ix_d2.fvecs");
    CHECK(es_fvecs_write(pa, 1, 3, a3, &e) == 0);
    CHECK(es_fvecs_write(pb2, 1, 2, a3, &e) == 0);
    const char *both[2] = {pa, pb2};
    es_vecs v;
    es_vec_read_params rp = es_vec_read_params_default();
    CHECK(es_vecs_read_many(&v, both, 2, &rp, &e) != 0);
    CHECK_STR_HAS(e.msg, "d2.fvecs");
}

TEST(index_vecio_model_tensor) {
    /* A container holding an f32 2-D tensor, as a trained model stores rows. */
    const char *p = es_test_path("ix_rows.es");
    float rows[4 * 3];
    for (int i = 0; i < 12; i++) rows[i] = (float)i;
    int32_t other[2] = {1, 2};
    es_fwriter *w = NULL;
    es_err e = {0};
    CHECK(es__fwriter_open(&w, p, &e) == 0);
    es_tensor_ref t, t2;
    CHECK(es__tensor_ref_set(&t, "storage.table.w", ES_DT_F32, rows, 2, (uint64_t)4, (uint64_t)3) == 0);
    CHECK(es__tensor_ref_set(&t2, "storage.ids", ES_DT_I32, other, 1, (uint64_t)2) == 0);
    CHECK(es__fwriter_tensor(w, &t) == 0 && es__fwriter_tensor(w, &t2) == 0);
    CHECK_MSG(es__fwriter_commit(w, &e) == 0, "%s", e.msg);
    es_vecs v;
    es_vec_read_params rp = es_vec_read_params_default();
    rp.tensor = "storage.table.w";
    CHECK_MSG(es_vecs_read(&v, p, &rp, &e) == 0, "%s", e.msg);
    CHECK(v.n == 4 && v.dim == 3 && v.x[11] == 11);
    es_vecs_free(&v);
    rp.tensor = "storage.nope.w";
    CHECK(es_vecs_read(&v, p, &rp, &e) != 0);
    CHECK_STR_HAS(e.msg, "not found");
    CHECK_STR_HAS(e.msg, "storage.table.w"); /* lists what is there */
    rp.tensor = "storage.ids";
    CHECK(es_vecs_read(&v, p, &rp, &e) != 0);
    CHECK_STR_HAS(e.msg, "not f32 2-D");
}

/* ---- exact search -------------------------------------------------------------------------- */
TEST(index_flat_siftsmall_matches_groundtruth) {
    CHECK(sift_load());
    es_index *ix = build(sift_params(ES_INDEX_FLAT), S.base.x, S.base.n);
    CHECK(ix);
    size_t nq = S.query.n;
    int k = 100;
    int64_t *ids = malloc(nq * (size_t)k * sizeof *ids);
    float *d = malloc(nq * (size_t)k * sizeof *d);
    CHECK(es_index_search(ix, nq, S.query.x, k, NULL, ids, d) == 0);
    double r100 = recall(ids, k, S.gt.i, S.gt.dim, nq, 100);
    printf("    flat recall@100 = %.4f\n", r100);
    CHECK_NEAR(r100, 1.0, 0);
    /* Same ids rank by rank; where they differ the true distances tie
     * exactly (the ground truth orders some ties differently from id). */
    int differ = 0;
    for (size_t q = 0; q < nq; q++)
        for (int r = 0; r < k; r++) {
            int64_t a = ids[q * (size_t)k + (size_t)r];
            int32_t g = S.gt.i[q * 100 + (size_t)r];
            const float *qq = S.query.x + q * 128;
            double da = 0, dg = 0;
            for (int j = 0; j < 128; j++) {
                double u = qq[j] - S.base.x[(size_t)a * 128 + (size_t)j], w = qq[j] - S.base.x[(size_t)g * 128 + (size_t)j];
                da += u * u;
                dg += w * w;
            }
            CHECK_MSG(a == g || da == dg, "query %zu rank %d: id %lld (d %g) vs truth %d (d %g)", q, r, (long long)a, da, g, dg);
            differ += a != g;
            CHECK_MSG(fabs(d[q * (size_t)k + (size_t)r] - da) <= 1e-6 * da + 1e-3, "distance %g vs exact %g",
                      d[q * (size_t)k + (size_t)r], da);
        }
    printf("    %d of %zu ranks differ from the truth, all exact ties\n", differ, nq * (size_t)k);
    /* The single-query path gives the same answers as the blocked one. */
    int64_t ids1[100];
    float d1[100];
    for (size_t q = 0; q < 5; q++) {
        CHECK(es_index_search(ix, 1, S.query.x + q * 128, k, NULL, ids1, d1) == 0);
        for (int r = 0; r < k; r++) CHECK(ids1[r] == ids[q * (size_t)k + (size_t)r]);
    }
    free(ids);
    free(d);
    es_index_free(ix);
}

TEST(index_metrics_ip_cosine) {
    CHECK(sift_load());
    size_t n = 2000;
    for (int m = 1; m <= 2; m++) {
        es_index_params p = sift_params(ES_INDEX_FLAT);
        p.metric = (es_metric)m;
        es_index *ix = build(p, S.base.x, n);
        CHECK(ix);
        int64_t ids[30 * 10];
        float d[30 * 10];
        CHECK(es_index_search(ix, 30, S.query.x, 10, NULL, ids, d) == 0);
        for (int q = 0; q < 30; q++) {
            /* brute force in double */
            const float *qq = S.query.x + (size_t)q * 128;
            double best = -INFINITY, qn = 0;
            int64_t bi = -1;
            for (int j = 0; j < 128; j++) qn += (double)qq[j] * qq[j];
            for (size_t i = 0; i < n; i++) {
                double s = 0, xn = 0;
                for (int j = 0; j < 128; j++) {
                    s += (double)qq[j] * S.base.x[i * 128 + (size_t)j];
                    xn += (double)S.base.x[i * 128 + (size_t)j] * S.base.x[i * 128 + (size_t)j];
                }
                if (m == 2) s /= sqrt(qn * xn) > 0 ? sqrt(xn) : 1;
                if (s > best) best = s, bi = (int64_t)i;
            }
            CHECK_MSG(ids[q * 10] == bi, "metric %d query %d: %lld vs %lld", m, q, (long long)ids[q * 10], (long long)bi);
            for (int r = 1; r < 10; r++) CHECK(d[q * 10 + r] <= d[q * 10 + r - 1]); /* similarities descend */
            if (m == 2) CHECK(d[q * 10] <= 1.0001f && d[q * 10] >= -1.0001f);
            else CHECK_NEAR(d[q * 10], best, 1e-4 * fabs(best));
        }
        es_index_free(ix);
    }
}

/* ---- approximate kinds on SIFT ---------------------------------------------------------------- */
TEST(index_hnsw_siftsmall_recall) {
    CHECK(sift_load());
    es_insert_order orders[2] = {ES_ORDER_INPUT, ES_ORDER_LID_DESC};
    for (int o = 0; o < 2; o++) {
        es_index_params p = sift_params(ES_INDEX_HNSW);
        p.hnsw_m = 16;
        p.ef_construction = 100;
        p.ef_search = 64;
        p.order = orders[o];
        es_index *ix = build(p, S.base.x, S.base.n);
        CHECK(ix);
        double r1, r10;
        CHECK(sift_eval(ix, 10, &r1, &r10, NULL) == 0);
        printf("    hnsw M=16 efC=100 ef=64 order=%s: recall@1 %.3f recall@10 %.3f, %.0f bytes/vector\n",
               o ? "lid_desc" : "input", r1, r10, (double)es_index_bytes(ix) / 10000.0);
        CHECK(r10 >= 0.95);
        /* a narrow beam finds less */
        CHECK(es_index_set(ix, "ef_search", 10) == 0);
        double s1, s10;
        CHECK(sift_eval(ix, 10, &s1, &s10, NULL) == 0);
        printf("    ef=10: recall@10 %.3f\n", s10);
        CHECK(s10 <= r10 + 1e-9);
        es_index_free(ix);
    }
}

TEST(index_quantized_kinds_siftsmall) {
    CHECK(sift_load());
    struct {
        const char *name;
        es_index_kind kind;
        es_index_kind codes;
        int rerank, itq, opq;
        double min_r10, max_bpv;
    } cases[] = {
        {"sq8", ES_INDEX_SQ8, 0, 0, 0, 0, 0.95, 140},
        /* 16 code bytes + 256 x 128 floats of codebooks (and their
         * transposed search copy) spread over 10,000 vectors */
        {"pq16", ES_INDEX_PQ, 0, 0, 0, 0, 0.60, 50},
        {"pq16+opq", ES_INDEX_PQ, 0, 0, 0, 3, 0.60, 120},
        {"binary", ES_INDEX_BINARY, 0, 0, 0, 0, 0.10, 40},
        {"binary+itq+rerank", ES_INDEX_BINARY, 0, 20, 20, 0, 0.95, 700},
        {"ivf-flat", ES_INDEX_IVF, ES_INDEX_FLAT, 0, 0, 0, 0.95, 600},
        {"ivf-sq8", ES_INDEX_IVF, ES_INDEX_SQ8, 0, 0, 0, 0.93, 200},
        {"ivf-pq", ES_INDEX_IVF, ES_INDEX_PQ, 0, 0, 0, 0.60, 260},
    };
    for (size_t c = 0; c < ES_ARRAY_LEN(cases); c++) {
        es_index_params p = sift_params(cases[c].kind);
        p.ivf_codes = cases[c].codes;
        p.nlist = 64;
        p.nprobe = 16;
        p.rerank = cases[c].rerank;
        p.itq_iters = cases[c].itq;
        p.opq_iters = cases[c].opq;
        p.kmeans_iters = 10;
        p.pq_m = 16;
        double t0 = es__now();
        es_index *ix = build(p, S.base.x, S.base.n);
        CHECK(ix);
        double r1, r10;
        CHECK(sift_eval(ix, 10, &r1, &r10, NULL) == 0);
        double bpv = (double)es_index_bytes(ix) / 10000.0;
        printf("    %-18s recall@1 %.3f recall@10 %.3f  %.1f bytes/vector  build %.2f s\n", cases[c].name, r1, r10, bpv,
               es__now() - t0);
        CHECK_MSG(r10 >= cases[c].min_r10, "%s: recall@10 %.3f < %.2f", cases[c].name, r10, cases[c].min_r10);
        CHECK_MSG(bpv <= cases[c].max_bpv, "%s: %.1f bytes per vector", cases[c].name, bpv);
        es_index_free(ix);
    }
}

TEST(index_prefix_pca_rerank) {
    CHECK(sift_load());
    /* 32 of 128 dimensions: raw prefix vs PCA prefix, each re-ranked. */
    for (int pca = 0; pca <= 1; pca++) {
        es_index_params p = sift_params(ES_INDEX_FLAT);
        p.search_dim = 32;
        p.pca = pca;
        es_index *ix = build(p, S.base.x, S.base.n);
        CHECK(ix);
        double r1, r10;
        CHECK(sift_eval(ix, 10, &r1, &r10, NULL) == 0);
        CHECK(es_index_set(ix, "rerank", 10) != 0); /* no full vectors kept */
        es_index_free(ix);
        p.rerank = 10;
        ix = build(p, S.base.x, S.base.n);
        CHECK(ix);
        double q1, q10;
        CHECK(sift_eval(ix, 10, &q1, &q10, NULL) == 0);
        printf("    %s prefix 32/128: recall@10 %.3f alone, %.3f re-ranked (rerank 10)\n", pca ? "PCA" : "raw", r10, q10);
        CHECK(q10 >= r10);
        if (pca) CHECK(q10 >= 0.95);
        es_index_free(ix);
    }
    /* The same on an HNSW graph over the PCA prefix. */
    es_index_params p = sift_params(ES_INDEX_HNSW);
    p.search_dim = 48;
    p.pca = 1;
    p.rerank = 4;
    p.ef_construction = 80;
    es_index *ix = build(p, S.base.x, S.base.n);
    CHECK(ix);
    double r1, r10;
    CHECK(sift_eval(ix, 10, &r1, &r10, NULL) == 0);
    printf("    hnsw on PCA prefix 48 + rerank 4: recall@10 %.3f\n", r10);
    CHECK(r10 >= 0.9);
    es_index_free(ix);
}

/* ---- filters ------------------------------------------------------------------------------------ */
TEST(index_filtered_search) {
    CHECK(sift_load());
    size_t n = S.base.n, nq = 50;
    int32_t *attrs = malloc(n * 2 * sizeof *attrs);
    for (size_t i = 0; i < n; i++) {
        attrs[2 * i] = (int32_t)(i % 10);           /* 10% per value */
        attrs[2 * i + 1] = (int32_t)((i * 7) % 200); /* 0.5% per value */
    }
    es_filter filters[3];
    int32_t v0[1] = {3}, v1[2] = {5, 17}, v2[3] = {0, 9, 4};
    filters[0] = (es_filter){0, 1, v0};
    filters[1] = (es_filter){1, 2, v1};
    filters[2] = (es_filter){0, 3, v2};
    es_index_kind kinds[5] = {ES_INDEX_FLAT, ES_INDEX_HNSW, ES_INDEX_IVF, ES_INDEX_SQ8, ES_INDEX_PQ};
    int k = 10;
    int64_t *truth = malloc(nq * (size_t)k * sizeof *truth), *ids = malloc(nq * (size_t)k * sizeof *ids);
    float *d = malloc(nq * (size_t)k * sizeof *d);
    es_index *flat = build(sift_params(ES_INDEX_FLAT), S.base.x, n);
    CHECK(flat);
    CHECK(es_index_set_attrs(flat, n, 2, attrs) == 0);
    int32_t *tall = malloc(3 * nq * (size_t)k * sizeof *tall);
    for (int fi = 0; fi < 3; fi++) {
        CHECK(es_index_search(flat, nq, S.query.x, k, &filters[fi], truth, d) == 0);
        /* exact filtered search equals brute force over the matching rows */
        for (size_t q = 0; q < 3; q++) {
            int64_t bi = -1;
            double bd = INFINITY;
            for (size_t i = 0; i < n; i++) {
                int32_t a = attrs[2 * i + (size_t)filters[fi].attr];
                int ok = 0;
                for (int j = 0; j < filters[fi].n_values; j++) ok |= a == filters[fi].values[j];
                if (!ok) continue;
                double s = 0;
                for (int j = 0; j < 128; j++) {
                    double u = S.query.x[q * 128 + (size_t)j] - S.base.x[i * 128 + (size_t)j];
                    s += u * u;
                }
                if (s < bd) bd = s, bi = (int64_t)i;
            }
            CHECK_MSG(truth[q * (size_t)k] == bi, "filter %d query %zu: %lld vs brute force %lld", fi, q,
                      (long long)truth[q * (size_t)k], (long long)bi);
        }
        for (size_t t = 0; t < nq * (size_t)k; t++) tall[(size_t)fi * nq * (size_t)k + t] = (int32_t)truth[t];
    }
    for (int ki = 1; ki < 5; ki++) {
        es_index_params p = sift_params(kinds[ki]);
        p.nlist = 64;
        p.nprobe = 8;
        p.kmeans_iters = 8;
        p.pq_m = 32;
        p.ef_construction = 80;
        es_index *ix = build(p, S.base.x, n);
        CHECK(ix);
        CHECK(es_index_set_attrs(ix, n, 2, attrs) == 0);
        for (int fi = 0; fi < 3; fi++) {
            CHECK_MSG(es_index_search(ix, nq, S.query.x, k, &filters[fi], ids, d) == 0, "%s", es_index_errmsg(ix));
            long viol = 0, missing = 0;
            for (size_t t = 0; t < nq * (size_t)k; t++) {
                if (ids[t] < 0) {
                    missing++;
                    continue;
                }
                int32_t a = attrs[2 * (size_t)ids[t] + (size_t)filters[fi].attr];
                int ok = 0;
                for (int j = 0; j < filters[fi].n_values; j++) ok |= a == filters[fi].values[j];
                viol += !ok;
            }
            double r10 = recall(ids, k, tall + (size_t)fi * nq * (size_t)k, k, nq, 10);
            printf("    filter %d on %-6s recall@10 vs exact filtered %.3f, violations %ld, empty slots %ld\n", fi,
                   es_index_kind_name(kinds[ki]), r10, viol, missing);
            CHECK_EQ_INT(viol, 0);
            CHECK_EQ_INT(missing, 0); /* every filter matches >= 100 vectors */
            if (kinds[ki] == ES_INDEX_HNSW || kinds[ki] == ES_INDEX_IVF || kinds[ki] == ES_INDEX_SQ8)
                CHECK_MSG(r10 >= 0.9, "%s filter %d recall %.3f", es_index_kind_name(kinds[ki]), fi, r10);
        }
        es_index_free(ix);
    }
    free(tall);
    /* errors: unknown attribute, attributes not covering new vectors */
    es_filter bad = {5, 1, v0};
    CHECK(es_index_search(flat, 1, S.query.x, k, &bad, ids, d) != 0);
    CHECK_STR_HAS(es_index_errmsg(flat), "attribute 5");
    CHECK(es_index_add(flat, 1, S.base.x) == 0);
    CHECK(es_index_search(flat, 1, S.query.x, k, &filters[0], ids, d) != 0);
    CHECK_STR_HAS(es_index_errmsg(flat), "es_index_set_attrs");
    es_index_free(flat);
    free(attrs);
    free(truth);
    free(ids);
    free(d);
}

/* ---- errors -------------------------------------------------------------------------------------- */
TEST(index_bad_arguments) {
    es_index_params p = es_index_params_default();
    es_index *ix = NULL;
    es_err e = {0};
    p.dim = 0;
    CHECK(es_index_create(&ix, &p, &e) == ES_EINVAL);
    CHECK_STR_HAS(e.msg, "dimension");
    p.dim = 10;
    p.kind = ES_INDEX_PQ;
    p.pq_m = 3;
    CHECK(es_index_create(&ix, &p, &e) == ES_EINVAL);
    CHECK_STR_HAS(e.msg, "divide");
    p.kind = ES_INDEX_BINARY;
    p.binary_bits = 11;
    CHECK(es_index_create(&ix, &p, &e) == ES_EINVAL);
    p = es_index_params_default();
    p.dim = 4;
    CHECK(es_index_create(&ix, &p, &e) == 0);
    float q[8] = {0, 1, 2, 3, 4, 5, 6, 7};
    int64_t ids[4];
    float d[4];
    /* empty corpus */
    CHECK(es_index_search(ix, 1, q, 1, NULL, ids, d) == ES_EINVAL);
    CHECK_STR_HAS(es_index_errmsg(ix), "empty");
    CHECK(es_index_add(ix, 2, q) == 0);
    /* k larger than the corpus */
    CHECK(es_index_search(ix, 1, q, 3, NULL, ids, d) == ES_EINVAL);
    CHECK_STR_HAS(es_index_errmsg(ix), "larger than the 2 vectors");
    CHECK(es_index_search(ix, 1, q, 0, NULL, ids, d) == ES_EINVAL);
    /* NaN / Inf in queries and vectors */
    float bad[4] = {0, NAN, 0, 0};
    CHECK(es_index_search(ix, 1, bad, 1, NULL, ids, d) == ES_EINVAL);
    CHECK_STR_HAS(es_index_errmsg(ix), "NaN");
    bad[1] = INFINITY;
    CHECK(es_index_add(ix, 1, bad) == ES_EINVAL);
    CHECK_STR_HAS(es_index_errmsg(ix), "infinite");
    CHECK_EQ_INT(es_index_size(ix), 2);
    /* search parameters */
    CHECK(es_index_set(ix, "nonsense", 1) == ES_EINVAL);
    CHECK(es_index_set(ix, "ef_search", 0) == ES_EINVAL);
    CHECK(es_index_set(ix, "nprobe", 2.5) == ES_EINVAL);
    CHECK(es_index_search(ix, 1, q, 2, NULL, ids, d) == 0);
    CHECK(ids[0] == 0 && ids[1] == 1 && d[0] == 0);
    es_index_free(ix);
    es_index_free(NULL);
    /* training needs enough vectors */
    p = es_index_params_default();
    p.dim = 4;
    p.kind = ES_INDEX_PQ;
    p.pq_m = 2;
    CHECK(es_index_create(&ix, &p, &e) == 0);
    CHECK(es_index_add(ix, 2, q) != 0);
    CHECK_STR_HAS(es_index_errmsg(ix), "fewer than the 256 centroids");
    es_index_free(ix);
    p.kind = ES_INDEX_IVF;
    p.nlist = 5;
    CHECK(es_index_create(&ix, &p, &e) == 0);
    CHECK(es_index_add(ix, 2, q) != 0);
    CHECK_STR_HAS(es_index_errmsg(ix), "5 lists");
    es_index_free(ix);
}

/* ---- save / load --------------------------------------------------------------------------------- */
static es_index_params kind_case(int c, const char **name) {
    es_index_params p = sift_params(ES_INDEX_FLAT);
    p.kmeans_iters = 5;
    p.nlist = 32;
    p.nprobe = 4;
    p.pq_m = 16;
    switch (c) {
    case 0: *name = "flat"; break;
    case 1: *name = "sq8"; p.kind = ES_INDEX_SQ8; break;
    case 2: *name = "binary+itq+rerank"; p.kind = ES_INDEX_BINARY; p.itq_iters = 5; p.rerank = 5; break;
    case 3: *name = "pq+opq"; p.kind = ES_INDEX_PQ; p.opq_iters = 2; break;
    case 4: *name = "hnsw"; p.kind = ES_INDEX_HNSW; p.ef_construction = 40; break;
    case 5: *name = "ivf-flat"; p.kind = ES_INDEX_IVF; break;
    case 6: *name = "ivf-sq8"; p.kind = ES_INDEX_IVF; p.ivf_codes = ES_INDEX_SQ8; break;
    case 7: *name = "ivf-pq ip"; p.kind = ES_INDEX_IVF; p.ivf_codes = ES_INDEX_PQ; p.metric = ES_METRIC_IP; break;
    case 8: *name = "flat pca cosine"; p.pca = 1; p.search_dim = 40; p.rerank = 3; p.metric = ES_METRIC_COSINE; break;
    default: *name = "binary 64 bits"; p.kind = ES_INDEX_BINARY; p.binary_bits = 64; break;
    }
    return p;
}

TEST(index_save_load_every_kind) {
    CHECK(sift_load());
    size_t n = 3000, nq = 20;
    int k = 10;
    int64_t *a = malloc(nq * (size_t)k * sizeof *a), *b = malloc(nq * (size_t)k * sizeof *b);
    float *da = malloc(nq * (size_t)k * sizeof *da), *db = malloc(nq * (size_t)k * sizeof *db);
    for (int c = 0; c < 10; c++) {
        const char *name;
        es_index_params p = kind_case(c, &name);
        es_index *ix = build(p, S.base.x, n);
        CHECK_MSG(ix, "%s", name);
        int32_t *attrs = malloc(n * sizeof *attrs);
        for (size_t i = 0; i < n; i++) attrs[i] = (int32_t)(i % 3);
        CHECK(es_index_set_attrs(ix, n, 1, attrs) == 0);
        CHECK(es_index_search(ix, nq, S.query.x, k, NULL, a, da) == 0);
        const char *path = es_test_path("ix_kind.esi");
        CHECK_MSG(es_index_save(ix, path) == 0, "%s: %s", name, es_index_errmsg(ix));
        es_index *ld = NULL;
        es_err e = {0};
        CHECK_MSG(es_index_load(&ld, path, &e) == 0, "%s: %s", name, e.msg);
        CHECK_EQ_INT(es_index_size(ld), n);
        CHECK_EQ_INT(es_index_bytes(ld), es_index_bytes(ix));
        CHECK(es_index_params_of(ld)->kind == p.kind);
        CHECK(es_index_search(ld, nq, S.query.x, k, NULL, b, db) == 0);
        for (size_t t = 0; t < nq * (size_t)k; t++)
            CHECK_MSG(a[t] == b[t] && da[t] == db[t], "%s: result %zu differs after load: %lld/%g vs %lld/%g", name, t,
                      (long long)a[t], da[t], (long long)b[t], db[t]);
        /* filters work on the loaded attributes */
        int32_t one = 1;
        es_filter f = {0, 1, &one};
        CHECK(es_index_search(ld, nq, S.query.x, k, &f, b, db) == 0);
        for (size_t t = 0; t < nq * (size_t)k; t++) CHECK(b[t] < 0 || b[t] % 3 == 1);
        /* adding to a loaded (mapped) index copies its arrays first */
        CHECK_MSG(es_index_add(ld, 500, S.base.x + n * 128) == 0, "%s: %s", name, es_index_errmsg(ld));
        CHECK_EQ_INT(es_index_size(ld), n + 500);
        CHECK(es_index_search(ld, 1, S.base.x + (n + 7) * 128, 1, NULL, b, db) == 0);
        if (c == 0 || c == 4 || c == 5) CHECK_MSG(b[0] == (int64_t)(n + 7), "%s: self search gave %lld", name, (long long)b[0]);
        printf("    %-18s saved, loaded, identical results, %zu bytes\n", name, es_index_bytes(ix));
        es_index_free(ld);
        es_index_free(ix);
        free(attrs);
    }
    free(a);
    free(b);
    free(da);
    free(db);
}

TEST(index_load_rejects_bad_files) {
    CHECK(sift_load());
    es_index *ix = build(sift_params(ES_INDEX_HNSW), S.base.x, 500);
    CHECK(ix);
    const char *path = es_test_path("ix_good.esi");
    CHECK(es_index_save(ix, path) == 0);
    es_index_free(ix);
    char *img = NULL;
    size_t len = 0;
    {
        FILE *f = fopen(path, "rb");
        CHECK(f);
        fseek(f, 0, SEEK_END);
        len = (size_t)ftell(f);
        fseek(f, 0, SEEK_SET);
        img = malloc(len);
        CHECK(fread(img, 1, len, f) == len);
        fclose(f);
    }
    es_err e = {0};
    es_index *ld = NULL;
    /* a flipped byte near the end (tensor data) fails the checksum */
    const char *bad = es_test_path("ix_bad.esi");
    img[len - 100] ^= 0x40;
    write_bytes(bad, img, len);
    CHECK(es_index_load(&ld, bad, &e) != 0 && !ld);
    printf("    flipped byte: %s\n", e.msg);
    CHECK_STR_HAS(e.msg, "bad.esi");
    img[len - 100] ^= 0x40;
    /* truncated */
    write_bytes(bad, img, len / 2);
    CHECK(es_index_load(&ld, bad, &e) != 0 && !ld);
    printf("    truncated: %s\n", e.msg);
    /* not an index: a vector file, and a container of another type */
    CHECK(es_index_load(&ld, SIFT_DIR "siftsmall_query.fvecs", &e) != 0);
    const char *other = es_test_path("ix_other.es");
    es_fwriter *w = NULL;
    CHECK(es__fwriter_open(&w, other, &e) == 0);
    CHECK(es__fwriter_meta(w, "embstore.type", "model") == 0);
    CHECK(es__fwriter_commit(w, &e) == 0);
    CHECK(es_index_load(&ld, other, &e) != 0);
    CHECK_STR_HAS(e.msg, "not an embstore index");
    free(img);
}

/* An index file with a graph link pointing outside the index must be
 * refused at load (a search would read out of bounds), even with a valid
 * checksum: rebuild the file with one edited tensor. */
TEST(index_load_validates_graph_and_lists) {
    CHECK(sift_load());
    for (int which = 0; which < 2; which++) {
        es_index_params p = sift_params(which ? ES_INDEX_IVF : ES_INDEX_HNSW);
        p.nlist = 8;
        p.kmeans_iters = 3;
        es_index *ix = build(p, S.base.x, 400);
        CHECK(ix);
        const char *path = es_test_path("ix_v.esi"), *bad = es_test_path("ix_v_bad.esi");
        CHECK(es_index_save(ix, path) == 0);
        es_index_free(ix);
        es_file *f = NULL;
        es_err e = {0};
        CHECK(es__file_open(&f, path, 0, &e) == 0);
        es_fwriter *w = NULL;
        CHECK(es__fwriter_open(&w, bad, &e) == 0);
        for (int i = 0; i < es__file_n_meta(f); i++) {
            const char *k, *v;
            es__file_meta_at(f, i, &k, &v);
            CHECK(es__fwriter_meta(w, k, v) == 0);
        }
        void *copy = NULL;
        for (int i = 0; i < es__file_n_tensors(f); i++) {
            es_tensor_ref t = *es__file_tensor_at(f, i);
            const char *target = which ? "index.ivf.ids" : "index.hnsw.links0";
            if (!strcmp(t.name, target)) {
                copy = malloc(t.nbytes);
                memcpy(copy, t.data, t.nbytes);
                int32_t *v = copy;
                if (which) v[5] = 400; /* id == n */
                else v[1] = 100000;    /* first neighbour of node 0 */
                t.data = copy;
            }
            CHECK(es__fwriter_tensor(w, &t) == 0);
        }
        CHECK(es__fwriter_commit(w, &e) == 0);
        free(copy);
        es__file_close(f);
        es_index *ld = NULL;
        CHECK(es_index_load(&ld, bad, &e) == ES_EFORMAT);
        printf("    %s: %s\n", which ? "ivf" : "hnsw", e.msg);
        CHECK_STR_HAS(e.msg, "outside");
    }
}

/* ---- allocation failures ---------------------------------------------------------------------------- */
/* One full life cycle of an index; returns the first failing status. */
static int life_cycle(const es_index_params *p, size_t n) {
    es_index *ix = NULL, *ld = NULL;
    es_err e = {0};
    int64_t ids[20];
    float d[20];
    const char *path = es_test_path("ix_af.esi");
    int rc = es_index_create(&ix, p, &e);
    if (!rc) rc = es_index_add(ix, n, S.base.x);
    if (!rc) rc = es_index_search(ix, 2, S.query.x, 10, NULL, ids, d);
    if (!rc) rc = es_index_save(ix, path);
    if (!rc) rc = es_index_load(&ld, path, &e);
    if (!rc) rc = es_index_search(ld, 2, S.query.x, 10, NULL, ids, d);
    es_index_free(ld);
    es_index_free(ix);
    return rc;
}

TEST(index_allocation_failures_are_clean) {
    CHECK(sift_load());
    for (int c = 0; c < 10; c++) {
        const char *name;
        es_index_params p = kind_case(c, &name);
        p.threads = 1;
        p.kmeans_iters = 2;
        if (p.opq_iters) p.opq_iters = 1;
        if (p.itq_iters) p.itq_iters = 2;
        p.pq_bits = 4; /* 16 centroids: the same code paths, far less training */
        size_t n = 300;
        /* Count the allocations of a clean run, then make each of the first
         * 60 fail, and 30 more spread over the rest: every failure must come
         * back as ES_ENOMEM (ES_EIO when the writer's buffers fail), never a
         * crash or a leak (ASan checks the latter under SAN=1). */
        es__alloc_fail_at(0);
        CHECK_MSG(life_cycle(&p, n) == 0, "%s: clean run failed", name);
        uint64_t total = es__alloc_fail_at(0);
        int tried = 0;
        for (uint64_t nth = 1; nth <= total; nth += nth < 60 ? 1 : ES_MAX((total - 60) / 30, 1)) {
            es__alloc_fail_at(nth);
            int rc = life_cycle(&p, n);
            es__alloc_fail_at(0);
            tried++;
            /* 0: a failure the code absorbs on purpose (the scratch pool
             * not growing just frees the scratch). */
            CHECK_MSG(rc == 0 || rc == ES_ENOMEM || rc == ES_EIO, "%s: allocation %llu of %llu failed with %d", name,
                      (unsigned long long)nth, (unsigned long long)total, rc);
        }
        printf("    %-18s %llu allocations, %d failure points checked\n", name, (unsigned long long)total, tried);
    }
}

/* ---- determinism and concurrency --------------------------------------------------------------- */
TEST(index_hnsw_one_thread_is_deterministic) {
    CHECK(sift_load());
    es_index_params p = sift_params(ES_INDEX_HNSW);
    p.threads = 1;
    p.ef_construction = 40;
    p.order = ES_ORDER_LID_DESC;
    es_index *a = build(p, S.base.x, 2000), *b = build(p, S.base.x, 2000);
    CHECK(a && b);
    int64_t ia[50 * 10], ib[50 * 10];
    float da[50 * 10], db[50 * 10];
    CHECK(es_index_search(a, 50, S.query.x, 10, NULL, ia, da) == 0);
    CHECK(es_index_search(b, 50, S.query.x, 10, NULL, ib, db) == 0);
    for (int i = 0; i < 500; i++) CHECK(ia[i] == ib[i] && da[i] == db[i]);
    es_index_free(a);
    es_index_free(b);
}

typedef struct {
    es_index *ix;
    int64_t ids[100 * 10];
    float d[100 * 10];
    int rc;
} search_job;

static void *search_thread(void *arg) {
    search_job *j = arg;
    for (int r = 0; r < 5 && !j->rc; r++) j->rc = es_index_search(j->ix, 100, S.query.x, 10, NULL, j->ids, j->d);
    return NULL;
}

TEST(index_concurrent_searches_agree) {
    CHECK(sift_load());
    es_index_kind kinds[3] = {ES_INDEX_FLAT, ES_INDEX_HNSW, ES_INDEX_IVF};
    for (int c = 0; c < 3; c++) {
        es_index_params p = sift_params(kinds[c]);
        p.nlist = 32;
        p.kmeans_iters = 5;
        p.ef_construction = 40;
        es_index *ix = build(p, S.base.x, 3000);
        CHECK(ix);
        static search_job jobs[3];
        pthread_t th[3];
        for (int t = 0; t < 3; t++) {
            jobs[t].ix = ix;
            jobs[t].rc = 0;
            CHECK(pthread_create(&th[t], NULL, search_thread, &jobs[t]) == 0);
        }
        for (int t = 0; t < 3; t++) pthread_join(th[t], NULL);
        for (int t = 0; t < 3; t++) {
            CHECK_EQ_INT(jobs[t].rc, 0);
            for (int i = 0; i < 1000; i++) CHECK(jobs[t].ids[i] == jobs[0].ids[i] && jobs[t].d[i] == jobs[0].d[i]);
        }
        es_index_free(ix);
    }
}

/* ---- multi-vector ------------------------------------------------------------------------------------- */
/* Vector sets from real SIFT vectors: k-means (64 clusters) groups the base
 * vectors by "topic", and documents are runs of 8 vectors in cluster order,
 * like sentences whose tokens share a subject; query sets are runs of 4 real
 * query vectors in the order of their nearest cluster. */
static size_t *group_by_cluster(const float *x, size_t n, const float *cent, int nc, size_t run, size_t *n_sets,
                                float **xs) {
    int32_t *as = malloc(n * sizeof *as);
    es_err e = {0};
    if (es__kmeans_assign(x, n, 128, cent, nc, as, NULL, &e)) return NULL;
    size_t *order = malloc(n * sizeof *order), t = 0;
    for (int c = 0; c < nc; c++)
        for (size_t i = 0; i < n; i++)
            if (as[i] == c) order[t++] = i;
    *xs = malloc(n * 128 * sizeof(float));
    for (size_t i = 0; i < n; i++) memcpy(*xs + i * 128, x + order[i] * 128, 128 * sizeof(float));
    *n_sets = (n + run - 1) / run;
    size_t *off = malloc((*n_sets + 1) * sizeof *off);
    for (size_t s = 0; s <= *n_sets; s++) off[s] = ES_MIN(s * run, n);
    free(as);
    free(order);
    return off;
}

TEST(index_multivector_muvera) {
    CHECK(sift_load());
    es_err e = {0};
    float *cent = malloc(64 * 128 * sizeof *cent);
    CHECK(es__kmeans(S.base.x, S.base.n, 128, 64, 10, 1, cent, &e) == 0);
    size_t nd, nqs;
    float *dx, *qx;
    size_t *doff = group_by_cluster(S.base.x, S.base.n, cent, 64, 8, &nd, &dx);
    size_t *qoff = group_by_cluster(S.query.x, S.query.n, cent, 64, 4, &nqs, &qx);
    CHECK(doff && qoff);
    es_multi_params mp = es_multi_params_default();
    mp.dim = 128;
    mp.k_sim = 5;
    mp.reps = 30;
    mp.d_proj = 16;
    mp.candidates = 120;
    mp.center = 1;
    es_multi *m = NULL;
    CHECK_MSG(es_multi_create(&m, &mp, &e) == 0, "%s", e.msg);
    CHECK_MSG(es_multi_add(m, nd, doff, dx) == 0, "%s", es_multi_errmsg(m));
    int k = 10;
    int64_t *ids = malloc(nqs * (size_t)k * sizeof *ids), *truth = malloc(nqs * (size_t)k * sizeof *truth);
    float *sc = malloc(nqs * (size_t)k * sizeof *sc), *tsc = malloc(nqs * (size_t)k * sizeof *tsc);
    size_t scored = 0;
    CHECK(es_multi_search_exact(m, nqs, qoff, qx, k, truth, tsc) == 0);
    CHECK(es_multi_search(m, nqs, qoff, qx, k, ids, sc, &scored) == 0);
    int32_t *t32 = malloc(nqs * (size_t)k * sizeof *t32);
    for (size_t t = 0; t < nqs * (size_t)k; t++) t32[t] = (int32_t)truth[t];
    double r10 = recall(ids, k, t32, k, nqs, 10), frac = (double)scored / ((double)nqs * (double)nd);
    printf("    %zu documents, %zu query sets, FDE dim %d: recall@10 of exact Chamfer %.3f, scored %.1f%% of documents\n",
           nd, nqs, es_multi_fde_dim(m), r10, 100 * frac);
    CHECK(r10 >= 0.9);
    CHECK(frac < 0.10);
    /* Chamfer scores returned equal the exact ones for the same documents */
    for (size_t q = 0; q < nqs; q++)
        for (int a = 0; a < k; a++)
            for (int b = 0; b < k; b++)
                if (ids[q * (size_t)k + (size_t)a] == truth[q * (size_t)k + (size_t)b])
                    CHECK_NEAR(sc[q * (size_t)k + (size_t)a], tsc[q * (size_t)k + (size_t)b], 1e-5);
    /* save / load round trip */
    const char *path = es_test_path("ix_mv.esm");
    CHECK_MSG(es_multi_save(m, path) == 0, "%s", es_multi_errmsg(m));
    es_multi *ld = NULL;
    CHECK_MSG(es_multi_load(&ld, path, &e) == 0, "%s", e.msg);
    int64_t *ids2 = malloc(nqs * (size_t)k * sizeof *ids2);
    CHECK(es_multi_search(ld, nqs, qoff, qx, k, ids2, sc, NULL) == 0);
    for (size_t t = 0; t < nqs * (size_t)k; t++) CHECK(ids2[t] == ids[t]);
    /* the FDE of a one-vector set against another approximates their inner product */
    float *f1 = malloc((size_t)es_multi_fde_dim(m) * sizeof *f1);
    CHECK(es_multi_encode(m, 1, 4, qx, f1) == 0);
    float nanset[128] = {NAN};
    CHECK(es_multi_encode(m, 1, 1, nanset, f1) != 0);
    size_t badoff[2] = {0, 0};
    CHECK(es_multi_add(m, 1, badoff, dx) != 0); /* empty set */
    free(f1);
    free(ids2);
    es_multi_free(ld);
    es_multi_free(m);
    free(ids);
    free(truth);
    free(sc);
    free(tsc);
    free(t32);
    free(doff);
    free(qoff);
    free(dx);
    free(qx);
    free(cent);
}

/* ---- CLI ------------------------------------------------------------------------------------------------ */
static const char *bin(void) { return es_bin(); }

TEST(index_cli_build_search_eval) {
    const char *B = bin();
    const char *out = es_test_path("ix_cli_out.txt"), *ix = es_test_path("ix_cli.esi");
    CHECK(es_test_sh(out, "%s index --help", B) == 0);
    CHECK(es_test_sh(out, "%s index build --help", B) == 0);
    CHECK(es_test_sh(out, "%s index search --help", B) == 0);
    CHECK(es_test_sh(out, "%s index eval --help", B) == 0);
    char *s = es_test_slurp(out);
    CHECK_STR_HAS(s, "--gt");
    free(s);
    CHECK(es_test_sh(out, "%s index build " SIFT_DIR "siftsmall_base.part1.fvecs " SIFT_DIR
                          "siftsmall_base.part2.fvecs --kind hnsw --M 12 --ef-construction 60 -o %s --json",
                     B, ix) == 0);
    s = es_test_slurp(out);
    CHECK_STR_HAS(s, "\"vectors\":10000");
    free(s);
    const char *ids = es_test_path("ix_cli_ids.ivecs");
    CHECK(es_test_sh(out, "%s index search %s " SIFT_DIR "siftsmall_query.fvecs -k 5 --ef-search 40 --out %s", B, ix, ids) == 0);
    es_vecs v;
    es_vec_read_params rp = es_vec_read_params_default();
    es_err e = {0};
    CHECK(es_vecs_read(&v, ids, &rp, &e) == 0);
    CHECK(v.n == 100 && v.dim == 5);
    CHECK(sift_load());
    int agree = 0;
    for (int q = 0; q < 100; q++) agree += v.i[q * 5] == S.gt.i[q * 100];
    printf("    CLI search: top-1 agrees with the truth for %d of 100 queries\n", agree);
    CHECK(agree >= 95);
    es_vecs_free(&v);
    CHECK(es_test_sh(out, "%s index search %s " SIFT_DIR "siftsmall_query.fvecs -k 2 --max-rows 1", B, ix) == 0);
    s = es_test_slurp(out);
    CHECK_STR_HAS(s, "query\trank\tid\tdistance");
    free(s);
    /* eval of the saved index and of specs built on the spot, JSON */
    CHECK(es_test_sh(out, "%s index eval %s --queries " SIFT_DIR "siftsmall_query.fvecs --gt " SIFT_DIR
                          "siftsmall_groundtruth.ivecs -k 10 --ef-search 16/64 --min-time 0 --json",
                     B, ix) == 0);
    s = es_test_slurp(out);
    CHECK_STR_HAS(s, "\"search\":\"ef_search=16\"");
    CHECK_STR_HAS(s, "\"recall_at_10\"");
    free(s);
    CHECK(es_test_sh(out, "%s index eval --base " SIFT_DIR "siftsmall_base.part1.fvecs --queries " SIFT_DIR
                          "siftsmall_query.fvecs -k 10 --kind flat --kind sq8 --kind ivf:nlist=20,nprobe=2/20 --min-time 0",
                     B) == 0);
    s = es_test_slurp(out);
    printf("%s", s);
    CHECK_STR_HAS(s, "nprobe=20");
    CHECK_STR_HAS(s, "R@10");
    free(s);
    /* filtered eval reports zero violations */
    const char *attrs = es_test_path("ix_cli_attrs.txt");
    FILE *f = fopen(attrs, "w");
    for (int i = 0; i < 5000; i++) fprintf(f, "%d %d\n", i % 4, i % 13);
    fclose(f);
    CHECK(es_test_sh(out, "%s index eval --base " SIFT_DIR "siftsmall_base.part1.fvecs --queries " SIFT_DIR
                          "siftsmall_query.fvecs --attrs %s --filter 1=3,4 -k 10 --kind hnsw --min-time 0 --json",
                     B, attrs) == 0);
    s = es_test_slurp(out);
    CHECK_STR_HAS(s, "\"filter_violations\":0");
    free(s);
    /* bad inputs: clear message naming the file, non-zero exit */
    const char *bad = es_test_path("ix_cli_bad.fvecs");
    write_bytes(bad, "\x02\x00\x00\x00\x00\x00", 6);
    CHECK(es_test_sh(out, "%s index build %s -o %s", B, bad, es_test_path("ix_never.esi")) == 1);
    s = es_test_slurp(out);
    CHECK_STR_HAS(s, "cli_bad.fvecs");
    CHECK_STR_HAS(s, "truncated");
    free(s);
    CHECK(access(es_test_path("ix_never.esi"), F_OK) != 0);
    CHECK(es_test_sh(out, "%s index search %s %s", B, ix, SIFT_DIR "siftsmall_groundtruth.ivecs") == 1);
    CHECK(es_test_sh(out, "%s index search %s " SIFT_DIR "siftsmall_query.fvecs -k 20000", B, ix) == 1);
    s = es_test_slurp(out);
    CHECK_STR_HAS(s, "larger than");
    free(s);
    CHECK(es_test_sh(out, "%s index build " SIFT_DIR "siftsmall_query.fvecs --kind nosuch -o %s", B, ix) == 2);
    CHECK(es_test_sh(out, "%s index search %s", B, ix) == 2);
    CHECK(es_test_sh(out, "%s index search " SIFT_DIR "siftsmall_query.fvecs " SIFT_DIR "siftsmall_query.fvecs", B) == 1);
}

TEST(index_cli_multivector) {
    const char *B = bin();
    const char *docs = es_test_path("ix_docs.txt"), *qs = es_test_path("ix_qs.txt"), *out = es_test_path("ix_mv_out.txt");
    /* A documented text format: one vector per line, the first token names
     * the set; consecutive lines with the same name form one set. */
    FILE *f = fopen(docs, "w");
    es_rng r;
    es__rng_seed(&r, 5);
    for (int d = 0; d < 60; d++)
        for (int t = 0; t < 3 + d % 4; t++) {
            fprintf(f, "doc%d", d);
            for (int j = 0; j < 16; j++) fprintf(f, " %.4f", es__rng_normal(&r) + (j == d % 16 ? 3.0 : 0.0));
            fprintf(f, "\n");
        }
    fclose(f);
    f = fopen(qs, "w");
    for (int q = 0; q < 10; q++)
        for (int t = 0; t < 2; t++) {
            fprintf(f, "q%d", q);
            for (int j = 0; j < 16; j++) fprintf(f, " %.4f", es__rng_normal(&r) + (j == q ? 3.0 : 0.0));
            fprintf(f, "\n");
        }
    fclose(f);
    const char *ix = es_test_path("ix_cli.esm");
    CHECK(es_test_sh(out, "%s index build %s --multi --reps 8 --k-sim 3 -o %s", B, docs, ix) == 0);
    char *s = es_test_slurp(out);
    CHECK_STR_HAS(s, "60 documents");
    free(s);
    CHECK(es_test_sh(out, "%s index search %s %s -k 3 --candidates 20 --json", B, ix, qs) == 0);
    s = es_test_slurp(out);
    CHECK_STR_HAS(s, "\"queries\":[{\"ids\":[");
    free(s);
    CHECK(es_test_sh(out, "%s index eval --multi --base %s --queries %s -k 5 --candidates 30 --reps 8 --json --min-time 0", B,
                     docs, qs) == 0);
    s = es_test_slurp(out);
    CHECK_STR_HAS(s, "\"scored_fraction\"");
    free(s);
}
