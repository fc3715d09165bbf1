/*
 * cli.c — shared argument and error helpers for the subcommands.
 */
#include "cli.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* the copy of standard input or a pipe (cli_spool), and what it was */
static char g_spool[4200], g_spool_of[4200];
static int g_spool_slot = -1;

/* "embstore CMD: message\n" on stderr, the copy of a stream named as the
 * stream (the library's messages name the file it read: the copy) */
static void say(const char *cmd, const char *fmt, va_list ap) {
    char msg[8192];
    vsnprintf(msg, sizeof msg, fmt, ap);
    fprintf(stderr, "embstore %s: ", cmd);
    const char *s = msg, *hit;
    size_t n = strlen(g_spool);
    while (n && (hit = strstr(s, g_spool))) {
        fprintf(stderr, "%.*s%s", (int)(hit - s), s, g_spool_of);
        s = hit + n;
    }
    fprintf(stderr, "%s\n", s);
}

int cli_fail(const char *cmd, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    say(cmd, fmt, ap);
    va_end(ap);
    return ES_EXIT_FAIL;
}

int cli_usage(const char *cmd, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    say(cmd, fmt, ap);
    fprintf(stderr, "(see 'embstore %s --help')\n", cmd);
    va_end(ap);
    return ES_EXIT_USAGE;
}

int cli_int(const char *cmd, const char *opt, const char *s, long long lo, long long hi, long long *out) {
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (!*s || *end || errno == ERANGE || v < lo || v > hi) {
        cli_usage(cmd, "%s expects an integer in [%lld, %lld], got '%s'", opt, lo, hi, s);
        return -1;
    }
    *out = v;
    return 0;
}

int cli_double(const char *cmd, const char *opt, const char *s, double lo, double hi, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (!*s || *end || errno == ERANGE || !(v >= lo && v <= hi)) {
        cli_usage(cmd, "%s expects a number in [%g, %g], got '%s'", opt, lo, hi, s);
        return -1;
    }
    *out = v;
    return 0;
}

const char *cli_next(const char *cmd, int argc, char **argv, int *i) {
    if (*i + 1 >= argc) {
        cli_usage(cmd, "option %s needs a value", argv[*i]);
        return NULL;
    }
    return argv[++*i];
}

int cli_tty(void) { return isatty(2); }

/* ---- outputs against inputs ----------------------------------------------------- */

/* What a path names: an existing file's (device, inode), or for a path that
 * does not exist yet the canonical directory + "/" + name. */
typedef struct {
    int exists;
    dev_t dev;
    ino_t ino;
    char name[PATH_MAX + NAME_MAX + 2];
} path_id;

static void path_identify(const char *path, path_id *id) {
    struct stat st;
    memset(id, 0, sizeof *id);
    if (stat(path, &st) == 0) {
        id->exists = 1;
        id->dev = st.st_dev;
        id->ino = st.st_ino;
        return;
    }
    /* Not there (or a dangling link): name it by its resolved directory. */
    const char *slash = strrchr(path, '/');
    const char *base = slash ? slash + 1 : path;
    char dir[PATH_MAX], real[PATH_MAX];
    if (slash) {
        size_t n = (size_t)(slash - path);
        if (n >= sizeof dir) n = sizeof dir - 1;
        memcpy(dir, path, n ? n : 1);
        dir[n ? n : 1] = 0;
    } else {
        strcpy(dir, ".");
    }
    if (realpath(dir, real)) snprintf(id->name, sizeof id->name, "%s/%s", real, base);
    else snprintf(id->name, sizeof id->name, "%s", path); /* the write will fail anyway */
}

static int path_id_same(const path_id *a, const path_id *b) {
    if (a->exists != b->exists) return 0;
    if (a->exists) return a->dev == b->dev && a->ino == b->ino;
    return strcmp(a->name, b->name) == 0;
}

static int skip_path(const char *p) { return !p || !*p || !strcmp(p, "-"); }

