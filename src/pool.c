/* Acquire and release: the fast path (thread cache, idle stack), the waiting protocol,
 * guards, misuse and the handle accessors. */
#include "pool.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* How long the first waiter may be overtaken by threads that are not queued, on the exact
 * clock. */
#define BARGE_NS 2000000ull

/* How a borrow ends, for give_back(). */
enum { END_RELEASE, END_RECLAIM, END_DISCARD };

uint32_t leash__rand(struct leash_pool *p)
{
    uint32_t x = p->rng;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    p->rng = x;
    return x;
}

static int valid_slot(const struct leash_handle *s)
{
    return s && s->magic == LEASH_SLOT_MAGIC && s->pool && s->pool->magic == LEASH_POOL_MAGIC;
}

/* A forked child runs the fix-up at its first leash call, whichever it is. */
static inline void fork_check(struct leash_pool *p)
{
    if (LEASH_UNLIKELY(ld(&p->fork_gen) !=
                       atomic_load_explicit(&leash__fork_gen, memory_order_relaxed)))
        leash__after_fork();
}

/* ---- lending ---- */

/* The borrow about to start on s is at a call site other than the slot's last borrow: the
 * site's table entry, the borrow record's file, line and function, the slot's per-site
 * numbers (folded into the table entry of the site they belong to). */
static __attribute__((noinline)) void lend_at_new_site(struct leash_pool *p, struct leash_handle *s,
                                                       const char *file, int line, const char *func)
{
    const char *f = file ? file : "?", *fn = func ? func : "?";
    uint32_t site = leash__site_index(p, f, line, fn);
    s->memo_file = file;
    s->memo_line = line;
    s->memo_func = func;
    if (atomic_load_explicit(&s->acc_site, memory_order_relaxed) != site) {
        leash__site_flush(p, s);
        atomic_store_explicit(&s->acc_site, site, memory_order_relaxed);
    }
    uint32_t cur = atomic_load_explicit(&s->site, memory_order_relaxed);
    if (cur != site) {
        /* The previous borrow's site, for misuse reports (unchanged while it is the same). */
        atomic_store_explicit(&s->prev_site, cur, memory_order_relaxed);
        atomic_store_explicit(&s->site, site, memory_order_relaxed);
        atomic_store_explicit(&s->site_since,
                              w_borrow(atomic_load_explicit(&s->word, memory_order_relaxed)) + 1,
                              memory_order_relaxed);
    }
    atomic_store_explicit(&s->file, f, memory_order_relaxed);
    atomic_store_explicit(&s->func, fn, memory_order_relaxed);
    atomic_store_explicit(&s->line, line, memory_order_relaxed);
}

/* The borrow about to start on s is at the same call site as its last one. */
static inline int same_site(const struct leash_handle *s, const char *file, int line,
                            const char *func)
{
    return s->memo_file == file && s->memo_line == line && s->memo_func == func;
}

/* The part of lend (below) that calls nothing: the borrow's numbers, the record's time and
 * thread, then HELD with the next borrow number. */
static inline __attribute__((always_inline)) leash_handle *
lend_record(struct leash_handle *s, uint64_t now_raw, uint64_t wait_ns, int tid)
{
    /* Every bucket counted where it happens, so each is monotonic on its own and _count
     * (their sum) too. */
    own_inc(&s->hist_wait[leash__hist_bucket(wait_ns)], 1);
    if (wait_ns) {
        own_max(&s->acc_wait_max, wait_ns);
        own_inc(&s->wait_ns_total, wait_ns);
        own_max(&s->wait_ns_max, wait_ns);
    }
    atomic_store_explicit(&s->tid, tid, memory_order_relaxed);
    atomic_store_explicit(&s->since, now_raw, memory_order_relaxed);
    uint64_t w = atomic_load_explicit(&s->word, memory_order_relaxed);
    assert(w_state(w) == SLOT_RETURNING);
    uint64_t borrow = w_borrow(w) + 1;
    /* release: publishes the borrow record (pairs with slot_word's acquire in the dumps and
     * in the accessors) */
    atomic_store_explicit(&s->word, w_make(borrow, SLOT_HELD), memory_order_release);
    return h_make(s, borrow);
}

/* Makes s (owned by the caller) the caller's borrow: the borrow record, the per-site and
 * per-slot numbers, then HELD with the next borrow number. Returns the handle value.
 *
 * The record's site (file, line, function, table entry, acc_site) is written only when it
 * changes: the memo holds the arguments of the slot's last borrow, and only lend writes the
 * record, so a borrow from the same call site finds it as it needs it. */
static inline __attribute__((always_inline)) leash_handle *
lend(struct leash_pool *p, struct leash_handle *s, uint64_t now_raw, uint64_t wait_ns,
     const char *file, int line, const char *func)
{
    if (LEASH_UNLIKELY(!same_site(s, file, line, func)))
        lend_at_new_site(p, s, file, line, func);
    return lend_record(s, now_raw, wait_ns, leash__tid());
}

/* s came off the idle stack or a cache: 1 if it may be lent as it is; 2 if it must be
 * validated first (on a job thread: the acquire's deadline bounds the wait for it);
 * otherwise it is too old, retired or evicted: destroyed, slot freed, 0. */
