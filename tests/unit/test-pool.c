/* Unit tests of pools: acquire, release, waiting, capacity, connect failures, validation,
 * expiry, min_idle, leak threshold, close, threads and bad input. */
#include "fake.h"

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int setup(void **state)
{
    (void)state;
    fake_reset();
    return 0;
}

/* Polls cond(p) for up to ms milliseconds. */
static int wait_for(leash_pool *p, int (*cond)(leash_pool *), int ms)
{
    uint64_t end = now_ms() + (uint64_t)ms;
    while (!cond(p)) {
        if (now_ms() > end)
            return 0;
        sleep_ms(5);
    }
    return 1;
}

static void test_lazy_open_and_lifo_reuse(void **state)
{
    (void)state;
    leash_pool *p = leash_pool_open("lifo", &fake_adapter, "fake://h", NULL);
    assert_non_null(p);
    assert_int_equal(fake.connects, 0); /* lazy: nothing until the first acquire */
    assert_ptr_equal(leash_pool_get("lifo"), p);
    assert_string_equal(leash_pool_name(p), "lifo");

    leash_handle *a = leash_acquire(p);
    leash_handle *b = leash_acquire(p);
    assert_non_null(a);
    assert_non_null(b);
    struct fake_conn *ca = leash_conn(a), *cb = leash_conn(b);
    assert_ptr_not_equal(ca, cb);
    assert_ptr_equal(leash_handle_pool(a), p);
    leash_release(&a);
    assert_null(a);
    leash_release(&b);
    /* LIFO: the last one returned is the next one lent. */
    leash_handle *c = leash_acquire(p);
    assert_ptr_equal(leash_conn(c), cb);
    leash_release(&c);
    leash_pool_stats st = stats(p);
    assert_int_equal(st.created, 2);
    assert_int_equal(st.acquired, 3);
    assert_int_equal(st.released, 3);
    assert_int_equal(st.size, 2);
    assert_int_equal(st.idle, 2);
    assert_int_equal(st.in_use, 0);
    assert_invariant(p);
}

static void test_acquire_times_out_with_reason(void **state)
{
    (void)state;
    leash_pool_options o = {.max_size = 2, .acquire_timeout_ms = 80};
    leash_pool *p = leash_pool_open("tmo", &fake_adapter, "fake://h", &o);
    leash_handle *a = leash_acquire(p), *b = leash_acquire(p);
    assert_non_null(b);
    uint64_t t0 = now_ms();
    leash_handle *c = leash_acquire(p);
    uint64_t took = now_ms() - t0;
    assert_null(c);
    assert_int_equal(leash_last_status(), LEASH_ETIMEDOUT);
    assert_true(took >= 70 && took < 1000);
    const char *msg = leash_last_error();
    assert_non_null(strstr(msg, "\"tmo\""));
    assert_non_null(strstr(msg, "80 ms"));
    assert_non_null(strstr(msg, "size 2 of 2"));
    assert_non_null(strstr(msg, "2 in use"));

    /* 0: no wait at all. */
    t0 = now_ms();
    assert_null(leash_acquire_for(p, 0));
    assert_int_equal(leash_last_status(), LEASH_ETIMEDOUT);
    assert_true(now_ms() - t0 < 50);
    assert_int_equal(stats(p).timeouts, 2);
    leash_release(&a);
    leash_release(&b);
    assert_invariant(p);
}

struct fifo_arg {
    leash_pool *p;
    int id;
    int *order;
    _Atomic int *n;
};

static void *fifo_waiter(void *v)
{
    struct fifo_arg *a = v;
    leash_handle *h = leash_acquire_for(a->p, 5000);
    if (h) {
        a->order[atomic_fetch_add(a->n, 1)] = a->id;
        sleep_ms(5);
        leash_release(&h);
    }
    return NULL;
}

static int waiting_is(leash_pool *p, uint32_t n)
{
    leash_pool_stats st;
    leash_pool_stats_get(p, &st);
    return st.waiting == n;
}
static int one_waiting(leash_pool *p)
{
    return waiting_is(p, 1);
}
static int two_waiting(leash_pool *p)
{
    return waiting_is(p, 2);
}
static int three_waiting(leash_pool *p)
{
    return waiting_is(p, 3);
}
static int four_waiting(leash_pool *p)
{
    return waiting_is(p, 4);
}