int cli_check_outputs(const char *cmd, const cli_path *in, int n_in, const cli_path *out, int n_out) {
    for (int o = 0; o < n_out; o++) {
        if (skip_path(out[o].path)) continue;
        path_id oid, x;
        path_identify(out[o].path, &oid);
        for (int i = 0; i < n_in && oid.exists; i++) {
            if (skip_path(in[i].path)) continue;
            /* an input naming several files (a glob, @LIST): each of them */
            char **files = NULL;
            int nf = 0;
            es_err e = {0};
            if (es_path_files(in[i].path, &files, &nf, &e) != 0) nf = 0;
            for (int k = 0; k < (nf ? nf : 1); k++) {
                const char *p = nf ? files[k] : in[i].path;
                path_identify(p, &x);
                if (path_id_same(&oid, &x)) {
                    int rc = cli_usage(cmd, "%s '%s' is %s '%s'; choose another output path", out[o].opt, out[o].path, in[i].what, p);
                    es_path_files_free(files, nf);
                    return rc;
                }
            }
            es_path_files_free(files, nf);
        }
        for (int p = 0; p < o; p++) {
            if (skip_path(out[p].path)) continue;
            path_identify(out[p].path, &x);
            if (path_id_same(&oid, &x))
                return cli_usage(cmd, "%s '%s' and %s '%s' name the same file; choose different output paths", out[p].opt, out[p].path,
                                 out[o].opt, out[o].path);
        }
    }
    return 0;
}

/* ---- shared reader options ---------------------------------------------------- */

/* Parse one reader option at argv[*i]; returns 1 if consumed, 0 if not a
 * reader option, -1 on a usage error. */
int cli_reader_opt(const char *cmd, int argc, char **argv, int *i, es_reader_params *rp) {
    const char *a = argv[*i], *v;
    double d;
    if (!strcmp(a, "--format")) {
        if (!(v = cli_next(cmd, argc, argv, i))) return -1;
        if (!strcmp(v, "criteo") || !strcmp(v, "tsv")) rp->format = ES_FMT_CRITEO;
        else if (!strcmp(v, "csv")) rp->format = ES_FMT_CSV;
        else if (!strcmp(v, "libsvm")) rp->format = ES_FMT_LIBSVM;
        else if (!strcmp(v, "libffm")) rp->format = ES_FMT_LIBFFM;
        else if (!strcmp(v, "esd")) rp->format = ES_FMT_ESD;
        else if (!strcmp(v, "auto")) rp->format = ES_FMT_AUTO;
        else {
            cli_usage(cmd, "--format expects criteo, csv, libsvm, libffm, esd or auto, got '%s'", v);
            return -1;
        }
        return 1;
    }
    if (!strcmp(a, "--columns")) {
        if (!(v = cli_next(cmd, argc, argv, i))) return -1;
        rp->columns = v;
        if (rp->format == ES_FMT_AUTO) rp->format = ES_FMT_CSV;
        return 1;
    }
    if (!strcmp(a, "--delim")) {
        if (!(v = cli_next(cmd, argc, argv, i))) return -1;
        if (!strcmp(v, "\\t") || !strcmp(v, "tab")) rp->delim = '\t';
        else if (strlen(v) == 1) rp->delim = v[0];
        else {
            cli_usage(cmd, "--delim expects one character (or 'tab'), got '%s'", v);
            return -1;
        }
        return 1;
    }
    if (!strcmp(a, "--multi-sep")) {
        if (!(v = cli_next(cmd, argc, argv, i))) return -1;
        if (strlen(v) != 1) {
            cli_usage(cmd, "--multi-sep expects one character, got '%s'", v);
            return -1;
        }
        rp->multi_sep = v[0];
        return 1;
    }
    if (!strcmp(a, "--no-header")) {
        rp->header = 0;
        return 1;
    }
    if (!strcmp(a, "--skip-bad")) {
        rp->skip_bad = 1;
        return 1;
    }
    if (!strcmp(a, "--pool")) {
        if (!(v = cli_next(cmd, argc, argv, i))) return -1;
        if (!strcmp(v, "sum")) rp->pool = ES_POOL_SUM;
        else if (!strcmp(v, "mean")) rp->pool = ES_POOL_MEAN;
        else {
            cli_usage(cmd, "--pool expects sum or mean, got '%s'", v);
            return -1;
        }
        return 1;
    }
    if (!strcmp(a, "--num-cat")) {
        rp->num_cat = 1;
        return 1;
    }
    if (!strcmp(a, "--no-num-cat")) {
        rp->num_cat = 0;
        return 1;
    }
    if (!strcmp(a, "--fields")) {
        long long n;
        if (!(v = cli_next(cmd, argc, argv, i)) || cli_int(cmd, a, v, 1, 65536, &n)) return -1;
        rp->n_fields_hint = (int)n;
        return 1;
    }
    if (!strcmp(a, "--label-threshold")) {
        if (!(v = cli_next(cmd, argc, argv, i)) || cli_double(cmd, a, v, -1e300, 1e300, &d)) return -1;
        rp->label_threshold = d;
        return 1;
    }
    return 0;
}

