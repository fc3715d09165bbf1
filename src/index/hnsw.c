/*
 * hnsw.c — the "hnsw" index kind: a hierarchical navigable small-world
 * graph (Malkov & Yashunin, "Efficient and robust approximate nearest
 * neighbor search using Hierarchical Navigable Small World graphs", 2018)
 * over float32 vectors, and the local-intrinsic-dimension estimate used to
 * choose the insertion order.
 *
 * Layout (no per-node allocation): vectors x[n][dim]; base-layer links
 * links0[n][M0+1] (a count, then up to M0 = 2M neighbour ids); a node of
 * level L > 0 owns L blocks of M+1 ints in one pool `upper`, starting at
 * upoff[node].  Neighbours are chosen with the paper's heuristic (keep a
 * candidate only if it is closer to the new node than to every neighbour
 * kept so far), which keeps links spread in all directions.
 *
 * Building inserts nodes in parallel (OpenMP) with a spinlock per node and
 * one mutex for the entry point, as hnswlib does; one thread gives a
 * deterministic graph.  Levels are drawn from a hash of (id, seed), so the
 * insertion order changes the graph only through the order itself: the
 * order can follow decreasing local intrinsic dimension (LID), which
 * Elliott & Clark ("The Impacts of Data, Ordering, and Intrinsic
 * Dimensionality on Recall in Hierarchical Navigable Small Worlds", 2024)
 * found to raise recall.
 *
 * Searching uses a visited-epoch array and heaps carved from the caller's
 * scratch, so a query allocates nothing.  With a filter, the walk still
 * uses every node but only matching nodes enter the results; when few
 * vectors match (fewer than sqrt(ef * M0 * n), the point where scoring
 * them all is cheaper than the longer walk) they are scored exactly.
 */
#include "index.h"

#include "core/simd.h"
#include "distance.h"

#include <pthread.h>

#define MAX_LEVEL 32

typedef struct {
    float d;
    int32_t id;
} hpair;

typedef struct {
    es__ix h;
    int M, M0, efc;
    es__arr x;      /* float [n][dim] */
    es__arr links0; /* int32 [n][M0+1] */
    es__arr level;  /* uint8 [n] */
    es__arr upoff;  /* int64 [n]: start of the node's blocks in upper (levels >= 1) */
    es__arr upper;  /* int32 pool */
    int32_t entry;  /* -1 when empty */
    int max_level;
    /* build state */
    uint8_t *locks;
    pthread_mutex_t glock;
} hnsw_ix;

