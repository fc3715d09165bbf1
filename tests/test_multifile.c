/*
 * test_multifile.c — several files read as one stream (a glob or @LIST,
 * es_reader_open; the shards of a log, and --shard-files under MPI):
 *   - multifile_glob_and_list_read_as_the_whole_file: Criteo shards (one
 *     gzip, one empty) through a glob and through a list with comments
 *     give the rows of the whole file, in order, again after a rewind, and
 *     at 2 and 4 reader threads;
 *   - multifile_csv_header_on_every_file: a CSV header opens every file and
 *     is skipped; a file whose header differs is an error naming both;
 *   - multifile_errors_name_the_file: a bad line names its shard and line;
 *     a glob that matches nothing, a missing or empty list;
 *   - multifile_identity_changes_with_any_file: es__file_id of a list
 *     changes when a file is added, grown or replaced;
 *   - multifile_output_over_an_input_is_refused: --out naming one of a
 *     glob's or a list's files is a usage error, the file unchanged;
 *   - multifile_allocation_failures_are_clean: every allocation of opening,
 *     reading (across a gzip file and a CSV header) and rewinding a list
 *     fails once: an error, no crash, no leak.
 */
#include "alloc_sweep.h"
#include "test.h"

#include "core/fileid.h"
#include "data/reader_impl.h"

#define CRITEO "data/criteo_kaggle_train_first10k.tsv"

/* FNV-1a over every row of r (labels, dense, offsets per row, values),
 * and the row count. */
static uint64_t digest(es_reader *r, uint64_t *rows, es_err *err, int *rc_out) {
    es_batch b;
    uint64_t h = UINT64_C(0xcbf29ce484222325);
    int F = es_reader_n_fields(r), D = es_reader_n_dense(r);
    *rows = 0;
    *rc_out = 0;
    if (es_batch_alloc(&b, 100, D, F, 100 * (size_t)(F + 1)) != 0) return 0;
    for (;;) {
        int n = es_reader_next(r, &b);
        if (n <= 0) {
            *rc_out = n;
            break;
        }
        for (int i = 0; i < n; i++) {
            const unsigned char *p = (const unsigned char *)&b.label[i];
            for (size_t k = 0; k < sizeof(float); k++) h = (h ^ p[k]) * UINT64_C(0x100000001b3);
            for (int d = 0; d < D; d++) {
                p = (const unsigned char *)&b.dense[(size_t)i * D + d];
                for (size_t k = 0; k < sizeof(float); k++) h = (h ^ p[k]) * UINT64_C(0x100000001b3);
            }
            for (int f = 0; f < F; f++)
                for (uint32_t v = b.off[(size_t)i * F + f]; v < b.off[(size_t)i * F + f + 1]; v++) {
                    p = (const unsigned char *)&b.val[v];
                    for (size_t k = 0; k < sizeof(uint64_t); k++) h = (h ^ p[k]) * UINT64_C(0x100000001b3);
                    h = (h ^ (uint64_t)f) * UINT64_C(0x100000001b3);
                }
        }
        *rows += (uint64_t)n;
    }
    (void)err;
    es_batch_free(&b);
    return h;
}

static void digest_path(const char *path, const es_reader_params *rp, uint64_t *rows, uint64_t *h) {
    es_reader *r = NULL;
    es_err err = {0};
    *h = *rows = 0;
    int rc = es_reader_open(&r, path, rp, &err);
    CHECK_MSG(rc == 0, "%s: %s", path, err.msg);
    int nrc;
    *h = digest(r, rows, &err, &nrc);
    CHECK_MSG(nrc == 0, "%s: %s", path, es_reader_errmsg(r));
    /* again after a rewind: the first file's rows first */
    uint64_t rows2;
    CHECK(es_reader_rewind(r) == 0);
    CHECK(digest(r, &rows2, &err, &nrc) == *h && rows2 == *rows);
    es_reader_free(r);
}

