/*
 * test_diag.c — diagnostics of representations (issue 13): es_diag_* and
 * `embstore diagnose`.
 *
 *   - diag_subspace_d{2,5,10}: 5000 points of an isotropic Gaussian on a
 *     random d-dimensional linear subspace of R^64: TwoNN and MLE within 10%
 *     of d, rank d, effective rank <= d;
 *   - diag_subspace_cube: the same with the points uniform in a cube of the
 *     subspace: within 10% at d = 2 and 5, within 20% at d = 10 (the cube's
 *     faces bias every kNN estimator down there; a ball does the same:
 *     docs/diagnostics.md);
 *   - diag_swiss_roll: a 2-D swiss roll in R^3 gives TwoNN and MLE about 2
 *     (within 10%);
 *   - diag_gaussian_erank: an isotropic Gaussian, n = 20000 >> D = 32:
 *     effective rank within 5% of D, nuclear norm near 1, Gram route;
 *   - diag_vendi_clusters: k tight clusters on orthogonal directions give a
 *     Vendi score within 5% of k (k = 2, 5, 8), both kernel routes;
 *   - diag_rank_r: a rank-r product of Gaussians: rank r, effective rank <= r,
 *     condition "infinite" (0), the same spectrum by gram and gesdd;
 *   - diag_bad_input: n = 0, NaN, Inf, a single vector, all-identical rows,
 *     n < k + 1, all-zero rows, bad parameters: ES_EINVAL with a message or
 *     the documented degenerate answer; no NaN anywhere;
 *   - diag_dups_dead: dead rows and exact / near duplicates counted;
 *   - diag_threads: 1 and 2 threads give the same bits (neighbour measures);
 *   - diag_model_tables: a model's tables per field (hash, full) partition
 *     the table; hashed collisions agree with the storage's field_stats;
 *   - diag_cli_*: `embstore diagnose` on a model trained on the Criteo
 *     sample (text, --json, --report), on siftsmall (fvecs), on text and raw
 *     vectors, its refusals; diag_numpy_reference runs
 *     bench/diag_reference.py when /usr/bin/python3 has numpy and sklearn.
 */
#include "test.h"
#include "embstore.h"
#include "storage/storage.h"
#include "train/model.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* small deterministic generator for the tests (splitmix64) */
static uint64_t rs;
static double urand(void) {
    uint64_t z = (rs += UINT64_C(0x9e3779b97f4a7c15));
    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    z ^= z >> 31;
    return (double)(z >> 11) / 9007199254740992.0;
}
static double nrand(void) {
    double u = urand(), v = urand();
    return sqrt(-2 * log(u + 1e-300)) * cos(2 * M_PI * v);
}

static int finite_report(const es_diag_report *r) {
    const double v[] = {r->spec.erank, r->spec.erank_centered, r->spec.nuclear, r->spec.nuclear_norm, r->spec.frobenius,
                        r->spec.condition, r->spec.energy_top_k, r->id.twonn, r->id.twonn_lo, r->id.twonn_hi,
                        r->id.twonn_fit, r->id.mle, r->id.mle_lo, r->id.mle_hi, r->id.mle_lb, r->vendi,
                        r->rows.norm_min, r->rows.norm_median, r->rows.norm_max, r->rows.norm_mean,
                        r->rows.max_cos_median};
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++)
        if (!isfinite(v[i])) return 0;
    for (int i = 0; i < r->spec.m; i++)
        if (!isfinite(r->spec.sv[i])) return 0;
    return 1;
}

/* n points mapped by a random orthonormal basis of a d-dimensional linear
 * subspace into R^D: coefficients N(0, 1) (isotropic, no boundary) or,
 * with cube, uniform in [-1, 1]^d. */
static float *subspace_x(size_t n, int d, int D, uint64_t seed, int cube) {
    rs = seed;
    double *B = malloc(sizeof(double) * d * D);
    for (int i = 0; i < d; i++) {
        for (int j = 0; j < D; j++) B[i * D + j] = nrand();
        for (int u = 0; u < i; u++) {
            double dot = 0;
            for (int j = 0; j < D; j++) dot += B[i * D + j] * B[u * D + j];
            for (int j = 0; j < D; j++) B[i * D + j] -= dot * B[u * D + j];
        }
        double s = 0;
        for (int j = 0; j < D; j++) s += B[i * D + j] * B[i * D + j];
        for (int j = 0; j < D; j++) B[i * D + j] /= sqrt(s);
    }
    float *x = calloc(n * D, sizeof(float));
    double *c = malloc(sizeof(double) * d);
    for (size_t r = 0; r < n; r++) {
        for (int i = 0; i < d; i++) c[i] = cube ? 2 * urand() - 1 : nrand();
        for (int j = 0; j < D; j++) {
            double s = 0;
            for (int i = 0; i < d; i++) s += c[i] * B[i * D + j];
            x[r * D + j] = (float)s;
        }
    }
    free(B), free(c);
    return x;
}
static float *subspace(size_t n, int d, int D, uint64_t seed) { return subspace_x(n, d, D, seed, 0); }

