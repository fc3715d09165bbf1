/*
 * embstore.c — command-line entry point: dispatches to the subcommands in
 * tools/cmd_*.c.  Every subcommand accepts --help.
 */
#include "cli.h"

#include <stdlib.h>
#include <string.h>
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
    {"bench-storage", cmd_bench_storage, "sweep storage methods x budgets x seeds: results, Pareto plot, advice"},
    {"index", cmd_index, "build, search and evaluate vector indexes"},
    {"inspect", cmd_inspect, "show the metadata, tensors, bytes and field statistics of a file"},
};

static void usage(FILE *f) {
    fprintf(f, "embstore %d.%d.%d — learnable vector storage\n\nusage: embstore COMMAND [options]\n\ncommands:\n",
            ES_VERSION_MAJOR, ES_VERSION_MINOR, ES_VERSION_PATCH);
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(f, "  %-14s %s\n", commands[i].name, commands[i].summary);
    fprintf(f, "\n'embstore COMMAND --help' describes each command.\n");
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
    if (argc < 2) {
        usage(stderr);
        return ES_EXIT_USAGE;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("embstore %d.%d.%d\n", ES_VERSION_MAJOR, ES_VERSION_MINOR, ES_VERSION_PATCH);
        return 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(argv[1], commands[i].name)) return commands[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "embstore: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return ES_EXIT_USAGE;
}
