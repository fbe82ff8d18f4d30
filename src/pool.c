/* Pools: open and close, the lock-free idle stack, acquire and release, guards, misuse. */
#include "core.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* How long the first waiter may be overtaken by threads that are not queued. */
#define BARGE_NS 2000000ull

/* How a borrow ends, for give_back(). */
enum { END_RELEASE, END_RECLAIM, END_DISCARD };

static const leash_pool_options defaults = {
    .max_size = 10,
    .min_idle = 0,
    .acquire_timeout_ms = 1000,
    .max_waiters = 0,
    .idle_timeout_ms = 600000,
    .max_lifetime_ms = 1800000,
    .validate_idle_ms = 500,
    .leak_threshold_ms = 0,
};

static inline uint64_t ld(_Atomic uint64_t *a)
{
    return atomic_load_explicit(a, memory_order_relaxed);
}

/* Owner-only counter: the slot's owner is the only writer, so no read-modify-write. */
static inline void own_inc(_Atomic uint64_t *a, uint64_t by)
{
    atomic_store_explicit(a, ld(a) + by, memory_order_relaxed);
}

static inline uint64_t tick(void)
{
    return atomic_load_explicit(&leash__tick, memory_order_relaxed);
}

static inline void count(_Atomic uint64_t *a)
{
    atomic_fetch_add_explicit(a, 1, memory_order_relaxed);
}

static void count_max(_Atomic uint64_t *a, uint64_t v)
{
    uint64_t cur = ld(a);
    while (v > cur &&
           !atomic_compare_exchange_weak_explicit(a, &cur, v, memory_order_relaxed,
                                                  memory_order_relaxed))
        ;
}

/* ---- the idle stack (Treiber stack over slot indexes, tagged against ABA) ---- */

static struct leash_handle *stack_pop(struct leash_pool *p)
{
    uint64_t old = atomic_load_explicit(&p->head, memory_order_seq_cst);
    for (;;) {
        uint32_t idx = (uint32_t)old;
        if (!idx)
            return NULL;
        struct leash_handle *s = &p->slots[idx - 1];
        uint32_t next = atomic_load_explicit(&s->next, memory_order_relaxed);
        uint64_t nw = (((old >> 32) + 1) << 32) | next;
        if (atomic_compare_exchange_weak_explicit(&p->head, &old, nw, memory_order_acq_rel,
                                                  memory_order_acquire))
            return s;
    }
}

static void stack_push(struct leash_pool *p, struct leash_handle *s)
{
    uint64_t old = atomic_load_explicit(&p->head, memory_order_relaxed);
    for (;;) {
        atomic_store_explicit(&s->next, (uint32_t)old, memory_order_relaxed);
        uint64_t nw = (((old >> 32) + 1) << 32) | (s->index + 1);
        if (atomic_compare_exchange_weak_explicit(&p->head, &old, nw, memory_order_seq_cst,
                                                  memory_order_relaxed))
            return;
    }
}

/* ---- waiters (pool lock held) ---- */

static int can_serve(struct leash_pool *p)
{
    return atomic_load(&p->head) != 0 || atomic_load(&p->size) < p->nslots ||
           atomic_load(&p->closed);
}

static void signal_head_locked(struct leash_pool *p)
{
    struct leash_waiter *w = p->wait_head;
    if (w && !w->signaled) {
        w->signaled = 1;
        pthread_cond_signal(&w->cond);
    }
}

static void wake_head(struct leash_pool *p)
{
    pthread_mutex_lock(&p->lock);
    signal_head_locked(p);
    pthread_mutex_unlock(&p->lock);
}

/* ---- connections ---- */

static uint32_t rand_locked(struct leash_pool *p)
{
    uint32_t x = p->rng;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    p->rng = x;
    return x;
}

/* v less up to 10%, so a pool's connections do not all expire at once. */
static uint64_t jitter(struct leash_pool *p, uint64_t v)
{
    uint64_t span = v / 10;
    if (!span)
        return v;
    pthread_mutex_lock(&p->lock);
    uint32_t r = rand_locked(p);
    pthread_mutex_unlock(&p->lock);
    return v - (uint64_t)r % span;
}

/* Connects into s, which the caller owns (CONNECTING). Returns LEASH_OK or records the
 * failure (pool lock not held). */
static leash_status connect_into(struct leash_pool *p, struct leash_handle *s)
{
    char err[256] = "";
    void *c = p->adapter->connect(p->ctx, p->target, err, sizeof err);
    if (!c) {
        char clean[256];
        leash__redact(err[0] ? err : "the adapter gave no reason", clean, sizeof clean);
        count(&p->connect_failures);
        pthread_mutex_lock(&p->lock);
        snprintf(p->last_error, sizeof p->last_error, "%s", clean);
        pthread_mutex_unlock(&p->lock);
        return leash__fail(LEASH_ECONNECT, "pool \"%s\" (%s): connect to %s failed: %s", p->name,
                           p->adapter->kind, p->target_desc, clean);
    }
    uint64_t now = tick();
    s->conn = c;
    s->conn_gen = atomic_load(&leash__fork_gen);
    atomic_store_explicit(&s->expire_ns, now + jitter(p, p->lifetime_ns), memory_order_relaxed);
    atomic_store_explicit(&s->idle_limit, jitter(p, p->idle_ns), memory_order_relaxed);
    atomic_store_explicit(&s->broken, 0, memory_order_relaxed);
    atomic_store_explicit(&s->idle_since, now, memory_order_relaxed);
    count(&p->created);
    return LEASH_OK;
}