enum { STALE = 0, FRESH = 1, CHECK_FIRST = 2 };
static __attribute__((noinline)) int fresh_check(struct leash_pool *p, struct leash_handle *s,
                                                 uint64_t now)
{
    /* now: the coarse tick (lifetimes); the idle time was judged by the caller */
    int retire = atomic_load_explicit(&s->retire, memory_order_relaxed);
    int why = -1;
    if (retire)
        why = retire - 1;
    else if (now >= ld(&s->expire_ns))
        why = GONE_LIFETIME;
    else if (ld(&s->conn_epoch) != ld(&p->evict_epoch))
        why = GONE_EVICTED;
    else if (p->adapter->validate)
        return CHECK_FIRST;
    if (why < 0)
        return FRESH;
    leash__retire(p, s, why);
    return STALE;
}

/* now: the coarse tick; raw: the exact clock (idle time against validate_idle_ms) */
/* Nothing about s needs a look before it is lent (no call in it). */
static inline int fresh_now(struct leash_pool *p, struct leash_handle *s, uint64_t now,
                            uint64_t raw)
{
    return !atomic_load_explicit(&s->retire, memory_order_relaxed) &&
           !atomic_load_explicit(&s->recheck, memory_order_relaxed) &&
           raw - ld(&s->idle_since) <= p->validate_raw && now < ld(&s->expire_ns) &&
           ld(&s->conn_epoch) == ld(&p->evict_epoch);
}

static inline __attribute__((always_inline)) int fresh(struct leash_pool *p, struct leash_handle *s,
                                                       uint64_t now, uint64_t raw)
{
    if (LEASH_LIKELY(fresh_now(p, s, now, raw)))
        return FRESH;
    return fresh_check(p, s, now);
}

static void on_acquire(struct leash_pool *p, leash_handle *h, uint64_t wait_ns, leash_status st)
{
    const struct leash_hooks_box *hb = pool_hooks(p);
    if (LEASH_UNLIKELY(hb != NULL) && hb->hooks.on_acquire)
        hb->hooks.on_acquire(p, h, wait_ns, st, hb->arg);
}

/* The deadline tmo ms after now, on CLOCK_MONOTONIC. */
static struct timespec deadline_in(int tmo)
{
    struct timespec d;
    clock_gettime(CLOCK_MONOTONIC, &d);
    d.tv_sec += tmo / 1000;
    d.tv_nsec += (long)(tmo % 1000) * 1000000L;
    if (d.tv_nsec >= 1000000000L) {
        d.tv_sec++;
        d.tv_nsec -= 1000000000L;
    }
    return d;
}

/* Handles held right now (a walk: slow paths only). */
uint32_t leash__pool_in_use(const struct leash_pool *p)
{
    uint32_t n = 0;
    FOR_EACH_SLOT(p, s)
    n += w_state(atomic_load_explicit(&s->word, memory_order_relaxed)) == SLOT_HELD;
    return n;
}

/* The pool started draining (or closed) after this acquire took s: s goes back, and the
 * acquire fails as if it had come a moment later. Pairs with leash_pool_drain, which sets
 * draining and then waits for slots being lent or returned (RETURNING) as well as held ones:
 * the seq_cst load here and the seq_cst CAS that took s order the two. */
static __attribute__((noinline)) leash_handle *refuse_draining(struct leash_pool *p,
                                                               struct leash_handle *s)
{
    if (atomic_load(&p->closed))
        leash__retire(p, s, GONE_CLOSED);
    else
        leash__push_idle(p, s);
    leash__fail(LEASH_ECLOSED, "pool \"%s\" is %s", p->name,
                atomic_load(&p->closed) ? "closed" : "draining");
    on_acquire(p, NULL, 0, LEASH_ECLOSED);
    return NULL;
}

static inline int stopping(struct leash_pool *p)
{
    return atomic_load(&p->draining) != 0;
}

enum { GOT_NOTHING, GOT_IDLE, GOT_NEW };

/* The waiting protocol, under the pool lock. Returns what it got in *out, or a status:
 * ECLOSED, ETIMEDOUT, EBUSY, ECONNECT (fast failure while down: *fast = 1; or the connect
 * this borrower started failed: its message in w->error). */