static void test_waiters_served_in_arrival_order(void **state)
{
    (void)state;
    leash_pool_options o = {.max_size = 1};
    leash_pool *p = leash_pool_open("fifo", &fake_adapter, "fake://h", &o);
    leash_handle *h = leash_acquire(p);
    int order[4] = {0};
    _Atomic int n = 0;
    pthread_t t[4];
    struct fifo_arg args[4];
    int (*waiting[4])(leash_pool *) = {one_waiting, two_waiting, three_waiting, four_waiting};
    for (int i = 0; i < 4; i++) {
        args[i] = (struct fifo_arg){p, i + 1, order, &n};
        pthread_create(&t[i], NULL, fifo_waiter, &args[i]);
        assert_true(wait_for(p, waiting[i], 2000)); /* queued before the next one starts */
    }
    leash_release(&h);
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    assert_int_equal(n, 4);
    for (int i = 0; i < 4; i++)
        assert_int_equal(order[i], i + 1);
    assert_true(stats(p).wait_ns_max > 0);
    assert_invariant(p);
}

static void *hold_wait(void *v)
{
    leash_pool *p = v;
    leash_handle *h = leash_acquire_for(p, 5000);
    intptr_t st = h ? LEASH_OK : leash_last_status();
    leash_release(&h);
    return (void *)st;
}

static void test_max_waiters_answers_busy_at_once(void **state)
{
    (void)state;
    leash_pool_options o = {.max_size = 1, .max_waiters = 1};
    leash_pool *p = leash_pool_open("busy", &fake_adapter, "fake://h", &o);
    leash_handle *h = leash_acquire(p);
    pthread_t t;
    pthread_create(&t, NULL, hold_wait, p);
    assert_true(wait_for(p, one_waiting, 2000));
    uint64_t t0 = now_ms();
    assert_null(leash_acquire_for(p, 5000));
    assert_true(now_ms() - t0 < 100);
    assert_int_equal(leash_last_status(), LEASH_EBUSY);
    assert_non_null(strstr(leash_last_error(), "max_waiters 1"));
    assert_int_equal(stats(p).rejected, 1);
    leash_release(&h);
    void *r;
    pthread_join(t, &r);
    assert_int_equal((intptr_t)r, LEASH_OK);
    assert_invariant(p);
}

static void test_close_wakes_waiters_with_closed(void **state)
{
    (void)state;
    leash_pool_options o = {.max_size = 1};
    leash_pool *p = leash_pool_open("closing", &fake_adapter, "fake://h", &o);
    leash_handle *h = leash_acquire(p);
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        pthread_create(&t[i], NULL, hold_wait, p);
    assert_true(wait_for(p, two_waiting, 2000));
    uint64_t t0 = now_ms();
    leash_pool_close(p);
    for (int i = 0; i < 2; i++) {
        void *r;
        pthread_join(t[i], &r);
        assert_int_equal((intptr_t)r, LEASH_ECLOSED);
    }
    assert_true(now_ms() - t0 < 1000);
    /* The handle out at close was counted and reported; its late release destroys it. */
    assert_int_equal(stats(p).leaks_at_close, 1);
    assert_int_equal(stats(p).in_use, 0);
    assert_null(leash_pool_get("closing"));
    assert_int_equal(leash_last_status(), LEASH_ENOTFOUND);
    assert_null(leash_acquire(p)); /* bad input: acquire on a closed pool */
    assert_int_equal(leash_last_status(), LEASH_ECLOSED);
    int destroyed = fake.destroys;
    leash_release(&h);
    assert_int_equal(fake.destroys, destroyed + 1);
    assert_int_equal(stats(p).misuse, 0);
    assert_invariant(p);
    /* The name is free again. */
    leash_pool *q = leash_pool_open("closing", &fake_adapter, "fake://h", &o);
    assert_non_null(q);
    assert_ptr_not_equal(q, p);
}

