/* An in-test adapter for the core's unit tests: counts what the pool does to it and fails
 * or dirties connections on demand. */
#ifndef LEASH_TEST_FAKE_H
#define LEASH_TEST_FAKE_H

#include "kit.h"

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
/* teardown_no_leaks (kit.h), then: no fake connection left alive. */
int fake_teardown(void **state);

#endif
