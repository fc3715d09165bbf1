/*
 * test_api.c — the library's public surface, checked from the outside:
 *   - libembstore.so exports exactly the functions include/embstore.h
 *     declares with ES_API: no internal name leaks (es__*, a helper without
 *     `static`), and no declared function is missing;
 *   - its soname is libembstore.so.<major>;
 *   - the source tree keeps its layering (tests/check_includes.sh);
 *   - (slow) `make install` gives a header, libraries and embstore.pc that
 *     a program outside the tree can build and run against.
 * The build directory is the directory of $ES_BIN (build/ or build/san/),
 * so each build flavour checks its own shared library.  Tools that are
 * missing (nm, readelf/objdump, pkg-config) make a test skip, not fail.
 */
#include "test.h"

#include "embstore.h"

#include <ctype.h>
#include <unistd.h>

/* The directory of $ES_BIN, e.g. "build" or "build/san". */
static void build_dir(char *out, size_t cap) {
    snprintf(out, cap, "%s", es_bin());
    char *s = strrchr(out, '/');
    if (s) *s = 0;
    else snprintf(out, cap, ".");
}

static int have(const char *tool) { return es_test_sh(NULL, "command -v %s", tool) == 0; }

/* A set of names pointing into a text buffer. */
typedef struct {
    char *name[2048];
    int n;
} names;

static int names_has(const names *s, const char *x) {
    for (int i = 0; i < s->n; i++)
        if (strcmp(s->name[i], x) == 0) return 1;
    return 0;
}

static void names_add(names *s, char *x) {
    if (s->n < (int)(sizeof s->name / sizeof s->name[0]) && !names_has(s, x)) s->name[s->n++] = x;
}

/* Function names declared by lines starting with "ES_API": the identifier
 * before the first '(' of the declaration (which may span lines).  Edits
 * `text` in place; the names point into it. */
static void header_functions(char *text, names *out) {
    for (char *p = text; (p = strstr(p, "ES_API")) != NULL;) {
        /* only at the start of a line (not "#define ES_API", not comments) */
        char *bol = p;
        while (bol > text && (bol[-1] == ' ' || bol[-1] == '\t')) bol--;
        if (bol != text && bol[-1] != '\n') {
            p += 6;
            continue;
        }
        char *paren = strchr(p, '(');
        char *semi = strchr(p, ';');
        if (!paren || (semi && semi < paren)) {
            p += 6;
            continue;
        }
        char *e = paren;
        while (e > p && isspace((unsigned char)e[-1])) e--;
        char *b = e;
        while (b > p && (isalnum((unsigned char)b[-1]) || b[-1] == '_')) b--;
        p = paren + 1;
        if (b == e) continue;
        *e = 0;
        names_add(out, b);
    }
}

/* Defined dynamic symbols of `nm -D --defined-only` output: lines
 * "address type name" (a version suffix "@..." is cut). */
static void exported(char *text, names *out) {
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        char addr[64], type[8], name[512];
        if (sscanf(line, "%63s %7s %511s", addr, type, name) != 3) continue;
        if (strcmp(type, "A") == 0) continue; /* version definitions */
        char *n = strstr(line, name);
        char *at = strchr(n, '@');
        if (at) *at = 0;
        names_add(out, n);
    }
}

/* Note: a sanitizer build (SAN=1) exports the same names: gcc links the
 * ASan/UBSan runtimes as shared libraries, so libembstore.so defines none
 * of their symbols.  No name is filtered out here: an exported symbol
 * without the es_ prefix is a leak too. */
TEST(api_shared_library_exports_exactly_the_header) {
    if (!have("nm")) {
        es_test_skip("nm is not installed");
        return;
    }
    char bd[1024], so[1100], out[1100];
    build_dir(bd, sizeof bd);
    snprintf(so, sizeof so, "%s/libembstore.so", bd);
    if (access(so, F_OK) != 0) {
        char msg[1200];
        snprintf(msg, sizeof msg, "%s is not built (make all)", so);
        es_test_skip(msg);
        return;
    }
    snprintf(out, sizeof out, "%s", es_test_path("api_nm.txt"));
    CHECK_MSG(es_test_sh(out, "nm -D --defined-only %s", so) == 0, "nm -D %s failed", so);
    char *nm_text = es_test_slurp(out);
    char *hdr = es_test_slurp("include/embstore.h");
    CHECK(nm_text && hdr);
    static names exp, dec; /* static: 32 KiB each */
    exp.n = dec.n = 0;
    exported(nm_text, &exp);
    header_functions(hdr, &dec);
    printf("    %s: %d names exported; include/embstore.h declares %d ES_API functions\n", so, exp.n, dec.n);
    int bad = 0;
    for (int i = 0; i < exp.n; i++)
        if (!names_has(&dec, exp.name[i])) {
            printf("    exported but not declared in embstore.h: %s\n", exp.name[i]);
            bad++;
        }
    for (int i = 0; i < dec.n; i++)
        if (!names_has(&exp, dec.name[i])) {
            printf("    declared ES_API but not exported: %s\n", dec.name[i]);
            bad++;
        }
    /* the parsers above found something to compare */
    int ok_sizes = exp.n > 50 && dec.n > 50 && names_has(&dec, "es_strerror") && names_has(&dec, "es_temp_files_remove_stale");
    free(nm_text);
    free(hdr);
    CHECK_MSG(ok_sizes, "parsed too few names (exported %d, declared %d)", exp.n, dec.n);
    CHECK_MSG(bad == 0, "%d name(s) differ between libembstore.so and embstore.h (listed above)", bad);
}

