/* Integration tests of the Redis adapter against real redis-server instances
 * (tests/servers.d/redis.sh): basics and dirty returns; the rest is in test-redis-*.c. */
#include "redis-util.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

/* ---- basics ---- */

/* SET and GET through the pool; the connection is reused; the socket is close-on-exec with
 * keepalive; dumps show the target without the password. */
void test_set_get(void **state)
{
    leash_pool *p = pool("basic", URL, 2);
    leash_handle *h = take(p);
    set(h, "leash:basic", "hello");
    char *v = get(h, "leash:basic");
    assert_string_equal(v, "hello");
    free(v);
    long long id = client_id(h);
    redisContext *rc = leash_redis(h);
    assert_non_null(rc);
    assert_true(fcntl(rc->fd, F_GETFD) & FD_CLOEXEC);
    int ka = 0;
    socklen_t kalen = sizeof ka;
    assert_int_equal(getsockopt(rc->fd, SOL_SOCKET, SO_KEEPALIVE, &ka, &kalen), 0);
    assert_int_equal(ka, 1);
    leash_release(&h);
    assert_null(h);

    h = take(p);
    assert_int_equal(client_id(h), id); /* the same connection, raw use was clean */
    {
        LEASH_REPLY redisReply *err = leash_redis_command(h, "INCR %s", "leash:basic");
        assert_non_null(err); /* an error reply is a reply, not a failure */
        assert_int_equal(err->type, REDIS_REPLY_ERROR);
    }
    leash_release(&h);
    leash_pool_stats s = stats(p);
    assert_int_equal(s.created, 1);
    assert_int_equal(s.destroyed, 0);
    assert_int_equal(s.dirty_returns, 0);
    assert_string_equal(s.kind, "redis");
    assert_balanced(p);

    leash_pool *a = pool("basic-auth", AUTH_URL "/2?command_timeout_ms=900", 1);
    h = take(a);
    set(h, "leash:auth", "ok");
    char *db = client_info(h, "db");
    assert_string_equal(db, "2");
    free(db);
    leash_release(&h);
    for (leash_format f = LEASH_FORMAT_TEXT; f <= LEASH_FORMAT_PROMETHEUS; f++) {
        char *d = dump(f);
        assert_null(strstr(d, SRV_REDIS_PASSWORD));
        if (f == LEASH_FORMAT_TEXT && !strstr(d, "redis://:***@127.0.0.1:16380/2"))
            fail_msg("the text dump does not show the target: %s", d);
        free(d);
    }
    assert_balanced(a);
}

/* Pooled connections are verified with PING only after validate_idle_ms of idleness. */
void test_validate_only_when_idle(void **state)
{
    leash_pool_options o = {.max_size = 1, .validate_idle_ms = 150};
    leash_pool *p = leash_redis_pool("validate", URL, &o);
    assert_non_null(p);
    redisContext *ad = admin();
    leash_handle *h = take(p);
    leash_release(&h); /* connected (its PING is part of the connect) */
    freeReplyObject(admin_cmd(ad, "CONFIG RESETSTAT"));
    for (int i = 0; i < 20; i++) {
        h = take(p);
        set(h, "leash:validate", "x");
        leash_release(&h);
    }
    redisReply *r = admin_cmd(ad, "INFO commandstats");
    assert_null(strstr(r->str, "cmdstat_ping:"));
    freeReplyObject(r);
    sleep_ms(400); /* the pools' clock is coarse (up to 100 ms when quiet) */
    h = take(p);
    leash_release(&h);
    r = admin_cmd(ad, "INFO commandstats");
    if (!strstr(r->str, "cmdstat_ping:calls=1,"))
        fail_msg("expected exactly one PING: %s", r->str);
    freeReplyObject(r);
    redisFree(ad);
    assert_balanced(p);
}

struct worker {
    leash_pool *pool;
    int id, iterations, failures;
};

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    for (int i = 0; i < w->iterations; i++) {
        leash_handle *h = leash_acquire(w->pool);
        if (!h) {
            w->failures++;
            continue;
        }
        LEASH_REPLY redisReply *r = leash_redis_command(h, "INCR %s", "leash:threads");
        if (!r || r->type != REDIS_REPLY_INTEGER)
            w->failures++;
        LEASH_REPLY redisReply *g = leash_redis_command(h, "GET %s", "leash:threads");
        if (!g || g->type != REDIS_REPLY_STRING)
            w->failures++;
        leash_release(&h);
    }
    return NULL;
}

