/* The text and JSON dumps: every pool's counters, state, borrow sites and held handles; the
 * text dump also shows what changed since the previous one. Async-signal-safe. */
#include "dump.h"

/* ---- pieces of the dumps ---- */

const char *const leash__prob_name[PROB_KINDS] = {"reclaimed", "suspected", "at_close", "dirty",
                                                  "misuse"};
const char *const leash__gone_names[GONE_REASONS] = {"broken",  "dirty",   "idle",  "lifetime",
                                                     "evicted", "invalid", "closed"};

/* Connections of p on its i-th peer. */
static uint32_t peer_count(struct leash_pool *p, int i)
{
    uint32_t n = 0;
    FOR_EACH_SLOT(p, s)
    {
        int st = slot_state(s);
        if (st != SLOT_EMPTY && st != SLOT_CONNECTING &&
            atomic_load_explicit(&s->peer, memory_order_relaxed) == p->peers[i])
            n++;
    }
    return n;
}

/* The servers the pool's connections are on, with how many on each. */
static void text_peers(struct out *o, struct leash_pool *p)
{
    int np = atomic_load_explicit(&p->npeers, memory_order_acquire);
    int titled = 0;
    for (int i = 0; i < np; i++) {
        uint32_t n = peer_count(p, i);
        if (!n)
            continue;
        o_str(o, titled ? ", " : "  on servers: ");
        titled = 1;
        o_str(o, p->peers[i]);
        o_str(o, " (");
        o_u64(o, n);
        o_str(o, ")");
    }
    uint64_t rp = atomic_load(&p->retired_peer);
    if (rp) {
        o_str(o, titled ? "; " : "  ");
        o_u64(o, rp);
        o_str(o, " retired because their server changed role");
        titled = 1;
    }
    if (titled)
        o_str(o, "\n");
}

static void text_destroyed(struct out *o, struct leash_pool *p, const leash_pool_stats *st)
{
    if (!st->destroyed)
        return;
    o_str(o, "  destroyed by reason:");
    for (int k = 0, first = 1; k < GONE_REASONS; k++) {
        uint64_t n = ld(&p->gone[k]);
        if (!n)
            continue;
        o_str(o, first ? " " : ", ");
        first = 0;
        o_str(o, leash__gone_names[k]);
        o_str(o, " ");
        o_u64(o, n);
    }
    o_str(o, "\n");
}

static void o_site(struct out *o, const leash_site_stats *ss)
{
    o_str(o, ss->file);
    if (ss->line) {
        o_str(o, ":");
        o_i64(o, ss->line);
        o_str(o, " in ");
        o_str(o, ss->func);
        o_str(o, "()");
    }
}

/* The busiest borrow sites: borrows, waits and holds. */
#define TEXT_TOP_SITES 5
static void text_sites(struct out *o, struct leash_pool *p)
{
    uint32_t idx[LEASH_SITES + 1];
    uint64_t acq[LEASH_SITES + 1];
    int n = leash__sites_sorted(p, idx, acq);
    if (!n)
        return;
    o_str(o, "  busiest borrow sites (borrows, wait avg/max, hold avg/max, timeouts):\n");
    for (int i = 0; i < n && i < TEXT_TOP_SITES; i++) {
        leash_site_stats ss;
        leash__site_get(p, idx[i], &ss);
        uint64_t ended = ss.acquired > ss.held_now ? ss.acquired - ss.held_now : 0;
        o_str(o, "    ");
        o_u64(o, ss.acquired);
        o_str(o, "  ");
        o_dur(o, ss.acquired ? ss.wait_ns_total / ss.acquired : 0);
        o_str(o, "/");
        o_dur(o, ss.wait_ns_max);
        o_str(o, "  ");
        o_dur(o, ended ? ss.hold_ns_total / ended : 0);
        o_str(o, "/");
        o_dur(o, ss.hold_ns_max);
        o_str(o, "  ");
        o_u64(o, ss.timeouts);
        o_str(o, "  ");
        o_site(o, &ss);
        o_str(o, "\n");
    }
    if (n > TEXT_TOP_SITES) {
        o_str(o, "    ... ");
        o_i64(o, n - TEXT_TOP_SITES);
        o_str(o, " more (JSON has them all)\n");
    }
}