/* Drops s's connection: destroyed, or abandoned if it was made before a fork. */
static void drop_conn(struct leash_pool *p, struct leash_handle *s)
{
    void *c = s->conn;
    s->conn = NULL;
    if (!c)
        return;
    if (s->conn_gen != atomic_load(&leash__fork_gen)) {
        if (p->adapter->abandon)
            p->adapter->abandon(p->ctx, c);
    } else {
        p->adapter->destroy(p->ctx, c);
    }
    count(&p->destroyed);
}

/* s (owned by the caller, connection dropped) becomes EMPTY; its capacity goes to the
 * first waiter. */
static void slot_free(struct leash_pool *p, struct leash_handle *s)
{
    pthread_mutex_lock(&p->lock);
    atomic_store(&s->state, SLOT_EMPTY);
    atomic_store(&p->size, atomic_load(&p->size) - 1);
    signal_head_locked(p);
    pthread_mutex_unlock(&p->lock);
}

/* Reserves an EMPTY slot for a new connection (pool lock held), or NULL at capacity. */
static struct leash_handle *reserve_locked(struct leash_pool *p)
{
    if (atomic_load(&p->size) >= p->nslots)
        return NULL;
    for (uint32_t i = 0; i < p->nslots; i++) {
        struct leash_handle *s = &p->slots[i];
        if (atomic_load_explicit(&s->state, memory_order_relaxed) == SLOT_EMPTY) {
            atomic_store(&s->state, SLOT_CONNECTING);
            atomic_store(&p->size, atomic_load(&p->size) + 1);
            return s;
        }
    }
    return NULL;
}

/* ---- lending ---- */

static inline void lend(struct leash_handle *s, uint64_t now, const char *file, int line,
                        const char *func)
{
    atomic_store_explicit(&s->file, file, memory_order_relaxed);
    atomic_store_explicit(&s->func, func, memory_order_relaxed);
    atomic_store_explicit(&s->line, line, memory_order_relaxed);
    atomic_store_explicit(&s->tid, leash__tid(), memory_order_relaxed);
    atomic_store_explicit(&s->since_ns, now, memory_order_relaxed);
    own_inc(&s->acquired, 1);
    atomic_store_explicit(&s->state, SLOT_HELD, memory_order_release);
}

/* s came off the idle stack but is too old or needs validating: check it, replace the
 * connection if needed. Returns LEASH_OK with s usable, or a failure with s freed. */
static leash_status refresh(struct leash_pool *p, struct leash_handle *s, uint64_t now)
{
    int replace = now >= ld(&s->expire_ns);
    if (!replace && p->adapter->validate &&
        now - ld(&s->idle_since) > p->validate_ns) {
        if (p->adapter->validate(p->ctx, s->conn) != 0) {
            count(&p->validation_failures);
            replace = 1;
        }
    }
    if (!replace)
        return LEASH_OK;
    drop_conn(p, s);
    atomic_store(&s->state, SLOT_CONNECTING);
    leash_status st = connect_into(p, s);
    if (st != LEASH_OK)
        slot_free(p, s);
    return st;
}

static inline int needs_refresh(const struct leash_pool *p, struct leash_handle *s,
                                uint64_t now)
{
    return now >= ld(&s->expire_ns) ||
           (p->adapter->validate && now - ld(&s->idle_since) > p->validate_ns);
}

static void timeout_message(struct leash_pool *p, int timeout_ms)
{
    char last[300] = "";
    pthread_mutex_lock(&p->lock);
    if (p->last_error[0])
        snprintf(last, sizeof last, "; last connect error: %s", p->last_error);
    pthread_mutex_unlock(&p->lock);
    leash__fail(LEASH_ETIMEDOUT,
                "pool \"%s\": no handle free within %d ms (size %u of %u, %u in use, %d "
                "waiting)%s",
                p->name, timeout_ms, atomic_load(&p->size), p->nslots, leash__pool_in_use(p),
                atomic_load(&p->nwaiters), last);
}