static void test_connect_failure_then_recovery(void **state)
{
    (void)state;
    leash_pool_options o = {.max_size = 1, .acquire_timeout_ms = 2000};
    leash_pool *p = leash_pool_open("flaky", &fake_adapter, "fake://app:hunter2@db/1", &o);
    fake_fail_connect = 1;
    uint64_t t0 = now_ms();
    assert_null(leash_acquire(p));
    assert_true(now_ms() - t0 < 500); /* at once, not after the acquire timeout */
    assert_int_equal(leash_last_status(), LEASH_ECONNECT);
    const char *msg = leash_last_error();
    assert_non_null(strstr(msg, "fake refused"));
    assert_non_null(strstr(msg, "\"flaky\""));
    assert_null(strstr(msg, "hunter2"));
    /* The slot came back: the pool is not wedged. */
    leash_pool_stats st = stats(p);
    assert_int_equal(st.size, 0);
    assert_int_equal(st.connect_failures, 1);
    fake_fail_connect = 0;
    leash_handle *h = leash_acquire(p);
    assert_non_null(h);
    /* While it is held, a timeout names the last connect error. */
    assert_null(leash_acquire_for(p, 10));
    assert_non_null(strstr(leash_last_error(), "last connect error: fake refused"));
    assert_null(strstr(leash_last_error(), "hunter2"));
    leash_release(&h);
    assert_invariant(p);
}

static void test_validation_failure_replaces(void **state)
{
    (void)state;
    leash_pool_options o = {.validate_idle_ms = 1};
    leash_pool *p = leash_pool_open("val", &fake_adapter, "fake://h", &o);
    leash_handle *h = leash_acquire(p);
    struct fake_conn *c = leash_conn(h);
    int id = c->id;
    c->dead = 1;
    leash_release(&h);
    sleep_ms(250); /* well past validate_idle_ms, at the pools' clock resolution (<= 100 ms) */
    h = leash_acquire(p);
    assert_non_null(h);
    assert_int_not_equal(((struct fake_conn *)leash_conn(h))->id, id);
    leash_release(&h);
    leash_pool_stats st = stats(p);
    assert_int_equal(st.validation_failures, 1);
    assert_int_equal(st.destroyed, 1);
    assert_int_equal(st.created, 2);
    /* Recently used: not validated again. */
    int v = fake.validates;
    h = leash_acquire(p);
    leash_release(&h);
    assert_int_equal(fake.validates, v);
    assert_invariant(p);
}

static void test_default_validate_idle_not_on_hot_path(void **state)
{
    (void)state;
    leash_pool *p = leash_pool_open("hot", &fake_adapter, "fake://h", NULL);
    for (int i = 0; i < 100; i++) {
        leash_handle *h = leash_acquire(p);
        leash_release(&h);
    }
    assert_int_equal(fake.validates, 0); /* validate_idle_ms 500: never idle that long */
    assert_int_equal(fake.resets, 100);
}

static void test_dirty_and_broken_returns(void **state)
{
    (void)state;
    default_mode();
    leash_pool *p = leash_pool_open("dirty", &fake_adapter, "fake://h", NULL);
    leash_handle *h = leash_acquire(p);
    struct fake_conn *c = leash_conn(h);
    c->dirty = LEASH_RESET_CLEANED;
    leash_release(&h);
    leash_pool_stats st = stats(p);
    assert_int_equal(st.dirty_returns, 1);
    assert_int_equal(st.destroyed, 0);
    assert_int_equal(st.idle, 1);

    h = leash_acquire(p);
    assert_ptr_equal(leash_conn(h), c); /* cleaned, so reused */
    c->dirty = LEASH_RESET_DIRTY;
    leash_release(&h);
    st = stats(p);
    assert_int_equal(st.dirty_returns, 2);
    assert_int_equal(st.destroyed, 1);
    assert_int_equal(st.size, 0);

    /* Broken is not dirty: destroyed without reset, not counted dirty. */
    h = leash_acquire(p);
    int resets = fake.resets;
    leash_mark_broken(h);
    leash_release(&h);
    assert_int_equal(fake.resets, resets);
    st = stats(p);
    assert_int_equal(st.dirty_returns, 2);
    assert_int_equal(st.destroyed, 2);
    assert_int_equal(st.released, 3);

    h = leash_acquire(p);
    c = leash_conn(h);
    c->dirty = LEASH_RESET_BROKEN;
    leash_release(&h);
    st = stats(p);
    assert_int_equal(st.dirty_returns, 2);
    assert_int_equal(st.destroyed, 3);
    assert_int_equal(st.misuse, 0);
    assert_invariant(p);
}

