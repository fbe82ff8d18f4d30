/* Internal structures of the core: the manager, pools and their slot tables. */
#ifndef LEASH_CORE_H
#define LEASH_CORE_H

#include "common.h"

#include <pthread.h>
#include <stddef.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/types.h>

#include "slot.h"

#define LEASH_POOL_MAGIC 0x4c504f4fu /* "LPOO" */
#define LEASH_POOL_SIZE_MAX 65535
#define LEASH_TARGET_DESC_MAX 256
#define LEASH_SEG_SLOTS 64 /* slots are allocated 64 at a time and never moved */
#define LEASH_SEGS ((LEASH_POOL_SIZE_MAX + LEASH_SEG_SLOTS) / LEASH_SEG_SLOTS)

/* Each thread keeps the handle it returned last to each pool (direct-mapped by pool id)
 * so that its next borrow gets the same connection back without touching the shared
 * stack: one compare-and-swap instead of two, and the connection's server process stays
 * warm on its core. The entries are hints: a CACHED slot is idle and unowned, and whoever
 * moves it out of CACHED (its thread, another thread that finds the stack empty, the
 * maintenance thread, close) owns it. */
#define LEASH_CACHE_WAYS 8
struct leash_cache_entry {
    struct leash_handle *slot;
    uint64_t epoch; /* leash__epoch when stored: entries from before a shutdown are void */
};
extern __attribute__((tls_model(
    "initial-exec"))) _Thread_local struct leash_cache_entry leash__t_cache[LEASH_CACHE_WAYS];
/* Moves on at every shutdown (slots are freed then). */
extern _Atomic uint64_t leash__epoch;

/* Borrow sites: a fixed table per pool, claimed lock-free by (file, line); the last entry
 * counts every site that did not fit. */
#define LEASH_SITES 64
#define LEASH_SITE_OTHER LEASH_SITES
enum { PROB_RECLAIMED, PROB_SUSPECTED, PROB_AT_CLOSE, PROB_DIRTY, PROB_MISUSE, PROB_KINDS };
struct leash_site {
    _Atomic uint64_t key; /* 0: free; claimed once, never released */
    _Atomic(const char *) file;
    _Atomic(const char *) func;
    _Atomic int line;
    _Atomic int ready; /* file, func, line written (release; pairs with readers' acquire) */
    _Atomic uint64_t acquired, timeouts, wait_total, wait_max, hold_total, hold_max;
    _Atomic uint64_t n[PROB_KINDS];
    _Atomic uint64_t base[PROB_KINDS]; /* at the last text dump */
    _Atomic uint64_t shown[3]; /* acquired, wait and hold totals of the last consistent read */
};

struct leash_waiter {
    struct leash_waiter *next;
    pthread_cond_t cond;
    int signaled;               /* woken and not yet run: no second wake-up needed */
    struct leash_handle *given; /* a new connection handed straight to this waiter */
    void *job;                  /* the connect this waiter started, while it runs */
    int connect_failed;         /* the connect this waiter started failed */
    char error[LEASH_ERR_MAX];  /* ... and why (password-free) */
};

/* Slow-path counters, one atomic each, in dump order. */
#define LEASH_POOL_COUNTERS(X)                                                                     \
    X(created)                                                                                     \
    X(destroyed)                                                                                   \
    X(timeouts)                                                                                    \
    X(rejected)                                                                                    \
    X(connect_failures)                                                                            \
    X(validation_failures)                                                                         \
    X(dirty_returns)                                                                               \
    X(leaks_suspected)                                                                             \
    X(returned_late)                                                                               \
    X(misuse)                                                                                      \
    X(fast_failures)                                                                               \
    X(keepalives)

/* Targets a pool has had: kept until the pool is freed, since connects in flight and
 * lock-free readers may still hold the old strings. */
struct leash_target {
    struct leash_target *prev;
    char *target;
    char desc[LEASH_TARGET_DESC_MAX];
};

struct leash_hooks_box {
    struct leash_hooks_box *prev; /* every set is kept until the pool is freed */
    leash_hooks hooks;
    void *arg;
};

#define LEASH_PEERS 32 /* distinct peers interned per pool */

/* struct leash_pool.attn */
enum {
    ATTN_CLOSED = 1,   /* closed, or about to be */
    ATTN_DRAINING = 2, /* draining, or about to be */
    ATTN_HOOKS = 4,    /* hooks may be set */
    ATTN_SHRUNK = 8,   /* resized down at least once: surplus may be retired on release */
    ATTN_RESET = 16,   /* the adapter has a reset (a release calls it) */
};

struct leash_pool {
    uint32_t magic;
    uint32_t id;             /* for the per-thread cache */
    _Atomic uint32_t nslots; /* max_size */
    _Atomic uint32_t nalloc; /* slots allocated; only grows (release, pairs with slot walks) */
    _Atomic(struct leash_handle *) seg[LEASH_SEGS];
    char name[LEASH_NAME_MAX + 1];
    const leash_adapter *adapter;
    void *ctx;
    _Atomic(struct leash_target *) target; /* current; older ones linked from it */
    /* The adapter's description of the target as of the last connect (e.g. a Sentinel pool's
     * current master), under a sequence lock: odd while written (under the pool lock),
     * byte-wise atomics so the dumps can copy it without a lock. Empty: use target's. */
    _Atomic uint32_t live_seq;
    _Atomic char live_desc[2][LEASH_TARGET_DESC_MAX];

