/* Pools: acquire and release, waiting, connections, guards, misuse and handle accessors. */
#include "pool.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* How long the first waiter may be overtaken by threads that are not queued. */
#define BARGE_NS 2000000ull

/* How a borrow ends, for give_back(). */
enum { END_RELEASE, END_RECLAIM, END_DISCARD };

/* ---- waiters (pool lock held) ---- */

static int can_serve(struct leash_pool *p)
{
    return atomic_load(&p->head) != 0 || atomic_load(&p->size) < p->nslots ||
           atomic_load(&p->closed);
}

void leash__signal_head_locked(struct leash_pool *p)
{
    struct leash_waiter *w = p->wait_head;
    if (w && !w->signaled) {
        w->signaled = 1;
        pthread_cond_signal(&w->cond);
    }
}

void leash__wake_head(struct leash_pool *p)
{
    pthread_mutex_lock(&p->lock);
    leash__signal_head_locked(p);
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
leash_status leash__connect_into(struct leash_pool *p, struct leash_handle *s)
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
void leash__drop_conn(struct leash_pool *p, struct leash_handle *s)
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
void leash__slot_free(struct leash_pool *p, struct leash_handle *s)
{
    pthread_mutex_lock(&p->lock);
    atomic_store(&s->state, SLOT_EMPTY);
    atomic_store(&p->size, atomic_load(&p->size) - 1);
    leash__signal_head_locked(p);
    pthread_mutex_unlock(&p->lock);
}

/* Reserves an EMPTY slot for a new connection (pool lock held), or NULL at capacity. */
struct leash_handle *leash__reserve_locked(struct leash_pool *p)
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
    if (!replace && p->adapter->validate && now - ld(&s->idle_since) > p->validate_ns) {
        if (p->adapter->validate(p->ctx, s->conn) != 0) {
            count(&p->validation_failures);
            replace = 1;
        }
    }
    if (!replace)
        return LEASH_OK;
    leash__drop_conn(p, s);
    atomic_store(&s->state, SLOT_CONNECTING);
    leash_status st = leash__connect_into(p, s);
    if (st != LEASH_OK)
        leash__slot_free(p, s);
    return st;
}

static inline int needs_refresh(const struct leash_pool *p, struct leash_handle *s, uint64_t now)
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

static leash_handle *acquire_slow(struct leash_pool *p, int timeout_ms, const char *file, int line,
                                  const char *func)
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
        s = take_idle(p);
        if (!s) {
            s = leash__reserve_locked(p);
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
                s = take_idle(p);
                if (s)
                    break;
                s = leash__reserve_locked(p);
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
                s = take_idle(p);
                if (!s && (s = leash__reserve_locked(p)) != NULL)
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
            leash__signal_head_locked(p);
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
        if (leash__connect_into(p, s) != LEASH_OK) {
            leash__slot_free(p, s);
            return NULL;
        }
    } else if (needs_refresh(p, s, now) && refresh(p, s, now) != LEASH_OK) {
        return NULL;
    }
    if (LEASH_UNLIKELY(atomic_load(&p->closed))) {
        leash__drop_conn(p, s);
        leash__slot_free(p, s);
        return leash__fail_null(LEASH_ECLOSED, "pool \"%s\" was closed while connecting", p->name);
    }
    lend(s, now, file, line, func);
    return s;
}

/* Lends s, an idle slot the caller took, after checking its age. */
static inline leash_handle *lend_idle(struct leash_pool *p, struct leash_handle *s,
                                      const char *file, int line, const char *func)
{
    uint64_t now = tick();
    if (LEASH_UNLIKELY(needs_refresh(p, s, now)) && refresh(p, s, now) != LEASH_OK)
        return NULL;
    lend(s, now, file, line, func);
    return s;
}