/* Entry i is the first of the entries that name its site (the one shown). */
int leash__site_is_first(struct leash_pool *p, uint32_t i)
{
    for (uint32_t j = 0; j < i && j < LEASH_SITES; j++)
        if (leash__site_same(p, i, j))
            return 0;
    return 1;
}

/* Problems of kind k at site i, over every entry that names the same site. */
uint64_t leash__site_prob(struct leash_pool *p, uint32_t i, int k)
{
    uint64_t n = 0;
    for (uint32_t j = i; j <= LEASH_SITE_OTHER; j++)
        if (leash__site_same(p, i, j))
            n += ld(&p->sites[j].n[k]);
    return n;
}

/* Leaks and misuse by borrow site, with what is new since the last text dump. */
static void text_problems(struct out *o, struct leash_pool *p)
{
    int titled = 0;
    for (uint32_t i = 0; i <= LEASH_SITE_OTHER; i++) {
        struct leash_site *e = &p->sites[i];
        if (!leash__site_is_first(p, i))
            continue;
        int any = 0;
        for (int k = 0; k < PROB_KINDS; k++)
            any |= leash__site_prob(p, i, k) != 0;
        if (!any)
            continue;
        if (!titled)
            o_str(o, "  leaks and misuse by borrow site (since the last dump):\n");
        titled = 1;
        o_str(o, "    ");
        for (int k = 0, first = 1; k < PROB_KINDS; k++) {
            uint64_t cnt = leash__site_prob(p, i, k);
            if (!cnt)
                continue;
            uint64_t was = ld(&e->base[k]);
            if (!first)
                o_str(o, ", ");
            first = 0;
            o_u64(o, cnt);
            o_str(o, " ");
            o_str(o, leash__prob_name[k]);
            if (atomic_load(&p->base_valid) && cnt > was) {
                o_str(o, " (+");
                o_u64(o, cnt - was);
                o_str(o, ")");
            }
            if (o->baseline)
                atomic_store_explicit(&e->base[k], cnt, memory_order_relaxed);
        }
        o_str(o, "  ");
        if (i == LEASH_SITE_OTHER) {
            o_str(o, "(other sites)\n");
            continue;
        }
        const char *file = atomic_load_explicit(&e->file, memory_order_relaxed);
        o_str(o, file ? file : "(unknown site)");
        if (file) {
            o_str(o, ":");
            o_i64(o, atomic_load(&e->line));
            o_str(o, " in ");
            o_str(o, atomic_load(&e->func));
            o_str(o, "()");
        }
        o_str(o, "\n");
    }
}

static void json_site(struct out *o, const leash_site_stats *ss)
{
    o_str(o, "{\"file\":\"");
    o_esc(o, ss->file);
    o_str(o, "\",\"line\":");
    o_i64(o, ss->line);
    o_str(o, ",\"func\":\"");
    o_esc(o, ss->func);
    o_str(o, "\"");
    const struct {
        const char *name;
        uint64_t v;
    } f[] = {{"acquired", ss->acquired},           {"timeouts", ss->timeouts},
             {"held_now", ss->held_now},           {"leaks", ss->leaks},
             {"dirty_returns", ss->dirty_returns}, {"misuse", ss->misuse},
             {"wait_ns_total", ss->wait_ns_total}, {"wait_ns_max", ss->wait_ns_max},
             {"hold_ns_total", ss->hold_ns_total}, {"hold_ns_max", ss->hold_ns_max}};
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) {
        o_str(o, ",\"");
        o_str(o, f[i].name);
        o_str(o, "\":");
        o_u64(o, f[i].v);
    }
    o_str(o, "}");
}

