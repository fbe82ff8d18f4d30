/* The Prometheus text exposition: counters, gauges, histograms and per-site series of every
 * open pool. Async-signal-safe. */
#include "dump.h"

/* ---- Prometheus text exposition ---- */

static void prom_labels(struct out *o, struct leash_pool *p)
{
    o_str(o, "{pool=\"");
    o_esc(o, p->name);
    o_str(o, "\",kind=\"");
    o_esc(o, p->adapter->kind);
    o_str(o, "\"}");
}

static void prom_head(struct out *o, const char *name, const char *help, const char *type)
{
    o_str(o, "# HELP ");
    o_str(o, name);
    o_str(o, " ");
    o_str(o, help);
    o_str(o, "\n# TYPE ");
    o_str(o, name);
    o_str(o, " ");
    o_str(o, type);
    o_str(o, "\n");
}

/* Open pools only: a closed pool leaves the exposition, so a pool reopened under the same
 * name never yields two series with the same labels. */
#define FOR_EACH_OPEN_POOL(p)                                                                      \
    FOR_EACH_POOL(p)                                                                               \
    if (!atomic_load(&p->closed))

static void prom_name(char *name, const char *a, const char *b, const char *c)
{
    size_t n = 0;
    const char *parts[] = {a, b, c};
    for (size_t k = 0; k < 3; k++) {
        size_t l = strlen(parts[k]);
        memcpy(name + n, parts[k], l);
        n += l;
    }
    name[n] = '\0';
}

/* One histogram series set of p: buckets (cumulative), +Inf, _sum and _count. */
static void prom_hist(struct out *o, struct leash_pool *p, const char *name,
                      const uint64_t *buckets, uint64_t sum_ns)
{
    uint64_t cum = 0;
    for (int b = 0; b <= LEASH_HIST_BUCKETS; b++) {
        cum += buckets[b];
        o_str(o, name);
        o_str(o, "_bucket{pool=\"");
        o_esc(o, p->name);
        o_str(o, "\",kind=\"");
        o_esc(o, p->adapter->kind);
        o_str(o, "\",le=\"");
        if (b == LEASH_HIST_BUCKETS)
            o_str(o, "+Inf");
        else
            o_secs(o, leash__hist_le[b]);
        o_str(o, "\"} ");
        o_u64(o, cum);
        o_str(o, "\n");
    }
    o_str(o, name);
    o_str(o, "_sum");
    prom_labels(o, p);
    o_str(o, " ");
    o_secs(o, sum_ns);
    o_str(o, "\n");
    o_str(o, name);
    o_str(o, "_count");
    prom_labels(o, p);
    o_str(o, " ");
    o_u64(o, cum);
    o_str(o, "\n");
}

static void prom_histograms(struct out *o)
{
    prom_head(o, "leash_acquire_wait_seconds",
              "Wait of each successful acquire (its _count is acquired; 0 when an idle handle "
              "was taken at once).",
              "histogram");
    FOR_EACH_OPEN_POOL(p)
    {
        uint64_t b[LEASH_HIST_BUCKETS + 1] = {0}, sum = 0;
        FOR_EACH_SLOT(p, s)
        {
            for (int k = 0; k <= LEASH_HIST_BUCKETS; k++)
                b[k] += ld(&s->hist_wait[k]);
            sum += ld(&s->wait_ns_total);
        }
        prom_hist(o, p, "leash_acquire_wait_seconds", b, sum);
    }
    prom_head(o, "leash_hold_seconds",
              "How long each ended borrow held its handle (released, discarded, reclaimed or "
              "still out at close).",
              "histogram");
    FOR_EACH_OPEN_POOL(p)
    {
        uint64_t b[LEASH_HIST_BUCKETS + 1] = {0}, sum = 0;
        FOR_EACH_SLOT(p, s)
        {
            for (int k = 0; k <= LEASH_HIST_BUCKETS; k++)
                b[k] += ld(&s->hist_hold[k]);
            sum += ld(&s->hold_ns_total);
        }
        prom_hist(o, p, "leash_hold_seconds", b, sum);
    }
    prom_head(o, "leash_connect_seconds", "Each connect attempt, failed ones included.",
              "histogram");
    FOR_EACH_OPEN_POOL(p)
    {
        uint64_t b[LEASH_HIST_BUCKETS + 1];
        for (int k = 0; k <= LEASH_HIST_BUCKETS; k++)
            b[k] = ld(&p->hist_connect[k]);
        prom_hist(o, p, "leash_connect_seconds", b, ld(&p->connect_ns_total));
    }
}

