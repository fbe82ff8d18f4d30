/* Unit tests of the runtime control and outage behaviour (DESIGN.md, "Under change"): evict,
 * retarget, resize, drain and health with their bad input; the acquire deadline that includes
 * the connect; fail-fast and the backoff while a backend is down, and recovery; max_connecting;
 * keepalive; the messages of timed-out acquires. The in-test adapter (fake.c) is wrapped here
 * by a second table that records when each connect started and with which target, and whose
 * validate can be made slow. Every test ends with the counting invariant (destroyed_* summing
 * to destroyed included). */
#include "fake.h"

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ---- a recording adapter over the fake one ---- */

#define REC_MAX 4096
static struct {
    pthread_mutex_t mu;
    int n;
    uint64_t at_ms[REC_MAX]; /* when each connect started */
    char last_target[256];   /* the target the last connect was given */
} rec = {.mu = PTHREAD_MUTEX_INITIALIZER};
static _Atomic int slow_validate_ms; /* validate sleeps this long */
static _Atomic int in_validate;      /* a validate is running now */

static void rec_reset(void)
{
    pthread_mutex_lock(&rec.mu);
    rec.n = 0;
    rec.last_target[0] = '\0';
    pthread_mutex_unlock(&rec.mu);
    slow_validate_ms = 0;
    in_validate = 0;
}

static void *rec_connect(void *ctx, const char *target, char *err, size_t errlen)
{
    pthread_mutex_lock(&rec.mu);
    if (rec.n < REC_MAX)
        rec.at_ms[rec.n] = now_ms();
    rec.n++;
    snprintf(rec.last_target, sizeof rec.last_target, "%s", target);
    pthread_mutex_unlock(&rec.mu);
    return fake_adapter.connect(ctx, target, err, errlen);
}

static int rec_validate(void *ctx, void *conn)
{
    in_validate++;
    int d = slow_validate_ms;
    if (d)
        sleep_ms(d);
    int r = fake_adapter.validate(ctx, conn);
    in_validate--;
    return r;
}

/* A foreign adapter: no retarget hook, no describe (the core redacts), no peer. */
static const leash_adapter rec_adapter = {
    .kind = "rec",
    .connect = rec_connect,
    .validate = rec_validate,
    .reset = NULL, /* set from fake_adapter in setup: not a constant expression */
    .destroy = NULL,
    .abandon = NULL,
};
static leash_adapter rec_table;

static int rec_count(void)
{
    pthread_mutex_lock(&rec.mu);
    int n = rec.n;
    pthread_mutex_unlock(&rec.mu);
    return n;
}

static void rec_target(char *out, size_t outlen)
{
    pthread_mutex_lock(&rec.mu);
    snprintf(out, outlen, "%s", rec.last_target);
    pthread_mutex_unlock(&rec.mu);
}

static int setup(void **state)
{
    (void)state;
    fake_reset();
    rec_reset();
    rec_table = rec_adapter;
    rec_table.reset = fake_adapter.reset;
    rec_table.destroy = fake_adapter.destroy;
    rec_table.abandon = fake_adapter.abandon;
    return 0;
}

/* A connect left hanging would hold leash_shutdown up (it joins its connect threads). */
static int teardown(void **state)
{
    fake_hang = 0;
    fake_fail_connect = 0;
    fake_connect_delay_ms = 0;
    slow_validate_ms = 0;
    return fake_teardown(state);
}

/* ---- helpers ---- */

#define WAIT_UNTIL(cond, ms)                                                                       \
    __extension__({                                                                                \
        uint64_t end_ = now_ms() + (uint64_t)(ms);                                                 \
        int ok_;                                                                                   \
        while (!(ok_ = (cond)) && now_ms() < end_)                                                 \
            sleep_ms(2);                                                                           \
        ok_;                                                                                       \
    })

/* No run of 4 or more characters of secret appears in text. */
static void assert_no_fragment(const char *what, const char *text, const char *secret)
{
    size_t n = strlen(secret);
    for (size_t i = 0; i + 4 <= n; i++) {
        char frag[5];
        memcpy(frag, secret + i, 4);
        frag[4] = '\0';
        if (strstr(text, frag))
            fail_msg("%s holds \"%s\", a piece of the password: %s", what, frag, text);
    }
}

static void check_all(leash_pool *p)
{
    assert_invariant(p);
    leash_pool_stats s = stats(p);
    assert_int_equal(s.misuse, 0);
}

/* ---- bad input ---- */

