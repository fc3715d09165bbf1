/*
 * cli.c — shared argument and error helpers for the subcommands.
 */
#include "cli.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int cli_fail(const char *cmd, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "embstore %s: ", cmd);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return ES_EXIT_FAIL;
}

int cli_usage(const char *cmd, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "embstore %s: ", cmd);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n(see 'embstore %s --help')\n", cmd);
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
        else if (!strcmp(v, "auto")) rp->format = ES_FMT_AUTO;
        else {
            cli_usage(cmd, "--format expects criteo, csv, libsvm, libffm or auto, got '%s'", v);
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

