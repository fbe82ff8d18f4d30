/* Internal to the pool modules (pool.c, lifecycle.c): counters, the pools' clock, the
 * lock-free idle stack, and the connection and slot operations both use. */
#ifndef LEASH_POOL_H
#define LEASH_POOL_H

#include "core.h"

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

static inline void count_max(_Atomic uint64_t *a, uint64_t v)
{
    uint64_t cur = ld(a);
    while (v > cur && !atomic_compare_exchange_weak_explicit(a, &cur, v, memory_order_relaxed,
                                                             memory_order_relaxed))
        ;
}

/* ---- the idle stack (Treiber stack over slot indexes, tagged against ABA) ---- */

static inline struct leash_handle *stack_pop(struct leash_pool *p)
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

static inline void stack_push(struct leash_pool *p, struct leash_handle *s)
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

/* Takes an idle slot that sits in some thread's cache, or NULL. Lock-free. */
static inline struct leash_handle *steal_cached(struct leash_pool *p)
{
    for (uint32_t i = 0; i < p->nslots; i++) {
        struct leash_handle *s = &p->slots[i];
        int expect = SLOT_CACHED;
        if (atomic_load_explicit(&s->state, memory_order_relaxed) == SLOT_CACHED &&
            atomic_compare_exchange_strong(&s->state, &expect, SLOT_RETURNING))
            return s;
    }
    return NULL;
}

/* Takes an idle slot: the top of the stack, else one from a thread's cache. */
static inline struct leash_handle *take_idle(struct leash_pool *p)
{
    struct leash_handle *s = stack_pop(p);
    return s ? s : steal_cached(p);
}

/* Connects into s, which the caller owns (CONNECTING). Returns LEASH_OK or records the
 * failure (pool lock not held). */
leash_status leash__connect_into(struct leash_pool *p, struct leash_handle *s);
/* Drops s's connection: destroyed, or abandoned if it was made before a fork. */
void leash__drop_conn(struct leash_pool *p, struct leash_handle *s);
/* s (owned by the caller, connection dropped) becomes EMPTY; the first waiter is woken. */
void leash__slot_free(struct leash_pool *p, struct leash_handle *s);
/* Reserves an EMPTY slot for a new connection (pool lock held), or NULL at capacity. */
struct leash_handle *leash__reserve_locked(struct leash_pool *p);
/* Wakes the first waiter, if it is not already woken (pool lock held / not held). */
void leash__signal_head_locked(struct leash_pool *p);
void leash__wake_head(struct leash_pool *p);

#endif /* LEASH_POOL_H */