static void test_bad_input(void **state)
{
    /* Bad input tried: a NULL pool and a pointer that is not a pool for every call; a closed
     * pool (every call, check_peer included); resize to max_size 0, -2 and over the limit, min_idle
     * -2 and above max_size (given, and kept from before); drain with timeout -2; evict_peer with a
     * NULL peer; retarget to NULL and to a target the adapter refuses, which quotes a password:
     * each answered with its status and a message, nothing changed, no piece of the password in the
     * message, the log, the description or a dump. */
    (void)state;
    static _Alignas(64) char junk[8192];
    leash_pool *np = (leash_pool *)junk;
    assert_int_equal(leash_pool_evict(NULL), -1);
    assert_int_equal(leash_last_status(), LEASH_EINVAL);
    assert_int_equal(leash_pool_evict(np), -1);
    assert_int_equal(leash_last_status(), LEASH_EINVAL);
    assert_int_equal(leash_pool_evict_peer(NULL, "x:1"), -1);
    assert_int_equal(leash_pool_check_peer(NULL, NULL), -1);
    assert_int_equal(leash_pool_retarget(NULL, "fake://h"), LEASH_EINVAL);
    assert_int_equal(leash_pool_retarget(np, "fake://h"), LEASH_EINVAL);
    assert_int_equal(leash_pool_resize(NULL, 4, 0), LEASH_EINVAL);
    assert_int_equal(leash_pool_resize(np, 4, 0), LEASH_EINVAL);
    assert_int_equal(leash_pool_drain(NULL, 10), LEASH_EINVAL);
    assert_int_equal(leash_pool_drain(np, 10), LEASH_EINVAL);
    assert_int_equal(leash_pool_health(NULL), LEASH_EINVAL);
    assert_non_null(strstr(leash_last_error(), "NULL"));
    assert_int_equal(leash_pool_health(np), LEASH_EINVAL);
    assert_string_equal(leash_pool_target(NULL), "");
    assert_string_equal(leash_pool_target(np), "");
    assert_int_equal(leash_pool_set_hooks(NULL, NULL, NULL), LEASH_EINVAL);

    capture_start();
    leash_pool_options o = {.max_size = 4, .min_idle = 1};
    leash_pool *p = leash_pool_open("ctl-bad", &fake_adapter_described, "fake://u:pw@good", &o);
    assert_non_null(p);
    assert_true(WAIT_UNTIL(stats(p).idle == 1, 2000));
    leash_handle *h = take(p);

    /* resize: nothing changes on refusal */
    struct {
        int max_size, min_idle;
        const char *says;
    } bad[] = {
        {0, 0, "max_size 0"},   {-2, 0, "max_size -2"}, {65536, 0, "max_size 65536"},
        {4, -2, "min_idle -2"}, {2, 3, "min_idle 3"},   {-1, 5, "min_idle 5"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(leash_pool_resize(p, bad[i].max_size, bad[i].min_idle), LEASH_EINVAL);
        assert_int_equal(leash_last_status(), LEASH_EINVAL);
        if (!strstr(leash_last_error(), bad[i].says))
            fail_msg("resize(%d, %d): \"%s\" does not say %s", bad[i].max_size, bad[i].min_idle,
                     leash_last_error(), bad[i].says);
        assert_int_equal(stats(p).max_size, 4);
    }
    /* min_idle 1 kept from before, max_size 0: still refused */
    assert_int_equal(leash_pool_resize(p, 0, -1), LEASH_EINVAL);
    assert_int_equal(stats(p).max_size, 4);

    /* drain: a bad timeout leaves the pool open and lending */
    assert_int_equal(leash_pool_drain(p, -2), LEASH_EINVAL);
    assert_non_null(strstr(leash_last_error(), "-2"));
    leash_handle *h2 = take(p);
    leash_release(&h2);

    /* evict_peer: NULL peer */
    assert_int_equal(leash_pool_evict_peer(p, NULL), -1);
    assert_int_equal(leash_last_status(), LEASH_EINVAL);

    /* retarget: NULL, and a target the adapter refuses while quoting it */
    int connects = fake.connects, destroys = fake.destroys;
    char before[256];
    snprintf(before, sizeof before, "%s", leash_pool_target(p));
    assert_int_equal(leash_pool_retarget(p, NULL), LEASH_EINVAL);
    assert_int_equal(leash_pool_retarget(p, "fake://u:s3cret-pw@bad"), LEASH_EINVAL);
    assert_int_equal(leash_last_status(), LEASH_EINVAL);
    assert_non_null(strstr(leash_last_error(), "ctl-bad"));
    assert_no_fragment("the refusal", leash_last_error(), "s3cret-pw");
    assert_no_fragment("the log", log_text, "s3cret-pw");
    assert_string_equal(leash_pool_target(p), before);
    assert_no_fragment("the target", leash_pool_target(p), "s3cret-pw");
    char *d = dump(LEASH_FORMAT_TEXT);
    assert_no_fragment("the dump", d, "s3cret-pw");
    free(d);
    /* nothing evicted: the held handle comes back to be reused, the idle one is still there */
    assert_int_equal(fake.destroys, destroys);
    leash_release(&h);
    h = take(p);
    leash_release(&h);
    assert_int_equal(fake.connects, connects);
    assert_int_equal(stats(p).destroyed, 0);

    /* a closed pool: every control call says so */
    leash_pool_close(p);
    assert_int_equal(leash_pool_evict(p), -1);
    assert_int_equal(leash_last_status(), LEASH_ECLOSED);
    assert_int_equal(leash_pool_evict_peer(p, "x:1"), -1);
    assert_int_equal(leash_last_status(), LEASH_ECLOSED);
    assert_int_equal(leash_pool_retarget(p, "fake://h"), LEASH_ECLOSED);
    assert_int_equal(leash_pool_resize(p, 8, 0), LEASH_ECLOSED);
    assert_int_equal(leash_pool_drain(p, 10), LEASH_ECLOSED);
    assert_int_equal(leash_pool_health(p), LEASH_ECLOSED);
    assert_non_null(strstr(leash_last_error(), "closed"));
    assert_int_equal(stats(p).max_size, 4);
    check_all(p);
    /* like evict_peer: a closed pool is an error, not "0 connections to check" */
    assert_int_equal(leash_pool_check_peer(p, NULL), -1);
    assert_int_equal(leash_last_status(), LEASH_ECLOSED);
}

/* ---- evict ---- */

static void test_evict_idle_and_held(void **state)
{
    /* Bad input tried: handles held across an evict (released afterwards, and one discarded),
     * an idle one in this thread's cache: none is reused, none counted dirty or misuse. */
    (void)state;
    leash_pool_options o = {.max_size = 4};
    leash_pool *p = leash_pool_open("ctl-evict", &fake_adapter, "fake://h", &o);
    leash_handle *a = take(p), *b = take(p), *c = take(p);
    struct fake_conn *ca = leash_conn(a);
    leash_release(&c); /* idle (in this thread's cache) */
    assert_int_equal(leash_pool_evict(p), 3);
    leash_pool_stats s = stats(p);
    assert_int_equal(s.destroyed_evicted, 1); /* the idle one, at once */
    assert_int_equal(s.idle, 0);
    assert_int_equal(fake.live, 2);
    /* held ones keep working until they are released */
    assert_ptr_equal(leash_conn(a), ca);
    int resets = fake.resets;
    leash_release(&a);
    leash_discard(&b);
    s = stats(p);
    assert_int_equal(s.destroyed_evicted, 2);
    assert_int_equal(s.destroyed_broken, 1); /* a discard is a discard, evicted or not */
    assert_int_equal(s.dirty_returns, 0);
    assert_int_equal(s.misuse, 0);
    assert_int_equal(s.size, 0);
    assert_int_equal(fake.resets, resets); /* an evicted connection is not reset, just closed */
    assert_int_equal(fake.live, 0);
    /* the next borrower gets a new connection */
    leash_handle *d = take(p);
    assert_ptr_not_equal(leash_conn(d), NULL);
    assert_int_equal(fake.connects, 4);
    leash_release(&d);
    assert_int_equal(leash_pool_evict(p), 1);
    assert_int_equal(stats(p).destroyed_evicted, 3);
    check_all(p);
}

static void test_evict_connect_in_flight(void **state)
{
    /* Bad input tried: an evict while a connect is still running (the borrower that started
     * it gave up): the connection lands retired, never lent. */
    (void)state;
    leash_pool *p = leash_pool_open("ctl-evict-flight", &fake_adapter, "fake://h", NULL);
    fake_hang = 1;
    assert_null(leash_acquire_for(p, 50));
    assert_int_equal(leash_last_status(), LEASH_ETIMEDOUT);
    assert_int_equal(stats(p).connecting, 1);
    assert_int_equal(leash_pool_evict(p), 0); /* nothing connected yet */
    fake_hang = 0;
    assert_true(WAIT_UNTIL(stats(p).connecting == 0 && stats(p).size == 0, 2000));
    leash_pool_stats s = stats(p);
    assert_int_equal(s.created, 1);
    assert_int_equal(s.destroyed_evicted, 1);
    assert_int_equal(s.idle, 0);
    assert_int_equal(fake.live, 0);
    leash_handle *h = take(p);
    leash_release(&h);
    assert_int_equal(fake.connects, 2);
    check_all(p);
}

static void test_evict_peer_and_check_peer(void **state)
{
    /* Bad input tried: a peer no connection is on (nothing retired); connections with no
     * peer at all. */
    (void)state;
    leash_pool_options o = {.max_size = 4};
    leash_pool *p = leash_pool_open("ctl-peer", &fake_adapter_described, "fake://h", &o);
    snprintf(fake_peer, sizeof fake_peer, "10.0.0.1:5432");
    leash_handle *a = take(p), *b = take(p);
    snprintf(fake_peer, sizeof fake_peer, "10.0.0.2:5432");
    leash_handle *c = take(p);
    leash_release(&b); /* idle, on 10.0.0.1 */
    assert_int_equal(leash_pool_evict_peer(p, "10.0.0.9:5432"), 0);
    assert_int_equal(leash_pool_check_peer(p, "10.0.0.9:5432"), 0);
    assert_int_equal(leash_pool_check_peer(p, "10.0.0.1:5432"), 1); /* the idle one */
    int validates = fake.validates;
    leash_handle *b2 = take(p); /* checked before it is lent, whatever validate_idle_ms says */
    assert_int_equal(fake.validates, validates + 1);
    leash_release(&b2);
    assert_int_equal(leash_pool_evict_peer(p, "10.0.0.1:5432"), 2);
    assert_int_equal(stats(p).destroyed_evicted, 1);
    leash_release(&a);
    leash_release(&c); /* on 10.0.0.2: kept */
    leash_pool_stats s = stats(p);
    assert_int_equal(s.destroyed_evicted, 2);
    assert_int_equal(s.idle, 1);
    check_all(p);
}

/* ---- retarget ---- */

static void test_retarget_foreign_adapter(void **state)
{
    /* Bad input tried: a target with a password in its userinfo (never shown), handles held
     * across the retarget, an adapter without the retarget hook (the core passes the new
     * string to its next connects). */
    (void)state;
    capture_start();
    leash_pool_options o = {.max_size = 4};
    leash_pool *p = leash_pool_open("ctl-retarget", &rec_table, "fake://old-host", &o);
    leash_handle *a = take(p), *b = take(p);
    leash_release(&b); /* idle */
    char t[256];
    rec_target(t, sizeof t);
    assert_string_equal(t, "fake://old-host");
    assert_int_equal(leash_pool_retarget(p, "fake://u:s3cret-pw@new-host"), LEASH_OK);
    assert_non_null(strstr(leash_pool_target(p), "new-host"));
    assert_no_fragment("the target", leash_pool_target(p), "s3cret-pw");
    assert_no_fragment("the log", log_text, "s3cret-pw");
    char *d = dump(LEASH_FORMAT_TEXT);
    assert_no_fragment("the dump", d, "s3cret-pw");
    free(d);
    assert_int_equal(stats(p).destroyed_evicted, 1); /* the idle one, at once */
    /* new connects see the new string */
    leash_handle *c = take(p);
    rec_target(t, sizeof t);
    assert_string_equal(t, "fake://u:s3cret-pw@new-host");
    leash_release(&c);
    leash_release(&a); /* made for the old target: not reused */
    leash_pool_stats s = stats(p);
    assert_int_equal(s.destroyed_evicted, 2);
    assert_int_equal(s.size, 1);
    assert_int_equal(s.dirty_returns, 0);
    check_all(p);
}

static void test_retarget_connect_in_flight(void **state)
{
    /* Bad input tried: a retarget while a connect to the old target is still running (its
     * borrower gave up): it lands retired, and the next connect uses the new target. */
    (void)state;
    leash_pool *p = leash_pool_open("ctl-retarget-flight", &rec_table, "fake://old", NULL);
    fake_hang = 1;
    assert_null(leash_acquire_for(p, 50));
    assert_int_equal(stats(p).connecting, 1);
    assert_int_equal(leash_pool_retarget(p, "fake://new"), LEASH_OK);
    fake_hang = 0;
    assert_true(WAIT_UNTIL(stats(p).connecting == 0 && stats(p).size == 0, 2000));
    assert_int_equal(stats(p).destroyed_evicted, 1);
    leash_handle *h = take(p);
    char t[256];
    rec_target(t, sizeof t);
    assert_string_equal(t, "fake://new");
    leash_release(&h);
    assert_int_equal(stats(p).created, 2);
    check_all(p);
}

static void test_retarget_hook_refusal_changes_nothing(void **state)
{
    /* Bad input tried: a target the adapter's hook refuses (it quotes the password): the
     * target, its connections and later connects are all unchanged. */
    (void)state;
    leash_pool *p =
        leash_pool_open("ctl-retarget-hook", &fake_adapter_described, "fake://good", NULL);
    leash_handle *h = take(p);
    leash_release(&h);
    const char *desc = leash_pool_target(p);
    char before[256];
    snprintf(before, sizeof before, "%s", desc);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(leash_pool_retarget(p, "fake://u:s3cret-pw@bad"), LEASH_EINVAL);
        assert_no_fragment("the refusal", leash_last_error(), "s3cret-pw");
    }
    assert_string_equal(leash_pool_target(p), before);
    h = take(p);
    leash_release(&h);
    assert_int_equal(fake.connects, 1);
    assert_int_equal(stats(p).destroyed, 0);
    /* an accepted one goes through the hook and evicts */
    assert_int_equal(leash_pool_retarget(p, "fake://other"), LEASH_OK);
    assert_non_null(strstr(leash_pool_target(p), "other"));
    assert_int_equal(stats(p).destroyed_evicted, 1);
    check_all(p);
}

