/*
 * embstore.c — command-line entry point: dispatches to the subcommands in
 * tools/cmd_*.c.  Every subcommand accepts --help.
 */
#include "cli.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    const char *name;
    int (*fn)(int, char **);
    const char *summary;
} command;

static const command commands[] = {
    {"train", cmd_train, "train a CTR model on a click log and report metrics"},
    {"eval", cmd_eval, "evaluate a saved model on a labeled file"},
    {"predict", cmd_predict, "write one click probability per input line"},
    {"convert", cmd_convert, "parse a data file once into a binary dataset cache (.esd) that reads much faster"},
    {"bench-storage", cmd_bench_storage, "sweep storage methods x budgets x seeds: results, Pareto plot, advice"},
    {"index", cmd_index, "build, search and evaluate vector indexes"},
    {"quantize", cmd_quantize, "post-training quantization: store a model's table as fp16/int16/int8/int4/int2"},
    {"slice", cmd_slice, "cut a Matryoshka model (train --matryoshka) to one of its trained prefix dimensions"},
    {"inspect", cmd_inspect, "show the metadata, tensors, bytes and field statistics of a file"},
    {"diagnose", cmd_diagnose, "spectrum, effective rank, intrinsic dimension, diversity of tables or vectors"},
    {"serve", cmd_serve, "serve models and indexes over HTTP: predict, embed, search, metrics, hot reload"},
    {"advise", cmd_advise, "propose per-field dimensions and a storage for a budget from a diagnosis; --verify checks it"},
};

static void usage(FILE *f) {
    fprintf(f, "embstore %d.%d.%d — learnable vector storage\n\nusage: embstore COMMAND [options]\n\ncommands:\n",
            ES_VERSION_MAJOR, ES_VERSION_MINOR, ES_VERSION_PATCH);
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(f, "  %-14s %s\n", commands[i].name, commands[i].summary);
    fprintf(f, "\n'embstore COMMAND --help' describes each command.\n");
}

/* SIGINT, SIGTERM, SIGHUP: remove the temporary files being written (a
 * model save, a --out file, a bench table), then die of the same signal
 * with the default action, so the parent sees the real cause.
 *
 * The handler may run on any thread (a reader or OpenMP thread as well as
 * the writer), and the others go on meanwhile: so it first ignores the
 * three signals process-wide (a second one must not kill the process, with
 * the default action, before the cleanup is done), removes the files,
 * waits a moment for a writer that had tracked a temporary file but not
 * yet created it, and removes again.  Then the default action, and raise():
 * the signal is blocked in its own handler, so it takes effect when the
 * handler returns.  sigaction, unlink, nanosleep and raise are
 * async-signal-safe. */
static const int fatal_sigs[] = {SIGINT, SIGTERM, SIGHUP};

static void on_fatal_signal(int sig) {
    int saved = errno;
    struct sigaction ign;
    memset(&ign, 0, sizeof ign);
    ign.sa_handler = SIG_IGN;
    for (size_t i = 0; i < sizeof fatal_sigs / sizeof fatal_sigs[0]; i++) sigaction(fatal_sigs[i], &ign, NULL);
    es_temp_files_remove();
    struct timespec ts = {0, 20 * 1000 * 1000};
    nanosleep(&ts, NULL);
    es_temp_files_remove();
    signal(sig, SIG_DFL);
    raise(sig);
    errno = saved;
}

static void install_signal_cleanup(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_fatal_signal;
    sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < sizeof fatal_sigs / sizeof fatal_sigs[0]; i++) {
        struct sigaction old;
        /* a signal ignored by the caller (nohup, `cmd &` in a script)
         * stays ignored */
        if (sigaction(fatal_sigs[i], NULL, &old) == 0 && old.sa_handler == SIG_IGN) continue;
        sigaction(fatal_sigs[i], &sa, NULL);
    }
}

/* Results on standard output count only once they are written: flush and
 * close stdout and turn a failure (a full disk, a closed file) into an
 * error exit when the command itself succeeded. */
static int finish_stdout(const char *cmd, int rc) {
    errno = 0;
    int bad = ferror(stdout);
    if (fflush(stdout) != 0) bad = 1;
    int e = errno;
    if (fclose(stdout) != 0 && !bad) {
        bad = 1;
        e = errno;
    }
    if (!bad || rc != 0) return rc; /* a failed command has said why already */
    fprintf(stderr, "embstore %s: cannot write to standard output%s%s\n", cmd, e ? ": " : "", e ? strerror(e) : "");
    return ES_EXIT_FAIL;
}

int main(int argc, char **argv) {
    /* OpenMP workers spin between parallel regions by default.  Training
     * runs a reader thread next to the compute threads, and on a machine
     * with as many cores as threads the spinning workers starve it (2
     * threads measured 10x slower than 1 on 2 cores).  libgomp reads its
     * wait policy before main, so set it and start again once; an explicit
     * OMP_WAIT_POLICY is left alone. */
    if (!getenv("OMP_WAIT_POLICY")) {
        setenv("OMP_WAIT_POLICY", "passive", 1);
        execv("/proc/self/exe", argv);
        /* exec failed (no /proc): carry on with the default policy */
    }
    install_signal_cleanup();
    if (argc < 2) {
        usage(stderr);
        return ES_EXIT_USAGE;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return finish_stdout("help", 0);
    }
    if (!strcmp(argv[1], "--version")) {
        printf("embstore %d.%d.%d\n", ES_VERSION_MAJOR, ES_VERSION_MINOR, ES_VERSION_PATCH);
        return finish_stdout("--version", 0);
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(argv[1], commands[i].name)) return finish_stdout(commands[i].name, commands[i].fn(argc - 1, argv + 1));
    fprintf(stderr, "embstore: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return ES_EXIT_USAGE;
}