/* "0.1", "1/100", "2000000", "4M", "1.5G" */
int cli_budget(const char *cmd, const char *s, double *out) {
    char *end;
    double a = strtod(s, &end);
    if (end == s || !(a >= 0)) goto bad;
    if (*end == '/') {
        double b = strtod(end + 1, &end);
        if (*end || !(b > 0)) goto bad;
        a /= b;
    } else if (*end) {
        double mult = 0;
        if (!strcmp(end, "K") || !strcmp(end, "k") || !strcmp(end, "KB")) mult = 1e3;
        else if (!strcmp(end, "M") || !strcmp(end, "MB")) mult = 1e6;
        else if (!strcmp(end, "G") || !strcmp(end, "GB")) mult = 1e9;
        else if (!strcmp(end, "KiB")) mult = 1024;
        else if (!strcmp(end, "MiB")) mult = 1048576;
        else if (!strcmp(end, "GiB")) mult = 1073741824;
        else goto bad;
        a *= mult;
    }
    *out = a;
    return 0;
bad:
    cli_usage(cmd, "--budget expects bytes (e.g. 4M) or a fraction of the full table (0.1, 1/100), got '%s'", s);
    return -1;
}

/* ---- options shared by the commands that train -------------------------------------- */

int cli_layers(const char *cmd, const char *opt, const char *s, int *v, int *n) {
    int k = 0;
    const char *p = s;
    while (*p) {
        char *end;
        long x = strtol(p, &end, 10);
        if (end == p || x <= 0 || x > 65536 || (*end && *end != ',') || k >= 8) {
            cli_usage(cmd, "%s expects up to 8 positive comma-separated widths, got '%s'", opt, s);
            return -1;
        }
        v[k++] = (int)x;
        p = *end ? end + 1 : end;
    }
    if (k == 0) {
        cli_usage(cmd, "%s expects at least one width", opt);
        return -1;
    }
    *n = k;
    return 0;
}

int cli_storage_opts_add(const char *cmd, es_train_params *p, const char *kv) {
    /* one buffer for the process: storage_opts points into it */
    static char buf[8192];
    const char *old = p->storage_opts ? p->storage_opts : "";
    char tmp[sizeof buf];
    int n = snprintf(tmp, sizeof tmp, "%s%s%s", old, *old && *kv ? "," : "", kv);
    if (n < 0 || (size_t)n >= sizeof tmp) return cli_usage(cmd, "storage options longer than %zu bytes", sizeof buf - 1);
    memcpy(buf, tmp, (size_t)n + 1);
    p->storage_opts = buf;
    return 0;
}