static void prom_site_labels(struct out *o, struct leash_pool *p, const leash_site_stats *ss)
{
    o_str(o, "{pool=\"");
    o_esc(o, p->name);
    o_str(o, "\",site=\"");
    o_esc(o, ss->file);
    if (ss->line) {
        o_str(o, ":");
        o_i64(o, ss->line);
    }
    o_str(o, "\",function=\"");
    o_esc(o, ss->func);
    o_str(o, "\"}");
}

/* Per borrow site, at most LEASH_SITES + 1 series per pool and metric (the table's size). */
static void prom_sites(struct out *o)
{
    static const struct {
        const char *name, *help, *type;
        size_t off;
        int secs;
    } m[] = {
        {"leash_site_acquired_total", "Borrows by borrow site.", "counter",
         offsetof(leash_site_stats, acquired), 0},
        {"leash_site_timeouts_total", "Timed-out acquires by borrow site.", "counter",
         offsetof(leash_site_stats, timeouts), 0},
        {"leash_site_wait_seconds_total", "Acquire waits by borrow site.", "counter",
         offsetof(leash_site_stats, wait_ns_total), 1},
        {"leash_site_hold_seconds_total", "Hold time by borrow site.", "counter",
         offsetof(leash_site_stats, hold_ns_total), 1},
    };
    for (size_t i = 0; i < sizeof m / sizeof m[0]; i++) {
        prom_head(o, m[i].name, m[i].help, m[i].type);
        FOR_EACH_OPEN_POOL(p)
        {
            uint32_t idx[LEASH_SITES + 1];
            uint64_t acq[LEASH_SITES + 1];
            int n = leash__sites_sorted(p, idx, acq);
            for (int k = 0; k < n; k++) {
                leash_site_stats ss;
                leash__site_get(p, idx[k], &ss);
                uint64_t v;
                memcpy(&v, (const char *)&ss + m[i].off, sizeof v);
                o_str(o, m[i].name);
                prom_site_labels(o, p, &ss);
                o_str(o, " ");
                if (m[i].secs)
                    o_secs(o, v);
                else
                    o_u64(o, v);
                o_str(o, "\n");
            }
        }
    }
}

/* The first pools' numbers are gathered once per exposition (one consistent snapshot per
 * pool, and a walk of its slots instead of one per metric); beyond that, per metric. */
#define PROM_CACHED_POOLS 16