/* tol: relative tolerance of TwoNN and MLE */
static void check_subspace(int d, int cube, double tol) {
    const size_t n = 5000;
    const int D = 64;
    float *x = subspace_x(n, d, D, 100 + d, cube);
    es_diag_params p = es_diag_params_default();
    es_diag_report r;
    es_err err = {0};
    int rc = es_diag_run(x, n, D, &p, &r, &err);
    free(x);
    CHECK_MSG(rc == 0, "es_diag_run: %s", err.msg);
    printf("  %s d=%d: twonn %.3f [%.3f, %.3f] fit %.3f  mle %.3f [%.3f, %.3f] lb %.3f  erank %.3f rank %d (%.2f s)\n", cube ? "cube" : "gaussian", d,
           r.id.twonn, r.id.twonn_lo, r.id.twonn_hi, r.id.twonn_fit, r.id.mle, r.id.mle_lo, r.id.mle_hi, r.id.mle_lb,
           r.spec.erank, r.spec.rank, r.seconds);
    int ok = r.id_ok && finite_report(&r);
    double tw = r.id.twonn, ml = r.id.mle, er = r.spec.erank;
    int rank = r.spec.rank;
    es_diag_report_free(&r);
    CHECK(ok);
    CHECK_NEAR(tw, d, tol * d);
    CHECK_NEAR(ml, d, tol * d);
    CHECK_EQ_INT(rank, d);
    /* RankMe's epsilon adds up to (64 - d) 1e-7 |log 1e-7| to the entropy
     * when the d singular values are equal (these are nearly): 1e-4 d */
    CHECK(er <= d * (1 + 2e-4));
}

TEST(diag_subspace_d2) { check_subspace(2, 0, 0.1); }
TEST(diag_subspace_d5) { check_subspace(5, 0, 0.1); }
TEST(diag_subspace_d10) { check_subspace(10, 0, 0.1); }
/* Uniform in a cube of the subspace: the points near its faces see fewer
 * neighbours on one side, which biases every kNN estimator down as d grows
 * (measured at n = 5000: d = 10 gives TwoNN 8.77, MLE 8.25); within 10% at
 * d = 2 and 5, within 20% at d = 10. */
TEST(diag_subspace_cube) {
    check_subspace(2, 1, 0.1);
    check_subspace(5, 1, 0.1);
    check_subspace(10, 1, 0.2);
}

TEST(diag_swiss_roll) {
    const size_t n = 4000;
    float *x = malloc(sizeof(float) * n * 3);
    rs = 7;
    for (size_t i = 0; i < n; i++) {
        double t = 1.5 * M_PI * (1 + 2 * urand()), h = 21 * urand();
        x[i * 3] = (float)(t * cos(t)), x[i * 3 + 1] = (float)h, x[i * 3 + 2] = (float)(t * sin(t));
    }
    es_diag_params p = es_diag_params_default();
    es_diag_id id;
    es_err err = {0};
    int rc = es_diag_compute_id(x, n, 3, &p, &id, &err);
    free(x);
    CHECK_MSG(rc == 0, "%s", err.msg);
    printf("  swiss roll: twonn %.3f fit %.3f mle %.3f (n_used %zu)\n", id.twonn, id.twonn_fit, id.mle, id.n_used);
    CHECK_NEAR(id.twonn, 2, 0.2);
    CHECK_NEAR(id.mle, 2, 0.2);
}

TEST(diag_gaussian_erank) {
    const size_t n = 20000;
    const int D = 32;
    float *x = malloc(sizeof(float) * n * D);
    rs = 11;
    for (size_t i = 0; i < n * D; i++) x[i] = (float)nrand();
    es_diag_params p = es_diag_params_default();
    es_diag_spectrum s;
    es_err err = {0};
    int rc = es_diag_compute_spectrum(x, n, D, &p, &s, &err);
    free(x);
    CHECK_MSG(rc == 0, "%s", err.msg);
    printf("  gaussian %zux%d: erank %.3f centred %.3f nuclear_norm %.4f cond %.3f (%s)\n", n, D, s.erank, s.erank_centered,
           s.nuclear_norm, s.condition, s.method);
    double er = s.erank, nn = s.nuclear_norm;
    int gram = !strcmp(s.method, "gram");
    es_diag_spectrum_free(&s);
    CHECK(gram);
    CHECK_NEAR(er, D, 0.05 * D);
    CHECK_NEAR(nn, 1, 0.01);
}

