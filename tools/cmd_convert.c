/*
 * cmd_convert.c — `embstore convert DATA [input options] [-o OUT]`: parse a
 * data file once into a binary dataset cache (es_dataset_convert), which
 * train, eval, predict and bench-storage then read in place of the text.
 */
#include "cli.h"

#include <stdlib.h>
#include <string.h>

static const char convert_help[] =
    "usage: embstore convert DATA [input options] [-o OUT]\n"
    "\n"
    "Parse DATA (Criteo TSV, CSV, libsvm, libffm; plain or gzip) once, with the input\n"
    "options given, and write its rows (labels, numeric features, hashed categorical\n"
    "keys and their weights) to a binary dataset cache: an embstore container file,\n"
    "checksummed, written to a temporary file and renamed.  train, eval, predict and\n"
    "bench-storage accept the cache wherever they accept DATA and read exactly the\n"
    "same rows, much faster: a model trained from it is bit-identical.\n"
    "\n"
    "The cache records the input options and DATA's identity (size, modification time,\n"
    "a checksum of its first MiB): reading it after DATA changed is an error (a stale\n"
    "cache), and so is reading it with other input options.  Two passes over DATA\n"
    "(count, then write); memory is one batch, whatever the file size.  DATA may be\n"
    "'-' (standard input) or a pipe, with --format and -o: it is first copied to a\n"
    "temporary file in $TMPDIR (/tmp), removed when the command ends.\n"
    "\n"
    "  -o, --out OUT         the cache file (default DATA.esd)\n"
    "  -q, --quiet           no summary on stderr\n"
    "\n" CLI_READER_HELP
    "\n"
    "The pooling default is that of train (mean), so that 'train DATA.esd' reads the\n"
    "rows 'train DATA' would.  Prints one JSON line: rows, values, bytes, seconds.\n";

int cmd_convert(int argc, char **argv) {
    const char *cmd = "convert";
    es_train_params tp = es_train_params_default(); /* train's reader defaults */
    es_reader_params rp = tp.reader;
    const char *file = NULL, *out = NULL;
    int quiet = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int r = cli_reader_opt(cmd, argc, argv, &i, &rp);
        if (r < 0) return ES_EXIT_USAGE;
        if (r > 0) continue;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(convert_help, stdout);
            return 0;
        } else if (!strcmp(a, "--out") || !strcmp(a, "-o")) {
            if (!(out = cli_next(cmd, argc, argv, &i))) return ES_EXIT_USAGE;
        } else if (!strcmp(a, "--quiet") || !strcmp(a, "-q")) {
            quiet = 1;
        } else if (a[0] == '-' && a[1]) {
            return cli_usage(cmd, "unknown option '%s'", a);
        } else if (!file) {
            file = a;
        } else {
            return cli_usage(cmd, "unexpected argument '%s' (one data file)", a);
        }
    }
    if (!file) return cli_usage(cmd, "no data file given");
    if (rp.format == ES_FMT_ESD) return cli_usage(cmd, "--format esd: DATA must be a text file (it is the cache that is esd)");
    const int stream = cli_is_stream(file); /* "-" or a pipe: converted from a temporary copy (two passes) */
    if (stream && rp.format == ES_FMT_AUTO)
        return cli_usage(cmd, "DATA '%s' (standard input or a pipe) has no file name to tell the format from: give --format "
                              "(criteo, csv, libsvm or libffm; gzip is recognised by its bytes)", file);
    if (stream && !out) return cli_usage(cmd, "DATA '%s' is standard input or a pipe: say where the cache goes (-o PATH.esd)", file);
    char *dflt = NULL;
    if (!out) {
        size_t n = strlen(file) + 5;
        if (!(dflt = malloc(n))) return cli_fail(cmd, "out of memory");
        snprintf(dflt, n, "%s.esd", file);
        out = dflt;
    }
    const cli_path in[] = {{"DATA", file, "the input file"}};
    const cli_path outs[] = {{"--out", out, NULL}};
    if (cli_check_outputs(cmd, in, 1, outs, 1) != 0) {
        free(dflt);
        return ES_EXIT_USAGE;
    }
    if (stream && !(file = cli_spool(cmd, file, quiet))) {
        free(dflt);
        return ES_EXIT_FAIL;
    }
    es_dataset_info info;
    es_err err = {0};
    int rc = es_dataset_convert(file, &rp, out, &info, &err);
    if (rc != 0) {
        free(dflt);
        return cli_fail(cmd, "%s", err.msg[0] ? err.msg : es_strerror(rc));
    }
    if (!quiet)
        fprintf(stderr, "wrote %s: %llu rows, %d numeric, %d fields, %llu values, %llu bytes (%.2f s)%s\n", out,
                (unsigned long long)info.rows, info.n_dense, info.n_fields, (unsigned long long)info.values,
                (unsigned long long)info.bytes, info.seconds, info.bad_lines ? "; bad lines were skipped" : "");
    printf("{\"cache\":\"%s\",\"rows\":%llu,\"values\":%llu,\"bytes\":%llu,\"bad_lines\":%llu,\"seconds\":%.3f}\n", out,
           (unsigned long long)info.rows, (unsigned long long)info.values, (unsigned long long)info.bytes,
           (unsigned long long)info.bad_lines, info.seconds);
    free(dflt);
    return 0;
}
