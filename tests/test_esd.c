/*
 * test_esd.c — the binary dataset cache (.esd, src/data/esd.c) and the
 * container's streaming writer it uses (src/format/file.c).
 *
 *   - the streaming writer produces byte for byte the file the in-memory
 *     writer produces for the same tensors;
 *   - round trip on every format (Criteo TSV, CSV with a spec, a threshold,
 *     multi-valued fields and mean pooling, libsvm, libffm, gzip, num_cat):
 *     the cache gives exactly the text reader's batches (labels, numeric
 *     values, offsets, keys, weights, bit for bit) at batch sizes 1, 7, 64
 *     and 1000, twice (a rewind), with the same names and options;
 *   - a model trained from the cache is bit-identical (every tensor, the
 *     reader and schema metadata, the run description) to one trained from
 *     the text with --threads 1, through `convert` and through `--cache`;
 *   - bad input: a truncated cache, a flipped byte (data and header), a
 *     stale source (an error when read, a rebuild with --cache), other input
 *     options, another schema for a model, a cache of another file, and a
 *     file that is not a dataset: each a clear error, never a silent read.
 */
#include "test.h"

#include "data/reader_impl.h"
#include "data/schema.h"
#include "format/file.h"

#include <math.h>
#include <sys/stat.h>
#include <unistd.h>

#define CRITEO "data/criteo_kaggle_train_first10k.tsv"
#define ML "data/ml-latest-small.csv"
#define ML_SPEC "rating:label,userId:cat,movieId:cat,genres:multi"
#define FFM "data/criteo_xlearn_small_train.libffm"

/* ---- the streaming writer --------------------------------------------------- */
TEST(esd_stream_writer_matches_memory_writer) {
    const char *a = es_test_path("stream_mem.es"), *b = es_test_path("stream_str.es");
    enum { N = 20000 };
    static float x[N];
    static uint64_t k[N];
    uint8_t small[5] = {1, 2, 3, 4, 5};
    unlink(a);
    unlink(b);
    for (int i = 0; i < N; i++) x[i] = (float)i * 0.5f, k[i] = (uint64_t)i * 0x9e3779b97f4a7c15ull;
    es_err err = {0};
    es_fwriter *w;
    es_tensor_ref t;
    CHECK_EQ_INT(es__fwriter_open(&w, a, &err), ES_OK);
    es__fwriter_meta(w, "k", "v");
    es__tensor_ref_set(&t, "small", ES_DT_U8, small, 1, (uint64_t)5);
    es__fwriter_tensor(w, &t);
    es__tensor_ref_set(&t, "x", ES_DT_F32, x, 2, (uint64_t)(N / 4), (uint64_t)4);
    es__fwriter_tensor(w, &t);
    es__tensor_ref_set(&t, "k", ES_DT_U64, k, 1, (uint64_t)N);
    es__fwriter_tensor(w, &t);
    CHECK_EQ_INT(es__fwriter_commit(w, &err), ES_OK);
    /* the same, streamed in interleaved pieces of odd sizes */
    CHECK_EQ_INT(es__fwriter_open(&w, b, &err), ES_OK);
    es__fwriter_meta(w, "k", "v");
    es__tensor_ref_set(&t, "small", ES_DT_U8, NULL, 1, (uint64_t)5);
    es__fwriter_tensor_stream(w, &t);
    es__tensor_ref_set(&t, "x", ES_DT_F32, NULL, 2, (uint64_t)(N / 4), (uint64_t)4);
    es__fwriter_tensor_stream(w, &t);
    es__tensor_ref_set(&t, "k", ES_DT_U64, NULL, 1, (uint64_t)N);
    es__fwriter_tensor_stream(w, &t);
    CHECK_EQ_INT(es__fwriter_begin(w), ES_OK);
    CHECK(es__fwriter_meta(w, "late", "x") < 0); /* nothing after begin */
    es__fwriter_abort(w);
    CHECK_EQ_INT(es__fwriter_open(&w, b, &err), ES_OK);
    es__fwriter_meta(w, "k", "v");
    es__tensor_ref_set(&t, "small", ES_DT_U8, NULL, 1, (uint64_t)5);
    es__fwriter_tensor_stream(w, &t);
    es__tensor_ref_set(&t, "x", ES_DT_F32, NULL, 2, (uint64_t)(N / 4), (uint64_t)4);
    es__fwriter_tensor_stream(w, &t);
    es__tensor_ref_set(&t, "k", ES_DT_U64, NULL, 1, (uint64_t)N);
    es__fwriter_tensor_stream(w, &t);
    CHECK_EQ_INT(es__fwriter_begin(w), ES_OK);
    size_t ix = 0, ik = 0;
    for (int step = 0; ix < N || ik < N; step++) {
        size_t nx = ES_MIN((size_t)(37 + step % 5), (size_t)N - ix), nk = ES_MIN((size_t)(101 + step % 3), (size_t)N - ik);
        if (nk) CHECK_EQ_INT(es__fwriter_append(w, 2, k + ik, nk * 8), ES_OK);
        if (nx) CHECK_EQ_INT(es__fwriter_append(w, 1, x + ix, nx * 4), ES_OK);
        ix += nx, ik += nk;
        if (step == 3) CHECK_EQ_INT(es__fwriter_append(w, 0, small, 5), ES_OK);
    }
    CHECK(es__fwriter_append(w, 0, small, 1) < 0); /* past its size: sticky */
    CHECK(es__fwriter_commit(w, &err) < 0);
    CHECK(access(b, F_OK) != 0);
    /* again without the overflow: identical bytes to the memory writer's */
    CHECK_EQ_INT(es__fwriter_open(&w, b, &err), ES_OK);
    es__fwriter_meta(w, "k", "v");
    es__tensor_ref_set(&t, "small", ES_DT_U8, NULL, 1, (uint64_t)5);
    es__fwriter_tensor_stream(w, &t);
    es__tensor_ref_set(&t, "x", ES_DT_F32, NULL, 2, (uint64_t)(N / 4), (uint64_t)4);
    es__fwriter_tensor_stream(w, &t);
    es__tensor_ref_set(&t, "k", ES_DT_U64, NULL, 1, (uint64_t)N);
    es__fwriter_tensor_stream(w, &t);
    CHECK_EQ_INT(es__fwriter_begin(w), ES_OK);
    CHECK_EQ_INT(es__fwriter_append(w, 1, x, sizeof x), ES_OK);
    CHECK_EQ_INT(es__fwriter_append(w, 0, small, 5), ES_OK);
    CHECK_EQ_INT(es__fwriter_append(w, 2, k, sizeof k / 2), ES_OK);
    CHECK_EQ_INT(es__fwriter_append(w, 2, k + N / 2, sizeof k / 2), ES_OK);
    CHECK_EQ_INT(es__fwriter_commit(w, &err), ES_OK);
    CHECK(es_test_sh(NULL, "cmp %s %s", a, b) == 0);
    /* an incomplete tensor is refused at commit, no file left */
    CHECK_EQ_INT(es__fwriter_open(&w, b, &err), ES_OK);
    es__tensor_ref_set(&t, "small", ES_DT_U8, NULL, 1, (uint64_t)5);
    es__fwriter_tensor_stream(w, &t);
    CHECK_EQ_INT(es__fwriter_begin(w), ES_OK);
    CHECK_EQ_INT(es__fwriter_append(w, 0, small, 4), ES_OK);
    CHECK(es__fwriter_commit(w, &err) < 0);
    CHECK_STR_HAS(err.msg, "4 of its 5 bytes");
}

