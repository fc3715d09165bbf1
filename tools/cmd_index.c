/*
 * cmd_index.c — `embstore index build | search | eval`: vector search from
 * the command line, a thin client of the es_index / es_multi / es_vecs API.
 *
 *   build   read vectors (texmex, raw, text, a model's tensor), build an
 *           index of any kind, attach attributes, save it;
 *   search  load an index, search a query file, print or write ids and
 *           distances;
 *   eval    recall@1/10/100 against a ground-truth .ivecs or exact search,
 *           queries/s, bytes per vector and build time, for a saved index or
 *           for several index specifications built on the spot, as a table
 *           or JSON.
 * Multi-vector (MUVERA) indexes are built and searched with --multi.
 */
#include "cli.h"

#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_SPECS 32
#define ES_MAX_W(a, b) ((a) > (b) ? (a) : (b))
#define MAX_SWEEP 16

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* ---- shared option handling ---------------------------------------------------------- */
#define INDEX_OPTS_HELP                                                                                     \
    "index options (also usable as key=value in an eval --kind spec, '-' or '_' alike):\n"                \
    "  --kind K              flat | sq8 | binary | pq | hnsw | ivf (default flat)\n"                      \
    "  --metric M            l2 | ip | cosine (default l2)\n"                                             \
    "  --search-dim D        index only the first D components (Matryoshka prefix; after PCA with --pca)\n" \
    "  --pca                 fit a PCA rotation first (prefix = top principal components)\n"            \
    "  --rerank R            re-score R*k candidates with the full float32 vectors (kept in the index)\n" \
    "  --bits B              binary: bits per code (default: the search dimension)\n"                   \
    "  --itq N               binary: PCA + N iterations of ITQ rotation (default 0: sign of centred data)\n" \
    "  --pq-m M              pq: sub-quantizers, must divide the dimension (default dim/8)\n"            \
    "  --pq-bits B           pq: bits per sub-quantizer code, 1..8 (default 8)\n"                       \
    "  --opq N               pq: learn an OPQ rotation in N rounds (default 0)\n"                       \
    "  --M M                 hnsw: links per node (default 16; 2M on the base layer)\n"                 \
    "  --ef-construction N   hnsw: build beam width (default 200)\n"                                    \
    "  --ef-search N         hnsw: search beam width (default 64)\n"                                    \
    "  --order O             hnsw: insertion order input | random | lid_desc | lid_asc (default input)\n" \
    "  --nlist N             ivf: lists (default 4*sqrt(n))\n"                                          \
    "  --nprobe N            ivf: lists scanned per query (default 8)\n"                                \
    "  --codes C             ivf: flat | sq8 | pq list codes (default flat)\n"                          \
    "  --kmeans-iters N      k-means iterations (default 20)\n"                                          \
    "  --train-max N         vectors sampled for training (default 65536)\n"                            \
    "  --seed S              random seed (default 1)\n"

#define INPUT_OPTS_HELP                                                                                      \
    "input options (base and query files):\n"                                                              \
    "  --format F            fvecs | bvecs | ivecs | text | raw | tensor (default: from the extension:\n" \
    "                        .fvecs .bvecs .ivecs, .txt/.vec/.text, .f32/.raw/.bin, .es/.embstore/.model)\n" \
    "  --dim D               dimension of raw float32 files\n"                                            \
    "  --model-tensor NAME   read the f32 2-D tensor NAME of an embstore file (e.g. storage.<..>.w rows)\n" \
    "  --max-rows N          read only the first N vectors of each input\n"

#define MULTI_OPTS_HELP                                                                                     \
    "multi-vector options (--multi):\n"                                                                   \
    "  --multi               documents and queries are vector sets, searched by Chamfer similarity\n"    \
    "                        through MUVERA fixed dimensional encodings\n"                               \
    "  --set-size G          sets are runs of G consecutive vectors (default for text: rows that share\n" \
    "                        a label form one set)\n"                                                     \
    "  --k-sim K             SimHash bits per repetition (default 4: 16 buckets)\n"                       \
    "  --reps R              repetitions (default 10)\n"                                                  \
    "  --d-proj D            projected dimension per bucket (default 16; 0 = none)\n"                     \
    "  --d-final D           Count-Sketch the FDE down to D dimensions (default 0: off)\n"                 \
    "  --candidates C        documents re-ranked by exact Chamfer per query (default 100)\n"                 \
    "  --center              subtract the mean document vector before normalising (for data in one\n"    \
    "                        orthant, e.g. SIFT; Chamfer similarity is then over centred vectors)\n"

typedef struct {
    es_vec_read_params rp;
    const char *format_name;
    int threads;
    int json;
    /* multi */
    int multi;
    es_multi_params mp;
} common_opts;

static void common_init(common_opts *c) {
    memset(c, 0, sizeof *c);
    c->rp = es_vec_read_params_default();
    c->mp = es_multi_params_default();
}

static int parse_format(const char *s, es_vec_format *out) {
    static const struct {
        const char *n;
        es_vec_format f;
    } m[] = {{"auto", ES_VEC_AUTO}, {"fvecs", ES_VEC_FVECS}, {"bvecs", ES_VEC_BVECS},   {"ivecs", ES_VEC_IVECS},
             {"text", ES_VEC_TEXT}, {"raw", ES_VEC_RAW_F32}, {"tensor", ES_VEC_TENSOR}};
    for (size_t i = 0; i < sizeof m / sizeof m[0]; i++)
        if (!strcmp(s, m[i].n)) {
            *out = m[i].f;
            return 0;
        }
    return -1;
}

/* Normalise an option name: drop leading dashes, '_' -> '-'. */
static void norm_key(const char *in, char *out, size_t n) {
    while (*in == '-') in++;
    size_t i = 0;
    for (; in[i] && i + 1 < n; i++) out[i] = in[i] == '_' ? '-' : in[i];
    out[i] = 0;
}

/* Search-time values an eval spec may sweep ("ef-search=16/32/64"). */
typedef struct {
    char key[32];
    int n;
    long long v[MAX_SWEEP];
} sweep_t;

static const char *const index_keys[] = {"kind",   "metric",  "codes",        "order",    "pca",   "search-dim",
                                         "rerank", "bits",    "itq",          "pq-m",     "pq-bits", "opq",
                                         "M",      "ef-construction", "ef-search", "nlist", "nprobe", "kmeans-iters",
                                         "train-max", "seed"};

static int is_index_key(const char *k) {
    for (size_t i = 0; i < sizeof index_keys / sizeof index_keys[0]; i++)
        if (!strcmp(k, index_keys[i])) return 1;
    return 0;
}

static int is_search_key(const char *k) { return !strcmp(k, "ef-search") || !strcmp(k, "nprobe") || !strcmp(k, "rerank"); }

/* Apply one index option (normalised key, value string) to p.  Returns 1 if
 * applied, 0 if the key is not an index option, -1 after a usage error.
 * `sweep` (may be NULL) receives slash-separated lists of search values. */