static void test_retarget_while_down(void **state)
{
    /* Bad input tried: a retarget away from a backend that is down (every connect to it
     * failed) to one that works: the failures were the old target's, so the first acquire
     * after the retarget connects to the new one instead of failing fast. */
    (void)state;
    leash_pool *p = leash_pool_open("ctl-retarget-down", &rec_table, "fake://dead", NULL);
    fake_fail_connect = 1;
    for (int i = 0; i < 3; i++)
        assert_null(leash_acquire_for(p, 100));
    assert_int_equal(leash_pool_health(p), LEASH_ECONNECT);
    fake_fail_connect = 0; /* the new target works */
    assert_int_equal(leash_pool_retarget(p, "fake://alive"), LEASH_OK);
    uint64_t t0 = now_ms();
    leash_handle *h = leash_acquire_for(p, 1000);
    if (!h)
        fail_msg("the first acquire after a retarget away from a down backend failed after "
                 "%llu ms: %s",
                 (unsigned long long)(now_ms() - t0), leash_last_error());
    leash_release(&h);
    assert_int_equal(leash_pool_health(p), LEASH_OK);
    check_all(p);
}

/* ---- resize ---- */

struct order {
    pthread_mutex_t mu;
    int ids[64];
    int n;
};

struct waiter_arg {
    leash_pool *p;
    int id;
    int hold_ms;
    struct order *order;
    leash_status st;
};

static void *ordered_waiter(void *v)
{
    struct waiter_arg *a = v;
    leash_handle *h = leash_acquire_for(a->p, 10000);
    a->st = h ? LEASH_OK : leash_last_status();
    if (h) {
        pthread_mutex_lock(&a->order->mu);
        a->order->ids[a->order->n++] = a->id;
        pthread_mutex_unlock(&a->order->mu);
        sleep_ms(a->hold_ms);
        leash_release(&h);
    }
    return NULL;
}

/* Starts n waiters one after the other, each queued before the next starts. */
static void queue_waiters(leash_pool *p, pthread_t *t, struct waiter_arg *args, int n,
                          struct order *ord, int hold_ms)
{
    uint32_t before = stats(p).waiting;
    for (int i = 0; i < n; i++) {
        args[i] = (struct waiter_arg){p, i + 1, hold_ms, ord, LEASH_OK};
        pthread_create(&t[i], NULL, ordered_waiter, &args[i]);
        if (!WAIT_UNTIL(stats(p).waiting == before + (uint32_t)i + 1, 2000))
            fail_msg("waiter %d did not queue", i + 1);
    }
}

static void test_resize_grow_serves_queue_in_order(void **state)
{
    /* Bad input tried: a growth while six threads are queued on a full pool, connects slow
     * and one at a time: the queue is served in arrival order, by new and returned handles. */
    (void)state;
    leash_pool_options o = {.max_size = 2, .max_connecting = 1};
    leash_pool *p = leash_pool_open("ctl-grow", &fake_adapter, "fake://h", &o);
    leash_handle *m1 = take(p), *m2 = take(p);
    fake_connect_delay_ms = 80;
    struct order ord = {.mu = PTHREAD_MUTEX_INITIALIZER};
    pthread_t t[6];
    struct waiter_arg args[6];
    /* Every hand-over at least 80 ms after the one before, so the order the threads record
     * is the order they were served in, even on a busy machine. */
    queue_waiters(p, t, args, 6, &ord, 1000);
    assert_int_equal(leash_pool_resize(p, 4, -1), LEASH_OK);
    assert_int_equal(stats(p).max_size, 4);
    /* two new connections, one after the other, for the first two */
    assert_true(WAIT_UNTIL(ord.n == 2, 2000));
    sleep_ms(80);
    leash_release(&m1); /* to waiter 3 */
    assert_true(WAIT_UNTIL(ord.n == 3, 2000));
    sleep_ms(80);
    leash_release(&m2); /* to waiter 4; 5 and 6 get what 1 and 2 return */
    for (int i = 0; i < 6; i++) {
        pthread_join(t[i], NULL);
        assert_int_equal(args[i].st, LEASH_OK);
    }
    assert_int_equal(ord.n, 6);
    for (int i = 0; i < 6; i++)
        if (ord.ids[i] != i + 1)
            fail_msg("served out of order: position %d went to waiter %d", i, ord.ids[i]);
    assert_int_equal(stats(p).created, 4);
    check_all(p);
}

