/* A slot: one connection's place in a pool, and the handle value that names one borrow of it.
 *
 * The slot's word (struct leash_handle.word) packs the borrow number (high 56 bits) with the
 * slot's state (low 8 bits), so a compare-and-swap on it checks both: a stale copy of a handle
 * can never claim a later borrow of the same slot (no ABA).
 *
 *   state       owner (the only writer of the slot's other fields)   next states, by whom
 *   ----------  ---------------------------------------------------  ---------------------------
 *   EMPTY       the pool lock (no connection)                         CONNECTING: reserve (lock)
 *   CONNECTING  the connecting thread (a connect job)                 IDLE / HELD: the job;
 *                                                                     EMPTY: the job (failed)
 *   IDLE        nobody; the idle stack links it                       RETURNING: whoever pops it
 *   CACHED      nobody; one thread's cache points to it, or a keepa-  RETURNING: whoever CASes it
 *               live job will check it (parked): stealable either way  (owner, borrower, job,
 * close) HELD        the borrower (the borrow number names the borrow)     RETURNING: release/guard
 *                                                                     (CAS, borrow number checked);
 *                                                                     ORPHANED: close (CAS)
 *   RETURNING   whoever moved it there (release, lend, maintenance)   HELD (lend), IDLE, CACHED,
 *                                                                     EMPTY (destroyed)
 *   ORPHANED    nobody (the pool closed while it was held)            RETURNING: the late release
 *
 * Lending increments the borrow number (HELD with borrow+1); the handle value carries the low
 * LEASH_TAG_BITS of it, so leash_release, leash_conn, leash_mark_broken and the guards compare
 * the value with the slot's current borrow before they touch anything. */
#ifndef LEASH_SLOT_H
#define LEASH_SLOT_H

#include "clock.h"
#include "common.h"

#include <assert.h>
#include <stdatomic.h>
#include <stdint.h>

#define LEASH_SLOT_MAGIC 0x4c534c54u /* "LSLT" */
#define LEASH_CACHE_LINE 64

enum {
    SLOT_EMPTY = 0,
    SLOT_CONNECTING,
    SLOT_IDLE,
    SLOT_HELD,
    SLOT_RETURNING,
    SLOT_ORPHANED,
    SLOT_CACHED,
};

/* Why a connection was destroyed: one destroyed_* counter each. */
enum {
    GONE_BROKEN,
    GONE_DIRTY,
    GONE_IDLE,
    GONE_LIFETIME,
    GONE_EVICTED,
    GONE_INVALID,
    GONE_CLOSED,
    GONE_REASONS
};

/* Histogram buckets: upper bounds 2^(13 + 2k) ns, k = 0..11 (8.2 us, 32.8 us, 131 us,
 * 524 us, 2.1 ms, 8.4 ms, 33.6 ms, 134 ms, 537 ms, 2.1 s, 8.6 s, 34.4 s), + the +Inf bucket.
 * Powers of four, so the bucket of a time is a count of leading zeros, not a search: the
 * fast path pays one instruction for it. */
#define LEASH_HIST_BUCKETS 12
extern const uint64_t leash__hist_le[LEASH_HIST_BUCKETS];

static inline int leash__hist_bucket(uint64_t ns)
{
    if (ns <= (1ull << 13))
        return 0;
    int l = 64 - __builtin_clzll(ns - 1); /* ceil(log2(ns)) */
    int k = (l - 12) / 2;
    return k < LEASH_HIST_BUCKETS ? k : LEASH_HIST_BUCKETS;
}

/* Laid out by use: the first two cache lines hold what every acquire and release touches. */
struct leash_handle {
    /* line 0: identity, state, connection, the release checks */
    _Alignas(LEASH_CACHE_LINE) uint32_t magic;
    uint32_t index;
    struct leash_pool *pool;
    _Atomic uint64_t word;       /* borrow << 8 | state */
    void *conn;                  /* written by the slot's owner only */
    uint64_t conn_gen;           /* fork generation the connection was made in */
    _Atomic uint64_t conn_epoch; /* the pool's evict epoch when its connect started */
    _Atomic int broken;          /* leash_mark_broken: destroy on release */
    _Atomic int retire;          /* 1 + a GONE_* reason: destroy instead of reusing */
    _Atomic uint64_t expire_ns;  /* max_lifetime deadline on the coarse tick (jittered) */
    _Atomic uint64_t idle_since; /* exact clock (raw) when it went idle */

    /* line 1: the borrow record (written by the borrower before it publishes HELD) and the
     * owner's per-borrow numbers */
    _Atomic(const char *) file;
    _Atomic(const char *) func;
    _Atomic int line;
    _Atomic int tid;
    _Atomic uint64_t since;     /* exact clock, raw units */
    _Atomic uint32_t site;      /* site table index of the current borrow */
    _Atomic uint32_t prev_site; /* ... and of the borrow before, for misuse reports */
    _Atomic uint32_t acc_site;  /* the site acc_* below belong to */
    int memo_line;              /* the arguments of the slot's last borrow, as given (see */
    const char *memo_file;      /* lend in pool.c); a new slot's memo_file points at */
    const char *memo_func;      /* nothing a caller can pass */
    _Atomic int recheck;        /* validate before the next lend */

    /* counters owned by the slot's current owner: written with a plain load + store */
    _Atomic uint64_t hold_ns_total, hold_ns_max, wait_ns_total, wait_ns_max;
    /* What the slot accumulates for acc_site: the borrows, hold and wait totals past these
     * bases (the slot's numbers when acc_site last changed), and the maxima since then. */
    _Atomic uint64_t acc_base_borrow, acc_base_hold, acc_base_wait;
    _Atomic uint64_t acc_hold_max, acc_wait_max;
    /* How this slot's borrows ended, one counter per way (written with a release store once
     * the end is done: a reader that loads them with acquire and then the word sees
     * borrow - ended = 1 exactly while the borrow is held or its end is in progress). */
    _Atomic uint64_t released, n_discarded, n_reclaimed, n_at_close;
    _Atomic uint64_t hist_wait[LEASH_HIST_BUCKETS + 1], hist_hold[LEASH_HIST_BUCKETS + 1];

