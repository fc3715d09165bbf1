/*
 * cli.h — helpers shared by the embstore subcommands (tools/cmd_*.c).
 * The CLI is a thin client of the library: it parses arguments, calls the
 * API, prints results and maps error codes to exit statuses.
 */
#ifndef ES_CLI_H
#define ES_CLI_H

#include "embstore.h"

#include <stdio.h>

/* Training across processes (tools/mpi/comm.c in the MPI build, else
 * tools/mpi/none.c; docs/scale.md).  cli_mpi_comm: the communicator when
 * the process was launched by mpirun (MPI started on the first call), else
 * NULL; *err is set to an exit status after printing why when that cannot
 * be (MPI failed to start, or an mpirun launch of the plain build).
 * cli_mpi_finish ends MPI when it was started (after a barrier, so that
 * every rank has printed its error before mpirun ends the job at the first
 * non-zero exit). */
const es_comm *cli_mpi_comm(const char *cmd, int *err);
void cli_mpi_finish(void);
/* End the whole job now with status st (MPI_Abort), when a rank failed
 * where the others may wait for it; returns only without MPI. */
void cli_mpi_abort(int st);

/* Exit statuses: 0 ok, 1 runtime failure (bad data, I/O), 2 usage error. */
#define ES_EXIT_FAIL 1
#define ES_EXIT_USAGE 2

/* Print "embstore CMD: message" to stderr.  Returns ES_EXIT_FAIL. */
int cli_fail(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Print a usage error and a hint to run --help.  Returns ES_EXIT_USAGE. */
int cli_usage(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Strict numeric option parsing: on junk prints a usage error naming the
 * option and returns non-zero. */
int cli_int(const char *cmd, const char *opt, const char *s, long long lo, long long hi, long long *out);
int cli_double(const char *cmd, const char *opt, const char *s, double lo, double hi, double *out);
/* Option value: argv[*i + 1] or a usage error when missing. */
const char *cli_next(const char *cmd, int argc, char **argv, int *i);
/* 1 if stderr is a terminal (progress lines are shown only then). */
int cli_tty(void);

/* Outputs must not overwrite inputs, nor each other.  An input is
 * {option or role, path, what it is}, e.g. {"FILE", path, "the input file"};
 * an output is {option, path, NULL}.  NULL paths (an option not given) and
 * "-" (stdout) are skipped.  Paths are compared by what they name, not by
 * spelling: an existing file by device and inode after following symlinks
 * (so a symlink or a hard link to an input is caught); an output that does
 * not exist yet by the resolved path of its directory plus its name (it
 * cannot be an input, but two such outputs can be one file).  Prints e.g.
 *   embstore predict: --out 'x.tsv' is the input file 'x.tsv'; choose another output path
 * and returns ES_EXIT_USAGE on a clash, 0 otherwise. */
typedef struct {
    const char *opt;
    const char *path;
    const char *what;
} cli_path;
int cli_check_outputs(const char *cmd, const cli_path *in, int n_in, const cli_path *out, int n_out);

/* Reader options shared by the commands that read click logs: parses the
 * option at argv[*i] (advancing *i past its value); returns 1 if consumed,
 * 0 if it is not a reader option, -1 after a usage error. */
int cli_reader_opt(const char *cmd, int argc, char **argv, int *i, es_reader_params *rp);
#define CLI_READER_HELP                                                                                \
    "input options:\n"                                                                             \
    "  --format F            criteo | csv | libsvm | libffm | esd | auto (default: from the file name;\n" \
    "                        .tsv = Criteo TSV, .csv = CSV, .libsvm/.svm, .libffm/.ffm; .gz ok;\n" \
    "                        a dataset cache from 'embstore convert' is recognised by its content)\n" \
    "  --columns SPEC        CSV column roles, e.g. 'rating:label,userId:cat,genres:multi'\n"      \
    "                        (roles: label num cat multi ignore; names or 0-based indexes)\n"     \
    "  --delim C             CSV delimiter (default ','; 'tab' for tabs)\n"                        \
    "  --no-header           CSV file has no header line\n"                                        \
    "  --multi-sep C         separator inside multi-valued fields (default '|')\n"                 \
    "  --pool sum|mean       pooling of multi-valued fields (default sum; train: mean)\n"                    \
    "  --num-cat, --no-num-cat  Criteo TSV: numeric columns also as bucketed categorical\n"          \
    "                        fields, floor(ln(x)^2) (default off)\n"          \
    "  --fields N            libffm: the number of fields (numbered 0..N-1; a term with a higher\n" \
    "                        field is a bad line); default: counted in a first pass over FILE\n" \
    "  --label-threshold X   label = (label column >= X), e.g. 4 for ratings\n"                     \
    "  --skip-bad            skip malformed lines (count and report them) instead of stopping\n"

/* --budget values: "0.1", "1/100" (fractions of the full table), "2000000",
 * "4M", "1.5G", "64KiB" (bytes). */
int cli_budget(const char *cmd, const char *s, double *out);

/* Options shared by the commands that train (train, bench-storage): data
 * split, model shape, optimisation, threads, seed, method knobs.  Same
 * convention as cli_reader_opt. */
int cli_train_opt(const char *cmd, int argc, char **argv, int *i, es_train_params *p);
/* Append "k=v[,k=v]" to p->storage_opts (the flags --min-count, --chunks,
 * --subtables, --share are sugar for their options); 0, or a usage error.
 * The result lives in one static buffer. */
int cli_storage_opts_add(const char *cmd, es_train_params *p, const char *kv);
/* "64,32,16": up to 8 positive widths. */
int cli_layers(const char *cmd, const char *opt, const char *s, int *v, int *n);

/* Subcommands. argv[0] is the subcommand name. */
/* Result files: written to "<path>.tmp.<pid>" (tracked, so the signal
 * handler removes it on SIGINT / SIGTERM) and renamed into place by
 * cli_commit_tmp (flush, fsync, close, rename; -1 and the temporary
 * removed on any failure), so an interrupted run never leaves a truncated
 * file.  cli_svg_to_png: a PNG of an SVG where rsvg-convert or ImageMagick
 * exists, the same way (nothing when neither does). */
FILE *cli_open_tmp(const char *path, char *tmp, size_t cap, int *slot);
int cli_commit_tmp(FILE *f, const char *tmp, const char *path, int slot);
void cli_svg_to_png(const char *svg, const char *png);

/* Standard input and pipes.  cli_is_stream: 1 when path is "-" (standard
 * input) or names a pipe, FIFO, character device or socket: something
 * that can be read once only.  cli_spool copies it to a temporary file in
 * $TMPDIR (/tmp), tracked for removal on SIGINT / SIGTERM and removed when
 * the process exits, and returns that file's path, for the commands that
 * read their input more than once (train: counting, vocabulary, epochs;
 * convert: two passes); NULL after printing why (a failed read, a full
 * disk: the copy is removed).  One input per process. */
int cli_is_stream(const char *path);
const char *cli_spool(const char *cmd, const char *path, int quiet);

int cmd_train(int argc, char **argv);
int cmd_convert(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_predict(int argc, char **argv);
int cmd_inspect(int argc, char **argv);
int cmd_quantize(int argc, char **argv);
int cmd_slice(int argc, char **argv);
int cmd_bench_storage(int argc, char **argv);
int cmd_index(int argc, char **argv);
int cmd_diagnose(int argc, char **argv);
int cmd_advise(int argc, char **argv);
int cmd_serve(int argc, char **argv);

#endif
