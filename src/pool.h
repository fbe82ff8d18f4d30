/* Internal to the pool modules: the idle stack and the per-thread cache (inline, on the fast
 * path), and the functions the modules call across each other.
 *
 *   slot.h       the slot, its states and the handle values (who owns what, when)
 *   pool.c       acquire and release: the fast path, the waiting protocol, guards, accessors
 *   wait.c       the waiters' queue (pool lock held)
 *   connect.c    connects: jobs on leash's own threads, backoff while the backend is down
 *   control.c    evict, retarget, resize, drain, health, hooks
 *   lifecycle.c  open, close, free, the fork fix-up, maintenance (keepalive, expiry, min_idle)
 *   sites.c      per-site numbers and histograms */
#ifndef LEASH_POOL_H
#define LEASH_POOL_H

#include "core.h"

static inline uint64_t tick(void)
{
    return atomic_load_explicit(&leash__tick, memory_order_relaxed);
}

/* ---- the idle stack: a Treiber stack over slot indexes; head = (tag << 16) | (index + 1),
 * the 48-bit tag moves on at every pop and push, so a stale head cannot win a CAS (ABA) ---- */

#define STACK_IDX(h) ((uint32_t)((h)&0xffff))
#define STACK_NEXT(h, idx) (((((h) >> 16) + 1) << 16) | (uint64_t)(idx))

static inline struct leash_handle *stack_pop(struct leash_pool *p)
{
    /* acquire: pairs with the release CAS in stack_push, so s->next and the slot's fields
     * written before the push are visible */
    uint64_t old = atomic_load_explicit(&p->head, memory_order_acquire);
    for (;;) {
        uint32_t idx = STACK_IDX(old);
        if (!idx)
            return NULL;
        struct leash_handle *s = slot_at(p, idx - 1);
        uint32_t next = atomic_load_explicit(&s->next, memory_order_relaxed);
        if (atomic_compare_exchange_weak_explicit(&p->head, &old, STACK_NEXT(old, next),
                                                  memory_order_acquire, memory_order_acquire)) {
            /* IDLE -> RETURNING: we own it now (nobody else can reach it off the stack).
             * seq_cst: ordered with the draining flag, as slot_cas */
            uint64_t w = atomic_load_explicit(&s->word, memory_order_relaxed);
            atomic_store_explicit(&s->word, w_make(w_borrow(w), SLOT_RETURNING),
                                  memory_order_seq_cst);
            return s;
        }
    }
}

/* s (IDLE, owned by the caller until this returns) goes on the stack. */
static inline void stack_push(struct leash_pool *p, struct leash_handle *s)
{
    assert(slot_state(s) == SLOT_IDLE);
    uint64_t old = atomic_load_explicit(&p->head, memory_order_relaxed);
    for (;;) {
        atomic_store_explicit(&s->next, STACK_IDX(old), memory_order_relaxed);
        /* release: publishes s->next and the slot (pairs with the acquire in stack_pop);
         * seq_cst so a thread that then reads nwaiters == 0 and skips the wake-up is ordered
         * against a waiter that queued and then looked at the stack (pairs with the seq_cst
         * nwaiters increment in acquire_slow) */
        if (atomic_compare_exchange_weak_explicit(&p->head, &old, STACK_NEXT(old, s->index + 1),
                                                  memory_order_seq_cst, memory_order_relaxed))
            return;
    }
}

/* Takes an idle slot that sits in some thread's cache, or NULL. Lock-free. */
static inline struct leash_handle *steal_cached(struct leash_pool *p)
{
    FOR_EACH_SLOT(p, s)
    {
        if (w_state(atomic_load_explicit(&s->word, memory_order_relaxed)) == SLOT_CACHED &&
            slot_cas(s, SLOT_CACHED, SLOT_RETURNING))
            return s;
    }
    return NULL;
}

/* Takes an idle slot: the top of the stack, else one from a thread's cache. The caller owns
 * it (RETURNING). */
static inline struct leash_handle *take_idle(struct leash_pool *p)
{
    struct leash_handle *s = stack_pop(p);
    return s ? s : steal_cached(p);
}