static leash_status wait_for_slot(struct leash_pool *p, int tmo, const struct timespec *deadline,
                                  struct leash_waiter *w, struct leash_handle **out, int *got,
                                  int *fast)
{
    int queued = 0;
    leash_status st = LEASH_OK;
    for (;;) {
        if (atomic_load(&p->closed) || atomic_load(&p->draining)) {
            st = LEASH_ECLOSED;
            break;
        }
        if (w->given) {
            *out = w->given;
            w->given = NULL;
            *got = GOT_NEW;
            break;
        }
        if (w->connect_failed) {
            st = LEASH_ECONNECT;
            break;
        }
        /* Idle handles go to waiters in arrival order: only the first looks at the stack.
         * Any waiter may start a connect when there is none idle (max_connecting bounds
         * them); a new connection goes to the first waiter without one. */
        if (queued ? p->wait_head == w : p->wait_head == NULL) {
            *out = take_idle(p);
            if (*out) {
                *got = GOT_IDLE;
                break;
            }
        }
        if (!w->job && STACK_IDX(atomic_load(&p->head)) == 0 &&
            leash__connect_start_locked(p, w) < 0) {
            st = LEASH_ECONNECT;
            break;
        }
        /* Down, and nothing borrowed that could come back: no point waiting. */
        if (pool_down(p) && leash__pool_in_use(p) == 0) {
            *fast = 1;
            st = LEASH_ECONNECT;
            break;
        }
        if (tmo == 0) {
            st = LEASH_ETIMEDOUT;
            break;
        }
        if (!queued) {
            if (p->max_waiters && atomic_load(&p->nwaiters) >= p->max_waiters) {
                st = LEASH_EBUSY;
                break;
            }
            pthread_condattr_t ca;
            pthread_condattr_init(&ca);
            pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
            pthread_cond_init(&w->cond, &ca);
            pthread_condattr_destroy(&ca);
            leash__wait_enqueue_locked(p, w);
            queued = 1;
            continue; /* first in line now? look again before sleeping */
        }
        int rc = pthread_cond_timedwait(&w->cond, &p->lock, deadline);
        w->signaled = 0;
        if (rc == ETIMEDOUT) {
            /* One last look before giving up. */
            if (w->given || w->connect_failed || atomic_load(&p->closed))
                continue;
            if (p->wait_head == w && (*out = take_idle(p)) != NULL) {
                *got = GOT_IDLE;
                break;
            }
            st = LEASH_ETIMEDOUT;
            break;
        }
    }
    if (queued) {
        leash__wait_leave_locked(p, w);
        pthread_cond_destroy(&w->cond);
    } else {
        leash__connect_orphan_locked(p, w);
    }
    /* A connection handed over while this waiter was already leaving goes to the next. */
    if (w->given && *got == GOT_NOTHING) {
        *out = w->given;
        w->given = NULL;
        *got = GOT_NEW;
        st = LEASH_OK;
    } else if (w->given) {
        struct leash_handle *extra = w->given;
        w->given = NULL;
        if (!leash__wait_give_locked(p, extra)) {
            slot_set(extra, SLOT_IDLE);
            stack_push(p, extra);
        }
    }
    return st;
}

static leash_handle *acquire_slow(struct leash_pool *p, int timeout_ms, const char *file, int line,
                                  const char *func, struct leash_handle *check)
{
    uint64_t t0 = leash__clock_raw();
    if (!file)
        file = "?";
    if (!func)
        func = "?";
    int tmo = timeout_ms < 0 ? p->timeout_ms : timeout_ms;
    atomic_store_explicit(&p->active, 1, memory_order_relaxed);
    struct timespec deadline = deadline_in(tmo);
    for (;;) {
        struct leash_waiter w;
        memset(&w, 0, sizeof w);
        struct leash_handle *s = NULL;
        int got = GOT_NOTHING, fast = 0;
        /* An idle connection this borrower took needs validating: a job does it (the wait for
         * it is bounded by this deadline), and the connection comes back as a new one would,
         * to the first waiter, or is replaced. */
        if (check && leash__validate_start(p, check, &w) < 0)
            leash__retire(p, check, GONE_INVALID); /* no thread for it: not lent unchecked */
        check = NULL;
        pthread_mutex_lock(&p->lock);
        leash_status st = wait_for_slot(p, tmo, &deadline, &w, &s, &got, &fast);
        pthread_mutex_unlock(&p->lock);
        uint64_t t1 = leash__clock_raw();
        uint64_t waited = leash__clock_ns(t0, t1);
        if (st == LEASH_OK) {
            if (got == GOT_IDLE) {
                int f = fresh(p, s, tick(), t1);
                if (f != FRESH) {
                    check = f == CHECK_FIRST ? s : NULL;
                    continue; /* destroyed, or to be checked: look again, same deadline */
                }
            }
            if (stopping(p))
                return refuse_draining(p, s);
            leash_handle *h = lend(p, s, t1, waited, file, line, func);
            on_acquire(p, h, waited, LEASH_OK);
            return h;
        }
        char state[400];
        switch (st) {
        case LEASH_ECLOSED:
            leash__fail(LEASH_ECLOSED, "pool \"%s\" is %s", p->name,
                        atomic_load(&p->draining) && !atomic_load(&p->closed) ? "draining"
                                                                              : "closed");
            break;
        case LEASH_EBUSY:
            count(&p->rejected);
            leash__fail(LEASH_EBUSY, "pool \"%s\": %d %s already waiting (max_waiters %d)", p->name,
                        p->max_waiters, p->max_waiters == 1 ? "thread" : "threads", p->max_waiters);
            break;
        case LEASH_ECONNECT:
            if (fast) {
                count(&p->fast_failures);
                leash__down_message(p, state, sizeof state);
                leash__fail(LEASH_ECONNECT, "%s", state);
            } else {
                leash__fail(LEASH_ECONNECT, "%s", w.error);
            }
            break;
        default:
            count(&p->timeouts);
            atomic_fetch_add_explicit(&p->sites[leash__site_index(p, file, line, func)].timeouts, 1,
                                      memory_order_relaxed);
            leash__describe_state(p, state, sizeof state);
            leash__fail(LEASH_ETIMEDOUT, "pool \"%s\": no handle free within %d ms (%s)", p->name,
                        tmo, state);
            break;
        }
        on_acquire(p, NULL, waited, st);
        return NULL;
    }
}