static void check_clusters(int k, size_t n, int D) {
    float *x = malloc(sizeof(float) * n * D);
    rs = 1000 + k;
    for (size_t i = 0; i < n; i++)
        for (int j = 0; j < D; j++) x[i * D + j] = (float)((j == (int)(i % k) ? 10.0 : 0.0) + 0.01 * nrand());
    double v = 0;
    es_err err = {0};
    int rc = es_diag_compute_vendi(x, n, D, NULL, &v, &err);
    free(x);
    CHECK_MSG(rc == 0, "%s", err.msg);
    printf("  %d clusters, n %zu, D %d: vendi %.4f\n", k, n, D, v);
    CHECK_NEAR(v, k, 0.05 * k);
}

TEST(diag_vendi_clusters) {
    check_clusters(2, 1000, 64);
    check_clusters(5, 1000, 64);
    check_clusters(8, 2000, 16);
    check_clusters(5, 40, 64); /* n < D: the n x n kernel */
}

TEST(diag_rank_r) {
    const size_t n = 600;
    const int D = 48, r = 5;
    rs = 5;
    double *A = malloc(sizeof(double) * n * r), *B = malloc(sizeof(double) * r * D);
    for (size_t i = 0; i < n * r; i++) A[i] = nrand();
    for (int i = 0; i < r * D; i++) B[i] = nrand();
    float *x = malloc(sizeof(float) * n * D);
    for (size_t i = 0; i < n; i++)
        for (int j = 0; j < D; j++) {
            double s = 0;
            for (int u = 0; u < r; u++) s += A[i * r + u] * B[u * D + j];
            x[i * D + j] = (float)s;
        }
    free(A), free(B);
    es_diag_spectrum g, s;
    es_err err = {0};
    int rc = es_diag_compute_spectrum(x, n, D, NULL, &g, &err);           /* n > 4D: gram */
    int rc2 = es_diag_compute_spectrum(x, 150, D, NULL, &s, &err);       /* n <= 4D: gesdd */
    CHECK_MSG(rc == 0 && rc2 == 0, "%s", err.msg);
    printf("  rank %d: erank %.4f (gram), %.4f (gesdd, 150 rows), rank %d/%d, cond %g, k90 %d\n", r, g.erank, s.erank, g.rank,
           s.rank, g.condition, g.k90);
    int ok = !strcmp(g.method, "gram") && !strcmp(s.method, "gesdd") && g.rank == r && s.rank == r && g.erank <= r &&
             s.erank <= r && g.condition == 0 && g.k90 <= r;
    es_diag_spectrum_free(&s);
    /* the same rows through both routes: gram vs gesdd on 600 x 48 done by gesdd on its transpose size */
    es_diag_spectrum_free(&g);
    free(x);
    CHECK(ok);
}

TEST(diag_gram_vs_gesdd) {
    /* 150 x 40: gesdd; the same rows repeated 5 times (750 x 40, gram)
     * have singular values sqrt(5) times larger */
    const size_t n = 150;
    const int D = 40;
    rs = 9;
    float *x = malloc(sizeof(float) * 5 * n * D);
    for (size_t i = 0; i < n * D; i++) x[i] = (float)(nrand() * (1 + (i % D) * 0.1));
    for (int c = 1; c < 5; c++) memcpy(x + c * n * D, x, sizeof(float) * n * D);
    es_diag_spectrum a, b;
    es_err err = {0};
    CHECK(es_diag_compute_spectrum(x, n, D, NULL, &a, &err) == 0);
    CHECK(es_diag_compute_spectrum(x, 5 * n, D, NULL, &b, &err) == 0);
    double worst = 0;
    for (int i = 0; i < D; i++) {
        double e = fabs(b.sv[i] / sqrt(5.0) - a.sv[i]) / a.sv[0];
        if (e > worst) worst = e;
    }
    printf("  %s vs %s: largest difference %.2e sigma_1; erank %.6f vs %.6f\n", a.method, b.method, worst, a.erank, b.erank);
    double ea = a.erank, eb = b.erank;
    es_diag_spectrum_free(&a);
    es_diag_spectrum_free(&b);
    free(x);
    CHECK(worst < 1e-9);
    CHECK_NEAR(ea, eb, 1e-6 * ea);
}

