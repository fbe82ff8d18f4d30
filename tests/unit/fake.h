/* An in-test adapter for the core's unit tests: counts what the pool does to it and fails
 * or dirties connections on demand. */
#ifndef LEASH_TEST_FAKE_H
#define LEASH_TEST_FAKE_H

#include <leash/leash.h>
#include <stdatomic.h>

struct fake_conn {
    int id;
    _Atomic int dirty;  /* reset returns this LEASH_RESET_* value once, then 0 */
    _Atomic int dead;   /* validate fails */
    _Atomic int in_use; /* a borrower is using it: a second one would be a bug */
};

struct fake_stats {
    _Atomic int connects, connect_fails, destroys, abandons, validates, resets, describes,
        ctx_frees, live;
};

extern struct fake_stats fake;
extern _Atomic int fake_fail_connect; /* connect fails while non-zero */
extern _Atomic int fake_connect_delay_ms;
extern _Atomic int fake_validate_result;
extern const leash_adapter fake_adapter;           /* no describe: the core redacts */
extern const leash_adapter fake_adapter_described; /* with describe and ctx_free */

/* Zeroes the counters and knobs. */
void fake_reset(void);
/* Sleeps ms milliseconds. */
void sleep_ms(int ms);
/* Reads everything from fd until EOF into a malloc'd string. */
char *slurp_fd(int fd);
/* Runs fn(arg) in a child process with stderr captured; returns the child's wait status
 * and, in *err (malloc'd), what it wrote to stderr. */
int run_child(void (*fn)(void *), void *arg, char **err);
/* Common teardown: no handle outstanding, then shut leash down. */
int teardown_no_leaks(void **state);
/* Counting invariant of DESIGN.md, for a quiet pool. */
void assert_balanced(leash_pool *p);

#endif