static leash_handle *acquire_slow(struct leash_pool *p, int timeout_ms, const char *file,
                                  int line, const char *func)
{
    uint64_t t0 = leash__now_ns();
    int tmo = timeout_ms < 0 ? p->timeout_ms : timeout_ms;
    atomic_store_explicit(&p->active, 1, memory_order_relaxed);
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += tmo / 1000;
    deadline.tv_nsec += (long)(tmo % 1000) * 1000000L;
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000L;
    }

    struct leash_handle *s = NULL;
    int create = 0;
    leash_status st = LEASH_OK;
    struct leash_waiter w = {0};

    pthread_mutex_lock(&p->lock);
    if (atomic_load(&p->closed)) {
        pthread_mutex_unlock(&p->lock);
        return leash__fail_null(LEASH_ECLOSED, "pool \"%s\" is closed", p->name);
    }
    /* No queue: take what there is without waiting. */
    if (!p->wait_head) {
        s = stack_pop(p);
        if (!s) {
            s = reserve_locked(p);
            create = s != NULL;
        }
    }
    if (!s) {
        if (p->max_waiters && atomic_load(&p->nwaiters) >= p->max_waiters) {
            int n = atomic_load(&p->nwaiters);
            pthread_mutex_unlock(&p->lock);
            count(&p->rejected);
            return leash__fail_null(LEASH_EBUSY,
                                    "pool \"%s\": %d threads already waiting (max_waiters %d)",
                                    p->name, n, p->max_waiters);
        }
        pthread_condattr_t ca;
        pthread_condattr_init(&ca);
        pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        pthread_cond_init(&w.cond, &ca);
        pthread_condattr_destroy(&ca);
        if (p->wait_tail) {
            p->wait_tail->next = &w;
        } else {
            p->wait_head = &w;
            atomic_store_explicit(&p->head_since, tick(), memory_order_relaxed);
        }
        p->wait_tail = &w;
        atomic_fetch_add(&p->nwaiters, 1);
        for (;;) {
            if (atomic_load(&p->closed)) {
                st = LEASH_ECLOSED;
                break;
            }
            if (p->wait_head == &w) {
                s = stack_pop(p);
                if (s)
                    break;
                s = reserve_locked(p);
                if (s) {
                    create = 1;
                    break;
                }
            }
            if (tmo == 0) {
                st = LEASH_ETIMEDOUT;
                break;
            }
            int rc = pthread_cond_timedwait(&w.cond, &p->lock, &deadline);
            w.signaled = 0;
            if (rc == ETIMEDOUT && p->wait_head != &w) {
                st = LEASH_ETIMEDOUT;
                break;
            }
            if (rc == ETIMEDOUT) {
                /* The head gets one last look before giving up. */
                s = stack_pop(p);
                if (!s && (s = reserve_locked(p)) != NULL)
                    create = 1;
                if (!s && !atomic_load(&p->closed))
                    st = LEASH_ETIMEDOUT;
                if (s || st)
                    break;
            }
        }
        /* Leave the queue; pass the turn on if there is something to take. */
        struct leash_waiter **pp = &p->wait_head, *prev = NULL;
        while (*pp != &w) {
            prev = *pp;
            pp = &(*pp)->next;
        }
        *pp = w.next;
        if (p->wait_tail == &w)
            p->wait_tail = prev;
        if (!prev && w.next)
            atomic_store_explicit(&p->head_since, tick(), memory_order_relaxed);
        atomic_fetch_sub(&p->nwaiters, 1);
        if (p->wait_head && can_serve(p))
            signal_head_locked(p);
        pthread_cond_destroy(&w.cond);
    }
    pthread_mutex_unlock(&p->lock);

    uint64_t waited = leash__now_ns() - t0;
    atomic_fetch_add_explicit(&p->wait_ns_total, waited, memory_order_relaxed);
    count_max(&p->wait_ns_max, waited);

    if (st == LEASH_ECLOSED)
        return leash__fail_null(LEASH_ECLOSED, "pool \"%s\" was closed while waiting", p->name);
    if (st == LEASH_ETIMEDOUT) {
        count(&p->timeouts);
        timeout_message(p, tmo);
        return NULL;
    }
    uint64_t now = tick();
    if (create) {
        if (connect_into(p, s) != LEASH_OK) {
            slot_free(p, s);
            return NULL;
        }
    } else if (needs_refresh(p, s, now) && refresh(p, s, now) != LEASH_OK) {
        return NULL;
    }
    if (LEASH_UNLIKELY(atomic_load(&p->closed))) {
        drop_conn(p, s);
        slot_free(p, s);
        return leash__fail_null(LEASH_ECLOSED, "pool \"%s\" was closed while connecting",
                                p->name);
    }
    lend(s, now, file, line, func);
    return s;
}

leash_handle *leash_acquire_at(leash_pool *p, int timeout_ms, const char *file, int line,
                               const char *func)
{
    if (LEASH_UNLIKELY(!p || p->magic != LEASH_POOL_MAGIC))
        return leash__fail_null(LEASH_EINVAL, "leash_acquire: %s", p ? "not a pool" : "pool is NULL");
    if (LEASH_UNLIKELY(timeout_ms < -1))
        return leash__fail_null(LEASH_EINVAL,
                                "leash_acquire: timeout_ms %d (use -1, 0 or a positive value)",
                                timeout_ms);
    if (LEASH_UNLIKELY(ld(&p->fork_gen) != atomic_load_explicit(&leash__fork_gen,
                                                                  memory_order_relaxed)))
        leash__after_fork();
    if (LEASH_UNLIKELY(atomic_load_explicit(&p->closed, memory_order_relaxed)))
        return leash__fail_null(LEASH_ECLOSED, "pool \"%s\" is closed", p->name);
    if (!file)
        file = "?";
    if (!func)
        func = "?";
    /* Threads not yet queued may take an idle handle while the first waiter has waited
     * less than BARGE_NS: a thread that just released keeps running instead of sleeping
     * behind the queue (no convoy). Past that, newcomers queue up behind it (no
     * starvation). Waiters themselves are always served in arrival order. */
    if (LEASH_LIKELY(atomic_load_explicit(&p->nwaiters, memory_order_relaxed) == 0 ||
                     tick() - ld(&p->head_since) < BARGE_NS)) {
        if (LEASH_UNLIKELY(!atomic_load_explicit(&p->active, memory_order_relaxed)))
            atomic_store_explicit(&p->active, 1, memory_order_relaxed);
        struct leash_handle *s = stack_pop(p);
        if (LEASH_LIKELY(s != NULL)) {
            uint64_t now = tick();
            if (LEASH_UNLIKELY(needs_refresh(p, s, now)) && refresh(p, s, now) != LEASH_OK)
                return NULL;
            lend(s, now, file, line, func);
            return s;
        }
    }
    return acquire_slow(p, timeout_ms, file, line, func);
}