/* ---- small heaps of (distance, id) ------------------------------------------------ */
/* Max-heap: the worst result on top. */
static inline void maxh_push(hpair *h, int *n, hpair v) {
    int i = (*n)++;
    while (i > 0) {
        int p = (i - 1) >> 1;
        if (h[p].d >= v.d) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = v;
}
static inline void maxh_pop(hpair *h, int *n) {
    hpair v = h[--*n];
    int i = 0, m = *n;
    for (;;) {
        int l = 2 * i + 1, r = l + 1, w = i;
        float wd = v.d;
        if (l < m && h[l].d > wd) w = l, wd = h[l].d;
        if (r < m && h[r].d > wd) w = r;
        if (w == i) break;
        h[i] = h[w];
        i = w;
    }
    if (m > 0) h[i] = v;
}
/* Min-heap: the closest candidate on top. */
static inline void minh_push(hpair *h, int *n, hpair v) {
    int i = (*n)++;
    while (i > 0) {
        int p = (i - 1) >> 1;
        if (h[p].d <= v.d) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = v;
}
static inline hpair minh_pop(hpair *h, int *n) {
    hpair top = h[0], v = h[--*n];
    int i = 0, m = *n;
    for (;;) {
        int l = 2 * i + 1, r = l + 1, w = i;
        float wd = v.d;
        if (l < m && h[l].d < wd) w = l, wd = h[l].d;
        if (r < m && h[r].d < wd) w = r;
        if (w == i) break;
        h[i] = h[w];
        i = w;
    }
    if (m > 0) h[i] = v;
    return top;
}

static int cmp_hpair(const void *a, const void *b) {
    const hpair *x = a, *y = b;
    if (x->d != y->d) return x->d < y->d ? -1 : 1;
    return (x->id > y->id) - (x->id < y->id);
}

/* ---- graph access ------------------------------------------------------------------ */
static inline const float *vec(const hnsw_ix *g, int32_t id) {
    return (const float *)g->x.p + (size_t)id * (size_t)g->h.dim;
}
static inline int32_t *links(const hnsw_ix *g, int32_t id, int l) {
    if (l == 0) return (int32_t *)g->links0.p + (size_t)id * (size_t)(g->M0 + 1);
    return (int32_t *)g->upper.p + ((const int64_t *)g->upoff.p)[id] + (size_t)(l - 1) * (size_t)(g->M + 1);
}
static inline float dist(const hnsw_ix *g, const float *a, const float *b) {
    return g->h.ip ? -es__dot(a, b, (size_t)g->h.dim) : es__l2sq(a, b, (size_t)g->h.dim);
}
static inline void lock_node(hnsw_ix *g, int32_t id) {
    while (__atomic_test_and_set(&g->locks[id], __ATOMIC_ACQUIRE))
        while (__atomic_load_n(&g->locks[id], __ATOMIC_RELAXED)) __builtin_ia32_pause();
}
static inline void unlock_node(hnsw_ix *g, int32_t id) { __atomic_clear(&g->locks[id], __ATOMIC_RELEASE); }

/* Distances from q to m ids (4 at a time). */
static void dist_many(const hnsw_ix *g, const float *q, const int32_t *ids, int m, float *out) {
    size_t d = (size_t)g->h.dim;
    int i = 0;
    for (; i + 4 <= m; i += 4) {
        if (g->h.ip) {
            es__dot_x4(q, vec(g, ids[i]), vec(g, ids[i + 1]), vec(g, ids[i + 2]), vec(g, ids[i + 3]), d, out + i);
            for (int t = 0; t < 4; t++) out[i + t] = -out[i + t];
        } else {
            es__l2sq_x4(q, vec(g, ids[i]), vec(g, ids[i + 1]), vec(g, ids[i + 2]), vec(g, ids[i + 3]), d, out + i);
        }
    }
    for (; i < m; i++) out[i] = dist(g, q, vec(g, ids[i]));
}

/* Per-query working memory. */
typedef struct {
    hpair *res;   /* [ef + 1] */
    hpair *cand;  /* [n + 1] */
    int32_t *nb;  /* [M0 + 1] */
    float *nd;    /* [M0 + 1] */
} hwork;

static size_t hwork_bytes(size_t n, int ef, int M0) {
    return es__carved(((size_t)ef + 2) * sizeof(hpair)) + es__carved((n + 2) * sizeof(hpair)) +
           2 * es__carved(((size_t)M0 + 2) * sizeof(int32_t));
}
static hwork hwork_carve(unsigned char *mem, size_t n, int ef, int M0) {
    unsigned char *cur = mem;
    hwork w;
    w.res = es__carve(&cur, ((size_t)ef + 2) * sizeof(hpair));
    w.cand = es__carve(&cur, (n + 2) * sizeof(hpair));
    w.nb = es__carve(&cur, ((size_t)M0 + 2) * sizeof(int32_t));
    w.nd = es__carve(&cur, ((size_t)M0 + 2) * sizeof(float));
    return w;
}

/* Greedy descent on one upper level. */
static void greedy(hnsw_ix *g, const float *q, int l, bool build, int32_t *cur, float *dcur, hwork *w) {
    for (bool changed = true; changed;) {
        changed = false;
        int cnt;
        if (build) lock_node(g, *cur);
        const int32_t *lk = links(g, *cur, l);
        cnt = lk[0];
        memcpy(w->nb, lk + 1, (size_t)cnt * sizeof(int32_t));
        if (build) unlock_node(g, *cur);
        dist_many(g, q, w->nb, cnt, w->nd);
        for (int i = 0; i < cnt; i++)
            if (w->nd[i] < *dcur) {
                *dcur = w->nd[i];
                *cur = w->nb[i];
                changed = true;
            }
    }
}

/* Beam search on one level from one entry point; the ef best (matching the
 * filter) are left in w->res as a max-heap of *nres entries. */
static void search_layer(hnsw_ix *g, const float *q, int32_t ep, float dep, int ef, int l, const es__filter *f,
                         bool build, es__scratch *s, hwork *w, int *nres) {
    uint32_t epoch = es__visit_begin(s);
    uint32_t *vis = s->visited;
    int nr = 0, nc = 0;
    vis[ep] = epoch;
    minh_push(w->cand, &nc, (hpair){dep, ep});
    if (es__filter_ok(f, (size_t)ep)) maxh_push(w->res, &nr, (hpair){dep, ep});
    float bound = nr ? w->res[0].d : INFINITY;
    while (nc > 0) {
        hpair c = minh_pop(w->cand, &nc);
        if (c.d > bound && nr >= ef) break;
        if (build) lock_node(g, c.id);
        const int32_t *lk = links(g, c.id, l);
        int cnt = lk[0], m = 0;
        for (int i = 1; i <= cnt; i++) {
            int32_t v = lk[i];
            if (vis[v] == epoch) continue;
            vis[v] = epoch;
            __builtin_prefetch(vec(g, v));
            w->nb[m++] = v;
        }
        if (build) unlock_node(g, c.id);
        dist_many(g, q, w->nb, m, w->nd);
        for (int i = 0; i < m; i++) {
            float dv = w->nd[i];
            if (nr < ef || dv < bound) {
                minh_push(w->cand, &nc, (hpair){dv, w->nb[i]});
                if (es__filter_ok(f, (size_t)w->nb[i])) {
                    maxh_push(w->res, &nr, (hpair){dv, w->nb[i]});
                    if (nr > ef) maxh_pop(w->res, &nr);
                }
                if (nr) bound = w->res[0].d;
            }
        }
    }
    *nres = nr;
}

/* The neighbour-selection heuristic: from candidates sorted by distance to
 * the base point, keep one only when it is closer to the base than to every
 * neighbour already kept.  Writes at most msel ids; returns the count. */
static int select_heuristic(const hnsw_ix *g, const hpair *c, int nc, int msel, int32_t *out) {
    int m = 0;
    for (int i = 0; i < nc && m < msel; i++) {
        bool good = true;
        const float *xe = vec(g, c[i].id);
        for (int j = 0; j < m; j++)
            if (dist(g, xe, vec(g, out[j])) < c[i].d) {
                good = false;
                break;
            }
        if (good) out[m++] = c[i].id;
    }
    return m;
}

/* Insert node q (its level and link blocks are allocated, counts zero). */
static void insert(hnsw_ix *g, int32_t qid, es__scratch *s, hwork *w, hpair *tmp, int32_t *sel) {
    const float *q = vec(g, qid);
    int L = ((const uint8_t *)g->level.p)[qid];
    pthread_mutex_lock(&g->glock);
    int maxl = g->max_level;
    int32_t cur = g->entry;
    bool hold = L > maxl;
    if (!hold) pthread_mutex_unlock(&g->glock);
    float dcur = dist(g, q, vec(g, cur));
    for (int l = maxl; l > L; l--) greedy(g, q, l, true, &cur, &dcur, w);
    for (int l = ES_MIN(L, maxl); l >= 0; l--) {
        int nr;
        search_layer(g, q, cur, dcur, g->efc, l, NULL, true, s, w, &nr);
        memcpy(tmp, w->res, (size_t)nr * sizeof *tmp);
        qsort(tmp, (size_t)nr, sizeof *tmp, cmp_hpair);
        /* The node itself can be among the results when re-inserting; skip it. */
        int nt = 0;
        for (int i = 0; i < nr; i++)
            if (tmp[i].id != qid) tmp[nt++] = tmp[i];
        int msel = select_heuristic(g, tmp, nt, g->M, sel);
        int mmax = l ? g->M : g->M0;
        lock_node(g, qid);
        int32_t *lq = links(g, qid, l);
        lq[0] = msel;
        memcpy(lq + 1, sel, (size_t)msel * sizeof *sel);
        unlock_node(g, qid);
        for (int i = 0; i < msel; i++) {
            int32_t e = sel[i];
            lock_node(g, e);
            int32_t *le = links(g, e, l);
            int cnt = le[0];
            if (cnt < mmax) {
                le[1 + cnt] = qid;
                le[0] = cnt + 1;
            } else {
                /* Full: re-select among the old neighbours and the new node. */
                const float *xe = vec(g, e);
                hpair *pc = tmp + nt; /* room after the sorted candidates */
                for (int j = 0; j < cnt; j++) pc[j] = (hpair){dist(g, xe, vec(g, le[1 + j])), le[1 + j]};
                pc[cnt] = (hpair){dist(g, xe, q), qid};
                qsort(pc, (size_t)cnt + 1, sizeof *pc, cmp_hpair);
                int32_t keep[2 * 64 + 2]; /* M0 <= 128 */
                int km = select_heuristic(g, pc, cnt + 1, mmax, keep);
                le[0] = km;
                memcpy(le + 1, keep, (size_t)km * sizeof *keep);
            }
            unlock_node(g, e);
        }
        if (nt > 0) {
            cur = tmp[0].id;
            dcur = tmp[0].d;
        }
    }
    if (hold) {
        g->entry = qid;
        g->max_level = L;
        pthread_mutex_unlock(&g->glock);
    }
}

static int level_of(uint64_t seed, size_t id, double mult) {
    uint64_t h = es__hash_u64((uint64_t)id, seed ^ UINT64_C(0x686e7377));
    double u = ((double)(h >> 11) + 1.0) * 0x1.0p-53; /* (0, 1] */
    double l = -log(u) * mult;
    return l >= MAX_LEVEL ? MAX_LEVEL : (int)l;
}

/* Insertion order of new ids base .. base+n-1. */
static int make_order(hnsw_ix *g, const float *x, size_t base, size_t n, int32_t *order, es_err *err) {
    const es_index_params *p = g->h.p;
    for (size_t i = 0; i < n; i++) order[i] = (int32_t)(base + i);
    if (p->order == ES_ORDER_RANDOM) {
        es_rng r;
        es__rng_seed(&r, p->seed ^ UINT64_C(0x6f72646572));
        for (size_t i = n; i > 1; i--) {
            size_t j = (size_t)es__range(es__rng_u64(&r), i);
            int32_t t = order[i - 1];
            order[i - 1] = order[j];
            order[j] = t;
        }
    } else if (p->order == ES_ORDER_LID_DESC || p->order == ES_ORDER_LID_ASC) {
        float *lid = es__malloc(n * sizeof *lid);
        hpair *pr = es__malloc(n * sizeof *pr);
        int rc = lid && pr ? ES_OK : es__err(err, ES_ENOMEM, "hnsw: out of memory ordering by LID");
        if (!rc) rc = es__lid_estimate(x, n, g->h.dim, 20, 4096, p->seed, lid, err);
        if (!rc) {
            float sg = p->order == ES_ORDER_LID_DESC ? -1.0f : 1.0f;
            for (size_t i = 0; i < n; i++) pr[i] = (hpair){sg * lid[i], (int32_t)(base + i)};
            qsort(pr, n, sizeof *pr, cmp_hpair);
            for (size_t i = 0; i < n; i++) order[i] = pr[i].id;
        }
        es__free(lid);
        es__free(pr);
        return rc;
    }
    return ES_OK;
}

static int hnsw_add(es__ix *ix, const float *x, size_t n, es_err *err) {
    hnsw_ix *g = (hnsw_ix *)ix;
    size_t d = (size_t)ix->dim, base = ix->n, tot = base + n, b;
    if (tot > ES_IX_MAX_N) return es__err(err, ES_ERANGE, "hnsw: more than %zu vectors", ES_IX_MAX_N);
    double mult = 1.0 / log((double)g->M);
    /* Grow every array first: nothing below can fail half way. */
    size_t pool = g->upper.bytes / sizeof(int32_t), add_pool = 0;
    for (size_t i = 0; i < n; i++) add_pool += (size_t)level_of(ix->p->seed, base + i, mult) * (size_t)(g->M + 1);
    int rc = ES_OK;
    if (!es__mul_size(tot, d * sizeof(float), &b) || es__arr_reserve(&g->x, b) ||
        es__arr_reserve(&g->links0, tot * (size_t)(g->M0 + 1) * sizeof(int32_t)) || es__arr_reserve(&g->level, tot) ||
        es__arr_reserve(&g->upoff, tot * sizeof(int64_t)) ||
        es__arr_reserve(&g->upper, (pool + add_pool) * sizeof(int32_t)))
        return es__err(err, ES_ENOMEM, "hnsw: out of memory adding %zu vectors", n);
    uint8_t *locks = es__calloc(tot, 1);
    int32_t *order = es__malloc((n ? n : 1) * sizeof *order);
    int nt = es__nthreads(ix->threads);
    size_t wb = hwork_bytes(tot, g->efc, g->M0);
    size_t tmpn = (size_t)g->efc + (size_t)g->M0 + 4;
    es__scratch *sc = es__calloc((size_t)nt, sizeof *sc);
    hpair *tmp = es__malloc((size_t)nt * tmpn * sizeof *tmp);
    int32_t *sel = es__malloc((size_t)nt * (size_t)(g->M0 + g->M + 4) * sizeof *sel);
    if (!locks || !order || !sc || !tmp || !sel) rc = es__err(err, ES_ENOMEM, "hnsw: out of memory building");
    for (int t = 0; t < nt && !rc; t++) {
        sc[t].visited = es__calloc(tot, sizeof(uint32_t));
        sc[t].visited_n = tot;
        if (!sc[t].visited || es__arena_reserve(&sc[t].mem, &sc[t].cap, wb))
            rc = es__err(err, ES_ENOMEM, "hnsw: out of memory building");
    }
    if (!rc) rc = make_order(g, x, base, n, order, err);
    if (rc) goto out;

    memcpy((float *)g->x.p + base * d, x, n * d * sizeof(float));
    g->x.bytes = tot * d * sizeof(float);
    uint8_t *lev = g->level.p;
    int64_t *uo = g->upoff.p;
    int32_t *up = g->upper.p;
    memset((int32_t *)g->links0.p + base * (size_t)(g->M0 + 1), 0, n * (size_t)(g->M0 + 1) * sizeof(int32_t));
    for (size_t i = 0; i < n; i++) {
        int L = level_of(ix->p->seed, base + i, mult);
        lev[base + i] = (uint8_t)L;
        uo[base + i] = (int64_t)pool;
        memset(up + pool, 0, (size_t)L * (size_t)(g->M + 1) * sizeof(int32_t));
        pool += (size_t)L * (size_t)(g->M + 1);
    }
    g->links0.bytes = tot * (size_t)(g->M0 + 1) * sizeof(int32_t);
    g->level.bytes = tot;
    g->upoff.bytes = tot * sizeof(int64_t);
    g->upper.bytes = pool * sizeof(int32_t);
    g->locks = locks;
    ix->n = tot;
    size_t first = 0;
    if (g->entry < 0 && n > 0) {
        g->entry = order[0];
        g->max_level = lev[order[0]];
        first = 1;
    }
ES__OMP(omp parallel for schedule(dynamic, 8) num_threads(nt))
    for (size_t i = first; i < n; i++) {
        int t = 0;
#ifdef _OPENMP
        t = omp_get_thread_num();
#endif
        hwork w = hwork_carve(sc[t].mem, tot, g->efc, g->M0);
        insert(g, order[i], &sc[t], &w, tmp + (size_t)t * tmpn, sel + (size_t)t * (size_t)(g->M0 + g->M + 4));
    }
    g->locks = NULL;
out:
    for (int t = 0; sc && t < nt; t++) {
        es__free(sc[t].visited);
        es__free_aligned(sc[t].mem);
    }
    es__free(sc);
    es__free(tmp);
    es__free(sel);
    es__free(order);
    es__free(locks);
    return rc;
}

static int ef_of(const es__ix *ix, int k) { return ES_MAX(ix->p->ef_search, k); }

static size_t hnsw_scratch(const es__ix *ix, int k) {
    const hnsw_ix *g = (const hnsw_ix *)ix;
    return hwork_bytes(ix->n, ef_of(ix, k), g->M0);
}

static void hnsw_search1(const es__ix *ix, const float *q, int k, const es__filter *f, es__scratch *s, float *dist_out,
                         int64_t *ids) {
    hnsw_ix *g = (hnsw_ix *)ix;
    int size = 0;
    if (g->entry < 0) {
        es__heap_finish(dist_out, ids, 0, k);
        return;
    }
    int ef = ef_of(ix, k);
    if (f) {
        double nm = (double)f->n_match;
        if (nm * nm <= (double)ef * (double)g->M0 * (double)ix->n) {
            for (int si = 0; si < f->n_slices; si++)
                for (size_t j = 0; j < f->slice_n[si]; j++) {
                    int32_t id = f->slice[si][j];
                    es__heap_push(dist_out, ids, &size, k, dist(g, q, vec(g, id)), id);
                }
            es__heap_finish(dist_out, ids, size, k);
            return;
        }
    }
    hwork w = hwork_carve(s->mem, ix->n, ef, g->M0);
    int32_t cur = g->entry;
    float dcur = dist(g, q, vec(g, cur));
    for (int l = g->max_level; l > 0; l--) greedy(g, q, l, false, &cur, &dcur, &w);
    int nr;
    search_layer(g, q, cur, dcur, ef, 0, f, false, s, &w, &nr);
    for (int i = 0; i < nr; i++) es__heap_push(dist_out, ids, &size, k, w.res[i].d, w.res[i].id);
    es__heap_finish(dist_out, ids, size, k);
}

static size_t hnsw_bytes(const es__ix *ix) {
    const hnsw_ix *g = (const hnsw_ix *)ix;
    return g->x.bytes + g->links0.bytes + g->level.bytes + g->upoff.bytes + g->upper.bytes;
}

static int hnsw_save(const es__ix *ix, es_fwriter *w, const char *pfx, es_err *err) {
    const hnsw_ix *g = (const hnsw_ix *)ix;
    int rc = es__ix_put(w, pfx, "x", ES_DT_F32, g->x.p, 2, ix->n, (uint64_t)ix->dim, err);
    if (!rc) rc = es__ix_put(w, pfx, "hnsw.links0", ES_DT_I32, g->links0.p, 2, ix->n, (uint64_t)g->M0 + 1, err);
    if (!rc) rc = es__ix_put(w, pfx, "hnsw.level", ES_DT_U8, g->level.p, 1, ix->n, 0, err);
    if (!rc) rc = es__ix_put(w, pfx, "hnsw.upoff", ES_DT_I64, g->upoff.p, 1, ix->n, 0, err);
    if (!rc) rc = es__ix_put(w, pfx, "hnsw.upper", ES_DT_I32, g->upper.p, 1, g->upper.bytes / sizeof(int32_t), 0, err);
    if (!rc) rc = es__ix_meta_put(w, pfx, "hnsw.entry", g->entry, err);
    return rc;
}

/* Every id and offset is checked: a search must never leave the arrays. */
static int hnsw_load(es__ix *ix, const es_file *f, const char *pfx, es_err *err) {
    hnsw_ix *g = (hnsw_ix *)ix;
    size_t n = ix->n, d = (size_t)ix->dim;
    const void *px, *pl0, *plev, *puo, *pup;
    uint64_t sx[2] = {n, d}, sl0[2] = {n, (uint64_t)g->M0 + 1}, s1[1] = {n}, sup[1] = {ES_IX_ANY};
    int rc = es__ix_tensor(f, pfx, "x", ES_DT_F32, 2, sx, &px, err);
    if (!rc) rc = es__ix_tensor(f, pfx, "hnsw.links0", ES_DT_I32, 2, sl0, &pl0, err);
    if (!rc) rc = es__ix_tensor(f, pfx, "hnsw.level", ES_DT_U8, 1, s1, &plev, err);
    if (!rc) rc = es__ix_tensor(f, pfx, "hnsw.upoff", ES_DT_I64, 1, s1, &puo, err);
    if (!rc) {
        if (n == 0) {
            pup = NULL;
            sup[0] = 0;
        } else {
            rc = es__ix_tensor(f, pfx, "hnsw.upper", ES_DT_I32, 1, sup, &pup, err);
        }
    }
    long long entry;
    if (!rc) rc = es__ix_meta_long(f, pfx, "hnsw.entry", -1, (long long)n - 1, &entry, err);
    if (rc) return rc;
    if ((rc = es__check_finite(px, n, ix->dim, "hnsw vectors", err))) return rc;
    const uint8_t *lev = plev;
    const int64_t *uo = puo;
    const int32_t *l0 = pl0, *up = pup;
    size_t pool = (size_t)sup[0];
    int maxl = -1;
    for (size_t i = 0; i < n; i++) {
        if (lev[i] > MAX_LEVEL) return es__err(err, ES_EFORMAT, "hnsw: node %zu has level %u (max %d)", i, lev[i], MAX_LEVEL);
        if (lev[i] > maxl) maxl = lev[i];
        const int32_t *lk = l0 + i * (size_t)(g->M0 + 1);
        if (lk[0] < 0 || lk[0] > g->M0)
            return es__err(err, ES_EFORMAT, "hnsw: node %zu has %d base links (max %d)", i, lk[0], g->M0);
        for (int j = 1; j <= lk[0]; j++)
            if (lk[j] < 0 || (size_t)lk[j] >= n)
                return es__err(err, ES_EFORMAT, "hnsw: node %zu links to id %d outside [0, %zu)", i, lk[j], n);
        if (lev[i] == 0) continue;
        size_t need = (size_t)lev[i] * (size_t)(g->M + 1);
        if (uo[i] < 0 || (uint64_t)uo[i] > pool || need > pool - (size_t)uo[i])
            return es__err(err, ES_EFORMAT, "hnsw: node %zu has link blocks outside the pool", i);
        for (int l = 1; l <= lev[i]; l++) {
            const int32_t *lu = up + (size_t)uo[i] + (size_t)(l - 1) * (size_t)(g->M + 1);
            if (lu[0] < 0 || lu[0] > g->M)
                return es__err(err, ES_EFORMAT, "hnsw: node %zu has %d links on level %d (max %d)", i, lu[0], l, g->M);
            for (int j = 1; j <= lu[0]; j++)
                if (lu[j] < 0 || (size_t)lu[j] >= n || lev[lu[j]] < l)
                    return es__err(err, ES_EFORMAT, "hnsw: node %zu links on level %d to id %d, which is not on that level",
                                   i, l, lu[j]);
        }
    }
    if (n > 0 && (entry < 0 || lev[entry] != maxl))
        return es__err(err, ES_EFORMAT, "hnsw: entry point %lld is not on the top level %d", entry, maxl);
    es__arr_map(&g->x, px, n * d * sizeof(float));
    es__arr_map(&g->links0, pl0, n * (size_t)(g->M0 + 1) * sizeof(int32_t));
    es__arr_map(&g->level, plev, n);
    es__arr_map(&g->upoff, puo, n * sizeof(int64_t));
    es__arr_map(&g->upper, pup, pool * sizeof(int32_t));
    g->entry = (int32_t)entry;
    g->max_level = n ? maxl : 0;
    return ES_OK;
}

static void hnsw_destroy(es__ix *ix) {
    hnsw_ix *g = (hnsw_ix *)ix;
    es__arr_free(&g->x);
    es__arr_free(&g->links0);
    es__arr_free(&g->level);
    es__arr_free(&g->upoff);
    es__arr_free(&g->upper);
    pthread_mutex_destroy(&g->glock);
    es__free(g);
}

static const es__ix_vt hnsw_vt = {
    .name = "hnsw",
    .train = NULL,
    .add = hnsw_add,
    .scratch_need = hnsw_scratch,
    .uses_visited = true,
    .search1 = hnsw_search1,
    .bytes = hnsw_bytes,
    .save = hnsw_save,
    .load = hnsw_load,
    .destroy = hnsw_destroy,
};

int es__hnsw_new(es__ix **out, int dim, int ip, es_index_params *p, es_err *err) {
    if (p->hnsw_m < 2 || p->hnsw_m > 64) return es__err(err, ES_EINVAL, "hnsw: M must be in [2, 64], got %d", p->hnsw_m);
    if (p->ef_construction < 1 || p->ef_construction > 1 << 16)
        return es__err(err, ES_EINVAL, "hnsw: efConstruction must be in [1, 65536], got %d", p->ef_construction);
    if (p->ef_search < 1 || p->ef_search > 1 << 20)
        return es__err(err, ES_EINVAL, "hnsw: efSearch must be in [1, 2^20], got %d", p->ef_search);
    if ((unsigned)p->order > ES_ORDER_LID_ASC) return es__err(err, ES_EINVAL, "hnsw: unknown insertion order %d", p->order);
    hnsw_ix *g = es__calloc(1, sizeof *g);
    if (!g) return es__err(err, ES_ENOMEM, "hnsw: out of memory");
    g->h = (es__ix){.vt = &hnsw_vt, .dim = dim, .ip = ip, .trained = true, .p = p};
    g->M = p->hnsw_m;
    g->M0 = 2 * p->hnsw_m;
    g->efc = ES_MAX(p->ef_construction, p->hnsw_m);
    g->entry = -1;
    pthread_mutex_init(&g->glock, NULL);
    *out = &g->h;
    return ES_OK;
}

/* ---- local intrinsic dimension ---------------------------------------------------------- */
int es__lid_estimate(const float *x, size_t n, int d, int k, size_t sample, uint64_t seed, float *lid, es_err *err) {
    if (n < 3) {
        for (size_t i = 0; i < n; i++) lid[i] = 0;
        return ES_OK;
    }
    size_t *pick = NULL, m = 0;
    if (es__sample_rows(n, sample, seed ^ UINT64_C(0x6c6964), &pick, &m)) return es__err(err, ES_ENOMEM, "LID: out of memory");
    int kk = (int)ES_MIN((size_t)k + 1, m);
    float *sx = es__alloc_aligned(m * (size_t)d * sizeof *sx), *sn = es__malloc(m * sizeof *sn);
    size_t chunk = 4096;
    float *bd = es__malloc(chunk * (size_t)kk * sizeof *bd);
    int64_t *bi = es__malloc(chunk * (size_t)kk * sizeof *bi);
    int rc = ES_OK;
    if (!sx || !sn || !bd || !bi) {
        rc = es__err(err, ES_ENOMEM, "LID: out of memory");
        goto out;
    }
    for (size_t j = 0; j < m; j++) memcpy(sx + j * (size_t)d, x + pick[j] * (size_t)d, (size_t)d * sizeof(float));
    es__row_norms(sx, m, d, sn);
    for (size_t i0 = 0; i0 < n && !rc; i0 += chunk) {
        size_t c = ES_MIN(chunk, n - i0);
        rc = es__knn_exact(x + i0 * (size_t)d, c, sx, sn, m, d, 0, kk, NULL, bd, bi, 0, NULL, err);
        for (size_t i = 0; i < c && !rc; i++) {
            /* Distances (not squared), skipping the point itself. */
            double r[64 + 1];
            int t = 0;
            for (int j = 0; j < kk && t < k && t < 64; j++) {
                int64_t id = bi[i * (size_t)kk + (size_t)j];
                if (id < 0 || pick[id] == i0 + i) continue;
                r[t++] = sqrt((double)ES_MAX(bd[i * (size_t)kk + (size_t)j], 0.0f));
            }
            double s = 0;
            int used = 0;
            if (t >= 2 && r[t - 1] > 0) {
                for (int j = 0; j < t - 1; j++)
                    if (r[j] > 0) {
                        s += log(r[j] / r[t - 1]);
                        used++;
                    }
            }
            lid[i0 + i] = (used > 0 && s < 0) ? (float)(-(double)used / s) : 0.0f;
        }
    }
out:
    es__free(pick);
    es__free_aligned(sx);
    es__free(sn);
    es__free(bd);
    es__free(bi);
    return rc;
}
