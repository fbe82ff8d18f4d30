/* Stats: counters, the text / JSON / Prometheus dumps (async-signal-safe), leak reports and
 * the strict-mode report. Nothing here takes a lock or allocates. */
#include "pool.h"

#include <stddef.h>

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ---- an async-signal-safe output buffer ---- */

struct out {
    int fd, err;
    size_t n;
    char buf[2048];
    char *mem; /* fd < 0: the output goes here instead (mem_cap bytes, NUL-terminated) */
    size_t mem_len, mem_cap;
    int baseline; /* a text dump moves the "changed since" baseline */
};

/* Writes the buffer out. A reader that went away (a closed pipe, a dead log shipper) is
 * a write error, never a SIGPIPE. */
static void o_flush(struct out *o)
{
    if (!o->n)
        return;
    if (o->fd < 0) {
        size_t room = o->mem_cap - 1 - o->mem_len;
        size_t k = o->n < room ? o->n : room;
        memcpy(o->mem + o->mem_len, o->buf, k);
        o->mem_len += k;
        o->mem[o->mem_len] = '\0';
        if (k < o->n)
            o->err = 1;
        o->n = 0;
        return;
    }
    leash__nopipe np;
    leash__nopipe_begin(&np);
    size_t off = 0;
    while (off < o->n && !o->err) {
        ssize_t w = write(o->fd, o->buf + off, o->n - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            o->err = 1;
        else
            off += (size_t)w;
    }
    leash__nopipe_end(&np);
    o->n = 0;
}

static void o_mem(struct out *o, const char *s, size_t n)
{
    while (n) {
        if (o->n == sizeof o->buf)
            o_flush(o);
        size_t k = sizeof o->buf - o->n;
        if (k > n)
            k = n;
        memcpy(o->buf + o->n, s, k);
        o->n += k;
        s += k;
        n -= k;
    }
}

static void o_str(struct out *o, const char *s)
{
    o_mem(o, s ? s : "?", strlen(s ? s : "?"));
}

size_t leash__fmt_u64(char *buf, uint64_t v)
{
    char tmp[24];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (size_t i = 0; i < n; i++)
        buf[i] = tmp[n - 1 - i];
    buf[n] = '\0';
    return n;
}

static void o_u64(struct out *o, uint64_t v)
{
    char b[24];
    o_mem(o, b, leash__fmt_u64(b, v));
}

static void o_i64(struct out *o, int64_t v)
{
    if (v < 0) {
        o_mem(o, "-", 1);
        o_u64(o, (uint64_t)0 - (uint64_t)v);
    } else {
        o_u64(o, (uint64_t)v);
    }
}

/* A duration for people: 850ns, 12us, 3.4ms, 1.25s, 3m20s. */
static void o_dur(struct out *o, uint64_t ns)
{
    if (ns < 1000) {
        o_u64(o, ns);
        o_str(o, "ns");
    } else if (ns < 1000000) {
        o_u64(o, ns / 1000);
        o_str(o, "us");
    } else if (ns < 1000000000ull) {
        o_u64(o, ns / 1000000);
        o_str(o, ".");
        o_u64(o, ns / 100000 % 10);
        o_str(o, "ms");
    } else if (ns < 120000000000ull) {
        o_u64(o, ns / 1000000000ull);
        o_str(o, ".");
        uint64_t c = ns / 10000000ull % 100;
        if (c < 10)
            o_str(o, "0");
        o_u64(o, c);
        o_str(o, "s");
    } else {
        o_u64(o, ns / 60000000000ull);
        o_str(o, "m");
        o_u64(o, ns / 1000000000ull % 60);
        o_str(o, "s");
    }
}

/* Seconds with nanosecond digits, for machines: 1.250000000 */
static void o_secs(struct out *o, uint64_t ns)
{
    char b[24];
    o_u64(o, ns / 1000000000ull);
    o_str(o, ".");
    size_t n = leash__fmt_u64(b, ns % 1000000000ull);
    for (size_t i = n; i < 9; i++)
        o_str(o, "0");
    o_mem(o, b, n);
}

/* A string inside JSON quotes, or a Prometheus label value (same escapes suffice). */
static void o_esc(struct out *o, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    for (; s && *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            char e[2] = {'\\', (char)c};
            o_mem(o, e, 2);
        } else if (c == '\n') {
            o_str(o, "\\n");
        } else if (c < 0x20) {
            char e[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            o_mem(o, e, 6);
        } else {
            o_mem(o, (const char *)&c, 1);
        }
    }
}

static uint64_t now_coarse(void)
{
    return leash__coarse_ns();
}

/* ---- gathering (lock-free reads) ---- */

/* The ways s's borrows have ended, summed (acquire: pairs with the owner's release stores). */
static uint64_t slot_ended(struct leash_handle *s, uint64_t *by)
{
    by[0] = atomic_load_explicit(&s->released, memory_order_acquire);
    by[1] = atomic_load_explicit(&s->n_discarded, memory_order_acquire);
    by[2] = atomic_load_explicit(&s->n_reclaimed, memory_order_acquire);
    by[3] = atomic_load_explicit(&s->n_at_close, memory_order_acquire);
    return by[0] + by[1] + by[2] + by[3];
}

/* Every counter is monotonic and every snapshot keeps the counting invariant: per slot, the
 * ended counts are read, then the word, then the ended counts again (a retry if a borrow
 * ended meanwhile); the slot's borrows minus its ended ones (0 or 1) are in use: held, or
 * being returned. Async-signal-safe (bounded retries, no lock). */
static void gather(struct leash_pool *p, leash_pool_stats *st)
{
    memset(st, 0, sizeof *st);
    st->name = p->name;
    st->kind = p->adapter->kind;
    st->max_size = atomic_load(&p->nslots);
    st->size = atomic_load(&p->size);
    st->waiting = (uint32_t)atomic_load(&p->nwaiters);
    FOR_EACH_SLOT(p, s)
    {
        uint64_t by[4], again[4], w, ended;
        for (int tries = 0;; tries++) {
            ended = slot_ended(s, by);
            w = slot_word(s);
            if (slot_ended(s, again) == ended || tries == 8)
                break;
        }
        uint64_t borrows = w_borrow(w);
        int state = w_state(w);
        st->acquired += borrows;
        st->in_use += borrows > ended ? (uint32_t)(borrows - ended) : 0;
        st->idle += is_idle_state(state);
        st->released += by[0];
        st->discarded += by[1];
        st->leaks_reclaimed += by[2];
        st->leaks_at_close += by[3];
        st->hold_ns_total += atomic_load_explicit(&s->hold_ns_total, memory_order_relaxed);
        st->wait_ns_total += atomic_load_explicit(&s->wait_ns_total, memory_order_relaxed);
        uint64_t m = atomic_load_explicit(&s->hold_ns_max, memory_order_relaxed);
        if (m > st->hold_ns_max)
            st->hold_ns_max = m;
        m = atomic_load_explicit(&s->wait_ns_max, memory_order_relaxed);
        if (m > st->wait_ns_max)
            st->wait_ns_max = m;
    }
#define LEASH_GATHER(n) st->n = atomic_load_explicit(&p->n, memory_order_relaxed);
    LEASH_POOL_COUNTERS(LEASH_GATHER)
#undef LEASH_GATHER
    st->connecting = atomic_load(&p->connecting);
    st->consecutive_failures = atomic_load(&p->consecutive_failures);
    st->last_connect_ok_ns = atomic_load(&p->last_connect_ok_ns);
    st->last_connect_fail_ns = atomic_load(&p->last_connect_fail_ns);
    st->destroyed_broken = ld(&p->gone[GONE_BROKEN]);
    st->destroyed_dirty = ld(&p->gone[GONE_DIRTY]);
    st->destroyed_idle = ld(&p->gone[GONE_IDLE]);
    st->destroyed_lifetime = ld(&p->gone[GONE_LIFETIME]);
    st->destroyed_evicted = ld(&p->gone[GONE_EVICTED]);
    st->destroyed_invalid = ld(&p->gone[GONE_INVALID]);
    st->destroyed_closed = ld(&p->gone[GONE_CLOSED]);
}

leash_status leash_pool_stats_get(leash_pool *p, leash_pool_stats *out)
{
    if (!p || p->magic != LEASH_POOL_MAGIC || !out)
        return leash__fail(LEASH_EINVAL, "leash_pool_stats_get: %s",
                           !out ? "out is NULL" : "pool is NULL or not a pool");
    gather(p, out);
    return LEASH_OK;
}

uint64_t leash_pool_leaks(leash_pool *p)
{
    if (!p || p->magic != LEASH_POOL_MAGIC)
        return 0;
    leash_pool_stats st;
    gather(p, &st);
    return st.leaks_reclaimed + st.leaks_suspected + st.leaks_at_close;
}

/* Counters as a table, for the dumps and the text diff. */
struct metric {
    const char *name, *help;
    int gauge;
};
static const struct metric metrics[] = {
    {"max_size", "Most connections the pool may hold.", 1},
    {"size", "Connections open or being opened.", 1},
    {"in_use", "Handles borrowed right now.", 1},
    {"idle", "Connections idle in the pool.", 1},
    {"waiting", "Threads waiting for a handle.", 1},
    {"created", "Connections made.", 0},
    {"destroyed", "Connections closed.", 0},
    {"acquired", "Handles borrowed.", 0},
    {"released", "Handles given back with leash_release.", 0},
    {"timeouts", "Acquires that timed out.", 0},
    {"rejected", "Acquires refused at once because max_waiters threads were waiting.", 0},
    {"connect_failures", "Failed connection attempts.", 0},
    {"validation_failures", "Idle connections that failed validation.", 0},
    {"discarded", "Handles discarded as broken.", 0},
    {"dirty_returns", "Handles returned with state left behind.", 0},
    {"leaks_reclaimed", "Handles a scope guard found still held and reclaimed.", 0},
    {"leaks_suspected", "Handles held longer than leak_threshold_ms.", 0},
    {"leaks_at_close", "Handles still borrowed when the pool closed.", 0},
    {"returned_late", "Suspected leaks that came back afterwards.", 0},
    {"misuse", "Double releases, releases or uses of handles not checked out.", 0},
    {"connecting", "Connects in flight.", 1},
    {"consecutive_failures", "Connect failures since the last success.", 1},
    {"fast_failures", "Acquires refused at once while the backend was down.", 0},
    {"keepalives", "Idle connections checked by the keepalive.", 0},
};
#define NMETRICS (sizeof metrics / sizeof metrics[0])
_Static_assert(NMETRICS <= 48, "the dump baseline holds every metric");

static void values(const leash_pool_stats *s, uint64_t *v)
{
    uint64_t all[] = {s->max_size,
                      s->size,
                      s->in_use,
                      s->idle,
                      s->waiting,
                      s->created,
                      s->destroyed,
                      s->acquired,
                      s->released,
                      s->timeouts,
                      s->rejected,
                      s->connect_failures,
                      s->validation_failures,
                      s->discarded,
                      s->dirty_returns,
                      s->leaks_reclaimed,
                      s->leaks_suspected,
                      s->leaks_at_close,
                      s->returned_late,
                      s->misuse,
                      s->connecting,
                      s->consecutive_failures,
                      s->fast_failures,
                      s->keepalives};
    _Static_assert(sizeof all / sizeof all[0] == NMETRICS, "one value per metric");
    memcpy(v, all, sizeof all);
}

/* Held handles of one pool grouped by borrow site. */
#define MAX_SITES 32
struct site {
    const char *file, *func;
    int line, tid;
    uint32_t count;
    uint64_t oldest_ns;
};

static uint32_t group_sites(struct leash_pool *p, struct site *sites, uint32_t *others,
                            uint64_t now)
{
    uint32_t n = 0;
    *others = 0;
    FOR_EACH_SLOT(p, s)
    {
        uint64_t w = slot_word(s);
        if (w_state(w) != SLOT_HELD)
            continue;
        const char *file = atomic_load_explicit(&s->file, memory_order_relaxed);
        const char *func = atomic_load_explicit(&s->func, memory_order_relaxed);
        int line = atomic_load_explicit(&s->line, memory_order_relaxed);
        int tid = atomic_load_explicit(&s->tid, memory_order_relaxed);
        uint64_t since = atomic_load_explicit(&s->since, memory_order_relaxed);
        /* acquire fence: orders the reads above before the re-read of the word; if the
         * slot was returned or lent again meanwhile, the record may mix two borrows: skip
         * it (it is no longer this borrow anyway) */
        atomic_thread_fence(memory_order_acquire);
        if (atomic_load_explicit(&s->word, memory_order_relaxed) != w)
            continue;
        uint64_t age = leash__clock_ns(since, now);
        uint32_t j = 0;
        while (j < n && !(sites[j].line == line &&
                          (sites[j].file == file ||
                           (sites[j].file && file && strcmp(sites[j].file, file) == 0))))
            j++;
        if (j == n) {
            if (n == MAX_SITES) {
                (*others)++;
                continue;
            }
            sites[n] = (struct site){file, func, line, tid, 0, 0};
            n++;
        }
        sites[j].count++;
        if (age >= sites[j].oldest_ns) {
            sites[j].oldest_ns = age;
            sites[j].tid = tid;
        }
    }
    return n;
}

/* ---- pieces of the dumps ---- */

static const char *const prob_name[PROB_KINDS] = {"reclaimed", "suspected", "at_close", "dirty",
                                                  "misuse"};
static const char *const gone_names[GONE_REASONS] = {"broken",  "dirty",   "idle",  "lifetime",
                                                     "evicted", "invalid", "closed"};

/* The servers the pool's connections are on, with how many on each. */
static void text_peers(struct out *o, struct leash_pool *p)
{
    int np = atomic_load_explicit(&p->npeers, memory_order_acquire);
    int titled = 0;
    for (int i = 0; i < np; i++) {
        uint32_t n = 0;
        FOR_EACH_SLOT(p, s)
        {
            int st = slot_state(s);
            if (st != SLOT_EMPTY && st != SLOT_CONNECTING &&
                atomic_load_explicit(&s->peer, memory_order_relaxed) == p->peers[i])
                n++;
        }
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
        o_str(o, gone_names[k]);
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
static int site_is_first(struct leash_pool *p, uint32_t i)
{
    for (uint32_t j = 0; j < i && j < LEASH_SITES; j++)
        if (leash__site_same(p, i, j))
            return 0;
    return 1;
}

/* Problems of kind k at site i, over every entry that names the same site. */
static uint64_t site_prob(struct leash_pool *p, uint32_t i, int k)
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
        if (!site_is_first(p, i))
            continue;
        int any = 0;
        for (int k = 0; k < PROB_KINDS; k++)
            any |= site_prob(p, i, k) != 0;
        if (!any)
            continue;
        if (!titled)
            o_str(o, "  leaks and misuse by borrow site (since the last dump):\n");
        titled = 1;
        o_str(o, "    ");
        for (int k = 0, first = 1; k < PROB_KINDS; k++) {
            uint64_t cnt = site_prob(p, i, k);
            if (!cnt)
                continue;
            uint64_t was = ld(&e->base[k]);
            if (!first)
                o_str(o, ", ");
            first = 0;
            o_u64(o, cnt);
            o_str(o, " ");
            o_str(o, prob_name[k]);
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
    } f[] = {{"acquired", ss->acquired},      {"timeouts", ss->timeouts},
             {"held_now", ss->held_now},      {"leaks", ss->leaks},
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
        o_str(o, gone_names[k]);
        o_str(o, "\":");
        o_u64(o, ld(&p->gone[k]));
    }
    o_str(o, "},\"peers\":[");
    int np = atomic_load_explicit(&p->npeers, memory_order_acquire);
    for (int i = 0, first = 1; i < np; i++) {
        uint32_t n = 0;
        FOR_EACH_SLOT(p, s)
        {
            int state = slot_state(s);
            if (state != SLOT_EMPTY && state != SLOT_CONNECTING &&
                atomic_load_explicit(&s->peer, memory_order_relaxed) == p->peers[i])
                n++;
        }
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

/* Visits every pool; the shutdown waits while leash__dumping is non-zero. */
#define FOR_EACH_POOL(p)                                                                           \
    for (struct leash_pool *p = atomic_load(&leash__pools); p; p = atomic_load(&p->next_all))

/* ---- text ---- */

static _Atomic uint64_t last_text_dump_ns;

static void text_pool(struct out *o, struct leash_pool *p, uint64_t now, int since_valid,
                      uint64_t since_ns)
{
    leash_pool_stats st;
    gather(p, &st);
    uint64_t v[48];
    values(&st, v);
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
        /* Written under the pool lock by connects; a dump takes no lock, so the message may
         * be mid-update: it is bounded and NUL-terminated either way. */
        char last[sizeof p->last_error];
        memcpy(last, p->last_error, sizeof last);
        last[sizeof last - 1] = '\0';
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
            o_str(o, metrics[i].name);
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
    uint32_t n = group_sites(p, sites, &others, now_raw);
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
            o_str(o, metrics[i].name);
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

static void dump_text(struct out *o)
{
    uint64_t now = now_coarse();
    uint64_t last = o->baseline ? atomic_exchange(&last_text_dump_ns, now)
                                : atomic_load(&last_text_dump_ns);
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

static void dump_json(struct out *o)
{
    uint64_t now = leash__clock_raw();
    o_str(o, "{\"pid\":");
    o_i64(o, getpid());
    o_str(o, ",\"pools\":[");
    int first = 1;
    FOR_EACH_POOL(p)
    {
        leash_pool_stats st;
        gather(p, &st);
        uint64_t v[48];
        values(&st, v);
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
            o_str(o, metrics[i].name);
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
        uint32_t n = group_sites(p, sites, &others, now);
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

static void dump_prometheus(struct out *o)
{
    char name[96];
    for (size_t i = 0; i < NMETRICS; i++) {
        prom_name(name, "leash_pool_", metrics[i].name, metrics[i].gauge ? "" : "_total");
        prom_head(o, name, metrics[i].help, metrics[i].gauge ? "gauge" : "counter");
        FOR_EACH_OPEN_POOL(p)
        {
            leash_pool_stats st;
            gather(p, &st);
            uint64_t v[48];
            values(&st, v);
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
            o_str(o, gone_names[k]);
            o_str(o, "\"} ");
            o_u64(o, ld(&p->gone[k]));
            o_str(o, "\n");
        }
    }
    prom_head(o, "leash_pool_up",
              "1 while the backend answers, 0 while the pool is down (connects failing).",
              "gauge");
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
        {"leash_pool_wait_seconds_total", "Time successful acquires waited for handles.",
         "counter", offsetof(leash_pool_stats, wait_ns_total)},
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
            gather(p, &st);
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
        uint32_t n = group_sites(p, sites, &others, now);
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

static void prom_problems(struct out *o)
{
    prom_head(o, "leash_problems_total",
              "Leaks and misuse by borrow site (kind: reclaimed, suspected, at_close, dirty, "
              "misuse).",
              "counter");
    FOR_EACH_OPEN_POOL(p)
    {
        for (uint32_t i = 0; i <= LEASH_SITE_OTHER; i++) {
            struct leash_site *e = &p->sites[i];
            if (!site_is_first(p, i))
                continue;
            for (int k = 0; k < PROB_KINDS; k++) {
                uint64_t n = site_prob(p, i, k);
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
                o_str(o, prob_name[k]);
                o_str(o, "\"} ");
                o_u64(o, n);
                o_str(o, "\n");
            }
        }
    }
}

static int render(struct out *o_, leash_format fmt);

int leash_stats_dump(int fd, leash_format fmt)
{
    if (fd < 0 ||
        (fmt != LEASH_FORMAT_TEXT && fmt != LEASH_FORMAT_JSON && fmt != LEASH_FORMAT_PROMETHEUS))
        return -1;
    struct out o;
    o.fd = fd;
    o.err = 0;
    o.n = 0;
    o.mem = NULL;
    o.mem_len = o.mem_cap = 0;
    o.baseline = 1;
    return render(&o, fmt);
}

/* Renders a dump into buf (cap bytes, NUL-terminated) without moving the text dump's
 * baseline; returns the length, or -1 if it did not fit (buf then holds a truncated dump).
 * Async-signal-safe. */
long leash__render(char *buf, size_t cap, leash_format fmt)
{
    if (!buf || cap < 2 ||
        (fmt != LEASH_FORMAT_TEXT && fmt != LEASH_FORMAT_JSON && fmt != LEASH_FORMAT_PROMETHEUS))
        return -1;
    struct out o;
    o.fd = -1;
    o.err = 0;
    o.n = 0;
    o.mem = buf;
    o.mem_len = 0;
    o.mem_cap = cap;
    o.baseline = 0;
    buf[0] = '\0';
    int rc = render(&o, fmt);
    return rc < 0 ? -1 : (long)o.mem_len;
}

static int render(struct out *o_, leash_format fmt)
{
    struct out o = *o_;
    atomic_fetch_add(&leash__dumping, 1);
    if (fmt == LEASH_FORMAT_TEXT)
        dump_text(&o);
    else if (fmt == LEASH_FORMAT_JSON)
        dump_json(&o);
    else {
        dump_prometheus(&o);
        prom_problems(&o);
    }
    o_flush(&o);
    atomic_fetch_sub(&leash__dumping, 1);
    o_->mem_len = o.mem_len;
    return o.err ? -1 : 0;
}

/* ---- leak reports ---- */

/* One line for the borrow s holds (word w, read before): skipped (0) if the slot was
 * returned or lent again while its record was read, so a line never mixes two borrows. */
static int handle_line(struct out *o, struct leash_pool *p, struct leash_handle *s, uint64_t w,
                       uint64_t now, const char *why)
{
    uint64_t since = atomic_load_explicit(&s->since, memory_order_relaxed);
    const char *file = atomic_load_explicit(&s->file, memory_order_relaxed);
    const char *func = atomic_load_explicit(&s->func, memory_order_relaxed);
    int line = atomic_load_explicit(&s->line, memory_order_relaxed);
    int tid = atomic_load_explicit(&s->tid, memory_order_relaxed);
    /* acquire fence: the reads above happen before the re-read of the word (a sequence
     * check: the borrow number moves on at every lend) */
    atomic_thread_fence(memory_order_acquire);
    if (atomic_load_explicit(&s->word, memory_order_relaxed) != w)
        return 0;
    o_str(o, "leash: pool \"");
    o_str(o, p->name);
    o_str(o, "\": handle ");
    o_str(o, why);
    o_str(o, ": borrowed at ");
    o_str(o, file);
    o_str(o, ":");
    o_i64(o, line);
    o_str(o, " in ");
    o_str(o, func);
    o_str(o, "() by thread ");
    o_i64(o, tid);
    o_str(o, ", held for ");
    o_dur(o, leash__clock_ns(since, now));
    o_str(o, "\n");
    return 1;
}

static struct out out_fd(int fd)
{
    struct out o;
    o.fd = fd;
    o.err = 0;
    o.n = 0;
    o.mem = NULL;
    o.mem_len = o.mem_cap = 0;
    o.baseline = 0;
    return o;
}

int leash__report_held(int fd, struct leash_pool *p, const char *why)
{
    struct out o = out_fd(fd);
    uint64_t now = leash__clock_raw();
    int n = 0;
    FOR_EACH_SLOT(p, s)
    {
        uint64_t w = slot_word(s);
        if (w_state(w) != SLOT_HELD && w_state(w) != SLOT_ORPHANED)
            continue;
        n += handle_line(&o, p, s, w, now, why);
    }
    o_flush(&o);
    return n;
}

int leash_outstanding(void)
{
    int n = 0;
    atomic_fetch_add(&leash__dumping, 1);
    FOR_EACH_POOL(p)
    n += (int)leash__pool_in_use(p);
    atomic_fetch_sub(&leash__dumping, 1);
    return n;
}

int leash_check_leaks(int fd)
{
    if (fd < 0)
        fd = leash__dump_fd();
    struct out o = out_fd(fd);
    uint64_t now = leash__clock_raw();
    int n = 0;
    atomic_fetch_add(&leash__dumping, 1);
    FOR_EACH_POOL(p)
    {
        FOR_EACH_SLOT(p, s)
        {
            uint64_t w = slot_word(s);
            if (w_state(w) != SLOT_HELD)
                continue;
            n += handle_line(&o, p, s, w, now, "still held");
        }
    }
    atomic_fetch_sub(&leash__dumping, 1);
    o_flush(&o);
    return n;
}

_Noreturn void leash__strict_abort(struct leash_pool *p, struct leash_handle *s, const char *what)
{
    struct out o = out_fd(2);
    o_str(&o, "leash: STRICT: pool \"");
    o_str(&o, p->name);
    o_str(&o, "\" (");
    o_str(&o, p->adapter->kind);
    o_str(&o, "): ");
    o_str(&o, what);
    if (s) {
        uint64_t since = atomic_load_explicit(&s->since, memory_order_relaxed);
        uint64_t now = leash__clock_raw();
        o_str(&o, "\n  borrowed at ");
        o_str(&o, atomic_load_explicit(&s->file, memory_order_relaxed));
        o_str(&o, ":");
        o_i64(&o, atomic_load_explicit(&s->line, memory_order_relaxed));
        o_str(&o, " in ");
        o_str(&o, atomic_load_explicit(&s->func, memory_order_relaxed));
        o_str(&o, "() by thread ");
        o_i64(&o, atomic_load_explicit(&s->tid, memory_order_relaxed));
        o_str(&o, ", ");
        o_dur(&o, leash__clock_ns(since, now));
        o_str(&o, " ago");
    }
    o_str(&o, "\n  (strict mode: LEASH_STRICT=1 or leash_config.strict; aborting)\n");
    o_flush(&o);
    abort();
}
