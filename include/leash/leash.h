/* leash core API: one process-wide manager, named pools of opaque connections,
 * handles that record their borrow site, scope guards, leak counters and stats. */
#ifndef LEASH_LEASH_H
#define LEASH_LEASH_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define LEASH_EXPORT
#elif defined(__GNUC__) || defined(__clang__)
#define LEASH_EXPORT __attribute__((visibility("default")))
#else
#define LEASH_EXPORT
#endif

#define LEASH_VERSION "0.1.0"

/* Longest pool name, in bytes, without the terminating NUL. A longer name is refused
 * with LEASH_EINVAL, never truncated. */
#define LEASH_NAME_MAX 63

/* Status codes. Numbered and append-only; 0 is success. */
typedef enum {
    LEASH_OK = 0,
    LEASH_ETIMEDOUT, /* the deadline passed (for a handle, a connect or a reply) */
    LEASH_EBUSY,     /* the pool already has max_waiters threads waiting */
    LEASH_ECONNECT,  /* the adapter could not make a connection */
    LEASH_EINVAL,    /* an argument is invalid (NULL, negative, malformed target, ...) */
    LEASH_ECLOSED,   /* the pool is closed */
    LEASH_ENOMEM,    /* out of memory */
    LEASH_EEXIST,    /* already exists (pool name, or leash_init after initialisation) */
    LEASH_ENOTFOUND, /* no such pool */
    LEASH_EMISUSE,   /* the handle is not checked out (double release, idle handle) */
    LEASH_EIO        /* a request failed on the connection (it was marked broken) */
} leash_status;

/* A static, human-readable string for s; "unknown status" for values out of range. */
LEASH_EXPORT const char *leash_strerror(leash_status s);
/* This thread's last failure, left alone by successful calls (like errno); LEASH_OK if none. */
LEASH_EXPORT leash_status leash_last_status(void);
/* The message of this thread's last failure, with detail; "" if none. Valid until this
 * thread's next failing leash call. Never contains a password. */
LEASH_EXPORT const char *leash_last_error(void);

/* ---- manager ---------------------------------------------------------------------- */

typedef struct leash_config {
    int strict;       /* -1: from LEASH_STRICT (default), 0 off, 1 on */
    int stats_signal; /* -1: from LEASH_STATS_SIGNAL=USR1|USR2 (default), 0 none, >0 that signal */
    int stats_fd;     /* where dumps go; -1: stderr (default, or LEASH_STATS_FILE) */
} leash_config;
#define LEASH_CONFIG_DEFAULT ((leash_config){.strict = -1, .stats_signal = -1, .stats_fd = -1})

/* Initialises the process-wide manager from cfg (NULL: LEASH_CONFIG_DEFAULT). Optional:
 * any other call initialises it with the defaults. The first initialisation wins; a later
 * call returns LEASH_EEXIST and changes nothing. stats_fd is borrowed, never closed. */
LEASH_EXPORT leash_status leash_init(const leash_config *cfg);
/* Closes every pool (reporting handles still out on the dump fd), stops every thread
 * leash started, restores the stats signal and frees everything. Handles and pools are
 * invalid afterwards. The next leash call initialises again, re-reading the environment.
 * No other thread may use leash while this runs. Safe to call when not initialised. */
LEASH_EXPORT void leash_shutdown(void);
/* 1 when strict release checking is on, else 0. */
LEASH_EXPORT int leash_strict(void);

/* level: 0 debug, 1 info, 2 warn, 3 error. msg never contains a password. */
typedef void (*leash_log_fn)(int level, const char *msg, void *arg);
#define LEASH_LOG_DEBUG 0
#define LEASH_LOG_INFO 1
#define LEASH_LOG_WARN 2
#define LEASH_LOG_ERROR 3
/* Routes leash's messages to fn (called from any thread, never from a signal handler).
 * fn NULL restores the default: warnings and errors to stderr, rate-limited. */
LEASH_EXPORT void leash_set_log(leash_log_fn fn, void *arg);

/* ---- adapters ---------------------------------------------------------------------- */

/* An adapter: how to make, check, clean and drop one connection.
 * ctx is the pool's adapter context (leash_pool_open_with), NULL otherwise.
 * The core never calls an adapter function with a pool lock held. */