/* ---- giving back ---- */

static const char *state_name(int st)
{
    switch (st) {
    case SLOT_EMPTY:
        return "empty";
    case SLOT_CONNECTING:
        return "connecting";
    case SLOT_IDLE:
        return "idle";
    case SLOT_HELD:
        return "held";
    case SLOT_RETURNING:
        return "being returned";
    default:
        return "orphaned";
    }
}

/* A call on a handle that is not checked out: counted, logged once per borrow site,
 * strict mode aborts. */
static void misuse(struct leash_handle *s, const char *what)
{
    struct leash_pool *p = s->pool;
    count(&p->misuse);
    char msg[200];
    snprintf(msg, sizeof msg, "%s (the handle is %s)", what,
             state_name(atomic_load(&s->state)));
    if (leash__is_strict())
        leash__strict_abort(p, s, msg);
    const char *file = atomic_load_explicit(&s->file, memory_order_relaxed);
    int line = atomic_load_explicit(&s->line, memory_order_relaxed);
    const char *func = atomic_load_explicit(&s->func, memory_order_relaxed);
    leash__log_once(file ? (const void *)file : (const void *)s, line, LEASH_LOG_WARN,
                    "pool \"%s\": misuse: %s; last borrowed at %s:%d in %s()", p->name, msg,
                    file ? file : "?", line, func ? func : "?");
    leash__fail(LEASH_EMISUSE, "pool \"%s\": %s", p->name, msg);
}

static int valid_slot(struct leash_handle *s)
{
    return s->magic == LEASH_SLOT_MAGIC && s->pool && s->pool->magic == LEASH_POOL_MAGIC;
}

/* A handle released after its pool closed: the borrow was counted at close. */
static void late_after_close(struct leash_handle *s)
{
    int expect = SLOT_ORPHANED;
    if (!atomic_compare_exchange_strong(&s->state, &expect, SLOT_RETURNING))
        return;
    struct leash_pool *p = s->pool;
    drop_conn(p, s);
    slot_free(p, s);
}

/* Destroys s's connection and frees the slot. */
static void drop_slot(struct leash_pool *p, struct leash_handle *s)
{
    drop_conn(p, s);
    slot_free(p, s);
}

/* Ends the borrow of s (state RETURNING, owned by the caller). */
static inline void give_back(struct leash_pool *p, struct leash_handle *s, int how)
{
    uint64_t now = tick();
    uint64_t since = ld(&s->since_ns);
    uint64_t held = now > since ? now - since : 0;
    own_inc(&s->hold_ns_total, held);
    if (held > ld(&s->hold_ns_max))
        atomic_store_explicit(&s->hold_ns_max, held, memory_order_relaxed);
    if (LEASH_UNLIKELY(ld(&s->suspected) == ld(&s->acquired)))
        count(&p->returned_late);

    if (how == END_DISCARD) {
        count(&p->discarded);
        drop_slot(p, s);
        return;
    }
    if (how == END_RELEASE)
        own_inc(&s->released, 1);
    else
        count(&p->leaks_reclaimed);

    if (LEASH_UNLIKELY(atomic_load_explicit(&s->broken, memory_order_relaxed) ||
                       s->conn_gen != atomic_load_explicit(&leash__fork_gen,
                                                           memory_order_relaxed) ||
                       atomic_load_explicit(&p->closed, memory_order_relaxed))) {
        drop_slot(p, s);
        return;
    }
    if (p->adapter->reset) {
        int r = p->adapter->reset(p->ctx, s->conn);
        if (LEASH_UNLIKELY(r != LEASH_RESET_CLEAN)) {
            if (r == LEASH_RESET_CLEANED || r == LEASH_RESET_DIRTY) {
                count(&p->dirty_returns);
                if (leash__is_strict() && how == END_RELEASE)
                    leash__strict_abort(p, s,
                                        r == LEASH_RESET_CLEANED
                                            ? "returned dirty (state left behind; cleaned)"
                                            : "returned dirty (state left behind; destroyed)");
                const char *file = atomic_load_explicit(&s->file, memory_order_relaxed);
                int line = atomic_load_explicit(&s->line, memory_order_relaxed);
                leash__log_once(file, line, LEASH_LOG_WARN,
                                "pool \"%s\": handle borrowed at %s:%d in %s() was returned "
                                "dirty; %s",
                                p->name, file, line,
                                atomic_load_explicit(&s->func, memory_order_relaxed),
                                r == LEASH_RESET_CLEANED ? "cleaned" : "destroyed");
            }
            if (r != LEASH_RESET_CLEANED) {
                drop_slot(p, s);
                return;
            }
        }
    }
    atomic_store_explicit(&s->idle_since, now, memory_order_relaxed);
    atomic_store_explicit(&s->state, SLOT_IDLE, memory_order_relaxed);
    stack_push(p, s);
    if (LEASH_UNLIKELY(atomic_load(&p->nwaiters) != 0))
        wake_head(p);
    if (LEASH_UNLIKELY(atomic_load(&p->closed)))
        leash__pool_destroy_orphans(p);
}

