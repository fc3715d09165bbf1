/*
 * memcheck.c — refuse a model that cannot fit, before allocating it.
 *
 * Without this, `--top 65536,65536` allocates 16 GiB of parameters, then
 * gradients, and writes the initial values into them: under a memory limit
 * (a container's cgroup) that ends in SIGKILL with nothing said, and even
 * where the allocation fails cleanly it first pushes the machine into swap.
 * The estimate mirrors the layout in src/model/net.c (layout(),
 * carve_acts(), optim_init()); it only has to be close, because what it
 * catches is sizes off by orders of magnitude.  Every product and sum
 * saturates at SIZE_MAX rather than wrap.
 */
#include "model/layers.h"
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

/* Parameters of an MLP in -> w[0..n) (-> 1 when final_one): weights and biases. */
static size_t mlp_params(size_t in, const int *w, int n, int final_one, size_t *sum_w, size_t *max_w) {
    size_t t = 0, prev = in;
    *sum_w = 0;
    *max_w = 0;
    for (int i = 0; i <= n; i++) {
        if (i == n && !final_one) break;
        size_t out = i < n ? (size_t)(w[i] > 0 ? w[i] : 1) : 1;
        t = sadd(t, sadd(smul(prev, out), out));
        *sum_w = sadd(*sum_w, out);
        if (out > *max_w) *max_w = out;
        prev = out;
    }
    return t;
}

/* Floats of parameters (*params) and of activations for B rows (*acts). */
static void net_floats(const es_net_params *np, size_t *params, size_t *acts) {
    size_t D = (size_t)(np->n_dense > 0 ? np->n_dense : 0), F = (size_t)(np->n_fields > 0 ? np->n_fields : 0);
    size_t k = (size_t)(np->dim > 0 ? np->dim : 1), B = (size_t)(np->max_batch > 0 ? np->max_batch : 1);
    size_t sw, mw, sw2 = 0, mw2 = 0;
    *params = *acts = 0;
    switch (np->kind) {
    case ES_NET_LR:
    case ES_NET_FM:
        *params = sadd(D, 1);
        if (np->kind == ES_NET_FM) {
            *params = sadd(*params, smul(D, k));
            *acts = smul(B, sadd(k, 1));
        }
        break;
    case ES_NET_DLRM: {
        size_t bottom = D > 0 ? mlp_params(D, np->bottom, np->n_bottom, 0, &sw2, &mw2) : 0;
        size_t inter = (size_t)es__interact_width(D > 0, np->n_fields, np->dim);
        size_t top = mlp_params(inter, np->top, np->n_top, 1, &sw, &mw);
        *params = sadd(bottom, top);
        size_t per_row = sadd(sadd(sw2, smul(inter, 2)), sadd(sw, smul(mw > mw2 ? mw : mw2, 2)));
        *acts = smul(B, sadd(per_row, k + 1));
        break;
    }
    case ES_NET_DCN: {
        size_t d0 = sadd(D, smul(F, k)), nc = (size_t)(np->n_cross > 0 ? np->n_cross : 0);
        *params = smul(nc, sadd(smul(d0, d0), d0));
        *params = sadd(*params, mlp_params(d0, np->top, np->n_top, 1, &sw, &mw));
        /* x[0..nc], u[0..nc), dx, dx0, h: (2 nc + 4) d0; top activations and buffers */
        *acts = smul(B, sadd(smul(d0, sadd(smul(nc, 2), 4)), sadd(sw, smul(mw, 2) + 1)));
        break;
    }
    }
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
    size_t params, acts;
    net_floats(np, &params, &acts);
    int arrays = np->opt.kind == ES_OPT_ADAM ? 2 : np->opt.kind == ES_OPT_ADAGRAD ? 1 : 0;
    /* parameters + gradients + optimizer arrays, and activations */
    size_t net = smul(smul(params, (size_t)(2 + arrays)), sizeof(float));
    size_t act = smul(acts, sizeof(float));
    /* the model's emb/demb buffers [B, F, E] and three batches (one read
     * inline, two in the parse pipeline): label, dense, offsets, keys, weights */
    size_t B = (size_t)(np->max_batch > 0 ? np->max_batch : 1), F = (size_t)(np->n_fields > 0 ? np->n_fields : 0);
    size_t E = (size_t)(sp->dim > 0 ? sp->dim : 1), D = (size_t)(np->n_dense > 0 ? np->n_dense : 0);
    act = sadd(act, smul(smul(smul(B, F), E), 2 * sizeof(float)));
    act = sadd(act, smul(smul(B, sadd(smul(F + 1, 16), smul(D + 1, 4))), 3));
    /* the table: its bytes and its optimizer state (row-wise Adagrad keeps
     * one float per row of E, element-wise Adagrad one per parameter) */
    double tb = table_bytes > 0 ? table_bytes : 0;
    if (sp->opt.kind == ES_OPT_ADAGRAD) tb *= 2;
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
    struct rlimit rl;
    if (getrlimit(RLIMIT_AS, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) {
        size_t used = statm_bytes(0), lim = (size_t)rl.rlim_cur;
        size_t a = lim > used ? lim - used : 0;
        if (a < avail) {
            avail = a;
            what = "left under the address-space limit (RLIMIT_AS, ulimit -v)";
        }
    }
    if (getrlimit(RLIMIT_DATA, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) {
        size_t used = statm_bytes(5), lim = (size_t)rl.rlim_cur;
        size_t a = lim > used ? lim - used : 0;
        if (a < avail) {
            avail = a;
            what = "left under the data-size limit (RLIMIT_DATA, ulimit -d)";
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
                   "this model needs about %s (dense layers %s with gradients and optimizer state; embedding table %s; "
                   "activations and batches %s), more than the %s %s; use smaller --top/--bottom/--cross widths, "
                   "--dim, --batch or --budget",
                   s_need, s_net, s_tab, s_act, s_avail, what);
}
