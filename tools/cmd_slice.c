/*
 * cmd_slice.c — `embstore slice MODEL --dim P -o SMALL`: a Matryoshka model
 * (train --matryoshka) cut to one of its trained prefixes.  A thin client
 * of es_model_load / es_model_slice / es_model_save: the output is written
 * atomically (temporary file, fsync, rename), never over the input, and
 * on any failure no output file is left.
 */
#include "cli.h"

#include <string.h>

static const char slice_help[] =
    "usage: embstore slice MODEL --dim P -o SMALL\n"
    "\n"
    "Cut a Matryoshka model (trained with --matryoshka) to its trained prefix P and\n"
    "write it to SMALL: every table row keeps its first P columns (fm: the first-order\n"
    "weight and P factors; ffm: P columns of each field-pair vector) and the net is\n"
    "the net at dimension P (dlrm: the bottom MLP's last layer cut to P outputs and\n"
    "the top MLP's matching inputs; dcn: the cross and deep layers without the\n"
    "columns past P).  SMALL predicts exactly, bit for bit, what\n"
    "'embstore predict MODEL FILE --dim P' gives, and can itself be evaluated at\n"
    "the prefixes below P.\n"
    "\n"
    "options:\n"
    "  --dim P         one of the model's trained prefixes (embstore inspect MODEL shows\n"
    "                  model.matryoshka)\n"
    "  -o, --out SMALL output model file (must differ from MODEL)\n"
    "\n"
    "Storage methods: full, hash and unified at fp32 (slice first, then quantize).\n"
    "The others are refused.  docs/methods.md, \"matryoshka\".\n"
    "\n"
    "example:\n"
    "  embstore train data.tsv --model dlrm --dim 16 --matryoshka 2,4,8,16 -o m.es\n"
    "  embstore slice m.es --dim 4 -o m4.es\n";

int cmd_slice(int argc, char **argv) {
    const char *cmd = "slice", *in = NULL, *out = NULL;
    long long dim = 0;
    for (int i = 1; i < argc; i++) {
        const char *v;
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            fputs(slice_help, stdout);
            return 0;
        } else if (!strcmp(argv[i], "--dim")) {
            if (!(v = cli_next(cmd, argc, argv, &i)) || cli_int(cmd, "--dim", v, 1, 4096, &dim)) return ES_EXIT_USAGE;
        } else if (!strcmp(argv[i], "-o") || !strcmp(argv[i], "--out")) {
            if (!(out = cli_next(cmd, argc, argv, &i))) return ES_EXIT_USAGE;
        } else if (argv[i][0] == '-' && argv[i][1]) {
            return cli_usage(cmd, "unknown option '%s'", argv[i]);
        } else if (!in) {
            in = argv[i];
        } else {
            return cli_usage(cmd, "unexpected argument '%s'", argv[i]);
        }
    }
    if (!in) return cli_usage(cmd, "no model given");
    if (!dim) return cli_usage(cmd, "--dim P is required (one of the model's trained prefixes)");
    if (!out) return cli_usage(cmd, "-o SMALL is required");
    if (!strcmp(out, "-")) return cli_usage(cmd, "-o: a model is written to a file, not to standard output");
    cli_path ins[] = {{"MODEL", in, "the input model"}};
    cli_path outs[] = {{"-o", out, NULL}};
    int rc = cli_check_outputs(cmd, ins, 1, outs, 1);
    if (rc) return rc;

    es_model *m = NULL, *s = NULL;
    es_err err = {0};
    if (es_model_load(&m, in, 0, &err) != 0) return cli_fail(cmd, "%s", err.msg);
    if (es_model_slice(m, (int)dim, &s, &err) != 0) {
        es_model_free(m);
        return cli_fail(cmd, "%s: %s", in, err.msg);
    }
    size_t before = es_model_table_bytes(m) + es_model_net_bytes(m), after = es_model_table_bytes(s) + es_model_net_bytes(s);
    es_model_free(m);
    if (es_model_save(s, out, 0) != 0) {
        rc = cli_fail(cmd, "%s", es_model_errmsg(s));
        es_model_free(s);
        return rc;
    }
    es_model_free(s);
    printf("%s: dim %lld: table + net %zu -> %zu bytes (%.2fx smaller) -> %s\n", in, dim, before, after,
           after ? (double)before / (double)after : 0.0, out);
    return 0;
}