static int apply_index_opt(const char *cmd, const char *key, const char *val, es_index_params *p, sweep_t *sweep) {
    long long v;
    if (!strcmp(key, "kind")) {
        if (es_index_kind_parse(val, &p->kind)) {
            cli_usage(cmd, "unknown index kind '%s' (flat, sq8, binary, pq, hnsw, ivf)", val);
            return -1;
        }
        return 1;
    }
    if (!strcmp(key, "metric")) {
        if (es_metric_parse(val, &p->metric)) {
            cli_usage(cmd, "unknown metric '%s' (l2, ip, cosine)", val);
            return -1;
        }
        return 1;
    }
    if (!strcmp(key, "codes")) {
        es_index_kind k;
        if (es_index_kind_parse(val, &k) || (k != ES_INDEX_FLAT && k != ES_INDEX_SQ8 && k != ES_INDEX_PQ)) {
            cli_usage(cmd, "ivf codes must be flat, sq8 or pq, got '%s'", val);
            return -1;
        }
        p->ivf_codes = k;
        return 1;
    }
    if (!strcmp(key, "order")) {
        static const char *const names[] = {"input", "random", "lid_desc", "lid_asc"};
        for (int i = 0; i < 4; i++)
            if (!strcmp(val, names[i])) {
                p->order = (es_insert_order)i;
                return 1;
            }
        cli_usage(cmd, "unknown insertion order '%s' (input, random, lid_desc, lid_asc)", val);
        return -1;
    }
    if (!strcmp(key, "pca")) {
        if (cli_int(cmd, "pca", val, 0, 1, &v)) return -1;
        p->pca = (int)v;
        return 1;
    }
    static const struct {
        const char *k;
        long long lo, hi;
        size_t off;
    } nums[] = {
        {"search-dim", 0, 1 << 20, offsetof(es_index_params, search_dim)},
        {"rerank", 0, 10000, offsetof(es_index_params, rerank)},
        {"bits", 0, 1 << 20, offsetof(es_index_params, binary_bits)},
        {"itq", 0, 10000, offsetof(es_index_params, itq_iters)},
        {"pq-m", 0, 1 << 20, offsetof(es_index_params, pq_m)},
        {"pq-bits", 1, 8, offsetof(es_index_params, pq_bits)},
        {"opq", 0, 1000, offsetof(es_index_params, opq_iters)},
        {"M", 2, 64, offsetof(es_index_params, hnsw_m)},
        {"ef-construction", 1, 65536, offsetof(es_index_params, ef_construction)},
        {"ef-search", 1, 1 << 20, offsetof(es_index_params, ef_search)},
        {"nlist", 0, 1 << 24, offsetof(es_index_params, nlist)},
        {"nprobe", 1, 1 << 24, offsetof(es_index_params, nprobe)},
        {"kmeans-iters", 1, 1000, offsetof(es_index_params, kmeans_iters)},
    };
    for (size_t i = 0; i < sizeof nums / sizeof nums[0]; i++) {
        if (strcmp(key, nums[i].k)) continue;
        char opt[48];
        snprintf(opt, sizeof opt, "--%s", key);
        if (strchr(val, '/')) {
            if (!sweep || !is_search_key(key)) {
                cli_usage(cmd, "%s takes one value here (lists a/b/c are for search parameters in eval)", opt);
                return -1;
            }
            snprintf(sweep->key, sizeof sweep->key, "%s", key);
            sweep->n = 0;
            char buf[256];
            snprintf(buf, sizeof buf, "%s", val);
            for (char *save = NULL, *t = strtok_r(buf, "/", &save); t; t = strtok_r(NULL, "/", &save)) {
                if (sweep->n == MAX_SWEEP) {
                    cli_usage(cmd, "%s: at most %d values", opt, MAX_SWEEP);
                    return -1;
                }
                if (cli_int(cmd, opt, t, nums[i].lo, nums[i].hi, &sweep->v[sweep->n])) return -1;
                sweep->n++;
            }
            v = sweep->v[0];
        } else if (cli_int(cmd, opt, val, nums[i].lo, nums[i].hi, &v)) {
            return -1;
        }
        *(int *)((char *)p + nums[i].off) = (int)v;
        return 1;
    }
    if (!strcmp(key, "train-max")) {
        if (cli_int(cmd, "--train-max", val, 1, (long long)1 << 40, &v)) return -1;
        p->train_max = (size_t)v;
        return 1;
    }
    if (!strcmp(key, "seed")) {
        if (cli_int(cmd, "--seed", val, 0, INT64_MAX, &v)) return -1;
        p->seed = (uint64_t)v;
        return 1;
    }
    return 0;
}

/* Options shared by the subcommands at argv[*i]: input, threads, json,
 * multi.  Returns 1 if consumed, 0 if not ours, -1 after a usage error. */
static int common_opt(const char *cmd, int argc, char **argv, int *i, common_opts *c) {
    const char *a = argv[*i], *v;
    long long x;
    if (!strcmp(a, "--json")) {
        c->json = 1;
        return 1;
    }
    if (!strcmp(a, "--multi")) {
        c->multi = 1;
        return 1;
    }
    if (!strcmp(a, "--center")) {
        c->mp.center = 1;
        return 1;
    }
    struct {
        const char *name;
        long long lo, hi;
        int *dst;
    } ints[] = {
        {"--threads", 0, 1024, &c->threads},       {"--dim", 1, 1 << 20, &c->rp.dim},
        {"--set-size", 1, 1 << 30, &c->rp.set_size}, {"--k-sim", 0, 10, &c->mp.k_sim},
        {"--reps", 1, 1000, &c->mp.reps},           {"--d-proj", 0, 1 << 20, &c->mp.d_proj},
        {"--d-final", 0, 1 << 24, &c->mp.d_final},  {"--candidates", 1, 1 << 30, &c->mp.candidates},
    };
    for (size_t k = 0; k < sizeof ints / sizeof ints[0]; k++) {
        if (strcmp(a, ints[k].name)) continue;
        if (!(v = cli_next(cmd, argc, argv, i)) || cli_int(cmd, a, v, ints[k].lo, ints[k].hi, &x)) return -1;
        *ints[k].dst = (int)x;
        return 1;
    }
    if (!strcmp(a, "--max-rows")) {
        if (!(v = cli_next(cmd, argc, argv, i)) || cli_int(cmd, a, v, 1, (long long)1 << 40, &x)) return -1;
        c->rp.max_rows = (size_t)x;
        return 1;
    }
    if (!strcmp(a, "--format")) {
        if (!(v = cli_next(cmd, argc, argv, i))) return -1;
        if (parse_format(v, &c->rp.format)) {
            cli_usage(cmd, "unknown vector format '%s' (fvecs, bvecs, ivecs, text, raw, tensor)", v);
            return -1;
        }
        return 1;
    }
    if (!strcmp(a, "--model-tensor")) {
        if (!(v = cli_next(cmd, argc, argv, i))) return -1;
        c->rp.tensor = v;
        if (c->rp.format == ES_VEC_AUTO) c->rp.format = ES_VEC_TENSOR;
        return 1;
    }
    return 0;
}

/* The same for an index option given as "--key value" (or "--pca").
 * Returns 1 if consumed, 0 if not an index option, -1 after a usage error. */
static int index_flag(const char *cmd, int argc, char **argv, int *i, es_index_params *p, sweep_t *sweep) {
    char key[64];
    norm_key(argv[*i], key, sizeof key);
    if (!is_index_key(key)) return 0;
    if (!strcmp(key, "pca")) {
        p->pca = 1;
        return 1;
    }
    const char *v = cli_next(cmd, argc, argv, i);
    if (!v) return -1;
    return apply_index_opt(cmd, key, v, p, sweep && is_search_key(key) ? sweep : NULL) < 0 ? -1 : 1;
}

static int read_vecs(const char *cmd, const char *const *paths, int n, const common_opts *c, int sets, es_vecs *out) {
    es_vec_read_params rp = c->rp;
    if (sets && !rp.set_size) rp.sets_by_label = 1;
    if (!sets) rp.set_size = 0;
    es_err e = {0};
    if (es_vecs_read_many(out, paths, n, &rp, &e)) return cli_fail(cmd, "%s", e.msg);
    if (!out->x) {
        es_vecs_free(out);
        return cli_fail(cmd, "%s: integer vectors (.ivecs) cannot be indexed or searched", paths[0]);
    }
    return 0;
}

/* Attributes: .ivecs (one record per vector) or text, one line per vector
 * holding the same number of integers. */