/* JSON members beyond the counters: state, destroyed by reason, peers, every site. */
static void json_extra(struct out *o, struct leash_pool *p, const leash_pool_stats *st)
{
    o_str(o, ",\"draining\":");
    o_str(o, atomic_load(&p->draining) ? "true" : "false");
    o_str(o, ",\"down\":");
    o_str(o, pool_down(p) ? "true" : "false");
    o_str(o, ",\"last_connect_ok_ns\":");
    o_u64(o, st->last_connect_ok_ns);
    o_str(o, ",\"last_connect_fail_ns\":");
    o_u64(o, st->last_connect_fail_ns);
    o_str(o, ",\"retired_peer_changed_role\":");
    o_u64(o, atomic_load(&p->retired_peer));
    o_str(o, ",\"destroyed_by_reason\":{");
    for (int k = 0; k < GONE_REASONS; k++) {
        o_str(o, k ? ",\"" : "\"");
        o_str(o, leash__gone_names[k]);
        o_str(o, "\":");
        o_u64(o, ld(&p->gone[k]));
    }
    o_str(o, "},\"peers\":[");
    int np = atomic_load_explicit(&p->npeers, memory_order_acquire);
    for (int i = 0, first = 1; i < np; i++) {
        uint32_t n = peer_count(p, i);
        if (!n)
            continue;
        o_str(o, first ? "{\"peer\":\"" : ",{\"peer\":\"");
        first = 0;
        o_esc(o, p->peers[i]);
        o_str(o, "\",\"connections\":");
        o_u64(o, n);
        o_str(o, "}");
    }
    o_str(o, "],\"sites\":[");
    uint32_t idx[LEASH_SITES + 1];
    uint64_t acq[LEASH_SITES + 1];
    int n = leash__sites_sorted(p, idx, acq);
    for (int i = 0; i < n; i++) {
        leash_site_stats ss;
        leash__site_get(p, idx[i], &ss);
        if (i)
            o_str(o, ",");
        json_site(o, &ss);
    }
    o_str(o, "]");
}

/* ---- text ---- */

static _Atomic uint64_t last_text_dump_ns;

