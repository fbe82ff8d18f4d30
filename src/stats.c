/* Stats: counters, the text / JSON / Prometheus dumps (async-signal-safe), leak reports and
 * the strict-mode report. Nothing here takes a lock or allocates. */
#include "core.h"

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

uint32_t leash__pool_in_use(const struct leash_pool *p)
{
    uint32_t n = 0;
    for (uint32_t i = 0; i < p->nslots; i++)
        n += atomic_load_explicit(&p->slots[i].state, memory_order_relaxed) == SLOT_HELD;
    return n;
}

static void gather(struct leash_pool *p, leash_pool_stats *st)
{
    memset(st, 0, sizeof *st);
    st->name = p->name;
    st->kind = p->adapter->kind;
    st->max_size = p->nslots;
    st->size = atomic_load(&p->size);
    st->waiting = (uint32_t)atomic_load(&p->nwaiters);
    for (uint32_t i = 0; i < p->nslots; i++) {
        struct leash_handle *s = &p->slots[i];
        int state = atomic_load_explicit(&s->state, memory_order_relaxed);
        st->in_use += state == SLOT_HELD;
        st->idle += is_idle_state(state);
        st->acquired += atomic_load_explicit(&s->acquired, memory_order_relaxed);
        st->released += atomic_load_explicit(&s->released, memory_order_relaxed);
        st->hold_ns_total += atomic_load_explicit(&s->hold_ns_total, memory_order_relaxed);
        uint64_t m = atomic_load_explicit(&s->hold_ns_max, memory_order_relaxed);
        if (m > st->hold_ns_max)
            st->hold_ns_max = m;
    }
#define LEASH_GATHER(n) st->n = atomic_load_explicit(&p->n, memory_order_relaxed);
    LEASH_POOL_COUNTERS(LEASH_GATHER)
    st->wait_ns_total = atomic_load_explicit(&p->wait_ns_total, memory_order_relaxed);
    st->wait_ns_max = atomic_load_explicit(&p->wait_ns_max, memory_order_relaxed);
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
    return atomic_load(&p->leaks_reclaimed) + atomic_load(&p->leaks_suspected) +
           atomic_load(&p->leaks_at_close);
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
};
#define NMETRICS (sizeof metrics / sizeof metrics[0])
_Static_assert(NMETRICS <= 32, "the dump baseline holds every metric");

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
                      s->misuse};
    _Static_assert(sizeof all / sizeof all[0] == NMETRICS, "one value per metric");
    memcpy(v, all, sizeof all);
}

/* ---- problem sites ---- */

static const char *const prob_name[PROB_KINDS] = {"reclaimed", "suspected", "at_close", "dirty",
                                                  "misuse"};

void leash__count_problem(struct leash_pool *p, struct leash_handle *s, int kind)
{
    const char *file = atomic_load_explicit(&s->file, memory_order_relaxed);
    const char *func = atomic_load_explicit(&s->func, memory_order_relaxed);
    int line = atomic_load_explicit(&s->line, memory_order_relaxed);
    if (!file)
        file = "?";
    for (int i = 0; i < LEASH_PROBLEM_SITES; i++) {
        struct leash_problem_site *ps = &p->problems[i];
        const char *cur = atomic_load(&ps->file);
        if (!cur) {
            const char *expect = NULL;
            if (atomic_compare_exchange_strong(&ps->file, &expect, file)) {
                atomic_store(&ps->func, func);
                atomic_store(&ps->line, line);
                atomic_fetch_add(&ps->n[kind], 1);
                return;
            }
            cur = expect;
        }
        if (cur == file && atomic_load(&ps->line) == line) {
            atomic_fetch_add(&ps->n[kind], 1);
            return;
        }
    }
    atomic_fetch_add(&p->problems_elsewhere, 1);
}

