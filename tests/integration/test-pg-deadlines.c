/* Integration tests of the PostgreSQL adapter's deadlines: a paused server (SIGSTOP) or a
 * paused backend never holds a connect, a statement, a validation or a release past its
 * bound. Pausing a whole server uses the pgha pair (tests/servers.d/pgha.sh), never the shared
 * one; pausing one backend of the test's own pool is safe on SRV_PG_PORT. */
#include "test-pg-util.h"

#include <dirent.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <cmocka.h>

/* Wakes both pgha nodes whatever a test left paused, then the usual teardown. */
int teardown_resume(void **state)
{
    srv_signal(SRV_PGHA_A_PIDFILE, SIGCONT);
    srv_signal(SRV_PGHA_B_PIDFILE, SIGCONT);
    return teardown_no_leaks(state);
}

/* A server whose postmaster is paused accepts TCP but never answers the handshake: the
 * acquire returns at its own deadline, and the connect behind it gives up at the connect
 * timeout (2 s by default) with a message saying so, instead of waiting forever. */
void test_connect_to_paused_server(void **state)
{
    default_mode(); /* the failed connects are logged */
    capture_start();
    /* The default is under test: not the one the valgrind setup gives (PGCONNECT_TIMEOUT). */
    char *env = getenv("PGCONNECT_TIMEOUT") ? strdup(getenv("PGCONNECT_TIMEOUT")) : NULL;
    unsetenv("PGCONNECT_TIMEOUT");
    leash_pool_options o = {.max_size = 1, .acquire_timeout_ms = 300};
    leash_pool *p = leash_pg_pool("paused", HA_A, &o);
    if (env)
        setenv("PGCONNECT_TIMEOUT", env, 1);
    free(env);
    assert_non_null(p);
    assert_int_equal(srv_signal(SRV_PGHA_A_PIDFILE, SIGSTOP), 0);
    double t0 = now_s();
    assert_null(leash_acquire(p));
    double took = now_s() - t0;
    assert_int_equal(leash_last_status(), LEASH_ETIMEDOUT);
    if (took > 1.0)
        fail_msg("an acquire with a 300 ms deadline took %.2f s", took);
    /* The connect still in flight gives up at the connect timeout. */
    t0 = now_s();
    while (stats(p).connect_failures == 0 && now_s() - t0 < 5)
        sleep_ms(20);
    took = now_s() - t0;
    assert_int_equal(stats(p).connect_failures, 1);
    if (took > 2.5)
        fail_msg("the connect gave up %.2f s after the acquire (connect timeout 2 s)", took);
    assert_non_null(strstr(log_text, "no answer within 2000 ms (connect_timeout)"));
    /* A borrower who waits longer meets the same bound, with the reason. */
    t0 = now_s();
    assert_null(leash_acquire_for(p, 10000));
    took = now_s() - t0;
    assert_int_equal(leash_last_status(), LEASH_ECONNECT);
    assert_non_null(strstr(leash_last_error(), "no answer within 2000 ms"));
    if (took > 4.0)
        fail_msg("an acquire behind a paused server took %.2f s", took);
    assert_int_equal(srv_signal(SRV_PGHA_A_PIDFILE, SIGCONT), 0);
    sleep_ms(1100); /* past the backoff of a pool that is down */
    leash_handle *h = leash_acquire_for(p, 5000);
    if (!h)
        fail_msg("after SIGCONT: %s", leash_last_error());
    assert_int_equal(value_long(h, "SELECT 1"), 1);
    leash_release(&h);
    assert_balanced(p);
}

/* A multi-host conninfo whose first server is paused connects to the next one after that
 * host's connect timeout (libpq alone would stay on it: PQconnectPoll cannot move on). */
void test_multi_host_skips_paused(void **state)
{
    leash_pool *p = pool("skip-paused",
                         "host=127.0.0.1,127.0.0.1 port=15533,15432 dbname=leash user=leash "
                         "password=" SRV_PG_PASSWORD " connect_timeout=1",
                         1, NULL);
    assert_int_equal(srv_signal(SRV_PGHA_A_PIDFILE, SIGSTOP), 0);
    double t0 = now_s();
    leash_handle *h = take(p);
    double took = now_s() - t0;
    assert_int_equal(srv_signal(SRV_PGHA_A_PIDFILE, SIGCONT), 0);
    assert_string_equal(PQport(leash_pg(h)), "15432");
    if (took < 0.9 || took > 2.0)
        fail_msg("took %.2f s with connect_timeout=1 on the paused host", took);
    leash_release(&h);
    assert_balanced(p);
}