void leash__dump_prometheus(struct out *o)
{
    char name[96];
    uint64_t cached[PROM_CACHED_POOLS][METRICS_MAX];
    int ncached = 0;
    FOR_EACH_OPEN_POOL(p)
    {
        if (ncached == PROM_CACHED_POOLS)
            break;
        leash_pool_stats st;
        leash__gather(p, &st);
        leash__values(&st, cached[ncached++]);
    }
    for (size_t i = 0; i < NMETRICS; i++) {
        prom_name(name, "leash_pool_", leash__metrics[i].name,
                  leash__metrics[i].gauge ? "" : "_total");
        prom_head(o, name, leash__metrics[i].help, leash__metrics[i].gauge ? "gauge" : "counter");
        int k = 0;
        FOR_EACH_OPEN_POOL(p)
        {
            uint64_t more[METRICS_MAX];
            const uint64_t *v = k < ncached ? cached[k] : more;
            if (k++ >= ncached) {
                leash_pool_stats st;
                leash__gather(p, &st);
                leash__values(&st, more);
            }
            o_str(o, name);
            prom_labels(o, p);
            o_str(o, " ");
            o_u64(o, v[i]);
            o_str(o, "\n");
        }
    }
    prom_head(o, "leash_destroyed_total",
              "Connections destroyed, by reason (broken, dirty, idle, lifetime, evicted, "
              "invalid, closed); their sum is leash_pool_destroyed_total.",
              "counter");
    FOR_EACH_OPEN_POOL(p)
    {
        for (int k = 0; k < GONE_REASONS; k++) {
            o_str(o, "leash_destroyed_total{pool=\"");
            o_esc(o, p->name);
            o_str(o, "\",kind=\"");
            o_esc(o, p->adapter->kind);
            o_str(o, "\",reason=\"");
            o_str(o, leash__gone_names[k]);
            o_str(o, "\"} ");
            o_u64(o, ld(&p->gone[k]));
            o_str(o, "\n");
        }
    }
    prom_head(o, "leash_pool_up",
              "1 while the backend answers, 0 while the pool is down (connects failing).", "gauge");
    FOR_EACH_OPEN_POOL(p)
    {
        o_str(o, "leash_pool_up");
        prom_labels(o, p);
        o_str(o, pool_down(p) ? " 0\n" : " 1\n");
    }
    static const struct {
        const char *name, *help, *type;
        size_t off;
    } times[] = {
        {"leash_pool_wait_seconds_total", "Time successful acquires waited for handles.", "counter",
         offsetof(leash_pool_stats, wait_ns_total)},
        {"leash_pool_wait_seconds_max", "Longest wait for a handle.", "gauge",
         offsetof(leash_pool_stats, wait_ns_max)},
        {"leash_pool_hold_seconds_total", "Time handles were held by borrowers.", "counter",
         offsetof(leash_pool_stats, hold_ns_total)},
        {"leash_pool_hold_seconds_max", "Longest time a handle was held.", "gauge",
         offsetof(leash_pool_stats, hold_ns_max)},
    };
    for (size_t i = 0; i < sizeof times / sizeof times[0]; i++) {
        prom_head(o, times[i].name, times[i].help, times[i].type);
        FOR_EACH_OPEN_POOL(p)
        {
            leash_pool_stats st;
            leash__gather(p, &st);
            uint64_t ns;
            memcpy(&ns, (const char *)&st + times[i].off, sizeof ns);
            o_str(o, times[i].name);
            prom_labels(o, p);
            o_str(o, " ");
            o_secs(o, ns);
            o_str(o, "\n");
        }
    }
    prom_histograms(o);
    prom_sites(o);
    uint64_t now = leash__clock_raw();
    prom_head(o, "leash_held_handles", "Handles held right now, by borrow site.", "gauge");
    FOR_EACH_OPEN_POOL(p)
    {
        struct site sites[MAX_SITES];
        uint32_t others;
        uint32_t n = leash__group_sites(p, sites, &others, now);
        for (uint32_t i = 0; i < n; i++) {
            o_str(o, "leash_held_handles{pool=\"");
            o_esc(o, p->name);
            o_str(o, "\",site=\"");
            o_esc(o, sites[i].file);
            o_str(o, ":");
            o_i64(o, sites[i].line);
            o_str(o, "\",function=\"");
            o_esc(o, sites[i].func);
            o_str(o, "\"} ");
            o_u64(o, sites[i].count);
            o_str(o, "\n");
        }
        if (others) {
            o_str(o, "leash_held_handles{pool=\"");
            o_esc(o, p->name);
            o_str(o, "\",site=\"other\",function=\"\"} ");
            o_u64(o, others);
            o_str(o, "\n");
        }
    }
}

void leash__prom_problems(struct out *o)
{
    prom_head(o, "leash_problems_total",
              "Leaks and misuse by borrow site (kind: reclaimed, suspected, at_close, dirty, "
              "misuse).",
              "counter");
    FOR_EACH_OPEN_POOL(p)
    {
        for (uint32_t i = 0; i <= LEASH_SITE_OTHER; i++) {
            struct leash_site *e = &p->sites[i];
            if (!leash__site_is_first(p, i))
                continue;
            for (int k = 0; k < PROB_KINDS; k++) {
                uint64_t n = leash__site_prob(p, i, k);
                if (!n)
                    continue;
                const char *file = i == LEASH_SITE_OTHER
                                       ? "(other sites)"
                                       : atomic_load_explicit(&e->file, memory_order_relaxed);
                o_str(o, "leash_problems_total{pool=\"");
                o_esc(o, p->name);
                o_str(o, "\",site=\"");
                o_esc(o, file ? file : "(unknown site)");
                if (i != LEASH_SITE_OTHER && file) {
                    o_str(o, ":");
                    o_i64(o, atomic_load(&e->line));
                }
                o_str(o, "\",function=\"");
                o_esc(o, i != LEASH_SITE_OTHER && file ? atomic_load(&e->func) : "");
                o_str(o, "\",kind=\"");
                o_str(o, leash__prob_name[k]);
                o_str(o, "\"} ");
                o_u64(o, n);
                o_str(o, "\n");
            }
        }
    }
}