static void test_discard_destroys(void **state)
{
    (void)state;
    leash_pool_options o = {.max_size = 1};
    leash_pool *p = leash_pool_open("disc", &fake_adapter, "fake://h", &o);
    leash_handle *h = leash_acquire(p);
    leash_discard(&h);
    assert_null(h);
    leash_pool_stats st = stats(p);
    assert_int_equal(st.discarded, 1);
    assert_int_equal(st.destroyed, 1);
    assert_int_equal(st.size, 0);
    /* The slot is free again. With no wait allowed, the acquire does not wait for the
     * connect it starts; the next borrower gets that connection. */
    h = leash_acquire_for(p, 0);
    assert_null(h);
    assert_int_equal(leash_last_status(), LEASH_ETIMEDOUT);
    h = leash_acquire_for(p, 1000);
    assert_non_null(h);
    leash_release(&h);
    leash_discard(&h); /* NULL: no-op */
    leash_discard(NULL);
    assert_invariant(p);
}

static int size_zero(leash_pool *p)
{
    leash_pool_stats st;
    leash_pool_stats_get(p, &st);
    return st.size == 0;
}

static void test_idle_timeout_closes_idle(void **state)
{
    (void)state;
    leash_pool_options o = {.idle_timeout_ms = 50};
    leash_pool *p = leash_pool_open("idle", &fake_adapter, "fake://h", &o);
    leash_handle *a = leash_acquire(p), *b = leash_acquire(p);
    leash_release(&a);
    leash_release(&b);
    assert_int_equal(stats(p).size, 2);
    assert_true(wait_for(p, size_zero, 2000));
    assert_int_equal(stats(p).destroyed, 2);
    assert_invariant(p);
}

static int idle_is_one(leash_pool *p)
{
    leash_pool_stats st;
    leash_pool_stats_get(p, &st);
    return st.idle == 1 && st.size == 1;
}

static void test_idle_timeout_keeps_min_idle(void **state)
{
    (void)state;
    leash_pool_options o = {.idle_timeout_ms = 50, .min_idle = 1};
    leash_pool *p = leash_pool_open("idlemin", &fake_adapter, "fake://h", &o);
    leash_handle *a = leash_acquire(p), *b = leash_acquire(p), *c = leash_acquire(p);
    leash_release(&a);
    leash_release(&b);
    leash_release(&c);
    assert_true(wait_for(p, idle_is_one, 2000));
    sleep_ms(300);
    assert_true(idle_is_one(p));
    leash_pool_stats st = stats(p);
    /* The warm-up may have added a connection while the three were held. */
    assert_int_equal(st.destroyed, st.created - 1);
}

static void test_max_lifetime_replaces(void **state)
{
    (void)state;
    leash_pool_options o = {.max_lifetime_ms = 60};
    leash_pool *p = leash_pool_open("life", &fake_adapter, "fake://h", &o);
    leash_handle *h = leash_acquire(p);
    int id = ((struct fake_conn *)leash_conn(h))->id;
    leash_release(&h);
    sleep_ms(300); /* past max_lifetime_ms at the pools' clock resolution (<= 100 ms) */
    h = leash_acquire(p);
    assert_int_not_equal(((struct fake_conn *)leash_conn(h))->id, id);
    leash_release(&h);
    leash_pool_stats st = stats(p);
    assert_true(st.destroyed >= 1);
    assert_int_equal(st.created, st.destroyed + st.size);
    assert_invariant(p);
}

static int two_idle(leash_pool *p)
{
    leash_pool_stats st;
    leash_pool_stats_get(p, &st);
    return st.idle == 2;
}

static void test_min_idle_kept_warm(void **state)
{
    (void)state;
    leash_pool_options o = {.min_idle = 2, .max_size = 4};
    leash_pool *p = leash_pool_open("warm", &fake_adapter, "fake://h", &o);
    assert_true(wait_for(p, two_idle, 2000)); /* warmed without any acquire */
    leash_handle *a = leash_acquire(p), *b = leash_acquire(p);
    leash_discard(&a);
    leash_discard(&b);
    assert_true(wait_for(p, two_idle, 2000)); /* refilled */
    assert_int_equal(stats(p).created, 4);
    assert_invariant(p);
}

/* The entry of ss[0..n) for file:line, or -1. */
static int site_find(const leash_site_stats *ss, int n, const char *file, int line)
{
    for (int i = 0; i < n; i++)
        if (strcmp(ss[i].file, file) == 0 && ss[i].line == line)
            return i;
    return -1;
}