/* Claims s for ending its borrow: 1 if the caller now owns it. */
static int claim(struct leash_handle *s)
{
    int expect = SLOT_HELD;
    return atomic_compare_exchange_strong_explicit(&s->state, &expect, SLOT_RETURNING,
                                                   memory_order_acquire,
                                                   memory_order_relaxed);
}

static inline void end_borrow(leash_handle **hp, int how, const char *fn)
{
    if (!hp || !*hp)
        return;
    struct leash_handle *s = *hp;
    *hp = NULL;
    if (LEASH_UNLIKELY(!valid_slot(s))) {
        leash__log_once(fn, 0, LEASH_LOG_ERROR, "%s: not a leash handle (ignored)", fn);
        leash__fail(LEASH_EINVAL, "%s: not a leash handle", fn);
        return;
    }
    if (LEASH_UNLIKELY(!claim(s))) {
        if (atomic_load(&s->state) == SLOT_ORPHANED) {
            late_after_close(s);
            return;
        }
        misuse(s, how == END_DISCARD ? "discard of a handle that is not checked out"
                                     : "release of a handle that is not checked out "
                                       "(double release?)");
        return;
    }
    give_back(s->pool, s, how);
}

void leash_release(leash_handle **h)
{
    end_borrow(h, END_RELEASE, "leash_release");
}

void leash_discard(leash_handle **h)
{
    end_borrow(h, END_DISCARD, "leash_discard");
}

/* The guards act only on a handle this thread still holds: one released through a copy
 * (even if its slot was lent again since) is left alone. */
static int held_here(struct leash_handle *s)
{
    return valid_slot(s) && atomic_load(&s->state) == SLOT_HELD &&
           atomic_load_explicit(&s->tid, memory_order_relaxed) == leash__tid();
}

void leash__guard_check(leash_handle **hp)
{
    if (!hp || !*hp)
        return;
    struct leash_handle *s = *hp;
    *hp = NULL;
    if (valid_slot(s) && atomic_load(&s->state) == SLOT_ORPHANED) {
        late_after_close(s);
        return;
    }
    if (!held_here(s))
        return;
    struct leash_pool *p = s->pool;
    if (leash__is_strict())
        leash__strict_abort(p, s, "handle still held at scope exit (LEASH_GUARD): leaked");
    if (!claim(s))
        return;
    const char *file = atomic_load_explicit(&s->file, memory_order_relaxed);
    int line = atomic_load_explicit(&s->line, memory_order_relaxed);
    leash__log_once(file, line, LEASH_LOG_WARN,
                    "pool \"%s\": handle borrowed at %s:%d in %s() was still held at scope "
                    "exit; reclaimed (leaks_reclaimed)",
                    p->name, file, line, atomic_load_explicit(&s->func, memory_order_relaxed));
    give_back(p, s, END_RECLAIM);
}

void leash__guard_release(leash_handle **hp)
{
    if (!hp || !*hp)
        return;
    struct leash_handle *s = *hp;
    if (valid_slot(s) && atomic_load(&s->state) == SLOT_ORPHANED) {
        *hp = NULL;
        late_after_close(s);
        return;
    }
    if (!held_here(s)) {
        *hp = NULL;
        return;
    }
    leash_release(hp);
}

/* ---- handle accessors ---- */

void *leash_conn(leash_handle *s)
{
    if (!s)
        return leash__fail_null(LEASH_EINVAL, "leash_conn: handle is NULL");
    if (!valid_slot(s))
        return leash__fail_null(LEASH_EINVAL, "leash_conn: not a leash handle");
    int st = atomic_load_explicit(&s->state, memory_order_acquire);
    if (LEASH_LIKELY(st == SLOT_HELD || st == SLOT_ORPHANED))
        return s->conn;
    misuse(s, "use of a handle that is not checked out");
    return NULL;
}

void *leash_conn_of(leash_handle *s, const leash_adapter *adapter)
{
    if (!s || !valid_slot(s) || !adapter || s->pool->adapter != adapter)
        return NULL;
    int st = atomic_load_explicit(&s->state, memory_order_acquire);
    if (LEASH_LIKELY(st == SLOT_HELD || st == SLOT_ORPHANED))
        return s->conn;
    misuse(s, "use of a handle that is not checked out");
    return NULL;
}

void leash_mark_broken(leash_handle *s)
{
    if (!s || !valid_slot(s))
        return;
    int st = atomic_load(&s->state);
    if (st == SLOT_HELD || st == SLOT_ORPHANED)
        atomic_store_explicit(&s->broken, 1, memory_order_relaxed);
}

leash_pool *leash_handle_pool(leash_handle *s)
{
    return s && valid_slot(s) ? s->pool : NULL;
}