int cli_train_opt(const char *cmd, int argc, char **argv, int *ip, es_train_params *p) {
    int i = *ip;
    const char *a = argv[i], *v;
    long long ll;
    double d;
    if (!strcmp(a, "--valid")) {
        if (!(p->valid_path = cli_next(cmd, argc, argv, &i))) return -1;
        *ip = i;
        return 1;
    }
    if (!strcmp(a, "--valid-frac")) {
        if (!(v = cli_next(cmd, argc, argv, &i)) || cli_double(cmd, a, v, 0, 0.99, &d)) return -1;
        p->valid_frac = d;
        *ip = i;
        return 1;
    }
    if (!strcmp(a, "--max-rows")) {
        if (!(v = cli_next(cmd, argc, argv, &i)) || cli_int(cmd, a, v, 1, INT64_MAX, &ll)) return -1;
        p->max_rows = (uint64_t)ll;
        *ip = i;
        return 1;
    }
    if (!strcmp(a, "--model")) {
        if (!(p->model = cli_next(cmd, argc, argv, &i))) return -1;
        *ip = i;
        return 1;
    }
    if (!strcmp(a, "--dim")) {
        if (!(v = cli_next(cmd, argc, argv, &i)) || cli_int(cmd, a, v, 1, 4096, &ll)) return -1;
        p->dim = (int)ll;
        *ip = i;
        return 1;
    }
    if (!strcmp(a, "--bottom")) {
        if (!(v = cli_next(cmd, argc, argv, &i)) || cli_layers(cmd, a, v, p->bottom, &p->n_bottom)) return -1;
        *ip = i;
        return 1;
    }
    if (!strcmp(a, "--top")) {
        if (!(v = cli_next(cmd, argc, argv, &i)) || cli_layers(cmd, a, v, p->top, &p->n_top)) return -1;
        *ip = i;
        return 1;
    }
    if (!strcmp(a, "--cross")) {
        if (!(v = cli_next(cmd, argc, argv, &i)) || cli_int(cmd, a, v, 1, 16, &ll)) return -1;
        p->n_cross = (int)ll;
        *ip = i;
        return 1;
    }
    if (!strcmp(a, "--norm-rows") || !strcmp(a, "--pairs-only")) {
        *(!strcmp(a, "--norm-rows") ? &p->norm_rows : &p->pairs_only) = 1;
        *ip = i;
        return 1;
    }
    if (!strcmp(a, "--min-count")) { /* sugar for --storage-opts min_count=N */
        char kv[48];
        if (!(v = cli_next(cmd, argc, argv, &i)) || cli_int(cmd, a, v, 1, 1000000000, &ll)) return -1;
        snprintf(kv, sizeof kv, "min_count=%lld", ll);
        if (cli_storage_opts_add(cmd, p, kv)) return -1;
        *ip = i;
        return 1;
    }
    if (!strcmp(a, "--chunks")) { /* sugar for --storage-opts chunks=N */
        char kv[48];
        if (!(v = cli_next(cmd, argc, argv, &i)) || cli_int(cmd, a, v, 1, 64, &ll)) return -1;
        snprintf(kv, sizeof kv, "chunks=%lld", ll);
        if (cli_storage_opts_add(cmd, p, kv)) return -1;
        *ip = i;
        return 1;
    }
    if (!strcmp(a, "--subtables")) { /* sugar for --storage-opts subtables=N */
        char kv[48];
        if (!(v = cli_next(cmd, argc, argv, &i)) || cli_int(cmd, a, v, 1, 4096, &ll)) return -1;
        snprintf(kv, sizeof kv, "subtables=%lld", ll);
        if (cli_storage_opts_add(cmd, p, kv)) return -1;
        *ip = i;
        return 1;
    }
    if (!strcmp(a, "--storage-opts")) {
        if (!(v = cli_next(cmd, argc, argv, &i)) || cli_storage_opts_add(cmd, p, v)) return -1;
        *ip = i;
        return 1;
    }
    if (!strcmp(a, "--epochs")) {
        if (!(v = cli_next(cmd, argc, argv, &i)) || cli_int(cmd, a, v, 1, 100000, &ll)) return -1;
        p->epochs = (int)ll;
        *ip = i;
        return 1;
    }
    if (!strcmp(a, "--batch")) {
        if (!(v = cli_next(cmd, argc, argv, &i)) || cli_int(cmd, a, v, 1, 1 << 20, &ll)) return -1;
        p->batch = (int)ll;
        *ip = i;
        return 1;
    }
    if (!strcmp(a, "--lr")) {
        if (!(v = cli_next(cmd, argc, argv, &i)) || cli_double(cmd, a, v, 0, 1e3, &d)) return -1;
        p->lr = (float)d;
        *ip = i;
        return 1;
    }
    if (!strcmp(a, "--emb-lr")) {
        if (!(v = cli_next(cmd, argc, argv, &i)) || cli_double(cmd, a, v, 0, 1e3, &d)) return -1;
        p->emb_lr = (float)d;
        *ip = i;
        return 1;
    }
    if (!strcmp(a, "--optim")) {
        if (!(p->optim = cli_next(cmd, argc, argv, &i))) return -1;
        *ip = i;
        return 1;
    }
    if (!strcmp(a, "--precision")) {
        if (!(p->precision = cli_next(cmd, argc, argv, &i))) return -1;
        *ip = i;
        return 1;
    }
    if (!strcmp(a, "--qtrain")) {
        if (!(p->qtrain = cli_next(cmd, argc, argv, &i))) return -1;
        *ip = i;
        return 1;
    }
    if (!strcmp(a, "--emb-optim")) {
        if (!(p->emb_optim = cli_next(cmd, argc, argv, &i))) return -1;
        *ip = i;
        return 1;
    }
    if (!strcmp(a, "--emb-init-shift")) {
        if (!(v = cli_next(cmd, argc, argv, &i)) || cli_double(cmd, a, v, -1e6, 1e6, &d)) return -1;
        p->emb_init_shift = (float)d;
        *ip = i;
        return 1;
    }
    if (!strcmp(a, "--emb-init-acc") || !strcmp(a, "--emb-init-scale")) {
        if (!(v = cli_next(cmd, argc, argv, &i)) || cli_double(cmd, a, v, 0, 1e6, &d)) return -1;
        *(!strcmp(a, "--emb-init-acc") ? &p->emb_init_acc : &p->emb_init_scale) = (float)d;
        *ip = i;
        return 1;
    }
    if (!strcmp(a, "--emb-l2")) {
        if (!(v = cli_next(cmd, argc, argv, &i)) || cli_double(cmd, a, v, 0, 1e3, &d)) return -1;
        p->emb_l2 = (float)d;
        *ip = i;
        return 1;
    }
    if (!strcmp(a, "--emb-l2-freq")) {
        /* the exponent p of frequency-aware L2; the library checks that
         * --emb-l2 is on and the optimizer is not ftrl */
        if (!(v = cli_next(cmd, argc, argv, &i)) || cli_double(cmd, a, v, 0, 4, &d)) return -1;
        p->emb_l2_freq = (float)d;
        *ip = i;
        return 1;
    }
    /* FTRL-proximal's four: alpha > 0 (the library checks it), the rest >= 0 */
    float *ftrl = !strcmp(a, "--ftrl-alpha") ? &p->ftrl_alpha
                  : !strcmp(a, "--ftrl-beta") ? &p->ftrl_beta
                  : !strcmp(a, "--ftrl-l1")   ? &p->ftrl_l1
                  : !strcmp(a, "--ftrl-l2")   ? &p->ftrl_l2
                                              : NULL;
    if (ftrl) {
        if (!(v = cli_next(cmd, argc, argv, &i)) || cli_double(cmd, a, v, 0, 1e6, &d)) return -1;
        *ftrl = (float)d;
        *ip = i;
        return 1;
    }
    if (!strcmp(a, "--weight-decay")) {
        if (!(v = cli_next(cmd, argc, argv, &i)) || cli_double(cmd, a, v, 0, 1e3, &d)) return -1;
        p->weight_decay = (float)d;
        *ip = i;
        return 1;
    }
    if (!strcmp(a, "--dropout")) {
        /* [0, 1): 1 would drop every unit (and scale by 1/0) */
        if (!(v = cli_next(cmd, argc, argv, &i))) return -1;
        char *end;
        errno = 0;
        double x = strtod(v, &end);
        if (!*v || *end || errno == ERANGE || !(x >= 0 && x < 1)) {
            cli_usage(cmd, "--dropout expects a probability in [0, 1), got '%s'", v);
            return -1;
        }
        p->dropout = (float)x;
        *ip = i;
        return 1;
    }
    if (!strcmp(a, "--matryoshka")) {
        if (!(v = cli_next(cmd, argc, argv, &i))) return -1;
        p->matryoshka = v; /* checked with the rest of the model (es_model_create) */
        *ip = i;
        return 1;
    }
    if (!strcmp(a, "--matryoshka-weights")) {
        if (!(v = cli_next(cmd, argc, argv, &i))) return -1;
        p->matryoshka_weights = v;
        *ip = i;
        return 1;
    }
    if (!strcmp(a, "--threads")) {
        if (!(v = cli_next(cmd, argc, argv, &i)) || cli_int(cmd, a, v, 0, 1024, &ll)) return -1;
        p->threads = (int)ll;
        *ip = i;
        return 1;
    }
    if (!strcmp(a, "--seed")) {
        if (!(v = cli_next(cmd, argc, argv, &i)) || cli_int(cmd, a, v, 0, INT64_MAX, &ll)) return -1;
        p->seed = (uint64_t)ll;
        *ip = i;
        return 1;
    }
    return 0;
}