    /* cold */
    _Atomic uint32_t next;       /* idle stack link: index + 1, 0 ends */
    _Atomic uint64_t idle_limit; /* idle timeout, ns (jittered) */
    _Atomic uint64_t checked_ns; /* exact clock (raw) of its last keepalive check */
    _Atomic(const char *) peer;  /* the adapter's peer() at connect (interned), or NULL */
    _Atomic uint64_t suspected;  /* the borrow number counted as a suspected leak */
    _Atomic uint64_t pre_fork;   /* in a forked child: the borrow held at the fork, else 0 */
    _Atomic uint64_t site_since; /* the borrow number at which site last changed */
};

/* ---- the slot word ---- */

static inline uint64_t w_make(uint64_t borrow, int state)
{
    return borrow << 8 | (uint64_t)state;
}
static inline int w_state(uint64_t w)
{
    return (int)(w & 0xff);
}
static inline uint64_t w_borrow(uint64_t w)
{
    return w >> 8;
}
static inline uint64_t slot_word(struct leash_handle *s)
{
    /* acquire: pairs with the release store that published the state (lend, give back), so
     * the borrow record and conn written before it are visible */
    return atomic_load_explicit(&s->word, memory_order_acquire);
}
static inline int slot_state(struct leash_handle *s)
{
    return w_state(slot_word(s));
}
/* The owner moves its slot to state, keeping the borrow number. release: publishes what
 * the owner wrote (pairs with slot_word's acquire). */
static inline void slot_set(struct leash_handle *s, int state)
{
    uint64_t w = atomic_load_explicit(&s->word, memory_order_relaxed);
    assert(w_state(w) != SLOT_HELD || state == SLOT_RETURNING || state == SLOT_ORPHANED);
    atomic_store_explicit(&s->word, w_make(w_borrow(w), state), memory_order_release);
}
/* Moves s from state from to state to (same borrow): 1 if this caller won. */
static inline int slot_cas(struct leash_handle *s, int from, int to)
{
    uint64_t w = atomic_load_explicit(&s->word, memory_order_relaxed);
    if (w_state(w) != from)
        return 0;
    /* seq_cst: acquires what the previous owner published, and is in the single total
     * order with the draining flag (leash_pool_drain / refuse_draining); on x86 a locked
     * instruction either way */
    return atomic_compare_exchange_strong_explicit(&s->word, &w, w_make(w_borrow(w), to),
                                                   memory_order_seq_cst, memory_order_relaxed);
}

/* Idle, on the stack or in a thread's cache. */
static inline int is_idle_state(int st)
{
    return st == SLOT_IDLE || st == SLOT_CACHED;
}

/* ---- handle values: the slot's address with the borrow's tag in unused bits ----
 * Slots are 64-byte aligned (6 low bits free); on 64-bit targets user addresses fit in 48
 * bits, so the top 16 bits carry more of the tag. A stale copy is told apart from the
 * current borrow unless the slot was lent 2^22 times since (2^6 on 32-bit targets). */
#if UINTPTR_MAX > 0xffffffffu
#define LEASH_TAG_BITS 22
#define LEASH_ADDR_MASK ((uintptr_t)0x0000ffffffffffc0ull)
#else
#define LEASH_TAG_BITS 6
#define LEASH_ADDR_MASK (~(uintptr_t)63)
#endif
#define LEASH_TAG_MASK ((1ull << LEASH_TAG_BITS) - 1)

static inline struct leash_handle *h_make(struct leash_handle *s, uint64_t borrow)
{
    uintptr_t a = (uintptr_t)s | (uintptr_t)(borrow & 63);
#if UINTPTR_MAX > 0xffffffffu
    a |= (uintptr_t)((borrow >> 6) & 0xffff) << 48;
#endif
    return (struct leash_handle *)a;
}
static inline struct leash_handle *h_slot(const struct leash_handle *h)
{
    return (struct leash_handle *)((uintptr_t)h & LEASH_ADDR_MASK);
}
static inline uint64_t h_tag(const struct leash_handle *h)
{
    uintptr_t a = (uintptr_t)h;
    uint64_t t = a & 63;
#if UINTPTR_MAX > 0xffffffffu
    t |= (uint64_t)(a >> 48) << 6;
#endif
    return t;
}
/* h names the borrow number borrow. */
static inline int h_names(const struct leash_handle *h, uint64_t borrow)
{
    return h_tag(h) == (borrow & LEASH_TAG_MASK);
}

/* ---- owner-only counters ---- */

static inline uint64_t ld(_Atomic uint64_t *a)
{
    return atomic_load_explicit(a, memory_order_relaxed);
}
/* The slot's owner is the only writer, so no read-modify-write. */
static inline void own_inc(_Atomic uint64_t *a, uint64_t by)
{
    atomic_store_explicit(a, ld(a) + by, memory_order_relaxed);
}
/* An owner-only count whose new value must be seen with what the owner did before it. */
static inline void own_inc_rel(_Atomic uint64_t *a)
{
    atomic_store_explicit(a, ld(a) + 1, memory_order_release);
}
static inline void own_max(_Atomic uint64_t *a, uint64_t v)
{
    if (v > ld(a))
        atomic_store_explicit(a, v, memory_order_relaxed);
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

#endif /* LEASH_SLOT_H */
