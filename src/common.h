/* Internal helpers shared by the core and the adapters: errors, logging, redaction, time. */
#ifndef LEASH_COMMON_H
#define LEASH_COMMON_H

#include <leash/leash.h>

#include <signal.h>
#include <stdarg.h>
#include <stdint.h>

#if defined(__GNUC__) || defined(__clang__)
#define LEASH_PRINTF(f, a) __attribute__((format(printf, f, a)))
#define LEASH_LIKELY(x) __builtin_expect(!!(x), 1)
#define LEASH_UNLIKELY(x) __builtin_expect(!!(x), 0)
#else
#define LEASH_PRINTF(f, a)
#define LEASH_LIKELY(x) (x)
#define LEASH_UNLIKELY(x) (x)
#endif

/* Size of the per-thread error message buffer, NUL included. */
#define LEASH_ERR_MAX 512

/* Records s and a message as this thread's last failure and returns s. The message must
 * already be free of passwords. */
leash_status leash__fail(leash_status s, const char *fmt, ...) LEASH_PRINTF(2, 3);
/* The same, returning NULL, for functions that return a pointer. */
void *leash__fail_null(leash_status s, const char *fmt, ...) LEASH_PRINTF(2, 3);

/* Sends a message to the log callback (default: warn and error to stderr, rate-limited). */
void leash__log(int level, const char *fmt, ...) LEASH_PRINTF(2, 3);
/* Logs at most once per key (e.g. a call site's __FILE__ pointer and line); returns 1 if
 * it logged. */
int leash__log_once(const void *key, int line, int level, const char *fmt, ...) LEASH_PRINTF(4, 5);

/* Copies in to out (outlen bytes, always NUL-terminated) with every password removed: URL
 * userinfo (up to the last '@'), password=/password: key-value pairs however quoted, JSON and
 * SQL forms; the rules are written above the function in error.c. */
void leash__redact(const char *in, char *out, size_t outlen);

/* CLOCK_MONOTONIC in nanoseconds. */
uint64_t leash__now_ns(void);
/* CLOCK_MONOTONIC_COARSE in nanoseconds (a few ms resolution, far cheaper). */
uint64_t leash__coarse_ns(void);

/* SIGPIPE off for this thread around writes that may meet a closed peer: begin blocks it,
 * end consumes one the writes raised (one already pending before is left alone) and
 * restores the mask. Async-signal-safe. */
typedef struct leash__nopipe {
    sigset_t old;
    int was_pending;
} leash__nopipe;
void leash__nopipe_begin(leash__nopipe *np);
void leash__nopipe_end(leash__nopipe *np);

/* h's connection if h is held and from a pool of adapter a; otherwise NULL with LEASH_EINVAL
 * and a message "fn: the handle is NULL" or "fn: not a held KIND handle". For the adapters'
 * request helpers. */
void *leash__held_conn(leash_handle *h, const leash_adapter *a, const char *fn, const char *kind);

/* The core's allocations (alloc.c): like malloc, calloc, strdup, aligned_alloc and free, but
 * a test can make the n-th one fail (leash__alloc_fail_at(n); 0 turns it off). */
void *leash__malloc(size_t n);
void *leash__calloc(size_t n, size_t size);
char *leash__strdup(const char *s);
void *leash__aligned_alloc(size_t align, size_t n);
void leash__free(void *p);
LEASH_EXPORT void leash__alloc_fail_at(long n);
LEASH_EXPORT long leash__alloc_calls(void);

/* Makes sure the manager is initialised (adapters call this from their pool functions);
 * returns LEASH_OK or the failure (already recorded). */
leash_status leash__ensure_init(void);

#endif /* LEASH_COMMON_H */