TEST(multifile_glob_and_list_read_as_the_whole_file) {
    CHECK(es_test_sh(NULL, "rm -rf $ES_T/mf && mkdir -p $ES_T/mf && head -n 2500 " CRITEO " > $ES_T/mf/all.tsv && cd $ES_T/mf && "
                           "split -l 1000 -d all.tsv p- --additional-suffix=.tsv && gzip p-01.tsv && : > p-015.tsv && "
                           "printf '# the shards\\n\\n%%s/p-00.tsv\\n  %%s/p-01.tsv.gz\\n%%s/p-015.tsv\\n%%s/p-02.tsv\\n' $PWD $PWD $PWD $PWD > list.txt") == 0);
    es_reader_params rp = es_reader_params_default();
    char all[512], glob_[512], list[512];
    snprintf(all, sizeof all, "%s", es_test_path("mf/all.tsv"));
    snprintf(glob_, sizeof glob_, "%s", es_test_path("mf/p-*"));
    snprintf(list, sizeof list, "@%s", es_test_path("mf/list.txt"));
    rp.format = ES_FMT_CRITEO; /* the glob "p-*" has no extension */
    uint64_t ra, rg, rl, ha, hg, hl;
    digest_path(all, &rp, &ra, &ha);
    digest_path(glob_, &rp, &rg, &hg);
    digest_path(list, &rp, &rl, &hl);
    printf("    whole file %llu rows; glob and list of 4 shards (one gzip, one empty): %llu and %llu rows\n", (unsigned long long)ra,
           (unsigned long long)rg, (unsigned long long)rl);
    CHECK_EQ_INT(ra, 2500);
    CHECK(rg == ra && rl == ra);
    CHECK_MSG(hg == ha && hl == ha, "the shards' rows differ from the whole file's");
    /* the parallel parse over the list: the same rows at 2 and 4 threads */
    for (int t = 2; t <= 4; t += 2) {
        uint64_t rt, ht;
        rp.threads = t;
        digest_path(glob_, &rp, &rt, &ht);
        CHECK_MSG(rt == ra && ht == ha, "%d threads over the list: other rows", t);
    }
}

TEST(multifile_csv_header_on_every_file) {
    CHECK(es_test_sh(NULL, "rm -rf $ES_T/mfc && mkdir -p $ES_T/mfc && cd $ES_T/mfc && "
                           "printf 'label,a,b\\n1,x,y\\n0,z,w\\n' > a.csv && printf 'label,a,b\\n\\n0,u,v\\n' > b.csv && "
                           "printf 'label,a,b\\n1,x,y\\n0,z,w\\n\\n0,u,v\\n' > whole.csv && printf 'label,b,a\\n1,q,r\\n' > c.csv") == 0);
    es_reader_params rp = es_reader_params_default();
    rp.columns = "label:label,a:cat,b:cat";
    char p1[512], p2[512];
    snprintf(p1, sizeof p1, "%s", es_test_path("mfc/[ab].csv"));
    snprintf(p2, sizeof p2, "%s", es_test_path("mfc/whole.csv"));
    uint64_t r1, r2, h1, h2, h4, r4;
    digest_path(p1, &rp, &r1, &h1);
    digest_path(p2, &rp, &r2, &h2);
    CHECK_EQ_INT(r1, 3);
    CHECK(h1 == h2 && r1 == r2);
    rp.threads = 4; /* CSV parses in parallel too */
    digest_path(p1, &rp, &r4, &h4);
    CHECK(h4 == h1 && r4 == r1);
    rp.threads = 1;
    /* c.csv names its columns in another order: refused, naming both files */
    snprintf(p1, sizeof p1, "%s", es_test_path("mfc/[ac].csv"));
    es_reader *r = NULL;
    es_err err = {0};
    CHECK(es_reader_open(&r, p1, &rp, &err) == 0);
    uint64_t rows;
    int nrc;
    digest(r, &rows, &err, &nrc);
    CHECK(nrc < 0);
    const char *m = es_reader_errmsg(r);
    printf("    %s\n", m);
    CHECK_STR_HAS(m, "c.csv:1: the header differs from that of");
    CHECK_STR_HAS(m, "a.csv");
    es_reader_free(r);
}