/* ---- open, close, maintenance ---- */

static int check_opt(const char *field, int v)
{
    if (v < 0) {
        leash__fail(LEASH_EINVAL, "pool option %s is %d: must be >= 0 (0 means the default)",
                    field, v);
        return 0;
    }
    return 1;
}

static leash_status resolve_options(struct leash_pool *p, const leash_pool_options *o)
{
    leash_pool_options d = o ? *o : defaults;
    if (!check_opt("max_size", d.max_size) || !check_opt("min_idle", d.min_idle) ||
        !check_opt("acquire_timeout_ms", d.acquire_timeout_ms) ||
        !check_opt("max_waiters", d.max_waiters) ||
        !check_opt("idle_timeout_ms", d.idle_timeout_ms) ||
        !check_opt("max_lifetime_ms", d.max_lifetime_ms) ||
        !check_opt("validate_idle_ms", d.validate_idle_ms) ||
        !check_opt("leak_threshold_ms", d.leak_threshold_ms))
        return LEASH_EINVAL;
#define DEFAULT(f)                                                                             \
    if (d.f == 0)                                                                              \
        d.f = defaults.f;
    DEFAULT(max_size)
    DEFAULT(acquire_timeout_ms)
    DEFAULT(idle_timeout_ms)
    DEFAULT(max_lifetime_ms)
    DEFAULT(validate_idle_ms)
#undef DEFAULT
    if (d.max_size > LEASH_POOL_SIZE_MAX)
        return leash__fail(LEASH_EINVAL, "pool option max_size %d is over the limit %d",
                           d.max_size, LEASH_POOL_SIZE_MAX);
    if (d.min_idle > d.max_size)
        return leash__fail(LEASH_EINVAL, "pool option min_idle %d is more than max_size %d",
                           d.min_idle, d.max_size);
    p->nslots = (uint32_t)d.max_size;
    p->min_idle = d.min_idle;
    p->timeout_ms = d.acquire_timeout_ms;
    p->max_waiters = d.max_waiters;
    p->idle_ns = (uint64_t)d.idle_timeout_ms * 1000000u;
    p->lifetime_ns = (uint64_t)d.max_lifetime_ms * 1000000u;
    p->validate_ns = (uint64_t)d.validate_idle_ms * 1000000u;
    p->leak_ns = (uint64_t)d.leak_threshold_ms * 1000000u;
    return LEASH_OK;
}

static leash_status check_name(const char *name)
{
    if (!name)
        return leash__fail(LEASH_EINVAL, "pool name is NULL");
    size_t n = strnlen(name, LEASH_NAME_MAX + 1);
    if (n == 0)
        return leash__fail(LEASH_EINVAL, "pool name is empty");
    if (n > LEASH_NAME_MAX)
        return leash__fail(LEASH_EINVAL, "pool name is longer than %d bytes", LEASH_NAME_MAX);
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)name[i] < 0x20 || name[i] == 0x7f)
            return leash__fail(LEASH_EINVAL,
                               "pool name has a control character at byte %zu", i);
    return LEASH_OK;
}

leash_pool *leash_pool_open_with(const char *name, const leash_adapter *adapter, void *ctx,
                                 const char *target, const leash_pool_options *opts)
{
    struct leash_pool *p = NULL;
    leash_status st = leash__ensure_init();
    if (st != LEASH_OK)
        goto fail;
    st = check_name(name);
    if (st != LEASH_OK)
        goto fail;
    if (!adapter || !adapter->connect || !adapter->destroy || !adapter->kind) {
        st = leash__fail(LEASH_EINVAL, "pool \"%s\": %s", name,
                         !adapter ? "adapter is NULL"
                                  : "the adapter needs kind, connect and destroy");
        goto fail;
    }
    p = calloc(1, sizeof *p);
    if (!p) {
        st = leash__fail(LEASH_ENOMEM, "pool \"%s\": out of memory", name);
        goto fail;
    }
    st = resolve_options(p, opts);
    if (st != LEASH_OK)
        goto fail;
    p->magic = LEASH_POOL_MAGIC;
    memcpy(p->name, name, strlen(name) + 1);
    p->adapter = adapter;
    p->target = strdup(target ? target : "");
    p->slots = aligned_alloc(64, ((sizeof(struct leash_handle) * p->nslots + 63) / 64) * 64);
    if (!p->target || !p->slots) {
        st = leash__fail(LEASH_ENOMEM, "pool \"%s\": out of memory", name);
        goto fail;
    }
    memset(p->slots, 0, sizeof(struct leash_handle) * p->nslots);
    for (uint32_t i = 0; i < p->nslots; i++) {
        p->slots[i].magic = LEASH_SLOT_MAGIC;
        p->slots[i].index = i;
        p->slots[i].pool = p;
        atomic_store(&p->slots[i].suspected, UINT64_MAX);
    }
    if (adapter->describe)
        adapter->describe(ctx, p->target, p->target_desc, sizeof p->target_desc);
    else
        leash__redact(p->target, p->target_desc, sizeof p->target_desc);
    p->rng = (uint32_t)(leash__now_ns() ^ (uintptr_t)p) | 1u;
    atomic_store(&p->fork_gen, atomic_load(&leash__fork_gen));
    pthread_mutex_init(&p->lock, NULL);
    p->ctx = ctx;
    st = leash__register_pool(p);
    if (st != LEASH_OK) {
        pthread_mutex_destroy(&p->lock);
        p->ctx = NULL;
        goto fail;
    }
    leash__maintenance_nudge();
    return p;
fail:
    if (p) {
        free(p->slots);
        free(p->target);
        free(p);
    }
    if (ctx && adapter && adapter->ctx_free)
        adapter->ctx_free(ctx);
    return NULL;
}