    /* resolved options */
    _Atomic int min_idle;
    int timeout_ms, max_waiters, max_connecting;
    uint64_t idle_ns, lifetime_ns, validate_ns, leak_ns, keepalive_ns, backoff_max_ns;
    uint64_t validate_raw; /* validate_ns in the exact clock's raw units */

    _Atomic uint64_t head; /* idle stack: (tag << 16) | (index + 1) */
    _Atomic int nwaiters;
    _Atomic uint64_t head_since; /* exact clock (raw) when the first waiter became first */
    _Atomic int closed;
    _Atomic int draining;
    /* ATTN_* bits, a superset of the rare conditions the fast path must look at: each is set
     * (seq_cst) before the state it announces, so a fast path that reads 0 may skip them */
    _Atomic uint32_t attn;
    _Atomic int active; /* set by acquires, cleared by the maintenance thread */
    _Atomic uint64_t fork_gen;
    _Atomic uint32_t size;       /* slots not EMPTY; written under lock */
    _Atomic uint32_t connecting; /* connect jobs in flight; written under lock */
    _Atomic uint64_t evict_epoch;
    _Atomic int checking;     /* a keepalive job runs (one per pool at a time) */
    _Atomic int checking_one; /* the idle connection it is validating right now (0 or 1) */

    /* the backend's state: written under lock, read lock-free by stats and health */
    _Atomic uint32_t consecutive_failures;
    _Atomic uint64_t down_since_ns; /* CLOCK_MONOTONIC when it went down; 0: up */
    _Atomic uint64_t last_connect_ok_ns, last_connect_fail_ns;
    uint64_t next_attempt_ns; /* under lock: while down, no connect before this */
    uint64_t backoff_ns;      /* under lock */

    pthread_mutex_t lock;
    struct leash_waiter *wait_head, *wait_tail; /* under lock */
    /* The last connect failure (password-free): written under the lock with a sequence,
     * byte-wise atomics, so the dumps copy it without a lock (leash__pool_last_error). */
    _Atomic uint32_t last_error_seq;
    _Atomic char last_error[2][256];
    uint32_t rng;                   /* under lock */
    const char *peers[LEASH_PEERS]; /* under lock (append-only; read lock-free) */
    _Atomic int npeers;

#define LEASH_DECLARE_COUNTER(n) _Atomic uint64_t n;
    LEASH_POOL_COUNTERS(LEASH_DECLARE_COUNTER)
    _Atomic uint64_t gone[GONE_REASONS]; /* destroyed, by reason */
    _Atomic uint64_t retired_peer;       /* evicted because their server changed role */
    _Atomic uint64_t hist_connect[LEASH_HIST_BUCKETS + 1], connect_ns_total;

    _Atomic(struct leash_hooks_box *) hooks;
    struct leash_hooks_box *hooks_parked; /* under lock: sets removed by a NULL set */

    struct leash_site sites[LEASH_SITES + 1];
    _Atomic uint32_t site_busy; /* slots folding their per-site numbers into the table now */
    _Atomic uint64_t site_gen;  /* folds completed */

    /* the text dump's baseline ("changed since the last dump") */
    _Atomic int base_valid;
    _Atomic uint64_t base[48];

    _Atomic(struct leash_pool *) next_all; /* every pool since init, closed ones too */
};