static void test_resize_shrink_with_queue(void **state)
{
    /* Bad input tried: a shrink from 4 to 2 while all 4 are borrowed and four threads wait:
     * the first two handles returned are surplus (retired, not dirty, not misuse), the
     * waiters are served in arrival order by the rest. */
    (void)state;
    leash_pool_options o = {.max_size = 4};
    leash_pool *p = leash_pool_open("ctl-shrink-q", &fake_adapter, "fake://h", &o);
    leash_handle *m[4];
    for (int i = 0; i < 4; i++)
        m[i] = take(p);
    struct order ord = {.mu = PTHREAD_MUTEX_INITIALIZER};
    pthread_t t[4];
    struct waiter_arg args[4];
    queue_waiters(p, t, args, 4, &ord, 200);
    assert_int_equal(leash_pool_resize(p, 2, -1), LEASH_OK);
    for (int i = 0; i < 4; i++) { /* 80 ms apart: the recorded order is the served order */
        leash_release(&m[i]);
        sleep_ms(80);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
        assert_int_equal(args[i].st, LEASH_OK);
    }
    for (int i = 0; i < 4; i++)
        if (ord.ids[i] != i + 1)
            fail_msg("served out of order: position %d went to waiter %d", i, ord.ids[i]);
    leash_pool_stats s = stats(p);
    assert_int_equal(s.destroyed_evicted, 2);
    assert_int_equal(s.size, 2);
    assert_int_equal(s.created, 4); /* no connect for the waiters: the pool is at its size */
    assert_int_equal(s.dirty_returns, 0);
    check_all(p);
}

static void test_resize_shrink_idle_and_borrowed(void **state)
{
    /* Bad input tried: a shrink below the number of idle connections with nobody borrowing
     * (retired within about a second, by leash's thread), then one below the number
     * borrowed (retired on release); min_idle raised with a resize is honoured. */
    (void)state;
    leash_pool_options o = {.max_size = 6};
    leash_pool *p = leash_pool_open("ctl-shrink", &fake_adapter, "fake://h", &o);
    leash_handle *h[6];
    for (int i = 0; i < 6; i++)
        h[i] = take(p);
    for (int i = 0; i < 6; i++)
        leash_release(&h[i]);
    assert_int_equal(stats(p).idle, 6);
    uint64_t t0 = now_ms();
    assert_int_equal(leash_pool_resize(p, 2, -1), LEASH_OK);
    assert_true(WAIT_UNTIL(stats(p).size == 2, 2000));
    uint64_t took = now_ms() - t0;
    if (took > 1100)
        fail_msg("idle surplus retired after %llu ms", (unsigned long long)took);
    assert_int_equal(stats(p).destroyed_evicted, 4);

    /* borrowed surplus: retired when it comes back */
    assert_int_equal(leash_pool_resize(p, 5, -1), LEASH_OK);
    for (int i = 0; i < 5; i++)
        h[i] = take(p);
    assert_int_equal(leash_pool_resize(p, 3, -1), LEASH_OK);
    for (int i = 0; i < 5; i++)
        leash_release(&h[i]);
    leash_pool_stats s = stats(p);
    assert_int_equal(s.size, 3);
    assert_int_equal(s.destroyed_evicted, 6);
    assert_int_equal(s.dirty_returns, 0);

    /* min_idle raised: kept warm up to it */
    assert_int_equal(leash_pool_resize(p, 8, 6), LEASH_OK);
    assert_true(WAIT_UNTIL(stats(p).idle == 6, 2000));
    /* -1 keeps both */
    assert_int_equal(leash_pool_resize(p, -1, -1), LEASH_OK);
    assert_int_equal(stats(p).max_size, 8);
    check_all(p);
}

/* ---- drain ---- */

struct holder {
    leash_pool *p;
    int hold_ms;
    _Atomic int holding;
};

static void *hold_then_release(void *v)
{
    struct holder *a = v;
    leash_handle *h = leash_acquire_for(a->p, 2000);
    a->holding = h ? 1 : -1;
    sleep_ms(a->hold_ms);
    leash_release(&h);
    return NULL;
}

static void test_drain_completes(void **state)
{
    /* Bad input tried: acquires during a drain (refused as draining), a handle that comes
     * back during it, acquires after it (closed). */
    (void)state;
    leash_pool *p = leash_pool_open("ctl-drain", &fake_adapter, "fake://h", NULL);
    leash_handle *idle = take(p);
    leash_release(&idle);
    struct holder a = {p, 150, 0}, b = {p, 250, 0};
    pthread_t ta, tb;
    pthread_create(&ta, NULL, hold_then_release, &a);
    pthread_create(&tb, NULL, hold_then_release, &b);
    assert_true(WAIT_UNTIL(a.holding && b.holding, 2000));
    assert_int_equal(a.holding + b.holding, 2);
    uint64_t t0 = now_ms();
    pthread_t tc;
    struct holder c = {p, 0, 0};
    assert_int_equal(leash_pool_drain(p, 3000), LEASH_OK);
    uint64_t took = now_ms() - t0;
    assert_true(took >= 200 && took < 2000);
    pthread_create(&tc, NULL, hold_then_release, &c);
    pthread_join(tc, NULL);
    assert_int_equal(c.holding, -1);
    assert_null(leash_acquire(p));
    assert_int_equal(leash_last_status(), LEASH_ECLOSED);
    assert_null(leash_pool_get("ctl-drain"));
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    leash_pool_stats s = stats(p);
    assert_int_equal(s.leaks_at_close, 0);
    assert_int_equal(s.size, 0);
    assert_int_equal(fake.live, 0);
    assert_int_equal(s.destroyed_closed, s.created);
    check_all(p);
}

struct drain_borrower {
    leash_pool *p;
    leash_status st;
    int says_draining;
};

/* Waits until the pool is draining (health says ECLOSED), then asks for a handle. */
static void *acquire_during_drain(void *v)
{
    struct drain_borrower *a = v;
    uint64_t end = now_ms() + 2000;
    while (leash_pool_health(a->p) != LEASH_ECLOSED && now_ms() < end)
        sleep_ms(1);
    leash_handle *h = leash_acquire_for(a->p, 500);
    a->st = h ? LEASH_OK : leash_last_status();
    a->says_draining = !h && strstr(leash_last_error(), "draining") != NULL;
    leash_release(&h);
    return NULL;
}