static int read_attrs(const char *cmd, const char *path, size_t n_expect, int32_t **out, int *n_attr) {
    size_t len = strlen(path);
    if (len > 6 && !strcmp(path + len - 6, ".ivecs")) {
        es_vecs v;
        es_vec_read_params rp = es_vec_read_params_default();
        rp.format = ES_VEC_IVECS;
        es_err e = {0};
        if (es_vecs_read(&v, path, &rp, &e)) return cli_fail(cmd, "%s", e.msg);
        if (v.n != n_expect) {
            es_vecs_free(&v);
            return cli_fail(cmd, "%s: %zu attribute rows for %zu vectors", path, v.n, n_expect);
        }
        *out = malloc(v.n * (size_t)v.dim * sizeof(int32_t) + 1);
        if (!*out) {
            es_vecs_free(&v);
            return cli_fail(cmd, "out of memory");
        }
        memcpy(*out, v.i, v.n * (size_t)v.dim * sizeof(int32_t));
        *n_attr = v.dim;
        es_vecs_free(&v);
        return 0;
    }
    FILE *f = fopen(path, "r");
    if (!f) return cli_fail(cmd, "%s: cannot open: %s", path, strerror(errno));
    char line[65536];
    size_t row = 0, lineno = 0;
    int na = -1;
    int32_t *a = NULL;
    while (fgets(line, sizeof line, f)) {
        lineno++;
        size_t ll = strlen(line);
        if (ll == sizeof line - 1 && line[ll - 1] != '\n') {
            fclose(f);
            free(a);
            return cli_fail(cmd, "%s:%zu: line too long", path, lineno);
        }
        char *p = line;
        while (*p == ' ' || *p == '\t') p++;
        if (*p == '\n' || *p == '\r' || *p == 0 || *p == '#') continue;
        int32_t vals[64];
        int cnt = 0;
        for (;;) {
            while (*p == ' ' || *p == '\t') p++;
            if (*p == '\n' || *p == '\r' || *p == 0) break;
            char *end;
            errno = 0;
            long long x = strtoll(p, &end, 10);
            if (end == p || errno || x < INT32_MIN || x > INT32_MAX ||
                (*end && *end != ' ' && *end != '\t' && *end != '\n' && *end != '\r')) {
                fclose(f);
                free(a);
                return cli_fail(cmd, "%s:%zu: attribute %d is not a 32-bit integer", path, lineno, cnt + 1);
            }
            if (cnt == 64) {
                fclose(f);
                free(a);
                return cli_fail(cmd, "%s:%zu: more than 64 attributes", path, lineno);
            }
            vals[cnt++] = (int32_t)x;
            p = end;
        }
        if (na < 0) {
            na = cnt;
            a = malloc((n_expect ? n_expect : 1) * (size_t)na * sizeof *a + 1);
            if (!a) {
                fclose(f);
                return cli_fail(cmd, "out of memory");
            }
        } else if (cnt != na) {
            fclose(f);
            free(a);
            return cli_fail(cmd, "%s:%zu: %d attributes, the first line has %d", path, lineno, cnt, na);
        }
        if (row == n_expect) {
            fclose(f);
            free(a);
            return cli_fail(cmd, "%s:%zu: more attribute rows than the %zu vectors", path, lineno, n_expect);
        }
        memcpy(a + row * (size_t)na, vals, (size_t)na * sizeof *a);
        row++;
    }
    fclose(f);
    if (row != n_expect || na < 1) {
        free(a);
        return cli_fail(cmd, "%s: %zu attribute rows for %zu vectors", path, row, n_expect);
    }
    *out = a;
    *n_attr = na;
    return 0;
}

/* "--filter A=V[,V...]" */
typedef struct {
    es_filter f;
    int32_t vals[256];
} filter_opt;

static int parse_filter(const char *cmd, const char *s, filter_opt *fo) {
    const char *eq = strchr(s, '=');
    long long a;
    char buf[32];
    if (!eq || eq == s || (size_t)(eq - s) >= sizeof buf) {
        cli_usage(cmd, "--filter expects ATTR=VALUE[,VALUE...], got '%s'", s);
        return -1;
    }
    memcpy(buf, s, (size_t)(eq - s));
    buf[eq - s] = 0;
    if (cli_int(cmd, "--filter attribute", buf, 0, 63, &a)) return -1;
    fo->f.attr = (int)a;
    fo->f.n_values = 0;
    fo->f.values = fo->vals;
    char list[4096];
    snprintf(list, sizeof list, "%s", eq + 1);
    for (char *save = NULL, *t = strtok_r(list, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        long long v;
        if (fo->f.n_values == 256) {
            cli_usage(cmd, "--filter: at most 256 values");
            return -1;
        }
        if (cli_int(cmd, "--filter value", t, INT32_MIN, INT32_MAX, &v)) return -1;
        fo->vals[fo->f.n_values++] = (int32_t)v;
    }
    if (!fo->f.n_values) {
        cli_usage(cmd, "--filter needs at least one value");
        return -1;
    }
    return 0;
}

static void apply_threads(common_opts *c, es_index_params *p) {
    if (c->threads > 0) {
        es_set_threads(c->threads);
        p->threads = c->threads;
    }
}

static const char *container_type(const char *path) {
    static char type[32];
    es_file *f = NULL;
    es_err e = {0};
    type[0] = 0;
    if (es_file_open(&f, path, ES_LOAD_NO_VERIFY, &e) == 0) {
        const char *t = es_file_meta(f, "embstore.type");
        snprintf(type, sizeof type, "%s", t ? t : "");
        es_file_close(f);
    }
    return type;
}

/* ---- build --------------------------------------------------------------------------------- */
static const char build_help[] =
    "usage: embstore index build BASE [BASE...] -o OUT [options]\n"
    "\n"
    "Build a vector index from one or more base files (several files of one\n"
    "format are read as one set, e.g. a base split in parts) and save it to OUT\n"
    "(an embstore container: versioned, checksummed, memory-mapped at load).\n"
    "\n"
    "  -o, --out FILE        output index file (required)\n"
    "  --attrs FILE          integer attributes per vector for filtered search: text with one\n"
    "                        line of integers per vector, or .ivecs\n"
    "  --threads N           threads (default: all cores)\n"
    "  --json                print the summary as JSON\n"
    "\n" INDEX_OPTS_HELP "\n" INPUT_OPTS_HELP "\n" MULTI_OPTS_HELP
    "\n"
    "examples:\n"
    "  embstore index build data/siftsmall/siftsmall_base.part1.fvecs \\\n"
    "      data/siftsmall/siftsmall_base.part2.fvecs --kind hnsw --M 16 -o sift.esi\n"
    "  embstore index build model.es --model-tensor storage.table.w --kind pq --metric ip -o rows.esi\n"
    "  embstore index build docs.txt --multi --kind hnsw -o docs.esm\n";

static int cmd_build(int argc, char **argv) {
    const char *cmd = "index build", *out = NULL, *attrs = NULL;
    const char *inputs[256];
    int n_in = 0, r;
    common_opts c;
    common_init(&c);
    es_index_params p = es_index_params_default();
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(build_help, stdout);
            return 0;
        }
        if (!strcmp(a, "-o") || !strcmp(a, "--out")) {
            if (!(out = cli_next(cmd, argc, argv, &i))) return ES_EXIT_USAGE;
        } else if (!strcmp(a, "--attrs")) {
            if (!(attrs = cli_next(cmd, argc, argv, &i))) return ES_EXIT_USAGE;
        } else if ((r = common_opt(cmd, argc, argv, &i, &c)) != 0) {
            if (r < 0) return ES_EXIT_USAGE;
        } else if (a[0] == '-' && a[1] == '-' && (r = index_flag(cmd, argc, argv, &i, &p, NULL)) != 0) {
            if (r < 0) return ES_EXIT_USAGE;
        } else if (a[0] == '-' && a[1]) {
            return cli_usage(cmd, "unknown option '%s'", a);
        } else {
            if (n_in == 256) return cli_usage(cmd, "too many input files");
            inputs[n_in++] = a;
        }
    }
    if (!n_in) return cli_usage(cmd, "no base vectors given");
    if (!out) return cli_usage(cmd, "no output file given (-o FILE)");
    {
        cli_path ins[257];
        for (int k = 0; k < n_in; k++) ins[k] = (cli_path){"BASE", inputs[k], "the input file"};
        ins[n_in] = (cli_path){"--attrs", attrs, "the attributes file"};
        const cli_path outs[] = {{"--out", out, NULL}};
        if (cli_check_outputs(cmd, ins, n_in + 1, outs, 1) != 0) return ES_EXIT_USAGE;
    }
    apply_threads(&c, &p);
    es_vecs v;
    if (read_vecs(cmd, inputs, n_in, &c, c.multi, &v)) return ES_EXIT_FAIL;
    if (v.n == 0) {
        es_vecs_free(&v);
        return cli_fail(cmd, "%s: no vectors (empty corpus)", inputs[0]);
    }
    es_err e = {0};
    double t0 = now_s();
    int rc = 0;
    size_t bytes = 0, count = 0;
    int dim_out = v.dim;
    if (c.multi) {
        if (attrs) {
            es_vecs_free(&v);
            return cli_usage(cmd, "--attrs is not supported with --multi");
        }
        c.mp.dim = v.dim;
        c.mp.inner = p;
        es_multi *m = NULL;
        if (es_multi_create(&m, &c.mp, &e)) rc = cli_fail(cmd, "%s", e.msg);
        else if (es_multi_add(m, v.n_sets, v.set_off, v.x)) rc = cli_fail(cmd, "%s: %s", inputs[0], es_multi_errmsg(m));
        else if (es_multi_save(m, out)) rc = cli_fail(cmd, "%s", es_multi_errmsg(m));
        if (!rc) {
            bytes = es_multi_bytes(m);
            count = es_multi_size(m);
            dim_out = es_multi_fde_dim(m);
        }
        es_multi_free(m);
    } else {
        p.dim = v.dim;
        es_index *ix = NULL;
        if (es_index_create(&ix, &p, &e)) rc = cli_fail(cmd, "%s", e.msg);
        else if (es_index_add(ix, v.n, v.x)) rc = cli_fail(cmd, "%s: %s", inputs[0], es_index_errmsg(ix));
        if (!rc && attrs) {
            int32_t *a = NULL;
            int na = 0;
            if (read_attrs(cmd, attrs, v.n, &a, &na)) rc = ES_EXIT_FAIL;
            else if (es_index_set_attrs(ix, v.n, na, a)) rc = cli_fail(cmd, "%s: %s", attrs, es_index_errmsg(ix));
            free(a);
        }
        if (!rc && es_index_save(ix, out)) rc = cli_fail(cmd, "%s", es_index_errmsg(ix));
        if (!rc) {
            bytes = es_index_bytes(ix);
            count = es_index_size(ix);
        }
        es_index_free(ix);
    }
    double secs = now_s() - t0;
    if (!rc) {
        const char *kind = es_index_kind_name(p.kind);
        if (c.json)
            printf("{\"out\":\"%s\",\"kind\":\"%s\",\"multi\":%s,\"metric\":\"%s\",\"count\":%zu,\"vectors\":%zu,\"dim\":%d,"
                   "\"bytes\":%zu,\"bytes_per_item\":%.2f,\"build_seconds\":%.4f}\n",
                   out, kind, c.multi ? "true" : "false", es_metric_name(p.metric), count, v.n, dim_out, bytes,
                   (double)bytes / (double)count, secs);
        else
            printf("built %s%s index of %zu %s (dim %d) in %.2f s: %zu bytes, %.1f bytes per %s -> %s\n", kind,
                   c.multi ? " multi-vector" : "", count, c.multi ? "documents" : "vectors", dim_out, secs, bytes,
                   (double)bytes / (double)count, c.multi ? "document" : "vector", out);
    }
    es_vecs_free(&v);
    return rc;
}