enum {
    LEASH_RESET_CLEAN = 0,   /* reusable as it is */
    LEASH_RESET_CLEANED = 1, /* the borrower left state behind; cleaned, reusable (dirty_returns) */
    LEASH_RESET_DIRTY =
        2, /* the borrower left state behind; cannot clean: destroy (dirty_returns) */
    LEASH_RESET_BROKEN =
        -1 /* the connection failed (I/O, server gone): destroy, not the borrower's fault */
};
struct leash_pool;
typedef struct leash_adapter {
    const char *kind; /* "redis", "pg", "http", ... */
    /* Returns a new connection, or NULL with a message (no password) in err. Required. */
    void *(*connect)(void *ctx, const char *target, char *err, size_t errlen);
    int (*validate)(void *ctx, void *conn); /* 0 alive; optional (NULL: always alive) */
    int (*reset)(void *ctx, void *conn);    /* on release: a LEASH_RESET_* value; optional */
    void (*destroy)(void *ctx, void *conn); /* required */
    void (*abandon)(void *ctx, void *conn); /* in a forked child: free without touching the wire;
                                               optional (NULL: the connection is leaked) */
    void (*describe)(void *ctx, const char *target, char *out, size_t outlen);
    /* password-free target for dumps and errors; optional
       (NULL: the core removes URL userinfo passwords and password=...) */
    void (*ctx_free)(void *ctx); /* when the pool is freed; optional */

    /* Appended members: every one optional, so a zero-initialised table keeps working. */
    /* Once per process and adapter table, before the table's first pool opens (e.g. a
     * client library's global init). Returns 0, or nonzero to refuse the open. */
    int (*process_init)(void);
    /* Around fork(), from the core's own pthread_atfork handlers, in a fixed order: the
     * core takes its locks, then calls fork_prepare of each adapter table in the order
     * their first pool opened; fork_parent / fork_child run in the reverse order before the
     * core releases its locks. fork_child may only do async-signal-safe work. */
    void (*fork_prepare)(void);
    void (*fork_parent)(void);
    void (*fork_child)(void);
    /* leash_pool_retarget: checks target and, on success, makes the adapter's later
     * connects use it (an adapter that parsed its target into ctx re-parses it here; it
     * synchronises with its own connects in flight). Returns 0, or nonzero with a message
     * (no password) in err: the retarget is refused and nothing changes. NULL: the core
     * only passes the new string to later connects. */
    int (*retarget)(void *ctx, const char *target, char *err, size_t errlen);
    /* The pool was opened (attach) or closed (detach) with this ctx. An adapter that
     * watches its backend from a thread of its own (e.g. Redis Sentinel) starts it in
     * attach, keeps pool to call leash_pool_evict(pool) from it, and stops and joins
     * it in detach. pool stays valid until leash_shutdown. Called without pool locks. */
    void (*attach)(void *ctx, struct leash_pool *pool);
    void (*detach)(void *ctx);
    /* The server conn is connected to (e.g. "10.0.0.5:5432"), asked once right after connect:
     * shown in dumps and matched by leash_pool_evict_peer / leash_pool_check_peer. Optional. */
    void (*peer)(void *ctx, void *conn, char *out, size_t outlen);
} leash_adapter;

typedef struct leash_pool_options { /* zero means "default" for every field; negative is invalid */
    int max_size;                   /* 10 */
    int min_idle;                   /* 0 */
    int acquire_timeout_ms;         /* 1000 */
    int max_waiters;                /* 0: unbounded; else acquire fails fast with LEASH_EBUSY */
    int idle_timeout_ms;            /* 600000; idle connections above min_idle are closed */
    int max_lifetime_ms;            /* 1800000; older connections are replaced when idle */
    int validate_idle_ms;           /* 500; validate on acquire when idle longer than this */
    int leak_threshold_ms;          /* 0: off; held longer than this counts a suspected leak */
    /* appended */
    int max_connecting;     /* 2: connects in flight at once per pool; other borrowers wait for
                               a handle (a new one or a returned one, whichever comes first) */
    int keepalive_ms;       /* 120000: an idle connection idle this long is validated by leash's
                               own thread, off the borrowers' path; -1 off */
    int connect_backoff_ms; /* 1000: longest pause between connect attempts while the backend is
                               down; -1: no backoff and no fail-fast */
} leash_pool_options;

