/* Stats: gathering a pool's counters, the dump entry points (the dumps themselves are in
 * dump-text.c and dump-prom.c), leak reports and the strict-mode report. Nothing here takes a
 * lock or allocates. */
#include "dump.h"
#include "shm.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

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
void leash__gather(struct leash_pool *p, leash_pool_stats *st)
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
    leash__gather(p, out);
    return LEASH_OK;
}

uint64_t leash_pool_leaks(leash_pool *p)
{
    if (!p || p->magic != LEASH_POOL_MAGIC)
        return 0;
    leash_pool_stats st;
    leash__gather(p, &st);
    return st.leaks_reclaimed + st.leaks_suspected + st.leaks_at_close;
}

const struct metric leash__metrics[] = {
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
const size_t leash__nmetrics = sizeof leash__metrics / sizeof leash__metrics[0];
_Static_assert(sizeof leash__metrics / sizeof leash__metrics[0] <= METRICS_MAX,
               "the dump baseline holds every metric");

void leash__values(const leash_pool_stats *s, uint64_t *v)
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
    _Static_assert(sizeof all / sizeof all[0] == sizeof leash__metrics / sizeof leash__metrics[0],
                   "one value per metric");
    memcpy(v, all, sizeof all);
}

uint32_t leash__group_sites(struct leash_pool *p, struct site *sites, uint32_t *others,
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

static int render(struct out *o_, leash_format fmt);
static struct out out_fd(int fd);

int leash_stats_dump(int fd, leash_format fmt)
{
    if (fd < 0 ||
        (fmt != LEASH_FORMAT_TEXT && fmt != LEASH_FORMAT_JSON && fmt != LEASH_FORMAT_PROMETHEUS))
        return -1;
    struct out o = out_fd(fd);
    o.baseline = 1; /* a dump asked for moves the text dump's baseline */
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
        leash__dump_text(&o);
    else if (fmt == LEASH_FORMAT_JSON)
        leash__dump_json(&o);
    else {
        leash__dump_prometheus(&o);
        leash__prom_problems(&o);
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
    leash__shm_forget(); /* an aborted process leaves no stats page behind */
    abort();
}
