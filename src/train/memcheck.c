/*
 * memcheck.c — refuse a model that cannot fit, before allocating it.
 *
 * Without this, `--top 65536,65536` allocates 16 GiB of parameters, then
 * gradients, and writes the initial values into them: under a memory limit
 * (a container's cgroup) that ends in SIGKILL with nothing said, and even
 * where the allocation fails cleanly it first pushes the machine into swap.
 * The dense part is sized by the net itself (es__net_footprint, the same
 * layout create() allocates); the table and batches are estimates, which
 * only have to be close, because what this catches is sizes off by orders
 * of magnitude.  Every product and sum saturates at SIZE_MAX rather than
 * wrap.
 */
#include "model/net.h"
#include "train/integrity.h"

#include <stdio.h>
#include <sys/resource.h>
#include <unistd.h>

static size_t sadd(size_t a, size_t b) {
    size_t r;
    return es__add_size(a, b, &r) ? r : SIZE_MAX;
}
static size_t smul(size_t a, size_t b) {
    size_t r;
    return es__mul_size(a, b, &r) ? r : SIZE_MAX;
}

static void fmt_bytes(char *dst, size_t cap, double b) {
    if (b >= 1073741824.0) snprintf(dst, cap, "%.0f bytes (%.1f GiB)", b, b / 1073741824.0);
    else snprintf(dst, cap, "%.0f bytes (%.1f MiB)", b, b / 1048576.0);
}

/* Pages the process maps now (field `which` of /proc/self/statm: 0 = all,
 * 5 = data + stack); 0 when unknown. */
static size_t statm_bytes(int which) {
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f) return 0;
    unsigned long long v[7] = {0};
    int n = fscanf(f, "%llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6]);
    fclose(f);
    long ps = sysconf(_SC_PAGESIZE);
    if (n <= which || ps <= 0) return 0;
    return smul((size_t)v[which], (size_t)ps);
}

int es__train_check_memory(const es_net_params *np, const es_storage_params *sp, double table_bytes, es_err *err) {
    size_t net;
    /* parameters, gradients, packed weights, optimizer state, activations;
     * parameters create() refuses are left for it to report */
    if (es__net_footprint(np, &net) != ES_OK) return ES_OK;
    size_t act = 0;
    /* the model's emb/demb buffers [B, F, E] and the batches (one read
     * inline, the parse pipeline's ring): label, dense, offsets, keys,
     * weights */
    size_t B = (size_t)(np->max_batch > 0 ? np->max_batch : 1), F = (size_t)(np->n_fields > 0 ? np->n_fields : 0);
    size_t E = (size_t)(sp->dim > 0 ? sp->dim : 1), D = (size_t)(np->n_dense > 0 ? np->n_dense : 0);
    act = sadd(act, smul(smul(smul(B, F), E), 2 * sizeof(float)));
    act = sadd(act, smul(B, 2 * sizeof(float) + sizeof(double))); /* logit, dlogit, each row's loss */
    act = sadd(act, smul(smul(B, sadd(smul(F + 1, 16), smul(D + 1, 4))), 1 + (size_t)es__pipeline_slots((int)ES_MIN(B, (size_t)INT32_MAX))));
    /* the table: its bytes and its optimizer state (row-wise Adagrad keeps
     * one float per row of E, element-wise Adagrad one per parameter, FTRL
     * two) */
    double tb = table_bytes > 0 ? table_bytes : 0;
    if (sp->opt.kind == ES_OPT_ADAGRAD) tb *= 2;
    else if (sp->opt.kind == ES_OPT_FTRL) tb *= 3; /* z and n per parameter */
    else if (sp->opt.kind == ES_OPT_ROWWISE_ADAGRAD) tb *= 1.0 + 1.0 / (double)E;
    size_t table = tb >= 1.8e19 ? SIZE_MAX : (size_t)tb;
    size_t need = sadd(sadd(net, act), table);

    size_t avail = SIZE_MAX;
    const char *what = NULL;
    long pages = sysconf(_SC_PHYS_PAGES), ps = sysconf(_SC_PAGESIZE);
    if (pages > 0 && ps > 0) {
        avail = smul((size_t)pages, (size_t)ps);
        what = "physical memory";
    }
    /* what the process limits still allow: the limit less what is in use
     * (field 0 of /proc/self/statm for the address space, 5 for data) */
    static const struct {
        int res, statm_field;
        const char *what;
    } limits[] = {{RLIMIT_AS, 0, "left under the address-space limit (RLIMIT_AS, ulimit -v)"},
                  {RLIMIT_DATA, 5, "left under the data-size limit (RLIMIT_DATA, ulimit -d)"}};
    for (size_t i = 0; i < sizeof limits / sizeof *limits; i++) {
        struct rlimit rl;
        if (getrlimit(limits[i].res, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY) continue;
        size_t used = statm_bytes(limits[i].statm_field), lim = (size_t)rl.rlim_cur;
        size_t a = lim > used ? lim - used : 0;
        if (a < avail) {
            avail = a;
            what = limits[i].what;
        }
    }
    if (!what || need <= avail) return ES_OK;
    char s_need[64], s_avail[64], s_net[64], s_tab[64], s_act[64];
    fmt_bytes(s_need, sizeof s_need, (double)need);
    fmt_bytes(s_avail, sizeof s_avail, (double)avail);
    fmt_bytes(s_net, sizeof s_net, (double)net);
    fmt_bytes(s_tab, sizeof s_tab, (double)table);
    fmt_bytes(s_act, sizeof s_act, (double)act);
    return es__err(err, ES_ENOMEM,
                   "this model needs about %s (dense layers %s with gradients, optimizer state and activations; "
                   "embedding table %s; batches %s), more than the %s %s; use smaller --top/--bottom/--cross widths, "
                   "--dim, --batch, or a compressed table (--storage unified --budget 0.1)",
                   s_need, s_net, s_tab, s_act, s_avail, what);
}