TEST(diag_bad_input) {
    es_err err = {0};
    es_diag_report r;
    float one[4] = {1, 2, 3, 4};
    /* empty */
    CHECK_EQ_INT(es_diag_run(one, 0, 4, NULL, &r, &err), ES_EINVAL);
    CHECK_STR_HAS(err.msg, "no vectors");
    /* NaN and Inf */
    float bad[8] = {1, 2, 3, 4, 5, NAN, 7, 8};
    CHECK_EQ_INT(es_diag_run(bad, 2, 4, NULL, &r, &err), ES_EINVAL);
    CHECK_STR_HAS(err.msg, "row 1, column 1 is NaN");
    bad[5] = INFINITY;
    CHECK_EQ_INT(es_diag_run(bad, 2, 4, NULL, &r, &err), ES_EINVAL);
    CHECK_STR_HAS(err.msg, "infinite");
    es_diag_id id;
    CHECK_EQ_INT(es_diag_compute_id(bad, 2, 4, NULL, &id, &err), ES_EINVAL);
    double v;
    CHECK_EQ_INT(es_diag_compute_vendi(bad, 2, 4, NULL, &v, &err), ES_EINVAL);
    /* bad parameters */
    es_diag_params p = es_diag_params_default();
    p.k = 2;
    CHECK_EQ_INT(es_diag_run(one, 1, 4, &p, &r, &err), ES_EINVAL);
    CHECK_STR_HAS(err.msg, "k = 2");
    /* one vector: spectrum of one singular value, no intrinsic dimension */
    CHECK_MSG(es_diag_run(one, 1, 4, NULL, &r, &err) == 0, "%s", err.msg);
    printf("  one vector: erank %.6f vendi %.6f id_ok %d (%s)\n", r.spec.erank, r.vendi, r.id_ok, r.id_note);
    CHECK(finite_report(&r));
    CHECK(!r.id_ok && strstr(r.id_note, "needs 21 distinct rows"));
    CHECK_NEAR(r.spec.erank, 1, 1e-6);
    CHECK(r.vendi_ok);
    CHECK_NEAR(r.vendi, 1, 1e-9);
    es_diag_report_free(&r);
    CHECK_EQ_INT(es_diag_compute_id(one, 1, 4, NULL, &id, &err), ES_EINVAL);
    CHECK_STR_HAS(err.msg, "needs 21 distinct rows (k + 1), found 1");
    /* all identical */
    float same[50 * 4];
    for (int i = 0; i < 50; i++) memcpy(same + i * 4, one, sizeof one);
    CHECK(es_diag_run(same, 50, 4, NULL, &r, &err) == 0);
    printf("  50 identical: erank %.6f rank %d vendi %.6f dup_exact %zu id_ok %d (%s)\n", r.spec.erank, r.spec.rank,
           r.vendi, r.rows.dup_exact, r.id_ok, r.id_note);
    CHECK(finite_report(&r));
    CHECK(!r.id_ok && r.id.n_used == 1);
    CHECK_EQ_INT(r.rows.dup_exact, 50);
    CHECK_EQ_INT(r.spec.rank, 1);
    CHECK_NEAR(r.vendi, 1, 1e-9);
    es_diag_report_free(&r);
    /* n < k + 1 distinct */
    float few[10 * 4];
    rs = 3;
    for (int i = 0; i < 40; i++) few[i] = (float)nrand();
    CHECK(es_diag_run(few, 10, 4, NULL, &r, &err) == 0);
    CHECK(!r.id_ok && strstr(r.id_note, "found 10"));
    CHECK(finite_report(&r));
    es_diag_report_free(&r);
    p = es_diag_params_default();
    p.k = 5;
    CHECK(es_diag_run(few, 10, 4, &p, &r, &err) == 0);
    printf("  10 rows, k 5: twonn %.3f mle %.3f\n", r.id.twonn, r.id.mle);
    CHECK(r.id_ok && finite_report(&r));
    es_diag_report_free(&r);
    /* all zero */
    float zero[30 * 4] = {0};
    CHECK(es_diag_run(zero, 30, 4, NULL, &r, &err) == 0);
    printf("  zeros: erank %g nuclear_norm %g vendi_ok %d (%s) dead %zu\n", r.spec.erank, r.spec.nuclear_norm, r.vendi_ok,
           r.vendi_note, r.rows.dead);
    CHECK(finite_report(&r));
    CHECK(!r.vendi_ok && strstr(r.vendi_note, "every row is zero"));
    CHECK(r.spec.erank == 0 && r.spec.rank == 0 && r.rows.dead == 30);
    es_diag_report_free(&r);
    CHECK_EQ_INT(es_diag_compute_vendi(zero, 30, 4, NULL, &v, &err), ES_EINVAL);
    /* freeing twice / a zeroed struct is a no-op */
    es_diag_report_free(&r);
    es_diag_report_free(NULL);
}

