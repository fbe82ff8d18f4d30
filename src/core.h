/* Internal structures of the core: the manager, pools and their slot tables. */
#ifndef LEASH_CORE_H
#define LEASH_CORE_H

#include "common.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/types.h>

#define LEASH_POOL_MAGIC 0x4c504f4fu /* "LPOO" */
#define LEASH_SLOT_MAGIC 0x4c534c54u /* "LSLT" */
#define LEASH_POOL_SIZE_MAX 65535
#define LEASH_TARGET_DESC_MAX 256

/* A slot's life: EMPTY -> CONNECTING -> HELD <-> IDLE; RETURNING while a release runs;
 * ORPHANED when the pool closed while it was held. */
enum {
    SLOT_EMPTY = 0,
    SLOT_CONNECTING,
    SLOT_IDLE,
    SLOT_HELD,
    SLOT_RETURNING,
    SLOT_ORPHANED,
    SLOT_CACHED, /* idle, kept in the cache of the thread that returned it (not on the stack) */
};

/* Idle, on the stack or in a thread's cache. */
static inline int is_idle_state(int st)
{
    return st == SLOT_IDLE || st == SLOT_CACHED;
}

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

/* A handle is its slot. Fields the borrower writes are only written while it owns the
 * slot; they are atomics (relaxed) because the dump and the maintenance thread read them
 * without a lock. Slots start on a cache line of their own (the array is allocated aligned),
 * so two threads working on neighbouring slots do not pass one line back and forth. */
#define LEASH_CACHE_LINE 64
struct leash_handle {
    _Alignas(LEASH_CACHE_LINE) uint32_t magic;
    uint32_t index;
    struct leash_pool *pool;
    _Atomic int state;
    _Atomic uint32_t next; /* idle stack link: index + 1, 0 ends */
    void *conn;
    uint64_t conn_gen;           /* fork generation the connection was made in */
    _Atomic uint64_t expire_ns;  /* max_lifetime deadline (jittered) */
    _Atomic uint64_t idle_limit; /* idle timeout (jittered), ns */
    _Atomic int broken;

    /* the borrow record */
    _Atomic(const char *) file;
    _Atomic(const char *) func;
    _Atomic int line;
    _Atomic int tid;
    _Atomic uint64_t since_ns;   /* coarse clock */
    _Atomic uint64_t idle_since; /* coarse clock */
    _Atomic uint64_t suspected;  /* the borrow number counted as a suspected leak */

    /* counters owned by the slot's current owner: written with a plain load+store */
    _Atomic uint64_t acquired, released, hold_ns_total, hold_ns_max;
};

/* Where leaks and misuse happen: a small fixed table per pool, filled lock-free, so the
 * dumps can say which borrow site leaks (reclaimed handles are no longer held). */
#define LEASH_PROBLEM_SITES 16
enum { PROB_RECLAIMED, PROB_SUSPECTED, PROB_AT_CLOSE, PROB_DIRTY, PROB_MISUSE, PROB_KINDS };
struct leash_problem_site {
    _Atomic(const char *) file;
    _Atomic(const char *) func;
    _Atomic int line;
    _Atomic uint64_t n[PROB_KINDS];
    _Atomic uint64_t base[PROB_KINDS]; /* at the last text dump */
};

struct leash_waiter {
    struct leash_waiter *next;
    pthread_cond_t cond;
    int signaled; /* woken and not yet run: no second wake-up needed */
};

/* Slow-path counters, one atomic each, in dump order. */
#define LEASH_POOL_COUNTERS(X)                                                                     \
    X(created)                                                                                     \
    X(destroyed)                                                                                   \
    X(timeouts)                                                                                    \
    X(rejected)                                                                                    \
    X(connect_failures)                                                                            \
    X(validation_failures)                                                                         \
    X(discarded)                                                                                   \
    X(dirty_returns)                                                                               \
    X(leaks_reclaimed)                                                                             \
    X(leaks_suspected)                                                                             \
    X(leaks_at_close)                                                                              \
    X(returned_late)                                                                               \
    X(misuse)

struct leash_pool {
    uint32_t magic;
    uint32_t nslots; /* max_size */
    uint32_t id;     /* for the per-thread cache */
    struct leash_handle *slots;
    char name[LEASH_NAME_MAX + 1];
    const leash_adapter *adapter;
    void *ctx;
    char *target;
    char target_desc[LEASH_TARGET_DESC_MAX];

    /* resolved options */
    int min_idle, timeout_ms, max_waiters;
    uint64_t idle_ns, lifetime_ns, validate_ns, leak_ns;

    _Atomic uint64_t head; /* idle stack: (tag << 32) | (index + 1) */
    _Atomic int nwaiters;
    _Atomic uint64_t head_since; /* tick when the first waiter became first */
    _Atomic int closed;
    _Atomic int active; /* set by acquires, cleared by the maintenance thread */
    _Atomic uint64_t fork_gen;
    _Atomic uint32_t size; /* slots not EMPTY; written under lock */

    pthread_mutex_t lock;
    struct leash_waiter *wait_head, *wait_tail; /* under lock */
    char last_error[256];                       /* under lock: last connect failure */
    uint32_t rng;                               /* under lock */
    uint64_t refill_after;                      /* maintenance only: min_idle back-off */
    uint64_t refill_backoff;

#define LEASH_DECLARE_COUNTER(n) _Atomic uint64_t n;
    LEASH_POOL_COUNTERS(LEASH_DECLARE_COUNTER)
    _Atomic uint64_t wait_ns_total, wait_ns_max;

    struct leash_problem_site problems[LEASH_PROBLEM_SITES];
    _Atomic uint64_t problems_elsewhere; /* the table was full */

    /* the text dump's baseline ("changed since the last dump") */
    _Atomic int base_valid;
    _Atomic uint64_t base[32];

    _Atomic(struct leash_pool *) next_all; /* every pool since init, closed ones too */
};

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

/* ---- pools (pool.c) ---- */
void leash__pool_free(struct leash_pool *p);
void leash__pool_fixup_child(struct leash_pool *p);
void leash__pool_maintain(struct leash_pool *p, uint64_t now);
void leash__pool_destroy_orphans(struct leash_pool *p);
void leash__pool_lock_all(int lock);

/* ---- stats (stats.c) ---- */
/* Counts a leak or misuse of kind PROB_* at s's borrow site. Lock-free. */
void leash__count_problem(struct leash_pool *p, struct leash_handle *s, int kind);
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
