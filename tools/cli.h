/*
 * cli.h — helpers shared by the embstore subcommands (tools/cmd_*.c).
 * The CLI is a thin client of the library: it parses arguments, calls the
 * API, prints results and maps error codes to exit statuses.
 */
#ifndef ES_CLI_H
#define ES_CLI_H

#include "embstore.h"

#include <stdio.h>

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

/* Subcommands. argv[0] is the subcommand name. */
int cmd_train(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_predict(int argc, char **argv);
int cmd_inspect(int argc, char **argv);

#endif