/* ---- search ------------------------------------------------------------------------------------ */
static const char search_help[] =
    "usage: embstore index search INDEX QUERIES [options]\n"
    "\n"
    "Search an index built by 'embstore index build' with the vectors of QUERIES\n"
    "(a multi-vector index takes vector sets, see --set-size).  Prints one line per\n"
    "result, 'query<TAB>rank<TAB>id<TAB>distance' (squared L2, or inner product /\n"
    "cosine similarity), or writes texmex files with --out / --dist-out.\n"
    "\n"
    "  -k N                  results per query (default 10)\n"
    "  --ef-search N         hnsw beam width\n"
    "  --nprobe N            ivf lists scanned\n"
    "  --rerank R            re-score R*k candidates with full vectors (index built with --rerank)\n"
    "  --candidates C        multi-vector: documents re-ranked by Chamfer similarity\n"
    "  --filter A=V[,V...]   only vectors whose attribute A is one of the values\n"
    "  --out FILE            write ids as .ivecs (one record of k ids per query; -1 = none)\n"
    "  --dist-out FILE       write distances as .fvecs\n"
    "  --threads N           threads (default: all cores)\n"
    "  --json                print results as JSON\n"
    "\n" INPUT_OPTS_HELP
    "  --set-size G          multi-vector queries: runs of G vectors (default for text: by label)\n";