/* Many threads share a small pool: every INCR lands, counters balance, at most max_size
 * connections are ever made. */
void test_many_threads(void **state)
{
    enum { THREADS = 8, ITER = 400 };
    leash_pool *p = pool("threads", URL, 3);
    redisContext *ad = admin();
    freeReplyObject(admin_cmd(ad, "DEL leash:threads"));
    pthread_t t[THREADS];
    struct worker w[THREADS];
    for (int i = 0; i < THREADS; i++) {
        w[i] = (struct worker){.pool = p, .id = i, .iterations = ITER};
        assert_int_equal(pthread_create(&t[i], NULL, worker_main, &w[i]), 0);
    }
    for (int i = 0; i < THREADS; i++) {
        pthread_join(t[i], NULL);
        assert_int_equal(w[i].failures, 0);
    }
    redisReply *r = admin_cmd(ad, "GET leash:threads");
    assert_string_equal(r->str, "3200");
    freeReplyObject(r);
    redisFree(ad);
    leash_pool_stats s = stats(p);
    assert_int_equal(s.acquired, THREADS * ITER);
    assert_int_equal(s.released, THREADS * ITER);
    assert_true(s.created <= 3);
    assert_int_equal(s.destroyed, 0);
    assert_int_equal(s.dirty_returns, 0);
    assert_int_equal(s.timeouts, 0);
    assert_balanced(p);
}

/* ---- dirty returns ---- */

/* A borrower that appended commands through the raw context and did not read the replies:
 * the next borrower's GET returns its own value, whether the commands were never sent
 * (destroyed), sent and answered (drained), or still running at release (drained after a
 * wait). */
void test_stale_reply(void **state)
{
    default_mode();
    capture_start();
    leash_pool *p = pool("stale", URL, 1);
    leash_handle *h = take(p);
    set(h, "leash:stale:1", "first");
    set(h, "leash:stale:2", "second");
    set(h, "leash:stale:mine", "mine");

    /* 1: appended, never sent: hiredis's output buffer holds it. */
    redisAppendCommand(leash_redis(h), "GET leash:stale:1");
    leash_release(&h);
    h = take(p);
    char *v = get(h, "leash:stale:mine");
    assert_string_equal(v, "mine");
    free(v);
    leash_pool_stats s = stats(p);
    assert_int_equal(s.dirty_returns, 1);
    assert_int_equal(s.destroyed, 1);
    long long id = client_id(h);

    /* 2: two appended, one read: the other reply sits in hiredis's reader or the socket. */
    redisContext *rc = leash_redis(h);
    redisAppendCommand(rc, "GET leash:stale:1");
    redisAppendCommand(rc, "GET leash:stale:2");
    redisReply *first = NULL;
    assert_int_equal(redisGetReply(rc, (void **)&first), REDIS_OK);
    assert_string_equal(first->str, "first");
    freeReplyObject(first);
    leash_release(&h);
    h = take(p);
    v = get(h, "leash:stale:mine");
    assert_string_equal(v, "mine");
    free(v);
    assert_int_equal(client_id(h), id); /* drained, not destroyed */
    s = stats(p);
    assert_int_equal(s.dirty_returns, 2);
    assert_int_equal(s.destroyed, 1);

    /* 3: a reply still on its way at release (BLPOP answers after 300 ms): the socket is
     * empty when released, so only a round trip can tell. */
    rc = leash_redis(h);
    redisAppendCommand(rc, "DEL leash:stale:list");
    redisAppendCommand(rc, "BLPOP leash:stale:list 0.3");
    redisReply *del = NULL;
    assert_int_equal(redisGetReply(rc, (void **)&del), REDIS_OK);
    freeReplyObject(del);
    leash_release(&h);
    h = take(p);
    v = get(h, "leash:stale:mine");
    assert_string_equal(v, "mine");
    free(v);
    assert_int_equal(client_id(h), id);
    s = stats(p);
    assert_int_equal(s.dirty_returns, 3);

    /* 4: raw use that read everything is clean (not counted), and a raw SELECT is undone. */
    rc = leash_redis(h);
    redisReply *sel = redisCommand(rc, "SELECT 4");
    assert_non_null(sel);
    freeReplyObject(sel);
    leash_release(&h);
    h = take(p);
    char *db = client_info(h, "db");
    assert_string_equal(db, "0");
    free(db);
    leash_release(&h);
    s = stats(p);
    assert_int_equal(s.dirty_returns, 3);
    assert_int_equal(s.created, 2);
    assert_non_null(strstr(log_text, "returned dirty"));
    assert_balanced(p);
}