/* ---- result files ------------------------------------------------------------ */

FILE *cli_open_tmp(const char *path, char *tmp, size_t cap, int *slot) {
    snprintf(tmp, cap, "%s.tmp.%ld", path, (long)getpid());
    *slot = es_temp_file_track(tmp);
    FILE *f = fopen(tmp, "w");
    if (!f) {
        es_temp_file_untrack(*slot);
        *slot = -1;
    }
    return f;
}

int cli_commit_tmp(FILE *f, const char *tmp, const char *path, int slot) {
    int bad = ferror(f);
    if (fflush(f) != 0) bad = 1;
    if (fsync(fileno(f)) != 0 && errno != EINVAL) bad = 1;
    if (fclose(f) != 0) bad = 1;
    if (bad || rename(tmp, path) != 0) {
        remove(tmp);
        es_temp_file_untrack(slot);
        return -1;
    }
    es_temp_file_untrack(slot);
    return 0;
}

void cli_svg_to_png(const char *svg, const char *png) {
    char conv[20000], tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", png, (long)getpid());
    int slot = es_temp_file_track(tmp);
    snprintf(conv, sizeof conv,
             "command -v rsvg-convert >/dev/null 2>&1 && rsvg-convert -o '%s' '%s' || "
             "{ command -v convert >/dev/null 2>&1 && convert '%s' 'png:%s'; } >/dev/null 2>&1",
             tmp, svg, svg, tmp);
    struct stat st;
    if (system(conv) != 0 || stat(tmp, &st) != 0 || st.st_size == 0 || rename(tmp, png) != 0) remove(tmp);
    es_temp_file_untrack(slot);
}