TEST(diag_dups_dead) {
    const size_t n = 300;
    const int D = 8;
    float *x = malloc(sizeof(float) * n * D);
    rs = 21;
    for (size_t i = 0; i < n * D; i++) x[i] = (float)nrand();
    memcpy(x + 10 * D, x + 20 * D, sizeof(float) * D);                /* exact pair */
    for (int j = 0; j < D; j++) x[30 * D + j] = x[40 * D + j] * 1.5f; /* cosine 1 */
    for (int j = 0; j < D; j++) x[50 * D + j] = 0;                    /* zero */
    for (int j = 0; j < D; j++) x[60 * D + j] = 1e-6f;                /* dead */
    es_diag_rows r;
    es_err err = {0};
    CHECK(es_diag_compute_rows(x, n, D, NULL, &r, &err) == 0);
    printf("  rows: zero %zu dead %zu exact %zu near %zu median max cos %.3f\n", r.zero, r.dead, r.dup_exact, r.dup_near,
           r.max_cos_median);
    free(x);
    CHECK_EQ_INT(r.zero, 1);
    CHECK_EQ_INT(r.dead, 2);
    CHECK_EQ_INT(r.dup_exact, 2);
    CHECK(r.dup_near >= 4);
}

TEST(diag_threads) {
    const size_t n = 1500;
    const int D = 16;
    float *x = subspace(n, 4, D, 77);
    es_diag_params p = es_diag_params_default();
    es_diag_report a, b;
    es_err err = {0};
    p.threads = 1;
    CHECK(es_diag_run(x, n, D, &p, &a, &err) == 0);
    p.threads = 2;
    CHECK(es_diag_run(x, n, D, &p, &b, &err) == 0);
    int same = a.id.twonn == b.id.twonn && a.id.mle == b.id.mle && a.rows.dup_near == b.rows.dup_near &&
               memcmp(a.id.local_q, b.id.local_q, sizeof a.id.local_q) == 0;
    printf("  1 vs 2 threads: twonn %.17g / %.17g\n", a.id.twonn, b.id.twonn);
    es_diag_report_free(&a);
    es_diag_report_free(&b);
    /* a sample: deterministic for a seed */
    p.sample = 500;
    CHECK(es_diag_run(x, n, D, &p, &a, &err) == 0);
    CHECK(es_diag_run(x, n, D, &p, &b, &err) == 0);
    int same2 = a.id.twonn == b.id.twonn && a.rows.sampled == 500;
    es_diag_report_free(&a);
    es_diag_report_free(&b);
    free(x);
    CHECK(same);
    CHECK(same2);
}

/* ---- the CLI ---------------------------------------------------------------- */

#define CRITEO "data/criteo_kaggle_train_first10k.tsv"
#define SIFT1 "data/siftsmall/siftsmall_base.part1.fvecs"
#define SIFT2 "data/siftsmall/siftsmall_base.part2.fvecs"

/* A DLRM model with a hashed table (dim 16, a tenth of the full table's
 * bytes), 1 thread, trained once per run of the runner. */
static const char *hash_model(void) {
    static char path[512];
    if (path[0]) return path;
    snprintf(path, sizeof path, "%s", es_test_path("diag_dlrm_hash.es"));
    es_train_params p = es_train_params_default();
    p.train_path = CRITEO;
    p.model = "dlrm";
    p.storage = "hash";
    p.budget = 0.1;
    p.dim = 16;
    p.epochs = 1;
    p.threads = 1;
    p.seed = 1;
    p.out_path = path;
    es_train_result res;
    es_err err = {0};
    if (es_train(&p, &res, &err) != 0) {
        fprintf(stderr, "train: %s\n", err.msg);
        path[0] = 0;
        return NULL;
    }
    return path;
}

static int file_size(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 ? (int)st.st_size : -1;
}

