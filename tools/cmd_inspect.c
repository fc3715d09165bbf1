/*
 * cmd_inspect.c — `embstore inspect FILE`: metadata, tensor table, bytes
 * per part and per-field table statistics of a model (or any container).
 */
#include "cli.h"

#include <string.h>

static const char inspect_help[] =
    "usage: embstore inspect FILE [--no-verify] [--json]\n"
    "\n"
    "Print what an embstore file holds: its metadata (model, storage method and\n"
    "resolved hyper-parameters, input schema, training command and metrics), the\n"
    "tensor table (name, dtype, shape, bytes), bytes per part, and the per-field\n"
    "statistics of the embedding table recorded at training time (distinct values,\n"
    "rows addressable, rows used, values colliding with another value).\n"
    "Checksums are verified unless --no-verify.\n";

static const char *part_of(const char *name) {
    if (!strncmp(name, "opt.", 4)) return "optimizer state";
    if (!strncmp(name, "storage.", 8)) return "embedding storage";
    if (!strncmp(name, "net.", 4)) return "dense network";
    return "other";
}

static void json_str(const char *s) {
    putchar('"');
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') printf("\\%c", c);
        else if (c < 0x20) printf("\\u%04x", c);
        else putchar(c);
    }
    putchar('"');
}

int cmd_inspect(int argc, char **argv) {
    const char *cmd = "inspect", *path = NULL;
    unsigned flags = 0;
    int json = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            fputs(inspect_help, stdout);
            return 0;
        } else if (!strcmp(argv[i], "--no-verify")) flags |= ES_LOAD_NO_VERIFY;
        else if (!strcmp(argv[i], "--json")) json = 1;
        else if (argv[i][0] == '-' && argv[i][1]) return cli_usage(cmd, "unknown option '%s'", argv[i]);
        else if (!path) path = argv[i];
        else return cli_usage(cmd, "unexpected argument '%s'", argv[i]);
    }
    if (!path) return cli_usage(cmd, "no file given");
    es_file *f = NULL;
    es_err err = {0};
    if (es_file_open(&f, path, flags, &err) != 0) return cli_fail(cmd, "%s", err.msg);
    int nm = es_file_n_meta(f), nt = es_file_n_tensors(f);
    const char *parts[] = {"embedding storage", "dense network", "optimizer state", "other"};
    uint64_t part_bytes[4] = {0};
    for (int i = 0; i < nt; i++) {
        const char *name, *dt;
        int nd;
        uint64_t sh[4], nb;
        es_file_tensor_info(f, i, &name, &dt, &nd, sh, &nb);
        for (int k = 0; k < 4; k++)
            if (!strcmp(part_of(name), parts[k])) part_bytes[k] += nb;
    }
    if (json) {
        printf("{\"file\":");
        json_str(path);
        printf(",\"version\":%u,\"bytes\":%llu,\"meta\":{", es_file_version(f), (unsigned long long)es_file_size(f));
        for (int i = 0; i < nm; i++) {
            const char *k, *v;
            es_file_meta_at(f, i, &k, &v);
            if (i) putchar(',');
            json_str(k);
            putchar(':');
            json_str(v);
        }
        printf("},\"tensors\":[");
        for (int i = 0; i < nt; i++) {
            const char *name, *dt;
            int nd;
            uint64_t sh[4], nb;
            es_file_tensor_info(f, i, &name, &dt, &nd, sh, &nb);
            printf("%s{\"name\":", i ? "," : "");
            json_str(name);
            printf(",\"dtype\":\"%s\",\"shape\":[", dt);
            for (int d = 0; d < nd; d++) printf("%s%llu", d ? "," : "", (unsigned long long)sh[d]);
            printf("],\"bytes\":%llu}", (unsigned long long)nb);
        }
        printf("],\"parts\":{");
        for (int k = 0; k < 4; k++) printf("%s\"%s\":%llu", k ? "," : "", parts[k], (unsigned long long)part_bytes[k]);
        printf("}}\n");
        es_file_close(f);
        return 0;
    }
    printf("%s: embstore file, format version %u, %llu bytes, %d metadata entries, %d tensors\n", path, es_file_version(f),
           (unsigned long long)es_file_size(f), nm, nt);
    printf("\nmetadata:\n");
    for (int i = 0; i < nm; i++) {
        const char *k, *v;
        es_file_meta_at(f, i, &k, &v);
        if (strncmp(k, "stats.field.", 12) == 0) continue; /* shown as a table below */
        printf("  %-24s %s\n", k, v);
    }
    printf("\ntensors:\n  %-40s %-5s %-24s %12s\n", "name", "dtype", "shape", "bytes");
    for (int i = 0; i < nt; i++) {
        const char *name, *dt;
        int nd;
        uint64_t sh[4], nb;
        es_file_tensor_info(f, i, &name, &dt, &nd, sh, &nb);
        char shape[64] = "[";
        size_t o = 1;
        for (int d = 0; d < nd && o < sizeof shape; d++)
            o += (size_t)snprintf(shape + o, sizeof shape - o, d ? ", %llu" : "%llu", (unsigned long long)sh[d]);
        snprintf(shape + o, sizeof shape - o, "]");
        printf("  %-40s %-5s %-24s %12llu\n", name, dt, shape, (unsigned long long)nb);
    }
    printf("\nbytes per part:\n");
    for (int k = 0; k < 4; k++)
        if (part_bytes[k]) printf("  %-20s %12llu\n", parts[k], (unsigned long long)part_bytes[k]);
    const char *aux = es_file_meta(f, "storage.aux_bytes");
    if (aux) printf("  %-20s %12s  (lookup maps, part of embedding storage)\n", "of which maps", aux);
    const char *meth = es_file_meta(f, "storage.method");
    if (meth && !strcmp(meth, "fielddim")) { /* a dimension per field (what autodim derives): one line each */
        const char *names = es_file_meta(f, "schema.fields");
        printf("\nper-field dimensions (fielddim):\n  %-10s %5s %10s %12s\n", "field", "dim", "rows", "bytes");
        for (int i = 0, fi = 0; i < nt; i++) {
            const char *name, *dt;
            int nd;
            uint64_t sh[4], nb;
            es_file_tensor_info(f, i, &name, &dt, &nd, sh, &nb);
            char want[32];
            snprintf(want, sizeof want, "storage.field%d", fi);
            if (strcmp(name, want) != 0 || nd != 2) continue;
            /* the field's name: the fi-th of schema.fields (comma separated), else its number */
            const char *q = names;
            for (int k = 0; q && k < fi; k++) {
                q = strchr(q, ',');
                if (q) q++;
            }
            int len = q ? (int)(strchr(q, ',') ? (size_t)(strchr(q, ',') - q) : strlen(q)) : 0;
            if (q && len > 0) printf("  %-10.*s %5llu %10llu %12llu\n", len, q, (unsigned long long)sh[1], (unsigned long long)sh[0], (unsigned long long)nb);
            else printf("  %-10d %5llu %10llu %12llu\n", fi, (unsigned long long)sh[1], (unsigned long long)sh[0], (unsigned long long)nb);
            fi++;
        }
    }
    if (meth && !strcmp(meth, "blockdim")) { /* a dimension per (field, frequency block) (what autosrh derives) */
        printf("\nper-(field, block) dimensions (blockdim; rows: kept values, the last block's + 1 OOV row):\n  %-6s %-24s %-32s %12s\n",
               "field", "dims by block", "rows by block", "bytes");
        for (int fi = 0;; fi++) {
            char dims[128] = "", rows[160] = "";
            size_t od = 0, orr = 0;
            uint64_t bytes = 0;
            int found = 0;
            for (int i = 0; i < nt; i++) {
                const char *name, *dt;
                int nd, ff, bb, end = 0;
                uint64_t sh[4], nb;
                es_file_tensor_info(f, i, &name, &dt, &nd, sh, &nb);
                if (nd != 2 || sscanf(name, "storage.field%d.b%d%n", &ff, &bb, &end) != 2 || name[end] || ff != fi) continue;
                if (od < sizeof dims) od += (size_t)snprintf(dims + od, sizeof dims - od, "%sb%d:%llu", found ? " " : "", bb, (unsigned long long)sh[1]);
                if (orr < sizeof rows) orr += (size_t)snprintf(rows + orr, sizeof rows - orr, "%sb%d:%llu", found ? " " : "", bb, (unsigned long long)sh[0]);
                bytes += nb;
                found = 1;
            }
            if (!found) break;
            printf("  %-6d %-24s %-32s %12llu\n", fi, dims, rows, (unsigned long long)bytes);
        }
    }
    int header = 0;
    for (int i = 0; i < nm; i++) {
        const char *k, *v;
        es_file_meta_at(f, i, &k, &v);
        if (strncmp(k, "stats.field.", 12) != 0) continue;
        if (!header) {
            printf("\nper-field embedding statistics (from the training data):\n  %-10s %s\n", "field",
                   "distinct values, rows addressable, rows used, colliding values");
            header = 1;
        }
        printf("  %-10s %s\n", k + 12, v);
    }
    es_file_close(f);
    return 0;
}