static int cmd_search(int argc, char **argv) {
    const char *cmd = "index search", *index_path = NULL, *qpath = NULL, *out = NULL, *dout = NULL;
    long long k = 10, x;
    int ef = 0, nprobe = 0, rerank = -1, have_filter = 0, r;
    common_opts c;
    common_init(&c);
    c.mp.candidates = 0;
    filter_opt fo;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(search_help, stdout);
            return 0;
        }
        if (!strcmp(a, "-k")) {
            if (!(v = cli_next(cmd, argc, argv, &i)) || cli_int(cmd, "-k", v, 1, 1 << 20, &k)) return ES_EXIT_USAGE;
        } else if (!strcmp(a, "--ef-search") || !strcmp(a, "--nprobe") || !strcmp(a, "--rerank")) {
            if (!(v = cli_next(cmd, argc, argv, &i)) || cli_int(cmd, a, v, a[2] == 'r' ? 0 : 1, 1 << 24, &x))
                return ES_EXIT_USAGE;
            if (a[2] == 'e') ef = (int)x;
            else if (a[2] == 'n') nprobe = (int)x;
            else rerank = (int)x;
        } else if (!strcmp(a, "--filter")) {
            if (!(v = cli_next(cmd, argc, argv, &i)) || parse_filter(cmd, v, &fo)) return ES_EXIT_USAGE;
            have_filter = 1;
        } else if (!strcmp(a, "--out") || !strcmp(a, "-o")) {
            if (!(out = cli_next(cmd, argc, argv, &i))) return ES_EXIT_USAGE;
        } else if (!strcmp(a, "--dist-out")) {
            if (!(dout = cli_next(cmd, argc, argv, &i))) return ES_EXIT_USAGE;
        } else if ((r = common_opt(cmd, argc, argv, &i, &c)) != 0) {
            if (r < 0) return ES_EXIT_USAGE;
        } else if (a[0] == '-' && a[1]) {
            return cli_usage(cmd, "unknown option '%s'", a);
        } else if (!index_path) {
            index_path = a;
        } else if (!qpath) {
            qpath = a;
        } else {
            return cli_usage(cmd, "unexpected argument '%s'", a);
        }
    }
    if (!index_path || !qpath) return cli_usage(cmd, "need an index file and a query file");
    const cli_path ins[] = {{"INDEX", index_path, "the index file"}, {"QUERIES", qpath, "the query file"}};
    const cli_path outs[] = {{"--out", out, NULL}, {"--dist-out", dout, NULL}};
    if (cli_check_outputs(cmd, ins, 2, outs, 2) != 0) return ES_EXIT_USAGE;
    if (c.threads > 0) es_set_threads(c.threads);
    int multi = !strcmp(container_type(index_path), "multi");
    es_err e = {0};
    es_index *ix = NULL;
    es_multi *m = NULL;
    if (multi ? es_multi_load(&m, index_path, &e) : es_index_load(&ix, index_path, &e))
        return cli_fail(cmd, "%s", e.msg);
    int rc = 0;
    es_vecs q;
    memset(&q, 0, sizeof q);
    const char *qp[1] = {qpath};
    if (read_vecs(cmd, qp, 1, &c, multi, &q)) rc = ES_EXIT_FAIL;
    int dim = multi ? es_multi_dim(m) : es_index_dim(ix);
    if (!rc && q.dim != dim) rc = cli_fail(cmd, "%s: queries have dimension %d, the index %d", qpath, q.dim, dim);
    if (!rc && multi && have_filter) rc = cli_usage(cmd, "--filter is not supported for multi-vector indexes");
    struct {
        const char *n;
        int v;
    } sets[] = {{"ef_search", ef}, {"nprobe", nprobe}, {"rerank", rerank}, {"threads", c.threads}};
    for (size_t s = 0; s < 4 && !rc; s++) {
        if (sets[s].v <= 0 && !(s == 2 && sets[s].v == 0)) continue;
        int bad = multi ? es_multi_set(m, sets[s].n, sets[s].v) : es_index_set(ix, sets[s].n, sets[s].v);
        if (bad) rc = cli_fail(cmd, "%s", multi ? es_multi_errmsg(m) : es_index_errmsg(ix));
    }
    if (!rc && multi && c.mp.candidates > 0 && es_multi_set(m, "candidates", c.mp.candidates))
        rc = cli_fail(cmd, "%s", es_multi_errmsg(m));
    size_t nq = multi ? q.n_sets : q.n;
    int64_t *ids = NULL;
    float *dist = NULL;
    if (!rc) {
        ids = malloc(nq * (size_t)k * sizeof *ids + 1);
        dist = malloc(nq * (size_t)k * sizeof *dist + 1);
        if (!ids || !dist) rc = cli_fail(cmd, "out of memory for %zu x %lld results", nq, k);
    }
    if (!rc) {
        int bad = multi ? es_multi_search(m, nq, q.set_off, q.x, (int)k, ids, dist, NULL)
                        : es_index_search(ix, nq, q.x, (int)k, have_filter ? &fo.f : NULL, ids, dist);
        if (bad) rc = cli_fail(cmd, "%s: %s", qpath, multi ? es_multi_errmsg(m) : es_index_errmsg(ix));
    }
    if (!rc && (out || dout)) {
        if (out) {
            int32_t *i32 = malloc(nq * (size_t)k * sizeof *i32 + 1);
            if (!i32) rc = cli_fail(cmd, "out of memory");
            for (size_t t = 0; !rc && t < nq * (size_t)k; t++) i32[t] = (int32_t)ids[t];
            if (!rc && es_ivecs_write(out, nq, (int)k, i32, &e)) rc = cli_fail(cmd, "%s", e.msg);
            free(i32);
        }
        if (!rc && dout && es_fvecs_write(dout, nq, (int)k, dist, &e)) rc = cli_fail(cmd, "%s", e.msg);
    } else if (!rc && c.json) {
        printf("{\"queries\":[");
        for (size_t t = 0; t < nq; t++) {
            printf("%s{\"ids\":[", t ? "," : "");
            for (long long j = 0; j < k; j++) printf("%s%lld", j ? "," : "", (long long)ids[t * (size_t)k + (size_t)j]);
            printf("],\"distances\":[");
            for (long long j = 0; j < k; j++) {
                float d = dist[t * (size_t)k + (size_t)j];
                if (isfinite(d)) printf("%s%.9g", j ? "," : "", d);
                else printf("%snull", j ? "," : "");
            }
            printf("]}");
        }
        printf("]}\n");
    } else if (!rc) {
        printf("query\trank\tid\tdistance\n");
        for (size_t t = 0; t < nq; t++)
            for (long long j = 0; j < k; j++)
                printf("%zu\t%lld\t%lld\t%.9g\n", t, j, (long long)ids[t * (size_t)k + (size_t)j],
                       dist[t * (size_t)k + (size_t)j]);
    }
    free(ids);
    free(dist);
    es_vecs_free(&q);
    es_index_free(ix);
    es_multi_free(m);
    return rc;
}

/* ---- eval ---------------------------------------------------------------------------------------- */
static const char eval_help[] =
    "usage: embstore index eval [INDEX] --queries Q (--gt GT.ivecs | --base BASE...) [options]\n"
    "\n"
    "Measure an index: recall@1/10/100 (the fraction of the true top-R found in\n"
    "the returned top-R, averaged over queries), queries/s (batch search of all\n"
    "queries, median of repeated runs), bytes per vector and build time.\n"
    "Evaluate a saved INDEX, or build one index per --kind SPEC from --base and\n"
    "evaluate each (one table row per spec and search setting).\n"
    "\n"
    "  --queries FILE        query vectors (required)\n"
    "  --gt FILE             ground-truth ids (.ivecs, best first); without it the\n"
    "                        truth is exact search over --base\n"
    "  --base FILE...        base vectors (needed to build specs or compute the truth;\n"
    "                        takes the following non-option arguments)\n"
    "  --kind SPEC           KIND[:key=value,...], e.g. 'hnsw:M=16,ef-search=16/32/64'\n"
    "                        or 'ivf:nlist=100,codes=pq,nprobe=4/16'; a/b/c lists sweep\n"
    "                        the search parameters ef-search, nprobe and rerank;\n"
    "                        repeatable (index options below set the defaults)\n"
    "  -k N                  results per query (default 100)\n"
    "  --min-time S          time each setting for at least S seconds (default 0.5)\n"
    "  --filter A=V[,V...]   filtered search (needs --attrs and --base for the exact truth);\n"
    "                        reports recall against exact filtered search and violations\n"
    "  --attrs FILE          attributes of the base vectors (see 'index build --help')\n"
    "  --threads N           threads (default: all cores)\n"
    "  --json                one JSON object per row instead of the table\n"
    "  --multi               multi-vector eval: recall of FDE + Chamfer re-ranking\n"
    "                        against exact Chamfer search, and the fraction of documents scored\n"
    "\n" INDEX_OPTS_HELP "\n" INPUT_OPTS_HELP "\n" MULTI_OPTS_HELP
    "\n"
    "example (the table in docs/retrieval.md):\n"
    "  embstore index eval --base data/siftsmall/siftsmall_base.part*.fvecs \\\n"
    "      --queries data/siftsmall/siftsmall_query.fvecs --gt data/siftsmall/siftsmall_groundtruth.ivecs \\\n"
    "      --kind flat --kind sq8 --kind pq --kind binary:itq=20,rerank=20 --kind ivf:nlist=100,nprobe=8 \\\n"
    "      --kind hnsw:M=16,ef-search=16/32/64\n";

typedef struct {
    char text[256];
    es_index_params p;
    sweep_t sweep;
} spec_t;