/* ---- the reader's batch kernels against their scalar twins ---------------- */
TEST(esd_kernels_match_ref) {
    static const size_t sizes[] = {0, 1, 3, 4, 7, 15, 16, 17, 33, 100};
    float x[128];
    uint32_t o1[128], o2[128];
    float w1[128], w2[128];
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        size_t n = sizes[s];
        for (size_t i = 0; i < n; i++) x[i] = (float)i - 3.5f;
        CHECK(es__esd_all_finite(x, n) && es__esd_all_finite_ref(x, n));
        for (size_t k = 0; k < n; k++) { /* a bad value at every position, head to tail */
            float keep = x[k];
            x[k] = k % 3 == 0 ? INFINITY : k % 3 == 1 ? -INFINITY : NAN;
            CHECK_MSG(!es__esd_all_finite(x, n) && !es__esd_all_finite_ref(x, n), "n %zu bad at %zu", n, k);
            x[k] = keep;
        }
        memset(o1, 0xab, sizeof o1);
        memset(o2, 0xab, sizeof o2);
        es__esd_iota(o1, n);
        es__esd_iota_ref(o2, n);
        CHECK(memcmp(o1, o2, sizeof o1) == 0); /* also nothing written past n */
        memset(w1, 0xab, sizeof w1);
        memset(w2, 0xab, sizeof w2);
        es__esd_ones(w1, n);
        es__esd_ones_ref(w2, n);
        CHECK(memcmp(w1, w2, sizeof w1) == 0);
    }
}

/* ---- round trips ------------------------------------------------------------ */
static int same_batch(const es_batch *a, const es_batch *b) {
    if (a->n != b->n || a->n_dense != b->n_dense || a->n_fields != b->n_fields) return 0;
    size_t n = (size_t)a->n, F = (size_t)a->n_fields, D = (size_t)a->n_dense;
    if (memcmp(a->label, b->label, n * sizeof(float)) || memcmp(a->dense, b->dense, n * D * sizeof(float)) ||
        memcmp(a->off, b->off, (n * F + 1) * sizeof(uint32_t)))
        return 0;
    size_t nv = a->off[n * F];
    return !memcmp(a->val, b->val, nv * sizeof(uint64_t)) && !memcmp(a->wt, b->wt, nv * sizeof(float));
}