leash_handle *leash_acquire_at(leash_pool *p, int timeout_ms, const char *file, int line,
                               const char *func)
{
    if (LEASH_UNLIKELY(!p || p->magic != LEASH_POOL_MAGIC))
        return leash__fail_null(LEASH_EINVAL, "leash_acquire: %s",
                                p ? "not a pool" : "pool is NULL");
    if (LEASH_UNLIKELY(timeout_ms < -1))
        return leash__fail_null(LEASH_EINVAL,
                                "leash_acquire: timeout_ms %d (use -1, 0 or a positive value)",
                                timeout_ms);
    if (LEASH_UNLIKELY(ld(&p->fork_gen) !=
                       atomic_load_explicit(&leash__fork_gen, memory_order_relaxed)))
        leash__after_fork();
    if (LEASH_UNLIKELY(atomic_load_explicit(&p->closed, memory_order_relaxed)))
        return leash__fail_null(LEASH_ECLOSED, "pool \"%s\" is closed", p->name);
    if (!file)
        file = "?";
    if (!func)
        func = "?";
    /* The handle this thread returned last, if nobody took it since. */
    struct leash_cache_entry *ce = &leash__t_cache[p->id % LEASH_CACHE_WAYS];
    struct leash_handle *s = ce->slot;
    if (s && ce->epoch == atomic_load_explicit(&leash__epoch, memory_order_relaxed) &&
        s->pool == p) {
        ce->slot = NULL;
        int expect = SLOT_CACHED;
        if (LEASH_LIKELY(atomic_compare_exchange_strong_explicit(
                &s->state, &expect, SLOT_RETURNING, memory_order_acquire, memory_order_relaxed)))
            return lend_idle(p, s, file, line, func);
    }
    /* Threads not yet queued may take an idle handle while the first waiter has waited
     * less than BARGE_NS: a thread that just released keeps running instead of sleeping
     * behind the queue (no convoy). Past that, newcomers queue up behind it (no
     * starvation). Waiters themselves are always served in arrival order. */
    if (LEASH_LIKELY(atomic_load_explicit(&p->nwaiters, memory_order_relaxed) == 0 ||
                     tick() - ld(&p->head_since) < BARGE_NS)) {
        if (LEASH_UNLIKELY(!atomic_load_explicit(&p->active, memory_order_relaxed)))
            atomic_store_explicit(&p->active, 1, memory_order_relaxed);
        s = stack_pop(p);
        if (LEASH_LIKELY(s != NULL))
            return lend_idle(p, s, file, line, func);
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
    case SLOT_CACHED:
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
    leash__count_problem(p, s, PROB_MISUSE);
    char msg[200];
    snprintf(msg, sizeof msg, "%s (the handle is %s)", what, state_name(atomic_load(&s->state)));
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
    leash__drop_conn(p, s);
    leash__slot_free(p, s);
}

/* Destroys s's connection and frees the slot. */
static void drop_slot(struct leash_pool *p, struct leash_handle *s)
{
    leash__drop_conn(p, s);
    leash__slot_free(p, s);
}

/* An idle slot the caller owns goes back on the stack; a waiter is woken. */
static void push_idle(struct leash_pool *p, struct leash_handle *s)
{
    atomic_store_explicit(&s->state, SLOT_IDLE, memory_order_relaxed);
    stack_push(p, s);
    if (atomic_load(&p->nwaiters) != 0)
        leash__wake_head(p);
}

/* Keeps s (returned, clean, owned by the caller) in this thread's cache; the handle that
 * was there goes to its pool's stack. */
static inline void cache_put(struct leash_pool *p, struct leash_handle *s)
{
    struct leash_cache_entry *ce = &leash__t_cache[p->id % LEASH_CACHE_WAYS];
    uint64_t epoch = atomic_load_explicit(&leash__epoch, memory_order_relaxed);
    struct leash_handle *old = ce->epoch == epoch ? ce->slot : NULL;
    atomic_store(&s->state, SLOT_CACHED);
    ce->slot = s;
    ce->epoch = epoch;
    if (old) {
        int expect = SLOT_CACHED;
        if (atomic_compare_exchange_strong(&old->state, &expect, SLOT_RETURNING))
            push_idle(old->pool, old);
    }
    /* A thread that started waiting meanwhile may have missed s: give it to the stack. */
    if (LEASH_UNLIKELY(atomic_load(&p->nwaiters) != 0)) {
        int expect = SLOT_CACHED;
        if (atomic_compare_exchange_strong(&s->state, &expect, SLOT_RETURNING)) {
            ce->slot = NULL;
            push_idle(p, s);
        } else {
            leash__wake_head(p);
        }
    }
}

/* Ends the borrow of s (state RETURNING, owned by the caller). */
static inline __attribute__((always_inline)) void give_back(struct leash_pool *p,
                                                            struct leash_handle *s, int how)
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
    if (how == END_RELEASE) {
        own_inc(&s->released, 1);
    } else {
        count(&p->leaks_reclaimed);
        leash__count_problem(p, s, PROB_RECLAIMED);
    }

    if (LEASH_UNLIKELY(atomic_load_explicit(&s->broken, memory_order_relaxed) ||
                       s->conn_gen !=
                           atomic_load_explicit(&leash__fork_gen, memory_order_relaxed) ||
                       atomic_load_explicit(&p->closed, memory_order_relaxed))) {
        drop_slot(p, s);
        return;
    }
    if (p->adapter->reset) {
        int r = p->adapter->reset(p->ctx, s->conn);
        if (LEASH_UNLIKELY(r != LEASH_RESET_CLEAN)) {
            if (r == LEASH_RESET_CLEANED || r == LEASH_RESET_DIRTY) {
                count(&p->dirty_returns);
                leash__count_problem(p, s, PROB_DIRTY);
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
    if (LEASH_LIKELY(atomic_load_explicit(&p->nwaiters, memory_order_relaxed) == 0)) {
        cache_put(p, s);
    } else {
        push_idle(p, s);
    }
    if (LEASH_UNLIKELY(atomic_load(&p->closed)))
        leash__pool_destroy_orphans(p);
}

/* Claims s for ending its borrow: 1 if the caller now owns it. */
static int claim(struct leash_handle *s)
{
    int expect = SLOT_HELD;
    return atomic_compare_exchange_strong_explicit(&s->state, &expect, SLOT_RETURNING,
                                                   memory_order_acquire, memory_order_relaxed);
}

static inline __attribute__((always_inline)) void end_borrow(leash_handle **hp, int how,
                                                             const char *fn)
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

/* What a guard finds at scope exit: the handle if this thread still holds it, else NULL
 * (nothing to do; one orphaned by a close is destroyed here). */
static struct leash_handle *guarded(leash_handle **hp)
{
    if (!hp || !*hp)
        return NULL;
    struct leash_handle *s = *hp;
    if (valid_slot(s) && atomic_load(&s->state) == SLOT_ORPHANED) {
        *hp = NULL;
        late_after_close(s);
        return NULL;
    }
    if (!held_here(s)) {
        *hp = NULL;
        return NULL;
    }
    return s;
}

void leash__guard_check(leash_handle **hp)
{
    struct leash_handle *s = guarded(hp);
    if (!s)
        return;
    *hp = NULL;
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
    if (guarded(hp))
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

void *leash__held_conn(leash_handle *h, const leash_adapter *a, const char *fn, const char *kind)
{
    if (!h)
        return leash__fail_null(LEASH_EINVAL, "%s: the handle is NULL", fn);
    void *c = leash_conn_of(h, a);
    if (!c)
        return leash__fail_null(LEASH_EINVAL, "%s: not a held %s handle", fn, kind);
    return c;
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
