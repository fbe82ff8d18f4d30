/* Borrow sites and histograms: a fixed table of sites per pool (lock-free claim by file and
 * line, one overflow entry), per-slot accumulators folded in when a slot changes site, and
 * the histogram buckets. Nothing here allocates. */
#include "pool.h"

#include <string.h>

const uint64_t leash__hist_le[LEASH_HIST_BUCKETS] = {
    1ull << 13, 1ull << 15, 1ull << 17, 1ull << 19, 1ull << 21, 1ull << 23,
    1ull << 25, 1ull << 27, 1ull << 29, 1ull << 31, 1ull << 33, 1ull << 35,
};

static uint64_t site_key(const char *file, int line)
{
    uint64_t k = (uint64_t)(uintptr_t)file * 0x9e3779b97f4a7c15ull ^ (uint64_t)(unsigned)line;
    return k ? k : 1;
}

uint32_t leash__site_index(struct leash_pool *p, const char *file, int line, const char *func)
{
    if (!file)
        return LEASH_SITE_OTHER;
    uint64_t key = site_key(file, line);
    uint32_t start = (uint32_t)(key >> 40) % LEASH_SITES;
    for (uint32_t k = 0; k < LEASH_SITES; k++) {
        struct leash_site *e = &p->sites[(start + k) % LEASH_SITES];
        uint64_t cur = atomic_load_explicit(&e->key, memory_order_acquire);
        if (cur == 0) {
            uint64_t expect = 0;
            if (atomic_compare_exchange_strong(&e->key, &expect, key)) {
                atomic_store_explicit(&e->file, file, memory_order_relaxed);
                atomic_store_explicit(&e->func, func, memory_order_relaxed);
                atomic_store_explicit(&e->line, line, memory_order_relaxed);
                /* release: pairs with the acquire of readers that check ready */
                atomic_store_explicit(&e->ready, 1, memory_order_release);
                return (start + k) % LEASH_SITES;
            }
            cur = expect;
        }
        if (cur == key) {
            /* Two sites could share a key; then they share an entry (1 in 2^64). */
            return (start + k) % LEASH_SITES;
        }
    }
    return LEASH_SITE_OTHER;
}

void leash__count_problem(struct leash_pool *p, const char *file, int line, const char *func,
                          int kind)
{
    uint32_t i = leash__site_index(p, file, line, func);
    atomic_fetch_add_explicit(&p->sites[i].n[kind], 1, memory_order_relaxed);
}

/* s's borrow number and wait and hold totals now. */
struct slot_totals {
    uint64_t borrows, wait, hold;
};
static struct slot_totals slot_totals(struct leash_handle *s)
{
    return (struct slot_totals){w_borrow(atomic_load_explicit(&s->word, memory_order_relaxed)),
                                ld(&s->wait_ns_total), ld(&s->hold_ns_total)};
}

/* What s accumulated for its acc_site: its totals (also in *now) past the bases, read
 * first. The bases are at most the totals (both only grow, a base is an earlier total); the
 * clamp is for a reader that raced a fold, whose result the fold generation discards
 * anyway. */
static struct slot_totals slot_acc(struct leash_handle *s, struct slot_totals *now_out)
{
    struct slot_totals base = {ld(&s->acc_base_borrow), ld(&s->acc_base_wait),
                               ld(&s->acc_base_hold)};
    struct slot_totals now = *now_out = slot_totals(s);
    return (struct slot_totals){now.borrows > base.borrows ? now.borrows - base.borrows : 0,
                                now.wait > base.wait ? now.wait - base.wait : 0,
                                now.hold > base.hold ? now.hold - base.hold : 0};
}

/* Called by the slot's owner only, before the borrow that changes its site begins: what the
 * slot accumulated goes to its site's entry, and its totals now are the new bases. */
