/*
 * cmd_quantize.c — `embstore quantize MODEL --precision P -o OUT`:
 * post-training quantization of a model's embedding table (issue 11).
 * A thin client of es_model_load / es_model_quantize / es_model_save: the
 * output is written atomically (temporary file, fsync, rename) and never
 * over the input; on any failure no output file is left.
 */
#include "cli.h"

#include <string.h>

static const char quantize_help[] =
    "usage: embstore quantize MODEL --precision P -o OUT\n"
    "\n"
    "Post-training quantization: store the embedding table of a trained model in\n"
    "fewer bits and write the result to OUT.  Each row keeps its own scale and bias\n"
    "(int kinds: f16 scale and bias, f32 for int16; nearest rounding), and serving\n"
    "dequantizes rows on the fly: the table is never expanded back to fp32.  The\n"
    "dense layers stay fp32.  The quantized model predicts and evaluates like any\n"
    "other (embstore eval / predict) but cannot be trained further.\n"
    "\n"
    "options:\n"
    "  --precision P   fp16 | int16 | int8 | int4 | int2\n"
    "                  (row bytes at dim d: 2d, 2d+8, d+4, ceil(d/2)+4, ceil(d/4)+4)\n"
    "  -o, --out OUT   output model file (must differ from MODEL)\n"
    "\n"
    "Supported storage methods: full, hash, unified, qr, fielddim, multihash, mde,\n"
    "robe, adapt.  The others are refused: tt and dhe have no rows, and dpq, mgqe,\n"
    "pep, deeplight and dedup compress their rows their own way.  See\n"
    "docs/methods.md, \"Precision\".\n"
    "\n"
    "example:\n"
    "  embstore quantize model.es --precision int8 -o model.int8.es\n";

int cmd_quantize(int argc, char **argv) {
    const char *cmd = "quantize", *in = NULL, *out = NULL, *prec = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            fputs(quantize_help, stdout);
            return 0;
        } else if (!strcmp(argv[i], "--precision")) {
            if (!(prec = cli_next(cmd, argc, argv, &i))) return ES_EXIT_USAGE;
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
    if (!prec) return cli_usage(cmd, "--precision is required (fp16, int16, int8, int4 or int2)");
    if (!out) return cli_usage(cmd, "-o OUT is required");
    if (strcmp(prec, "fp16") && strcmp(prec, "int16") && strcmp(prec, "int8") && strcmp(prec, "int4") && strcmp(prec, "int2"))
        return cli_usage(cmd, "--precision '%s': expected fp16, int16, int8, int4 or int2", prec);
    if (!strcmp(out, "-")) return cli_usage(cmd, "-o: a model is written to a file, not to standard output");
    cli_path ins[] = {{"MODEL", in, "the input model"}};
    cli_path outs[] = {{"-o", out, NULL}};
    int rc = cli_check_outputs(cmd, ins, 1, outs, 1);
    if (rc) return rc;

    es_model *m = NULL;
    es_err err = {0};
    if (es_model_load(&m, in, 0, &err) != 0) return cli_fail(cmd, "%s", err.msg);
    size_t before = es_model_table_bytes(m);
    if (es_model_quantize(m, prec, &err) != 0) {
        es_model_free(m);
        return cli_fail(cmd, "%s: %s", in, err.msg);
    }
    size_t after = es_model_table_bytes(m);
    if (es_model_save(m, out, 0) != 0) {
        rc = cli_fail(cmd, "%s", es_model_errmsg(m));
        es_model_free(m);
        return rc;
    }
    es_model_free(m);
    printf("%s: table %zu -> %zu bytes (%s, %.2fx smaller) -> %s\n", in, before, after, prec,
           after ? (double)before / (double)after : 0.0, out);
    return 0;
}