/* A statement to a paused backend gives up at command_timeout_ms with LEASH_ETIMEDOUT (a
 * message that is not about waiting for a handle), the handle is dropped at release, and the
 * pool works again. */
void test_statement_to_paused_backend(void **state)
{
    leash_pg_options pg = {.command_timeout_ms = 300};
    leash_pool *p = pool("paused-backend", PG_KV, 1, &pg);
    for (int params = 0; params < 2; params++) {
        leash_handle *h = take(p);
        long pid = backend_pid(h);
        assert_int_equal(kill((pid_t)pid, SIGSTOP), 0);
        double t0 = now_s();
        PGresult *r = params ? leash_pg_params(h, "SELECT $1::int", 1, (const char *[]){"1"})
                             : leash_pg_exec(h, "SELECT 1");
        double took = now_s() - t0;
        assert_null(r);
        assert_int_equal(leash_last_status(), LEASH_ETIMEDOUT);
        const char *msg = leash_last_error();
        if (!strstr(msg, "within 300 ms (command_timeout_ms)") ||
            !strstr(msg, "pool \"paused-backend\"") || strstr(msg, "waiting"))
            fail_msg("%s", msg);
        if (took > 1.5)
            fail_msg("a statement with a 300 ms timeout took %.2f s", took);
        t0 = now_s();
        leash_release(&h);
        took = now_s() - t0;
        assert_int_equal(kill((pid_t)pid, SIGCONT), 0);
        if (took > 0.5)
            fail_msg("releasing the timed-out handle took %.2f s", took);
        h = take(p);
        assert_true(backend_pid(h) != pid);
        leash_release(&h);
    }
    leash_pool_stats s = stats(p);
    assert_int_equal(s.destroyed_broken, 2);
    assert_int_equal(s.dirty_returns, 0);
    assert_balanced(p);
}

/* Validation of a connection whose backend is paused gives up after about a second; the
 * connection is replaced and the borrower served. */
void test_validation_of_paused_backend(void **state)
{
    leash_pool_options o = {.max_size = 1, .acquire_timeout_ms = 5000, .validate_idle_ms = 1};
    leash_pool *p = leash_pg_pool("paused-validate", PG_KV, &o);
    assert_non_null(p);
    leash_handle *h = take(p);
    long pid = backend_pid(h);
    leash_release(&h);
    assert_int_equal(kill((pid_t)pid, SIGSTOP), 0);
    sleep_ms(250); /* idle past validate_idle_ms on the pools' clock (up to 100 ms a tick) */
    double t0 = now_s();
    h = leash_acquire(p);
    double took = now_s() - t0;
    assert_int_equal(kill((pid_t)pid, SIGCONT), 0);
    if (!h)
        fail_msg("%s", leash_last_error());
    assert_true(backend_pid(h) != pid);
    leash_release(&h);
    if (took > 2.5)
        fail_msg("validating a paused backend took %.2f s", took);
    assert_int_equal(stats(p).destroyed_invalid, 1);
    assert_balanced(p);
}

/* A release that must cancel a running query while the server's postmaster is paused (so
 * PQcancel cannot complete) still returns in about a second; the connection is dropped, and
 * the cancel reaches the server once it runs again. */
void test_release_cancel_to_paused_server(void **state)
{
    default_mode(); /* the dirty return is counted, not a report */
    capture_start();
    leash_pool *p = pool("paused-cancel", HA_A, 1, NULL);
    leash_handle *h = take(p);
    assert_int_equal(PQsendQuery(leash_pg(h), "SELECT pg_sleep(30) /* leash-paused-cancel */"), 1);
    sleep_ms(100);
    assert_int_equal(srv_signal(SRV_PGHA_A_PIDFILE, SIGSTOP), 0);
    double t0 = now_s();
    leash_release(&h);
    double took = now_s() - t0;
    assert_int_equal(srv_signal(SRV_PGHA_A_PIDFILE, SIGCONT), 0);
    if (took > 1.5)
        fail_msg("release took %.2f s", took);
    leash_pool_stats s = stats(p);
    assert_int_equal(s.dirty_returns, 1);
    assert_int_equal(s.destroyed, 1);
    /* The cancel request sent while the server was paused is answered now. */
    long running = 1;
    for (int i = 0; i < 100 && running; i++) {
        sleep_ms(50);
        char *v = su_at(SRV_PGHA_A_PORT,
                        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND "
                        "query LIKE '%%leash-paused-cancel%%' AND query NOT LIKE "
                        "'%%pg_stat_activity%%'");
        running = atol(v);
        free(v);
    }
    assert_int_equal(running, 0);
    assert_balanced(p);
}