/* Lends s, an idle slot the caller took, after checking it is still fit. */
static __attribute__((noinline)) leash_handle *lend_idle(struct leash_pool *p,
                                                         struct leash_handle *s, int timeout_ms,
                                                         const char *file, int line,
                                                         const char *func)
{
    uint64_t raw = leash__clock_raw();
    int f = fresh(p, s, tick(), raw);
    if (LEASH_UNLIKELY(f != FRESH))
        return acquire_slow(p, timeout_ms, file, line, func, f == CHECK_FIRST ? s : NULL);
    /* seq_cst: the draining check after the CAS that took s (see refuse_draining) */
    uint32_t attn = atomic_load(&p->attn);
    if (LEASH_UNLIKELY(attn & ATTN_DRAINING) && stopping(p))
        return refuse_draining(p, s);
    leash_handle *h = lend(p, s, raw, 0, file, line, func);
    if (LEASH_UNLIKELY(attn & ATTN_HOOKS))
        on_acquire(p, h, 0, LEASH_OK);
    return h;
}

/* Past this thread's cache: the top of the idle stack, else the waiting protocol. */
static __attribute__((noinline)) leash_handle *
acquire_shared(struct leash_pool *p, int timeout_ms, const char *file, int line, const char *func)
{
    /* Threads not yet queued may take an idle handle while the first waiter has waited
     * less than BARGE_NS: a thread that just released keeps running instead of sleeping
     * behind the queue (no convoy). Past that, newcomers queue up behind it (no
     * starvation). Waiters themselves are always served in arrival order. */
    if (LEASH_LIKELY(atomic_load_explicit(&p->nwaiters, memory_order_relaxed) == 0 ||
                     leash__clock_ns(ld(&p->head_since), leash__clock_raw()) < BARGE_NS)) {
        if (LEASH_UNLIKELY(!atomic_load_explicit(&p->active, memory_order_relaxed)))
            atomic_store_explicit(&p->active, 1, memory_order_relaxed);
        struct leash_handle *s = stack_pop(p);
        if (LEASH_LIKELY(s != NULL))
            return lend_idle(p, s, timeout_ms, file, line, func);
    }
    return acquire_slow(p, timeout_ms, file, line, func, NULL);
}

/* The handle this thread returned last, if nobody took it since (the caller owns it then:
 * RETURNING), else NULL. The entry keeps pointing at it while it is lent (a CAS from CACHED
 * is what takes it), so a thread that borrows and returns the same slot rewrites nothing
 * here. */
static inline struct leash_handle *cache_take(struct leash_pool *p)
{
    struct leash_cache_entry *ce = &leash__t_cache[p->id % LEASH_CACHE_WAYS];
    struct leash_handle *s = ce->slot;
    if (s && ce->epoch == atomic_load_explicit(&leash__epoch, memory_order_relaxed) &&
        s->pool == p && slot_cas(s, SLOT_CACHED, SLOT_RETURNING))
        return s;
    return NULL;
}

/* Every check before a handle is taken, in full: bad arguments, a forked child's first
 * call, a closed or draining pool; then the way any acquire goes. */
static __attribute__((noinline)) leash_handle *
acquire_checked(leash_pool *p, int timeout_ms, const char *file, int line, const char *func)
{
    if (LEASH_UNLIKELY(!p || p->magic != LEASH_POOL_MAGIC))
        return leash__fail_null(LEASH_EINVAL, "leash_acquire: %s",
                                p ? "not a pool" : "pool is NULL");
    if (LEASH_UNLIKELY(timeout_ms < -1))
        return leash__fail_null(LEASH_EINVAL,
                                "leash_acquire: timeout_ms %d (use -1, 0 or a positive value)",
                                timeout_ms);
    fork_check(p);
    if (atomic_load_explicit(&p->closed, memory_order_relaxed) ||
        atomic_load_explicit(&p->draining, memory_order_relaxed)) {
        leash__fail(LEASH_ECLOSED, "pool \"%s\" is %s", p->name,
                    atomic_load(&p->closed) ? "closed" : "draining");
        on_acquire(p, NULL, 0, LEASH_ECLOSED);
        return NULL;
    }
    struct leash_handle *s = cache_take(p);
    if (s)
        return lend_idle(p, s, timeout_ms, file, line, func);
    return acquire_shared(p, timeout_ms, file, line, func);
}

/* The common case (a handle from this thread's cache, fit, lent from the same call site as
 * its last borrow, on the time-stamp counter) calls nothing, so it saves no registers and
 * spills nothing: each other case is a tail call into the general code above. */
leash_handle *leash_acquire_at(leash_pool *p, int timeout_ms, const char *file, int line,
                               const char *func)
{
    if (LEASH_UNLIKELY(
            !p || p->magic != LEASH_POOL_MAGIC || timeout_ms < -1 ||
            ld(&p->fork_gen) != atomic_load_explicit(&leash__fork_gen, memory_order_relaxed) ||
            (atomic_load_explicit(&p->attn, memory_order_relaxed) & (ATTN_CLOSED | ATTN_DRAINING))))
        return acquire_checked(p, timeout_ms, file, line, func);
    struct leash_handle *s = cache_take(p);
    if (LEASH_UNLIKELY(!s))
        return acquire_shared(p, timeout_ms, file, line, func);
    uint64_t raw = leash__clock_tsc();
    int tid = leash__t_tid;
    /* seq_cst: the draining check after the CAS that took s (see refuse_draining) */
    uint32_t attn = atomic_load(&p->attn);
    if (LEASH_UNLIKELY(!raw || !tid || (attn & (ATTN_DRAINING | ATTN_HOOKS)) ||
                       !fresh_now(p, s, tick(), raw) || !same_site(s, file, line, func)))
        return lend_idle(p, s, timeout_ms, file, line, func);
    return lend_record(s, raw, 0, tid);
}

