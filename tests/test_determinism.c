/*
 * test_determinism.c — what docs/determinism.md promises, tested exactly:
 *
 *   - es__gemm_fixed (every forward product) gives the same bits as its
 *     scalar reference, for any rows computed together, any thread count
 *     and awkward sizes (so the vector tails run);
 *   - a linear layer gives the same bits from packed and unpacked weights;
 *   - for every model x storage method, a row's predicted probability is
 *     the same float whether it is predicted alone, in batches of 7 or 256,
 *     or with the whole file, on 1 or 2 threads;
 *   - a key's looked-up vector does not depend on the rest of its batch.
 *
 * These are bit-for-bit comparisons on one machine and one binary; nothing
 * here compares with another machine's numbers.
 */
#include "test.h"

#include "core/core.h"
#include "core/simd.h"
#include "embstore.h"
#include "model/layers.h"
#include "storage/storage.h"

#include <stdint.h>

#define CRITEO "data/criteo_kaggle_train_first10k.tsv"

static float *rand_floats(es_rng *r, size_t n) {
    float *x = malloc((n ? n : 1) * sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = (float)(es__rng_uniform(r) * 2.0 - 1.0);
    return x;
}

TEST(gemm_fixed_equals_reference_bitwise) {
    static const int Ms[] = {1, 3, 4, 7, 17, 33}, Ks[] = {1, 3, 15, 16, 17, 64}, Ns[] = {1, 7, 15, 16, 17, 33, 64};
    es_rng r;
    es__rng_seed(&r, 5);
    int cases = 0;
    for (size_t a = 0; a < ES_ARRAY_LEN(Ms); a++)
        for (size_t b = 0; b < ES_ARRAY_LEN(Ks); b++)
            for (size_t c = 0; c < ES_ARRAY_LEN(Ns); c++) {
                int M = Ms[a], K = Ks[b], N = Ns[c];
                int lda = K + 1, ldb = N + 3, ldc = N + 2; /* leading dimensions past the width */
                float *A = rand_floats(&r, (size_t)M * lda), *B = rand_floats(&r, (size_t)K * ldb);
                float *C1 = calloc((size_t)M * ldc, sizeof(float)), *C2 = calloc((size_t)M * ldc, sizeof(float));
                float *C3 = calloc((size_t)M * ldc, sizeof(float));
                es__gemm_fixed_ref(C1, ldc, A, lda, B, ldb, M, K, N);
                es__gemm_fixed(C2, ldc, A, lda, B, ldb, M, K, N, 1);
                es__gemm_fixed(C3, ldc, A, lda, B, ldb, M, K, N, 2);
                int bad = 0;
                for (int i = 0; i < M && !bad; i++) {
                    bad |= memcmp(C1 + (size_t)i * ldc, C2 + (size_t)i * ldc, (size_t)N * sizeof(float)) != 0;
                    bad |= memcmp(C1 + (size_t)i * ldc, C3 + (size_t)i * ldc, (size_t)N * sizeof(float)) != 0;
                    /* each row alone, as a batch of one */
                    float row[80];
                    es__gemm_fixed(row, N, A + (size_t)i * lda, lda, B, ldb, 1, K, N, 1);
                    bad |= memcmp(row, C1 + (size_t)i * ldc, (size_t)N * sizeof(float)) != 0;
                    for (int j = 0; j < N; j++) { /* and the sum itself, against double */
                        double s = 0;
                        for (int k = 0; k < K; k++) s += (double)A[(size_t)i * lda + k] * B[(size_t)k * ldb + j];
                        if (fabs(s - C1[(size_t)i * ldc + j]) > 1e-5 * (K + 1)) bad = 2;
                    }
                }
                free(A), free(B), free(C1), free(C2), free(C3);
                CHECK_MSG(!bad, "M=%d K=%d N=%d (simd %s): %s", M, K, N, es__simd_level(),
                          bad == 2 ? "sum off" : "bits differ");
                cases++;
            }
    printf("    %d shapes: dispatched (%s, 1 and 2 threads) == reference, rows alone == rows together\n", cases,
           es__simd_level());
}

TEST(gemm_fixed_large_threaded) {
    /* big enough to be split over threads */
    int M = 301, K = 130, N = 70;
    es_rng r;
    es__rng_seed(&r, 9);
    float *A = rand_floats(&r, (size_t)M * K), *B = rand_floats(&r, (size_t)K * N);
    float *C1 = malloc((size_t)M * N * 4), *C2 = malloc((size_t)M * N * 4), *C3 = malloc((size_t)M * N * 4);
    es__gemm_fixed_ref(C1, N, A, K, B, N, M, K, N);
    es__gemm_fixed(C2, N, A, K, B, N, M, K, N, 2);
    es__gemm_fixed(C3, N, A, K, B, N, M, K, N, 3);
    int same = !memcmp(C1, C2, (size_t)M * N * 4) && !memcmp(C1, C3, (size_t)M * N * 4);
    free(A), free(B), free(C1), free(C2), free(C3);
    CHECK_MSG(same, "threaded product differs from the reference");
}

TEST(linear_packed_equals_direct) {
    static const int sizes[][3] = {{1, 1, 1}, {3, 5, 7}, {9, 17, 3}, {4, 3, 33}, {7, 15, 1}, {5, 64, 16}};
    es_rng r;
    es__rng_seed(&r, 3);
    for (size_t s = 0; s < ES_ARRAY_LEN(sizes); s++) {
        int n = sizes[s][0], I = sizes[s][1], O = sizes[s][2];
        float *in = rand_floats(&r, (size_t)n * I), *W = rand_floats(&r, (size_t)O * I), *b = rand_floats(&r, O);
        float *WT = malloc((size_t)O * I * 4), *o1 = malloc((size_t)n * O * 4), *o2 = malloc((size_t)n * O * 4);
        es__linear_pack(WT, W, I, O);
        for (int relu = 0; relu < 2; relu++) {
            es__linear_forward(o1, in, W, NULL, b, n, I, O, relu);
            es__linear_forward(o2, in, W, WT, b, n, I, O, relu);
            CHECK_MSG(!memcmp(o1, o2, (size_t)n * O * 4), "n=%d %d->%d relu=%d: packed and direct differ", n, I, O, relu);
        }
        free(in), free(W), free(b), free(WT), free(o1), free(o2);
    }
}

/* ---- every model x storage method ----------------------------------------------------- */

/* Copy rows [r0, r0+n) of src into dst (allocated by the caller with cap >= n). */
static int slice_batch(es_batch *dst, const es_batch *src, int r0, int n) {
    int F = src->n_fields, D = src->n_dense;
    uint32_t v0 = src->off[(size_t)r0 * F], v1 = src->off[(size_t)(r0 + n) * F];
    if (es_batch_reserve_vals(dst, v1 - v0 + 1)) return -1;
    dst->n = n;
    memcpy(dst->label, src->label + r0, (size_t)n * sizeof(float));
    if (D) memcpy(dst->dense, src->dense + (size_t)r0 * D, (size_t)n * D * sizeof(float));
    for (size_t i = 0; i <= (size_t)n * F; i++) dst->off[i] = src->off[(size_t)r0 * F + i] - v0;
    memcpy(dst->val, src->val + v0, (size_t)(v1 - v0) * sizeof(uint64_t));
    memcpy(dst->wt, src->wt + v0, (size_t)(v1 - v0) * sizeof(float));
    return 0;
}

/* Predict all rows of `all` in batches of `bs`, on `threads` threads. */
static int predict_in_batches(es_model *m, const es_batch *all, int bs, int threads, float *out) {
    es_set_threads(threads);
    if (bs >= all->n) return es_model_predict_batch(m, all, out);
    es_batch b;
    if (es_batch_alloc(&b, bs, all->n_dense, all->n_fields, 0)) return -1;
    int rc = 0;
    for (int r0 = 0; r0 < all->n && !rc; r0 += bs) {
        int n = ES_MIN(bs, all->n - r0);
        rc = slice_batch(&b, all, r0, n);
        if (!rc) rc = es_model_predict_batch(m, &b, out + r0);
    }
    es_batch_free(&b);
    return rc;
}

/* Train model x method briefly, reload it, predict `rows` rows every way. */
static int check_one(const char *model, const char *method, const es_batch *all, char *why, size_t whysz) {
    char path[512];
    snprintf(path, sizeof path, "%s", es_test_path("det_model.es"));
    es_train_params p = es_train_params_basic();
    p.train_path = CRITEO;
    p.valid_frac = 0;
    p.max_rows = 1200;
    p.model = model;
    p.storage = method;
    const es_storage_ops *ops = es__storage_find(method);
    if (ops && ops->staged) { /* multi-stage (autodim, optembed): the search needs validation rows carved from the file */
        p.valid_frac = 0.2;
        p.early_stop = 0;
    }
    p.dim = 8;
    p.budget = strcmp(method, "full") ? 0.25 : 0;
    p.epochs = 1;
    p.threads = 1;
    p.seed = 3;
    p.out_path = path;
    es_train_result res;
    es_err err = {0};
    int rc = es_train(&p, &res, &err);
    if (rc) {
        snprintf(why, whysz, "train: %.400s", err.msg);
        return -1;
    }
    es_model *m = NULL;
    if (es_model_load(&m, path, 0, &err)) {
        snprintf(why, whysz, "load: %.400s", err.msg);
        return -1;
    }
    int n = all->n, bad = 0;
    float *ref = malloc((size_t)n * sizeof(float)), *got = malloc((size_t)n * sizeof(float));
    static const int sizes[] = {1000000, 1, 7, 256};
    if (predict_in_batches(m, all, sizes[0], 1, ref)) {
        snprintf(why, whysz, "predict: %s", es_model_errmsg(m));
        bad = 1;
    }
    for (int t = 1; t <= 2 && !bad; t++)
        for (size_t s = 0; s < ES_ARRAY_LEN(sizes) && !bad; s++) {
            if (predict_in_batches(m, all, sizes[s], t, got)) {
                snprintf(why, whysz, "predict: %s", es_model_errmsg(m));
                bad = 1;
                break;
            }
            for (int i = 0; i < n; i++)
                if (memcmp(&got[i], &ref[i], sizeof(float))) {
                    snprintf(why, whysz, "batch %d, %d threads: row %d gives %.9g, whole file on 1 thread %.9g",
                             sizes[s], t, i, got[i], ref[i]);
                    bad = 1;
                    break;
                }
        }
    es_set_threads(1);
    free(ref), free(got);
    es_model_free(m);
    return bad ? -1 : 0;
}

/* slow tier: it trains every model x method (about 20 s, a minute under ASan or
 * ES_SIMD=ref), so it runs once, in the normal build, not in the quick reruns */
TEST_SLOW(predictions_batch_and_thread_invariant_every_model_and_method) {
    const char *names[64];
    int n_methods = es_storage_methods(names, NULL, 64);
    CHECK(n_methods >= 10);
    /* The rows: the tail of the sample (not trained on), read with the
     * Criteo reader in one batch. */
    es_reader_params rp = es_reader_params_default();
    es_reader *rd = NULL;
    es_err err = {0};
    CHECK_MSG(es_reader_open(&rd, CRITEO, &rp, &err) == 0, "%s", err.msg);
    es_batch all;
    CHECK(es_batch_alloc(&all, 300, es_reader_n_dense(rd), es_reader_n_fields(rd), 0) == 0);
    int got = es_reader_next(rd, &all);
    es_reader_free(rd);
    CHECK_MSG(got > 0 && all.n == 300, "read %d rows", all.n);
    static const char *models[] = {"lr", "fm", "ffm", "dlrm", "dcn"};
    int checked = 0;
    for (size_t mi = 0; mi < ES_ARRAY_LEN(models); mi++)
        for (int si = 0; si < n_methods; si++) {
            char why[512] = "";
            if (check_one(models[mi], names[si], &all, why, sizeof why)) {
                es_batch_free(&all);
                CHECK_MSG(0, "%s + %s: %s", models[mi], names[si], why);
            }
            checked++;
        }
    es_batch_free(&all);
    printf("    %d model x method pairs: 300 rows alone, in 7s, in 256s and together, 1 and 2 threads: same bits\n",
           checked);
}