typedef struct leash_pool leash_pool;
typedef struct leash_handle leash_handle;

/* Opens a pool named name (1..LEASH_NAME_MAX bytes, unique among open pools) over adapter,
 * which must outlive the pool. target and opts are copied; opts NULL means all defaults.
 * No connection is made until the first acquire, unless min_idle asks for warm ones.
 * Returns NULL on failure (LEASH_EINVAL, LEASH_EEXIST, LEASH_ENOMEM; see leash_last_error). */
LEASH_EXPORT leash_pool *leash_pool_open(const char *name, const leash_adapter *adapter,
                                         const char *target, const leash_pool_options *opts);
/* The same with an adapter context: the pool owns ctx from here on, failure included
 * (adapter->ctx_free is called when the pool is freed, or at once on failure). */
LEASH_EXPORT leash_pool *leash_pool_open_with(const char *name, const leash_adapter *adapter,
                                              void *ctx, const char *target,
                                              const leash_pool_options *opts);
/* The open pool named name, or NULL (LEASH_ENOTFOUND, or LEASH_EINVAL for a NULL name). */
LEASH_EXPORT leash_pool *leash_pool_get(const char *name);
/* Closes pool: unregisters its name, wakes waiters with LEASH_ECLOSED, destroys idle
 * connections, and reports each handle still borrowed on the dump fd (counted
 * leaks_at_close) without waiting for it. The pool stays valid for stats until
 * leash_shutdown; a late release destroys its connection. NULL is a no-op. */
LEASH_EXPORT void leash_pool_close(leash_pool *pool);
/* The pool's name ("" for NULL). Borrowed; valid until leash_shutdown. */
LEASH_EXPORT const char *leash_pool_name(const leash_pool *pool);

/* ---- runtime control ---------------------------------------------------------------- */

/* Retires every connection of pool: idle ones are destroyed now, borrowed ones when they
 * are released (never reused; not dirty, not misuse), connects in flight when they land.
 * Counted destroyed_evicted. Returns how many connections it retired, or -1
 * (LEASH_EINVAL for a bad pool, LEASH_ECLOSED for a closed one). */
LEASH_EXPORT int leash_pool_evict(leash_pool *pool);
/* The same for the connections to one server: those whose adapter peer() said peer when
 * they connected (e.g. "127.0.0.1:6379"). For adapters that learn that a server changed
 * role. Returns how many it retired, or -1. */
LEASH_EXPORT int leash_pool_evict_peer(leash_pool *pool, const char *peer);
/* Idle connections to peer (all idle connections for peer NULL) are validated before they
 * are lent again, whatever validate_idle_ms says. Returns how many, or -1. */
LEASH_EXPORT int leash_pool_check_peer(leash_pool *pool, const char *peer);
/* New connections use target (copied); existing ones are evicted. A malformed target
 * (the adapter's retarget hook refuses it) is LEASH_EINVAL and changes nothing; the
 * message never contains a password. */
LEASH_EXPORT leash_status leash_pool_retarget(leash_pool *pool, const char *target);
/* Changes max_size and min_idle (-1 keeps a value). max_size >= 1 and min_idle <= max_size,
 * else LEASH_EINVAL and nothing changes. A shrink retires idle surplus within about a second
 * and borrowed surplus on release; a growth serves queued waiters at once, in order. */
LEASH_EXPORT leash_status leash_pool_resize(leash_pool *pool, int max_size, int min_idle);
/* Stops lending (acquires fail with LEASH_ECLOSED), waits up to timeout_ms (-1: forever)
 * for borrowed handles to come back, then closes the pool. LEASH_OK if all came back (none
 * counted leaks_at_close), else LEASH_ETIMEDOUT (the pool is closed all the same). */
LEASH_EXPORT leash_status leash_pool_drain(leash_pool *pool, int timeout_ms);
/* Readiness, for a probe: LEASH_OK; LEASH_ECONNECT while the backend is down (the last
 * connect error in leash_last_error()); LEASH_ECLOSED for a closed or draining pool;
 * LEASH_EINVAL for a bad pool. Never connects, never blocks. A pool that has not connected
 * yet is LEASH_OK. */