/* One pass of two readers over the same rows: the same batches, call by
 * call; with a `limit` (0: none), the rows up to it (a reader that keeps
 * `limit` rows ends its last batch there, where the text reads on).
 * `what` names the second one. */
static void same_pass(es_reader *rt, es_reader *rc, es_batch *ba, es_batch *bb, const char *text, const char *what, int pass,
                      uint64_t limit) {
    uint64_t rows = 0;
    while (!limit || rows < limit) {
        int na = es_reader_next(rt, ba), nb = es_reader_next(rc, bb);
        if (limit && na > 0 && nb > 0) {
            ba->n = na = (int)ES_MIN((uint64_t)na, limit - rows);
            bb->n = nb = (int)ES_MIN((uint64_t)nb, limit - rows);
        }
        CHECK_MSG(na == nb, "%s bs %d pass %d row %llu: text %d (%s), %s %d (%s)", text, ba->cap, pass, (unsigned long long)rows, na,
                  es_reader_errmsg(rt), what, nb, es_reader_errmsg(rc));
        if (na != nb || na <= 0) break;
        if (!same_batch(ba, bb)) {
            CHECK_MSG(0, "%s bs %d pass %d: batch at row %llu differs", text, ba->cap, pass, (unsigned long long)rows);
            break;
        }
        rows += (uint64_t)na;
    }
}

/* The text and its cache give identical batches, twice. */
static void compare_readers(const char *text, const es_reader_params *p, const char *cache, int bs) {
    es_reader *rt = NULL, *rc = NULL;
    es_err err = {0};
    CHECK_MSG(es_reader_open(&rt, text, p, &err) == 0, "%s: %s", text, err.msg);
    CHECK_MSG(es_reader_open(&rc, cache, p, &err) == 0, "%s: %s", cache, err.msg);
    if (!rt || !rc) {
        es_reader_free(rt);
        es_reader_free(rc);
        return;
    }
    CHECK(es__reader_is_cache(rc) && !es__reader_is_cache(rt));
    int D = es_reader_n_dense(rt), F = es_reader_n_fields(rt);
    CHECK_EQ_INT(es_reader_n_dense(rc), D);
    CHECK_EQ_INT(es_reader_n_fields(rc), F);
    for (int i = 0; i < F; i++) CHECK(strcmp(es_reader_field_name(rt, i), es_reader_field_name(rc, i)) == 0);
    for (int i = 0; i < D; i++) CHECK(strcmp(es_reader_dense_name(rt, i), es_reader_dense_name(rc, i)) == 0);
    es_reader_params a = es_reader_resolved_params(rt), b = es_reader_resolved_params(rc);
    CHECK(a.format == b.format && a.pool == b.pool && a.has_label == b.has_label && a.num_cat == b.num_cat && a.delim == b.delim);
    CHECK((!a.columns && !b.columns) || (a.columns && b.columns && !strcmp(a.columns, b.columns)));
    CHECK(a.label_threshold == b.label_threshold || (isinf(a.label_threshold) && isinf(b.label_threshold)));
    const char *la = es__reader_label_name(rt), *lb = es__reader_label_name(rc);
    CHECK((!la && !lb) || (la && lb && !strcmp(la, lb)));
    es_batch ba, bb;
    CHECK_EQ_INT(es_batch_alloc(&ba, bs, D, F, 0), 0);
    CHECK_EQ_INT(es_batch_alloc(&bb, bs, D, F, 1), 0); /* grows */
    for (int pass = 0; pass < 2; pass++) {
        same_pass(rt, rc, &ba, &bb, text, "cache", pass, 0);
        CHECK_EQ_INT((long long)es_reader_rows(rc), (long long)es_reader_rows(rt));
        CHECK_EQ_INT((long long)es_reader_bad_lines(rc), (long long)es_reader_bad_lines(rt));
        CHECK(es_reader_rewind(rt) == 0 && es_reader_rewind(rc) == 0);
    }
    es_batch_free(&ba);
    es_batch_free(&bb);
    es_reader_free(rt);
    es_reader_free(rc);
}

static void round_trip(const char *text, const es_reader_params *p, const char *cache_name) {
    const char *cache = es_test_path(cache_name);
    es_dataset_info info;
    es_err err = {0};
    int rc = es_dataset_convert(text, p, cache, &info, &err);
    CHECK_MSG(rc == 0, "convert %s: %s", text, err.msg);
    if (rc) return;
    CHECK(info.rows > 0 && info.bytes > 0);
    static const int sizes[] = {1, 7, 64, 1000};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) compare_readers(text, p, cache, sizes[i]);
}

static void write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    CHECK(f != NULL);
    if (!f) return;
    fputs(text, f);
    fclose(f);
}