/* Bad input: NULL file and func, line 0, for the first borrow of a connection min_idle made
 * (its slot has never been lent: its memo of the last call site must not pass for NULL:0).
 * The borrow is recorded at "?"; the next borrow of the same connection from another site
 * is recorded there, and the "?" site keeps its one borrow. */
static void test_null_call_site_on_a_warmed_slot(void **state)
{
    (void)state;
    leash_pool_options o = {.min_idle = 1, .max_size = 1};
    leash_pool *p = leash_pool_open("warmnull", &fake_adapter, "fake://h", &o);
    assert_true(wait_for(p, idle_is_one, 2000));
    leash_handle *h = leash_acquire_at(p, -1, NULL, 0, NULL);
    assert_non_null(h);
    leash_site_stats ss[8];
    int n = leash_pool_sites(p, ss, 8);
    int q = site_find(ss, n < 8 ? n : 8, "?", 0);
    assert_true(q >= 0);
    assert_string_equal(ss[q].func, "?");
    assert_int_equal(ss[q].held_now, 1);
    assert_int_equal(ss[q].acquired, 1);
    void *conn = leash_conn(h);
    leash_release(&h);
    h = leash_acquire_at(p, -1, "elsewhere.c", 7, "there");
    assert_ptr_equal(leash_conn(h), conn); /* max_size 1: the same connection */
    n = leash_pool_sites(p, ss, 8);
    int q2 = site_find(ss, n < 8 ? n : 8, "?", 0),
        e = site_find(ss, n < 8 ? n : 8, "elsewhere.c", 7);
    assert_true(q2 >= 0 && e >= 0);
    assert_int_equal(ss[q2].acquired, 1);
    assert_int_equal(ss[q2].held_now, 0);
    assert_int_equal(ss[e].acquired, 1);
    assert_int_equal(ss[e].held_now, 1);
    leash_release(&h);
    assert_invariant(p);
}

static void test_min_idle_backs_off_on_failure(void **state)
{
    (void)state;
    fake_fail_connect = 1;
    leash_pool_options o = {.min_idle = 1};
    leash_pool *p = leash_pool_open("warmfail", &fake_adapter, "fake://h", &o);
    sleep_ms(500);
    /* Two tries on the maintenance tick, then the pool is down: one probe per back-off
     * step (50, 100, 200 ms ...): not a connect storm. */
    assert_true(fake.connect_fails >= 2 && fake.connect_fails <= 6);
    /* Down: an acquire fails at once, saying so, instead of waiting its second. */
    assert_int_equal(leash_pool_health(p), LEASH_ECONNECT);
    uint64_t t0 = now_ms();
    leash_handle *h = leash_acquire(p);
    assert_null(h);
    assert_int_equal(leash_last_status(), LEASH_ECONNECT);
    assert_non_null(strstr(leash_last_error(), "down for"));
    assert_true(now_ms() - t0 < 100);
    /* Back: the next probe (within the back-off, at most connect_backoff_ms) finds it. */
    fake_fail_connect = 0;
    t0 = now_ms();
    while (leash_pool_health(p) != LEASH_OK && now_ms() - t0 < 2000)
        sleep_ms(5);
    assert_int_equal(leash_pool_health(p), LEASH_OK);
    assert_true(now_ms() - t0 <= 1200);
    h = leash_acquire(p);
    assert_non_null(h);
    leash_release(&h);
    assert_invariant(p);
}

static int suspected(leash_pool *p)
{
    leash_pool_stats st;
    leash_pool_stats_get(p, &st);
    return st.leaks_suspected == 1;
}

static void test_suspected_leak_and_late_return(void **state)
{
    (void)state;
    leash_pool_options o = {.leak_threshold_ms = 50};
    leash_pool *p = leash_pool_open("slow", &fake_adapter, "fake://h", &o);
    leash_handle *quick = leash_acquire(p);
    leash_release(&quick);
    uint64_t t0 = now_ms();
    leash_handle *h = leash_acquire(p);
    assert_true(wait_for(p, suspected, 3000));
    assert_true(now_ms() - t0 < 1500); /* at most about a second late */
    sleep_ms(300);
    leash_pool_stats st = stats(p);
    assert_int_equal(st.leaks_suspected, 1); /* once per borrow */
    assert_int_equal(st.returned_late, 0);
    assert_int_equal(leash_pool_leaks(p), 1);
    leash_release(&h);
    st = stats(p);
    assert_int_equal(st.returned_late, 1);
    /* The next borrow of the same slot starts clean. */
    h = leash_acquire(p);
    leash_release(&h);
    assert_int_equal(stats(p).returned_late, 1);
    assert_invariant(p);
}