static int parse_spec(const char *cmd, const char *s, const es_index_params *defaults, spec_t *sp) {
    memset(sp, 0, sizeof *sp);
    snprintf(sp->text, sizeof sp->text, "%s", s);
    sp->p = *defaults;
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", s);
    char *colon = strchr(buf, ':');
    if (colon) *colon = 0;
    if (es_index_kind_parse(buf, &sp->p.kind)) {
        cli_usage(cmd, "--kind: unknown index kind '%s' in '%s'", buf, s);
        return -1;
    }
    if (!colon) return 0;
    for (char *save = NULL, *t = strtok_r(colon + 1, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(t, '=');
        char key[64];
        if (!eq) {
            norm_key(t, key, sizeof key);
            if (!strcmp(key, "pca")) {
                sp->p.pca = 1;
                continue;
            }
            cli_usage(cmd, "--kind: expected key=value, got '%s' in '%s'", t, s);
            return -1;
        }
        *eq = 0;
        norm_key(t, key, sizeof key);
        int r = apply_index_opt(cmd, key, eq + 1, &sp->p, &sp->sweep);
        if (r < 0) return -1;
        if (r == 0) {
            cli_usage(cmd, "--kind: unknown option '%s' in '%s'", key, s);
            return -1;
        }
    }
    return 0;
}

/* recall@R: |returned top-R ∩ true top-R| / R, averaged over queries. */
static double recall_at(const int64_t *ids, int k, const int32_t *gt, int gk, size_t nq, int R) {
    if (R > k || R > gk) return -1;
    double tot = 0;
    for (size_t q = 0; q < nq; q++) {
        int hit = 0;
        for (int a = 0; a < R; a++) {
            int64_t id = ids[q * (size_t)k + (size_t)a];
            if (id < 0) continue;
            for (int b = 0; b < R; b++)
                if (gt[q * (size_t)gk + (size_t)b] == id) {
                    hit++;
                    break;
                }
        }
        tot += (double)hit / R;
    }
    return tot / (double)nq;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

typedef struct {
    const char *cmd;
    int json;
    int k;
    double min_time;
    size_t nq;
    const float *q;
    const int32_t *gt;
    int gk;
    const es_filter *filter;
    const int32_t *attrs; /* [n][n_attr] for violation counts */
    int n_attr;
    int rows;
    int name_w;           /* width of the index column */
} eval_ctx;

static void print_header(const eval_ctx *ec) {
    if (ec->json) return;
    printf("%-*s %-20s %7s %7s %7s %10s %10s %8s%s\n", ec->name_w, "index", "search", "R@1", "R@10", "R@100", "QPS",
           "bytes/vec", "build_s", ec->filter ? "  violations" : "");
}

static void fmt_recall(double r, char *buf) {
    if (r < 0) snprintf(buf, 16, "-");
    else snprintf(buf, 16, "%.4f", r);
}

/* Time and score one setting of one index. */
static int eval_one(eval_ctx *ec, es_index *ix, const char *name, const char *setting, double build_s) {
    size_t nq = ec->nq;
    int k = ec->k;
    int64_t *ids = malloc(nq * (size_t)k * sizeof *ids + 1);
    float *dist = malloc(nq * (size_t)k * sizeof *dist + 1);
    double times[1000];
    int reps = 0;
    if (!ids || !dist) {
        free(ids);
        free(dist);
        return cli_fail(ec->cmd, "out of memory");
    }
    double t_start = now_s();
    do {
        double t0 = now_s();
        if (es_index_search(ix, nq, ec->q, k, ec->filter, ids, dist)) {
            int rc = cli_fail(ec->cmd, "%s: %s", name, es_index_errmsg(ix));
            free(ids);
            free(dist);
            return rc;
        }
        times[reps++] = now_s() - t0;
    } while (reps < 1000 && now_s() - t_start < ec->min_time);
    qsort(times, (size_t)reps, sizeof times[0], cmp_double);
    double med = times[reps / 2];
    double qps = med > 0 ? (double)nq / med : 0;
    double r1 = recall_at(ids, k, ec->gt, ec->gk, nq, 1), r10 = recall_at(ids, k, ec->gt, ec->gk, nq, 10),
           r100 = recall_at(ids, k, ec->gt, ec->gk, nq, 100);
    long long viol = 0;
    if (ec->filter)
        for (size_t t = 0; t < nq * (size_t)k; t++) {
            if (ids[t] < 0) continue;
            int32_t v = ec->attrs[(size_t)ids[t] * (size_t)ec->n_attr + (size_t)ec->filter->attr];
            int ok = 0;
            for (int j = 0; j < ec->filter->n_values; j++) ok |= ec->filter->values[j] == v;
            viol += !ok;
        }
    double bpv = (double)es_index_bytes(ix) / (double)es_index_size(ix);
    if (ec->json) {
        printf("{\"index\":\"%s\",\"search\":\"%s\",\"k\":%d,\"queries\":%zu", name, setting, k, nq);
        const char *rn[3] = {"recall_at_1", "recall_at_10", "recall_at_100"};
        double rv[3] = {r1, r10, r100};
        for (int i = 0; i < 3; i++)
            if (rv[i] >= 0) printf(",\"%s\":%.6f", rn[i], rv[i]);
        printf(",\"qps\":%.1f,\"bytes_per_vector\":%.2f,\"build_seconds\":%.4f,\"repeats\":%d", qps, bpv, build_s, reps);
        if (ec->filter) printf(",\"filter_violations\":%lld", viol);
        printf("}\n");
    } else {
        char a[16], b[16], c[16];
        fmt_recall(r1, a);
        fmt_recall(r10, b);
        fmt_recall(r100, c);
        printf("%-*s %-20s %7s %7s %7s %10.0f %10.1f %8.2f", ec->name_w, name, setting, a, b, c, qps, bpv, build_s);
        if (ec->filter) printf("  %lld", viol);
        printf("\n");
    }
    fflush(stdout);
    ec->rows++;
    free(ids);
    free(dist);
    return 0;
}

/* All settings of a sweep (or the single setting). */
static int eval_settings(eval_ctx *ec, es_index *ix, const char *name, const sweep_t *sw, double build_s) {
    if (!sw || sw->n == 0) {
        const es_index_params *p = es_index_params_of(ix);
        char setting[64] = "-";
        if (p->kind == ES_INDEX_HNSW) snprintf(setting, sizeof setting, "ef_search=%d", p->ef_search);
        else if (p->kind == ES_INDEX_IVF) snprintf(setting, sizeof setting, "nprobe=%d", p->nprobe);
        if (p->rerank > 0) {
            size_t l = strlen(setting);
            if (!strcmp(setting, "-")) l = 0;
            snprintf(setting + l, sizeof setting - l, "%srerank=%d", l ? "," : "", p->rerank);
        }
        return eval_one(ec, ix, name, setting, build_s);
    }
    char key[32];
    snprintf(key, sizeof key, "%s", sw->key);
    for (char *c = key; *c; c++)
        if (*c == '-') *c = '_';
    for (int i = 0; i < sw->n; i++) {
        if (es_index_set(ix, key, (double)sw->v[i])) return cli_fail(ec->cmd, "%s: %s", name, es_index_errmsg(ix));
        char setting[64];
        snprintf(setting, sizeof setting, "%s=%lld", key, sw->v[i]);
        int rc = eval_one(ec, ix, name, setting, build_s);
        if (rc) return rc;
    }
    return 0;
}

static int eval_multi(const char *cmd, common_opts *c, const char *const *base, int n_base, const char *qpath,
                      spec_t *specs, int n_specs, int k, double min_time) {
    es_vecs b, q;
    const char *qp[1] = {qpath};
    if (read_vecs(cmd, base, n_base, c, 1, &b)) return ES_EXIT_FAIL;
    if (read_vecs(cmd, qp, 1, c, 1, &q)) {
        es_vecs_free(&b);
        return ES_EXIT_FAIL;
    }
    int rc = 0;
    if (q.dim != b.dim) rc = cli_fail(cmd, "%s: dimension %d, documents %d", qpath, q.dim, b.dim);
    size_t nq = q.n_sets;
    int64_t *ids = malloc(nq * (size_t)k * sizeof *ids + 1), *tids = malloc(nq * (size_t)k * sizeof *tids + 1);
    float *sc = malloc(nq * (size_t)k * sizeof *sc + 1);
    if (!ids || !tids || !sc) rc = cli_fail(cmd, "out of memory");
    if (!rc && !c->json)
        printf("%-24s %7s %7s %10s %12s %10s %8s\n", "inner index (FDE)", "R@1", "R@10", "QPS", "scored_frac",
               "bytes/doc", "build_s");
    for (int s = 0; s < n_specs && !rc; s++) {
        es_multi_params mp = c->mp;
        mp.dim = b.dim;
        mp.inner = specs[s].p;
        mp.inner.threads = c->threads;
        es_multi *m = NULL;
        es_err e = {0};
        double t0 = now_s();
        if (es_multi_create(&m, &mp, &e)) {
            rc = cli_fail(cmd, "%s", e.msg);
            break;
        }
        if (es_multi_add(m, b.n_sets, b.set_off, b.x)) {
            rc = cli_fail(cmd, "%s", es_multi_errmsg(m));
            es_multi_free(m);
            break;
        }
        double build = now_s() - t0;
        if (k > (int)b.n_sets) k = (int)b.n_sets;
        if (es_multi_search_exact(m, nq, q.set_off, q.x, k, tids, sc)) {
            rc = cli_fail(cmd, "%s", es_multi_errmsg(m));
            es_multi_free(m);
            break;
        }
        size_t scored = 0;
        double times[1000], ts = now_s();
        int reps = 0;
        do {
            double t1 = now_s();
            if (es_multi_search(m, nq, q.set_off, q.x, k, ids, sc, &scored)) {
                rc = cli_fail(cmd, "%s", es_multi_errmsg(m));
                break;
            }
            times[reps++] = now_s() - t1;
        } while (reps < 1000 && now_s() - ts < min_time);
        if (rc) {
            es_multi_free(m);
            break;
        }
        qsort(times, (size_t)reps, sizeof times[0], cmp_double);
        double qps = (double)nq / times[reps / 2];
        int32_t *gt = malloc(nq * (size_t)k * sizeof *gt + 1);
        if (!gt) {
            rc = cli_fail(cmd, "out of memory");
            es_multi_free(m);
            break;
        }
        for (size_t t = 0; t < nq * (size_t)k; t++) gt[t] = (int32_t)tids[t];
        double r1 = recall_at(ids, k, gt, k, nq, 1), r10 = recall_at(ids, k, gt, k, nq, 10);
        double frac = (double)scored / ((double)nq * (double)b.n_sets);
        double bpd = (double)es_multi_bytes(m) / (double)es_multi_size(m);
        if (c->json)
            printf("{\"index\":\"%s\",\"multi\":true,\"fde_dim\":%d,\"k\":%d,\"queries\":%zu,\"documents\":%zu,"
                   "\"recall_at_1\":%.6f,\"recall_at_10\":%.6f,\"qps\":%.1f,\"scored_fraction\":%.5f,"
                   "\"bytes_per_document\":%.1f,\"build_seconds\":%.4f}\n",
                   specs[s].text, es_multi_fde_dim(m), k, nq, b.n_sets, r1, r10 < 0 ? 0 : r10, qps, frac, bpd, build);
        else
            printf("%-24s %7.4f %7.4f %10.0f %12.4f %10.1f %8.2f\n", specs[s].text, r1, r10, qps, frac, bpd, build);
        free(gt);
        es_multi_free(m);
    }
    free(ids);
    free(tids);
    free(sc);
    es_vecs_free(&b);
    es_vecs_free(&q);
    return rc;
}

static int cmd_eval_index(int argc, char **argv) {
    const char *cmd = "index eval", *index_path = NULL, *qpath = NULL, *gtpath = NULL, *attrs_path = NULL;
    const char *base[256];
    const char *spec_text[MAX_SPECS];
    int n_base = 0, n_specs = 0, in_base = 0, have_filter = 0, r;
    long long k = 100;
    double min_time = 0.5;
    common_opts c;
    common_init(&c);
    es_index_params defaults = es_index_params_default();
    sweep_t flag_sweep;
    memset(&flag_sweep, 0, sizeof flag_sweep);
    filter_opt fo;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(eval_help, stdout);
            return 0;
        }
        if (a[0] == '-' && a[1]) in_base = 0;
        if (!strcmp(a, "--queries")) {
            if (!(qpath = cli_next(cmd, argc, argv, &i))) return ES_EXIT_USAGE;
        } else if (!strcmp(a, "--gt")) {
            if (!(gtpath = cli_next(cmd, argc, argv, &i))) return ES_EXIT_USAGE;
        } else if (!strcmp(a, "--base")) {
            in_base = 1;
        } else if (!strcmp(a, "--kind") && i + 1 < argc && strchr(argv[i + 1], ':')) {
            if (n_specs == MAX_SPECS) return cli_usage(cmd, "at most %d --kind specs", MAX_SPECS);
            spec_text[n_specs++] = argv[++i];
        } else if (!strcmp(a, "--kind")) {
            if (!(v = cli_next(cmd, argc, argv, &i))) return ES_EXIT_USAGE;
            if (n_specs == MAX_SPECS) return cli_usage(cmd, "at most %d --kind specs", MAX_SPECS);
            spec_text[n_specs++] = v;
        } else if (!strcmp(a, "-k")) {
            if (!(v = cli_next(cmd, argc, argv, &i)) || cli_int(cmd, "-k", v, 1, 1 << 20, &k)) return ES_EXIT_USAGE;
        } else if (!strcmp(a, "--min-time")) {
            if (!(v = cli_next(cmd, argc, argv, &i)) || cli_double(cmd, "--min-time", v, 0, 600, &min_time))
                return ES_EXIT_USAGE;
        } else if (!strcmp(a, "--filter")) {
            if (!(v = cli_next(cmd, argc, argv, &i)) || parse_filter(cmd, v, &fo)) return ES_EXIT_USAGE;
            have_filter = 1;
        } else if (!strcmp(a, "--attrs")) {
            if (!(attrs_path = cli_next(cmd, argc, argv, &i))) return ES_EXIT_USAGE;
        } else if ((r = common_opt(cmd, argc, argv, &i, &c)) != 0) {
            if (r < 0) return ES_EXIT_USAGE;
        } else if (a[0] == '-' && a[1] == '-' && (r = index_flag(cmd, argc, argv, &i, &defaults, &flag_sweep)) != 0) {
            /* Index options set the defaults of every spec; a/b/c lists of
             * search parameters sweep a saved index too. */
            if (r < 0) return ES_EXIT_USAGE;
        } else if (a[0] == '-' && a[1]) {
            return cli_usage(cmd, "unknown option '%s'", a);
        } else if (in_base) {
            if (n_base == 256) return cli_usage(cmd, "too many base files");
            base[n_base++] = a;
        } else if (!index_path) {
            index_path = a;
        } else {
            return cli_usage(cmd, "unexpected argument '%s'", a);
        }
    }
    if (!qpath) return cli_usage(cmd, "no queries given (--queries FILE)");
    if (!index_path && !n_specs) n_specs = 1, spec_text[0] = es_index_kind_name(defaults.kind);
    if (!index_path && !n_base) return cli_usage(cmd, "give an INDEX file, or --base files to build --kind specs from");
    if (have_filter && (!attrs_path || !n_base))
        return cli_usage(cmd, "--filter needs --attrs and --base (the truth is exact filtered search)");
    spec_t *specs = calloc(MAX_SPECS, sizeof *specs);
    if (!specs) return cli_fail(cmd, "out of memory");
    for (int s = 0; s < n_specs; s++)
        if (parse_spec(cmd, spec_text[s], &defaults, &specs[s])) {
            free(specs);
            return ES_EXIT_USAGE;
        }
    if (c.threads > 0) es_set_threads(c.threads);
    if (c.multi) {
        if (index_path || !n_base) {
            free(specs);
            return cli_usage(cmd, "--multi eval builds from --base documents (no saved index)");
        }
        int rc = eval_multi(cmd, &c, base, n_base, qpath, specs, n_specs, (int)k, min_time);
        free(specs);
        return rc;
    }

    int rc = 0;
    es_vecs b, q, g;
    memset(&b, 0, sizeof b);
    memset(&q, 0, sizeof q);
    memset(&g, 0, sizeof g);
    es_index *loaded = NULL;
    es_err e = {0};
    int32_t *attrs = NULL, *gt = NULL;
    int n_attr = 0, gk = 0;
    const char *qp[1] = {qpath};
    if (index_path && es_index_load(&loaded, index_path, &e)) rc = cli_fail(cmd, "%s", e.msg);
    if (!rc && read_vecs(cmd, qp, 1, &c, 0, &q)) rc = ES_EXIT_FAIL;
    if (!rc && n_base && read_vecs(cmd, base, n_base, &c, 0, &b)) rc = ES_EXIT_FAIL;
    if (!rc && n_base && b.dim != q.dim) rc = cli_fail(cmd, "%s: dimension %d, base %d", qpath, q.dim, b.dim);
    if (!rc && loaded && es_index_dim(loaded) != q.dim)
        rc = cli_fail(cmd, "%s: dimension %d, the index %d", qpath, q.dim, es_index_dim(loaded));
    if (!rc && n_base && b.n == 0) rc = cli_fail(cmd, "%s: empty corpus", base[0]);
    if (!rc && attrs_path && read_attrs(cmd, attrs_path, b.n, &attrs, &n_attr)) rc = ES_EXIT_FAIL;
    if (!rc && have_filter && fo.f.attr >= n_attr)
        rc = cli_usage(cmd, "--filter attribute %d, but %s has %d per vector", fo.f.attr, attrs_path, n_attr);
    size_t ncorpus = loaded ? es_index_size(loaded) : b.n;
    if (!rc && (size_t)k > ncorpus) rc = cli_fail(cmd, "k = %lld is larger than the corpus (%zu vectors)", k, ncorpus);
    /* Ground truth. */
    if (!rc && gtpath && !have_filter) {
        es_vec_read_params rp = es_vec_read_params_default();
        rp.format = ES_VEC_IVECS;
        if (es_vecs_read(&g, gtpath, &rp, &e)) rc = cli_fail(cmd, "%s", e.msg);
        else if (g.n < q.n) rc = cli_fail(cmd, "%s: %zu rows of ground truth for %zu queries", gtpath, g.n, q.n);
        else {
            gt = g.i;
            gk = g.dim;
            for (size_t t = 0; t < q.n * (size_t)gk && !rc; t++)
                if (gt[t] < 0 || (size_t)gt[t] >= ncorpus)
                    rc = cli_fail(cmd, "%s: id %d outside the corpus of %zu vectors", gtpath, gt[t], ncorpus);
        }
    } else if (!rc) {
        if (!n_base) rc = cli_usage(cmd, "no ground truth: give --gt FILE or --base FILE... for exact search");
        es_index_params fp = es_index_params_default();
        fp.kind = ES_INDEX_FLAT;
        fp.metric = loaded ? es_index_params_of(loaded)->metric : defaults.metric;
        fp.dim = b.dim;
        fp.threads = c.threads;
        es_index *flat = NULL;
        int64_t *tid = NULL;
        float *td = NULL;
        if (!rc && es_index_create(&flat, &fp, &e)) rc = cli_fail(cmd, "%s", e.msg);
        if (!rc && es_index_add(flat, b.n, b.x)) rc = cli_fail(cmd, "%s", es_index_errmsg(flat));
        if (!rc && attrs && es_index_set_attrs(flat, b.n, n_attr, attrs)) rc = cli_fail(cmd, "%s", es_index_errmsg(flat));
        gk = (int)k;
        if (!rc) {
            tid = malloc(q.n * (size_t)gk * sizeof *tid + 1);
            td = malloc(q.n * (size_t)gk * sizeof *td + 1);
            gt = malloc(q.n * (size_t)gk * sizeof *gt + 1);
            if (!tid || !td || !gt) rc = cli_fail(cmd, "out of memory");
        }
        if (!rc && es_index_search(flat, q.n, q.x, gk, have_filter ? &fo.f : NULL, tid, td))
            rc = cli_fail(cmd, "%s", es_index_errmsg(flat));
        for (size_t t = 0; !rc && t < q.n * (size_t)gk; t++) gt[t] = (int32_t)tid[t];
        free(tid);
        free(td);
        es_index_free(flat);
    }
    eval_ctx ec = {.cmd = cmd,
                   .json = c.json,
                   .k = (int)k,
                   .min_time = min_time,
                   .nq = q.n,
                   .q = q.x,
                   .gt = gt,
                   .gk = gk,
                   .filter = have_filter ? &fo.f : NULL,
                   .attrs = attrs,
                   .n_attr = n_attr};
    ec.name_w = 20;
    if (loaded) ec.name_w = ES_MAX_W(ec.name_w, (int)strlen(index_path));
    for (int s = 0; !loaded && s < n_specs; s++) ec.name_w = ES_MAX_W(ec.name_w, (int)strlen(specs[s].text));
    if (!rc) print_header(&ec);
    if (!rc && loaded) {
        if (c.threads > 0) es_index_set(loaded, "threads", c.threads);
        rc = eval_settings(&ec, loaded, index_path, &flag_sweep, es_index_build_seconds(loaded));
    }
    for (int s = 0; !rc && !loaded && s < n_specs; s++) {
        es_index_params p = specs[s].p;
        p.dim = b.dim;
        p.threads = c.threads;
        es_index *ix = NULL;
        if (es_index_create(&ix, &p, &e)) {
            rc = cli_fail(cmd, "%s: %s", specs[s].text, e.msg);
            break;
        }
        double t0 = now_s();
        if (es_index_add(ix, b.n, b.x)) rc = cli_fail(cmd, "%s: %s", specs[s].text, es_index_errmsg(ix));
        double build = now_s() - t0;
        if (!rc && attrs && es_index_set_attrs(ix, b.n, n_attr, attrs))
            rc = cli_fail(cmd, "%s: %s", specs[s].text, es_index_errmsg(ix));
        const sweep_t *sw = specs[s].sweep.n ? &specs[s].sweep : &flag_sweep;
        if (!rc) rc = eval_settings(&ec, ix, specs[s].text, sw, build);
        es_index_free(ix);
    }
    if (gt != g.i) free(gt);
    free(attrs);
    free(specs);
    es_vecs_free(&b);
    es_vecs_free(&q);
    es_vecs_free(&g);
    es_index_free(loaded);
    return rc;
}