TEST(diag_cli_model) {
    const char *model = hash_model();
    CHECK(model);
    const char *out = es_test_path("diag_model.txt");
    CHECK_EQ_INT(es_test_sh(out, "%s diagnose %s --data %s --threads 1", es_bin(), model, CRITEO), 0);
    char *txt = es_test_slurp(out);
    CHECK(txt);
    printf("%.1500s", txt);
    int ok = strstr(txt, "hash/C1 ") && strstr(txt, "hash/C26") && strstr(txt, "collisions (values of --data)") &&
             strstr(txt, "spectrum by gram") && !strstr(txt, "nan") && !strstr(txt, "NaN");
    free(txt);
    CHECK(ok);
    /* --json: one document, 27 sets (the table, 26 fields) */
    CHECK_EQ_INT(es_test_sh(out, "%s diagnose %s --json --threads 1", es_bin(), model), 0);
    txt = es_test_slurp(out);
    CHECK(txt);
    const char *line = es_test_last_line(txt);
    double er = es_test_json_num(line, "erank"), tw = es_test_json_num(line, "twonn");
    int sets = 0;
    for (const char *s = line; (s = strstr(s, "\"name\":")) != NULL; s++) sets++;
    int clean = line[0] == '{' && !strstr(line, "nan") && !strstr(line, "inf");
    free(txt);
    printf("  json: %d sets, first erank %.3f twonn %.3f\n", sets, er, tw);
    CHECK(clean);
    CHECK_EQ_INT(sets, 27);
    CHECK(er > 1 && er <= 16);
    CHECK(tw > 1 && tw < 32);
    /* --report: plots and summary; the table is the same as the text */
    const char *dir = es_test_path("diag_report");
    es_test_sh(NULL, "rm -rf '%s'", dir);
    CHECK_EQ_INT(es_test_sh(out, "%s diagnose %s --report %s --threads 1", es_bin(), model, dir), 0);
    char p1[600], p2[600], p3[600];
    snprintf(p1, sizeof p1, "%s/spectrum.svg", dir);
    snprintf(p2, sizeof p2, "%s/fields.svg", dir);
    snprintf(p3, sizeof p3, "%s/summary.md", dir);
    printf("  report: spectrum.svg %d B, fields.svg %d B, summary.md %d B\n", file_size(p1), file_size(p2), file_size(p3));
    CHECK(file_size(p1) > 200 && file_size(p2) > 200 && file_size(p3) > 200);
    char *md = es_test_slurp(p3);
    CHECK(md);
    int has = strstr(md, "| hash/C13 |") != NULL && strstr(md, "![spectrum](spectrum.svg)") != NULL;
    free(md);
    CHECK(has);
    /* no temporary file left behind */
    CHECK_EQ_INT(es_test_sh(NULL, "ls '%s' | grep -q tmp", dir), 1);
}

TEST(diag_cli_vectors) {
    const char *out = es_test_path("diag_vec.txt");
    /* siftsmall, both parts as one set, a sample of 2000 for the neighbours */
    CHECK_EQ_INT(es_test_sh(out, "%s diagnose %s %s --json --sample 2000", es_bin(), SIFT1, SIFT2), 0);
    char *txt = es_test_slurp(out);
    CHECK(txt);
    const char *line = es_test_last_line(txt);
    double n = es_test_json_num(line, "n"), d = es_test_json_num(line, "d"), er = es_test_json_num(line, "erank"),
           sampled = es_test_json_num(line, "sampled");
    printf("  siftsmall: n %.0f d %.0f erank %.3f sampled %.0f\n", n, d, er, sampled);
    free(txt);
    CHECK(n == 10000 && d == 128 && sampled == 2000);
    CHECK_NEAR(er, 84.2275, 1e-3);
    /* an index keeps its vectors: the same spectrum */
    const char *ix = es_test_path("diag_flat.es");
    CHECK_EQ_INT(es_test_sh(NULL, "%s index build %s %s -o %s", es_bin(), SIFT1, SIFT2, ix), 0);
    CHECK_EQ_INT(es_test_sh(out, "%s diagnose %s --json --sample 2000", es_bin(), ix), 0);
    txt = es_test_slurp(out);
    CHECK(txt);
    double er2 = es_test_json_num(es_test_last_line(txt), "erank");
    int kind = strstr(txt, "\"kind\":\"index\"") != NULL;
    free(txt);
    CHECK(kind);
    CHECK_NEAR(er2, er, 1e-9);
    /* text and raw float32 (with --dim), --dump round trip */
    const char *tx = es_test_path("diag_vec.txt.vec"), *raw = es_test_path("diag_vec.f32"), *dump = es_test_path("diag_dump.fvecs");
    FILE *f = fopen(tx, "w"), *g = fopen(raw, "wb");
    CHECK(f && g);
    rs = 44;
    for (int i = 0; i < 300; i++) {
        float v[6];
        for (int j = 0; j < 6; j++) v[j] = (float)nrand();
        for (int j = 0; j < 6; j++) fprintf(f, j ? " %.9g" : "%.9g", v[j]);
        fputc('\n', f);
        fwrite(v, sizeof v, 1, g);
    }
    fclose(f), fclose(g);
    CHECK_EQ_INT(es_test_sh(out, "%s diagnose %s --json --dump %s", es_bin(), tx, dump), 0);
    txt = es_test_slurp(out);
    double a = es_test_json_num(es_test_last_line(txt), "erank");
    free(txt);
    CHECK_EQ_INT(es_test_sh(out, "%s diagnose %s --json --dim 6", es_bin(), raw), 0);
    txt = es_test_slurp(out);
    double b = es_test_json_num(es_test_last_line(txt), "erank");
    free(txt);
    CHECK_EQ_INT(es_test_sh(out, "%s diagnose %s --json", es_bin(), dump), 0);
    txt = es_test_slurp(out);
    double c = es_test_json_num(es_test_last_line(txt), "erank");
    free(txt);
    printf("  text %.9g raw %.9g dump %.9g\n", a, b, c);
    CHECK(a > 5 && a <= 6);
    CHECK(a == b && b == c);
}