TEST(multifile_errors_name_the_file) {
    CHECK(es_test_sh(NULL, "rm -rf $ES_T/mfe && mkdir -p $ES_T/mfe && head -n 300 " CRITEO " > $ES_T/mfe/all.tsv && cd $ES_T/mfe && "
                           "split -l 100 -d all.tsv s- --additional-suffix=.tsv && sed -i '5s/^[01]\\t/x\\t/' s-01.tsv && gzip s-01.tsv && "
                           ": > empty.txt") == 0);
    es_reader_params rp = es_reader_params_default();
    char p[512];
    snprintf(p, sizeof p, "%s", es_test_path("mfe/s-*"));
    es_reader *r = NULL;
    es_err err = {0};
    CHECK(es_reader_open(&r, p, &rp, &err) == 0);
    uint64_t rows;
    int nrc;
    digest(r, &rows, &err, &nrc);
    CHECK(nrc == ES_EPARSE);
    printf("    %s\n", es_reader_errmsg(r));
    CHECK_STR_HAS(es_reader_errmsg(r), "s-01.tsv.gz:5:");
    CHECK_EQ_INT(rows, 100); /* s-00's, in the first batch */
    es_reader_free(r);
    r = NULL;
    struct {
        const char *spec, *msg;
        int code;
    } bad[] = {
        {"mfe/nothing-*.tsv", "no file matches the pattern", ES_ENOTFOUND},
        {"@mfe/no-list.txt", "cannot open the list of files", ES_ENOTFOUND},
        {"@mfe/empty.txt", "the list of files is empty", ES_EINVAL},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (bad[i].spec[0] == '@') snprintf(p, sizeof p, "@%s", es_test_path(bad[i].spec + 1));
        else snprintf(p, sizeof p, "%s", es_test_path(bad[i].spec));
        int rc = es_reader_open(&r, p, &rp, &err);
        CHECK_MSG(rc == bad[i].code, "%s: rc %d: %s", bad[i].spec, rc, err.msg);
        CHECK_STR_HAS(err.msg, bad[i].msg);
        CHECK(r == NULL);
    }
}

TEST(multifile_identity_changes_with_any_file) {
    CHECK(es_test_sh(NULL, "rm -rf $ES_T/mfi && mkdir -p $ES_T/mfi && cd $ES_T/mfi && printf 'a\\n' > x1.tsv && printf 'b\\n' > x2.tsv") == 0);
    char p[512];
    snprintf(p, sizeof p, "%s", es_test_path("mfi/x*.tsv"));
    es__file_id a, b;
    es_err err = {0};
    CHECK(es__file_id_get(p, 1, &a, &err) == 0);
    CHECK(es__file_id_get(p, 1, &b, &err) == 0);
    char why[128];
    CHECK(es__file_id_changed(&a, &b, why, sizeof why) == 0 && a.head_hash == b.head_hash);
    /* the replacement has other bytes of the same size: the same content
     * could land on the freed inode within one tick of the file clock, a
     * file indistinguishable from the old one (and as good).  Other bytes
     * on the freed inode within that tick leave the stat part as it was
     * (seen once under SAN=1): the heads, part of the identity taken with
     * with_head = 1, tell them apart */
    static const char *const change[] = {"printf 'c\\n' > x3.tsv", "printf 'more\\n' >> x2.tsv", "rm x1.tsv && printf 'z\\n' > x1.tsv.new && mv x1.tsv.new x1.tsv"};
    for (size_t i = 0; i < sizeof change / sizeof change[0]; i++) {
        CHECK(es_test_sh(NULL, "cd $ES_T/mfi && %s", change[i]) == 0);
        CHECK(es__file_id_get(p, 1, &b, &err) == 0);
        int changed = es__file_id_changed(&a, &b, why, sizeof why) != 0;
        if (!changed && a.head_hash != b.head_hash) changed = snprintf(why, sizeof why, "same stat, other head bytes") > 0;
        CHECK_MSG(changed, "%s: the list's identity did not change", change[i]);
        printf("    %s: %s\n", change[i], why);
        a = b;
    }
}

