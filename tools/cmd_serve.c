/*
 * cmd_serve.c — `embstore serve`: serve models and indexes over HTTP
 * (issue 14).  Parses the options and hands them to the server in
 * src/serve/ (a client of the public API, like this CLI).
 */
#include "cli.h"
#include "serve/serve.h"

#include <string.h>

static const char serve_help[] =
    "usage: embstore serve --model NAME=FILE [--model ...] [--index NAME=FILE ...] [options]\n"
    "\n"
    "Serve models and vector indexes over HTTP (libmicrohttpd thread pool, JSON).\n"
    "  POST /v1/models/NAME/predict   rows (JSON objects keyed by column, or text lines\n"
    "                                 in the model's input format) -> probabilities\n"
    "  POST /v1/models/NAME/embed     (field, value) pairs -> embedding vectors\n"
    "  POST /v1/indexes/NAME/search   query vectors, k, optional filter -> ids, distances\n"
    "  GET  /healthz   GET /v1/models   GET /metrics (Prometheus)\n"
    "  POST /v1/admin/reload          reload every file (also on SIGHUP)\n"
    "A reload swaps a new file in atomically (requests in flight finish on the old\n"
    "one); a corrupt file, or one with other input columns, is refused and the old\n"
    "one keeps serving.  Replace a served file by rename (mv), never by copying over\n"
    "it: models are mapped.  SIGTERM / SIGINT: finish requests in flight, exit 0.\n"
    "\n"
    "options:\n"
    "  --model NAME=FILE   a model to serve (repeatable)\n"
    "  --index NAME=FILE   an index to serve (repeatable)\n"
    "  --host ADDR         IPv4 address to listen on (default 127.0.0.1)\n"
    "  --port P            TCP port (default 8080; 0 = any free port, printed)\n"
    "  --threads T         worker threads (default 2)\n"
    "  --max-body BYTES    largest request body (default 4194304) -> 413\n"
    "  --max-rows N        rows, values or queries per request (default 4096) -> 413\n"
    "  --max-conns N       open connections (default 256; more are refused)\n"
    "  --timeout S         seconds to receive a request, and idle keep-alive time\n"
    "                      (default 10) -> 408\n"
    "\n"
    "example:\n"
    "  embstore serve --model ctr=model.es --index items=items.esi --port 8080 --threads 2\n"
    "  curl -s localhost:8080/v1/models/ctr/predict -d '{\"rows\":[{\"I1\":3,\"C1\":\"05db9164\"}]}'\n"
    "See docs/serving.md.\n";

static int named(const char *cmd, const char *opt, const char *v, const char **name, const char **path, char *store) {
    const char *eq = strchr(v, '=');
    if (!eq || eq == v || !eq[1]) return cli_usage(cmd, "%s '%s': expected NAME=FILE", opt, v);
    size_t n = (size_t)(eq - v);
    if (n > 63 || strcspn(v, "/?# ") < n) return cli_usage(cmd, "%s '%s': a name is 1-63 characters without / ? # or space", opt, v);
    memcpy(store, v, n);
    store[n] = 0;
    *name = store;
    *path = eq + 1;
    return 0;
}

int cmd_serve(int argc, char **argv) {
    const char *cmd = "serve";
    static char names[2 * ES__SERVE_MAX_NAMED][64];
    es__serve_config c;
    es__serve_config_default(&c);
    long long v;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *val;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(serve_help, stdout);
            return 0;
        } else if (!strcmp(a, "--model") || !strcmp(a, "--index")) {
            int is_index = a[2] == 'i';
            int *n = is_index ? &c.n_indexes : &c.n_models;
            if (!(val = cli_next(cmd, argc, argv, &i))) return ES_EXIT_USAGE;
            if (*n >= ES__SERVE_MAX_NAMED) return cli_usage(cmd, "at most %d of %s", ES__SERVE_MAX_NAMED, a);
            const char **nm = is_index ? &c.index_name[*n] : &c.model_name[*n];
            const char **pa = is_index ? &c.index_path[*n] : &c.model_path[*n];
            if (named(cmd, a, val, nm, pa, names[is_index * ES__SERVE_MAX_NAMED + *n])) return ES_EXIT_USAGE;
            const char **all = is_index ? c.index_name : c.model_name;
            for (int k = 0; k < *n; k++)
                if (!strcmp(all[k], *nm)) return cli_usage(cmd, "%s: the name '%s' is given twice", a, *nm);
            (*n)++;
        } else if (!strcmp(a, "--host")) {
            if (!(c.host = cli_next(cmd, argc, argv, &i))) return ES_EXIT_USAGE;
        } else if (!strcmp(a, "--port") || !strcmp(a, "--threads") || !strcmp(a, "--max-body") || !strcmp(a, "--max-rows") ||
                   !strcmp(a, "--max-conns") || !strcmp(a, "--timeout")) {
            if (!(val = cli_next(cmd, argc, argv, &i))) return ES_EXIT_USAGE;
            long long lo = !strcmp(a, "--port") ? 0 : 1;
            long long hi = !strcmp(a, "--port") ? 65535 : !strcmp(a, "--threads") ? 256 : !strcmp(a, "--max-body") ? (1LL << 30)
                                                        : !strcmp(a, "--max-rows") ? 1000000 : !strcmp(a, "--max-conns") ? 65536 : 3600;
            if (cli_int(cmd, a, val, lo, hi, &v)) return ES_EXIT_USAGE;
            if (!strcmp(a, "--port")) c.port = (int)v;
            else if (!strcmp(a, "--threads")) c.threads = (int)v;
            else if (!strcmp(a, "--max-body")) c.max_body = (size_t)v;
            else if (!strcmp(a, "--max-rows")) c.max_rows = (long)v;
            else if (!strcmp(a, "--max-conns")) c.max_conns = (int)v;
            else c.timeout_s = (int)v;
        } else {
            return cli_usage(cmd, "unknown argument '%s'", a);
        }
    }
    if (c.n_models + c.n_indexes == 0) return cli_usage(cmd, "nothing to serve: give --model NAME=FILE or --index NAME=FILE");
    char err[1024] = "";
    int rc = es__serve_run(&c, err, sizeof err);
    if (rc) return cli_fail(cmd, "%s", err);
    return 0;
}