/* ---- dispatch ------------------------------------------------------------------------------------ */
static const char index_help[] =
    "usage: embstore index COMMAND [options]\n"
    "\n"
    "Vector search over stored vectors: exact (flat), 8-bit scalar (sq8), binary\n"
    "(sign bits, optional ITQ, Hamming), product quantization (pq, optional OPQ),\n"
    "graph (hnsw) and inverted-file (ivf over flat, sq8 or pq codes) indexes, with\n"
    "prefix search (Matryoshka / PCA) and re-ranking, attribute filters, and\n"
    "multi-vector retrieval (MUVERA).  See docs/retrieval.md.\n"
    "\n"
    "commands:\n"
    "  build    build an index from vector files and save it\n"
    "  search   search an index with a query file\n"
    "  eval     recall, queries/s, bytes and build time of indexes\n"
    "\n"
    "'embstore index COMMAND --help' describes each command.\n";

int cmd_index(int argc, char **argv) {
    if (argc < 2) {
        fputs(index_help, stderr);
        return ES_EXIT_USAGE;
    }
    const char *sub = argv[1];
    if (!strcmp(sub, "--help") || !strcmp(sub, "-h") || !strcmp(sub, "help")) {
        fputs(index_help, stdout);
        return 0;
    }
    if (!strcmp(sub, "build")) return cmd_build(argc - 1, argv + 1);
    if (!strcmp(sub, "search")) return cmd_search(argc - 1, argv + 1);
    if (!strcmp(sub, "eval")) return cmd_eval_index(argc - 1, argv + 1);
    fprintf(stderr, "embstore index: unknown command '%s'\n\n", sub);
    fputs(index_help, stderr);
    return ES_EXIT_USAGE;
}