static void test_drain_refuses_borrowers(void **state)
{
    /* Bad input tried: a borrower that asks while the drain waits for a handle that is never
     * returned in time, and one queued (pool of 1, handle out) before the drain began. */
    (void)state;
    leash_pool_options o = {.max_size = 1};
    leash_pool *p = leash_pool_open("ctl-drain-refuse", &fake_adapter, "fake://h", &o);
    leash_handle *h = take(p);
    struct drain_borrower b = {p, LEASH_OK, 0};
    pthread_t t;
    pthread_create(&t, NULL, acquire_during_drain, &b);
    /* and one already queued when the drain starts: woken at once, not at its deadline */
    struct holder q = {p, 0, 0};
    pthread_t tq;
    pthread_create(&tq, NULL, hold_then_release, &q);
    assert_true(WAIT_UNTIL(stats(p).waiting == 1, 2000));
    uint64_t t0 = now_ms();
    assert_int_equal(leash_pool_drain(p, 300), LEASH_ETIMEDOUT);
    pthread_join(tq, NULL);
    assert_int_equal(q.holding, -1);
    assert_true(now_ms() - t0 < 1000); /* its own deadline was 2 s */
    pthread_join(t, NULL);
    if (b.st != LEASH_ECLOSED || !b.says_draining)
        fail_msg("a borrower during a drain got %s (want ECLOSED, saying \"draining\")",
                 leash_strerror(b.st));
    leash_release(&h);
    assert_int_equal(stats(p).leaks_at_close, 1);
    check_all(p);
}

static void test_drain_times_out(void **state)
{
    /* Bad input tried: a handle never returned within the drain's timeout; released late. */
    (void)state;
    leash_pool *p = leash_pool_open("ctl-drain-late", &fake_adapter, "fake://h", NULL);
    leash_handle *h = take(p), *i = take(p);
    leash_release(&i);
    uint64_t t0 = now_ms();
    assert_int_equal(leash_pool_drain(p, 150), LEASH_ETIMEDOUT);
    uint64_t took = now_ms() - t0;
    assert_true(took >= 140 && took < 1000);
    assert_non_null(strstr(leash_last_error(), "1 handle"));
    assert_non_null(strstr(leash_last_error(), "ctl-drain-late"));
    leash_pool_stats s = stats(p);
    assert_int_equal(s.leaks_at_close, 1);
    assert_int_equal(s.in_use, 0); /* the borrow ended at close */
    assert_null(leash_pool_get("ctl-drain-late"));
    leash_release(&h); /* late: destroys the connection, not misuse */
    s = stats(p);
    assert_int_equal(s.misuse, 0);
    assert_int_equal(s.size, 0);
    assert_int_equal(s.destroyed_closed, 2);
    assert_int_equal(fake.live, 0);
    check_all(p);
}

/* ---- health ---- */

static void test_health_never_connects(void **state)
{
    /* Bad input tried: health asked of a pool that never connected, over and over (it must
     * not connect), of a pool that is down (it must not wait for the probe), and of a
     * closed pool. */
    (void)state;
    leash_pool *p = leash_pool_open("ctl-health", &fake_adapter, "fake://u:s3cret-pw@h", NULL);
    for (int i = 0; i < 100; i++)
        assert_int_equal(leash_pool_health(p), LEASH_OK);
    assert_int_equal(fake.connects + fake.connect_fails, 0);
    assert_int_equal(stats(p).created, 0);

    fake_fail_connect = 1;
    for (int i = 0; i < 3; i++)
        assert_null(leash_acquire_for(p, 100));
    int attempts = fake.connect_fails;
    uint64_t t0 = now_ms();
    for (int i = 0; i < 100; i++) {
        assert_int_equal(leash_pool_health(p), LEASH_ECONNECT);
        assert_int_equal(leash_last_status(), LEASH_ECONNECT);
    }
    assert_true(now_ms() - t0 < 100);
    assert_non_null(strstr(leash_last_error(), "fake refused")); /* the last connect error */
    assert_non_null(strstr(leash_last_error(), "ctl-health"));
    assert_no_fragment("health's message", leash_last_error(), "s3cret-pw");
    assert_true(fake.connect_fails <= attempts + 1); /* at most the maintenance probe */
    leash_pool_stats s = stats(p);
    assert_true(s.consecutive_failures >= 2);
    assert_true(s.last_connect_fail_ns > 0);
    assert_int_equal(s.last_connect_ok_ns, 0);

    leash_pool_close(p);
    assert_int_equal(leash_pool_health(p), LEASH_ECLOSED);
    check_all(p);
}

static void test_health_without_fail_fast(void **state)
{
    /* Bad input tried: connect_backoff_ms -1 (no backoff, no fail-fast) and a backend whose
     * every connect fails: readiness still says the backend cannot be reached. */
    (void)state;
    leash_pool_options o = {.connect_backoff_ms = -1};
    leash_pool *p = leash_pool_open("ctl-health-nobackoff", &fake_adapter, "fake://h", &o);
    fake_fail_connect = 1;
    for (int i = 0; i < 5; i++)
        assert_null(leash_acquire_for(p, 100));
    assert_int_equal(stats(p).consecutive_failures, 5);
    assert_int_equal(stats(p).fast_failures, 0);
    leash_status st = leash_pool_health(p);
    if (st != LEASH_ECONNECT)
        fail_msg("health is %s after 5 failed connects in a row with connect_backoff_ms -1",
                 leash_strerror(st));
    check_all(p);
}

/* ---- deadlines ---- */

static void test_deadline_includes_connect(void **state)
{
    /* Bad input tried: a connect that hangs (a server that accepts and never answers) under a
     * 200 ms acquire deadline; then the connect completes late. */
    (void)state;
    leash_pool_options o = {.acquire_timeout_ms = 200};
    leash_pool *p = leash_pool_open("ctl-deadline", &fake_adapter, "fake://h", &o);
    fake_hang = 1;
    uint64_t t0 = now_ms();
    leash_handle *h = leash_acquire(p);
    uint64_t took = now_ms() - t0;
    assert_null(h);
    assert_int_equal(leash_last_status(), LEASH_ETIMEDOUT);
    if (took < 190 || took > 400)
        fail_msg("acquire with a hanging connect returned after %llu ms (deadline 200)",
                 (unsigned long long)took);
    assert_non_null(strstr(leash_last_error(), "1 connect in flight"));
    assert_non_null(strstr(leash_last_error(), "200 ms"));
    assert_int_equal(stats(p).timeouts, 1);
    /* the connection that arrives later joins the pool */
    fake_hang = 0;
    assert_true(WAIT_UNTIL(stats(p).idle == 1, 2000));
    t0 = now_ms();
    h = leash_acquire_for(p, 0);
    assert_non_null(h);
    assert_int_equal(fake.connects, 1);
    leash_release(&h);
    check_all(p);
}

static void test_deadline_includes_validation(void **state)
{
    /* Bad input tried: an idle connection whose validation on acquire is slow (400 ms, a PING
     * to a server that stopped answering) under a 100 ms deadline, taken from this thread's
     * cache and from the stack. */
    (void)state;
    leash_pool_options o = {.validate_idle_ms = 1, .acquire_timeout_ms = 100};
    leash_pool *p = leash_pool_open("ctl-deadline-validate", &rec_table, "fake://h", &o);
    for (int from_stack = 0; from_stack < 2; from_stack++) {
        leash_handle *h = take(p), *other = from_stack ? take(p) : NULL;
        leash_release(&h);
        leash_release(&other); /* h on the stack, other in this thread's cache */
        if (from_stack)
            assert_non_null(other = take(p)); /* the cached one: h stays on the stack */
        sleep_ms(150);
        slow_validate_ms = 400;
        uint64_t t0 = now_ms();
        h = leash_acquire(p);
        uint64_t took = now_ms() - t0;
        slow_validate_ms = 0;
        leash_release(&h);
        leash_release(&other);
        if (took > 200)
            fail_msg("an acquire with a 100 ms deadline took %llu ms (validation of an idle "
                     "connection from the %s)",
                     (unsigned long long)took, from_stack ? "stack" : "thread's cache");
    }
    check_all(p);
}