/* ---- giving back ---- */

static const char *state_name(int st)
{
    switch (st) {
    case SLOT_EMPTY:
        return "not lent";
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

/* A call with a handle value that does not name a current borrow: counted at the stale
 * borrow's site when known, logged once per site, strict mode aborts naming both borrows. */
static void misuse(struct leash_handle *s, const leash_handle *h, const char *what)
{
    struct leash_pool *p = s->pool;
    uint64_t w = slot_word(s);
    int st = w_state(w);
    uint64_t borrow = w_borrow(w);
    int current = h_names(h, borrow) && st == SLOT_HELD;
    const char *file = NULL, *func = NULL;
    int line = 0;
    const char *age = "";
    if (h_names(h, borrow)) { /* the slot's last borrow, ended */
        file = atomic_load_explicit(&s->file, memory_order_relaxed);
        func = atomic_load_explicit(&s->func, memory_order_relaxed);
        line = atomic_load_explicit(&s->line, memory_order_relaxed);
    } else if (borrow && h_names(h, borrow - 1)) { /* the one before the current borrow */
        /* the borrow before the current one was at prev_site if the site changed at the
         * current borrow, else at the same site */
        uint32_t ps = ld(&s->site_since) == borrow
                          ? atomic_load_explicit(&s->prev_site, memory_order_relaxed)
                          : atomic_load_explicit(&s->site, memory_order_relaxed);
        if (ps < LEASH_SITES) {
            file = atomic_load_explicit(&p->sites[ps].file, memory_order_relaxed);
            func = atomic_load_explicit(&p->sites[ps].func, memory_order_relaxed);
            line = atomic_load_explicit(&p->sites[ps].line, memory_order_relaxed);
        }
    } else {
        age = " (an older borrow)";
    }
    count(&p->misuse);
    leash__count_problem(p, file, line, func, PROB_MISUSE);
    char msg[400];
    if (file)
        snprintf(msg, sizeof msg, "%s: the handle's borrow at %s:%d in %s() has ended", what, file,
                 line, func ? func : "?");
    else
        snprintf(msg, sizeof msg, "%s: the handle's borrow has ended%s", what, age);
    if (!current && st == SLOT_HELD) {
        size_t n = strlen(msg);
        snprintf(msg + n, sizeof msg - n, "; its connection is now lent to another borrow");
    } else if (!current) {
        size_t n = strlen(msg);
        snprintf(msg + n, sizeof msg - n, " (the connection is %s)", state_name(st));
    }
    if (leash__is_strict())
        leash__strict_abort(p, st == SLOT_HELD && !current ? s : NULL, msg);
    leash__log_once(file ? (const void *)file : (const void *)s, line, LEASH_LOG_WARN,
                    "pool \"%s\": misuse: %s", p->name, msg);
    leash__fail(LEASH_EMISUSE, "pool \"%s\": %s", p->name, msg);
}

/* A handle released after its pool closed: the borrow was counted at close. */
static void late_after_close(struct leash_handle *s)
{
    if (!slot_cas(s, SLOT_ORPHANED, SLOT_RETURNING))
        return;
    leash__retire(s->pool, s, GONE_CLOSED);
}

void leash__push_idle(struct leash_pool *p, struct leash_handle *s)
{
    slot_set(s, SLOT_IDLE);
    stack_push(p, s);
    if (atomic_load(&p->nwaiters) != 0)
        leash__wake_head(p);
}

/* s (CACHED now, and in this thread's cache) was returned while a thread queued: it goes to
 * the stack for it, or the first waiter is woken (someone took s meanwhile). */
static __attribute__((noinline)) void cached_while_waiting(struct leash_pool *p,
                                                           struct leash_handle *s)
{
    if (slot_cas(s, SLOT_CACHED, SLOT_RETURNING)) {
        leash__t_cache[p->id % LEASH_CACHE_WAYS].slot = NULL;
        leash__push_idle(p, s);
    } else {
        leash__wake_head(p);
    }
}

/* This thread's cache entry takes s (returned, clean, owned by the caller; it becomes CACHED
 * in recache); the handle the entry held goes to its pool's stack. */
static inline void cache_hold(struct leash_pool *p, struct leash_handle *s)
{
    struct leash_cache_entry *ce = &leash__t_cache[p->id % LEASH_CACHE_WAYS];
    uint64_t epoch = atomic_load_explicit(&leash__epoch, memory_order_relaxed);
    struct leash_handle *old = ce->epoch == epoch ? ce->slot : NULL;
    if (LEASH_UNLIKELY(old != s)) {
        ce->slot = s;
        ce->epoch = epoch;
        if (old && slot_cas(old, SLOT_CACHED, SLOT_RETURNING))
            leash__push_idle(old->pool, old);
    }
}

/* After s became CACHED: a thread that queued meanwhile, a close that began meanwhile. */
static __attribute__((noinline)) void cached_then(struct leash_pool *p, struct leash_handle *s)
{
    if (atomic_load(&p->nwaiters) != 0)
        cached_while_waiting(p, s);
    if ((atomic_load(&p->attn) & ATTN_CLOSED) && atomic_load(&p->closed))
        leash__pool_destroy_orphans(p);
}

/* Puts s (returned, clean, owned by the caller) into this thread's cache entry, which holds
 * it already (cache_hold). */
static inline __attribute__((always_inline)) void recache(struct leash_pool *p,
                                                          struct leash_handle *s, uint64_t now)
{
    atomic_store_explicit(&s->idle_since, now, memory_order_relaxed);
    uint64_t w = atomic_load_explicit(&s->word, memory_order_relaxed);
    atomic_store_explicit(&s->word, w_make(w_borrow(w), SLOT_CACHED), memory_order_seq_cst);
    /* seq_cst: ordered before the nwaiters and attn loads (pairs with the seq_cst increment
     * in leash__wait_enqueue_locked, and with a close, which sets ATTN_CLOSED before its
     * walk): a waiter that queued first finds s CACHED when it steals, or is seen here and
     * s goes to the stack for it; a close finds s, or is seen here */
    if (LEASH_UNLIKELY(atomic_load(&p->nwaiters) != 0 || (atomic_load(&p->attn) & ATTN_CLOSED)))
        cached_then(p, s);
}

static void dirty_return(struct leash_pool *p, struct leash_handle *s, int r, int how)
{
    const char *file = atomic_load_explicit(&s->file, memory_order_relaxed);
    int line = atomic_load_explicit(&s->line, memory_order_relaxed);
    const char *func = atomic_load_explicit(&s->func, memory_order_relaxed);
    count(&p->dirty_returns);
    leash__count_problem(p, file, line, func, PROB_DIRTY);
    if (leash__is_strict() && how == END_RELEASE)
        leash__strict_abort(p, s,
                            r == LEASH_RESET_CLEANED
                                ? "returned dirty (state left behind; cleaned)"
                                : "returned dirty (state left behind; destroyed)");
    leash__log_once(file, line, LEASH_LOG_WARN,
                    "pool \"%s\": handle borrowed at %s:%d in %s() was returned dirty; %s", p->name,
                    file, line, func, r == LEASH_RESET_CLEANED ? "cleaned" : "destroyed");
}

/* The numbers of a borrow of s that ends at released_at (s RETURNING, owned by the caller):
 * its hold, a late return of a suspected leak, the way it ended. Calls nothing. Returns the
 * hold in ns. */
static inline __attribute__((always_inline)) uint64_t
end_numbers(struct leash_pool *p, struct leash_handle *s, int how, uint64_t released_at)
{
    uint64_t held = leash__clock_ns(ld(&s->since), released_at);
    own_inc(&s->hold_ns_total, held);
    own_max(&s->hold_ns_max, held);
    own_inc(&s->hist_hold[leash__hist_bucket(held)], 1);
    own_max(&s->acc_hold_max, held);
    uint64_t borrow = w_borrow(atomic_load_explicit(&s->word, memory_order_relaxed));
    if (LEASH_UNLIKELY(ld(&s->suspected) == borrow))
        count(&p->returned_late);
    own_inc_rel(how == END_RELEASE   ? &s->released
                : how == END_DISCARD ? &s->n_discarded
                                     : &s->n_reclaimed);
    return held;
}

/* The adapter's reset on s's connection: 1 if it may be reused; else s was destroyed (dirty,
 * or broken). */
static inline int reset_kept(struct leash_pool *p, struct leash_handle *s, int how)
{
    int r = p->adapter->reset(p->ctx, s->conn);
    if (LEASH_LIKELY(r == LEASH_RESET_CLEAN))
        return 1;
    if (r == LEASH_RESET_CLEANED || r == LEASH_RESET_DIRTY)
        dirty_return(p, s, r, how);
    if (r == LEASH_RESET_CLEANED)
        return 1;
    leash__retire(p, s, r == LEASH_RESET_DIRTY ? GONE_DIRTY : GONE_BROKEN);
    return 0;
}

/* After end_numbers: the hooks, the retiring checks, the adapter's reset, then back to this
 * thread's cache or the stack. */
static __attribute__((noinline)) void give_back_rest(struct leash_pool *p, struct leash_handle *s,
                                                     int how, uint64_t released_at, uint64_t held)
{
    if (how == END_DISCARD) {
        leash__retire(p, s, GONE_BROKEN);
        return;
    }
    uint32_t attn = atomic_load_explicit(&p->attn, memory_order_relaxed);
    if (how == END_RELEASE) {
        if (LEASH_UNLIKELY(attn & ATTN_HOOKS)) {
            const struct leash_hooks_box *hb = pool_hooks(p);
            uint64_t borrow = w_borrow(atomic_load_explicit(&s->word, memory_order_relaxed));
            if (hb && hb->hooks.on_release)
                hb->hooks.on_release(p, h_make(s, borrow), held, hb->arg);
        }
    } else {
        leash__count_problem(p, atomic_load_explicit(&s->file, memory_order_relaxed),
                             atomic_load_explicit(&s->line, memory_order_relaxed),
                             atomic_load_explicit(&s->func, memory_order_relaxed), PROB_RECLAIMED);
    }

    int retire = atomic_load_explicit(&s->retire, memory_order_relaxed);
    if (LEASH_UNLIKELY(retire || atomic_load_explicit(&s->broken, memory_order_relaxed) ||
                       s->conn_gen !=
                           atomic_load_explicit(&leash__fork_gen, memory_order_relaxed) ||
                       ((attn & (ATTN_CLOSED | ATTN_SHRUNK)) &&
                        (atomic_load_explicit(&p->closed, memory_order_relaxed) ||
                         atomic_load_explicit(&p->size, memory_order_relaxed) >
                             atomic_load_explicit(&p->nslots, memory_order_relaxed))))) {
        int why = retire                    ? retire - 1
                  : atomic_load(&s->broken) ? GONE_BROKEN
                  : s->conn_gen != atomic_load(&leash__fork_gen) || atomic_load(&p->closed)
                      ? GONE_CLOSED
                      : GONE_EVICTED; /* evicted, or surplus after a shrink */
        leash__retire(p, s, why);
        return;
    }
    if (p->adapter->reset && !reset_kept(p, s, how))
        return;
    if (LEASH_LIKELY(atomic_load_explicit(&p->nwaiters, memory_order_relaxed) == 0)) {
        cache_hold(p, s);
        recache(p, s, released_at);
        return;
    }
    atomic_store_explicit(&s->idle_since, released_at, memory_order_relaxed);
    leash__push_idle(p, s);
    /* seq_cst: after s became IDLE, before a close's walk (which sets the bit first): either
     * the close finds s, or this finds the bit */
    if (LEASH_UNLIKELY(atomic_load(&p->attn) & ATTN_CLOSED) && atomic_load(&p->closed))
        leash__pool_destroy_orphans(p);
}

/* Ends the borrow of s (RETURNING, owned by the caller). */
static void give_back(struct leash_pool *p, struct leash_handle *s, int how)
{
    uint64_t released_at = leash__clock_raw();
    give_back_rest(p, s, how, released_at, end_numbers(p, s, how, released_at));
}

/* The slot h names, or NULL (not a leash handle: EINVAL recorded). */
static inline struct leash_handle *slot_of(const leash_handle *h, const char *fn)
{
    struct leash_handle *s = h_slot(h);
    if (LEASH_UNLIKELY(!valid_slot(s))) {
        leash__log_once(fn, 0, LEASH_LOG_ERROR, "%s: not a leash handle (ignored)", fn);
        leash__fail(LEASH_EINVAL, "%s: not a leash handle", fn);
        return NULL;
    }
    fork_check(s->pool);
    return s;
}

/* A handle borrowed before a fork, in the child: its connection was abandoned. */
static inline int pre_fork(struct leash_handle *s, const leash_handle *h)
{
    uint64_t b = ld(&s->pre_fork);
    return LEASH_UNLIKELY(b != 0) && h_names(h, b);
}

/* Claims the borrow h names for ending it: 1 if the caller now owns the slot. */
static inline int claim(struct leash_handle *s, const leash_handle *h)
{
    uint64_t w = slot_word(s);
    if (w_state(w) != SLOT_HELD || !h_names(h, w_borrow(w)))
        return 0;
    /* acquire: the borrower's writes to the connection happen before our reset */
    return atomic_compare_exchange_strong_explicit(&s->word, &w,
                                                   w_make(w_borrow(w), SLOT_RETURNING),
                                                   memory_order_acquire, memory_order_relaxed);
}

static __attribute__((noinline)) void end_borrow(leash_handle **hp, int how, const char *fn)
{
    if (!hp || !*hp)
        return;
    leash_handle *h = *hp;
    *hp = NULL;
    struct leash_handle *s = slot_of(h, fn);
    if (LEASH_UNLIKELY(!s))
        return;
    if (LEASH_LIKELY(claim(s, h))) {
        give_back(s->pool, s, how);
        return;
    }
    uint64_t w = slot_word(s);
    if (w_state(w) == SLOT_ORPHANED && h_names(h, w_borrow(w))) {
        late_after_close(s);
        return;
    }
    if (pre_fork(s, h))
        return; /* in a forked child: nothing to send, nothing to count */
    misuse(s, h,
           how == END_DISCARD ? "discard of a handle that is not checked out"
                              : "release of a handle that is not checked out (double release, "
                                "or a stale copy)");
}

/* The adapter's reset, then recache (its own function: the call needs registers kept). */
static __attribute__((noinline)) void reset_then_recache(struct leash_pool *p,
                                                         struct leash_handle *s, uint64_t now)
{
    if (reset_kept(p, s, END_RELEASE))
        recache(p, s, now);
}

/* The common case (a valid handle of a live borrow, a pool with nothing that needs a look
 * (no ATTN_* bit but ATTN_RESET: the adapter's reset is one call, in reset_then_recache), nobody
 * waiting, back into this thread's cache where it came from, on the time-stamp counter) calls
 * nothing, so it saves no registers and spills nothing; each other case is a tail call into the
 * general code (end_borrow, give_back_rest). The effects and their order are give_back's. */
void leash_release(leash_handle **hp)
{
    leash_handle *h;
    struct leash_handle *s;
    struct leash_pool *p;
    uint64_t fork_gen = atomic_load_explicit(&leash__fork_gen, memory_order_relaxed);
    if (LEASH_UNLIKELY(!hp || !(h = *hp) || !(s = h_slot(h)) || s->magic != LEASH_SLOT_MAGIC ||
                       !(p = s->pool) || p->magic != LEASH_POOL_MAGIC ||
                       ld(&p->fork_gen) != fork_gen || !claim(s, h))) {
        end_borrow(hp, END_RELEASE, "leash_release");
        return;
    }
    *hp = NULL;
    uint64_t now = leash__clock_tsc();
    if (LEASH_UNLIKELY(!now)) {
        give_back(p, s, END_RELEASE);
        return;
    }
    uint64_t held = end_numbers(p, s, END_RELEASE, now);
    struct leash_cache_entry *ce = &leash__t_cache[p->id % LEASH_CACHE_WAYS];
    uint32_t attn = atomic_load_explicit(&p->attn, memory_order_relaxed);
    if (LEASH_UNLIKELY((attn & ~(uint32_t)ATTN_RESET) ||
                       atomic_load_explicit(&s->retire, memory_order_relaxed) ||
                       atomic_load_explicit(&s->broken, memory_order_relaxed) ||
                       s->conn_gen != fork_gen || ce->slot != s ||
                       ce->epoch != atomic_load_explicit(&leash__epoch, memory_order_relaxed))) {
        give_back_rest(p, s, END_RELEASE, now, held);
        return;
    }
    if (attn & ATTN_RESET)
        reset_then_recache(p, s, now);
    else
        recache(p, s, now);
}

void leash_discard(leash_handle **h)
{
    end_borrow(h, END_DISCARD, "leash_discard");
}

/* What a guard finds at scope exit: the slot if h still names the borrow this thread holds,
 * else NULL (nothing to do: released, also through a copy; one orphaned by a close is
 * destroyed here). */
static struct leash_handle *guarded(leash_handle **hp)
{
    if (!hp || !*hp)
        return NULL;
    leash_handle *h = *hp;
    struct leash_handle *s = h_slot(h);
    if (!valid_slot(s)) {
        *hp = NULL;
        return NULL;
    }
    fork_check(s->pool);
    uint64_t w = slot_word(s);
    if (!h_names(h, w_borrow(w))) {
        *hp = NULL; /* a stale value: its borrow ended through a copy */
        return NULL;
    }
    if (w_state(w) == SLOT_ORPHANED) {
        *hp = NULL;
        late_after_close(s);
        return NULL;
    }
    if (w_state(w) != SLOT_HELD ||
        atomic_load_explicit(&s->tid, memory_order_relaxed) != leash__tid()) {
        *hp = NULL;
        return NULL;
    }
    return s;
}

void leash__guard_check(leash_handle **hp)
{
    leash_handle *h = hp ? *hp : NULL;
    struct leash_handle *s = guarded(hp);
    if (!s)
        return;
    *hp = NULL;
    struct leash_pool *p = s->pool;
    if (leash__is_strict())
        leash__strict_abort(p, s, "handle still held at scope exit (LEASH_GUARD): leaked");
    if (!claim(s, h))
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

/* s's connection if h names its current borrow (held, or orphaned by a close). */
static inline void *conn_if_current(struct leash_handle *s, const leash_handle *h)
{
    uint64_t w = slot_word(s);
    int st = w_state(w);
    if (LEASH_LIKELY((st == SLOT_HELD || st == SLOT_ORPHANED) && h_names(h, w_borrow(w))))
        return s->conn;
    misuse(s, h,
           pre_fork(s, h) ? "use of a handle borrowed before fork() (its connection belongs to "
                            "the parent)"
                          : "use of a handle that is not checked out");
    return NULL;
}

void *leash_conn(leash_handle *h)
{
    if (!h)
        return leash__fail_null(LEASH_EINVAL, "leash_conn: handle is NULL");
    struct leash_handle *s = slot_of(h, "leash_conn");
    return s ? conn_if_current(s, h) : NULL;
}

void *leash_conn_of(leash_handle *h, const leash_adapter *adapter)
{
    struct leash_handle *s = h ? h_slot(h) : NULL;
    if (!s || !valid_slot(s) || !adapter || s->pool->adapter != adapter)
        return NULL;
    fork_check(s->pool);
    return conn_if_current(s, h);
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

void leash_mark_broken(leash_handle *h)
{
    struct leash_handle *s = h ? h_slot(h) : NULL;
    if (!s || !valid_slot(s))
        return;
    fork_check(s->pool);
    uint64_t w = slot_word(s);
    int st = w_state(w);
    if ((st == SLOT_HELD || st == SLOT_ORPHANED) && h_names(h, w_borrow(w))) {
        atomic_store_explicit(&s->broken, 1, memory_order_relaxed);
        return;
    }
    if (pre_fork(s, h))
        return;
    misuse(s, h, "leash_mark_broken of a handle that is not checked out");
}

leash_pool *leash_handle_pool(leash_handle *h)
{
    struct leash_handle *s = h ? h_slot(h) : NULL;
    return s && valid_slot(s) ? s->pool : NULL;
}