TEST(esd_round_trip_criteo_tsv_gzip_num_cat) {
    es_reader_params p = es_reader_params_default();
    round_trip(CRITEO, &p, "c.esd");
    p.num_cat = 1;
    round_trip(CRITEO, &p, "c_nc.esd");
    p = es_reader_params_default();
    const char *gz = es_test_path("c.tsv.gz");
    CHECK(es_test_sh(NULL, "head -n 3000 %s | gzip -c > %s", CRITEO, gz) == 0);
    round_trip(gz, &p, "c_gz.esd");
    /* bad lines skipped at convert time: the cache keeps their count */
    const char *bad = es_test_path("bad.tsv");
    CHECK(es_test_sh(NULL, "(head -n 50 %s; echo 'x\tbad'; sed -n 51,80p %s) > %s", CRITEO, CRITEO, bad) == 0);
    p.skip_bad = 1;
    round_trip(bad, &p, "bad.esd");
}

TEST(esd_round_trip_csv_libsvm_libffm) {
    es_reader_params p = es_reader_params_default();
    p.format = ES_FMT_CSV;
    p.columns = ML_SPEC;
    p.label_threshold = 4;
    round_trip(ML, &p, "ml.esd");
    p.pool = ES_POOL_MEAN;
    round_trip(ML, &p, "ml_mean.esd");
    /* a small CSV: numeric columns, quotes, empty multi fields, no spec */
    const char *csv = es_test_path("small.csv");
    write_file(csv, "y,a,n,g\n1,x,3.5,p|q\n0,\"y,z\",,\n1,x,-2,|p||r|\n\n0,w,1e3,q\n");
    es_reader_params c = es_reader_params_default();
    c.columns = "y:label,a:cat,n:num,g:multi";
    round_trip(csv, &c, "small.esd");
    c.columns = NULL;
    round_trip(csv, &c, "small_nospec.esd");
    /* libsvm: varied term counts and weights, -1/+1 labels, comments */
    const char *svm = es_test_path("s.libsvm");
    write_file(svm, "+1 1:0.5 7:2 3:1\n-1 2:1 # comment\n\n1 9:-0.25\n0 4:1 4:1 5:3e-2\n");
    es_reader_params s = es_reader_params_default();
    round_trip(svm, &s, "s.esd");
    s.pool = ES_POOL_MEAN;
    round_trip(svm, &s, "s_mean.esd");
    es_reader_params f = es_reader_params_default();
    round_trip(FFM, &f, "f.esd");
    f.n_fields_hint = 40;
    round_trip(FFM, &f, "f40.esd");
}

/* ---- rows kept in memory (es__reader_keep_rows, train --in-memory) ---------- */
/* A reader that keeps its rows gives the text's batches on every pass:
 * the first (recorded while parsed) and the later ones (from memory, once
 * a whole pass is kept).  need > 0: passes read `need` rows at most. */
static void compare_kept(const char *text, const es_reader_params *p, int bs, uint64_t need) {
    es_reader *rt = NULL, *rk = NULL;
    es_err err = {0};
    CHECK_MSG(es_reader_open(&rt, text, p, &err) == 0 && es_reader_open(&rk, text, p, &err) == 0, "%s: %s", text, err.msg);
    if (!rt || !rk) {
        es_reader_free(rt);
        es_reader_free(rk);
        return;
    }
    CHECK_EQ_INT(es__reader_keep_rows(rk, need), 0);
    const int D = es_reader_n_dense(rt), F = es_reader_n_fields(rt);
    es_batch ba, bb;
    CHECK_EQ_INT(es_batch_alloc(&ba, bs, D, F, 0), 0);
    CHECK_EQ_INT(es_batch_alloc(&bb, bs, D, F, 1), 0);
    for (int pass = 0; pass < 3; pass++) {
        /* from the second pass on the rows come from memory */
        CHECK_MSG(es__reader_is_cache(rk) == (pass > 0), "%s bs %d pass %d: served from memory: %d", text, bs, pass, es__reader_is_cache(rk));
        CHECK((es__reader_kept_bytes(rk) > 0) == (pass > 0));
        same_pass(rt, rk, &ba, &bb, text, "kept", pass, need);
        if (!need) {
            CHECK_EQ_INT((long long)es_reader_rows(rk), (long long)es_reader_rows(rt));
            CHECK_EQ_INT((long long)es_reader_bad_lines(rk), (long long)es_reader_bad_lines(rt));
            CHECK(!strcmp(es_reader_bad_report(rk), es_reader_bad_report(rt)));
        }
        CHECK(es_reader_rewind(rt) == 0 && es_reader_rewind(rk) == 0);
    }
    es_batch_free(&ba);
    es_batch_free(&bb);
    es_reader_free(rt);
    es_reader_free(rk);
}

static void kept_all_sizes(const char *text, const es_reader_params *p) {
    static const int sizes[] = {1, 7, 64, 1000};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) compare_kept(text, p, sizes[i], 0);
    compare_kept(text, p, 7, 30); /* whole at 30 rows (a pass stops there) */
}