LEASH_EXPORT leash_status leash_pool_health(leash_pool *pool);
/* The password-free description of the pool's target (as in dumps). Borrowed; valid until
 * the next retarget or leash_shutdown. "" for NULL. */
LEASH_EXPORT const char *leash_pool_target(const leash_pool *pool);

/* ---- handles ----------------------------------------------------------------------- */

/* Borrows a connection from pool, waiting up to timeout_ms (-1: the pool's
 * acquire_timeout_ms, 0: no wait). file, line and func record the borrow site (use the
 * macros below). Returns the handle, or NULL with leash_last_status() set to
 * LEASH_ETIMEDOUT, LEASH_EBUSY, LEASH_ECONNECT, LEASH_ECLOSED or LEASH_EINVAL. */
LEASH_EXPORT leash_handle *leash_acquire_at(leash_pool *pool, int timeout_ms, const char *file,
                                            int line, const char *func);
#define leash_acquire(pool) leash_acquire_at((pool), -1, __FILE__, __LINE__, __func__)
#define leash_acquire_for(pool, ms) leash_acquire_at((pool), (ms), __FILE__, __LINE__, __func__)

/* Returns *h to its pool (the adapter's reset decides whether it is reused) and sets
 * *h = NULL. h NULL or *h NULL is a no-op. Releasing a handle that is not checked out is
 * misuse: counted and logged (strict mode: reported, then abort()). */
LEASH_EXPORT void leash_release(leash_handle **h);
/* Like leash_release, but the connection is broken: it is destroyed, never reused, and
 * counted discarded. Sets *h = NULL; NULL is a no-op. */
LEASH_EXPORT void leash_discard(leash_handle **h);
/* The adapter's connection object of a checked-out handle. Borrowed; valid until the
 * handle is released. NULL for NULL; NULL (and misuse) for a handle not checked out. */
LEASH_EXPORT void *leash_conn(leash_handle *h);
/* The same, but NULL unless h is held and from a pool of that adapter (a handle of another
 * adapter is not misuse; one of this adapter that is not checked out is, as for leash_conn). */
LEASH_EXPORT void *leash_conn_of(leash_handle *h, const leash_adapter *adapter);
/* Its connection failed: its release destroys it (no reset, not counted dirty). NULL, or a
 * handle not checked out, is a no-op. */
LEASH_EXPORT void leash_mark_broken(leash_handle *h);
/* The pool h was borrowed from, or NULL. */
LEASH_EXPORT leash_pool *leash_handle_pool(leash_handle *h);

/* Scope guards (GCC and Clang only: they use the cleanup attribute).
 *   LEASH_GUARD leash_handle *h = leash_acquire(pool);
 * asserts that h was released (or discarded) before its scope ends: if not, strict mode
 * reports the borrow site and aborts; default mode reclaims the handle (reset, or
 * destroyed when it cannot be reset) and counts leaks_reclaimed.
 *   LEASH_AUTO leash_handle *h = leash_acquire(pool);
 * is plain RAII: the handle is released at scope exit, nothing counted.
 * A guarded variable must always be initialised (NULL is fine). LEASH_TAKE(h) moves the
 * handle out of a guarded variable (returns it and sets the variable to NULL). */
LEASH_EXPORT void leash__guard_check(leash_handle **h);
LEASH_EXPORT void leash__guard_release(leash_handle **h);
#if defined(__GNUC__) || defined(__clang__)
#define LEASH_GUARD __attribute__((__cleanup__(leash__guard_check)))
#define LEASH_AUTO __attribute__((__cleanup__(leash__guard_release)))
#define LEASH_TAKE(h)                                                                              \
    __extension__({                                                                                \
        leash_handle *leash__taken_ = (h);                                                         \
        (h) = NULL;                                                                                \
        leash__taken_;                                                                             \
    })
#endif

/* ---- stats ------------------------------------------------------------------------- */