struct slow_arg {
    leash_pool *p;
    _Atomic int done;
};

static void *slow_acquirer(void *v)
{
    struct slow_arg *a = v;
    leash_handle *h = leash_acquire_for(a->p, 5000);
    a->done = h != NULL;
    leash_release(&h);
    return NULL;
}

static void test_connect_happens_outside_the_lock(void **state)
{
    (void)state;
    leash_pool_options o = {.max_size = 2};
    leash_pool *p = leash_pool_open("slowconn", &fake_adapter, "fake://h", &o);
    leash_handle *h = leash_acquire(p);
    leash_release(&h);
    h = leash_acquire(p); /* the one connection is held */
    fake_connect_delay_ms = 300;
    struct slow_arg a = {p, 0};
    pthread_t t;
    pthread_create(&t, NULL, slow_acquirer, &a);
    sleep_ms(50); /* the thread is inside connect now */
    uint64_t t0 = now_ms();
    leash_release(&h);
    h = leash_acquire_for(p, 1000);
    assert_non_null(h);
    leash_release(&h);
    assert_true(now_ms() - t0 < 100); /* not blocked behind the slow connect */
    pthread_join(t, NULL);
    assert_int_equal(a.done, 1);
    assert_invariant(p);
}

static void *take_and_return(void *v)
{
    leash_pool *p = v;
    leash_handle *h = leash_acquire_for(p, 0); /* no wait: it must find the idle one */
    void *conn = h ? leash_conn(h) : NULL;
    leash_release(&h);
    return conn;
}

static void test_thread_cache_gives_back_its_own_and_shares(void **state)
{
    (void)state;
    leash_pool_options o = {.max_size = 1};
    leash_pool *p = leash_pool_open("cache", &fake_adapter, "fake://h", &o);
    leash_handle *h = leash_acquire(p);
    void *mine = leash_conn(h);
    leash_release(&h); /* kept in this thread's cache */
    h = leash_acquire(p);
    assert_ptr_equal(leash_conn(h), mine); /* the same connection back */
    leash_release(&h);
    /* Another thread finds the stack empty and takes the cached one: nothing is hoarded. */
    pthread_t t;
    void *theirs = NULL;
    pthread_create(&t, NULL, take_and_return, p);
    pthread_join(t, &theirs);
    assert_ptr_equal(theirs, mine);
    /* And this thread's stale cache entry does not hand it out twice. */
    h = leash_acquire_for(p, 0);
    assert_non_null(h);
    leash_handle *again = leash_acquire_for(p, 0);
    assert_null(again);
    leash_release(&h);
    leash_pool_stats st = stats(p);
    assert_int_equal(st.created, 1);
    assert_int_equal(st.idle, 1);
    assert_invariant(p);
}

#define HAMMER_THREADS 8
#define HAMMER_ROUNDS 5000

static void *hammer(void *v)
{
    leash_pool *p = v;
    for (int i = 0; i < HAMMER_ROUNDS; i++) {
        leash_handle *h = leash_acquire_for(p, 5000);
        if (!h)
            return (void *)1;
        struct fake_conn *c = leash_conn(h);
        if (atomic_fetch_add(&c->in_use, 1) != 0) /* lent twice at once */
            return (void *)2;
        if (i % 7 == 0)
            sched_yield();
        atomic_fetch_sub(&c->in_use, 1);
        if (i % 997 == 0)
            leash_discard(&h);
        else
            leash_release(&h);
    }
    return NULL;
}

static void test_threads_hammer_small_pool(void **state)
{
    (void)state;
    leash_pool_options o = {.max_size = 4};
    leash_pool *p = leash_pool_open("hammer", &fake_adapter, "fake://h", &o);
    pthread_t t[HAMMER_THREADS];
    for (int i = 0; i < HAMMER_THREADS; i++)
        pthread_create(&t[i], NULL, hammer, p);
    for (int i = 0; i < HAMMER_THREADS; i++) {
        void *r;
        pthread_join(t[i], &r);
        assert_null(r);
    }
    /* Quiet: no connect still in flight (a waiter may have started one it did not need). */
    uint64_t t0 = now_ms();
    while (stats(p).connecting != 0 && now_ms() - t0 < 5000)
        sleep_ms(1);
    leash_pool_stats st = stats(p);
    assert_int_equal(st.acquired, HAMMER_THREADS * HAMMER_ROUNDS);
    assert_int_equal(st.in_use, 0);
    assert_true(st.size <= 4);
    assert_int_equal(st.created, st.destroyed + st.size);
    assert_int_equal(st.misuse, 0);
    assert_int_equal(st.timeouts, 0);
    assert_invariant(p);
}