/* State left through leash_redis_command: an open MULTI is discarded, WATCH is undone, a
 * SELECT is reverted (all reused, counted dirty); subscribe mode and a raw MULTI are
 * destroyed. */
void test_state_left_behind(void **state)
{
    default_mode();
    capture_start();
    leash_pool *p = pool("state", URL "/1", 1);
    leash_handle *h = take(p);
    long long id = client_id(h);
    set(h, "leash:state:k", "before");
    freeReplyObject(must(h, "MULTI"));
    LEASH_REPLY redisReply *q = leash_redis_command(h, "SET leash:state:k %s", "queued");
    assert_string_equal(q->str, "QUEUED");
    leash_release(&h);
    h = take(p);
    char *v = get(h, "leash:state:k"); /* not QUEUED: MULTI was discarded */
    assert_string_equal(v, "before");
    free(v);
    assert_int_equal(client_id(h), id);
    assert_int_equal(stats(p).dirty_returns, 1);
    assert_non_null(strstr(log_text, "returned dirty"));

    freeReplyObject(must(h, "WATCH leash:state:k"));
    leash_release(&h);
    h = take(p);
    freeReplyObject(must(h, "MULTI"));
    freeReplyObject(must(h, "SET leash:state:k %s", "tx"));
    /* Another client changes the key: a WATCH left behind would abort this EXEC. */
    redisContext *ad = admin();
    freeReplyObject(admin_cmd(ad, "SELECT 1"));
    freeReplyObject(admin_cmd(ad, "SET leash:state:k other"));
    LEASH_REPLY redisReply *ex = must(h, "EXEC");
    assert_int_equal(ex->type, REDIS_REPLY_ARRAY);
    assert_int_equal(stats(p).dirty_returns, 2);

    freeReplyObject(must(h, "SELECT %s", "7"));
    leash_release(&h);
    h = take(p);
    char *db = client_info(h, "db");
    assert_string_equal(db, "1");
    free(db);
    /* a SELECT queued in a transaction takes effect at EXEC */
    freeReplyObject(must(h, "MULTI"));
    freeReplyObject(must(h, "SELECT %s", "9"));
    freeReplyObject(must(h, "EXEC"));
    leash_release(&h);
    h = take(p);
    db = client_info(h, "db");
    assert_string_equal(db, "1");
    free(db);
    assert_int_equal(client_id(h), id);
    leash_pool_stats s = stats(p);
    assert_int_equal(s.dirty_returns, 4);
    assert_int_equal(s.destroyed, 0);

    LEASH_REPLY redisReply *sub = must(h, "SUBSCRIBE %s", "leash:chan");
    (void)sub; /* kept for its cleanup: freed at scope exit */
    leash_release(&h);
    h = take(p);
    assert_true(client_id(h) != id);
    id = client_id(h);
    s = stats(p);
    assert_int_equal(s.dirty_returns, 5);
    assert_int_equal(s.destroyed, 1);

    redisReply *m = redisCommand(leash_redis(h), "MULTI");
    freeReplyObject(m);
    leash_release(&h);
    h = take(p);
    assert_true(client_id(h) != id);
    leash_release(&h);
    s = stats(p);
    assert_int_equal(s.dirty_returns, 6);
    assert_int_equal(s.destroyed, 2);
    redisFree(ad);
    assert_balanced(p);
}

/* Bad input: WATCH, then DISCARD or EXEC without MULTI. Both are error replies that leave the
 * key watched (before, the adapter took the command for the end of the WATCH and released the
 * connection as clean): the release must UNWATCH, so the next borrower's transaction does not
 * come back nil because another client changed a key it never watched. A transaction that
 * really ended (EXEC after MULTI) leaves nothing to undo. */