TEST(api_shared_library_soname) {
    char bd[1024], so[1100], out[1100];
    build_dir(bd, sizeof bd);
    snprintf(so, sizeof so, "%s/libembstore.so", bd);
    snprintf(out, sizeof out, "%s", es_test_path("api_soname.txt"));
    int st;
    if (have("readelf")) st = es_test_sh(out, "readelf -d %s | grep SONAME", so);
    else if (have("objdump")) st = es_test_sh(out, "objdump -p %s | grep SONAME", so);
    else {
        es_test_skip("neither readelf nor objdump is installed");
        return;
    }
    char *s = es_test_slurp(out);
    printf("    %s", s ? s : "");
    char want[64];
    snprintf(want, sizeof want, "libembstore.so.%d", ES_VERSION_MAJOR);
    CHECK_MSG(st == 0, "no SONAME in %s", so);
    CHECK_STR_HAS(s, want);
    /* exactly .so.<major>: not the full version */
    char longer[80];
    snprintf(longer, sizeof longer, "%s.", want);
    CHECK_MSG(strstr(s, longer) == NULL, "soname carries more than the major version: %s", s);
    free(s);
}

/* The include-rule table (docs/architecture.md) holds: a broken include
 * fails the quick tier. */
TEST(api_include_layering) {
    const char *out = es_test_path("api_includes.txt");
    int st = es_test_sh(out, "bash tests/check_includes.sh");
    char *s = es_test_slurp(out);
    if (s && *s) printf("%s", s);
    free(s);
    CHECK_MSG(st == 0, "tests/check_includes.sh exit %d (violations above)", st);
}

/* Install into a scratch prefix and build a program outside the tree
 * against it with pkg-config, linked to the shared library.  The install
 * uses the objects of this build (BUILD=<dir>), so make only copies. */
TEST_SLOW(api_install_and_link_with_pkg_config) {
    if (!have("pkg-config") || !have("make") || !have("cc")) {
        es_test_skip("pkg-config, make or cc is not installed");
        return;
    }
    char bd[1024], prefix[1100], log[1100], prog[1100], src[1100];
    build_dir(bd, sizeof bd);
    snprintf(prefix, sizeof prefix, "%s", es_test_path("api_prefix"));
    snprintf(log, sizeof log, "%s", es_test_path("api_install.log"));
    snprintf(src, sizeof src, "%s", es_test_path("api_client.c"));
    snprintf(prog, sizeof prog, "%s", es_test_path("api_client"));
    es_test_sh(NULL, "rm -rf %s", prefix);
    /* An absolute prefix: embstore.pc records it.  SAN=1 for build/san so
     * that make resolves the same BUILD and flags (nothing is rebuilt). */
    int san = strstr(bd, "san") != NULL;
    int st = es_test_sh(log, "unset MAKEFLAGS MAKELEVEL MFLAGS; p=$(cd %s/.. && pwd)/$(basename %s) && "
                        "make --no-print-directory %s BUILD=%s install PREFIX=$p",
                        prefix, prefix, san ? "SAN=1" : "", bd);
    char *s = es_test_slurp(log);
    if (st != 0) printf("%s", s ? s : "");
    CHECK_MSG(st == 0, "make install exit %d", st);
    /* nothing was compiled: install only copies this build's files */
    CHECK_MSG(!s || !strstr(s, " -c "), "make install recompiled something:\n%s", s ? s : "");
    free(s);
    FILE *f = fopen(src, "w");
    CHECK(f);
    fputs("#include <embstore.h>\n"
          "#include <stdio.h>\n"
          "#include <string.h>\n"
          "int main(void) {\n"
          "    es_reader_params p = es_reader_params_default();\n"
          "    printf(\"%s|%d|%d\\n\", es_strerror(ES_EFORMAT), p.header, (int)p.multi_sep);\n"
          "    return strcmp(es_strerror(ES_OK), \"success\") != 0;\n"
          "}\n",
          f);
    fclose(f);
    /* A sanitizer build's library needs the ASan runtime loaded first: the
     * client is built with the same -fsanitize flags.
     * pkg-config's "-L<prefix>/lib -lembstore" picks the shared library
     * over the archive next to it; NEEDED shows the program depends on it
     * (by soname), and it runs with the installed copy. */
    st = es_test_sh(log,
                    "p=$(cd %s && pwd) && export PKG_CONFIG_PATH=$p/lib/pkgconfig && "
                    "pkg-config --exists embstore && "
                    "cc -std=c11 -Wall -Werror %s -o %s %s $(pkg-config --cflags --libs embstore) && "
                    "LD_LIBRARY_PATH=$p/lib %s && "
                    "(readelf -d %s 2>/dev/null || objdump -p %s) | grep NEEDED",
                    prefix, san ? "-fsanitize=address,undefined" : "", prog, src, prog, prog, prog);
    s = es_test_slurp(log);
    printf("    %s", s ? s : "");
    CHECK_MSG(st == 0, "build or run against the installed library: exit %d", st);
    CHECK_STR_HAS(s, "not a valid embstore file|1|124");
    CHECK_STR_HAS(s, "libembstore.so.0");
    free(s);
    /* what was installed */
    st = es_test_sh(log, "cd %s && ls include/embstore.h lib/libembstore.a lib/libembstore.so lib/libembstore.so.0 lib/pkgconfig/embstore.pc",
                    prefix);
    CHECK_MSG(st == 0, "installed files missing");
    es_test_sh(NULL, "rm -rf %s", prefix);
}