static void test_bad_input(void **state)
{
    (void)state;
    leash_pool_options ok = {0};
    /* NULL, empty, too long and control-character names. */
    assert_null(leash_pool_open(NULL, &fake_adapter, "t", NULL));
    assert_int_equal(leash_last_status(), LEASH_EINVAL);
    assert_null(leash_pool_open("", &fake_adapter, "t", NULL));
    assert_int_equal(leash_last_status(), LEASH_EINVAL);
    char longname[LEASH_NAME_MAX + 2];
    memset(longname, 'n', sizeof longname - 1);
    longname[LEASH_NAME_MAX + 1] = '\0';
    assert_null(leash_pool_open(longname, &fake_adapter, "t", NULL));
    assert_int_equal(leash_last_status(), LEASH_EINVAL);
    assert_non_null(strstr(leash_last_error(), "longer than 63"));
    char huge[10000];
    memset(huge, 'x', sizeof huge - 1);
    huge[sizeof huge - 1] = '\0';
    assert_null(leash_pool_open(huge, &fake_adapter, "t", NULL));
    longname[LEASH_NAME_MAX] = '\0'; /* exactly the limit is fine */
    leash_pool *lp = leash_pool_open(longname, &fake_adapter, "t", &ok);
    assert_non_null(lp);
    assert_string_equal(leash_pool_name(lp), longname);
    assert_null(leash_pool_open("a\nb", &fake_adapter, "t", NULL));
    assert_int_equal(leash_last_status(), LEASH_EINVAL);
    /* NULL adapter, adapter without connect or destroy or kind. */
    assert_null(leash_pool_open("x", NULL, "t", NULL));
    assert_int_equal(leash_last_status(), LEASH_EINVAL);
    leash_adapter partial = fake_adapter;
    partial.connect = NULL;
    assert_null(leash_pool_open("x", &partial, "t", NULL));
    partial = fake_adapter;
    partial.destroy = NULL;
    assert_null(leash_pool_open("x", &partial, "t", NULL));
    partial = fake_adapter;
    partial.kind = NULL;
    assert_null(leash_pool_open("x", &partial, "t", NULL));
    /* Each option negative. */
    for (int f = 0; f < 8; f++) {
        leash_pool_options o = {0};
        int *v = (int *)&o + f;
        *v = -1;
        assert_null(leash_pool_open("neg", &fake_adapter, "t", &o));
        assert_int_equal(leash_last_status(), LEASH_EINVAL);
        assert_non_null(strstr(leash_last_error(), "must be >= 0"));
    }
    /* min_idle > max_size; max_size over the limit. */
    assert_null(leash_pool_open("x", &fake_adapter, "t",
                                &(leash_pool_options){.max_size = 2, .min_idle = 3}));
    assert_non_null(strstr(leash_last_error(), "min_idle 3 is more than max_size 2"));
    assert_null(
        leash_pool_open("x", &fake_adapter, "t", &(leash_pool_options){.max_size = 1 << 30}));
    assert_int_equal(leash_last_status(), LEASH_EINVAL);
    /* A failed open_with frees the context it was given. */
    assert_null(leash_pool_open_with("", &fake_adapter_described, malloc(8), "t", NULL));
    assert_int_equal(fake.ctx_frees, 1);
    /* Duplicate and unknown names. */
    leash_pool *p = leash_pool_open("dup", &fake_adapter, NULL, NULL);
    assert_non_null(p);
    assert_null(leash_pool_open("dup", &fake_adapter, "t", NULL));
    assert_int_equal(leash_last_status(), LEASH_EEXIST);
    assert_null(leash_pool_get("nope"));
    assert_int_equal(leash_last_status(), LEASH_ENOTFOUND);
    assert_null(leash_pool_get(NULL));
    assert_int_equal(leash_last_status(), LEASH_EINVAL);
    /* Acquire: NULL pool, timeout below -1. */
    assert_null(leash_acquire(NULL));
    assert_int_equal(leash_last_status(), LEASH_EINVAL);
    assert_null(leash_acquire_for(p, -5));
    assert_int_equal(leash_last_status(), LEASH_EINVAL);
    assert_null(leash_acquire_at(p, -2, NULL, 0, NULL));
    /* NULL file and func are recorded as "?" (test_null_call_site_on_a_warmed_slot). */
    leash_handle *h = leash_acquire_at(p, -1, NULL, 0, NULL);
    assert_non_null(h);
    leash_release(&h);
    /* NULL handles everywhere. */
    leash_release(NULL);
    leash_release(&h);
    assert_null(leash_conn(NULL));
    assert_null(leash_conn_of(NULL, &fake_adapter));
    leash_mark_broken(NULL);
    assert_null(leash_handle_pool(NULL));
    assert_int_equal(leash_pool_stats_get(NULL, &(leash_pool_stats){0}), LEASH_EINVAL);
    assert_int_equal(leash_pool_leaks(NULL), 0);
    leash_pool_close(NULL);
    assert_string_equal(leash_pool_name(NULL), "");
    /* A handle from another adapter's pool. */
    h = leash_acquire(p);
    assert_null(leash_conn_of(h, &fake_adapter_described));
    assert_non_null(leash_conn_of(h, &fake_adapter));
    leash_release(&h);
    assert_int_equal(fake.ctx_frees, 1);
}