/* Slot i of p (i < nalloc). */
static inline struct leash_handle *slot_at(const struct leash_pool *p, uint32_t i)
{
    /* relaxed: callers loaded nalloc with acquire, which pairs with the release store that
     * published the segment */
    struct leash_handle *seg = atomic_load_explicit(
        &((struct leash_pool *)p)->seg[i / LEASH_SEG_SLOTS], memory_order_relaxed);
    return seg + i % LEASH_SEG_SLOTS;
}
static inline uint32_t slots_allocated(const struct leash_pool *p)
{
    return atomic_load_explicit(&((struct leash_pool *)p)->nalloc, memory_order_acquire);
}
#define FOR_EACH_SLOT(p, s)                                                                        \
    for (uint32_t i_##s = 0, n_##s = slots_allocated(p); i_##s < n_##s; i_##s++)                   \
        for (struct leash_handle *s = slot_at(p, i_##s); s; s = NULL)

/* Copies the pool's current description (the live one after a connect, else the
 * target's) into out. Async-signal-safe. */
void leash__pool_desc(struct leash_pool *p, char *out, size_t outlen);
/* Copies the pool's last connect error ("" if none) into out. Async-signal-safe. */
void leash__pool_last_error(struct leash_pool *p, char *out, size_t outlen);
/* Sets it (pool lock held). */
void leash__pool_set_last_error_locked(struct leash_pool *p, const char *msg);

static inline const struct leash_target *pool_target(const struct leash_pool *p)
{
    return atomic_load_explicit(&((struct leash_pool *)p)->target, memory_order_acquire);
}

/* ---- manager (manager.c) ---- */
extern _Atomic uint64_t leash__fork_gen;
/* The pools' clock: CLOCK_MONOTONIC_COARSE in ns, advanced by the maintenance thread every
 * 10 ms while pools are busy (100 ms when quiet). Reading it is a load; reading a clock on
 * every borrow and return would cost more than the rest of the cycle. */
extern _Atomic uint64_t leash__tick;
/* The kernel thread id, in the parent, of the thread that last called fork(). */
extern int leash__fork_tid;
/* Head of the list of every pool; readers traverse it without a lock. */
extern _Atomic(struct leash_pool *) leash__pools;
/* Dumps in progress (shutdown waits for them before freeing pools). */
extern _Atomic int leash__dumping;
int leash__dump_fd(void);
int leash__is_strict(void);
/* Call when leash__fork_gen moved: fixes every pool up in a forked child. */
void leash__after_fork(void);
/* Wakes the maintenance thread (a pool wants min_idle filled), starting it if needed. */
void leash__maintenance_nudge(void);
/* This thread's kernel thread id, cached (0 until first asked; reset in a forked child). */
extern __attribute__((tls_model("initial-exec"))) _Thread_local int leash__t_tid;
int leash__tid_slow(void);
static inline int leash__tid(void)
{
    int t = leash__t_tid;
    return LEASH_LIKELY(t != 0) ? t : leash__tid_slow();
}

/* Runs a's process_init once per process (first pool of that table) and enrols it for
 * the fork hooks. LEASH_OK, or the failure (recorded). */
leash_status leash__adapter_register(const leash_adapter *a);
/* Registers p under the manager: LEASH_EEXIST if the name is taken by an open pool. */
leash_status leash__register_pool(struct leash_pool *p);
/* Marks p closed and unregistered; 0 if it already was. */
int leash__unregister_pool(struct leash_pool *p);

/* ---- pools (lifecycle.c) ---- */
void leash__pool_free(struct leash_pool *p);
/* At shutdown, before the pools are freed: destroys every connection still in p. */
void leash__pool_drop_all(struct leash_pool *p);
void leash__pool_fixup_child(struct leash_pool *p);
void leash__pool_maintain(struct leash_pool *p, uint64_t now);
void leash__pool_destroy_orphans(struct leash_pool *p);
void leash__pool_lock_all(int lock);
/* ---- connect jobs (connect.c) ---- */
/* Joins every connect thread that has finished (all=0), or waits for all of them (all=1). */
void leash__connect_reap(int all);
/* Around fork (0 prepare, 1 parent, 2 child): the job list's lock, taken after the pools'. */
void leash__connect_atfork(int phase);

/* ---- sites and histograms (sites.c) ---- */
/* The site table index for (file, line, func); LEASH_SITE_OTHER when the table is full. */
uint32_t leash__site_index(struct leash_pool *p, const char *file, int line, const char *func);
/* Counts a leak or misuse of kind PROB_* at the borrow site (file, line, func). Lock-free. */
void leash__count_problem(struct leash_pool *p, const char *file, int line, const char *func,
                          int kind);
/* Site i's numbers (table + slots' accumulators). Async-signal-safe. */
void leash__site_get(struct leash_pool *p, uint32_t i, leash_site_stats *out);
int leash__site_used(struct leash_pool *p, uint32_t i);
int leash__site_same(struct leash_pool *p, uint32_t i, uint32_t j);
/* The used sites' indexes, most acquired first (idx, acq: LEASH_SITES + 1 each). AS-safe. */
int leash__sites_sorted(struct leash_pool *p, uint32_t *idx, uint64_t *acq);
/* Adds s's per-site accumulators to the site table and clears them (s's owner). */
void leash__site_flush(struct leash_pool *p, struct leash_handle *s);
/* ---- stats (stats.c) ---- */
uint32_t leash__pool_in_use(const struct leash_pool *p);
/* Writes the held handles of p to fd, one line each; returns their count. AS-safe. */
int leash__report_held(int fd, struct leash_pool *p, const char *why);
/* Renders a dump into buf (cap bytes, NUL-terminated) without moving the text dump's
 * baseline; the length, or -1 if it did not fit. Async-signal-safe. */
long leash__render(char *buf, size_t cap, leash_format fmt);
/* AS-safe "age" formatting helpers used by reports. */
size_t leash__fmt_u64(char *buf, uint64_t v);
/* Reports a strict-mode violation on stderr (pool, what, borrow site) and aborts. */
_Noreturn void leash__strict_abort(struct leash_pool *p, struct leash_handle *s, const char *what);

/* ---- error.c ---- */
void leash__log_reset_once(void);
/* Locks (1) or unlocks (0) the log's mutexes around fork(). */
void leash__log_atfork(int lock);

#endif /* LEASH_CORE_H */