TEST(esd_kept_rows_match_the_text) {
    es_reader_params p = es_reader_params_default();
    kept_all_sizes(CRITEO, &p); /* numeric columns, one value per field */
    const char *bad = es_test_path("kbad.tsv");
    CHECK(es_test_sh(NULL, "(head -n 50 %s; echo 'x\tbad'; sed -n 51,80p %s) > %s", CRITEO, CRITEO, bad) == 0);
    p.skip_bad = 1;
    kept_all_sizes(bad, &p); /* the bad line's count and message on every pass */
    es_reader_params m = es_reader_params_default();
    m.format = ES_FMT_CSV;
    m.columns = ML_SPEC;
    m.label_threshold = 4;
    m.pool = ES_POOL_MEAN; /* multi-valued fields (counts) with weights other than 1 */
    compare_kept(ML, &m, 1000, 0);
    compare_kept(ML, &m, 64, 5000);
    const char *svm = es_test_path("k.libsvm"); /* the first rows one value, weight 1: both arrays start late */
    write_file(svm, "1 1:1\n0 2:1\n1 9:-0.25 3:1\n\n0 4:1 4:1 5:3e-2\n-1 2:1 # comment\n");
    es_reader_params s = es_reader_params_default();
    kept_all_sizes(svm, &s);
    es_reader_params f = es_reader_params_default();
    kept_all_sizes(FFM, &f);
    /* a pass that skips rows keeps nothing; the next whole one does */
    es_reader *r = NULL;
    es_err err = {0};
    CHECK(es_reader_open(&r, CRITEO, &s, &err) == 0 && es__reader_keep_rows(r, 0) == 0);
    es_batch b;
    CHECK_EQ_INT(es_batch_alloc(&b, 512, es_reader_n_dense(r), es_reader_n_fields(r), 0), 0);
    uint64_t got = 0;
    CHECK(es__reader_skip(r, 100, &got) == 0 && got == 100);
    while (es_reader_next(r, &b) > 0) {
    }
    CHECK(es_reader_rewind(r) == 0 && !es__reader_is_cache(r));
    while (es_reader_next(r, &b) > 0) {
    }
    CHECK(es_reader_rewind(r) == 0 && es__reader_is_cache(r));
    CHECK(es_reader_next(r, &b) == 512);
    es_batch_free(&b);
    es_reader_free(r);
}

/* ---- models ---------------------------------------------------------------- */
/* Two model files hold the same tensors, byte for byte, and the same
 * reader, schema and run-description metadata. */
static void same_model(const char *a, const char *b) {
    es_file *fa = NULL, *fb = NULL;
    es_err err = {0};
    CHECK_MSG(es__file_open(&fa, a, 0, &err) == 0, "%s", err.msg);
    CHECK_MSG(es__file_open(&fb, b, 0, &err) == 0, "%s", err.msg);
    if (!fa || !fb) goto done;
    CHECK_EQ_INT(es__file_n_tensors(fa), es__file_n_tensors(fb));
    for (int i = 0; i < es__file_n_tensors(fa) && i < es__file_n_tensors(fb); i++) {
        const es_tensor_ref *ta = es__file_tensor_at(fa, i), *tb = es__file_tensor_at(fb, i);
        CHECK_MSG(!strcmp(ta->name, tb->name) && ta->nbytes == tb->nbytes && !memcmp(ta->data, tb->data, ta->nbytes),
                  "tensor %s differs", ta->name);
    }
    int compared = 0;
    for (int i = 0; i < es__file_n_meta(fa); i++) {
        const char *k, *v;
        es__file_meta_at(fa, i, &k, &v);
        if (strncmp(k, "reader.", 7) && strncmp(k, "schema.", 7) && strncmp(k, "train.cfg.", 10) && strncmp(k, "model.", 6) &&
            strncmp(k, "storage.", 8))
            continue;
        const char *w = es__file_meta(fb, k);
        CHECK_MSG(w && !strcmp(v, w), "%s: %s vs %s", k, v, w ? w : "(absent)");
        compared++;
    }
    CHECK(compared > 10);
done:
    es__file_close(fa);
    es__file_close(fb);
}