void leash__site_flush(struct leash_pool *p, struct leash_handle *s)
{
    uint32_t i = atomic_load_explicit(&s->acc_site, memory_order_relaxed);
    struct slot_totals now, acc = slot_acc(s, &now);
    /* Folds in progress are counted, and each completed one moves the generation on, so a
     * reader never counts the numbers twice (in the table and still in the slot) or not at
     * all. Rare: only when a slot changes site. seq_cst: ordered with the reader's loads. */
    atomic_fetch_add(&p->site_busy, 1);
    if (i <= LEASH_SITE_OTHER) {
        struct leash_site *e = &p->sites[i];
        atomic_fetch_add_explicit(&e->acquired, acc.borrows, memory_order_relaxed);
        atomic_fetch_add_explicit(&e->wait_total, acc.wait, memory_order_relaxed);
        atomic_fetch_add_explicit(&e->hold_total, acc.hold, memory_order_relaxed);
        count_max(&e->wait_max, ld(&s->acc_wait_max));
        count_max(&e->hold_max, ld(&s->acc_hold_max));
    }
    atomic_store_explicit(&s->acc_base_borrow, now.borrows, memory_order_relaxed);
    atomic_store_explicit(&s->acc_base_wait, now.wait, memory_order_relaxed);
    atomic_store_explicit(&s->acc_base_hold, now.hold, memory_order_relaxed);
    atomic_store_explicit(&s->acc_wait_max, 0, memory_order_relaxed);
    atomic_store_explicit(&s->acc_hold_max, 0, memory_order_relaxed);
    atomic_fetch_add(&p->site_gen, 1);
    atomic_fetch_sub(&p->site_busy, 1);
}

/* Entries i and j name the same site: the same line of files with the same name (a header
 * included from several files has one __FILE__ string per includer). The other-sites entry is
 * only ever itself. Async-signal-safe. */
int leash__site_same(struct leash_pool *p, uint32_t i, uint32_t j)
{
    if (i == j)
        return 1;
    if (i == LEASH_SITE_OTHER || j == LEASH_SITE_OTHER)
        return 0;
    struct leash_site *a = &p->sites[i], *b = &p->sites[j];
    if (!atomic_load_explicit(&a->ready, memory_order_acquire) ||
        !atomic_load_explicit(&b->ready, memory_order_acquire))
        return 0;
    const char *fa = atomic_load_explicit(&a->file, memory_order_relaxed);
    const char *fb = atomic_load_explicit(&b->file, memory_order_relaxed);
    return atomic_load_explicit(&a->line, memory_order_relaxed) ==
               atomic_load_explicit(&b->line, memory_order_relaxed) &&
           (fa == fb || (fa && fb && strcmp(fa, fb) == 0));
}

static void site_get_all(struct leash_pool *p, uint32_t i, leash_site_stats *out);

/* Entry i alone. */
static void site_get_one(struct leash_pool *p, uint32_t i, leash_site_stats *out)
{
    struct leash_site *e = &p->sites[i];
    memset(out, 0, sizeof *out);
    if (i == LEASH_SITE_OTHER) {
        out->file = "(other sites)";
        out->func = "";
    } else {
        out->file = atomic_load_explicit(&e->file, memory_order_relaxed);
        out->func = atomic_load_explicit(&e->func, memory_order_relaxed);
        out->line = atomic_load_explicit(&e->line, memory_order_relaxed);
    }
    out->acquired = ld(&e->acquired);
    out->timeouts = ld(&e->timeouts);
    out->wait_ns_total = ld(&e->wait_total);
    out->wait_ns_max = ld(&e->wait_max);
    out->hold_ns_total = ld(&e->hold_total);
    out->hold_ns_max = ld(&e->hold_max);
    out->leaks = ld(&e->n[PROB_RECLAIMED]) + ld(&e->n[PROB_SUSPECTED]) + ld(&e->n[PROB_AT_CLOSE]);
    out->dirty_returns = ld(&e->n[PROB_DIRTY]);
    out->misuse = ld(&e->n[PROB_MISUSE]);
    FOR_EACH_SLOT(p, s)
    {
        if (atomic_load_explicit(&s->acc_site, memory_order_relaxed) == i) {
            struct slot_totals now, acc = slot_acc(s, &now);
            out->acquired += acc.borrows;
            out->wait_ns_total += acc.wait;
            out->hold_ns_total += acc.hold;
            if (ld(&s->acc_wait_max) > out->wait_ns_max)
                out->wait_ns_max = ld(&s->acc_wait_max);
            if (ld(&s->acc_hold_max) > out->hold_ns_max)
                out->hold_ns_max = ld(&s->acc_hold_max);
        }
        uint64_t w = slot_word(s);
        if (w_state(w) == SLOT_HELD && atomic_load_explicit(&s->site, memory_order_relaxed) == i)
            out->held_now++;
    }
}

/* Site i is in use. */
/* Site i's numbers: the table plus what slots still accumulate for it, summed over every
 * entry that names the same site. Async-signal-safe. */