/* The problem sites of p with any count, in table order. */
static int problem_used(struct leash_problem_site *ps)
{
    if (!atomic_load(&ps->file) || !atomic_load(&ps->line))
        return 0;
    for (int k = 0; k < PROB_KINDS; k++)
        if (atomic_load_explicit(&ps->n[k], memory_order_relaxed))
            return 1;
    return 0;
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
    for (uint32_t i = 0; i < p->nslots; i++) {
        struct leash_handle *s = &p->slots[i];
        if (atomic_load_explicit(&s->state, memory_order_acquire) != SLOT_HELD)
            continue;
        const char *file = atomic_load_explicit(&s->file, memory_order_relaxed);
        const char *func = atomic_load_explicit(&s->func, memory_order_relaxed);
        int line = atomic_load_explicit(&s->line, memory_order_relaxed);
        int tid = atomic_load_explicit(&s->tid, memory_order_relaxed);
        uint64_t since = atomic_load_explicit(&s->since_ns, memory_order_relaxed);
        uint64_t age = now > since ? now - since : 0;
        uint32_t j = 0;
        while (j < n && !(sites[j].file == file && sites[j].line == line))
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
    uint64_t v[32];
    values(&st, v);

    o_str(o, "pool \"");
    o_esc(o, p->name);
    o_str(o, "\" (");
    o_str(o, p->adapter->kind);
    o_str(o, ") ");
    o_str(o, p->target_desc);
    if (atomic_load(&p->closed))
        o_str(o, "  [closed]");
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
    o_str(o, " waiting\n");
    /* Three lines, connections opened, borrows and leaks, of "name value" pairs from the table. */
    static const struct {
        const char *title;
        unsigned char idx[8]; /* metric indexes, 0 ends */
    } lines[] = {
        {"  opened:", {5, 6, 11, 12}},
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

    struct site sites[MAX_SITES];
    uint32_t others;
    uint32_t n = group_sites(p, sites, &others, now);
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

    /* Leaks and misuse by borrow site, with what is new since the last text dump. */
    int titled = 0;
    for (int i = 0; i < LEASH_PROBLEM_SITES; i++) {
        struct leash_problem_site *ps = &p->problems[i];
        if (!problem_used(ps))
            continue;
        if (!titled)
            o_str(o, "  leaks and misuse by borrow site (since the last dump):\n");
        titled = 1;
        o_str(o, "    ");
        for (int k = 0, first = 1; k < PROB_KINDS; k++) {
            uint64_t cnt = atomic_load_explicit(&ps->n[k], memory_order_relaxed);
            if (!cnt)
                continue;
            uint64_t was = atomic_load_explicit(&ps->base[k], memory_order_relaxed);
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
            atomic_store_explicit(&ps->base[k], cnt, memory_order_relaxed);
        }
        o_str(o, "  ");
        o_str(o, atomic_load(&ps->file));
        o_str(o, ":");
        o_i64(o, atomic_load(&ps->line));
        o_str(o, " in ");
        o_str(o, atomic_load(&ps->func));
        o_str(o, "()\n");
    }
    uint64_t elsewhere = atomic_load(&p->problems_elsewhere);
    if (elsewhere) {
        o_str(o, "    ");
        o_u64(o, elsewhere);
        o_str(o, " more at other sites\n");
    }

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
    uint64_t now = now_coarse();
    o_str(o, "{\"pid\":");
    o_i64(o, getpid());
    o_str(o, ",\"pools\":[");
    int first = 1;
    FOR_EACH_POOL(p)
    {
        leash_pool_stats st;
        gather(p, &st);
        uint64_t v[32];
        values(&st, v);
        o_str(o, first ? "{" : ",{");
        first = 0;
        o_str(o, "\"name\":\"");
        o_esc(o, p->name);
        o_str(o, "\",\"kind\":\"");
        o_esc(o, p->adapter->kind);
        o_str(o, "\",\"target\":\"");
        o_esc(o, p->target_desc);
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
        o_str(o, ",\"problem_sites\":[");
        for (int i = 0, first_site = 1; i < LEASH_PROBLEM_SITES; i++) {
            struct leash_problem_site *ps = &p->problems[i];
            if (!problem_used(ps))
                continue;
            o_str(o, first_site ? "{\"file\":\"" : ",{\"file\":\"");
            first_site = 0;
            o_esc(o, atomic_load(&ps->file));
            o_str(o, "\",\"line\":");
            o_i64(o, atomic_load(&ps->line));
            o_str(o, ",\"func\":\"");
            o_esc(o, atomic_load(&ps->func));
            o_str(o, "\"");
            for (int k = 0; k < PROB_KINDS; k++) {
                o_str(o, ",\"");
                o_str(o, prob_name[k]);
                o_str(o, "\":");
                o_u64(o, atomic_load_explicit(&ps->n[k], memory_order_relaxed));
            }
            o_str(o, "}");
        }
        o_str(o, "]}");
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

static void dump_prometheus(struct out *o)
{
    char name[96];
    for (size_t i = 0; i < NMETRICS; i++) {
        size_t n = 0;
        const char *parts[] = {"leash_pool_", metrics[i].name, metrics[i].gauge ? "" : "_total"};
        for (size_t k = 0; k < 3; k++) {
            size_t l = strlen(parts[k]);
            memcpy(name + n, parts[k], l);
            n += l;
        }
        name[n] = '\0';
        prom_head(o, name, metrics[i].help, metrics[i].gauge ? "gauge" : "counter");
        FOR_EACH_POOL(p)
        {
            leash_pool_stats st;
            gather(p, &st);
            uint64_t v[32];
            values(&st, v);
            o_str(o, name);
            prom_labels(o, p);
            o_str(o, " ");
            o_u64(o, v[i]);
            o_str(o, "\n");
        }
    }
    static const struct {
        const char *name, *help, *type;
        size_t off;
    } times[] = {
        {"leash_pool_wait_seconds_total", "Time spent waiting for handles.", "counter",
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
        FOR_EACH_POOL(p)
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
    uint64_t now = now_coarse();
    prom_head(o, "leash_held_handles", "Handles held right now, by borrow site.", "gauge");
    FOR_EACH_POOL(p)
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
    FOR_EACH_POOL(p)
    {
        for (int i = 0; i < LEASH_PROBLEM_SITES; i++) {
            struct leash_problem_site *ps = &p->problems[i];
            if (!problem_used(ps))
                continue;
            for (int k = 0; k < PROB_KINDS; k++) {
                uint64_t n = atomic_load_explicit(&ps->n[k], memory_order_relaxed);
                if (!n)
                    continue;
                o_str(o, "leash_problems_total{pool=\"");
                o_esc(o, p->name);
                o_str(o, "\",site=\"");
                o_esc(o, atomic_load(&ps->file));
                o_str(o, ":");
                o_i64(o, atomic_load(&ps->line));
                o_str(o, "\",function=\"");
                o_esc(o, atomic_load(&ps->func));
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

static void handle_line(struct out *o, struct leash_pool *p, struct leash_handle *s, uint64_t now,
                        const char *why)
{
    uint64_t since = atomic_load_explicit(&s->since_ns, memory_order_relaxed);
    o_str(o, "leash: pool \"");
    o_str(o, p->name);
    o_str(o, "\": handle ");
    o_str(o, why);
    o_str(o, ": borrowed at ");
    o_str(o, atomic_load_explicit(&s->file, memory_order_relaxed));
    o_str(o, ":");
    o_i64(o, atomic_load_explicit(&s->line, memory_order_relaxed));
    o_str(o, " in ");
    o_str(o, atomic_load_explicit(&s->func, memory_order_relaxed));
    o_str(o, "() by thread ");
    o_i64(o, atomic_load_explicit(&s->tid, memory_order_relaxed));
    o_str(o, ", held for ");
    o_dur(o, now > since ? now - since : 0);
    o_str(o, "\n");
}

int leash__report_held(int fd, struct leash_pool *p, const char *why)
{
    struct out o = {.fd = fd};
    uint64_t now = now_coarse();
    int n = 0;
    for (uint32_t i = 0; i < p->nslots; i++) {
        struct leash_handle *s = &p->slots[i];
        int st = atomic_load(&s->state);
        if (st != SLOT_HELD && st != SLOT_ORPHANED)
            continue;
        handle_line(&o, p, s, now, why);
        n++;
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
    struct out o = {.fd = fd};
    uint64_t now = now_coarse();
    int n = 0;
    atomic_fetch_add(&leash__dumping, 1);
    FOR_EACH_POOL(p)
    {
        for (uint32_t i = 0; i < p->nslots; i++) {
            struct leash_handle *s = &p->slots[i];
            if (atomic_load(&s->state) != SLOT_HELD)
                continue;
            handle_line(&o, p, s, now, "still held");
            n++;
        }
    }
    atomic_fetch_sub(&leash__dumping, 1);
    o_flush(&o);
    return n;
}

_Noreturn void leash__strict_abort(struct leash_pool *p, struct leash_handle *s, const char *what)
{
    struct out o = {.fd = 2};
    o_str(&o, "leash: STRICT: pool \"");
    o_str(&o, p->name);
    o_str(&o, "\" (");
    o_str(&o, p->adapter->kind);
    o_str(&o, "): ");
    o_str(&o, what);
    if (s) {
        uint64_t since = atomic_load_explicit(&s->since_ns, memory_order_relaxed);
        uint64_t now = now_coarse();
        o_str(&o, "\n  borrowed at ");
        o_str(&o, atomic_load_explicit(&s->file, memory_order_relaxed));
        o_str(&o, ":");
        o_i64(&o, atomic_load_explicit(&s->line, memory_order_relaxed));
        o_str(&o, " in ");
        o_str(&o, atomic_load_explicit(&s->func, memory_order_relaxed));
        o_str(&o, "() by thread ");
        o_i64(&o, atomic_load_explicit(&s->tid, memory_order_relaxed));
        o_str(&o, ", ");
        o_dur(&o, now > since ? now - since : 0);
        o_str(&o, " ago");
    }
    o_str(&o, "\n  (strict mode: LEASH_STRICT=1 or leash_config.strict; aborting)\n");
    o_flush(&o);
    abort();
}