TEST(esd_model_bit_identical_to_text) {
    const char *ta = es_test_path("m_text.es"), *tb = es_test_path("m_cache.es"), *tc = es_test_path("m_opt.es");
    const char *cache = es_test_path("mc.esd"), *opt = es_test_path("mopt.esd");
    const char *common = "--threads 1 --epochs 2 --max-rows 6000 --quiet";
    CHECK(es_test_sh(NULL, "%s train %s %s --out %s", es_bin(), CRITEO, common, ta) == 0);
    CHECK(es_test_sh(NULL, "%s convert %s -o %s -q", es_bin(), CRITEO, cache) == 0);
    CHECK(es_test_sh(NULL, "%s train %s %s --out %s", es_bin(), cache, common, tb) == 0);
    CHECK(es_test_sh(NULL, "%s train %s --cache=%s %s --out %s", es_bin(), CRITEO, opt, common, tc) == 0);
    same_model(ta, tb);
    same_model(ta, tc);
    /* eval and predict read the cache as the text, to the byte */
    const char *e1 = es_test_path("e1.txt"), *e2 = es_test_path("e2.txt");
    CHECK(es_test_sh(e1, "%s predict %s %s", es_bin(), ta, CRITEO) == 0);
    CHECK(es_test_sh(e2, "%s predict %s %s", es_bin(), ta, cache) == 0);
    CHECK(es_test_sh(NULL, "cmp %s %s", e1, e2) == 0);
    CHECK(es_test_sh(e1, "%s eval %s %s | grep -v seconds | sed 's/\"[a-z_]*per_s\":[0-9.e+-]*//g'", es_bin(), ta, CRITEO) == 0);
    CHECK(es_test_sh(e2, "%s eval %s %s | grep -v seconds | sed 's/\"[a-z_]*per_s\":[0-9.e+-]*//g'", es_bin(), ta, cache) == 0);
    char *s1 = es_test_slurp(e1), *s2 = es_test_slurp(e2);
    double a1 = es_test_json_num(s1, "auc"), a2 = es_test_json_num(s2, "auc");
    CHECK_MSG(a1 == a2 && !isnan(a1), "eval auc %.9g vs %.9g", a1, a2);
    free(s1);
    free(s2);
    /* CSV with multi-valued fields and mean pooling (weights in the cache) */
    const char *ma = es_test_path("ml_text.es"), *mb = es_test_path("ml_cache.es");
    const char *mlc = "--columns " ML_SPEC " --label-threshold 4 --threads 1 --epochs 2 --max-rows 20000 --quiet";
    CHECK(es_test_sh(NULL, "%s train %s %s --out %s", es_bin(), ML, mlc, ma) == 0);
    CHECK(es_test_sh(NULL, "%s train %s %s --cache=%s --out %s", es_bin(), ML, mlc, es_test_path("ml_t.esd"), mb) == 0);
    same_model(ma, mb);
}

/* train --in-memory: the same model as from the text, through the count
 * pass (--valid-frac), the vocabulary, the epochs and a refit, and with
 * --max-rows; the JSON says what it held. */
TEST(esd_in_memory_model_bit_identical) {
    const char *ta = es_test_path("im_text.es"), *tb = es_test_path("im_mem.es"), *log = es_test_path("im.log");
    const char *common = "--threads 1 --epochs 3 --early-stop 1 --valid-frac 0.2 --quiet";
    CHECK(es_test_sh(NULL, "%s train %s %s --out %s", es_bin(), CRITEO, common, ta) == 0);
    CHECK(es_test_sh(log, "%s train %s %s --in-memory --out %s", es_bin(), CRITEO, common, tb) == 0);
    same_model(ta, tb);
    char *s = es_test_slurp(log);
    double kept = s ? es_test_json_num(s, "in_memory_bytes") : 0;
    /* 10000 rows: 26 keys of 8 bytes, 13 numbers of 4, a label byte */
    CHECK_MSG(kept == 10000.0 * (26 * 8 + 13 * 4 + 1), "in_memory_bytes %.0f", kept);
    free(s);
    const char *ma = es_test_path("im_ml_text.es"), *mb = es_test_path("im_ml_mem.es");
    const char *mlc = "--columns " ML_SPEC " --label-threshold 4 --pool mean --threads 1 --epochs 2 --max-rows 20000 --quiet";
    CHECK(es_test_sh(NULL, "%s train %s %s --out %s", es_bin(), ML, mlc, ma) == 0);
    CHECK(es_test_sh(log, "%s train %s %s --in-memory --out %s", es_bin(), ML, mlc, mb) == 0);
    same_model(ma, mb);
    s = es_test_slurp(log);
    CHECK(s && es_test_json_num(s, "in_memory_bytes") > 20000.0 * 8);
    free(s);
}

/* ---- bad input --------------------------------------------------------------- */
static void expect_open_error(const char *path, const es_reader_params *p, int code, const char *msg) {
    es_reader *r = NULL;
    es_err err = {0};
    int rc = es_reader_open(&r, path, p, &err);
    CHECK_MSG(rc == code, "%s: rc %d, expected %d (%s)", path, rc, code, err.msg);
    CHECK(r == NULL);
    CHECK_STR_HAS(err.msg, msg);
    es_reader_free(r);
}

