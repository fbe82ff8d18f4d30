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
/* Connects in flight right now, and the most seen at once since fake_reset(). */
extern _Atomic int fake_connecting, fake_connecting_peak;
/* While non-zero, connect blocks (a server that accepts and never answers), at most 10 s. */
extern _Atomic int fake_hang;
/* The peer fake_adapter_described reports for new connections ("" : none). */
extern char fake_peer[64];
extern const leash_adapter fake_adapter;           /* no describe: the core redacts */
extern const leash_adapter fake_adapter_described; /* with describe, ctx_free, retarget (refuses
                                                      a target containing "bad", with a message
                                                      quoting it) and peer (fake_peer) */

/* Zeroes the counters and knobs. */
void fake_reset(void);
/* teardown_no_leaks (kit.h), then: no fake connection left alive. */
int fake_teardown(void **state);

#endif