TEST(diag_cli_errors) {
    const char *out = es_test_path("diag_err.txt");
    const char *empty = es_test_path("diag_empty.fvecs"), *nan = es_test_path("diag_nan.txt"),
               *one = es_test_path("diag_one.txt"), *same = es_test_path("diag_same.txt");
    FILE *f = fopen(empty, "w");
    CHECK(f);
    fclose(f);
    f = fopen(nan, "w");
    fprintf(f, "1 2 3\n4 nan 6\n");
    fclose(f);
    f = fopen(one, "w");
    fprintf(f, "1 2 3\n");
    fclose(f);
    f = fopen(same, "w");
    for (int i = 0; i < 40; i++) fprintf(f, "1 2 3\n");
    fclose(f);
    struct {
        const char *args, *msg;
        int rc;
    } cases[] = {
        {"", "no file given", 2},
        {"--bogus x", "unknown option '--bogus'", 2},
        {"%s --k 2", "--k", 2},
        {"%s", "empty", 1},
        {"%s", "not a finite number", 1},
        {"data/siftsmall/siftsmall_groundtruth.ivecs", "ids, not embeddings", 1},
        {"%s --dump %s", "is an input file", 2},
        {"%s --data " CRITEO, "--data is for models", 2},
    };
    const char *files[] = {NULL, NULL, SIFT1, empty, nan, NULL, SIFT1, SIFT1};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char args[1200];
        snprintf(args, sizeof args, cases[i].args, files[i] ? files[i] : "", files[i] ? files[i] : "");
        int rc = es_test_sh(out, "%s diagnose %s 2>&1", es_bin(), args);
        char *txt = es_test_slurp(out);
        printf("  diagnose %s -> %d: %s", args, rc, txt ? txt : "(none)\n");
        int has = txt && strstr(txt, cases[i].msg);
        free(txt);
        CHECK_MSG(rc == cases[i].rc && has, "case %zu: rc %d, want %d and '%s'", i, rc, cases[i].rc, cases[i].msg);
    }
    /* --help, and the command list */
    CHECK_EQ_INT(es_test_sh(out, "%s diagnose --help", es_bin()), 0);
    char *help = es_test_slurp(out);
    int ok_help = help && strstr(help, "--report DIR") && strstr(help, "docs/diagnostics.md");
    free(help);
    CHECK(ok_help);
    CHECK_EQ_INT(es_test_sh(out, "%s --help", es_bin()), 0);
    help = es_test_slurp(out);
    ok_help = help && strstr(help, "  diagnose ");
    free(help);
    CHECK(ok_help);
    /* degenerate but valid inputs: a documented answer, no NaN */
    const char *deg[] = {one, same};
    for (int i = 0; i < 2; i++) {
        CHECK_EQ_INT(es_test_sh(out, "%s diagnose %s", es_bin(), deg[i]), 0);
        char *txt = es_test_slurp(out);
        CHECK(txt);
        printf("%s", txt);
        int ok = strstr(txt, "intrinsic dimension unavailable: needs 21 distinct rows (k + 1), found 1") && !strstr(txt, "nan");
        free(txt);
        CHECK(ok);
        CHECK_EQ_INT(es_test_sh(out, "%s diagnose %s --json", es_bin(), deg[i]), 0);
        txt = es_test_slurp(out);
        CHECK(txt);
        ok = strstr(txt, "\"id\":{\"ok\":false") && !strstr(txt, "nan");
        free(txt);
        CHECK(ok);
    }
}

/* The numpy / scikit-learn reference (bench/diag_reference.py) on siftsmall
 * and a trained model's table: the spectrum measures within 1e-4, TwoNN and
 * MLE within 2%. */
TEST_SLOW(diag_numpy_reference) {
    if (es_test_sh(NULL, "/usr/bin/python3 -c 'import numpy, sklearn' 2>/dev/null") != 0) {
        es_test_skip("/usr/bin/python3 cannot import numpy and sklearn (Debian python3-numpy, python3-sklearn)");
        return;
    }
    const char *out = es_test_path("diag_numpy.txt");
    int rc = es_test_sh(out, "/usr/bin/python3 bench/diag_reference.py --bin %s --tmp %s 2>&1", es_bin(),
                        es_test_path("diag_numpy"));
    char *txt = es_test_slurp(out);
    printf("%s", txt ? txt : "");
    free(txt);
    CHECK_EQ_INT(rc, 0);
}

/* es_diag_model_table / _collisions against the storage's own layout and
 * statistics: per-field rows of hash (share=0) partition the table, in
 * order; for every field, values and rows_used equal es_field_stats's for
 * the same vocabulary, and the values losing their row are values -
 * rows_used; full's fields own their OOV row and one row per value. */