TEST(esd_bad_inputs_are_clear_errors) {
    const char *src = es_test_path("src.tsv"), *cache = es_test_path("src.esd"), *bad = es_test_path("bad.esd");
    CHECK(es_test_sh(NULL, "head -n 2000 %s > %s", CRITEO, src) == 0);
    es_reader_params p = es_reader_params_default();
    es_err err = {0};
    CHECK_EQ_INT(es_dataset_convert(src, &p, cache, NULL, &err), 0);
    struct stat st;
    CHECK(stat(cache, &st) == 0);
    /* truncated */
    CHECK(es_test_sh(NULL, "head -c %lld %s > %s", (long long)st.st_size - 100, cache, bad) == 0);
    expect_open_error(bad, &p, ES_EFORMAT, "truncated");
    /* a flipped byte in the data (the keys), then in the metadata */
    CHECK(es_test_sh(NULL, "cp %s %s && printf '\\x5a' | dd of=%s bs=1 seek=%lld conv=notrunc 2>/dev/null", cache, bad, bad,
                     (long long)st.st_size - 5000) == 0);
    expect_open_error(bad, &p, ES_ECHECKSUM, "checksum");
    CHECK(es_test_sh(NULL, "cp %s %s && printf 'Z' | dd of=%s bs=1 seek=300 conv=notrunc 2>/dev/null", cache, bad, bad) == 0);
    expect_open_error(bad, &p, ES_ECHECKSUM, "checksum");
    /* other input options */
    es_reader_params q = p;
    q.num_cat = 1;
    expect_open_error(cache, &q, ES_EINVAL, "other input options: --no-num-cat");
    q = p;
    q.format = ES_FMT_CSV;
    expect_open_error(cache, &q, ES_EINVAL, "format criteo, not csv");
    q = p;
    q.label_threshold = 0.5;
    expect_open_error(cache, &q, ES_EINVAL, "label threshold");
    q = p;
    q.has_label = 0;
    expect_open_error(cache, &q, ES_EINVAL, "labels");
    /* the ML cache with mean pooling read with sum pooling */
    const char *ml = es_test_path("ml_opts.esd");
    es_reader_params m = es_reader_params_default();
    m.columns = ML_SPEC;
    m.label_threshold = 4;
    m.pool = ES_POOL_MEAN;
    CHECK_EQ_INT(es_dataset_convert(ML, &m, ml, NULL, &err), 0);
    q = m;
    q.pool = ES_POOL_SUM;
    expect_open_error(ml, &q, ES_EINVAL, "--pool mean, not sum");
    q = m;
    q.columns = "rating:label,userId:cat,movieId:cat";
    expect_open_error(ml, &q, ES_EINVAL, "columns");
    /* a model of another schema refuses the cache */
    const char *model = es_test_path("ml3.es"), *out = es_test_path("ml3.txt");
    CHECK(es_test_sh(NULL, "%s train %s --columns rating:label,userId:cat,movieId:cat --label-threshold 4 --max-rows 2000 --epochs 1 "
                           "--valid-frac 0 --quiet --out %s",
                     es_bin(), ML, model) == 0);
    CHECK(es_test_sh(out, "%s eval %s %s 2>&1", es_bin(), model, ml) != 0);
    char *s = es_test_slurp(out);
    CHECK_STR_HAS(s, "other input options");
    free(s);
    /* a stale source: an error when read, a rebuild with --cache */
    CHECK(es_test_sh(NULL, "sleep 0.01; sed -n 2001p %s >> %s", CRITEO, src) == 0);
    expect_open_error(cache, &p, ES_EINVAL, "stale cache");
    es_dataset_info info;
    CHECK_EQ_INT(es_dataset_cache(src, &p, cache, &info, &err), 0);
    CHECK(info.built == 1 && info.stale == 1 && info.rows == 2001);
    CHECK_EQ_INT(es_dataset_cache(src, &p, cache, &info, &err), 0);
    CHECK(info.built == 0 && info.rows == 2001);
    /* --cache: corrupt, of another file, other options, not a dataset */
    CHECK(es_test_sh(NULL, "cp %s %s && printf '\\x5a' | dd of=%s bs=1 seek=%lld conv=notrunc 2>/dev/null", cache, bad, bad,
                     (long long)st.st_size - 5000) == 0);
    CHECK(es_dataset_cache(src, &p, bad, &info, &err) == ES_ECHECKSUM);
    CHECK_STR_HAS(err.msg, "checksum");
    CHECK(es_dataset_cache(CRITEO, &p, cache, &info, &err) == ES_EINVAL);
    CHECK_STR_HAS(err.msg, "of another file");
    q = p;
    q.num_cat = 1;
    CHECK(es_dataset_cache(src, &q, cache, &info, &err) == ES_EINVAL);
    CHECK_STR_HAS(err.msg, "other input options");
    CHECK(es_dataset_cache(src, &p, model, &info, &err) == ES_EINVAL);
    CHECK_STR_HAS(err.msg, "not a dataset cache");
    /* the CLI: a non-zero exit and the message */
    CHECK(es_test_sh(out, "%s train %s --cache=%s --epochs 1 --quiet 2>&1", es_bin(), src, bad) != 0);
    s = es_test_slurp(out);
    CHECK_STR_HAS(s, "checksum");
    free(s);
    CHECK(es_test_sh(out, "%s convert %s -o %s 2>&1", es_bin(), src, src) != 0);
    /* a model is not a dataset */
    expect_open_error(model, &p, ES_EFORMAT, "not a dataset cache");
}