static void test_timeout_zero_never_waits_for_connect(void **state)
{
    /* Bad input tried: acquire with timeout 0 on an empty pool whose connects take 300 ms,
     * and while a connect hangs. */
    (void)state;
    leash_pool *p = leash_pool_open("ctl-zero", &fake_adapter, "fake://h", NULL);
    fake_connect_delay_ms = 300;
    uint64_t t0 = now_ms();
    assert_null(leash_acquire_for(p, 0));
    assert_int_equal(leash_last_status(), LEASH_ETIMEDOUT);
    assert_true(now_ms() - t0 < 50);
    /* it may start one for the next borrower: that one is served by it */
    assert_true(WAIT_UNTIL(stats(p).idle == 1, 2000));
    fake_connect_delay_ms = 0;
    leash_handle *h = leash_acquire_for(p, 0);
    assert_non_null(h);
    fake_hang = 1;
    t0 = now_ms();
    leash_handle *h2 = leash_acquire_for(p, 0);
    assert_null(h2);
    assert_true(now_ms() - t0 < 50);
    fake_hang = 0;
    leash_release(&h);
    assert_true(WAIT_UNTIL(stats(p).connecting == 0, 2000));
    check_all(p);
}

static void test_timeout_message_names_holders(void **state)
{
    /* Bad input tried: a pool whose handles are all borrowed (from two known lines) and a
     * connect that hangs: the timed-out acquire says who holds them, for how long, and that
     * a connect is in flight. */
    (void)state;
    leash_pool_options o = {.max_size = 3};
    leash_pool *p = leash_pool_open("ctl-holders", &fake_adapter, "fake://h", &o);
    int line_a = __LINE__ + 1;
    leash_handle *a = leash_acquire(p);
    sleep_ms(30);
    int line_b = __LINE__ + 1;
    leash_handle *b = leash_acquire(p);
    assert_non_null(a);
    assert_non_null(b);
    fake_hang = 1;
    sleep_ms(20);
    assert_null(leash_acquire_for(p, 100));
    const char *msg = leash_last_error();
    char want[128];
    snprintf(want, sizeof want, "test-control.c:%d in test_timeout_message_names_holders() for ",
             line_a);
    if (!strstr(msg, want))
        fail_msg("\"%s\" does not name the holder at line %d", msg, line_a);
    snprintf(want, sizeof want, "test-control.c:%d", line_b);
    assert_non_null(strstr(msg, want));
    assert_non_null(strstr(msg, " ms"));
    assert_non_null(strstr(msg, "2 in use"));
    assert_non_null(strstr(msg, "1 connect in flight"));
    /* the oldest holder first */
    char *pa = strstr(msg, "test-control.c:");
    snprintf(want, sizeof want, "test-control.c:%d", line_a);
    assert_ptr_equal(pa, strstr(msg, want));
    fake_hang = 0;
    leash_release(&a);
    leash_release(&b);
    assert_true(WAIT_UNTIL(stats(p).connecting == 0, 2000));
    check_all(p);
}

/* ---- backend down: backoff, fail-fast, recovery ---- */

struct hammer {
    leash_pool *p;
    _Atomic int *stop;
    _Atomic uint64_t *first_ok_ms; /* set by the first success after recovery_from */
    _Atomic uint64_t *recovery_from;
    int failed, succeeded, slow;
    uint64_t worst_fail_ms;
};

static void *hammer_main(void *v)
{
    struct hammer *a = v;
    while (!*a->stop) {
        uint64_t t0 = now_ms();
        leash_handle *h = leash_acquire_for(a->p, 1000);
        uint64_t took = now_ms() - t0;
        if (h) {
            a->succeeded++;
            uint64_t from = *a->recovery_from;
            uint64_t zero = 0;
            if (from)
                atomic_compare_exchange_strong(a->first_ok_ms, &zero, now_ms());
            sleep_ms(1);
            leash_release(&h);
        } else {
            a->failed++;
            if (took > a->worst_fail_ms)
                a->worst_fail_ms = took;
            if (took >= 50 * (uint64_t)slow_factor())
                a->slow++;
        }
        sleep_ms(1);
    }
    return NULL;
}

static void test_backoff_schedule_and_recovery(void **state)
{
    /* Bad input tried: a backend whose every connect fails, 16 threads hammering a pool of 4
     * for 2 s; then the backend comes back. */
    (void)state;
    leash_pool_options o = {.max_size = 4};
    leash_pool *p = leash_pool_open("ctl-backoff", &rec_table, "fake://h", &o);
    fake_fail_connect = 1;
    _Atomic int stop = 0;
    _Atomic uint64_t first_ok = 0, recovery_from = 0;
    struct hammer a[16];
    pthread_t t[16];
    uint64_t t0 = now_ms();
    for (int i = 0; i < 16; i++) {
        a[i] = (struct hammer){p, &stop, &first_ok, &recovery_from, 0, 0, 0, 0};
        pthread_create(&t[i], NULL, hammer_main, &a[i]);
    }
    /* The first failed check, reported once the threads are stopped and joined (they point
     * into this frame). */
    char why[768] = "";
#define FAIL_LATER(...)                                                                            \
    do {                                                                                           \
        if (!why[0])                                                                               \
            snprintf(why, sizeof why, __VA_ARGS__);                                                \
    } while (0)
    sleep_ms(2000);
    int n = rec_count();
    uint64_t at[64];
    pthread_mutex_lock(&rec.mu);
    for (int i = 0; i < n && i < 64; i++)
        at[i] = rec.at_ms[i] - t0;
    pthread_mutex_unlock(&rec.mu);
    char sched[512] = "";
    for (int i = 0, k = 0; i < n && i < 64; i++)
        k += snprintf(sched + k, sizeof sched - (size_t)k, " %llu", (unsigned long long)at[i]);
    print_message("connect attempts while down, ms after the start:%s\n", sched);
    /* bounded: two failures, then about one probe per doubling step (50, 100, 200, 400, 800,
     * 1000 ms) in 2 s; a storm would be thousands */
    if (n < 5 || n > 12)
        FAIL_LATER("%d connect attempts in 2 s while down (ms:%s)", n, sched);
    /* after the pool went down (the first two failures, maybe a third already started),
     * attempts are spaced by the backoff: never closer than about 50 ms, never further apart
     * than connect_backoff_ms and a maintenance tick */
    int first = 2;
    while (first < n && at[first] - at[first - 1] < 20)
        first++;
    /* (under valgrind, which runs one thread at a time, an attempt can land tens of ms late:
     * the schedule's shape is checked on a normal run; its bounds hold everywhere) */
    for (int i = first + 1; i < n && i < 64 && !under_valgrind(); i++) {
        uint64_t gap = at[i] - at[i - 1];
        if (gap < 45 || gap > 1150)
            FAIL_LATER("attempts %d and %d %llu ms apart (ms:%s)", i - 1, i,
                       (unsigned long long)gap, sched);
    }
    /* the steps grow up to the ceiling */
    if (n >= first + 4 && !under_valgrind()) {
        uint64_t g1 = at[first + 1] - at[first], g3 = at[first + 3] - at[first + 2];
        if (g3 < g1 * 2)
            FAIL_LATER("backoff not growing: %llu then %llu ms (ms:%s)", (unsigned long long)g1,
                       (unsigned long long)g3, sched);
    }
    leash_pool_stats s = stats(p);
    if (s.fast_failures <= (uint64_t)(100 / slow_factor()))
        FAIL_LATER("only %llu fast failures while down", (unsigned long long)s.fast_failures);
    if (s.connect_failures != (uint64_t)fake.connect_fails)
        FAIL_LATER("connect_failures %llu, the backend saw %d",
                   (unsigned long long)s.connect_failures, (int)fake.connect_fails);
    if (s.consecutive_failures < 4)
        FAIL_LATER("consecutive_failures %u", s.consecutive_failures);
    if (leash_pool_health(p) != LEASH_ECONNECT)
        FAIL_LATER("health is not ECONNECT while down");
    const char *msg = leash_last_error();
    char want[64];
    snprintf(want, sizeof want, "%u connect attempts", s.consecutive_failures);
    if (!strstr(msg, "down for") || !strstr(msg, "fake refused") || !strstr(msg, want))
        FAIL_LATER("\"%s\" does not say \"down for\", \"fake refused\" and %s", msg, want);

    /* recovery: served within the backoff */
    fake_fail_connect = 0;
    recovery_from = now_ms();
    uint64_t r0 = recovery_from;
    if (!WAIT_UNTIL(first_ok != 0, 3000))
        FAIL_LATER("nothing served within 3 s of the backend coming back");
    uint64_t back = first_ok ? first_ok - r0 : 0;
    int healthy = leash_pool_health(p) == LEASH_OK;
    stop = 1;
    int failed = 0, slow = 0, ok = 0;
    uint64_t worst = 0;
    for (int i = 0; i < 16; i++) {
        pthread_join(t[i], NULL);
        failed += a[i].failed;
        slow += a[i].slow;
        ok += a[i].succeeded;
        if (a[i].worst_fail_ms > worst)
            worst = a[i].worst_fail_ms;
    }
    if (why[0])
        fail_msg("%s", why);
#undef FAIL_LATER
    if (back > 1200 * (uint64_t)slow_factor())
        fail_msg("first acquire served %llu ms after the backend came back",
                 (unsigned long long)back);
    assert_true(healthy);
    if (slow)
        fail_msg("%d of %d failed acquires took 50 ms or more (worst %llu ms)", slow, failed,
                 (unsigned long long)worst);
    assert_true(ok > 0);
    s = stats(p);
    assert_true(s.fast_failures <= (uint64_t)failed);
    assert_int_equal(s.consecutive_failures, 0);
    assert_true(s.last_connect_ok_ns > s.last_connect_fail_ns);
    check_all(p);
}