/* The threads of this process (/proc/self/task). */
static int thread_count(void)
{
    DIR *d = opendir("/proc/self/task");
    assert_non_null(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        n += e->d_name[0] != '.';
    closedir(d);
    return n;
}

/* How many statements containing tag run on the pgha node a. */
static long running_on_a(const char *tag)
{
    char *v = su_at(SRV_PGHA_A_PORT,
                    "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE "
                    "'%%%s%%' AND query NOT LIKE '%%pg_stat_activity%%'",
                    tag);
    long n = atol(v);
    free(v);
    return n;
}

/* Cancel requests to a server whose postmaster is paused (PQcancel blocks until it runs
 * again) do not outlive leash_shutdown: the threads that send them are stopped about a second
 * after they started and joined, so the process has as many threads after shutdown as before
 * its first leash call, and shutdown returns within about a second. Bad input tried: a raw
 * query still running at release (the release cancels it) and a statement past
 * command_timeout_ms (cancelled without waiting), both while the postmaster is stopped. The
 * requests were sent before the threads were stopped, so the server honours them once it
 * runs again. */
void test_shutdown_joins_cancel_threads(void **state)
{
    int before = thread_count();
    default_mode(); /* the dirty return is counted, not a report */
    capture_start();
    leash_pool *p =
        pool("shutdown-cancel", HA_A, 2, &(leash_pg_options){.command_timeout_ms = 300});
    leash_handle *raw = take(p), *timed = take(p);
    assert_int_equal(PQsendQuery(leash_pg(raw), "SELECT pg_sleep(30) /* leash-cancel-raw */"), 1);
    sleep_ms(100);
    assert_int_equal(srv_signal(SRV_PGHA_A_PIDFILE, SIGSTOP), 0);
    /* The backends run on; only the postmaster, which takes cancel requests, is stopped. */
    assert_null(leash_pg_exec(timed, "SELECT pg_sleep(30) /* leash-cancel-timed */"));
    assert_int_equal(leash_last_status(), LEASH_ETIMEDOUT);
    leash_release(&timed);
    double t0 = now_s();
    leash_release(&raw);
    double took = now_s() - t0;
    if (took > 1.5)
        fail_msg("release took %.2f s", took);
    assert_true(thread_count() > before);
    t0 = now_s();
    leash_shutdown();
    took = now_s() - t0;
    /* A thread just joined may be listed for a moment more, until the kernel has reaped it;
     * one still running (blocked in PQcancel until the server runs again) stays. */
    int after = thread_count();
    for (int i = 0; i < 20 && after != before; i++) {
        sleep_ms(10);
        after = thread_count();
    }
    assert_int_equal(srv_signal(SRV_PGHA_A_PIDFILE, SIGCONT), 0);
    if (after != before)
        fail_msg("%d threads before the first leash call, %d after leash_shutdown", before, after);
    if (took > 2.0)
        fail_msg("leash_shutdown took %.2f s", took);
    print_message("leash_shutdown took %.2f s with two cancels blocked\n", took);
    /* Both requests were in the postmaster's queue: answered now that it runs. */
    long running = 1;
    for (int i = 0; i < 100 && running; i++) {
        sleep_ms(50);
        running = running_on_a("leash-cancel-");
    }
    assert_int_equal(running, 0);
}

static int sockopt(int fd, int level, int name)
{
    int v = -1;
    socklen_t len = sizeof v;
    assert_int_equal(getsockopt(fd, level, name, &v, &len), 0);
    return v;
}

/* New connections get TCP keepalives and a TCP user timeout when the conninfo names none (a
 * server that vanishes is noticed even by raw libpq calls); the conninfo's own values win. */
void test_tcp_defaults(void **state)
{
    leash_pool *p = pool("tcp-defaults", PG_KV, 1, NULL);
    leash_handle *h = take(p);
    int fd = PQsocket(leash_pg(h));
    assert_int_equal(sockopt(fd, SOL_SOCKET, SO_KEEPALIVE), 1);
    assert_int_equal(sockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE), 10);
    assert_int_equal(sockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL), 5);
    assert_int_equal(sockopt(fd, IPPROTO_TCP, TCP_KEEPCNT), 3);
    assert_int_equal(sockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT), 10000);
    leash_release(&h);
    leash_pool *q = pool("tcp-own", PG_KV " tcp_user_timeout=4000 keepalives_idle=60", 1, NULL);
    h = take(q);
    fd = PQsocket(leash_pg(h));
    assert_int_equal(sockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE), 60);
    assert_int_equal(sockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT), 4000);
    leash_release(&h);
    assert_balanced(p);
    assert_balanced(q);
}