/* ---- standard input and pipes ------------------------------------------------ */

int cli_is_stream(const char *path) {
    if (!strcmp(path, "-")) return 1;
    struct stat st;
    return stat(path, &st) == 0 && (S_ISFIFO(st.st_mode) || S_ISCHR(st.st_mode) || S_ISSOCK(st.st_mode));
}


static void spool_remove(void) {
    if (!g_spool[0]) return;
    remove(g_spool);
    es_temp_file_untrack(g_spool_slot);
    g_spool[0] = 0;
}

const char *cli_spool(const char *cmd, const char *path, int quiet) {
    if (g_spool[0]) {
        cli_fail(cmd, "only one input can be standard input or a pipe");
        return NULL;
    }
    const char *dir = getenv("TMPDIR");
    if (!dir || !*dir) dir = "/tmp";
    snprintf(g_spool, sizeof g_spool, "%s/embstore-input.%ld.XXXXXX", dir, (long)getpid());
    int fd = mkstemp(g_spool);
    if (fd < 0) {
        cli_fail(cmd, "cannot create a temporary file in %s for %s: %s (set TMPDIR to a writable directory)", dir,
                 strcmp(path, "-") ? path : "standard input", strerror(errno));
        g_spool[0] = 0;
        return NULL;
    }
    g_spool_slot = es_temp_file_track(g_spool); /* removed on SIGINT / SIGTERM */
    snprintf(g_spool_of, sizeof g_spool_of, "%s", strcmp(path, "-") ? path : "(standard input)");
    atexit(spool_remove);                       /* and when the command ends */
    int in = strcmp(path, "-") ? open(path, O_RDONLY | O_CLOEXEC) : STDIN_FILENO;
    const char *what = strcmp(path, "-") ? path : "standard input";
    int ok = in >= 0;
    if (!ok) cli_fail(cmd, "%s: cannot open: %s", path, strerror(errno));
    static char buf[1 << 16];
    unsigned long long total = 0;
    while (ok) {
        ssize_t k = read(in, buf, sizeof buf);
        if (k < 0 && errno == EINTR) continue;
        if (k < 0) {
            ok = 0;
            cli_fail(cmd, "%s: cannot read: %s", what, strerror(errno));
            break;
        }
        if (k == 0) break;
        for (ssize_t o = 0; o < k;) {
            ssize_t w = write(fd, buf + o, (size_t)(k - o));
            if (w < 0 && errno == EINTR) continue;
            if (w < 0) {
                ok = 0;
                cli_fail(cmd, "%s: cannot write a copy of %s: %s", g_spool, what, strerror(errno));
                break;
            }
            o += w;
        }
        total += (unsigned long long)k;
    }
    if (in > STDIN_FILENO) close(in);
    if (close(fd) != 0 && ok) {
        ok = 0;
        cli_fail(cmd, "%s: cannot write a copy of %s: %s", g_spool, what, strerror(errno));
    }
    if (!ok) {
        spool_remove();
        return NULL;
    }
    if (!quiet)
        fprintf(stderr, "embstore %s: %s copied to %s (%llu bytes, removed when the command ends)\n", cmd, what, g_spool, total);
    return g_spool;
}