typedef struct leash_pool_stats {
    const char *name, *kind; /* borrowed from the pool; valid until leash_shutdown */
    uint32_t max_size, size, in_use, idle, waiting;
    uint64_t created, destroyed, acquired, released, timeouts, rejected, connect_failures,
        validation_failures, discarded, dirty_returns, leaks_reclaimed, leaks_suspected,
        leaks_at_close, returned_late, misuse;
    uint64_t wait_ns_total, wait_ns_max, hold_ns_total, hold_ns_max;
    /* appended */
    uint32_t connecting, consecutive_failures; /* connects in flight; failures since the last
                                                  success */
    uint64_t fast_failures, keepalives;        /* acquires refused at once while down; keepalive
                                                  checks */
    uint64_t last_connect_ok_ns, last_connect_fail_ns; /* CLOCK_MONOTONIC of the last success /
                                                          failure; 0 never */
    uint64_t destroyed_broken, destroyed_dirty, destroyed_idle, destroyed_lifetime,
        destroyed_evicted, destroyed_invalid, destroyed_closed; /* their sum is destroyed */
} leash_pool_stats;

/* Fills *out with pool's counters (a consistent view once the pool is quiet).
 * LEASH_EINVAL for NULL arguments. */
LEASH_EXPORT leash_status leash_pool_stats_get(leash_pool *pool, leash_pool_stats *out);
/* leaks_reclaimed + leaks_suspected + leaks_at_close; 0 for NULL. */
LEASH_EXPORT uint64_t leash_pool_leaks(leash_pool *pool);

typedef enum { LEASH_FORMAT_TEXT, LEASH_FORMAT_JSON, LEASH_FORMAT_PROMETHEUS } leash_format;
/* Writes every pool's counters and every held handle (grouped by borrow site) to fd.
 * Async-signal-safe: takes no lock, allocates nothing. A text dump also shows what
 * changed since the previous text dump, and becomes the new baseline; JSON and
 * Prometheus dumps do not move it. Returns 0, or -1 on a write error or bad argument. */
LEASH_EXPORT int leash_stats_dump(int fd, leash_format fmt);
/* One borrow site (file:line in func) of a pool. Strings are borrowed (the call site's
 * __FILE__ and __func__). The entry whose file is "(other sites)" counts the sites that did
 * not fit the pool's fixed table. */
typedef struct leash_site_stats {
    const char *file, *func;
    int line;
    uint64_t acquired, timeouts, held_now, leaks, dirty_returns, misuse;
    uint64_t wait_ns_total, wait_ns_max, hold_ns_total, hold_ns_max;
} leash_site_stats;
/* Fills up to max entries of out, busiest (most acquired) first; returns how many sites the
 * pool has seen (may exceed max). The table holds 64 sites; the ones past that share the
 * "(other sites)" entry and count as one. out may be NULL when max is 0. Bad arguments: -1
 * with LEASH_EINVAL. */
LEASH_EXPORT int leash_pool_sites(leash_pool *pool, leash_site_stats *out, int max);

/* Hooks, for tracing and a user's own metrics. A NULL member is skipped; NULL hooks remove
 * them. Never called with a pool lock held; called from the thread that did the work. */
typedef struct leash_hooks {
    void (*on_connect)(leash_pool *pool, uint64_t connect_ns, leash_status outcome, void *arg);
    void (*on_acquire)(leash_pool *pool, leash_handle *h /* NULL on failure */, uint64_t wait_ns,
                       leash_status outcome, void *arg);
    void (*on_release)(leash_pool *pool, leash_handle *h, uint64_t hold_ns, void *arg);
    /* h names the borrow that just ended (to match it with its on_acquire); it is no longer
     * checked out: do not use it (leash_conn on it is misuse). */
    void (*on_destroy)(leash_pool *pool, const char *reason, void *arg);
    /* reason: "broken", "dirty", "idle", "lifetime", "evicted", "invalid", "closed" */
} leash_hooks;
/* Sets (copies) or, with hooks NULL, removes pool's hooks. LEASH_EINVAL for a bad pool. */
LEASH_EXPORT leash_status leash_pool_set_hooks(leash_pool *pool, const leash_hooks *hooks,
                                               void *arg);

/* Handles checked out right now, all pools. */
LEASH_EXPORT int leash_outstanding(void);
/* Writes a report of every held handle (pool, borrow site, thread, age) to fd (-1: the
 * dump fd) and returns their count. For test teardowns: assert it returns 0. */
LEASH_EXPORT int leash_check_leaks(int fd);

#ifdef __cplusplus
}
#endif

#endif /* LEASH_LEASH_H */