static void text_pool(struct out *o, struct leash_pool *p, uint64_t now, int since_valid,
                      uint64_t since_ns)
{
    leash_pool_stats st;
    leash__gather(p, &st);
    uint64_t v[48];
    leash__values(&st, v);
    uint64_t now_raw = leash__clock_raw();

    o_str(o, "pool \"");
    o_esc(o, p->name);
    o_str(o, "\" (");
    o_str(o, p->adapter->kind);
    o_str(o, ") ");
    char desc[LEASH_TARGET_DESC_MAX];
    leash__pool_desc(p, desc, sizeof desc);
    o_str(o, desc);
    if (atomic_load(&p->closed))
        o_str(o, "  [closed]");
    else if (atomic_load(&p->draining))
        o_str(o, "  [draining]");
    o_str(o, "\n  connections ");
    o_u64(o, st.size);
    o_str(o, "/");
    o_u64(o, st.max_size);
    o_str(o, ": ");
    o_u64(o, st.in_use);
    o_str(o, " in use, ");
    o_u64(o, st.idle);
    o_str(o, " idle, ");
    o_u64(o, st.waiting);
    o_str(o, " waiting");
    if (st.connecting) {
        o_str(o, ", ");
        o_u64(o, st.connecting);
        o_str(o, " connecting");
    }
    o_str(o, "\n");
    if (pool_down(p)) {
        uint64_t mono = leash__mono_ns(), since = atomic_load(&p->down_since_ns);
        o_str(o, "  DOWN for ");
        o_dur(o, mono > since ? mono - since : 0);
        o_str(o, " (");
        o_u64(o, st.consecutive_failures);
        o_str(o, " connect attempts in a row failed); last error: ");
        /* Copied under its sequence, without a lock (connect.c). */
        char last[sizeof p->last_error[0]];
        leash__pool_last_error(p, last, sizeof last);
        o_str(o, last);
        o_str(o, "\n");
    }
    text_peers(o, p);
    /* Three lines, connections opened, borrows and leaks, of "name value" pairs from the table. */
    static const struct {
        const char *title;
        unsigned char idx[8]; /* metric indexes, 0 ends */
    } lines[] = {
        {"  opened:", {5, 6, 11, 12, 23}},
        {"  borrows:", {7, 8, 13, 14, 9, 10}},
        {"  leaks:", {15, 16, 17, 18, 19}},
    };
    for (size_t l = 0; l < sizeof lines / sizeof lines[0]; l++) {
        o_str(o, lines[l].title);
        for (size_t k = 0; k < 8 && lines[l].idx[k]; k++) {
            size_t i = lines[l].idx[k];
            o_str(o, k ? ", " : " ");
            o_str(o, leash__metrics[i].name);
            o_str(o, " ");
            o_u64(o, v[i]);
        }
        o_str(o, "\n");
    }
    o_str(o, "  wait avg ");
    o_dur(o, st.acquired ? st.wait_ns_total / st.acquired : 0);
    o_str(o, " max ");
    o_dur(o, st.wait_ns_max);
    uint64_t ended = st.acquired - st.in_use;
    o_str(o, "; hold avg ");
    o_dur(o, ended && ended <= st.acquired ? st.hold_ns_total / ended : 0);
    o_str(o, " max ");
    o_dur(o, st.hold_ns_max);
    o_str(o, "\n");
    text_destroyed(o, p, &st);
    if (st.fast_failures) {
        o_str(o, "  fast failures while down: ");
        o_u64(o, st.fast_failures);
        o_str(o, "\n");
    }

    struct site sites[MAX_SITES];
    uint32_t others;
    uint32_t n = leash__group_sites(p, sites, &others, now_raw);
    if (n) {
        o_str(o, "  held by borrow site (count, oldest, site):\n");
        for (uint32_t i = 0; i < n; i++) {
            o_str(o, "    ");
            o_u64(o, sites[i].count);
            o_str(o, "  ");
            o_dur(o, sites[i].oldest_ns);
            o_str(o, "  ");
            o_str(o, sites[i].file);
            o_str(o, ":");
            o_i64(o, sites[i].line);
            o_str(o, " in ");
            o_str(o, sites[i].func);
            o_str(o, "() thread ");
            o_i64(o, sites[i].tid);
            o_str(o, "\n");
        }
        if (others) {
            o_str(o, "    ");
            o_u64(o, others);
            o_str(o, " more at other sites\n");
        }
    }

    text_sites(o, p);
    text_problems(o, p);

    /* What changed since the previous text dump; this dump becomes the baseline. */
    if (!atomic_load(&p->base_valid)) {
        o_str(o, "  changes: new since the last dump\n");
    } else {
        int any = 0;
        for (size_t i = 0; i < NMETRICS; i++) {
            if (i == 0 || i == 3 || i == 4)
                continue;
            uint64_t was = atomic_load_explicit(&p->base[i], memory_order_relaxed);
            if (v[i] == was)
                continue;
            o_str(o, any ? ", " : "  changes since the last dump");
            if (!any && since_valid) {
                o_str(o, " (");
                o_dur(o, since_ns);
                o_str(o, " ago)");
            }
            if (!any)
                o_str(o, ": ");
            any = 1;
            o_str(o, leash__metrics[i].name);
            o_str(o, v[i] > was ? " +" : " -");
            o_u64(o, v[i] > was ? v[i] - was : was - v[i]);
        }
        o_str(o, any ? "\n" : "  changes since the last dump: none\n");
    }
    if (!o->baseline)
        return;
    for (size_t i = 0; i < NMETRICS; i++)
        atomic_store_explicit(&p->base[i], v[i], memory_order_relaxed);
    atomic_store(&p->base_valid, 1);
}