/* open a list of CSV shards (one gzip), read it all, rewind, read again */
static int sweep_list(void *ctx) {
    const char *spec = ctx;
    es_reader_params rp = es_reader_params_default();
    rp.columns = "label:label,a:cat,b:cat";
    es_reader *r = NULL;
    es_err err = {0};
    int rc = es_reader_open(&r, spec, &rp, &err);
    if (rc != ES_OK) return rc;
    es_batch b;
    if ((rc = es_batch_alloc(&b, 4, 0, 2, 16)) != ES_OK) {
        es_reader_free(r);
        return rc;
    }
    for (int pass = 0; pass < 2 && rc >= 0; pass++) {
        while ((rc = es_reader_next(r, &b)) > 0) {
        }
        if (rc == 0 && pass == 0) rc = es_reader_rewind(r);
    }
    es_batch_free(&b);
    es_reader_free(r);
    return rc;
}

TEST(multifile_allocation_failures_are_clean) {
    CHECK(es_test_sh(NULL, "rm -rf $ES_T/mfa && mkdir -p $ES_T/mfa && cd $ES_T/mfa && "
                           "printf 'label,a,b\\n1,x,y\\n0,z,w\\n' > a.csv && printf 'label,a,b\\n0,u,v\\n1,q,r\\n' > b.csv && gzip b.csv && "
                           "printf 'label,a,b\\n1,s,t\\n' > c.csv && printf '%%s/a.csv\\n%%s/b.csv.gz\\n%%s/c.csv\\n' $PWD $PWD $PWD > list") == 0);
    char spec[512];
    snprintf(spec, sizeof spec, "@%s", es_test_path("mfa/list"));
    int n = es_test_alloc_sweep(sweep_list, spec, 2000);
    printf("    %d allocation failure points, each an error without a crash or a leak\n", n);
    CHECK(n > 0);
}

/* No command writes over one of its inputs when the input names several
 * files: --out naming one of a glob's or a list's files is refused, and the
 * file is unchanged. */
TEST(multifile_output_over_an_input_is_refused) {
    CHECK(es_test_sh(NULL, "rm -rf $ES_T/mfo && mkdir -p $ES_T/mfo && head -n 600 " CRITEO " > $ES_T/mfo/all.tsv && cd $ES_T/mfo && "
                           "split -l 200 -d all.tsv s- --additional-suffix=.tsv && cp s-01.tsv keep && "
                           "printf '%%s/s-00.tsv\\n%%s/s-02.tsv\\n' $PWD $PWD > list") == 0);
    const char *log = es_test_path("mfo.log");
    static const char *const cmds[] = {"train \"$ES_T/mfo/s-*\" --valid-frac 0 --early-stop 0 --quiet --out $ES_T/mfo/s-01.tsv",
                                       "train @$ES_T/mfo/list --valid-frac 0 --early-stop 0 --quiet --out $ES_T/mfo/s-02.tsv"};
    for (int i = 0; i < 2; i++) {
        CHECK(es_test_sh(NULL, "cp $ES_T/mfo/s-0%d.tsv $ES_T/mfo/before", i + 1) == 0);
        int st = es_test_sh(log, "%s %s", es_bin(), cmds[i]);
        char *s = es_test_slurp(log);
        CHECK_MSG(st != 0, "%s: exit 0", cmds[i]);
        CHECK_STR_HAS(s, "choose another output path");
        free(s);
        CHECK_MSG(es_test_sh(NULL, "cmp $ES_T/mfo/before $ES_T/mfo/s-0%d.tsv", i + 1) == 0, "%s: the input changed", cmds[i]);
    }
}