leash_pool *leash_pool_open(const char *name, const leash_adapter *adapter, const char *target,
                            const leash_pool_options *opts)
{
    return leash_pool_open_with(name, adapter, NULL, target, opts);
}

const char *leash_pool_name(const leash_pool *p)
{
    return p && p->magic == LEASH_POOL_MAGIC ? p->name : "";
}

/* Takes every idle slot off the stack (pool lock held); returns how many, into out. */
static uint32_t drain_locked(struct leash_pool *p, struct leash_handle **out)
{
    uint32_t n = 0;
    struct leash_handle *s;
    while ((s = stack_pop(p)) != NULL)
        out[n++] = s;
    return n;
}

static void destroy_all(struct leash_pool *p, struct leash_handle **v, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        drop_conn(p, v[i]);
    pthread_mutex_lock(&p->lock);
    for (uint32_t i = 0; i < n; i++) {
        atomic_store(&v[i]->state, SLOT_EMPTY);
        atomic_store(&p->size, atomic_load(&p->size) - 1);
    }
    signal_head_locked(p);
    pthread_mutex_unlock(&p->lock);
}

/* Destroys idle connections of a closed pool (also after a late push). */
void leash__pool_destroy_orphans(struct leash_pool *p)
{
    struct leash_handle **v = malloc(sizeof *v * p->nslots);
    if (!v)
        return;
    pthread_mutex_lock(&p->lock);
    uint32_t n = drain_locked(p, v);
    pthread_mutex_unlock(&p->lock);
    destroy_all(p, v, n);
    free(v);
}

void leash_pool_close(leash_pool *p)
{
    if (!p || p->magic != LEASH_POOL_MAGIC)
        return;
    if (ld(&p->fork_gen) != atomic_load(&leash__fork_gen))
        leash__after_fork();
    if (!leash__unregister_pool(p))
        return;
    pthread_mutex_lock(&p->lock);
    for (struct leash_waiter *w = p->wait_head; w; w = w->next)
        pthread_cond_signal(&w->cond);
    uint32_t orphaned = 0;
    for (uint32_t i = 0; i < p->nslots; i++) {
        int expect = SLOT_HELD;
        if (atomic_compare_exchange_strong(&p->slots[i].state, &expect, SLOT_ORPHANED)) {
            count(&p->leaks_at_close);
            orphaned++;
        }
    }
    pthread_mutex_unlock(&p->lock);
    leash__pool_destroy_orphans(p);
    if (orphaned) {
        leash__report_held(leash__dump_fd(), p, "still borrowed when the pool closed");
        leash__log(LEASH_LOG_WARN, "pool \"%s\" closed with %u handles still borrowed "
                                   "(leaks_at_close)", p->name, orphaned);
    }
}

/* At shutdown: frees p and everything it owns. Connections still out are destroyed. */
void leash__pool_free(struct leash_pool *p)
{
    for (uint32_t i = 0; i < p->nslots; i++) {
        struct leash_handle *s = &p->slots[i];
        if (s->conn)
            drop_conn(p, s);
        s->magic = 0;
    }
    if (p->adapter->ctx_free && p->ctx)
        p->adapter->ctx_free(p->ctx);
    pthread_mutex_destroy(&p->lock);
    p->magic = 0;
    free(p->slots);
    free(p->target);
    free(p);
}

/* Locks (lock=1) or unlocks every pool's mutex, around fork(). */
void leash__pool_lock_all(int lock)
{
    for (struct leash_pool *p = atomic_load(&leash__pools); p; p = atomic_load(&p->next_all)) {
        if (lock)
            pthread_mutex_lock(&p->lock);
        else
            pthread_mutex_unlock(&p->lock);
    }
}

/* In a forked child: drop what the parent's threads were doing, abandon inherited idle
 * connections. Handles the forking thread held stay held; their release abandons them. */
void leash__pool_fixup_child(struct leash_pool *p)
{
    struct leash_handle **v = malloc(sizeof *v * (p->nslots ? p->nslots : 1));
    uint32_t n = 0;
    int me = leash__tid();
    pthread_mutex_lock(&p->lock);
    p->wait_head = p->wait_tail = NULL;
    atomic_store(&p->nwaiters, 0);
    atomic_store(&p->head, 0);
    for (uint32_t i = 0; i < p->nslots; i++) {
        struct leash_handle *s = &p->slots[i];
        int st = atomic_load(&s->state);
        if (st == SLOT_HELD && atomic_load(&s->tid) == leash__fork_tid) {
            atomic_store(&s->tid, me); /* the forking thread's own handle, now ours */
            continue;
        }
        if (st == SLOT_HELD || st == SLOT_CONNECTING || st == SLOT_RETURNING) {
            /* The thread that owned it does not exist here. */
            if (st == SLOT_HELD)
                count(&p->discarded);
            st = SLOT_IDLE;
        }
        if (st == SLOT_IDLE && v) {
            atomic_store(&s->state, SLOT_RETURNING);
            v[n++] = s;
        }
    }
    atomic_store(&p->fork_gen, atomic_load(&leash__fork_gen));
    pthread_mutex_unlock(&p->lock);
    if (v) {
        destroy_all(p, v, n);
        free(v);
    }
}