void leash__dump_text(struct out *o)
{
    uint64_t now = leash__now_coarse();
    uint64_t last =
        o->baseline ? atomic_exchange(&last_text_dump_ns, now) : atomic_load(&last_text_dump_ns);
    int npools = 0, held = 0;
    FOR_EACH_POOL(p)
    {
        npools++;
        held += (int)leash__pool_in_use(p);
    }
    o_str(o, "=== leash stats: pid ");
    o_i64(o, getpid());
    o_str(o, ", ");
    o_i64(o, npools);
    o_str(o, npools == 1 ? " pool, " : " pools, ");
    o_i64(o, held);
    o_str(o, held == 1 ? " handle held" : " handles held");
    if (last) {
        o_str(o, ", last dump ");
        o_dur(o, now - last);
        o_str(o, " ago");
    }
    o_str(o, " ===\n");
    FOR_EACH_POOL(p)
    text_pool(o, p, now, last != 0, now - last);
    o_str(o, "=== end of leash stats ===\n");
}

/* ---- JSON ---- */

void leash__dump_json(struct out *o)
{
    uint64_t now = leash__clock_raw();
    o_str(o, "{\"pid\":");
    o_i64(o, getpid());
    o_str(o, ",\"pools\":[");
    int first = 1;
    FOR_EACH_POOL(p)
    {
        leash_pool_stats st;
        leash__gather(p, &st);
        uint64_t v[48];
        leash__values(&st, v);
        o_str(o, first ? "{" : ",{");
        first = 0;
        o_str(o, "\"name\":\"");
        o_esc(o, p->name);
        o_str(o, "\",\"kind\":\"");
        o_esc(o, p->adapter->kind);
        o_str(o, "\",\"target\":\"");
        char desc[LEASH_TARGET_DESC_MAX];
        leash__pool_desc(p, desc, sizeof desc);
        o_esc(o, desc);
        o_str(o, "\",\"closed\":");
        o_str(o, atomic_load(&p->closed) ? "true" : "false");
        for (size_t i = 0; i < NMETRICS; i++) {
            o_str(o, ",\"");
            o_str(o, leash__metrics[i].name);
            o_str(o, "\":");
            o_u64(o, v[i]);
        }
        o_str(o, ",\"wait_ns_total\":");
        o_u64(o, st.wait_ns_total);
        o_str(o, ",\"wait_ns_max\":");
        o_u64(o, st.wait_ns_max);
        o_str(o, ",\"hold_ns_total\":");
        o_u64(o, st.hold_ns_total);
        o_str(o, ",\"hold_ns_max\":");
        o_u64(o, st.hold_ns_max);
        o_str(o, ",\"held\":[");
        struct site sites[MAX_SITES];
        uint32_t others;
        uint32_t n = leash__group_sites(p, sites, &others, now);
        for (uint32_t i = 0; i < n; i++) {
            o_str(o, i ? ",{\"file\":\"" : "{\"file\":\"");
            o_esc(o, sites[i].file);
            o_str(o, "\",\"line\":");
            o_i64(o, sites[i].line);
            o_str(o, ",\"func\":\"");
            o_esc(o, sites[i].func);
            o_str(o, "\",\"count\":");
            o_u64(o, sites[i].count);
            o_str(o, ",\"oldest_ms\":");
            o_u64(o, sites[i].oldest_ns / 1000000u);
            o_str(o, ",\"thread\":");
            o_i64(o, sites[i].tid);
            o_str(o, "}");
        }
        o_str(o, "],\"held_other_sites\":");
        o_u64(o, others);
        json_extra(o, p, &st);
        o_str(o, "}");
    }
    o_str(o, "]}\n");
}