TEST(diag_model_tables) {
    const char *path = hash_model();
    CHECK(path);
    es_model *m = NULL;
    es_err err = {0};
    CHECK_MSG(es_model_load(&m, path, 0, &err) == 0, "%s", err.msg);
    CHECK_EQ_INT(es_diag_model_tables(m), 1);
    float *all = NULL, *x = NULL;
    size_t n_all, n;
    int d;
    char name[64];
    CHECK(es_diag_model_table(m, 0, -1, &all, &n_all, &d, name, sizeof name, &err) == 0);
    CHECK_EQ_INT(d, 16);
    CHECK(strcmp(name, "hash") == 0);
    es_vocab *v = NULL;
    es_reader *r = NULL;
    es_reader_params rp = es_model_reader_params(m);
    CHECK(es_reader_open(&r, CRITEO, &rp, &err) == 0);
    es_batch b;
    CHECK(es_batch_alloc(&b, 1024, es_reader_n_dense(r), es_reader_n_fields(r), 0) == 0);
    CHECK(es_vocab_create(&v, es_model_n_fields(m)) == 0);
    while (es_reader_next(r, &b) > 0) CHECK(es_vocab_add_batch(v, &b) == 0);
    es_batch_free(&b);
    es_reader_free(r);
    size_t off = 0;
    int ok = 1;
    for (int f = 0; f < es_model_n_fields(m) && ok; f++) {
        if (es_diag_model_table(m, 0, f, &x, &n, &d, name, sizeof name, &err) != 0) {
            ok = 0;
            break;
        }
        ok = off + n <= n_all && memcmp(x, all + off * 16, n * 16 * sizeof(float)) == 0;
        off += n;
        es_diag_free(x);
        es_diag_collisions c;
        es_field_stats fs = {0};
        m->st->ops->field_stats(m->st, v, f, &fs);
        if (ok && es_diag_model_collisions(m, v, f, &c, &err) != 0) ok = 0;
        if (ok) {
            ok = c.values == fs.distinct && c.rows_used == fs.rows_used && c.rows == fs.rows && c.rows == n &&
                 fabs(c.share_colliding * c.values - (double)(c.values - c.rows_used)) < 1e-6 && c.n_top >= 1 &&
                 c.top_values[0] >= 1;
            if (f == 2 || !ok)
                printf("  field %d: values %llu rows %llu used %llu (stats %llu/%llu/%llu) colliding %.3f top %llu\n", f,
                       (unsigned long long)c.values, (unsigned long long)c.rows, (unsigned long long)c.rows_used,
                       (unsigned long long)fs.distinct, (unsigned long long)fs.rows, (unsigned long long)fs.rows_used,
                       c.share_colliding, (unsigned long long)c.top_values[0]);
        }
    }
    printf("  per-field rows cover %zu of %zu\n", off, n_all);
    es_diag_free(all);
    es_vocab_free(v);
    /* errors: a bad table or field */
    int e1 = es_diag_model_table(m, 1, -1, &x, &n, &d, NULL, 0, &err);
    int e2 = es_diag_model_table(m, 0, 99, &x, &n, &d, NULL, 0, &err);
    es_model_free(m);
    CHECK(ok);
    CHECK_EQ_INT(off, n_all);
    CHECK_EQ_INT(e1, ES_EINVAL);
    CHECK_EQ_INT(e2, ES_EINVAL);
    /* full: field f owns its OOV row plus a row per kept value */
    const char *fp = es_test_path("diag_full.es");
    es_train_params p = es_train_params_default();
    p.train_path = CRITEO;
    p.model = "fm";
    p.storage = "full";
    p.dim = 4;
    p.epochs = 1;
    p.threads = 1;
    p.max_rows = 2000;
    p.out_path = fp;
    es_train_result res;
    CHECK_MSG(es_train(&p, &res, &err) == 0, "%s", err.msg);
    CHECK(es_model_load(&m, fp, 0, &err) == 0);
    CHECK(es_diag_model_table(m, 0, -1, &all, &n_all, &d, NULL, 0, &err) == 0);
    es_diag_free(all);
    size_t tot = 0;
    for (int f = 0; f < es_model_n_fields(m); f++) {
        CHECK(es_diag_model_table(m, 0, f, &x, &n, &d, NULL, 0, &err) == 0);
        es_diag_free(x);
        tot += n;
    }
    es_diag_collisions c;
    int e3 = es_diag_model_collisions(m, NULL, 0, &c, &err);
    es_model_free(m);
    printf("  full: per-field rows %zu of %zu\n", tot, n_all);
    CHECK_EQ_INT(tot, n_all);
    CHECK_EQ_INT(e3, ES_EINVAL);
}