static void test_context_owned_and_described(void **state)
{
    (void)state;
    char *ctx = malloc(16);
    leash_pool *p =
        leash_pool_open_with("ctx", &fake_adapter_described, ctx, "host?password=x", NULL);
    assert_non_null(p);
    assert_int_equal(fake.describes, 1);
    leash_handle *h = leash_acquire(p);
    leash_release(&h);
    leash_shutdown();
    assert_int_equal(fake.ctx_frees, 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_lazy_open_and_lifo_reuse, setup, fake_teardown),
        cmocka_unit_test_setup_teardown(test_acquire_times_out_with_reason, setup, fake_teardown),
        cmocka_unit_test_setup_teardown(test_waiters_served_in_arrival_order, setup, fake_teardown),
        cmocka_unit_test_setup_teardown(test_max_waiters_answers_busy_at_once, setup,
                                        fake_teardown),
        cmocka_unit_test_setup_teardown(test_close_wakes_waiters_with_closed, setup, fake_teardown),
        cmocka_unit_test_setup_teardown(test_connect_failure_then_recovery, setup, fake_teardown),
        cmocka_unit_test_setup_teardown(test_validation_failure_replaces, setup, fake_teardown),
        cmocka_unit_test_setup_teardown(test_default_validate_idle_not_on_hot_path, setup,
                                        fake_teardown),
        cmocka_unit_test_setup_teardown(test_dirty_and_broken_returns, setup, fake_teardown),
        cmocka_unit_test_setup_teardown(test_discard_destroys, setup, fake_teardown),
        cmocka_unit_test_setup_teardown(test_idle_timeout_closes_idle, setup, fake_teardown),
        cmocka_unit_test_setup_teardown(test_idle_timeout_keeps_min_idle, setup, fake_teardown),
        cmocka_unit_test_setup_teardown(test_max_lifetime_replaces, setup, fake_teardown),
        cmocka_unit_test_setup_teardown(test_min_idle_kept_warm, setup, fake_teardown),
        cmocka_unit_test_setup_teardown(test_null_call_site_on_a_warmed_slot, setup, fake_teardown),
        cmocka_unit_test_setup_teardown(test_min_idle_backs_off_on_failure, setup, fake_teardown),
        cmocka_unit_test_setup_teardown(test_suspected_leak_and_late_return, setup, fake_teardown),
        cmocka_unit_test_setup_teardown(test_connect_happens_outside_the_lock, setup,
                                        fake_teardown),
        cmocka_unit_test_setup_teardown(test_thread_cache_gives_back_its_own_and_shares, setup,
                                        fake_teardown),
        cmocka_unit_test_setup_teardown(test_threads_hammer_small_pool, setup, fake_teardown),
        cmocka_unit_test_setup_teardown(test_bad_input, setup, fake_teardown),
        cmocka_unit_test_setup_teardown(test_context_owned_and_described, setup, fake_teardown),
    };
    return cmocka_run_group_tests_name("pool", tests, NULL, NULL);
}