void leash__site_get(struct leash_pool *p, uint32_t i, leash_site_stats *out)
{
    /* Consistent when no fold was in progress at either end and none completed between.
     * A consistent read is remembered; when slots keep changing sites through every try,
     * the counters read as the last consistent read (never more than the truth, never less
     * than an earlier answer: counters stay monotonic). */
    struct leash_site *e = &p->sites[i];
    int consistent = 0;
    for (int tries = 0; tries < 64 && !consistent; tries++) {
        uint64_t g1 = atomic_load(&p->site_gen);
        int idle = atomic_load(&p->site_busy) == 0;
        site_get_all(p, i, out);
        consistent = idle && atomic_load(&p->site_busy) == 0 && atomic_load(&p->site_gen) == g1;
    }
    uint64_t *v[3] = {&out->acquired, &out->wait_ns_total, &out->hold_ns_total};
    for (int k = 0; k < 3; k++) {
        if (consistent)
            count_max(&e->shown[k], *v[k]);
        uint64_t last = ld(&e->shown[k]);
        if (!consistent || *v[k] < last)
            *v[k] = last;
    }
}

static void site_get_all(struct leash_pool *p, uint32_t i, leash_site_stats *out)
{
    site_get_one(p, i, out);
    if (i == LEASH_SITE_OTHER)
        return;
    for (uint32_t j = 0; j < LEASH_SITES; j++) {
        if (j == i || !leash__site_same(p, i, j))
            continue;
        leash_site_stats more;
        site_get_one(p, j, &more);
        out->acquired += more.acquired;
        out->timeouts += more.timeouts;
        out->held_now += more.held_now;
        out->leaks += more.leaks;
        out->dirty_returns += more.dirty_returns;
        out->misuse += more.misuse;
        out->wait_ns_total += more.wait_ns_total;
        out->hold_ns_total += more.hold_ns_total;
        if (more.wait_ns_max > out->wait_ns_max)
            out->wait_ns_max = more.wait_ns_max;
        if (more.hold_ns_max > out->hold_ns_max)
            out->hold_ns_max = more.hold_ns_max;
    }
}

/* The first entry that names the same site as i (the one the dumps show). */
static uint32_t site_first(struct leash_pool *p, uint32_t i)
{
    for (uint32_t j = 0; j < i && j < LEASH_SITES; j++)
        if (leash__site_same(p, i, j))
            return j;
    return i;
}

int leash__site_used(struct leash_pool *p, uint32_t i)
{
    struct leash_site *e = &p->sites[i];
    if (i == LEASH_SITE_OTHER) {
        leash_site_stats st;
        leash__site_get(p, i, &st);
        return st.acquired || st.timeouts || st.leaks || st.misuse || st.dirty_returns;
    }
    return atomic_load_explicit(&e->ready, memory_order_acquire) != 0;
}

/* Fills idx with the used sites of p, most acquired first; returns how many. AS-safe. */
int leash__sites_sorted(struct leash_pool *p, uint32_t *idx, uint64_t *acq)
{
    int n = 0;
    for (uint32_t i = 0; i <= LEASH_SITE_OTHER; i++) {
        if (!leash__site_used(p, i) || site_first(p, i) != i)
            continue;
        leash_site_stats st;
        leash__site_get(p, i, &st);
        int j = n++;
        while (j > 0 && acq[j - 1] < st.acquired) {
            idx[j] = idx[j - 1];
            acq[j] = acq[j - 1];
            j--;
        }
        idx[j] = i;
        acq[j] = st.acquired;
    }
    return n;
}

int leash_pool_sites(leash_pool *p, leash_site_stats *out, int max)
{
    if (!p || p->magic != LEASH_POOL_MAGIC || max < 0 || (max > 0 && !out)) {
        leash__fail(LEASH_EINVAL, "leash_pool_sites: %s",
                    !p || p->magic != LEASH_POOL_MAGIC ? "not a pool"
                    : max < 0                          ? "max is negative"
                                                       : "out is NULL");
        return -1;
    }
    uint32_t idx[LEASH_SITES + 1];
    uint64_t acq[LEASH_SITES + 1];
    int n = leash__sites_sorted(p, idx, acq);
    for (int i = 0; i < n && i < max; i++)
        leash__site_get(p, idx[i], &out[i]);
    return n;
}