/* ---- pool.c ---- */
/* An idle slot the caller owns goes back on the stack; the first waiter is woken. */
void leash__push_idle(struct leash_pool *p, struct leash_handle *s);
uint32_t leash__rand(struct leash_pool *p);

/* ---- wait.c (pool lock held unless said) ---- */
void leash__signal_head_locked(struct leash_pool *p);
void leash__wake_head(struct leash_pool *p); /* takes the lock */
void leash__wake_all_locked(struct leash_pool *p);
void leash__wait_enqueue_locked(struct leash_pool *p, struct leash_waiter *w);
void leash__wait_leave_locked(struct leash_pool *p, struct leash_waiter *w);
/* Gives s (a new connection, RETURNING, owned by the caller) to the first waiter that has
 * none yet: 1 if one took it. */
int leash__wait_give_locked(struct leash_pool *p, struct leash_handle *s);
/* Wakes the first waiter that has no connect of its own running (capacity or a connect slot
 * came free: it may start one). */
void leash__wait_kick_locked(struct leash_pool *p);

/* ---- connect.c ---- */
/* Starts a connect into a free slot on a thread of leash's own, if the pool may: below
 * max_size, below max_connecting, and, while the backend is down, one probe at a time after
 * the backoff. requester (may be NULL) is told if it fails. Pool lock held. Returns 1 if a
 * connect started, 0 if not allowed now, -1 if it could not start (recorded; the requester's
 * error is set). */
int leash__connect_start_locked(struct leash_pool *p, struct leash_waiter *requester);
/* Starts a keepalive job for the n idle slots of v (owned by the caller, then by the job).
 * Pool lock not held. 0, or -1 if no job could start (the slots went back on the stack). */
int leash__check_start(struct leash_pool *p, struct leash_handle **v, uint32_t n);
/* Starts a job that validates s (an idle connection the caller took, RETURNING) for the
 * borrower w: when it passes, it goes to the first waiter (or the stack); when it fails, it
 * is destroyed and the waiters look again. Takes the pool lock. 0, or -1 if no job could
 * start (s is still the caller's). */
int leash__validate_start(struct leash_pool *p, struct leash_handle *s, struct leash_waiter *w);
/* The waiter leaves: its connect, if still running, no longer reports to it. Pool lock held. */
void leash__connect_orphan_locked(struct leash_pool *p, struct leash_waiter *w);
/* The pool is down: two connects in a row failed and backoff is on. */
static inline int pool_down(const struct leash_pool *p)
{
    return atomic_load_explicit(&((struct leash_pool *)p)->down_since_ns, memory_order_relaxed) !=
           0;
}
/* Drops s's connection (destroyed, or abandoned if made before a fork), counted under why
 * (GONE_*). s is owned by the caller. */
void leash__drop_conn(struct leash_pool *p, struct leash_handle *s, int why);
/* s (owned by the caller, connection dropped) becomes EMPTY; its capacity goes to the
 * first waiter. */
void leash__slot_free(struct leash_pool *p, struct leash_handle *s);
/* drop_conn + slot_free. */
void leash__retire(struct leash_pool *p, struct leash_handle *s, int why);
/* Reserves an EMPTY slot (pool lock held), allocating a segment if needed; NULL at capacity
 * or out of memory. */
struct leash_handle *leash__reserve_locked(struct leash_pool *p);
/* Describes the pool's state for an error message: in use by whom, connects in flight, the
 * last connect error. */
void leash__describe_state(struct leash_pool *p, char *out, size_t outlen);
/* The message of a fast failure while the backend is down. */
void leash__down_message(struct leash_pool *p, char *out, size_t outlen);

/* ---- hooks ---- */
static inline const struct leash_hooks_box *pool_hooks(struct leash_pool *p)
{
    /* acquire: pairs with the release store in leash_pool_set_hooks */
    return atomic_load_explicit(&p->hooks, memory_order_acquire);
}
void leash__hook_destroy(struct leash_pool *p, int why);

/* ---- lifecycle.c ---- */
/* A new target record for t (copied), with its password-free description; NULL when out of
 * memory. */
struct leash_target *leash__target_new(struct leash_pool *p, const char *t);
/* The per-slot initialisation of a new segment. */
void leash__slots_init(struct leash_pool *p, struct leash_handle *seg, uint32_t first);

#endif /* LEASH_POOL_H */