void test_watch_left_by_error(void **state)
{
    default_mode();
    leash_pool *p = pool("watch", URL, 1);
    redisContext *ad = admin();
    static const char *const ends[] = {"DISCARD", "EXEC"};
    for (int i = 0; i < 2; i++) {
        leash_handle *h = take(p);
        freeReplyObject(must(h, "WATCH %s", "leash:watch:k"));
        LEASH_REPLY redisReply *e = leash_redis_command(h, "%s", ends[i]);
        assert_non_null(e);
        assert_int_equal(e->type, REDIS_REPLY_ERROR);
        assert_non_null(strstr(e->str, "without MULTI"));
        leash_release(&h);
        freeReplyObject(admin_cmd(ad, "SET leash:watch:k changed-%d", i));
        h = take(p);
        freeReplyObject(must(h, "MULTI"));
        freeReplyObject(must(h, "SET %s %s", "leash:watch:k", "mine"));
        LEASH_REPLY redisReply *ex = must(h, "EXEC");
        if (ex->type != REDIS_REPLY_ARRAY)
            fail_msg("after %s without MULTI: the next borrower's EXEC came back type %d", ends[i],
                     ex->type);
        leash_release(&h);
        assert_int_equal(stats(p).dirty_returns, i + 1);
    }
    /* WATCH, MULTI, EXEC: the transaction ended, the keys are unwatched: a clean return */
    leash_handle *h = take(p);
    freeReplyObject(must(h, "WATCH %s", "leash:watch:k"));
    freeReplyObject(must(h, "MULTI"));
    freeReplyObject(must(h, "GET %s", "leash:watch:k"));
    freeReplyObject(must(h, "EXEC"));
    leash_release(&h);
    leash_pool_stats s = stats(p);
    assert_int_equal(s.dirty_returns, 2);
    assert_int_equal(s.destroyed, 0);
    assert_int_equal(s.created, 1);
    redisFree(ad);
    assert_balanced(p);
}

/* A command that outlives command_timeout_ms (even after a borrower changed the timeout on the
 * raw context): LEASH_ETIMEDOUT, the handle is broken (not dirty, so strict mode stays quiet)
 * and its release destroys the connection. */
void test_command_timeout(void **state)
{
    assert_int_equal(leash_strict(), 1);
    leash_pool *p = pool("timeout", URL "?command_timeout_ms=200", 1);
    leash_handle *h = take(p);
    /* a borrower that changes the timeout on the raw context does not change it for the next */
    assert_int_equal(redisSetTimeout(leash_redis(h), (struct timeval){10, 0}), REDIS_OK);
    leash_release(&h);
    h = take(p);
    double t0 = now_s();
    redisReply *r = leash_redis_command(h, "BLPOP %s 2", "leash:timeout:none");
    double took = now_s() - t0;
    assert_null(r);
    assert_int_equal(leash_last_status(), LEASH_ETIMEDOUT);
    assert_non_null(strstr(leash_last_error(), "200 ms"));
    assert_non_null(strstr(leash_last_error(), "pool \"timeout\""));
    assert_null(strstr(leash_last_error(), "waiting for a handle"));
    assert_true(took >= 0.15 && took < 1.0);
    /* the context is errored for good: later commands fail at once */
    assert_null(leash_redis_command(h, "PING"));
    assert_int_equal(leash_last_status(), LEASH_EIO);
    leash_release(&h);
    h = take(p);
    LEASH_REPLY redisReply *pong = must(h, "PING");
    assert_string_equal(pong->str, "PONG");
    leash_release(&h);
    leash_pool_stats s = stats(p);
    assert_int_equal(s.destroyed, 1);
    assert_int_equal(s.dirty_returns, 0);
    assert_int_equal(s.created, 2);
    assert_balanced(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_set_get, teardown),
        cmocka_unit_test_teardown(test_validate_only_when_idle, teardown),
        cmocka_unit_test_teardown(test_many_threads, teardown),
        cmocka_unit_test_teardown(test_stale_reply, teardown),
        cmocka_unit_test_teardown(test_state_left_behind, teardown),
        cmocka_unit_test_teardown(test_watch_left_by_error, teardown),
        cmocka_unit_test_teardown(test_handshake_bounded, teardown),
        cmocka_unit_test_teardown(test_password_delimiters, teardown),
        cmocka_unit_test_teardown(test_retarget, teardown),
        cmocka_unit_test_teardown(test_command_timeout, teardown),
        cmocka_unit_test_teardown(test_client_kill, teardown),
        cmocka_unit_test_teardown(test_wrong_password, teardown),
        cmocka_unit_test_teardown(test_unix_socket, teardown),
        cmocka_unit_test_teardown(test_fork, teardown),
        cmocka_unit_test_teardown(test_strict_aborts_on_dirty_return, teardown),
        cmocka_unit_test_teardown(test_no_sigpipe, teardown),
        cmocka_unit_test_teardown(test_bad_urls, teardown),
        cmocka_unit_test_teardown(test_bad_handles, teardown),
        cmocka_unit_test_teardown(test_paused_server, teardown),
        cmocka_unit_test_teardown(test_restart_under_load, teardown),
    };
    return cmocka_run_group_tests_name("redis", tests, group_setup, NULL);
}