/* ---- maintenance (called from the maintenance thread about every 100 ms) ---- */

static void check_leaks(struct leash_pool *p, uint64_t now)
{
    for (uint32_t i = 0; i < p->nslots; i++) {
        struct leash_handle *s = &p->slots[i];
        if (atomic_load(&s->state) != SLOT_HELD)
            continue;
        uint64_t seq = ld(&s->acquired);
        uint64_t since = ld(&s->since_ns);
        if (now <= since || now - since <= p->leak_ns || ld(&s->suspected) == seq)
            continue;
        if (atomic_load(&s->state) != SLOT_HELD || ld(&s->acquired) != seq)
            continue;
        atomic_store(&s->suspected, seq);
        count(&p->leaks_suspected);
        const char *file = atomic_load_explicit(&s->file, memory_order_relaxed);
        int line = atomic_load_explicit(&s->line, memory_order_relaxed);
        leash__log(LEASH_LOG_WARN,
                   "pool \"%s\": suspected leak: handle held for %llu ms (threshold %llu ms), "
                   "borrowed at %s:%d in %s() by thread %d",
                   p->name, (unsigned long long)((now - since) / 1000000u),
                   (unsigned long long)(p->leak_ns / 1000000u), file ? file : "?", line,
                   atomic_load_explicit(&s->func, memory_order_relaxed),
                   atomic_load_explicit(&s->tid, memory_order_relaxed));
    }
}

/* Closes idle connections past their idle timeout (above min_idle) or lifetime. */
static void expire_idle(struct leash_pool *p, uint64_t now)
{
    uint32_t due = 0;
    for (uint32_t i = 0; i < p->nslots; i++) {
        struct leash_handle *s = &p->slots[i];
        if (atomic_load(&s->state) != SLOT_IDLE)
            continue;
        if (now >= ld(&s->expire_ns) || now - ld(&s->idle_since) > ld(&s->idle_limit))
            due++;
    }
    if (!due)
        return;
    struct leash_handle **v = malloc(sizeof *v * p->nslots * 2);
    if (!v)
        return;
    struct leash_handle **gone = v + p->nslots;
    uint32_t ngone = 0;
    pthread_mutex_lock(&p->lock);
    uint32_t n = drain_locked(p, v); /* newest first */
    uint32_t kept = 0;
    for (uint32_t i = 0; i < n; i++) {
        struct leash_handle *s = v[i];
        int old = now >= ld(&s->expire_ns);
        int stale = now - ld(&s->idle_since) > ld(&s->idle_limit);
        if (old || (stale && kept >= (uint32_t)p->min_idle))
            gone[ngone++] = s;
        else
            v[kept++] = s;
    }
    for (uint32_t i = kept; i-- > 0;)
        stack_push(p, v[i]);
    pthread_mutex_unlock(&p->lock);
    for (uint32_t i = 0; i < ngone; i++)
        atomic_store(&gone[i]->state, SLOT_RETURNING);
    destroy_all(p, gone, ngone);
    if (atomic_load(&p->nwaiters))
        wake_head(p);
    free(v);
}

/* Keeps min_idle connections warm; backs off after a failed connect. */
static void refill(struct leash_pool *p, uint64_t now)
{
    while (!atomic_load(&p->closed) && now >= p->refill_after) {
        uint32_t idle = 0;
        for (uint32_t i = 0; i < p->nslots; i++)
            idle += atomic_load(&p->slots[i].state) == SLOT_IDLE;
        if (idle >= (uint32_t)p->min_idle)
            return;
        pthread_mutex_lock(&p->lock);
        struct leash_handle *s = p->wait_head ? NULL : reserve_locked(p);
        pthread_mutex_unlock(&p->lock);
        if (!s)
            return;
        if (connect_into(p, s) != LEASH_OK) {
            slot_free(p, s);
            p->refill_backoff = p->refill_backoff ? p->refill_backoff * 2 : 1000000000ull;
            if (p->refill_backoff > 30000000000ull)
                p->refill_backoff = 30000000000ull;
            p->refill_after = now + p->refill_backoff;
            leash__log(LEASH_LOG_WARN, "pool \"%s\": keeping min_idle warm: %s", p->name,
                       leash_last_error());
            return;
        }
        p->refill_backoff = 0;
        atomic_store_explicit(&s->state, SLOT_IDLE, memory_order_relaxed);
        stack_push(p, s);
        if (atomic_load(&p->nwaiters))
            wake_head(p);
    }
}

void leash__pool_maintain(struct leash_pool *p, uint64_t now)
{
    if (atomic_load(&p->closed))
        return;
    if (p->leak_ns)
        check_leaks(p, now);
    expire_idle(p, now);
    if (p->min_idle)
        refill(p, now);
}