struct one_try {
    leash_pool *p;
    pthread_barrier_t *go;
};

static void *one_acquire(void *v)
{
    struct one_try *a = v;
    pthread_barrier_wait(a->go);
    leash_handle *h = leash_acquire_for(a->p, 2000);
    leash_release(&h);
    return NULL;
}

static void test_backoff_first_step(void **state)
{
    /* Bad input tried: three connects running at once (max_connecting 3, 30 ms each) that all
     * fail: the pool is down after the second; the third, already running then, must not
     * double the first pause (about 50 ms) before the first probe. */
    (void)state;
    leash_pool_options o = {.max_size = 4, .max_connecting = 3};
    leash_pool *p = leash_pool_open("ctl-backoff-first", &rec_table, "fake://h", &o);
    fake_fail_connect = 1;
    fake_connect_delay_ms =
        30 * slow_factor(); /* all three connects overlap, also under valgrind */
    pthread_barrier_t go;
    pthread_barrier_init(&go, NULL, 3);
    struct one_try a = {p, &go};
    pthread_t t[3];
    for (int i = 0; i < 3; i++)
        pthread_create(&t[i], NULL, one_acquire, &a);
    for (int i = 0; i < 3; i++)
        pthread_join(t[i], NULL);
    pthread_barrier_destroy(&go);
    assert_int_equal(fake_connecting_peak, 3);
    assert_int_equal(leash_pool_health(p), LEASH_ECONNECT);
    const char *at = strstr(leash_last_error(), "next attempt in ");
    assert_non_null(at);
    int next = atoi(at + strlen("next attempt in "));
    if (next > 55)
        fail_msg("the first probe after the pool went down is %d ms away (about 50 expected): %s",
                 next, leash_last_error());
    check_all(p);
}

/* ---- max_connecting ---- */

struct burst {
    leash_pool *p;
    leash_status st;
};

static void *burst_main(void *v)
{
    struct burst *a = v;
    leash_handle *h = leash_acquire_for(a->p, 10000);
    a->st = h ? LEASH_OK : leash_last_status();
    sleep_ms(30);
    leash_release(&h);
    return NULL;
}

static void run_burst(int max_connecting, int want_peak_max)
{
    fake_reset();
    leash_pool_options o = {.max_size = 32, .max_connecting = max_connecting};
    char name[32];
    snprintf(name, sizeof name, "ctl-burst-%d", max_connecting);
    leash_pool *p = leash_pool_open(name, &fake_adapter, "fake://h", &o);
    fake_connect_delay_ms = 20 * slow_factor(); /* connects overlap, also under valgrind */
    struct burst a[32];
    pthread_t t[32];
    for (int i = 0; i < 32; i++) {
        a[i] = (struct burst){p, LEASH_EINVAL};
        pthread_create(&t[i], NULL, burst_main, &a[i]);
    }
    for (int i = 0; i < 32; i++) {
        pthread_join(t[i], NULL);
        if (a[i].st != LEASH_OK)
            fail_msg("max_connecting %d: thread %d got %s", max_connecting, i,
                     leash_strerror(a[i].st));
    }
    int peak = fake_connecting_peak;
    if (peak > want_peak_max)
        fail_msg("max_connecting %d: %d connects in flight at once", max_connecting, peak);
    /* the bound is reached, not undercut by accident */
    if (peak < (want_peak_max < 3 ? want_peak_max : 3))
        fail_msg("max_connecting %d: only %d connects at once", max_connecting, peak);
    fake_connect_delay_ms = 0;
    check_all(p);
    leash_pool_close(p);
}

static void test_max_connecting_peak(void **state)
{
    /* Bad input tried: 32 threads at once on an empty pool of 32 whose connects take 20 ms,
     * with the default and with max_connecting 5. */
    (void)state;
    run_burst(0, 2);
    run_burst(5, 5);
}

/* ---- keepalive ---- */

static void test_keepalive_replaces_dead_idle(void **state)
{
    /* Bad input tried: an idle connection that died while nobody borrowed it (min_idle 1,
     * keepalive 100 ms): leash's thread finds it, destroys it and makes a fresh one. */
    (void)state;
    leash_pool_options o = {.min_idle = 1, .keepalive_ms = 100};
    leash_pool *p = leash_pool_open("ctl-keepalive", &fake_adapter, "fake://h", &o);
    assert_true(WAIT_UNTIL(stats(p).idle == 1, 2000));
    leash_handle *h = take(p);
    ((struct fake_conn *)leash_conn(h))->dead = 1;
    leash_release(&h);
    uint64_t t0 = now_ms();
    assert_true(WAIT_UNTIL(stats(p).destroyed_invalid == 1 && stats(p).idle == 1, 2000));
    uint64_t took = now_ms() - t0;
    if (took > 1000)
        fail_msg("dead idle connection replaced after %llu ms", (unsigned long long)took);
    leash_pool_stats s = stats(p);
    assert_true(s.keepalives >= 1);
    assert_int_equal(s.created, 2);
    assert_int_equal(s.validation_failures, 1);
    assert_int_equal(fake.live, 1);
    /* healthy ones are checked and kept */
    sleep_ms(300);
    s = stats(p);
    assert_true(s.keepalives >= 2);
    assert_int_equal(s.created, 2);
    assert_int_equal(s.destroyed, 1);
    check_all(p);
}

struct zero_take {
    leash_pool *p;
    int got;
    char error[512];
};