TEST(esd_cli_help_and_reuse) {
    const char *out = es_test_path("help.txt");
    CHECK(es_test_sh(out, "%s convert --help", es_bin()) == 0);
    char *s = es_test_slurp(out);
    CHECK_STR_HAS(s, "usage: embstore convert DATA");
    CHECK_STR_HAS(s, "stale");
    free(s);
    CHECK(es_test_sh(out, "%s train --help", es_bin()) == 0);
    s = es_test_slurp(out);
    CHECK_STR_HAS(s, "--cache [PATH.esd]");
    free(s);
    const char *src = es_test_path("reuse.tsv");
    CHECK(es_test_sh(NULL, "rm -f %s.esd; head -n 1500 %s > %s", src, CRITEO, src) == 0);
    CHECK(es_test_sh(out, "%s train %s --cache --epochs 1 --valid-frac 0 2>&1 >/dev/null", es_bin(), src) == 0);
    s = es_test_slurp(out);
    CHECK_STR_HAS(s, "built cache ");
    CHECK_STR_HAS(s, "reuse.tsv.esd: 1500 rows");
    free(s);
    CHECK(es_test_sh(out, "%s train %s --cache %s.esd --epochs 1 --valid-frac 0 2>&1 >/dev/null", es_bin(), src, src) == 0);
    s = es_test_slurp(out);
    CHECK_STR_HAS(s, "reading cache ");
    free(s);
}

/* Content a checksum does not judge (a crafted file whose checksums were
 * recomputed): a label that is not 0/1, a non-finite number: the batch
 * reading it fails with a message naming the row, and stays failed. */
static void fix_sums(uint8_t *b, size_t n) {
    uint32_t nt;
    uint64_t table_off;
    memcpy(&nt, b + 36, 4);
    memcpy(&table_off, b + 56, 8);
    for (uint32_t i = 0; i < nt; i++) {
        uint8_t *e = b + table_off + (uint64_t)i * 128;
        uint64_t off, nb;
        memcpy(&off, e + 104, 8);
        memcpy(&nb, e + 112, 8);
        uint64_t h = es__hash(b + off, (size_t)nb, 0);
        memcpy(e + 120, &h, 8);
    }
    es__file_fix_checksum(b, n);
}

TEST(esd_content_checks_behind_valid_checksums) {
    const char *src = es_test_path("cc.tsv"), *cache = es_test_path("cc.esd");
    CHECK(es_test_sh(NULL, "head -n 300 %s > %s", CRITEO, src) == 0);
    es_err err = {0};
    CHECK_EQ_INT(es_dataset_convert(src, NULL, cache, NULL, &err), 0);
    char *img = NULL;
    size_t n = 0;
    FILE *f = fopen(cache, "rb");
    CHECK(f != NULL);
    if (!f) return;
    fseek(f, 0, SEEK_END);
    n = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    img = malloc(n);
    CHECK(fread(img, 1, n, f) == n);
    fclose(f);
    for (int c = 0; c < 2; c++) {
        char *bad = malloc(n);
        memcpy(bad, img, n);
        /* find the tensors through a verified open of the clean copy */
        es_file *cf = NULL;
        void *al = es__alloc_aligned(n);
        memcpy(al, img, n);
        CHECK_EQ_INT(es__file_open_mem(&cf, al, n, 0, &err), 0);
        const es_tensor_ref *t = es__file_tensor(cf, c == 0 ? "label" : "dense");
        size_t off = (size_t)((const char *)t->data - (const char *)al);
        if (c == 0) bad[off + 290] = 7; /* row 291 of 300: the third batch of 128 */
        else {
            float nan = NAN;
            memcpy(bad + off + (size_t)(200 * 13 + 5) * sizeof(float), &nan, sizeof nan); /* row 201 */
        }
        es__file_close(cf);
        es__free_aligned(al);
        fix_sums((uint8_t *)bad, n);
        es_reader *r = NULL;
        CHECK_MSG(es__reader_open_mem(&r, bad, n, "crafted.esd", NULL, &err) == 0, "%s", err.msg);
        es_batch b;
        CHECK_EQ_INT(es_batch_alloc(&b, 128, 13, 26, 0), 0);
        int got, rows = 0;
        while ((got = es_reader_next(r, &b)) > 0) rows += got;
        CHECK_EQ_INT(got, ES_EFORMAT);
        CHECK_EQ_INT(b.n, 0);
        CHECK_EQ_INT(rows, c == 0 ? 256 : 128);
        CHECK_STR_HAS(es_reader_errmsg(r), c == 0 ? "row 291 of the dataset cache: label is not 0 or 1" : "row 201 of the dataset cache: a numeric feature is not finite");
        CHECK_EQ_INT(es_reader_next(r, &b), ES_EFORMAT); /* sticky */
        es_batch_free(&b);
        es_reader_free(r);
        free(bad);
    }
    free(img);
}