static void *take_zero(void *v)
{
    struct zero_take *a = v;
    leash_handle *h = leash_acquire_for(a->p, 0);
    a->got = h != NULL;
    if (!h)
        snprintf(a->error, sizeof a->error, "%s", leash_last_error());
    leash_release(&h);
    return NULL;
}

static void test_keepalive_does_not_hide_other_idle(void **state)
{
    /* Bad input tried: a keepalive check that is slow (300 ms) on one idle connection while
     * another idle connection is not due: a borrower (timeout 0) during the check gets the
     * one that is not being checked. */
    (void)state;
    leash_pool_options o = {.max_size = 2, .keepalive_ms = 100, .validate_idle_ms = 60000};
    leash_pool *p = leash_pool_open("ctl-keepalive-slow", &rec_table, "fake://h", &o);
    leash_handle *a = take(p), *b = take(p);
    leash_release(&a);
    sleep_ms(150); /* a is due */
    slow_validate_ms = 300;
    leash_release(&b); /* b is fresh */
    assert_true(WAIT_UNTIL(in_validate == 1, 1000));
    pthread_t t;
    struct zero_take z = {p, 0, ""};
    pthread_create(&t, NULL, take_zero, &z);
    pthread_join(t, NULL);
    int during = in_validate;
    slow_validate_ms = 0;
    assert_true(WAIT_UNTIL(in_validate == 0, 1000));
    if (!z.got)
        fail_msg("a borrower found no idle handle while leash's thread checked another one "
                 "(check still running: %d): %s",
                 during, z.error);
    check_all(p);
}

/* ---- a borrower whose handle is being validated when the pool changes ---- */

struct validated_take {
    leash_pool *p;
    int conn_id;
    leash_status st;
    uint64_t released_ms;
};

static void *take_validated(void *v)
{
    struct validated_take *a = v;
    leash_handle *h = leash_acquire_for(a->p, 3000);
    a->st = h ? LEASH_OK : leash_last_status();
    if (h) {
        a->conn_id = ((struct fake_conn *)leash_conn(h))->id;
        sleep_ms(50);
        a->released_ms = now_ms();
        leash_release(&h);
    }
    return NULL;
}

/* A pool with one idle connection that the next acquire validates (slowly); returns the
 * connection's id. */
static int one_idle_to_validate(leash_pool *p)
{
    leash_handle *h = take(p);
    int id = ((struct fake_conn *)leash_conn(h))->id;
    leash_release(&h);
    sleep_ms(150); /* idle past validate_idle_ms on the pools' coarse clock */
    slow_validate_ms = 200;
    return id;
}

static void test_evict_during_validation_on_acquire(void **state)
{
    /* Bad input tried: an evict (and a retarget) while an acquire validates the idle
     * connection it took (a slow PING): the evict returns before the acquire does, so the
     * borrower must not be lent the connection made before it. */
    (void)state;
    leash_pool_options o = {.validate_idle_ms = 1};
    for (int use_retarget = 0; use_retarget < 2; use_retarget++) {
        rec_reset();
        leash_pool *p =
            leash_pool_open(use_retarget ? "ctl-validate-retarget" : "ctl-validate-evict",
                            &rec_table, "fake://old", &o);
        int old_id = one_idle_to_validate(p);
        struct validated_take a = {p, 0, LEASH_EINVAL, 0};
        pthread_t t;
        pthread_create(&t, NULL, take_validated, &a);
        assert_true(WAIT_UNTIL(in_validate == 1, 1000));
        if (use_retarget)
            assert_int_equal(leash_pool_retarget(p, "fake://new"), LEASH_OK);
        else
            assert_int_equal(leash_pool_evict(p), 1);
        pthread_join(t, NULL);
        slow_validate_ms = 0;
        assert_int_equal(a.st, LEASH_OK);
        if (a.conn_id == old_id)
            fail_msg("%s returned, then a borrower was lent the connection made before it "
                     "(it was being validated)",
                     use_retarget ? "leash_pool_retarget" : "leash_pool_evict");
        check_all(p);
        leash_pool_close(p);
    }
}

struct drain_call {
    leash_pool *p;
    leash_status st;
    uint64_t done_ms;
};

static void test_drain_during_validation_on_acquire(void **state)
{
    /* Bad input tried: a drain while an acquire validates the idle connection it took: the
     * borrower is either refused (ECLOSED) or waited for; never lent a handle after the
     * drain said every handle came back. */
    (void)state;
    leash_pool_options o = {.validate_idle_ms = 1};
    leash_pool *p = leash_pool_open("ctl-validate-drain", &rec_table, "fake://h", &o);
    one_idle_to_validate(p);
    struct validated_take a = {p, 0, LEASH_EINVAL, 0};
    pthread_t t;
    pthread_create(&t, NULL, take_validated, &a);
    assert_true(WAIT_UNTIL(in_validate == 1, 1000));
    leash_status st = leash_pool_drain(p, 2000);
    uint64_t drained = now_ms();
    pthread_join(t, NULL);
    slow_validate_ms = 0;
    if (a.st == LEASH_OK && (st != LEASH_OK || a.released_ms > drained))
        fail_msg("leash_pool_drain returned %s %llu ms before the borrower it let through "
                 "released its handle (leaks_at_close %llu)",
                 leash_strerror(st), (unsigned long long)(a.released_ms - drained),
                 (unsigned long long)stats(p).leaks_at_close);
    if (a.st != LEASH_OK)
        assert_int_equal(a.st, LEASH_ECLOSED);
    check_all(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_bad_input, setup, teardown),
        cmocka_unit_test_setup_teardown(test_evict_idle_and_held, setup, teardown),
        cmocka_unit_test_setup_teardown(test_evict_connect_in_flight, setup, teardown),
        cmocka_unit_test_setup_teardown(test_evict_peer_and_check_peer, setup, teardown),
        cmocka_unit_test_setup_teardown(test_retarget_foreign_adapter, setup, teardown),
        cmocka_unit_test_setup_teardown(test_retarget_connect_in_flight, setup, teardown),
        cmocka_unit_test_setup_teardown(test_retarget_hook_refusal_changes_nothing, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_retarget_while_down, setup, teardown),
        cmocka_unit_test_setup_teardown(test_resize_grow_serves_queue_in_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_resize_shrink_with_queue, setup, teardown),
        cmocka_unit_test_setup_teardown(test_resize_shrink_idle_and_borrowed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_drain_completes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_drain_refuses_borrowers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_drain_times_out, setup, teardown),
        cmocka_unit_test_setup_teardown(test_health_never_connects, setup, teardown),
        cmocka_unit_test_setup_teardown(test_health_without_fail_fast, setup, teardown),
        cmocka_unit_test_setup_teardown(test_deadline_includes_connect, setup, teardown),
        cmocka_unit_test_setup_teardown(test_deadline_includes_validation, setup, teardown),
        cmocka_unit_test_setup_teardown(test_timeout_zero_never_waits_for_connect, setup, teardown),
        cmocka_unit_test_setup_teardown(test_timeout_message_names_holders, setup, teardown),
        cmocka_unit_test_setup_teardown(test_backoff_schedule_and_recovery, setup, teardown),
        cmocka_unit_test_setup_teardown(test_backoff_first_step, setup, teardown),
        cmocka_unit_test_setup_teardown(test_max_connecting_peak, setup, teardown),
        cmocka_unit_test_setup_teardown(test_keepalive_replaces_dead_idle, setup, teardown),
        cmocka_unit_test_setup_teardown(test_keepalive_does_not_hide_other_idle, setup, teardown),
        cmocka_unit_test_setup_teardown(test_evict_during_validation_on_acquire, setup, teardown),
        cmocka_unit_test_setup_teardown(test_drain_during_validation_on_acquire, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
